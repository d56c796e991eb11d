"""Recommenders the evaluation harness compares, behind one protocol: ``learn_one`` and ``rank``.

streamrec itself (and its ablations) runs the worker's :class:`~state.engine.Engine` and
:class:`~state.ranking.Ranker` unchanged; the baselines are random, popularity, decayed
popularity, online item co-occurrence, River's ``reco.BiasedMF`` and the interest vector alone.
All rank the same catalogue rows and never return an excluded (already consumed) row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Final, Protocol

import numpy as np
import numpy.typing as npt
from river import optim, reco

from state.catalogue import Catalogue
from state.cooccurrence import CoOccurrence
from state.datasets import ReplayEvent
from state.engine import Engine, EngineConfig, Interaction
from state.groups import GroupConfig, LocalGroups, SharedGroups, assign_and_learn, merge
from state.interest import POSITIVE_TYPES, UserState, event_weight, normalised
from state.popularity import Popularity
from state.ranking import BlendWeights, Ranker, RankRequest, served_lists
from state.reader import GROUP_WARMUP_EVENTS

Rows = npt.NDArray[np.intp]
#: Co-occurrence pairs folded into the sparse matrix every this many positives. The worker folds
#: once per wall-clock second (~1,000 events at its rate); a replay needs a deterministic rule.
FOLD_EVERY_POSITIVES: Final = 256
#: The co-occurrence baselines pair each positive with the user's previous this many positives
#: (the engine itself pairs more items, of more event types: :data:`state.engine.RECENT_ITEMS`).
RECENT_POSITIVES: Final = 5
#: Content weight of the "no content" ablation: negligible, yet keeps excluded rows at -inf.
_NO_CONTENT: Final = 1e-6
#: Baseline scores this small break ties (co-occurrence falls back to popularity).
_TIE_BREAK: Final = 1e-6
#: A replay's notion of a second for wall-clock schedules (~ a worker's event rate).
REPLAY_EVENTS_PER_S: Final = 1000
#: Events between two group syncs in a replay (a worker syncs every ``groups_sync_s``, 5 s).
GROUP_SYNC_EVENTS: Final = 1000
#: Length of a group's list (a worker's ``top_k`` default).
GROUP_LIST_DEPTH: Final = 50


@dataclass(slots=True)
class Query:
    """One ranking request: the user and the catalogue rows they already consumed."""

    user_id: str
    exclude: set[str] = field(default_factory=set)
    exclude_rows: list[int] = field(default_factory=list)


class Recommender(Protocol):
    """What the harness drives: learn from events in order, rank users on demand."""

    name: str

    def learn_one(self, event: ReplayEvent, offset: int) -> None:
        """Learn from ``event``, the ``offset``-th event of the replay (0-based, increasing)."""
        ...

    def rank(self, queries: Sequence[Query], k: int) -> list[list[int]]:
        """Top-``k`` catalogue rows per query, best first, never an excluded row."""
        ...


def tie_order(n_items: int, seed: int = 0) -> Rows:
    """A fixed random priority per row that breaks score ties.

    Breaking ties by row (item id order) would leak dataset structure into the baselines:
    catalogues are often listed oldest or most popular first.
    """
    return np.random.default_rng(seed).permutation(n_items).astype(np.intp)


def top_rows(
    scores: npt.NDArray[np.float64], exclude_rows: Sequence[int], k: int, order: Rows
) -> list[int]:
    """The ``k`` best rows of ``scores`` minus ``exclude_rows``; ties go to the lower ``order``.

    >>> top_rows(np.array([0.1, 0.9, 0.5, 0.9]), [3], 2, np.arange(4))
    [1, 2]
    """
    s = np.array(scores, dtype=np.float64)
    if len(exclude_rows):
        s[np.asarray(exclude_rows, dtype=np.intp)] = -np.inf
    n = len(s)
    k = min(k, n)
    if k <= 0:
        return []
    part = np.argpartition(-s, k - 1)[:k] if k < n else np.arange(n)
    # The partition boundary may split a tie: widen to every row scoring at least the k-th.
    kth = s[part].min()
    if np.isfinite(kth):
        part = np.flatnonzero(s >= kth)
    ordered = part[np.lexsort((order[part], -s[part]))][:k]
    return [int(r) for r in ordered[np.isfinite(s[ordered])]]


class ReplayCoOccurrence(CoOccurrence):
    """The worker's co-occurrence, folded every :data:`FOLD_EVERY_POSITIVES` positives.

    Folding by event count instead of wall-clock time keeps a replay deterministic.
    """

    def __init__(self, half_life_s: float) -> None:
        super().__init__(half_life_s, fold_interval_s=float("inf"))
        self._since_fold = 0

    def observe(self, recent_rows: list[int], row: int, ts_ms: int) -> None:
        super().observe(recent_rows, row, ts_ms)
        self._since_fold += 1
        if self._since_fold >= FOLD_EVERY_POSITIVES:
            self._fold()
            self._since_fold = 0


def to_interaction(event: ReplayEvent, offset: int) -> Interaction:
    """The engine's view of a replayed event; ``offset`` is its position in the replay."""
    return Interaction(
        event.user_id,
        event.type,
        event.item_id,
        event.ts_ms,
        event.dwell_ms,
        0,
        offset,
        event.position,
    )


class SharedEngine:
    """One :class:`Engine` and its user states, shared by the streamrec variants of a run.

    Every variant calls :meth:`apply` for every event; the engine's own re-delivery guard (the
    per-user offset watermark) applies each event once, as it does for a worker.
    """

    def __init__(self, catalogue: Catalogue, config: EngineConfig) -> None:
        self.engine = Engine(catalogue, config)
        self.engine.cooccurrence = ReplayCoOccurrence(config.popularity_half_life_s)
        self.engine.cooccurrence_long = ReplayCoOccurrence(config.popularity_long_half_life_s)
        # The click model's features read signals refreshed once a second: in a replay, once per
        # REPLAY_EVENTS_PER_S events, so a run's figures do not depend on the machine's speed.
        self._offset = 0
        self.engine.clock = lambda: self._offset / REPLAY_EVENTS_PER_S
        self.states: dict[str, UserState] = {}

    def apply(self, event: ReplayEvent, offset: int) -> None:
        self._offset = offset
        state = self.states.get(event.user_id)
        if state is None:
            state = self.states[event.user_id] = self.engine.new_state()
        self.engine.apply(state, to_interaction(event, offset))

    def state(self, user_id: str) -> UserState:
        state = self.states.get(user_id)
        return state if state is not None else self.engine.new_state()


class EngineRecommender:
    """streamrec's ranking with blend ``weights``: the worker's Ranker, then ``sr:popular``.

    Users the Ranker has no signal for get decayed popularity, as the reader serves them.
    """

    def __init__(self, name: str, shared: SharedEngine, weights: BlendWeights) -> None:
        self.name = name
        self.shared = shared
        self.ranker = Ranker(weights)

    def learn_one(self, event: ReplayEvent, offset: int) -> None:
        self.shared.apply(event, offset)

    def rank(self, queries: Sequence[Query], k: int) -> list[list[int]]:
        engine = self.shared.engine
        catalogue = engine.catalogue
        requests = []
        for q in queries:
            request = engine.request(q.user_id, self.shared.state(q.user_id))
            # The harness's consumed set: the whole history, not the state's last 40 entries,
            # so every method is scored against the same candidates.
            request.exclude = q.exclude
            requests.append(request)
        signals = engine.signals()  # streamrec itself: the click model's learned weights
        if self.name not in CLICK_MODEL_VARIANTS:
            # An ablation's own fixed weights, no competing order.
            signals = replace(signals, weights=None, alternative=None)
        ranked = self.ranker.rank(signals, requests, k, catalogue.titles)
        if self.name in CLICK_MODEL_VARIANTS:
            engine.served(served_lists(ranked))
        out: list[list[int]] = []
        n = len(catalogue.snapshot())
        for q, result in zip(queries, ranked, strict=True):
            rows = [r for r in (catalogue.row(i) for i, _ in result.items) if r is not None]
            if len(rows) < k:
                # Cold start: the reader falls back to decayed popularity (sr:popular).
                taken = set(rows) | set(q.exclude_rows)
                popular = engine.popularity.top(n, k + len(taken))
                rows += [int(r) for r in popular if int(r) not in taken][: k - len(rows)]
            out.append(rows)
        return out


class ContentRecommender:
    """The interest vector alone: cosine between a user's vector and every item, no blend.

    Uses the worker's interest-vector maths (the shared engine's user states) but not the
    Ranker, so it costs one matrix-vector product; users without a vector get ``sr:popular``.
    """

    def __init__(self, shared: SharedEngine, seed: int = 0) -> None:
        self.name = "content"
        self.shared = shared
        self.order = tie_order(len(shared.engine.catalogue.snapshot()), seed)

    def learn_one(self, event: ReplayEvent, offset: int) -> None:
        self.shared.apply(event, offset)

    def rank(self, queries: Sequence[Query], k: int) -> list[list[int]]:
        engine = self.shared.engine
        snapshot = engine.catalogue.snapshot()
        out = []
        for q in queries:
            vec = normalised(self.shared.state(q.user_id).vec)
            if vec.any():
                scores = (snapshot.matrix @ vec).astype(np.float64)
            else:
                scores = engine.popularity.decayed(len(snapshot))
            out.append(top_rows(scores, q.exclude_rows, k, self.order))
        return out


class RandomRecommender:
    """Uniformly random rankings (seeded): the floor every method must clear."""

    def __init__(self, n_items: int, seed: int = 0) -> None:
        self.name = "random"
        self.n = n_items
        self.rng = np.random.default_rng(seed)
        self.order = tie_order(n_items, seed)

    def learn_one(self, event: ReplayEvent, offset: int) -> None:
        return None

    def rank(self, queries: Sequence[Query], k: int) -> list[list[int]]:
        return [top_rows(self.rng.random(self.n), q.exclude_rows, k, self.order) for q in queries]


class PopularityRecommender:
    """Most positive interactions so far (all-time counts)."""

    def __init__(self, catalogue: Catalogue, seed: int = 0) -> None:
        self.name = "popularity"
        self.catalogue = catalogue
        self.counts = np.zeros(len(catalogue.snapshot()), dtype=np.float64)
        self.order = tie_order(len(self.counts), seed)

    def learn_one(self, event: ReplayEvent, offset: int) -> None:
        row = self.catalogue.row(event.item_id) if event.item_id else None
        if row is not None and event.type in POSITIVE_TYPES:
            self.counts[row] += 1.0

    def rank(self, queries: Sequence[Query], k: int) -> list[list[int]]:
        return [top_rows(self.counts, q.exclude_rows, k, self.order) for q in queries]


class DecayedPopularityRecommender:
    """The worker's decayed popularity (``sr:popular``, the cold-start fallback) alone."""

    def __init__(
        self,
        catalogue: Catalogue,
        half_life_s: float,
        seed: int = 0,
        name: str = "decayed-popularity",
    ) -> None:
        self.name = name
        self.catalogue = catalogue
        self.popularity = Popularity(half_life_s)
        self.order = tie_order(len(catalogue.snapshot()), seed)

    def learn_one(self, event: ReplayEvent, offset: int) -> None:
        row = self.catalogue.row(event.item_id) if event.item_id else None
        if row is not None:
            self.popularity.add(row, event_weight(event.type, event.dwell_ms), event.ts_ms)

    def rank(self, queries: Sequence[Query], k: int) -> list[list[int]]:
        scores = self.popularity.decayed(len(self.catalogue.snapshot()))
        return [top_rows(scores, q.exclude_rows, k, self.order) for q in queries]


class CoOccurrenceRecommender:
    """Online item-to-item co-occurrence from each user's recent positives (ties: popularity)."""

    def __init__(
        self, catalogue: Catalogue, half_life_s: float, seed: int = 0, name: str = "cooccurrence"
    ) -> None:
        self.name = name
        self.catalogue = catalogue
        self.cooc = ReplayCoOccurrence(half_life_s)
        self.counts = np.zeros(len(catalogue.snapshot()), dtype=np.float64)
        self.order = tie_order(len(self.counts), seed)
        self.recent: dict[str, list[int]] = {}

    def learn_one(self, event: ReplayEvent, offset: int) -> None:
        row = self.catalogue.row(event.item_id) if event.item_id else None
        if row is None or event.type not in POSITIVE_TYPES:
            return
        recent = self.recent.setdefault(event.user_id, [])
        self.cooc.observe(list(recent), row, event.ts_ms)
        self.counts[row] += 1.0
        recent.insert(0, row)
        del recent[RECENT_POSITIVES:]

    def rank(self, queries: Sequence[Query], k: int) -> list[list[int]]:
        n = len(self.counts)
        recent = [[(r, 1.0) for r in self.recent.get(q.user_id, [])] for q in queries]
        collab = self.cooc.scores(recent, n).toarray()
        top = self.counts.max()
        pop = self.counts / top if top > 0 else self.counts
        return [
            top_rows(collab[b] + _TIE_BREAK * pop, q.exclude_rows, k, self.order)
            for b, q in enumerate(queries)
        ]


def mf_target(event: ReplayEvent) -> float:
    """What BiasedMF regresses: the star rating when there is one, else implicit 1 / 0.5 / 0.

    >>> mf_target(ReplayEvent("u", "view", "i", 0)), mf_target(ReplayEvent("u", "click", "i", 0))
    (0.5, 1.0)
    """
    if event.rating is not None:
        return event.rating
    if event.type in POSITIVE_TYPES:
        return 1.0
    return 0.5 if event.type == "view" else 0.0


class BiasedMFRecommender:
    """River's ``reco.BiasedMF`` trained online; ranking reads its factors as matrices.

    Scoring all items through ``predict_one`` would cost one Python call per item per ranking,
    so the user and item factors River just updated are mirrored into numpy arrays instead.
    """

    def __init__(self, catalogue: Catalogue, n_factors: int = 10, seed: int = 42) -> None:
        self.name = "biased-mf"
        self.catalogue = catalogue
        self.model = reco.BiasedMF(
            n_factors=n_factors,
            bias_optimizer=optim.SGD(0.025),
            latent_optimizer=optim.SGD(0.05),
            latent_initializer=optim.initializers.Normal(mu=0.0, sigma=0.1, seed=seed),
            l2_bias=0.0,
            l2_latent=0.0,
            seed=seed,
        )
        n = len(catalogue.snapshot())
        self.item_factors = np.zeros((n, n_factors), dtype=np.float64)
        self.item_bias = np.zeros(n, dtype=np.float64)
        self.user_factors: dict[str, npt.NDArray[np.float64]] = {}
        self.order = tie_order(n, seed)

    def learn_one(self, event: ReplayEvent, offset: int) -> None:
        if event.item_id is None or event.type == "search":
            return
        user, item = event.user_id, event.item_id
        self.model.learn_one(user, item, mf_target(event))  # type: ignore[no-untyped-call]
        self.user_factors[user] = np.asarray(self.model.u_latents[user], dtype=np.float64)
        row = self.catalogue.row(item)
        if row is not None:
            self.item_factors[row] = self.model.i_latents[item]
            self.item_bias[row] = self.model.i_biases[item]

    def rank(self, queries: Sequence[Query], k: int) -> list[list[int]]:
        out = []
        for q in queries:
            u = self.user_factors.get(q.user_id)
            scores = self.item_bias if u is None else self.item_bias + self.item_factors @ u
            out.append(top_rows(scores, q.exclude_rows, k, self.order))
        return out


#: The methods that run the worker's Ranker (they differ in blend weights, whether the click
#: model re-ranks, and whether users keep several interest centroids).
ENGINE_VARIANTS: Final = frozenset(
    {
        "content+collab",
        "collab+popular",
        "streamrec",
        "streamrec-ranker-content",
        "streamrec-no-click",
        "streamrec-single-interest",
        "streamrec-single-interest-no-click",
    }
)
#: Variants ranked with the click model's re-ranking (the others keep the blend's order).
CLICK_MODEL_VARIANTS: Final = frozenset({"streamrec", "streamrec-single-interest"})
#: Variants whose engine keeps one interest vector per user (``max_interests=1``).
SINGLE_INTEREST_VARIANTS: Final = frozenset(
    {"streamrec-single-interest", "streamrec-single-interest-no-click"}
)
BASELINES: Final = (
    "random",
    "popularity",
    "decayed-popularity",
    "cooccurrence",
    "biased-mf",
    "content",
    # The same two at the engine's long half-life, which streamrec's click model also reads:
    # a baseline is compared at every time scale the full method uses.
    "decayed-popularity-long",
    "cooccurrence-long",
)
#: The default ``--methods``: every baseline and the full system.
DEFAULT_METHODS: Final = (*BASELINES, "streamrec")
#: Ablation steps, on request: the blend without popularity, the blend without the interest
#: vector, the content-only blend run through the worker's Ranker (it should match
#: ``content``), the full blend without the click model (the AUC side-by-side), and the
#: one-interest-vector engine with and without the click model (the multi-interest step).
ABLATIONS: Final = (
    "content+collab",
    "collab+popular",
    "streamrec-ranker-content",
    "streamrec-no-click",
    "streamrec-single-interest",
    "streamrec-single-interest-no-click",
    "streamrec+groups",
)
METHODS: Final = (*DEFAULT_METHODS, *ABLATIONS)


def _cost(name: str) -> float:
    """A method's rough share of a replay's time (ML-100K, seconds / 20: the click-model
    variants ~170 s, the other engine variants and ``content`` ~45-60 s, baselines 5-25 s)."""
    if name in CLICK_MODEL_VARIANTS or name == "streamrec+groups":
        return 8.0
    if name in ENGINE_VARIANTS or name == "content":
        return 2.5
    return 1.0 if name.startswith("cooccurrence") else 0.3


def job_groups(names: Sequence[str], jobs: int) -> list[list[str]]:
    """Split ``names`` over up to ``jobs`` processes by :func:`_cost`, longest first; the methods
    that share an engine (:func:`make_methods`) stay in one, so none is updated twice.

    >>> job_groups(["random", "content", "streamrec", "cooccurrence", "biased-mf"], 2)
    [['content', 'streamrec'], ['random', 'cooccurrence', 'biased-mf']]
    """
    units: dict[str, list[str]] = {}
    for name in names:
        if name in SINGLE_INTEREST_VARIANTS:
            key = "single-interest engine"
        elif name in ENGINE_VARIANTS or name == "content":
            key = "shared engine"
        else:
            key = name
        units.setdefault(key, []).append(name)
    bins: list[list[str]] = [[] for _ in range(max(1, min(jobs, len(units))))]
    loads = [0.0] * len(bins)
    for unit in sorted(units.values(), key=lambda u: -sum(map(_cost, u))):
        lightest = loads.index(min(loads))
        bins[lightest] += unit
        loads[lightest] += sum(map(_cost, unit))
    order = {name: i for i, name in enumerate(names)}
    return [sorted(b, key=order.__getitem__) for b in bins if b]


def variant_weights(name: str, weights: BlendWeights) -> BlendWeights:
    """Blend weights of a streamrec variant: interest vector alone, + co-occurrence, or all."""
    if name == "streamrec-ranker-content":
        return BlendWeights(weights.content, 0.0, 0.0)
    if name == "content+collab":
        return BlendWeights(weights.content, weights.collab, 0.0)
    if name == "collab+popular":
        # Not 0: the Ranker multiplies -inf (excluded rows) by the weight, and 0 * -inf is NaN.
        return BlendWeights(_NO_CONTENT, weights.collab, weights.popular)
    return weights


def make_methods(
    names: Sequence[str], catalogue: Catalogue, config: EngineConfig, seed: int = 0
) -> list[Recommender]:
    """Fresh recommenders for ``names`` over ``catalogue`` (already holding every item)."""
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    shared = SharedEngine(catalogue, config)
    single: SharedEngine | None = None  # a second engine, only when a variant asks for it
    out: list[Recommender] = []
    for name in names:
        if name == "streamrec+groups":
            # Its own engine: group ids are click-model features, and the other variants' users
            # must not get them from this method's assignments.
            grouped = SharedEngine(catalogue, config)
            out.append(
                GroupServingRecommender(EngineRecommender("streamrec", grouped, config.weights))
            )
        elif name in SINGLE_INTEREST_VARIANTS:
            single = single or SharedEngine(catalogue, replace(config, max_interests=1))
            out.append(EngineRecommender(name, single, config.weights))
        elif name in ENGINE_VARIANTS:
            out.append(EngineRecommender(name, shared, variant_weights(name, config.weights)))
        elif name == "content":
            out.append(ContentRecommender(shared, seed))
        else:
            out.append(_baseline(name, catalogue, config, seed))
    return out


def _baseline(name: str, catalogue: Catalogue, config: EngineConfig, seed: int) -> Recommender:
    """One of the baselines that keep their own state (not the shared engine)."""
    short, long = config.popularity_half_life_s, config.popularity_long_half_life_s
    if name == "random":
        return RandomRecommender(len(catalogue.snapshot()), seed)
    if name == "popularity":
        return PopularityRecommender(catalogue, seed)
    if name == "decayed-popularity":
        return DecayedPopularityRecommender(catalogue, short, seed)
    if name == "decayed-popularity-long":
        return DecayedPopularityRecommender(catalogue, long, seed, name)
    if name == "cooccurrence":
        return CoOccurrenceRecommender(catalogue, short, seed)
    if name == "cooccurrence-long":
        return CoOccurrenceRecommender(catalogue, long, seed, name)
    return BiasedMFRecommender(catalogue, seed=seed + 42)


class GroupServingRecommender:
    """streamrec as the reader serves it when groups exist: warm-up users get their group's list.

    Mirrors the workers: every user is assigned to the shared model's nearest centroid and users
    past warm-up teach it (:func:`state.groups.assign_and_learn`); every
    :data:`GROUP_SYNC_EVENTS` events the model is merged and each centroid is ranked like a
    user into its list (``sr:group:{g}:recs``); a user with fewer than
    :data:`~state.reader.GROUP_WARMUP_EVENTS` events and a group is served that list as it
    is, else the personal ranking (:class:`EngineRecommender`).
    """

    name = "streamrec+groups"

    def __init__(
        self,
        personal: EngineRecommender,
        config: GroupConfig | None = None,
        sync_every: int = GROUP_SYNC_EVENTS,
    ) -> None:
        self.personal = personal
        catalogue = personal.shared.engine.catalogue
        config = config or GroupConfig()
        self.model = SharedGroups.empty(config.max_groups, catalogue.dim, catalogue.version)
        self.local = LocalGroups(self.model, config)
        self.sync_every = sync_every
        #: Each group's list as catalogue rows, as of the last sync.
        self.lists: dict[str, list[int]] = {}
        self._since_sync = 0

    def learn_one(self, event: ReplayEvent, offset: int) -> None:
        self.personal.learn_one(event, offset)
        state = self.personal.shared.states.get(event.user_id)
        if state is not None:
            assign_and_learn(self.local, [state])
        self._since_sync += 1
        if self._since_sync >= self.sync_every:
            self._sync()

    def _sync(self) -> None:
        self._since_sync = 0
        self.model = merge(self.model, self.local)
        self.local = LocalGroups(self.model, self.local.config)
        groups = np.flatnonzero(self.model.seeded).tolist()
        engine = self.personal.shared.engine
        requests = [RankRequest(user_id=f"group:{g}", vec=self.model.centroids[g]) for g in groups]
        ranked = engine.rank_requests(requests, GROUP_LIST_DEPTH, engine.signals())
        rows = engine.catalogue.row
        self.lists = {
            str(g): [r for r in (rows(i) for i, _ in result.items) if r is not None]
            for g, result in zip(groups, ranked, strict=True)
        }

    def _group_list(self, query: Query) -> list[int] | None:
        state = self.personal.shared.states.get(query.user_id)
        if state is None or not state.group or state.events >= GROUP_WARMUP_EVENTS:
            return None
        consumed = set(query.exclude_rows)
        # The reader serves the list as it is; the harness scores every method against the
        # catalogue minus consumed items, so those (at most a warm-up's few) are left out.
        rows = [r for r in self.lists.get(state.group, []) if r not in consumed]
        return rows or None

    def rank(self, queries: Sequence[Query], k: int) -> list[list[int]]:
        served = [self._group_list(q) for q in queries]
        out = []
        # The personal list serves everyone else and tops up a short group list.
        for group, own in zip(served, self.personal.rank(queries, k), strict=True):
            if group is None:
                out.append(own)
                continue
            head = group[:k]
            taken = set(head)
            out.append(head + [r for r in own if r not in taken][: k - len(head)])
        return out
