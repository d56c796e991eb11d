"""Ranking and the engine on a small planted catalogue (no broker, no Redis)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from state.catalogue import Catalogue
from state.engine import Engine, Interaction
from state.features import FeatureWeights
from state.interest import normalised
from state.ranking import RankRequest

DIM = 16
T0 = 1_767_225_600_000


def _engine(n_per_topic: int = 30, topics: int = 4) -> tuple[Engine, dict[str, int]]:
    rng = np.random.default_rng(1)
    centres = [normalised(rng.normal(size=DIM).astype(np.float32)) for _ in range(topics)]
    catalogue = Catalogue(DIM, "v1", capacity=4)
    topic_of: dict[str, int] = {}
    for t, centre in enumerate(centres):
        for j in range(n_per_topic):
            vec = normalised(centre + 0.3 * rng.normal(size=DIM).astype(np.float32))
            item = f"t{t}-{j}"
            catalogue.upsert(item, vec, version="v1", title=f"topic {t} story {j}")
            topic_of[item] = t
    return Engine(catalogue), topic_of


def test_planted_interest_fills_top10_and_consumed_items_are_excluded() -> None:
    engine, topic_of = _engine()
    state = engine.new_state()
    read = [f"t2-{j}" for j in range(5)]
    for n, item in enumerate(read):
        engine.apply(state, Interaction("u", "click", item, T0 + n * 1000, offset=n))
    [ranked] = engine.rank([("u", state)], k=10)
    items = [i for i, _ in ranked.items]
    assert len(items) == 10 and ranked.source == "personal"
    assert all(topic_of[i] == 2 for i in items)
    assert not set(items) & set(read)
    assert all(ranked.why[i] for i in items)
    scores = [s for _, s in ranked.items]
    assert scores == sorted(scores, reverse=True)


def test_two_interests_both_show_up() -> None:
    engine, topic_of = _engine()
    state = engine.new_state()
    for n in range(6):
        engine.apply(state, Interaction("u", "click", f"t{n % 2}-{n}", T0 + n * 1000, offset=n))
    [ranked] = engine.rank([("u", state)], k=10)
    assert {topic_of[i] for i, _ in ranked.items} == {0, 1}


def test_redelivered_event_is_not_applied_twice() -> None:
    engine, _ = _engine()
    state = engine.new_state()
    event = Interaction("u", "click", "t1-1", T0, partition=3, offset=17)
    assert engine.apply(state, event)
    assert not engine.apply(state, event)
    assert state.events == 1


def test_user_without_signal_gets_nothing_personal() -> None:
    engine, _ = _engine()
    state = engine.new_state()
    engine.apply(state, Interaction("u", "search", None, T0))
    [ranked] = engine.rank([("u", state)], k=10)
    assert ranked.items == [] and ranked.source == "popular"


def test_removed_items_are_never_recommended() -> None:
    engine, _ = _engine()
    state = engine.new_state()
    engine.apply(state, Interaction("u", "like", "t3-0", T0))
    [before] = engine.rank([("u", state)], k=5)
    gone = before.items[0][0]
    engine.catalogue.remove(gone)
    [after] = engine.rank([("u", state)], k=5)
    assert gone not in [i for i, _ in after.items]


def test_encoder_change_re_embeds_from_history() -> None:
    engine, _ = _engine()
    state = engine.new_state()
    engine.apply(state, Interaction("u", "click", "t0-0", T0))
    fresh = Catalogue(DIM, "v2")
    vec = normalised(np.ones(DIM, dtype=np.float32))
    fresh.upsert("t0-0", vec, version="v2")
    engine2 = Engine(fresh)
    request = engine2.request("u", state)
    assert state.model_version == "v2"
    assert float(request.vec @ vec) > 0.99


def test_click_model_weights_reorder_the_blends_top_k_by_category_affinity() -> None:
    """Two categories at equal similarity: the learned category weight puts the user's first."""
    catalogue = Catalogue(2, "v1", capacity=4)
    for j in range(6):
        category = "sport" if j % 2 else "food"
        catalogue.upsert(f"i{j}", np.float32([1.0, 0.0]), version="v1", category=category)
    engine = Engine(catalogue)
    request = RankRequest("u", np.float32([1.0, 0.0]), categories={"sport": 1.0})
    plain = engine.ranker.rank(engine.signals(), [request], 6)[0]
    assert {i for i, _ in plain.items[:3]} != {"i1", "i3", "i5"}  # the blend cannot tell them
    signals = replace(engine.signals(), weights=FeatureWeights.of({"category": 1.0}))
    ranked = engine.ranker.rank(signals, [request], 6)[0]
    assert {i for i, _ in ranked.items[:3]} == {"i1", "i3", "i5"}


def test_gather_reads_sparse_entries_at_arbitrary_rows_like_scipy() -> None:
    import scipy.sparse as sp  # type: ignore[import-untyped]

    from state.ranking import _gather

    rng = np.random.default_rng(1)
    matrix = sp.random(300, 2000, density=0.01, format="csr", random_state=2, dtype=np.float32)
    users = np.broadcast_to(np.arange(300)[:, None], (300, 50))
    rows = rng.integers(0, 2000, (300, 50))
    rows[:, 0] = [matrix.indices[matrix.indptr[u]] if matrix[u].nnz else 0 for u in range(300)]
    expected = np.asarray(matrix[users.ravel(), rows.ravel()]).reshape(rows.shape)
    got = _gather(matrix, users, rows)
    assert np.count_nonzero(expected) > 100
    assert np.array_equal(got, expected.astype(np.float32))


def test_extra_rows_are_each_users_best_collaborative_rows_after_the_popular_ones() -> None:
    import scipy.sparse as sp

    from state.ranking import BlendWeights, Ranker

    rng = np.random.default_rng(3)
    matrix = sp.random(200, 500, density=0.05, format="csr", random_state=4, dtype=np.float32)
    matrix.data = rng.permutation(len(matrix.data)).astype(np.float32) + 1  # no ties
    ranker = Ranker(BlendWeights())
    e = ranker.extra
    top_popular = np.arange(e + 5, dtype=np.intp)[::-1]
    out = ranker._extra_rows(matrix, top_popular, 200)
    assert out.shape == (200, 2 * e)
    assert (out[:, :e] == top_popular[:e]).all()
    for u in range(200):
        row = matrix.getrow(u)
        best = row.indices[np.argsort(-row.data)][:e]
        assert list(out[u, e : e + len(best)]) == list(best)
        assert (out[u, e + len(best) :] == -1).all()


def test_popular_extras_come_from_the_users_categories_unless_the_user_has_none() -> None:
    """A hit far from the user's taste enters the re-ranked head only for a category-less user."""
    catalogue = Catalogue(2, "v1", capacity=4)
    for j in range(60):
        catalogue.upsert(f"s{j}", np.float32([1.0, 0.0]), version="v1", category="sport")
    catalogue.upsert("hit", np.float32([-1.0, 0.0]), version="v1", category="food")
    engine = Engine(catalogue)
    for n in range(50):  # everyone else clicks the food hit
        engine.apply(engine.new_state(), Interaction(f"o{n}", "click", "hit", T0 + n, None, 0, n))
    signals = replace(engine.signals(), weights=FeatureWeights.of({"popular": 1.0}))
    sport_fan = RankRequest("u", np.float32([1.0, 0.0]), categories={"sport": 1.0})
    newcomer = RankRequest("v", np.float32([1.0, 0.0]))
    fan, fresh = engine.ranker.rank(signals, [sport_fan, newcomer], 10)
    assert "hit" not in {i for i, _ in fan.items}
    assert fresh.items[0][0] == "hit"
