"""The Faust app: topics, tables and agents, wired in flow order.

    finsent.raw ──decode_stage──▶ <group>.<raw>.by-fingerprint ──classify_stage──▶ finsent.scored + Elasticsearch
         └─ bad input ─▶ finsent.deadletter                   │└─ rejected by Elasticsearch ─▶ finsent.deadletter
                                                              └─▶ <group>.windows ──window_stage──▶ finsent.aggregates,
                                                                  (one item per topic/ticker)        finsent.alerts,
                                                                                                     Elasticsearch, metrics

decode_stage validates and re-keys each message by the fingerprint of its normalised text, so
copies of one text meet in one partition, where the de-duplication table (changelog-backed,
survives restarts and rebalances) is co-partitioned with them. classify_stage takes batches,
classifies them in an executor thread and acknowledges a batch's offsets only after Kafka and
Elasticsearch have acknowledged its outputs (faust's ``take_events`` acks when the loop body
returns), which makes the worker at-least-once and, with ``_id`` = message id, exactly-once in
effect in Elasticsearch. window_stage (see aggregation.py) does the same with its table: new
window and alert state is stored only once the aggregates and alerts it produced are acknowledged.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import faust

from . import faustcompat, metrics
from .admin import GroupProgress, ReadableProbe
from .aggregation import WindowOutputs, WindowProcessor
from .alerts import load_rules
from .bundle import open_bundle
from .classify import Classifier
from .clients import redact
from .config import Settings
from .decode import Decoded, Origin, dead_letter, decode, too_large
from .dedup import Expiry, fingerprint, fingerprint_partition
from .enrich import CompanyDictionary, enrich, routing_key
from .retries import BatchFailed, process_with_retries
from .schemas import LABELS, DeadLetter, ScoredRecord, ValidatedMessage
from .sinks.elasticsearch import ElasticsearchSink, index_name
from .web import PAGE, LiveView

log = logging.getLogger("finsent.worker")
# How long the window stage waits for the consumer group's committed offsets when they cannot be
# read before it judges upstream silence by this worker's own partitions alone.
GROUP_PROGRESS_PATIENCE_S = 60.0


def _broker_credentials(settings: Settings):
    if settings.kafka_security_protocol == "PLAINTEXT":
        return None
    context = settings.kafka_ssl_context()
    if settings.kafka_security_protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=settings.kafka_sasl_password.get_secret_value(),
            mechanism=settings.kafka_sasl_mechanism,
            ssl_context=context,
        )
    return faust.SSLCredentials(context)


class ModelHolder:
    """The classifier in use; ``maybe_swap`` replaces it between batches when the bundle changes."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.path: Path = settings.model_bundle
        self.classifier = self._load()
        self._refused: tuple[str, str] | None = None  # a broken bundle is tried once, not every poll

    def _load(self) -> Classifier:
        bundle = open_bundle(self.path.resolve())
        classifier = Classifier(
            bundle,
            variant=self.settings.model_variant,
            providers=self.settings.onnx_providers or None,
            batch_size=self.settings.max_batch,
            intra_op_threads=self.settings.inference_threads,
        )
        log.info(
            "model %s loaded from %s: variant %s on %s",
            bundle.model_version,
            bundle.path,
            classifier.variant,
            classifier.provider,
        )
        metrics.set_model_info(bundle.model_version, classifier.provider, classifier.variant)
        return classifier

    def bundle_on_disk(self) -> tuple[str, str] | None:
        """(model version, manifest digest) of the bundle the path points at now: a bundle that
        failed to load is known by its content, and tried again only once that changes."""
        try:
            manifest = (self.path.resolve() / "manifest.json").read_bytes()
            return json.loads(manifest)["model_version"], hashlib.sha256(manifest).hexdigest()
        except (OSError, ValueError, KeyError, TypeError):
            return None

    async def maybe_swap(self, loop, executor) -> bool:
        on_disk = self.bundle_on_disk()
        if on_disk is None or on_disk[0] == self.classifier.model_version or on_disk == self._refused:
            return False
        try:
            classifier = await loop.run_in_executor(executor, self._load)
        except Exception:  # a broken new bundle must not stop the worker: keep the old model
            log.exception(
                "new model bundle at %s could not be loaded; keeping %s", self.path, self.classifier.model_version
            )
            self._refused = on_disk
            return False
        self.classifier = classifier  # atomic between batches: a batch holds its own reference
        metrics.MODEL_SWAPS.inc()
        return True


def create_app(settings: Settings) -> faust.App:
    if settings.model_bundle is None:
        raise ValueError("FINSENT_MODEL_BUNDLE is not set: point it at a bundle written by `finsent export`")
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    faustcompat.use_read_committed()  # aborted upstream transactions are never scored
    app = faust.App(
        settings.consumer_group,
        broker=[f"kafka://{s.strip()}" for s in settings.kafka_bootstrap_servers.split(",")],
        broker_credentials=_broker_credentials(settings),
        store="rocksdb://",
        datadir=str(settings.state_dir),
        web_host=settings.web_host,
        web_port=settings.web_port,
        web_bind=settings.web_host,
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication_factor,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        processing_guarantee="at_least_once",
        broker_commit_every=1000,
        broker_commit_interval=1.0,
        # A worker that dies without leaving the group holds its partitions until this expires.
        broker_session_timeout=settings.kafka_session_timeout_s,
        broker_heartbeat_interval=min(3.0, settings.kafka_session_timeout_s / 3),
        stream_wait_empty=False,
        # Topics carry bytes we encode ourselves; tables use JSON.
        key_serializer="json",
        value_serializer="json",
    )
    partitions = settings.topic_partitions

    def topic(name: str):
        return app.topic(
            name,
            key_type=bytes,
            value_type=bytes,
            partitions=partitions,
            internal=True,
            key_serializer="raw",
            value_serializer="raw",
        )

    raw_topic = topic(settings.topic_raw)
    # Internal to this consumer group, like faust's own changelog topics.
    valid_topic = topic(f"{settings.consumer_group}.{settings.topic_raw}.by-fingerprint")
    scored_topic = topic(settings.topic_scored)
    deadletter_topic = topic(settings.topic_deadletter)
    # fingerprint -> first copy seen: {"id", "at", "label", "probabilities"}
    dedup_table = app.Table("finsent-dedup", default=None, partitions=partitions)
    expiry = Expiry(settings.dedup_horizon_s)  # which of its entries are past the horizon
    dedup_index = {"stale": True}  # the restored table is not in the expiry index yet
    # One item per (scored record, topic/ticker), keyed by the name: its windows live in one partition.
    window_topic = topic(f"{settings.consumer_group}.windows")
    aggregates_topic = topic(settings.topic_aggregates)
    alerts_topic = topic(settings.topic_alerts)
    # t/<name>: window and alert state; p/<partition>: stream time and tracked names (aggregation.py)
    window_table = app.Table("finsent-windows", default=None, partitions=partitions)
    window_config = settings.window_config()
    rules = load_rules(settings.alert_rules, [s.name for s in window_config.specs]) if settings.alert_rules else []
    live = LiveView(window_config.specs[0].name)
    # Sources: (by-fingerprint partition, raw partition) pairs, see _deliver. A raw topic created
    # with other partition counts only changes how long the first windows wait (idle_s).
    sources = [f"{fp}:{raw}" for fp in range(partitions) for raw in range(partitions)]
    windows_stage = WindowProcessor(
        window_config,
        rules,
        settings.window_max_topics,
        partitions,
        window_table.get,
        idle_s=settings.window_idle_s,
        upstream_sources=sources,
        max_clock_skew_s=settings.max_clock_skew_s,
        max_event_age_s=settings.max_event_age_s,
    )

    model = ModelHolder(settings)
    upstream_topics = {raw_topic.get_topic_name(), valid_topic.get_topic_name()}
    # Transaction markers upstream leave runs of offsets with nothing to read (see ReadableProbe).
    probe = ReadableProbe(settings)
    probe_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="offset-probe")

    async def readable(tp, start: int, end: int) -> bool | None:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(probe_executor, probe.readable, tp.topic, tp.partition, start, end)

    gaps = faustcompat.OffsetGaps(app, upstream_topics | {window_topic.get_topic_name()}, readable=readable)
    # Upstream partitions other workers own are pending too while the group has not committed
    # them to their end: a source silent because a rebalance moved it is stalled, not idle.
    progress = GroupProgress(settings, sorted(upstream_topics), coordinator_wait_s=2.0, timeout_s=5.0)
    group = {"lagging": True, "failing_since": None}  # until the first answer, assume work is pending
    windows_stage.upstream_pending = lambda: group["lagging"] or gaps.pending(upstream_topics)

    @app.on_partitions_assigned.connect
    async def on_assigned(app, assigned, **kwargs):
        gaps.reset()
        expiry.clear()
        dedup_index["stale"] = True

    @app.on_partitions_revoked.connect
    async def on_revoked(app, revoked, **kwargs):
        # Names whose window partition moves to another worker are reported by that worker now.
        for tp in revoked:
            if tp.topic == window_topic.get_topic_name():
                metrics.forget_names(windows_stage.names.pop(tp.partition, []))
                windows_stage.tracked.pop(tp.partition, None)

    sink = ElasticsearchSink(settings)
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
    # Loading a new bundle takes seconds: on its own thread, so scoring goes on meanwhile.
    loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-loader")
    admin_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="group-progress")
    dictionary = (
        CompanyDictionary.from_csv(settings.company_dictionary)
        if settings.company_dictionary
        else CompanyDictionary.empty()
    )
    within = settings.max_wait_ms / 1000
    state = {"template": False}
    app.finsent_model = model  # for the web view and tests

    async def send_dead_letter(letter: DeadLetter):
        metrics.DEAD_LETTERS.labels(letter.reason).inc()
        metrics.MESSAGES.labels("dead_letter").inc()
        return await deadletter_topic.send(key=None, value=letter.model_dump_json().encode())

    @app.agent(raw_topic)
    async def decode_stage(stream):
        async for events in stream.take_events(settings.max_batch * 4, within=within):
            faustcompat.hold(events)
            deliveries = []
            for event in await gaps.in_order(events):
                message = event.message
                timestamp_ms = int(message.timestamp * 1000) if message.timestamp else None
                origin = Origin(message.topic, message.partition, message.offset, timestamp_ms)
                result = decode(
                    event.value, origin, max_text_chars=settings.max_text_chars, unknown_fields=settings.unknown_fields
                )
                if isinstance(result, DeadLetter):
                    deliveries.append(await send_dead_letter(result))
                    continue
                value = _validated(result, origin).model_dump_json().encode()
                if problem := too_large(value, "the validated message"):  # e.g. huge unknown fields kept
                    deliveries.append(await send_dead_letter(dead_letter(event.value, origin, "too_large", problem)))
                    continue
                key = fingerprint(result.message.text).encode()
                deliveries.append(await valid_topic.send(key=key, value=value))
            await asyncio.gather(*deliveries)  # delivered before take_events acks the batch
            faustcompat.release(events)
            gaps.done(events)
            _record_lag(app, events)

    @app.agent(valid_topic)
    async def classify_stage(stream):
        loop = asyncio.get_running_loop()
        async for events in stream.take_events(settings.max_batch, within=within):
            # Held until its outputs are acknowledged: if the worker stops, or Kafka/Elasticsearch
            # fail in a way retries don't cover, the batch stays uncommitted and is redelivered.
            faustcompat.hold(events)
            batch = await gaps.in_order(events)  # from here the stage counts as busy
            if not state["template"]:
                await sink.install_template()  # waits out an Elasticsearch outage at start
                state["template"] = True
            if batch:
                await _classify_with_retries(batch, loop)
                _expire_dedup_entries(batch)
            faustcompat.release(events)
            gaps.done(events)
            _record_lag(app, events)

    def _expire_dedup_entries(events) -> None:
        """Deletes the de-duplication entries of the batch's partitions that outlived the
        horizon (a delete needs an event of the entry's partition for its changelog write)."""
        now_s = time.time()
        for event in {e.message.partition: e for e in events}.values():
            faustcompat.set_current_event(event)
            for key, at in expiry.due(event.message.partition, now_s):
                entry = dedup_table.get(key)
                if entry is not None and entry.get("at") == at:  # not written again since
                    dedup_table.pop(key, None)
                    metrics.DEDUP_EXPIRED.inc()
        metrics.DEDUP_ENTRIES.set(len(expiry))

    @app.timer(interval=5.0)
    async def index_restored_dedup_entries():
        """After an assignment, the restored table's entries join the expiry index once."""
        if not dedup_index["stale"] or getattr(app, "in_recovery", False) or getattr(app, "rebalancing", False):
            return
        dedup_index["stale"] = False
        expiry.clear()  # the table is the truth: entries noted since the assignment are in it too
        for key, entry in dedup_table.items():
            if isinstance(entry, dict) and "at" in entry:
                partition = entry["p"] if "p" in entry else fingerprint_partition(key, partitions)
                expiry.note(partition, key, entry["at"])
        metrics.DEDUP_ENTRIES.set(len(expiry))

    async def _classify_with_retries(batch, loop) -> None:
        async def classify(events) -> None:
            await _classify_batch(events, loop)

        await process_with_retries(batch, classify, _dead_letter_unscorable, on_retry=metrics.SCORING_RETRIES.inc)

    async def _dead_letter_unscorable(event, failure: BatchFailed) -> None:
        try:
            valid = ValidatedMessage.model_validate_json(event.value)
            origin = Origin(valid.origin_topic, valid.origin_partition, valid.origin_offset, valid.kafka_timestamp_ms)
        except ValueError:
            message = event.message
            origin = Origin(message.topic, message.partition, message.offset)
        letter = dead_letter(event.value or b"", origin, "processing_error", str(failure))
        await (await send_dead_letter(letter))

    async def _classify_batch(events, loop) -> None:
        try:
            items, records, scores = await _score_batch(events, loop)
        except Exception as exc:
            raise BatchFailed(f"{type(exc).__name__}: {exc}") from exc
        await _deliver(items, records, scores)

    async def _score_batch(events, loop):
        """Decode, de-duplicate, classify and build records: no output is written here."""
        classifier = model.classifier  # one model for the whole batch
        now_s = time.time()
        items = []
        for event in events:
            valid = ValidatedMessage.model_validate_json(event.value)
            items.append((event, valid, event.key.decode() if isinstance(event.key, bytes) else str(event.key)))

        # De-duplicate: first copies are scored, later copies reuse their scores. A redelivered
        # message (same id) reuses its own first scores too: INT8 scores depend slightly on the
        # batch, and every copy of a record (Kafka, Elasticsearch, windows) must carry the same ones.
        to_score: list[int] = []
        copy_of: dict[int, int | dict] = {}
        redelivered: set[int] = set()
        first_in_batch: dict[str, int] = {}
        for i, (event, valid, fp) in enumerate(items):
            faustcompat.set_current_event(event)
            seen = dedup_table.get(fp)
            fresh = seen and now_s - seen["at"] <= settings.dedup_horizon_s
            first = first_in_batch.get(fp)
            if seen and seen["id"] == valid.message.id:
                copy_of[i] = seen
                redelivered.add(i)
            elif fresh:
                copy_of[i] = seen
            elif first is not None:
                copy_of[i] = first
                if items[first][1].message.id == valid.message.id:
                    redelivered.add(i)
            else:
                first_in_batch[fp] = i
                to_score.append(i)

        probabilities = None
        if to_score:
            texts = [items[i][1].message.text for i in to_score]
            started = time.perf_counter()
            probabilities = await loop.run_in_executor(executor, classifier.predict_proba, texts)
            metrics.INFERENCE.observe(time.perf_counter() - started)
            metrics.BATCH_SIZE.observe(len(texts))
        scores: dict[int, dict] = {}
        for row, i in enumerate(to_score):
            probs = {label: float(p) for label, p in zip(LABELS, probabilities[row], strict=False)}
            scores[i] = {
                "id": items[i][1].message.id,
                "label": max(probs, key=probs.get),
                "probabilities": probs,
                "at": now_s,
                "model_version": classifier.model_version,
            }

        processed_at = datetime.now(UTC)
        records: dict[int, ScoredRecord] = {}
        for i, (_event, valid, _fp) in enumerate(items):
            first = copy_of.get(i)
            entry = scores[i] if i in scores else (scores[first] if isinstance(first, int) else first)
            original = i in scores or i in redelivered
            records[i] = _scored_record(
                valid,
                entry,
                None if original else entry["id"],
                processed_at,
                classifier.model_version,
                dictionary,
                settings,
            )
        return items, records, scores

    async def _deliver(items, records, scores) -> None:
        """Elasticsearch first (its rejections become dead letters), then Kafka; returns once both ack."""
        values = {i: record.model_dump_json().encode() for i, record in records.items()}
        rejected = {
            records[i].id: ("too_large", problem)
            for i in records
            if (problem := too_large(values[i], "the scored record"))
        }
        documents = [r.model_dump(mode="json") for r in records.values() if r.id not in rejected]
        rejected |= {r.doc_id: ("es_rejected", r.reason) for r in await sink.write(documents)}
        deliveries = []
        for i, (event, valid, fp) in enumerate(items):
            record, value = records[i], values[i]
            if record.id in rejected:
                origin = Origin(
                    valid.origin_topic, valid.origin_partition, valid.origin_offset, valid.kafka_timestamp_ms
                )
                deliveries.append(await send_dead_letter(dead_letter(value, origin, *rejected[record.id])))
                continue
            key = routing_key(record.tickers, record.topics, record.source).encode()
            deliveries.append(await scored_topic.send(key=key, value=value))
            # The upstream partition lets the window stage track each one's event-time progress.
            # Event time runs forward within one raw partition, and the decode stage keeps that
            # order on each by-fingerprint partition, so the window stage tracks progress per pair:
            # per by-fingerprint partition alone, a raw partition that lags (a backlog, a re-read
            # after a hole) would look like progress going back, and its records like late ones.
            source = {
                "t": record.published_at.timestamp(),
                "score": record.sentiment_score,
                "label": record.label,
                "id": record.id,
                "src": f"{event.message.partition}:{valid.origin_partition}",
                "o": event.message.offset,
                "ro": valid.origin_offset,
            }
            if record.clock_skew_s is not None:  # an untrustworthy time must not move stream time
                metrics.EVENT_TIME_OUT_OF_BOUNDS.labels("future").inc()
            for name in dict.fromkeys(record.tickers + record.topics) if record.clock_skew_s is None else ():
                deliveries.append(
                    await window_topic.send(key=name.encode(), value=json.dumps({**source, "topic": name}).encode())
                )
            if i in scores:
                faustcompat.set_current_event(event)
                dedup_table[fp] = {**scores[i], "p": event.message.partition}
                expiry.note(event.message.partition, fp, scores[i]["at"])
            outcome = "duplicate" if record.duplicate_of else "scored"
            metrics.MESSAGES.labels(outcome).inc()
            live.on_scored(1)
            if record.truncated:
                metrics.TRUNCATED.inc()
            metrics.END_TO_END.labels("published").observe(record.latency_ms / 1000)
            if record.kafka_latency_ms is not None:
                metrics.END_TO_END.labels("kafka").observe(record.kafka_latency_ms / 1000)
        await asyncio.gather(*deliveries)

    @app.agent(window_topic)
    async def window_stage(stream):
        async for events in stream.take_events(settings.max_batch * 4, within=within):
            faustcompat.hold(events)
            generation = app.consumer_generation_id
            out, last_event = WindowOutputs(), {}
            for event in await gaps.in_order(events):
                partition = event.message.partition
                last_event[partition] = event
                faustcompat.set_current_event(event)  # table reads go to this partition's store
                item = json.loads(event.value)
                if "tick" in item:
                    windows_stage.tick(partition, time.time())
                else:
                    windows_stage.record(partition, item, time.time(), out)
            for partition, event in last_event.items():
                faustcompat.set_current_event(event)
                windows_stage.close_partition(partition, out)
            # Shielded: once outputs are on their way, the state that says so is stored too, even
            # if shutdown cancels the agent meanwhile (else a restart would repeat the alerts).
            await asyncio.shield(_emit_windows(out, last_event, events, generation))

    async def _emit_windows(out: WindowOutputs, last_event: dict, events, generation) -> None:
        if not state["template"]:
            await sink.install_template()
            state["template"] = True
        deliveries = [await window_topic.send(key=b"other", value=json.dumps(item).encode()) for item in out.reroute]
        deliveries += [
            await aggregates_topic.send(key=a.topic.encode(), value=a.model_dump_json().encode())
            for a in out.aggregates
        ]
        deliveries += [
            await alerts_topic.send(key=a.id.encode(), value=a.model_dump_json().encode()) for a in out.alerts
        ]
        for suffix, documents in (("aggregates", out.aggregates), ("alerts", out.alerts)):
            if documents:
                rejected = await sink.write(
                    [d.model_dump(mode="json") for d in documents], index=index_name(settings, suffix)
                )
                for r in rejected:  # our own documents: a rejection is a bug or a broken template
                    log.error("Elasticsearch rejected %s document %s: %s", suffix, r.doc_id, r.reason)
        await asyncio.gather(*deliveries)
        if app.consumer_generation_id != generation:
            # A rebalance came during the batch: its partitions may belong to another worker now,
            # which restored the table without this batch. Storing the state here could later
            # overwrite that worker's newer state (its changelog is replayed on the next
            # rebalance), so drop it and leave the batch unacknowledged: whoever owns each
            # partition now reads it again from the committed offset.
            windows_stage.writes()
            gaps.done(events)
            log.info("rebalance during a window batch: its %d items will be read again", len(events))
            return
        for key, (partition, value) in windows_stage.writes().items():
            faustcompat.set_current_event(last_event[partition])
            if value is None:
                window_table.pop(key, None)
            else:
                window_table[key] = value
        metrics.record_windows(
            out.closed, out.alerts, out.late, out.forgotten, sum(windows_stage.tracked.values()), out.out_of_bounds
        )
        live.on_windows(out.aggregates, out.alerts, out.forgotten)
        faustcompat.release(events)
        gaps.done(events)

    @app.timer(interval=1.0)
    async def window_ticks():
        """A heartbeat into each window partition this worker owns (see WindowProcessor.tick)."""
        tick = json.dumps({"tick": time.time()}).encode()
        for tp in app.assignor.assigned_actives():
            if tp.topic == window_topic.get_topic_name():
                await window_topic.send(key=None, value=tick, partition=tp.partition)

    @app.timer(interval=1.0)
    async def watch_offsets():
        await gaps.watch()

    @app.timer(interval=1.0)
    async def watch_group_progress():
        try:
            group["lagging"] = await asyncio.get_running_loop().run_in_executor(admin_executor, progress.lagging)
            group["failing_since"] = None
        except Exception as exc:  # the broker restarting, a coordinator moving: keep the last answer
            now = time.monotonic()
            started = group["failing_since"] = group["failing_since"] or now
            if now - started > GROUP_PROGRESS_PATIENCE_S and group["lagging"]:
                # Waiting on an answer that does not come would hold every window open forever.
                log.warning(
                    "cannot read the consumer group's progress (%s); windows now go by this "
                    "worker's own partitions only",
                    redact(settings, str(exc)),
                )
                group["lagging"] = False
            progress.close()

    @app.timer(interval=2.0)
    async def watch_bundle():
        await model.maybe_swap(asyncio.get_running_loop(), loader)

    @app.task
    async def on_start():
        # Output topics nobody here consumes: create them with the configured partitions rather
        # than leave it to the broker's auto-creation defaults.
        for output in (scored_topic, deadletter_topic, aggregates_topic, alerts_topic):
            await output.maybe_declare()
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(model.maybe_swap(loop, loader)))
        except (NotImplementedError, RuntimeError):  # pragma: no cover - non-main thread / platform
            pass

    @app.page("/metrics")
    async def metrics_page(web, request):
        body, content_type = metrics.exposition()
        return web.bytes(body, content_type=content_type.split(";")[0])

    @app.page("/")
    async def live_page(web, request):
        return web.html(PAGE)

    @app.page("/api/live")
    async def live_api(web, request):
        classifier = model.classifier
        return web.json(live.snapshot(classifier.model_version, classifier.provider, classifier.variant))

    @app.page("/healthz")
    async def health_page(web, request):
        return web.json(
            {"status": "ok", "model_version": model.classifier.model_version, "provider": model.classifier.provider}
        )

    faustcompat.disable_read_offset_filter(app)
    # The Elasticsearch client and the executor are not closed on shutdown: agents may still be
    # finishing a batch then, and a closed client would turn a clean stop into errors.
    return app


def _validated(result: Decoded, origin: Origin) -> ValidatedMessage:
    return ValidatedMessage(
        message=result.message,
        truncated=result.truncated,
        extra=result.extra,
        kafka_timestamp_ms=origin.timestamp_ms,
        origin_topic=origin.topic,
        origin_partition=origin.partition,
        origin_offset=origin.offset,
    )


def _scored_record(
    valid: ValidatedMessage,
    entry: dict,
    duplicate_of: str | None,
    processed_at: datetime,
    model_version: str,
    dictionary: CompanyDictionary,
    settings: Settings,
) -> ScoredRecord:
    message = valid.message
    tickers, topics = enrich(message.text, message.tickers, message.topics, dictionary)
    probs = entry["probabilities"]
    published = message.published_at or processed_at
    kafka_latency = None
    if valid.kafka_timestamp_ms is not None:
        kafka_latency = max(0.0, processed_at.timestamp() * 1000 - valid.kafka_timestamp_ms)
    ahead_s = (published - processed_at).total_seconds()
    return ScoredRecord(
        id=message.id,
        text=message.text,
        source=message.source,
        published_at=published,
        topics=topics,
        tickers=tickers,
        lang=message.lang,
        url=message.url,
        label_true=message.label,
        label=entry["label"],
        probabilities=probs,
        sentiment_score=probs["positive"] - probs["negative"],
        model_version=entry.get("model_version", model_version),
        processed_at=processed_at,
        latency_ms=max(0.0, (processed_at - published).total_seconds() * 1000),
        kafka_latency_ms=kafka_latency,
        truncated=valid.truncated,
        duplicate_of=duplicate_of,
        clock_skew_s=ahead_s if ahead_s > settings.max_clock_skew_s else None,
        extra=valid.extra,
        run_id=message.run_id,
    )


def _record_lag(app: faust.App, events) -> None:
    last: dict = {}
    for event in events:
        tp = event.message.tp
        last[tp] = max(last.get(tp, -1), event.message.offset)
    for tp, offset in last.items():
        highwater = faustcompat.end_offset(app, tp)
        if highwater is not None:
            metrics.CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(max(0, highwater - offset - 1))


def run_worker(settings: Settings, loglevel: str = "info") -> None:
    """Blocks running one worker until it is stopped (SIGTERM/SIGINT)."""
    from faust.worker import Worker

    app = create_app(settings)
    worker = Worker(app, loglevel=loglevel, quiet=True)
    worker.execute_from_commandline()
