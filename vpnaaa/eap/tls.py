"""The TLS server inside PEAP: pyOpenSSL on memory BIOs, and EAP-TLS record framing.

:class:`TlsServer` is sans-IO: TLS records in, TLS records out, application data in
between. :class:`Framing` carries those records in EAP-TLS style Type-Data (RFC 5216
§3.1-3.2, used by PEAP): a Flags octet (L = length included, M = more fragments,
S = start; PEAP keeps its version in the low three bits), the 4-octet TLS Message Length
when L is set, then a fragment. Each fragment the peer sends with M set is acknowledged
by an empty request; each of ours with M set waits for the peer's empty response.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from OpenSSL import SSL, crypto

from vpnaaa.eap.method import MethodError
from vpnaaa.pki import ServerIdentity

FLAG_LENGTH = 0x80
FLAG_MORE = 0x40
FLAG_START = 0x20
VERSION_MASK = 0x07
MAX_MESSAGE = 64 * 1024  # refuse reassembling more than this (a TLS flight is a few KiB)
_LENGTH = struct.Struct("!I")


# TLS 1.2 suites, in our order of preference: ECDHE key exchange (forward secrecy) with an
# AEAD cipher (RFC 5288 AES-GCM, RFC 7905 ChaCha20-Poly1305), for ECDSA and RSA server keys.
CIPHERS = (
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    # The one CBC suite, last: TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA384 (RFC 5289). Schannel
    # before Windows 10 (Windows 7, 8, 8.1 and their servers) offers GCM only with ECDSA
    # keys, so with the usual RSA certificate this is the best suite their PEAP client
    # can agree to (first in their default order since update 3042058). Still ECDHE, and
    # HMAC-SHA384 with TLS 1.2's explicit IVs (no BEAST); nothing else CBC is accepted.
    "ECDHE-RSA-AES256-SHA384",
)


def server_context(
    identity: ServerIdentity, keylog: Callable[[bytes], None] | None = None
) -> SSL.Context:
    """A TLS 1.2 server context for PEAP (TLS 1.3 needs RFC 9427, not done here): the
    :data:`CIPHERS` only, our preference over the client's, no renegotiation (a TLS
    renegotiation inside PEAP serves no peer and is attack surface, RFC 5746), no
    tickets, no compression (CRIME), no session cache (no resumption). ``keylog`` gets
    each handshake's secrets as an NSS key log line (:meth:`vpnaaa.keylog.KeyLog.tls`)."""
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    context.set_max_proto_version(SSL.TLS1_2_VERSION)
    context.set_cipher_list(":".join(CIPHERS).encode())
    context.set_options(
        SSL.OP_NO_TICKET
        | SSL.OP_NO_COMPRESSION
        | SSL.OP_CIPHER_SERVER_PREFERENCE
        | SSL.OP_NO_RENEGOTIATION
    )
    context.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    context.use_certificate(crypto.X509.from_cryptography(identity.cert))
    context.use_privatekey(crypto.PKey.from_cryptography_key(identity.key))
    for certificate in identity.chain:
        context.add_extra_chain_cert(crypto.X509.from_cryptography(certificate))
    context.check_privatekey()
    if keylog is not None:
        context.set_keylog_callback(lambda _connection, line: keylog(line))
    return context


class TlsServer:
    """One server-side TLS connection driven through memory BIOs."""

    def __init__(self, context: SSL.Context) -> None:
        self.connection = SSL.Connection(context, None)
        self.connection.set_accept_state()
        self.established = False

    def receive(self, records: bytes) -> bytes:
        """Feed TLS records from the peer; return decrypted application data, if any."""
        if not records:
            return b""  # a memory BIO refuses an empty write
        try:
            self.connection.bio_write(records)
            if not self.established:
                self.connection.do_handshake()
                self.established = True
            return self._read_application_data()
        except SSL.WantReadError:
            return b""
        except SSL.Error as e:
            raise MethodError(f"TLS: {_describe(e)}") from None

    def send(self, data: bytes) -> None:
        """Encrypt application data (phase 2); call :meth:`outgoing` to collect it."""
        try:
            self.connection.sendall(data)
        except SSL.Error as e:
            raise MethodError(f"TLS: {_describe(e)}") from None

    def outgoing(self) -> bytes:
        """TLS records waiting to go to the peer."""
        chunks = []
        while True:
            try:
                chunks.append(self.connection.bio_read(16384))
            except SSL.WantReadError:
                return b"".join(chunks)

    def _read_application_data(self) -> bytes:
        chunks = []
        while True:
            try:
                chunks.append(self.connection.recv(16384))
            except SSL.WantReadError:
                return b"".join(chunks)
            except SSL.ZeroReturnError:
                raise MethodError("TLS: the peer closed the connection") from None

    def export_key(self, label: bytes, length: int) -> bytes:
        """TLS-PRF(master secret, label, client random || server random) (RFC 5705 §4
        without context, which RFC 5216 §2.3 uses for the MSK)."""
        return self.connection.export_keying_material(label, length)


def _describe(error: SSL.Error) -> str:
    reasons = [part[2] for part in error.args[0] if len(part) == 3] if error.args else []
    return ", ".join(str(r) for r in reasons) or repr(error)


EAP_OVERHEAD = 5 + 1 + 4  # EAP header with Type, Flags, TLS Message Length


class Framing:
    """EAP-TLS style fragmentation and reassembly for one conversation."""

    def __init__(self, fragment_size: int, version: int = 0) -> None:
        self.fragment_size = fragment_size
        self.room: int | None = None  # octets the next whole EAP Request may take
        self.version = version
        self._incoming = bytearray()
        self._expected = 0
        self._outgoing = b""
        self._first = False

    def start(self) -> bytes:
        """The first request: Start flag, no data."""
        return bytes([FLAG_START | self.version])

    def receive(self, data: bytes) -> bytes | None:
        """Add one peer fragment. Returns the whole message once complete, ``b""`` for a
        bare ACK, or None when more fragments are due (send :meth:`ack`)."""
        if not data:
            raise MethodError("empty EAP-TLS response (no Flags)")
        flags = data[0]
        body = data[1:]
        if flags & FLAG_LENGTH:
            if len(body) < 4:
                raise MethodError("L flag without a TLS Message Length")
            total = _LENGTH.unpack_from(body)[0]
            body = body[4:]
            if total > MAX_MESSAGE:
                raise MethodError(f"TLS Message Length {total} exceeds {MAX_MESSAGE}")
            if not self._incoming:
                self._expected = total
        self._incoming += body
        if len(self._incoming) > (self._expected or MAX_MESSAGE):
            raise MethodError("more TLS data than the announced TLS Message Length")
        if flags & FLAG_MORE:
            return None
        message = bytes(self._incoming)
        self._incoming.clear()
        self._expected = 0
        return message

    def ack(self) -> bytes:
        """Acknowledge a fragment (RFC 5216 §3.2): Flags only."""
        return bytes([self.version])

    def queue(self, message: bytes) -> None:
        self._outgoing = message
        self._first = True

    @property
    def sending(self) -> bool:
        """Whether fragments of our message are still waiting for the peer's ACKs."""
        return bool(self._outgoing)

    def next_fragment(self) -> bytes:
        """The next fragment of the queued message, with L on the first of several; no
        larger than ``fragment_size``, nor than ``room`` leaves beside the EAP header,
        Flags and TLS Message Length (RFC 5216 §3.1)."""
        message = self._outgoing
        size = self.fragment_size
        if self.room is not None:
            size = max(1, min(size, self.room - EAP_OVERHEAD))
        chunk = message[:size]
        self._outgoing = message[size:]
        flags = self.version
        header = b""
        if self._outgoing:
            flags |= FLAG_MORE
            if self._first:
                flags |= FLAG_LENGTH
                header = _LENGTH.pack(len(message))
        self._first = False
        return bytes([flags]) + header + chunk
