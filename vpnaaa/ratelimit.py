"""One log line per interval for events a peer can trigger at will.

A flood of dropped requests must not become a flood of log lines: the first event of a
kind is logged, the rest within ``interval`` seconds are counted, and the next line that
is let through says how many were left out.
"""

from __future__ import annotations

from collections.abc import Hashable

from twisted.internet.interfaces import IReactorTime


class LogLimiter:
    """Decides which events of a kind get a log line; sans-IO apart from reading ``clock``."""

    def __init__(self, clock: IReactorTime, interval: float = 10.0, kinds: int = 1024) -> None:
        self.clock = clock
        self.interval = interval
        self.kinds = kinds
        self._last: dict[Hashable, tuple[float, int]] = {}

    def allow(self, kind: Hashable) -> int | None:
        """None to stay silent; otherwise log, mentioning the returned count of events of
        this kind that were not logged since the previous line."""
        now = self.clock.seconds()
        last = self._last.get(kind)
        if last is not None and now - last[0] < self.interval:
            self._last[kind] = (last[0], last[1] + 1)
            return None
        if last is None and len(self._last) >= self.kinds:
            self._last.clear()
        self._last[kind] = (now, 0)
        return last[1] if last is not None else 0
