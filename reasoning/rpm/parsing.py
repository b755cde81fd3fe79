"""Pull a JSON object out of a weak model's reply and validate it; never guess missing fields."""

from __future__ import annotations

import json
import re
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)

_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)


class MalformedOutput(ValueError):
    """The reply held no object that validates; the message says why (for the skip log)."""


def _candidates(text: str) -> list[str]:
    found = [m.group(1) for m in _FENCE.finditer(text)]
    # Every balanced {...} span, outermost first: models often wrap JSON in prose.
    depth, start = 0, -1
    in_string, escaped = False, False
    for i, ch in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
            continue
        if ch == '"' and depth > 0:
            in_string = True
        elif ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth > 0:
            depth -= 1
            if depth == 0:
                found.append(text[start : i + 1])
    stripped = text.strip()
    if stripped.startswith("["):
        found.append(stripped)
    return found


def parse_model(text: str, model: type[M], *, list_key: str | None = None) -> M:
    """Validate the first JSON object in `text` against `model`.

    A bare JSON list is accepted as `{list_key: [...]}` because small models often drop the wrapper.
    """
    errors: list[str] = []
    for candidate in _candidates(text):
        try:
            data: Any = json.loads(candidate)
        except json.JSONDecodeError as exc:
            errors.append(f"invalid JSON ({exc.msg})")
            continue
        if isinstance(data, list) and list_key is not None:
            data = {list_key: data}
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            errors.append(f"schema mismatch at {where or '<root>'}: {first['msg']}")
    if not errors:
        raise MalformedOutput("no JSON object in the reply")
    raise MalformedOutput("; ".join(dict.fromkeys(errors))[:300])
