"""Labelled financial text: loaders, one label space, de-duplication, deterministic splits.

Formats (detected from the file, or forced with ``fmt``):
- ``phrasebank``: Financial PhraseBank ``Sentences_*Agree.txt`` — ``sentence@label``, latin-1.
- ``twitter``: Twitter Financial News sentiment CSV — ``text,label`` with 0 bearish, 1 bullish,
  2 neutral.
- ``csv`` / ``jsonl``: any table with a text and a label column (names given by ``text_column``
  and ``label_column``), labels named negative/neutral/positive or bearish/bullish.
"""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.bundle import sha256_of
from pipeline.schemas import LABEL_ALIASES, LABELS, TOPICS, TWITTER_LABELS

LABEL_TO_ID = {label: i for i, label in enumerate(LABELS)}


class BadDataError(ValueError):
    """A labelled file could not be read; the message names the file and line."""


@dataclass(frozen=True)
class Example:
    text: str
    label: str
    source: str  # file name
    line: int


@dataclass
class Dataset:
    examples: list[Example]
    files: dict[str, str]  # path -> sha256
    bad_rows: Counter = field(default_factory=Counter)  # reason -> count (with skip_bad_rows)
    duplicates_removed: int = 0
    conflicting_removed: int = 0

    @property
    def texts(self) -> list[str]:
        return [e.text for e in self.examples]

    @property
    def label_ids(self) -> list[int]:
        return [LABEL_TO_ID[e.label] for e in self.examples]


def detect_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return "phrasebank"
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".csv":
        with open(path, encoding="utf-8", errors="replace", newline="") as handle:
            header = next(csv.reader(handle), [])
            first = next(csv.reader(handle), None)
        if [h.strip().lower() for h in header] == ["text", "label"] and first and first[-1].strip() in TWITTER_LABELS:
            return "twitter"
        return "csv"
    raise BadDataError(f"{path}: unknown file type {suffix!r}; expected .txt (Financial PhraseBank), .csv or .jsonl")


def _normalise_label(raw: object, where: str, twitter: bool = False) -> str:
    key = str(raw).strip().lower()
    label = TWITTER_LABELS.get(key) if twitter else LABEL_ALIASES.get(key)
    if label is None:
        expected = "0, 1 or 2" if twitter else "negative/neutral/positive (or bearish/bullish)"
        raise BadDataError(f"{where}: unknown label {raw!r}; expected {expected}")
    return label


def _rows(path: Path, fmt: str, text_column: str, label_column: str):
    """Yields (line number, text, raw label) or raises BadDataError for the row."""
    if fmt == "phrasebank":
        with open(path, "rb") as handle:
            for number, raw in enumerate(handle, start=1):
                try:
                    line = raw.decode("latin-1").rstrip("\r\n")
                except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
                    yield number, BadDataError(f"{path}:{number}: undecodable line"), None
                    continue
                if not line.strip():
                    continue
                text, sep, label = line.rpartition("@")
                if not sep:
                    yield number, BadDataError(f"{path}:{number}: no '@label' at the end of the line"), None
                    continue
                yield number, text.strip(), label
    elif fmt in ("twitter", "csv"):
        try:
            handle = open(path, encoding="utf-8", newline="")
            reader = csv.DictReader(handle)
            header = reader.fieldnames or []
        except UnicodeDecodeError as exc:
            raise BadDataError(f"{path}:1: not UTF-8 ({exc.reason})") from None
        with handle:
            columns = (text_column, label_column) if fmt == "csv" else ("text", "label")
            for column in columns:
                if column not in header:
                    raise BadDataError(f"{path}:1: missing column {column!r} (header: {', '.join(header)})")
            number = 1
            try:
                for row in reader:
                    number = reader.line_num
                    yield number, row[columns[0]], row[columns[1]]
            except UnicodeDecodeError as exc:
                raise BadDataError(f"{path}:{number + 1}: not UTF-8 ({exc.reason})") from None
    elif fmt == "jsonl":
        with open(path, "rb") as handle:
            for number, raw in enumerate(handle, start=1):
                if not raw.strip():
                    continue
                try:
                    record = json.loads(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    yield number, BadDataError(f"{path}:{number}: not UTF-8"), None
                    continue
                except json.JSONDecodeError as exc:
                    yield number, BadDataError(f"{path}:{number}: invalid JSON ({exc.msg})"), None
                    continue
                if not isinstance(record, dict) or text_column not in record or label_column not in record:
                    yield (
                        number,
                        BadDataError(f"{path}:{number}: needs fields {text_column!r} and {label_column!r}"),
                        None,
                    )
                    continue
                yield number, record[text_column], record[label_column]
    else:
        raise BadDataError(f"{path}: unknown format {fmt!r}")


def load_file(
    path: Path | str,
    *,
    fmt: str | None = None,
    text_column: str = "text",
    label_column: str = "label",
    skip_bad_rows: bool = False,
    bad_rows: Counter | None = None,
) -> list[Example]:
    path = Path(path)
    if not path.is_file():
        raise BadDataError(f"{path}: no such file")
    fmt = fmt or detect_format(path)
    bad_rows = bad_rows if bad_rows is not None else Counter()
    examples = []
    for number, text, raw_label in _rows(path, fmt, text_column, label_column):
        try:
            if isinstance(text, BadDataError):
                raise text
            if not isinstance(text, str) or not text.strip():
                raise BadDataError(f"{path}:{number}: empty text")
            label = _normalise_label(raw_label, f"{path}:{number}", twitter=fmt == "twitter")
        except BadDataError as exc:
            if not skip_bad_rows:
                raise
            reason = str(exc).split(": ", 1)[1].split(" (")[0].split(";")[0]
            bad_rows[reason] += 1
            continue
        examples.append(Example(text.strip(), label, path.name, number))
    if not examples:
        raise BadDataError(f"{path}: no usable rows")
    return examples


def load_datasets(paths: list[Path | str], **kwargs) -> Dataset:
    """Loads and combines files, then removes exact duplicate texts (all copies when labels disagree)."""
    bad_rows: Counter = Counter()
    examples: list[Example] = []
    files = {}
    for path in paths:
        examples += load_file(path, bad_rows=bad_rows, **kwargs)
        files[str(path)] = sha256_of(Path(path))
    labels_by_text: dict[str, set[str]] = {}
    for example in examples:
        labels_by_text.setdefault(example.text, set()).add(example.label)
    kept, seen = [], set()
    duplicates = conflicting = 0
    for example in examples:
        if len(labels_by_text[example.text]) > 1:
            conflicting += 1
            continue
        if example.text in seen:
            duplicates += 1
            continue
        seen.add(example.text)
        kept.append(example)
    return Dataset(kept, files, bad_rows, duplicates, conflicting)


# Financial PhraseBank's release files, strictest first (each is a subset of the next): a
# sentence's share of agreeing annotators is given by the strictest file that holds it.
PHRASEBANK_AGREEMENT = (("AllAgree", "100 %"), ("75Agree", "75-99 %"), ("66Agree", "66-74 %"), ("50Agree", "50-65 %"))


def phrasebank_agreement(path: Path | str) -> dict[str, str]:
    """Each sentence of a Financial PhraseBank ``Sentences_*Agree.txt`` file mapped to the share
    of annotators who agreed on its label (``"100 %"``, ``"75-99 %"``, ...), read from the
    release's stricter sibling files; empty for any other file or when a sibling is missing."""
    path = Path(path)
    names = [name for name, _ in PHRASEBANK_AGREEMENT]
    match = re.fullmatch(r"Sentences_(\w+)\.txt", path.name)
    if not match or match.group(1) not in names:
        return {}
    levels: dict[str, str] = {}
    for name, level in PHRASEBANK_AGREEMENT[: names.index(match.group(1)) + 1]:
        sibling = path.with_name(f"Sentences_{name}.txt")
        if not sibling.is_file():
            return {}
        for example in load_file(sibling, fmt="phrasebank", skip_bad_rows=True):
            levels.setdefault(example.text, level)
    return levels


@dataclass
class Split:
    train: list[Example]
    dev: list[Example]
    test: list[Example]
    seed: int

    def part(self, name: str) -> list[Example]:
        if name == "all":
            return self.train + self.dev + self.test
        return {"train": self.train, "dev": self.dev, "test": self.test}[name]


def split(dataset: Dataset, seed: int = 0, test_size: float = 0.2, dev_size: float = 0.1) -> Split:
    """Train/dev/test stratified by source file and label: ``test_size`` of all, then ``dev_size``
    of the rest (the Financial PhraseBank convention: 20 % test, 10 % of the remainder for dev).
    Each source keeps its share and label mix in every part, so per-source test figures hold."""
    from sklearn.model_selection import train_test_split

    def strata(part: list[Example]) -> list[str]:
        return [f"{e.source}|{e.label}" for e in part]

    examples = dataset.examples
    rest, test = train_test_split(examples, test_size=test_size, random_state=seed, stratify=strata(examples))
    train, dev = train_test_split(rest, test_size=dev_size, random_state=seed, stratify=strata(rest))
    return Split(train, dev, test, seed)


# --- The topic and entity heads' data -------------------------------------------------------

TOPIC_IDS = {str(i): topic for i, topic in enumerate(TOPICS)}
_TOPIC_BY_NAME = {topic.lower(): topic for topic in TOPICS}
# SEntFiN's published Decisions had "Hold"/"sell"/"buy" replaced by label names inside a few
# entity names ("IIFL neutralings" for "IIFL Holdings"); undone when the name is not in the title.
_SENTFIN_REPAIRS = (("neutral", "Hold"), ("negative", "sell"), ("positive", "buy"))
_QUOTED = re.compile(r" ('[^']*'|\"[^\"]*\"|\{.*\})")
_SENTFIN_DECISION = re.compile(r"'([^:]+?)': '(positive|negative|neutral)'")


@dataclass(frozen=True)
class TopicExample:
    text: str
    topic: str  # one of TOPICS
    source: str
    line: int


@dataclass(frozen=True)
class EntityExample:
    """One entity's sentiment in one text, the entity found at ``text[start:end]``."""

    text: str
    entity: str
    label: str
    start: int
    end: int
    source: str
    line: int


def load_topic_file(path: Path | str, *, skip_bad_rows: bool = False, bad_rows: Counter | None = None):
    """A ``text,label`` CSV whose labels are the topic ids 0-19 (the Twitter Financial News topic
    files) or topic names."""
    path = Path(path)
    if not path.is_file():
        raise BadDataError(f"{path}: no such file")
    bad_rows = bad_rows if bad_rows is not None else Counter()
    examples = []
    for number, text, raw in _rows(path, "csv", "text", "label"):
        key = str(raw).strip()
        topic = TOPIC_IDS.get(key) or _TOPIC_BY_NAME.get(key.lower())
        problem = "empty text" if not str(text).strip() else None if topic else f"unknown topic {raw!r}"
        if problem:
            if not skip_bad_rows:
                raise BadDataError(f"{path}:{number}: {problem}; expected a topic id 0-19 or one of {list(TOPICS)}")
            bad_rows[problem.split(" '")[0]] += 1
            continue
        examples.append(TopicExample(text.strip(), topic, path.name, number))
    if not examples:
        raise BadDataError(f"{path}: no usable rows")
    return examples


def find_entity(text: str, entity: str) -> tuple[int, int] | None:
    """The first case-insensitive occurrence of ``entity`` in ``text`` as (start, end)."""
    at = text.lower().find(entity.lower())
    return (at, at + len(entity)) if at >= 0 and entity.strip() else None


def load_entity_file(path: Path | str, *, skip_bad_rows: bool = False, bad_rows: Counter | None = None):
    """Entity-level labels: SEntFiN's CSV (``Title`` and a ``Decisions`` dict of entity -> label)
    or a ``text,entity,label`` CSV; every entity must occur in its text."""
    path = Path(path)
    if not path.is_file():
        raise BadDataError(f"{path}: no such file")
    with open(path, encoding="utf-8", errors="replace", newline="") as handle:
        header = next(csv.reader(handle), [])
    sentfin = "Decisions" in header and "Title" in header
    bad_rows = bad_rows if bad_rows is not None else Counter()
    examples: list[EntityExample] = []

    def rows():
        if sentfin:
            for number, title, decisions in _rows(path, "csv", "Title", "Decisions"):
                pairs = _SENTFIN_DECISION.findall(decisions or "")
                if not pairs:
                    yield number, title, BadDataError(f"{path}:{number}: no entity labels in {decisions!r}"), None
                for entity, label in pairs:
                    if find_entity(title, entity) is None:
                        for wrong, right in _SENTFIN_REPAIRS:
                            entity = entity.replace(wrong, right)
                    yield number, title, entity, label
        else:
            with open(path, encoding="utf-8", newline="") as handle:
                reader = csv.DictReader(handle)
                missing = {"text", "entity", "label"} - set(reader.fieldnames or [])
                if missing:
                    raise BadDataError(f"{path}:1: missing column(s) {sorted(missing)} (needs text,entity,label)")
                for row in reader:
                    yield reader.line_num, row["text"], row["entity"], row["label"]

    for number, text, entity, raw in rows():
        try:
            if isinstance(entity, BadDataError):
                raise entity
            if not isinstance(text, str) or not text.strip():
                raise BadDataError(f"{path}:{number}: empty text")
            label = _normalise_label(raw, f"{path}:{number}")
            span = find_entity(text.strip(), entity or "")
            if span is None:
                raise BadDataError(f"{path}:{number}: entity {entity!r} does not occur in the text")
        except BadDataError as exc:
            if not skip_bad_rows:
                raise
            # The reason without the row's own values (quoted names, the Decisions dict).
            bad_rows[_QUOTED.sub("", str(exc).split(": ", 1)[1])] += 1
            continue
        examples.append(EntityExample(text.strip(), entity, label, *span, path.name, number))
    if not examples:
        raise BadDataError(f"{path}: no usable rows")
    return examples


_LINK = re.compile(r"https?://\S+")


def near_copy_key(text: str) -> str:
    """Texts that differ only in links, case and spacing (re-posted headlines) share a key."""
    return " ".join(_LINK.sub("", text).lower().split())


def group_split(items: list, key, seed: int = 0, test_size: float = 0.2, dev_size: float = 0.1) -> Split:
    """Train/dev/test by group (``key(item)``): every item of a group lands on one side, so a
    headline with several entities, or a re-posted tweet, is never on two."""
    import numpy as np

    groups: dict[str, list] = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    names = sorted(groups)
    np.random.default_rng(seed).shuffle(names)
    n_test = round(len(names) * test_size)
    n_dev = round((len(names) - n_test) * dev_size)
    parts = [names[:n_test], names[n_test : n_test + n_dev], names[n_test + n_dev :]]
    test, dev, train = ([item for name in part for item in groups[name]] for part in parts)
    return Split(train, dev, test, seed)


@dataclass
class HeadSplits:
    """The topic and entity heads' train/dev/test splits (None for a single-head recipe)."""

    topics: Split | None
    entities: Split | None
    files: dict[str, dict[str, str]]  # "topic"/"entity" -> path -> sha256
    bad_rows: Counter = field(default_factory=Counter)


def load_head_splits(
    topic_files: list[str], entity_files: list[str], seed: int = 0, skip_bad_rows: bool = False
) -> HeadSplits:
    """Topic files split by near-copy group, entity files by headline (SEntFiN names a headline's
    entities on one row), both with ``seed``; the same call at export and evaluation gives the same
    parts as at training."""
    bad_rows: Counter = Counter()
    topics = [t for f in topic_files for t in load_topic_file(f, skip_bad_rows=skip_bad_rows, bad_rows=bad_rows)]
    entities = [e for f in entity_files for e in load_entity_file(f, skip_bad_rows=skip_bad_rows, bad_rows=bad_rows)]
    return HeadSplits(
        group_split(topics, lambda t: near_copy_key(t.text), seed) if topics else None,
        group_split(entities, lambda e: e.text, seed) if entities else None,
        {
            "topic": {f: sha256_of(Path(f)) for f in topic_files},
            "entity": {f: sha256_of(Path(f)) for f in entity_files},
        },
        bad_rows,
    )


def by_text(entities: list[EntityExample]) -> dict[str, list[EntityExample]]:
    """Entity examples grouped by their text, in first-seen order (one model pass per text)."""
    grouped: dict[str, list[EntityExample]] = {}
    for example in entities:
        grouped.setdefault(example.text, []).append(example)
    return grouped


def head_eval_set(heads: HeadSplits, part: str, limit: int | None = None):
    """(texts, spans, topic ids, entity label ids) of a part of the heads' splits: the topic texts
    first (no spans), then each entity text once with its mentions (one model pass per text)."""
    topics = heads.topics.part(part) if heads.topics else []
    grouped = by_text(heads.entities.part(part)) if heads.entities else {}
    if limit:
        topics, grouped = topics[:limit], dict(list(grouped.items())[:limit])
    texts = [t.text for t in topics] + list(grouped)
    spans = [[] for _ in topics] + [[(m.start, m.end) for m in ms] for ms in grouped.values()]
    topic_ids = [TOPICS.index(t.topic) for t in topics]
    entity_ids = [LABEL_TO_ID[m.label] for ms in grouped.values() for m in ms]
    return texts, spans, topic_ids, entity_ids
