"""Logging: twisted.logger with one process-wide level filter.

Modules take a logger from :func:`get`; the daemon sets the level from ``general.log_level``.
Hot paths check :func:`debug_enabled` before building debug events, so a filtered line
costs nothing.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable

from twisted.logger import (
    FilteringLogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
)

_LEVELS = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "error": LogLevel.error,
}

_predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
_observer = FilteringLogObserver(globalLogPublisher, [_predicate])
_state = {"debug": False}


def get(namespace: str) -> Logger:
    """A logger whose events pass the configured level filter."""
    return Logger(namespace=namespace, observer=_observer)


def set_level(name: str) -> None:
    level = _LEVELS[name]
    _predicate.setLogLevelForNamespace("", level)
    _state["debug"] = level is LogLevel.debug


def debug_enabled() -> bool:
    return _state["debug"]


class Throttle:
    """One log line per kind of event per ``interval`` seconds, for what unauthenticated
    peers can trigger at will (drops, refusals): a flood costs one line per kind per
    interval, and that line says how many like it were left out since the last one.

    ``clock`` returns seconds (the reactor's ``seconds``). At most ``kinds`` kinds are
    remembered; the least recently logged is forgotten first, so the table is bounded
    whatever the peers choose as reasons.
    """

    def __init__(
        self, logger: Logger, clock: Callable[[], float], interval: float = 10.0, kinds: int = 256
    ) -> None:
        self.logger = logger
        self.clock = clock
        self.interval = interval
        self.kinds = kinds
        self._seen: OrderedDict[Hashable, list[float | int]] = (
            OrderedDict()
        )  # kind -> [at, left out]

    def emit(self, kind: Hashable, level: LogLevel, format: str, /, **fields: object) -> None:
        """Log ``format`` (a twisted.logger format string) unless a line of ``kind`` was
        logged less than ``interval`` seconds ago; then only count it."""
        now = self.clock()
        seen = self._seen.get(kind)
        if seen is not None and now - seen[0] < self.interval:
            seen[1] += 1
            return
        left_out = int(seen[1]) if seen is not None else 0
        self._seen[kind] = [now, 0]
        self._seen.move_to_end(kind)
        while len(self._seen) > self.kinds:
            self._seen.popitem(last=False)
        if left_out:
            format += " ({left_out} more like it since the last such line)"
            fields["left_out"] = left_out
        self.logger.emit(level, format, **fields)


def quoted(text: str, limit: int = 128) -> str:
    """A peer-chosen name for a log line: quoted and escaped as Python's repr does, cut
    at ``limit`` characters (an EAP identity may be 60,000 octets long)."""
    return repr(text[:limit]) + ("..." if len(text) > limit else "")
