"""The classify stage's decisions, without Kafka: which messages of a batch to score, the scored
records, and the items each record sends to the window stage.

De-duplication: copies of one text share a fingerprint and meet in one partition. The first
copy is scored; later copies within the horizon reuse its scores and name it in
``duplicate_of``. A redelivered message (same id) reuses its own first scores too: every copy of
a record (Kafka, Elasticsearch, windows) must carry the same scores, whatever batch it came in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

from .enrich import CompanyDictionary, enrich
from .schemas import LABELS, ScoredRecord, ValidatedMessage, WindowItem

Scores = dict  # {"id", "label", "probabilities", "at", "model_version"}: a first copy's scores


@dataclass
class Plan:
    """For each item of a batch (by index): scored now, or reusing other scores."""

    to_score: list[int] = field(default_factory=list)
    copy_of: dict[int, int | Scores] = field(default_factory=dict)  # an index in the batch, or stored scores
    redelivered: set[int] = field(default_factory=set)  # the same message again, not a copy


def plan_batch(
    messages: Sequence[tuple[ValidatedMessage, str]],
    stored: Callable[[str], Scores | None],
    now_s: float,
    horizon_s: float,
) -> Plan:
    """``messages``: (message, fingerprint) in offset order; ``stored``: fingerprint -> the scores
    of its first copy, if any was seen."""
    plan = Plan()
    first_in_batch: dict[str, int] = {}
    for i, (valid, fp) in enumerate(messages):
        seen = stored(fp)
        first = first_in_batch.get(fp)
        if seen and seen["id"] == valid.message.id:
            plan.copy_of[i] = seen
            plan.redelivered.add(i)
        elif seen and now_s - seen["at"] <= horizon_s:
            plan.copy_of[i] = seen
        elif first is not None:
            plan.copy_of[i] = first
            if messages[first][0].message.id == valid.message.id:
                plan.redelivered.add(i)
        else:
            first_in_batch[fp] = i
            plan.to_score.append(i)
    return plan


def first_scores(
    plan: Plan,
    messages: Sequence[tuple[ValidatedMessage, str]],
    probabilities: np.ndarray,
    now_s: float,
    model_version: str,
) -> dict[int, Scores]:
    """Index -> scores, for the items scored now (rows of ``probabilities`` in ``to_score`` order)."""
    scores = {}
    for row, i in enumerate(plan.to_score):
        probs = {label: float(p) for label, p in zip(LABELS, probabilities[row], strict=False)}
        scores[i] = {
            "id": messages[i][0].message.id,
            "label": max(probs, key=probs.get),
            "probabilities": probs,
            "at": now_s,
            "model_version": model_version,
        }
    return scores


def scored_records(
    plan: Plan,
    messages: Sequence[tuple[ValidatedMessage, str]],
    scores: dict[int, Scores],
    processed_at: datetime,
    model_version: str,
    dictionary: CompanyDictionary,
    max_clock_skew_s: float,
) -> list[ScoredRecord]:
    records = []
    for i, (valid, _fp) in enumerate(messages):
        first = plan.copy_of.get(i)
        entry = scores[i] if i in scores else (scores[first] if isinstance(first, int) else first)
        original = i in scores or i in plan.redelivered
        duplicate_of = None if original else entry["id"]
        records.append(
            scored_record(valid, entry, duplicate_of, processed_at, model_version, dictionary, max_clock_skew_s)
        )
    return records


def scored_record(
    valid: ValidatedMessage,
    entry: Scores,
    duplicate_of: str | None,
    processed_at: datetime,
    model_version: str,
    dictionary: CompanyDictionary,
    max_clock_skew_s: float,
) -> ScoredRecord:
    message = valid.message
    tickers, topics = enrich(message.text, message.tickers, message.topics, dictionary)
    probs = entry["probabilities"]
    published = message.published_at or processed_at
    kafka_latency = None
    if valid.kafka_timestamp_ms is not None:
        kafka_latency = max(0.0, processed_at.timestamp() * 1000 - valid.kafka_timestamp_ms)
    ahead_s = (published - processed_at).total_seconds()
    return ScoredRecord(
        id=message.id,
        text=message.text,
        source=message.source,
        published_at=published,
        topics=topics,
        tickers=tickers,
        lang=message.lang,
        url=message.url,
        label_true=message.label,
        label=entry["label"],
        probabilities=probs,
        sentiment_score=probs["positive"] - probs["negative"],
        model_version=entry.get("model_version", model_version),
        processed_at=processed_at,
        latency_ms=max(0.0, (processed_at - published).total_seconds() * 1000),
        kafka_latency_ms=kafka_latency,
        truncated=valid.truncated,
        duplicate_of=duplicate_of,
        clock_skew_s=ahead_s if ahead_s > max_clock_skew_s else None,
        extra=valid.extra,
        run_id=message.run_id,
    )


def window_items(record: ScoredRecord, valid: ValidatedMessage, partition: int, offset: int) -> list[WindowItem]:
    """One item per topic/ticker the record mentions; none when its time is not trustworthy.

    Event time runs forward within one raw partition, and the decode stage keeps that order on
    each by-fingerprint partition, so the window stage tracks progress per pair of partitions
    (``source``): per by-fingerprint partition alone, a raw partition that lags (a backlog, a
    re-read after a hole) would look like progress going back, and its records like late ones."""
    if record.clock_skew_s is not None:  # an untrustworthy time must not move stream time
        return []
    source = f"{partition}:{valid.origin_partition}"
    return [
        WindowItem(
            topic=name,
            id=record.id,
            time=record.published_at.timestamp(),
            score=record.sentiment_score,
            label=record.label,
            source=source,
            offset=offset,
            raw_offset=valid.origin_offset,
        )
        for name in dict.fromkeys(record.tickers + record.topics)
    ]
