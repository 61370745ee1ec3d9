"""Shadow stage: scored topic -> the candidate model's view of each record (shadow topic and index).

A candidate bundle (FINSENT_SHADOW_BUNDLE) scores what the serving model scored, in a shadow
worker of its own (app.create_shadow_app, `finsent shadow`): the serving path (decode ->
classify -> windows) never waits for it nor shares its event loop. Records are chosen by id (FINSENT_SHADOW_SAMPLE, the same ones on every replay);
one the candidate reaches more than FINSENT_SHADOW_MAX_BEHIND_S after it was scored is skipped
and counted, so a candidate slower than the stream samples instead of falling further behind.
Outputs go through the outbox like every stage's (exactly-once on the shadow topic, one document
per id in Elasticsearch) and never to the scored, aggregates or alerts outputs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import numpy as np

from .. import metrics
from ..classify import ModelHolder
from ..config import Settings
from ..faustcompat import Intake
from ..schemas import ScoredRecord, ShadowRecord
from ..shadow import compare, sampled, spans_of
from ..sinks.elasticsearch import ElasticsearchSink
from ..transactions import Output
from .batching import Pending, Worker
from .outbox import Cadence, Outbox, deliver_and_acknowledge

log = logging.getLogger("finsent.worker")


def lower_thread_priority(niceness: int = 19) -> None:
    """The calling thread yields the CPU to every other: the candidate runs on what the serving
    path leaves (with one ONNX Runtime thread it runs on this very thread). Linux sets niceness
    per thread; elsewhere nothing changes."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)
    except (AttributeError, OSError) as exc:  # not Linux, or not allowed: the same priority then
        log.info("shadow inference keeps its priority: %s", exc)


class ShadowStage:
    def __init__(
        self,
        settings: Settings,
        intake: Intake,
        outbox: Outbox,
        candidate: ModelHolder,
        sink: ElasticsearchSink,
        shadow_topic,
    ):
        self.settings, self.intake, self.outbox = settings, intake, outbox
        self.candidate, self.sink, self.shadow_topic = candidate, sink, shadow_topic
        self.executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="shadow-inference", initializer=lower_thread_priority
        )

    async def run(self, stream) -> None:
        settings = self.settings
        pending = Pending(max_events=settings.max_batch * 16)
        cadence = Cadence(settings.shadow_interval_ms / 1000)

        async def deliver() -> None:
            await cadence.wait()
            await self._deliver(await pending.take(settings.max_batch * 8))

        deliverer = Worker(deliver)
        deliverer.start()
        try:
            async for events in stream.take_events(settings.max_batch, within=settings.max_wait_ms / 1000):
                await deliverer.guard(pending.put(await self.intake.take(events)))
        finally:
            deliverer.stop()

    async def _deliver(self, batches) -> None:
        """Scores the batches' records with the candidate, indexes the results, then writes them
        with the batches' offsets through the outbox (one transaction per input partition) and
        only then acknowledges the batches."""
        events = [event for batch in batches for event in batch.events]
        shadows = await self._score(events)
        await self.sink.ensure_template()
        documents = [s.model_dump(mode="json") for _event, s in shadows]
        for rejected in await self.sink.write(documents, kind="shadow"):
            # Our own documents: a rejection is a bug or a broken template; the scored record is
            # untouched and the shadow record stays on its topic.
            log.error("Elasticsearch rejected shadow document %s: %s", rejected.doc_id, rejected.reason)
            metrics.SHADOW_RECORDS.labels("es_rejected").inc()
        outputs = [
            (event, Output(self.shadow_topic, s.id.encode(), s.model_dump_json().encode())) for event, s in shadows
        ]
        if not await deliver_and_acknowledge(self.outbox, self.intake, batches, outputs, "shadow"):
            return
        for _event, s in shadows:
            metrics.SHADOW_LABELS.labels(s.serving_label, s.candidate_label).inc()

    def _chosen(self, events) -> list[tuple[object, ScoredRecord]]:
        settings, now = self.settings, datetime.now(UTC)
        chosen = []
        for event in events:
            try:
                record = ScoredRecord.model_validate_json(event.value)
            except ValueError:  # not a scored record (another writer on the topic): not ours to judge
                metrics.SHADOW_RECORDS.labels("unreadable").inc()
                continue
            if record.duplicate_of is not None:  # a copy: its first was compared
                metrics.SHADOW_RECORDS.labels("duplicate").inc()
            elif not sampled(record.id, settings.shadow_sample):
                metrics.SHADOW_RECORDS.labels("not_sampled").inc()
            elif (now - record.processed_at).total_seconds() > settings.shadow_max_behind_s:
                metrics.SHADOW_RECORDS.labels("skipped_behind").inc()
            else:
                chosen.append((event, record))
        return chosen

    async def _score(self, events) -> list[tuple[object, ShadowRecord]]:
        chosen = self._chosen(events)
        if not chosen:
            return []
        classifier = self.candidate.classifier
        texts = [record.text for _event, record in chosen]
        spans = [spans_of(record) for _event, record in chosen]
        started = time.perf_counter()
        inference = await asyncio.get_running_loop().run_in_executor(self.executor, classifier.infer, texts, spans)
        elapsed = time.perf_counter() - started
        metrics.SHADOW_INFERENCE.observe(elapsed)
        per_message_ms = elapsed * 1000 / len(texts)
        processed_at = datetime.now(UTC)
        out = []
        for row, (event, record) in enumerate(chosen):
            entities = inference.entities[row] if row < len(inference.entities) else np.zeros((0, 3))
            shadow = compare(
                record, inference.message[row], entities, classifier.model_version, per_message_ms, processed_at
            )
            out.append((event, shadow))
        metrics.SHADOW_RECORDS.labels("scored").inc(len(out))
        return out
