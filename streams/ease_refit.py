"""The worker's EASE job: refit the item-to-item model on a thread when enough was engaged.

A refit is due after ``refit_every`` engaged events (:class:`state.ease.EaseLearner`) and at
most once per ``min_interval_s``: at thousands of events a second the count alone would refit
every second, and each fit is a cubic inversion that takes a core for ~0.2 s. The Gram snapshot
is taken on the event loop (a sparse slice, milliseconds; counted apart as ``ease_gram``); the
inversion runs on a thread (LAPACK releases the GIL) and the new fit replaces the old one in one
assignment, so ranking always reads a whole model. A failed fit is logged and the old model
keeps serving. Each replica fits on the engagements of its own partitions: a fit needs only the
item pairs, which every partition's users sample alike, and none waits for another replica.
"""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np

from state.ease import fit
from state.engine import Engine
from streams.periodic import Periodic
from streams.processor import Stats

log = logging.getLogger(__name__)


class EaseRefit(Periodic):
    name = "EASE refit"

    def __init__(
        self, engine: Engine, stats: Stats, min_interval_s: float = 10.0, check_s: float = 1.0
    ) -> None:
        super().__init__(check_s)
        self.engine = engine
        self.stats = stats
        self.min_interval_s = min_interval_s
        self._last = -float("inf")
        engine.ease_inline = False

    async def tick(self) -> None:
        learner = self.engine.ease
        now = time.monotonic()
        if learner is None or not learner.due or now - self._last < self.min_interval_s:
            return
        self._last = now
        started = time.perf_counter()
        n = len(self.engine.catalogue.snapshot())
        rows, gram = learner.gram(n)
        snapped = time.perf_counter()
        self.stats.seconds["ease_gram"] += snapped - started
        try:
            learner.model = await asyncio.to_thread(fit, rows, gram, learner.l2, n)
        except (np.linalg.LinAlgError, ValueError, MemoryError) as exc:
            log.error("EASE refit over %d items failed (%s); the old fit serves", len(rows), exc)
            self.stats.counters["ease_refit_errors"] += 1
            return
        self.stats.counters["ease_refits"] += 1
        self.stats.seconds["ease_fit"] += time.perf_counter() - snapped
        log.debug("EASE refit over %d items", len(rows))
