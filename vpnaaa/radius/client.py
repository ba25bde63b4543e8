"""EAP relayed to an external RADIUS server (RFC 3579): the "ASA + ISE" topology.

:class:`RadiusRelay` serves the same ``begin()`` / ``step(conversation, eap)`` interface as
the local :class:`~vpnaaa.eap.engine.EapEngine`, so the IKEv2 responder does not know which
one it talks to. The relay asks the peer for its identity itself, then carries every EAP
Response in an Access-Request (User-Name, EAP-Message, Message-Authenticator, the State of
the last Access-Challenge) and turns the answer into a Challenge, a Success with the MSK
from MS-MPPE-Recv-Key | MS-MPPE-Send-Key (RFC 2548 §2.4.2-3, as hostapd and FreeRADIUS
split it), or a Failure. Requests are retransmitted on a timer; a silent server fails the
conversation with one log line.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import DatagramProtocol

from vpnaaa import logs
from vpnaaa.eap import packet
from vpnaaa.eap.authenticator import Challenge, Failure, Result, Success
from vpnaaa.eap.packet import Code, Type
from vpnaaa.radius import hiding, wire
from vpnaaa.radius.eap import eap_attributes

log = logs.get("vpnaaa.radius")

_STATE = wire.key("State")
_RECV_KEY = wire.key("MS-MPPE-Recv-Key")
_SEND_KEY = wire.key("MS-MPPE-Send-Key")
_NAS_PORT_TYPE_VIRTUAL = wire.value("NAS-Port-Type", "Virtual")
_SERVICE_TYPE_FRAMED = wire.value("Service-Type", "Framed-User")


@dataclass
class _Conversation:
    identifier: int  # of our EAP-Request/Identity
    identity: str = ""
    state: bytes | None = None
    last_active: float = 0.0


@dataclass
class _Pending:
    authenticator: bytes
    datagram: bytes
    deferred: defer.Deferred[tuple[wire.Packet, bytes]]  # the response, our authenticator
    tries: int = 1
    timer: Any = field(default=None, repr=False)


class RadiusRelay(DatagramProtocol):
    """A RADIUS client for EAP (RFC 3579 §2.6.2 retransmission, §3.2 Message-Authenticator)."""

    noisy = False

    def __init__(
        self,
        server: tuple[str, int],
        secret: bytes,
        clock: IReactorTime,
        nas_identifier: str = "vpnaaa",
        timeout: float = 3.0,
        tries: int = 3,
        idle_timeout: float = 60.0,
    ) -> None:
        self.server = server
        self.secret = secret
        self.clock = clock
        self.nas_identifier = wire.value("NAS-Identifier", nas_identifier)
        self.timeout = timeout
        self.tries = tries
        self.idle_timeout = idle_timeout
        self._conversations: OrderedDict[bytes, _Conversation] = OrderedDict()
        self._pending: dict[int, _Pending] = {}
        self._next_ident = os.urandom(1)[0]

    def __len__(self) -> int:
        return len(self._conversations)

    # -- the EAP backend interface -------------------------------------------------------

    def begin(self, source: str = "") -> tuple[bytes, Result]:
        """EAP-Request/Identity from the relay itself (the NAS role, RFC 3579 §2.1)."""
        self.expire()
        conversation_id = os.urandom(16)
        identifier = os.urandom(1)[0]
        self._conversations[conversation_id] = _Conversation(identifier, last_active=self._now())
        return conversation_id, Challenge(packet.request(identifier, Type.IDENTITY).encode())

    def step(self, conversation_id: bytes, eap: bytes) -> defer.Deferred[tuple[bytes, Result]]:
        conversation = self._conversations.get(conversation_id)
        if conversation is None:
            return defer.succeed(
                (conversation_id, _failure(eap, "unknown or expired conversation"))
            )
        conversation.last_active = self._now()
        self._conversations.move_to_end(conversation_id)
        if not conversation.identity:
            try:
                response = packet.parse(eap)
            except packet.EapError as e:
                return defer.succeed((conversation_id, _failure(eap, f"malformed EAP: {e}")))
            if response.code == Code.RESPONSE and response.type == Type.IDENTITY:
                conversation.identity = response.data.decode("utf-8", "replace")
        attributes = [
            wire.value("User-Name", conversation.identity or "anonymous"),
            *eap_attributes(eap),
            self.nas_identifier,
            _NAS_PORT_TYPE_VIRTUAL,
            _SERVICE_TYPE_FRAMED,
        ]
        if conversation.state is not None:
            attributes.append((_STATE, conversation.state))
        d = self._send(attributes)
        d.addCallback(self._answer, conversation_id, conversation, eap)
        d.addErrback(self._no_answer, conversation_id, conversation, eap)
        return d

    def forget(self, conversation_id: bytes) -> None:
        self._conversations.pop(conversation_id, None)

    def expire(self) -> int:
        horizon = self._now() - self.idle_timeout
        dropped = 0
        while self._conversations:
            oldest = next(iter(self._conversations.values()))
            if oldest.last_active > horizon:
                break
            self._conversations.popitem(last=False)
            dropped += 1
        return dropped

    # -- answers --------------------------------------------------------------------------

    def _answer(
        self,
        exchange: tuple[wire.Packet, bytes],
        conversation_id: bytes,
        conversation: _Conversation,
        eap: bytes,
    ) -> tuple[bytes, Result]:
        response, request_authenticator = exchange
        eap_reply = b"".join(response.attributes.get(wire.EAP_MESSAGE, ()))
        if response.code == wire.Code.ACCESS_CHALLENGE and eap_reply:
            conversation.state = response.get(_STATE)
            return conversation_id, Challenge(eap_reply)
        self._conversations.pop(conversation_id, None)
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
                    eap, f"Access-Accept without usable MPPE keys: {e}"
                )
            name = response.get(wire.USER_NAME)
            identity = name.decode("utf-8", "replace") if name else conversation.identity
            success = eap_reply or packet.success(eap[1] if len(eap) > 1 else 0).encode()
            return conversation_id, Success(success, identity, msk, "RADIUS")
        reason = f"{wire.Code(response.code).name} from {self.server[0]}"
        return conversation_id, _failure(eap, reason, eap_reply, conversation.identity)

    def _no_answer(
        self, failure: Any, conversation_id: bytes, conversation: _Conversation, eap: bytes
    ) -> tuple[bytes, Result]:
        self._conversations.pop(conversation_id, None)
        reason = failure.getErrorMessage()
        log.error(
            "RADIUS server {host}:{port}: {reason}",
            host=self.server[0],
            port=self.server[1],
            reason=reason,
        )
        return conversation_id, _failure(eap, reason, identity=conversation.identity)

    # -- the wire ---------------------------------------------------------------------------

    def _send(
        self, attributes: list[tuple[wire.Key, bytes]]
    ) -> defer.Deferred[tuple[wire.Packet, bytes]]:
        ident = self._next_ident
        if ident in self._pending:
            return defer.fail(RuntimeError("256 requests outstanding"))
        self._next_ident = (ident + 1) % 256
        authenticator = os.urandom(16)
        datagram = wire.access_request(ident, authenticator, self.secret, attributes)
        pending = _Pending(authenticator, datagram, defer.Deferred())
        self._pending[ident] = pending
        self._transmit(ident, pending)
        return pending.deferred

    def _transmit(self, ident: int, pending: _Pending) -> None:
        self.transport.write(pending.datagram, self.server)
        pending.timer = self.clock.callLater(self.timeout, self._retry, ident)

    def _retry(self, ident: int) -> None:
        pending = self._pending.get(ident)
        if pending is None:
            return
        if pending.tries >= self.tries:
            del self._pending[ident]
            pending.deferred.errback(
                TimeoutError(f"no answer after {self.tries} tries of {self.timeout:g} s")
            )
            return
        pending.tries += 1
        self._transmit(ident, pending)

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        if addr[:2] != self.server:
            return
        try:
            response = wire.parse(data)
        except wire.Malformed as e:
            log.warn("dropped reply from the RADIUS server: {reason}", reason=str(e))
            return
        pending = self._pending.get(response.ident)
        if pending is None:
            return
        if not wire.response_ok(response, pending.authenticator, self.secret):
            log.warn("dropped reply from the RADIUS server: bad authenticator (wrong secret?)")
            return
        if wire.EAP_MESSAGE in response.attributes and response.message_authenticator_at < 0:
            # RFC 3579 §3.2: such a reply MUST be silently discarded.
            log.warn(
                "dropped reply from the RADIUS server: EAP-Message without Message-Authenticator"
            )
            return
        del self._pending[response.ident]
        if pending.timer is not None and pending.timer.active():
            pending.timer.cancel()
        pending.deferred.callback((response, pending.authenticator))

    def _now(self) -> float:
        return self.clock.seconds()


def _failure(eap: bytes, reason: str, eap_reply: bytes = b"", identity: str = "") -> Failure:
    """A Failure carrying the server's EAP-Failure, or one made for the peer's Response."""
    if not eap_reply:
        eap_reply = packet.failure(eap[1] if len(eap) > 1 else 0).encode()
    return Failure(eap_reply, identity, reason)
