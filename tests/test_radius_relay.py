"""The EAP relay's limits in-process (issue 9, item 6 and the "Relay" hardening).

A scripted RADIUS server answers the relay's datagrams on a fake reactor (a
:class:`~twisted.internet.task.Clock` whose ``listenUDP`` hands each protocol an in-memory
transport), so Identifiers, the queue, retransmission timers and bad replies can be
driven exactly. What only a real server can prove (hundreds of requests in flight, the
MSK) is in tests/interop/test_ike_relay.py against FreeRADIUS.
"""

from __future__ import annotations

import dataclasses

from twisted.internet import task
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from vpnaaa.eap import packet
from vpnaaa.eap.authenticator import Challenge, Failure, Success
from vpnaaa.eap.packet import Code, Type
from vpnaaa.radius import hiding, wire
from vpnaaa.radius.client import RadiusRelay

SERVER = ("192.0.2.10", 1812)
SECRET = b"relay-secret"
_STATE = wire.key("State")


class Transport:
    """A UDP transport that records what is written."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.sent: list[tuple[bytes, tuple[str, int]]] = []
        self.closed = False

    def write(self, data, addr):
        self.sent.append((data, addr))

    def getHost(self):
        return dataclasses.make_dataclass("Host", ["host", "port"])(self.host, 0)

    def stopListening(self):
        self.closed = True


class Reactor(task.Clock):
    """A clock with ``listenUDP``: the protocol starts at once on a :class:`Transport`."""

    def __init__(self) -> None:
        super().__init__()
        self.ports: list[tuple[object, Transport]] = []

    def listenUDP(self, port, protocol, interface=""):
        transport = Transport(interface)
        self.ports.append((protocol, transport))
        protocol.makeConnection(transport)
        return transport


def identity_response(identifier: int, name: bytes = b"alice") -> bytes:
    return packet.Packet(Code.RESPONSE, identifier, Type.IDENTITY, name).encode()


class RelayTestCase(unittest.TestCase):
    def setUp(self):
        self.reactor = Reactor()
        self.lines: list[str] = []

        def observe(event):
            if event.get("log_namespace") == "vpnaaa.radius":
                self.lines.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    def relay(self, **options) -> RadiusRelay:
        options.setdefault("timeout", 1.0)
        options.setdefault("tries", 2)
        relay = RadiusRelay(SERVER, SECRET, self.reactor, "test-nas", **options)
        self.reactor.listenUDP(0, relay, interface="127.0.0.1")
        return relay

    def start(self, relay: RadiusRelay, source: str = "192.0.2.1", name: bytes = b"alice"):
        """begin() and the Identity step: (conversation id, the step's Deferred)."""
        conversation_id, first = relay.begin(source)
        self.assertIsInstance(first, Challenge)
        identifier = packet.parse(first.eap).identifier
        return conversation_id, relay.step(conversation_id, identity_response(identifier, name))

    def sent(self) -> list[tuple[int, wire.Packet]]:
        """(port index, request) of every datagram written, all ports, in port order."""
        return [
            (index, wire.parse(data))
            for index, (_, transport) in enumerate(self.reactor.ports)
            for data, addr in transport.sent
            if addr == SERVER
        ]

    def reply(self, index, request, code, attributes=(), signed=True):
        """The server's answer to ``request``, delivered on port ``index``."""
        if not signed:  # wire.reply signs answers to Access-Requests only
            request = dataclasses.replace(request, code=wire.Code.ACCOUNTING_REQUEST)
        datagram = wire.reply(request, code, SECRET, list(attributes))
        protocol, _ = self.reactor.ports[index]
        protocol.datagramReceived(datagram, SERVER)

    def challenge(self, index, request, eap=b"\x01\x05\x00\x06\x1a\x01"):
        attributes = [(wire.EAP_MESSAGE, eap), (_STATE, b"state-1")]
        self.reply(index, request, wire.Code.ACCESS_CHALLENGE, attributes)


class IdentifierTests(RelayTestCase):
    def test_each_port_has_256_identifiers_then_requests_queue(self):
        """Two source ports carry 512 requests with distinct Identifiers per port; three
        more wait; the next is refused with EAP-Failure and one log line. An answer frees
        an Identifier and the oldest queued request takes it."""
        relay = self.relay(source_ports=2, max_queue=3, per_source=10_000)
        steps = [self.start(relay) for _ in range(515)]
        sent = self.sent()
        self.assertEqual(len(sent), 512)
        for index in (0, 1):
            idents = [request.ident for i, request in sent if i == index]
            self.assertEqual(sorted(idents), list(range(256)))
        transports = [transport for _, transport in self.reactor.ports]
        self.assertEqual(len(transports), 2)
        self.assertEqual((relay.outstanding, relay.queued), (512, 3))
        _, refused = self.start(relay)
        _, result = self.successResultOf(refused)
        self.assertIsInstance(result, Failure)
        self.assertEqual(packet.parse(result.eap).code, Code.FAILURE)
        self.assertEqual(result.reason, "3 Access-Requests already wait for an Identifier")
        self.assertEqual(len(relay), 515)  # the refused conversation is gone
        self.assertEqual(
            self.lines,
            ["EAP relay refused a request: 3 Access-Requests already wait for an Identifier"],
        )
        index, request = sent[300]
        self.challenge(index, request)
        answered = [d for _, d in steps if d.called]
        self.assertEqual(len(answered), 1)
        _, result = self.successResultOf(answered[0])
        self.assertIsInstance(result, Challenge)
        again = self.sent()
        self.assertEqual(len(again), 513)
        new = [item for item in again if item not in sent]
        self.assertEqual([(i, r.ident) for i, r in new], [(index, request.ident)])
        self.assertNotEqual(new[0][1].authenticator, request.authenticator)
        self.assertEqual((relay.outstanding, relay.queued), (512, 2))
        self.assertNoResult(steps[512][1])

    def test_retransmission_is_identical_then_the_conversation_fails(self):
        """RFC 5080 §2.2.1: the same datagram again after ``timeout``; after ``tries``
        the conversation fails with one log line and the Identifier is free again."""
        relay = self.relay(source_ports=1, max_queue=1)
        _, step = self.start(relay)
        (first,) = self.reactor.ports[0][1].sent
        self.reactor.advance(1.0)
        self.assertEqual(self.reactor.ports[0][1].sent, [first, first])
        self.assertNoResult(step)
        self.reactor.advance(1.0)
        _, result = self.successResultOf(step)
        self.assertEqual(result.reason, "no answer after 2 tries of 1 s")
        self.assertEqual(
            self.lines, ["RADIUS server 192.0.2.10:1812: no answer after 2 tries of 1 s"]
        )
        self.assertEqual((relay.outstanding, len(relay)), (0, 0))


class ReplyTests(RelayTestCase):
    def setUp(self):
        super().setUp()
        self.relay_ = self.relay(source_ports=1)
        self.conversation, self.step = self.start(self.relay_)
        ((_, self.request),) = self.sent()

    def test_every_reply_needs_a_message_authenticator(self):
        """Access-Challenge, -Accept and -Reject without Message-Authenticator are dropped
        (RFC 3579 §3.2; BlastRADIUS): the request stays outstanding; one log line per
        10 s. The signed answer that follows is taken."""
        for code in (
            wire.Code.ACCESS_CHALLENGE,
            wire.Code.ACCESS_ACCEPT,
            wire.Code.ACCESS_REJECT,
        ):
            self.reply(0, self.request, code, [(wire.EAP_MESSAGE, b"\x03\x01\x00\x04")], False)
        self.assertNoResult(self.step)
        self.assertEqual(self.relay_.outstanding, 1)
        self.assertEqual(
            self.lines,
            [
                "dropped a reply from RADIUS server 192.0.2.10:1812: ACCESS_CHALLENGE without "
                "Message-Authenticator"
            ],
        )
        self.reactor.advance(0.5)
        self.challenge(0, self.request)
        _, result = self.successResultOf(self.step)
        self.assertEqual(result, Challenge(b"\x01\x05\x00\x06\x1a\x01"))

    def test_forged_and_malformed_replies_are_dropped(self):
        request = dataclasses.replace(self.request, authenticator=bytes(16))
        self.reply(0, request, wire.Code.ACCESS_ACCEPT)
        self.reactor.ports[0][0].datagramReceived(b"\x02\x01\x00", SERVER)
        self.reactor.ports[0][0].datagramReceived(b"whatever", ("192.0.2.66", 1812))
        self.assertNoResult(self.step)
        self.assertEqual(len(self.lines), 1)
        self.assertIn("bad Response Authenticator or Message-Authenticator", self.lines[0])

    def accept(self, recv: bytes, send: bytes | None, *extra):
        keys = [
            (
                wire.key("MS-MPPE-Recv-Key"),
                hiding.salt_encrypt(recv, SECRET, self.request.authenticator),
            )
        ]
        if send is not None:
            keys.append(
                (
                    wire.key("MS-MPPE-Send-Key"),
                    hiding.salt_encrypt(send, SECRET, self.request.authenticator),
                )
            )
        attributes = [(wire.EAP_MESSAGE, b"\x03\x02\x00\x04"), *keys, *extra]
        self.reply(0, self.request, wire.Code.ACCESS_ACCEPT, attributes)
        return self.successResultOf(self.step)[1]

    def test_msk_shorter_than_32_octets_is_refused(self):
        """16 + 15 octets of MS-MPPE keys: Failure with the reason, never a Success."""
        result = self.accept(bytes(range(16)), bytes(range(15)))
        self.assertIsInstance(result, Failure)
        self.assertEqual(
            result.reason,
            "Access-Accept with an MSK of 31 octets (MS-MPPE-Recv-Key | Send-Key); at least "
            "32 are required",
        )
        self.assertEqual(packet.parse(result.eap).code, Code.FAILURE)
        self.assertEqual(len(self.relay_), 0)

    def test_msk_of_64_octets(self):
        result = self.accept(b"r" * 32, b"s" * 32)
        self.assertIsInstance(result, Success)
        self.assertEqual(result.msk, b"r" * 32 + b"s" * 32)

    def test_the_identity_is_verified_only_when_the_server_names_the_user(self):
        """RFC 2865 §5.1: the Accept's User-Name is the user the server authenticated;
        without it the identity is only what the client said (the outer EAP identity),
        which must not end or count against another user's sessions."""
        result = self.accept(b"r" * 32, b"s" * 32)
        self.assertFalse(result.verified)
        self.conversation, self.step = self.start(self.relay_)  # another user's turn
        (_, self.request) = self.sent()[-1]
        result = self.accept(b"r" * 32, b"s" * 32, (wire.USER_NAME, b"bob"))
        self.assertEqual((result.identity, result.verified), ("bob", True))

    def test_what_the_accept_grants(self):
        """RFC 2865 §5.8/§5.25/§5.27, RFC 2869 §5.16/§5.18: Framed-IP-Address,
        Framed-Pool, Session-Timeout, Acct-Interim-Interval and every Class come with the
        Success; 0xFFFFFFFE (the NAS picks from its pool) is no address."""
        result = self.accept(
            b"r" * 32,
            b"s" * 32,
            (wire.key("Framed-IP-Address"), bytes([10, 99, 0, 77])),
            (wire.key("Framed-Pool"), b"staff"),
            (wire.key("Session-Timeout"), (3600).to_bytes(4, "big")),
            (wire.key("Acct-Interim-Interval"), (600).to_bytes(4, "big")),
            (wire.key("Class"), b"CACS:0a0b0c0d"),
            (wire.key("Class"), b"second"),
        )
        granted = result.authorization
        self.assertEqual(
            (
                str(granted.framed_ip),
                granted.framed_pool,
                granted.session_timeout,
                granted.interim_interval,
                granted.classes,
            ),
            ("10.99.0.77", "staff", 3600, 600, (b"CACS:0a0b0c0d", b"second")),
        )
        self.conversation, self.step = self.start(self.relay_)
        (_, self.request) = self.sent()[-1]
        pick = (wire.key("Framed-IP-Address"), b"\xff\xff\xff\xfe")
        self.assertIsNone(self.accept(b"r" * 32, b"s" * 32, pick).authorization.framed_ip)
        self.conversation, self.step = self.start(self.relay_)
        (_, self.request) = self.sent()[-1]
        often = (wire.key("Acct-Interim-Interval"), (1).to_bytes(4, "big"))
        granted = self.accept(b"r" * 32, b"s" * 32, often).authorization
        self.assertEqual(granted.interim_interval, 60)  # RFC 2869 §5.16: not below 60 s

    def test_missing_send_key(self):
        result = self.accept(b"r" * 32, None)
        self.assertIsInstance(result, Failure)
        self.assertIn("without usable MPPE keys", result.reason)


class ConversationTests(RelayTestCase):
    def test_identity_longer_than_253_octets_is_refused(self):
        relay = self.relay()
        _, step = self.start(relay, name=b"x" * 254)
        _, result = self.successResultOf(step)
        self.assertIsInstance(result, Failure)
        self.assertIn("EAP identity of 254 octets does not fit User-Name", result.reason)
        self.assertEqual((self.sent(), len(relay)), ([], 0))
        self.assertEqual(len(self.lines), 1)
        _, step = self.start(relay, name=b"x" * 253)
        self.assertNoResult(step)
        ((_, request),) = self.sent()
        self.assertEqual(request.get(wire.USER_NAME), b"x" * 253)

    def test_nothing_raises_out_of_step(self):
        """Garbage, an EAP message too large for one Access-Request, an unknown id, a
        second Response while one is relayed: EAP-Failures, no exception."""
        relay = self.relay()
        for eap in (b"", b"\x02", b"\x02\x01\x00\x05"):
            conversation_id, _ = relay.begin("192.0.2.1")
            _, result = self.successResultOf(relay.step(conversation_id, eap))
            self.assertIsInstance(result, Failure)
        conversation_id, step = self.start(relay)
        big = packet.Packet(Code.RESPONSE, 9, Type.PEAP, bytes(5000)).encode()
        self.challenge(0, self.sent()[0][1])
        self.assertIsInstance(self.successResultOf(step)[1], Challenge)
        _, result = self.successResultOf(relay.step(conversation_id, big))
        self.assertIn("exceeds 4096", result.reason)
        _, result = self.successResultOf(relay.step(b"nobody", b"\x02\x01\x00\x05\x01"))
        self.assertEqual(result.reason, "unknown or expired conversation")
        conversation_id, _ = self.start(relay)
        _, result = self.successResultOf(relay.step(conversation_id, b"\x02\x01\x00\x05\x01"))
        self.assertEqual(result.reason, "an EAP Response while the previous one is still relayed")
        self.assertEqual(len(relay), 0)

    def test_table_and_per_source_caps(self):
        relay = self.relay(max_conversations=3, per_source=2)
        relay.begin("192.0.2.1")
        relay.begin("192.0.2.1")
        _, refused = relay.begin("192.0.2.1")
        self.assertEqual(refused.reason, "192.0.2.1 already has 2 live conversations")
        relay.begin("192.0.2.2")
        _, refused = relay.begin("192.0.2.3")
        self.assertEqual(refused.reason, "3 live conversations is the configured maximum")
        self.assertIsInstance(refused, Failure)
        self.assertEqual(len(relay), 3)
        self.assertEqual(len(self.lines), 1)  # throttled: one line per 10 s

    def test_forget_releases_queued_and_outstanding_requests(self):
        """A forgotten conversation's queued request is never sent; its outstanding one
        is not retransmitted, its answer is discarded, and its Identifier is reused only
        after the try's timeout (RFC 5080 §2.2.2)."""
        relay = self.relay(source_ports=1, max_queue=5, per_source=1000)
        steps = [self.start(relay) for _ in range(258)]
        sent = self.sent()
        self.assertEqual((len(sent), relay.queued), (256, 2))
        relay.forget(steps[256][0])  # queued
        relay.forget(steps[0][0])  # outstanding
        self.assertEqual((relay.queued, relay.outstanding, len(relay)), (1, 256, 256))
        self.challenge(0, sent[0][1])  # the answer to the forgotten request
        # its Identifier went to the remaining queued request (257's), not to 256's
        self.assertEqual((relay.queued, relay.outstanding), (0, 256))
        later = self.sent()[256:]
        self.assertEqual(len(later), 1)
        self.assertEqual(later[0][1].get(wire.USER_NAME), b"alice")
        self.assertNoResult(steps[0][1])
        self.assertNoResult(steps[256][1])
        relay.forget(steps[1][0])
        self.reactor.advance(1.0)  # the forgotten request is not retransmitted
        retransmitted = [r.ident for _, r in self.sent()[257:]]
        self.assertNotIn(sent[1][1].ident, retransmitted)
        self.assertEqual(len(retransmitted), 255)
        self.reactor.advance(1.0)
        self.assertEqual((relay.outstanding, len(relay)), (0, 0))
        self.assertNoResult(steps[1][1])

    def test_extra_ports_close_with_the_relay(self):
        relay = self.relay(source_ports=3)
        self.assertEqual(len(self.reactor.ports), 3)
        relay.doStop()
        self.assertTrue(all(t.closed for _, t in self.reactor.ports[1:]))
