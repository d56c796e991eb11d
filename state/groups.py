"""User groups: online spherical k-means over users' interest vectors, shared by all workers.

Every worker assigns its users to the nearest centroid of one *shared* model (so a group id means
the same on every replica) and learns locally between syncs: a vector adds to its nearest
centroid's pending sum, or, far from every centroid while slots are free, becomes a seed
candidate. A periodic sync merges each worker's pending sums and seeds into the shared model
(``merge``; the Redis side is optimistic, see ``state.redis_store``). Pure numpy, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from state.interest import UserState, Vector, normalised

FloatMatrix = npt.NDArray[np.float32]
#: Users teach the group model once their vector rests on this many events.
GROUP_LEARN_EVENTS = 3


@dataclass(frozen=True, slots=True)
class GroupConfig:
    max_groups: int = 16
    #: A user this similar (cosine) to a centroid joins it rather than seeding a new group.
    seed_similarity: float = 0.5
    #: Counts shrink by this factor at every sync, so centroids keep following the users.
    decay_per_sync: float = 0.98


@dataclass
class SharedGroups:
    """The shared model: unit centroids (zero rows: free slots) and their decayed counts."""

    centroids: FloatMatrix
    counts: npt.NDArray[np.float64]
    version: str = ""

    @classmethod
    def empty(cls, k: int, dim: int, version: str = "") -> SharedGroups:
        return cls(np.zeros((k, dim), np.float32), np.zeros(k, np.float64), version)

    @property
    def seeded(self) -> npt.NDArray[np.bool_]:
        return self.counts > 0

    def assign(self, vecs: FloatMatrix) -> npt.NDArray[np.intp]:
        """Nearest seeded centroid per (unit) row; ``-1`` for zero rows or an empty model."""
        out = np.full(len(vecs), -1, dtype=np.intp)
        if not self.seeded.any() or not len(vecs):
            return out
        sims = vecs @ self.centroids.T
        sims[:, ~self.seeded] = -np.inf
        has = np.abs(vecs).sum(axis=1) > 0
        out[has] = np.argmax(sims[has], axis=1)
        return out


@dataclass
class LocalGroups:
    """One worker's view: the last shared model plus what it learned since (``learn_many``)."""

    shared: SharedGroups
    config: GroupConfig = field(default_factory=GroupConfig)
    pending_sum: FloatMatrix = field(init=False)
    pending_n: npt.NDArray[np.float64] = field(init=False)
    #: Seeds for free slots: ``[sum of unit vectors, count]`` each.
    candidates: list[tuple[Vector, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.pending_sum = np.zeros_like(self.shared.centroids)
        self.pending_n = np.zeros(len(self.shared.counts), np.float64)

    def learn_many(self, vecs: FloatMatrix) -> None:
        """Fold unit interest vectors in (test-then-train: assign first, then learn)."""
        vecs = vecs[np.abs(vecs).sum(axis=1) > 0]
        seeded = self.shared.seeded
        if len(vecs) and not self.candidates and seeded.any():
            # The common case, vectorised: vectors near a centroid (or no slot left) join it.
            sims = vecs @ self.shared.centroids.T
            sims[:, ~seeded] = -np.inf
            best = np.argmax(sims, axis=1)
            near = sims[np.arange(len(vecs)), best] >= self.config.seed_similarity
            if not self._room():
                near[:] = True
            np.add.at(self.pending_sum, best[near], vecs[near])
            self.pending_n += np.bincount(best[near], minlength=len(self.pending_n))
            vecs = vecs[~near]
        for vec in vecs:
            seeded = self.shared.seeded
            sims = np.where(seeded, self.shared.centroids @ vec, -np.inf)
            cand = [float(_unit(c) @ vec) for c, _ in self.candidates]
            best = float(np.max(sims)) if seeded.any() else -np.inf
            if max([best, *cand]) >= self.config.seed_similarity or not self._room():
                if cand and max(cand) > best:
                    i = int(np.argmax(cand))
                    total, n = self.candidates[i]
                    self.candidates[i] = (total + vec, n + 1.0)
                elif seeded.any():
                    j = int(np.argmax(sims))
                    self.pending_sum[j] += vec
                    self.pending_n[j] += 1.0
            else:
                self.candidates.append((vec.astype(np.float32).copy(), 1.0))

    def _room(self) -> bool:
        return int(self.shared.seeded.sum()) + len(self.candidates) < len(self.shared.counts)


def assign_and_learn(groups: LocalGroups, states: list[UserState]) -> None:
    """Each user's group from the shared model, then learn from users past warm-up.

    What a worker does for the users of every batch (and the evaluation for every event).
    """
    if not states:
        return
    vecs = np.stack([normalised(s.vec) for s in states])
    for state, group in zip(states, groups.shared.assign(vecs).tolist(), strict=True):
        if group >= 0:
            state.group = str(group)
    seasoned = [s.events >= GROUP_LEARN_EVENTS for s in states]
    groups.learn_many(vecs[np.asarray(seasoned, dtype=np.bool_)])


def merge(current: SharedGroups, local: LocalGroups) -> SharedGroups:
    """The shared model after folding in ``local``'s pending sums and seeds (``current`` kept).

    ``current`` is the model as it is now (another worker may have synced since ``local``
    last saw it); pending sums are indexed by slot, which keeps its meaning between syncs.
    """
    cfg = local.config
    counts = current.counts * cfg.decay_per_sync
    sums = current.centroids * counts[:, None].astype(np.float32) + local.pending_sum
    counts = counts + local.pending_n
    centroids = np.asarray(
        np.where(
            counts[:, None] > 0, sums / np.maximum(np.linalg.norm(sums, axis=1), 1e-9)[:, None], 0
        ),
        dtype=np.float32,
    )
    for total, n in local.candidates:
        cand = _unit(total)
        seeded = counts > 0
        sims = np.where(seeded, centroids @ cand, -np.inf)
        if seeded.any() and float(np.max(sims)) >= cfg.seed_similarity:
            j = int(np.argmax(sims))
            centroids[j] = _unit(centroids[j] * np.float32(counts[j]) + total)
            counts[j] += n
        elif (~seeded).any():
            j = int(np.argmax(~seeded))
            centroids[j], counts[j] = cand, n
    return SharedGroups(centroids, counts, current.version)


def _unit(vec: Vector) -> Vector:
    return np.asarray(vec / max(float(np.linalg.norm(vec)), 1e-9), dtype=np.float32)


def adjusted_rand_index(truth: list[str], found: list[int]) -> float:
    """Agreement of two partitions of the same items, 1.0 = identical, ~0 = chance.

    >>> adjusted_rand_index(["a", "a", "b", "b"], [7, 7, 3, 3])
    1.0
    >>> round(adjusted_rand_index(["a", "a", "b", "b"], [1, 2, 1, 2]), 2)
    -0.5
    """
    _, t = np.unique(truth, return_inverse=True)
    _, f = np.unique(found, return_inverse=True)
    table = np.zeros((t.max() + 1, f.max() + 1), dtype=np.float64)
    np.add.at(table, (t, f), 1.0)

    def pairs(x: npt.NDArray[np.float64]) -> float:
        return float((x * (x - 1) / 2).sum())

    index, rows, cols = pairs(table), pairs(table.sum(1)), pairs(table.sum(0))
    expected = rows * cols / max(pairs(np.array([float(len(truth))])), 1.0)
    top = (rows + cols) / 2
    return 1.0 if top == expected else (index - expected) / (top - expected)
