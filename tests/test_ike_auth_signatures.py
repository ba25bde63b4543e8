"""The client's AUTH, in process (tests/ike_peer.py on a fake clock), from the outsider
review of issue 12:

- RFC 7296 §2.15 signs the IDi payload's body as received (RestOfInitIDPayload: ID Type,
  the three RESERVED octets, the data): an IDi whose RESERVED octets are not zero, with a
  certificate AUTH and with EAP's shared-key AUTH; our IDr, when it repeats the one asked
  for, has RESERVED zero (§3.5).
- ``sha1_signatures = false`` refuses AUTH method 1 (RSA PKCS#1 v1.5 with SHA-1), which is
  accepted by default (Windows); SHA-1 inside RFC 7427 method 14 is never accepted, and
  SIGNATURE_HASH_ALGORITHMS announces only what method 14 accepts.
- RSASSA-PSS inside method 14 (RFC 7427 §3, RFC 4055 §3.1): accepted with SHA-2, MGF1 of
  the same hash and a salt as long as it; odd parameters refused.

The client's signatures are made here with cryptography over the octets as the test
computes them (the IDi body as the test sent it); the AlgorithmIdentifiers are written
out here from RFC 4055 §2.1, §3.1 and RFC 7427 Appendix A (and the PSS one checked against
openssl's)."""

from __future__ import annotations

import struct
import subprocess
import time
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from twisted.trial import unittest

from tests.certs_openssl import USER, OpensslCa
from tests.ike_peer import Gateway, Initiator, server_identity
from tests.support import log_lines, state_dir
from tests.test_config import ConfigTestCase
from vpnaaa.certs import ClientVerifier, RevocationChecker
from vpnaaa.ike import signatures
from vpnaaa.ike.common import CertificateAuth
from vpnaaa.ike.const import (
    AuthMethod,
    CertEncoding,
    ExchangeType,
    IdType,
    NotifyType,
    PayloadType,
)
from vpnaaa.ike.message import Authentication, Certificate, Identification, Message

DEVICE = USER + "subjectAltName = DNS:dev.example.test\n"
RESERVED = b"\x5a\xa5\x01"  # not zero: §3.5 says send zero, §2.15 says sign what came


@dataclass(frozen=True)
class RawId:
    """An ID payload body exactly as written here (RESERVED included)."""

    body: bytes

    def encode(self) -> bytes:
        return self.body


def der(tag: int, *contents: bytes) -> bytes:
    """One DER TLV (short-form length: everything here is under 128 octets)."""
    body = b"".join(contents)
    assert len(body) < 128
    return bytes([tag, len(body)]) + body


def oid(hex_contents: str) -> bytes:
    return der(0x06, bytes.fromhex(hex_contents))


NULL = b"\x05\x00"
# RFC 4055 §2.1, §3.1; RFC 8017 Appendix A.2.3
SHA1, SHA256 = oid("2b0e03021a"), oid("608648016503040201")
SHA384, SHA512 = oid("608648016503040202"), oid("608648016503040203")
MGF1, RSASSA_PSS = oid("2a864886f70d010108"), oid("2a864886f70d01010a")
# RFC 7427 Appendix A.1.1-A.1.4: sha*WithRSAEncryption with NULL parameters
SHA1_RSA = der(0x30, oid("2a864886f70d010105"), NULL)
PKCS1 = {
    "sha256": der(0x30, oid("2a864886f70d01010b"), NULL),
    "sha384": der(0x30, oid("2a864886f70d01010c"), NULL),
    "sha512": der(0x30, oid("2a864886f70d01010d"), NULL),
}


def pss(hash_oid: bytes, mgf_hash: bytes, salt: int | None, *extra: bytes) -> bytes:
    """id-RSASSA-PSS with RSASSA-PSS-params [0] hash, [1] MGF1(mgf_hash), [2] salt."""
    fields = [der(0xA0, der(0x30, hash_oid, NULL)), der(0xA1, der(0x30, MGF1, mgf_hash))]
    if salt is not None:
        fields.append(der(0xA2, der(0x02, bytes([salt]))))
    return der(0x30, RSASSA_PSS, der(0x30, *fields, *extra))


PSS_SHA256 = pss(SHA256, der(0x30, SHA256, NULL), 32)


class ClientAuthCase(unittest.TestCase):
    def setUp(self) -> None:
        directory = state_dir(self)
        self.ca = OpensslCa(directory / "ca", "Device CA")
        self.device = self.ca.issue("dev", DEVICE, subject="/CN=dev.example.test", key="rsa")
        self.log = log_lines(self)
        self.verifier = ClientVerifier.from_files([self.ca.cert])

    def gateway(self, **auth: bool) -> Gateway:
        gateway = Gateway(auth="certificate")
        checker = RevocationChecker(gateway.clock)
        gateway.context.profiles[0].certificates = CertificateAuth(self.verifier, checker, **auth)
        gateway.clock.advance(time.time())  # the certificates are valid now
        return gateway

    def key(self) -> rsa.RSAPrivateKey:
        key = serialization.load_pem_private_key(self.device.key.read_bytes(), None)
        assert isinstance(key, rsa.RSAPrivateKey)
        return key

    def octets(self, peer: Initiator, idi_body: bytes) -> bytes:
        """§2.15 InitiatorSignedOctets: RealMessage1 | NonceRData | prf(SK_pi, IDi body)."""
        ike = peer.ike
        assert ike is not None
        return peer.init_request + peer.nr + ike.prf(ike.keys.sk_pi, idi_body)

    def auth_request(
        self,
        peer: Initiator,
        method: int,
        sign: object,
        idi_body: bytes = bytes([IdType.FQDN]) + bytes(3) + b"dev.example.test",
    ) -> Message | None:
        """IKE_AUTH #1 with CERT and AUTH (``method``, ``sign(octets)`` its data)."""
        peer.sa_init()
        data = sign(self.octets(peer, idi_body))  # type: ignore[operator]
        entries = [
            (PayloadType.IDi, RawId(idi_body)),
            (PayloadType.CERT, Certificate(CertEncoding.X509_SIGNATURE, self.device.der())),
            (PayloadType.AUTH, Authentication(method, data)),
        ]
        entries += peer.auth_first_entries()[1:]  # CP, SA, TSi, TSr after IDi
        return peer.request(ExchangeType.IKE_AUTH, entries)  # type: ignore[arg-type]

    def rsa_14(self, algorithm: bytes, pad: padding.AsymmetricPadding, digest: object):
        def sign(octets: bytes) -> bytes:
            signature = self.key().sign(octets, pad, digest)  # type: ignore[arg-type]
            return bytes([len(algorithm)]) + algorithm + signature

        return sign

    def sha1_method_1(self, octets: bytes) -> bytes:
        return self.key().sign(octets, padding.PKCS1v15(), hashes.SHA1())

    def accepted(self, gateway: Gateway, response: Message | None) -> None:
        assert response is not None
        self.assertIsNone(response.notify(NotifyType.AUTHENTICATION_FAILED), self.log)
        self.assertIsInstance(response.get(PayloadType.AUTH), Authentication)
        (sa,) = gateway.responder.sessions()
        self.assertEqual(sa.identity, "dev.example.test")

    def refused(self, gateway: Gateway, response: Message | None, reason: str) -> None:
        assert response is not None
        self.assertIsNotNone(response.notify(NotifyType.AUTHENTICATION_FAILED))
        self.assertIsNone(response.get(PayloadType.AUTH))
        lines = [line for line in self.log if "AUTHENTICATION_FAILED" in line]
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("'CN=dev.example.test' serial ", lines[0])
        self.assertIn(reason, lines[0])
        self.assertEqual(gateway.responder.sessions(), [])


class ReceivedIdTests(ClientAuthCase):
    """§2.15: MACedIDForI = prf(SK_pi, RestOfInitIDPayload), the body as received."""

    def test_certificate_auth_signs_the_received_reserved_octets(self) -> None:
        gateway = self.gateway()
        body = bytes([IdType.FQDN]) + RESERVED + b"dev.example.test"
        pkcs1 = self.rsa_14(PKCS1["sha256"], padding.PKCS1v15(), hashes.SHA256())
        response = self.auth_request(Initiator(gateway), AuthMethod.DIGITAL_SIGNATURE, pkcs1, body)
        self.accepted(gateway, response)

    def test_eap_auth_macs_the_received_reserved_octets(self) -> None:
        """EAP-MSCHAPv2, then AUTH = prf(prf(MSK, pad), octets with the IDi as sent)."""
        gateway = Gateway()
        peer = Initiator(gateway)
        peer.idi = RawId(bytes([IdType.RFC822_ADDR]) + RESERVED + b"alice@example.test")  # type: ignore[assignment]
        response = peer.connect()
        self.assertIsNone(response.notify(NotifyType.AUTHENTICATION_FAILED), self.log)
        self.assertIsInstance(response.get(PayloadType.AUTH), Authentication)
        self.assertEqual(len(gateway.responder.sessions()), 1)

    def test_our_idr_has_reserved_zero(self) -> None:
        """The IDr asked for (our certificate's subject, RESERVED not zero) comes back
        as ours with RESERVED zero (§3.5), and our AUTH signs that (the peer checks)."""
        gateway = Gateway()
        peer = Initiator(gateway)
        subject = server_identity().cert.subject.public_bytes()
        asked = RawId(bytes([IdType.DER_ASN1_DN]) + RESERVED + subject)
        peer.sa_init()
        response = peer.auth_first(idr=asked)  # type: ignore[arg-type]
        idr = response.get(PayloadType.IDr)
        assert isinstance(idr, Identification)
        self.assertEqual((idr.id_type, idr.data), (IdType.DER_ASN1_DN, subject))
        self.assertEqual(idr.encode()[1:4], bytes(3))


class Sha1Tests(ClientAuthCase):
    def test_method_1_accepted_by_default(self) -> None:
        gateway = self.gateway()
        response = self.auth_request(Initiator(gateway), AuthMethod.RSA_SIG, self.sha1_method_1)
        self.accepted(gateway, response)

    def test_method_1_refused_without_sha1(self) -> None:
        gateway = self.gateway(sha1_signatures=False)
        response = self.auth_request(Initiator(gateway), AuthMethod.RSA_SIG, self.sha1_method_1)
        self.refused(gateway, response, "refused by sha1_signatures = false")

    def test_sha2_still_accepted_without_sha1(self) -> None:
        gateway = self.gateway(sha1_signatures=False)
        sign = self.rsa_14(PKCS1["sha256"], padding.PKCS1v15(), hashes.SHA256())
        response = self.auth_request(Initiator(gateway), AuthMethod.DIGITAL_SIGNATURE, sign)
        self.accepted(gateway, response)

    def test_sha1_in_method_14_refused(self) -> None:
        """We never announce SHA-1 (RFC 7427 §4), so no profile takes it in method 14."""
        gateway = self.gateway()
        sign = self.rsa_14(SHA1_RSA, padding.PKCS1v15(), hashes.SHA1())
        response = self.auth_request(Initiator(gateway), AuthMethod.DIGITAL_SIGNATURE, sign)
        self.refused(gateway, response, "SHA-1 in a Digital Signature AUTH")

    def test_announced_hashes_are_the_accepted_ones(self) -> None:
        """SIGNATURE_HASH_ALGORITHMS: SHA2-256, -384, -512 (RFC 7427 §4 values 2, 3, 4),
        and each is accepted in a method 14 AUTH; SHA-1 (1) is not announced."""
        response = Initiator(self.gateway()).sa_init()
        announced = response.notify(NotifyType.SIGNATURE_HASH_ALGORITHMS)
        assert announced is not None
        self.assertEqual(announced.data, struct.pack("!HHH", 2, 3, 4))
        for name, digest in (
            ("sha256", hashes.SHA256()),
            ("sha384", hashes.SHA384()),
            ("sha512", hashes.SHA512()),
        ):
            gateway = self.gateway(sha1_signatures=False)
            sign = self.rsa_14(PKCS1[name], padding.PKCS1v15(), digest)
            response = self.auth_request(Initiator(gateway), AuthMethod.DIGITAL_SIGNATURE, sign)
            self.accepted(gateway, response)


class PssTests(ClientAuthCase):
    def pss_sign(self, algorithm: bytes, digest: hashes.HashAlgorithm, salt: int):
        pad = padding.PSS(padding.MGF1(digest), salt)
        return self.rsa_14(algorithm, pad, digest)

    def test_accepted(self) -> None:
        for hash_oid, digest in (
            (SHA256, hashes.SHA256()),
            (SHA384, hashes.SHA384()),
            (SHA512, hashes.SHA512()),
        ):
            gateway = self.gateway(sha1_signatures=False)
            algorithm = pss(hash_oid, der(0x30, hash_oid, NULL), digest.digest_size)
            sign = self.pss_sign(algorithm, digest, digest.digest_size)
            response = self.auth_request(Initiator(gateway), AuthMethod.DIGITAL_SIGNATURE, sign)
            self.accepted(gateway, response)
            (sa,) = gateway.responder.sessions()
            self.assertEqual(sa.auth.scheme, f"RSASSA-PSS with {digest.name.upper()}")

    def test_hash_parameters_absent(self) -> None:
        """RFC 4055 §2.1: NULL and absent hash parameters are both accepted."""
        gateway = self.gateway()
        algorithm = pss(SHA256, der(0x30, SHA256), 32)
        sign = self.pss_sign(algorithm, hashes.SHA256(), 32)
        response = self.auth_request(Initiator(gateway), AuthMethod.DIGITAL_SIGNATURE, sign)
        self.accepted(gateway, response)

    def test_openssl_writes_the_same_algorithm_identifier(self) -> None:
        """openssl's RSASSA-PSS SHA-256 signatureAlgorithm (salt 32) is PSS_SHA256."""
        directory = state_dir(self)
        key, cert = directory / "k.pem", directory / "c.der"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
             "-subj", "/CN=pss", "-sha256", "-sigopt", "rsa_padding_mode:pss",
             "-sigopt", "rsa_pss_saltlen:32", "-outform", "DER", "-out", str(cert)],
            check=True,
            capture_output=True,
        )  # fmt: skip
        data = cert.read_bytes()
        self.assertIn(PSS_SHA256 + b"\x03", data)  # AlgorithmIdentifier, then the BIT STRING
        self.assertEqual(
            x509.load_der_x509_certificate(data).signature_algorithm_oid,
            x509.SignatureAlgorithmOID.RSASSA_PSS,
        )

    def test_odd_parameters_refused(self) -> None:
        sha256 = der(0x30, SHA256, NULL)
        cases = {
            "default hash": der(0x30, RSASSA_PSS, der(0x30)),
            "salt 20": pss(SHA256, sha256, 20),
            "no salt (default 20)": pss(SHA256, sha256, None),
            "MGF1 of SHA-1": pss(SHA256, der(0x30, SHA1, NULL), 32),
            "MGF1 of SHA-384": pss(SHA256, der(0x30, SHA384, NULL), 32),
            "hash SHA-1": pss(SHA1, der(0x30, SHA1, NULL), 20),
            "trailerField 2": pss(SHA256, sha256, 32, der(0xA3, der(0x02, b"\x02"))),
            "unknown field": pss(SHA256, sha256, 32, der(0xA4, der(0x02, b"\x01"))),
            "fields out of order": der(
                0x30,
                RSASSA_PSS,
                der(
                    0x30,
                    der(0xA1, der(0x30, MGF1, sha256)),
                    der(0xA0, sha256),
                    der(0xA2, der(0x02, b"\x20")),
                ),
            ),
            "no parameters": der(0x30, RSASSA_PSS),
            "NULL parameters": der(0x30, RSASSA_PSS, NULL),
            "octets after the parameters": PSS_SHA256[:1]
            + bytes([PSS_SHA256[1] + 2])
            + PSS_SHA256[2:]
            + NULL,
        }
        # the salt as a two-octet INTEGER 0x0020: not DER (X.690 §8.3.2)
        long_salt = der(0xA2, der(0x02, b"\x00\x20"))
        fields = [der(0xA0, sha256), der(0xA1, der(0x30, MGF1, sha256)), long_salt]
        cases["salt not in its shortest form"] = der(0x30, RSASSA_PSS, der(0x30, *fields))
        # a long-form length where the short form fits (X.690 §10.1)
        cases["long-form length"] = b"\x30\x81" + PSS_SHA256[1:]
        key = self.key()
        octets = b"signed octets"
        signature = key.sign(
            octets, padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256()
        )
        for what, algorithm in cases.items():
            data = bytes([len(algorithm)]) + algorithm + signature
            with self.assertRaises(signatures.SignatureRejected, msg=what):
                signatures.verify(key.public_key(), AuthMethod.DIGITAL_SIGNATURE, data, octets)
        # and the same signature under the right identifier verifies
        good = bytes([len(PSS_SHA256)]) + PSS_SHA256 + signature
        name = signatures.verify(key.public_key(), AuthMethod.DIGITAL_SIGNATURE, good, octets)
        self.assertEqual(name, "RSASSA-PSS with SHA256")

    def test_pss_with_an_ecdsa_certificate_refused(self) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        data = bytes([len(PSS_SHA256)]) + PSS_SHA256 + b"\x00" * 256
        with self.assertRaises(signatures.SignatureRejected) as raised:
            signatures.verify(key.public_key(), AuthMethod.DIGITAL_SIGNATURE, data, b"x")
        self.assertIn("not RSA", str(raised.exception))

    def test_gateway_refusal_names_the_reason(self) -> None:
        gateway = self.gateway()
        sign = self.pss_sign(pss(SHA256, der(0x30, SHA256, NULL), 20), hashes.SHA256(), 20)
        response = self.auth_request(Initiator(gateway), AuthMethod.DIGITAL_SIGNATURE, sign)
        self.refused(gateway, response, "a 20-octet salt, not 32")


class Sha1SignaturesConfig(ConfigTestCase):
    """``sha1_signatures`` in [ike] and [[ike.profiles]], only with auth = "certificate"."""

    CERT = 'auth = "certificate"\nclient_ca = ["ca.pem"]\n'

    def test_default_and_set(self) -> None:
        ike = self.load(
            "[ike]\n" + self.CERT + "sha1_signatures = false\n"
            '[[ike.profiles]]\nname = "p"\n' + self.CERT
        ).ike
        default, other = ike.profiles
        self.assertFalse(default.sha1_signatures)
        self.assertTrue(other.sha1_signatures)

    def test_only_with_certificate_auth(self) -> None:
        self.assertConfigError(
            "[ike]\nsha1_signatures = false\n", "ike.sha1_signatures", 'auth = "certificate"'
        )

    def test_boolean(self) -> None:
        self.assertConfigError(
            "[ike]\n" + self.CERT + 'sha1_signatures = "no"\n', "ike.sha1_signatures", "bool"
        )
