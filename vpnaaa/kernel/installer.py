"""Where negotiated CHILD_SAs go: the installer interface and the null installer.

The IKEv2 responder hands each CHILD_SA (RFC 7296 §2.17) to a :class:`ChildSaInstaller`
and removes it on teardown. The null installer records them, for hosts without ESP in
the kernel and for tests that compare its keys with the peer's.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Protocol

from twisted.internet import defer

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Selector:
    """One traffic selector (RFC 7296 §3.13.1) as the kernel policy needs it."""

    network: Network
    protocol: int = 0  # 0 = any
    start_port: int = 0
    end_port: int = 65535


@dataclass(frozen=True)
class ChildSaSpec:
    """One CHILD_SA pair: inbound (peer to us) and outbound (us to peer) ESP SAs."""

    reqid: int
    local_address: str
    remote_address: str
    inbound_spi: int
    outbound_spi: int
    encr_id: int
    encr_key_length: int | None
    integ_id: int | None
    inbound_encr_key: bytes = field(repr=False)
    inbound_integ_key: bytes = field(repr=False)
    outbound_encr_key: bytes = field(repr=False)
    outbound_integ_key: bytes = field(repr=False)
    local_selectors: tuple[Selector, ...]
    remote_selectors: tuple[Selector, ...]
    esn: bool = False
    encapsulation: tuple[int, int] | None = None  # (local, remote) UDP ports for NAT-T
    soft_lifetime: int = 0
    hard_lifetime: int = 0


class ChildSaInstaller(Protocol):
    def install(self, spec: ChildSaSpec) -> defer.Deferred[None]:
        """Put both SAs and their policies in place; errback with the reason on failure."""

    def remove(self, spec: ChildSaSpec) -> defer.Deferred[None]:
        """Take them out again (idempotent)."""


class NullInstaller:
    """Records CHILD_SAs instead of installing them."""

    def __init__(self) -> None:
        self.installed: dict[int, ChildSaSpec] = {}  # by inbound SPI (rekeys share reqids)

    def install(self, spec: ChildSaSpec) -> defer.Deferred[None]:
        self.installed[spec.inbound_spi] = spec
        return defer.succeed(None)

    def remove(self, spec: ChildSaSpec) -> defer.Deferred[None]:
        self.installed.pop(spec.inbound_spi, None)
        return defer.succeed(None)
