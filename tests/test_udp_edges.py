"""The UDP edges against a datagram whose answer cannot be sent, through real sockets.

A sender picks the source of its datagram: source port 0 (RFC 768: "if not used, a value
of zero is inserted") is delivered by Linux, and sendto(2) to port 0 fails with EINVAL;
a spoofed broadcast source or a prohibited route fail the same way (EACCES,
EHOSTUNREACH). Twisted's Port.write raises those, and an exception out of
datagramReceived is a traceback per datagram in the log. Each edge must drop such an
answer with one throttled line instead (IKE: not an "internal error", which an unauthenticated
sender could raise at will in the log and the drop counts). The datagrams are sent from a
raw socket (root), from source port 0, on loopback.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct

from pyrad import packet as pyrad
from twisted.internet import reactor, task
from twisted.trial import unittest

from tests.ike_peer import Gateway, Initiator
from tests.support import log_lines, state_dir
from vpnaaa.config import RadiusClient
from vpnaaa.ike.protocol import IkePort
from vpnaaa.radius import wire
from vpnaaa.radius.accounting import AccountingLog
from vpnaaa.radius.dae import DaeProtocol, DynamicAuthorization, NasIdentity
from vpnaaa.radius.server import ClientTable, DuplicateCache, acct_protocol

SECRET = b"edge-secret"
LOOPBACK = "127.0.0.1"


def from_port_zero(payload: bytes, port: int) -> None:
    """``payload`` to LOOPBACK:``port`` in a UDP datagram from source port 0."""
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
    try:
        header = struct.pack("!HHHH", 0, port, 8 + len(payload), 0)  # checksum 0: none
        raw.sendto(header + payload, (LOOPBACK, 0))
    finally:
        raw.close()


class UnanswerableSourceTests(unittest.TestCase):
    def setUp(self) -> None:
        if os.geteuid() != 0:
            raise unittest.SkipTest("a raw socket needs root")
        self.lines = log_lines(self)

    def listen(self, protocol: object) -> int:
        port = reactor.listenUDP(0, protocol, interface=LOOPBACK)
        self.addCleanup(port.stopListening)
        return port.getHost().port

    async def twice_from_port_zero(self, payload: bytes, port: int) -> None:
        for _ in range(2):
            from_port_zero(payload, port)
            await task.deferLater(reactor, 0.2, lambda: None)
        self.assertEqual(self.flushLoggedErrors(), [], "a traceback past the edge")

    def dropped(self, words: str) -> list[str]:
        return [line for line in self.lines if words in line]

    async def test_ike(self):
        """An IKE_SA_INIT needs no authentication: anyone can make the responder answer."""
        gateway = Gateway()
        port = self.listen(IkePort(gateway.responder, 500, False))
        request = Initiator(Gateway())
        request.sa_init()
        await self.twice_from_port_zero(request.init_request, port)
        self.assertEqual(len(self.dropped("not sent to 127.0.0.1:0")), 1, self.lines)
        self.assertEqual(self.dropped("internal error"), [])
        self.assertEqual(gateway.responder.drop_counts["unsendable"], 2)

    async def test_dae(self):
        """A captured Disconnect-Request replayed from port 0 gets the remembered answer."""
        gateway = Gateway()
        clients = [RadiusClient("ise", ipaddress.ip_network(LOOPBACK), SECRET)]
        core = DynamicAuthorization(
            clients,
            gateway.responder,
            NasIdentity("vpn-gw", lambda: set()),
            gateway.clock.seconds,
        )
        port = self.listen(DaeProtocol(core))
        request = pyrad.CoAPacket(pyrad.DisconnectRequest, 7, SECRET, dict=wire.DICTIONARY)
        request["User-Name"] = "alice"
        await self.twice_from_port_zero(request.RequestPacket(), port)
        self.assertEqual(len(self.dropped("not sent to 127.0.0.1:0")), 1, self.lines)

    async def test_radius_accounting(self):
        """A captured Accounting-Request replayed from port 0 is a new request there."""
        table = ClientTable([RadiusClient("nas", ipaddress.ip_network(LOOPBACK), SECRET)])
        store = AccountingLog(state_dir(self) / "accounting.log")
        self.addCleanup(store.close)
        port = self.listen(acct_protocol(table, DuplicateCache(reactor, 5.0), store))
        request = pyrad.AcctPacket(pyrad.AccountingRequest, 9, SECRET, dict=wire.DICTIONARY)
        request["Acct-Status-Type"] = "Start"
        request["Acct-Session-Id"] = "0123456789ABCDEF"
        await self.twice_from_port_zero(request.RequestPacket(), port)
        self.assertEqual(len(self.dropped("not sent to 127.0.0.1:0")), 1, self.lines)
