from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from hub.audit.chain import GENESIS, Checkpoint, CheckpointInvalid, entry_hash, verify_rows
from hub.audit.service import load_checkpoint, take_checkpoint, verify_chain
from hub.db.uow import Store

N = 40
COLUMNS = (
    "seq",
    "at",
    "actor",
    "action",
    "entity_type",
    "entity_id",
    "reason",
    "old_value",
    "new_value",
    "prev_hash",
    "hash",
)


def _fill(store: Store, n: int = N) -> list[dict[str, Any]]:
    for i in range(n):
        store.run(
            lambda w, i=i: w.audit("update", "Thing", f"t{i % 7}", old={"v": i}, new={"v": i + 1}, reason=f"step {i}"),
            actor=f"user{i % 3}",
        )
    return _rows(store)


def _rows(store: Store) -> list[dict[str, Any]]:
    with store.write_engine.connect() as conn:
        return [
            dict(r._mapping) for r in conn.execute(text(f"SELECT {', '.join(COLUMNS)} FROM audit_entry ORDER BY seq"))
        ]


def _restore(store: Store, rows: list[dict[str, Any]]) -> None:
    with store.write_engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_entry"))
        conn.execute(
            text(f"INSERT INTO audit_entry ({', '.join(COLUMNS)}) VALUES ({', '.join(':' + c for c in COLUMNS)})"), rows
        )
        conn.execute(
            text("UPDATE audit_head SET seq = :s, hash = :h WHERE id = 1"),
            {"s": rows[-1]["seq"], "h": rows[-1]["hash"]},
        )


def test_entries_are_chained(store: Store) -> None:
    rows = _fill(store, 5)
    prev = GENESIS
    for r in rows:
        assert r["prev_hash"] == prev
        assert r["hash"] == entry_hash(
            prev,
            r["seq"],
            r["at"],
            r["actor"],
            r["action"],
            r["entity_type"],
            r["entity_id"],
            r["reason"],
            r["old_value"],
            r["new_value"],
        )
        prev = r["hash"]
    result = verify_chain(store)
    assert result.ok
    assert result.checked == 5
    assert result.head == prev


def test_refused_job_writes_no_audit(store: Store) -> None:
    _fill(store, 3)

    def job(w: Any) -> None:
        w.audit("update", "Thing", "x", new={"v": 1})
        raise RuntimeError("refused")

    with pytest.raises(RuntimeError):
        store.run(job)
    assert take_checkpoint(store).size == 3
    assert verify_chain(store).ok


@pytest.mark.parametrize("field", ["reason", "entity_id", "actor"])
def test_text_that_cannot_be_stored_fails_only_its_own_job(store: Store, field: str) -> None:
    """Entries are chained for the whole group-commit batch at COMMIT: a lone surrogate reaching
    that point failed every job of the batch. It is refused in the job that wrote it."""
    fields = {"reason": "fine", "entity_id": "ok", "actor": None} | {field: "x\ud800"}

    def good(w: Any) -> None:
        w.audit("update", "Thing", "ok", new={"v": 1})

    def bad(w: Any) -> None:
        w.audit("update", "Thing", fields["entity_id"], new={"v": 1}, reason=fields["reason"], actor=fields["actor"])

    futures = store.run_batch([(good, "a"), (bad, "b"), (good, "c")])
    with pytest.raises(ValueError, match=f"audit {field} is not valid Unicode"):
        futures[1].result()
    assert [futures[0].exception(), futures[2].exception()] == [None, None]
    assert verify_chain(store).checked == 2


tamper = st.one_of(
    st.tuples(
        st.just("edit"),
        st.integers(1, N),
        st.sampled_from(
            ["at", "actor", "action", "entity_id", "reason", "old_value", "new_value", "prev_hash", "hash"]
        ),
    ),
    st.tuples(st.just("delete"), st.integers(1, N), st.just("")),
    st.tuples(st.just("insert"), st.integers(1, N), st.just("")),
    st.tuples(st.just("swap"), st.integers(1, N - 1), st.just("")),
    st.tuples(st.just("truncate"), st.integers(2, N), st.just("")),
    st.tuples(st.just("truncate-and-fix-head"), st.integers(2, N), st.just("")),
)


def _apply(store: Store, rows: list[dict[str, Any]], op: str, k: int, field: str) -> list[dict[str, Any]]:
    """Tamper like someone with database access would, returning the tampered table."""
    table = [dict(r) for r in rows]
    if op == "edit":
        value = table[k - 1][field]
        if field in ("prev_hash", "hash"):  # same length: flip the last hex digit
            table[k - 1][field] = value[:-1] + ("0" if value[-1] != "0" else "1")
        else:
            table[k - 1][field] = value + "x" if value else "x"
    elif op == "delete":
        del table[k - 1]
    elif op == "insert":
        forged = dict(table[k - 1])
        forged["reason"] = "inserted"
        for r in table[k - 1 :]:
            r["seq"] += 1
        table.insert(k - 1, forged)
        forged["seq"] = k
    elif op == "swap":
        a, b = table[k - 1], table[k]
        for c in COLUMNS[1:]:
            a[c], b[c] = b[c], a[c]
    elif op.startswith("truncate"):
        table = table[: k - 1]
    with store.write_engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_entry"))
        if table:
            conn.execute(
                text(f"INSERT INTO audit_entry ({', '.join(COLUMNS)}) VALUES ({', '.join(':' + c for c in COLUMNS)})"),
                table,
            )
        if op == "truncate-and-fix-head":
            conn.execute(
                text("UPDATE audit_head SET seq = :s, hash = :h WHERE id = 1"),
                {"s": table[-1]["seq"], "h": table[-1]["hash"]},
            )
    return table


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tamper)
def test_tampering_is_found_at_the_exact_entry(store: Store, change: tuple[str, int, str]) -> None:
    op, k, field = change
    rows = _rows(store) or _fill(store)
    checkpoint = Checkpoint(rows[-1]["seq"], rows[-1]["hash"])
    try:
        _apply(store, rows, op, k, field)
        result = verify_chain(store, checkpoint)
        assert not result.ok, f"{op} at {k} went unnoticed"
        assert result.broken_seq == k, f"{op} at {k} reported at {result.broken_seq}: {result.reason}"
        if op == "truncate-and-fix-head":
            # Without the exported checkpoint a consistent truncation is invisible; with it, it is not.
            assert verify_chain(store).ok
    finally:
        _restore(store, rows)
    assert verify_chain(store, checkpoint).ok


def test_rewritten_history_is_caught_by_the_checkpoint(store: Store) -> None:
    rows = _fill(store, 10)
    checkpoint = Checkpoint(10, rows[-1]["hash"])
    # A forger who knows the algorithm rewrites entry 4 and recomputes every later hash.
    prev = rows[2]["hash"]
    forged = []
    for r in rows[3:]:
        r = dict(r)
        if r["seq"] == 4:
            r["reason"] = "forged"
        r["prev_hash"] = prev
        r["hash"] = entry_hash(
            prev,
            r["seq"],
            r["at"],
            r["actor"],
            r["action"],
            r["entity_type"],
            r["entity_id"],
            r["reason"],
            r["old_value"],
            r["new_value"],
        )
        prev = r["hash"]
        forged.append(r)
    _restore(store, rows[:3] + forged)
    assert verify_chain(store).ok  # self-consistent...
    result = verify_chain(store, checkpoint)
    assert not result.ok
    assert result.broken_seq == 10


@pytest.mark.parametrize("workers", [1, 2])
def test_a_commit_during_verification_is_not_tampering(store: Store, workers: int) -> None:
    """The running hub commits while `audit verify` reads: right after each time the verifier reads
    the head, another connection appends an entry. Under PostgreSQL's READ COMMITTED the entries
    read next included it ("entries beyond the recorded head"); one snapshot per read sees none."""
    from sqlalchemy import event

    _fill(store, 5)
    commits: list[int] = []

    def commit_meanwhile(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith("SELECT seq, hash FROM audit_head"):  # the verifier's reads only
            commits.append(store.run(lambda w: w.audit("update", "Thing", "live", new={"v": len(commits)})))

    event.listen(store.read_engine, "after_cursor_execute", commit_meanwhile)
    try:
        result = verify_chain(store, workers=workers)
    finally:
        event.remove(store.read_engine, "after_cursor_execute", commit_meanwhile)
    assert commits, "the verifier read no head"
    assert result.ok, result.describe()
    assert result.checked >= 5
    assert verify_chain(store).checked == 5 + len(commits)


HASH = "ab" * 32


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (None, "cannot read it"),
        ("", "not JSON"),
        ("{not json", "not JSON"),
        ("[1, 2]", "not a checkpoint"),
        ('{"size": 3}', "not a checkpoint"),
        (json.dumps({"size": 0, "head": "not a hash at all"}), "64 lower-case hexadecimal"),
        (json.dumps({"size": False, "head": GENESIS}), "size must be"),
        (json.dumps({"size": "0", "head": GENESIS}), "size must be"),
        (json.dumps({"size": 5.9, "head": HASH}), "size must be"),
        (json.dumps({"size": 5.0, "head": HASH}), "size must be"),
        (json.dumps({"size": -3, "head": HASH}), "size must be"),
        (json.dumps({"size": 5, "head": HASH.upper()}), "64 lower-case hexadecimal"),
        (json.dumps({"size": 0, "head": HASH}), "empty chain"),
    ],
)
def test_a_garbage_checkpoint_is_refused(tmp_path: Path, content: str | None, says: str) -> None:
    """A checkpoint is evidence: one that `audit checkpoint` cannot have written is refused with a
    reason, never half-used (a size of -3 was confirmed by the parallel path and refused by the
    sequential one; "0" or false confirmed nothing yet printed "still has hash")."""
    path = tmp_path / "cp.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(CheckpointInvalid, match=says):
        load_checkpoint(path)


def test_a_checkpoint_is_read_as_written(tmp_path: Path) -> None:
    path = tmp_path / "cp.json"
    path.write_text(json.dumps({"size": 7, "head": HASH, "taken_at": "2026-12-03T10:00:00+00:00"}))
    assert load_checkpoint(path) == Checkpoint(7, HASH)
    path.write_text(json.dumps({"size": 0, "head": GENESIS}))
    assert load_checkpoint(path) == Checkpoint(0, GENESIS)
    with pytest.raises(CheckpointInvalid):
        Checkpoint(-3, "garbage")


def test_verify_rows_pure() -> None:
    assert verify_rows([]).ok
    bad = verify_rows([(2, "", "", "", "", "", "", "", "", GENESIS, "")])
    assert not bad.ok
    assert bad.broken_seq == 1


# --- the parallel path (hub.audit.parallel): it may only ever confirm an intact chain ----------


def test_parallel_verification_confirms_an_intact_chain(store: Store) -> None:
    """Real worker processes (spawned), each with its own connection."""
    rows = _fill(store, 25)
    checkpoint = Checkpoint(17, rows[16]["hash"])
    sequential = verify_chain(store, checkpoint, workers=1)
    parallel = verify_chain(store, checkpoint, workers=3)
    assert sequential.ok
    assert parallel == sequential
    # A broken chain: the workers doubt it and the sequential pass names the entry.
    _apply(store, rows, "edit", 9, "reason")
    result = verify_chain(store, checkpoint, workers=3)
    assert (result.ok, result.broken_seq, result.reason) == (False, 9, "content does not match its hash")


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tamper, st.integers(2, 5))
def test_parallel_slices_never_confirm_a_tampered_chain(
    store: Store, change: tuple[str, int, str], workers: int
) -> None:
    """Every kind of tampering, with the chain cut into 2–5 slices (threads stand in for the worker
    processes here: the slice checks and the links between them are what is tested)."""
    from concurrent.futures import ThreadPoolExecutor
    from unittest import mock

    from hub.audit import parallel
    from hub.audit.service import _driver_target, _head_and_strays

    op, k, field = change
    rows = _rows(store) or _fill(store)
    checkpoint = Checkpoint(rows[-1]["seq"], rows[-1]["hash"])
    kind, dsn = _driver_target(store)
    threads = lambda max_workers, mp_context: ThreadPoolExecutor(max_workers)  # noqa: E731
    try:
        with mock.patch.object(parallel, "ProcessPoolExecutor", threads):
            head, outside = _head_and_strays(store)
            assert parallel.verify_intact(kind, dsn, head, checkpoint, workers) is not None
            _apply(store, rows, op, k, field)
            head, outside = _head_and_strays(store)
            confirmed = outside == 0 and parallel.verify_intact(kind, dsn, head, checkpoint, workers) is not None
            assert not confirmed, f"{op} at {k} confirmed as intact by {workers} slices"
    finally:
        _restore(store, rows)
