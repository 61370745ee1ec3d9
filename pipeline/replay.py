"""Replay a labelled or historical file into the raw topic, to evaluate a model on a live stream.

Rows come from Financial PhraseBank, the Twitter Financial News CSV, an entity-level file (SEntFiN's
CSV or text,entity,label: one message per text, carrying each entity's label and span), or any
CSV/JSONL with a text column and optional label, time, tickers, topics, source and id columns. With timestamps, the
original gaps are kept, divided by ``speedup``, and ``published_at`` is the original time (so
windows and alerts are those the live stream would have produced); without them, messages go
out at a fixed ``rate`` with synthetic, increasing ``published_at`` from ``start``.

Every message carries the run id and its label (for ``finsent report``). Message ids are
``<run id>:<row>``: sending the same run twice sends the same ids, which the worker recognises
(Elasticsearch ``_id``, window repeat detection) instead of counting twice. Bad rows are counted
and reported, never fatal.
"""

from __future__ import annotations

import csv
import hashlib
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pydantic import ValidationError

from .clients import kafka_producer
from .progress import Progress
from .schemas import LABEL_ALIASES, TWITTER_LABELS, EntityLabel, RawMessage

FORMATS = ("phrasebank", "twitter", "entities", "csv", "jsonl")
TIME_COLUMNS = ("published_at", "timestamp", "created_at", "date", "time")


class ReplayError(ValueError):
    """The file cannot be replayed at all (missing, unknown format, no text column)."""


@dataclass
class ReplayRow:
    row: int  # line number in the file
    text: str
    label: str | None = None
    published_at: datetime | None = None
    tickers: list[str] = field(default_factory=list)
    topics: list[str] = field(default_factory=list)
    source: str | None = None
    entity_labels: list[EntityLabel] = field(default_factory=list)


@dataclass
class ReplayResult:
    run_id: str
    sent: int
    bad_rows: Counter
    seconds: float
    first_published: datetime | None
    last_published: datetime | None


def default_run_id(path: Path) -> str:
    """Same file, same run id: a replay sent twice is recognised as the same run."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return f"{path.stem}-{digest.hexdigest()[:8]}"


def detect_format(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".jsonl") or name.endswith(".ndjson"):
        return "jsonl"
    if name.endswith(".txt"):
        return "phrasebank"
    if name.endswith(".csv"):
        with open(path, encoding="utf-8", errors="replace", newline="") as handle:
            header = next(csv.reader(handle), [])
        if {"Title", "Decisions"} <= set(header) or {"text", "entity", "label"} <= set(header):
            return "entities"
        return "twitter" if header == ["text", "label"] else "csv"
    raise ReplayError(f"{path}: cannot tell the format from the name; use --format {'|'.join(FORMATS)}")


def _label(raw, twitter: bool) -> str:
    value = str(raw).strip().lower()
    label = TWITTER_LABELS.get(value) if twitter and value.isdigit() else LABEL_ALIASES.get(value)
    if label is None:
        raise ValueError(f"unknown label {raw!r}")
    return label


def _time(raw) -> datetime:
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        return datetime.fromtimestamp(raw / 1000 if raw > 1e11 else raw, tz=UTC)
    value = datetime.fromisoformat(str(raw).strip().replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _names(raw) -> list[str]:
    if raw is None or raw == "":
        return []
    if isinstance(raw, list):
        return [str(v) for v in raw]
    return [v.strip() for v in str(raw).replace(";", ",").split(",") if v.strip()]


def read_rows(
    path: Path | str,
    fmt: str | None = None,
    text_column: str = "text",
    label_column: str = "label",
    time_column: str | None = None,
) -> tuple[list[ReplayRow], Counter]:
    """Rows in file order (sorted by time when the file has times), and bad rows by reason."""
    path = Path(path)
    if not path.is_file():
        raise ReplayError(f"{path}: no such file")
    fmt = fmt or detect_format(path)
    if fmt == "phrasebank":
        return _phrasebank_rows(path)
    if fmt == "entities":
        return _entity_rows(path)
    bad: Counter = Counter()
    rows: list[ReplayRow] = []
    handle, records = _open_records(path, fmt, text_column)
    with handle:
        try:
            for number, record in records:
                row = _row(number, record, fmt, text_column, label_column, time_column)
                if isinstance(row, ReplayRow):
                    rows.append(row)
                elif row:
                    bad[row] += 1
        except UnicodeDecodeError:
            raise ReplayError(f"{path}: not UTF-8 (around row {len(rows) + sum(bad.values()) + 2})") from None
    if rows and all(r.published_at is not None for r in rows):
        rows.sort(key=lambda r: r.published_at)
    else:
        for r in rows:
            r.published_at = None
    return rows, bad


def _phrasebank_rows(path: Path) -> tuple[list[ReplayRow], Counter]:
    bad: Counter = Counter()
    rows: list[ReplayRow] = []
    for number, raw in enumerate(path.read_bytes().decode("latin-1").splitlines(), start=1):
        text, sep, label = raw.rpartition("@")
        if not raw.strip():
            continue
        try:
            if not sep or not text.strip():
                raise ValueError("no text@label")
            rows.append(ReplayRow(number, text.strip(), _label(label, False)))
        except ValueError as exc:
            bad[str(exc).split(" '")[0]] += 1
    return rows, bad


def _entity_rows(path: Path) -> tuple[list[ReplayRow], Counter]:
    """One row per text of an entity-level file, with every entity's label at its span."""
    from training.data import BadDataError, by_text, load_entity_file

    bad: Counter = Counter()
    try:
        examples = load_entity_file(path, skip_bad_rows=True, bad_rows=bad)
    except BadDataError as exc:
        raise ReplayError(str(exc)) from None
    rows = [
        ReplayRow(
            mentions[0].line,
            text,
            entity_labels=[EntityLabel(entity=m.entity, span=(m.start, m.end), label=m.label) for m in mentions],
        )
        for text, mentions in by_text(examples).items()
    ]
    return rows, bad


def _open_records(path: Path, fmt: str, text_column: str):
    """(open file, iterator of (row number, CSV row dict or JSONL line))."""
    if fmt in ("twitter", "csv"):
        handle = open(path, encoding="utf-8", errors="strict", newline="")
        reader = csv.DictReader(handle)
        try:
            header = reader.fieldnames or []
        except UnicodeDecodeError:
            handle.close()
            raise ReplayError(f"{path}:1: not UTF-8") from None
        if text_column not in header:
            handle.close()
            raise ReplayError(f"{path}:1: no {text_column!r} column (columns: {', '.join(header)})")
        return handle, ((reader.line_num, row) for row in reader)
    if fmt == "jsonl":
        handle = open(path, "rb")
        return handle, ((n, line) for n, line in enumerate(handle, start=1))
    raise ReplayError(f"{path}: unknown format {fmt!r}")


def _row(number: int, record, fmt: str, text_column: str, label_column: str, time_column: str | None):
    """A ReplayRow, the reason the record is bad, or None for a blank line."""
    if fmt == "jsonl":
        if not record.strip():
            return None
        try:
            record = json.loads(record)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return "invalid JSON"
        if not isinstance(record, dict):
            return "not an object"
    text = record.get(text_column)
    if not isinstance(text, str) or not text.strip():
        return "empty text"
    try:
        label = record.get(label_column)
        label = _label(label, fmt == "twitter") if label not in (None, "") else None
    except ValueError:
        return "unknown label"
    column = time_column or next((c for c in TIME_COLUMNS if record.get(c) not in (None, "")), None)
    try:
        published = _time(record[column]) if column and record.get(column) not in (None, "") else None
    except (ValueError, OverflowError, OSError):
        return "invalid time"
    tickers, topics = _names(record.get("tickers")), _names(record.get("topics"))
    try:  # a JSONL row may carry each entity's label, as an entity file does
        entity_labels = [EntityLabel.model_validate(e) for e in record.get("entity_labels") or []]
    except (ValidationError, TypeError):
        return "invalid entity_labels"
    source = record.get("source") or None
    return ReplayRow(number, text.strip(), label, published, tickers, topics, source, entity_labels)


def messages(
    rows: list[ReplayRow], run_id: str, rate: float, start: datetime, spacing_s: float | None = None
) -> list[tuple[float, dict]]:
    """(seconds after the start to send it, raw message) for each row; ``rate`` applies when the
    rows have no times, and is the speed-up factor when they do. Synthetic times are ``spacing_s``
    apart (default 1 / rate: event time then runs like the wall clock)."""
    out = []
    timed = bool(rows) and rows[0].published_at is not None
    first = rows[0].published_at if timed else None
    for i, row in enumerate(rows):
        if timed:
            offset = (row.published_at - first).total_seconds() / rate
            published = row.published_at
        else:
            offset = i / rate
            published = start + timedelta(seconds=i * spacing_s if spacing_s else offset)
        message = RawMessage(
            id=f"{run_id}:{row.row}",
            text=row.text,
            source=row.source or "replay",
            published_at=published,
            tickers=row.tickers,
            topics=row.topics,
            label=row.label,
            entity_labels=row.entity_labels,
            run_id=run_id,
        )
        out.append((offset, message.model_dump(mode="json", exclude_none=True)))
    return out


def replay(
    settings,
    path: Path | str,
    *,
    speedup: float | None = None,
    rate: float | None = None,
    run_id: str | None = None,
    limit: int | None = None,
    fmt: str | None = None,
    text_column: str = "text",
    label_column: str = "label",
    time_column: str | None = None,
    start: datetime | None = None,
    spacing_s: float | None = None,
    progress: bool = True,
) -> ReplayResult:
    """Sends the file to the raw topic at the requested pace; returns what was sent."""
    path = Path(path)
    rows, bad = read_rows(path, fmt, text_column, label_column, time_column)
    rows = rows[:limit] if limit else rows
    if not rows:
        raise ReplayError(f"{path}: nothing to replay ({dict(bad) or 'empty file'})")
    timed = rows[0].published_at is not None
    if timed and rate and not speedup:
        raise ReplayError(f"{path} has timestamps: use --speedup (or --format to ignore them)")
    pace = (speedup or 1.0) if timed else (rate or 100.0)
    run_id = run_id or default_run_id(path)
    schedule = messages(rows, run_id, pace, start or datetime.now(UTC), spacing_s)
    producer = kafka_producer(settings, acks="all", linger_ms=20, value_serializer=lambda v: json.dumps(v).encode())
    began = time.monotonic()
    with Progress(len(schedule), f"replay {run_id}", unit="msg", enabled=progress) as bar:
        for offset, message in schedule:
            delay = began + offset - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            producer.send(settings.topic_raw, value=message)
            bar.update()
        producer.flush(timeout=120)
    producer.close()
    published = [r.published_at for r in rows if r.published_at] or [
        datetime.fromisoformat(m["published_at"].replace("Z", "+00:00")) for _, m in schedule
    ]
    return ReplayResult(run_id, len(schedule), bad, time.monotonic() - began, min(published), max(published))
