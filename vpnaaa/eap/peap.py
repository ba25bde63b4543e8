"""PEAPv0, server side (draft-josefsson-pppext-eap-tls-eap-06, Microsoft [MS-PEAP]).

Phase 1 is a TLS 1.2 handshake carried in EAP-TLS framing (:mod:`vpnaaa.eap.tls`).
Phase 2 runs an inner EAP conversation inside the tunnel. PEAPv0 compresses the inner
packets to Type + Type-Data (no Code, Identifier or Length), except the Extensions
packets (type 33) that end phase 2 with a Result TLV, which keep their full header
([MS-PEAP] §3.1.5.6). The inner identity, stripped of a ``DOMAIN\\`` prefix, is the user.

The MSK is TLS-PRF(master, "client EAP encryption", randoms)[0:64] (draft §2.6,
RFC 5216 §2.3), or with cryptobinding the compound session key ([MS-PEAP] §3.1.5.7).
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from OpenSSL import SSL

from vpnaaa import logs
from vpnaaa.eap import cryptobinding, packet
from vpnaaa.eap.authenticator import Challenge, Conversation, MethodFactory, Success
from vpnaaa.eap.method import Done, MethodError, Send, Step
from vpnaaa.eap.packet import Code, Type
from vpnaaa.eap.tls import Framing, TlsServer

log = logs.get("vpnaaa.eap")

PEAP_VERSION = 0
TLS_KEY_LABEL = b"client EAP encryption"
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


class Peap:
    """One PEAPv0 exchange: TLS, an inner conversation, the Result (and cryptobinding)."""

    type = Type.PEAP

    def __init__(
        self,
        context: SSL.Context,
        inner_methods: list[tuple[int, MethodFactory]],
        fragment_size: int = 1024,
        use_cryptobinding: bool = True,
    ) -> None:
        self.tls = TlsServer(context)
        self.framing = Framing(fragment_size, PEAP_VERSION)
        self.inner = Conversation(inner_methods)
        self.inner_done: Success | Done | None = None
        self.use_cryptobinding = use_cryptobinding
        self.binding: cryptobinding.Binding | None = None
        self.phase = "tls"
        self.identifier = 0
        self._handlers: dict[str, Callable[[bytes], Step]] = {
            "tls": self._handshake,
            "tunnel-ready": self._tunnel_ready,
            "inner": self._inner,
            "result": self._result,
        }

    def start(self, identifier: int) -> bytes:
        return self.framing.start()

    def process(self, data: bytes, identifier: int) -> Step:
        self.identifier = identifier
        message = self.framing.receive(data)
        if message is None:
            return Send(self.framing.ack())
        if self.framing.sending:
            if message:
                raise MethodError("peer sent data while our fragments were pending")
            return Send(self.framing.next_fragment())
        return self._handlers[self.phase](message)

    def _send_records(self) -> Send:
        records = self.tls.outgoing()
        if not records:
            raise MethodError("nothing to send: TLS produced no records")
        self.framing.queue(records)
        return Send(self.framing.next_fragment())

    def _handshake(self, message: bytes) -> Step:
        if not message:
            raise MethodError("empty response during the TLS handshake")
        self.tls.receive(message)
        if self.tls.established:
            self.phase = "tunnel-ready"
        return self._send_records()

    def _tunnel_ready(self, message: bytes) -> Step:
        """The peer acknowledged our Finished: phase 2 begins with an inner Identity."""
        if message:
            self.tls.receive(message)  # e.g. a peer that sends nothing useful; ignore data
        self.phase = "inner"
        return self._send_inner(self.inner.start().eap)

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
        if success and self.use_cryptobinding:
            self.binding = cryptobinding.Binding(
                self.tls.export_key(TLS_KEY_LABEL, 128), result.msk
            )
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
        msk = self.tls.export_key(TLS_KEY_LABEL, 64)
        if self.binding is not None:
            peer_binding = tlvs.get(TLV_CRYPTOBINDING)
            if peer_binding is None:
                log.info(
                    "PEAP peer {user!r} sent no cryptobinding TLV; using the TLS MSK",
                    user=inner.identity,
                )
            else:
                if not self.binding.verify_response(peer_binding):
                    return Done(
                        False, identity=inner.identity, reason="cryptobinding Compound MAC mismatch"
                    )
                msk = self.binding.msk()
        return Done(True, identity=inner.identity, msk=msk)
