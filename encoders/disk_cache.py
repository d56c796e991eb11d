"""An on-disk embedding cache (SQLite), so a second evaluation run skips the encoder.

Keyed by :func:`encoders.cache.content_hash` like the Redis cache, so vectors of two model
versions never mix; values are float32 little-endian bytes. One file, no server.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from encoders.cache import Vector

_WIRE_DTYPE = np.dtype("<f4")
#: SQLite caps the number of bound parameters per statement (999 on older builds).
_CHUNK = 900


class DiskCache:
    """Vectors by content hash in one SQLite file; safe to share between runs, not threads."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path)
        self._db.execute("CREATE TABLE IF NOT EXISTS vectors (hash TEXT PRIMARY KEY, vec BLOB)")

    def get_many(self, hashes: Sequence[str]) -> dict[str, Vector]:
        """The cached vectors among ``hashes`` (misses are absent)."""
        found: dict[str, Vector] = {}
        unique = list(dict.fromkeys(hashes))
        for start in range(0, len(unique), _CHUNK):
            chunk = unique[start : start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                f"SELECT hash, vec FROM vectors WHERE hash IN ({marks})",  # noqa: S608 - marks only
                chunk,
            )
            for key, blob in rows:
                found[key] = np.frombuffer(blob, dtype=_WIRE_DTYPE).astype(np.float32)
        return found

    def put_many(self, vectors: Mapping[str, Vector]) -> None:
        """Store ``vectors`` (replacing any previous value) in one transaction."""
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO vectors (hash, vec) VALUES (?, ?)",
                [(k, np.asarray(v, dtype=_WIRE_DTYPE).tobytes()) for k, v in vectors.items()],
            )

    def close(self) -> None:
        self._db.close()
