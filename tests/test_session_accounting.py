"""Accounting of the gateway's own sessions (RFC 2866, RFC 2869): records, the observer on
a fake clock with the scripted IKE initiator, and the client's retransmission and fail-over.

Records are decoded by pyrad (its dictionary decoding, its Request Authenticator check), not
by the code that built them; expected values are RFC 2866/2869 numbers written out here.
"""

from __future__ import annotations

import ipaddress
import json
import types
from pathlib import Path

from pyrad.packet import AcctPacket
from twisted.internet import defer, task
from twisted.internet.testing import FakeDatagramTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from tests.ike_peer import GATEWAY_ADDRESS, PEER, USER, Gateway, Initiator
from tests.support import state_dir
from tests.test_ike_lifecycle import Granted
from vpnaaa.authorization import Authorization
from vpnaaa.ike.common import EndCause
from vpnaaa.kernel.installer import NullInstaller
from vpnaaa.kernel.xfrm_installer import ChildSaCounters, SaCounters
from vpnaaa.radius import wire
from vpnaaa.radius.accounting import AccountingLog
from vpnaaa.radius.session_accounting import (
    INTERIM_UPDATE,
    START,
    STOP,
    AccountingClient,
    SessionAccounting,
    SessionFacts,
    Traffic,
    attributes,
    terminate_cause,
    with_delay,
)

SECRET = b"accounting-test-secret"
T0 = 1_700_000_000.0  # the fake clock's start: Event-Timestamp in 2023


def decoded(found, secret=SECRET, ident=7):
    """The Accounting-Request with ``found``, as pyrad decodes it (attribute name: values)."""
    raw = wire.accounting_request(ident, secret, found)
    packet = AcctPacket(packet=raw, secret=secret, dict=wire.DICTIONARY)
    return {name: packet[name] for name in packet.keys()}  # noqa: SIM118 (pyrad keys: names)


FACTS = SessionFacts(
    session_id="0123456789ABCDEF",
    user="alice",
    framed_ip=ipaddress.IPv4Address("10.99.0.7"),
    calling_station="198.51.100.7",
    called_station="192.0.2.1",
    started=T0,
    authentic="Local",
)


class RecordTests(unittest.TestCase):
    def test_gigawords_split_five_billion_octets(self):
        """RFC 2869 §5.1: 5 000 000 000 octets = 1 wrap of 2^32 + 705 032 704."""
        found = decoded(Traffic(5_000_000_000, 4_294_967_296, 12, 13).attributes())
        self.assertEqual(found["Acct-Input-Octets"], [705_032_704])
        self.assertEqual(found["Acct-Input-Gigawords"], [1])
        self.assertEqual(found["Acct-Output-Octets"], [0])  # exactly 2^32: one wrap, no rest
        self.assertEqual(found["Acct-Output-Gigawords"], [1])
        self.assertEqual(found["Acct-Input-Packets"], [12])
        self.assertEqual(found["Acct-Output-Packets"], [13])

    def test_small_counts_have_zero_gigawords(self):
        found = decoded(Traffic(84, 168, 1, 2).attributes())
        self.assertEqual(
            [found[n][0] for n in ("Acct-Input-Octets", "Acct-Input-Gigawords")], [84, 0]
        )

    def test_terminate_causes(self):
        """RFC 2866 §5.10 values for every way a session ends."""
        expected = {
            EndCause.CLIENT_DELETE: 1,  # User-Request
            EndCause.DEAD_PEER: 2,  # Lost-Carrier
            EndCause.LIFETIME: 5,  # Session-Timeout
            EndCause.SESSION_TIMEOUT: 5,
            EndCause.ADMIN_RESET: 6,  # Admin-Reset
            EndCause.SHUTDOWN: 7,  # Admin-Reboot
            EndCause.INTERNAL_ERROR: 9,  # NAS-Error
            EndCause.GONE: 10,  # NAS-Request
            EndCause.REPLACED: 13,  # Port-Preempted
            EndCause.REFUSED: 15,  # Service-Unavailable
        }
        self.assertEqual({cause: terminate_cause(cause) for cause in EndCause}, expected)

    def test_stop(self):
        found = decoded(
            attributes(
                FACTS, STOP, T0 + 125.9, "vpnaaa-test", Traffic(1, 2, 3, 4), EndCause.ADMIN_RESET
            )
        )
        self.assertEqual(found["Acct-Status-Type"], ["Stop"])
        self.assertEqual(found["Acct-Session-Id"], ["0123456789ABCDEF"])
        self.assertEqual(found["User-Name"], ["alice"])
        self.assertEqual(found["Framed-IP-Address"], ["10.99.0.7"])
        self.assertEqual(found["Calling-Station-Id"], ["198.51.100.7"])
        self.assertEqual(found["Called-Station-Id"], ["192.0.2.1"])
        self.assertEqual(found["NAS-IP-Address"], ["192.0.2.1"])
        self.assertEqual(found["NAS-Identifier"], ["vpnaaa-test"])
        self.assertEqual(found["NAS-Port-Type"], ["Virtual"])
        self.assertEqual(found["Acct-Authentic"], ["Local"])
        self.assertEqual(found["Acct-Session-Time"], [125])
        self.assertEqual(found["Event-Timestamp"], [1_700_000_125])
        self.assertEqual(found["Acct-Terminate-Cause"], ["Admin-Reset"])
        self.assertEqual(found["Acct-Input-Octets"], [1])
        self.assertNotIn("Class", found)

    def test_start_has_no_session_time_counts_or_cause(self):
        found = decoded(attributes(FACTS, START, T0, "vpnaaa"))
        self.assertEqual(found["Acct-Status-Type"], ["Start"])
        for name in ("Acct-Session-Time", "Acct-Input-Octets", "Acct-Terminate-Cause"):
            self.assertNotIn(name, found)

    def test_class_is_echoed(self):
        """RFC 2865 §5.25: Class from the Access-Accept, unchanged, in every record."""
        facts = SessionFacts(**{**FACTS.__dict__, "classes": (b"CACS:0a0b", b"x")})
        found = decoded(attributes(facts, INTERIM_UPDATE, T0 + 1, "vpnaaa"))
        self.assertEqual(found["Class"], [b"CACS:0a0b", b"x"])

    def test_request_authenticator_and_delay(self):
        """RFC 2866 §3 Request Authenticator, checked by pyrad; §5.2 Acct-Delay-Time."""
        raw = wire.accounting_request(9, SECRET, with_delay(attributes(FACTS, START, T0, "v"), 3.7))
        packet = AcctPacket(packet=raw, secret=SECRET, dict=wire.DICTIONARY)
        self.assertTrue(packet.VerifyAcctRequest())
        self.assertEqual((packet.id, packet["Acct-Delay-Time"]), (9, [3]))
        wrong = AcctPacket(packet=raw, secret=b"other", dict=wire.DICTIONARY)
        self.assertFalse(wrong.VerifyAcctRequest())


class CountingInstaller(NullInstaller):
    """The null installer plus what the kernel installer's counters() returns: the test sets
    the counts per inbound SPI (no kernel ESP on this machine)."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: dict[int, tuple[int, int, int, int]] = {}  # in/out octets, in/out packets

    def counters(self, spec):
        i_octets, o_octets, i_packets, o_packets = self.counts.get(spec.inbound_spi, (0, 0, 0, 0))
        return defer.succeed(
            ChildSaCounters(
                SaCounters(i_octets, i_packets, 0, 0, 32, 0, 0),
                SaCounters(o_octets, o_packets, 0, 0, 0, 0, 0),
            )
        )


class ObserverTests(unittest.TestCase):
    def setUp(self):
        self.lines = []
        observe = lambda event: self.lines.append(formatEvent(event) or "")  # noqa: E731
        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        self.gate = Gateway()
        self.gate.clock.advance(T0)
        self.path = state_dir(self) / "accounting.log"
        self.log = AccountingLog(self.path)
        self.addCleanup(self.log.close)
        self.accounting = SessionAccounting(
            self.gate.responder,
            self.log,
            self.gate.clock,
            nas_identifier="vpnaaa-test",
            intervals={"default": 60},
        )
        self.gate.responder.observers.append(self.accounting)

    def records(self):
        return [json.loads(line)["attributes"] for line in Path(self.path).read_text().splitlines()]

    def statuses(self):
        return [r["Acct-Status-Type"][0] for r in self.records()]

    def connect(self):
        peer = Initiator(self.gate)
        peer.connect()
        (sa,) = self.gate.responder.find(user=USER)
        return peer, sa

    def test_start_interim_stop(self):
        """Start at IKE_AUTH's end with the session's facts; an Interim-Update every 60 s
        (the profile's acct_interim_interval); Stop with User-Request when the client
        deletes the IKE SA. No kernel counters (null installer): no counts."""
        peer, sa = self.connect()
        (start,) = self.records()
        self.assertEqual(start["Acct-Status-Type"], ["Start"])
        self.assertEqual(start["Acct-Session-Id"], [sa.session_id])
        self.assertEqual(start["User-Name"], [USER])
        self.assertEqual(start["Framed-IP-Address"], [str(peer.virtual_ip)])
        self.assertEqual(start["Calling-Station-Id"], [PEER.host])
        self.assertEqual(start["Called-Station-Id"], [GATEWAY_ADDRESS])
        self.assertEqual(start["NAS-Port-Type"], ["Virtual"])
        self.assertEqual(start["Acct-Delay-Time"], [0])
        self.assertEqual(start["Event-Timestamp"], [int(T0)])
        self.gate.clock.advance(59)
        self.assertEqual(self.statuses(), ["Start"])
        self.gate.clock.advance(1)
        self.gate.clock.advance(60)
        self.assertEqual(self.statuses(), ["Start", "Interim-Update", "Interim-Update"])
        self.assertEqual(self.records()[2]["Acct-Session-Time"], [120])
        self.assertNotIn("Acct-Input-Octets", self.records()[2])
        self.gate.clock.advance(5)
        peer.delete_ike()
        stop = self.records()[-1]
        self.assertEqual(stop["Acct-Status-Type"], ["Stop"])
        self.assertEqual(stop["Acct-Terminate-Cause"], ["User-Request"])
        self.assertEqual(stop["Acct-Session-Time"], [125])
        self.assertEqual(stop["Framed-IP-Address"], [str(peer.virtual_ip)])  # lease gone by now
        self.assertEqual(self.accounting.sessions, {})
        self.gate.clock.advance(600)
        self.assertEqual(len(self.records()), 4)  # no Interim-Update after the Stop

    def test_what_the_aaa_server_granted_is_accounted(self):
        """An Access-Accept's (or the user store's) Acct-Interim-Interval overrides the
        profile's (RFC 2869 §5.16), and its Class is echoed in every record (RFC 2865
        §5.25), Start to Stop."""
        profile = self.gate.context.profiles[0]
        granted = Authorization(interim_interval=300, classes=(b"CACS:7", b"staff"))
        profile.eap = Granted(self.gate.engine, granted)
        peer, _ = self.connect()
        self.gate.clock.advance(299)
        self.assertEqual(self.statuses(), ["Start"])
        self.gate.clock.advance(1)
        peer.delete_ike()
        self.assertEqual(self.statuses(), ["Start", "Interim-Update", "Stop"])
        classes = [r.get("Class") for r in self.records()]
        self.assertEqual(classes, [[b"CACS:7".hex(), b"staff".hex()]] * 3)

    def test_disconnect_is_admin_reset(self):
        peer, sa = self.connect()
        self.gate.responder.disconnect(sa)
        (request,) = peer.gateway_requests()
        peer.answer_delete(request)
        self.assertEqual(self.statuses(), ["Start", "Stop"])
        self.assertEqual(self.records()[-1]["Acct-Terminate-Cause"], ["Admin-Reset"])

    def test_an_ike_rekey_keeps_the_session(self):
        """The rekeyed IKE SA carries the session (RFC 2866 §5.5: one Acct-Session-Id):
        no new Start, Interim-Updates go on, one Stop."""
        peer, sa = self.connect()
        peer.rekey_ike()
        peer.delete_previous_ike()
        self.gate.clock.advance(60)
        peer.delete_ike()
        self.assertEqual(self.statuses(), ["Start", "Interim-Update", "Stop"])
        self.assertEqual({r["Acct-Session-Id"][0] for r in self.records()}, {sa.session_id})

    def test_interval_set_for_one_session(self):
        """The seam for Acct-Interim-Interval from RADIUS (RFC 2869 §5.16) or a CoA: from
        now on, for that session only; 0 stops them; an unknown session is refused."""
        _, sa = self.connect()
        self.gate.clock.advance(30)
        self.assertTrue(self.accounting.set_interim_interval(sa.session_id.lower(), 10))
        self.assertEqual(self.accounting.interim_interval(sa.session_id), 10)
        self.gate.clock.advance(10)
        self.gate.clock.advance(10)
        self.assertEqual(self.statuses(), ["Start", "Interim-Update", "Interim-Update"])
        self.assertEqual(self.records()[1]["Acct-Session-Time"], [40])
        self.assertTrue(self.accounting.set_interim_interval(sa.session_id, 0))
        self.gate.clock.advance(600)
        self.assertEqual(len(self.records()), 3)
        self.assertFalse(self.accounting.set_interim_interval("FFFFFFFFFFFFFFFF", 10))
        self.assertIsNone(self.accounting.interim_interval("FFFFFFFFFFFFFFFF"))

    def test_kernel_counters_across_a_child_sa_rekey(self):
        """Interim-Updates count the CHILD_SAs' kernel counters; a CHILD_SA rekeyed away
        keeps counting with its last reading; the Stop adds the final reading and never
        reports less than before."""
        installer = CountingInstaller()
        self.gate.responder.installer = installer
        peer, sa = self.connect()
        (first,) = sa.children
        installer.counts[first] = (1000, 2000, 10, 20)
        self.gate.clock.advance(60)
        interim = self.records()[-1]
        self.assertEqual(
            [interim[n][0] for n in ("Acct-Input-Octets", "Acct-Output-Octets")], [1000, 2000]
        )
        self.assertEqual(interim["Acct-Input-Packets"], [10])
        (ours,) = peer.children
        peer.rekey_child(ours)
        peer.delete_child(ours)
        (second,) = sa.children
        self.assertNotEqual(second, first)
        installer.counts[second] = (5_000_000_000, 7, 1, 1)
        self.gate.clock.advance(60)
        interim = self.records()[-1]
        self.assertEqual(interim["Acct-Input-Octets"], [(1000 + 5_000_000_000) % 2**32])
        self.assertEqual(interim["Acct-Input-Gigawords"], [1])
        self.assertEqual(interim["Acct-Output-Octets"], [2007])
        installer.counts[second] = (5_000_000_100, 9, 2, 2)
        peer.delete_ike()
        stop = self.records()[-1]
        self.assertEqual(stop["Acct-Status-Type"], ["Stop"])
        self.assertEqual(stop["Acct-Input-Octets"], [(1100 + 5_000_000_000) % 2**32])
        self.assertEqual(stop["Acct-Output-Octets"], [2009])
        self.assertEqual(stop["Acct-Input-Packets"], [12])

    def test_a_bug_in_the_observer_is_logged_not_raised(self):
        """Nothing raises into the IKE responder: one logged failure instead."""
        broken = types.SimpleNamespace(session_id="0123456789ABCDEF", profile=None)
        self.accounting.session_started(broken)
        self.assertEqual(len(self.flushLoggedErrors(AttributeError)), 1)
        self.assertTrue(any("Start of session 0123456789ABCDEF failed" in x for x in self.lines))

    def test_an_unwritable_log_is_one_line_not_an_error(self):
        blocker = self.path.parent / "a-file"
        blocker.write_text("")
        self.log.path = blocker / "accounting.log"  # its directory is a file: not opened
        self.connect()
        self.assertEqual(len(self.accounting.sessions), 1)
        self.assertTrue(any("Start of session" in x and "not written to" in x for x in self.lines))


class ClientTests(unittest.TestCase):
    """The UDP client on a fake clock and a recording transport."""

    SERVERS = (("192.0.2.10", 1813), ("192.0.2.11", 1813))

    def setUp(self):
        self.lines = []
        observe = lambda event: self.lines.append(formatEvent(event) or "")  # noqa: E731
        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        self.clock = task.Clock()
        self.clock.advance(T0)

    def client(self, start=True, **options):
        client = AccountingClient(self.SERVERS, SECRET, self.clock, **options)
        self.transport = FakeDatagramTransport()
        if start:
            client.makeConnection(self.transport)
        return client

    def sent(self):
        return [(wire.parse(data), address) for data, address in self.transport.written]

    def answer(self, client, request, address, secret=SECRET):
        reply = wire.reply(request, wire.Code.ACCOUNTING_RESPONSE, secret)
        client.datagramReceived(reply, address)

    def test_answered(self):
        client = self.client()
        self.assertTrue(client.send(attributes(FACTS, START, T0, "v"), T0, FACTS.session_id))
        ((request, address),) = self.sent()
        self.assertEqual(address, self.SERVERS[0])
        self.assertTrue(wire.accounting_authenticator_ok(request, SECRET))
        self.assertFalse(client.idle)
        self.answer(client, request, address)
        self.assertTrue(client.idle)
        self.clock.advance(10)
        self.assertEqual(len(self.sent()), 1)  # answered: not sent again

    def test_retransmissions_are_new_packets_then_fail_over(self):
        """RFC 2866 §5.2: each try carries the delay so far, hence a new Identifier and
        Request Authenticator; after ``tries`` the next server, which later records use."""
        client = self.client(timeout=1.0, tries=3)
        client.send(attributes(FACTS, START, T0, "v"), T0, FACTS.session_id)
        for _ in range(3):
            self.clock.advance(1.0)
        sent = self.sent()
        self.assertEqual([a for _, a in sent], [*[self.SERVERS[0]] * 3, self.SERVERS[1]])
        self.assertEqual(len({p.ident for p, _ in sent}), 4)
        self.assertEqual(len({p.authenticator for p, _ in sent}), 4)
        delays = [int.from_bytes(p.get(wire.key("Acct-Delay-Time")), "big") for p, _ in sent]
        self.assertEqual(delays, [0, 1, 2, 3])
        self.assertTrue(all(wire.accounting_authenticator_ok(p, SECRET) for p, _ in sent))
        self.assertTrue(any("192.0.2.10:1813 did not answer 3 tries" in x for x in self.lines))
        late, late_address = sent[0]
        self.answer(client, late, late_address)  # a late answer to an abandoned try
        self.assertFalse(client.idle)
        self.answer(client, *sent[3])
        self.assertTrue(client.idle)
        client.send(attributes(FACTS, STOP, T0 + 9, "v"), T0 + 9, FACTS.session_id)
        self.assertEqual(self.sent()[-1][1], self.SERVERS[1])

    def test_no_server_answers(self):
        client = self.client(timeout=1.0, tries=2)
        client.send(attributes(FACTS, START, T0, "v"), T0, FACTS.session_id)
        self.clock.advance(1.0)
        self.clock.advance(1.0)
        self.clock.advance(1.0)
        self.clock.advance(1.0)
        self.assertEqual(len(self.sent()), 4)
        self.assertTrue(client.idle)
        self.assertTrue(any("no server answered the Start" in x for x in self.lines))

    def test_a_reply_with_another_secret_is_dropped(self):
        client = self.client()
        client.send(attributes(FACTS, START, T0, "v"), T0, FACTS.session_id)
        ((request, address),) = self.sent()
        self.answer(client, request, address, secret=b"not the secret")
        self.assertFalse(client.idle)
        self.assertTrue(any("bad Response Authenticator" in x for x in self.lines))
        self.answer(client, request, ("192.0.2.99", 1813))  # not the server asked
        self.assertFalse(client.idle)

    def test_the_queue_is_bounded(self):
        client = self.client(start=False, max_queue=2)  # no socket yet: everything waits
        found = attributes(FACTS, START, T0, "v")
        self.assertEqual([client.send(found, T0, str(i)) for i in range(3)], [True, True, False])
        self.assertTrue(any("queue full (2 records wait" in x for x in self.lines))
        client.makeConnection(FakeDatagramTransport())
        self.assertEqual((len(client.queue), len(client.outstanding)), (0, 2))
        unqueued = self.client(max_queue=0)  # no queue: sent while Identifiers are free
        self.assertTrue(unqueued.send(found, T0, "3"))
        self.assertEqual(len(unqueued.outstanding), 1)
