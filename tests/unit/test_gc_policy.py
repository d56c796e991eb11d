"""The worker's garbage-collection policy: start-up frozen, full collections on a clock."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from streams import gc_policy
from streams.gc_policy import FullCollections


@pytest.fixture
def restored_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("restored_gc")
def test_start_up_is_frozen_and_full_collections_are_left_to_the_clock() -> None:
    young, middle, _ = gc.get_threshold()
    gc_policy.configure()
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == (young, middle, gc_policy.NEVER)
    # Young collections still run and still reclaim cycles that die young.
    gen0_before = gc.get_stats()[0]["collections"]
    for _ in range(3 * young):
        cycle: list[object] = []
        cycle.append(cycle)
    assert gc.get_stats()[0]["collections"] > gen0_before


def test_a_full_collection_runs_once_per_period() -> None:
    full = gc.get_stats()[2]["collections"]
    due = FullCollections(every_s=0.0)
    assert due.tick() and gc.get_stats()[2]["collections"] == full + 1
    later = FullCollections(every_s=3600.0)
    assert not later.tick() and gc.get_stats()[2]["collections"] == full + 1
