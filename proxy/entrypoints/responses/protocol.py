"""Wire schemas for /v1/responses (the OpenAI Responses API), bridged by Rapport to chat completions.

Unlike chat, the request model forbids unknown fields: Rapport translates the request rather than
forwarding it, so a field it does not understand would otherwise be dropped silently. Fields it understands
but cannot honour on a bridged upstream are refused by name in `refusals()`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from proxy.pipeline.context import RapportOptions


class FunctionTool(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["function"]
    name: str = Field(min_length=1, max_length=128)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class TextFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    description: str | None = None
    strict: bool | None = None


class TextOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_obfuscation: bool | None = None


class ResponsesRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    model: str | None = Field(default=None, min_length=1)
    input: str | list[dict[str, Any]] = Field(min_length=1)
    instructions: str | None = None
    # Typed loosely here so that a hosted tool is refused by name (`tools[i].type`), not by a union error.
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: TextOptions | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    store: bool | None = True
    previous_response_id: str | None = Field(default=None, min_length=1, max_length=128)
    metadata: dict[str, str] | None = None
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    truncation: Literal["auto", "disabled"] | None = None
    include: list[str] | None = None
    service_tier: str | None = None
    # Understood only to be refused by name (see refusals()).
    background: bool | None = None
    conversation: str | dict[str, Any] | None = None
    prompt: dict[str, Any] | None = None
    reasoning: dict[str, Any] | None = None
    top_logprobs: int | None = None
    max_tool_calls: int | None = None
    rapport: RapportOptions | None = None

    def refusals(self) -> tuple[str, str] | None:
        """(param, why) for the first field this server cannot honour, else None."""
        if self.background:
            return "background", "background responses are not supported by Rapport"
        if self.conversation is not None:
            return "conversation", "conversations are not supported; chain responses with previous_response_id"
        if self.prompt is not None:
            return "prompt", "stored prompt templates are not supported; send instructions and input"
        if self.reasoning is not None:
            return "reasoning", "reasoning options cannot be honoured on a chat-completions upstream"
        if self.top_logprobs:
            return "top_logprobs", "logprobs are not supported on /v1/responses"
        if self.max_tool_calls is not None:
            return "max_tool_calls", "max_tool_calls is not supported"
        if self.truncation == "auto":
            return "truncation", "only truncation 'disabled' is supported"
        for name in self.include or []:
            return "include", f"'{name}' cannot be included by Rapport"
        for i, tool in enumerate(self.tools or []):
            kind = tool.get("type")
            if kind != "function":
                # Hosted tools run on the provider's side and some reach a URL the client names (mcp's
                # server_url): forwarding them would let a client point Rapport's traffic anywhere.
                return f"tools[{i}].type", f"tool type {kind!r} is not supported; only function tools are"
        return None
