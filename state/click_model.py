"""The click model: a River logistic regression over ranking-time features, re-ranking the blend.

For every engagement the engine shows the model the features ranking would compute for that
item (:mod:`state.features`: content similarity, collaborative score, popularity at two time
scales, category affinity and their products) as a positive, and, as negatives, the impression
events and two catalogue items per engagement (a random one and the nearest of a few). Because
the model is linear in standardised features, ranking by its click probability is ranking by
``sum(w_i / sd_i * x_i)``: :meth:`ClickModel.weights` turns it into one weight per feature,
applied vectorised to the blend's top-k. Prequential (test-then-train) AUC and an ADWIN drift
detector on its error are kept as metrics. Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import hmac
import pickle
from dataclasses import dataclass

from river import compose, drift, linear_model, metrics, optim, preprocessing

from state.features import FEATURES, FeatureWeights

#: Examples before the learned weights re-rank anything.
WARMUP_EXAMPLES = 500


class CheckpointError(ValueError):
    """A click-model checkpoint that is not ours (wrong key) or was altered."""


@dataclass
class ClickStats:
    examples: int = 0
    positives: int = 0
    drifts: int = 0


class ClickModel:
    """``learn_one`` per labelled example; ``blend()`` gives the weights ranking uses."""

    def __init__(self, learning_rate: float = 0.02) -> None:
        self.model: compose.Pipeline = (
            preprocessing.StandardScaler()
            | linear_model.LogisticRegression(optimizer=optim.SGD(learning_rate), l2=1e-4)
        )
        self.auc = metrics.ROCAUC()  # type: ignore[no-untyped-call]
        self.detector = drift.ADWIN()  # type: ignore[no-untyped-call]
        self.stats = ClickStats()

    def learn_one(self, features: dict[str, float], clicked: bool) -> bool:
        """Score, then learn one example (test-then-train); return whether drift was detected."""
        p = float(self.model.predict_proba_one(features).get(True, 0.5))
        self.auc.update(clicked, p)  # type: ignore[no-untyped-call]
        self.model.learn_one(features, clicked)
        self.stats.examples += 1
        self.stats.positives += int(clicked)
        self.detector.update(abs(float(clicked) - p))  # type: ignore[no-untyped-call]
        if self.detector.drift_detected:
            self.stats.drifts += 1
            return True
        return False

    def learn_pair(self, clicked: dict[str, float], skipped: dict[str, float]) -> bool:
        """Score, then learn that ``clicked`` ranks above ``skipped``; return drift as above.

        Pairwise (RankNet-style) logistic regression on the feature difference, shown both
        ways round so the model stays symmetric: a linear score, as :meth:`learn_one` gives,
        but fitted to the order within a user's candidates rather than to click rates.
        """
        diff = {k: v - skipped.get(k, 0.0) for k, v in clicked.items()}
        p = float(self.model.predict_proba_one(diff).get(True, 0.5))
        self.auc.update(True, p)  # type: ignore[no-untyped-call]
        self.auc.update(False, 1.0 - p)  # type: ignore[no-untyped-call]
        self.model.learn_one(diff, True)
        self.model.learn_one({k: -v for k, v in diff.items()}, False)
        self.stats.examples += 2
        self.stats.positives += 1
        self.detector.update(1.0 - p)  # type: ignore[no-untyped-call]
        if self.detector.drift_detected:
            self.stats.drifts += 1
            return True
        return False

    def weights(self) -> FeatureWeights | None:
        """Per-feature weights equivalent to ranking by click probability; None in warm-up.

        Signs are kept: a product feature may well rank down what its factors alone rank up.
        """
        if self.stats.examples < WARMUP_EXAMPLES:
            return None
        lr = self.model["LogisticRegression"]
        scaler = self.model["StandardScaler"]
        w = []
        for name in FEATURES:
            sd = float(scaler.vars.get(name, 0.0)) ** 0.5
            w.append(float(lr.weights.get(name, 0.0)) / sd if sd > 1e-9 else 0.0)
        return FeatureWeights(tuple(w))

    def metrics(self) -> dict[str, float]:
        return {
            "click_examples": float(self.stats.examples),
            "click_auc": float(self.auc.get()),  # type: ignore[no-untyped-call]
            "click_drifts": float(self.stats.drifts),
        }

    def to_bytes(self, key: bytes) -> bytes:
        """A checkpoint: HMAC-SHA256 of the payload under ``key``, then the pickled model."""
        payload = pickle.dumps((self.model, self.auc, self.detector, self.stats))
        return hmac.new(key, payload, hashlib.sha256).digest() + payload

    @classmethod
    def from_bytes(cls, raw: bytes, key: bytes) -> ClickModel:
        """Inverse of :meth:`to_bytes`; refuses (never unpickles) what ``key`` did not sign.

        River models are pickles, and unpickling runs code: only checkpoints this deployment
        wrote, with its own key, are ever loaded.
        """
        digest, payload = raw[:32], raw[32:]
        expected = hmac.new(key, payload, hashlib.sha256).digest()
        if len(raw) < 33 or not hmac.compare_digest(digest, expected):
            raise CheckpointError("click-model checkpoint failed its HMAC check; not loaded")
        out = cls()
        out.model, out.auc, out.detector, out.stats = pickle.loads(payload)  # noqa: S301
        return out
