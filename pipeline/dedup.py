"""Syndicated copies: text normalisation and fingerprint. Pure (the table lives in app.py)."""

from __future__ import annotations

import hashlib
import html
import re

URL = re.compile(r"https?://\S+")
NON_WORD = re.compile(r"[^\w$%.]+")


def normalise(text: str) -> str:
    """Lower case, no URLs, HTML entities decoded, punctuation and whitespace collapsed: the
    same headline posted by two outlets (or twice with different t.co links) normalises alike."""
    text = html.unescape(URL.sub(" ", text)).lower()
    return " ".join(NON_WORD.sub(" ", text).split())


def fingerprint(text: str) -> str:
    return hashlib.blake2b(normalise(text).encode("utf-8"), digest_size=16).hexdigest()
