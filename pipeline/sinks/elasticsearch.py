"""Elasticsearch sink: index template, idempotent bulk writes, retry with backoff.

Documents are indexed with ``_id`` = message id, so redeliveries and replays overwrite instead
of duplicating. While Elasticsearch is unreachable or overloaded, ``write`` keeps retrying with
exponential backoff and does not return: the worker stops consuming (backpressure) and Kafka
offsets stay uncommitted, so nothing is lost. Documents Elasticsearch rejects for what they
contain (mapping errors) come back to the caller to be dead-lettered. The template uses only
core mappings, so it works on the integration-test distribution and on a full node alike.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from elasticsearch import ApiError, AsyncElasticsearch, TransportError
from elasticsearch.helpers import async_streaming_bulk

from .. import metrics
from ..config import Settings

log = logging.getLogger(__name__)


def _retryable(status: int | None) -> bool:
    """Overload and server-side failures pass; a 4xx other than 429 is about the request itself."""
    return status is None or status == 429 or status >= 500


SCORED_MAPPINGS = {
    "dynamic": False,  # unknown fields are kept in _source, never mapped: no mapping explosions
    "properties": {
        "id": {"type": "keyword"},
        "text": {"type": "text"},
        "source": {"type": "keyword"},
        "published_at": {"type": "date"},
        "processed_at": {"type": "date"},
        "topics": {"type": "keyword"},
        "tickers": {"type": "keyword"},
        "lang": {"type": "keyword"},
        "url": {"type": "keyword", "index": False},
        "label": {"type": "keyword"},
        "label_true": {"type": "keyword"},
        "probabilities": {
            "properties": {"negative": {"type": "float"}, "neutral": {"type": "float"}, "positive": {"type": "float"}}
        },
        "sentiment_score": {"type": "float"},
        "model_version": {"type": "keyword"},
        "latency_ms": {"type": "float"},
        "kafka_latency_ms": {"type": "float"},
        "truncated": {"type": "boolean"},
        "duplicate_of": {"type": "keyword"},
        "run_id": {"type": "keyword"},
    },
}


AGGREGATE_MAPPINGS = {
    "dynamic": False,
    "properties": {
        "id": {"type": "keyword"},
        "topic": {"type": "keyword"},
        "window": {"type": "keyword"},
        "window_kind": {"type": "keyword"},
        "window_s": {"type": "integer"},
        "start": {"type": "date"},
        "end": {"type": "date"},
        "messages": {"type": "integer"},
        "sentiment_mean": {"type": "float"},
        "share_negative": {"type": "float"},
        "share_neutral": {"type": "float"},
        "share_positive": {"type": "float"},
        "baseline_sentiment": {"type": "float"},
        "baseline_messages": {"type": "float"},
        "sentiment_z": {"type": "float"},
        "volume_z": {"type": "float"},
        "late_records": {"type": "integer"},
    },
}

ALERT_MAPPINGS = {
    "dynamic": False,
    "properties": {
        "id": {"type": "keyword"},
        "rule": {"type": "keyword"},
        "kind": {"type": "keyword"},
        "severity": {"type": "keyword"},
        "topic": {"type": "keyword"},
        "status": {"type": "keyword"},
        "window": {"type": "keyword"},
        "window_start": {"type": "date"},
        "fired_at": {"type": "date"},
        "resolved_at": {"type": "date"},
        "value": {"type": "float"},
        "threshold": {"type": "float"},
        "messages": {"type": "integer"},
        "summary": {"type": "text"},
    },
}

# index suffix -> mappings; each gets an index template `<prefix>-<suffix>`.
INDICES = {"scored": SCORED_MAPPINGS, "aggregates": AGGREGATE_MAPPINGS, "alerts": ALERT_MAPPINGS}


def index_name(settings: Settings, suffix: str) -> str:
    return f"{settings.es_index_prefix}-{suffix}"


def scored_index(settings: Settings) -> str:
    return index_name(settings, "scored")


class _Backoff:
    """Exponential wait between retries, shown as backpressure while it lasts."""

    def __init__(self, max_delay_s: float):
        self.delay, self.max_delay_s = 0.5, max_delay_s

    async def wait(self, what: str, reason) -> None:
        metrics.ES_ERRORS.labels("unavailable").inc()
        metrics.ES_BACKPRESSURE.set(1)
        log.warning("Elasticsearch %s failed (%s); retrying in %.1fs", what, reason, self.delay)
        await asyncio.sleep(self.delay)
        self.delay = min(self.delay * 2, self.max_delay_s)

    def done(self) -> None:
        metrics.ES_BACKPRESSURE.set(0)


@dataclass
class Rejected:
    doc_id: str
    reason: str


class ElasticsearchSink:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.index = scored_index(settings)
        self.client = AsyncElasticsearch(
            **settings.es_client_kwargs(),
            request_timeout=settings.es_request_timeout_s,
            retry_on_timeout=False,
            max_retries=0,
        )

    async def install_template(self) -> None:
        for suffix, mappings in INDICES.items():
            name = index_name(self.settings, suffix)
            body = {
                "index_patterns": [f"{name}*"],
                "priority": 200,
                # A 5 s refresh costs Elasticsearch far less CPU than the default 1 s and is still
                # near-real-time for dashboards; tests and reports refresh explicitly.
                "template": {
                    "settings": {"number_of_shards": 1, "number_of_replicas": 0, "refresh_interval": "5s"},
                    "mappings": mappings,
                },
            }
            await self._retry(
                lambda name=name, body=body: self.client.indices.put_index_template(name=name, **body), "template"
            )

    async def _retry(self, call, what: str):
        backoff = _Backoff(self.settings.es_retry_max_backoff_s)
        while True:
            try:
                result = await call()
                backoff.done()
                return result
            except (TransportError, ApiError) as exc:
                if isinstance(exc, ApiError) and not _retryable(exc.status_code):
                    raise
                await backoff.wait(what, exc)

    async def write(self, documents: list[dict], index: str | None = None) -> list[Rejected]:
        """Indexes every document (``_id`` = its ``id``) into the scored index or ``index``, or
        returns it as rejected; retries everything else until it lands."""
        index = index or self.index
        started = time.perf_counter()
        pending = {doc["id"]: doc for doc in documents}
        rejected: list[Rejected] = []
        backoff = _Backoff(self.settings.es_retry_max_backoff_s)
        while pending:
            actions = [
                {"_op_type": "index", "_index": index, "_id": doc_id, "_source": doc} for doc_id, doc in pending.items()
            ]
            retry_later: dict[str, dict] = {}
            failure: Exception | None = None
            try:
                async for ok, item in async_streaming_bulk(
                    self.client, actions, chunk_size=500, raise_on_error=False, max_retries=0
                ):
                    result = item["index"]
                    doc_id = result["_id"]
                    if ok:
                        pending.pop(doc_id, None)
                    elif _retryable(result.get("status")):
                        retry_later[doc_id] = pending[doc_id]
                    else:
                        error = result.get("error", {})
                        reason = (
                            f"{error.get('type', 'error')}: {error.get('reason', '')}"
                            if isinstance(error, dict)
                            else str(error)
                        )
                        rejected.append(Rejected(doc_id, reason))
                        metrics.ES_ERRORS.labels("rejected").inc()
                        pending.pop(doc_id, None)
            except ApiError as exc:
                if not _retryable(exc.status_code):  # the whole request was refused for what it holds
                    rejected += [Rejected(doc_id, f"bulk request refused: {exc.message}") for doc_id in pending]
                    metrics.ES_ERRORS.labels("rejected").inc(len(pending))
                    pending.clear()
                    continue
                failure, retry_later = exc, pending
            except (TimeoutError, TransportError, OSError) as exc:
                failure, retry_later = exc, pending
            if retry_later:
                await backoff.wait("bulk", failure or f"{len(retry_later)} documents refused for now")
        backoff.done()
        metrics.ES_BULK.observe(time.perf_counter() - started)
        return rejected

    async def close(self) -> None:
        await self.client.close()
