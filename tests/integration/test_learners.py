"""Online learners end to end: user groups and the click model, through Kafka and Redis."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from deployment import Deployment

from state.click_model import WARMUP_EXAMPLES
from state.groups import GroupConfig, LocalGroups, SharedGroups, adjusted_rand_index, merge
from state.interest import normalised
from state.reader import RecsReader
from state.redis_store import Keys, RedisStore
from streams.synthetic import events, make_world

pytestmark = pytest.mark.integration

WORLD = make_world(n_items=400, n_users=60, seed=8, two_interest_share=0.0)


@pytest.fixture
def deployment(stack: Any, tmp_path: Path) -> Iterator[Deployment]:
    dep = Deployment(stack.bootstrap, stack.broker_url, stack.redis_url, tmp_path)
    yield dep
    dep.stop()


@pytest.mark.slow
def test_workers_discover_the_planted_segments_and_serve_group_lists(
    deployment: Deployment,
) -> None:
    deployment.start_worker("w0", STREAMREC_GROUPS_SYNC_S="1", STREAMREC_GROUPS="16")
    deployment.publish_world(WORLD)
    counts = deployment.publish_events(events(WORLD, 3000, seed=31))
    assert deployment.wait_counts(counts) == dict(counts)
    # Groups are assigned at each user's next write: let the model settle, then touch everyone.
    time.sleep(3)
    more = deployment.publish_events(events(WORLD, 600, seed=32))
    deployment.wait_counts(counts + more)
    time.sleep(2)
    users = sorted(counts)
    group_of = {u: deployment.redis.hget(deployment.keys.user(u), "group") for u in users}
    assert all(group_of.values()), group_of
    planted = [WORLD.users[u][0] for u in users]
    found = [int(group_of[u] or b"-1") for u in users]
    assert adjusted_rand_index(planted, found) >= 0.8
    for group in set(found):
        assert deployment.redis.zcard(deployment.keys.group_recs(str(group))) > 0
    env = {**os.environ, **deployment.env(deployment.workdir / "cli")}
    out = subprocess.run(
        [sys.executable, "-c", "from streams.cli import main; main()", "groups", "--json"],
        env=env,
        capture_output=True,
        check=True,
        cwd=deployment.workdir,
    )
    profiles = orjson.loads(out.stdout)
    assert {p["group"] for p in profiles} >= {str(g) for g in found}
    for p in profiles:
        if p["group"] in {str(g) for g in found}:
            assert p["titles"] and p["categories"]


async def test_a_new_user_in_warm_up_is_served_their_groups_list(stack: Any) -> None:
    store = RedisStore.from_url(stack.redis_url, Keys("warm:"))
    try:
        await store.client.hset(store.keys.user("newbie"), mapping={"events": 1, "group": "3"})
        await store.set_group_recs("3", [("i1", 0.9), ("i2", 0.5)])
        recs = await RecsReader(store).read("newbie", 10)
        assert recs.source == "group" and [i for i, _ in recs.items] == ["i1", "i2"]
        assert recs.why["i1"] == "popular in your group"
    finally:
        await store.client.delete(store.keys.user("newbie"), store.keys.group_recs("3"))
        await store.close()


async def test_concurrent_syncs_lose_no_workers_learning(stack: Any) -> None:
    keys = Keys("gsync:")
    stores = [RedisStore.from_url(stack.redis_url, keys) for _ in range(2)]
    await stores[0].client.delete(keys.groups())
    rng = np.random.default_rng(5)
    vecs = [normalised(rng.normal(size=8).astype("float32")) for _ in range(2)]
    base = SharedGroups.empty(4, 8)
    seed = LocalGroups(base)
    seed.learn_many(np.stack(vecs))
    model = await stores[0].sync_groups(lambda cur: merge(cur or base, seed))
    learners = [LocalGroups(model), LocalGroups(model)]
    for learner, vec in zip(learners, vecs, strict=True):
        learner.learn_many(np.stack([vec] * 10))

    async def slow_merge(store: RedisStore, learner: LocalGroups) -> SharedGroups:
        def merged(cur: SharedGroups | None) -> SharedGroups:
            return merge(cur or base, learner)

        await asyncio.sleep(0)
        return await store.sync_groups(merged)

    await asyncio.gather(*(slow_merge(s, lr) for s, lr in zip(stores, learners, strict=True)))
    final, _ = await stores[0].read_groups()
    assert final is not None
    decay = GroupConfig().decay_per_sync
    # Whatever the interleaving, both workers' ten users each are in the shared counts
    # (one lost write would leave 2 * decay + 10).
    assert final.counts.sum() == pytest.approx(2 * decay**2 + 10 * decay + 10)
    for store in stores:
        await store.close()


@pytest.mark.slow
def test_the_click_model_learns_shares_its_weights_and_resumes_after_a_restart(
    deployment: Deployment,
) -> None:
    worker = deployment.start_worker("w0", STREAMREC_CLICK_SYNC_S="1")
    deployment.publish_world(WORLD)
    counts = deployment.publish_events(events(WORLD, 5000, seed=41))
    assert deployment.wait_counts(counts) == dict(counts)
    time.sleep(2.5)  # at least one sync: checkpoint written, weights shared
    stats = worker.stats()
    assert stats["click_examples"] > 300 and 0.5 < stats["click_auc"] <= 1.0
    shared = deployment.redis.hgetall(deployment.keys.click())
    assert len(shared) == 1
    entry = orjson.loads(next(iter(shared.values())))
    assert entry["examples"] > WARMUP_EXAMPLES and entry["collab"] != 0.35  # learned weights
    learned = stats["click_examples"]
    worker.stop()
    restarted = deployment.start_worker("w0", STREAMREC_CLICK_SYNC_S="1")
    assert restarted.stats()["click_examples"] >= learned  # resumed, not from zero
