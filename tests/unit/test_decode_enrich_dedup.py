"""The pure cores of the worker: decoding to messages or dead letters, enrichment, fingerprints."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.decode import MAX_DEAD_LETTER_PAYLOAD_BYTES, Decoded, Origin, decode
from pipeline.dedup import fingerprint, normalise
from pipeline.enrich import CompanyDictionary, DictionaryError, cashtags, enrich, routing_key
from pipeline.schemas import DeadLetter

ORIGIN = Origin("finsent.raw", 2, 41, 1_714_564_800_000)


@pytest.mark.parametrize(
    "payload, reason, detail",
    [
        (b"\xff\xfe", "not_utf8", "byte 0"),
        (b'{"text": ', "invalid_json", "line 1"),
        (b"42", "not_an_object", "got int"),
        (b'{"source": "x"}', "missing_text", "text: Field required"),
        (b'{"text": " \\n "}', "empty_text", "text is empty"),
        (b'{"text": ["a"]}', "wrong_type", "text"),
        (b'{"text": "x", "topics": "Earnings"}', "wrong_type", "topics"),
        (b'{"text": "x", "published_at": "soon"}', "invalid_field", "published_at"),
        (None, "missing_text", "no value"),
    ],
)
def test_bad_input_becomes_a_dead_letter_with_reason_and_origin(payload, reason, detail):
    result = decode(payload, ORIGIN)
    assert isinstance(result, DeadLetter)
    assert result.reason == reason and detail in result.detail
    assert (result.topic, result.partition, result.offset) == ("finsent.raw", 2, 41)
    if payload and reason == "not_utf8":
        assert result.payload_encoding == "base64" and base64.b64decode(result.payload) == payload
    elif payload:
        assert result.payload_encoding == "utf-8" and result.payload.encode() == payload


def test_good_input_with_truncation_and_unknown_fields():
    payload = json.dumps({"text": "a" * 50, "vendor": {"k": 1}}).encode()
    kept = decode(payload, ORIGIN, max_text_chars=20, unknown_fields="keep")
    assert isinstance(kept, Decoded)
    assert kept.truncated and kept.message.text == "a" * 20 and kept.extra == {"vendor": {"k": 1}}
    assert kept.message.published_at.year == 2024  # Kafka timestamp fallback
    ignored = decode(payload, ORIGIN, unknown_fields="ignore")
    assert not ignored.truncated and ignored.extra is None


def test_cashtags():
    assert cashtags("$AAPL up, $brk.b flat; paid $5; $MSFT. x$Y $TOOLONGX") == ["AAPL", "BRK.B", "MSFT"]


def test_enrich_order_dictionary_and_limits(tmp_path):
    names = tmp_path / "companies.csv"
    names.write_text("ticker,name\nNOK,Nokia\nBAC,Bank of America\nXX,America\n")
    dictionary = CompanyDictionary.from_csv(names)
    tickers, topics = enrich(
        "Nokia and Bank of America beat; $AAPL too", ["msft"], ["Earnings", "Earnings"], dictionary
    )
    assert tickers == ["MSFT", "AAPL", "NOK", "BAC"]  # explicit, cashtags, dictionary (longest name wins)
    assert topics == ["Earnings"]
    assert routing_key(tickers, topics, "wire") == "MSFT"
    assert routing_key([], [], None) == "unknown"
    bad = tmp_path / "bad.csv"
    bad.write_text("symbol,company\nA,B\n")
    with pytest.raises(DictionaryError, match="bad.csv:1: needs the columns"):
        CompanyDictionary.from_csv(bad)


def test_syndicated_copies_share_a_fingerprint():
    a = "Apple beats estimates &amp; raises guidance https://t.co/abc"
    b = "APPLE beats estimates & raises guidance!   https://t.co/xyz"
    assert normalise(a) == "apple beats estimates raises guidance"
    assert fingerprint(a) == fingerprint(b)
    assert fingerprint(a) != fingerprint("Apple misses estimates")


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=50),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=30,
)
MESSAGE_FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "text": JSON_VALUES | st.text(max_size=200),
        "id": JSON_VALUES,
        "published_at": JSON_VALUES | st.datetimes().map(lambda d: d.isoformat() + "Z"),
        "tickers": JSON_VALUES,
        "topics": JSON_VALUES,
        "source": JSON_VALUES,
    },
)


def _assert_total(result):
    assert isinstance(result, (Decoded, DeadLetter))
    if isinstance(result, DeadLetter):
        assert result.detail and result.reason
        assert len(result.model_dump_json()) < 1_000_000  # fits a Kafka record


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_decode_never_raises_on_any_bytes(payload):
    _assert_total(decode(payload, ORIGIN))


@settings(max_examples=300, deadline=None)
@given(MESSAGE_FIELDS | JSON_VALUES)
def test_decode_never_raises_on_any_json(value):
    _assert_total(decode(json.dumps(value).encode(), ORIGIN, unknown_fields="keep"))


@pytest.mark.parametrize(
    ("payload", "reason", "detail"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "invalid_json", "nested deeper"),
        (b'{"text": "x", "n": ' + b"9" * 5000 + b"}", "invalid_json", "unreadable value"),
        (b'{"text": "x", "published_at": "9999-12-31T23:59:59Z"}', None, None),
        (json.dumps({"text": "\x01" * 300_000}).encode(), None, None),
        (b"\x01" * 300_000, "invalid_json", "payload cut to its first 65,536 of 300,000 bytes"),
    ],
)
def test_crafted_payloads_become_messages_or_bounded_dead_letters(payload, reason, detail):
    result = decode(payload, ORIGIN)
    _assert_total(result)
    if reason is not None:
        assert isinstance(result, DeadLetter) and result.reason == reason and detail in result.detail
        # What the letter carries: the payload itself, cut to its first 64 KiB when longer.
        carried = result.payload.encode() if result.payload_encoding == "utf-8" else base64.b64decode(result.payload)
        assert carried == payload[:MAX_DEAD_LETTER_PAYLOAD_BYTES] and len(carried) <= 65_536


@pytest.mark.parametrize(
    ("names", "detail"),
    [(["A" * 65], "entry 0 is 65 characters long"), (["AAPL", "MS\x00FT"], "entry 1 contains control characters")],
)
def test_ticker_and_topic_names_are_bounded(names, detail):
    for field in ("tickers", "topics"):
        result = decode(json.dumps({"text": "x", field: names}).encode(), ORIGIN)
        assert isinstance(result, DeadLetter) and result.reason == "invalid_field" and detail in result.detail
    assert isinstance(decode(json.dumps({"text": "x", "tickers": ["A" * 64]}).encode(), ORIGIN), Decoded)


def test_dedup_entries_expire_after_the_horizon_oldest_first_per_partition():
    from pipeline.dedup import Expiry

    expiry = Expiry(horizon_s=60)
    for i in range(10):
        expiry.note(i % 2, f"fp{i}", 1000.0 + i)
    assert expiry.due(0, now_s=1000 + 59) == []
    assert expiry.due(0, now_s=1000 + 65) == [("fp0", 1000.0), ("fp2", 1002.0), ("fp4", 1004.0)]
    assert expiry.due(1, now_s=1000 + 65, limit=2) == [("fp1", 1001.0), ("fp3", 1003.0)]
    assert len(expiry) == 5
    expiry.clear()
    assert len(expiry) == 0


def test_dedup_entries_beyond_the_cap_go_oldest_first_whatever_the_horizon():
    from pipeline.dedup import Expiry

    expiry = Expiry(horizon_s=86_400, max_entries=3)
    for i in range(8):
        expiry.note(0, f"fp{i}", 1000.0 + i)
    expiry.note(1, "other", 1000.0)
    assert expiry.due(0, now_s=2000) == []  # nothing past the horizon
    assert expiry.over_cap(0, limit=2) == [("fp0", 1000.0), ("fp1", 1001.0)]
    assert expiry.over_cap(0) == [("fp2", 1002.0), ("fp3", 1003.0), ("fp4", 1004.0)]
    assert expiry.over_cap(0) == [] and expiry.over_cap(1) == []
    assert len(expiry) == 4


def test_an_entry_written_without_its_partition_is_found_where_the_producer_put_it():
    from aiokafka.partitioner import DefaultPartitioner

    from pipeline.dedup import fingerprint, fingerprint_partition

    key = fingerprint("Nokia wins a network deal")
    assert fingerprint_partition(key, 4) == DefaultPartitioner()(key.encode(), [0, 1, 2, 3], [0, 1, 2, 3])
