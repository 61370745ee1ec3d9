"""The demo's market session: what is shipped is what the generator makes, its labels fire exactly
the scripted alerts, and the scorecard tells a missed or false alert from a found one."""

from __future__ import annotations

import json

import pytest

from pipeline import scenario
from pipeline.alerts import load_rules
from pipeline.config import Settings
from pipeline.dedup import fingerprint
from training.config import default_datasets
from training.data import load_datasets, split


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
    texts = [row["text"] for row in session]
    assert set(texts) <= test and not set(texts) & train
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
    ]
    card = scenario.score(found)
    assert card.passed and [r["fired_min"] for r in card.found] == [13, 25, 18]
    missed = scenario.score(found[:3])
    assert not missed.passed and missed.found[-1]["fired_at"] is None
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
