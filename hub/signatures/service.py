"""Users who sign, and signatures.

A signature records the printed name, the time, the meaning (review, approval, release) and the
SHA-256 of the exact stored bytes of the record version it signs. Its own hash covers all of that
plus the record's type, id and version, so a signature row edited to point at another record, or
at another version, no longer verifies. Signing always re-authenticates (name + password), even
inside a session, and the signing is an audited event in the hash chain.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from hub import canonical
from hub.db.models import AppUser, AuditEntry, ResourceVersion, Signature
from hub.db.types import iso_utc
from hub.db.uow import Work
from hub.errors import AuthenticationFailed, Conflict, Forbidden, NotFound, ValidationFailed
from hub.events import EventType, SignatureApplied
from hub.ids import uuid7
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


def authenticate(session: Session, username: str, password: str) -> AppUser:
    user = session.get(AppUser, username)
    # Verify even for unknown users so timing does not reveal which names exist.
    stored = user.password_hash if user is not None else "scrypt$16384$8$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAA"
    ok = verify_password(password, stored)
    if user is None or not user.active or not ok:
        raise AuthenticationFailed("signature re-authentication failed")
    return user


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
) -> Signature:
    user = authenticate(work.session, username, password)
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
