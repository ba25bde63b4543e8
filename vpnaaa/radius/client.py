"""EAP relayed to an external RADIUS server (RFC 3579): the "ASA + ISE" topology.

:class:`RadiusRelay` serves the same :class:`~vpnaaa.eap.backend.EapBackend` interface as
the local :class:`~vpnaaa.eap.engine.EapEngine`, so the IKEv2 responder does not know which
one it talks to. The relay asks the peer for its identity itself, then carries every EAP
Response in an Access-Request (User-Name, EAP-Message, Message-Authenticator, the State of
the last Access-Challenge) and turns the answer into a Challenge, a Success with the MSK
from MS-MPPE-Recv-Key | MS-MPPE-Send-Key (RFC 2548 §2.4.2-3, as hostapd and FreeRADIUS
split it), or a Failure.

Identifiers (RFC 5080 §2.2.2): a RADIUS Identifier is 8 bits, unique per source address
and port while a request is outstanding, so one socket carries at most 256 requests. The
relay sends from ``source_ports`` sockets, each with its own 256 Identifiers, reuses the
Identifier that has been free longest, and keeps one until its request is answered or
its last try timed out (a late answer must not meet a new request). A request that finds
no free Identifier waits in a bounded FIFO queue instead of failing.

Every request is retransmitted unchanged (same Identifier and Authenticator, RFC 5080
§2.2.1) after ``timeout`` seconds, ``tries`` times in all; a silent server fails the
conversation with one log line. Every response must carry a valid Message-Authenticator
(RFC 3579 §3.2 for EAP, and BlastRADIUS, CVE-2024-3596, for the rest): one without is
discarded with a throttled log line. Beyond the conversation table's or the queue's size a
conversation gets EAP-Failure and the refusal a throttled log line. Nothing raises out of
:meth:`RadiusRelay.step`: whatever goes wrong becomes an EAP-Failure.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import LogLevel

from vpnaaa import logs
from vpnaaa.authorization import Authorization
from vpnaaa.eap import packet
from vpnaaa.eap.authenticator import Challenge, Failure, Result, Success
from vpnaaa.eap.packet import Code, Type
from vpnaaa.eap.table import ConversationTable
from vpnaaa.net import MIB, large_receive_buffer
from vpnaaa.radius import hiding, wire
from vpnaaa.radius.eap import MAX_VALUE, eap_attributes

log = logs.get("vpnaaa.radius")

_STATE = wire.key("State")
_RECV_KEY = wire.key("MS-MPPE-Recv-Key")
_SEND_KEY = wire.key("MS-MPPE-Send-Key")
_NAS_PORT_TYPE_VIRTUAL = wire.value("NAS-Port-Type", "Virtual")
_SERVICE_TYPE_FRAMED = wire.value("Service-Type", "Framed-User")
MIN_MSK = 32  # octets: MS-MPPE-Recv-Key | Send-Key shorter than this key nothing safely
IDENTIFIERS = 256


@dataclass
class _Conversation:
    identifier: int  # of our EAP-Request/Identity
    identity: str = ""
    state: bytes | None = None
    request: _Request | None = None  # queued or outstanding (EAP is lockstep)


@dataclass(eq=False)
class _Request:
    """One Access-Request: queued (no Identifier yet), then outstanding on a port."""

    conversation_id: bytes
    attributes: list[tuple[wire.Key, bytes]]
    # fires with (response, our authenticator); None once the conversation is forgotten
    deferred: defer.Deferred[tuple[wire.Packet, bytes]] | None
    port: int = -1
    ident: int = -1
    authenticator: bytes = b""
    datagram: bytes = b""
    tries: int = 0
    timer: IDelayedCall | None = field(default=None, repr=False)


class RadiusRelay(DatagramProtocol):
    """A RADIUS client for EAP (RFC 3579 §2.6.2 retransmission, §3.2 Message-Authenticator).

    Listen it on one UDP port (the reactor's ``listenUDP(0, relay, interface)``); it opens
    its other ``source_ports - 1`` sockets on the same interface when that port starts,
    and closes them when it stops.
    """

    noisy = False

    def __init__(
        self,
        server: tuple[str, int],
        secret: bytes,
        reactor: Any,
        nas_identifier: str = "vpnaaa",
        timeout: float = 3.0,
        tries: int = 3,
        idle_timeout: float = 60.0,
        *,
        source_ports: int = 4,
        max_queue: int = 1024,
        max_conversations: int = 4096,
        per_source: int = 32,
    ) -> None:
        self.server = server
        self.secret = secret
        self.reactor = reactor
        self.nas_identifier = wire.value("NAS-Identifier", nas_identifier)
        self.timeout = timeout
        self.tries = tries
        self.source_ports = source_ports
        self.max_queue = max_queue
        self._conversations: ConversationTable[_Conversation] = ConversationTable(
            reactor, idle_timeout, max_conversations, per_source
        )
        self._transports: list[Any] = [None] * source_ports
        self._extra_ports: list[Any] = []
        self._free: list[deque[int]] = [deque() for _ in range(source_ports)]
        self._next_port = 0
        self._pending: dict[tuple[int, int], _Request] = {}
        self._queue: dict[int, _Request] = {}  # FIFO by insertion; O(1) removal on forget
        self._queue_keys = itertools.count()
        self._queued_at: dict[_Request, int] = {}
        self._throttle = logs.Throttle(log, reactor.seconds)
        # finished conversations by (method, "success" | "failure"), for the metrics: the
        # server chooses the method; the relay names the type of the client's last Response
        self.outcomes: Counter[tuple[str, str]] = Counter()

    def __len__(self) -> int:
        return len(self._conversations)

    @property
    def outstanding(self) -> int:
        """Access-Requests sent and not yet answered or timed out."""
        return len(self._pending)

    @property
    def queued(self) -> int:
        """Access-Requests waiting for a free Identifier."""
        return len(self._queue)

    # -- the EAP backend interface -------------------------------------------------------

    def begin(self, source: str) -> tuple[bytes, Result]:
        """EAP-Request/Identity from the relay itself (the NAS role, RFC 3579 §2.1)."""
        self.expire()
        conversation_id = os.urandom(16)
        refusal = self._conversations.refusal(source)
        if refusal is not None:
            self._refuse(f"EAP conversation refused: {refusal}")
            self.outcomes["none", "failure"] += 1
            return conversation_id, _failure(b"", refusal)
        identifier = os.urandom(1)[0]
        self._conversations.add(conversation_id, _Conversation(identifier), source)
        return conversation_id, Challenge(packet.request(identifier, Type.IDENTITY).encode())

    def step(self, conversation_id: bytes, eap: bytes) -> defer.Deferred[tuple[bytes, Result]]:
        """Relay one EAP Response. Never raises: every problem is an EAP-Failure."""
        try:
            d = self._step(conversation_id, eap)
        except Exception:
            log.failure("EAP relay: internal error; conversation failed")
            self._drop(conversation_id)
            d = defer.succeed((conversation_id, _failure(eap, "internal error")))
        return d.addCallback(self._count, eap)

    def _count(self, step: tuple[bytes, Result], eap: bytes) -> tuple[bytes, Result]:
        result = step[1]
        if not isinstance(result, Challenge):
            kind = eap[4] if len(eap) > 4 and eap[0] == Code.RESPONSE else None
            method = Type(kind).name.lower() if kind in _METHODS else "none"
            self.outcomes[method, "success" if isinstance(result, Success) else "failure"] += 1
        return step

    def refusal(self, conversation_id: bytes) -> Failure | None:
        """The server decides; the relay learns it only from an Access-Reject."""
        return None

    def forget(self, conversation_id: bytes) -> None:
        """Release the conversation and its queued or outstanding request: a queued one is
        never sent; an outstanding one is not retransmitted and its answer is discarded
        (its Identifier stays reserved until then, RFC 5080 §2.2.2)."""
        self._drop(conversation_id)

    def expire(self) -> int:
        dropped = self._conversations.expire()
        for _, conversation in dropped:
            self._abandon(conversation)
        return len(dropped)

    # -- a step ---------------------------------------------------------------------------

    def _step(self, conversation_id: bytes, eap: bytes) -> defer.Deferred[tuple[bytes, Result]]:
        conversation = self._conversations.touch(conversation_id)
        if conversation is None:
            return defer.succeed(
                (conversation_id, _failure(eap, "unknown or expired conversation"))
            )
        if conversation.request is not None:
            return self._fail(
                conversation_id, eap, "an EAP Response while the previous one is still relayed"
            )
        if not conversation.identity:
            try:
                response = packet.parse(eap)
            except packet.EapError as e:
                return self._fail(conversation_id, eap, f"malformed EAP: {e}")
            if response.code == Code.RESPONSE and response.type == Type.IDENTITY:
                identity = response.data
                if len(identity) > MAX_VALUE:
                    reason = (
                        f"EAP identity of {len(identity)} octets does not fit User-Name "
                        f"(at most {MAX_VALUE}, RFC 2865 §5.1)"
                    )
                    self._refuse(f"EAP relay refused a conversation: {reason}")
                    return self._fail(conversation_id, eap, reason)
                conversation.identity = identity.decode("utf-8", "replace")
        attributes = [
            (wire.USER_NAME, (conversation.identity or "anonymous").encode()[:MAX_VALUE]),
            *eap_attributes(eap),
            self.nas_identifier,
            _NAS_PORT_TYPE_VIRTUAL,
            _SERVICE_TYPE_FRAMED,
        ]
        if conversation.state is not None:
            attributes.append((_STATE, conversation.state))
        length = wire.MIN_LENGTH + 18 + sum(2 + len(value) for _, value in attributes)
        if length > wire.MAX_LENGTH:
            reason = f"an Access-Request of {length} octets exceeds {wire.MAX_LENGTH}"
            self._refuse(f"EAP relay refused a conversation: {reason}")
            return self._fail(conversation_id, eap, reason)
        request = _Request(conversation_id, attributes, defer.Deferred())
        if not self._dispatch(request):
            reason = f"{self.max_queue} Access-Requests already wait for an Identifier"
            self._refuse(f"EAP relay refused a request: {reason}")
            return self._fail(conversation_id, eap, reason)
        conversation.request = request
        d = request.deferred
        d.addCallback(self._answer, conversation_id, conversation, eap)
        d.addErrback(self._no_answer, conversation_id, conversation, eap)
        return d

    def _fail(
        self, conversation_id: bytes, eap: bytes, reason: str
    ) -> defer.Deferred[tuple[bytes, Result]]:
        conversation = self._drop(conversation_id)
        identity = conversation.identity if conversation is not None else ""
        return defer.succeed((conversation_id, _failure(eap, reason, identity=identity)))

    def _drop(self, conversation_id: bytes) -> _Conversation | None:
        conversation = self._conversations.pop(conversation_id)
        if conversation is not None:
            self._abandon(conversation)
        return conversation

    def _abandon(self, conversation: _Conversation) -> None:
        request, conversation.request = conversation.request, None
        if request is None:
            return
        request.deferred = None
        key = self._queued_at.pop(request, None)
        if key is not None:
            del self._queue[key]

    def _refuse(self, line: str) -> None:
        self._throttle.emit("refused", LogLevel.warn, "{line}", line=line)

    # -- answers --------------------------------------------------------------------------

    def _answer(
        self,
        exchange: tuple[wire.Packet, bytes],
        conversation_id: bytes,
        conversation: _Conversation,
        eap: bytes,
    ) -> tuple[bytes, Result]:
        conversation.request = None
        response, request_authenticator = exchange
        eap_reply = b"".join(response.attributes.get(wire.EAP_MESSAGE, ()))
        if response.code == wire.Code.ACCESS_CHALLENGE and eap_reply:
            conversation.state = response.get(_STATE)
            return conversation_id, Challenge(eap_reply)
        self._conversations.pop(conversation_id)
        if response.code == wire.Code.ACCESS_ACCEPT:
            try:
                msk = b"".join(
                    hiding.salt_decrypt(
                        response.get(kind) or b"", self.secret, request_authenticator
                    )
                    for kind in (_RECV_KEY, _SEND_KEY)
                )
            except ValueError as e:
                return conversation_id, _failure(
                    eap, f"Access-Accept without usable MPPE keys: {e}", b"", conversation.identity
                )
            if len(msk) < MIN_MSK:
                reason = (
                    f"Access-Accept with an MSK of {len(msk)} octets (MS-MPPE-Recv-Key | "
                    f"Send-Key); at least {MIN_MSK} are required"
                )
                return conversation_id, _failure(eap, reason, b"", conversation.identity)
            name = response.get(wire.USER_NAME)
            identity = name.decode("utf-8", "replace") if name else conversation.identity
            success = eap_reply or packet.success(eap[1] if len(eap) > 1 else 0).encode()
            # RFC 2865 §5.1: a User-Name in the Accept is the name the server authenticated;
            # without one, ours is only what the client said (an outer identity)
            granted = authorization(response)
            return conversation_id, Success(
                success, identity, msk, "RADIUS", name is not None, granted
            )
        reason = f"{_code_name(response.code)} from {self.server[0]}"
        return conversation_id, _failure(eap, reason, eap_reply, conversation.identity)

    def _no_answer(
        self, failure: Any, conversation_id: bytes, conversation: _Conversation, eap: bytes
    ) -> tuple[bytes, Result]:
        conversation.request = None
        self._conversations.pop(conversation_id)
        reason = failure.getErrorMessage()
        if not failure.check(TimeoutError):
            log.failure("EAP relay: internal error", failure)
            reason = "internal error"
        else:
            log.error(
                "RADIUS server {host}:{port}: {reason}",
                host=self.server[0],
                port=self.server[1],
                reason=reason,
            )
        return conversation_id, _failure(eap, reason, identity=conversation.identity)

    # -- Identifiers, the queue and the wire ---------------------------------------------

    def startProtocol(self) -> None:
        self._attach(0, self.transport)
        interface = self.transport.getHost().host
        for index in range(1, self.source_ports):
            self._extra_ports.append(
                self.reactor.listenUDP(0, _ExtraPort(self, index), interface=interface)
            )

    def stopProtocol(self) -> None:
        ports, self._extra_ports = self._extra_ports, []
        for port in ports:
            port.stopListening()
        self._detach(0)

    def _attach(self, index: int, transport: Any) -> None:
        """A socket is ready: its 256 Identifiers, in a random rotation, become free."""
        sock = getattr(transport, "socket", None)
        if sock is not None:
            large_receive_buffer(sock, MIB)  # the answers to 256 requests, with room
        self._transports[index] = transport
        start = os.urandom(1)[0]
        free = self._free[index]
        free.clear()
        free.extend((start + i) % IDENTIFIERS for i in range(IDENTIFIERS))
        self._pump()

    def _detach(self, index: int) -> None:
        self._transports[index] = None
        self._free[index].clear()

    def _dispatch(self, request: _Request) -> bool:
        """Send now if an Identifier is free, else queue; False when the queue is full."""
        if not self._queue and self._send(request):
            return True
        if len(self._queue) >= self.max_queue:
            return False
        key = next(self._queue_keys)
        self._queue[key] = request
        self._queued_at[request] = key
        return True

    def _send(self, request: _Request) -> bool:
        for _ in range(self.source_ports):
            index = self._next_port
            self._next_port = (index + 1) % self.source_ports
            free = self._free[index]
            if free:
                request.port, request.ident = index, free.popleft()
                break
        else:
            return False
        request.authenticator = os.urandom(16)
        request.datagram = wire.access_request(
            request.ident, request.authenticator, self.secret, request.attributes
        )
        self._pending[(request.port, request.ident)] = request
        self._transmit(request)
        return True

    def _pump(self) -> None:
        """Queued requests take the Identifiers that became free, oldest first."""
        while self._queue:
            key = next(iter(self._queue))
            request = self._queue[key]
            if not self._send(request):
                return
            del self._queue[key]
            del self._queued_at[request]

    def _transmit(self, request: _Request) -> None:
        request.tries += 1
        transport = self._transports[request.port]
        try:
            if transport is not None:  # None: the relay is stopping
                transport.write(request.datagram, self.server)
        except OSError as e:  # no route, a full socket buffer: the timer retries
            log.warn("RADIUS relay: sending to {host} failed: {e}", host=self.server[0], e=e)
        request.timer = self.reactor.callLater(self.timeout, self._timed_out, request)

    def _timed_out(self, request: _Request) -> None:
        if request.deferred is not None and request.tries < self.tries:
            self._transmit(request)
            return
        self._release(request)
        if request.deferred is not None:
            deferred, request.deferred = request.deferred, None
            deferred.errback(
                TimeoutError(f"no answer after {self.tries} tries of {self.timeout:g} s")
            )

    def _release(self, request: _Request) -> None:
        """The request is over: its Identifier is free again, queued requests go out."""
        del self._pending[(request.port, request.ident)]
        if request.timer is not None and request.timer.active():
            request.timer.cancel()
        request.timer = None
        if self._transports[request.port] is not None:
            self._free[request.port].append(request.ident)
        self._pump()

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self._received(0, data, addr)

    def _received(self, index: int, data: bytes, addr: Any) -> None:
        """One datagram on socket ``index``: a response to one of its requests, or dropped."""
        if tuple(addr[:2]) != self.server:
            return
        try:
            response = wire.parse(data)
        except wire.Malformed as e:
            self._drop_reply("bad", f"malformed: {e}")
            return
        request = self._pending.get((index, response.ident))
        if request is None:
            return  # a late answer to a request that timed out or was answered already
        if not wire.response_ok(response, request.authenticator, self.secret):
            self._drop_reply("bad", "bad Response Authenticator or Message-Authenticator")
            return
        if response.message_authenticator_at < 0:
            # RFC 3579 §3.2 for EAP; every response since BlastRADIUS (CVE-2024-3596).
            reason = f"{_code_name(response.code)} without Message-Authenticator"
            self._drop_reply("unsigned", reason)
            return
        self._release(request)
        if request.deferred is not None:
            self._conversations.touch(request.conversation_id)
            deferred, request.deferred = request.deferred, None
            deferred.callback((response, request.authenticator))

    def _drop_reply(self, kind: str, reason: str) -> None:
        self._throttle.emit(
            kind,
            LogLevel.warn,
            "dropped a reply from RADIUS server {host}:{port}: {reason}",
            host=self.server[0],
            port=self.server[1],
            reason=reason,
        )


class _ExtraPort(DatagramProtocol):
    """Socket ``index`` (1 or more) of a :class:`RadiusRelay`."""

    noisy = False

    def __init__(self, relay: RadiusRelay, index: int) -> None:
        self.relay = relay
        self.index = index

    def startProtocol(self) -> None:
        self.relay._attach(self.index, self.transport)

    def stopProtocol(self) -> None:
        self.relay._detach(self.index)

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.relay._received(self.index, data, addr)


_METHODS = frozenset(Type) - {Type.IDENTITY, Type.NOTIFICATION, Type.NAK}


def _code_name(code: int) -> str:
    try:
        return wire.Code(code).name
    except ValueError:
        return f"code {code}"


def _failure(eap: bytes, reason: str, eap_reply: bytes = b"", identity: str = "") -> Failure:
    """A Failure carrying the server's EAP-Failure, or one made for the peer's Response."""
    if not eap_reply:
        eap_reply = packet.failure(eap[1] if len(eap) > 1 else 0).encode()
    return Failure(eap_reply, identity, reason)


_FRAMED_IP = wire.key("Framed-IP-Address")
_FRAMED_POOL = wire.key("Framed-Pool")
_SESSION_TIMEOUT = wire.key("Session-Timeout")
_INTERIM = wire.key("Acct-Interim-Interval")
_CLASS = wire.key("Class")
# RFC 2865 §5.8: 0xFFFFFFFF lets the user choose, 0xFFFFFFFE has the NAS pick from a pool
MIN_INTERIM = 60  # seconds, RFC 2869 §5.16
_NO_ADDRESS = (b"\xff\xff\xff\xff", b"\xff\xff\xff\xfe")


def authorization(accept: wire.Packet) -> Authorization:
    """What an Access-Accept grants the session (see :class:`Authorization`); a value of
    the wrong size is ignored, as if absent (RFC 2865 §5: four octets for an address or
    an integer)."""

    def integer(kind: wire.Key) -> int | None:
        data = accept.get(kind)
        return int.from_bytes(data, "big") if data is not None and len(data) == 4 else None

    address = accept.get(_FRAMED_IP)
    pool = accept.get(_FRAMED_POOL)
    return Authorization(
        framed_ip=(
            ipaddress.IPv4Address(address)
            if address is not None and len(address) == 4 and address not in _NO_ADDRESS
            else None
        ),
        framed_pool=pool.decode("utf-8", "replace") if pool else None,
        session_timeout=integer(_SESSION_TIMEOUT) or None,
        # RFC 2869 §5.16: SHOULD NOT be below 60 s; a smaller one is raised to that
        interim_interval=max(integer(_INTERIM) or 0, MIN_INTERIM) if integer(_INTERIM) else None,
        classes=tuple(accept.attributes.get(_CLASS, ())),
    )
