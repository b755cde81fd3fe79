"""Memory settings (composed into Rapport's one settings object by the proxy)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

DEFAULT_SUMMARY_PROMPT = (
    "You keep notes about one user of an assistant, for the task: {task_description}.\n"
    "Update the notes from the user's messages below. Write at most {max_words} words of plain statements "
    "about the user's stated preferences, dislikes, constraints, background and goals that matter for this "
    "task. Keep every earlier note that is still true; do not invent anything; do not address the user.\n\n"
    "Earlier notes: {previous}\n\n"
    "User's messages (oldest first):\n{items}\n\nNotes:"
)


class TaskSpec(BaseModel):
    """A task type for task-aware summaries: its description (also used to infer a request's task)."""

    description: str
    prompt: str = DEFAULT_SUMMARY_PROMPT


class ChromaServer(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    ssl: bool = False
    headers: dict[str, str] = Field(default_factory=dict)


class MemorySettings(BaseModel):
    enabled: bool = True
    # Embedding model: a sentence-transformers name or path; None means the packaged all-MiniLM-L6-v2.
    embedding_model: str | None = None
    embedding_batch_size: int = Field(default=64, ge=1)
    # torch: sentence-transformers as is. onnx / onnx-int8: the same model exported once to ONNX Runtime
    # (int8: dynamic per-channel weights, about 2x faster on CPU; quality cost measured in bench/memory.py).
    embedding_backend: Literal["torch", "onnx", "onnx-int8"] = "torch"
    # Queries (the request path) on another runtime of the same model; None: the same as embedding_backend.
    # onnx (fp32) embeds one query in about 5 ms against torch's 13 ms, with the same results (PrefEval: all
    # 200 retrievals identical), while torch stays faster for ingest batches.
    query_embedding_backend: Literal["torch", "onnx", "onnx-int8"] | None = "onnx"
    # torch backend: batches of 8+ texts (ingest) run on a bf16 copy of the weights (fp32 accumulation).
    # auto: on when the CPU has AMX bf16 (about 2x fp32's ingest rate here, cosine to fp32 >= 0.9999; PrefEval
    # retrievals unchanged); single texts (queries) stay on the fp32 model.
    embedding_bf16: Literal["auto", "on", "off"] = "auto"
    # Where exported ONNX models are cached; None: ~/.cache/rapport/onnx.
    embedding_cache_dir: Path | None = None
    # torch intra-op threads (process-wide); None leaves torch's default. 1 is best on <= 2 busy cores.
    embedding_threads: int | None = Field(default=None, ge=1, le=256)
    query_cache_size: int = Field(default=4096, ge=0)
    # 10 items in 1,000 tokens, with their conversation neighbours in what the items leave: on LoCoMo
    # (bench/locomo_recall.py, tuned on conversation 26) this put all of a question's evidence in the prompt
    # for far more questions than 5 items in 512 tokens (see bench/results/locomo_recall.json).
    top_k: int = Field(default=10, ge=0, le=100)
    token_budget: int = Field(default=1000, ge=0)

    # Storage: Chroma embedded under data_dir/memory/chroma, or a Chroma server.
    store: Literal["embedded", "server"] = "embedded"
    chroma: ChromaServer = Field(default_factory=ChromaServer)
    # One collection per (tenant, user): chosen by measurement (see bench/memory.py and the README).
    collection_layout: Literal["per_user", "shared"] = "per_user"
    collection_prefix: str = Field(default="rapport", pattern=r"^[a-zA-Z0-9][a-zA-Z0-9_-]{0,30}$")
    # Embedded store: once this many users' collections have been opened, the store closes its Chroma client
    # (freeing every loaded index, about 2.7 MB each for a small user) and opens a new one; each user's next
    # call loads its index again (a few ms). 256 caps loaded vectors at about 0.7 GB however many users one
    # process serves (bench/replica_rss.py). None: chromadb's own cache, the open-file limit / 5 indexes,
    # which in chromadb 1.5.9 also loses a user's latest items when it evicts (memory/store.py).
    max_open_collections: int | None = Field(default=256, ge=1)

    # What each exchange stores.
    store_assistant_turns: bool = False
    max_item_chars: int = Field(default=4000, ge=16)
    redact: bool = False
    # Concurrent ingests are coalesced into batches of at most this many items (one embed, one commit).
    ingest_max_batch: int = Field(default=256, ge=1, le=4096)
    # Write-behind: acknowledge a write once it is in a local journal (data_dir/memory/journal.sqlite3) and
    # move it into Chroma grouped per user (memory/staging.py). Off: every batch writes Chroma directly.
    staged_writes: bool = True
    # How long the flusher lets staged items gather before a round: more items per Chroma call under load
    # (sustained 12k-item ingest at 64 concurrent writers: 5000 ms cut Chroma's CPU by a third against 2000 ms
    # and raised the rate from 254-275 to 311-321 items/s). Staged items are searchable meanwhile.
    staged_linger_ms: int = Field(default=5000, ge=0, le=60_000)
    # Past this many staged items, ingest waits for the store (and fails after 30 s): a bound on memory use
    # while a Chroma server is down.
    staged_max_items: int = Field(default=50_000, ge=1)

    # Retrieval shaping.
    candidates_factor: int = Field(default=4, ge=1, le=50)
    recency_half_life_days: float = Field(default=30.0, ge=0)  # 0 disables recency decay
    recency_weight: float = Field(default=0.15, ge=0, le=1)
    mmr_lambda: float = Field(default=0.7, ge=0, le=1)  # 1 disables MMR
    min_similarity: float = Field(default=0.0, ge=-1, le=1)
    # Hybrid retrieval (memory/lexical.py): BM25 over a SQLite FTS5 index beside the vectors, fused with the
    # dense candidates before recency and MMR. Names and rare words link a question to the turn that answers
    # it far better than MiniLM cosine does (bench/locomo_recall.py). Built for the embedded store only: a
    # local file would not be shared by the replicas of a Chroma server or Postgres deployment.
    # Per request: rapport.memory.lexical.
    lexical: bool = True
    # weighted: cosine + lexical_weight * BM25 / the best BM25 among the candidates; rrf: reciprocal-rank
    # fusion. On LoCoMo conversation 26 (bench/locomo_recall.py), weighted with 0.5 beat RRF by 6-12 points
    # of questions with all evidence in the prompt: RRF throws away how much better the best BM25 match is,
    # and a rare name's one match is exactly that.
    lexical_fusion: Literal["rrf", "weighted"] = "weighted"
    lexical_weight: float = Field(default=0.5, ge=0, le=10)
    rrf_k: int = Field(default=60, ge=1, le=1000)
    # How many lexical candidates join the dense ones; None: as many as the dense search asks for.
    lexical_candidates: int | None = Field(default=None, ge=1, le=1000)
    # Conversation neighbours: each retrieved item brings the item just before and just after it in its
    # conversation (or adjacent in time, within neighbour_max_gap_s, when it has no conversation id), in the
    # budget left after the retrieved items. Needs the lexical index (it knows each item's place).
    # Per request: rapport.memory.neighbours.
    neighbours: bool = True
    neighbour_max_gap_s: float = Field(default=1800.0, ge=0)

    # Task-aware summaries (Richardson et al. 2023).
    summaries: bool = True
    summary_every: int = Field(default=10, ge=1)
    # Items fed to the summarizer: half the most task-relevant (by similarity to the task description), half
    # the most recent, plus the previous version, so a preference stated long ago is not dropped.
    summary_max_items: int = Field(default=24, ge=2)
    summary_item_chars: int = Field(default=300, ge=20)  # each item is cut to this in the prompt
    summary_max_words: int = Field(default=120, ge=10)
    summary_max_tokens: int = Field(default=320, ge=16)
    # The most characters a stored summary keeps, whatever the utility LLM returned (an upstream that ignores
    # max_tokens would otherwise grow the summary, and with it the next summary prompt, every job).
    # None: 10 characters per allowed word (summary_max_words), about twice what an honest summary needs.
    summary_max_chars: int | None = Field(default=None, ge=100)
    summary_model: str | None = None  # None: the default upstream
    # With a summary present, retrieve only this fraction of k raw items (the paper's 75% less raw data).
    summary_item_fraction: float = Field(default=1.0, gt=0, le=1)
    tasks: dict[str, TaskSpec] = Field(
        default_factory=lambda: {
            "general": TaskSpec(
                description="general assistance; the user's preferences, dislikes, habits, constraints and background"
            )
        }
    )
    default_task: str = "general"
    task_inference_threshold: float = Field(default=0.3, ge=-1, le=1)

    # Composition template (string.Template with $summary and $items); None: the packaged one.
    template_path: Path | None = None

    # Background job queue shared with RPM.
    job_workers: int = Field(default=1, ge=1, le=16)
    job_max_attempts: int = Field(default=3, ge=1, le=20)

    @property
    def summary_char_cap(self) -> int:
        return self.summary_max_chars or self.summary_max_words * 10
