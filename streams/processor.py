"""Batch processors behind the agents: parse, apply, rank, publish — never raise.

A Faust agent that raises has its events acked and dropped silently, so everything a record can
cause is caught here: bad input goes to dead-letters with its reason; an unavailable Redis is
retried (an events batch's offsets are not committed until it is written, so nothing
acknowledged is lost).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import numpy as np
import redis.exceptions

from encoders.cache import content_hash
from state.engine import Interaction
from state.groups import assign_and_learn
from state.interest import StateCodecError, UserState, decode_state, encode_state, vector_bytes
from state.interest import normalised as unit
from state.popularity import log_add, log_increment
from state.ranking import RankRequest, Served, Signals, served_lists
from state.redis_store import EncodedRecs, UserWrite
from streams.deadletters import dead_letter_headers
from streams.gap_repair import GapRepair
from streams.groups_sync import GroupsSync
from streams.offsets import OffsetLedger, Ticket
from streams.rank_process import RankProcess, encoded
from streams.records import InvalidRecord, Item, Limits, parse_event, parse_item
from streams.records_vectors import ItemVector, encode_item_vector
from streams.runtime import Runtime
from streams.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Redis outages are retried with capped exponential backoff; the batch waits, unacked.
RETRY_MAX_S = 5.0
#: Decoded user states kept per worker (~4 KB each).
CACHE_USERS = 200_000
_TRANSIENT = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


@dataclass
class Stats:
    """Counters and freshness samples exposed on ``/stats`` and used by the benchmark."""

    counters: Counter[str] = field(default_factory=Counter)
    #: Wall seconds per stage (apply, changelog, rank, publish, and the learners' share:
    #: learn_click within apply, learn_groups, ease_gram on the loop and ease_fit on a
    #: thread), the ranking child's round trips (rank_wall)
    #: and the event loop's waits for a free pipeline slot (wait_in_flight); pauses: the
    #: garbage collector's (gc) and the loop's stalls over 100 ms (loop_stall).
    seconds: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    freshness_ms: deque[float] = field(default_factory=lambda: deque(maxlen=100_000))
    positions: dict[int, int] = field(default_factory=dict)  # events partition -> last offset
    started: float = field(default_factory=time.monotonic)
    #: Percentiles as of (samples, events published): the benchmark polls ``/stats`` 5 times a
    #: second, and each percentile over 100k samples cost the event loop ~2% of its time.
    _freshness: tuple[tuple[int, int], dict[str, float]] = field(
        default=((0, 0), {}), init=False, repr=False
    )

    def watch_gc(self) -> None:
        """Count the garbage collector's pauses (``gc`` seconds; pauses over 100 ms): a full
        collection holds the GIL, so every batch in flight waits for it."""
        started: list[float] = [0.0]

        def on_gc(phase: str, info: dict[str, int]) -> None:
            if phase == "start":
                started[0] = time.perf_counter()
                return
            pause = time.perf_counter() - started[0]
            self.seconds["gc"] += pause
            if pause > 0.1:
                self.counters["gc_pauses_over_100ms"] += 1

        gc.callbacks.append(on_gc)

    async def watch_loop(self, interval_s: float = 0.02) -> None:
        """Count the event loop's stalls (``loop_stalls_over_100ms``, ``loop_stall`` seconds):
        a probe that sleeps ``interval_s`` and wakes over 100 ms late means every callback
        waited that long (a long batch, a blocking call, a pause). Runs until cancelled."""
        while True:
            started = time.perf_counter()
            await asyncio.sleep(interval_s)
            late = time.perf_counter() - started - interval_s
            if late > 0.1:
                self.counters["loop_stalls_over_100ms"] += 1
                self.seconds["loop_stall"] += late

    def tick(self) -> None:
        self.counters["uptime_s"] = int(time.monotonic() - self.started)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.counters)
        out["positions"] = {str(p): o for p, o in sorted(self.positions.items())}
        out["stage_seconds"] = {k: round(v, 3) for k, v in sorted(self.seconds.items())}
        return out | self._percentiles()

    def _percentiles(self) -> dict[str, float]:
        key = (len(self.freshness_ms), self.counters["events_published"])
        if key != self._freshness[0]:
            fresh = np.asarray(self.freshness_ms, dtype=np.float64)
            figures = {}
            if fresh.size:
                p50, p99 = np.percentile(fresh, [50, 99])
                figures = {"freshness_p50_ms": float(p50), "freshness_p99_ms": float(p99)}
            self._freshness = (key, figures)
        return self._freshness[1]


async def retry_transient(op: Callable[[], Awaitable[T]], what: str, stats: Stats) -> T:
    """Run ``op`` until it succeeds, backing off on connection errors (never gives up)."""
    delay = 0.1
    while True:
        try:
            return await op()
        except _TRANSIENT as exc:
            stats.counters["redis_retries"] += 1
            log.warning("%s failed (%s); retrying in %.1fs", what, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)


class DeadLetters:
    """Sends unusable records to the dead-letter topic with the standard headers."""

    def __init__(self, topic: Any, source_topic: str, stats: Stats) -> None:
        self.topic = topic
        self.source_topic = source_topic
        self.stats = stats

    async def fail_batch(self, batch: Sequence[Any], exc: Exception) -> None:
        """Route a batch that failed for a reason no retry fixes to dead-letters, and count it.

        User states already applied stay in the table and reach Redis with the user's next
        write, so these dead letters record the failure, not a loss.
        """
        log.error("batch of %d records failed: %r", len(batch), exc, exc_info=exc)
        self.stats.counters["batch_errors"] += 1
        reason = f"{type(exc).__name__}: {exc}"
        for event in batch:
            await self.send(event.message, "processing_error", reason)

    async def send(self, message: Any, kind: str, reason: str) -> None:
        self.stats.counters["dead_letters"] += 1
        self.stats.counters[f"dead_letters_{kind}"] += 1
        log.info(
            "dead letter %s[%s]@%s: %s: %s",
            self.source_topic,
            message.partition,
            message.offset,
            kind,
            reason,
        )
        await self.topic.send(
            key=message.key,
            value=message.value,
            headers=dead_letter_headers(
                self.source_topic, message.partition, message.offset, kind, reason
            ),
        )


@dataclass(frozen=True, slots=True)
class _Published:
    """What the ranking thread reports back for one batch."""

    users: int
    at_ms: float  # wall clock when the batch became readable in Redis
    produced_ms: list[float]


async def _both(
    changelog: asyncio.Future[None], published: asyncio.Future[_Published]
) -> _Published:
    """The batch's result once its changelog rows and its Redis write are both done."""
    results = await asyncio.gather(changelog, published, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return cast(_Published, results[1])


@dataclass(slots=True)
class _Pending:
    state: UserState
    partition: int
    changed: bool = False
    produced_ms: list[float] = field(default_factory=list)


class EventProcessor:
    """Applies a batch of ``events`` messages and publishes the touched users once each."""

    def __init__(
        self,
        runtime: Runtime,
        table: Any,
        dead_letters_topic: Any,
        limits: Limits,
        settings: Settings,
        stats: Stats,
        executor: Executor,
        source_topic: str,
        gaps: GapRepair | None = None,
        max_in_flight: int = 3,
        publish_executor: Executor | None = None,
        groups: GroupsSync | None = None,
        rank_process: RankProcess | None = None,
    ) -> None:
        """``rank_process``: rank in that child process instead of on ``executor``."""
        self.runtime = runtime
        self.engine = runtime.engine
        self.table = table
        self.dead = DeadLetters(dead_letters_topic, source_topic, stats)
        self.limits = limits
        self.settings = settings
        self.stats = stats
        self.executor = executor
        # Decoded states of this worker's users. The table is the durable copy; this saves a
        # decode per event. Cleared on every rebalance, since a partition that leaves and comes
        # back may have been changed by another worker meanwhile.
        self.cache: dict[str, UserState] = {}
        self.stopping = threading.Event()
        self.next_offset: dict[int, int] = {}  # partition -> offset expected next
        self.gaps = gaps
        self.max_in_flight = max_in_flight
        self.in_flight: set[asyncio.Future[_Published]] = set()
        self.finishing: set[asyncio.Future[None]] = set()
        self.changelog: asyncio.Future[None] | None = None  # the newest changelog write
        self.publishing: asyncio.Future[_Published] | None = None  # the newest Redis write
        self.publish_executor = publish_executor or executor
        self.groups = groups
        self.rank_process = rank_process
        self.offsets = OffsetLedger()  # what may be committed (see streams.offsets)
        # One batch at a time: the agent's and the stall watch's (``catch_up``) may interleave.
        self._lock = asyncio.Lock()

    def forget(self) -> None:
        """Drop cached states and offsets (call when partitions are revoked, after a drain)."""
        self.cache.clear()
        self.next_offset.clear()
        self.offsets.forget()

    async def _without_gaps(self, batch: list[Any]) -> list[Any]:
        """The batch's messages per partition in offset order, any skipped range refetched.

        Refetched records join ``batch`` (dead-lettered with it if it fails).
        """
        by_partition: dict[int, list[Any]] = {}
        for message in [event.message for event in batch]:
            by_partition.setdefault(message.partition, []).append(message)
        out: list[Any] = []
        for partition, items in by_partition.items():
            items.sort(key=lambda m: m.offset)
            expected = await self._expected(partition)
            for message in items:
                if expected is not None and message.offset > expected and self.gaps is not None:
                    missing = await self.gaps.fetch(partition, expected, message.offset)
                    self.stats.counters["gap_events_refetched"] += len(missing)
                    log.warning(
                        "partition %d: stream skipped offsets %d..%d; refetched %d",
                        partition,
                        expected,
                        message.offset - 1,
                        len(missing),
                    )
                    out.extend(r.message for r in missing)
                    batch.extend(missing)
                out.append(message)
                expected = max(expected or 0, message.offset + 1)
            self.next_offset[partition] = expected or 0
        return out

    async def process(self, batch: Sequence[Any]) -> None:
        """Apply a batch and start its ranking and publishing; never raises for a record.

        Returns once the batch is applied, while its ranking (child process or thread) and
        Redis write run elsewhere, so Faust gathers the next batch meanwhile (measured: the
        event loop and the ranking thread were otherwise idle half the time each). Its offsets
        become committable once it is in Redis and the changelog (:mod:`streams.offsets`). At
        most ``max_in_flight`` batches wait for ranking and publishing.
        """
        async with self._lock:
            await self._process(batch)

    @property
    def idle(self) -> bool:
        """No batch being applied or waiting for Redis."""
        return not self._lock.locked() and not self.in_flight and not self.finishing

    async def catch_up(self, partition: int, end: int) -> int:
        """Apply the next batch of ``partition``'s records the stream has not delivered.

        For an assigned partition the stream engine stopped delivering (see
        :mod:`streams.stall_watch`), when it is expected below ``end``. Reads from there as far
        as the log goes, up to one batch, not only up to ``end``: Tansu lists an end short of
        its newest batch's last records, and a catch-up that stopped there stranded them (users
        short by the tail of each stalled partition). Re-deliveries later are no-ops (every
        user state's watermark). Returns how many records were refetched.
        """
        if self.gaps is None:
            return 0
        async with self._lock:
            start = await self._expected(partition)
            if start is None or start >= end:
                return 0
            records = await self.gaps.fetch(
                partition, start, start + self.settings.batch_max_events
            )
            if records:
                await self._process(records)
            return len(records)

    async def _expected(self, partition: int) -> int | None:
        """The offset ``partition`` continues at: after what was applied, else the commit."""
        expected = self.next_offset.get(partition)
        if expected is None and self.gaps is not None:
            expected = await self.gaps.committed(partition)
        return expected

    async def _process(self, delivered: Sequence[Any]) -> None:
        if len(self.in_flight) >= self.max_in_flight:
            started = time.perf_counter()
            while len(self.in_flight) >= self.max_in_flight:
                await asyncio.wait(self.in_flight, return_when=asyncio.FIRST_COMPLETED)
            self.stats.seconds["wait_in_flight"] += time.perf_counter() - started
        # Gap repair appends the records it refetched: dead-lettered with the batch if it fails.
        batch = list(delivered)
        try:
            job = await self._apply_and_submit(batch)
        except Exception as exc:
            await self.dead.fail_batch(batch, exc)
            job = None
        # Opened under the lock, after the batch ran: tickets keep the order of batches.
        ticket = self._ticket(batch)
        if job is None:
            self.offsets.close(ticket)
            return
        self.in_flight.add(job)
        job.add_done_callback(functools.partial(self._published, batch, ticket))

    def _ticket(self, batch: Sequence[Any]) -> Ticket:
        """Open the batch's ticket: its partitions up to where gap repair saw them contiguous
        (a partition it failed in before getting that far stays where it was)."""
        ends = {
            p: self.next_offset[p]
            for p in {event.message.partition for event in batch}
            if p in self.next_offset
        }
        return self.offsets.open(ends)

    async def drain(self) -> None:
        """Wait until every batch in flight is published and committable (rebalance, shutdown)."""
        while self.in_flight or self.finishing:
            await asyncio.gather(*self.in_flight, *self.finishing, return_exceptions=True)

    async def _apply_and_submit(self, batch: list[Any]) -> asyncio.Future[_Published] | None:
        users: dict[str, _Pending] = {}
        popular: dict[str, float] = {}
        started = time.perf_counter()
        for message in await self._without_gaps(batch):
            await self._apply_one(message, users, popular)
        self.stats.seconds["apply"] += time.perf_counter() - started
        self.stats.seconds["learn_click"] = self.engine.learn_seconds  # part of "apply"
        if not users:
            return None
        if self.groups is not None:
            started = time.perf_counter()
            assign_and_learn(self.groups.local, [p.state for p in users.values()])
            self.stats.seconds["learn_groups"] += time.perf_counter() - started
        requests = [self.engine.request(u, p.state) for u, p in users.items()]
        writes = [_user_write(u, p.state) for u, p in users.items()]
        produced_ms = [t for p in users.values() for t in p.produced_ms]
        # Requests, writes and signals are copies: the loop may change the states, popularity
        # and co-occurrence while the ranking thread works on them.
        signals = self.engine.signals()
        served: list[Served] = []  # filled by ranking, handed to the guard on the loop
        ranked: asyncio.Future[None]
        if self.rank_process is not None:  # submitted now, so batches reach it in order
            ranked = asyncio.ensure_future(
                self._rank_elsewhere(self.rank_process, requests, writes, signals, served)
            )
        else:
            loop = asyncio.get_running_loop()
            ranked = loop.run_in_executor(
                self.executor, self._rank, requests, writes, signals, served
            )
        # Publishing runs on its own thread, so batch N's Redis round trip overlaps batch N+1's
        # ranking; batches reach Redis in order (and the watermark rejects any stale write).
        self.publishing = asyncio.ensure_future(
            self._publish_after(self.publishing, ranked, writes, popular, produced_ms, served)
        )
        published = self.publishing
        rows = [
            (u.encode(), encode_state(p.state), p.partition) for u, p in users.items() if p.changed
        ]
        self.changelog = asyncio.ensure_future(self._write_changelog(self.changelog, rows))
        return asyncio.ensure_future(_both(self.changelog, published))

    async def _write_changelog(
        self, previous: asyncio.Future[None] | None, rows: list[tuple[bytes, bytes, int]]
    ) -> None:
        """Write ``rows`` after the previous batch's rows, so a user's newest state is last.

        The loop does not wait for it (the producer waits for the previous record batch of a
        partition to be sent: ~0.4 ms per user at 1k events/s); the batch is committable only
        once its rows are in the producer, which is flushed before offsets are committed.
        """
        if previous is not None:
            with contextlib.suppress(Exception):  # its own batch reports its failure
                await previous
        started = time.perf_counter()
        await self.table.put_many(rows)
        self.stats.seconds["changelog"] += time.perf_counter() - started

    def _published(
        self, batch: Sequence[Any], ticket: Ticket, job: asyncio.Future[_Published]
    ) -> None:
        """On the loop when a batch's write finished: count it, its offsets committable."""
        self.in_flight.discard(job)
        if job.cancelled():  # shutting down: never committed, so the batch is delivered again
            return
        exc = job.exception()
        if exc is not None:
            task = asyncio.ensure_future(self._failed(batch, ticket, exc))
            self.finishing.add(task)
            task.add_done_callback(self.finishing.discard)
            return
        done = job.result()
        self.stats.freshness_ms.extend(done.at_ms - t for t in done.produced_ms)
        self.stats.counters["batches"] += 1
        self.stats.counters["users_published"] += done.users
        self.stats.counters["events_published"] += len(done.produced_ms)
        self.offsets.close(ticket)

    async def _failed(self, batch: Sequence[Any], ticket: Ticket, exc: BaseException) -> None:
        if isinstance(exc, Exception) and not self.stopping.is_set():
            await self.dead.fail_batch(batch, exc)
            self.offsets.close(ticket)

    def _rank(
        self,
        requests: list[RankRequest],
        writes: list[UserWrite],
        signals: Signals,
        served: list[Served],
    ) -> None:
        """Ranking thread: top-K per user, encoded for publishing (as the child does) into
        ``writes``."""
        started = time.perf_counter()
        ranked = self.engine.rank_requests(requests, self.settings.top_k, signals)
        seconds = time.perf_counter() - started
        self._fill(writes, encoded(ranked), seconds)
        served += served_lists(ranked)

    async def _rank_elsewhere(
        self,
        child: RankProcess,
        requests: list[RankRequest],
        writes: list[UserWrite],
        signals: Signals,
        served: list[Served],
    ) -> None:
        """The ranking child process: top-K per user, filled into ``writes``."""
        titles = self.engine.catalogue.titles
        started = time.perf_counter()
        ranked, seconds, lists = await child.rank(signals, requests, self.settings.top_k, titles)
        self.stats.seconds["rank_wall"] += time.perf_counter() - started  # with the transfer
        self._fill(writes, ranked, seconds)
        served += lists

    def _fill(self, writes: list[UserWrite], ranked: list[EncodedRecs], seconds: float) -> None:
        for write, recs in zip(writes, ranked, strict=True):
            write.recs = recs
        self.stats.counters["users_ranked"] += len(writes)
        self.stats.seconds["rank"] += seconds

    async def _publish_after(
        self,
        previous: asyncio.Future[_Published] | None,
        ranked: asyncio.Future[None],
        writes: list[UserWrite],
        popular: dict[str, float],
        produced_ms: list[float],
        served: list[Served],
    ) -> _Published:
        await ranked
        self.engine.served(served)  # on the loop, where apply reads the guard
        if previous is not None:
            with contextlib.suppress(Exception):  # its own batch reports its failure
                await previous
        return await asyncio.get_running_loop().run_in_executor(
            self.publish_executor, self._publish, writes, popular, produced_ms
        )

    def _publish(
        self, writes: list[UserWrite], popular: dict[str, float], produced_ms: list[float]
    ) -> _Published:
        """Publishing thread: one pipelined round trip for the batch (retried while down)."""
        started = time.perf_counter()
        delay = 0.1
        while True:
            try:
                self.runtime.publisher.publish_users(writes, popular, self.settings.popular_size)
                self.stats.seconds["publish"] += time.perf_counter() - started
                return _Published(len(writes), time.time() * 1000, produced_ms)
            except _TRANSIENT as exc:
                if self.stopping.is_set():
                    raise
                self.stats.counters["redis_retries"] += 1
                log.warning("publishing to Redis failed (%s); retrying in %.1fs", exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)

    async def _apply_one(
        self, message: Any, users: dict[str, _Pending], popular: dict[str, float]
    ) -> None:
        self.stats.positions[message.partition] = message.offset
        try:
            record = parse_event(message.value, message.key, self.limits)
        except InvalidRecord as exc:
            await self.dead.send(message, exc.kind, str(exc))
            return
        pending = users.get(record.user_id)
        if pending is None:
            pending = users[record.user_id] = _Pending(
                self._load(record.user_id), message.partition
            )
        interaction = Interaction(
            record.user_id,
            record.type,
            record.item_id,
            record.ts_ms,
            record.dwell_ms,
            message.partition,
            message.offset,
            record.position,
            record.event_id,
        )
        try:
            applied = self.engine.apply(pending.state, interaction)
        except Exception as exc:  # a bug must cost one record, not the worker
            log.exception("applying event failed")
            await self.dead.send(message, "processing_error", f"{type(exc).__name__}: {exc}")
            return
        if not applied:
            self.stats.counters["events_redelivered"] += 1
            return
        pending.changed = True
        pending.produced_ms.append(float(message.timestamp) * 1000)
        self.stats.counters["events_applied"] += 1
        history = pending.state.history
        if record.item_id and history and history[-1].weight > 0:
            inc = log_increment(
                history[-1].weight, record.ts_ms, self.settings.popularity_half_life_s
            )
            prev = popular.get(record.item_id)
            popular[record.item_id] = inc if prev is None else log_add(prev, inc)

    def _load(self, user_id: str) -> UserState:
        state = self.cache.get(user_id)
        if state is not None:
            return state
        raw = self.table.get(user_id.encode())
        if raw is None:
            state = self.engine.new_state()
        else:
            try:
                state = decode_state(raw)
            except (StateCodecError, ValueError, KeyError) as exc:
                self.stats.counters["state_decode_errors"] += 1
                log.error("user %r: unreadable state (%s); starting afresh", user_id, exc)
                state = self.engine.new_state()
        if len(self.cache) >= CACHE_USERS:
            self.cache.pop(next(iter(self.cache)))
        self.cache[user_id] = state
        return state


def _user_write(user_id: str, state: UserState) -> UserWrite:
    """The Redis write for ``state``; ranking fills in the items."""
    return UserWrite(
        user_id=user_id,
        partition=state.partition,
        offset=state.offset,
        events=state.events,
        vec=vector_bytes(unit(state.vec)),
        model_version=state.model_version,
        group=state.group,
    )


class ItemProcessor:
    """Encodes a batch of ``items`` (cache first) and shares the vectors with every worker."""

    def __init__(
        self,
        runtime: Runtime,
        vectors_topic: Any,
        dead_letters_topic: Any,
        limits: Limits,
        stats: Stats,
        source_topic: str,
    ) -> None:
        self.runtime = runtime
        self.vectors_topic = vectors_topic
        self.dead = DeadLetters(dead_letters_topic, source_topic, stats)
        self.limits = limits
        self.stats = stats

    async def process(self, batch: Sequence[Any]) -> None:
        items: dict[str, Item] = {}
        removed: list[bytes] = []
        for event in batch:
            message = event.message
            if message.value is None and message.key:
                removed.append(message.key)  # compacted-topic tombstone: withdraw the item
                continue
            try:
                item = parse_item(message.value, message.key, self.limits)
            except InvalidRecord as exc:
                await self.dead.send(message, exc.kind, str(exc))
                continue
            items[item.item_id] = item  # latest record per item wins within a batch
        if items:
            await self._encode_and_share(list(items.values()))
        for key in removed:
            await self.vectors_topic.send(key=key, value=None)
        if removed:
            await retry_transient(
                lambda: self.runtime.store.delete_items(k.decode() for k in removed),
                "deleting items",
                self.stats,
            )

    async def _encode_and_share(self, items: list[Item]) -> None:
        texts = [item.text() for item in items]
        vectors = await retry_transient(
            lambda: self.runtime.embeddings.encode(texts), "encoding items", self.stats
        )
        version = self.runtime.version
        rows = []
        for item, text, vec in zip(items, texts, vectors, strict=True):
            record = ItemVector(
                item.item_id,
                vec,
                version,
                item.title,
                item.category or "",
                content_hash(version, text),
                item.created_at_ms,
            )
            await self.vectors_topic.send(
                key=item.item_id.encode(), value=encode_item_vector(record)
            )
            rows.append((item.item_id, vector_bytes(vec), version, item.title))
        await retry_transient(
            lambda: self.runtime.store.put_items(rows), "writing items", self.stats
        )
        self.stats.counters["items_encoded"] += len(items)
