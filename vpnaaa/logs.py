"""Logging: twisted.logger with one process-wide level filter.

Modules take a logger from :func:`get`; the daemon sets the level from ``general.log_level``.
Hot paths check :func:`debug_enabled` before building debug events, so a filtered line
costs nothing.
"""

from __future__ import annotations

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
