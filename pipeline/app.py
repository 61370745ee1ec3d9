"""The Faust app: the worker's topology - topics, tables and stages, in flow order.

    finsent.raw ──DecodeStage──▶ <group>.<raw>.by-fingerprint ──ClassifyStage──▶ finsent.scored
         │                        (keyed by text fingerprint;        │  (de-duplicate, score,
         │                         copies meet in one partition)     │   enrich, index)
         ▼                                                           ├──▶ Elasticsearch <prefix>-scored
    finsent.deadletter ◀── bad input, records Elasticsearch rejects ─┤
                                                                     ▼
                            <group>.windows (one item per record and topic/ticker, keyed by name)
                                                                     │
                                                                     ▼  WindowStage
                      finsent.aggregates, finsent.alerts, Elasticsearch, metrics, live view

    finsent.scored ──ShadowStage (`finsent shadow`: its own process and group)──▶ finsent.shadow, <prefix>-shadow

Each stage is a class in pipeline/stages; its decisions live in pure modules (decode, scoring,
aggregation, windows, alerts), and every faust-streaming internal it needs goes through
faustcompat, the one adapter. Every stage acknowledges a batch's offsets only once its outputs
are acknowledged: at-least-once, and exactly-once in effect in Elasticsearch (``_id`` = id).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import faust

from . import faustcompat, metrics
from .admin import CommittedOffsets, ReadableProbe, check_partitions, ensure_topics, internal_topic_names
from .aggregation import WindowProcessor
from .alerts import load_rules
from .bundle import open_bundle
from .classify import ModelHolder
from .config import Settings
from .enrich import CompanyDictionary, read_names
from .health import GroupLag, readiness
from .schemas import TOPICS
from .sinks.elasticsearch import ElasticsearchSink
from .stages.classify import ClassifyStage, FirstScores
from .stages.dead_letters import DeadLetters
from .stages.decode import DecodeStage
from .stages.outbox import Outbox
from .stages.shadow import ShadowStage
from .stages.window import UpstreamProgress, WindowStage
from .transactions import Transactions
from .web import LiveView, add_pages

log = logging.getLogger("finsent.worker")


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


def create_app(settings: Settings) -> faust.App:
    if settings.model_bundle is None:
        raise ValueError("FINSENT_MODEL_BUNDLE is not set: point it at a bundle written by `finsent export`")
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    faustcompat.configure_consumer(settings.kafka_fetch_min_bytes, settings.kafka_fetch_max_wait_ms)
    app = _faust_app(settings)
    topics = _topics(app, settings)
    # fingerprint -> the first copy's scores; t/<name>, p/<partition>: window state (aggregation.py)
    dedup_table = app.Table("finsent-dedup", default=None, partitions=settings.topic_partitions)
    window_table = app.Table("finsent-windows", default=None, partitions=settings.topic_partitions)

    upstream = {topics.raw.get_topic_name(), topics.valid.get_topic_name()}
    consumed = upstream | {topics.windows.get_topic_name()}
    gaps = _offset_gaps(app, settings, consumed)
    intake = faustcompat.Intake(app, gaps)
    model = ModelHolder(settings)
    live = LiveView(settings.window_config().specs[0].name)
    sink = ElasticsearchSink(settings)
    dead_letters = DeadLetters(topics.deadletter)
    first_scores = FirstScores(
        dedup_table, settings.dedup_horizon_s, settings.topic_partitions, settings.dedup_max_entries
    )
    upstream_progress = UpstreamProgress(settings, upstream, gaps)

    transactions = _transactions(app, settings, consumed, intake)
    outbox = Outbox(transactions, settings.transaction_interval_ms / 1000)

    decode = DecodeStage(settings, intake, outbox, topics.valid, dead_letters)
    classify = ClassifyStage(
        settings, intake, outbox, model, first_scores, sink, topics, dead_letters, _dictionary(settings), live
    )
    processor = _window_processor(settings, window_table, upstream_progress)
    window = WindowStage(settings, intake, outbox, processor, window_table, topics, sink, live, dead_letters)
    app.agent(topics.raw, name="decode_stage")(decode.run)
    app.agent(topics.valid, name="classify_stage")(classify.run)
    app.agent(topics.windows, name="window_stage")(window.run)

    _operate(
        app, settings, consumed, gaps, transactions, model, live,
        on_assigned=first_scores.on_assigned, on_revoked=window.on_revoked,
    )  # fmt: skip

    @app.timer(interval=5.0)
    async def index_restored_dedup_entries():
        if first_scores.stale and intake.settled():
            await first_scores.index_restored()

    app.timer(interval=1.0, name="window_ticks")(window.tick)
    _every(app, 1.0, upstream_progress.watch)

    @app.task
    async def on_start():
        # Output topics nobody here consumes: created with the configured partitions rather than
        # left to the broker's auto-creation defaults.
        for output in (topics.scored, topics.deadletter, topics.aggregates, topics.alerts):
            await output.maybe_declare()

    @app.task
    async def apply_retention():
        # Every worker sweeps (a delete of a gone index is a no-op); the first sweep at start, so
        # workers restarted more often than the interval still apply it.
        while True:
            try:
                await sink.delete_expired()
            except Exception as exc:  # a refusal (e.g. no delete privilege) must not stop the worker
                log.warning("Elasticsearch retention failed: %s: %s", type(exc).__name__, exc)
            await asyncio.sleep(settings.es_retention_check_s)

    app.finsent_model = model  # for tests
    # The Elasticsearch client and the executors are not closed on shutdown: agents may still be
    # finishing a batch then, and a closed client would turn a clean stop into errors.
    return app


def shadow_group(settings: Settings) -> str:
    return f"{settings.consumer_group}-shadow"


def create_shadow_app(settings: Settings) -> faust.App:
    """The shadow worker (docs/rollout.md): a process of its own, in a consumer group of its own
    on the scored topic, so the candidate never shares the serving workers' event loop."""
    if settings.shadow_bundle is None:
        raise ValueError("FINSENT_SHADOW_BUNDLE is not set: point it at the candidate bundle")
    settings = settings.model_copy(update={"consumer_group": shadow_group(settings)})
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    faustcompat.configure_consumer(settings.kafka_fetch_min_bytes, settings.kafka_fetch_max_wait_ms)
    app = _faust_app(settings)
    topics = _topics(app, settings)
    consumed = {topics.scored.get_topic_name()}
    gaps = _offset_gaps(app, settings, consumed)
    intake = faustcompat.Intake(app, gaps)
    candidate = ModelHolder(settings, candidate=True)
    transactions = _transactions(app, settings, consumed, intake)
    outbox = Outbox(transactions, settings.transaction_interval_ms / 1000)
    shadow = ShadowStage(settings, intake, outbox, candidate, ElasticsearchSink(settings), topics.shadow)
    app.agent(topics.scored, name="shadow_stage")(shadow.run)
    _operate(app, settings, consumed, gaps, transactions, candidate, LiveView(settings.window_config().specs[0].name))

    @app.task
    async def on_start():
        await topics.shadow.maybe_declare()

    return app


def _operate(app, settings, consumed, gaps, transactions, model, live, on_assigned=None, on_revoked=None) -> None:
    """What every worker runs beside its stages: fencing and bookkeeping on rebalances, lag read
    from the broker, the offset-gap watch, the bundle watch (hot swap), the event-loop watch,
    readiness and the web pages."""
    group_lag = GroupLag(settings, sorted(consumed), lambda: _owned(app, consumed), settings.ready_stall_s)
    _every(app, 5.0, group_lag.refresh)
    _every(app, 1.0, gaps.watch)

    @app.on_partitions_assigned.connect
    async def assigned(app, assigned, **kwargs):
        gaps.reset()
        if on_assigned is not None:
            on_assigned()
        if transactions is not None:  # fences the previous owners before anything is read
            await transactions.assign(assigned)

    @app.on_partitions_revoked.connect
    async def revoked(app, revoked, **kwargs):
        group_lag.forget(revoked)
        if on_revoked is not None:
            on_revoked(revoked)
        if transactions is not None:
            await transactions.revoke(revoked)

    # Loading a new bundle takes seconds: on its own thread, so scoring goes on meanwhile.
    loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-loader")

    @app.timer(interval=2.0)
    async def watch_bundle():
        await model.maybe_swap(asyncio.get_running_loop(), loader)

    @app.task
    async def swap_on_sighup():
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(model.maybe_swap(loop, loader)))
        except (NotImplementedError, RuntimeError):  # pragma: no cover - non-main thread / platform
            pass

    @app.task
    async def watch_event_loop():
        while True:  # a blocked loop delays every timer, fetch and heartbeat: measured, not guessed
            asked = time.monotonic()
            await asyncio.sleep(0.25)
            metrics.EVENT_LOOP_LAG.observe(max(0.0, time.monotonic() - asked - 0.25))

    def ready():
        assigned = bool(_owned(app, consumed)) and not app.rebalancing
        return readiness(assigned, metrics.ES_BACKPRESSURE._value.get() == 1, group_lag.view.stalled(time.monotonic()))

    add_pages(app, model, live, ready)
    faustcompat.disable_read_offset_filter(app)


def _every(app: faust.App, interval_s: float, job) -> None:
    """Runs ``job`` with ``interval_s`` between the end of one run and the start of the next.
    For jobs that wait on the broker (off the event loop or awaiting it): a slow answer delays
    the next run instead of making faust's timer report an overlap nobody can act on."""

    async def every():
        while True:
            await asyncio.sleep(interval_s)
            await job()

    every.__name__ = every.__qualname__ = f"every_{getattr(job, '__name__', 'job')}"
    app.task(every)


def _faust_app(settings: Settings) -> faust.App:
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
        producer_linger=settings.producer_linger_ms / 1000,
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
    return app


def _topics(app: faust.App, settings: Settings) -> SimpleNamespace:
    """Every topic carries bytes the stages encode themselves."""

    def topic(name: str):
        return app.topic(
            name,
            key_type=bytes,
            value_type=bytes,
            partitions=settings.topic_partitions,
            internal=True,
            key_serializer="raw",
            value_serializer="raw",
        )

    valid, windows = internal_topic_names(settings)  # internal to the group, like faust's changelogs
    return SimpleNamespace(
        raw=topic(settings.topic_raw),
        valid=topic(valid),
        windows=topic(windows),
        scored=topic(settings.topic_scored),
        deadletter=topic(settings.topic_deadletter),
        aggregates=topic(settings.topic_aggregates),
        alerts=topic(settings.topic_alerts),
        shadow=topic(settings.topic_shadow),
    )


def _offset_gaps(app: faust.App, settings: Settings, topics: set[str]) -> faustcompat.OffsetGaps:
    # Transaction markers upstream leave runs of offsets with nothing to read (see ReadableProbe).
    probe = ReadableProbe(settings)
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="offset-probe")

    async def first_readable(tp, start: int, end: int) -> int | None:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor, probe.first_readable, tp.topic, tp.partition, start, end)

    return faustcompat.OffsetGaps(app, topics, first_readable=first_readable)


def _transactions(app: faust.App, settings: Settings, topics: set[str], intake) -> Transactions | None:
    """Exactly-once: the input partitions' transactional producers; faust's own offset commits
    and table recovery adapted to them (see faustcompat)."""
    if settings.processing_guarantee != "exactly_once":
        return None
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="transactions")
    committed, probe = CommittedOffsets(settings), ReadableProbe(settings, timeout_s=10.0)

    async def committed_offset(topic: str, partition: int) -> int | None:
        return await asyncio.get_running_loop().run_in_executor(executor, committed.offset, topic, partition)

    async def last_readable(topic: str, partition: int, end: int) -> int | None:
        return await asyncio.get_running_loop().run_in_executor(executor, probe.last_readable, topic, partition, end)

    transactions = Transactions(settings, settings.consumer_group, topics, committed_offset, intake.generation)
    faustcompat.leave_commits_to_transactions(app)
    faustcompat.fence_before_seeking(app, transactions.fence)
    faustcompat.recover_to_readable_end(app, last_readable)
    return transactions


def _window_processor(settings: Settings, table, upstream: UpstreamProgress) -> WindowProcessor:
    window_config = settings.window_config()
    names = [s.name for s in window_config.specs]
    rules = load_rules(settings.alert_rules, names) if settings.alert_rules else []
    partitions = settings.topic_partitions
    processor = WindowProcessor(
        window_config,
        rules,
        settings.window_max_topics,
        partitions,
        table.get,
        idle_s=settings.window_idle_s,
        # Sources: (by-fingerprint partition, raw partition) pairs, see scoring.window_items. A raw
        # topic created with other partition counts only changes how long the first windows wait.
        upstream_sources=[f"{fp}:{raw}" for fp in range(partitions) for raw in range(partitions)],
        max_clock_skew_s=settings.max_clock_skew_s,
        max_event_age_s=settings.max_event_age_s,
        upstream_hold_s=settings.window_upstream_hold_s,
        known_names=known_names(settings),
        name_half_life_s=settings.window_name_half_life_s,
    )
    processor.upstream_pending = upstream.pending
    return processor


def _owned(app: faust.App, topics: set[str]) -> set[tuple[str, int]]:
    try:
        return {(tp.topic, tp.partition) for tp in app.consumer.assignment() if tp.topic in topics}
    except (AttributeError, AssertionError):  # the consumer not started yet
        return set()


def known_names(settings: Settings) -> frozenset[str]:
    """Names always given windows of their own: the configured list, the dictionary's tickers and
    the topic head's topics."""
    names = set(_dictionary(settings).alias_to_ticker.values()) | set(TOPICS)
    if settings.window_known_names:
        names |= read_names(settings.window_known_names)
    return frozenset(names)


def _dictionary(settings: Settings) -> CompanyDictionary:
    if settings.company_dictionary:
        return CompanyDictionary.from_csv(settings.company_dictionary)
    return CompanyDictionary.empty()


def run_shadow_worker(settings: Settings, loglevel: str = "info") -> None:
    """Blocks running one shadow worker (at the lowest CPU priority) until it is stopped."""
    if settings.shadow_bundle is None:
        raise ValueError("FINSENT_SHADOW_BUNDLE is not set: point it at the candidate bundle")
    open_bundle(settings.shadow_bundle, verify_checksums=False)
    try:
        os.nice(19)  # a candidate never takes CPU a serving worker on the same host wants
    except OSError:  # pragma: no cover - not allowed: it runs at the same priority then
        log.info("the shadow worker keeps its CPU priority")
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    faustcompat.run(create_shadow_app(settings), loglevel)


def run_worker(settings: Settings, loglevel: str = "info") -> None:
    """Blocks running one worker until it is stopped (SIGTERM/SIGINT)."""
    # A bundle that is not there fails now, before anything waits on Kafka.
    if settings.model_bundle is None:
        raise ValueError("FINSENT_MODEL_BUNDLE is not set: point it at a bundle written by `finsent export`")
    open_bundle(settings.model_bundle, verify_checksums=False)
    # kafka-python serves the lag and progress readers and the topic check: each failure reaches
    # our code as an exception, logged there with what it means. Its own ERROR lines (a connection
    # closed while a worker stops) would page nobody usefully: an ERROR line must mean "act".
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    _declare_topics(settings)
    faustcompat.run(create_app(settings), loglevel)


def _declare_topics(settings: Settings) -> None:
    """Every topic the worker reads exists before its consumer subscribes: faust declares them
    concurrently with the subscription, and a topic that appears after it is only picked up at
    the consumer's next metadata refresh (a first start could sit idle for minutes)."""
    from kafka.errors import KafkaError

    from .clients import ConnectionFailure

    try:
        check_partitions(settings)
        ensure_topics(settings, internal=True)
    except (ConnectionFailure, KafkaError, OSError) as exc:  # Kafka not up yet: faust declares them later
        logging.getLogger("finsent.worker").warning("topics not declared before start (%s)", exc)
