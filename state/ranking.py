"""Batched ranking: content candidates from an index, blended with co-occurrence and popularity.

``score = w_content * cos(user, item) + w_collab * cooc + w_popular * pop``, all terms in
[-1, 1]; consumed and withdrawn items are excluded. Candidates come from a
:class:`CandidateIndex` (exact matrix product here; an ANN index plugs in through the same
protocol for catalogues far beyond 10k items) plus the best collaborative and popular items.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol, cast

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp  # type: ignore[import-untyped]

from state.arrays import along
from state.catalogue import CatalogueSnapshot
from state.cooccurrence import collab_scores
from state.ease import EaseModel, user_items
from state.features import FeatureWeights, category_affinity, coded_shares, feature_stack
from state.guard import DEPTH
from state.interest import Vector
from state.multi_interest import interleave

FloatMatrix = npt.NDArray[np.float32]
FloatVector = npt.NDArray[np.float32]
IndexMatrix = npt.NDArray[np.intp]
#: ``(query indices, rows)`` to leave out, as numpy fancy-index arrays.
Exclusions = tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]
#: The click model fills this many places: a worker's whole list (``STREAMREC_TOP_K`` 50),
#: the head of a longer one, so a replay ranks as a worker does. Measured on the way: choosing
#: them from the blend's top 50 alone kept the blend's AUC (synthetic 0.867) but not the nDCG
#: gain (0.0817 against 0.1264 with the collaborative and popular candidates added); ordering
#: every candidate of a 100-long list, ML-100K 0.0770 against 0.0806 for its top 100.
RERANK_DEPTH = 50
#: Rows ranked per matrix product (see :meth:`Ranker.rank`).
CHUNK = 256
#: Items whose reason names the recent read they resemble; the rest get the generic reason.
EXPLAINED = 10


class CandidateIndex(Protocol):
    """Nearest items by inner product; exact or approximate."""

    def search(
        self,
        snapshot: CatalogueSnapshot,
        queries: FloatMatrix,
        k: int,
        exclude: Exclusions,
        also: IndexMatrix,
    ) -> tuple[IndexMatrix, FloatMatrix, FloatMatrix]:
        """Return ``(rows, sims, also_sims)``; ``rows`` and ``sims`` ``(len(queries), k)``.

        ``rows`` never names an excluded row; ``exclude`` is ``(query index, row)`` pairs;
        rows ``-1`` pad missing hits. ``also_sims`` is each query's similarity to its ``also``
        rows (candidates from other sources; ``-1``: 0), exclusions not applied.
        """
        ...


class ExactIndex:
    """Brute-force matrix product + ``argpartition``; fine up to ~10^5 items on one core."""

    def search(
        self,
        snapshot: CatalogueSnapshot,
        queries: FloatMatrix,
        k: int,
        exclude: Exclusions,
        also: IndexMatrix,
    ) -> tuple[IndexMatrix, FloatMatrix, FloatMatrix]:
        n = len(snapshot)
        b = queries.shape[0]
        if n == 0 or b == 0:
            empty = np.zeros((b, 0), dtype=np.float32)
            return np.full((b, 0), -1, dtype=np.intp), empty, np.zeros(also.shape, np.float32)
        sims = queries @ snapshot.matrix.T
        # The other sources' candidates read the product already made (gathering their rows
        # for an einsum was 4% of ranking).
        also_sims = np.where(also >= 0, along(sims, np.clip(also, 0, n - 1)), 0.0).astype(
            np.float32, copy=False
        )
        if snapshot.removed:
            sims[:, ~snapshot.active] = -np.inf
        sims[exclude] = -np.inf
        k = min(k, n)
        # argpartition from the top end: negating first would copy the (b, n) matrix.
        rows = (
            np.argpartition(sims, n - k, axis=1)[:, n - k :]
            if k < n
            else np.tile(np.arange(n), (b, 1))
        )
        return rows.astype(np.intp), along(sims, rows), also_sims


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
    top_popular: npt.NDArray[np.intp]  # the most popular rows, best first
    transition: sp.csr_matrix  # (n, n) co-occurrence, row-normalised
    popularity_long: FloatVector  # (n,) in [0, 1], a longer half-life
    transition_long: sp.csr_matrix  # co-occurrence with that longer half-life
    #: ``(n,)`` in [0, 1]: each item's freshness by its age at the newest event (0: unknown).
    fresh: FloatVector
    #: ``(groups + 1, n)`` in [0, 1]: decayed popularity within each user group (the last row,
    #: zeros, for users without one); ``group_index`` maps group ids to rows.
    group_popular: FloatMatrix
    group_index: Mapping[str, int]
    #: The click model's re-ranking weights (:mod:`state.features`); None: the blend's order.
    weights: FeatureWeights | None = None
    #: The newest EASE fit (:mod:`state.ease`); None before the first (its feature is 0).
    ease: EaseModel | None = None
    #: The re-ranking that competes with ``weights`` (:mod:`state.guard`); None: the blend's.
    alternative: FeatureWeights | None = None


@dataclass(slots=True)
class RankRequest:
    """What ranking needs to know about one user."""

    user_id: str
    vec: Vector  # unit interest vector (zeros: no personal signal)
    exclude: set[str] = field(default_factory=set)
    recent: list[tuple[str, float]] = field(default_factory=list)  # newest positives, weight
    #: Two or more ``(unit centroid, share)``: the list is filled from each in proportion.
    interests: list[tuple[Vector, float]] = field(default_factory=list)
    #: Category -> share of the user's recent positives (the click model's category affinity).
    categories: dict[str, float] = field(default_factory=dict)
    group: str = ""  # the user's group (``sr:user:{u}`` ``group``); "" for none
    #: The user's engaged items, newest first, ``(item, event weight)``: their EASE row.
    history: list[tuple[str, float]] = field(default_factory=list)


@dataclass(slots=True)
class Ranked:
    """One user's top-K with per-item explanations."""

    user_id: str
    items: list[tuple[str, float]]
    why: dict[str, str]
    source: str = "personal"
    #: The competing re-ranking's first places (:mod:`state.guard`); empty: none competed.
    alternative: list[str] = field(default_factory=list)


#: ``(user, served item ids, the competing order's first ids)``: what the guard remembers.
Served = tuple[str, list[str], list[str]]


def served_lists(ranked: Sequence[Ranked]) -> list[Served]:
    """What :class:`state.guard.RankingGuard` needs of a batch (users with a competing list)."""
    return [
        (r.user_id, [i for i, _ in r.items[:DEPTH]], r.alternative) for r in ranked if r.alternative
    ]


class Ranker:
    """Ranks batches of users against a catalogue snapshot."""

    def __init__(
        self,
        weights: BlendWeights | None = None,
        index: CandidateIndex | None = None,
        extra_candidates: int = 32,
        rerank_depth: int = RERANK_DEPTH,
    ) -> None:
        self.weights = weights or BlendWeights()
        self.index: CandidateIndex = index or ExactIndex()
        self.extra = extra_candidates
        self.rerank_depth = rerank_depth

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
        # Chunks of CHUNK rows: a (chunk, n) similarity matrix stays in cache (2,000 users at
        # once made an 80 MB matrix and a 160 MB argpartition index: twice as slow).
        ranked = [
            result
            for lo in range(0, len(rows), CHUNK)
            for result in self._rank_rows(signals, rows[lo : lo + CHUNK], k, titles)
        ]
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
            other = interleave(
                [[(i, -float(p)) for p, i in enumerate(r.alternative)] for r in lists],
                shares,
                DEPTH,
            )
            out.append(
                Ranked(
                    request.user_id,
                    items,
                    {i: why[i] for i, _ in items},
                    source,
                    [i for i, _ in other],
                )
            )
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
        weights = self.weights
        n = len(snapshot)
        if n == 0 or not requests:
            return [Ranked(r.user_id, [], {}, "popular") for r in requests]
        index_of = snapshot.index
        batch = len(requests)
        queries = np.stack([r.vec for r in requests]).astype(np.float32, copy=False)
        pairs = [
            (b, index_of[i])
            for b, r in enumerate(requests)
            for i in r.exclude
            if index_of.get(i, n) < n
        ]
        exclude: Exclusions = (
            np.asarray([p[0] for p in pairs], dtype=np.intp),
            np.asarray([p[1] for p in pairs], dtype=np.intp),
        )
        longest = max((len(r.exclude) for r in requests), default=0)
        recent_rows = [
            [(index_of[i], w) for i, w in r.recent if index_of.get(i, n) < n] for r in requests
        ]
        collab = collab_scores(signals.transition, recent_rows, n)
        collab_long = collab_scores(signals.transition_long, recent_rows, n)
        # The blend's collaborative term (and its candidates) averages the two time scales;
        # the click model weighs them apart.
        blended: sp.csr_matrix = (collab + collab_long) * np.float32(0.5)
        pop = signals.popularity
        rows_x = self._extra_rows(blended, signals.top_popular, batch)
        ease = signals.ease
        ease_scores = None
        if ease is not None and self.extra:
            ease_scores = ease.scores(
                [
                    user_items([(index_of[i], w) for i, w in r.history if index_of.get(i, n) < n])
                    for r in requests
                ]
            )
            # The best EASE items join the candidates (their columns -> catalogue rows).
            top = _top_columns(ease_scores, self.extra)
            rows_x = np.concatenate(
                [
                    rows_x,
                    np.where(along(ease_scores, top) > 0, ease.rows[top], -1),
                ],
                axis=1,
            )
        # Enough content candidates that k survive the exclusions; extras cover collab/pop.
        rows_c, sims_c, sims_x = self.index.search(
            snapshot, queries, min(n, k + 16), exclude, rows_x
        )
        rows = np.concatenate([rows_c, rows_x], axis=1)
        safe = np.maximum(rows, 0)
        sims = np.concatenate([sims_c, sims_x], axis=1)
        user_idx = np.broadcast_to(np.arange(batch)[:, None], rows.shape)
        cf = _gather(collab, user_idx, safe)
        cf_long = _gather(collab_long, user_idx, safe)
        cf_blend = 0.5 * (cf + cf_long)
        ez = (
            ease.at(ease_scores, safe)
            if ease is not None and ease_scores is not None
            else np.zeros(rows.shape, dtype=np.float32)
        )
        parts = np.stack(
            [
                weights.content * sims,
                weights.collab * cf_blend,
                weights.popular * pop[safe],
            ]
        )
        score = parts.sum(axis=0)
        score[(rows < 0) | ~snapshot.active[safe]] = -np.inf
        _mask_duplicates(rows, score)
        if pairs and longest:
            # Extras may name consumed items: mask them with a per-batch lookup table.
            dense = np.zeros((batch, n), dtype=np.bool_)
            dense[exclude] = True
            score[along(dense, safe)] = -np.inf
        k = min(k, score.shape[1])
        best = np.argpartition(-score, k - 1, axis=1)[:, :k]
        top_score = along(score, best)
        m = min(self.rerank_depth, k)
        alternative = np.full((batch, 0), -1, dtype=np.intp)
        if (signals.weights is not None or signals.alternative is not None) and m > 0:
            best, top_score, alternative = self._rerank_head(
                signals, requests, rows, best, score, sims, (cf, cf_long, ez), pop[safe], m
            )
        order = np.argsort(-top_score, axis=1, kind="stable")
        best = along(best, order)
        top_score = along(top_score, order)
        chosen = along(rows, best)
        strongest = np.argmax(
            np.take_along_axis(parts, np.broadcast_to(best, parts.shape[:1] + best.shape), axis=2),
            axis=0,
        )
        anchors = self._anchors(snapshot, chosen[:, :EXPLAINED], recent_rows)
        ranked = self._assemble(
            snapshot, requests, recent_rows, chosen, top_score, strongest, anchors, titles or {}
        )
        if alternative.shape[1]:
            ids = snapshot.id_array[np.maximum(alternative, 0)].tolist()
            keep = (alternative >= 0).tolist()
            for r, row_ids, ok in zip(ranked, ids, keep, strict=True):
                if r.items:
                    r.alternative = [i for i, good in zip(row_ids, ok, strict=True) if good]
        return ranked

    def _rerank_head(
        self,
        signals: Signals,
        requests: Sequence[RankRequest],
        rows: IndexMatrix,
        best: IndexMatrix,
        score: FloatMatrix,
        sims: FloatMatrix,
        cf: tuple[FloatMatrix, FloatMatrix, FloatMatrix],
        pop: FloatMatrix,
        m: int,
    ) -> tuple[IndexMatrix, FloatMatrix, IndexMatrix]:
        """The list's first ``m`` places chosen by the click model, then the blend's order;
        and the first :data:`~state.guard.DEPTH` rows the competing order would have served.

        The click model picks among the blend's best ``m`` and the candidates with the best
        collaborative and popularity scores in the user's categories (what a content-heavy
        blend leaves out is what the learned weights may want in); the rest of a longer list
        keeps the blend's order.
        """
        batch, k = best.shape
        cf_blend = 0.5 * (cf[0] + cf[1])
        top_score = along(score, best)
        order = np.argsort(-top_score, axis=1, kind="stable")
        best = along(best, order)
        top_score = along(top_score, order)
        users = np.arange(batch)[:, None]
        valid = np.isfinite(score)
        # Extras come from the categories the user reads (all of them for a user without any):
        # popular or co-occurring items elsewhere are what impressions show and users skip
        # (synthetic AUC 0.768 -> 0.871, nDCG@10 0.1256 -> 0.1288; ML-100K 0.0910 -> 0.0921).
        snapshot = signals.snapshot
        index = snapshot.category_index
        shares = [coded_shares(r.categories, index) for r in requests]
        affinity = category_affinity(snapshot.category_codes, shares, np.maximum(rows, 0))
        mine = affinity > 0
        mine |= np.asarray([not user for user in shares], dtype=np.bool_)[:, None]
        sources = [np.where(valid & mine, v, -np.inf) for v in (cf_blend, cf[2], pop)]
        columns = [_top_columns(v, self.extra) for v in sources]
        extra = np.concatenate(columns, axis=1)
        # A user with fewer eligible candidates than places gets padding columns: never picked.
        picked = [along(v, c) for v, c in zip(sources, columns, strict=True)]
        eligible = np.isfinite(np.concatenate(picked, axis=1))
        pool = np.concatenate([best[:, :m], extra], axis=1)
        in_head = np.zeros(rows.shape, dtype=np.bool_)
        in_head[users, best[:, :m]] = True
        pool_score = along(score, pool)
        pool_score[:, m:][along(in_head, extra) | ~eligible] = -np.inf
        _mask_duplicates(pool, pool_score)
        groups = group_rows(signals, [r.group for r in requests])
        served, other = (
            pool_score
            if w is None
            else self._rerank(signals, w, rows, pool, sims, cf, affinity, groups, pool_score)
            for w in (signals.weights, signals.alternative)
        )
        if signals.alternative is None and signals.weights is not None:
            alternative = np.full((batch, 0), -1, dtype=np.intp)
        else:
            top = np.argsort(-other, axis=1, kind="stable")[:, :DEPTH]
            alternative = np.where(
                np.isfinite(along(other, top)),
                along(rows, along(pool, top)),
                -1,
            )
        pick = np.argsort(-served, axis=1, kind="stable")[:, :m]
        head, head_score = (
            along(pool, pick),
            along(served, pick),
        )
        taken = np.zeros(rows.shape, dtype=np.bool_)
        taken[users, head] = True
        rest = np.argsort(along(taken, best), axis=1, kind="stable")[:, : k - m]
        tail, tail_score = (
            along(best, rest),
            along(top_score, rest),
        )
        return (
            np.concatenate([head, tail], axis=1),
            np.concatenate([head_score, _below(tail_score, head_score)], axis=1),
            alternative,
        )

    @staticmethod
    def _rerank(
        signals: Signals,
        weights: FeatureWeights,
        rows: IndexMatrix,
        best: IndexMatrix,
        sims: FloatMatrix,
        cf: tuple[FloatMatrix, FloatMatrix, FloatMatrix],
        affinity: FloatMatrix,
        groups: IndexMatrix,
        top_score: FloatMatrix,
    ) -> FloatMatrix:
        """Click-model scores of the chosen candidates (``-inf`` stays ``-inf``).

        ``sims``, ``cf`` (co-occurrence at both time scales, EASE) and ``affinity`` (the user's
        share of the category) are per candidate (``rows``' shape); ``groups`` is each user's
        row of ``signals.group_popular``, ``(b, 1)``; ``best`` picks the columns to score.
        """
        chosen = np.maximum(along(rows, best), 0)
        feats = feature_stack(
            along(sims, best),
            along(cf[0], best),
            along(cf[1], best),
            along(cf[2], best),
            signals.popularity[chosen],
            signals.popularity_long[chosen],
            along(affinity, best),
            signals.fresh[chosen],
            signals.group_popular[groups, chosen],
            np.ones(chosen.shape, dtype=np.float32),  # every candidate as if at the top
        )
        rescored = np.einsum("f,fbk->bk", weights.array(), feats)
        return np.where(np.isfinite(top_score), rescored, -np.inf).astype(np.float32)

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
        why_l = along(_reasons(recent_rows, snapshot, titles), reason).tolist()
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

    def _extra_rows(
        self, collab: object, top_popular: npt.NDArray[np.intp], batch: int
    ) -> IndexMatrix:
        """Per user: best collaborative rows and the globally most popular rows (``-1`` pads)."""
        out = np.full((batch, 2 * self.extra), -1, dtype=np.intp)
        top_pop = top_popular[: self.extra]
        out[:, : len(top_pop)] = top_pop
        csr = collab  # scipy csr (batch, n)
        indptr, indices, data = csr.indptr, csr.indices, csr.data  # type: ignore[attr-defined]
        if len(data) == 0 or self.extra == 0:
            return out
        # Every user's entries best first in one sort: (user, -value) keys, then each entry's
        # place within its user; a Python loop of per-user argsorts was 2% of ranking.
        # One float64 key per entry, users spaced wider than any value's range: a stable
        # argsort of it orders like ``lexsort((-data, owners))`` at 40% of its time (values
        # within ~1e-13 of each other tie there and keep their column order).
        owners = np.repeat(np.arange(batch), np.diff(indptr))
        values = data.astype(np.float64)
        span = 2.0 * float(np.abs(values).max()) + 1.0
        order = np.argsort(owners * span - values, kind="stable")
        owner = owners[order]
        place = np.arange(len(order)) - indptr[owner]
        keep = place < self.extra
        out[owner[keep], self.extra + place[keep]] = indices[order][keep]
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


def _top_columns(values: FloatMatrix, e: int) -> IndexMatrix:
    """Per row, the columns of the ``e`` largest ``values`` (any order)."""
    e = min(e, values.shape[1])
    if e <= 0:
        return np.zeros((values.shape[0], 0), dtype=np.intp)
    return np.argpartition(-values, e - 1, axis=1)[:, :e].astype(np.intp)


def _below(tail: FloatMatrix, head: FloatMatrix) -> FloatMatrix:
    """``tail`` shifted per row to score below every finite ``head`` score (order kept)."""
    if tail.shape[1] == 0:
        return tail
    fin_head = np.where(np.isfinite(head), head, np.inf).min(axis=1, keepdims=True)
    fin_tail = np.where(np.isfinite(tail), tail, -np.inf).max(axis=1, keepdims=True)
    shift = np.where(np.isfinite(fin_head) & np.isfinite(fin_tail), fin_head - fin_tail - 1, 0)
    return (tail + shift).astype(np.float32)


def group_rows(signals: Signals, groups: Sequence[str]) -> IndexMatrix:
    """``(len(groups), 1)``: each user's row of ``signals.group_popular`` (the zeros row: none)."""
    none = len(signals.group_popular) - 1
    return np.asarray([signals.group_index.get(g, none) for g in groups], dtype=np.intp)[:, None]


def _gather(matrix: sp.csr_matrix, users: IndexMatrix, rows: IndexMatrix) -> FloatMatrix:
    """``matrix[users, rows]`` as a dense array of ``rows``' shape.

    One ``searchsorted`` over the entries' flat positions (user * n + column, ascending once
    the columns are sorted): scipy's fancy indexing cost ~10 us per user and call.
    """
    out = np.zeros(rows.shape, dtype=np.float32)
    if matrix.nnz == 0:
        return out
    matrix.sort_indices()
    n = np.int64(matrix.shape[1])
    owners = np.repeat(np.arange(matrix.shape[0], dtype=np.int64), np.diff(matrix.indptr))
    keys = owners * n + matrix.indices.astype(np.int64)
    wanted = users.astype(np.int64) * n + rows.astype(np.int64)
    pos = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
    hit = keys[pos] == wanted
    out[hit] = matrix.data[pos[hit]]
    return out


def _mask_duplicates(rows: IndexMatrix, score: FloatMatrix) -> None:
    """Keep one copy of a row that several candidate sources proposed (in place)."""
    order = np.argsort(rows, axis=1, kind="stable")
    sorted_rows = along(rows, order)
    dup = np.zeros_like(rows, dtype=np.bool_)
    dup[:, 1:] = sorted_rows[:, 1:] == sorted_rows[:, :-1]
    positions = order[dup]
    score[np.nonzero(dup)[0], positions] = -np.inf
