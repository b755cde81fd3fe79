"""The RPM library's front door: history in, construction, and request-time conditioning (stage 3)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memory.embedding import Embedder
from memory.llm import ChatLLM, bounded
from reasoning.rpm.config import RPMSettings
from reasoning.rpm.construct import Builder, BuildReport, Progress, feature_texts
from reasoning.rpm.extract import ExtractionResult, KeyphraseExtractor, LLMFeatureExtractor
from reasoning.rpm.factors import describe_factor
from reasoning.rpm.generate import REASONING_INSTRUCTION
from reasoning.rpm.models import Feature, HistoryItem, RPMRequestOptions
from reasoning.rpm.prompts import PromptLibrary
from reasoning.rpm.reasoning import ReasoningWriter
from reasoning.rpm.render import example_block, features_line
from reasoning.rpm.retrieve import Hit, feature_level, query_weights, text_level
from reasoning.rpm.store import RPMStore

log = logging.getLogger("rapport.rpm")


@dataclass
class Conditioning:
    """What stage 3 adds to a request, and what it reports about how it got there."""

    system: str | None
    details: dict[str, Any] = field(default_factory=dict)


class UserLocks:
    """One lock per user, kept only while someone holds or waits for it: a lock per user ever built stayed
    in memory for good, growing with the users a process served. Event-loop only (no thread touches it)."""

    def __init__(self) -> None:
        self._locks: dict[tuple[str, str], tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, key: tuple[str, str]) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (None, 0))
        lock = lock or asyncio.Lock()
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            _, left = self._locks[key]
            if left <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, left - 1)

    def __len__(self) -> int:
        return len(self._locks)


class RPMEngine:
    def __init__(
        self,
        settings: RPMSettings,
        store: RPMStore,
        embedder: Embedder,
        llm: ChatLLM | None,
        prompts: PromptLibrary | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.embedder = embedder
        # Bounded: extractions and reasoning paths are stored and re-fed into prompts, so a reply longer
        # than its call's max_tokens allows is cut here, whatever the upstream did.
        llm = bounded(llm) if llm is not None else None
        self.llm = llm
        self.prompts = prompts or PromptLibrary(settings.prompts_dir)
        self.cheap = KeyphraseExtractor(
            embedder, keyphrases=settings.cheap_keyphrases, max_features=settings.max_features_per_entry
        )
        self.llm_extractor = (
            LLMFeatureExtractor(
                llm, self.prompts, max_features=settings.max_features_per_entry, retries=settings.llm_retries,
                max_tokens=settings.extract_max_tokens, require_grounding=settings.require_grounding,
            )
            if llm is not None
            else None
        )
        writer = (
            ReasoningWriter(llm, self.prompts, retries=settings.llm_retries, max_tokens=settings.reasoning_max_tokens)
            if llm is not None
            else None
        )
        self.builder = Builder(store, embedder, settings, self.llm_extractor, self.cheap, writer)
        self._locks = UserLocks()

    @classmethod
    def open(
        cls, settings: RPMSettings, data_dir: Path, embedder: Embedder, llm: ChatLLM | None
    ) -> RPMEngine:
        folder = settings.store_dir or (data_dir / "rpm")
        return cls(settings, RPMStore(Path(folder) / "rpm.sqlite3"), embedder, llm)

    def close(self) -> None:
        self.store.close()

    # -- history and construction ------------------------------------------------------------------
    async def add_history(self, tenant: str, user: str, items: list[HistoryItem], source: str = "import") -> list[int]:
        rows = [(i.input, i.response, i.task) for i in items]
        return await asyncio.to_thread(self.store.add_entries, tenant, user, rows, source)

    async def build(
        self, tenant: str, user: str, *, mode: str | None = None, progress: Progress | None = None,
        rebuild: bool = False,
    ) -> BuildReport:
        # One build per user at a time: two would extract the same pending entries twice.
        async with self._locks.hold((tenant, user)):
            if rebuild:
                await asyncio.to_thread(self.store.reset_user, tenant, user)
            try:
                return await self.builder.run(tenant, user, mode=mode, progress=progress)
            except Exception as exc:
                # The job queue retries; meanwhile the admin API shows why this attempt stopped.
                await asyncio.to_thread(
                    self.store.set_build, tenant, user, "failed", 0, 0, f"{exc.__class__.__name__}: {exc}"[:300]
                )
                raise

    async def forget(self, tenant: str, user: str) -> int:
        async with self._locks.hold((tenant, user)):
            return await asyncio.to_thread(self.store.forget_user, tenant, user)

    # -- request path (stage 3) --------------------------------------------------------------------
    def resolve(self, options: RPMRequestOptions) -> RPMRequestOptions:
        s = self.settings
        return RPMRequestOptions(
            top_k=s.top_k if options.top_k is None else options.top_k,
            return_reasoning=s.return_reasoning if options.return_reasoning is None else options.return_reasoning,
            mode=options.mode or s.request_mode,
            budget_ms=s.request_budget_ms if options.budget_ms is None else options.budget_ms,
            task=options.task,
        )

    async def _query_features(self, query: str, opts: RPMRequestOptions, details: dict[str, Any]) -> ExtractionResult:
        if opts.mode in ("llm", "auto") and self.llm_extractor is not None:
            budget = (opts.budget_ms or 0) / 1000.0
            try:
                result = await asyncio.wait_for(self.llm_extractor.extract(query), timeout=budget)
                details["extraction_tokens"] = result.prompt_tokens + result.completion_tokens
                if result.ok:
                    return result
                details["fallback"] = f"llm extraction unusable ({result.reason}); used the cheap extractor"
            except TimeoutError:
                details["fallback"] = f"llm extraction over the {opts.budget_ms} ms budget; used the cheap extractor"
            except Exception as exc:  # an upstream failure must not cost the request its personalization
                log.warning("request-time feature extraction failed: %r", exc)
                details["fallback"] = f"llm extraction failed ({exc.__class__.__name__}); used the cheap extractor"
        elif opts.mode in ("llm", "auto"):
            details["fallback"] = "no LLM configured for extraction; used the cheap extractor"
        return await self.cheap.extract(query)

    async def retrieve(
        self, tenant: str, user: str, query: str, opts: RPMRequestOptions, details: dict[str, Any]
    ) -> tuple[list[Hit], list[Feature]]:
        extraction = await self._query_features(query, opts, details)
        details["extractor"] = extraction.extractor
        top_k = opts.top_k or 0
        feats, _, feat_vecs = await asyncio.to_thread(self.store.feature_vectors, tenant, user)
        allowed = None
        if opts.task is not None:
            ids = await asyncio.to_thread(self.store.entry_ids, tenant, user)
            entries = await asyncio.to_thread(self.store.entries, tenant, user, ids=ids)
            allowed = {e.id for e in entries if e.task == opts.task}
        if extraction.ok and feats:
            names, texts = feature_texts([f.name for f in extraction.features], [f.value for f in extraction.features])
            vecs = await self.embedder.embed(names + texts)
            factor_ids, centroids = await asyncio.to_thread(self.store.factor_centroids, tenant, user)
            factors = {f.id: f for f in await asyncio.to_thread(self.store.factors, tenant, user)}
            assoc = [factors[i].stats.association if i in factors else None for i in factor_ids]
            weights = query_weights(vecs[: len(names)], centroids, assoc, self.settings.cluster_distance)
            hits = feature_level(
                vecs[len(names) :], weights, feat_vecs, [f.entry_id for f in feats], top_k, allowed
            )
            details["retrieval"] = "features"
            return hits, extraction.features
        # Nothing to match on at the feature level: fall back to the query text, and say so.
        details["retrieval"] = "query_text"
        details.setdefault("fallback", "no features for the query; retrieved on the query text")
        entry_ids, input_vecs = await asyncio.to_thread(self.store.input_vectors, tenant, user, opts.task)
        if not entry_ids:
            return [], extraction.features
        qvec = (await self.embedder.embed([query[:2000]]))[0]
        return text_level(qvec, entry_ids, input_vecs, top_k), extraction.features

    async def condition(
        self, tenant: str, user: str, query: str, options: RPMRequestOptions | None = None
    ) -> Conditioning:
        started = time.perf_counter()
        opts = self.resolve(options or RPMRequestOptions())
        details: dict[str, Any] = {"return_reasoning": bool(opts.return_reasoning)}
        counts = await asyncio.to_thread(self.store.count_entries, tenant, user)
        details["history"] = sum(counts.values())
        details["constructed"] = counts.get("done", 0)
        if counts.get("pending") or counts.get("extracted"):
            details["construction_pending"] = counts.get("pending", 0) + counts.get("extracted", 0)
        factors = await asyncio.to_thread(self.store.factors, tenant, user)
        if not query.strip() or (not factors and counts.get("done", 0) == 0):
            details["used"] = False
            details["reason"] = "no constructed history for this user yet" if query.strip() else "empty query"
            return Conditioning(None, details)
        hits, qfeatures = await self.retrieve(tenant, user, query, opts, details)
        entries = await asyncio.to_thread(
            self.store.entries, tenant, user, ids=[h.entry_id for h in hits], details=True
        )
        by_id = {e.id: e for e in entries}
        shown = factors[: self.settings.max_factors_in_prompt]
        factor_text = "\n".join(describe_factor(f.name, f.stats) for f in shown) or "- (none yet)"
        # Stored text goes in quoted (reasoning/rpm/render.py): it is data about the user, never instructions.
        found = [by_id[h.entry_id] for h in hits if h.entry_id in by_id]
        blocks = [example_block(n, entry) for n, entry in enumerate(found, 1)]
        system = self.prompts.render(
            "generate",
            factors=factor_text,
            examples="\n\n".join(blocks) or "(no similar past inputs)",
            query_features=features_line(qfeatures, "(none found)"),
            reasoning_instruction=REASONING_INSTRUCTION,
        )
        details.update(
            used=True,
            factors=[f.name for f in shown],
            query_features=[f.model_dump() for f in qfeatures],
            examples=[{"entry_id": h.entry_id, "score": round(h.score, 4)} for h in hits],
            added_chars=len(system),
            prepare_ms=round((time.perf_counter() - started) * 1000.0, 2),
        )
        return Conditioning(system, details)

    # -- inspection helpers for the admin API ------------------------------------------------------
    async def summary(self, tenant: str, user: str) -> dict[str, Any]:
        counts = await asyncio.to_thread(self.store.count_entries, tenant, user)
        factors = await asyncio.to_thread(self.store.factors, tenant, user)
        features = await asyncio.to_thread(self.store.features, tenant, user)
        paths = await asyncio.to_thread(self.store.paths, tenant, user)
        build = await asyncio.to_thread(self.store.build, tenant, user)
        return {
            "entries": counts,
            "features": len(features),
            "factors": len(factors),
            "paths": len(paths),
            "build": build,
        }

