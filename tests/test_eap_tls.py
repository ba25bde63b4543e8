"""EAP-TLS framing (RFC 5216 §3.1-3.2) and PEAP's handling of bad peers."""

import struct

from OpenSSL import SSL
from twisted.trial import unittest

from tests.peap_peer import PeapPeer
from tests.support import directory, test_pki
from vpnaaa.eap.method import MethodError
from vpnaaa.eap.mschapv2 import MsChapV2
from vpnaaa.eap.packet import Type
from vpnaaa.eap.peap import Peap, parse_tlvs, tlv
from vpnaaa.eap.tls import (
    FLAG_LENGTH,
    FLAG_MORE,
    FLAG_START,
    Framing,
    TlsServer,
    server_context,
)
from vpnaaa.pki import load_server_identity


class FramingTests(unittest.TestCase):
    def test_start(self):
        self.assertEqual(Framing(100).start(), bytes([FLAG_START]))

    def test_unfragmented_message_has_no_length(self):
        framing = Framing(100)
        framing.queue(b"x" * 100)
        self.assertEqual(framing.next_fragment(), b"\x00" + b"x" * 100)
        self.assertFalse(framing.sending)

    def test_fragments_carry_length_on_the_first_and_more_on_all_but_the_last(self):
        framing = Framing(100)
        message = bytes(range(250))
        framing.queue(message)
        first = framing.next_fragment()
        self.assertEqual(first[0], FLAG_LENGTH | FLAG_MORE)
        self.assertEqual(struct.unpack("!I", first[1:5])[0], 250)
        second, third = framing.next_fragment(), framing.next_fragment()
        self.assertEqual(second[0], FLAG_MORE)
        self.assertEqual(third[0], 0)
        self.assertEqual(first[5:] + second[1:] + third[1:], message)

    def test_reassembly(self):
        framing = Framing(100)
        self.assertIsNone(
            framing.receive(bytes([FLAG_LENGTH | FLAG_MORE]) + struct.pack("!I", 6) + b"abc")
        )
        self.assertEqual(framing.ack(), b"\x00")
        self.assertEqual(framing.receive(b"\x00def"), b"abcdef")
        self.assertEqual(framing.receive(b"\x00"), b"")  # a bare ACK

    def test_overlong_and_malformed_fragments(self):
        framing = Framing(100)
        framing.receive(bytes([FLAG_LENGTH | FLAG_MORE]) + struct.pack("!I", 4) + b"abc")
        self.assertRaises(MethodError, framing.receive, b"\x40xyz")
        self.assertRaises(MethodError, Framing(100).receive, b"")
        self.assertRaises(MethodError, Framing(100).receive, bytes([FLAG_LENGTH]) + b"\x00")
        self.assertRaises(
            MethodError, Framing(100).receive, bytes([FLAG_LENGTH]) + struct.pack("!I", 1 << 30)
        )

    def test_endless_fragments_are_bounded(self):
        framing = Framing(1000)
        with self.assertRaises(MethodError):
            for _ in range(100):
                framing.receive(bytes([FLAG_MORE]) + bytes(1000))


class TlvTests(unittest.TestCase):
    def test_result_tlv_layout(self):
        """[MS-PEAP] §2.2.8.1: M bit, type 3, length 2, status 1 = success."""
        self.assertEqual(tlv(3, b"\x00\x01"), bytes.fromhex("8003000200 01".replace(" ", "")))
        self.assertEqual(parse_tlvs(bytes.fromhex("800300020001")), {3: b"\x00\x01"})
        self.assertRaises(MethodError, parse_tlvs, bytes.fromhex("80030004 0001".replace(" ", "")))


class PeapBadPeerTests(unittest.TestCase):
    def setUp(self):
        _, server = test_pki()
        context = server_context(load_server_identity(server.key, server.cert, server.chain))
        self.peap = Peap(
            context, [(Type.MSCHAPV2, lambda source: MsChapV2(directory(), source=source))], 300
        )
        self.peap.start(1)

    def test_garbage_instead_of_a_client_hello(self):
        with self.assertRaises(MethodError) as caught:
            self.peap.process(b"\x00" + b"\x16\x03\x01\x00\x05garbage-not-tls", 2)
        self.assertIn("TLS", str(caught.exception))

    def test_incomplete_tls_flight_fails(self):
        """A whole EAP-TLS message holding half a ClientHello: TLS would wait for more
        records, but a peer must send whole flights, so the method fails (no hang)."""
        with self.assertRaises(MethodError):
            self.peap.process(b"\x00\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 2)

    def test_empty_response_during_handshake(self):
        self.assertRaises(MethodError, self.peap.process, b"\x00", 2)


class TlsServerPolicyTests(unittest.TestCase):
    """The PEAP TLS server against a pyOpenSSL client (tests.peap_peer) on memory BIOs."""

    def setUp(self):
        _, server = test_pki()
        self.server = TlsServer(
            server_context(load_server_identity(server.key, server.cert, server.chain))
        )

    def handshake(self, ciphers: bytes | None = None) -> PeapPeer:
        peer = PeapPeer(ciphers)
        while not self.server.established:
            self.server.receive(peer.flight())
            peer.tls.bio_write(self.server.outgoing())
        peer.flight()
        self.assertTrue(self.server.established)
        self.assertTrue(peer.established)
        return peer

    def test_renegotiation_is_refused(self):
        """A client-initiated renegotiation in the tunnel gets the no_renegotiation alert
        (RFC 5246 §7.2.2) and no new handshake; nothing reaches phase 2."""
        peer = self.handshake()
        peer.tls.renegotiate()
        peer.established = False
        self.assertEqual(self.server.receive(peer.flight()), b"")
        peer.tls.bio_write(self.server.outgoing())
        with self.assertRaises(SSL.Error) as caught:
            peer.tls.recv(100)
        self.assertIn("no renegotiation", str(caught.exception))
        self.assertEqual(self.server.connection.total_renegotiations(), 0)

    def test_client_preference_is_overridden(self):
        """The client prefers the CBC suite; the server's order picks AES-256-GCM."""
        self.handshake(b"ECDHE-RSA-AES256-SHA384:ECDHE-RSA-AES256-GCM-SHA384")
        self.assertEqual(self.server.connection.get_cipher_name(), "ECDHE-RSA-AES256-GCM-SHA384")

    def test_empty_phase_2_message_is_no_data(self):
        """A bare ACK where phase 2 data is due: no exception out of the TLS layer (it used
        to raise WantReadError past the method)."""
        self.handshake()
        self.assertEqual(self.server.receive(b""), b"")
