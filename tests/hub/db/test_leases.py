"""Named leases (hub/db/leases.py), on SQLite and PostgreSQL: one holder at a time, renewal,
take-over of an expired lease, and release by name or of all a holder's leases."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from hub.db import leases
from hub.db.models import Lease
from hub.db.uow import Store, Work


def _holders(store: Store) -> dict[str, str]:
    return store.read(lambda s: {r.name: r.holder for r in s.scalars(select(Lease))})


def test_one_holder_at_a_time_and_renewal(store: Store) -> None:
    assert store.run(leases.take("relay", "a", 30))
    assert not store.run(leases.take("relay", "b", 30))
    first = store.read(lambda s: s.get(Lease, "relay").expires_at)
    assert store.run(leases.take("relay", "a", 60))  # the holder renews
    assert store.read(lambda s: s.get(Lease, "relay").expires_at) > first
    assert _holders(store) == {"relay": "a"}


def test_an_expired_lease_passes_to_the_next_taker(store: Store) -> None:
    assert store.run(leases.take("relay", "a", 30))

    def expire(work: Work) -> None:
        row = work.session.get(Lease, "relay")
        assert row is not None
        row.expires_at = work.now - timedelta(seconds=1)

    store.run(expire)
    assert store.run(leases.take("relay", "b", 30))
    assert not store.run(leases.take("relay", "a", 30))
    assert _holders(store) == {"relay": "b"}


def test_release_by_name_or_all_of_a_holders_leases(store: Store) -> None:
    for name in ("hl7v2-out:one", "hl7v2-out:two", "relay"):
        assert store.run(leases.take(name, "a", 30))
    assert store.run(leases.take("other", "b", 30))
    store.run(leases.release("b", "relay"))  # not b's: nothing happens
    store.run(leases.release("a", "relay"))
    assert _holders(store) == {"hl7v2-out:one": "a", "hl7v2-out:two": "a", "other": "b"}
    store.run(leases.release("a"))
    assert _holders(store) == {"other": "b"}
    assert store.run(leases.take("relay", "b", 30))  # free again at once, not after expiry


@pytest.mark.parametrize("name", ["", "x" * (leases.NAME_MAX + 1)])
def test_a_name_the_column_cannot_hold_is_refused_up_front(name: str) -> None:
    with pytest.raises(ValueError):
        leases.take(name, "a", 30)
