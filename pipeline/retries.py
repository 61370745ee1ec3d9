"""Retrying a failed batch without losing or dead-lettering a good message. Pure: no Kafka.

A scoring failure may be transient (an executor, RocksDB or GPU out of memory) or caused by one
message. ``process_with_retries`` tries the whole batch again after each of ``delays``; if it
keeps failing, it tries each item on its own (once more after the first delay), and only an
item that still fails alone goes to ``on_failure``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

log = logging.getLogger("finsent.worker")
T = TypeVar("T")

# Waits before scoring a failed batch again; then it is scored message by message.
SCORING_RETRY_DELAYS_S = (0.5, 2.0, 5.0)


class BatchFailed(Exception):
    """Processing (not writing) a batch failed: a retry may succeed, or some item is at fault."""


async def process_with_retries(
    items: Sequence[T],
    process: Callable[[Sequence[T]], Awaitable[None]],
    on_failure: Callable[[T, BatchFailed], Awaitable[None]],
    delays: Sequence[float] = SCORING_RETRY_DELAYS_S,
    on_retry: Callable[[], None] = lambda: None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    if await _attempts(items, process, delays, on_retry, sleep) is None:
        return
    log.error("a batch of %d keeps failing; isolating its items", len(items))
    for item in items:
        failure = await _attempts([item], process, delays[:1], on_retry, sleep)
        if failure is not None:
            await on_failure(item, failure)


async def _attempts(items, process, delays, on_retry, sleep) -> BatchFailed | None:
    """None once ``items`` are processed, else the last of the failures."""
    for delay_s in (*delays, None):
        try:
            await process(items)
            return None
        except BatchFailed as exc:
            if delay_s is None:
                return exc
            on_retry()
            log.warning("processing %d item(s) failed (%s); again in %.1fs", len(items), exc, delay_s)
            await sleep(delay_s)
    return None
