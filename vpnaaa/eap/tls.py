"""The TLS server of PEAP and EAP-TLS: pyOpenSSL on memory BIOs, and EAP-TLS framing.

:class:`TlsServer` is sans-IO: TLS records in, TLS records out, application data in
between. :class:`Framing` carries those records in EAP-TLS Type-Data (RFC 5216 §3.1-3.2,
used by PEAP too): a Flags octet (L = length included, M = more fragments, S = start;
PEAP keeps its version in the low three bits), the 4-octet TLS Message Length when L is
set, then a fragment. Each fragment the peer sends with M set is acknowledged by an empty
request; each of ours with M set waits for the peer's empty response.

:func:`server_context` makes the context both methods share; with trust anchors it asks
for a client certificate and OpenSSL validates the chain in the handshake (EAP-TLS).
:func:`eap_tls_keys` derives EAP-TLS's MSK, EMSK and Session-Id for TLS 1.2 (RFC 5216
§2.3) and TLS 1.3 (RFC 9190 §2.3), and PEAP's (RFC 9427 §2.1) with its own Type.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from cryptography import x509
from OpenSSL import SSL, crypto
from OpenSSL._util import ffi, lib

from vpnaaa.eap.method import MethodError, Send
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


# ``[eap.tls] min_version`` / ``max_version`` values, oldest first.
VERSIONS = {"1.2": SSL.TLS1_2_VERSION, "1.3": SSL.TLS1_3_VERSION}


def server_context(
    identity: ServerIdentity,
    keylog: Callable[[bytes], None] | None = None,
    versions: tuple[str, str] = ("1.2", "1.2"),
    client_ca: Sequence[x509.Certificate] = (),
) -> SSL.Context:
    """A TLS server context for PEAP or EAP-TLS, TLS ``versions`` (lowest, highest, keys
    of :data:`VERSIONS`): in TLS 1.2 the :data:`CIPHERS` only (TLS 1.3 has AEAD suites
    only, OpenSSL's defaults), our preference over the client's, no renegotiation (inside
    EAP it serves no peer and is attack surface, RFC 5746), no compression (CRIME), no
    session cache (no resumption). TLS 1.2 tickets are off; TLS 1.3's NewSessionTicket
    cannot be switched off through pyOpenSSL (SSL_CTX_set_num_tickets is not bound), so
    OpenSSL sends two stateful tickets that no cache will ever redeem (a client offering
    one gets a full handshake; RFC 9190 §2.1.2 ties tickets to resumption, not done here).

    With ``client_ca`` (EAP-TLS, RFC 5216 §2.1.1) the server sends CertificateRequest
    naming those anchors, refuses a client without a certificate and has OpenSSL validate
    the chain to one of them in the handshake (a failure is recorded for the log line by
    :class:`TlsServer`). ``keylog`` gets each handshake's secrets as an NSS key log line
    (:meth:`vpnaaa.keylog.KeyLog.tls`)."""
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.set_min_proto_version(VERSIONS[versions[0]])
    context.set_max_proto_version(VERSIONS[versions[1]])
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
    if client_ca:
        store = context.get_cert_store()
        assert store is not None
        for anchor in map(crypto.X509.from_cryptography, client_ca):
            store.add_cert(anchor)
            context.add_client_ca(anchor)  # named in CertificateRequest
        context.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, _record_verify_error)
    if keylog is not None:
        context.set_keylog_callback(lambda _connection, line: keylog(line))
    return context


@dataclass(frozen=True)
class VerifyError:
    """Why OpenSSL refused a client's chain: the certificate it failed at (subject,
    serial, depth: 0 is the client's own) and X509_verify_cert_error_string's text."""

    subject: str
    serial: int
    error: str
    depth: int


def _record_verify_error(
    connection: SSL.Connection, certificate: crypto.X509, errno: int, depth: int, ok: int
) -> bool:
    """OpenSSL's verdict for each certificate of the client's chain, unchanged; the first
    failure is kept in the connection's app data (a list: no reference back to the
    connection, so no cycle) for :attr:`TlsServer.verify_error`."""
    errors = connection.get_app_data()
    if not ok and isinstance(errors, list) and not errors:
        cert = certificate.to_cryptography()
        reason = ffi.string(lib.X509_verify_cert_error_string(errno)).decode()
        errors.append(VerifyError(cert.subject.rfc4514_string(), cert.serial_number, reason, depth))
    return bool(ok)


class TlsServer:
    """One server-side TLS connection driven through memory BIOs."""

    def __init__(self, context: SSL.Context) -> None:
        self.connection = SSL.Connection(context, None)
        self.connection.set_accept_state()
        self.connection.set_app_data([])  # see _record_verify_error
        self.established = False

    @property
    def verify_error(self) -> VerifyError | None:
        """Why the client's certificate chain failed validation, if it did."""
        errors = self.connection.get_app_data()
        return errors[0] if errors else None

    @property
    def tls13(self) -> bool:
        return self.connection.get_protocol_version() == SSL.TLS1_3_VERSION

    def client_chain(self) -> list[x509.Certificate]:
        """The client's validated chain, leaf first, ending with the trust anchor."""
        chain = self.connection.get_verified_chain() or []
        return [certificate.to_cryptography() for certificate in chain]

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

    def export_key(self, label: bytes, length: int, context: bytes | None = None) -> bytes:
        """The TLS exporter (RFC 5705 §4; RFC 8446 §7.5 in TLS 1.3). In TLS 1.2 without
        context it is TLS-PRF(master secret, label, client random || server random),
        which RFC 5216 §2.3 uses for the MSK."""
        return self.connection.export_keying_material(label, length, context)


@dataclass(frozen=True)
class Keys:
    """What EAP-TLS exports (RFC 5247 §1.4): MSK, EMSK and the Session-Id."""

    msk: bytes = field(repr=False)
    emsk: bytes = field(repr=False)
    session_id: bytes


def eap_tls_keys(tls: TlsServer, eap_type: int) -> Keys:
    """RFC 5216 §2.3 (TLS 1.2): Key_Material = TLS-PRF-128(master secret, "client EAP
    encryption", client.random || server.random), Session-Id = Type || client.random ||
    server.random. RFC 9190 §2.3 (TLS 1.3): Key_Material = TLS-Exporter(
    "EXPORTER_EAP_TLS_Key_Material", Type, 128), Session-Id = Type || TLS-Exporter(
    "EXPORTER_EAP_TLS_Method-Id", Type, 64). MSK is Key_Material's first 64 octets,
    EMSK the next 64."""
    kind = bytes([eap_type])
    if tls.tls13:
        material = tls.export_key(b"EXPORTER_EAP_TLS_Key_Material", 128, kind)
        session_id = kind + tls.export_key(b"EXPORTER_EAP_TLS_Method-Id", 64, kind)
    else:
        material = tls.export_key(b"client EAP encryption", 128)
        connection = tls.connection
        session_id = kind + connection.client_random() + connection.server_random()
    return Keys(material[:64], material[64:], session_id)


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

    def step(self, data: bytes, room: int | None) -> bytes | Send:
        """One peer response (``room``: octets the next EAP Request may take): the
        framing's own answer (our ACK of its fragment, our next fragment after its ACK),
        or the peer's whole message, which is the method's to answer."""
        self.room = room
        message = self.receive(data)
        if message is None:
            return Send(self.ack())
        if self.sending:
            if message:
                raise MethodError("peer sent data while our fragments were pending")
            return Send(self.next_fragment())
        return message

    def send(self, message: bytes) -> Send:
        """Queue our whole message; its first fragment."""
        if not message:
            raise MethodError("nothing to send: TLS produced no records")
        self.queue(message)
        return Send(self.next_fragment())

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
