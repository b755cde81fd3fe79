"""The memory service: ingest, retrieve + compose, admin operations and forgetting, over one store.

Blocking calls (Chroma, SQLite) run in a small thread pool; embedding runs in the embedder's own thread.
Split by seam: request options and the retrieval result in options.py, the retrieval pipeline in recall.py,
forget/export/import (memory's part of the user-data registry) in userdata.py; this module wires them and
keeps ingest, summaries and the admin reads and edits.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar

from memory import recall
from memory.catalog import Catalog, Summary, UserRecord
from memory.compose import Composer
from memory.config import MemorySettings
from memory.embedding import Embedder, Vectors
from memory.generations import admitted
from memory.items import MemoryItem
from memory.jobs import JobQueue
from memory.lexical import LexicalIndex, SqliteLexicalIndex
from memory.llm import ChatLLM
from memory.options import MemoryOptions, Retrieval
from memory.pg_store import TABLE as PG_TABLE
from memory.pg_store import PgVectorStore
from memory.redact import Redactor, regex_redactor
from memory.store import MemoryStore
from memory.stores.choose import open_store
from memory.stores.pg_lexical import PgLexicalIndex
from memory.summaries import SUMMARY_JOB, TaskRouter, make_handler
from memory.userdata import MemoryUserData
from memory.writer import IngestWriter
from rapport.core.database import Database
from rapport.core.messages import append_system, last_user_text

# MemoryOptions and Retrieval are imported from here by the plugin, tests and benches.
__all__ = ["MemoryOptions", "MemoryService", "Retrieval"]

log = logging.getLogger("rapport.memory")
T = TypeVar("T")


class MemoryService:
    def __init__(
        self,
        settings: MemorySettings,
        *,
        data_dir: Any,
        embedder: Embedder,
        jobs: JobQueue,
        llm_factory: Callable[[], ChatLLM] | None = None,
        store: MemoryStore | None = None,
        redactor: Redactor | None = None,
        lexical: LexicalIndex | None = None,
        catalog_db: Database | None = None,
        shared_db: Database | None = None,
        migrate: bool = True,
    ) -> None:
        self.settings = settings
        self.embedder = embedder
        self.jobs = jobs
        root = data_dir / "memory"
        # With a shared database (`shared_db`, from `database_url`) nothing of memory is kept in the data dir:
        # vectors in pgvector (or a Chroma server), no staging journal, no local lexical index (a replica's
        # file would not be shared with the others). See memory/stores/choose.py.
        if lexical is None and store is None and settings.store == "embedded" and shared_db is None:
            lexical = SqliteLexicalIndex(root / "lexical.sqlite3")
        # None (a store given from outside, a Chroma server, shared state): dense retrieval only, no neighbours.
        self.lexical = lexical
        if store is None:
            dim = embedder.dim if shared_db is not None and settings.store == "embedded" else None
            store = open_store(settings, root, shared_db=shared_db, dim=dim, migrate=migrate)
        self.store: MemoryStore = store
        if self.lexical is None and isinstance(store, PgVectorStore):
            # Shared state: full-text search in the same PostgreSQL table, nothing per user in the process.
            self.lexical = PgLexicalIndex(store.db, PG_TABLE)
        # The catalog's database comes from the builder (shared PostgreSQL, or the embedded file of the
        # `memory/catalog` store); without one, the service opens today's file under the data dir itself.
        self.catalog = Catalog(catalog_db if catalog_db is not None else root / "catalog.sqlite3", migrate=migrate)
        self.composer = Composer(settings.template_path)
        self.tasks = TaskRouter(settings, embedder)
        self.redactor = redactor if redactor is not None else (regex_redactor if settings.redact else None)
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="rapport-memory")
        # Batched writes get their own thread so that request-path reads never queue behind them.
        self._write_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rapport-memory-write")
        self.writer = IngestWriter(
            getattr(embedder, "embed_background", embedder.embed), self._commit, max_batch=settings.ingest_max_batch
        )
        # The forget generation each queued item was submitted under, by the item object's id (items have
        # slots, and the writer passes them through untouched); set while `ingest` waits for them.
        self._expected: dict[int, int | None] = {}
        # Items and catalog touches left out because their user was forgotten while they were on their way.
        self.dropped_after_forget = 0
        self._closed = False
        if llm_factory is not None:
            jobs.register(SUMMARY_JOB, make_handler(self, llm_factory))  # type: ignore[arg-type]
        # Memory's forget, export and import, in the registry every store holding user data registers in.
        self.userdata = MemoryUserData(self)
        jobs.userdata.register(self.userdata)

    async def _io(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._write_pool.shutdown(wait=True)
        self._pool.shutdown(wait=True)
        self.store.close()  # a staged store flushes what it holds first
        if self.lexical is not None:
            self.lexical.close()
        self.catalog.close()

    # -- ingest -------------------------------------------------------------------------------------

    def _prepare(self, text: str) -> str:
        text = text.strip()[: self.settings.max_item_chars]
        return self.redactor(text) if self.redactor else text

    async def ingest(self, items: list[MemoryItem], *, generation: int | None = None) -> list[str]:
        """Embed and store items (durable when this returns); returns ids newly stored (not duplicates).

        Concurrent calls are coalesced into shared batches by the writer (see memory/writer.py).
        `generation`: the user's forget generation when the caller's request started (all items are then that
        user's); None reads it now. Items of a user forgotten since are not written (memory/generations.py).
        """
        prepared: list[MemoryItem] = []
        for item in items:
            text = self._prepare(item.text)
            if text:
                item.text = text
                item.id = ""
                item.__post_init__()
                prepared.append(item)
        if not prepared:
            return []
        owners = {(item.tenant, item.user) for item in prepared}
        if generation is not None and len(owners) == 1:
            current = {next(iter(owners)): generation}
        else:
            current = await self._io(self.catalog.generations.current_many, owners)
        for item in prepared:
            self._expected[id(item)] = current[(item.tenant, item.user)]
        try:
            return await self.writer.submit(prepared)
        finally:
            for item in prepared:
                self._expected.pop(id(item), None)

    async def _commit(self, items: list[MemoryItem], vectors: Vectors) -> list[str]:
        loop = asyncio.get_running_loop()
        stored, records = await loop.run_in_executor(self._write_pool, self._commit_sync, items, vectors)
        if self.settings.summaries:
            for record in records:
                if record.since_summary >= self.settings.summary_every:
                    await self.request_summaries(record.tenant, record.user)
        return stored

    def _commit_sync(self, items: list[MemoryItem], vectors: Vectors) -> tuple[list[str], list[UserRecord]]:
        expected = [self._expected.get(id(item)) for item in items]
        owners = [(item.tenant, item.user) for item in items]
        generations = self.catalog.generations
        # The generation each user's items were written under, as the store's write saw it.
        written: dict[tuple[str, str], int] = {}
        left_out = 0

        def admit(current: dict[tuple[str, str], int]) -> list[bool]:
            nonlocal left_out
            ok = admitted(expected, owners, current)
            written.update({owner: current[owner] for owner, yes in zip(owners, ok, strict=True) if yes})
            left_out = ok.count(False)
            return ok

        # The in-process order against a forget of this replica (the staged and Chroma stores have no
        # transaction to check in); PostgreSQL also checks inside the items' own transaction, for every replica.
        with generations.holding(set(owners)):
            if isinstance(self.store, PgVectorStore):
                stored = self.store.add(items, vectors, admit=lambda conn: admit(generations.locked(conn, set(owners))))
            else:
                keep = [i for i, ok in enumerate(admit(generations.current_many(set(owners)))) if ok]
                stored = self.store.add([items[i] for i in keep], vectors[keep]) if keep else []
            if self.lexical is not None and stored:
                # Indexed in the same write as the store (staged or not), so a new item is searchable by its
                # words as soon as it is acknowledged; only new ids, so a duplicate does not move the first one's
                # place.
                fresh = set(stored)
                self.lexical.add([item for item in items if item.id in fresh])
        owner = {item.id: (item.tenant, item.user) for item in items}
        added = Counter(owner[item_id] for item_id in stored)
        counts = {key: 0 for key in owners if key in written}
        counts.update(added)
        records = self.catalog.touch_many(counts, generations=written)
        dropped = left_out + len(counts) - len(records)
        if dropped:
            self.dropped_after_forget += dropped
            log.info("memory: %d writes of forgotten users dropped (a recording raced a forget)", dropped)
        return stored, records

    async def record_exchange(
        self,
        tenant: str,
        user: str,
        messages: list[dict[str, Any]],
        answer: str,
        *,
        conversation_id: str | None,
        model: str | None,
        task: str | None,
        generation: int | None = None,
    ) -> list[str]:
        """`generation`: the user's forget generation when the request started (`Retrieval.generation`)."""
        now = time.time()
        items: list[MemoryItem] = []
        text = last_user_text(messages)
        if text.strip():
            items.append(MemoryItem(tenant, user, text, "user", now, conversation_id, model, task))
        if self.settings.store_assistant_turns and answer.strip():
            items.append(
                MemoryItem(tenant, user, answer, "assistant", now + 1e-3, conversation_id, model, task)
            )
        return await self.ingest(items, generation=generation)

    # -- retrieval ----------------------------------------------------------------------------------

    async def retrieve(
        self, tenant: str, user: str, query: str, options: MemoryOptions | None = None
    ) -> Retrieval:
        return await recall.retrieve(self, tenant, user, query, options)

    async def compose(
        self, tenant: str, user: str, messages: list[dict[str, Any]], options: MemoryOptions | None = None
    ) -> tuple[list[dict[str, Any]], Retrieval]:
        """The messages with the memory block added to their one leading system message, and what was added."""
        # The forget generation is read as the request starts (beside retrieval, so it adds no wait): the
        # exchange recorded after the response is written only if no forget of the user came in between.
        generation, retrieval = await asyncio.gather(
            self._io(self.catalog.generations.current, tenant, user),
            self.retrieve(tenant, user, last_user_text(messages), options),
        )
        retrieval.generation = generation
        return append_system(messages, retrieval.block), retrieval

    # -- summaries ----------------------------------------------------------------------------------

    async def request_summaries(self, tenant: str, user: str, task: str | None = None) -> list[str]:
        tasks = [task] if task else list(self.settings.tasks)
        ids = []
        for name in tasks:
            ids.append(
                await self.jobs.enqueue(
                    SUMMARY_JOB,
                    {"task": name},
                    tenant=tenant,
                    user=user,
                    dedupe_key=f"summary\x00{tenant}\x00{user}\x00{name}",
                )
            )
        await self._io(self.catalog.reset_since_summary, tenant, user)
        return ids

    async def summary_inputs(self, tenant: str, user: str, task: str) -> tuple[list[str], str | None]:
        """The user's items to summarize (task-relevant + recent, oldest first) and the previous version."""
        limit = self.settings.summary_max_items
        items = [it for it in await self.items(tenant, user) if it.role == "user"]
        chosen = {it.id: it for it in items[-(limit - limit // 2) :]}
        if len(items) > len(chosen):
            spec = self.settings.tasks.get(task) or self.settings.tasks[self.settings.default_task]
            vector = (await self.embedder.embed([spec.description]))[0]
            hits = await self._io(self.store.query, tenant, user, vector, limit)
            for hit in hits:
                if len(chosen) >= limit:
                    break
                if hit.item.role == "user":
                    chosen.setdefault(hit.item.id, hit.item)
        previous = await self._io(self.catalog.latest_summary, tenant, user, task)
        ordered = sorted(chosen.values(), key=lambda it: it.ts)
        return [it.text for it in ordered], previous.text if previous else None

    async def generation(self, tenant: str, user: str) -> int:
        """The user's forget generation now (a summary job reads it before the items it summarizes)."""
        return await self._io(self.catalog.generations.current, tenant, user)

    async def save_summary(
        self,
        tenant: str,
        user: str,
        task: str,
        text: str,
        item_count: int,
        model: str | None,
        generation: int | None = None,
    ) -> Summary:
        """Raises LookupError, writing nothing, if the user was forgotten (since `generation`, when given)."""
        return await self._io(
            partial(self.catalog.add_summary, generation=generation), tenant, user, task, text, item_count, model
        )

    async def summaries(self, tenant: str, user: str, task: str | None = None) -> list[Summary]:
        return await self._io(self.catalog.summaries, tenant, user, task)

    # -- admin reads and edits ----------------------------------------------------------------------

    async def users(self, tenant: str | None, limit: int, offset: int) -> tuple[list[UserRecord], int]:
        return await self._io(self.catalog.users, tenant, limit, offset)

    async def user(self, tenant: str, user: str) -> UserRecord | None:
        return await self._io(self.catalog.user, tenant, user)

    async def items(self, tenant: str, user: str, where: dict[str, Any] | None = None) -> list[MemoryItem]:
        return await self._io(self.store.get, tenant, user, None, where)

    async def item(self, tenant: str, user: str, item_id: str) -> MemoryItem | None:
        found = await self._io(self.store.get, tenant, user, [item_id], None)
        return found[0] if found else None

    async def search(
        self, tenant: str, user: str, query: str, k: int, where: dict[str, Any] | None = None
    ) -> list[tuple[MemoryItem, float]]:
        vector = (await self.embedder.embed([query]))[0]
        hits = await self._io(self.store.query, tenant, user, vector, max(k * 4, k) if where else k)
        out = [(h.item, h.similarity) for h in hits if _matches(h.item, where)]
        return out[:k]

    async def delete_item(self, tenant: str, user: str, item_id: str) -> bool:
        if await self.item(tenant, user, item_id) is None:
            return False
        await self._io(self.store.delete, tenant, user, [item_id])
        if self.lexical is not None:
            await self._io(self.lexical.delete, tenant, user, [item_id])
        await self._sync_count(tenant, user)
        return True

    async def edit_item(
        self, tenant: str, user: str, item_id: str, text: str | None, **meta: Any
    ) -> MemoryItem | None:
        """Edit text (re-embedded) and/or metadata. The id stays, so links to the item keep working."""
        old = await self.item(tenant, user, item_id)
        if old is None:
            return None
        new = MemoryItem(**{**old.to_dict(), **{k: v for k, v in meta.items() if v is not None}})
        new.id = old.id
        if text is not None:
            new.text = self._prepare(text)
        vectors = await self.embedder.embed([new.text])
        await self._io(self.store.upsert, [new], vectors)
        if self.lexical is not None:
            await self._io(self.lexical.add, [new])  # the new words replace the old ones
        return new

    async def _sync_count(self, tenant: str, user: str) -> None:
        count = await self._io(self.store.count, tenant, user)
        await self._io(self.catalog.set_count, tenant, user, count)

    # -- export / import / forget -------------------------------------------------------------------

    async def export(self, tenant: str, user: str) -> dict[str, Any]:
        """Memory's own document (`rapport.memory.v1`); the admin export is the registry's, memory a section."""
        return {
            "format": "rapport.memory.v1",
            "tenant": tenant,
            "user": user,
            "exported_at": time.time(),
            **await self.userdata.export(tenant, user),
        }

    async def import_user(self, tenant: str, user: str, data: dict[str, Any]) -> dict[str, int]:
        """Import items and summaries into (tenant, user), whatever ids the export came from."""
        return await self.userdata.import_(tenant, user, data)

    async def forget(self, tenant: str, user: str) -> dict[str, Any]:
        """Remove the user everywhere: jobs, then every registered store (memory's own included)."""
        return await self.jobs.forget_user(tenant, user)


def _matches(item: MemoryItem, where: dict[str, Any] | None) -> bool:
    if not where:
        return True
    return all(getattr(item, key, None) == value for key, value in where.items())
