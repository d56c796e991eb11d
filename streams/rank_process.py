"""Ranking in a child process, so it no longer waits for the event loop's GIL.

Measured (README "Benchmark"): a worker is GIL-bound, not core-bound. With ranking on a thread,
the event loop held the GIL about two thirds of the time and ranking, which needs it between
its numpy calls, took twice its single-threaded time. One child process (spawned: the worker
has threads, and forking those is unsafe) ranks with its own interpreter. It keeps the large
signals that change rarely (the catalogue snapshot with its titles, both co-occurrence
matrices, the EASE fit) and receives one again only when the engine built a new object; the
small ones (popularity, freshness, group popularity, click weights) and the requests go with
every batch.
Batches reach the child in submission order (one process, one queue), so each sees the large
signals of its own moment. If the child dies, the batch is ranked on the calling thread and
the next batch starts a new child. Requests travel packed (:func:`pack`): one array for all
interest vectors instead of one small array each, which pickled and unpickled ~35% faster
(2,000 users: 13 MB, 47 + 64 ms -> 32 + 40 ms).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import multiprocessing.connection
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from state.interest import Vector
from state.ranking import Ranked, Ranker, RankRequest, Served, Signals, served_lists
from state.redis_store import EncodedRecs, encode_recs

log = logging.getLogger(__name__)

#: Signals kept in the child between batches, resent only when the engine replaced them.
LARGE = ("snapshot", "transition", "transition_long", "ease")
#: What :class:`RankProcess` records before anything was sent (``None`` is a valid signal).
_UNSENT = object()

# In the child: the ranker and the newest large signals (with the titles of the snapshot).
_ranker: Ranker | None = None
_kept: dict[str, Any] = {}


@dataclass(frozen=True, slots=True)
class Packed:
    """A batch of :class:`RankRequest` as columns: vectors stacked, the rest as lists."""

    users: list[str]
    vecs: np.ndarray  # (batch, dim)
    interests: np.ndarray  # (sum of interests, dim)
    counts: list[int]  # interests per request
    shares: list[float]
    exclude: list[set[str]]
    recent: list[list[tuple[str, float]]]
    categories: list[dict[str, float]]
    groups: list[str]
    histories: list[list[tuple[str, float]]]


def pack(requests: Sequence[RankRequest]) -> Packed:
    dim = requests[0].vec.shape[0] if requests else 0
    centroids: list[Vector] = [v for r in requests for v, _ in r.interests]
    return Packed(
        [r.user_id for r in requests],
        np.stack([r.vec for r in requests]) if requests else np.zeros((0, dim), np.float32),
        np.stack(centroids) if centroids else np.zeros((0, dim), np.float32),
        [len(r.interests) for r in requests],
        [share for r in requests for _, share in r.interests],
        [r.exclude for r in requests],
        [r.recent for r in requests],
        [r.categories for r in requests],
        [r.group for r in requests],
        [r.history for r in requests],
    )


def unpack(packed: Packed) -> list[RankRequest]:
    out: list[RankRequest] = []
    at = 0
    for b, user in enumerate(packed.users):
        n = packed.counts[b]
        interests = [(packed.interests[at + i], packed.shares[at + i]) for i in range(n)]
        at += n
        out.append(
            RankRequest(
                user,
                packed.vecs[b],
                packed.exclude[b],
                packed.recent[b],
                interests,
                packed.categories[b],
                packed.groups[b],
                packed.histories[b],
            )
        )
    return out


def _exit_with_parent() -> None:
    """A worker killed with SIGKILL cannot stop its child: the child notices and exits."""
    parent = multiprocessing.parent_process()
    if parent is not None:
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(0)


def _start_child(ranker: Ranker, blas_threads: int) -> None:
    global _ranker
    _ranker = ranker
    threading.Thread(target=_exit_with_parent, name="exit-with-parent", daemon=True).start()
    if blas_threads:
        from threadpoolctl import threadpool_limits

        threadpool_limits(blas_threads, user_api="blas")


def encoded(ranked: Sequence[Ranked]) -> list[EncodedRecs]:
    return [encode_recs(r.items, r.why, r.source) for r in ranked]


def _rank_in_child(
    large: dict[str, Any], small: dict[str, Any], packed: Packed, k: int
) -> tuple[list[EncodedRecs], float, list[Served]]:
    if _ranker is None:
        raise RuntimeError("ranking child not initialised")
    _kept.update(large)
    started = time.perf_counter()
    signals = Signals(**{name: _kept[name] for name in LARGE}, **small)
    ranked = _ranker.rank(signals, unpack(packed), k, _kept["titles"])
    seconds = time.perf_counter() - started
    # Encoded here, off the worker's GIL: the worker unpickles two byte strings per user.
    return encoded(ranked), seconds, served_lists(ranked)


def _noop() -> None:
    return None


class RankProcess:
    """Ranks batches in one child process; see the module docstring."""

    def __init__(self, ranker: Ranker, blas_threads: int = 1) -> None:
        self.ranker = ranker
        self.blas_threads = blas_threads
        self._pool: ProcessPoolExecutor | None = None
        self._sent: dict[str, object] = {}  # large signal -> the object the child holds
        self.restarts = 0

    def _ensure_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_start_child,
                initargs=(self.ranker, self.blas_threads),
            )
            self._sent.clear()
        return self._pool

    async def start(self) -> None:
        """Start the child now (it imports numpy and scipy: about a second), not at the first
        batch."""
        await asyncio.get_running_loop().run_in_executor(self._ensure_pool(), _noop)

    def _large(self, signals: Signals, titles: dict[str, str]) -> dict[str, Any]:
        """The large signals the child does not hold yet (called in submission order)."""
        out: dict[str, Any] = {}
        for name in LARGE:
            value = getattr(signals, name)
            if self._sent.get(name, _UNSENT) is not value:
                out[name] = value
                self._sent[name] = value
        if "snapshot" in out:
            out["titles"] = dict(titles)
        return out

    async def rank(
        self,
        signals: Signals,
        requests: Sequence[RankRequest],
        k: int,
        titles: dict[str, str],
    ) -> tuple[list[EncodedRecs], float, list[Served]]:
        """Top-``k`` per request, encoded for publishing, the seconds the ranking took and
        what the guard remembers of it."""
        pool = self._ensure_pool()
        large = self._large(signals, titles)
        small = {f.name: getattr(signals, f.name) for f in fields(Signals) if f.name not in LARGE}
        loop = asyncio.get_running_loop()
        try:
            packed = pack(requests)
            return await loop.run_in_executor(pool, _rank_in_child, large, small, packed, k)
        except BrokenProcessPool:
            if self._pool is pool:  # the first batch to notice replaces the child
                self._pool = None
                self.restarts += 1
                log.error("ranking process died; ranking this batch here, a new one follows")
            started = time.perf_counter()
            ranked = await asyncio.to_thread(self.ranker.rank, signals, requests, k, titles)
            return encoded(ranked), time.perf_counter() - started, served_lists(ranked)
        except Exception:
            # The child may not hold what ``_large`` recorded as sent: send it all next time.
            # Re-raised: the processor dead-letters the batch with this reason.
            self._sent.clear()
            raise

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
