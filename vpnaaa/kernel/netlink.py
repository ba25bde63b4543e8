"""A NETLINK_XFRM socket on the Twisted reactor: requests as Deferreds, events as calls.

The socket is an IReadDescriptor (no threads). Each request gets a sequence number and
NLM_F_ACK; its Deferred fires with the messages answered to it once the kernel ACKs
(NLMSG_ERROR with error 0) or ends a dump (NLMSG_DONE), and fails with
:class:`~vpnaaa.kernel.xfrm.NetlinkError` (the errno and, with NETLINK_EXT_ACK, the
kernel's message) otherwise. The kernel handles a request inside ``sendmsg``: its answer
is queued before :meth:`NetlinkSocket.request` returns.

Messages sent to the multicast groups joined (XFRMNLGRP_EXPIRE, XFRMNLGRP_ACQUIRE, ...)
go to the ``events`` callable. Under load the kernel drops what does not fit the receive
buffer and reports ENOBUFS: requests waiting then fail (their answer may be lost) and
``overrun`` is called, since events were lost too. Keep events and requests on separate
sockets so a burst of events cannot cost a request its answer.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IReactorFDSet, IReadDescriptor
from twisted.python.failure import Failure
from zope.interface import implementer

from vpnaaa import logs
from vpnaaa.kernel.xfrm import (
    MsgType,
    NetlinkError,
    NetlinkMessage,
    NlmFlag,
    NlmsgType,
    Request,
    decode_ack,
    decode_messages,
    encode_message,
)
from vpnaaa.net import large_receive_buffer

log = logs.get("vpnaaa.kernel")

NETLINK_XFRM = 6
SOL_NETLINK = 270  # linux/socket.h
NETLINK_ADD_MEMBERSHIP = 1
NETLINK_CAP_ACK = 10  # do not echo the request's payload in an NLMSG_ERROR
NETLINK_EXT_ACK = 11  # extended ACK: the kernel's error message (NLMSGERR_ATTR_MSG)


@dataclass
class _Pending:
    name: str
    deferred: defer.Deferred[list[NetlinkMessage]]
    replies: list[NetlinkMessage] = field(default_factory=list)
    interrupted: bool = False


def _name(type: int) -> str:
    try:
        return f"XFRM_MSG_{MsgType(type).name}"
    except ValueError:
        return f"netlink message {type}"


@implementer(IReadDescriptor)
class NetlinkSocket:
    """One NETLINK_XFRM socket bound to a kernel-chosen port ID, in the network namespace
    of the thread that creates it."""

    def __init__(
        self,
        reactor: IReactorFDSet | None = None,
        groups: Iterable[int] = (),
        events: Callable[[NetlinkMessage], None] | None = None,
        overrun: Callable[[], None] | None = None,
        protocol: int = NETLINK_XFRM,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default

            reactor = default  # type: ignore[assignment]
        assert reactor is not None
        self.reactor = reactor
        self.events = events
        self.overrun = overrun
        kind = socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
        self.socket = socket.socket(socket.AF_NETLINK, kind, protocol)
        try:
            self.socket.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
            self.socket.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
            large_receive_buffer(self.socket)
            self.socket.bind((0, 0))
            for group in groups:
                self.socket.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, int(group))
        except BaseException:
            self.socket.close()
            raise
        self.port_id: int = self.socket.getsockname()[0]
        self._seq = int.from_bytes(os.urandom(2), "big")
        self._pending: dict[int, _Pending] = {}
        self._buffer = bytearray(64 * 1024)  # > the 32 KiB the kernel puts in one dump skb
        self._closed = False
        reactor.addReader(self)

    # --- requests -------------------------------------------------------------------

    def request(self, request: Request) -> defer.Deferred[list[NetlinkMessage]]:
        """Send ``request``; the Deferred fires with the kernel's answers (none for a plain
        ACK, one NEWSA for a GETSA, every entry for a dump)."""
        name = _name(request.type)
        if self._closed:
            return defer.fail(ConnectionDone("netlink socket closed"))
        self._seq = self._seq % 0xFFFFFFFF + 1  # 1 .. 2**32-1: events carry 0
        seq = self._seq
        flags = NlmFlag.REQUEST | (NlmFlag.DUMP if request.dump else NlmFlag.ACK)
        d: defer.Deferred[list[NetlinkMessage]] = defer.Deferred(
            lambda _: self._pending.pop(seq, None)
        )
        self._pending[seq] = _Pending(name, d)
        try:
            self.socket.send(encode_message(request.type, flags, seq, request.body))
        except OSError as e:
            del self._pending[seq]
            return defer.fail(NetlinkError(e.errno or errno.EIO, name, "send failed"))
        return d

    def _answer(self, message: NetlinkMessage) -> None:
        pending = self._pending[message.seq]
        if message.type in (NlmsgType.ERROR, NlmsgType.DONE):
            del self._pending[message.seq]
            code, text, offset = decode_ack(message) if len(message.body) >= 4 else (0, "", None)
            if not code and pending.interrupted:
                code, text = errno.EINTR, "dump interrupted by a change; retry"
            if code:
                pending.deferred.errback(NetlinkError(code, pending.name, text, offset))
            else:
                pending.deferred.callback(pending.replies)
        elif message.type >= 0x10:  # NOOP and OVERRUN carry nothing
            pending.interrupted |= bool(message.flags & NlmFlag.DUMP_INTR)
            pending.replies.append(message)

    # --- IReadDescriptor --------------------------------------------------------------

    def fileno(self) -> int:
        return -1 if self._closed else self.socket.fileno()

    def logPrefix(self) -> str:
        return "NetlinkSocket"

    def doRead(self) -> None:
        while not self._closed:
            try:
                n, (sender, groups) = self.socket.recvfrom_into(self._buffer, 0, socket.MSG_TRUNC)
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno != errno.ENOBUFS:
                    raise
                self._lost("receive buffer overrun (ENOBUFS)")
                continue
            if n > len(self._buffer):
                self._lost(f"a {n}-octet datagram truncated")
                continue
            for message in decode_messages(bytes(self._buffer[:n])):
                if sender == 0 and not groups and message.seq in self._pending:
                    self._answer(message)
                elif self.events is not None:
                    try:
                        self.events(message)
                    except Exception:
                        log.failure("netlink: event handler failed on type {t}", t=message.type)

    def _lost(self, why: str) -> None:
        log.warn("netlink: {why}: messages were lost", why=why)
        pending, self._pending = self._pending, {}
        for p in pending.values():
            p.deferred.errback(NetlinkError(errno.ENOBUFS, p.name, f"answer lost: {why}"))
        if self.overrun is not None:
            self.overrun()

    def connectionLost(self, reason: Failure) -> None:
        self.close()

    def close(self) -> None:
        """Stop reading, close the socket, fail what is still waiting."""
        if self._closed:
            return
        self.reactor.removeReader(self)
        self._closed = True
        self.socket.close()
        pending, self._pending = self._pending, {}
        for p in pending.values():
            p.deferred.errback(ConnectionDone("netlink socket closed"))
