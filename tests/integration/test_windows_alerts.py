"""Windows and alerts through the real broker and Elasticsearch: a scripted stream with a negative
burst on one ticker and a volume spike on another, with a worker restart in the middle."""

from __future__ import annotations

import json
import math
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from .harness import WINDOW_CONFIG, WINDOW_ENV, Pipeline, texts_by_prediction

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


@pytest.fixture
def pipeline(local_stack, tiny_bundle, tmp_path, unique):
    rules = tmp_path / "rules.yml"
    rules.write_text(RULES)
    p = Pipeline(
        name=f"w{unique}",
        bundle=tiny_bundle,
        workdir=tmp_path,
        extra_env={**WINDOW_ENV, "FINSENT_ALERT_RULES": str(rules)},
    )
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
