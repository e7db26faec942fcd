"""How fast the core accepts therapy orders: validated (fhir.resources R4B + order rules), CoI
assigned, Patient/Practitioner/ServiceRequest and one Task per journey step stored and indexed,
audited in the hash chain, outbox event written, committed durably (SQLite WAL synchronous=FULL;
PostgreSQL synchronous_commit=on) before the caller hears back.

Two ways in, as the edges use them:
  * sequential: one caller, one transaction per order;
  * concurrent: 64 callers through the group committer (what MLLP connections and HTTP workers do).

Baseline, same run, same machine, same database settings: a bare durable insert — the order's JSON
into a one-table schema, one transaction per order, 64 concurrent callers — i.e. the
durable-commit floor with none of the hub's work.

    .venv/bin/python bench/accept_orders.py [--orders 3000] [--backend sqlite|postgres|both]
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import text

from adapters.registry import channel_schemas
from bench._common import REPO, fresh_database, machine, percentile
from hub.audit.service import verify_chain
from hub.db.uow import open_store
from hub.orders.service import OrderService
from hub.partners.loader import load_directory
from tests.builders import place_cmd

CALLERS = 64


def bench_hub(url: str, n: int, concurrent: bool) -> tuple[float, list[float]]:
    partners, _ = load_directory(REPO / "partner-profiles", channel_schemas())
    store = open_store(url)
    cmds = [place_cmd() for _ in range(n)]
    store.run(lambda w: OrderService(w, partners).place(place_cmd()))  # warm imports and caches
    latencies: list[float] = []
    lock = threading.Lock()

    def one(cmd: object) -> None:
        t0 = time.perf_counter()
        store.run(lambda w: OrderService(w, partners).place(cmd))  # type: ignore[arg-type]
        dt = time.perf_counter() - t0
        with lock:
            latencies.append(dt)

    started = time.perf_counter()
    if concurrent:
        store.start_committer()
        with ThreadPoolExecutor(CALLERS) as pool:
            list(pool.map(one, cmds))
    else:
        for cmd in cmds:
            one(cmd)
    elapsed = time.perf_counter() - started
    assert verify_chain(store).ok
    store.dispose()
    return n / elapsed, latencies


def bench_baseline(url: str, n: int) -> float:
    store = open_store(url)
    with store.write_engine.begin() as conn:
        conn.execute(text("CREATE TABLE bare_order (id INTEGER PRIMARY KEY, body TEXT NOT NULL)"))
    bodies = [json.dumps(place_cmd().model_dump(mode="json")) for _ in range(n)]
    counter = iter(range(n))
    lock = threading.Lock()

    def one(body: str) -> None:
        with lock:
            i = next(counter)
        with store.write_engine.begin() as conn:
            conn.execute(text("INSERT INTO bare_order (id, body) VALUES (:i, :b)"), {"i": i, "b": body})

    started = time.perf_counter()
    with ThreadPoolExecutor(CALLERS) as pool:
        list(pool.map(one, bodies))
    elapsed = time.perf_counter() - started
    store.dispose()
    return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--orders", type=int, default=3000)
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    args = parser.parse_args()
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    print(f"accept_orders: {args.orders} orders per run on {machine()}")
    print(f"{'backend':<10} {'mode':<22} {'orders/s':>9} {'p50 ms':>8} {'p99 ms':>8}  vs baseline")
    for backend in backends:
        with fresh_database(backend) as url:
            base = bench_baseline(url, args.orders)
        print(f"{backend:<10} {'baseline bare insert':<22} {base:>9.0f} {'':>8} {'':>8}  1.00x")
        for concurrent in (False, True):
            with fresh_database(backend) as url:
                rate, lat = bench_hub(url, args.orders, concurrent)
            mode = f"hub, {CALLERS} callers" if concurrent else "hub, sequential"
            print(
                f"{backend:<10} {mode:<22} {rate:>9.0f} {percentile(lat, 50) * 1e3:>8.1f} "
                f"{percentile(lat, 99) * 1e3:>8.1f}  {rate / base:.2f}x"
            )
    print("goal: >= 300 orders/s on SQLite and on PostgreSQL")


if __name__ == "__main__":
    main()
