"""``streamrec demo``: the whole system on this machine, watching recommendations change live.

Starts an embedded broker and Valkey on free loopback ports, a worker process, publishes a
generated news catalogue and a stream of users with planted interests, and prints a few users'
recommendations with their freshness. Ctrl-C (or the end of ``duration``) stops everything.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import orjson
import redis
from tqdm import tqdm

from state.redis_store import Keys
from streams.produce import make_producer
from streams.records import (
    DEAD_LETTERS,
    EVENTS,
    FEEDBACK,
    ITEM_VECTORS,
    ITEMS,
    MODEL_DRIFT,
    MODEL_UPDATES,
)
from streams.services import EmbeddedStack, TopicSpec, create_topics, free_port
from streams.synthetic import SyntheticWorld, events, make_world
from streams.worker_process import WorkerProcess

WATCHED = 3


def topic_specs(partitions: int, prefix: str = "") -> dict[str, TopicSpec]:
    """Every topic streamrec uses, with its partitioning and compaction."""
    return {
        prefix + ITEMS: TopicSpec(partitions, compacted=True),
        prefix + EVENTS: TopicSpec(partitions),
        prefix + FEEDBACK: TopicSpec(partitions),
        prefix + ITEM_VECTORS: TopicSpec(partitions, compacted=True),
        prefix + MODEL_UPDATES: TopicSpec(1),
        prefix + MODEL_DRIFT: TopicSpec(1),
        prefix + DEAD_LETTERS: TopicSpec(1),
    }


def worker_env(
    broker_url: str, redis_url: str, data_dir: Path, partitions: int, **extra: str
) -> dict[str, str]:
    """Environment for a worker child process pointed at the given services."""
    return {
        "STREAMREC_BROKER": broker_url,
        "STREAMREC_REDIS_URL": redis_url,
        "STREAMREC_DATA_DIR": str(data_dir),
        "STREAMREC_PARTITIONS": str(partitions),
        **extra,
    }


def wait_for_items(
    client: redis.Redis,
    keys: Keys,
    item_ids: list[str],
    timeout_s: float = 600.0,
    progress: bool = True,
) -> None:
    """Block until every item has a vector in Redis (the worker encoded and shared it)."""
    bar = tqdm(total=len(item_ids), desc="encoding items", unit="item", disable=not progress)
    remaining = list(item_ids)
    deadline = time.monotonic() + timeout_s
    while remaining and time.monotonic() < deadline:
        pipe = client.pipeline(transaction=False)
        for item in remaining:
            pipe.exists(keys.item(item))
        found = pipe.execute()
        done = sum(found)
        remaining = [i for i, ok in zip(remaining, found, strict=True) if not ok]
        bar.update(done)
        if remaining:
            time.sleep(0.5)
    bar.close()
    if remaining:
        raise TimeoutError(f"{len(remaining)} items still not encoded after {timeout_s}s")


def publish_items(bootstrap: list[str], topic: str, world: SyntheticWorld) -> None:
    producer = make_producer(bootstrap)
    try:
        for item in tqdm(world.items, desc="publishing items", unit="item"):
            producer.send(topic, key=item["item_id"].encode(), value=orjson.dumps(item))
        producer.flush()
    finally:
        producer.close()


def show(
    client: redis.Redis,
    keys: Keys,
    world: SyntheticWorld,
    users: list[str],
    produced_at: dict[str, list[float]],
) -> None:
    """Print each watched user's top 5 with categories, source and freshness.

    Freshness is measured for the newest event the list reflects: ``sr:user:{u}`` counts the
    events applied, so the n-th produce time of the user is the one its ``updated_at`` answers.
    """
    print(f"\n--- {time.strftime('%H:%M:%S')} ---")
    for user in users:
        top = client.zrevrange(keys.recs(user), 0, 4, withscores=True)
        raw_meta: dict[Any, Any] = cast(Any, client.hgetall(keys.recs_meta(user)))
        meta = {_text(k): _text(v) for k, v in raw_meta.items()}
        ranked = [(_text(i), float(s)) for i, s in cast(list[tuple[bytes, float]], top)]
        cats = [world.category_of.get(i, "?") for i, _ in ranked]
        applied = int(cast(Any, client.hget(keys.user(user), "events")) or 0)
        sent = produced_at.get(user, [])
        fresh = ""
        if meta.get("updated_at") and 0 < applied <= len(sent):
            lag_ms = int(meta["updated_at"]) - sent[applied - 1] * 1000
            fresh = f"freshness {lag_ms:.0f} ms"
            if applied < len(sent):
                fresh += f" ({len(sent) - applied} newer events in flight)"
        print(
            f"{user} likes {'+'.join(world.users[user])}: source={meta.get('source', 'popular')} "
            f"{fresh}"
        )
        for (item, score), cat in zip(ranked, cats, strict=True):
            title = _text(client.hget(keys.item(item), "title") or b"")
            print(f"    {score:6.3f} [{cat:<10}] {item} {title[:60]}")


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def run_demo(users: int, n_items: int, rate: float, duration_s: float, broker: str) -> int:
    """Run the demo; return the process exit code."""
    partitions = 4
    with (
        tempfile.TemporaryDirectory(prefix="streamrec-demo-") as tmp,
        EmbeddedStack(Path(tmp), broker=broker) as stack,
    ):
        print(f"broker {stack.broker_url}  redis {stack.redis_url}")
        create_topics(stack.bootstrap, topic_specs(partitions))
        port = free_port()
        worker = WorkerProcess(
            worker_env(stack.broker_url, stack.redis_url, Path(tmp) / "w0", partitions),
            Path(tmp) / "worker.log",
            port,
        )
        try:
            worker.start()
            print("starting worker ...")
            took = worker.wait_ready()
            print(f"worker ready in {took:.1f}s (GET http://127.0.0.1:{port}/recs/USER?k=10)")
            world = make_world(n_items, users)
            publish_items([stack.bootstrap], ITEMS, world)
            client = redis.Redis.from_url(stack.redis_url)
            keys = Keys()
            wait_for_items(client, keys, [i["item_id"] for i in world.items])
            while worker.stats().get("catalogue_items", 0) < len(world.items):
                time.sleep(0.1)
            watched = list(world.users)[:WATCHED]
            stream_events(stack.bootstrap, world, rate, duration_s, client, keys, watched)
            stats = worker.stats()
            print(f"\nworker stats: {orjson.dumps(stats).decode()}")
        except KeyboardInterrupt:
            print("\nstopping ...")
        finally:
            worker.stop()
    return 0


def stream_events(
    bootstrap: str,
    world: SyntheticWorld,
    rate: float,
    duration_s: float,
    client: redis.Redis,
    keys: Keys,
    watched: list[str],
) -> None:
    """Publish events at ``rate``/s, watched users getting a share, printing every 2 s."""
    producer = make_producer([bootstrap])
    produced_at: dict[str, list[float]] = {u: [] for u in watched}
    t0 = time.monotonic()
    last_show = t0
    sent = 0
    # Watched users get every 10th event so their lists visibly move.
    stream = events(world, 10**9, start_ms=int(time.time() * 1000))
    focus = events(world, 10**9, seed=3, start_ms=int(time.time() * 1000), users=watched)
    with contextlib.closing(producer):
        while duration_s <= 0 or time.monotonic() - t0 < duration_s:
            ev = next(focus) if sent % 10 == 0 else next(stream)
            ev["ts"] = int(time.time() * 1000)
            producer.send(EVENTS, key=ev["user_id"].encode(), value=orjson.dumps(ev))
            if ev["user_id"] in watched:
                produced_at[ev["user_id"]].append(time.time())
            sent += 1
            ahead = sent / rate - (time.monotonic() - t0)
            if ahead > 0:
                producer.flush()
                time.sleep(ahead)
            if time.monotonic() - last_show >= 2.0:
                producer.flush()
                show(client, keys, world, watched, produced_at)
                last_show = time.monotonic()
        producer.flush()
    print(f"\npublished {sent} events in {time.monotonic() - t0:.0f}s")
