"""Live certificate sessions against Debian's charon: what ends them and what does not.

- EAP-TLS over IKEv2 (``eap_methods = ["tls"]``): the session keeps the certificate the
  EAP-TLS handshake verified, the session view shows it, and `vpnaaa deny` (POST /deny on
  the admin socket) ends the session: charon receives the DELETE.
- A CRL file read again ends the sessions it revokes: `vpnaaa pki revoke` rewrites
  ``ca/crl.pem`` and the daemon's look at the file (every few seconds) ends a certificate
  session (``auth = "certificate"``); with EAP-TLS, SIGHUP's reread does (``[eap.tls]
  crl_files``). charon logs the DELETE; the gateway one line naming certificate and file.
- charon rekeys the IKE SA and the CHILD_SA of a certificate session (RFC 7296 §1.3.2,
  §1.3.3): the session carries on with its subject and serial, and `vpnaaa deny` still
  ends it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Generator
from typing import Any

from twisted.internet import defer, reactor
from twisted.web import client as client_agent

from tests.interop import charon
from tests.interop.test_ike_certificate import (
    DEVICE_EXT,
    CertificateCase,
    client_certificate,
    serial_of,
)
from tests.interop.test_ike_charon import assert_established
from tests.interop.test_ike_eaptls import eap_tls_client
from tests.test_admin import UnixEndpoints
from vpnaaa import pki
from vpnaaa.certs import serial_hex
from vpnaaa.service import CRL_FOLLOW_INTERVAL


class LiveCase(CertificateCase):
    @defer.inlineCallbacks
    def admin(self, method: bytes, path: str) -> Generator[defer.Deferred[Any], Any, str]:
        agent = client_agent.Agent.usingEndpointFactory(
            reactor, UnixEndpoints(self.state / "admin.sock")
        )
        response = yield agent.request(method, f"http://localhost{path}".encode())
        return (yield client_agent.readBody(response)).decode()

    @defer.inlineCallbacks
    def until(
        self, condition: Callable[[], bool], seconds: float, what: str
    ) -> Generator[defer.Deferred[Any], Any, None]:
        for _ in range(int(seconds / 0.1)):
            if condition():
                return
            yield charon.sleep(0.1)
        self.fail(f"no {what} within {seconds} s")

    @defer.inlineCallbacks
    def assert_deleted(
        self, client: charon.Charon, *said: str
    ) -> Generator[defer.Deferred[Any], Any, None]:
        """charon got our DELETE and holds no IKE_SA; the gateway holds no session and
        logged its end once, saying ``said``."""
        yield self.until(
            lambda: "received DELETE for IKE_SA" in client.log_text(), 10.0, "DELETE at charon"
        )
        yield self.until(lambda: not self.daemon.ike.responder.sas, 5.0, "IKE SA gone")
        self.assertEqual((yield client.list_sas()), [])
        ended = [line for line in self.log if "session of" in line and "ended" in line]
        self.assertEqual(len(ended), 1, ended)
        for text in said:
            self.assertIn(text, ended[0])

    @defer.inlineCallbacks
    def deny_ends(
        self, client: charon.Charon, serial: str, session_id: str
    ) -> Generator[defer.Deferred[Any], Any, None]:
        body = yield self.admin(b"POST", f"/deny?serial={serial}")
        self.assertIn(f"serial {serial} denied; 1 live session(s) ended, {session_id}", body)
        yield self.assert_deleted(client, f"serial {serial} denied")


class EapTlsSessionTests(LiveCase):
    """EAP-TLS over IKEv2 with the gateway's CA; ``[eap.tls] crl_files`` its crl.pem."""

    def setUp(self) -> Any:
        d = super().setUp()

        def gateway(_: object) -> None:
            ext = "extendedKeyUsage=clientAuth\nsubjectAltName=email:carol@example.test\n"
            self.cert = client_certificate(self.certs, self.state / "ca", "carol", "ec", ext)
            self.serial = serial_hex(serial_of(self.cert))
            self.start_gateway(
                'eap_methods = ["tls"]',
                eap='methods = ["tls"]\n[eap.tls]\nclient_ca = "ca/ca.pem"\n'
                'crl_files = ["ca/crl.pem"]\n',
            )

        return d.addCallback(gateway)

    @defer.inlineCallbacks
    def connect_tls(self) -> Generator[defer.Deferred[Any], Any, tuple[charon.Charon, Any]]:
        client = eap_tls_client(self, self.cert)
        yield client.start()
        result = yield client.initiate()
        self.assertTrue(result.ok, result.output + client.tail())
        yield assert_established(self, client, self.installer, "10.99.7.")
        (sa,) = self.daemon.ike.responder.sessions()
        self.assertEqual(sa.identity, "carol@example.test")
        self.assertEqual((sa.certificate.subject, sa.certificate.serial), ("CN=carol", self.serial))
        return client, sa

    @defer.inlineCallbacks
    def test_the_session_view_shows_the_certificate_and_deny_ends_it(
        self,
    ) -> Generator[defer.Deferred[Any], Any, None]:
        client, sa = yield self.connect_tls()
        (session,) = json.loads((yield self.admin(b"GET", "/sessions")))
        self.assertEqual(session["certificate"], {"subject": "CN=carol", "serial": self.serial})
        (line,) = [line for line in self.log if "EAP-TLS succeeded" in line]
        self.assertIn(f"(certificate 'CN=carol' serial {self.serial})", line)
        yield self.deny_ends(client, self.serial, sa.session_id)

    @defer.inlineCallbacks
    def test_sighup_rereads_a_crl_that_revokes_it(
        self,
    ) -> Generator[defer.Deferred[Any], Any, None]:
        """`vpnaaa pki revoke` rewrites ca/crl.pem; SIGHUP (the daemon's reload) rereads
        it and the session ends, before the next look at the file would."""
        client, _ = yield self.connect_tls()
        pki.revoke(self.state / "ca", int(self.serial, 16), "keyCompromise", unlisted=True)
        self.daemon.reload()
        yield self.assert_deleted(
            client,
            f"certificate 'CN=carol' serial {self.serial} revoked",
            "reason key_compromise",
            f"(CRL file {self.state / 'ca' / 'crl.pem'})",
        )


class CertificateSessionTests(LiveCase):
    """``auth = "certificate"`` with ``crl_files = ["ca/crl.pem"]`` (CertificateCase.start)."""

    @defer.inlineCallbacks
    def connected(
        self, name: str
    ) -> Generator[defer.Deferred[Any], Any, tuple[charon.Charon, Any, str]]:
        cert = client_certificate(self.certs, self.state / "ca", name, "ec", DEVICE_EXT)
        self.start()
        client, sa = yield self.assert_connects(cert, name)
        return client, sa, serial_hex(serial_of(cert))

    @defer.inlineCallbacks
    def test_a_changed_crl_file_ends_the_session(self) -> Generator[defer.Deferred[Any], Any, None]:
        """No SIGHUP: the daemon notices the rewritten file by itself."""
        client, _, serial = yield self.connected("dev7.example.test")
        yield charon.sleep(1.0)  # a different mtime than the CRL read at start
        pki.revoke(self.state / "ca", int(serial, 16), "keyCompromise", unlisted=True)
        yield self.until(
            lambda: "received DELETE for IKE_SA" in client.log_text(),
            CRL_FOLLOW_INTERVAL + 3.0,
            "DELETE after the CRL changed",
        )
        yield self.assert_deleted(
            client,
            f"certificate 'CN=dev7.example.test' serial {serial} revoked",
            f"(CRL file {self.state / 'ca' / 'crl.pem'})",
        )

    @defer.inlineCallbacks
    def test_rekeys_keep_the_certificate(self) -> Generator[defer.Deferred[Any], Any, None]:
        """charon rekeys the CHILD_SA, then the IKE SA: one session all along, same
        session id, subject and serial; the view shows them on the new IKE SA; deny ends
        the session on it."""
        client, sa, serial = yield self.connected("dev8.example.test")
        (before,) = yield client.list_sas()
        (child_before,) = self.installer.installed.values()
        yield client.swanctl("--rekey", "--child", client.conn)
        yield self.until(
            lambda: (
                [c.inbound_spi for c in self.installer.installed.values()]
                not in ([], [child_before.inbound_spi])
            ),
            5.0,
            "rekeyed CHILD_SA",
        )
        yield client.swanctl("--rekey", "--ike", client.conn)
        yield self.until(
            lambda: list(self.daemon.ike.responder.sas) not in ([], [before.spi_r]),
            5.0,
            "rekeyed IKE SA",
        )
        yield self.until(lambda: len(self.daemon.ike.responder.sas) == 1, 5.0, "old SA gone")
        (after,) = yield client.list_sas()
        self.assertEqual(after.state, "ESTABLISHED")
        self.assertNotEqual(after.spi_r, before.spi_r)
        (now,) = self.daemon.ike.responder.sessions()
        self.assertIsNot(now, sa)
        self.assertEqual(now.spi, after.spi_r)
        self.assertEqual(now.session_id, sa.session_id)
        self.assertEqual(
            (now.certificate.subject, now.certificate.serial), ("CN=dev8.example.test", serial)
        )
        (session,) = json.loads((yield self.admin(b"GET", "/sessions")))
        self.assertEqual(
            session["certificate"], {"subject": "CN=dev8.example.test", "serial": serial}
        )
        self.assertEqual(session["ike_spis"], f"{after.spi_i.hex()}/{after.spi_r.hex()}")
        self.assertIn("rekeyed", client.log_text())
        yield self.deny_ends(client, serial, sa.session_id)
