"""Co-occurrence over a long, quiet stream: decayed pairs are forgotten, never overflow."""

from __future__ import annotations

import warnings

import numpy as np

from state.cooccurrence import CoOccurrence

DAY_MS = 86_400_000
T0 = 1_767_225_600_000


def test_pairs_decayed_for_months_are_dropped_and_scores_stay_finite() -> None:
    cooc = CoOccurrence(half_life_s=86_400.0, fold_interval_s=0.0)
    cooc.observe([0], 1, T0)
    cooc.transition(4)
    # 140 half-lives later (float32 denormals: 2**-140) a new pair arrives.
    cooc.observe([2], 3, T0 + 140 * DAY_MS)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an overflow in the normalisation would raise here
        matrix = cooc.transition(4)
        scores = cooc.scores([[(2, 1.0)], [(0, 1.0)]], 4).toarray()
    assert np.isfinite(matrix.data).all()
    assert matrix[0, 1] == 0.0 and matrix[2, 3] == 1.0
    assert scores.tolist() == [[0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]]
