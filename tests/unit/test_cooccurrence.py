"""Co-occurrence: decayed pairs are forgotten, never overflow; what the engine pairs and how."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from state.catalogue import Catalogue
from state.cooccurrence import CoOccurrence
from state.engine import RECENCY_DECAY, RECENT_ITEMS, Engine, EngineConfig, Interaction

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


def _engine(n: int) -> Engine:
    catalogue = Catalogue(2, "v1")
    for j in range(n):
        angle = j / n
        catalogue.upsert(f"i{j}", np.float32([np.cos(angle), np.sin(angle)]), version="v1")
    engine = Engine(catalogue, EngineConfig(click_model=False))
    engine.cooccurrence_long = CoOccurrence(30 * 86_400.0, fold_interval_s=0.0)
    return engine


def test_the_engine_pairs_what_users_viewed_and_liked_but_not_what_they_rejected() -> None:
    engine = _engine(4)
    state = engine.new_state()
    for offset, (kind, item) in enumerate(
        [("dislike", "i3"), ("view", "i0"), ("impression", "i2"), ("like", "i1")]
    ):
        engine.apply(state, Interaction("u", kind, item, T0 + offset, offset=offset))
    matrix = engine.cooccurrence_long.transition(4).toarray()
    assert matrix[0, 1] == matrix[1, 0] == 1.0  # the view and the like, both ways
    assert matrix[3].sum() == matrix[2].sum() == 0.0  # the dislike and the bare impression


def test_a_users_older_items_weigh_less_in_the_collaborative_score() -> None:
    engine = _engine(4)
    state = engine.new_state()
    for offset, item in enumerate(["i0", "i1", "i2"]):
        engine.apply(state, Interaction("u", "click", item, T0 + offset, offset=offset))
    weights = dict(engine.request("u", state).recent)
    assert weights["i2"] == 1.0 and weights["i1"] == RECENCY_DECAY
    assert weights["i0"] == pytest.approx(RECENCY_DECAY**2)


def test_the_click_models_neighbour_negative_co_occurs_with_a_recent_item() -> None:
    engine = _engine(6)
    other, user = engine.new_state(), engine.new_state()
    for offset, item in enumerate(["i0", "i1", "i2"]):  # another user: i0, i1, i2 together
        engine.apply(other, Interaction("v", "click", item, T0 + offset, offset=offset))
    engine.apply(user, Interaction("u", "click", "i0", T0 + 10, offset=10))
    signals = engine.signals()
    picks = {
        r
        for _ in range(50)
        for r in engine._neighbour_negative(user.engaged(RECENT_ITEMS), signals, positive=5)
    }
    assert picks == {1, 2}
    assert engine._neighbour_negative([], signals, positive=5) == []
