"""The demo's market session: a scripted replay file built from real labelled sentences, and the
scorecard that compares the alerts a run fired with what the script meant to happen.

The session is 40 minutes of event time over 20 tickers with steady per-minute volumes and five
scripted events: a burst of negative news on one name, a volume spike on another, a slow slide
into negative sentiment on a third, a run of headlines naming two companies in opposite
directions (the falling one must alert, the rising one must not turn negative), and a burst of
central-bank tweets that name no ticker and carry no topic (the topic the model infers must
alert). Every other name is quiet and must not alert. Texts are drawn without repetition from the
held-out *test* splits of the default training recipe (Financial PhraseBank 50Agree + Twitter
Financial News for messages, SEntFiN for the pair headlines, the Twitter Financial News topic set
for the tweets), so a model trained by that recipe is evaluated on text it never saw, and no two
messages are syndicated copies of each other. A pair headline joins two held-out single-company
headlines, one negative and one positive, with their companies renamed to the pair's.

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
    forbid: tuple[str, ...] = ()  # rules that must stay silent on the ticker (shown on the scorecard)
    needs: str | None = None  # the model head the event tests ("entity", "topic"); None: any model

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


@dataclass(frozen=True)
class HeadlinePair(ScriptedEvent):
    """``per_minute`` extra headlines each naming ``ticker`` (negative) and ``rises`` (positive)."""

    rises: str = ""


@dataclass(frozen=True)
class TopicBurst(ScriptedEvent):
    """``per_minute`` tweets on the topic ``ticker`` during the event, ``background`` a minute
    otherwise; they name no ticker and carry no topic field."""

    background: int = 1


# The pair's companies as a headline names them (the shipped dictionary links both).
PAIR_NAMES = {"INTC": "Intel", "AMD": "AMD"}
TOPIC = "Fed | Central Banks"

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
    HeadlinePair(
        "headline pair: Intel falls as AMD gains",
        "INTC",
        30,
        33,
        expect=("negative-burst",),
        allow=("volume-spike", "negative-drift"),
        per_minute=10,
        rises="AMD",
        needs="entity",
    ),
    # The pair's other side: one label per message would drag AMD negative with Intel.
    ScriptedEvent(
        "headline pair: AMD, the gainer",
        "AMD",
        30,
        33,
        expect=(),
        allow=("volume-spike",),
        forbid=("negative-burst",),
        needs="entity",
    ),
    TopicBurst(
        "central-bank tweets, no ticker, no topic field",
        TOPIC,
        33,
        35,
        expect=("volume-spike",),
        allow=("negative-burst", "negative-drift"),  # the tweets carry no sentiment label to script
        per_minute=20,
        needs="topic",
    ),
)
# An alert belongs to an event when it fires between the event's start and this long after its end.
GRACE_MIN = 10


def _mix(negative: float) -> dict[str, float]:
    rest = 1 - negative
    positive = rest * BASE_MIX["positive"] / (BASE_MIX["positive"] + BASE_MIX["neutral"])
    return {"negative": negative, "positive": positive, "neutral": rest - positive}


@dataclass
class Pools:
    """Unused held-out texts: messages per label as (text, source file); single-company headlines
    per label as (text, start, end) of the company; tweets on the scripted topic."""

    by_label: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    headlines: dict[str, list[tuple[str, int, int]]] = field(default_factory=dict)
    topic_tweets: list[str] = field(default_factory=list)

    def take(self, label: str) -> tuple[str, str]:
        return _pop(self.by_label[label], f"the {label} pool")

    def pair(self, falls: str, rises: str, rng: random.Random) -> tuple[str, list[dict]]:
        """A headline joining a negative one about ``falls`` and a positive one about ``rises``
        (companies renamed), and the two entity labels at their spans."""
        parts = [(falls, "negative", _pop(self.headlines["negative"], "the negative headlines")),
                 (rises, "positive", _pop(self.headlines["positive"], "the positive headlines"))]  # fmt: skip
        rng.shuffle(parts)
        text, labels = "", []
        for name, label, (headline, start, end) in parts:
            text += "; " if text else ""
            labels.append({"entity": name, "span": [len(text) + start, len(text) + start + len(name)], "label": label})
            text += headline[:start] + name + headline[end:]
        return text, labels

    def tweet(self) -> str:
        return _pop(self.topic_tweets, "the topic tweets")


def _pop(pool: list, what: str):
    if not pool:
        raise ValueError(f"{what} ran out: the scenario needs more texts than the test split has")
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
    pools.headlines = _single_company_headlines(data_dir, seen, rng)
    pools.topic_tweets = _topic_tweets(data_dir, seen, rng)
    return pools


def _single_company_headlines(data_dir: Path, seen: set, rng: random.Random) -> dict[str, list]:
    """SEntFiN test headlines naming one company once (the dictionary links it at its labelled
    span, and nothing else), negative or positive, as (text, start, end)."""
    from training.data import by_text, load_head_splits

    from .dedup import fingerprint
    from .enrich import CompanyDictionary, link_entities

    heads = load_head_splits([], [str(data_dir / "sentfin" / "SEntFiN-dev.csv")], seed=0)
    dictionary = CompanyDictionary.from_csv(data_dir / "companies" / "dictionary.csv")
    out: dict[str, list] = {"negative": [], "positive": []}
    for text, [mention, *more] in sorted(by_text(heads.entities.test).items()):
        if more or mention.label not in out or text.lower().count(mention.entity.lower()) != 1:
            continue
        linked = link_entities(text, [], dictionary)
        if [m.span for m in linked] != [(mention.start, mention.end)] or fingerprint(text) in seen:
            continue
        seen.add(fingerprint(text))
        out[mention.label].append((text, mention.start, mention.end))
    for pool in out.values():
        rng.shuffle(pool)
    return out


def _topic_tweets(data_dir: Path, seen: set, rng: random.Random) -> list[str]:
    """The topic set's test tweets on the scripted topic that name no company."""
    from training.data import load_head_splits

    from .dedup import fingerprint
    from .enrich import CompanyDictionary, link_entities

    heads = load_head_splits([str(data_dir / "twitter_financial_news_topic" / "topic_train.csv")], [], seed=0)
    dictionary = CompanyDictionary.from_csv(data_dir / "companies" / "dictionary.csv")
    tweets = []
    for example in sorted(heads.topics.test, key=lambda t: t.text):
        if example.topic != TOPIC or fingerprint(example.text) in seen or link_entities(example.text, [], dictionary):
            continue
        seen.add(fingerprint(example.text))
        tweets.append(example.text)
    rng.shuffle(tweets)
    return tweets


def build(pools: Pools, seed: int = 0) -> list[dict]:
    """The session's messages in event-time order (replay JSONL rows)."""
    rng = random.Random(seed)
    rows = []

    def at(minute: int):
        return START + timedelta(minutes=minute, seconds=rng.uniform(0, 60))

    per_ticker = [e for e in EVENTS if not isinstance(e, (HeadlinePair, TopicBurst))]
    for minute in range(MINUTES):
        for ticker, base in VOLUMES.items():
            event = next((e for e in per_ticker if e.ticker == ticker and e.start_min <= minute < e.end_min), None)
            count = max(0, base + rng.choice((-1, 0, 0, 1)))
            if event is not None and event.per_minute:
                count = event.per_minute
            mix = event.mix(minute) if event else BASE_MIX
            for _ in range(count):
                label = rng.choices(list(mix), weights=list(mix.values()))[0]
                text, source = pools.take(label)
                rows.append({"at": at(minute), "text": text, "label": label, "tickers": [ticker], "source": source})
        for event in EVENTS:
            active = event.start_min <= minute < event.end_min
            if isinstance(event, HeadlinePair) and active:
                for _ in range(event.per_minute or 0):
                    text, labels = pools.pair(PAIR_NAMES[event.ticker], PAIR_NAMES[event.rises], rng)
                    tickers = [next(t for t, n in PAIR_NAMES.items() if n == e["entity"]) for e in labels]
                    row = {"at": at(minute), "text": text, "tickers": tickers, "source": "sentfin"}
                    rows.append({**row, "entity_labels": labels})
            if isinstance(event, TopicBurst):
                for _ in range((event.per_minute or 0) if active else event.background):
                    rows.append({"at": at(minute), "text": pools.tweet(), "tickers": [], "source": "twitter_topics"})
                    rows[-1]["scripted_topic"] = event.ticker
    rows.sort(key=lambda r: r["at"])
    fields = ("text", "label", "tickers", "entity_labels", "scripted_topic", "source")
    return [
        {"published_at": r["at"].isoformat(timespec="milliseconds").replace("+00:00", "Z")}
        | {k: r[k] for k in fields if k in r}
        for r in rows
    ]


def _seconds(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def labels_by_name(row: dict) -> dict[str, str]:
    """The label each name a session row counts toward has: a pair headline's companies their own,
    a topic tweet's scripted topic neutral (the topic set has no sentiment labels; only its volume
    is scripted), any other row's tickers its message label."""
    if "scripted_topic" in row:
        return {row["scripted_topic"]: "neutral"}
    names = {name: ticker for ticker, name in PAIR_NAMES.items()}
    own = {names[e["entity"]]: e["label"] for e in row.get("entity_labels", [])}
    return {ticker: own.get(ticker) or row["label"] for ticker in row["tickers"]}


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
        for name, label in labels_by_name(row).items():
            windows.add(config, states.setdefault(name, windows.new_state()), t, SCORE[label], label)
        close(t)
    if rows:
        close(_seconds(rows[-1]["published_at"]) + 3600)
    return sorted(fired.values(), key=lambda a: (a["fired_at"], a["topic"], a["rule"]))


@dataclass
class Scorecard:
    found: list[dict]  # per expected (event, rule): fired_at / resolved_at or None
    false_alerts: list[dict]  # alerts no event expects or allows
    silent: list[dict] = field(default_factory=list)  # per forbidden (event, rule): fired_at, None if it held
    skipped: list[str] = field(default_factory=list)  # events testing a head the model lacks

    @property
    def passed(self) -> bool:
        # A forbidden rule that fired is also a false alert (no event allows it): `silent` shows it.
        return all(row["fired_at"] for row in self.found) and not self.false_alerts


def score(alerts: list[dict], events=EVENTS, start: datetime = START, heads=("entity", "topic")) -> Scorecard:
    """Matches alert documents (rule, topic, fired_at, resolved_at) with the scripted events. An
    event testing a head the model lacks (``heads``: a single-head bundle has none) is skipped:
    nothing is expected of it, and its alerts are not false ones."""
    skipped = [e for e in events if e.needs and e.needs not in heads]
    judged = [e for e in events if e not in skipped]

    def minute(value: str | None) -> float | None:
        return None if value is None else (_seconds(value) - start.timestamp()) / 60

    def during(event: ScriptedEvent, alert: dict) -> bool:
        at = minute(alert["fired_at"])
        return alert["topic"] == event.ticker and event.start_min <= at <= event.end_min + GRACE_MIN

    def rows(rules_of) -> list[dict]:
        """Per event and rule: the first alert of that rule on the event's name while it ran."""
        out = []
        for event in judged:
            for rule in rules_of(event):
                match = next((a for a in alerts if a["rule"] == rule and during(event, a)), None)
                out.append(
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
        return out

    found, silent = rows(lambda e: e.expect), rows(lambda e: e.forbid)
    false_alerts = [
        a
        for a in alerts
        if not any(a["rule"] in e.expect + e.allow and during(e, a) for e in judged)
        and not any(a["topic"] == e.ticker and during(e, a) for e in skipped)
    ]
    return Scorecard(found, false_alerts, silent, [e.name for e in skipped])


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
