"""Client certificate chain validation on cryptography's X.509 verification API.

:class:`ClientVerifier` holds the trust anchors (PEM files read once, at construction) and
checks a peer's leaf certificate and the intermediates it sent (RFC 5280 §6 path validation,
done by ``cryptography.x509.verification``'s client verifier) with the key-usage rules below.
Nothing here does I/O after construction, and the time is the caller's.

Key usage rules (what Windows, macOS, iOS and Android client certificates carry):

- extendedKeyUsage, when present, must name one of :data:`ACCEPTED_EKUS`: id-kp-clientAuth
  (what Windows user and machine certificates carry, and what EAP-TLS peers need), the IP
  security IKE intermediate OID 1.3.6.1.5.5.8.2.2 (Windows and macOS IKE certificates), and
  the two RFC 4945 §5.1.3.12 says an implementation that checks EKU MUST accept:
  id-kp-ipsecIKE and anyExtendedKeyUsage. The same rule applies to intermediate CAs that
  carry an EKU (an EKU on a CA constrains the certificates below it).
- no extendedKeyUsage at all is accepted: RFC 4945 §5.1.3.12 ("If no EKU extension,
  continue"), RFC 5280 §4.2.1.12 (EKU absent: the key is not restricted), and strongSwan,
  which checks no EKU on peer certificates at all (x509_cert.c only records the flags;
  only charon-nm uses clientAuth, to pick its *own* certificate). ``openssl verify -purpose
  sslclient`` accepts such certificates as well.
- keyUsage, when present, must assert digitalSignature: the IKE AUTH payload (RFC 7296
  §2.15) and the TLS CertificateVerify (RFC 5246 §7.4.8, RFC 8446 §4.4.3) are signatures.
  RFC 4945 §5.1.3.2 and strongSwan (X509_IKE_COMPLIANT) also accept nonRepudiation alone;
  we do not: a nonRepudiation-only key is meant for content commitment (RFC 5280 §4.2.1.3).
- a subjectAltName is optional (cryptography's client profile requires one): Windows device
  tunnel certificates can carry the machine's FQDN only in the subject CN.

Everything else is cryptography's web PKI profile: X.509 v3, RSA of 2048 bits or more or
ECDSA on P-256/P-384/P-521, SHA-2 signatures (no SHA-1), a critical basicConstraints with cA
on every CA, keyCertSign on CA keyUsage, at most 8 intermediates, the validity period of
every certificate. An authorityKeyIdentifier on the leaf is accepted but not required.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from vpnaaa import logs
from vpnaaa.certs.identity import Identity, identities

# What a client may send (IKE CERT payloads, an EAP-TLS Certificate message): its own
# certificate, up to 8 intermediates, maybe its root; each of a sane size.
MAX_CERTIFICATES = 10
MAX_CERTIFICATE_SIZE = 8192  # octets of one DER certificate

IKE_INTERMEDIATE = x509.ObjectIdentifier("1.3.6.1.5.5.8.2.2")
IPSEC_IKE = x509.ObjectIdentifier("1.3.6.1.5.5.7.3.17")  # RFC 4945 §5.1.3.12
ACCEPTED_EKUS = frozenset(
    {
        ExtendedKeyUsageOID.CLIENT_AUTH,
        IKE_INTERMEDIATE,
        IPSEC_IKE,
        ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE,
    }
)


class CertificateError(Exception):
    """Trust anchors that cannot be loaded; the message names the file."""


class CertificateRejected(Exception):
    """A peer certificate (chain) that fails validation; ``reason`` says why, for one log
    line (no secrets in it: certificates are public)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class VerifiedCertificate:
    """A client certificate whose chain validated: what sessions, logs and the revocation
    checks need. ``chain`` is leaf first, ending with the trust anchor."""

    identities: tuple[Identity, ...]  # best first: see vpnaaa.certs.identity.identities
    subject: str  # RFC 4514 string
    serial: str  # hex, as `openssl x509 -serial` prints it
    issuer: str  # RFC 4514 string
    not_after: datetime.datetime  # UTC
    key_type: str  # "RSA-2048", "ECDSA-P256", ...
    chain: tuple[x509.Certificate, ...]

    @property
    def certificate(self) -> x509.Certificate:
        return self.chain[0]

    @property
    def identity(self) -> Identity:
        """The name a session is shown and authorized under: the first candidate."""
        return self.identities[0]


def serial_hex(serial: int) -> str:
    """A serial number as `openssl x509 -serial` and `openssl ca` index files print it:
    upper-case hex, an even number of digits."""
    text = f"{serial:X}"
    return text if len(text) % 2 == 0 else "0" + text


def parse_serial(text: str) -> int:
    """A serial number typed by a person: hex, with or without ``0x``, colons or spaces
    (as certificate viewers show it). Raises ValueError with the reason."""
    cleaned = text.strip().replace(":", "").replace(" ", "")
    if cleaned[:2].lower() == "0x":
        cleaned = cleaned[2:]
    if not cleaned or any(c not in "0123456789abcdefABCDEF" for c in cleaned):
        raise ValueError(f"{text!r} is not a hexadecimal serial number")
    serial = int(cleaned, 16)
    if serial == 0:  # RFC 5280 §4.1.2.2: a positive integer
        raise ValueError(f"{text!r} is no certificate serial number (they are positive)")
    if serial.bit_length() > 160:  # RFC 5280 §4.1.2.2: at most 20 octets
        raise ValueError(f"{text!r} is longer than a serial number can be (20 octets)")
    return serial


def key_type(public_key: object) -> str:
    """A short name for a certificate's key: RSA-2048, ECDSA-P256, Ed25519, ..."""
    if isinstance(public_key, rsa.RSAPublicKey):
        return f"RSA-{public_key.key_size}"
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        curve = public_key.curve.name
        return "ECDSA-" + {"secp256r1": "P256", "secp384r1": "P384", "secp521r1": "P521"}.get(
            curve, curve
        )
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return "Ed25519"
    if isinstance(public_key, ed448.Ed448PublicKey):
        return "Ed448"
    if isinstance(public_key, dsa.DSAPublicKey):
        return f"DSA-{public_key.key_size}"
    return type(public_key).__name__


def load_anchors(paths: Iterable[Path]) -> tuple[x509.Certificate, ...]:
    """The CA certificates in PEM files (each may hold several). Blocks (reads files)."""
    anchors: list[x509.Certificate] = []
    for path in paths:
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            raise CertificateError(f"{path}: cannot read: {e.strerror}") from None
        try:
            found = x509.load_pem_x509_certificates(data)
        except ValueError as e:
            raise CertificateError(f"{path}: not a PEM certificate file ({e})") from None
        anchors.extend(found)
    if not anchors:
        raise CertificateError("no trust anchors: name at least one CA certificate file")
    return tuple(anchors)


def _eku(_policy: object, _cert: x509.Certificate, ext: x509.ExtendedKeyUsage | None) -> None:
    if ext is not None and not ACCEPTED_EKUS.intersection(ext):
        raise ValueError(
            "extendedKeyUsage has neither clientAuth, the IKE intermediate OID, "
            "ipsecIKE nor anyExtendedKeyUsage"
        )


def _ee_key_usage(_policy: object, _cert: x509.Certificate, ext: x509.KeyUsage | None) -> None:
    if ext is None:
        return
    if not ext.digital_signature:
        raise ValueError("keyUsage lacks digitalSignature")
    if ext.key_cert_sign:
        raise ValueError("keyUsage of an end entity asserts keyCertSign")


def _ee_basic_constraints(
    _policy: object, _cert: x509.Certificate, ext: x509.BasicConstraints | None
) -> None:
    if ext is not None and ext.ca:
        raise ValueError("the client certificate is a CA certificate")


def _policies() -> tuple[ExtensionPolicy, ExtensionPolicy]:
    """(CA policy, end-entity policy): cryptography's web PKI defaults with our key usage
    rules (module docstring) in place of its serverAuth/clientAuth-only EKU check."""
    agnostic = Criticality.AGNOSTIC
    ca = ExtensionPolicy.webpki_defaults_ca().may_be_present(
        x509.ExtendedKeyUsage, Criticality.NON_CRITICAL, _eku
    )
    ee = (
        ExtensionPolicy.webpki_defaults_ee()
        .may_be_present(x509.ExtendedKeyUsage, agnostic, _eku)
        .may_be_present(x509.KeyUsage, agnostic, _ee_key_usage)
        .may_be_present(x509.SubjectAlternativeName, agnostic, None)
        .may_be_present(x509.AuthorityKeyIdentifier, Criticality.NON_CRITICAL, None)
        .may_be_present(x509.BasicConstraints, agnostic, _ee_basic_constraints)
    )
    return ca, ee


def _reason(error: Exception, certs: Sequence[x509.Certificate], now: datetime.datetime) -> str:
    """cryptography's message made readable: without its Python object reprs, naming the
    certificate that is out of its validity period, saying when no path was found."""
    text = str(error).split(" (encountered processing", 1)[0]
    text = text.removeprefix("validation failed: ")
    text = text.removeprefix("Python extension validator failed: ValueError: ")
    if "not valid at validation time" in text:
        for cert in certs:
            name = logs.quoted(cert.subject.rfc4514_string())
            if cert.not_valid_after_utc < now:
                return f"{name} expired at {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%SZ}"
            if cert.not_valid_before_utc > now:
                return f"{name} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M:%SZ}"
    if text.startswith("candidates exhausted"):
        return f"no chain to a trusted issuer ({text})"
    return text


class ClientVerifier:
    """Validates client certificate chains against fixed trust anchors.

    ``anchors``: the CA certificates to trust (:func:`load_anchors` reads them from PEM
    files). :meth:`verify` is pure CPU work (no I/O), safe to call from the reactor thread.
    """

    def __init__(self, anchors: Sequence[x509.Certificate]) -> None:
        if not anchors:
            raise CertificateError("no trust anchors")
        self.anchors = tuple(anchors)
        self._store = Store(list(self.anchors))
        self._ca_policy, self._ee_policy = _policies()

    @classmethod
    def from_files(cls, paths: Iterable[Path]) -> ClientVerifier:
        """Trust the CA certificates in these PEM files. Blocks (reads the files)."""
        return cls(load_anchors(paths))

    def verify(
        self,
        leaf: bytes | x509.Certificate,
        intermediates: Sequence[bytes | x509.Certificate],
        now: datetime.datetime,
    ) -> VerifiedCertificate:
        """Validate ``leaf`` (DER or parsed) with the peer's ``intermediates`` at ``now``
        (an aware datetime). Returns what the chain proves; raises
        :class:`CertificateRejected` with the reason otherwise."""
        cert = _parse(leaf, "the client certificate")
        others = [_parse(c, "an intermediate certificate") for c in intermediates]
        verifier = (
            PolicyBuilder()
            .store(self._store)
            .time(now)
            .extension_policies(ca_policy=self._ca_policy, ee_policy=self._ee_policy)
            .build_client_verifier()
        )
        try:
            verified = verifier.verify(cert, others)
            return VerifiedCertificate(
                identities=identities(cert),
                subject=cert.subject.rfc4514_string(),
                serial=serial_hex(cert.serial_number),
                issuer=cert.issuer.rfc4514_string(),
                not_after=cert.not_valid_after_utc,
                key_type=key_type(cert.public_key()),
                chain=tuple(verified.chain),
            )
        except VerificationError as e:
            raise CertificateRejected(_reason(e, [cert, *others, *self.anchors], now)) from None
        except x509.UnsupportedGeneralNameType as e:
            raise CertificateRejected(f"unsupported subjectAltName: {e}") from None
        except (ValueError, UnsupportedAlgorithm) as e:  # a field only parsed on use
            raise CertificateRejected(f"a malformed certificate ({e})") from None


def _parse(data: bytes | x509.Certificate, what: str) -> x509.Certificate:
    if isinstance(data, x509.Certificate):
        return data
    try:
        return x509.load_der_x509_certificate(data)
    except ValueError as e:
        raise CertificateRejected(f"{what} is not a DER X.509 certificate ({e})") from None
