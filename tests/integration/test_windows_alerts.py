"""Windows and alerts through the real broker and Elasticsearch: a scripted stream with a negative
burst on one ticker and a volume spike on another, with a worker restart in the middle."""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from kafka import KafkaProducer

from .harness import WINDOW_CONFIG, WINDOW_ENV, Pipeline, _epoch, texts_by_prediction, wait_for

BASE = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
RULES = """
rules:
  - {name: neg-burst, kind: negative_share, window: 1m, threshold: 0.6, min_messages: 5, severity: page,
     resolve_after: 2}
  - {name: vol-spike, kind: volume_spike, window: 1m, threshold: 3, min_messages: 5, resolve_after: 2}
"""


def scripted_stream(negative: list[str], positive: list[str]) -> list[dict]:
    """25 minutes: NEG (8/min) turns negative in minutes 10-12; VOL (6/min) spikes to 60 in minute 11;
    CALM (6/min) stays as it is."""
    messages = []

    def add(ticker: str, minute: int, n: int, pool: list[str]):
        for k in range(n):
            at = BASE + timedelta(seconds=minute * 60 + k * 60 / n)
            messages.append(
                {
                    "id": f"{ticker}-{minute}-{k}",
                    "text": pool[(minute * 7 + k) % len(pool)],
                    "tickers": [ticker],
                    "published_at": at.isoformat().replace("+00:00", "Z"),
                }
            )

    for minute in range(25):
        add("NEG", minute, 8, negative if 10 <= minute <= 12 else positive)
        add("VOL", minute, 60 if minute == 11 else 6, positive)
        add("CALM", minute, 6, positive)
    messages.sort(key=lambda m: m["published_at"])
    return messages


def windowed_pipeline(name: str, bundle, workdir, **env) -> Pipeline:
    """A pipeline with the test windows and the rules above."""
    rules = workdir / "rules.yml"
    rules.write_text(RULES)
    return Pipeline(
        name=name, bundle=bundle, workdir=workdir, extra_env={**WINDOW_ENV, "FINSENT_ALERT_RULES": str(rules), **env}
    )


@pytest.fixture
def pipeline(local_stack, tiny_bundle, tmp_path, unique):
    p = windowed_pipeline(f"w{unique}", tiny_bundle, tmp_path)
    yield p
    p.stop_all()


def test_burst_and_spike_fire_once_resolve_once_and_windows_match_a_recomputation(pipeline, tiny_bundle, phrasebank):
    negative, positive = texts_by_prediction(tiny_bundle, phrasebank)
    stream = scripted_stream(negative, positive)
    half = len(stream) // 2  # inside the burst: the restart lands mid-episode
    first = pipeline.start_worker(0)
    pipeline.produce([json.dumps(m).encode() for m in stream[:half]])
    pipeline.wait_indexed(half)
    first.stop()  # SIGTERM: a clean restart
    pipeline.start_worker(1)
    sentinels = [
        {
            "id": f"end-{t}",
            "text": positive[0],
            "tickers": [t],
            "published_at": (BASE + timedelta(minutes=40)).isoformat().replace("+00:00", "Z"),
        }
        for t in ("NEG", "VOL", "CALM")
    ]
    pipeline.produce([json.dumps(m).encode() for m in stream[half:] + sentinels])
    pipeline.wait_indexed(len(stream) + len(sentinels))

    alerts = pipeline.read_topic("FINSENT_TOPIC_ALERTS", 4, timeout_s=120)
    assert Counter((a["rule"], a["topic"], a["status"]) for a in alerts) == Counter(
        {
            ("neg-burst", "NEG", "firing"): 1,
            ("neg-burst", "NEG", "resolved"): 1,
            ("vol-spike", "VOL", "firing"): 1,
            ("vol-spike", "VOL", "resolved"): 1,
        }
    )
    fired = {a["topic"]: a for a in alerts if a["status"] == "firing"}
    assert fired["NEG"]["window_start"] == "2024-05-01T12:10:00Z" and fired["NEG"]["severity"] == "page"
    assert fired["VOL"]["window_start"] == "2024-05-01T12:11:00Z" and fired["VOL"]["messages"] == 60
    es = pipeline.es()
    es.indices.refresh(index=f"{pipeline.name}-alerts")
    documents = es.search(index=f"{pipeline.name}-alerts", size=100)["hits"]["hits"]
    assert sorted((d["_source"]["topic"], d["_source"]["status"]) for d in documents) == [
        ("NEG", "resolved"),
        ("VOL", "resolved"),
    ]

    # Every window that starts before minute 30 (the sentinels are at 40) against a batch
    # recomputation from the scored records in Elasticsearch.
    expected, got = pipeline.wait_windows(WINDOW_CONFIG, cutoff_s=(BASE + timedelta(minutes=30)).timestamp())
    assert set(got) == set(expected)
    for key, row in expected.items():
        aggregate = got[key]
        assert aggregate["messages"] == row["messages"], key
        assert math.isclose(aggregate["sentiment_mean"], row["sum"] / row["messages"], abs_tol=1e-6), key
        assert math.isclose(aggregate["share_negative"], row["negative"] / row["messages"], abs_tol=1e-9), key
        assert aggregate["late_records"] == 0
    # The aggregates topic carries the same windows, each once.
    topic_aggregates = pipeline.read_topic("FINSENT_TOPIC_AGGREGATES", len(got))
    ids = Counter(a["id"] for a in topic_aggregates)
    assert all(ids[a["id"]] == 1 for a in got.values())


def _keys_on_distinct_partitions(partitions: int, count: int) -> list[bytes]:
    """Producer keys that Kafka's default partitioner puts on ``count`` different partitions."""
    from pipeline.dedup import fingerprint_partition

    keys: dict[int, bytes] = {}
    for n in range(1000):
        keys.setdefault(fingerprint_partition(f"desk-{n}", partitions), f"desk-{n}".encode())
        if len(keys) == count:
            return list(keys.values())
    raise AssertionError("no keys found")


def _aggregates_with_times(pipeline: Pipeline) -> list[tuple[dict, float]]:
    """Every aggregate on the topic (read_committed) with the time the worker produced it."""
    from kafka import KafkaConsumer, TopicPartition

    topic = pipeline.env["FINSENT_TOPIC_AGGREGATES"]
    consumer = KafkaConsumer(
        **pipeline.settings.kafka_client_kwargs(),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        consumer_timeout_ms=2000,
        isolation_level="read_committed",
    )
    try:
        consumer.assign([TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()])
        return [(json.loads(r.value), r.timestamp / 1000) for r in consumer]
    finally:
        consumer.close()


def test_windows_close_on_time_when_producers_key_their_messages(local_stack, tiny_bundle, tmp_path, unique):
    """Live traffic from producers that key by desk: two keys carry every message, so one raw
    partition carries nothing and each name arrives through one raw partition only. Past the
    start-up bound (idle + hold), every 1-minute window closes within lateness + idle + 10 s of
    its end (the target is + 5 s; 10 leaves room for a loaded CI host), while messages flow.
    (Before bounded holds, no window closed at all.)"""
    hold, idle, lateness = 10, float(WINDOW_ENV["FINSENT_WINDOW_IDLE_S"]), WINDOW_CONFIG.lateness_s
    pipeline = windowed_pipeline(f"k{unique}", tiny_bundle, tmp_path, FINSENT_WINDOW_UPSTREAM_HOLD_S=str(hold))
    desks = dict(
        zip(_keys_on_distinct_partitions(pipeline.partitions, 2), [["AAA", "BBB", "CCC"], ["DDD", "EEE"]], strict=True)
    )
    producer = KafkaProducer(**pipeline.settings.kafka_client_kwargs(), acks="all", linger_ms=5)
    try:
        pipeline.start_worker()
        started = time.time()
        # The first 1-minute window that starts past the start-up bound, and when it must be out.
        first_end = math.ceil((started + idle + hold) / 60) * 60 + 60
        produce_until = first_end + lateness + idle + 10
        n = 0
        while time.time() < produce_until:  # about 20 msg/s, at most 3 min
            now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
            for key, names in desks.items():
                text = f"Desk note {n}: {names[n % len(names)]} trades in line with the market"
                payload = {"id": f"{key.decode()}-{n}", "text": text, "tickers": [names[n % len(names)]]}
                producer.send(
                    pipeline.env["FINSENT_TOPIC_RAW"], json.dumps({**payload, "published_at": now}).encode(), key=key
                )
            n += 1
            time.sleep(0.1)
        producer.flush(timeout=60)
        last_end = math.floor((time.time() - lateness - idle - 10) / 60) * 60
        names = [name for names in desks.values() for name in names]
        wanted = {(name, end) for name in names for end in range(first_end, last_end + 1, 60)}

        def emitted():
            found = {}
            for aggregate, at in _aggregates_with_times(pipeline):
                end = _epoch(aggregate["end"])
                if aggregate["window"] == "1m" and (aggregate["topic"], end) in wanted:
                    found[(aggregate["topic"], end)] = at
            return found if set(found) == wanted else None

        found = wait_for(emitted, 60, f"{len(wanted)} windows of {names} ending {first_end}-{last_end}")
        delays = {key: at - key[1] for key, at in found.items()}
        assert max(delays.values()) <= lateness + idle + 10, sorted(delays.items(), key=lambda kv: -kv[1])[:5]
    finally:
        producer.close()
        pipeline.stop_all()
