from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select, text

from hub import canonical
from hub.audit.service import verify_chain
from hub.db.models import AppUser, AuditEntry, OutboxEvent, Signature
from hub.db.uow import Store, Work
from hub.errors import AuthenticationFailed, Conflict, NotFound, ValidationFailed
from hub.fhirstore.repository import ResourceRepository
from hub.signatures.passwords import hash_password, verify_password
from hub.signatures.service import (
    Meaning,
    SigningPolicy,
    add_user,
    check_signature,
    sign,
    signature_hash,
    unlock_user,
)


def _org(store: Store, name: str) -> str:
    return store.run(
        lambda w: ResourceRepository.from_session(w.session).create(w, {"resourceType": "Organization", "name": name})
    ).id


def _signed_and_another(store: Store) -> tuple[Signature, str]:
    """QA's signature on one Organization, and another Organization: the ground for moving it."""
    store.run(lambda w: add_user(w, "qa.jane", "Jane Quality", {"qa"}, "correct horse battery"))
    first, second = _org(store, "First"), _org(store, "Second")
    return _sign(store, first), second


def _sign(store: Store, rid: str, version: int = 1, password: str = "correct horse battery") -> Signature:
    return store.run(
        lambda w: sign(
            w,
            record_type="Organization",
            record_id=rid,
            record_version=version,
            username="qa.jane",
            password=password,
            meaning=Meaning.review,
            reason="checked",
        )
    )


def test_password_hashes() -> None:
    stored = hash_password("s3cret-enough-pass")
    assert verify_password("s3cret-enough-pass", stored)
    assert not verify_password("wrong", stored)
    assert not verify_password("x", "garbage")


def test_signature_binds_the_exact_version_and_needs_reauthentication(store: Store) -> None:
    store.run(lambda w: add_user(w, "qa.jane", "Jane Quality", {"qa"}, "correct horse battery"))
    with pytest.raises(ValidationFailed):
        store.run(lambda w: add_user(w, "weak", "Weak", {"qa"}, "short"))
    rid = _org(store, "A")
    with pytest.raises(AuthenticationFailed):
        _sign(store, rid, password="wrong password!")
    sig = _sign(store, rid)
    assert (sig.printed_name, sig.meaning, sig.record_version) == ("Jane Quality", "review", 1)
    with store.reading() as s:
        assert check_signature(s, s.get(Signature, sig.id)).valid  # type: ignore[arg-type]

    # Only the current version can be signed.
    store.run(
        lambda w: ResourceRepository.from_session(w.session).update(
            w, {"resourceType": "Organization", "id": rid, "name": "A2"}
        )
    )
    with pytest.raises(Conflict, match="current version"):
        _sign(store, rid, version=1)


def test_a_signature_cannot_be_moved(store: Store) -> None:
    sig, second = _signed_and_another(store)
    # Someone with database access points the signature at another record...
    with store.write_engine.begin() as conn:
        conn.execute(text("UPDATE signature SET record_id = :r WHERE id = :i"), {"r": second, "i": sig.id})
    with store.reading() as s:
        check = check_signature(s, s.get(Signature, sig.id))  # type: ignore[arg-type]
    assert not check.valid
    assert "differs" in check.reason
    # ...or also copies the other record's hash: the signature's own manifest no longer matches.
    with store.write_engine.begin() as conn:
        h = conn.execute(text("SELECT content_hash FROM resource_version WHERE id = :r"), {"r": second}).scalar_one()
        conn.execute(text("UPDATE signature SET record_hash = :h WHERE id = :i"), {"h": h, "i": sig.id})
    with store.reading() as s:
        check = check_signature(s, s.get(Signature, sig.id))  # type: ignore[arg-type]
    assert not check.valid
    assert "manifest" in check.reason


def test_a_moved_signature_with_a_recomputed_manifest_disagrees_with_the_audit_trail(store: Store) -> None:
    """The manifest hash is a plain SHA-256: whoever can write the row can recompute it. The audit
    entry of the signing is in the hash chain, and the row must agree with it."""
    sig, second = _signed_and_another(store)
    with store.write_engine.begin() as conn:
        h = conn.execute(text("SELECT content_hash FROM resource_version WHERE id = :r"), {"r": second}).scalar_one()
        conn.execute(
            text("UPDATE signature SET record_id = :r, record_hash = :h WHERE id = :i"),
            {"r": second, "h": h, "i": sig.id},
        )
    with store.reading() as s:
        moved = s.get(Signature, sig.id)
        assert moved is not None
        recomputed = signature_hash(moved)
    with store.write_engine.begin() as conn:
        conn.execute(text("UPDATE signature SET signature_hash = :h WHERE id = :i"), {"h": recomputed, "i": sig.id})
    with store.reading() as s:
        check = check_signature(s, s.get(Signature, sig.id))  # type: ignore[arg-type]
    assert not check.valid
    assert "audit trail" in check.reason
    assert verify_chain(store).ok  # the chain itself was not touched: the row alone is wrong


def test_a_signature_is_valid_in_the_transaction_that_made_it(store: Store) -> None:
    """Its audit entry is written at COMMIT; the job that signs can still rely on it."""
    store.run(lambda w: add_user(w, "qa.jane", "Jane Quality", {"qa"}, "correct horse battery"))
    rid = _org(store, "Signed and checked at once")

    def sign_and_check(w: Work) -> bool:
        sig = sign(
            w,
            record_type="Organization",
            record_id=rid,
            record_version=1,
            username="qa.jane",
            password="correct horse battery",
            meaning=Meaning.approval,
        )
        return check_signature(w.session, sig).valid

    assert store.run(sign_and_check)
    with store.reading() as s:
        stored = s.scalars(select(Signature).where(Signature.record_id == rid)).one()
        assert check_signature(s, stored).valid


@pytest.mark.parametrize(("username", "printed_name"), [("eve", "  "), ("eve", ""), ("  ", "Eve E"), (" eve", "Eve E")])
def test_a_signer_needs_a_name(store: Store, username: str, printed_name: str) -> None:
    """A signature shows its signer's printed name: a blank one would sign as nobody."""
    with pytest.raises(ValidationFailed):
        store.run(lambda w: add_user(w, username, printed_name, {"qa"}, "correct horse battery"))
    store.run(lambda w: add_user(w, "eve", "  Eve Example ", {"qa"}, "correct horse battery"))
    assert store.read(lambda s: s.get(AppUser, "eve")).printed_name == "Eve Example"  # type: ignore[union-attr]


def _attempt(store: Store, rid: str, password: str, policy: SigningPolicy | None = None) -> Signature:
    return store.run(
        lambda w: sign(
            w,
            record_type="Organization",
            record_id=rid,
            record_version=1,
            username="qa.jane",
            password=password,
            meaning=Meaning.review,
            policy=policy,
        ),
        actor="portal:session-17",
    )


def _trail(store: Store) -> list[tuple[str, str, str]]:
    return store.read(
        lambda s: [
            (e.action, e.actor, e.reason)
            for e in s.scalars(
                select(AuditEntry)
                .where(AuditEntry.entity_type == "AppUser", AuditEntry.entity_id == "qa.jane")
                .order_by(AuditEntry.seq)
            )
        ]
    )


def test_repeated_failed_reauthentication_locks_signing_and_is_reported(store: Store) -> None:
    """21 CFR 11.300(d): failed signing re-authentications are recorded (the signing job's rollback
    does not erase them), five in a row (the default) lock the user out of signing and raise an
    alert, and a locked user cannot sign even with the right password until unlocked."""
    store.run(lambda w: add_user(w, "qa.jane", "Jane Quality", {"qa"}, "correct horse battery"))
    rid = _org(store, "A")
    for i in range(4):
        with pytest.raises(AuthenticationFailed, match=r"re-authentication failed$"):
            _attempt(store, rid, f"guess-{i:04d}-xxxxx")
    with pytest.raises(AuthenticationFailed, match=r"signing is now locked for qa\.jane for 15 min"):
        _attempt(store, rid, "guess-0004-xxxxx")
    with pytest.raises(AuthenticationFailed, match=r"signing is locked for qa\.jane until .*\(cgt-hub users unlock\)"):
        _attempt(store, rid, "correct horse battery")

    trail = _trail(store)
    failed = ("auth-failed", "portal:session-17", "signature re-authentication failed: wrong password")
    locked = (
        "auth-failed",
        "portal:session-17",
        "signature re-authentication failed: the user is locked out of signing",
    )
    assert trail[1:] == [
        *[failed] * 5,
        ("update", "portal:session-17", "locked out of signing after 5 failed re-authentications"),
        locked,
    ]
    alerts = store.read(
        lambda s: [
            canonical.loads(e.payload)
            for e in s.scalars(select(OutboxEvent).where(OutboxEvent.event_type == "alert.raised"))
        ]
    )
    assert [(a["kind"], a["severity"]) for a in alerts] == [("signature.lockout", "warning")]

    store.run(lambda w: unlock_user(w, "qa.jane", "identity confirmed by phone"), actor="ops.anna")
    assert _trail(store)[-1] == ("update", "ops.anna", "identity confirmed by phone")
    assert _attempt(store, rid, "correct horse battery").printed_name == "Jane Quality"
    assert verify_chain(store).ok


def test_a_lockout_ends_and_a_success_starts_the_count_again(store: Store) -> None:
    store.run(lambda w: add_user(w, "qa.jane", "Jane Quality", {"qa"}, "correct horse battery"))
    rid = _org(store, "A")
    policy = SigningPolicy(max_failures=2, lockout=timedelta(minutes=1))
    with pytest.raises(AuthenticationFailed):
        _attempt(store, rid, "guess-0000-xxxxx", policy)
    _attempt(store, rid, "correct horse battery", policy)  # resets the count
    with pytest.raises(AuthenticationFailed, match=r"failed$"):
        _attempt(store, rid, "guess-0001-xxxxx", policy)
    with pytest.raises(AuthenticationFailed, match="now locked"):
        _attempt(store, rid, "guess-0002-xxxxx", policy)
    user = store.read(lambda s: s.get(AppUser, "qa.jane"))
    assert user is not None
    assert user.locked_until is not None
    with store.write_engine.begin() as conn:  # a minute later
        conn.execute(text("UPDATE app_user SET locked_until = :t"), {"t": user.locked_until - timedelta(minutes=2)})
    assert _attempt(store, rid, "correct horse battery", policy).username == "qa.jane"
    with pytest.raises(AuthenticationFailed, match=r"failed$"):  # a new count after the lockout
        _attempt(store, rid, "guess-0003-xxxxx", policy)


def test_a_failed_reauthentication_in_a_group_commit_is_recorded(store: Store) -> None:
    """The failed signing's savepoint rolls back, the batch commits, and the failure still counts."""
    store.run(lambda w: add_user(w, "qa.jane", "Jane Quality", {"qa"}, "correct horse battery"))
    rid = _org(store, "A")

    def wrong(w: Work) -> Signature:
        return sign(
            w,
            record_type="Organization",
            record_id=rid,
            record_version=1,
            username="qa.jane",
            password="guess-0000-xxxxx",
            meaning=Meaning.review,
        )

    futures = store.run_batch([(wrong, "a"), (lambda w: w.audit("update", "Thing", "t", new={"v": 1}), "b")])
    assert isinstance(futures[0].exception(), AuthenticationFailed)
    assert futures[1].exception() is None
    assert [a for a, _, _ in _trail(store)] == ["create", "auth-failed"]
    assert store.read(lambda s: s.get(AppUser, "qa.jane")).failed_signing_attempts == 1  # type: ignore[union-attr]
    with pytest.raises(NotFound):
        store.run(lambda w: unlock_user(w, "nobody", "typo"))
