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

from tests.interop.test_eapol import (
    EAP_FAILURE,
    EAP_SUCCESS,
    KEYS_OK,
    EapolTestCase,
    Run,
    eap_config,
)
from tests.support import state_dir, test_pki
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


class EapTlsTests(EapolTestCase):
    """``[eap] methods = ["tls"]``, client certificates from the test CA."""

    def setUp(self) -> None:
        super().setUp()
        if OPENSSL is None:
            raise unittest.SkipTest("openssl command not found")
        self.ca = test_pki()[0]
        self.certs = state_dir(self)
        self.carol = client_certificate(
            self.certs,
            self.ca.cert.parent,
            "carol",
            "extendedKeyUsage=clientAuth\nsubjectAltName=email:carol@example.test\n",
        )
        client_ca = f'client_ca = "{self.ca.cert}"\n'
        self.start(eap_config(self.state, eap_options='methods = ["tls"]\n', tls_options=client_ca))
        self.results: list[object] = []
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
