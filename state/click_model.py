"""The click model: a River logistic regression that learns the blend weights from the stream.

For every engagement the engine shows the model the features the ranking saw for that item
(content similarity, collaborative score, popularity) as a positive, and, as negatives, the
impression events and one random catalogue item per engagement (what ranking must beat).
Because the model is linear in standardised features, ranking by its click probability is
ranking by ``sum(w_i / sd_i * x_i)``: its coefficients *are* blend weights, applied in the
ranker's vectorised blend at no extra cost per user. Prequential (test-then-train) AUC and an
ADWIN drift detector on its error are kept as metrics. Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import hmac
import pickle
from dataclasses import dataclass

from river import compose, drift, linear_model, metrics, optim, preprocessing

from state.ranking import BlendWeights

FEATURES = ("content", "collab", "popular")
#: Examples before the learned weights replace the configured ones.
WARMUP_EXAMPLES = 500
MIN_CONTENT_WEIGHT = 1e-3


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

    def blend(self, fallback: BlendWeights) -> BlendWeights:
        """Blend weights equivalent to ranking by click probability (``fallback`` in warm-up)."""
        if self.stats.examples < WARMUP_EXAMPLES:
            return fallback
        lr = self.model["LogisticRegression"]
        scaler = self.model["StandardScaler"]
        w = []
        for name in FEATURES:
            sd = float(scaler.vars.get(name, 0.0)) ** 0.5
            w.append(float(lr.weights.get(name, 0.0)) / sd if sd > 1e-9 else 0.0)
        # Never negative (a signal ranks down, not up-side down) and content never 0: the
        # ranker multiplies excluded rows' -inf by it, and 0 * -inf is NaN.
        return BlendWeights(
            content=max(w[0], MIN_CONTENT_WEIGHT), collab=max(w[1], 0.0), popular=max(w[2], 0.0)
        )

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
