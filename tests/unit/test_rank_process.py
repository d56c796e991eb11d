"""Ranking in the child process: the same lists as in-thread, large signals sent once, and a
dead child replaced without losing a batch."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from state.engine import Engine, Interaction
from state.ranking import RankRequest
from streams.rank_process import RankProcess, encoded, pack, unpack
from tests.unit.test_agents import T0, _engine


def _requests(engine: Engine, users: int = 12) -> list[RankRequest]:
    states = {f"u{n}": engine.new_state() for n in range(users)}
    for t in range(60):
        user = f"u{t % users}"
        item = f"i{(t * 7 + t % users) % 40}"
        engine.apply(states[user], Interaction(user, "click", item, T0 + t, offset=t))
    return [engine.request(u, s) for u, s in states.items()]


Started = tuple[Engine, list[RankRequest], RankProcess]


@pytest.fixture
async def started() -> AsyncIterator[Started]:
    """An engine with a dozen users' requests and a started ranking child for its ranker."""
    engine = _engine()
    child = RankProcess(engine.ranker)
    try:
        await child.start()
        yield engine, _requests(engine), child
    finally:
        child.close()


async def test_the_child_ranks_exactly_as_the_thread_and_keeps_large_signals(
    started: Started,
) -> None:
    engine, requests, child = started
    signals = engine.signals()
    expected = engine.rank_requests(requests, 10, signals)
    got, seconds, _ = await child.rank(signals, requests, 10, engine.catalogue.titles)
    # Encoded for the publish script in the child: what publish_call would make of the thread's.
    assert got == encoded(expected)
    assert seconds > 0 and any(r.why != b"{}" for r in got) and all(r.members for r in got)
    # Unchanged catalogue and co-occurrence: the next batch sends none of them.
    assert child._large(engine.signals(), engine.catalogue.titles) == {}
    # A changed catalogue is sent again, with its titles.
    engine.catalogue.upsert("new", signals.snapshot.matrix[0], version="v1", title="fresh")
    resent = child._large(engine.signals(), engine.catalogue.titles)
    assert "snapshot" in resent and resent["titles"]["new"] == "fresh"


async def test_a_killed_child_is_replaced_and_its_batch_still_ranked(started: Started) -> None:
    engine, requests, child = started
    pool = child._pool
    assert pool is not None
    for pid in list(pool._processes):  # the child, as an operator's kill would hit it
        os.kill(pid, signal.SIGKILL)
    signals = engine.signals()
    expected = engine.rank_requests(requests, 10, signals)
    got, _, _ = await child.rank(signals, requests, 10, engine.catalogue.titles)
    assert got == encoded(expected)
    assert child.restarts == 1
    again, _, _ = await child.rank(signals, requests, 10, engine.catalogue.titles)
    assert again == encoded(expected)
    assert child._pool is not None and child._pool is not pool


def test_packed_requests_unpack_to_the_same_requests() -> None:
    engine = _engine()
    requests = _requests(engine)
    requests[0].interests = [(requests[0].vec, 0.7), (requests[1].vec, 0.3)]
    back = unpack(pack(requests))
    assert len(back) == len(requests)
    for a, b in zip(requests, back, strict=True):
        assert (a.user_id, a.exclude, a.recent, a.categories, a.group) == (
            b.user_id,
            b.exclude,
            b.recent,
            b.categories,
            b.group,
        )
        assert np.array_equal(a.vec, b.vec)
        assert [s for _, s in a.interests] == [s for _, s in b.interests]
        pairs = zip(a.interests, b.interests, strict=True)
        assert all(np.array_equal(x, y) for (x, _), (y, _) in pairs)
    assert unpack(pack([])) == []


def test_the_child_exits_when_its_worker_is_killed(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(
        "import asyncio, time\n"
        "from state.ranking import Ranker\n"
        "from streams.rank_process import RankProcess\n"
        "async def main():\n"
        "    child = RankProcess(Ranker())\n"
        "    await child.start()\n"
        "    print(*child._pool._processes, flush=True)\n"
        "    time.sleep(60)\n"
        "if __name__ == '__main__':\n"
        "    asyncio.run(main())\n"
    )
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        parent.kill()
        parent.wait(10)
        deadline = time.monotonic() + 10
        while _alive(child):
            assert time.monotonic() < deadline, "the ranking child outlived its worker"
            time.sleep(0.1)
    finally:
        parent.kill()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie waiting for its reaper is gone
        return stat.read().split()[2] != "Z"


async def test_a_failed_call_resends_every_large_signal_next_time(started: Started) -> None:
    engine, requests, child = started
    signals = engine.signals()
    child._sent["snapshot"] = signals.snapshot  # as if sent by a batch that then failed
    with pytest.raises(KeyError):
        await child.rank(signals, requests, 10, engine.catalogue.titles)
    got, _, _ = await child.rank(signals, requests, 10, engine.catalogue.titles)
    expected = engine.rank_requests(requests, 10, signals)
    assert got == encoded(expected)
