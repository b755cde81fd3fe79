"""Stage 1b: group a user's features into factors by clustering their embeddings, with statistics.

A factor is a kind of attribute this user's inputs carry (clustered on the feature *name*'s embedding, so
"genre" and "movie genre" fall together); its statistics say how often it appears, which values it takes,
and how the user's responses vary with those values.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage

from memory.compose import quote
from reasoning.rpm.models import FactorStats, StoredFeature, ValueStat

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def response_number(text: str) -> float | None:
    """The response as a number when it is one ("4", "4/5", "Rating: 4"), else None."""
    stripped = text.strip()
    if len(stripped) > 40:
        return None
    match = _NUMBER.search(stripped)
    return float(match.group(0)) if match else None


def response_label(text: str) -> str:
    return " ".join(text.split())[:60]


def cluster_names(vectors: np.ndarray, threshold: float) -> list[int]:
    """Average-linkage agglomerative clustering on cosine distance; returns a 0-based label per row."""
    n = len(vectors)
    if n == 0:
        return []
    if n == 1:
        return [0]
    tree = linkage(vectors.astype(np.float64), method="average", metric="cosine")
    labels = fcluster(tree, t=threshold, criterion="distance")
    return [int(x) - 1 for x in labels]


def _eta_squared(groups: dict[str, list[float]]) -> float | None:
    """Bias-adjusted eta² (epsilon²): with as many values as entries, plain eta² is 1 for any noise."""
    values = [v for g in groups.values() for v in g]
    n, k = len(values), len(groups)
    if k < 2 or n - k < 2:
        return None
    mean = float(np.mean(values))
    total = float(sum((v - mean) ** 2 for v in values))
    if total == 0.0:
        return 0.0
    between = float(sum(len(g) * (float(np.mean(g)) - mean) ** 2 for g in groups.values()))
    within_ms = (total - between) / (n - k)
    return round(max(0.0, (between - (k - 1) * within_ms) / total), 4)


# A category must be seen at least this often to count as repeating (see _cramers_v).
MIN_REPEATS = 2


def _repeating(labelled: set[tuple[int, str]]) -> int:
    """How many labels are carried by at least MIN_REPEATS distinct entries (`labelled`: (entry, label))."""
    return sum(1 for n in Counter(label for _, label in labelled).values() if n >= MIN_REPEATS)


def _cramers_v(triples: list[tuple[int, str, str]]) -> float | None:
    """Bias-corrected Cramér's V (Bergsma 2013) between a factor's value and the user's response label.

    Plain V is biased upwards in sparse tables: when responses never repeat (free text) every row is
    "perfectly predictive" and V is 1.0 for pure noise. The correction subtracts chi²'s expectation under
    independence from phi² and shrinks the table's dimensions to match.

    None (no estimate, not 0 or 1) unless at least two responses and at least two factor values each occur
    at least twice: an association is a claim that a response recurs with a value, and a category seen once
    cannot recur, so with fewer than two repeating categories on either side there is no contrast to measure
    (a single repeating response against singletons says nothing about which value brings it). Repetition
    is counted in distinct entries: an entry with three values of the factor repeats its response three
    times in the table, which is not the response recurring.

    `triples`: (entry id, factor value, response label), one per value of the factor in an entry.
    """
    if _repeating({(e, b) for e, _, b in triples}) < 2 or _repeating({(e, a) for e, a, _ in triples}) < 2:
        return None
    pairs = [(a, b) for _, a, b in triples]
    row_index = {a: i for i, a in enumerate(sorted({a for a, _ in pairs}))}
    col_index = {b: j for j, b in enumerate(sorted({b for _, b in pairs}))}
    table = np.zeros((len(row_index), len(col_index)))
    for a, b in pairs:
        table[row_index[a], col_index[b]] += 1
    n = float(table.sum())
    r, k = table.shape
    expected = table.sum(axis=1, keepdims=True) @ table.sum(axis=0, keepdims=True) / n
    chi2 = float(((table - expected) ** 2 / expected).sum())
    phi2 = max(0.0, chi2 / n - (k - 1) * (r - 1) / (n - 1))
    r_corr = r - (r - 1) ** 2 / (n - 1)
    k_corr = k - (k - 1) ** 2 / (n - 1)
    denominator = min(k_corr - 1, r_corr - 1)
    if denominator <= 0:
        return None
    return round(min(1.0, float(np.sqrt(phi2 / denominator))), 4)


def factor_stats(
    members: list[StoredFeature], responses: dict[int, str], constructed_entries: int, max_values: int = 8
) -> FactorStats:
    """Statistics of one factor over the user's history (`responses`: entry id -> the user's response)."""
    entries = {f.entry_id for f in members}
    numbers = {eid: response_number(text) for eid, text in responses.items()}
    numeric = bool(numbers) and all(v is not None for v in numbers.values())
    by_value: dict[str, list[int]] = defaultdict(list)
    display: dict[str, str] = {}
    for f in members:
        key = f.value.lower()
        display.setdefault(key, f.value)
        if f.entry_id not in by_value[key]:
            by_value[key].append(f.entry_id)
    ranked = sorted(by_value.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    values: list[ValueStat] = []
    for key, eids in ranked[:max_values]:
        stat = ValueStat(value=display[key], count=len(eids))
        if numeric:
            stat.response_mean = round(float(np.mean([numbers[e] for e in eids if numbers.get(e) is not None])), 3)
        else:
            stat.top_responses = Counter(response_label(responses[e]) for e in eids if e in responses).most_common(3)
        values.append(stat)
    if numeric:
        association = _eta_squared(
            {k: [numbers[e] for e in eids if numbers.get(e) is not None] for k, eids in by_value.items()}  # type: ignore[misc]
        )
    else:
        association = _cramers_v(
            [(e, k, response_label(responses[e])) for k, eids in by_value.items() for e in eids if e in responses]
        )
    return FactorStats(
        entries=len(entries),
        frequency=round(len(entries) / max(constructed_entries, 1), 4),
        values=values,
        association=association,
        numeric_responses=numeric,
    )


def influence_order(row: tuple[str, list[str], FactorStats, np.ndarray, list[int]]) -> tuple[float, int, str]:
    """Most influential first. An absent association (too little repetition to estimate one) ranks as no
    evidence of influence, i.e. with 0.0, and ties go to the factor seen in more entries."""
    title, _, stats, _, _ = row
    return (-(stats.association if stats.association is not None else 0.0), -stats.entries, title)


def build_factors(
    features: list[StoredFeature],
    name_vecs: np.ndarray,
    responses: dict[int, str],
    *,
    threshold: float,
    min_support: int = 1,
) -> list[tuple[str, list[str], FactorStats, np.ndarray, list[int]]]:
    """Cluster distinct feature names, then describe each cluster. Returns rows for `RPMStore.replace_factors`."""
    if not features:
        return []
    # Cluster distinct names once each (a name seen 50 times must not outweigh the rest by repetition).
    distinct: dict[str, int] = {}
    for i, f in enumerate(features):
        distinct.setdefault(f.name, i)
    names = list(distinct)
    labels = cluster_names(name_vecs[[distinct[n] for n in names]], threshold)
    groups: dict[int, list[str]] = defaultdict(list)
    for name, label in zip(names, labels, strict=True):
        groups[label].append(name)
    constructed = len({f.entry_id for f in features})
    rows = []
    for member_names in groups.values():
        member_set = set(member_names)
        idx = [i for i, f in enumerate(features) if f.name in member_set]
        members = [features[i] for i in idx]
        if len({f.entry_id for f in members}) < min_support:
            continue
        counts = Counter(f.name for f in members)
        # The factor is named after its most used feature name (ties: the shorter, more generic one).
        title = min(counts, key=lambda n: (-counts[n], len(n), n))
        centroid = name_vecs[idx].mean(axis=0)
        centroid = centroid / (np.linalg.norm(centroid) or 1.0)
        stats = factor_stats(members, responses, constructed)
        ordered = sorted(member_set, key=lambda n: (-counts[n], n))
        rows.append((title, ordered, stats, centroid.astype(np.float32), [f.id for f in members]))
    rows.sort(key=influence_order)
    return rows


def describe_factor(name: str, stats: FactorStats, max_values: int = 4) -> str:
    """One line per factor for prompts: frequency, values, how responses vary.

    The name, values and responses come from the user's history, so each is a quoted literal (memory's
    `quote`); an absent association is left out rather than shown as a number.
    """
    parts = []
    for v in stats.values[:max_values]:
        if stats.numeric_responses and v.response_mean is not None:
            parts.append(f"{quote(v.value)} (x{v.count}, avg response {v.response_mean:g})")
        elif v.top_responses:
            top = v.top_responses[0]
            parts.append(f"{quote(v.value)} (x{v.count}, usually {quote(top[0])})")
        else:
            parts.append(f"{quote(v.value)} (x{v.count})")
    assoc = "" if stats.association is None else f"; influence on responses {stats.association:.2f}"
    return f"- {quote(name)}: seen in {stats.frequency:.0%} of history{assoc}; values: " + ", ".join(parts)


def value_note(stats: FactorStats, value: str) -> str | None:
    """How the user responds when the factor takes `value` (for compact reasoning paths), if known."""
    for v in stats.values:
        if v.value.lower() == value.lower():
            if stats.numeric_responses and v.response_mean is not None:
                return f"average response {v.response_mean:g} over {v.count}"
            if v.top_responses:
                return f"usually '{v.top_responses[0][0]}'"
    return None
