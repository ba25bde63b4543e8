"""Hostile CRLs, from the outsider review of issue 12's revocation code:

- a CRL distribution point's answer is believed only for the CRLs the certificate's issuer
  signed, and for at most an hour: another CA's CRL with a nextUpdate in year 9000 is a
  failed fetch, not a cache entry until then;
- CRLs cryptography cannot read (an issuer Name that is not UTF-8, version 117) are a
  failed fetch, or a CRL file that keeps its last good CRLs, never an exception past the
  edge (the 5 s follow timer of the service goes on);
- an answer of a thousand copies of the issuer's CRL costs one CRL, and a reason names
  at most a few of the sources' answers.

The distribution point is a loopback HTTP server (:class:`ServedCrlCase`); the CRLs come
from `openssl ca`, and are damaged byte by byte where cryptography would not build them.
"""

from __future__ import annotations

from cryptography import x509
from twisted.application import internet
from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from tests.certs_openssl import USER, OpensslCa
from tests.support import log_lines
from tests.test_certs_revocation import ServedCrlCase, _clock, _closed_port, _now, _Setup
from vpnaaa.certs import CrlFile, DenyList, RevocationChecker, fetch
from vpnaaa.certs.crl import CrlError, crl_answer, parse_crls
from vpnaaa.config import RevocationConfig
from vpnaaa.service import CRL_FOLLOW_INTERVAL, RevocationCheckers

FOREVER = ("20200101000000Z", "90000101000000Z")  # thisUpdate, nextUpdate (year 9000)
ISSUER_CN = b"\x0c\x0fTest Issuing CA"  # the issuing CA's CN as openssl encodes it


def _tbs_start(der: bytes) -> int:
    """Where the tbsCertList's content begins in a DER CRL (after two SEQUENCE headers)."""
    at = 0
    for _ in range(2):
        assert der[at] == 0x30
        first = der[at + 1]
        at += 2 + (first & 0x7F if first & 0x80 else 0)
    return at


def with_version(der: bytes, version: int) -> bytes:
    """``der`` (a v2 CRL) claiming another version (its signature broken, unchecked)."""
    at = _tbs_start(der)
    assert der[at : at + 3] == b"\x02\x01\x01", der[at : at + 3]
    return der[:at] + bytes([2, 1, version]) + der[at + 3 :]


def with_bad_issuer(der: bytes) -> bytes:
    """``der`` whose issuer CN is not UTF-8 any more (same length)."""
    assert der.find(ISSUER_CN) > _tbs_start(der)
    return der.replace(ISSUER_CN, ISSUER_CN[:-2] + b"\xff\xfe", 1)


class DistributionPointTrust(ServedCrlCase):
    """What a distribution point answers is kept only as far as the issuer signed it."""

    def setUp(self) -> None:
        super().setUp()
        self.log = log_lines(self)

    def revoke_alice(self) -> None:
        self.pki.inter.revoke(self.pki.alice)
        self.pki.inter.crl(self.crl, der=True)

    @defer.inlineCallbacks
    def test_a_foreign_crl_is_a_failed_fetch(self) -> defer.Generator:
        """Another CA's CRL good until year 9000: a failure retried after
        FAILED_CRL_RETRY, so the revocation the issuer publishes next is seen."""
        self.patch(fetch, "FAILED_CRL_RETRY", 0.5)
        other = OpensslCa(self.dir / "other", "Other CA")
        other.crl(self.crl, der=True, window=FOREVER)
        soft = yield self.check(self.pki.alice, hard_fail=False)
        self.assertTrue(soft.accepted, soft.reason)
        self.assertIn("soft-fail", soft.reason)
        self.assertIn("no CRL signed by CN=Test Issuing CA", soft.reason)
        hard = yield self.check(self.pki.alice)
        self.assertFalse(hard.accepted)
        self.assertIn("no CRL signed by CN=Test Issuing CA", hard.reason)
        self.assertEqual(self.served.requests, 1)
        self.revoke_alice()
        yield task.deferLater(reactor, 0.6, lambda: None)
        revoked = yield self.check(self.pki.alice, hard_fail=False)
        self.assertFalse(revoked.accepted)
        self.assertIn(f"revoked {_now():%Y-%m-%d}", revoked.reason)
        self.assertIn(f"(CRL {self.url})", revoked.reason)
        self.assertEqual(self.served.requests, 2)

    @defer.inlineCallbacks
    def test_the_issuers_crl_is_kept_an_hour_at_most(self) -> defer.Generator:
        """The issuer's own CRL with a nextUpdate in year 9000 is fetched again after
        MAX_CRL_LIFETIME (shortened here), and its revocation seen."""
        self.patch(fetch, "MAX_CRL_LIFETIME", 0.5)
        self.patch(fetch, "MIN_CRL_LIFETIME", 0.2)
        self.pki.inter.crl(self.crl, der=True, window=FOREVER)
        good = yield self.check(self.pki.alice)
        self.assertTrue(good.accepted, good.reason)
        self.revoke_alice()
        cached = yield self.check(self.pki.alice)
        self.assertTrue(cached.accepted, cached.reason)
        self.assertEqual(self.served.requests, 1)
        yield task.deferLater(reactor, 0.6, lambda: None)
        revoked = yield self.check(self.pki.alice)
        self.assertFalse(revoked.accepted)
        self.assertIn("revoked", revoked.reason)
        self.assertEqual(self.served.requests, 2)

    @defer.inlineCallbacks
    def test_an_unreadable_issuer_name(self) -> defer.Generator:
        """A CRL whose issuer Name is not UTF-8: a failed fetch (the policy decides),
        asked again only after FAILED_CRL_RETRY."""
        self.pki.inter.crl(self.crl, der=True)
        self.crl.write_bytes(with_bad_issuer(self.crl.read_bytes()))
        soft = yield self.check(self.pki.alice, hard_fail=False)
        self.assertTrue(soft.accepted, soft.reason)
        self.assertIn(f"{self.url}: not a CRL", soft.reason)
        hard = yield self.check(self.pki.alice)
        self.assertFalse(hard.accepted)
        self.assertIn("not a CRL (ValueError", hard.reason)
        self.assertEqual(self.served.requests, 1)

    @defer.inlineCallbacks
    def test_version_117(self) -> defer.Generator:
        self.pki.inter.crl(self.crl, der=True)
        self.crl.write_bytes(with_version(self.crl.read_bytes(), 117))
        for hard_fail in (False, True, False):
            result = yield self.check(self.pki.alice, hard_fail)
            self.assertEqual(result.accepted, not hard_fail, result.reason)
            self.assertIn(
                "not a CRL (InvalidVersion: 117 is not a valid CRL version)", result.reason
            )
        self.assertEqual(self.served.requests, 1)  # the failure is remembered

    @defer.inlineCallbacks
    def test_copies_of_the_issuers_crl_count_once(self) -> defer.Generator:
        one = self.pki.inter.crl(self.dir / "one.crl").read_bytes()
        self.crl.write_bytes(one * ((1 << 20) // len(one) - 1))  # 1 MiB, the fetch limit
        good = yield self.check(self.pki.alice)
        self.assertTrue(good.accepted, good.reason)
        self.assertEqual(good.reason, f"CRL {self.url}: good")
        revoked = yield self.check(self.pki.bob)
        self.assertFalse(revoked.accepted)

    @defer.inlineCallbacks
    def test_at_most_four_crls(self) -> defer.Generator:
        """Four distinct CRLs (the limit) are read; five are a failed fetch."""
        crls = [self.pki.inter.crl(self.dir / f"{n}.crl").read_bytes() for n in range(5)]
        self.crl.write_bytes(b"".join(crls[:4]))
        good = yield self.check(self.pki.alice)
        self.assertTrue(good.accepted, good.reason)
        self.assertEqual(good.reason.count(f"CRL {self.url}: good"), 4)
        self.points = fetch.CrlDistributionPoints(self.points.fetcher)
        self.crl.write_bytes(b"".join(crls))
        refused = yield self.check(self.pki.alice)
        self.assertFalse(refused.accepted)
        self.assertIn("not a CRL (more than 4 CRLs)", refused.reason)


class ReasonBound(unittest.TestCase):
    @defer.inlineCallbacks
    def test_a_reason_names_four_answers(self) -> defer.Generator:
        """Six distribution points, all down: the reason names four, counts the rest."""
        urls = [f"http://127.0.0.1:{_closed_port()}/{n}.crl" for n in range(6)]
        points = "crlDistributionPoints = " + ", ".join(f"URI:{url}" for url in urls)
        pki = _Setup(self, USER + points + "\n")
        checker = RevocationChecker(
            reactor,
            crl_distribution_points=fetch.CrlDistributionPoints(fetch.HttpFetcher(reactor, 2.0)),
            hard_fail=True,
        )
        result = yield checker.check(pki.verified(pki.alice))
        self.assertFalse(result.accepted)
        for url in urls[:4]:
            self.assertIn(url, result.reason)
        for url in urls[4:]:
            self.assertNotIn(url, result.reason)
        self.assertTrue(result.reason.endswith("; and 2 more"), result.reason)


class UnreadableCrls(unittest.TestCase):
    def setUp(self) -> None:
        self.pki = _Setup(self)
        self.path = self.pki.inter.crl(self.pki.dir / "issuing.crl", der=True)
        self.good = self.path.read_bytes()
        self.log = log_lines(self)

    def test_parse_crls_raises_crl_error_only(self) -> None:
        pem = self.pki.inter.crl(self.pki.dir / "issuing.pem").read_bytes()
        damaged = {
            "version": with_version(self.good, 117),
            "issuer": with_bad_issuer(self.good),
            "garbage": b"\x30\x03\x02\x01",
            "PEM": pem.replace(b"-----END", b"A-----END"),
        }
        for what, data in damaged.items():
            with self.assertRaises(CrlError, msg=what):
                parse_crls(data)

    def test_an_unreadable_issuer_name_is_nobodys(self) -> None:
        """crl_answer on a CRL loaded elsewhere (its issuer raises when read): None."""
        crl = x509.load_der_x509_crl(with_bad_issuer(self.good))
        alice = self.pki.verified(self.pki.alice).chain
        self.assertIsNone(crl_answer(crl, alice[0], alice[1], _now()))

    def test_the_follow_timer_survives(self) -> None:
        """A CRL file rewritten with version 117: one log line, the last good CRLs
        still refuse bob, and the service's follow timer goes on: it reads the file
        fixed later, and the CRL file's listeners hear of it."""
        clock = _clock()
        checkers = RevocationCheckers(clock, DenyList(self.pki.dir / "deny"))
        checker = checkers.checker(RevocationConfig(crl_files=(self.path,), hard_fail=True))
        read: list[CrlFile] = []
        checkers.watch(read.append)
        follow = internet.TimerService(CRL_FOLLOW_INTERVAL, checkers.follow)
        follow.clock = clock
        follow.startService()
        self.addCleanup(follow.stopService)
        self.path.write_bytes(with_version(self.good, 117))
        clock.advance(CRL_FOLLOW_INTERVAL)
        (line,) = [x for x in self.log if "keeping" in x]
        self.assertIn("InvalidVersion: 117 is not a valid CRL version", line)
        self.assertIn("keeping the 1 CRL(s) read before", line)
        verified = self.pki.verified
        self.assertFalse(self.successResultOf(checker.check(verified(self.pki.bob))).accepted)
        self.assertTrue(self.successResultOf(checker.check(verified(self.pki.alice))).accepted)
        clock.advance(CRL_FOLLOW_INTERVAL)
        self.assertEqual(len([x for x in self.log if "keeping" in x]), 1)  # once per change
        self.pki.inter.revoke(self.pki.alice)
        self.pki.inter.crl(self.path, der=True)
        self.assertEqual(read, [])
        clock.advance(CRL_FOLLOW_INTERVAL)
        self.assertEqual(len(read), 1)  # the timer read it, not a check
        self.assertFalse(self.successResultOf(checker.check(verified(self.pki.alice))).accepted)

    def test_reload_keeps_the_last_good(self) -> None:
        """SIGHUP (reload) on a file with an unreadable issuer Name: no exception."""
        crl_file = CrlFile(self.path)
        self.path.write_bytes(with_bad_issuer(self.good))
        crl_file.reload()
        self.assertEqual(len(crl_file.crls()), 1)
        self.assertTrue(any("not a PEM or DER CRL we can read (ValueError" in x for x in self.log))


class FailingCheck(unittest.TestCase):
    """An exception inside the checker (a bug) refuses, with one log line a minute."""

    class BrokenOcsp:
        url = "http://ocsp.example.test/"

        def check(self, cert: object, issuer: object) -> defer.Deferred[object]:
            raise RuntimeError("a bug in a source")

    def test_refused_and_logged_once_a_minute(self) -> None:
        pki = _Setup(self)
        log = log_lines(self)
        clock = _clock()
        checker = RevocationChecker(clock, ocsp=self.BrokenOcsp())  # type: ignore[arg-type]
        for _ in range(3):
            result = self.successResultOf(checker.check(pki.verified(pki.alice)))
            self.assertFalse(result.accepted)
            self.assertEqual(
                result.reason, "revocation check failed: RuntimeError: a bug in a source"
            )
        self.assertEqual(len([x for x in log if "revocation check failed" in x]), 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        clock.advance(61)
        self.successResultOf(checker.check(pki.verified(pki.alice)))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
