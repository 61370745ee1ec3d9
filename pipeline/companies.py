"""The default company dictionary (``data/companies/dictionary.csv``, ``ticker,name``): S&P 500
names with the short forms headlines use, hand-kept aliases (Alphabet is "Google" in headlines),
and SEntFiN's entity list (Indian listings by NSE/BSE symbol). ``finsent companies build``
remakes it from the two source files; a unit test checks the committed file is what it makes.
"""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from pathlib import Path

# Aliases headlines use that no constituent name contains.
HEADLINE_ALIASES = {
    "GOOGL": ["Google", "Alphabet"],
    "META": ["Facebook", "Meta Platforms", "Meta"],
    "BRK.B": ["Berkshire Hathaway", "Berkshire"],
    "JPM": ["JPMorgan", "JP Morgan", "J.P. Morgan"],
    "GS": ["Goldman Sachs", "Goldman"],
    "MS": ["Morgan Stanley"],
    "BAC": ["Bank of America", "BofA"],
    "WFC": ["Wells Fargo"],
    "C": ["Citigroup", "Citi"],
    "KO": ["Coca-Cola", "Coke"],
    "TSLA": ["Tesla"],
    "NVDA": ["Nvidia"],
    "AMD": ["AMD"],
    "IBM": ["IBM"],
    "HPQ": ["HP Inc", "Hewlett-Packard"],
    "XOM": ["Exxon", "ExxonMobil"],
    "CVX": ["Chevron"],
    "DIS": ["Disney"],
    "WMT": ["Walmart", "Wal-Mart"],
    "MCD": ["McDonald's", "McDonalds"],
    "PG": ["Procter & Gamble", "P&G"],
    "JNJ": ["J&J"],
    "UNH": ["UnitedHealth"],
    "GE": ["GE Aerospace", "General Electric"],
    "F": ["Ford"],
    "GM": ["General Motors", "GM"],
    "T": ["AT&T"],
    "VZ": ["Verizon"],
    "NFLX": ["Netflix"],
    "AMZN": ["Amazon"],
    "MSFT": ["Microsoft"],
    "AAPL": ["Apple"],
}
_SUFFIXES = re.compile(
    r"(,?\s+(Inc\.?|Incorporated|Corporation|Corp\.?|Company|Co\.|Ltd\.?|plc|PLC|Holdings|Group|N\.V\.|"
    r"S\.A\.|Limited|\(Class [A-Z]\)|\(The\))\s*)+$"
)
# Short names that are ordinary words at the start of a sentence.
# An alias the corpus writes in lower case this often is an ordinary word ("news", "equity").
COMMON_WORD_COUNT = 3
_TOO_COMMON = {
    "Southern",
    "Dow",
    "Nasdaq",
    "NASDAQ",
    "Ball",
    "Global",
    "General",
    "American",
    "United",
    "First",
    "Public",
    "Target",
    "Auto",
    "Fuel",
    "Bank",
    "Gold",
    "Power",
    "Energy",
    "Steel",
    "Oil",
    "Metals",
    "Cement",
    "Sugar",
    "Tea",
}
# The classes of a company share one name; the first listed keeps it.
_CLASS_OF = {"GOOG": "GOOGL", "FOXA": "FOX", "NWSA": "NWS", "BF.B": "BF.B"}


def short_name(name: str) -> str:
    """ "Apple Inc." -> "Apple", "Alphabet Inc. (Class A)" -> "Alphabet", "The Walt Disney Company"
    -> "Walt Disney"."""
    return _SUFFIXES.sub("", name.removeprefix("The ")).strip(" ,")


def lower_case_counts(corpus: list[str]) -> Counter:
    """How often each word, and each run of up to three words, is written in lower case."""
    counts: Counter = Counter()
    for text in corpus:
        words = re.findall(r"[a-z][\w&'.\-]*", text)
        for n in (1, 2, 3):
            counts.update(" ".join(words[i : i + n]) for i in range(len(words) - n + 1))
    return counts


def build(sp500_csv: Path | str, sentfin_entities_csv: Path | str, corpus: list[str] = ()) -> list[tuple[str, str]]:
    """(ticker, name) rows, one per alias, the first ticker of an alias kept; ``corpus`` (finance
    text) tells ordinary words from names."""
    rows: dict[str, str] = {}  # alias -> ticker
    common = lower_case_counts(list(corpus))

    def add(ticker: str, alias: str) -> None:
        alias = " ".join(alias.split())
        if len(alias) < 3 or alias in _TOO_COMMON or alias.islower() or alias.isupper() and len(alias) < 3:
            return
        if not alias.isupper() and common[alias.lower()] >= COMMON_WORD_COUNT:
            return
        rows.setdefault(alias, ticker)

    with open(sp500_csv, encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            ticker = row["Symbol"].strip().upper()
            if ticker in _CLASS_OF:
                continue
            for alias in HEADLINE_ALIASES.get(ticker, []):
                add(ticker, alias)
            add(ticker, row["Security"].replace(" (Class A)", "").replace(" (Class B)", ""))
            add(ticker, short_name(row["Security"]))
    with open(sentfin_entities_csv, encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            symbol = row["Symbol"].strip().upper()
            entity = row["Entity"].lower()
            sector = symbol.endswith("SPACE") or symbol.endswith("SEC") and " ltd" not in entity
            if not symbol or symbol[0].isdigit() or "stocks" in entity or sector:
                continue  # SEntFiN also lists sectors ("four-wheeler stocks") under made-up symbols
            for alias in row["Entity"].split(","):
                add(symbol, alias.strip())
                add(symbol, short_name(alias.strip()))
    seen: set[str] = set()
    out = []
    for alias, ticker in rows.items():
        if alias.lower() not in seen:
            seen.add(alias.lower())
            out.append((ticker, alias))
    return out


def to_csv(rows: list[tuple[str, str]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["ticker", "name"])
    writer.writerows(rows)
    return buffer.getvalue()


def corpus_texts(data_dir: Path) -> list[str]:
    """The repository's finance text (Financial PhraseBank, both Twitter Financial News files)."""
    texts = [
        line.rsplit("@", 1)[0]
        for line in (data_dir / "financial_phrasebank" / "Sentences_50Agree.txt").read_text("latin-1").splitlines()
    ]
    for name in ("twitter_financial_news_sentiment/sent_train.csv", "twitter_financial_news_topic/topic_train.csv"):
        with open(data_dir / name, encoding="utf-8", newline="") as handle:
            texts += [row["text"] for row in csv.DictReader(handle)]
    return texts
