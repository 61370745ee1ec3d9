"""``finsent report``: how a model did on a replayed run, as an HTML page with plots and a JSON summary.

Reads the run's scored records from Elasticsearch (or from the scored topic), the alerts raised
for its topics while it ran, and its dead letters from the dead-letter topic. Reports accuracy,
macro-F1 and the confusion matrix against the replay's labels, per-topic sentiment timelines
with alerts marked, throughput over time, the latency histogram with p50/p95/p99, and dead
letters by reason.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections import Counter
from datetime import datetime
from pathlib import Path

import numpy as np

from .clients import elasticsearch, kafka_consumer
from .config import Settings
from .schemas import LABELS
from .sinks.elasticsearch import index_name

TIMELINE_TOPICS = 6  # the busiest topics get a timeline each


class ReportError(ValueError):
    """Nothing to report (unknown run id, empty run)."""


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def scored_from_elasticsearch(settings: Settings, run_id: str) -> list[dict]:
    from elasticsearch.helpers import scan

    es = elasticsearch(settings)
    index = index_name(settings, "scored")
    es.indices.refresh(index=index)
    return [hit["_source"] for hit in scan(es, index=index, query={"query": {"term": {"run_id": run_id}}}, size=2000)]


def alerts_from_elasticsearch(settings: Settings, topics: set[str], start: datetime, end: datetime) -> list[dict]:
    from elasticsearch.helpers import scan

    es = elasticsearch(settings)
    index = index_name(settings, "alerts")
    if not es.indices.exists(index=index) or not topics:
        return []
    es.indices.refresh(index=index)
    query = {
        "query": {
            "bool": {
                "filter": [
                    {"terms": {"topic": sorted(topics)[:10_000]}},
                    {"range": {"window_start": {"gte": start.isoformat(), "lte": end.isoformat()}}},
                ]
            }
        }
    }
    return [hit["_source"] for hit in scan(es, index=index, query=query, size=1000)]


def _read_topic(settings: Settings, topic: str, keep) -> list[dict]:
    """Every record of a topic up to its current end, filtered by ``keep(record) -> dict | None``."""
    from kafka import TopicPartition

    consumer = kafka_consumer(
        settings, enable_auto_commit=False, auto_offset_reset="earliest", consumer_timeout_ms=5000
    )
    partitions = consumer.partitions_for_topic(topic) or set()
    tps = [TopicPartition(topic, p) for p in partitions]
    consumer.assign(tps)
    ends = consumer.end_offsets(tps)
    out = []
    done = {tp for tp in tps if ends[tp] == 0}
    while len(done) < len(tps):
        batch = consumer.poll(timeout_ms=2000, max_records=5000)
        if not batch:
            break
        for tp, records in batch.items():
            for record in records:
                kept = keep(record.value)
                if kept is not None:
                    out.append(kept)
                if record.offset + 1 >= ends[tp]:
                    done.add(tp)
    consumer.close()
    return out


def scored_from_kafka(settings: Settings, run_id: str) -> list[dict]:
    def keep(value: bytes):
        record = json.loads(value)
        return record if record.get("run_id") == run_id else None

    return list({r["id"]: r for r in _read_topic(settings, settings.topic_scored, keep)}.values())


def dead_letters(settings: Settings, run_id: str) -> Counter:
    """Dead letters whose payload names the run, by reason."""

    def keep(value: bytes):
        letter = json.loads(value)
        if letter.get("payload_encoding") != "utf-8" or f'"{run_id}"' not in letter.get("payload", ""):
            return None
        return letter

    return Counter(letter["reason"] for letter in _read_topic(settings, settings.topic_deadletter, keep))


def summarise(scored: list[dict], alerts: list[dict], letters: Counter) -> dict:
    from training.metrics import classification_metrics

    labelled = [r for r in scored if r.get("label_true")]
    summary: dict = {
        "messages": len(scored),
        "labelled": len(labelled),
        "dead_letters": dict(letters),
        "alerts": len({a["id"] for a in alerts}),
    }
    if labelled:
        y_true = np.array([LABELS.index(r["label_true"]) for r in labelled])
        probs = np.array([[r["probabilities"][label] for label in LABELS] for r in labelled])
        metrics = classification_metrics(y_true, np.log(np.clip(probs, 1e-9, 1)))
        summary.update(
            accuracy=metrics["accuracy"],
            macro_f1=metrics["macro_f1"],
            per_class=metrics.get("per_class"),
            confusion_matrix=metrics["confusion_matrix"],
        )
    latencies = np.array([r["kafka_latency_ms"] for r in scored if r.get("kafka_latency_ms") is not None])
    if latencies.size:
        summary["latency_ms"] = {f"p{q}": float(np.percentile(latencies, q)) for q in (50, 95, 99)}
    processed = sorted(_time(r["processed_at"]).timestamp() for r in scored)
    if len(processed) > 1:
        summary["throughput_msgs_per_s"] = len(processed) / max(processed[-1] - processed[0], 1e-3)
    summary["models"] = dict(Counter(r["model_version"] for r in scored))
    return summary


def _png(fig) -> str:
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode()


def plots(scored: list[dict], alerts: list[dict], summary: dict, output: Path) -> dict[str, str]:
    """name -> base64 PNG (also written next to the report)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images: dict[str, str] = {}

    def save(name: str, fig) -> None:
        images[name] = _png(fig)
        (output / f"{name}.png").write_bytes(base64.b64decode(images[name]))
        plt.close(fig)

    if "confusion_matrix" in summary:
        matrix = np.array(summary["confusion_matrix"])
        fig, ax = plt.subplots(figsize=(4.2, 3.6))
        ax.imshow(matrix, cmap="Blues")
        ax.set_xticks(range(3), LABELS)
        ax.set_yticks(range(3), LABELS)
        ax.set_xlabel("predicted")
        ax.set_ylabel("label")
        for (i, j), n in np.ndenumerate(matrix):
            ax.text(j, i, str(n), ha="center", va="center", color="white" if n > matrix.max() / 2 else "black")
        ax.set_title(f"accuracy {summary['accuracy']:.3f}, macro-F1 {summary['macro_f1']:.3f}")
        save("confusion_matrix", fig)

    counts = Counter(t for r in scored for t in r.get("tickers", []) + r.get("topics", []))
    topics = [t for t, _ in counts.most_common(TIMELINE_TOPICS)]
    if topics:
        fig, axes = plt.subplots(len(topics), 1, figsize=(9, 1.9 * len(topics)), sharex=True, squeeze=False)
        for ax, topic in zip(axes[:, 0], topics, strict=False):
            rows = sorted(
                (_time(r["published_at"]), r["sentiment_score"])
                for r in scored
                if topic in r.get("tickers", []) + r.get("topics", [])
            )
            times, scores = zip(*rows, strict=False)
            window = max(1, len(scores) // 30)
            smooth = np.convolve(scores, np.ones(window) / window, mode="same")
            ax.scatter(times, scores, s=4, alpha=0.3)
            ax.plot(times, smooth, linewidth=1.5)
            ax.set_ylim(-1.05, 1.05)
            ax.set_ylabel(topic, rotation=0, ha="right")
            for alert in (a for a in alerts if a["topic"] == topic):
                ax.axvline(_time(alert["window_start"]), color="red", linewidth=1)
                ax.annotate(alert["rule"], (_time(alert["window_start"]), 0.9), color="red", fontsize=7)
        axes[0, 0].set_title("sentiment score per message (line: moving average; red: alerts fired)")
        save("sentiment_timelines", fig)

    processed = sorted(_time(r["processed_at"]).timestamp() for r in scored)
    if len(processed) > 1:
        start = processed[0]
        seconds = np.array(processed) - start
        bins = max(1, math.ceil(seconds[-1]))
        fig, ax = plt.subplots(figsize=(9, 2.6))
        ax.hist(seconds, bins=bins, color="tab:green")
        ax.set_xlabel("seconds since the first scored record")
        ax.set_ylabel("messages / s")
        ax.set_title(f"throughput (mean {summary.get('throughput_msgs_per_s', 0):.0f} msg/s)")
        save("throughput", fig)

    if "latency_ms" in summary:
        latencies = [r["kafka_latency_ms"] for r in scored if r.get("kafka_latency_ms") is not None]
        fig, ax = plt.subplots(figsize=(9, 2.6))
        ax.hist(latencies, bins=50, color="tab:purple")
        for q, style in (("p50", "-"), ("p95", "--"), ("p99", ":")):
            ax.axvline(
                summary["latency_ms"][q], color="black", linestyle=style, label=f"{q} {summary['latency_ms'][q]:.0f} ms"
            )
        ax.set_xlabel("Kafka timestamp to scored record (ms)")
        ax.legend()
        save("latency", fig)
    return images


def write_report(run_id: str, scored: list[dict], alerts: list[dict], letters: Counter, output: Path) -> Path:
    output.mkdir(parents=True, exist_ok=True)
    summary = {"run_id": run_id, **summarise(scored, alerts, letters)}
    images = plots(scored, alerts, summary, output)
    (output / "summary.json").write_text(json.dumps(summary, indent=2))
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{html.escape(json.dumps(v) if isinstance(v, (dict, list)) else str(v))}</td></tr>"
        for k, v in summary.items()
        if k not in ("confusion_matrix", "per_class")
    )
    alert_rows = "".join(
        f"<tr><td>{html.escape(a['topic'])}</td><td>{html.escape(a['rule'])}</td><td>{html.escape(a['severity'])}</td>"
        f"<td>{html.escape(a['window_start'])}</td><td>{html.escape(a['status'])}</td><td>{html.escape(a['summary'])}</td></tr>"
        for a in sorted(alerts, key=lambda a: a["window_start"])
    )
    pictures = "".join(
        f'<h2>{name.replace("_", " ")}</h2><img alt="{name}" src="data:image/png;base64,{data}">'
        for name, data in images.items()
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>finsent report {html.escape(run_id)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1000px}}td{{padding:2px 10px;border-bottom:1px solid #ddd}}
img{{max-width:100%}}</style></head><body><h1>finsent report: run {html.escape(run_id)}</h1>
<table>{rows}</table>{pictures}<h2>alerts</h2><table><tr><th>topic</th><th>rule</th><th>severity</th>
<th>window</th><th>status</th><th>summary</th></tr>{alert_rows}</table></body></html>"""
    path = output / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


def report(settings: Settings, run_id: str, output: Path, source: str = "elasticsearch") -> Path:
    scored = (
        scored_from_elasticsearch(settings, run_id)
        if source == "elasticsearch"
        else scored_from_kafka(settings, run_id)
    )
    if not scored:
        raise ReportError(f"no scored records with run_id {run_id!r} in {source}")
    topics = {t for r in scored for t in r.get("tickers", []) + r.get("topics", [])}
    times = [_time(r["published_at"]) for r in scored]
    alerts = alerts_from_elasticsearch(settings, topics, min(times), max(times))
    return write_report(run_id, scored, alerts, dead_letters(settings, run_id), output)
