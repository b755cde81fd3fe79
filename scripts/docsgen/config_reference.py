"""The configuration reference, generated from the settings models so that it cannot drift from them.

Each field's text is the comment block written above it in the source (the why-comments the code already keeps),
so documenting a setting and commenting it are one act."""

from __future__ import annotations

import ast
import inspect
import io
import textwrap
import tokenize
import types
import typing
from enum import Enum
from pathlib import Path
from typing import Any, get_args, get_origin

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined


def field_comments(cls: type) -> dict[str, str]:
    """Comment lines directly above each annotated field of a class body (and a trailing one on its line)."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    comments: dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string.lstrip("#").strip()
    body = ast.parse(source).body[0]
    assert isinstance(body, ast.ClassDef)
    out: dict[str, str] = {}
    for node in body.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        lines: list[str] = []
        line = node.lineno - 1
        while line in comments:
            lines.insert(0, comments[line])
            line -= 1
        if node.lineno in comments:
            lines.append(comments[node.lineno])
        if lines:
            out[node.target.id] = " ".join(lines)
    return out


def type_name(annotation: Any) -> str:
    origin = get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in get_args(annotation))
    if origin is typing.Literal:
        return " | ".join(f'"{a}"' if isinstance(a, str) else repr(a) for a in get_args(annotation))
    if origin in (list, dict, tuple, set):
        return f"{origin.__name__}[{', '.join(type_name(a) for a in get_args(annotation))}]"
    if annotation is type(None):
        return "null"
    if annotation is SecretStr:
        return "secret string"
    if isinstance(annotation, type):
        if issubclass(annotation, Enum):
            return " | ".join(f'"{m.value}"' for m in annotation)
        return {"str": "string", "int": "integer", "float": "number", "bool": "boolean", "Path": "path"}.get(
            annotation.__name__, annotation.__name__
        )
    return str(annotation).replace("typing.", "")


def default_text(info: FieldInfo) -> str:
    if info.default_factory is not None:
        value = info.default_factory()  # type: ignore[call-arg]
        if isinstance(value, BaseModel):
            return "(section)"
        return f"`{value!r}`" if value not in ([], {}) else "empty"
    if info.default is PydanticUndefined:
        return "required"
    if info.default is None:
        return "unset"
    if isinstance(info.default, Enum):
        return f"`{info.default.value}`"
    if isinstance(info.default, Path):
        return f"`{info.default}`"
    return f"`{info.default!r}`"


def bounds_text(info: FieldInfo) -> str:
    parts = []
    for item in info.metadata:
        for name, symbol in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"), ("min_length", "len >="),
                             ("max_length", "len <=")):
            value = getattr(item, name, None)
            if value is not None:
                parts.append(f"{symbol} {value}")
    return ", ".join(parts)


def model_of(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """The settings model a field holds (and whether it is a list of them), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    if get_origin(annotation) is list:
        (inner,) = get_args(annotation) or (None,)
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            return inner, True
    for arg in get_args(annotation):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg, False
    return None, False


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def section(model: type[BaseModel], path: str, env: str | None, out: list[str], level: int) -> None:
    comments = field_comments(model)
    rows: list[str] = []
    nested: list[tuple[str, type[BaseModel], str | None]] = []
    for name, info in model.model_fields.items():
        sub, is_list = model_of(info.annotation)
        full = f"{path}.{name}" if path else name
        if sub is not None and (is_list or default_text(info) in ("(section)", "required")):
            nested.append((f"{full}[]" if is_list else full, sub, None if is_list or env is None else f"{env}{name.upper()}__"))
            if is_list:
                rows.append(f"| `{name}` | list of `{full}[]` entries | empty | | {_escape(comments.get(name, ''))} |")
            continue
        env_name = f"`{env}{name.upper()}`" if env is not None else ""
        text = comments.get(name, "") or (info.description or "")
        rows.append(
            f"| `{name}` | {_escape(type_name(info.annotation))} | {default_text(info)} | {env_name} | "
            f"{_escape(' '.join(x for x in (text, bounds_text(info) and f'({bounds_text(info)})') if x))} |"
        )
    if path:
        out.append(f"{'#' * level} `{path}`\n")
    doc = model.__dict__.get("__doc__")  # the class's own, never an inherited pydantic docstring
    if doc:
        out.append(inspect.cleandoc(doc) + "\n")
    if rows:
        out.append("| field | type | default | environment | meaning |")
        out.append("|---|---|---|---|---|")
        out.extend(rows)
        out.append("")
    for sub_path, sub, sub_env in nested:
        section(sub, sub_path, sub_env, out, min(level + 1, 4) if path else 2)


def render() -> str:
    from proxy.settings import ENV_PREFIX, RapportSettings

    out = [
        "<!-- Generated by `python -m scripts.docsgen` from the settings models (proxy/settings.py and each",
        "     package's config module); edit the comments above the fields there, not this file. -->",
        "# Configuration reference\n",
        "Every setting Rapport reads, from the settings models themselves. A YAML file (`--config FILE` or",
        "`RAPPORT_CONFIG`) and `RAPPORT_*` environment variables set them; the environment wins, and nested",
        "fields join with `__` (for example `RAPPORT_SERVER__PORT=9000`). An invalid value stops the start with",
        "the field's path. See [Configuration](../configuration.md) for a worked example.\n",
    ]
    section(RapportSettings, "", ENV_PREFIX, out, 2)
    return "\n".join(out).rstrip() + "\n"
