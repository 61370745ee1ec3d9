"""The demo's market session: a scripted replay file built from real labelled sentences, and the
scorecard that compares the alerts a run fired with what the script meant to happen.

The session is 40 minutes of event time over 20 tickers with steady per-minute volumes and three
scripted events: a burst of negative news on one name, a volume spike on another, and a slow
slide into negative sentiment on a third. Every other name is quiet and must not alert. Texts are
drawn without repetition from the held-out *test* split of the default training recipe
(Financial PhraseBank 50Agree + Twitter Financial News), so a model trained by that recipe is
evaluated on text it never saw, and no two messages are syndicated copies of each other.

``expected_alerts`` runs the worker's own window and rule code over the file with each message's
*label* as its prediction: what a perfect model would fire. The generator checks that this is
exactly the script (and nothing on a quiet name) before it writes anything.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from . import windows
from .alerts import Rule, apply_rules, load_rules

REPO = Path(__file__).resolve().parents[1]
SESSION_FILE = REPO / "data" / "demo" / "market_session.jsonl"
SCRIPT_FILE = REPO / "data" / "demo" / "market_session.script.json"
RULES_FILE = REPO / "deploy" / "alerts" / "demo-rules.yml"
START = datetime(2026, 1, 5, 14, 30, tzinfo=UTC)  # a Monday, 09:30 New York: the US open
MINUTES = 40
BASE_MIX = {"negative": 0.10, "positive": 0.27, "neutral": 0.63}
SOURCES = {"Sentences_50Agree.txt": "financial_phrasebank", "sent_train.csv": "twitter_financial_news"}
SCORE = {"negative": -1.0, "neutral": 0.0, "positive": 1.0}  # a certain model's sentiment_score

# Messages per minute before jitter; busier names first.
VOLUMES = {
    "AAPL": 5, "MSFT": 4, "NVDA": 4, "AMZN": 4, "TSLA": 4, "GOOGL": 3, "META": 3, "JPM": 3, "BA": 3, "AMD": 3,
    "NFLX": 2, "XOM": 2, "BAC": 2, "GS": 2, "DIS": 2, "INTC": 2, "PFE": 1, "KO": 1, "WMT": 1, "CVX": 1,
}  # fmt: skip


@dataclass(frozen=True)
class ScriptedEvent:
    name: str
    ticker: str
    start_min: float
    end_min: float
    expect: tuple[str, ...]  # rules that must fire on the ticker during the event
    allow: tuple[str, ...] = ()  # rules that may fire too (a burst is also a volume spike)
    per_minute: int | None = None  # volume during the event (default: the ticker's own)
    negative_share: float | None = None  # during the event (default: the base mix)

    def mix(self, minute: float) -> dict[str, float]:
        return _mix(self.negative_share) if self.negative_share is not None else dict(BASE_MIX)


@dataclass(frozen=True)
class Slide(ScriptedEvent):
    """Negative share rising linearly from the base mix to ``peak`` over ``ramp_min`` minutes,
    then holding until ``end_min``."""

    peak: float = 0.85
    ramp_min: float = 10.0

    def mix(self, minute: float) -> dict[str, float]:
        progress = min(1.0, (minute - self.start_min) / self.ramp_min)
        return _mix(BASE_MIX["negative"] + progress * (self.peak - BASE_MIX["negative"]))


EVENTS = (
    ScriptedEvent(
        "burst of negative news",
        "BA",
        12,
        15,
        expect=("negative-burst",),
        allow=("volume-spike", "negative-drift"),
        per_minute=16,
        negative_share=0.9,
    ),
    ScriptedEvent("volume spike", "NVDA", 24, 26, expect=("volume-spike",), per_minute=30),
    Slide("slow slide into negative sentiment", "TSLA", 5, 21, expect=("negative-drift",), peak=0.9, ramp_min=8),
)
# An alert belongs to an event when it fires between the event's start and this long after its end.
GRACE_MIN = 10


def _mix(negative: float) -> dict[str, float]:
    rest = 1 - negative
    positive = rest * BASE_MIX["positive"] / (BASE_MIX["positive"] + BASE_MIX["neutral"])
    return {"negative": negative, "positive": positive, "neutral": rest - positive}


@dataclass
class Pools:
    """Unused labelled texts, per label, as (text, source file)."""

    by_label: dict[str, list[tuple[str, str]]] = field(default_factory=dict)

    def take(self, label: str) -> tuple[str, str]:
        pool = self.by_label[label]
        if not pool:
            raise ValueError(f"the {label} pool ran out: the scenario needs more {label} texts than the test split has")
        return pool.pop()


def load_pools(data_dir: Path, seed: int = 0) -> Pools:
    """The default recipe's test split, shuffled, by label (``training`` reads and splits it)."""
    from training.config import default_datasets
    from training.data import load_datasets, split

    from .dedup import fingerprint

    test = split(load_datasets(default_datasets(data_dir)), seed=0).test
    rng = random.Random(seed)
    pools = Pools({label: [] for label in BASE_MIX})
    seen = set()
    for example in test:
        # Texts that normalise alike would reach the worker as syndicated copies: keep one.
        if fingerprint(example.text) in seen:
            continue
        seen.add(fingerprint(example.text))
        pools.by_label[example.label].append((example.text, SOURCES.get(example.source, example.source)))
    for pool in pools.by_label.values():
        pool.sort()
        rng.shuffle(pool)
    return pools


def build(pools: Pools, seed: int = 0) -> list[dict]:
    """The session's messages in event-time order (replay JSONL rows)."""
    rng = random.Random(seed)
    rows = []
    for minute in range(MINUTES):
        for ticker, base in VOLUMES.items():
            event = next((e for e in EVENTS if e.ticker == ticker and e.start_min <= minute < e.end_min), None)
            count = max(0, base + rng.choice((-1, 0, 0, 1)))
            if event is not None and event.per_minute:
                count = event.per_minute
            mix = event.mix(minute) if event else BASE_MIX
            for _ in range(count):
                label = rng.choices(list(mix), weights=list(mix.values()))[0]
                text, source = pools.take(label)
                at = START + timedelta(minutes=minute, seconds=rng.uniform(0, 60))
                rows.append({"at": at, "text": text, "label": label, "tickers": [ticker], "source": source})
    rows.sort(key=lambda r: r["at"])
    return [
        {
            "published_at": r["at"].isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "text": r["text"],
            "label": r["label"],
            "tickers": r["tickers"],
            "source": r["source"],
        }
        for r in rows
    ]


def _seconds(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def expected_alerts(rows: list[dict], config: windows.WindowConfig, rules: list[Rule]) -> list[dict]:
    """The alert documents the worker's window and rule code gives ``rows`` when every message is
    scored as its label (one partition, in event-time order, then the stream left to run out)."""
    states: dict[str, dict] = {}
    fired: dict[str, dict] = {}

    def close(stream_time: float) -> None:
        for topic, state in states.items():
            for window in windows.close(config, topic, state, stream_time):
                for document in apply_rules(rules, window, state["alerts"]):
                    fired[document["id"]] = document

    for row in rows:
        t = _seconds(row["published_at"])
        for ticker in row["tickers"]:
            windows.add(config, states.setdefault(ticker, windows.new_state()), t, SCORE[row["label"]], row["label"])
        close(t)
    if rows:
        close(_seconds(rows[-1]["published_at"]) + 3600)
    return sorted(fired.values(), key=lambda a: (a["fired_at"], a["topic"], a["rule"]))


@dataclass
class Scorecard:
    found: list[dict]  # per expected (event, rule): fired_at / resolved_at or None
    false_alerts: list[dict]  # alerts no event expects or allows

    @property
    def passed(self) -> bool:
        return all(row["fired_at"] for row in self.found) and not self.false_alerts


def score(alerts: list[dict], events=EVENTS, start: datetime = START) -> Scorecard:
    """Matches alert documents (rule, topic, fired_at, resolved_at) with the scripted events."""

    def minute(value: str | None) -> float | None:
        return None if value is None else (_seconds(value) - start.timestamp()) / 60

    def during(event: ScriptedEvent, alert: dict) -> bool:
        at = minute(alert["fired_at"])
        return alert["topic"] == event.ticker and event.start_min <= at <= event.end_min + GRACE_MIN

    found = []
    for event in events:
        for rule in event.expect:
            match = next((a for a in alerts if a["rule"] == rule and during(event, a)), None)
            found.append(
                {
                    "event": event.name,
                    "ticker": event.ticker,
                    "rule": rule,
                    "scripted": f"{event.start_min:g}-{event.end_min:g} min",
                    "fired_at": match and match["fired_at"],
                    "fired_min": match and minute(match["fired_at"]),
                    "resolved_at": match and match.get("resolved_at"),
                    "resolved_min": match and minute(match.get("resolved_at")),
                }
            )
    false_alerts = [a for a in alerts if not any(a["rule"] in e.expect + e.allow and during(e, a) for e in events)]
    return Scorecard(found, false_alerts)


def latest_episodes(documents: list[dict]) -> list[dict]:
    """One document per alert episode (id): the resolved one where the episode has resolved."""
    episodes: dict[str, dict] = {}
    for document in documents:
        if document["id"] not in episodes or document.get("status") == "resolved":
            episodes[document["id"]] = document
    return list(episodes.values())


def generate(data_dir: Path, out: Path = SESSION_FILE, script: Path = SCRIPT_FILE, seed: int = 0) -> list[dict]:
    """Builds the session, checks that its labels fire exactly the script, writes both files."""
    from .config import Settings

    rows = build(load_pools(data_dir, seed), seed)
    settings = Settings()
    config = settings.window_config()
    rules = load_rules(RULES_FILE, [s.name for s in config.specs])
    expected = expected_alerts(rows, config, rules)
    card = score(expected)
    if not card.passed:
        raise ValueError(f"the session's labels do not fire exactly its script: {card}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    script.write_text(
        json.dumps(
            {
                "start": START.isoformat().replace("+00:00", "Z"),
                "minutes": MINUTES,
                "messages": len(rows),
                "seed": seed,
                "volumes_per_minute": VOLUMES,
                "events": [asdict(e) for e in EVENTS],
                "quiet": [t for t in VOLUMES if t not in {e.ticker for e in EVENTS}],
                "expected_alerts_when_scored_by_label": [
                    {k: a[k] for k in ("rule", "topic", "fired_at", "resolved_at")} for a in expected
                ],
                "command": "finsent scenario",
            },
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )
    return rows


def read_session(path: Path = SESSION_FILE) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
