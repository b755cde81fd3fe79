"""Stages 1 and 2 offline: extract features of pending history entries, re-cluster the user's factors,
write reasoning paths for entries that lack one. Incremental: each call only does the missing work."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from memory.embedding import Embedder
from memory.llm import cap_text
from reasoning.rpm.config import RPMSettings
from reasoning.rpm.extract import ExtractionResult, KeyphraseExtractor, LLMFeatureExtractor
from reasoning.rpm.factors import build_factors
from reasoning.rpm.reasoning import FactorMap, ReasoningWriter, template_path
from reasoning.rpm.store import RPMStore

log = logging.getLogger("rapport.rpm.construct")

Progress = Callable[[int, int], Awaitable[None] | None]


@dataclass
class BuildReport:
    extracted: int = 0
    skipped: int = 0
    fallback_cheap: int = 0
    factors: int = 0
    paths_llm: int = 0
    paths_template: int = 0
    llm_calls: int = 0
    skip_reasons: list[str] = field(default_factory=list)


def feature_texts(names: list[str], values: list[str]) -> tuple[list[str], list[str]]:
    return list(names), [f"{n}: {v}" for n, v in zip(names, values, strict=True)]


class Builder:
    def __init__(
        self,
        store: RPMStore,
        embedder: Embedder,
        settings: RPMSettings,
        llm_extractor: LLMFeatureExtractor | None,
        cheap: KeyphraseExtractor,
        writer: ReasoningWriter | None,
    ) -> None:
        self.store = store
        self.embedder = embedder
        self.settings = settings
        self.llm_extractor = llm_extractor
        self.cheap = cheap
        self.writer = writer

    async def _extract(self, text: str, mode: str, report: BuildReport) -> tuple[ExtractionResult, str | None]:
        note: str | None = None
        if mode == "llm" and self.llm_extractor is not None:
            result = await self.llm_extractor.extract(text)
            report.llm_calls += result.attempts
            if result.ok:
                return result, None
            note = f"llm extraction skipped: {result.reason}"
            report.skip_reasons.append(note)
        result = await self.cheap.extract(text)
        if note is not None and result.ok:
            report.fallback_cheap += 1
        return result, note

    async def run(
        self, tenant: str, user: str, *, mode: str | None = None, progress: Progress | None = None
    ) -> BuildReport:
        mode = mode or self.settings.construction_mode
        report = BuildReport()
        pending = await asyncio.to_thread(self.store.entry_ids, tenant, user, "pending")
        needs_path = await asyncio.to_thread(self.store.entry_ids, tenant, user, "extracted")
        total = len(pending) + 1 + len(pending) + len(needs_path)
        done = 0

        async def tick(step: int = 1) -> None:
            nonlocal done
            done += step
            if progress is not None:
                # First: a progress callback may cancel the build (the user was forgotten meanwhile).
                out = progress(done, total)
                if inspect.isawaitable(out):
                    await out
            await asyncio.to_thread(self.store.set_build, tenant, user, "running", done, total)

        await asyncio.to_thread(self.store.set_build, tenant, user, "running", 0, total)
        for entry in await asyncio.to_thread(self.store.entries, tenant, user, ids=pending):
            result, note = await self._extract(entry.input, mode, report)
            input_vec = (await self.embedder.embed([entry.input[:2000]]))[0]
            await asyncio.to_thread(self.store.set_input_vec, tenant, user, entry.id, input_vec)
            if not result.ok:
                report.skipped += 1
                reason = note or "no features found"
                await asyncio.to_thread(self.store.set_status, tenant, user, entry.id, "skipped", reason)
                await tick()
                continue
            names, feats = feature_texts([f.name for f in result.features], [f.value for f in result.features])
            vecs = await self.embedder.embed(names + feats)
            await asyncio.to_thread(
                self.store.add_features, tenant, user, entry.id, result.features, result.extractor,
                vecs[: len(names)], vecs[len(names) :],
            )
            await asyncio.to_thread(self.store.set_status, tenant, user, entry.id, "extracted", note)
            report.extracted += 1
            await tick()

        factors = await self.recluster(tenant, user)
        report.factors = len(factors)
        await tick()

        targets = await asyncio.to_thread(self.store.entry_ids, tenant, user, "extracted")
        total = done + len(targets)
        for entry in await asyncio.to_thread(self.store.entries, tenant, user, ids=targets, details=True):
            if self.writer is None or mode == "cheap":
                text, source = template_path(entry.features, factors, entry.response), "template"
            else:
                path = await self.writer.write(entry.input, entry.response, entry.features, factors)
                report.llm_calls += 1 if path.source == "llm" else self.writer.retries + 1
                text, source = path.text, path.source
            # Paths are re-fed into every conditioned request: stored within their cap, whatever wrote them.
            text, cut = cap_text(text, self.settings.path_max_chars, at_word=True)
            if cut:
                log.warning("reasoning path of entry %d cut to %d characters", entry.id, self.settings.path_max_chars)
            vec = (await self.embedder.embed([text[:2000]]))[0]
            await asyncio.to_thread(self.store.set_path, tenant, user, entry.id, text, source, vec)
            await asyncio.to_thread(self.store.set_status, tenant, user, entry.id, "done", None)
            if source == "llm":
                report.paths_llm += 1
            else:
                report.paths_template += 1
            await tick()
        message = (
            f"{report.extracted} extracted, {report.skipped} skipped, {report.factors} factors, "
            f"{report.paths_llm + report.paths_template} paths"
        )
        await asyncio.to_thread(self.store.set_build, tenant, user, "done", done, total, message)
        log.info("rpm build %s/%s: %s", tenant, user, message)
        return report

    async def recluster(self, tenant: str, user: str) -> FactorMap:
        """Re-derive all of the user's factors from all of their features (cheap: no LLM call)."""
        features, name_vecs, _ = await asyncio.to_thread(self.store.feature_vectors, tenant, user)
        entries = await asyncio.to_thread(self.store.entries, tenant, user, ids=sorted({f.entry_id for f in features}))
        responses = {e.id: e.response for e in entries}
        rows = build_factors(
            features, name_vecs, responses,
            threshold=self.settings.cluster_distance, min_support=self.settings.min_factor_support,
        )
        ids = await asyncio.to_thread(self.store.replace_factors, tenant, user, rows)
        return {fid: (row[0], row[2]) for fid, row in zip(ids, rows, strict=True)}
