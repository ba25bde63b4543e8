"""Socket details shared by the UDP edges and the netlink socket.

Twisted reads one datagram at a time; a burst that arrives together (hundreds of
IKE_SA_INITs, Access-Requests, RADIUS answers or kernel events) waits in the socket's
receive queue, and what overflows it is lost. The default (~200 KiB) drops such bursts.
"""

from __future__ import annotations

import ipaddress
import socket

MIB = 1024 * 1024
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)  # Linux asm-generic/socket.h


def large_receive_buffer(sock: socket.socket, size: int = 4 * MIB) -> None:
    """Give ``sock`` a ``size``-octet receive queue: SO_RCVBUFFORCE passes
    net.core.rmem_max with CAP_NET_ADMIN; without it the kernel caps SO_RCVBUF there."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


def source_prefix(source: str | None) -> str | None:
    """What a per-source limit counts: the address; an IPv6 address's /64, the block one
    subscriber gets (RFC 6177), or a single host could take every slot with addresses of
    its own prefix; an IPv4-mapped IPv6 address as the IPv4 address it is."""
    if source is None or ":" not in source:
        return source
    try:
        address = ipaddress.IPv6Address(source.split("%", 1)[0])
    except ValueError:
        return source
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(ipaddress.IPv6Network((address, 64), strict=False))
