"""vpnaaa.certs: chain validation and identities, on certificates `openssl ca` made, with
`openssl verify -purpose sslclient -crl_check` as the second opinion."""

from __future__ import annotations

import atexit
import datetime
import functools
import ipaddress
import shutil
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import NameOID
from twisted.internet import task
from twisted.trial import unittest

from tests.certs_openssl import INTERMEDIATE, USER, Issued, OpensslCa, openssl_verify, run
from tests.support import state_dir
from vpnaaa.certs import (
    CertificateRejected,
    ClientVerifier,
    CrlFile,
    RevocationChecker,
    matches_id,
    parse_serial,
    serial_hex,
)
from vpnaaa.certs.identity import identities, same_dn
from vpnaaa.ike.const import IdType

UPN_SAN = "subjectAltName = otherName:1.3.6.1.4.1.311.20.2.3;UTF8:alice@corp.example,"
UPN_SAN += "email:Alice@Example.COM,IP:192.0.2.7,IP:2001:db8::7\n"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class Pki:
    """A root, an intermediate under it, and a verifier that trusts the root."""

    def __init__(self, case: unittest.TestCase, key: str = "ec") -> None:
        self.dir = state_dir(case)
        self.root = OpensslCa(self.dir / "root", "Test Root", key=key)
        self.inter = OpensslCa(self.dir / "inter", "Test Issuing CA", parent=self.root, key=key)
        self.inter_der = Issued(self.inter.cert, self.inter.key).der()
        self.verifier = ClientVerifier.from_files([self.root.cert])

    def verify(self, issued: Issued):
        return self.verifier.verify(issued.der(), [self.inter_der], _now())


class Agreement(unittest.TestCase):
    """Good, expired, wrong-EKU, untrusted and revoked client certificates: vpnaaa's
    verdict (validation, then the CRL file) is `openssl verify`'s."""

    def setUp(self) -> None:
        self.pki = Pki(self)
        inter = self.pki.inter
        self.cases = {
            "good": inter.issue("good", USER + UPN_SAN),
            "expired": inter.issue("expired", dates=("20200101000000Z", "20200201000000Z")),
            "wrong-eku": inter.issue("wrong-eku", USER.replace("clientAuth", "serverAuth")),
            "revoked": inter.issue("revoked"),
            "no-signature-ku": inter.issue(
                "no-signature-ku", USER.replace("digitalSignature", "keyEncipherment")
            ),
            "rsa": inter.issue("rsa", key="rsa"),
        }
        other = OpensslCa(self.pki.dir / "other", "Test Issuing CA")  # same name, other key
        self.cases["untrusted"] = other.issue("untrusted")
        inter.revoke(self.cases["revoked"])
        self.crl = inter.crl(self.pki.dir / "issuing.crl")
        self.anchors = self.pki.root.cert

    def ours(self, issued: Issued) -> bool:
        try:
            verified = self.pki.verify(issued)
        except CertificateRejected:
            return False
        clock = task.Clock()
        clock.advance(_now().timestamp())
        checker = RevocationChecker(clock, crl_files=[CrlFile(self.crl)], hard_fail=True)
        result = self.successResultOf(checker.check(verified))
        return result.accepted

    def test_agreement(self) -> None:
        expected = {
            "good": True,
            "rsa": True,
            "expired": False,
            "wrong-eku": False,
            "revoked": False,
            "untrusted": False,
            "no-signature-ku": False,
        }
        for name, issued in self.cases.items():
            theirs, said = openssl_verify(
                issued.cert, self.anchors, untrusted=self.pki.inter.cert, crl=self.crl
            )
            self.assertEqual(theirs, expected[name], f"openssl on {name}: {said}")
            self.assertEqual(self.ours(issued), theirs, f"{name}: openssl said {said}")

    def test_reasons(self) -> None:
        """Each refusal says why, in words an operator can act on."""
        for name, words in (
            ("expired", "'cn=expired' expired at 2020-02-01 00:00:00z"),
            ("wrong-eku", "extendedKeyUsage"),
            ("untrusted", "no chain to a trusted issuer"),
            ("no-signature-ku", "digitalSignature"),
        ):
            with self.assertRaises(CertificateRejected) as caught:
                self.pki.verify(self.cases[name])
            self.assertIn(words.lower(), caught.exception.reason.lower(), name)

    def test_malformed_certificate(self) -> None:
        """A certificate whose subject does not parse (a byte-mutated one an outsider's
        fuzzer made; cryptography parses the field only on use): refused, no ValueError
        past the verifier."""
        data = (Path(__file__).parent / "data" / "malformed-subject.der").read_bytes()
        with self.assertRaises(CertificateRejected) as caught:
            self.pki.verifier.verify(data, [], _now())
        self.assertIn("malformed certificate", caught.exception.reason)

    def test_missing_intermediate(self) -> None:
        """A chain is built from what the peer sent: without the intermediate, no path."""
        with self.assertRaises(CertificateRejected):
            self.pki.verifier.verify(self.cases["good"].der(), [], _now())

    def test_result(self) -> None:
        """What the chain proves, in the forms sessions and logs show."""
        verified = self.pki.verify(self.cases["good"])
        printed = run("x509", "-in", self.cases["good"].cert, "-noout", "-serial").stdout
        self.assertEqual("serial=" + verified.serial, printed.decode().strip())
        self.assertEqual(verified.subject, "CN=good")
        self.assertEqual(verified.issuer, "CN=Test Issuing CA")
        self.assertEqual(verified.key_type, "ECDSA-P256")
        self.assertEqual(self.pki.verify(self.cases["rsa"]).key_type, "RSA-2048")
        self.assertEqual(verified.identity.kind, "upn")
        self.assertEqual(verified.identity.value, "alice@corp.example")
        self.assertEqual(
            [(i.kind, i.value) for i in verified.identities],
            [
                ("upn", "alice@corp.example"),
                ("email", "Alice@Example.COM"),
                ("ip", "192.0.2.7"),
                ("ip", "2001:db8::7"),
                ("dn", "CN=good"),
            ],
        )
        self.assertEqual(len(verified.chain), 3)
        self.assertGreater(verified.not_after, _now())


class KeyUsageRules(unittest.TestCase):
    """The EKU and KU rules of vpnaaa.certs.verify, beyond what sslclient decides."""

    def setUp(self) -> None:
        self.pki = Pki(self)

    def accepted(self, extensions: str) -> bool:
        name = f"c{len(list(self.pki.dir.iterdir()))}"
        try:
            self.pki.verify(self.pki.inter.issue(name, extensions))
        except CertificateRejected:
            return False
        return True

    def test_ekus(self) -> None:
        for eku, expected in (
            ("clientAuth", True),
            ("1.3.6.1.5.5.8.2.2", True),  # IKE intermediate (Windows, macOS)
            ("1.3.6.1.5.5.7.3.17", True),  # id-kp-ipsecIKE, RFC 4945 §5.1.3.12
            ("anyExtendedKeyUsage", True),
            ("serverAuth,clientAuth", True),
            ("serverAuth", False),
            ("emailProtection,codeSigning", False),
        ):
            self.assertEqual(self.accepted(USER.replace("clientAuth", eku)), expected, eku)

    def test_no_eku_no_ku(self) -> None:
        """RFC 4945 §5.1.3.12: no EKU, continue; no KU: nothing restricted; and openssl's
        sslclient purpose agrees."""
        bare = "basicConstraints = CA:FALSE\nauthorityKeyIdentifier = keyid\n"
        self.assertTrue(self.accepted(bare))
        issued = self.pki.inter.issue("bare", bare)
        ok, said = openssl_verify(issued.cert, self.pki.root.cert, untrusted=self.pki.inter.cert)
        self.assertTrue(ok, said)

    def test_key_usage(self) -> None:
        self.assertTrue(
            self.accepted(USER.replace("digitalSignature", "digitalSignature,keyEncipherment"))
        )
        self.assertFalse(self.accepted(USER.replace("digitalSignature", "nonRepudiation")))

    def test_ca_as_client(self) -> None:
        """A CA certificate is no client certificate."""
        self.assertFalse(self.accepted(USER.replace("CA:FALSE", "critical,CA:TRUE")))

    def test_intermediate_eku(self) -> None:
        """An EKU on an intermediate constrains what it issues: serverAuth-only refuses."""
        inter = OpensslCa(
            self.pki.dir / "server-only",
            "Server Only",
            parent=self.pki.root,
            extensions=INTERMEDIATE + "extendedKeyUsage = serverAuth\n",
        )
        leaf = inter.issue("leaf")
        with self.assertRaises(CertificateRejected):
            self.pki.verifier.verify(leaf.der(), [Issued(inter.cert, inter.key).der()], _now())


@functools.cache
def _named() -> tuple[x509.Certificate, ...]:
    """Certificates with names to match (no validation here): one CA for the module."""
    directory = Path(tempfile.mkdtemp(prefix="vpnaaa-test-"))
    atexit.register(shutil.rmtree, directory, True)
    ca = OpensslCa(directory / "ca", "Test CA")
    return (
        ca.issue("user", USER + UPN_SAN, subject="/O=Corp Example/CN=Alice  Smith").load(),
        ca.issue("device", USER, subject="/CN=PC1.corp.example").load(),
        ca.issue(
            "both",
            USER + "subjectAltName = DNS:other.corp.example\n",
            subject="/CN=pc2.corp.example",
        ).load(),
        ca.issue("short", USER, subject="/CN=PC3").load(),
    )


class Identities(unittest.TestCase):
    """Matching IDi (RFC 7296 §3.5, RFC 4945 §3.1) against certificate names."""

    def setUp(self) -> None:
        self.user, self.device, self.both, self.short = _named()

    def test_fqdn(self) -> None:
        """A device certificate (FQDN in the CN, no SAN) matches ID_FQDN, in any case and
        with a trailing dot; a CN does not when the SAN has dNSNames; a bare host name
        in the CN is no FQDN."""
        self.assertTrue(matches_id(self.device, IdType.FQDN, b"pc1.corp.example"))
        self.assertTrue(matches_id(self.device, IdType.FQDN, b"PC1.Corp.Example."))
        self.assertFalse(matches_id(self.device, IdType.FQDN, b"pc9.corp.example"))
        self.assertTrue(matches_id(self.both, IdType.FQDN, b"other.corp.example"))
        self.assertFalse(matches_id(self.both, IdType.FQDN, b"pc2.corp.example"))
        self.assertFalse(matches_id(self.short, IdType.FQDN, b"PC3"))
        self.assertFalse(matches_id(self.user, IdType.FQDN, b"alice@corp.example"))

    def test_rfc822(self) -> None:
        """rfc822Name and the UPN; the domain in any case, the local part exact."""
        self.assertTrue(matches_id(self.user, IdType.RFC822_ADDR, b"Alice@example.com"))
        self.assertTrue(matches_id(self.user, IdType.RFC822_ADDR, b"alice@CORP.example"))
        self.assertFalse(matches_id(self.user, IdType.RFC822_ADDR, b"alice@example.com"))
        self.assertFalse(matches_id(self.device, IdType.RFC822_ADDR, b"pc1@corp.example"))

    def test_addresses(self) -> None:
        v4 = ipaddress.ip_address("192.0.2.7").packed
        v6 = ipaddress.ip_address("2001:db8::7").packed
        self.assertTrue(matches_id(self.user, IdType.IPV4_ADDR, v4))
        self.assertTrue(matches_id(self.user, IdType.IPV6_ADDR, v6))
        self.assertFalse(
            matches_id(self.user, IdType.IPV4_ADDR, ipaddress.ip_address("192.0.2.8").packed)
        )
        self.assertFalse(matches_id(self.user, IdType.IPV6_ADDR, v4))
        self.assertFalse(matches_id(self.device, IdType.IPV4_ADDR, v4))

    def test_dn(self) -> None:
        """ID_DER_ASN1_DN: the subject, compared as RFC 5280 §7.1 says: case and inner
        white space do not matter, string types do not matter, the RDN order does."""
        exact = self.user.subject.public_bytes()
        self.assertTrue(matches_id(self.user, IdType.DER_ASN1_DN, exact))
        folded = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "CORP EXAMPLE"),
                x509.NameAttribute(NameOID.COMMON_NAME, "alice smith", _ASN1Type.PrintableString),
            ]
        ).public_bytes()
        self.assertNotEqual(folded, exact)
        self.assertTrue(matches_id(self.user, IdType.DER_ASN1_DN, folded))
        reversed_order = x509.Name(list(reversed(list(self.user.subject)))).public_bytes()
        self.assertFalse(matches_id(self.user, IdType.DER_ASN1_DN, reversed_order))
        other = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Alice Smith")]).public_bytes()
        self.assertFalse(matches_id(self.user, IdType.DER_ASN1_DN, other))
        self.assertFalse(same_dn(b"\x30\x05garbage", exact))

    def test_names_that_would_read_as_others(self) -> None:
        """A dNSName with "@" (an e-mail address) or a backslash (a DOMAIN\\ prefix in
        the session's user), an e-mail or UPN with a backslash: names a CA may build from
        what a device reports, which would make one user out of another (``user_key``
        strips DOMAIN\\). They name nothing, for IDi and for the session alike."""
        ca = OpensslCa(state_dir(self) / "ca", "Test CA")
        san = (
            "subjectAltName = DNS:alice@example.test, DNS:evil.example\\\\alice, "
            "email:x\\\\alice@example.test, DNS:pc4.corp.example\n"
        )
        cert = ca.issue("odd", USER + san, subject="/CN=odd").load()
        dns = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertIn("evil.example\\alice", dns.get_values_for_type(x509.DNSName))
        self.assertEqual(
            [(i.kind, i.value) for i in identities(cert)],
            [("dns", "pc4.corp.example"), ("dn", "CN=odd")],
        )
        self.assertFalse(matches_id(cert, IdType.FQDN, b"alice@example.test"))
        self.assertFalse(matches_id(cert, IdType.FQDN, b"evil.example\\alice"))
        self.assertFalse(matches_id(cert, IdType.RFC822_ADDR, b"x\\alice@example.test"))
        self.assertTrue(matches_id(cert, IdType.FQDN, b"pc4.corp.example"))

    def test_unknown_types(self) -> None:
        self.assertFalse(matches_id(self.user, IdType.KEY_ID, b"x"))
        self.assertFalse(matches_id(self.user, IdType.FQDN, "é.example".encode()))


class Serials(unittest.TestCase):
    def test_serial_forms(self) -> None:
        self.assertEqual(parse_serial("0x1A2b"), 0x1A2B)
        self.assertEqual(parse_serial("1a:2b:3c"), 0x1A2B3C)
        self.assertEqual(parse_serial(" 01 02 "), 0x0102)
        self.assertEqual(serial_hex(0x1A2B3), "01A2B3")
        self.assertEqual(serial_hex(0xABCD), "ABCD")
        for bad in ("", "xyz", "0x", "1" * 41):
            self.assertRaises(ValueError, parse_serial, bad)
