"""Test CAs made by the ``openssl`` command line (a third party), not by vpnaaa.pki.

:class:`OpensslCa` is a directory with ``openssl ca``'s database: ``req -x509`` makes a root,
``ca`` signs intermediates and leaves with the extensions a test spells out, revokes them,
and writes CRLs (``ca -gencrl``); :meth:`OpensslCa.ocsp_response` answers an OCSP request
with ``openssl ocsp -index`` (the responder logic of ``openssl ocsp -port``, fed one request
file). :func:`openssl_verify` asks ``openssl verify`` for its verdict, to compare with ours.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

_REQ_CONFIG = """\
[req]
distinguished_name = dn
[dn]
[root]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
"""

_CA_CONFIG = """\
[ca]
default_ca = this
[this]
dir = {dir}
database = $dir/index.txt
new_certs_dir = $dir/new
crlnumber = $dir/crlnumber
serial = $dir/serial
certificate = $dir/ca.pem
private_key = $dir/ca.key
default_md = sha256
policy = anything
unique_subject = no
copy_extensions = none
email_in_dn = no
default_days = 30
default_crl_hours = 24
[anything]
commonName = optional
organizationName = optional
organizationalUnitName = optional
"""

# The extensions of a Windows-style user certificate, and of an intermediate CA.
USER = """\
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""
INTERMEDIATE = """\
basicConstraints = critical,CA:TRUE,pathlen:0
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""
OCSP_SIGNER = """\
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = OCSPSigning
authorityKeyIdentifier = keyid
"""


def run(*args: str | Path, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["openssl", *map(str, args)], input=stdin, capture_output=True, check=False
    )


def _check(result: subprocess.CompletedProcess[bytes]) -> None:
    if result.returncode != 0:
        raise RuntimeError(f"{result.args}: {result.stderr.decode(errors='replace')}")


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path

    def load(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert.read_bytes())

    def der(self) -> bytes:
        from cryptography.hazmat.primitives.serialization import Encoding

        return self.load().public_bytes(Encoding.DER)


def new_key(path: Path, key: str) -> None:
    """``key``: "ec" (P-256) or "rsa" (2048 bits)."""
    if key == "ec":
        _check(
            run("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", path)
        )
    else:
        _check(
            run("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", path)
        )


class OpensslCa:
    """A CA in ``directory`` (module docstring): a root, or an intermediate of ``parent``
    with ``extensions``."""

    def __init__(
        self,
        directory: Path,
        name: str,
        parent: OpensslCa | None = None,
        key: str = "ec",
        extensions: str = INTERMEDIATE,
    ) -> None:
        self.dir = directory
        (directory / "new").mkdir(parents=True)
        (directory / "index.txt").write_text("")
        (directory / "crlnumber").write_text("1000\n")
        self.config = directory / "ca.cnf"
        self.config.write_text(_CA_CONFIG.format(dir=directory))
        req = directory / "req.cnf"
        req.write_text(_REQ_CONFIG)
        self.key = directory / "ca.key"
        self.cert = directory / "ca.pem"
        new_key(self.key, key)
        if parent is None:
            _check(
                run(
                    "req",
                    "-x509",
                    "-new",
                    "-key",
                    self.key,
                    "-subj",
                    f"/CN={name}",
                    "-days",
                    "3650",
                    "-config",
                    req,
                    "-extensions",
                    "root",
                    "-out",
                    self.cert,
                )
            )
        else:
            csr = directory / "ca.csr"
            _check(
                run(
                    "req",
                    "-new",
                    "-key",
                    self.key,
                    "-subj",
                    f"/CN={name}",
                    "-config",
                    req,
                    "-out",
                    csr,
                )
            )
            parent._sign(csr, self.cert, extensions)

    def issue(
        self,
        name: str,
        extensions: str = USER,
        *,
        subject: str | None = None,
        key: str = "ec",
        dates: tuple[str, str] | None = None,
    ) -> Issued:
        """A certificate for ``subject`` (default ``/CN=name``) with ``extensions`` (config
        lines), a new ``key``; ``dates``: (start, end) as YYYYMMDDHHMMSSZ."""
        issued = Issued(self.dir / f"{name}.pem", self.dir / f"{name}.key")
        new_key(issued.key, key)
        csr = self.dir / f"{name}.csr"
        _check(
            run(
                "req",
                "-new",
                "-key",
                issued.key,
                "-subj",
                subject or f"/CN={name}",
                "-config",
                self.dir / "req.cnf",
                "-out",
                csr,
            )
        )
        self._sign(csr, issued.cert, extensions, dates)
        return issued

    def _sign(
        self, csr: Path, out: Path, extensions: str, dates: tuple[str, str] | None = None
    ) -> None:
        extfile = out.with_suffix(".ext")
        extfile.write_text("[ext]\n" + extensions)
        when = ["-startdate", dates[0], "-enddate", dates[1]] if dates else []
        _check(
            run(
                "ca",
                "-batch",
                "-config",
                self.config,
                "-notext",
                "-preserveDN",
                "-rand_serial",
                "-extfile",
                extfile,
                "-extensions",
                "ext",
                "-in",
                csr,
                "-out",
                out,
                *when,
            )
        )

    def revoke(self, issued: Issued, reason: str = "keyCompromise") -> None:
        _check(run("ca", "-config", self.config, "-revoke", issued.cert, "-crl_reason", reason))

    def crl(self, out: Path, *, der: bool = False, window: tuple[str, str] | None = None) -> Path:
        """A CRL now (``window``: thisUpdate and nextUpdate, YYYYMMDDHHMMSSZ), PEM or DER."""
        pem = out.with_suffix(".crl.pem") if der else out
        when = ["-crl_lastupdate", window[0], "-crl_nextupdate", window[1]] if window else []
        _check(run("ca", "-config", self.config, "-gencrl", "-out", pem, *when))
        if der:
            _check(run("crl", "-in", pem, "-outform", "DER", "-out", out))
        return out

    def ocsp_response(
        self, request: bytes, signer: Issued | None = None, next_update: bool = True
    ) -> bytes:
        """``openssl ocsp -index`` answering ``request`` (DER), signed by ``signer`` (a
        delegated responder) or by the CA itself; with ``next_update``, valid 10 minutes
        (nextUpdate), else without a nextUpdate."""
        reqin = self.dir / "ocsp-req.der"
        respout = self.dir / "ocsp-resp.der"
        reqin.write_bytes(request)
        signer_cert, signer_key = (signer.cert, signer.key) if signer else (self.cert, self.key)
        _check(
            run(
                "ocsp",
                "-index",
                self.dir / "index.txt",
                "-CA",
                self.cert,
                "-rsigner",
                signer_cert,
                "-rkey",
                signer_key,
                "-reqin",
                reqin,
                "-respout",
                respout,
                *(("-nmin", "10") if next_update else ()),
            )
        )
        return respout.read_bytes()


def openssl_verify(
    cert: Path, anchors: Path, *, untrusted: Path | None = None, crl: Path | None = None
) -> tuple[bool, str]:
    """``openssl verify -purpose sslclient`` (with ``-crl_check`` when given a CRL)."""
    args: list[str | Path] = ["verify", "-purpose", "sslclient", "-CAfile", anchors]
    if untrusted is not None:
        args += ["-untrusted", untrusted]
    if crl is not None:
        args += ["-crl_check", "-CRLfile", crl]
    result = run(*args, cert)
    return result.returncode == 0, (result.stdout + result.stderr).decode(errors="replace")


def forget(ca: OpensslCa, issued: Issued) -> None:
    """Drop ``issued`` from the CA's database, so its OCSP responder knows it not."""
    serial = issued.load().serial_number
    index = ca.dir / "index.txt"
    lines = index.read_text().splitlines(keepends=True)
    index.write_text("".join(line for line in lines if int(line.split("\t")[3], 16) != serial))
