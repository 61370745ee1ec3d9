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
    return [
        settings.topic_raw,
        settings.topic_scored,
        settings.topic_deadletter,
        settings.topic_aggregates,
        settings.topic_alerts,
    ]


def internal_topic_names(settings: Settings) -> tuple[str, str]:
    """The consumer group's own topics between stages: decoded records keyed by fingerprint, and
    the window stage's input."""
    group = settings.consumer_group
    return f"{group}.{settings.topic_raw}.by-fingerprint", f"{group}.windows"


def state_topic_names(settings: Settings) -> list[str]:
    """Topics partitioned like the worker's state: the internal topics and the tables'
    changelogs (faust names them ``<group>-<table>-changelog``)."""
    group = settings.consumer_group
    return [*internal_topic_names(settings), f"{group}-finsent-dedup-changelog", f"{group}-finsent-windows-changelog"]


class PartitionMismatch(ValueError):
    """The group's topics have another partition count than the configured one."""


def check_partitions(settings: Settings) -> None:
    """Refuses a partition count that differs from the group's existing topics: fingerprints
    and names hash to partitions, so another count splits de-duplication and window state, and
    changelog writes would go to partitions that do not exist."""
    admin = kafka_admin(settings)
    try:
        existing = set(admin.list_topics())
        names = [name for name in state_topic_names(settings) if name in existing]
        described = admin.describe_topics(names) if names else []
    finally:
        admin.close()
    wrong = {d["name"]: len(d["partitions"]) for d in described if len(d["partitions"]) != settings.topic_partitions}
    if wrong:
        found = ", ".join(f"{topic} has {count}" for topic, count in sorted(wrong.items()))
        raise PartitionMismatch(
            f"FINSENT_TOPIC_PARTITIONS is {settings.topic_partitions} but consumer group "
            f"{settings.consumer_group!r} keeps its state in topics with another count ({found}). Set "
            f"FINSENT_TOPIC_PARTITIONS to that count, or, to change it, start a new consumer group "
            "(FINSENT_CONSUMER_GROUP) with the new count and a fresh state directory and replay the raw "
            "topic into it (docs/operations.md, 'Changing the partition count')."
        )


def new_topic(settings: Settings, name: str):
    """A topic as finsent creates it: the configured partitions, replication and min.insync.replicas."""
    from kafka.admin import NewTopic

    configs = {}
    if settings.topic_min_insync_replicas:
        configs["min.insync.replicas"] = str(settings.topic_min_insync_replicas)
    return NewTopic(name, settings.topic_partitions, settings.topic_replication_factor, topic_configs=configs)


def ensure_topics(settings: Settings, internal: bool = False) -> list[str]:
    """Creates the missing finsent topics (with ``internal``, the group's own ones too) with the
    configured partitions and replication; returns the names created."""
    from kafka.errors import TopicAlreadyExistsError

    admin = kafka_admin(settings)
    try:
        existing = set(admin.list_topics())
        wanted = topic_names(settings) + (list(internal_topic_names(settings)) if internal else [])
        missing = [name for name in wanted if name not in existing]
        if missing:
            try:
                admin.create_topics([new_topic(settings, name) for name in missing])
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
                raise ConnectionFailure(
                    f"cannot read the offsets of consumer group {settings.consumer_group!r} "
                    f"from {kafka_identity(settings)}: {type(exc).__name__}"
                ) from None
            time.sleep(0.5)


class ReadableProbe:
    """Whether a partition holds a record that a consumer can read between two offsets.

    A transactional producer upstream leaves a commit or abort marker after each transaction,
    at an offset no consumer ever receives, and a read_committed consumer skips aborted records
    too: a run of offsets without messages is then no lost data, and no reason to wait for one.
    The answer comes from reading the range with a read_committed consumer of its own: True (a
    record is there), False (nothing readable: markers, aborted records, or compaction) or None
    (not known in time: an open transaction holds the range)."""

    def __init__(self, settings: Settings, timeout_s: float = 3.0):
        self.settings, self.timeout_s = settings, timeout_s
        self._consumer = None

    def readable(self, topic: str, partition: int, start: int, end: int) -> bool | None:
        first = self.first_readable(topic, partition, start, end)
        return None if first is None else first < end

    def first_readable(
        self, topic: str, partition: int, start: int, end: int, timeout_s: float | None = None
    ) -> int | None:
        """The offset of the first record from ``start`` on, if below ``end``; ``end`` if there
        is none below it; None if not known in time (``timeout_s``, default the probe's)."""
        if end <= start:
            return end
        tp = self._seek(topic, partition, start)
        deadline = time.monotonic() + (self.timeout_s if timeout_s is None else timeout_s)
        while time.monotonic() < deadline:
            records = self._consumer.poll(timeout_ms=100, max_records=1).get(tp, [])
            if records:
                return min(records[0].offset, end)
            if self._consumer.position(tp) >= end:
                return end
        return None

    def last_readable(self, topic: str, partition: int, end: int, lookback: int = 1000) -> int | None:
        """The offset of the last readable record below ``end``: -1 if there is none, None if
        not known in time. Reads back from the end, ``lookback`` offsets at a time."""
        start = end
        while start > 0:
            start = max(0, start - lookback)
            last = self._last_in(topic, partition, start, end)
            if last != -1:
                return last
            end = start
        return -1

    def _last_in(self, topic: str, partition: int, start: int, end: int) -> int | None:
        tp = self._seek(topic, partition, start)
        last, deadline = -1, time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            for record in self._consumer.poll(timeout_ms=100).get(tp, []):
                if record.offset < end:
                    last = max(last, record.offset)
            if self._consumer.position(tp) >= end:
                return last
        return None

    def _seek(self, topic: str, partition: int, offset: int):
        from kafka import TopicPartition

        if self._consumer is None:
            # earliest: a start below the log start (retention) must read from there, not jump to the end
            self._consumer = kafka_consumer(
                self.settings,
                isolation_level="read_committed",
                enable_auto_commit=False,
                group_id=None,
                auto_offset_reset="earliest",
            )
        tp = TopicPartition(topic, partition)
        self._consumer.assign([tp])
        self._consumer.seek(tp, offset)
        return tp

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
        self._consumer = None


class CommittedOffsets:
    """The consumer group's committed offset of a partition, with an admin client kept open."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._admin = None

    def offset(self, topic: str, partition: int) -> int | None:
        from kafka import TopicPartition

        try:
            if self._admin is None:
                self._admin = kafka_admin(self.settings)
            tp = TopicPartition(topic, partition)
            meta = _group_offsets(self._admin, self.settings, [tp], timeout_s=10.0).get(tp)
        except Exception:
            self.close()
            raise
        return meta.offset if meta is not None and meta.offset >= 0 else None

    def close(self) -> None:
        if self._admin is not None:
            self._admin.close()
        self._admin = None


class GroupProgress:
    """End and committed offsets of the consumer group on some topics, with clients kept open
    for repeated reads (the worker asks every second)."""

    def __init__(
        self, settings: Settings, topics: list[str], coordinator_wait_s: float = 20.0, timeout_s: float | None = None
    ):
        self.settings, self.topics, self.coordinator_wait_s = settings, topics, coordinator_wait_s
        self.timeout_ms = int(timeout_s * 1000) if timeout_s else None
        self._admin = self._consumer = None
        self.probe = ReadableProbe(settings)
        self._unreadable: dict[tuple[str, int], tuple[int | None, int]] = {}  # tp -> (committed, end) known empty
        # tp -> (span, patience for the next probe, monotonic time before which it is not asked
        # again): a probe that could not answer in time is asked again with twice the patience
        self._unknown: dict[tuple[str, int], tuple[tuple, float, float]] = {}

    def states(self) -> list[PartitionState]:
        from kafka import TopicPartition

        if self._consumer is None:
            self._admin, self._consumer = kafka_admin(self.settings), kafka_consumer(self.settings)
        partitions = [
            TopicPartition(t, p) for t in self.topics for p in sorted(self._consumer.partitions_for_topic(t) or ())
        ]
        if not partitions:
            return []
        ends = self._consumer.end_offsets(partitions, timeout_ms=self.timeout_ms)
        committed = _group_offsets(self._admin, self.settings, partitions, self.coordinator_wait_s)
        states = []
        for tp in partitions:
            meta = committed.get(tp)
            offset = meta.offset if meta is not None and meta.offset >= 0 else None
            states.append(PartitionState(tp.topic, tp.partition, ends[tp], offset))
        return states

    def readable_states(self) -> list[PartitionState]:
        """``states``, where a partition whose unprocessed offsets hold nothing readable
        (transaction markers after the last commit) shows no lag."""
        states = self.states()
        for state in states:
            if state.lag > 0 and not self._holds_messages(state):
                state.committed = state.end
        return states

    def lagging(self) -> bool:
        """True while some partition holds messages the group has not processed (committed) yet.
        Offsets past the committed one that hold nothing readable (transaction markers) are no lag."""
        return any(s.lag > 0 and self._holds_messages(s) for s in self.states())

    def _holds_messages(self, state: PartitionState) -> bool:
        """Whether the unprocessed range holds a record. Not known (the probe ran out of time, as
        on a loaded host) counts as holding one, and is asked again after a backoff with twice
        the patience (up to 8x), so an answer comes once the host can give it."""
        key, span = (state.topic, state.partition), (state.committed, state.end)
        if self._unreadable.get(key) == span:
            return False
        known_span, patience, not_before = self._unknown.get(key, (span, self.probe.timeout_s, 0.0))
        if known_span != span:
            patience, not_before = self.probe.timeout_s, 0.0
        if time.monotonic() < not_before:
            return True
        first = self.probe.first_readable(state.topic, state.partition, state.committed or 0, state.end, patience)
        if first is None:
            self._unknown[key] = (span, min(patience * 2, 8 * self.probe.timeout_s), time.monotonic() + patience)
            return True
        self._unknown.pop(key, None)
        if first >= state.end:
            self._unreadable[key] = span
            return False
        return True

    def close(self) -> None:
        for client in (self._admin, self._consumer):
            if client is not None:
                client.close()
        self._admin = self._consumer = None
        self.probe.close()


def group_state(settings: Settings, topics: list[str] | None = None) -> list[PartitionState]:
    """End and committed offsets of the consumer group on ``topics`` (default: the raw topic)."""
    progress = GroupProgress(settings, topics or [settings.topic_raw])
    try:
        return progress.states()
    finally:
        progress.close()
