"""A minimal PEAPv0 or EAP-TLS peer for in-process tests: pyOpenSSL as the TLS client on
memory BIOs, EAP-TLS framing (RFC 5216 §3.1-3.2) on its side, up to the first application
data (PEAP's first phase 2 request, EAP-TLS 1.3's protected success indication).

It answers one EAP Request at a time (:meth:`PeapPeer.answer`) and stops being useful once
the tunnel is up: :attr:`inner` then holds the first decrypted application data.
"""

from __future__ import annotations

from collections.abc import Sequence

from OpenSSL import SSL, crypto

from vpnaaa.eap import packet
from vpnaaa.eap.packet import Code, Type
from vpnaaa.eap.tls import FLAG_LENGTH, FLAG_MORE, FLAG_START

FRAGMENT = 4000  # octets per fragment we send (a TLS 1.3 ClientHello with ML-KEM: ~1.5 KiB)


class PeapPeer:
    """PEAP (``kind``) or EAP-TLS (``kind=Type.TLS`` with a ``certificate``: PEM
    certificate and PEM key), TLS 1.2 at most unless ``max_version`` says otherwise."""

    def __init__(
        self,
        ciphers: bytes | None = None,
        kind: int = Type.PEAP,
        certificate: tuple[bytes, bytes] | None = None,
        max_version: int = SSL.TLS1_2_VERSION,
        chain: Sequence[bytes] = (),
    ) -> None:
        """``certificate``: (PEM certificate, PEM key) for EAP-TLS, sent with the PEM
        certificates of ``chain`` after it."""
        context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        context.set_max_proto_version(max_version)
        if ciphers is not None:
            context.set_cipher_list(ciphers)
        if certificate is not None:
            context.use_certificate(crypto.load_certificate(crypto.FILETYPE_PEM, certificate[0]))
            context.use_privatekey(crypto.load_privatekey(crypto.FILETYPE_PEM, certificate[1]))
        for pem in chain:
            context.add_extra_chain_cert(crypto.load_certificate(crypto.FILETYPE_PEM, pem))
        self.kind = kind
        self.tls = SSL.Connection(context, None)
        self.tls.set_connect_state()
        self.established = False
        self.inner = b""
        self._incoming = b""
        self._outgoing = b""  # the rest of a message being sent in fragments

    def identity(self, request: bytes, name: bytes = b"anonymous") -> bytes:
        """The EAP-Response/Identity to the first request."""
        return self._response(request, Type.IDENTITY, name)

    def answer(self, request: bytes) -> bytes:
        """The EAP-Response/PEAP to one EAP-Request/PEAP."""
        data = packet.parse(request).data
        flags, body = data[0], data[1:]
        if self._outgoing and not body:  # the server's ACK of our last fragment
            return self._fragment(request)
        if flags & FLAG_START:
            return self._peap(request, self.flight())
        if flags & FLAG_LENGTH:
            body = body[4:]
        self._incoming += body
        if flags & FLAG_MORE:
            return self._peap(request, b"")  # ACK (RFC 5216 §3.2)
        self.tls.bio_write(self._incoming)
        self._incoming = b""
        if self.established:
            self.inner = self.tls.recv(65536)
            return self._peap(request, b"")
        return self._peap(request, self.flight())

    def flight(self) -> bytes:
        """Advance the handshake; the records to send (empty once established)."""
        try:
            self.tls.do_handshake()
            self.established = True
        except SSL.WantReadError:
            pass
        return self.outgoing()

    def outgoing(self) -> bytes:
        chunks = []
        while True:
            try:
                chunks.append(self.tls.bio_read(65536))
            except SSL.WantReadError:
                return b"".join(chunks)

    def _peap(self, request: bytes, records: bytes) -> bytes:
        if len(records) <= FRAGMENT:
            return self._response(request, self.kind, b"\x00" + records)
        self._outgoing = records  # RFC 5216 §3.2: L and M, then M until the last
        return self._fragment(request, FLAG_LENGTH, len(records).to_bytes(4, "big"))

    def _fragment(self, request: bytes, flags: int = 0, length: bytes = b"") -> bytes:
        part, self._outgoing = self._outgoing[:FRAGMENT], self._outgoing[FRAGMENT:]
        flags |= FLAG_MORE if self._outgoing else 0
        return self._response(request, self.kind, bytes([flags]) + length + part)

    @staticmethod
    def _response(request: bytes, kind: int, data: bytes) -> bytes:
        identifier = packet.parse(request).identifier
        return packet.Packet(Code.RESPONSE, identifier, kind, data).encode()
