"""Metric correctness on cases computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from state.metrics import (
    auc,
    coverage,
    gini,
    group_gap,
    hit_at,
    impression_metrics,
    intra_list_diversity,
    lorenz_curve,
    ndcg_at,
    reciprocal_rank,
    self_information,
)


def test_single_target_accuracy_metrics() -> None:
    ranks = [1, 2, 11, None]
    assert [hit_at(r, 10) for r in ranks] == [1.0, 1.0, 0.0, 0.0]
    assert ndcg_at(2, 10) == pytest.approx(1 / math.log2(3))
    assert ndcg_at(11, 10) == 0.0
    assert [reciprocal_rank(r) for r in ranks] == [1.0, 0.5, pytest.approx(1 / 11), 0.0]


def test_auc_counts_pairs_and_half_ties() -> None:
    # 0.8 beats all three negatives; 0.4 beats 0.2, ties 0.4, loses to 0.6: (3 + 1.5) / 6.
    assert auc([0.8, 0.4], [0.6, 0.2, 0.4]) == pytest.approx(0.75)
    assert auc([0.1], [0.9]) == 0.0
    assert auc([], [0.1]) is None


def test_impression_metrics_match_the_mind_leaderboard_formulas() -> None:
    # Order by score: labels [0, 0, 1, 1]; clicks at ranks 3 and 4.
    m = impression_metrics([1, 0, 0, 1], [0.1, 0.4, 0.3, 0.2])
    assert m["auc"] == 0.0
    assert m["mrr"] == pytest.approx((1 / 3 + 1 / 4) / 2)
    dcg = 1 / math.log2(4) + 1 / math.log2(5)
    ideal = 1 + 1 / math.log2(3)
    assert m["ndcg@5"] == pytest.approx(dcg / ideal)
    assert m["ndcg@10"] == pytest.approx(dcg / ideal)
    perfect = impression_metrics([1, 0, 0], [0.9, 0.1, 0.2])
    assert perfect == {"auc": 1.0, "mrr": 1.0, "ndcg@5": 1.0, "ndcg@10": 1.0}


def test_intra_list_diversity_is_mean_pairwise_cosine_distance() -> None:
    e0, e1 = np.eye(2, dtype=np.float32)
    mid = (e0 + e1) / np.sqrt(2)
    got = intra_list_diversity(np.stack([e0, e1, mid]).astype(np.float32))
    assert got == pytest.approx((1.0 + 2 * (1 - 1 / np.sqrt(2))) / 3, abs=1e-6)
    assert intra_list_diversity(e0[None, :]) is None


def test_self_information_is_laplace_smoothed_popularity() -> None:
    info = self_information([3, 0], 3, 2)
    assert info.tolist() == pytest.approx([-math.log2(4 / 5), -math.log2(1 / 5)])


def test_gini_and_lorenz_curve() -> None:
    # Mean absolute difference 20 / (2 * n^2 * mean) = 20 / 80.
    assert gini([4, 1, 3, 2]) == pytest.approx(0.25)
    assert gini([5, 5]) == 0.0
    x, y = lorenz_curve([0, 0, 2, 2])
    assert x.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert y.tolist() == [0.0, 0.0, 0.0, 0.5, 1.0]


def test_coverage_and_group_gap() -> None:
    assert coverage([1, 1, 2], 4) == 0.5
    assert group_gap({"F": 0.5, "M": 0.2, "X": 0.4}) == pytest.approx(0.3)
    assert group_gap({"F": 0.5}) is None
