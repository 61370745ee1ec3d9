"""The default company dictionary (``data/companies/dictionary.csv``, ``ticker,name``): S&P 500
names with the short forms headlines use, hand-kept aliases (Alphabet is "Google" in headlines),
and SEntFiN's entity list (Indian listings by NSE/BSE symbol). ``finsent companies build``
remakes it from the two source files; a unit test checks the committed file is what it makes.
"""

from __future__ import annotations

import csv
import io
import re
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
_TOO_COMMON = {
    "Southern",
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


def _keep(alias: str) -> bool:
    return len(alias) >= 3 and alias not in _TOO_COMMON and not alias.islower()


def build(sp500_csv: Path | str, sentfin_entities_csv: Path | str) -> list[tuple[str, str]]:
    """(ticker, name) rows, one per alias, the first ticker of an alias kept."""
    rows: dict[str, str] = {}  # alias (lower) -> ticker

    def add(ticker: str, alias: str) -> None:
        alias = " ".join(alias.split())
        if _keep(alias):
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
            if not symbol or symbol[0].isdigit() or "stocks" in row["Entity"].lower():
                continue  # SEntFiN also lists sectors ("four-wheeler stocks") under made-up symbols
            for alias in row["Entity"].split(","):
                add(symbol, alias.strip())
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
