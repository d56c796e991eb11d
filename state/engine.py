"""The recommender's in-process core: catalogue + signals + per-user state updates + ranking.

Workers drive it from Kafka batches; the evaluation harness drives it from a replay. It does no
I/O, so both see exactly the same maths.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from state.catalogue import Catalogue
from state.click_model import ClickModel
from state.cooccurrence import CoOccurrence, collab_at
from state.ease import HISTORY, EaseLearner, user_items
from state.features import (
    FEATURES,
    FeatureWeights,
    category_affinity,
    coded_shares,
    feature_stack,
    freshness,
    shown_at,
)
from state.guard import RankingGuard
from state.interest import (
    ENGAGED_TYPES,
    FORWARDED_PREFIX,
    FORWARDED_REMEMBERED,
    POSITIVE_TYPES,
    HistoryEntry,
    UserState,
    Vector,
    add_to_vector,
    apply_event,
    normalised,
    resolve_pending,
)
from state.multi_interest import InterestConfig, active_interests, update_interests
from state.popularity import Popularity
from state.ranking import (
    BlendWeights,
    CandidateIndex,
    Ranked,
    Ranker,
    RankRequest,
    Served,
    Signals,
    group_rows,
)

#: Recent engaged items (positives and views) that feed co-occurrence, the collaborative score
#: and explanations. Measured on MovieLens-100K (30-day co-occurrence alone, a dense replay of
#: the harness's protocol): 5 positives 0.093 nDCG@10, 10 positives 0.096, 10 engaged items
#: 0.104, with the recency weights below 0.107; 20 or 50 items were worse.
RECENT_ITEMS = 10
#: The k-th newest of them weighs ``RECENCY_DECAY ** k`` times its event weight.
RECENCY_DECAY = 0.9
#: The click model's features are computed against signals at most this old.
SIGNALS_REFRESH_S = 1.0
#: An impression not engaged with within this window is a negative of the next engagement.
CLICK_WINDOW_MS = 30 * 60 * 1000
#: Users whose last impression is remembered for that (oldest forgotten first).
SKIPPED_USERS = 100_000
#: Random items drawn per engagement; the one nearest the user is the click model's negative.
NEGATIVE_POOL = 16


def recency_weighted(entries: Sequence[HistoryEntry]) -> list[tuple[str, float]]:
    """``(item_id, weight)`` of history entries given newest first, older ones weighing less.

    >>> from state.interest import HistoryEntry
    >>> recency_weighted([HistoryEntry("b", "like", 2.0, 2), HistoryEntry("a", "view", 0.3, 1)])
    [('b', 2.0), ('a', 0.27)]
    """
    return [(h.item_id, round(h.weight * RECENCY_DECAY**k, 6)) for k, h in enumerate(entries)]


@dataclass(frozen=True, slots=True)
class EngineConfig:
    interest_half_life_s: float = 7 * 24 * 3600.0
    popularity_half_life_s: float = 24 * 3600.0
    #: The second time scale of popularity and co-occurrence: the click model learns how much
    #: the long run matters next to the trend (news lives for a day, a film for years).
    popularity_long_half_life_s: float = 30 * 24 * 3600.0
    #: An item's freshness (a click-model feature) halves with every this much age.
    item_age_half_life_s: float = 24 * 3600.0
    weights: BlendWeights = field(default_factory=BlendWeights)
    #: ``max_interests=1`` turns multi-interest ranking off (one blended vector per user).
    max_interests: int = 4
    join_similarity: float = 0.4
    #: Learn re-ranking weights online from engagements (see :mod:`state.click_model`).
    click_model: bool = True
    #: Learn from one in this many labelled events.
    click_every: int = 8
    #: Fit EASE over engaged items (see :mod:`state.ease`): ranking candidates and a feature.
    ease: bool = True
    ease_half_life_s: float = 365 * 24 * 3600.0
    ease_l2: float = 100.0
    #: The inversion is cubic in this: 2,000 items take ~1 s on one core.
    ease_max_items: int = 2000
    #: Engaged events between two EASE refits.
    ease_refit_every: int = 2048

    @property
    def interests(self) -> InterestConfig:
        return InterestConfig(self.max_interests, self.join_similarity, self.interest_half_life_s)


@dataclass(frozen=True, slots=True)
class Interaction:
    """An event as the engine needs it (already validated)."""

    user_id: str
    event_type: str
    item_id: str | None
    ts_ms: int
    dwell_ms: float | None = None
    partition: int = 0
    offset: int = 0
    #: Where the item was shown (0: the top of the list), from the event's ``context``.
    position: int | None = None
    event_id: str = ""


class Engine:
    """Applies interactions to user states and ranks users against the catalogue."""

    def __init__(
        self,
        catalogue: Catalogue,
        config: EngineConfig | None = None,
        index: CandidateIndex | None = None,
    ) -> None:
        self.catalogue = catalogue
        self.config = config or EngineConfig()
        self.popularity = Popularity(self.config.popularity_half_life_s)
        self.popularity_long = Popularity(self.config.popularity_long_half_life_s)
        self.cooccurrence = CoOccurrence(self.config.popularity_half_life_s)
        self.cooccurrence_long = CoOccurrence(self.config.popularity_long_half_life_s)
        #: Per user group, popularity among its users (long half-life): the group feature.
        self.group_popularity: dict[str, Popularity] = {}
        self.ranker = Ranker(self.config.weights, index)
        self._interests = self.config.interests
        self.click: ClickModel | None = ClickModel() if self.config.click_model else None
        cfg = self.config
        self.ease: EaseLearner | None = (
            EaseLearner(cfg.ease_half_life_s, cfg.ease_l2, cfg.ease_max_items, cfg.ease_refit_every)
            if cfg.ease
            else None
        )
        #: Refit EASE inside :meth:`apply` when due (a replay); a worker refits on a thread.
        self.ease_inline = True
        #: Learned or collaborative re-ranking, whichever serves better (with the click model).
        self.guard: RankingGuard | None = RankingGuard() if self.click is not None else None
        self._negatives = random.Random(0)  # noqa: S311 - sampling, not security
        self._frozen: tuple[float, Signals] | None = None
        self._click_seen = 0
        #: Wall seconds spent teaching the click model (the worker reports it per event).
        self.learn_seconds = 0.0
        #: Per user, the newest impression (row, ts_ms, position) not yet engaged with.
        self._skipped: dict[str, tuple[int, int, int | None]] = {}
        #: Seconds for :data:`SIGNALS_REFRESH_S`; a replay counts events instead (deterministic).
        self.clock: Callable[[], float] = time.monotonic
        #: Re-ranking weights agreed by all replicas (``streams.click_sync``); else this model's.
        self.shared_weights: FeatureWeights | None = None

    def new_state(self) -> UserState:
        return UserState.empty(self.catalogue.dim, self.catalogue.version)

    def apply(self, state: UserState, event: Interaction) -> bool:
        """Apply ``event`` unless its Kafka position says it already was; return whether applied.

        Idempotent under re-delivery: the state's watermark advances with each applied event.
        """
        if state.seen(event.partition, event.offset):
            return False
        forwarded = event.event_id.startswith(FORWARDED_PREFIX)
        if forwarded and event.event_id in state.forwarded:
            return False  # the feedback agent sent this label twice (at-least-once)
        self._ensure_version(state)
        history = state.engaged(HISTORY)
        engaged = history[:RECENT_ITEMS]
        # Catalogue rows of the engaged items: EASE pairs all, co-occurrence the newest few.
        rows = [self.catalogue.row(h.item_id) for h in history]
        recent = rows[:RECENT_ITEMS]
        history_rows = [r for r in rows if r is not None]
        item_vec = self.catalogue.vector(event.item_id) if event.item_id else None
        if item_vec is not None:
            self._learn_before(state, engaged, event)
        entry = apply_event(
            state,
            event_type=event.event_type,
            item_id=event.item_id,
            ts_ms=event.ts_ms,
            dwell_ms=event.dwell_ms,
            item_vec=item_vec,
            half_life_s=self.config.interest_half_life_s,
        )
        state.partition, state.offset = event.partition, event.offset
        if forwarded:
            state.forwarded.append(event.event_id)
            del state.forwarded[:-FORWARDED_REMEMBERED]
        if entry is not None and item_vec is not None and self.config.max_interests > 1:
            update_interests(state.interests, item_vec, entry.weight, event.ts_ms, self._interests)
        if entry is not None and event.item_id is not None:
            row = self.catalogue.row(event.item_id)
            if row is not None:
                self.popularity.add(row, entry.weight, event.ts_ms)
                self.popularity_long.add(row, entry.weight, event.ts_ms)
                if state.group:
                    self._group_popularity(state.group).add(row, entry.weight, event.ts_ms)
                if entry.event_type in ENGAGED_TYPES:
                    previous = [r for r in recent if r is not None]
                    self.cooccurrence.observe(previous, row, event.ts_ms)
                    self.cooccurrence_long.observe(previous, row, event.ts_ms)
                    if self.ease is not None:
                        self._observe_ease(history_rows, row, event.ts_ms)
        if state.pending:
            resolve_pending(
                state,
                self.catalogue.lookup({h.item_id for h in state.pending}),
                self.config.interest_half_life_s,
            )
        return True

    def _learn_before(
        self, state: UserState, engaged: list[HistoryEntry], event: Interaction
    ) -> None:
        """Test-then-train: what ranking served is judged, and the click model learns, before
        the event changes the state."""
        if self.guard is not None and event.item_id and event.event_type in POSITIVE_TYPES:
            self.guard.observe(event.user_id, event.item_id)
        if self.click is not None:
            started = time.perf_counter()
            self._learn_click(state, engaged, event)
            self.learn_seconds += time.perf_counter() - started

    def _observe_ease(self, previous: list[int], row: int, ts_ms: int) -> None:
        assert self.ease is not None  # noqa: S101 - the caller checked
        self.ease.observe(previous, row, ts_ms)
        if self.ease_inline and self.ease.due:
            self.ease.refit(len(self.catalogue.snapshot()))

    def _group_popularity(self, group: str) -> Popularity:
        found = self.group_popularity.get(group)
        if found is None:
            found = Popularity(self.config.popularity_long_half_life_s)
            self.group_popularity[group] = found
        return found

    def request(self, user_id: str, state: UserState) -> RankRequest:
        """What ranking needs from ``state``."""
        self._ensure_version(state)
        history = state.engaged(HISTORY)
        return RankRequest(
            user_id=user_id,
            vec=normalised(state.vec),
            exclude=state.consumed(),
            recent=recency_weighted(history[:RECENT_ITEMS]),
            interests=self._active(state),
            categories=self._category_shares(state),
            group=state.group,
            history=[(h.item_id, h.weight) for h in history],
        )

    def _category_shares(self, state: UserState) -> dict[str, float]:
        """Share of each category among the user's remembered positives."""
        counts: dict[str, float] = {}
        for h in state.history:
            if h.event_type in POSITIVE_TYPES:
                category = self.catalogue.categories.get(h.item_id, "")
                if category:
                    counts[category] = counts.get(category, 0.0) + 1.0
        total = sum(counts.values())
        return {c: v / total for c, v in counts.items()} if total else {}

    def served(self, lists: Sequence[Served]) -> None:
        """Tell the guard what was just served (and what the other order would have been)."""
        if self.guard is not None:
            for user_id, items, alternative in lists:
                self.guard.remember(user_id, items, alternative)

    def rank(self, users: Sequence[tuple[str, UserState]], k: int) -> list[Ranked]:
        """Top-``k`` for each ``(user_id, state)``."""
        return self.rank_requests([self.request(u, s) for u, s in users], k)

    def signals(self) -> Signals:
        """Freeze what ranking reads (catalogue, popularity, co-occurrence, weights) as of now."""
        snapshot = self.catalogue.snapshot()
        n = len(snapshot)
        groups = sorted(self.group_popularity)
        by_group = [self.group_popularity[g].normalised(n) for g in groups]
        learned = self.shared_weights or (self.click.weights() if self.click is not None else None)
        weights, alternative = (
            self.guard.weights(learned) if self.guard is not None else (learned, None)
        )
        return Signals(
            snapshot,
            self.popularity.normalised(n),
            self.popularity.top(n, self.ranker.extra),
            self.cooccurrence.transition(n),
            self.popularity_long.normalised(n),
            self.cooccurrence_long.transition(n),
            freshness(
                snapshot.created_ms,
                self.popularity_long.now_ms,
                self.config.item_age_half_life_s * 1000.0,
            ),
            np.stack([*by_group, np.zeros(n, dtype=np.float32)]),
            {g: i for i, g in enumerate(groups)},
            weights,
            self.ease.model if self.ease is not None else None,
            alternative,
        )

    def _learn_click(
        self, state: UserState, engaged: list[HistoryEntry], event: Interaction
    ) -> None:
        """Show the click model this engagement's item as ranking saw it, against negatives.

        An impression is remembered as the negative of the user's next engagement within
        :data:`CLICK_WINDOW_MS`; each engagement (one in ``click_every``) is paired with it, a
        random item and a hard negative.
        """
        if self.click is None or event.item_id is None:
            return
        if event.event_type == "impression":
            row = self.catalogue.row(event.item_id)
            if row is not None:
                self._skipped.pop(event.user_id, None)  # re-inserted last: oldest go first
                self._skipped[event.user_id] = (row, event.ts_ms, event.position)
                while len(self._skipped) > SKIPPED_USERS:
                    del self._skipped[next(iter(self._skipped))]
            return
        if event.event_type not in POSITIVE_TYPES:
            return
        skipped = self._skipped.pop(event.user_id, None)
        self._click_seen += 1
        if self._click_seen % self.config.click_every:
            return  # a sample is plenty for a dozen weights, and learning costs ~0.3 ms
        now = self.clock()
        if self._frozen is None or now - self._frozen[0] > SIGNALS_REFRESH_S:
            self._frozen = (now, self.signals())
        signals = self._frozen[1]
        n = len(signals.snapshot)
        row = signals.snapshot.index.get(event.item_id, n)
        if row >= n:
            return
        # Negatives: a random item (what content must rule out), the nearest of a few (what
        # co-occurrence and popularity must decide between) and the impression the user just
        # skipped. Hard negatives alone taught the model to rank by popularity. A fourth, from
        # the co-occurrence neighbourhood, teaches it how much co-occurrence's size matters
        # (MovieLens-100K nDCG@10 0.0870 -> 0.0913; synthetic 0.1263, AUC 0.719 -> 0.786).
        rows = [row, self._negatives.randrange(n), self._hard_negative(state, signals, row)]
        rows += self._neighbour_negative(engaged, signals, row)
        places = [event.position] + [None] * (len(rows) - 1)
        if skipped is not None and event.ts_ms - skipped[1] <= CLICK_WINDOW_MS:
            if skipped[0] != row and skipped[0] < n:
                rows.append(skipped[0])
                places.append(skipped[2])
        feats = self._features(state, engaged, signals, rows, places)
        for negative in feats[1:]:
            self.click.learn_pair(feats[0], negative)

    def _hard_negative(self, state: UserState, signals: Signals, positive: int) -> int:
        """Of a few random items, the one nearest the user: what ranking had to beat.

        Uniform random negatives are told apart by content alone, which taught the model to
        ignore the signals that decide *within* a user's interests (co-occurrence, popularity).
        """
        n = len(signals.snapshot)
        picks = [
            r for r in (self._negatives.randrange(n) for _ in range(NEGATIVE_POOL)) if r != positive
        ]
        if not picks:
            return (positive + 1) % n
        sims = signals.snapshot.matrix[picks] @ normalised(state.vec)
        return picks[int(np.argmax(sims))]

    def _neighbour_negative(
        self, engaged: list[HistoryEntry], signals: Signals, positive: int
    ) -> list[int]:
        """An item co-occurring with one of the user's ``engaged`` items, uniformly ([]: none).

        Random and content-near negatives are told apart from the positive by *having* a
        collaborative score; only a negative from the co-occurrence neighbourhood teaches the
        model how much its *size* matters next to popularity and content.
        """
        n = len(signals.snapshot)
        index = signals.snapshot.index
        recent = [index.get(h.item_id, n) for h in engaged]
        transition = signals.transition_long
        indptr, indices = transition.indptr, transition.indices
        rows = [r for r in recent if r < len(indptr) - 1 and indptr[r + 1] > indptr[r]]
        if not rows:
            return []
        r = rows[self._negatives.randrange(len(rows))]
        pick = int(indices[indptr[r] + self._negatives.randrange(int(indptr[r + 1] - indptr[r]))])
        return [pick] if pick != positive and pick < n else []

    def _features(
        self,
        state: UserState,
        engaged: list[HistoryEntry],
        signals: Signals,
        rows: list[int],
        places: Sequence[int | None] = (),
    ) -> list[dict[str, float]]:
        """The ranking-time features of ``rows`` for ``state`` (its ``engaged`` items), each
        shown at ``places`` (unknown when missing)."""
        snapshot = signals.snapshot
        n = len(snapshot)
        matrix = snapshot.matrix[rows]
        queries = [normalised(state.vec), *(v for v, _ in self._active(state))]
        content = np.max(np.stack(queries) @ matrix.T, axis=0)
        recent = [
            (snapshot.index[item_id], weight)
            for item_id, weight in recency_weighted(engaged)
            if snapshot.index.get(item_id, n) < n
        ]
        at = np.asarray(rows, dtype=np.intp)
        ease = np.zeros(len(rows), dtype=np.float32)
        if signals.ease is not None:
            mine = user_items(
                [
                    (snapshot.index[h.item_id], h.weight)
                    for h in state.engaged(HISTORY)
                    if snapshot.index.get(h.item_id, n) < n
                ]
            )
            ease = signals.ease.at(signals.ease.scores([mine]), at[None, :])[0]
        shares = coded_shares(self._category_shares(state), snapshot.category_index)
        places = [*places, *[None] * (len(rows) - len(places))]
        feats = feature_stack(
            content.astype(np.float32),
            collab_at(signals.transition, recent, rows),
            collab_at(signals.transition_long, recent, rows),
            ease,
            signals.popularity[at],
            signals.popularity_long[at],
            category_affinity(snapshot.category_codes, [shares], at[None, :])[0],
            signals.fresh[at],
            signals.group_popular[group_rows(signals, [state.group])[0], at],
            np.asarray([shown_at(p) for p in places], dtype=np.float32),
        )
        columns = feats.T.tolist()
        return [dict(zip(FEATURES, col, strict=True)) for col in columns]

    def _active(self, state: UserState) -> list[tuple[Vector, float]]:
        return active_interests(state.interests, state.ts_ms, self._interests.half_life_s)

    def rank_requests(
        self, requests: Sequence[RankRequest], k: int, signals: Signals | None = None
    ) -> list[Ranked]:
        """Top-``k`` per request.

        With ``signals`` frozen beforehand by :meth:`signals`, it reads no mutable engine state,
        so it may run on a thread while the event loop applies the next batch.
        """
        return self.ranker.rank(signals or self.signals(), requests, k, self.catalogue.titles)

    def _ensure_version(self, state: UserState) -> None:
        """Re-embed a user from history when the encoder changed (never mix two versions)."""
        if state.model_version == self.catalogue.version:
            return
        state.vec = np.zeros(self.catalogue.dim, dtype=np.float32)
        state.ts_ms = 0
        state.interests = []
        for h in state.history:
            vec: Vector | None = self.catalogue.vector(h.item_id)
            if vec is not None and h.weight:
                add_to_vector(state, vec, h.weight, h.ts_ms, self.config.interest_half_life_s)
                if self.config.max_interests > 1:
                    update_interests(state.interests, vec, h.weight, h.ts_ms, self._interests)
        state.model_version = self.catalogue.version
