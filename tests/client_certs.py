"""Client certificates for in-process EAP-TLS tests, issued by :func:`tests.support.test_pki`'s
CA (or a CA of the test's own) with cryptography's builder: what a user's or a machine's
certificate carries, and the variants the server must refuse."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support import test_pki


@dataclass(frozen=True)
class ClientCertificate:
    cert: x509.Certificate
    cert_pem: bytes
    key_pem: bytes

    @property
    def pem_pair(self) -> tuple[bytes, bytes]:
        return self.cert_pem, self.key_pem


def issue_client(
    common_name: str,
    *,
    email: str | None = None,
    dns: str | None = None,
    usages: list[x509.ObjectIdentifier] | None = None,
    ca_dir: Path | None = None,
) -> ClientCertificate:
    """A P-256 client certificate signed by the CA in ``ca_dir`` (ca.key, ca.pem; default
    the test PKI's). ``usages``: its extendedKeyUsage (default clientAuth; ``[]`` for
    none at all)."""
    directory = ca_dir or test_pki()[0].cert.parent
    ca_key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), None)
    ca_cert = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH] if usages is None else usages
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    names: list[x509.GeneralName] = []
    if email:
        names.append(x509.RFC822Name(email))
    if dns:
        names.append(x509.DNSName(dns))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return ClientCertificate(cert, cert.public_bytes(serialization.Encoding.PEM), key_pem)
