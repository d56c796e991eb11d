"""One conformance suite for every recommendation store: in-memory and real Redis alike.

The worker writes through ``publish_users`` (the Lua script on Redis), apps read back; both
stores must agree on atomic replacement, the Kafka watermark and popularity merging.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import orjson
import pytest
import redis

from state.redis_store import BlockingPublisher, Keys, RedisStore, UserWrite, encode_recs
from state.store import MemoryPublisher, MemoryStore, RecsStore

pytestmark = pytest.mark.integration


def _write(offset: int, items: list[tuple[str, float]], events: int = 1) -> UserWrite:
    return UserWrite(
        user_id="alice",
        partition=3,
        offset=offset,
        events=events,
        vec=b"\x00\x00\x80\x3f" * 4,
        model_version="v1",
        items=items,
        why={i: f"because {i}" for i, _ in items},
    )


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest, stack: Any) -> AsyncIterator[RecsStore]:
    if request.param == "memory":
        yield MemoryStore()
        return
    client = redis.Redis.from_url(stack.redis_url)
    client.flushdb()
    client.close()
    real = RedisStore.from_url(stack.redis_url, Keys("conf:"))
    try:
        yield real
    finally:
        await real.close()


async def test_a_write_replaces_the_whole_list(store: RecsStore) -> None:
    assert await store.publish_users([_write(10, [("a", 0.9), ("b", 0.5), ("c", 0.1)])]) == 1
    assert await store.publish_users([_write(11, [("d", 0.7)], events=2)]) == 1
    items, meta = await store.read_recs("alice", 10)
    assert items == [("d", 0.7)]
    assert meta["source"] == "personal" and meta["model_version"] == "v1"
    assert (await store.read_user("alice"))["events"] == b"2"


async def test_a_write_encoded_by_the_ranking_child_reads_back_the_same(store: RecsStore) -> None:
    plain = _write(10, [("a", 0.9), ("b", 0.5)])
    assert await store.publish_users([plain]) == 1
    expected = await store.read_recs("alice", 10)
    encoded = _write(11, [])
    encoded.recs = encode_recs(plain.items, plain.why, "personal")
    assert await store.publish_users([encoded]) == 1
    items, meta = await store.read_recs("alice", 10)
    assert items == expected[0] == [("a", 0.9), ("b", 0.5)]
    assert {k: meta[k] for k in ("source", "why")} == {k: expected[1][k] for k in ("source", "why")}
    assert orjson.loads(meta["why"]) == {"a": "because a", "b": "because b"}


async def test_a_redelivered_write_changes_nothing(store: RecsStore) -> None:
    await store.publish_users([_write(20, [("a", 0.9)], events=5)])
    assert await store.publish_users([_write(20, [("z", 0.1)], events=6)]) == 0
    assert await store.publish_users([_write(19, [("z", 0.1)], events=6)]) == 0
    items, _ = await store.read_recs("alice", 10)
    assert items == [("a", 0.9)]
    assert (await store.read_user("alice"))["events"] == b"5"


async def test_popularity_merges_and_keeps_the_top(store: RecsStore) -> None:
    await store.add_popular({"a": 1.0, "b": 3.0, "c": 2.0}, keep=2)
    await store.add_popular({"c": 2.0}, keep=2)  # log2-domain: 2 (+) 2 = 3
    top = await store.read_popular(10)
    assert [i for i, _ in top] == ["b", "c"] or [i for i, _ in top] == ["c", "b"]
    assert dict(top)["c"] == pytest.approx(3.0)


@pytest.fixture
def publisher_factory(stack: Any) -> Iterator[Callable[[], tuple[Any, RecsStore]]]:
    """The worker's blocking publisher on real Redis, with an async store to read back."""
    made: list[BlockingPublisher] = []

    def make() -> tuple[Any, RecsStore]:
        publisher = BlockingPublisher(stack.redis_url, Keys("conf:"))
        made.append(publisher)
        return publisher, RedisStore.from_url(stack.redis_url, Keys("conf:"))

    yield make
    for publisher in made:
        publisher.close()


@pytest.mark.parametrize("kind", ["memory", "redis"])
async def test_the_worker_publisher_writes_what_readers_see(
    kind: str, publisher_factory: Callable[[], tuple[Any, RecsStore]], stack: Any
) -> None:
    redis.Redis.from_url(stack.redis_url).flushdb()
    if kind == "memory":
        memory = MemoryStore()
        publisher: Any = MemoryPublisher(memory)
        reader: RecsStore = memory
    else:
        publisher, reader = publisher_factory()
    writes = [_write(30, [("a", 0.9), ("b", 0.2)], events=3)]
    # The publisher is what the ranking thread calls: blocking, off the event loop.
    applied = await asyncio.to_thread(publisher.publish_users, writes, {"a": 1.0}, 10)
    assert applied == 1
    items, meta = await reader.read_recs("alice", 10)
    assert items == [("a", 0.9), ("b", 0.2)] and meta["why"]
    assert [i for i, _ in await reader.read_popular(5)] == ["a"]


async def test_the_publisher_recovers_when_redis_forgot_its_scripts(
    publisher_factory: Callable[[], tuple[Any, RecsStore]], stack: Any
) -> None:
    client = redis.Redis.from_url(stack.redis_url)
    client.flushdb()
    publisher, reader = publisher_factory()
    publisher.publish_users([_write(40, [("a", 0.9)])])
    client.script_flush()  # what a Redis restart does to the script cache
    assert publisher.publish_users([_write(41, [("b", 0.8)], events=2)]) == 1
    items, _ = await reader.read_recs("alice", 10)
    assert items == [("b", 0.8)]
    client.close()
