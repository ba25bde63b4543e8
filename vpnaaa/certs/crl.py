"""Certificate revocation lists (RFC 5280 §5, §6.3): reading them and asking them.

:func:`crl_answer` is the sans-IO core: whether one CRL speaks for a certificate (issued by
the certificate's issuer: same name, signature valid with the issuer's key, the issuer
allowed to sign CRLs) and what it says. A CRL whose nextUpdate has passed is *stale*: a
certificate it lists is still revoked (revocation is permanent, RFC 5280 §3.3), but its
silence proves nothing any more.

:class:`CrlFile` is a CRL file on disk (PEM, one or more CRLs, or DER), read at
construction and again whenever its inode, size or modification time changes (one
``stat`` per look-up or :meth:`CrlFile.follow`) or :meth:`CrlFile.reload` is called
(SIGHUP). A file that cannot be read or parsed (:func:`parse_crls`: whatever
cryptography raises on hostile input becomes :class:`CrlError`) keeps the CRLs read last,
with one log line per change of the file. Its ``listeners`` are told after every read
that succeeded (the IKE responder ends the live sessions a new CRL revokes,
:meth:`CrlFile.revoked`). All of it blocks (small local files), like the users file.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm

from vpnaaa import logs
from vpnaaa.certs.files import Version, version

log = logs.get("vpnaaa.certs")


@dataclass(frozen=True)
class CrlAnswer:
    """What one CRL says about one certificate; ``detail`` is for the log line."""

    status: Literal["good", "revoked", "stale"]
    detail: str


class CrlError(ValueError):
    """Data that is not a CRL we can read (:func:`parse_crls`)."""


# what cryptography raises on hostile CRL input: bad DER (ValueError, also for a Name that
# is not valid UTF-8), a version other than v1/v2, an extension twice or of a kind it
# cannot represent, an unknown signature algorithm
_UNREADABLE = (
    ValueError,
    x509.InvalidVersion,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
    UnsupportedAlgorithm,
)


def parse_crls(data: bytes, limit: int | None = None) -> tuple[x509.CertificateRevocationList, ...]:
    """The CRLs in ``data``: PEM blocks (any number; a block repeated counts once) or one
    DER CRL. More than ``limit`` distinct PEM blocks, or anything cryptography cannot
    read, raises :class:`CrlError`: this is the one place that catches what it raises. The
    fields it parses only when first asked (the issuer Name, the extensions of the CRL
    and of its entries) are read here, so the CRLs returned answer without raising."""
    pem = b"-----BEGIN X509 CRL-----" in data
    blocks = _pem_blocks(data, limit) if pem else []
    try:
        if pem:
            crls = tuple(x509.load_pem_x509_crl(block) for block in blocks)
        else:
            crls = (x509.load_der_x509_crl(data),)
        for crl in crls:
            crl.issuer.rfc4514_string()
            len(crl.extensions)
            for entry in crl:
                len(entry.extensions)
    except _UNREADABLE as e:
        raise CrlError(f"{type(e).__name__}: {e}") from None
    return crls


def _pem_blocks(data: bytes, limit: int | None) -> list[bytes]:
    """The distinct PEM CRL blocks of ``data`` (white space aside), at most ``limit``."""
    blocks: dict[bytes, bytes] = {}  # the block without white space -> the block
    for part in data.split(b"-----END X509 CRL-----")[:-1]:
        start = part.find(b"-----BEGIN X509 CRL-----")
        if start < 0:
            raise CrlError("a PEM END line without its BEGIN line")
        blocks.setdefault(b"".join(part[start:].split()), part[start:])
        if limit is not None and len(blocks) > limit:
            raise CrlError(f"more than {limit} CRLs")
    return [block + b"-----END X509 CRL-----\n" for block in blocks.values()]


def issued_by(crl: x509.CertificateRevocationList, issuer: x509.Certificate) -> bool:
    """Whether ``issuer`` signed ``crl``: its subject is the CRL's issuer, its key verifies
    the signature, and its keyUsage (when present) asserts cRLSign (RFC 5280 §6.3.3 (f)).
    A CRL whose issuer Name cannot be read (not from :func:`parse_crls`) is nobody's."""
    try:
        if crl.issuer != issuer.subject:
            return False
    except ValueError:
        return False
    try:
        usage = issuer.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        usage = None
    if usage is not None and not usage.crl_sign:
        return False
    try:
        return crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
    except (TypeError, ValueError):  # a key type CRLs cannot be signed with
        return False


def crl_answer(
    crl: x509.CertificateRevocationList,
    cert: x509.Certificate,
    issuer: x509.Certificate,
    now: datetime.datetime,
) -> CrlAnswer | None:
    """What ``crl`` says about ``cert`` (issued by ``issuer``) at ``now``; None when the
    CRL is not the issuer's (:func:`issued_by`) or not yet valid (thisUpdate ahead), and
    when it is partial (:func:`partial`) and does not list ``cert``: such a CRL proves a
    revocation, never that a certificate is good."""
    if cert.issuer != issuer.subject or not issued_by(crl, issuer):
        return None
    return signed_answer(crl, cert, now)


def signed_answer(
    crl: x509.CertificateRevocationList, cert: x509.Certificate, now: datetime.datetime
) -> CrlAnswer | None:
    """:func:`crl_answer` for a ``crl`` the caller knows ``cert``'s issuer signed (the
    issuer's name on ``cert``, :func:`issued_by` on the CRL): no signature check again."""
    if crl.last_update_utc > now:
        return None
    entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
    if entry is not None:
        return CrlAnswer("revoked", _revocation(entry))
    if partial(crl, cert):
        return None
    next_update = crl.next_update_utc
    if next_update is not None and next_update < now:
        return CrlAnswer("stale", f"nextUpdate {next_update:%Y-%m-%d %H:%M:%SZ} has passed")
    return CrlAnswer("good", f"not listed (thisUpdate {crl.last_update_utc:%Y-%m-%d %H:%M}Z)")


def partial(crl: x509.CertificateRevocationList, cert: x509.Certificate) -> bool:
    """Whether ``crl`` covers less than every certificate of its issuer for every reason:
    a delta CRL (RFC 5280 §5.2.4), or an issuingDistributionPoint (§5.2.5) that limits it
    to CA, user or attribute certificates ``cert`` is not, to some reasons, or makes it
    indirect (§6.3.3 (b)). A distribution point name alone scopes nothing here (Active
    Directory Certificate Services puts its own in full CRLs)."""
    extensions = crl.extensions
    try:
        extensions.get_extension_for_class(x509.DeltaCRLIndicator)
        return True
    except x509.ExtensionNotFound:
        pass
    try:
        scope = extensions.get_extension_for_class(x509.IssuingDistributionPoint).value
    except x509.ExtensionNotFound:
        return False
    try:
        ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        ca = False
    return bool(
        (scope.only_contains_ca_certs and not ca)
        or (scope.only_contains_user_certs and ca)
        or scope.only_contains_attribute_certs
        or scope.only_some_reasons
        or scope.indirect_crl
    )


def _revocation(entry: x509.RevokedCertificate) -> str:
    text = f"revoked {entry.revocation_date_utc:%Y-%m-%d %H:%M:%SZ}"
    try:
        reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    except x509.ExtensionNotFound:
        return text
    return f"{text}, reason {reason.name}"


class CrlFile:
    """A CRL file that follows changes on disk (module docstring). Blocks."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._crls: tuple[x509.CertificateRevocationList, ...] = ()
        self._seen: Version | None = None  # (inode, size, mtime_ns) last read
        # serial -> the CRLs listing it, built on the first revoked() after a read
        self._listed: dict[int, list[x509.CertificateRevocationList]] | None = None
        # issuer -> the CRLs it signed, worked out on the first signed_by() after a read
        self._signed: dict[x509.Certificate, tuple[x509.CertificateRevocationList, ...]] = {}
        self.listeners: list[Callable[[CrlFile], None]] = []  # told after each good read
        self.reload()

    def crls(self) -> tuple[x509.CertificateRevocationList, ...]:
        """The file's CRLs, read again first if the file changed since."""
        self.follow()
        return self._crls

    def follow(self) -> None:
        """Read the file again if it changed since the last read (one ``stat``)."""
        if version(self.path) != self._seen:
            self.reload()

    def signed_by(self, issuer: x509.Certificate) -> tuple[x509.CertificateRevocationList, ...]:
        """The CRLs of the last read that ``issuer`` signed (:func:`issued_by`), their
        signatures checked once per read and issuer, not once per login. Does not read
        the file (:meth:`follow` first)."""
        signed = self._signed.get(issuer)
        if signed is None:
            signed = self._signed[issuer] = tuple(c for c in self._crls if issued_by(c, issuer))
        return signed

    def revoked(
        self, chain: Sequence[x509.Certificate], now: datetime.datetime
    ) -> tuple[x509.Certificate, CrlAnswer] | None:
        """The first certificate of a validated ``chain`` (leaf first, trust anchor last)
        that a CRL of this file revokes (:func:`crl_answer`: its issuer's CRL, signed by
        that issuer), with the answer; None when none is listed. The serials are indexed
        once per read, so asking for every live session costs a look-up per certificate
        and a signature check only where a serial is listed. Does not read the file."""
        if self._listed is None:
            self._listed = {}
            for crl in self._crls:
                for entry in crl:
                    self._listed.setdefault(entry.serial_number, []).append(crl)
        for position, cert in enumerate(chain[:-1]):
            for crl in self._listed.get(cert.serial_number, ()):
                answer = crl_answer(crl, cert, chain[position + 1], now)
                if answer is not None and answer.status == "revoked":
                    return cert, answer
        return None

    def reload(self) -> None:
        """Read the file again now (SIGHUP); keeps the last good CRLs when it cannot."""
        seen = version(self.path)
        changed = seen != self._seen
        self._seen = seen
        try:
            data = self.path.read_bytes()
            crls = parse_crls(data)
        except OSError as e:
            self._keep(changed, f"cannot read: {e.strerror}")
            return
        except CrlError as e:
            self._keep(changed, f"not a PEM or DER CRL we can read ({e})")
            return
        self._crls, self._listed, self._signed = crls, None, {}
        log.info(
            "CRL file {path}: {summary}",
            path=str(self.path),
            summary="; ".join(
                f"{crl.issuer.rfc4514_string()}: {len(crl)} revoked, next update "
                + (f"{crl.next_update_utc:%Y-%m-%d %H:%M}Z" if crl.next_update_utc else "none")
                for crl in crls
            ),
        )
        for listener in self.listeners:
            listener(self)

    def _keep(self, changed: bool, why: str) -> None:
        """The file could not be read: the last good CRLs stay; one line per change."""
        if changed:
            log.warn(
                "CRL file {path}: {why}; keeping the {n} CRL(s) read before",
                path=str(self.path),
                why=why,
                n=len(self._crls),
            )
