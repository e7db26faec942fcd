"""Partner isolation: a partner's token reaches only the orders it takes part in.

A resource is visible to a partner when it is

* a ServiceRequest (order) with the partner among its participants (``order_participant``: the
  ordering hospital, the collection, manufacturing, treatment sites, the lab, the courier);
* the Patient of such an order, the requesting Practitioner, the Organizations of its sites (and
  the partner's own Organization);
* linked to such an order by ``basedOn``/``request``/``target``/``focus`` (Tasks, Observations,
  DiagnosticReports, Specimens, products, Provenance), or a Device of a visible patient;
* or created by the partner through this API (``fhir_resource_owner``).

Anything else answers 404, exactly as if it did not exist. The rule is one SQL predicate per type
(below); on PostgreSQL the same rule is also enforced by row-level security for partner reads
(``cgthub_partner_sees`` in migration 0003, applied under ``SET LOCAL ROLE cgthub_partner``).
Partner writes are checked by the application: a partner may update only what it can see, and may
not point a reference at anything it cannot see (that would write into another partner's order).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from typing import Any

from sqlalchemy import ColumnElement, exists, false, func, literal, select, text, true, union_all
from sqlalchemy.orm import Session

from hub.api.auth import Principal
from hub.db.models import OrderParticipant, Resource, SearchReference, TherapyOrder
from hub.db.models_fhirapi import ResourceOwner
from hub.errors import Issue, NotFound, ValidationFailed
from hub.fhirstore.validation import SUPPORTED_TYPES

log = logging.getLogger(__name__)

# search_reference.param values (element names) that put a resource in an order's compartment.
ORDER_LINKS = ("basedOn", "request", "target", "focus")
PARTNER_ROLE = "cgthub_partner"
_REF_ANY_CASE = re.compile(r"^([A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(/_history/[A-Za-z0-9\-.]{1,64})?$")
_TYPES_BY_LOWER = {t.lower(): t for t in SUPPORTED_TYPES}


def _starts_with(column: Any, prefix: str) -> ColumnElement[bool]:
    """A case-sensitive prefix test. Not LIKE: SQLite's LIKE ignores ASCII case, so a stored
    ``servicerequest/<id>`` reference would pass ``LIKE 'ServiceRequest/%'`` and put a resource
    into another partner's order. (PostgreSQL's LIKE is case-sensitive; the row-level security
    policies of migration 0003 rely on that.)"""
    return func.substr(column, 1, len(prefix)) == prefix


def _takes_part(partner_id: str, order_id: Any) -> Any:
    """Correlated: one primary-key probe per row, however many orders the partner has."""
    return select(literal(1)).where(OrderParticipant.order_id == order_id, OrderParticipant.partner_id == partner_id)


def visible(partner_id: str, rtype: str, type_col: Any, id_col: Any) -> ColumnElement[bool]:
    """SQL condition: the row (``type_col``, ``id_col``) of type ``rtype`` is visible to the partner.

    One EXISTS over a UNION ALL of correlated probes (not an OR of sub-queries: PostgreSQL turns
    those into hashed sub-plans over all of a partner's orders, which grows with the store)."""
    one = literal(1)
    probes: list[Any] = [
        select(one).where(
            ResourceOwner.resource_type == type_col,
            ResourceOwner.resource_id == id_col,
            ResourceOwner.partner_id == partner_id,
        )
    ]
    if rtype == "ServiceRequest":
        probes.append(_takes_part(partner_id, id_col))
    elif rtype == "Patient":
        probes.append(
            select(one)
            .select_from(TherapyOrder)
            .join(OrderParticipant, OrderParticipant.order_id == TherapyOrder.id)
            .where(TherapyOrder.patient_id == id_col, OrderParticipant.partner_id == partner_id)
        )
    elif rtype == "Organization":
        other = OrderParticipant.__table__.alias("other")
        probes.append(select(one).where(id_col == f"org-{partner_id}"))
        probes.append(
            select(one)
            .select_from(other)
            .join(OrderParticipant, OrderParticipant.order_id == other.c.order_id)
            .where(
                _starts_with(id_col, "org-"),
                other.c.partner_id == func.substr(id_col, 5),
                OrderParticipant.partner_id == partner_id,
            )
        )
    elif rtype == "Practitioner":
        probes.append(
            select(one)
            .select_from(SearchReference)
            .join(OrderParticipant, OrderParticipant.order_id == SearchReference.id)
            .where(
                SearchReference.resource_type == "ServiceRequest",
                SearchReference.param == "requester",
                SearchReference.target == literal("Practitioner/") + id_col,
                OrderParticipant.partner_id == partner_id,
            )
        )
    elif rtype == "Device":
        probes.append(
            select(one)
            .select_from(SearchReference)
            .join(TherapyOrder, TherapyOrder.patient_id == func.substr(SearchReference.target, len("Patient/") + 1))
            .join(OrderParticipant, OrderParticipant.order_id == TherapyOrder.id)
            .where(
                SearchReference.resource_type == type_col,
                SearchReference.id == id_col,
                SearchReference.param == "patient",
                _starts_with(SearchReference.target, "Patient/"),
                OrderParticipant.partner_id == partner_id,
            )
        )
    if rtype not in ("Patient", "Organization", "Practitioner", "ServiceRequest"):
        probes.append(
            select(one)
            .select_from(SearchReference)
            .join(
                OrderParticipant,
                OrderParticipant.order_id == func.substr(SearchReference.target, len("ServiceRequest/") + 1),
            )
            .where(
                SearchReference.resource_type == type_col,
                SearchReference.id == id_col,
                SearchReference.param.in_(ORDER_LINKS),
                _starts_with(SearchReference.target, "ServiceRequest/"),
                OrderParticipant.partner_id == partner_id,
            )
        )
    return exists(union_all(*probes)) if len(probes) > 1 else exists(probes[0])


def visible_condition(
    principal: Principal, rtype: str, type_col: Any = None, id_col: Any = None
) -> ColumnElement[bool]:
    if principal.is_operator:
        return true()
    assert principal.partner_id is not None
    if rtype not in SUPPORTED_TYPES:
        return false()
    return visible(
        principal.partner_id,
        rtype,
        Resource.resource_type if type_col is None else type_col,
        Resource.id if id_col is None else id_col,
    )


def visible_ids(session: Session, principal: Principal, rtype: str, ids: list[str]) -> set[str]:
    if principal.is_operator or not ids:
        return set(ids)
    rows = session.execute(
        select(Resource.id).where(
            Resource.resource_type == rtype,
            Resource.id.in_(ids),
            visible_condition(principal, rtype),
        )
    ).scalars()
    return set(rows)


def require_visible(session: Session, principal: Principal, rtype: str, rid: str) -> None:
    """404 unless the partner may see ``rtype/rid`` (operators see everything)."""
    if principal.is_operator:
        return
    if rid not in visible_ids(session, principal, rtype, [rid]):
        raise NotFound(f"{rtype}/{rid} is not known")


def references(value: Any) -> Iterator[str]:
    """Every ``reference`` string inside a resource (contained resources included)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "reference" and isinstance(item, str):
                yield item
            else:
                yield from references(item)
    elif isinstance(value, list):
        for item in value:
            yield from references(item)


def literal_refs(resource: dict[str, Any]) -> dict[str, set[str]]:
    """Relative literal references ``Type/id`` to types this hub stores, grouped by type.

    A reference whose type is one of those in other letter case (``servicerequest/…``) is refused:
    FHIR resource type names are case-sensitive, so it names no resource, and a database that
    compares text without case could still link it to the resource it spells."""
    out: dict[str, set[str]] = {}
    for ref in references(resource):
        m = _REF_ANY_CASE.match(ref)
        if m is None:
            continue
        rtype = m.group(1)
        if rtype in SUPPORTED_TYPES:
            out.setdefault(rtype, set()).add(m.group(2))
        elif (proper := _TYPES_BY_LOWER.get(rtype.lower())) is not None:
            message = f"reference {ref!r}: resource type names are case-sensitive; did you mean {proper}?"
            raise ValidationFailed(message, [Issue(message, "reference")])
    return out


def require_references_visible(
    session: Session, principal: Principal, resource: dict[str, Any], pending: set[tuple[str, str]] | None = None
) -> None:
    """A partner may reference only what it can see (or what the same request creates). The
    letter case of every reference's type is checked for operators too (see literal_refs)."""
    refs = literal_refs(resource)
    if principal.is_operator:
        return
    for rtype, ids in refs.items():
        wanted = [i for i in ids if not pending or (rtype, i) not in pending]
        missing = set(wanted) - visible_ids(session, principal, rtype, wanted)
        if missing:
            raise NotFound(f"{rtype}/{sorted(missing)[0]} (referenced) is not known")


# --------------------------------------------------------------------------- PostgreSQL RLS
_rls_ok: dict[str, bool] = {}


def rls_available(session: Session) -> bool:
    """Whether this database has the partner role and policies (migration 0003 on PostgreSQL) and
    our login may switch to it. Checked once per database URL."""
    bind = session.get_bind()
    if bind.dialect.name != "postgresql":
        return False
    key = str(bind.engine.url)
    if key not in _rls_ok:
        row = session.execute(
            text("SELECT pg_has_role(current_user, :r, 'MEMBER') FROM pg_roles WHERE rolname = :r"),
            {"r": PARTNER_ROLE},
        ).first()
        _rls_ok[key] = bool(row and row[0])
        if not _rls_ok[key]:
            log.warning("row-level security for partner reads is not available (role %s missing)", PARTNER_ROLE)
    return _rls_ok[key]


def enter_partner_scope(session: Session, principal: Principal) -> bool:
    """For a partner's read-only session on PostgreSQL: switch to the non-owner role so the
    row-level security policies apply too. Ends with the session's transaction."""
    if principal.is_operator or not rls_available(session):
        return False
    session.execute(text(f"SET LOCAL ROLE {PARTNER_ROLE}"))
    session.execute(text("SELECT set_config('cgthub.partner', :p, true)"), {"p": principal.partner_id})
    return True
