"""Elasticsearch sink: index template, idempotent bulk writes, retry with backoff.

Documents are indexed with ``_id`` = message id, so redeliveries and replays overwrite instead
of duplicating. While Elasticsearch is unreachable, overloaded or refuses the worker's
credentials (401/403: a rotated password or API key), ``write`` keeps retrying with exponential
backoff and does not return: the worker stops consuming (backpressure) and Kafka offsets stay
uncommitted, so nothing is lost. On a refusal it re-reads the ``FINSENT_ES_*_FILE`` secrets, so a
rotated secret file resumes the stream without a restart. A request too large (413) or refused
as a whole for another 4xx is split until the one document at fault is found. Only documents
Elasticsearch rejects for what they contain (mapping errors) come back to the caller to be
dead-lettered. The templates use only
core mappings, so they work on the integration-test distribution and on a full node alike. Where
each document goes and when its index is deleted: ``layout``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from elasticsearch import ApiError, AsyncElasticsearch, TransportError
from elasticsearch.helpers import async_streaming_bulk

from .. import metrics
from ..config import Settings
from . import layout

log = logging.getLogger(__name__)


def _retryable(status: int | None) -> bool:
    """An outage, not the content: no answer, overload, server-side failures, refused
    credentials or permissions (401/403), which an operator fixes without touching the data, and
    a whole request answered 404/408 (an index gone with auto-create off, or a proxy in front)."""
    return status is None or status in (401, 403, 404, 408, 429) or status >= 500


# Per-document errors that say the index cannot take documents now, whatever they hold: an
# operator closed or deleted it (with auto-create off), a disk watermark blocked writes, or an
# index from before dated indices holds the alias's name (see docs/operations.md, Retention).
OUTAGE_ERRORS = frozenset(
    {"index_closed_exception", "index_not_found_exception", "cluster_block_exception", "invalid_alias_name_exception"}
)


def _item_outage(result: dict) -> bool:
    error = result.get("error")
    return _retryable(result.get("status")) or (isinstance(error, dict) and error.get("type") in OUTAGE_ERRORS)


def _refused(status: int | None) -> bool:
    return status in (401, 403)


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
        "entity_labels_true": {
            "type": "nested",
            "properties": {"entity": {"type": "keyword"}, "span": {"type": "integer"}, "label": {"type": "keyword"}},
        },
        "probabilities": {
            "properties": {"negative": {"type": "float"}, "neutral": {"type": "float"}, "positive": {"type": "float"}}
        },
        "sentiment_score": {"type": "float"},
        # Nested: a query on ticker and label must match them in the same entity, not across a
        # headline's two companies ("INFY negative" must not match "INFY up, WIPRO down").
        "entities": {
            "type": "nested",
            "properties": {
                "ticker": {"type": "keyword"},
                "mention": {"type": "keyword"},
                "span": {"type": "integer"},
                "source": {"type": "keyword"},
                "label": {"type": "keyword"},
                "scores": {
                    "properties": {
                        "negative": {"type": "float"},
                        "neutral": {"type": "float"},
                        "positive": {"type": "float"},
                    }
                },
                "sentiment_score": {"type": "float"},
                "sentiment_of": {"type": "keyword"},
            },
        },
        "inferred_topics": {
            "type": "nested",
            "properties": {"topic": {"type": "keyword"}, "score": {"type": "float"}},
        },
        "model_version": {"type": "keyword"},
        "latency_ms": {"type": "float"},
        "inference_ms": {"type": "float"},
        "kafka_latency_ms": {"type": "float"},
        "truncated": {"type": "boolean"},
        "duplicate_of": {"type": "keyword"},
        "clock_skew_s": {"type": "float"},
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

SHADOW_MAPPINGS = {
    "dynamic": False,
    "properties": {
        "id": {"type": "keyword"},
        "text": {"type": "text"},
        "published_at": {"type": "date"},
        "processed_at": {"type": "date"},
        "tickers": {"type": "keyword"},
        "topics": {"type": "keyword"},
        "label_true": {"type": "keyword"},
        "run_id": {"type": "keyword"},
        "serving_label": {"type": "keyword"},
        "serving_model_version": {"type": "keyword"},
        "serving_inference_ms": {"type": "float"},
        "candidate_label": {"type": "keyword"},
        "candidate_model_version": {"type": "keyword"},
        "candidate_inference_ms": {"type": "float"},
        "agree": {"type": "boolean"},
        "entities": {
            "type": "nested",
            "properties": {
                "ticker": {"type": "keyword"},
                "serving_label": {"type": "keyword"},
                "candidate_label": {"type": "keyword"},
            },
        },
    },
}

# kind -> mappings; each gets an index template for its dated indices and their alias.
INDICES = {
    "scored": SCORED_MAPPINGS,
    "aggregates": AGGREGATE_MAPPINGS,
    "alerts": ALERT_MAPPINGS,
    "shadow": SHADOW_MAPPINGS,
}
assert tuple(INDICES) == layout.KINDS


def index_name(settings: Settings, kind: str) -> str:
    """The alias that reads every day of ``kind``."""
    return layout.alias(settings.es_index_prefix, kind)


def retention_days(settings: Settings, kind: str) -> int:
    return settings.es_retention_days if kind in ("scored", "shadow") else settings.es_summary_retention_days


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
        self.client = self._client(settings)
        self._retired: set[asyncio.Task] = set()
        self._template_installed = False

    @staticmethod
    def _client(settings: Settings) -> AsyncElasticsearch:
        return AsyncElasticsearch(
            **settings.es_client_kwargs(),
            request_timeout=settings.es_request_timeout_s,
            retry_on_timeout=False,
            max_retries=0,
        )

    def _reread_credentials(self) -> None:
        """After a 401/403: take a rotated secret from its ``*_FILE`` if it changed."""
        try:
            fresh = self.settings.reread_secret_files()
        except Exception as exc:  # an unreadable file: keep the old secret and say why (no secret in it)
            log.warning("cannot re-read the Elasticsearch secret files: %s", exc)
            return
        if fresh.es_client_kwargs() == self.settings.es_client_kwargs():
            return
        log.warning("Elasticsearch credentials changed on disk; reconnecting with them")
        old, self.settings, self.client = self.client, fresh, self._client(fresh)
        # Closed a little later: the other stage may still have a request on it.
        task = asyncio.ensure_future(_close_later(old, 30.0))
        self._retired.add(task)
        task.add_done_callback(self._retired.discard)

    async def ensure_template(self) -> None:
        """Installs the index templates once per worker (waits out an Elasticsearch outage)."""
        if not self._template_installed:
            await self.install_template()
            self._template_installed = True

    async def install_template(self) -> None:
        prefix = self.settings.es_index_prefix
        for kind, mappings in INDICES.items():
            name = layout.alias(prefix, kind)
            await self._wait_for_alias_name(name)
            body = {
                "index_patterns": [layout.pattern(prefix, kind)],
                "priority": 200,
                # A 5 s refresh costs Elasticsearch far less CPU than the default 1 s and is still
                # near-real-time for dashboards; tests and reports refresh explicitly.
                "template": {
                    "settings": {
                        "number_of_shards": 1,
                        "number_of_replicas": self.settings.es_number_of_replicas,
                        "refresh_interval": "5s",
                    },
                    "mappings": mappings,
                    "aliases": {name: {}},
                },
            }
            await self._retry(
                lambda name=name, body=body: self.client.indices.put_index_template(name=name, **body), "template"
            )

    async def _wait_for_alias_name(self, name: str) -> None:
        """An index from before dated indices may hold the alias's name: the stage waits, as in an
        outage (nothing is consumed, lost or dead-lettered), until an operator moves it away."""
        backoff = _Backoff(self.settings.es_retry_max_backoff_s)
        while await self._retry(lambda: self._concrete_index(name), "index check"):
            if backoff.delay == 0.5:
                log.error(
                    "Elasticsearch index %s predates dated indices and holds its alias's name: nothing is "
                    "indexed until it is moved away (docs/operations.md, Retention)",
                    name,
                )
            await backoff.wait("alias", f"index {name} holds the alias's name")
        backoff.done()

    async def _concrete_index(self, name: str) -> bool:
        """Whether ``name`` is an index itself rather than the alias of dated ones."""
        if not await self.client.indices.exists(index=name):
            return False
        return not await self.client.indices.exists_alias(name=name)

    async def delete_expired(self, today=None, dry_run: bool = False) -> list[str]:
        """Deletes the dated indices past their kind's retention; returns their names."""
        prefix = self.settings.es_index_prefix
        today = today or datetime.now(UTC).date()
        doomed: list[str] = []
        for kind in layout.KINDS:
            names = await self._retry(
                lambda kind=kind: self.client.indices.get_alias(
                    index=layout.pattern(prefix, kind), expand_wildcards="open,closed", allow_no_indices=True
                ),
                "index listing",
            )
            doomed += layout.expired(names, prefix, kind, today, retention_days(self.settings, kind))
        if doomed and not dry_run:
            for name in doomed:  # one by one: a long comma list could pass the URL length limit
                await self._retry(
                    lambda name=name: self.client.indices.delete(index=name, ignore_unavailable=True), "retention"
                )
                log.info("retention: deleted Elasticsearch index %s", name)
            metrics.ES_INDICES_DELETED.inc(len(doomed))
        return doomed

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
                if isinstance(exc, ApiError) and _refused(exc.status_code):
                    self._reread_credentials()
                await backoff.wait(what, exc)

    def route(self, kind: str, document: dict, now: datetime) -> str:
        settings = self.settings
        return layout.route(
            settings.es_index_prefix, kind, document, now, retention_days(settings, kind), settings.max_clock_skew_s
        )

    async def write(self, documents: list[dict], kind: str = "scored", index: str | None = None) -> list[Rejected]:
        """Indexes every document (``_id`` = its ``id``) into its kind's dated index (or into
        ``index``), or returns it as rejected; retries everything else until it lands."""
        started = time.perf_counter()
        now = datetime.now(UTC)
        pending = {doc["id"]: (index or self.route(kind, doc, now), doc) for doc in documents}
        rejected: list[Rejected] = []
        backoff = _Backoff(self.settings.es_retry_max_backoff_s)
        while pending:
            retry_later, failure = await self._bulk(pending, rejected)
            if retry_later:
                if failure is None:
                    failure = f"{len(retry_later)} documents refused for now"
                await backoff.wait("bulk", failure)
        backoff.done()
        metrics.ES_BULK.observe(time.perf_counter() - started)
        return rejected

    async def _bulk(self, pending: dict[str, tuple[str, dict]], rejected: list[Rejected]):
        """One pass over ``pending`` (id -> (index, document)): written and rejected documents
        leave it; returns what is left to retry after a wait and why."""
        actions = [
            {"_op_type": "index", "_index": index, "_id": i, "_source": doc} for i, (index, doc) in pending.items()
        ]
        retry_later: dict[str, tuple[str, dict]] = {}
        refused = False
        try:
            async for ok, item in async_streaming_bulk(
                self.client, actions, chunk_size=500, raise_on_error=False, max_retries=0
            ):
                result = item["index"]
                doc_id = result["_id"]
                if ok:
                    pending.pop(doc_id, None)
                elif _item_outage(result):
                    refused = refused or _refused(result.get("status"))
                    retry_later[doc_id] = pending[doc_id]
                else:
                    rejected.append(Rejected(doc_id, _item_reason(result.get("error", {}))))
                    metrics.ES_ERRORS.labels("rejected").inc()
                    pending.pop(doc_id, None)
        except ApiError as exc:
            if _retryable(exc.status_code):
                if _refused(exc.status_code):
                    self._reread_credentials()
                return pending, exc
            # The whole request was refused for what it holds (413: too large; another 4xx: one
            # document breaks it): halve it until the document at fault is alone.
            await self._split(pending, rejected, exc)
            return {}, None
        except (TimeoutError, TransportError, OSError) as exc:
            return pending, exc
        if refused:
            self._reread_credentials()
        return retry_later, None

    async def _split(self, pending: dict[str, tuple[str, dict]], rejected: list[Rejected], exc: ApiError) -> None:
        if len(pending) == 1:
            doc_id = next(iter(pending))
            rejected.append(Rejected(doc_id, f"bulk request refused (HTTP {exc.status_code}): {exc.message}"))
            metrics.ES_ERRORS.labels("rejected").inc()
            pending.clear()
            return
        ids = list(pending)
        for half in (ids[: len(ids) // 2], ids[len(ids) // 2 :]):
            part = {i: pending[i] for i in half}
            backoff = _Backoff(self.settings.es_retry_max_backoff_s)
            while part:
                retry_later, failure = await self._bulk(part, rejected)
                part = retry_later
                if part:
                    await backoff.wait("bulk", failure or f"{len(part)} documents refused for now")
            backoff.done()
        pending.clear()

    async def close(self) -> None:
        await self.client.close()


def _item_reason(error) -> str:
    if isinstance(error, dict):
        return f"{error.get('type', 'error')}: {error.get('reason', '')}"
    return str(error)


async def _close_later(client: AsyncElasticsearch, delay_s: float) -> None:
    await asyncio.sleep(delay_s)
    await client.close()
