"""Publishing says when the broker did not take every record."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from kafka.errors import KafkaTimeoutError

from streams.produce import Acks, ProduceError


class Sent:
    """A send's future as the producer's I/O thread completes it."""

    def __init__(self) -> None:
        self.errbacks: list[Callable[[BaseException], Any]] = []

    def add_errback(self, fn: Callable[[BaseException], Any]) -> None:
        self.errbacks.append(fn)

    def fail(self, exc: BaseException) -> None:
        for fn in self.errbacks:
            fn(exc)


def test_acks_pass_when_every_send_succeeded_and_name_the_failures_otherwise() -> None:
    acks = Acks()
    sends = [Sent() for _ in range(3)]
    for sent in sends:
        acks.watch(sent)  # type: ignore[arg-type]
    acks.check(3)
    sends[1].fail(KafkaTimeoutError("no answer"))
    with pytest.raises(ProduceError, match=r"1 of 3 records were not acknowledged.*no answer"):
        acks.check(3)
