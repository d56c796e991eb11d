"""Online item co-occurrence, the collaborative signal in the blend.

Each engagement pairs the item with the user's few previous engaged items (the engine's
:data:`~state.engine.RECENT_ITEMS`; the replay baselines' own window). Increments
are buffered and folded into a sparse matrix in vectorised batches, and the row-normalised
matrix (``P(j | i)``) is what ranking multiplies with a user's recent items.
"""

from __future__ import annotations

import time

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp  # type: ignore[import-untyped]

#: Decayed pair counts below this are dropped when folding (a fresh pair counts 1).
FORGOTTEN = 1e-12


class CoOccurrence:
    """Symmetric decayed co-occurrence counts between catalogue rows."""

    def __init__(
        self, half_life_s: float, rebuild_every: int = 200_000, fold_interval_s: float = 1.0
    ) -> None:
        self.half_life_ms = half_life_s * 1000.0
        self.rebuild_every = rebuild_every
        self.fold_interval_s = fold_interval_s
        self._folded_at = 0.0
        self._counts: sp.csr_matrix = sp.csr_matrix((0, 0), dtype=np.float32)
        self._normalised: sp.csr_matrix | None = None
        self._rows: list[int] = []
        self._cols: list[int] = []
        self._built_at_ms = 0.0
        self.now_ms = 0.0

    def observe(self, recent_rows: list[int], row: int, ts_ms: int) -> None:
        """Pair ``row`` with each of ``recent_rows`` (the user's previous engaged items)."""
        for other in recent_rows:
            if other != row:
                self._rows += (other, row)
                self._cols += (row, other)
        self.now_ms = max(self.now_ms, float(ts_ms))
        if len(self._rows) >= self.rebuild_every:
            self._fold()

    def transition(self, n: int) -> sp.csr_matrix:
        """Row-normalised ``(n, n)`` matrix: entry ``(i, j)`` ~ P(next positive is j | i)."""
        # Folding is O(nnz): do it at most once per ``fold_interval_s``, not per ranking batch.
        if self._rows and time.monotonic() - self._folded_at >= self.fold_interval_s:
            self._fold()
        if self._normalised is None or self._normalised.shape[0] != n:
            counts = self._resized(self._counts, n)
            sums = np.asarray(counts.sum(axis=1)).ravel()
            inv = np.divide(1.0, sums, out=np.zeros_like(sums), where=sums > 0)
            self._normalised = sp.csr_matrix(sp.diags(inv.astype(np.float32)) @ counts)
        return self._normalised

    def counts(self, n: int) -> sp.csr_matrix:
        """The decayed pair counts as of the newest event, ``(n, n)``, every pair folded in."""
        if self._rows:
            self._fold()
        return self._resized(self._counts, n)

    def scores(self, recent: list[list[tuple[int, float]]], n: int) -> sp.csr_matrix:
        """``(len(recent), n)`` sparse collaborative scores, each row scaled to max 1."""
        return collab_scores(self.transition(n), recent, n)

    def _fold(self) -> None:
        n = max(self._counts.shape[0], max(self._rows, default=-1) + 1)
        counts = self._resized(self._counts, n)
        if self._built_at_ms and self.now_ms > self._built_at_ms:
            counts = counts * np.float32(
                np.exp2(-(self.now_ms - self._built_at_ms) / self.half_life_ms)
            )
            # Pairs decayed past ~40 half-lives are noise next to a fresh pair (weight 1); left
            # in, float32 rows sink to denormals whose reciprocal overflows in transition(), and
            # the matrix never gets sparser on a long stream.
            counts.data[counts.data < FORGOTTEN] = 0.0
            counts.eliminate_zeros()
        fresh = sp.csr_matrix(
            (np.ones(len(self._rows), dtype=np.float32), (self._rows, self._cols)), shape=(n, n)
        )
        self._counts = sp.csr_matrix(counts + fresh)
        self._built_at_ms = self.now_ms
        self._rows, self._cols = [], []
        self._normalised = None
        self._folded_at = time.monotonic()

    @staticmethod
    def _resized(matrix: sp.csr_matrix, n: int) -> sp.csr_matrix:
        if matrix.shape[0] >= n:
            return matrix[:n, :n] if matrix.shape[0] > n else matrix
        out = matrix.copy()
        out.resize((n, n))
        return sp.csr_matrix(out)


def collab_scores(
    transition: sp.csr_matrix, recent: list[list[tuple[int, float]]], n: int
) -> sp.csr_matrix:
    """Users' weighted recent rows times ``transition``; ``(len(recent), n)``, rows max 1.

    Pure: reads only its arguments, so a ranking thread can call it on a frozen matrix while
    the event loop keeps observing new pairs.
    """
    data: list[float] = []
    indices: list[int] = []
    indptr = [0]
    for items in recent:
        for row, weight in items:
            if row < n:
                indices.append(row)
                data.append(weight)
        indptr.append(len(indices))
    users = sp.csr_matrix(
        (np.asarray(data, dtype=np.float32), np.asarray(indices, dtype=np.int32), indptr),
        shape=(len(recent), n),
    )
    out: sp.csr_matrix = users @ transition  # csr times csr: csr (no wrapping copy)
    out.sort_indices()  # once, here: ranking's lookups need sorted columns
    # Row maxima straight from the entries (scipy's ``max(axis=1)`` first sorted and summed
    # duplicates again: ~6% of ranking); implicit zeros count, as there.
    counts = np.diff(out.indptr)
    row_max = np.zeros(out.shape[0], dtype=out.dtype)
    filled = counts > 0
    if out.nnz:
        row_max[filled] = np.maximum.reduceat(out.data, out.indptr[:-1][filled])
    row_max = np.where(counts < n, np.maximum(row_max, 0.0), row_max)
    inv = np.divide(1.0, row_max, out=np.zeros_like(row_max), where=row_max > 0)
    # float32 products, as the diagonal product made them: rankings unchanged to the bit.
    out.data = out.data * np.repeat(inv.astype(np.float32), counts)
    out.eliminate_zeros()  # rows without a positive entry: empty, as a product leaves them
    return out


def collab_at(
    transition: sp.csr_matrix, recent: list[tuple[int, float]], rows: list[int]
) -> npt.NDArray[np.float32]:
    """One user's :func:`collab_scores` at ``rows`` only (same scaling), without building a
    sparse matrix: ~20 us instead of ~150 us, for the click model's per-event features.
    """
    out = np.zeros(len(rows), dtype=np.float32)
    indptr, indices, data = transition.indptr, transition.indices, transition.data
    cols = [indices[indptr[r] : indptr[r + 1]] for r, _ in recent if r < len(indptr) - 1]
    if not cols or not sum(len(c) for c in cols):
        return out
    vals = [
        data[indptr[r] : indptr[r + 1]] * np.float32(w) for r, w in recent if r < len(indptr) - 1
    ]
    uniq, inverse = np.unique(np.concatenate(cols), return_inverse=True)
    sums = np.bincount(inverse, weights=np.concatenate(vals))
    top = float(sums.max())
    if top <= 0.0:
        return out
    wanted = np.asarray(rows)
    pos = np.minimum(np.searchsorted(uniq, wanted), len(uniq) - 1)
    hit = uniq[pos] == wanted
    out[hit] = (sums[pos[hit]] / top).astype(np.float32)
    return out
