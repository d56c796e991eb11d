"""What an app reads: a user's recommendations with the fallback chain personal → group → popular.

Used by the worker's ``GET /recs/{user}`` page and by ``streamrec recs``; any Redis client can do
the same by following docs/redis-keys.md.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import orjson

from state.store import RecsStore

#: Users with fewer events than this are served their group's list when one exists (warm-up).
GROUP_WARMUP_EVENTS = 5


@dataclass(slots=True)
class Recommendations:
    """A ranked list as served, with where it came from."""

    user_id: str
    items: list[tuple[str, float]]
    source: str  # personal / group / popular / none
    model_version: str = ""
    updated_at_ms: int = 0
    why: dict[str, str] = field(default_factory=dict)

    def as_json(self) -> dict[str, object]:
        return {
            "user": self.user_id,
            "source": self.source,
            "model_version": self.model_version,
            "updated_at": self.updated_at_ms,
            "items": [
                {"item_id": i, "score": s, "why": self.why.get(i, "")} for i, s in self.items
            ],
        }


class RecsReader:
    """Reads recommendations following the fallback chain."""

    def __init__(self, store: RecsStore, popularity_half_life_s: float = 24 * 3600.0) -> None:
        self.store = store
        self.popularity_half_life_s = popularity_half_life_s

    async def read(self, user: str, k: int = 10) -> Recommendations:
        """The best list available for ``user``; ``source`` says which one was used."""
        state = await self.store.read_user(user)
        events = int(state.get("events", b"0"))
        group = state.get("group", b"").decode()
        if group and events < GROUP_WARMUP_EVENTS:
            recs = await self._group(user, group, k)
            if recs is not None:
                return recs
        items, meta = await self.store.read_recs(user, k)
        if items:
            return Recommendations(
                user,
                items,
                meta.get("source", "personal"),
                meta.get("model_version", ""),
                int(meta.get("updated_at", "0") or 0),
                _why(meta.get("why", "")),
            )
        if group:
            recs = await self._group(user, group, k)
            if recs is not None:
                return recs
        popular = await self.store.read_popular(k)
        now_half_lives = time.time() * 1000 / (self.popularity_half_life_s * 1000)
        # sr:popular holds log2 forward-decayed weights; serve today's decayed weight instead.
        scored = [(i, 2.0 ** min(s - now_half_lives, 1000.0)) for i, s in popular]
        return Recommendations(
            user,
            scored,
            "popular" if scored else "none",
            why={i: "popular right now" for i, _ in scored},
        )

    async def _group(self, user: str, group: str, k: int) -> Recommendations | None:
        items = await self.store.read_group(group, k)
        if not items:
            return None
        return Recommendations(
            user, items, "group", why={i: "popular in your group" for i, _ in items}
        )


def _why(raw: str) -> dict[str, str]:
    if not raw:
        return {}
    try:
        decoded = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    return {str(k): str(v) for k, v in decoded.items()} if isinstance(decoded, dict) else {}
