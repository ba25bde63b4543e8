"""The synchronous decision on a client certificate an EAP-TLS handshake presented (RFC
5216 §5.3, RFC 9190 §5.3): the rules IKEv2 certificate authentication will share, on
cryptography's verifier (:class:`~vpnaaa.certs.verify.ClientVerifier`: chain, EKU, key
usage), and the deny list (``vpnaaa deny``). OpenSSL has validated the chain once already
in the handshake (it needs the anchors to send the CertificateRequest's names); this check
holds EAP-TLS to the same rules as every other certificate here. CRLs and OCSP answer
through a Deferred (:class:`~vpnaaa.certs.revocation.RevocationChecker`), which the EAP
engine asks next.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Sequence

from cryptography import x509

from vpnaaa.certs.deny import DenyList
from vpnaaa.certs.verify import (
    CertificateRejected,
    ClientVerifier,
    VerifiedCertificate,
    parse_serial,
)


class CertificateCheck:
    """``check(chain)`` -> the verified certificate (its ``identity``: the best candidate,
    :mod:`vpnaaa.certs.identity`), or :class:`CertificateRejected` with the reason."""

    def __init__(
        self, verifier: ClientVerifier, deny: DenyList, clock: Callable[[], float]
    ) -> None:
        """``clock``: seconds since the epoch (the reactor's), for validity periods."""
        self.verifier = verifier
        self.deny = deny
        self.clock = clock

    def check(self, chain: Sequence[x509.Certificate]) -> VerifiedCertificate:
        """``chain``: the client's certificate first, then what OpenSSL built above it."""
        now = datetime.datetime.fromtimestamp(self.clock(), datetime.UTC)
        verified = self.verifier.verify(chain[0], chain[1:], now)
        if self.deny.denied(parse_serial(verified.serial)):
            raise CertificateRejected(f"serial {verified.serial} is on the deny list")
        return verified
