"""Every recommender passes the same checks: learns in order, never recommends what was consumed."""

from __future__ import annotations

import numpy as np
import pytest

from state.baselines import (
    METHODS,
    BiasedMFRecommender,
    CoOccurrenceRecommender,
    Query,
    make_methods,
    tie_order,
    top_rows,
)
from state.catalogue import Catalogue
from state.datasets import ReplayEvent, ReplayItem
from state.engine import EngineConfig
from state.evaluation import build_catalogue


def catalogue(n: int = 12, dim: int = 8, seed: int = 3) -> Catalogue:
    rng = np.random.default_rng(seed)
    vecs = rng.normal(size=(n, dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    items = [ReplayItem(f"i{r}", f"item {r}", category=f"c{r % 3}") for r in range(n)]
    return build_catalogue(items, vecs, "v1")


def stream(n_events: int = 200, n_users: int = 6, n_items: int = 12) -> list[ReplayEvent]:
    rng = np.random.default_rng(1)
    types = ["click", "view", "like", "impression", "dislike"]
    return [
        ReplayEvent(
            f"u{rng.integers(n_users)}",
            types[int(rng.integers(len(types)))],
            f"i{rng.integers(n_items)}",
            1_700_000_000_000 + 60_000 * t,
        )
        for t in range(n_events)
    ]


@pytest.mark.parametrize("name", METHODS)
def test_conformance_never_an_excluded_row_and_at_most_k(name: str) -> None:
    cat = catalogue()
    (method,) = make_methods([name], cat, EngineConfig(), seed=5)
    for offset, event in enumerate(stream()):
        method.learn_one(event, offset)
    exclude_rows = [0, 3, 4]
    query = Query("u1", {f"i{r}" for r in exclude_rows}, exclude_rows)
    for k in (1, 5, 12):
        (rows,) = method.rank([query], k)
        assert len(rows) == min(k, 12 - len(exclude_rows))
        assert len(set(rows)) == len(rows)
        assert not set(rows) & set(exclude_rows)
    cold = method.rank([Query("nobody")], 5)[0]
    assert len(cold) == 5


def test_top_rows_breaks_ties_by_the_given_order_not_by_row() -> None:
    scores = np.array([1.0, 0.0, 0.0, 0.0])
    assert top_rows(scores, [], 3, np.array([0, 3, 2, 1])) == [0, 3, 2]
    assert sorted(tie_order(5, 1).tolist()) == [0, 1, 2, 3, 4]


def test_cooccurrence_recommends_what_followed_the_users_last_item() -> None:
    cat = catalogue()
    method = CoOccurrenceRecommender(cat, half_life_s=86_400.0)
    t = 1_700_000_000_000
    for offset, user in enumerate(f"v{n}" for n in range(300)):
        # Every user clicks i1 then i2: "readers of i1 also read i2".
        method.learn_one(ReplayEvent(user, "click", "i1", t + offset), 2 * offset)
        method.learn_one(ReplayEvent(user, "click", "i2", t + offset), 2 * offset + 1)
    method.learn_one(ReplayEvent("new", "click", "i1", t + 1000), 1000)
    assert method.rank([Query("new", {"i1"}, [1])], 1) == [[2]]


def test_biased_mf_learns_a_preference() -> None:
    cat = catalogue()
    method = BiasedMFRecommender(cat, n_factors=4, seed=1)
    t = 1_700_000_000_000
    for n in range(400):
        method.learn_one(ReplayEvent(f"u{n % 20}", "click", "i5", t + n, rating=5.0), n)
        method.learn_one(ReplayEvent(f"u{n % 20}", "dislike", "i6", t + n, rating=1.0), n)
    (rows,) = method.rank([Query("u3")], 12)
    assert rows.index(5) < rows.index(6)


def test_streamrec_variants_share_one_engine_and_apply_each_event_once() -> None:
    cat = catalogue()
    methods = make_methods(["content", "streamrec", "content+collab"], cat, EngineConfig())
    event = ReplayEvent("u", "click", "i1", 1_700_000_000_000)
    for method in methods:
        method.learn_one(event, 0)
    shared = methods[1].shared  # type: ignore[attr-defined]
    assert shared.state("u").events == 1
    assert all(m.shared is shared for m in methods)  # type: ignore[attr-defined]


def test_group_serving_gives_warm_up_users_their_groups_list_minus_what_they_consumed() -> None:
    from state.baselines import EngineRecommender, GroupServingRecommender, SharedEngine

    cat = catalogue()
    config = EngineConfig()
    method = GroupServingRecommender(
        EngineRecommender("streamrec", SharedEngine(cat, config), config.weights), sync_every=50
    )
    events = stream()
    for offset, event in enumerate(events):
        method.learn_one(event, offset)
    assert method.lists, "seasoned users seeded groups and a sync ranked their centroids"
    t = events[-1].ts_ms
    method.learn_one(ReplayEvent("w", "click", "i0", t + 1), len(events))
    method.learn_one(ReplayEvent("w", "like", "i5", t + 2), len(events) + 1)
    group = method.personal.shared.states["w"].group
    assert group in method.lists
    (rows,) = method.rank([Query("w", {"i0", "i5"}, [0, 5])], 5)
    expected = [r for r in method.lists[group] if r not in (0, 5)][:5]
    assert rows[: len(expected)] == expected
    assert len(rows) == 5 and not {0, 5} & set(rows)
    # Past warm-up the personal ranking serves the user.
    for n in range(3):
        method.learn_one(ReplayEvent("w", "click", f"i{6 + n}", t + 3 + n), len(events) + 2 + n)
    (personal,) = method.personal.rank([Query("w", {"i0", "i5"}, [0, 5])], 5)
    assert method.rank([Query("w", {"i0", "i5"}, [0, 5])], 5) == [personal]


def test_a_replay_refreshes_the_click_models_signals_by_event_count_not_wall_clock() -> None:
    from state.baselines import REPLAY_EVENTS_PER_S, SharedEngine

    shared = SharedEngine(catalogue(), EngineConfig())
    shared.apply(ReplayEvent("u", "click", "i1", 1_700_000_000_000), 3 * REPLAY_EVENTS_PER_S)
    assert shared.engine.clock() == 3.0
