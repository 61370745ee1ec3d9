from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from pipeline.schemas import RawMessage, content_id


def test_minimal_message_gets_a_content_id():
    message = RawMessage.model_validate({"text": "Nokia beats estimates", "source": "wire"})
    assert message.id == content_id("Nokia beats estimates", "wire")
    assert RawMessage.model_validate({"text": "Nokia beats estimates", "source": "wire"}).id == message.id
    assert RawMessage.model_validate({"text": "Nokia misses", "source": "wire"}).id != message.id


def test_rfc3339_is_parsed_to_utc():
    message = RawMessage.model_validate({"text": "x", "published_at": "2024-05-01T14:00:00+02:00"})
    assert message.published_at == datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert (
        RawMessage.model_validate({"text": "x", "published_at": "2024-05-01T12:00:00Z"}).published_at
        == message.published_at
    )


@pytest.mark.parametrize(
    "payload, fragment",
    [
        ({"text": "   "}, "text is empty"),
        ({}, "text"),
        ({"text": 3}, "text"),
        ({"text": "x", "published_at": "yesterday"}, "not an RFC 3339"),
        ({"text": "x", "published_at": "2024-05-01T12:00:00"}, "time zone"),
        ({"text": "x", "published_at": 1714564800}, "RFC 3339 string"),
        ({"text": "x", "label": "bullish"}, "label"),
        ({"text": "x", "tickers": "AAPL"}, "tickers"),
    ],
)
def test_invalid_messages_name_the_field(payload, fragment):
    with pytest.raises(ValidationError) as exc:
        RawMessage.model_validate(payload)
    assert fragment in str(exc.value)


def test_kafka_timestamp_is_the_fallback():
    message = RawMessage.from_payload({"text": "x"}, kafka_timestamp_ms=1_714_564_800_000)
    assert message.published_at == datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    explicit = RawMessage.from_payload({"text": "x", "published_at": "2020-01-01T00:00:00Z"}, 1_714_564_800_000)
    assert explicit.published_at.year == 2020


def test_optional_fields_and_unknown_fields():
    message = RawMessage.model_validate(
        {"id": "m1", "text": "t", "tickers": [" AAPL ", ""], "topics": ["Earnings"], "lang": "en", "extra": 1}
    )
    assert message.tickers == ["AAPL"] and message.topics == ["Earnings"] and message.id == "m1"
    assert not hasattr(message, "extra")
