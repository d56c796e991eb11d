"""Batched ranking: content similarity blended with co-occurrence and popularity, exactly.

``score = w_content * cos(user, item) + w_collab * cooc + w_popular * pop``, all terms in
[-1, 1], for every catalogue item (consumed and withdrawn items excluded), then top-K: one
matrix product per chunk of users, the sparse co-occurrence added in place, one
``argpartition``. Exact, so no item is lost for want of a candidate; fine up to ~10^5 items per
worker core (beyond that an approximate nearest-neighbour stage would have to choose
candidates first).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import cast

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp  # type: ignore[import-untyped]

from state.catalogue import CatalogueSnapshot
from state.cooccurrence import collab_scores
from state.interest import Vector
from state.multi_interest import interleave

FloatMatrix = npt.NDArray[np.float32]
FloatVector = npt.NDArray[np.float32]
IndexMatrix = npt.NDArray[np.intp]
#: Users per matrix product: a (chunk, n) score matrix stays in cache (2,000 at once: 80 MB).
CHUNK = 256
#: Items whose reason names the recent read they resemble; the rest get the generic reason.
EXPLAINED = 10


@dataclass(frozen=True, slots=True)
class BlendWeights:
    content: float = 1.0
    collab: float = 0.35
    popular: float = 0.15


@dataclass(frozen=True, slots=True)
class Signals:
    """Everything ranking reads besides the requests, frozen between two batches.

    Built on the event loop (:meth:`state.engine.Engine.signals`); a ranking thread reads only
    this, so the loop can apply the next batch to popularity and co-occurrence meanwhile.
    """

    snapshot: CatalogueSnapshot
    popularity: FloatVector  # (n,) in [0, 1]
    transition: sp.csr_matrix  # (n, n) co-occurrence, row-normalised
    weights: BlendWeights | None = None  # learned by the click model; None: the configured


@dataclass(slots=True)
class RankRequest:
    """What ranking needs to know about one user."""

    user_id: str
    vec: Vector  # unit interest vector (zeros: no personal signal)
    exclude: set[str] = field(default_factory=set)
    recent: list[tuple[str, float]] = field(default_factory=list)  # newest positives, weight
    #: Two or more ``(unit centroid, share)``: the list is filled from each in proportion.
    interests: list[tuple[Vector, float]] = field(default_factory=list)


@dataclass(slots=True)
class Ranked:
    """One user's top-K with per-item explanations."""

    user_id: str
    items: list[tuple[str, float]]
    why: dict[str, str]
    source: str = "personal"


class Ranker:
    """Ranks batches of users against a catalogue snapshot."""

    def __init__(self, weights: BlendWeights | None = None) -> None:
        self.weights = weights or BlendWeights()

    def rank(
        self,
        signals: Signals,
        requests: Sequence[RankRequest],
        k: int,
        titles: dict[str, str] | None = None,
    ) -> list[Ranked]:
        """Top-``k`` per request, best first; users without any signal get an empty list.

        A user with several active interests is ranked once per interest centroid and the
        lists are interleaved by share. Reads nothing but its arguments (thread-safe while the
        engine moves on).
        """
        rows: list[RankRequest] = []
        owner: list[int] = []
        for b, request in enumerate(requests):
            if len(request.interests) < 2:
                rows.append(request)
                owner.append(b)
                continue
            for vec, _ in request.interests:
                rows.append(replace(request, vec=vec, interests=[]))
                owner.append(b)
        ranked = self._rank_rows(signals, rows, k, titles)
        if len(rows) == len(requests):
            return ranked
        parts: list[list[Ranked]] = [[] for _ in requests]
        for b, result in zip(owner, ranked, strict=True):
            parts[b].append(result)
        out: list[Ranked] = []
        for request, lists in zip(requests, parts, strict=True):
            if len(lists) == 1:
                out.append(lists[0])
                continue
            shares = [share for _, share in request.interests]
            items = interleave([r.items for r in lists], shares, k)
            why = {i: r.why[i] for r in reversed(lists) for i, _ in r.items}
            source = "personal" if items else "popular"
            out.append(Ranked(request.user_id, items, {i: why[i] for i, _ in items}, source))
        return out

    def _rank_rows(
        self,
        signals: Signals,
        requests: Sequence[RankRequest],
        k: int,
        titles: dict[str, str] | None = None,
    ) -> list[Ranked]:
        """One top-``k`` per request (its ``vec`` alone), vectorised over the batch."""
        snapshot = signals.snapshot
        n = len(snapshot)
        if n == 0 or not requests:
            return [Ranked(r.user_id, [], {}, "popular") for r in requests]
        index_of = snapshot.index
        recent_rows = [
            [(index_of[i], w) for i, w in r.recent if index_of.get(i, n) < n] for r in requests
        ]
        k = min(k, n)
        chosen = np.empty((len(requests), k), dtype=np.intp)
        top_score = np.empty((len(requests), k), dtype=np.float32)
        parts = np.empty((3, len(requests), k), dtype=np.float32)
        for lo in range(0, len(requests), CHUNK):
            hi = min(lo + CHUNK, len(requests))
            chosen[lo:hi], top_score[lo:hi], parts[:, lo:hi] = self._top(
                signals, requests[lo:hi], recent_rows[lo:hi], k
            )
        if signals.weights is not None:
            # The click model re-ranks the blend's top-k: the configured blend picks which k
            # (a linear click model alone would push popular off-interest items in), the
            # learned weights order them.
            learned = signals.weights
            rescored = (
                learned.content * parts[0] + learned.collab * parts[1] + learned.popular * parts[2]
            )
            top_score = np.where(np.isfinite(top_score), rescored, -np.inf).astype(np.float32)
        order = np.argsort(-top_score, axis=1, kind="stable")
        chosen = np.take_along_axis(chosen, order, axis=1)
        top_score = np.take_along_axis(top_score, order, axis=1)
        weighted = parts * np.asarray(
            [self.weights.content, self.weights.collab, self.weights.popular], dtype=np.float32
        ).reshape(3, 1, 1)
        strongest = np.argmax(
            np.take_along_axis(weighted, np.broadcast_to(order, parts.shape), axis=2), axis=0
        )
        anchors = self._anchors(snapshot, chosen[:, :EXPLAINED], recent_rows)
        return self._assemble(
            snapshot, requests, recent_rows, chosen, top_score, strongest, anchors, titles or {}
        )

    def _top(
        self,
        signals: Signals,
        requests: Sequence[RankRequest],
        recent_rows: list[list[tuple[int, float]]],
        k: int,
    ) -> tuple[IndexMatrix, FloatMatrix, FloatMatrix]:
        """Top-``k`` rows of the blend for a chunk: ``(rows, scores, parts)``, unordered.

        ``parts`` is ``(3, chunk, k)``: content, co-occurrence and popularity at those rows,
        unweighted (the click model's re-ranking and the explanations read them).
        """
        snapshot, w = signals.snapshot, self.weights
        n = len(snapshot)
        queries = np.stack([r.vec for r in requests]).astype(np.float32, copy=False)
        sims = queries @ snapshot.matrix.T
        score = sims * np.float32(w.content)
        score += np.float32(w.popular) * signals.popularity
        collab = collab_scores(signals.transition, recent_rows, n)
        users = np.repeat(np.arange(len(requests)), np.diff(collab.indptr))
        score[users, collab.indices] += np.float32(w.collab) * collab.data
        if snapshot.removed:
            score[:, ~snapshot.active] = -np.inf
        index_of = snapshot.index
        excluded = [
            (b, index_of[i]) for b, r in enumerate(requests) for i in r.exclude if i in index_of
        ]
        if excluded:
            pairs = np.asarray(excluded, dtype=np.intp)
            keep = pairs[:, 1] < n  # rows of items newer than this snapshot
            score[pairs[keep, 0], pairs[keep, 1]] = -np.inf
        # argpartition from the top end: negating first would copy the (chunk, n) matrix.
        rows: IndexMatrix = (
            np.argpartition(score, n - k, axis=1)[:, n - k :]
            if k < n
            else np.tile(np.arange(n, dtype=np.intp), (len(requests), 1))
        )
        top = np.take_along_axis(score, rows, axis=1)
        content = np.take_along_axis(sims, rows, axis=1)
        popular = signals.popularity[rows]
        cf = (
            (top - w.content * content - w.popular * popular) / np.float32(w.collab)
            if w.collab
            else np.zeros_like(top)
        )
        cf = np.where(np.isfinite(top), cf, 0.0).astype(np.float32)
        return rows.astype(np.intp), top, np.stack([content, cf, popular])

    @staticmethod
    def _assemble(
        snapshot: CatalogueSnapshot,
        requests: Sequence[RankRequest],
        recent_rows: list[list[tuple[int, float]]],
        chosen: IndexMatrix,
        top_score: FloatMatrix,
        strongest: IndexMatrix,
        anchors: IndexMatrix,
        titles: dict[str, str],
    ) -> list[Ranked]:
        """Python lists per user, converted from the batch arrays in one go (cheaper)."""
        # Reason column per item: 0 trending, 1 + 2a (+1 for collaborative) names recent read a,
        # -1 (the last column) the generic reason (items past EXPLAINED, or no recent reads).
        anchor = np.full(chosen.shape, -1, dtype=np.intp)
        anchor[:, : anchors.shape[1]] = anchors
        reason = np.where(anchor < 0, -1, 1 + 2 * anchor + (strongest == 1))
        reason[strongest == 2] = 0
        valid = np.isfinite(top_score)
        all_valid = cast(list[bool], valid.all(axis=1).tolist())
        # Object-array gathers turn rows into ids and reason strings in C, not per item.
        picked_l = snapshot.id_array[np.maximum(chosen, 0)].tolist()
        why_l = np.take_along_axis(_reasons(recent_rows, snapshot, titles), reason, axis=1).tolist()
        scores_l = top_score.tolist()
        out: list[Ranked] = []
        for b, request in enumerate(requests):
            if not recent_rows[b] and not request.vec.any():
                out.append(Ranked(request.user_id, [], {}, "popular"))
                continue
            picked = picked_l[b]
            items = list(zip(picked, scores_l[b], strict=True))
            why = dict(zip(picked, why_l[b], strict=True))
            if not all_valid[b]:
                keep = valid[b].tolist()
                items = [it for it, ok in zip(items, keep, strict=True) if ok]
                why = {i: why[i] for i, _ in items}
            out.append(Ranked(request.user_id, items, why, "personal" if items else "popular"))
        return out

    @staticmethod
    def _anchors(
        snapshot: CatalogueSnapshot, chosen: IndexMatrix, recent: list[list[tuple[int, float]]]
    ) -> IndexMatrix:
        """Per chosen item, which recent positive of the user it most resembles (-1: none)."""
        h = max((len(r) for r in recent), default=0)
        if h == 0:
            return np.full(chosen.shape, -1, dtype=np.intp)
        rows = np.full((len(recent), h), -1, dtype=np.intp)
        for b, items in enumerate(recent):
            rows[b, : len(items)] = [r for r, _ in items]
        m = snapshot.matrix
        sims = np.einsum("bkd,bhd->bkh", m[np.maximum(chosen, 0)], m[np.maximum(rows, 0)])
        sims[np.broadcast_to((rows < 0)[:, None, :], sims.shape)] = -np.inf
        anchor: IndexMatrix = np.asarray(np.argmax(sims, axis=2), dtype=np.intp)
        anchor[np.broadcast_to((rows[:, :1] < 0), anchor.shape)] = -1
        return anchor


def _reasons(
    recent: list[list[tuple[int, float]]], snapshot: CatalogueSnapshot, titles: dict[str, str]
) -> npt.NDArray[np.object_]:
    """Per user: ``[trending, content/collab reason per recent read ..., generic reason]``."""
    h = max((len(r) for r in recent), default=0)
    out = np.full((len(recent), 2 + 2 * h), "matches your interests", dtype=object)
    out[:, 0] = "trending"
    for b, rows in enumerate(recent):
        for a, (row, _) in enumerate(rows):
            item_id = snapshot.ids[row]
            title = titles.get(item_id, item_id)[:80]
            out[b, 1 + 2 * a] = f"because you read: {title}"
            out[b, 2 + 2 * a] = f"readers of {title} also read this"
    return out
