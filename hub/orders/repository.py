"""All queries on the order's journey tables."""

from __future__ import annotations

import threading
from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import Engine, bindparam, func, select, text, update
from sqlalchemy.orm import Session

from hub.db.bulk import insert_tables
from hub.db.models import (
    CoiSequence,
    CustodyHandoff,
    IdentityVerification,
    OrderHold,
    OrderParticipant,
    QcResult,
    StageTransition,
    TherapyOrder,
    table_of,
)
from hub.errors import NotFound
from hub.identity.isbt128 import check_character, looks_like_coi

_ORDERS = table_of(TherapyOrder)
_BY_PLACER = select(_ORDERS.c.id).where(
    _ORDERS.c.ordering_partner == bindparam("p"), _ORDERS.c.placer_number == bindparam("n")
)
_COI = table_of(CoiSequence)
_PARTICIPANTS = table_of(OrderParticipant)
_TRANSITIONS = table_of(StageTransition)
_ENSURE_COI = text(
    "INSERT INTO coi_sequence (fin, year, next_value) VALUES (:f, :y, 1) ON CONFLICT (fin, year) DO NOTHING"
)
_TAKE_COI = (
    _COI.update()
    .where(_COI.c.fin == bindparam("f"), _COI.c.year == bindparam("y"))
    .values(next_value=_COI.c.next_value + bindparam("n"))
    .returning(_COI.c.next_value)
)


class CoiBlocks:
    """Per-engine reservations of CoI sequence numbers (PostgreSQL)."""

    BLOCK = 64
    _registry: ClassVar[dict[int, CoiBlocks]] = {}
    _registry_lock = threading.Lock()

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._lock = threading.Lock()
        self._blocks: dict[tuple[str, str], tuple[int, int]] = {}  # (fin, year) -> (next, end)

    @classmethod
    def for_engine(cls, engine: Engine) -> CoiBlocks:
        with cls._registry_lock:
            found = cls._registry.get(id(engine))
            if found is None or found.engine is not engine:
                found = cls._registry[id(engine)] = cls(engine)
            return found

    def take(self, fin: str, year: str) -> int:
        with self._lock:
            nxt, end = self._blocks.get((fin, year), (0, 0))
            if nxt >= end:
                with self.engine.begin() as conn:
                    conn.execute(_ENSURE_COI, {"f": fin, "y": year})
                    end = int(conn.execute(_TAKE_COI, {"f": fin, "y": year, "n": self.BLOCK}).scalar_one())
                nxt = end - self.BLOCK
            self._blocks[(fin, year)] = (nxt + 1, end)
            return nxt


class OrderRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    @classmethod
    def from_session(cls, session: Session) -> OrderRepository:
        return cls(session)

    # ------------------------------------------------------------------ orders
    def get(self, order_id: str, *, for_update: bool = False) -> TherapyOrder:
        stmt = select(TherapyOrder).where(TherapyOrder.id == order_id)
        if for_update:
            stmt = stmt.with_for_update()
        order = self.session.execute(stmt).scalar_one_or_none()
        if order is None:
            raise NotFound(f"therapy order {order_id} is not known")
        return order

    def find(self, key: str) -> TherapyOrder | None:
        """By id, or by CoI (data content, barcode or eye-readable form). A CoI given with its
        check character must carry the right one: a miskeyed CoI names no order."""
        normal = key.strip().upper().replace(" ", "").removeprefix("&/")
        if len(normal) == 16 and looks_like_coi(normal) and normal[15] != check_character(normal[:15]):
            return None
        return self.session.execute(
            select(TherapyOrder).where(
                (TherapyOrder.id == key) | (TherapyOrder.coi == normal) | (TherapyOrder.coi == normal[:15])
            )
        ).scalar_one_or_none()

    def by_placer(self, partner: str, placer_number: str) -> str | None:
        """The id of the order this partner placed under this number, if any."""
        return self.session.connection().execute(_BY_PLACER, {"p": partner, "n": placer_number}).scalar_one_or_none()

    def add_new(
        self, order: TherapyOrder, participants: set[tuple[str, str]], first_transition: dict[str, Any]
    ) -> None:
        """Insert a new order with its participants and its first stage transition.

        One statement on PostgreSQL (bulk.insert_tables: data-modifying CTEs), the driver's
        executemany on SQLite, instead of three SQLAlchemy executions: ~0.1–0.2 ms of Python per
        execution saved on every order placed (see bench/README.md). The rows are written now, not
        at the end of the job, so the rest of the job reads them like any other row; the order
        object stays transient and is used only to build views."""
        insert_tables(
            self.session,
            [
                (_ORDERS, [{c.name: getattr(order, c.name) for c in _ORDERS.columns}]),
                (_PARTICIPANTS, [{"order_id": order.id, "partner_id": p, "role": r} for p, r in sorted(participants)]),
                (_TRANSITIONS, [first_transition]),
            ],
        )

    def participants(self, order_id: str) -> list[tuple[str, str]]:
        rows = self.session.execute(
            select(OrderParticipant.partner_id, OrderParticipant.role).where(OrderParticipant.order_id == order_id)
        )
        return [(r.partner_id, r.role) for r in rows]

    def order_ids_for_partner(self, partner_id: str) -> list[str]:
        return list(
            self.session.scalars(
                select(OrderParticipant.order_id).where(OrderParticipant.partner_id == partner_id).distinct()
            )
        )

    def next_coi_number(self, fin: str, year: str) -> int:
        """Take the next sequence number for this facility and year.

        SQLite (one writer): inside the transaction, gap-free. PostgreSQL (many writers): from a
        block reserved in its own short transaction, so concurrent transactions never queue on the
        sequence row; numbers stay unique and rising per process, and a process that stops leaves
        the rest of its block unused (a gap, never a duplicate)."""
        conn = self.session.connection()
        if conn.dialect.name == "postgresql":
            return CoiBlocks.for_engine(conn.engine).take(fin, year)
        number = conn.execute(_TAKE_COI, {"f": fin, "y": year, "n": 1}).scalar_one_or_none()
        if number is None:
            first = {"fin": fin, "year": year, "next_value": 2}
            conn.execute(table_of(CoiSequence).insert(), [first])
            return 1
        return int(number) - 1

    # ------------------------------------------------------------------ journey
    def add_transition(self, **values: Any) -> None:
        self.session.connection().execute(_TRANSITIONS.insert(), [values])

    def last_transition_at(self, order_id: str) -> datetime | None:
        """When the order's latest stage change happened, as reported."""
        return self.session.execute(
            select(func.max(StageTransition.at)).where(StageTransition.order_id == order_id)
        ).scalar_one_or_none()

    def transitions(self, order_id: str) -> list[StageTransition]:
        return list(
            self.session.scalars(
                select(StageTransition).where(StageTransition.order_id == order_id).order_by(StageTransition.seq)
            )
        )

    def add_hold(self, hold: OrderHold) -> None:
        self.session.add(hold)
        self.session.flush()

    def hold(self, hold_id: str, order_id: str) -> OrderHold:
        hold = self.session.execute(
            select(OrderHold).where(OrderHold.id == hold_id, OrderHold.order_id == order_id).with_for_update()
        ).scalar_one_or_none()
        if hold is None:
            raise NotFound(f"hold {hold_id} is not on order {order_id}")
        return hold

    def holds(self, order_id: str) -> list[OrderHold]:
        return list(
            self.session.scalars(select(OrderHold).where(OrderHold.order_id == order_id).order_by(OrderHold.opened_at))
        )

    def open_holds(self, order_id: str) -> list[OrderHold]:
        return [h for h in self.holds(order_id) if h.released_at is None]

    # ------------------------------------------------------------------ identity and custody
    def add_verification(self, **values: Any) -> None:
        self.session.connection().execute(table_of(IdentityVerification).insert(), [values])

    def matched_since(self, order_id: str, checkpoint: str, after_seq: int) -> list[IdentityVerification]:
        return list(
            self.session.scalars(
                select(IdentityVerification).where(
                    IdentityVerification.order_id == order_id,
                    IdentityVerification.checkpoint == checkpoint,
                    IdentityVerification.result == "match",
                    IdentityVerification.seq > after_seq,
                )
            )
        )

    def verifications(self, order_id: str) -> list[IdentityVerification]:
        return list(
            self.session.scalars(
                select(IdentityVerification)
                .where(IdentityVerification.order_id == order_id)
                .order_by(IdentityVerification.seq)
            )
        )

    def add_handoff(self, **values: Any) -> None:
        self.session.connection().execute(table_of(CustodyHandoff).insert(), [values])

    def handoffs(self, order_id: str) -> list[CustodyHandoff]:
        return list(
            self.session.scalars(
                select(CustodyHandoff).where(CustodyHandoff.order_id == order_id).order_by(CustodyHandoff.seq)
            )
        )

    # ------------------------------------------------------------------ results
    def supersede_results(self, order_id: str, test_code: str) -> None:
        self.session.execute(
            update(QcResult)
            .where(QcResult.order_id == order_id, QcResult.test_code == test_code, QcResult.superseded.is_(False))
            .values(superseded=True)
        )

    def add_result(self, **values: Any) -> None:
        self.session.connection().execute(table_of(QcResult).insert(), [values])

    def current_results(self, order_id: str) -> list[QcResult]:
        return list(
            self.session.scalars(
                select(QcResult)
                .where(QcResult.order_id == order_id, QcResult.superseded.is_(False))
                .order_by(QcResult.test_code)
            )
        )

    def count_orders(self) -> int:
        return int(self.session.execute(select(func.count()).select_from(TherapyOrder)).scalar_one())
