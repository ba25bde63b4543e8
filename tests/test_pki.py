"""Certificates: the demo CA, the Windows IKEv2/PEAP server profile, CSRs, imports, loading,
client certificates and their PKCS#12, revocation and the CRL."""

import contextlib
import datetime
import io
import ipaddress
import os
import shutil
import stat
import subprocess
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.trial import unittest

from tests.support import state_dir
from vpnaaa import cli, pki

DNS_NAME = "vpn.example.test"
IP = "192.0.2.1"
IP6 = "2001:db8::1"
OPENSSL = shutil.which("openssl")
STRONGSWAN_PKI = shutil.which("pki")  # Debian strongswan-pki
USER = "alice@example.test"
MACHINE = "pc1.corp.example.test"
CLIENT_AUTH, IKE_INTERMEDIATE = "1.3.6.1.5.5.7.3.2", "1.3.6.1.5.5.8.2.2"


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

    def openssl(self, *args, ok=True):
        done = subprocess.run(
            [OPENSSL, *map(str, args)], capture_output=True, text=True, check=False
        )
        output = done.stdout + done.stderr
        self.assertEqual(done.returncode == 0, ok, output)
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

    def test_pkcs12_as_openssl_reads_it(self):
        """openssl reads key + certificate + CA with the passphrase, and names the encryption."""
        secret = self.root / "passphrase"
        secret.write_text("open sesame\n")
        for cipher, expected in (
            ("3des", ("MAC: sha1", "Shrouded Keybag: pbeWithSHA1And3-KeyTripleDES-CBC")),
            ("aes256", ("MAC: sha256", "Shrouded Keybag: PBES2, PBKDF2, AES-256-CBC")),
        ):
            files = pki.issue_client(
                self.root / "ca",
                self.root / cipher,
                USER,
                p12_passphrase=b"open sesame",
                p12_cipher=cipher,
            )
            info = self.openssl(
                "pkcs12", "-info", "-in", files.p12, "-passin", f"file:{secret}", "-noenc"
            )
            for line in expected:
                self.assertIn(line, info)
            self.assertIn(f"Iteration {pki.P12_ROUNDS}", info)
            self.assertEqual(info.count("-----BEGIN PRIVATE KEY-----"), 1)
            self.assertEqual(info.count("-----BEGIN CERTIFICATE-----"), 2)
            self.assertIn(f"friendlyName: {USER}", info)
            self.assertIn(f"subject=CN = {USER}", info)
            self.assertIn("friendlyName: vpnaaa demo CA", info)
            self.openssl("pkcs12", "-info", "-in", files.p12, "-passin", "pass:wrong", ok=False)

    def test_client_certificates_verify_and_revocation(self):
        """Both profiles pass `-purpose sslclient`; after a revocation, -crl_check rejects that
        one and still accepts the other, and the CRL number goes up."""
        out = self.root / "clients"
        user = pki.issue_client(self.root / "ca", out, USER)
        machine = pki.issue_client(self.root / "ca", out, MACHINE, machine=True)
        crl = self.root / "ca" / "crl.pem"
        for files in (user, machine):
            verdict = self.openssl(
                "verify", "-CAfile", self.ca.cert, "-purpose", "sslclient", files.cert
            )
            self.assertEqual(verdict.strip(), f"{files.cert}: OK")
        self.assertRegex(
            self.openssl("crl", "-in", crl, "-noout", "-text"), r"CRL Number: *\n *1\n"
        )
        pki.revoke(self.root / "ca", user.serial, "keyCompromise")
        text = self.openssl("crl", "-in", crl, "-noout", "-text")
        self.assertRegex(text, r"CRL Number: *\n *2\n")
        self.assertIn(f"Serial Number: {pki.serial_hex(user.serial)}", text)
        self.assertIn("Key Compromise", text)
        self.openssl("crl", "-in", crl, "-noout", "-CAfile", self.ca.cert)  # signature checked
        check = ("verify", "-CAfile", self.ca.cert, "-crl_check", "-CRLfile", crl)
        self.assertIn("certificate revoked", self.openssl(*check, user.cert, ok=False))
        self.assertEqual(self.openssl(*check, machine.cert).strip(), f"{machine.cert}: OK")
        pki.write_crl(self.root / "ca")
        self.assertRegex(
            self.openssl("crl", "-in", crl, "-noout", "-text"), r"CRL Number: *\n *3\n"
        )

    def test_alt_names_as_openssl_decodes_them(self):
        """The UPN otherName as openssl decodes it, for the longest name a CN holds."""
        name = "a" * 51 + "@example.test"
        with self.assertRaises(pki.PkiError) as caught:  # RFC 5280 ub-common-name
            pki.issue_client(self.root / "ca", self.root / "c", "a" + name)
        self.assertIn("<= 64", str(caught.exception))
        files = pki.issue_client(self.root / "ca", self.root / "c", name, key_type="ecdsa-p256")
        text = self.openssl("x509", "-noout", "-in", files.cert, "-ext", "subjectAltName,keyUsage")
        self.assertIn(f"email:{name}, othername: UPN::{name}", text)
        self.assertIn("Digital Signature", text)
        self.assertNotIn("Key Encipherment", text)
        machine = pki.issue_client(self.root / "ca", self.root / "c", MACHINE, machine=True)
        text = self.openssl("x509", "-noout", "-in", machine.cert, "-ext", "subjectAltName")
        self.assertIn(f"DNS:{MACHINE}", text)
        self.assertIn(
            f"{machine.cert}: OK",
            self.openssl(
                "verify", "-CAfile", self.ca.cert, "-verify_hostname", MACHINE, machine.cert
            ),
        )


class StrongSwanPkiTests(unittest.TestCase):
    """strongSwan's own parser (`pki --print`, the one charon uses) reads the EKUs and names."""

    if STRONGSWAN_PKI is None:
        skip = "needs strongSwan's pki (Debian strongswan-pki)"

    def pki_print(self, *args):
        done = subprocess.run(
            [STRONGSWAN_PKI, "--print", *map(str, args)],
            capture_output=True,
            text=True,
            check=False,
        )
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
        return done.stdout

    def test_print(self):
        root = state_dir(self)
        pki.init_ca(root / "ca", key_type="ecdsa-p256")
        user = pki.issue_client(root / "ca", root / "c", USER, key_type="ecdsa-p256")
        machine = pki.issue_client(root / "ca", root / "c", MACHINE, machine=True)
        shown = self.pki_print("--in", user.cert)
        self.assertRegex(shown, r"flags: +clientAuth ikeIntermediate")
        self.assertRegex(shown, rf"altNames: +{USER}, {USER}")  # rfc822Name and the UPN
        shown = self.pki_print("--in", machine.cert)
        self.assertRegex(shown, r"flags: +clientAuth ikeIntermediate")
        self.assertRegex(shown, rf"altNames: +{MACHINE}\n")
        pki.revoke(root / "ca", machine.serial, "cessationOfOperation")
        shown = self.pki_print("--type", "crl", "--in", root / "ca" / "crl.pem")
        self.assertRegex(shown, r"serial: +02\n")
        self.assertIn("1 revoked certificate", shown)
        colons = ":".join(f"{b:02x}" for b in machine.serial.to_bytes(20, "big").lstrip(b"\0"))
        self.assertIn(f"{colons}: ", shown)
        self.assertIn("cessation of operation", shown)


class ClientTests(unittest.TestCase):
    def setUp(self):
        self.root = state_dir(self)
        self.ca_dir = self.root / "ca"
        self.ca = pki.init_ca(self.ca_dir, key_type="ecdsa-p256")
        self.out = self.root / "clients"

    def issue(self, name, **kwargs):
        kwargs.setdefault("key_type", "ecdsa-p256")
        return pki.issue_client(self.ca_dir, self.out, name, **kwargs)

    def common_checks(self, cert):
        eku = ext(cert, x509.ExtendedKeyUsage).value
        self.assertEqual([oid.dotted_string for oid in eku], [CLIENT_AUTH, IKE_INTERMEDIATE])
        self.assertFalse(ext(cert, x509.ExtendedKeyUsage).critical)
        self.assertFalse(ext(cert, x509.BasicConstraints).value.ca)
        self.assertTrue(ext(cert, x509.KeyUsage).critical)
        ca_cert = cert_of(self.ca.cert)
        self.assertEqual(
            ext(cert, x509.AuthorityKeyIdentifier).value.key_identifier,
            ext(ca_cert, x509.SubjectKeyIdentifier).value.digest,
        )
        cert.verify_directly_issued_by(ca_cert)

    def test_user_at_domain_profile(self):
        files = self.issue(USER, key_type="rsa2048")
        cert = cert_of(files.cert)
        self.common_checks(cert)
        self.assertEqual(cert.subject.rfc4514_string(), f"CN={USER}")
        san = ext(cert, x509.SubjectAlternativeName)
        self.assertFalse(san.critical)
        self.assertEqual(san.value.get_values_for_type(x509.RFC822Name), [USER])
        [upn] = san.value.get_values_for_type(x509.OtherName)
        self.assertEqual(upn.type_id.dotted_string, "1.3.6.1.4.1.311.20.2.3")
        self.assertEqual(upn.value, b"\x0c\x12alice@example.test")  # UTF8String, 18 octets
        usage = ext(cert, x509.KeyUsage).value
        self.assertTrue(usage.digital_signature and usage.key_encipherment)
        self.assertFalse(usage.key_cert_sign)
        self.assertEqual((files.key, files.p12), (self.out / f"{USER}.key", None))
        self.assertEqual(mode(files.key), 0o600)
        self.assertEqual(mode(files.cert), 0o644)
        identity = pki.load_server_identity(files.key, files.cert)
        self.assertEqual(identity.key.key_size, 2048)
        self.assertEqual(files.serial, cert.serial_number)

    def test_plain_user_name_has_no_alt_name(self):
        cert = cert_of(self.issue("bob").cert)
        self.common_checks(cert)
        self.assertEqual(cert.subject.rfc4514_string(), "CN=bob")
        with self.assertRaises(x509.ExtensionNotFound):
            ext(cert, x509.SubjectAlternativeName)
        usage = ext(cert, x509.KeyUsage).value
        self.assertTrue(usage.digital_signature)
        self.assertFalse(usage.key_encipherment)

    def test_machine_profile(self):
        cert = cert_of(self.issue(MACHINE, machine=True, days=30).cert)
        self.common_checks(cert)
        self.assertEqual(cert.subject.rfc4514_string(), f"CN={MACHINE}")
        san = ext(cert, x509.SubjectAlternativeName).value
        self.assertEqual(list(san), [x509.DNSName(MACHINE)])
        span = cert.not_valid_after_utc - cert.not_valid_before_utc
        self.assertEqual(span, datetime.timedelta(days=30))

    def test_bad_names(self):
        for name in ("pc1", "192.0.2.1", "*.corp.example.test", "a b.example.test", "pc/1.x.y"):
            with self.assertRaises(pki.PkiError, msg=name):
                self.issue(name, machine=True)
        for name in ("a b", "ü", "alice@", "@example.test", "alice@localhost", "x" * 65, "a/b"):
            with self.assertRaises(pki.PkiError, msg=name):
                self.issue(name)
        self.assertFalse(self.out.exists())
        self.assertEqual(pki.read_index(self.ca_dir)[1], {})

    def test_refuses_to_overwrite_unless_forced(self):
        first = self.issue("bob")
        with self.assertRaises(pki.PkiError) as caught:
            self.issue("bob")
        self.assertIn("refusing to overwrite", str(caught.exception))
        self.assertEqual(cert_of(first.cert).serial_number, first.serial)
        second = self.issue("bob", force=True)
        self.assertNotEqual(second.serial, first.serial)
        self.assertEqual(set(pki.read_index(self.ca_dir)[1]), {first.serial, second.serial})

    def test_index_lists_what_the_ca_issued(self):
        server = pki.issue_server(self.ca_dir, self.root / "server", "vpn.example.test")
        user = self.issue(USER)
        machine = self.issue(MACHINE, machine=True)
        number, entries = pki.read_index(self.ca_dir)
        self.assertEqual(number, 1)  # init signed CRL number 1
        server_cert = cert_of(server.cert)
        self.assertEqual(
            {serial: (e.subject, e.profile, e.revoked) for serial, e in entries.items()},
            {
                server_cert.serial_number: ("CN=vpn.example.test", "server", None),
                user.serial: (f"CN={USER}", "user", None),
                machine.serial: (f"CN={MACHINE}", "machine", None),
            },
        )
        self.assertEqual(entries[user.serial].not_after, cert_of(user.cert).not_valid_after_utc)
        self.assertEqual(mode(self.ca_dir / "index.json"), 0o600)


class Pkcs12Tests(unittest.TestCase):
    def setUp(self):
        self.root = state_dir(self)
        self.ca_dir = self.root / "ca"
        self.ca = pki.init_ca(self.ca_dir, key_type="ecdsa-p256")

    def test_p12_holds_key_certificate_and_ca(self):
        for cipher in ("3des", "aes256"):
            out = self.root / cipher
            files = pki.issue_client(
                self.ca_dir, out, USER, p12_passphrase=b"correct horse", p12_cipher=cipher
            )
            self.assertEqual((files.key, files.p12), (None, out / f"{USER}.p12"))
            self.assertEqual(sorted(os.listdir(out)), [f"{USER}.p12", f"{USER}.pem"])
            self.assertEqual(mode(files.p12), 0o600)
            loaded = pkcs12.load_pkcs12(files.p12.read_bytes(), b"correct horse")
            self.assertEqual(loaded.cert.certificate, cert_of(files.cert))
            self.assertEqual(loaded.cert.friendly_name, USER.encode())
            self.assertEqual(
                loaded.key.public_key().public_bytes(
                    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
                ),
                cert_of(files.cert)
                .public_key()
                .public_bytes(
                    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
                ),
            )
            [ca] = loaded.additional_certs
            self.assertEqual(ca.certificate, cert_of(self.ca.cert))
            self.assertEqual(ca.friendly_name, b"vpnaaa demo CA")
            with self.assertRaises(ValueError):
                pkcs12.load_pkcs12(files.p12.read_bytes(), b"wrong horse")

    def test_empty_passphrase_is_refused(self):
        with self.assertRaises(pki.PkiError) as caught:
            pki.issue_client(self.ca_dir, self.root / "out", USER, p12_passphrase=b"")
        self.assertIn("empty", str(caught.exception))
        self.assertFalse((self.root / "out").exists())


class RevocationTests(unittest.TestCase):
    NOW = datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)

    def setUp(self):
        self.root = state_dir(self)
        self.ca_dir = self.root / "ca"
        self.ca = pki.init_ca(self.ca_dir, key_type="ecdsa-p256", days=36500)
        self.crl_path = self.ca_dir / "crl.pem"
        self.user = pki.issue_client(self.ca_dir, self.root / "c", USER, key_type="ecdsa-p256")

    def crl(self):
        crl = x509.load_pem_x509_crl(self.crl_path.read_bytes())
        self.assertTrue(crl.is_signature_valid(cert_of(self.ca.cert).public_key()))
        return crl

    def test_init_publishes_an_empty_crl(self):
        crl = self.crl()
        self.assertEqual(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number, 1)
        self.assertEqual(len(crl), 0)
        self.assertEqual(crl.issuer, cert_of(self.ca.cert).subject)
        self.assertEqual(mode(self.crl_path), 0o644)

    def test_revoke_signs_a_crl_with_the_serial(self):
        entry, info = pki.revoke(self.ca_dir, self.user.serial, "keyCompromise", now=self.NOW)
        self.assertEqual(
            (entry.serial, entry.subject, entry.profile), (self.user.serial, f"CN={USER}", "user")
        )
        self.assertEqual((info.path, info.number, info.revoked), (self.crl_path, 2, 1))
        crl = self.crl()
        self.assertEqual(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number, 2)
        ca_ski = ext(cert_of(self.ca.cert), x509.SubjectKeyIdentifier).value.digest
        aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        self.assertEqual(aki.key_identifier, ca_ski)
        self.assertEqual(
            crl.last_update_utc, datetime.datetime(2030, 1, 2, 2, 59, 5, tzinfo=datetime.UTC)
        )
        self.assertEqual(
            crl.next_update_utc, datetime.datetime(2030, 1, 9, 3, 4, 5, tzinfo=datetime.UTC)
        )
        revoked = crl.get_revoked_certificate_by_serial_number(self.user.serial)
        self.assertEqual(revoked.revocation_date_utc, self.NOW)
        reason = revoked.extensions.get_extension_for_class(x509.CRLReason).value.reason
        self.assertEqual(reason, x509.ReasonFlags.key_compromise)
        self.assertEqual(pki.read_index(self.ca_dir)[1][self.user.serial].revoked, self.NOW)

    def test_unknown_serial_is_refused(self):
        before = self.crl_path.read_bytes()
        with self.assertRaises(pki.PkiError) as caught:
            pki.revoke(self.ca_dir, 0x0102, now=self.NOW)
        self.assertIn("unknown serial 0102", str(caught.exception))
        self.assertIn("--unlisted", str(caught.exception))
        self.assertEqual(self.crl_path.read_bytes(), before)
        self.assertEqual(pki.read_index(self.ca_dir)[0], 1)
        entry, info = pki.revoke(self.ca_dir, 0x0102, unlisted=True, now=self.NOW)
        self.assertEqual((entry.profile, info.number), ("unlisted", 2))
        revoked = self.crl().get_revoked_certificate_by_serial_number(0x0102)
        with self.assertRaises(x509.ExtensionNotFound):  # unspecified: no reasonCode, §5.3.1
            revoked.extensions.get_extension_for_class(x509.CRLReason)

    def test_second_revocation_and_bad_reason_are_refused(self):
        pki.revoke(self.ca_dir, self.user.serial, now=self.NOW)
        with self.assertRaises(pki.PkiError) as caught:
            pki.revoke(self.ca_dir, self.user.serial)
        self.assertIn("was revoked on 2030-01-02", str(caught.exception))
        with self.assertRaises(pki.PkiError):
            pki.revoke(self.ca_dir, self.user.serial, "certificateHold")
        self.assertEqual(pki.read_index(self.ca_dir)[0], 2)

    def test_crl_is_re_signed_with_the_next_number(self):
        machine = pki.issue_client(self.ca_dir, self.root / "c", MACHINE, machine=True)
        pki.revoke(self.ca_dir, self.user.serial, "superseded", now=self.NOW)
        pki.revoke(self.ca_dir, machine.serial, now=self.NOW)
        later = self.NOW + datetime.timedelta(days=6)
        info = pki.write_crl(self.ca_dir, now=later)
        self.assertEqual((info.number, info.revoked), (4, 2))
        crl = self.crl()
        self.assertEqual(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number, 4)
        self.assertEqual(
            sorted(r.serial_number for r in crl), sorted([self.user.serial, machine.serial])
        )
        self.assertEqual(crl.next_update_utc, later + datetime.timedelta(days=pki.CRL_DAYS))

    def test_serials(self):
        self.assertEqual(pki.parse_serial("0a:FF"), 0x0AFF)
        self.assertEqual(pki.parse_serial(" 0x1f\n"), 0x1F)
        self.assertEqual(pki.serial_hex(0xABC), "0ABC")
        self.assertEqual(pki.parse_serial(pki.serial_hex(self.user.serial)), self.user.serial)
        for text in ("", "zz", "0", "-1", "1" * 41):
            with self.assertRaises(pki.PkiError, msg=text):
                pki.parse_serial(text)


class CliTests(unittest.TestCase):
    """`vpnaaa pki issue-client/revoke/crl` as an operator runs them."""

    def setUp(self):
        self.state = state_dir(self)
        self.run_cli("pki", "init")
        self.ca_dir = self.state / "pki" / "ca"
        self.clients = self.state / "pki" / "clients"

    def run_cli(self, *argv, stdin="", code=0):
        out, err = io.StringIO(), io.StringIO()
        self.patch(sys, "stdin", io.StringIO(stdin))
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                result = cli.main(["-s", str(self.state), *argv])
            except SystemExit as e:  # what `raise SystemExit("vpnaaa: ...")` prints and exits
                print(e.code, file=sys.stderr)
                result = 1
        self.assertEqual(result, code, out.getvalue() + err.getvalue())
        return out.getvalue() + err.getvalue()

    def test_p12_passphrase_from_a_file_or_stdin_never_printed(self):
        secret = self.state / "passphrase"
        fd = os.open(secret, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, b"s3cret from file\n")
        os.close(fd)
        said = self.run_cli("pki", "issue-client", USER, "--p12", "--passphrase-file", str(secret))
        said += self.run_cli(
            "pki",
            "issue-client",
            MACHINE,
            "--machine",
            "--p12",
            "--passphrase-stdin",
            "--p12-cipher",
            "aes256",
            "--key-type",
            "ecdsa-p256",
            stdin="typed s3cret\n",
        )
        self.assertNotIn("s3cret", said)
        user = pkcs12.load_pkcs12((self.clients / f"{USER}.p12").read_bytes(), b"s3cret from file")
        machine = pkcs12.load_pkcs12(
            (self.clients / f"{MACHINE}.p12").read_bytes(), b"typed s3cret"
        )
        self.assertIn(pki.serial_hex(user.cert.certificate.serial_number), said)
        self.assertEqual(machine.cert.certificate.subject.rfc4514_string(), f"CN={MACHINE}")
        os.chmod(secret, 0o644)
        refused = self.run_cli(
            "pki", "issue-client", "other", "--p12", "--passphrase-file", str(secret), code=1
        )
        self.assertIn("chmod 600", refused)
        self.assertIn(
            "add --p12", self.run_cli("pki", "issue-client", "x", "--passphrase-stdin", code=1)
        )

    def test_revoke_and_crl(self):
        said = self.run_cli("pki", "issue-client", "bob", "--key-type", "ecdsa-p256")
        serial = said.split("serial ")[1].split(";")[0]
        self.assertTrue((self.clients / "bob.key").exists())
        colons = ":".join(serial[i : i + 2] for i in range(0, len(serial), 2)).lower()
        said = self.run_cli("pki", "revoke", colons, "--reason", "superseded")
        self.assertIn(f"revoked {serial} (CN=bob)", said)
        self.assertIn("CRL number 2, 1 revoked", said)
        self.assertIn("CRL number 3, 1 revoked", self.run_cli("pki", "crl"))
        self.assertIn("unknown serial", self.run_cli("pki", "revoke", "0102", code=1))
        self.assertIn("was revoked", self.run_cli("pki", "revoke", serial, code=1))
