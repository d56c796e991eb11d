"""Interest-vector maths: weights, decay, order independence, codec."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from state.interest import (
    EVENT_TYPES,
    UserState,
    apply_event,
    decode_state,
    encode_state,
    event_weight,
    normalised,
    resolve_pending,
)

DIM = 8
HALF_LIFE_S = 3600.0
rng = np.random.default_rng(0)
ITEMS = {f"i{i}": normalised(rng.normal(size=DIM).astype(np.float32)) for i in range(20)}

event_st = st.tuples(
    st.sampled_from(sorted(EVENT_TYPES - {"search"})),
    st.sampled_from(sorted(ITEMS)),
    st.integers(1_700_000_000_000, 1_700_000_000_000 + 30 * 86_400_000),
    st.one_of(st.none(), st.floats(0, 600_000)),
)


def _apply_all(events: list[tuple[str, str, int, float | None]]) -> UserState:
    state = UserState.empty(DIM)
    for etype, item, ts, dwell in events:
        apply_event(
            state,
            event_type=etype,
            item_id=item,
            ts_ms=ts,
            dwell_ms=dwell,
            item_vec=ITEMS[item],
            half_life_s=HALF_LIFE_S,
        )
    return state


@settings(max_examples=200, deadline=None)
@given(st.lists(event_st, min_size=1, max_size=40), st.randoms())
def test_vector_does_not_depend_on_arrival_order(events, rnd) -> None:
    shuffled = list(events)
    rnd.shuffle(shuffled)
    a, b = _apply_all(events), _apply_all(shuffled)
    assert a.ts_ms == b.ts_ms == max(e[2] for e in events)
    np.testing.assert_allclose(a.vec, b.vec, rtol=1e-3, atol=1e-4)


@settings(max_examples=200, deadline=None)
@given(st.lists(event_st, max_size=60))
def test_vector_stays_finite_and_normalises_to_unit_or_zero(events) -> None:
    state = _apply_all(events)
    assert np.all(np.isfinite(state.vec))
    norm = float(np.linalg.norm(normalised(state.vec)))
    assert norm == 0.0 or abs(norm - 1.0) < 1e-4


def test_engagement_pulls_towards_item_and_rejection_pushes_away() -> None:
    liked = _apply_all([("click", "i1", 1_700_000_000_000, None)])
    hidden = _apply_all([("hide", "i1", 1_700_000_000_000, None)])
    assert float(normalised(liked.vec) @ ITEMS["i1"]) > 0.99
    assert float(normalised(hidden.vec) @ ITEMS["i1"]) < -0.99


def test_older_interest_decays_by_event_time() -> None:
    t0 = 1_700_000_000_000
    state = _apply_all([("click", "i1", t0, None), ("click", "i2", t0 + 10 * 3_600_000, None)])
    unit = normalised(state.vec)
    assert float(unit @ ITEMS["i2"]) > float(unit @ ITEMS["i1"])


def test_dwell_adds_weight_up_to_a_cap() -> None:
    assert event_weight("view", 15_000) > event_weight("view")
    assert event_weight("view", 10**9) == event_weight("view", 30_000)
    assert event_weight("impression", 60_000) == event_weight("impression")


def test_event_for_unknown_item_is_parked_then_folded_in() -> None:
    state = UserState.empty(DIM)
    apply_event(
        state,
        event_type="click",
        item_id="i3",
        ts_ms=1_700_000_000_000,
        dwell_ms=None,
        item_vec=None,
        half_life_s=HALF_LIFE_S,
    )
    assert state.events == 1 and not state.is_personal and len(state.pending) == 1
    assert resolve_pending(state, {"i3": ITEMS["i3"]}, HALF_LIFE_S) == 1
    assert float(normalised(state.vec) @ ITEMS["i3"]) > 0.99 and not state.pending


@settings(max_examples=50, deadline=None)
@given(st.lists(event_st, max_size=30), st.integers(-1, 10), st.integers(-1, 10**9))
def test_state_codec_round_trips(events, partition, offset) -> None:
    state = _apply_all(events)
    state.partition, state.offset, state.group = partition, offset, "g1"
    state.forwarded = ["feedback:0:7", "feedback:3:1"]
    back = decode_state(encode_state(state))
    assert back.forwarded == state.forwarded
    np.testing.assert_array_equal(back.vec, state.vec)
    assert (back.events, back.partition, back.offset, back.group, back.ts_ms) == (
        state.events,
        state.partition,
        state.offset,
        state.group,
        state.ts_ms,
    )
    assert back.history == state.history and back.consumed() == state.consumed()


def test_engaged_items_are_distinct_positives_and_views_newest_first() -> None:
    events = [("view", "i0"), ("like", "i1"), ("dislike", "i2"), ("impression", "i3")]
    events += [("click", "i0"), ("hide", "i4"), ("view", "i5")]
    state = _apply_all([(t, i, 1_700_000_000_000 + k, None) for k, (t, i) in enumerate(events)])
    assert [h.item_id for h in state.engaged(10)] == ["i5", "i0", "i1"]
    assert [h.event_type for h in state.engaged(2)] == ["view", "click"]
