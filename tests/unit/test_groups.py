"""User groups: online k-means recovers planted segments and merges what workers learned."""

from __future__ import annotations

import numpy as np
import pytest

from state.groups import GroupConfig, LocalGroups, SharedGroups, adjusted_rand_index, merge
from state.interest import normalised

DIM = 24


def _segments(n_users: int, segments: int = 6, seed: int = 4) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    centres = [normalised(rng.normal(size=DIM).astype(np.float32)) for _ in range(segments)]
    truth = [f"s{rng.integers(segments)}" for _ in range(n_users)]
    vecs = np.stack(
        [
            normalised(centres[int(t[1:])] + 0.12 * rng.normal(size=DIM).astype(np.float32))
            for t in truth
        ]
    )
    return vecs, truth


def test_two_workers_syncing_recover_the_planted_segments() -> None:
    vecs, truth = _segments(1200)
    shared = SharedGroups.empty(10, DIM)
    for start in range(0, len(vecs), 200):
        workers = [LocalGroups(shared), LocalGroups(shared)]
        chunk = vecs[start : start + 200]
        workers[0].learn_many(chunk[::2])  # users are split across workers by partition
        workers[1].learn_many(chunk[1::2])
        for worker in workers:
            shared = merge(shared, worker)
    found = shared.assign(vecs)
    assert (found >= 0).all()
    assert adjusted_rand_index(truth, found.tolist()) >= 0.8


def test_merge_keeps_every_workers_counts_and_seeds() -> None:
    vecs, _ = _segments(40, segments=2)
    shared = SharedGroups.empty(4, DIM)
    first = LocalGroups(shared)
    first.learn_many(vecs[:20])
    shared = merge(shared, first)
    a, b = LocalGroups(shared), LocalGroups(shared)
    a.learn_many(vecs[20:30])
    b.learn_many(vecs[30:])
    both = merge(merge(shared, a), b)
    cfg = GroupConfig()
    # Each sync decays what was there, then adds that worker's ten users.
    expected = (shared.counts.sum() * cfg.decay_per_sync + 10) * cfg.decay_per_sync + 10
    assert both.counts.sum() == pytest.approx(expected)
    assert np.allclose(np.linalg.norm(both.centroids[both.seeded], axis=1), 1.0, atol=1e-5)


def test_an_empty_model_assigns_nobody_and_zero_vectors_stay_unassigned() -> None:
    empty = SharedGroups.empty(4, DIM)
    assert empty.assign(np.ones((3, DIM), np.float32)).tolist() == [-1, -1, -1]
    vecs, _ = _segments(30)
    local = LocalGroups(empty)
    local.learn_many(vecs)
    shared = merge(empty, local)
    rows = np.vstack([vecs[:2], np.zeros((1, DIM), np.float32)])
    assigned = shared.assign(rows).tolist()
    assert assigned[2] == -1 and min(assigned[:2]) >= 0


def test_never_more_groups_than_slots() -> None:
    vecs, _ = _segments(300, segments=12)
    shared = SharedGroups.empty(5, DIM)
    local = LocalGroups(shared)
    local.learn_many(vecs)
    shared = merge(shared, local)
    assert int(shared.seeded.sum()) == 5
    assert set(shared.assign(vecs).tolist()) <= set(range(5))
