"""End to end through the real broker and real Redis: worker processes, as operators run them."""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from deployment import Deployment

from streams.records import FEEDBACK
from streams.synthetic import SyntheticWorld, events, make_world

WORLD = make_world(n_items=320, n_users=40, seed=5)


@pytest.fixture
def deployment(stack: Any, tmp_path: Path) -> Iterator[Deployment]:
    dep = Deployment(stack.bootstrap, stack.broker_url, stack.redis_url, tmp_path)
    yield dep
    dep.stop()


def _share_planted(world: SyntheticWorld, user: str, items: list[str]) -> float:
    planted = set(world.users[user])
    return sum(world.category_of[i] in planted for i in items) / max(len(items), 1)


@pytest.mark.slow
def test_planted_interests_show_up_in_top10(deployment: Deployment) -> None:
    deployment.start_worker()
    deployment.publish_world(WORLD)
    counts = deployment.publish_events(events(WORLD, 2400, seed=21))
    assert deployment.wait_counts(counts) == dict(counts)
    shares = {u: _share_planted(WORLD, u, deployment.top(u)) for u in counts}
    assert all(len(deployment.top(u)) == 10 for u in counts)
    good = [u for u, s in shares.items() if s >= 0.7]
    assert len(good) >= 0.9 * len(shares), shares
    meta = deployment.redis.hgetall(deployment.keys.recs_meta(next(iter(counts))))
    assert meta[b"source"] == b"personal" and meta[b"model_version"]
    assert orjson.loads(meta[b"why"])


def _bad_corpus() -> list[tuple[bytes | None, bytes, str]]:
    good = {
        "event_id": "b",
        "user_id": "bad-user",
        "type": "click",
        "item_id": "i000001",
        "ts": 1_767_225_600_000,
    }
    return [
        (b"bad-user", b"{this is not json", "malformed_json"),
        (
            b"bad-user",
            b'{"event_id":"b","user_id":"bad-user","type":"click","item_id":"i1","ts":NaN}',
            "malformed_json",
        ),
        (
            b"bad-user",
            b'{"event_id":"b","user_id":"bad-\xff\xfe","type":"click","ts":1}',
            "malformed_json",
        ),
        (b"bad-user", orjson.dumps({**good, "type": "teleport"}), "unknown_type"),
        (
            b"bad-user",
            orjson.dumps({k: v for k, v in good.items() if k != "user_id"}),
            "missing_field",
        ),
        (b"bad-user", orjson.dumps({**good, "item_id": None}), "missing_field"),
        (b"bad-user", b'{"pad": "' + b"x" * 1_000_000 + b'"}', "too_large"),
        (b"someone-else", orjson.dumps(good), "key_mismatch"),
    ]


@pytest.mark.slow
def test_bad_records_land_in_dead_letters_while_good_events_flow(deployment: Deployment) -> None:
    worker = deployment.start_worker()
    deployment.publish_world(WORLD)
    corpus = _bad_corpus()
    good = list(events(WORLD, 400, seed=22))
    mixed: list[Any] = []
    for n, ev in enumerate(good):
        mixed.append(ev)
        if n % 50 == 0 and n // 50 < len(corpus):
            key, value, _ = corpus[n // 50]
            mixed.append((key, value))
    counts = deployment.publish_events(mixed)
    assert deployment.wait_counts(counts) == dict(counts)
    letters = deployment.dead_letters(len(corpus))
    assert len(letters) == len(corpus)
    by_value = {bytes(r.value): dict(r.headers) for r in letters}
    for _key, value, kind in corpus:
        headers = by_value[value]
        assert headers["x-error-class"].decode() == kind
        assert headers["x-source-topic"].decode() == deployment.topic("events")
        assert int(headers["x-source-offset"]) >= 0 and headers["x-error-message"]
    assert worker.proc is not None and worker.proc.poll() is None
    assert worker.stats()["dead_letters"] == len(corpus)


@pytest.mark.slow
def test_feedback_labels_reach_their_user_as_events_and_bad_ones_dead_letters(
    deployment: Deployment,
) -> None:
    worker = deployment.start_worker(STREAMREC_FEEDBACK_AGENT="true")
    deployment.publish_world(WORLD)
    counts = deployment.publish_events(events(WORLD, 200, seed=23))
    assert deployment.wait_counts(counts) == dict(counts)
    user = next(iter(counts))
    shown = deployment.top(user, 20)
    liked, rated, ignored = shown[0], shown[1], shown[2]
    ts = 1_767_225_600_000 + 10**7
    labels = [(liked, "like"), (rated, 2), (ignored, "ignored")]
    good = [
        orjson.dumps({"user_id": user, "item_id": item, "label": label, "ts": ts + n})
        for n, (item, label) in enumerate(labels)
    ]
    bad = [
        (
            orjson.dumps({"user_id": user, "item_id": liked, "label": "meh", "ts": ts}),
            "unknown_label",
        ),
        (b'{"user_id": "' + user.encode() + b'", "label": NaN}', "malformed_json"),
        (orjson.dumps({"user_id": user, "label": "like", "ts": ts}), "missing_field"),
    ]
    deployment.publish(FEEDBACK, [(user.encode(), v) for v in [*good, *(v for v, _ in bad)]])
    expected = Counter({user: counts[user] + len(good)})
    assert deployment.wait_counts(expected) == dict(expected)
    top = deployment.top(user, 20)
    # The like and the rating are consumed now; an ignored recommendation is only a negative.
    assert liked not in top and rated not in top
    letters = deployment.dead_letters(len(bad))
    by_value = {bytes(r.value): dict(r.headers) for r in letters}
    for value, kind in bad:
        assert by_value[value]["x-error-class"].decode() == kind
        assert by_value[value]["x-source-topic"].decode() == deployment.topic(FEEDBACK)
    stats = worker.stats()
    assert stats["feedback_forwarded"] == len(good) and stats["dead_letters"] == len(bad)


@pytest.mark.slow
def test_sigkill_and_restart_loses_nothing_and_applies_nothing_twice(
    deployment: Deployment,
) -> None:
    worker = deployment.start_worker("w0")
    deployment.publish_world(WORLD)
    stream = list(events(WORLD, 6000, seed=23))
    expected: Counter[str] = Counter()
    expected += deployment.publish_events(stream[:3000])
    # Kill while the backlog is being worked through: some batches applied, some committed.
    deadline = time.monotonic() + 60
    while worker.stats().get("events_applied", 0) < 1000 and time.monotonic() < deadline:
        time.sleep(0.05)
    worker.stop(signal.SIGKILL)
    expected += deployment.publish_events(stream[3000:])
    deployment.start_worker("w0")  # same data dir and group: resumes from committed offsets
    counts = deployment.wait_counts(expected, settle_s=5.0)
    if counts != dict(expected):  # lost by the worker, or absent from the broker's log?
        in_log = deployment.log_counts(len(stream))
        short = {u: (counts[u], in_log[u], n) for u, n in expected.items() if counts[u] != n}
        raise AssertionError(f"(redis, log, sent) per short user: {short}")
    assert counts == dict(expected)
    assert sum(counts.values()) == len(stream)
