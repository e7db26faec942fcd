"""Verify a long audit chain on every core.

Reading and re-hashing entries is CPU-bound Python: one process verifies ~100,000–240,000 entries
per second on these 2-core machines (bench/audit_verify.py), whatever the database. Each entry's
hash depends only on its own fields and the ``prev_hash`` it stores, so slices of the chain can be
checked independently; the links between slices, the head and the saved checkpoint are then checked
here. Only an *intact* chain is confirmed this way: at the first doubt the caller verifies
sequentially, which names the exact first broken entry and why (``hub.audit.chain.verify_rows``).

Workers are separate processes that open their own read-only connection. They are forked when the
caller is single-threaded (``cgt-hub audit verify``): a spawned worker re-imports the caller's main
module, which cost ~0.7 s per worker here, most of what the second core saved. From a process with
other threads (a running hub) they are spawned, since forking a threaded process can copy a lock
held by another thread.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor

from hub.audit.chain import FIELDS, GENESIS, Checkpoint, RangeCheck, Row, VerifyResult, check_range

log = logging.getLogger(__name__)

# Below this many entries one process is done before workers have started.
PARALLEL_MIN_ENTRIES = 200_000
_BATCH = 20_000


def default_workers(entries: int) -> int:
    cpus = os.cpu_count() or 1
    return min(cpus, 4) if entries >= PARALLEL_MIN_ENTRIES and cpus > 1 else 1


def _rows(cur: object) -> Iterator[Row]:
    fetch = cur.fetchmany  # type: ignore[attr-defined]
    while True:
        chunk = fetch(_BATCH)
        if not chunk:
            return
        yield from chunk


def check_slice(kind: str, dsn: str, lo: int, hi: int, checkpoint_seq: int | None) -> RangeCheck:
    """Worker: check entries ``lo..hi`` (inclusive) through a connection of its own."""
    sql = f"SELECT {', '.join(FIELDS)} FROM audit_entry WHERE seq >= {{m}} AND seq <= {{m}} ORDER BY seq"
    if kind == "sqlite":
        import sqlite3

        conn = sqlite3.connect(f"file:{dsn}?mode=ro", uri=True)
        try:
            cur = conn.cursor()
            cur.execute(sql.format(m="?"), (lo, hi))
            return check_range(_rows(cur), lo, checkpoint_seq)
        finally:
            conn.close()
    import psycopg

    with psycopg.connect(dsn) as pg, pg.cursor(name="audit_verify_slice") as named:
        named.itersize = _BATCH
        named.execute(sql.format(m="%s"), (lo, hi))
        return check_range(_rows(named), lo, checkpoint_seq)


def verify_intact(
    kind: str, dsn: str, head: tuple[int, str], checkpoint: Checkpoint | None, workers: int
) -> VerifyResult | None:
    """``VerifyResult(ok=True)`` if the slices and every link between them hold, else None (then
    verify sequentially for the diagnosis). The caller has checked that no entry lies outside
    ``1..head_seq``, in the snapshot it read the head from.

    The workers do not share that snapshot, and need not: each reads only entries within
    ``1..head_seq``, all committed before the head was read (the head moves in the same transaction
    as its entries). An entry the running hub commits meanwhile lies beyond every slice."""
    head_seq, head_hash = head
    if head_seq < 1 or (checkpoint is not None and checkpoint.size > head_seq):
        return None
    cp_seq = checkpoint.size if checkpoint is not None and checkpoint.size > 0 else None
    step = -(-head_seq // workers)
    bounds = [(lo, min(lo + step - 1, head_seq)) for lo in range(1, head_seq + 1, step)]
    context = multiprocessing.get_context("fork" if threading.active_count() == 1 else "spawn")
    try:
        with ProcessPoolExecutor(max_workers=len(bounds), mp_context=context) as pool:
            futures = [pool.submit(check_slice, kind, dsn, lo, hi, cp_seq) for lo, hi in bounds]
            results = [f.result() for f in futures]
    except Exception as exc:  # a worker could not start or connect: the sequential pass decides
        log.warning("parallel audit verification unavailable (%s); verifying sequentially", type(exc).__name__)
        return None
    expected_prev = GENESIS
    at_checkpoint: str | None = None
    for (lo, hi), r in zip(bounds, results, strict=True):
        if not r.ok or r.count != hi - lo + 1 or r.first_prev != expected_prev or r.last_hash is None:
            return None
        if cp_seq is not None and lo <= cp_seq <= hi:
            at_checkpoint = r.at_checkpoint
        expected_prev = r.last_hash
    if expected_prev != head_hash:
        return None
    if checkpoint is not None and cp_seq is not None and at_checkpoint != checkpoint.head:
        return None
    return VerifyResult(True, head_seq, head_hash)
