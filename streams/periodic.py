"""A background job on the worker's event loop, run every ``sync_s`` until the worker stops.

The learners' sync jobs (user groups, click model) share this loop: a Redis or file hiccup is
logged and the job simply runs again next period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import redis.exceptions

log = logging.getLogger(__name__)


class Periodic:
    """Subclasses implement :meth:`tick`; :meth:`start` and :meth:`stop` run it periodically."""

    name = "periodic job"

    def __init__(self, sync_s: float) -> None:
        self.sync_s = sync_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def tick(self) -> None:
        raise NotImplementedError

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.sync_s)
            try:
                await self.tick()
            except (redis.exceptions.RedisError, OSError) as exc:
                log.warning("%s failed (%s); next try in %.0fs", self.name, exc, self.sync_s)
