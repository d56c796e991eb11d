"""The worker's click-model job: checkpoint it, share its re-ranking weights with every replica.

Each worker's click model learns from the events of its own partitions, which are a uniform
sample of users. What ranking takes from the model is one weight per ranking-time feature
(:mod:`state.features`), so the replicas agree by averaging those: every ``sync_s`` a worker
writes its weights and example count to its field of ``sr:click`` and ranks with the
example-weighted mean of every fresh field — one global re-ranker learned from all partitions.
The model itself is checkpointed to the data dir (HMAC-signed with a key only this data dir
holds) and resumed from there after a restart.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import orjson

from state.click_model import CheckpointError, ClickModel
from state.engine import Engine
from state.features import FEATURES, FeatureWeights
from state.redis_store import RedisStore
from streams.periodic import Periodic

log = logging.getLogger(__name__)

#: A replica's weights older than this (it stopped) no longer count.
STALE_S = 300.0
#: The ranking guard's verdict (state/guard.py), next to the click model's checkpoint.
GUARD_FILE = "ranking-guard.json"


def _key(data_dir: Path) -> bytes:
    path = data_dir / "click-model.key"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(32))
    return path.read_bytes()


def restore(engine: Engine, data_dir: Path) -> bool:
    """Load the checkpointed click model (and the ranking guard's verdict, a plain JSON file)
    into ``engine``; return whether there was a model."""
    guard_path = data_dir / GUARD_FILE
    if engine.guard is not None and guard_path.exists():
        try:
            engine.guard.resume(orjson.loads(guard_path.read_bytes()))
        except (orjson.JSONDecodeError, ValueError) as exc:
            log.error("%s: %s; the ranking guard starts afresh", guard_path, exc)
    path = data_dir / "click-model.ckpt"
    if engine.click is None or not path.exists():
        return False
    try:
        engine.click = ClickModel.from_bytes(path.read_bytes(), _key(data_dir))
    except CheckpointError as exc:
        log.error("%s: %s; starting the click model afresh", path, exc)
        return False
    return True


def _write_all(files: dict[Path, bytes]) -> None:
    for path, payload in files.items():
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(payload)
        tmp.replace(path)  # atomic: a crash never leaves half a checkpoint


class ClickSync(Periodic):
    """Periodic checkpoint and weight sharing; see the module docstring."""

    name = "click-model sync"

    def __init__(
        self,
        store: RedisStore,
        engine: Engine,
        data_dir: Path,
        sync_s: float,
        on_drift: Callable[[dict[str, object]], Awaitable[None]] | None = None,
    ) -> None:
        super().__init__(sync_s)
        self.store = store
        self.on_drift = on_drift
        self._drifts = engine.click.stats.drifts if engine.click is not None else 0
        self.engine = engine
        self.data_dir = data_dir
        self._key = _key(data_dir)  # read once: checkpoints come every sync
        self.field = f"{socket.gethostname()}:{os.getpid()}"

    async def stop(self) -> None:
        await super().stop()
        await self.checkpoint()

    async def tick(self) -> None:
        await self.checkpoint()
        await self._report_drift()
        await self.sync_once()

    async def _report_drift(self) -> None:
        """One record on the drift topic per sync in which ADWIN flagged the model's error."""
        click = self.engine.click
        if click is None or click.stats.drifts == self._drifts or self.on_drift is None:
            return
        new, self._drifts = click.stats.drifts - self._drifts, click.stats.drifts
        await self.on_drift(
            {
                "worker": self.field,
                "drifts": new,
                "detected_at": int(time.time() * 1000),
                **click.metrics(),
                "model_version": self.engine.catalogue.version,
            }
        )

    async def checkpoint(self) -> None:
        """Serialise the model on the loop (where it learns: a consistent copy), write the
        file on a thread (a slow disk must not stall consumer heartbeats)."""
        click = self.engine.click
        if click is None:
            return
        files = {self.data_dir / "click-model.ckpt": click.to_bytes(self._key)}
        if self.engine.guard is not None:
            files[self.data_dir / GUARD_FILE] = orjson.dumps(self.engine.guard.verdict())
        await asyncio.to_thread(_write_all, files)

    async def sync_once(self) -> FeatureWeights | None:
        """Publish this worker's weights, adopt the mean over all replicas; return it."""
        click = self.engine.click
        if click is None:
            return None
        own = click.weights()
        entry: dict[str, float] = {
            **(own.as_dict() if own is not None else {}),
            "examples": click.stats.examples if own is not None else 0,
            "at": time.time(),
        }
        key = self.store.keys.click()
        await self.store.client.hset(key, self.field, orjson.dumps(entry))
        raw = await self.store.client.hgetall(key)
        now = time.time()
        entries = {k: orjson.loads(v) for k, v in raw.items()}
        stale = [k for k, e in entries.items() if now - e["at"] >= STALE_S]
        if stale:  # replicas that stopped (every restart is a new host:pid field)
            await self.store.client.hdel(key, *stale)
        fresh = [e for e in entries.values() if now - e["at"] < STALE_S and e["examples"] > 0]
        total = sum(e["examples"] for e in fresh)
        if not total:
            self.engine.shared_weights = None
            return None
        # A replica still on an older feature set lacks some names: it counts 0 for them.
        mean = FeatureWeights.of(
            {f: sum(e.get(f, 0.0) * e["examples"] for e in fresh) / total for f in FEATURES}
        )
        self.engine.shared_weights = mean
        return mean
