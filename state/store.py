"""The recommendation store interface and its in-memory implementation.

Workers and the reader talk to a :class:`RecsStore`; :class:`state.redis_store.RedisStore` is
the production one, :class:`MemoryStore` serves the evaluation harness and unit tests. Both pass
the same conformance checks (tests/integration/test_store_conformance.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import orjson

from state.popularity import log_add
from state.redis_store import UserWrite, encode_recs


class RecsStore(Protocol):
    """Writes a worker makes and reads an app makes."""

    async def publish_users(self, writes: Iterable[UserWrite]) -> int: ...

    async def add_popular(self, increments: Mapping[str, float], keep: int) -> None: ...

    async def read_recs(
        self, user: str, k: int
    ) -> tuple[list[tuple[str, float]], dict[str, str]]: ...

    async def read_user(self, user: str) -> dict[str, bytes]: ...

    async def read_popular(self, k: int) -> list[tuple[str, float]]: ...

    async def read_group(self, group: str, k: int) -> list[tuple[str, float]]: ...

    async def set_group_recs(self, group: str, items: list[tuple[str, float]]) -> None: ...


@dataclass
class MemoryStore:
    """A :class:`RecsStore` in process memory with the same watermark semantics as Redis."""

    users: dict[str, dict[str, bytes]] = field(default_factory=dict)
    recs: dict[str, list[tuple[str, float]]] = field(default_factory=dict)
    meta: dict[str, dict[str, str]] = field(default_factory=dict)
    popular: dict[str, float] = field(default_factory=dict)
    groups: dict[str, list[tuple[str, float]]] = field(default_factory=dict)

    async def publish_users(self, writes: Iterable[UserWrite]) -> int:
        applied = 0
        now_ms = int(time.time() * 1000)
        for w in writes:
            current = self.users.get(w.user_id, {})
            if (
                current.get("wm_partition") == str(w.partition).encode()
                and int(current.get("wm_offset", b"-1")) >= w.offset
            ):
                continue
            updated = str(w.updated_at_ms or now_ms)
            current.update(
                {
                    "vec": w.vec,
                    "events": str(w.events).encode(),
                    "updated_at": updated.encode(),
                    "wm_partition": str(w.partition).encode(),
                    "wm_offset": str(w.offset).encode(),
                    "model_version": w.model_version.encode(),
                }
            )
            if w.group:
                current["group"] = w.group.encode()
            self.users[w.user_id] = current
            # As the Lua script reads it: from the encoded top-K (the ranking child's form).
            recs = w.recs or encode_recs(w.items, w.why, w.source)
            if recs.members:
                flat = orjson.loads(recs.members)
                items = list(zip(flat[1::2], flat[0::2], strict=True))
                self.recs[w.user_id] = sorted(items, key=lambda x: -x[1])
                self.meta[w.user_id] = {
                    "model_version": w.model_version,
                    "updated_at": updated,
                    "source": recs.source,
                    "why": recs.why.decode(),
                }
            applied += 1
        return applied

    async def add_popular(self, increments: Mapping[str, float], keep: int) -> None:
        for item, inc in increments.items():
            self.popular[item] = log_add(self.popular[item], inc) if item in self.popular else inc
        if len(self.popular) > keep:
            ranked = sorted(self.popular.items(), key=lambda x: -x[1])[:keep]
            self.popular = dict(ranked)

    async def read_recs(self, user: str, k: int) -> tuple[list[tuple[str, float]], dict[str, str]]:
        return self.recs.get(user, [])[:k], dict(self.meta.get(user, {}))

    async def read_user(self, user: str) -> dict[str, bytes]:
        return dict(self.users.get(user, {}))

    async def read_popular(self, k: int) -> list[tuple[str, float]]:
        return sorted(self.popular.items(), key=lambda x: -x[1])[:k]

    async def read_group(self, group: str, k: int) -> list[tuple[str, float]]:
        return self.groups.get(group, [])[:k]

    async def set_group_recs(self, group: str, items: list[tuple[str, float]]) -> None:
        self.groups[group] = sorted(items, key=lambda x: -x[1])


class MemoryPublisher:
    """Blocking facade over a :class:`MemoryStore`, as the worker's ranking thread calls it."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store

    def publish_users(
        self,
        writes: Sequence[UserWrite],
        popular: Mapping[str, float] | None = None,
        keep: int = 1000,
    ) -> int:
        async def run() -> int:
            applied = await self.store.publish_users(writes)
            await self.store.add_popular(popular or {}, keep)
            return applied

        return asyncio.run(run())
