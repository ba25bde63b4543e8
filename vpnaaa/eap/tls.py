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
:class:`SessionCache` is the bounded record of the sessions that may be resumed (RFC 5216
§2.1.3, RFC 9190 §2.1.2/§5.7).
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

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
    TLS 1.2 tickets (RFC 5077) ever: the state stays here. No session cache: no
    resumption (TLS 1.3's NewSessionTicket cannot be switched off through pyOpenSSL,
    SSL_CTX_set_num_tickets is not bound, so a client gets two tickets that a full
    handshake answers) unless a :class:`SessionCache` turns OpenSSL's internal server
    cache on: TLS 1.2 sessions by session ID and, SSL_OP_NO_TICKET being set, TLS 1.3
    stateful tickets (the ticket is the cache key, single use; 53 octets on the wire,
    where a stateless one would carry the client's certificates in the last flight).

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
    errors = connection.get_app_data().errors
    if not ok and not errors:
        cert = certificate.to_cryptography()
        reason = ffi.string(lib.X509_verify_cert_error_string(errno)).decode()
        errors.append(VerifyError(cert.subject.rfc4514_string(), cert.serial_number, reason, depth))
    return bool(ok)


@dataclass
class _Handshake:
    """What the callbacks record about one connection (its app data: no reference back
    to the connection, so no cycle): the first chain validation failure, the session IDs
    the connection used, in order (TLS 1.3 replaces the session with each ticket), and
    the :class:`SessionCache` generation it runs in."""

    errors: list[VerifyError] = field(default_factory=list)
    sessions: list[bytes] = field(default_factory=list)
    generation: _Generation | None = None


WRITE_TICKET = b"SSLv3/TLS write session ticket"  # SSL_state_string_long, TLS 1.3


def _record_session(connection: SSL.Connection, where: int, _ret: int) -> None:
    """The info callback (each handshake state): the ID of the connection's session now.

    And only the last of TLS 1.3's tickets goes to OpenSSL's cache: it stores each as it
    is written, as the handshake ends and before the EAP method decides, but removes
    only the connection's current session (the last ticket) when the connection fails
    (a fatal alert, or freed without a shutdown). After a full handshake it writes two
    (after a resumption one), so the context stores nothing while the first is written
    (SSL_CB_HANDSHAKE_DONE comes before it, SSL_CB_LOOP after each; pyOpenSSL binds
    neither SSL_CTX_set_num_tickets nor a way to remove a session; supplicants resume
    with the newest ticket)."""
    handshake = connection.get_app_data()
    session_id = _session_id(lib.SSL_get_session(connection._ssl))
    if session_id and session_id not in handshake.sessions:
        handshake.sessions.append(session_id)
    generation = handshake.generation
    if generation is not None and connection.get_state_string() == WRITE_TICKET:
        if where & SSL.SSL_CB_HANDSHAKE_DONE:  # the tickets come next: two, one if resumed
            generation.hold(not lib.SSL_session_reused(connection._ssl))
        elif where & SSL.SSL_CB_LOOP:  # one ticket written
            generation.hold(False)


def _session_id(session: object) -> bytes:
    """The session ID of an SSL_SESSION, read from its DER form (OpenSSL's ASN.1
    SSL_SESSION: SEQUENCE { version INTEGER, sslVersion INTEGER, cipher OCTET STRING,
    sessionID OCTET STRING, ... }; pyOpenSSL binds no SSL_SESSION_get_id)."""
    if session == ffi.NULL:
        return b""
    size = lib.i2d_SSL_SESSION(session, ffi.NULL)
    if size <= 0:  # early in a handshake: no cipher chosen yet, nothing to encode
        return b""
    buffer = ffi.new("unsigned char[]", size)
    lib.i2d_SSL_SESSION(session, ffi.new("unsigned char **", buffer))
    der = bytes(ffi.buffer(buffer, size))
    position = _der_header(der, 0)[0]  # into the SEQUENCE
    for _ in range(3):  # past version, sslVersion, cipher
        start, length = _der_header(der, position)
        position = start + length
    start, length = _der_header(der, position)
    return der[start : start + length]


def _der_header(der: bytes, position: int) -> tuple[int, int]:
    """(offset of the contents, their length) of the DER element at ``position``."""
    length = der[position + 1]
    position += 2
    if length & 0x80:
        octets = length & 0x7F
        length = int.from_bytes(der[position : position + octets], "big")
        position += octets
    return position, length


T = TypeVar("T")


@dataclass(eq=False)
class _Generation(Generic[T]):
    """One TLS context and the sessions of it that may be resumed: session ID (TLS 1.3:
    the stateful ticket) -> (when it was stored, what it restores), oldest first.
    ``storing``: whether OpenSSL adds new sessions to the context's internal cache;
    ``stored``: when a session was last stored (clock seconds)."""

    context: SSL.Context
    entries: OrderedDict[bytes, tuple[float, T]] = field(default_factory=OrderedDict)
    storing: bool = True
    stored: float = 0.0

    def allow(self, storing: bool) -> None:
        """Let OpenSSL store new sessions in this context's cache, or only look them up."""
        if storing != self.storing:
            self.storing = storing
            self.hold(False)

    def hold(self, held: bool) -> None:
        """Have OpenSSL store nothing for now (``held``), or as :attr:`storing` says."""
        mode = SSL.SESS_CACHE_SERVER
        if held or not self.storing:
            mode |= lib.SSL_SESS_CACHE_NO_INTERNAL_STORE
        lib.SSL_CTX_set_session_cache_mode(self.context._context, mode)  # in use: raw


class SessionCache(Generic[T]):
    """The sessions of successful authentications that may be resumed, each with what
    the method restores (``T``: PEAP's inner identity; EAP-TLS re-checks the certificate
    the session keeps), at most ``capacity`` of them for ``lifetime`` seconds.

    Sessions live in OpenSSL's internal cache of a context: TLS 1.2 sessions by session
    ID (RFC 5246 §7.4.1.2), TLS 1.3 stateful tickets (RFC 8446 §4.6.1). OpenSSL stores
    each as its handshake ends, before the EAP method has decided, and removes it when
    expired (``lifetime`` is its timeout), when a TLS 1.3 ticket is used, or, for the
    connection's current session, when a connection ends without success (a fatal
    alert, or freed without a shutdown); of TLS 1.3's two tickets only the last is
    stored (:func:`_record_session`), so the cache holds successes only.
    pyOpenSSL binds no way to size that cache, so the bound of ``capacity`` works by
    generations of ``capacity // 2`` sessions, each a context made by ``make_context``.
    New sessions go to the current generation; once it holds its share it becomes the
    previous one (its new sessions are only those of its own sessions resumed) and a new
    context takes over, the former previous one being dropped with OpenSSL's memory of
    it (as it is once all its sessions expired). A ClientHello offering a session of the
    previous generation is handed its context (:meth:`context_for`). Resumption so keeps
    working under any steady load for the newest ``capacity // 2`` to ``capacity``
    sessions, much like the eviction of the oldest that OpenSSL's own cache does.
    ``clock``: seconds since the epoch, OpenSSL's time base for session timeouts.
    """

    def __init__(
        self,
        make_context: Callable[[], SSL.Context],
        clock: Callable[[], float],
        lifetime: int,
        capacity: int,
    ) -> None:
        self.make_context = make_context
        self.clock = clock
        self.lifetime = lifetime
        self.share = max(1, capacity // 2)  # sessions per generation
        self.current: _Generation[T] = self._generation()
        self.previous: _Generation[T] | None = None

    def __len__(self) -> int:
        previous = len(self.previous.entries) if self.previous is not None else 0
        return len(self.current.entries) + previous

    def _generation(self) -> _Generation[T]:
        """A new context with OpenSSL's server cache on, its sessions recorded."""
        context = self.make_context()
        context.set_session_id(b"vpnaaa")  # the session ID context resumption requires
        context.set_timeout(self.lifetime)
        context.set_session_cache_mode(SSL.SESS_CACHE_SERVER)
        context.set_info_callback(_record_session)
        return _Generation(context)

    def context_for(self, records: bytes) -> _Generation[T]:
        """The generation whose context answers the connection whose first TLS records
        are ``records``: the previous one if the ClientHello offers a session it keeps,
        else the current one."""
        self.expire()
        previous = self.previous
        if previous is not None and not previous.entries.keys().isdisjoint(
            client_hello(records).offered
        ):
            return previous
        return self.current

    def take(self, generation: _Generation[T], session_id: bytes) -> T | None:
        """What the session ``session_id`` of ``generation`` restores, removed (a
        successful end stores it again); None if unknown or expired."""
        self.expire()
        entry = generation.entries.pop(session_id, None)
        return entry[1] if entry is not None else None

    def store(self, generation: _Generation[T], session_ids: Sequence[bytes], value: T) -> None:
        """Remember a successful authentication's session in ``generation``, which
        OpenSSL stored it in."""
        generation.stored = now = self.clock()
        for session_id in session_ids:
            generation.entries[session_id] = (now, value)
        self.expire()

    def expire(self) -> None:
        """Drop entries older than ``lifetime``, and the previous generation once all its
        sessions have expired; start a new generation once the current one holds its
        share."""
        horizon = self.clock() - self.lifetime
        for generation in (self.current, self.previous):
            entries = generation.entries if generation is not None else {}
            while entries:
                session_id, (created, _) = next(iter(entries.items()))
                if created > horizon:
                    break
                del entries[session_id]
        if self.previous is not None and self.previous.stored <= horizon:
            self.previous = None
        if len(self.current.entries) >= self.share:
            self.previous, self.current = self.current, self._generation()
        if self.previous is not None:  # its own sessions resumed: one stored for each used
            self.previous.allow(len(self.previous.entries) <= self.share)


# What a TLS server runs on: one context, or (resumption) a cache's generations of them.
TlsContexts = SSL.Context | SessionCache


HANDSHAKE = 22  # TLS ContentType handshake (RFC 8446 §5.1)
CLIENT_HELLO = 1  # HandshakeType client_hello (RFC 8446 §4)
SUPPORTED_VERSIONS = 43  # ExtensionType supported_versions (RFC 8446 §4.2.1)
PRE_SHARED_KEY = 41  # ExtensionType pre_shared_key (RFC 8446 §4.2.11)
TLS13 = b"\x03\x04"


@dataclass(frozen=True)
class ClientHello:
    """What a ClientHello says about resumption: the session ID it offers
    (legacy_session_id, RFC 5246 §7.4.1.2; random in TLS 1.3's middlebox compatibility
    mode), whether it offers TLS 1.3 (supported_versions, RFC 8446 §4.2.1) and the
    identities of its pre_shared_key extension (RFC 8446 §4.2.11; OpenSSL's stateful
    tickets are session IDs)."""

    session_id: bytes = b""
    tls13: bool = False
    identities: tuple[bytes, ...] = ()

    @property
    def offered(self) -> frozenset[bytes]:
        """The sessions it may resume: its tickets, and its session ID unless it offers
        TLS 1.3 (which a server supporting it negotiates, resuming by ticket only)."""
        offered = set(self.identities)
        if not self.tls13 and self.session_id:
            offered.add(self.session_id)
        return frozenset(offered)


def client_hello(records: bytes) -> ClientHello:
    """The :class:`ClientHello` in the handshake records that open a connection (its
    fragments reassembled across records, RFC 8446 §5.1), read as far as it goes:
    anything malformed or cut short says no more (OpenSSL judges the ClientHello
    itself)."""
    message = bytearray()
    position = 0
    while position + 5 <= len(records) and records[position] == HANDSHAKE:
        length = int.from_bytes(records[position + 3 : position + 5], "big")
        message += records[position + 5 : position + 5 + length]
        position += 5 + length
    if len(message) < 4 or message[0] != CLIENT_HELLO:
        return ClientHello()
    hello = bytes(message[4 : 4 + int.from_bytes(message[1:4], "big")])
    session_id, tls13, identities = b"", False, []
    try:
        session_id, position = _vector(hello, 2 + 32, 1)  # past legacy_version, random
        position = _vector(hello, position, 2)[1]  # cipher_suites
        position = _vector(hello, position, 1)[1]  # legacy_compression_methods
        extensions = _vector(hello, position, 2)[0]
        position = 0
        while position < len(extensions):
            kind = int.from_bytes(extensions[position : position + 2], "big")
            body, position = _vector(extensions, position + 2, 2)
            if kind == SUPPORTED_VERSIONS:
                versions = _vector(body, 0, 1)[0]
                tls13 = any(versions[i : i + 2] == TLS13 for i in range(0, len(versions), 2))
            elif kind == PRE_SHARED_KEY:
                offered, cursor = _vector(body, 0, 2)[0], 0
                while cursor < len(offered):
                    identity, cursor = _vector(offered, cursor, 2)
                    identities.append(identity)
                    cursor += 4  # obfuscated_ticket_age
    except IndexError:
        pass
    return ClientHello(session_id, tls13, tuple(identities))


def _vector(data: bytes, position: int, width: int) -> tuple[bytes, int]:
    """The vector at ``position`` in ``data`` (a ``width``-octet length, then that many
    octets) and the position after it; IndexError if ``data`` ends before it does."""
    end = position + width + int.from_bytes(data[position : position + width], "big")
    if position + width > len(data) or end > len(data):
        raise IndexError(position)
    return data[position + width : end], end


class TlsServer:
    """One server-side TLS connection driven through memory BIOs, on ``contexts`` (a
    :class:`SessionCache`'s generation picked by the ClientHello, with resumption)."""

    def __init__(self, contexts: TlsContexts) -> None:
        self.contexts = contexts
        self.generation: _Generation | None = None
        self.kept = False  # whether OpenSSL stored the sessions the handshake made
        self.sessions = contexts if isinstance(contexts, SessionCache) else None
        self._connection: SSL.Connection | None = None
        self.established = False

    @property
    def connection(self) -> SSL.Connection:
        """The connection, made for the peer's first records (:meth:`receive`)."""
        if self._connection is None:
            raise MethodError("TLS: no ClientHello yet")
        return self._connection

    def _open(self, client_hello: bytes) -> SSL.Connection:
        if self.sessions is not None:
            self.generation = self.sessions.context_for(client_hello)
            context = self.generation.context
        else:
            assert isinstance(self.contexts, SSL.Context)
            context = self.contexts
        self._connection = connection = SSL.Connection(context, None)
        connection.set_accept_state()
        connection.set_app_data(_Handshake(generation=self.generation))  # for the callbacks
        return connection

    @property
    def verify_error(self) -> VerifyError | None:
        """Why the client's certificate chain failed validation, if it did."""
        if self._connection is None:
            return None
        errors = self._connection.get_app_data().errors
        return errors[0] if errors else None

    @property
    def resumed(self) -> bool:
        """Whether the handshake resumed a cached session (RFC 5216 §2.1.3)."""
        return bool(lib.SSL_session_reused(self.connection._ssl))

    def restored(self) -> object | None:
        """For a resumed handshake: what the cache kept for the session it resumed (the
        first the connection used), taken out of the cache; None when not resumed, not
        cached, or expired."""
        sessions = self.connection.get_app_data().sessions
        if self.sessions is None or self.generation is None or not self.resumed or not sessions:
            return None
        return self.sessions.take(self.generation, sessions[0])

    def succeeded(self, value: object) -> None:
        """The authentication succeeded: keep its sessions (OpenSSL drops a session whose
        connection is freed without a shutdown; EAP ends without close_notify) and
        remember ``value`` for each of them."""
        if self.sessions is None or self.generation is None:
            return
        self.connection.set_shutdown(SSL.SENT_SHUTDOWN | SSL.RECEIVED_SHUTDOWN)
        sessions = self.connection.get_app_data().sessions
        if self.tls13:
            sessions = sessions[-1:]  # its last ticket, the one OpenSSL stored
        if self.kept or (self.resumed and not self.tls13):  # TLS 1.2: the one resumed
            self.sessions.store(self.generation, sessions, value)

    @property
    def tls13(self) -> bool:
        return self.connection.get_protocol_version() == SSL.TLS1_3_VERSION

    def sent_certificates(self) -> list[bytes]:
        """The DER certificates the client sent (RFC 8446 §4.4.2, RFC 5246 §7.4.6), its
        own first, or that its resumed session kept."""
        leaf = self.connection.get_peer_certificate()
        sent = [leaf, *(self.connection.get_peer_cert_chain() or [])] if leaf else []
        return [crypto.dump_certificate(crypto.FILETYPE_ASN1, c) for c in sent]

    def client_chain(self) -> list[x509.Certificate]:
        """The client's validated chain, leaf first, ending with the trust anchor; after
        a resumption, the certificate and intermediates the session kept (validated when
        the session was made: the caller checks them again)."""
        if self.resumed:
            leaf = self.connection.get_peer_certificate()
            chain = [leaf, *(self.connection.get_peer_cert_chain() or [])] if leaf else []
        else:
            chain = self.connection.get_verified_chain() or []
        return [certificate.to_cryptography() for certificate in chain]

    def receive(self, records: bytes) -> bytes:
        """Feed TLS records from the peer; return decrypted application data, if any."""
        if not records:
            return b""  # a memory BIO refuses an empty write
        connection = self._connection or self._open(records)
        try:
            connection.bio_write(records)
            if not self.established:
                connection.do_handshake()
                self.established = True
                self.kept = self.generation is not None and self.generation.storing
            return self._read_application_data()
        except SSL.WantReadError:
            return b""
        except SSL.Error as e:
            raise MethodError(f"TLS: {_describe(e)}") from None
        finally:
            if self.generation is not None:  # whatever the handshake did meanwhile
                self.generation.hold(False)

    def send(self, data: bytes) -> None:
        """Encrypt application data (phase 2); call :meth:`outgoing` to collect it."""
        try:
            self.connection.sendall(data)
        except SSL.Error as e:
            raise MethodError(f"TLS: {_describe(e)}") from None

    def outgoing(self) -> bytes:
        """TLS records waiting to go to the peer."""
        if self._connection is None:
            return b""
        chunks = []
        while True:
            try:
                chunks.append(self._connection.bio_read(16384))
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
