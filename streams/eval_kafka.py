"""``streamrec eval --through-kafka``: the same replay through a real broker, worker and Redis.

Each event is produced to the ``events`` topic and waited for until the worker has applied it
(``sr:user:{u}`` counts it); before a scored event the user's list is read from Redis exactly
as an app would (personal, else ``sr:popular``). Beside it runs an in-process mirror of the
worker — the same :class:`~state.engine.Engine`, ranking each user after each of their events,
as the worker does — so the two paths can be compared list by list.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import orjson
import redis
from tqdm import tqdm

from state.baselines import to_interaction
from state.catalogue import Catalogue
from state.datasets import ImpressionList, Replay, ReplayEvent, is_test_positive
from state.engine import Engine, EngineConfig
from state.evaluation import build_catalogue
from state.interest import CONSUMED_TYPES, UserState
from state.redis_store import Keys
from streams.demo import topic_specs, worker_env
from streams.engine_config import engine_config
from streams.evaluate import encode_items
from streams.produce import make_producer
from streams.records import EVENTS, ITEMS
from streams.services import EmbeddedStack, create_topics, free_port
from streams.settings import Settings
from streams.worker_process import WorkerProcess

K = 10
APPLY_TIMEOUT_S = 60.0


@dataclass
class KafkaAgreement:
    """How the Kafka + Redis path compares with the in-process mirror on the scored events."""

    tests: int = 0
    identical: int = 0
    overlap: list[float] = field(default_factory=list)
    kafka_hits: int = 0
    mirror_hits: int = 0
    events: int = 0
    #: ``(user, via Kafka, in-process)`` for every scored event whose top-10 lists differ.
    mismatches: list[tuple[str, list[str], list[str]]] = field(default_factory=list)

    def as_metrics(self) -> dict[str, float]:
        n = max(self.tests, 1)
        return {
            "kafka_events": float(self.events),
            "kafka_tests": float(self.tests),
            "kafka_identical@10": self.identical / n,
            "kafka_overlap@10": sum(self.overlap) / n,
            "kafka_hr@10": self.kafka_hits / n,
            "mirror_hr@10": self.mirror_hits / n,
        }


class WorkerMirror:
    """What a worker would have written to Redis, computed in-process.

    The worker ranks a user when it applies their event; an app reads that list until the
    user's next event, and falls back to decayed popularity when the list is empty.
    """

    def __init__(self, catalogue: Catalogue, config: EngineConfig, top_k: int) -> None:
        self.engine = Engine(catalogue, config)
        self.top_k = top_k
        self.states: dict[str, UserState] = {}
        self.lists: dict[str, list[str]] = {}

    def apply(self, event: ReplayEvent, offset: int) -> None:
        state = self.states.setdefault(event.user_id, self.engine.new_state())
        interaction = to_interaction(event, offset)
        self.engine.apply(state, interaction)
        ranked = self.engine.rank([(event.user_id, state)], self.top_k)[0]
        self.lists[event.user_id] = [i for i, _ in ranked.items]

    def read(self, user: str, k: int) -> list[str]:
        personal = self.lists.get(user, [])
        if personal:
            return personal[:k]
        snapshot = self.engine.catalogue.snapshot()
        return [snapshot.ids[r] for r in self.engine.popularity.top(len(snapshot), k)]


def _events(replay: Replay, limit: int) -> Iterator[ReplayEvent]:
    n = 0
    for step in replay.steps:
        for event in step.events() if isinstance(step, ImpressionList) else [step]:
            if n >= limit:
                return
            n += 1
            yield event


def _read_redis(client: redis.Redis, keys: Keys, user: str, k: int) -> list[str]:
    raw = cast(list[bytes], client.zrevrange(keys.recs(user), 0, k - 1))
    if not raw:
        raw = cast(list[bytes], client.zrevrange(keys.popular(), 0, k - 1))
    return [m.decode() for m in raw]


def _wait_applied(client: redis.Redis, keys: Keys, user: str, count: int) -> None:
    deadline = time.monotonic() + APPLY_TIMEOUT_S
    while time.monotonic() < deadline:
        applied = int(cast(Any, client.hget(keys.user(user), "events")) or 0)
        if applied >= count:
            return
        time.sleep(0.005)
    raise TimeoutError(f"the worker did not apply event {count} of user {user!r} in time")


def _event_json(event: ReplayEvent, offset: int) -> bytes:
    doc: dict[str, Any] = {
        "event_id": f"eval-{offset}",
        "user_id": event.user_id,
        "type": event.type,
        "ts": event.ts_ms,
    }
    if event.item_id is not None:
        doc["item_id"] = event.item_id
    if event.dwell_ms is not None:
        doc["dwell_ms"] = event.dwell_ms
    if event.position is not None:
        doc["context"] = {"position": event.position}
    return orjson.dumps(doc)


def _item_json(item: Any) -> bytes:
    doc = {"item_id": item.item_id, "title": item.title, "category": item.category}
    if item.created_ms is not None:
        doc["created_at"] = item.created_ms
    if item.body:
        doc["body"] = item.body
    if item.tags:
        doc["tags"] = list(item.tags)
    return orjson.dumps(doc)


def compare_on(
    replay: Replay,
    settings: Settings,
    broker_url: str,
    redis_url: str,
    work_dir: Path,
    max_events: int = 300,
    progress: bool = True,
) -> KafkaAgreement:
    """Replay the first ``max_events`` events through the broker at ``broker_url``."""
    tag = uuid.uuid4().hex[:8]
    prefix, keys = f"eval{tag}-", Keys(f"sr{tag}:")
    bootstrap = broker_url.removeprefix("kafka://").split(";")[0]
    create_topics(bootstrap, topic_specs(1, prefix))
    env = worker_env(
        broker_url,
        redis_url,
        work_dir / "worker",
        1,
        STREAMREC_TOPIC_PREFIX=prefix,
        STREAMREC_REDIS_PREFIX=keys.prefix,
        STREAMREC_APP_ID=f"streamrec-eval-{tag}",
        STREAMREC_TOP_K=str(settings.top_k),
        STREAMREC_WEIGHT_CONTENT=str(settings.weight_content),
        STREAMREC_WEIGHT_COLLAB=str(settings.weight_collab),
        STREAMREC_WEIGHT_POPULAR=str(settings.weight_popular),
        STREAMREC_INTEREST_HALF_LIFE_S=str(settings.interest_half_life_s),
        STREAMREC_POPULARITY_HALF_LIFE_S=str(settings.popularity_half_life_s),
    )
    worker = WorkerProcess(env, work_dir / "worker.log", free_port()).start()
    client = redis.Redis.from_url(redis_url)
    producer = make_producer([bootstrap])
    result = KafkaAgreement()
    try:
        vectors, version = encode_items(replay.items, settings, progress)
        mirror = WorkerMirror(
            build_catalogue(replay.items, vectors, version), engine_config(settings), settings.top_k
        )
        worker.wait_ready()
        for item in replay.items:
            producer.send(prefix + ITEMS, key=item.item_id.encode(), value=_item_json(item))
        producer.flush()
        deadline = time.monotonic() + 600
        while worker.stats().get("catalogue_items", 0) < len(replay.items):
            if time.monotonic() > deadline:
                raise TimeoutError("the worker did not load the catalogue in 10 minutes")
            time.sleep(0.2)
        counts: Counter[str] = Counter()
        consumed: dict[str, set[str]] = {}
        events = list(_events(replay, max_events))
        for offset, event in enumerate(tqdm(events, desc="through kafka", disable=not progress)):
            seen = consumed.setdefault(event.user_id, set())
            if is_test_positive(event) and event.item_id in mirror.engine.catalogue:
                if event.item_id not in seen:
                    via_kafka = _read_redis(client, keys, event.user_id, K)
                    in_process = mirror.read(event.user_id, K)
                    result.tests += 1
                    result.identical += via_kafka == in_process
                    if via_kafka != in_process:
                        result.mismatches.append((event.user_id, via_kafka, in_process))
                    longest = max(len(via_kafka), len(in_process))
                    shared = len(set(via_kafka) & set(in_process))
                    result.overlap.append(shared / longest if longest else 1.0)
                    result.kafka_hits += event.item_id in via_kafka
                    result.mirror_hits += event.item_id in in_process
            if event.item_id is not None and event.type in CONSUMED_TYPES:
                seen.add(event.item_id)
            producer.send(
                prefix + EVENTS, key=event.user_id.encode(), value=_event_json(event, offset)
            )
            producer.flush()
            mirror.apply(event, offset)
            counts[event.user_id] += 1
            _wait_applied(client, keys, event.user_id, counts[event.user_id])
            result.events += 1
    finally:
        producer.close()
        client.close()
        worker.stop()
    return result


def replay_through_kafka(
    replay: Replay, settings: Settings, max_events: int = 300, progress: bool = True
) -> KafkaAgreement:
    """Start an embedded broker and Valkey, run one worker, and compare (see :func:`compare_on`)."""
    with (
        tempfile.TemporaryDirectory(prefix="streamrec-eval-") as tmp,
        EmbeddedStack(Path(tmp) / "services") as stack,
    ):
        return compare_on(
            replay, settings, stack.broker_url, stack.redis_url, Path(tmp), max_events, progress
        )
