"""The FHIR API over real HTTP: ServiceRequest creates/s and search-by-identifier latency.

Setup, the same for the hub and its baseline: the server is a separate process (uvicorn, one
worker, 127.0.0.1, ephemeral port); this process is the client (httpx, HTTP/1.1 keep-alive).
``--workers K`` runs K server processes on one listening socket for the creates, as
``cgt-hub serve --workers K`` does (hub/serve.py), for the baseline and the hub alike.

* **creates**: ``POST /fhir/ServiceRequest`` with a SMART access token, 16 concurrent clients.
  Each is a therapy order: Idempotency-Key-capable inbox record, fhir.resources + profile
  validation, CoI assigned, Patient/Practitioner/ServiceRequest/11 Tasks stored and indexed, audit
  chain, outbox event, durable COMMIT (SQLite WAL synchronous=FULL; PostgreSQL synchronous_commit=on).
* **search**: ``GET /fhir/ServiceRequest?identifier=<CoI system>|<CoI>`` one request at a time, as
  the ordering partner (the isolation predicate and, on PostgreSQL, row-level security apply), with
  1,000 and with 100,000 orders stored.
* **baseline**: a bare FastAPI app in the same setup: ``POST`` echoes the JSON body with 201,
  ``GET`` returns a small JSON Bundle — HTTP, JSON and the server loop, nothing of the hub.

Seeding 100,000 orders through the core would take longer than the benchmark is worth (the core
accepts a few hundred orders/s here), so the first 1,000 are placed through ``OrderService.place``
and the rest are clones of those rows (resource, search index, order and participant rows: what
search reads) with fresh ids, CoIs, placer numbers and MRNs. Versions and audit entries of the
clones are not written (search does not read them).

    .venv/bin/python bench/fhir_api.py [--backend sqlite|postgres|both] [--creates 2000] [--orders 100000]
        [--workers K]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from bench._common import REPO, fresh_database, machine, percentile

CALLERS = 16
SEARCH_SAMPLES = 400


# --------------------------------------------------------------------------- servers (subprocess)
def _serve(kind: str, db: str, jwks_file: str, fd: str) -> None:
    import uvicorn

    if kind == "baseline":
        from hub.api.app import telemetry

        # The hub's default telemetry setting (CGTHUB_OTEL_ENABLED=false), as the hub runs with.
        app = FastAPI(telemetry=telemetry(False))

        @app.post("/fhir/ServiceRequest")
        async def create(request: Request) -> JSONResponse:
            return JSONResponse(await request.json(), status_code=201, media_type="application/fhir+json")

        @app.get("/fhir/ServiceRequest")
        async def search(request: Request) -> JSONResponse:
            return JSONResponse({"resourceType": "Bundle", "type": "searchset", "entry": []})

    else:
        from adapters.registry import channel_schemas
        from hub.api.app import create_app
        from hub.api.demo_fhir import with_demo_client
        from hub.context import HubContext
        from hub.db.uow import open_store
        from hub.partners.loader import load_directory
        from hub.settings import Settings

        settings = Settings(database_url=db, profiles_dir=REPO / "partner-profiles")
        partners, _ = load_directory(settings.profiles_dir, channel_schemas())
        partners = with_demo_client(partners, json.loads(Path(jwks_file).read_text()))
        app = create_app(HubContext(settings, open_store(db), partners), settle_heap=True)  # as `cgt-hub serve`
    sock = socket.socket(fileno=int(fd))  # bound by the bench as `cgt-hub serve` binds it
    config = uvicorn.Config(app, log_level="error", access_log=False)
    uvicorn.Server(config).run(sockets=[sock])


class Server:
    def __init__(self, kind: str, db: str, jwks_file: str, workers: int = 1) -> None:
        from hub.serve import listening_socket

        sock = listening_socket("127.0.0.1", 0)
        self.port = sock.getsockname()[1]
        self.workers = workers
        self.procs = [
            subprocess.Popen(
                [sys.executable, __file__, "serve", kind, db, jwks_file, str(sock.fileno())],
                stdout=subprocess.DEVNULL,
                pass_fds=(sock.fileno(),),
            )
            for _ in range(workers)
        ]
        sock.close()

    def __enter__(self) -> str:
        deadline = time.time() + 60
        base = f"http://127.0.0.1:{self.port}"
        while True:
            if any(p.poll() is not None for p in self.procs):
                raise RuntimeError("bench server did not start")
            try:
                httpx.get(base + "/fhir/ServiceRequest", timeout=2)
                break
            except httpx.HTTPError:
                if time.time() > deadline:
                    raise
                time.sleep(0.05)
        if self.workers > 1:
            time.sleep(5)  # the first process answering does not mean all of them do
        return base

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            proc.wait(timeout=30)


# --------------------------------------------------------------------------- client side
def _token(base: str, key: Any) -> dict[str, str]:
    from hub.api.demo_fhir import CLIENT_ID, SCOPES
    from hub.api.onboarding import client_assertion

    url = f"{base}/auth/token"
    r = httpx.post(
        url,
        data={
            "grant_type": "client_credentials",
            "scope": SCOPES,
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": client_assertion(key.as_pem(private=True), CLIENT_ID, url),
        },
    )
    r.raise_for_status()
    return {"Authorization": f"Bearer {r.json()['access_token']}", "Content-Type": "application/fhir+json"}


async def _creates(base: str, headers: dict[str, str], n: int) -> tuple[float, list[float]]:
    from hub.api.demo_fhir import fhir_order

    bodies = [json.dumps(fhir_order(f"B{uuid.uuid4().hex[:12]}")).encode() for _ in range(n)]
    latencies: list[float] = []
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for b in bodies:
        queue.put_nowait(b)
    limits = httpx.Limits(max_connections=CALLERS, max_keepalive_connections=CALLERS)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as client:

        async def worker() -> None:
            while not queue.empty():
                body = queue.get_nowait()
                t0 = time.perf_counter()
                r = await client.post("/fhir/ServiceRequest", content=body, headers=headers)
                latencies.append(time.perf_counter() - t0)
                if r.status_code != 201:
                    raise RuntimeError(f"create answered {r.status_code}: {r.text[:300]}")

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CALLERS)))
        elapsed = time.perf_counter() - started
    return n / elapsed, latencies


def _searches(base: str, headers: dict[str, str], values: list[str]) -> list[float]:
    from hub.orders.fhir import COI_SYSTEM

    out = []
    with httpx.Client(base_url=base, timeout=60) as client:
        for value in values:
            t0 = time.perf_counter()
            r = client.get("/fhir/ServiceRequest", params={"identifier": f"{COI_SYSTEM}|{value}"}, headers=headers)
            out.append(time.perf_counter() - t0)
            if r.status_code != 200:
                raise RuntimeError(f"search answered {r.status_code}")
    return out


# --------------------------------------------------------------------------- seeding
def _seed_core(db: str, n: int) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from adapters.registry import channel_schemas
    from hub.db.uow import open_store
    from hub.orders.service import OrderService
    from hub.partners.loader import load_directory
    from tests.builders import place_cmd

    partners, _ = load_directory(REPO / "partner-profiles", channel_schemas())
    store = open_store(db)
    store.start_committer()
    with ThreadPoolExecutor(CALLERS) as pool:
        list(pool.map(lambda _: store.run(lambda w: OrderService(w, partners).place(place_cmd())), range(n)))
    store.dispose()


def _clone_orders(db: str, total: int) -> None:
    """Grow the store to ``total`` orders by cloning one placed order's rows (see the docstring)."""
    from sqlalchemy import select, text

    from hub.db.bulk import insert_rows
    from hub.db.models import (
        OrderParticipant,
        Resource,
        SearchDate,
        SearchReference,
        SearchToken,
        TherapyOrder,
        table_of,
    )
    from hub.db.uow import open_store

    store = open_store(db)
    with store.write_engine.connect() as conn:
        current = conn.execute(text("SELECT count(*) FROM therapy_order")).scalar_one()
    missing = total - int(current)
    if missing <= 0:
        store.dispose()
        return
    with store.reading() as s:
        order = s.execute(select(TherapyOrder).limit(1)).scalar_one()
        oid, pid, coi, placer = order.id, order.patient_id, order.coi, order.placer_number
        keys = [("ServiceRequest", oid), ("Patient", pid)] + [("Task", f"{oid}-s{i:02d}") for i in range(20)]
        res = [
            r
            for k in keys
            for r in s.execute(select(Resource).where(Resource.resource_type == k[0], Resource.id == k[1])).scalars()
        ]
        owned = lambda model: [  # noqa: E731
            r
            for k in keys
            for r in s.execute(select(model).where(model.resource_type == k[0], model.id == k[1])).scalars()
        ]
        tok, ref, dat = owned(SearchToken), owned(SearchReference), owned(SearchDate)
        parts = list(s.execute(select(OrderParticipant).where(OrderParticipant.order_id == oid)).scalars())
        mrn = json.loads(next(r.content for r in res if r.resource_type == "Patient"))["identifier"][0]["value"]
    cols = lambda model: [c.name for c in table_of(model).columns if c.name != "pk"]  # noqa: E731
    chunk = 2000
    done = 0
    while done < missing:
        batch = min(chunk, missing - done)
        rows: dict[Any, list[dict[str, Any]]] = {
            m: [] for m in (Resource, SearchToken, SearchReference, SearchDate, TherapyOrder, OrderParticipant)
        }
        for i in range(batch):
            n_oid, n_pid = str(uuid.uuid4()), str(uuid.uuid4())
            seq = int(current) + done + i + 1
            n_coi = f"{coi[:9]}{seq:06d}"  # CH + FIN + year + a sequence the core has not used
            subst = ((oid, n_oid), (pid, n_pid), (coi, n_coi), (placer, f"CLONE{seq:09d}"), (mrn, f"CMRN{seq:09d}"))

            def fix(value: Any, subst: tuple[tuple[str, str], ...] = subst) -> Any:
                if isinstance(value, str):
                    for a, b in subst:
                        value = value.replace(a, b)
                return value

            for model, source in (
                (Resource, res),
                (SearchToken, tok),
                (SearchReference, ref),
                (SearchDate, dat),
                (OrderParticipant, parts),
            ):
                for r in source:
                    rows[model].append({c: fix(getattr(r, c)) for c in cols(model)})
            rows[TherapyOrder].append({c: fix(getattr(order, c)) for c in cols(TherapyOrder)} | {"coi": n_coi})
        with store.write_engine.begin() as conn:
            from sqlalchemy.orm import Session

            session = Session(bind=conn)
            for model in (TherapyOrder, OrderParticipant, Resource, SearchToken, SearchReference, SearchDate):
                insert_rows(session, table_of(model), rows[model])
            session.flush()
        done += batch
    with store.write_engine.connect() as conn:
        if store.dialect == "postgresql":
            conn.execute(text("ANALYZE"))
        else:
            conn.exec_driver_sql("ANALYZE")
        conn.commit()
    store.dispose()


def _sample_cois(db: str, k: int) -> list[str]:
    import random

    from sqlalchemy import select

    from hub.db.models import TherapyOrder
    from hub.db.uow import open_store

    store = open_store(db)
    values = store.read(lambda s: list(s.scalars(select(TherapyOrder.coi))))
    store.dispose()
    rng = random.Random(7)
    return [rng.choice(values) for _ in range(k)]


# --------------------------------------------------------------------------- main
def run(backend: str, creates: int, orders: int, workers: int = 1) -> None:
    from hub.api.onboarding import generate_key, public_jwks

    key = generate_key("ES384")
    jwks_file = tempfile.mktemp(prefix="cgthub-bench-jwks-")
    Path(jwks_file).write_text(json.dumps(public_jwks(key, "ES384")))
    try:
        with fresh_database(backend) as db:
            with Server("baseline", db, jwks_file, workers) as base:
                rate_b, lat_b = asyncio.run(_creates(base, {"Content-Type": "application/fhir+json"}, creates))
                search_b = _searches(base, {}, ["x"] * SEARCH_SAMPLES)
            print(
                f"{backend:<9} {'baseline: bare FastAPI POST':<34} {rate_b:>8.0f}/s "
                f"p50 {percentile(lat_b, 50) * 1e3:6.1f} p99 {percentile(lat_b, 99) * 1e3:6.1f} ms"
            )
            with Server("hub", db, jwks_file, workers) as base:
                headers = _token(base, key)
                asyncio.run(_creates(base, headers, 50 * workers))  # warm imports and caches
                rate, lat = asyncio.run(_creates(base, headers, creates))
            print(
                f"{backend:<9} {'hub: POST ServiceRequest (order)':<34} {rate:>8.0f}/s "
                f"p50 {percentile(lat, 50) * 1e3:6.1f} p99 {percentile(lat, 99) * 1e3:6.1f} ms   "
                f"{rate / rate_b:.2f}x baseline   goal >= 500/s, p99 < 50 ms"
            )
            print(
                f"{backend:<9} {'baseline: bare FastAPI GET':<34} p50 {percentile(search_b, 50) * 1e3:6.2f} "
                f"p99 {percentile(search_b, 99) * 1e3:6.2f} ms"
            )
        if not orders:
            return
        with fresh_database(backend) as db:
            t0 = time.perf_counter()
            _seed_core(db, 1000)
            print(f"{backend:<9} seeded 1,000 orders through the core in {time.perf_counter() - t0:.0f} s")
            p99s = []
            for size in (1000, orders):
                if size > 1000:
                    t0 = time.perf_counter()
                    _clone_orders(db, size)
                    print(f"{backend:<9} grew to {size:,} orders by cloning in {time.perf_counter() - t0:.0f} s")
                values = _sample_cois(db, SEARCH_SAMPLES)
                with Server("hub", db, jwks_file) as base:
                    headers = _token(base, key)
                    _searches(base, headers, values[:50])  # warm
                    lat = _searches(base, headers, values)
                p99s.append(percentile(lat, 99))
                print(
                    f"{backend:<9} {f'hub: search identifier, {size:,} orders':<34} "
                    f"p50 {percentile(lat, 50) * 1e3:6.2f} p99 {percentile(lat, 99) * 1e3:6.2f} ms   goal p99 < 20 ms"
                )
            print(f"{backend:<9} search p99 growth 1,000 -> {orders:,}: {p99s[1] / p99s[0]:.2f}x   goal <= 1.5x")
    finally:
        os.unlink(jwks_file)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        _serve(*sys.argv[2:6])
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--creates", type=int, default=2000)
    parser.add_argument("--orders", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=1, help="server processes for the creates")
    parser.add_argument("--skip-search", action="store_true", help="measure the creates only")
    args = parser.parse_args()
    print(f"fhir_api: {args.creates} creates, {CALLERS} concurrent clients; search at 1,000 and {args.orders:,} orders")
    print(f"machine: {machine()}; server: {args.workers} uvicorn process(es), client: this process")
    for backend in ["sqlite", "postgres"] if args.backend == "both" else [args.backend]:
        run(backend, args.creates, 0 if args.skip_search else args.orders, args.workers)


if __name__ == "__main__":
    main()
