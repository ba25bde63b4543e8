"""Whether a validated client certificate is revoked: deny list, CRL files, CRL
distribution points, OCSP, and the caller's soft-fail or hard-fail policy.

:meth:`RevocationChecker.check` asks, in this order:

1. the deny list (:class:`~vpnaaa.certs.deny.DenyList`): a denied serial is refused;
2. the CRL files (:class:`~vpnaaa.certs.crl.CrlFile`), for every certificate of the chain
   below the trust anchor (RFC 5280 §6.3): a listed one is refused;
3. the certificate's CRL distribution points over HTTP, when the caller enabled them and
   no fresh CRL file already answered for the leaf;
4. the OCSP responder, when the caller configured one, for the leaf.

Any "revoked" refuses. The leaf is accepted when a source said "good"; when none could
(a stale CRL, no CRL from that issuer, the responder down, "unknown", a bad response)
hard-fail refuses and soft-fail accepts with a log line saying why. A checker with no
source configured (only a deny list, or nothing) accepts what the deny list does not refuse.
Revocation of intermediate CAs is read from CRL files only, and their silence is not held
against them (hard-fail concerns the leaf).

One checker waits on the network (OCSP, CRL distribution points) for at most
``max_in_flight`` certificates at once (:data:`NETWORK_IN_FLIGHT`), for the IKE responder
and the EAP engine alike. Beyond that a certificate still gets the deny list and the CRL
files (local, synchronous), and the network sources count as unavailable: soft-fail
accepts it, hard-fail refuses it (unless a CRL file vouched for it), with one rate-limited
log line saying so.

Lines about stale CRLs and failing responders are rate-limited (:class:`vpnaaa.logs.Throttle`);
the refusal itself is the caller's one log line, from :attr:`RevocationResult.reason`, which
names at most :data:`MAX_SAID` of the sources' answers (then how many more). The check never
fails: an exception in it (a bug) refuses the certificate with one rate-limited log line.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from twisted.internet import defer
from twisted.logger import LogLevel
from twisted.python.failure import Failure

from vpnaaa import logs
from vpnaaa.certs.crl import CrlFile, signed_answer
from vpnaaa.certs.deny import DenyList
from vpnaaa.certs.fetch import CrlDistributionPoints, FetchError, OcspClient
from vpnaaa.certs.ocsp import OcspError
from vpnaaa.certs.verify import VerifiedCertificate, serial_hex

log = logs.get("vpnaaa.certs")
# certificates one checker waits on OCSP or CRL distribution points for at once
NETWORK_IN_FLIGHT = 256
MAX_SAID = 4  # the sources' answers a reason names; the others are counted


@dataclass(frozen=True)
class RevocationResult:
    """The verdict; ``reason`` is one log line's worth (which source said what)."""

    accepted: bool
    reason: str


class RevocationChecker:
    """One caller's revocation policy over shared sources (module docstring).

    ``clock``: the reactor (``seconds()``). CrlFile, DenyList, CrlDistributionPoints and
    OcspClient instances may be shared between checkers (one per profile, say).
    ``max_in_flight``: the bound on checks waiting on the network (module docstring).
    """

    def __init__(
        self,
        clock: Any,
        *,
        crl_files: Sequence[CrlFile] = (),
        deny: DenyList | None = None,
        crl_distribution_points: CrlDistributionPoints | None = None,
        ocsp: OcspClient | None = None,
        hard_fail: bool = False,
        max_in_flight: int = NETWORK_IN_FLIGHT,
    ) -> None:
        self.clock = clock
        self.crl_files = tuple(crl_files)
        self.deny = deny
        self.crl_distribution_points = crl_distribution_points
        self.ocsp = ocsp
        self.hard_fail = hard_fail
        self.max_in_flight = max_in_flight
        self._in_flight = 0  # checks waiting on OCSP or a CRL distribution point
        self._log = logs.Throttle(log, clock.seconds, interval=60.0)

    def check(self, verified: VerifiedCertificate) -> defer.Deferred[RevocationResult]:
        """The verdict on ``verified`` (a chain :class:`ClientVerifier` accepted); never
        fails (an exception refuses, :meth:`_failed`)."""
        d = defer.ensureDeferred(self._decide(verified))
        return d.addErrback(self._failed)

    def _failed(self, failure: Failure) -> RevocationResult:
        """A bug, not a revocation problem: the certificate refused, and one log line a
        minute (with the traceback) rather than one per login."""
        self._log.emit(
            ("failed", failure.type),
            LogLevel.error,
            "revocation check failed: {why}",
            why=failure.getErrorMessage(),
            log_failure=failure,
        )
        return RevocationResult(
            False, f"revocation check failed: {failure.type.__name__}: {failure.getErrorMessage()}"
        )

    async def _decide(self, verified: VerifiedCertificate) -> RevocationResult:
        """The deny list, then the sources (:meth:`_check`)."""
        return self._denied(verified) or await self._check(verified)

    def _denied(self, verified: VerifiedCertificate) -> RevocationResult | None:
        serial = verified.chain[0].serial_number
        if self.deny is not None and self.deny.denied(serial):
            return RevocationResult(False, f"serial {serial_hex(serial)} is on the deny list")
        return None

    def recheck(self, verified: VerifiedCertificate) -> RevocationResult | None:
        """The refusal if the deny list or the CRL files (read again if changed) now
        revoke ``verified``, accepted before; local and synchronous, for the moments
        between a verdict and the session it lets in."""
        denied = self._denied(verified)
        if denied is not None:
            return denied
        for crl_file in self.crl_files:
            crl_file.follow()
            found = crl_file.revoked(verified.chain, self._now())
            if found is not None:
                cert, answer = found
                position = verified.chain.index(cert)
                return RevocationResult(False, _revoked(cert, position, answer.detail, crl_file))
        return None

    async def _check(self, verified: VerifiedCertificate) -> RevocationResult:
        chain = verified.chain
        leaf = chain[0]
        serial = serial_hex(leaf.serial_number)
        now = self._now()
        said: list[str] = []  # what the sources answered for the leaf, for the reason
        good = False
        for crl_file in self.crl_files:
            crl_file.follow()
        for position, cert in enumerate(chain[:-1]):
            issuer = chain[position + 1]
            if cert.issuer != issuer.subject:  # no CRL of that issuer speaks of it
                continue
            for crl_file in self.crl_files:
                for crl in crl_file.signed_by(issuer):
                    answer = signed_answer(crl, cert, now)
                    if answer is None:
                        continue
                    if answer.status == "revoked":
                        return RevocationResult(
                            False, _revoked(cert, position, answer.detail, crl_file)
                        )
                    if answer.status == "stale":
                        self._stale(str(crl_file.path), crl, answer.detail)
                    if position == 0:
                        said.append(f"CRL {crl_file.path}: {answer.status}")
                        good = good or answer.status == "good"
        if len(chain) < 2:  # the leaf is itself a trust anchor: no issuer to ask about it
            return self._verdict(serial, good, said)
        points = self.crl_distribution_points is not None and not good
        if not points and self.ocsp is None:
            return self._verdict(serial, good, said)
        if self._in_flight >= self.max_in_flight:
            self._log.emit(
                ("busy",),
                LogLevel.warn,
                "{n} revocation checks wait on OCSP or CRL distribution points already, the "
                "limit: certificate {serial} checked against the deny list and CRL files only",
                n=self._in_flight,
                serial=serial,
            )
            said.append(
                f"OCSP and CRL distribution points not asked: {self._in_flight} checks wait "
                "on them, the limit"
            )
            return self._verdict(serial, good, said, quiet=True)
        self._in_flight += 1
        try:
            result = await self._network(verified, now, points, good, said)
        finally:
            self._in_flight -= 1
        # a serial denied, or a CRL file reread, while the network was asked (both end
        # only sessions already up) is refused
        return (self.recheck(verified) if result.accepted else None) or result

    async def _network(
        self,
        verified: VerifiedCertificate,
        now: datetime.datetime,
        points: bool,
        good: bool,
        said: list[str],
    ) -> RevocationResult:
        """The CRL distribution points (when ``points``) and the OCSP responder on the
        leaf; ``good``: whether a CRL file already vouched for it."""
        leaf, issuer = verified.chain[0], verified.chain[1]
        serial = serial_hex(leaf.serial_number)
        if points:
            verdict = await self._distribution_points(leaf, issuer, now, said)
            if isinstance(verdict, RevocationResult):
                return verdict
            good = verdict
        if self.ocsp is not None:
            try:
                answer = await self.ocsp.check(leaf, issuer)
            except (FetchError, OcspError) as e:
                self._log.emit(("ocsp", self.ocsp.url), LogLevel.warn, "OCSP: {why}", why=str(e))
                said.append(f"OCSP: {e}")
            else:
                if answer.status == "revoked":
                    return RevocationResult(
                        False, f"certificate {serial} {answer.detail} (OCSP {self.ocsp.url})"
                    )
                said.append(f"OCSP {self.ocsp.url}: {answer.detail}")
                good = good or answer.status == "good"
        return self._verdict(serial, good, said)

    async def _distribution_points(
        self,
        leaf: x509.Certificate,
        issuer: x509.Certificate,
        now: datetime.datetime,
        said: list[str],
    ) -> RevocationResult | bool:
        """The refusal when a distribution point's CRL lists ``leaf``, else whether one
        said "good"; what each said goes to ``said``."""
        assert self.crl_distribution_points is not None
        urls = CrlDistributionPoints.urls(leaf)
        if not urls:
            said.append("no http:// CRL distribution point")
        good = False
        for url in urls:
            try:
                crls = await self.crl_distribution_points.crls(url, issuer)
            except FetchError as e:
                self._log.emit(("crl-dp", url), LogLevel.warn, "CRL: {why}", why=str(e))
                said.append(f"CRL {e}")
                continue
            answered = False
            for crl in crls if leaf.issuer == issuer.subject else ():  # the issuer's (fetch.py)
                answer = signed_answer(crl, leaf, now)
                if answer is None:
                    continue
                answered = True
                if answer.status == "revoked":
                    serial = serial_hex(leaf.serial_number)
                    return RevocationResult(
                        False, f"certificate {serial} {answer.detail} (CRL {url})"
                    )
                if answer.status == "stale":
                    self._stale(url, crl, answer.detail)
                said.append(f"CRL {url}: {answer.status}")
                good = good or answer.status == "good"
            if not answered:  # the issuer's, but partial or not yet valid
                said.append(f"CRL {url}: none in force for this certificate")
        return good

    def _verdict(
        self, serial: str, good: bool, said: list[str], *, quiet: bool = False
    ) -> RevocationResult:
        """``quiet``: the soft-fail acceptance was logged already (the network bound)."""
        sources = bool(self.crl_files or self.crl_distribution_points or self.ocsp)
        summary = _summary(said) or "no CRL from the issuer"
        if good or not sources:
            return RevocationResult(True, summary if sources else "no revocation source configured")
        if self.hard_fail:
            return RevocationResult(
                False, f"revocation status of {serial} unknown (hard-fail): {summary}"
            )
        if not quiet:
            self._log.emit(
                ("soft-fail", summary),
                LogLevel.warn,
                "revocation status of certificate {serial} unknown, accepted (soft-fail): {why}",
                serial=serial,
                why=summary,
            )
        return RevocationResult(True, f"revocation status unknown (soft-fail): {summary}")

    def _stale(self, source: str, crl: x509.CertificateRevocationList, detail: str) -> None:
        self._log.emit(
            ("stale", source),
            LogLevel.warn,
            "CRL {source} of {issuer} is stale ({detail}): the certificates it lists stay "
            "revoked, the others count as unknown until a newer CRL arrives",
            source=source,
            issuer=crl.issuer.rfc4514_string(),
            detail=detail,
        )

    def _now(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self.clock.seconds(), datetime.UTC)


def _revoked(cert: x509.Certificate, position: int, detail: str, crl_file: CrlFile) -> str:
    what = "certificate" if position == 0 else f"intermediate CA {cert.subject.rfc4514_string()}"
    return f"{what} {serial_hex(cert.serial_number)} {detail} (CRL {crl_file.path})"


def _summary(said: list[str]) -> str:
    """The first :data:`MAX_SAID` answers, and how many more there were."""
    shown = "; ".join(said[:MAX_SAID])
    return f"{shown}; and {len(said) - MAX_SAID} more" if len(said) > MAX_SAID else shown
