"""Socket details shared by the UDP edges and the netlink socket.

Twisted reads one datagram at a time; a burst that arrives together (hundreds of
IKE_SA_INITs, Access-Requests, RADIUS answers or kernel events) waits in the socket's
receive queue, and what overflows it is lost. The default (~200 KiB) drops such bursts.
"""

from __future__ import annotations

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
