"""Faults only a durable broker lets us stage: broker restarts, rebalances, state recovery.

Each test fails if an acknowledged event is lost or applied twice (per-user ``events`` in
``sr:user:{u}`` against what the broker acknowledged), or if any user's state or
recommendations step backwards while the fault plays out. Apache Kafka only: Tansu's build here
keeps everything in memory, so a restart there loses the log the workers resume from.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from deployment import PARTITIONS, Deployment
from observe import LagProbe, SteadyStream, Watcher, group_assignment

from state.interest import CONSUMED_TYPES, HISTORY_LEN
from streams.synthetic import events, make_world

if TYPE_CHECKING:  # conftest is not importable under --import-mode=importlib
    from conftest import Stack

WORLD = make_world(n_items=320, n_users=40, seed=5)
USERS = list(WORLD.users)
Figure = Callable[[str, float, str], None]


@pytest.fixture
def kafka_stack(stack: Stack) -> Stack:
    if stack.kafka is None:
        pytest.skip(f"needs the embedded Apache Kafka broker, this run uses {stack.kind}")
    return stack


@pytest.fixture
def deployment(kafka_stack: Stack, tmp_path: Path) -> Iterator[Deployment]:
    dep = Deployment(kafka_stack.bootstrap, kafka_stack.broker_url, kafka_stack.redis_url, tmp_path)
    yield dep
    dep.stop()


@pytest.fixture
def lag(deployment: Deployment) -> Iterator[LagProbe]:
    probe = LagProbe(deployment, range(PARTITIONS))
    yield probe
    probe.close()


def _wait_applied(dep: Deployment, at_least: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while sum(dep.user_events(USERS).values()) < at_least:
        assert time.monotonic() < deadline, f"fewer than {at_least} events applied"
        time.sleep(0.05)


def _redelivered(dep: Deployment) -> int:
    """Events the live workers were handed again and rightly did not apply (a sign the fault
    really replayed uncommitted offsets)."""
    live = [w for w in dep.workers if w.proc is not None and w.proc.poll() is None]
    return sum(int(w.stats().get("events_redelivered", 0)) for w in live)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_broker_restart_mid_stream_loses_nothing_and_applies_nothing_twice(
    kafka_stack: Stack,
    deployment: Deployment,
    lag: LagProbe,
    figure: Figure,
    sig: signal.Signals,
) -> None:
    kafka = kafka_stack.kafka
    assert kafka is not None
    deployment.start_workers("w0", "w1")
    deployment.publish_world(WORLD)
    stream = list(events(WORLD, 9000, seed=31))
    with Watcher(deployment, USERS) as watcher:
        expected = deployment.publish_events(stream[:5000])
        # Restart while the workers are mid-backlog (batches applied, changelog records and
        # offset commits in flight) and producers keep sending: the outage's events wait in
        # the producer until the broker is back.
        _wait_applied(deployment, 1000)
        during = SteadyStream(deployment, stream[5000:6000], 200.0)
        during.start()
        restart_at = time.monotonic()
        kafka.restart(sig)
        back_at = time.monotonic()
        expected += during.finish()
        caught_up_at = lag.wait_zero()
        # The workers reconnected by themselves; events produced after the restart flow too.
        expected += deployment.publish_events(stream[6000:])
        counts = deployment.wait_counts(expected, settle_s=5.0)
    # What the broker acknowledged is what its log holds (no producer-side duplicates), and
    # what Redis applied, once each.
    assert deployment.log_counts(len(stream)) == expected
    assert counts == dict(expected)
    assert sum(counts.values()) == len(stream)
    assert not watcher.regressions, watcher.regressions[:5]
    assert all(w.proc is not None and w.proc.poll() is None for w in deployment.workers)
    figure("broker_restart", back_at - restart_at, "s")
    figure("restart_to_lag0", caught_up_at - restart_at, "s")
    figure("events_redelivered_skipped", _redelivered(deployment), "events")


@pytest.mark.slow
def test_three_workers_share_partitions_and_survive_a_kill_and_a_join(
    deployment: Deployment, lag: LagProbe, figure: Figure
) -> None:
    workers = deployment.start_workers("w0", "w1", "w2")
    deployment.publish_world(WORLD)
    warmup = deployment.publish_events(events(WORLD, 1200, seed=41))
    assert deployment.wait_counts(warmup) == dict(warmup)
    # The partitions spread across the members, none owned twice. (Faust's assignor fills
    # members up to ceil(4 / 3) = 2 partitions, so one of three may rightly own none.)
    deadline = time.monotonic() + 30
    while (found := group_assignment(deployment))[0] != "Stable" or len(found[1]) != 3:
        assert time.monotonic() < deadline, found
        time.sleep(0.2)
    owned = found[1]
    assert sum(1 for o in owned if o) >= 2, owned
    assert sum(len(o) for o in owned) == len(set().union(*owned)) == PARTITIONS, owned
    # Kill one that owns partitions: the one that applied most of the warm-up.
    victim = max(workers, key=lambda w: int(w.stats().get("events_applied", 0)))

    stream = SteadyStream(
        deployment, list(events(WORLD, 9000, seed=42, start_ms=1_767_300_000_000)), 300.0
    )
    with Watcher(deployment, USERS, stream) as watcher:
        stream.start()
        _wait_applied(deployment, warmup.total() + 1000)
        killed_at = time.monotonic()
        victim.stop(signal.SIGKILL)
        # The newcomer loads its model while the group notices the loss (session time-out),
        # then joins: two rebalances, both while events keep arriving.
        deployment.start_worker("w3")
        assert stream.is_alive(), "the stream ended before the new worker joined"
        expected = warmup + stream.finish()
        counts = deployment.wait_counts(expected, settle_s=5.0)
        try:
            settled_at = lag.wait_zero()
        except AssertionError as exc:  # say what each worker saw (a rare stall, see README)
            short = {u: (counts[u], n) for u, n in expected.items() if counts[u] != n}
            raise AssertionError(
                f"{exc}; users short {short}; {_worker_stats(deployment)}"
            ) from exc
    assert counts == dict(expected)
    assert not watcher.regressions, watcher.regressions[:5]
    everywhere, one_partition = watcher.longest_pause(killed_at, settled_at)
    figure("rebalance_pause_all_partitions", everywhere, "s")
    figure("rebalance_pause_one_partition", one_partition, "s")
    figure("events_redelivered_skipped", _redelivered(deployment), "events")


def _worker_stats(deployment: Deployment) -> list[dict[str, object]]:
    keep = (
        "events_applied",
        "events_redelivered",
        "stall_repairs",
        "gap_events_refetched",
        "positions",
        "committed",
        "batches_pending",
        "dead_letters",
    )
    out = []
    for w in deployment.workers:
        if w.proc is not None and w.proc.poll() is None:
            stats = w.stats()
            out.append({k: stats.get(k) for k in keep})
    return out


@pytest.mark.slow
def test_fresh_worker_recovers_user_state_from_the_changelog(deployment: Deployment) -> None:
    deployment.start_worker("w0")
    deployment.publish_world(WORLD)
    before = list(events(WORLD, 800, seed=51))
    first = deployment.publish_events(before)
    assert deployment.wait_counts(first) == dict(first)
    deployment.workers[0].stop()
    # Only the user-state changelog remembers the users now: not Redis, not a data dir.
    deployment.forget_users()

    deployment.start_worker("fresh")
    after = list(events(WORLD, 400, seed=52, start_ms=1_767_300_000_000))
    expected = first + deployment.publish_events(after)
    counts = deployment.wait_counts(expected, settle_s=5.0)
    assert counts == dict(expected)
    # The recovered history still keeps what each user consumed before out of their lists.
    newer = Counter(e["user_id"] for e in after)
    for user in USERS:
        older = [e for e in before if e["user_id"] == user]
        kept = older[max(0, len(older) - (HISTORY_LEN - newer[user])) :]
        consumed = {e["item_id"] for e in kept if e["type"] in CONSUMED_TYPES}
        assert not consumed & set(deployment.top(user, 20)), user
