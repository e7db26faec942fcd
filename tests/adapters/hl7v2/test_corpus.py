"""Every file of ../shared/corpora/hl7v2 sent to the running listener over ONE connection.

Each file goes as one frame, exactly as it is on disk (BOMs, LF/CRLF/mixed ends, batches, several
messages, broken batches, the empty file), then each of its messages again as its own frame.
After every frame a probe message is sent, so the test knows which frames answered the file.

Checked: every message gets the ACKs its acknowledgment mode asks for, each naming its MSH-10;
AA/CA for what the mappings handle, AE/AR (CR) otherwise, never a commit error; the connection
is never dropped; and every FHIR resource the mapped messages produced validates (R4 via
fhir.resources R4B plus the hub's own binding checks).

The test partner admits 127.0.0.0/8 with every shipped HL7 v2 mapping and an override that sends
every order code to the fresh CAR-T product (the corpus orders CT scans and lipid panels, so
without it no corpus order would reach the order service and its FHIR would go unchecked).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select

from adapters.hl7v2.ack import ack_code_of, acked_control_id, policy_for
from adapters.hl7v2.listener import MllpListener
from adapters.hl7v2.tokenizer import ParseError, parse_all
from adapters.registry import channel_schemas
from hub.db.models import InboxMessage, Resource
from hub.db.uow import Store
from hub.fhirstore.validation import validate
from hub.partners.loader import PartnerDirectory, load_directory
from tests.adapters.hl7v2 import messages as m
from tests.adapters.hl7v2.conftest import CORPUS, MAPPINGS, PROFILES, Loop, Sender, make_ctx

CORPUS_PARTNER = {
    "id": "corpus-hospital",
    "name": "Corpus Hospital (every public sample)",
    "kind": "hospital",
    "tier": 1,
    "timezone": "America/Chicago",
    "channels": [
        {
            "adapter": "hl7v2-mllp",
            "direction": "inbound",
            "allow_from": ["127.0.0.0/8"],
            "ack_mode": "original",
            "mappings": [
                "hl7v2/orm-o01",
                "hl7v2/oml-o21",
                "hl7v2/adt",
                "hl7v2/siu",
                "hl7v2/oru-r01",
                "corpus-hospital/overrides",
            ],
        }
    ],
}
OVERRIDES = {
    "id": "corpus-hospital/overrides",
    "tables": {"products": {"*": "car-t-fresh"}},
    "defaults": {"sites": {"manufacturing": "leiden-cell-factory", "courier": "polar-courier"}},
}


@pytest.fixture
def corpus_setup(tmp_path: Path) -> tuple[PartnerDirectory, Path]:
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    for src in PROFILES.glob("*.yaml"):
        data = yaml.safe_load(src.read_text())
        data["channels"] = [c for c in data.get("channels", []) if c.get("adapter") != "hl7v2-mllp"]
        (profiles / src.name).write_text(yaml.safe_dump(data))
    (profiles / "corpus-hospital.yaml").write_text(yaml.safe_dump(CORPUS_PARTNER))
    directory, errors = load_directory(profiles, channel_schemas())
    assert not errors, errors
    mappings = tmp_path / "mappings"
    mappings.mkdir()
    (mappings / "hl7v2").symlink_to(MAPPINGS / "hl7v2")
    (mappings / "corpus-hospital").mkdir()
    (mappings / "corpus-hospital" / "overrides.yaml").write_text(yaml.safe_dump(OVERRIDES))
    return directory, mappings


def _expected_frames(sender: Sender, payload: bytes) -> list[bytes]:
    probe_id = m.control_id("PROBE")
    probe = (m.msh("ADT^A04", probe_id, facility="CORPUS") + "\r" + "PID|1||P1^^^X^MR||Probe^P||20000101\r").encode()
    frames = sender.send(payload, expect=0)
    sender.sock.sendall(b"\x0b" + probe + b"\x1c\r")
    while True:
        frame = sender.read(1)[0]
        if acked_control_id(frame) == probe_id:
            return frames
        frames.append(frame)


def _files() -> list[Path]:
    return [p for p in sorted(CORPUS.rglob("*")) if p.is_file()]


def _listener(store: Store, loop: Loop, setup: tuple[PartnerDirectory, Path]) -> MllpListener:
    partners, mapping_root = setup
    listener = MllpListener(make_ctx(store, partners), host="127.0.0.1", port=0, mapping_root=mapping_root)
    loop.run(listener.start())
    return listener


def test_every_corpus_file_as_it_is_gets_its_acks_over_one_connection(
    store: Store, loop: Loop, corpus_setup: tuple[PartnerDirectory, Path]
) -> None:
    listener = _listener(store, loop, corpus_setup)
    sender = Sender(listener.port)
    seen: Counter[str] = Counter()
    try:
        for path in _files():
            data = path.read_bytes()
            try:
                tx = parse_all(data)
                messages, batch = tx.messages, tx.batch
            except ParseError:
                messages, batch = [], False
            frames = _expected_frames(sender, data)
            if not messages and not batch:  # not HL7 at all (the empty file): one AR
                assert [ack_code_of(f) for f in frames] == ["AR"], path
                seen["not-hl7"] += 1
                continue
            if batch:
                assert len(frames) == 1, path
                assert frames[0].startswith((b"BHS", b"FHS")), path
                seen["batch"] += 1
                continue
            _check_acks(path, messages, frames, seen)
            if len(messages) > 1:  # and each message on its own
                for msg in messages:
                    _check_acks(path, [msg], _expected_frames(sender, msg.raw), seen)
        assert listener.stats.connections == 1  # never dropped, never reconnected
        assert listener.stats.unavailable == 0
    finally:
        sender.close()
        loop.run(listener.stop())
    statuses = Counter(store.read(lambda s: list(s.scalars(select(InboxMessage.status)))))
    # The public samples reuse MSH-10 (MSG00001 in dozens of files): those are answered as conflicts.
    assert statuses["conflict"] > 20, statuses
    assert statuses["failed"] == 0, statuses
    print("corpus as-is:", dict(seen), dict(statuses))


def test_every_corpus_message_with_its_own_control_id_maps_to_valid_fhir(
    store: Store, loop: Loop, corpus_setup: tuple[PartnerDirectory, Path]
) -> None:
    """As an interface engine would send them: one message per frame, each with its own MSH-10."""
    listener = _listener(store, loop, corpus_setup)
    sender = Sender(listener.port)
    seen: Counter[str] = Counter()
    try:
        for i, path in enumerate(_files()):
            try:
                messages = parse_all(path.read_bytes()).messages
            except ParseError:
                continue
            for j, msg in enumerate(messages):
                msg.segments[0][10] = f"C{i:03d}-{j:02d}"
                raw = msg.to_er7().encode("utf-8" if msg.charset == "ascii" else msg.charset)
                renamed = parse_all(raw).messages[0]
                _check_acks(path, [renamed], _expected_frames(sender, raw), seen)
        assert listener.stats.connections == 1
        assert listener.stats.unavailable == 0
    finally:
        sender.close()
        loop.run(listener.stop())
    rows = store.read(lambda s: list(s.scalars(select(InboxMessage))))
    statuses = Counter(r.status for r in rows)
    handled_types = Counter(r.message_type for r in rows if r.status == "handled" and r.external_id[:1] == "C")
    errors = Counter(f"{r.message_type}: {(r.error or '')[:70]}" for r in rows if r.status == "rejected")
    print("corpus renamed:", dict(seen), dict(statuses), dict(handled_types), errors.most_common(12))
    assert statuses["failed"] == 0, statuses
    assert statuses["conflict"] == 0, statuses
    assert handled_types["ADT^A01"] + handled_types["ADT^A04"] + handled_types["ADT^A08"] >= 10, handled_types
    # Most corpus orders reuse placer number 1101 (a second one is refused as a duplicate order) or
    # carry no OBR-4; the rest become orders.
    assert handled_types["ORM^O01"] + handled_types["OML^O21"] >= 3, handled_types
    resources = store.read(lambda s: list(s.scalars(select(Resource).where(Resource.deleted.is_(False)))))
    types = Counter(r.resource_type for r in resources)
    assert types["Patient"] >= 5, types  # many samples are the same person (updates, not new records)
    assert types["ServiceRequest"] >= 3, types
    from hub import canonical

    for r in resources:
        validate(canonical.loads(r.content), r.resource_type)


def _check_acks(path: Path, messages: list, frames: list[bytes], seen: Counter[str]) -> None:  # type: ignore[type-arg]
    expected_ids = [msg.control_id for msg in messages]
    by_id: dict[str, list[str]] = {}
    for f in frames:
        by_id.setdefault(acked_control_id(f), []).append(ack_code_of(f))
    for msg in messages:
        got = by_id.get(msg.control_id, [])
        policy = policy_for(msg, "original")
        assert "CE" not in got, (path, got)
        if not policy.enhanced:
            assert len(got) == 1, (path, msg.control_id, got)
            assert got[0] in ("AA", "AE", "AR"), (path, msg.control_id, got)
        elif policy.accept == "AL":
            assert got, (path, got)
            assert got[0] in ("CA", "CR"), (path, got)
        seen["+".join(got) or "none-asked"] += 1
    assert set(by_id) <= set(expected_ids) | {""}, (path, by_id.keys(), expected_ids)
