"""The embedded services give the suite what it relies on: topics, records, Redis, restarts."""

from __future__ import annotations

import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import redis
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType

from streams.bench import _bare_consume
from streams.gap_repair import GapRepair
from streams.services import EmbeddedStack, ServiceError, Tansu, TopicSpec, create_topics

if TYPE_CHECKING:  # conftest is not importable under --import-mode=importlib
    from conftest import Stack

# Tansu completes a group's first join only after about half the session time-out (~23 s with
# kafka-python's defaults); these settings keep it near 3 s and change nothing on Apache Kafka.
GROUP_TIMING = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 2000}
MAX_REQUEST_BYTES = 4 * 1024 * 1024


def produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> dict[int, int]:
    """Send ``records`` (acks=all); return each partition's next offset after them."""
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, acks="all", max_request_size=MAX_REQUEST_BYTES
    )
    try:
        sent = [producer.send(topic, key=key, value=value) for key, value in records]
        producer.flush(30)
        ends: dict[int, int] = {}
        for future in sent:
            meta = future.get(30)
            ends[meta.partition] = max(ends.get(meta.partition, 0), meta.offset + 1)
        return ends
    finally:
        producer.close()


def consume(
    bootstrap: str, topic: str, count: int, group: str | None = None, **options: Any
) -> list[tuple[bytes, bytes]]:
    """Read ``count`` records through ``group`` (then commit), or from the start without one."""
    settings: dict[str, Any] = {
        "auto_offset_reset": "earliest",
        "enable_auto_commit": False,
        "consumer_timeout_ms": 30_000,
        **GROUP_TIMING,
        **options,
    }
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, **settings)
    try:
        if group is None:
            parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
            consumer.assign(parts)
            consumer.seek_to_beginning(*parts)
        else:
            consumer.subscribe([topic])
        got: list[tuple[bytes, bytes]] = []
        for message in consumer:
            got.append((message.key, message.value))
            if len(got) == count:
                break
        if group is not None:
            consumer.commit()
        return got
    finally:
        consumer.close()


def committed(bootstrap: str, topic: str, group: str) -> dict[int, int]:
    """``group``'s committed offset per partition of ``topic`` (read without joining the group)."""
    # Not compared with end_offsets(): Tansu answers ListOffsets(latest) with the last batch's
    # base offset + 1, short of the real end whenever a batch held several records.
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        return {tp.partition: offset for tp in parts if (offset := consumer.committed(tp))}
    finally:
        consumer.close()


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port another socket holds (bound, not listening, so probes fail fast)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def test_embedded_services_listen_on_loopback(stack: Stack) -> None:
    if stack.kind == "external":
        pytest.skip("external services are wherever STREAMREC_BROKER points")
    assert stack.broker_url == f"kafka://{stack.bootstrap}"
    assert stack.bootstrap.startswith("127.0.0.1:")
    assert stack.redis_url.startswith("redis://127.0.0.1:")


def test_redis_answers_and_starts_empty(redis_client: redis.Redis) -> None:
    assert redis_client.ping()
    assert redis_client.dbsize() == 0
    redis_client.set("sr:probe", b"1")
    assert redis_client.get("sr:probe") == b"1"


def test_topics_are_created_idempotently_and_records_round_trip(
    stack: Stack, topic_names: str
) -> None:
    events, items = topic_names + "events", topic_names + "items"
    specs = {events: TopicSpec(3), items: TopicSpec(2, compacted=True)}
    create_topics(stack.bootstrap, specs)
    create_topics(stack.bootstrap, specs)  # a second run must be harmless

    records = [(f"u{i % 3}".encode(), f'{{"n": {i}}}'.encode()) for i in range(9)]
    ends = produce(stack.bootstrap, events, records)
    got = consume(stack.bootstrap, events, len(records), group=topic_names + "g")
    assert sorted(got) == sorted(records)
    for key in {k for k, _ in records}:  # one key, one partition: order is kept
        assert [v for k, v in got if k == key] == [v for k, v in records if k == key]
    # The group committed everything, so a restarted member has nothing left to read.
    assert committed(stack.bootstrap, events, topic_names + "g") == ends

    produce(stack.bootstrap, items, [(b"i1", b"v1"), (b"i1", b"v2")])
    assert consume(stack.bootstrap, items, 2)[-1] == (b"i1", b"v2")


async def test_the_benchmarks_bare_consumer_counts_each_record_once(
    stack: Stack, topic_names: str
) -> None:
    """It once counted a fetch's records once per partition in the fetch (rate up to 4x)."""
    topic = topic_names + "events"
    create_topics(stack.bootstrap, {topic: TopicSpec(4)})
    produce(stack.bootstrap, topic, [(f"u{i}".encode(), b'{"n": 1}') for i in range(400)])
    seen, seconds = await _bare_consume(stack.bootstrap, 10**6, topic, partitions=4)
    assert seen == 400 and seconds > 0


async def test_gap_repair_knows_the_real_log_end_once_it_has_fetched(
    stack: Stack, topic_names: str
) -> None:
    """Tansu lists a partition's end as its newest batch's base offset + 1 (1 for one batch
    of 10); gap repair's end is never below a fetch's high watermark, on either broker."""
    events = topic_names + "events"
    create_topics(stack.bootstrap, {events: TopicSpec(1)})
    ends = produce(stack.bootstrap, events, [(b"u1", b"%d" % n) for n in range(10)])
    assert ends == {0: 10}
    gaps = GapRepair([stack.bootstrap], topic_names + "g", events)
    try:
        listed = (await gaps.end_offsets({0}))[0]
        assert 1 <= listed <= 10
        fetched = await gaps.fetch(0, listed - 1, listed)  # one record, as a catch-up starts
        assert [r.message.offset for r in fetched] == [listed - 1]
        assert await gaps.end_offsets({0}) == {0: 10}
    finally:
        await gaps.close()


def test_compacted_topic_has_compaction_configured(stack: Stack, topic_names: str) -> None:
    items = topic_names + "items"
    create_topics(stack.bootstrap, {items: TopicSpec(1, compacted=True)})
    admin = KafkaAdminClient(bootstrap_servers=stack.bootstrap)
    try:
        # All configs, not just cleanup.policy: Tansu drops the connection when asked by name.
        found = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, items)])
    finally:
        admin.close()
    configs = found["topic"][items]
    if not configs:
        pytest.skip("this broker reports no topic configs (Tansu)")
    assert configs["cleanup.policy"]["value"] == "compact"


def test_existing_topic_with_other_partition_count_is_refused(
    stack: Stack, topic_names: str
) -> None:
    create_topics(stack.bootstrap, {topic_names + "events": TopicSpec(2)})
    with pytest.raises(ServiceError, match="has 2 partitions but 4 are configured"):
        create_topics(stack.bootstrap, {topic_names + "events": TopicSpec(4)})


def test_one_megabyte_record_reaches_a_consumer(stack: Stack, topic_names: str) -> None:
    # The dead-letter tests route a ~1 MB bad record; the broker must take and serve it.
    topic = topic_names + "dead-letters"
    create_topics(stack.bootstrap, {topic: TopicSpec(1)})
    big = bytes(range(256)) * (1_000_000 // 256) + b"x" * (1_000_000 % 256)
    produce(stack.bootstrap, topic, [(b"bad", big)])
    assert consume(stack.bootstrap, topic, 1) == [(b"bad", big)]


def test_apache_kafka_keeps_records_and_offsets_across_sigkill(
    stack: Stack, topic_names: str
) -> None:
    kafka = stack.kafka
    if kafka is None:
        pytest.skip(f"needs the embedded Apache Kafka broker, this run uses {stack.kind}")
    topic, group = topic_names + "events", topic_names + "g"
    create_topics(stack.bootstrap, {topic: TopicSpec(1)})
    records = [(b"u", f"{i}".encode()) for i in range(50)]
    produce(stack.bootstrap, topic, records)
    assert consume(stack.bootstrap, topic, 20, group=group) == records[:20]

    kafka.restart(signal.SIGKILL)

    assert kafka.bootstrap == stack.bootstrap  # same port: clients reconnect by themselves
    assert consume(stack.bootstrap, topic, 50) == records
    assert consume(stack.bootstrap, topic, 30, group=group) == records[20:]


def test_failed_start_reports_the_broker_log(tmp_path: Path, busy_port: int) -> None:
    broker = Tansu(tmp_path, port=busy_port, start_timeout_s=15)
    with pytest.raises(ServiceError, match=r"(?s)tansu exited during start-up.*Address"):
        broker.start()
    broker.stop()


def test_stack_stops_what_it_started_when_a_part_fails(tmp_path: Path, busy_port: int) -> None:
    embedded = EmbeddedStack(tmp_path, broker="tansu")
    embedded.broker = Tansu(tmp_path / "tansu", port=busy_port, start_timeout_s=15)
    with pytest.raises(ServiceError):
        embedded.start()
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(embedded.redis_url, socket_connect_timeout=1).ping()
