"""Index, bulk-index and search documents in the real Elasticsearch through the Python client."""

from __future__ import annotations

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
