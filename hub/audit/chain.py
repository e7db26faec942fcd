"""The audit chain's arithmetic: how an entry is hashed and how a chain is verified.

Each entry's hash covers the previous entry's hash and every field of the entry, each field
length-prefixed so that no two different entries serialise to the same text. The sequence number is
hashed too, so moving an entry to another position breaks it.

Verification streams the table once (it does not load it into memory) and names the first entry
that is wrong and why. A saved checkpoint (size + head hash, exported elsewhere) additionally
catches a truncated or fully rewritten tail.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

GENESIS = "0" * 64

# Column order used by the hash and by the verifier's raw query.
FIELDS = (
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


def entry_hash(
    prev_hash: str,
    seq: int,
    at: str,
    actor: str,
    action: str,
    entity_type: str,
    entity_id: str,
    reason: str,
    old_value: str,
    new_value: str,
) -> str:
    s = str(seq)
    text = (
        f"{len(prev_hash)}:{prev_hash}|{len(s)}:{s}|{len(at)}:{at}|{len(actor)}:{actor}|"
        f"{len(action)}:{action}|{len(entity_type)}:{entity_type}|{len(entity_id)}:{entity_id}|"
        f"{len(reason)}:{reason}|{len(old_value)}:{old_value}|{len(new_value)}:{new_value}"
    )
    return hashlib.sha256(text.encode()).hexdigest()


_HEX64 = re.compile(r"[0-9a-f]{64}")


class CheckpointInvalid(ValueError):
    """A saved checkpoint that cannot be what `audit checkpoint` wrote."""


@dataclass(frozen=True)
class Checkpoint:
    """The chain's size and head hash at one moment. Checked when made: a checkpoint is the
    evidence against a rewritten tail, so garbage (a size of -3 or "0", a head that is no hash)
    must be refused, not half-used (it once confirmed nothing yet printed "still has hash")."""

    size: int
    head: str

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or isinstance(self.size, bool) or self.size < 0:
            raise CheckpointInvalid(f"size must be a whole number of entries, 0 or more (not {self.size!r})")
        if not isinstance(self.head, str) or not _HEX64.fullmatch(self.head):
            raise CheckpointInvalid("head must be a SHA-256 hash: 64 lower-case hexadecimal characters")
        if self.size == 0 and self.head != GENESIS:
            raise CheckpointInvalid(f"an empty chain's head is {GENESIS}, not {self.head}")

    def as_dict(self) -> dict[str, int | str]:
        return {"size": self.size, "head": self.head}


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    checked: int
    head: str
    broken_seq: int | None = None
    reason: str | None = None

    def describe(self) -> str:
        if self.ok:
            return f"audit chain intact: {self.checked} entries, head {self.head}"
        return f"audit chain BROKEN at entry {self.broken_seq}: {self.reason} ({self.checked} entries checked)"


Row = tuple[int, str, str, str, str, str, str, str, str, str, str]


def verify_rows(
    rows: Iterable[Row],
    *,
    head_row: tuple[int, str] | None = None,
    checkpoint: Checkpoint | None = None,
) -> VerifyResult:
    """Recompute the chain over rows ordered by seq. Stops at the first broken entry."""
    expected_seq = 1
    prev = GENESIS
    checkpoint_seen = checkpoint is None or checkpoint.size == 0
    _hash = hashlib.sha256
    for seq, at, actor, action, etype, eid, reason, old, new, prev_hash, stored in rows:
        if seq != expected_seq:
            if seq > expected_seq:
                return VerifyResult(False, expected_seq - 1, prev, expected_seq, "entry is missing")
            return VerifyResult(False, expected_seq - 1, prev, seq, "entry out of order")
        if prev_hash != prev:
            return VerifyResult(
                False, expected_seq - 1, prev, seq, "previous-hash link does not match the entry before"
            )
        s = str(seq)
        text = (
            f"{len(prev)}:{prev}|{len(s)}:{s}|{len(at)}:{at}|{len(actor)}:{actor}|"
            f"{len(action)}:{action}|{len(etype)}:{etype}|{len(eid)}:{eid}|"
            f"{len(reason)}:{reason}|{len(old)}:{old}|{len(new)}:{new}"
        )
        computed = _hash(text.encode()).hexdigest()
        if computed != stored:
            return VerifyResult(False, expected_seq - 1, prev, seq, "content does not match its hash")
        if checkpoint is not None and seq == checkpoint.size:
            if computed != checkpoint.head:
                return VerifyResult(
                    False, seq, computed, seq, "hash differs from the saved checkpoint (history rewritten)"
                )
            checkpoint_seen = True
        prev = computed
        expected_seq += 1
    count = expected_seq - 1
    if not checkpoint_seen and checkpoint is not None:
        return VerifyResult(
            False,
            count,
            prev,
            count + 1,
            f"chain has {count} entries but the checkpoint recorded {checkpoint.size} (truncated)",
        )
    if head_row is not None:
        head_seq, head_hash = head_row
        if head_seq > count:
            return VerifyResult(
                False,
                count,
                prev,
                count + 1,
                f"chain ends at {count} but the head records {head_seq} entries (truncated)",
            )
        if head_seq < count:
            return VerifyResult(
                False, count, prev, head_seq + 1, "entries beyond the recorded head (appended outside the hub)"
            )
        if head_hash != prev:
            return VerifyResult(False, count, prev, count, "head hash does not match the last entry")
    return VerifyResult(True, count, prev)


@dataclass(frozen=True)
class RangeCheck:
    """What one slice of the chain says about itself (see ``hub.audit.parallel``)."""

    ok: bool
    count: int
    first_prev: str | None  # prev_hash stored in the slice's first entry
    last_hash: str | None  # hash recomputed for the slice's last entry
    at_checkpoint: str | None  # hash recomputed for the checkpoint's entry, when in this slice


def check_range(rows: Iterable[Row], start_seq: int, checkpoint_seq: int | None = None) -> RangeCheck:
    """Check a slice of the chain on its own: contiguous from ``start_seq``, each entry linked to the
    one before it in the slice, each hash recomputed. The links *between* slices, the head and the
    checkpoint are for the caller to check; any doubt there means verifying sequentially."""
    expected = start_seq
    prev: str | None = None
    first_prev: str | None = None
    at_checkpoint: str | None = None
    for seq, at, actor, action, etype, eid, reason, old, new, prev_hash, stored in rows:
        if seq != expected:
            return RangeCheck(False, expected - start_seq, first_prev, prev, at_checkpoint)
        if prev is None:
            first_prev = prev_hash
        elif prev_hash != prev:
            return RangeCheck(False, expected - start_seq, first_prev, prev, at_checkpoint)
        computed = entry_hash(prev_hash, seq, at, actor, action, etype, eid, reason, old, new)
        if computed != stored:
            return RangeCheck(False, expected - start_seq, first_prev, prev, at_checkpoint)
        if seq == checkpoint_seq:
            at_checkpoint = computed
        prev = computed
        expected += 1
    return RangeCheck(True, expected - start_seq, first_prev, prev, at_checkpoint)
