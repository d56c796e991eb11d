"""Strict parsing: every byte string is a valid record or an InvalidRecord with a reason."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.records import InvalidRecord, Limits, parse_event, parse_feedback, parse_item

LIMITS = Limits(max_message_bytes=4096, max_text_chars=200)
GOOD = {
    "event_id": "e1",
    "user_id": "u1",
    "type": "click",
    "item_id": "i1",
    "ts": "2026-01-01T00:00:00Z",
    "dwell_ms": 1200,
    "extra": {"kept": True},
}


@given(st.binary(max_size=600), st.one_of(st.none(), st.binary(max_size=20)))
def test_any_bytes_parse_or_raise_invalid_record(value: bytes, key: bytes | None) -> None:
    for parse in (parse_event, parse_item, parse_feedback):
        try:
            parse(value, key, LIMITS)
        except InvalidRecord as exc:
            assert exc.kind and str(exc)


@given(
    st.dictionaries(
        st.sampled_from([*sorted(GOOD), "ts", "type"]),
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(),
            st.floats(),
            st.text(max_size=30),
            st.lists(st.integers(), max_size=2),
        ),
    )
)
def test_json_objects_of_any_shape_parse_or_raise_invalid_record(doc: dict[str, object]) -> None:
    try:
        raw = orjson.dumps(doc)
    except (TypeError, orjson.JSONEncodeError):
        return
    try:
        event = parse_event(raw, None, LIMITS)
    except InvalidRecord:
        return
    assert event.type and event.user_id and event.ts_ms > 0


def test_good_event_parses_with_unknown_fields_ignored() -> None:
    event = parse_event(orjson.dumps(GOOD), b"u1", LIMITS)
    assert (event.user_id, event.type, event.item_id, event.ts_ms) == (
        "u1",
        "click",
        "i1",
        1_767_225_600_000,
    )
    assert parse_event(orjson.dumps({**GOOD, "ts": 1_767_225_600_000}), None, LIMITS).ts_ms == (
        1_767_225_600_000
    )


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        (b"{not json", "malformed_json"),
        (b'{"event_id":"e","user_id":"u","type":"click","item_id":"i","ts":NaN}', "malformed_json"),
        (
            b'{"event_id":"e","user_id":"u","type":"click","item_id":"i","ts":1e999}',
            "malformed_json",
        ),
        (
            b'{"event_id":"e","user_id":"\xff","type":"click","item_id":"i","ts":1767225600000}',
            "malformed_json",
        ),
        (b"[1, 2]", "malformed_json"),
        (orjson.dumps({**GOOD, "type": "teleport"}), "unknown_type"),
        (orjson.dumps({**GOOD, "user_id": None}), "missing_field"),
        (orjson.dumps({**GOOD, "item_id": ""}), "missing_field"),
        (orjson.dumps({**GOOD, "ts": 1_767_225_600}), "invalid_field"),
        (orjson.dumps({**GOOD, "dwell_ms": -5}), "invalid_field"),
        (orjson.dumps({**GOOD, "title": "x" * 5000}), "too_large"),
        (None, "empty"),
    ],
)
def test_bad_events_are_rejected_with_a_reason(raw: bytes | None, kind: str) -> None:
    with pytest.raises(InvalidRecord) as info:
        parse_event(raw, None, LIMITS)
    assert info.value.kind == kind


def test_key_must_match_user() -> None:
    with pytest.raises(InvalidRecord, match="does not match user_id"):
        parse_event(orjson.dumps(GOOD), b"someone-else", LIMITS)


def test_search_needs_no_item() -> None:
    doc = {**GOOD, "type": "search", "query": "football"}
    del doc["item_id"]
    assert parse_event(orjson.dumps(doc), None, LIMITS).item_id is None


def test_item_text_and_feedback() -> None:
    item = parse_item(
        orjson.dumps(
            {"item_id": "i1", "title": "Goal!", "category": "football", "tags": ["derby"]}
        ),
        b"i1",
        LIMITS,
    )
    assert item.text() == "Goal!. football. derby"
    fb = parse_feedback(
        orjson.dumps({"user_id": "u", "item_id": "i", "label": 4.5, "ts": "2026-01-01T00:00:00"}),
        None,
        LIMITS,
    )
    assert fb.label == "4.5"
    with pytest.raises(InvalidRecord):
        parse_item(orjson.dumps({"item_id": "i1"}), None, LIMITS)


def test_an_events_context_position_is_where_its_item_was_shown() -> None:
    def parse(context: object) -> int | None:
        return parse_event(orjson.dumps({**GOOD, "context": context}), b"u1", LIMITS).position

    assert parse({"position": 3, "page": "home"}) == 3
    assert parse({"page": "home"}) is None and parse("free text") is None
    for bad in (-1, 2.5, "3", True, 10**6):
        with pytest.raises(InvalidRecord, match=r"context\.position") as exc:
            parse({"position": bad})
        assert exc.value.kind == "invalid_field"
