"""The ranking guard: each user's next positive judges both top-10s; the better one serves."""

from __future__ import annotations

from state.engine import Interaction
from state.features import FeatureWeights
from state.guard import COLLABORATIVE, MIN_COMPARED, RankingGuard, gain
from tests.unit.test_ranking import T0, _engine


def test_gain_is_ndcg_at_10_of_one_relevant_item() -> None:
    top = tuple(f"i{p}" for p in range(12))
    assert gain(top[:10], "i0") == 1.0
    assert abs(gain(top[:10], "i2") - 0.5) < 1e-12  # 1 / log2(2 + 2)
    assert gain(top[:10], "i11") == 0.0


def _feed(guard: RankingGuard, n: int, learned_hit: bool, collab_hit: bool) -> None:
    for e in range(n):
        user = f"u{e}"
        learned = ["hit" if learned_hit else "x", "y"]
        collab = ["hit" if collab_hit else "x", "y"]
        # The guard is handed (served list, alternative list) in serving order.
        if guard.serving == 0:
            guard.remember(user, learned, collab)
        else:
            guard.remember(user, collab, learned)
        guard.observe(user, "hit")


def test_the_better_order_takes_over_only_after_enough_evidence() -> None:
    guard = RankingGuard()
    learned = FeatureWeights.of({"content": 1.0})
    assert guard.weights(learned) == (learned, COLLABORATIVE)
    _feed(guard, MIN_COMPARED - 1, learned_hit=False, collab_hit=True)
    assert guard.serving == 0  # not yet: too few comparisons
    _feed(guard, 1, learned_hit=False, collab_hit=True)
    assert guard.serving == 1 and guard.switches == 1
    assert guard.weights(learned) == (COLLABORATIVE, learned)
    # Serving collaborative now; when the learned order wins clearly, it comes back.
    _feed(guard, 3000, learned_hit=True, collab_hit=False)
    assert guard.serving == 0 and guard.switches == 2


def test_equal_orders_never_switch_and_unranked_users_are_ignored() -> None:
    guard = RankingGuard()
    _feed(guard, 2 * MIN_COMPARED, learned_hit=True, collab_hit=True)
    assert guard.serving == 0 and guard.switches == 0
    guard.observe("never-ranked", "hit")
    assert guard.compared == 2 * MIN_COMPARED
    guard.remember("u", ["a"], [])  # no competing list: nothing to judge
    assert "u" not in guard.lists


def test_engine_judges_what_it_served_on_the_users_next_click() -> None:
    engine, _ = _engine()
    assert engine.guard is not None
    state = engine.new_state()
    for n, item in enumerate(["t1-0", "t1-1"]):
        engine.apply(state, Interaction("u", "click", item, T0 + n, offset=n))
    signals = engine.signals()
    assert signals.alternative == COLLABORATIVE  # warm-up: the blend serves, collaborative competes
    ranked = engine.rank_requests([engine.request("u", state)], 10, signals)
    assert ranked[0].alternative  # the competing top-10
    engine.served([("u", [i for i, _ in ranked[0].items[:10]], ranked[0].alternative)])
    assert "u" in engine.guard.lists
    clicked = ranked[0].items[0][0]
    engine.apply(state, Interaction("u", "click", clicked, T0 + 5, offset=5))
    assert engine.guard.compared == 1 and "u" not in engine.guard.lists
    assert engine.guard.means[0] > 0.0  # the served list had it first
