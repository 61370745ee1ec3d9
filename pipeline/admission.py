"""Which names get windows of their own in a window partition (pure; aggregation.py keeps the
tracked names' activity in the partition's meta value, so it survives restarts and rebalances
with the windows).

A flood of junk names must not lock real ones out, and memory and metric labels stay bounded:
- known names (the company dictionary, the configured list) are always admitted;
- other names fill ``capacity`` slots. Once full, a newcomer is remembered among the
  ``16 x capacity`` most recently seen candidates (memory only: losing them to a restart costs
  a name one more message). Activity scores halve every ``half_life_s`` of event time. A
  candidate seen at least twice within about a half-life (``min_activity``) and more active than
  the least active tracked name takes its slot: that name is evicted (its windows and metrics
  are dropped, and counted).

So a name mentioned again before 16 x capacity other newcomers pass is admitted, whatever the
flood, while names seen once each (the flood) never displace anything.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

OTHER = "other"


@dataclass(frozen=True)
class AdmissionPolicy:
    capacity: int  # names not known beforehand with windows of their own, per window partition
    known: frozenset[str] = frozenset()
    half_life_s: float = 600.0
    min_activity: float = 1.5  # seen twice within about a half-life

    @property
    def candidates(self) -> int:
        return 16 * self.capacity


@dataclass
class Admission:
    admitted: bool
    evicted: str | None = None


def decayed(entry: list[float] | None, t: float, half_life_s: float) -> float:
    """An activity score ``[score, at]`` as seen at event time ``t`` (never grows backwards)."""
    if not entry:
        return 0.0
    score, at = entry
    return score * math.pow(0.5, max(0.0, t - at) / half_life_s)


def _bump(entry: list[float] | None, t: float, half_life_s: float) -> list[float]:
    reference = t if not entry else max(t, entry[1])
    return [decayed(entry, reference, half_life_s) + 1.0, reference]


def admit(
    policy: AdmissionPolicy, meta: dict, candidates: OrderedDict, name: str, t: float, evictable=lambda name: True
) -> Admission:
    """Whether a record of ``name`` at event time ``t`` is counted under ``name`` (else under
    ``other``); updates ``meta``'s ``topics`` and ``activity`` and the partition's
    ``candidates`` (name -> activity, least recently seen first) in place. ``evictable``: whether
    a tracked name may lose its slot (a name with a firing alert keeps it)."""
    topics: list[str] = meta.setdefault("topics", [])
    activity: dict[str, list[float]] = meta.setdefault("activity", {})
    if name in topics:
        if name in activity:
            activity[name] = _bump(activity[name], t, policy.half_life_s)
        return Admission(True)
    if name == OTHER or name in policy.known:
        topics.append(name)
        return Admission(True)
    if len(activity) < policy.capacity:
        topics.append(name)
        activity[name] = _bump(None, t, policy.half_life_s)
        return Admission(True)
    score = candidates.pop(name, None)
    score = _bump(score, t, policy.half_life_s)
    if score[0] >= policy.min_activity:
        now = {n: decayed(a, t, policy.half_life_s) for n, a in activity.items()}
        weaker = sorted((n for n in activity if now[n] < score[0]), key=now.__getitem__)
        weakest = next((n for n in weaker if evictable(n)), None)
        if weakest is not None:
            del activity[weakest]
            topics.remove(weakest)
            topics.append(name)
            activity[name] = score
            return Admission(True, evicted=weakest)
    candidates[name] = score  # now the most recently seen
    while len(candidates) > policy.candidates:
        candidates.popitem(last=False)
    return Admission(False)


def forget(meta: dict, name: str) -> None:
    """``name`` went idle and its state was dropped: its slot is free again."""
    meta.get("activity", {}).pop(name, None)


def unknown_tracked(meta: dict) -> int:
    return len(meta.get("activity", {}))
