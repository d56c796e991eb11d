"""The worker's garbage-collection policy: full collections on a clock, not on heap growth.

A worker's heap grows with its users (about eight tracked objects per user state: the state,
its lists, history entries and interests). CPython runs a full collection whenever the
long-lived heap has grown by a quarter, walking all of it with the GIL held. Measured during
the benchmark's drain (100,000 new users): 11-13 such pauses of 250-810 ms per run, each one
stalling every batch in flight, which is what set freshness p99. So the worker

* freezes what start-up built (torch, transformers, the model: ~500k objects that live as long
  as the worker), so no collection walks it again;
* keeps CPython's young collections (cycles that die young are most of the garbage) but turns
  off its automatic full ones, and runs one every ``full_gc_s`` seconds instead (cyclic garbage
  that outlived the young generations waits at most that long).
"""

from __future__ import annotations

import gc
import time

#: A threshold the full-collection counter never reaches: no automatic full collection.
NEVER = 1_000_000_000


def configure() -> None:
    """At the end of start-up: freeze its objects, full collections on the clock from now."""
    gc.collect()
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, NEVER)


class FullCollections:
    """Call :meth:`tick` regularly (the worker's 1 s timer); collects every ``every_s``."""

    def __init__(self, every_s: float) -> None:
        self.every_s = every_s
        self._last = time.monotonic()

    def tick(self) -> bool:
        """Run a full collection if one is due; return whether it ran."""
        now = time.monotonic()
        if now - self._last < self.every_s:
            return False
        self._last = now
        gc.collect()
        return True
