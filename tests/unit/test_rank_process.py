"""Ranking in the child process: the same lists as in-thread, large signals sent once, and a
dead child replaced without losing a batch."""

from __future__ import annotations

import os
import signal

from state.engine import Engine, Interaction
from state.ranking import RankRequest
from streams.rank_process import RankProcess
from tests.unit.test_agents import T0, _engine


def _requests(engine: Engine, users: int = 12) -> list[RankRequest]:
    states = {f"u{n}": engine.new_state() for n in range(users)}
    for t in range(60):
        user = f"u{t % users}"
        item = f"i{(t * 7 + t % users) % 40}"
        engine.apply(states[user], Interaction(user, "click", item, T0 + t, offset=t))
    return [engine.request(u, s) for u, s in states.items()]


async def test_the_child_ranks_exactly_as_the_thread_and_keeps_large_signals() -> None:
    engine = _engine()
    requests = _requests(engine)
    child = RankProcess(engine.ranker)
    try:
        await child.start()
        signals = engine.signals()
        expected = engine.rank_requests(requests, 10, signals)
        got, seconds = await child.rank(signals, requests, 10, engine.catalogue.titles)
        assert [(r.user_id, r.items, r.why, r.source) for r in got] == [
            (r.user_id, r.items, r.why, r.source) for r in expected
        ]
        assert seconds > 0 and any(r.why for r in got)
        # Unchanged catalogue and co-occurrence: the next batch sends none of them.
        assert child._large(engine.signals(), engine.catalogue.titles) == {}
        # A changed catalogue is sent again, with its titles.
        engine.catalogue.upsert("new", signals.snapshot.matrix[0], version="v1", title="fresh")
        resent = child._large(engine.signals(), engine.catalogue.titles)
        assert "snapshot" in resent and resent["titles"]["new"] == "fresh"
    finally:
        child.close()


async def test_a_killed_child_is_replaced_and_its_batch_still_ranked() -> None:
    engine = _engine()
    requests = _requests(engine)
    child = RankProcess(engine.ranker)
    try:
        await child.start()
        pool = child._pool
        assert pool is not None
        for pid in list(pool._processes):  # the child, as an operator's kill would hit it
            os.kill(pid, signal.SIGKILL)
        signals = engine.signals()
        expected = engine.rank_requests(requests, 10, signals)
        got, _ = await child.rank(signals, requests, 10, engine.catalogue.titles)
        assert [r.items for r in got] == [r.items for r in expected]
        assert child.restarts == 1
        again, _ = await child.rank(signals, requests, 10, engine.catalogue.titles)
        assert [r.items for r in again] == [r.items for r in expected]
        assert child._pool is not None and child._pool is not pool
    finally:
        child.close()
