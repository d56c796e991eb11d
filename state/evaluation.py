"""Prequential (test-then-train) evaluation: replay a dataset, score every method, then learn.

For each step in event-time order every method first ranks for the step's user, the step is
scored against that ranking, and only then do the methods learn from it — so no ranking ever
sees the event it is judged on, or anything later. Accuracy, beyond-accuracy and fairness
figures come from :mod:`state.metrics`, overall and per time window.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import numpy.typing as npt

from state.baselines import Query, Recommender
from state.catalogue import Catalogue
from state.datasets import ImpressionList, Replay, ReplayEvent, ReplayItem, is_test_positive
from state.interest import CONSUMED_TYPES, POSITIVE_TYPES
from state.metrics import (
    auc,
    coverage,
    gini,
    group_gap,
    hit_at,
    impression_metrics,
    intra_list_diversity,
    mean,
    ndcg_at,
    reciprocal_rank,
    self_information,
)

#: Per-window series the report plots (metric over time, per method).
WINDOW_METRICS: Final = ("hr@10", "ndcg@10", "mrr", "coverage", "novelty")
#: Groups with fewer scored events than this are left out of the fairness gap (too noisy).
MIN_GROUP_TESTS: Final = 30


@dataclass(frozen=True, slots=True)
class EvalOptions:
    """``k`` is the list length judged; ranks past ``depth`` count as misses (MRR 0)."""

    k: int = 10
    depth: int = 100
    windows: int = 10


@dataclass
class MethodResult:
    """One method's figures: overall metrics, per-window series and item exposure counts."""

    metrics: dict[str, float]
    windows: dict[str, list[float | None]]
    exposure: npt.NDArray[np.float64]


@dataclass
class EvalResult:
    """Everything one replay measured."""

    dataset: str
    n_items: int
    n_events: int
    n_tests: int
    window_starts_ms: list[int]
    methods: dict[str, MethodResult]
    categories: list[str]

    def table(self) -> dict[str, dict[str, float]]:
        """``{method: {metric: value}}`` (the ``--json`` output)."""
        return {name: dict(r.metrics) for name, r in self.methods.items()}


def build_catalogue(
    items: Sequence[ReplayItem], vectors: npt.NDArray[np.float32], version: str
) -> Catalogue:
    """A catalogue holding ``items`` (rows in order) with their unit ``vectors``."""
    if len(items) != len(vectors):
        raise ValueError(f"{len(items)} items but {len(vectors)} vectors")
    dim = int(vectors.shape[1]) if len(vectors) else 1
    catalogue = Catalogue(dim, version, capacity=max(len(items), 1))
    for item, vec in zip(items, vectors, strict=True):
        catalogue.upsert(
            item.item_id,
            vec,
            version=version,
            title=item.title,
            category=item.category,
            created_ms=item.created_ms,
        )
    return catalogue


@dataclass
class _Tally:
    """Per-method accumulators filled during the replay."""

    n_items: int
    ranks: list[int | None] = field(default_factory=list)
    windows: list[int] = field(default_factory=list)
    users: list[str] = field(default_factory=list)
    list_windows: list[int] = field(default_factory=list)
    diversity: list[float] = field(default_factory=list)
    novelty: list[float] = field(default_factory=list)
    recommended: list[set[int]] = field(default_factory=list)
    exposure: npt.NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))
    auc_pos: defaultdict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    auc_neg: defaultdict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    impressions: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


class Prequential:
    """Test-then-train replay of ``replay`` for ``methods`` over a shared ``catalogue``."""

    def __init__(
        self,
        replay: Replay,
        catalogue: Catalogue,
        methods: Sequence[Recommender],
        options: EvalOptions | None = None,
    ) -> None:
        self.replay = replay
        self.catalogue = catalogue
        self.methods = list(methods)
        self.options = options or EvalOptions()
        snapshot = catalogue.snapshot()
        self.n = len(snapshot)
        self.matrix = snapshot.matrix
        self.auc_mode = replay.has_impressions
        self.consumed: dict[str, set[str]] = defaultdict(set)
        self.consumed_rows: dict[str, list[int]] = defaultdict(list)
        self.counts = np.zeros(self.n, dtype=np.float64)
        self.tallies = {m.name: _Tally(self.n, exposure=np.zeros(self.n)) for m in self.methods}
        for tally in self.tallies.values():
            tally.recommended = [set() for _ in range(self.options.windows)]
        times = [s.ts_ms for s in replay.steps] or [0]
        self.t0, self.t1 = min(times), max(times)
        self.offset = 0

    def window(self, ts_ms: int) -> int:
        """Index of the equal-length event-time window holding ``ts_ms``."""
        span = max(self.t1 - self.t0, 1)
        w = int((ts_ms - self.t0) * self.options.windows // (span + 1))
        return min(max(w, 0), self.options.windows - 1)

    def run(self, progress: Callable[[int], None] | None = None) -> EvalResult:
        """Replay every step; ``progress(n)`` is told how many events each step held."""
        for step in self.replay.steps:
            if isinstance(step, ImpressionList):
                self._impressions(step)
                learned = step.events()
            else:
                self._event(step)
                learned = [step]
            for event in learned:
                self._learn(event)
            if progress is not None:
                progress(len(learned))
        return self._result()

    # --- test ---------------------------------------------------------------------------------

    def _query(self, user_id: str) -> Query:
        return Query(user_id, self.consumed[user_id], self.consumed_rows[user_id])

    def _rank(self, method: Recommender, query: Query, depth: int) -> list[int]:
        started = time.perf_counter()
        rows = method.rank([query], depth)[0]
        self.tallies[method.name].seconds += time.perf_counter() - started
        return rows

    def _event(self, event: ReplayEvent) -> None:
        row = self.catalogue.row(event.item_id) if event.item_id else None
        if row is None or not event.test or event.item_id in self.consumed[event.user_id]:
            return
        positive = is_test_positive(event)
        negative = self.auc_mode and event.type == "impression"
        if not (positive or negative):
            return
        depth = self.n if self.auc_mode else self.options.depth
        query = self._query(event.user_id)
        w = self.window(event.ts_ms)
        for method in self.methods:
            rows = self._rank(method, query, depth)
            tally = self.tallies[method.name]
            rank = rows.index(row) + 1 if row in rows else None
            if self.auc_mode:
                score = -float(rank if rank is not None else self.n + 1)
                (tally.auc_pos if positive else tally.auc_neg)[event.user_id].append(score)
            if positive:
                self._record(tally, rank, w, event.user_id)
                self._beyond(tally, rows[: self.options.k], w)

    def _impressions(self, step: ImpressionList) -> None:
        query = self._query(step.user_id)
        w = self.window(step.ts_ms)
        rows_of = [self.catalogue.row(c) for c in step.candidates]
        scored = 0 < sum(step.labels) < len(step.labels)
        for method in self.methods:
            rows = self._rank(method, query, self.n)
            tally = self.tallies[method.name]
            position = {r: p for p, r in enumerate(rows, 1)}
            ranks = [position.get(r) if r is not None else None for r in rows_of]
            if scored:
                scores = [-float(p if p is not None else self.n + 1) for p in ranks]
                tally.impressions.append(impression_metrics(step.labels, scores))
            for item, label, row, rank in zip(
                step.candidates, step.labels, rows_of, ranks, strict=True
            ):
                if label and row is not None and item not in self.consumed[step.user_id]:
                    self._record(tally, rank, w, step.user_id)
            self._beyond(tally, rows[: self.options.k], w)

    def _record(self, tally: _Tally, rank: int | None, window: int, user_id: str) -> None:
        tally.ranks.append(rank if rank is not None and rank <= self.options.depth else None)
        tally.windows.append(window)
        tally.users.append(user_id)

    def _beyond(self, tally: _Tally, top: list[int], window: int) -> None:
        if not top:
            return
        tally.exposure[top] += 1.0
        tally.recommended[window].update(top)
        tally.list_windows.append(window)
        ild = intra_list_diversity(self.matrix[top])
        tally.diversity.append(ild if ild is not None else 0.0)
        info = self_information(self.counts[top], float(self.counts.sum()), self.n)
        tally.novelty.append(float(info.mean()))

    # --- train --------------------------------------------------------------------------------

    def _learn(self, event: ReplayEvent) -> None:
        for method in self.methods:
            started = time.perf_counter()
            method.learn_one(event, self.offset)
            self.tallies[method.name].seconds += time.perf_counter() - started
        self.offset += 1
        if event.item_id is None:
            return
        if event.type in CONSUMED_TYPES and event.item_id not in self.consumed[event.user_id]:
            self.consumed[event.user_id].add(event.item_id)
            row = self.catalogue.row(event.item_id)
            if row is not None:
                self.consumed_rows[event.user_id].append(row)
        if event.type in POSITIVE_TYPES:
            row = self.catalogue.row(event.item_id)
            if row is not None:
                self.counts[row] += 1.0

    # --- results ------------------------------------------------------------------------------

    def _result(self) -> EvalResult:
        categories = sorted(
            {self.catalogue.categories.get(i, "") for i in self.catalogue.snapshot().ids}
        )
        methods = {name: self._method_result(t, categories) for name, t in self.tallies.items()}
        n_tests = max((len(t.ranks) for t in self.tallies.values()), default=0)
        span = max(self.t1 - self.t0, 1)
        starts = [
            self.t0 + (span + 1) * w // self.options.windows for w in range(self.options.windows)
        ]
        return EvalResult(
            self.replay.name, self.n, self.offset, n_tests, starts, methods, categories
        )

    def _method_result(self, t: _Tally, categories: list[str]) -> MethodResult:
        k = self.options.k
        hits = [hit_at(r, k) for r in t.ranks]
        ndcgs = [ndcg_at(r, k) for r in t.ranks]
        rrs = [reciprocal_rank(r) for r in t.ranks]
        metrics: dict[str, float | None] = {
            f"hr@{k}": mean(hits),
            f"ndcg@{k}": mean(ndcgs),
            "mrr": mean(rrs),
        }
        if self.auc_mode:
            if t.impressions:
                for key in ("auc", "mrr", "ndcg@5", "ndcg@10"):
                    metrics["auc" if key == "auc" else f"imp_{key}"] = mean(
                        [m[key] for m in t.impressions]
                    )
            else:
                per_user = [auc(t.auc_pos[u], t.auc_neg[u]) for u in t.auc_pos]
                metrics["auc"] = mean([a for a in per_user if a is not None])
        everything = set().union(*t.recommended) if t.recommended else set()
        metrics["coverage"] = coverage(everything, self.n)
        metrics["diversity"] = mean(t.diversity)
        metrics["novelty"] = mean(t.novelty)
        metrics["gini_items"] = gini(t.exposure)
        by_category: dict[str, float] = dict.fromkeys(categories, 0.0)
        ids = self.catalogue.snapshot().ids
        for row in np.flatnonzero(t.exposure):
            by_category[self.catalogue.categories.get(ids[row], "")] += float(t.exposure[row])
        metrics["gini_categories"] = gini(list(by_category.values()))
        metrics.update(self._fairness(t, ndcgs, k))
        metrics["tests"] = float(len(t.ranks))
        metrics["seconds"] = round(t.seconds, 2)
        windows: dict[str, list[float | None]] = {}
        w_of = np.asarray(t.windows, dtype=np.intp)
        lw = np.asarray(t.list_windows, dtype=np.intp)
        for name, values in ((f"hr@{k}", hits), (f"ndcg@{k}", ndcgs), ("mrr", rrs)):
            arr = np.asarray(values, dtype=np.float64)
            windows[name] = [mean(arr[w_of == w].tolist()) for w in range(self.options.windows)]
        nov = np.asarray(t.novelty, dtype=np.float64)
        windows["novelty"] = [mean(nov[lw == w].tolist()) for w in range(self.options.windows)]
        windows["coverage"] = [coverage(s, self.n) if s else None for s in t.recommended]
        clean = {key: float(v) for key, v in metrics.items() if v is not None}
        return MethodResult(clean, windows, t.exposure)

    def _fairness(self, t: _Tally, ndcgs: list[float], k: int) -> dict[str, float | None]:
        """Per user-group nDCG and the gap between the best and worst served group."""
        out: dict[str, float | None] = {}
        attrs = sorted({a for attrs in self.replay.users.values() for a in attrs})
        for attr in attrs:
            groups: defaultdict[str, list[float]] = defaultdict(list)
            for user, value in zip(t.users, ndcgs, strict=True):
                group = self.replay.users.get(user, {}).get(attr)
                if group:
                    groups[group].append(value)
            per_group = {
                g: float(np.mean(v)) for g, v in sorted(groups.items()) if len(v) >= MIN_GROUP_TESTS
            }
            for g, v in per_group.items():
                out[f"ndcg@{k}[{attr}={g}]"] = v
            out[f"ndcg@{k}_gap:{attr}"] = group_gap(per_group)
        return out


def evaluate(
    replay: Replay,
    catalogue: Catalogue,
    methods: Sequence[Recommender],
    options: EvalOptions | None = None,
    progress: Callable[[int], None] | None = None,
) -> EvalResult:
    """Run the prequential replay; see :class:`Prequential`."""
    return Prequential(replay, catalogue, methods, options).run(progress)
