"""Embedding cache: a text is encoded once per model version, then served by content hash.

Entries are keyed by ``content_hash(version, text)``, so vectors of two model versions
never mix. :class:`MemoryCache` serves one process; :class:`RedisCache` is shared by all
workers; :class:`CachedEncoder` puts either in front of a :class:`MicroBatcher`.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt
import redis.asyncio

from encoders.batcher import MicroBatcher

Vector = npt.NDArray[np.float32]
_WIRE_DTYPE = np.dtype("<f4")  # float32 little-endian, as in the Redis key schema


def content_hash(version: str, text: str) -> str:
    """Return the sha256 hex of ``version``, a NUL byte and ``text`` (UTF-8).

    >>> content_hash("v1", "hello") == content_hash("v1", "hello") != content_hash("v2", "hello")
    True
    """
    return hashlib.sha256(f"{version}\0{text}".encode()).hexdigest()


class EmbeddingCache(Protocol):
    """Where vectors are kept by content hash; misses are simply absent from get_many."""

    async def get_many(self, hashes: Sequence[str]) -> dict[str, Vector]: ...

    async def put_many(self, vectors: Mapping[str, Vector]) -> None: ...


class MemoryCache:
    """In-process LRU cache holding at most ``max_items`` vectors (read-only float32)."""

    def __init__(self, max_items: int = 100_000) -> None:
        if max_items < 1:
            raise ValueError(f"max_items must be at least 1; got {max_items}")
        self.max_items = max_items
        self._items: OrderedDict[str, Vector] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    async def get_many(self, hashes: Sequence[str]) -> dict[str, Vector]:
        """Return the cached vectors among ``hashes``, marking them recently used."""
        found: dict[str, Vector] = {}
        for key in hashes:
            vector = self._items.get(key)
            if vector is not None:
                self._items.move_to_end(key)
                found[key] = vector
        return found

    async def put_many(self, vectors: Mapping[str, Vector]) -> None:
        """Store ``vectors``, evicting the least recently used beyond ``max_items``."""
        for key, vector in vectors.items():
            # A private read-only copy: callers may reuse or mutate the array they passed.
            stored = np.array(vector, dtype=np.float32)
            stored.setflags(write=False)
            self._items[key] = stored
            self._items.move_to_end(key)
        while len(self._items) > self.max_items:
            self._items.popitem(last=False)


class RedisCache:
    """Vectors in Redis as float32 little-endian bytes under ``key_for(hash)``, with a TTL.

    The client must return bytes (``decode_responses=False``). Reads are one MGET, writes
    one non-transactional pipeline of SET EX, so a batch costs two round trips at most.
    """

    def __init__(
        self, client: redis.asyncio.Redis, key_for: Callable[[str], str], ttl_s: int
    ) -> None:
        if ttl_s < 1:
            raise ValueError(f"ttl_s must be at least 1 second; got {ttl_s}")
        self._client = client
        self._key_for = key_for
        self.ttl_s = ttl_s
        self.malformed = 0  # values whose length is not whole float32s; treated as misses

    async def get_many(self, hashes: Sequence[str]) -> dict[str, Vector]:
        """Return the vectors stored for ``hashes``; absent or malformed values are misses."""
        if not hashes:
            return {}
        values = await self._client.mget([self._key_for(h) for h in hashes])
        found: dict[str, Vector] = {}
        for key, raw in zip(hashes, values, strict=True):
            if raw is None:
                continue
            if not isinstance(raw, bytes):
                raise TypeError(
                    "RedisCache needs a Redis client created with decode_responses=False; "
                    f"got {type(raw).__name__} values"
                )
            if not raw or len(raw) % _WIRE_DTYPE.itemsize:
                self.malformed += 1
                continue
            found[key] = np.frombuffer(raw, dtype=_WIRE_DTYPE).astype(np.float32, copy=False)
        return found

    async def put_many(self, vectors: Mapping[str, Vector]) -> None:
        """Store ``vectors``, each with the cache TTL, in one pipeline."""
        if not vectors:
            return
        async with self._client.pipeline(transaction=False) as pipe:
            for key, vector in vectors.items():
                payload = np.asarray(vector, dtype=_WIRE_DTYPE).tobytes()
                pipe.set(self._key_for(key), payload, ex=self.ttl_s)
            await pipe.execute()


class CachedEncoder:
    """Encode through a cache: only distinct texts missing from it reach the batcher.

    ``hits`` and ``misses`` count distinct texts per call (a text repeated within one call
    counts once).
    """

    def __init__(self, batcher: MicroBatcher, version: str, cache: EmbeddingCache) -> None:
        self.version = version
        self.hits = 0
        self.misses = 0
        self._batcher = batcher
        self._cache = cache

    async def encode(self, texts: Sequence[str]) -> Vector:
        """Return a float32 array (len(texts), dim), rows in input order."""
        if not texts:
            return await self._batcher.encode([])
        hashes = [content_hash(self.version, text) for text in texts]
        text_for = dict(zip(hashes, texts, strict=True))
        found = await self._cache.get_many(list(text_for))
        missing = [key for key in text_for if key not in found]
        self.hits += len(text_for) - len(missing)
        self.misses += len(missing)
        if missing:
            encoded = await self._batcher.encode([text_for[key] for key in missing])
            fresh = dict(zip(missing, encoded, strict=True))
            await self._cache.put_many(fresh)
            found.update(fresh)
        return np.stack([found[key] for key in hashes]).astype(np.float32, copy=False)
