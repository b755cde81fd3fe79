"""`rapport reindex`: re-embed every stored item with the configured model, in place, resumably.

Each user's items are read back from the vector store (`get`), encoded in batches and written over their old
vectors under the same ids (`upsert`), so links to items, the lexical index and the catalog stay as they are.
After each user a checkpoint row is written (memory/embedding_meta.py); a run that is interrupted (Ctrl-C, a
crash, a lost database) starts again with the users not yet done. Only when every user is done is the new
model recorded, so until then a server refuses to start with either model: no replica serves a store whose
vectors come from two models.

Blocking (a command-line tool): it holds the store the whole run, with the server stopped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from memory.catalog import Catalog
from memory.embedding import ModelIdentity, Vectors
from memory.generations import user_key
from memory.store import MemoryStore

# Users read from the catalog per page: the list of (tenant, user) is kept, the items are not.
_USER_PAGE = 1000


class ReindexRefused(RuntimeError):
    """The store cannot be re-embedded in place with this model."""


@dataclass(frozen=True, slots=True)
class ReindexReport:
    previous: str | None  # the model id recorded before (None: the store had never been served)
    target: str
    users: int  # users re-embedded by this run
    resumed: int  # users an earlier, interrupted run had already done
    items: int  # items re-embedded by this run

    @property
    def nothing_to_do(self) -> bool:
        return self.previous == self.target and self.users == 0 and self.resumed == 0


def all_users(catalog: Catalog) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    offset = 0
    while True:
        page, total = catalog.users(None, _USER_PAGE, offset)
        found += [(u.tenant, u.user) for u in page]
        offset += len(page)
        if not page or offset >= total:
            break
    # A stable order, so progress reads the same on a rerun (the catalog pages by last seen).
    return sorted(set(found))


def reindex(
    store: MemoryStore,
    catalog: Catalog,
    encode: Callable[[list[str]], Vectors],
    target: ModelIdentity,
    *,
    batch_size: int = 64,
    on_start: Callable[[int, int], None] | None = None,
    on_user: Callable[[int], None] | None = None,
) -> ReindexReport:
    """Re-embed every user's items with `encode` (blocking, L2-normalized rows of `target.dim`).

    `on_start(users_left, users_done_before)` is called once before the first user, `on_user(items)` after
    each user is re-embedded and checkpointed (a progress bar; an exception there stops the run, which then
    resumes from the next user).
    """
    meta = catalog.embedding
    recorded = meta.recorded()
    if recorded is not None and recorded.dim != target.dim:
        raise ReindexRefused(
            f"the store's vectors have {recorded.dim} dimensions and the configured model {target.model_id} makes "
            f"{target.dim}: in-place reindexing keeps the dimension (the vector columns and collections are "
            "built for it). Start a fresh store for this model, or choose a model of the same dimension."
        )
    pending = meta.unfinished_reindex()
    previous = recorded.model_id if recorded is not None else None
    if pending is None and recorded is not None and recorded.matches(target):
        return ReindexReport(previous, target.model_id, 0, 0, 0)
    meta.start_reindex(target)
    done = meta.reindexed_users(target)
    users = all_users(catalog)
    left = [(t, u) for t, u in users if user_key(t, u) not in done]
    if on_start is not None:
        on_start(len(left), len(users) - len(left))
    step = max(batch_size, 1)
    items_done = 0
    for tenant, user in left:
        items = store.get(tenant, user)
        for start in range(0, len(items), step):
            batch = items[start : start + step]
            vectors = encode([item.text for item in batch])
            if vectors.shape != (len(batch), target.dim):
                raise ReindexRefused(f"the embedder returned {vectors.shape} for {len(batch)} texts of {target.dim}")
            store.upsert(batch, vectors)
        meta.mark_reindexed(tenant, user, target, len(items))
        items_done += len(items)
        if on_user is not None:
            on_user(len(items))
    meta.finish_reindex(target)
    return ReindexReport(previous, target.model_id, len(left), len(users) - len(left), items_done)
