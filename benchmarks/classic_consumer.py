"""finsent's worker against the classic consumer a tutorial would give, on the same stream.

    python benchmarks/classic_consumer.py --checkpoint RUN/best --bundle BUNDLE \
        --data data/twitter_financial_news_sentiment/sent_train.csv

The classic consumer: a kafka-python loop that, for each message, runs the fine-tuned model in
torch (tokenizer + forward pass, one message at a time, as a transformers text-classification
pipeline does) and indexes the result into Elasticsearch with one request. finsent: one worker
(the ONNX export of the same weights, INT8 on CPU, batches, bulk writes). Same messages, same
broker and Elasticsearch, same machine, one after the other in one run. Each drains a backlog of
``--messages``: throughput, Kafka-timestamp-to-indexed latency percentiles, and a check that
every message is in Elasticsearch exactly once.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline import stack
from pipeline.config import load_settings
from tests.integration.harness import Pipeline
from training.data import load_file


def classic_consumer(topic: str, index: str, checkpoint: Path, expected: int) -> dict:
    """The tutorial loop, verbatim in spirit: consume, classify one, index one."""
    import torch
    from elasticsearch import Elasticsearch
    from kafka import KafkaConsumer

    from pipeline.schemas import LABELS
    from training.model import SentimentClassifier

    model, tokenizer, _ = SentimentClassifier.load(checkpoint)
    model.eval()
    es = Elasticsearch("http://127.0.0.1:9200", request_timeout=30)
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers="127.0.0.1:9092",
        group_id=f"classic-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="earliest",
        consumer_timeout_ms=20_000,
    )
    latencies, seen, started = [], 0, None
    for message in consumer:
        started = started or time.perf_counter()
        record = json.loads(message.value)
        inputs = tokenizer(record["text"], truncation=True, max_length=128, return_tensors="pt")
        with torch.no_grad():
            probs = torch.softmax(model(**inputs), dim=-1)[0].tolist()
        label = LABELS[int(np.argmax(probs))]
        es.index(index=index, id=record["id"], document={**record, "label": label, "probabilities": probs})
        latencies.append(time.time() * 1000 - message.timestamp)
        seen += 1
        if seen >= expected:
            break
    elapsed = time.perf_counter() - started
    consumer.close()
    return {"seconds": elapsed, "msgs_per_s": seen / elapsed, "latencies": latencies}


def count_ids(es, index: str) -> tuple[int, int]:
    """(documents, distinct ids): equal when nothing was duplicated."""
    es.indices.refresh(index=index)
    total = es.count(index=index)["count"]
    distinct = es.search(
        index=index, size=0, aggs={"ids": {"cardinality": {"field": "id", "precision_threshold": 40000}}}
    )
    return total, int(distinct["aggregations"]["ids"]["value"])


def percentiles(values) -> dict:
    return {f"p{q}": float(np.percentile(values, q)) for q in (50, 95, 99)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="finsent train output (…/best)")
    parser.add_argument("--bundle", type=Path, required=True, help="finsent export of the same checkpoint")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/classic_consumer.json"))
    args = parser.parse_args()

    stack.up(load_settings().stack_home, ["kafka", "elasticsearch"])
    texts = [e.text for e in load_file(args.data)][: args.messages]
    run = uuid.uuid4().hex[:8]
    pipeline = Pipeline(
        name=f"classic{run}", bundle=args.bundle, workdir=Path(tempfile.mkdtemp(prefix="finsent-")), partitions=4
    )
    payloads = [json.dumps({"id": f"c{run}-{i}", "text": t, "source": "bench"}).encode() for i, t in enumerate(texts)]
    es = pipeline.es()
    try:
        # The classic consumer drains its copy of the stream (an index mapped like ours: keyword id).
        classic_topic, classic_index = f"{pipeline.name}.classic", f"{pipeline.name}-classic"
        es.indices.create(index=classic_index, mappings={"properties": {"id": {"type": "keyword"}}})
        from kafka import KafkaProducer

        producer = KafkaProducer(bootstrap_servers="127.0.0.1:9092", acks="all", linger_ms=5)
        for payload in payloads:
            producer.send(classic_topic, payload)
        producer.flush()
        print(f"classic consumer: {len(texts)} messages …", flush=True)
        classic = classic_consumer(classic_topic, classic_index, args.checkpoint, len(texts))
        classic_docs = count_ids(es, classic_index)
        print(
            f"classic: {classic['msgs_per_s']:.1f} msg/s, {classic_docs[0]} docs, {classic_docs[1]} distinct",
            flush=True,
        )

        # finsent drains the same messages from its raw topic.
        pipeline.produce(payloads)
        worker = pipeline.start_worker()
        started = time.perf_counter()
        ids = pipeline.wait_indexed(len(texts), timeout_s=1800)
        finsent_seconds = time.perf_counter() - started
        hits = es.search(index=f"{pipeline.name}-scored", size=10_000, source=["kafka_latency_ms", "processed_at"])
        latencies = [h["_source"]["kafka_latency_ms"] for h in hits["hits"]["hits"]]
        processed = sorted(
            datetime.fromisoformat(h["_source"]["processed_at"]).timestamp() for h in hits["hits"]["hits"]
        )
        finsent_rate = len(processed) / max(processed[-1] - processed[0], 1e-3)
        finsent_docs = count_ids(es, f"{pipeline.name}-scored")
        worker.stop()
        result = {
            "messages": len(texts),
            "data": str(args.data),
            "checkpoint": str(args.checkpoint),
            "bundle": str(args.bundle),
            "classic": {
                "msgs_per_s": classic["msgs_per_s"],
                "seconds": classic["seconds"],
                "latency_ms": percentiles(classic["latencies"]),
                "documents": classic_docs[0],
                "distinct": classic_docs[1],
            },
            "finsent": {
                "msgs_per_s": finsent_rate,
                "seconds_incl_startup": finsent_seconds,
                "latency_ms": percentiles(latencies),
                "documents": finsent_docs[0],
                "distinct": finsent_docs[1],
                "indexed_ids": len(set(ids)),
            },
        }
        result["speedup"] = result["finsent"]["msgs_per_s"] / result["classic"]["msgs_per_s"]
        print(json.dumps(result, indent=2))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
        plot(result, classic["latencies"], latencies, args.out.with_suffix(".png"))
    finally:
        pipeline.stop_all()


def plot(result: dict, classic_latencies, finsent_latencies, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6), dpi=120)
    names = ["classic consumer", "finsent worker"]
    rates = [result["classic"]["msgs_per_s"], result["finsent"]["msgs_per_s"]]
    left.bar(names, rates, color=["#bb5566", "#4477aa"])
    left.set_ylabel("messages / s (backlog drain)")
    left.set_title(f"throughput: {result['speedup']:.1f}x")
    for i, rate in enumerate(rates):
        left.text(i, rate, f"{rate:.0f}", ha="center", va="bottom")
    right.hist(
        [np.array(classic_latencies) / 1000, np.array(finsent_latencies) / 1000],
        bins=40,
        label=names,
        color=["#bb5566", "#4477aa"],
    )
    right.set_xlabel("Kafka timestamp to indexed (s), draining the backlog")
    right.legend()
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    main()
