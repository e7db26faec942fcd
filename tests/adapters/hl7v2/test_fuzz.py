"""Fuzz the tokenizer, the mapping engine and the ACK renderer with hypothesis: no uncaught
exception (only ParseError / HubError, which the listener answers), no hang (a deadline per
example), bounded memory (tracemalloc peak on large hostile inputs)."""

from __future__ import annotations

import contextlib
import tracemalloc
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.hl7v2.ack import AckContext, Outcome, policy_for, render
from adapters.hl7v2.mapping import map_message
from adapters.hl7v2.routing import Router
from adapters.hl7v2.tokenizer import ParseError, parse_all
from hub.errors import HubError, Issue
from tests.adapters.hl7v2.conftest import CORPUS, MAPPINGS
from tests.conftest import REPO

SEEDS = [p.read_bytes() for p in sorted(CORPUS.rglob("*.hl7"))[:60] if p.stat().st_size > 0]
HEADERS = [b"MSH\r", b"\rMSH", b"MSH|~\\&|", b"MSH|^|", b"BHS|^~\\&|\r", b"\r", b"|", b"\\X4\\", b"\\Xzz\\"]
ALPHABET = st.sampled_from(list(b"|^~\\&#\r\n\x0bMSHPIDOBXZ0123456789 AF.X") + list(range(256)))


def _mappings():  # type: ignore[no-untyped-def]
    from adapters.registry import channel_schemas
    from hub.partners.loader import load_directory

    partners, _ = load_directory(REPO / "partner-profiles", channel_schemas())
    return {r.partner: r.mappings for r in Router(partners, MAPPINGS).routes}


MAPPINGS_BY_PARTNER = _mappings()


def _exercise(data: bytes) -> None:
    try:
        tx = parse_all(data)
    except ParseError:
        return
    for msg in tx.messages:
        for mappings in MAPPINGS_BY_PARTNER.values():
            with contextlib.suppress(HubError):
                map_message(msg, mappings, partner="st-marys", tz=ZoneInfo("America/New_York"))
        ctx = AckContext.of(msg)
        # With a located issue: the ERR segment (both its pre-2.5 and its 2.5 form) is rendered
        # with the message's own separators.
        error = HubError("x", [Issue("y", "PID-3")], hl7_code="207")
        for mode in ("enhanced", "original"):
            for outcome in Outcome:
                render(ctx, policy_for(msg, mode), outcome, datetime.now(UTC), error=error)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    seed = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 12))):
        op = draw(st.integers(0, 3))
        pos = draw(st.integers(0, max(0, len(seed) - 1)))
        if op == 0 and seed:
            seed[pos] = draw(ALPHABET)
        elif op == 1:
            seed[pos:pos] = bytes(draw(st.lists(ALPHABET, max_size=20)))
        elif op == 2:  # header-like pieces: a bare "MSH", odd encoding characters, a batch header
            seed[pos:pos] = draw(st.sampled_from(HEADERS))
        else:
            del seed[pos : pos + draw(st.integers(0, 40))]
    return bytes(seed)


@settings(max_examples=400, deadline=3000, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_fuzz_mutated_corpus(data: bytes) -> None:
    _exercise(data)


@settings(max_examples=300, deadline=3000)
@given(st.binary(max_size=2000))
def test_fuzz_random_bytes(data: bytes) -> None:
    _exercise(b"MSH|^~\\&|" + data)
    _exercise(data)


def test_hostile_inputs_stay_bounded_in_memory() -> None:
    hostile = [
        b"MSH|^~\\&|" + b"^" * 500_000,
        b"MSH|^~\\&|" + b"\\X" + b"41" * 200_000 + b"\\",
        b"MSH|^~\\&|A\r" + b"OBX|1\r" * 50_000,
        b"MSH|^~\\&|A\r" + b"\n" * 500_000,
        b"BHS|^~\\&\r" + b"MSH|^~\\&|A|B|C|D|1||ADT^A04|1|P|2.5\r" * 5_000,
    ]
    for data in hostile:
        tracemalloc.start()
        _exercise(data)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak < 60 * len(data) + 5_000_000, (len(data), peak)
