from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import text

from hub.audit.service import verify_chain
from hub.db.types import utcnow
from hub.db.uow import Store
from hub.errors import AuthenticationFailed, Conflict, Forbidden, GuardFailed, InvalidScan, ValidationFailed
from hub.fhirstore.repository import ResourceRepository, SearchParam, search
from hub.fhirstore.validation import validate
from hub.identity.service import IdentityService
from hub.orders.fhir import COI_SYSTEM, SITE_EXTENSION, task_id
from hub.orders.repository import OrderRepository
from hub.orders.schemas import (
    Advance,
    Cancel,
    PlaceHold,
    RecordResult,
    ReleaseHold,
    Scan,
    SignerCredentials,
    VerifyIdentity,
)
from hub.orders.service import OrderService
from hub.partners.loader import PartnerDirectory
from hub.products.registry import get_product
from tests.builders import OPERATOR, QA, Driver, ensure_users, place_cmd

TABLES = (
    "resource",
    "resource_version",
    "therapy_order",
    "identity_verification",
    "order_hold",
    "audit_entry",
    "outbox_event",
    "qc_result",
    "signature",
    "stage_transition",
    "custody_handoff",
    "search_token",
)


def counts(store: Store) -> dict[str, int]:
    with store.write_engine.connect() as conn:
        return {t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one() for t in TABLES}


@pytest.mark.parametrize("product", ["car-t-fresh", "car-t-cryo"])
def test_whole_journey_reaches_administered(store: Store, partners: PartnerDirectory, product: str) -> None:
    d = Driver.place(store, partners, product)
    assert d.order.coi.startswith("CHA9998")
    d.walk_to("administered")
    assert d.order.status == "completed"
    with store.reading() as s:
        repo = ResourceRepository.from_session(s)
        sr = repo.read("ServiceRequest", d.order.id)
        assert sr.content["status"] == "completed"
        assert any(i["system"] == COI_SYSTEM and i["value"] == d.order.coi for i in sr.content["identifier"])
        n = len(get_product(product).stages)
        tasks = [repo.read("Task", task_id(d.order.id, i)).content for i in range(n)]
        assert [t["status"] for t in tasks] == ["completed"] * n
        found = search(s, "ServiceRequest", [SearchParam("identifier", f"{COI_SYSTEM}|{d.order.coi}")])
        assert [f.id for f in found] == [d.order.id]
        assert repo.history("ServiceRequest", d.order.id)[0].version_id == 2
    assert verify_chain(store).ok


def test_cryo_product_is_another_journey_from_data(store: Store, partners: PartnerDirectory) -> None:
    d = Driver.place(store, partners, "car-t-cryo")
    d.walk_to("collected")
    assert d.product.next_stage("collected").code == "cryopreserved-at-site"  # type: ignore[union-attr]
    with pytest.raises(GuardFailed, match="storage-in"):
        d.advance("cryopreserved-at-site")


def test_refused_commands_write_nothing(store: Store, partners: PartnerDirectory) -> None:
    d = Driver.place(store, partners)
    d.walk_to("collection-scheduled")
    before = counts(store)
    with pytest.raises(GuardFailed, match="collection checkpoint"):
        d.advance("collected")
    with pytest.raises(GuardFailed, match="next stage is collected"):
        d.advance("in-manufacturing")
    with pytest.raises(InvalidScan):
        d.verify("collection", "&/CHA999826X")
    with pytest.raises(ValidationFailed):
        d.run(lambda w: OrderService(w, partners).place(place_cmd(product="car-t-unknown")))
    with pytest.raises(GuardFailed, match="not due"):
        d.verify("administration")
    assert counts(store) == before


def test_duplicate_placer_number_is_a_conflict(store: Store, partners: PartnerDirectory) -> None:
    cmd = place_cmd(placer="SAME-1")
    store.run(lambda w: OrderService(w, partners).place(cmd))
    before = counts(store)
    with pytest.raises(Conflict, match="already exists"):
        store.run(lambda w: OrderService(w, partners).place(cmd))
    assert counts(store) == before


def test_patient_identifier_collision_is_refused(store: Store, partners: PartnerDirectory) -> None:
    from tests.builders import patient

    store.run(lambda w: OrderService(w, partners).place(place_cmd(patient=patient("MRN-X", "Rivera"))))
    with pytest.raises(Conflict, match="different name or birth date"):
        store.run(lambda w: OrderService(w, partners).place(place_cmd(patient=patient("MRN-X", "Novak"))))
    # the same patient ordering again is fine and reuses the Patient
    second = store.run(lambda w: OrderService(w, partners).place(place_cmd(patient=patient("MRN-X", "Rivera"))))
    with store.reading() as s:
        assert len(search(s, "Patient", [SearchParam("identifier", "MRN-X")])) == 1
    assert second.patient_id


def test_order_validation_lists_every_issue(store: Store, partners: PartnerDirectory) -> None:
    bad_patient = {"resourceType": "Patient", "name": [{"given": ["A"]}], "birthDate": "1970-13-01"}
    cmd = place_cmd(patient=bad_patient, ordering_partner="polar-courier")
    with pytest.raises(ValidationFailed) as info:
        store.run(lambda w: OrderService(w, partners).place(cmd))
    where = {i.location for i in info.value.issues}
    assert "ordering_partner" in where
    assert "Patient.birthDate" in where


def test_accepted_order_resources_validate_whole(store: Store, partners: PartnerDirectory) -> None:
    """Acceptance validates the site extensions and Tasks by shape (hub/orders/fhir.py); the stored
    resources, as a partner reads them, must still be valid R4 as a whole."""
    d = Driver.place(store, partners)
    with store.reading() as s:
        repo = ResourceRepository.from_session(s)
        sr = repo.read("ServiceRequest", d.order.id).content
        roles = {
            x["valueCode"]
            for e in sr["extension"]
            if e["url"] == SITE_EXTENSION
            for x in e["extension"]
            if x["url"] == "role"
        }
        assert roles == {"collection", "manufacturing", "treatment", "lab", "courier"}
        validate(sr, "ServiceRequest")
        for i in range(len(d.product.stages)):
            validate(repo.read("Task", task_id(d.order.id, i)).content, "Task")


def test_a_senders_invalid_extension_is_refused_at_its_own_path(store: Store, partners: PartnerDirectory) -> None:
    own = {"url": "https://st-marys.example/ext", "valueDate": "2026-02-30"}
    cmd = place_cmd(service_request={"extension": [own]})
    with pytest.raises(ValidationFailed) as info:
        store.run(lambda w: OrderService(w, partners).place(cmd))
    assert any(i.location.startswith("ServiceRequest.extension[0]") for i in info.value.issues)
    assert counts(store)["therapy_order"] == 0


def test_mismatch_holds_and_only_qa_signature_releases(store: Store, partners: PartnerDirectory) -> None:
    other = Driver.place(store, partners)
    d = Driver.place(store, partners)
    d.walk_to("shipped-to-manufacturing")
    result = d.verify("manufacturing-receipt", other.order.coi_barcode)
    assert result.result == "mismatch"
    assert result.order_status == "on-hold"
    assert result.hold_id
    # The mismatched scan is not evidence, and an order on hold does not move.
    with pytest.raises(GuardFailed, match="on hold"):
        d.advance("received-at-manufacturing")
    ensure_users(store)
    release = ReleaseHold(
        order_id=d.order.id,
        hold_id=result.hold_id,
        rationale="wrong bag scanned; bag re-checked",
        signer=SignerCredentials(username=OPERATOR[0], password=OPERATOR[1]),
    )
    with pytest.raises(Forbidden, match="qa role"):
        d.run(lambda w: OrderService(w, partners).release_hold(release))
    wrong = release.model_copy(update={"signer": SignerCredentials(username=QA[0], password="not the password")})
    with pytest.raises(AuthenticationFailed):
        d.run(lambda w: OrderService(w, partners).release_hold(wrong))
    ok = release.model_copy(update={"signer": SignerCredentials(username=QA[0], password=QA[1])})
    view = d.run(lambda w: OrderService(w, partners).release_hold(ok))
    assert view.status == "active"
    # Verifications made before the release do not count: goods-in must scan again.
    with pytest.raises(GuardFailed, match="manufacturing-receipt"):
        d.advance("received-at-manufacturing")
    d.verify("manufacturing-receipt")
    assert d.advance("received-at-manufacturing").stage == "received-at-manufacturing"


def test_manual_hold_cancel_and_results(store: Store, partners: PartnerDirectory) -> None:
    d = Driver.place(store, partners)
    hold = d.run(lambda w: OrderService(w, partners).hold(PlaceHold(order_id=d.order.id, reason="insurance check")))
    with pytest.raises(GuardFailed, match="on hold"):
        d.advance("collection-scheduled")
    ensure_users(store)
    d.run(
        lambda w: OrderService(w, partners).release_hold(
            ReleaseHold(
                order_id=d.order.id,
                hold_id=hold.id,
                rationale="insurance confirmed by phone",
                signer=SignerCredentials(username=OPERATOR[0], password=OPERATOR[1]),
            )
        )
    )
    d.walk_to("qc-testing")
    with pytest.raises(ValidationFailed, match="not on the release panel"):
        d.run(
            lambda w: OrderService(w, partners).record_result(
                RecordResult(order_id=d.order.id, test_code="x", value="1")
            )
        )
    d.run(
        lambda w: OrderService(w, partners).record_result(
            RecordResult(order_id=d.order.id, test_code="viability", value="50")
        )
    )
    d.verify("release")
    with pytest.raises(GuardFailed, match=r"out of specification|missing"):
        d.advance("released")
    view = d.run(lambda w: OrderService(w, partners).cancel(Cancel(order_id=d.order.id, reason="out of spec batch")))
    assert view.status == "revoked"
    with store.reading() as s:
        assert ResourceRepository.from_session(s).read("ServiceRequest", d.order.id).content["status"] == "revoked"
    with pytest.raises(GuardFailed, match="revoked"):
        d.advance("released")


def test_expired_viability_refuses_receipt(store: Store, partners: PartnerDirectory) -> None:
    d = Driver.place(store, partners)
    d.walk_to("collection-scheduled")
    d.verify("collection")
    long_ago = utcnow() - timedelta(hours=60)
    d.order = d.run(
        lambda w: OrderService(w, partners).advance(
            Advance(order_id=d.order.id, to_stage="collected", occurred_at=long_ago)
        )
    )
    d.walk_to("shipped-to-manufacturing")
    d.verify("manufacturing-receipt")
    with pytest.raises(GuardFailed, match="viability window closed"):
        d.advance("received-at-manufacturing")


def test_a_step_reported_before_the_previous_one_cannot_pass_an_expired_viability(
    store: Store, partners: PartnerDirectory
) -> None:
    """Collected 60 h ago (window 48 h), shipped now: a receipt reported as 50 h ago, within the
    window but before the shipment, was judged at its own time and let the expired cells in."""
    d = Driver.place(store, partners)
    d.walk_to("collection-scheduled")
    d.verify("collection")
    d.order = d.run(
        lambda w: OrderService(w, partners).advance(
            Advance(order_id=d.order.id, to_stage="collected", occurred_at=utcnow() - timedelta(hours=60))
        )
    )
    d.walk_to("shipped-to-manufacturing")  # now: after the window closed
    d.verify("manufacturing-receipt")
    backdated = Advance(
        order_id=d.order.id, to_stage="received-at-manufacturing", occurred_at=utcnow() - timedelta(hours=50)
    )
    with pytest.raises(GuardFailed, match="viability window closed"):
        d.run(lambda w: OrderService(w, partners).advance(backdated))


def test_release_signature_is_bound_to_the_report_version(store: Store, partners: PartnerDirectory) -> None:
    d = Driver.place(store, partners)
    d.walk_to("qc-testing")
    d.satisfy("released")
    # A new result after signing creates a new report version: the signature no longer covers it.
    d.run(
        lambda w: OrderService(w, partners).record_result(
            RecordResult(order_id=d.order.id, test_code="viability", value="88")
        )
    )
    with pytest.raises(GuardFailed, match="release signature"):
        d.advance("released")


def test_events_are_written_with_the_change(store: Store, partners: PartnerDirectory) -> None:
    Driver.place(store, partners)
    with store.write_engine.connect() as conn:
        types = [r[0] for r in conn.execute(text("SELECT event_type FROM outbox_event ORDER BY id"))]
    assert types == ["order.accepted"]


def test_concurrent_orders_for_one_new_patient_create_one_patient(store: Store, partners: PartnerDirectory) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from tests.builders import patient

    store.start_committer()  # several writer threads on PostgreSQL, one on SQLite
    cmds = [place_cmd(patient=patient("MRN-RACE", "Rivera")) for _ in range(24)]
    with ThreadPoolExecutor(12) as pool:
        views = list(pool.map(lambda c: store.run(lambda w: OrderService(w, partners).place(c)), cmds))
    assert len({v.patient_id for v in views}) == 1
    assert len({v.coi for v in views}) == 24
    with store.reading() as s:
        assert len(search(s, "Patient", [SearchParam("identifier", "MRN-RACE")])) == 1
        assert len(search(s, "Organization", [], count=100)) == 4
    assert verify_chain(store).ok


def test_release_results_come_only_from_the_orders_lab_or_manufacturing_site(
    store: Store, partners: PartnerDirectory
) -> None:
    """Results gate release: the ordering hospital or the courier, though they take part in the
    order, must not be able to report an in-spec release panel."""
    d = Driver.place(store, partners)
    d.walk_to("qc-testing")

    def report(performer: str) -> None:
        d.run(
            lambda w: OrderService(w, partners).record_result(
                RecordResult(order_id=d.order.id, test_code="viability", value="90", performer=performer)
            )
        )

    for outsider in ("st-marys", "polar-courier", "riverside-cancer-center"):
        with pytest.raises(Forbidden, match="lab or manufacturing site"):
            report(outsider)
    assert store.read(lambda s: OrderRepository.from_session(s).current_results(d.order.id)) == []
    report("northlab-analytics")
    report("leiden-cell-factory")
    results = store.read(lambda s: OrderRepository.from_session(s).current_results(d.order.id))
    assert [(r.test_code, r.value) for r in results] == [("viability", "90")]


def test_a_manual_verification_needs_a_second_person_who_is_someone_else(
    store: Store, partners: PartnerDirectory
) -> None:
    d = Driver.place(store, partners)
    d.walk_to("collection-scheduled")  # next: the collection checkpoint

    def manual(second: str | None) -> object:
        cmd = VerifyIdentity(
            order_id=d.order.id,
            checkpoint="collection",  # type: ignore[arg-type]
            scans=(Scan(value=d.order.coi_barcode),),
            operator="op",
            method="manual",
            second_person=second,
        )
        return d.run(lambda w: IdentityService(w, partners).verify(cmd))

    for same in (None, "", " ", "op", "Op", " op ", "OP\t"):
        with pytest.raises(ValidationFailed, match="second person"):
            manual(same)
    assert manual("Sam Second").result == "match"  # type: ignore[attr-defined]


def test_a_wristband_from_another_hospital_with_the_same_mrn_value_is_a_mismatch(
    store: Store, partners: PartnerDirectory
) -> None:
    """Only the value after the system was compared: another hospital's MRN that happens to have
    the same digits passed the last identity check before infusion."""
    d = Driver.place(store, partners)
    d.walk_to("received-at-site")
    other = d.verify("administration", patient_id=f"urn:oid:9.9.9.OTHER-HOSPITAL|{d.mrn}")
    assert other.result == "mismatch"
    assert other.order_status == "on-hold"


def test_the_wristband_may_carry_its_system(store: Store, partners: PartnerDirectory) -> None:
    d = Driver.place(store, partners)
    d.walk_to("received-at-site")
    stored = store.read(lambda s: ResourceRepository.from_session(s).read("Patient", d.order.patient_id).content)
    system = stored["identifier"][0]["system"]
    assert d.verify("administration", patient_id=f"{system}|{d.mrn}").result == "match"
    assert d.verify("administration", patient_id=str(d.mrn)).result == "match"
    assert d.advance("administered").stage == "administered"


def test_another_orders_bag_at_a_step_not_due_is_a_mismatch_not_a_refusal(
    store: Store, partners: PartnerDirectory
) -> None:
    """ "Not due" reads as a workflow slip and left no trace; the wrong bag in hand is recorded,
    held and alerted whatever step the order is at. The right bag at the wrong step is refused."""
    other = Driver.place(store, partners)
    d = Driver.place(store, partners)
    d.walk_to("collected")  # next: shipped-to-manufacturing; manufacturing-receipt is not due
    with pytest.raises(GuardFailed, match="not due"):
        d.verify("manufacturing-receipt")
    result = d.verify("manufacturing-receipt", other.order.coi_barcode)
    assert result.result == "mismatch"
    assert result.order_status == "on-hold"
    assert result.hold_id
