"""Lag and readiness an operator can trust (the worker's /readyz and finsent_consumer_lag_messages).

Lag is read from the broker on a timer, not from the batches the worker acknowledges: the
group's committed offsets against each partition's log end, for the partitions this worker owns
now (a partition that moved away loses its series at once); offsets that hold nothing readable
(the commit markers transactions leave) are no lag. So a stalled worker shows its lag
growing, which the lag alert and the autoscaler need, instead of the last value it happened to
record. A partition is *stalled* when it has lag and its committed offset has not moved for
``stall_s``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from . import metrics
from .admin import GroupProgress, PartitionState
from .clients import redact
from .config import Settings

log = logging.getLogger("finsent.worker")


@dataclass
class LagView:
    """Pure: the lag per owned partition and when each one's committed offset last moved."""

    stall_s: float
    lag: dict[tuple[str, int], int] = field(default_factory=dict)
    moved_at: dict[tuple[str, int], tuple[int | None, float]] = field(default_factory=dict)  # tp -> (committed, since)

    def update(self, states: list[PartitionState], owned: set[tuple[str, int]], now: float) -> set[tuple[str, int]]:
        """Takes the broker's answer; returns the partitions whose series must go (no longer owned)."""
        gone = set(self.lag) - owned
        for tp in gone:
            self.lag.pop(tp, None)
            self.moved_at.pop(tp, None)
        for state in states:
            tp = (state.topic, state.partition)
            if tp not in owned:
                continue
            self.lag[tp] = max(0, state.lag)
            committed, _since = self.moved_at.get(tp, (None, now))
            if tp not in self.moved_at or committed != state.committed or state.lag <= 0:
                self.moved_at[tp] = (state.committed, now)
        return gone

    def stalled(self, now: float) -> list[tuple[str, int]]:
        return sorted(
            tp
            for tp, lag in self.lag.items()
            if lag > 0 and now - self.moved_at.get(tp, (None, now))[1] >= self.stall_s
        )


class GroupLag:
    """Refreshes ``LagView`` from the broker every few seconds, off the event loop."""

    def __init__(self, settings: Settings, topics: list[str], owned, stall_s: float):
        self.settings, self.owned = settings, owned  # owned: () -> set of (topic, partition) assigned here
        self.progress = GroupProgress(settings, topics, coordinator_wait_s=2.0, timeout_s=5.0)
        self.view = LagView(stall_s)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="group-lag")
        self.answered_at: float | None = None

    async def refresh(self) -> None:
        owned = self.owned()
        try:
            states = await asyncio.get_running_loop().run_in_executor(self.executor, self.progress.readable_states)
        except Exception as exc:  # the broker away: the gauges keep their last value, readiness says so
            log.info("cannot read the group's lag (%s)", redact(self.settings, repr(exc)))
            self.progress.close()
            return
        now = time.monotonic()
        self.answered_at = now
        for topic, partition in self.view.update(states, owned, now):
            metrics.forget_lag(topic, partition)
        for (topic, partition), lag in self.view.lag.items():
            metrics.CONSUMER_LAG.labels(topic, str(partition)).set(lag)

    def forget(self, tps) -> None:
        """Revoked partitions lose their series now, not at the next refresh."""
        owned = self.owned()
        for tp in self.view.update([], owned - {(t.topic, t.partition) for t in tps}, time.monotonic()):
            metrics.forget_lag(*tp)


def readiness(assigned: bool, backpressure: bool, stalled: list[tuple[str, int]]) -> tuple[bool, dict]:
    """(ready, the checks as /readyz shows them)."""
    checks = {
        "assigned": assigned,
        "elasticsearch_backpressure": backpressure,
        "stalled_partitions": [f"{topic}[{partition}]" for topic, partition in stalled],
    }
    return assigned and not backpressure and not stalled, checks
