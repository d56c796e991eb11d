"""Helpers for integration tests: an isolated deployment (topics, key prefix, group) per test."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import redis
from kafka import KafkaConsumer, TopicPartition

from state.redis_store import Keys
from streams.demo import publish_items, topic_specs, wait_for_items, worker_env
from streams.produce import make_producer, publish
from streams.records import DEAD_LETTERS, EVENTS, ITEMS
from streams.services import create_topics, free_port
from streams.synthetic import SyntheticWorld
from streams.worker_process import WorkerProcess

PARTITIONS = 4


@dataclass
class Deployment:
    """One streamrec deployment on the shared services, isolated by name prefixes."""

    bootstrap: str
    broker_url: str
    redis_url: str
    workdir: Path
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    workers: list[WorkerProcess] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.topic_prefix = f"t{self.tag}-"
        self.group = f"streamrec-{self.tag}"  # the workers' consumer group (STREAMREC_APP_ID)
        self.keys = Keys(f"sr{self.tag}:")
        self.redis = redis.Redis.from_url(self.redis_url)
        create_topics(self.bootstrap, topic_specs(PARTITIONS, self.topic_prefix))

    def topic(self, name: str) -> str:
        return self.topic_prefix + name

    def env(self, data_dir: Path, **extra: str) -> dict[str, str]:
        return worker_env(
            self.broker_url,
            self.redis_url,
            data_dir,
            PARTITIONS,
            STREAMREC_TOPIC_PREFIX=self.topic_prefix,
            STREAMREC_REDIS_PREFIX=self.keys.prefix,
            STREAMREC_APP_ID=self.group,
            STREAMREC_TOP_K="20",
            **extra,
        )

    def start_worker(self, name: str = "w0", wait: bool = True, **extra: str) -> WorkerProcess:
        data_dir = self.workdir / name
        worker = WorkerProcess(
            self.env(data_dir, **extra), self.workdir / f"{name}.log", free_port()
        ).start()
        self.workers.append(worker)
        if wait:
            worker.wait_ready()
        return worker

    def start_workers(self, *names: str) -> list[WorkerProcess]:
        """Start several workers at once (they load the model in parallel); wait for all."""
        started = [self.start_worker(name, wait=False) for name in names]
        for worker in started:
            worker.wait_ready()
        return started

    def forget_users(self) -> None:
        """Delete every ``sr:user`` and ``sr:recs`` key: only the changelog still knows users."""
        for pattern in (self.keys.user("*"), self.keys.recs("*") + "*"):
            for key in self.redis.scan_iter(match=pattern, count=1000):
                self.redis.delete(key)

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.redis.close()

    def publish_world(self, world: SyntheticWorld) -> None:
        publish_items([self.bootstrap], self.topic(ITEMS), world)
        wait_for_items(
            self.redis,
            self.keys,
            [i["item_id"] for i in world.items],
            timeout_s=300,
            progress=False,
        )
        # Events ranked before every worker's catalogue holds the items would rank against a
        # partial catalogue, so wait for the workers too (item-vectors lags sr:item slightly).
        deadline = time.monotonic() + 60
        for worker in self.workers:
            while worker.stats().get("catalogue_items", 0) < len(world.items):
                assert time.monotonic() < deadline, "worker catalogue did not catch up"
                time.sleep(0.1)

    def publish_events(
        self, records: Iterable[dict[str, Any] | tuple[bytes | None, bytes]]
    ) -> Counter[str]:
        """Publish events (dicts keyed by user, or raw ``(key, value)``); count per user."""
        counts: Counter[str] = Counter()

        def pairs() -> Iterator[tuple[bytes | None, bytes]]:
            for record in records:
                if isinstance(record, dict):
                    counts[record["user_id"]] += 1
                    yield record["user_id"].encode(), orjson.dumps(record)
                else:
                    yield record

        # ``publish`` raises if the broker refused any: the counts are of acknowledged records.
        self.publish(EVENTS, pairs())
        return counts

    def publish(self, topic: str, records: Iterable[tuple[bytes | None, bytes]]) -> None:
        """Publish raw ``(key, value)`` records to the deployment's ``topic``."""
        producer = make_producer([self.bootstrap])
        try:
            publish(producer, self.topic(topic), records, progress=False)
        finally:
            producer.close()

    def user_events(self, users: Iterable[str]) -> dict[str, int]:
        pipe = self.redis.pipeline(transaction=False)
        ordered = list(users)
        for user in ordered:
            pipe.hget(self.keys.user(user), "events")
        return {u: int(v or 0) for u, v in zip(ordered, pipe.execute(), strict=True)}

    def wait_counts(
        self, expected: Counter[str], timeout_s: float = 180.0, settle_s: float = 3.0
    ) -> dict[str, int]:
        """Wait until Redis counts reach ``expected``, then a little longer to catch overshoot."""
        deadline = time.monotonic() + timeout_s
        counts = self.user_events(expected)
        while time.monotonic() < deadline:
            counts = self.user_events(expected)
            if all(counts[u] >= n for u, n in expected.items()):
                time.sleep(settle_s)
                return self.user_events(expected)
            time.sleep(0.5)
        return counts

    def log_counts(self, total: int, timeout_s: float = 60.0) -> Counter[str]:
        """Records per key in the ``events`` log, read from the start until ``total`` are in."""
        parts = [TopicPartition(self.topic(EVENTS), p) for p in range(PARTITIONS)]
        consumer = self._from_start(parts)
        counts: Counter[str] = Counter()
        deadline = time.monotonic() + timeout_s
        try:
            while counts.total() < total and time.monotonic() < deadline:
                for record in consumer:
                    counts[record.key.decode()] += 1
        finally:
            consumer.close()
        return counts

    def _from_start(self, parts: list[TopicPartition], **config: Any) -> KafkaConsumer:
        """A group-less consumer of ``parts`` from their first record (1 s idle timeout)."""
        consumer = KafkaConsumer(
            bootstrap_servers=self.bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            consumer_timeout_ms=1000,
            **config,
        )
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        return consumer

    def top(self, user: str, k: int = 10) -> list[str]:
        return [m.decode() for m in self.redis.zrevrange(self.keys.recs(user), 0, k - 1)]

    def dead_letters(self, expected: int, timeout_s: float = 60.0) -> list[Any]:
        consumer = self._from_start(
            [TopicPartition(self.topic(DEAD_LETTERS), 0)],
            fetch_max_bytes=16 * 1024 * 1024,
            max_partition_fetch_bytes=16 * 1024 * 1024,
        )
        records: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while len(records) < expected and time.monotonic() < deadline:
            records.extend(consumer)
        consumer.close()
        return records
