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

    def __init__(self, records: list[Record], listed_short_by: int = 0) -> None:
        self.records = records
        self.fetches: list[tuple[int, int, int]] = []
        self.listed_short_by = listed_short_by  # Tansu lists its newest batch's base + 1

    async def committed(self, partition: int) -> int:
        return 0

    async def end_offsets(self, partitions: set[int]) -> dict[int, int]:
        return {p: len(self.records) - self.listed_short_by for p in partitions}

    async def fetch(self, partition: int, start: int, stop: int) -> list[Refetched]:
        self.fetches.append((partition, start, stop))
        return [Refetched(r) for r in self.records if start <= r.offset < stop]

    async def close(self) -> None:
        return None


def _processor_on(
    tmp_path: Path, n_records: int, listed_short_by: int = 0
) -> tuple[Any, EventProcessor, Log]:
    """A worker app whose processor reads a log of ``n_records`` clicks by one user."""
    sapp, store, _ = _app(tmp_path)
    processor = sapp.event_processor
    assert processor is not None
    records = [Record(b"u1", _click(n), 0, n, (T0 + n) / 1000) for n in range(n_records)]
    log = Log(records, listed_short_by)
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
    batch = processor.settings.batch_max_events
    assert log.fetches == [(0, 0, batch)]  # as far as the log goes, one batch at most
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


async def test_a_catch_up_reads_past_a_listed_end_that_is_short(tmp_path: Path) -> None:
    # Tansu lists a partition's end as its newest batch's base offset + 1: here 3 of 5.
    (sapp, store), processor, _ = _processor_on(tmp_path, 5, listed_short_by=2)
    watch = StallWatch(lambda: processor, lambda: {0}, lambda: True, sapp.stats)
    await watch.tick()
    await watch.tick()
    await _until(lambda: store.users.get("u1", {}).get("events") == b"5")
    await _until(lambda: processor.offsets.committable == {0: 5})


async def test_the_stream_engines_high_watermark_raises_a_short_listed_end(
    tmp_path: Path,
) -> None:
    # Stalled exactly at the listed end (3), with records 3 and 4 in the log: only the
    # stream engine's fetch tells the real end.
    (sapp, store), processor, log = _processor_on(tmp_path, 5, listed_short_by=2)
    await processor.process([Refetched(r) for r in log.records[:3]])
    await processor.drain()
    blind = StallWatch(lambda: processor, lambda: {0}, lambda: True, sapp.stats)
    for _ in range(3):
        await blind.tick()
    assert not log.fetches, "without the high watermark the partition looks caught up"
    watch = StallWatch(
        lambda: processor, lambda: {0}, lambda: True, sapp.stats, highwater=lambda p: 5
    )
    await watch.tick()
    await watch.tick()
    await _until(lambda: store.users.get("u1", {}).get("events") == b"5")
    assert processor.offsets.committable == {0: 5}


async def test_an_empty_partition_is_not_fetched(tmp_path: Path) -> None:
    # Nothing delivered and nothing in the log: a fetch would hold the batch lock for its
    # whole time-out every other check.
    (sapp, _), processor, log = _processor_on(tmp_path, 0)
    watch = StallWatch(lambda: processor, lambda: {0}, lambda: True, sapp.stats)
    for _ in range(3):
        await watch.tick()
    assert not log.fetches and sapp.stats.counters["stall_repairs"] == 0


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
