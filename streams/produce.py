"""Publishing JSON-lines files to a topic, keyed the way the workers need.

Messages are keyed by ``user_id`` (events, feedback) or ``item_id`` (items) so that per-key
order holds; one in-flight request per connection keeps retries from reordering a key.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
from kafka import KafkaProducer
from kafka.producer.future import FutureRecordMetadata
from tqdm import tqdm

KEY_FIELDS: dict[str, str] = {"events": "user_id", "feedback": "user_id", "items": "item_id"}
MAX_REQUEST_BYTES = 8 * 1024 * 1024


class ProduceError(ValueError):
    """A line that cannot be published (the message gives file and line number)."""


class Acks:
    """Watches sends; :meth:`check` raises if the broker refused any record (after retries).

    ``flush()`` waits for every send to finish but does not say whether it succeeded.
    """

    def __init__(self) -> None:
        self.failed = 0
        self.first: BaseException | None = None
        self._lock = threading.Lock()

    def watch(self, future: FutureRecordMetadata) -> None:
        future.add_errback(self._failed)

    def _failed(self, exc: BaseException) -> None:  # on the producer's I/O thread
        with self._lock:
            self.failed += 1
            self.first = self.first or exc

    def check(self, sent: int) -> None:
        if self.failed:
            raise ProduceError(
                f"{self.failed} of {sent} records were not acknowledged by the broker "
                f"(first error: {self.first!r})"
            )


@dataclass
class ProduceReport:
    sent: int = 0
    skipped: int = 0


def key_field_for(topic: str, topic_prefix: str = "") -> str | None:
    """The record field that keys ``topic`` (``None``: unkeyed)."""
    return KEY_FIELDS.get(topic.removeprefix(topic_prefix))


def keyed_lines(path: Path, key_field: str | None) -> Iterator[tuple[int, bytes | None, bytes]]:
    """``(line number, key, value)`` per non-blank line; raises on a line that is not JSON."""
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            line = raw.strip()
            if not line:
                continue
            key = None
            if key_field is not None:
                try:
                    doc = orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    raise ProduceError(f"{path}:{lineno}: not JSON ({exc})") from None
                value = doc.get(key_field) if isinstance(doc, dict) else None
                if value is None:
                    raise ProduceError(f"{path}:{lineno}: no {key_field!r} to key the message by")
                key = str(value).encode()
            yield lineno, key, line


def make_producer(bootstrap: list[str]) -> KafkaProducer:
    """A producer that preserves per-key order and waits for full acknowledgement."""
    return KafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=5,
        retries=5,
        max_in_flight_requests_per_connection=1,
        max_request_size=MAX_REQUEST_BYTES,
        batch_size=256 * 1024,
    )


def publish(
    producer: KafkaProducer,
    topic: str,
    records: Iterable[tuple[bytes | None, bytes]],
    total: int | None = None,
    progress: bool = True,
) -> int:
    """Send ``(key, value)`` records to ``topic``, flush, and return how many were sent;
    raises :class:`ProduceError` if the broker did not acknowledge them all."""
    acks = Acks()
    sent = 0
    for key, value in tqdm(
        records, total=total, unit="msg", disable=not progress, desc=f"-> {topic}"
    ):
        acks.watch(producer.send(topic, key=key, value=value))
        sent += 1
    producer.flush()
    acks.check(sent)
    return sent


def produce_file(
    bootstrap: list[str],
    topic: str,
    path: Path,
    key_field: str | None,
    skip_bad: bool = False,
    progress: bool = True,
) -> ProduceReport:
    """Publish ``path`` to ``topic``; a bad line aborts unless ``skip_bad``."""
    report = ProduceReport()
    total = sum(1 for line in path.open("rb") if line.strip())

    def records() -> Iterator[tuple[bytes | None, bytes]]:
        lines = keyed_lines(path, key_field)
        while True:
            try:
                _, key, value = next(lines)
            except StopIteration:
                return
            except ProduceError:
                if not skip_bad:
                    raise
                report.skipped += 1
                continue
            yield key, value

    producer = make_producer(bootstrap)
    try:
        report.sent = publish(producer, topic, records(), total, progress)
    finally:
        producer.close()
    return report
