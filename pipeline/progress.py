"""Progress of long work (training, replay): a live bar on a terminal, a plain line every
``interval_s`` seconds otherwise, so logs and CI output get a few readable lines instead of
thousands of carriage-return frames."""

from __future__ import annotations

import sys
import time
from typing import IO, Any


class Progress:
    """``with Progress(total, "epoch 1/2", unit="batch") as bar: ... bar.update(); bar.set_postfix(loss=...)``"""

    def __init__(
        self,
        total: int | None,
        desc: str,
        unit: str = "it",
        stream: IO[str] | None = None,
        interval_s: float = 30.0,
        enabled: bool = True,
    ):
        self.total, self.desc, self.unit, self.interval_s = total, desc, unit, interval_s
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.n = 0
        self._postfix: dict[str, Any] = {}
        self._started = self._last_line = time.monotonic()
        self._bar = None
        if enabled and _is_terminal(self.stream):
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, file=self.stream, dynamic_ncols=True)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.enabled and time.monotonic() - self._last_line >= self.interval_s:
            self._line()

    def set_postfix(self, **values: Any) -> None:
        self._postfix = values
        if self._bar is not None:
            self._bar.set_postfix(values, refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.enabled:
            self._line(done=True)
        self.enabled = False

    def line(self) -> str:
        """The plain progress line: ``desc: n/total (pct), rate unit/s, elapsed, key=value``."""
        elapsed = max(time.monotonic() - self._started, 1e-9)
        count = f"{self.n:,}/{self.total:,} ({self.n / self.total:.0%})" if self.total else f"{self.n:,}"
        parts = [f"{self.desc}: {count} {self.unit}", f"{self.n / elapsed:,.1f} {self.unit}/s", f"{elapsed:,.0f} s"]
        parts += [f"{key}={value}" for key, value in self._postfix.items()]
        return ", ".join(parts)

    def _line(self, done: bool = False) -> None:
        self._last_line = time.monotonic()
        print(self.line() + (" - done" if done else ""), file=self.stream, flush=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
