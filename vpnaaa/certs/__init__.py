"""Checking client certificates: for IKEv2 certificate authentication and for EAP-TLS.

The public API, for the integrators (the IKE responder, the EAP-TLS method, the admin API):

Validation and identity — sans-IO, synchronous, CPU only (safe in the reactor thread):

- ``ClientVerifier.from_files(paths)`` (reads the PEM trust anchors: *blocks*, call it at
  start-up or on SIGHUP) or ``ClientVerifier(anchors)``;
  ``verifier.verify(leaf, intermediates, now)`` → :class:`VerifiedCertificate` or raises
  :class:`CertificateRejected` (``.reason`` for the log line). ``leaf``/``intermediates``:
  DER bytes (the IKE CERT payloads) or ``cryptography`` certificates (pyOpenSSL's
  ``X509.to_cryptography()``); ``now``: an aware datetime from the reactor's clock.
  Key usage rules and their sources: :mod:`vpnaaa.certs.verify`.
- :class:`VerifiedCertificate`: ``identities`` (candidates, best first), ``identity``,
  ``subject``, ``serial`` (hex), ``issuer``, ``not_after``, ``key_type``, ``chain``.
- ``matches_id(verified.certificate, id_type, data)``: whether the certificate names the
  IKEv2 IDi (RFC 7296 §3.5 ID Type and Identification Data); rules in
  :mod:`vpnaaa.certs.identity`.
- ``serial_hex(int)`` / ``parse_serial(text)``: serial numbers as people and openssl write them.

Revocation — :meth:`RevocationChecker.check` returns a Deferred (it may go to the network):

- ``CrlFile(path)``: reads the file at construction (*blocks*), again when it changes (one
  ``stat`` per check) and on ``reload()`` (SIGHUP); PEM or DER; never raises after
  construction, logs what it could not read.
- ``DenyList(state_dir / DENY_FILE)``: ``denied(serial)``, ``add``/``remove`` (write the
  file atomically, mode 0600: *block*, small local file), ``serials()``.
- ``HttpFetcher(reactor, timeout, max_bytes)``: bounded HTTP for the two below;
  ``CrlDistributionPoints(fetcher)`` (only when the caller enables CRL distribution
  points); ``OcspClient(url, fetcher)`` (a configured responder). Both return Deferreds.
- ``RevocationChecker(reactor, crl_files=..., deny=..., crl_distribution_points=...,
  ocsp=..., hard_fail=...)``: one per caller policy (a profile); the sources can be shared.
  ``check(verified)`` → Deferred[:class:`RevocationResult`] (``accepted``, ``reason``);
  it never errbacks for a revocation problem (that is a refusal or a soft-fail).

Typical use (IKE_AUTH with a CERT payload, or EAP-TLS after the client's Certificate)::

    verified = verifier.verify(cert_der, intermediates_der, now)   # CertificateRejected
    if not matches_id(verified.certificate, idi.id_type, idi.data): refuse
    result = yield checker.check(verified)                         # Deferred
    if not result.accepted: refuse, logging result.reason

Ending the live sessions of a certificate denied while connected is the IKE wiring's job
(sessions must remember the serial); this package only answers for new authentications.
"""

from vpnaaa.certs.crl import CrlFile
from vpnaaa.certs.deny import FILE_NAME as DENY_FILE
from vpnaaa.certs.deny import DenyList
from vpnaaa.certs.fetch import CrlDistributionPoints, HttpFetcher, OcspClient
from vpnaaa.certs.identity import Identity, matches_id
from vpnaaa.certs.revocation import RevocationChecker, RevocationResult
from vpnaaa.certs.verify import (
    MAX_CERTIFICATE_SIZE,
    MAX_CERTIFICATES,
    CertificateError,
    CertificateRejected,
    ClientVerifier,
    VerifiedCertificate,
    parse_serial,
    serial_hex,
)

__all__ = [
    "DENY_FILE",
    "MAX_CERTIFICATES",
    "MAX_CERTIFICATE_SIZE",
    "CertificateError",
    "CertificateRejected",
    "ClientVerifier",
    "CrlDistributionPoints",
    "CrlFile",
    "DenyList",
    "HttpFetcher",
    "Identity",
    "OcspClient",
    "RevocationChecker",
    "RevocationResult",
    "VerifiedCertificate",
    "matches_id",
    "parse_serial",
    "serial_hex",
]
