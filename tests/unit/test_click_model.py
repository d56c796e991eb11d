"""The click model learns which signal predicts engagement and turns it into blend weights."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest

from state.catalogue import Catalogue
from state.click_model import WARMUP_EXAMPLES, CheckpointError, ClickModel
from state.engine import CLICK_WINDOW_MS, Engine, EngineConfig, Interaction
from state.features import FEATURES, FeatureWeights, feature_stack
from state.interest import FORWARDED_REMEMBERED
from streams.click_sync import ClickSync, restore

T0 = 1_767_225_600_000


def _stream(n: int, seed: int = 3) -> list[tuple[dict[str, float], bool]]:
    """Engagement follows the collaborative score; content and popularity are noise."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        x = {"content": rng.random(), "collab": rng.random(), "popular": rng.random()}
        out.append((x, rng.random() < x["collab"] ** 2))
    return out


def test_learned_weights_favour_the_signal_that_predicts_clicks() -> None:
    model = ClickModel()
    assert model.weights() is None  # warm-up: the blend's own order
    for x, y in _stream(WARMUP_EXAMPLES * 4):
        model.learn_one(x, y)
    learned = model.weights()
    assert learned is not None
    w = learned.as_dict()
    assert w["collab"] > 3 * abs(w["content"]) and w["collab"] > 3 * abs(w["popular"])
    assert model.metrics()["click_auc"] > 0.7


def test_an_interaction_feature_learns_popular_within_the_users_interest() -> None:
    """Clicks go to popular items *the user likes*: neither signal alone ranks them right."""
    rng = random.Random(5)
    model = ClickModel()
    for _ in range(WARMUP_EXAMPLES * 8):
        c, p = rng.random(), rng.random()
        f = feature_stack(*(np.float32([v]) for v in (c, 0.0, 0.0, 0.0, p, p, 0.0, 0.0, 0.0, 1.0)))[
            :, 0
        ]
        model.learn_one(dict(zip(FEATURES, f.tolist(), strict=True)), rng.random() < c * p)
    learned = model.weights()
    assert learned is not None
    w = learned.as_dict()
    assert w["content_x_popular"] > 0
    # On-interest and popular beats on-interest and obscure, and popular off-interest items.
    grid = [(0.9, 0.9), (0.9, 0.1), (0.1, 0.9)]
    c, p = (np.float32([g[i] for g in grid]) for i in (0, 1))
    zero = np.zeros(len(grid), dtype=np.float32)
    feats = feature_stack(c, zero, zero, zero, p, p, zero, zero, zero, zero + 1)
    scores = learned.array() @ feats
    assert scores[0] > scores[1] and scores[0] > scores[2]


def test_a_sudden_change_of_what_users_click_is_detected_as_drift() -> None:
    model = ClickModel()
    for x, y in _stream(3000):
        model.learn_one(x, y)
    before = model.stats.drifts
    rng = random.Random(9)
    for _ in range(3000):  # now content decides and collab is noise
        x = {"content": rng.random(), "collab": rng.random(), "popular": rng.random()}
        model.learn_one(x, rng.random() < x["content"] ** 2 * 0.2 + (x["collab"] < 0.2))
    assert model.stats.drifts > before


def test_checkpoints_round_trip_and_foreign_ones_are_refused() -> None:
    model = ClickModel()
    for x, y in _stream(800):
        model.learn_one(x, y)
    raw = model.to_bytes(b"our key")
    back = ClickModel.from_bytes(raw, b"our key")
    assert back.stats == model.stats and back.weights() == model.weights()
    with pytest.raises(CheckpointError):
        ClickModel.from_bytes(raw, b"another deployment")
    with pytest.raises(CheckpointError):
        ClickModel.from_bytes(raw[:40] + b"x" + raw[41:], b"our key")


async def test_drift_goes_to_the_drift_topic_once_per_sync(tmp_path: Path) -> None:
    engine = Engine(Catalogue(4, "v1"))
    sent: list[dict[str, object]] = []

    async def send(report: dict[str, object]) -> None:
        sent.append(report)

    sync = ClickSync(cast(Any, None), engine, tmp_path, 1.0, send)
    await sync._report_drift()
    assert sent == []
    assert engine.click is not None
    engine.click.stats.drifts += 2
    await sync._report_drift()
    await sync._report_drift()
    assert len(sent) == 1 and sent[0]["drifts"] == 2 and sent[0]["model_version"] == "v1"


async def test_a_checkpoint_written_by_the_sync_is_what_a_restart_resumes_from(
    tmp_path: Path,
) -> None:
    engine = Engine(Catalogue(4, "v1"))
    assert engine.click is not None
    for j in range(WARMUP_EXAMPLES):
        engine.click.learn_pair({"collab": 1.0, "content": j % 3}, {"collab": 0.0})
    assert engine.guard is not None
    engine.guard.serving, engine.guard.compared = 1, 700  # the guard chose the fixed order
    await ClickSync(cast(Any, None), engine, tmp_path, 1.0).checkpoint()
    restarted = Engine(Catalogue(4, "v1"))
    assert restore(restarted, tmp_path)
    assert restarted.click is not None and restarted.click.weights() == engine.click.weights()
    assert restarted.guard is not None and restarted.guard.verdict() == engine.guard.verdict()
    assert _names(tmp_path) == ["click-model.ckpt", "click-model.key", "ranking-guard.json"]


def test_a_damaged_guard_verdict_is_refused_and_the_guard_starts_afresh(tmp_path: Path) -> None:
    (tmp_path / "ranking-guard.json").write_text('{"serving": 7}')
    engine = Engine(Catalogue(4, "v1"))
    assert not restore(engine, tmp_path)  # no model checkpoint either
    assert engine.guard is not None and engine.guard.serving == 0 and engine.guard.compared == 0


def _names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_an_items_age_is_a_feature_ranking_and_learning_read_alike() -> None:
    catalogue = Catalogue(2, "v1")
    day = 24 * 3600 * 1000
    catalogue.upsert("new", np.float32([1.0, 0.0]), version="v1", created_ms=T0)
    catalogue.upsert("old", np.float32([1.0, 0.0]), version="v1", created_ms=T0 - 2 * day)
    catalogue.upsert("undated", np.float32([0.0, 1.0]), version="v1")
    engine = Engine(catalogue)
    state = engine.new_state()
    engine.apply(state, Interaction("u", "click", "undated", T0, offset=0))
    signals = engine.signals()
    assert signals.fresh.tolist() == [1.0, 0.25, 0.0]  # one-day half-life; unknown: 0
    feats = engine._features(state, state.engaged(10), signals, [0, 1, 2])
    assert [f["fresh"] for f in feats] == [1.0, 0.25, 0.0]


def test_popularity_within_the_users_group_is_a_feature_of_learning_and_ranking() -> None:
    catalogue = Catalogue(2, "v1")
    for j in range(6):
        catalogue.upsert(f"i{j}", np.float32([1.0, j / 10]) / np.hypot(1.0, j / 10), version="v1")
    engine = Engine(catalogue)
    fans = [engine.new_state() for _ in range(3)]
    for n, state in enumerate(fans):
        state.group = "3"
        engine.apply(state, Interaction(f"fan{n}", "like", "i5", T0 + n, offset=n))
    loner = engine.new_state()
    engine.apply(loner, Interaction("loner", "click", "i0", T0 + 9, offset=9))
    signals = engine.signals()
    newcomer = engine.new_state()
    newcomer.group = "3"
    newcomer.vec = np.float32([1.0, 0.0])
    assert [f["group"] for f in engine._features(newcomer, [], signals, [5, 0])] == [1.0, 0.0]
    assert [f["group"] for f in engine._features(loner, [], signals, [5, 0])] == [0.0, 0.0]
    # Ranking reads the same feature: weights on it alone put the group's favourite first.
    engine.shared_weights = FeatureWeights.of({"group": 1.0, "content": 0.01})
    ranked = engine.rank([("newcomer", newcomer), ("loner", loner)], 3)
    assert ranked[0].items[0][0] == "i5"
    assert ranked[1].items[0][0] != "i5"


def test_where_impressions_were_shown_is_learned_and_ranking_assumes_the_top() -> None:
    catalogue = Catalogue(2, "v1")
    for j in range(4):
        catalogue.upsert(f"i{j}", np.float32([1.0, j / 4]) / np.hypot(1.0, j / 4), version="v1")
    engine = Engine(catalogue, EngineConfig(click_every=1))
    assert engine.click is not None
    pairs: list[tuple[dict[str, float], dict[str, float]]] = []

    def learn_pair(clicked: dict[str, float], skipped: dict[str, float]) -> bool:
        pairs.append((clicked, skipped))
        return False

    engine.click.learn_pair = learn_pair  # type: ignore[method-assign]
    state = engine.new_state()
    engine.apply(state, Interaction("u", "impression", "i1", T0, offset=0, position=4))
    engine.apply(state, Interaction("u", "click", "i2", T0 + 1000, offset=1, position=0))
    clicked = {c["position"] for c, _ in pairs}
    skipped = sorted(round(s["position"], 6) for _, s in pairs)
    assert clicked == {1.0}  # shown at the top
    # The impression shown fifth (1 / (1 + 4)); the catalogue negatives as ranking sees them.
    assert skipped == [0.2, 1.0, 1.0]


def test_a_feedback_label_forwarded_twice_is_applied_once() -> None:
    catalogue = Catalogue(2, "v1")
    catalogue.upsert("i0", np.float32([1.0, 0.0]), version="v1")
    engine = Engine(catalogue)
    state = engine.new_state()
    like = Interaction("u", "like", "i0", T0, partition=1, offset=5, event_id="feedback:2:9")
    assert engine.apply(state, like)
    # The agent re-sent it after a crash: a new offset of the events topic, the same label.
    assert not engine.apply(state, replace(like, offset=8))
    assert engine.apply(state, replace(like, offset=9, event_id="feedback:2:10"))
    assert state.events == 2 and state.forwarded == ["feedback:2:9", "feedback:2:10"]
    for n in range(100):  # only the newest are remembered
        engine.apply(state, replace(like, offset=10 + n, event_id=f"feedback:0:{n}"))
    assert len(state.forwarded) == FORWARDED_REMEMBERED


def test_pairwise_learning_orders_the_clicked_item_above_the_skipped_one() -> None:
    rng = random.Random(11)
    model = ClickModel()
    for _ in range(WARMUP_EXAMPLES):
        hi, lo = sorted((rng.random(), rng.random()), reverse=True)
        noise = {"content": rng.random(), "popular": rng.random()}
        model.learn_pair({"collab": hi, **noise}, {"collab": lo, **noise})
    learned = model.weights()
    assert learned is not None and learned.as_dict()["collab"] > 0
    assert model.metrics()["click_auc"] > 0.9


def test_an_impression_not_clicked_becomes_the_next_clicks_negative() -> None:
    catalogue = Catalogue(2, "v1")
    for j in range(4):
        catalogue.upsert(f"i{j}", np.float32([1.0, j / 4]) / np.hypot(1.0, j / 4), version="v1")
    engine = Engine(catalogue, EngineConfig(click_every=1))
    state = engine.new_state()
    assert engine.click is not None
    engine.apply(state, Interaction("u", "click", "i0", T0, offset=0))
    alone = engine.click.stats.examples
    engine.apply(state, Interaction("u", "impression", "i1", T0 + 1000, offset=1))
    engine.apply(state, Interaction("u", "click", "i2", T0 + 2000, offset=2))
    assert engine.click.stats.examples == 2 * alone + 2  # one more pair: (i2 over i1)
    late = T0 + 2000 + CLICK_WINDOW_MS + 1
    engine.apply(state, Interaction("u", "impression", "i1", late, offset=3))
    engine.apply(state, Interaction("u", "click", "i3", late + CLICK_WINDOW_MS + 1, offset=4))
    assert engine.click.stats.examples == 3 * alone + 2  # outside the window: no pair
