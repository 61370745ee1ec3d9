"""Window stage: window items -> aggregates and alerts (Kafka, Elasticsearch, metrics, live view).

The logic is aggregation.WindowProcessor's; this stage feeds it a batch, emits what it produced,
and only then stores the new window and alert state in the table, so a batch cut short is redone
on redelivery rather than losing an aggregate or an alert.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from pydantic import ValidationError

from .. import faustcompat, metrics
from ..admin import GroupProgress
from ..aggregation import WindowOutputs, WindowProcessor
from ..clients import redact
from ..config import Settings
from ..faustcompat import Batch, Intake
from ..schemas import WindowItem, WindowTick, parse_window_event
from ..sinks.elasticsearch import ElasticsearchSink, index_name
from ..web import LiveView

log = logging.getLogger("finsent.worker")
# How long the stage waits for the consumer group's committed offsets when they cannot be read
# before it judges upstream silence by this worker's own partitions alone.
GROUP_PROGRESS_PATIENCE_S = 60.0


class UpstreamProgress:
    """Whether upstream stages anywhere in the group hold messages not processed yet. Upstream
    partitions other workers own count too while the group has not committed them to their end:
    a source silent because a rebalance moved it is stalled, not idle."""

    def __init__(self, settings: Settings, topics: set[str], gaps: faustcompat.OffsetGaps):
        self.settings, self.topics, self.gaps = settings, topics, gaps
        self.progress = GroupProgress(settings, sorted(topics), coordinator_wait_s=2.0, timeout_s=5.0)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="group-progress")
        self.lagging = True  # until the first answer, assume work is pending
        self.failing_since: float | None = None

    def pending(self) -> bool:
        return self.lagging or self.gaps.pending(self.topics)

    async def watch(self) -> None:
        try:
            loop = asyncio.get_running_loop()
            self.lagging = await loop.run_in_executor(self.executor, self.progress.lagging)
            self.failing_since = None
        except Exception as exc:  # the broker restarting, a coordinator moving: keep the last answer
            now = time.monotonic()
            started = self.failing_since = self.failing_since or now
            if now - started > GROUP_PROGRESS_PATIENCE_S and self.lagging:
                # Waiting on an answer that does not come would hold every window open forever.
                log.warning(
                    "cannot read the consumer group's progress (%s); windows now go by this "
                    "worker's own partitions only",
                    redact(self.settings, str(exc)),
                )
                self.lagging = False
            self.progress.close()


class WindowStage:
    def __init__(
        self,
        settings: Settings,
        intake: Intake,
        processor: WindowProcessor,
        table,
        topics,  # .windows, .aggregates, .alerts
        sink: ElasticsearchSink,
        live: LiveView,
    ):
        self.settings, self.intake, self.processor, self.table = settings, intake, processor, table
        self.topics, self.sink, self.live = topics, sink, live

    async def run(self, stream) -> None:
        within = self.settings.window_batch_wait_ms / 1000
        async for events in stream.take_events(self.settings.max_batch * 4, within=within):
            async with self.intake.batch(events) as batch:
                generation = self.intake.generation()
                out, last_event = self._process(batch.events)
                # Shielded: once outputs are on their way, the state that says so is stored too,
                # even if shutdown cancels the agent meanwhile (else a restart would repeat alerts).
                await asyncio.shield(self._emit(out, last_event, batch, generation))

    def _process(self, events) -> tuple[WindowOutputs, dict]:
        out, last_event = WindowOutputs(), {}
        for event in events:
            partition = event.message.partition
            last_event[partition] = event
            faustcompat.set_current_event(event)  # table reads go to this partition's store
            try:
                item = parse_window_event(event.value)
            except ValidationError as exc:  # an internal topic: only a bug writes anything else
                log.error("window item at %s[%d]@%d unreadable: %s", *event.message.tp, event.message.offset, exc)
                continue
            if isinstance(item, WindowTick):
                self.processor.tick(partition, time.time())
            else:
                self.processor.record(partition, item, time.time(), out)
        for partition, event in last_event.items():
            faustcompat.set_current_event(event)
            self.processor.close_partition(partition, out)
        return out, last_event

    async def _emit(self, out: WindowOutputs, last_event: dict, batch: Batch, generation: int) -> None:
        await self.sink.ensure_template()
        deliveries = [await self._send(self.topics.windows, b"other", item) for item in out.reroute]
        deliveries += [await self._send(self.topics.aggregates, a.topic.encode(), a) for a in out.aggregates]
        deliveries += [await self._send(self.topics.alerts, a.id.encode(), a) for a in out.alerts]
        for suffix, documents in (("aggregates", out.aggregates), ("alerts", out.alerts)):
            if documents:
                index = index_name(self.settings, suffix)
                rejected = await self.sink.write([d.model_dump(mode="json") for d in documents], index=index)
                for r in rejected:  # our own documents: a rejection is a bug or a broken template
                    log.error("Elasticsearch rejected %s document %s: %s", suffix, r.doc_id, r.reason)
        await asyncio.gather(*deliveries)
        if self.intake.generation() != generation:
            # A rebalance came during the batch: its partitions may belong to another worker now,
            # which restored the table without this batch. Storing the state here could later
            # overwrite that worker's newer state (its changelog is replayed on the next
            # rebalance), so drop it and leave the batch unacknowledged: whoever owns each
            # partition now reads it again from the committed offset.
            self.processor.writes()
            self.intake.abandon(batch)
            log.info("rebalance during a window batch: its %d items will be read again", len(batch.taken))
            return
        self._store(last_event)
        processor = self.processor
        tracked = sum(processor.tracked.values())
        metrics.record_windows(out.closed, out.alerts, out.late, out.forgotten, tracked, out.out_of_bounds)
        self.live.on_windows(out.aggregates, out.alerts, out.forgotten)
        self.intake.ack(batch)

    @staticmethod
    async def _send(topic, key: bytes, document: WindowItem | object):
        value = document.encode() if isinstance(document, WindowItem) else document.model_dump_json().encode()
        return await topic.send(key=key, value=value)

    def _store(self, last_event: dict) -> None:
        for key, (partition, value) in self.processor.writes().items():
            faustcompat.set_current_event(last_event[partition])
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
                self.processor.tracked.pop(tp.partition, None)
