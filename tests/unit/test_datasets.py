"""Replay loaders: our topic-schema directories, MIND (tiny fixture) and MovieLens-100K."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from state.datasets import (
    DatasetError,
    ImpressionList,
    ReplayEvent,
    load_jsonl_dir,
    load_mind,
    load_movielens,
    load_replay,
    movielens_dir,
)

FIXTURES = Path(__file__).parent.parent / "fixtures"


def test_mind_fixture_becomes_warmup_history_then_impression_lists() -> None:
    replay = load_replay(FIXTURES / "mind")
    assert [i.item_id for i in replay.items] == ["N1", "N2", "N3", "N4", "N5", "N6"]
    assert replay.items[0].category == "sports" and replay.items[0].tags == ("football_nfl",)
    assert replay.items[0].body.startswith("The team rallied")
    kinds = [
        (type(s).__name__, s.user_id, getattr(s, "item_id", None), getattr(s, "test", None))
        for s in replay.steps
    ]
    assert kinds[:3] == [
        ("ReplayEvent", "U1", "N1", False),
        ("ReplayEvent", "U1", "N2", False),
        ("ImpressionList", "U1", None, None),
    ]
    lists = [s for s in replay.steps if isinstance(s, ImpressionList)]
    assert [(s.user_id, s.candidates, s.labels) for s in lists] == [
        ("U1", ("N6", "N3", "N5"), (1, 0, 0)),
        ("U2", ("N4", "N6"), (1, 0)),
        ("U1", ("N5", "N3", "N4"), (0, 0, 1)),
        ("U3", ("N1", "N5"), (1, 0)),
    ]
    # U1's history is learned once, before their first impression only.
    assert sum(1 for s in replay.steps if isinstance(s, ReplayEvent) and s.user_id == "U1") == 2
    assert replay.has_impressions
    assert [e.type for e in lists[0].events()] == ["click", "impression", "impression"]


def test_mind_rejects_bad_impressions(tmp_path: Path) -> None:
    (tmp_path / "news.tsv").write_text("N1\tsports\tnfl\tTitle\n")
    (tmp_path / "behaviors.tsv").write_text("1\tU1\t11/15/2019 8:55:22 AM\t\tN1-x\n")
    with pytest.raises(DatasetError, match="N123-1"):
        load_mind(tmp_path)


def test_jsonl_dir_sorts_by_event_time_and_maps_feedback(tmp_path: Path) -> None:
    (tmp_path / "items.jsonl").write_text(
        '{"item_id": "a", "title": "A", "category": "x", "tags": ["t"]}\n'
        '{"item_id": "b", "title": "B"}\n'
    )
    (tmp_path / "events.jsonl").write_text(
        '{"event_id": "1", "user_id": "u", "type": "click", "item_id": "b", "ts": 2000}\n'
        '{"event_id": "2", "user_id": "u", "type": "view", "item_id": "a",'
        ' "ts": "1970-01-01T00:00:01Z", "extra": 1}\n'
    )
    (tmp_path / "feedback.jsonl").write_text(
        '{"user_id": "u", "item_id": "a", "label": 5, "ts": 3000}\n'
        '{"user_id": "u", "item_id": "a", "label": "served", "ts": 4000}\n'
    )
    (tmp_path / "users.json").write_bytes(orjson.dumps({"u": {"gender": "F"}}))
    replay = load_jsonl_dir(tmp_path)
    events = [s for s in replay.steps if isinstance(s, ReplayEvent)]
    assert [(e.type, e.item_id, e.ts_ms) for e in events] == [
        ("view", "a", 1000),
        ("click", "b", 2000),
        ("like", "a", 3000),
    ]
    assert replay.users == {"u": {"gender": "F"}}
    assert replay.items[0].tags == ("t",)
    assert not replay.has_impressions


def test_jsonl_dir_errors_name_the_file_and_line(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"items\.jsonl"):
        load_jsonl_dir(tmp_path)
    (tmp_path / "items.jsonl").write_text('{"item_id": "a", "title": "A"}\n')
    (tmp_path / "events.jsonl").write_text('{"user_id": "u", "type": "teleport", "ts": 1}\n')
    with pytest.raises(DatasetError, match=r"events\.jsonl:1"):
        load_jsonl_dir(tmp_path)


def test_movielens_100k_from_the_recbole_wheel() -> None:
    try:
        movielens_dir()
    except DatasetError as exc:
        pytest.skip(str(exc))
    replay = load_movielens()
    events = [s for s in replay.steps if isinstance(s, ReplayEvent)]
    assert len(events) == 100_000 and len(replay.items) == 1682 and len(replay.users) == 943
    assert [e.ts_ms for e in events] == sorted(e.ts_ms for e in events)
    toy = replay.items[0]
    assert toy.title == "Toy Story (1995)" and toy.tags == ("Animation", "Children's", "Comedy")
    by_type = {e.type for e in events if e.rating == 5}, {e.type for e in events if e.rating == 2}
    assert by_type == ({"like"}, {"dislike"})
    assert set(replay.users["1"]) == {"gender", "age", "occupation"}


def test_movielens_atomic_files_in_a_directory(tmp_path: Path) -> None:
    (tmp_path / "ml-100k.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t7\t4\t20\n2\t7\t3\t10\n"
    )
    (tmp_path / "ml-100k.item").write_text(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "7\tHeat\t1995\tAction Crime\n"
    )
    (tmp_path / "ml-100k.user").write_text(
        "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
        "1\t24\tM\twriter\t1\n2\t50\tF\tother\t2\n"
    )
    replay = load_replay(tmp_path)
    assert replay.items[0].title == "Heat (1995)" and replay.items[0].category == "Action"
    assert [(s.user_id, s.type) for s in replay.steps if isinstance(s, ReplayEvent)] == [
        ("2", "view"),
        ("1", "click"),
    ]
    assert replay.users["2"] == {"gender": "F", "age": "45+", "occupation": "other"}
