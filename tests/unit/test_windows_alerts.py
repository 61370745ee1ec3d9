"""Window arithmetic, the window stage's logic and alert rules, without a broker."""

from __future__ import annotations

import asyncio
import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import windows
from pipeline.aggregation import OTHER, WindowOutputs, WindowProcessor
from pipeline.alerts import Rule, RuleError, load_rules, parse_duration
from pipeline.schemas import LABELS, WindowItem

CONFIG = windows.WindowConfig.from_seconds(60, 300, 60, lateness_s=20, baseline_min_windows=3)
T0 = 1_700_000_040  # a minute boundary
WALL = T0 + 10**6  # the worker's clock: after every event time here (none is in its future)


class Store:
    """The Faust table's role: values by key, written only when a batch is done."""

    def __init__(self):
        self.data: dict = {}

    def apply(self, processor: WindowProcessor) -> None:
        for key, (_, value) in processor.writes().items():
            if value is None:
                self.data.pop(key, None)
            else:
                self.data[key] = value


def processor(store: Store, rules=(), max_topics=100, partitions=1, upstream=1) -> WindowProcessor:
    return WindowProcessor(
        CONFIG,
        list(rules),
        max_topics,
        partitions,
        store.data.get,
        idle_s=5,
        upstream_sources=[str(p) for p in range(upstream)],
    )


def feed(proc: WindowProcessor, store: Store, items: list[dict], batch: int = 7) -> WindowOutputs:
    """Items in batches, like the agent: records, then closing, then the write-back."""
    out = WindowOutputs()
    for i in range(0, len(items), batch):
        for item in items[i : i + batch]:
            proc.record(0, as_window_item(item), WALL, out)
        proc.close_partition(0, out)
        store.apply(proc)
    return out


def as_window_item(item: dict | WindowItem) -> WindowItem:
    return item if isinstance(item, WindowItem) else WindowItem.model_validate(item)


def item(topic: str, t: float, label: str = "neutral", score: float = 0.0, off: int = 0, src: str = "0") -> dict:
    return {"topic": topic, "id": f"{topic}-{src}-{off}", "t": t, "score": score, "label": label, "src": src, "o": off}


def test_streaming_windows_equal_batch_recomputation_with_out_of_order_records():
    rng = random.Random(7)
    items, rows = [], []
    for i in range(2000):
        t = T0 + i * 0.9 + rng.uniform(-15, 0)  # out of order, but within the allowed lateness
        label = rng.choice(LABELS)
        score = {"negative": -0.8, "neutral": 0.0, "positive": 0.7}[label]
        topic = rng.choice(["AAPL", "MSFT", "Earnings"])
        items.append(item(topic, t, label, score, off=i))
        rows.append((topic, t, score, label))
    items.append(item("AAPL", T0 + 4000, off=99_999))  # moves stream time past every window above
    store = Store()
    out = feed(processor(store), store, items)

    assert out.late == 0
    expected = windows.recompute(CONFIG, rows)
    got = {(a.topic, a.window, a.start.timestamp()): a for a in out.aggregates}
    closed_expected = {k: v for k, v in expected.items() if k[2] + CONFIG.spec(k[1]).size_s <= T0 + 4000 - 20}
    assert set(got) == set(closed_expected)
    for key, row in closed_expected.items():
        aggregate = got[key]
        assert aggregate.messages == row["messages"]
        assert aggregate.sentiment_mean == pytest.approx(row["sum"] / row["messages"])
        assert aggregate.share_negative == pytest.approx(row["negative"] / row["messages"])
    assert len({a.id for a in out.aggregates}) == len(out.aggregates)  # each window emitted once


def test_late_records_are_counted_not_added():
    store = Store()
    proc = processor(store)
    out = feed(
        proc,
        store,
        [
            item("AAPL", T0 + 5, off=1),
            item("AAPL", T0 + 200, off=2),
            item("AAPL", T0 + 10, off=3),  # its window closed at T0+60+20
            item("AAPL", T0 + 400, off=4),
        ],
        batch=1,
    )
    assert out.late == 1
    first = next(a for a in out.aggregates if a.window == "1m" and a.start.timestamp() == T0)
    assert first.messages == 1
    later = next(a for a in out.aggregates if a.window == "1m" and a.start.timestamp() == T0 + 180)
    assert later.late_records == 1  # reported with the next window that closes


def test_an_upstream_partition_running_behind_does_not_make_its_records_late():
    store = Store()
    proc = processor(store, upstream=2)
    ahead = [item("AAPL", T0 + 600 + i, off=i, src="0") for i in range(5)]
    behind = [item("AAPL", T0 + i, off=i, src="1") for i in range(5)]
    out = feed(proc, store, ahead + behind + [item("AAPL", T0 + 700, off=9, src="1")])
    assert out.late == 0
    assert next(a for a in out.aggregates if a.window == "1m" and a.start.timestamp() == T0).messages == 5


def test_redelivered_items_are_not_counted_twice_and_their_ids_go_once_their_window_is_out():
    store = Store()
    proc = processor(store)
    first = [item("AAPL", T0 + i, off=i) for i in range(10)]
    out = feed(proc, store, first + first[3:] + [item("AAPL", T0 + 500, off=50)])
    assert out.duplicates == 7
    assert store.data["t/AAPL"]["seen"] and not [b for b in store.data["t/AAPL"]["seen"] if int(b) < T0 + 120]
    assert next(a for a in out.aggregates if a.window == "1m" and a.start.timestamp() == T0).messages == 10


def test_a_repeat_after_its_window_closed_is_a_duplicate_not_a_late_record():
    """A restart re-reads a stretch upstream after the windows of its records closed (their ids
    are gone with the buckets): the offsets recognise the repeats."""
    store = Store()
    proc = processor(store)
    first = [item("AAPL", T0 + i, off=i) for i in range(10)] + [item("MSFT", T0 + 9, off=9)]  # two names at offset 9
    out = feed(proc, store, first + [item("AAPL", T0 + 500, off=10)])
    assert out.late == 0 and out.duplicates == 0
    again = feed(proc, store, first[5:] + [item("AAPL", T0 + 30, off=11)])  # repeats, then a new but late record
    assert again.duplicates == 6 and again.late == 1
    # The other name of the last message received (same offset) is new, even when late.
    store2 = Store()
    proc2 = processor(store2)
    feed(proc2, store2, [item("AAPL", T0 + 500, off=3)])
    out2 = feed(proc2, store2, [item("MSFT", T0 + 5, off=3)])
    assert out2.duplicates == 0 and out2.late == 1


def test_a_raw_stretch_decoded_again_after_a_worker_died_is_a_duplicate_not_a_late_record():
    """The survivor decodes the dead worker's uncommitted raw stretch again: the copies carry the
    same raw offsets but new by-fingerprint offsets, and may come after their windows closed."""
    store = Store()
    proc = processor(store)
    first = [{**item("AAPL", T0 + i, off=i), "ro": 100 + i} for i in range(10)]
    out = feed(proc, store, first + [{**item("AAPL", T0 + 500, off=10), "ro": 110}])
    assert out.late == 0 and out.duplicates == 0
    copies = [{**record, "o": 20 + n, "ro": record["ro"]} for n, record in enumerate(first[4:])]
    new = {**item("AAPL", T0 + 501, off=30), "ro": 111}
    again = feed(proc, store, copies + [new])
    assert again.duplicates == 6 and again.late == 0
    assert store.data["t/AAPL"]["raw_marks"]["0"] == 111


def test_a_name_state_alone_says_what_is_late():
    """The partition's stream time can run ahead of a name's stored state (a SIGKILL can persist
    one table key of a batch and not another): a re-read record whose window this name has not
    emitted is still counted, and one it has emitted is late."""
    store = Store()
    proc = processor(store)
    feed(proc, store, [item("AAPL", T0 + 5, off=1), item("MSFT", T0 + 6, off=2)], batch=1)
    meta = dict(store.data["p/0"])
    meta["stream_time"] = T0 + 900  # as if a later batch's partition write had survived alone
    store.data["p/0"] = meta
    out = feed(proc, store, [item("AAPL", T0 + 7, off=3)])
    assert out.late == 0
    assert next(a for a in out.aggregates if a.topic == "AAPL" and a.window == "1m").messages == 2
    again = feed(proc, store, [item("AAPL", T0 + 8, off=4)])
    assert again.late == 1


def test_names_beyond_the_limit_are_counted_as_other():
    store = Store()
    proc = processor(store, max_topics=2)
    out = feed(proc, store, [item(name, T0 + i, off=i) for i, name in enumerate(["A", "B", "C", "D"])])
    assert [r.topic for r in out.reroute] == [OTHER, OTHER]
    assert {r.id for r in out.reroute} == {"C-0-2", "D-0-3"}
    assert store.data["p/0"]["topics"] == ["A", "B"]
    feed(proc, store, out.reroute)  # the stage reads them back
    assert store.data["p/0"]["topics"] == ["A", "B", OTHER]


NEGATIVE_RULE = Rule(name="neg", kind="negative_share", threshold=0.6, min_messages=5, cooldown="10m")
SPIKE_RULE = Rule(name="spike", kind="volume_spike", threshold=3, min_messages=5)


def minute(topic: str, m: int, n: int, label: str, start_off: int) -> list[dict]:
    score = {"negative": -0.9, "neutral": 0.0, "positive": 0.9}[label]
    return [item(topic, T0 + m * 60 + i * 60 / n, label, score, off=start_off + i) for i in range(n)]


def scripted_stream() -> list[dict]:
    """10 calm minutes on two names, a negative burst on NEG (minutes 10-12), a volume spike on
    VOL (minute 11), then calm again."""
    items, off = [], 0
    for m in range(25):
        neg_label = "negative" if 10 <= m <= 12 else "positive"
        items += minute("NEG", m, 8, neg_label, off)
        off += 100
        items += minute("VOL", m, 60 if m == 11 else 6, "neutral", off)
        off += 100
    items.sort(key=lambda x: x["t"])
    return items + [item("NEG", T0 + 3000, off=10**6), item("VOL", T0 + 3000, off=10**6)]


def test_scripted_burst_and_spike_fire_once_and_resolve_once_even_across_a_restart():
    stream = scripted_stream()
    store = Store()
    out = feed(processor(store, [NEGATIVE_RULE, SPIKE_RULE]), store, stream[:700])
    # A new processor (a restarted worker) continues from what the table holds.
    out2 = feed(processor(store, [NEGATIVE_RULE, SPIKE_RULE]), store, stream[700:])
    alerts = out.alerts + out2.alerts
    assert [(a.rule, a.topic, a.status) for a in alerts] == [
        ("neg", "NEG", "firing"),
        ("spike", "VOL", "firing"),
        ("spike", "VOL", "resolved"),
        ("neg", "NEG", "resolved"),
    ]
    fired = alerts[0]
    assert fired.window_start.timestamp() == T0 + 600 and fired.value == 1.0
    assert alerts[3].id == fired.id and alerts[3].resolved_at is not None
    spike = alerts[1]
    assert spike.messages == 60 and spike.value >= 3

    # The whole stream in one go gives the same alerts and the same aggregates.
    single = Store()
    whole = feed(processor(single, [NEGATIVE_RULE, SPIKE_RULE]), single, stream, batch=50)
    assert sorted(a.model_dump_json() for a in whole.alerts) == sorted(a.model_dump_json() for a in alerts)
    assert sorted(a.model_dump_json() for a in whole.aggregates) == sorted(
        a.model_dump_json() for a in out.aggregates + out2.aggregates
    )


def test_cooldown_keeps_a_second_burst_quiet():
    store = Store()
    items, off = [], 0
    for m in range(12):
        items += minute("NEG", m, 8, "negative" if m in (3, 7) else "positive", off)
        off += 100
    items.append(item("NEG", T0 + 3000, off=10**6))
    out = feed(processor(store, [NEGATIVE_RULE]), store, items)
    assert [a.status for a in out.alerts] == ["firing", "resolved"]  # minute 7 falls in the cooldown


def test_idle_partition_closes_its_last_windows_on_ticks():
    store = Store()
    proc = processor(store)
    out = WindowOutputs()
    proc.record(0, as_window_item(item("AAPL", T0 + 1, off=1)), wall_now=T0 + 1000.0, out=out)
    proc.close_partition(0, out)
    assert not out.aggregates
    for wall in (1003.0, 1010.0, 1060.0, 1090.0):  # idle after 5 s; stream time follows the clock
        proc.tick(0, T0 + wall)
        proc.close_partition(0, out)
    # The 1 min window and the first 5 min hopping window that holds the record both end at T0+60.
    assert [(a.window, a.end.timestamp()) for a in out.aggregates] == [("1m", T0 + 60), ("5m", T0 + 60)]
    assert proc.stream_time(0) >= T0 + 60 + CONFIG.lateness_s  # the watermark the gauge reports


JUNK_TIMES = st.one_of(
    st.floats(min_value=WALL + 301, max_value=1e15),  # a source clock far ahead (year 9999 and beyond)
    st.floats(max_value=T0 - 7 * 86_400 - 1, min_value=-1e15),  # older than the maximum age
    st.sampled_from([float("nan"), float("inf"), float("-inf")]),
)


@settings(max_examples=60, deadline=None)
@given(
    good=st.lists(st.tuples(st.floats(0, 3000), st.sampled_from(LABELS), st.sampled_from(["A", "B"])), max_size=40),
    junk=st.lists(st.tuples(st.integers(0, 40), JUNK_TIMES, st.sampled_from(["A", "B", "C"])), max_size=15),
    batch=st.integers(1, 9),
)
def test_records_out_of_time_bounds_never_move_stream_time_or_windows(good, junk, batch):
    good = sorted(good)
    items = [item(topic, T0 + dt, label, off=i) for i, (dt, label, topic) in enumerate(good)]
    items.insert(0, item("A", T0, off=-1))  # stream time starts at T0, so "older than the maximum age" means it
    for n, (position, t, topic) in enumerate(junk):
        items.insert(1 + min(position, len(items) - 1), {**item(topic, t, off=10_000 + n), "src": "junk"})
    items.append(item("A", T0 + 10_000, off=99_999))  # closes every window of the good records
    store = Store()
    proc = processor(store)
    out = feed(proc, store, items, batch=batch)

    assert sum(out.out_of_bounds.values()) == len(junk) and out.late == 0
    assert store.data["p/0"]["stream_time"] <= WALL + proc.max_clock_skew_s
    rows = [(topic, T0 + dt, 0.0, label) for dt, label, topic in good] + [("A", T0, 0.0, "neutral")]
    expected = {k: v["messages"] for k, v in windows.recompute(CONFIG, rows).items() if k[2] + 300 + 20 <= T0 + 10_000}
    got = {(a.topic, a.window, a.start.timestamp()): a.messages for a in out.aggregates}
    assert {k: got.get(k, 0) for k in expected} == expected
    assert set(got) <= set(expected)


def test_rule_file_errors_name_the_rule_and_field(tmp_path):
    path = tmp_path / "rules.yml"
    path.write_text(
        "rules:\n  - name: ok\n    kind: volume_spike\n    threshold: 3\n"
        "  - name: bad-share\n    kind: negative_share\n    threshold: 1.5\n"
    )
    with pytest.raises(RuleError, match=r"rule 2 \('bad-share'\).*threshold.*between 0 and 1"):
        load_rules(path, ["1m"])
    path.write_text("rules:\n  - name: w\n    kind: volume_spike\n    threshold: 3\n    window: 5m\n")
    with pytest.raises(RuleError, match=r"rule 1 \('w'\), field window: '5m' is not one of the configured windows"):
        load_rules(path, ["1m", "15m"])
    path.write_text("rules:\n  - name: c\n    kind: volume_spike\n    threshold: 3\n    cooldown: soon\n")
    with pytest.raises(RuleError, match="cooldown"):
        load_rules(path, ["1m"])
    path.write_text(
        "rules:\n  - {name: a, kind: volume_spike, threshold: 3}\n  - {name: a, kind: volume_spike, threshold: 2}\n"
    )
    with pytest.raises(RuleError, match="repeated: a"):
        load_rules(path, ["1m"])


def test_shipped_rules_are_valid():
    from pipeline.stack.base import DEPLOY_DIR

    rules = load_rules(DEPLOY_DIR / "alerts" / "rules.yml", ["1m", "15m"])
    assert {r.kind for r in rules} == {"negative_share", "sentiment_shift", "volume_spike"}
    assert load_rules(DEPLOY_DIR / "alerts" / "demo-rules.yml", ["1m", "15m"])


def test_durations_and_patterns():
    assert parse_duration("10m") == 600 and parse_duration(90) == 90 and parse_duration("2h") == 7200
    rule = Rule(name="r", kind="volume_spike", threshold=2, topics=["AAPL", "crypto*"])
    assert rule.applies_to("AAPL") and rule.applies_to("crypto-BTC") and not rule.applies_to("MSFT")


def test_a_resolved_alert_removes_its_active_series():
    from types import SimpleNamespace

    from pipeline import metrics

    def active() -> set:
        return set(metrics._label_values(metrics.ALERT_ACTIVE))

    firing = SimpleNamespace(rule="burst", topic="ZZTEST", severity="page", status="firing")
    metrics.record_windows([], [firing], 0, [], 0)
    assert ("burst", "ZZTEST", "page") in active()
    metrics.record_windows([], [SimpleNamespace(**{**vars(firing), "status": "resolved"})], 0, [], 0)
    assert ("burst", "ZZTEST", "page") not in active()


def test_names_that_move_to_another_worker_leave_no_series_behind():
    from types import SimpleNamespace

    from pipeline import metrics

    store = Store()
    proc = processor(store)
    feed(proc, store, [item("MOVES", T0 + 1, off=1), item("MOVES", T0 + 200, off=2)])
    assert proc.names[0] == ["MOVES"]
    window = SimpleNamespace(
        topic="MOVES", spec=CONFIG.specs[0], messages=1, sentiment_mean=0.1, shares={"negative": 0}
    )
    firing = SimpleNamespace(rule="burst", topic="MOVES", severity="page", status="firing")
    metrics.record_windows([window], [firing], 0, [], 1)
    assert any(lv[0] == "MOVES" for lv in metrics._label_values(metrics.TOPIC_MESSAGES))

    metrics.set_stream_time(0, proc.stream_time(0))
    assert ("0",) in metrics._label_values(metrics.WINDOW_STREAM_TIME)

    metrics.forget_names(proc.names.pop(0))  # what the worker does when the partition is revoked
    metrics.forget_partition(0)
    for gauge in (metrics.TOPIC_MESSAGES, metrics.TOPIC_SENTIMENT, metrics.ALERT_ACTIVE):
        assert not any("MOVES" in lv for lv in metrics._label_values(gauge))
    assert ("0",) not in metrics._label_values(metrics.WINDOW_STREAM_TIME)


def test_a_names_state_is_copied_once_per_batch(monkeypatch):
    """The stored state stays untouched until the batch is acknowledged, and a batch of many
    items for one name copies it once, not once per item."""
    import pipeline.aggregation as aggregation

    copies = []
    real = aggregation._deep_copy
    monkeypatch.setattr(aggregation, "_deep_copy", lambda state: copies.append(1) or real(state))
    store = Store()
    proc = processor(store)
    feed(proc, store, [item("AAPL", T0 + i, off=i) for i in range(5)], batch=5)
    stored = store.data["t/AAPL"]
    before = repr(stored)
    copies.clear()
    out = WindowOutputs()
    for i in range(5, 55):
        proc.record(0, as_window_item(item("AAPL", T0 + i, off=i)), WALL, out)
    proc.close_partition(0, out)
    assert len(copies) == 1
    assert repr(store.data["t/AAPL"]) == before  # nothing written before the write-back
    store.apply(proc)
    assert sum(store.data["t/AAPL"]["buckets"][b][0] for b in store.data["t/AAPL"]["buckets"]) >= 50


class Answers:
    """Group progress whose next answer is ``answer`` (a bool), or raises it (an exception)."""

    def __init__(self):
        self.answer: bool | Exception = False

    def lagging(self) -> bool:
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer

    def close(self) -> None:
        pass


class NoGaps:
    def pending(self, topics) -> bool:
        return False


def upstream_progress(monkeypatch):
    from pipeline.config import Settings
    from pipeline.stages import window

    clock = [1000.0]
    monkeypatch.setattr(window.time, "monotonic", lambda: clock[0])
    progress = window.UpstreamProgress(Settings(), {"finsent.scored"}, gaps=NoGaps())
    progress.progress = Answers()
    return progress, clock


def test_upstream_work_counts_as_pending_until_a_fresh_answer_says_otherwise(monkeypatch):
    from pipeline import metrics
    from pipeline.stages import window

    progress, clock = upstream_progress(monkeypatch)
    assert progress.pending()  # no answer yet
    progress.progress.answer = True
    asyncio.run(progress.watch())
    assert metrics.WINDOWS_HELD._value.get() == 1
    progress.progress.answer = False
    asyncio.run(progress.watch())
    assert not progress.pending()
    assert metrics.WINDOWS_HELD._value.get() == 0
    clock[0] += window.ANSWER_FRESH_S + 1  # the answer grew old without a new one
    assert progress.pending()


@pytest.mark.parametrize("outage", ["connection", "timeout"])
def test_a_broker_outage_holds_windows_open_instead_of_reading_silence_as_idleness(monkeypatch, outage):
    from kafka.errors import KafkaTimeoutError

    from pipeline.clients import ConnectionFailure
    from pipeline.stages import window

    progress, clock = upstream_progress(monkeypatch)
    asyncio.run(progress.watch())  # everything processed: silence would be idleness
    progress.progress.answer = ConnectionFailure("cannot use Kafka") if outage == "connection" else KafkaTimeoutError()
    for _ in range(20):  # well past the patience for other errors
        clock[0] += window.GROUP_PROGRESS_PATIENCE_S / 4
        asyncio.run(progress.watch())
        assert progress.pending()
    clock[0] += window.OUTAGE_PATIENCE_S
    asyncio.run(progress.watch())
    assert not progress.pending()  # bounded: an endless outage does not hold windows forever
    progress.progress.answer = True  # the broker is back and upstream work is waiting
    asyncio.run(progress.watch())
    assert progress.pending()


def test_a_refusal_to_describe_the_group_gives_up_after_its_patience(monkeypatch):
    from kafka.errors import GroupAuthorizationFailedError

    from pipeline.stages import window

    progress, clock = upstream_progress(monkeypatch)
    progress.progress.answer = GroupAuthorizationFailedError("denied")
    asyncio.run(progress.watch())
    assert progress.pending()
    clock[0] += window.GROUP_PROGRESS_PATIENCE_S + 1
    asyncio.run(progress.watch())
    assert not progress.pending()


def test_a_window_batch_cut_short_by_an_error_leaves_nothing_in_the_next_batch():
    """faust restarts an agent that raised; the batch comes again, but the writes it had made in
    the processor must not ride along with the next batch (they named partitions it lacks)."""
    from types import SimpleNamespace

    from pipeline.stages.window import WindowStage

    class Event(SimpleNamespace):  # faust keeps a weak reference to the current event
        pass

    store = Store()
    proc = processor(store, partitions=2, upstream=1)
    stage = WindowStage.__new__(WindowStage)
    stage.processor = proc
    proc.record(0, as_window_item(item("NOK", T0)), WALL, WindowOutputs())  # then the batch died
    event = Event(
        message=SimpleNamespace(partition=1, tp=("w", 1), offset=0),
        value=as_window_item(item("SAP", T0)).encode(),
    )

    parts, writes = stage._process([event])

    assert set(parts) == {1}
    assert writes and {partition for partition, _value in writes.values()} == {1}


# --- progress that does not wait on silence, admission a flood cannot exhaust --------------------


@settings(max_examples=80, deadline=None)
@given(
    n_sources=st.integers(1, 8),
    carrying=st.data(),
    pending=st.sampled_from(["always", "never", "random"]),
    delay=st.floats(0, 3),
    seed=st.integers(0, 2**16),
)
def test_stream_time_follows_the_sources_that_carry_data_whatever_the_others_do(
    n_sources, carrying, pending, delay, seed
):
    """Steady traffic from any subset of the upstream sources (a producer that keys by source
    leaves the others empty), upstream work pending or not: after the start-up bound
    (idle + hold), stream time trails the wall clock by at most idle_s + the records' delay, so a
    window closes within lateness + idle_s (+ delay) of its end."""
    rng = random.Random(seed)
    sources = [str(s) for s in range(n_sources)]
    active = carrying.draw(st.lists(st.sampled_from(sources), min_size=1, unique=True))
    store = Store()
    proc = WindowProcessor(CONFIG, [], 100, 1, store.data.get, idle_s=5, upstream_sources=sources, upstream_hold_s=30)
    proc.upstream_pending = {
        "always": lambda: True,
        "never": lambda: False,
        "random": lambda: rng.random() < 0.5,
    }[pending]
    start, out, offsets = T0 + 1000.0, WindowOutputs(), dict.fromkeys(active, 0)
    emitted_by: dict[float, float] = {}
    schedule = [src for _round in range(400 // len(active) + 1) for src in rng.sample(active, len(active))][:400]
    last_t: dict[str, float] = {}
    for step, src in enumerate(schedule):  # each carrying source at least every 2 rounds (< idle_s)
        wall = start + step * 0.5
        offsets[src] += 1
        last_t[src] = wall - delay
        proc.record(0, as_window_item(item("AAPL", wall - delay, off=offsets[src], src=src)), wall, out)
        proc.close_partition(0, out)
        store.apply(proc)
        for a in out.aggregates:
            emitted_by.setdefault(a.end.timestamp(), wall)
        if wall >= start + 5 + 30 + len(active) * 0.5:
            assert proc.stream_time(0) is not None
            assert proc.stream_time(0) >= min(last_t.values())  # the slowest carrying source, no silent one
    for end, wall in emitted_by.items():  # closed within lateness + idle (+ delay, round-robin) of the end
        assert wall <= max(end + CONFIG.lateness_s + 5 + delay + len(active) * 0.5, start + 35 + len(active) * 0.5)
    one_minute = [a for a in out.aggregates if a.window == "1m"]
    assert one_minute, "no window closed"
    assert sum(a.messages for a in one_minute) >= 400 - (60 + CONFIG.lateness_s + 5 + delay) * 2 - len(active)
    assert out.late == 0


def test_a_stall_upstream_holds_the_last_windows_only_for_the_hold_bound():
    store = Store()
    proc = WindowProcessor(CONFIG, [], 100, 1, store.data.get, idle_s=5, upstream_sources=["0"], upstream_hold_s=30)
    proc.upstream_pending = lambda: True  # e.g. an answer about markers that never comes
    out = WindowOutputs()
    proc.record(0, as_window_item(item("AAPL", T0 + 1, off=1)), wall_now=T0 + 1000.0, out=out)
    proc.close_partition(0, out)
    for wall in range(1001, 1030):  # within the hold: the stall is not silence
        proc.tick(0, T0 + wall)
        proc.close_partition(0, out)
    assert not out.aggregates
    for wall in range(1030, 1200, 5):
        proc.tick(0, T0 + wall)
        proc.close_partition(0, out)
    assert ("1m", T0 + 60) in [(a.window, a.end.timestamp()) for a in out.aggregates]


def test_sources_idle_and_behind_stream_time_are_pruned():
    store = Store()
    proc = WindowProcessor(CONFIG, [], 100, 1, store.data.get, idle_s=5, upstream_sources=["0"])
    out = WindowOutputs()
    for i, src in enumerate(["0", "old"]):
        proc.record(0, as_window_item(item("AAPL", T0 + i, off=1, src=src)), T0 + 1000.0, out)
    for i in range(1, 30):
        proc.record(0, as_window_item(item("AAPL", T0 + 10 + i, off=1 + i, src="0")), T0 + 1000.0 + i, out)
    store.apply(proc)
    assert set(store.data["p/0"]["sources"]) == {"0"}


def flood_partition(known=frozenset(), capacity=20):
    store = Store()
    proc = WindowProcessor(CONFIG, [], capacity, 1, store.data.get, idle_s=5, known_names=known)
    return store, proc


def test_a_real_name_first_seen_during_a_flood_of_junk_names_gets_its_own_windows():
    """20,000 names seen once each at 100 msg/s into one window partition (4x the per-partition
    rate of 100 msg/s over 4 partitions), real names first seen during it, once a second each:
    the real ones get their own windows from their second message on and keep them; tracked
    names, candidates and stored state stay bounded; the junk never displaces a real name."""
    store, proc = flood_partition(known=frozenset({"AAPL"}), capacity=125)
    first_own, evicted, forgotten = {}, 0, set()
    real = ["IBM", "ORCL", "INTC", "CSCO", "AAPL"]
    t = T0 + 0.0
    for i in range(20_000):
        t += 0.01
        out = WindowOutputs()
        proc.record(0, as_window_item(item(f"JUNK{i}", t, off=i)), t + 1, out)
        if i >= 1_000 and i % 100 == 0:  # after the slots filled: each real name once a second
            for name in real:
                proc.record(0, as_window_item(item(name, t, off=i, src=name)), t + 1, out)
                if name not in first_own and not any(r.id.startswith(name) for r in out.reroute):
                    first_own[name] = i
        evicted += out.evicted
        forgotten |= set(out.forgotten)
        if i % 50 == 0:
            proc.close_partition(0, out)
            store.apply(proc)
    store.apply(proc)
    meta = store.data["p/0"]
    assert set(real) <= set(first_own)  # every real name has its own windows...
    assert max(first_own.values()) <= 1_000 + 100  # ...from its second message on
    assert set(real) <= set(meta["topics"]) and not set(real) & forgotten  # and keeps them
    assert evicted == len(forgotten) == len(real) - 1  # each admission took one junk name's slot
    assert len(meta["activity"]) <= 125 and len(proc._candidates[0]) <= 16 * 125
    assert len(meta["topics"]) <= 125 + 1  # capacity + the known AAPL
    assert sum(1 for k in store.data if k.startswith("t/")) <= 126


def test_a_known_name_is_admitted_even_when_every_slot_is_taken():
    store, proc = flood_partition(known=frozenset({"KNOWN"}), capacity=2)
    out = feed(proc, store, [item(n, T0 + i, off=i) for i, n in enumerate(["A", "B", "C", "KNOWN"])], batch=10)
    assert [r.id for r in out.reroute] == ["C-0-2"]
    assert store.data["p/0"]["topics"] == ["A", "B", "KNOWN"]


def test_an_evicted_name_loses_its_state_and_its_series():
    store, proc = flood_partition(capacity=1)
    feed(proc, store, [item("QUIET", T0, off=0)])
    out = feed(proc, store, [item("BUSY", T0 + 1 + i, off=1 + i) for i in range(3)], batch=10)
    assert out.evicted == 1 and out.forgotten == ["QUIET"]
    assert "t/QUIET" not in store.data and "t/BUSY" in store.data
    assert store.data["p/0"]["topics"] == ["BUSY"]


def test_a_busy_names_state_stays_under_the_record_limit_and_still_knows_its_repeats():
    """100,000 messages for one name within one window (a flood counted under "other"): its table
    value, which goes to the changelog as one record, stays under the 900 kB record limit, and a
    redelivered stretch past the id cap is still recognised, by its offsets."""
    import json

    from pipeline.decode import MAX_RECORD_BYTES

    store = Store()
    proc = processor(store)
    out = WindowOutputs()
    for i in range(100_000):
        proc.record(0, as_window_item(item("BUSY", T0 + i * 0.0005, off=i)), WALL, out)
    proc.close_partition(0, out)
    store.apply(proc)
    assert len(json.dumps(store.data["t/BUSY"]).encode()) < MAX_RECORD_BYTES
    again = WindowOutputs()
    for i in range(99_000, 100_000):  # a batch read again after a restart
        proc.record(0, as_window_item(item("BUSY", T0 + i * 0.0005, off=i)), WALL, again)
    assert again.duplicates == 1_000


def test_a_copy_counted_under_other_carries_its_window_offset_so_a_redelivery_is_a_repeat():
    store = Store()
    proc = processor(store, max_topics=1)
    out = WindowOutputs()
    for position, name in enumerate(["A", "B", "C"]):
        proc.record(0, as_window_item(item(name, T0 + position, off=position)), WALL, out, position=100 + position)
    assert [(r.topic, r.source, r.offset) for r in out.reroute] == [(OTHER, "w0", 101), (OTHER, "w0", 102)]
    store.apply(proc)
    counted = feed(proc, store, out.reroute + out.reroute)  # delivered twice
    assert counted.duplicates == 2


def test_an_unknown_readable_answer_is_asked_again_with_backoff_and_never_holds_for_good(monkeypatch):
    """The probe cannot answer in time (a loaded host): the range counts as holding messages,
    is not probed again until a backoff passes, then with twice the patience; an answer ends it."""
    from pipeline.admin import GroupProgress, PartitionState
    from pipeline.config import Settings

    progress = GroupProgress(Settings(), ["t"])
    answers, asked = [None, None, 12], []

    def first_readable(topic, partition, start, end, timeout_s=None):
        asked.append(timeout_s)
        return answers.pop(0)

    clock = [1000.0]
    monkeypatch.setattr(progress.probe, "first_readable", first_readable)
    monkeypatch.setattr("pipeline.admin.time.monotonic", lambda: clock[0])
    state = PartitionState("t", 0, end=12, committed=9)  # 9-11: markers, as the probe finally says
    assert progress._holds_messages(state) and asked == [3.0]
    assert progress._holds_messages(state) and asked == [3.0]  # within the backoff: not asked again
    clock[0] += 3.1
    assert progress._holds_messages(state) and asked == [3.0, 6.0]
    clock[0] += 6.1
    assert not progress._holds_messages(state) and asked == [3.0, 6.0, 12.0]
    assert not progress._holds_messages(state) and len(asked) == 3  # known empty: never asked again


def test_a_name_with_a_firing_alert_keeps_its_slot():
    store, proc = flood_partition(capacity=1)
    feed(proc, store, [item("ALERTING", T0, off=0)])
    store.data["t/ALERTING"]["alerts"] = {"neg": {"status": "firing"}}
    out = feed(proc, store, [item("BUSY", T0 + 1 + i, off=1 + i) for i in range(3)], batch=10)
    assert out.evicted == 0 and "t/ALERTING" in store.data and store.data["p/0"]["topics"] == ["ALERTING"]


def test_the_alert_receiver_prints_each_alert_and_answers_bad_posts_with_400(capsys):
    import urllib.error
    import urllib.request

    from pipeline import receiver

    notification = {
        "version": "4",
        "alerts": [
            {
                "status": "firing",
                "labels": {"alertname": "FinsentTopicNegative", "severity": "page", "topic": "Fed | Central Banks"},
                "annotations": {"summary": "negative"},
                "startsAt": "2026-12-06T12:00:00Z",
            },
            {"status": "resolved", "labels": {"alertname": "FinsentLag"}, "annotations": {}},
        ],
    }
    server = receiver.start("127.0.0.1", 0, receiver.print_alerts)
    url = f"http://127.0.0.1:{server.server_address[1]}/alerts"
    try:
        post = urllib.request.Request(url, json.dumps(notification).encode(), {"Content-Type": "application/json"})
        assert urllib.request.urlopen(post, timeout=10).status == 200
        for bad in (b"not json", b"[1, 2]"):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(urllib.request.Request(url, bad), timeout=10)
            assert refused.value.code == 400
    finally:
        server.shutdown()
        server.server_close()
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(line["status"], line["alertname"], line["topic"]) for line in lines] == [
        ("firing", "FinsentTopicNegative", "Fed | Central Banks"),
        ("resolved", "FinsentLag", None),
    ]
