"""Session resumption (fast reconnect) in the EAP engine: EAP-TLS (RFC 5216 §2.1.3 with TLS
1.2 session IDs, RFC 9190 §2.1.2 with TLS 1.3 stateful tickets) against the pyOpenSSL peer
of tests.peap_peer, offering the session its previous conversation got; the keys compared
with what the peer's own TLS stack exports for the resumed handshake; the certificate check
run again on resumption; the cache's bounds. Interop with wpa_supplicant (eapol_test -r1) is
tests/interop/test_eapol_tls.py."""

from __future__ import annotations

import contextlib
import functools
import gc
import time
from pathlib import Path

from cryptography import x509
from OpenSSL import SSL
from OpenSSL._util import lib
from twisted.internet import task
from twisted.trial import unittest

from tests.client_certs import issue_client
from tests.peap_peer import PeapPeer
from tests.support import state_dir, test_pki
from tests.test_eap_eaptls import TLS12, TLS13, converse, daemons_check
from tests.test_eap_memory import _libc, heap_in_use
from vpnaaa.certs import DenyList
from vpnaaa.eap.authenticator import Failure, Success
from vpnaaa.eap.eaptls import EapTls
from vpnaaa.eap.engine import EapEngine
from vpnaaa.eap.method import MethodError
from vpnaaa.eap.packet import Type
from vpnaaa.eap.tls import (
    ClientHello,
    SessionCache,
    TlsContexts,
    TlsServer,
    client_hello,
    server_context,
)
from vpnaaa.pki import load_server_identity


def resuming(previous: PeapPeer, kind: int = Type.TLS) -> PeapPeer:
    """A peer on ``previous``'s TLS context offering the session it ended with."""
    peer = PeapPeer(kind=kind)
    session = previous.tls.get_session()
    assert session is not None
    previous.tls.set_shutdown(SSL.SENT_SHUTDOWN | SSL.RECEIVED_SHUTDOWN)  # keep it resumable
    peer.tls = SSL.Connection(previous.tls.get_context(), None)
    peer.tls.set_connect_state()
    peer.tls.set_session(session)
    return peer


def resumed(peer: PeapPeer) -> bool:
    return bool(lib.SSL_session_reused(peer.tls._ssl))


class EapTlsResumptionTests(unittest.TestCase):
    def setUp(self) -> None:
        ca, server = test_pki()
        self.ca = x509.load_pem_x509_certificate(ca.cert.read_bytes())
        self.identity = load_server_identity(server.key, server.cert, server.chain)
        self.clock = task.Clock()
        self.clock.advance(1.8e9)  # OpenSSL's own timeouts run on the wall clock
        self.deny = DenyList(state_dir(self) / "denied-serials")

    def engine(self, lifetime: int = 3600, capacity: int | None = 100) -> EapEngine:
        """An EAP-TLS engine with a session cache (None: resumption off)."""

        make = functools.partial(server_context, self.identity, None, VERSIONS, [self.ca])
        contexts: TlsContexts = make()
        if capacity is not None:
            self.sessions: SessionCache[None] = SessionCache(
                make, self.clock.seconds, lifetime, capacity
            )
            contexts = self.sessions
        check = daemons_check(self, self.ca, self.deny)

        def factory(source: str | None) -> EapTls:
            return EapTls(contexts, check)

        return EapEngine([(Type.TLS, factory)], self.clock, 30)

    def first(
        self, engine: EapEngine, version: int, name: str = "carol"
    ) -> tuple[PeapPeer, Success, int]:
        self.client = issue_client(name, email=f"{name}@example.test")
        peer = PeapPeer(kind=Type.TLS, certificate=self.client.pem_pair, max_version=version)
        result, requests = converse(engine, peer)
        assert isinstance(result, Success), result
        self.assertFalse(resumed(peer))
        return peer, result, requests

    def test_tls12_session_id(self):
        """RFC 5216 §2.1.3: the peer offers the session ID; ServerHello, CCS and Finished
        in one request, the peer's Finished, then EAP-Success: 3 requests (Identity, Start,
        that flight) where the full handshake took 6 (its certificate flight in two
        1024-octet fragments, then CCS and Finished). The MSK is the same formula over the
        new randoms (§2.3), the identity the certificate's, as the first time."""
        engine = self.engine()
        peer, full, full_requests = self.first(engine, TLS12)
        again = resuming(peer)
        result, requests = converse(engine, again)
        assert isinstance(result, Success), result
        self.assertTrue(resumed(again))
        self.assertEqual(again.tls.get_protocol_version_name(), "TLSv1.2")
        material = again.tls.export_keying_material(b"client EAP encryption", 128)
        self.assertEqual((result.msk, result.emsk), (material[:64], material[64:]))
        self.assertNotEqual(result.msk, full.msk)
        self.assertEqual(
            result.session_id, b"\x0d" + again.tls.client_random() + again.tls.server_random()
        )
        self.assertEqual(result.identity, "carol@example.test")
        self.assertEqual((full_requests, requests), (6, 3))
        self.assertEqual(len(self.sessions), 1)  # the same session ID, once

    def test_tls13_ticket(self):
        """RFC 9190 §2.1.2: the peer offers a stateful ticket (the cache key, single use);
        no Certificate flight, so fewer requests; the exporter keys of the new handshake;
        and it can resume again with the ticket the resumption gave it."""
        engine = self.engine()
        peer, full, full_requests = self.first(engine, TLS13)
        self.assertEqual(len(self.sessions), 1)  # the last of OpenSSL's two tickets
        for _ in range(2):
            again = resuming(peer)
            result, requests = converse(engine, again)
            assert isinstance(result, Success), result
            self.assertTrue(resumed(again))
            material = again.tls.export_keying_material(
                b"EXPORTER_EAP_TLS_Key_Material", 128, b"\x0d"
            )
            self.assertEqual((result.msk, result.emsk), (material[:64], material[64:]))
            self.assertNotEqual(result.msk, full.msk)
            self.assertEqual(again.inner, b"\x00")  # the protected success indication
            self.assertEqual(result.identity, "carol@example.test")
            self.assertLess(requests, full_requests)
            peer = again

    def test_denied_serial_is_refused_on_resumption(self):
        """RFC 5216 §5.7 / RFC 9190 §5.7: the certificate the session keeps is checked
        again; a serial denied since the first authentication gets EAP-Failure naming it."""
        for version in (TLS12, TLS13):
            engine = self.engine()
            peer, _, _ = self.first(engine, version)
            self.assertTrue(self.deny.add(self.client.cert.serial_number))
            again = resuming(peer)
            result, _ = converse(engine, again)
            assert isinstance(result, Failure), result
            self.assertTrue(resumed(again))
            self.assertIn("'CN=carol'", result.reason)
            self.assertIn("(resumed session): serial", result.reason)
            self.assertIn("is on the deny list", result.reason)
            self.assertTrue(self.deny.remove(self.client.cert.serial_number))

    def test_generations(self):
        """Under steady load resumption keeps working for the newest sessions: with room
        for 4 (two generations of 2), five clients one after the other leave the last
        three resumable (the previous generation's two through its own context, the
        current one's), the first two forgotten with their context (a full handshake),
        and never more than 4 sessions kept. TLS 1.2 session IDs and TLS 1.3 tickets
        alike; a TLS 1.3 client of the previous generation resumes again there with the
        ticket its resumption gave it."""
        for version in (TLS12, TLS13):
            engine = self.engine(capacity=4)
            peers = []
            for name in ("ann", "bob", "cat", "dan", "eve"):
                peers.append(self.first(engine, version, name)[0])
                self.assertLessEqual(len(self.sessions), 4)
            self.assertEqual(len(self.sessions), 3)
            # newest first: a full handshake stores a session, which may start a generation
            expected = (True, True, True, False, False)
            for peer, resumable in zip(peers[::-1], expected, strict=True):
                result, _ = converse(engine, again := resuming(peer))
                assert isinstance(result, Success), result
                self.assertEqual(resumed(again), resumable, version)
                if resumable:
                    result, _ = converse(engine, twice := resuming(again))
                    self.assertTrue(resumed(twice), version)
            self.assertLessEqual(len(self.sessions), 4)

    def test_failed_tls13_handshake_keeps_nothing(self):
        """The tickets OpenSSL makes as a TLS 1.3 handshake ends, before the method
        decides, leave nothing here when the authentication fails (a denied serial), and
        EAP-TLS never sends them: they are in the last flight, held until the verdict.
        The client comes back with a full handshake, refused again."""
        engine = self.engine()
        self.client = issue_client("carol", email="carol@example.test")
        self.assertTrue(self.deny.add(self.client.cert.serial_number))
        peer = PeapPeer(kind=Type.TLS, certificate=self.client.pem_pair, max_version=TLS13)
        result, _ = converse(engine, peer)
        self.assertIsInstance(result, Failure)
        self.assertEqual(len(self.sessions), 0)
        result, _ = converse(engine, again := resuming(peer))
        assert isinstance(result, Failure), result
        self.assertFalse(resumed(again))
        self.assertIn("is on the deny list", result.reason)

    def test_lifetime(self):
        """Entries older than session_lifetime leave the cache, and a generation whose
        sessions all expired is dropped with its context."""
        engine = self.engine(lifetime=60, capacity=2)
        peer, _, _ = self.first(engine, TLS12)
        self.assertIsNotNone(self.sessions.previous)  # full at one: the next is current
        self.assertEqual(len(self.sessions), 1)
        result, _ = converse(engine, again := resuming(peer))
        self.assertIsInstance(result, Success)
        self.assertTrue(resumed(again))
        self.clock.advance(61)
        self.sessions.expire()
        self.assertEqual(len(self.sessions), 0)
        self.assertIsNone(self.sessions.previous)
        peer, _, _ = self.first(engine, TLS12)
        self.assertEqual(len(self.sessions), 1)
        result, _ = converse(engine, again := resuming(peer))
        self.assertIsInstance(result, Success)
        self.assertTrue(resumed(again))

    def test_long_chain_is_refused(self):
        """What a TLS 1.2 session keeps includes every certificate the client sent, so
        EAP-TLS takes at most IKE's 10 (its own and 9 more, here the CA's again and
        again) and refuses more before the session is kept, naming the limit."""
        engine = self.engine()
        client = issue_client("carol", email="carol@example.test")
        ca = test_pki()[0].cert.read_bytes()
        for count, accepted in ((9, True), (10, False)):
            peer = PeapPeer(
                kind=Type.TLS, certificate=client.pem_pair, max_version=TLS12, chain=[ca] * count
            )
            result, _ = converse(engine, peer)
            self.assertEqual(isinstance(result, Success), accepted, result)
        assert isinstance(result, Failure)
        self.assertIn("the client sent 11 certificates", result.reason)
        self.assertIn("at most 10 of 8192", result.reason)
        self.assertEqual(len(self.sessions), 1)

    def test_off(self):
        """Without a cache (resumption = false) an offered session gets a full handshake."""
        engine = self.engine(capacity=None)
        for version in (TLS12, TLS13):
            peer, _, _ = self.first(engine, version)
            result, _ = converse(engine, again := resuming(peer))
            self.assertIsInstance(result, Success)
            self.assertFalse(resumed(again))

    def test_memory_per_session(self):
        """What a cached session costs, measured with glibc's mallinfo2 as
        tests/test_eap_memory.py measures conversations: the heap growth over 100
        authentications with the cache, minus that with resumption off (the conversations
        themselves are freed either way): OpenSSL's SSL_SESSION with the client's
        certificate plus this cache's entry (TLS 1.3: per ticket), so this figure times
        ``session_cache_size`` is its bound in octets (etc/vpnaaa.toml)."""
        libc = _libc()
        gc.collect()
        gc.disable()
        self.addCleanup(gc.enable)
        client = issue_client("carol", email="carol@example.test")
        for version in (TLS12, TLS13):
            growth = {}
            for capacity in (None, 1000):  # None: resumption off, nothing kept
                engine = self.engine(capacity=capacity)
                self.first(engine, version)  # OpenSSL's first-use allocations
                heap = heap_in_use(libc)
                for _ in range(COUNT):
                    peer = PeapPeer(kind=Type.TLS, certificate=client.pem_pair, max_version=version)
                    result, _ = converse(engine, peer)
                    assert isinstance(result, Success), result
                    del peer
                growth[capacity] = heap_in_use(libc) - heap
                if capacity is not None:
                    self.assertEqual(len(self.sessions), 1 + COUNT)
            per_session = (growth[1000] - growth[None]) / COUNT
            self.assertLess(per_session, SESSION_COST, version)
            self.assertGreater(per_session, SESSION_COST / 8, version)  # it measures something


VERSIONS = ("1.2", "1.3")  # the contexts' TLS versions, the default ones
COUNT = 100
SESSION_COST = 8 * 1024  # octets a cached session may hold, as etc/vpnaaa.toml documents


class TicketTests(unittest.TestCase):
    """TLS 1.3: OpenSSL writes two tickets as the handshake ends, before the method
    decides; only the last may be stored, since OpenSSL removes only the connection's
    current session when it ends without success (freed without a shutdown, or after a
    fatal alert). A pyOpenSSL client reads the server's records one at a time to keep
    each ticket."""

    def setUp(self) -> None:
        _, server = test_pki()
        identity = load_server_identity(server.key, server.cert, server.chain)
        make = functools.partial(server_context, identity, None, VERSIONS)
        self.sessions: SessionCache[str] = SessionCache(make, time.time, 3600, 100)
        self.client = SSL.Context(SSL.TLS_CLIENT_METHOD)

    def connect(self, offer: SSL.Session | None = None) -> tuple[TlsServer, list[SSL.Session]]:
        """A TLS 1.3 handshake (resuming ``offer``): the server, and the client's tickets
        in the order they came."""
        server = TlsServer(self.sessions)
        client = SSL.Connection(self.client, None)
        client.set_connect_state()
        if offer is not None:
            client.set_session(offer)
        sessions: list[SSL.Session] = []
        for _ in range(4):
            with contextlib.suppress(SSL.WantReadError):
                client.do_handshake()
            with contextlib.suppress(SSL.WantReadError):  # nothing to send any more
                server.receive(client.bio_read(65536))
            records = server.outgoing()
            while records:  # one record at a time: each ticket replaces the session
                size = 5 + int.from_bytes(records[3:5], "big")
                client.bio_write(records[:size])
                records = records[size:]
                with contextlib.suppress(SSL.WantReadError):
                    client.recv(1)
                session = client.get_session()
                if session is not None and all(session._session != k._session for k in sessions):
                    sessions.append(session)
        client.set_shutdown(SSL.SENT_SHUTDOWN)  # freed without one, it spoils its session
        self.assertTrue(server.established and server.tls13)
        return server, sessions[-2:]  # the tickets (the first session is the handshake's)

    def test_only_the_last_ticket_is_kept(self):
        server, (first, last) = self.connect()
        server.succeeded("carol")
        del server
        self.assertEqual(len(self.sessions), 1)
        again, tickets = self.connect(first)
        self.assertFalse(again.resumed)
        again, tickets = self.connect(last)
        self.assertTrue(again.resumed)
        self.assertEqual(again.restored(), "carol")
        again.succeeded("carol")  # and its last ticket resumes in turn
        self.assertTrue(self.connect(tickets[-1])[0].resumed)

    def test_failure_keeps_no_ticket(self):
        """Dropped after the handshake (a wrong password), or after a fatal alert (a
        record that does not decrypt): neither ticket resumes."""
        for alert in (False, True):
            server, tickets = self.connect()
            if alert:
                with self.assertRaises(MethodError):
                    server.receive(b"\x17\x03\x03\x00\x20" + bytes(32))
            del server
            gc.collect()
            for offer in tickets:
                self.assertFalse(self.connect(offer)[0].resumed, alert)


class ClientHelloTests(unittest.TestCase):
    """:func:`client_hello` on ClientHellos captured from OpenSSL 3.0's s_client resuming
    a session of s_server (``-no_ticket``): ``-sess_out`` after a first connection, then
    ``-sess_in`` to a socket that kept the first flight. The expected session ID is what
    ``openssl sess_id -text`` printed for the saved TLS 1.2 session; the TLS 1.3 hello's
    is the random one of the middlebox compatibility mode (RFC 8446 §D.4), read off the
    capture at its fixed offset (octets 44-75, after its length octet 32)."""

    def hello(self, name: str) -> bytes:
        return (Path(__file__).parent / "data" / name).read_bytes()

    def test_tls12(self):
        hello = self.hello("client-hello-tls12-resuming.bin")
        session_id = bytes.fromhex(
            "88CF197BC30ABCE0AF3A7B1DD451D9794A20BAB1C83A5E9D0378F8EC2A0314DE"
        )
        self.assertEqual(client_hello(hello), ClientHello(session_id, tls13=False))
        self.assertEqual(client_hello(hello).offered, {session_id})

    def test_tls13(self):
        """The ticket in pre_shared_key, as ``openssl sess_id -text`` printed it (a
        stateful ticket: 32 octets); the random legacy_session_id is no offer."""
        hello = self.hello("client-hello-tls13-resuming.bin")
        ticket = bytes.fromhex("13f17867e823f9b4671d48cbfb3a86bebb8a30762184334e7240b1b431ffa67f")
        self.assertEqual(hello[43], 32)
        parsed = client_hello(hello)
        self.assertEqual(parsed, ClientHello(hello[44:76], True, (ticket,)))
        self.assertEqual(parsed.offered, {ticket})

    def test_split_across_records(self):
        """RFC 8446 §5.1: a handshake message may span records."""
        hello = self.hello("client-hello-tls13-resuming.bin")
        message = hello[5:]
        records = b"".join(
            hello[:3] + len(part).to_bytes(2, "big") + part
            for part in (message[:50], message[50:51], message[51:])
        )
        self.assertEqual(client_hello(records), client_hello(hello))

    def test_cut_or_garbled(self):
        """Any prefix, and any one octet changed, never raises (the edge must not)."""
        hello = self.hello("client-hello-tls13-resuming.bin")
        for end in range(len(hello)):
            self.assertIsInstance(client_hello(hello[:end]), ClientHello)
        for position in range(len(hello)):
            for value in (0x00, 0xFF):
                garbled = hello[:position] + bytes([value]) + hello[position + 1 :]
                self.assertIsInstance(client_hello(garbled), ClientHello)
        self.assertEqual(client_hello(b"\x17\x03\x03\x00\x01\x01"), ClientHello())
