"""Index, bulk-index and search documents in the real Elasticsearch through the Python client."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

from elasticsearch import Elasticsearch, helpers


def test_bulk_index_and_search(local_stack, settings, unique):
    es = Elasticsearch(**settings.es_client_kwargs(), request_timeout=30)
    index = f"test-docs-{unique}"
    es.indices.create(
        index=index,
        mappings={
            "properties": {
                "text": {"type": "text"},
                "ticker": {"type": "keyword"},
                "score": {"type": "float"},
                "published_at": {"type": "date"},
            }
        },
    )
    docs = [
        {
            "_index": index,
            "_id": f"doc-{i}",
            "_source": {
                "text": f"Company {i} reports {'record profit' if i % 2 else 'heavy losses'}",
                "ticker": "AAPL" if i % 3 == 0 else "MSFT",
                "score": (i % 2) - 0.5,
                "published_at": f"2024-05-01T12:{i:02d}:00Z",
            },
        }
        for i in range(40)
    ]
    ok, errors = helpers.bulk(es, docs, refresh="wait_for")
    assert ok == 40 and not errors
    # Re-sending the same ids replaces documents instead of duplicating them.
    helpers.bulk(es, docs[:10], refresh="wait_for")
    assert es.count(index=index)["count"] == 40

    hits = es.search(
        index=index,
        query={"bool": {"filter": [{"term": {"ticker": "AAPL"}}], "must": [{"match": {"text": "profit"}}]}},
        size=50,
    )["hits"]
    ids = {h["_id"] for h in hits["hits"]}
    assert ids == {f"doc-{i}" for i in range(40) if i % 3 == 0 and i % 2}
    agg = es.search(
        index=index,
        size=0,
        aggs={"by_ticker": {"terms": {"field": "ticker"}, "aggs": {"mean": {"avg": {"field": "score"}}}}},
    )
    buckets = {b["key"]: b["doc_count"] for b in agg["aggregations"]["by_ticker"]["buckets"]}
    assert buckets == {"AAPL": 14, "MSFT": 26}
    es.indices.delete(index=index)


def _unavailable() -> float:
    from pipeline import metrics

    return metrics.ES_ERRORS.labels("unavailable")._value.get()


async def _write_through_an_outage(sink, index: str | None, end_outage) -> list:
    """Starts a write as a stage does (templates, then the documents, to ``index`` or routed as
    scored records), waits (on a condition) until it has been refused as an outage twice, checks
    it is still waiting, ends the outage and returns what the write returned."""
    before = _unavailable()
    documents = [{"id": "a", "text": "held"}, {"id": "b", "text": "held"}]

    async def write_as_a_stage():
        await sink.ensure_template()
        return await sink.write(documents, index=index)

    write = asyncio.ensure_future(write_as_a_stage())
    deadline = time.monotonic() + 60
    while _unavailable() < before + 2 and not write.done() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert not write.done(), f"the write returned during the outage: {write.result()}"
    assert _unavailable() >= before + 2
    await end_outage()
    return await asyncio.wait_for(write, 60)


def test_a_closed_or_deleted_index_is_an_outage_not_a_rejection(local_stack, settings, unique):
    """An index an operator closed, or deleted with auto-create off, refuses every document: the
    sink backs off (the stage stops consuming, nothing is committed or dead-lettered) and writes
    them once the index is back."""
    from elasticsearch import AsyncElasticsearch

    from pipeline.sinks.elasticsearch import ElasticsearchSink

    settings = settings.model_copy(update={"es_retry_max_backoff_s": 0.5})
    closed, missing = f"test-closed-{unique}", f"test-missing-{unique}"

    async def scenario():
        sink = ElasticsearchSink(settings)
        es = AsyncElasticsearch(**settings.es_client_kwargs(), request_timeout=30)
        try:
            await es.indices.create(index=closed)
            await es.indices.close(index=closed)
            rejected = await _write_through_an_outage(sink, closed, lambda: es.indices.open(index=closed))
            assert rejected == []
            await es.indices.refresh(index=closed)
            assert (await es.count(index=closed))["count"] == 2

            await es.cluster.put_settings(persistent={"action.auto_create_index": f"-{missing},+*"})
            rejected = await _write_through_an_outage(
                sink, missing, lambda: es.cluster.put_settings(persistent={"action.auto_create_index": None})
            )
            assert rejected == []
            await es.indices.refresh(index=missing)
            assert (await es.count(index=missing))["count"] == 2
        finally:
            await es.cluster.put_settings(persistent={"action.auto_create_index": None})
            await es.indices.delete(index=f"{closed},{missing}", ignore_unavailable=True)
            await es.close()
            await sink.close()

    asyncio.run(scenario())


async def _delete_all(es, prefix: str) -> None:
    names = list((await es.indices.get_alias(index=f"{prefix}-*", allow_no_indices=True)).body)
    if names:  # by name: wildcard deletes are refused (action.destructive_requires_name)
        await es.indices.delete(index=",".join(names), ignore_unavailable=True)


def test_dated_indices_alias_redelivery_and_retention(local_stack, settings, unique):
    """Each document lands in the index of its event day, read through one alias; a redelivery
    processed on a later day overwrites it there; retention deletes whole days past each kind's
    bound and nothing else."""
    from elasticsearch import AsyncElasticsearch

    from pipeline.sinks.elasticsearch import ElasticsearchSink

    prefix = f"test-dated-{unique}"
    settings = settings.model_copy(
        update={"es_index_prefix": prefix, "es_retention_days": 30, "es_summary_retention_days": 400}
    )
    now = datetime.now(UTC)
    today = now.date()

    def record(doc_id: str, published: datetime, processed: datetime) -> dict:
        return {
            "id": doc_id,
            "text": doc_id,
            "published_at": published.isoformat(),
            "processed_at": processed.isoformat(),
        }

    def day(days_ago: int) -> str:
        return f"{today - timedelta(days=days_ago):%Y.%m.%d}"

    async def scenario():
        sink = ElasticsearchSink(settings)
        es = AsyncElasticsearch(**settings.es_client_kwargs(), request_timeout=30)
        try:
            await sink.install_template()
            documents = [
                record("fresh", now, now),
                record("ten-days", now - timedelta(days=10), now),
                record("ancient", datetime(1999, 1, 1, tzinfo=UTC), now),  # not trusted: today's index
            ]
            assert await sink.write(documents) == []
            # The same record again, processed a day later (a redelivery after a crash): same index.
            assert await sink.write([record("ten-days", now - timedelta(days=10), now + timedelta(days=1))]) == []
            await es.indices.refresh(index=f"{prefix}-*")
            assert (await es.count(index=f"{prefix}-scored"))["count"] == 3
            placed = {
                h["_id"]: h["_index"] for h in (await es.search(index=f"{prefix}-scored", size=10))["hits"]["hits"]
            }
            assert placed == {
                "fresh": f"{prefix}-scored-{day(0)}",
                "ten-days": f"{prefix}-scored-{day(10)}",
                "ancient": f"{prefix}-scored-{day(0)}",
            }

            # Days past retention (30 scored, 400 summaries), days within it, and names that are not days.
            for name in (
                f"{prefix}-scored-{day(31)}",
                f"{prefix}-scored-2020.01.01",
                f"{prefix}-scored-{day(29)}",
                f"{prefix}-scored-notaday",
                f"{prefix}-aggregates-{day(401)}",
                f"{prefix}-aggregates-{day(100)}",
                f"{prefix}-alerts-{day(399)}",
            ):
                await es.indices.create(index=name)
            expected = sorted(
                [f"{prefix}-scored-{day(31)}", f"{prefix}-scored-2020.01.01", f"{prefix}-aggregates-{day(401)}"]
            )
            assert sorted(await sink.delete_expired(dry_run=True)) == expected
            assert (await es.indices.exists(index=expected[0])).body  # a dry run deletes nothing
            assert sorted(await sink.delete_expired()) == expected
            left = set((await es.indices.get_alias(index=f"{prefix}-*")).body)
            assert left == {
                f"{prefix}-scored-{day(0)}",
                f"{prefix}-scored-{day(10)}",
                f"{prefix}-scored-{day(29)}",
                f"{prefix}-scored-notaday",
                f"{prefix}-aggregates-{day(100)}",
                f"{prefix}-alerts-{day(399)}",
            }
            assert (await es.count(index=f"{prefix}-scored"))["count"] == 3
            settings_of = await es.indices.get_settings(index=f"{prefix}-scored-{day(0)}")
            index_settings = settings_of[f"{prefix}-scored-{day(0)}"]["settings"]["index"]
            assert index_settings["number_of_replicas"] == str(settings.es_number_of_replicas)
        finally:
            await _delete_all(es, prefix)
            await es.close()
            await sink.close()

    asyncio.run(scenario())


def test_an_index_from_before_dated_indices_holds_documents_back_not_dead_letters(local_stack, settings, unique):
    """A concrete ``<prefix>-scored`` index (an older layout) blocks the alias: documents wait as
    in an outage and land once an operator moves it away."""
    from elasticsearch import AsyncElasticsearch

    from pipeline.sinks.elasticsearch import ElasticsearchSink

    prefix = f"test-legacy-{unique}"
    settings = settings.model_copy(update={"es_index_prefix": prefix, "es_retry_max_backoff_s": 0.5})

    async def scenario():
        sink = ElasticsearchSink(settings)
        es = AsyncElasticsearch(**settings.es_client_kwargs(), request_timeout=30)
        try:
            await es.indices.create(index=f"{prefix}-scored")
            rejected = await _write_through_an_outage(sink, None, lambda: es.indices.delete(index=f"{prefix}-scored"))
            assert rejected == []
            await es.indices.refresh(index=f"{prefix}-scored")
            assert (await es.count(index=f"{prefix}-scored"))["count"] == 2
        finally:
            await _delete_all(es, prefix)
            await es.close()
            await sink.close()

    asyncio.run(scenario())
