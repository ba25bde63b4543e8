"""Revocation under load and failure, from the outsider review of issue 12:

- The bound on checks waiting on the network lives in :class:`RevocationChecker` (for the
  IKE responder and the EAP engine alike). Beyond it the deny list and the CRL files still
  answer; OCSP and the CRL distribution points count as unavailable: soft-fail accepts,
  hard-fail refuses, one rate-limited log line. A responder whose answers the test gives
  (:class:`HeldOcsp`) stands for a slow one; the bound holds on a fake clock.
- A CRL distribution point whose fetch failed is not fetched again for a minute, and
  concurrent look-ups of one URL share one request: a loopback HTTP server counts them.
"""

from __future__ import annotations

import dataclasses
import time

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from tests.certs_openssl import USER, OpensslCa
from tests.ike_peer import Gateway, Initiator
from tests.support import log_lines, state_dir
from tests.test_certs_revocation import ServedCrlCase, _clock, _Setup
from tests.test_ike_certificate import ECDSA_SHA256
from vpnaaa.certs import (
    ClientVerifier,
    CrlDistributionPoints,
    CrlFile,
    DenyList,
    HttpFetcher,
    RevocationChecker,
    fetch,
)
from vpnaaa.certs.ocsp import OcspAnswer
from vpnaaa.ike.common import CertificateAuth
from vpnaaa.ike.const import AuthMethod, CertEncoding, ExchangeType, IdType, NotifyType, PayloadType
from vpnaaa.ike.message import Authentication, Certificate, Identification, Message

BUSY = "OCSP and CRL distribution points not asked: 1 checks wait on them, the limit"


class HeldOcsp:
    """An OCSP responder that answers when the test says (:attr:`asked`)."""

    url = "http://ocsp.example.test/"

    def __init__(self) -> None:
        self.asked: list[defer.Deferred[OcspAnswer]] = []

    def check(self, cert: object, issuer: object) -> defer.Deferred[OcspAnswer]:
        self.asked.append(defer.Deferred())
        return self.asked[-1]


def busy_lines(log: list[str]) -> list[str]:
    return [line for line in log if "revocation checks wait on OCSP" in line]


class CheckerBound(unittest.TestCase):
    def setUp(self) -> None:
        self.pki = _Setup(self)  # alice good, bob revoked by the issuing CA
        self.crl = CrlFile(self.pki.inter.crl(self.pki.dir / "inter.crl"))
        self.ocsp = HeldOcsp()
        self.clock = _clock()
        self.log = log_lines(self)

    def checker(self, hard_fail: bool, **sources: object) -> RevocationChecker:
        return RevocationChecker(
            self.clock,
            ocsp=self.ocsp,  # type: ignore[arg-type]
            hard_fail=hard_fail,
            max_in_flight=1,
            **sources,  # type: ignore[arg-type]
        )

    def test_soft_fail_accepts_beyond_the_bound(self) -> None:
        checker = self.checker(False)
        first = checker.check(self.pki.verified(self.pki.alice))
        self.assertNoResult(first)
        for _ in range(3):
            result = self.successResultOf(checker.check(self.pki.verified(self.pki.alice)))
            self.assertTrue(result.accepted, result.reason)
            self.assertIn(BUSY, result.reason)
        self.assertEqual(len(self.ocsp.asked), 1)  # the others did not wait on it
        (line,) = busy_lines(self.log)  # once a minute, not once a check
        self.assertIn("checked against the deny list and CRL files only", line)
        self.assertEqual([x for x in self.log if "soft-fail" in x], [])
        self.clock.advance(61)
        self.successResultOf(checker.check(self.pki.verified(self.pki.alice)))
        self.assertEqual(len(busy_lines(self.log)), 2)
        # the first check ends: the next one asks the responder again
        self.ocsp.asked[0].callback(OcspAnswer("good", "good"))
        self.assertTrue(self.successResultOf(first).accepted)
        self.assertNoResult(checker.check(self.pki.verified(self.pki.alice)))
        self.assertEqual(len(self.ocsp.asked), 2)

    def test_hard_fail_refuses_beyond_the_bound(self) -> None:
        checker = self.checker(True)
        self.assertNoResult(checker.check(self.pki.verified(self.pki.alice)))
        result = self.successResultOf(checker.check(self.pki.verified(self.pki.alice)))
        self.assertFalse(result.accepted)
        self.assertIn("unknown (hard-fail)", result.reason)
        self.assertIn(BUSY, result.reason)

    def test_local_sources_still_answer(self) -> None:
        """Beyond the bound: a CRL file's revocation refuses (soft-fail too), its "good"
        accepts (hard-fail too), the deny list refuses."""
        deny = DenyList(self.pki.dir / "deny")
        for hard_fail in (False, True):
            checker = self.checker(hard_fail, crl_files=[self.crl], deny=deny)
            self.assertNoResult(checker.check(self.pki.verified(self.pki.alice)))
            revoked = self.successResultOf(checker.check(self.pki.verified(self.pki.bob)))
            self.assertFalse(revoked.accepted)
            self.assertIn("revoked", revoked.reason)
            good = self.successResultOf(checker.check(self.pki.verified(self.pki.alice)))
            self.assertTrue(good.accepted, good.reason)
            self.assertIn("good", good.reason)
            deny.add(self.pki.alice.load().serial_number)
            denied = self.successResultOf(checker.check(self.pki.verified(self.pki.alice)))
            self.assertFalse(denied.accepted)
            self.assertIn("deny list", denied.reason)
            deny.remove(self.pki.alice.load().serial_number)


class IkeBound(unittest.TestCase):
    """The IKE responder has no bound of its own any more: the checker's holds."""

    def setUp(self) -> None:
        directory = state_dir(self)
        self.ca = OpensslCa(directory / "ca", "Device CA")
        extensions = USER + "subjectAltName = DNS:dev.example.test\n"
        self.device = self.ca.issue("dev", extensions, subject="/CN=dev.example.test")
        self.log = log_lines(self)

    def gateway(self, checker_options: dict[str, object]) -> tuple[Gateway, HeldOcsp]:
        gateway = Gateway(auth="certificate")
        ocsp = HeldOcsp()
        checker = RevocationChecker(
            gateway.clock,
            ocsp=ocsp,  # type: ignore[arg-type]
            max_in_flight=1,
            **checker_options,  # type: ignore[arg-type]
        )
        verifier = ClientVerifier.from_files([self.ca.cert])
        gateway.context.profiles[0].certificates = CertificateAuth(verifier, checker)
        gateway.clock.advance(time.time())
        return gateway, ocsp

    def auth(self, peer: Initiator) -> Message | None:
        peer.sa_init()
        ike = peer.ike
        assert ike is not None
        idi = Identification(IdType.FQDN, b"dev.example.test")
        octets = peer.init_request + peer.nr + ike.prf(ike.keys.sk_pi, idi.encode())
        key = serialization.load_pem_private_key(self.device.key.read_bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        data = ECDSA_SHA256 + key.sign(octets, ec.ECDSA(hashes.SHA256()))
        entries = [
            (PayloadType.IDi, idi),
            (PayloadType.CERT, Certificate(CertEncoding.X509_SIGNATURE, self.device.der())),
            (PayloadType.AUTH, Authentication(AuthMethod.DIGITAL_SIGNATURE, data)),
            *peer.auth_first_entries()[1:],
        ]
        return peer.request(ExchangeType.IKE_AUTH, entries)

    def test_soft_fail_logins_beyond_the_bound(self) -> None:
        gateway, ocsp = self.gateway({"hard_fail": False})
        self.assertIsNone(self.auth(Initiator(gateway)))  # waits for the responder
        second = self.auth(Initiator(gateway))
        assert second is not None
        self.assertIsNone(second.notify(NotifyType.AUTHENTICATION_FAILED), self.log)
        self.assertIsInstance(second.get(PayloadType.AUTH), Authentication)
        self.assertEqual(len(gateway.responder.sessions()), 1)
        self.assertEqual(len(ocsp.asked), 1)
        ocsp.asked[0].callback(OcspAnswer("good", "good"))
        self.assertEqual(len(gateway.responder.sessions()), 2)

    def test_a_failing_check_refuses(self) -> None:
        """A checker whose Deferred fails (a bug; RevocationChecker itself refuses on
        its own): AUTHENTICATION_FAILED with one log line, no internal error."""

        class Broken:
            def check(self, verified: object) -> defer.Deferred[object]:
                return defer.fail(RuntimeError("a bug in the checker"))

        gateway, _ = self.gateway({})
        profile = gateway.context.profiles[0]
        assert profile.certificates is not None
        broken = Broken()
        profile.certificates = dataclasses.replace(profile.certificates, revocation=broken)  # type: ignore[arg-type]
        answer = self.auth(Initiator(gateway))
        assert answer is not None
        self.assertIsNotNone(answer.notify(NotifyType.AUTHENTICATION_FAILED))
        (line,) = [x for x in self.log if "revocation check failed" in x]
        self.assertIn("AUTHENTICATION_FAILED", line)
        self.assertIn("revocation check failed: a bug in the checker", line)
        self.assertEqual([x for x in self.log if "internal error" in x], [])
        self.assertEqual(gateway.responder.sessions(), [])

    def test_hard_fail_refuses_beyond_the_bound(self) -> None:
        gateway, ocsp = self.gateway({"hard_fail": True})
        self.assertIsNone(self.auth(Initiator(gateway)))
        second = self.auth(Initiator(gateway))
        assert second is not None
        self.assertIsNotNone(second.notify(NotifyType.AUTHENTICATION_FAILED))
        (line,) = [x for x in self.log if "AUTHENTICATION_FAILED" in x]
        self.assertIn(BUSY, line)
        ocsp.asked[0].callback(OcspAnswer("good", "good"))
        self.assertEqual(len(gateway.responder.sessions()), 1)


class DistributionPointFailures(ServedCrlCase):
    """The served CRL file missing: the server answers 503."""

    @defer.inlineCallbacks
    def test_a_failure_is_not_fetched_again_for_a_while(self) -> defer.Generator:
        self.patch(fetch, "FAILED_CRL_RETRY", 0.5)
        first = yield self.check(self.pki.alice)
        self.assertFalse(first.accepted)
        self.assertIn("HTTP 503", first.reason)
        self.assertEqual(self.served.requests, 1)
        for hard_fail in (True, False, True):  # the policy decides meanwhile
            again = yield self.check(self.pki.alice, hard_fail)
            self.assertEqual(again.accepted, not hard_fail)
            self.assertIn("HTTP 503", again.reason)
            self.assertIn("asked again in", again.reason)
        self.assertEqual(self.served.requests, 1)
        yield task.deferLater(reactor, 0.6, lambda: None)
        self.pki.inter.crl(self.crl, der=True)  # the server is back
        back = yield self.check(self.pki.alice)
        self.assertTrue(back.accepted, back.reason)
        self.assertIn(f"CRL {self.url}: good", back.reason)
        self.assertEqual(self.served.requests, 2)

    @defer.inlineCallbacks
    def test_concurrent_look_ups_share_one_request(self) -> defer.Generator:
        failing = yield defer.gatherResults([self.check(self.pki.alice) for _ in range(3)])
        self.assertEqual([r.accepted for r in failing], [False] * 3)
        self.assertEqual(self.served.requests, 1)
        self.points = CrlDistributionPoints(HttpFetcher(reactor, timeout=2.0))
        self.pki.inter.crl(self.crl, der=True)
        checks = [self.check(self.pki.alice), self.check(self.pki.bob)]
        good, revoked = yield defer.gatherResults(checks)
        self.assertTrue(good.accepted, good.reason)
        self.assertFalse(revoked.accepted)
        self.assertEqual(self.served.requests, 2)

    @defer.inlineCallbacks
    def test_failures_remembered_are_bounded(self) -> defer.Generator:
        """With room for two, a third failed URL pushes out the oldest: that one is
        fetched again, the newest is not."""
        self.patch(fetch, "MAX_URLS", 2)
        urls = [f"http://127.0.0.1:{self.port}/{n}.crl" for n in "abc"]
        issuer = self.pki.verified(self.pki.alice).chain[1]
        for url in urls:
            yield self.assertFailure(self.points.crls(url, issuer), fetch.FetchError)
        self.assertEqual(self.served.requests, 3)
        yield self.assertFailure(self.points.crls(urls[2], issuer), fetch.FetchError)
        self.assertEqual(self.served.requests, 3)
        yield self.assertFailure(self.points.crls(urls[0], issuer), fetch.FetchError)
        self.assertEqual(self.served.requests, 4)
