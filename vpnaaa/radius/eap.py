"""EAP over RADIUS (RFC 3579): the RADIUS front end of the shared EAP engine.

EAP-Message attributes are concatenated into one EAP packet (§3.1) and replies split into
253-octet attributes; the State attribute (RFC 2865 §5.24) carries the conversation id.
Access-Accept carries EAP-Success, the inner identity as User-Name, and the MSK as
MS-MPPE-Recv-Key (first half) and MS-MPPE-Send-Key (second half) (RFC 2548 §2.4.2-3,
as hostapd and FreeRADIUS split it). Message-Authenticator is mandatory on every EAP
packet; the server checks it before this module runs.

A reply must also echo the request's Proxy-State (RFC 2865 §5.33) within 4096 octets:
the engine is told how large the next EAP Request may be (:func:`eap_room`), so PEAP
fragments shrink to fit. When even that leaves no room, the conversation ends with an
Access-Reject carrying EAP-Failure (or, if even that cannot fit, no answer), with one log
line: never an oversized packet or an internal error.
"""

from __future__ import annotations

from twisted.internet import defer

from vpnaaa import logs
from vpnaaa.eap import packet
from vpnaaa.eap.authenticator import Challenge, Result, Success
from vpnaaa.eap.engine import EapEngine
from vpnaaa.radius import hiding, wire

log = logs.get("vpnaaa.radius")

MAX_VALUE = 253  # RFC 2865 §5: an attribute's value is at most 253 octets
_STATE = wire.key("State")
_MS_MPPE_SEND_KEY = wire.key("MS-MPPE-Send-Key")
_MS_MPPE_RECV_KEY = wire.key("MS-MPPE-Recv-Key")
_REPLY_MESSAGE = wire.value("Reply-Message", "Authentication failed")


def eap_attributes(eap: bytes) -> list[tuple[wire.Key, bytes]]:
    """One EAP packet as consecutive EAP-Message attributes (RFC 3579 §3.1)."""
    return [(wire.EAP_MESSAGE, eap[i : i + MAX_VALUE]) for i in range(0, len(eap), MAX_VALUE)]


def eap_room(request: wire.Packet) -> int:
    """The largest EAP packet an Access-Challenge to ``request`` can carry within 4096
    octets (RFC 2865 §3): what the header, Message-Authenticator, State (a 16-octet
    conversation id) and the echoed Proxy-State leave, less two octets per EAP-Message
    attribute (RFC 3579 §3.1). A proxy's long Proxy-State makes PEAP fragments smaller."""
    left = wire.MAX_LENGTH - 20 - 18 - 18 - wire.proxy_state_octets(request)
    return left - 2 * -(-left // (MAX_VALUE + 2))


class EapHandler:
    """Answers Access-Requests carrying EAP-Message."""

    def __init__(self, engine: EapEngine) -> None:
        self.engine = engine

    def handle(
        self, request: wire.Packet, secret: bytes, peer: str, station: str | None = None
    ) -> defer.Deferred[bytes | None]:
        """Answer ``request`` from the NAS at ``peer``, for a user at ``station``."""
        eap = b"".join(request.attributes[wire.EAP_MESSAGE])
        state = request.get(_STATE)
        d = self.engine.step(state, eap, eap_room(request), station)
        return d.addCallback(self._fitted, request, secret, peer)

    def _fitted(
        self, step: tuple[bytes, Result], request: wire.Packet, secret: bytes, peer: str
    ) -> bytes | None:
        """The answer, or when it cannot fit beside the Proxy-State: end the conversation
        with EAP-Failure in an Access-Reject, or with silence if even that is too large."""
        conversation_id, result = step
        try:
            return self._answer(step, request, secret, peer)
        except wire.TooLarge as e:
            problem = str(e)
        self.engine.forget(conversation_id)
        failure = packet.failure(result.eap[1] if len(result.eap) > 1 else 0).encode()
        attributes = [*eap_attributes(failure), _REPLY_MESSAGE]
        try:
            answer: bytes | None = wire.reply(request, wire.Code.ACCESS_REJECT, secret, attributes)
            outcome = "Access-Reject with EAP-Failure instead"
        except wire.TooLarge:
            answer, outcome = None, "dropped: even an Access-Reject does not fit"
        log.warn(
            "EAP conversation with {peer} ended: {problem}; {outcome}",
            peer=peer,
            problem=problem,
            outcome=outcome,
        )
        return answer

    @staticmethod
    def _answer(
        step: tuple[bytes, Result], request: wire.Packet, secret: bytes, peer: str
    ) -> bytes:
        conversation_id, result = step
        attributes = eap_attributes(result.eap)
        if isinstance(result, Challenge):
            attributes.append((_STATE, conversation_id))
            return wire.reply(request, wire.Code.ACCESS_CHALLENGE, secret, attributes)
        if isinstance(result, Success):
            half = len(result.msk) // 2
            vector = request.authenticator
            attributes += [
                wire.value("User-Name", result.identity),
                (_MS_MPPE_RECV_KEY, hiding.salt_encrypt(result.msk[:half], secret, vector)),
                (_MS_MPPE_SEND_KEY, hiding.salt_encrypt(result.msk[half:], secret, vector)),
            ]
            answer = wire.reply(request, wire.Code.ACCESS_ACCEPT, secret, attributes)
            log.info(
                "Access-Accept EAP-{method} user {user} for {peer}",
                method=result.method,
                user=logs.quoted(result.identity),
                peer=peer,
            )
            return answer
        attributes.append(_REPLY_MESSAGE)
        answer = wire.reply(request, wire.Code.ACCESS_REJECT, secret, attributes)
        log.info(
            "Access-Reject EAP user {user} for {peer}: {reason}",
            user=logs.quoted(result.identity),
            peer=peer,
            reason=result.reason,
        )
        return answer
