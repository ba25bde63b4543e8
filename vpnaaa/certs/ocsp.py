"""OCSP (RFC 6960) without I/O: the request to send and the checks on the answer.

:func:`ocsp_request` builds a request for one certificate with a nonce (RFC 8954: 32
random octets are the caller's; the CertID hashes with SHA-1, which RFC 5019 §2.1.1
requires of lightweight responders and every responder accepts).

:func:`ocsp_answer` accepts a response only when it is ``successful``, names the
certificate's CertID, is signed by the CA that issued the certificate or by a responder
that CA delegated (a certificate the CA issued, carrying id-kp-OCSPSigning and valid now,
RFC 6960 §4.2.2.2), is current (thisUpdate not ahead of ``now``, nextUpdate not behind,
with :data:`SKEW` of slack) and carries our nonce when it carries one. A responder may
leave the nonce out (RFC 6960 §4.4.1, RFC 8954 §2.1), but then it must give a nextUpdate
(else nothing bounds its age: an old "good" could be replayed); a different nonce is a
replay.
Anything else raises :class:`OcspError`, which the caller's soft/hard-fail policy decides.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID

SKEW = datetime.timedelta(minutes=5)


class OcspError(Exception):
    """An OCSP answer that proves nothing (unsigned, for another certificate, stale, an
    error status); the message is for the log line."""


@dataclass(frozen=True)
class OcspAnswer:
    """What a valid response says; ``detail`` is for the log line."""

    status: Literal["good", "revoked", "unknown"]
    detail: str


def ocsp_request(cert: x509.Certificate, issuer: x509.Certificate, nonce: bytes) -> bytes:
    """The DER OCSPRequest for ``cert`` with ``nonce`` (RFC 6960 §4.1, §4.4.1)."""
    builder = (
        ocsp.OCSPRequestBuilder()
        .add_certificate(cert, issuer, hashes.SHA1())
        .add_extension(x509.OCSPNonce(nonce), critical=False)
    )
    return builder.build().public_bytes(serialization.Encoding.DER)


def ocsp_answer(
    data: bytes,
    cert: x509.Certificate,
    issuer: x509.Certificate,
    nonce: bytes,
    now: datetime.datetime,
) -> OcspAnswer:
    """Check the responder's ``data`` (module docstring) and say what it proves;
    OcspError for anything it cannot prove, a field that fails to parse included."""
    try:
        return _answer(data, cert, issuer, nonce, now)
    except (ValueError, UnsupportedAlgorithm) as e:  # fields cryptography parses on use
        raise OcspError(f"a malformed response ({e})") from None


def _answer(
    data: bytes,
    cert: x509.Certificate,
    issuer: x509.Certificate,
    nonce: bytes,
    now: datetime.datetime,
) -> OcspAnswer:
    try:
        response = ocsp.load_der_ocsp_response(data)
    except ValueError as e:
        raise OcspError(f"not a DER OCSP response ({e})") from None
    if response.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise OcspError(f"the responder answered {response.response_status.name}")
    _check_signer(response, issuer, now)
    try:
        sent = response.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
    except x509.ExtensionNotFound:
        sent = None
    if sent is not None and sent != nonce:
        raise OcspError("the response carries another request's nonce (a replay)")
    single = _single(response, cert, issuer)
    if single.this_update_utc > now + SKEW:
        raise OcspError(f"thisUpdate {single.this_update_utc:%Y-%m-%d %H:%M:%SZ} is ahead")
    next_update = single.next_update_utc
    if sent is None and next_update is None:  # nothing bounds its age: a replay could be
        raise OcspError("the response has neither our nonce nor a nextUpdate (RFC 6960 §4.2.2.1)")
    if next_update is not None and next_update < now - SKEW:
        raise OcspError(f"nextUpdate {next_update:%Y-%m-%d %H:%M:%SZ} has passed")
    status = single.certificate_status
    if status == ocsp.OCSPCertStatus.REVOKED:
        assert single.revocation_time_utc is not None
        text = f"revoked {single.revocation_time_utc:%Y-%m-%d %H:%M:%SZ}"
        if single.revocation_reason is not None:
            text += f", reason {single.revocation_reason.name}"
        return OcspAnswer("revoked", text)
    if status == ocsp.OCSPCertStatus.UNKNOWN:
        return OcspAnswer("unknown", "the responder does not know the certificate")
    return OcspAnswer("good", "good")


def _single(
    response: ocsp.OCSPResponse, cert: x509.Certificate, issuer: x509.Certificate
) -> ocsp.OCSPSingleResponse:
    """The SingleResponse for ``cert``'s CertID, hashed as the responder hashed it."""
    for single in response.responses:
        if single.serial_number != cert.serial_number:
            continue
        ours = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, single.hash_algorithm)
        cert_id = ours.build()
        if (single.issuer_name_hash, single.issuer_key_hash) == (
            cert_id.issuer_name_hash,
            cert_id.issuer_key_hash,
        ):
            return single
    raise OcspError("the response does not name the certificate asked about")


def _check_signer(
    response: ocsp.OCSPResponse, issuer: x509.Certificate, now: datetime.datetime
) -> None:
    """The response is signed by ``issuer`` or by a responder it delegated to."""
    data = response.tbs_response_bytes
    algorithm = response.signature_hash_algorithm
    if _verifies(issuer, response.signature, data, algorithm):
        return
    for responder in response.certificates:
        if not _verifies(responder, response.signature, data, algorithm):
            continue
        try:
            responder.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature):
            raise OcspError("the responder's certificate is not from the CA") from None
        try:
            eku = responder.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            eku = None
        if eku is None or ExtendedKeyUsageOID.OCSP_SIGNING not in eku:
            raise OcspError("the responder's certificate lacks id-kp-OCSPSigning")
        if not responder.not_valid_before_utc <= now <= responder.not_valid_after_utc:
            raise OcspError("the responder's certificate is not valid now")
        return
    raise OcspError("the response is signed by neither the CA nor a responder it delegated")


def _verifies(
    signer: x509.Certificate,
    signature: bytes,
    data: bytes,
    algorithm: hashes.HashAlgorithm | None,
) -> bool:
    key = signer.public_key()
    try:
        if isinstance(key, rsa.RSAPublicKey) and algorithm is not None:
            key.verify(signature, data, padding.PKCS1v15(), algorithm)
        elif isinstance(key, ec.EllipticCurvePublicKey) and algorithm is not None:
            key.verify(signature, data, ec.ECDSA(algorithm))
        elif isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
            key.verify(signature, data)
        else:
            return False
    except (InvalidSignature, ValueError):
        return False
    return True
