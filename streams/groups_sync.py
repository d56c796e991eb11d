"""The worker's user-groups job: sync the shared group model, publish group lists and profiles.

Every ``groups_sync_s`` each worker merges what it learned into ``sr:groups`` (optimistic, so
concurrent workers lose nothing) and takes the merged model back; the events processor assigns
and learns against :attr:`GroupsSync.local`. One worker per period (a Redis lock) then ranks
every group centroid like a user into ``sr:group:{g}:recs`` and writes the group profiles
(size, top categories, titles nearest the centroid) that ``streamrec groups`` prints.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from concurrent.futures import Executor

import numpy as np

from state.engine import Engine
from state.groups import GroupConfig, LocalGroups, SharedGroups, merge
from state.ranking import RankRequest
from state.redis_store import RedisStore
from streams.periodic import Periodic

#: Titles shown per group profile.
PROFILE_TITLES = 5


class GroupsSync(Periodic):
    """Periodic sync task; :attr:`local` is what the events processor uses in between."""

    name = "user-groups sync"

    def __init__(
        self,
        store: RedisStore,
        engine: Engine,
        executor: Executor,
        config: GroupConfig,
        sync_s: float,
        top_k: int,
    ) -> None:
        super().__init__(sync_s)
        self.store = store
        self.engine = engine
        self.executor = executor
        self.config = config
        self.top_k = top_k
        self.local = self._fresh(None)

    def _usable(self, shared: SharedGroups | None) -> SharedGroups:
        """``shared``, or an empty model when there is none or it is of another encoder version
        (its centroids mean nothing here)."""
        catalogue = self.engine.catalogue
        if shared is None or shared.version != catalogue.version:
            return SharedGroups.empty(self.config.max_groups, catalogue.dim, catalogue.version)
        return shared

    def _fresh(self, shared: SharedGroups | None) -> LocalGroups:
        return LocalGroups(self._usable(shared), self.config)

    async def tick(self) -> None:
        await self.sync_once()

    async def sync_once(self) -> SharedGroups:
        """Merge local learning into ``sr:groups``, adopt the result, maybe publish groups."""
        learned = self.local
        model = await self.store.sync_groups(lambda current: merge(self._usable(current), learned))
        self.local = self._fresh(model)
        if model.seeded.any() and await self.store.try_lock(
            self.store.keys.groups_lock(), self.sync_s * 0.9
        ):
            await self._publish(model)
        return model

    async def _publish(self, model: SharedGroups) -> None:
        groups = np.flatnonzero(model.seeded)
        requests = [
            RankRequest(user_id=f"group:{g}", vec=model.centroids[g]) for g in groups.tolist()
        ]
        loop = asyncio.get_running_loop()
        signals = self.engine.signals()  # frozen here: the loop moves on while it ranks
        ranked = await loop.run_in_executor(
            self.executor, self.engine.rank_requests, requests, self.top_k, signals
        )
        categories = self.engine.catalogue.categories
        titles = self.engine.catalogue.titles
        profiles: list[dict[str, object]] = []
        for g, result in zip(groups.tolist(), ranked, strict=True):
            await self.store.set_group_recs(str(g), result.items)
            top = Counter(categories.get(i, "") for i, _ in result.items if categories.get(i))
            profiles.append(
                {
                    "group": str(g),
                    "size": round(float(model.counts[g]), 1),
                    "categories": [c for c, _ in top.most_common(3)],
                    "titles": [titles.get(i, i) for i, _ in result.items[:PROFILE_TITLES]],
                }
            )
        await self.store.write_group_profiles(profiles)
