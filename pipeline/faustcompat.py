"""The one adapter between finsent and faust-streaming / aiokafka internals.

Everything here leans on faust-streaming 0.15 and aiokafka behaviour that is not public API, so
it is pinned: importing this module checks the faust-streaming version. The stages use it for:
taking a batch and acknowledging it only once its outputs are acknowledged (``Intake``: faust's
``take_events`` acknowledges a batch whenever its loop body is left, even when cut short),
pointing table writes at an event's partition (``set_current_event``), reading each partition in
order without holes (``OffsetGaps``), and a partition's end offset (``end_offset``). What it
works around:

- Isolation level: faust reads ``read_uncommitted`` unless ``processing_guarantee`` is
  exactly-once, so records of *aborted* upstream transactions would be scored. finsent's
  consumer reads ``read_committed`` (``configure_consumer``), like every consumer that must not
  see aborted data.
- Skipped runs of offsets: right after an assignment, and when flow control pauses a partition,
  faust's consumer can hand a stream the messages after a run but not the run, and its
  read-offset filter then drops the re-read and counts the jump as a gap it may commit past
  (offsets lost). ``OffsetGaps`` turns that filter off (``disable_read_offset_filter``), seeks back
  in the consumer's own thread (a seek from the event loop races aiokafka's fetcher) and never
  acknowledges past a hole.
- Passed-over offsets: aiokafka's fetcher skips transaction markers and aborted records without
  a word, so the stream shows a jump; ``SkippedOffsets`` notes those runs as the fetcher unpacks
  them, so OffsetGaps tells them from skipped messages without asking the broker.
- Offset gaps: faust stops committing at an offset it never acknowledged, so a transaction
  marker or a compacted offset upstream stalls its commits (robinhood/faust#401,
  faust-streaming/faust#312 and #606); ``add_gap`` hands such runs to faust's own gap list.
- Batch acknowledgement: ``take_events`` (faust-streaming/faust#392) acknowledges its events in
  a ``finally`` when the loop body is left, also when a shutdown cut it short, and ``noack``
  does not change that (faust-streaming/faust#189); ``Intake`` holds an extra reference per
  message until the batch's outputs are acknowledged.
- Logging: the Worker's terminal spinner sets the root logger to DEBUG at level WARNING and
  above (see faust-streaming/faust#495 for its output); ``run`` turns the spinner off.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import weakref
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import faust
from aiokafka.errors import KafkaError

from . import metrics
from .transactions import Output

log = logging.getLogger("finsent.worker")

SUPPORTED = ("0.15.",)
if not faust.__version__.startswith(SUPPORTED):
    raise ImportError(
        f"finsent's faust adapter (pipeline/faustcompat.py) supports faust-streaming {', '.join(SUPPORTED)}x; "
        f"found {faust.__version__}: check each workaround in its docstring before widening the pin"
    )

_consumer_options: dict = {}


def configure_consumer(fetch_min_bytes: int = 1, fetch_max_wait_ms: int = 1500) -> None:
    """Options faust does not pass to the worker's aiokafka consumer (call before it starts):
    ``read_committed``, so aborted upstream transactions are never scored, and how long a fetch
    may wait to fill (by default a fetch returns as soon as one record is there, which under
    steady traffic means a fetch, and its CPU, per handful of records)."""
    first = not _consumer_options
    _consumer_options.update(
        _isolation_level="read_committed", _fetch_min_bytes=fetch_min_bytes, _fetch_max_wait_ms=fetch_max_wait_ms
    )
    if not first:
        return
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    create = AIOKafkaConsumerThread._create_worker_consumer

    def _create_worker_consumer(self, transport):
        consumer = create(self, transport)
        for name, value in _consumer_options.items():  # read by AIOKafkaConsumer.start() for its fetcher
            setattr(consumer, name, value)
        return consumer

    AIOKafkaConsumerThread._create_worker_consumer = _create_worker_consumer


class SkippedOffsets:
    """Offsets the consumer's fetcher passed over without handing out a record: transaction
    markers, aborted transactions, compacted records. aiokafka knows them while it unpacks a
    fetch (``PartitionRecords``) but does not say; noting them there lets OffsetGaps accept such
    a run at once instead of asking the broker (a probe per transaction marker would cap an
    exactly-once stream at a few transactions a second). Written from the consumer's thread."""

    def __init__(self):
        self.lock = threading.Lock()
        self.ranges: dict[tuple[str, int], list[tuple[int, int]]] = defaultdict(list)
        self.topics: set[str] = set()

    def note(self, topic: str, partition: int, start: int, end: int) -> None:
        if topic in self.topics and end > start:
            with self.lock:
                self.ranges[topic, partition].append((start, end))

    def passed_over_from(self, tp, start: int) -> int:
        """The first offset from ``start`` on that was not passed over (``start`` itself if it
        was not); forgets older runs."""
        with self.lock:
            ranges = self.ranges.get((tp.topic, tp.partition), [])
            ranges[:] = [r for r in ranges if r[1] > start]
            for run_start, run_end in sorted(ranges):
                if run_start > start:
                    break
                start = max(start, run_end)
        return start


SKIPPED = SkippedOffsets()


def _note_skipped_offsets() -> None:
    from aiokafka.consumer.fetcher import PartitionRecords

    unpack = PartitionRecords._unpack_records
    if getattr(unpack, "finsent", False):
        return

    def _unpack_records(self):
        expected = self.next_fetch_offset
        for record in unpack(self):
            if record.offset > expected:
                SKIPPED.note(self._tp.topic, self._tp.partition, expected, record.offset)
            expected = record.offset + 1
            yield record
        SKIPPED.note(self._tp.topic, self._tp.partition, expected, self.next_fetch_offset)

    _unpack_records.finsent = True
    PartitionRecords._unpack_records = _unpack_records


async def add_gap(app: faust.App, tp, start: int, end: int) -> None:
    """Lets faust commit past offsets ``start``..``end - 1``, which hold nothing to process."""
    add = getattr(app.consumer, "_add_gap", None)
    if add is not None:
        await add(tp, start, end)


def disable_read_offset_filter(app: faust.App) -> None:
    """OffsetGaps orders each stage's partitions itself; faust's own filter would undo its seeks."""
    app.consumer._read_offset = _NoReadOffsets()


class _NoReadOffsets(dict):
    """Stands in for faust's consumer ``_read_offset``. faust drops every message whose offset is
    below the last one it read, and counts a jump past unread offsets as a legitimate gap that
    it may commit past. After OffsetGaps seeks back to a hole, messages fetched before the seek
    move that mark ahead again, so the re-read was dropped and the hole committed: messages lost
    (the fault drill saw runs of ~900). Reading "nothing read yet" for every partition turns both
    off; OffsetGaps skips copies of processed offsets and never acknowledges past a hole."""

    def __getitem__(self, tp):
        return None


class OffsetGaps:
    """Keeps each stage reading every partition in offset order, without holes.

    With faust-streaming 0.15, in the first seconds after a worker (re)starts, the consumer now
    and then hands a stream the offsets after a run but not the run itself: those messages would be
    neither processed nor committed until the next restart, and processing what follows first
    would make their records late for their windows. At the first message past a hole (or, for a
    hole at the end, when the stage has waited ``quiet_s`` while its partition holds more), the
    stage seeks back to the hole (again after a second, as the consumer can drop the re-read too)
    and sets aside the messages past it: they are not acknowledged, and come again after the seek.
    A hole that holds nothing readable (transaction markers, aborted transactions:
    ``first_readable`` asks the broker, see admin.ReadableProbe) is accepted at once; so is the run
    of such offsets a hole starts with, and the stage then waits for the first readable offset,
    which is where a re-read starts delivering. Otherwise a hole is accepted, after ``attempts``
    seeks, only if the broker has deleted those offsets (retention). An accepted run is handed to
    faust as a gap, so its committed offset moves past it."""

    def __init__(
        self,
        app: faust.App,
        topics: set[str],
        attempts: int = 5,
        interval_s: float = 1.0,
        quiet_s: float = 3.0,
        first_readable=None,
    ):
        self.app, self.topics = app, topics
        # async (tp, start, end) -> the first offset from start on holding a record to read (end:
        # none below it; None: not known), or None: assume every offset holds one
        self.first_readable = first_readable
        self.max_attempts, self.interval_s, self.quiet_s = attempts, interval_s, quiet_s
        self.expected: dict = {}  # tp -> next offset, advanced only without holes
        self.tries: dict = {}  # tp -> (hole start, seeks so far, monotonic time of the last)
        self.last_seen: dict = {}  # tp -> monotonic time of its last message
        self.busy: Counter[str] = Counter()  # topic -> its batches taken and not yet done
        self.log_start: dict = {}  # tp -> earliest offset the broker has, for partitions never committed
        # tp -> end of a run accepted before the partition's first message (it holds nothing to
        # process): counts for ``pending`` only, never for which offsets the stage reads
        self.quiet_until: dict = {}
        # tp -> (hole start, monotonic time seeking back to it began, time of the last warning):
        # the re-seeks log at INFO, so a hole that stays open warns now and then on its own
        self.open_holes: dict = {}
        self.probed: dict = {}  # tp -> the broker's last answer on a hole (its first readable offset)
        self.assigned_at = time.monotonic()
        SKIPPED.topics |= topics
        _note_skipped_offsets()

    def rewind(self, events) -> None:
        """Events given up on (their batch abandoned) are expected again: a partition's next
        offset goes back to the first of them, so their re-read is processed."""
        for event in events:
            tp, offset = event.message.tp, event.message.offset
            if tp in self.expected and self.expected[tp] > offset:
                self.expected[tp] = offset

    def reset(self) -> None:  # a new assignment starts from the committed offsets
        self.expected.clear()
        self.tries.clear()
        self.last_seen.clear()
        self.log_start.clear()
        self.quiet_until.clear()
        self.open_holes.clear()
        self.probed.clear()
        self.assigned_at = time.monotonic()

    def _next(self, tp) -> int | None:
        """The offset the stage must read next: after a new assignment, the committed offset the
        consumer was sent back to (the first message handed over after a rebalance can lie past
        it); where the group has committed nothing yet, the start of the log (the consumer reads
        from the earliest offset then, and can skip a run there too: a fresh group once lost 5
        items of one window that way); None while that is not known."""
        if tp in self.expected:
            return self.expected[tp]
        committed = self.app.consumer._committed_offset.get(tp)
        return committed if committed is not None else self.log_start.get(tp)

    async def _start(self, tp) -> int | None:
        """``_next``, asking the broker for the log start of a partition never committed."""
        want = self._next(tp)
        if want is None and not await self._read_log_start(tp):
            return None
        return self._next(tp)

    async def _read_log_start(self, tp) -> bool:
        try:
            earliest = (await self.app.consumer.earliest_offsets(tp)).get(tp)
        except (TimeoutError, KafkaError, AssertionError, KeyError):
            return False
        if earliest is None:
            return False
        self.log_start[tp] = earliest
        return True

    def settled(self) -> bool:
        """Not inside a rebalance or a table recovery: positions are where the consumer put them."""
        app = self.app
        return (
            not getattr(app, "rebalancing", False)
            and not getattr(app, "in_recovery", False)
            and app.flow_control.is_active()
        )

    def pending(self, topics: set[str]) -> bool:
        """Whether any assigned partition of ``topics`` holds messages not processed yet (a batch
        in progress counts)."""
        if any(self.busy[topic] for topic in topics):
            return True
        consumer = self.app.consumer
        for tp in consumer.assignment():
            if tp.topic not in topics:
                continue
            highwater = end_offset(self.app, tp)
            if highwater is None:  # not fetched yet (just assigned, or paused): assume it holds more
                return True
            position = self._next(tp)
            if position is not None and highwater > max(position, self.quiet_until.get(tp, position)):
                return True
        return False

    def done(self, events) -> None:
        self.busy.subtract({event.message.tp.topic for event in events})
        self.busy += Counter()  # drops topics at zero

    async def watch(self) -> None:
        """A hole at the end of what was sent shows no later message: when a stage has waited
        ``quiet_s`` for input while its partition's high watermark is past the next offset, seek
        back too. A partition that has had no message at all since the assignment is only sought
        back, never declared a real hole: its stage may just not have started yet. A run there
        that holds nothing readable stops counting as pending, without moving the next offset."""
        if not self.settled():
            return
        now = time.monotonic()
        for tp in self.app.consumer.assignment():
            if tp.topic not in self.topics or self.busy[tp.topic]:
                continue
            if now - self.last_seen.get(tp, self.assigned_at) < self.quiet_s:
                continue
            want = await self._start(tp)
            if want is None:
                continue
            highwater = end_offset(self.app, tp)
            if highwater is None or highwater <= want:
                continue
            if not await self._hole(tp, want, highwater, watching=True):
                if tp in self.expected:
                    self.expected[tp] = highwater
                else:  # taken over with only a marker past the committed offset: nothing pending
                    self.quiet_until[tp] = highwater
            self.last_seen[tp] = now  # give the re-read time to arrive

    async def in_order(self, events) -> list:
        """The events to process now; the others (past a hole) are set aside, unacknowledged."""
        keep, holes = [], set()
        now = time.monotonic()
        self.busy.update({event.message.tp.topic for event in events})
        for event in events:
            tp, offset = event.message.tp, event.message.offset
            self.last_seen[tp] = now
            want = await self._start(tp)
            # Each event is checked, not only the first past a hole: a batch can hold copies left
            # from before a seek back and, after them, the re-read that starts at ``want``.
            if want is None or offset == want:
                self.expected[tp] = offset + 1
                keep.append(event)
                continue
            if offset < want:
                # Already processed by this worker (the consumer delivered it twice, as it does
                # around a restart): processing it again would only re-send what is already out.
                continue
            if tp not in holes:  # one seek back per partition and batch
                if not await self._hole(tp, want, offset):
                    self.expected[tp] = offset + 1  # a real hole: accept it
                    keep.append(event)
                    continue
                holes.add(tp)
            # Never acknowledged: its offset is committed only once its re-read copy is processed.
            event.message.incref()
            self.app.consumer._unacked_messages.discard(event.message)
        return keep

    async def _seek(self, tp, offset: int) -> None:
        consumer = self.app.consumer
        thread = getattr(consumer, "_thread", None)
        if thread is not None and hasattr(thread, "seek_wait"):
            # In the consumer's own thread: faust's plain seek calls aiokafka from this one, which
            # races its fetcher (seen as a KeyError that crashed the worker in the fault drill).
            await thread.seek_wait({tp: offset})
        else:
            await consumer.seek(tp, offset)

    async def _readable_from(self, tp, start: int, end: int) -> int:
        """The first offset in ``start``..``end - 1`` that may hold a record to read; ``end`` if
        none does. Where the broker cannot tell, the first one not known to be empty."""
        start = SKIPPED.passed_over_from(tp, start)  # the fetcher passed over them: nothing there
        if start >= end or self.first_readable is None:
            return min(start, end)
        try:
            self.probed[tp] = await self.first_readable(tp, start, end)
        except Exception as exc:  # the broker unreachable: unknown, so treat it as a real hole
            log.info(
                "%s[%d]: cannot tell whether offsets %d-%d are readable (%r)",
                tp.topic,
                tp.partition,
                start,
                end - 1,
                exc,
            )
            self.probed[tp] = None
        return start if self.probed[tp] is None else max(start, min(self.probed[tp], end))

    async def _accept(self, tp, start: int, end: int) -> None:
        """Accepts offsets ``start``..``end - 1`` as holding nothing to process: faust may commit
        past them (it otherwise stops committing at the first offset it never acknowledged)."""
        self.tries.pop(tp, None)
        self.open_holes.pop(tp, None)
        await add_gap(self.app, tp, start, end)

    async def _deleted(self, tp, offset: int) -> bool:
        return await self._read_log_start(tp) and self.log_start[tp] > offset

    def _warn_still_open(self, tp, want: int, offset: int, every_s: float = 30.0) -> None:
        start, since, warned = self.open_holes.get(tp, (None, 0.0, 0.0))
        now = time.monotonic()
        if start != want:
            self.open_holes[tp] = (want, now, now)
        elif now - warned >= every_s:
            self.open_holes[tp] = (want, since, now)
            log.warning(
                "%s[%d]: offsets %d-%d still not read after %.0f s of seeking back to them (first readable per the broker: %s)",
                tp.topic,
                tp.partition,
                want,
                offset - 1,
                now - since,
                self.probed.get(tp, "not asked"),
            )

    async def _hole(self, tp, want: int, offset: int, watching: bool = False) -> bool:
        """Seeks back to a hole when due; False once the hole is accepted as real. ``watching``:
        called by ``watch``, beside the stream, which may have read on while this awaited."""
        start, tries, last = self.tries.get(tp, (None, 0, 0.0))
        if start != want:
            tries, last = 0, 0.0
            first = await self._readable_from(tp, want, offset)
            if first >= offset:
                await self._accept(tp, want, offset)
                return False
        else:  # sought back already: what the re-fetch passed over (no broker probe per batch)
            first = SKIPPED.passed_over_from(tp, want)
        if first > want and not watching:
            # Only the run before ``first`` is empty: a re-read delivers ``first`` first.
            await self._accept(tp, want, first)
            self.expected[tp] = want = first
            if first >= offset:
                return False
            tries, last = 0, 0.0
        if tries >= self.max_attempts:
            # Only data the broker no longer has (retention) is given up on; otherwise keep
            # asking: a partition paused by backpressure (e.g. while Elasticsearch is down) is
            # re-read only once it flows again, which can take minutes.
            if await self._readable_from(tp, want, offset) >= offset:  # e.g. a transaction open at first
                await self._accept(tp, want, offset)
                return False
            if await self._deleted(tp, want):
                kept_from = min(self.log_start[tp], offset)
                log.error(
                    "%s[%d]: offsets %d-%d were deleted by retention before they were read; continuing without them",
                    tp.topic,
                    tp.partition,
                    want,
                    kept_from - 1,
                )
                await self._accept(tp, want, kept_from)
                if kept_from == offset:
                    return False
                # The broker still has the rest of the run: read it from the new log start.
                self.expected[tp] = want = kept_from
                tries, last = 0, 0.0
            else:
                tries = self.max_attempts - 1
                self._warn_still_open(tp, want, offset)
        if watching and (self._next(tp) != want or self.busy[tp.topic]):
            return True  # the stream has moved on meanwhile: no hole to seek back to
        if time.monotonic() - last >= self.interval_s:
            if tries == 0:
                metrics.OFFSET_GAPS.labels(tp.topic).inc()
            (log.warning if tries == 0 else log.info)(
                "%s[%d]: offsets %d-%d were skipped by the consumer; reading them again",
                tp.topic,
                tp.partition,
                want,
                offset - 1,
            )
            self.tries[tp] = (want, tries + 1, time.monotonic())
            try:
                await self._seek(tp, want)
            except (AssertionError, KeyError, ValueError):  # revoked meanwhile: its new owner reads it
                log.info("%s[%d] is no longer assigned; not seeking", tp.topic, tp.partition)
            except (TimeoutError, KafkaError) as exc:  # the next attempt tries again
                log.warning("%s[%d]: seeking to %d failed (%r)", tp.topic, tp.partition, want, exc)
        return True


def set_current_event(event) -> None:
    """Table writes go to the changelog partition of the 'current event'; a batch from
    take_events mixes partitions, so point the context at each event before touching the table."""
    from faust.streams import _current_event

    _current_event.set(weakref.ref(event))


def changelog_output(table, partition: int, key, value) -> Output:
    """A table write as the changelog record faust would send (same serialisers), for a stage
    that commits it in its own transaction (exactly-once)."""
    topic = table.changelog_topic
    key_bytes, _ = topic.prepare_key(key, table.key_serializer)
    value_bytes, _ = topic.prepare_value(value, table.value_serializer)
    return Output(topic.get_topic_name(), key_bytes, value_bytes, partition)


def write_local(table, event, key, value) -> None:
    """Writes the table's local store only: its changelog record went out in a transaction."""
    set_current_event(event)
    if value is None:
        with contextlib.suppress(KeyError):
            del table.data[key]
    else:
        table.data[key] = value


def leave_commits_to_transactions(app: faust.App) -> None:
    """Exactly-once, each batch's transaction commits its offsets. faust's own periodic commit
    would race them: computed before batch N+1's transaction and landing after it, it would move
    the group's offset back to batch N's end, and a crash would then repeat batch N+1's outputs.
    faust still acknowledges and tracks offsets; it just never sends them. It only asks to
    commit offsets whose batches are acknowledged, which their transactions committed already, so
    its commit watchdog is told they are: otherwise it logs "Has not committed ... at all since
    worker start" as an ERROR every few minutes for every busy partition."""

    async def _commit(offsets) -> bool:
        committed_at = getattr(getattr(app.consumer, "_thread", None), "tp_last_committed_at", None)
        if committed_at is not None:
            now = time.monotonic()  # faust's watchdog measures with monotonic() too
            committed_at.update({tp: now for tp in offsets})
        return True

    app.consumer._commit = _commit


def fence_before_seeking(app: faust.App, fence) -> None:
    """After each rebalance faust reads the group's committed offsets and seeks there
    (``perform_seek``). A transaction its previous owner had asked to commit may still be
    completing then, and its offsets are not visible yet: reading too early would process that
    transaction's input again (duplicates). ``fence`` (async, the assigned partitions) starts
    this worker's transactional producers first, which returns only once every earlier
    transaction of their ids has completed or aborted."""
    consumer = app.consumer
    seek = consumer.perform_seek

    async def perform_seek() -> None:
        await fence(consumer.assignment())
        await seek()

    consumer.perform_seek = perform_seek


def recover_to_readable_end(app: faust.App, last_readable) -> None:
    """A changelog written in transactions ends in a commit marker that no consumer receives, so
    faust's recovery (done when it has read the record at end offset - 1) would wait forever; it
    only allows for markers when faust's own exactly-once mode is on. ``last_readable`` (async:
    topic, partition, end offset -> the offset of the last readable record below the end, -1 if
    none, None if unknown) gives the offset that recovery must reach instead."""
    recovery = app.tables.recovery
    build = recovery._build_highwaters

    async def _build_highwaters(consumer, tps, destination, title):
        await build(consumer, tps, destination, title)
        for tp, highwater in list(destination.items()):
            if highwater is None or highwater < 0:
                continue
            last = await last_readable(tp.topic, tp.partition, highwater + 1)
            if last is not None and last < highwater:
                destination[tp] = last

    recovery._build_highwaters = _build_highwaters


class Batch:
    """A batch a stage took from its stream. ``events`` are the ones to process now, in offset
    order (``taken`` also holds those set aside past a hole, see OffsetGaps)."""

    def __init__(self, taken: list, events: list, generation: int | None = None):
        self.taken, self.events = taken, events
        self.generation = generation  # the consumer group generation it was read in
        self.settled = False  # acknowledged or abandoned
        self.finished = False  # no longer counted as in progress (OffsetGaps.done)


class Intake:
    """How a stage takes a batch and acknowledges it only once its outputs are acknowledged.

    ``take_events`` acknowledges a batch whenever its loop body is left, also when the body was
    cut short (shutdown cancels it; the event loop closes the generator). An extra reference on
    each message, taken here, keeps that acknowledgement from becoming final; ``ack`` drops it,
    before or after the loop body returns (a stage may deliver a batch after taking the next).
    faust commits only offsets acknowledged without a gap before them, so a batch left
    unacknowledged is read again by whoever owns its partition next."""

    def __init__(self, app: faust.App, gaps: OffsetGaps):
        self.app, self.gaps = app, gaps

    async def take(self, events) -> Batch:
        for event in events:
            event.message.incref()
        generation = self.generation()
        return Batch(list(events), await self.gaps.in_order(events), generation)

    def ack(self, batch: Batch) -> None:
        """The batch's outputs are acknowledged: its offsets may be committed."""
        if batch.settled:
            return
        batch.settled = True
        for event in batch.taken:
            event.ack()  # the final acknowledgement when take_events has already given its own
        self._finish(batch)

    def abandon(self, batch: Batch) -> None:
        """Leaves the batch unacknowledged: it is read again, by whoever owns its partitions
        (this worker too: the offsets it expects next go back to the batch's first ones, so the
        re-read is taken, not dropped as already processed)."""
        batch.settled = True
        self.gaps.rewind(batch.events)
        self._finish(batch)

    def _finish(self, batch: Batch) -> None:
        if not batch.finished:
            batch.finished = True
            self.gaps.done(batch.taken)

    @asynccontextmanager
    async def batch(self, events) -> AsyncIterator[Batch]:
        """``async with intake.batch(events) as batch``: acknowledged when the block completes,
        unless it called ``abandon``; left unacknowledged when the block raises or is cancelled."""
        batch = await self.take(events)
        try:
            yield batch
        except BaseException:
            self._finish(batch)  # a shielded delivery may still acknowledge it
            raise
        self.ack(batch)

    def settled(self) -> bool:
        """Not inside a rebalance or a table recovery (tables hold what was restored)."""
        return self.gaps.settled()

    def generation(self) -> int:
        """Changes with every rebalance of the group."""
        return self.app.consumer_generation_id

    def assigned(self, topic: str) -> list[int]:
        """The partitions of ``topic`` this worker owns now."""
        return sorted(tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic == topic)


def end_offset(app: faust.App, tp) -> int | None:
    """The partition's end offset, or None when unknown or no longer assigned (mid-rebalance)."""
    try:
        return app.consumer.highwater(tp)
    except (AssertionError, KeyError):
        return None


def run(app: faust.App, loglevel: str) -> None:
    """Runs a worker until it is stopped. Without faust's terminal spinner: to spin it on every
    log record, faust's Worker sets the root logger to DEBUG whenever the level is WARNING or
    above, so every debug call in faust and aiokafka (several per message sent) built a record
    that was then thrown away - about a seventh of the event loop's time under load."""
    from faust.worker import Worker

    worker = Worker(app, loglevel=loglevel, quiet=True)
    worker.spinner = None
    worker.execute_from_commandline()
