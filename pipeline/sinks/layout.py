"""Where each document lives in Elasticsearch, and when its index goes (pure: no client).

Every kind of document (scored, aggregates, alerts, shadow) goes to one index per UTC day,
``<prefix>-<kind>-YYYY.MM.DD``, read through the alias ``<prefix>-<kind>`` that the index
template gives each of them. Retention deletes whole days, which costs Elasticsearch nothing,
where deleting documents by query would rewrite segments.

Why days of event time and not rollover: the day comes from the document itself, so a
redelivered record goes to the index that already holds it and overwrites itself by ``_id``;
rollover writes to whichever index is current, and a record redelivered after a rollover would be
indexed twice. A time outside [now - retention, now + clock skew] is not trusted to choose an
index (a producer could otherwise create one index per day of any century): such a document goes
to the day it was processed.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta

KINDS = ("scored", "aggregates", "alerts", "shadow")
# The field that dates each kind, and the field that says when it was processed (if it has one).
EVENT_FIELD = {"scored": "published_at", "aggregates": "start", "alerts": "window_start", "shadow": "published_at"}
PROCESSED_FIELD = {"scored": "processed_at", "shadow": "processed_at"}
_DAY = re.compile(r"(\d{4})\.(\d{2})\.(\d{2})")


def alias(prefix: str, kind: str) -> str:
    return f"{prefix}-{kind}"


def pattern(prefix: str, kind: str) -> str:
    return f"{prefix}-{kind}-*"


def dated_index(prefix: str, kind: str, day: date) -> str:
    return f"{prefix}-{kind}-{day:%Y.%m.%d}"


def index_day(event: datetime, now: datetime, retention_days: int, max_skew_s: float) -> date:
    """The UTC day whose index holds a document timed ``event``, processed at ``now``."""
    ahead = event.timestamp() - now.timestamp()  # seconds: no overflow near year 1 or 9999
    if -retention_days * 86_400 <= ahead <= max_skew_s:
        return event.astimezone(UTC).date()
    return now.astimezone(UTC).date()


def _time(value) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


def route(prefix: str, kind: str, document: dict, now: datetime, retention_days: int, max_skew_s: float) -> str:
    """The index for one document (as dumped to JSON); ``now`` when it carries no processing time."""
    processed = _time(document.get(PROCESSED_FIELD.get(kind, ""))) or now
    event = _time(document.get(EVENT_FIELD[kind])) or processed
    return dated_index(prefix, kind, index_day(event, processed, retention_days, max_skew_s))


def expired(names, prefix: str, kind: str, today: date, retention_days: int) -> list[str]:
    """The dated indices of ``kind`` among ``names`` whose whole day is older than the retention;
    anything else (another prefix or kind, a name that is not a day) is never touched."""
    head = f"{prefix}-{kind}-"
    cutoff = today - timedelta(days=retention_days)
    out = []
    for name in names:
        if not name.startswith(head) or not (match := _DAY.fullmatch(name[len(head) :])):
            continue
        try:
            day = date(*(int(part) for part in match.groups()))
        except ValueError:
            continue
        if day < cutoff:
            out.append(name)
    return sorted(out)
