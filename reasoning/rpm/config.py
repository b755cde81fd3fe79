"""RPM settings (composed into Rapport's one settings object by the proxy)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field


class FeedbackSettings(BaseModel):
    """`rpm.feedback`: remembering issued responses so that `POST /v1/rapport/feedback` can refer to them."""

    # Off: nothing is remembered, and every feedback answers 404.
    enabled: bool = True
    # How long after the answer a feedback is accepted; older issued responses are purged (their feedback
    # entries stay: they are the user's history).
    retention_days: float = Field(default=30.0, gt=0)
    # Issued responses kept per user (the oldest go first): bounds what a busy user's chat leaves behind.
    max_per_user: int = Field(default=1000, ge=1, le=100_000)
    # The most characters of the query and of the answer remembered.
    max_chars: int = Field(default=4000, ge=100, le=20_000)


class RPMSettings(BaseModel):
    enabled_by_default: bool = False
    # Where the feature/factor/path store lives; None: `<data_dir>/rpm`.
    store_dir: Path | None = None
    # A folder of prompt files (`extract.txt`, `reasoning.txt`, `generate.txt`) that override the packaged ones.
    prompts_dir: Path | None = None
    # Which model writes extractions and reasoning paths; None: the default upstream.
    utility_model: str | None = None
    # Offline extraction: "llm" (the paper's structured extraction, cheap extractor as fallback) or "cheap".
    construction_mode: Literal["llm", "cheap"] = "llm"
    # Request-time extraction: "llm" within the latency budget, "cheap" always, "auto" = llm then cheap.
    request_mode: Literal["llm", "cheap", "auto"] = "auto"
    request_budget_ms: int = Field(default=1500, ge=0, le=60_000)
    top_k: int = Field(default=3, ge=0, le=20)
    max_factors_in_prompt: int = Field(default=6, ge=0, le=50)
    max_features_per_entry: int = Field(default=6, ge=1, le=30)
    # Cosine distance under which two features belong to the same factor (agglomerative, average linkage).
    cluster_distance: float = Field(default=0.5, gt=0.0, lt=2.0)
    # Minimum number of history entries in which a factor must appear to be shown to the upstream.
    min_factor_support: int = Field(default=1, ge=1)
    # Keyphrases the cheap extractor keeps per input.
    cheap_keyphrases: int = Field(default=4, ge=1, le=20)
    # Keep only extracted features whose value or evidence can be found in the input (no invented records).
    require_grounding: bool = True
    # How many malformed outputs to retry before skipping an entry (the paper's robustness rule: once).
    llm_retries: int = Field(default=1, ge=0, le=3)
    # Token budgets of the utility-LLM calls; a reply is cut on Rapport's side to about 6 characters a token
    # whatever the upstream did with max_tokens (memory.llm.bounded).
    extract_max_tokens: int = Field(default=256, ge=16)
    reasoning_max_tokens: int = Field(default=200, ge=16)
    # The most characters a stored reasoning path keeps (LLM-written or template): paths are re-fed into
    # every conditioned request's system message.
    path_max_chars: int = Field(default=1200, ge=100)
    # Return the model's reasoning to the client by default, or keep it out of the final message.
    return_reasoning: bool = False
    # Learn from chat exchanges, storing (user message, the MODEL's answer) as a history entry. Off by default,
    # and to be turned on only knowingly: RPM's method learns from the user's own responses, and an
    # exchange's response is the model's, so the factors and reasoning paths learnt from it describe the
    # model, not the user, and are fed back into the model on the next request (a loop that reinforces
    # whatever it first said). By default history comes only from what the user supplied: labelled imports
    # (POST /admin/users/{user}/history) and feedback on responses (POST /v1/rapport/feedback).
    learn_from_model_answers: bool = False
    # Which exchanges, when learn_from_model_answers is on: "always" (every recorded exchange of a named user,
    # as memory does), "when_enabled" (only requests where RPM conditioning is on) or "never".
    # Learning costs 2-4 utility-LLM calls per exchange, so it is not spent on users RPM is not used for.
    learn_from_exchanges: Literal["always", "when_enabled", "never"] = "when_enabled"
    # Exchanges longer than this are not learnt from (a pasted document is not a labelled decision).
    max_exchange_chars: int = Field(default=4000, ge=100)
    # Feedback on issued responses (POST /v1/rapport/feedback): the user's own signals, made history.
    feedback: FeedbackSettings = Field(default_factory=FeedbackSettings)
