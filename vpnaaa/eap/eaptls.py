"""EAP-TLS, server side: RFC 5216 (TLS 1.2) and RFC 9190 (TLS 1.3).

The peer authenticates with a certificate; the TLS server and the EAP-TLS framing are
PEAP's (:mod:`vpnaaa.eap.tls`). OpenSSL validates the client's chain to the configured
trust anchors during the handshake; then a :class:`ClientCertificateCheck` decides on the
validated chain and names the identity, which replaces the unauthenticated
EAP-Identity; then the engine asks whether the certificate is revoked
(:class:`~vpnaaa.eap.method.CheckRevocation`: deny list, CRL files, CRL distribution
points, OCSP, as for IKEv2 certificate authentication). Our last flight, which tells the
peer it is authenticated, waits for that verdict::

    server                                    peer
    EAP-TLS Start                     ->
                                      <-      ClientHello
    ServerHello .. [CertificateRequest] .. ServerHelloDone / Finished   (fragmented)
                                      <-      Certificate, [ClientKeyExchange],
                                              CertificateVerify, [CCS], Finished
    (chain validated by OpenSSL, then the certificate check, then revocation)
    TLS 1.2: CCS, Finished            ->
    TLS 1.3: [NewSessionTicket], application data 0x00 (RFC 9190 §2.5)
                                      <-      empty EAP-TLS response (the ACK)
    EAP-Success, keys (RFC 5216 §2.3, RFC 9190 §2.3)

Resumption (RFC 5216 §2.1.3, RFC 9190 §2.1.2), with ``[eap.tls] resumption``: the session
keeps the client's certificate and intermediates, and the check and the revocation verdict
run on them again (RFC 5216 §5.7, RFC 9190 §5.7: a certificate revoked or denied since is
refused). In TLS 1.2 the abbreviated handshake ends with the peer's Finished, and
EAP-Success follows the verdict at once.

A chain OpenSSL refuses, or one the check or the revocation verdict refuses, ends the
conversation with EAP-Failure (as hostapd does: no further TLS alert round) and a reason
naming the certificate's subject and serial: the front end's one log line for the refusal.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from cryptography import x509

from vpnaaa import logs
from vpnaaa.certs import MAX_CERTIFICATE_SIZE, MAX_CERTIFICATES
from vpnaaa.certs.revocation import RevocationResult
from vpnaaa.certs.verify import CertificateRejected, VerifiedCertificate
from vpnaaa.eap.method import CheckRevocation, Done, MethodError, Send, Step
from vpnaaa.eap.packet import Type
from vpnaaa.eap.tls import Framing, TlsContexts, TlsServer, eap_tls_keys

PROTECTED_SUCCESS = b"\x00"  # RFC 9190 §2.5: the server's last application data


class ClientCertificateCheck(Protocol):
    """What decides on a client certificate after OpenSSL has validated its chain (the
    daemon's: :class:`vpnaaa.certs.check.CertificateCheck`)."""

    def check(self, chain: Sequence[x509.Certificate]) -> VerifiedCertificate:
        """``chain`` (the client's certificate first, its trust anchor last) verified,
        with the identity it authenticates; raises :class:`CertificateRejected` with the
        reason."""
        ...


def describe(certificate: x509.Certificate) -> str:
    """Subject and serial, as the refusal's log line names a certificate."""
    return (
        f"{logs.quoted(certificate.subject.rfc4514_string())} serial {certificate.serial_number:#x}"
    )


class EapTls:
    """One EAP-TLS exchange with a peer that authenticates with a certificate."""

    type = Type.TLS

    def __init__(
        self, contexts: TlsContexts, check: ClientCertificateCheck, fragment_size: int = 1024
    ) -> None:
        self.tls = TlsServer(contexts)
        self.framing = Framing(fragment_size)
        self.check = check
        self.identity = ""
        self.verified: VerifiedCertificate | None = None  # while revocation is checked
        self.accepted: VerifiedCertificate | None = None  # once revocation said yes
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
                f"client certificate {logs.quoted(failed.subject)} serial {failed.serial:#x}"
                f"{f' (chain depth {failed.depth})' if failed.depth else ''}: "
                f"{failed.error} ({e})"
            )
        if not self.tls.established:
            return self.framing.send(self.tls.outgoing())
        sent = self.tls.sent_certificates()
        if len(sent) > MAX_CERTIFICATES or max(map(len, sent), default=0) > MAX_CERTIFICATE_SIZE:
            # what a session of it would keep; the same limits as IKE's CERT payloads
            return self._refuse(
                f"the client sent {len(sent)} certificates of up to "
                f"{max(map(len, sent))} octets (at most {MAX_CERTIFICATES} of "
                f"{MAX_CERTIFICATE_SIZE})"
            )
        self.tls.restored()  # out of the cache: stored again only if this one succeeds
        chain = self.tls.client_chain()
        if not chain:  # VERIFY_FAIL_IF_NO_PEER_CERT makes this unreachable; never trust it
            raise MethodError("TLS handshake finished without a client certificate")
        try:
            verified = self.check.check(chain)
        except CertificateRejected as e:
            return self._refuse(f"client certificate {describe(chain[0])}{self._resumed}: {e}")
        self.verified = verified
        return CheckRevocation(verified, self._revocation_checked)

    @property
    def _resumed(self) -> str:
        return " (resumed session)" if self.tls.resumed else ""

    def _revocation_checked(self, result: RevocationResult) -> Step:
        """The verdict on the client's certificate: refuse, or release our last flight
        (TLS 1.2: CCS and Finished; TLS 1.3: the protected success indication)."""
        verified, self.verified = self.verified, None
        assert verified is not None
        if not result.accepted:
            return self._refuse(
                f"client certificate {describe(verified.certificate)}{self._resumed}: "
                f"{result.reason}"
            )
        self.identity, self.accepted = verified.identity.value, verified
        if self.tls.tls13:
            self.tls.send(PROTECTED_SUCCESS)
        records = self.tls.outgoing()
        if not records:  # TLS 1.2 resumed: the peer's Finished ended it (RFC 5216 §2.1.3)
            return self._success()
        self.phase = "acknowledge"
        return self.framing.send(records)

    def _acknowledge(self, message: bytes) -> Step:
        """The peer's empty response to our last flight (RFC 5216 §2.1.1, RFC 9190
        §2.1.1); anything else it sends now can only be an alert or a protocol error."""
        if message and self.tls.receive(message):
            raise MethodError("application data from the peer after the handshake")
        if message:
            raise MethodError("TLS records instead of the final acknowledgement")
        return self._success()

    def _success(self) -> Done:
        """Keys over this handshake's randoms or exporter, resumed or not (RFC 5216 §2.3,
        RFC 9190 §2.3), and the certificate they authenticated; the session may be
        resumed later."""
        self.tls.succeeded(None)
        keys = eap_tls_keys(self.tls, Type.TLS)
        return Done(
            True,
            identity=self.identity,
            msk=keys.msk,
            emsk=keys.emsk,
            session_id=keys.session_id,
            certificate=self.accepted,
        )

    @staticmethod
    def _refuse(reason: str) -> Done:
        return Done(False, reason=reason)


# Phase -> handler, unbound (no reference cycle through bound methods: see peap.py).
_PHASES: dict[str, Callable[[EapTls, bytes], Step]] = {
    "handshake": EapTls._handshake,
    "acknowledge": EapTls._acknowledge,
}
