"""Window stage: window items -> aggregates and alerts (Kafka, Elasticsearch, metrics, live view).

The logic is aggregation.WindowProcessor's; this stage feeds it a batch, emits what it produced,
and only then stores the new window and alert state in the table, so a batch cut short is redone
on redelivery rather than losing an aggregate or an alert.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor

from pydantic import ValidationError

from .. import faustcompat, metrics
from ..admin import GroupProgress
from ..aggregation import WindowOutputs, WindowProcessor
from ..clients import ConnectionFailure, redact
from ..config import Settings
from ..decode import Origin, dead_letter
from ..faustcompat import Batch, Intake
from ..schemas import WindowTick, parse_window_event
from ..sinks.elasticsearch import ElasticsearchSink
from ..transactions import Output, TransactionFailed
from ..web import LiveView
from .dead_letters import DeadLetters
from .outbox import Outbox

log = logging.getLogger("finsent.worker")
# Silence on the window topic means "nothing left upstream" only while a recent answer from the
# consumer group says so: during a broker outage the last answer grows old while records wait in
# producers and upstream stages, and closing windows on the clock then would make them late.
ANSWER_FRESH_S = 10.0
# How long the stage goes without an answer before it judges upstream silence by this worker's
# own partitions alone: an unreachable broker (nothing can arrive anyway) is waited out up to
# OUTAGE_PATIENCE_S; other errors (e.g. no right to describe the group) will not pass by waiting.
GROUP_PROGRESS_PATIENCE_S = 60.0
OUTAGE_PATIENCE_S = 900.0


def is_outage(exc: BaseException) -> bool:
    """A broker that cannot be reached or has not answered yet, as opposed to a refusal."""
    retriable = bool(getattr(exc, "retriable", False))
    return retriable or isinstance(exc, (ConnectionFailure, OSError))  # TimeoutError is an OSError


class UpstreamProgress:
    """Whether upstream stages anywhere in the group hold messages not processed yet. Upstream
    partitions other workers own count too while the group has not committed them to their end:
    a source silent because a rebalance moved it is stalled, not idle. Without a fresh answer
    (before the first one, during an outage) work counts as pending."""

    def __init__(self, settings: Settings, topics: set[str], gaps: faustcompat.OffsetGaps):
        self.settings, self.topics, self.gaps = settings, topics, gaps
        self.progress = GroupProgress(settings, sorted(topics), coordinator_wait_s=2.0, timeout_s=5.0)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="group-progress")
        self.lagging = True
        self.answered_at = -math.inf
        self.failing_since: float | None = None
        self.given_up = False  # no answer for longer than the patience: own partitions only

    def pending(self) -> bool:
        return self._group_lagging() or self.gaps.pending(self.topics)

    def _group_lagging(self) -> bool:
        if self.given_up:
            return False
        return self.lagging or time.monotonic() - self.answered_at > ANSWER_FRESH_S

    async def watch(self) -> None:
        """Refresh the group's answer (a timer calls this every second); the gauge follows here,
        not in `pending`, which runs per window item."""
        try:
            await self._refresh()
        finally:
            metrics.WINDOWS_HELD.set(self.pending())

    async def _refresh(self) -> None:
        try:
            loop = asyncio.get_running_loop()
            self.lagging = await loop.run_in_executor(self.executor, self.progress.lagging)
            self.answered_at, self.failing_since, self.given_up = time.monotonic(), None, False
        except Exception as exc:  # the broker restarting, a coordinator moving
            now = time.monotonic()
            if self.failing_since is None:
                log.warning(
                    "cannot read the consumer group's progress (%s); windows wait", redact(self.settings, repr(exc))
                )
            started = self.failing_since = self.failing_since or now
            patience = OUTAGE_PATIENCE_S if is_outage(exc) else GROUP_PROGRESS_PATIENCE_S
            if now - started > patience and not self.given_up:
                # Waiting on an answer that does not come would hold every window open forever.
                log.warning(
                    "cannot read the consumer group's progress for %.0f s (%s); windows now go by this "
                    "worker's own partitions only",
                    now - started,
                    redact(self.settings, str(exc)),
                )
                self.given_up = True
            self.progress.close()


class WindowStage:
    def __init__(
        self,
        settings: Settings,
        intake: Intake,
        outbox: Outbox,
        processor: WindowProcessor,
        table,
        topics,  # .windows, .aggregates, .alerts
        sink: ElasticsearchSink,
        live: LiveView,
        dead_letters: DeadLetters,
    ):
        self.settings, self.intake, self.processor, self.table = settings, intake, processor, table
        self.outbox, self.dead_letters = outbox, dead_letters
        self.topics, self.sink, self.live = topics, sink, live

    async def run(self, stream) -> None:
        within = self.settings.window_batch_wait_ms / 1000
        async for events in stream.take_events(self.settings.max_batch * 4, within=within):
            async with self.intake.batch(events) as batch:
                generation = self.intake.generation()
                parts, writes = self._process(batch.events)
                # Shielded: once outputs are on their way, the state that says so is stored too,
                # even if shutdown cancels the agent meanwhile (else a restart would repeat alerts).
                await asyncio.shield(self._emit(parts, writes, batch, generation))

    def _process(self, events) -> tuple[dict[int, tuple[WindowOutputs, object]], dict]:
        """(window partition -> (what its items produced, its last event), the table writes):
        each partition's outputs go out with that partition's offsets (one transaction each,
        exactly-once). No await in here: the writes are this batch's alone."""
        self.processor.writes()  # a batch cut short by an error left its writes; it comes again
        by_partition: dict[int, list] = {}
        for event in events:
            by_partition.setdefault(event.message.partition, []).append(event)
        parts = {partition: self._process_partition(partition, part) for partition, part in by_partition.items()}
        return parts, self.processor.writes()

    def _process_partition(self, partition: int, events) -> tuple[WindowOutputs, object]:
        out = WindowOutputs()
        for event in events:
            faustcompat.set_current_event(event)  # table reads go to this partition's store
            try:
                item = parse_window_event(event.value)
            except ValidationError as exc:  # an internal topic: only a bug writes anything else
                log.error("window item at %s[%d]@%d unreadable: %s", *event.message.tp, event.message.offset, exc)
                continue
            if isinstance(item, WindowTick):
                self.processor.tick(partition, time.time())
            else:
                self.processor.record(partition, item, time.time(), out, position=event.message.offset)
        self.processor.close_partition(partition, out)
        return out, events[-1]

    def _outputs(self, parts: dict, writes: dict) -> list[tuple[object, Output]]:
        """Every record of the batch, with the event (so the partition) it belongs to; exactly-once,
        the table's new state goes in the same transactions as its changelog records."""
        outputs = []
        for out, event in parts.values():
            outputs += [(event, Output(self.topics.windows, b"other", item.encode())) for item in out.reroute]
            outputs += [(event, _output(self.topics.aggregates, a.topic.encode(), a)) for a in out.aggregates]
            outputs += [(event, _output(self.topics.alerts, a.id.encode(), a)) for a in out.alerts]
        if self.outbox.exactly_once:
            for key, (partition, value) in writes.items():
                event = parts[partition][1]
                outputs.append((event, faustcompat.changelog_output(self.table, partition, key, value)))
        return outputs

    async def _emit(self, parts: dict, writes: dict, batch: Batch, generation: int) -> None:
        await self.sink.ensure_template()
        letters = []
        for suffix in ("aggregates", "alerts"):
            documents = {d.id: (event, d) for out, event in parts.values() for d in getattr(out, suffix)}
            if documents:
                dumped = [d.model_dump(mode="json") for _event, d in documents.values()]
                for r in await self.sink.write(dumped, kind=suffix):
                    # Our own documents: a rejection is a bug or a broken template; the record
                    # stays on its Kafka topic and goes to the dead-letter topic with the reason.
                    log.error("Elasticsearch rejected %s document %s: %s", suffix, r.doc_id, r.reason)
                    event, document = documents[r.doc_id]
                    letters.append((event, self._dead_letter(event, document, r.reason)))
        if self.outbox.exactly_once and self.intake.generation() != generation:
            return self._abandon(batch, "a rebalance came during the batch")
        try:
            await self.outbox.deliver(batch.events, self._outputs(parts, writes) + letters)
        except TransactionFailed as exc:
            return self._abandon(batch, str(exc))
        if self.intake.generation() != generation:
            # A rebalance came during the batch: its partitions may belong to another worker now,
            # which restored the table without this batch. Storing the state here could later
            # overwrite that worker's newer state (its changelog is replayed on the next
            # rebalance), so drop it and leave the batch unacknowledged: whoever owns each
            # partition now reads it again from the committed offset.
            return self._abandon(batch, "a rebalance came during the batch")
        self._store(writes, {partition: event for partition, (_out, event) in parts.items()})
        processor = self.processor
        tracked = sum(processor.tracked.values())
        for partition in parts:
            metrics.set_stream_time(partition, processor.stream_time(partition))
        for out, _event in parts.values():
            metrics.record_windows(
                out.closed, out.alerts, out.late, out.forgotten, tracked, out.out_of_bounds, out.evicted
            )
            self.live.on_windows(out.aggregates, out.alerts, out.forgotten)
        self.intake.ack(batch)

    def _dead_letter(self, event, document, reason: str) -> Output:
        stamp = event.message.timestamp
        origin = Origin(*event.message.tp, event.message.offset, int(stamp * 1000) if stamp else None)
        payload = document.model_dump_json().encode()
        return self.dead_letters.output(dead_letter(payload, origin, "es_rejected", reason))

    def _abandon(self, batch: Batch, why: str) -> None:
        self.intake.abandon(batch)
        log.info("window batch not stored (%s): its %d items will be read again", why, len(batch.taken))

    def _store(self, writes: dict, last_event: dict) -> None:
        """Exactly-once, the changelog records went out in the batch's transactions: only the
        local store is written."""
        for key, (partition, value) in writes.items():
            event = last_event[partition]
            if self.outbox.exactly_once:
                faustcompat.write_local(self.table, event, key, value)
                continue
            faustcompat.set_current_event(event)
            if value is None:
                self.table.pop(key, None)
            else:
                self.table[key] = value

    async def tick(self) -> None:
        """A heartbeat into each window partition this worker owns (see WindowProcessor.tick)."""
        topic = self.topics.windows
        tick = WindowTick(tick=time.time()).encode()
        for partition in self.intake.assigned(topic.get_topic_name()):
            await topic.send(key=None, value=tick, partition=partition)

    def on_revoked(self, revoked) -> None:
        """Names whose window partition moves to another worker are reported by that worker now."""
        for tp in revoked:
            if tp.topic == self.topics.windows.get_topic_name():
                metrics.forget_names(self.processor.names.pop(tp.partition, []))
                metrics.forget_partition(tp.partition)
                self.processor.tracked.pop(tp.partition, None)
                self.processor.forget_partition(tp.partition)


def _output(topic, key: bytes, document) -> Output:
    return Output(topic, key, document.model_dump_json().encode())
