"""Access-Request handling: RADIUS attributes to credentials, verdicts to replies.

PAP (RFC 2865 §5.2), CHAP (RFC 2865 §5.3), MS-CHAPv1 and MS-CHAPv2 (RFC 2548 §2.1, §2.3).
The backend decides; this module only translates, so the same backend serves IKEv2 too.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from pyrad.packet import AuthPacket
from twisted.internet import defer

from vpnaaa import auth, logs
from vpnaaa.radius import wire

log = logs.get("vpnaaa.radius")

# RFC 2548 §2.4.4-2.4.5: MPPE is allowed, with 40- or 128-bit RC4 keys (what NPS sends).
MPPE_POLICY_ALLOWED = 1
MPPE_TYPES_RC4_40_OR_128 = 6
REJECT_MESSAGE = "Authentication failed"


class BadRequest(Exception):
    """The request is well-formed RADIUS but its authentication attributes are not."""


@dataclass(frozen=True)
class Login:
    """What one Access-Request asks: who, how, and the MS-CHAP identifier to echo."""

    username: str
    credentials: auth.Credentials
    method: str
    ident: int = 0


def decrypt_user_password(hidden: bytes, secret: bytes, authenticator: bytes) -> bytes:
    """Undo the User-Password hiding of RFC 2865 §5.2, returning the exact octets.

    pyrad's PwDecrypt returns text with undecodable octets dropped, which would let
    ``b"pass\\xff"`` match the password ``pass``; PAP needs the octets as sent.
    """
    if not hidden or len(hidden) % 16 or len(hidden) > 128:
        raise BadRequest(f"User-Password of {len(hidden)} octets is not 16..128 in steps of 16")
    plain = bytearray()
    last = authenticator
    for i in range(0, len(hidden), 16):
        block = hidden[i : i + 16]
        pad = hashlib.md5(secret + last).digest()
        plain += (int.from_bytes(block, "big") ^ int.from_bytes(pad, "big")).to_bytes(16, "big")
        last = block
    return bytes(plain).rstrip(b"\x00")


def _one(request: AuthPacket, key: int | tuple[int, int]) -> bytes | None:
    values = dict.get(request, key)
    return values[0] if values else None


def parse_login(request: AuthPacket) -> Login:
    """Pick the authentication method the attributes carry (RFC 2865 §4.1)."""
    raw_name = _one(request, wire.USER_NAME)
    if raw_name is None:
        raise BadRequest("no User-Name")
    try:
        username = raw_name.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("User-Name is not UTF-8") from None
    hidden = _one(request, wire.USER_PASSWORD)
    if hidden is not None:
        password = decrypt_user_password(hidden, request.secret, request.authenticator)
        return Login(username, auth.Pap(password), "PAP")
    chap = _one(request, wire.CHAP_PASSWORD)
    if chap is not None:
        if len(chap) != 17:
            raise BadRequest(f"CHAP-Password of {len(chap)} octets, expected 17")
        challenge = _one(request, wire.CHAP_CHALLENGE) or request.authenticator
        return Login(username, auth.Chap(chap[0], challenge, chap[1:]), "CHAP")
    ms_challenge = _one(request, wire.MS_CHAP_CHALLENGE)
    v2 = _one(request, wire.MS_CHAP2_RESPONSE)
    if v2 is not None:
        # RFC 2548 §2.3.2: Ident, Flags, Peer-Challenge(16), Reserved(8), Response(24)
        if len(v2) != 50 or ms_challenge is None or len(ms_challenge) != 16:
            raise BadRequest("MS-CHAP2-Response needs 50 octets and a 16-octet MS-CHAP-Challenge")
        return Login(username, auth.MsChapV2(ms_challenge, v2[2:18], v2[26:50]), "MS-CHAPv2", v2[0])
    v1 = _one(request, wire.MS_CHAP_RESPONSE)
    if v1 is not None:
        # RFC 2548 §2.1.3: Ident, Flags, LM-Response(24), NT-Response(24); Flags 1 = use NT
        if len(v1) != 50 or ms_challenge is None or len(ms_challenge) != 8:
            raise BadRequest("MS-CHAP-Response needs 50 octets and an 8-octet MS-CHAP-Challenge")
        if not v1[1] & 1:
            raise BadRequest("MS-CHAP-Response with only an LM response (LM is not supported)")
        return Login(username, auth.MsChapV1(ms_challenge, v1[26:50]), "MS-CHAPv1", v1[0])
    if _one(request, wire.EAP_MESSAGE) is not None:
        raise BadRequest("EAP is not enabled on this server")
    raise BadRequest("no User-Password, CHAP-Password or MS-CHAP attributes")


def accept(request: AuthPacket, login: Login, verdict: auth.Accept) -> bytes:
    """Access-Accept with the method's proof and keys (RFC 2548 §2.3.3, §2.4)."""
    reply = request.CreateReply()
    if verdict.authenticator_response is not None:
        reply.AddAttribute(
            "MS-CHAP2-Success", bytes([login.ident]) + verdict.authenticator_response
        )
    if verdict.mppe_send_key is not None:
        reply.AddAttribute("MS-MPPE-Send-Key", verdict.mppe_send_key)
        reply.AddAttribute("MS-MPPE-Recv-Key", verdict.mppe_recv_key)
    if verdict.mschapv1_keys is not None:
        # RFC 2548 §2.4.1: hidden like User-Password with the Request Authenticator.
        reply[wire.key("MS-CHAP-MPPE-Keys")] = [reply.PwCrypt(verdict.mschapv1_keys)]
    if isinstance(login.credentials, auth.MsChapV1 | auth.MsChapV2):
        reply.AddAttribute("MS-MPPE-Encryption-Policy", MPPE_POLICY_ALLOWED)
        reply.AddAttribute("MS-MPPE-Encryption-Types", MPPE_TYPES_RC4_40_OR_128)
    return reply.ReplyPacket()


def reject(request: AuthPacket, login: Login | None) -> bytes:
    """Access-Reject with a Reply-Message; MS-CHAP peers also get MS-CHAP-Error."""
    reply = request.CreateReply()
    reply.code = wire.Code.ACCESS_REJECT
    reply.AddAttribute("Reply-Message", REJECT_MESSAGE)
    if login is not None and isinstance(login.credentials, auth.MsChapV2):
        # RFC 2759 §6: E=691 (authentication failure), R=0 (no retry), a new challenge, V=3.
        text = f"E=691 R=0 C={os.urandom(16).hex().upper()} V=3 M={REJECT_MESSAGE}"
        reply.AddAttribute("MS-CHAP-Error", bytes([login.ident]) + text.encode())
    elif login is not None and isinstance(login.credentials, auth.MsChapV1):
        reply.AddAttribute("MS-CHAP-Error", bytes([login.ident]) + b"E=691 R=0")
    return reply.ReplyPacket()


class AccessHandler:
    """Answers Access-Requests through an :class:`~vpnaaa.auth.AuthBackend`."""

    def __init__(self, backend: auth.AuthBackend) -> None:
        self.backend = backend

    def handle(self, request: AuthPacket, peer: str) -> defer.Deferred[bytes]:
        try:
            login = parse_login(request)
        except BadRequest as e:
            log.info(
                "Access-Reject to {peer} id {id}: {reason}", peer=peer, id=request.id, reason=str(e)
            )
            return defer.succeed(reject(request, None))
        d = self.backend.authenticate(login.username, login.credentials)
        return d.addCallback(self._answer, request, login, peer)

    @staticmethod
    def _answer(verdict: auth.Verdict, request: AuthPacket, login: Login, peer: str) -> bytes:
        if isinstance(verdict, auth.Accept):
            if logs.debug_enabled():
                log.debug(
                    "Access-Accept {method} user {user!r} for {peer}",
                    method=login.method,
                    user=login.username,
                    peer=peer,
                )
            return accept(request, login, verdict)
        log.info(
            "Access-Reject {method} user {user!r} for {peer}: {reason}",
            method=login.method,
            user=login.username,
            peer=peer,
            reason=verdict.reason,
        )
        return reject(request, login)
