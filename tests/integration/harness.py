"""Drive real finsent workers against the real broker and Elasticsearch, with bounded waits."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from elasticsearch import Elasticsearch
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from pipeline import windows
from pipeline.bundle import open_bundle
from pipeline.classify import Classifier
from pipeline.config import Settings
from pipeline.schemas import LABELS

# Short windows for tests, and the same windows for recomputing them from the scored records.
WINDOW_ENV = {
    "FINSENT_WINDOW_TUMBLING_S": "60",
    "FINSENT_WINDOW_HOPPING_S": "300",
    "FINSENT_WINDOW_HOP_S": "60",
    "FINSENT_WINDOW_LATENESS_S": "20",
    "FINSENT_WINDOW_IDLE_S": "3",
}
WINDOW_CONFIG = windows.WindowConfig.from_seconds(60, 300, 60, lateness_s=20)


def render(url: str, profile, screenshot=None) -> str:
    """The page's DOM after its scripts ran (Chromium flags for a closed, sandbox-less machine);
    with ``screenshot``, also a full-width PNG of it there."""
    chromium = shutil.which("chromium")
    assert chromium, "chromium is not installed (deploy/local/setup.sh installs it)"
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=8000",
    ]
    if screenshot is not None:
        shot = subprocess.run(
            [chromium, *flags, f"--screenshot={screenshot}", "--window-size=1200,4000", "--hide-scrollbars", url],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert shot.returncode == 0, shot.stderr[-2000:]
    result = subprocess.run([chromium, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def finsent(env: dict, *args: str) -> subprocess.CompletedProcess:
    """Runs the finsent command with ``env`` over this process's environment."""
    # A wide terminal keeps rich from folding the messages the tests look for.
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args],
        env={**os.environ, "COLUMNS": "300", **env},
        capture_output=True,
        text=True,
        timeout=180,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout_s: float, what: str, interval_s: float = 0.5, diagnosis=None):
    """Polls ``predicate`` until it is truthy; on timeout the error quotes ``diagnosis()`` if given."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval_s)
    detail = f"\n{diagnosis()}" if diagnosis is not None else ""
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what} (last: {last!r}){detail}")


def _epoch(timestamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


def texts_by_prediction(bundle: Path, phrasebank: str) -> tuple[list[str], list[str]]:
    """(texts the model calls negative, texts it calls positive): tests script sentiment through
    the model's own predictions, so a stream means what the test says it means."""
    lines = [line.rsplit("@", 1)[0] for line in Path(phrasebank).read_text(encoding="latin-1").splitlines()][:800]
    predicted = Classifier(open_bundle(bundle)).predict_proba(lines).argmax(axis=1)
    negative = [t for t, p in zip(lines, predicted, strict=False) if LABELS[p] == "negative"]
    positive = [t for t, p in zip(lines, predicted, strict=False) if LABELS[p] == "positive"]
    assert len(negative) >= 30 and len(positive) >= 30, "the tiny model should predict every label"
    return negative, positive


@dataclass
class Pipeline:
    """One isolated deployment: its own topics, consumer group, index prefix and state."""

    name: str
    bundle: Path
    workdir: Path
    partitions: int = 3
    extra_env: dict = field(default_factory=dict)
    workers: list = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        return {
            "FINSENT_CONSUMER_GROUP": f"grp-{self.name}",
            "FINSENT_TOPIC_RAW": f"{self.name}.raw",
            "FINSENT_TOPIC_SCORED": f"{self.name}.scored",
            "FINSENT_TOPIC_DEADLETTER": f"{self.name}.deadletter",
            "FINSENT_TOPIC_AGGREGATES": f"{self.name}.aggregates",
            "FINSENT_TOPIC_ALERTS": f"{self.name}.alerts",
            "FINSENT_TOPIC_SHADOW": f"{self.name}.shadow",
            "FINSENT_TOPIC_PARTITIONS": str(self.partitions),
            "FINSENT_ES_INDEX_PREFIX": self.name,
            "FINSENT_MODEL_BUNDLE": str(self.bundle),
            **self.extra_env,
        }

    @property
    def settings(self) -> Settings:
        values = {}
        for key, value in self.env.items():
            name = key.removeprefix("FINSENT_").lower()
            if name.endswith("_file") and name != "config_file":  # a secret mounted as a file
                name, value = name.removesuffix("_file"), Path(value).read_text().strip()
            values[name] = value
        return Settings(**values)

    def start_worker(self, index: int = 0, command: str = "worker") -> Worker:
        worker = Worker(self, index, command)
        worker.start()
        self.workers.append(worker)
        return worker

    def start_shadow(self, index: int = 100) -> Worker:
        """A shadow worker (`finsent shadow`) with FINSENT_SHADOW_BUNDLE from ``extra_env``."""
        return self.start_worker(index, "shadow")

    def stop_all(self) -> None:
        for worker in self.workers:
            worker.stop()

    # --- Kafka and Elasticsearch views ------------------------------------------------------------
    def produce(self, payloads: list[bytes], keys: list[bytes | None] | None = None) -> None:
        producer = KafkaProducer(**self.settings.kafka_client_kwargs(), acks="all", linger_ms=5)
        for i, payload in enumerate(payloads):
            producer.send(self.env["FINSENT_TOPIC_RAW"], value=payload, key=keys[i] if keys else None)
        producer.flush(timeout=60)
        producer.close()

    def read_topic(
        self, topic_env: str, expected: int, timeout_s: float = 60, isolation_level: str = "read_uncommitted"
    ) -> list[dict]:
        """Every record of a topic (from the start), stopping once ``expected`` are read and
        the topic has been quiet for 2 s (so extras would be seen), or at the timeout."""
        topic = self.env[topic_env]
        consumer = KafkaConsumer(
            **self.settings.kafka_client_kwargs(),
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            consumer_timeout_ms=2000,
            isolation_level=isolation_level,
        )
        wait_for(lambda: consumer.partitions_for_topic(topic), 30, f"topic {topic}")
        consumer.assign([TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)])
        records: list[dict] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            batch = list(consumer)  # ends after 2 s without records
            records += [json.loads(r.value) for r in batch]
            if len(records) >= expected and not batch:
                break
        consumer.close()
        return records

    def assert_once_each(self, topic_env: str, expected_ids, timeout_s: float = 120) -> list[dict]:
        """Every expected id on the topic exactly once for a read_committed reader, and nothing
        else (Elasticsearch cannot show a repeat: a repeated ``_id`` overwrites)."""
        expected_ids = set(expected_ids)
        records = self.read_topic(topic_env, len(expected_ids), timeout_s, isolation_level="read_committed")
        counts = Counter(r["id"] for r in records)
        repeated = sorted((n, i) for i, n in counts.items() if n > 1)[-5:]
        assert not repeated, f"{len(repeated)}+ ids repeated on {self.env[topic_env]}, e.g. {repeated}"
        missing, extra = expected_ids - set(counts), set(counts) - expected_ids
        assert not missing and not extra, f"missing {sorted(missing)[:5]} ({len(missing)}), extra {sorted(extra)[:5]}"
        return records

    def es(self) -> Elasticsearch:
        return Elasticsearch(**self.settings.es_client_kwargs(), request_timeout=30)

    def documents(self, suffix: str = "scored") -> list[dict]:
        """Every document of one of the pipeline's indices (scored, aggregates, alerts)."""
        from elasticsearch.helpers import scan

        es, index = self.es(), f"{self.name}-{suffix}"
        if not es.indices.exists(index=index):
            return []
        es.indices.refresh(index=index)
        return [hit["_source"] for hit in scan(es, index=index, query={"query": {"match_all": {}}}, size=2000)]

    def window_comparison(self, config, cutoff_s: float) -> tuple[dict, dict]:
        """(a batch recomputation of every window starting before ``cutoff_s`` from the scored
        records in Elasticsearch, each ticker by its entity sentiment and each topic by the
        message's, and the streamed aggregates of those windows), both keyed by (name, window, start)."""
        rows = []
        for r in self.documents("scored"):
            if r.get("clock_skew_s") is not None:  # a time from a source clock far ahead is not windowed
                continue
            # A ticker by its own (entity) sentiment, a topic by the message's.
            own = {e["ticker"]: (e["sentiment_score"], e["label"]) for e in r.get("entities", [])}
            names = {t: own.get(t, (r["sentiment_score"], r["label"])) for t in r["tickers"]}
            names |= {t: (r["sentiment_score"], r["label"]) for t in r["topics"] if t not in names}
            rows += [(name, _epoch(r["published_at"]), score, label) for name, (score, label) in names.items()]
        expected = {k: v for k, v in windows.recompute(config, rows).items() if k[2] < cutoff_s}
        got = {(a["topic"], a["window"], _epoch(a["start"])): a for a in self.documents("aggregates")}
        return expected, {k: v for k, v in got.items() if k[2] < cutoff_s}

    def wait_windows(self, config, cutoff_s: float, timeout_s: float = 120, interval_s: float = 0.5):
        """``window_comparison`` once every recomputed window has its streamed aggregate."""

        def complete():
            expected, got = self.window_comparison(config, cutoff_s)
            return (expected, got) if set(expected) <= set(got) else None

        return wait_for(
            complete,
            timeout_s,
            "every window to be aggregated",
            interval_s=interval_s,
            diagnosis=lambda: self.missing_windows(*self.window_comparison(config, cutoff_s)),
        )

    def missing_windows(self, expected: dict, got: dict) -> str:
        """A failed wait for aggregates: which windows are missing, and the worker's view."""
        missing = sorted(set(expected) - set(got), key=lambda k: (k[2], k[0], k[1]))
        first = [f"{topic} {window} {datetime.fromtimestamp(start, UTC):%H:%M}" for topic, window, start in missing[:8]]
        return f"{len(missing)} of {len(expected)} windows missing, first: {first}\n{self.diagnosis()}"

    def indexed_ids(self) -> list[str]:
        from elasticsearch.helpers import scan

        es, index = self.es(), f"{self.name}-scored"
        if not es.indices.exists(index=index):
            return []
        es.indices.refresh(index=index)
        return [
            hit["_id"] for hit in scan(es, index=index, query={"query": {"match_all": {}}, "_source": False}, size=5000)
        ]

    def indexed_count(self) -> int:
        es, index = self.es(), f"{self.name}-scored"
        if not es.indices.exists(index=index):
            return 0
        es.indices.refresh(index=index)
        return es.count(index=index)["count"]

    def wait_indexed(self, expected: int, timeout_s: float = 120) -> list[str]:
        try:
            wait_for(
                lambda: self.indexed_count() >= expected,
                timeout_s,
                f"{expected} documents in Elasticsearch",
                interval_s=1,
            )
        except AssertionError as error:
            raise AssertionError(f"{error}\n{self.diagnosis()}") from None
        return self.indexed_ids()

    def upstream_topics(self) -> list[str]:
        """The raw topic and the group's internal by-fingerprint topic."""
        raw = self.env["FINSENT_TOPIC_RAW"]
        return [raw, f"{self.env['FINSENT_CONSUMER_GROUP']}.{raw}.by-fingerprint"]

    def diagnosis(self) -> str:
        """What a failed wait needs to be understood: the group's committed offsets against each
        partition's end, and the workers' warnings."""
        from pipeline.admin import ReadableProbe, group_state

        topics = [*self.upstream_topics(), f"{self.env['FINSENT_CONSUMER_GROUP']}.windows"]
        lines = [f"indexed: {self.indexed_count()}"]
        probe = ReadableProbe(self.settings, timeout_s=10.0)
        try:
            for s in group_state(self.settings, topics):
                behind = s.committed is not None and s.committed < s.end
                # whether the unread range holds a record at all, or only markers and aborted writes
                readable = probe.readable(s.topic, s.partition, s.committed, s.end) if behind else "-"
                lines.append(f"{s.topic}[{s.partition}] committed {s.committed} end {s.end} readable {readable}")
        finally:
            probe.close()
        for worker in self.workers:
            lines += [
                f"{worker.log.name} metric: {line}"
                for line in (worker.metrics_text() or "").splitlines()
                if line.startswith(
                    (
                        "finsent_messages_total",
                        "finsent_offset_gaps_total",
                        "finsent_consumer_lag_messages",
                        "finsent_es_backpressure",
                        "finsent_window_stream_time_seconds",
                        "finsent_windows_held_by_upstream",
                    )
                )
            ]
        for worker in self.workers:
            text = worker.log.read_text(errors="replace") if worker.log.exists() else ""
            lines += [
                f"{worker.log.name}: {line}" for line in text.splitlines() if re.search(r"WARNING|ERROR|skipped", line)
            ][-20:]
        return "\n".join(lines)


class Worker:
    def __init__(self, pipeline: Pipeline, index: int, command: str = "worker"):
        self.pipeline, self.command = pipeline, command
        self.port = free_port()
        self.state = pipeline.workdir / f"state-{index}"
        self.log = pipeline.workdir / f"worker-{index}.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        env = {
            **os.environ,
            **self.pipeline.env,
            "FINSENT_WEB_PORT": str(self.port),
            "FINSENT_STATE_DIR": str(self.state),
        }
        with open(self.log, "ab") as log:
            level = os.environ.get("FINSENT_TEST_WORKER_LOGLEVEL", "warning")
            self.process = subprocess.Popen(
                [sys.executable, "-m", "pipeline.cli", self.command, "--loglevel", level],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for(lambda: self.metrics_text() is not None or self._died(), 180, f"worker on port {self.port}")
        assert self.process.poll() is None, f"worker exited:\n{self.log.read_text()[-3000:]}"

    def _died(self) -> bool:
        return self.process is not None and self.process.poll() is not None

    def metrics_text(self) -> str | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2) as response:
                return response.read().decode()
        except OSError:
            return None

    def metric(self, name: str, **labels) -> float:
        """A sample's value (0 when absent); labels match in any order."""
        text = self.metrics_text() or ""
        for line in text.splitlines():
            series, _, value = line.rpartition(" ")
            metric, _, label_text = series.partition("{")
            found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', label_text))
            if metric == name and found == {k: str(v) for k, v in labels.items()}:
                return float(value)
        return 0.0

    def metric_samples(self, name: str) -> dict[tuple, float]:
        """Every sample of a metric: label values (sorted by name) -> value."""
        samples = {}
        for line in (self.metrics_text() or "").splitlines():
            series, _, value = line.rpartition(" ")
            metric, _, label_text = series.partition("{")
            if metric == name:
                samples[tuple(sorted(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', label_text)))] = float(value)
        return samples

    def readyz(self) -> tuple[int, dict] | None:
        """(HTTP status, body) of the worker's /readyz, None when it does not answer."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=2) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())
        except OSError:
            return None

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
