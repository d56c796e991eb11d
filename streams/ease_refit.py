"""The worker's EASE job: refit the item-to-item model on a thread when enough was engaged.

The Gram snapshot is taken on the event loop (a sparse slice, milliseconds); the inversion,
cubic in the items covered, runs on a thread (LAPACK releases the GIL) and the new fit replaces
the old one in one assignment, so ranking always reads a whole model. Each replica fits on the
engagements of its own partitions: a fit needs only the item pairs, which every partition's
users sample alike, and none waits for another replica.
"""

from __future__ import annotations

import asyncio
import logging
import time

from state.ease import fit
from state.engine import Engine
from streams.periodic import Periodic
from streams.processor import Stats

log = logging.getLogger(__name__)


class EaseRefit(Periodic):
    name = "EASE refit"

    def __init__(self, engine: Engine, stats: Stats, check_s: float = 1.0) -> None:
        super().__init__(check_s)
        self.engine = engine
        self.stats = stats
        engine.ease_inline = False

    async def tick(self) -> None:
        learner = self.engine.ease
        if learner is None or not learner.due:
            return
        n = len(self.engine.catalogue.snapshot())
        started = time.perf_counter()
        rows, gram = learner.gram(n)
        learner.model = await asyncio.to_thread(fit, rows, gram, learner.l2, n)
        self.stats.counters["ease_refits"] += 1
        self.stats.seconds["ease_fit"] += time.perf_counter() - started
        log.debug("EASE refit over %d items", len(rows))
