"""Task-aware summaries (Richardson et al. 2023): an LLM writes, offline, a profile of the user per task.

The request path only reads the latest version; regeneration runs as a job on the durable queue.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from memory.compose import quote
from memory.config import MemorySettings
from memory.embedding import Embedder, Vectors
from memory.jobs import Job, Progress
from memory.llm import ChatLLM, bounded, cap_text

if TYPE_CHECKING:
    from memory.service import MemoryService

log = logging.getLogger("rapport.memory")

SUMMARY_JOB = "memory.summary"


class TaskRouter:
    """Infers a request's task by embedding similarity to the configured task descriptions."""

    def __init__(self, settings: MemorySettings, embedder: Embedder) -> None:
        self._settings = settings
        self._embedder = embedder
        self._names = list(settings.tasks)
        self._vectors: Vectors | None = None

    async def infer(self, query_vector: Vectors) -> str:
        if len(self._names) <= 1:
            return self._names[0] if self._names else self._settings.default_task
        if self._vectors is None:
            self._vectors = await self._embedder.embed(
                [self._settings.tasks[n].description for n in self._names]
            )
        sims = self._vectors @ np.asarray(query_vector, dtype=np.float32).reshape(-1)
        best = int(np.argmax(sims))
        if float(sims[best]) < self._settings.task_inference_threshold:
            return self._settings.default_task
        return self._names[best]


def build_prompt(settings: MemorySettings, task: str, texts: list[str], previous: str | None = None) -> str:
    spec = settings.tasks.get(task) or settings.tasks[settings.default_task]
    cut = settings.summary_item_chars
    lines = "\n".join(f"- {quote(t if len(t) <= cut else t[:cut] + '…')}" for t in texts)
    if previous:
        # A version stored before summaries were capped (or imported) must not grow this prompt either.
        previous, _ = cap_text(previous, settings.summary_char_cap, at_word=True)
    return spec.prompt.format(
        task_description=spec.description,
        max_words=settings.summary_max_words,
        items=lines,
        previous=quote(previous) if previous else "(none yet)",
    )


def clean_summary(text: str) -> str:
    text = text.strip()
    for prefix in ("Profile:", "profile:", "Summary:"):
        if text.startswith(prefix):
            text = text[len(prefix) :].strip()
    return text


def make_handler(
    service: MemoryService, llm_factory: Callable[[], ChatLLM]
) -> Callable[[Job, Progress], object]:
    settings = service.settings

    async def handle(job: Job, progress: Progress) -> None:
        task = str(job.payload.get("task") or settings.default_task)
        await progress(0.05, "reading items")
        # Read before the items: a forget after this point makes the save below write nothing.
        generation = await service.generation(job.tenant, job.user)
        user_texts, previous = await service.summary_inputs(job.tenant, job.user, task)
        if not user_texts:
            await progress(1.0, "no user items: nothing to summarize")
            return
        prompt = build_prompt(settings, task, user_texts, previous)
        await progress(0.2, f"summarizing {len(user_texts)} items")
        result = await bounded(llm_factory()).chat(
            [{"role": "user", "content": prompt}], max_tokens=settings.summary_max_tokens, temperature=0.2
        )
        text = clean_summary(result.text)
        if not text:
            raise RuntimeError("the utility LLM returned an empty summary")
        # The stored version is fed back into the next job's prompt: it keeps its cap whatever came back.
        text, cut = cap_text(text, settings.summary_char_cap, at_word=True)
        if cut:
            log.warning(
                "summary for %s/%s (task %s) cut to %d characters", job.tenant, job.user, task,
                settings.summary_char_cap,
            )
        # Raises JobCancelled if the user was forgotten meanwhile: nothing is written then.
        await progress(0.9, "saving")
        model = str(result.raw.get("model")) if result.raw.get("model") else None
        try:
            await service.save_summary(job.tenant, job.user, task, text, len(user_texts), model, generation)
        except LookupError:
            log.info("summary for a forgotten user dropped")

    return handle
