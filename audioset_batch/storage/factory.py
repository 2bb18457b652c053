"""The one place a store is built: its own module, so the base module imports no backend (no circle)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from audioset_batch.storage.object_store import ObjectStore

if TYPE_CHECKING:
    from audioset_batch.settings import Settings

_stores: dict[tuple[object, ...], ObjectStore] = {}


def store_for(scheme: str, settings: Settings) -> ObjectStore:
    """One store (one connection pool) per scheme and endpoint, reused across tasks in a process."""
    if scheme == "file":
        cache_key: tuple[object, ...] = ("file", str(settings.local_root.resolve()))
    else:
        secrets = (settings.cos_access_key_id, settings.cos_secret_access_key, settings.cos_api_key)
        cache_key = (
            "cos",
            settings.cos_endpoint,
            settings.cos_instance_id,
            *(s.get_secret_value() if s is not None else None for s in secrets),
        )
    store = _stores.get(cache_key)
    if store is None:
        if scheme == "file":
            from audioset_batch.storage.local_store import LocalStore

            store = LocalStore(settings.local_root)
        else:
            from audioset_batch.storage.cos_store import CosStore

            store = CosStore(settings)
        _stores[cache_key] = store
    return store
