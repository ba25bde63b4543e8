"""Server certificates: the demo CA, the Windows IKEv2/PEAP profile, CSRs, imports, loading."""

import datetime
import ipaddress
import os
import shutil
import stat
import subprocess

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.trial import unittest

from tests.support import state_dir
from vpnaaa import pki

DNS_NAME = "vpn.example.test"
IP = "192.0.2.1"
IP6 = "2001:db8::1"
OPENSSL = shutil.which("openssl")


def cert_of(path):
    return x509.load_pem_x509_certificate(path.read_bytes())


def ext(cert, kind):
    return cert.extensions.get_extension_for_class(kind)


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def sign_csr(csr_path, ca_dir, eku=(ExtendedKeyUsageOID.SERVER_AUTH,), days=30, ago=0):
    """What a third-party CA may return: its own choice of EKU and validity."""
    csr = x509.load_pem_x509_csr(csr_path.read_bytes())
    ca = pki.load_server_identity(ca_dir / "ca.key", ca_dir / "ca.pem")
    start = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=ago)
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(csr.subject)
        .issuer_name(ca.cert.subject)
        .public_key(csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(san, False)
        .add_extension(x509.ExtendedKeyUsage(list(eku)), False)
        .sign(ca.key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


class CaTests(unittest.TestCase):
    def setUp(self):
        self.dir = state_dir(self) / "ca"

    def test_ca_profile(self):
        files = pki.init_ca(self.dir)
        self.assertEqual(mode(files.key), 0o600)
        self.assertTrue(files.key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----"))
        cert = cert_of(files.cert)
        self.assertEqual(
            cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value, "vpnaaa demo CA"
        )
        constraints = ext(cert, x509.BasicConstraints)
        self.assertTrue(constraints.critical)
        self.assertTrue(constraints.value.ca)
        usage = ext(cert, x509.KeyUsage)
        self.assertTrue(usage.critical)
        self.assertTrue(usage.value.key_cert_sign and usage.value.crl_sign)
        self.assertFalse(usage.value.digital_signature)
        ext(cert, x509.SubjectKeyIdentifier)
        cert.verify_directly_issued_by(cert)
        key = pki.load_server_identity(files.key, files.cert).key
        self.assertEqual(key.key_size, 3072)

    def test_refuses_to_overwrite(self):
        files = pki.init_ca(self.dir, key_type="ecdsa-p256")
        before = files.key.read_bytes()
        with self.assertRaises(pki.PkiError) as caught:
            pki.init_ca(self.dir, key_type="ecdsa-p256")
        self.assertIn(str(files.key), str(caught.exception))
        self.assertIn("refusing to overwrite", str(caught.exception))
        self.assertEqual(files.key.read_bytes(), before)

    def test_unknown_key_type(self):
        with self.assertRaises(pki.PkiError) as caught:
            pki.init_ca(self.dir, key_type="rsa1024")
        self.assertIn("rsa1024", str(caught.exception))
        self.assertFalse(self.dir.exists())


class IssueTests(unittest.TestCase):
    def setUp(self):
        self.root = state_dir(self)
        self.ca = pki.init_ca(self.root / "ca", key_type="ecdsa-p256")
        self.ca_dir = self.root / "ca"
        self.out = self.root / "server"

    def issue(self, name, *extra, **kwargs):
        kwargs.setdefault("key_type", "rsa2048")
        return pki.issue_server(self.ca_dir, self.out, name, extra, **kwargs)

    def test_dns_name_profile(self):
        files = self.issue(DNS_NAME, IP)
        cert = cert_of(files.cert)
        self.assertEqual(cert.subject.rfc4514_string(), f"CN={DNS_NAME}")
        san = ext(cert, x509.SubjectAlternativeName).value
        self.assertEqual(san.get_values_for_type(x509.DNSName), [DNS_NAME, IP])
        self.assertEqual(san.get_values_for_type(x509.IPAddress), [ipaddress.ip_address(IP)])
        eku = ext(cert, x509.ExtendedKeyUsage).value
        self.assertEqual(
            [oid.dotted_string for oid in eku], ["1.3.6.1.5.5.7.3.1", "1.3.6.1.5.5.8.2.2"]
        )
        usage = ext(cert, x509.KeyUsage)
        self.assertTrue(usage.critical)
        self.assertTrue(usage.value.digital_signature and usage.value.key_encipherment)
        self.assertFalse(usage.value.key_cert_sign)
        self.assertFalse(ext(cert, x509.BasicConstraints).value.ca)
        ca_cert = cert_of(self.ca.cert)
        self.assertEqual(
            ext(cert, x509.AuthorityKeyIdentifier).value.key_identifier,
            ext(ca_cert, x509.SubjectKeyIdentifier).value.digest,
        )
        ext(cert, x509.SubjectKeyIdentifier)
        cert.verify_directly_issued_by(ca_cert)
        self.assertEqual(mode(files.key), 0o600)
        self.assertEqual(files.chain.read_bytes(), self.ca.cert.read_bytes())
        self.assertEqual(pki.check_server_certificate(cert), [])

    def test_ip_address_is_both_dns_name_and_ip_address(self):
        files = self.issue(IP, IP6, IP)
        cert = cert_of(files.cert)
        self.assertEqual(cert.subject.rfc4514_string(), f"CN={IP}")
        san = ext(cert, x509.SubjectAlternativeName).value
        self.assertEqual(san.get_values_for_type(x509.DNSName), [IP, IP6])
        self.assertEqual(
            san.get_values_for_type(x509.IPAddress),
            [ipaddress.ip_address(IP), ipaddress.ip_address(IP6)],
        )
        cert.verify_directly_issued_by(cert_of(self.ca.cert))

    def test_default_key_and_identity(self):
        files = pki.issue_server(self.ca_dir, self.out, DNS_NAME)
        identity = pki.load_server_identity(files.key, files.cert, files.chain)
        self.assertEqual(identity.key.key_size, 3072)
        self.assertEqual(identity.chain, (cert_of(self.ca.cert),))
        self.assertEqual(identity.cert, cert_of(files.cert))
        self.assertNotIn("key=", repr(identity))

    def test_ecdsa_leaf_has_no_key_encipherment(self):
        cert = cert_of(self.issue(DNS_NAME, key_type="ecdsa-p256").cert)
        usage = ext(cert, x509.KeyUsage).value
        self.assertTrue(usage.digital_signature)
        self.assertFalse(usage.key_encipherment)

    def test_validity_stays_within_the_ca(self):
        cert = cert_of(self.issue(DNS_NAME, days=825).cert)
        span = cert.not_valid_after_utc - cert.not_valid_before_utc
        self.assertEqual(span, datetime.timedelta(days=825))
        short = self.root / "short-ca"
        pki.init_ca(short, days=10, key_type="ecdsa-p256")
        capped = cert_of(
            pki.issue_server(short, self.root / "s2", DNS_NAME, key_type="rsa2048").cert
        )
        self.assertLessEqual(
            capped.not_valid_after_utc, cert_of(short / "ca.pem").not_valid_after_utc
        )

    def test_refuses_to_overwrite_unless_forced(self):
        files = self.issue(DNS_NAME)
        key, cert = files.key.read_bytes(), files.cert.read_bytes()
        with self.assertRaises(pki.PkiError) as caught:
            self.issue("other.example.test")
        self.assertIn(str(files.key), str(caught.exception))
        self.assertEqual((files.key.read_bytes(), files.cert.read_bytes()), (key, cert))
        self.issue("other.example.test", force=True)
        self.assertNotEqual(files.key.read_bytes(), key)
        self.assertEqual(mode(files.key), 0o600)
        self.assertEqual(cert_of(files.cert).subject.rfc4514_string(), "CN=other.example.test")
        self.assertEqual(sorted(os.listdir(self.out)), ["chain.pem", "server.key", "server.pem"])

    def test_bad_names(self):
        for name in ("", "a b.example.test", "a/b", "ü.example.test", "x" * 64, "x.test."):
            with self.assertRaises(pki.PkiError, msg=name):
                self.issue(name)
        self.assertFalse(self.out.exists())

    def test_missing_ca(self):
        with self.assertRaises(pki.PkiError) as caught:
            pki.issue_server(self.root / "nowhere", self.out, DNS_NAME)
        self.assertIn("nowhere", str(caught.exception))


class IdentityTests(unittest.TestCase):
    def setUp(self):
        self.root = state_dir(self)
        self.ca_dir = self.root / "ca"
        pki.init_ca(self.ca_dir, key_type="ecdsa-p256")
        self.a = pki.issue_server(self.ca_dir, self.root / "a", DNS_NAME, key_type="ecdsa-p256")
        self.b = pki.issue_server(self.ca_dir, self.root / "b", DNS_NAME, key_type="ecdsa-p256")

    def test_mismatched_key_is_refused(self):
        with self.assertRaises(pki.PkiError) as caught:
            pki.load_server_identity(self.a.key, self.b.cert, self.b.chain)
        message = str(caught.exception)
        self.assertIn("does not match the key in", message)
        self.assertIn(str(self.a.key), message)
        self.assertIn(str(self.b.cert), message)

    def test_import_of_mismatched_certificate_is_refused(self):
        with self.assertRaises(pki.PkiError) as caught:
            pki.import_certificate(self.a.key, self.b.cert, [self.b.chain], self.root / "c")
        self.assertIn("does not match the key in", str(caught.exception))
        self.assertFalse((self.root / "c").exists())

    def test_chain_from_another_ca_is_refused(self):
        other = self.root / "other-ca"
        pki.init_ca(other, common_name="other CA", key_type="ecdsa-p256")
        with self.assertRaises(pki.PkiError) as caught:
            pki.load_server_identity(self.a.key, self.a.cert, other / "ca.pem")
        self.assertIn("is not signed by", str(caught.exception))

    def test_readable_key_is_refused(self):
        os.chmod(self.a.key, 0o640)
        with self.assertRaises(pki.PkiError) as caught:
            pki.load_server_identity(self.a.key, self.a.cert)
        self.assertIn("chmod 600", str(caught.exception))

    def test_linked_or_foreign_key_is_refused(self):
        """The key is a secret file: a symbolic link (whoever writes the directory could
        aim it anywhere) and a key owned by another user are refused, on the descriptor."""
        link = self.root / "linked.key"
        link.symlink_to(self.a.key)
        with self.assertRaises(pki.PkiError) as caught:
            pki.load_server_identity(link, self.a.cert)
        self.assertIn("symbolic link", str(caught.exception))
        if os.geteuid() == 0:
            os.chown(self.a.key, 65534, 65534)  # nobody
            with self.assertRaises(pki.PkiError) as caught:
                pki.load_server_identity(self.a.key, self.a.cert)
            self.assertIn("belongs to", str(caught.exception))

    def test_encrypted_key_is_refused(self):
        key = pki.load_server_identity(self.a.key, self.a.cert).key
        encrypted = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pass"),
        )
        self.a.key.write_bytes(encrypted)
        with self.assertRaises(pki.PkiError) as caught:
            pki.load_server_identity(self.a.key, self.a.cert)
        self.assertIn("encrypted", str(caught.exception))

    def test_not_a_certificate(self):
        with self.assertRaises(pki.PkiError) as caught:
            pki.load_server_identity(self.a.key, self.a.key)
        self.assertIn(str(self.a.key), str(caught.exception))


class CsrTests(unittest.TestCase):
    def setUp(self):
        self.root = state_dir(self)
        self.ca_dir = self.root / "ca"
        pki.init_ca(self.ca_dir, key_type="ecdsa-p256")
        self.out = self.root / "server"

    def test_csr_requests_the_profile(self):
        path = pki.make_csr(self.out, DNS_NAME, [IP], key_type="rsa2048")
        self.assertEqual(path, self.out / "server.csr")
        self.assertEqual(mode(self.out / "server.key"), 0o600)
        csr = x509.load_pem_x509_csr(path.read_bytes())
        self.assertTrue(csr.is_signature_valid)
        self.assertEqual(csr.subject.rfc4514_string(), f"CN={DNS_NAME}")
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(san.get_values_for_type(x509.DNSName), [DNS_NAME, IP])
        self.assertEqual(san.get_values_for_type(x509.IPAddress), [ipaddress.ip_address(IP)])
        eku = csr.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        self.assertEqual(list(eku), list(pki.SERVER_EKU))
        with self.assertRaises(pki.PkiError):
            pki.make_csr(self.out, DNS_NAME)

    def test_import_reports_what_clients_may_reject(self):
        csr = pki.make_csr(self.out, IP, key_type="ecdsa-p256")
        returned = self.root / "from-ca.pem"
        returned.write_bytes(sign_csr(csr, self.ca_dir, days=30, ago=60))
        result = pki.import_certificate(self.out / "server.key", returned, [self.ca_dir / "ca.pem"])
        self.assertEqual(result.files.cert, self.out / "server.pem")
        warnings = "\n".join(result.warnings)
        self.assertIn("expired", warnings)
        self.assertIn("1.3.6.1.5.5.8.2.2", warnings)
        self.assertNotIn("serverAuth", warnings)
        self.assertNotIn("13801", warnings)
        self.assertEqual(result.identity.chain, (cert_of(self.ca_dir / "ca.pem"),))
        loaded = pki.load_server_identity(result.files.key, result.files.cert, result.files.chain)
        self.assertEqual(loaded.cert, result.identity.cert)
        with self.assertRaises(pki.PkiError):
            pki.import_certificate(self.out / "server.key", returned, [self.ca_dir / "ca.pem"])

    def test_import_of_a_full_chain_into_another_directory(self):
        csr = pki.make_csr(self.out, DNS_NAME, key_type="ecdsa-p256")
        full = self.root / "fullchain.pem"
        full.write_bytes(sign_csr(csr, self.ca_dir) + (self.ca_dir / "ca.pem").read_bytes())
        target = self.root / "installed"
        result = pki.import_certificate(self.out / "server.key", full, out_dir=target)
        self.assertEqual(mode(target / "server.key"), 0o600)
        self.assertEqual((target / "chain.pem").read_bytes(), (self.ca_dir / "ca.pem").read_bytes())
        self.assertEqual(
            len(x509.load_pem_x509_certificates((target / "server.pem").read_bytes())), 1
        )
        self.assertIn("1.3.6.1.5.5.8.2.2", " ".join(result.warnings))


class OpenSSLTests(unittest.TestCase):
    """An independent reading of what vpnaaa writes, by the openssl command-line tool."""

    if OPENSSL is None:
        skip = "needs the openssl command"

    def setUp(self):
        self.root = state_dir(self)
        self.ca = pki.init_ca(self.root / "ca")

    def openssl(self, *args):
        done = subprocess.run(
            [OPENSSL, *map(str, args)], capture_output=True, text=True, check=False
        )
        output = done.stdout + done.stderr
        self.assertEqual(done.returncode, 0, output)
        return output

    def test_verify_and_names(self):
        for name, extra in ((DNS_NAME, [IP]), (IP, [])):
            out = self.root / name
            files = pki.issue_server(self.root / "ca", out, name, extra)
            for ca_file in (self.ca.cert, files.chain):
                verdict = self.openssl(
                    "verify", "-CAfile", ca_file, "-purpose", "sslserver", files.cert
                )
                self.assertEqual(verdict.strip(), f"{files.cert}: OK")
            text = self.openssl(
                "x509", "-noout", "-in", files.cert, "-ext", "subjectAltName,extendedKeyUsage"
            )
            self.assertIn(f"DNS:{IP}, IP Address:{IP}", text)
            self.assertIn("TLS Web Server Authentication, 1.3.6.1.5.5.8.2.2", text)
            self.assertIn(f"DNS:{name}", text)
            checked = self.openssl("x509", "-noout", "-in", files.cert, "-checkip", IP)
            self.assertIn(f"IP {IP} does match certificate", checked)
            self.openssl("pkey", "-noout", "-in", files.key)

    def test_openssl_as_the_external_ca(self):
        out = self.root / "server"
        csr = pki.make_csr(out, DNS_NAME, [IP])
        self.assertIn("verify OK", self.openssl("req", "-noout", "-verify", "-in", csr))
        signed = self.root / "signed.pem"
        self.openssl(
            "x509",
            "-req",
            "-in",
            csr,
            "-CA",
            self.ca.cert,
            "-CAkey",
            self.ca.key,
            "-copy_extensions",
            "copyall",
            "-days",
            "30",
            "-out",
            signed,
        )
        result = pki.import_certificate(out / "server.key", signed, [self.ca.cert])
        self.assertEqual(result.warnings, ())
        verdict = self.openssl(
            "verify", "-CAfile", result.files.chain, "-purpose", "sslserver", result.files.cert
        )
        self.assertEqual(verdict.strip(), f"{result.files.cert}: OK")
