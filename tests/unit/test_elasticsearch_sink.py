"""The Elasticsearch sink's decisions (what is an outage, what a rejection, how a refused request
is split), with the bulk helper replaced by a scripted one; the real node is in the integration
tests."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta

import pytest
from elasticsearch import ApiError
from hypothesis import given
from hypothesis import strategies as st

from pipeline.config import Settings
from pipeline.sinks import elasticsearch as sink_module
from pipeline.sinks import layout
from pipeline.sinks.elasticsearch import ElasticsearchSink


class _Meta:
    def __init__(self, status: int):
        self.status = status


def api_error(status: int) -> ApiError:
    return ApiError(f"HTTP {status}", meta=_Meta(status), body={"error": {"type": "x", "reason": "y"}})


class ScriptedBulk:
    """Stands in for async_streaming_bulk: refuses whole requests as ``refuse`` says."""

    def __init__(self, refuse):
        self.refuse = refuse  # (attempt, ids) -> status to refuse the request with, or None
        self.requests: list[list[str]] = []

    def __call__(self, client, actions, **kwargs):
        ids = [a["_id"] for a in actions]
        self.requests.append(ids)
        status = self.refuse(len(self.requests), ids)

        async def results():
            if status is not None:
                raise api_error(status)
            for doc_id in ids:
                yield True, {"index": {"_id": doc_id, "status": 201}}

        return results()


@pytest.fixture
def sink(monkeypatch):
    monkeypatch.setattr(sink_module._Backoff, "wait", _no_wait)
    return ElasticsearchSink(Settings(es_hosts=["http://127.0.0.1:1"]))


async def _no_wait(self, what, reason):
    sink_module.metrics.ES_BACKPRESSURE.set(1)


def documents(n: int) -> list[dict]:
    return [{"id": f"d{i}", "text": "x"} for i in range(n)]


@pytest.mark.parametrize("status", [401, 403, 404, 408, 429, 503])
def test_a_whole_request_refused_for_credentials_load_or_a_missing_index_is_an_outage_not_a_rejection(
    sink, monkeypatch, status
):
    bulk = ScriptedBulk(lambda attempt, ids: status if attempt <= 3 else None)
    monkeypatch.setattr(sink_module, "async_streaming_bulk", bulk)
    assert asyncio.run(sink.write(documents(10))) == []
    assert len(bulk.requests) == 4 and all(len(ids) == 10 for ids in bulk.requests)


def test_a_request_too_large_is_split_until_only_the_document_at_fault_is_rejected(sink, monkeypatch):
    # 413 whenever the huge document d5 travels with others; alone, it is refused for its content (400).
    bulk = ScriptedBulk(lambda attempt, ids: (413 if len(ids) > 1 else 400) if "d5" in ids else None)
    monkeypatch.setattr(sink_module, "async_streaming_bulk", bulk)
    rejected = asyncio.run(sink.write(documents(16)))
    assert [r.doc_id for r in rejected] == ["d5"] and "HTTP 400" in rejected[0].reason
    written = {i for ids in bulk.requests if "d5" not in ids for i in ids}
    assert written == {f"d{i}" for i in range(16)} - {"d5"}


def test_a_rotated_secret_file_is_read_again_after_a_refusal(sink, monkeypatch, tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("old\n")
    monkeypatch.setenv("FINSENT_ES_PASSWORD_FILE", str(secret))
    sink.settings = Settings(es_hosts=["http://127.0.0.1:1"], es_username="u", es_password="old")

    def refuse(attempt, ids):
        if attempt == 2:
            secret.write_text("new\n")  # the operator rotates the secret while the worker waits
        return None if sink.settings.es_password.get_secret_value() == "new" else 401

    bulk = ScriptedBulk(refuse)
    monkeypatch.setattr(sink_module, "async_streaming_bulk", bulk)

    async def run():
        return await sink.write(documents(3))

    assert asyncio.run(run()) == []
    assert sink.client is not None and sink.settings.es_client_kwargs()["basic_auth"] == ("u", "new")


# --- index layout and retention (pipeline/sinks/layout.py) ---------------------------------------

_times = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
)  # any instant a producer can write


@given(event=_times, processed=_times, retention=st.integers(1, 36_500), skew=st.floats(0, 7 * 86_400))
def test_a_document_goes_to_a_day_within_its_bounds(event, processed, retention, skew):
    """Whatever time a producer writes, the index day lies in [processed - retention, processed +
    skew]: a hostile timestamp cannot create an index per day of any century."""
    day = layout.index_day(event, processed, retention, skew)
    ahead_days = (day - processed.date()).days
    assert -retention - 1 <= ahead_days <= skew / 86_400 + 1
    if -retention * 86_400 <= (event - processed).total_seconds() <= skew:
        assert day == event.date()


@given(
    event=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)),
    delays=st.lists(st.floats(0, 20 * 86_400), min_size=2, max_size=5),
)
def test_a_redelivered_record_goes_to_the_index_that_holds_it(event, delays):
    """The index follows the event time, not when the record was (re)processed, while that time is
    trusted: redeliveries overwrite one document instead of adding one in another day."""
    names = {
        layout.route(
            "fs",
            "scored",
            {"published_at": event.isoformat(), "processed_at": (event + timedelta(seconds=d)).isoformat()},
            datetime.now(UTC),
            retention_days=30,
            max_skew_s=300,
        )
        for d in delays
    }
    assert names == {f"fs-scored-{event:%Y.%m.%d}"}


@given(
    names=st.lists(
        st.one_of(
            st.builds(
                lambda kind, d: f"fs-{kind}-{d:%Y.%m.%d}",
                st.sampled_from(["scored", "aggregates", "alerts"]),
                st.dates(date(1990, 1, 1), date(2100, 1, 1)),
            ),
            st.text(max_size=30),
            st.builds(lambda d: f"fs-scored-x-{d:%Y.%m.%d}", st.dates(date(1990, 1, 1), date(2100, 1, 1))),
            st.builds(lambda d: f"other-scored-{d:%Y.%m.%d}", st.dates(date(1990, 1, 1), date(2100, 1, 1))),
        ),
        max_size=40,
    ),
    today=st.dates(date(2000, 1, 1), date(2090, 1, 1)),
    retention=st.integers(1, 3650),
)
def test_retention_deletes_only_its_own_days_past_the_bound(names, today, retention):
    doomed = layout.expired(names, "fs", "scored", today, retention)
    cutoff = today - timedelta(days=retention)
    expected = sorted(
        name
        for name in names
        if name.startswith("fs-scored-")
        and len(name) == len("fs-scored-2000.01.01")
        and name[10:].replace(".", "").isdigit()
        and datetime.strptime(name[10:], "%Y.%m.%d").date() < cutoff
    )
    assert doomed == expected


def test_retention_reads_no_more_than_a_day():
    assert layout.expired(
        ["fs-scored-2026.02.30", "fs-scored-2026.1.01", "fs-scored-2026.01.01"], "fs", "scored", date(2026, 6, 1), 30
    ) == ["fs-scored-2026.01.01"]
