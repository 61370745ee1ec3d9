"""Shadow evaluation's pure core: which scored records a candidate model scores, and how its result
sits beside the serving model's (no Kafka, no model: the stage in stages/shadow.py runs them).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime

import numpy as np

from .schemas import LABELS, ScoredRecord, ShadowEntity, ShadowRecord


def sampled(record_id: str, share: float) -> bool:
    """Whether ``record_id`` is in the sample: a stable hash of the id, so every replay and every
    worker picks the same records, and a larger share keeps every record a smaller one picked."""
    if share >= 1.0:
        return True
    digest = hashlib.blake2b(record_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < share


def spans_of(record: ScoredRecord) -> list[tuple[int, int]]:
    """The entity mentions the candidate's entity head reads: those with a place in the text."""
    return [tuple(e.span) for e in record.entities if e.span]


def compare(
    record: ScoredRecord,
    message: np.ndarray,
    entities: np.ndarray,
    candidate_version: str,
    candidate_ms: float,
    processed_at: datetime,
) -> ShadowRecord:
    """The candidate's result for ``record``: ``message`` its message probabilities, ``entities``
    one row per spanned mention (in ``spans_of`` order); a ticker without a span takes the
    candidate's message label, as it does in serving."""
    probabilities = {label: round(float(p), 6) for label, p in zip(LABELS, message, strict=True)}
    candidate_label = max(probabilities, key=probabilities.get)
    rows = iter(entities)
    shadow_entities = []
    for entity in record.entities:
        own = next(rows) if entity.span else None
        label = LABELS[int(np.argmax(own))] if own is not None else candidate_label
        shadow_entities.append(ShadowEntity(ticker=entity.ticker, serving_label=entity.label, candidate_label=label))
    return ShadowRecord(
        id=record.id,
        text=record.text,
        published_at=record.published_at,
        tickers=record.tickers,
        topics=record.topics,
        label_true=record.label_true,
        run_id=record.run_id,
        serving_label=record.label,
        serving_probabilities=record.probabilities,
        serving_model_version=record.model_version,
        serving_inference_ms=record.inference_ms,
        candidate_label=candidate_label,
        candidate_probabilities=probabilities,
        candidate_model_version=candidate_version,
        candidate_inference_ms=round(candidate_ms, 3),
        agree=candidate_label == record.label,
        entities=shadow_entities,
        processed_at=processed_at,
    )


def agreement(records: Sequence[ShadowRecord | dict]) -> dict:
    """Agreement rate and the (serving, candidate) label counts of a set of shadow records."""
    matrix = {s: {c: 0 for c in LABELS} for s in LABELS}
    for r in records:
        serving, candidate = (
            (r.serving_label, r.candidate_label)
            if isinstance(r, ShadowRecord)
            else (
                r["serving_label"],
                r["candidate_label"],
            )
        )
        matrix[serving][candidate] += 1
    total = sum(sum(row.values()) for row in matrix.values())
    agreed = sum(matrix[label][label] for label in LABELS)
    return {"records": total, "agreement": agreed / total if total else None, "matrix": matrix}
