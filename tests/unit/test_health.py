"""Lag and readiness from the broker's answers (pipeline/health.py), without a broker."""

from __future__ import annotations

from pipeline.admin import PartitionState
from pipeline.health import LagView, readiness

RAW0, RAW1 = ("raw", 0), ("raw", 1)


def states(committed0: int | None, end0: int, committed1: int | None = 0, end1: int = 0) -> list[PartitionState]:
    return [PartitionState("raw", 0, end0, committed0), PartitionState("raw", 1, end1, committed1)]


def test_lag_follows_the_broker_and_a_partition_not_moving_is_stalled_after_the_bound():
    view = LagView(stall_s=60)
    view.update(states(100, 100), {RAW0, RAW1}, now=0)
    assert view.lag == {RAW0: 0, RAW1: 0} and view.stalled(0) == []
    view.update(states(100, 400), {RAW0, RAW1}, now=10)  # input arrives, nothing committed
    assert view.lag[RAW0] == 300 and view.stalled(59) == []  # (the clock starts when last seen caught up)
    view.update(states(100, 900), {RAW0, RAW1}, now=70)  # lag grows, the offset still has not moved
    assert view.lag[RAW0] == 800 and view.stalled(70) == [RAW0]
    view.update(states(150, 900), {RAW0, RAW1}, now=75)  # moving again
    assert view.stalled(75) == []


def test_a_partition_behind_but_moving_is_not_stalled():
    view = LagView(stall_s=30)
    for t in range(0, 200, 5):
        view.update(states(t * 10, t * 10 + 5000), {RAW0}, now=t)
        assert view.stalled(t) == []


def test_a_partition_no_longer_owned_loses_its_lag_at_once():
    view = LagView(stall_s=30)
    view.update(states(0, 50, 0, 70), {RAW0, RAW1}, now=0)
    gone = view.update(states(0, 50, 0, 70), {RAW0}, now=5)
    assert gone == {RAW1} and set(view.lag) == {RAW0}


def test_readiness_names_what_is_wrong():
    assert readiness(True, False, []) == (
        True,
        {"assigned": True, "elasticsearch_backpressure": False, "stalled_partitions": []},
    )
    ok, checks = readiness(True, True, [RAW0])
    assert not ok and checks["stalled_partitions"] == ["raw[0]"]
    assert not readiness(False, False, [])[0]
