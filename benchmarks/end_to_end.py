"""End-to-end worker throughput and latency through the real broker and Elasticsearch.

    python benchmarks/end_to_end.py --bundle BUNDLE --data data/twitter_financial_news_sentiment/sent_train.csv

In one run, on the same messages: (1) the bare ONNX Runtime rate (the worker's Classifier,
INT8 on CPU, in this process); (2) one worker draining a pre-filled raw topic: sustained
scored messages/s between 10 % and 90 % of the backlog, checking every message lands in
Elasticsearch exactly once; (3) produce -> scored latency (Kafka timestamp to processed_at)
with traffic paced at half the sustained rate; (4) the worker's peak memory. Starts the local
stack if needed. Writes JSON and a latency histogram PNG next to --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline import stack
from pipeline.bundle import open_bundle
from pipeline.classify import Classifier
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
    parser.add_argument("--latency-seconds", type=float, default=20.0)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/end_to_end.json"))
    args = parser.parse_args()

    stack.up(load_settings().stack_home, ["kafka", "elasticsearch"])
    texts = [e.text for e in load_file(args.data)]
    texts = (texts * (args.messages // len(texts) + 1))[: args.messages]
    run = uuid.uuid4().hex[:8]

    # (1) bare ONNX Runtime on the same texts, same batch size as the worker.
    settings = load_settings()
    classifier = Classifier(open_bundle(args.bundle), batch_size=settings.max_batch)
    classifier.predict_proba(texts[:64])
    started = time.perf_counter()
    for i in range(0, len(texts), settings.max_batch):
        classifier.predict_proba(texts[i : i + settings.max_batch])
    bare_rate = len(texts) / (time.perf_counter() - started)
    print(f"bare ONNX Runtime ({classifier.variant}, {classifier.provider}): {bare_rate:.0f} msg/s", flush=True)
    del classifier

    workdir = Path(tempfile.mkdtemp(prefix="finsent-bench-"))
    pipeline = Pipeline(name=f"bench{run}", bundle=args.bundle, workdir=workdir, partitions=args.partitions)
    try:
        # (2) sustained throughput draining a backlog.
        payloads = [
            json.dumps({"id": f"b{run}-{i}", "text": t, "source": "bench"}).encode() for i, t in enumerate(texts)
        ]
        pipeline.produce(payloads)
        worker = pipeline.start_worker()
        samples: list[tuple[float, float]] = []
        deadline = time.monotonic() + 1800
        while time.monotonic() < deadline:
            count = worker.metric("finsent_messages_total", outcome="scored") + worker.metric(
                "finsent_messages_total", outcome="duplicate"
            )
            samples.append((time.monotonic(), count))
            if count >= len(texts):
                break
            time.sleep(0.25)
        (t10, c10), (t90, c90) = (next(s for s in samples if s[1] >= f * len(texts)) for f in (0.1, 0.9))
        sustained = (c90 - c10) / (t90 - t10)
        ids = pipeline.wait_indexed(len(texts), timeout_s=300)
        print(
            f"pipeline sustained: {sustained:.0f} msg/s ({sustained / bare_rate:.0%} of bare); "
            f"indexed {len(ids)} of {len(texts)}, distinct {len(set(ids))}",
            flush=True,
        )

        # (3) latency at half the sustained rate.
        rate = sustained / 2
        n = int(rate * args.latency_seconds)
        from kafka import KafkaProducer

        producer = KafkaProducer(bootstrap_servers="127.0.0.1:9092", acks=1, linger_ms=0)
        t0 = time.monotonic()
        for i in range(n):
            target = t0 + i / rate
            delay = target - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            producer.send(
                pipeline.env["FINSENT_TOPIC_RAW"],
                json.dumps({"id": f"l{run}-{i}", "text": texts[i % len(texts)] + f" #{i}", "source": "bench"}).encode(),
            )
        producer.flush()
        pipeline.wait_indexed(len(texts) + n, timeout_s=300)
        es = pipeline.es()
        hits = es.search(
            index=f"{pipeline.name}-scored",
            size=10_000,
            query={"prefix": {"id": f"l{run}-"}},
            source=["kafka_latency_ms"],
        )["hits"]["hits"]
        latencies = np.array([h["_source"]["kafka_latency_ms"] for h in hits])
        peak = peak_rss_mb(worker.process.pid)
        result = {
            "messages": len(texts),
            "partitions": args.partitions,
            "bundle": str(args.bundle),
            "bare_onnx_msgs_per_s": bare_rate,
            "pipeline_msgs_per_s": sustained,
            "pipeline_over_bare": sustained / bare_rate,
            "indexed": len(ids),
            "indexed_distinct": len(set(ids)),
            "latency_rate_msgs_per_s": rate,
            "latency_messages": int(len(latencies)),
            "latency_ms": {
                "p50": float(np.percentile(latencies, 50)),
                "p95": float(np.percentile(latencies, 95)),
                "p99": float(np.percentile(latencies, 99)),
            },
            "worker_peak_rss_mb": peak,
        }
        print(json.dumps(result, indent=2))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
        plot(latencies, result, args.out.with_suffix(".png"))
    finally:
        pipeline.stop_all()


def plot(latencies: np.ndarray, result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=120)
    ax.hist(latencies, bins=50, color="#4477aa")
    for row, (name, value) in enumerate(result["latency_ms"].items()):
        ax.axvline(value, color="black", linestyle="--", linewidth=0.8)
        ax.text(value, ax.get_ylim()[1] * (0.92 - 0.08 * row), f" {name} {value:.0f} ms", fontsize=8)
    ax.set_xlabel("produce -> scored latency (ms)")
    ax.set_ylabel("messages")
    ax.set_title(f"one worker at {result['latency_rate_msgs_per_s']:.0f} msg/s (half its sustained rate)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    main()
