"""The consumer's per-message delivery: the fast path and faust's race against suspension."""

from __future__ import annotations

import asyncio
from pathlib import Path

from streams.app import create_app
from streams.settings import Settings
from streams.transport import Consumer


def _consumer(tmp_path: Path) -> Consumer:
    app = create_app(Settings(web_enabled=False, data_dir=tmp_path)).app
    consumer = app.consumer
    assert isinstance(consumer, Consumer)
    return consumer


async def test_a_delivery_with_room_returns_its_result_without_racing(tmp_path: Path) -> None:
    consumer = _consumer(tmp_path)

    async def put() -> str:
        return "delivered"

    delivery = put()
    result = await consumer.wait_first(delivery, consumer.suspend_flow.wait())
    assert result.results == ["delivered"] and result.done == [delivery]
    assert not result.stopped


async def test_a_blocked_delivery_gives_way_when_the_flow_is_suspended(tmp_path: Path) -> None:
    consumer = _consumer(tmp_path)
    cancelled = asyncio.Event()

    async def put_into_full_buffer() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    waiting = asyncio.ensure_future(
        consumer.wait_first(put_into_full_buffer(), consumer.suspend_flow.wait())
    )
    await asyncio.sleep(0.05)
    assert not waiting.done()
    consumer.suspend_flow.set()  # a rebalance: faust suspends the flow
    result = await asyncio.wait_for(waiting, 2)
    assert result.results == [True]  # the suspension won the race
    await asyncio.wait_for(cancelled.wait(), 2)


async def test_other_waits_keep_modes_behaviour(tmp_path: Path) -> None:
    consumer = _consumer(tmp_path)
    other = asyncio.Event()
    other.set()
    result = await consumer.wait_first(other.wait(), timeout=1.0)
    assert result.results == [True]
