"""The Faust application: topics, the user-state table, the agents and the web page.

``create_app(settings)`` builds a fresh app (no app at import time). Flow per worker:
``items`` → encode (batched, cached) → ``item-vectors`` → every worker's catalogue;
``events`` → user state (table + Redis) → batched ranking → Redis recommendations.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import faust
import orjson
from aiokafka.errors import KafkaError
from faust.types import TP
from faust.web import Request, Response, View

from state.groups import GroupConfig
from streams.catalogue_sync import CatalogueSync
from streams.click_sync import ClickSync, restore
from streams.ease_refit import EaseRefit
from streams.feedback import FeedbackForwarder
from streams.gap_repair import GapRepair
from streams.gc_policy import FullCollections
from streams.groups_sync import GroupsSync
from streams.offsets import OffsetCommitter
from streams.processor import EventProcessor, ItemProcessor, Stats
from streams.rank_process import RankProcess
from streams.records import (
    DEAD_LETTERS,
    EVENTS,
    FEEDBACK,
    ITEM_VECTORS,
    ITEMS,
    MODEL_DRIFT,
    Limits,
)
from streams.runtime import Runtime
from streams.settings import Settings
from streams.stall_watch import StallWatch
from streams.transport import App

log = logging.getLogger(__name__)

#: Large enough for a 1 MB bad record to be forwarded to dead-letters intact.
MAX_REQUEST_BYTES = 8 * 1024 * 1024
#: One changelog record batch (per partition and produce request) holds up to this much.
PRODUCER_BATCH_BYTES = 1024 * 1024
#: How long shutdown waits for batches still being ranked and published.
SHUTDOWN_DRAIN_S = 10.0


class UserTable(faust.Table[bytes, bytes]):
    """User-state table whose changelog partition is the partition of the user's events.

    Faust derives it from ``current_event()``, but a ``take_events`` batch spans partitions,
    so the current event is usually some other user's; we pass the right one explicitly.
    """

    async def put_many(self, rows: Sequence[tuple[bytes, bytes, int]]) -> None:
        """Set many keys; their changelog records go out as one record batch per partition.

        Measured: one ``send_soon`` per key cost ~220 us of event-loop time per user at 1k
        users/s. The batches join aiokafka's accumulator, which Faust flushes before every
        offset commit, so the commit-after-changelog guarantee is unchanged.
        """
        by_partition: dict[int, list[tuple[bytes, bytes]]] = {}
        for key, value, partition in rows:
            self.data[key] = value
            by_partition.setdefault(partition, []).append((key, value))
        # Private but stable in the pinned faust-streaming: the underlying AIOKafkaProducer.
        producer = self.app.producer._ensure_producer()  # type: ignore[attr-defined]
        topic = self.changelog_topic.get_topic_name()
        for partition, pairs in by_partition.items():
            batch = producer.create_batch()
            for key, value in pairs:
                if batch.append(key=key, value=value, timestamp=None) is None:
                    batch.close()
                    await producer.send_batch(batch, topic, partition=partition)
                    batch = producer.create_batch()
                    batch.append(key=key, value=value, timestamp=None)
            batch.close()
            await producer.send_batch(batch, topic, partition=partition)


class StreamrecApp:
    """One worker's Faust app and the state it carries; see the module docstring."""

    def __init__(self, settings: Settings, runtime: Runtime | None = None) -> None:
        self.settings = settings
        self.limits = Limits(settings.max_message_bytes, settings.max_text_chars)
        self.stats = Stats()
        (settings.data_dir / "faust").mkdir(parents=True, exist_ok=True)
        self.app = App(
            settings.app_id,
            fetch_max_wait_ms=settings.fetch_max_wait_ms,
            broker=settings.broker,
            store="memory://",
            autodiscover=False,
            web_enabled=settings.web_enabled,
            web_bind=settings.web_host,
            web_host=settings.web_host,
            web_port=settings.web_port,
            topic_partitions=settings.partitions,
            topic_allow_declare=True,
            consumer_auto_offset_reset="earliest",
            producer_max_request_size=MAX_REQUEST_BYTES,
            # aiokafka's 16 KB default put ~5 user states in a record batch, so a batch of
            # 2,000 users became hundreds of produce requests (22% of the event loop).
            producer_max_batch_size=PRODUCER_BATCH_BYTES,
            consumer_max_fetch_size=MAX_REQUEST_BYTES,
            broker_max_poll_records=settings.batch_max_events,
            # Far above one batch: when a stream buffer fills, faust-streaming pauses the
            # partition and can drop records it already fetched (faust-streaming#88); we saw
            # events lost after a restart with the 4096 default while the first batch waited.
            stream_buffer_maxsize=max(65_536, 16 * settings.batch_max_events),
            # Faust defaults wait seconds "for more nodes to join" before each recovery.
            stream_recovery_delay=0.0,
            # Tansu holds a JoinGroup for about half the rebalance timeout before answering, so
            # Faust's 60 s default meant ~30 s from start to the first event.
            broker_rebalance_timeout=settings.rebalance_timeout_s,
            broker_session_timeout=settings.session_timeout_s,
            broker_heartbeat_interval=settings.session_timeout_s / 5,
            datadir=str(settings.data_dir / "faust"),
            logging_config=None,
        )
        raw: dict[str, Any] = {"key_serializer": "raw", "value_serializer": "raw"}
        # Acks off: the events processor commits this topic's offsets (streams.offsets).
        self.events_topic = self.app.topic(settings.topic(EVENTS), acks=False, **raw)
        self.items_topic = self.app.topic(settings.topic(ITEMS), **raw)
        self.feedback_topic = self.app.topic(settings.topic(FEEDBACK), **raw)
        self.vectors_topic = self.app.topic(
            settings.topic(ITEM_VECTORS), partitions=settings.partitions, compacting=True, **raw
        )
        self.dead_letters = self.app.topic(settings.topic(DEAD_LETTERS), partitions=1, **raw)
        self.drift_topic = self.app.topic(settings.topic(MODEL_DRIFT), partitions=1, **raw)
        self.table = UserTable(
            self.app,
            name="user-state",
            default=None,
            partitions=settings.partitions,
            key_type=bytes,
            value_type=bytes,
            beacon=self.app.tables.beacon,
        )
        self.app.tables.add(self.table)
        self.runtime: Runtime | None = runtime
        self.event_processor: EventProcessor | None = None
        self.groups: GroupsSync | None = None
        self.click_sync: ClickSync | None = None
        self.ease_refit: EaseRefit | None = None
        self.rank_process: RankProcess | None = None
        self.stall_watch = StallWatch(
            lambda: self.event_processor,
            self._assigned_events,
            self._settled,
            self.stats,
            highwater=self._events_highwater,
        )
        self.committer = OffsetCommitter(
            lambda: None if self.event_processor is None else self.event_processor.offsets,
            self._assigned_events,
            self.app.producer.flush,
            self._commit_events,
        )
        self.ready = asyncio.Event()
        self._loop_watch: asyncio.Future[None] | None = None
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rank")
        self.publish_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="publish")
        self._register()
        self._register_pages()

    def _register(self) -> None:
        app, settings = self.app, self.settings

        @app.task  # type: ignore[untyped-decorator]
        async def start_runtime() -> None:
            await self.vectors_topic.maybe_declare()
            await self.dead_letters.maybe_declare()
            await self.drift_topic.maybe_declare()
            if self.runtime is None:
                self.runtime = Runtime.build(settings)  # in-process use (tests); CLI pre-builds
            await self.runtime.start()
            self.sync = CatalogueSync(settings, self.runtime.engine, self.stats)
            await self.sync.start()
            self._start_learners(self.runtime)
            if settings.rank_process:
                self.rank_process = RankProcess(self.runtime.engine.ranker, settings.blas_threads)
                await self.rank_process.start()
            self.stall_watch.start()
            self.committer.start()
            self._loop_watch = asyncio.ensure_future(self.stats.watch_loop())
            self.ready.set()
            log.info(
                "streamrec worker ready: encoder %s, %d items",
                self.runtime.version,
                len(self.runtime.engine.catalogue),
            )

        self.events_agent = app.agent(self.events_topic, name="events")(self._events)
        self.items_agent = app.agent(self.items_topic, name="items")(self._items)
        if settings.feedback_agent:
            self.feedback_agent = app.agent(self.feedback_topic, name="feedback")(self._feedback)

        full_collections = FullCollections(settings.full_gc_s)

        @app.timer(interval=1.0)  # type: ignore[untyped-decorator]
        async def heartbeat_stats() -> None:
            self.stats.tick()
            if full_collections.tick():
                self.stats.counters["gc_full_collections"] += 1

        async def forget_states(sender: Any, *args: Any, **kwargs: Any) -> None:
            if self.event_processor is not None:
                await self.event_processor.drain()
                with contextlib.suppress(KafkaError):  # uncommitted is redelivered, skipped
                    await self.committer.commit_due()
                self.event_processor.forget()

        async def close_runtime(sender: Any, *args: Any, **kwargs: Any) -> None:
            await self._shutdown()

        # faust's signal typing rejects coroutine receivers that it accepts at run time.
        cast(Any, app.on_partitions_revoked).connect(forget_states)
        cast(Any, app.on_before_shutdown).connect(close_runtime)

    async def _shutdown(self) -> None:
        """Let batches in flight reach Redis and commit them; the rest is redelivered."""
        await self.stall_watch.stop()
        await self.committer.stop()
        if self._loop_watch is not None:
            self._loop_watch.cancel()
        processor = self.event_processor
        if processor is not None:
            processor.stopping.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(processor.drain(), SHUTDOWN_DRAIN_S)
            with contextlib.suppress(KafkaError):
                await self.committer.commit_due()
            if processor.gaps is not None:
                await processor.gaps.close()
        await self._stop_learners()
        if self.runtime is not None:
            await self.sync.stop()
            await self.runtime.close()
        if self.rank_process is not None:
            self.rank_process.close()
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.publish_executor.shutdown(wait=False, cancel_futures=True)

    async def _commit_events(self, offsets: dict[int, int]) -> bool:
        """Commit ``events`` offsets for the group, the way Faust commits its own (private but
        stable in the pinned faust-streaming: only assigned partitions, False if rebalanced)."""
        topic = self.events_topic.get_topic_name()
        consumer: Any = self.app.consumer
        committed: bool = await consumer._commit({TP(topic, p): o for p, o in offsets.items()})
        return committed

    def _assigned_events(self) -> set[int]:
        topic = self.events_topic.get_topic_name()
        return {tp.partition for tp in self.app.consumer.assignment() if tp.topic == topic}

    def _events_highwater(self, partition: int) -> int | None:
        """``events`` ``partition``'s high watermark in the consumer's newest fetch (None: none)."""
        tp = TP(self.events_topic.get_topic_name(), partition)
        highwater: int | None = None
        # aiokafka asserts the partition is assigned; a rebalance may just have taken it.
        with contextlib.suppress(AssertionError):
            highwater = self.app.consumer.highwater(tp)
        return highwater if highwater is not None and highwater >= 0 else None

    def _settled(self) -> bool:
        """Not rebalancing and every table recovered (user states complete)."""
        app = self.app
        recovery = cast(Any, app.tables).recovery  # TableManagerT does not declare it
        return not app.rebalancing and not app.in_recovery and recovery.completed.is_set()

    def _start_learners(self, runtime: Runtime) -> None:
        """User groups and the click model: resume, then sync with the other replicas."""
        settings, engine = self.settings, runtime.engine
        if settings.groups:
            config = GroupConfig(max_groups=settings.groups)
            self.groups = GroupsSync(
                runtime.store, engine, self.executor, config, settings.groups_sync_s, settings.top_k
            )
            self.groups.start()
        if engine.ease is not None:
            self.ease_refit = EaseRefit(engine, self.stats, settings.ease_refit_s)
            self.ease_refit.start()
        if engine.click is not None:
            if restore(engine, settings.data_dir):
                log.info("click model resumed from its checkpoint")
            self.click_sync = ClickSync(
                runtime.store, engine, settings.data_dir, settings.click_sync_s, self._drifted
            )
            self.click_sync.start()

    async def _drifted(self, report: dict[str, object]) -> None:
        log.warning("click model drift: %s", report)
        await self.drift_topic.send(value=orjson.dumps(report))

    async def _stop_learners(self) -> None:
        if self.groups is not None:
            await self.groups.stop()
        if self.click_sync is not None:
            await self.click_sync.stop()
        if self.ease_refit is not None:
            await self.ease_refit.stop()

    async def _events(self, stream: faust.StreamT[Any]) -> None:
        """The events agent: batches of raw events in, user states and rankings out."""
        settings = self.settings
        batches = cast(faust.Stream[Any], stream).take_events(
            settings.batch_max_events, within=settings.batch_max_wait_ms / 1000
        )
        # Iterate from the first moment and wait for the runtime inside the loop: Faust may
        # drop events delivered to an agent that has not started iterating its stream yet
        # (measured: events lost after a restart when the wait came first).
        async for batch in batches:
            processor = self.event_processor or await self._event_processor()

            try:
                await processor.process(batch)
            except Exception as exc:  # an escaping exception would end the agent
                await processor.dead.fail_batch(batch, exc)

    async def _event_processor(self) -> EventProcessor:
        # Rank against the catalogue as loaded at start, not a partial one. Waiting here is
        # safe: whatever the stream engine skips meanwhile, gap repair refetches.
        runtime = await self._runtime()
        gaps = GapRepair(
            self.settings.bootstrap_servers,
            self.settings.app_id,
            self.events_topic.get_topic_name(),
        )
        self.event_processor = EventProcessor(
            runtime,
            self.table,
            self.dead_letters,
            self.limits,
            self.settings,
            self.stats,
            self.executor,
            self.events_topic.get_topic_name(),
            gaps,
            publish_executor=self.publish_executor,
            groups=self.groups,
            rank_process=self.rank_process,
        )
        return self.event_processor

    async def _items(self, stream: faust.StreamT[Any]) -> None:
        """The items agent: encode (cache first) and share vectors on ``item-vectors``."""
        processor: ItemProcessor | None = None
        async for batch in cast(faust.Stream[Any], stream).take_events(256, within=0.2):
            if processor is None:
                processor = ItemProcessor(
                    await self._runtime(),
                    self.vectors_topic,
                    self.dead_letters,
                    self.limits,
                    self.stats,
                    self.items_topic.get_topic_name(),
                )
            try:
                await processor.process(batch)
            except Exception as exc:
                await processor.dead.fail_batch(batch, exc)

    async def _feedback(self, stream: faust.StreamT[Any]) -> None:
        """The feedback agent: labels forwarded to ``events`` (see :mod:`streams.feedback`)."""
        forwarder = FeedbackForwarder(
            self.events_topic,
            self.dead_letters,
            self.limits,
            self.stats,
            self.feedback_topic.get_topic_name(),
        )
        async for batch in cast(faust.Stream[Any], stream).take_events(256, within=0.2):
            try:
                await forwarder.process(batch)
            except Exception as exc:  # an escaping exception would ack the batch silently
                await forwarder.dead.fail_batch(batch, exc)

    def _register_pages(self) -> None:
        app = self.app

        @app.page("/recs/{user}")
        class RecsPage(View):
            async def get(self_view, request: Request, user: str) -> Response:
                try:
                    k = int(request.query.get("k", "10"))
                except ValueError:
                    return self_view.json({"error": "k must be an integer"}, status=400)
                if not 1 <= k <= 1000:
                    return self_view.json({"error": "k must be between 1 and 1000"}, status=400)
                if self.runtime is None:
                    return self_view.json({"error": "worker is starting"}, status=503)
                recs = await self.runtime.reader.read(user, k)
                return self_view.json(recs.as_json())

        @app.page("/stats")
        class StatsPage(View):
            async def get(self_view, request: Request) -> Response:
                figures = self.stats.as_json()
                if self.event_processor is not None:
                    offsets = self.event_processor.offsets
                    figures["committed"] = {str(p): o for p, o in sorted(offsets.committed.items())}
                    figures["batches_pending"] = offsets.pending
                if self.runtime is not None:
                    engine = self.runtime.engine
                    figures["catalogue_items"] = len(engine.catalogue)
                    if engine.click is not None:
                        figures.update(engine.click.metrics())
                    if engine.guard is not None:
                        figures.update(engine.guard.metrics())
                return self_view.json(figures)

        @app.page("/stats/reset")
        class StatsReset(View):
            async def post(self_view, request: Request) -> Response:
                """Start a fresh freshness window (the benchmark's steady phase)."""
                self.stats.freshness_ms.clear()
                return self_view.json({"reset": True})

        @app.page("/healthz")
        class Health(View):
            async def get(self_view, request: Request) -> Response:
                ok = self.ready.is_set()
                return self_view.json({"ready": ok}, status=200 if ok else 503)

    async def _runtime(self) -> Runtime:
        """The runtime, once start-up has built it (agents wait here)."""
        await self.ready.wait()
        if self.runtime is None:
            raise RuntimeError("worker marked ready without a runtime")
        return self.runtime


def create_app(settings: Settings, runtime: Runtime | None = None) -> StreamrecApp:
    """A fresh, unstarted streamrec worker app for ``settings`` (and a pre-built runtime)."""
    return StreamrecApp(settings, runtime)
