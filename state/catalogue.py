"""The in-memory candidate matrix: every item's vector of one encoder version, row-indexed.

Every worker holds the whole catalogue (items are global, users are partitioned). Rows are
appended or overwritten in place as items arrive; growth reallocates, so a ranking that took a
:meth:`Catalogue.snapshot` keeps a consistent matrix while the catalogue moves on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from state.interest import Vector


class CatalogueVersionError(ValueError):
    """Raised when a vector of another encoder version is offered to the catalogue."""


@dataclass(frozen=True, slots=True)
class CatalogueSnapshot:
    """A consistent read-only view for one ranking pass."""

    matrix: npt.NDArray[np.float32]  # (n, dim), unit rows; zero rows for removed items
    ids: tuple[str, ...]
    id_array: npt.NDArray[np.object_]  # the same ids, for vectorised row -> id lookups
    active: npt.NDArray[np.bool_]  # (n,) False for removed items
    version: str
    index: Mapping[str, int]  # item id -> row; rows >= len(ids) belong to later snapshots
    removed: int  # how many rows are inactive (0 lets ranking skip the mask)
    #: ``(n,)`` category code per row (``-1``: none); codes are stable for the catalogue's life.
    category_codes: npt.NDArray[np.intp] = field(default_factory=lambda: np.zeros(0, dtype=np.intp))
    category_index: Mapping[str, int] = field(default_factory=dict)
    #: ``(n,)`` each item's ``created_at`` (epoch ms; NaN: not given), for its age.
    created_ms: npt.NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))

    def __len__(self) -> int:
        return len(self.ids)


class Catalogue:
    """Item vectors of one encoder version with O(1) upsert and lookup by id."""

    def __init__(self, dim: int, version: str, capacity: int = 1024) -> None:
        self.dim = dim
        self.version = version
        self._matrix = np.zeros((capacity, dim), dtype=np.float32)
        self._active = np.zeros(capacity, dtype=np.bool_)
        self._created = np.full(capacity, np.nan)
        self._ids: list[str] = []
        self._index: dict[str, int] = {}
        self.titles: dict[str, str] = {}
        self.categories: dict[str, str] = {}
        self._category_index: dict[str, int] = {}
        self._snapshot: CatalogueSnapshot | None = None

    def __len__(self) -> int:
        return int(self._active[: len(self._ids)].sum())

    def __contains__(self, item_id: object) -> bool:
        idx = self._index.get(item_id) if isinstance(item_id, str) else None
        return idx is not None and bool(self._active[idx])

    def upsert(
        self,
        item_id: str,
        vec: Vector,
        *,
        version: str,
        title: str = "",
        category: str = "",
        created_ms: float | None = None,
    ) -> int:
        """Insert or replace ``item_id``; return its row. Rejects another encoder's vectors."""
        if version != self.version:
            raise CatalogueVersionError(
                f"item {item_id!r} has a vector of encoder {version!r}, "
                f"catalogue is {self.version!r}"
            )
        if vec.shape != (self.dim,):
            raise CatalogueVersionError(
                f"item {item_id!r}: vector shape {vec.shape}, want ({self.dim},)"
            )
        idx = self._index.get(item_id)
        if idx is None:
            idx = len(self._ids)
            if idx == self._matrix.shape[0]:
                self._grow()
            self._ids.append(item_id)
            self._index[item_id] = idx
        self._matrix[idx] = vec
        self._active[idx] = True
        self._created[idx] = np.nan if created_ms is None else float(created_ms)
        self.titles[item_id] = title
        self.categories[item_id] = category
        if category and category not in self._category_index:
            self._category_index[category] = len(self._category_index)
        self._snapshot = None
        return idx

    def remove(self, item_id: str) -> bool:
        """Withdraw ``item_id`` from ranking (a tombstone on the compacted items topic)."""
        idx = self._index.get(item_id)
        if idx is None or not self._active[idx]:
            return False
        self._active[idx] = False
        self._matrix[idx] = 0.0
        self._snapshot = None
        return True

    def row(self, item_id: str) -> int | None:
        """Row index of an active item, else ``None``."""
        idx = self._index.get(item_id)
        return idx if idx is not None and self._active[idx] else None

    def vector(self, item_id: str) -> Vector | None:
        """The item's unit vector, or ``None`` when unknown."""
        idx = self.row(item_id)
        return None if idx is None else self._matrix[idx]

    def lookup(self, item_ids: set[str]) -> dict[str, Vector]:
        """Vectors of the known items among ``item_ids``."""
        out: dict[str, Vector] = {}
        for item_id in item_ids:
            vec = self.vector(item_id)
            if vec is not None:
                out[item_id] = vec
        return out

    def snapshot(self) -> CatalogueSnapshot:
        """A view for ranking; cached until the next change."""
        if self._snapshot is None:
            n = len(self._ids)
            self._snapshot = CatalogueSnapshot(
                matrix=self._matrix[:n],
                ids=tuple(self._ids),
                id_array=np.array(self._ids, dtype=object),
                active=self._active[:n].copy(),
                version=self.version,
                index=self._index,
                removed=n - int(self._active[:n].sum()),
                category_codes=np.array(
                    [self._category_index.get(self.categories.get(i, ""), -1) for i in self._ids],
                    dtype=np.intp,
                ),
                category_index=self._category_index,
                created_ms=self._created[:n].copy(),
            )
        return self._snapshot

    def _grow(self) -> None:
        # Reallocate rather than resize in place: snapshots held by a ranking in flight keep
        # pointing at the old, still valid buffer.
        cap = self._matrix.shape[0] * 2
        matrix = np.zeros((cap, self.dim), dtype=np.float32)
        matrix[: self._matrix.shape[0]] = self._matrix
        active = np.zeros(cap, dtype=np.bool_)
        active[: self._active.shape[0]] = self._active
        created = np.full(cap, np.nan)
        created[: self._created.shape[0]] = self._created
        self._matrix, self._active, self._created = matrix, active, created
