"""The window stage's logic, per partition of the window topic (no Kafka: app.py feeds it events
and hands it the table's ``get``).

Each scored record reaches this stage once per topic/ticker it mentions, keyed by that name, so
a name's records, its window state and its alert state all live in one partition. Per partition
the stage keeps a stream time (see windows.py) and the list of names it tracks; past
``max_topics`` names (spread over the partitions) further names are counted under ``other``,
which keeps memory and metric labels bounded.

Delivery is at-least-once, so an item can arrive twice (a batch redelivered anywhere upstream,
even as a new copy with a new offset). A name's state keeps the (hashed) ids counted in each
bucket whose windows are all still open, and the highest upstream offset received from each
source, so a repeat is recognised exactly. Counts, ids, offsets and the name's frontier (which
windows it has emitted, hence which records are late) live in one table value, so a batch's effect
on a name is stored all at once or not at all, even when a SIGKILL lets some of the batch's table
writes reach the changelog and not others.

Nothing is written while a batch is processed: ``writes()`` returns the new table values, which
app.py stores only after the batch's aggregates and alerts are acknowledged. A batch cut short
therefore redoes its work on redelivery instead of losing an aggregate or an alert.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime

from . import admission as admission_policy
from . import windows
from .admission import OTHER, AdmissionPolicy
from .alerts import Rule, apply_rules
from .schemas import Alert, WindowAggregate, WindowItem

# Hashed ids a name's state keeps across its open buckets (~22 bytes each once encoded): what
# bounds the table value, and so its changelog record, below the 900 kB record limit however
# busy the name. Past it, repeats are recognised by their offsets alone (``_delivered_before``).
MAX_SEEN_IDS = 16_000


def _iso(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


@dataclass
class WindowOutputs:
    aggregates: list[WindowAggregate] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    reroute: list[WindowItem] = field(default_factory=list)  # items to count under OTHER
    late: int = 0
    duplicates: int = 0
    out_of_bounds: dict[str, int] = field(default_factory=dict)  # "future" / "too_old" -> records dropped
    closed: list[windows.ClosedWindow] = field(default_factory=list)
    forgotten: list[str] = field(default_factory=list)  # names no longer tracked (metrics to drop)
    evicted: int = 0  # names that lost their slot to more active ones (admission.py)


class WindowProcessor:
    def __init__(
        self,
        config: windows.WindowConfig,
        rules: list[Rule],
        max_topics: int,
        partitions: int,
        lookup,
        idle_s: float = 10.0,
        upstream_sources: list[str] | None = None,
        max_clock_skew_s: float = 300.0,
        max_event_age_s: float = 7 * 86_400.0,
        upstream_hold_s: float = 120.0,
        known_names: frozenset[str] = frozenset(),
        name_half_life_s: float = 600.0,
    ):
        self.config = config
        # The longest a stalled upstream (batches in flight, a partition not committed to its end)
        # holds stream time beyond ``idle_s``: past it, a silent source counts as idle anyway.
        self.upstream_hold_s = upstream_hold_s
        self.max_clock_skew_s, self.max_event_age_s = max_clock_skew_s, max_event_age_s
        # The upstream streams whose event times each run forward (see ``record``'s ``src``).
        self.upstream = upstream_sources if upstream_sources is not None else [str(p) for p in range(partitions)]
        self.rules = rules
        self.admission = AdmissionPolicy(
            capacity=max(1, math.ceil(max_topics / partitions)), known=known_names, half_life_s=name_half_life_s
        )
        self.lookup = lookup  # key -> stored value or None (the Faust table's get)
        self.idle_s = idle_s
        self._pending: dict[str, tuple[int, dict | None]] = {}
        self._copied: set[str] = set()  # names whose pending state is this batch's own copy
        self._last_record_wall: dict[int, float] = {}
        self._last_arrival_wall: dict[int, float] = {}  # the last record itself (stalls do not move it)
        self._candidates: dict[int, OrderedDict] = {}  # partition -> names waiting for a slot (admission.py)
        self._last_advance_wall: dict[int, float] = {}
        self._heard_wall: dict[int, dict[str, float]] = {}  # partition -> upstream partition -> last heard
        self.tracked: dict[int, int] = {}  # partition -> names with their own windows
        self.names: dict[int, list[str]] = {}  # partition -> those names (their metrics go when it moves)
        # True while upstream stages (in this worker or another of the group) have messages they
        # have not processed yet.
        self.upstream_pending = lambda: False

    # --- the write-back cache --------------------------------------------------------------------
    def _get(self, key: str):
        if key in self._pending:
            return self._pending[key][1]
        return self.lookup(key)

    def _put(self, key: str, partition: int, value: dict | None) -> None:
        self._pending[key] = (partition, value)

    def _state(self, name: str, partition: int) -> dict:
        """The name's state to change in this batch: copied once per batch (the stored one stays
        as it was until the batch is acknowledged), then changed in place."""
        key = f"t/{name}"
        if key in self._copied:
            return self._pending[key][1]
        state = _deep_copy(self._get(key) or windows.new_state())
        self._copied.add(key)
        self._put(key, partition, state)
        return state

    def writes(self) -> dict[str, tuple[int, dict | None]]:
        """key -> (partition, value or None to delete); clears the cache."""
        pending, self._pending = self._pending, {}
        self._copied.clear()
        return pending

    def _meta(self, partition: int) -> dict:
        """The partition's meta value to change in this batch (the stored one stays as it was).
        sources: upstream source -> latest event time received from it; topics: names with
        windows of their own; activity: see admission.py."""
        key = f"p/{partition}"
        if key in self._pending and self._pending[key][1] is not None:
            return self._pending[key][1]  # this batch's own copy
        meta = self.lookup(key)
        if not meta:
            return {"stream_time": None, "topics": [], "sources": {}, "activity": {}}
        copy = {**meta, "topics": list(meta["topics"]), "sources": dict(meta.get("sources", {}))}
        if "activity" in meta:
            copy["activity"] = dict(meta["activity"])
        else:  # written before admission by activity: every name it tracked keeps its slot
            at = meta["stream_time"] or 0.0
            copy["activity"] = {n: [1.0, at] for n in meta["topics"] if n not in self.admission.known | {OTHER}}
        return copy

    def stream_time(self, partition: int) -> float | None:
        """The partition's watermark: windows ending (plus lateness) before it are closed."""
        return self._meta(partition)["stream_time"]

    # --- events ----------------------------------------------------------------------------------
    def record(
        self, partition: int, item: WindowItem, wall_now: float, out: WindowOutputs, position: int | None = None
    ) -> None:
        """One scored record for one name. ``item.source`` names the upstream stream it came
        through, one whose event time runs forward (the worker uses the pair of partitions it
        crossed: internal by-fingerprint topic and raw topic); its offsets there (optional)
        recognise repeats (``_delivered_before``). ``position``: the item's offset in the window
        partition, which a copy counted under ``other`` carries as its offset there."""
        self._last_record_wall[partition] = self._last_advance_wall[partition] = wall_now
        self._last_arrival_wall[partition] = wall_now
        meta = self._meta(partition)
        t = item.time
        bound = self._out_of_bounds(t, meta["stream_time"], wall_now)
        if bound:  # never counted, never moves stream time
            out.out_of_bounds[bound] = out.out_of_bounds.get(bound, 0) + 1
            return
        name = item.topic
        candidates = self._candidates.setdefault(partition, OrderedDict())
        admission = admission_policy.admit(self.admission, meta, candidates, name, t, self._evictable)
        if admission.evicted is not None:
            self._evict(partition, admission.evicted, out)
        if not admission.admitted:
            # Its source in the other partition is this window partition, read in offset order.
            update = {"topic": OTHER, "source": f"w{partition}", "offset": position, "raw_offset": None}
            out.reroute.append(item.model_copy(update=update))
            self._advance_on(partition, meta, item, t, wall_now)
            return
        state = self._state(name, partition)
        bucket = str(self.config.bucket_of(t))
        digest = hashlib.blake2b(item.id.encode(), digest_size=8).hexdigest()
        if digest in state["seen"].get(bucket, ()) or _delivered_before(state, item):
            out.duplicates += 1  # checked first: a repeat that arrives late is still a repeat
            return
        # Late: a window of this record was already emitted for this name (as its own state, stored
        # with its counts, says); a name without state goes by the partition's stream time (its
        # windows may have gone out before it was forgotten).
        late = (
            windows.emitted(self.config, state, t) if state["frontier"] else self.config.is_late(t, meta["stream_time"])
        )
        if late:
            state["late"] = state.get("late", 0) + 1
            out.late += 1
        else:
            if sum(len(ids) for ids in state["seen"].values()) < MAX_SEEN_IDS:
                state["seen"].setdefault(bucket, {})[digest] = 1
            windows.add(self.config, state, t, item.score, item.label)
        _note_delivery(state, item)
        self._advance_on(partition, meta, item, t, wall_now)

    def _advance_on(self, partition: int, meta: dict, item: WindowItem, t: float, wall_now: float) -> None:
        """The record's source has progressed to ``t``: stream time may move."""
        sources = meta["sources"]
        sources[item.source] = max(sources.get(item.source, t), t)
        self._heard(partition)[item.source] = wall_now
        self._advance(partition, meta, wall_now)

    def _evictable(self, name: str) -> bool:
        """A name with a firing alert keeps its windows (its episode must resolve)."""
        state = self._get(f"t/{name}") or {}
        return not any(a.get("status") == "firing" for a in state.get("alerts", {}).values())

    def _evict(self, partition: int, name: str, out: WindowOutputs) -> None:
        """``name`` lost its slot to a more active one: its open windows are dropped, not emitted."""
        key = f"t/{name}"
        self._put(key, partition, None)
        self._copied.discard(key)
        out.forgotten.append(name)
        out.evicted += 1

    def _out_of_bounds(self, t: float, stream_time: float | None, wall_now: float) -> str | None:
        """A time ahead of the wall clock by more than the skew, or behind stream time by more
        than the maximum age (or not a finite number at all), is no event time to window by."""
        if not math.isfinite(t) or t > wall_now + self.max_clock_skew_s:
            return "future"
        if stream_time is not None and t < stream_time - self.max_event_age_s:
            return "too_old"
        return None

    def _heard(self, partition: int) -> dict[str, float]:
        return self._heard_wall.setdefault(partition, {})

    def _advance(self, partition: int, meta: dict, wall_now: float) -> None:
        """Stream time = the least progress among the upstream sources that are not idle: items
        from several sources interleave, and one running behind must not make the others'
        records late. It never goes back.

        A source is idle once silent for ``idle_s``, or, while upstream stages hold unprocessed
        messages (it may be stalled rather than idle), for ``idle_s + upstream_hold_s``. A source
        never heard from counts as silent since the processor first asked about it. So a source
        that carries nothing for this partition (a producer that keys by source) holds stream time
        once, for at most that bound, and never again while the others flow."""
        heard = self._heard(partition)
        sources = meta.get("sources", {})
        patience = self.idle_s + (self.upstream_hold_s if self.upstream_pending() else 0.0)

        def waiting_for(src: str) -> bool:
            return wall_now - heard.setdefault(src, wall_now) < patience

        unheard = [src for src in self.upstream if src not in sources and waiting_for(src)]
        if unheard:  # not heard from yet, but not idle yet either: wait for them
            self._put(f"p/{partition}", partition, meta)
            return
        active = [t for src, t in sources.items() if waiting_for(src)]
        if active:
            current = meta["stream_time"]
            meta["stream_time"] = min(active) if current is None else max(current, min(active))
            # An idle source already behind stream time adds nothing; it is noted again when heard.
            stream_time = meta["stream_time"]
            meta["sources"] = {s: t for s, t in sources.items() if t >= stream_time or waiting_for(s)}
        self._put(f"p/{partition}", partition, meta)

    def tick(self, partition: int, wall_now: float) -> None:
        """Wall-clock heartbeat. Upstream partitions silent for ``idle_s`` stop holding stream time
        back; once the whole partition is silent that long, its stream time jumps to the latest
        event time it received and then follows the wall clock, so the last windows of a stream
        close even when no later record arrives."""
        self._last_record_wall.setdefault(partition, wall_now)
        arrival = self._last_arrival_wall.setdefault(partition, wall_now)
        last_advance = self._last_advance_wall.setdefault(partition, wall_now)
        meta = self._meta(partition)
        if not meta.get("sources"):
            return
        # A stall upstream is not silence: the clock starts after it, or once it has held the
        # partition for ``upstream_hold_s`` past ``idle_s`` (an answer that never comes must
        # not hold the last windows for good).
        if self.upstream_pending() and wall_now - arrival < self.idle_s + self.upstream_hold_s:
            self._last_advance_wall[partition] = self._last_record_wall[partition] = wall_now
        if wall_now - self._last_record_wall[partition] < self.idle_s:
            self._advance(partition, meta, wall_now)
            return
        # Silent: everything sent so far has arrived; from there event time follows the clock.
        reached = max([meta["stream_time"] or 0, *meta["sources"].values()])
        meta["stream_time"] = reached + (wall_now - last_advance)
        self._last_advance_wall[partition] = wall_now
        self._put(f"p/{partition}", partition, meta)

    def close_partition(self, partition: int, out: WindowOutputs) -> None:
        """Closes what stream time allows for every name of the partition; evaluates the rules."""
        meta = self._meta(partition)
        if meta["stream_time"] is None:
            return
        keep = []
        for name in meta["topics"]:
            key = f"t/{name}"
            stored = self._get(key)
            if stored is None:
                continue
            # A copy only for names this batch changes: a quiet name is stored again only once
            # one of its windows closes.
            state = stored if key in self._copied else _deep_copy(stored)
            closed = windows.close(self.config, name, state, meta["stream_time"])
            first_spec = self.config.specs[0].name
            for window in closed:
                out.closed.append(window)
                if window.messages:
                    late = 0
                    if window.spec.name == first_spec:  # late records are reported once, with the next window
                        late, state["late"] = state.get("late", 0), 0
                    out.aggregates.append(_aggregate(window, late))
                self._evaluate(window, state, out)
            if windows.idle(state, meta["stream_time"], self.config):
                admission_policy.forget(meta, name)
                self._put(key, partition, None)
                self._copied.discard(key)
                out.forgotten.append(name)
                continue
            keep.append(name)
            if closed and key not in self._copied:
                self._put(key, partition, state)
        self.tracked[partition] = len(keep)
        self.names[partition] = keep
        if keep != meta["topics"]:
            meta["topics"] = keep
            meta["activity"] = {n: a for n, a in meta["activity"].items() if n in keep}
            self._put(f"p/{partition}", partition, meta)

    def forget_partition(self, partition: int) -> None:
        """The partition moved to another worker: what is kept in memory for it goes."""
        for kept in (self._candidates, self._heard_wall, self._last_record_wall, self._last_arrival_wall):
            kept.pop(partition, None)
        self._last_advance_wall.pop(partition, None)

    def _evaluate(self, window: windows.ClosedWindow, state: dict, out: WindowOutputs) -> None:
        out.alerts.extend(Alert(**document) for document in apply_rules(self.rules, window, state["alerts"]))


def _delivered_before(state: dict, item: WindowItem) -> bool:
    """Whether ``item`` repeats one this name already received. A name gets at most one item per
    upstream message, and items from one source arrive in the order of their offsets (the decode
    stage reads a raw partition in order and re-keys in that order, the classify stage reads its
    partition in order and sends in that order), so after a restart or rebalance re-reads a
    stretch, every item at or below the highest offset received is a repeat, even once its window
    has closed and its bucket's ids are gone. Two marks per source: ``o``, the offset in the
    by-fingerprint partition (a classify batch read again), and ``ro``, the raw offset (a raw
    stretch decoded again after a worker died, whose copies get new by-fingerprint offsets)."""
    for offset, marks in ((item.offset, "marks"), (item.raw_offset, "raw_marks")):
        mark = state.get(marks, {}).get(item.source)
        if mark is not None and offset is not None and offset <= mark:
            return True
    return False


def _note_delivery(state: dict, item: WindowItem) -> None:
    for offset, marks in ((item.offset, "marks"), (item.raw_offset, "raw_marks")):
        if offset is not None:
            state[marks][item.source] = max(offset, state[marks].get(item.source, offset))


def _deep_copy(state: dict) -> dict:
    """A copy to change (the stored one stays as it was until the batch is acknowledged); fills in
    fields that states written by older versions lack."""
    return {
        **state,
        "buckets": {k: list(v) for k, v in state["buckets"].items()},
        "seen": {k: dict(v) for k, v in state.get("seen", {}).items()},
        "marks": dict(state.get("marks", {})),
        "raw_marks": dict(state.get("raw_marks", {})),
        "closed": dict(state.get("closed", {})),
        "frontier": dict(state["frontier"]),
        "baseline": {k: dict(v) for k, v in state["baseline"].items()},
        "alerts": {k: dict(v) for k, v in state["alerts"].items()},
    }


def _aggregate(window: windows.ClosedWindow, late: int) -> WindowAggregate:
    return WindowAggregate(
        id=f"{window.topic}|{window.spec.name}|{int(window.start)}",
        topic=window.topic,
        window=window.spec.name,
        window_kind=window.spec.kind,
        window_s=window.spec.size_s,
        start=_iso(window.start),
        end=_iso(window.end),
        messages=window.messages,
        sentiment_mean=window.sentiment_mean,
        share_negative=window.shares["negative"],
        share_neutral=window.shares["neutral"],
        share_positive=window.shares["positive"],
        baseline_sentiment=window.baseline_sentiment,
        baseline_messages=window.baseline_messages,
        sentiment_z=window.sentiment_z,
        volume_z=window.volume_z,
        late_records=late,
    )
