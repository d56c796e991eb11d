"""``streamrec bench``: one worker's throughput and freshness beside the bare rate of each stage.

Everything runs in one invocation on the embedded services, so the ratios compare like with
like on a noisy machine: ``limit = 1 / sum(1 / stage rate)`` is what one worker could do if it
did nothing but the necessary stages back to back, and ``ratio = pipeline / limit``.
"""

from __future__ import annotations

import asyncio
import random
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import redis
from aiokafka import AIOKafkaConsumer, TopicPartition
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from encoders.bench import bench_encoder, choose_batch_size
from encoders.registry import resolve_model_dir
from encoders.text import TextEncoder
from state.interest import vector_from_bytes
from state.redis_store import Keys
from streams.demo import publish_items, topic_specs, wait_for_items, worker_env
from streams.produce import make_producer
from streams.records import EVENTS, ITEMS
from streams.services import EmbeddedStack, create_topics, free_port
from streams.settings import Settings
from streams.synthetic import events, make_world
from streams.worker_process import WorkerProcess

PARTITIONS = 4
TOP_K = 50
RANK_BATCH = 256
#: Each bare stage is measured this many times; the limit uses the median.
BARE_REPEATS = 3
#: The steady phase's producer sends what fell due every this many seconds.
STEADY_TICK_S = 0.005


def run_bench(
    n_events: int,
    n_items: int,
    n_users: int,
    rate: float,
    quiet: bool = False,
    freshness_s: float = 20.0,
    encoder: bool = True,
) -> dict[str, Any]:
    """Run every measurement and return the figures (keys as documented in the README)."""
    say: Callable[[str], None] = (lambda _msg: None) if quiet else print
    figures: dict[str, Any] = {}
    if encoder:
        say("encoder: batch-size sweep and bare model loop ...")
        figures.update(_encoder_figures())
    with (
        tempfile.TemporaryDirectory(prefix="streamrec-bench-") as tmp,
        EmbeddedStack(Path(tmp)) as stack,
    ):
        create_topics(stack.bootstrap, topic_specs(PARTITIONS))
        world = make_world(n_items, n_users, seed=1)
        env = worker_env(
            stack.broker_url,
            stack.redis_url,
            Path(tmp) / "w",
            PARTITIONS,
            STREAMREC_TOP_K=str(TOP_K),
        )
        say(f"catalogue: {n_items} items -> worker encodes them ...")
        worker = WorkerProcess(env, Path(tmp) / "worker-items.log", free_port()).start()
        try:
            worker.wait_ready()
            publish_items([stack.bootstrap], ITEMS, world)
            client = redis.Redis.from_url(stack.redis_url)
            wait_for_items(client, Keys(), [i["item_id"] for i in world.items], progress=not quiet)
        finally:
            worker.stop()
        say(f"publishing {n_events} events ...")
        payloads = [orjson.dumps(e) for e in events(world, n_events, seed=2)]
        _publish_all(stack.bootstrap, payloads, quiet)
        say(f"bare stages (median of {BARE_REPEATS} runs each) ...")
        figures["raw_consume_events_per_s"] = _median(
            lambda _run: _consume_rate(stack.bootstrap, n_events)
        )
        matrix = _catalogue_matrix(client, [i["item_id"] for i in world.items])
        # With the BLAS threads the worker ranks with (one by default): the library's default,
        # one per core, made bare ranking ~45% faster than the worker's own setting allows.
        with threadpool_limits(Settings().blas_threads or None, user_api="blas"):
            figures["bare_rank_users_per_s"] = _median(lambda _run: _bare_rank(matrix))
        item_ids = [i["item_id"] for i in world.items]
        figures["bare_publish_users_per_s"] = _median(
            lambda run: _bare_publish(client, item_ids, run)
        )
        say("pipeline: one worker drains the backlog ...")
        worker = WorkerProcess(env, Path(tmp) / "worker.log", free_port()).start()
        try:
            worker.wait_ready()
            figures["pipeline_events_per_s"] = _drain_rate(worker, n_events, quiet)
            # Where the worker's time went while draining (wall time per stage, per event).
            stages_s = worker.stats().get("stage_seconds", {})
            figures["pipeline_stage_us_per_event"] = {
                k: round(v * 1e6 / n_events, 1) for k, v in stages_s.items()
            }
            # What the online learners (click model, user groups, EASE's Gram snapshot) cost
            # the event loop, and EASE's refits on their thread.
            on_loop = sum(v for k, v in stages_s.items() if k.startswith(("learn_", "ease_gram")))
            figures["learner_us_per_event"] = round(on_loop * 1e6 / n_events, 1)
            figures["ease_fit_us_per_event"] = round(
                stages_s.get("ease_fit", 0.0) * 1e6 / n_events, 1
            )
            say(f"freshness at a steady {rate:.0f} events/s for {freshness_s:.0f}s ...")
            worker.post_json("/stats/reset")
            before = worker.stats()
            sent = _steady_stream(stack.bootstrap, world, rate, freshness_s)
            stats = _wait_applied(worker, n_events + sent)
            figures.update(_steady_figures(before, stats, sent))
            figures["freshness_p50_ms"] = round(stats.get("freshness_p50_ms", float("nan")), 1)
            figures["freshness_p99_ms"] = round(stats.get("freshness_p99_ms", float("nan")), 1)
            figures["steady_events"] = sent
            # Garbage-collector pauses over the whole run (drain and steady phase).
            figures["gc_pauses_over_100ms"] = int(stats.get("gc_pauses_over_100ms", 0))
        finally:
            worker.stop()
    stages = [
        figures["raw_consume_events_per_s"],
        figures["bare_rank_users_per_s"],
        figures["bare_publish_users_per_s"],
    ]
    figures["limit_events_per_s"] = round(1.0 / sum(1.0 / s for s in stages), 1)
    figures["ratio"] = round(figures["pipeline_events_per_s"] / figures["limit_events_per_s"], 3)
    return {
        k: (round(v, 3 if abs(v) < 10 else 1) if isinstance(v, float) else v)
        for k, v in figures.items()
    }


def _median(rate: Callable[[int], float], runs: int = BARE_REPEATS) -> float:
    """The median of ``rate(run)`` over ``runs`` runs: one short run swung the limit ±5%."""
    return float(np.median([rate(run) for run in range(runs)]))


def _encoder_figures() -> dict[str, Any]:
    from encoders.bench import sample_texts

    encoder = TextEncoder(resolve_model_dir(""), device="auto")
    # 128 texts per candidate keep the sweep under a minute; the comparison uses 256.
    texts = sample_texts(256)
    sweep = choose_batch_size(encoder, texts[:128])
    best = max(sweep, key=lambda b: sweep[b])
    result = bench_encoder(encoder, texts, best)
    return {
        "encoder_items_per_s": result["encoder_items_per_s"],
        "bare_model_items_per_s": result["bare_model_items_per_s"],
        "encoder_ratio": round(result["encoder_ratio"], 3),
        "encoder_batch_size": best,
        "encoder_batch_sweep_items_per_s": {str(b): round(v, 1) for b, v in sweep.items()},
    }


def _publish_all(bootstrap: str, payloads: list[bytes], quiet: bool) -> None:
    producer = make_producer([bootstrap])
    try:
        for payload in tqdm(payloads, desc="events", unit="ev", disable=quiet):
            key = orjson.loads(payload)["user_id"].encode()
            producer.send(EVENTS, key=key, value=payload)
        producer.flush()
    finally:
        producer.close()


async def _bare_consume(
    bootstrap: str, n_events: int, topic: str = EVENTS, partitions: int = PARTITIONS
) -> tuple[int, float]:
    """A group-less aiokafka ``getmany`` loop with orjson parsing over ``topic``.

    Returns ``(events read, seconds)``: it stops after ``n_events`` or at the end of the log.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        seen = 0
        t0 = time.perf_counter()
        while seen < n_events:
            batches = await consumer.getmany(timeout_ms=500, max_records=5000)
            if not batches:
                break
            for messages in batches.values():
                for message in messages:
                    orjson.loads(message.value)
                seen += len(messages)
        return seen, time.perf_counter() - t0
    finally:
        await consumer.stop()


def _consume_rate(bootstrap: str, n_events: int) -> float:
    seen, seconds = asyncio.run(_bare_consume(bootstrap, n_events))
    if seen < n_events:
        raise RuntimeError(f"the bare consumer read {seen} of {n_events} events")
    return seen / seconds


def _catalogue_matrix(client: redis.Redis, item_ids: list[str]) -> np.ndarray:
    keys = Keys()
    pipe = client.pipeline(transaction=False)
    for item in item_ids:
        pipe.hget(keys.item(item), "vec")
    return np.stack([vector_from_bytes(v) for v in pipe.execute() if v])


def _bare_rank(matrix: np.ndarray, rounds: int = 20) -> float:
    """Matrix product + top-K over the same catalogue, in batches of the worker's size."""
    rng = np.random.default_rng(0)
    queries = rng.normal(size=(RANK_BATCH, matrix.shape[1])).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    t0 = time.perf_counter()
    for _ in range(rounds):
        scores = queries @ matrix.T
        top = np.argpartition(-scores, TOP_K - 1, axis=1)[:, :TOP_K]
        np.take_along_axis(scores, top, axis=1).argsort(axis=1)
    return rounds * RANK_BATCH / (time.perf_counter() - t0)


def _bare_publish(client: redis.Redis, item_ids: list[str], run: int, users: int = 20_000) -> float:
    """Pipelined ZADD of ``TOP_K`` members + EXPIRE per user, 500 users per round trip.

    Each ``run`` writes new keys, as the pipeline mostly does (a rerun over the same keys only
    updated members, measured ~30% faster).
    """
    rng = random.Random(0)  # noqa: S311 - benchmark data
    lists = [{i: rng.random() for i in rng.sample(item_ids, TOP_K)} for _ in range(200)]
    t0 = time.perf_counter()
    for start in range(0, users, 500):
        pipe = client.pipeline(transaction=False)
        for u in range(start, start + 500):
            key = f"bench:recs:{run}:{u}"
            pipe.zadd(key, lists[u % len(lists)])
            pipe.expire(key, 3600)
        pipe.execute()
    return users / (time.perf_counter() - t0)


def _drain_rate(worker: WorkerProcess, n_events: int, quiet: bool) -> float:
    """Events/s from the first event readable in Redis to the last (the worker's counters)."""
    bar = tqdm(total=n_events, desc="worker", unit="ev", disable=quiet)
    first: tuple[float, int] | None = None
    done = 0
    while done < n_events:
        time.sleep(0.2)
        done = int(worker.stats().get("events_published", 0))
        now = time.monotonic()
        if first is None and done:
            first = (now, done)
        bar.update(done - bar.n)
    bar.close()
    if first is None:
        raise RuntimeError("the worker applied no events")
    return (done - first[1]) / max(time.monotonic() - first[0], 1e-9)


def _steady_figures(before: dict[str, Any], after: dict[str, Any], sent: int) -> dict[str, Any]:
    """The steady phase's own stage costs (µs per event) and mean batch size (events)."""
    start = before.get("stage_seconds", {})
    stages = {
        k: round((v - start.get(k, 0.0)) * 1e6 / max(sent, 1), 1)
        for k, v in after.get("stage_seconds", {}).items()
    }
    batches = after.get("batches", 0) - before.get("batches", 0)
    stalls = "loop_stalls_over_100ms"
    return {
        "steady_stage_us_per_event": stages,
        "steady_events_per_batch": round(sent / max(batches, 1), 1),
        f"steady_{stalls}": after.get(stalls, 0) - before.get(stalls, 0),
    }


def _steady_stream(bootstrap: str, world: Any, rate: float, duration_s: float) -> int:
    """Publish at ``rate`` events/s from a background thread; return how many were sent.

    Events go out on ticks of :data:`STEADY_TICK_S`, each event in the tick it falls due, one
    flush per tick, as a producer with a short linger sends them. Flushing after every event
    made 1,000 produce requests a second: this process and the broker then took ~60% of a core
    beside the worker on 2 cores. Freshness starts at each record's send time (its timestamp).
    """
    sent = 0

    def run() -> None:
        nonlocal sent
        producer = make_producer([bootstrap])
        stream = events(world, 10**9, seed=3, start_ms=int(time.time() * 1000))
        t0 = time.monotonic()
        while (elapsed := time.monotonic() - t0) < duration_s:
            while sent < elapsed * rate:
                ev = next(stream)
                ev["ts"] = int(time.time() * 1000)
                producer.send(EVENTS, key=ev["user_id"].encode(), value=orjson.dumps(ev))
                sent += 1
            producer.flush()
            time.sleep(max(0.0, STEADY_TICK_S - (time.monotonic() - t0 - elapsed)))
        producer.flush()
        producer.close()

    thread = threading.Thread(target=run, name="steady-producer")
    thread.start()
    thread.join()
    return sent


def _wait_applied(worker: WorkerProcess, total: int, timeout_s: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        stats = worker.stats()
        if int(stats.get("events_published", 0)) >= total:
            return stats
        time.sleep(0.2)
    return worker.stats()
