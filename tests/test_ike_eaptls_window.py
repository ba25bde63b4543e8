"""EAP-TLS over IKEv2 between EAP-Success and the last IKE_AUTH (RFC 7296 §2.16): the
client may wait up to the half-open limit before it sends its AUTH. A serial denied in
that window (`vpnaaa deny`: the admin API's find and disconnect) must not let it in: the
SA is dropped, so its last IKE_AUTH finds nothing, and no session appears."""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from OpenSSL import SSL
from twisted.trial import unittest

from tests.client_certs import issue_client
from tests.ike_peer import Gateway, Initiator, PeerError
from tests.peap_peer import PeapPeer
from tests.support import log_lines, state_dir, test_pki
from tests.test_eap_eaptls import daemons_check
from vpnaaa.certs import DENY_FILE, DenyList, RevocationChecker, serial_hex
from vpnaaa.eap.eaptls import EapTls
from vpnaaa.eap.engine import EapEngine
from vpnaaa.eap.packet import Code, Type
from vpnaaa.eap.tls import server_context
from vpnaaa.pki import load_server_identity


@dataclass
class TlsKeys:
    """What the Initiator's final AUTH needs from its EAP peer: the MSK (RFC 9190 §2.3),
    read from the client's own TLS stack."""

    tls: SSL.Connection
    server_verified: bool = True

    def msk(self) -> bytes:
        return self.tls.export_keying_material(b"EXPORTER_EAP_TLS_Key_Material", 128, b"\x0d")[:64]


class DenyBeforeLastAuthTests(unittest.TestCase):
    def setUp(self) -> None:
        ca, server = test_pki()
        self.ca = x509.load_pem_x509_certificate(ca.cert.read_bytes())
        identity = load_server_identity(server.key, server.cert, server.chain)
        context = server_context(identity, None, ("1.2", "1.3"), [self.ca])
        self.deny = DenyList(state_dir(self) / DENY_FILE)
        self.gateway = gateway = Gateway()
        check = daemons_check(self, self.ca, self.deny)
        engine = EapEngine(
            [(Type.TLS, lambda source: EapTls(context, check))],
            gateway.clock,
            revocation=RevocationChecker(gateway.clock, deny=self.deny),
        )
        gateway.context.profiles[0].eap = engine
        self.log = log_lines(self)

    def eap_tls(self, peer: Initiator) -> PeapPeer:
        """IKE_SA_INIT, the first IKE_AUTH, then EAP-TLS 1.3 to EAP-Success."""
        client = issue_client("carol", email="carol@example.test")
        self.serial = serial_hex(client.cert.serial_number)
        tls = PeapPeer(kind=Type.TLS, certificate=client.pem_pair, max_version=SSL.TLS1_3_VERSION)
        peer.sa_init()
        peer.auth_first()
        assert peer.eap_request is not None
        peer.eap(tls.identity(peer.eap_request, b"carol@example.test"))
        for _ in range(12):
            assert peer.eap_request is not None
            if peer.eap_request[0] == Code.SUCCESS:
                return tls
            peer.eap(tls.answer(peer.eap_request))
        self.fail("EAP-TLS did not succeed")

    def test_denied_after_eap_success(self) -> None:
        peer = Initiator(self.gateway)
        tls = self.eap_tls(peer)
        (sa,) = self.gateway.responder.find(serial=self.serial)  # as the admin API asks
        self.assertIsNotNone(sa.certificate)
        self.assertTrue(self.deny.add(int(self.serial, 16)))
        self.gateway.responder.disconnect(sa, f"by the administrator (serial {self.serial})")
        self.gateway.clock.advance(10)
        peer.eap_peer = TlsKeys(tls.tls)  # type: ignore[assignment]
        with self.assertRaises(PeerError):  # no answer: the SA is gone
            peer.auth_last()
        self.assertEqual(self.gateway.responder.sessions(), [])
        (line,) = [x for x in self.log if "removed before its last IKE_AUTH" in x]
        self.assertIn(f"serial {self.serial}", line)

    def test_not_denied(self) -> None:
        """The control: the same client, nobody denies it, gets its session."""
        peer = Initiator(self.gateway)
        tls = self.eap_tls(peer)
        self.gateway.clock.advance(10)
        peer.eap_peer = TlsKeys(tls.tls)  # type: ignore[assignment]
        peer.auth_last()
        (sa,) = self.gateway.responder.sessions()
        self.assertEqual(sa.certificate.serial, self.serial)
