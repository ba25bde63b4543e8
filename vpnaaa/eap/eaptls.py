"""EAP-TLS, server side: RFC 5216 (TLS 1.2) and RFC 9190 (TLS 1.3).

The peer authenticates with a certificate; the TLS server and the EAP-TLS framing are
PEAP's (:mod:`vpnaaa.eap.tls`). OpenSSL validates the client's chain to the configured
trust anchors during the handshake; then a :class:`ClientCertificateCheck` decides on the
validated chain and names the identity, which replaces the unauthenticated
EAP-Identity::

    server                                    peer
    EAP-TLS Start                     ->
                                      <-      ClientHello
    ServerHello .. [CertificateRequest] .. ServerHelloDone / Finished   (fragmented)
                                      <-      Certificate, [ClientKeyExchange],
                                              CertificateVerify, [CCS], Finished
    (chain validated by OpenSSL, then the certificate check)
    TLS 1.2: CCS, Finished            ->
    TLS 1.3: [NewSessionTicket], application data 0x00 (RFC 9190 §2.5)
                                      <-      empty EAP-TLS response (the ACK)
    EAP-Success, keys (RFC 5216 §2.3, RFC 9190 §2.3)

A chain OpenSSL refuses, or one the check refuses, ends the conversation with
EAP-Failure (as hostapd does: no further TLS alert round) and a reason naming the
certificate's subject and serial: the front end's one log line for the refusal.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL

from vpnaaa.eap.method import Done, MethodError, Send, Step
from vpnaaa.eap.packet import Type
from vpnaaa.eap.tls import Framing, TlsServer, eap_tls_keys
from vpnaaa.pki import PkiError

PROTECTED_SUCCESS = b"\x00"  # RFC 9190 §2.5: the server's last application data


class CertificateRejected(Exception):
    """A :class:`ClientCertificateCheck` refuses the certificate; the message is the
    reason logged (no secrets: certificates are public)."""


class ClientCertificateCheck(Protocol):
    """What decides on a client certificate after OpenSSL has validated its chain."""

    def check(self, chain: Sequence[x509.Certificate]) -> str:
        """The identity ``chain`` (the client's certificate first, its trust anchor last)
        authenticates; raises :class:`CertificateRejected` with the reason."""
        ...


def certificate_identity(certificate: x509.Certificate) -> str:
    """The name a certificate gives its holder: its first subjectAltName e-mail address
    (RFC 5280 §4.2.1.6 rfc822Name), else DNS name (a machine), else its subject's
    commonName, else the whole subject DN (RFC 4514)."""
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        names = None
    if names is not None:
        for kind in (x509.RFC822Name, x509.DNSName):
            found = names.get_values_for_type(kind)
            if found:
                return found[0]
    common = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if common:
        value = common[0].value
        return value if isinstance(value, str) else value.decode("utf-8", "replace")
    return certificate.subject.rfc4514_string()


class ClientAuthUsageOnly:
    """The minimal check: only that a certificate carrying an extendedKeyUsage lists
    clientAuth (RFC 5280 §4.2.1.12; one without the extension passes), and the identity
    from :func:`certificate_identity`. No revocation, no deny list, no identity rules:
    the full checker (vpnaaa/certs) replaces it."""

    def check(self, chain: Sequence[x509.Certificate]) -> str:
        leaf = chain[0]
        try:
            usages = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            return certificate_identity(leaf)
        if ExtendedKeyUsageOID.CLIENT_AUTH not in usages:
            raise CertificateRejected("its extendedKeyUsage does not include clientAuth")
        return certificate_identity(leaf)


def load_client_ca(path: Path) -> list[x509.Certificate]:
    """The trust anchors in a PEM file (``[eap.tls] client_ca``)."""
    try:
        anchors = x509.load_pem_x509_certificates(path.read_bytes())
    except OSError as e:
        raise PkiError(f"{path}: {e.strerror}") from None
    except ValueError as e:
        raise PkiError(f"{path}: no PEM certificates: {e}") from None
    return anchors


def describe(certificate: x509.Certificate) -> str:
    """Subject and serial, as the refusal's log line names a certificate."""
    return f"{certificate.subject.rfc4514_string()!r} serial {certificate.serial_number:#x}"


class EapTls:
    """One EAP-TLS exchange with a peer that authenticates with a certificate."""

    type = Type.TLS

    def __init__(
        self, context: SSL.Context, check: ClientCertificateCheck, fragment_size: int = 1024
    ) -> None:
        self.tls = TlsServer(context)
        self.framing = Framing(fragment_size)
        self.check = check
        self.identity = ""
        self.phase = "handshake"

    def start(self, identifier: int) -> bytes:
        return self.framing.start()

    def refusal(self) -> Done | None:
        """None: EAP-TLS delivers its failures at once, nothing waits for the peer."""
        return None

    def process(self, data: bytes, identifier: int, room: int | None = None) -> Step:
        message = self.framing.step(data, room)
        if isinstance(message, Send):
            return message
        return _PHASES[self.phase](self, message)

    def _handshake(self, message: bytes) -> Step:
        if not message:
            raise MethodError("empty response during the TLS handshake")
        try:
            self.tls.receive(message)
        except MethodError as e:
            failed = self.tls.verify_error
            if failed is None:
                raise
            return self._refuse(
                f"client certificate {failed.subject!r} serial {failed.serial:#x}"
                f"{f' (chain depth {failed.depth})' if failed.depth else ''}: "
                f"{failed.error} ({e})"
            )
        if not self.tls.established:
            return self.framing.send(self.tls.outgoing())
        chain = self.tls.client_chain()
        if not chain:  # VERIFY_FAIL_IF_NO_PEER_CERT makes this unreachable; never trust it
            raise MethodError("TLS handshake finished without a client certificate")
        try:
            self.identity = self.check.check(chain)
        except CertificateRejected as e:
            return self._refuse(f"client certificate {describe(chain[0])}: {e}")
        if self.tls.tls13:
            self.tls.send(PROTECTED_SUCCESS)
        self.phase = "acknowledge"
        return self.framing.send(self.tls.outgoing())

    def _acknowledge(self, message: bytes) -> Step:
        """The peer's empty response to our last flight (RFC 5216 §2.1.1, RFC 9190
        §2.1.1); anything else it sends now can only be an alert or a protocol error."""
        if message and self.tls.receive(message):
            raise MethodError("application data from the peer after the handshake")
        if message:
            raise MethodError("TLS records instead of the final acknowledgement")
        keys = eap_tls_keys(self.tls, Type.TLS)
        return Done(
            True,
            identity=self.identity,
            msk=keys.msk,
            emsk=keys.emsk,
            session_id=keys.session_id,
        )

    @staticmethod
    def _refuse(reason: str) -> Done:
        return Done(False, reason=reason)


# Phase -> handler, unbound (no reference cycle through bound methods: see peap.py).
_PHASES: dict[str, Callable[[EapTls, bytes], Step]] = {
    "handshake": EapTls._handshake,
    "acknowledge": EapTls._acknowledge,
}
