"""``finsent report --shadow``: whether a candidate model should replace the serving one.

Reads the shadow records (stages/shadow.py) of a replay run or a time range from Elasticsearch
and reports the agreement matrix, label flips by direction, by ticker and by topic with example
texts, accuracy and calibration of both models where the replay carried labels, the inference
time of both, the alerts each model's labels would raise (windows and rules recomputed from the
shadow records), and a verdict against the user's thresholds.
"""

from __future__ import annotations

import html
import json
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from .config import Settings
from .report import STYLE, ReportError, _pct, _png, _table
from .schemas import LABELS
from .shadow import agreement
from .sinks.elasticsearch import index_name

EXAMPLES = 3  # example texts per ticker or topic with flips
TOP = 15  # tickers and topics listed


def shadow_from_elasticsearch(
    settings: Settings, run_id: str | None = None, since: datetime | None = None, until: datetime | None = None
) -> list[dict]:
    from elasticsearch.helpers import scan

    from .clients import elasticsearch

    es = elasticsearch(settings)
    index = index_name(settings, "shadow")
    if not es.indices.exists(index=index):
        return []
    es.indices.refresh(index=index)
    filters: list[dict] = []
    if run_id:
        filters.append({"term": {"run_id": run_id}})
    if since or until:
        bounds = {k: v.isoformat() for k, v in (("gte", since), ("lte", until)) if v}
        filters.append({"range": {"processed_at": bounds}})
    query = {"query": {"bool": {"filter": filters}}}
    return [hit["_source"] for hit in scan(es, index=index, query=query, size=2000)]


def _accuracy(records: list[dict], side: str) -> float:
    return sum(r[f"{side}_label"] == r["label_true"] for r in records) / len(records)


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = 10) -> float:
    """The gap between confidence and accuracy, averaged over equal-width confidence bins."""
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        chosen = which == b
        if chosen.any():
            total += chosen.sum() * abs(confidence[chosen].mean() - correct[chosen].mean())
    return float(total / len(confidence))


def _calibration(records: list[dict], side: str) -> float:
    confidence = np.array([max(r[f"{side}_probabilities"].values()) for r in records])
    correct = np.array([r[f"{side}_label"] == r["label_true"] for r in records], dtype=float)
    return expected_calibration_error(confidence, correct)


def _flips_by(records: list[dict], field: str) -> list[dict]:
    flips: dict[str, list[dict]] = defaultdict(list)
    seen: Counter = Counter()
    for r in records:
        for name in r.get(field, []):
            seen[name] += 1
            if not r["agree"]:
                flips[name].append(r)
    rows = [
        {
            "name": name,
            "records": seen[name],
            "flips": len(flipped),
            "share": len(flipped) / seen[name],
            "directions": dict(Counter(f"{r['serving_label']}->{r['candidate_label']}" for r in flipped)),
            "examples": [r["text"][:200] for r in flipped[:EXAMPLES]],
        }
        for name, flipped in flips.items()
    ]
    return sorted(rows, key=lambda row: (-row["flips"], row["name"]))[:TOP]


def _rows(records: list[dict], side: str) -> dict[str, list[tuple[float, float, str]]]:
    """name -> (event time, score, label) as ``side``'s model saw each record: a ticker by its
    own entity label where it has one, a topic by the message's; scores are the message's
    p(positive) - p(negative) (shadow records keep labels per entity, not scores)."""
    rows: dict[str, list] = defaultdict(list)
    for r in records:
        probs = r[f"{side}_probabilities"]
        score = probs["positive"] - probs["negative"]
        t = datetime.fromisoformat(r["published_at"].replace("Z", "+00:00")).timestamp()
        own = {e["ticker"]: e[f"{side}_label"] for e in r.get("entities", [])}
        for ticker in r.get("tickers", []):
            rows[ticker].append((t, score, own.get(ticker, r[f"{side}_label"])))
        for topic in r.get("topics", []):
            if topic not in own:
                rows[topic].append((t, score, r[f"{side}_label"]))
    return rows


def _alerts(config, rules, rows: dict[str, list]) -> set[tuple[str, str, float]]:
    from . import windows
    from .alerts import apply_rules

    fired = set()
    flush = max(spec.size_s for spec in config.specs) + config.lateness_s
    for name, items in rows.items():
        state, rule_states = windows.new_state(), {}
        for t, score, label in sorted(items):
            windows.add(config, state, t, score, label)
        for window in windows.close(config, name, state, max(t for t, _s, _l in items) + flush):
            for alert in apply_rules(rules, window, rule_states):
                if alert["status"] == "firing":
                    fired.add((alert["rule"], alert["topic"], window.start))
    return fired


def alert_differences(records: list[dict], config, rules) -> dict:
    """The alert episodes each model's labels would start, windows and rules recomputed from the
    shadow records in event time (as the window stage would, with no late records)."""
    serving, candidate = (_alerts(config, rules, _rows(records, side)) for side in ("serving", "candidate"))

    def listed(keys):
        return [
            {"rule": rule, "name": name, "window_start": datetime.fromtimestamp(start, UTC).isoformat()}
            for rule, name, start in sorted(keys)
        ]

    return {
        "both": len(serving & candidate),
        "candidate_only": listed(candidate - serving),
        "serving_only": listed(serving - candidate),
    }


def _quantiles(values: list[float]) -> dict | None:
    if not values:
        return None
    return {f"p{q}": float(np.percentile(values, q)) for q in (50, 99)}


def summarise_shadow(
    records: list[dict], min_agreement: float, max_accuracy_drop: float, window_config=None, rules=()
) -> dict:
    """Figures and verdict of a set of shadow records (pure); with a window configuration and
    rules, the alerts that would differ."""
    if not records:
        raise ReportError("no shadow records to report")
    summary: dict = {
        **agreement(records),
        "serving_models": dict(Counter(r["serving_model_version"] for r in records)),
        "candidate_models": dict(Counter(r["candidate_model_version"] for r in records)),
        "flips": dict(Counter(f"{r['serving_label']}->{r['candidate_label']}" for r in records if not r["agree"])),
        "flips_by_ticker": _flips_by(records, "tickers"),
        "flips_by_topic": _flips_by(records, "topics"),
        "inference_ms": {
            "serving": _quantiles([r["serving_inference_ms"] for r in records if r.get("serving_inference_ms")]),
            "candidate": _quantiles([r["candidate_inference_ms"] for r in records]),
        },
        "thresholds": {"min_agreement": min_agreement, "max_accuracy_drop": max_accuracy_drop},
    }
    entity_pairs = [(e["serving_label"], e["candidate_label"]) for r in records for e in r.get("entities", [])]
    if entity_pairs:
        summary["entity_agreement"] = sum(s == c for s, c in entity_pairs) / len(entity_pairs)
    if window_config is not None and rules:
        summary["alerts"] = alert_differences(records, window_config, rules)
    labelled = [r for r in records if r.get("label_true")]
    reasons = []
    if summary["agreement"] < min_agreement:
        reasons.append(f"agreement {summary['agreement']:.3f} is below {min_agreement:.3f}")
    if labelled:
        serving, candidate = _accuracy(labelled, "serving"), _accuracy(labelled, "candidate")
        summary["labelled"] = len(labelled)
        summary["accuracy"] = {"serving": serving, "candidate": candidate}
        summary["calibration_error"] = {side: _calibration(labelled, side) for side in ("serving", "candidate")}
        if serving - candidate > max_accuracy_drop:
            reasons.append(
                f"accuracy drops {serving - candidate:.3f} ({serving:.3f} -> {candidate:.3f}), over {max_accuracy_drop:.3f}"
            )
    summary["verdict"] = {"promote": not reasons, "reasons": reasons}
    return summary


def _matrix_figure(summary: dict) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.array([[summary["matrix"][s][c] for c in LABELS] for s in LABELS])
    fig, ax = plt.subplots(figsize=(4.6, 3.8))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(LABELS)), LABELS)
    ax.set_yticks(range(len(LABELS)), LABELS)
    ax.set_xlabel("candidate")
    ax.set_ylabel("serving")
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, f"{count:,}", ha="center", va="center", color="white" if count > matrix.max() / 2 else "black")
    ax.set_title(f"agreement {summary['agreement']:.1%} of {summary['records']:,}")
    encoded = _png(fig)
    plt.close(fig)
    return encoded


def write_shadow_report(summary: dict, title: str, output: Path) -> Path:
    output.mkdir(parents=True, exist_ok=True)
    (output / "shadow-summary.json").write_text(json.dumps(summary, indent=2))
    verdict = summary["verdict"]
    line = "promote" if verdict["promote"] else "do not promote: " + "; ".join(verdict["reasons"])
    figures = [
        ["records compared", f"{summary['records']:,}"],
        ["serving model", ", ".join(summary["serving_models"])],
        ["candidate model", ", ".join(summary["candidate_models"])],
        ["agreement", _pct(summary["agreement"])],
        ["entity agreement", _pct(summary.get("entity_agreement"))],
    ]
    if "accuracy" in summary:
        for side in ("serving", "candidate"):
            figures.append(
                [
                    f"{side}: accuracy / calibration error",
                    f"{summary['accuracy'][side]:.3f} / {summary['calibration_error'][side]:.3f}",
                ]
            )
    for side, q in summary["inference_ms"].items():
        if q:
            figures.append([f"{side}: inference ms per message p50 / p99", f"{q['p50']:.2f} / {q['p99']:.2f}"])
    flips = [[direction, count] for direction, count in sorted(summary["flips"].items(), key=lambda kv: -kv[1])]
    sections = [
        ("verdict", "Verdict", f"<p><b>{html.escape(line)}</b></p>"),
        ("figures", "Figures", _table(["", ""], figures, "figures")),
        ("matrix", "Agreement", f'<img alt="agreement" src="data:image/png;base64,{_matrix_figure(summary)}">'),
        ("flips", "Label flips (serving -> candidate)", _table(["direction", "records"], flips)),
    ]
    for field, heading in (("flips_by_ticker", "Flips by ticker"), ("flips_by_topic", "Flips by topic")):
        rows = [
            [
                r["name"],
                r["records"],
                r["flips"],
                _pct(r["share"]),
                json.dumps(r["directions"]),
                " | ".join(r["examples"]),
            ]
            for r in summary[field]
        ]
        sections.append((field, heading, _table(["name", "records", "flips", "share", "directions", "examples"], rows)))
    if "alerts" in summary:
        alerts = summary["alerts"]
        rows = [
            ["candidate only (would fire)", a["rule"], a["name"], a["window_start"]] for a in alerts["candidate_only"]
        ]
        rows += [["serving only (would miss)", a["rule"], a["name"], a["window_start"]] for a in alerts["serving_only"]]
        note = f"<p>{alerts['both']} alert episodes start under both models.</p>"
        sections.append(("alerts", "Alerts that differ", note + _table(["", "rule", "name", "window start"], rows)))
    body = "".join(f'<section id="{a}"><h2>{html.escape(h)}</h2>{c}</section>' for a, h, c in sections)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>finsent shadow report {html.escape(title)}</title>
<style>{STYLE}</style></head><body><h1>finsent shadow report: {html.escape(title)}</h1>{body}</body></html>"""
    path = output / "shadow-report.html"
    path.write_text(page, encoding="utf-8")
    return path
