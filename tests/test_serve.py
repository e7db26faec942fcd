"""`cgt-hub serve` as an operator starts it: plain HTTP, TLS, and mutual TLS."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.support.ports import refuses_connections
from tests.support.tls import make_pki

ROOT = Path(__file__).resolve().parents[1]
CLI = Path(sys.executable).parent / "cgt-hub"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def launched(tmp_path: Path, *args: str, **env: str) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """`cgt-hub serve` started in ``tmp_path``; yields its HTTP port and process once it listens."""
    shutil.copytree(ROOT / "partner-profiles", tmp_path / "partner-profiles", dirs_exist_ok=True)
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CGTHUB_")}
    environment.update(env)
    subprocess.run([str(CLI), "db", "upgrade"], cwd=tmp_path, env=environment, check=True, capture_output=True)
    proc = subprocess.Popen(
        [str(CLI), "serve", "--port", str(port), *args],
        cwd=tmp_path,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    # Read the server's log as it comes: a full pipe would block the server's logging, and with
    # it every thread that logs (seen: a worker stuck in StreamHandler.emit mid-transaction).
    output = bytearray()
    stream = proc.stdout
    assert stream is not None
    reader = threading.Thread(target=lambda: output.extend(stream.read()))  # read() drains until EOF
    reader.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.1)
        if not any("_TLS__" in k for k in env):
            _wait_until_answering(port, deadline=time.monotonic() + 90)
        yield port, proc
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        reader.join(timeout=10)
        assert b"Traceback" not in output, output.decode(errors="replace")


def _wait_until_answering(port: int, deadline: float) -> None:
    """The listening socket takes connections before the application has started (the kernel
    queues them; with --workers the parent listens before its workers have imported the hub), so a
    connect is no sign of readiness: on a loaded machine a worker took 16 s to start and the
    tests' first request (httpx's 5 s timeout) failed. Wait until /healthz answers."""
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError("the hub did not answer /healthz in time")
        time.sleep(0.2)


@contextmanager
def serving(tmp_path: Path, **env: str) -> Iterator[int]:
    with launched(tmp_path, **env) as (port, _):
        yield port


def test_serve_plain_http(tmp_path: Path) -> None:
    with serving(tmp_path) as port:
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").json() == {"status": "ok"}
        ready = httpx.get(f"http://127.0.0.1:{port}/readyz").json()
        assert ready["checks"] == {"database": "ok", "schema": "ok", "bus": "ok"}


def test_serve_mutual_tls(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    env = {
        "CGTHUB_HTTP_TLS__CERT_FILE": str(pki.server_cert),
        "CGTHUB_HTTP_TLS__KEY_FILE": str(pki.server_key),
        "CGTHUB_HTTP_TLS__CA_FILE": str(pki.ca_cert),
        "CGTHUB_HTTP_TLS__CLIENT_AUTH": "required",
    }
    with serving(tmp_path, **env) as port:
        url = f"https://127.0.0.1:{port}/healthz"
        ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
        ctx.load_cert_chain(str(pki.client_cert), str(pki.client_key))
        assert httpx.get(url, verify=ctx).json() == {"status": "ok"}
        no_cert = ssl.create_default_context(cafile=str(pki.ca_cert))
        with pytest.raises(httpx.HTTPError):
            httpx.get(url, verify=no_cert)
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/healthz")


def _children(pid: int) -> set[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return {int(c) for c in text.split()}


def _serving(pid: int) -> bool:
    """A live worker: not a zombie, not multiprocessing's resource tracker."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z" and b"resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, IndexError):
        return False


def _environ(pid: int) -> bytes:
    return Path(f"/proc/{pid}/environ").read_bytes() + b"\x00"


def _workers(pid: int, n: int) -> set[int]:
    """The server's worker processes, once there are ``n`` (multiprocessing also runs a resource
    tracker child, which serves nothing)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        workers = {c for c in _children(pid) if _serving(c)}
        if len(workers) == n:
            return workers
        time.sleep(0.2)
    raise AssertionError(f"expected {n} workers, have {_children(pid)}")


def _mllp(port: int, message: bytes) -> bytes:
    from adapters.hl7v2.framer import frame

    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(frame(message))
        data = b""
        while not data.endswith(b"\x1c\r"):
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
    return data


@pytest.mark.slow
def test_serve_workers_share_the_listeners_and_are_replaced(tmp_path: Path) -> None:
    from tests.adapters.hl7v2.messages import orm
    from tests.conftest import new_pg_database

    mllp_port = free_port()
    with new_pg_database("serve_workers") as url:
        env = {
            "CGTHUB_DATABASE_URL": url,
            "CGTHUB_MLLP_PORT": str(mllp_port),
            # Worker 0 may be stopped while it holds the audit head's row lock (CI caught it once):
            # PostgreSQL ends its session after this, and the edge worker's ORM goes through.
            "CGTHUB_DB_IDLE_IN_TRANSACTION_TIMEOUT_S": "2",
        }
        with launched(tmp_path, "--workers", "2", **env) as (port, proc):
            first = _workers(proc.pid, 2)
            for i in range(12):  # each on a new connection, to whichever worker accepts it
                assert httpx.get(f"http://127.0.0.1:{port}/healthz").json() == {"status": "ok"}
                ack = _mllp(mllp_port, orm(f"PW{i:05d}", f"MW{i:05d}"))
                assert b"MSA|AA|" in ack or b"MSA|CA|" in ack, ack
            (runtime_worker,) = [w for w in first if b"CGTHUB_WORKER_INDEX=0\x00" in _environ(w)]
            os.kill(runtime_worker, signal.SIGSTOP)  # now only the edge worker can accept
            try:
                # the edge worker may still be starting (all requests so far may have gone to worker 0)
                assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=90).json() == {"status": "ok"}
                ack = _mllp(mllp_port, orm("PWEDGE", "MWEDGE"))
                assert b"MSA|AA|" in ack or b"MSA|CA|" in ack, ack  # committed by the edge process
            finally:
                os.kill(runtime_worker, signal.SIGCONT)
            victim = max(first)
            os.kill(victim, signal.SIGKILL)  # a worker dies: the parent replaces it
            deadline = time.monotonic() + 10
            while _serving(victim) and time.monotonic() < deadline:
                time.sleep(0.05)
            second = _workers(proc.pid, 2)
            assert victim not in second
            assert len(second - first) == 1
            assert httpx.get(f"http://127.0.0.1:{port}/healthz").json() == {"status": "ok"}
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0
            assert not any(Path(f"/proc/{w}").exists() for w in second)


def test_serve_refuses_several_workers_on_sqlite(tmp_path: Path) -> None:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CGTHUB_")}
    done = subprocess.run(
        [str(CLI), "serve", "--workers", "2", "--port", str(free_port())],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "refused: 2 workers need PostgreSQL" in done.stderr


def _refused(tmp_path: Path, *args: str, command: str = "serve", **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CGTHUB_")} | env
    return subprocess.run(
        [str(CLI), command, *args], cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=60
    )


def test_serve_refuses_a_database_without_the_schema(tmp_path: Path) -> None:
    """A new database, never upgraded: refused with what to run, instead of answering /readyz and
    failing every request."""
    (tmp_path / "var").mkdir()
    done = _refused(tmp_path, "--port", str(free_port()))
    assert done.returncode == 2
    assert "has no hub schema: run `cgt-hub db upgrade` first" in done.stderr
    assert "Traceback" not in done.stderr


def test_serve_refuses_a_port_in_use_naming_it(tmp_path: Path) -> None:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CGTHUB_")}
    subprocess.run([str(CLI), "db", "upgrade"], cwd=tmp_path, env=environment, check=True, capture_output=True)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _refused(tmp_path, "--port", str(port))
    assert done.returncode == 2
    assert f"cannot listen for HTTP on 127.0.0.1:{port}" in done.stderr
    assert "CGTHUB_HTTP_PORT" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_stops_cleanly_with_exit_0(tmp_path: Path, sig: signal.Signals) -> None:
    """A clean stop is exit 0 for systemd and Kubernetes: uvicorn re-raised the SIGTERM it had
    handled, and the process died of it (143)."""
    env = {"CGTHUB_MLLP_PORT": str(free_port())}
    with launched(tmp_path, **env) as (port, proc):
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").json() == {"status": "ok"}
        proc.send_signal(sig)
        assert proc.wait(timeout=30) == 0


def _stall_mid_body(port: int) -> socket.socket:
    """A request whose body never ends (a slow client, a dead peer)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(
        b"POST /fhir/Organization HTTP/1.1\r\nHost: hub\r\nAuthorization: Bearer dev-only-operator-token\r\n"
        b'Content-Type: application/fhir+json\r\nContent-Length: 1000\r\n\r\n{"resourceType":'
    )
    return sock


def _unanswered(conn: socket.socket, data: bytes) -> bool:
    """Sent on an open connection: closed by the hub without a byte of answer."""
    try:
        conn.sendall(data)
        return conn.recv(65536) == b""
    except OSError:  # reset: the hub had closed it
        return True


def test_serve_stops_within_the_grace_despite_a_stalled_client_and_takes_no_new_message(tmp_path: Path) -> None:
    """SIGTERM with a client stalled mid-body: the stop waited for that client (60 s, 300 s) while
    the MLLP listener went on accepting and acknowledging. Now MLLP takes nothing new from the
    start of the stop, the stalled request is answered 503 after CGTHUB_SHUTDOWN_GRACE_S, and the
    process exits 0."""
    import sqlite3

    from adapters.hl7v2.framer import frame
    from tests.adapters.hl7v2.messages import orm

    mllp_port = free_port()
    env = {"CGTHUB_MLLP_PORT": str(mllp_port), "CGTHUB_SHUTDOWN_GRACE_S": "1"}
    with launched(tmp_path, **env) as (port, proc):
        waiting = socket.create_connection(("127.0.0.1", mllp_port), timeout=10)
        with waiting, _stall_mid_body(port) as stalled:
            waiting.sendall(frame(orm("PS00001", "MS00001", cid="BEFORE-STOP")))
            assert b"MSA|" in waiting.recv(65536)
            stopped_at = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert refuses_connections(mllp_port, within_s=2), "a new MLLP connection was accepted after SIGTERM"
            assert _unanswered(waiting, frame(orm("PS00002", "MS00002", cid="AFTER-STOP")))
            assert proc.wait(timeout=20) == 0
            assert time.monotonic() - stopped_at < 10
            assert stalled.recv(65536).startswith(b"HTTP/1.1 503 ")
    with sqlite3.connect(tmp_path / "var" / "cgthub.db") as db:
        stored = {row[0] for row in db.execute("SELECT external_id FROM inbox_message")}
    assert stored == {"BEFORE-STOP"}


def test_serve_counts_a_client_gone_mid_body_as_499_without_a_traceback(tmp_path: Path) -> None:
    """A client that disconnects before its body ends was a 500 with a traceback: its doing."""
    with launched(tmp_path, CGTHUB_MLLP_PORT=str(free_port())) as (port, _):
        _stall_mid_body(port).close()
        counted = ""
        deadline = time.monotonic() + 10
        while "499" not in counted and time.monotonic() < deadline:
            time.sleep(0.1)
            metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
            counted = "".join(line for line in metrics.splitlines() if 'route="/fhir/{resource_type}"' in line)
        assert 'method="POST",route="/fhir/{resource_type}",status="499"} 1.0' in counted
        assert 'status="500"' not in counted


@pytest.mark.parametrize(
    ("case", "said"),
    [
        ("unreachable database", "cannot reach the database postgresql+psycopg://127.0.0.1:"),
        ("synchronous_commit off", "PostgreSQL has synchronous_commit=off; refusing to start"),
        ("production defaults", "refusing to start in production mode: CGTHUB_SECRET_KEY is empty"),
        ("bad setting", "invalid configuration: CGTHUB_HTTP_PORT: Input should be a valid integer"),
        # Both served in the clear: TLS was on only with a certificate, whatever else was asked for.
        ("mTLS without a certificate", "invalid configuration: CGTHUB_HTTP_TLS: Value error, __KEY_FILE and __CA_FILE"),
        ("MLLP TLS without a certificate", "invalid configuration: CGTHUB_MLLP_TLS: Value error, __CLIENT_AUTH set"),
        ("client auth without a CA", "invalid configuration: CGTHUB_HTTP_TLS: Value error, __CLIENT_AUTH=required"),
        # Served with the published defaults: anyone reaching the port was a hub operator.
        (
            "default secrets on every address",
            "refusing to serve HTTP on 0.0.0.0: CGTHUB_SECRET_KEY and CGTHUB_OPERATOR",
        ),
        ("a default secret on a name", "refusing to serve HTTP on hub.example.org: CGTHUB_OPERATOR_TOKEN empty"),
    ],
)
def test_serve_refuses_what_it_cannot_start_with_in_one_line(tmp_path: Path, pg_url: str, case: str, said: str) -> None:
    """Each was a traceback of 50 to 142 lines (exit 1); a refusal is one line saying what to do, exit 2."""
    env = {
        "unreachable database": {"CGTHUB_DATABASE_URL": f"postgresql://127.0.0.1:{free_port()}/hub"},
        "synchronous_commit off": {"CGTHUB_DATABASE_URL": f"{pg_url}?options=-csynchronous_commit%3Doff"},
        "production defaults": {"CGTHUB_ENV": "production", "CGTHUB_DATABASE_URL": pg_url},
        "bad setting": {"CGTHUB_HTTP_PORT": "abc"},
        "mTLS without a certificate": {
            "CGTHUB_HTTP_TLS__KEY_FILE": str(tmp_path / "server.key"),
            "CGTHUB_HTTP_TLS__CA_FILE": str(tmp_path / "ca.pem"),
            "CGTHUB_HTTP_TLS__CLIENT_AUTH": "required",
        },
        "MLLP TLS without a certificate": {"CGTHUB_MLLP_TLS__CLIENT_AUTH": "required"},
        "client auth without a CA": {
            "CGTHUB_HTTP_TLS__CERT_FILE": str(tmp_path / "server.pem"),
            "CGTHUB_HTTP_TLS__CLIENT_AUTH": "required",
        },
        "default secrets on every address": {"CGTHUB_HTTP_HOST": "0.0.0.0"},
        "a default secret on a name": {"CGTHUB_HTTP_HOST": "hub.example.org", "CGTHUB_SECRET_KEY": "x" * 40},
    }[case]
    done = _refused(tmp_path, "--port", str(free_port()), CGTHUB_MLLP_PORT=str(free_port()), **env)
    assert (done.returncode, done.stderr.count("\n")) == (2, 1), done.stderr
    assert done.stderr.startswith(f"refused: {said}"), done.stderr


def test_every_command_refuses_a_bad_setting_in_one_line(tmp_path: Path) -> None:
    done = _refused(tmp_path, "list", command="orders", CGTHUB_WORKERS="0", CGTHUB_SECRET_KEY="abc")
    assert (done.returncode, done.stderr.count("\n")) == (2, 1), done.stderr
    assert "CGTHUB_WORKERS: Input should be greater than or equal to 1" in done.stderr
