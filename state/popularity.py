"""Decayed item popularity: the trending signal in the blend and the cold-start fallback.

Forward decay (Cormode et al.): each interaction adds ``w * 2**((t - L) / half_life)`` relative to
a landmark ``L``, so no per-item decay pass is needed; the landmark moves forward (rescaling
everything once) before the exponent can overflow. Event time, not wall-clock, drives decay.
"""

from __future__ import annotations

import math
from typing import Final

import numpy as np
import numpy.typing as npt

_MAX_EXPONENT: Final[float] = 60.0


class Popularity:
    """Per-row decayed interaction weight, aligned with the catalogue's rows."""

    def __init__(self, half_life_s: float, capacity: int = 1024) -> None:
        self.half_life_ms = half_life_s * 1000.0
        self._scores = np.zeros(capacity, dtype=np.float64)
        self._landmark_ms: float | None = None
        self.now_ms: float = 0.0

    def add(self, row: int, weight: float, ts_ms: int) -> None:
        """Count an interaction with ``row`` of positive ``weight`` at event time ``ts_ms``."""
        if weight <= 0.0:
            return
        if self._landmark_ms is None:
            self._landmark_ms = float(ts_ms)
        if row >= self._scores.shape[0]:
            grown = np.zeros(max(row + 1, 2 * self._scores.shape[0]), dtype=np.float64)
            grown[: self._scores.shape[0]] = self._scores
            self._scores = grown
        exponent = (ts_ms - self._landmark_ms) / self.half_life_ms
        if exponent > _MAX_EXPONENT:
            self._scores *= math.exp2(-exponent)
            self._landmark_ms = float(ts_ms)
            exponent = 0.0
        self._scores[row] += weight * math.exp2(exponent)
        self.now_ms = max(self.now_ms, float(ts_ms))

    def decayed(self, n: int) -> npt.NDArray[np.float64]:
        """Decayed weights of rows ``0..n-1`` as of the newest event time seen."""
        out = np.zeros(n, dtype=np.float64)
        m = min(n, self._scores.shape[0])
        if self._landmark_ms is not None and m:
            out[:m] = self._scores[:m] * math.exp2(
                -(self.now_ms - self._landmark_ms) / self.half_life_ms
            )
        return out

    def normalised(self, n: int) -> npt.NDArray[np.float32]:
        """``log1p`` of decayed weights scaled to [0, 1] (heavy tails flattened)."""
        raw = np.log1p(self.decayed(n))
        top = float(raw.max()) if n else 0.0
        if top <= 0.0:
            return np.zeros(n, dtype=np.float32)
        return (raw / top).astype(np.float32)

    def top(self, n: int, k: int) -> npt.NDArray[np.intp]:
        """Rows of the ``k`` most popular items among the first ``n`` rows, best first."""
        scores = self.decayed(n)
        k = min(k, int(np.count_nonzero(scores)))
        if k <= 0:
            return np.zeros(0, dtype=np.intp)
        part = np.argpartition(-scores, k - 1)[:k]
        return part[np.argsort(-scores[part], kind="stable")]


def log_increment(weight: float, ts_ms: int, half_life_s: float) -> float:
    """``log2`` of a forward-decayed increment relative to the Unix epoch (for ``sr:popular``).

    Scores stored this way compare correctly at any time and never overflow; the decayed
    popularity at time ``T`` is ``2 ** (score - T / half_life)``.

    >>> log_increment(1.0, 0, 1.0)
    0.0
    >>> log_increment(2.0, 1000, 1.0)
    2.0
    """
    return math.log2(weight) + ts_ms / (half_life_s * 1000.0)


def log_add(a: float, b: float) -> float:
    """``log2(2**a + 2**b)`` without overflow.

    >>> log_add(3.0, 3.0)
    4.0
    """
    hi, lo = (a, b) if a >= b else (b, a)
    return hi + math.log2(1.0 + math.exp2(lo - hi))
