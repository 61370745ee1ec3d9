"""Window aggregate arithmetic (pure: no Kafka, no clocks).

Scored records are counted into small event-time buckets per topic (the greatest common divisor
of every window's size and step, 1 min by default); a tumbling or hopping window is the sum of
the buckets it spans, so a record is stored once however many hopping windows contain it.

Event time is ``published_at``. Each partition keeps a *stream time* (how far event time has
progressed there; aggregation.py derives it from its upstream partitions). A window closes once stream time passes its end plus the allowed lateness; a record
one of whose windows has already been emitted for its topic (``emitted``) is *late*: it is counted
as such (metric and the next aggregate's ``late_records``), never added to a window that was
already emitted.
Because a window is emitted only after that point, no record is ever added to a window that has
already gone out, and a restarted or rebalanced worker recomputes the same windows.

Per topic and window, an exponentially weighted baseline of the mean sentiment and of
log(1 + volume) (with empty windows counted as zero volume) gives the z-scores the alert rules
use. The state of a topic is a JSON-able dict, so a Faust table can hold it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import reduce

from .schemas import LABELS

# A topic silent for longer than this many windows is not walked window by window: its volume
# baseline decays in one step and only the last windows are evaluated.
MAX_EMPTY_WINDOWS = 60


@dataclass(frozen=True)
class WindowSpec:
    name: str  # "1m", "15m": used in ids, metric labels and rule files
    size_s: int
    step_s: int  # == size_s for a tumbling window

    @property
    def kind(self) -> str:
        return "tumbling" if self.size_s == self.step_s else "hopping"


def spec_name(seconds: int) -> str:
    for unit, length in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % length == 0:
            return f"{seconds // length}{unit}"
    return f"{seconds}s"


@dataclass(frozen=True)
class WindowConfig:
    specs: tuple[WindowSpec, ...]
    lateness_s: float = 30.0
    baseline_span: int = 30  # EWMA span, in windows
    baseline_min_windows: int = 5  # z-scores need this many windows of history
    min_sentiment_sd: float = 0.05  # floors so a perfectly steady baseline doesn't give infinite z
    min_log_volume_sd: float = 0.25

    @classmethod
    def from_seconds(cls, tumbling_s: int, hopping_s: int, hop_s: int, **kwargs) -> WindowConfig:
        if hopping_s % hop_s:
            raise ValueError(f"hopping window {hopping_s}s must be a whole number of {hop_s}s steps")
        specs = [WindowSpec(spec_name(tumbling_s), tumbling_s, tumbling_s)]
        if hopping_s:
            specs.append(WindowSpec(spec_name(hopping_s), hopping_s, hop_s))
        if len({s.name for s in specs}) != len(specs):
            raise ValueError("the tumbling and hopping windows need different sizes")
        return cls(tuple(specs), **kwargs)

    @property
    def bucket_s(self) -> int:
        return reduce(math.gcd, [v for s in self.specs for v in (s.size_s, s.step_s)])

    @property
    def alpha(self) -> float:
        return 2.0 / (self.baseline_span + 1)

    def spec(self, name: str) -> WindowSpec:
        for spec in self.specs:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def bucket_of(self, t: float) -> int:
        return int(math.floor(t / self.bucket_s) * self.bucket_s)

    def earliest_end(self, t: float) -> float:
        """End of the first window (of any spec) that contains event time ``t`` to close."""
        return min(math.floor(t / s.step_s) * s.step_s + s.step_s for s in self.specs)

    def is_late(self, t: float, stream_time: float | None) -> bool:
        return stream_time is not None and self.earliest_end(t) + self.lateness_s <= stream_time


@dataclass(frozen=True)
class ClosedWindow:
    """One window of one topic, closed: what it held and how it compares with the baseline."""

    topic: str
    spec: WindowSpec
    start: float
    messages: int
    sentiment_mean: float | None
    shares: dict[str, float]  # label -> share of messages (0 when empty)
    baseline_sentiment: float | None
    baseline_messages: float | None
    sentiment_z: float | None
    volume_z: float | None

    @property
    def end(self) -> float:
        return self.start + self.spec.size_s


def new_state() -> dict:
    # closed: spec -> start of the first window not emitted yet (absent until one is); seen: bucket
    # -> hashed ids counted there; marks / raw_marks: upstream source -> highest by-fingerprint /
    # raw offset received
    # (aggregation.py). Kept in the one state so a batch's effect on a name is stored all at once.
    return {
        "buckets": {},
        "frontier": {},
        "baseline": {},
        "alerts": {},
        "late": 0,
        "last_t": None,
        "closed": {},
        "seen": {},
        "marks": {},
        "raw_marks": {},
    }


def _first_start(spec: WindowSpec, t: float) -> float:
    """Start of the first window of ``spec`` that contains ``t``."""
    return math.floor((t - spec.size_s) / spec.step_s) * spec.step_s + spec.step_s


def emitted(config: WindowConfig, state: dict, t: float) -> bool:
    """Whether a window containing event time ``t`` has already been closed (emitted) for this
    state: a record at ``t`` is then late."""
    closed = state.get("closed", {})
    return any(spec.name in closed and _first_start(spec, t) < closed[spec.name] for spec in config.specs)


def add(config: WindowConfig, state: dict, t: float, score: float, label: str) -> None:
    """Counts one (not late) record into its bucket."""
    bucket = str(config.bucket_of(t))
    counts = state["buckets"].setdefault(bucket, [0, 0.0] + [0] * len(LABELS))
    counts[0] += 1
    counts[1] += score
    counts[2 + LABELS.index(label)] += 1
    for spec in config.specs:
        # The first window of this spec that contains t. A record that is not late has all its
        # windows open, so lowering the frontier here never reopens a closed window.
        first = _first_start(spec, t)
        state["frontier"][spec.name] = min(state["frontier"].get(spec.name, first), first)
    state["last_t"] = t if state["last_t"] is None else max(state["last_t"], t)


def close(config: WindowConfig, topic: str, state: dict, stream_time: float) -> list[ClosedWindow]:
    """Closes every window whose end plus lateness is at or before ``stream_time``, in order."""
    closed: list[ClosedWindow] = []
    for spec in config.specs:
        start = state["frontier"].get(spec.name)
        if start is None:
            continue
        last_closable = math.floor((stream_time - config.lateness_s - spec.size_s) / spec.step_s) * spec.step_s
        if last_closable < start:
            continue
        baseline = state["baseline"].setdefault(spec.name, _new_baseline())
        newest = max((int(b) for b in state["buckets"]), default=None)
        if newest is None or newest + config.bucket_s <= start:
            # Nothing left to count: decay the volume baseline over the gap in one step.
            skipped = int((last_closable - start) // spec.step_s) + 1
            if skipped > MAX_EMPTY_WINDOWS:
                _decay_volume(baseline, config.alpha, skipped - MAX_EMPTY_WINDOWS)
                start += (skipped - MAX_EMPTY_WINDOWS) * spec.step_s
        while start <= last_closable:
            closed.append(_close_one(config, topic, state, spec, baseline, start))
            start += spec.step_s
        state["frontier"][spec.name] = start
        state.setdefault("closed", {})[spec.name] = start
    # Buckets before every spec's next window can never be read again.
    oldest_needed = min(state["frontier"].values(), default=None)
    if oldest_needed is not None:
        for bucket in [b for b in state["buckets"] if int(b) + config.bucket_s <= oldest_needed]:
            del state["buckets"][bucket]
    # A record of a bucket with an emitted window is late from now on: its ids are not needed.
    for bucket in [b for b in state.get("seen", {}) if emitted(config, state, int(b))]:
        del state["seen"][bucket]
    return closed


def _close_one(
    config: WindowConfig, topic: str, state: dict, spec: WindowSpec, baseline: dict, start: float
) -> ClosedWindow:
    total = [0, 0.0] + [0] * len(LABELS)
    for offset in range(0, spec.size_s, config.bucket_s):
        counts = state["buckets"].get(str(int(start + offset)))
        if counts:
            total = [a + b for a, b in zip(total, counts, strict=False)]
    messages = int(total[0])
    mean = total[1] / messages if messages else None
    shares = {label: (total[2 + i] / messages if messages else 0.0) for i, label in enumerate(LABELS)}
    log_volume = math.log1p(messages)
    ready = baseline["windows"] >= config.baseline_min_windows
    sentiment_z = volume_z = None
    if ready:
        volume_z = (log_volume - baseline["volume"]) / max(math.sqrt(baseline["volume_var"]), config.min_log_volume_sd)
    if ready and mean is not None and baseline["sentiment_windows"] >= config.baseline_min_windows:
        sentiment_z = (mean - baseline["sentiment"]) / max(
            math.sqrt(baseline["sentiment_var"]), config.min_sentiment_sd
        )
    window = ClosedWindow(
        topic=topic,
        spec=spec,
        start=start,
        messages=messages,
        sentiment_mean=mean,
        shares=shares,
        baseline_sentiment=baseline["sentiment"] if baseline["sentiment_windows"] else None,
        baseline_messages=math.expm1(baseline["volume"]) if baseline["windows"] else None,
        sentiment_z=sentiment_z,
        volume_z=volume_z,
    )
    # The baseline takes this window in only after it was compared against it.
    _update(baseline, "volume", log_volume, config.alpha, baseline["windows"])
    baseline["windows"] += 1
    if mean is not None:
        _update(baseline, "sentiment", mean, config.alpha, baseline["sentiment_windows"])
        baseline["sentiment_windows"] += 1
    return window


def _new_baseline() -> dict:
    return {
        "windows": 0,
        "volume": 0.0,
        "volume_var": 0.0,
        "sentiment_windows": 0,
        "sentiment": 0.0,
        "sentiment_var": 0.0,
    }


def _update(baseline: dict, name: str, value: float, alpha: float, seen: int) -> None:
    """Exponentially weighted mean and variance (West's incremental form); the first value seeds it."""
    if seen == 0:
        baseline[name], baseline[f"{name}_var"] = value, 0.0
        return
    delta = value - baseline[name]
    baseline[name] += alpha * delta
    baseline[f"{name}_var"] = (1 - alpha) * (baseline[f"{name}_var"] + alpha * delta * delta)


def _decay_volume(baseline: dict, alpha: float, windows: int) -> None:
    """``windows`` empty windows at once: the mean decays towards log(1 + 0) = 0."""
    if baseline["windows"] == 0:
        return
    keep = (1 - alpha) ** windows
    baseline["volume"] *= keep
    baseline["volume_var"] *= keep
    baseline["windows"] += windows


def idle(state: dict, stream_time: float, config: WindowConfig) -> bool:
    """No open bucket and nothing seen for a full baseline span: the topic may be forgotten."""
    longest = max(s.size_s for s in config.specs)
    return (
        not state["buckets"]
        and not any(a.get("status") == "firing" for a in state["alerts"].values())
        and state["last_t"] is not None
        and stream_time - state["last_t"] > config.baseline_span * longest + config.lateness_s
    )


def recompute(config: WindowConfig, records: list[tuple[str, float, float, str]]) -> dict[tuple[str, str, float], dict]:
    """Batch recomputation from (topic, event time, score, label) rows: counts per window, for
    checking the streaming result. Windows are those containing at least one record."""
    out: dict[tuple[str, str, float], dict] = {}
    for topic, t, score, label in records:
        for spec in config.specs:
            start = math.floor((t - spec.size_s) / spec.step_s) * spec.step_s + spec.step_s
            while start <= t:
                row = out.setdefault(
                    (topic, spec.name, start), {"messages": 0, "sum": 0.0, **{lbl: 0 for lbl in LABELS}}
                )
                row["messages"] += 1
                row["sum"] += score
                row[label] += 1
                start += spec.step_s
    return out
