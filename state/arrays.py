"""Array helpers shared by ranking's hot path."""

from __future__ import annotations

from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

T = TypeVar("T", bound=np.generic)


def along(a: npt.NDArray[T], idx: npt.NDArray[Any]) -> npt.NDArray[T]:
    """``np.take_along_axis(a, idx, axis=1)`` for 2-D arrays, as one fancy index: a harness
    replay ranks one user at a time, ~40 gathers each, and numpy's version spent 7 µs per call
    building its index where this spends 3.

    >>> along(np.array([[10, 11, 12], [20, 21, 22]]), np.array([[2, 0], [1, 1]])).tolist()
    [[12, 10], [21, 21]]
    """
    out: npt.NDArray[T] = a[np.arange(a.shape[0])[:, None], idx]
    return out
