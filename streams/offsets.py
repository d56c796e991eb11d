"""Committing ``events`` offsets ourselves: only what is applied, in Redis and in the changelog.

faust-streaming commits the end of the first run of consecutive offsets its streams acked, so
one record it never acks holds every later commit of the partition back. It does skip records:
those fetched in an older consumer generation (``faust/streams.py``) and, when a buffer fills,
records it already fetched (faust-streaming#88). Gap repair applies them, but Faust's
bookkeeping still waited for them: in CI one ``events`` partition's committed offset stood still
for minutes after a rebalance while every event of it was applied. So the events topic has
acks off in Faust and the events processor decides what is committed, from the one thing it
knows for sure: batches finish in the order they were submitted, and gap repair makes each
partition's records contiguous from where the group resumed it. A partition may be committed
up to the end of the newest batch whose predecessors have all finished (in Redis and in the
producer), and :class:`OffsetLedger` keeps exactly that.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiokafka.errors import KafkaError

from streams.periodic import Periodic

log = logging.getLogger(__name__)

#: Seconds between commits: what a crashed worker's successor re-reads (and skips by the
#: watermark) is at most about this much of the stream.
COMMIT_EVERY_S = 1.0


@dataclass(slots=True)
class Ticket:
    """One submitted batch: per partition, the offset after its newest record."""

    ends: dict[int, int]
    done: bool = False


@dataclass
class OffsetLedger:
    """Batches in submission order; what may be committed and what was."""

    _open: deque[Ticket] = field(default_factory=deque)
    #: partition -> offset below which every record is applied and published
    committable: dict[int, int] = field(default_factory=dict)
    #: partition -> offset last committed to the broker by this worker
    committed: dict[int, int] = field(default_factory=dict)

    def open(self, ends: dict[int, int]) -> Ticket:
        """Register a batch in submission order; ``ends``: partition -> the offset after the
        contiguous records it covers."""
        ticket = Ticket(dict(ends))
        self._open.append(ticket)
        return ticket

    def close(self, ticket: Ticket) -> None:
        """The batch finished (published, or dead-lettered): its offsets may be committed once
        every batch before it finished too."""
        ticket.done = True
        while self._open and self._open[0].done:
            for partition, end in self._open.popleft().ends.items():
                if end > self.committable.get(partition, -1):
                    self.committable[partition] = end

    def due(self, assigned: set[int]) -> dict[int, int]:
        """Offsets to commit now: assigned partitions that moved since the last commit."""
        return {
            p: o
            for p, o in self.committable.items()
            if p in assigned and o > self.committed.get(p, -1)
        }

    def mark_committed(self, offsets: dict[int, int]) -> None:
        self.committed.update(offsets)

    @property
    def pending(self) -> int:
        """Batches submitted and not finished yet."""
        return len(self._open)

    def forget(self) -> None:
        """Partitions revoked: the next owner resumes from the broker's committed offsets.

        Call after a drain; a batch still open then (shutting down) is simply never committed."""
        self._open.clear()
        self.committable.clear()
        self.committed.clear()


class OffsetCommitter(Periodic):
    """Commits what the ledger says is due, every ``every_s`` and when asked (revoke, stop).

    ``flush`` sends everything the producer holds (the changelog rows of committed batches);
    ``commit`` commits partition -> offset for the group and says whether the broker took it.
    """

    name = "offset commits"

    def __init__(
        self,
        ledger: Callable[[], OffsetLedger | None],
        assigned: Callable[[], set[int]],
        flush: Callable[[], Awaitable[None]],
        commit: Callable[[dict[int, int]], Awaitable[bool]],
        every_s: float = COMMIT_EVERY_S,
    ) -> None:
        super().__init__(every_s)
        self.ledger = ledger
        self.assigned = assigned
        self.flush = flush
        self.commit = commit
        self._lock = asyncio.Lock()

    async def tick(self) -> None:
        try:
            await self.commit_due()
        except KafkaError as exc:  # the broker may be away; the offsets stay due
            log.warning("offset commit failed (%r); next try in %.0fs", exc, self.sync_s)

    async def commit_due(self) -> dict[int, int]:
        """Commit the due offsets now; returns what the broker took."""
        async with self._lock:
            ledger = self.ledger()
            if ledger is None:
                return {}
            due = ledger.due(self.assigned())
            if not due:
                return {}
            await self.flush()
            if not await self.commit(due):
                return {}
            ledger.mark_committed(due)
            return due
