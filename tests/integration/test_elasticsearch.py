"""Index, bulk-index and search documents in the real Elasticsearch through the Python client."""

from __future__ import annotations

import asyncio
import time

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


async def _write_through_an_outage(sink, index: str, end_outage) -> list:
    """Starts a write, waits (on a condition) until it has been refused as an outage twice, checks
    it is still waiting, ends the outage and returns what the write returned."""
    before = _unavailable()
    write = asyncio.ensure_future(sink.write([{"id": "a", "text": "held"}, {"id": "b", "text": "held"}], index=index))
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
