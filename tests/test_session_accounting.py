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
    ACCOUNTING_OFF,
    ACCOUNTING_ON,
    INTERIM_UPDATE,
    START,
    STOP,
    AccountingClient,
    AccountingService,
    SessionAccounting,
    SessionFacts,
    Traffic,
    attributes,
    fitting_classes,
    nas_attributes,
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

    def test_class_values_that_do_not_fit_are_dropped_whole_in_order(self):
        """RFC 2865 §3: 4096 octets at most. FACTS' largest record, the Stop with counts,
        cause and Acct-Delay-Time, is 174 octets (20 header; Acct-Status-Type, NAS-IP-Address,
        NAS-Port-Type, Service-Type, Framed-IP-Address, Acct-Authentic, Event-Timestamp,
        Acct-Session-Time, 6 counts, Acct-Terminate-Cause, Acct-Delay-Time: 6 each; Acct-
        Session-Id 18, User-Name 7, NAS-Identifier "vpnaaa" 8, Calling-Station-Id 14,
        Called-Station-Id 11): 3922 octets are left, fifteen 253-octet Class attributes
        (255 each) and one of 95 (97). A 300-octet value fits no attribute (§5: 253)."""
        big = [bytes([i]) * 253 for i in range(16)]
        offered = [*big[:3], b"L" * 300, *big[3:], b"c" * 95, b"x"]
        kept = fitting_classes(FACTS, offered, "vpnaaa")
        self.assertEqual(kept, (*big[:15], b"c" * 95))
        facts = SessionFacts(**{**FACTS.__dict__, "classes": kept})
        stop = attributes(facts, STOP, T0 + 5, "vpnaaa", Traffic(1, 2, 3, 4), EndCause.GONE)
        raw = wire.accounting_request(1, SECRET, with_delay(stop, 0))
        self.assertEqual(len(raw), 4096)
        self.assertEqual(decoded(with_delay(stop, 0))["Class"], list(kept))

    def test_accounting_on_and_off(self):
        """RFC 2866 §5.1: Accounting-On (7) and -Off (8) name the NAS, not a session."""
        on = decoded(nas_attributes(ACCOUNTING_ON, T0, "asa-1", "192.0.2.1", "00000000000000AB"))
        self.assertEqual(on["Acct-Status-Type"], ["Accounting-On"])
        self.assertEqual(on["NAS-Identifier"], ["asa-1"])
        self.assertEqual(on["NAS-IP-Address"], ["192.0.2.1"])
        self.assertEqual(on["Acct-Session-Id"], ["00000000000000AB"])
        self.assertEqual(on["Event-Timestamp"], [int(T0)])
        off = decoded(nas_attributes(ACCOUNTING_OFF, T0, "asa-1", "2001:db8::1", "AB"))
        self.assertEqual(off["Acct-Status-Type"], ["Accounting-Off"])
        self.assertEqual(off["NAS-IPv6-Address"], ["2001:db8::1"])
        anywhere = decoded(nas_attributes(ACCOUNTING_ON, T0, "asa-1", None, "AB"))
        self.assertNotIn("NAS-IP-Address", anywhere)
        self.assertNotIn("User-Name", anywhere)

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

    def test_class_values_that_do_not_fit_are_left_out_with_one_line(self):
        """Twenty 253-octet Class values: fifteen fit a record (see RecordTests), every
        record carries those fifteen, and one line says five were left out (no content)."""
        profile = self.gate.context.profiles[0]
        classes = tuple(b"CACS:%02d:" % i + b"z" * 245 for i in range(20))
        profile.eap = Granted(self.gate.engine, Authorization(classes=classes))
        peer, _ = self.connect()
        self.gate.clock.advance(60)
        peer.delete_ike()
        self.assertEqual(self.statuses(), ["Start", "Interim-Update", "Stop"])
        expected = [c.hex() for c in classes[:15]]
        self.assertEqual([r["Class"] for r in self.records()], [expected] * 3)
        dropped = [x for x in self.lines if "Class attributes do not fit" in x]
        self.assertEqual(len(dropped), 1, dropped)
        self.assertIn("5 of its 20 Class attributes", dropped[0])
        self.assertFalse(any("CACS" in x or "zzz" in x for x in self.lines))

    def counting(self):
        installer = CountingInstaller()
        self.gate.responder.installer = installer
        return installer

    def traffic(self, record):
        names = ("Acct-Input-Octets", "Acct-Output-Octets")
        names += ("Acct-Input-Packets", "Acct-Output-Packets")
        return tuple(record[n][0] for n in names)

    def test_a_child_sa_rekeyed_away_keeps_what_it_carried_after_the_last_interim(self):
        """The counts a CHILD_SA gained between the last Interim-Update and its removal
        (the client rekeyed it) are in the next record: the responder read them as it
        left the kernel."""
        installer = self.counting()
        peer, sa = self.connect()
        (first,) = sa.children
        installer.counts[first] = (1000, 2000, 10, 20)
        self.gate.clock.advance(60)
        self.assertEqual(self.traffic(self.records()[-1]), (1000, 2000, 10, 20))
        installer.counts[first] = (1500, 2600, 15, 26)  # more pings, then the rekey
        (ours,) = peer.children
        peer.rekey_child(ours)
        peer.delete_child(ours)
        (second,) = sa.children
        installer.counts[second] = (100, 200, 1, 2)
        self.gate.clock.advance(60)
        self.assertEqual(self.traffic(self.records()[-1]), (1600, 2800, 16, 28))
        installer.counts[second] = (300, 400, 3, 4)
        peer.delete_ike()
        self.assertEqual(self.traffic(self.records()[-1]), (1800, 3000, 18, 30))

    def test_rekeys_without_interim_updates_and_across_an_ike_rekey(self):
        """No Interim-Update at all (interval 0): two CHILD_SA rekeys, one of them on the
        IKE SA's successor (the session id kept), and a CHILD_SA the client deleted; the
        Stop counts every one."""
        installer = self.counting()
        self.accounting.intervals["default"] = 0
        peer, sa = self.connect()
        (first,) = sa.children
        installer.counts[first] = (1000, 2000, 10, 20)
        (ours,) = peer.children
        peer.rekey_child(ours)
        peer.delete_child(ours)
        peer.rekey_ike()
        peer.delete_previous_ike()
        (successor,) = self.gate.responder.find(session_id=sa.session_id)
        self.assertIsNot(successor, sa)
        (second,) = successor.children
        installer.counts[second] = (100, 200, 1, 2)
        (ours,) = peer.children
        peer.rekey_child(ours)
        peer.delete_child(ours)
        (third,) = successor.children
        installer.counts[third] = (10, 20, 3, 4)
        (ours,) = peer.children
        peer.create_child()
        (extra_ours,) = [c for c in peer.children if c != ours]
        (extra,) = [spi for spi in successor.children if spi != third]
        installer.counts[extra] = (7, 8, 1, 1)
        peer.delete_child(extra_ours)
        self.assertEqual(list(successor.children), [third])
        peer.delete_ike()
        self.assertEqual(self.statuses(), ["Start", "Stop"])
        self.assertEqual(self.traffic(self.records()[-1]), (1117, 2228, 15, 27))

    def test_a_gateway_rekey_counts_the_old_child_sa_until_the_client_answers(self):
        """rekey = "gateway": our Delete of the old CHILD_SA is out; it still counts in an
        Interim-Update meanwhile (it is in the kernel) and retires when the client
        answers."""
        self.gate = Gateway(rekey="gateway", child_lifetime=1000, dpd_delay=0)
        self.gate.clock.advance(T0)
        self.accounting = SessionAccounting(
            self.gate.responder, self.log, self.gate.clock, intervals={"default": 60}
        )
        self.gate.responder.observers.append(self.accounting)
        installer = self.counting()
        peer, sa = self.connect()
        (first,) = sa.children
        installer.counts[first] = (1000, 2000, 10, 20)
        self.gate.clock.advance(850)  # the soft lifetime: our rekey leaves (an Interim too)
        (rekey,) = peer.gateway_requests()
        peer.answer_rekey(rekey)
        (delete,) = peer.gateway_requests()
        (second,) = sa.children
        installer.counts[second] = (5, 6, 1, 1)
        self.gate.clock.advance(60)  # the next Interim-Update, our Delete unanswered
        self.assertEqual(self.traffic(self.records()[-1]), (1005, 2006, 11, 21))
        installer.counts[first] = (1100, 2100, 11, 21)
        peer.answer_delete(delete)
        self.assertNotIn(first, installer.installed)
        peer.delete_ike()
        self.assertEqual(self.traffic(self.records()[-1]), (1105, 2106, 12, 22))

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

    def test_a_full_queue_admits_a_stop_in_place_of_the_oldest_interim_update(self):
        """The bound holds; a Stop (or Start) takes the oldest queued Interim-Update's
        place; an Interim-Update, and a Stop with no Interim-Update to evict, are not sent."""
        client = self.client(start=False, max_queue=3)  # no socket yet: everything waits
        interim = attributes(FACTS, INTERIM_UPDATE, T0, "v")
        self.assertTrue(client.send(interim, T0, "I1"))
        self.assertTrue(client.send(attributes(FACTS, START, T0, "v"), T0, "S2"))
        self.assertTrue(client.send(interim, T0, "I3"))
        stop = attributes(FACTS, STOP, T0, "v", cause=EndCause.CLIENT_DELETE)
        self.assertTrue(client.send(stop, T0, "P4"))
        self.assertEqual([r.session_id for r in client.queue], ["S2", "I3", "P4"])
        self.assertTrue(
            any("Interim-Update of session I1 is not sent, a Stop takes" in x for x in self.lines)
        )
        self.assertFalse(client.send(interim, T0, "I5"))  # full: an Interim-Update waits not
        self.assertTrue(client.send(stop, T0, "P6"))  # evicts I3
        self.clock.advance(10)  # the "queue full" line is throttled: one per 10 s
        self.assertFalse(client.send(stop, T0, "P7"))  # no Interim-Update left to evict
        self.assertTrue(any("Stop of session P7 not sent" in x for x in self.lines))
        client.makeConnection(self.transport)
        kinds = [p.get(wire.key("Acct-Status-Type")) for p, _ in self.sent()]
        self.assertEqual([int.from_bytes(k, "big") for k in kinds], [START, STOP, STOP])

    def test_back_to_the_first_server_after_revive_interval(self):
        """One lost exchange fails over to the second server; ``revive`` seconds later new
        records go to the first again (FreeRADIUS's revive_interval), one line says so."""
        client = self.client(timeout=1.0, tries=1, revive=60.0)
        start = attributes(FACTS, START, T0, "v")
        client.send(start, T0, FACTS.session_id)
        self.clock.advance(1.0)  # no answer: the second server
        self.answer(client, *self.sent()[-1])
        self.assertEqual([a for _, a in self.sent()], list(self.SERVERS))
        self.clock.advance(59.0)
        client.send(start, T0, "later")
        self.assertEqual(self.sent()[-1][1], self.SERVERS[1])
        self.answer(client, *self.sent()[-1])
        self.clock.advance(1.0)  # 60 s after the fail-over
        self.assertTrue(
            any("new records go to 192.0.2.10:1813 again" in x for x in self.lines), self.lines
        )
        client.send(start, T0, "revived")
        self.assertEqual(self.sent()[-1][1], self.SERVERS[0])

    def test_revive_zero_stays_with_the_server_that_answered(self):
        client = self.client(timeout=1.0, tries=1, revive=0.0)
        client.send(attributes(FACTS, START, T0, "v"), T0, FACTS.session_id)
        self.clock.advance(1.0)
        self.answer(client, *self.sent()[-1])
        self.clock.advance(3600.0)
        client.send(attributes(FACTS, STOP, T0, "v"), T0, FACTS.session_id)
        self.assertEqual(self.sent()[-1][1], self.SERVERS[1])

    def test_depth_per_server(self):
        """Queued and unanswered records per server (the metrics' queue depth)."""
        client = self.client(timeout=1.0, tries=1)
        found = attributes(FACTS, START, T0, "v")
        self.assertEqual(client.depth(), {self.SERVERS[0]: 0, self.SERVERS[1]: 0})
        for i in range(258):  # 256 Identifiers: two wait
            client.send(found, T0, str(i))
        self.assertEqual(client.depth(), {self.SERVERS[0]: 258, self.SERVERS[1]: 0})
        self.clock.advance(1.0)  # every try timed out: to the second server
        self.assertEqual(client.depth(), {self.SERVERS[0]: 2, self.SERVERS[1]: 256})


def with_udp(clock):
    """``clock`` (a fake one) that also opens UDP "ports": the protocol gets a recording
    transport, ``clock.transport``."""

    def listen(port, protocol, interface=""):
        clock.transport = FakeDatagramTransport()
        protocol.makeConnection(clock.transport)
        return types.SimpleNamespace(stopListening=protocol.doStop)

    clock.listenUDP = listen
    return clock


class ServiceTests(unittest.TestCase):
    """Accounting-On at start; on a clean stop, the live sessions' Stops, then
    Accounting-Off (RFC 2866 §5.1), to the server and into the local log."""

    SERVER = ("192.0.2.10", 1813)

    def setUp(self):
        self.gate = Gateway()
        self.clock = with_udp(self.gate.clock)
        self.clock.advance(T0)
        self.path = state_dir(self) / "accounting.log"
        self.client = AccountingClient([self.SERVER], SECRET, self.clock, timeout=1.0)
        self.accounting = SessionAccounting(
            self.gate.responder,
            AccountingLog(self.path),
            self.clock,
            nas_identifier="asa-1",
            client=self.client,
            nas_address="192.0.2.1",
            run_id="0000000000000001",
        )
        self.gate.responder.observers.append(self.accounting)
        self.service = AccountingService(
            self.accounting, self.clock, own_log=True, drain=5.0, timeout=1.0
        )

    def sent(self):
        packets = [wire.parse(data) for data, _ in self.clock.transport.written]
        return [(p, int.from_bytes(p.get(wire.key("Acct-Status-Type")), "big")) for p in packets]

    def answer(self, request):
        reply = wire.reply(request, wire.Code.ACCOUNTING_RESPONSE, SECRET)
        self.client.datagramReceived(reply, self.SERVER)

    def logged(self):
        lines = Path(self.path).read_text().splitlines()
        return [json.loads(line)["attributes"]["Acct-Status-Type"][0] for line in lines]

    def test_on_stops_then_off(self):
        self.service.startService()
        ((on, kind),) = self.sent()
        self.assertEqual(kind, ACCOUNTING_ON)
        self.assertEqual(on.get(wire.key("Acct-Session-Id")), b"0000000000000001")
        self.assertEqual(on.get(wire.key("NAS-Identifier")), b"asa-1")
        self.answer(on)
        peer = Initiator(self.gate)
        peer.connect()
        self.answer(self.sent()[-1][0])
        stopped = self.service.stopService()
        self.clock.advance(0.5)
        self.assertEqual([k for _, k in self.sent()], [ACCOUNTING_ON, START])  # a session lives
        peer.delete_ike()  # as the responder's shutdown ends it
        stop, kind = self.sent()[-1]
        self.assertEqual(kind, STOP)
        self.clock.advance(0.5)
        self.assertEqual(len(self.sent()), 3)  # the Off waits for the Stop's answer
        self.answer(stop)
        self.clock.advance(0.1)
        off, kind = self.sent()[-1]
        self.assertEqual(kind, ACCOUNTING_OFF)
        self.assertEqual(off.get(wire.key("Acct-Session-Id")), b"0000000000000001")
        self.assertNoResult(stopped)
        self.answer(off)
        self.clock.advance(0.1)
        self.successResultOf(stopped)
        self.assertEqual(self.logged(), ["Accounting-On", "Start", "Stop", "Accounting-Off"])

    def test_an_unanswered_off_holds_the_stop_one_timeout(self):
        self.service.startService()
        stopped = self.service.stopService()
        self.clock.advance(4.9)  # the On is never answered: the deadline (drain) first
        self.assertNoResult(stopped)
        self.clock.advance(0.2)
        self.assertEqual([k for _, k in self.sent()][-1], ACCOUNTING_OFF)
        self.clock.pump([0.1] * 9)
        self.assertNoResult(stopped)
        self.clock.pump([0.1] * 2)
        self.successResultOf(stopped)
        self.assertEqual(self.logged(), ["Accounting-On", "Accounting-Off"])
