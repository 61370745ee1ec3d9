"""Shadow evaluation's pure parts: sampling, the comparison record, the report's figures and
verdict, and the atomic switch behind `finsent promote`."""

from __future__ import annotations

import os
from datetime import UTC, datetime

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.promote import PromotionRefused, check_evidence, current_target, switch
from pipeline.report import ReportError
from pipeline.schemas import LABELS, ScoredRecord
from pipeline.shadow import agreement, compare, sampled, spans_of
from pipeline.shadow_report import expected_calibration_error, summarise_shadow

NOW = datetime(2026, 12, 6, 12, tzinfo=UTC)


@given(ids=st.lists(st.text(min_size=1, max_size=20), max_size=50), low=st.floats(0.01, 1), high=st.floats(0.01, 1))
def test_a_larger_sample_keeps_every_record_a_smaller_one_picked(ids, low, high):
    low, high = min(low, high), max(low, high)
    assert {i for i in ids if sampled(i, low)} <= {i for i in ids if sampled(i, high)}
    assert all(sampled(i, 1.0) for i in ids)


@pytest.mark.parametrize("share", [0.1, 0.5, 0.9])
def test_the_sample_is_the_share_asked_for(share):
    picked = sum(sampled(f"msg-{i}", share) for i in range(20_000))
    assert abs(picked / 20_000 - share) < 0.015


def _record(label="positive", entities=()) -> ScoredRecord:
    probabilities = {"negative": 0.1, "neutral": 0.2, "positive": 0.7}
    if label != "positive":
        probabilities = {"negative": 0.7, "neutral": 0.2, "positive": 0.1}
    return ScoredRecord(
        id="m1",
        text="Infosys beats estimates; Wipro slumps",
        published_at=NOW,
        tickers=["INFY", "WIT"],
        label=label,
        probabilities=probabilities,
        sentiment_score=0.6,
        entities=list(entities),
        model_version="serving-1",
        processed_at=NOW,
        inference_ms=2.5,
        latency_ms=1.0,
    )


def _entity(ticker, span, label):
    scores = {name: (0.8 if name == label else 0.1) for name in LABELS}
    return {
        "ticker": ticker,
        "mention": "x" if span else None,
        "span": span,
        "source": "dictionary" if span else "field",
        "label": label,
        "scores": scores,
        "sentiment_score": scores["positive"] - scores["negative"],
        "sentiment_of": "entity" if span else "message",
    }


def test_compare_reads_entity_rows_in_span_order_and_gives_unspanned_tickers_the_message_label():
    record = _record(
        entities=[
            _entity("INFY", (0, 7), "positive"),
            _entity("AAPL", None, "positive"),
            _entity("WIT", (25, 30), "negative"),
        ]
    )
    assert spans_of(record) == [(0, 7), (25, 30)]
    message = np.array([0.6, 0.3, 0.1])  # the candidate says negative
    entities = np.array([[0.1, 0.1, 0.8], [0.9, 0.05, 0.05]])  # INFY positive, WIT negative
    shadow = compare(record, message, entities, "candidate-2", 3.0, NOW)
    assert (shadow.serving_label, shadow.candidate_label, shadow.agree) == ("positive", "negative", False)
    assert [(e.ticker, e.serving_label, e.candidate_label) for e in shadow.entities] == [
        ("INFY", "positive", "positive"),
        ("AAPL", "positive", "negative"),
        ("WIT", "negative", "negative"),
    ]
    assert shadow.serving_inference_ms == 2.5 and shadow.candidate_model_version == "candidate-2"


def _shadow(i, serving, candidate, truth=None, tickers=("AAPL",)):
    probs = lambda label: {name: (0.8 if name == label else 0.1) for name in LABELS}  # noqa: E731
    return {
        "id": str(i),
        "text": f"text {i}",
        "tickers": list(tickers),
        "topics": [],
        "label_true": truth,
        "serving_label": serving,
        "serving_probabilities": probs(serving),
        "serving_model_version": "s1",
        "serving_inference_ms": 2.0,
        "candidate_label": candidate,
        "candidate_probabilities": probs(candidate),
        "candidate_model_version": "c1",
        "candidate_inference_ms": 3.0,
        "agree": serving == candidate,
        "entities": [],
    }


def test_the_verdict_follows_the_thresholds_and_counts_flips_by_direction_and_ticker():
    records = [_shadow(i, "positive", "positive", "positive") for i in range(8)]
    records += [
        _shadow(8, "positive", "negative", "positive", ("NOK",)),
        _shadow(9, "neutral", "negative", "neutral", ("NOK",)),
    ]
    summary = summarise_shadow(records, min_agreement=0.75, max_accuracy_drop=0.25)
    assert summary["agreement"] == 0.8 and summary["records"] == 10
    assert (
        summary["matrix"]["positive"]["negative"] == 1
        and sum(map(sum, (r.values() for r in summary["matrix"].values()))) == 10
    )
    assert summary["flips"] == {"positive->negative": 1, "neutral->negative": 1}
    assert summary["flips_by_ticker"][0]["name"] == "NOK" and summary["flips_by_ticker"][0]["share"] == 1.0
    assert summary["accuracy"] == {"serving": 1.0, "candidate": 0.8}
    assert summary["verdict"] == {"promote": True, "reasons": []}
    strict = summarise_shadow(records, min_agreement=0.9, max_accuracy_drop=0.1)
    assert strict["verdict"]["promote"] is False and len(strict["verdict"]["reasons"]) == 2
    with pytest.raises(ReportError):
        summarise_shadow([], 0.9, 0.01)


def test_agreement_of_records_as_documents_or_models_alike():
    assert agreement([_shadow(0, "neutral", "neutral"), _shadow(1, "neutral", "positive")])["agreement"] == 0.5


def test_calibration_error_is_zero_when_confidence_matches_accuracy_and_grows_with_overconfidence():
    confidence = np.full(10, 0.8)
    assert expected_calibration_error(confidence, np.array([1.0] * 8 + [0.0] * 2)) == pytest.approx(0.0)
    assert expected_calibration_error(np.full(10, 0.99), np.array([1.0] * 5 + [0.0] * 5)) == pytest.approx(0.49)


def test_the_switch_replaces_the_link_atomically_and_refuses_a_folder(tmp_path):
    old, new = tmp_path / "bundle-1", tmp_path / "bundle-2"
    old.mkdir()
    new.mkdir()
    link = tmp_path / "current"
    link.symlink_to("bundle-1")
    assert current_target(link) == old.resolve()
    switch(link, new)
    assert link.is_symlink() and current_target(link) == new.resolve()
    assert sorted(os.listdir(tmp_path)) == ["bundle-1", "bundle-2", "current"]  # no temporary left
    with pytest.raises(PromotionRefused, match="not a symbolic link"):
        current_target(old)


def test_promotion_needs_evidence_about_this_very_candidate_unless_forced():
    summary = summarise_shadow([_shadow(i, "neutral", "neutral") for i in range(5)], 0.9, 0.01)
    assert check_evidence(summary, "c1", force=False) == []
    assert "not of other-3" in check_evidence(summary, "other-3", force=False)[0]
    assert "no shadow report" in check_evidence(None, "c1", force=False)[0]
    assert check_evidence(None, "c1", force=True) == []


class _Topic:
    def get_topic_name(self):
        return "t.shadow"

    async def send(self, **kwargs):  # the stage must never write around the outbox
        raise AssertionError("a shadow record was sent outside the outbox (and its transaction)")


class _Outbox:
    exactly_once = True

    def __init__(self, log):
        self.log = log

    async def deliver(self, events, outputs):
        self.log.append(
            ("deliver", [e.value for e in events], [(e.value, o.topic.get_topic_name()) for e, o in outputs])
        )


class _Intake:
    def __init__(self, log):
        self.log = log

    def ack(self, batch):
        self.log.append(("ack", batch))

    def abandon(self, batch):
        self.log.append(("abandon", batch))


class _Sink:
    def __init__(self):
        self.documents = []

    async def ensure_template(self):
        pass

    async def write(self, documents, kind="scored", index=None):
        assert kind == "shadow"
        self.documents += documents
        return []


class _Candidate:
    class classifier:  # stands in for a Classifier instance
        model_version = "candidate-2"

        @staticmethod
        def infer(texts, spans):
            from pipeline.classify import Inference

            n = len(texts)
            return Inference(np.tile([0.1, 0.2, 0.7], (n, 1)), None, [np.zeros((len(s), 3)) for s in spans], [])


class _Event:
    def __init__(self, value: bytes):
        self.value = value


def test_the_stage_writes_only_through_the_outbox_and_acknowledges_after_it(monkeypatch):
    import asyncio

    from pipeline.config import Settings
    from pipeline.faustcompat import Batch
    from pipeline.stages.shadow import ShadowStage

    log: list = []
    sink = _Sink()
    settings = Settings(shadow_sample=1.0, shadow_max_behind_s=3600)
    stage = ShadowStage(settings, _Intake(log), _Outbox(log), _Candidate(), sink, _Topic())
    fresh = _record().model_copy(update={"processed_at": datetime.now(UTC)})
    copy = fresh.model_copy(update={"id": "m2", "duplicate_of": "m1"})
    events = [
        _Event(fresh.model_dump_json().encode()),
        _Event(b"{not a record"),
        _Event(copy.model_dump_json().encode()),
    ]
    batches = [Batch([], events[:2]), Batch([], events[2:])]
    asyncio.run(stage._deliver(batches))
    (deliver, ack_1, ack_2) = log
    assert deliver[0] == "deliver" and deliver[1] == [e.value for e in events]  # every offset, scored or not
    assert deliver[2] == [(events[0].value, "t.shadow")]  # the copy and the unreadable one: no shadow record
    assert (ack_1, ack_2) == (("ack", batches[0]), ("ack", batches[1]))
    assert [d["id"] for d in sink.documents] == ["m1"] and sink.documents[0]["candidate_label"] == "positive"


def test_alert_differences_name_the_episodes_only_one_model_would_start():
    from pipeline.alerts import Rule
    from pipeline.shadow_report import alert_differences
    from pipeline.windows import WindowConfig

    config = WindowConfig.from_seconds(60, 0, 60, lateness_s=0)
    rules = [Rule(name="burst", kind="negative_share", window="1m", threshold=0.6, min_messages=5, severity="page")]
    records = []
    for i in range(10):  # one minute of AAPL: the candidate calls it negative, the serving model neutral
        r = _shadow(i, "neutral", "negative", tickers=("AAPL",))
        r["published_at"] = f"2026-12-06T10:00:{i:02d}Z"
        records.append(r)
    for i in range(10):  # one minute of NOK both call negative; a ticker's own label counts over the message's
        r = _shadow(100 + i, "neutral", "neutral", tickers=("NOK",))
        r["published_at"] = f"2026-12-06T10:05:{i:02d}Z"
        r["entities"] = [{"ticker": "NOK", "serving_label": "negative", "candidate_label": "negative"}]
        records.append(r)
    differences = alert_differences(records, config, rules)
    assert differences["both"] == 1
    assert differences["candidate_only"] == [
        {"rule": "burst", "name": "AAPL", "window_start": "2026-12-06T10:00:00+00:00"}
    ]
    assert differences["serving_only"] == []
    summary = summarise_shadow(records, 0.0, 1.0, config, rules)
    assert summary["alerts"] == differences


def test_the_candidate_infers_on_a_thread_that_yields_the_cpu_to_serving():
    import threading

    from pipeline.config import Settings
    from pipeline.stages.shadow import ShadowStage

    stage = ShadowStage(Settings(), None, None, _Candidate(), _Sink(), _Topic())
    niceness = stage.executor.submit(lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id())).result()
    assert niceness == 19 and os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) < 19
