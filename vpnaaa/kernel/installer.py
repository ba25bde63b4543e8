"""Where negotiated CHILD_SAs go: the installer interface and the null installer.

The IKEv2 responder hands each CHILD_SA (RFC 7296 §2.17) to a :class:`ChildSaInstaller`
and removes it on teardown. The null installer records them, for hosts without ESP in
the kernel and for tests that compare its keys with the peer's.

A CHILD_SA may go in in two steps. The responder of a CHILD_SA rekey (RFC 7296 §1.3.3,
§2.8) answers before the initiator has installed the new SAs: if it sent on its new
outbound SA at once, the initiator would drop what arrives before it has processed the
answer. So it installs only the new inbound SA (``install(spec, outbound=False)``), keeps
sending on the old CHILD_SA's outbound SA, and adds the new outbound SA
(``install_outbound(spec)``) when the old CHILD_SA goes: the initiator's DELETE for it
proves the initiator has the new SAs in place (strongSwan's responder does the same).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Protocol

from twisted.internet import defer

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class InstallError(Exception):
    """The kernel (or the installer itself) refused part of a CHILD_SA; ``errno`` is the
    kernel's, 0 when the kernel was not asked."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.errno = code

    @classmethod
    def not_installed(cls, spec: ChildSaSpec) -> InstallError:
        """install_outbound() for a CHILD_SA not (or no longer) installed."""
        return cls(
            f"CHILD_SA reqid {spec.reqid}: outbound SA {spec.outbound_spi:08x}: inbound SA"
            f" {spec.inbound_spi:08x} is not installed"
        )


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
    def install(self, spec: ChildSaSpec, outbound: bool = True) -> defer.Deferred[None]:
        """Put the inbound SA, the policies and, with ``outbound``, the outbound SA in
        place; errback with the reason (:class:`InstallError`) on failure. Without
        ``outbound`` the kernel goes on sending on whatever outbound SA of the same reqid
        it has (the CHILD_SA being rekeyed), or on none (the out policies hold the traffic
        back, never in clear) until :meth:`install_outbound`."""

    def install_outbound(self, spec: ChildSaSpec) -> defer.Deferred[None]:
        """Add the outbound SA of a CHILD_SA installed with ``outbound=False``; from then
        on the kernel may send on it. Does nothing if it is in already; errback with an
        :class:`InstallError` if the kernel refuses it or ``spec`` is not installed."""

    def remove(self, spec: ChildSaSpec) -> defer.Deferred[None]:
        """Take the SAs (whether or not the outbound one went in) and the policies no
        other CHILD_SA needs out again (idempotent)."""


class NullInstaller:
    """Records CHILD_SAs instead of installing them."""

    def __init__(self) -> None:
        self.installed: dict[int, ChildSaSpec] = {}  # by inbound SPI (rekeys share reqids)
        self.outbound: set[int] = set()  # inbound SPIs of those whose outbound SA is in

    def install(self, spec: ChildSaSpec, outbound: bool = True) -> defer.Deferred[None]:
        self.installed[spec.inbound_spi] = spec
        if outbound:
            self.outbound.add(spec.inbound_spi)
        return defer.succeed(None)

    def install_outbound(self, spec: ChildSaSpec) -> defer.Deferred[None]:
        if spec.inbound_spi not in self.installed:
            return defer.fail(InstallError.not_installed(spec))
        self.outbound.add(spec.inbound_spi)
        return defer.succeed(None)

    def remove(self, spec: ChildSaSpec) -> defer.Deferred[None]:
        self.installed.pop(spec.inbound_spi, None)
        self.outbound.discard(spec.inbound_spi)
        return defer.succeed(None)
