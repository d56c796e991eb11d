"""The Faust app class and its Kafka transport: configurable fetch wait, cheaper delivery.

faust-streaming hard-codes ``fetch_max_wait_ms=1500`` for its aiokafka consumer. A broker that,
when nothing was there at request time, answers a fetch only once the wait runs out (Tansu does)
then adds up to 1.5 s to every event's latency: measured p50 freshness 1.5 s at 1,000 events/s,
against 10 ms for a bare consumer with a 10 ms wait. Kafka answers as soon as data arrives, so
a short wait costs it only a few more idle fetches per second.

Its consumer also hands every fetched message to the streams with
``wait_first(callback(message), suspend_flow.wait())``: four tasks and an ``asyncio.wait`` per
message (23 us against 4 us, measured on this machine), although the callback, a put into a
stream buffer with room, almost always finishes at once. :class:`Consumer` runs the callback
first and races it against a flow suspension only when it did not finish.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, cast

import faust
from faust.transport.drivers import aiokafka as driver
from mode.services import WaitArgT, WaitResults
from mode.utils.times import Seconds

#: faust-streaming's own value, used when the app does not say otherwise.
DEFAULT_FETCH_MAX_WAIT_MS = 1500


class ConsumerThread(driver.AIOKafkaConsumerThread):
    """Faust's consumer thread, building its aiokafka consumer with the app's fetch wait."""

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # Private but stable in the pinned aiokafka: start() passes it to the fetcher.
        consumer._fetch_max_wait_ms = getattr(
            transport.app, "fetch_max_wait_ms", DEFAULT_FETCH_MAX_WAIT_MS
        )
        return consumer


class Consumer(driver.Consumer):
    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def wait_first(
        self,
        *coros: WaitArgT,
        timeout: Seconds | None = None,  # noqa: ASYNC109 - mode's signature
    ) -> WaitResults:
        """As mode's, with a fast path for the per-message delivery (see the module docstring)."""
        if timeout is not None or len(coros) != 2 or not _waits_for(coros[1], self.suspend_flow):
            return await super().wait_first(*coros, timeout=timeout)  # type: ignore[arg-type]
        delivery = cast(Coroutine[Any, Any, Any], coros[0])
        cast(Coroutine[Any, Any, Any], coros[1]).close()  # unstarted; the race below re-waits
        task = asyncio.ensure_future(delivery)
        await asyncio.sleep(0)  # one loop turn: a put into a buffer with room is done now
        if task.done():
            return WaitResults([delivery], [task.result()], False)
        # Blocked (full buffer or suspended flow): race it against suspension, as faust does.
        return await super().wait_first(task, self.suspend_flow.wait())


def _waits_for(coro: WaitArgT, event: asyncio.Event) -> bool:
    """True when ``coro`` is an unstarted ``event.wait()``."""
    frame = getattr(coro, "cr_frame", None)
    return (
        getattr(coro, "cr_code", None) is asyncio.Event.wait.__code__
        and frame is not None
        and frame.f_locals.get("self") is event
    )


class Transport(driver.Transport):
    Consumer = Consumer


class App(faust.App):
    """A ``faust.App`` on :class:`Transport`; ``fetch_max_wait_ms`` bounds a fetch's wait."""

    def __init__(self, *args: Any, fetch_max_wait_ms: int = DEFAULT_FETCH_MAX_WAIT_MS, **kw: Any):
        super().__init__(*args, **kw)
        self.fetch_max_wait_ms = fetch_max_wait_ms

    def _new_transport(self) -> Transport:
        return Transport(self.conf.broker_consumer, self)
