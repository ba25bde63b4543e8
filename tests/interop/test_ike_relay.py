"""vpnaaa's IKEv2 responder relaying EAP to an external RADIUS server (the "ASA + ISE" topology).

strongSwan's charon (EAP-MSCHAPv2, user alice) runs in a network namespace as in
:mod:`tests.interop.test_ike_charon`; vpnaaa runs in this process with ``[ike] backend =
"radius"`` and no users of its own; the RADIUS server is a private FreeRADIUS 3 on 127.0.0.1
(:mod:`tests.interop.freeradius`) that knows alice and proposes EAP-MSCHAPv2. So charon's
EAP goes to FreeRADIUS through vpnaaa's :class:`~vpnaaa.radius.client.RadiusRelay`, and the
IKE AUTH payloads both sides check are computed from the MSK FreeRADIUS sent in its
MS-MPPE keys. The tests check what charon reports, the CHILD_SA keys vpnaaa's null installer
recorded against those charon logged, what FreeRADIUS logged (auth logging on, no
reject_delay), and that a failed authentication leaves vpnaaa no IKE SA and no lease.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Generator
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from tests.interop import charon, freeradius
from tests.interop.test_ike_charon import assert_established
from tests.support import add_users, state_dir, write_config
from vpnaaa import config as configuration
from vpnaaa import mschap, pki
from vpnaaa.eap import packet
from vpnaaa.eap.authenticator import Challenge, Success
from vpnaaa.eap.packet import Code, Type
from vpnaaa.radius.client import RadiusRelay
from vpnaaa.service import make_service

POOL = "10.99.8.0/24"
SECRET = "relay-test-secret"
USERS = {"alice": "wonderland"}
# charon's line for the IKE_AUTH response that ends the EAP exchange with an EAP-Failure
EAP_FAILURE = re.compile(r"parsed IKE_AUTH response \d+ \[ EAP/FAIL N\(AUTH_FAILED\) \]")


def start_radius(
    case: unittest.TestCase, state: Path, **options: Any
) -> defer.Deferred[freeradius.FreeRadius]:
    """A private FreeRADIUS for the relay: EAP-MSCHAPv2, no reject delay, an auth log."""
    return freeradius.start_freeradius(
        case,
        state / "freeradius",
        SECRET,
        USERS,
        default_eap_type="mschapv2",
        reject_delay=0,
        auth_log=True,
        **options,
    )


class RelayTestCase(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def setUp(self) -> Generator[defer.Deferred[Any], Any, None]:
        reason = charon.unavailable() or freeradius.unavailable()
        if reason:
            raise unittest.SkipTest(reason)
        if os.geteuid() != 0:
            raise unittest.SkipTest("network namespaces need root")
        self.state = state_dir(self)
        add_users(self.state, {})  # vpnaaa knows nobody: only FreeRADIUS can say yes
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.netns = yield charon.make_netns(self)
        gateway = self.netns.gateway_address
        pki.init_ca(self.state / "ca")
        pki.issue_server(self.state / "ca", self.state / "pki", gateway)
        self.ca = self.state / "ca" / "ca.pem"

    def start_radius(self, **options: Any) -> defer.Deferred[freeradius.FreeRadius]:
        return start_radius(self, self.state, **options)

    def start_gateway(self, port: int, timeout: float = 2.0, tries: int = 3, ike: str = "") -> None:
        """``ike``: more [ike] lines."""
        text = (
            f'[general]\nstate_dir = "{self.state}"\nlog_level = "debug"\n'
            f"[radius]\nenabled = false\n[admin]\nenabled = false\n"
            f'[ike]\nenabled = true\ninstaller = "null"\nlisten = "{self.netns.gateway_address}"\n'
            f'pool = "{POOL}"\nbackend = "radius"\n{ike}'
            f'[ike.radius]\nserver = "{freeradius.LOOPBACK}"\nport = {port}\n'
            f'secret = "{SECRET}"\ntimeout = {timeout}\ntries = {tries}\n'
            f'nas_identifier = "vpnaaa-relay-test"\n'
        )
        path = write_config(self.state / "vpnaaa.toml", text)
        self.daemon = make_service(configuration.load(path))
        self.addCleanup(self.daemon.stopService)
        self.daemon.startService()
        assert self.daemon.ike is not None and self.daemon.ike.relay is not None
        self.responder = self.daemon.ike.responder
        self.installer = self.responder.installer

    @defer.inlineCallbacks
    def connect(self, **initiator: Any) -> Generator[defer.Deferred[Any], Any, Any]:
        role = charon.Initiator(gateway=self.netns.gateway_address, ca_cert=self.ca, **initiator)
        client = yield charon.start_charon(self, self.state / "charon", self.netns.name, role)
        result = yield client.initiate()
        return client, result

    def log_lines(self, namespace: str) -> list[tuple[float, str]]:
        """(time, text) of the vpnaaa events logged in ``namespace`` during the test."""
        return [
            (event["log_time"], formatEvent(event))
            for event in self.events
            if event.get("log_namespace") == namespace
        ]

    def assert_eap_failure(self, client: charon.Charon) -> None:
        """charon's IKE_AUTH ended with an EAP-Failure (and AUTHENTICATION_FAILED)."""
        log = client.log_text()
        self.assertRegex(log, EAP_FAILURE)
        self.assertIn("received AUTHENTICATION_FAILED notify error", log)
        self.assertNotIn("IKE_SA vpnaaa[1] established", log)

    def assert_nothing_kept(self) -> None:
        self.assertEqual(self.installer.installed, {})
        self.assertEqual(self.responder.sas, {})
        self.assertEqual(self.responder.context.pool.leased, 0)
        self.assertEqual(len(self.daemon.ike.relay), 0)


class RelayTests(RelayTestCase):
    @defer.inlineCallbacks
    def test_established_through_freeradius(self):
        """FreeRADIUS says yes; the IKE_SA and CHILD_SA come up with a pool address and the
        CHILD_SA keys (RFC 7296 §2.17) equal charon's."""
        radius = yield self.start_radius()
        self.start_gateway(radius.port)
        client, result = yield self.connect()
        if not result.ok:
            self.fail(result.output + client.tail() + "\nFreeRADIUS:\n" + radius.tail())
        yield assert_established(self, client, self.installer, "10.99.8.")
        self.assertEqual(self.responder.context.pool.leased, 1)
        self.assertIn("EAP method EAP_MSCHAPV2 succeeded, MSK established", client.log_text())
        self.assertIn("Login OK: [alice] (from client loopback", radius.log_text())
        self.assertEqual(len(self.daemon.ike.relay), 0)  # the conversation is over
        sa_lines = [text for _, text in self.log_lines("vpnaaa.ike")]
        self.assertIn("EAP-RADIUS succeeded for 'alice'", "\n".join(sa_lines))

    @defer.inlineCallbacks
    def test_session_timeout_and_class_from_freeradius(self):
        """FreeRADIUS's Access-Accept carries Session-Timeout (RFC 2865 §5.27) and Class
        (§5.25): the session keeps the Class (for accounting to echo) and ends at the
        timeout with a DELETE charon receives."""
        radius = yield self.start_radius(
            replies={"alice": ["Session-Timeout = 3", 'Class = "ise-session-7"']}
        )
        self.start_gateway(radius.port)
        client, result = yield self.connect()
        if not result.ok:
            self.fail(result.output + client.tail() + "\nFreeRADIUS:\n" + radius.tail())
        (sa,) = self.responder.sas.values()
        self.assertEqual(
            (sa.authorization.session_timeout, sa.authorization.classes), (3, (b"ise-session-7",))
        )
        for _ in range(200):  # 3 s, the DELETE's round trip, a loaded machine
            if not self.responder.sas:
                break
            yield charon.sleep(0.05)
        self.assertEqual(self.responder.sas, {})
        ends = [text for _, text in self.log_lines("vpnaaa.ike") if " ended: " in text]
        self.assertIn("ended: session timeout", ends[0])
        self.assertIn("received DELETE for IKE_SA vpnaaa[1]", client.log_text(), client.tail())

    @defer.inlineCallbacks
    def test_framed_ip_address_outside_the_pool(self):
        """FreeRADIUS's Access-Accept carries a Framed-IP-Address (RFC 2865 §5.8) outside
        the pool, in [ike] framed_networks: charon gets that address, leased as framed."""
        radius = yield self.start_radius(replies={"alice": ["Framed-IP-Address = 10.42.7.77"]})
        self.start_gateway(radius.port, ike='framed_networks = ["10.42.7.0/24"]\n')
        client, result = yield self.connect()
        if not result.ok:
            self.fail(result.output + client.tail() + "\nFreeRADIUS:\n" + radius.tail())
        yield assert_established(self, client, self.installer, "10.42.7.77")
        pool = self.responder.context.pool
        self.assertEqual((pool.framed_usage().leased, pool.usage().leased), (1, 0))
        result = yield client.terminate()
        self.assertTrue(result.ok, result.output)
        self.assertEqual(pool.leased, 0)

    @defer.inlineCallbacks
    def test_wrong_password(self):
        """FreeRADIUS rejects; charon sees the EAP-MSCHAPv2 failure, vpnaaa keeps nothing."""
        radius = yield self.start_radius()
        self.start_gateway(radius.port)
        client, result = yield self.connect(password="not-wonderland")
        self.assertFalse(result.ok)
        self.assertIn("server requested EAP_MSCHAPV2 authentication", client.log_text())
        self.assert_eap_failure(client)
        self.assertIn("Login incorrect (mschap: ", radius.log_text())
        self.assertIn(": [alice] (from client loopback", radius.log_text())
        self.assertNotIn("Login OK", radius.log_text())
        ike_log = "\n".join(text for _, text in self.log_lines("vpnaaa.ike"))
        self.assertIn("EAP failed for 'alice': ACCESS_REJECT from 127.0.0.1", ike_log)
        self.assertEqual(self.log_lines("vpnaaa.radius"), [])
        self.assert_nothing_kept()

    @defer.inlineCallbacks
    def test_radius_server_not_running(self):
        """Nobody listens on the RADIUS port: after timeout x tries (0.5 s x 2) the relay
        gives up with one log line, and charon gets an EAP-Failure (before it retransmits)."""
        (port,) = freeradius.free_udp_ports(1)
        self.start_gateway(port, timeout=0.5, tries=2)
        started = reactor.seconds()
        client, result = yield self.connect()
        elapsed = reactor.seconds() - started
        self.assertFalse(result.ok)
        self.assert_eap_failure(client)
        radius_lines = self.log_lines("vpnaaa.radius")
        expected = f"RADIUS server 127.0.0.1:{port}: no answer after 2 tries of 0.5 s"
        self.assertEqual([text for _, text in radius_lines], [expected])
        # From the IKE_AUTH carrying the EAP-Response/Identity (the relay's first
        # Access-Request) to giving up: timeout x tries.
        (failed_at, _) = radius_lines[0]
        identity_at = max(
            at
            for at, text in self.log_lines("vpnaaa.ike")
            if "decrypted IKE_AUTH request" in text and "[ EAP ]" in text and at < failed_at
        )
        self.assertGreaterEqual(failed_at - identity_at, 0.99)
        self.assertLess(failed_at - identity_at, 1.5)
        # charon got its answer before its first retransmission (2 s).
        self.assertNotIn("retransmit", client.log_text())
        self.assertLess(elapsed, 5.0)
        ike_log = "\n".join(text for _, text in self.log_lines("vpnaaa.ike"))
        self.assertIn("EAP failed for 'alice': no answer after 2 tries of 0.5 s", ike_log)
        self.assert_nothing_kept()


class MsChapV2Peer:
    """The peer side of EAP-MSCHAPv2 (draft-kamath-pppext-eap-mschapv2-02, RFC 2759) for
    one conversation: answers the relay's Identity request and FreeRADIUS's requests."""

    def __init__(self, user: str, password: str) -> None:
        self.user = user.encode()
        self.password_hash = mschap.nt_password_hash(password)
        self.nt_response = b""

    def answer(self, request: bytes) -> bytes:
        parsed = packet.parse(request)
        if parsed.type == Type.IDENTITY:
            data = self.user
        elif parsed.data[0] == MSCHAPV2_CHALLENGE:
            ms_id, challenge = parsed.data[1], parsed.data[5:21]
            peer_challenge = os.urandom(16)
            self.nt_response = mschap.generate_nt_response(
                challenge, peer_challenge, self.user, self.password_hash
            )
            value = bytes([49]) + peer_challenge + bytes(8) + self.nt_response + b"\x00"
            value += self.user
            data = struct.pack("!BBH", 2, ms_id, 4 + len(value)) + value
        else:  # Success Request: acknowledge it
            data = bytes([MSCHAPV2_SUCCESS])
        return packet.Packet(Code.RESPONSE, parsed.identifier, parsed.type, data).encode()

    def keys(self) -> bytes:
        """The peer's send key then receive key (RFC 3079 §3.4): the server's receive and
        send keys, which the relay's MSK must start with."""
        master = mschap.master_key(self.password_hash, self.nt_response)
        return mschap.asymmetric_start_key(
            master, is_send=True, is_server=False
        ) + mschap.asymmetric_start_key(master, is_send=False, is_server=False)


MSCHAPV2_CHALLENGE = 1
MSCHAPV2_SUCCESS = 3
IN_FLIGHT = 600  # well over the 256 Identifiers one source port has


class RelayConcurrencyTests(unittest.TestCase):
    """Issue 9, item 6: the relay with hundreds of EAP requests in flight at once against
    a private FreeRADIUS (EAP-MSCHAPv2). FreeRADIUS tells requests apart by source port
    and Identifier (RFC 5080 §2.2.2): one port could carry 256 of them."""

    timeout = 120

    @defer.inlineCallbacks
    def setUp(self) -> Generator[defer.Deferred[Any], Any, None]:
        reason = freeradius.unavailable()
        if reason:
            raise unittest.SkipTest(reason)
        self.state = state_dir(self)
        self.radius = yield start_radius(self, self.state)

    def relay(self, **options: Any) -> RadiusRelay:
        server = (freeradius.LOOPBACK, self.radius.port)
        relay = RadiusRelay(server, SECRET.encode(), reactor, timeout=10.0, tries=2, **options)
        port = reactor.listenUDP(0, relay, interface=freeradius.LOOPBACK)
        self.addCleanup(port.stopListening)
        return relay

    @defer.inlineCallbacks
    def authenticate(
        self, relay: RadiusRelay, peer: MsChapV2Peer, conversation: bytes, first: Any
    ) -> Generator[defer.Deferred[Any], Any, Any]:
        request = first
        while isinstance(request, Challenge):
            _, request = yield relay.step(conversation, peer.answer(request.eap))
        return request

    @defer.inlineCallbacks
    def run_all(self, relay: RadiusRelay) -> Generator[defer.Deferred[Any], Any, list[Any]]:
        """IN_FLIGHT conversations from distinct addresses; all their Identity responses are
        relayed before the reactor runs again."""
        peers = [MsChapV2Peer("alice", USERS["alice"]) for _ in range(IN_FLIGHT)]
        runs = []
        for i, peer in enumerate(peers):
            conversation, first = relay.begin(f"198.51.{i // 250}.{i % 250}")
            runs.append(self.authenticate(relay, peer, conversation, first))
        self.in_flight = (relay.outstanding, relay.queued)
        results = yield defer.gatherResults(runs)
        for peer, result in zip(peers, results, strict=True):
            # FreeRADIUS's Access-Accept, its MS-MPPE keys those this peer derived
            self.assertIsInstance(result, Success, getattr(result, "reason", ""))
            self.assertEqual(result.msk[:32], peer.keys())
        self.assertEqual((len(relay), relay.outstanding, relay.queued), (0, 0, 0))
        return results

    @defer.inlineCallbacks
    def test_600_in_flight_over_four_source_ports(self):
        relay = self.relay(source_ports=4)
        yield self.run_all(relay)
        self.assertEqual(self.in_flight, (IN_FLIGHT, 0))

    @defer.inlineCallbacks
    def test_one_source_port_queues_the_rest(self):
        """256 outstanding, the other 344 wait for Identifiers and still succeed."""
        relay = self.relay(source_ports=1, max_queue=IN_FLIGHT)
        yield self.run_all(relay)
        self.assertEqual(self.in_flight, (256, IN_FLIGHT - 256))
