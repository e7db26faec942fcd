from __future__ import annotations

import pytest
from sqlalchemy import text

from hub.db.models import Signature
from hub.db.uow import Store
from hub.errors import AuthenticationFailed, Conflict, ValidationFailed
from hub.fhirstore.repository import ResourceRepository
from hub.signatures.passwords import hash_password, verify_password
from hub.signatures.service import Meaning, add_user, check_signature, sign


def _org(store: Store, name: str) -> str:
    return store.run(
        lambda w: ResourceRepository.from_session(w.session).create(w, {"resourceType": "Organization", "name": name})
    ).id


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
    store.run(lambda w: add_user(w, "qa.jane", "Jane Quality", {"qa"}, "correct horse battery"))
    first, second = _org(store, "First"), _org(store, "Second")
    sig = _sign(store, first)
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
