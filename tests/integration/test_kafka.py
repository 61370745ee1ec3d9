"""Produce and consume through the real broker with both Kafka clients finsent uses."""

from __future__ import annotations

import asyncio
import json

import pytest
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


def test_a_worker_refuses_a_partition_count_its_groups_topics_do_not_have(local_stack, settings, unique, tiny_bundle):
    """Topics of the group made with 2 partitions, a worker configured for 4: it refuses to start
    and says what to do, before it reads or writes anything."""
    import os
    import subprocess
    import sys

    from pipeline.admin import PartitionMismatch, check_partitions, internal_topic_names

    group = f"partitions-{unique}"
    settings = settings.model_copy(update={"consumer_group": group, "topic_partitions": 4})
    by_fingerprint, windows = internal_topic_names(settings)
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    try:
        admin.create_topics([NewTopic(by_fingerprint, 4, 1), NewTopic(windows, 2, 1)])
    finally:
        admin.close()
    check_partitions(settings.model_copy(update={"consumer_group": f"other-{unique}"}))  # no topics yet: fine
    with pytest.raises(PartitionMismatch, match=rf"{windows} has 2"):
        check_partitions(settings)

    env = {
        **os.environ,
        "FINSENT_CONSUMER_GROUP": group,
        "FINSENT_TOPIC_PARTITIONS": "4",
        "FINSENT_MODEL_BUNDLE": str(tiny_bundle),
        "COLUMNS": "200",
    }
    run = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "worker"], env=env, capture_output=True, text=True, timeout=120
    )
    said = " ".join((run.stderr + run.stdout).split())  # as wrapped for the terminal
    assert run.returncode == 1
    assert f"{windows} has 2" in said and "FINSENT_CONSUMER_GROUP" in said
