"""What every edge hands the core: settings, the store and the partner directory (immutable)."""

from __future__ import annotations

from dataclasses import dataclass

from hub.db.uow import Store, open_store
from hub.partners.loader import PartnerDirectory, load_directory
from hub.settings import Settings


class ProfileErrors(RuntimeError):
    pass


@dataclass(frozen=True)
class HubContext:
    settings: Settings
    store: Store
    partners: PartnerDirectory


def build_context(settings: Settings, *, check_store: bool = True) -> HubContext:
    from adapters.registry import channel_schemas

    settings.check_production()
    partners, errors = load_directory(settings.profiles_dir, channel_schemas())
    if errors:
        raise ProfileErrors("partner profiles are invalid:\n" + "\n".join(str(e) for e in errors))
    store = open_store(
        settings.database_url,
        partitions=settings.bus_partitions,
        batch_max=settings.commit_batch_max,
        writer_threads=settings.writer_threads,
        check=check_store,
        limits=settings.lock_limits,
    )
    return HubContext(settings=settings, store=store, partners=partners)
