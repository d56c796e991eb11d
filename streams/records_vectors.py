"""The internal ``item-vectors`` record: one encoded item, shared by every worker.

Layout: magic(2) | header length (u32 LE) | orjson header | float32 LE vector. The topic is
compacted and keyed by item id, so a worker reading it from the start rebuilds the catalogue
without re-encoding anything.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

import numpy as np
import orjson

from state.interest import Vector, vector_bytes

_MAGIC: Final = b"V1"
_HEADER = struct.Struct("<2sI")


class VectorRecordError(ValueError):
    """Raised for an ``item-vectors`` value in an unknown format."""


@dataclass(frozen=True, slots=True)
class ItemVector:
    item_id: str
    vec: Vector
    model_version: str
    title: str
    category: str
    content_hash: str
    created_at_ms: int | None = None


def encode_item_vector(record: ItemVector) -> bytes:
    """Serialise ``record`` for the ``item-vectors`` topic."""
    header = orjson.dumps(
        {
            "id": record.item_id,
            "m": record.model_version,
            "t": record.title,
            "c": record.category,
            "h": record.content_hash,
            "ts": record.created_at_ms,
        }
    )
    return _HEADER.pack(_MAGIC, len(header)) + header + vector_bytes(record.vec)


def decode_item_vector(raw: bytes) -> ItemVector:
    """Inverse of :func:`encode_item_vector`."""
    if len(raw) < _HEADER.size:
        raise VectorRecordError("item vector record too short")
    magic, hlen = _HEADER.unpack_from(raw)
    if magic != _MAGIC:
        raise VectorRecordError(f"unknown item vector format {magic!r}")
    head = orjson.loads(raw[_HEADER.size : _HEADER.size + hlen])
    vec = np.frombuffer(raw[_HEADER.size + hlen :], dtype="<f4").astype(np.float32)
    return ItemVector(
        item_id=str(head["id"]),
        vec=vec,
        model_version=str(head["m"]),
        title=str(head["t"]),
        category=str(head["c"]),
        content_hash=str(head["h"]),
        created_at_ms=head.get("ts"),
    )
