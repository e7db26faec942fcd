"""FHIR write interactions as jobs of one unit of work: create (plain and conditional), update
(If-Match), order placement, transaction and batch Bundles.

Rules that are not plain REST:

* A ServiceRequest POSTed by a partner is a **therapy order**: it must conform to the
  cgt-therapy-order profile and goes through ``OrderService.place`` (CoI assigned, journey Tasks
  created, participants recorded, ``order.accepted`` emitted). Hub operators may store other
  ServiceRequests as plain resources (reference data, migrations, the R4 examples).
* The order and its journey Tasks change only through the hub's commands. Over FHIR the ordering
  partner may cancel its order (PUT the ServiceRequest with ``status: revoked``, nothing else
  changed → ``OrderService.cancel``); anything else on them is refused.
* A partner updates only resources it created through this API.
* Conditional create (If-None-Exist) is race-safe by the primary key of ``fhir_conditional_key``
  (scope, type, normalised criteria): of concurrent identical requests one inserts the key and
  creates; the others hit the key, wait for that transaction, and answer with the resource it made.
  For orders the unique (ordering partner, placer number) of ``therapy_order`` plays that part.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from hub import canonical
from hub.api import conformance
from hub.api.auth import Principal, smart_settings_of
from hub.api.bundle_issues import in_entry, pending_issues
from hub.api.fhir_orders import OrderParts, place_command, placer_number
from hub.api.isolation import references, require_references_visible, require_visible, visible_condition
from hub.api.subscription_channel import header_line, secret_bytes
from hub.db.models import OrderParticipant, Resource, TherapyOrder
from hub.db.models_fhirapi import ConditionalKey, ResourceOwner
from hub.db.uow import Work
from hub.errors import Conflict, Forbidden, GuardFailed, HubError, Issue, NotFound, ValidationFailed
from hub.fhirstore.repository import ResourceRepository, SearchParam, Stored, search_conditions
from hub.fhirstore.validation import SUPPORTED_TYPES
from hub.ids import uuid7
from hub.orders.repository import OrderRepository
from hub.orders.schemas import Cancel
from hub.orders.service import OrderService
from hub.partners.loader import PartnerDirectory, resolve_secret
from hub.patients import scope

READ_ONLY_TYPES = frozenset({"AuditEvent"})
WRITABLE_TYPES = tuple(t for t in SUPPORTED_TYPES if t not in READ_ONLY_TYPES)
IDENTITY_ELEMENTS = ("identifier", "name", "birthDate")
_TASK_ID = re.compile(r"^(?P<order>[0-9a-f-]{36})-s\d{2}$")
_URN = re.compile(r"^urn:(uuid|oid):\S+$")


class PreconditionFailed(HubError):
    """If-Match names another version, or a conditional request matched more than one resource."""

    def __init__(self, message: str) -> None:
        super().__init__(message, [], status=412, fhir_code="conflict", hl7_code="205")


class BadRequest(HubError):
    def __init__(self, message: str, issues: list[Issue] | None = None) -> None:
        super().__init__(message, issues or [], status=400, fhir_code="invalid", hl7_code="100")


class NotAllowed(HubError):
    def __init__(self, message: str) -> None:
        super().__init__(message, [], status=405, fhir_code="not-supported", hl7_code="207")


@dataclass
class Result:
    status: int
    stored: Stored | None = None
    body: dict[str, Any] | None = None
    order_id: str | None = None
    coi: str | None = None


def strip_server_meta(resource: dict[str, Any]) -> dict[str, Any]:
    body = dict(resource)
    if not isinstance(body.get("meta") or {}, dict):
        return body  # not a Meta: structure validation reports it
    meta = dict(body.get("meta") or {})
    for key in ("versionId", "lastUpdated", "source"):
        meta.pop(key, None)
    if meta:
        body["meta"] = meta
    else:
        body.pop("meta", None)
    return body


def for_create(resource: dict[str, Any]) -> dict[str, Any]:
    """What a create stores: the client's id and server-kept meta dropped (the server assigns)."""
    body = strip_server_meta(resource)
    body.pop("id", None)
    return body


def precheck(rtype: str, body: dict[str, Any], principal: Principal) -> list[Issue] | None:
    """The validation issues of a create's body, computed before the unit of work (pure CPU: no
    database). None when the job must validate itself (Subscriptions are changed before storing)."""
    if body.get("resourceType") != rtype or rtype == "Subscription":
        return None
    profiles = [conformance.THERAPY_ORDER] if rtype == "ServiceRequest" and not principal.is_operator else []
    return conformance.issues_for(for_create(body), profiles)


def parse_criteria(rtype: str, criteria: str) -> list[SearchParam]:
    from hub.api.fhir_search import clean_params

    pairs = clean_params(parse_qsl(criteria.lstrip("?"), keep_blank_values=True))
    if not pairs:
        raise BadRequest(f"empty criteria for {rtype}", [Issue("conditional criteria are empty", "If-None-Exist")])
    params = [SearchParam(k, v) for k, v in pairs if not k.startswith("_") or k in ("_id", "_lastUpdated")]
    if len(params) != len(pairs):
        raise BadRequest("result parameters (_count, _include, …) make no sense in conditional criteria")
    return params


def normalise_criteria(params: list[SearchParam]) -> str:
    return urlencode(sorted((p.name, p.value) for p in params))


@dataclass
class FhirService:
    work: Work
    principal: Principal
    partners: PartnerDirectory
    fin: str = "A9998"
    created: set[tuple[str, str]] = field(default_factory=set)

    @property
    def repo(self) -> ResourceRepository:
        return ResourceRepository.for_work(self.work)

    @property
    def scope(self) -> str:
        return self.principal.partner_id or "operator"

    # ------------------------------------------------------------------ search inside a job
    def matching_ids(self, rtype: str, params: list[SearchParam], limit: int = 2) -> list[str]:
        # A conditional create (If-None-Exist) or conditional reference is a search: it tells the
        # caller what matches (and a create answers with the match), so it needs the search scope.
        self.principal.require(rtype, "s")
        stmt = (
            select(Resource.id)
            .where(
                Resource.resource_type == rtype,
                Resource.deleted.is_(False),
                *search_conditions(rtype, params),
                visible_condition(self.principal, rtype),
            )
            .order_by(Resource.id)
            .limit(limit)
        )
        return list(self.work.session.execute(stmt).scalars())

    def resolve_conditional_reference(self, ref: str) -> str:
        rtype, _, query = ref.partition("?")
        if rtype not in SUPPORTED_TYPES:
            raise NotFound(f"conditional reference {rtype}?… names a type this hub does not serve")
        ids = self.matching_ids(rtype, parse_criteria(rtype, query))
        if not ids:
            raise NotFound(f"conditional reference {rtype}?{query} matches nothing")
        if len(ids) > 1:
            raise PreconditionFailed(f"conditional reference {rtype}?{query} matches more than one resource")
        return f"{rtype}/{ids[0]}"

    # ------------------------------------------------------------------ create
    def create(
        self,
        rtype: str,
        body: dict[str, Any],
        if_none_exist: str | None = None,
        *,
        prechecked: list[Issue] | None = None,
    ) -> Result:
        """``prechecked``: the issues :func:`precheck` found for this very body (computed outside
        the unit of work, so the committer thread does less)."""
        self._writable(rtype)
        self.principal.require(rtype, "c")
        if body.get("resourceType") != rtype:
            raise wrong_type(body, rtype, "the body")
        if rtype == "ServiceRequest" and not self.principal.is_operator:
            return self.place_order(body, if_none_exist, prechecked=prechecked)
        body = for_create(body)
        if rtype == "Subscription":
            body = self._subscription(body)
            prechecked = None  # the server sets its status: check what is stored
        conformance.require_valid(body, prechecked)
        require_references_visible(self.work.session, self.principal, body, self.created)
        if if_none_exist:
            params = parse_criteria(rtype, if_none_exist)
            found = self._existing(rtype, params)
            if found is not None:
                return Result(200, found)
            rid = uuid7()
            raced = self._claim(rtype, params, rid)
            if raced is not None:
                return Result(200, raced)
            return Result(201, self._create(body, rid))
        return Result(201, self._create(body, uuid7()))

    def _create(self, body: dict[str, Any], rid: str) -> Stored:
        stored = self.repo.create(self.work, body, id=rid, reason=f"FHIR create by {self.principal.actor}")
        self.created.add((stored.resource_type, stored.id))
        if self.principal.partner_id is not None:
            scope.own(self.work.session, self.principal.partner_id, stored.id, stored.resource_type)
        return stored

    def _existing(self, rtype: str, params: list[SearchParam]) -> Stored | None:
        ids = self.matching_ids(rtype, params)
        if len(ids) > 1:
            raise PreconditionFailed(f"If-None-Exist matches more than one {rtype}")
        return self.repo.read(rtype, ids[0]) if ids else None

    def _claim(self, rtype: str, params: list[SearchParam], rid: str) -> Stored | None:
        """Insert the conditional key; if a concurrent request holds it, return what it created."""
        criteria = normalise_criteria(params)
        digest = canonical.sha256_hex(criteria)
        key = (
            ConditionalKey.scope == self.scope,
            ConditionalKey.resource_type == rtype,
            ConditionalKey.criteria_hash == digest,
        )
        session = self.work.session
        try:
            with session.begin_nested():
                session.execute(
                    insert(ConditionalKey).values(
                        scope=self.scope,
                        resource_type=rtype,
                        criteria_hash=digest,
                        criteria=criteria,
                        resource_id=rid,
                        created_at=self.work.now,
                    )
                )
            return None
        except IntegrityError:
            pass
        # Someone created it first (their transaction has committed, or is ours: group commit).
        found = self._existing(rtype, params)
        if found is not None:
            return found
        # The key's resource no longer matches (its identifier changed): the key moves to ours.
        session.execute(update(ConditionalKey).where(*key).values(resource_id=rid, created_at=self.work.now))
        return None

    # ------------------------------------------------------------------ orders
    def place_order(
        self, body: dict[str, Any], if_none_exist: str | None = None, *, prechecked: list[Issue] | None = None
    ) -> Result:
        assert self.principal.partner_id is not None
        partner = self.principal.partner_id
        self.principal.require("ServiceRequest", "c")
        body = for_create(body)
        checked = prechecked if prechecked is not None else conformance.issues_for(body, [conformance.THERAPY_ORDER])
        issues = [i for i in checked if i.severity in ("error", "fatal")]
        parts: OrderParts | None = None
        try:
            parts = self._order_parts(body)
        except ValidationFailed as exc:  # what the profile already reported there is not said twice
            located = {i.location for i in issues}
            issues += [i for i in exc.issues if i.location not in located]
        if issues:
            raise ValidationFailed(f"the therapy order does not conform ({len(issues)} issue(s))", issues)
        assert parts is not None
        # subject/requester were resolved (and checked) above; the rest may point only at what
        # the partner can see.
        check = {k: v for k, v in body.items() if k not in ("subject", "requester", "contained")}
        require_references_visible(self.work.session, self.principal, check, self.created)
        if if_none_exist:
            found = self._existing("ServiceRequest", parse_criteria("ServiceRequest", if_none_exist))
            if found is not None:
                return Result(200, found)
        cmd = place_command(
            body,
            parts,
            ordering=partner,
            partners=self.partners,
            smart=smart_settings_of(self.partners, partner),
        )
        try:
            with self.work.attempt():
                view = OrderService(self.work, self.partners, fin=self.fin).place(cmd)
        except IntegrityError:
            # A concurrent request placed the same order number first (unique in therapy_order).
            existing = OrderRepository.from_session(self.work.session).by_placer(partner, cmd.placer_number)
            if existing is None or not if_none_exist:
                raise Conflict(f"order {cmd.placer_number} from {partner} already exists") from None
            return Result(200, self.repo.read("ServiceRequest", existing))
        stored = self.repo.read("ServiceRequest", view.id)
        self.created.add(("ServiceRequest", view.id))
        return Result(201, stored, order_id=view.id, coi=view.coi_eye_readable)

    def _order_parts(self, body: dict[str, Any]) -> OrderParts:
        issues: list[Issue] = []
        found: dict[str, dict[str, Any]] = {}
        for element, rtype in (("subject", "Patient"), ("requester", "Practitioner")):
            value = body.get(element) or {}
            ref = str(value.get("reference") or "") if isinstance(value, dict) else ""
            where = f"ServiceRequest.{element}"
            try:
                found[element] = self._referenced(body, ref, rtype)
            except HubError as exc:
                issues.append(Issue(f"{element}: {exc.message}", where))
        if issues:
            raise ValidationFailed("the order's patient or requester cannot be resolved", issues)
        return OrderParts(patient=found["subject"], requester=found["requester"])

    def _referenced(self, body: dict[str, Any], ref: str, rtype: str) -> dict[str, Any]:
        if not ref:
            raise ValidationFailed(f"a {rtype} reference is required")
        if ref.startswith("#"):
            for c in body.get("contained") or []:
                if isinstance(c, dict) and c.get("id") == ref[1:] and c.get("resourceType") == rtype:
                    return dict(c)
            raise ValidationFailed(f"contained {rtype} {ref} is not in the order")
        if ref.startswith(f"{rtype}?"):
            ref = self.resolve_conditional_reference(ref)
        if ref.startswith(f"{rtype}/"):
            rid = ref.split("/", 1)[1]
            if (rtype, rid) not in self.created:
                require_visible(self.work.session, self.principal, rtype, rid)
            return dict(self.repo.read(rtype, rid).content)
        raise ValidationFailed(f"{ref!r} is not a {rtype} reference this hub can resolve")

    # ------------------------------------------------------------------ update
    def update(self, rtype: str, rid: str, body: dict[str, Any], if_match: int | None = None) -> Result:
        self._writable(rtype)
        self.principal.require(rtype, "u")
        if body.get("resourceType") != rtype:
            raise wrong_type(body, rtype, "the body")
        from hub.api.fhir_search import served_id

        served_id(rtype, rid)
        if body.get("id") != rid:
            raise BadRequest("the resource's id must equal the id in the URL", [Issue("id mismatch", f"{rtype}.id")])
        require_visible(self.work.session, self.principal, rtype, rid)
        current = self.repo.read(rtype, rid)
        if if_match is not None and if_match != current.version_id:
            raise PreconditionFailed(f"{rtype}/{rid} is at version {current.version_id}, not {if_match}")
        body = strip_server_meta(body)
        if rtype == "ServiceRequest" and self._is_order(rid):
            return self._update_order(current, body)
        if rtype == "Task" and self._is_journey_task(rid):
            raise GuardFailed("journey Tasks change only through the hub's commands (identity checkpoints, stages)")
        if not self.principal.is_operator and not self._owns(rtype, rid):
            raise Forbidden(f"{rtype}/{rid} is maintained by the hub or another partner; it cannot be changed here")
        if rtype == "Patient":
            self._identity_lock(current, body)
        if rtype == "Subscription":
            body = self._subscription(body)
        conformance.require_valid(body)
        require_references_visible(self.work.session, self.principal, body, self.created)
        try:
            stored = self.repo.update(
                self.work, body, if_match=current.version_id, reason=f"FHIR update by {self.principal.actor}"
            )
        except Conflict as exc:
            raise PreconditionFailed(exc.message) from None
        return Result(200, stored)

    def _is_order(self, rid: str) -> bool:
        return self.work.session.get(TherapyOrder, rid) is not None

    def _is_journey_task(self, rid: str) -> bool:
        m = _TASK_ID.match(rid)
        return m is not None and self._is_order(m.group("order"))

    def _owns(self, rtype: str, rid: str) -> bool:
        return (
            self.work.session.execute(
                select(ResourceOwner.partner_id).where(
                    ResourceOwner.resource_type == rtype,
                    ResourceOwner.resource_id == rid,
                    ResourceOwner.partner_id == self.principal.partner_id,
                )
            ).first()
            is not None
        )

    def _identity_lock(self, current: Stored, body: dict[str, Any]) -> None:
        has_orders = (
            self.work.session.execute(select(TherapyOrder.id).where(TherapyOrder.patient_id == current.id)).first()
            is not None
        )
        if not has_orders:
            return
        changed = [e for e in IDENTITY_ELEMENTS if current.content.get(e) != body.get(e)]
        if changed:
            raise GuardFailed(
                "the identity of a patient with therapy orders cannot change over the API",
                [Issue(f"{e} may not change", f"Patient.{e}") for e in changed],
            )

    def _update_order(self, current: Stored, body: dict[str, Any]) -> Result:
        before = {k: v for k, v in strip_server_meta(current.content).items() if k != "status"}
        after = {k: v for k, v in body.items() if k != "status"}
        new_status = body.get("status")
        if before != after:
            changed = sorted({*before, *after} - {k for k in before if before.get(k) == after.get(k)})
            raise GuardFailed(
                "a therapy order changes only through the hub's commands; over FHIR only a cancellation "
                "(status → revoked, nothing else changed) is accepted",
                [Issue(f"{k} may not change", f"ServiceRequest.{k}") for k in changed],
            )
        if new_status == current.content.get("status"):
            return Result(200, current)
        if new_status != "revoked":
            raise GuardFailed(f"status {new_status!r} is set by the journey; a partner may only revoke (cancel)")
        if not self.principal.is_operator:
            role = self.work.session.execute(
                select(OrderParticipant.role).where(
                    OrderParticipant.order_id == current.id,
                    OrderParticipant.partner_id == self.principal.partner_id,
                    OrderParticipant.role == "ordering",
                )
            ).first()
            if role is None:
                raise Forbidden("only the ordering partner may cancel the order")
        reason = f"cancelled over FHIR by {self.principal.actor}"
        OrderService(self.work, self.partners, fin=self.fin).cancel(Cancel(order_id=current.id, reason=reason))
        return Result(200, self.repo.read("ServiceRequest", current.id), order_id=current.id)

    # ------------------------------------------------------------------ subscriptions
    def _subscription(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.principal.partner_id is None:
            raise ValidationFailed("a Subscription belongs to a partner: create it with the partner's SMART token")
        smart = smart_settings_of(self.partners, self.principal.partner_id)
        issues = []
        channel = body.get("channel") or {}
        if not isinstance(channel, dict):
            raise ValidationFailed(
                "Subscription.channel must be an object", [Issue("malformed", "Subscription.channel")]
            )
        if channel.get("type") != "rest-hook":
            issues.append(Issue("only rest-hook channels are supported", "Subscription.channel.type"))
        endpoint = str(channel.get("endpoint") or "")
        allowed = smart.notify_urls if smart else ()
        if not endpoint.startswith(("https://", "http://")):
            issues.append(Issue("the endpoint must be an http(s) URL", "Subscription.channel.endpoint"))
        elif not any(endpoint_registered(endpoint, url) for url in allowed):
            issues.append(
                Issue(
                    "the endpoint is not among the notification URLs registered in the partner profile "
                    "(smart.notify_urls)",
                    "Subscription.channel.endpoint",
                )
            )
        payload = channel.get("payload")
        if payload not in (None, "application/fhir+json", "application/json"):
            issues.append(Issue("payload must be application/fhir+json (or absent)", "Subscription.channel.payload"))
        criteria = str(body.get("criteria") or "")
        ctype, _, query = criteria.partition("?")
        if ctype not in ("ServiceRequest", "Task"):
            issues.append(Issue("criteria must be ServiceRequest[?…] or Task[?…]", "Subscription.criteria"))
        else:
            if not self.principal.allows(ctype, "r"):
                issues.append(Issue(f"the token may not read {ctype}", "Subscription.criteria"))
            if query:
                try:
                    search_conditions(ctype, parse_criteria(ctype, query))
                except HubError as exc:
                    issues += [Issue(i.message, "Subscription.criteria") for i in exc.issues]
        issues += _header_issues(channel.get("header"))
        secret = smart.webhook_secret if smart else None
        profile = self.partners.get(self.principal.partner_id)
        reference = profile.secrets.get(secret) if profile and secret else None
        resolved = resolve_secret(reference) if reference is not None else None
        if resolved is None:
            issues.append(
                Issue(
                    "no webhook signing secret is configured for this partner (smart.webhook_secret); "
                    "notifications are never sent unsigned",
                    "Subscription.channel",
                )
            )
        else:
            try:
                secret_bytes(resolved)
            except ValueError as exc:
                issues.append(
                    Issue(
                        f"the partner's webhook signing secret cannot be used ({exc}); "
                        "ask the hub operator to fix smart.webhook_secret",
                        "Subscription.channel",
                    )
                )
        if issues:
            raise ValidationFailed("the Subscription cannot be accepted", issues)
        out = dict(body)
        out["status"] = "active" if body.get("status") in (None, "requested", "active") else body["status"]
        out.pop("error", None)
        return out

    # ------------------------------------------------------------------ bundles
    def _writable(self, rtype: str) -> None:
        if rtype not in SUPPORTED_TYPES:
            raise NotFound(f"resource type {rtype} is not served here")
        if rtype in READ_ONLY_TYPES:
            raise NotAllowed(f"{rtype} is read-only here: the hub writes it")

    def transaction(self, bundle: dict[str, Any], read: Callable[[str], dict[str, Any]], prefer: str) -> dict[str, Any]:
        entries = _entries(bundle)
        _require_unique_full_urls(entries)
        ids: dict[str, str] = {}
        orders: set[int] = set()
        for i, entry in enumerate(entries):
            method, rtype, _ = _request(entry, i)
            full = entry.get("fullUrl")
            if method == "POST" and isinstance(full, str) and full:
                if rtype == "ServiceRequest" and not self.principal.is_operator:
                    orders.add(i)
                else:
                    ids[full] = f"{rtype}/{uuid7()}"
            elif isinstance(full, str) and full and method == "PUT":
                url = entry["request"]["url"]
                if "?" not in url:
                    ids[full] = url
        order_urns = {entries[i].get("fullUrl") for i in orders}

        def refers_to_order(i: int) -> bool:
            return any(ref in order_urns for ref in _all_refs(entries[i].get("resource")))

        methods = [_request(e, i)[0] for i, e in enumerate(entries)]  # upper-cased, as processed
        posts = [i for i, m in enumerate(methods) if m == "POST"]
        sequence = (
            [i for i in posts if i not in orders and not refers_to_order(i)]
            + sorted(orders)
            + [i for i in posts if i not in orders and refers_to_order(i)]
            + [i for i, m in enumerate(methods) if m == "PUT"]
            + [i for i, m in enumerate(methods) if m == "GET"]
        )
        responses: dict[int, dict[str, Any]] = {}
        for i in sequence:
            entry = entries[i]
            method, rtype, rid = _request(entry, i)
            try:
                if method == "GET":
                    responses[i] = {"resource": read(entry["request"]["url"]), "response": {"status": "200 OK"}}
                    continue
                resource = self._rewrite(entry.get("resource"), ids, i)
                if method == "POST":
                    if rtype == "ServiceRequest" and i in orders and not self.principal.is_operator:
                        result = self.place_order(resource, entry["request"].get("ifNoneExist"))
                    else:
                        result = self._create_with_id(rtype, resource, ids.get(entry.get("fullUrl", "")), entry)
                    if result.stored is not None and entry.get("fullUrl"):
                        ids[entry["fullUrl"]] = result.stored.ref
                else:
                    if rid is None:
                        raise BadRequest(
                            "conditional update is not supported; PUT Type/id",
                            [Issue("PUT needs Type/id", f"Bundle.entry[{i}].request.url")],
                        )
                    result = self.update(rtype, rid, resource, _if_match(entry["request"].get("ifMatch")))
                self.work.flush()
                responses[i] = _entry_response(result, prefer)
            except HubError as exc:
                exc.issues = in_entry(exc.issues, i)
                if isinstance(exc, ValidationFailed):  # the other entries' errors too, in one answer
                    rest = sequence[sequence.index(i) + 1 :]
                    exc.issues += pending_issues(
                        entries, sorted(rest), lambda j, r: self._entry_precheck(entries[j], j, r)
                    )
                exc.message = f"transaction failed at entry {i}: {exc.message}"
                raise
        return {
            "resourceType": "Bundle",
            "type": "transaction-response",
            "entry": [responses[i] for i in range(len(entries))],
        }

    def _entry_precheck(self, entry: dict[str, Any], index: int, resource: dict[str, Any]) -> list[Issue] | None:
        """The validation issues of an entry's resource as its create or update would find them."""
        try:
            method, rtype, _ = _request(entry, index)
        except HubError:
            return None
        if method == "POST":
            return precheck(rtype, resource, self.principal)
        if method == "PUT" and resource.get("resourceType") == rtype and rtype != "Subscription":
            return conformance.issues_for(strip_server_meta(resource))
        return None

    def _create_with_id(
        self, rtype: str, resource: dict[str, Any], assigned: str | None, entry: dict[str, Any]
    ) -> Result:
        if_none_exist = entry["request"].get("ifNoneExist")
        if assigned is None:
            return self.create(rtype, resource, if_none_exist)
        rid = assigned.split("/", 1)[1]
        self._writable(rtype)
        self.principal.require(rtype, "c")
        if resource.get("resourceType") != rtype:
            raise wrong_type(resource, rtype, "the entry's resource")
        body = strip_server_meta(resource)
        body.pop("id", None)
        if rtype == "Subscription":
            body = self._subscription(body)
        conformance.require_valid(body)
        require_references_visible(self.work.session, self.principal, body, self.created)
        if if_none_exist:
            params = parse_criteria(rtype, if_none_exist)
            found = self._existing(rtype, params)
            if found is not None:
                return Result(200, found)
            raced = self._claim(rtype, params, rid)
            if raced is not None:
                return Result(200, raced)
        return Result(201, self._create(body, rid))

    def _rewrite(self, resource: Any, ids: dict[str, str], index: int) -> dict[str, Any]:
        if not isinstance(resource, dict):
            raise BadRequest(f"entry {index} has no resource", [Issue("resource missing", f"Bundle.entry[{index}]")])

        def walk(value: Any) -> Any:
            if isinstance(value, dict):
                out = {}
                for key, item in value.items():
                    if key == "reference" and isinstance(item, str):
                        out[key] = self._resolve(item, ids)
                    else:
                        out[key] = walk(item)
                return out
            if isinstance(value, list):
                return [walk(v) for v in value]
            return value

        result: dict[str, Any] = walk(resource)
        return result

    def _resolve(self, ref: str, ids: dict[str, str]) -> str:
        if ref in ids:
            return ids[ref]
        if _URN.match(ref):
            raise NotFound(f"{ref} is not a fullUrl of this transaction")
        head = ref.split("?", 1)[0]
        if "?" in ref and head in SUPPORTED_TYPES:
            resolved = self.resolve_conditional_reference(ref)
            ids[ref] = resolved
            return resolved
        return ref

    def batch(self, bundle: dict[str, Any], read: Callable[[str], dict[str, Any]], prefer: str) -> dict[str, Any]:
        from hub.api.outcomes import outcome_for

        out = []
        for i, entry in enumerate(_entries(bundle)):
            try:
                with self.work.attempt():
                    method, rtype, rid = _request(entry, i)
                    if method == "GET":
                        out.append({"resource": read(entry["request"]["url"]), "response": {"status": "200 OK"}})
                        continue
                    resource = entry.get("resource")
                    if not isinstance(resource, dict):
                        raise BadRequest(f"entry {i} has no resource")
                    if method == "POST":
                        result = self.create(rtype, resource, entry["request"].get("ifNoneExist"))
                    else:
                        if rid is None:
                            raise BadRequest("conditional update is not supported; PUT Type/id")
                        result = self.update(rtype, rid, resource, _if_match(entry["request"].get("ifMatch")))
                out.append(_entry_response(result, prefer))
            except HubError as exc:
                out.append({"response": {"status": str(exc.status), "outcome": outcome_for(exc)}})
        return {"resourceType": "Bundle", "type": "batch-response", "entry": out}


def _entries(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    """The Bundle's entries, each checked for the shape the processing relies on (a partner's
    malformed entry is a 400 naming it, not a crash halfway through)."""
    entries = bundle.get("entry") or []
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise BadRequest("Bundle.entry must be a list of entries")
    for i, entry in enumerate(entries):
        where = f"Bundle.entry[{i}]"
        request = entry.get("request")
        wrong = [
            f"{where}.{name}"
            for name, value, kind in (
                ("fullUrl", entry.get("fullUrl"), str),
                ("resource", entry.get("resource"), dict),
                ("request", request, dict),
            )
            if value is not None and not isinstance(value, kind)
        ]
        if isinstance(request, dict):
            wrong += [
                f"{where}.request.{name}"
                for name in ("method", "url", "ifNoneExist", "ifMatch", "ifNoneMatch", "ifModifiedSince")
                if request.get(name) is not None and not isinstance(request[name], str)
            ]
        if wrong:
            raise BadRequest(
                f"entry {i} is malformed: {', '.join(wrong)} has the wrong JSON type",
                [Issue("wrong JSON type", w) for w in wrong],
            )
    return entries


def _header_issues(lines: Any) -> list[Issue]:
    """Subscription.channel.header: each line must be one the notification can carry."""
    if lines is None:
        return []
    if not isinstance(lines, list):
        return [Issue("channel.header must be a list of 'Name: value' lines", "Subscription.channel.header")]
    issues = []
    for i, line in enumerate(lines):
        try:
            header_line(line)
        except ValueError as exc:
            issues.append(Issue(str(exc), f"Subscription.channel.header[{i}]"))
    return issues


def endpoint_registered(endpoint: str, registered: str) -> bool:
    """Is ``endpoint`` at or under a notification URL registered in the partner's profile?

    Compared parsed, not as text: the same scheme, host and port, and the registered path as a
    whole-segment prefix. A text prefix let ``http://127.0.0.1.evil.example/`` pass for
    ``http://127.0.0.1``, and ``https://hospital.example/hooks-of-someone-else`` pass for
    ``https://hospital.example/hooks``. Userinfo is refused (``https://a.example@b.example/``).
    A registered URL without a port means the scheme's default port; ``host:*`` allows any port
    (for a development endpoint on an ephemeral port)."""
    r_split = urlsplit(registered)
    any_port = r_split.netloc.endswith(":*")
    if any_port:
        r_split = r_split._replace(netloc=r_split.netloc[:-2])
    try:
        e = urlsplit(endpoint)
        e_port, r_port = e.port, r_split.port
    except ValueError:
        return False
    if e.username is not None or e.password is not None or e.scheme not in ("http", "https"):
        return False
    if (e.scheme, (e.hostname or "").lower()) != (r_split.scheme, (r_split.hostname or "").lower()):
        return False
    default = {"http": 80, "https": 443}
    if not any_port and (e_port or default[e.scheme]) != (r_port or default.get(r_split.scheme)):
        return False
    base = r_split.path.rstrip("/")
    return not base or e.path == base or e.path.startswith(base + "/")


def _require_unique_full_urls(entries: list[dict[str, Any]]) -> None:
    """bdl-7: a fullUrl names one entry. Two entries under one fullUrl would let a POST take the id
    that a PUT entry names (the id map is keyed by fullUrl), i.e. a client-chosen id for a new
    resource, such as a partner's ``org-<partner>`` Organization that the hub reuses on every
    order naming that partner."""
    first: dict[str, int] = {}
    for i, entry in enumerate(entries):
        full = entry.get("fullUrl")
        if not isinstance(full, str) or not full:
            continue
        if full in first:
            raise BadRequest(
                f"entries {first[full]} and {i} share the fullUrl {full!r}; each entry needs its own",
                [Issue("duplicate fullUrl (bdl-7)", f"Bundle.entry[{i}].fullUrl")],
            )
        first[full] = i


def wrong_type(body: dict[str, Any], rtype: str, what: str) -> BadRequest:
    given = body.get("resourceType")
    where = f"{given}.resourceType" if isinstance(given, str) and given.isalpha() else "resourceType"
    message = f"{what} is a {given}, not a {rtype}" if given else f"{what} has no resourceType (expected {rtype})"
    return BadRequest(message, [Issue(message, where)])


def _request(entry: dict[str, Any], index: int) -> tuple[str, str, str | None]:
    request = entry.get("request")
    where = f"Bundle.entry[{index}].request"
    if not isinstance(request, dict) or not isinstance(request.get("url"), str):
        raise BadRequest(f"entry {index} needs request.method and request.url", [Issue("request missing", where)])
    method = str(request.get("method", "")).upper()
    if method not in ("POST", "PUT", "GET"):
        raise NotAllowed(f"entry {index}: method {method or '(none)'} is not supported (POST, PUT, GET)")
    path = request["url"].split("?", 1)[0].strip("/")
    parts = path.split("/")
    rtype = parts[0]
    if rtype not in SUPPORTED_TYPES:
        raise NotFound(f"entry {index}: resource type {rtype} is not served here")
    rid = parts[1] if len(parts) > 1 and method == "PUT" else None
    return method, rtype, rid


def _if_match(value: Any) -> int | None:
    if not value:
        return None
    text = str(value).strip()
    text = text.removeprefix("W/").strip('"')
    try:
        return int(text)
    except ValueError:
        raise BadRequest(f'If-Match {value!r} is not a version ETag (W/"n")') from None


def _all_refs(value: Any) -> list[str]:
    return list(references(value))


def _entry_response(result: Result, prefer: str) -> dict[str, Any]:
    stored = result.stored
    if stored is None:
        return {"response": {"status": str(result.status)}}
    response: dict[str, Any] = {
        "status": "201 Created" if result.status == 201 else "200 OK",
        "location": f"{stored.resource_type}/{stored.id}/_history/{stored.version_id}",
        "etag": stored.etag,
        "lastModified": stored.last_updated.isoformat(),
    }
    entry: dict[str, Any] = {"fullUrl": f"{stored.resource_type}/{stored.id}", "response": response}
    if prefer == "representation":
        entry["resource"] = stored.content
    return entry


__all__ = ["FhirService", "PreconditionFailed", "Result", "placer_number"]
