"""An order's journey as one ordered list of events, for people (CLI, demo, portal)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo

from sqlalchemy.orm import Session

from hub import canonical
from hub.orders.repository import OrderRepository
from hub.orders.service import coi_of
from hub.products.registry import get_product
from hub.signatures.service import check_signature, signatures_for


@dataclass(frozen=True)
class Entry:
    seq: int
    at: datetime
    kind: str
    text: str
    ok: bool = True


@dataclass(frozen=True)
class Timeline:
    order_id: str
    coi: str
    coi_eye_readable: str
    product: str
    stage: str
    status: str
    timezone: str
    viability_deadline: datetime | None
    entries: list[Entry]
    notes: list[str] = field(default_factory=list)  # extra header lines (e.g. the viability countdown)


def build(session: Session, key: str) -> Timeline | None:
    repo = OrderRepository.from_session(session)
    order = repo.find(key)
    if order is None:
        return None
    product = get_product(order.product_code)
    names = {s.code: s.name for s in product.stages}
    entries: list[Entry] = []
    for t in repo.transitions(order.id):
        entries.append(
            Entry(t.seq, t.at, "stage", f"→ {names.get(t.to_stage, t.to_stage)} [{t.to_stage}]  by {t.actor}")
        )
    for v in repo.verifications(order.id):
        step = f" ({v.step})" if v.step else ""
        expected = canonical.loads(v.expected)
        scanned = canonical.loads(v.scanned)
        detail = f"scanned CoI {', '.join(scanned.get('coi') or ['-'])} expected {expected.get('coi')}"
        if "patient" in expected:
            detail += "; patient wristband " + ("matched" if v.result == "match" else "checked")
        who = v.operator + (f" + {v.second_person}" if v.second_person else "")
        entries.append(
            Entry(
                v.seq,
                v.occurred_at,
                "identity",
                f"ID {v.checkpoint}{step}: {v.result.upper()}  {detail}  [{v.method}"
                f"{', ' + v.device if v.device else ''}; {who}; local {v.local_time}]"
                + (f"  reason: {v.reason}" if v.reason else ""),
                ok=v.result == "match",
            )
        )
    for h in repo.handoffs(order.id):
        entries.append(
            Entry(
                h.seq,
                h.at,
                "custody",
                f"custody of {h.material}: {h.from_party} → {h.to_party}" + (f" at {h.location}" if h.location else ""),
            )
        )
    for hold in repo.holds(order.id):
        entries.append(Entry(0, hold.opened_at, "hold", f"HOLD {hold.kind} ({hold.id}): {hold.reason}", ok=False))
        if hold.released_at is not None:
            entries.append(
                Entry(
                    0, hold.released_at, "hold", f"hold {hold.id} released by {hold.released_by}: {hold.release_reason}"
                )
            )
    for r in repo.current_results(order.id):
        entries.append(
            Entry(
                0,
                r.recorded_at,
                "result",
                f"result {r.test_code} = {r.value}{' ' + r.unit if r.unit else ''}"
                f"  {'in spec' if r.in_spec else 'OUT OF SPEC'}",
                ok=r.in_spec,
            )
        )
    for record_type, record_id in (("DiagnosticReport", f"{order.id}-release"), ("ServiceRequest", order.id)):
        for sig in signatures_for(session, record_type, record_id):
            check = check_signature(session, sig)
            entries.append(
                Entry(
                    0,
                    datetime.fromisoformat(sig.signed_at.replace("Z", "+00:00")),
                    "signature",
                    f"signed '{sig.meaning}' by {sig.printed_name} on {record_type} v{sig.record_version}"
                    f" ({'valid' if check.valid else 'INVALID: ' + check.reason})",
                    ok=check.valid,
                )
            )
    from hub.db.types import utcnow
    from hub.logistics import timeline as logistics

    for at, kind, text, ok in logistics.for_order(session, order):
        entries.append(Entry(0, at, kind, text, ok=ok))
    countdown = logistics.countdown_line(session, order, utcnow())
    entries.sort(key=lambda e: (e.at, e.seq))
    coi = coi_of(order)
    return Timeline(
        order.id,
        coi.data,
        coi.eye_readable,
        f"{product.name} ({product.code} v{order.product_version})",
        order.stage,
        order.status,
        order.timezone,
        order.viability_deadline,
        entries,
        [countdown] if countdown else [],
    )


def render(tl: Timeline, *, color: bool = False) -> str:
    zone = ZoneInfo(tl.timezone)
    red = "\033[31m" if color else ""
    green = "\033[32m" if color else ""
    reset = "\033[0m" if color else ""
    lines = [
        f"Order {tl.order_id}",
        f"  CoI {tl.coi_eye_readable}   (barcode &/{tl.coi})",
        f"  Product {tl.product}",
        f"  Stage {tl.stage}   Status {tl.status.upper()}",
    ]
    if tl.viability_deadline is not None:
        lines.append(f"  Viability window closes {tl.viability_deadline:%Y-%m-%d %H:%M} UTC")
    lines += tl.notes
    lines.append("")
    for e in tl.entries:
        mark = f"{green}✓{reset}" if e.ok else f"{red}✗{reset}"
        local = e.at.astimezone(zone)
        lines.append(f"  {e.at:%Y-%m-%d %H:%M:%S}Z ({local:%H:%M %Z})  {mark} {e.kind:<9} {e.text}")
    return "\n".join(lines)
