"""Verified courier webhooks: how many signed Standard Webhooks deliveries per second the hub
accepts — signature verified (HMAC-SHA256, timestamp window), raw body stored in the inbox,
``courier.webhook_received`` written to the outbox, COMMIT (SQLite WAL synchronous=FULL, or
PostgreSQL), then 202 — measured over real HTTP (uvicorn in its own process, keep-alive client
with 32 concurrent requests in this process).

Baseline, same run, same server setup and client: a bare FastAPI route that reads the body and
answers 202 (no verification, no storage). The figure is reported as a ratio to it.

``--workers K`` runs K server processes on one listening socket, as ``cgt-hub serve --workers K``
does (hub/serve.py: the socket is made by the parent, the kernel deals connections to the
processes), for the baseline and for the hub alike. The hub's processes here are its edge: the
relay and the consumers are not running in this bench, with one process or with K.

    .venv/bin/python bench/courier_webhooks.py [--requests 6000] [--backend sqlite|postgres] [--workers K]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fastapi import FastAPI, Request, Response

from bench._common import REPO, fresh_database, machine, percentile

SECRET = "whsec_YmVuY2gtc2VjcmV0LWZvci1jb3VyaWVyLXdlYmhvb2tz"
CONCURRENCY = 32


def serve(kind: str, fd: int, db_url: str) -> None:
    import uvicorn

    if kind == "bare":
        from hub.api.app import telemetry

        # The hub's default telemetry setting (CGTHUB_OTEL_ENABLED=false), as the hub runs with.
        app = FastAPI(telemetry=telemetry(False))

        @app.post("/webhooks/couriers/{partner}")
        async def bare(partner: str, request: Request) -> Response:
            await request.body()
            return Response(b'{"status":"accepted"}', status_code=202, media_type="application/json")

    else:
        from hub.api.app import create_app
        from hub.context import build_context
        from hub.settings import Settings

        os.environ["POLAR_COURIER_WEBHOOK_SECRET"] = SECRET
        settings = Settings(database_url=db_url, profiles_dir=REPO / "partner-profiles", mappings_dir=REPO / "mappings")
        app = create_app(build_context(settings), settle_heap=True)  # as `cgt-hub serve` runs it
    sock = socket.socket(fileno=fd)  # made by the bench as `cgt-hub serve` makes it
    uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False)).run(sockets=[sock])


def deliveries(n: int) -> list[tuple[bytes, dict[str, str]]]:
    from adapters.couriers.sandbox import event_body, signed_headers
    from hub.db.types import utcnow

    out = []
    for i in range(n):
        body = event_body("IT", f"PLR{i % 500:09d}", utcnow(), location="Hub Amsterdam")
        out.append((body, signed_headers(SECRET, body, webhook_id=f"msg_{uuid.uuid4().hex}")))
    return out


async def _connection(port: int, queue: asyncio.Queue[bytes], latencies: list[float], errors: list[int]) -> None:
    """One keep-alive HTTP/1.1 connection sending prepared requests (a minimal client: httpx's own
    per-request cost would otherwise be what this bench measures)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while not queue.empty():
            request = queue.get_nowait()
            t0 = time.perf_counter()
            writer.write(request)
            status = await reader.readline()
            length = 0
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            if length:
                await reader.readexactly(length)
            latencies.append(time.perf_counter() - t0)
            if not status.startswith(b"HTTP/1.1 202"):
                errors.append(1)
    finally:
        writer.close()


def raw_requests(items: list[tuple[bytes, dict[str, str]]]) -> list[bytes]:
    out = []
    for body, headers in items:
        head = [b"POST /webhooks/couriers/polar-courier HTTP/1.1", b"Host: 127.0.0.1"]
        head += [f"{k}: {v}".encode() for k, v in headers.items()]
        head.append(f"Content-Length: {len(body)}".encode())
        out.append(b"\r\n".join(head) + b"\r\n\r\n" + body)
    return out


async def fire(port: int, items: list[tuple[bytes, dict[str, str]]]) -> tuple[float, list[float], int]:
    latencies: list[float] = []
    errors: list[int] = []
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for request in raw_requests(items):
        queue.put_nowait(request)
    started = time.perf_counter()
    await asyncio.gather(*(_connection(port, queue, latencies, errors) for _ in range(CONCURRENCY)))
    elapsed = time.perf_counter() - started
    return len(items) / elapsed, latencies, len(errors)


def run(kind: str, db_url: str, n: int, workers: int = 1) -> tuple[float, list[float], int]:
    from hub.serve import listening_socket

    sock = listening_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    fd = str(sock.fileno())
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--serve", kind, "--fd", fd, "--db", db_url], cwd=REPO, pass_fds=(sock.fileno(),)
        )
        for _ in range(workers)
    ]
    sock.close()
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("server did not start") from None
                time.sleep(0.1)
        asyncio.run(fire(port, deliveries(300)))  # warm up (waits for the first process to accept)
        if workers > 1:
            time.sleep(5)  # the first process answering does not mean all of them do
            asyncio.run(fire(port, deliveries(300 * workers)))
        return asyncio.run(fire(port, deliveries(n)))
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=6000)
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--serve", choices=["hub", "bare"])
    parser.add_argument("--fd", type=int, default=-1)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--db", default="")
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.fd, args.db)
        return
    print(
        f"courier_webhooks: {args.requests} signed deliveries, {CONCURRENCY} concurrent, "
        f"{args.workers} server process(es), on {machine()}"
    )
    print(f"{'backend':<10} {'server':<34} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}  vs baseline")
    with fresh_database(args.backend) as url:
        base, base_lat, base_err = run("bare", url, args.requests, args.workers)
        print(
            f"{args.backend:<10} {'baseline: bare FastAPI route':<34} {base:>8.0f}"
            f" {percentile(base_lat, 50) * 1e3:>8.1f}"
            f" {percentile(base_lat, 99) * 1e3:>8.1f} {base_err:>7}  1.00x"
        )
        rate, lat, err = run("hub", url, args.requests, args.workers)
        print(
            f"{args.backend:<10} {'hub: verify + inbox + outbox + COMMIT':<34} {rate:>8.0f}"
            f" {percentile(lat, 50) * 1e3:>8.1f} {percentile(lat, 99) * 1e3:>8.1f} {err:>7}  {rate / base:.2f}x"
        )
    print("goal: >= 2,000 verified webhooks/s with p99 < 30 ms")


if __name__ == "__main__":
    main()
