"""Prompt sets and row bookkeeping for bench/vas.py: training prompts, held-out prompts, a resumable row cache."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from scipy.stats import wilcoxon

from reasoning.vas.rewards import Reward, load_reward
from reasoning.vas.rewards.lexical import words

REWARD_OPTIONS: dict[str, dict[str, Any]] = {"conciseness": {"target_words": 8}}


def reward_fn(name: str) -> Reward:
    return load_reward(name, **REWARD_OPTIONS.get(name, {}))

# Value models learn from base-model samples of these prompts only.
TRAIN = [
    "Write one sentence about a sunny holiday at the beach.", "Explain what a noun is.",
    "Describe a car accident in one sentence.", "Write a short note to your manager asking for a day off.",
    "Write one sentence about a rainy, cold Monday.", "Explain photosynthesis briefly.",
    "Describe a wedding in one sentence.", "Tell a friend about your new phone.",
    "Write one sentence about failing an exam.", "Explain how to boil an egg.",
    "Describe a walk in the park.", "Write a formal complaint about a late delivery.",
    "Write one sentence about a good friend.", "Explain why the sky is blue.",
    "Describe a storm that damaged a house.", "Say hello to a colleague.",
    "What is your favorite food and why?", "Explain the rules of chess briefly.",
    "Describe a long wait at the hospital.", "Write a thank-you message to a teacher.",
    "Write one sentence about losing your wallet.", "Explain what a volcano is.",
    "Describe a birthday party with friends.", "Write a reply to a customer who wants a refund.",
    "Write one sentence about a traffic jam.", "Explain how a bicycle works.",
    "Describe your first day at a new school.", "Write an invitation to a team lunch.",
    "Write one sentence about a noisy neighbor.", "Explain what gravity does.",
    "Describe a concert you went to.", "Tell your sister about a movie you liked.",
    "Write one sentence about being sick with the flu.", "Explain how to plant a tree.",
    "Describe a garden in spring.", "Write a short apology for missing a meeting.",
    "Write one sentence about winning a prize.", "Explain what a library is for.",
    "Describe a broken washing machine.", "Write a message welcoming a new team member.",
]

# Held out: never sampled for training. Mixed topics so that every shipped reward has room to move.
HELD_OUT = [
    "Write one sentence about your weekend.", "Explain what a computer does.",
    "Describe a visit to your family.", "Write a short message to a new neighbor.",
    "Describe a day at work.", "Explain how rain forms.",
    "Write one sentence about a trip to the city.", "Tell a friend about your new job.",
    "Describe a meal at a restaurant.", "Explain what a map is used for.",
    "Write a note to a colleague about a delayed report.", "Describe a train journey.",
    "Write one sentence about the weather today.", "Explain how plants drink water.",
    "Describe your neighborhood.", "Write an email asking a professor for an extension.",
    "Write one sentence about a lost dog.", "Explain what a battery does.",
    "Describe a shopping trip.", "Tell your brother about a football match.",
    "Write one sentence about a power cut.", "Explain how to make a cup of tea.",
    "Describe a morning at the market.", "Write a message to a landlord about a leaking roof.",
    "Write one sentence about school.", "Explain what a museum is.",
    "Describe a snowy day.", "Write a short review of a hotel stay.",
    "Write one sentence about a flat tire.", "Explain why we sleep.",
    "Describe a picnic by a lake.", "Write a reply to a friend who invited you to a party.",
]


class RowCache:
    """Per-answer records by row key, saved after every answer so that an interrupted bench resumes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: dict[str, list[dict[str, Any]]] = json.loads(path.read_text()) if path.is_file() else {}

    def get(self, key: str) -> list[dict[str, Any]]:
        return self.rows.setdefault(key, [])

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.rows))
        tmp.replace(self.path)


def mean_sem(xs: list[float]) -> tuple[float, float]:
    if not xs:
        return float("nan"), float("nan")
    m = statistics.fmean(xs)
    return m, (statistics.stdev(xs) / len(xs) ** 0.5 if len(xs) > 1 else 0.0)


def summarize(scores: list[float], answers: list[dict[str, Any]], baseline: list[float] | None = None) -> dict[str, Any]:
    """Mean reward ± SEM, the paired difference to a baseline (same prompts and seeds) and cost means."""
    m, s = mean_sem(scores)
    out: dict[str, Any] = {"n": len(scores), "mean_reward": m, "sem": s}
    if baseline is not None and len(baseline) == len(scores) and scores:
        diffs = [a - b for a, b in zip(scores, baseline, strict=True)]
        dm, ds = mean_sem(diffs)
        nonzero = any(abs(d) > 1e-12 for d in diffs)
        p = float(wilcoxon(diffs, alternative="greater", zero_method="zsplit").pvalue) if nonzero else 1.0
        out.update({"diff_vs_baseline": dm, "diff_sem": ds, "wilcoxon_p_greater": p})
    for field in ("wall_s", "base_tokens", "upstream_calls", "upstream_ms", "value_calls", "value_ms",
                  "value_tokens_run", "value_tokens_rerun", "steps"):
        vals = [float(a.get(field, 0.0)) for a in answers]
        out[field] = statistics.fmean(vals) if vals else 0.0
    # Lexical rewards can be gamed (e.g. fewer, longer "words" for conciseness): keep what the text looks like.
    out["mean_words"] = statistics.fmean(len(words(a["text"])) for a in answers) if answers else 0.0
    out["examples"] = [a["text"] for a in answers[:3]]
    return out
