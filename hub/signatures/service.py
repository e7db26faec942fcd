"""Users who sign, and signatures.

A signature records the printed name, the time, the meaning (review, approval, release) and the
SHA-256 of the exact stored bytes of the record version it signs. Its own hash covers all of that
plus the record's type, id and version, so a signature row edited to point at another record, or
at another version, no longer verifies. Signing always re-authenticates (name + password), even
inside a session, and the signing is an audited event in the hash chain.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from hub import canonical
from hub.db.models import AppUser, AuditEntry, ResourceVersion, Signature
from hub.db.types import iso_utc, storable
from hub.db.uow import Work
from hub.errors import AuthenticationFailed, Conflict, Forbidden, NotFound, ValidationFailed
from hub.events import AlertRaised, EventType, SignatureApplied
from hub.ids import uuid7
from hub.settings import Settings, get_settings
from hub.signatures.passwords import hash_password, verify_password


class Meaning(StrEnum):
    review = "review"
    approval = "approval"
    release = "release"


ROLES = frozenset({"operator", "qa", "admin"})


def _version_ref(sig: Signature) -> str:
    return f"{sig.record_type}/{sig.record_id}/_history/{sig.record_version}"


def signature_hash(sig: Signature) -> str:
    """SHA-256 over everything a signature asserts: which record version (and its bytes' hash), who,
    what it means, when, and why."""
    return canonical.sha256_hex(
        canonical.dumps(
            {
                "record": _version_ref(sig),
                "record_hash": sig.record_hash,
                "username": sig.username,
                "printed_name": sig.printed_name,
                "meaning": sig.meaning,
                "signed_at": sig.signed_at,
                "reason": sig.reason or "",
            }
        )
    )


@dataclass(frozen=True)
class SignatureCheck:
    valid: bool
    reason: str


def add_user(work: Work, username: str, printed_name: str, roles: set[str], password: str) -> None:
    # The printed name is what a signature shows of its signer (21 CFR 11.50): never blank.
    printed_name = printed_name.strip()
    if not username.strip() or username != username.strip() or len(username) > 64:
        raise ValidationFailed("a username needs 1 to 64 characters, without spaces at either end")
    if not printed_name or len(printed_name) > 128:
        raise ValidationFailed("a signer needs a printed name (1 to 128 characters), shown on every signature")
    if not roles <= ROLES:
        raise ValidationFailed(f"unknown roles {sorted(roles - ROLES)}; known: {sorted(ROLES)}")
    if len(password) < 12:
        raise ValidationFailed("a signing password needs at least 12 characters")
    if work.session.get(AppUser, username) is not None:
        raise Conflict(f"user {username} exists")
    work.session.execute(
        insert(AppUser).values(
            username=username,
            printed_name=printed_name,
            roles=" ".join(sorted(roles)),
            password_hash=hash_password(password),
            active=True,
            created_at=work.now,
        )
    )
    work.audit("create", "AppUser", username, new={"printed_name": printed_name, "roles": sorted(roles)})


@dataclass(frozen=True)
class SigningPolicy:
    """How many failed signing re-authentications in a row lock a user out of signing, and for
    how long (CGTHUB_SIGNING_MAX_FAILURES, CGTHUB_SIGNING_LOCKOUT_MINUTES)."""

    max_failures: int = 5
    lockout: timedelta = timedelta(minutes=15)

    @classmethod
    def from_settings(cls, settings: Settings) -> SigningPolicy:
        return cls(settings.signing_max_failures, timedelta(minutes=settings.signing_lockout_minutes))


def authenticate(work: Work, username: str, password: str, policy: SigningPolicy | None = None) -> AppUser:
    """The signer, re-authenticated. Every failure is recorded in a transaction of its own (the
    signing job rolls back): an audit entry naming the user and why, and the user's failure count;
    ``policy.max_failures`` in a row lock the user out of signing for ``policy.lockout`` and raise
    an alert. A locked user cannot sign, even with the right password, until the lockout ends or
    an operator unlocks (``cgt-hub users unlock``)."""
    policy = policy or SigningPolicy.from_settings(get_settings())
    user = work.session.get(AppUser, username)
    if user is not None and user.locked_until is not None and user.locked_until > work.now:
        work.independently(_failure_recorder(username, "the user is locked out of signing", policy))
        until = iso_utc(user.locked_until)
        raise AuthenticationFailed(
            f"signing is locked for {username} until {until} after {policy.max_failures} failed "
            "re-authentications; wait, or ask an operator to unlock (cgt-hub users unlock)"
        )
    # Verify even for unknown users so timing does not reveal which names exist.
    stored = user.password_hash if user is not None else "scrypt$16384$8$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAA"
    ok = verify_password(password, stored)
    if user is None or not user.active or not ok:
        why = _MISMATCH if user is not None and user.active else "unknown or inactive user"
        work.independently(_failure_recorder(username, why, policy))
        left = policy.max_failures - (user.failed_signing_attempts if user is not None else 0) - 1
        if user is not None and user.active and left <= 0:
            raise AuthenticationFailed(
                f"signature re-authentication failed; signing is now locked for {username} for "
                f"{_minutes(policy.lockout)} (ask an operator to unlock: cgt-hub users unlock)"
            )
        raise AuthenticationFailed("signature re-authentication failed")
    if user.failed_signing_attempts or user.locked_until is not None:
        user.failed_signing_attempts, user.locked_until = 0, None
    return user


_MISMATCH = "wrong password"


def _minutes(period: timedelta) -> str:
    return f"{period.total_seconds() / 60:g} min"


def _failure_recorder(username: str, why: str, policy: SigningPolicy) -> Callable[[Work], None]:
    """A job recording one failed signing re-authentication (see :func:`authenticate`)."""
    # As the audit trail can hold it: no longer name can exist, and a guessed name may hold
    # anything (a lone surrogate would be refused and the attempt go unrecorded).
    name = storable(username)[:64].encode("utf-8", "replace").decode()

    def record(work: Work) -> None:
        user = work.session.get(AppUser, name, with_for_update=True)  # concurrent failures count once each
        failures: int | None = None
        locked_until: datetime | None = None
        if user is not None and why == _MISMATCH:
            failures = user.failed_signing_attempts + 1
            user.failed_signing_attempts = failures
            if failures >= policy.max_failures:
                # A new count starts with the lockout: after it, max_failures more tries.
                locked_until = user.locked_until = work.now + policy.lockout
                user.failed_signing_attempts = 0
        work.audit(
            "auth-failed",
            "AppUser",
            name,
            new={"failed_attempts": failures},
            reason=f"signature re-authentication failed: {why}",
        )
        if locked_until is not None:
            _record_lockout(work, name, locked_until, policy)

    return record


def _record_lockout(work: Work, username: str, until: datetime, policy: SigningPolicy) -> None:
    """Audit the lockout and raise an alert: someone may be trying to sign as this user."""
    at = iso_utc(until)
    work.audit(
        "update",
        "AppUser",
        username,
        old={"locked_until": None},
        new={"locked_until": at},
        reason=f"locked out of signing after {policy.max_failures} failed re-authentications",
    )
    work.emit(
        EventType.ALERT_RAISED,
        username,
        AlertRaised(
            order_id=None,
            severity="warning",
            kind="signature.lockout",
            message=f"user {username} locked out of signing until {at} after {policy.max_failures} failed "
            "re-authentications (possible attempt at unauthorized use)",
        ),
    )


def unlock_user(work: Work, username: str, reason: str) -> None:
    """End a signing lockout (and the failure count) before its time, with a reason: audited."""
    user = work.session.get(AppUser, username, with_for_update=True)
    if user is None:
        raise NotFound(f"user {username} is not known")
    if not reason.strip():
        raise ValidationFailed("unlocking needs a reason (kept in the audit trail)")
    old = {
        "locked_until": iso_utc(user.locked_until) if user.locked_until is not None else None,
        "failed_attempts": user.failed_signing_attempts,
    }
    user.locked_until, user.failed_signing_attempts = None, 0
    work.audit("update", "AppUser", username, old=old, new={"locked_until": None, "failed_attempts": 0}, reason=reason)


def sign(
    work: Work,
    *,
    record_type: str,
    record_id: str,
    record_version: int,
    username: str,
    password: str,
    meaning: Meaning,
    reason: str | None = None,
    required_role: str | None = None,
    policy: SigningPolicy | None = None,
) -> Signature:
    user = authenticate(work, username, password, policy)
    work.flush()  # the version to sign may have been written earlier in this job
    if required_role is not None and required_role not in user.roles.split():
        raise Forbidden(f"signing with meaning {meaning.value} here needs the {required_role} role")
    version = work.session.execute(
        select(ResourceVersion).where(
            ResourceVersion.resource_type == record_type,
            ResourceVersion.id == record_id,
            ResourceVersion.version_id == record_version,
        )
    ).scalar_one_or_none()
    if version is None:
        raise NotFound(f"{record_type}/{record_id}/_history/{record_version} does not exist")
    latest = work.session.execute(
        select(ResourceVersion.version_id)
        .where(ResourceVersion.resource_type == record_type, ResourceVersion.id == record_id)
        .order_by(ResourceVersion.version_id.desc())
        .limit(1)
    ).scalar_one()
    if latest != record_version:
        raise Conflict(f"{record_type}/{record_id} is at version {latest}; only the current version can be signed")
    signed_at = iso_utc(work.now)
    sig = Signature(
        id=uuid7(),
        record_type=record_type,
        record_id=record_id,
        record_version=record_version,
        record_hash=version.content_hash,
        username=user.username,
        printed_name=user.printed_name,
        meaning=meaning.value,
        signed_at=signed_at,
        reason=reason,
        signature_hash="",
    )
    sig.signature_hash = signature_hash(sig)
    work.session.add(sig)
    work.session.flush()
    # Its audit entry is written at COMMIT (the chain is extended once per transaction): until
    # then, check_signature trusts the row this transaction wrote itself.
    work.session.info.setdefault(_SIGNED_NOW, set()).add(sig.id)
    work.audit(
        "sign",
        "Signature",
        sig.id,
        actor=user.username,
        reason=reason or "",
        new={
            "record": _version_ref(sig),
            "record_hash": sig.record_hash,
            "printed_name": sig.printed_name,
            "meaning": sig.meaning,
            "signature_hash": sig.signature_hash,
        },
    )
    work.emit(
        EventType.SIGNATURE_APPLIED,
        record_id,
        SignatureApplied(signature_id=sig.id, record=f"{record_type}/{record_id}", meaning=sig.meaning),
    )
    return sig


def check_signature(session: Session, sig: Signature) -> SignatureCheck:
    """Recompute both hashes: the record version's bytes, and the signature's own manifest."""
    version = session.execute(
        select(ResourceVersion).where(
            ResourceVersion.resource_type == sig.record_type,
            ResourceVersion.id == sig.record_id,
            ResourceVersion.version_id == sig.record_version,
        )
    ).scalar_one_or_none()
    if version is None:
        return SignatureCheck(False, "the signed record version does not exist")
    if canonical.sha256_hex(version.content) != sig.record_hash or version.content_hash != sig.record_hash:
        return SignatureCheck(False, "the signed record's content differs from what was signed")
    if signature_hash(sig) != sig.signature_hash:
        return SignatureCheck(False, "the signature manifest was altered (record, signer, meaning or time)")
    if sig.id not in session.info.get(_SIGNED_NOW, ()) and not _as_audited(session, sig):
        return SignatureCheck(False, "the signature does not match its entry in the audit trail")
    return SignatureCheck(True, "valid")


_SIGNED_NOW = "cgthub.signed_now"


def _as_audited(session: Session, sig: Signature) -> bool:
    """The row asserts what the hash chain recorded when it was signed.

    The row's own hash is a plain SHA-256: someone who can write to the database can point a
    signature at another record and recompute it. The audit entry of the signing cannot be changed
    without breaking the chain (``cgt-hub audit verify``, and a saved checkpoint against a
    rewritten chain), so the row must agree with it."""
    entries = session.execute(
        select(AuditEntry.new_value).where(
            AuditEntry.entity_type == "Signature", AuditEntry.entity_id == sig.id, AuditEntry.action == "sign"
        )
    ).scalars()
    for text in entries:
        try:
            recorded = canonical.loads(text)
        except ValueError:
            continue
        if recorded == {
            **recorded,
            "record": _version_ref(sig),
            "record_hash": sig.record_hash,
            "signature_hash": sig.signature_hash,
        }:
            return True
    return False


def signatures_for(session: Session, record_type: str, record_id: str) -> list[Signature]:
    return list(
        session.scalars(
            select(Signature)
            .where(Signature.record_type == record_type, Signature.record_id == record_id)
            .order_by(Signature.signed_at)
        )
    )
