"""Session resumption (fast reconnect) against wpa_supplicant's ``eapol_test`` (2.10): two
authentications in one run (``-r1``: it re-authenticates with the same TLS context and
offers the session the first one left: a TLS 1.2 session ID, a TLS 1.3 ticket). The second
resumes (OpenSSL says so, and it takes fewer EAP round trips), and "MPPE keys OK" holds for
both, so the MSK of the resumed handshake is the one the peer derived (RFC 5216 §2.3,
RFC 9190 §2.3, [MS-PEAP] fast reconnect). A serial denied between the two is refused on
resumption (RFC 5216 §5.7 / RFC 9190 §5.7).
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet import defer
from twisted.trial import unittest

from tests.interop.test_eapol import (
    PASSWORD,
    USER,
    EapolTestCase,
    Run,
    eap_config,
)
from tests.interop.test_eapol_tls import OPENSSL, TLS12, TLS13, client_certificate, serial
from tests.support import state_dir, test_pki
from vpnaaa.certs import serial_hex
from vpnaaa.eap.authenticator import Success
from vpnaaa.users import User

RESUMPTION = "resumption = true\nsession_lifetime = 600\nsession_cache_size = 100\n"
KEYS_OK_TWICE = "MPPE keys OK: 2  mismatch: 0"
FULL = "OpenSSL: Handshake finished - resumed=0"
PHASE2_DONE = "EAP-TLV: TLV Result - Success - EAP-TLV/Phase2 Completed"
RESUMED = "OpenSSL: Handshake finished - resumed=1"  # wpa_supplicant's SSL_session_reused


def handshakes(run: Run) -> list[str]:
    """wpa_supplicant's verdict on each TLS handshake of the run, "full" or "resumed"
    (TLS 1.3 logs it twice per handshake: repeats are dropped)."""
    found: list[str] = []
    for line in run.lines:
        verdict = {FULL: "full", RESUMED: "resumed"}.get(line)
        if verdict is not None and found[-1:] != [verdict]:
            found.append(verdict)
    return found


def requests_per_authentication(run: Run) -> list[int]:
    """EAP Requests the peer received in each authentication of the run (the first is
    the Identity request; the rest are counted until the next one starts)."""
    counts: list[int] = []
    for line in run.lines:
        if line.startswith("EAP: Received EAP-Request"):
            if " method=1 " in line:
                counts.append(0)
            counts[-1] += 1
    return counts


class ResumptionTestCase(EapolTestCase):
    """A daemon with ``[eap.tls] resumption = true`` and a hook run once, when the first
    authentication has succeeded and before the second begins."""

    def start_with(self, methods: str, tls: str = "") -> None:
        options = f"methods = {methods}\n"
        self.start(eap_config(self.state, eap_options=options, tls_options=tls + RESUMPTION))
        engine = self.daemon.eap
        assert engine is not None
        step = engine.step
        self.between: list[Callable[[], object]] = []

        def spy(*args, **kwargs):
            def after(outcome):
                if isinstance(outcome[1], Success):
                    while self.between:
                        self.between.pop()()
                return outcome

            return step(*args, **kwargs).addCallback(after)

        engine.step = spy  # type: ignore[method-assign]

    def assertResumed(self, run: Run, user: str, full: int) -> None:
        """Both authentications succeeded with matching keys, the second resumed and
        took ``full`` fewer EAP Requests; User-Name both times ``user``."""
        self.assertEqual(run.exit_code, 0, run.output)
        self.assertIn(KEYS_OK_TWICE, run.lines, run.output)
        self.assertEqual(handshakes(run), ["full", "resumed"], run.output)
        first, second = requests_per_authentication(run)
        self.assertEqual(first - second, full, run.output)
        accepts = run.replies("Access-Accept")
        self.assertEqual([a.values("User-Name") for a in accepts], [[user]] * 2)
        self.assertEqual(run.replies("Access-Reject"), [])


class EapTlsResumptionTests(ResumptionTestCase):
    def setUp(self) -> None:
        super().setUp()
        if OPENSSL is None:
            raise unittest.SkipTest("openssl command not found")
        self.ca = test_pki()[0]
        self.carol = client_certificate(
            state_dir(self),
            self.ca.cert.parent,
            "carol",
            "extendedKeyUsage=clientAuth\nsubjectAltName=email:carol@example.test\n",
        )
        self.start_with('["tls"]', f'client_ca = "{self.ca.cert}"\n')

    def eap_tls(self, phase1: str):
        return self.eapol_test(
            "-r1",
            eap="TLS",
            identity="anonymous@example.test",
            ca_cert=str(self.ca.cert),
            client_cert=str(self.carol),
            private_key=str(self.carol.with_suffix(".key")),
            phase1=phase1,
        )

    @defer.inlineCallbacks
    def test_tls12(self):
        """RFC 5216 §2.1.3: the session ID; ServerHello, CCS and Finished in one Request,
        EAP-Success after the peer's Finished: 4 Requests fewer than the full handshake
        (its certificate flight in 3 fragments of 1024, and the CCS/Finished round)."""
        run = yield self.eap_tls(TLS12)
        self.assertResumed(run, "carol@example.test", 4)

    @defer.inlineCallbacks
    def test_tls13(self):
        """RFC 9190 §2.1.2: a stateful ticket (PSK), no Certificate flights; the protected
        success indication and its ACK as in a full handshake."""
        run = yield self.eap_tls(TLS13)
        self.assertIn("SSL: Using TLS version TLSv1.3", run.lines, run.output)
        self.assertResumed(run, "carol@example.test", 3)

    @defer.inlineCallbacks
    def test_denied_serial(self):
        """`vpnaaa deny SERIAL` between the two: the resumed session's certificate is
        checked again (RFC 5216 §5.7, RFC 9190 §5.7): Access-Reject, one log line naming
        the serial and the resumption."""
        number = serial(self.carol)
        for phase1 in (TLS12, TLS13):
            self.events.clear()
            self.between.append(lambda: self.daemon.deny.add(number))
            run = yield self.eap_tls(phase1)
            self.assertNotEqual(run.exit_code, 0, run.output)
            self.assertEqual(handshakes(run), ["full", "resumed"], run.output)
            self.assertEqual(len(run.replies("Access-Accept")), 1, run.output)
            self.assertEqual(len(run.replies("Access-Reject")), 1, run.output)
            (line,) = self.logged("Access-Reject")
            self.assertIn("'CN=carol'", line)
            self.assertIn(f"(resumed session): serial {serial_hex(number)} is on the deny", line)
            self.assertTrue(self.daemon.deny.remove(number))


class PeapResumptionTests(ResumptionTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.start_with('["peap"]')

    def peap_twice(self, tls: str = TLS12):
        """PEAPv0/MSCHAPv2 as :meth:`EapolTestCase.peap`, TLS 1.2 (or ``tls``), two
        authentications."""
        return self.eapol_test(
            "-r1",
            eap="PEAP",
            identity=USER,
            anonymous_identity="anonymous",
            password=PASSWORD,
            ca_cert=str(test_pki()[0].cert),
            phase1=f"peapver=0 {tls}",
            phase2="auth=MSCHAPV2",
        )

    @defer.inlineCallbacks
    def test_fast_reconnect(self):
        """[MS-PEAP] fast reconnect over a TLS 1.2 session ID: no inner
        MSCHAPv2 the second time (wpa_supplicant sees the Result TLV at once), the user
        restored, MPPE keys OK both times (the TLS MSK of the new handshake): 4 EAP
        Requests (Identity, Start, ServerHello/CCS/Finished, the Result TLV) where the full
        one took 10 (3 certificate fragments, CCS/Finished, inner Identity, MSCHAPv2
        Challenge and Success, Result with Crypto-Binding)."""
        run = yield self.peap_twice()
        self.assertEqual(run.lines.count(PHASE2_DONE), 2, run.output)
        self.assertEqual(run.output.count("EAP-MSCHAPV2: Received challenge"), 1, run.output)
        self.assertResumed(run, USER, 6)

    @defer.inlineCallbacks
    def test_fast_reconnect_tls13(self):
        """The same over a TLS 1.3 stateful ticket (RFC 9427 PEAP keys): the inner
        MSCHAPv2 runs once, MPPE keys OK both times, 5 EAP Requests fewer the second time."""
        run = yield self.peap_twice(TLS13)
        self.assertIn("SSL: Using TLS version TLSv1.3", run.lines, run.output)
        self.assertEqual(run.lines.count(PHASE2_DONE), 2, run.output)
        self.assertEqual(run.output.count("EAP-MSCHAPV2: Received challenge"), 1, run.output)
        self.assertResumed(run, USER, 5)

    @defer.inlineCallbacks
    def test_changed_password(self):
        """A user whose password changed since: the session resumes at the TLS layer, but
        phase 2 runs in full, and the old password fails it (one log line says why)."""
        users = self.daemon.users
        self.between.append(lambda: users.use({USER: User.create(USER, "changed")}))
        run = yield self.peap_twice()
        self.assertEqual(handshakes(run), ["full", "resumed"], run.output)
        self.assertEqual(len(run.replies("Access-Accept")), 1, run.output)
        self.assertEqual(len(run.replies("Access-Reject")), 1, run.output)
        self.assertTrue(self.logged("resumed, but the password changed"))
