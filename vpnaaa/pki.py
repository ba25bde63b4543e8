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
"""

from __future__ import annotations

import datetime
import ipaddress
import itertools
import os
import re
import secrets
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from vpnaaa import private

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
IKE_INTERMEDIATE = x509.ObjectIdentifier("1.3.6.1.5.5.8.2.2")
SERVER_EKU = (ExtendedKeyUsageOID.SERVER_AUTH, IKE_INTERMEDIATE)
CA_KEY_TYPES = ("rsa3072", "ecdsa-p256")
SERVER_KEY_TYPES = ("rsa2048", "rsa3072", "ecdsa-p256")
BACKDATE = datetime.timedelta(minutes=5)  # tolerate clients whose clock is a little behind
_PEM = serialization.Encoding.PEM
_DNS_NAME = re.compile(r"(\*\.)?[A-Za-z0-9_-]{1,63}(\.[A-Za-z0-9_-]{1,63})*")
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


def init_ca(
    directory: Path,
    common_name: str = "vpnaaa demo CA",
    days: int = 3650,
    key_type: str = "rsa3072",
) -> CaFiles:
    """Create a self-signed CA in ``directory``; never replaces an existing one.

    basicConstraints CA:TRUE and keyUsage keyCertSign+cRLSign, both critical, and a subject key
    identifier (RFC 5280 §4.2.1.9, §4.2.1.3, §4.2.1.2).
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
    ca = load_server_identity(Path(ca_dir) / "ca.key", Path(ca_dir) / "ca.pem")
    sans = _names(name, extra_names)
    if ca.cert.not_valid_after_utc <= datetime.datetime.now(datetime.UTC):
        raise PkiError(
            f"{Path(ca_dir) / 'ca.pem'}: the CA expired on {ca.cert.not_valid_after_utc}"
        )
    key = _new_key(key_type, SERVER_KEY_TYPES)
    builder = _builder(
        _name(sans[0].value), ca.cert.subject, key.public_key(), days, ca.cert.not_valid_after_utc
    )
    for extension, critical in _server_extensions(key, sans):
        builder = builder.add_extension(extension, critical)
    builder = builder.add_extension(_authority_key_id(ca.cert), False)
    cert = builder.sign(ca.key, hashes.SHA256())
    chain = _pems((ca.cert, *ca.chain))
    _save(out_dir, {files.key: _key_pem(key), files.cert: _pems([cert]), files.chain: chain}, force)
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
    for extension, critical in _server_extensions(key, sans):
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


def _server_extensions(
    key: PrivateKey, sans: list[x509.GeneralName]
) -> list[tuple[x509.ExtensionType, bool]]:
    usage = _key_usage(digital_signature=True, key_encipherment=isinstance(key, rsa.RSAPrivateKey))
    return [
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (usage, True),
        (x509.ExtendedKeyUsage(list(SERVER_EKU)), False),
        (x509.SubjectAlternativeName(sans), False),
    ]


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
    """Write ``files`` (``*.key`` mode 0600, others 0644) in ``directory`` (0700 when new).

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
        _write(path, data, 0o600 if path.suffix == ".key" else 0o644, replace=force)


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
