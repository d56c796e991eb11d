"""Refetching events that the stream engine skipped, so that acknowledged means applied.

faust-streaming can drop records it already fetched (buffer-full and recovery paths, see
faust-streaming#88/#312) and still advance past them. The events agent knows the offsets it
expects per partition; when a batch jumps ahead, this reads the missing range with a plain
group-less fetch and hands it back, so the batch is applied without holes.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition

#: Give up on a range after this long without progress (the records may be gone: retention).
FETCH_TIMEOUT_MS = 5000


@dataclass(frozen=True, slots=True)
class Record:
    """A refetched message with the attributes the processor reads from Faust messages."""

    key: bytes | None
    value: bytes | None
    partition: int
    offset: int
    timestamp: float  # seconds, like faust.types.Message.timestamp


@dataclass(frozen=True, slots=True)
class Refetched:
    """A refetched record in the shape of a Faust event (``.message``)."""

    message: Record


class GapRepair:
    """Reads offset ranges of one topic, and the group's committed offsets, on demand."""

    def __init__(self, bootstrap: list[str], group_id: str, topic: str) -> None:
        self.topic = topic
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=8 * 1024 * 1024,
        )
        self._started = False
        #: Per partition, the highest high watermark a fetch reported (see :meth:`end_offsets`).
        self._highwater: dict[int, int] = {}

    async def _ready(self) -> AIOKafkaConsumer:
        if not self._started:
            await self._consumer.start()
            self._started = True
        return self._consumer

    async def committed(self, partition: int) -> int:
        """Where the group resumes ``partition``: its committed offset, else the log start."""
        consumer = await self._ready()
        tp = TopicPartition(self.topic, partition)
        offset = await consumer.committed(tp)
        if offset is None or offset < 0:
            offset = (await consumer.beginning_offsets([tp]))[tp]
        return int(offset)

    async def end_offsets(self, partitions: set[int]) -> dict[int, int]:
        """The log end offset (next offset to be written) of each of ``partitions``.

        Never below a high watermark a fetch of ours reported: Tansu answers ListOffsets
        with its newest batch's *base* offset + 1, short of the end by the rest of that batch
        (its fetch responses carry the right high watermark).
        """
        consumer = await self._ready()
        tps = [TopicPartition(self.topic, p) for p in partitions]
        ends = await consumer.end_offsets(tps) if tps else {}
        return {
            tp.partition: max(int(offset), self._highwater.get(tp.partition, 0))
            for tp, offset in ends.items()
        }

    async def fetch(self, partition: int, start: int, stop: int) -> list[Refetched]:
        """Records with ``start <= offset < stop`` (fewer if the log no longer has them)."""
        consumer = await self._ready()
        tp = TopicPartition(self.topic, partition)
        consumer.assign([tp])
        consumer.seek(tp, start)
        out: list[Refetched] = []
        while True:
            batch = await consumer.getmany(tp, timeout_ms=FETCH_TIMEOUT_MS)
            highwater = consumer.highwater(tp)
            if highwater is not None:
                self._highwater[partition] = max(highwater, self._highwater.get(partition, 0))
            records = batch.get(tp, [])
            if not records:
                return out
            for r in records:
                if r.offset >= stop:
                    return out
                record = Record(r.key, r.value, r.partition, r.offset, r.timestamp / 1000)
                out.append(Refetched(record))

    async def close(self) -> None:
        if self._started:
            await self._consumer.stop()
