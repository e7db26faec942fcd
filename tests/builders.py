"""Small builders for canonical resources and commands, and a driver that walks an order."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any, TypeVar

from hub.db.uow import Store, Work
from hub.identity.service import IdentityService
from hub.orders.schemas import (
    Advance,
    OrderView,
    PlaceOrder,
    RecordResult,
    Scan,
    Sites,
    VerifyIdentity,
)
from hub.orders.service import OrderService
from hub.partners.loader import PartnerDirectory
from hub.products.registry import get_product
from hub.signatures.service import add_user

T = TypeVar("T")
_counter = itertools.count(1)
QA = ("qa.tester", "a long QA password 1")
OPERATOR = ("ops.tester", "a long operator password 1")

PASSING = {
    "car-t-fresh": {
        "viability": "85",
        "car-expression": "40",
        "vcn": "2",
        "endotoxin": "1",
        "sterility": "negative",
        "mycoplasma": "negative",
    },
    "car-t-cryo": {
        "viability": "90",
        "car-expression": "30",
        "vcn": "2",
        "endotoxin": "1",
        "sterility": "negative",
        "mycoplasma": "negative",
        "rcl": "negative",
    },
}


def patient(mrn: str | None = None, family: str = "Rivera", birth: str = "1971-03-09") -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [
            {
                "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
                "system": "urn:oid:2.16.840.1.113883.3.8998.1",
                "value": mrn or f"MRN{next(_counter):06d}",
            }
        ],
        "name": [{"family": family, "given": ["Ana"]}],
        "birthDate": birth,
        "gender": "female",
    }


def practitioner() -> dict[str, Any]:
    return {
        "resourceType": "Practitioner",
        "identifier": [{"system": "http://hl7.org/fhir/sid/us-npi", "value": "1234567893"}],
        "name": [{"family": "Okafor", "given": ["Chidi"]}],
    }


def place_cmd(product: str = "car-t-fresh", placer: str | None = None, **kw: Any) -> PlaceOrder:
    data: dict[str, Any] = {
        "ordering_partner": "st-marys",
        "placer_number": placer or f"ORD{next(_counter):07d}",
        "product_code": product,
        "patient": kw.pop("patient", None) or patient(),
        "requester": practitioner(),
        "sites": Sites(
            collection="st-marys",
            manufacturing="leiden-cell-factory",
            treatment="st-marys",
            lab="northlab-analytics",
            courier="polar-courier",
        ),
    }
    data.update(kw)
    return PlaceOrder(**data)


def ensure_users(store: Store) -> None:
    from hub.db.models import AppUser

    if store.read(lambda s: s.get(AppUser, QA[0])) is None:
        store.run(lambda w: add_user(w, QA[0], "Quinn Assurance", {"qa"}, QA[1]))
        store.run(lambda w: add_user(w, OPERATOR[0], "Oliver Operator", {"operator"}, OPERATOR[1]))


class Driver:
    """Walks one order through its journey via the core's commands."""

    def __init__(self, store: Store, partners: PartnerDirectory, order: OrderView) -> None:
        self.store = store
        self.partners = partners
        self.order = order
        self.product = get_product(order.product_code)
        self.mrn: str | None = None

    @classmethod
    def place(cls, store: Store, partners: PartnerDirectory, product: str = "car-t-fresh", **kw: Any) -> Driver:
        cmd = place_cmd(product, **kw)
        view = store.run(lambda w: OrderService(w, partners).place(cmd), actor="test")
        driver = cls(store, partners, view)
        driver.mrn = cmd.patient["identifier"][0]["value"]
        return driver

    def run(self, fn: Callable[[Work], T]) -> T:
        return self.store.run(fn, actor="test")

    def svc(self, work: Work) -> OrderService:
        return OrderService(work, self.partners)

    def verify(
        self, checkpoint: str, coi_barcode: str | None = None, *, step: str | None = None, patient_id: str | None = None
    ) -> Any:
        scans = [Scan(value=coi_barcode or self.order.coi_barcode)]
        if checkpoint == "administration":
            scans.append(Scan(value=patient_id or self.mrn or "", kind="patient"))
        cmd = VerifyIdentity(
            order_id=self.order.id,
            checkpoint=checkpoint,
            scans=tuple(scans),  # type: ignore[arg-type]
            operator="op",
            method="barcode",
            step=step,
        )
        return self.run(lambda w: IdentityService(w, self.partners).verify(cmd))

    def advance(self, stage: str) -> OrderView:
        self.order = self.run(lambda w: self.svc(w).advance(Advance(order_id=self.order.id, to_stage=stage)))
        return self.order

    def satisfy(self, stage_code: str) -> None:
        """Record whatever the next stage needs (verifications, results, signature)."""
        stage = self.product.stage(stage_code)
        for cp in stage.checkpoints:
            if cp.value == "processing-step":
                self.verify(cp.value, step=self.product.processing_steps[0])
            else:
                self.verify(cp.value)
        if "all-processing-steps" in stage.guards:
            for step in self.product.processing_steps[1:]:
                self.verify("processing-step", step=step)
        if "results-in-spec" in stage.guards:
            for test, value in PASSING[self.product.code].items():
                self.run(
                    lambda w, t=test, v=value: self.svc(w).record_result(
                        RecordResult(order_id=self.order.id, test_code=t, value=v)
                    )
                )
        if "release-signature" in stage.guards:
            ensure_users(self.store)
            self.run(lambda w: self.svc(w).sign_release(self.order.id, QA[0], QA[1], "reviewed"))

    def step(self) -> OrderView:
        nxt = self.product.next_stage(self.order.stage)
        if nxt is None:
            return self.order
        self.satisfy(nxt.code)
        return self.advance(nxt.code)

    def walk_to(self, stage: str) -> OrderView:
        while self.order.stage != stage:
            self.step()
        return self.order
