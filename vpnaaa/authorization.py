"""What the AAA side grants a session beyond "yes": from a RADIUS server's Access-Accept
(the relay) or from the local user store, the same fields either way."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass


@dataclass(frozen=True)
class Authorization:
    """What the AAA server granted with its Access-Accept: an address instead of the
    pool's (Framed-IP-Address, RFC 2865 §5.8), a pool by name (Framed-Pool, RFC 2869
    §5.18), a hard end for the session (Session-Timeout, RFC 2865 §5.27), the accounting
    interval (Acct-Interim-Interval, RFC 2869 §5.16), and the Class values accounting must
    echo (RFC 2865 §5.25)."""

    framed_ip: ipaddress.IPv4Address | None = None
    framed_pool: str | None = None
    session_timeout: int | None = None  # seconds
    interim_interval: int | None = None  # seconds
    classes: tuple[bytes, ...] = ()

    def to_json(self) -> dict[str, object]:
        """The user store's form: only what is set (Class as text)."""
        record: dict[str, object] = {}
        if self.framed_ip is not None:
            record["framed_ip"] = str(self.framed_ip)
        if self.framed_pool is not None:
            record["framed_pool"] = self.framed_pool
        if self.session_timeout is not None:
            record["session_timeout"] = self.session_timeout
        if self.interim_interval is not None:
            record["interim_interval"] = self.interim_interval
        if self.classes:
            record["class"] = [c.decode("utf-8", "replace") for c in self.classes]
        return record

    @classmethod
    def from_json(cls, record: dict[str, object]) -> Authorization:
        """From the user store; raises ValueError naming the bad field."""
        address = record.get("framed_ip")
        pool = record.get("framed_pool")
        classes = record.get("class", [])
        if pool is not None and not isinstance(pool, str):
            raise ValueError("framed_pool must be a string")
        if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
            raise ValueError("class must be a list of strings")
        try:
            framed_ip = ipaddress.IPv4Address(address) if address is not None else None
        except (ValueError, TypeError):
            raise ValueError(f"framed_ip {address!r} is not an IPv4 address") from None
        return cls(
            framed_ip=framed_ip,
            framed_pool=pool,
            session_timeout=_seconds(record, "session_timeout"),
            interim_interval=_seconds(record, "interim_interval"),
            classes=tuple(c.encode() for c in classes),
        )


def _seconds(record: dict[str, object], name: str) -> int | None:
    value = record.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 2**32:
        raise ValueError(f"{name} must be a positive number of seconds")
    return value


NOTHING = Authorization()  # a plain "yes": the pool's address, the profile's limits
