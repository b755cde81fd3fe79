"""Wire schemas for /v1/chat/completions.

The request model validates what Rapport must understand and lets every other field through untouched
(`extra="allow"`): the upstream receives the client's JSON as sent, minus Rapport's own `rapport` section.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from proxy.pipeline.context import RapportOptions


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    # Strings or content-part lists (text, image_url, input_audio, file...) pass through as they are.
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _schema_present(self) -> ResponseFormat:
        if self.type == "json_schema" and not self.json_schema:
            raise ValueError("json_schema is required when type is 'json_schema'")
        return self


class Tool(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str = "function"
    function: dict[str, Any] | None = None


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = Field(default=None, min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[Tool] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    user: str | None = None
    safety_identifier: str | None = None
    metadata: dict[str, Any] | None = None
    rapport: RapportOptions | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and self.top_logprobs > 0 and not self.logprobs:
            raise ValueError("top_logprobs requires logprobs to be true")
        if self.stop is not None and isinstance(self.stop, list) and len(self.stop) > 4:
            raise ValueError("stop may contain at most 4 sequences")
        return self


class RapportStageInfo(BaseModel):
    name: str
    ran: bool
    duration_ms: float
    detail: dict[str, Any] = Field(default_factory=dict)


class RapportExtension(BaseModel):
    """The `rapport` field added to responses for personalized requests."""

    request_id: str
    user: str | None
    stages: list[RapportStageInfo]
    degraded: list[str] = Field(default_factory=list)
    overhead_ms: float
