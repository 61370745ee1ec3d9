"""How a stage writes a batch's outputs: the one place that knows the processing guarantee.

At-least-once, records go out through faust's producer and the batch is acknowledged once Kafka
has them all. Exactly-once, the records that came from each input partition go out in one Kafka
transaction with that partition's next offset (pipeline/transactions.py); the batch is then
acknowledged too, though its offsets are already committed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict

from ..decode import MAX_RECORD_BYTES
from ..transactions import DeliveryRefused, Output, TransactionFailed, Transactions

log = logging.getLogger("finsent.worker")


class Cadence:
    """At most one batch per ``interval_s``: exactly-once, each batch costs a transaction per
    input partition (several broker round trips and markers), so batches are collected for a
    while first, as Kafka Streams commits every 100 ms under exactly-once."""

    def __init__(self, interval_s: float):
        self.interval_s, self.last = interval_s, 0.0

    async def wait(self) -> None:
        delay = self.last + self.interval_s - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        self.last = time.monotonic()


class Outbox:
    def __init__(self, transactions: Transactions | None = None, interval_s: float = 0.0):
        self.transactions, self.interval_s = transactions, interval_s

    def cadence(self) -> Cadence:
        """How often a stage may deliver a batch (no limit at-least-once)."""
        return Cadence(self.interval_s if self.exactly_once else 0.0)

    @property
    def exactly_once(self) -> bool:
        return self.transactions is not None

    async def deliver(self, events, outputs: list[tuple[object, Output]]) -> None:
        """``events``: the batch, in offset order per partition; ``outputs``: (the event each
        came from, the record). Returns once every record is acknowledged (and, exactly-once,
        committed with the batch's offsets); raises TransactionFailed when a partition moved,
        DeliveryRefused (before sending anything) for a record over the record limit."""
        for _event, output in outputs:
            size = len(output.key or b"") + len(output.value or b"")
            if size > MAX_RECORD_BYTES:  # the stages bound their records; only a bug gets here
                raise DeliveryRefused(
                    f"a record for {output.topic_name} is {size:,} bytes, over the {MAX_RECORD_BYTES:,}-byte "
                    "limit; nothing of the batch was sent"
                )
        if self.transactions is None:
            sends = [await o.topic.send(key=o.key, value=o.value, partition=o.partition) for _event, o in outputs]
            await asyncio.gather(*sends)
            return
        # Input this worker has committed already (read twice by the consumer) is never
        # committed again: its records are out.
        events = [event for event in events if not self._committed(event)]
        outputs = [(event, output) for event, output in outputs if not self._committed(event)]
        if not events:  # nothing new (or everything lies past a hole, see OffsetGaps)
            return
        next_offsets: dict[tuple[str, int], int] = {}
        generation = max(event.message.generation_id for event in events)
        for event in events:
            tp = event.message.tp
            next_offsets[tp.topic, tp.partition] = max(
                next_offsets.get((tp.topic, tp.partition), 0), event.message.offset + 1
            )
        by_source: dict[tuple[str, int], list[Output]] = defaultdict(list)
        for event, output in outputs:
            by_source[event.message.tp.topic, event.message.tp.partition].append(output)
        commits = [
            self.transactions.commit(topic, partition, by_source[topic, partition], offset, generation)
            for (topic, partition), offset in next_offsets.items()
        ]
        await _all(commits)

    def _committed(self, event) -> bool:
        tp = event.message.tp
        return event.message.offset < self.transactions.committed_next.get((tp.topic, tp.partition), 0)


async def _all(awaitables) -> None:
    """Awaits every one, then raises the first error: a partition that failed never cancels the
    commits of the others."""
    results = await asyncio.gather(*awaitables, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


async def deliver_and_acknowledge(outbox: Outbox, intake, batches, outputs, stage: str) -> bool:
    """A stage's checkpoint: its outputs for ``batches`` (with their offsets, exactly-once), then
    the batches acknowledged; when a partition moved meanwhile, the batches are abandoned for its
    new owner to read again. Returns whether they were delivered."""
    events = [event for batch in batches for event in batch.events]
    try:
        await outbox.deliver(events, outputs)
    except TransactionFailed as exc:
        log.info("%s batch not committed: %s", stage, exc)
        for batch in batches:
            intake.abandon(batch)
        return False
    for batch in batches:
        intake.ack(batch)
    return True
