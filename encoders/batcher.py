"""Dynamic micro-batching: many coroutines ask for vectors, one worker thread encodes.

Requests are gathered until ``max_batch`` texts are waiting or the oldest has waited
``max_wait_ms``; the batch runs in an executor so the event loop (and the Kafka consumer's
heartbeat on it) keeps running while the model works.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType

import numpy as np
import numpy.typing as npt

Vectors = npt.NDArray[np.float32]


@dataclass(eq=False)
class _Request:
    texts: list[str]
    future: asyncio.Future[Vectors]
    enqueued_at: float
    taken: int = 0  # texts already handed to a batch; a big request spans several batches
    parts: list[Vectors] = field(default_factory=list)

    @property
    def left(self) -> int:
        return len(self.texts) - self.taken


class MicroBatcher:
    """Gather concurrent :meth:`encode` calls into batches of at most ``max_batch`` texts.

    ``encode_fn`` maps a list of texts to a (len, dim) array in the same order; it runs in
    ``executor`` (default: one dedicated worker thread, closed with the batcher).
    """

    def __init__(
        self,
        encode_fn: Callable[[list[str]], Vectors],
        max_batch: int = 32,
        max_wait_ms: float = 20.0,
        executor: concurrent.futures.Executor | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1; got {max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must not be negative; got {max_wait_ms}")
        self.max_batch = max_batch
        self.max_wait_ms = max_wait_ms
        self.batches_run = 0
        self.batches_failed = 0
        self.texts_encoded = 0
        self.batch_sizes: collections.Counter[int] = collections.Counter()
        self._encode_fn = encode_fn
        self._executor = executor
        self._owns_executor = executor is None
        self._pending: collections.deque[_Request] = collections.deque()
        self._pending_texts = 0
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    async def start(self) -> None:
        """Start the background batching task on the running loop (idempotent)."""
        if self._task is not None:
            return
        if self._closing:
            raise RuntimeError("this MicroBatcher was closed; create a new one")
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="streamrec-encoder"
            )
        self._wakeup = asyncio.Event()
        self._task = asyncio.create_task(self._run(self._wakeup), name="streamrec-microbatcher")

    async def close(self) -> None:
        """Encode everything already submitted, then stop the task and the owned executor."""
        self._closing = True
        if self._task is not None and self._wakeup is not None:
            self._wakeup.set()
            await self._task
        if self._owns_executor and self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def __aenter__(self) -> MicroBatcher:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def encode(self, texts: Sequence[str]) -> Vectors:
        """Return the rows of ``encode_fn(texts)``, computed in a batch shared with others.

        Raises whatever ``encode_fn`` raised for the batch(es) holding these texts.
        """
        if self._task is None or self._task.done() or self._wakeup is None or self._closing:
            raise RuntimeError("MicroBatcher is not running; use `async with MicroBatcher(...)`")
        loop = asyncio.get_running_loop()
        request = _Request(list(texts), loop.create_future(), loop.time())
        self._pending.append(request)
        self._pending_texts += request.left
        self._wakeup.set()
        return await request.future

    async def _run(self, wakeup: asyncio.Event) -> None:
        try:
            while True:
                while not self._pending:
                    if self._closing:
                        return
                    wakeup.clear()
                    await wakeup.wait()
                deadline = self._pending[0].enqueued_at + self.max_wait_ms / 1000
                while self._pending_texts < self.max_batch and not self._closing:
                    wakeup.clear()
                    # Event.wait under a timeout, not wait_for(queue.get()): a timeout can
                    # then never drop a request that arrived at the same instant.
                    try:
                        async with asyncio.timeout_at(deadline):
                            await wakeup.wait()
                    except TimeoutError:
                        break
                await self._run_batch(self._take_batch())
        finally:
            # Only reached with requests pending if the task was cancelled from outside.
            _fail(self._pending, RuntimeError("MicroBatcher stopped before encoding"))

    def _take_batch(self) -> list[tuple[_Request, int, int]]:
        batch: list[tuple[_Request, int, int]] = []
        room = self.max_batch
        while self._pending and room:
            request = self._pending[0]
            if request.future.done():  # caller cancelled, or an earlier part failed
                self._pending.popleft()
                self._pending_texts -= request.left
                continue
            count = min(room, request.left)
            batch.append((request, request.taken, request.taken + count))
            request.taken += count
            self._pending_texts -= count
            room -= count
            if not request.left:
                self._pending.popleft()
        return batch

    async def _run_batch(self, batch: list[tuple[_Request, int, int]]) -> None:
        if not batch:
            return
        texts = [text for request, lo, hi in batch for text in request.texts[lo:hi]]
        loop = asyncio.get_running_loop()
        try:
            vectors = await loop.run_in_executor(self._executor, self._encode_fn, texts)
            if len(vectors) != len(texts):
                raise ValueError(f"encode_fn returned {len(vectors)} rows for {len(texts)} texts")
        except asyncio.CancelledError:
            _fail((request for request, _, _ in batch), RuntimeError("MicroBatcher stopped"))
            raise
        except Exception as exc:
            self.batches_failed += 1
            _fail((request for request, _, _ in batch), exc)
            return
        self.batches_run += 1
        self.texts_encoded += len(texts)
        self.batch_sizes[len(texts)] += 1
        offset = 0
        for request, lo, hi in batch:
            request.parts.append(vectors[offset : offset + hi - lo])
            offset += hi - lo
            # Batches run one at a time, so the part ending at the last text is the last part.
            if hi == len(request.texts) and not request.future.done():
                rows = (
                    request.parts[0] if len(request.parts) == 1 else np.concatenate(request.parts)
                )
                request.future.set_result(rows)


def _fail(requests: Iterable[_Request], exc: BaseException) -> None:
    for request in requests:
        if not request.future.done():
            request.future.set_exception(exc)
