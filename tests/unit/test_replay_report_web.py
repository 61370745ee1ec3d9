"""Replay's reading and pacing, the report's arithmetic and pictures, and the live view's state."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime

import pytest

from pipeline.replay import ReplayError, default_run_id, messages, read_rows
from pipeline.report import entity_accuracy, minute_windows, summarise, write_report
from pipeline.schemas import Alert, RawMessage, WindowAggregate
from pipeline.web import HISTORY, LiveView

START = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def test_phrasebank_and_twitter_files_replay_with_labels(data_dir):
    rows, bad = read_rows(data_dir / "financial_phrasebank/Sentences_AllAgree.txt")
    assert len(rows) > 2000 and not bad and {r.label for r in rows} == {"negative", "neutral", "positive"}
    rows, bad = read_rows(data_dir / "twitter_financial_news_sentiment/sent_train.csv")
    assert len(rows) > 9000 and rows[0].row == 2 and rows[0].label in ("negative", "neutral", "positive")
    assert all(r.published_at is None for r in rows[:10])


def test_bad_rows_are_counted_not_fatal_and_timestamps_sort(tmp_path):
    path = tmp_path / "news.jsonl"
    path.write_text(
        "\n".join(
            [
                json.dumps(
                    {
                        "text": "Later news",
                        "label": "bullish",
                        "published_at": "2024-05-01T12:00:10Z",
                        "tickers": "AAPL",
                    }
                ),
                json.dumps({"text": "Earlier news", "label": "negative", "published_at": "2024-05-01T12:00:00Z"}),
                json.dumps({"text": "", "label": "negative"}),
                "{not json",
                json.dumps({"text": "odd label", "label": "sideways"}),
                json.dumps({"text": "bad time", "published_at": "yesterday"}),
            ]
        )
        + "\n"
    )
    rows, bad = read_rows(path)
    assert [r.text for r in rows] == ["Earlier news", "Later news"]
    assert rows[1].label == "positive" and rows[1].tickers == ["AAPL"]
    assert bad == Counter({"empty text": 1, "invalid JSON": 1, "unknown label": 1, "invalid time": 1})


def test_missing_column_names_the_file(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("body,label\nhello,positive\n")
    with pytest.raises(ReplayError, match=r"x.csv:1: no 'text' column \(columns: body, label\)"):
        read_rows(path)


def test_schedule_keeps_gaps_divided_by_speedup_and_ids_are_deterministic(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("text,label,timestamp\na,positive,2024-05-01T12:00:00Z\nb,negative,2024-05-01T12:01:00Z\n")
    rows, _ = read_rows(path)
    schedule = messages(rows, "run1", 60.0, START)
    assert [offset for offset, _ in schedule] == [0.0, 1.0]  # 60 s apart, 60x faster
    assert [m["published_at"] for _, m in schedule] == ["2024-05-01T12:00:00Z", "2024-05-01T12:01:00Z"]
    again = messages(read_rows(path)[0], "run1", 60.0, START)
    assert [m["id"] for _, m in schedule] == [m["id"] for _, m in again] == ["run1:2", "run1:3"]
    for _, message in schedule:  # what the worker will accept
        parsed = RawMessage.model_validate(message)
        assert parsed.run_id == "run1" and parsed.label in ("positive", "negative")
    assert default_run_id(path) == default_run_id(path) and default_run_id(path).startswith("t-")


def test_untimed_rows_get_synthetic_increasing_times(tmp_path):
    path = tmp_path / "u.csv"
    path.write_text("text,label\na,positive\nb,negative\nc,neutral\n")
    rows, _ = read_rows(path)
    paced = messages(rows, "r", 10.0, START)
    assert [o for o, _ in paced] == [0.0, 0.1, 0.2]
    spaced = messages(rows, "r", 10.0, START, spacing_s=30)
    assert [m["published_at"] for _, m in spaced] == [
        "2024-05-01T12:00:00Z",
        "2024-05-01T12:00:30Z",
        "2024-05-01T12:01:00Z",
    ]


def scored(i: int, true: str, predicted: str, ticker: str = "AAPL") -> dict:
    probs = {"negative": 0.1, "neutral": 0.1, "positive": 0.1}
    probs[predicted] = 0.8
    return {
        "id": f"r:{i}",
        "text": "t",
        "tickers": [ticker],
        "topics": [],
        "label": predicted,
        "label_true": true,
        "probabilities": probs,
        "sentiment_score": probs["positive"] - probs["negative"],
        "published_at": f"2024-05-01T12:{i // 60:02d}:{i % 60:02d}Z",
        "processed_at": f"2024-05-01T13:00:{i % 60:02d}.{i:03d}Z",
        "kafka_latency_ms": float(10 + i),
        "model_version": "m1",
    }


def test_report_summary_and_pictures(tmp_path):
    records = [scored(i, "positive", "positive") for i in range(40)] + [
        scored(40 + i, "negative", "positive" if i < 5 else "negative", "NOK") for i in range(20)
    ]
    alerts = [
        {
            "id": "a|NOK|1",
            "rule": "negative-burst",
            "topic": "NOK",
            "severity": "page",
            "status": "resolved",
            "window_start": "2024-05-01T12:00:00Z",
            "fired_at": "2024-05-01T12:01:00Z",
            "resolved_at": "2024-05-01T12:03:00Z",
            "summary": "burst",
        }
    ]
    summary = summarise(records, alerts, Counter({"invalid_json": 2}))
    assert summary["accuracy"] == pytest.approx(55 / 60)
    assert summary["confusion_matrix"][0] == [15, 0, 5]  # negative row
    assert summary["latency_ms"]["p50"] == pytest.approx(39.5)
    assert summary["dead_letters"] == {"invalid_json": 2} and summary["alerts"] == 1
    path = write_report("r", records, alerts, Counter({"invalid_json": 2}), tmp_path / "out")
    page = path.read_text()
    for picture in ("confusion_matrix", "ticker_windows", "throughput", "latency"):
        assert (path.parent / f"{picture}.png").stat().st_size > 5000
        assert f'alt="{picture}" src="data:image/png;base64,' in page
    assert "negative-burst" in page and json.loads((path.parent / "summary.json").read_text())["run_id"] == "r"
    # Formatted for people: percentages, per-class table, dead letters as a table row.
    assert "<td>accuracy</td><td>91.7%</td>" in page
    assert "<td>negative</td><td>100.0%</td><td>75.0%</td>" in page  # precision, recall
    assert "<td>invalid_json</td><td>2</td>" in page
    assert "p50.0" not in page and "{" not in page.split("<body>")[1].split("<script")[0]


def test_an_entity_file_replays_one_message_per_text_with_each_entity_label(tmp_path):
    path = tmp_path / "entities.csv"
    path.write_text(
        "text,entity,label\n"
        "Infosys beats estimates; Wipro slumps,Infosys,positive\n"
        "Infosys beats estimates; Wipro slumps,Wipro,negative\n"
        "Gold steady,Silver,neutral\n"  # the entity is not in its text: a bad row
        "Tata Steel cuts output,Tata Steel,negative\n"
    )
    rows, bad = read_rows(path)
    assert bad == Counter({"entity does not occur in the text": 1})
    assert [(r.row, r.text) for r in rows] == [
        (2, "Infosys beats estimates; Wipro slumps"),
        (5, "Tata Steel cuts output"),
    ]
    [(_offset, first), _second] = messages(rows, "e", 10.0, START)
    assert first["entity_labels"] == [
        {"entity": "Infosys", "span": [0, 7], "label": "positive"},
        {"entity": "Wipro", "span": [25, 30], "label": "negative"},
    ]
    assert RawMessage.model_validate(first).entity_labels[1].span == (25, 30)
    with pytest.raises(ValueError, match=r"entity_labels\[0\] span \[3, 99\] is outside the text"):
        RawMessage(text="short", entity_labels=[{"entity": "x", "span": (3, 99), "label": "neutral"}])
    sentfin = tmp_path / "sentfin.csv"
    sentfin.write_text(
        "S No.,Title,Decisions,Words\n1,Infosys up; Wipro down,\"{'Infosys': 'positive', 'Wipro': 'negative'}\",4\n"
    )
    rows, bad = read_rows(sentfin)
    assert not bad and [t.label for t in rows[0].entity_labels] == ["positive", "negative"]


def entity_record(i: int, message_label: str, truths: list, found: list) -> dict:
    """A scored record of an entity replay: ``truths`` (entity, span, label), ``found`` (ticker,
    span, label) as the worker linked and scored them."""
    record = scored(i, None, message_label)
    record["entity_labels_true"] = [{"entity": e, "span": list(s), "label": lab} for e, s, lab in truths]
    record["entities"] = [
        {"ticker": t, "span": list(s) if s else None, "label": lab, "sentiment_of": "entity" if s else "message"}
        for t, s, lab in found
    ]
    return record


def test_entity_accuracy_matches_labelled_entities_by_span_per_ticker(tmp_path):
    pair = entity_record(
        0,
        "positive",
        [("Infosys", (0, 7), "positive"), ("Wipro", (25, 30), "negative")],
        [("INFY", (0, 7), "positive"), ("WIT", (25, 30), "negative")],
    )
    wrong = entity_record(
        1,
        "negative",
        [("Infosys", (0, 7), "positive"), ("Wipro", (20, 25), "neutral")],
        # Wipro linked at another place than labelled (a second mention): not its label's entity.
        [("INFY", (0, 7), "negative"), ("WIT", (40, 45), "neutral"), ("TCS", None, "neutral")],
    )
    single = entity_record(2, "negative", [("Tata Steel", (0, 10), "negative")], [("TATASTEEL", (0, 10), "negative")])
    result = entity_accuracy([pair, wrong, single])
    assert (result["labelled"], result["linked"]) == (5, 4)
    assert result["accuracy"] == pytest.approx(3 / 4)
    assert result["message_label_accuracy"] == pytest.approx(2 / 4)  # positive, negative, positive, negative
    assert result["disagreeing"] == {
        "entities": 3,
        "accuracy": pytest.approx(2 / 3),
        "message_label_accuracy": pytest.approx(1 / 3),
    }
    assert result["per_ticker"] == {
        "INFY": {"entities": 2, "accuracy": 0.5},
        "TATASTEEL": {"entities": 1, "accuracy": 1.0},
        "WIT": {"entities": 1, "accuracy": 1.0},
    }
    assert result["unlinked"] == {"Wipro": 1}
    assert entity_accuracy([scored(3, "positive", "positive")]) is None
    path = write_report("e", [pair, wrong, single], [], Counter(), tmp_path / "out")
    page = path.read_text()
    assert (path.parent / "entity_accuracy.png").stat().st_size > 5000
    assert "<td>INFY</td><td>2</td><td>50.0%</td>" in page and "Wipro (1)" in page


def test_minute_windows_include_empty_minutes_and_shares():
    records = [
        scored(0, "negative", "negative"),
        scored(1, "positive", "positive"),
        scored(150, "positive", "positive"),
    ]
    rows = minute_windows(records, "AAPL")
    assert [r["messages"] for r in rows] == [2, 0, 1]
    assert rows[0]["negative"] == 0.5 and rows[1]["sentiment"] is None
    assert rows[0]["sentiment"] == pytest.approx(0.0)
    assert minute_windows(records, "MSFT") == []


def aggregate(topic: str, minute: int, messages: int = 5) -> WindowAggregate:
    start = START.replace(minute=minute)
    return WindowAggregate(
        id=f"{topic}|1m|{minute}",
        topic=topic,
        window="1m",
        window_kind="tumbling",
        window_s=60,
        start=start,
        end=start.replace(minute=minute + 1),
        messages=messages,
        sentiment_mean=-0.2,
        share_negative=0.4,
        share_neutral=0.3,
        share_positive=0.3,
        baseline_sentiment=None,
        baseline_messages=None,
        sentiment_z=None,
        volume_z=None,
    )


def test_live_view_keeps_bounded_history_and_tracks_alert_episodes():
    view = LiveView("1m")
    view.on_windows([aggregate("AAPL", m) for m in range(30)] + [aggregate("NOK", 1, messages=9)], [], [])
    alert = Alert(
        id="a",
        rule="r",
        kind="negative_share",
        severity="page",
        topic="NOK",
        status="firing",
        window="1m",
        window_start=START,
        fired_at=START,
        value=0.9,
        threshold=0.6,
        messages=9,
        summary="s",
    )
    view.on_windows([], [alert], [])
    view.on_scored(25)
    snapshot = view.snapshot("v1", "CPUExecutionProvider", "int8")
    assert [t["topic"] for t in snapshot["topics"]] == ["NOK", "AAPL"]  # busiest first
    assert len(snapshot["topics"][1]["trend"]) == HISTORY
    assert [a["id"] for a in snapshot["active_alerts"]] == ["a"] and snapshot["scored_total"] == 25
    view.on_windows([], [alert.model_copy(update={"status": "resolved"})], ["AAPL"])
    snapshot = view.snapshot("v1", "CPUExecutionProvider", "int8")
    assert not snapshot["active_alerts"] and snapshot["recent_resolved"][0]["id"] == "a"
    assert [t["topic"] for t in snapshot["topics"]] == ["NOK"]
