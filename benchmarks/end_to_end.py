"""End-to-end worker throughput and latency through the real broker and Elasticsearch.

    python benchmarks/end_to_end.py --bundle BUNDLE --data data/twitter_financial_news_sentiment/sent_train.csv

In one run, on the same messages: (1) the bare ONNX Runtime rate (the worker's Classifier,
the bundle's CPU variant, in this process), on all cores and on the worker's inference threads; (2) one worker draining a pre-filled raw topic: the sustained
rate from 10 % of the backlog scored until every stage (the window stage too) has drained it,
beside the scoring rate alone (10 % to 90 % scored), checking every message lands in
Elasticsearch exactly once; (3) produce -> scored latency (Kafka timestamp to processed_at)
with traffic paced at 25 %, 50 % and 80 % of that sustained rate, p50/p95/p99 each, and when a
read_committed consumer of the scored topic sees each record; (4) the worker's peak memory.
``--guarantees at_least_once exactly_once`` repeats (2)-(4) under each processing guarantee;
``--shadow CANDIDATE`` repeats them with a shadow worker (`finsent shadow`, the candidate
bundle) beside the worker (docs/rollout.md) and compares the serving p99 at 50 % of sustained and
the sustained rate with and without.
Starts the local stack if needed. Writes JSON and latency histogram PNGs next to --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline import stack
from pipeline.bundle import open_bundle
from pipeline.classify import Classifier, worker_inference_threads
from pipeline.config import load_settings
from tests.integration.harness import Pipeline
from training.data import load_file


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--messages", type=int, default=6000)
    parser.add_argument("--latency-seconds", type=float, default=20.0, help="length of each load phase")
    parser.add_argument(
        "--loads", type=float, nargs="+", default=[0.25, 0.5, 0.8], help="load phases, as shares of sustained"
    )
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--worker-env", nargs="*", default=[], metavar="KEY=VALUE", help="e.g. FINSENT_MAX_BATCH=32")
    parser.add_argument(
        "--guarantees",
        nargs="+",
        default=["configured"],
        choices=["configured", "at_least_once", "exactly_once"],
        help="measure the worker under each processing guarantee, one after the other in this run",
    )
    parser.add_argument("--shadow", type=Path, default=None, help="a candidate bundle: also measure with it in shadow")
    parser.add_argument("--shadow-sample", type=float, default=1.0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/end_to_end.json"))
    args = parser.parse_args()

    stack.up(load_settings().stack_home, ["kafka", "elasticsearch"])
    texts = [e.text for e in load_file(args.data)]
    texts = (texts * (args.messages // len(texts) + 1))[: args.messages]
    run = uuid.uuid4().hex[:8]

    # (1) bare ONNX Runtime on the same texts, same batch size as the worker: on all cores, and on
    # the worker's own inference threads (what the worker's model alone could do).
    settings = load_settings()
    threads = settings.inference_threads or worker_inference_threads()
    backlog = [unique_text(texts, i) for i in range(len(texts))]  # what the worker will be sent
    bare = {"all_cores": bare_onnx_rate(args.bundle, backlog, settings.max_batch, None)}
    bare["worker_threads"] = bare_onnx_rate(args.bundle, backlog, settings.max_batch, threads)
    print(
        f"bare ONNX Runtime: {bare['all_cores']:.0f} msg/s on all cores, "
        f"{bare['worker_threads']:.0f} msg/s on the worker's {threads} inference thread(s)",
        flush=True,
    )

    args.out.parent.mkdir(parents=True, exist_ok=True)
    results = {}
    variants = []
    for guarantee in args.guarantees:
        extra_env = dict(pair.split("=", 1) for pair in args.worker_env)
        if guarantee != "configured":
            extra_env["FINSENT_PROCESSING_GUARANTEE"] = guarantee
        variants.append((guarantee, extra_env))
    if args.shadow is not None:
        name, extra_env = variants[0]
        shadow_env = {
            **extra_env,
            "FINSENT_SHADOW_BUNDLE": str(args.shadow.resolve()),
            "FINSENT_SHADOW_SAMPLE": str(args.shadow_sample),
        }
        variants.append((f"{name}+shadow", shadow_env))
    for name, extra_env in variants:
        print(f"--- {name}", flush=True)
        results[name] = measure(args, texts, f"{run}{len(results)}", bare, extra_env, name)
    if args.shadow is not None:
        off, on = results[variants[0][0]], results[variants[-1][0]]
        p99 = {k: r["latency"]["50%"]["latency_ms"]["p99"] for k, r in (("off", off), ("on", on))}
        results["shadow_comparison"] = {
            "sample": args.shadow_sample,
            "sustained_msgs_per_s": {"off": off["pipeline_msgs_per_s"], "on": on["pipeline_msgs_per_s"]},
            "p99_ms_at_50pct": p99,
            "p99_on_over_off": p99["on"] / p99["off"],
        }
        print(f"shadow: {json.dumps(results['shadow_comparison'])}", flush=True)
    if len(results) == 1:
        (result,) = results.values()
    else:
        result = {"bare_onnx_msgs_per_s": bare["all_cores"], "by_guarantee": results}
        if len(args.guarantees) > 1:
            base, other = (results[g] for g in args.guarantees[:2])
            print(
                f"{args.guarantees[1]} / {args.guarantees[0]}: sustained "
                f"{other['pipeline_msgs_per_s'] / base['pipeline_msgs_per_s']:.0%}",
                flush=True,
            )
    print(json.dumps(result, indent=2))
    args.out.write_text(json.dumps(result, indent=2))


def bare_onnx_rate(bundle: Path, texts: list[str], batch: int, threads: int | None) -> float:
    classifier = Classifier(open_bundle(bundle), batch_size=batch, intra_op_threads=threads)
    classifier.predict_proba(texts[:64])
    started = time.perf_counter()
    for i in range(0, len(texts), batch):
        classifier.predict_proba(texts[i : i + batch])
    return len(texts) / (time.perf_counter() - started)


def drain_backlog(args, pipeline: Pipeline, texts: list[str], run: str) -> tuple:
    """(2) The worker started on a backlog of ``texts``: (worker, sustained msg/s with every stage
    drained, msg/s of scoring alone, the indexed ids)."""
    payloads = [
        json.dumps({"id": f"b{run}-{i}", "text": unique_text(texts, i), "source": "bench"}).encode()
        for i in range(len(texts))
    ]
    pipeline.produce(payloads)
    worker = pipeline.start_worker()
    if "FINSENT_SHADOW_BUNDLE" in pipeline.extra_env:  # beside it on the same host, as a user would
        pipeline.start_shadow()
    samples: list[tuple[float, float]] = []
    windows_topic = f"{pipeline.env['FINSENT_CONSUMER_GROUP']}.windows"
    deadline = time.monotonic() + 1800
    while time.monotonic() < deadline:
        count = worker.metric("finsent_messages_total", outcome="scored") + worker.metric(
            "finsent_messages_total", outcome="duplicate"
        )
        samples.append((time.monotonic(), count))
        # Drained: every message scored and the window stage caught up too (ticks aside).
        if count >= len(texts) and window_backlog(worker, windows_topic) <= 2 * args.partitions:
            break
        time.sleep(0.25)
    (t10, c10), (t90, c90) = (next(s for s in samples if s[1] >= f * len(texts)) for f in (0.1, 0.9))
    scored_rate = (c90 - c10) / (t90 - t10)
    # The rate every stage keeps up with: from 10 % scored until the windows are drained too.
    sustained = (len(texts) - c10) / (samples[-1][0] - t10)
    return worker, sustained, scored_rate, pipeline.wait_indexed(len(texts), timeout_s=300)


def latency_phase(
    args, pipeline: Pipeline, texts: list[str], prefix: str, rate: float, first: int, before: int
) -> dict:
    """(3) Produce -> scored latency of new texts paced at ``rate`` (numbered from ``first``), once
    they and the ``before`` messages already sent are indexed."""
    visible = VisibleLatency(pipeline, prefix)
    n = pace(pipeline, texts, prefix, rate, args.latency_seconds, first=first)
    pipeline.wait_indexed(before + n, timeout_s=300)
    latencies = kafka_latencies(pipeline, prefix)
    seen = visible.wait(n)
    return {
        "rate_msgs_per_s": rate,
        "messages": n,
        "latency_ms": {q: float(np.percentile(latencies, int(q[1:]))) for q in ("p50", "p95", "p99")},
        "visible_latency_ms": {q: float(np.percentile(seen, int(q[1:]))) for q in ("p50", "p95", "p99")},
        "samples": latencies.tolist(),
    }


def measure(args, texts: list[str], run: str, bare: dict[str, float], extra_env: dict, variant: str) -> dict:
    bare_rate = bare["all_cores"]
    workdir = Path(tempfile.mkdtemp(prefix="finsent-bench-"))
    pipeline = Pipeline(
        name=f"bench{run}", bundle=args.bundle, workdir=workdir, partitions=args.partitions, extra_env=extra_env
    )
    try:
        worker, sustained, scored_rate, ids = drain_backlog(args, pipeline, texts, run)
        print(
            f"pipeline sustained: {sustained:.0f} msg/s, every stage drained ({sustained / bare_rate:.0%} of bare, "
            f"{sustained / bare['worker_threads']:.0%} of bare on the worker's threads); "
            f"scoring alone {scored_rate:.0f} msg/s ({scored_rate / bare_rate:.0%}); "
            f"indexed {len(ids)} of {len(texts)}, distinct {len(set(ids))}",
            flush=True,
        )
        # One load after another; each phase's texts are new to the de-duplication stage.
        phases, sent = {}, len(texts)
        for share in args.loads:
            before = len(texts) + sum(p["messages"] for p in phases.values())
            prefix = f"l{run}-{int(share * 100)}-"
            phase = latency_phase(args, pipeline, texts, prefix, sustained * share, first=sent, before=before)
            phases[f"{share:.0%}"] = {"share_of_sustained": share, **phase}
            sent += phase["messages"]
            print(
                f"latency at {share:.0%} of sustained ({phase['rate_msgs_per_s']:.0f} msg/s, {phase['messages']} "
                "messages): "
                + ", ".join(f"{q} {v:.0f} ms" for q, v in phase["latency_ms"].items())
                + "; visible to a read_committed consumer: "
                + ", ".join(f"{q} {v:.0f} ms" for q, v in phase["visible_latency_ms"].items()),
                flush=True,
            )
        plot(phases, sustained, args.out.with_name(f"{args.out.stem}.{variant}.png"), variant)
        return {
            "messages": len(texts),
            "partitions": args.partitions,
            "bundle": str(args.bundle),
            "worker_env": extra_env,
            "bare_onnx_msgs_per_s": bare_rate,
            "pipeline_msgs_per_s": sustained,
            "pipeline_over_bare": sustained / bare_rate,
            "bare_onnx_worker_threads_msgs_per_s": bare["worker_threads"],
            "pipeline_over_bare_worker_threads": sustained / bare["worker_threads"],
            "scoring_msgs_per_s": scored_rate,
            "indexed": len(ids),
            "indexed_distinct": len(set(ids)),
            "latency": {k: {f: v for f, v in p.items() if f != "samples"} for k, p in phases.items()},
            "worker_peak_rss_mb": peak_rss_mb(worker.process.pid),
            # With a candidate in shadow: what it scored and what it skipped for being behind.
            "shadow_records": {
                outcome: pipeline.workers[-1].metric("finsent_shadow_records_total", outcome=outcome)
                for outcome in ("scored", "skipped_behind", "not_sampled", "duplicate")
            }
            if "FINSENT_SHADOW_BUNDLE" in extra_env
            else None,
        }
    finally:
        pipeline.stop_all()


class VisibleLatency:
    """When each scored record becomes visible to a downstream consumer reading read_committed
    (exactly-once, only once its transaction commits), from the raw message's Kafka timestamp."""

    def __init__(self, pipeline: Pipeline, prefix: str):
        from kafka import KafkaConsumer, TopicPartition

        self.prefix, self.latencies = prefix, []
        self.consumer = KafkaConsumer(
            **pipeline.settings.kafka_client_kwargs(), isolation_level="read_committed", enable_auto_commit=False
        )
        topic = pipeline.env["FINSENT_TOPIC_SCORED"]
        partitions = [TopicPartition(topic, p) for p in sorted(self.consumer.partitions_for_topic(topic) or ())]
        self.consumer.assign(partitions)
        self.consumer.seek_to_end(*partitions)
        for tp in partitions:
            self.consumer.position(tp)  # resolves "the end" now, before the phase sends anything
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.stop = threading.Event()
        self.thread.start()

    def _read(self) -> None:
        while not self.stop.is_set():
            for records in self.consumer.poll(timeout_ms=100).values():
                now_ms = time.time() * 1000
                for r in records:
                    record = json.loads(r.value)
                    if record["id"].startswith(self.prefix) and record.get("kafka_latency_ms") is not None:
                        processed = datetime.fromisoformat(record["processed_at"].replace("Z", "+00:00"))
                        sent_ms = processed.timestamp() * 1000 - record["kafka_latency_ms"]
                        self.latencies.append(now_ms - sent_ms)

    def wait(self, n: int, timeout_s: float = 120) -> np.ndarray:
        deadline = time.monotonic() + timeout_s
        while len(self.latencies) < n and time.monotonic() < deadline:
            time.sleep(0.2)
        self.stop.set()
        self.thread.join(timeout=5)
        self.consumer.close()
        return np.array(self.latencies)


def unique_text(texts: list[str], number: int) -> str:
    """The text numbered ``number``: the corpus cycled, with a short suffix that keeps repeats
    from being de-duplicated. Every phase builds its texts this way, so the backlog and the paced
    phases ask the model for the same work per message (a longer suffix costs tokens)."""
    return f"{texts[number % len(texts)]} #{number}"


def pace(pipeline: Pipeline, texts: list[str], prefix: str, rate: float, seconds: float, first: int) -> int:
    """Sends ``rate`` messages a second for ``seconds`` (texts numbered from ``first``); returns the count."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers="127.0.0.1:9092", acks=1, linger_ms=0)
    n = int(rate * seconds)
    t0 = time.monotonic()
    for i in range(n):
        delay = t0 + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        text = unique_text(texts, first + i)
        producer.send(pipeline.env["FINSENT_TOPIC_RAW"], json.dumps({"id": f"{prefix}{i}", "text": text}).encode())
    producer.flush()
    producer.close()
    return n


def window_backlog(worker, topic: str) -> float:
    """Window items not yet processed, over the window topic's partitions."""
    total = 0.0
    for line in (worker.metrics_text() or "").splitlines():
        if line.startswith("finsent_consumer_lag_messages{") and f'topic="{topic}"' in line:
            total += float(line.rpartition(" ")[2])
    return total


def kafka_latencies(pipeline: Pipeline, prefix: str) -> np.ndarray:
    hits = pipeline.es().search(
        index=f"{pipeline.name}-scored", size=10_000, query={"prefix": {"id": prefix}}, source=["kafka_latency_ms"]
    )["hits"]["hits"]
    return np.array([h["_source"]["kafka_latency_ms"] for h in hits])


def plot(phases: dict, sustained: float, path: Path, guarantee: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(phases), figsize=(4.2 * len(phases), 3.4), dpi=120, sharey=False)
    for ax, (name, phase) in zip(np.atleast_1d(axes), phases.items(), strict=True):
        ax.hist(phase["samples"], bins=40, color="#4477aa")
        for row, (q, value) in enumerate(phase["latency_ms"].items()):
            ax.axvline(value, color="black", linestyle="--", linewidth=0.8)
            ax.text(value, ax.get_ylim()[1] * (0.92 - 0.08 * row), f" {q} {value:.0f} ms", fontsize=8)
        ax.set_xlabel("produce -> scored latency (ms)")
        ax.set_title(f"{name} of sustained ({phase['rate_msgs_per_s']:.0f} msg/s)")
    np.atleast_1d(axes)[0].set_ylabel("messages")
    fig.suptitle(f"one worker ({guarantee}), sustained {sustained:.0f} msg/s")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    main()
