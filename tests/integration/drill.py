"""The fault drill: a long labelled stream through the real broker and Elasticsearch while the
worker is SIGKILLed and restarted at random points, the broker is restarted once and
Elasticsearch is stopped for 30 s. Afterwards every good message must be in Elasticsearch
exactly once, every bad one in the dead-letter topic, window aggregates must equal a batch
recomputation and no alert episode may be repeated; exactly-once (the drill's default), a
read_committed consumer must see no record twice on any output topic.

Full drill (about 10 minutes here): ``make drill`` or
``python -m tests.integration.drill --messages 20000 --kills 4``. CI runs a short form
(tests/integration/test_fault_drill.py). Bounded: every wait has a timeout.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pipeline import stack
from pipeline.admin import ensure_topics
from pipeline.config import PHRASEBANK_ALL

from .harness import WINDOW_CONFIG, WINDOW_ENV, Pipeline, texts_by_prediction

BASE = datetime(2024, 7, 1, 8, 0, tzinfo=UTC)
TICKERS = ["AAPL", "MSFT", "NOK", "TSLA", "AMZN", "NVDA", "SAP", "ASML"]
RULES = """
rules:
  - {name: neg-burst, kind: negative_share, window: 1m, threshold: 0.6, min_messages: 5, severity: page,
     resolve_after: 2}
"""
COMMITTED = "read_committed"  # as a downstream consumer of finsent's outputs reads
PER_MINUTE = 48  # 6 per ticker and minute of event time


@dataclass
class DrillResult:
    sent_good: int
    sent_bad: int
    indexed: int = 0
    scored_on_topic: int = 0  # distinct ids on the scored topic (read_committed)
    dead_letters: int = 0  # records on the dead-letter topic (a redelivery may repeat one)
    dead_lettered_bad: int = 0  # distinct bad inputs found there
    windows_compared: int = 0
    windows_equal: int = 0
    over_counted_windows: int = 0
    late_records: int = 0
    unequal: list = field(default_factory=list)  # (topic, window, start, streamed, recomputed) messages
    alert_episodes: dict = field(default_factory=dict)  # (rule, topic, start) -> statuses seen in ES
    alert_topic_repeats: int = 0  # extra copies of an episode's firing/resolved record on the topic
    guarantee: str = "exactly_once"
    twice: dict = field(default_factory=dict)  # output topic -> records seen more than once (read_committed)
    events: list = field(default_factory=list)
    seconds: float = 0.0

    def lines(self) -> list[str]:
        return [
            f"good messages sent {self.sent_good}, in Elasticsearch {self.indexed}, on the scored topic "
            f"{self.scored_on_topic} distinct ids",
            f"bad messages sent {self.sent_bad}, dead-lettered {self.dead_lettered_bad} distinct "
            f"({self.dead_letters} records on the topic)",
            f"windows equal to the recomputation {self.windows_equal}/{self.windows_compared}, over-counted "
            f"{self.over_counted_windows}, late records {self.late_records}; first unequal (topic, window, "
            f"start, streamed, recomputed messages): {self.unequal[:5]}",
            f"alert episodes {len(self.alert_episodes)}: "
            + ", ".join(f"{k[0]}/{k[1]}@{k[2]} {'+'.join(v)}" for k, v in sorted(self.alert_episodes.items()))
            + f"; repeated alert records on the topic {self.alert_topic_repeats}",
            f"{self.guarantee}: records twice on each output topic (read_committed): "
            + ", ".join(f"{topic} {n}" for topic, n in self.twice.items()),
            "faults: " + "; ".join(self.events),
            f"wall time {self.seconds:.0f} s",
        ]


def scripted(n_good: int, negative: list[str], positive: list[str], bad_every: int, seed: int):
    """(payloads in send order, good count, bad count). Event time runs PER_MINUTE messages a
    minute; NOK turns negative for minutes 10-12 of every 60 (one episode per hour of stream)."""
    rng = random.Random(seed)
    payloads: list[bytes] = []
    good = bad = 0
    for i in range(n_good):
        minute, k = divmod(i, PER_MINUTE)
        ticker = TICKERS[k % len(TICKERS)]
        burst = ticker == "NOK" and 10 <= minute % 60 <= 12
        pool = negative if burst else positive
        at = BASE + timedelta(seconds=minute * 60 + k * 60 / PER_MINUTE)
        payloads.append(
            json.dumps(
                {
                    "id": f"d-{i}",
                    "text": pool[rng.randrange(len(pool))],
                    "tickers": [ticker],
                    "published_at": at.isoformat().replace("+00:00", "Z"),
                }
            ).encode()
        )
        good += 1
        if i % bad_every == bad_every - 1:
            payloads.append(
                rng.choice(
                    [
                        f"{{not json {i}".encode(),
                        json.dumps({"id": f"bad-{i}", "text": ""}).encode(),
                        json.dumps({"id": f"bad-{i}", "text": i}).encode(),
                    ]
                )
            )
            bad += 1
    return payloads, good, bad


def run_drill(
    stack_home: Path,
    bundle: Path,
    phrasebank: str,
    workdir: Path,
    messages: int = 20_000,
    rate: float = 150.0,
    kills: int = 3,
    es_outage_s: float = 30.0,
    broker_outage_s: float = 0.0,
    seed: int = 1,
    guarantee: str = "exactly_once",
    log=print,
) -> DrillResult:
    started = time.monotonic()
    rng = random.Random(seed)
    rules = workdir / "rules.yml"
    rules.write_text(RULES)
    pipeline = Pipeline(
        name=f"drill{uuid.uuid4().hex[:8]}",
        bundle=bundle,
        workdir=workdir,
        partitions=3,
        extra_env={**WINDOW_ENV, "FINSENT_ALERT_RULES": str(rules), "FINSENT_PROCESSING_GUARANTEE": guarantee},
    )
    ensure_topics(pipeline.settings)  # before the producer, which would auto-create one partition
    negative, positive = texts_by_prediction(bundle, phrasebank)
    payloads, n_good, n_bad = scripted(messages, negative, positive, bad_every=50, seed=seed)
    # Sentinels far ahead in event time close every window of the stream.
    end = BASE + timedelta(minutes=messages // PER_MINUTE + 30)
    payloads += [
        json.dumps(
            {
                "id": f"end-{t}",
                "text": positive[0],
                "tickers": [t],
                "published_at": end.isoformat().replace("+00:00", "Z"),
            }
        ).encode()
        for t in TICKERS
    ]
    n_good += len(TICKERS)
    result = DrillResult(sent_good=n_good, sent_bad=n_bad, guarantee=guarantee)

    def event(text: str) -> None:
        result.events.append(f"{time.monotonic() - started:.0f}s {text}")
        log(f"[drill] {result.events[-1]}")

    # The producer runs beside the faults at a steady rate, retrying through the broker restart.
    sent = [0]

    def produce() -> None:
        from kafka import KafkaProducer

        producer = KafkaProducer(
            **pipeline.settings.kafka_client_kwargs(),
            acks="all",
            linger_ms=20,
            retries=2_147_483_647,
            delivery_timeout_ms=600_000,
            max_in_flight_requests_per_connection=1,
        )
        began = time.monotonic()
        for i, payload in enumerate(payloads):
            delay = began + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            producer.send(pipeline.env["FINSENT_TOPIC_RAW"], value=payload)
            sent[0] = i + 1
        producer.flush(timeout=600)
        producer.close()

    workers = [pipeline.start_worker(0)]
    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    duration = len(payloads) / rate
    # Faults at random points of the stream, at least 8 s apart, in a random order.
    faults = ["kill"] * kills + ["broker", "elasticsearch"]
    rng.shuffle(faults)
    slots = sorted(rng.uniform(0.1, 0.9) * duration for _ in faults)
    slots = [max(s, 0.1 * duration + 8 * i) for i, s in enumerate(slots)]

    def outage() -> None:  # in its own thread: other faults may land while Elasticsearch is down
        stack.down(stack_home, ["elasticsearch"])
        event(f"Elasticsearch stopped for {es_outage_s:.0f} s")
        time.sleep(es_outage_s)
        stack.up(stack_home, ["elasticsearch"])
        event("Elasticsearch up again")

    es_thread = threading.Thread(target=outage, daemon=True)
    try:
        for at, fault in zip(slots, faults, strict=False):
            time.sleep(max(0.0, started + at - time.monotonic()))
            if fault == "kill":
                workers[-1].kill()
                event(f"SIGKILL worker {len(workers) - 1} after {sent[0]} sent")
                workers.append(pipeline.start_worker(len(workers)))
                event(f"worker {len(workers) - 1} up")
            elif fault == "broker":
                stack.down(stack_home, ["kafka"])
                event(f"broker stopped after {sent[0]} sent")
                time.sleep(broker_outage_s)
                stack.up(stack_home, ["kafka"])
                event("broker up again")
            else:
                es_thread.start()
        es_thread.join(timeout=es_outage_s + 300)
        producer.join(timeout=duration + 600)
        event(f"all {sent[0]} sent")
        ids = pipeline.wait_indexed(n_good, timeout_s=max(300, n_good / 20))
        result.indexed = len(ids)

        letters = pipeline.read_topic("FINSENT_TOPIC_DEADLETTER", n_bad, timeout_s=120, isolation_level=COMMITTED)
        result.dead_letters = len(letters)
        result.dead_lettered_bad = len({d["payload"] for d in letters})  # each bad payload is unique

        cutoff = end.timestamp() - 30 * 60
        expected, got = pipeline.wait_windows(WINDOW_CONFIG, cutoff, timeout_s=300, interval_s=5)
        result.windows_compared = len(expected)
        for key, row in expected.items():
            aggregate = got.get(key)
            if aggregate is None:
                continue
            same = (
                aggregate["messages"] == row["messages"]
                and abs(aggregate["sentiment_mean"] - row["sum"] / row["messages"]) < 1e-6
            )
            result.windows_equal += same
            if not same:
                start = datetime.fromtimestamp(key[2], UTC).strftime("%H:%M")
                result.unequal.append((key[0], key[1], start, aggregate["messages"], row["messages"]))
            result.over_counted_windows += aggregate["messages"] > row["messages"]
        result.late_records = sum(a["late_records"] for a in got.values() if a["window"] == "1m")

        for alert in pipeline.documents("alerts"):
            result.alert_episodes[(alert["rule"], alert["topic"], alert["window_start"])] = [alert["status"]]
        alerts = pipeline.read_topic(
            "FINSENT_TOPIC_ALERTS", 2 * len(result.alert_episodes), timeout_s=60, isolation_level=COMMITTED
        )
        on_topic = Counter((a["id"], a["status"]) for a in alerts)
        result.alert_topic_repeats = sum(n - 1 for n in on_topic.values())
        scored = pipeline.read_topic("FINSENT_TOPIC_SCORED", n_good, timeout_s=300, isolation_level=COMMITTED)
        result.scored_on_topic = len({r["id"] for r in scored})
        aggregates = pipeline.read_topic("FINSENT_TOPIC_AGGREGATES", len(got), timeout_s=120, isolation_level=COMMITTED)
        result.twice = {
            "scored": _twice(r["id"] for r in scored),
            "deadletter": _twice(d["payload"] for d in letters),
            "aggregates": _twice(a["id"] for a in aggregates),
            "alerts": result.alert_topic_repeats,
        }
    finally:
        pipeline.stop_all()
        result.seconds = time.monotonic() - started
    return result


def _twice(keys) -> int:
    return sum(n - 1 for n in Counter(keys).values())


def expected_episodes(messages: int) -> int:
    """NOK's burst recurs every hour of event time (minutes 10-12); it resolves after two calm
    minutes. Streams should not end inside a burst."""
    minutes = messages // PER_MINUTE
    return sum(1 for hour_start in range(0, minutes, 60) if hour_start + 16 <= minutes)


def main(argv: list[str] | None = None) -> int:
    from pipeline.config import load_settings

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rate", type=float, default=150.0, help="messages per second sent")
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument(
        "--broker-outage-s", type=float, default=0.0, help="seconds the broker stays down before its restart"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--bundle", type=Path, required=True, help="model bundle the workers use")
    parser.add_argument("--phrasebank", default=str(PHRASEBANK_ALL))
    parser.add_argument("--guarantee", choices=["exactly_once", "at_least_once"], default="exactly_once")
    args = parser.parse_args(argv)
    home = load_settings().stack_home
    stack.up(home)
    workdir = Path(tempfile.mkdtemp(prefix="finsent-drill-"))
    try:
        result = run_drill(
            home,
            args.bundle,
            args.phrasebank,
            workdir,
            args.messages,
            args.rate,
            args.kills,
            broker_outage_s=args.broker_outage_s,
            seed=args.seed,
            guarantee=args.guarantee,
        )
    except BaseException:
        print(f"the workers' logs stay in {workdir}")
        raise
    print("\n".join(result.lines()))
    ok = (
        result.indexed == result.scored_on_topic == result.sent_good
        and result.dead_lettered_bad == result.sent_bad
        and result.windows_equal == result.windows_compared
        and len(result.alert_episodes) == expected_episodes(args.messages)
        and all(v == ["resolved"] for v in result.alert_episodes.values())
        and (args.guarantee == "at_least_once" or not any(result.twice.values()))
    )
    if ok:
        shutil.rmtree(workdir, ignore_errors=True)
    print("drill passed" if ok else f"drill FAILED; the workers' logs stay in {workdir}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
