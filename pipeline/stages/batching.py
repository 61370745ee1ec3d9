"""Batches between a stage's stream loop and the task that processes them.

The stream loop only takes batches and puts them in ``Pending`` (waiting while it is full:
backpressure), so faust keeps fetching while a ``Worker`` task processes; the worker takes
everything pending at once. A batch thus grows with the time the previous one took (a
transaction, an inference call), and an idle stage handles a message at once.
"""

from __future__ import annotations

import asyncio
from collections import deque

from ..faustcompat import Batch


class Worker:
    """One task that runs ``step`` over and over; a step that raises stops it, and ``guard``
    then raises that error to whoever waits on the worker (no silent stall)."""

    def __init__(self, step):
        self.step = step
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        if self.task is None:
            self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            await self.step()

    async def guard(self, awaitable):
        waiting = asyncio.ensure_future(awaitable)
        await asyncio.wait({waiting, self.task}, return_when=asyncio.FIRST_COMPLETED)
        if not waiting.done():
            waiting.cancel()
            self.task.result()  # raises the worker's error
            raise RuntimeError("worker task ended")
        return waiting.result()

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()


class Pending:
    """Batches taken from the stream and not yet scored, in order. The stream's loop only puts
    (and waits while ``max_events`` are pending: backpressure), so faust keeps fetching while
    the scorer works; the scorer takes everything pending, up to ``max_batch`` events."""

    def __init__(self, max_events: int):
        self.max_events = max_events
        self.batches: deque[Batch] = deque()
        self.events = 0
        self.changed = asyncio.Condition()

    async def put(self, batch: Batch) -> None:
        async with self.changed:
            await self.changed.wait_for(lambda: self.events < self.max_events)
            self.batches.append(batch)
            self.events += len(batch.events)
            self.changed.notify_all()

    async def take(self, max_batch: int) -> list[Batch]:
        async with self.changed:
            await self.changed.wait_for(lambda: bool(self.batches))
            taken = [self.batches.popleft()]
            size = len(taken[0].events)
            # Never across a rebalance: a batch read before it may belong to another worker now.
            generation = taken[0].generation
            while (
                self.batches
                and self.batches[0].generation == generation
                and size + len(self.batches[0].events) <= max_batch
            ):
                size += len(self.batches[0].events)
                taken.append(self.batches.popleft())
            self.events -= size
            self.changed.notify_all()
            return taken

    async def join(self) -> None:
        async with self.changed:
            await self.changed.wait_for(lambda: not self.batches)
