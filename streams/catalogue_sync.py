"""Keeps this worker's catalogue equal to the ``item-vectors`` topic, all partitions.

Items are global while users are partitioned, so every worker reads every partition of the
compacted vectors topic with a group-less consumer, from the beginning, for as long as it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from state.catalogue import CatalogueVersionError
from state.engine import Engine
from streams.records import ITEM_VECTORS
from streams.records_vectors import VectorRecordError, decode_item_vector
from streams.settings import Settings

log = logging.getLogger(__name__)


class CatalogueSync:
    """Background reader of ``item-vectors``; :attr:`caught_up` is set once the backlog is in."""

    def __init__(self, settings: Settings, engine: Engine, stats: object | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.topic = settings.topic(ITEM_VECTORS)
        self.caught_up = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._consumer: AIOKafkaConsumer | None = None

    async def start(self, wait_s: float = 60.0) -> None:
        """Start reading and wait (up to ``wait_s``) until the existing backlog is loaded."""
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.bootstrap_servers,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=8 * 1024 * 1024,
        )
        await self._consumer.start()
        self._task = asyncio.create_task(self._run(), name="catalogue-sync")
        self._task.add_done_callback(_report_crash)
        caught_up = asyncio.create_task(self.caught_up.wait())
        await asyncio.wait({self._task, caught_up}, timeout=wait_s, return_when="FIRST_COMPLETED")
        caught_up.cancel()
        if self._task.done():  # it only ends by failing: a worker without a catalogue must not run
            self._task.result()
            raise RuntimeError("catalogue sync ended unexpectedly")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            # A crash was logged when it happened (_report_crash); stopping must still finish.
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()

    async def _run(self) -> None:
        consumer = self._consumer
        if consumer is None:
            raise RuntimeError("CatalogueSync._run before start()")
        tps = await self._assign(consumer)
        end = await consumer.end_offsets(tps)
        while True:
            try:
                batches = await consumer.getmany(timeout_ms=200, max_records=5000)
            except KafkaError as exc:
                log.warning("item-vectors fetch failed (%s); retrying", exc)
                await asyncio.sleep(1.0)
                continue
            for messages in batches.values():
                for message in messages:
                    self._apply(message.key, message.value)
            if not self.caught_up.is_set():
                positions = {tp: await consumer.position(tp) for tp in tps}
                if all(positions[tp] >= end[tp] for tp in tps):
                    self.caught_up.set()

    async def _assign(self, consumer: AIOKafkaConsumer) -> list[TopicPartition]:
        # aiokafka knows the partitions only of topics it tracks, and Apache Kafka answers its
        # bootstrap metadata request with no topics at all (Tansu answers with every topic), so
        # partitions_for_topic() starts out None there. An offset lookup makes the client track
        # the topic and returns once its metadata is in.
        await consumer.beginning_offsets([TopicPartition(self.topic, 0)])
        partitions = consumer.partitions_for_topic(self.topic)
        if not partitions:
            raise RuntimeError(f"no partitions known for {self.topic!r} after a metadata update")
        tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        return tps

    def _apply(self, key: bytes | None, value: bytes | None) -> None:
        catalogue = self.engine.catalogue
        if value is None:
            if key:
                catalogue.remove(key.decode())
            return
        try:
            record = decode_item_vector(value)
            catalogue.upsert(
                record.item_id,
                record.vec,
                version=record.model_version,
                title=record.title,
                category=record.category,
                created_ms=record.created_at_ms,
            )
        except (VectorRecordError, CatalogueVersionError, ValueError, KeyError) as exc:
            # Vectors of another encoder version are expected during a roll-out: skip them.
            log.debug("skipping item vector: %s", exc)


def _report_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error(
            "catalogue sync crashed; new item vectors no longer arrive", exc_info=task.exception()
        )
