"""Kafka administration with the worker's own configuration (and so its security settings):
declare finsent's topics ahead of the workers, and show how far a consumer group has read."""

from __future__ import annotations

import time
from dataclasses import dataclass

from .clients import ConnectionFailure, kafka_admin, kafka_consumer, kafka_identity
from .config import Settings


@dataclass
class PartitionState:
    topic: str
    partition: int
    end: int
    committed: int | None  # None: the group has committed nothing here yet

    @property
    def lag(self) -> int:
        return self.end - (self.committed or 0)


def topic_names(settings: Settings) -> list[str]:
    return [settings.topic_raw, settings.topic_scored, settings.topic_deadletter, settings.topic_aggregates,
            settings.topic_alerts]


def ensure_topics(settings: Settings) -> list[str]:
    """Creates the missing finsent topics with the configured partitions and replication; returns
    the names created."""
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = kafka_admin(settings)
    try:
        existing = set(admin.list_topics())
        missing = [name for name in topic_names(settings) if name not in existing]
        if missing:
            try:
                admin.create_topics([NewTopic(name, settings.topic_partitions, settings.topic_replication_factor)
                                     for name in missing])
            except TopicAlreadyExistsError:  # another process declared them meanwhile
                pass
        return missing
    finally:
        admin.close()


def _group_offsets(admin, settings: Settings, partitions, timeout_s: float = 20.0) -> dict:
    """The group's committed offsets; retries while the broker is still electing the group's
    coordinator (a fresh cluster creates its offsets topic on first use)."""
    from kafka.errors import KafkaError

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return admin.list_group_offsets({settings.consumer_group: partitions})[settings.consumer_group]
        except KafkaError as exc:
            if not getattr(exc, "retriable", False) or time.monotonic() > deadline:
                raise ConnectionFailure(f"cannot read the offsets of consumer group {settings.consumer_group!r} "
                                        f"from {kafka_identity(settings)}: {type(exc).__name__}") from None
            time.sleep(0.5)


def group_state(settings: Settings, topics: list[str] | None = None) -> list[PartitionState]:
    """End and committed offsets of the consumer group on ``topics`` (default: the raw topic)."""
    from kafka import TopicPartition

    topics = topics or [settings.topic_raw]
    admin, consumer = kafka_admin(settings), kafka_consumer(settings)
    try:
        partitions = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
        ends = consumer.end_offsets(partitions) if partitions else {}
        committed = _group_offsets(admin, settings, partitions) if partitions else {}
    finally:
        admin.close()
        consumer.close()
    states = []
    for tp in partitions:
        meta = committed.get(tp)
        offset = meta.offset if meta is not None and meta.offset >= 0 else None
        states.append(PartitionState(tp.topic, tp.partition, ends[tp], offset))
    return states
