"""vpnaaa.certs revocation: CRL files, the deny list, OCSP answered by `openssl ocsp -index`
and CRL distribution points, over HTTP on 127.0.0.1, with soft- and hard-fail."""

from __future__ import annotations

import datetime
import os
import socket
import stat
from collections.abc import Callable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from twisted.internet import defer, reactor, task
from twisted.trial import unittest
from twisted.web import resource, server
from twisted.web.server import NOT_DONE_YET

from tests.certs_openssl import OCSP_SIGNER, USER, Issued, OpensslCa, forget
from tests.support import log_lines, state_dir
from vpnaaa.certs import (
    DENY_FILE,
    ClientVerifier,
    CrlDistributionPoints,
    CrlFile,
    DenyList,
    HttpFetcher,
    OcspClient,
    RevocationChecker,
    VerifiedCertificate,
    fetch,
    parse_serial,
    serial_hex,
)
from vpnaaa.certs.crl import crl_answer
from vpnaaa.certs.ocsp import OcspError, ocsp_answer, ocsp_request


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _clock() -> task.Clock:
    clock = task.Clock()
    clock.advance(_now().timestamp())
    return clock


class _Setup:
    """A root, an issuing CA under it, and certificates alice (good) and bob (revoked)."""

    def __init__(self, case: unittest.TestCase, leaf_extensions: str = USER) -> None:
        self.dir = state_dir(case)
        self.root = OpensslCa(self.dir / "root", "Test Root")
        self.inter = OpensslCa(self.dir / "inter", "Test Issuing CA", parent=self.root)
        self.inter_der = Issued(self.inter.cert, self.inter.key).der()
        self.verifier = ClientVerifier.from_files([self.root.cert])
        self.alice = self.inter.issue("alice", leaf_extensions)
        self.bob = self.inter.issue("bob", leaf_extensions)
        self.inter.revoke(self.bob)

    def verified(self, issued: Issued) -> VerifiedCertificate:
        return self.verifier.verify(issued.der(), [self.inter_der], _now())


def _listen(case: unittest.TestCase, root: resource.Resource) -> int:
    site = server.Site(root)
    site.noisy = False
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    case.addCleanup(port.stopListening)
    return port.getHost().port


def _closed_port() -> int:
    """A loopback port nobody listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PartialCrls(unittest.TestCase):
    """RFC 5280 §5.2.4-5.2.5: a delta CRL, or one its issuingDistributionPoint scopes to
    CA certificates or some reasons, proves the revocations it lists and nothing else."""

    def setUp(self) -> None:
        self.pki = _Setup(self)
        self.issuer = Issued(self.pki.inter.cert, self.pki.inter.key).load()
        key = serialization.load_pem_private_key(self.pki.inter.key.read_bytes(), None)
        self.key = key

    def crl(self, *extensions: x509.ExtensionType) -> x509.CertificateRevocationList:
        bob = self.pki.bob.load()
        revoked = (
            x509.RevokedCertificateBuilder()
            .serial_number(bob.serial_number)
            .revocation_date(_now() - datetime.timedelta(hours=1))
            .build()
        )
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.issuer.subject)
            .last_update(_now() - datetime.timedelta(minutes=5))
            .next_update(_now() + datetime.timedelta(days=1))
            .add_revoked_certificate(revoked)
        )
        for extension in extensions:
            builder = builder.add_extension(extension, critical=True)
        return builder.sign(self.key, hashes.SHA256())  # type: ignore[arg-type]

    def test_partial_crls_prove_only_revocations(self) -> None:
        alice, bob = self.pki.alice.load(), self.pki.bob.load()
        scoped = [
            x509.DeltaCRLIndicator(1),
            x509.IssuingDistributionPoint(None, None, False, True, None, False, False),
            x509.IssuingDistributionPoint(
                None, None, False, False, frozenset({x509.ReasonFlags.key_compromise}), False, False
            ),
        ]
        for extension in scoped:
            crl = self.crl(extension)
            self.assertIsNone(crl_answer(crl, alice, self.issuer, _now()), extension)
            answer = crl_answer(crl, bob, self.issuer, _now())
            assert answer is not None
            self.assertEqual(answer.status, "revoked")
        full = self.crl()
        answer = crl_answer(full, alice, self.issuer, _now())
        assert answer is not None
        self.assertEqual(answer.status, "good")


class CrlFiles(unittest.TestCase):
    def setUp(self) -> None:
        self.pki = _Setup(self)
        self.path = self.pki.dir / "issuing.crl"
        self.pki.inter.crl(self.path, der=True)
        self.logged = log_lines(self)

    def check(self, issued: Issued, hard_fail: bool = True, files: list[CrlFile] | None = None):
        checker = RevocationChecker(
            _clock(), crl_files=files or [CrlFile(self.path)], hard_fail=hard_fail
        )
        return self.successResultOf(checker.check(self.pki.verified(issued)))

    def test_der_file(self) -> None:
        good = self.check(self.pki.alice)
        self.assertTrue(good.accepted, good.reason)
        self.assertIn("good", good.reason)
        revoked = self.check(self.pki.bob)
        self.assertFalse(revoked.accepted)
        self.assertIn("revoked", revoked.reason)
        self.assertIn("key_compromise", revoked.reason)
        self.assertIn(self.pki.verified(self.pki.bob).serial, revoked.reason)

    def test_follows_changes(self) -> None:
        """Revoking alice and rewriting the file (PEM now): the next check sees it."""
        crl_file = CrlFile(self.path)
        self.assertTrue(self.check(self.pki.alice, files=[crl_file]).accepted)
        self.pki.inter.revoke(self.pki.alice)
        self.pki.inter.crl(self.path)
        self.assertFalse(self.check(self.pki.alice, files=[crl_file]).accepted)

    def test_reload(self) -> None:
        """reload() (SIGHUP) reads the file again even when its stat looks unchanged
        (same inode, size and modification time: a CRL rewritten in place by a tool that
        restores the time stamp)."""
        crl_file = CrlFile(self.path)
        st = os.stat(self.path)
        data = self.path.read_bytes()
        self.path.write_bytes(b"-" * len(data))  # same size, then the old time stamp
        os.utime(self.path, ns=(st.st_atime_ns, st.st_mtime_ns))
        self.assertEqual(len(crl_file.crls()), 1)  # the stat is unchanged: not read again
        self.path.write_bytes(data)
        os.utime(self.path, ns=(st.st_atime_ns, st.st_mtime_ns))
        logged_before = len(self.logged)
        crl_file.reload()
        self.assertTrue(any("CRL file" in line for line in self.logged[logged_before:]))
        self.assertFalse(self.check(self.pki.bob, files=[crl_file]).accepted)

    def test_unreadable_keeps_the_last(self) -> None:
        crl_file = CrlFile(self.path)
        self.path.write_bytes(b"garbage, half a CRL")
        self.assertFalse(self.check(self.pki.bob, files=[crl_file]).accepted)
        self.assertTrue(any("not a PEM or DER CRL" in line for line in self.logged))

    def test_stale(self) -> None:
        """Past nextUpdate: bob stays revoked; alice is unknown: hard-fail refuses,
        soft-fail accepts, and a log line says the CRL is stale."""
        self.pki.inter.crl(self.path, window=("20200101000000Z", "20200102000000Z"))
        self.assertFalse(self.check(self.pki.bob).accepted)
        self.assertFalse(self.check(self.pki.bob, hard_fail=False).accepted)
        hard = self.check(self.pki.alice)
        self.assertFalse(hard.accepted)
        self.assertIn("hard-fail", hard.reason)
        self.assertIn("stale", hard.reason)
        soft = self.check(self.pki.alice, hard_fail=False)
        self.assertTrue(soft.accepted)
        self.assertIn("soft-fail", soft.reason)
        self.assertTrue(any("is stale" in line and "2020-01-02" in line for line in self.logged))

    def test_foreign_crl(self) -> None:
        """A CRL under the issuer's name but signed by another key does not count."""
        impostor = OpensslCa(self.pki.dir / "impostor", "Test Issuing CA")
        impostor.issue("x")
        forged = impostor.crl(self.pki.dir / "forged.crl")
        files = [CrlFile(forged)]
        self.assertFalse(self.check(self.pki.alice, files=files).accepted)
        self.assertTrue(self.check(self.pki.alice, hard_fail=False, files=files).accepted)

    def test_intermediate_revoked(self) -> None:
        self.pki.root.revoke(Issued(self.pki.inter.cert, self.pki.inter.key))
        root_crl = self.pki.root.crl(self.pki.dir / "root.crl")
        result = self.check(self.pki.alice, files=[CrlFile(self.path), CrlFile(root_crl)])
        self.assertFalse(result.accepted)
        self.assertIn("intermediate CA CN=Test Issuing CA", result.reason)


class Deny(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = state_dir(self)
        self.path = self.dir / "denied-serials"

    def test_file(self) -> None:
        deny = DenyList(self.path)
        self.assertFalse(self.path.exists())
        self.assertTrue(deny.add(0x1A2B))
        self.assertFalse(deny.add(0x1A2B))
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        self.assertIn("1A2B\n", self.path.read_text())
        other = DenyList(self.path)  # the admin API's and the responder's see each other
        self.assertTrue(other.denied(0x1A2B))
        self.assertTrue(other.add(0xFF))
        self.assertTrue(deny.denied(0xFF))
        self.assertEqual(deny.serials(), ("FF", "1A2B"))
        self.assertTrue(deny.remove(0x1A2B))
        self.assertFalse(other.denied(0x1A2B))
        self.assertFalse(deny.remove(0x1A2B))

    def test_tolerant(self) -> None:
        logged = log_lines(self)
        self.path.write_text("# hand-edited\n0a:0b\nnot-a-serial\n\nFF # lost laptop\n")
        deny = DenyList(self.path)
        self.assertEqual(deny.serials(), ("FF", "0A0B"))
        self.assertTrue(any("line 3" in line and "skipped" in line for line in logged))
        self.path.unlink()
        self.assertEqual(deny.serials(), ())

    def test_checker_refuses(self) -> None:
        pki = _Setup(self)
        verified = pki.verified(pki.alice)
        deny = DenyList(self.path)
        deny.add(parse_serial(verified.serial))
        result = self.successResultOf(RevocationChecker(_clock(), deny=deny).check(verified))
        self.assertFalse(result.accepted)
        self.assertEqual(result.reason, f"serial {verified.serial} is on the deny list")
        other = self.successResultOf(
            RevocationChecker(_clock(), deny=deny).check(pki.verified(pki.bob))
        )
        self.assertTrue(other.accepted)  # bob is revoked, but no CRL is configured here
        self.assertEqual(other.reason, "no revocation source configured")


class _OcspResponder(resource.Resource):
    """HTTP in front of `openssl ocsp -index` (RFC 6960 Appendix A.1)."""

    isLeaf = True

    def __init__(
        self, ca: OpensslCa, signer: Issued | None, meanwhile: Callable[[], None] = lambda: None
    ) -> None:
        """``meanwhile``: what happens while the request is being answered."""
        super().__init__()
        self.ca = ca
        self.signer = signer
        self.meanwhile = meanwhile

    def render_POST(self, request: server.Request) -> bytes:
        self.meanwhile()
        assert request.getHeader(b"content-type") == b"application/ocsp-request"
        request.setHeader(b"content-type", b"application/ocsp-response")
        return self.ca.ocsp_response(request.content.read(), self.signer)


class _Silent(resource.Resource):
    """Takes requests and never answers."""

    isLeaf = True

    def render(self, request: server.Request) -> object:
        return NOT_DONE_YET


class Ocsp(unittest.TestCase):
    def setUp(self) -> None:
        self.pki = _Setup(self)
        self.stranger = self.pki.inter.issue("stranger")
        forget(self.pki.inter, self.stranger)
        self.signer = self.pki.inter.issue("responder", OCSP_SIGNER)
        self.logged = log_lines(self)

    def responder(self, signer: Issued | None = None, delegated: bool = True) -> str:
        port = _listen(self, _OcspResponder(self.pki.inter, self.signer if delegated else signer))
        return f"http://127.0.0.1:{port}/"

    def check(
        self, url: str, issued: Issued, hard_fail: bool = True, timeout: float = 5.0
    ) -> defer.Deferred:
        fetcher = HttpFetcher(reactor, timeout=timeout)
        checker = RevocationChecker(reactor, ocsp=OcspClient(url, fetcher), hard_fail=hard_fail)
        return checker.check(self.pki.verified(issued))

    @defer.inlineCallbacks
    def test_good_revoked_unknown(self) -> defer.Generator:
        url = self.responder()
        good = yield self.check(url, self.pki.alice)
        self.assertTrue(good.accepted, good.reason)
        self.assertIn(f"OCSP {url}: good", good.reason)
        revoked = yield self.check(url, self.pki.bob)
        self.assertFalse(revoked.accepted)
        self.assertIn("revoked", revoked.reason)
        self.assertIn("key_compromise", revoked.reason)
        unknown = yield self.check(url, self.stranger)
        self.assertFalse(unknown.accepted)
        self.assertIn("does not know", unknown.reason)
        soft = yield self.check(url, self.stranger, hard_fail=False)
        self.assertTrue(soft.accepted)

    @defer.inlineCallbacks
    def test_denied_while_the_responder_answers(self) -> defer.Generator:
        """`vpnaaa deny` while the OCSP answer ("good") is on its way: refused, since the
        session it would make is not there yet for the deny to end."""
        deny = DenyList(state_dir(self) / DENY_FILE)
        alice = self.pki.alice.load()
        responder = _OcspResponder(
            self.pki.inter, self.signer, lambda: deny.add(alice.serial_number)
        )
        url = f"http://127.0.0.1:{_listen(self, responder)}/"
        checker = RevocationChecker(
            reactor, deny=deny, ocsp=OcspClient(url, HttpFetcher(reactor, timeout=5.0))
        )
        result = yield checker.check(self.pki.verified(self.pki.alice))
        self.assertFalse(result.accepted)
        self.assertEqual(
            result.reason, f"serial {serial_hex(alice.serial_number)} is on the deny list"
        )

    @defer.inlineCallbacks
    def test_crl_file_revokes_while_the_responder_answers(self) -> defer.Generator:
        """A CRL file rewritten to revoke alice while the OCSP answer ("good") is on its
        way: refused, naming the file, for the same reason as the deny list above (the
        file's readers end only sessions already up)."""
        path, later = self.pki.dir / "issuing.crl", self.pki.dir / "later.crl"
        self.pki.inter.crl(path)
        crl_file = CrlFile(path)
        index = self.pki.inter.dir / "index.txt"
        valid = index.read_text()
        self.pki.inter.revoke(self.pki.alice)
        self.pki.inter.crl(later)
        index.write_text(valid)  # the responder still says "good"

        def revoke() -> None:
            path.write_bytes(later.read_bytes())
            os.utime(path, (1, 1))  # the stat must change, whatever the clock's resolution

        responder = _OcspResponder(self.pki.inter, self.signer, revoke)
        url = f"http://127.0.0.1:{_listen(self, responder)}/"
        ocsp = OcspClient(url, HttpFetcher(reactor, timeout=5.0))
        checker = RevocationChecker(reactor, crl_files=[crl_file], ocsp=ocsp, hard_fail=True)
        result = yield checker.check(self.pki.verified(self.pki.alice))
        self.assertFalse(result.accepted)
        self.assertIn("revoked", result.reason)
        self.assertIn(f"(CRL {path})", result.reason)

    @defer.inlineCallbacks
    def test_signed_by_the_ca(self) -> defer.Generator:
        url = self.responder(signer=None, delegated=False)
        result = yield self.check(url, self.pki.alice)
        self.assertTrue(result.accepted, result.reason)

    @defer.inlineCallbacks
    def test_undelegated_signer(self) -> defer.Generator:
        """A responder certificate from the CA but without id-kp-OCSPSigning proves
        nothing: hard-fail refuses."""
        impostor = self.pki.inter.issue("impostor")
        url = self.responder(signer=impostor, delegated=False)
        result = yield self.check(url, self.pki.alice)
        self.assertFalse(result.accepted)
        self.assertIn("lacks id-kp-OCSPSigning", result.reason)

    @defer.inlineCallbacks
    def test_responder_down(self) -> defer.Generator:
        url = f"http://127.0.0.1:{_closed_port()}/"
        hard = yield self.check(url, self.pki.alice)
        self.assertFalse(hard.accepted)
        self.assertIn("hard-fail", hard.reason)
        soft = yield self.check(url, self.pki.alice, hard_fail=False)
        self.assertTrue(soft.accepted)
        self.assertIn("soft-fail", soft.reason)
        self.assertTrue(any("OCSP" in line and url in line for line in self.logged))
        self.assertTrue(any("accepted (soft-fail)" in line for line in self.logged))

    @defer.inlineCallbacks
    def test_responder_silent(self) -> defer.Generator:
        port = _listen(self, _Silent())
        url = f"http://127.0.0.1:{port}/"
        result = yield self.check(url, self.pki.alice, timeout=0.3)
        self.assertFalse(result.accepted)
        self.assertIn("no answer within 0.3 s", result.reason)

    def test_nonce(self) -> None:
        """openssl echoes our nonce; an answer to another request's nonce is a replay."""
        alice = self.pki.alice.load()
        issuer = Issued(self.pki.inter.cert, self.pki.inter.key).load()
        data = self.pki.inter.ocsp_response(ocsp_request(alice, issuer, b"A" * 32), self.signer)
        self.assertEqual(ocsp_answer(data, alice, issuer, b"A" * 32, _now()).status, "good")
        with self.assertRaises(OcspError) as caught:
            ocsp_answer(data, alice, issuer, b"B" * 32, _now())
        self.assertIn("replay", str(caught.exception))
        bob = self.pki.bob.load()
        with self.assertRaises(OcspError):  # an answer about alice is none about bob
            ocsp_answer(data, bob, issuer, b"A" * 32, _now())
        later = _now() + datetime.timedelta(hours=1)  # -nmin 10: stale by then
        with self.assertRaises(OcspError):
            ocsp_answer(data, alice, issuer, b"A" * 32, later)

    def test_no_nonce_needs_a_next_update(self) -> None:
        """An answer without our nonce (the request had none, as a replayer's would not)
        and without nextUpdate has no bounded age: not proof of "good"; with a nextUpdate
        it is (RFC 5019 responders answer so)."""
        alice = self.pki.alice.load()
        issuer = Issued(self.pki.inter.cert, self.pki.inter.key).load()
        bare = ocsp.OCSPRequestBuilder().add_certificate(alice, issuer, hashes.SHA1()).build()
        request = bare.public_bytes(serialization.Encoding.DER)
        ageless = self.pki.inter.ocsp_response(request, self.signer, next_update=False)
        with self.assertRaises(OcspError) as caught:
            ocsp_answer(ageless, alice, issuer, b"A" * 32, _now())
        self.assertIn("neither our nonce nor a nextUpdate", str(caught.exception))
        bounded = self.pki.inter.ocsp_response(request, self.signer)
        self.assertEqual(ocsp_answer(bounded, alice, issuer, b"A" * 32, _now()).status, "good")


class _Counting(resource.Resource):
    isLeaf = True

    def __init__(self, path: object) -> None:
        super().__init__()
        self.path = path
        self.requests = 0

    def render_GET(self, request: server.Request) -> bytes:
        self.requests += 1
        if not self.path.exists():  # type: ignore[attr-defined]
            request.setResponseCode(503)
            return b"down for maintenance"
        return self.path.read_bytes()  # type: ignore[attr-defined]


class ServedCrlCase(unittest.TestCase):
    """Certificates pointing to a loopback HTTP server that serves ``self.crl`` (503
    while it is missing) and counts requests; :meth:`check` asks that distribution point."""

    def setUp(self) -> None:
        self.dir = state_dir(self)
        self.crl = self.dir / "served.crl"
        self.served = _Counting(self.crl)
        self.port = _listen(self, self.served)
        self.url = f"http://127.0.0.1:{self.port}/issuing.crl"
        extensions = USER + f"crlDistributionPoints = URI:{self.url}\n"
        self.pki = _Setup(self, extensions)
        self.points = CrlDistributionPoints(HttpFetcher(reactor, timeout=2.0))

    def check(self, issued: Issued, hard_fail: bool = True) -> defer.Deferred:
        checker = RevocationChecker(
            reactor, crl_distribution_points=self.points, hard_fail=hard_fail
        )
        return checker.check(self.pki.verified(issued))


class DistributionPoints(ServedCrlCase):
    def setUp(self) -> None:
        super().setUp()
        self.pki.inter.crl(self.crl, der=True)

    @defer.inlineCallbacks
    def test_fetched_once(self) -> defer.Generator:
        first = yield self.check(self.pki.alice)
        self.assertTrue(first.accepted, first.reason)
        self.assertIn(f"CRL {self.url}: good", first.reason)
        revoked = yield self.check(self.pki.bob)
        self.assertFalse(revoked.accepted)
        self.assertIn(f"(CRL {self.url})", revoked.reason)
        self.assertEqual(self.served.requests, 1)  # cached until nextUpdate

    @defer.inlineCallbacks
    def test_fetched_crls_are_bounded(self) -> defer.Generator:
        """With room for two, a third URL's CRL pushes out the oldest: that one is
        fetched again, the newest is not (the server serves the CRL under any path)."""
        self.patch(fetch, "MAX_URLS", 2)
        urls = [f"http://127.0.0.1:{self.port}/{n}.crl" for n in "abc"]
        issuer = self.pki.verified(self.pki.alice).chain[1]
        for url in urls:
            yield self.points.crls(url, issuer)
        self.assertEqual(self.served.requests, 3)
        yield self.points.crls(urls[2], issuer)
        self.assertEqual(self.served.requests, 3)
        yield self.points.crls(urls[0], issuer)
        self.assertEqual(self.served.requests, 4)

    @defer.inlineCallbacks
    def test_down(self) -> defer.Generator:
        self.points = CrlDistributionPoints(HttpFetcher(reactor, timeout=2.0))
        self.served.path = self.dir / "missing"  # the server answers 503
        hard = yield self.check(self.pki.alice)
        self.assertFalse(hard.accepted)
        self.assertIn("HTTP 503", hard.reason)
        soft = yield self.check(self.pki.alice, hard_fail=False)
        self.assertTrue(soft.accepted)

    @defer.inlineCallbacks
    def test_too_large(self) -> defer.Generator:
        points = CrlDistributionPoints(HttpFetcher(reactor, timeout=2.0, max_bytes=64))
        checker = RevocationChecker(reactor, crl_distribution_points=points, hard_fail=True)
        result = yield checker.check(self.pki.verified(self.pki.alice))
        self.assertFalse(result.accepted)
        self.assertIn("exceeds 64 octets", result.reason)
