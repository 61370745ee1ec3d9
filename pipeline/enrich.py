"""Tickers and topics for a message, and where in its text each ticker is named. Pure.

Explicit ``tickers``/``topics`` fields come first, then cashtags in the text (``$AAPL``,
``$BRK.B``), then an optional dictionary of company names and aliases (CSV ``ticker,name``,
one alias per row). The first ticker (or else topic) is the record's Kafka key.

``link_entities`` finds each ticker's first mention as a character span (a cashtag, a dictionary
name, or an explicit ticker written in the text); an explicit ticker the text never names gets a
mention without a span, and takes the message's sentiment.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

# $ + 1-6 letters, optional .class suffix; not part of a longer word or a dollar amount.
CASHTAG = re.compile(r"(?<![\w$])\$([A-Za-z]{1,6}(?:\.[A-Za-z]{1,2})?)(?!\w|\.\w)")


class DictionaryError(ValueError):
    """The company dictionary file is unusable; the message names the file and line."""


# A word of a company name: starts with a letter or digit, may hold & ' . - inside ("AT&T",
# "J.P", "McDonald's", "Coca-Cola"); "&" alone and other punctuation separate words.
_WORD = re.compile(r"[^\W_](?:[\w&'.\-]*[^\W_]|[\w&'.\-]*&)?")


def _words(text: str) -> list[re.Match]:
    return list(_WORD.finditer(text))


def _key(words) -> str:
    return " ".join(w.lower() for w in words)


@dataclass(frozen=True)
class CompanyDictionary:
    """Company names and aliases -> ticker. Looked up by runs of words (a dictionary lookup per
    word and run length, not one regex of thousands of alternatives): longest run first, so
    "Bank of America" wins over "America". An all-capitals alias ("IBM", "BANK") matches only
    as written in capitals; any other matches in any case but not as a lower-case word ("apple
    pie", "target price"), unless the whole text is lower case."""

    alias_to_ticker: dict[str, str]  # word key ("j.p morgan") -> ticker
    capitals: frozenset[str] = frozenset()  # keys of all-capitals aliases
    starts: dict[str, int] = field(default_factory=dict)  # an alias's first word -> most words after it

    @classmethod
    def empty(cls) -> CompanyDictionary:
        return cls({})

    @classmethod
    def from_csv(cls, path: Path | str) -> CompanyDictionary:
        path = Path(path)
        aliases: dict[str, str] = {}
        capitals: set[str] = set()
        other_case: set[str] = set()  # a key also listed in lower or mixed case matches any case
        starts: dict[str, int] = {}
        try:
            with open(path, encoding="utf-8", newline="") as handle:
                reader = csv.DictReader(handle)
                if not reader.fieldnames or not {"ticker", "name"} <= set(reader.fieldnames):
                    raise DictionaryError(f"{path}:1: needs the columns 'ticker' and 'name'")
                for row in reader:
                    ticker, name = (row["ticker"] or "").strip().upper(), (row["name"] or "").strip()
                    words = [m.group() for m in _words(name)]
                    if not ticker or not words:
                        raise DictionaryError(f"{path}:{reader.line_num}: empty ticker or name")
                    key = _key(words)
                    aliases.setdefault(key, ticker)
                    (capitals if name.isupper() else other_case).add(key)
                    first = words[0].lower()
                    starts[first] = max(starts.get(first, 0), len(words))
        except OSError as exc:
            raise DictionaryError(f"{path}: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            raise DictionaryError(f"{path}: not UTF-8 ({exc.reason})") from None
        return cls(aliases, frozenset(capitals - other_case), starts)

    def tickers_in(self, text: str) -> list[str]:
        return [ticker for ticker, _span in self.mentions_in(text)]

    def mentions_in(self, text: str) -> list[tuple[str, tuple[int, int]]]:
        """(ticker, (start, end)) of every name in ``text``, left to right."""
        if not self.alias_to_ticker:
            return []
        words = _words(text)
        lower_text = text == text.lower()
        found, i = [], 0
        while i < len(words):
            for n in range(min(self.starts.get(words[i].group().lower(), 0), len(words) - i), 0, -1):
                run = words[i : i + n]
                key = _key(m.group() for m in run)
                ticker = self.alias_to_ticker.get(key)
                if ticker is None:
                    continue
                written = text[run[0].start() : run[-1].end()]
                if key in self.capitals and not written.isupper():
                    continue
                if written[0].islower() and not lower_text:
                    continue
                found.append((ticker, (run[0].start(), run[-1].end())))
                i += n - 1
                break
            i += 1
        return found


def read_names(path: Path | str) -> set[str]:
    """Ticker symbols from a CSV with a ``ticker`` or ``Symbol`` column, or a file of one name a
    line (``#`` comments allowed); upper-cased like the names the worker windows by."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            first = handle.readline()
            handle.seek(0)
            header = next(csv.reader([first]), [])
            column = next((c for c in header if c.strip().lower() in ("ticker", "symbol")), None)
            if column is not None:
                rows = csv.DictReader(handle)
                names = {(row[column] or "").strip().upper() for row in rows}
            else:
                names = {line.split("#", 1)[0].strip().upper() for line in handle}
    except OSError as exc:
        raise DictionaryError(f"{path}: {exc.strerror}") from None
    except (csv.Error, UnicodeDecodeError) as exc:
        raise DictionaryError(f"{path}: not a CSV or text file of names ({exc})") from None
    names.discard("")
    if not names:
        raise DictionaryError(f"{path}: no names (a `ticker` or `Symbol` column, or one name a line)")
    return names


def cashtags(text: str) -> list[str]:
    return [m.group(1).upper() for m in CASHTAG.finditer(text)]


@dataclass(frozen=True)
class Mention:
    """A ticker as the text names it: ``span`` is None for an explicit ticker the text never names."""

    ticker: str
    span: tuple[int, int] | None
    source: str  # "cashtag", "dictionary", "text" (an explicit ticker written out) or "field"

    def mention(self, text: str) -> str | None:
        return text[self.span[0] : self.span[1]] if self.span else None


def link_entities(text: str, tickers: list[str], dictionary: CompanyDictionary, max_items: int = 16) -> list[Mention]:
    """One mention per ticker, in ``enrich``'s order (explicit, cashtags, dictionary), each at its
    first place in the text."""
    found: dict[str, Mention] = {}
    for m in CASHTAG.finditer(text):
        found.setdefault(m.group(1).upper(), Mention(m.group(1).upper(), m.span(0), "cashtag"))
    for ticker, span in dictionary.mentions_in(text):
        found.setdefault(ticker, Mention(ticker, span, "dictionary"))
    explicit = _unique([t.upper() for t in tickers])
    for ticker in explicit:
        if ticker not in found:
            written = re.search(rf"(?<![\w$]){re.escape(ticker)}(?!\w)", text)
            found[ticker] = Mention(ticker, written.span() if written else None, "text" if written else "field")
    order = _unique(explicit + list(found))
    return [found[t] for t in order][:max_items]


def _unique(values) -> list[str]:
    return list(dict.fromkeys(values))


def enrich(
    text: str, tickers: list[str], topics: list[str], dictionary: CompanyDictionary, max_items: int = 16
) -> tuple[list[str], list[str]]:
    """(tickers, topics): explicit values first, de-duplicated, at most ``max_items`` each."""
    return [m.ticker for m in link_entities(text, tickers, dictionary, max_items)], _unique(topics)[:max_items]


def routing_key(tickers: list[str], topics: list[str], source: str | None) -> str:
    if tickers:
        return tickers[0]
    if topics:
        return topics[0]
    return source or "unknown"
