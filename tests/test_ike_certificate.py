"""IKE_AUTH with the client's certificate, in process (tests/ike_peer.py on a fake clock):
the cases charon does not produce. A forged AUTH, an IDi the certificate does not name,
RFC 4754 ECDSA (method 9), too many CERT payloads, a revocation answer that arrives after
the SA is gone, and the CERTREQ contents (the bound on revocation checks in flight:
tests/test_revocation_bounds.py).
Certificates come from the openssl CLI (tests/certs_openssl.py); the client's AUTH is
signed here with cryptography, over RFC 7296 §2.15's octets as the test computes them."""

from __future__ import annotations

import hashlib
import subprocess
import time

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from twisted.internet import defer
from twisted.trial import unittest

from tests.certs_openssl import USER, Issued, OpensslCa
from tests.ike_peer import Gateway, Initiator
from tests.support import log_lines, state_dir
from vpnaaa.certs import ClientVerifier, RevocationChecker, RevocationResult, VerifiedCertificate
from vpnaaa.ike.common import CertificateAuth, user_key
from vpnaaa.ike.const import (
    AuthMethod,
    CertEncoding,
    ExchangeType,
    IdType,
    NotifyType,
    PayloadType,
)
from vpnaaa.ike.message import Authentication, Certificate, Identification, Message
from vpnaaa.service import certificate_request

DEVICE = USER + "subjectAltName = DNS:dev.example.test\n"
ECDSA_SHA256 = bytes.fromhex("0c300a06082a8648ce3d040302")  # RFC 7427 §3: length, AlgId


class PendingRevocation:
    """A revocation checker whose answers the test gives, when it likes (its Deferreds)."""

    def __init__(self) -> None:
        self.asked: list[defer.Deferred[RevocationResult]] = []

    def check(self, verified: VerifiedCertificate) -> defer.Deferred[RevocationResult]:
        self.asked.append(defer.Deferred())
        return self.asked[-1]


class CertificateAuthTests(unittest.TestCase):
    def setUp(self) -> None:
        directory = state_dir(self)
        self.ca = OpensslCa(directory / "ca", "Device CA")
        self.device = self.ca.issue("dev", DEVICE, subject="/CN=dev.example.test")
        self.other_key = ec.generate_private_key(ec.SECP256R1())
        self.log = log_lines(self)
        self.verifier = ClientVerifier.from_files([self.ca.cert])

    def gateway(self, revocation: object = None) -> Gateway:
        gateway = Gateway(auth="certificate")
        checker = revocation or RevocationChecker(gateway.clock)
        profile = gateway.context.profiles[0]
        profile.certificates = CertificateAuth(self.verifier, checker)  # type: ignore[arg-type]
        gateway.clock.advance(time.time())  # the certificates are valid now
        return gateway

    def key(self, issued: Issued) -> ec.EllipticCurvePrivateKey:
        key = serialization.load_pem_private_key(issued.key.read_bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return key

    def auth_request(
        self,
        peer: Initiator,
        *,
        idi: Identification,
        key: ec.EllipticCurvePrivateKey,
        method: int = AuthMethod.DIGITAL_SIGNATURE,
        certs: list[bytes] | None = None,
    ) -> Message | None:
        """IKE_AUTH #1 with CERT and AUTH: the signature over the initiator's signed
        octets (§2.15: its IKE_SA_INIT request, Nr, prf(SK_pi, IDi'))."""
        peer.sa_init()
        ike = peer.ike
        assert ike is not None
        octets = peer.init_request + peer.nr + ike.prf(ike.keys.sk_pi, idi.encode())
        der = key.sign(octets, ec.ECDSA(hashes.SHA256()))
        if method == AuthMethod.ECDSA_256:  # RFC 4754 §7: r | s, 32 octets each
            r, s = decode_dss_signature(der)
            data = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        else:
            data = ECDSA_SHA256 + der
        entries = [(PayloadType.IDi, idi)]
        for cert in certs if certs is not None else [self.device.der()]:
            entries.append((PayloadType.CERT, Certificate(CertEncoding.X509_SIGNATURE, cert)))
        entries.append((PayloadType.AUTH, Authentication(method, data)))
        entries += peer.auth_first_entries()[1:]  # CP, SA, TSi, TSr after IDi
        return peer.request(ExchangeType.IKE_AUTH, entries)

    def refused(self, response: Message | None, reason: str) -> None:
        assert response is not None
        self.assertIsNotNone(response.notify(NotifyType.AUTHENTICATION_FAILED))
        self.assertIsNone(response.get(PayloadType.AUTH))
        lines = [line for line in self.log if "AUTHENTICATION_FAILED" in line]
        self.assertEqual(len(lines), 1, lines)
        self.assertIn(reason, lines[0])

    def fqdn(self) -> Identification:
        return Identification(IdType.FQDN, b"dev.example.test")

    def test_accepted_with_rfc7427_ecdsa(self) -> None:
        gateway = self.gateway()
        peer = Initiator(gateway)
        response = self.auth_request(peer, idi=self.fqdn(), key=self.key(self.device))
        assert response is not None
        self.assertIsInstance(response.get(PayloadType.AUTH), Authentication)
        self.assertIsNotNone(response.get(PayloadType.CP))
        (sa,) = gateway.responder.sessions()
        self.assertEqual(sa.identity, "dev.example.test")
        assert sa.certificate is not None
        self.assertEqual(sa.certificate.subject, "CN=dev.example.test")

    def test_rfc4754_ecdsa_method_9(self) -> None:
        gateway = self.gateway()
        response = self.auth_request(
            Initiator(gateway),
            idi=self.fqdn(),
            key=self.key(self.device),
            method=AuthMethod.ECDSA_256,
        )
        assert response is not None
        self.assertIsInstance(response.get(PayloadType.AUTH), Authentication)
        self.assertEqual(len(gateway.responder.sessions()), 1)

    def test_forged_auth(self) -> None:
        """The certificate of dev, the AUTH signed with another key: refused."""
        gateway = self.gateway()
        response = self.auth_request(Initiator(gateway), idi=self.fqdn(), key=self.other_key)
        self.refused(response, "'CN=dev.example.test' serial ")
        self.refused(response, "the AUTH signature does not verify")
        self.assertEqual(gateway.responder.sessions(), [])
        self.assertEqual(gateway.leaks(), [])

    def test_idi_the_certificate_does_not_name(self) -> None:
        gateway = self.gateway()
        idi = Identification(IdType.FQDN, b"other.example.test")
        response = self.auth_request(Initiator(gateway), idi=idi, key=self.key(self.device))
        self.refused(response, "does not name IDi 'other.example.test'")

    def test_the_profile_users_list_holds(self) -> None:
        """A profile's users list (an ASA's group-lock) refuses a certificate it does not
        name, as it refuses an EAP user: the client chooses the profile (IDr)."""
        gateway = self.gateway()
        gateway.context.profiles[0].users = frozenset({"laptop.example.test"})
        peer = Initiator(gateway)
        response = self.auth_request(peer, idi=self.fqdn(), key=self.key(self.device))
        self.refused(response, "not in the users list of profile")
        self.assertEqual(gateway.responder.sessions(), [])
        self.assertEqual(gateway.leaks(), [])

    def test_too_many_certificates(self) -> None:
        gateway = self.gateway()
        certs = [self.device.der()] * 11
        response = self.auth_request(
            Initiator(gateway), idi=self.fqdn(), key=self.key(self.device), certs=certs
        )
        self.refused(response, "11 CERT payloads, more than 10")

    def test_answer_after_the_sa_is_gone(self) -> None:
        """The revocation check outlives the half-open SA (30 s): its late "good" brings
        nothing back, sends nothing, holds nothing."""
        pending = PendingRevocation()
        gateway = self.gateway(pending)
        peer = Initiator(gateway)
        response = self.auth_request(peer, idi=self.fqdn(), key=self.key(self.device))
        self.assertIsNone(response)  # the answer waits for the check
        (asked,) = pending.asked
        gateway.clock.advance(31)
        self.assertEqual(gateway.responder.sas, {})
        asked.callback(RevocationResult(True, "OCSP: good"))
        self.assertEqual(peer.port.take(), [])
        self.assertEqual(gateway.responder.sessions(), [])
        self.assertEqual(gateway.leaks(), [])
        self.assertEqual(gateway.pool.leased, 0)

    def test_certreq_names_the_anchor(self) -> None:
        """§3.7: SHA-1 of the CA's SubjectPublicKeyInfo, as openssl computes it."""
        spki = subprocess.run(
            f"openssl x509 -in {self.ca.cert} -noout -pubkey | openssl pkey -pubin -outform DER",
            shell=True,
            check=True,
            capture_output=True,
        ).stdout
        gateway = self.gateway()
        anchors = [x509.load_pem_x509_certificate(self.ca.cert.read_bytes())]
        gateway.context.certificate_authorities = certificate_request(anchors * 2)
        response = Initiator(gateway).sa_init()
        request = response.get(PayloadType.CERTREQ)
        assert request is not None
        self.assertEqual(request.encoding, CertEncoding.X509_SIGNATURE)
        self.assertEqual(request.data, hashlib.sha1(spki).digest())  # once, not twice


class UserKeyTests(unittest.TestCase):
    """The key INITIAL_CONTACT, max_sessions_per_user, leases and users lists compare."""

    def test_subject_dns_keep_their_escapes(self) -> None:
        """RFC 4514 escapes (``\\,``) are no DOMAIN\\ prefix: two people whose CNs differ
        before an escaped comma stay two users."""
        smith = user_key("CN=Smith\\, John,OU=Users,DC=corp,DC=com")
        doe = user_key("CN=Doe\\, John,OU=Users,DC=corp,DC=com")
        self.assertNotEqual(smith, doe)
        self.assertEqual(smith, "cn=smith\\, john,ou=users,dc=corp,dc=com")
        self.assertNotEqual(user_key("CN=alice\\+admin"), user_key("CN=bob\\+admin"))
        self.assertEqual(user_key("2.5.4.3=x\\,y"), "2.5.4.3=x\\,y")
        self.assertEqual(user_key("CORP\\Alice"), "alice")
        self.assertEqual(user_key("alice@corp.example"), "alice@corp.example")
