"""What the client got in the SDK matrix, folded into one shape whatever the surface, and the calls that get it.

The chunk reader fails on what a client must never read from a stream: content or a finish after its choice
finished, anything after the usage chunk, a second role chunk for a choice, the `rapport` extension late.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tests.support.sdk_cases import MODEL, USER, chat_request, responses_request


@dataclass
class Got:
    """What the client got, surface-independent: per choice index its text, tool calls, log-prob tokens."""

    texts: dict[int, str | None] = field(default_factory=dict)
    calls: dict[int, list[tuple[str, str, str]]] = field(default_factory=dict)
    logprobs: dict[int, list[str]] = field(default_factory=dict)
    finish: dict[int, str | None] = field(default_factory=dict)
    usage: dict[str, int] | None = None
    rapport: dict[str, Any] | None = None


def from_completion(result: Any) -> Got:
    got = Got(usage=result.usage.model_dump() if result.usage else None, rapport=(result.model_extra or {}).get("rapport"))
    for choice in result.choices:
        got.texts[choice.index] = choice.message.content
        got.calls[choice.index] = [(c.id, c.function.name, c.function.arguments) for c in choice.message.tool_calls or []]
        if choice.logprobs is not None and choice.logprobs.content is not None:
            got.logprobs[choice.index] = [t.token for t in choice.logprobs.content]
        got.finish[choice.index] = choice.finish_reason
    return got


class ChunkReader:
    """Folds chat chunks into a Got, failing on what a client must never read: content or a finish after its
    choice finished, anything after the usage chunk, a second role chunk for a choice, the extension late."""

    def __init__(self) -> None:
        self.got = Got()
        self.first = True
        self.ended = False
        self.roles: dict[int, int] = {}
        self.args: dict[tuple[int, int], list[str]] = {}
        self.heads: dict[tuple[int, int], tuple[str, str]] = {}

    def feed(self, part: Any) -> None:
        got = self.got
        assert not self.ended, f"a chunk after the usage chunk: {part}"
        extension = (part.model_extra or {}).get("rapport")
        if self.first:
            assert extension is not None and "stages" in extension, "the first chunk carries the rapport extension"
            got.rapport, self.first = extension, False
        if part.usage is not None:
            # The usage chunk is the one without choices (a server may report usage on every chunk too).
            got.usage, self.ended = part.usage.model_dump(), not part.choices
        for choice in part.choices:
            i = choice.index
            assert i not in got.finish, f"choice {i} got a chunk after it finished: {choice}"
            delta = choice.delta
            if delta.role is not None:
                self.roles[i] = self.roles.get(i, 0) + 1
            if delta.content:
                got.texts[i] = (got.texts.get(i) or "") + delta.content
            for call in delta.tool_calls or []:
                key = (i, call.index)
                if call.id is not None:
                    assert key not in self.heads, "a tool call started twice"
                    self.heads[key] = (call.id, call.function.name if call.function else "")
                if call.function is not None and call.function.arguments:
                    self.args.setdefault(key, []).append(call.function.arguments)
            if choice.logprobs is not None and choice.logprobs.content:
                got.logprobs.setdefault(i, []).extend(t.token for t in choice.logprobs.content)
            if choice.finish_reason is not None:
                got.finish[i] = choice.finish_reason

    def done(self) -> Got:
        assert all(count == 1 for count in self.roles.values()), f"role chunks per choice: {self.roles}"
        for (i, _), (call_id, name) in sorted(self.heads.items()):
            self.got.calls.setdefault(i, []).append((call_id, name, "".join(self.args.get((i, _), []))))
        for i in self.got.finish:
            self.got.texts.setdefault(i, None)
            self.got.calls.setdefault(i, [])
        return self.got


def from_response(response: Any) -> Got:
    got = Got(rapport=(response.model_extra or {}).get("rapport"), finish={0: response.status})
    got.usage = response.usage.model_dump() if response.usage else None
    texts = [part.text for item in response.output if item.type == "message" for part in item.content
             if part.type == "output_text"]
    got.texts[0] = "".join(texts) if texts else None
    got.calls[0] = [(item.call_id, item.name, item.arguments) for item in response.output if item.type == "function_call"]
    return got


def check_response_events(kinds: list[str], deltas: str, final: Any) -> None:
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed", kinds
    assert deltas == (final.output_text or ""), "the streamed deltas are the final text"
    assert "<reasoning" not in deltas and "reasoning>" not in deltas


async def call(kind: str, client: Any, surface: str, feature: str, stages: dict[str, Any]) -> Got:
    """Make the case's request with the sync or async client; the async one names the user in `user`."""
    options = {"rapport": {**stages, "record": False}}
    named = {"user": USER} if kind == "async" else {}
    if surface.startswith("chat"):
        kwargs = {"model": MODEL, **chat_request(feature), **named, "extra_body": options}
        if surface == "chat":
            result = client.chat.completions.create(**kwargs)
            return from_completion(await result if kind == "async" else result)
        stream = client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True})
        reader = ChunkReader()
        if kind == "async":
            async for part in await stream:
                reader.feed(part)
        else:
            for part in stream:
                reader.feed(part)
        return reader.done()
    request, _ = responses_request(feature)
    kwargs = {"model": MODEL, **request, **named, "extra_body": options}
    if surface == "responses":
        response = client.responses.create(**kwargs)
        return from_response(await response if kind == "async" else response)
    kinds: list[str] = []
    deltas: list[str] = []
    if kind == "async":
        async with client.responses.stream(**kwargs) as events:
            async for event in events:
                kinds.append(event.type)
                deltas.append(event.delta if event.type == "response.output_text.delta" else "")
            final = await events.get_final_response()
    else:
        with client.responses.stream(**kwargs) as events:
            for event in events:
                kinds.append(event.type)
                deltas.append(event.delta if event.type == "response.output_text.delta" else "")
            final = events.get_final_response()
    check_response_events(kinds, "".join(deltas), final)
    return from_response(final)
