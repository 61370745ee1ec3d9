"""Alert rules: the YAML file's model, and their evaluation over closed windows (pure).

An alert is an *episode*: it fires on the first window that meets its condition, stays firing
(without repeating) while later windows do, and resolves once after ``resolve_after``
consecutive windows meet the resolve condition. After resolving, the rule stays quiet for
``cooldown`` (event time) on that topic. The per-rule state lives in the topic's window state,
so it is changelog-backed and survives restarts and rebalances. Time is event time (window
ends), so a replay fires the same alerts as the live stream did.
"""

from __future__ import annotations

import fnmatch
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .windows import ClosedWindow

Severity = Literal["info", "warning", "page"]
DURATION = re.compile(r"^(\d+)\s*(s|m|h|d)?$")


def parse_duration(value: int | float | str) -> float:
    """Seconds from 600, "600s", "10m", "2h" or "1d"."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value < 0:
            raise ValueError("must not be negative")
        return float(value)
    match = DURATION.match(str(value).strip())
    if not match:
        raise ValueError(f"{value!r} is not a duration such as 90s, 10m or 2h")
    return float(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2) or "s"]


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    kind: Literal["negative_share", "sentiment_shift", "volume_spike"]
    # negative_share: the share (0-1) at or above which it fires; sentiment_shift and volume_spike:
    # the z-score magnitude (sentiment falls by, volume rises by this many standard deviations).
    threshold: float = Field(gt=0)
    window: str = "1m"
    topics: list[str] = Field(default_factory=lambda: ["*"], min_length=1)  # names or glob patterns
    severity: Severity = "warning"
    min_messages: int = Field(default=10, ge=1)
    cooldown_s: float = 600.0
    resolve_threshold: float | None = None  # default: 80 % of threshold (share) or half of it (z)
    resolve_after: int = Field(default=2, ge=1)  # consecutive calm windows before resolving
    summary: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _durations(cls, data):
        if isinstance(data, dict) and "cooldown" in data:
            data = dict(data)
            try:
                data["cooldown_s"] = parse_duration(data.pop("cooldown"))
            except ValueError as exc:
                raise ValueError(f"cooldown: {exc}") from None
        return data

    @field_validator("threshold")
    @classmethod
    def _share(cls, value: float, info) -> float:
        if info.data.get("kind") == "negative_share" and value > 1:
            raise ValueError("a negative_share threshold is a share between 0 and 1")
        return value

    @property
    def calm_below(self) -> float:
        if self.resolve_threshold is not None:
            return self.resolve_threshold
        return self.threshold * (0.8 if self.kind == "negative_share" else 0.5)

    def applies_to(self, topic: str) -> bool:
        return any(topic == p or fnmatch.fnmatchcase(topic, p) for p in self.topics)

    def value(self, window: ClosedWindow) -> float | None:
        """The measured value this rule compares (None when the window can't be judged)."""
        if self.kind == "negative_share":
            return window.shares["negative"] if window.messages else None
        if self.kind == "sentiment_shift":
            return -window.sentiment_z if window.sentiment_z is not None else None
        return window.volume_z

    def triggers(self, window: ClosedWindow) -> bool:
        value = self.value(window)
        return window.messages >= self.min_messages and value is not None and value >= self.threshold

    def calm(self, window: ClosedWindow) -> bool:
        value = self.value(window)
        return window.messages < self.min_messages or value is None or value < self.calm_below


class RuleFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rules: list[Rule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_names(self) -> RuleFile:
        names = [r.name for r in self.rules]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"rule names must be unique; repeated: {', '.join(duplicates)}")
        return self


class RuleError(ValueError):
    """The rule file is invalid; the message names the file, the rule and the field."""


def load_rules(path: Path | str, windows: list[str]) -> list[Rule]:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise RuleError(f"alert rules {path}: cannot read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise RuleError(f"alert rules {path}: invalid YAML ({exc})") from None
    raw_rules = data.get("rules") if isinstance(data, dict) else None
    try:
        rules = RuleFile.model_validate(data).rules
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            loc = error["loc"]
            if len(loc) >= 2 and loc[0] == "rules" and isinstance(loc[1], int):
                name = raw_rules[loc[1]].get("name", "?") if isinstance(raw_rules[loc[1]], dict) else "?"
                where = f"rule {loc[1] + 1} ({name!r})" + (f", field {'.'.join(map(str, loc[2:]))}" if loc[2:] else "")
            else:
                where = ".".join(map(str, loc)) or "file"
            lines.append(f"{where}: {error['msg'].removeprefix('Value error, ')}")
        raise RuleError(f"alert rules {path}:\n  " + "\n  ".join(lines)) from None
    for i, rule in enumerate(rules, 1):
        if rule.window not in windows:
            raise RuleError(
                f"alert rules {path}: rule {i} ({rule.name!r}), field window: {rule.window!r} is not one "
                f"of the configured windows ({', '.join(windows)})"
            )
    return rules


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).isoformat().replace("+00:00", "Z")


def evaluate(rule: Rule, window: ClosedWindow, state: dict | None) -> tuple[dict | None, dict | None]:
    """(new state, alert document or None) for one closed window of a topic the rule applies to."""
    state = dict(state) if state else {"status": "resolved", "calm": 0, "resolved_at": None}
    if state["status"] == "firing":
        state["calm"] = state["calm"] + 1 if rule.calm(window) else 0
        if state["calm"] < rule.resolve_after:
            return state, None
        state.update(status="resolved", calm=0, resolved_at=window.end)
        return state, _document(rule, window, state)
    if not rule.triggers(window):
        return (state if state.get("resolved_at") is not None else None), None
    if state.get("resolved_at") is not None and window.end - state["resolved_at"] < rule.cooldown_s:
        return state, None
    state.update(
        status="firing",
        calm=0,
        fired_at=window.end,
        id=f"{rule.name}|{window.topic}|{int(window.start)}",
        value=rule.value(window),
        window_start=window.start,
        messages=window.messages,
        resolved_at=None,
    )
    return state, _document(rule, window, state)


def apply_rules(rules: list[Rule], window: ClosedWindow, states: dict) -> list[dict]:
    """Evaluates the rules on ``window``'s spec and topic; ``states`` (rule name -> episode state,
    a topic's window state keeps it) is updated in place. Returns the alert documents raised."""
    documents = []
    for rule in rules:
        if rule.window != window.spec.name or not rule.applies_to(window.topic):
            continue
        new, document = evaluate(rule, window, states.get(rule.name))
        if new is None:
            states.pop(rule.name, None)
        else:
            states[rule.name] = new
        if document is not None:
            documents.append(document)
    return documents


def _document(rule: Rule, window: ClosedWindow, state: dict) -> dict:
    """The alert as written to the alerts topic and index (one document per episode, by id)."""
    summary = (
        rule.summary
        or {
            "negative_share": "{share:.0%} of {messages} messages about {topic} were negative in {window}",
            "sentiment_shift": "sentiment on {topic} fell {value:.1f} standard deviations below its baseline",
            "volume_spike": "{messages} messages about {topic} in {window}, {value:.1f} sd above its baseline",
        }[rule.kind]
    )
    return {
        "id": state["id"],
        "rule": rule.name,
        "kind": rule.kind,
        "severity": rule.severity,
        "topic": window.topic,
        "status": state["status"],
        "window": rule.window,
        "window_start": _iso(state["window_start"]),
        "fired_at": _iso(state["fired_at"]),
        "resolved_at": _iso(state["resolved_at"]) if state.get("resolved_at") is not None else None,
        "value": state["value"],
        "threshold": rule.threshold,
        "messages": state["messages"],
        "summary": summary.format(
            share=state["value"],
            value=state["value"],
            messages=state["messages"],
            topic=window.topic,
            window=rule.window,
        ),
    }
