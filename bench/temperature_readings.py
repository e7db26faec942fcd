"""Temperature readings with excursion checks: logger batches through the core's
TemperatureService — each reading checked against the leg's range from the product definition,
the running excursion state advanced (open / escalate / close, with alerts and the QA hold), every
reading stored (append-only), one validated FHIR Observation summarising each batch, audited, one
transaction per batch, committed durably.

Baseline, same run, same database: the same rows inserted with a bare executemany into a
one-table schema, one transaction per batch (the storage floor, without any checking).

    .venv/bin/python bench/temperature_readings.py [--readings 100000] [--batch 500] [--backend sqlite|postgres]
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import text

from adapters.registry import channel_schemas
from bench._common import REPO, fresh_database, machine
from hub.db.types import utcnow
from hub.db.uow import open_store
from hub.logistics.schemas import Reading, RecordReadings
from hub.logistics.temperature import TemperatureService
from hub.partners.loader import load_directory
from tests.logistics_support import order_at, register


def batches(n: int, size: int) -> list[tuple[Reading, ...]]:
    start = utcnow() - timedelta(days=30)
    out = []
    for b in range(0, n, size):
        rows = []
        for i in range(b, min(n, b + size)):
            # Mostly 4-6 °C, with a 3-minute warm spell every 1000 readings (opens and closes excursions).
            temp = 9.0 if i % 1000 < 3 else 4.0 + (i % 20) / 10
            rows.append(Reading(at=start + timedelta(minutes=i), temperature_c=temp))
        out.append(tuple(rows))
    return out


def bench_hub(url: str, n: int, size: int) -> tuple[float, int]:
    partners, _ = load_directory(REPO / "partner-profiles", channel_schemas())
    store = open_store(url)
    driver = order_at(store, partners, "collected")
    register(store, partners, driver.order.id, tracking="BENCH0001")
    work = batches(n, size)
    excursions = 0
    started = time.perf_counter()
    for readings in work:
        cmd = RecordReadings(courier="polar-courier", tracking_number="BENCH0001", logger="L-1", readings=readings)
        result = store.run(lambda w, c=cmd: TemperatureService(w, partners).record(c))
        excursions += len(result.opened)
    elapsed = time.perf_counter() - started
    store.dispose()
    return n / elapsed, excursions


def bench_baseline(url: str, n: int, size: int) -> float:
    store = open_store(url)
    with store.write_engine.begin() as conn:
        conn.execute(text("CREATE TABLE bare_reading (shipment TEXT, at TEXT, temperature REAL)"))
    work = batches(n, size)
    started = time.perf_counter()
    for readings in work:
        with store.write_engine.begin() as conn:
            conn.execute(
                text("INSERT INTO bare_reading (shipment, at, temperature) VALUES (:s, :a, :t)"),
                [{"s": "x", "a": r.at.isoformat(), "t": r.temperature_c} for r in readings],
            )
    elapsed = time.perf_counter() - started
    store.dispose()
    return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--readings", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    args = parser.parse_args()
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    print(f"temperature_readings: {args.readings} readings in batches of {args.batch} on {machine()}")
    print(f"{'backend':<10} {'mode':<40} {'readings/s':>11}  vs baseline")
    for backend in backends:
        with fresh_database(backend) as url:
            base = bench_baseline(url, args.readings, args.batch)
        print(f"{backend:<10} {'baseline: bare executemany insert':<40} {base:>11,.0f}  1.00x")
        with fresh_database(backend) as url:
            rate, excursions = bench_hub(url, args.readings, args.batch)
        mode = f"hub: checked, stored, summarised ({excursions} exc.)"
        print(f"{backend:<10} {mode:<40} {rate:>11,.0f}  {rate / base:.2f}x")
    print("goal: >= 5,000 readings/s with excursion checks")


if __name__ == "__main__":
    main()
