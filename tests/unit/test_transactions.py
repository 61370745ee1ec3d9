"""Exactly-once delivery without a broker: how the outbox groups a batch into transactions, and
how a transaction that fails is retried, never repeated (pipeline/transactions.py,
pipeline/stages/outbox.py). The real broker's side is tests/integration/test_exactly_once.py."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from types import SimpleNamespace

import pytest
from aiokafka.errors import KafkaConnectionError, ProducerFenced
from hypothesis import given
from hypothesis import strategies as st

from pipeline.config import Settings
from pipeline.stages.outbox import Outbox
from pipeline.transactions import Output, TransactionFailed, Transactions


def event(topic: str, partition: int, offset: int, generation: int = 7):
    tp = SimpleNamespace(topic=topic, partition=partition)
    return SimpleNamespace(message=SimpleNamespace(tp=tp, partition=partition, offset=offset, generation_id=generation))


class RecordingTransactions:
    def __init__(self, fail: set[int] = frozenset(), committed_next: dict | None = None):
        self.commits: dict[tuple[str, int], tuple[list[Output], int, int]] = {}
        self.fail, self.committed_next = fail, committed_next or {}

    async def commit(self, topic, partition, outputs, next_offset, generation):
        await asyncio.sleep(0)
        if partition in self.fail:
            raise TransactionFailed(f"{topic}[{partition}] moved")
        self.commits[topic, partition] = (outputs, next_offset, generation)


@given(
    st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, 3)),  # (partition, outputs of the event)
        min_size=1,
        max_size=40,
    )
)
def test_each_partition_commits_its_own_outputs_with_its_next_offset(spec):
    offsets: dict[int, int] = defaultdict(lambda: 100)
    events, outputs, expected = [], [], defaultdict(list)
    for partition, n_outputs in spec:
        e = event("in", partition, offsets[partition])
        offsets[partition] += 1
        events.append(e)
        for k in range(n_outputs):
            output = Output("out", f"{partition}-{e.message.offset}-{k}".encode(), b"v")
            outputs.append((e, output))
            expected[partition].append(output)
    transactions = RecordingTransactions()
    asyncio.run(Outbox(transactions).deliver(events, outputs))
    assert set(transactions.commits) == {("in", p) for p, _ in spec}  # also partitions without outputs
    for (_topic, partition), (committed, next_offset, generation) in transactions.commits.items():
        assert committed == expected[partition]  # in the order they were produced
        assert next_offset == offsets[partition]  # one past the batch's last offset there
        assert generation == 7


def test_an_empty_batch_commits_nothing_and_a_moved_partition_fails_the_batch_after_the_others_commit():
    transactions = RecordingTransactions(fail={1})
    outbox = Outbox(transactions)
    asyncio.run(outbox.deliver([], []))
    assert transactions.commits == {}
    events = [event("in", 0, 5), event("in", 1, 9), event("in", 2, 3)]
    with pytest.raises(TransactionFailed, match=r"in\[1\] moved"):
        asyncio.run(outbox.deliver(events, [(e, Output("out", None, b"x")) for e in events]))
    assert set(transactions.commits) == {("in", 0), ("in", 2)}


class FakeProducer:
    """Records what each transaction sent; ``failures`` are raised by the next sends, in order."""

    def __init__(self, log: list, failures: list):
        self.log, self.failures, self.stopped = log, failures, False

    def transaction(self):
        producer = self

        class Transaction:
            async def __aenter__(self):
                producer.sent = []

            async def __aexit__(self, kind, exc, tb):
                producer.log.append(("abort" if exc else "commit", producer.sent))

        return Transaction()

    async def send(self, topic, value, key=None, partition=None):
        if self.failures:
            raise self.failures.pop(0)
        self.sent.append(value)
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def send_offsets_to_transaction(self, offsets, group_id):
        self.sent.append(("offsets", dict(offsets), group_id))

    async def stop(self):
        self.stopped = True


def transactions_with(failures: list, committed_offsets: list, generation: int = 7):
    log, started = [], []

    async def committed(topic, partition):
        return committed_offsets.pop(0)

    transactions = Transactions(Settings(), "grp", {"in"}, committed, lambda: generation)

    async def start(key):
        producer = FakeProducer(log, failures)
        transactions.producers[key] = producer
        started.append(key)
        return producer

    transactions._start = start
    transactions.owned.add(("in", 0))
    return transactions, log, started


def commit(transactions, generation: int = 7):
    asyncio.run(transactions.commit("in", 0, [Output("out", b"k", b"v1")], 42, generation))


def test_a_failed_transaction_is_retried_with_a_new_producer_until_it_commits(monkeypatch):
    monkeypatch.setattr("pipeline.transactions.RETRY_INITIAL_S", 0.001)
    transactions, log, started = transactions_with([KafkaConnectionError()], committed_offsets=[41])
    commit(transactions)
    assert [outcome for outcome, _ in log] == ["abort", "commit"]
    assert log[-1][1][0] == b"v1" and log[-1][1][1][0] == "offsets"
    assert len(started) == 2  # a failed producer is never used again


def test_a_transaction_that_committed_before_its_answer_was_lost_is_not_repeated(monkeypatch):
    monkeypatch.setattr("pipeline.transactions.RETRY_INITIAL_S", 0.001)
    # The group's offset already says 42: the first attempt went through.
    transactions, log, _ = transactions_with([KafkaConnectionError()], committed_offsets=[42])
    commit(transactions)
    assert [outcome for outcome, _ in log] == ["abort"]


def test_fenced_moved_or_rebalanced_partitions_raise_instead_of_retrying():
    transactions, log, _ = transactions_with([ProducerFenced()], committed_offsets=[])
    with pytest.raises(TransactionFailed, match="fenced"):
        commit(transactions)
    assert ("in", 0) not in transactions.owned  # and its producer is not started again
    with pytest.raises(TransactionFailed, match="no longer assigned"):
        commit(transactions)
    transactions, log, _ = transactions_with([], committed_offsets=[])
    with pytest.raises(TransactionFailed, match="rebalance"):
        commit(transactions, generation=6)
    assert log == []


def test_input_this_worker_committed_already_is_never_committed_again():
    transactions = RecordingTransactions(committed_next={("in", 0): 12})
    events = [event("in", 0, offset) for offset in (10, 11, 12, 13)] + [event("in", 1, 11)]
    asyncio.run(
        Outbox(transactions).deliver(events, [(e, Output("out", None, str(e.message.offset).encode())) for e in events])
    )
    outputs, next_offset, _ = transactions.commits["in", 0]
    assert [o.value for o in outputs] == [b"12", b"13"] and next_offset == 14
    assert [o.value for o in transactions.commits["in", 1][0]] == [b"11"]
    transactions.commits.clear()
    asyncio.run(Outbox(transactions).deliver(events[:2], [(e, Output("out", None, b"x")) for e in events[:2]]))
    assert transactions.commits == {}  # a batch read twice, whole: nothing to write


def test_a_record_the_broker_refuses_for_good_stops_the_stage_instead_of_retrying(monkeypatch):
    """Too large (or no such topic, not allowed): retrying forever would block every partition
    of the batch; the transaction is aborted and the stage fails with the reason."""
    from aiokafka.errors import MessageSizeTooLargeError

    from pipeline.transactions import DeliveryRefused

    monkeypatch.setattr("pipeline.transactions.RETRY_INITIAL_S", 0.001)
    transactions, log, started = transactions_with([MessageSizeTooLargeError()], committed_offsets=[41] * 5)
    with pytest.raises(DeliveryRefused, match="in\\[0\\].*MessageSizeTooLarge"):
        asyncio.run(asyncio.wait_for(transactions.commit("in", 0, [Output("out", b"k", b"v1")], 42, 7), 10))
    assert [outcome for outcome, _ in log] == ["abort"] and len(started) == 1


def test_fencing_waits_for_the_producers_of_partitions_still_owned_and_never_reads_on(monkeypatch):
    """The broker refuses to start producers for a while: ``fence`` keeps waiting (reading on
    unfenced would process the previous owner's input again); a partition revoked meanwhile no
    longer counts."""
    transactions = Transactions(Settings(), "grp", {"in"}, None, lambda: 7)
    attempts = []

    async def start(key):
        attempts.append(key)
        if len(attempts) < 6 or key == ("in", 1):
            raise KafkaConnectionError()
        transactions.producers[key] = FakeProducer([], [])
        return transactions.producers[key]

    real_sleep = asyncio.sleep

    async def no_wait(_s):
        await real_sleep(0)

    transactions._start = start
    monkeypatch.setattr("pipeline.transactions.asyncio.sleep", no_wait)
    tps = [SimpleNamespace(topic="in", partition=0), SimpleNamespace(topic="in", partition=1)]

    async def scenario():
        fencing = asyncio.ensure_future(transactions.fence(tps))
        for _ in range(50):
            await no_wait(0)
        assert not fencing.done()  # ("in", 1) never starts: still waiting, long past 6 attempts
        assert ("in", 0) in transactions.producers
        await transactions.revoke([tps[1]])
        await asyncio.wait_for(fencing, 5)

    asyncio.run(scenario())


def test_a_record_over_the_limit_fails_the_batch_before_anything_is_sent():
    from pipeline.decode import MAX_RECORD_BYTES
    from pipeline.transactions import DeliveryRefused

    transactions = RecordingTransactions()
    e = event("in", 0, 5)
    outputs = [(e, Output("out", b"k", b"small")), (e, Output("out", b"k", b"x" * (MAX_RECORD_BYTES + 1)))]
    with pytest.raises(DeliveryRefused, match="over the 900,000-byte limit"):
        asyncio.run(Outbox(transactions).deliver([e], outputs))
    assert transactions.commits == {}
