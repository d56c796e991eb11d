"""Topic names and the records on them, with the strict parsers every consumer uses.

Parsers take the raw Kafka value (and key) and return a Faust record or raise
:class:`InvalidRecord` with a reason that ends up in the dead-letter headers. orjson is strict:
it rejects NaN/Infinity, overflowing numbers, invalid UTF-8 and trailing garbage.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import faust
import orjson

from state.interest import EVENT_TYPES, context_position

#: Logical topic names (``STREAMREC_TOPIC_PREFIX`` is prepended).
ITEMS: Final = "items"
EVENTS: Final = "events"
FEEDBACK: Final = "feedback"
MODEL_UPDATES: Final = "model-updates"
#: Drift of the click model's error (ADWIN): what a fine-tune trigger listens to.
MODEL_DRIFT: Final = "model-drift"
DEAD_LETTERS: Final = "dead-letters"
#: Internal, compacted: one encoded vector per item, read in full by every worker.
ITEM_VECTORS: Final = "item-vectors"

MAX_ID_CHARS: Final = 256
#: Epoch-ms timestamps must fall in [2000-01-01, 2200-01-01): catches seconds-vs-ms mistakes.
MIN_TS_MS: Final = 946_684_800_000
MAX_TS_MS: Final = 7_258_118_400_000


class InvalidRecord(ValueError):
    """A record that cannot be used; ``kind`` is a short machine-readable error class."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class Event(faust.Record, serializer="json", include_metadata=False):
    """A user interaction on the ``events`` topic (keyed by ``user_id``)."""

    event_id: str
    user_id: str
    type: str
    ts_ms: int
    item_id: str | None = None
    dwell_ms: float | None = None
    query: str | None = None
    position: int | None = None  # ``context.position``: where the item was shown (0: top)


class Item(faust.Record, serializer="json", include_metadata=False):
    """A catalogue item on the compacted ``items`` topic (keyed by ``item_id``)."""

    item_id: str
    title: str
    body: str = ""
    category: str = ""
    tags: list[str] | None = None
    created_at_ms: int | None = None

    def text(self) -> str:
        """What the encoder reads: title, category, tags and body."""
        parts = [self.title]
        if self.category:
            parts.append(self.category)
        if self.tags:
            parts.append(", ".join(self.tags))
        if self.body:
            parts.append(self.body)
        return ". ".join(parts)


class Feedback(faust.Record, serializer="json", include_metadata=False):
    """An explicit label on the ``feedback`` topic (keyed by ``user_id``)."""

    user_id: str
    item_id: str
    label: str
    ts_ms: int
    model_version: str | None = None


@dataclass(frozen=True, slots=True)
class Limits:
    """Size limits applied before and during parsing."""

    max_message_bytes: int = 64 * 1024
    max_text_chars: int = 20_000


def parse_event(value: bytes | None, key: bytes | None, limits: Limits) -> Event:
    """Validate one ``events`` value; the message key, when present, must equal ``user_id``."""
    doc = _load(value, limits)
    user_id = _id(doc, "user_id")
    _check_key(key, user_id, "user_id")
    event_type = _str(doc, "type", limits)
    if event_type not in EVENT_TYPES:
        raise InvalidRecord(
            "unknown_type",
            f"unknown event type {event_type!r}; expected one of {sorted(EVENT_TYPES)}",
        )
    item_id = _id(doc, "item_id") if event_type != "search" else _opt_id(doc, "item_id")
    dwell = _opt_number(doc, "dwell_ms")
    if dwell is not None and dwell < 0:
        raise InvalidRecord("invalid_field", f"dwell_ms must be >= 0, got {dwell}")
    query = doc.get("query")
    if query is not None and not isinstance(query, str):
        raise InvalidRecord("invalid_field", "query must be a string")
    if query is not None and len(query) > limits.max_text_chars:
        raise InvalidRecord("too_large", f"query longer than {limits.max_text_chars} chars")
    try:
        position = context_position(doc.get("context"))
    except ValueError as exc:
        raise InvalidRecord("invalid_field", str(exc)) from None
    return Event(
        event_id=_id(doc, "event_id"),
        user_id=user_id,
        type=event_type,
        ts_ms=parse_ts(doc.get("ts"), "ts"),
        item_id=item_id,
        dwell_ms=dwell,
        query=query,
        position=position,
    )


def parse_item(value: bytes, key: bytes | None, limits: Limits) -> Item:
    """Validate one ``items`` value; the message key, when present, must equal ``item_id``."""
    doc = _load(value, limits)
    item_id = _id(doc, "item_id")
    _check_key(key, item_id, "item_id")
    tags = doc.get("tags")
    if tags is not None and not (isinstance(tags, list) and all(isinstance(t, str) for t in tags)):
        raise InvalidRecord("invalid_field", "tags must be a list of strings")
    created = doc.get("created_at")
    return Item(
        item_id=item_id,
        title=_str(doc, "title", limits),
        body=_opt_str(doc, "body", limits),
        category=_opt_str(doc, "category", limits),
        tags=tags,
        created_at_ms=None if created is None else parse_ts(created, "created_at"),
    )


def parse_feedback(value: bytes | None, key: bytes | None, limits: Limits) -> Feedback:
    """Validate one ``feedback`` value; ``label`` may be a string or a finite number."""
    doc = _load(value, limits)
    user_id = _id(doc, "user_id")
    _check_key(key, user_id, "user_id")
    label = doc.get("label")
    if isinstance(label, bool) or not isinstance(label, str | int | float):
        raise InvalidRecord("invalid_field", "label must be a string or a number")
    if isinstance(label, float) and not math.isfinite(label):
        raise InvalidRecord("invalid_field", "label must be finite")
    version = doc.get("model_version")
    return Feedback(
        user_id=user_id,
        item_id=_id(doc, "item_id"),
        label=str(label),
        ts_ms=parse_ts(doc.get("ts"), "ts"),
        model_version=None if version is None else str(version),
    )


def parse_ts(value: object, field: str) -> int:
    """Epoch milliseconds from ISO-8601 text or an epoch-ms number.

    >>> parse_ts("2026-01-01T00:00:00Z", "ts")
    1767225600000
    >>> parse_ts(1767225600000, "ts")
    1767225600000
    """
    if isinstance(value, bool) or value is None:
        raise InvalidRecord("missing_field", f"{field} is required (ISO-8601 or epoch ms)")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise InvalidRecord("invalid_field", f"{field} must be finite")
        ms = int(value)
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise InvalidRecord(
                "invalid_field", f"{field} is not ISO-8601: {value[:40]!r}"
            ) from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        ms = int(parsed.timestamp() * 1000)
    else:
        raise InvalidRecord("invalid_field", f"{field} must be ISO-8601 text or epoch ms")
    if not MIN_TS_MS <= ms < MAX_TS_MS:
        raise InvalidRecord(
            "invalid_field", f"{field}={ms} is not epoch milliseconds in 2000..2200"
        )
    return ms


def _load(value: bytes | None, limits: Limits) -> dict[str, Any]:
    if value is None:
        raise InvalidRecord("empty", "message has no value")
    if len(value) > limits.max_message_bytes:
        raise InvalidRecord(
            "too_large", f"message is {len(value)} bytes; the limit is {limits.max_message_bytes}"
        )
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise InvalidRecord("malformed_json", str(exc)) from None
    if not isinstance(doc, dict):
        raise InvalidRecord("malformed_json", f"expected a JSON object, got {type(doc).__name__}")
    return doc


def _id(doc: dict[str, Any], field: str) -> str:
    value = doc.get(field)
    if value is None or value == "":
        raise InvalidRecord("missing_field", f"{field} is required")
    return _as_id(value, field)


def _opt_id(doc: dict[str, Any], field: str) -> str | None:
    value = doc.get(field)
    return None if value is None or value == "" else _as_id(value, field)


def _as_id(value: object, field: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InvalidRecord("invalid_field", f"{field} must be a string or an integer")
    text = str(value)
    if len(text) > MAX_ID_CHARS or not text.isprintable():
        raise InvalidRecord(
            "invalid_field", f"{field} must be printable and at most {MAX_ID_CHARS} chars"
        )
    return text


def _str(doc: dict[str, Any], field: str, limits: Limits) -> str:
    value = doc.get(field)
    if not isinstance(value, str) or not value:
        raise InvalidRecord("missing_field", f"{field} is required and must be a non-empty string")
    if len(value) > limits.max_text_chars:
        raise InvalidRecord("too_large", f"{field} longer than {limits.max_text_chars} chars")
    return value


def _opt_str(doc: dict[str, Any], field: str, limits: Limits) -> str:
    return "" if doc.get(field) in (None, "") else _str(doc, field, limits)


def _opt_number(doc: dict[str, Any], field: str) -> float | None:
    value = doc.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidRecord("invalid_field", f"{field} must be a finite number")
    return float(value)


def _check_key(key: bytes | None, expected: str, field: str) -> None:
    if key is not None and key.decode("utf-8", "replace") != expected:
        raise InvalidRecord(
            "key_mismatch",
            f"message key {key[:64]!r} does not match {field} {expected!r}; "
            f"key the message by {field} so per-{field} order holds",
        )
