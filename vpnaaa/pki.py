"""Certificates for the IKEv2 responder and the PEAP (TLS) server, on ``cryptography``.

A small private CA for labs and demos (:func:`init_ca`, :func:`issue_server`), a CSR for an
external CA (:func:`make_csr`), installing what that CA returns (:func:`import_certificate`)
and loading the result at start-up (:func:`load_server_identity`).

Files are PEM. ``ca.key``/``ca.pem``: the CA. ``server.key``: PKCS#8, unencrypted, mode 0600.
``server.pem``: the leaf certificate alone. ``chain.pem``: the CA certificates above the leaf,
nearest first, never the leaf (for the demo CA, a copy of ``ca.pem``); the TLS and IKEv2 code
send leaf + chain. Keys are created with O_CREAT|O_EXCL and mode 0600, so they never exist with
wider permissions. Existing files are kept unless ``force=True``, which replaces them through a
temporary file and a rename.

The server profile is what the Windows native IKEv2 client and PEAP supplicants accept: the name
as subject CN and dNSName subjectAltName; an IP address both as iPAddress and as dNSName (Windows
fails with error 13801 without the latter); extendedKeyUsage serverAuth plus IP security IKE
intermediate. RFC 4945 §5.1.3.12 advises CAs against EKU in IKE certificates, but Windows
requires serverAuth, and older macOS and Windows clients look for the IKE intermediate OID.

Client certificates (:func:`issue_client`) for IKEv2 certificate authentication and EAP-TLS,
optionally as a passphrase-protected PKCS#12 for import on the client, and revocation
(:func:`revoke`, :func:`write_crl`): ``ca/index.json`` lists every certificate the CA issued
(serial, subject, profile, expiry, revocation), so a serial it never issued is refused, and
``ca/crl.pem`` is the CRL (RFC 5280 §5) the daemon reads, re-signed by every revocation and by
``vpnaaa pki crl``; it is valid for :data:`CRL_DAYS` days, so a daily timer must re-sign it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import ipaddress
import itertools
import json
import os
import re
import secrets
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from vpnaaa import private
from vpnaaa.certs import verify
from vpnaaa.certs.identity import UPN
from vpnaaa.certs.verify import serial_hex
from vpnaaa.users import locked

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
IKE_INTERMEDIATE = x509.ObjectIdentifier("1.3.6.1.5.5.8.2.2")
SERVER_EKU = (ExtendedKeyUsageOID.SERVER_AUTH, IKE_INTERMEDIATE)
CLIENT_EKU = (ExtendedKeyUsageOID.CLIENT_AUTH, IKE_INTERMEDIATE)
CA_KEY_TYPES = ("rsa3072", "ecdsa-p256")
SERVER_KEY_TYPES = ("rsa2048", "rsa3072", "ecdsa-p256")
CRL_DAYS = 7  # nextUpdate - thisUpdate; `vpnaaa pki crl` re-signs before it passes
P12_ROUNDS = 50_000  # PKCS#12 KDF iterations (cryptography's documented compatible example)
P12Cipher = Literal["3des", "aes256"]
REASONS = {  # RFC 5280 §5.3.1 reason codes an operator may give (certificateHold: no unhold)
    "keyCompromise": x509.ReasonFlags.key_compromise,
    "caCompromise": x509.ReasonFlags.ca_compromise,
    "affiliationChanged": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessationOfOperation": x509.ReasonFlags.cessation_of_operation,
    "privilegeWithdrawn": x509.ReasonFlags.privilege_withdrawn,
}
BACKDATE = datetime.timedelta(minutes=5)  # tolerate clients whose clock is a little behind
_PEM = serialization.Encoding.PEM
_DNS_NAME = re.compile(r"(\*\.)?[A-Za-z0-9_-]{1,63}(\.[A-Za-z0-9_-]{1,63})*")
_FQDN = re.compile(r"[A-Za-z0-9-]{1,63}(\.[A-Za-z0-9-]{1,63})+")
_USER = re.compile(r"[A-Za-z0-9._+-]{1,64}")  # a plain user name, or the local part of user@domain
_KEY_USAGE_BITS = ("digital_signature", "content_commitment", "key_encipherment")
_KEY_USAGE_BITS += ("data_encipherment", "key_agreement", "key_cert_sign", "crl_sign")
_KEY_USAGE_BITS += ("encipher_only", "decipher_only")


class PkiError(Exception):
    """A key or certificate problem; the message names the files involved."""


@dataclass(frozen=True)
class CaFiles:
    key: Path
    cert: Path


@dataclass(frozen=True)
class ServerFiles:
    key: Path
    cert: Path
    chain: Path


@dataclass(frozen=True)
class ServerIdentity:
    """What the PEAP (TLS) server and the IKEv2 responder authenticate with."""

    key: PrivateKey = field(repr=False)
    cert: x509.Certificate
    chain: tuple[x509.Certificate, ...] = ()


@dataclass(frozen=True)
class ImportResult:
    files: ServerFiles
    identity: ServerIdentity
    warnings: tuple[str, ...]


@dataclass(frozen=True)
class ClientFiles:
    """What :func:`issue_client` wrote: the certificate, and either the key (PKCS#8, 0600) or
    the PKCS#12 (0600) that holds it; never both, so the key exists once, encrypted if asked."""

    cert: Path
    key: Path | None
    p12: Path | None
    serial: int


@dataclass(frozen=True)
class Issued:
    """One entry of the CA's ``index.json``: a certificate it issued, and its revocation."""

    serial: int
    subject: str
    profile: str  # "server", "user", "machine", or "unlisted" (revoked, issued before the index)
    not_after: datetime.datetime | None
    revoked: datetime.datetime | None = None
    reason: str | None = None  # a key of REASONS; None is "unspecified" (left out, §5.3.1)


@dataclass(frozen=True)
class CrlInfo:
    path: Path
    number: int
    revoked: int
    next_update: datetime.datetime


def init_ca(
    directory: Path,
    common_name: str = "vpnaaa demo CA",
    days: int = 3650,
    key_type: str = "rsa3072",
) -> CaFiles:
    """Create a self-signed CA in ``directory``; never replaces an existing one.

    basicConstraints CA:TRUE and keyUsage keyCertSign+cRLSign, both critical, and a subject key
    identifier (RFC 5280 §4.2.1.9, §4.2.1.3, §4.2.1.2). An empty index and CRL (number 1)
    come with it, so a daemon pointed at ``crl.pem`` finds one from the start.
    """
    directory = Path(directory)
    files = CaFiles(directory / "ca.key", directory / "ca.pem")
    key = _new_key(key_type, CA_KEY_TYPES)
    name = _name(common_name)
    builder = _builder(name, name, key.public_key(), days)
    builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
    builder = builder.add_extension(_key_usage(key_cert_sign=True, crl_sign=True), True)
    cert = builder.sign(key, hashes.SHA256())
    _save(directory, {files.key: _key_pem(key), files.cert: _pems([cert])}, force=False)
    write_crl(directory)
    return files


def issue_server(
    ca_dir: Path,
    out_dir: Path,
    name: str,
    extra_names: Iterable[str] = (),
    days: int = 825,
    key_type: str = "rsa3072",
    *,
    force: bool = False,
) -> ServerFiles:
    """Issue server.key/server.pem/chain.pem in ``out_dir`` from the CA in ``ca_dir``.

    The profile of the module docstring, plus keyUsage digitalSignature (and keyEncipherment for
    RSA, which TLS RSA key transport needs) critical, basicConstraints CA:FALSE, and key
    identifiers (RFC 5280 §4.2.1.1, §4.2.1.2). The validity never outlasts the CA's.
    """
    out_dir = Path(out_dir)
    files = ServerFiles(out_dir / "server.key", out_dir / "server.pem", out_dir / "chain.pem")
    ca = _load_ca(ca_dir)
    sans = _names(name, extra_names)
    key = _new_key(key_type, SERVER_KEY_TYPES)
    cert = _sign_leaf(ca, _name(sans[0].value), key, days, _leaf_extensions(key, SERVER_EKU, sans))
    chain = _pems((ca.cert, *ca.chain))
    with _index_lock(ca_dir):
        _save(
            out_dir,
            {files.key: _key_pem(key), files.cert: _pems([cert]), files.chain: chain},
            force,
        )
        _record(ca_dir, cert, "server")
    return files


def make_csr(
    out_dir: Path,
    name: str,
    extra_names: Iterable[str] = (),
    key_type: str = "rsa3072",
    *,
    force: bool = False,
) -> Path:
    """Write server.key and server.csr (PKCS#10, RFC 2986) for an external CA; returns the CSR.

    The request asks, in its extensionRequest attribute (RFC 2985 §5.4.2), for the same subject,
    subjectAltName, keyUsage, basicConstraints and EKU as :func:`issue_server` would issue.
    """
    out_dir = Path(out_dir)
    key_path, csr_path = out_dir / "server.key", out_dir / "server.csr"
    sans = _names(name, extra_names)
    key = _new_key(key_type, SERVER_KEY_TYPES)
    builder = x509.CertificateSigningRequestBuilder().subject_name(_name(sans[0].value))
    for extension, critical in _leaf_extensions(key, SERVER_EKU, sans):
        builder = builder.add_extension(extension, critical)
    csr = builder.sign(key, hashes.SHA256())
    _save(out_dir, {key_path: _key_pem(key), csr_path: csr.public_bytes(_PEM)}, force)
    return csr_path


def import_certificate(
    key_path: Path,
    cert_path: Path,
    chain_paths: Sequence[Path] = (),
    out_dir: Path | None = None,
    *,
    force: bool = False,
) -> ImportResult:
    """Install a certificate from an external CA as server.pem + chain.pem in ``out_dir``.

    ``out_dir`` defaults to the key's directory; a key kept elsewhere is copied in as server.key
    (PKCS#8, 0600). ``cert_path`` may hold the leaf followed by CA certificates; ``chain_paths``
    add more, nearest first. The key must match the leaf and each certificate must be signed by
    the next (RFC 5280 §6.1.3 (a)(1)). What clients may reject comes back as ``warnings``.
    """
    key_path = Path(key_path)
    out_dir = Path(out_dir) if out_dir is not None else key_path.parent
    files = ServerFiles(out_dir / "server.key", out_dir / "server.pem", out_dir / "chain.pem")
    paths = [Path(cert_path), *map(Path, chain_paths)]
    identity = _identity(key_path, paths, private.trusted_owners())
    new = {files.cert: _pems([identity.cert]), files.chain: _pems(identity.chain)}
    if not (files.key.exists() and os.path.samefile(key_path, files.key)):
        new[files.key] = _key_pem(identity.key)
    _save(out_dir, new, force)
    return ImportResult(files, identity, tuple(check_server_certificate(identity.cert)))


def load_server_identity(
    key_path: Path,
    cert_path: Path,
    chain_path: Path | None = None,
    owners: Collection[int] | None = None,
) -> ServerIdentity:
    """Load the key, leaf and chain the daemon serves; refuse a key that is not the leaf's.

    ``cert_path`` may also carry the chain after the leaf; ``chain_path`` (a chain.pem, possibly
    empty) adds to it. Each certificate must be signed by the next (RFC 5280 §6.1.3 (a)(1)).
    The key is a secret file (:mod:`vpnaaa.private`): ``owners`` may own it (default: root
    and the current user).
    """
    paths = [Path(cert_path)] + ([Path(chain_path)] if chain_path else [])
    return _identity(Path(key_path), paths, owners or private.trusted_owners())


def _identity(key_path: Path, paths: list[Path], owners: Collection[int]) -> ServerIdentity:
    key = _load_key(key_path, owners)
    certs = _load_certs(paths[0], required=True)
    for path in paths[1:]:
        certs += _load_certs(path, required=False)
    if _spki(certs[0].public_key()) != _spki(key.public_key()):
        raise PkiError(f"{paths[0]}: certificate does not match the key in {key_path}")
    for child, issuer in itertools.pairwise(certs):
        try:
            child.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature):
            raise PkiError(
                f"{', '.join(map(str, paths))}: {child.subject.rfc4514_string()!r} is not signed "
                f"by the next certificate, {issuer.subject.rfc4514_string()!r}"
            ) from None
    return ServerIdentity(key, certs[0], tuple(certs[1:]))


def check_server_certificate(
    cert: x509.Certificate, now: datetime.datetime | None = None
) -> list[str]:
    """Reasons Windows IKEv2 or PEAP clients may reject this server certificate.

    Validity (RFC 5280 §4.1.2.5), EKU (§4.2.1.12, RFC 4945 §5.1.3.12), subjectAltName (§4.2.1.6).
    """
    now = now or datetime.datetime.now(datetime.UTC)
    who = cert.subject.rfc4514_string()
    found = []
    if now < cert.not_valid_before_utc:
        found.append(f"{who}: not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
    if now > cert.not_valid_after_utc:
        found.append(f"{who}: expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    eku = _extension(cert, x509.ExtendedKeyUsage) or ()
    if ExtendedKeyUsageOID.SERVER_AUTH not in eku:
        found.append(f"{who}: EKU lacks serverAuth (1.3.6.1.5.5.7.3.1), which Windows requires")
    if IKE_INTERMEDIATE not in eku:
        found.append(f"{who}: EKU lacks IP security IKE intermediate (1.3.6.1.5.5.8.2.2)")
    san = _extension(cert, x509.SubjectAlternativeName)
    if san is None:
        found.append(f"{who}: no subjectAltName; IKEv2 clients match the server name against it")
    else:
        dns = set(san.get_values_for_type(x509.DNSName))
        found += [
            f"{who}: IP address {ip} is not also a dNSName; Windows fails with error 13801"
            for ip in san.get_values_for_type(x509.IPAddress)
            if str(ip) not in dns
        ]
    return found


def issue_client(
    ca_dir: Path,
    out_dir: Path,
    name: str,
    *,
    machine: bool = False,
    days: int = 365,
    key_type: str = "rsa3072",
    p12_passphrase: bytes | None = None,
    p12_cipher: P12Cipher = "3des",
    force: bool = False,
) -> ClientFiles:
    """Issue a client certificate for IKEv2 certificate authentication (RFC 7296 §2.15) and
    EAP-TLS (RFC 5216 §5.2: the peer's identity is in its certificate) from the CA in
    ``ca_dir``, as ``NAME.pem`` in ``out_dir`` with ``NAME.key``, or with ``NAME.p12`` when
    ``p12_passphrase`` is given.

    A user certificate has the subject CN ``name``; when ``name`` is ``user@domain`` the
    subjectAltName carries it as rfc822Name (the ID_RFC822_ADDR an IKEv2 client sends as IDi,
    and the SAN strongSwan's docs say Apple and Android clients must have to match the identity
    they are configured with) and as a Microsoft UPN otherName, 1.3.6.1.4.1.311.20.2.3, the
    name Windows EAP-TLS maps to an account (Microsoft, "Certificate requirements when you use
    EAP-TLS or PEAP with EAP-TLS", KB 814394: the client certificate has the Client
    Authentication purpose and a SAN with the user's UPN). A machine certificate
    (``machine=True``), for the Windows Always On VPN device tunnel, names the computer's FQDN
    as CN and dNSName: the device tunnel authenticates with a machine certificate from the
    local computer store ("Configure VPN device tunnels in Windows client": MachineMethod
    Certificate), which Windows picks by its Client Authentication EKU.

    EKU clientAuth (1.3.6.1.5.5.7.3.2), which Windows requires of client certificates and
    ``openssl verify -purpose sslclient`` checks, plus IP security IKE intermediate
    (1.3.6.1.5.5.8.2.2, the OID Windows and older macOS know for IKE), which gateways that
    filter client certificates by EKU (RRAS ``CertificateEKUsToAccept``, the issue's "clientAuth
    or IKE intermediate" rule) may ask for. RFC 4945 §5.1.3.12 advises no EKU at all, but
    Windows selects client certificates by clientAuth. keyUsage as :func:`_leaf_extensions`.
    The issued certificate is recorded in the CA's index.

    The PKCS#12 (RFC 7292) holds the key, the certificate and the CA chain, friendly name
    ``name``. ``p12_cipher="3des"`` (the default) encrypts with PBES1 SHA-1 + 3-key 3DES and a
    SHA-1 MAC: what every client platform imports. Apple's Security framework (macOS Keychain,
    iOS profiles) rejects the PBES2 AES-256-CBC + SHA-256 MAC files of OpenSSL 3 as a wrong
    password ("MAC verification failed"; pyca/cryptography issue 7293, xca issue 474), older
    Android and Windows Server 2016 cannot read them either, and cryptography's own
    documentation names 3DES/SHA-1 for maximum compatibility. ``"aes256"`` (PBKDF2-HMAC-SHA256,
    AES-256-CBC, SHA-256 MAC) is for fleets of Windows 10/11, current Android and Linux only.
    Either way the file's protection is the passphrase: ``P12_ROUNDS`` KDF iterations.
    """
    out_dir = Path(out_dir)
    ca = _load_ca(ca_dir)
    subject, sans = _client_names(name, machine)
    key = _new_key(key_type, SERVER_KEY_TYPES)
    cert = _sign_leaf(ca, subject, key, days, _leaf_extensions(key, CLIENT_EKU, sans))
    cert_path, key_path, p12_path = (out_dir / f"{name}{ext}" for ext in (".pem", ".key", ".p12"))
    new = {cert_path: _pems([cert])}
    if p12_passphrase is None:
        new[key_path] = _key_pem(key)
        files = ClientFiles(cert_path, key_path, None, cert.serial_number)
    else:
        cas = [pkcs12.PKCS12Certificate(c, _common_name(c).encode()) for c in (ca.cert, *ca.chain)]
        encryption = _p12_encryption(p12_passphrase, p12_cipher)
        new[p12_path] = pkcs12.serialize_key_and_certificates(
            name.encode(), key, cert, cas, encryption
        )
        files = ClientFiles(cert_path, None, p12_path, cert.serial_number)
    with _index_lock(ca_dir):
        _save(out_dir, new, force)
        _record(ca_dir, cert, "machine" if machine else "user")
    return files


def _client_names(name: str, machine: bool) -> tuple[x509.Name, list[x509.GeneralName]]:
    """Subject and subjectAltName of a client certificate (see :func:`issue_client`)."""
    if machine:
        if not (len(name) <= 253 and _FQDN.fullmatch(name)) or _is_ip(name):
            raise PkiError(f"{name!r} is not a machine FQDN such as pc1.corp.example (ASCII)")
        return _name(name), [x509.DNSName(name)]
    user, at, domain = name.partition("@")
    if not _USER.fullmatch(user) or (at and not (len(domain) <= 253 and _FQDN.fullmatch(domain))):
        raise PkiError(f"{name!r} is neither a user name nor user@domain (ASCII, no spaces)")
    if not at:
        return _name(name), []
    return _name(name), [x509.RFC822Name(name), x509.OtherName(UPN, _utf8_string(name))]


def _utf8_string(text: str) -> bytes:
    """DER of an ASN.1 UTF8String (X.690 §8.23, tag 12), the value of a UPN otherName. The
    name is also the CN (at most 64 ASCII characters), so the length takes the short form."""
    return b"\x0c" + bytes([len(text)]) + text.encode()


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _p12_encryption(
    passphrase: bytes, cipher: P12Cipher
) -> serialization.KeySerializationEncryption:
    if not passphrase:
        raise PkiError("the PKCS#12 passphrase is empty; macOS and iOS refuse such files")
    builder = serialization.PrivateFormat.PKCS12.encryption_builder().kdf_rounds(P12_ROUNDS)
    if cipher == "aes256":
        builder = builder.key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC)
        return builder.hmac_hash(hashes.SHA256()).build(passphrase)
    builder = builder.key_cert_algorithm(pkcs12.PBES.PBESv1SHA1And3KeyTripleDESCBC)
    return builder.hmac_hash(hashes.SHA1()).build(passphrase)


def parse_serial(text: str) -> int:
    """A serial number given in hex, as :func:`serial_hex` or openssl print it; PkiError
    with the reason if it is none."""
    try:
        return verify.parse_serial(text)
    except ValueError as e:
        raise PkiError(str(e)) from None


def read_index(ca_dir: Path) -> tuple[int, dict[int, Issued]]:
    """The last CRL number and the certificates in ``ca_dir/index.json`` (none if absent)."""
    path = Path(ca_dir) / "index.json"
    if not path.exists():
        return 0, {}
    try:
        raw = json.loads(path.read_text())
        entries = {}
        for serial, entry in raw["certificates"].items():
            entries[int(serial, 16)] = Issued(
                int(serial, 16),
                entry["subject"],
                entry["profile"],
                _when(entry["not_after"]),
                _when(entry.get("revoked")),
                entry.get("reason"),
            )
        return int(raw["crl_number"]), entries
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise PkiError(f"{path}: not a vpnaaa certificate index ({e})") from None


def _when(text: str | None) -> datetime.datetime | None:
    return datetime.datetime.fromisoformat(text) if text else None


def _write_index(ca_dir: Path, crl_number: int, entries: dict[int, Issued]) -> None:
    """Replace ``index.json`` (0600: it names the users) by rename; readers need no lock."""
    certificates = {
        serial_hex(e.serial): {
            "subject": e.subject,
            "profile": e.profile,
            "not_after": e.not_after.isoformat() if e.not_after else None,
            "revoked": e.revoked.isoformat() if e.revoked else None,
            "reason": e.reason,
        }
        for e in sorted(entries.values(), key=lambda e: e.serial)
    }
    text = json.dumps({"crl_number": crl_number, "certificates": certificates}, indent=1)
    _write(Path(ca_dir) / "index.json", text.encode() + b"\n", 0o600, replace=True)


def _index_lock(ca_dir: Path) -> contextlib.AbstractContextManager[None]:
    """The CA's index lock: issuing, revoking and signing CRLs wait for each other."""
    return locked(Path(ca_dir) / "index.json")


def _record(ca_dir: Path, cert: x509.Certificate, profile: str) -> None:
    """Add a just-issued certificate to the index (the caller holds :func:`_index_lock`)."""
    number, entries = read_index(ca_dir)
    entries[cert.serial_number] = Issued(
        cert.serial_number, cert.subject.rfc4514_string(), profile, cert.not_valid_after_utc
    )
    _write_index(ca_dir, number, entries)


def revoke(
    ca_dir: Path,
    serial: int,
    reason: str | None = None,
    *,
    unlisted: bool = False,
    now: datetime.datetime | None = None,
) -> tuple[Issued, CrlInfo]:
    """Record the revocation of ``serial`` in the index and re-sign ``crl.pem``.

    A serial the index does not list is refused ("unknown serial"): a typo must not pass for a
    revocation. ``unlisted=True`` records it anyway, for certificates this CA issued before it
    kept an index. ``reason`` is a key of :data:`REASONS` (RFC 5280 §5.3.1) or None.
    """
    if reason is not None and reason not in REASONS:
        raise PkiError(f"reason {reason!r} is not one of {', '.join(REASONS)}")
    now = now or datetime.datetime.now(datetime.UTC)
    ca = _load_ca(ca_dir)
    index = Path(ca_dir) / "index.json"
    with _index_lock(ca_dir):
        number, entries = read_index(ca_dir)
        entry = entries.get(serial)
        if entry is None and not unlisted:
            raise PkiError(
                f"unknown serial {serial_hex(serial)}: {index} lists no certificate with it "
                "(one issued before the index existed: revoke it with --unlisted)"
            )
        if entry is not None and entry.revoked is not None:
            raise PkiError(f"serial {serial_hex(serial)} was revoked on {entry.revoked:%Y-%m-%d}")
        entry = entry or Issued(serial, "", "unlisted", None)
        entries[serial] = dataclasses.replace(entry, revoked=now, reason=reason)
        info = _publish_crl(ca, ca_dir, number + 1, entries, now)
    return entries[serial], info


def write_crl(ca_dir: Path, now: datetime.datetime | None = None) -> CrlInfo:
    """Re-sign ``crl.pem`` with the next CRL number and a new nextUpdate (``vpnaaa pki crl``,
    from a daily timer, and ``vpnaaa pki init``)."""
    now = now or datetime.datetime.now(datetime.UTC)
    ca = _load_ca(ca_dir)
    with _index_lock(ca_dir):
        number, entries = read_index(ca_dir)
        return _publish_crl(ca, ca_dir, number + 1, entries, now)


def _publish_crl(
    ca: ServerIdentity,
    ca_dir: Path,
    number: int,
    entries: dict[int, Issued],
    now: datetime.datetime,
) -> CrlInfo:
    """Sign the CRL of the revoked ``entries`` (RFC 5280 §5): thisUpdate ``now`` less
    :data:`BACKDATE` (clients whose clock is a little behind), nextUpdate :data:`CRL_DAYS`
    later (§5.1.2.5), the authority key identifier and the CRL number (§5.2.1, §5.2.3, both
    MUST), a reasonCode per entry unless unspecified (§5.3.1). The index is written first with
    the number used, then crl.pem replaced by rename, so the daemon never reads half a file and
    a number is never signed twice. The caller holds :func:`_index_lock`."""
    next_update = now + datetime.timedelta(days=CRL_DAYS)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(now - BACKDATE)
        .next_update(next_update)
        .add_extension(_authority_key_id(ca.cert), False)
        .add_extension(x509.CRLNumber(number), False)
    )
    revoked = {e.serial: (e, e.revoked) for e in entries.values() if e.revoked is not None}
    for serial in sorted(revoked):
        entry, date = revoked[serial]
        item = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(date)
        if entry.reason is not None:
            item = item.add_extension(x509.CRLReason(REASONS[entry.reason]), False)
        builder = builder.add_revoked_certificate(item.build())
    crl = builder.sign(ca.key, hashes.SHA256())
    path = Path(ca_dir) / "crl.pem"
    _write_index(ca_dir, number, entries)
    _write(path, crl.public_bytes(_PEM), 0o644, replace=True)
    return CrlInfo(path, number, len(revoked), next_update)


def _names(name: str, extra_names: Iterable[str]) -> list[x509.GeneralName]:
    """subjectAltName entries (RFC 5280 §4.2.1.6); an IP address becomes dNSName + iPAddress."""
    entries: list[x509.GeneralName] = []
    for text in (name, *extra_names):
        text = text.strip()
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            ip = None
        if ip is None and not (len(text) <= 253 and _DNS_NAME.fullmatch(text)):
            raise PkiError(f"{text!r} is neither an IP address nor a DNS name (use xn-- for IDNs)")
        new = [x509.DNSName(text)] if ip is None else [x509.DNSName(str(ip)), x509.IPAddress(ip)]
        entries += [entry for entry in new if entry not in entries]
    return entries


def _leaf_extensions(
    key: PrivateKey, eku: Sequence[x509.ObjectIdentifier], sans: list[x509.GeneralName]
) -> list[tuple[x509.ExtensionType, bool]]:
    """basicConstraints CA:FALSE and keyUsage digitalSignature (+ keyEncipherment for RSA, which
    TLS RSA key transport needs), both critical; the EKU; the subjectAltName when there is one
    (non-critical: the subject is never empty, RFC 5280 §4.2.1.6)."""
    usage = _key_usage(digital_signature=True, key_encipherment=isinstance(key, rsa.RSAPrivateKey))
    extensions: list[tuple[x509.ExtensionType, bool]] = [
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (usage, True),
        (x509.ExtendedKeyUsage(list(eku)), False),
    ]
    return extensions + ([(x509.SubjectAlternativeName(sans), False)] if sans else [])


def _load_ca(ca_dir: Path) -> ServerIdentity:
    """The CA of ``ca_dir`` (``vpnaaa pki init``), refused once expired."""
    ca = load_server_identity(Path(ca_dir) / "ca.key", Path(ca_dir) / "ca.pem")
    if ca.cert.not_valid_after_utc <= datetime.datetime.now(datetime.UTC):
        raise PkiError(
            f"{Path(ca_dir) / 'ca.pem'}: the CA expired on {ca.cert.not_valid_after_utc}"
        )
    return ca


def _sign_leaf(
    ca: ServerIdentity,
    subject: x509.Name,
    key: PrivateKey,
    days: int,
    extensions: Iterable[tuple[x509.ExtensionType, bool]],
) -> x509.Certificate:
    """An end-entity certificate from ``ca`` with ``extensions`` and the authority key id;
    its validity never outlasts the CA's."""
    builder = _builder(
        subject, ca.cert.subject, key.public_key(), days, ca.cert.not_valid_after_utc
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical)
    builder = builder.add_extension(_authority_key_id(ca.cert), False)
    return builder.sign(ca.key, hashes.SHA256())


def _key_usage(**bits: bool) -> x509.KeyUsage:
    return x509.KeyUsage(**(dict.fromkeys(_KEY_USAGE_BITS, False) | bits))


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey,
    days: int,
    limit: datetime.datetime | None = None,
) -> x509.CertificateBuilder:
    """Serial (RFC 5280 §4.1.2.2), validity (§4.1.2.5) and subject key identifier (§4.2.1.2)."""
    if days < 1:
        raise PkiError(f"a certificate must be valid for at least one day, not {days}")
    start = datetime.datetime.now(datetime.UTC) - BACKDATE
    end = start + datetime.timedelta(days=days)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(min(end, limit) if limit else end)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), False)
    )


def _authority_key_id(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    """RFC 5280 §4.2.1.1: the issuer's own subject key identifier when it has one."""
    ski = _extension(issuer, x509.SubjectKeyIdentifier)
    if ski is not None:
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    return x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key())


def _extension(cert: x509.Certificate, kind: type) -> x509.ExtensionType | None:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def _common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else cert.subject.rfc4514_string()


def _name(common_name: str) -> x509.Name:
    try:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    except ValueError as e:
        raise PkiError(f"bad common name {common_name!r}: {e}") from None


def _new_key(key_type: str, allowed: tuple[str, ...]) -> PrivateKey:
    if key_type not in allowed:
        raise PkiError(f"key type {key_type!r} is not one of {', '.join(allowed)}")
    if key_type == "ecdsa-p256":
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=int(key_type[3:]))


def _key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(_PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _pems(certs: Iterable[x509.Certificate]) -> bytes:
    return b"".join(cert.public_bytes(_PEM) for cert in certs)


def _spki(public_key: CertificatePublicKeyTypes) -> bytes:
    der, spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return public_key.public_bytes(der, spki)


def _read(path: Path) -> tuple[bytes, int]:
    try:
        return path.read_bytes(), path.stat().st_mode
    except OSError as e:
        raise PkiError(f"{path}: {e.strerror}") from None


def _load_key(path: Path, owners: Collection[int]) -> PrivateKey:
    """An unencrypted RSA or ECDSA key, PEM or DER, read as a secret file: not a link,
    owned by one of ``owners``, not readable by group or others."""
    try:
        data = private.read(path, owners)
    except private.PrivateFileError as e:
        raise PkiError(str(e)) from None
    try:
        if b"-----BEGIN" in data:
            key = serialization.load_pem_private_key(data, password=None)
        else:
            key = serialization.load_der_private_key(data, password=None)
    except TypeError:
        raise PkiError(f"{path}: the key is encrypted; vpnaaa needs it unencrypted") from None
    except (ValueError, UnsupportedAlgorithm) as e:
        raise PkiError(f"{path}: not a private key: {e}") from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise PkiError(f"{path}: only RSA and ECDSA keys are supported")
    return key


def _load_certs(path: Path, required: bool) -> list[x509.Certificate]:
    data, _ = _read(path)
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificates(data)
        if data.strip():
            return [x509.load_der_x509_certificate(data)]
    except ValueError as e:
        raise PkiError(f"{path}: not a certificate: {e}") from None
    if required:
        raise PkiError(f"{path}: no certificate in the file")
    return []


def _save(directory: Path, files: dict[Path, bytes], force: bool) -> None:
    """Write ``files`` (``*.key`` and ``*.p12`` mode 0600, others 0644) in ``directory``
    (0700 when new).

    Without ``force``, nothing is written if any of them exists.
    """
    existing = [str(path) for path in files if path.exists() or path.is_symlink()]
    if existing and not force:
        raise PkiError(f"refusing to overwrite existing {', '.join(existing)}")
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise PkiError(f"{directory}: {e.strerror}") from None
    for path, data in files.items():
        _write(path, data, 0o600 if path.suffix in (".key", ".p12") else 0o644, replace=force)


def _write(path: Path, data: bytes, mode: int, replace: bool) -> None:
    """Create ``path`` with ``mode`` from the first instant (O_EXCL); or replace it by rename."""
    target = path.with_name(f".{path.name}.{secrets.token_hex(4)}") if replace else path
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise PkiError(f"refusing to overwrite existing {path}") from None
    except OSError as e:
        raise PkiError(f"{path}: {e.strerror}") from None
    try:
        private.owned_as(fd, path.parent)  # root issuing into the daemon user's state
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(target, path)
    except BaseException:
        target.unlink(missing_ok=True)
        raise
