"""`cgt-hub serve`: the API, the MLLP listener and the runtime in one process, or in several.

**One process** (``CGTHUB_WORKERS=1``, the default): everything below runs in it.

**Several** (``--workers N``, PostgreSQL only): the parent binds the HTTP and MLLP listening sockets
once and starts N worker processes (spawned, not forked) that share them; the kernel hands each
new connection to one of them. Worker 0 runs everything; workers 1…N-1 are *edge* processes:
their listeners and their committer only. The relay, the bus consumers, the outbound senders
and the logistics dispatcher run once, in worker 0: the relay's lease lets one publisher work at
a time anyway (hub/messaging/relay.py), with the in-process bus the consumers must live where
the relay publishes, and the edge processes' CPU goes to the listeners. Every unit of work an
edge process accepts is committed (inbox + outbox) before it answers, exactly as in one
process; worker 0's relay picks the rows up from the database. The parent replaces a worker that dies (at most
``RESTARTS_PER_MINUTE`` times a minute, then it stops them all and exits non-zero, so the
service manager sees the failure) and on SIGTERM or SIGINT stops them all and waits for each to
finish its in-flight work.

Why PostgreSQL only: SQLite lets one process write at a time, through a file lock that a waiting
writer polls with sleeps of up to 100 ms. Measured with two webhook servers on one SQLite file
(bench/README.md, "Several worker processes"): no faster than one (661 vs 685/s) and the p99
went from 71 ms to 858 ms. One process with its group committer is the right shape for SQLite.

Why a socket made here and not by uvicorn: asyncio sets TCP_NODELAY on accepted connections only
when the listening socket says ``IPPROTO_TCP``; a socket made with the default protocol 0 leaves
Nagle's algorithm on, and every keep-alive response then waits ~40 ms for a delayed ACK
(measured: 724 instead of 3,185 bare requests/s).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import ssl
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import uvicorn

from hub.logs import configure
from hub.settings import Settings

if TYPE_CHECKING:
    from hub.runtime import Runtime

log = logging.getLogger(__name__)

RESTARTS_PER_MINUTE = 5
# A worker's stop after its HTTP grace (CGTHUB_SHUTDOWN_GRACE_S): the MLLP frames in flight, the
# runtime's loops and the bus (each bounded, hub/runtime.py). Past both the parent kills it.
STOP_MARGIN_S = 30.0


class ServeRefused(Exception):
    """``serve`` cannot start as asked; the message says why and what to do (exit 2)."""


class WorkersRefused(ServeRefused):
    """Several workers were asked for where they cannot work (SQLite)."""


_HINTS = {
    "HTTP": "CGTHUB_HTTP_HOST / CGTHUB_HTTP_PORT, or --host / --port",
    "MLLP": "CGTHUB_MLLP_HOST / CGTHUB_MLLP_PORT, or CGTHUB_MLLP_ENABLED=false",
}


def listening_socket(host: str, port: int, what: str = "HTTP") -> socket.socket:
    try:
        return _listening_socket(host, port)
    except OSError as exc:
        raise ServeRefused(
            f"cannot listen for {what} on {host}:{port}: {exc.strerror or exc} (choose another with {_HINTS[what]})"
        ) from None


def _listening_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    # log_config=None: uvicorn's loggers go to the hub's handler (hub/logs.py), whose tracebacks
    # carry no exception messages; uvicorn's default config would print them.
    # timeout_graceful_shutdown: on SIGTERM, requests still running after this are cancelled (a
    # client stalled mid-body held the stop for as long as it stalled: 60 s, 300 s).
    options: dict[str, Any] = {
        "access_log": False,
        "log_level": settings.log_level.lower(),
        "log_config": None,
        "timeout_graceful_shutdown": settings.shutdown_grace_s,
    }
    tls = settings.http_tls
    if tls.enabled:
        options |= {
            "ssl_certfile": str(tls.cert_file),
            "ssl_keyfile": str(tls.key_file) if tls.key_file else None,
            "ssl_ca_certs": str(tls.ca_file) if tls.ca_file else None,
            "ssl_cert_reqs": {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}[
                tls.client_auth
            ],
        }
    return options


def serve(settings: Settings, host: str, port: int, workers: int) -> int:
    """Run until stopped; the process exit code. The listening sockets are bound here, before any
    worker starts, so a port in use is refused with its name rather than a traceback."""
    if workers > 1 and settings.database_url.startswith("sqlite"):
        raise WorkersRefused(
            f"{workers} workers need PostgreSQL: SQLite has one writer at a time, and worker processes "
            "queue on its file lock (slower than one process, and with 0.9 s waits). Run one worker on "
            "SQLite (CGTHUB_WORKERS=1)."
        )
    _preflight(settings, host)
    http = listening_socket(host, port)
    mllp = listening_socket(settings.mllp_host, settings.mllp_port, "MLLP") if settings.mllp_enabled else None
    scheme = "https" if settings.http_tls.enabled else "http"
    log.info("HTTP on %s://%s:%d", scheme, host, port)
    if workers <= 1:
        _run_worker(settings, index=0, edge=False, http=http, mllp=mllp)
        return 0
    return _Supervisor(settings, workers, http, mllp).run()


def _preflight(settings: Settings, host: str) -> None:
    """What would stop every worker, checked once before any listens: production secrets (and no
    development-default secret on an address beyond loopback), the database reachable, at this
    code's schema and durable. A refusal is one line (exit 2), not a traceback, and
    ``--workers N`` does not start N workers that each fail the same way."""
    from hub.db.engine import check_durability, make_engines
    from hub.db.migrate import check_schema

    with _refusals(settings):
        settings.check_production()
        settings.check_exposure(host)
        write, read = make_engines(settings.database_url, settings.lock_limits)
        try:
            check_schema(write, settings.database_url)
            check_durability(write)
        finally:
            write.dispose()
            read.dispose()


@contextlib.contextmanager
def _refusals(settings: Settings) -> Iterator[None]:
    """Start-up failures an operator fixes outside the code, as a ServeRefused saying what to do."""
    from sqlalchemy.exc import OperationalError

    from hub.context import ProfileErrors
    from hub.db.engine import DurabilityError
    from hub.db.migrate import SchemaNotReady
    from hub.settings import ProductionConfigError

    try:
        yield
    except (SchemaNotReady, ProductionConfigError, ProfileErrors) as exc:
        raise ServeRefused(str(exc)) from None
    except DurabilityError as exc:
        raise ServeRefused(f"{exc}: turn it on in the database's configuration, or in CGTHUB_DATABASE_URL") from None
    except OperationalError as exc:
        raise ServeRefused(
            f"cannot reach the database {_where(settings.database_url)}: {_first_line(exc.orig or exc)} "
            "(is it running? check CGTHUB_DATABASE_URL)"
        ) from None


def _where(database_url: str) -> str:
    from sqlalchemy.engine import make_url

    from hub.db.engine import normalise_url

    return make_url(normalise_url(database_url)).render_as_string(hide_password=True)


def _first_line(exc: BaseException) -> str:
    # psycopg's message goes on with hints ("Is the server running on that host…") on more lines.
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


@dataclass
class _Supervisor:
    settings: Settings
    workers: int
    http: socket.socket
    mllp: socket.socket | None

    def run(self) -> int:
        context = multiprocessing.get_context("spawn")
        stopping = False

        def stop(signum: int, _frame: object) -> None:
            nonlocal stopping
            stopping = True

        previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
        procs: dict[int, multiprocessing.process.BaseProcess] = {}
        restarts: list[float] = []
        code = 0

        def start(index: int) -> None:
            # Inherited by the spawned child: `ps e` or /proc/<pid>/environ tell workers apart.
            os.environ["CGTHUB_WORKER_INDEX"] = str(index)
            proc = context.Process(
                target=_worker_main,
                args=(self.settings, index, self.http, self.mllp),
                name=f"cgt-hub-worker-{index}",
                daemon=False,
            )
            proc.start()
            procs[index] = proc
            log.info("worker %d started (pid %s, %s)", index, proc.pid, "edge" if index else "runtime")

        try:
            for index in range(self.workers):
                start(index)
            while not stopping:
                multiprocessing.connection.wait([p.sentinel for p in procs.values()], timeout=0.5)
                dead = [(i, p) for i, p in procs.items() if not p.is_alive()]
                if dead and not stopping:
                    time.sleep(0.5)  # Ctrl-C reaches the workers too: let our own handler run first
                for index, proc in dead:
                    if stopping:
                        break
                    log.error("worker %d (pid %s) exited with %s; replacing it", index, proc.pid, proc.exitcode)
                    now = time.monotonic()
                    restarts = [t for t in restarts if now - t < 60] + [now]
                    if len(restarts) > RESTARTS_PER_MINUTE:
                        log.critical("workers keep dying (%d restarts in a minute): stopping", len(restarts))
                        stopping, code = True, 1
                        break
                    start(index)
        finally:
            # New connections are refused from here on, not left in a backlog nobody will serve.
            self.http.close()
            if self.mllp is not None:
                self.mllp.close()
            for proc in procs.values():
                if proc.is_alive():
                    proc.terminate()  # SIGTERM: uvicorn finishes in-flight requests, the runtime stops
            grace = self.settings.shutdown_grace_s + STOP_MARGIN_S
            deadline = time.monotonic() + grace
            for proc in procs.values():
                proc.join(max(0.1, deadline - time.monotonic()))
                if proc.is_alive():
                    log.error("worker %s did not stop in %.0f s: killed", proc.name, grace)
                    proc.kill()
                    proc.join()
            for s, handler in previous.items():
                signal.signal(s, handler)
        return code


def _worker_main(settings: Settings, index: int, http: socket.socket, mllp: socket.socket | None) -> None:
    configure(settings.log_level, f"%(asctime)s %(levelname)s worker-{index} %(name)s %(message)s")
    try:
        _run_worker(settings, index=index, edge=index > 0, http=http, mllp=mllp)
    except ServeRefused as exc:  # e.g. the database went away since the parent's checks
        log.critical("worker %d cannot start: %s", index, exc)
        sys.exit(3)


def _run_worker(settings: Settings, *, index: int, edge: bool, http: socket.socket, mllp: socket.socket | None) -> None:
    from hub.api.app import create_app
    from hub.runtime import build_runtime

    # uvicorn handles SIGTERM and SIGINT while it runs and, once stopped, restores the handlers it
    # found and raises the signal again: with the default handlers a clean stop on SIGTERM died of
    # it (exit 143), which systemd and Kubernetes count as a failure. The handlers it finds are
    # these, which only ask for a stop: a signal during start-up is served as soon as the server
    # runs, and the one raised again after the stop does nothing, so a clean stop exits 0.
    stop = _StopRequest()
    previous = {s: signal.signal(s, stop.handle) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        with _refusals(settings):
            runtime = build_runtime(settings, services=True, edge=edge, mllp_socket=mllp)
        application = create_app(runtime.ctx, runtime, settle_heap=True)
        server = stop.server = _Server(uvicorn.Config(application, **uvicorn_options(settings)), runtime)
        server.should_exit = stop.requested
        log.info("worker %d serving (%s)", index, "edge" if edge else "runtime")
        server.run(sockets=[http])
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if not server.started:  # start-up failed (e.g. the database is down): say so to the service manager
        sys.exit(3)


@dataclass
class _StopRequest:
    requested: bool = False
    server: uvicorn.Server | None = None

    def handle(self, _signum: int, _frame: object) -> None:
        self.requested = True
        if self.server is not None:
            self.server.should_exit = True


class _Server(uvicorn.Server):
    """uvicorn's server, which also tells the runtime when shutdown begins: the MLLP listener then
    stops taking connections and messages at once, rather than after every HTTP request has ended
    (it accepted and acknowledged new messages all through the HTTP grace period)."""

    def __init__(self, config: uvicorn.Config, runtime: Runtime) -> None:
        super().__init__(config)
        self.runtime = runtime

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.runtime.stop_accepting()
        await super().shutdown(sockets)
