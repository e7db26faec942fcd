"""Audit chain verification speed: `cgt-hub audit verify` over a long chain.

Builds a chain of N entries (real entry hashes, realistic field sizes) on each back end, then times
the verifier (streamed from the driver, every hash recomputed) twice: in one process, and as
`cgt-hub audit verify` runs it on a long chain, sliced over one worker process per core
(hub/audit/parallel.py). Baseline in the same run: reading the same rows with the same cursor in one
process and doing nothing with them — the one-process I/O floor.

    .venv/bin/python bench/audit_verify.py [--entries 500000] [--backend sqlite|postgres|both]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import fresh_database, machine
from hub.audit.chain import FIELDS, GENESIS, entry_hash
from hub.audit.parallel import default_workers
from hub.audit.repository import stream_rows
from hub.audit.service import verify_chain
from hub.db.bulk import insert_rows
from hub.db.models import AuditEntry, table_of
from hub.db.uow import open_store


def build(url: str, n: int) -> None:
    store = open_store(url)
    prev, batch = GENESIS, []
    old = '{"hash":"' + "a" * 64 + '","version":3}'
    new = '{"hash":"' + "b" * 64 + '","version":4}'

    def flush(work: object) -> None:
        insert_rows(work.session, table_of(AuditEntry), batch)  # type: ignore[attr-defined]

    for seq in range(1, n + 1):
        at = f"2026-11-25T01:{seq // 60 % 60:02d}:{seq % 60:02d}.{seq % 1000000:06d}Z"
        fields = (at, f"user{seq % 17}", "update", "Task", f"task-{seq % 9973:08d}-s03", "task completed", old, new)
        h = entry_hash(prev, seq, *fields)
        batch.append(dict(zip(FIELDS, (seq, *fields, prev, h), strict=True)))
        prev = h
        if len(batch) == 20000 or seq == n:
            store.run(flush)
            batch = []
    with store.write_engine.begin() as conn:
        conn.exec_driver_sql(f"UPDATE audit_head SET seq = {n}, hash = '{prev}' WHERE id = 1")
    store.dispose()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--entries", type=int, default=500_000)
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    args = parser.parse_args()
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    auto = max(2, default_workers(args.entries))
    print(f"audit_verify: {args.entries} entries on {machine()}")
    print(f"{'backend':<10} {'what':<28} {'entries/s':>11} {'seconds':>8}")
    for backend in backends:
        with fresh_database(backend) as url:
            build(url, args.entries)
            store = open_store(url, check=False)
            t0 = time.perf_counter()
            with stream_rows(store.read_engine) as (rows, _):
                count = sum(1 for _ in rows)
            base = time.perf_counter() - t0
            assert count == args.entries
            timings = {}
            for label, workers in (("verify, one process", 1), (f"verify, {auto} processes", auto)):
                t0 = time.perf_counter()
                result = verify_chain(store, workers=workers)
                timings[label] = time.perf_counter() - t0
                assert result.ok, result.describe()
                assert result.checked == args.entries
            store.dispose()
        print(f"{backend:<10} {'baseline: read rows only':<28} {count / base:>11,.0f} {base:>8.2f}")
        for label, took in timings.items():
            print(f"{backend:<10} {label:<28} {count / took:>11,.0f} {took:>8.2f}")
    print("goal: >= 200,000 entries/s")


if __name__ == "__main__":
    main()
