"""The embedded Chroma client, with the capacity of chromadb's index cache chosen by the caller.

chromadb 1.x runs embedded Chroma in its Rust bindings, which keep each opened collection's HNSW index
loaded in a cache whose capacity is not a setting: it is the process's open-file soft limit divided by five
(4000 indexes with `ulimit -n 20000`, about 2.7 MB each for a small user; 204 with the common 1024). The
Python-side settings that look like the answer (`chroma_segment_cache_policy`, `chroma_memory_limit_bytes`)
only configure the old Python segment manager, which the Rust bindings do not use. And the cache must not be
let evict: an index evicted in-process comes back without what was written since its last persist (see
memory/store.py). ChromaStore bounds residency by reopening the client instead, and sizes this cache so that
it never fills in between.

The capacity is read once, when the bindings start, from the API object's `hnsw_cache_size`; so the client's
`System` is built here by hand, the attribute set between construction and start, and the client attached to
it with `Client.from_system`, the same steps `chromadb.PersistentClient` takes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import chromadb
from chromadb.api import ServerAPI
from chromadb.api.client import Client
from chromadb.api.shared_system_client import SharedSystemClient
from chromadb.config import Settings, System
from chromadb.telemetry.product import ProductTelemetryClient


def embedded_settings(path: Path) -> Settings:
    settings = Settings(anonymized_telemetry=False)
    settings.persist_directory = str(path)
    settings.is_persistent = True
    return settings


def open_embedded_client(path: Path, index_cache_capacity: int | None) -> Any:
    """A persistent client on `path` whose bindings keep up to `index_cache_capacity` HNSW indexes loaded
    (None: chromadb's own default, from the open-file limit)."""
    settings = embedded_settings(path)
    if index_cache_capacity is None or SharedSystemClient._identifier_to_system.get(str(path)) is not None:
        # A system already running on this path (another store in this process) is shared, as chromadb
        # shares it: its bound was fixed when it started, and a second system on the same files would be
        # two writers.
        return chromadb.PersistentClient(path=str(path), settings=settings)
    system = System(settings)
    system.instance(ProductTelemetryClient)  # type: ignore[type-abstract]
    api = system.instance(ServerAPI)  # type: ignore[type-abstract]
    if not hasattr(api, "hnsw_cache_size"):
        raise RuntimeError(
            "this chromadb version has no hnsw_cache_size to size; set memory.max_open_collections to null"
        )
    api.hnsw_cache_size = index_cache_capacity
    system.start()
    try:
        return Client.from_system(system)
    except BaseException:
        system.stop()
        SharedSystemClient._identifier_to_system.pop(str(path), None)
        raise


def hnsw_cache_capacity(client: Any) -> int | None:
    """How many HNSW indexes the client's bindings keep loaded (for tests and doctor-style checks)."""
    server = getattr(client, "_server", None)
    capacity = getattr(server, "hnsw_cache_size", None)
    return int(capacity) if capacity is not None else None


def return_freed_memory() -> None:
    """Hand memory freed by a closed client back to the OS. Why: glibc keeps freed heap pages in the process
    (fragmented by the many small allocations of Chroma's indexes), so after a reopen RSS kept every index
    ever loaded: 250 collections opened, closed, opened again measured 748, 757, 759 MB full and 123 MB
    closed with this, against 756, 768, 1398 MB full and 130, 763, 1385 MB closed without it."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim, or no such call
        pass
