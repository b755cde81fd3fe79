"""Retrieval for one request: embed the query, pick the task, read the summary, gather dense (and lexical)
candidates, score, diversify, add conversation neighbours and compose the memory block within the budget."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

from memory.embedding import Vectors
from memory.lexical import LexicalHit
from memory.options import MemoryOptions, Retrieval
from memory.retrieval import fetch_hits, fuse, mmr, score
from memory.store import Hit

if TYPE_CHECKING:
    from memory.service import MemoryService


async def retrieve(
    service: MemoryService, tenant: str, user: str, query: str, options: MemoryOptions | None = None
) -> Retrieval:
    started = time.perf_counter()
    options = options or MemoryOptions()
    k = service.settings.top_k if options.k is None else options.k
    budget = service.settings.token_budget if options.budget is None else options.budget
    # No query text (an image-only turn): there is nothing to be similar to, so no item is retrieved
    # (embedding a placeholder would inject whatever happens to be nearest). The summary still may be:
    # it describes the user for the task, whatever the turn says, so it is the one thing worth adding.
    vector = (await service.embedder.embed([query]))[0] if query.strip() else None
    embedded = time.perf_counter()
    task = options.task or service.settings.default_task
    if options.task is None and vector is not None:
        task = await service.tasks.infer(vector)
    summary = None
    if options.summary and service.settings.summaries:
        summary = await service._io(service.catalog.latest_summary, tenant, user, task)
    summary_skipped = None
    if summary is not None and not service.composer.summary_fits(summary.text, task, budget):
        # Decided before retrieval: a summary that will not be shown must not cost the request items.
        summary, summary_skipped = None, "does not fit the token budget"
    if summary is not None:
        k = math.ceil(k * service.settings.summary_item_fraction)
    use_lexical = service.lexical is not None and (
        service.settings.lexical if options.lexical is None else options.lexical
    )
    hits: list[Hit] = []
    lexical_scores: dict[str, float] = {}
    if vector is not None and k > 0:
        n = k * service.settings.candidates_factor if service.settings.mmr_lambda < 1.0 else k
        if use_lexical:
            hits, lexical_scores = await _hybrid_candidates(
                service, tenant, user, query, vector, n, options.lexical_rank
            )
        else:
            hits = await service._io(service.store.query, tenant, user, vector, n)
    searched = time.perf_counter()
    hits = [
        h for h in hits if h.similarity >= service.settings.min_similarity or h.item.id in lexical_scores
    ]
    relevance = None
    if lexical_scores:
        relevance = fuse(
            [h.similarity for h in hits],
            {i: lexical_scores[h.item.id] for i, h in enumerate(hits) if h.item.id in lexical_scores},
            method=service.settings.lexical_fusion,
            weight=service.settings.lexical_weight,
            rrf_k=service.settings.rrf_k,
        )
    scores = score(
        hits,
        half_life_days=service.settings.recency_half_life_days,
        recency_weight=service.settings.recency_weight,
        relevance=relevance,
    )
    chosen = [hits[i].item for i in mmr(hits, scores, k, service.settings.mmr_lambda)]
    use_neighbours = service.lexical is not None and (
        service.settings.neighbours if options.neighbours is None else options.neighbours
    )
    context = None
    if use_neighbours and chosen and service.lexical is not None:
        context = await service._io(
            service.lexical.neighbours, tenant, user, chosen, service.settings.neighbour_max_gap_s
        )
    composed = service.composer.block(chosen, summary.text if summary else None, task, budget, context)
    result = Retrieval(
        task=task,
        items=chosen[: composed.items_used],
        summary=summary if composed.summary_used else None,
        block=composed.text,
        tokens=composed.tokens,
        candidates=len(hits),
        skipped=None if vector is not None else "no text in the last user message",
        summary_skipped=summary_skipped,
        lexical=use_lexical and vector is not None,
        lexical_matches=len(lexical_scores),
        lexical_rank=_rank_used(service, options.lexical_rank) if use_lexical and vector is not None else None,
        neighbours=list(composed.neighbours),
    )
    result.ms = (time.perf_counter() - started) * 1000.0
    result.embed_ms = (embedded - started) * 1000.0
    result.search_ms = (searched - embedded) * 1000.0
    return result


def _rank_used(service: MemoryService, asked: str | None) -> str:
    ranks: tuple[str, ...] = getattr(service.lexical, "ranks", ("bm25",))
    return asked if asked in ranks else str(getattr(service.lexical, "rank", ranks[0]))


async def _hybrid_candidates(
    service: MemoryService, tenant: str, user: str, query: str, vector: Vectors, n: int, rank: str | None = None
) -> tuple[list[Hit], dict[str, float]]:
    """Dense and lexical candidates together (each with its cosine), and the lexical ones' scores."""
    assert service.lexical is not None
    n_lexical = service.settings.lexical_candidates or n
    search: Callable[..., list[LexicalHit]] = service.lexical.search
    if rank is not None and rank in getattr(service.lexical, "ranks", ()):
        search = partial(search, rank=rank)
    hits, matched = await asyncio.gather(
        service._io(service.store.query, tenant, user, vector, n),
        service._io(search, tenant, user, query, n_lexical),
    )
    known = {h.item.id for h in hits}
    missing = [m.id for m in matched if m.id not in known]
    if missing:
        hits = hits + await service._io(fetch_hits, service.store, tenant, user, missing, vector)
    present = {h.item.id for h in hits}
    # An id the store no longer has (a delete that reached the store but not the index) is never shown.
    return hits, {m.id: m.score for m in matched if m.id in present}
