"""``finsent report``: how a model did on a replayed run, as an HTML page with plots and a JSON summary.

Reads the run's scored records from Elasticsearch (or from the scored topic), the alerts raised
for its topics while it ran, and its dead letters from the dead-letter topic. Reports the key
figures, accuracy against the replay's labels (per-class precision/recall, confusion matrix),
each entity's own sentiment against an entity replay's labels (per ticker, and where a text's
entities disagree),
latency p50/p95/p99 with its histogram, throughput over time, 1-minute window charts of the
tickers that alerted and the busiest ones (alert episodes shaded), the alerts, and dead letters
by reason; the demo adds its scorecard.
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
    entities = entity_accuracy(scored)
    if entities:
        summary["entities"] = entities
    latencies = np.array([r["kafka_latency_ms"] for r in scored if r.get("kafka_latency_ms") is not None])
    if latencies.size:
        summary["latency_ms"] = {f"p{q}": float(np.percentile(latencies, q)) for q in (50, 95, 99)}
    processed = sorted(_time(r["processed_at"]).timestamp() for r in scored)
    if len(processed) > 1:
        summary["throughput_msgs_per_s"] = len(processed) / max(processed[-1] - processed[0], 1e-3)
    summary["models"] = dict(Counter(r["model_version"] for r in scored))
    return summary


def entity_accuracy(scored: list[dict], top_unlinked: int = 20) -> dict | None:
    """How each labelled entity of an entity replay was scored: the record's entity whose span
    overlaps the labelled one gives its label (a labelled entity the linker did not find is
    unlinked). Accuracy overall, per ticker, where a text's entities disagree, and what copying
    the message's label to every entity would have scored on the same entities."""
    rows = []  # (ticker or None, truth, entity label or None, message label, disagree, entity)
    for record in scored:
        truths = record.get("entity_labels_true") or []
        disagree = len({t["label"] for t in truths}) > 1
        for truth in truths:
            start, end = truth["span"]
            found = next(
                (
                    e
                    for e in record.get("entities", [])
                    if e.get("span") and e["span"][0] < end and start < e["span"][1]
                ),
                None,
            )
            ticker, predicted = (found["ticker"], found["label"]) if found else (None, None)
            rows.append((ticker, truth["label"], predicted, record["label"], disagree, truth["entity"]))
    if not rows:
        return None
    linked = [r for r in rows if r[0]]

    def accuracy(part: list[tuple], column: int = 2) -> float | None:
        return sum(r[1] == r[column] for r in part) / len(part) if part else None

    per_ticker: dict[str, list[tuple]] = {}
    for row in linked:
        per_ticker.setdefault(row[0], []).append(row)
    disagreeing = [r for r in linked if r[4]]
    return {
        "labelled": len(rows),
        "linked": len(linked),
        "accuracy": accuracy(linked),
        "message_label_accuracy": accuracy(linked, column=3),
        "disagreeing": {
            "entities": len(disagreeing),
            "accuracy": accuracy(disagreeing),
            "message_label_accuracy": accuracy(disagreeing, column=3),
        },
        "per_ticker": {
            ticker: {"entities": len(part), "accuracy": accuracy(part)}
            for ticker, part in sorted(per_ticker.items(), key=lambda item: (-len(item[1]), item[0]))
        },
        "unlinked": dict(Counter(r[5] for r in rows if not r[0]).most_common(top_unlinked)),
    }


def _png(fig) -> str:
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode()


def minute_windows(scored: list[dict], topic: str, size_s: int = 60) -> list[dict]:
    """Per ``size_s`` window of event time (empty windows included): messages, mean sentiment
    score and negative share of the records that name ``topic``."""
    buckets: dict[int, list[dict]] = {}
    for r in scored:
        if topic in r.get("tickers", []) + r.get("topics", []):
            buckets.setdefault(int(_time(r["published_at"]).timestamp() // size_s), []).append(r)
    if not buckets:
        return []
    rows = []
    for bucket in range(min(buckets), max(buckets) + 1):
        records = buckets.get(bucket, [])
        rows.append(
            {
                "start": bucket * size_s,
                "messages": len(records),
                "sentiment": float(np.mean([r["sentiment_score"] for r in records])) if records else None,
                "negative": sum(r["label"] == "negative" for r in records) / len(records) if records else None,
            }
        )
    return rows


SEVERITY_COLOURS = {"page": "tab:red", "warning": "tab:orange", "info": "tab:blue"}


def _ticker_windows_figure(plt, scored: list[dict], alerts: list[dict], topics: list[str]):
    """One panel per topic: volume bars, 1-minute mean sentiment, negative share, and each alert
    episode shaded from the window that fired it to the one that resolved it."""
    from datetime import UTC

    fig, axes = plt.subplots(len(topics), 1, figsize=(10, 2.2 * len(topics)), sharex=True, squeeze=False)
    end_of_data = max(_time(r["published_at"]) for r in scored)
    for ax, topic in zip(axes[:, 0], topics, strict=False):
        rows = minute_windows(scored, topic)
        starts = [datetime.fromtimestamp(w["start"], UTC) for w in rows]
        volume = ax.twinx()
        volume.bar(starts, [w["messages"] for w in rows], width=1 / 1440 * 0.9, align="edge", color="#bbb", zorder=0)
        volume.set_ylabel("msgs", color="#888", fontsize=8)
        volume.tick_params(labelsize=7, colors="#888")
        ax.set_zorder(volume.get_zorder() + 1)
        ax.patch.set_visible(False)
        ax.plot(starts, [w["sentiment"] for w in rows], color="tab:blue", linewidth=1.5, label="mean sentiment")
        ax.plot(
            starts, [w["negative"] for w in rows], color="tab:red", linestyle="--", linewidth=1, label="negative share"
        )
        ax.axhline(0, color="#ccc", linewidth=0.8)
        ax.set_ylim(-1.05, 1.05)
        ax.set_ylabel(topic, rotation=0, ha="right", fontweight="bold")
        for alert in (a for a in alerts if a["topic"] == topic):
            began = _time(alert["window_start"])
            ended = _time(alert["resolved_at"]) if alert.get("resolved_at") else end_of_data
            colour = SEVERITY_COLOURS.get(alert.get("severity"), "tab:red")
            ax.axvspan(began, ended, color=colour, alpha=0.18, zorder=0)
            ax.annotate(alert["rule"], (began, 0.82), color=colour, fontsize=7)
    axes[0, 0].legend(loc="lower left", fontsize=7, ncols=2)
    axes[0, 0].set_title(
        "1-minute windows: mean sentiment, negative share, volume (grey bars); alerts shaded fire to resolve"
    )
    return fig


ENTITY_CHART_TICKERS = 20
ENTITY_TABLE_TICKERS = 100  # the most labelled; summary.json has them all


def _entity_accuracy_figure(plt, entities: dict):
    """Accuracy of the most-labelled tickers' own sentiment, beside the overall figure and what
    one label per message would have scored."""
    tickers = list(entities["per_ticker"])[:ENTITY_CHART_TICKERS][::-1]
    values = [entities["per_ticker"][t]["accuracy"] for t in tickers]
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(tickers) + 1.2))
    ax.barh(tickers, values, color="tab:blue")
    for y, ticker in enumerate(tickers):
        ax.annotate(f" n={entities['per_ticker'][ticker]['entities']}", (values[y], y), va="center", fontsize=7)
    ax.axvline(entities["accuracy"], color="black", label=f"all linked entities {entities['accuracy']:.3f}")
    copied = entities["message_label_accuracy"]
    ax.axvline(copied, color="tab:red", linestyle="--", label=f"message label copied {copied:.3f}")
    ax.set_xlim(0, 1.15)
    ax.set_xlabel("entity sentiment accuracy")
    ax.legend(loc="lower right", fontsize=7)
    ax.set_title(f"per ticker ({len(tickers)} most labelled)")
    return fig


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

    if "entities" in summary:
        save("entity_accuracy", _entity_accuracy_figure(plt, summary["entities"]))

    counts = Counter(t for r in scored for t in r.get("tickers", []) + r.get("topics", []))
    alerted = {a["topic"] for a in alerts}
    # Names that alerted first, then the busiest.
    ranked = sorted(counts, key=lambda t: (t not in alerted, -counts[t], t))
    topics = ranked[:TIMELINE_TOPICS]
    if topics:
        save("ticker_windows", _ticker_windows_figure(plt, scored, alerts, topics))

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


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def _table(header: list[str], rows: list[list], cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><tr>{head}</tr>{body}</table>'


def _sections(summary: dict, alerts: list[dict], images: dict[str, str], scorecard) -> list[tuple[str, str, str]]:
    """(anchor, heading, HTML) per report section, in reading order."""

    def img(name: str) -> str:
        return f'<img alt="{name}" src="data:image/png;base64,{images[name]}">' if name in images else ""

    latency = summary.get("latency_ms", {})
    figures = [
        ["messages scored", f"{summary['messages']:,}"],
        ["labelled", f"{summary['labelled']:,}"],
        ["accuracy", _pct(summary.get("accuracy"))],
        ["macro-F1", f"{summary['macro_f1']:.3f}" if "macro_f1" in summary else "–"],
        ["throughput", f"{summary['throughput_msgs_per_s']:,.1f} msg/s" if "throughput_msgs_per_s" in summary else "–"],
        ["latency p50 / p99", f"{latency['p50']:,.0f} ms / {latency['p99']:,.0f} ms" if latency else "–"],
        ["alerts", f"{summary['alerts']:,}"],
        ["dead letters", f"{sum(summary['dead_letters'].values()):,}"],
        ["model", ", ".join(f"{m} ({n:,})" for m, n in summary["models"].items())],
    ]
    sections = [("summary", "Summary", _table(["", ""], figures, "figures"))]
    if scorecard is not None:
        sections.append(_scorecard_section(scorecard))
    if "per_class" in summary:
        per_class = [
            [label, _pct(m["precision"]), _pct(m["recall"]), f"{m['f1']:.3f}", f"{m['support']:,}"]
            for label, m in summary["per_class"].items()
        ]
        sections.append(
            (
                "accuracy",
                "Accuracy",
                _table(["class", "precision", "recall", "F1", "support"], per_class) + img("confusion_matrix"),
            )
        )
    if "entities" in summary:
        sections.append(_entities_section(summary["entities"], img("entity_accuracy")))
    if latency:
        rows = [[q, f"{latency[q]:,.0f} ms"] for q in ("p50", "p95", "p99")]
        sections.append(
            ("latency", "Latency (Kafka timestamp to scored record)", _table(["", ""], rows) + img("latency"))
        )
    sections.append(("throughput", "Throughput", img("throughput")))
    sections.append(("tickers", "Tickers", img("ticker_windows")))
    sections.append(_alerts_section(alerts))
    letters = [[reason, f"{n:,}"] for reason, n in sorted(summary["dead_letters"].items(), key=lambda x: -x[1])]
    sections.append(
        ("dead-letters", "Dead letters", _table(["reason", "messages"], letters) if letters else "<p>none</p>")
    )
    return sections


def _entities_section(entities: dict, chart: str) -> tuple[str, str, str]:
    d = entities["disagreeing"]
    figures = [
        ["labelled entities / linked to a ticker", f"{entities['labelled']:,} / {entities['linked']:,}"],
        ["accuracy (linked)", _pct(entities["accuracy"])],
        ["the message's label copied (same entities)", _pct(entities["message_label_accuracy"])],
        [f"where a text's entities disagree ({d['entities']:,})", _pct(d["accuracy"])],
        ["there, the message's label copied", _pct(d["message_label_accuracy"])],
    ]
    ranked = list(entities["per_ticker"].items())[:ENTITY_TABLE_TICKERS]
    per_ticker = [[t, f"{m['entities']:,}", _pct(m["accuracy"])] for t, m in ranked]
    unlinked = ", ".join(f"{name} ({n})" for name, n in entities["unlinked"].items()) or "none"
    return (
        "entities",
        "Entity sentiment",
        _table(["", ""], figures, "figures")
        + chart
        + _table(["ticker", "entities", "accuracy"], per_ticker)
        + f"<p>Most frequent unlinked entities: {html.escape(unlinked)}</p>",
    )


def _scorecard_section(scorecard) -> tuple[str, str, str]:
    rows = [
        [
            r["event"],
            r["ticker"],
            r["rule"],
            f"min {r['scripted'].removesuffix(' min')}",
            f"min {r['fired_min']:.0f}" if r["fired_at"] else "MISSED",
            f"min {r['resolved_min']:.0f}" if r.get("resolved_at") else "–",
        ]
        for r in scorecard.found
    ]
    rows += [
        [
            r["event"],
            r["ticker"],
            f"{r['rule']} (must not fire)",
            r["scripted"],
            "silent" if r["fired_at"] is None else f"FIRED min {r['fired_min']:.0f}",
            "–",
        ]
        for r in scorecard.silent
    ]
    rows += [["false alert", a["topic"], a["rule"], "–", a["fired_at"][11:16], ""] for a in scorecard.false_alerts]
    rows += [[event, "", "skipped: the model has no head for it", "", "", ""] for event in scorecard.skipped]
    verdict = "every scripted alert fired, no false alert" if scorecard.passed else "the run missed its script"
    table = _table(["scripted event", "ticker", "rule", "scripted", "fired", "resolved"], rows)
    return "scorecard", "Scorecard", f"<p>{verdict}</p>" + table


def _alerts_section(alerts: list[dict]) -> tuple[str, str, str]:
    rows = [
        [
            a["topic"],
            a["rule"],
            a["severity"],
            a["window_start"][:16].replace("T", " "),
            (a.get("resolved_at") or "firing")[:16].replace("T", " "),
            a["summary"],
        ]
        for a in sorted(alerts, key=lambda a: a["window_start"])
    ]
    return "alerts", "Alerts", _table(["ticker", "rule", "severity", "fired (window)", "resolved", "summary"], rows)


STYLE = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1050px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.2em}td,th{padding:3px 12px;border-bottom:1px solid #ddd;text-align:left}
th{background:#f4f4f4}table.figures td:first-child{color:#666}img{max-width:100%}section{margin-bottom:1.5em}"""


def write_report(
    run_id: str, scored: list[dict], alerts: list[dict], letters: Counter, output: Path, scorecard=None
) -> Path:
    output.mkdir(parents=True, exist_ok=True)
    summary = {"run_id": run_id, **summarise(scored, alerts, letters)}
    images = plots(scored, alerts, summary, output)
    if scorecard is not None:
        summary["scorecard"] = {
            "passed": scorecard.passed,
            "found": scorecard.found,
            "silent": scorecard.silent,
            "skipped": scorecard.skipped,
            "false": scorecard.false_alerts,
        }
    (output / "summary.json").write_text(json.dumps(summary, indent=2))
    body = "".join(
        f'<section id="{anchor}"><h2>{html.escape(heading)}</h2>{content}</section>'
        for anchor, heading, content in _sections(summary, alerts, images, scorecard)
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>finsent report {html.escape(run_id)}</title>
<style>{STYLE}</style></head><body><h1>finsent report: run {html.escape(run_id)}</h1>{body}</body></html>"""
    path = output / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


def report(settings: Settings, run_id: str, output: Path, source: str = "elasticsearch", scorecard=None) -> Path:
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
    return write_report(run_id, scored, alerts, dead_letters(settings, run_id), output, scorecard)
