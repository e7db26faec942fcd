"""Tables for collection scheduling (appointments the collection site books for an order)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from hub.db.models import Base
from hub.db.types import UTCDateTime


class CollectionAppointment(Base):
    """One apheresis collection appointment, as the booking partner identifies it."""

    __tablename__ = "collection_appointment"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    order_id: Mapped[str] = mapped_column(ForeignKey("therapy_order.id"))
    partner: Mapped[str] = mapped_column(String(64))
    appointment_id: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16))  # booked | cancelled
    start: Mapped[datetime] = mapped_column(UTCDateTime)
    end: Mapped[datetime | None] = mapped_column(UTCDateTime)
    location: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    __table_args__ = (
        UniqueConstraint("partner", "appointment_id"),
        Index("ix_collection_appointment_order", "order_id", "status"),
    )
