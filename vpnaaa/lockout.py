"""Per-user lockout after repeated wrong passwords (as Cisco ISE and Active Directory do).

``failures`` wrong passwords within ``window`` seconds lock the user for ``duration``
seconds: every authentication of that user is then rejected without looking at the
password, so online guessing gets ``failures`` tries per ``window + duration`` at most.
A success clears the count (as AD resets badPwdCount). Only names in the user store are
tracked, so memory is bounded by the store, and a lockout is logged once.

Sans-IO apart from reading the clock; the user store owns one and every method that
checks a password (PAP, CHAP, MS-CHAP, EAP-MSCHAPv2) reports to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from twisted.internet.interfaces import IReactorTime

from vpnaaa import logs

log = logs.get("vpnaaa.users")


@dataclass(slots=True)
class _Record:
    failures: list[float] = field(default_factory=list)  # times of recent failures
    until: float = 0.0  # locked while the clock is before this


class Lockout:
    def __init__(
        self,
        clock: IReactorTime,
        failures: int = 10,
        window: float = 600.0,
        duration: float = 600.0,
    ) -> None:
        self.clock = clock
        self.failures = failures
        self.window = window
        self.duration = duration
        self._records: dict[str, _Record] = {}

    def locked(self, name: str) -> bool:
        record = self._records.get(name)
        return record is not None and self.clock.seconds() < record.until

    def failed(self, name: str) -> None:
        """A wrong password for user ``name`` (a name the store knows)."""
        if not self.failures:
            return
        now = self.clock.seconds()
        record = self._records.setdefault(name, _Record())
        if now < record.until:
            return
        horizon = now - self.window
        record.failures = [t for t in record.failures if t > horizon]
        record.failures.append(now)
        if len(record.failures) >= self.failures:
            record.failures = []
            record.until = now + self.duration
            log.warn(
                "user {user} locked out for {duration:g} s: {n} wrong passwords within "
                "{window:g} s",
                user=logs.quoted(name),
                duration=self.duration,
                n=self.failures,
                window=self.window,
            )

    def succeeded(self, name: str) -> None:
        self._records.pop(name, None)

    def forget_unknown(self, known: set[str] | dict[str, object]) -> None:
        """Drop records of names no longer in the store (after a reload)."""
        for name in [n for n in self._records if n not in known]:
            del self._records[name]
