"""Which re-ranking serves: the click model's learned weights or the fixed collaborative order.

A learned re-ranker can lose to one of its own features: pairwise learning against sampled
negatives is not the order of a list's first places (on MovieLens-100K the click model scored
nDCG@10 0.0997 where co-occurrence plus EASE alone scored 0.1118). So every ranking computes
both orders of the re-ranked head; the user's next positive event scores each top-10 (nDCG@10
of the engaged item: what was served against what would have been), and the variant with the
better decayed mean serves. It is online model selection on the workers' own traffic, not a
tuned constant: on the planted news stream the learned weights keep serving.

The counterfactual list was not shown, so where users click what they are shown the served
variant is favoured; :data:`MARGIN` asks the other to be clearly better before it takes over.
Each replica decides from the events of its own partitions: users are spread over partitions
at random, so replicas reach the same verdict without talking to each other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Final

from state.features import FeatureWeights

#: The fixed order that competes with the learned one.
COLLABORATIVE: Final = FeatureWeights.of({"collab_long": 1.0, "ease": 1.0})
VARIANTS: Final = ("learned", "collaborative")
#: Places compared (nDCG@10).
DEPTH: Final = 10
#: Positive events scored before the guard may switch.
MIN_COMPARED: Final = 300
#: The other variant's mean must exceed the serving one's by this share to take over.
MARGIN: Final = 0.05
#: Each comparison weighs this much in the decayed means (~ the last 2,000 count).
ALPHA: Final = 1.0 / 2000
#: The counts of a verdict (:meth:`RankingGuard.verdict`).
VERDICT_COUNTS: Final = ("serving", "compared", "switches")
#: Users whose last two lists are remembered (the oldest forgotten first).
REMEMBERED: Final = 100_000


def gain(items: tuple[str, ...], item: str) -> float:
    """nDCG@10 of one relevant ``item`` against a top-10 ``items``.

    >>> gain(("a", "b"), "a"), round(gain(("a", "b"), "b"), 3), gain(("a",), "z")
    (1.0, 0.631, 0.0)
    """
    try:
        return 1.0 / math.log2(items.index(item) + 2)
    except ValueError:
        return 0.0


@dataclass
class RankingGuard:
    """Remembers each user's last two top-10s; scores them on the user's next positive."""

    serving: int = 0  # index into VARIANTS
    means: list[float] = field(default_factory=lambda: [0.0, 0.0])
    compared: int = 0
    switches: int = 0
    #: user -> (learned top-10, collaborative top-10) of the newest ranking.
    lists: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = field(default_factory=dict)

    def weights(
        self, learned: FeatureWeights | None
    ) -> tuple[FeatureWeights | None, FeatureWeights | None]:
        """``(serving, alternative)`` re-ranking weights (None: the blend's own order)."""
        if self.serving == 1:
            return COLLABORATIVE, learned
        return learned, COLLABORATIVE

    def remember(self, user_id: str, served: list[str], alternative: list[str]) -> None:
        """The top of what was just served to ``user_id`` and the other variant's list."""
        if not alternative:
            return
        pair = (tuple(served[:DEPTH]), tuple(alternative[:DEPTH]))
        lists = self.lists
        lists.pop(user_id, None)  # re-inserted last: the oldest go first
        lists[user_id] = (pair[1], pair[0]) if self.serving == 1 else pair
        while len(lists) > REMEMBERED:
            del lists[next(iter(lists))]

    def observe(self, user_id: str, item_id: str) -> None:
        """Score both remembered lists of ``user_id`` against their positive on ``item_id``."""
        pair = self.lists.pop(user_id, None)
        if pair is None:
            return
        for v, items in enumerate(pair):
            self.means[v] += ALPHA * (gain(items, item_id) - self.means[v])
        self.compared += 1
        other = 1 - self.serving
        if self.compared >= MIN_COMPARED and self.means[other] > self.means[self.serving] * (
            1.0 + MARGIN
        ):
            self.serving = other
            self.switches += 1

    def verdict(self) -> dict[str, float]:
        """What a restart keeps (the remembered lists are minutes old and are not kept)."""
        return {
            "serving": self.serving,
            "compared": self.compared,
            "switches": self.switches,
            "learned": self.means[0],
            "collaborative": self.means[1],
        }

    def resume(self, verdict: dict[str, float]) -> None:
        """Continue from a :meth:`verdict`; ``ValueError`` if it is not one."""
        try:
            serving, compared, switches = (int(verdict[k]) for k in VERDICT_COUNTS)
            means = [float(verdict["learned"]), float(verdict["collaborative"])]
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a ranking-guard verdict: {exc!r}") from exc
        if serving not in (0, 1) or compared < 0 or not all(math.isfinite(m) for m in means):
            raise ValueError(f"not a ranking-guard verdict: {verdict!r}")
        self.serving, self.compared, self.switches, self.means = serving, compared, switches, means

    def metrics(self) -> dict[str, float]:
        return {
            "guard_serving_collaborative": float(self.serving),
            "guard_compared": float(self.compared),
            "guard_switches": float(self.switches),
            "guard_ndcg_learned": self.means[0],
            "guard_ndcg_collaborative": self.means[1],
        }
