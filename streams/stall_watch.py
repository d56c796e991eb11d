"""Detect and repair an assigned ``events`` partition the stream engine stopped delivering.

Gap repair (:mod:`streams.gap_repair`) mends a hole once a later record of the partition
arrives; a partition whose records never arrive at all (after a restart or rebalance, under
load, we once saw one partition's users frozen for minutes while the others were processed)
has no later record to notice it by. Every ``every_s`` this compares the offset each assigned
partition is expected at with its log end; a partition behind its log end and without progress
for two checks in a row, while the worker is idle, is logged, counted (``stall_repairs`` in
``/stats``) and caught up with a plain fetch. Catching up is always safe: every user state
carries the watermark of its newest event, so whatever the stream delivers later is a no-op.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from streams.periodic import Periodic
from streams.processor import EventProcessor, Stats

log = logging.getLogger(__name__)

#: Seconds between checks; a partition must stand still for two of them to count as stalled.
STALL_CHECK_S = 5.0


class StallWatch(Periodic):
    name = "stall watch"

    def __init__(
        self,
        processor: Callable[[], EventProcessor | None],
        assigned: Callable[[], set[int]],
        settled: Callable[[], bool],
        stats: Stats,
        every_s: float = STALL_CHECK_S,
        highwater: Callable[[int], int | None] = lambda partition: None,
    ) -> None:
        """``assigned``: this worker's ``events`` partitions; ``settled``: not rebalancing or
        recovering tables (the user states must be complete before anything is applied);
        ``highwater``: a partition's high watermark in the stream engine's newest fetch, which
        raises a listed log end that is short (Tansu's, see
        :meth:`streams.gap_repair.GapRepair.end_offsets`)."""
        super().__init__(every_s)
        self.processor = processor
        self.assigned = assigned
        self.settled = settled
        self.stats = stats
        self.highwater = highwater
        self._seen: dict[int, int | None] = {}  # partition -> expected offset at the last check
        #: partition -> the offset it last stalled at with a fetch returning nothing (told once)
        self._told: dict[int, int | None] = {}

    async def tick(self) -> None:
        processor = self.processor()
        if processor is None or processor.gaps is None or not self.settled():
            self._seen.clear()
            return
        assigned = self.assigned()
        ends = await processor.gaps.end_offsets(assigned)
        for partition, listed in sorted(ends.items()):
            end = max(listed, self.highwater(partition) or 0)
            at = processor.next_offset.get(partition)
            before = self._seen.get(partition, -1)
            self._seen[partition] = at
            if at == before and processor.idle and (at is None or at < end):
                await self._repair(processor, partition, at, end)
        for gone in set(self._seen) - assigned:
            del self._seen[gone]
            self._told.pop(gone, None)

    async def _repair(
        self, processor: EventProcessor, partition: int, at: int | None, end: int
    ) -> None:
        fetched = await processor.catch_up(partition, end)
        if not fetched:
            if partition not in self._told or self._told[partition] != at:  # once per stall
                self._told[partition] = at
                log.warning(
                    "partition %d: stalled at offset %s below its log end %d, and a fetch "
                    "returned no records",
                    partition,
                    "committed" if at is None else at,
                    end,
                )
            return
        self.stats.counters["stall_repairs"] += 1
        self.stats.counters["stall_events_refetched"] += fetched
        log.warning(
            "partition %d: no records delivered for %.0fs at offset %s (log end %d); refetched %d",
            partition,
            2 * self.sync_s,
            "committed" if at is None else at,
            end,
            fetched,
        )
