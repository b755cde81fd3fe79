"""How the admin CLI shows things: rich tables for people, the admin API's own JSON for scripts, errors as one line.

Nothing here talks to a server; `proxy.cli_admin` fetches through the SDK and hands the results over.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import sys
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, NoReturn

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table
from rich.text import Text

# Exit codes a script can tell apart (2 is click's own for a usage error).
EXIT_NOT_FOUND = 1
EXIT_AUTH = 3
EXIT_UNREACHABLE = 4

err = Console(stderr=True, highlight=False)

TEXT_WIDTH = 80
# A table piped into grep or a file keeps a row per line instead of folding to 80 columns.
PIPED_WIDTH = 200


def show(renderable: Any) -> None:
    # Made at print time: stdout may have been swapped (or redirected) since import.
    # COLUMNS, when set, is the width asked for.
    wide = sys.stdout.isatty() or "COLUMNS" in os.environ
    Console(highlight=False, width=None if wide else PIPED_WIDTH).print(renderable)


def fail(message: str, code: int = EXIT_NOT_FOUND) -> NoReturn:
    # One line, no traceback: the operator reads it, a script reads the exit code.
    err.print(Text("error: ", style="bold red") + Text(message), soft_wrap=True)
    raise typer.Exit(code)


def note(message: str) -> None:
    err.print(Text(message, style="dim"), soft_wrap=True)


def emit_json(value: Any) -> None:
    """The admin API's own objects, so a script sees the keys the HTTP API documents (not rich's rendering)."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    elif isinstance(value, list):
        value = [v.model_dump(mode="json") if isinstance(v, BaseModel) else v for v in value]
    sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def clip(text: str, width: int = TEXT_WIDTH) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def page_footer(shown: int, total: int, offset: int) -> None:
    if total == 0:
        return
    first = offset + 1 if shown else offset
    more = f" (--offset {offset + shown} for more)" if offset + shown < total else ""
    note(f"showing {first}-{offset + shown} of {total}{more}")


def _table(*columns: str, title: str | None = None) -> Table:
    table = Table(title=title, title_justify="left", header_style="bold", show_edge=False, pad_edge=False)
    for name in columns:
        # Ids must stay whole to be copied into the next command; only free text wraps.
        wraps = name in ("TEXT", "MESSAGE")
        table.add_column(name, no_wrap=not wraps, overflow="fold", min_width=20 if wraps else None)
    return table


def users_table(users: Sequence[Any]) -> Table:
    table = _table("TENANT", "USER", "MEMORIES", "SINCE SUMMARY", "LAST SEEN", "CREATED")
    for u in users:
        table.add_row(u.tenant, u.user, str(u.items), str(u.since_summary), when(u.last_seen), when(u.created_at))
    return table


def memories_table(memories: Sequence[Any], *, scored: bool, full: bool) -> Table:
    columns = ["ID", "ROLE", "TASK", "SOURCE", "WHEN", "TEXT"]
    table = _table(*(["SCORE", *columns] if scored else columns))
    for m in memories:
        row = [m.id, m.role, m.task or "-", m.source, when(m.ts), m.text if full else clip(m.text)]
        table.add_row(*([f"{m.score:.3f}" if m.score is not None else "-", *row] if scored else row))
    return table


def summaries_table(summaries: Sequence[Any], *, full: bool) -> Table:
    table = _table("TASK", "VERSION", "ITEMS", "MODEL", "CREATED", "TEXT")
    for s in summaries:
        table.add_row(
            s.task, str(s.version), str(s.item_count), s.model or "-", when(s.created_at), s.text if full else clip(s.text)
        )
    return table


def jobs_table(jobs: Sequence[Any]) -> Table:
    table = _table("ID", "KIND", "TENANT", "USER", "STATUS", "PROGRESS", "TRIES", "UPDATED", "MESSAGE")
    style = {"failed": "red", "succeeded": "green", "running": "yellow"}
    for j in jobs:
        table.add_row(
            j.id,
            j.kind,
            j.tenant,
            j.user,
            Text(j.status, style=style.get(j.status, "")),
            f"{j.progress:.0%}",
            f"{j.attempts}/{j.max_attempts}",
            when(j.updated_at),
            j.error or j.message or "",
        )
    return table


def counts_table(title: str, rows: Iterable[tuple[str, dict[str, Any]]]) -> Table:
    """A part per row and what it counted (imported or removed), one column per count name."""
    listed = list(rows)
    names = sorted({name for _, counts in listed for name in counts})
    table = _table("PART", *(n.upper() for n in names), title=title)
    for part, counts in listed:
        table.add_row(part, *(_count(counts.get(n)) for n in names))
    return table


def _count(value: Any) -> str:
    if value is None:
        return "-"
    return str(value) if not isinstance(value, (dict, list)) else json.dumps(value)


_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")


def _units(text: str) -> list[str]:
    # Summaries are prose, often one long line: compare them sentence by sentence, or a diff is one changed line.
    return [part.strip() for part in _SENTENCE.split(text) if part.strip()]


def summary_diff(old: Any, new: Any) -> list[str]:
    """A unified diff from summary `old` to summary `new`, a sentence per line."""
    return list(
        difflib.unified_diff(
            _units(old.text),
            _units(new.text),
            fromfile=f"{old.task} v{old.version}",
            tofile=f"{new.task} v{new.version}",
            lineterm="",
        )
    )


def print_diff(lines: Sequence[str]) -> None:
    if not lines:
        note("the two versions have the same text")
        return
    for line in lines:
        if line.startswith(("+++", "---")):
            style = "bold"
        elif line.startswith("@@"):
            style = "cyan"
        elif line.startswith("+"):
            style = "green"
        elif line.startswith("-"):
            style = "red"
        else:
            style = ""
        show(Text(line, style=style))
