"""Gap repair and the stall watch: records the stream engine dropped are applied once, and
their offsets become committable."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from streams.gap_repair import Record, Refetched
from streams.processor import EventProcessor
from streams.stall_watch import StallWatch
from tests.unit.test_agents import T0, _app, _click, _until


class Log:
    """The ``events`` log of one partition, read as GapRepair reads the broker."""

    def __init__(self, records: list[Record]) -> None:
        self.records = records
        self.fetches: list[tuple[int, int, int]] = []

    async def committed(self, partition: int) -> int:
        return 0

    async def end_offsets(self, partitions: set[int]) -> dict[int, int]:
        return {p: len(self.records) for p in partitions}

    async def fetch(self, partition: int, start: int, stop: int) -> list[Refetched]:
        self.fetches.append((partition, start, stop))
        return [Refetched(r) for r in self.records if start <= r.offset < stop]

    async def close(self) -> None:
        return None


def _processor_on(tmp_path: Path, n_records: int) -> tuple[Any, EventProcessor, Log]:
    """A worker app whose processor reads a log of ``n_records`` clicks by one user."""
    sapp, store, _ = _app(tmp_path)
    processor = sapp.event_processor
    assert processor is not None
    log = Log([Record(b"u1", _click(n), 0, n, (T0 + n) / 1000) for n in range(n_records)])
    processor.gaps = log  # type: ignore[assignment]
    return (sapp, store), processor, log


async def test_a_partition_without_deliveries_is_caught_up_and_redelivery_is_a_no_op(
    tmp_path: Path,
) -> None:
    (sapp, store), processor, log = _processor_on(tmp_path, 3)
    settled = [False]
    watch = StallWatch(lambda: processor, lambda: {0}, lambda: settled[0], sapp.stats)
    await watch.tick()
    await watch.tick()
    assert not log.fetches, "nothing may be applied while tables are still recovering"
    settled[0] = True
    await watch.tick()  # first sight of the partition: behind, but not yet standing still
    assert not log.fetches
    await watch.tick()
    assert log.fetches == [(0, 0, 3)]
    await _until(lambda: store.users.get("u1", {}).get("events") == b"3")
    assert sapp.stats.counters["stall_repairs"] == 1
    await _until(lambda: processor.offsets.committable == {0: 3})  # so commits pass them
    await watch.tick()  # caught up: nothing to do
    assert len(log.fetches) == 1
    # The stream engine wakes up and delivers the same records: the watermark skips them.
    await processor.process([Refetched(r) for r in log.records])
    await processor.drain()
    assert sapp.stats.counters["events_redelivered"] == 3
    assert store.users["u1"]["events"] == b"3"


async def test_a_partition_that_progresses_is_left_alone(tmp_path: Path) -> None:
    (sapp, _), processor, log = _processor_on(tmp_path, 6)
    watch = StallWatch(lambda: processor, lambda: {0}, lambda: True, sapp.stats)
    for n in range(6):  # one record delivered between two checks: slow, not stalled
        await watch.tick()
        await processor.process([Refetched(log.records[n])])
        await processor.drain()
    assert not log.fetches and sapp.stats.counters["stall_repairs"] == 0


async def test_a_skipped_range_is_refetched_applied_and_committable_with_its_batch(
    tmp_path: Path,
) -> None:
    (_, store), processor, log = _processor_on(tmp_path, 4)
    # The stream engine delivers offsets 0 and 3 and drops 1 and 2.
    await processor.process([Refetched(log.records[0]), Refetched(log.records[3])])
    await processor.drain()
    assert log.fetches == [(0, 1, 3)]
    assert store.users["u1"]["events"] == b"4"
    assert processor.offsets.committable == {0: 4}
