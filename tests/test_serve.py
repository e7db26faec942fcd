"""`cgt-hub serve` as an operator starts it: plain HTTP, TLS, and mutual TLS."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.support.tls import make_pki

ROOT = Path(__file__).resolve().parents[1]
CLI = Path(sys.executable).parent / "cgt-hub"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serving(tmp_path: Path, **env: str) -> Iterator[int]:
    shutil.copytree(ROOT / "partner-profiles", tmp_path / "partner-profiles", dirs_exist_ok=True)
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CGTHUB_")}
    environment.update(env)
    subprocess.run([str(CLI), "db", "upgrade"], cwd=tmp_path, env=environment, check=True, capture_output=True)
    proc = subprocess.Popen(
        [str(CLI), "serve", "--port", str(port)],
        cwd=tmp_path,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
        assert b"Traceback" not in out, out.decode(errors="replace")


def test_serve_plain_http(tmp_path: Path) -> None:
    with serving(tmp_path) as port:
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").json() == {"status": "ok"}
        ready = httpx.get(f"http://127.0.0.1:{port}/readyz").json()
        assert ready["checks"] == {"database": "ok", "bus": "ok"}


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
