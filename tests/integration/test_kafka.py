"""Produce and consume through the real broker with both Kafka clients finsent uses."""

from __future__ import annotations

import asyncio
import json

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from pipeline.admin import ReadableProbe


def test_kafka_python_round_trip(local_stack, settings, unique):
    topic = f"test.kp.{unique}"
    admin = KafkaAdminClient(**settings.kafka_client_kwargs())
    admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])
    admin.close()

    producer = KafkaProducer(**settings.kafka_client_kwargs(), acks="all")
    for i in range(50):
        producer.send(topic, key=str(i % 3).encode(), value=json.dumps({"id": str(i), "text": f"message {i}"}).encode())
    producer.flush(timeout=30)
    producer.close()

    consumer = KafkaConsumer(
        topic,
        **settings.kafka_client_kwargs(),
        group_id=f"g-{unique}",
        auto_offset_reset="earliest",
        consumer_timeout_ms=10_000,
    )
    seen = set()
    for record in consumer:  # stops by itself after 10 s without records
        seen.add(json.loads(record.value)["id"])
        if len(seen) == 50:
            break
    partitions = consumer.partitions_for_topic(topic)
    consumer.close()
    assert seen == {str(i) for i in range(50)}
    assert partitions == {0, 1, 2}


def test_aiokafka_round_trip(local_stack, settings, unique):
    topic = f"test.aio.{unique}"

    async def scenario() -> list[bytes]:
        producer = AIOKafkaProducer(**settings.kafka_client_kwargs(), acks="all")
        await producer.start()
        try:
            for i in range(20):
                await producer.send_and_wait(topic, f"aio {i}".encode(), key=b"k")
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(
            topic,
            **settings.kafka_client_kwargs(),
            group_id=f"g-{unique}",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        values: list[bytes] = []
        try:
            async with asyncio.timeout(30):
                while len(values) < 20:
                    batch = await consumer.getmany(timeout_ms=1000)
                    for records in batch.values():
                        values.extend(r.value for r in records)
            await consumer.commit()
        finally:
            await consumer.stop()
        return values

    values = asyncio.run(scenario())
    # One key -> one partition -> order preserved.
    assert values == [f"aio {i}".encode() for i in range(20)]


def test_a_started_broker_already_has_its_internal_topics(local_stack, settings):
    """`stack up` waits until the group and transaction coordinators answer, so the first worker
    (exactly-once included) never waits for the broker to create their topics."""
    admin = KafkaAdminClient(**settings.kafka_client_kwargs())
    try:
        assert {"__consumer_offsets", "__transaction_state"} <= set(admin.list_topics())
    finally:
        admin.close()


def test_the_probe_finds_the_first_record_past_markers_and_a_fenced_producers_writes(local_stack, settings, unique):
    """What OffsetGaps asks the broker after a worker is killed: the killed worker's open
    transaction is aborted when its successor starts a producer with the same transactional id,
    so a read_committed consumer finds nothing in it, only in what commits after."""
    topic = f"test.probe.{unique}"
    kwargs = settings.kafka_client_kwargs()

    async def scenario() -> None:
        killed = AIOKafkaProducer(**kwargs, transactional_id=f"t-{unique}")
        await killed.start()
        async with killed.transaction():
            await killed.send_and_wait(topic, b"committed", partition=0)  # offset 0, marker at 1
        await killed.begin_transaction()
        for _ in range(300):  # offsets 2-301, never committed: the producer "dies" here
            await killed.send(topic, b"open", partition=0)
        await killed.flush()
        successor = AIOKafkaProducer(**kwargs, transactional_id=f"t-{unique}")
        await successor.start()  # fences the killed one: abort marker at 302
        try:
            async with successor.transaction():
                await successor.send_and_wait(topic, b"after", partition=0)  # offset 303
        finally:
            await successor.stop()  # the killed one is never stopped: asyncio.run cancels its tasks

    asyncio.run(scenario())
    probe = ReadableProbe(settings, timeout_s=10.0)
    try:
        assert probe.first_readable(topic, 0, 0, 305) == 0
        assert probe.first_readable(topic, 0, 1, 303) == 303  # markers and aborted writes only
        assert probe.first_readable(topic, 0, 1, 305) == 303
        assert probe.first_readable(topic, 0, 150, 400) == 303
        assert probe.readable(topic, 0, 1, 303) is False and probe.readable(topic, 0, 1, 304) is True
    finally:
        probe.close()
