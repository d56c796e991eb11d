"""What the events processor commits: only batches whose predecessors all finished."""

from __future__ import annotations

from streams.offsets import OffsetCommitter, OffsetLedger


def test_a_batch_is_committable_only_once_every_earlier_batch_finished() -> None:
    ledger = OffsetLedger()
    first = ledger.open({0: 10, 1: 4})
    second = ledger.open({0: 20})
    ledger.close(second)
    assert ledger.committable == {}, "the first batch is still being written"
    ledger.close(first)
    assert ledger.committable == {0: 20, 1: 4}
    assert ledger.pending == 0


def test_only_assigned_partitions_that_moved_are_due() -> None:
    ledger = OffsetLedger()
    ledger.close(ledger.open({0: 5, 1: 7, 2: 9}))
    assert ledger.due({0, 1}) == {0: 5, 1: 7}
    ledger.mark_committed({0: 5, 1: 7})
    assert ledger.due({0, 1}) == {}
    ledger.close(ledger.open({1: 8}))
    assert ledger.due({0, 1, 2}) == {1: 8, 2: 9}


def test_forget_drops_every_partition_and_open_batch() -> None:
    ledger = OffsetLedger()
    ledger.close(ledger.open({0: 5}))
    ledger.mark_committed({0: 5})
    stale = ledger.open({0: 9})
    ledger.forget()
    ledger.close(stale)  # a batch of the revoked partitions finishing late commits nothing
    assert ledger.committable == {} and ledger.committed == {} and ledger.pending == 0


async def test_the_committer_flushes_first_and_keeps_offsets_the_broker_refused() -> None:
    ledger = OffsetLedger()
    ledger.close(ledger.open({0: 3, 1: 6}))
    calls: list[object] = []
    accept = [False]

    async def flush() -> None:
        calls.append("flush")

    async def commit(offsets: dict[int, int]) -> bool:
        calls.append(dict(offsets))
        return accept[0]

    committer = OffsetCommitter(lambda: ledger, lambda: {0, 1}, flush, commit)
    assert await committer.commit_due() == {}
    assert ledger.due({0, 1}) == {0: 3, 1: 6}, "refused (rebalanced): still due"
    accept[0] = True
    assert await committer.commit_due() == {0: 3, 1: 6}
    assert calls == ["flush", {0: 3, 1: 6}, "flush", {0: 3, 1: 6}]
    assert await committer.commit_due() == {} and len(calls) == 4, "nothing new: no commit"
