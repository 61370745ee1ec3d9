"""OffsetGaps, the guard that keeps each stage reading its partitions in offset order, against a
consumer stand-in (the behaviour it guards against is exercised for real by the worker restart
tests in tests/integration)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from faust.types import TP
from hypothesis import given
from hypothesis import strategies as st

from pipeline.faustcompat import OffsetGaps, SkippedOffsets

RAW = TP("raw", 0)


class Message:
    def __init__(self, tp: TP, offset: int):
        self.tp, self.offset, self.refs = tp, offset, 0

    def incref(self) -> None:
        self.refs += 1


class Consumer:
    def __init__(self, committed: dict, highwater: dict, earliest: int = 0):
        self.earliest = earliest
        self._committed_offset = dict(committed)
        self._highwater = highwater
        self._unacked_messages: set = set()
        self.seeks: list[tuple[TP, int]] = []
        self.gaps: list[tuple[TP, int, int]] = []  # runs handed to faust to commit past

    def assignment(self):
        return set(self._highwater)

    def highwater(self, tp):
        return self._highwater[tp]

    async def seek(self, tp, offset):
        self.seeks.append((tp, offset))

    async def _add_gap(self, tp, start, end):
        self.gaps.append((tp, start, end))

    async def earliest_offsets(self, *tps):
        return {tp: self.earliest for tp in tps}


def make(committed=None, highwater=None, earliest=0, **kwargs):
    consumer = Consumer(committed or {}, highwater or {RAW: 100}, earliest)
    app = SimpleNamespace(
        consumer=consumer, rebalancing=False, in_recovery=False, flow_control=SimpleNamespace(is_active=lambda: True)
    )
    return OffsetGaps(app, {"raw"}, **kwargs), consumer


def events(*offsets, tp=RAW):
    return [SimpleNamespace(message=Message(tp, o)) for o in offsets]


def offsets(kept):
    return [e.message.offset for e in kept]


def run(coro):
    return asyncio.run(coro)


def test_in_order_messages_pass_and_copies_already_processed_are_dropped():
    gaps, consumer = make(committed={RAW: 10})
    assert offsets(run(gaps.in_order(events(10, 11, 12)))) == [10, 11, 12]
    assert offsets(run(gaps.in_order(events(11, 12, 13)))) == [13]  # 11, 12 again: redelivered copies
    assert consumer.seeks == []


def test_a_hole_seeks_back_and_sets_aside_what_came_past_it_unacknowledged():
    gaps, consumer = make(committed={RAW: 0})
    batch = events(0, 1, 5, 6)
    kept = run(gaps.in_order(batch))
    assert offsets(kept) == [0, 1]
    assert consumer.seeks == [(RAW, 2)]
    assert [e.message.refs for e in batch] == [0, 0, 1, 1]  # held: never acknowledged
    assert offsets(run(gaps.in_order(events(2, 3, 4, 5, 6)))) == [2, 3, 4, 5, 6]


def test_the_first_message_after_an_assignment_must_be_the_committed_offset():
    # faust can hand a stream a message fetched past the committed offset right after a rebalance
    gaps, consumer = make(committed={RAW: 40})
    assert run(gaps.in_order(events(57, 58))) == []
    assert consumer.seeks == [(RAW, 40)]


def test_a_partition_never_committed_starts_at_the_log_start():
    """A fresh group: the consumer may hand over offset 3 first; 0-2 must not be skipped."""
    gaps, consumer = make(committed={}, earliest=0)
    batch = events(3, 4)
    assert offsets(run(gaps.in_order(batch))) == []
    assert consumer.seeks == [(RAW, 0)]
    assert [e.message.refs for e in batch] == [1, 1]
    assert offsets(run(gaps.in_order(events(0, 1, 2, 3, 4)))) == [0, 1, 2, 3, 4]
    # Retention moved the log start: reading starts there.
    gaps, consumer = make(committed={}, earliest=40)
    assert offsets(run(gaps.in_order(events(40, 41)))) == [40, 41]
    assert consumer.seeks == []


def test_a_hole_is_sought_again_and_again_while_the_broker_still_has_it():
    # e.g. a partition paused by backpressure re-reads only once it flows again
    gaps, consumer = make(committed={RAW: 0}, attempts=2, interval_s=0)
    run(gaps.in_order(events(0)))
    for _ in range(6):
        assert run(gaps.in_order(events(3))) == []
    assert consumer.seeks == [(RAW, 1)] * 6


def test_a_hole_that_stays_open_warns_with_the_brokers_answer(caplog, monkeypatch):
    import pipeline.faustcompat as faustcompat

    async def unknown(tp, start, end):
        return None  # an open transaction holds the range

    clock = [1000.0]
    monkeypatch.setattr(faustcompat.time, "monotonic", lambda: clock[0])
    gaps, consumer = make(committed={RAW: 0}, attempts=2, interval_s=0, first_readable=unknown)
    run(gaps.in_order(events(0)))
    caplog.set_level("WARNING", logger=faustcompat.log.name)
    for _ in range(4):  # seeks back, then keeps seeking once out of attempts: nothing to warn yet
        assert run(gaps.in_order(events(3))) == []
    warned = [r.getMessage() for r in caplog.records if "still not read" in r.getMessage()]
    assert warned == []
    clock[0] += 31
    run(gaps.in_order(events(3)))
    warned = [r.getMessage() for r in caplog.records if "still not read" in r.getMessage()]
    assert warned == [
        "raw[0]: offsets 1-2 still not read after 31 s of seeking back to them (first readable per the broker: None)"
    ]
    assert consumer.seeks[-1] == (RAW, 1)


def test_a_hole_retention_deleted_is_accepted_after_the_last_attempt():
    gaps, consumer = make(committed={RAW: 0}, attempts=2, interval_s=0, earliest=3)
    run(gaps.in_order(events(0)))
    assert run(gaps.in_order(events(3))) == []
    assert run(gaps.in_order(events(3))) == []
    assert offsets(run(gaps.in_order(events(3)))) == [3]
    assert len(consumer.seeks) == 2


def test_only_the_part_of_a_hole_retention_deleted_is_given_up_the_rest_is_read():
    # 1-2 are gone, 3-5 are still on the broker: they must be read, not skipped with the deleted part
    gaps, consumer = make(committed={RAW: 0}, attempts=2, interval_s=0, earliest=3)
    run(gaps.in_order(events(0)))
    for _ in range(3):
        assert run(gaps.in_order(events(6))) == []
    assert consumer.gaps == [(RAW, 1, 3)]
    assert consumer.seeks == [(RAW, 1), (RAW, 1), (RAW, 3)]
    assert offsets(run(gaps.in_order(events(3, 4, 5, 6)))) == [3, 4, 5, 6]


def test_a_quiet_partition_behind_its_high_watermark_is_sought_back_even_before_its_first_message():
    gaps, consumer = make(committed={RAW: 7}, highwater={RAW: 9}, quiet_s=0)
    run(gaps.watch())
    assert consumer.seeks == [(RAW, 7)]
    assert gaps.pending({"raw"})


def test_no_seek_while_the_consumer_is_rebalancing_or_recovering_tables():
    gaps, consumer = make(committed={RAW: 7}, highwater={RAW: 9}, quiet_s=0)
    gaps.app.in_recovery = True
    run(gaps.watch())
    gaps.app.in_recovery, gaps.app.rebalancing = False, True
    run(gaps.watch())
    assert consumer.seeks == []


def test_a_caught_up_partition_is_neither_pending_nor_sought():
    gaps, consumer = make(committed={RAW: 0}, highwater={RAW: 3}, quiet_s=0)
    run(gaps.in_order(events(0, 1, 2)))
    gaps.done(events(0))
    run(gaps.watch())
    assert consumer.seeks == [] and not gaps.pending({"raw"})


def test_a_partition_not_fetched_yet_counts_as_pending():
    # The window stage must not take a stalled upstream stage (e.g. one waiting for Elasticsearch
    # right after a restart) for an idle one: event time would jump and later records be late.
    gaps, consumer = make(committed={RAW: 5}, highwater={RAW: None})
    assert gaps.pending({"raw"})


def readable_except(*runs):
    """A stand-in for the broker probe: offsets inside ``runs`` (start, end) hold transaction
    markers; it answers with the first other offset from ``start`` on, ``end`` at most."""

    async def first_readable(tp, start, end):
        while start < end and any(a <= start < b for a, b in runs):
            start += 1
        return start

    return first_readable


def test_a_run_of_transaction_markers_is_accepted_at_once_and_committed_past():
    gaps, consumer = make(committed={RAW: 0}, first_readable=readable_except((3, 4)))
    assert offsets(run(gaps.in_order(events(0, 1, 2, 4, 5)))) == [0, 1, 2, 4, 5]
    assert consumer.seeks == [] and consumer.gaps == [(RAW, 3, 4)]


def test_markers_at_the_end_of_a_quiet_partition_are_not_pending():
    gaps, consumer = make(committed={RAW: 0}, highwater={RAW: 4}, quiet_s=0, first_readable=readable_except((3, 4)))
    run(gaps.in_order(events(0, 1, 2)))
    gaps.done(events(0))
    run(gaps.watch())
    assert consumer.seeks == [] and consumer.gaps == [(RAW, 3, 4)] and not gaps.pending({"raw"})


def test_markers_at_the_end_of_a_partition_taken_over_without_new_messages_are_not_pending():
    # A worker takes over a partition whose previous owner committed everything: the committed
    # offset points at the last transaction's marker, and no message ever comes to move past it.
    gaps, consumer = make(committed={RAW: 3}, highwater={RAW: 4}, quiet_s=0, first_readable=readable_except((3, 4)))
    run(gaps.watch())
    assert consumer.seeks == [] and consumer.gaps == [(RAW, 3, 4)] and not gaps.pending({"raw"})


def test_a_hole_with_readable_records_is_still_read_again():
    gaps, consumer = make(committed={RAW: 0}, first_readable=readable_except((3, 4)))
    assert offsets(run(gaps.in_order(events(0, 1, 5)))) == [0, 1]  # 2-4 hold a record: not markers only
    assert consumer.seeks == [(RAW, 2)] and consumer.gaps == []


@given(
    st.lists(st.tuples(st.integers(0, 60), st.integers(1, 8)), max_size=12),
    st.integers(0, 70),
    st.integers(1, 10),
)
def test_passed_over_offsets_cover_a_run_exactly_when_their_union_does(noted, start, length):
    skipped = SkippedOffsets()
    skipped.topics.add(RAW.topic)
    covered: set[int] = set()
    for run_start, run_length in noted:
        skipped.note(RAW.topic, RAW.partition, run_start, run_start + run_length)
        covered |= set(range(run_start, run_start + run_length))
    end = start + length
    first = skipped.passed_over_from(RAW, start)
    assert first == min(set(range(start, 200)) - covered)  # the first offset not passed over
    assert (first >= end) == (set(range(start, end)) <= covered)
    skipped.note("other", 0, 0, 100)  # a topic no stage watches is not kept
    assert ("other", 0) not in skipped.ranges


def test_a_hole_that_starts_with_markers_is_read_again_from_its_first_record():
    # The committed offset points at the previous owner's commit markers (0-2): a re-read
    # delivers 3 first, so the stage must seek to 3 and wait for 3, not for 0.
    gaps, consumer = make(committed={RAW: 0}, first_readable=readable_except((0, 3)))
    assert run(gaps.in_order(events(10, 11))) == []
    assert consumer.gaps == [(RAW, 0, 3)] and consumer.seeks == [(RAW, 3)]
    # Copies left from before the seek come first in the next batch, then the re-read.
    assert offsets(run(gaps.in_order(events(12, 13, 3, 4, 5)))) == [3, 4, 5]
    assert offsets(run(gaps.in_order(events(6, 7, 8, 9, 10, 11, 12, 13)))) == [6, 7, 8, 9, 10, 11, 12, 13]


def test_a_marker_run_the_refetch_passes_over_is_accepted_without_asking_the_broker_again(monkeypatch):
    # The broker probe saw a record in the hole (1-9), so the stage sought back to 1; the
    # re-fetch then passed over 1-2 (markers): the stage must wait for 3, not for 1.
    import pipeline.faustcompat as faustcompat

    asked = []

    async def first_readable(tp, start, end):
        asked.append((start, end))
        return start  # "a record is there": the broker cannot say more than that it is readable

    skipped = SkippedOffsets()
    skipped.topics.add(RAW.topic)
    monkeypatch.setattr(faustcompat, "SKIPPED", skipped)
    gaps, consumer = make(committed={RAW: 1}, first_readable=first_readable)
    assert run(gaps.in_order(events(10))) == []
    assert consumer.seeks == [(RAW, 1)] and asked == [(1, 10)]
    skipped.note(RAW.topic, RAW.partition, 1, 3)  # what aiokafka's fetcher reports
    assert offsets(run(gaps.in_order(events(11, 3, 4)))) == [3, 4]
    assert consumer.gaps == [(RAW, 1, 3)] and asked == [(1, 10)]


def test_an_abandoned_batch_is_expected_again_so_its_re_read_is_processed():
    """A batch whose delivery was abandoned (a transaction that failed) is read again; the
    offsets the stage expects go back to its first one, so the re-read is not dropped as
    'already processed'."""
    gaps, _consumer = make(committed={RAW: 10})
    batch = events(10, 11, 12)
    assert offsets(run(gaps.in_order(batch))) == [10, 11, 12]
    gaps.rewind(batch)
    assert offsets(run(gaps.in_order(events(10, 11, 12, 13)))) == [10, 11, 12, 13]


def test_batches_read_in_different_generations_are_never_taken_together():
    from pipeline.faustcompat import Batch
    from pipeline.stages.batching import Pending

    async def scenario():
        pending = Pending(max_events=100)
        for generation, offsets_ in ((3, (1, 2)), (3, (3,)), (4, (1, 2)), (4, (3,))):
            taken = events(*offsets_)
            await pending.put(Batch(taken, taken, generation))
        first = await pending.take(64)
        second = await asyncio.wait_for(pending.take(64), 5)
        return [b.generation for b in first], [b.generation for b in second]

    assert run(scenario()) == ([3, 3], [4, 4])


def test_offsets_left_to_transactions_still_count_as_committed_for_fausts_watchdog():
    """faust's commit watchdog logs an ERROR for partitions it never saw committed; their
    offsets go out in transactions, so the patched commit tells it they did."""
    from pipeline.faustcompat import leave_commits_to_transactions

    thread = SimpleNamespace(tp_last_committed_at={})
    app = SimpleNamespace(consumer=SimpleNamespace(_thread=thread))
    leave_commits_to_transactions(app)
    assert run(app.consumer._commit({RAW: 42})) is True
    assert set(thread.tp_last_committed_at) == {RAW}
