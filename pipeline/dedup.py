"""Syndicated copies: text normalisation and fingerprint. Pure (the table lives in app.py)."""

from __future__ import annotations

import hashlib
import heapq
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


def fingerprint_partition(key: str, partitions: int) -> int:
    """The partition Kafka's default partitioner gives the fingerprint key (murmur2, as the
    decode stage's aiokafka producer does): where an entry written without its partition lives."""
    from aiokafka.partitioner import murmur2

    return (murmur2(key.encode("utf-8")) & 0x7FFFFFFF) % partitions


class Expiry:
    """Which de-duplication entries have outlived the horizon, or exceed the size cap, per
    partition of the table.

    Entries are noted as they are written (and, after an assignment, as the restored table is
    read once), oldest first; ``due`` hands back those older than the horizon and ``over_cap``
    the oldest beyond ``max_entries``, so the stage can delete them (a tombstone in the
    changelog). The store, and its changelog after compaction, stays bounded by what arrived
    within the horizon and by the cap, whichever is smaller."""

    def __init__(self, horizon_s: float, max_entries: int | None = None):
        self.horizon_s, self.max_entries = horizon_s, max_entries
        self._entries: dict[int, list[tuple[float, str]]] = {}  # partition -> heap of (at, fingerprint)

    def note(self, partition: int, key: str, at: float) -> None:
        heapq.heappush(self._entries.setdefault(partition, []), (at, key))

    def due(self, partition: int, now_s: float, limit: int = 1000) -> list[tuple[str, float]]:
        """Up to ``limit`` (fingerprint, written at) entries of ``partition`` past the horizon."""
        heap, out = self._entries.get(partition, []), []
        while heap and len(out) < limit and heap[0][0] < now_s - self.horizon_s:
            at, key = heapq.heappop(heap)
            out.append((key, at))
        return out

    def over_cap(self, partition: int, limit: int = 1000) -> list[tuple[str, float]]:
        """Up to ``limit`` of the oldest entries of ``partition`` beyond ``max_entries``."""
        heap, out = self._entries.get(partition, []), []
        if self.max_entries is None:
            return out
        while len(heap) > self.max_entries and len(out) < limit:
            at, key = heapq.heappop(heap)
            out.append((key, at))
        return out

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return sum(len(heap) for heap in self._entries.values())
