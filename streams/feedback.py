"""The feedback agent: explicit labels become events of their user.

A ``feedback`` record (like/dislike, a 1-5 rating, or the outcome of a served recommendation:
``clicked``, ``ignored``, ...) is validated, mapped to an event type as the evaluation harness
maps it (:func:`state.datasets.feedback_type`) and forwarded to ``events`` under the user's key.
The events agent then applies it like any event: interest vector, co-occurrence, the click
model's labels (an ``ignored`` outcome is an impression, the negative of the user's next
engagement), the exactly-once watermark and the Redis write. One code path, so a replay with
``feedback.jsonl`` and a worker agree.

Invalid records and labels that name no event go to ``dead-letters``. Sending is
at-least-once (a worker killed between sending a batch and committing the feedback offsets
sends those records again), applying is exactly-once: each forwarded event carries
``event_id`` ``feedback:{partition}:{offset}``, and the user's state remembers the newest of
them (:data:`state.interest.FORWARDED_REMEMBERED`), so a second copy is skipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from state.datasets import feedback_type
from state.interest import FORWARDED_PREFIX
from streams.processor import DeadLetters, Stats
from streams.records import InvalidRecord, Limits, parse_feedback


class FeedbackForwarder:
    """Validates a batch of ``feedback`` records and forwards each as an event."""

    def __init__(
        self,
        events_topic: Any,
        dead_letters_topic: Any,
        limits: Limits,
        stats: Stats,
        source_topic: str,
    ) -> None:
        self.events_topic = events_topic
        self.dead = DeadLetters(dead_letters_topic, source_topic, stats)
        self.limits = limits
        self.stats = stats

    async def process(self, batch: Sequence[Any]) -> None:
        for event in batch:
            message = event.message
            try:
                feedback = parse_feedback(message.value, message.key, self.limits)
            except InvalidRecord as exc:
                await self.dead.send(message, exc.kind, str(exc))
                continue
            kind = feedback_type(feedback.label)
            if kind is None:
                await self.dead.send(
                    message,
                    "unknown_label",
                    f"label {feedback.label[:40]!r} is no like/dislike, 1-5 rating or outcome",
                )
                continue
            value = {
                "event_id": f"{FORWARDED_PREFIX}{message.partition}:{message.offset}",
                "user_id": feedback.user_id,
                "type": kind,
                "item_id": feedback.item_id,
                "ts": feedback.ts_ms,
            }
            await self.events_topic.send(key=feedback.user_id.encode(), value=orjson.dumps(value))
            self.stats.counters["feedback_forwarded"] += 1
