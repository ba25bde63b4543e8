"""Access-Request handling: RADIUS attributes to credentials, verdicts to replies.

PAP (RFC 2865 §5.2), CHAP (RFC 2865 §5.3), MS-CHAPv1 and MS-CHAPv2 (RFC 2548 §2.1, §2.3).
The backend decides; this module only translates, so the same backend serves IKEv2 too.
CHAP and MS-CHAPv1 are legacy (an MD5 of the cleartext password; DES of the NT hash):
a client entry must allow them (``allow_chap``, ``allow_mschapv1``), or they are refused.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from twisted.internet import defer
from twisted.python.failure import Failure

from vpnaaa import auth, logs
from vpnaaa.config import RadiusClient
from vpnaaa.radius import hiding, wire
from vpnaaa.radius.eap import EapHandler

log = logs.get("vpnaaa.radius")

# RFC 2548 §2.4.4-2.4.5: MPPE is allowed, with 40- or 128-bit RC4 keys (what NPS sends).
MPPE_POLICY_ALLOWED = 1
MPPE_TYPES_RC4_40_OR_128 = 6
REJECT_MESSAGE = "Authentication failed"
_REPLY_MESSAGE = wire.value("Reply-Message", REJECT_MESSAGE)
_MPPE_ATTRIBUTES = [
    wire.value("MS-MPPE-Encryption-Policy", MPPE_POLICY_ALLOWED),
    wire.value("MS-MPPE-Encryption-Types", MPPE_TYPES_RC4_40_OR_128),
]
_MS_CHAP2_SUCCESS = wire.key("MS-CHAP2-Success")
_MS_CHAP_ERROR = wire.key("MS-CHAP-Error")
_MS_CHAP_MPPE_KEYS = wire.key("MS-CHAP-MPPE-Keys")
_MS_MPPE_SEND_KEY = wire.key("MS-MPPE-Send-Key")
_MS_MPPE_RECV_KEY = wire.key("MS-MPPE-Recv-Key")


class BadRequest(Exception):
    """The request is well-formed RADIUS but its authentication attributes are not."""


@dataclass(frozen=True)
class Login:
    """What one Access-Request asks: who, how, and the MS-CHAP identifier to echo."""

    username: str
    credentials: auth.Credentials
    method: str
    ident: int = 0


def parse_login(request: wire.Packet, secret: bytes) -> Login:
    """Pick the authentication method the attributes carry (RFC 2865 §4.1)."""
    raw_name = request.get(wire.USER_NAME)
    if raw_name is None:
        raise BadRequest("no User-Name")
    try:
        username = raw_name.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("User-Name is not UTF-8") from None
    hidden = request.get(wire.USER_PASSWORD)
    if hidden is not None:
        # The exact octets: pyrad's PwDecrypt drops undecodable ones, which would let
        # b"pass\xff" match the password "pass".
        try:
            password = hiding.unhide(hidden, secret, request.authenticator)
        except ValueError as e:
            raise BadRequest(f"User-Password: {e}") from None
        return Login(username, auth.Pap(password), "PAP")
    chap = request.get(wire.CHAP_PASSWORD)
    if chap is not None:
        if len(chap) != 17:
            raise BadRequest(f"CHAP-Password of {len(chap)} octets, expected 17")
        challenge = request.get(wire.CHAP_CHALLENGE) or request.authenticator
        return Login(username, auth.Chap(chap[0], challenge, chap[1:]), "CHAP")
    ms_challenge = request.get(wire.MS_CHAP_CHALLENGE)
    v2 = request.get(wire.MS_CHAP2_RESPONSE)
    if v2 is not None:
        # RFC 2548 §2.3.2: Ident, Flags, Peer-Challenge(16), Reserved(8), Response(24)
        if len(v2) != 50 or ms_challenge is None or len(ms_challenge) != 16:
            raise BadRequest("MS-CHAP2-Response needs 50 octets and a 16-octet MS-CHAP-Challenge")
        return Login(username, auth.MsChapV2(ms_challenge, v2[2:18], v2[26:50]), "MS-CHAPv2", v2[0])
    v1 = request.get(wire.MS_CHAP_RESPONSE)
    if v1 is not None:
        # RFC 2548 §2.1.3: Ident, Flags, LM-Response(24), NT-Response(24); Flags 1 = use NT
        if len(v1) != 50 or ms_challenge is None or len(ms_challenge) != 8:
            raise BadRequest("MS-CHAP-Response needs 50 octets and an 8-octet MS-CHAP-Challenge")
        if not v1[1] & 1:
            raise BadRequest("MS-CHAP-Response with only an LM response (LM is not supported)")
        return Login(username, auth.MsChapV1(ms_challenge, v1[26:50]), "MS-CHAPv1", v1[0])
    if request.get(wire.EAP_MESSAGE) is not None:
        raise BadRequest("EAP is not enabled on this server")
    raise BadRequest("no User-Password, CHAP-Password or MS-CHAP attributes")


def accept(request: wire.Packet, secret: bytes, login: Login, verdict: auth.Accept) -> bytes:
    """Access-Accept with the method's proof and keys (RFC 2548 §2.3.3, §2.4)."""
    attributes: list[tuple[wire.Key, bytes]] = []
    if verdict.authenticator_response is not None:
        attributes.append(
            (_MS_CHAP2_SUCCESS, bytes([login.ident]) + verdict.authenticator_response)
        )
    if verdict.mppe_send_key is not None and verdict.mppe_recv_key is not None:
        vector = request.authenticator
        attributes.append(
            (_MS_MPPE_SEND_KEY, hiding.salt_encrypt(verdict.mppe_send_key, secret, vector))
        )
        attributes.append(
            (_MS_MPPE_RECV_KEY, hiding.salt_encrypt(verdict.mppe_recv_key, secret, vector))
        )
    if verdict.mschapv1_keys is not None:
        # RFC 2548 §2.4.1: hidden like User-Password with the Request Authenticator.
        attributes.append(
            (_MS_CHAP_MPPE_KEYS, hiding.hide(verdict.mschapv1_keys, secret, request.authenticator))
        )
    if isinstance(login.credentials, auth.MsChapV1 | auth.MsChapV2):
        attributes.extend(_MPPE_ATTRIBUTES)
    return wire.reply(request, wire.Code.ACCESS_ACCEPT, secret, attributes)


def reject(
    request: wire.Packet,
    secret: bytes,
    login: Login | None,
    message: tuple[wire.Key, bytes] = _REPLY_MESSAGE,
) -> bytes:
    """Access-Reject with a Reply-Message; MS-CHAP peers also get MS-CHAP-Error."""
    attributes = [message]
    if login is not None and isinstance(login.credentials, auth.MsChapV2):
        # RFC 2759 §6: E=691 (authentication failure), R=0 (no retry), a new challenge, V=3.
        text = f"E=691 R=0 C={os.urandom(16).hex().upper()} V=3 M={REJECT_MESSAGE}"
        attributes.append((_MS_CHAP_ERROR, bytes([login.ident]) + text.encode()))
    elif login is not None and isinstance(login.credentials, auth.MsChapV1):
        attributes.append((_MS_CHAP_ERROR, bytes([login.ident]) + b"E=691 R=0"))
    return wire.reply(request, wire.Code.ACCESS_REJECT, secret, attributes)


def _refused(method: str) -> tuple[wire.Key, bytes]:
    return wire.value("Reply-Message", f"{method} is not allowed for this client")


def _legacy_refusal(method: str, client: RadiusClient) -> str | None:
    """The radius.clients option that would allow ``method`` when the client entry does
    not (CHAP and MS-CHAPv1 are opt-ins), or None."""
    if method == "CHAP" and not client.allow_chap:
        return "allow_chap"
    if method == "MS-CHAPv1" and not client.allow_mschapv1:
        return "allow_mschapv1"
    return None


class AccessHandler:
    """Answers Access-Requests through an :class:`~vpnaaa.auth.AuthBackend`."""

    def __init__(self, backend: auth.AuthBackend, eap: EapHandler | None = None) -> None:
        self.backend = backend
        self.eap = eap

    def handle(
        self, request: wire.Packet, client: RadiusClient, peer: str
    ) -> bytes | defer.Deferred[bytes | None] | None:
        """The reply to ``request`` from ``client``; None (now or later) sends nothing."""
        secret = client.secret
        if self.eap is not None and wire.EAP_MESSAGE in request.attributes:
            return self.eap.handle(request, secret, peer, _source(request, client))
        try:
            login = parse_login(request, secret)
        except BadRequest as e:
            log.info(
                "Access-Reject to {peer} id {id}: {reason}",
                peer=peer,
                id=request.ident,
                reason=str(e),
            )
            return reject(request, secret, None)
        option = _legacy_refusal(login.method, client)
        if option is not None:
            log.info(
                "Access-Reject {method} user {user} for {peer}: {method} is not allowed for "
                "this client (radius.clients: {option} = false)",
                method=login.method,
                user=logs.quoted(login.username),
                peer=peer,
                option=option,
            )
            return reject(request, secret, login, _refused(login.method))
        d = self.backend.authenticate(login.username, login.credentials, _source(request, client))
        if d.called and not isinstance(d.result, Failure):
            # Decided already (a cached PAP check, CHAP, MS-CHAP): answer at once instead
            # of two rounds of callbacks, a seventh of a request's CPU.
            return self._answer(d.result, request, secret, login, peer)
        return d.addCallback(self._answer, request, secret, login, peer)

    @staticmethod
    def _answer(
        verdict: auth.Verdict, request: wire.Packet, secret: bytes, login: Login, peer: str
    ) -> bytes | None:
        if isinstance(verdict, auth.Busy):
            return None
        if isinstance(verdict, auth.Accept):
            if logs.debug_enabled():
                log.debug(
                    "Access-Accept {method} user {user} for {peer}",
                    method=login.method,
                    user=logs.quoted(login.username),
                    peer=peer,
                )
            return accept(request, secret, login, verdict)
        log.info(
            "Access-Reject {method} user {user} for {peer}: {reason}",
            method=login.method,
            user=logs.quoted(login.username),
            peer=peer,
            reason=verdict.reason,
        )
        return reject(request, secret, login)


_CALLING_STATION_ID = wire.key("Calling-Station-Id")


def _source(request: wire.Packet, client: RadiusClient) -> str:
    """Where a RADIUS user's password comes from, for the lockout: the NAS (its client
    entry) and the station it reports (RFC 2865 §5.31: a phone number, a MAC address),
    so wrong passwords typed elsewhere do not lock the user out at their own station."""
    station = request.get(_CALLING_STATION_ID)
    name = station.decode("utf-8", "replace")[:64] if station else "-"
    return f"{client.name}/{name}"
