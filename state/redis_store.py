"""The Redis side of the contract: every key name, every Lua script, every write.

Key layout is specified in ``docs/redis-keys.md``. A user's keys share the hash tag ``{user}``
(the braces are literal), so one Lua script can replace a user's recommendations, meta and
state atomically and stay within one Redis Cluster slot.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, cast

import numpy as np
import orjson
import redis
import redis.asyncio as aioredis

from state.groups import SharedGroups

#: Replaces one user's state, top-K and meta in one atomic step, unless the Kafka watermark
#: says this write is a re-delivery (then it returns 0 and changes nothing).
PUBLISH_USER_LUA: Final[str] = """
local wm_p = redis.call('HGET', KEYS[1], 'wm_partition')
local wm_o = redis.call('HGET', KEYS[1], 'wm_offset')
if wm_o and wm_p == ARGV[1] and tonumber(wm_o) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('HSET', KEYS[1], 'vec', ARGV[4], 'events', ARGV[3], 'updated_at', ARGV[5],
           'wm_partition', ARGV[1], 'wm_offset', ARGV[2], 'model_version', ARGV[8])
if ARGV[11] ~= '' then redis.call('HSET', KEYS[1], 'group', ARGV[11]) end
redis.call('EXPIRE', KEYS[1], ARGV[6])
if ARGV[12] ~= '' then
  redis.call('DEL', KEYS[2])
  redis.call('ZADD', KEYS[2], unpack(cjson.decode(ARGV[12])))
  redis.call('EXPIRE', KEYS[2], ARGV[7])
  redis.call('DEL', KEYS[3])
  redis.call('HSET', KEYS[3], 'model_version', ARGV[8], 'updated_at', ARGV[5],
             'source', ARGV[9], 'why', ARGV[10])
  redis.call('EXPIRE', KEYS[3], ARGV[7])
end
return 1
"""

#: Adds log-domain forward-decayed increments to ``sr:popular`` and trims it (see popularity.py).
POPULAR_ADD_LUA: Final[str] = """
for i = 2, #ARGV, 2 do
  local cur = redis.call('ZSCORE', KEYS[1], ARGV[i + 1])
  local inc = tonumber(ARGV[i])
  if cur then
    cur = tonumber(cur)
    local hi, lo = math.max(cur, inc), math.min(cur, inc)
    inc = hi + math.log(1 + 2 ^ (lo - hi)) / math.log(2)
  end
  redis.call('ZADD', KEYS[1], inc, ARGV[i + 1])
end
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -tonumber(ARGV[1]) - 1)
return redis.call('ZCARD', KEYS[1])
"""


class Keys:
    """The one place Redis key names are built (prefix configurable, default ``sr:``)."""

    def __init__(self, prefix: str = "sr:") -> None:
        self.prefix = prefix

    def recs(self, user: str) -> str:
        return f"{self.prefix}recs:{{{user}}}"

    def recs_meta(self, user: str) -> str:
        return f"{self.prefix}recs:{{{user}}}:meta"

    def user(self, user: str) -> str:
        return f"{self.prefix}user:{{{user}}}"

    def item(self, item: str) -> str:
        return f"{self.prefix}item:{{{item}}}"

    def group_recs(self, group: str) -> str:
        return f"{self.prefix}group:{{{group}}}:recs"

    def popular(self) -> str:
        return f"{self.prefix}popular"

    def model(self) -> str:
        return f"{self.prefix}model"

    def click(self) -> str:
        return f"{self.prefix}click"

    def groups(self) -> str:
        return f"{self.prefix}groups"

    def groups_lock(self) -> str:
        return f"{self.prefix}groups:lock"

    def embedding(self, content_hash: str) -> str:
        return f"{self.prefix}emb:{content_hash}"


@dataclass(frozen=True, slots=True)
class EncodedRecs:
    """A top-K with its explanations as :data:`PUBLISH_USER_LUA` takes them.

    The ranking child sends these instead of :class:`~state.ranking.Ranked`: two byte strings
    per user unpickle about five times faster than 2K small objects, on the worker's GIL.
    """

    members: bytes  # JSON [score, item, ...]; b"" when there is no list
    why: bytes  # JSON {item: explanation}
    source: str = "personal"


def encode_recs(
    items: Sequence[tuple[str, float]], why: Mapping[str, str] | None, source: str
) -> EncodedRecs:
    # The top-K travels as one JSON argument that cjson decodes in the script: packing 2K
    # separate arguments was the worker's hottest Python path.
    members: list[float | str] = []
    for item_id, score in items:
        members += (score if math.isfinite(score) else 0.0, item_id)
    return EncodedRecs(orjson.dumps(members) if members else b"", orjson.dumps(why or {}), source)


@dataclass(slots=True)
class UserWrite:
    """One user's state and (optionally) fresh recommendations, tagged with its watermark."""

    user_id: str
    partition: int
    offset: int
    events: int
    vec: bytes
    model_version: str
    items: Sequence[tuple[str, float]] = ()
    why: Mapping[str, str] | None = None
    source: str = "personal"
    group: str = ""
    updated_at_ms: int = 0
    #: Already encoded (by the ranking child); then ``items``, ``why`` and ``source`` are unused.
    recs: EncodedRecs | None = None


@dataclass(frozen=True, slots=True)
class Ttls:
    user_s: int = 30 * 24 * 3600
    recs_s: int = 7 * 24 * 3600
    item_s: int = 90 * 24 * 3600


Arg = bytes | str | int | float


class RedisUnavailable(RuntimeError):
    """Redis did not answer; the message names the URL setting."""


def publish_call(keys: Keys, ttls: Ttls, w: UserWrite, now_ms: int) -> tuple[list[str], list[Arg]]:
    """``(KEYS, ARGV)`` of :data:`PUBLISH_USER_LUA` for one user write."""
    recs = w.recs or encode_recs(w.items, w.why, w.source)
    args: list[Arg] = [
        w.partition,
        w.offset,
        w.events,
        w.vec,
        w.updated_at_ms or now_ms,
        ttls.user_s,
        ttls.recs_s,
        w.model_version,
        recs.source,
        recs.why,
        w.group,
        recs.members,
    ]
    return [keys.user(w.user_id), keys.recs(w.user_id), keys.recs_meta(w.user_id)], args


def popular_args(increments: Mapping[str, float], keep: int) -> list[Arg]:
    """ARGV of :data:`POPULAR_ADD_LUA`."""
    args: list[Arg] = [keep]
    for item_id, inc in increments.items():
        args += (inc, item_id)
    return args


class BlockingPublisher:
    """The worker's hot write path on a plain (blocking) client, for use off the event loop.

    Runs in the ranking thread so packing and the round trip never hold the event loop; the
    blocking client packs commands with hiredis (C), the asyncio one in Python (measured: ~90 us
    of event-loop time per user).
    """

    def __init__(self, url: str, keys: Keys, ttls: Ttls | None = None) -> None:
        self.client = redis.Redis.from_url(url, decode_responses=False)
        self.keys = keys
        self.ttls = ttls or Ttls()
        self._publish = self.client.register_script(PUBLISH_USER_LUA)
        self._popular = self.client.register_script(POPULAR_ADD_LUA)

    def ping(self, where: str) -> None:
        """Fail fast, naming the setting, when Redis does not answer."""
        try:
            self.client.ping()
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
            raise RedisUnavailable(
                f"cannot reach Redis at {where} (STREAMREC_REDIS_URL): {exc}"
            ) from exc

    def publish_users(
        self,
        writes: Sequence[UserWrite],
        popular: Mapping[str, float] | None = None,
        keep: int = 1000,
    ) -> int:
        """Apply ``writes`` (and popularity increments) in one round trip; return new writes."""
        if not writes and not popular:
            return 0
        now_ms = int(time.time() * 1000)
        try:
            results = self._execute(writes, popular, keep, now_ms)
        except redis.exceptions.NoScriptError:
            # Redis lost its script cache (a restart): load the scripts and send the batch
            # again; the watermark makes writes that did land before the error no-ops.
            self.client.script_load(PUBLISH_USER_LUA)
            self.client.script_load(POPULAR_ADD_LUA)
            results = self._execute(writes, popular, keep, now_ms)
        return sum(int(r) for r in results[: len(writes)])

    def _execute(
        self,
        writes: Sequence[UserWrite],
        popular: Mapping[str, float] | None,
        keep: int,
        now_ms: int,
    ) -> list[Any]:
        # EVALSHA directly: a pipeline of Script objects first asks SCRIPT EXISTS, one more
        # round trip per batch.
        pipe = self.client.pipeline(transaction=False)
        for w in writes:
            keys, args = publish_call(self.keys, self.ttls, w, now_ms)
            pipe.evalsha(self._publish.sha, len(keys), *keys, *args)
        if popular:
            pipe.evalsha(self._popular.sha, 1, self.keys.popular(), *popular_args(popular, keep))
        return pipe.execute()

    def close(self) -> None:
        self.client.close()


class RedisStore:
    """Async writes and reads of the key schema; all writes of a batch go in one pipeline."""

    def __init__(self, client: aioredis.Redis, keys: Keys, ttls: Ttls | None = None) -> None:
        self.client = client
        self.keys = keys
        self.ttls = ttls or Ttls()
        self._publish = client.register_script(PUBLISH_USER_LUA)
        self._popular = client.register_script(POPULAR_ADD_LUA)

    @classmethod
    def from_url(cls, url: str, keys: Keys, ttls: Ttls | None = None) -> RedisStore:
        return cls(aioredis.Redis.from_url(url, decode_responses=False), keys, ttls)

    async def close(self) -> None:
        await self.client.aclose()

    async def publish_users(self, writes: Iterable[UserWrite]) -> int:
        """Apply ``writes`` in one round trip; return how many were new (not re-deliveries)."""
        now_ms = int(time.time() * 1000)
        pipe = self.client.pipeline(transaction=False)
        count = 0
        for w in writes:
            keys, args = publish_call(self.keys, self.ttls, w, now_ms)
            await self._publish(keys=keys, args=args, client=pipe)
            count += 1
        if not count:
            return 0
        results = await pipe.execute()
        return sum(int(r) for r in results)

    async def add_popular(self, increments: Mapping[str, float], keep: int) -> None:
        """Merge log-domain popularity increments (item -> log2 weight) into ``sr:popular``."""
        if increments:
            await self._popular(keys=[self.keys.popular()], args=popular_args(increments, keep))

    async def put_items(self, items: Iterable[tuple[str, bytes, str, str]]) -> None:
        """Write ``(item_id, vec bytes, model_version, title)`` rows to ``sr:item:{item}``."""
        pipe = self.client.pipeline(transaction=False)
        for item_id, vec, version, title in items:
            key = self.keys.item(item_id)
            pipe.hset(key, mapping={"vec": vec, "model_version": version, "title": title})
            pipe.expire(key, self.ttls.item_s)
        await pipe.execute()

    async def delete_items(self, item_ids: Iterable[str]) -> None:
        keys = [self.keys.item(i) for i in item_ids]
        if keys:
            await self.client.delete(*keys)

    async def set_model(self, version: str) -> None:
        await self.client.hset(
            self.keys.model(), mapping={"version": version, "updated_at": int(time.time() * 1000)}
        )

    async def read_recs(self, user: str, k: int) -> tuple[list[tuple[str, float]], dict[str, str]]:
        """``(items, meta)`` of a user's personal list; empty when there is none."""
        pipe = self.client.pipeline(transaction=False)
        pipe.zrevrange(self.keys.recs(user), 0, k - 1, withscores=True)
        pipe.hgetall(self.keys.recs_meta(user))
        raw_items, raw_meta = await pipe.execute()
        return _decode_items(raw_items), {_s(a): _s(b) for a, b in raw_meta.items()}

    async def read_user(self, user: str) -> dict[str, bytes]:
        raw = await self.client.hgetall(self.keys.user(user))
        return {_s(a): b if isinstance(b, bytes) else b.encode() for a, b in raw.items()}

    async def read_popular(self, k: int) -> list[tuple[str, float]]:
        """Top ``k`` of ``sr:popular`` (log2 forward-decayed scores, see popularity.py)."""
        return await self._read_zset(self.keys.popular(), k)

    async def set_group_recs(self, group: str, items: list[tuple[str, float]]) -> None:
        """Replace ``sr:group:{g}:recs`` atomically (MULTI/EXEC)."""
        key = self.keys.group_recs(group)
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(key)
        if items:
            pipe.zadd(key, dict(items))
            pipe.expire(key, self.ttls.recs_s)
        await pipe.execute()

    async def sync_groups(
        self, merged: Callable[[SharedGroups | None], SharedGroups]
    ) -> SharedGroups:
        """Replace ``sr:groups`` with ``merged(current)``, optimistically (WATCH, retry).

        Workers sync concurrently; a write based on a model another worker replaced meanwhile
        is refused by Redis and redone on the new one, so no worker's learning is lost.
        """
        key = self.keys.groups()
        while True:
            async with self.client.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(key)
                    current = decode_groups(await pipe.hgetall(key))
                    model = merged(current)
                    pipe.multi()  # type: ignore[no-untyped-call]
                    pipe.hset(key, mapping=encode_groups(model))  # type: ignore[arg-type]
                    await pipe.execute()
                    return model
                except redis.exceptions.WatchError:
                    continue

    async def read_groups(self) -> tuple[SharedGroups | None, list[dict[str, object]]]:
        """The shared group model and the group profiles the group job wrote."""
        raw = await self.client.hgetall(self.keys.groups())
        profiles = orjson.loads(raw[b"profiles"]) if b"profiles" in raw else []
        return decode_groups(raw), profiles

    async def write_group_profiles(self, profiles: list[dict[str, object]]) -> None:
        await self.client.hset(self.keys.groups(), "profiles", orjson.dumps(profiles))

    async def try_lock(self, key: str, ttl_s: float) -> bool:
        """``SET key NX PX``: true for the one caller that gets it until it expires."""
        return bool(await self.client.set(key, b"1", nx=True, px=int(ttl_s * 1000)))

    async def read_group(self, group: str, k: int) -> list[tuple[str, float]]:
        return await self._read_zset(self.keys.group_recs(group), k)

    async def _read_zset(self, key: str, k: int) -> list[tuple[str, float]]:
        raw = await self.client.zrevrange(key, 0, k - 1, withscores=True)
        return _decode_items(cast(list[tuple[bytes, float]], raw))


def encode_groups(model: SharedGroups) -> dict[str | bytes, bytes | str]:
    """``sr:groups`` fields for ``model`` (float32 centroids, float64 counts, little-endian)."""
    return {
        "k": str(model.centroids.shape[0]),
        "dim": str(model.centroids.shape[1]),
        "version": model.version,
        "centroids": np.ascontiguousarray(model.centroids, dtype="<f4").tobytes(),
        "counts": np.ascontiguousarray(model.counts, dtype="<f8").tobytes(),
        "updated_at": str(int(time.time() * 1000)),
    }


def decode_groups(raw: Mapping[bytes | str, bytes | str]) -> SharedGroups | None:
    """Inverse of :func:`encode_groups`; ``None`` when there is no (readable) model."""
    fields = {_s(k): v if isinstance(v, bytes) else v.encode() for k, v in raw.items()}
    try:
        k, dim = int(fields["k"]), int(fields["dim"])
        centroids = np.frombuffer(fields["centroids"], dtype="<f4").reshape(k, dim)
        counts = np.frombuffer(fields["counts"], dtype="<f8").reshape(k)
    except (KeyError, ValueError):
        return None
    version = fields.get("version", b"").decode()
    return SharedGroups(centroids.astype(np.float32), counts.astype(np.float64), version)


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _decode_items(raw: Sequence[tuple[bytes | str, float]]) -> list[tuple[str, float]]:
    return [(_s(member), float(score)) for member, score in raw]
