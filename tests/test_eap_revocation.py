"""EAP-TLS waits for the revocation verdict before its last flight (RFC 5216 §5.3, RFC
9190 §5.3): the engine's pending step on a fake clock, against a pyOpenSSL peer on memory
BIOs (tests.peap_peer). A checker held by the test decides when the verdict arrives; the
real checkers (CRL files, OCSP through openssl) are proven with eapol_test in
tests/interop/test_eapol_tls.py. Also: the ``[eap.tls]`` revocation keys and the daemon's
shared checkers."""

from __future__ import annotations

import gc
import weakref

from cryptography import x509
from OpenSSL import SSL
from twisted.internet import defer, task
from twisted.trial import unittest

from tests.certs_openssl import OpensslCa
from tests.client_certs import issue_client
from tests.peap_peer import PeapPeer
from tests.support import add_users, log_lines, radius_config, start_daemon, state_dir, test_pki
from tests.test_config import ConfigTestCase
from tests.test_eap_eaptls import daemons_check
from tests.test_revocation_bounds import HeldOcsp
from vpnaaa import config as configuration
from vpnaaa.certs import (
    DENY_FILE,
    DenyList,
    RevocationChecker,
    RevocationResult,
    VerifiedCertificate,
)
from vpnaaa.certs.ocsp import OcspAnswer
from vpnaaa.config import RevocationConfig
from vpnaaa.eap import packet
from vpnaaa.eap.authenticator import Challenge, Failure, Result, Success
from vpnaaa.eap.eaptls import EapTls
from vpnaaa.eap.engine import EapEngine
from vpnaaa.eap.packet import Type
from vpnaaa.eap.tls import server_context
from vpnaaa.pki import load_server_identity
from vpnaaa.service import RevocationCheckers, VpnaaaService, make_service
from vpnaaa.users import User

TLS12, TLS13 = SSL.TLS1_2_VERSION, SSL.TLS1_3_VERSION
IDLE = 30.0


class HeldChecker:
    """A revocation checker whose verdicts the test gives, one per question."""

    def __init__(self) -> None:
        self.asked: list[tuple[VerifiedCertificate, defer.Deferred[RevocationResult]]] = []
        self.since: RevocationResult | None = None  # what recheck() says

    def check(self, verified: VerifiedCertificate) -> defer.Deferred[RevocationResult]:
        d: defer.Deferred[RevocationResult] = defer.Deferred()
        self.asked.append((verified, d))
        return d

    def recheck(self, verified: VerifiedCertificate) -> RevocationResult | None:
        return self.since


class PendingStepTests(unittest.TestCase):
    def setUp(self) -> None:
        ca, server = test_pki()
        self.ca = x509.load_pem_x509_certificate(ca.cert.read_bytes())
        identity = load_server_identity(server.key, server.cert, server.chain)
        self.context = server_context(identity, None, ("1.2", "1.3"), [self.ca])
        self.clock = task.Clock()
        self.checker = HeldChecker()
        self.methods: list[weakref.ref[EapTls]] = []

    def engine(self, checker: object = None) -> EapEngine:
        check = daemons_check(self, self.ca)

        def factory(source: str | None) -> EapTls:
            method = EapTls(self.context, check)
            self.methods.append(weakref.ref(method))
            return method

        return EapEngine(
            [(Type.TLS, factory)],
            self.clock,
            IDLE,
            revocation=checker or self.checker,  # type: ignore[arg-type]
        )

    def until_pending(
        self, engine: EapEngine, version: int = TLS13
    ) -> tuple[bytes, PeapPeer, defer.Deferred[tuple[bytes, Result]], bytes]:
        """A conversation driven to the Response that waits for the revocation verdict
        (or to its end): (its id, the peer, the Deferred of the answer, that Response)."""
        client = issue_client("carol", email="carol@example.test")
        peer = PeapPeer(kind=Type.TLS, certificate=client.pem_pair, max_version=version)
        conversation_id, request = engine.begin("192.0.2.1")
        response = peer.identity(request.eap, b"anon")
        d = engine.step(conversation_id, response)
        while d.called and isinstance(result := d.result[1], Challenge):
            response = peer.answer(result.eap)
            d = engine.step(conversation_id, response)
        return conversation_id, peer, d, response

    def verdict(self, accepted: bool, reason: str, index: int = -1) -> None:
        self.checker.asked[index][1].callback(RevocationResult(accepted, reason))

    def test_last_flight_waits_for_the_verdict(self):
        """TLS 1.2 and 1.3: the server's last flight (Finished, or the protected success
        indication) leaves only after the verdict; then the peer's ACK gets EAP-Success."""
        for version in (TLS12, TLS13):
            engine = self.engine()
            conversation_id, peer, d, _ = self.until_pending(engine, version)
            verified = self.checker.asked[-1][0]
            self.assertEqual(verified.identity.value, "carol@example.test")
            self.assertEqual(len(engine), 1)
            self.assertEqual(peer.inner, b"")  # nothing from us since its Finished
            self.verdict(True, "CRL ca.crl: good")
            result = self.successResultOf(d)[1]
            assert isinstance(result, Challenge), result
            final = engine.step(conversation_id, peer.answer(result.eap))
            success = self.successResultOf(final)[1]
            assert isinstance(success, Success), success
            self.assertEqual(success.identity, "carol@example.test")
            self.assertEqual(peer.inner, b"\x00" if version == TLS13 else b"")
            self.assertEqual(len(engine), 0)

    def test_denied_after_the_verdict(self):
        """The peer holds back its answer to our last flight after an accepting verdict;
        a serial denied meanwhile (the checker's recheck: the deny list and CRL files
        asked again) turns the Success into EAP-Failure naming the certificate."""
        for version in (TLS12, TLS13):
            engine = self.engine()
            conversation_id, peer, d, _ = self.until_pending(engine, version)
            self.verdict(True, "CRL ca.crl: good")
            result = self.successResultOf(d)[1]
            assert isinstance(result, Challenge), result
            self.checker.since = RevocationResult(False, "serial 01 is on the deny list")
            final = engine.step(conversation_id, peer.answer(result.eap))
            failure = self.successResultOf(final)[1]
            assert isinstance(failure, Failure), failure
            self.assertIn("'CN=carol'", failure.reason)
            self.assertIn("is on the deny list (since the verdict)", failure.reason)
            self.assertEqual(failure.eap[0], packet.Code.FAILURE)
            self.assertEqual(len(engine), 0)
            self.checker.since = None

    def test_refused(self):
        """A refusing verdict is EAP-Failure with subject, serial and the checker's reason;
        the peer never gets our Finished (TLS 1.2) or the success indication (1.3)."""
        for version in (TLS12, TLS13):
            engine = self.engine()
            _, peer, d, _ = self.until_pending(engine, version)
            verified = self.checker.asked[-1][0]
            self.verdict(False, "certificate 0x1 revoked, reason key_compromise (CRL x.crl)")
            result = self.successResultOf(d)[1]
            assert isinstance(result, Failure), result
            self.assertEqual(result.eap[0], 4)  # EAP-Failure
            self.assertEqual(
                result.reason,
                f"client certificate 'CN=carol' serial {verified.certificate.serial_number:#x}: "
                "certificate 0x1 revoked, reason key_compromise (CRL x.crl)",
            )
            self.assertEqual(peer.inner, b"")
            self.assertEqual(len(engine), 0)
            self.assertEqual(engine.outcomes["tls", "failure"], 1)

    def test_forgotten_conversation_is_freed_and_never_resumed(self):
        """The IKE SA closes while the check runs: forget() frees the conversation at once
        (the check holds only its id), and the late verdict resumes nothing."""
        engine = self.engine()
        conversation_id, _, d, _ = self.until_pending(engine)
        engine.forget(conversation_id)
        gc.collect()
        self.assertEqual([ref() for ref in self.methods], [None])  # TLS state freed
        self.verdict(True, "good")
        conversation, result = self.successResultOf(d)
        self.assertEqual(conversation, conversation_id)
        assert isinstance(result, Failure), result
        self.assertEqual(
            result.reason, "conversation forgotten or expired during the revocation check"
        )
        self.assertEqual(len(engine), 0)
        self.assertEqual(engine.outcomes["tls", "success"], 0)

    def test_expired_conversation_is_not_resumed(self):
        engine = self.engine()
        d = self.until_pending(engine)[2]
        self.clock.advance(IDLE + 1)
        self.assertEqual(engine.expire(), 1)
        self.verdict(True, "good")
        result = self.successResultOf(d)[1]
        assert isinstance(result, Failure), result
        self.assertIn("forgotten or expired", result.reason)
        self.assertEqual(len(engine), 0)

    def test_a_response_while_pending_ends_the_conversation(self):
        """The same Response again (a NAS that gave up waiting): EAP-Failure, and the
        verdict that arrives later resumes nothing."""
        engine = self.engine()
        conversation_id, _, d, response = self.until_pending(engine)
        result = self.successResultOf(engine.step(conversation_id, response))[1]
        assert isinstance(result, Failure), result
        self.assertIn("while the revocation check was under way", result.reason)
        self.verdict(True, "good")
        late = self.successResultOf(d)[1]
        assert isinstance(late, Failure), late
        self.assertIn("forgotten or expired", late.reason)

    def test_in_flight_bound(self):
        """The checker's bound on checks waiting on the network (one here): the second
        certificate, with soft-fail, is accepted without waiting for the responder; with
        hard-fail it is refused (tests/test_revocation_bounds.py has the rest)."""
        for hard_fail in (False, True):
            ocsp = HeldOcsp()
            checker = RevocationChecker(self.clock, ocsp=ocsp, hard_fail=hard_fail, max_in_flight=1)  # type: ignore[arg-type]
            engine = self.engine(checker)
            first = self.until_pending(engine)[2]
            self.assertNoResult(first)
            second = self.successResultOf(self.until_pending(engine)[2])[1]
            if hard_fail:
                assert isinstance(second, Failure), second
                self.assertIn("not asked: 1 checks wait on them, the limit", second.reason)
            else:
                assert isinstance(second, Success), second  # no wait, to the end
            self.assertEqual(len(ocsp.asked), 1)
            ocsp.asked[0].callback(OcspAnswer("good", "good"))
            self.assertIsInstance(self.successResultOf(first)[1], Challenge)

    def test_checker_failure_refuses(self):
        """A checker that errbacks (a bug) refuses the certificate; nothing escapes."""
        engine = self.engine()
        d = self.until_pending(engine)[2]
        self.checker.asked[-1][1].errback(RuntimeError("boom"))
        result = self.successResultOf(d)[1]
        assert isinstance(result, Failure), result
        self.assertIn("revocation check failed: boom", result.reason)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


TLS_SECTION = '[eap.tls]\nclient_ca = "ca.pem"\n'


class EapTlsRevocationConfig(ConfigTestCase):
    def test_keys_and_defaults(self):
        tls = self.load(
            TLS_SECTION + 'crl_files = ["a.crl"]\ncrl_distribution_points = true\n'
            'ocsp_url = "http://127.0.0.1:9/"\nrevocation = "hard"\nrevocation_timeout = 3\n'
        ).eap.tls.revocation
        self.assertEqual(tls.crl_files, (self.state / "a.crl",))
        self.assertTrue(tls.crl_distribution_points)
        self.assertEqual(
            (tls.ocsp_url, tls.hard_fail, tls.timeout), ("http://127.0.0.1:9/", True, 3.0)
        )
        default = self.load(TLS_SECTION).eap.tls.revocation
        self.assertEqual(default, configuration.RevocationConfig())
        self.assertEqual(
            (default.crl_files, default.ocsp_url, default.hard_fail, default.timeout),
            ((), None, False, 5.0),
        )

    def test_bad_values_name_the_key(self):
        self.assertConfigError(
            TLS_SECTION + 'revocation = "maybe"\n', "eap.tls.revocation", "'maybe'"
        )
        self.assertConfigError(
            TLS_SECTION + 'ocsp_url = "ldap://x"\n', "eap.tls.ocsp_url", "not an http"
        )
        self.assertConfigError(
            TLS_SECTION + "revocation_timeout = 0.1\n", "eap.tls.revocation_timeout", "0.5"
        )


class SharedCheckers(unittest.TestCase):
    """One checker for equal settings, over one CrlFile per path; SIGHUP rereads the CRL
    files EAP-TLS reads."""

    def setUp(self) -> None:
        self.state = state_dir(self)
        self.ca = OpensslCa(self.state / "clientca", "Client CA")
        self.crl = self.ca.crl(self.state / "clientca.crl")
        self.log = log_lines(self)

    def test_equal_settings_share_one_checker(self):
        checkers = RevocationCheckers(task.Clock(), DenyList(self.state / DENY_FILE))
        hard = RevocationConfig(crl_files=(self.crl,), hard_fail=True)
        soft = RevocationConfig(crl_files=(self.crl,))
        one = checkers.checker(hard)
        self.assertIs(
            checkers.checker(RevocationConfig(crl_files=(self.crl,), hard_fail=True)), one
        )
        other = checkers.checker(soft)
        self.assertIsNot(other, one)
        self.assertEqual((one.hard_fail, other.hard_fail), (True, False))
        self.assertIs(one.crl_files[0], other.crl_files[0])  # the file is read once
        self.assertIs(one.deny, checkers.deny)
        self.assertEqual(len([line for line in self.log if "CRL file" in line]), 1)

    def test_distribution_points_shared(self):
        """Policies that differ but fetch with the same timeout share the fetcher and the
        distribution point cache (a CRL downloaded, a failing URL remembered, once); another
        timeout gets its own, and a policy without network sources none."""
        checkers = RevocationCheckers(task.Clock(), DenyList(self.state / DENY_FILE))
        soft = checkers.checker(RevocationConfig(crl_distribution_points=True))
        hard = checkers.checker(
            RevocationConfig(
                crl_distribution_points=True, ocsp_url="http://127.0.0.1:9/", hard_fail=True
            )
        )
        slow = checkers.checker(RevocationConfig(crl_distribution_points=True, timeout=30.0))
        local = checkers.checker(RevocationConfig(crl_files=(self.crl,)))
        self.assertIsNot(soft, hard)
        self.assertIsNotNone(soft.crl_distribution_points)
        self.assertIs(soft.crl_distribution_points, hard.crl_distribution_points)
        assert hard.ocsp is not None and soft.crl_distribution_points is not None
        self.assertIs(hard.ocsp.fetcher, soft.crl_distribution_points.fetcher)
        self.assertIsNot(slow.crl_distribution_points, soft.crl_distribution_points)
        self.assertIsNone(local.crl_distribution_points)
        self.assertIsNone(local.ocsp)

    def test_ike_profile_and_eap_tls_share_a_checker(self):
        """The daemon's wiring: a certificate profile and [eap.tls] with the same keys
        get the same checker; another profile's policy gets its own."""
        revocation = f'crl_files = ["{self.crl}"]\nrevocation = "hard"\n'
        profile = (
            '[[ike.profiles]]\nauth = "certificate"\npool = "10.99.20.0/24"\n'
            f'client_ca = ["{self.ca.cert}"]\n'
        )
        daemon = self.daemon(
            revocation,
            f'{profile}name = "same"\n{revocation}{profile}name = "soft"\n'
            f'crl_files = ["{self.crl}"]\n',
        )
        assert daemon.eap is not None and daemon.ike is not None
        certificates = {
            p.name: p.certificates for p in daemon.ike.responder.context.profiles if p.certificates
        }
        self.assertIs(certificates["same"].revocation, daemon.eap.revocation)
        self.assertIsNot(certificates["soft"].revocation, daemon.eap.revocation)
        self.assertFalse(certificates["soft"].revocation.hard_fail)
        self.assertEqual(len([line for line in self.log if f"CRL file {self.crl}:" in line]), 1)

    def daemon(self, tls_options: str, ike_options: str = "") -> VpnaaaService:
        """Started when no IKE (which binds ports at start-up) is configured."""
        path = radius_config(self.state)
        text = path.read_text().replace(
            "[eap.tls]\n",
            f'[eap]\nmethods = ["tls"]\n\n[eap.tls]\nclient_ca = "{self.ca.cert}"\n' + tls_options,
        )
        if ike_options:
            text = text.replace("[ike]\nenabled = false\n", "") + "\n[ike]\nenabled = true\n"
            text += ike_options
        path.write_text(text)
        add_users(self.state, {"bob": User.create("bob", "builder")})
        if ike_options:
            return make_service(configuration.load(path))
        return start_daemon(self, path)

    def test_sighup_rereads_eap_tls_crl_files(self):
        daemon = self.daemon(f'crl_files = ["{self.crl}"]\n')
        assert daemon.eap is not None
        (crl_file,) = daemon.eap.revocation.crl_files
        self.assertEqual(crl_file.path, self.crl)
        read = [line for line in self.log if f"CRL file {self.crl}:" in line]
        self.assertEqual(len(read), 1, self.log)
        daemon.reload()
        read = [line for line in self.log if f"CRL file {self.crl}:" in line]
        self.assertEqual(len(read), 2, self.log)
