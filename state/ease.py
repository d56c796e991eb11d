"""EASE (Steck, 2019): a closed-form item-to-item model over the items users engaged with.

``B = I - P / diag(P)`` with ``P = (G + l2 * I)^-1``, ``G`` the item Gram matrix (``G[i, j]``:
how often ``i`` and ``j`` were engaged with by the same user; ``G[i, i]``: how often ``i`` was).
A user's scores are their engaged items times ``B``. Unlike co-occurrence's ``P(j | i)``, the
inverse explains each item by all the others at once, so items that only co-occur through a
popular third one stop scoring. On MovieLens-100K (a dense replay of the harness's protocol,
added to the engine's co-occurrence): nDCG@10 0.1048 -> 0.1130.

The Gram matrix grows online (each engaged item paired with the user's previous
:data:`HISTORY` engaged items, forward-decayed like co-occurrence); the inversion is cubic in
the items it covers, so it is refit every :attr:`EaseLearner.refit_every` engaged events, over
the :attr:`EaseLearner.max_items` most engaged items only (the rest score 0). A refit reads a
snapshot (:meth:`EaseLearner.gram`) and is pure (:func:`fit`), so a worker runs it on a thread.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import scipy.linalg  # type: ignore[import-untyped]
import scipy.sparse as sp  # type: ignore[import-untyped]

from state.arrays import along
from state.cooccurrence import CoOccurrence
from state.popularity import Popularity

#: A user's engaged items that count (newest first): the state's whole remembered history.
HISTORY = 40
#: A user's row: 1 for a positive, this for a plain view (a weaker "took it in").
VIEW_VALUE = 0.5


@dataclass(frozen=True, slots=True)
class EaseModel:
    """A fitted model: ``weights`` over catalogue ``rows`` (``position[row]``: its column)."""

    rows: npt.NDArray[np.intp]  # (K,)
    weights: npt.NDArray[np.float32]  # (K, K), zero diagonal
    position: npt.NDArray[np.intp]  # (n,) column of each catalogue row, -1 if not covered

    def scores(self, users: list[list[tuple[int, float]]]) -> npt.NDArray[np.float32]:
        """``(len(users), K)``: each user's ``(row, value)`` items times the weights, scaled
        so a user's best item scores 1 (negative scores become 0)."""
        data: list[float] = []
        cols: list[int] = []
        indptr = [0]
        n = len(self.position)
        for items in users:
            for row, value in items:
                col = int(self.position[row]) if 0 <= row < n else -1
                if col >= 0:
                    cols.append(col)
                    data.append(value)
            indptr.append(len(cols))
        k = len(self.rows)
        x = sp.csr_matrix(
            (np.asarray(data, dtype=np.float32), np.asarray(cols, dtype=np.int32), indptr),
            shape=(len(users), k),
        )
        out = np.maximum(np.asarray(x @ self.weights, dtype=np.float32), 0.0)
        top = out.max(axis=1, keepdims=True) if k else np.zeros((len(users), 1), np.float32)
        scaled: npt.NDArray[np.float32] = np.divide(out, top, out=np.zeros_like(out), where=top > 0)
        return scaled

    def at(
        self, scores: npt.NDArray[np.float32], rows: npt.NDArray[np.intp]
    ) -> npt.NDArray[np.float32]:
        """``scores`` (from :meth:`scores`) at catalogue ``rows``, ``(users, c)``: per user
        ``b`` its rows ``rows[b]``; rows the fit does not cover score 0."""
        n = len(self.position)
        if scores.shape[1] == 0 or n == 0:
            return np.zeros(rows.shape, dtype=np.float32)
        valid = (rows >= 0) & (rows < n)
        col = np.where(valid, self.position[np.clip(rows, 0, n - 1)], -1)
        got = along(scores, np.maximum(col, 0))
        return np.where(col >= 0, got, 0.0).astype(np.float32)


def user_items(engaged: list[tuple[int, float]]) -> list[tuple[int, float]]:
    """A user's row from ``(catalogue row, event weight)`` of their engaged items."""
    return [(row, 1.0 if weight >= 1.0 else VIEW_VALUE) for row, weight in engaged[:HISTORY]]


def fit(rows: npt.NDArray[np.intp], gram: npt.NDArray[np.float32], l2: float, n: int) -> EaseModel:
    """The closed form over ``rows`` (their ``gram``); pure and thread-safe.

    >>> m = fit(np.array([0, 1]), np.array([[2.0, 1.0], [1.0, 2.0]]), 1.0, 3)
    >>> m.weights.astype(float).round(3).tolist(), m.position.tolist()
    ([[0.0, 0.333], [0.333, 0.0]], [0, 1, -1])
    """
    k = len(rows)
    position = np.full(n, -1, dtype=np.intp)
    position[rows] = np.arange(k)
    if k == 0:
        return EaseModel(rows, np.zeros((0, 0), dtype=np.float32), position)
    # Single precision and LAPACK's getrf + getri (scipy), not numpy's solve against the
    # identity: 0.18 s against 0.54 s for 2,000 items on one core, and the weights agree to
    # ~1e-8 (the ridge keeps the system well conditioned).
    a = np.array(gram, dtype=np.float32)  # a copy: the inversion overwrites it
    a[np.diag_indices(k)] += np.float32(l2)
    inverse = scipy.linalg.inv(a, overwrite_a=True, check_finite=False)
    weights: npt.NDArray[np.float32] = -inverse / np.diag(inverse)[None, :]
    np.fill_diagonal(weights, 0.0)
    return EaseModel(rows, weights, position)


class EaseLearner:
    """The growing Gram matrix and the newest fitted :class:`EaseModel` (None before one)."""

    def __init__(
        self,
        half_life_s: float,
        l2: float = 100.0,
        max_items: int = 2000,
        refit_every: int = 2048,
    ) -> None:
        self.pairs = CoOccurrence(half_life_s, fold_interval_s=float("inf"))
        self.counts = Popularity(half_life_s)
        self.l2 = l2
        self.max_items = max_items
        self.refit_every = refit_every
        self.model: EaseModel | None = None
        self.since_fit = 0

    def observe(self, previous: list[int], row: int, ts_ms: int) -> None:
        """Count an engagement with ``row`` after the user's ``previous`` engaged rows."""
        self.pairs.observe(previous[:HISTORY], row, ts_ms)
        self.counts.add(row, 1.0, ts_ms)
        self.since_fit += 1

    @property
    def due(self) -> bool:
        return self.since_fit >= self.refit_every

    def gram(self, n: int) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.float32]]:
        """The most engaged rows (up to ``max_items``) and their Gram matrix, as of now."""
        self.since_fit = 0
        diag = self.counts.decayed(n)
        rows = self.counts.top(n, self.max_items)
        rows = np.sort(rows[diag[rows] > 0])
        counts = self.pairs.counts(n)
        gram = np.asarray(counts[rows][:, rows].toarray(), dtype=np.float32)
        gram[np.diag_indices(len(rows))] = diag[rows]
        return rows, gram

    def refit(self, n: int) -> EaseModel:
        """Fit on the current Gram matrix here and now (a replay; a worker uses a thread)."""
        rows, gram = self.gram(n)
        self.model = fit(rows, gram, self.l2, n)
        return self.model
