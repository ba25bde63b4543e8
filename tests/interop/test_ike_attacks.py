"""The IKE edge attacked on the wire from a second address (RFC 7296 §1.2, §2.1, §2.6).

charon connects from its namespace as the victim; the attacker has a namespace and an
address of its own, routed to the gateway like any host on the Internet, and sees what an
on-path observer sees in clear (the IKE header: SPIs and message IDs). vpnaaa runs in this
process; the flood comes from a separate process (tests/interop/ike_flood.py) so that it
loads the gateway, not the test's reactor. RADIUS Status-Server (RFC 5997) answers, timed
from here every 100 ms, show whether the shared reactor ever stalls.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import resource
import struct
import sys
import time
from collections.abc import Generator
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.internet.protocol import DatagramProtocol

from tests.interop import charon
from tests.interop.ike_flood import request
from tests.interop.test_ike_charon import POOL, CharonTestCase
from tests.support import SECRET, ports, write_config
from vpnaaa import config as configuration
from vpnaaa.ike import transforms
from vpnaaa.ike.const import DhGroup, ExchangeType, HeaderFlag
from vpnaaa.ike.message import Header, decode_message, encode_message
from vpnaaa.ike.protocol import HALF_OPEN_TIMEOUT, NON_ESP_MARKER
from vpnaaa.service import make_service

STATUS_SERVER = 12
MESSAGE_AUTHENTICATOR = 80
FLOOD = 30_000  # IKE_SA_INIT requests from the attacker's one address


class Listener(DatagramProtocol):
    """A UDP socket that keeps what it receives (the attacker's view of our answers)."""

    def __init__(self) -> None:
        self.received: list[bytes] = []

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received.append(data)


class StatusProbe(DatagramProtocol):
    """RFC 5997 Status-Server every ``interval`` seconds with Message-Authenticator
    (RFC 3579 §3.2, written out here from the RFCs); records each round trip."""

    def __init__(self, port: int, interval: float = 0.1) -> None:
        self.target = ("127.0.0.1", port)
        self.interval = interval
        self.sent: dict[int, float] = {}
        self.rtts: list[float] = []
        self.ident = 0
        self.loop = task.LoopingCall(self.ask)

    def startProtocol(self) -> None:
        self.loop.start(self.interval)

    def stopProtocol(self) -> None:
        if self.loop.running:
            self.loop.stop()

    def ask(self) -> None:
        self.ident = (self.ident + 1) % 256
        authenticator = os.urandom(16)
        attribute = struct.pack("!BB", MESSAGE_AUTHENTICATOR, 18) + bytes(16)
        head = struct.pack("!BBH", STATUS_SERVER, self.ident, 20 + len(attribute))
        unsigned = head + authenticator + attribute
        mac = hmac.new(SECRET.encode(), unsigned, hashlib.md5).digest()
        self.sent[self.ident] = time.monotonic()
        self.transport.write(unsigned[:-16] + mac, self.target)

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        started = self.sent.pop(data[1], None)
        if started is not None:
            self.rtts.append(time.monotonic() - started)

    def worst(self) -> float:
        """The longest wait: a round trip, or a question still unanswered."""
        now = time.monotonic()
        return max([*self.rtts, *(now - t for t in self.sent.values())], default=0.0)


class AttackTestCase(CharonTestCase):
    timeout = 240

    @defer.inlineCallbacks
    def setUp(self) -> Generator[defer.Deferred[Any], Any, None]:
        yield super().setUp()
        self.attacker = yield charon.make_netns(self)
        via = self.attacker.gateway_address
        yield self.attacker.run([charon.IP, "route", "add", "default", "via", via])

    def start_gateway(self, extra: str = "", eap: str = "") -> None:
        """vpnaaa with IKE on the victim's link and RADIUS on loopback (the probe)."""
        text = (
            f'[general]\nstate_dir = "{self.state}"\nlog_level = "info"\n'
            '[radius]\nlisten = "127.0.0.1"\nauth_port = 0\nacct_port = 0\n'
            f'[[radius.clients]]\nname = "probe"\naddress = "127.0.0.1"\nsecret = "{SECRET}"\n'
            "[admin]\nenabled = false\n"
            f"[eap]\n{eap}\n"
            f'[ike]\nenabled = true\ninstaller = "null"\nlisten = "{self.netns.gateway_address}"\n'
            f'pool = "{POOL}"\n{extra}\n'
        )
        path = write_config(self.state / "vpnaaa.toml", text)
        self.daemon = make_service(configuration.load(path))
        self.addCleanup(self.daemon.stopService)
        self.daemon.startService()
        self.responder = self.daemon.ike.responder
        self.installer = self.responder.installer

    def attacker_socket(self, port: int = 500) -> tuple[Listener, Any]:
        """A UDP socket on the attacker's own address, in its namespace."""
        listener = Listener()
        with self.attacker.entered(gateway=False):
            udp = reactor.listenUDP(port, listener, interface=self.attacker.client_address)
        self.addCleanup(udp.stopListening)
        return listener, udp

    @defer.inlineCallbacks
    def victim(self) -> Generator[defer.Deferred[Any], Any, tuple[charon.Charon, Any]]:
        """charon connected; the gateway's one SA."""
        client, result = yield self.connect()
        self.assertTrue(result.ok, result.output + client.tail())
        (sa,) = self.responder.sas.values()
        return client, sa


class HijackAndReflectionTests(AttackTestCase):
    @defer.inlineCallbacks
    def test_sa_init_with_the_victims_spis_changes_nothing(self):
        """Item 1 of the hijack: a clear IKE_SA_INIT naming the established SA's SPIs and
        next message ID, from the attacker's address, on both ports. Before the fix it
        got fresh keys for the victim's SA; now it gets no answer, and the victim's SA
        keeps its keys, its address, and keeps working (a CHILD_SA rekey by charon)."""
        self.start_gateway()
        client, sa = yield self.victim()
        keys, remote = sa.crypto.keys, sa.remote
        listener, udp = self.attacker_socket()
        _, ke = transforms.group_for(DhGroup.CURVE25519).generate()
        template = decode_message(request(os.urandom(8), ke, os.urandom(32)))
        for message_id in (sa.next_message_id, 0):
            header = Header(
                sa.spi_i, sa.spi_r, ExchangeType.IKE_SA_INIT, HeaderFlag.INITIATOR, message_id
            )
            forged = encode_message(header, list(template.payloads))
            udp.write(forged, (self.netns.gateway_address, 500))
            udp.write(NON_ESP_MARKER + forged, (self.netns.gateway_address, 4500))
        yield charon.sleep(1.0)
        self.assertEqual(listener.received, [])
        self.assertIs(sa.crypto.keys, keys)
        self.assertEqual(sa.remote, remote)
        result = yield client.swanctl("--rekey", "--child", client.conn)
        yield charon.sleep(1.0)
        (after,) = yield client.list_sas()
        self.assertEqual(after.state, "ESTABLISHED", result)
        self.assertEqual(len(self.installer.installed), 1)
        self.assertEqual(self.responder.sas, {sa.spi_r: sa})

    @defer.inlineCallbacks
    def test_replayed_request_is_not_reflected(self):
        """Item 3: the victim's last request, replayed from the attacker's address, gets
        at most as many octets as it carried; anything else with the SA's SPIs and last
        message ID (a probe for the stored response) gets nothing."""
        self.start_gateway()
        seen: list[tuple[bytes, Any]] = []
        receive = self.responder.receive

        def recording(data, remote, port):  # what an on-path observer captures
            seen.append((data, port.number))
            receive(data, remote, port)

        self.responder.receive = recording
        _, sa = yield self.victim()
        last, port = seen[-1]
        self.assertEqual(decode_message(last).header.message_id, sa.next_message_id - 1)
        listener, udp = self.attacker_socket(port)
        marker = NON_ESP_MARKER if port == 4500 else b""
        udp.write(marker + last, (self.netns.gateway_address, port))
        probe = bytearray(last)
        probe[-1] ^= 0xFF  # same header, another datagram
        udp.write(marker + bytes(probe), (self.netns.gateway_address, port))
        yield charon.sleep(1.0)
        self.assertLessEqual(sum(len(d) for d in listener.received), len(marker + last))
        self.assertEqual(sa.remote.host, self.netns.client_address)


class FloodTests(AttackTestCase):
    @defer.inlineCallbacks
    def test_half_open_flood_from_one_address(self):
        """Items 2 and 4: tens of thousands of IKE_SA_INITs from one real address that
        answers cookies (limits raised so that they all make state): the reactor never
        stalls for a second, while they are made and while they expire together (the
        quadratic expiry stalled it for 15 s at 16,000); memory stays bounded; charon
        connects during the flood and after it."""
        self.start_gateway(
            "cookie_threshold = 1000\nhalf_open_per_source = 1000000\nhalf_open_limit = 50000\n"
            "init_rate_per_source = 1000000\n"
        )
        probe = StatusProbe(ports(self.daemon)[0])
        probe_port = reactor.listenUDP(0, probe, interface="127.0.0.1")
        self.addCleanup(probe_port.stopListening)
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        argv = [sys.executable, "-m", "tests.interop.ike_flood"]
        argv += ["--gateway", self.netns.gateway_address, "--count", str(FLOOD), "--rate", "1500"]
        flood = self.attacker.run(argv)
        yield charon.sleep(3.0)
        client, result = yield self.connect()  # during the flood
        self.assertTrue(result.ok, result.output + client.tail())
        self.assertIn("received COOKIE notify", client.log_text())
        output, _ = yield flood
        counts = json.loads(output.strip().splitlines()[-1])
        self.assertEqual(counts["sent"], FLOOD)
        self.assertGreater(counts["cookies"], FLOOD // 2, counts)
        self.assertGreater(counts["created"], FLOOD * 9 // 10, counts)
        peak = self.responder.half_open
        self.assertGreater(peak, FLOOD * 9 // 10)
        yield charon.sleep(HALF_OPEN_TIMEOUT + 2)  # every flood SA expires meanwhile
        self.assertEqual(self.responder.half_open, 0)
        self.assertEqual(len(self.responder.sas), 1)  # charon's
        self.assertLess(probe.worst(), 1.0, sorted(probe.rtts)[-5:])
        self.assertGreater(len(probe.rtts), 300)
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
        self.assertLess(grown * 1024 / peak, 64 * 1024, f"{grown} KiB for {peak} half-open SAs")
        result = yield client.terminate()
        self.assertTrue(result.ok, result.output)
        result = yield client.initiate()  # after it
        self.assertTrue(result.ok, result.output + client.tail())

    @defer.inlineCallbacks
    def test_default_limits_hold_the_flood_to_ten(self):
        """half_open_per_source = 5: five SAs the address did not prove, then five
        more once it returns cookies; everything else is answered with a cookie or
        dropped, and charon from another address connects."""
        self.start_gateway()
        argv = [sys.executable, "-m", "tests.interop.ike_flood", "--count", "3000"]
        argv += ["--gateway", self.netns.gateway_address]
        output, _ = yield self.attacker.run(argv)
        counts = json.loads(output.strip().splitlines()[-1])
        self.assertEqual(counts["created"], 10, counts)
        self.assertEqual(self.responder.half_open, 10)
        client, result = yield self.connect()
        self.assertTrue(result.ok, result.output + client.tail())
