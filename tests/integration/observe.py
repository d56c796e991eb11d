"""What the durability tests watch while they break things: acked events, Redis progress, lag.

``SteadyStream`` produces events at a fixed rate in a thread and counts what the broker
acknowledged, per user and per partition. ``Watcher`` samples every user's ``sr:user`` events
count and ``sr:recs:{u}:meta`` ``updated_at`` and records any step backwards, and how long events
waited without any being applied (the processing pause). ``LagProbe`` reads the group's lag the
way an operator does: log end offsets minus committed offsets.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from deployment import Deployment
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError

from streams.records import EVENTS


class SteadyStream(threading.Thread):
    """Publishes ``records`` at ``rate_per_s`` and counts acknowledged ones (thread-safe)."""

    def __init__(self, dep: Deployment, records: Sequence[dict[str, Any]], rate_per_s: float):
        super().__init__(name="steady-stream", daemon=True)
        self.dep = dep
        self.records = records
        self.rate_per_s = rate_per_s
        self.sent = 0
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._acked: Counter[str] = Counter()
        self.partition_of: dict[str, int] = {}
        self._producer = KafkaProducer(
            bootstrap_servers=dep.bootstrap,
            acks="all",
            # Retries must not duplicate an event: a duplicate is a second record, which the
            # workers rightly apply, and the exactly-once count would fail for the wrong reason.
            enable_idempotence=True,
            linger_ms=5,
            delivery_timeout_ms=120_000,
        )

    def acked(self) -> Counter[str]:
        """Events per user the broker has acknowledged so far."""
        with self._lock:
            return Counter(self._acked)

    def acked_total(self) -> int:
        with self._lock:
            return self._acked.total()

    def _on_ack(self, user: str, meta: Any) -> None:
        with self._lock:
            self._acked[user] += 1
            self.partition_of[user] = meta.partition

    def _on_error(self, exc: BaseException) -> None:
        with self._lock:
            self.errors.append(exc)

    def run(self) -> None:
        started = time.monotonic()
        topic = self.dep.topic(EVENTS)
        try:
            for n, record in enumerate(self.records):
                user = record["user_id"]
                future = self._producer.send(topic, key=user.encode(), value=orjson.dumps(record))
                future.add_callback(lambda meta, user=user: self._on_ack(user, meta))
                future.add_errback(self._on_error)
                self.sent = n + 1
                ahead = self.sent / self.rate_per_s - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
            self._producer.flush(120)
        finally:
            self._producer.close(30)

    def finish(self, timeout_s: float = 180.0) -> Counter[str]:
        """Wait until every event is sent and acknowledged; return the per-user counts."""
        self.join(timeout_s)
        assert not self.is_alive(), "the stream did not finish"
        assert not self.errors, f"the broker refused events: {self.errors[:3]}"
        acked = self.acked()
        assert acked.total() == len(self.records)
        return acked


@dataclass
class Sample:
    t: float
    applied: int
    stalled_s: float  # how long events have waited with none applied, anywhere
    stalled_partition_s: float  # the longest any one partition's events have waited so


@dataclass
class Watcher:
    """Samples Redis every ``interval_s`` in a thread; see the module docstring."""

    dep: Deployment
    users: list[str]
    stream: SteadyStream | None = None
    interval_s: float = 0.1
    regressions: list[str] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._guarded, name="watcher", daemon=True)
        self._last: dict[str, tuple[int, int]] = {}
        self._failure: BaseException | None = None

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        # A watcher that died early would let every check below pass unwatched.
        if exc_type is None and self._failure is not None:
            raise AssertionError(f"the watcher failed: {self._failure!r}") from self._failure

    def _guarded(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # reported by __exit__ in the test's thread
            self._failure = exc

    def _read(self) -> dict[str, tuple[int, int]]:
        pipe = self.dep.redis.pipeline(transaction=False)
        for user in self.users:
            pipe.hget(self.dep.keys.user(user), "events")
            pipe.hget(self.dep.keys.recs_meta(user), "updated_at")
        values = pipe.execute()
        return {
            user: (int(values[2 * n] or 0), int(values[2 * n + 1] or 0))
            for n, user in enumerate(self.users)
        }

    def _run(self) -> None:
        since: dict[int | None, float] = {}  # partition (None: all) -> waiting since
        done: dict[int | None, int] = {}
        while not self._stop.is_set():
            now = time.monotonic()
            seen = self._read()
            for user, (events, updated) in seen.items():
                old_events, old_updated = self._last.get(user, (0, 0))
                if events < old_events or updated < old_updated:
                    self.regressions.append(
                        f"{user}: events {old_events} -> {events}, "
                        f"updated_at {old_updated} -> {updated}"
                    )
            self._last = seen
            applied: dict[int | None, int] = Counter()
            acked: dict[int | None, int] = Counter()
            if self.stream is not None:
                partition_of = dict(self.stream.partition_of)
                for user, count in self.stream.acked().items():
                    for part in (None, partition_of.get(user)):
                        acked[part] += count
                        applied[part] += seen.get(user, (0, 0))[0]
            stalls: dict[int | None, float] = {}
            for part in acked:
                if acked[part] <= applied[part] or applied[part] > done.get(part, -1):
                    since[part] = now  # nothing waiting, or progress: the clock restarts
                done[part] = applied[part]
                stalls[part] = now - since.get(part, now)
            self.samples.append(
                Sample(
                    now,
                    sum(e for e, _ in seen.values()),
                    stalls.get(None, 0.0),
                    max((s for p, s in stalls.items() if p is not None), default=0.0),
                )
            )
            self._stop.wait(self.interval_s)

    def longest_pause(self, start: float, end: float = float("inf")) -> tuple[float, float]:
        """Longest (all partitions, one partition) wait without progress in ``[start, end]``."""
        window = [s for s in self.samples if start <= s.t <= end]
        return (
            max((s.stalled_s for s in window), default=0.0),
            max((s.stalled_partition_s for s in window), default=0.0),
        )


class LagProbe:
    """``events`` lag of the deployment's worker group (Apache Kafka: exact end offsets)."""

    def __init__(self, dep: Deployment, partitions: Iterable[int]) -> None:
        self.parts = [TopicPartition(dep.topic(EVENTS), p) for p in partitions]
        # Reads the group's committed offsets without joining the group.
        self._consumer = KafkaConsumer(
            bootstrap_servers=dep.bootstrap, group_id=dep.group, enable_auto_commit=False
        )

    def lag(self) -> int:
        """Log end offsets minus the group's committed offsets, summed over partitions."""
        return sum(self.by_partition().values())

    def by_partition(self) -> dict[int, int]:
        ends = self._consumer.end_offsets(self.parts)
        return {tp.partition: ends[tp] - (self._consumer.committed(tp) or 0) for tp in self.parts}

    def wait_zero(self, timeout_s: float = 180.0) -> float:
        """Block until the lag is 0; return the monotonic time it was first seen so."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if self.lag() == 0:
                    return time.monotonic()
            except (KafkaError, OSError):
                pass  # the broker may still be coming back
            assert time.monotonic() < deadline, (
                f"lag not 0 after {timeout_s:.0f}s: {self.by_partition()} per partition"
            )
            time.sleep(0.1)

    def close(self) -> None:
        self._consumer.close()


def group_assignment(dep: Deployment) -> tuple[str, list[set[int]]]:
    """The worker group's state (``Stable``, ...) and each member's ``events`` partitions,
    as the broker's group coordinator reports them."""
    admin = KafkaAdminClient(bootstrap_servers=dep.bootstrap)
    try:
        group = admin.describe_groups([dep.group])[dep.group]
    finally:
        admin.close()
    owned = []
    for member in group["members"]:
        assignment = member["member_assignment"] or {}
        owned.append(
            {
                partition
                for entry in assignment.get("assigned_partitions", [])
                if entry["topic"] == dep.topic(EVENTS)
                for partition in entry["partitions"]
            }
        )
    return str(group["group_state"]), owned
