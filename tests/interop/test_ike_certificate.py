"""IKEv2 certificate authentication of the client (RFC 7296 §2.15, RFC 7427, RFC 4945):
Debian's charon with ``auth = pubkey`` and a client certificate made by the openssl CLI,
the gateway's profile with ``auth = "certificate"``. Established with an RSA and an ECDSA
certificate; refused (AUTHENTICATION_FAILED, one gateway log line naming subject, serial
and reason) for a revoked one (CRL file), a serverAuth-only EKU, an untrusted issuer and a
denied serial; and a live session ends when its serial is denied over the admin API."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor
from twisted.web import client as client_agent

from tests.certs_openssl import OCSP_SIGNER, USER, OpensslCa
from tests.interop import charon
from tests.interop.test_ike_charon import CharonTestCase, assert_established
from tests.support import log_lines
from tests.test_admin import UnixEndpoints
from tests.test_certs_revocation import _listen, _OcspResponder
from vpnaaa import pki
from vpnaaa.certs import serial_hex

DEVICE_EXT = "extendedKeyUsage=clientAuth,1.3.6.1.5.5.8.2.2\nsubjectAltName=DNS:{name}\n"


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def client_certificate(directory: Path, ca_dir: Path, name: str, key: str, ext: str) -> Path:
    """``name``.pem and ``name``.key in ``directory`` (``key``: "rsa" for RSA-2048, "ec"
    for P-256), CN=``name``, signed by ``ca_dir``'s ca.pem/ca.key; ``ext``: openssl
    -extfile lines ({name} replaced)."""
    key_file, csr, cert, extfile = (directory / f"{name}.{e}" for e in ("key", "csr", "pem", "ext"))
    extfile.write_text(ext.format(name=name))
    if key == "rsa":
        openssl(
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            str(key_file),
        )
    else:
        openssl(
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            str(key_file),
        )
    openssl("req", "-new", "-key", str(key_file), "-subj", f"/CN={name}", "-out", str(csr))
    openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca_dir / "ca.pem"), "-CAkey",
        str(ca_dir / "ca.key"), "-CAcreateserial", "-days", "1", "-sha256",
        "-extfile", str(extfile), "-out", str(cert),
    )  # fmt: skip
    return cert


def serial_of(cert: Path) -> int:
    out = subprocess.run(
        ["openssl", "x509", "-noout", "-serial", "-in", str(cert)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return int(out.strip().split("=")[1], 16)


@dataclass
class PubkeyInitiator(charon.Initiator):
    """charon authenticating with its certificate (``auth = pubkey``, or a constraint
    like ``rsa/pss-sha256`` that also picks the signature scheme), IDi ``local_id``."""

    cert: Path = Path()

    def swanctl_conf(self, name: str) -> str:
        text = super().swanctl_conf(name)
        local = f"auth = {self.auth}"
        return text.replace(local, local + "\n\t\t\tcerts = client.pem", 1)

    def credentials(self) -> dict[str, Path]:
        return super().credentials() | {
            "x509/client.pem": self.cert,
            "private/client.key": self.cert.with_suffix(".key"),  # PKCS#8, RSA or EC
        }


class CertificateCase(CharonTestCase):
    """charon with a client certificate against a certificate profile (helpers)."""

    def setUp(self) -> Any:
        d = super().setUp()

        def more(_: object) -> None:
            self.certs = self.state / "clients"
            self.certs.mkdir()
            self.log = log_lines(self)

        return d.addCallback(more)

    def issue(self, name: str, key: str, ext: str) -> Path:
        return client_certificate(self.certs, self.state / "ca", name, key, ext)

    def start(self, extra: str = "") -> None:
        """vpnaaa with a certificate profile; ``extra``: more keys of it."""
        self.start_gateway(
            'auth = "certificate"\nclient_ca = ["ca/ca.pem"]\ncrl_files = ["ca/crl.pem"]\n' + extra
        )

    @defer.inlineCallbacks
    def connect_with(
        self, cert: Path, local_id: str, auth: str = "pubkey", rfc7427: bool = True
    ) -> Generator[defer.Deferred[Any], Any, tuple[charon.Charon, Any]]:
        """``rfc7427`` False: charon's signature_authentication = no (RSA: method 1)."""
        role = PubkeyInitiator(
            gateway=self.netns.gateway_address,
            ca_cert=self.ca,
            auth=auth,
            local_id=local_id,
            cert=cert,
        )
        settings = () if rfc7427 else ("signature_authentication = no",)
        client = charon.Charon(self.state / "charon", self.netns.name, role, settings=settings)
        self.addCleanup(client.stop)
        yield client.start()
        result = yield client.initiate()
        return client, result

    def refusals(self) -> list[str]:
        return [line for line in self.log if "AUTHENTICATION_FAILED" in line]

    @defer.inlineCallbacks
    def assert_refused(
        self, cert: Path, local_id: str, reason: str, rfc7427: bool = True
    ) -> Generator[defer.Deferred[Any], Any, None]:
        client, result = yield self.connect_with(cert, local_id, rfc7427=rfc7427)
        self.assertFalse(result.ok, result.output)
        self.assertIn("AUTHENTICATION_FAILED", client.log_text())
        (line,) = self.refusals()
        serial = serial_hex(serial_of(cert))
        self.assertIn(f"'CN={cert.stem}' serial {serial}", line)
        self.assertIn(reason, line)
        self.assertEqual(self.daemon.ike.responder.sessions(), [])

    @defer.inlineCallbacks
    def assert_connects(
        self, cert: Path, local_id: str, auth: str = "pubkey"
    ) -> Generator[defer.Deferred[Any], Any, tuple[charon.Charon, Any]]:
        client, result = yield self.connect_with(cert, local_id, auth)
        self.assertTrue(result.ok, result.output + client.tail())
        yield assert_established(self, client, self.installer, "10.99.7.")
        (sa,) = self.daemon.ike.responder.sessions()
        self.assertEqual(sa.identity, local_id)
        self.assertEqual(sa.certificate.serial, serial_hex(serial_of(cert)))
        self.assertEqual(sa.certificate.subject, f"CN={cert.stem}")
        return client, sa


class CertificateAuthTests(CertificateCase):
    @defer.inlineCallbacks
    def test_rsa_device_certificate(self) -> Generator[defer.Deferred[Any], Any, None]:
        """A machine certificate (FQDN, clientAuth + IKE intermediate), RSA-2048, IDi an
        FQDN (what the Windows device tunnel sends); charon received our CERTREQ."""
        cert = client_certificate(
            self.certs, self.state / "ca", "dev1.example.test", "rsa", DEVICE_EXT
        )
        self.start()
        client, _ = yield self.assert_connects(cert, "dev1.example.test")
        # charon found its CA by our CERTREQ's SHA-1 of the SubjectPublicKeyInfo (§3.7)
        self.assertIn('received cert request for "CN=vpnaaa demo CA"', client.log_text())
        self.assertEqual(self.refusals(), [])
        # the session view over the admin socket
        agent = client_agent.Agent.usingEndpointFactory(
            reactor, UnixEndpoints(self.state / "admin.sock")
        )
        response = yield agent.request(b"GET", b"http://localhost/sessions")
        (session,) = json.loads((yield client_agent.readBody(response)))
        self.assertEqual(session["username"], "dev1.example.test")
        self.assertEqual(
            session["certificate"],
            {"subject": "CN=dev1.example.test", "serial": serial_hex(serial_of(cert))},
        )

    @defer.inlineCallbacks
    def test_ecdsa_user_certificate(self) -> Generator[defer.Deferred[Any], Any, None]:
        """ECDSA P-256 with an e-mail SAN, IDi that address (RFC 7427 ECDSA AUTH)."""
        ext = "extendedKeyUsage=clientAuth\nsubjectAltName=email:carol@example.test\n"
        cert = self.issue("carol", "ec", ext)
        self.start()
        yield self.assert_connects(cert, "carol@example.test")

    @defer.inlineCallbacks
    def test_rsa_pss(self) -> Generator[defer.Deferred[Any], Any, None]:
        """charon told to sign with RSASSA-PSS and SHA-256 (``auth = rsa/pss-sha256``):
        RFC 7427 method 14 with id-RSASSA-PSS and its parameters (RFC 4055 §3.1); the
        profile refuses SHA-1 (``sha1_signatures = false``), which PSS never needs."""
        cert = self.issue("dev7.example.test", "rsa", DEVICE_EXT)
        self.start("sha1_signatures = false\n")
        client, _ = yield self.assert_connects(cert, "dev7.example.test", "rsa/pss-sha256")
        (accepted,) = [line for line in self.log if "accepted for" in line]
        self.assertIn("AUTH RSASSA-PSS with SHA256", accepted)
        (signed,) = [line for line in client.log_text().splitlines() if "(myself)" in line]
        self.assertIn("with RSA_EMSA_PSS_SHA2_256_SALT_32 successful", signed)

    @defer.inlineCallbacks
    def test_sha1_refused(self) -> Generator[defer.Deferred[Any], Any, None]:
        """charon without RFC 7427 (``signature_authentication = no``) signs with RSA
        and SHA-1, AUTH method 1, as Windows does: refused with ``sha1_signatures =
        false``."""
        cert = self.issue("dev8.example.test", "rsa", DEVICE_EXT)
        self.start("sha1_signatures = false\n")
        yield self.assert_refused(
            cert, "dev8.example.test", "refused by sha1_signatures = false", rfc7427=False
        )

    @defer.inlineCallbacks
    def test_revoked_in_crl_file(self) -> Generator[defer.Deferred[Any], Any, None]:
        cert = client_certificate(
            self.certs, self.state / "ca", "dev2.example.test", "ec", DEVICE_EXT
        )
        pki.revoke(self.state / "ca", serial_of(cert), "keyCompromise", unlisted=True)
        self.start()
        yield self.assert_refused(cert, "dev2.example.test", "revoked")

    @defer.inlineCallbacks
    def test_wrong_eku(self) -> Generator[defer.Deferred[Any], Any, None]:
        ext = "extendedKeyUsage=serverAuth\nsubjectAltName=DNS:{name}\n"
        cert = self.issue("dev3.example.test", "ec", ext)
        self.start()
        yield self.assert_refused(cert, "dev3.example.test", "extendedKeyUsage")

    @defer.inlineCallbacks
    def test_untrusted_issuer(self) -> Generator[defer.Deferred[Any], Any, None]:
        other = self.state / "other-ca"
        pki.init_ca(other, "another CA")
        cert = client_certificate(self.certs, other, "dev4.example.test", "ec", DEVICE_EXT)
        self.start()
        yield self.assert_refused(cert, "dev4.example.test", "no chain to a trusted issuer")

    @defer.inlineCallbacks
    def test_denied_serial(self) -> Generator[defer.Deferred[Any], Any, None]:
        cert = client_certificate(
            self.certs, self.state / "ca", "dev5.example.test", "ec", DEVICE_EXT
        )
        self.start()
        self.daemon.deny.add(serial_of(cert))
        yield self.assert_refused(cert, "dev5.example.test", "deny list")

    @defer.inlineCallbacks
    def test_denying_a_live_session_ends_it(self) -> Generator[defer.Deferred[Any], Any, None]:
        """POST /deny?serial= (what `vpnaaa deny` sends) ends the session: charon gets
        our DELETE and its IKE_SA is gone."""
        cert = client_certificate(
            self.certs, self.state / "ca", "dev6.example.test", "rsa", DEVICE_EXT
        )
        self.start()
        client, sa = yield self.assert_connects(cert, "dev6.example.test")
        agent = client_agent.Agent.usingEndpointFactory(
            reactor, UnixEndpoints(self.state / "admin.sock")
        )
        serial = serial_hex(serial_of(cert))
        response = yield agent.request(b"POST", f"http://localhost/deny?serial={serial}".encode())
        body = (yield client_agent.readBody(response)).decode()
        self.assertIn(f"serial {serial} denied; 1 live session(s) ended, {sa.session_id}", body)
        for _ in range(50):
            if "received DELETE for IKE_SA" in client.log_text():
                break
            yield charon.sleep(0.1)
        self.assertIn("received DELETE for IKE_SA", client.log_text())
        self.assertEqual((yield client.list_sas()), [])
        self.assertEqual(self.daemon.ike.responder.sessions(), [])
        ended = [line for line in self.log if "session of" in line and "ended" in line]
        self.assertEqual(len(ended), 1, ended)
        self.assertIn(f"serial {serial} denied", ended[0])
        # and it cannot come back
        result = yield client.initiate()
        self.assertFalse(result.ok, result.output)
        (line,) = self.refusals()
        self.assertIn("deny list", line)


class OcspTests(CertificateCase):
    """``ocsp_url`` with ``revocation = "hard"``: `openssl ocsp -index` answers (through
    HTTP on loopback) for the client CA's certificates."""

    def setUp(self) -> Any:
        d = super().setUp()

        def ca(_: object) -> None:
            self.client_ca = OpensslCa(self.state / "clientca", "Client CA", key="rsa")
            signer = self.client_ca.issue("responder", OCSP_SIGNER)
            port = _listen(self, _OcspResponder(self.client_ca, signer))
            self.ocsp = f"http://127.0.0.1:{port}/"
            self.start_gateway(
                'auth = "certificate"\nclient_ca = ["clientca/ca.pem"]\nrevocation = "hard"\n'
                f'ocsp_url = "{self.ocsp}"\n'
            )

        return d.addCallback(ca)

    @defer.inlineCallbacks
    def test_good_and_revoked(self) -> Generator[defer.Deferred[Any], Any, None]:
        ext = USER + "subjectAltName = DNS:{}\n"
        good = self.client_ca.issue("good", ext.format("good.example.test"), key="rsa")
        client, _ = yield self.assert_connects(good.cert, "good.example.test")
        (accepted,) = [line for line in self.log if "accepted for" in line]
        self.assertIn(f"OCSP {self.ocsp}: good", accepted)
        yield client.terminate()
        yield client.stop()
        bad = self.client_ca.issue("bad", ext.format("bad.example.test"), key="rsa")
        self.client_ca.revoke(bad)
        said = f"reason key_compromise (OCSP {self.ocsp})"
        yield self.assert_refused(bad.cert, "bad.example.test", said)
