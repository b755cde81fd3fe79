"""Stage 3's conditioning text: stored history rendered as quoted data.

Everything that came from a user's history (inputs, responses, extracted feature names and values, reasoning
paths, factor names) is rendered with memory's `quote`: one JSON string literal on one line, chat-template
control tokens defanged. So a stored "ignore previous instructions", a line break followed by "system:", or
an `<|im_start|>` token stays data inside the system message instead of gaining its authority. Only the
fixed words around the literals come from Rapport.
"""

from __future__ import annotations

from collections.abc import Sequence

from memory.compose import quote
from reasoning.rpm.models import Feature, HistoryEntry, StoredFeature

# How much of an entry's input and response an example shows (the rest adds tokens, not signal).
INPUT_CHARS = 600
RESPONSE_CHARS = 400


def features_line(features: Sequence[Feature | StoredFeature], empty: str) -> str:
    """`"name" = "value"; ...`, or `empty` when there are none."""
    return "; ".join(f"{quote(f.name)} = {quote(f.value)}" for f in features) or empty


def example_block(n: int, entry: HistoryEntry) -> str:
    path = quote(entry.reasoning.text) if entry.reasoning else "(no reasoning recorded)"
    return (
        f"Example {n}:\n"
        f"Input: {quote(entry.input[:INPUT_CHARS])}\n"
        f"Features: {features_line(entry.features, '(none)')}\n"
        f"Reasoning: {path}\n"
        f"This person answered: {quote(entry.response[:RESPONSE_CHARS])}"
    )
