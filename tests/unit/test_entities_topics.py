"""Entity linking, mention masks, the heads' data and the scored record's entities and topics."""

from __future__ import annotations

import csv
from datetime import UTC, datetime

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import companies
from pipeline.classify import Inference, mention_masks
from pipeline.config import DATA_DIR
from pipeline.dedup import fingerprint
from pipeline.enrich import CompanyDictionary, link_entities
from pipeline.schemas import TOPICS, RawMessage, ValidatedMessage
from pipeline.scoring import first_scores, plan_batch, scored_records, window_items
from training.data import BadDataError, group_split, load_entity_file, load_head_splits, load_topic_file

NOW = 1_767_000_000.0


@pytest.fixture(scope="module")
def dictionary() -> CompanyDictionary:
    return CompanyDictionary.from_csv(DATA_DIR / "companies" / "dictionary.csv")


def test_each_ticker_is_linked_once_at_its_first_mention(dictionary):
    text = "Infosys beats estimates; Wipro slumps as $AAPL and Infosys rally"
    mentions = link_entities(text, ["msft", "WIPRO"], dictionary)
    assert [(m.ticker, m.mention(text), m.source) for m in mentions] == [
        ("MSFT", None, "field"),  # given only in the tickers field: no span
        ("WIPRO", "Wipro", "dictionary"),
        ("AAPL", "$AAPL", "cashtag"),
        ("INFY", "Infosys", "dictionary"),
    ]
    assert mentions[3].span == (0, 7)


def test_capitals_aliases_match_only_in_capitals_and_ordinary_words_are_no_names(tmp_path):
    path = tmp_path / "names.csv"
    path.write_text("ticker,name\nBANKINDIA,BANK\nT,AT&T\nJPM,J.P. Morgan\nPG,Procter & Gamble\n")
    names = CompanyDictionary.from_csv(path)
    text = "The Bank said AT&T, J.P. Morgan and Procter & Gamble; BANK shares fell"
    assert [(m.ticker, m.mention(text)) for m in link_entities(text, [], names)] == [
        ("T", "AT&T"),
        ("JPM", "J.P. Morgan"),
        ("PG", "Procter & Gamble"),
        ("BANKINDIA", "BANK"),
    ]
    corpus = ["the news is out", "more news today", "news flow", "Apple said"]
    rows = companies.build(
        DATA_DIR / "companies/sp500_constituents.csv", DATA_DIR / "sentfin/entity_list_comprehensive.csv", corpus
    )
    aliases = {name for _, name in rows}
    assert "News" not in aliases and "News Corp" in aliases and "Apple" in aliases


def test_explicit_tickers_written_in_the_text_get_their_span(dictionary):
    text = "NVDA jumps; ANVDAX is no ticker"
    [mention] = link_entities(text, ["NVDA"], CompanyDictionary.empty())
    assert (mention.span, mention.source) == ((0, 4), "text")


def test_the_dictionary_knows_headline_aliases_and_skips_lower_case_words(dictionary):
    text = "Google and Facebook gain while target prices fall at Microsoft"
    tickers = [m.ticker for m in link_entities(text, [], dictionary)]
    assert tickers == ["GOOGL", "META", "MSFT"]
    lower = "google and microsoft gain"  # an all-lower-case text is matched as it is
    assert [m.ticker for m in link_entities(lower, [], dictionary)] == ["GOOGL", "MSFT"]


def test_the_shipped_dictionary_is_what_its_sources_build():
    built = companies.to_csv(
        companies.build(
            DATA_DIR / "companies/sp500_constituents.csv",
            DATA_DIR / "sentfin/entity_list_comprehensive.csv",
            companies.corpus_texts(DATA_DIR),
        )
    )
    assert (DATA_DIR / "companies" / "dictionary.csv").read_text() == built
    assert companies.short_name("Alphabet Inc. (Class A)") == "Alphabet"
    assert companies.short_name("The Walt Disney Company") == "Walt Disney"


@settings(max_examples=60, deadline=None)
@given(st.text(min_size=0, max_size=80), st.lists(st.text(min_size=1, max_size=8), max_size=4))
def test_linking_survives_any_text_and_spans_point_at_the_mention(text, tickers):
    tickers = [t for t in tickers if t.strip()]
    for mention in link_entities(text, tickers, CompanyDictionary.empty()):
        if mention.span:
            start, end = mention.span
            assert 0 <= start < end <= len(text)
            assert text[start:end].lstrip("$").upper() == mention.ticker


def test_mention_masks_mark_the_tokens_of_each_span():
    offsets = [[(0, 0), (0, 7), (8, 13), (14, 19), (0, 0)], [(0, 0), (0, 3), (0, 0)]]
    masks = mention_masks(offsets, [[(0, 7), (14, 19)], []], width=6)
    assert masks.shape == (2, 2, 6)
    assert masks[0, 0].tolist() == [0, 1, 0, 0, 0, 0]
    assert masks[0, 1].tolist() == [0, 0, 0, 1, 0, 0]
    assert not masks[1].any()  # no mentions: an all-zero row
    truncated = mention_masks([[(0, 0), (0, 3), (0, 0)]], [[(40, 45)]], width=3)
    assert not truncated.any()  # a mention past the truncation has no token


def test_sentfin_rows_become_one_example_per_entity_with_spans(tmp_path):
    path = tmp_path / "sentfin.csv"
    path.write_text(
        "S No.,Title,Decisions,Words\n"
        "1,Infosys beats estimates; Wipro slumps,\"{'Infosys': 'positive', 'Wipro': 'negative'}\",5\n"
        "2,IIFL Holdings surges,{'IIFL neutralings': 'positive'},3\n"
    )
    examples = load_entity_file(path)
    assert [(e.entity, e.label, e.text[e.start : e.end]) for e in examples] == [
        ("Infosys", "positive", "Infosys"),
        ("Wipro", "negative", "Wipro"),
        ("IIFL Holdings", "positive", "IIFL Holdings"),  # the published file's label-name damage undone
    ]


def test_entity_files_name_the_bad_row(tmp_path):
    path = tmp_path / "entities.csv"
    path.write_text("text,entity,label\nApple rises,Apple,positive\nApple rises,Google,positive\n")
    with pytest.raises(BadDataError, match=r"entities.csv:3: entity 'Google' does not occur"):
        load_entity_file(path)
    assert len(load_entity_file(path, skip_bad_rows=True)) == 1
    topics = tmp_path / "topics.csv"
    topics.write_text("text,label\nFed holds,1\nOdd,42\n")
    with pytest.raises(BadDataError, match=r"topics.csv:3: unknown topic '42'"):
        load_topic_file(topics)


def test_the_shipped_splits_never_put_a_headline_or_a_reposted_tweet_on_two_sides():
    heads = load_head_splits(
        [str(DATA_DIR / "twitter_financial_news_topic/topic_train.csv")],
        [str(DATA_DIR / "sentfin/SEntFiN-dev.csv")],
    )
    from training.data import near_copy_key

    for part_split, key in ((heads.entities, lambda e: e.text), (heads.topics, lambda t: near_copy_key(t.text))):
        sides = [{key(x) for x in part_split.part(p)} for p in ("train", "dev", "test")]
        assert not (sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2])
    assert len(heads.entities.part("all")) == 11_463
    assert {t.topic for t in heads.topics.test} == set(TOPICS)


def test_group_split_is_deterministic_and_keeps_groups_whole():
    items = [(f"g{i % 37}", i) for i in range(500)]
    a, b = group_split(items, lambda x: x[0], seed=3), group_split(items, lambda x: x[0], seed=3)
    assert a.test == b.test and len(a.train) + len(a.dev) + len(a.test) == 500
    owner = {}
    for name in ("train", "dev", "test"):
        for group, _ in a.part(name):
            assert owner.setdefault(group, name) == name


def _message(mid, text, **fields):
    valid = ValidatedMessage(
        message=RawMessage(id=mid, text=text, published_at=datetime.fromtimestamp(NOW, UTC), **fields),
        origin_topic="raw",
        origin_partition=0,
        origin_offset=int(mid[-1]),
    )
    return valid, fingerprint(text)


def test_each_ticker_gets_its_own_sentiment_and_windows_and_topics_are_inferred(dictionary):
    batch = [
        _message("m1", "Infosys beats estimates; Wipro slumps", tickers=["TCS"], topics=["India"]),
        _message("m2", "Fed signals a pause"),
    ]
    plan = plan_batch(batch, {}.get, NOW, 3600)
    mentions = {i: link_entities(v.message.text, v.message.tickers, dictionary) for i, (v, _) in enumerate(batch)}
    topics = np.full((2, len(TOPICS)), 0.01)
    topics[0, TOPICS.index("Earnings")] = 0.7
    topics[1, TOPICS.index("Fed | Central Banks")] = 0.45  # below the 0.5 floor
    inference = Inference(
        message=np.array([[0.3, 0.4, 0.3], [0.2, 0.6, 0.2]]),
        topics=topics,
        entities=[np.array([[0.05, 0.05, 0.9], [0.8, 0.1, 0.1]]), np.zeros((0, 3))],
        from_message=[np.array([False, False]), np.zeros(0, bool)],
    )
    scores = first_scores(plan, batch, inference, NOW, "m1", mentions, TOPICS)
    processed = datetime.now(UTC)
    first, second = scored_records(plan, batch, scores, processed, "m1", dictionary, 300.0, 0.5)
    # The mentions the entity head read, passed on, give the same records as linking again.
    assert scored_records(plan, batch, scores, processed, "m1", dictionary, 300.0, 0.5, mentions) == [first, second]
    by_ticker = {e.ticker: e for e in first.entities}
    assert [e.ticker for e in first.entities] == ["TCS", "INFY", "WIPRO"]
    assert (by_ticker["INFY"].label, by_ticker["WIPRO"].label) == ("positive", "negative")
    assert by_ticker["INFY"].sentiment_of == "entity" and by_ticker["TCS"].sentiment_of == "message"
    assert by_ticker["TCS"].label == first.label == "neutral"
    assert first.topics == ["India", "Earnings"] and first.inferred_topics[0].topic == "Earnings"
    assert second.topics == [] and second.inferred_topics == []
    items = {i.topic: i for i in window_items(first, batch[0][0], 0, 7)}
    assert items["INFY"].label == "positive" and items["WIPRO"].label == "negative"
    assert items["INFY"].score == pytest.approx(0.85) and items["Earnings"].label == "neutral"
    # A copy reuses the stored entity scores, whatever batch it comes in.
    copy = scored_records(
        plan_batch([batch[0]], {batch[0][1]: scores[0]}.get, NOW, 3600),
        [batch[0]],
        {},
        datetime.now(UTC),
        "m1",
        dictionary,
        300.0,
    )
    assert copy[0].entities == first.entities


def test_a_single_head_bundle_gives_every_ticker_the_message_sentiment(dictionary):
    batch = [_message("m1", "Infosys beats estimates; Wipro slumps")]
    plan = plan_batch(batch, {}.get, NOW, 3600)
    scores = first_scores(plan, batch, np.array([[0.1, 0.2, 0.7]]), NOW, "m1")
    [record] = scored_records(plan, batch, scores, datetime.now(UTC), "m1", dictionary, 300.0)
    assert {(e.ticker, e.label, e.sentiment_of) for e in record.entities} == {
        ("INFY", "positive", "message"),
        ("WIPRO", "positive", "message"),
    }
    assert record.topics == []


def test_sp500_dictionary_rows_are_unique_aliases():
    with open(DATA_DIR / "companies" / "dictionary.csv", encoding="utf-8") as handle:
        names = [row["name"].lower() for row in csv.DictReader(handle)]
    assert len(names) == len(set(names)) > 1500
