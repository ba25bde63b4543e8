"""PEAP (RFC 9427) and EAP-TLS (RFC 9190) over TLS 1.3 with FreeRADIUS 3.2 as the second
opinion on the keys.

The same eapol_test 2.10 that proves vpnaaa's PEAP keys over TLS 1.3
(:class:`tests.interop.test_eapol.Tls13PeapTests`) runs against Debian 12's FreeRADIUS
(3.2.1) with its eap module's ``tls_max_version = "1.3"`` (Debian's file keeps "1.2" and
says PEAP does not support TLS 1.3; the server logs a warning and negotiates it anyway).
Where both servers speak the case, the peer accepts both: without cryptobinding their MSK
is Key_Material[0:64] = TLS-Exporter("EXPORTER_EAP_TLS_Key_Material", 0x19, 128) (RFC
9427 §2.1), three implementations agreeing. FreeRADIUS sends no Crypto-Binding TLV
([MS-PEAP] §2.2.8.2) in any TLS version, so it cannot be a second opinion on the TLS 1.3
Tunnel Key (RFC 9427 §2.5); that rests on eapol_test alone, and a peer that requires
cryptobinding refuses FreeRADIUS.

For EAP-TLS the same holds: the eapol_test that proves vpnaaa's TLS 1.3 keys
(:class:`tests.interop.test_eapol_tls.EapTlsTests`) with the same client certificate gets
"MPPE keys OK" from FreeRADIUS too: MSK = TLS-Exporter("EXPORTER_EAP_TLS_Key_Material",
0x0D, 128)[0:64] (RFC 9190 §2.3), and FreeRADIUS's 0x00 protected success indication
(§2.5) is what eapol_test, like vpnaaa's, waits for. (strongSwan's charon 5.9.8 is no
second opinion here: with libtls version_max = 1.3 it crashes on that indication.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.trial import unittest

from tests.interop import freeradius
from tests.interop.test_eapol import (
    KEYS_MISSING,
    KEYS_OK,
    NO_BINDING,
    PASSWORD,
    TLS13,
    USER,
    EapolTestCase,
    tls_versions,
)
from tests.interop.test_eapol_tls import TLS13 as EAP_TLS13
from tests.interop.test_eapol_tls import EapTlsCase, client_certificate
from tests.support import SECRET

# The Debian eap module's certificate_file (self-signed): the peer's ca_cert.
SNAKEOIL = Path("/etc/ssl/certs/ssl-cert-snakeoil.pem")


class Tls13FreeRadius(freeradius.FreeRadius):
    """The private FreeRADIUS with its eap module allowing TLS 1.3 and, with ``ca``,
    trusting it for EAP-TLS client certificates (its own certificate stays Debian's
    snakeoil one)."""

    def __init__(self, *args: Any, ca: Path | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ca = ca

    def _write_config(self, port: int) -> None:
        super()._write_config(port)
        options = {r"\t\ttls_max_version": '"1.3"'}
        if self.ca is not None:
            options[r"\t\tca_file"] = str(self.ca)
        freeradius.edit_module(self.raddb, "eap", options)


def require_freeradius() -> None:
    """Skip unless Debian's FreeRADIUS and its snakeoil certificate are here."""
    reason = freeradius.unavailable()
    if reason is not None:
        raise unittest.SkipTest(reason)
    if not SNAKEOIL.exists():
        raise unittest.SkipTest(f"{SNAKEOIL} missing (Debian's ssl-cert package)")


class FreeRadiusPeapTls13Tests(EapolTestCase):
    def setUp(self) -> None:
        require_freeradius()
        super().setUp()

    @defer.inlineCallbacks
    def start_freeradius(self):
        server = Tls13FreeRadius(
            self.state / "freeradius", SECRET, {USER: PASSWORD}, default_eap_type="peap"
        )
        self.addCleanup(server.stop)
        yield server.start()
        self.auth_port = server.port
        return server

    @defer.inlineCallbacks
    def test_same_msk_without_cryptobinding(self):
        server = yield self.start_freeradius()
        run = yield self.peap(phase1=f"{TLS13} crypto_binding=0", ca_cert=str(SNAKEOIL))
        self.assertEqual(tls_versions(run), {"TLSv1.3"}, run.output)
        self.assertEqual(run.exit_code, 0, run.output)
        self.assertIn(KEYS_OK, run.lines, run.output)
        self.assertEqual(run.lines[-1], "SUCCESS", run.output)
        self.assertIn("Login OK: [alice]", server.log_text())

    @defer.inlineCallbacks
    def test_no_cryptobinding_from_freeradius(self):
        """Where FreeRADIUS does not support the case: crypto_binding=2 finds no
        Crypto-Binding TLV beside the Result TLV and refuses, though the inner
        MS-CHAPv2 succeeded on both sides."""
        server = yield self.start_freeradius()
        run = yield self.peap(phase1=f"{TLS13} crypto_binding=2", ca_cert=str(SNAKEOIL))
        self.assertEqual(tls_versions(run), {"TLSv1.3"}, run.output)
        self.assertIn(NO_BINDING, run.lines, run.output)
        self.assertIn(KEYS_MISSING, run.lines, run.output)
        self.assertEqual(run.lines[-1], "FAILURE", run.output)
        self.assertIn("Login OK: [alice]", server.log_text())


class FreeRadiusEapTls13Tests(EapTlsCase):
    def setUp(self) -> None:
        require_freeradius()
        super().setUp()

    @defer.inlineCallbacks
    def test_same_msk(self):
        carol = client_certificate(
            self.certs,
            self.ca.cert.parent,
            "carol",
            "extendedKeyUsage=clientAuth\nsubjectAltName=email:carol@example.test\n",
        )
        server = Tls13FreeRadius(
            self.state / "freeradius", SECRET, {}, default_eap_type="tls", ca=self.ca.cert
        )
        self.addCleanup(server.stop)
        yield server.start()
        self.auth_port = server.port
        run = yield self.eapol_test(
            eap="TLS",
            identity="carol@example.test",
            ca_cert=str(SNAKEOIL),
            client_cert=str(carol),
            private_key=str(carol.with_suffix(".key")),
            phase1=EAP_TLS13,
        )
        self.assertEqual(tls_versions(run), {"TLSv1.3"}, run.output)
        self.assertEqual(run.exit_code, 0, run.output)
        self.assertIn(KEYS_OK, run.lines, run.output)
        self.assertEqual(run.lines[-1], "SUCCESS", run.output)
        self.assertIn("Login OK: [carol@example.test]", server.log_text())
