"""EASE: the closed form, the online Gram matrix, and its place in the engine's ranking."""

from __future__ import annotations

import numpy as np
import pytest

from state.ease import EaseLearner, fit, user_items
from state.engine import Engine, EngineConfig, Interaction
from state.features import FeatureWeights
from streams.ease_refit import EaseRefit
from streams.processor import Stats
from tests.unit.test_ranking import T0, _engine


def test_fit_is_the_published_closed_form() -> None:
    rng = np.random.default_rng(3)
    x = (rng.random((40, 7)) < 0.3).astype(np.float64)
    gram = x.T @ x
    inverse = np.linalg.inv(gram + 5.0 * np.eye(7))
    expected = np.eye(7) - inverse / np.diag(inverse)[None, :]
    model = fit(np.arange(7), gram, 5.0, 7)
    np.testing.assert_allclose(model.weights, expected - np.diag(np.diag(expected)), atol=1e-5)
    assert np.all(np.diag(model.weights) == 0.0)


def test_learner_pairs_items_read_together_and_covers_the_most_engaged() -> None:
    learner = EaseLearner(half_life_s=1e9, l2=1.0, max_items=4)
    ts = 0
    for _ in range(20):  # users read 0 then 1, or 2 then 3; item 4 once, item 5 never
        for a, b in ((0, 1), (2, 3)):
            learner.observe([], a, ts)
            learner.observe([a], b, ts)
            ts += 1
    learner.observe([], 4, ts)
    model = learner.refit(6)
    assert sorted(model.rows.tolist()) == [0, 1, 2, 3]  # the four most engaged
    scores = model.scores([user_items([(0, 1.0)])])
    at = model.at(scores, np.array([[1, 2, 3, 4, 5]]))[0]
    assert at[0] == 1.0  # the partner of item 0, scaled to 1
    assert at[1:].tolist() == [0.0, 0.0, 0.0, 0.0]  # other pair and uncovered items: 0
    assert learner.since_fit == 0


def test_views_count_half_in_a_users_row() -> None:
    assert user_items([(3, 2.0), (4, 0.3), (5, 1.0)]) == [(3, 1.0), (4, 0.5), (5, 1.0)]


def test_engine_refits_and_ranking_takes_ease_candidates() -> None:
    base, _ = _engine()
    engine = Engine(base.catalogue, EngineConfig(ease_refit_every=50, click_model=False))
    # Across topics: readers of t0-1 go on to t3-7, which content alone would never suggest.
    states = {}
    offset = 0
    for u in range(30):
        user = f"u{u}"
        states[user] = state = engine.new_state()
        for item in ("t0-1", "t3-7"):
            engine.apply(state, Interaction(user, "click", item, T0 + offset, offset=offset))
            offset += 1
    assert engine.ease is not None and engine.ease.model is not None
    newcomer = engine.new_state()
    engine.apply(newcomer, Interaction("new", "click", "t0-1", T0 + offset, offset=offset))
    engine.shared_weights = FeatureWeights.of({"ease": 1.0})
    [ranked] = engine.rank([("new", newcomer)], k=10)
    assert ranked.items[0][0] == "t3-7"


async def test_the_worker_refits_on_a_thread_at_most_once_per_interval() -> None:
    engine, _ = _engine()
    assert engine.ease is not None
    stats = Stats()
    job = EaseRefit(engine, stats, min_interval_s=3600.0)
    assert not engine.ease_inline  # the worker's job fits, not apply
    rows = list(range(len(engine.catalogue.snapshot())))
    for n in range(engine.ease.refit_every):
        engine.ease.observe(rows[: n % 3], rows[n % 4], T0 + n)
    await job.tick()
    assert stats.counters["ease_refits"] == 1 and engine.ease.model is not None
    for n in range(engine.ease.refit_every):
        engine.ease.observe(rows[:1], rows[2], T0 + n)
    assert engine.ease.due
    await job.tick()  # due, but the last fit is under an hour old
    assert stats.counters["ease_refits"] == 1 and engine.ease.due


async def test_a_failed_refit_is_counted_and_the_old_fit_keeps_serving(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine, _ = _engine()
    assert engine.ease is not None
    old = engine.ease.model
    engine.ease.since_fit = engine.ease.refit_every

    def singular(*_: object) -> None:
        raise np.linalg.LinAlgError("Singular matrix")

    monkeypatch.setattr("streams.ease_refit.fit", singular)
    stats = Stats()
    await EaseRefit(engine, stats, min_interval_s=0.0).tick()
    assert stats.counters["ease_refit_errors"] == 1 and stats.counters["ease_refits"] == 0
    assert engine.ease.model is old
