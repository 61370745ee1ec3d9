"""The classify stage's pure decisions (pipeline/scoring.py) and its in-process plumbing."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.dedup import fingerprint
from pipeline.enrich import CompanyDictionary
from pipeline.schemas import RawMessage, ValidatedMessage, WindowItem, WindowTick, parse_window_event
from pipeline.scoring import first_scores, plan_batch, scored_records, window_items
from pipeline.stages.batching import Pending, Worker

NOW = 1_767_000_000.0
HORIZON = 3600.0


def message(mid: str, text: str, offset: int = 0, **fields) -> tuple[ValidatedMessage, str]:
    valid = ValidatedMessage(
        message=RawMessage(id=mid, text=text, **fields),
        kafka_timestamp_ms=int(NOW * 1000) - 250,
        origin_topic="raw",
        origin_partition=2,
        origin_offset=offset,
    )
    return valid, fingerprint(text)


def stored_scores(mid: str, at: float) -> dict:
    probs = {"negative": 0.1, "neutral": 0.2, "positive": 0.7}
    return {"id": mid, "label": "positive", "probabilities": probs, "at": at, "model_version": "m0"}


def test_first_copies_are_scored_later_copies_and_redeliveries_reuse_scores():
    batch = [
        message("a", "Shares of $ACME jump"),
        message("b", "shares of $acme JUMP!"),  # a syndicated copy of a
        message("a", "Shares of $ACME jump"),  # a again (redelivered)
        message("c", "Profit warning at $XYZ"),  # its text was seen an hour ago: past the horizon
        message("d", "Guidance cut at $QRS"),  # seen a minute ago under another id
        message("e", "Dividend raised"),  # redelivered after its first batch
    ]
    store = {
        batch[3][1]: stored_scores("c0", NOW - HORIZON - 1),
        batch[4][1]: stored_scores("d0", NOW - 60),
        batch[5][1]: stored_scores("e", NOW - 10),
    }
    plan = plan_batch(batch, store.get, NOW, HORIZON)
    assert plan.to_score == [0, 3]
    assert plan.copy_of == {1: 0, 2: 0, 4: store[batch[4][1]], 5: store[batch[5][1]]}
    assert plan.redelivered == {2, 5}

    probabilities = np.array([[0.8, 0.15, 0.05], [0.1, 0.1, 0.8]])
    scores = first_scores(plan, batch, probabilities, NOW, "m1")
    assert {i: s["label"] for i, s in scores.items()} == {0: "negative", 3: "positive"}
    records = scored_records(plan, batch, scores, datetime.now(UTC), "m1", CompanyDictionary.empty(), 300.0)
    assert [r.duplicate_of for r in records] == [None, "a", None, None, "d0", None]
    assert records[1].probabilities == records[0].probabilities == records[2].probabilities
    assert records[4].model_version == records[5].model_version == "m0"  # stored scores keep their model
    assert records[0].sentiment_score == pytest.approx(0.05 - 0.8)
    assert records[0].tickers == ["ACME"]
    assert records[0].kafka_latency_ms >= 0


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from("abcdef"), st.sampled_from(["x", "y", "z", "w"])), max_size=30),
    st.dictionaries(st.sampled_from(["x", "y", "z"]), st.floats(0, 2 * HORIZON), max_size=3),
)
def test_every_item_is_scored_once_or_points_at_scores(items, ages):
    """Whatever the mix of ids, texts and stored entries: each text is scored at most once per
    batch, every other item reuses scores that exist, and 'redelivered' means the same id."""
    batch = [message(mid, f"text {text}") for mid, text in items]
    store = {fingerprint(f"text {t}"): stored_scores(f"old-{t}", NOW - age) for t, age in ages.items()}
    plan = plan_batch(batch, store.get, NOW, HORIZON)
    scored_texts = [batch[i][1] for i in plan.to_score]
    assert len(scored_texts) == len(set(scored_texts))
    assert set(plan.to_score) | set(plan.copy_of) == set(range(len(batch)))
    assert not set(plan.to_score) & set(plan.copy_of)
    for i, source in plan.copy_of.items():
        if isinstance(source, int):
            assert source in plan.to_score and source < i and batch[source][1] == batch[i][1]
        else:
            assert source is store[batch[i][1]]
        if i in plan.redelivered:
            first_id = batch[source][0].message.id if isinstance(source, int) else source["id"]
            assert first_id == batch[i][0].message.id


def test_window_items_one_per_name_typed_and_round_trip():
    published = datetime.fromtimestamp(NOW, UTC)
    batch = [
        message("a", "Apple and $AAPL beat", offset=41, tickers=["AAPL"], topics=["Earnings"], published_at=published)
    ]
    plan = plan_batch(batch, {}.get, NOW, HORIZON)
    scores = first_scores(plan, batch, np.array([[0.1, 0.2, 0.7]]), NOW, "m1")
    [record] = scored_records(plan, batch, scores, published, "m1", CompanyDictionary.empty(), 300.0)
    items = window_items(record, batch[0][0], partition=3, offset=7)
    assert [i.topic for i in items] == ["AAPL", "Earnings"]  # the cashtag repeats AAPL: one item
    assert {(i.source, i.offset, i.raw_offset, i.time) for i in items} == {("3:2", 7, 41, NOW)}
    assert parse_window_event(items[0].encode()) == items[0]
    assert isinstance(parse_window_event(WindowTick(tick=NOW).encode()), WindowTick)
    # A record whose clock is far ahead never reaches the windows.
    ahead = record.model_copy(update={"clock_skew_s": 900.0, "published_at": published + timedelta(hours=1)})
    assert window_items(ahead, batch[0][0], partition=3, offset=7) == []
    # Items written before the typed schema (short keys, no offsets) still parse.
    old = b'{"topic": "other", "id": "x", "t": 1.5, "score": 0.2, "label": "neutral", "src": "w0"}'
    assert parse_window_event(old) == WindowItem(
        topic="other", id="x", time=1.5, score=0.2, label="neutral", source="w0"
    )


class FakeBatch:
    def __init__(self, n: int, generation: int = 1):
        self.events, self.generation = list(range(n)), generation


def test_pending_hands_the_scorer_everything_waiting_up_to_the_batch_size():
    async def scenario():
        pending = Pending(max_events=100)
        for n in (3, 5, 60, 10):
            await pending.put(FakeBatch(n))
        first = await pending.take(64)
        second = await pending.take(64)
        assert [len(b.events) for b in first] == [3, 5]  # 3 + 5 + 60 would pass 64
        assert [len(b.events) for b in second] == [60]
        # Backpressure: past max_events, put waits until the scorer takes.
        await pending.put(FakeBatch(90))
        blocked = asyncio.ensure_future(pending.put(FakeBatch(1)))
        await asyncio.sleep(0.01)
        assert not blocked.done()
        assert [len(b.events) for b in await pending.take(200)] == [10, 90]
        await asyncio.wait_for(blocked, 1)

    asyncio.run(scenario())


def test_a_failed_worker_raises_to_whoever_waits_on_it():
    async def scenario():
        async def step():
            raise RuntimeError("Elasticsearch said no")

        worker = Worker(step)
        worker.start()
        with pytest.raises(RuntimeError, match="said no"):
            await worker.guard(asyncio.sleep(10))

    asyncio.run(scenario())
