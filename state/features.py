"""Ranking-time features of (user, item) pairs: what the click model learns from and re-ranks by.

One pure function builds them from the signals ranking already holds (content similarity,
co-occurrence and popularity at two time scales each, the EASE score (:mod:`state.ease`), the
user's affinity for the item's category, the item's freshness by its ``created_at``, its
popularity within the user's group, where it was shown) plus pairwise products, so the click
model's training rows (:mod:`state.engine`) and the ranker's re-ranking (:mod:`state.ranking`)
can never disagree on what a feature means. The products let a linear model learn "popular
*within* what this user reads" rather than "popular", which a blend of the raw signals cannot
express.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]

#: Base signals, each in [-1, 1] (content) or [0, 1] (the rest).
BASE: Final = (
    "content",
    "collab",
    "collab_long",
    "ease",
    "popular",
    "popular_long",
    "category",
    "fresh",
    "group",
    "position",
)
#: Pairwise products of base signals, as ``(name, left, right)``.
PRODUCTS: Final = (
    ("content_x_popular", "content", "popular"),
    ("content_x_popular_long", "content", "popular_long"),
    ("collab_x_popular_long", "collab", "popular_long"),
    ("collab_long_x_popular_long", "collab_long", "popular_long"),
    ("content_x_collab", "content", "collab"),
    ("content_x_collab_long", "content", "collab_long"),
    ("category_x_popular_long", "category", "popular_long"),
    ("content_x_fresh", "content", "fresh"),
)
FEATURES: Final = (*BASE, *(name for name, _, _ in PRODUCTS))
_LEFT: Final = np.asarray([BASE.index(left) for _, left, _ in PRODUCTS], dtype=np.intp)
_RIGHT: Final = np.asarray([BASE.index(right) for _, _, right in PRODUCTS], dtype=np.intp)


@dataclass(frozen=True, slots=True)
class FeatureWeights:
    """One weight per :data:`FEATURES` entry (same order): ranking score = ``weights . x``.

    >>> w = FeatureWeights.of({"collab": 2.0})
    >>> w.as_dict()["collab"], w.as_dict()["content"]
    (2.0, 0.0)
    """

    values: tuple[float, ...]

    @classmethod
    def of(cls, named: dict[str, float]) -> FeatureWeights:
        return cls(tuple(float(named.get(name, 0.0)) for name in FEATURES))

    def as_dict(self) -> dict[str, float]:
        return dict(zip(FEATURES, self.values, strict=True))

    def array(self) -> FloatArray:
        return np.asarray(self.values, dtype=np.float32)


def feature_stack(
    content: FloatArray,
    collab: FloatArray,
    collab_long: FloatArray,
    ease: FloatArray,
    popular: FloatArray,
    popular_long: FloatArray,
    category: FloatArray,
    fresh: FloatArray,
    group: FloatArray,
    position: FloatArray,
) -> FloatArray:
    """``(len(FEATURES), *shape)``: the base signals (all the same shape) and their products.

    Non-finite inputs (excluded rows carry ``-inf`` similarity) become 0; callers mask those
    rows themselves.

    >>> one = np.ones(2, dtype=np.float32)
    >>> feature_stack(one * 0.5, one, one, one, one * 0.2, one, one * 0, one, one, one).shape
    (18, 2)
    """
    base = np.stack(
        [
            content,
            collab,
            collab_long,
            ease,
            popular,
            popular_long,
            category,
            fresh,
            group,
            position,
        ]
    ).astype(np.float32, copy=False)
    base[~np.isfinite(base)] = 0.0
    # Four array operations whatever the number of products: the click model's training rows
    # are a handful of items, where per-feature numpy calls were most of the cost.
    return np.concatenate([base, base[_LEFT] * base[_RIGHT]])


def shown_at(position: int | None) -> float:
    """The ``position`` feature: ``1 / (1 + place)`` of where an item was shown (0: the top).

    Ranking scores every candidate as if shown at the top (1.0), and so does an example whose
    place is unknown: only impressions with a known place teach the model how much being shown
    higher earns a click, which keeps that position bias out of the other weights.

    >>> shown_at(0), shown_at(3), shown_at(None)
    (1.0, 0.25, 1.0)
    """
    return 1.0 if position is None else 1.0 / (1.0 + position)


def freshness(
    created_ms: npt.NDArray[np.float64], now_ms: float, half_life_ms: float
) -> FloatArray:
    """Per item, ``2 ** (-age / half_life)`` at ``now_ms``; 0 for an unknown creation time.

    An item created in the future (clock skew between producers) counts as brand new.

    >>> freshness(np.array([0.0, 500.0, np.nan, 2000.0]), 1000.0, 500.0)
    array([0.25, 0.5 , 0.  , 1.  ], dtype=float32)
    """
    age = np.maximum(now_ms - created_ms, 0.0)
    with np.errstate(invalid="ignore"):
        out = np.exp2(-age / half_life_ms)
    return np.nan_to_num(out, nan=0.0).astype(np.float32)


def coded_shares(shares: Mapping[str, float], index: Mapping[str, int]) -> dict[int, float]:
    """A user's category shares keyed by the snapshot's category codes (unknown ones dropped).

    >>> coded_shares({"sport": 0.75, "gone": 0.25}, {"sport": 0, "food": 1})
    {0: 0.75}
    """
    return {index[c]: s for c, s in shares.items() if c in index}


def category_affinity(
    codes: npt.NDArray[np.intp], shares: list[dict[int, float]], rows: npt.NDArray[np.intp]
) -> FloatArray:
    """Per user ``b`` and candidate ``rows[b, j]``: the user's share of positives in its category.

    ``codes`` maps catalogue rows to category codes (``-1``: none); ``shares[b]`` maps codes to
    shares of user ``b``'s recent positives.

    >>> category_affinity(np.array([0, 1, -1]), [{0: 0.75, 1: 0.25}], np.array([[1, 0, 2]]))
    array([[0.25, 0.75, 0.  ]], dtype=float32)
    """
    if codes.size == 0:
        return np.zeros(rows.shape, dtype=np.float32)
    n_codes = int(codes.max()) + 1
    table = np.zeros((len(shares), n_codes + 1), dtype=np.float32)  # last column: no category
    for b, user in enumerate(shares):
        for code, share in user.items():
            if 0 <= code < n_codes:
                table[b, code] = share
    cat = codes[np.maximum(rows, 0)]
    cat = np.where(cat < 0, n_codes, cat)
    return np.take_along_axis(table, cat.reshape(rows.shape), axis=1)
