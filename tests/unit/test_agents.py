"""The events agent in Faust's test context: batches applied, bad records dead-lettered."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import orjson

from state.catalogue import Catalogue
from state.engine import Engine
from state.interest import normalised
from state.store import MemoryPublisher, MemoryStore
from streams.app import StreamrecApp, create_app
from streams.processor import EventProcessor
from streams.settings import Settings

DIM = 8
T0 = 1_767_225_600_000


def _engine() -> Engine:
    rng = np.random.default_rng(3)
    catalogue = Catalogue(DIM, "v1")
    for i in range(40):
        catalogue.upsert(
            f"i{i}",
            normalised(rng.normal(size=DIM).astype(np.float32)),
            version="v1",
            title=f"story {i}",
        )
    return Engine(catalogue)


async def _until(check: Any, timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


def _app(
    tmp_path: Path, publisher: type[MemoryPublisher] = MemoryPublisher
) -> tuple[StreamrecApp, MemoryStore, list[dict[str, Any]]]:
    """A worker app wired to in-memory Redis and dead letters (no broker in a unit test)."""
    sapp = create_app(Settings(web_enabled=False, data_dir=tmp_path, batch_max_wait_ms=20))
    store = MemoryStore()
    sapp.runtime = SimpleNamespace(  # type: ignore[assignment]
        engine=_engine(), store=store, publisher=publisher(store)
    )

    async def put_many(rows: list[tuple[bytes, bytes, int]]) -> None:
        # No broker here: keep the rows locally (the changelog path runs in integration tests).
        for key, value, _ in rows:
            sapp.table.data[key] = value

    sapp.table.put_many = put_many  # type: ignore[method-assign]
    sapp.ready.set()
    letters: list[dict[str, Any]] = []

    async def capture(**kwargs: Any) -> None:
        letters.append(kwargs)

    sapp.dead_letters.send = capture  # type: ignore[method-assign]
    # No broker in a unit test: no gap repair (it reads committed offsets from Kafka).
    sapp.event_processor = EventProcessor(
        sapp.runtime,
        sapp.table,
        sapp.dead_letters,
        sapp.limits,
        sapp.settings,
        sapp.stats,
        sapp.executor,
        "events",
        gaps=None,
    )
    return sapp, store, letters


def _click(n: int, user: str = "u1") -> bytes:
    return orjson.dumps(
        {"event_id": f"e{n}", "user_id": user, "type": "click", "item_id": f"i{n}", "ts": T0 + n}
    )


async def test_events_agent_applies_batches_and_dead_letters_bad_records(tmp_path: Path) -> None:
    sapp, store, letters = _app(tmp_path)
    async with sapp.events_agent.test_context() as agent:
        for n in range(5):
            await agent.put(_click(n), key=b"u1", wait=False)
        await agent.put(b'{"user_id": "u1", "ts": NaN}', key=b"u1", wait=False)
        await agent.put(
            orjson.dumps(
                {"event_id": "x", "user_id": "u2", "type": "warp", "item_id": "i1", "ts": T0}
            ),
            key=b"u2",
            wait=False,
        )
        await _until(lambda: store.users.get("u1", {}).get("events") == b"5" and letters)
        await _until(lambda: len(letters) == 2)
    recs, meta = await store.read_recs("u1", 10)
    assert len(recs) == 10 and meta["source"] == "personal"
    assert not {f"i{n}" for n in range(5)} & {i for i, _ in recs}
    kinds = sorted(dict(letter["headers"])["x-error-class"] for letter in letters)
    assert kinds == [b"malformed_json", b"unknown_type"]
    assert sapp.table[b"u1"] is not None


async def test_a_user_evicted_from_the_cache_resumes_from_the_table(tmp_path: Path) -> None:
    sapp, store, _ = _app(tmp_path)
    assert sapp.table.get(b"u1") is None
    async with sapp.events_agent.test_context() as agent:
        for n in range(3):
            await agent.put(_click(n), key=b"u1", wait=False)
        await _until(lambda: store.users.get("u1", {}).get("events") == b"3")
        assert sapp.table.get(b"u1") is not None
        processor = sapp.event_processor
        assert processor is not None
        processor.cache.clear()  # as if evicted: the next event reads the table's copy
        await agent.put(_click(3), key=b"u1", wait=False)
        await _until(lambda: store.users.get("u1", {}).get("events") == b"4")


async def test_a_batch_is_committable_only_once_its_recommendations_are_in_redis(
    tmp_path: Path,
) -> None:
    gate = threading.Event()

    class GatedPublisher(MemoryPublisher):
        def publish_users(self, *args: Any, **kwargs: Any) -> int:
            gate.wait(10)
            return super().publish_users(*args, **kwargs)

    sapp, store, _ = _app(tmp_path, GatedPublisher)
    processor = sapp.event_processor
    assert processor is not None
    async with sapp.events_agent.test_context() as agent:
        first = await agent.put(_click(0), key=b"u1", wait=False)
        await _until(lambda: sapp.stats.counters["events_applied"] == 1)
        # The agent moved on to the next batch ...
        second = await agent.put(_click(1), key=b"u1", wait=False)
        await _until(lambda: sapp.stats.counters["events_applied"] == 2)
        # ... but neither offset may be committed while Redis does not have the batch.
        assert processor.offsets.committable == {} and processor.offsets.pending == 2
        assert "u1" not in store.users
        gate.set()
        done = {first.message.partition: second.message.offset + 1}
        await _until(lambda: processor.offsets.committable == done)
        assert processor.offsets.pending == 0
    assert store.users["u1"]["events"] == b"2"
