"""Per-user interest vectors: event weights, event-time decay and the user-state codec.

The vector is an *unnormalised* sum of item vectors weighted by event type and decayed by event
time: ``v(T) = sum_i w_i * 2**(-(T - t_i) / half_life) * x_i`` with ``T`` the newest event time
seen. That sum does not depend on arrival order, so late events land exactly where they belong.
Scoring normalises it (cosine). Pure functions only: no I/O, no faust.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import numpy.typing as npt
import orjson

Vector = npt.NDArray[np.float32]

#: Base weight per event type: engagement up, rejection down, a bare impression weakly down.
EVENT_WEIGHTS: Final[dict[str, float]] = {
    "impression": -0.05,
    "view": 0.3,
    "click": 1.0,
    "dwell": 0.2,
    "like": 2.0,
    "share": 2.5,
    "dislike": -2.0,
    "hide": -3.0,
    "search": 0.0,
}
EVENT_TYPES: Final[frozenset[str]] = frozenset(EVENT_WEIGHTS)
#: Types after which an item counts as consumed and is no longer recommended to that user.
CONSUMED_TYPES: Final[frozenset[str]] = frozenset(
    {"view", "click", "dwell", "like", "share", "dislike", "hide"}
)
#: Types that say the user wants more of this (drive co-occurrence and explanations).
POSITIVE_TYPES: Final[frozenset[str]] = frozenset({"click", "like", "share", "dwell"})
#: Types that say the user took the item in (what co-occurrence learns "consumed together"
#: from): the positives and a plain view, not a rejection.
ENGAGED_TYPES: Final[frozenset[str]] = POSITIVE_TYPES | {"view"}
#: A 30 s read counts as full engagement; longer dwell adds nothing more.
FULL_DWELL_MS: Final[float] = 30_000.0
DWELL_BONUS: Final[float] = 0.8

HISTORY_LEN: Final[int] = 40
PENDING_LEN: Final[int] = 32
_NORM_EPS: Final[float] = 1e-6


def event_weight(event_type: str, dwell_ms: float | None = None) -> float:
    """Weight of one event in the interest vector; dwell time adds up to ``DWELL_BONUS``.

    >>> event_weight("click")
    1.0
    >>> event_weight("dwell", 30_000)
    1.0
    >>> event_weight("dislike", 60_000)
    -2.0
    """
    weight = EVENT_WEIGHTS[event_type]
    if dwell_ms and weight > 0:
        weight += DWELL_BONUS * min(max(dwell_ms, 0.0) / FULL_DWELL_MS, 1.0)
    return weight


def decay_factor(dt_ms: float, half_life_s: float) -> float:
    """``2 ** (-dt / half_life)`` for a non-negative gap ``dt_ms`` in milliseconds.

    >>> decay_factor(0, 10.0)
    1.0
    >>> decay_factor(10_000, 10.0)
    0.5
    """
    return math.exp2(-max(dt_ms, 0.0) / (half_life_s * 1000.0))


def normalised(vec: Vector) -> Vector:
    """Unit-length copy of ``vec``, or zeros when it has (almost) no direction."""
    norm = float(np.linalg.norm(vec))
    if not math.isfinite(norm) or norm < _NORM_EPS:
        return np.zeros_like(vec)
    return (vec / norm).astype(np.float32, copy=False)


#: ``event_id`` prefix of events the feedback agent forwards (``streams.feedback``).
FORWARDED_PREFIX: Final = "feedback:"
#: Forwarded event ids remembered per user: re-sends come within seconds of the first.
FORWARDED_REMEMBERED: Final = 64

#: The largest ``context.position`` an event may carry (a place in a list; 0 is the top).
MAX_POSITION: Final = 10_000


def context_position(context: object) -> int | None:
    """Where an event's item was shown, from its ``context.position`` (``None``: not given).

    Raises :class:`ValueError` for a position that is not an integer in [0, MAX_POSITION].

    >>> context_position({"position": 2, "page": "home"}), context_position(None)
    (2, None)
    """
    if not isinstance(context, dict) or context.get("position") is None:
        return None
    place = context["position"]
    if isinstance(place, bool) or not isinstance(place, int) or not 0 <= place <= MAX_POSITION:
        shown = repr(place)[:40]
        raise ValueError(f"context.position must be an integer in [0, {MAX_POSITION}], got {shown}")
    return place


@dataclass(slots=True)
class HistoryEntry:
    """One applied interaction, kept so explanations and re-embedding can refer back to it."""

    item_id: str
    event_type: str
    weight: float
    ts_ms: int


@dataclass(slots=True)
class Interest:
    """One centroid: ``vec`` is the decayed weighted sum of its items as of ``ts_ms``."""

    vec: Vector
    ts_ms: int

    def mass(self, now_ms: int, half_life_s: float) -> float:
        """Length of the centroid decayed to ``now_ms`` (its weight among the user's interests)."""
        length = math.sqrt(float(np.dot(self.vec, self.vec)))  # np.linalg.norm: 3x the cost
        return length * decay_factor(now_ms - self.ts_ms, half_life_s)

    def add(self, item_vec: Vector, weight: float, ts_ms: int, half_life_s: float) -> None:
        """Fold ``weight * item_vec`` in at event time ``ts_ms`` (order-independent)."""
        self.ts_ms = fold_decayed(self.vec, self.ts_ms, item_vec, weight, ts_ms, half_life_s)


@dataclass(slots=True)
class UserState:
    """Everything streamrec knows about one user; stored in the changelog-backed table.

    ``partition``/``offset`` are the Kafka watermark of the newest applied event: an event at or
    below it is a re-delivery and must not be applied again.
    """

    vec: Vector
    ts_ms: int = 0
    events: int = 0
    partition: int = -1
    offset: int = -1
    model_version: str = ""
    history: list[HistoryEntry] = field(default_factory=list)
    pending: list[HistoryEntry] = field(default_factory=list)
    group: str = ""
    #: Interest centroids (see :mod:`state.multi_interest`); ``vec`` stays their blend.
    interests: list[Interest] = field(default_factory=list)
    #: ``event_id`` of the newest events forwarded from the feedback topic (at most
    #: :data:`FORWARDED_REMEMBERED`): a record the feedback agent sent twice is applied once.
    forwarded: list[str] = field(default_factory=list)

    @classmethod
    def empty(cls, dim: int, model_version: str = "") -> UserState:
        return cls(vec=np.zeros(dim, dtype=np.float32), model_version=model_version)

    def seen(self, partition: int, offset: int) -> bool:
        """True when the event at ``partition``/``offset`` has already been applied."""
        return partition == self.partition and offset <= self.offset

    def consumed(self) -> set[str]:
        """Item ids this user has already consumed (excluded from their recommendations)."""
        return {h.item_id for h in self.history if h.event_type in CONSUMED_TYPES}

    def engaged(self, limit: int) -> list[HistoryEntry]:
        """The newest ``limit`` distinct items of :data:`ENGAGED_TYPES` events, newest first."""
        out: list[HistoryEntry] = []
        seen: set[str] = set()
        for h in reversed(self.history):
            if h.event_type in ENGAGED_TYPES and h.item_id not in seen:
                seen.add(h.item_id)
                out.append(h)
                if len(out) == limit:
                    break
        return out

    @property
    def is_personal(self) -> bool:
        """True when the vector carries a direction (at least one non-neutral known item)."""
        return float(np.linalg.norm(self.vec)) >= _NORM_EPS


def add_to_vector(
    state: UserState, item_vec: Vector, weight: float, ts_ms: int, half_life_s: float
) -> None:
    """Fold ``weight * item_vec`` observed at ``ts_ms`` into ``state.vec`` (order-independent)."""
    state.ts_ms = fold_decayed(state.vec, state.ts_ms, item_vec, weight, ts_ms, half_life_s)


def fold_decayed(
    vec: Vector, vec_ts_ms: int, item_vec: Vector, weight: float, ts_ms: int, half_life_s: float
) -> int:
    """Add ``weight * item_vec`` seen at ``ts_ms`` to ``vec`` (as of ``vec_ts_ms``), in place.

    Returns the new time ``vec`` is expressed at: the sum decays to the newest event, and a late
    event enters already decayed, so the result does not depend on arrival order.
    """
    if ts_ms >= vec_ts_ms:
        if vec_ts_ms:
            vec *= np.float32(decay_factor(ts_ms - vec_ts_ms, half_life_s))
        vec += np.float32(weight) * item_vec
        return ts_ms
    vec += np.float32(weight * decay_factor(vec_ts_ms - ts_ms, half_life_s)) * item_vec
    return vec_ts_ms


def apply_event(
    state: UserState,
    *,
    event_type: str,
    item_id: str | None,
    ts_ms: int,
    dwell_ms: float | None,
    item_vec: Vector | None,
    half_life_s: float,
) -> HistoryEntry | None:
    """Apply one event to ``state``; return its history entry (``None`` for item-less events).

    An event whose item has no vector yet is parked in ``pending`` and folded in by
    :func:`resolve_pending` once the catalogue knows the item, so nothing is lost when events
    overtake their item.
    """
    state.events += 1
    if item_id is None:
        state.ts_ms = max(state.ts_ms, ts_ms)
        return None
    entry = HistoryEntry(item_id, event_type, event_weight(event_type, dwell_ms), ts_ms)
    state.history.append(entry)
    del state.history[:-HISTORY_LEN]
    if entry.weight == 0.0:
        return entry
    if item_vec is None:
        state.pending.append(entry)
        del state.pending[:-PENDING_LEN]
    else:
        add_to_vector(state, item_vec, entry.weight, ts_ms, half_life_s)
    return entry


def resolve_pending(state: UserState, lookup: dict[str, Vector], half_life_s: float) -> int:
    """Fold in parked events whose items are now in ``lookup``; return how many were applied."""
    if not state.pending:
        return 0
    still: list[HistoryEntry] = []
    applied = 0
    for entry in state.pending:
        vec = lookup.get(entry.item_id)
        if vec is None:
            still.append(entry)
        else:
            add_to_vector(state, vec, entry.weight, entry.ts_ms, half_life_s)
            applied += 1
    state.pending = still
    return applied


# --- codec ---------------------------------------------------------------------------------
# Layout: magic(2) | header length (u32 LE) | orjson header | float32 LE vector, then one
# float16 LE vector per interest centroid (``U2``; ``U1`` states, without them, still decode).
# A binary vector keeps the changelog record ~2 KB for 384 dims instead of ~8 KB of JSON floats.
_MAGIC: Final[bytes] = b"U2"
_MAGICS: Final[frozenset[bytes]] = frozenset({b"U1", b"U2"})
_HEADER = struct.Struct("<2sI")


class StateCodecError(ValueError):
    """Raised for a table value that is not a streamrec user state."""


def encode_state(state: UserState) -> bytes:
    """Serialise ``state`` for the Faust table changelog."""
    header = orjson.dumps(
        {
            "t": state.ts_ms,
            "n": state.events,
            "p": state.partition,
            "o": state.offset,
            "m": state.model_version,
            "g": state.group,
            "h": [[h.item_id, h.event_type, h.weight, h.ts_ms] for h in state.history],
            "q": [[h.item_id, h.event_type, h.weight, h.ts_ms] for h in state.pending],
            "i": [i.ts_ms for i in state.interests],
            "f": state.forwarded,
        }
    )
    body = np.ascontiguousarray(state.vec, dtype="<f4").tobytes()
    if state.interests:
        # Centroids are directions for ranking: half precision halves what every changelog
        # record adds per interest (the changelog's socket writes were ~9% of the event loop).
        body += np.ascontiguousarray(np.stack([i.vec for i in state.interests]), "<f2").tobytes()
    return _HEADER.pack(_MAGIC, len(header)) + header + body


def decode_state(raw: bytes) -> UserState:
    """Inverse of :func:`encode_state`."""
    if len(raw) < _HEADER.size:
        raise StateCodecError("user state too short")
    magic, hlen = _HEADER.unpack_from(raw)
    if magic not in _MAGICS:
        raise StateCodecError(f"unknown user state format {magic!r}")
    start = _HEADER.size
    header = orjson.loads(raw[start : start + hlen])
    stamps = [int(ts) for ts in header.get("i", [])]
    body = raw[start + hlen :]
    # float32 blend vector, then float16 centroids: dim * (4 + 2 * len(stamps)) bytes.
    dim, rest = divmod(len(body), 4 + 2 * len(stamps))
    if rest:
        raise StateCodecError("user state vectors do not match its header")
    vec = np.frombuffer(body[: 4 * dim], dtype="<f4").astype(np.float32)
    rows = np.frombuffer(body[4 * dim :], dtype="<f2").astype(np.float32).reshape(len(stamps), dim)
    return UserState(
        vec=vec,
        ts_ms=int(header["t"]),
        events=int(header["n"]),
        partition=int(header["p"]),
        offset=int(header["o"]),
        model_version=str(header["m"]),
        group=str(header.get("g", "")),
        forwarded=[str(f) for f in header.get("f", [])],
        history=[HistoryEntry(str(i), str(t), float(w), int(ts)) for i, t, w, ts in header["h"]],
        pending=[HistoryEntry(str(i), str(t), float(w), int(ts)) for i, t, w, ts in header["q"]],
        interests=[Interest(rows[n].copy(), ts) for n, ts in enumerate(stamps)],
    )


def vector_bytes(vec: Vector) -> bytes:
    """float32 little-endian bytes, the on-wire vector format of the Redis key schema."""
    return np.ascontiguousarray(vec, dtype="<f4").tobytes()


def vector_from_bytes(raw: bytes) -> Vector:
    """Inverse of :func:`vector_bytes`."""
    return np.frombuffer(raw, dtype="<f4").astype(np.float32)
