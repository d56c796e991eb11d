"""Several interests per user: online clustering of a user's positive items into centroids.

One vector per user blurs a reader of football and cooking into neither. Each user keeps up to
``max_interests`` centroids, each an event-time-decayed sum of the item vectors that joined it:
a positive item joins the most similar centroid when the cosine reaches ``join_similarity``,
else it opens a new one (merging the two closest when all are taken); a negative item pushes
back the centroid it resembles. Ranking fills the list from every *active* centroid, in
proportion to its decayed mass. Pure functions, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from state.interest import Interest, Vector

#: A centroid needs this share of the user's decayed mass to get places in the list.
MIN_SHARE = 0.2
#: ... and at least this decayed mass (a click weighs 1.0): a few reads, not one stray view.
MIN_MASS = 2.5


@dataclass(frozen=True, slots=True)
class InterestConfig:
    max_interests: int = 4
    join_similarity: float = 0.4
    half_life_s: float = 7 * 24 * 3600.0


def _unit_rows(interests: list[Interest]) -> Vector:
    m = np.stack([i.vec for i in interests])
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    return np.asarray(m / np.maximum(norms, 1e-9), dtype=np.float32)


def update_interests(
    interests: list[Interest],
    item_vec: Vector,
    weight: float,
    ts_ms: int,
    config: InterestConfig,
) -> None:
    """Apply one interaction (``weight`` signed, ``item_vec`` unit) to ``interests`` in place.

    >>> cfg = InterestConfig(max_interests=2)
    >>> a, b = np.eye(3, dtype=np.float32)[:2]
    >>> found: list[Interest] = []
    >>> for vec in (a, a, b):
    ...     update_interests(found, vec, 1.0, 0, cfg)
    >>> [round(float(i.vec @ a), 1) for i in found], len(found)
    ([2.0, 0.0], 2)
    """
    if weight == 0.0:
        return
    sims = _unit_rows(interests) @ item_vec if interests else np.zeros(0, dtype=np.float32)
    best = int(np.argmax(sims)) if sims.size else -1
    if best >= 0 and sims[best] >= config.join_similarity:
        interests[best].add(item_vec, weight, ts_ms, config.half_life_s)
        if weight < 0 and float(interests[best].vec @ item_vec) < 0:
            del interests[best]  # pushed past zero: that interest is gone
        return
    if weight < 0:
        return  # a dislike of something the user never liked changes no interest
    interests.append(Interest(np.float32(weight) * item_vec.astype(np.float32), ts_ms))
    while len(interests) > config.max_interests:
        _merge_closest(interests, config.half_life_s)
    # Centroids that drifted together are one interest.
    while len(interests) > 1 and _merge_closest(
        interests, config.half_life_s, config.join_similarity
    ):
        pass


def _merge_closest(
    interests: list[Interest], half_life_s: float, at_least: float = -np.inf
) -> bool:
    """Merge the two most similar centroids if their cosine reaches ``at_least``."""
    unit = _unit_rows(interests)
    sims = unit @ unit.T
    np.fill_diagonal(sims, -np.inf)
    i, j = np.unravel_index(int(np.argmax(sims)), sims.shape)
    if sims[i, j] < at_least:
        return False
    keep, gone = interests[min(i, j)], interests[max(i, j)]
    keep.add(gone.vec, 1.0, gone.ts_ms, half_life_s)
    del interests[max(i, j)]
    return True


def active_interests(
    interests: list[Interest], now_ms: int, half_life_s: float
) -> list[tuple[Vector, float]]:
    """``(unit vector, share)`` of the centroids that earn places in the list, biggest first.

    Shares sum to 1. Fewer than two active centroids means the single interest vector is used
    (so one centroid gives ``[]`` at once: ranking asks this of every user in every batch).
    """
    if len(interests) < 2:
        return []
    masses = [(i.mass(now_ms, half_life_s), i) for i in interests]
    total = sum(m for m, _ in masses)
    if total <= 0.0:
        return []
    kept = [(m, i) for m, i in masses if m >= MIN_MASS and m / total >= MIN_SHARE]
    kept.sort(key=lambda x: -x[0])
    mass = sum(m for m, _ in kept)
    return [(i.vec / np.float32(np.linalg.norm(i.vec)), m / mass) for m, i in kept]


def interleave(
    lists: list[list[tuple[str, float]]], shares: list[float], k: int
) -> list[tuple[str, float]]:
    """Merge per-interest rankings into one of ``k``, each interest in proportion to its share.

    Every prefix of the result is proportional (D'Hondt: the next place goes to the interest
    with the highest ``share / (places taken + 1)``); an item two interests share counts once.
    Scores are lowered where needed so they never increase down the list: the sorted set a
    reader gets keeps this order.

    >>> football = [("f1", 0.9), ("f2", 0.8), ("f3", 0.7)]
    >>> cooking = [("c1", 0.5), ("c2", 0.4)]
    >>> [i for i, _ in interleave([football, cooking], [0.6, 0.4], 4)]
    ['f1', 'c1', 'f2', 'c2']
    """
    taken = [0] * len(lists)
    pos = [0] * len(lists)
    seen: set[str] = set()
    out: list[tuple[str, float]] = []
    while len(out) < k:
        live = [i for i in range(len(lists)) if pos[i] < len(lists[i])]
        if not live:
            break
        i = max(live, key=lambda j: shares[j] / (taken[j] + 1))
        item, score = lists[i][pos[i]]
        pos[i] += 1
        if item in seen:
            continue
        seen.add(item)
        taken[i] += 1
        if out and score >= out[-1][1]:
            score = float(np.nextafter(np.float32(out[-1][1]), np.float32(-np.inf)))
        out.append((item, score))
    return out
