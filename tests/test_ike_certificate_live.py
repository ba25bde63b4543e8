"""Live certificate sessions, in process (tests/ike_peer.py on a fake clock): a CRL file
read again ends the sessions it revokes (RFC 5280 §6.3 for which CRL speaks for a
certificate), and only those; an IKE rekey (RFC 7296 §1.3.2) keeps the session's
certificate, so `vpnaaa deny` and a CRL still end it. The CRLs come from the openssl CLI,
or, for a forgery, from cryptography's builder with another key. charon proves the same
against a real client in tests/interop/test_ike_certificate_live.py."""

from __future__ import annotations

import datetime
import time
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet.task import Clock
from twisted.trial import unittest

from tests import test_ike_certificate
from tests.certs_openssl import OpensslCa
from tests.ike_peer import Gateway, Initiator
from tests.support import log_lines, state_dir
from tests.test_ike_certificate import DEVICE
from vpnaaa.certs import ClientVerifier, CrlFile, DenyList, RevocationChecker, serial_hex
from vpnaaa.config import RevocationConfig
from vpnaaa.ike.common import CertificateAuth, EndCause, Ending
from vpnaaa.ike.const import ExchangeType, IdType, PayloadType, ProtocolId
from vpnaaa.ike.message import Identification
from vpnaaa.ike.sa import IkeSa
from vpnaaa.service import RevocationCheckers

WINDOW = ("20000101000000Z", "20991231000000Z")  # thisUpdate, nextUpdate of the test CRLs
FQDN = Identification(IdType.FQDN, b"dev.example.test")


class Endings:
    """A session observer that keeps each session end's cause (what accounting reads)."""

    def __init__(self) -> None:
        self.ended: list[tuple[IkeSa, Ending]] = []

    def session_started(self, sa: IkeSa) -> None:
        pass

    def session_ended(self, sa: IkeSa, ending: Ending, counters: Any) -> None:
        self.ended.append((sa, ending))

    def child_retired(self, sa: IkeSa, counters: Any) -> None:
        pass


class LiveCertificateTests(unittest.TestCase):
    def setUp(self) -> None:
        self.directory = state_dir(self)
        self.ca = OpensslCa(self.directory / "ca", "Device CA")
        self.device = self.ca.issue("dev", DEVICE, subject="/CN=dev.example.test")
        self.serial = serial_hex(
            x509.load_pem_x509_certificate(self.device.cert.read_bytes()).serial_number
        )
        self.crl_path = self.ca.crl(self.directory / "crl.pem", window=WINDOW)  # none revoked
        self.crl_file = CrlFile(self.crl_path)
        self.log = log_lines(self)

    def connect(self, crl_files: tuple[CrlFile, ...] = ()) -> tuple[Gateway, Initiator, IkeSa]:
        """A certificate session of dev.example.test, its profile reading ``crl_files``;
        the responder is told of each read of ``self.crl_file`` (as the daemon wires it)."""
        gateway = Gateway(auth="certificate")
        gateway.clock.advance(time.time())
        checker = RevocationChecker(gateway.clock, crl_files=crl_files)
        profile = gateway.context.profiles[0]
        profile.certificates = CertificateAuth(ClientVerifier.from_files([self.ca.cert]), checker)
        self.endings = Endings()
        gateway.responder.observers.append(self.endings)
        self.crl_file.listeners.append(gateway.responder.revoke)
        peer = Initiator(gateway)
        key = serialization.load_pem_private_key(self.device.key.read_bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        # IKE_AUTH with CERT and AUTH, as the certificate tests build it (it reads .device)
        response = test_ike_certificate.CertificateAuthTests.auth_request(
            self, peer, idi=FQDN, key=key
        )  # type: ignore[arg-type]
        assert response is not None and response.get(PayloadType.AUTH) is not None
        (sa,) = gateway.responder.sessions()
        assert sa.certificate is not None
        self.assertEqual(sa.certificate.serial, self.serial)
        return gateway, peer, sa

    def revoke_in_file(self) -> None:
        """openssl ca revokes dev and rewrites the CRL file; the file is read again."""
        self.ca.revoke(self.device)
        self.ca.crl(self.crl_path, window=WINDOW)
        self.crl_file.reload()

    def assertDeleted(self, peer: Initiator, sa: IkeSa) -> None:
        """The gateway sent Delete(IKE) on the session's IKE SA; the client answers it;
        the session ended once, as Admin-Reset, its line naming certificate and file."""
        (request,) = peer.gateway_requests()
        self.assertEqual(request.header.exchange, ExchangeType.INFORMATIONAL)
        self.assertEqual(request.get(PayloadType.DELETE).protocol, ProtocolId.IKE)
        self.assertEqual((request.header.spi_i, request.header.spi_r), (sa.spi_i, sa.spi_r))
        peer.answer_delete(request)
        ((ended, ending),) = self.endings.ended
        self.assertIs(ended, sa)
        self.assertEqual(ending.cause, EndCause.ADMIN_RESET)
        (line,) = [line for line in self.log if "session of" in line and "ended" in line]
        self.assertIn(f"certificate 'CN=dev.example.test' serial {self.serial} revoked", line)
        self.assertIn("reason key_compromise", line)
        self.assertIn(f"(CRL file {self.crl_path})", line)

    def test_a_reread_crl_that_revokes_the_certificate_ends_the_session(self) -> None:
        gateway, peer, sa = self.connect((self.crl_file,))
        self.assertEqual(peer.gateway_requests(), [])
        self.revoke_in_file()
        self.assertDeleted(peer, sa)
        self.assertEqual(gateway.responder.sessions(), [])
        self.assertEqual(gateway.leaks(), [])

    def test_only_sessions_whose_profile_reads_the_file(self) -> None:
        """A profile without crl_files: the same CRL read again does not end its session
        (its revocation policy never consults that file)."""
        gateway, peer, sa = self.connect(())
        self.revoke_in_file()
        self.assertEqual(peer.gateway_requests(), [])
        self.assertEqual(gateway.responder.sessions(), [sa])

    def test_a_crl_not_signed_by_the_issuer_ends_nothing(self) -> None:
        """A CRL naming the issuer and listing the serial, signed by another key (RFC
        5280 §6.3.3 (f)): nothing ends; the issuer's own CRL, signed with its key, does."""
        gateway, peer, sa = self.connect((self.crl_file,))
        ca_key = serialization.load_pem_private_key(self.ca.key.read_bytes(), None)
        self.crl_path.write_bytes(self.built_crl(ec.generate_private_key(ec.SECP256R1())))
        self.crl_file.reload()
        self.assertEqual(peer.gateway_requests(), [])
        self.assertEqual(gateway.responder.sessions(), [sa])
        self.crl_path.write_bytes(self.built_crl(ca_key))
        self.crl_file.reload()
        self.assertDeleted(peer, sa)

    def built_crl(self, key: Any) -> bytes:
        issuer = x509.load_pem_x509_certificate(self.ca.cert.read_bytes()).subject
        serial = int(self.serial, 16)
        revoked = (
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(datetime.datetime(2020, 1, 1))
            .add_extension(x509.CRLReason(x509.ReasonFlags.key_compromise), critical=False)
            .build()
        )
        crl = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(issuer)
            .last_update(datetime.datetime(2020, 1, 1))
            .next_update(datetime.datetime(2099, 1, 1))
            .add_revoked_certificate(revoked)
            .sign(key, hashes.SHA256())
        )
        return crl.public_bytes(serialization.Encoding.PEM)

    def test_the_certificate_survives_an_ike_rekey(self) -> None:
        """The client rekeys the IKE SA (§1.3.2) and deletes the old one: the successor
        holds the certificate, `vpnaaa deny`'s look-up finds it, and a CRL ends it there."""
        gateway, peer, old = self.connect((self.crl_file,))
        peer.rekey_ike()
        peer.delete_previous_ike()
        (sa,) = gateway.responder.sessions()
        self.assertIsNot(sa, old)
        assert sa.certificate is not None
        self.assertEqual(
            (sa.certificate.serial, sa.certificate.subject), (self.serial, "CN=dev.example.test")
        )
        self.assertEqual(sa.session_id, old.session_id)
        self.assertEqual(gateway.responder.find(serial=self.serial), [sa])
        self.revoke_in_file()
        self.assertDeleted(peer, sa)
        self.assertEqual(gateway.leaks(), [])


class CrlFileListenerTests(unittest.TestCase):
    """The daemon's wiring: RevocationCheckers tells its watchers of every read of a CRL
    file, whether a look (follow, every few seconds) found it changed or SIGHUP reread it."""

    def test_follow_and_reload_tell_the_watchers(self) -> None:
        directory = state_dir(self)
        ca = OpensslCa(directory / "ca", "Device CA")
        path = ca.crl(directory / "crl.pem", window=WINDOW)
        checkers = RevocationCheckers(Clock(), DenyList(directory / "denied"))
        told: list[Path] = []
        checkers.watch(lambda crl_file: told.append(crl_file.path))
        checker = checkers.checker(RevocationConfig(crl_files=(path,)))
        checkers.follow()
        self.assertEqual(told, [])  # unchanged: not read again
        ca.revoke(ca.issue("dev", DEVICE))
        ca.crl(path, window=WINDOW)
        checkers.follow()
        self.assertEqual(told, [path])
        self.assertEqual(len(checker.crl_files[0].crls()[0]), 1)
        checkers.reload()
        self.assertEqual(told, [path, path])
