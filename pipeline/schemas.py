"""The records finsent moves around, declared once.

``RawMessage`` is what producers write to the raw topic (JSON, UTF-8). Later stages add the
scored, aggregate, alert and dead-letter records here.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

LABELS: tuple[str, ...] = ("negative", "neutral", "positive")
Label = Literal["negative", "neutral", "positive"]
# Label spellings accepted in labelled files and replays; the Twitter Financial News ids.
LABEL_ALIASES = {
    "negative": "negative",
    "neg": "negative",
    "bearish": "negative",
    "neutral": "neutral",
    "neu": "neutral",
    "positive": "positive",
    "pos": "positive",
    "bullish": "positive",
}
TWITTER_LABELS = {"0": "negative", "1": "positive", "2": "neutral"}
# The topic head's classes: the Twitter Financial News topic set's 20 labels, in its id order.
TOPICS: tuple[str, ...] = (
    "Analyst Update",
    "Fed | Central Banks",
    "Company | Product News",
    "Treasuries | Corporate Debt",
    "Dividend",
    "Earnings",
    "Energy | Oil",
    "Financials",
    "Currencies",
    "General News | Opinion",
    "Gold | Metals | Materials",
    "IPO",
    "Legal | Regulation",
    "M&A | Investments",
    "Macro",
    "Markets",
    "Politics",
    "Personnel Change",
    "Stock Commentary",
    "Stock Movement",
)


def content_id(text: str, source: str | None = None) -> str:
    """A stable id for a message that came without one: same source and text, same id."""
    digest = hashlib.sha256(f"{source or ''}\x1f{text}".encode()).hexdigest()
    return digest[:32]


MAX_NAME_CHARS = 64  # a ticker or topic name


class EntityLabel(BaseModel):
    """An evaluation replay's ground truth for one entity: its sentiment where the text names it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    entity: str = Field(max_length=256)
    span: tuple[int, int]  # character offsets of the entity in the text
    label: Label


class RawMessage(BaseModel):
    """One piece of text to classify, as read from the raw topic."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=False, frozen=True)

    id: str = Field(default="", max_length=512)
    text: str
    source: str | None = Field(default=None, max_length=256)
    published_at: datetime | None = None
    topics: list[str] = Field(default_factory=list)
    tickers: list[str] = Field(default_factory=list)
    lang: str | None = Field(default=None, max_length=16)
    url: str | None = Field(default=None, max_length=4096)
    # Ground truth and replay run, only present in evaluation replays.
    label: Label | None = None
    entity_labels: list[EntityLabel] = Field(default_factory=list, max_length=64)
    run_id: str | None = Field(default=None, max_length=128)

    @field_validator("id")
    @classmethod
    def _id_fits_elasticsearch(cls, value: str) -> str:
        # The id becomes the document _id, which Elasticsearch caps at 512 bytes: a longer one
        # would make it refuse the whole bulk request, batch-mates included.
        if len(value.encode("utf-8")) > 512:
            raise ValueError("is longer than 512 bytes in UTF-8")
        return value

    @field_validator("text")
    @classmethod
    def _text_not_blank(cls, text: str) -> str:
        if not text.strip():
            raise ValueError("text is empty")
        return text

    @field_validator("published_at", mode="before")
    @classmethod
    def _rfc3339(cls, value: object) -> object:
        # Accept RFC 3339 strings only (not epoch numbers, which are ambiguous in s vs ms).
        if value is None or isinstance(value, datetime):
            return value
        if not isinstance(value, str):
            raise ValueError("published_at must be an RFC 3339 string such as 2024-05-01T12:00:00Z")
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise ValueError(f"published_at {value!r} is not an RFC 3339 timestamp") from None

    @field_validator("published_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("published_at needs a time zone offset (e.g. Z or +02:00)")
        return value.astimezone(UTC) if value is not None else None

    @field_validator("topics", "tickers")
    @classmethod
    def _clean_list(cls, values: list[str]) -> list[str]:
        cleaned = [v.strip() for v in values if v.strip()]
        if len(cleaned) > 64:
            raise ValueError("at most 64 entries are allowed")
        # Names become metric labels, table keys and parts of aggregate/alert _ids (512 bytes).
        for i, name in enumerate(cleaned):
            if len(name) > MAX_NAME_CHARS:
                raise ValueError(f"entry {i} is {len(name):,} characters long; at most {MAX_NAME_CHARS} are allowed")
            if not name.isprintable():
                raise ValueError(f"entry {i} contains control characters")
        return cleaned

    @model_validator(mode="after")
    def _entity_labels_in_text(self) -> RawMessage:
        for i, truth in enumerate(self.entity_labels):
            start, end = truth.span
            if not 0 <= start < end <= len(self.text):
                raise ValueError(
                    f"entity_labels[{i}] span {list(truth.span)} is outside the text ({len(self.text)} characters)"
                )
        return self

    @model_validator(mode="after")
    def _fill_id(self) -> RawMessage:
        if not self.id:
            object.__setattr__(self, "id", content_id(self.text, self.source))
        return self

    @classmethod
    def from_payload(cls, payload: dict, kafka_timestamp_ms: int | None = None) -> RawMessage:
        """Validates a decoded JSON object; a missing ``published_at`` takes the Kafka timestamp."""
        message = cls.model_validate(payload)
        if message.published_at is None and kafka_timestamp_ms is not None:
            ts = datetime.fromtimestamp(kafka_timestamp_ms / 1000, tz=UTC)
            message = message.model_copy(update={"published_at": ts})
        return message


class EntitySentiment(BaseModel):
    """One company a message names, with its own sentiment (the entity head's, or the message's
    where the text does not name it: ``sentiment_of``)."""

    model_config = ConfigDict(extra="forbid")

    ticker: str
    mention: str | None = None  # the text as written; None for a ticker given only in `tickers`
    span: tuple[int, int] | None = None  # character offsets of the mention in the text
    source: Literal["cashtag", "dictionary", "text", "field"]
    label: Label
    scores: dict[str, float]
    sentiment_score: float  # p(positive) - p(negative)
    sentiment_of: Literal["entity", "message"]


class InferredTopic(BaseModel):
    model_config = ConfigDict(extra="forbid")

    topic: str
    score: float


class ScoredRecord(BaseModel):
    """A raw message with its classification, as written to the scored topic and Elasticsearch."""

    model_config = ConfigDict(extra="forbid")

    id: str
    text: str
    source: str | None = None
    published_at: datetime
    topics: list[str] = Field(default_factory=list)
    tickers: list[str] = Field(default_factory=list)
    lang: str | None = None
    url: str | None = None
    label_true: Label | None = None  # the replay's ground truth, when present
    entity_labels_true: list[EntityLabel] = Field(default_factory=list)  # an entity replay's truth
    label: Label
    probabilities: dict[str, float]
    sentiment_score: float  # p(positive) - p(negative), in [-1, 1]
    # Each ticker's own sentiment; explicit topics plus the topic head's, above
    # FINSENT_TOPIC_MIN_SCORE, are in `topics`, the inferred ones with their scores here.
    entities: list[EntitySentiment] = Field(default_factory=list)
    inferred_topics: list[InferredTopic] = Field(default_factory=list)
    model_version: str
    processed_at: datetime
    inference_ms: float | None = None  # the batch's inference time per message scored in it
    latency_ms: float  # published_at -> processed_at
    kafka_latency_ms: float | None = None  # Kafka timestamp -> processed_at
    truncated: bool = False
    duplicate_of: str | None = None  # id of the first copy of a syndicated text
    # Seconds published_at lies ahead of processed_at when beyond FINSENT_MAX_CLOCK_SKEW_S: the
    # record is scored and indexed but not windowed (its time cannot be trusted).
    clock_skew_s: float | None = None
    extra: dict | None = None  # unknown input fields, when configured to keep them
    run_id: str | None = None


class ShadowEntity(BaseModel):
    """One ticker's label from each model (the candidate's from its entity head when it has one)."""

    ticker: str
    serving_label: Label
    candidate_label: Label


class ShadowRecord(BaseModel):
    """A scored record as the candidate model scores it, beside the serving model's result
    (shadow topic and index; never the serving outputs)."""

    model_config = ConfigDict(extra="forbid")

    id: str
    text: str
    published_at: datetime
    tickers: list[str] = Field(default_factory=list)
    topics: list[str] = Field(default_factory=list)
    label_true: Label | None = None
    run_id: str | None = None
    serving_label: Label
    serving_probabilities: dict[str, float]
    serving_model_version: str
    serving_inference_ms: float | None = None  # the serving batch's inference time per message
    candidate_label: Label
    candidate_probabilities: dict[str, float]
    candidate_model_version: str
    candidate_inference_ms: float  # the candidate batch's inference time per message
    agree: bool
    entities: list[ShadowEntity] = Field(default_factory=list)
    processed_at: datetime


DeadLetterReason = Literal[
    "not_utf8",
    "invalid_json",
    "not_an_object",
    "missing_text",
    "empty_text",
    "wrong_type",
    "invalid_field",
    "es_rejected",
    "processing_error",
    "too_large",
]
DEAD_LETTER_REASONS: tuple[str, ...] = get_args(DeadLetterReason)


class DeadLetter(BaseModel):
    """Input that could not be processed, with why and where it came from."""

    reason: DeadLetterReason
    detail: str
    payload: str
    payload_encoding: Literal["utf-8", "base64"]
    topic: str
    partition: int
    offset: int
    kafka_timestamp_ms: int | None = None
    failed_at: datetime


class ValidatedMessage(BaseModel):
    """A decoded raw message on its way to classification (internal topic, keyed by fingerprint)."""

    message: RawMessage
    truncated: bool = False
    extra: dict | None = None
    kafka_timestamp_ms: int | None = None
    origin_topic: str
    origin_partition: int
    origin_offset: int


class WindowItem(BaseModel):
    """One scored record for one topic/ticker on the internal window topic, keyed by that name.

    Short wire names: there is one item per record and name. ``source`` names the upstream stream
    whose event time runs forward (by-fingerprint partition ``:`` raw partition); ``offset`` and
    ``raw_offset`` are the record's offsets there, which recognise a repeat exactly."""

    model_config = ConfigDict(populate_by_name=True, frozen=True)

    topic: str
    id: str
    time: float = Field(alias="t")  # event time, epoch seconds
    score: float
    label: Label
    source: str = Field(alias="src")
    offset: int | None = Field(default=None, alias="o")
    raw_offset: int | None = Field(default=None, alias="ro")

    def encode(self) -> bytes:
        return self.model_dump_json(by_alias=True, exclude_none=True).encode()


class WindowTick(BaseModel):
    """A wall-clock heartbeat the worker writes into each window partition it owns."""

    tick: float

    def encode(self) -> bytes:
        return self.model_dump_json().encode()


def parse_window_event(value: bytes) -> WindowItem | WindowTick:
    """Raises ``pydantic.ValidationError`` for anything else (the topic is internal: a bug)."""
    if value.startswith(b'{"tick"'):
        return WindowTick.model_validate_json(value)
    return WindowItem.model_validate_json(value)


class WindowAggregate(BaseModel):
    """One closed window of one topic/ticker (aggregates topic and index; ``id`` makes it idempotent)."""

    id: str  # topic|window|start epoch seconds
    topic: str
    window: str  # "1m", "15m"
    window_kind: Literal["tumbling", "hopping"]
    window_s: int
    start: datetime
    end: datetime
    messages: int
    sentiment_mean: float | None
    share_negative: float
    share_neutral: float
    share_positive: float
    baseline_sentiment: float | None  # before this window
    baseline_messages: float | None
    sentiment_z: float | None
    volume_z: float | None
    late_records: int = 0  # records too late for their window, seen since the previous aggregate


class Alert(BaseModel):
    """An alert episode; the same ``id`` is written again when it resolves."""

    id: str  # rule|topic|start of the window that fired it
    rule: str
    kind: str
    severity: Literal["info", "warning", "page"]
    topic: str
    status: Literal["firing", "resolved"]
    window: str
    window_start: datetime
    fired_at: datetime
    resolved_at: datetime | None = None
    value: float
    threshold: float
    messages: int
    summary: str
