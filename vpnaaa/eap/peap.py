"""PEAPv0, server side (draft-josefsson-pppext-eap-tls-eap-06, Microsoft [MS-PEAP]).

Phase 1 is a TLS 1.2 or TLS 1.3 handshake carried in EAP-TLS framing
(:mod:`vpnaaa.eap.tls`). Phase 2 runs an inner EAP conversation inside the tunnel.
PEAPv0 compresses the inner packets to Type + Type-Data (no Code, Identifier or Length),
except the Extensions packets (type 33) that end phase 2 with a Result TLV, which keep
their full header ([MS-PEAP] §3.1.5.6). The inner identity, stripped of a ``DOMAIN\\``
prefix, is the user.

Keys: Key_Material is TLS-PRF(master, "client EAP encryption", randoms)[0:128] in TLS 1.2
(draft §2.6, RFC 5216 §2.3) and TLS-Exporter("EXPORTER_EAP_TLS_Key_Material", 0x19, 128)
in TLS 1.3 (RFC 9427 §2.1, §2.5). The MSK is its first 64 octets, or with cryptobinding
the compound session key ([MS-PEAP] §3.1.5.7), whose Tunnel Key is Key_Material's first
60 octets in either version (RFC 9427 §2.5). TLS 1.3 also exports the EMSK
(Key_Material[64:128]) and Session-Id (0x19 || TLS-Exporter("EXPORTER_EAP_TLS_Method-Id",
0x19, 64)), RFC 9427 §2.1; eapol_test 2.10 derives all of these the same way.

The server never ends the conversation before phase 2 has: success needs the inner
method's success and the Result TLV (with "required" cryptobinding, the Crypto-Binding
TLV too) in the peer's Extensions response, inside the tunnel: the protected result RFC
9427 keeps for PEAP (no RFC 9190 §2.5 0x00 octet). TLS 1.3 early data is never accepted:
OpenSSL's server takes none unless SSL_CTX_set_max_early_data raises the limit, which
vpnaaa never does, and phase 2 starts only after the client's Finished.

Cryptobinding is "off" (no Crypto-Binding TLV offered), "optional" (offered; a peer that
answers without one still gets the TLS MSK) or "required" (hostapd's crypto_binding=2: a
peer without a valid Crypto-Binding TLV fails, so an attacker cannot relay the inner
method into a tunnel of its own, [MS-PEAP] §3.1.5.5).

Fast reconnect ([MS-PEAP]), with ``[eap.tls] resumption``: a
resumed TLS session whose user still exists with the same password skips the inner method;
the server sends the Result TLV at once, the user is the one the session authenticated,
the MSK the TLS one of the new handshake. No Crypto-Binding TLV then: there is no inner
key to bind. Otherwise (not cached, user deleted, password changed, locked out) phase 2
runs in full.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from vpnaaa import logs
from vpnaaa.eap import cryptobinding, packet
from vpnaaa.eap.authenticator import Challenge, Conversation, Failure, MethodFactory, Success
from vpnaaa.eap.method import Directory, Done, MethodError, Send, Step
from vpnaaa.eap.packet import Code, Type
from vpnaaa.eap.tls import Framing, TlsContexts, TlsServer, eap_tls_keys
from vpnaaa.users import User

log = logs.get("vpnaaa.eap")

PEAP_VERSION = 0
_TLV = struct.Struct("!HH")
TLV_MANDATORY = 0x8000
TLV_RESULT = 3  # [MS-PEAP] §2.2.8.1
TLV_CRYPTOBINDING = 12  # [MS-PEAP] §2.2.8.2
RESULT_SUCCESS = 1
RESULT_FAILURE = 2


def tlv(kind: int, value: bytes, mandatory: bool = True) -> bytes:
    return _TLV.pack(kind | (TLV_MANDATORY if mandatory else 0), len(value)) + value


def parse_tlvs(data: bytes) -> dict[int, bytes]:
    """The TLVs of an Extensions packet by type (mandatory bit cleared)."""
    found = {}
    position = 0
    while position < len(data):
        if position + 4 > len(data):
            raise MethodError("truncated TLV header")
        kind, length = _TLV.unpack_from(data, position)
        value = data[position + 4 : position + 4 + length]
        if len(value) != length:
            raise MethodError(f"TLV {kind & 0x3FFF} overruns the Extensions packet")
        found[kind & 0x3FFF] = value
        position += 4 + length
    return found


@dataclass(frozen=True)
class Grant:
    """What a PEAP session that may be resumed authenticated: the user, and a digest of
    the password hashes it was checked against (a changed password voids it)."""

    identity: str
    credentials: bytes = field(repr=False)


def credentials(user: User) -> bytes:
    return hashlib.sha256(user.password_hash.encode() + b"\x00" + (user.nt_hash or b"")).digest()


class Peap:
    """One PEAPv0 exchange: TLS, an inner conversation, the Result (and cryptobinding)."""

    type = Type.PEAP

    def __init__(
        self,
        contexts: TlsContexts,
        inner_methods: list[tuple[int, MethodFactory]],
        fragment_size: int = 1024,
        cryptobinding: str = "optional",
        source: str | None = None,
        users: Directory | None = None,
    ) -> None:
        self.tls = TlsServer(contexts)
        self.users = users  # for fast reconnect: who a resumed session's user is now
        self.source = source
        self.framing = Framing(fragment_size, PEAP_VERSION)
        self.inner = Conversation(inner_methods, source)
        self.inner_done: Success | Done | None = None
        self.cryptobinding = cryptobinding  # "off", "optional" or "required"
        self.binding: cryptobinding.Binding | None = None
        self.phase = "tls"
        self.identifier = 0

    def start(self, identifier: int) -> bytes:
        return self.framing.start()

    def refusal(self) -> Done | None:
        """The inner method's, or the inner conversation's end without success."""
        done = self.inner_done
        if isinstance(done, Done | Failure) and not getattr(done, "success", False):
            return Done(False, identity=done.identity, reason=done.reason)
        return self.inner.refusal()

    def process(self, data: bytes, identifier: int, room: int | None = None) -> Step:
        self.identifier = identifier
        message = self.framing.step(data, room)
        if isinstance(message, Send):
            return message
        return _PHASES[self.phase](self, message)

    def _send_records(self) -> Send:
        return self.framing.send(self.tls.outgoing())

    def _handshake(self, message: bytes) -> Step:
        if not message:
            raise MethodError("empty response during the TLS handshake")
        self.tls.receive(message)
        if not self.tls.established:
            return self._send_records()
        records = self.tls.outgoing()
        if not records:  # TLS 1.2 resumed: the peer's Finished ended it; phase 2 now
            return self._phase2()
        self.phase = "tunnel-ready"
        return self.framing.send(records)

    def _tunnel_ready(self, message: bytes) -> Step:
        """The peer acknowledged our Finished: phase 2 begins."""
        if message:
            self.tls.receive(message)  # e.g. a peer that sends nothing useful; ignore data
        return self._phase2()

    def _phase2(self) -> Step:
        """An inner Identity request, or for a session resumed by a user who is still the
        same, the Result TLV (fast reconnect)."""
        user = self._reconnecting()
        if user is None:
            self.phase = "inner"
            return self._send_inner(self.inner.start().eap)
        self.inner_done = Success(b"", user.name, b"", "MSCHAPV2", authorization=user.authorization)
        self.phase = "result"
        self.inner.identifier = (self.inner.identifier + 1) % 256
        result = tlv(TLV_RESULT, struct.pack("!H", RESULT_SUCCESS))
        return self._send_inner(
            packet.request(self.inner.identifier, Type.EXTENSIONS, result).encode()
        )

    def _reconnecting(self) -> User | None:
        """The user a resumed session authenticated, if the user store still has them
        with the same password and not locked out ([MS-PEAP]: the server decides)."""
        grant = self.tls.restored()
        if not isinstance(grant, Grant) or self.users is None:
            return None
        candidate = self.users.candidate(grant.identity, self.source)
        user = candidate.user
        if (
            candidate.refusal is None
            and user is not None
            and credentials(user) == grant.credentials
        ):
            return user
        log.info(
            "PEAP session of {user} resumed, but {why}: inner authentication again",
            user=logs.quoted(grant.identity),
            why=candidate.refusal or "the password changed",
        )
        return None

    def _send_inner(self, eap: bytes) -> Send:
        inner = packet.parse(eap)
        compressed = eap if inner.type == Type.EXTENSIONS else eap[4:]
        self.tls.send(compressed)
        return self._send_records()

    def _decrypt(self, message: bytes) -> bytes:
        data = self.tls.receive(message)
        if not data:
            raise MethodError("phase 2 response without application data")
        return data

    def _inner(self, message: bytes) -> Step:
        data = self._decrypt(message)
        full = packet.Packet(Code.RESPONSE, self.inner.identifier, data[0], data[1:]).encode()
        result = self.inner.receive(full)
        if isinstance(result, Challenge):
            return self._send_inner(result.eap)
        self.inner_done = result
        self.phase = "result"
        success = isinstance(result, Success)
        tlvs = tlv(TLV_RESULT, struct.pack("!H", RESULT_SUCCESS if success else RESULT_FAILURE))
        if success and self.cryptobinding != "off":
            tunnel = eap_tls_keys(self.tls, Type.PEAP)  # Key_Material = MSK | EMSK
            self.binding = cryptobinding.Binding(tunnel.msk + tunnel.emsk, result.msk)
            tlvs += tlv(TLV_CRYPTOBINDING, self.binding.request(), mandatory=False)
        self.inner.identifier = (self.inner.identifier + 1) % 256
        extensions = packet.request(self.inner.identifier, Type.EXTENSIONS, tlvs)
        return self._send_inner(extensions.encode())

    def _result(self, message: bytes) -> Step:
        data = self._decrypt(message)
        try:
            response = packet.parse(data)
        except packet.EapError as e:
            raise MethodError(f"Extensions response: {e}") from None
        if response.code != Code.RESPONSE or response.type != Type.EXTENSIONS:
            raise MethodError(f"expected an Extensions response, got type {response.type}")
        tlvs = parse_tlvs(response.data)
        result = tlvs.get(TLV_RESULT)
        inner = self.inner_done
        if not isinstance(inner, Success):
            reason = inner.reason if inner is not None else "inner method failed"
            return Done(False, identity=getattr(inner, "identity", ""), reason=reason)
        if result != struct.pack("!H", RESULT_SUCCESS):
            return Done(False, identity=inner.identity, reason="peer reported phase 2 failure")
        keys = eap_tls_keys(self.tls, Type.PEAP)
        msk = keys.msk
        if self.binding is not None:
            peer_binding = tlvs.get(TLV_CRYPTOBINDING)
            if peer_binding is None and self.cryptobinding == "required":
                return Done(
                    False,
                    identity=inner.identity,
                    reason="no Crypto-Binding TLV (peap_cryptobinding = required)",
                )
            if peer_binding is None:
                log.info(
                    "PEAP peer {user} sent no cryptobinding TLV; using the TLS MSK",
                    user=logs.quoted(inner.identity),
                )
            else:
                if not self.binding.verify_response(peer_binding):
                    return Done(
                        False, identity=inner.identity, reason="cryptobinding Compound MAC mismatch"
                    )
                msk = self.binding.msk()
        self._keep_session(inner.identity)
        tls13 = self.tls.tls13  # RFC 9427 §2.1; [MS-PEAP] defines no EMSK or Session-Id
        return Done(
            True,
            identity=inner.identity,
            msk=msk,
            authorization=inner.authorization,
            emsk=keys.emsk if tls13 else b"",
            session_id=keys.session_id if tls13 else b"",
        )

    def _keep_session(self, identity: str) -> None:
        """Let the session be resumed for ``identity`` (fast reconnect)."""
        user = self.users.candidate(identity, self.source).user if self.users else None
        self.tls.succeeded(Grant(identity, credentials(user)) if user is not None else None)


# Phase -> handler, unbound: a table of bound methods on the instance would be a reference
# cycle, and the TLS connection (~90 KiB of OpenSSL memory) would wait for the cyclic
# garbage collector instead of going the moment its conversation is forgotten.
_PHASES: dict[str, Callable[[Peap, bytes], Step]] = {
    "tls": Peap._handshake,
    "tunnel-ready": Peap._tunnel_ready,
    "inner": Peap._inner,
    "result": Peap._result,
}
