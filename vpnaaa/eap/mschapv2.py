"""EAP-MSCHAPv2, server side (draft-kamath-pppext-eap-mschapv2-02; RFC 2759 inside).

Type-Data is OpCode, MS-CHAPv2-ID, MS-Length (the Type-Data length) and a value:

    Challenge (1)  Value-Size 16, challenge, server name
    Response  (2)  Value-Size 49: peer challenge 16, reserved 8, NT-Response 24, flags 1; name
    Success   (3)  request: "S=<authenticator response> M=<message>"; response: OpCode only
    Failure   (4)  request: "E=691 R=0 C=<challenge> V=3 M=<message>"; response: OpCode only

The Challenge's MS-CHAPv2-ID is its EAP Identifier; Success and Failure echo the ID of
the peer's Response, as hostapd does. The MSK is the
server's receive key then its send key (RFC 3079 §3.4), 32 octets, which the RADIUS
front end splits into MS-MPPE-Recv-Key and MS-MPPE-Send-Key.
"""

from __future__ import annotations

import os
import struct
from enum import IntEnum

from vpnaaa import mschap
from vpnaaa.eap.method import Directory, Done, MethodError, Send, Step
from vpnaaa.eap.packet import Type

_HEAD = struct.Struct("!BBH")
VALUE_SIZE_CHALLENGE = 16
VALUE_SIZE_RESPONSE = 49


class OpCode(IntEnum):
    CHALLENGE = 1
    RESPONSE = 2
    SUCCESS = 3
    FAILURE = 4


def _message(opcode: int, ms_id: int, body: bytes) -> bytes:
    return _HEAD.pack(opcode, ms_id, 4 + len(body)) + body


class MsChapV2:
    """One EAP-MSCHAPv2 exchange against a :class:`~vpnaaa.eap.method.Directory`, with a
    peer at ``source`` (whose wrong passwords the lockout counts)."""

    type = Type.MSCHAPV2

    def __init__(
        self, directory: Directory, server_name: str = "vpnaaa", source: str | None = None
    ) -> None:
        self.directory = directory
        self.source = source
        self.server_name = server_name.encode()
        self.challenge = os.urandom(16)
        self.state = "challenge"
        self.outcome: Done | None = None

    def refusal(self) -> Done | None:
        """RFC 2759 §6: the Failure packet is out, the peer's acknowledgment due."""
        outcome = self.outcome
        return outcome if outcome is not None and not outcome.success else None

    def start(self, identifier: int) -> bytes:
        body = bytes([VALUE_SIZE_CHALLENGE]) + self.challenge + self.server_name
        return _message(OpCode.CHALLENGE, identifier, body)

    def process(self, data: bytes, identifier: int, room: int | None = None) -> Step:
        if len(data) < 1:
            raise MethodError("empty EAP-MSCHAPv2 response")
        opcode = data[0]
        if self.state == "challenge" and opcode == OpCode.RESPONSE:
            return self._response(data)
        if self.state == "result" and self.outcome is not None:
            expected = OpCode.SUCCESS if self.outcome.success else OpCode.FAILURE
            if opcode != expected:
                raise MethodError(f"expected the peer's {expected.name} response, got {opcode}")
            return self.outcome
        raise MethodError(f"unexpected OpCode {opcode} in state {self.state}")

    def _response(self, data: bytes) -> Step:
        if len(data) < 4 + 1 + VALUE_SIZE_RESPONSE or data[4] != VALUE_SIZE_RESPONSE:
            raise MethodError("EAP-MSCHAPv2 Response is not Value-Size 49")
        value = data[5 : 5 + VALUE_SIZE_RESPONSE]
        peer_challenge, nt_response = value[:16], value[24:48]
        try:
            name = data[5 + VALUE_SIZE_RESPONSE :].decode("utf-8")
        except UnicodeDecodeError:
            raise MethodError("EAP-MSCHAPv2 name is not UTF-8") from None
        username = mschap.strip_domain(name)
        ms_id = data[1]
        candidate = self.directory.candidate(username, self.source)
        self.state = "result"
        user = candidate.user
        if user is not None and user.nt_hash is None:
            return self._fail(ms_id, username, "MS-CHAP is disabled for this user")
        hashed_name = username.encode()
        nt_hash = candidate.checked.nt_hash
        assert nt_hash is not None  # the dummy user has one
        ok = mschap.verify_nt_response(
            self.challenge, peer_challenge, hashed_name, nt_hash, nt_response
        )
        if candidate.refusal is not None or user is None:
            return self._fail(ms_id, username, candidate.refusal or "unknown user")
        self.directory.record(candidate, ok)
        if not ok:
            return self._fail(ms_id, username, "wrong password")
        send_key, recv_key = mschap.server_mppe_keys(user.nt_hash, nt_response)
        self.outcome = Done(
            True, identity=user.name, msk=recv_key + send_key, authorization=user.authorization
        )
        proof = mschap.generate_authenticator_response(
            user.nt_hash, nt_response, peer_challenge, self.challenge, hashed_name
        )
        return Send(_message(OpCode.SUCCESS, ms_id, proof + b" M=Welcome"))

    def _fail(self, ms_id: int, username: str, reason: str) -> Send:
        """RFC 2759 §6 failure packet; R=0: no retry, the conversation ends."""
        self.outcome = Done(False, identity=username, reason=reason)
        text = f"E=691 R=0 C={os.urandom(16).hex().upper()} V=3 M=Authentication failed"
        return Send(_message(OpCode.FAILURE, ms_id, text.encode()))
