"""The listener against a real store (SQLite and PostgreSQL): ACK after COMMIT, duplicates,
conflicts, store down, every message kind, batches, framing limits, allow-lists, TLS."""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import subprocess
import threading
from pathlib import Path

import pytest
from sqlalchemy import event, func, select

from adapters.hl7v2.ack import ack_code_of, acked_control_id
from adapters.hl7v2.framer import frame
from adapters.hl7v2.listener import MllpListener
from adapters.hl7v2.routing import certificate_names
from adapters.registry import channel_schemas
from hub.context import HubContext
from hub.db.models import InboxMessage, OrderHold, TherapyOrder
from hub.db.models_scheduling import CollectionAppointment
from hub.db.uow import Store, open_store
from hub.fhirstore.repository import ResourceRepository
from hub.orders.service import view
from hub.partners.loader import PartnerDirectory, load_directory
from hub.settings import TLSSettings
from tests.adapters.hl7v2 import messages as m
from tests.adapters.hl7v2.conftest import Loop, Sender, make_ctx
from tests.builders import Driver
from tests.conftest import REPO
from tests.support.ports import refuses_connections
from tests.support.tls import make_pki


def _closed_by_peer(sock: socket.socket) -> bool:
    """Keep writing until the hub's close shows up (a reset or an empty read)."""
    try:
        for _ in range(50):
            sock.sendall(b"A" * 10_000)
            sock.settimeout(0.2)
            try:
                if sock.recv(10) == b"":
                    return True
            except TimeoutError:
                continue
    except (ConnectionError, OSError):
        return True
    return False


def _refused_without_certificate(context: ssl.SSLContext, port: int) -> bool:
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls_sock,
        ):
            tls_sock.sendall(b"\x0b" + m.adt("MRN-22") + b"\x1c\r")
            return tls_sock.recv(4096) == b""
    except (ssl.SSLError, ConnectionError, OSError):
        return True


def codes(frames: list[bytes]) -> list[str]:
    return [ack_code_of(f) for f in frames]


def count(store: Store, model: type, *where: object) -> int:
    return int(store.read(lambda s: s.execute(select(func.count()).select_from(model).where(*where)).scalar_one()))


def order_of(store: Store, placer: str) -> TherapyOrder:
    return store.read(lambda s: s.scalars(select(TherapyOrder).where(TherapyOrder.placer_number == placer)).one())


# --------------------------------------------------------------------------- orders
def test_new_order_is_committed_before_the_ack(sender: Sender, store: Store) -> None:
    frames = sender.send(m.orm("PL-1", "MRN-1", accept="AL", app="AL"), expect=2)
    assert codes(frames) == ["CA", "AA"]
    # A separate connection sees everything the ACK promised.
    other = open_store(store.database_url, check=False)
    try:
        order = other.read(lambda s: s.scalars(select(TherapyOrder).where(TherapyOrder.placer_number == "PL-1")).one())
        assert order.ordering_partner == "st-marys"
        assert order.stage == "order-accepted"
        inbox = other.read(lambda s: s.scalars(select(InboxMessage)).one())
        assert inbox.status == "handled"
        assert inbox.order_id == order.id
        assert inbox.message_type == "ORM^O01"
        sr = other.read(lambda s: ResourceRepository.from_session(s).read("ServiceRequest", order.id)).content
        assert sr["reasonCode"][0]["coding"][0]["code"] == "C83.30"
        assert sr["reasonCode"][0]["coding"][0]["system"] == "http://hl7.org/fhir/sid/icd-10-cm"
        assert sr["note"] == [{"text": "Conditioning planned after collection"}]
        patient = other.read(lambda s: ResourceRepository.from_session(s).read("Patient", order.patient_id)).content
        assert patient["identifier"][0]["system"] == "urn:oid:2.16.840.1.113883.3.8998.1"
        assert patient["birthDate"] == "1971-03-09"
    finally:
        other.dispose()


def test_sites_come_from_the_zct_segment_or_the_partner_defaults(sender: Sender, store: Store) -> None:
    from hub.orders.repository import OrderRepository

    sender.send(m.orm("PL-Z1", "MRN-Z1"))
    sender.send(m.orm("PL-Z2", "MRN-Z2", zct="ZCT|CART19C|LEIDEN|RIVERSIDE|RIVERSIDE|POLAR|LAKESIDE"))
    one, two = order_of(store, "PL-Z1"), order_of(store, "PL-Z2")
    roles1 = set(store.read(lambda s: OrderRepository.from_session(s).participants(one.id)))
    roles2 = set(store.read(lambda s: OrderRepository.from_session(s).participants(two.id)))
    assert ("leiden-cell-factory", "manufacturing") in roles1
    assert ("st-marys", "collection") in roles1
    assert ("riverside-cancer-center", "collection") in roles2
    assert ("riverside-cancer-center", "treatment") in roles2
    assert two.product_code == "car-t-cryo"


def test_duplicate_gets_the_same_bytes_and_changes_nothing(sender: Sender, store: Store) -> None:
    msg = m.orm("PL-2", "MRN-2", accept="AL", app="AL")
    first = sender.send(msg, expect=2)
    again = sender.send(msg, expect=2)
    assert again == first  # byte-identical, timestamps and ACK control ids included
    assert count(store, TherapyOrder) == 1
    assert count(store, InboxMessage) == 1


def test_same_control_id_with_other_content_is_rejected_and_kept(sender: Sender, store: Store) -> None:
    sender.send(m.orm("PL-3", "MRN-3", cid="DUP-1"))
    frames = sender.send(m.orm("PL-4", "MRN-4", cid="DUP-1"))
    assert codes(frames) == ["CR"]
    assert b"205^Duplicate key identifier^HL70357" in frames[0]
    assert b"MSH^1^10" in frames[0]
    assert b"already used for a different message" in frames[0]
    assert count(store, TherapyOrder) == 1
    assert count(store, InboxMessage, InboxMessage.status == "conflict") == 1


def test_refused_order_is_kept_and_answered_with_the_location(sender: Sender, store: Store) -> None:
    frames = sender.send(m.orm("PL-5", "MRN-5", product="NOPE"), expect=2)
    assert codes(frames) == ["CA", "AE"]
    assert b"ERR||OBR^1^4^1^1|103^Table value not found^HL70357|E" in frames[1]
    no_birth = m.orm("PL-6", "MRN-6", birth="")
    frames = sender.send(no_birth, expect=2)
    assert codes(frames) == ["CA", "AE"]
    assert b"PID^1^7" in frames[1]
    assert count(store, TherapyOrder) == 0
    assert count(store, InboxMessage, InboxMessage.status == "rejected") == 2


def test_unsupported_type_is_rejected_naming_it(sender: Sender, store: Store) -> None:
    msg = m.msh("ADT^A02", "X-A02") + "\rEVN|A02|20261125\r" + m.pid("MRN-7") + "\r"
    frames = sender.send(msg.encode())
    assert codes(frames) == ["CR"]
    assert b"ADT^A02" in frames[0] or b"ADT\\S\\A02" in frames[0]
    assert b"201^Unsupported event code" in frames[0]
    row = store.read(lambda s: s.scalars(select(InboxMessage)).one())
    assert row.status == "rejected"
    assert row.message_type == "ADT^A02"


def test_an_acknowledgment_is_kept_and_not_acknowledged(sender: Sender, store: Store) -> None:
    """A hospital in enhanced mode sends its application ACK for one of our ORU^R01 back to the
    listener. It was answered "CR 200 unsupported message type ACK": an ACK of an ACK, which a
    partner's engine may answer again. It is kept (ignored), and answered only if it asks to be."""
    ack = "MSH|^~\\&|EPIC|STMARYS|CGTHUB|CGTHUB|20261125||ACK^R01^ACK|H77|P|2.5.1\rMSA|AA|0123456789ABCDEF\r"
    sender.sock.sendall(frame(ack.encode()))
    frames = sender.send(m.orm("PL-ACK", "MRN-ACK"))  # the next answer on the connection is the order's
    assert codes(frames) == ["CA"]
    assert acked_control_id(frames[0]).startswith("ORM")
    rows = store.read(lambda s: list(s.scalars(select(InboxMessage).where(InboxMessage.message_type == "ACK^R01"))))
    assert [(r.external_id, r.status) for r in rows] == [("H77", "ignored")]
    asking = ack.replace("|H77|P|2.5.1", "|H78|P|2.5.1|||AL|NE")
    assert codes(sender.send(asking.encode())) == ["CA"]


def test_hold_release_cancel(sender: Sender, store: Store) -> None:
    sender.send(m.orm("PL-8", "MRN-8"))
    assert codes(sender.send(m.orm("PL-8", "MRN-8", control="HD", reason="^patient unwell"))) == ["CA"]
    order = order_of(store, "PL-8")
    assert order.status == "on-hold"
    hold = store.read(lambda s: s.scalars(select(OrderHold).where(OrderHold.order_id == order.id)).one())
    assert hold.kind == "partner-request"
    assert hold.reason == "patient unwell"
    assert codes(sender.send(m.orm("PL-8", "MRN-8", control="RL"))) == ["CA"]
    assert order_of(store, "PL-8").status == "active"
    # another patient's identifiers on the order's cancel: refused, nothing changes
    frames = sender.send(m.orm("PL-8", "MRN-OTHER", control="CA"), expect=2)
    assert codes(frames) == ["CA", "AE"]
    assert b"not the patient of order" in frames[1]
    assert order_of(store, "PL-8").status == "active"
    assert codes(sender.send(m.orm("PL-8", "MRN-8", control="CA", mtype="OML^O21"))) == ["CA"]
    assert order_of(store, "PL-8").status == "revoked"


def test_oml_o21_places_an_order_with_its_timing(sender: Sender, store: Store) -> None:
    assert codes(sender.send(m.orm("PL-OML", "MRN-OML", mtype="OML^O21"))) == ["CA"]
    order = order_of(store, "PL-OML")
    sr = store.read(lambda s: ResourceRepository.from_session(s).read("ServiceRequest", order.id)).content
    assert sr["priority"] == "routine"
    assert sr["occurrenceDateTime"] == "2026-12-01T08:00:00-05:00"


# --------------------------------------------------------------------------- store down
def test_store_down_never_gets_a_positive_ack(ctx: HubContext, loop: Loop, store: Store) -> None:
    listener = MllpListener(ctx, host="127.0.0.1", port=0)
    loop.run(listener.start())
    sender = Sender(listener.port)

    def refuse(conn: object) -> None:
        raise RuntimeError("disk on fire")

    try:
        event.listen(store.write_engine, "commit", refuse)
        try:
            frames = sender.send(m.orm("PL-9", "MRN-9", accept="AL", app="AL"))
            assert codes(frames) == ["CE"]
            frames = sender.send(m.oru("CHA999826000001", [("LRL-VIAB", "90", "%")], facility="STMARYS"))
            assert codes(frames) == ["CE"]  # st-marys is enhanced by profile
        finally:
            event.remove(store.write_engine, "commit", refuse)
        assert count(store, InboxMessage) == 0
        assert count(store, TherapyOrder) == 0
        frames = sender.send(m.orm("PL-9", "MRN-9", accept="AL", app="AL"), expect=2)  # the sender retries
        assert codes(frames) == ["CA", "AA"]
        assert count(store, TherapyOrder) == 1
    finally:
        sender.close()
        loop.run(listener.stop())


# --------------------------------------------------------------------------- patients
def test_adt_registers_updates_and_never_merges(sender: Sender, store: Store) -> None:
    assert codes(sender.send(m.adt("MRN-10", "A04"))) == ["CA"]
    assert codes(sender.send(m.adt("MRN-10", "A08", given="Anna", sex="F"))) == ["CA"]
    patients = store.read(lambda s: ResourceRepository.from_session(s).find_by_identifier("Patient", None, "MRN-10"))
    assert len(patients) == 1
    assert patients[0].version_id == 2
    assert patients[0].content["name"][0]["given"] == ["Anna"]
    frames = sender.send(m.adt("MRN-10", "A08", birth="19800101"), expect=2)
    assert codes(frames) == ["CA", "AE"]
    assert b"PID^1^7" in frames[1]
    assert b"birth date" in frames[1]
    frames = sender.send(m.adt("MRN-10", "A01", family="Someone"), expect=2)
    assert codes(frames) == ["CA", "AE"]
    assert b"PID^1^5" in frames[1]
    patients = store.read(lambda s: ResourceRepository.from_session(s).find_by_identifier("Patient", None, "MRN-10"))
    assert len(patients) == 1
    assert patients[0].version_id == 2
    # The ordered patient is the registered one (found by MRN, not created again).
    sender.send(m.orm("PL-10", "MRN-10", family="Rivera"))
    assert order_of(store, "PL-10").patient_id == patients[0].id


# --------------------------------------------------------------------------- scheduling
def test_siu_books_moves_and_cancels_the_collection(sender: Sender, store: Store) -> None:
    sender.send(m.orm("PL-11", "MRN-11"))
    assert codes(sender.send(m.siu("S12", "APT-1", "PL-11", "MRN-11"))) == ["CA"]
    order = order_of(store, "PL-11")
    assert order.stage == "collection-scheduled"
    task = store.read(lambda s: ResourceRepository.from_session(s).read("Task", f"{order.id}-s02")).content
    assert task["restriction"]["period"] == {
        "start": "2026-12-03T13:00:00.000000Z",
        "end": "2026-12-03T16:00:00.000000Z",
    }
    assert codes(sender.send(m.siu("S13", "APT-1", "PL-11", "MRN-11", start="20261204090000-0500"))) == ["CA"]
    appt = store.read(lambda s: s.scalars(select(CollectionAppointment)).one())
    assert appt.start.isoformat().startswith("2026-12-04T14:00")
    frames = sender.send(m.siu("S14", "APT-1", "PL-11", "MRN-OTHER"), expect=2)
    assert codes(frames) == ["CA", "AE"]
    assert codes(sender.send(m.siu("S15", "APT-1", "PL-11", "MRN-11"))) == ["CA"]
    assert store.read(lambda s: s.scalars(select(CollectionAppointment)).one()).status == "cancelled"
    frames = sender.send(m.siu("S12", "APT-2", "PL-NONE", "MRN-11"), expect=2)
    assert codes(frames) == ["CA", "AE"]
    assert b"204^Unknown key identifier" in frames[1]


# --------------------------------------------------------------------------- lab results
def test_lab_oru_records_release_results(sender: Sender, store: Store, partners: PartnerDirectory) -> None:
    sender.send(m.orm("PL-12", "MRN-12"))
    order = order_of(store, "PL-12")
    driver = Driver(store, partners, view(order))
    driver.mrn = "MRN-12"
    driver.walk_to("in-manufacturing")
    frames = sender.send(m.oru(order.coi, [("LRL-VIAB", "88.5", "%"), ("LRL-VCN", "2.1", "copies/cell")], mrn="MRN-12"))
    assert codes(frames) == ["AA"], frames  # Lakeside is in original mode
    assert acked_control_id(frames[0]).startswith("ORU")
    from hub.orders.repository import OrderRepository

    results = store.read(lambda s: OrderRepository.from_session(s).current_results(order.id))
    assert {(r.test_code, r.value, r.in_spec) for r in results} == {("viability", "88.5", True), ("vcn", "2.1", True)}
    frames = sender.send(m.oru(order.coi, [("LRL-VIAB", "90", "%"), ("XYZ", "1", "")]))
    assert codes(frames) == ["AE"]
    assert b"OBX^2^3^1^1" in frames[0]
    frames = sender.send(m.oru(order.coi, [("LRL-VIAB", "91", "%")], status="P"))
    assert codes(frames) == ["AA"]  # preliminary: acknowledged, not recorded
    assert (
        store.read(lambda s: s.scalars(select(InboxMessage).order_by(InboxMessage.received_at.desc())).first()).status
        == "ignored"
    )
    frames = sender.send(m.oru("CHA999826999999", [("LRL-VIAB", "90", "%")]))
    assert codes(frames) == ["AE"]
    assert b"OBR^1^3" in frames[0]


@pytest.mark.parametrize("value", ["abc", "NaN", "inf"])
def test_a_result_that_is_not_a_number_is_refused_at_its_obx(
    sender: Sender, store: Store, partners: PartnerDirectory, value: str
) -> None:
    """A numeric release result that is not a number is a data type error (table 0357: 102) at
    OBX-5. It was answered "101 Required field missing", and NaN/inf (which Python reads as numbers)
    with no location at all and the hub's inner "Observation is not valid FHIR R4"."""
    sender.send(m.orm("PL-NAN", "MRN-NAN"))
    order = order_of(store, "PL-NAN")
    driver = Driver(store, partners, view(order))
    driver.mrn = "MRN-NAN"
    driver.walk_to("in-manufacturing")
    frames = sender.send(m.oru(order.coi, [("LRL-VIAB", value, "%")], mrn="MRN-NAN"))
    assert codes(frames) == ["AE"], frames
    assert b"ERR||OBX^1^5^1|102^Data type error^HL70357|E" in frames[0], frames
    assert b"FHIR" not in frames[0]


def _lab_result(obr_refs: str, pid: str | None) -> bytes:
    segs = [m.msh("ORU^R01", m.control_id("ORU"), facility="LAKESIDELAB")]
    if pid:
        segs.append(pid)
    segs.append(f"OBR|1|{obr_refs}|RELEASE^Release panel^L|||20261120090000-0500")
    segs.append("OBX|1|NM|LRL-VIAB^LRL-VIAB^L||88|%|||||F|||20261120090000-0500")
    return ("\r".join(segs) + "\r").encode()


def test_a_lab_result_naming_another_patient_loosely_is_refused(
    sender: Sender, store: Store, partners: PartnerDirectory
) -> None:
    """PID-3 without an assigning authority used to map to no identifier: the message named someone
    else and was recorded on the order all the same. Its value is now compared with the patient's,
    and name and birth date when there is no identifier at all."""
    sender.send(m.orm("PL-31", "MRN-31"))
    order = order_of(store, "PL-31")
    driver = Driver(store, partners, view(order))
    driver.mrn = "MRN-31"
    driver.walk_to("in-manufacturing")
    someone_else = "PID|1||MRN-OTHER^^^^MR||Smith^John^^^^^L||19500101|M"
    frames = sender.send(_lab_result(f"|{order.coi}^CGTHUB", someone_else))
    assert codes(frames) == ["AE"], frames
    assert b"PID^1^3" in frames[0]
    # Another number under the patient's own name and birth date is still someone else.
    other_number = "PID|1||MRN-OTHER^^^^MR||Rivera^Ana^^^^^L||19710309|F"
    frames = sender.send(_lab_result(f"|{order.coi}^CGTHUB", other_number))
    assert codes(frames) == ["AE"], frames
    assert b"PID^1^3" in frames[0]
    same_person = "PID|1||MRN-31^^^^MR||Rivera^Ana^^^^^L||19710309|F"
    assert codes(sender.send(_lab_result(f"|{order.coi}^CGTHUB", same_person))) == ["AA"]
    from hub.orders.repository import OrderRepository

    results = store.read(lambda s: OrderRepository.from_session(s).current_results(order.id))
    assert [(r.test_code, r.value) for r in results] == [("viability", "88")]


def test_order_references_that_name_two_orders_are_refused(
    sender: Sender, store: Store, partners: PartnerDirectory
) -> None:
    """OBR-2 named order B, OBR-3 order A: the result went to whichever was read first."""
    sender.send(m.orm("PL-32", "MRN-32"))
    sender.send(m.orm("PL-33", "MRN-33"))
    a, b = order_of(store, "PL-32"), order_of(store, "PL-33")
    for o, mrn in ((a, "MRN-32"), (b, "MRN-33")):
        driver = Driver(store, partners, view(o))
        driver.mrn = mrn
        driver.walk_to("in-manufacturing")
    frames = sender.send(_lab_result(f"PL-33^STMARYS|{a.coi}^CGTHUB", None))
    assert codes(frames) == ["AE"], frames
    assert b"do not all name the same order" in frames[0]
    frames = sender.send(_lab_result(f"PL-32^STMARYS|{a.coi}^CGTHUB", None))  # both name A
    assert codes(frames) == ["AA"], frames
    from hub.orders.repository import OrderRepository

    assert store.read(lambda s: OrderRepository.from_session(s).current_results(b.id)) == []
    assert len(store.read(lambda s: OrderRepository.from_session(s).current_results(a.id))) == 1


# --------------------------------------------------------------------------- odd headers (found by fuzzing)
def _stored(store: Store) -> list[tuple[str, str]]:
    return store.read(lambda s: [(r.status, r.external_id) for r in s.scalars(select(InboxMessage))])


def test_a_header_without_a_field_separator_is_kept_and_answered(sender: Sender, store: Store) -> None:
    """ "MSH" alone crashed the charset sniffing: the connection dropped, nothing kept, no ACK."""
    frames = sender.send(b"MSH\rPID|1||123\r")
    assert codes(frames) == ["AR"], frames
    assert _stored(store)[0][0] == "rejected"
    assert codes(sender.send(m.adt("MRN-40"))) == ["CA"]  # the connection stays up


def test_a_header_without_a_component_separator_is_kept_and_answered(sender: Sender, store: Store) -> None:
    """MSH-2 "~\\&" declares no component separator: the pre-2.5 ERR could not be rendered, the
    job failed, and the sender was told to resend what would never be kept."""
    msg = b"MSH|~\\&|EPIC|STMARYS|CGTHUB|CGTHUB|20261125101500||ADT^A01|C9|X|2.3\rPID|1||MRN-41\r"
    frames = sender.send(msg)
    assert codes(frames) == ["CR"], frames  # St Mary's is in enhanced mode
    assert frames[0].startswith(b"MSH|^~\\&|")
    assert b"\rERR|" in frames[0]
    assert _stored(store) == [("rejected", "C9")]


@pytest.mark.parametrize("value", ["XX", "Y", "n"])
def test_an_acknowledgment_type_outside_table_0155_is_answered(sender: Sender, value: str) -> None:
    """Only NE asks for no ACK; a value the table does not have was met with silence."""
    frames = sender.send(m.adt("MRN-42").replace(b"||USA|", f"|{value}|{value}|USA|".encode(), 1))
    assert codes(frames) == ["CA"], frames


def test_a_nul_in_the_control_id_is_kept(sender: Sender, store: Store) -> None:
    """PostgreSQL refuses NUL in text: the inbox row failed with the job, and the sender was told to
    resend a message that could never be kept."""
    frames = sender.send(m.adt("MRN-43", cid="C\x0043"))
    assert codes(frames)[0] in ("CA", "CR"), frames
    assert _stored(store) == [(_stored(store)[0][0], "C\\x0043")]
    again = sender.send(m.adt("MRN-43", cid="C\x0043"))
    assert codes(again) == codes(frames)  # the repeat is recognised as the same message


# --------------------------------------------------------------------------- batches and framing
def test_batch_is_answered_with_a_batch_of_acks(sender: Sender, store: Store) -> None:
    one = m.adt("MRN-13").decode().strip("\r")
    two = m.adt("MRN-14").decode().strip("\r")
    batch = f"BHS|^~\\&|EPIC|STMARYS|||20261125||||BATCH-1\r{one}\r{two}\rBTS|2\r".encode()
    frames = sender.send(batch)
    assert len(frames) == 1
    lines = frames[0].split(b"\r")
    assert lines[0].startswith(b"BHS|")
    assert lines[0].split(b"|")[11] == b"BATCH-1"
    assert [ln.split(b"|")[1] for ln in lines if ln.startswith(b"MSA")] == [b"CA", b"CA"]
    assert b"BTS|2" in frames[0]
    assert count(store, InboxMessage) == 2


def test_several_messages_in_one_frame_get_one_ack_each(sender: Sender) -> None:
    frames = sender.send(m.adt("MRN-15") + m.adt("MRN-16"), expect=2)
    assert codes(frames) == ["CA", "CA"]


def test_oversized_frame_closes_the_connection(ctx: HubContext, loop: Loop) -> None:
    listener = MllpListener(ctx, host="127.0.0.1", port=0, max_frame=10_000)
    loop.run(listener.start())
    try:
        sock = socket.create_connection(("127.0.0.1", listener.port), timeout=10)
        sock.sendall(b"\x0b" + b"A" * 20_000)
        assert _closed_by_peer(sock)
        assert listener.stats.oversized_frames == 1
        ok = Sender(listener.port)  # the server is still up
        assert codes(ok.send(m.adt("MRN-17"))) == ["CA"]
        ok.close()
    finally:
        loop.run(listener.stop())


def test_stop_answers_the_message_in_flight_and_takes_no_new_one(ctx: HubContext, loop: Loop, store: Store) -> None:
    """At shutdown the frame being committed is answered (its ACK was promised by the commit); a
    connection waiting for its next frame is closed, and a frame sent after the stop began is
    neither stored nor answered, so the sender resends it. No new connection is accepted."""
    listener = MllpListener(ctx, host="127.0.0.1", port=0)
    loop.run(listener.start())
    waiting = Sender(listener.port)
    assert codes(waiting.send(m.orm("PL-W1", "MRN-W1", accept="AL", app="AL"), expect=2)) == ["CA", "AA"]
    busy = Sender(listener.port)
    committing, go_on = threading.Event(), threading.Event()

    def hold(conn: object) -> None:  # the commit of the frame in flight waits until the stop has begun
        committing.set()
        go_on.wait(10)

    event.listen(store.write_engine, "commit", hold)
    answered: list[bytes] = []
    sending = threading.Thread(
        target=lambda: answered.extend(busy.send(m.orm("PL-B1", "MRN-B1", accept="AL", app="AL"), expect=2))
    )
    try:
        sending.start()
        assert committing.wait(10)
        stopping = asyncio.run_coroutine_threadsafe(listener.stop(), loop.loop)
        assert refuses_connections(listener.port)
        with pytest.raises(ConnectionError):  # sent after the stop began: closed, no ACK
            waiting.send(m.orm("PL-W2", "MRN-W2", accept="AL", app="AL"), expect=2)
        go_on.set()
        sending.join(10)
        stopping.result(10)
    finally:
        go_on.set()
        event.remove(store.write_engine, "commit", hold)
        waiting.close()
        busy.close()
        loop.run(listener.stop())
    assert codes(answered) == ["CA", "AA"]
    assert count(store, TherapyOrder, TherapyOrder.placer_number == "PL-B1") == 1
    assert count(store, TherapyOrder, TherapyOrder.placer_number == "PL-W2") == 0
    assert count(store, InboxMessage) == 2


def test_idle_connection_is_closed(ctx: HubContext, loop: Loop) -> None:
    listener = MllpListener(ctx, host="127.0.0.1", port=0, idle_timeout_s=0.3)
    loop.run(listener.start())
    try:
        sock = socket.create_connection(("127.0.0.1", listener.port), timeout=5)
        assert sock.recv(10) == b""
    finally:
        loop.run(listener.stop())


def test_address_outside_every_allow_list_is_refused(store: Store, partners: PartnerDirectory, loop: Loop) -> None:
    from tests.adapters.hl7v2.conftest import make_ctx

    profiles = {}
    for pid, profile in partners.profiles.items():
        channels = tuple(
            c.model_copy(update={"allow_from": ("10.99.0.0/16",)}) if c.adapter == "hl7v2-mllp" else c
            for c in profile.channels
        )
        profiles[pid] = profile.model_copy(update={"channels": channels})
    ctx = make_ctx(store, PartnerDirectory(profiles))
    listener = MllpListener(ctx, host="127.0.0.1", port=0)
    loop.run(listener.start())
    try:
        sock = socket.create_connection(("127.0.0.1", listener.port), timeout=5)
        try:
            sock.sendall(m.adt("MRN-18"))
            answer = sock.recv(10)
        except ConnectionResetError:  # closed before it read what we sent: a reset, not a FIN
            answer = b""
        assert answer == b""
        assert listener.stats.refused_connections == 1
        assert count(store, InboxMessage) == 0
    finally:
        loop.run(listener.stop())


def test_msh4_picks_the_partner_among_those_sharing_an_address(sender: Sender, store: Store) -> None:
    frames = sender.send(m.adt("MRN-19"))
    assert codes(frames) == ["CA"]  # STMARYS → st-marys (enhanced)
    frames = sender.send(m.oru("CHA999826000009", [("LRL-VIAB", "90", "%")]))
    assert codes(frames) == ["AE"]  # LAKESIDELAB → lakeside (original), order unknown
    unknown = (m.msh("ADT^A04", "X-20", facility="ELSEWHERE") + "\r" + m.pid("MRN-20") + "\r").encode()
    frames = sender.send(unknown)
    assert codes(frames) == ["AR"]
    assert b"MSH^1^4" in frames[0]
    assert (
        store.read(lambda s: s.scalars(select(InboxMessage.partner).where(InboxMessage.external_id == "X-20")).one())
        == "unidentified"
    )


# --------------------------------------------------------------------------- TLS
def _certs(tmp: Path) -> dict[str, Path]:
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        str(tmp / "ca.key"),
        "-out",
        str(tmp / "ca.pem"),
    )
    for name in ("server", "client"):
        run(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            f"/CN={'127.0.0.1' if name == 'server' else name}",
            "-keyout",
            str(tmp / f"{name}.key"),
            "-out",
            str(tmp / f"{name}.csr"),
        )
        ext = tmp / f"{name}.ext"
        ext.write_text("subjectAltName=IP:127.0.0.1\n" if name == "server" else "extendedKeyUsage=clientAuth\n")
        run(
            "x509",
            "-req",
            "-in",
            str(tmp / f"{name}.csr"),
            "-CA",
            str(tmp / "ca.pem"),
            "-CAkey",
            str(tmp / "ca.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            str(ext),
            "-out",
            str(tmp / f"{name}.pem"),
        )
    return {n: tmp / n for n in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")}


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_tls_and_mutual_tls(ctx: HubContext, loop: Loop, tmp_path: Path) -> None:
    certs = _certs(tmp_path)
    tls = TLSSettings(
        cert_file=certs["server.pem"], key_file=certs["server.key"], ca_file=certs["ca.pem"], client_auth="required"
    )
    listener = MllpListener(ctx, host="127.0.0.1", port=0, tls=tls)
    loop.run(listener.start())
    try:
        client = ssl.create_default_context(cafile=str(certs["ca.pem"]))
        client.load_cert_chain(str(certs["client.pem"]), str(certs["client.key"]))
        with (
            socket.create_connection(("127.0.0.1", listener.port), timeout=10) as raw,
            client.wrap_socket(raw, server_hostname="127.0.0.1") as tls_sock,
        ):
            tls_sock.sendall(b"\x0b" + m.adt("MRN-21") + b"\x1c\r")
            data = b""
            while not data.endswith(b"\x1c\r"):
                data += tls_sock.recv(4096)
            assert b"MSA|CA|" in data
        anonymous = ssl.create_default_context(cafile=str(certs["ca.pem"]))
        assert _refused_without_certificate(anonymous, listener.port)
    finally:
        loop.run(listener.stop())


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_partner_pinned_to_its_certificate_cannot_be_sent_for_by_another(
    store: Store, loop: Loop, tmp_path: Path
) -> None:
    """St Mary's and Lakeside's lab share 127.0.0.0/8. MSH-4 is whatever the sender writes, so
    without more the lab could send an order cancel as STMARYS. With ``tls_client_names`` set,
    St Mary's is reached only with its certificate: a connection without it can only be the lab's,
    so an "STMARYS" ADT on it is the lab's message, refused (the lab sends results only)."""
    profiles = tmp_path / "profiles"
    shutil.copytree(REPO / "partner-profiles", profiles)
    text = (profiles / "st-marys.yaml").read_text()
    pinned = text.replace(
        "    allow_from: [127.0.0.0/8, 10.20.0.0/16]\n",
        "    allow_from: [127.0.0.0/8, 10.20.0.0/16]\n    tls_client_names: [St-Marys Interface Engine]\n",
    )
    assert pinned != text
    (profiles / "st-marys.yaml").write_text(pinned)
    partners, errors = load_directory(profiles, channel_schemas())
    assert not errors, errors
    pki = make_pki(tmp_path / "pki")
    tls = TLSSettings(cert_file=pki.server_cert, key_file=pki.server_key, ca_file=pki.ca_cert, client_auth="optional")
    listener = MllpListener(make_ctx(store, partners), host="127.0.0.1", port=0, tls=tls)
    loop.run(listener.start())

    def send(message: bytes, *, certificate: bool) -> bytes:
        client = ssl.create_default_context(cafile=str(pki.ca_cert))
        if certificate:
            client.load_cert_chain(str(pki.client_cert), str(pki.client_key))
        with (
            socket.create_connection(("127.0.0.1", listener.port), timeout=10) as raw,
            client.wrap_socket(raw, server_hostname="127.0.0.1") as tls_sock,
        ):
            tls_sock.sendall(b"\x0b" + message + b"\x1c\r")
            data = b""
            while not data.endswith(b"\x1c\r"):
                chunk = tls_sock.recv(4096)
                assert chunk, "connection closed without an answer"
                data += chunk
            return data[1:-2]

    try:
        spoofed = send(m.adt("MRN-PIN-1"), certificate=False)  # MSH-4 STMARYS, no certificate
        assert ack_code_of(spoofed) == "AR", spoofed
        genuine = send(m.adt("MRN-PIN-2"), certificate=True)
        assert ack_code_of(genuine) == "CA", genuine
        lab = send(m.oru("CHA999826999999", [("LRL-VIAB", "90", "%")]), certificate=False)
        assert ack_code_of(lab) == "AE"  # the lab itself still reaches the hub (unknown order here)
    finally:
        loop.run(listener.stop())
    partners_of = store.read(lambda s: sorted((r.partner, r.status) for r in s.scalars(select(InboxMessage))))
    assert partners_of == [
        ("lakeside-reference-lab", "rejected"),  # the spoofed ADT, kept under who sent it
        ("lakeside-reference-lab", "rejected"),  # the lab's result for an order it does not know
        ("st-marys", "handled"),
    ]


def test_certificate_names_are_the_subject_cn_and_dns_alt_names() -> None:
    cert = {
        "subject": ((("countryName", "US"),), (("commonName", "Engine-1"),)),
        "subjectAltName": (("DNS", "engine.stmarys.example"), ("IP Address", "10.20.0.5")),
    }
    assert certificate_names(cert) == {"engine-1", "engine.stmarys.example"}
    assert certificate_names(None) == frozenset()
    assert certificate_names({}) == frozenset()


# --------------------------------------------------------------------------- processing id (MSH-11)
def _with_msh11(payload: bytes, processing_id: str) -> bytes:
    head, rest = payload.split(b"\r", 1)
    fields = head.split(b"|")
    fields[10] = processing_id.encode()
    return b"|".join(fields) + b"\r" + rest


def _listening(store: Store, partners: PartnerDirectory, loop: Loop, **settings: object) -> MllpListener:
    listener = MllpListener(make_ctx(store, partners, **settings), host="127.0.0.1", port=0, idle_timeout_s=30)
    loop.run(listener.start())
    return listener


def test_a_production_hub_refuses_training_and_debugging_messages(
    store: Store, partners: PartnerDirectory, loop: Loop
) -> None:
    """An ORM^O01 with MSH-11 T (a hospital's training system pointed at the production hub) was
    accepted and placed a real therapy order with a real CoI. A production hub now refuses any
    message that is not P, with ERR MSH-11 / 202, keeps it, and does nothing else."""
    listener = _listening(store, partners, loop, env="production")
    sender = Sender(listener.port)
    try:
        frames = sender.send(_with_msh11(m.orm("PL-T1", "MRN-T1", cid="PROC-T1"), "T"))
        assert codes(frames) == ["CR"], frames  # St Mary's: enhanced mode
        assert b"ERR||MSH^1^11^1|202^Unsupported processing id^HL70357|E" in frames[0], frames
        lab = _with_msh11(m.oru("CHA999826000009", [("LRL-VIAB", "90", "%")]), "D^T")
        frames = sender.send(lab)
        assert codes(frames) == ["AR"], frames  # the lab: original mode
        assert b"MSH^1^11^1|202^Unsupported processing id" in frames[0], frames
        assert count(store, TherapyOrder) == 0
        assert count(store, InboxMessage, InboxMessage.status == "rejected") == 2
        assert count(store, InboxMessage) == 2
        frames = sender.send(m.orm("PL-P1", "MRN-P1", accept="AL", app="AL"), expect=2)
        assert codes(frames) == ["CA", "AA"], frames  # production messages still go through
        assert count(store, TherapyOrder) == 1
    finally:
        sender.close()
        loop.run(listener.stop())


def test_a_partner_declares_the_processing_ids_it_sends(store: Store, partners: PartnerDirectory, loop: Loop) -> None:
    """Outside production a partner's channel may say what its system sends (``processing_ids``):
    a test hub fed by a hospital's training system takes T and refuses a stray P message."""
    profile = partners.profiles["st-marys"]
    channels = tuple(
        c.model_copy(update={"processing_ids": ("T",)})
        if c.adapter == "hl7v2-mllp" and c.direction in ("inbound", "both")  # type: ignore[attr-defined]
        else c
        for c in profile.channels
    )
    directory = PartnerDirectory({**partners.profiles, "st-marys": profile.model_copy(update={"channels": channels})})
    listener = _listening(store, directory, loop)
    sender = Sender(listener.port)
    try:
        frames = sender.send(m.orm("PL-T2", "MRN-T2"))
        assert codes(frames) == ["CR"], frames
        assert b"MSH^1^11^1|202^" in frames[0], frames
        assert count(store, TherapyOrder) == 0
        frames = sender.send(_with_msh11(m.orm("PL-T3", "MRN-T3"), "T"))
        assert codes(frames) == ["CA"], frames
        assert count(store, TherapyOrder) == 1
    finally:
        sender.close()
        loop.run(listener.stop())


# --------------------------------------------------------------------------- stray order references
def _answer(frame_: bytes) -> list[bytes]:
    """An ACK without what differs per message (its MSH, MSA-2 the control id it answers)."""
    lines = [seg for seg in frame_.split(b"\r") if seg and not seg.startswith(b"MSH")]
    return [b"|".join(seg.split(b"|")[:2] + seg.split(b"|")[3:]) if seg.startswith(b"MSA") else seg for seg in lines]


def test_a_stray_order_reference_is_refused_the_same_whether_it_exists_or_not(
    sender: Sender, store: Store, partners: PartnerDirectory
) -> None:
    """A lab result naming its order's placer number and another partner's CoI was answered "the
    references disagree", while one naming a CoI that does not exist was recorded on the placer's
    order: the difference told the sender that the other CoI exists, and a reference that names no
    order was silently ignored. Both are now refused, with the same answer, and nothing recorded."""
    from hub.orders.repository import OrderRepository
    from hub.orders.service import OrderService
    from tests.builders import place_cmd

    sender.send(m.orm("PL-34", "MRN-34"))
    mine = order_of(store, "PL-34")
    driver = Driver(store, partners, view(mine))
    driver.mrn = "MRN-34"
    driver.walk_to("in-manufacturing")
    # An order the lab (Lakeside) takes no part in: its lab is Northlab.
    theirs = store.run(lambda w: OrderService(w, partners).place(place_cmd()))
    assert theirs.coi != mine.coi
    missing = "CHA999826999999"
    assert count(store, TherapyOrder, TherapyOrder.coi == missing) == 0
    another = sender.send(_lab_result(f"PL-34^STMARYS|{theirs.coi}^CGTHUB", None))
    nobody = sender.send(_lab_result(f"PL-34^STMARYS|{missing}^CGTHUB", None))
    no_placer = sender.send(_lab_result(f"PL-NOBODY^STMARYS|{mine.coi}^CGTHUB", None))
    assert codes(another) == codes(nobody) == codes(no_placer) == ["AE"], (another, nobody, no_placer)
    assert _answer(another[0]) == _answer(nobody[0]) == _answer(no_placer[0])
    assert b"do not all name the same order" in nobody[0]
    assert store.read(lambda s: OrderRepository.from_session(s).current_results(mine.id)) == []
    assert codes(sender.send(_lab_result(f"PL-34^STMARYS|{mine.coi}^CGTHUB", None))) == ["AA"]


def test_a_cancel_whose_filler_number_names_another_order_is_refused(sender: Sender, store: Store) -> None:
    """ORC-3 (the filler number, the CoI the hub gave) was not read: a cancel naming one order's
    placer number and another order's CoI, or a CoI that does not exist, cancelled the first."""
    sender.send(m.orm("PL-35", "MRN-35"))
    sender.send(m.orm("PL-36", "MRN-36"))
    other = order_of(store, "PL-36")

    def cancel(filler: str) -> bytes:
        msg = m.orm("PL-35", "MRN-35", control="CA", reason="^patient declined")
        return msg.replace(b"ORC|CA|PL-35^STMARYS||", f"ORC|CA|PL-35^STMARYS|{filler}^CGTHUB|".encode())

    for filler in (other.coi, "CHA999826999999"):
        msg = cancel(filler)
        assert filler.encode() in msg
        frames = sender.send(msg, expect=2)
        assert codes(frames) == ["CA", "AE"], frames
        assert b"do not all name the same order" in frames[1]
    assert order_of(store, "PL-35").status == "active"
    assert order_of(store, "PL-36").status == "active"
    mine = order_of(store, "PL-35")
    assert codes(sender.send(cancel(mine.coi))) == ["CA"]  # enhanced: no application ACK on success
    assert order_of(store, "PL-35").status == "revoked"
