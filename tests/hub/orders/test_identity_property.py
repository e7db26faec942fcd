"""Property: whatever commands arrive, in whatever order, an order whose identity check failed never
reaches "administered" without a QA decision; and no stage is ever entered without a matching
verification made after the previous stage and after the last hold release."""

from __future__ import annotations

import contextlib
import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from hub.db.uow import Store
from hub.errors import Forbidden, HubError
from hub.orders.schemas import ReleaseHold, SignerCredentials
from hub.orders.service import OrderService
from hub.partners.loader import PartnerDirectory
from hub.products.schemas import Checkpoint
from tests.builders import OPERATOR, Driver, ensure_users

ACTIONS = ["step", "step", "step", "advance", "verify", "operator-release", "mismatch"]


def _due(d: Driver) -> list[str]:
    nxt = d.product.next_stage(d.order.stage)
    return [c.value for c in nxt.checkpoints] if nxt else []


def _run(store: Store, partners: PartnerDirectory, product: str, actions: list[str], inject: bool) -> Driver:
    other = Driver.place(store, partners, product)
    d = Driver.place(store, partners, product)
    ensure_users(store)
    injected = False
    pending_mismatch = False
    for action in actions:
        if action == "mismatch":
            pending_mismatch = inject
        try:
            if pending_mismatch and not injected and _due(d):
                cp = _due(d)[0]
                step = d.product.processing_steps[0] if cp == Checkpoint.processing_step.value else None
                view = d.verify(cp, other.order.coi_barcode, step=step)
                assert view.result == "mismatch"
                assert view.order_status == "on-hold"
                injected = True
                continue
            if action == "step":
                d.step()
            elif action == "advance":
                nxt = d.product.next_stage(d.order.stage)
                if nxt:
                    d.advance(nxt.code)
            elif action == "verify" and _due(d):
                cp = _due(d)[0]
                d.verify(cp, step=d.product.processing_steps[0] if cp == "processing-step" else None)
            elif action == "operator-release":
                for hold in _open_holds(store, d.order.id):
                    with pytest.raises(Forbidden):
                        d.run(
                            lambda w, h=hold: OrderService(w, partners).release_hold(
                                ReleaseHold(
                                    order_id=d.order.id,
                                    hold_id=h,
                                    rationale="operator tries to release",
                                    signer=SignerCredentials(username=OPERATOR[0], password=OPERATOR[1]),
                                )
                            )
                        )
        except HubError:
            pass
        d.order = d.run(lambda w: _view(w, d.order.id))
    if inject and not injected:
        # The mismatch is injected at the latest when the next checkpoint comes due.
        while not _due(d) and d.order.stage != "administered":
            d.step()
        if d.order.stage != "administered":
            cp = _due(d)[0]
            d.verify(
                cp, other.order.coi_barcode, step=d.product.processing_steps[0] if cp == "processing-step" else None
            )
            injected = True
    # Now try as hard as possible to finish the journey.
    for _ in range(len(d.product.stages) + 2):
        with contextlib.suppress(HubError):
            d.step()
    d.order = d.run(lambda w: _view(w, d.order.id))
    if injected:
        assert d.order.stage != "administered", "an order with an identity mismatch reached administration"
        assert d.order.status == "on-hold"
    return d


def _view(work, order_id):  # type: ignore[no-untyped-def]
    from hub.orders.repository import OrderRepository
    from hub.orders.service import view

    return view(OrderRepository.from_session(work.session).get(order_id))


def _open_holds(store: Store, order_id: str) -> list[str]:
    with store.write_engine.connect() as conn:
        return [
            r[0]
            for r in conn.execute(
                text("SELECT id FROM order_hold WHERE order_id = :o AND released_at IS NULL"), {"o": order_id}
            )
        ]


def _every_transition_was_verified(store: Store, d: Driver) -> None:
    with store.write_engine.connect() as conn:
        transitions = conn.execute(
            text("SELECT seq, to_stage FROM stage_transition WHERE order_id = :o ORDER BY seq"), {"o": d.order.id}
        ).all()
        for (prev_seq, _), (seq, stage) in itertools.pairwise(transitions):
            for cp in d.product.stage(stage).checkpoints:
                n = conn.execute(
                    text(
                        "SELECT count(*) FROM identity_verification WHERE order_id = :o AND checkpoint = :c "
                        "AND result = 'match' AND seq > :lo AND seq < :hi"
                    ),
                    {"o": d.order.id, "c": cp.value, "lo": prev_seq, "hi": seq},
                ).scalar_one()
                assert n >= 1, f"entered {stage} without a {cp.value} verification"


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(
    product=st.sampled_from(["car-t-fresh", "car-t-cryo"]),
    actions=st.lists(st.sampled_from(ACTIONS), min_size=1, max_size=40),
)
def test_mismatch_never_reaches_administered(
    store: Store, partners: PartnerDirectory, product: str, actions: list[str]
) -> None:
    d = _run(store, partners, product, actions, inject=True)
    _every_transition_was_verified(store, d)


@settings(
    max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(
    product=st.sampled_from(["car-t-fresh", "car-t-cryo"]),
    actions=st.lists(st.sampled_from(["step", "advance", "verify"]), max_size=20),
)
def test_without_mismatch_the_journey_completes(
    store: Store, partners: PartnerDirectory, product: str, actions: list[str]
) -> None:
    d = _run(store, partners, product, actions, inject=False)
    assert d.order.stage == "administered"
    _every_transition_was_verified(store, d)
