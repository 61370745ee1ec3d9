"""Kafka and Elasticsearch clients for the command-line tools (replay, report, topics), built from
the one configuration module with the worker's security settings. A connection that fails raises
:class:`ConnectionFailure`, whose message says where and as whom finsent tried to connect and
why it failed, and never carries a password, key or token."""

from __future__ import annotations

from typing import Any

from .config import Settings, redact_url


class ConnectionFailure(RuntimeError):
    """Kafka or Elasticsearch refused or could not be reached; the message names which and why."""


def kafka_identity(settings: Settings) -> str:
    """Where and how finsent connects to Kafka, for messages (no secret in it)."""
    who = (
        f" as {settings.kafka_sasl_username!r} ({settings.kafka_sasl_mechanism})"
        if settings.kafka_sasl_mechanism
        else ""
    )
    cert = f" with client certificate {settings.kafka_ssl_certfile}" if settings.kafka_ssl_certfile else ""
    return f"Kafka at {settings.kafka_bootstrap_servers} over {settings.kafka_security_protocol}{who}{cert}"


def es_identity(settings: Settings) -> str:
    if settings.es_api_key is not None:
        who = " with an API key"
    elif settings.es_username is not None:
        who = f" as {settings.es_username!r}"
    else:
        who = ""
    return f"Elasticsearch at {', '.join(redact_url(h) for h in settings.es_hosts)}{who}"


def _kafka_failure(settings: Settings, exc: Exception) -> ConnectionFailure:
    reason = type(exc).__name__
    if type(exc).__name__ in ("NoBrokersAvailable", "KafkaConnectionError", "KafkaTimeoutError"):
        reason += (
            " (unreachable, or the handshake failed: wrong protocol, untrusted certificate, "
            "missing client certificate or rejected credentials)"
        )
    elif str(exc):
        reason += f": {redact(settings, str(exc))}"
    return ConnectionFailure(f"cannot use {kafka_identity(settings)}: {reason}")


def redact(settings: Settings, text: str) -> str:
    """``text`` with every configured secret replaced by ***."""
    from .config import SECRET_FIELDS

    for name in SECRET_FIELDS:
        secret = getattr(settings, name)
        if secret is not None and secret.get_secret_value():
            text = text.replace(secret.get_secret_value(), "***")
    return text


def _connect(client_class, settings: Settings, **kwargs: Any):
    """A kafka-python client with finsent's connection settings; a refusal becomes ConnectionFailure."""
    from kafka.errors import KafkaError

    try:
        return client_class(
            **settings.kafka_client_kwargs(),
            bootstrap_timeout_ms=int(settings.kafka_bootstrap_timeout_s * 1000),
            **kwargs,
        )
    except KafkaError as exc:
        raise _kafka_failure(settings, exc) from None


def kafka_producer(settings: Settings, **kwargs: Any):
    from kafka import KafkaProducer

    return _connect(KafkaProducer, settings, **kwargs)


def kafka_consumer(settings: Settings, **kwargs: Any):
    from kafka import KafkaConsumer

    return _connect(KafkaConsumer, settings, **kwargs)


def kafka_admin(settings: Settings):
    from kafka import KafkaAdminClient

    return _connect(KafkaAdminClient, settings, client_id="finsent-admin")


def elasticsearch(settings: Settings, request_timeout: float = 60):
    """A checked client: the first request is made here, so a refused credential or an
    untrusted certificate fails now with a readable message."""
    from elasticsearch import ApiError, Elasticsearch, TransportError

    client = Elasticsearch(**settings.es_client_kwargs(), request_timeout=request_timeout)
    try:
        client.cluster.health()
    except ApiError as exc:
        if exc.meta.status == 403:  # authenticated; the credential just may not read cluster health
            return client
        reason = f"HTTP {exc.meta.status} {redact(settings, str(exc.message))}"
        raise ConnectionFailure(f"cannot use {es_identity(settings)}: {reason}") from None
    except TransportError as exc:
        raise ConnectionFailure(
            f"cannot reach {es_identity(settings)}: {type(exc).__name__}: {redact(settings, str(exc.message))}"
        ) from None
    return client
