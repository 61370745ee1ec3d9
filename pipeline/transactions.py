"""Kafka transactions for exactly-once processing (``FINSENT_PROCESSING_GUARANTEE=exactly_once``).

Every input partition a stage reads has its own transactional producer, with transactional id
``<group>-<topic>-<partition>``: Kafka Streams' original exactly-once scheme, and the one
faust-streaming's ``processing_guarantee="exactly_once"`` means to use. faust's own version picks
the id from the partition a record is *sent to*, sends outside transactions and crashes on
rebalances (faust-streaming/faust#177, #517, #323, #440), so finsent runs its own.

A batch's outputs that came from one input partition, and that partition's next offset, commit
in one transaction: a consumer reading ``read_committed`` sees all of them or none, and a batch
whose transaction did not commit is read again. The worker that takes a partition over starts
its producer at once; starting it fences the previous owner's producer (a killed or stalled
worker) and aborts that owner's open transaction, so a zombie can never commit after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    InvalidTopicError,
    MessageSizeTooLargeError,
    ProducerFenced,
    RecordTooLargeError,
    TopicAuthorizationFailedError,
)
from aiokafka.structs import TopicPartition

from . import metrics
from .config import Settings

log = logging.getLogger("finsent.worker")
RETRY_INITIAL_S, RETRY_MAX_S = 0.5, 5.0
# Send errors that no retry cures: the transaction is aborted and the stage stops with the reason.
PERMANENT_SEND_ERRORS = (
    MessageSizeTooLargeError,
    RecordTooLargeError,
    InvalidTopicError,
    TopicAuthorizationFailedError,
)


@dataclass(frozen=True)
class Output:
    """One record a stage writes: ``topic`` a faust topic (at-least-once sends through it) or a
    topic name (changelog records, exactly-once only); ``value`` None is a tombstone."""

    topic: Any
    key: bytes | None
    value: bytes | None
    partition: int | None = None

    @property
    def topic_name(self) -> str:
        return self.topic if isinstance(self.topic, str) else self.topic.get_topic_name()


class DeliveryRefused(RuntimeError):
    """The broker refuses a batch's records for good (too large, no such topic, not allowed):
    a clear failure instead of a retry that never ends."""


class TransactionFailed(RuntimeError):
    """A transaction did not commit (fenced by a new owner, revoked, broker trouble): the batch
    is read again by whoever owns its partition."""


class Transactions:
    """The transactional producers of the input partitions this worker owns."""

    def __init__(self, settings: Settings, group_id: str, topics: set[str], committed, generation):
        self.settings, self.group_id, self.topics = settings, group_id, topics
        self.committed = committed  # async (topic, partition) -> the group's committed offset or None
        self.generation = generation  # () -> the consumer group generation this worker is in
        self.producers: dict[tuple[str, int], AIOKafkaProducer] = {}
        self.locks: dict[tuple[str, int], asyncio.Lock] = {}
        self.owned: set[tuple[str, int]] = set()
        self.committed_next: dict[tuple[str, int], int] = {}  # input partition -> next offset this worker committed

    def transactional_id(self, topic: str, partition: int) -> str:
        return f"{self.group_id}-{topic}-{partition}"

    async def assign(self, tps) -> None:
        """Starts (and so fences the previous owner of) each newly owned input partition's producer."""
        wanted = {(tp.topic, tp.partition) for tp in tps if tp.topic in self.topics}
        self.owned |= wanted
        await asyncio.gather(*(self._ensure(key) for key in wanted))

    async def fence(self, tps, warn_every_s: float = 30.0) -> None:
        """``assign``, retried until the producer of every partition still owned has started
        (the broker restarting): only then are the previous owners' transactions complete, so
        the stage never reads on unfenced (it would process their input again). Says so every
        ``warn_every_s`` while it waits."""
        started = warned = time.monotonic()
        while True:
            await self.assign(tps)
            wanted = {(tp.topic, tp.partition) for tp in tps if tp.topic in self.topics} & self.owned
            missing = wanted - set(self.producers)
            if not missing:
                return
            if time.monotonic() - warned >= warn_every_s:
                warned = time.monotonic()
                log.warning(
                    "transactional producers not started for %s after %.0f s; reading waits until they are",
                    sorted(missing),
                    warned - started,
                )
            await asyncio.sleep(1.0)

    async def _ensure(self, key: tuple[str, int]) -> None:
        async with self.locks.setdefault(key, asyncio.Lock()):
            if key in self.producers or key not in self.owned:
                return
            try:
                await self._start(key)
            except Exception as exc:  # the broker restarting: the partition's next commit tries again
                log.warning("%s[%d]: cannot start its transactional producer yet (%r)", *key, exc)

    async def revoke(self, tps) -> None:
        """Stops the producers of partitions that move away; a transaction still open aborts."""
        self.owned -= {(tp.topic, tp.partition) for tp in tps}
        for tp in tps:
            self.committed_next.pop((tp.topic, tp.partition), None)
        keys = [(tp.topic, tp.partition) for tp in tps if (tp.topic, tp.partition) in self.producers]
        await asyncio.gather(*(self._stop(key) for key in keys))

    async def close(self) -> None:
        self.owned.clear()
        await asyncio.gather(*(self._stop(key) for key in list(self.producers)))

    async def _start(self, key: tuple[str, int]) -> AIOKafkaProducer:
        settings = self.settings
        producer = AIOKafkaProducer(
            **settings.kafka_client_kwargs(),
            client_id=f"finsent-{key[0]}-{key[1]}",
            transactional_id=self.transactional_id(*key),
            transaction_timeout_ms=int(settings.kafka_transaction_timeout_s * 1000),
            enable_idempotence=True,
            acks="all",
            linger_ms=int(settings.producer_linger_ms),
        )
        self.producers[key] = producer
        self.locks.setdefault(key, asyncio.Lock())
        try:
            await producer.start()  # InitProducerId: fences the id's previous producer
        except BaseException:
            self.producers.pop(key, None)
            await producer.stop()
            raise
        return producer

    async def _stop(self, key: tuple[str, int]) -> None:
        producer = self.producers.pop(key, None)
        if producer is not None:
            async with self.locks[key]:  # never in the middle of a commit
                await producer.stop()

    async def commit(
        self, topic: str, partition: int, outputs: list[Output], next_offset: int, generation: int
    ) -> None:
        """Writes ``outputs`` and commits ``next_offset`` for the consumer group, atomically.

        A transaction that fails (the broker restarting) is retried, never repeated: a restarted
        producer first completes or aborts whatever its predecessor left open, and the group's
        committed offset then says whether the transaction went through. Raises
        TransactionFailed once the partition belongs to another worker."""
        key = (topic, partition)
        delay = RETRY_INITIAL_S
        while True:
            try:
                return await self._commit_once(key, outputs, next_offset, generation)
            except TransactionFailed:
                raise
            except PERMANENT_SEND_ERRORS as exc:
                # Retrying cannot help: stop the stage with the reason rather than block for good.
                raise DeliveryRefused(
                    f"{topic}[{partition}]: the broker refuses this batch's records ({exc!r}); "
                    "nothing was committed, the batch is read again on restart"
                ) from exc
            except Exception as exc:
                log.warning("%s[%d]: transaction failed, retrying in %.1f s (%r)", topic, partition, delay, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)
            await self._ensure(key)
            try:
                committed = await self.committed(topic, partition)
            except Exception as exc:
                log.info("%s[%d]: cannot read the committed offset yet (%r)", topic, partition, exc)
                continue
            if committed is not None and committed >= next_offset:
                self.committed_next[key] = max(next_offset, self.committed_next.get(key, 0))
                return  # the failed attempt did commit

    async def _commit_once(self, key: tuple[str, int], outputs: list[Output], next_offset: int, generation: int):
        async with self.locks.setdefault(key, asyncio.Lock()):
            if key not in self.owned:  # starting its producer now would fence the new owner
                raise TransactionFailed(f"{key[0]}[{key[1]}] is no longer assigned to this worker")
            if generation != self.generation():
                raise TransactionFailed(f"{key[0]}[{key[1]}]: a rebalance came after the batch was read")
            producer = self.producers.get(key) or await self._start(key)
            started = time.perf_counter()
            try:
                async with producer.transaction():  # aborts when the block raises
                    sends = [
                        await producer.send(o.topic_name, o.value, key=o.key, partition=o.partition) for o in outputs
                    ]
                    await asyncio.gather(*sends)
                    offsets = {TopicPartition(*key): next_offset}
                    await producer.send_offsets_to_transaction(offsets, self.group_id)
                metrics.TRANSACTIONS.labels(key[0]).observe(time.perf_counter() - started)
                self.committed_next[key] = max(next_offset, self.committed_next.get(key, 0))
            except Exception as exc:
                # A failed producer is not used again; restarting one ends what it left open.
                self.producers.pop(key, None)
                with contextlib.suppress(Exception):
                    await asyncio.shield(producer.stop())
                if isinstance(exc, ProducerFenced):  # another worker owns the partition now
                    self.owned.discard(key)
                    raise TransactionFailed(f"{key[0]}[{key[1]}]: fenced by its new owner") from exc
                raise
