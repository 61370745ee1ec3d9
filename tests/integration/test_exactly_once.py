"""Exactly-once (FINSENT_PROCESSING_GUARANTEE=exactly_once) through the real broker: a consumer
reading read_committed sees every scored record, dead letter, aggregate and alert once, although
the worker is SIGKILLed twice mid-stream."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from .harness import Pipeline, texts_by_prediction, wait_for
from .test_windows_alerts import scripted_stream, windowed_pipeline
from .test_worker import BAD_INPUT


@pytest.fixture
def pipeline(local_stack, tiny_bundle, tmp_path, unique):
    p = windowed_pipeline(f"x{unique}", tiny_bundle, tmp_path, FINSENT_PROCESSING_GUARANTEE="exactly_once")
    yield p
    p.stop_all()


def twice(records: list[dict], key: str = "id") -> dict:
    return {k: n for k, n in Counter(r[key] for r in records).items() if n > 1}


def test_sigkills_leave_no_record_twice_on_any_output_topic(pipeline: Pipeline, tiny_bundle, phrasebank):
    negative, positive = texts_by_prediction(tiny_bundle, phrasebank)
    stream = scripted_stream(negative, positive)
    payloads = [json.dumps(m).encode() for m in stream]
    third = len(payloads) // 3
    bad = list(BAD_INPUT.values())
    worker = pipeline.start_worker(0)
    pipeline.produce(payloads[:third] + bad)
    for index, kill_at in ((1, third // 2), (2, third + third // 2)):
        wait_for(
            lambda n=kill_at: pipeline.indexed_count() >= n,
            180,
            f"{kill_at} documents before a kill",
            diagnosis=pipeline.diagnosis,
        )
        worker.kill()
        worker = pipeline.start_worker(index)
        pipeline.produce(payloads[third * index : third * (index + 1)] if index == 1 else payloads[2 * third :])
    pipeline.wait_indexed(len(stream), timeout_s=300)

    scored = pipeline.read_topic("FINSENT_TOPIC_SCORED", len(stream), timeout_s=120, isolation_level="read_committed")
    assert twice(scored) == {}
    assert {r["id"] for r in scored} == {m["id"] for m in stream}
    letters = pipeline.read_topic("FINSENT_TOPIC_DEADLETTER", len(bad), isolation_level="read_committed")
    assert sorted(letter["reason"] for letter in letters) == sorted(BAD_INPUT)
    alerts = pipeline.read_topic("FINSENT_TOPIC_ALERTS", 4, timeout_s=120, isolation_level="read_committed")
    assert Counter((a["rule"], a["topic"], a["status"]) for a in alerts) == Counter(
        {
            ("neg-burst", "NEG", "firing"): 1,
            ("neg-burst", "NEG", "resolved"): 1,
            ("vol-spike", "VOL", "firing"): 1,
            ("vol-spike", "VOL", "resolved"): 1,
        }
    )
    aggregates = pipeline.read_topic("FINSENT_TOPIC_AGGREGATES", 1, isolation_level="read_committed")
    assert aggregates and twice(aggregates) == {}
