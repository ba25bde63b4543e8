"""EAP-TLS over RADIUS against wpa_supplicant's ``eapol_test`` (2.10): RFC 5216 with TLS 1.2,
RFC 9190 with TLS 1.3 (``phase1="tls_disable_tlsv1_3=0"``; 2.10 disables 1.3 by default).

Client certificates are made here with the ``openssl`` command line, signed by the test
PKI's CA (which ``[eap.tls] client_ca`` names) or by a CA the server does not trust.
eapol_test exits 0 only when the MS-MPPE keys of the Access-Accept equal the MSK it derived
(``MPPE keys OK``); it also logs the EMSK and Session-Id it derived, compared here with
what the server's method exported. The Access-Accept's User-Name is the
certificate's identity, not the EAP-Identity the peer sent.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from twisted.internet import defer
from twisted.trial import unittest

from tests.certs_openssl import OCSP_SIGNER, USER, Issued, OpensslCa
from tests.interop.test_eapol import (
    EAP_FAILURE,
    EAP_SUCCESS,
    KEYS_OK,
    EapolTestCase,
    Run,
    eap_config,
)
from tests.support import state_dir, test_pki
from tests.test_certs_revocation import _closed_port, _listen, _OcspResponder
from vpnaaa import pki
from vpnaaa.certs import DENY_FILE, DenyList, serial_hex
from vpnaaa.eap.authenticator import Success

OPENSSL = shutil.which("openssl")
TLS13 = "tls_disable_tlsv1_3=0"
TLS12 = "tls_disable_tlsv1_3=1"
_HEXDUMP = r"^EAP-TLS: Derived {what} - hexdump\(len=\d+\): ([0-9a-f ]+)$"


def openssl(*args: str) -> None:
    assert OPENSSL is not None
    subprocess.run([OPENSSL, *args], check=True, capture_output=True)


def client_certificate(directory: Path, ca_dir: Path, name: str, extensions: str) -> Path:
    """``name``.pem and ``name``.key (P-256) in ``directory``, signed by ``ca_dir``'s
    ca.pem/ca.key with the openssl CLI; ``extensions`` in openssl x509 -extfile syntax."""
    key, csr, cert = (directory / f"{name}.{ext}" for ext in ("key", "csr", "pem"))
    ext = directory / f"{name}.ext"
    ext.write_text(extensions)
    openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(key))
    openssl("req", "-new", "-key", str(key), "-subj", f"/CN={name}", "-out", str(csr))
    openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca_dir / "ca.pem"),
        "-CAkey", str(ca_dir / "ca.key"), "-CAcreateserial", "-days", "1",
        "-extfile", str(ext), "-out", str(cert),
    )  # fmt: skip
    return cert


def serial(cert: Path) -> int:
    assert OPENSSL is not None
    out = subprocess.run(
        [OPENSSL, "x509", "-noout", "-serial", "-in", str(cert)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return int(out.strip().split("=")[1], 16)


class EapTlsCase(EapolTestCase):
    """A daemon offering EAP-TLS only (helpers); the server's CA is the test PKI's."""

    def setUp(self) -> None:
        super().setUp()
        if OPENSSL is None:
            raise unittest.SkipTest("openssl command not found")
        self.ca = test_pki()[0]
        self.certs = state_dir(self)
        self.results: list[object] = []

    def start_tls(self, tls_options: str) -> None:
        """Start with ``[eap] methods = ["tls"]`` and more ``[eap.tls]`` lines; record the
        results the RADIUS front end receives from the engine."""
        self.start(
            eap_config(self.state, eap_options='methods = ["tls"]\n', tls_options=tls_options)
        )
        engine = self.daemon.eap
        assert engine is not None
        step = engine.step

        def spy(*args, **kwargs):  # the Success the RADIUS front end receives
            return step(*args, **kwargs).addCallback(self._record)

        engine.step = spy  # type: ignore[method-assign]

    def _record(self, outcome):
        self.results.append(outcome[1])
        return outcome

    def eap_tls(self, cert: Path, phase1: str, *options: str):
        return self.eapol_test(
            *options,
            eap="TLS",
            identity="anonymous@example.test",
            ca_cert=str(self.ca.cert),
            client_cert=str(cert),
            private_key=str(cert.with_suffix(".key")),
            phase1=phase1,
        )

    def success(self) -> Success:
        (success,) = [r for r in self.results if isinstance(r, Success)]
        return success

    def assertExports(self, run: Run) -> None:
        """The EMSK and Session-Id (0x0D and 64 octets) the peer derived equal ours."""
        success = self.success()
        for what, ours in (("EMSK", success.emsk), ("Session-Id", success.session_id)):
            pattern = re.compile(_HEXDUMP.format(what=what))
            # (logged once or twice: TLS 1.3 peers derive at the commitment message, too)
            (theirs,) = {m.group(1) for line in run.lines if (m := pattern.match(line))}
            self.assertEqual(bytes.fromhex(theirs.replace(" ", "")), ours, what)
        self.assertEqual((len(success.emsk), len(success.session_id)), (64, 65))
        self.assertEqual(success.session_id[0], 13)


class EapTlsTests(EapTlsCase):
    """``[eap] methods = ["tls"]``, client certificates from the test CA."""

    def setUp(self) -> None:
        super().setUp()
        self.carol = client_certificate(
            self.certs,
            self.ca.cert.parent,
            "carol",
            "extendedKeyUsage=clientAuth\nsubjectAltName=email:carol@example.test\n",
        )
        self.start_tls(f'client_ca = "{self.ca.cert}"\n')

    @defer.inlineCallbacks
    def test_tls12(self):
        """RFC 5216: the MSK (MPPE keys OK), EMSK and Session-Id (0x0D || client.random ||
        server.random) match; User-Name is the certificate's e-mail address though the
        EAP-Identity was anonymous@."""
        run = yield self.eap_tls(self.carol, TLS12)
        self.assertIn("SSL: Using TLS version TLSv1.2", run.lines, run.output)
        self.assertSucceeded(run, user="carol@example.test")
        self.assertExports(run)
        self.assertTrue(self.logged("Access-Accept EAP-TLS user 'carol@example.test'"))

    @defer.inlineCallbacks
    def test_tls13(self):
        """RFC 9190: TLS 1.3, the exporter-based MSK (MPPE keys OK), EMSK and Session-Id
        (0x0D || Method-Id) match; the peer received the protected success indication
        (one octet 0x00 of application data, §2.5) and acknowledged it."""
        run = yield self.eap_tls(self.carol, TLS13)
        self.assertIn("SSL: Using TLS version TLSv1.3", run.lines, run.output)
        self.assertIn("SSL: Application data - hexdump(len=1): 00", run.lines, run.output)
        self.assertIn("EAP-TLS: ACKing Commitment Message", run.lines, run.output)
        self.assertSucceeded(run, user="carol@example.test")
        self.assertExports(run)
        self.assertIn(KEYS_OK, run.lines)

    @defer.inlineCallbacks
    def test_untrusted_certificate(self):
        """A certificate from another CA: Access-Reject with EAP-Failure, and one log line
        naming the certificate (subject, serial) and OpenSSL's reason."""
        other = pki.init_ca(state_dir(self) / "other-ca", "some other CA")
        mallory = client_certificate(
            self.certs, other.cert.parent, "mallory", "extendedKeyUsage=clientAuth\n"
        )
        for phase1 in (TLS12, TLS13):
            self.events.clear()
            run = yield self.eap_tls(mallory, phase1)
            self.assertRejected(run)
            self.assertNotIn(EAP_SUCCESS, run.output)
            self.assertIn(EAP_FAILURE, run.output)
            (line,) = self.logged("Access-Reject")
            self.assertIn(
                f"client certificate 'CN=mallory' serial {serial(mallory):#x}: "
                "unable to get local issuer certificate",
                line,
            )
        run = yield self.eap_tls(self.carol, TLS13)  # the daemon is unharmed
        self.assertSucceeded(run, user="carol@example.test")

    @defer.inlineCallbacks
    def test_denied_serial(self):
        """`vpnaaa deny SERIAL` (the deny list file in the state directory, written here as
        the admin API writes it): the next EAP-TLS with that certificate gets Access-Reject
        and one log line naming the serial; lifted, it authenticates again."""
        listed = DenyList(self.state / DENY_FILE)
        number = serial(self.carol)
        self.assertTrue(listed.add(number))
        run = yield self.eap_tls(self.carol, TLS13)
        self.assertRejected(run)
        self.assertIn(EAP_FAILURE, run.output)
        (line,) = self.logged("Access-Reject")
        self.assertIn(f"serial {serial_hex(number)} is on the deny list", line)
        self.assertTrue(listed.remove(number))
        run = yield self.eap_tls(self.carol, TLS12)
        self.assertSucceeded(run, user="carol@example.test")


class RevocationTests(EapTlsCase):
    """``[eap.tls]`` revocation, the keys of IKE's certificate profiles: a client CA made
    by ``openssl ca`` (tests.certs_openssl), its CRL file and its ``openssl ocsp -index``
    responder over HTTP on loopback. A refusal is Access-Reject with EAP-Failure, sent
    instead of our last flight, and one log line with subject, serial and reason."""

    def setUp(self) -> None:
        super().setUp()
        self.client_ca = OpensslCa(self.certs / "clientca", "Client CA")

    def issue(self, name: str) -> Issued:
        return self.client_ca.issue(name, USER + f"subjectAltName = email:{name}@example.test\n")

    def start_with(self, options: str) -> None:
        self.start_tls(f'client_ca = "{self.client_ca.cert}"\n' + options)

    def ocsp_responder(self) -> str:
        signer = self.client_ca.issue("responder", OCSP_SIGNER)
        port = _listen(self, _OcspResponder(self.client_ca, signer))
        return f"http://127.0.0.1:{port}/"

    def assertRefused(self, run: Run, issued: Issued, *reasons: str) -> None:
        """Rejected, and the one log line names the certificate and says each of
        ``reasons`` ({serial}: the certificate's, as openssl writes it)."""
        self.assertRejected(run)
        (line,) = self.logged("Access-Reject")
        number = serial(issued.cert)
        self.assertIn(f"client certificate 'CN={issued.cert.stem}' serial {number:#x}: ", line)
        for reason in reasons:
            self.assertIn(reason.format(serial=serial_hex(number)), line)
        self.events.clear()

    @defer.inlineCallbacks
    def test_revoked_in_crl_file(self):
        """A certificate the CRL file lists is refused with TLS 1.2 and 1.3, another
        accepted; one revoked after start-up is refused once the CRL is rewritten and
        SIGHUP rereads it."""
        carol, dave = self.issue("carol"), self.issue("dave")
        self.client_ca.revoke(dave)
        crl = self.client_ca.crl(self.certs / "client.crl")
        self.start_with(f'crl_files = ["{crl}"]\nrevocation = "hard"\n')
        for phase1 in (TLS12, TLS13):
            run = yield self.eap_tls(dave.cert, phase1)
            self.assertRefused(run, dave, "certificate {serial} revoked", f"(CRL {crl})")
            run = yield self.eap_tls(carol.cert, phase1)
            self.assertSucceeded(run, user="carol@example.test")
            self.events.clear()
        self.client_ca.revoke(carol)
        self.client_ca.crl(crl)
        self.daemon.reload()  # what SIGHUP runs
        run = yield self.eap_tls(carol.cert, TLS13)
        self.assertRefused(run, carol, "certificate {serial} revoked", f"(CRL {crl})")

    @defer.inlineCallbacks
    def test_ocsp_good_and_revoked(self):
        """``ocsp_url``, ``revocation = "hard"``: the responder says good (accepted) and
        revoked (refused), with TLS 1.2 and 1.3."""
        ocsp = self.ocsp_responder()
        self.start_with(f'ocsp_url = "{ocsp}"\nrevocation = "hard"\n')
        good, bad = self.issue("carol"), self.issue("mallory")
        self.client_ca.revoke(bad)
        for phase1 in (TLS12, TLS13):
            run = yield self.eap_tls(good.cert, phase1)
            self.assertSucceeded(run, user="carol@example.test")
            self.events.clear()
            run = yield self.eap_tls(bad.cert, phase1)
            self.assertRefused(
                run, bad, "certificate {serial} revoked", f"reason key_compromise (OCSP {ocsp})"
            )

    @defer.inlineCallbacks
    def test_ocsp_responder_down(self):
        """Nobody answers at ``ocsp_url``: soft-fail accepts with a log line saying why."""
        url = f"http://127.0.0.1:{_closed_port()}/"
        self.start_with(f'ocsp_url = "{url}"\nrevocation = "soft"\nrevocation_timeout = 2\n')
        carol = self.issue("carol")
        run = yield self.eap_tls(carol.cert, TLS13)
        self.assertSucceeded(run, user="carol@example.test")
        (line,) = self.logged("soft-fail")
        self.assertIn(
            f"revocation status of certificate {serial_hex(serial(carol.cert))} unknown", line
        )

    @defer.inlineCallbacks
    def test_ocsp_responder_down_hard(self):
        """... and hard-fail refuses."""
        url = f"http://127.0.0.1:{_closed_port()}/"
        self.start_with(f'ocsp_url = "{url}"\nrevocation = "hard"\nrevocation_timeout = 2\n')
        carol = self.issue("carol")
        for phase1 in (TLS12, TLS13):
            run = yield self.eap_tls(carol.cert, phase1)
            self.assertRefused(run, carol, "revocation status of {serial} unknown (hard-fail)")
