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
from dataclasses import dataclass
from pathlib import Path

# $ + 1-6 letters, optional .class suffix; not part of a longer word or a dollar amount.
CASHTAG = re.compile(r"(?<![\w$])\$([A-Za-z]{1,6}(?:\.[A-Za-z]{1,2})?)(?!\w|\.\w)")


class DictionaryError(ValueError):
    """The company dictionary file is unusable; the message names the file and line."""


@dataclass(frozen=True)
class CompanyDictionary:
    pattern: re.Pattern | None
    alias_to_ticker: dict[str, str]

    @classmethod
    def empty(cls) -> CompanyDictionary:
        return cls(None, {})

    @classmethod
    def from_csv(cls, path: Path | str) -> CompanyDictionary:
        path = Path(path)
        aliases: dict[str, str] = {}
        try:
            with open(path, encoding="utf-8", newline="") as handle:
                reader = csv.DictReader(handle)
                if not reader.fieldnames or not {"ticker", "name"} <= set(reader.fieldnames):
                    raise DictionaryError(f"{path}:1: needs the columns 'ticker' and 'name'")
                for row in reader:
                    ticker, name = (row["ticker"] or "").strip().upper(), (row["name"] or "").strip()
                    if not ticker or not name:
                        raise DictionaryError(f"{path}:{reader.line_num}: empty ticker or name")
                    aliases[name.lower()] = ticker
        except OSError as exc:
            raise DictionaryError(f"{path}: {exc.strerror}") from None
        if not aliases:
            return cls.empty()
        # Longest names first so "Bank of America" wins over "America".
        names = sorted(aliases, key=len, reverse=True)
        pattern = re.compile(r"(?<!\w)(" + "|".join(re.escape(n) for n in names) + r")(?!\w)", re.IGNORECASE)
        return cls(pattern, aliases)

    def tickers_in(self, text: str) -> list[str]:
        return [ticker for ticker, _span in self.mentions_in(text)]

    def mentions_in(self, text: str) -> list[tuple[str, tuple[int, int]]]:
        """(ticker, (start, end)) of every name in ``text``. A lower-case word is no company
        ("target", "apple pie") unless the whole text is lower case."""
        if self.pattern is None:
            return []
        lower_text = text == text.lower()
        return [
            (self.alias_to_ticker[m.group(1).lower()], m.span(1))
            for m in self.pattern.finditer(text)
            if lower_text or not m.group(1)[0].islower()
        ]


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
