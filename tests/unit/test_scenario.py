"""The demo's market session: what is shipped is what the generator makes, its labels fire exactly
the scripted alerts, and the scorecard tells a missed or false alert from a found one."""

from __future__ import annotations

import json

import pytest

from pipeline import scenario
from pipeline.alerts import load_rules
from pipeline.config import Settings
from pipeline.dedup import fingerprint
from pipeline.enrich import CompanyDictionary, link_entities
from training.config import default_datasets, default_topic_datasets
from training.data import load_datasets, load_head_splits, split


@pytest.fixture(scope="module")
def session():
    return scenario.read_session()


@pytest.fixture(scope="module")
def script():
    return json.loads(scenario.SCRIPT_FILE.read_text())


def test_the_shipped_session_is_what_the_generator_makes(session, script):
    assert session == scenario.build(scenario.load_pools(scenario.REPO / "data", seed=script["seed"]), script["seed"])
    assert script["messages"] == len(session)


def test_the_session_uses_held_out_text_once_each(session):
    parts = split(load_datasets(default_datasets()), seed=0)
    test, train = {e.text for e in parts.test}, {e.text for e in parts.train + parts.dev}
    messages = [row["text"] for row in session if "label" in row]
    assert set(messages) <= test and not set(messages) & train
    heads = load_head_splits(default_topic_datasets(), [], seed=0)
    tweets = [row["text"] for row in session if "scripted_topic" in row]
    assert len(tweets) == 38 + 2 * 20 and set(tweets) <= {t.text for t in heads.topics.test}
    texts = [row["text"] for row in session]
    # No two messages are syndicated copies of each other (the worker would count them once).
    assert len({fingerprint(t) for t in texts}) == len(texts)
    times = [row["published_at"] for row in session]
    assert times == sorted(times)


def test_scored_by_its_labels_the_session_fires_exactly_its_script(session, script):
    config = Settings().window_config()
    rules = load_rules(scenario.RULES_FILE, [s.name for s in config.specs])
    fired = scenario.expected_alerts(session, config, rules)
    card = scenario.score(fired)
    assert card.passed, card
    assert all(row["resolved_at"] for row in card.found)  # every episode also resolves in the session
    quiet = set(script["quiet"])
    assert not [a for a in fired if a["topic"] in quiet]
    assert [{k: a[k] for k in ("rule", "topic", "fired_at", "resolved_at")} for a in fired] == script[
        "expected_alerts_when_scored_by_label"
    ]


def test_pair_headlines_name_both_companies_where_their_labels_say(session):
    """The worker must find each company at its labelled span, and nothing else, for the pair to
    test per-company sentiment (a mention it missed would take the message's label)."""
    dictionary = CompanyDictionary.from_csv(scenario.REPO / "data" / "companies" / "dictionary.csv")
    pairs = [row for row in session if "entity_labels" in row]
    assert len(pairs) == 30
    for row in pairs:
        linked = {m.ticker: m.span for m in link_entities(row["text"], [], dictionary)}
        truth = {scenario.labels_by_name(row)[t]: linked[t] for t in row["tickers"]}
        assert set(linked) == {"INTC", "AMD"} and sorted(truth) == ["negative", "positive"]
        assert [tuple(e["span"]) for e in row["entity_labels"]] == [linked[t] for t in row["tickers"]]
        assert [row["text"][slice(*e["span"])] for e in row["entity_labels"]] == [
            scenario.PAIR_NAMES[t] for t in row["tickers"]
        ]


def alert(rule: str, topic: str, minute: int, resolved: int | None = None, status: str = "resolved") -> dict:
    def at(m):
        return None if m is None else f"2026-01-05T{14 + (30 + m) // 60}:{(30 + m) % 60:02d}:00Z"

    return {"id": f"{rule}|{topic}|{minute}", "rule": rule, "topic": topic, "fired_at": at(minute),
            "resolved_at": at(resolved), "status": status}  # fmt: skip


def test_the_scorecard_reports_found_missed_and_false_alerts():
    found = [
        alert("negative-burst", "BA", 13, 17),
        alert("volume-spike", "BA", 13, 16),  # allowed alongside the burst
        alert("volume-spike", "NVDA", 25, 28),
        alert("negative-drift", "TSLA", 18, 34),
        alert("negative-burst", "INTC", 31, 35),
        alert("volume-spike", "AMD", 31, 34),  # allowed: the pair doubles its volume
        alert("volume-spike", "Fed | Central Banks", 34, 37),
    ]
    card = scenario.score(found)
    assert card.passed and [r["fired_min"] for r in card.found] == [13, 25, 18, 31, 34]
    assert card.silent == [
        {"event": "headline pair: AMD, the gainer", "ticker": "AMD", "rule": "negative-burst",
         "scripted": "30-33 min", "fired_at": None, "fired_min": None, "resolved_at": None, "resolved_min": None}
    ]  # fmt: skip
    missed = scenario.score(found[:3] + found[4:])
    assert not missed.passed and missed.found[2]["fired_at"] is None
    # One label per message: the gainer turns negative with the loser.
    dragged = scenario.score([*found, alert("negative-burst", "AMD", 31, 34)])
    assert not dragged.passed and dragged.silent[0]["fired_min"] == 31
    assert [(a["topic"], a["rule"]) for a in dragged.false_alerts] == [("AMD", "negative-burst")]
    # A single-head model is not judged on what needs the entity and topic heads.
    single = scenario.score([*found[:4], alert("negative-burst", "AMD", 31, 34)], heads=())
    assert single.passed and single.skipped == [e.name for e in scenario.EVENTS if e.needs]
    assert [r["ticker"] for r in single.found] == ["BA", "NVDA", "TSLA"] and not single.silent
    assert not scenario.score([*found[:4], alert("negative-burst", "KO", 31)], heads=()).passed
    false = scenario.score([*found, alert("negative-burst", "KO", 20), alert("volume-spike", "NVDA", 5, 7)])
    assert not false.passed and [(a["topic"], a["rule"]) for a in false.false_alerts] == [
        ("KO", "negative-burst"),
        ("NVDA", "volume-spike"),  # the right rule on the right name, long before its event
    ]


def test_latest_episodes_prefer_the_resolved_document():
    firing = alert("volume-spike", "NVDA", 25, status="firing")
    resolved = alert("volume-spike", "NVDA", 25, 28)
    assert scenario.latest_episodes([resolved, firing]) == [resolved]
    assert scenario.latest_episodes([firing]) == [firing]
