"""Entity sentiment and inferred topics through the real broker and Elasticsearch: a headline
naming two companies, tickers given only in the `tickers` field, topic-less tweets; every
per-ticker and per-topic window against a recomputation from the indexed records."""

from __future__ import annotations

import csv
import json
import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from pipeline.bundle import open_bundle
from pipeline.classify import Classifier
from pipeline.config import DATA_DIR
from pipeline.enrich import CompanyDictionary, link_entities
from pipeline.replay import replay
from pipeline.report import report

from .harness import WINDOW_CONFIG, WINDOW_ENV, Pipeline

BASE = datetime(2024, 6, 3, 9, 0, tzinfo=UTC)
PAIR = "Infosys beats estimates; Wipro slumps on weak guidance"
TWEETS = [
    "Fed's Powell says rate cuts are not yet on the table",
    "Oil jumps 3% as OPEC+ extends output cuts",
    "Treasury yields climb after a strong jobs report",
    "Apple unveils a new iPhone lineup at its September event",
]
MIN_SCORE = 0.06  # the tiny model's topics are near-uniform over 20: a low floor lets some through


def at(minute: float) -> str:
    return (BASE + timedelta(minutes=minute)).isoformat().replace("+00:00", "Z")


@pytest.fixture
def pipeline(local_stack, tiny_heads_bundle, tmp_path, unique):
    rules = tmp_path / "rules.yml"  # the test's windows (1m, 5m); alerts are not what it checks
    rules.write_text(
        "rules:\n  - {name: topic-negative, kind: negative_share, window: 5m, threshold: 0.9, min_messages: 50}\n"
    )
    p = Pipeline(
        name=f"e{unique}",
        bundle=tiny_heads_bundle,
        workdir=tmp_path,
        extra_env={**WINDOW_ENV, "FINSENT_TOPIC_MIN_SCORE": str(MIN_SCORE), "FINSENT_ALERT_RULES": str(rules)},
    )
    yield p
    p.stop_all()


def test_each_company_gets_its_own_sentiment_and_window_and_tweets_land_in_inferred_topics(
    pipeline: Pipeline, tiny_heads_bundle
):
    messages = []
    for minute in range(6):
        for k in range(4):
            messages.append(
                {"id": f"pair-{minute}-{k}", "text": f"{PAIR} ({minute}.{k})", "published_at": at(minute + k / 4)}
            )
            messages.append(
                {"id": f"tw-{minute}-{k}", "text": f"{TWEETS[k]} #{minute}", "published_at": at(minute + k / 4 + 0.1)}
            )
    messages.append({"id": "field", "text": "Quarterly numbers due today", "tickers": ["TCS"], "published_at": at(2)})
    sentinel = {"id": "end", "text": f"{PAIR} (end)", "published_at": at(20)}
    pipeline.start_worker()
    pipeline.produce([json.dumps(m).encode() for m in messages + [sentinel]])
    pipeline.wait_indexed(len(messages) + 1)
    docs = {d["id"]: d for d in pipeline.documents("scored")}

    # The pair: each company its own scores, the ones the bundle gives those spans offline.
    classifier = Classifier(open_bundle(tiny_heads_bundle))
    dictionary = CompanyDictionary.from_csv(DATA_DIR / "companies" / "dictionary.csv")
    pair = docs["pair-0-0"]
    mentions = link_entities(pair["text"], [], dictionary)
    offline = classifier.infer([pair["text"]], [[m.span for m in mentions]])
    entities = {e["ticker"]: e for e in pair["entities"]}
    assert list(entities) == ["INFY", "WIPRO"] and pair["tickers"] == ["INFY", "WIPRO"]
    for mention, expected in zip(mentions, offline.entities[0], strict=True):
        entity = entities[mention.ticker]
        assert entity["sentiment_of"] == "entity" and tuple(entity["span"]) == mention.span
        assert entity["mention"] == pair["text"][mention.span[0] : mention.span[1]]
        np.testing.assert_allclose(
            [entity["scores"][k] for k in ("negative", "neutral", "positive")], expected, atol=1e-5
        )
    assert entities["INFY"]["scores"] != entities["WIPRO"]["scores"]
    # A ticker only in the tickers field takes the message's sentiment, marked as such.
    [field] = docs["field"]["entities"]
    assert (field["ticker"], field["sentiment_of"], field["span"]) == ("TCS", "message", None)
    assert field["scores"] == docs["field"]["probabilities"]

    # Topic-less tweets carry the topic head's topics above the floor, the same as offline.
    for k, text in enumerate(TWEETS):
        doc = docs[f"tw-0-{k}"]
        probs = classifier.infer([doc["text"]], [[]]).topics[0]
        labels = classifier.heads["topic"]["labels"]
        probs = np.round(probs, 4)  # as the de-duplication store keeps them
        expected = sorted(
            (labels[i] for i in np.flatnonzero(probs >= MIN_SCORE)), key=lambda t: -probs[labels.index(t)]
        )
        assert doc["topics"] == expected, text
        assert [t["topic"] for t in doc["inferred_topics"]] == expected
    inferred = {t for d in docs.values() for t in d["topics"]}
    assert inferred, "the tiny model should put some tweets above the floor"

    # Nested mapping: ticker and label match within one entity, not across the headline's two.
    es = pipeline.es()
    es.indices.refresh(index=f"{pipeline.name}-scored")
    wipro_label = entities["WIPRO"]["label"]
    query = {
        "nested": {
            "path": "entities",
            "query": {
                "bool": {"must": [{"term": {"entities.ticker": "INFY"}}, {"term": {"entities.label": wipro_label}}]}
            },
        }
    }
    hits = es.search(index=f"{pipeline.name}-scored", query=query, size=0)["hits"]["total"]["value"]
    same_entity = [
        d
        for d in docs.values()
        if {"ticker": "INFY", "label": wipro_label}
        in [{"ticker": e["ticker"], "label": e["label"]} for e in d["entities"]]
    ]
    assert hits == len(same_entity)

    # Every per-ticker window (entity sentiment) and per-topic window (inferred topics included)
    # against a recomputation from the indexed records.
    expected, got = pipeline.wait_windows(WINDOW_CONFIG, cutoff_s=(BASE + timedelta(minutes=10)).timestamp())
    assert {"INFY", "WIPRO", "TCS"} <= {k[0] for k in expected} and inferred <= {k[0] for k in expected}
    for key, row in expected.items():
        aggregate = got[key]
        assert aggregate["messages"] == row["messages"], key
        assert math.isclose(aggregate["sentiment_mean"], row["sum"] / row["messages"], abs_tol=1e-6), key
        assert math.isclose(aggregate["share_negative"], row["negative"] / row["messages"], abs_tol=1e-9), key
    infy = [a for k, a in got.items() if k[0] == "INFY" and k[1] == "1m"]
    wipro = [a for k, a in got.items() if k[0] == "WIPRO" and k[1] == "1m"]
    assert [a["sentiment_mean"] for a in infy] != [a["sentiment_mean"] for a in wipro]


def test_an_entity_replay_reports_each_tickers_accuracy_as_offline_inference_gives_it(
    local_stack, tiny_heads_bundle, tmp_path, unique
):
    """SEntFiN headlines replayed as an entity file; the report's per-ticker accuracy equals the
    bundle's entity labels computed offline for the same linked spans."""
    from training.data import by_text, load_entity_file

    headlines = list(by_text(load_entity_file(DATA_DIR / "sentfin" / "SEntFiN-dev.csv")).items())[:120]
    data = tmp_path / "entities.csv"
    with open(data, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "entity", "label"])
        for text, mentions in headlines:
            writer.writerows([text, m.entity, m.label] for m in mentions)
    run = f"entities-{unique}"
    pipeline = Pipeline(name=f"er{unique}", bundle=tiny_heads_bundle, workdir=tmp_path)
    try:
        pipeline.start_worker()
        sent = replay(pipeline.settings, data, rate=200, run_id=run, progress=False)
        assert sent.sent == len(headlines) and not sent.bad_rows
        pipeline.wait_indexed(len(headlines))
        path = report(pipeline.settings, run, tmp_path / "report")
    finally:
        pipeline.stop_all()
    entities = json.loads((path.parent / "summary.json").read_text())["entities"]

    classifier = Classifier(open_bundle(tiny_heads_bundle))
    dictionary = CompanyDictionary.from_csv(DATA_DIR / "companies" / "dictionary.csv")
    per_ticker: dict[str, list[bool]] = {}
    labelled = 0
    for text, truths in headlines:
        labelled += len(truths)
        mentions = link_entities(text, [], dictionary)
        scores = classifier.infer([text], [[m.span for m in mentions]]).entities[0]
        for truth in truths:
            found = [
                (m, s)
                for m, s in zip(mentions, scores, strict=True)
                if m.span[0] < truth.end and truth.start < m.span[1]
            ]
            if found:
                mention, probs = found[0]
                predicted = ("negative", "neutral", "positive")[int(np.argmax(probs))]
                per_ticker.setdefault(mention.ticker, []).append(predicted == truth.label)
    assert entities["labelled"] == labelled
    assert entities["linked"] == sum(map(len, per_ticker.values())) > 20
    assert {t: (m["entities"], m["accuracy"]) for t, m in entities["per_ticker"].items()} == {
        t: (len(hits), pytest.approx(sum(hits) / len(hits))) for t, hits in per_ticker.items()
    }
    assert (path.parent / "entity_accuracy.png").stat().st_size > 5000
