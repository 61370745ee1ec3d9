"""bytes -> RawMessage or DeadLetter. Pure: no Kafka, no I/O.

Every failure maps to one of a fixed set of reasons (bounded metric labels) plus a detail that
names the field. Over-long text is truncated and flagged, not rejected. ``decode`` never raises:
whatever a payload does (deep nesting, huge numbers, odd types), it becomes a message or a dead
letter, so one payload cannot stall its partition.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from pydantic import ValidationError

from .schemas import DeadLetter, RawMessage, ValidatedMessage

UnknownFields = Literal["keep", "ignore"]

# A dead letter keeps at most this much of the payload, so that even a payload that JSON escaping
# blows up sixfold (control characters) stays well under the producer's 1 MB record limit.
MAX_DEAD_LETTER_PAYLOAD_BYTES = 64 * 1024
# Every record a stage writes stays under this many bytes, below the producer's 1,000,000-byte
# request limit and the broker's default message.max.bytes with room for headers and the key:
# a record that would not fit becomes a dead letter instead of a send that fails for ever.
MAX_RECORD_BYTES = 900_000


def too_large(value: bytes, what: str) -> str | None:
    """Why ``value`` cannot be sent, or None when it fits."""
    if len(value) <= MAX_RECORD_BYTES:
        return None
    return f"{what} is {len(value):,} bytes once encoded, over the {MAX_RECORD_BYTES:,}-byte record limit"


@dataclass(frozen=True)
class Origin:
    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None = None


@dataclass(frozen=True)
class Decoded:
    message: RawMessage
    truncated: bool
    extra: dict | None  # unknown fields, when kept


def dead_letter(payload: bytes, origin: Origin, reason: str, detail: str) -> DeadLetter:
    if len(payload) > MAX_DEAD_LETTER_PAYLOAD_BYTES:
        detail = (
            f"{detail[:1900]} (payload cut to its first {MAX_DEAD_LETTER_PAYLOAD_BYTES:,} of {len(payload):,} bytes)"
        )
        payload = payload[:MAX_DEAD_LETTER_PAYLOAD_BYTES]
    try:
        text, encoding = payload.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        text, encoding = base64.b64encode(payload).decode("ascii"), "base64"
    return DeadLetter(
        reason=reason,
        detail=detail[:2000],
        payload=text,
        payload_encoding=encoding,
        topic=origin.topic,
        partition=origin.partition,
        offset=origin.offset,
        kafka_timestamp_ms=origin.timestamp_ms,
        failed_at=datetime.now(UTC),
    )


def _reason_for(errors: list[dict]) -> tuple[str, str]:
    first = errors[0]
    field = ".".join(str(p) for p in first["loc"]) or "message"
    detail = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'message'}: {e['msg']}" for e in errors)
    if field == "text":
        if first["type"] == "missing":
            return "missing_text", detail
        if "text is empty" in first["msg"]:
            return "empty_text", detail
    if first["type"].endswith("_type") or first["type"] in ("list_type", "dict_type"):
        return "wrong_type", detail
    return "invalid_field", detail


def decode(
    payload: bytes | None, origin: Origin, *, max_text_chars: int = 10_000, unknown_fields: UnknownFields = "ignore"
) -> Decoded | DeadLetter:
    try:
        return _decode(payload, origin, max_text_chars, unknown_fields)
    except Exception as exc:  # the contract is "never raises": anything unforeseen is a dead letter
        return dead_letter(payload or b"", origin, "invalid_field", f"cannot validate: {type(exc).__name__}: {exc}")


def _decode(payload: bytes | None, origin: Origin, max_text_chars: int, unknown_fields: UnknownFields):
    if payload is None:
        return dead_letter(b"", origin, "missing_text", "empty Kafka record (no value)")
    try:
        raw = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        return dead_letter(payload, origin, "not_utf8", f"byte {exc.start}: {exc.reason}")
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        return dead_letter(payload, origin, "invalid_json", f"line {exc.lineno} column {exc.colno}: {exc.msg}")
    except RecursionError:
        return dead_letter(payload, origin, "invalid_json", "nested deeper than the JSON parser allows")
    except ValueError as exc:  # e.g. an integer longer than Python's digit limit
        return dead_letter(payload, origin, "invalid_json", f"unreadable value: {exc}")
    if not isinstance(data, dict):
        return dead_letter(payload, origin, "not_an_object", f"expected a JSON object, got {type(data).__name__}")
    truncated = False
    text = data.get("text")
    if isinstance(text, str) and len(text) > max_text_chars:
        data = {**data, "text": text[:max_text_chars]}
        truncated = True
    try:
        message = RawMessage.from_payload(data, origin.timestamp_ms)
    except ValidationError as exc:
        reason, detail = _reason_for(exc.errors())
        return dead_letter(payload, origin, reason, detail)
    except (ValueError, OverflowError, TypeError, RecursionError) as exc:
        return dead_letter(payload, origin, "invalid_field", f"{type(exc).__name__}: {exc}")
    extra = None
    if unknown_fields == "keep":
        extra = {k: v for k, v in data.items() if k not in RawMessage.model_fields} or None
    return Decoded(message, truncated, extra)


def validated(result: Decoded, origin: Origin) -> ValidatedMessage:
    """The message on its way to classification, with where it came from."""
    return ValidatedMessage(
        message=result.message,
        truncated=result.truncated,
        extra=result.extra,
        kafka_timestamp_ms=origin.timestamp_ms,
        origin_topic=origin.topic,
        origin_partition=origin.partition,
        origin_offset=origin.offset,
    )
