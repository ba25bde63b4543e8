"""EAP-TLS in the engine (RFC 5216 with TLS 1.2, RFC 9190 with TLS 1.3) against a pyOpenSSL
peer on memory BIOs (tests.peap_peer): keys compared with what the peer's own TLS stack
exports under the RFCs' labels, the certificate decisions, the identity from the
certificate. Interop with wpa_supplicant is tests/interop/test_eapol_tls.py."""

from __future__ import annotations

import time
from collections.abc import Sequence

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from OpenSSL import SSL
from twisted.internet import task
from twisted.trial import unittest

from tests.client_certs import issue_client
from tests.peap_peer import PeapPeer
from tests.support import state_dir, test_pki
from vpnaaa import pki
from vpnaaa.certs import CertificateRejected, ClientVerifier, DenyList, serial_hex
from vpnaaa.certs.check import CertificateCheck
from vpnaaa.eap.authenticator import Challenge, Failure, Result, Success
from vpnaaa.eap.eaptls import ClientCertificateCheck, EapTls
from vpnaaa.eap.engine import EapEngine
from vpnaaa.eap.packet import Type
from vpnaaa.eap.tls import server_context
from vpnaaa.pki import load_server_identity

TLS12, TLS13 = SSL.TLS1_2_VERSION, SSL.TLS1_3_VERSION


class Refuse:
    """A certificate check that refuses everything (what a deny list does to a serial)."""

    def __init__(self) -> None:
        self.seen: list[Sequence[x509.Certificate]] = []

    def check(self, chain: Sequence[x509.Certificate]) -> str:
        self.seen.append(chain)
        raise CertificateRejected("serial on the deny list")


def daemons_check(
    case: unittest.TestCase, ca: x509.Certificate, deny: DenyList | None = None
) -> CertificateCheck:
    """The daemon's check (vpnaaa.service): the chain on cryptography's verifier, the
    deny list (an empty one by default)."""
    deny = deny or DenyList(state_dir(case) / "denied-serials")
    return CertificateCheck(ClientVerifier([ca]), deny, time.time)


def converse(engine: EapEngine, peer: PeapPeer) -> tuple[Result, int]:
    """Drive one conversation to its end; (result, Requests the server sent)."""
    conversation_id, request = engine.begin("192.0.2.1")
    result: Result = engine.step(conversation_id, peer.identity(request.eap, b"anon")).result[1]
    requests = 1
    while isinstance(result, Challenge):
        requests += 1
        result = engine.step(conversation_id, peer.answer(result.eap)).result[1]
    return result, requests


class EapTlsTests(unittest.TestCase):
    def setUp(self) -> None:
        ca, server = test_pki()
        self.ca = x509.load_pem_x509_certificate(ca.cert.read_bytes())
        self.identity = load_server_identity(server.key, server.cert, server.chain)

    def engine(
        self,
        check: ClientCertificateCheck | None = None,
        versions: tuple[str, str] = ("1.2", "1.3"),
        fragment_size: int = 1024,
    ) -> EapEngine:
        context = server_context(self.identity, None, versions, [self.ca])
        checker = check or daemons_check(self, self.ca)

        def factory(source: str | None) -> EapTls:
            return EapTls(context, checker, fragment_size)

        return EapEngine([(Type.TLS, factory)], task.Clock(), 30)

    def converse(self, engine: EapEngine, peer: PeapPeer) -> tuple[Result, int]:
        """:func:`converse`, and the conversation is gone from the engine at its end."""
        result, requests = converse(engine, peer)
        self.assertEqual(len(engine), 0)
        return result, requests

    def peer(self, version: int = TLS13, **names: object) -> PeapPeer:
        client = issue_client("carol", **names)  # type: ignore[arg-type]
        return PeapPeer(kind=Type.TLS, certificate=client.pem_pair, max_version=version)

    def test_tls12_keys_and_identity(self):
        """RFC 5216 §2.3: MSK and EMSK are TLS-PRF-128(master, "client EAP encryption",
        randoms) split in halves, Session-Id = 0x0D || client.random || server.random;
        the identity is the certificate's e-mail address, not the EAP-Identity "anon"."""
        peer = self.peer(TLS12, email="carol@example.test")
        result, _ = self.converse(self.engine(), peer)
        self.assertIsInstance(result, Success, result)
        assert isinstance(result, Success)
        self.assertEqual(peer.tls.get_protocol_version_name(), "TLSv1.2")
        material = peer.tls.export_keying_material(b"client EAP encryption", 128)
        self.assertEqual((result.msk, result.emsk), (material[:64], material[64:]))
        self.assertEqual(
            result.session_id, b"\x0d" + peer.tls.client_random() + peer.tls.server_random()
        )
        self.assertEqual(result.identity, "carol@example.test")
        self.assertEqual(result.method, "TLS")
        self.assertEqual(peer.inner, b"")  # TLS 1.2: no application data

    def test_tls13_keys_and_protected_success(self):
        """RFC 9190 §2.3: Key_Material = TLS-Exporter("EXPORTER_EAP_TLS_Key_Material",
        0x0D, 128), Session-Id = 0x0D || TLS-Exporter("EXPORTER_EAP_TLS_Method-Id", 0x0D,
        64); §2.5: the server's last flight carries one octet of application data, 0x00."""
        peer = self.peer(TLS13, dns="laptop7.example.test")
        result, _ = self.converse(self.engine(), peer)
        assert isinstance(result, Success), result
        self.assertEqual(peer.tls.get_protocol_version_name(), "TLSv1.3")
        material = peer.tls.export_keying_material(b"EXPORTER_EAP_TLS_Key_Material", 128, b"\x0d")
        method_id = peer.tls.export_keying_material(b"EXPORTER_EAP_TLS_Method-Id", 64, b"\x0d")
        self.assertEqual((result.msk, result.emsk), (material[:64], material[64:]))
        self.assertEqual(result.session_id, b"\x0d" + method_id)
        self.assertEqual(peer.inner, b"\x00")
        self.assertEqual(result.identity, "laptop7.example.test")

    def test_max_version_12_holds_a_tls13_peer_to_12(self):
        peer = self.peer(TLS13)
        result, _ = self.converse(self.engine(versions=("1.2", "1.2")), peer)
        self.assertIsInstance(result, Success)
        self.assertEqual(peer.tls.get_protocol_version_name(), "TLSv1.2")

    def test_min_version_13_refuses_a_tls12_peer(self):
        result, _ = self.converse(self.engine(versions=("1.3", "1.3")), self.peer(TLS12))
        assert isinstance(result, Failure), result
        self.assertIn("TLS: unsupported protocol", result.reason)

    def test_fragments(self):
        """300-octet fragments: the server's flight (certificate, CertificateRequest)
        goes in several requests, and the exchange still completes."""
        result, requests = self.converse(self.engine(fragment_size=300), self.peer(TLS13))
        self.assertIsInstance(result, Success)
        self.assertGreater(requests, 6)

    def test_untrusted_issuer(self):
        """A certificate from a CA that is not in client_ca: OpenSSL refuses the chain in
        the handshake; the reason names the certificate (subject, serial) and why."""
        other = pki.init_ca(state_dir(self) / "other-ca", "some other CA")
        client = issue_client("mallory", ca_dir=other.cert.parent)
        peer = PeapPeer(kind=Type.TLS, certificate=client.pem_pair, max_version=TLS13)
        result, _ = self.converse(self.engine(), peer)
        assert isinstance(result, Failure), result
        self.assertIn(f"'CN=mallory' serial {client.cert.serial_number:#x}", result.reason)
        self.assertIn("unable to get local issuer certificate", result.reason)

    def test_server_auth_only_certificate(self):
        """An extendedKeyUsage without clientAuth: OpenSSL's own purpose check for a TLS
        client refuses it in the handshake already."""
        peer = self.peer(TLS12, usages=[ExtendedKeyUsageOID.SERVER_AUTH])
        result, _ = self.converse(self.engine(), peer)
        assert isinstance(result, Failure), result
        self.assertIn("'CN=carol' serial", result.reason)
        self.assertIn("unsuitable certificate purpose", result.reason)

    def test_no_client_certificate(self):
        peer = PeapPeer(kind=Type.TLS, max_version=TLS13)
        result, _ = self.converse(self.engine(), peer)
        assert isinstance(result, Failure), result
        self.assertIn("TLS: peer did not return a certificate", result.reason)

    def test_check_refuses(self):
        """The post-handshake check sees the validated chain (the client's certificate,
        then the trust anchor) and its refusal is EAP-Failure with subject and serial."""
        for version in (TLS12, TLS13):
            refuse = Refuse()
            peer = self.peer(version)
            result, _ = self.converse(self.engine(check=refuse), peer)
            assert isinstance(result, Failure), result
            self.assertRegex(result.reason, r"'CN=carol' serial 0x[0-9a-f]+: serial on the deny")
            (chain,) = refuse.seen
            self.assertEqual(chain[0].subject.rfc4514_string(), "CN=carol")
            self.assertEqual(chain[-1], self.ca)
            self.assertEqual(peer.inner, b"")  # no protected success indication was sent


class CertificateCheckTests(unittest.TestCase):
    """The daemon's decision after the handshake: the identity from the certificate, EKU
    rules, and ``vpnaaa deny``'s list."""

    def setUp(self) -> None:
        ca, _ = test_pki()
        self.ca = x509.load_pem_x509_certificate(ca.cert.read_bytes())
        self.deny = DenyList(state_dir(self) / "denied-serials")
        self.check = daemons_check(self, self.ca, self.deny)

    def identity(self, client: x509.Certificate) -> str:
        return self.check.check([client, self.ca]).identity.value

    def test_order_of_names(self):
        both = issue_client("c", email="c@x.test", dns="h.x.test").cert
        self.assertEqual(self.identity(both), "c@x.test")
        self.assertEqual(self.identity(issue_client("c", dns="h.x.test").cert), "h.x.test")
        self.assertEqual(self.identity(issue_client("vpn7.corp.test").cert), "vpn7.corp.test")
        self.assertEqual(self.identity(issue_client("HOST7$").cert), "CN=HOST7$")

    def test_extended_key_usage(self):
        self.assertEqual(self.identity(issue_client("a", usages=[]).cert), "CN=a")
        both = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
        self.assertEqual(self.identity(issue_client("b", usages=both).cert), "CN=b")
        with self.assertRaises(CertificateRejected) as caught:
            self.identity(issue_client("c", usages=[ExtendedKeyUsageOID.SERVER_AUTH]).cert)
        self.assertIn("extendedKeyUsage has neither clientAuth", caught.exception.reason)

    def test_a_denied_serial(self):
        client = issue_client("carol", email="carol@example.test").cert
        self.assertTrue(self.deny.add(client.serial_number))
        with self.assertRaises(CertificateRejected) as caught:
            self.identity(client)
        serial = serial_hex(client.serial_number)
        self.assertEqual(caught.exception.reason, f"serial {serial} is on the deny list")
        self.assertTrue(self.deny.remove(client.serial_number))
        self.assertEqual(self.identity(client), "carol@example.test")
