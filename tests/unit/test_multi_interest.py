"""Several interests per user: centroids form, stay apart, and both fill the list."""

from __future__ import annotations

import struct

import numpy as np
import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from state.catalogue import Catalogue
from state.engine import Engine, EngineConfig, Interaction
from state.interest import Interest, UserState, decode_state, encode_state, normalised
from state.multi_interest import InterestConfig, active_interests, update_interests

DIM = 16
T0 = 1_767_225_600_000


def _topics(seed: int = 1, topics: int = 4) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [normalised(rng.normal(size=DIM).astype(np.float32)) for _ in range(topics)]


def _near(centre: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return normalised(centre + 0.15 * rng.normal(size=DIM).astype(np.float32))


def test_two_planted_topics_become_two_interests_with_their_shares() -> None:
    football, cooking, *_ = _topics()
    rng = np.random.default_rng(2)
    found: list[Interest] = []
    cfg = InterestConfig()
    for n in range(30):
        topic = football if n % 3 else cooking  # two thirds football
        update_interests(found, _near(topic, rng), 1.0, T0 + n, cfg)
    active = active_interests(found, T0 + 30, cfg.half_life_s)
    assert len(active) == 2
    (v1, s1), (v2, s2) = active
    assert float(v1 @ football) > 0.9 and float(v2 @ cooking) > 0.9
    assert abs(s1 - 2 / 3) < 0.1 and abs(s1 + s2 - 1.0) < 1e-6


def test_a_full_set_merges_its_closest_pair_to_make_room() -> None:
    topics = _topics(topics=4)
    close = normalised(topics[0] + 0.2 * topics[1])
    found: list[Interest] = []
    cfg = InterestConfig(max_interests=3, join_similarity=0.99)
    for n, vec in enumerate([topics[0], topics[2], topics[3], close]):
        update_interests(found, vec, 1.0, T0 + n, cfg)
    assert len(found) == 3
    unit = [normalised(i.vec) for i in found]
    assert any(float(u @ topics[2]) > 0.99 for u in unit)
    assert any(float(u @ topics[3]) > 0.99 for u in unit)


def test_a_dislike_pushes_back_the_interest_it_resembles_and_may_remove_it() -> None:
    football, cooking, *_ = _topics()
    found: list[Interest] = []
    cfg = InterestConfig()
    update_interests(found, football, 1.0, T0, cfg)
    update_interests(found, cooking, 2.0, T0, cfg)
    update_interests(found, cooking, -3.0, T0 + 1, cfg)
    assert len(found) == 1 and float(normalised(found[0].vec) @ football) > 0.99
    update_interests(found, -football, -1.0, T0 + 2, cfg)  # unlike anything liked: no effect
    assert len(found) == 1


def test_one_stray_view_opens_no_interest_worth_places() -> None:
    football, cooking, *_ = _topics()
    found: list[Interest] = []
    cfg = InterestConfig()
    for n in range(5):
        update_interests(found, football, 1.0, T0 + n, cfg)
    update_interests(found, cooking, 0.3, T0 + 6, cfg)  # a view
    assert len(found) == 2
    assert len(active_interests(found, T0 + 6, cfg.half_life_s)) == 1


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.sampled_from([-2.0, -0.05, 0.3, 1.0, 2.5]))))
def test_interests_stay_finite_bounded_and_shares_sum_to_one(
    events: list[tuple[int, float]],
) -> None:
    topics = _topics()
    found: list[Interest] = []
    cfg = InterestConfig(max_interests=3)
    for n, (topic, weight) in enumerate(events):
        update_interests(found, topics[topic], weight, T0 + n * 60_000, cfg)
    assert len(found) <= 3
    assert all(np.isfinite(i.vec).all() for i in found)
    active = active_interests(found, T0 + len(events) * 60_000, cfg.half_life_s)
    if active:
        assert abs(sum(s for _, s in active) - 1.0) < 1e-6
        assert all(abs(float(np.linalg.norm(v)) - 1.0) < 1e-4 for v, _ in active)


def _engine(max_interests: int) -> tuple[Engine, dict[str, int]]:
    rng = np.random.default_rng(3)
    catalogue = Catalogue(DIM, "v1", capacity=4)
    topic_of: dict[str, int] = {}
    for t, centre in enumerate(_topics(topics=6)):
        for j in range(40):
            item = f"t{t}-{j}"
            catalogue.upsert(item, _near(centre, rng), version="v1", title=f"topic {t} #{j}")
            topic_of[item] = t
    return Engine(catalogue, EngineConfig(max_interests=max_interests)), topic_of


def test_a_reader_of_two_topics_gets_both_in_the_top10_not_a_blur() -> None:
    both: dict[int, list[int]] = {}
    for m in (1, 4):
        engine, topic_of = _engine(m)
        state = engine.new_state()
        reads = [f"t1-{j}" for j in range(12)] + [f"t4-{j}" for j in range(6)]
        for n, item in enumerate(reads):
            engine.apply(state, Interaction("u", "click", item, T0 + n * 1000, offset=n))
        [ranked] = engine.rank([("u", state)], k=10)
        both[m] = [topic_of[i] for i, _ in ranked.items]
        scores = [s for _, s in ranked.items]
        assert scores == sorted(scores, reverse=True)  # a sorted set keeps this order
    assert set(both[4]) == {1, 4} and 2 <= both[4].count(4) <= 5
    assert both[4].count(4) > both[1].count(4)  # one blended vector under-serves the minority


def test_codec_keeps_interests_and_reads_states_written_before_them() -> None:
    state = UserState.empty(DIM, "v1")
    football, cooking, *_ = _topics()
    state.interests = [Interest(football * 3, T0), Interest(cooking, T0 + 5)]
    back = decode_state(encode_state(state))
    assert [i.ts_ms for i in back.interests] == [T0, T0 + 5]
    assert np.allclose(back.interests[0].vec, football * 3, rtol=1e-3, atol=1e-3)  # float16
    header = orjson.dumps({"t": 0, "n": 2, "p": 1, "o": 9, "m": "v1", "h": [], "q": []})
    old = struct.pack("<2sI", b"U1", len(header)) + header + football.astype("<f4").tobytes()
    legacy = decode_state(old)
    assert legacy.interests == [] and legacy.events == 2 and np.allclose(legacy.vec, football)
