"""The prequential harness: hand-computed scores and the no-leakage property."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from state.baselines import Query, make_methods
from state.datasets import ImpressionList, Replay, ReplayEvent, ReplayItem
from state.engine import EngineConfig
from state.evaluation import EvalOptions, build_catalogue, evaluate

T0 = 1_767_225_600_000
ITEMS = [ReplayItem(i, f"item {i}", category=c) for i, c in (("A", "x"), ("B", "x"), ("C", "y"))]


def orthogonal_catalogue():  # type: ignore[no-untyped-def]
    return build_catalogue(ITEMS, np.eye(3, dtype=np.float32), "v1")


def leak_sensitive_replay() -> Replay:
    """Scored events whose own application would exclude (consume) their target.

    By hand, test-then-train: u2's click on B ranks [A, B] (A is the only popular item, C is
    consumed by u2) -> rank 2; u1's click on B ranks [B, C] (B now popular, A consumed) -> rank 1.
    Had either event been applied before its ranking, B would be excluded: a miss.
    """
    steps = [
        ReplayEvent("u2", "view", "C", T0, test=False),
        ReplayEvent("u1", "click", "A", T0 + 1000, test=False),
        ReplayEvent("u2", "click", "B", T0 + 2000),
        ReplayEvent("u1", "click", "B", T0 + 3000),
    ]
    return Replay("leak", list(ITEMS), list(steps))


@pytest.mark.parametrize("method", ["popularity", "decayed-popularity", "streamrec"])
def test_scores_are_the_hand_computed_test_then_train_values(method: str) -> None:
    cat = orthogonal_catalogue()
    result = evaluate(leak_sensitive_replay(), cat, make_methods([method], cat, EngineConfig()))
    metrics = result.methods[method].metrics
    assert metrics["tests"] == 2
    assert metrics["hr@10"] == 1.0
    assert metrics["mrr"] == pytest.approx((1 / 2 + 1) / 2)
    assert metrics["ndcg@10"] == pytest.approx((1 / np.log2(3) + 1) / 2)


class Spy:
    """Records, at every ranking, which events it had learned by then."""

    name = "spy"

    def __init__(self) -> None:
        self.learned: list[int] = []
        self.seen_at_rank: list[tuple[str, list[int]]] = []

    def learn_one(self, event: ReplayEvent, offset: int) -> None:
        self.learned.append(offset)

    def rank(self, queries: Sequence[Query], k: int) -> list[list[int]]:
        self.seen_at_rank.append((queries[0].user_id, list(self.learned)))
        return [[0, 1, 2][:k] for _ in queries]


def test_no_ranking_sees_the_event_it_is_scored_on_or_anything_later() -> None:
    steps: list[ReplayEvent | ImpressionList] = [
        ReplayEvent("u1", "click", "A", T0),
        ReplayEvent("u2", "impression", "B", T0 + 1),
        ImpressionList("u3", T0 + 2, ("A", "C"), (0, 1)),
        ReplayEvent("u1", "like", "B", T0 + 3),
    ]
    spy = Spy()
    evaluate(Replay("spy", list(ITEMS), steps), orthogonal_catalogue(), [spy])
    # Offsets: 0 (u1 click), 1 (u2 impression), 2-3 (u3's list), 4 (u1 like).
    assert spy.seen_at_rank == [("u1", []), ("u2", [0]), ("u3", [0, 1]), ("u1", [0, 1, 2, 3])]
    assert spy.learned == [0, 1, 2, 3, 4]


def test_impression_lists_and_beyond_accuracy_figures() -> None:
    steps: list[ReplayEvent | ImpressionList] = [
        ReplayEvent("u1", "click", "A", T0, test=False),
        ReplayEvent("u2", "click", "A", T0 + 1, test=False),
        # Popularity ranks A first, then B/C (tie); the clicked A is rank 1.
        ImpressionList("u3", T0 + 2, ("C", "A"), (0, 1)),
    ]
    cat = orthogonal_catalogue()
    result = evaluate(
        Replay("imp", list(ITEMS), steps), cat, make_methods(["popularity"], cat, EngineConfig())
    )
    m = result.methods["popularity"].metrics
    assert m["auc"] == 1.0 and m["imp_mrr"] == 1.0 and m["imp_ndcg@10"] == 1.0
    assert m["hr@10"] == 1.0 and m["mrr"] == 1.0
    assert m["coverage"] == 1.0  # one list of all three items
    assert m["diversity"] == pytest.approx(1.0)  # orthogonal vectors
    exposure = result.methods["popularity"].exposure
    assert exposure.tolist() == [1.0, 1.0, 1.0] and m["gini_items"] == 0.0
    # Categories x (A, B) got two exposures, y (C) one: Gini of [1, 2].
    assert m["gini_categories"] == pytest.approx(1 / 6)


def test_windows_and_user_group_gaps() -> None:
    steps = [ReplayEvent(f"w{n}", "click", "A", T0 + n, test=False) for n in range(100)]
    users = {}
    for n in range(80):
        user = f"u{n}"
        users[user] = {"gender": "F" if n % 2 else "M"}
        steps.append(ReplayEvent(user, "click", "A" if n % 2 else "C", T0 + 1000 * (n + 1)))
    cat = orthogonal_catalogue()
    result = evaluate(
        Replay("groups", list(ITEMS), list(steps), users),
        cat,
        make_methods(["popularity"], cat, EngineConfig()),
        EvalOptions(windows=4),
    )
    m = result.methods["popularity"].metrics
    assert m["ndcg@10[gender=F]"] == 1.0
    assert m["ndcg@10[gender=M]"] < 1.0
    assert m["ndcg@10_gap:gender"] == pytest.approx(1.0 - m["ndcg@10[gender=M]"])
    series = result.methods["popularity"].windows["hr@10"]
    assert len(series) == 4 and all(v == 1.0 for v in series)
