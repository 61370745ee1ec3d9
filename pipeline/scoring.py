"""The classify stage's decisions, without Kafka: which messages of a batch to score, the scored
records, and the items each record sends to the window stage.

De-duplication: copies of one text share a fingerprint and meet in one partition. The first
copy is scored; later copies within the horizon reuse its scores and name it in
``duplicate_of``. A redelivered message (same id) reuses its own first scores too: every copy of
a record (Kafka, Elasticsearch, windows) must carry the same scores, whatever batch it came in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

from .classify import Inference
from .enrich import CompanyDictionary, Mention, link_entities
from .schemas import LABELS, EntitySentiment, InferredTopic, ScoredRecord, ValidatedMessage, WindowItem

# A first copy's scores: {"id", "label", "probabilities", "at", "model_version"}, and from a
# three-head model "topics" ({topic: p} at or above STORED_TOPIC_SCORE) and "entities" ({ticker:
# [p per label]} for the mentions the entity head scored).
Scores = dict
STORED_TOPIC_SCORE = 0.05
MAX_NAMES = 16  # tickers, and topics, a record carries


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


def mentions_of(messages: Sequence[tuple[ValidatedMessage, str]], dictionary: CompanyDictionary) -> list[list[Mention]]:
    return [link_entities(v.message.text, v.message.tickers, dictionary, MAX_NAMES) for v, _fp in messages]


def first_scores(
    plan: Plan,
    messages: Sequence[tuple[ValidatedMessage, str]],
    inference: Inference | np.ndarray,
    now_s: float,
    model_version: str,
    mentions: Mapping[int, list[Mention]] | None = None,
    topic_labels: Sequence[str] = (),
) -> dict[int, Scores]:
    """Index -> scores, for the items scored now (rows of ``inference`` in ``to_score`` order;
    its entity rows follow the spanned ``mentions`` of each)."""
    if isinstance(inference, np.ndarray):  # message probabilities alone
        inference = Inference(inference, None, [np.zeros((0, len(LABELS)))] * len(inference), [])
    scores = {}
    for row, i in enumerate(plan.to_score):
        probs = {label: float(p) for label, p in zip(LABELS, inference.message[row], strict=False)}
        entry = {
            "id": messages[i][0].message.id,
            "label": max(probs, key=probs.get),
            "probabilities": probs,
            "at": now_s,
            "model_version": model_version,
        }
        if inference.topics is not None:
            entry["topics"] = {
                t: round(float(p), 4)
                for t, p in zip(topic_labels, inference.topics[row], strict=True)
                if p >= STORED_TOPIC_SCORE
            }
            spanned = [m for m in (mentions[i] if mentions else []) if m.span]
            entry["entities"] = {
                m.ticker: [round(float(p), 5) for p in probs_row]
                for m, probs_row, copied in zip(
                    spanned, inference.entities[row], inference.from_message[row], strict=True
                )
                if not copied
            }
        scores[i] = entry
    return scores


def scored_records(
    plan: Plan,
    messages: Sequence[tuple[ValidatedMessage, str]],
    scores: dict[int, Scores],
    processed_at: datetime,
    model_version: str,
    dictionary: CompanyDictionary,
    max_clock_skew_s: float,
    topic_min_score: float = 0.5,
    mentions: Mapping[int, list[Mention]] | None = None,
) -> list[ScoredRecord]:
    """``mentions``: the companies already linked for the items scored now (linked once: the
    entity head read their spans); the others are linked here."""
    records = []
    for i, (valid, _fp) in enumerate(messages):
        first = plan.copy_of.get(i)
        entry = scores[i] if i in scores else (scores[first] if isinstance(first, int) else first)
        original = i in scores or i in plan.redelivered
        duplicate_of = None if original else entry["id"]
        linked = mentions.get(i) if mentions else None
        records.append(
            scored_record(
                valid,
                entry,
                duplicate_of,
                processed_at,
                model_version,
                dictionary,
                max_clock_skew_s,
                topic_min_score,
                linked,
            )
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
    topic_min_score: float = 0.5,
    mentions: list[Mention] | None = None,
) -> ScoredRecord:
    message = valid.message
    probs = entry["probabilities"]
    if mentions is None:
        mentions = link_entities(message.text, message.tickers, dictionary, MAX_NAMES)
    entities = entity_sentiments(message.text, mentions, entry)
    inferred = sorted(
        ((t, p) for t, p in entry.get("topics", {}).items() if p >= topic_min_score), key=lambda tp: -tp[1]
    )
    topics = list(dict.fromkeys(message.topics + [t for t, _p in inferred]))[:MAX_NAMES]
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
        tickers=[e.ticker for e in entities],
        lang=message.lang,
        url=message.url,
        label_true=message.label,
        entity_labels_true=message.entity_labels,
        label=entry["label"],
        probabilities=probs,
        sentiment_score=probs["positive"] - probs["negative"],
        entities=entities,
        inferred_topics=[InferredTopic(topic=t, score=p) for t, p in inferred],
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


def entity_sentiments(text: str, mentions: list[Mention], entry: Scores) -> list[EntitySentiment]:
    """Each mention with the entity head's scores for it, or the message's where there are none
    (a ticker named only in the `tickers` field, a single-head model, a mention truncated away)."""
    out = []
    for m in mentions:
        own = entry.get("entities", {}).get(m.ticker) if m.span else None
        scores = dict(zip(LABELS, own, strict=True)) if own else entry["probabilities"]
        out.append(
            EntitySentiment(
                ticker=m.ticker,
                mention=m.mention(text),
                span=m.span,
                source=m.source,
                label=max(scores, key=scores.get),
                scores=scores,
                sentiment_score=scores["positive"] - scores["negative"],
                sentiment_of="entity" if own else "message",
            )
        )
    return out


def window_items(record: ScoredRecord, valid: ValidatedMessage, partition: int, offset: int) -> list[WindowItem]:
    """One item per topic/ticker the record mentions; none when its time is not trustworthy.

    Event time runs forward within one raw partition, and the decode stage keeps that order on
    each by-fingerprint partition, so the window stage tracks progress per pair of partitions
    (``source``): per by-fingerprint partition alone, a raw partition that lags (a backlog, a
    re-read after a hole) would look like progress going back, and its records like late ones."""
    if record.clock_skew_s is not None:  # an untrustworthy time must not move stream time
        return []
    source = f"{partition}:{valid.origin_partition}"
    # A ticker is windowed by its own sentiment, a topic by the message's.
    sentiment = {e.ticker: (e.label, e.sentiment_score) for e in record.entities}
    sentiment |= {t: (record.label, record.sentiment_score) for t in record.topics if t not in sentiment}
    for ticker in record.tickers:  # records written before entities existed
        sentiment.setdefault(ticker, (record.label, record.sentiment_score))
    return [
        WindowItem(
            topic=name,
            id=record.id,
            time=record.published_at.timestamp(),
            score=score,
            label=label,
            source=source,
            offset=offset,
            raw_offset=valid.origin_offset,
        )
        for name, (label, score) in sentiment.items()
    ]
