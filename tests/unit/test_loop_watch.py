"""The worker's event-loop probe: a callback that blocks the loop is counted as a stall."""

from __future__ import annotations

import asyncio
import time

from streams.processor import Stats


async def _probe_around(block_s: float) -> Stats:
    stats = Stats()
    probe = asyncio.ensure_future(stats.watch_loop(interval_s=0.01))
    await asyncio.sleep(0.05)  # the probe is sleeping when the loop blocks
    time.sleep(block_s)  # noqa: ASYNC251 - the point: a call that blocks the loop
    await asyncio.sleep(0.05)
    probe.cancel()
    return stats


def test_a_blocked_loop_counts_one_stall_with_its_length() -> None:
    stats = asyncio.run(_probe_around(0.25))
    assert stats.counters["loop_stalls_over_100ms"] == 1
    assert 0.2 <= stats.seconds["loop_stall"] < 1.0


def test_short_blocks_are_not_stalls() -> None:
    stats = asyncio.run(_probe_around(0.03))
    assert stats.counters["loop_stalls_over_100ms"] == 0
    assert stats.seconds["loop_stall"] == 0.0
