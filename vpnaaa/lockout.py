"""Lockout after repeated wrong passwords, per user and source (as Cisco ISE and Active
Directory do, with AD's "smart lockout" refinement).

``failures`` wrong passwords within ``window`` seconds lock the user, from that source, for
``duration`` seconds: every authentication of that user from there is then rejected
without looking at the password, so online guessing gets ``failures`` tries per
``window + duration`` and source at most. The source is where the guesses come from (an
IKE client's address, by its IPv6 /64; a NAS and the Calling-Station-Id it reports): a
stranger who knows a user's name cannot lock that user out everywhere with ten wrong
passwords; None counts as one source of its own. A success clears that count (as AD resets
badPwdCount). Only names in the user store are tracked, at most ``records`` (user, source)
pairs (the least recently failed forgotten first), and a lockout is logged once.

Sans-IO apart from reading the clock; the user store owns one and every method that
checks a password (PAP, CHAP, MS-CHAP, EAP-MSCHAPv2) reports to it.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from twisted.internet.interfaces import IReactorTime

from vpnaaa import logs
from vpnaaa.net import source_prefix

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
        records: int = 100_000,
    ) -> None:
        self.clock = clock
        self.failures = failures
        self.window = window
        self.duration = duration
        self.records = records
        self._records: OrderedDict[tuple[str, str | None], _Record] = OrderedDict()

    def locked(self, name: str, source: str | None = None) -> bool:
        record = self._records.get((name, source_prefix(source)))
        return record is not None and self.clock.seconds() < record.until

    def failed(self, name: str, source: str | None = None) -> None:
        """A wrong password for user ``name`` (a name the store knows) from ``source``."""
        if not self.failures:
            return
        now = self.clock.seconds()
        key = (name, source_prefix(source))
        record = self._records.pop(key, None) or _Record()
        self._records[key] = record
        if len(self._records) > self.records:
            self._records.popitem(last=False)
        if now < record.until:
            return
        horizon = now - self.window
        record.failures = [t for t in record.failures if t > horizon]
        record.failures.append(now)
        if len(record.failures) >= self.failures:
            record.failures = []
            record.until = now + self.duration
            log.warn(
                "user {user} locked out from {source} for {duration:g} s: {n} wrong passwords "
                "within {window:g} s",
                user=logs.quoted(name),
                source=logs.quoted(key[1]) if key[1] is not None else "unknown sources",
                duration=self.duration,
                n=self.failures,
                window=self.window,
            )

    def succeeded(self, name: str, source: str | None = None) -> None:
        self._records.pop((name, source_prefix(source)), None)

    def forget_unknown(self, known: set[str] | dict[str, object]) -> None:
        """Drop records of names no longer in the store (after a reload)."""
        for key in [k for k in self._records if k[0] not in known]:
            del self._records[key]
