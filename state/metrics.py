"""Recommendation quality metrics: accuracy, beyond-accuracy and fairness, as pure functions.

The evaluation harness (:mod:`state.evaluation`) feeds these from a prequential replay; each one
is small enough to check by hand (see the doctests and ``tests/unit/test_metrics.py``). Ranks are
1-based; ``None`` means "not in the ranked list" (a miss).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]


def hit_at(rank: int | None, k: int) -> float:
    """1.0 when the relevant item is ranked within the top ``k``, else 0.0.

    >>> hit_at(3, 10), hit_at(11, 10), hit_at(None, 10)
    (1.0, 0.0, 0.0)
    """
    return 1.0 if rank is not None and rank <= k else 0.0


def ndcg_at(rank: int | None, k: int) -> float:
    """nDCG@k for one relevant item at ``rank``: ``1 / log2(rank + 1)`` within the top ``k``.

    With a single relevant item the ideal DCG is 1, so no normalisation is needed.

    >>> ndcg_at(1, 10), round(ndcg_at(3, 10), 4), ndcg_at(12, 10)
    (1.0, 0.5, 0.0)
    """
    return 1.0 / math.log2(rank + 1) if rank is not None and rank <= k else 0.0


def reciprocal_rank(rank: int | None) -> float:
    """``1 / rank``; 0.0 for an item outside the ranked list.

    >>> reciprocal_rank(4), reciprocal_rank(None)
    (0.25, 0.0)
    """
    return 1.0 / rank if rank is not None else 0.0


def auc(positive_scores: Sequence[float], negative_scores: Sequence[float]) -> float | None:
    """Probability that a random positive outscores a random negative (ties count half).

    ``None`` when either side is empty (AUC is undefined there).

    >>> auc([3.0, 1.0], [2.0, 0.0])
    0.75
    >>> auc([1.0], [1.0])
    0.5
    >>> auc([1.0], []) is None
    True
    """
    if not positive_scores or not negative_scores:
        return None
    pos = np.asarray(positive_scores, dtype=np.float64)
    neg = np.sort(np.asarray(negative_scores, dtype=np.float64))
    below = np.searchsorted(neg, pos, side="left")
    not_above = np.searchsorted(neg, pos, side="right")
    wins = below + 0.5 * (not_above - below)
    return float(wins.sum() / (len(pos) * len(neg)))


def _dcg(labels_in_order: FloatArray, k: int) -> float:
    top = labels_in_order[:k]
    gains = np.power(2.0, top) - 1.0
    return float(np.sum(gains / np.log2(np.arange(len(top)) + 2.0)))


def impression_metrics(labels: Sequence[int], scores: Sequence[float]) -> dict[str, float]:
    """AUC, MRR, nDCG@5 and nDCG@10 of one impression list, as the MIND leaderboard computes them.

    ``labels`` are 1 (clicked) / 0 per candidate, ``scores`` the model's scores; lists without a
    click or without a non-click are skipped by the leaderboard, and so by the caller.

    >>> m = impression_metrics([0, 1, 0], [0.9, 0.5, 0.1])
    >>> m["auc"], m["mrr"], round(m["ndcg@10"], 4)
    (0.5, 0.5, 0.6309)
    """
    y = np.asarray(labels, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-s, kind="stable")
    ranked = y[order]
    ideal = np.sort(y)[::-1]
    rr = ranked / (np.arange(len(ranked)) + 1.0)
    value = auc(s[y > 0].tolist(), s[y == 0].tolist())
    return {
        "auc": 0.5 if value is None else value,
        "mrr": float(rr.sum() / max(y.sum(), 1.0)),
        "ndcg@5": _dcg(ranked, 5) / max(_dcg(ideal, 5), 1e-12),
        "ndcg@10": _dcg(ranked, 10) / max(_dcg(ideal, 10), 1e-12),
    }


def intra_list_diversity(vectors: npt.NDArray[np.float32]) -> float | None:
    """Mean pairwise cosine distance ``1 - cos`` between the rows of ``vectors`` (unit rows).

    ``None`` for lists shorter than two.

    >>> e = np.eye(3, dtype=np.float32)
    >>> intra_list_diversity(e)
    1.0
    >>> intra_list_diversity(np.stack([e[0], e[0]]))
    0.0
    """
    n = len(vectors)
    if n < 2:
        return None
    sims = np.asarray(vectors, dtype=np.float64) @ np.asarray(vectors, dtype=np.float64).T
    upper = sims[np.triu_indices(n, k=1)]
    return float(np.mean(1.0 - upper))


def self_information(counts: npt.ArrayLike, total: float, n_items: int) -> FloatArray:
    """``-log2 p(i)`` with ``p(i) = (count_i + 1) / (total + n_items)`` (Laplace-smoothed).

    ``counts`` are the items' interaction counts so far and ``total`` their sum, so an item
    nobody has touched yet is the most novel and popularity is measured as of the ranking.

    >>> self_information([1, 0], 2, 2).tolist()
    [1.0, 2.0]
    """
    c = np.asarray(counts, dtype=np.float64)
    return -np.log2((c + 1.0) / (total + n_items))


def gini(values: npt.ArrayLike) -> float:
    """Gini coefficient of non-negative ``values``: 0 for perfect equality, ->1 for one holder.

    >>> gini([1, 1, 1, 1])
    0.0
    >>> gini([0, 0, 0, 4])
    0.75
    >>> gini([])
    0.0
    """
    x = np.sort(np.asarray(values, dtype=np.float64))
    n = len(x)
    if n == 0 or x.sum() <= 0:
        return 0.0
    ranks = np.arange(1, n + 1, dtype=np.float64)
    return float((2.0 * np.sum(ranks * x)) / (n * x.sum()) - (n + 1.0) / n)


def lorenz_curve(values: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
    """Cumulative share of items (x) against cumulative share of exposure (y), poorest first."""
    x = np.sort(np.asarray(values, dtype=np.float64))
    total = x.sum()
    shares = np.concatenate([[0.0], np.cumsum(x) / total]) if total > 0 else np.zeros(len(x) + 1)
    return np.linspace(0.0, 1.0, len(x) + 1), shares


def coverage(recommended: Iterable[int], n_items: int) -> float:
    """Share of the catalogue that appeared in at least one recommendation list.

    >>> coverage([0, 1, 1, 3], 8)
    0.375
    """
    return len(set(recommended)) / n_items if n_items else 0.0


def mean(values: Sequence[float]) -> float | None:
    """Arithmetic mean, ``None`` for no values (a metric with nothing to average)."""
    return float(np.mean(values)) if len(values) else None


def group_gap(per_group: dict[str, float]) -> float | None:
    """Largest minus smallest per-group value (the user-fairness gap); ``None`` below 2 groups.

    >>> group_gap({"F": 0.30, "M": 0.25})
    0.05
    """
    if len(per_group) < 2:
        return None
    return round(max(per_group.values()) - min(per_group.values()), 12)
