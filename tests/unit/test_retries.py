"""A failed batch is retried, then isolated: only an item that fails on its own is given up."""

from __future__ import annotations

import asyncio

from pipeline.retries import BatchFailed, process_with_retries


class Scorer:
    def __init__(self, transient_failures: int = 0, poison=frozenset()):
        self.transient_failures, self.poison = transient_failures, poison
        self.done: list[int] = []

    async def __call__(self, items) -> None:
        if self.transient_failures:
            self.transient_failures -= 1
            raise BatchFailed("out of memory")
        if self.poison & set(items):
            raise BatchFailed(f"cannot score {sorted(self.poison & set(items))}")
        self.done += items


def run(scorer: Scorer, items: list[int]) -> tuple[list[int], list[tuple[int, str]], list[float]]:
    failed, waits = [], []

    async def on_failure(item, exc):
        failed.append((item, str(exc)))

    async def sleep(seconds):
        waits.append(seconds)

    asyncio.run(process_with_retries(items, scorer, on_failure, delays=(0.5, 2.0), sleep=sleep))
    return scorer.done, failed, waits


def test_a_transient_failure_is_retried_with_backoff_and_loses_nothing():
    done, failed, waits = run(Scorer(transient_failures=2), list(range(8)))
    assert done == list(range(8)) and failed == [] and waits == [0.5, 2.0]


def test_a_message_that_fails_on_its_own_is_the_only_one_given_up():
    done, failed, _ = run(Scorer(poison={3}), list(range(8)))
    assert sorted(done) == [0, 1, 2, 4, 5, 6, 7]
    assert failed == [(3, "cannot score [3]")]


def test_a_transient_failure_while_isolating_does_not_cost_a_good_message():
    # The batch fails three times (its retries), then the first isolated item once more.
    done, failed, _ = run(Scorer(transient_failures=4), list(range(4)))
    assert sorted(done) == [0, 1, 2, 3] and failed == []
