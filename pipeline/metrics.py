"""The worker's Prometheus metrics, declared once, in their own registry.

Label values are bounded: outcomes and dead-letter reasons are fixed sets, partitions are
bounded by the topic's partition count, and model info holds one series per loaded model.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .schemas import DEAD_LETTER_REASONS

REGISTRY = CollectorRegistry(auto_describe=True)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

MESSAGES = Counter("finsent_messages", "Messages read from the raw topic, by outcome.", ["outcome"], registry=REGISTRY)
DEAD_LETTERS = Counter(
    "finsent_dead_letters", "Messages sent to the dead-letter topic, by reason.", ["reason"], registry=REGISTRY
)
TRUNCATED = Counter(
    "finsent_truncated_texts", "Texts longer than the limit, truncated before scoring.", registry=REGISTRY
)
BATCH_SIZE = Histogram(
    "finsent_batch_size_messages",
    "Messages per classified batch.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
    registry=REGISTRY,
)
INFERENCE = Histogram(
    "finsent_inference_duration_seconds",
    "Tokenisation plus ONNX Runtime time per batch.",
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
END_TO_END = Histogram(
    "finsent_end_to_end_latency_seconds",
    "From a message's clock (published_at or Kafka timestamp) to its scored record.",
    ["clock"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
TRANSACTIONS = Histogram(
    "finsent_kafka_transaction_duration_seconds",
    "Exactly-once: one input partition's transaction, from its first record to its commit, by topic.",
    ["topic"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
SHADOW_RECORDS = Counter(
    "finsent_shadow_records",
    "Scored records the shadow stage saw, by outcome: scored by the candidate, not_sampled "
    "(FINSENT_SHADOW_SAMPLE), skipped_behind (the candidate too far behind), duplicate, unreadable, es_rejected.",
    ["outcome"],
    registry=REGISTRY,
)
SHADOW_LABELS = Counter(
    "finsent_shadow_labels",
    "Records the candidate scored, by the serving model's label and the candidate's (agreement and flips).",
    ["serving", "candidate"],
    registry=REGISTRY,
)
SHADOW_INFERENCE = Histogram(
    "finsent_shadow_inference_seconds",
    "The candidate model's inference time per batch.",
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
EVENT_LOOP_LAG = Histogram(
    "finsent_event_loop_lag_seconds",
    "How late the worker's event loop wakes a 0.25 s sleep: time it spent blocked by work that does not yield.",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
    registry=REGISTRY,
)
ES_BULK = Histogram(
    "finsent_es_bulk_duration_seconds",
    "Elasticsearch bulk request time, retries included.",
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
ES_ERRORS = Counter(
    "finsent_es_errors",
    "Elasticsearch failures, by kind (unavailable, rejected, retried).",
    ["kind"],
    registry=REGISTRY,
)
ES_BACKPRESSURE = Gauge(
    "finsent_es_backpressure", "1 while the worker waits for Elasticsearch to come back.", registry=REGISTRY
)
ES_INDICES_DELETED = Counter(
    "finsent_es_indices_deleted",
    "Dated Elasticsearch indices deleted by retention (FINSENT_ES_RETENTION_DAYS, ..._SUMMARY_...).",
    registry=REGISTRY,
)
CONSUMER_LAG = Gauge(
    "finsent_consumer_lag_messages",
    "Offsets past the group's committed one, per partition this worker owns (read from the broker every 5 s).",
    ["topic", "partition"],
    registry=REGISTRY,
)
MODEL_INFO = Gauge(
    "finsent_model_info", "The model in use (value 1).", ["version", "provider", "variant"], registry=REGISTRY
)
OFFSET_GAPS = Counter(
    "finsent_offset_gaps",
    "Runs of offsets the consumer skipped and the worker read again.",
    ["topic"],
    registry=REGISTRY,
)
SCORING_RETRIES = Counter(
    "finsent_scoring_retries", "Batches (or isolated messages) scored again after a failure.", registry=REGISTRY
)
DEDUP_ENTRIES = Gauge(
    "finsent_dedup_entries", "De-duplication entries this worker holds (within the horizon).", registry=REGISTRY
)
DEDUP_EXPIRED = Counter(
    "finsent_dedup_expired",
    "De-duplication entries deleted, once past the horizon or beyond the size cap.",
    ["reason"],
    registry=REGISTRY,
)
ENTITY_MENTIONS = Counter(
    "finsent_entity_mentions",
    "Tickers linked in scored records, by how they were found and whose sentiment they carry.",
    ["source", "sentiment_of"],
    registry=REGISTRY,
)
INFERRED_TOPICS = Counter(
    "finsent_inferred_topics", "Topics the topic head added to scored records.", ["topic"], registry=REGISTRY
)
MODEL_SWAPS = Counter("finsent_model_swaps", "Model bundles hot-swapped in.", registry=REGISTRY)

# Per topic/ticker, from the last closed window (label values bounded by FINSENT_WINDOW_MAX_TOPICS).
TOPIC_SENTIMENT = Gauge(
    "finsent_topic_sentiment",
    "Mean sentiment score (-1..1) of the last closed window.",
    ["topic", "window"],
    registry=REGISTRY,
)
TOPIC_NEGATIVE_RATIO = Gauge(
    "finsent_topic_negative_ratio",
    "Share of negative messages in the last closed window.",
    ["topic", "window"],
    registry=REGISTRY,
)
TOPIC_MESSAGES = Gauge(
    "finsent_topic_messages", "Messages in the last closed window.", ["topic", "window"], registry=REGISTRY
)
WINDOWS_CLOSED = Counter(
    "finsent_windows_closed", "Windows closed, empty ones included.", ["window"], registry=REGISTRY
)
LATE_RECORDS = Counter(
    "finsent_late_records", "Records later than the allowed lateness (not in any window).", registry=REGISTRY
)
EVENT_TIME_OUT_OF_BOUNDS = Counter(
    "finsent_event_time_out_of_bounds",
    "Records kept out of the windows: event time too far ahead of the clock (future) or behind stream time (too_old).",
    ["bound"],
    registry=REGISTRY,
)
NAMES_EVICTED = Counter(
    "finsent_window_names_evicted",
    "Names that lost their windows to more active ones (their open windows dropped).",
    registry=REGISTRY,
)
TRACKED_TOPICS = Gauge(
    "finsent_tracked_topics", "Topics and tickers with their own windows on this worker.", registry=REGISTRY
)
WINDOW_STREAM_TIME = Gauge(
    "finsent_window_stream_time_seconds",
    "Event time (Unix seconds) up to which windows of a window-topic partition can close (its watermark).",
    ["partition"],
    registry=REGISTRY,
)
WINDOWS_HELD = Gauge(
    "finsent_windows_held_by_upstream",
    "1 while upstream stages in the group hold unprocessed messages, so quiet sources count as stalled.",
    registry=REGISTRY,
)
ALERTS = Counter("finsent_alerts", "Alert episodes fired.", ["rule", "severity"], registry=REGISTRY)
ALERT_ACTIVE = Gauge(
    "finsent_alert_active", "1 while an alert episode is firing.", ["rule", "topic", "severity"], registry=REGISTRY
)

for _reason in DEAD_LETTER_REASONS:  # expose zeros so rates and alerts work from the start
    DEAD_LETTERS.labels(_reason)
for _outcome in ("scored", "duplicate", "dead_letter"):
    MESSAGES.labels(_outcome)
for _bound in ("future", "too_old"):
    EVENT_TIME_OUT_OF_BOUNDS.labels(_bound)


def set_model_info(version: str, provider: str, variant: str) -> None:
    MODEL_INFO.clear()
    MODEL_INFO.labels(version, provider, variant).set(1)


def exposition() -> tuple[bytes, str]:
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def record_windows(
    closed, alerts, late: int, forgotten: list[str], tracked: int, out_of_bounds=None, evicted: int = 0
) -> None:
    """Metrics from one batch of the window stage, once its outputs are acknowledged."""
    for window in closed:
        WINDOWS_CLOSED.labels(window.spec.name).inc()
        TOPIC_MESSAGES.labels(window.topic, window.spec.name).set(window.messages)
        if window.messages:
            TOPIC_SENTIMENT.labels(window.topic, window.spec.name).set(window.sentiment_mean)
            TOPIC_NEGATIVE_RATIO.labels(window.topic, window.spec.name).set(window.shares["negative"])
    for alert in alerts:
        if alert.status == "firing":
            ALERTS.labels(alert.rule, alert.severity).inc()
        if alert.status == "firing":
            ALERT_ACTIVE.labels(alert.rule, alert.topic, alert.severity).set(1)
        elif (alert.rule, alert.topic, alert.severity) in _label_values(ALERT_ACTIVE):
            # A resolved episode's series goes away, so names that alerted once do not pile up.
            ALERT_ACTIVE.remove(alert.rule, alert.topic, alert.severity)
    LATE_RECORDS.inc(late)
    for bound, count in (out_of_bounds or {}).items():
        EVENT_TIME_OUT_OF_BOUNDS.labels(bound).inc(count)
    TRACKED_TOPICS.set(tracked)
    NAMES_EVICTED.inc(evicted)
    forget_names(forgotten)


def forget_names(names) -> None:
    """Drops the per-name series of names this worker no longer tracks (idle, or their partition
    moved to another worker), so label sets stay bounded and no stale value lingers."""
    names = set(names)
    if not names:
        return
    for gauge in (TOPIC_SENTIMENT, TOPIC_NEGATIVE_RATIO, TOPIC_MESSAGES):
        for labels in [lv for lv in _label_values(gauge) if lv[0] in names]:
            gauge.remove(*labels)
    for labels in [lv for lv in _label_values(ALERT_ACTIVE) if lv[1] in names]:
        ALERT_ACTIVE.remove(*labels)


def set_stream_time(partition: int, stream_time: float | None) -> None:
    if stream_time is not None:
        WINDOW_STREAM_TIME.labels(str(partition)).set(stream_time)


def forget_lag(topic: str, partition: int) -> None:
    """A partition no longer owned here: its lag is reported by its new owner."""
    if (topic, str(partition)) in _label_values(CONSUMER_LAG):
        CONSUMER_LAG.remove(topic, str(partition))


def forget_partition(partition: int) -> None:
    """A window partition that moved to another worker: its watermark is reported there."""
    if (str(partition),) in _label_values(WINDOW_STREAM_TIME):
        WINDOW_STREAM_TIME.remove(str(partition))


def _label_values(gauge) -> list[tuple[str, ...]]:
    return [
        tuple(sample.labels[n] for n in gauge._labelnames) for metric in gauge.collect() for sample in metric.samples
    ]
