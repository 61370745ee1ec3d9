"""Classify stage: by-fingerprint topic -> scored topic, Elasticsearch and window items.

Taking, scoring and delivery overlap: while batch N's records go to Elasticsearch and Kafka,
batch N+1 is scored and the stream keeps fetching. Batches are adaptive: the scorer takes
everything that arrived while it was busy (up to ``max_batch``), so an idle worker scores a
message at once and a busy one in full batches. Deliveries run one at a time in batch order
(each partition's outputs keep their input order), at most ``max_batches_in_flight`` batches wait
for theirs, and a batch's offsets are acknowledged only once Kafka and Elasticsearch have
acknowledged its outputs: the worker is at-least-once and, with ``_id`` = message id,
exactly-once in effect in Elasticsearch.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

from .. import faustcompat, metrics
from ..classify import ModelHolder
from ..config import Settings
from ..decode import Origin, dead_letter, too_large
from ..dedup import Expiry, fingerprint_partition
from ..enrich import CompanyDictionary, routing_key
from ..faustcompat import Batch, Intake
from ..retries import BatchFailed, process_with_retries
from ..schemas import ScoredRecord, ValidatedMessage
from ..scoring import Scores, first_scores, mentions_of, plan_batch, scored_records, window_items
from ..sinks.elasticsearch import ElasticsearchSink
from ..transactions import Output, TransactionFailed
from ..web import LiveView
from .batching import Pending, Worker
from .dead_letters import DeadLetters
from .outbox import Outbox

log = logging.getLogger("finsent.worker")


class FirstScores:
    """The de-duplication table (changelog-backed: it survives restarts and rebalances):
    fingerprint -> the scores of the first copy seen, deleted once past the horizon."""

    def __init__(self, table, horizon_s: float, partitions: int, max_entries: int | None = None):
        self.table, self.partitions = table, partitions
        per_partition = None if max_entries is None else max(1, math.ceil(max_entries / partitions))
        self.expiry = Expiry(horizon_s, per_partition)  # which entries are past the horizon or the cap
        self.stale = True  # the restored table is not in the expiry index yet
        self.assignments = 0  # a restore walk stops when a new assignment comes

    def lookup(self, events, keys: list[str]) -> dict[str, Scores | None]:
        found = {}
        for event, key in zip(events, keys, strict=True):
            faustcompat.set_current_event(event)  # reads go to the event's partition first
            found[key] = self.table.get(key)
        return found

    def put(self, event, key: str, scores: Scores) -> None:
        faustcompat.set_current_event(event)
        self.table[key] = {**scores, "p": event.message.partition}
        self.expiry.note(event.message.partition, key, scores["at"])

    def expire(self, events) -> None:
        """Deletes the entries of the batch's partitions that outlived the horizon (a delete
        needs an event of the entry's partition for its changelog write)."""
        now_s = time.time()
        for event in {e.message.partition: e for e in events}.values():
            faustcompat.set_current_event(event)
            partition = event.message.partition
            for reason, due in (
                ("horizon", self.expiry.due(partition, now_s)),
                ("cap", self.expiry.over_cap(partition)),
            ):
                for key, at in due:
                    entry = self.table.get(key)
                    if entry is not None and entry.get("at") == at:  # not written again since
                        self.table.pop(key, None)
                        metrics.DEDUP_EXPIRED.labels(reason).inc()
        metrics.DEDUP_ENTRIES.set(len(self.expiry))

    def on_assigned(self) -> None:
        self.expiry.clear()
        self.stale = True
        self.assignments += 1

    async def index_restored(self, slice_size: int = 2000) -> None:
        """After an assignment (and its recovery), the restored entries join the expiry index
        once. The walk yields to the event loop every ``slice_size`` entries (a table of millions
        must not stop the stages, the web page and the metrics meanwhile) and stops when another
        assignment comes (that one walks again)."""
        assignments = self.assignments
        self.stale = False
        self.expiry.clear()  # the table is the truth: entries noted since the assignment are in it too
        for n, (key, entry) in enumerate(self.table.items(), 1):
            if isinstance(entry, dict) and "at" in entry:
                partition = entry["p"] if "p" in entry else fingerprint_partition(key, self.partitions)
                self.expiry.note(partition, key, entry["at"])
            if n % slice_size == 0:
                await asyncio.sleep(0)
                if self.assignments != assignments:
                    return
        metrics.DEDUP_ENTRIES.set(len(self.expiry))


@dataclass
class Scored:
    """A scored batch, ready to deliver: no output written yet."""

    events: list
    messages: list[tuple[ValidatedMessage, str]]
    records: list[ScoredRecord]


class ClassifyStage:
    def __init__(
        self,
        settings: Settings,
        intake: Intake,
        outbox: Outbox,
        model: ModelHolder,
        first: FirstScores,
        sink: ElasticsearchSink,
        topics,  # .scored, .windows
        dead_letters: DeadLetters,
        dictionary: CompanyDictionary,
        live: LiveView,
    ):
        self.settings, self.intake, self.model, self.first = settings, intake, model, first
        self.outbox = outbox
        self.sink, self.topics, self.dead_letters = sink, topics, dead_letters
        self.dictionary, self.live = dictionary, live
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")

    async def run(self, stream) -> None:
        """Three steps, each on its own task: this loop takes batches from the stream, the scorer
        scores what is pending, the deliverer writes each scored batch's outputs and acknowledges
        it, in order. Overlapping them keeps a batch from waiting on the previous one's writes."""
        settings = self.settings
        pending = Pending(max_events=settings.max_batch * settings.max_batches_in_flight)
        scored: asyncio.Queue[tuple[list[Batch], Scored]] = asyncio.Queue(maxsize=settings.max_batches_in_flight)

        cadence = self.outbox.cadence()

        async def score() -> None:
            await cadence.wait()
            batches = await pending.take(settings.max_batch)
            await self.sink.ensure_template()
            events = [event for batch in batches for event in batch.events]
            try:
                result = await self._score(events)
            except BatchFailed:  # one at a time from here, keeping the output order
                await deliverer.guard(scored.join())
                try:
                    await self._with_retries(events)
                except TransactionFailed as exc:
                    return self._abandon(batches, exc)
                self._acknowledge(batches)
                return
            await deliverer.guard(scored.put((batches, result)))

        async def deliver() -> None:
            batches, result = await scored.get()
            try:
                await self._deliver(result)
                self._acknowledge(batches)
            except TransactionFailed as exc:
                self._abandon(batches, exc)
            finally:
                scored.task_done()

        scorer, deliverer = Worker(score), Worker(deliver)
        scorer.start()
        deliverer.start()
        within = settings.max_wait_ms / 1000
        try:
            async for events in stream.take_events(settings.max_batch, within=within):
                batch = await self.intake.take(events)
                await scorer.guard(deliverer.guard(pending.put(batch)))
        finally:  # undelivered batches stay unacknowledged: they are read again after a restart
            scorer.stop()
            deliverer.stop()

    def _acknowledge(self, batches: list[Batch]) -> None:
        for batch in batches:
            self.intake.ack(batch)
        self.first.expire([event for batch in batches for event in batch.events])

    def _abandon(self, batches: list[Batch], failure: TransactionFailed) -> None:
        """Its partition moved to another worker, which reads the batch again."""
        log.info("classify batch not committed: %s", failure)
        for batch in batches:
            self.intake.abandon(batch)

    async def _with_retries(self, events: list) -> None:
        async def attempt(some) -> None:
            await self._deliver(await self._score(some))

        on_retry = metrics.SCORING_RETRIES.inc
        await process_with_retries(events, attempt, self._dead_letter_unscorable, on_retry=on_retry)

    async def _dead_letter_unscorable(self, event, failure: BatchFailed) -> None:
        try:
            valid = ValidatedMessage.model_validate_json(event.value)
            origin = Origin(valid.origin_topic, valid.origin_partition, valid.origin_offset, valid.kafka_timestamp_ms)
        except ValueError:
            message = event.message
            origin = Origin(message.topic, message.partition, message.offset)
        letter = dead_letter(event.value or b"", origin, "processing_error", str(failure))
        await self.outbox.deliver([event], [(event, self.dead_letters.output(letter))])

    async def _score(self, events) -> Scored:
        """De-duplicate, classify and build records; the first copies' scores are stored at once,
        so the next batch finds them."""
        try:
            classifier = self.model.classifier  # one model for the whole batch
            now_s = time.time()
            keys = [e.key.decode() if isinstance(e.key, bytes) else str(e.key) for e in events]
            messages = [(ValidatedMessage.model_validate_json(e.value), k) for e, k in zip(events, keys, strict=True)]
            plan = plan_batch(messages, self.first.lookup(events, keys).get, now_s, self.settings.dedup_horizon_s)
            inference, mentions, per_message_ms = None, None, None
            if plan.to_score:
                mentions = {
                    i: m
                    for i, m in zip(
                        plan.to_score, mentions_of([messages[i] for i in plan.to_score], self.dictionary), strict=True
                    )
                }
                texts = [messages[i][0].message.text for i in plan.to_score]
                spans = [[m.span for m in mentions[i] if m.span] for i in plan.to_score]
                started = time.perf_counter()
                loop = asyncio.get_running_loop()
                inference = await loop.run_in_executor(self.executor, classifier.infer, texts, spans)
                elapsed = time.perf_counter() - started
                per_message_ms = round(elapsed * 1000 / len(texts), 3)
                metrics.INFERENCE.observe(elapsed)
                metrics.BATCH_SIZE.observe(len(texts))
            heads = classifier.heads
            topic_labels = heads["topic"]["labels"] if heads else ()
            scores = (
                first_scores(plan, messages, inference, now_s, classifier.model_version, mentions, topic_labels)
                if inference is not None
                else {}
            )
            records = scored_records(
                plan,
                messages,
                scores,
                datetime.now(UTC),
                classifier.model_version,
                self.dictionary,
                self.settings.max_clock_skew_s,
                self.settings.topic_min_score,
                mentions,
            )
            for i in scores:  # what scoring them cost (a shadow evaluation compares it)
                records[i].inference_ms = per_message_ms
        except Exception as exc:
            raise BatchFailed(f"{type(exc).__name__}: {exc}") from exc
        for i, entry in scores.items():
            self.first.put(events[i], messages[i][1], entry)
        return Scored(list(events), messages, records)

    async def _deliver(self, scored: Scored) -> None:
        """Elasticsearch first (its rejections become dead letters), then Kafka; returns once both ack."""
        values = [record.model_dump_json().encode() for record in scored.records]
        rejected = {
            record.id: ("too_large", problem)
            for record, value in zip(scored.records, values, strict=True)
            if (problem := too_large(value, "the scored record"))
        }
        documents = [r.model_dump(mode="json") for r in scored.records if r.id not in rejected]
        rejected |= {r.doc_id: ("es_rejected", r.reason) for r in await self.sink.write(documents)}
        outputs = []
        for event, (valid, _key), record, value in zip(
            scored.events, scored.messages, scored.records, values, strict=True
        ):
            if record.id in rejected:
                origin = Origin(
                    valid.origin_topic, valid.origin_partition, valid.origin_offset, valid.kafka_timestamp_ms
                )
                outputs.append((event, self.dead_letters.output(dead_letter(value, origin, *rejected[record.id]))))
                continue
            key = routing_key(record.tickers, record.topics, record.source).encode()
            outputs.append((event, Output(self.topics.scored, key, value)))
            for item in window_items(record, valid, event.message.partition, event.message.offset):
                outputs.append((event, Output(self.topics.windows, item.topic.encode(), item.encode())))
            self._count(record)
        await self.outbox.deliver(scored.events, outputs)

    def _count(self, record: ScoredRecord) -> None:
        metrics.MESSAGES.labels("duplicate" if record.duplicate_of else "scored").inc()
        self.live.on_scored(1)
        if record.truncated:
            metrics.TRUNCATED.inc()
        for entity in record.entities:
            metrics.ENTITY_MENTIONS.labels(entity.source, entity.sentiment_of).inc()
        for inferred in record.inferred_topics:
            metrics.INFERRED_TOPICS.labels(inferred.topic).inc()
        if record.clock_skew_s is not None:
            metrics.EVENT_TIME_OUT_OF_BOUNDS.labels("future").inc()
        metrics.END_TO_END.labels("published").observe(record.latency_ms / 1000)
        if record.kafka_latency_ms is not None:
            metrics.END_TO_END.labels("kafka").observe(record.kafka_latency_ms / 1000)
