"""This host's IP addresses, as the kernel knows them (rtnetlink, linux/rtnetlink.h).

::

    HostAddresses                                  kernel (NETLINK_ROUTE)
      join RTNLGRP_IPV4_IFADDR, RTNLGRP_IPV6_IFADDR
      RTM_GETADDR (dump, AF_UNSPEC)  ---------->
                                     <----------  RTM_NEWADDR per address, NLMSG_DONE
                                     <----------  RTM_NEWADDR / RTM_DELADDR on each change

The set is kept current by the kernel's own notifications, so asking whether an address
is ours costs a set lookup, never a system call. What a bind(2) probe cannot tell (with
``net.ipv4.ip_nonlocal_bind`` or IPV6_FREEBIND every address binds) the interface
addresses do. :func:`dump_request` and :func:`decode` are the sans-IO codec; the framing
and the socket are :mod:`vpnaaa.kernel.xfrm`'s and :mod:`vpnaaa.kernel.netlink`'s.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
from dataclasses import dataclass
from typing import Any

from vpnaaa import logs
from vpnaaa.kernel.netlink import NetlinkSocket
from vpnaaa.kernel.xfrm import NetlinkError, NetlinkMessage, Request, decode_attrs

log = logs.get("vpnaaa.kernel")

NETLINK_ROUTE = 0
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTNLGRP_IPV4_IFADDR, RTNLGRP_IPV6_IFADDR = 5, 9  # linux/rtnetlink.h enum rtnetlink_groups
IFADDRMSG = struct.Struct("=BBBBI")  # struct ifaddrmsg: family, prefixlen, flags, scope, index
IFA_ADDRESS, IFA_LOCAL = 1, 2  # linux/if_addr.h
RETRY = 5.0  # seconds before a failed dump is tried again

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class AddressEvent:
    """One RTM_NEWADDR (``added``) or RTM_DELADDR: ``address`` on interface ``index``."""

    added: bool
    address: IPAddress
    index: int


def dump_request() -> Request:
    """RTM_GETADDR for every address of both families (AF_UNSPEC)."""
    return Request(RTM_GETADDR, IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0), dump=True)


def decode(message: NetlinkMessage) -> AddressEvent | None:
    """An address message, or None for any other (or one of another family). The local
    address is IFA_LOCAL where present (on a point-to-point link IFA_ADDRESS is the
    peer's), else IFA_ADDRESS (IPv6 sends only that) — as iproute2 reads them."""
    if message.type not in (RTM_NEWADDR, RTM_DELADDR) or len(message.body) < IFADDRMSG.size:
        return None
    family, _, _, _, index = IFADDRMSG.unpack_from(message.body)
    size = {socket.AF_INET: 4, socket.AF_INET6: 16}.get(family)
    if size is None:
        return None
    attrs = decode_attrs(message.body[IFADDRMSG.size :])
    raw = attrs.get(IFA_LOCAL, attrs.get(IFA_ADDRESS))
    if raw is None or len(raw) != size:
        return None
    return AddressEvent(message.type == RTM_NEWADDR, ipaddress.ip_address(raw), index)


class HostAddresses:
    """The addresses of this host's interfaces (in the network namespace it was started
    in), current within the time the kernel takes to notify a change.

    :meth:`start` opens the rtnetlink socket (OSError if it cannot: the caller says what
    to configure instead) and asks for the full list; the notifications keep it current.
    A list that changed while it was being dumped, or notifications the kernel had to drop
    (ENOBUFS), and it is dumped again. Until the first dump is in, ``known`` is false.
    """

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.addresses: frozenset[IPAddress] = frozenset()
        self.known = False
        self._entries: frozenset[tuple[IPAddress, int]] = frozenset()  # (address, interface)
        self._socket: NetlinkSocket | None = None
        self._dumping = False
        self._changed = False  # a notification arrived during the dump
        self._retry: Any = None

    def __contains__(self, address: object) -> bool:
        return address in self.addresses

    @property
    def started(self) -> bool:
        return self._socket is not None

    def start(self) -> None:
        groups = (RTNLGRP_IPV4_IFADDR, RTNLGRP_IPV6_IFADDR)
        self._socket = NetlinkSocket(
            self.reactor, groups, self._event, self._overrun, protocol=NETLINK_ROUTE
        )
        self._dump()

    def stop(self) -> None:
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self._socket is not None:
            sock, self._socket = self._socket, None
            sock.close()

    def _dump(self) -> None:
        self._retry = None
        if self._socket is None or self._dumping:
            self._changed = True  # the dump under way is stale: it goes again at its end
            return
        self._dumping, self._changed = True, False
        d = self._socket.request(dump_request())
        d.addCallbacks(self._dumped, self._failed)

    def _dumped(self, messages: list[NetlinkMessage]) -> None:
        self._dumping = False
        events = (decode(m) for m in messages)
        self._set(frozenset((e.address, e.index) for e in events if e is not None and e.added))
        self.known = True
        if self._changed:
            self._dump()

    def _failed(self, failure: Any) -> None:
        self._dumping = False
        if self._socket is None:
            return  # stopped
        if failure.check(NetlinkError) and failure.value.errno == errno.EINTR:
            delay = 0.0  # NLM_F_DUMP_INTR: the list changed under the dump; read it again
        else:
            delay = RETRY
            log.warn(
                "reading this host's addresses failed ({why}); again in {s:g} s",
                why=failure.getErrorMessage(),
                s=RETRY,
            )
        if self._retry is None:
            self._retry = self.reactor.callLater(delay, self._dump)

    def _event(self, message: NetlinkMessage) -> None:
        event = decode(message)
        if event is None:
            return
        if self._dumping:
            self._changed = True
        entry = {(event.address, event.index)}
        self._set(self._entries | entry if event.added else self._entries - entry)

    def _set(self, entries: frozenset[tuple[IPAddress, int]]) -> None:
        """An address stays ours while any interface holds it."""
        self._entries = entries
        self.addresses = frozenset(address for address, _ in entries)

    def _overrun(self) -> None:
        """Notifications were lost: only a new dump says what the addresses are now."""
        if self._socket is None:
            return
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = self.reactor.callLater(0, self._dump)
