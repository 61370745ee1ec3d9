"""Windows under the traffic users send, through one real worker, the broker and Elasticsearch.

    python benchmarks/traffic.py [--bundle BUNDLE] [--scenarios keyed flood]

keyed: live traffic (published_at = now) from 12 names, three runs one after another on fresh
topics: producers without keys (the baseline), every message keyed alike (one raw partition
carries all), and keyed by desk (two keys: some raw partitions carry some names, one none).
Reports how long after its end each 1-minute window came out (its Kafka timestamp on the
aggregates topic), past the start-up bound of idle + hold.

scale: what KEDA does to a group, on one machine: 12 partitions, steady load, 1 worker, then 3
(two join), then 1 again (two stop with SIGTERM). Reports produce -> scored latency (Kafka
timestamp to processed_at) per phase, p99 around each scale step, every message on the scored
topic exactly once (read_committed) and every 1-minute window equal to its recomputation.

overload: a producer keyed by name over 2,000 names at --overload-rate (about twice one worker's
sustained rate here) for --overload-seconds, then nothing. Reports the worker's RSS growth while
the backlog builds and drains, how long the drain takes, and every message on the scored topic
exactly once (read_committed) and in Elasticsearch.

steady: a producer keyed by name over 2,000 names at --rate (about half of sustained) for
--steady-seconds, exactly-once. Reports what an operator's log shows meanwhile (ERROR and WARNING
lines by logger, faust's timer complaints), how late the event loop woke (its histogram), and the
produce -> scored latency.

flood: 8 real names at 30 msg/s throughout; after a warm-up, 20,000 distinct junk names at
100 msg/s for --flood-seconds, during which 4 more real names appear for the first time. Reports
the worker's RSS growth, the finsent_* series count, and for each real name its own windows and
how many of its messages they counted.

Default bundle: the demo's quick model (trained once, cached). Writes JSON next to --out.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from pipeline import stack
from pipeline.config import DATA_DIR, load_settings
from pipeline.dedup import fingerprint_partition
from tests.integration.harness import Pipeline, wait_for

REAL = ["AAPL", "MSFT", "JPM", "NVDA", "TSLA", "AMZN", "META", "GOOGL"]
NEWCOMERS = ["IBM", "ORCL", "INTC", "CSCO"]
WINDOW_ENV = {"FINSENT_WINDOW_TUMBLING_S": "60", "FINSENT_WINDOW_HOPPING_S": "0", "FINSENT_WINDOW_LATENESS_S": "20"}
RULES = "rules:\n  - {name: negative-burst, kind: negative_share, window: 1m, threshold: 0.6, min_messages: 5}\n"


def bench_pipeline(prefix: str, args, partitions: int = 4, **env) -> Pipeline:
    """A pipeline of its own (topics, group, indices) with 1-minute windows and one rule on them."""
    workdir = Path(tempfile.mkdtemp(prefix="finsent-traffic-"))
    (workdir / "rules.yml").write_text(RULES)
    env = {**WINDOW_ENV, "FINSENT_ALERT_RULES": str(workdir / "rules.yml"), **env}
    return Pipeline(
        name=f"{prefix}{uuid.uuid4().hex[:6]}",
        bundle=args.bundle,
        workdir=workdir,
        partitions=partitions,
        extra_env=env,
    )


def now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def aggregates_with_times(pipeline: Pipeline) -> list[tuple[dict, float]]:
    topic = pipeline.env["FINSENT_TOPIC_AGGREGATES"]
    consumer = KafkaConsumer(
        **pipeline.settings.kafka_client_kwargs(),
        enable_auto_commit=False,
        consumer_timeout_ms=3000,
        isolation_level="read_committed",
    )
    try:
        consumer.assign([TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()])
        consumer.seek_to_beginning()
        return [(json.loads(r.value), r.timestamp / 1000) for r in consumer]
    finally:
        consumer.close()


def epoch(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


def series_count(worker) -> int:
    text = worker.metrics_text() or ""
    return sum(1 for line in text.splitlines() if line.startswith("finsent_"))


class Paced:
    """Sends ``make(n)`` -> (key, payload) at ``rate`` msg/s until ``stop`` is set (bounded)."""

    def __init__(self, pipeline: Pipeline, rate: float, make, limit_s: float):
        self.pipeline, self.rate, self.make, self.limit_s = pipeline, rate, make, limit_s
        self.stop, self.sent = threading.Event(), 0
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        producer = KafkaProducer(**self.pipeline.settings.kafka_client_kwargs(), acks="all", linger_ms=5)
        topic, started = self.pipeline.env["FINSENT_TOPIC_RAW"], time.monotonic()
        while not self.stop.is_set() and time.monotonic() - started < self.limit_s:
            key, payload = self.make(self.sent)
            producer.send(topic, json.dumps(payload).encode(), key=key)
            self.sent += 1
            delay = started + self.sent / self.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        producer.flush(timeout=60)
        producer.close()


def keyed_run(args, keys_by_name) -> dict:
    hold, idle, lateness = args.hold, 10.0, 20.0
    env = {"FINSENT_WINDOW_UPSTREAM_HOLD_S": str(hold), "FINSENT_WINDOW_IDLE_S": str(idle)}
    pipeline = bench_pipeline("tk", args, **env)
    names = REAL + NEWCOMERS
    try:
        pipeline.start_worker()
        started = time.time()

        def make(n):
            name = names[n % len(names)]
            text = f"Note {n}: {name} trades in line with the market as desks rebalance"
            return keys_by_name(name), {"id": f"m{n}", "text": text, "tickers": [name], "published_at": now_iso()}

        paced = Paced(pipeline, args.rate, make, args.keyed_seconds + 5)
        paced.thread.start()
        paced.thread.join()
        ended = time.time()
        first_end = math.ceil((started + idle + hold) / 60) * 60 + 60
        last_end = math.floor((ended - lateness - idle - 10) / 60) * 60
        wanted = {(name, end) for name in names for end in range(first_end, last_end + 1, 60)}
        found: dict = {}

        def complete():
            for aggregate, at in aggregates_with_times(pipeline):
                key = (aggregate["topic"], epoch(aggregate["end"]))
                if aggregate["window"] == "1m" and key in wanted:
                    found[key] = at
            return set(found) == wanted

        try:
            wait_for(complete, 120, "every window", interval_s=3)
        except AssertionError:
            pass
        delays = sorted(at - key[1] for key, at in found.items())
        return {
            "messages": paced.sent,
            "rate_msgs_per_s": paced.sent / (ended - started),
            "windows_expected": len(wanted),
            "windows_out": len(found),
            "close_delay_s": {
                "median": statistics.median(delays) if delays else None,
                "max": max(delays) if delays else None,
            },
            "bound_s": lateness + idle + 5,
        }
    finally:
        pipeline.stop_all()


def keyed(args) -> dict:
    desks = {}
    for n in range(1000):  # two keys on different raw partitions
        desks.setdefault(fingerprint_partition(f"desk-{n}", 4), f"desk-{n}".encode())
    two = list(desks.values())[:2]
    runs = {
        "no_keys": lambda name: None,
        "one_key": lambda name: b"newswire",
        "by_desk": lambda name: two[0] if name in REAL[:6] else two[1],
    }
    results = {}
    for label, keys in runs.items():
        results[label] = keyed_run(args, keys)
        print(f"keyed/{label}: {json.dumps(results[label])}", flush=True)
    return results


def flood(args) -> dict:
    pipeline = bench_pipeline("tf", args)
    try:
        worker = pipeline.start_worker()
        newcomers_from = [0.0]

        def real(n):
            pool = REAL + (NEWCOMERS if newcomers_from[0] else [])
            name = pool[n % len(pool)]
            text = f"Desk {n}: {name} shares move with the sector"
            return None, {"id": f"r{n}", "text": text, "tickers": [name], "published_at": now_iso()}

        def junk(n):
            name = f"J{n % 20_000:05d}X"
            return None, {"id": f"j{n}", "text": f"Junk {n} about {name}", "tickers": [name], "published_at": now_iso()}

        steady = Paced(pipeline, 30, real, args.warmup_seconds + args.flood_seconds + 120)
        steady.thread.start()
        time.sleep(args.warmup_seconds)
        rss_before, series_before = worker.rss_mb(), series_count(worker)
        flooding = Paced(pipeline, 100, junk, args.flood_seconds)
        flooding.thread.start()
        time.sleep(args.flood_seconds / 4)
        newcomers_from[0] = time.time()  # the newcomers first appear a quarter into the flood
        peak_rss, peak_series = rss_before, series_before
        while flooding.thread.is_alive():
            peak_rss, peak_series = max(peak_rss, worker.rss_mb()), max(peak_series, series_count(worker))
            time.sleep(2)
        time.sleep(60)  # the last windows of the flood close
        steady.stop.set()
        steady.thread.join()
        peak_rss, peak_series = max(peak_rss, worker.rss_mb()), max(peak_series, series_count(worker))
        own = {name: [0, 0] for name in REAL + NEWCOMERS}  # windows, messages counted in them
        for aggregate, _at in aggregates_with_times(pipeline):
            if aggregate["window"] == "1m" and aggregate["topic"] in own:
                own[aggregate["topic"]][0] += 1
                own[aggregate["topic"]][1] += aggregate["messages"]
        sent_real = steady.sent
        return {
            "junk_messages": flooding.sent,
            "junk_rate_msgs_per_s": flooding.sent / args.flood_seconds,
            "real_messages": sent_real,
            "rss_before_mb": rss_before,
            "rss_peak_mb": peak_rss,
            "rss_growth_mb": peak_rss - rss_before,
            "finsent_series_before": series_before,
            "finsent_series_peak": peak_series,
            "evicted": worker.metric("finsent_window_names_evicted_total"),
            "own_windows": {name: {"windows": w, "messages": m} for name, (w, m) in own.items()},
        }
    finally:
        pipeline.stop_all()


def scale(args) -> dict:
    import numpy as np

    pipeline = bench_pipeline("ts", args, partitions=12)
    names = REAL + NEWCOMERS
    try:
        pipeline.start_worker(0)
        marks = {"start": time.time()}

        def make(n):
            name = names[n % len(names)]
            text = f"Wire {n}: {name} steady as volumes normalise"
            return None, {"id": f"s{n}", "text": text, "tickers": [name], "published_at": now_iso()}

        steady = Paced(pipeline, args.scale_rate, make, 3 * args.scale_phase_seconds + 60)
        steady.thread.start()
        time.sleep(args.scale_phase_seconds)
        marks["up"] = time.time()
        extra = [pipeline.start_worker(1), pipeline.start_worker(2)]
        time.sleep(args.scale_phase_seconds)
        marks["down"] = time.time()
        for worker in extra:
            worker.stop()
        time.sleep(args.scale_phase_seconds)
        steady.stop.set()
        steady.thread.join()
        marks["end"] = time.time()
        ids = [f"s{n}" for n in range(steady.sent)]
        pipeline.wait_indexed(len(ids), timeout_s=600)
        on_topic = [
            r["id"]
            for r in pipeline.read_topic(
                "FINSENT_TOPIC_SCORED", len(ids), timeout_s=300, isolation_level="read_committed"
            )
        ]
        from pipeline.windows import WindowConfig

        config = WindowConfig.from_seconds(60, 0, 60, lateness_s=20)
        cutoff = math.floor(marks["end"] / 60) * 60 - 60
        expected, got = pipeline.wait_windows(config, cutoff_s=cutoff, timeout_s=300, interval_s=5)
        wrong = [k for k, row in expected.items() if got[k]["messages"] != row["messages"]]
        docs = pipeline.documents("scored")
        at = np.array([epoch(d["processed_at"]) for d in docs])
        latency = np.array([d.get("kafka_latency_ms") or 0.0 for d in docs])

        def quantiles(lo: float, hi: float) -> dict:
            chosen = latency[(at >= lo) & (at < hi)]
            if not len(chosen):
                return {"messages": 0}
            return {
                "messages": int(len(chosen)),
                **{q: float(np.percentile(chosen, int(q[1:]))) for q in ("p50", "p99")},
            }

        step = args.scale_step_seconds
        return {
            "rate_msgs_per_s": args.scale_rate,
            "messages": steady.sent,
            "latency_ms": {
                "1 worker": quantiles(marks["start"] + 20, marks["up"]),
                "scale-up step (1 -> 3)": quantiles(marks["up"], marks["up"] + step),
                "3 workers": quantiles(marks["up"] + step, marks["down"]),
                "scale-down step (3 -> 1)": quantiles(marks["down"], marks["down"] + step),
                "1 worker again": quantiles(marks["down"] + step, marks["end"]),
            },
            "missing_on_scored_topic": len(set(ids) - set(on_topic)),
            "repeated_on_scored_topic": len(on_topic) - len(set(on_topic)),
            "windows_compared": len(expected),
            "windows_unequal": len(wrong),
            "late_records": sum(a["late_records"] for a in got.values()),
        }
    finally:
        pipeline.stop_all()


def overload(args) -> dict:
    pipeline = bench_pipeline("to", args)
    names = [f"N{i:04d}" for i in range(2000)]
    try:
        worker = pipeline.start_worker()
        time.sleep(10)  # settled: topics, tables, model
        rss_before = worker.rss_mb()

        def make(n):
            name = names[(n * 7919) % len(names)]
            text = f"Update {n}: {name} shares move as volumes pick up"
            return name.encode(), {"id": f"o{n}", "text": text, "tickers": [name], "published_at": now_iso()}

        paced = Paced(pipeline, args.overload_rate, make, args.overload_seconds)
        started = time.time()
        paced.thread.start()
        samples = []  # (seconds since start, RSS MB, scored so far)
        while paced.thread.is_alive():
            samples.append(
                (time.time() - started, worker.rss_mb(), worker.metric("finsent_messages_total", outcome="scored"))
            )
            time.sleep(2)
        sent_for = time.time() - started
        drained = None
        deadline = time.time() + 1200
        while time.time() < deadline:
            scored = worker.metric("finsent_messages_total", outcome="scored")
            samples.append((time.time() - started, worker.rss_mb(), scored))
            if scored >= paced.sent:
                drained = time.time() - started - sent_for
                break
            time.sleep(2)
        ids = [f"o{n}" for n in range(paced.sent)]
        pipeline.wait_indexed(len(ids), timeout_s=300)
        on_topic = [
            r["id"]
            for r in pipeline.read_topic(
                "FINSENT_TOPIC_SCORED", len(ids), timeout_s=300, isolation_level="read_committed"
            )
        ]
        indexed = pipeline.indexed_ids()
        return {
            "rate_sent_msgs_per_s": paced.sent / sent_for,
            "seconds_sent": sent_for,
            "messages": paced.sent,
            "scored_while_sending": samples[len([s for s in samples if s[0] <= sent_for]) - 1][2],
            "drain_seconds_after_producer_stopped": drained,
            "rss_before_mb": rss_before,
            "rss_peak_mb": max(s[1] for s in samples),
            "rss_growth_mb": max(s[1] for s in samples) - rss_before,
            "missing_on_scored_topic": len(set(ids) - set(on_topic)),
            "repeated_on_scored_topic": len(on_topic) - len(set(on_topic)),
            "missing_in_elasticsearch": len(set(ids) - set(indexed)),
            "event_loop_lag": histogram_quantiles(worker, "finsent_event_loop_lag_seconds"),
            "log": log_summary(worker),
            "samples": samples[:: max(1, len(samples) // 120)],
        }
    finally:
        pipeline.stop_all()


def log_summary(worker) -> dict:
    """What an operator reads in the worker's log: ERROR and WARNING lines by kind (the message's
    first words, numbers blanked), one example of each, and faust's timer complaints."""
    kinds: dict[str, int] = {}
    examples: dict[str, str] = {}
    text = worker.log.read_text(errors="replace")
    for line in text.splitlines():
        found = re.match(r"\[[^\]]+\] \[\d+\] \[(ERROR|WARNING)\] (.*)", line)
        if found:
            words = re.sub(r"\d+(\.\d+)?", "N", re.sub(r"TP\([^)]*\)", "TP", found.group(2))).split()[:7]
            kind = f"{found.group(1)} {' '.join(words)}"
            kinds[kind] = kinds.get(kind, 0) + 1
            examples.setdefault(kind, line[:300])
    return {
        "error_lines": sum(n for k, n in kinds.items() if k.startswith("ERROR")),
        "warning_lines": sum(n for k, n in kinds.items() if k.startswith("WARNING")),
        "lines_by_kind": kinds,
        "example_of_each": examples,
        "timer_overlapping": text.count("is overlapping"),
        "timer_woke_up_late": text.count("woke up too late"),
        "has_not_committed": text.count("Has not committed"),
    }


def histogram_quantiles(worker, name: str) -> dict:
    """p50/p99/max bucket bounds of a Prometheus histogram the worker exports."""
    buckets = sorted(
        (float(dict(labels)["le"]), value)
        for labels, value in worker.metric_samples(f"{name}_bucket").items()
        if dict(labels)["le"] != "+Inf"
    )
    total = worker.metric(f"{name}_count")
    out = {"count": total}
    for q in (0.5, 0.99, 0.999):
        out[f"p{q * 100:g}_at_most_s"] = next((le for le, count in buckets if count >= q * total), math.inf)
    out["max_bucket_s"] = next((le for le, count in buckets if count >= total), math.inf)
    return out


def steady(args) -> dict:
    pipeline = bench_pipeline("ts", args)
    names = [f"N{i:04d}" for i in range(2000)]
    try:
        worker = pipeline.start_worker()
        time.sleep(10)

        def make(n):
            name = names[(n * 7919) % len(names)]
            return name.encode(), {"id": f"s{n}", "text": f"Note {n}: {name} trades in line", "tickers": [name]}

        paced = Paced(pipeline, args.rate, make, args.steady_seconds)
        paced.thread.start()
        paced.thread.join(args.steady_seconds + 120)
        ids = [f"s{n}" for n in range(paced.sent)]
        pipeline.wait_indexed(len(ids), timeout_s=300)
        on_topic = pipeline.read_topic(
            "FINSENT_TOPIC_SCORED", len(ids), timeout_s=300, isolation_level="read_committed"
        )
        latency = sorted(r["kafka_latency_ms"] for r in on_topic if r.get("kafka_latency_ms") is not None)
        return {
            "rate_msgs_per_s": args.rate,
            "seconds": args.steady_seconds,
            "messages": paced.sent,
            "missing_on_scored_topic": len(set(ids) - {r["id"] for r in on_topic}),
            "latency_ms_p50": statistics.median(latency),
            "latency_ms_p99": latency[int(0.99 * (len(latency) - 1))],
            "event_loop_lag": histogram_quantiles(worker, "finsent_event_loop_lag_seconds"),
            "log": log_summary(worker),
        }
    finally:
        pipeline.stop_all()


def plot_overload(result: dict, path: Path) -> None:
    """RSS and messages scored over time, the producer's stop marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t, rss, scored = zip(*result["samples"], strict=True)
    fig, left = plt.subplots(figsize=(8, 4), dpi=110)
    left.plot(t, [s / 1000 for s in scored], color="tab:blue", label="scored (thousands)")
    left.axhline(result["messages"] / 1000, color="tab:blue", linestyle=":", linewidth=1)
    left.axvline(result["seconds_sent"], color="grey", linestyle="--", linewidth=1, label="producer stops")
    left.set_xlabel("seconds")
    left.set_ylabel("messages scored (thousands)")
    right = left.twinx()
    right.plot(t, rss, color="tab:red", label="worker RSS (MB)")
    right.set_ylabel("RSS (MB)")
    rate = result["rate_sent_msgs_per_s"]
    left.set_title(f"{rate:.0f} msg/s for {result['seconds_sent']:.0f} s, keyed over 2,000 names", fontsize=10)
    fig.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=None)
    parser.add_argument(
        "--scenarios",
        nargs="+",
        default=["keyed", "flood", "scale", "overload", "steady"],
        choices=["keyed", "flood", "scale", "overload", "steady"],
    )
    parser.add_argument("--rate", type=float, default=90.0, help="keyed: msg/s (about half of sustained here)")
    parser.add_argument("--keyed-seconds", type=float, default=240.0)
    parser.add_argument("--steady-seconds", type=float, default=600.0)
    parser.add_argument("--hold", type=float, default=30.0, help="FINSENT_WINDOW_UPSTREAM_HOLD_S for keyed runs")
    parser.add_argument("--warmup-seconds", type=float, default=60.0)
    parser.add_argument("--flood-seconds", type=float, default=200.0)
    parser.add_argument("--scale-rate", type=float, default=80.0, help="scale: msg/s (about 40 %% of one worker)")
    parser.add_argument("--scale-phase-seconds", type=float, default=90.0)
    parser.add_argument("--scale-step-seconds", type=float, default=30.0, help="scale: how long a step counts")
    parser.add_argument("--overload-rate", type=float, default=440.0, help="overload: msg/s (about 2x sustained)")
    parser.add_argument("--overload-seconds", type=float, default=180.0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/traffic.json"))
    args = parser.parse_args()
    settings = load_settings()
    stack.up(settings.stack_home)
    if args.bundle is None:
        from pipeline.demo import demo_bundle

        args.bundle, described = demo_bundle(settings, DATA_DIR, 1)
        print(f"bundle: {described}", flush=True)
    results = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "bundle": str(args.bundle)}
    for scenario in args.scenarios:
        run = {"keyed": keyed, "flood": flood, "scale": scale, "overload": overload, "steady": steady}[scenario]
        results[scenario] = run(args)
        print(f"{scenario}: {json.dumps(results[scenario], indent=1)}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    if "overload" in results:
        plot_overload(results["overload"], args.out.with_suffix(".png"))
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
