"""The stream worker against the real broker and Elasticsearch: good and bad input, SIGKILL,
an Elasticsearch outage and a model hot swap. Every wait is bounded."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from pipeline import windows
from pipeline.admin import GroupProgress, ensure_topics
from pipeline.bundle import write_manifest
from pipeline.clients import kafka_producer
from pipeline.stack.elasticsearch import Elasticsearch as ElasticsearchService

from .harness import Pipeline, wait_for


def good_messages(n: int, prefix: str) -> list[dict]:
    companies = ["AAPL", "MSFT", "NOK", "BRK.B", "TSLA"]
    return [
        {
            "id": f"{prefix}-{i}",
            "text": f"${companies[i % 5]} reports quarter {i}: operating profit rose {i % 17} %",
            "source": "wire",
            "published_at": "2024-05-01T12:00:00Z",
            "topics": ["Earnings"] if i % 2 else [],
        }
        for i in range(n)
    ]


@pytest.fixture
def pipeline(local_stack, tiny_bundle, tmp_path, unique):
    p = Pipeline(name=f"t{unique}", bundle=tiny_bundle, workdir=tmp_path, extra_env={"FINSENT_READY_STALL_S": "10"})
    yield p
    p.stop_all()


BAD_INPUT = {
    "not_utf8": b"\xff\xfe\x00 binary junk",
    "invalid_json": b'{"text": "unterminated',
    "not_an_object": b'["a", "list"]',
    "missing_text": json.dumps({"id": "no-text", "source": "x"}).encode(),
    "empty_text": json.dumps({"id": "blank", "text": "   "}).encode(),
    "wrong_type": json.dumps({"id": "num", "text": 42}).encode(),
    "invalid_field": json.dumps({"id": "when", "text": "ok", "published_at": "last tuesday"}).encode(),
}


def test_good_messages_scored_once_and_bad_ones_dead_lettered(pipeline: Pipeline):
    good = good_messages(150, "g")
    # A very long text is truncated and flagged, and unknown fields are tolerated.
    good.append({"id": "long", "text": "Profit rose. " * 5000, "vendor_field": {"x": 1}})
    payloads = [json.dumps(m).encode() for m in good] + list(BAD_INPUT.values())
    worker = pipeline.start_worker()
    pipeline.produce(payloads)

    good_ids = {m["id"] for m in good}
    assert sorted(pipeline.wait_indexed(len(good_ids))) == sorted(good_ids)

    scored = pipeline.read_topic("FINSENT_TOPIC_SCORED", len(good_ids))
    assert Counter(r["id"] for r in scored) == Counter(good_ids)  # each exactly once
    by_id = {r["id"]: r for r in scored}
    for record in scored:
        assert record["label"] in ("negative", "neutral", "positive")
        assert abs(sum(record["probabilities"].values()) - 1) < 1e-4
        assert record["sentiment_score"] == pytest.approx(
            record["probabilities"]["positive"] - record["probabilities"]["negative"]
        )
        assert record["model_version"] == "tiny-1"
    assert by_id["g-3"]["tickers"] == ["BRK.B"] and by_id["g-1"]["topics"] == ["Earnings"]
    assert by_id["long"]["truncated"] is True and len(by_id["long"]["text"]) == 10_000

    letters = pipeline.read_topic("FINSENT_TOPIC_DEADLETTER", len(BAD_INPUT))
    assert sorted(letter["reason"] for letter in letters) == sorted(BAD_INPUT)
    for letter in letters:
        original = BAD_INPUT[letter["reason"]]
        payload = (
            base64.b64decode(letter["payload"])
            if letter["payload_encoding"] == "base64"
            else letter["payload"].encode()
        )
        assert payload == original
        assert letter["topic"] == pipeline.env["FINSENT_TOPIC_RAW"] and letter["offset"] >= 0
        assert letter["detail"]
    assert [letter["payload_encoding"] for letter in letters if letter["reason"] == "not_utf8"] == ["base64"]

    # The metrics agree with what went where.
    assert worker.metric("finsent_messages_total", outcome="scored") == len(good_ids)
    assert worker.metric("finsent_messages_total", outcome="dead_letter") == len(BAD_INPUT)
    for reason in BAD_INPUT:
        assert worker.metric("finsent_dead_letters_total", reason=reason) == 1
    assert worker.metric("finsent_truncated_texts_total") == 1
    assert worker.metric("finsent_batch_size_messages_count") >= 1
    assert 'provider="CPUExecutionProvider"' in worker.metrics_text()
    lint = subprocess.run(
        ["promtool", "check", "metrics"], input=worker.metrics_text(), capture_output=True, text=True, timeout=30
    )
    assert lint.returncode == 0 and not lint.stdout.strip() and not lint.stderr.strip(), lint.stdout + lint.stderr


def test_syndicated_copies_are_marked_not_rescored(pipeline: Pipeline):
    original = {"id": "orig", "text": "Nokia wins EUR 50 mn network deal https://t.co/AAA", "source": "a"}
    copy = {"id": "copy", "text": "NOKIA wins EUR 50 mn network deal!! https://t.co/BBB", "source": "b"}
    worker = pipeline.start_worker()
    pipeline.produce([json.dumps(original).encode()])
    pipeline.wait_indexed(1)
    pipeline.produce([json.dumps(copy).encode()])
    pipeline.wait_indexed(2)
    scored = {r["id"]: r for r in pipeline.read_topic("FINSENT_TOPIC_SCORED", 2)}
    assert scored["copy"]["duplicate_of"] == "orig"
    assert scored["copy"]["probabilities"] == scored["orig"]["probabilities"]
    assert worker.metric("finsent_messages_total", outcome="duplicate") == 1
    assert worker.metric("finsent_messages_total", outcome="scored") == 1


def test_sigkill_mid_stream_loses_and_duplicates_nothing(pipeline: Pipeline):
    messages = good_messages(3000, "k")
    worker = pipeline.start_worker()
    pipeline.produce([json.dumps(m).encode() for m in messages])
    wait_for(lambda: len(pipeline.indexed_ids()) >= 300, 120, "a few hundred documents before the kill")
    worker.kill()
    assert len(pipeline.indexed_ids()) < len(messages), "the worker finished before it could be killed"
    pipeline.start_worker()
    ids = pipeline.wait_indexed(len(messages), timeout_s=240)
    assert sorted(ids) == sorted(m["id"] for m in messages)
    pipeline.assert_once_each("FINSENT_TOPIC_SCORED", ids)  # exactly-once: no repeat on the topic either


def test_at_least_once_sigkill_mid_stream_loses_nothing(local_stack, tiny_bundle, tmp_path, unique):
    """The other guarantee (the default is exactly-once): Kafka outputs may repeat after the kill,
    Elasticsearch holds every message once."""
    p = Pipeline(
        name=f"a{unique}",
        bundle=tiny_bundle,
        workdir=tmp_path,
        extra_env={"FINSENT_PROCESSING_GUARANTEE": "at_least_once"},
    )
    try:
        messages = good_messages(2000, "a")
        worker = p.start_worker()
        p.produce([json.dumps(m).encode() for m in messages])
        wait_for(lambda: len(p.indexed_ids()) >= 300, 120, "a few hundred documents before the kill")
        worker.kill()
        p.start_worker(1)
        ids = p.wait_indexed(len(messages), timeout_s=240)
        assert sorted(ids) == sorted(m["id"] for m in messages)
        scored = p.read_topic("FINSENT_TOPIC_SCORED", len(messages), timeout_s=120)
        assert {r["id"] for r in scored} == {m["id"] for m in messages}
    finally:
        p.stop_all()


def test_elasticsearch_outage_backpressure_and_recovery(pipeline: Pipeline, local_stack):
    es_service = ElasticsearchService(local_stack)
    first, second = good_messages(400, "a"), good_messages(1200, "b")
    worker = pipeline.start_worker()
    pipeline.produce([json.dumps(m).encode() for m in first])
    pipeline.wait_indexed(len(first))
    baseline_rss = worker.rss_mb()
    es_service.stop()
    try:
        pipeline.produce([json.dumps(m).encode() for m in second])
        peak = baseline_rss

        def held_back_through_retries() -> bool:  # the worker waits, alive, with bounded memory
            nonlocal peak
            assert worker.process.poll() is None
            peak = max(peak, worker.rss_mb())
            return (
                worker.metric("finsent_es_backpressure") == 1
                and worker.metric("finsent_es_errors_total", kind="unavailable") >= 5
            )

        wait_for(held_back_through_retries, 120, "five refused attempts under backpressure", interval_s=1)
        # The operator's view: lag read from the broker shows what waits, and grows or holds
        # (not the last value a batch happened to record); /readyz is red and says why.
        waiting = lambda: sum(worker.metric_samples("finsent_consumer_lag_messages").values())  # noqa: E731
        lag = wait_for(lambda: waiting() >= len(second) // 2 and waiting(), 60, "the lag of what waits")
        status, body = wait_for(lambda: (r := worker.readyz()) and r[1]["stalled_partitions"] and r, 60, "a stall")
        assert status == 503 and body["elasticsearch_backpressure"] is True and body["assigned"] is True
        assert waiting() >= lag
    finally:
        es_service.start()
    ids = pipeline.wait_indexed(len(first) + len(second), timeout_s=240)
    assert sorted(ids) == sorted(m["id"] for m in first + second)
    pipeline.assert_once_each("FINSENT_TOPIC_SCORED", ids)
    assert pipeline.read_topic("FINSENT_TOPIC_DEADLETTER", 0, timeout_s=5) == []  # an outage, not bad documents
    assert peak - baseline_rss < 300, f"worker memory grew by {peak - baseline_rss:.0f} MB during the outage"
    assert worker.metric("finsent_es_backpressure") == 0
    wait_for(lambda: (worker.readyz() or (0,))[0] == 200, 60, "/readyz green again")
    wait_for(lambda: sum(worker.metric_samples("finsent_consumer_lag_messages").values()) == 0, 60, "no lag")


def test_hot_swap_between_batches(local_stack, tiny_bundle, tmp_path, unique):
    # The worker watches a symlink; flipping it to a new bundle swaps the model in.
    v1, v2 = tmp_path / "v1", tmp_path / "v2"
    shutil.copytree(tiny_bundle, v1)
    shutil.copytree(tiny_bundle, v2)
    manifest = json.loads((v2 / "manifest.json").read_text())
    manifest["model_version"] = "tiny-2"
    write_manifest(v2, {k: v for k, v in manifest.items() if k not in ("files", "format_version", "created_at")})
    current = tmp_path / "current"
    current.symlink_to(v1)
    pipeline = Pipeline(name=f"h{unique}", bundle=current, workdir=tmp_path)
    try:
        worker = pipeline.start_worker()
        messages = good_messages(1500, "s")
        swapped = threading.Event()

        def produce_through_the_flip():  # traffic before, during and (until the swap is seen) after it
            for i in range(0, len(messages), 50):
                if i >= 1000:
                    swapped.wait(timeout=120)  # the last third goes to the new model
                pipeline.produce([json.dumps(m).encode() for m in messages[i : i + 50]])
                time.sleep(0.1)

        producer = threading.Thread(target=produce_through_the_flip)
        producer.start()
        wait_for(lambda: len(pipeline.indexed_ids()) >= 200, 120, "records scored by the first model")
        tmp_link = tmp_path / "current.new"
        tmp_link.symlink_to(v2)
        tmp_link.replace(current)  # atomic flip
        wait_for(lambda: worker.metric("finsent_model_swaps_total") == 1, 60, "the new bundle swapped in")
        swapped.set()
        producer.join(timeout=120)
        pipeline.wait_indexed(len(messages), timeout_s=240)
        scored = pipeline.read_topic("FINSENT_TOPIC_SCORED", len(messages))
        versions = Counter(r["model_version"] for r in scored)
        assert set(versions) == {"tiny-1", "tiny-2"}, versions
        assert {r["id"] for r in scored} == {m["id"] for m in messages}
        assert worker.metric("finsent_model_swaps_total") == 1
        assert 'version="tiny-2"' in worker.metrics_text()
    finally:
        pipeline.stop_all()


def test_stopping_the_worker_while_elasticsearch_is_down_loses_nothing(pipeline: Pipeline, local_stack):
    # A graceful stop cancels the batch that is waiting for Elasticsearch; it must not be acknowledged.
    es_service = ElasticsearchService(local_stack)
    messages = good_messages(500, "q")
    worker = pipeline.start_worker()
    pipeline.produce([json.dumps(m).encode() for m in messages[:100]])
    pipeline.wait_indexed(100)
    es_service.stop()
    try:
        pipeline.produce([json.dumps(m).encode() for m in messages[100:]])
        wait_for(lambda: worker.metric("finsent_es_backpressure") == 1, 120, "the worker to notice the outage")
        worker.stop()  # SIGTERM mid-batch
        assert worker.process.returncode is not None
    finally:
        es_service.start()
    pipeline.start_worker()
    ids = pipeline.wait_indexed(len(messages), timeout_s=240)
    assert sorted(ids) == sorted(m["id"] for m in messages)


def minute_windows(pipeline: Pipeline, config, cutoff_s: float) -> tuple[dict, dict]:
    """The 1-minute windows of ``window_comparison`` (the 15-minute ones close long after a test)."""
    expected, got = pipeline.window_comparison(config, cutoff_s)
    return {k: v for k, v in expected.items() if k[1] == "1m"}, {k: v for k, v in got.items() if k[1] == "1m"}


def windows_closed(pipeline: Pipeline, config, cutoff_s: float) -> bool:
    expected, got = minute_windows(pipeline, config, cutoff_s)
    return set(expected) <= set(got)


def hostile_head() -> dict[str, bytes]:
    """One payload of each class that once stalled a partition or emptied its windows."""
    day_ahead = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    return {
        "deep nesting": b'{"text": "deep", "vendor": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        "huge integer": b'{"text": "big", "n": ' + b"9" * 20_000 + b"}",
        "year 9999": json.dumps(
            {"id": "y9999", "text": "far ahead", "tickers": ["YFAR"], "published_at": "9999-12-31T23:59:59Z"}
        ).encode(),
        "a day ahead": json.dumps(
            {"id": "ahead", "text": "Profit rose", "tickers": ["AHEAD"], "published_at": day_ahead}
        ).encode(),
        "too large once validated": json.dumps({"id": "huge", "text": "ok", "vendor": "x" * 950_000}).encode(),
    }


def test_hostile_payloads_at_the_head_of_a_partition_stall_nothing_and_leave_windows_exact(
    local_stack, tiny_bundle, tmp_path, unique
):
    pipeline = Pipeline(
        name=f"h{unique}",
        bundle=tiny_bundle,
        workdir=tmp_path,
        partitions=1,  # one partition: the hostile payloads are at the head of everything that follows
        extra_env={
            "FINSENT_UNKNOWN_FIELDS": "keep",
            "FINSENT_WINDOW_TUMBLING_S": "60",
            "FINSENT_WINDOW_LATENESS_S": "20",
            "FINSENT_WINDOW_IDLE_S": "3",
        },
    )
    now = datetime.now(UTC)
    normal = [
        {
            "id": f"n-{i}",
            "text": f"{'Profit rose' if i % 3 else 'Sales fell'} at unit {i}",
            "tickers": [["AAPL", "MSFT", "NOK"][i % 3]],
            "published_at": (now - timedelta(minutes=30) + timedelta(seconds=8 * i)).isoformat(),
        }
        for i in range(200)
    ]
    worker = pipeline.start_worker()
    try:
        head = hostile_head()
        pipeline.produce(list(head.values()) + [json.dumps(m).encode() for m in normal])
        ids = pipeline.wait_indexed(202, timeout_s=120)
        assert sorted(ids) == sorted([m["id"] for m in normal] + ["y9999", "ahead"])
        letters = pipeline.read_topic("FINSENT_TOPIC_DEADLETTER", 3)
        assert sorted(letter["reason"] for letter in letters) == ["invalid_json", "invalid_json", "too_large"]
        assert all(len(json.dumps(letter)) < 100_000 for letter in letters)
        scored = {r["id"]: r for r in pipeline.read_topic("FINSENT_TOPIC_SCORED", 202)}
        assert scored["ahead"]["clock_skew_s"] > 86_000 and scored["n-0"]["clock_skew_s"] is None
        assert worker.metric("finsent_event_time_out_of_bounds_total", bound="future") == 2

        # Every window of the normal traffic equals a recomputation: the future-dated records moved
        # no stream time and opened no window.
        config = windows.WindowConfig.from_seconds(60, 900, 60, lateness_s=20)
        cutoff = (now - timedelta(minutes=4)).timestamp()
        wait_for(lambda: windows_closed(pipeline, config, cutoff), 120, "the normal traffic's windows")
        expected, got = minute_windows(pipeline, config, cutoff)
        assert expected and {k: v["messages"] for k, v in expected.items()} == {k: got[k]["messages"] for k in expected}
        assert not {k for k in got if k[0] in ("YFAR", "AHEAD")}
        assert sum(a["late_records"] for a in got.values()) == 0
        assert worker.process.poll() is None, "the worker died"
    finally:
        pipeline.stop_all()


def test_transactional_producers_upstream_committed_read_aborted_skipped_and_nothing_stalls(
    local_stack, tiny_bundle, tmp_path, unique
):
    """A transactional producer leaves a marker after each transaction: offsets no consumer
    receives. Committed transactions are scored, aborted ones never; markers (one last, at the end
    of each partition) stall no partition, no commit and no window."""
    pipeline = Pipeline(
        name=f"x{unique}",
        bundle=tiny_bundle,
        workdir=tmp_path,
        partitions=2,
        extra_env={
            "FINSENT_WINDOW_TUMBLING_S": "60",
            "FINSENT_WINDOW_LATENESS_S": "20",
            "FINSENT_WINDOW_IDLE_S": "3",
        },
    )
    ensure_topics(pipeline.settings)
    now = datetime.now(UTC)
    producer = kafka_producer(pipeline.settings, transactional_id=f"tx-{unique}")
    producer.init_transactions()
    worker = pipeline.start_worker()
    committed, aborted = [], []
    try:
        for t in range(8):
            ids = [f"tx{t}-{i}" for i in range(25)]
            producer.begin_transaction()
            for n, message_id in enumerate(ids):
                at = now - timedelta(minutes=20) + timedelta(seconds=2 * (25 * t + n))
                message = {
                    "id": message_id,
                    "text": f"Profit rose {n} % in round {t}",
                    "tickers": [["AAPL", "NOK"][n % 2]],
                }
                producer.send(
                    pipeline.env["FINSENT_TOPIC_RAW"], json.dumps({**message, "published_at": at.isoformat()}).encode()
                )
            if t % 3 == 2:
                producer.abort_transaction()
                aborted += ids
            else:  # the last transaction commits: each partition ends on a commit marker
                producer.commit_transaction()
                committed += ids
        producer.close()

        assert sorted(pipeline.wait_indexed(len(committed))) == sorted(committed)
        # The group commits past every marker, so nothing upstream looks pending any more.
        progress = GroupProgress(pipeline.settings, pipeline.upstream_topics())
        try:
            wait_for(lambda: not progress.lagging(), 60, "the group's offsets to pass the transaction markers")
        finally:
            progress.close()
        config = windows.WindowConfig.from_seconds(60, 900, 60, lateness_s=20)
        cutoff = (now - timedelta(minutes=3)).timestamp()
        wait_for(lambda: windows_closed(pipeline, config, cutoff), 120, "every window before the cutoff")
        expected, got = minute_windows(pipeline, config, cutoff)
        assert expected and {k: v["messages"] for k, v in expected.items()} == {k: got[k]["messages"] for k in expected}
        assert sorted(pipeline.indexed_ids()) == sorted(committed)  # no aborted record, even later
        assert worker.metric("finsent_messages_total", outcome="scored") == len(committed)
        assert worker.metric("finsent_messages_total", outcome="dead_letter") == 0
    finally:
        pipeline.stop_all()


def test_dedup_entries_expire_after_the_horizon_so_the_store_stays_bounded(local_stack, tiny_bundle, tmp_path, unique):
    pipeline = Pipeline(
        name=f"e{unique}", bundle=tiny_bundle, workdir=tmp_path, extra_env={"FINSENT_DEDUP_HORIZON_S": "5"}
    )

    def wave(name: str, n: int) -> list[bytes]:
        return [json.dumps({"id": f"{name}-{i}", "text": f"Unit {i} of wave {name} grew"}).encode() for i in range(n)]

    worker = pipeline.start_worker()
    try:
        pipeline.produce(wave("a", 400))
        pipeline.wait_indexed(400)
        wait_for(lambda: worker.metric("finsent_dedup_entries") == 400, 30, "the first wave's entries")
        time.sleep(6)  # past the horizon
        # A copy of a first-wave text is new again; a copy within the horizon is still a duplicate.
        second = wave("b", 400) + [
            json.dumps({"id": "again", "text": "Unit 7 of wave a grew"}).encode(),
            json.dumps({"id": "copy", "text": "Unit 3 of wave b grew"}).encode(),
        ]
        pipeline.produce(second)
        pipeline.wait_indexed(802)
        wait_for(
            lambda: worker.metric("finsent_dedup_expired_total", reason="horizon") >= 400,
            30,
            "the first wave to expire",
        )
        assert worker.metric("finsent_dedup_entries") <= 401  # the second wave (and "again") only
        scored = {r["id"]: r for r in pipeline.read_topic("FINSENT_TOPIC_SCORED", 802)}
        assert scored["again"]["duplicate_of"] is None
        # "b-3" and "copy" travel through different raw partitions, so either may reach the
        # dedup stage first: exactly one of them is marked, as a copy of the other.
        marks = {scored["b-3"]["duplicate_of"], scored["copy"]["duplicate_of"]}
        assert marks in ({None, "b-3"}, {None, "copy"}), marks
    finally:
        pipeline.stop_all()
