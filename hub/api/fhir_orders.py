"""A partner's ServiceRequest becomes a therapy order through the same command every adapter
uses (``OrderService.place`` with a ``PlaceOrder``).

How a FHIR order names its parts:

* **placer number** — the identifier typed ``PLAC`` (v2-0203): the hospital's order number;
* **product** — ``code`` from the ``therapy-product`` ValueSet (``conformance/``);
* **patient** — ``subject``: a contained Patient (``#p1``), a Patient in the same transaction
  Bundle (``urn:uuid:…``), a conditional reference (``Patient?identifier=system|value``) or an
  existing Patient the partner can see; the hub finds the patient by MRN (never merging a
  different person: a known MRN with another name or birth date is refused);
* **requester** — a Practitioner, named the same ways;
* **sites** — one ``cgt-site`` extension per role (``collection``, ``manufacturing``,
  ``treatment``, ``lab``, ``courier``) naming the partner by identifier
  (``https://cgt-hub.org/fhir/NamingSystem/partner|<partner id>``) or by its Organization
  (``Organization/org-<partner id>``). A ``performer`` Organization of a manufacturing-site partner
  names the manufacturing site. Roles left out come from the ordering partner's profile
  (``smart.order_defaults``); collection and treatment default to the ordering partner itself when
  it can play those roles. A site that cannot be determined is a validation error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hub.api.commands import command
from hub.api.conformance import SITE_EXTENSION
from hub.api.smart_schemas import SmartClientSettings
from hub.errors import Issue, ValidationFailed
from hub.orders.fhir import PARTNER_SYSTEM, PRODUCT_SYSTEM
from hub.orders.schemas import PlaceOrder, Sites
from hub.partners.loader import PartnerDirectory
from hub.partners.schemas import PartnerKind

PLACER_TYPE = ("http://terminology.hl7.org/CodeSystem/v2-0203", "PLAC")
ROLES = ("collection", "manufacturing", "treatment", "lab", "courier")


@dataclass(frozen=True)
class OrderParts:
    patient: dict[str, Any]
    requester: dict[str, Any]


def placer_number(sr: dict[str, Any]) -> str | None:
    for ident in sr.get("identifier") or []:
        codings = ((ident.get("type") or {}).get("coding")) or []
        if any((c.get("system"), c.get("code")) == PLACER_TYPE for c in codings) and ident.get("value"):
            return str(ident["value"])
    return None


def product_code(sr: dict[str, Any]) -> str | None:
    for coding in (sr.get("code") or {}).get("coding") or []:
        if coding.get("system") == PRODUCT_SYSTEM and coding.get("code"):
            return str(coding["code"])
    return None


def _partner_of(value: dict[str, Any], key: str) -> str | None:
    if key == "valueIdentifier" and value.get("system") == PARTNER_SYSTEM:
        return str(value.get("value") or "") or None
    if key == "valueReference":
        ref = str(value.get("reference") or "")
        if ref.startswith("Organization/org-"):
            return ref.removeprefix("Organization/org-")
        ident = value.get("identifier") or {}
        if ident.get("system") == PARTNER_SYSTEM:
            return str(ident.get("value") or "") or None
    return None


def named_sites(sr: dict[str, Any], partners: PartnerDirectory) -> tuple[dict[str, str], list[Issue]]:
    sites: dict[str, str] = {}
    issues: list[Issue] = []
    for index, ext in enumerate(sr.get("extension") or []):
        if ext.get("url") != SITE_EXTENSION:
            continue
        role = partner = None
        for sub in ext.get("extension") or []:
            if sub.get("url") == "role":
                role = sub.get("valueCode")
            elif sub.get("url") == "partner":
                for key in ("valueIdentifier", "valueReference"):
                    if isinstance(sub.get(key), dict):
                        partner = _partner_of(sub[key], key)
        where = f"ServiceRequest.extension[{index}]"
        if role not in ROLES:
            issues.append(Issue(f"site role {role!r} is not one of {', '.join(ROLES)}", where))
        elif partner is None:
            issues.append(Issue(f"the {role} site names no partner (identifier {PARTNER_SYSTEM}|<id>)", where))
        else:
            sites[role] = partner
    for index, perf in enumerate(sr.get("performer") or []):
        partner = _partner_of(perf, "valueReference") if isinstance(perf, dict) else None
        profile = partners.get(partner) if partner else None
        if profile is not None and profile.kind is PartnerKind.manufacturing_site:
            sites.setdefault("manufacturing", profile.id)
        elif partner is not None and profile is None:
            issues.append(Issue(f"performer {partner!r} is not a known partner", f"ServiceRequest.performer[{index}]"))
    return sites, issues


def resolve_sites(
    sr: dict[str, Any], ordering: str, partners: PartnerDirectory, smart: SmartClientSettings | None
) -> Sites:
    sites, issues = named_sites(sr, partners)
    defaults = smart.order_defaults if smart else None
    me = partners.get(ordering)
    for role in ROLES:
        if role in sites:
            continue
        default = getattr(defaults, role, None) if defaults else None
        if default:
            sites[role] = default
        elif role in ("collection", "treatment") and me is not None and me.can_play(role):
            sites[role] = ordering
    for role in ("collection", "manufacturing", "treatment"):
        if role not in sites:
            issues.append(
                Issue(
                    f"the {role} site is not named: add a {SITE_EXTENSION} extension (role {role}) "
                    "or set order_defaults in the partner profile",
                    "ServiceRequest.extension",
                )
            )
    if issues:
        raise ValidationFailed("the therapy order's sites are not complete", issues)
    return Sites(**sites)


def place_command(
    sr: dict[str, Any],
    parts: OrderParts,
    *,
    ordering: str,
    partners: PartnerDirectory,
    smart: SmartClientSettings | None,
) -> PlaceOrder:
    placer = placer_number(sr)
    product = product_code(sr)
    issues = []
    if placer is None:
        issues.append(Issue("the placer order number (identifier typed PLAC) is missing", "ServiceRequest.identifier"))
    if product is None:
        issues.append(Issue("the therapy product (code) is missing", "ServiceRequest.code"))
    if issues:
        raise ValidationFailed("the therapy order is incomplete", issues)
    assert placer is not None
    assert product is not None
    sites = resolve_sites(sr, ordering, partners, smart)
    body = dict(sr)
    # A contained Patient/Practitioner becomes a resource of its own; it leaves the order.
    body["contained"] = [
        c for c in sr.get("contained") or [] if c.get("resourceType") not in ("Patient", "Practitioner")
    ]
    if not body["contained"]:
        body.pop("contained")
    body.pop("performer", None)
    # Through command(): a value out of the command's bounds (a placer number over 128 characters)
    # is the partner's mistake, a 422 naming it, never a 500.
    return command(
        PlaceOrder,
        where={"placer_number": "ServiceRequest.identifier", "product_code": "ServiceRequest.code"},
        ordering_partner=ordering,
        placer_number=placer,
        product_code=product,
        patient={k: v for k, v in parts.patient.items() if k not in ("id", "meta")},
        requester={k: v for k, v in parts.requester.items() if k not in ("id", "meta")},
        service_request=body,
        sites=sites,
    )
