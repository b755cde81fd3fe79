"""RPM's records: what the extractor returns, what the store keeps, what a request may ask for."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


def _clean(text: str) -> str:
    return " ".join(str(text).split())


class Feature(BaseModel):
    """One response-influential feature of an input (the paper's structured extraction record)."""

    model_config = ConfigDict(extra="ignore")

    name: str = Field(min_length=1, max_length=80)
    value: str = Field(min_length=1, max_length=200)
    evidence: str = Field(default="", max_length=400)

    @field_validator("name", "value", "evidence", mode="before")
    @classmethod
    def _normalize(cls, value: Any) -> Any:
        if isinstance(value, (int, float, bool)):
            value = str(value)
        return _clean(value) if isinstance(value, str) else value

    @field_validator("name")
    @classmethod
    def _lower_name(cls, value: str) -> str:
        return value.lower().strip(" .:-_")


class Extraction(BaseModel):
    """The whole structured output the extraction prompt asks for; items are validated one by one
    (a weak model's one bad item should not discard its good ones)."""

    model_config = ConfigDict(extra="ignore")

    features: list[Any] = Field(min_length=1)


class ReasoningOutput(BaseModel):
    model_config = ConfigDict(extra="ignore")

    reasoning: str = Field(min_length=8, max_length=2000)

    @field_validator("reasoning", mode="before")
    @classmethod
    def _normalize(cls, value: Any) -> Any:
        return _clean(value) if isinstance(value, str) else value


class HistoryItem(BaseModel):
    """One labelled history entry: an input the user faced and the response they gave."""

    model_config = ConfigDict(extra="forbid")

    input: str = Field(min_length=1, max_length=20_000)
    response: str = Field(min_length=1, max_length=20_000)
    task: str | None = Field(default=None, max_length=200)


class StoredFeature(BaseModel):
    id: int
    entry_id: int
    name: str
    value: str
    evidence: str
    extractor: Literal["llm", "cheap"]
    factor_id: int | None = None


class ValueStat(BaseModel):
    value: str
    count: int
    # How the user's responses look when the feature takes this value.
    response_mean: float | None = None
    top_responses: list[tuple[str, int]] = Field(default_factory=list)


class FactorStats(BaseModel):
    entries: int  # history entries in which the factor appears
    frequency: float  # share of the user's constructed history
    values: list[ValueStat] = Field(default_factory=list)
    # 0..1: how much the response varies with the factor's value (bias-adjusted eta² for numeric responses,
    # bias-corrected Cramér's V otherwise); None (absent, not 0) when responses or values repeat too little
    # to estimate one (reasoning/rpm/factors.py).
    association: float | None = None
    numeric_responses: bool = False


class Factor(BaseModel):
    id: int
    name: str
    members: list[str]  # distinct feature names grouped into this factor
    stats: FactorStats


class ReasoningPath(BaseModel):
    entry_id: int
    text: str
    source: Literal["llm", "template"]


class HistoryEntry(BaseModel):
    id: int
    input: str
    response: str
    task: str | None
    source: str
    status: Literal["pending", "extracted", "done", "skipped"]
    skip_reason: str | None = None
    created_at: float
    features: list[StoredFeature] = Field(default_factory=list)
    reasoning: ReasoningPath | None = None


class RPMRequestOptions(BaseModel):
    """`extra_body={"rapport": {"rpm": {...}}}`, merged over a model's `personalization.rpm` options
    (proxy/pipeline/options.py); a field left None falls back to the `rpm` settings (RPMEngine.resolve)."""

    model_config = ConfigDict(extra="forbid")

    top_k: int | None = Field(default=None, ge=0, le=20)
    # Whether the model's reasoning comes back to the client or is stripped from the final message.
    return_reasoning: bool | None = None
    mode: Literal["llm", "cheap", "auto"] | None = None
    budget_ms: int | None = Field(default=None, ge=0, le=60_000)
    # Restrict history to one task label (e.g. "rating").
    task: str | None = None
