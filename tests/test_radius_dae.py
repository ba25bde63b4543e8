"""The RADIUS Dynamic Authorization server (RFC 5176) in-process: requests built and replies
checked by pyrad (its CoAPacket: Request Authenticator §2.3, Message-Authenticator §3.4,
Response Authenticator), sessions made by the scripted IKE initiator on a fake clock, and
what the client sees of a Disconnect or a CoA Session-Timeout (the gateway's DELETE)."""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import struct

from pyrad import packet as pyrad
from twisted.trial import unittest

from tests.ike_peer import PEER, Gateway, Initiator
from tests.support import log_lines, state_dir, write_config
from tests.test_ike_lifecycle import Unvouched
from vpnaaa import config as configuration
from vpnaaa.config import ConfigError, RadiusClient
from vpnaaa.eap.authenticator import Success
from vpnaaa.ike.const import PayloadType, ProtocolId
from vpnaaa.ike.sa import Endpoint
from vpnaaa.radius import wire
from vpnaaa.radius.accounting import AccountingLog
from vpnaaa.radius.dae import ENTRY_COST, DaeProtocol, DynamicAuthorization, NasIdentity
from vpnaaa.radius.session_accounting import SessionAccounting

SECRET = b"dae-secret"
DAC = "192.0.2.50"  # the AAA server sending Disconnect/CoA
OTHER = Endpoint("192.0.2.8", 4500)
NOW = 1_700_000_000.0  # the fake clock's POSIX time once the case starts
OUR_ADDRESS = ipaddress.ip_address("192.0.2.1")
ERROR_CAUSE = 101  # RFC 5176 §3.5
UNSUPPORTED_ATTRIBUTE, MISSING_ATTRIBUTE, NAS_MISMATCH, INVALID_REQUEST = 401, 402, 403, 404
UNSUPPORTED_SERVICE, INVALID_VALUE, NOT_FOUND = 405, 407, 503
AUTHORIZE_ONLY = 17  # RFC 5176 §3.2 Service-Type
THIRD = Endpoint("192.0.2.9", 500)


def clients(**options: object) -> list[RadiusClient]:
    return [RadiusClient("ise", ipaddress.ip_network(DAC), SECRET, **options)]


class DaeTestCase(unittest.TestCase):
    def setUp(self) -> None:
        self.lines: list[str] = log_lines(self)
        self.gate = Gateway(dpd_delay=0)
        self.gate.clock.advance(NOW)
        self.ident = 0
        self.ours: set | None = {OUR_ADDRESS}  # this host's addresses (None: not read yet)

    def server(
        self, table: list[RadiusClient] | None = None, **options: object
    ) -> DynamicAuthorization:
        """The DAE core on the test gateway, its CoA intervals going to a real accounting
        of the gateway's sessions (into a local log)."""
        log = AccountingLog(state_dir(self) / "accounting.log")
        self.addCleanup(log.close)
        self.accounting = SessionAccounting(self.gate.responder, log, self.gate.clock)
        self.gate.responder.observers.append(self.accounting)
        options.setdefault("intervals", self.accounting)
        self.dae = DynamicAuthorization(
            table or clients(),
            self.gate.responder,
            NasIdentity("vpn-gw", lambda: self.ours),
            self.gate.clock.seconds,
            **options,
        )
        return self.dae

    def connected(self, address: Endpoint = PEER) -> tuple[Initiator, object]:
        peer = Initiator(self.gate, address=address)
        peer.connect()
        (sa,) = [s for s in self.gate.responder.sas.values() if s.remote == address]
        return peer, sa

    def request(
        self, code: int, attributes: dict, *, signed: bool = False, secret: bytes = SECRET
    ) -> pyrad.CoAPacket:
        """A request as pyrad builds one; ``attributes`` by dictionary name."""
        self.ident = (self.ident + 1) % 256
        request = pyrad.CoAPacket(code, self.ident, secret, dict=wire.DICTIONARY)
        for name, value in attributes.items():
            request[name] = value
        if signed:
            request.add_message_authenticator()
        return request

    def send(self, request: pyrad.CoAPacket, host: str = DAC) -> pyrad.CoAPacket | None:
        """``request`` to the server; its reply, checked by pyrad, or None."""
        raw = self.dae.receive(request.RequestPacket(), host, 40000)
        if raw is None:
            return None
        reply = pyrad.CoAPacket(packet=raw, secret=SECRET, dict=wire.DICTIONARY)
        self.assertTrue(request.VerifyReply(reply, raw), "Response Authenticator")
        return reply

    def disconnect(self, **attributes: object) -> pyrad.CoAPacket | None:
        return self.send(self.request(pyrad.DisconnectRequest, attributes))

    def coa(self, **attributes: object) -> pyrad.CoAPacket | None:
        return self.send(self.request(pyrad.CoARequest, attributes))

    def assertAck(self, reply: pyrad.CoAPacket | None, code: int) -> None:
        self.assertIsNotNone(reply)
        self.assertEqual(reply.code, code)
        self.assertNotIn(ERROR_CAUSE, reply)

    def assertNak(self, reply: pyrad.CoAPacket | None, code: int, cause: int) -> None:
        self.assertIsNotNone(reply)
        self.assertEqual((reply.code, reply["Error-Cause"]), (code, [cause]))

    def assertDeleteSent(self, peer: Initiator) -> None:
        """The gateway asked the client to delete its IKE SA (RFC 7296 §1.4.1)."""
        (request,) = peer.gateway_requests()
        self.assertEqual(request.get(PayloadType.DELETE).protocol, ProtocolId.IKE)
        peer.answer(request)

    def session_ends(self) -> list[str]:
        return [line for line in self.lines if "session of" in line and " ended: " in line]


class DisconnectTests(DaeTestCase):
    def test_by_session_id(self):
        """§2.1: the matching session ends (a DELETE to its client, Admin-Reset), the
        other stays; Disconnect-ACK."""
        self.server()
        peer, sa = self.connected()
        other, kept = self.connected(OTHER)
        reply = self.disconnect(**{"Acct-Session-Id": sa.session_id.lower()})
        self.assertAck(reply, pyrad.DisconnectACK)
        self.assertDeleteSent(peer)
        self.assertEqual(other.gateway_requests(), [])
        self.assertEqual(list(self.gate.responder.sas.values()), [kept])
        (end,) = self.session_ends()
        self.assertIn("disconnected by RADIUS Disconnect-Request from ise", end)

    def test_by_user_name_ends_every_matching_session(self):
        """§3: a request applies to all the sessions it matches (user names as the
        responder compares them: any case, DOMAIN\\ prefix or not)."""
        self.server()
        first, _ = self.connected()
        second, _ = self.connected(OTHER)
        self.assertAck(self.disconnect(**{"User-Name": "EXAMPLE\\Alice"}), pyrad.DisconnectACK)
        self.assertDeleteSent(first)
        self.assertDeleteSent(second)
        self.assertEqual(self.gate.responder.sas, {})

    def test_a_claimed_user_name_identifies_no_session(self):
        """A session whose user a RADIUS relay authenticated with an Access-Accept that
        named nobody carries the client's own claimed name (``identity_verified`` false):
        a User-Name (with or without Calling-Station-Id) does not reach it, and the NAK
        says why; its Acct-Session-Id or Framed-IP-Address does (what accounting told the
        AAA server)."""
        self.server()
        self.gate.context.profiles[0].eap = Unvouched(self.gate.engine)
        peer, sa = self.connected()
        self.assertFalse(sa.identity_verified)
        nak = pyrad.DisconnectNAK
        self.assertNak(self.disconnect(**{"User-Name": "alice"}), nak, NOT_FOUND)
        caller = {"User-Name": "alice", "Calling-Station-Id": PEER.host}
        self.assertNak(self.disconnect(**caller), nak, NOT_FOUND)
        self.assertNak(self.coa(**{"User-Name": "alice", "Session-Timeout": 5}), 45, NOT_FOUND)
        self.gate.clock.advance(10)
        self.assertEqual(peer.gateway_requests(), [])
        self.assertTrue(any("only the client claimed" in line for line in self.lines))
        by_address = {"User-Name": "alice", "Framed-IP-Address": str(peer.virtual_ip)}
        self.assertAck(self.disconnect(**by_address), pyrad.DisconnectACK)
        self.assertDeleteSent(peer)
        other, sa = self.connected(OTHER)
        self.assertAck(self.disconnect(**{"Acct-Session-Id": sa.session_id}), 41)
        self.assertDeleteSent(other)

    def test_a_vouched_and_a_claimed_session_of_one_name(self):
        """alice's own session (local EAP: vouched) and an impostor's relayed session
        claiming "alice": a Disconnect by User-Name ends alice's only."""
        self.server()
        peer, _ = self.connected()
        self.gate.context.profiles[0].eap = Unvouched(self.gate.engine)
        impostor, claimed = self.connected(OTHER)
        self.assertFalse(claimed.identity_verified)
        self.assertAck(self.disconnect(**{"User-Name": "alice"}), pyrad.DisconnectACK)
        self.assertDeleteSent(peer)
        self.assertEqual(impostor.gateway_requests(), [])
        self.assertEqual(list(self.gate.responder.sas.values()), [claimed])

    def test_every_key_given_must_match(self):
        """§3: User-Name, Framed-IP-Address, Acct-Session-Id, Calling-Station-Id together;
        no session with all of them: Session-Context-Not-Found, nothing ends."""
        self.server()
        peer, sa = self.connected()
        nak = pyrad.DisconnectNAK
        self.assertNak(self.disconnect(**{"User-Name": "bob"}), nak, NOT_FOUND)
        wrong_ip = {"User-Name": "alice", "Framed-IP-Address": "10.77.0.14"}
        self.assertNak(self.disconnect(**wrong_ip), nak, NOT_FOUND)
        wrong_caller = {"User-Name": "alice", "Calling-Station-Id": "192.0.2.99"}
        self.assertNak(self.disconnect(**wrong_caller), nak, NOT_FOUND)
        self.assertEqual(peer.gateway_requests(), [])
        matching = {
            "User-Name": "alice",
            "Framed-IP-Address": str(peer.virtual_ip),
            "Calling-Station-Id": PEER.host,
            "Acct-Session-Id": sa.session_id,
        }
        self.assertAck(self.disconnect(**matching), pyrad.DisconnectACK)
        self.assertDeleteSent(peer)
        # being deleted, it is no longer found
        self.assertNak(self.disconnect(**{"User-Name": "alice"}), nak, NOT_FOUND)

    def test_nas_identification(self):
        """§3: NAS-Identifier, NAS-IP-Address or NAS-IPv6-Address naming another NAS:
        NAS-Identification-Mismatch; naming us: the request goes on."""
        self.server()
        peer, _ = self.connected()
        nak = pyrad.DisconnectNAK
        for other in (
            {"NAS-Identifier": "another-nas"},
            {"NAS-IP-Address": "192.0.2.2"},
            {"NAS-IPv6-Address": "2001:db8::1"},
        ):
            reply = self.disconnect(**{"User-Name": "alice", **other})
            self.assertNak(reply, nak, NAS_MISMATCH)
        ours = {"User-Name": "alice", "NAS-Identifier": "vpn-gw", "NAS-IP-Address": "192.0.2.1"}
        self.assertAck(self.disconnect(**ours), pyrad.DisconnectACK)
        self.assertDeleteSent(peer)

    def test_what_cannot_be_done_is_refused_before_anything_happens(self):
        """§2.3 (all attributes are mandatory), §3.2, §3.5: each NAK with its Error-Cause,
        and the session untouched."""
        self.server()
        peer, _ = self.connected()
        nak = pyrad.DisconnectNAK
        alice = {"User-Name": "alice"}
        # a Disconnect-Request carries identification only (§2.1)
        self.assertNak(
            self.disconnect(**alice, **{"Session-Timeout": 5}), nak, UNSUPPORTED_ATTRIBUTE
        )
        self.assertNak(self.disconnect(**alice, **{"Filter-Id": "x"}), nak, UNSUPPORTED_ATTRIBUTE)
        # §3.6: allowed in a Disconnect-Request, but not supported here
        for unsupported in ({"NAS-Port": 1}, {"Acct-Terminate-Cause": 6}, {"Class": b"c"}):
            self.assertNak(self.disconnect(**alice, **unsupported), nak, UNSUPPORTED_ATTRIBUTE)
        # §3.3 defines State for CoA-Requests only: no use in a Disconnect-Request
        self.assertNak(self.disconnect(**alice, **{"State": b"s"}), nak, UNSUPPORTED_ATTRIBUTE)
        # §3.2: a Service-Type "MUST NOT be included within a Disconnect-Request"; §3.6:
        # Error-Cause is in no request; both an invalid request
        service = {"Service-Type": AUTHORIZE_ONLY}
        self.assertNak(self.disconnect(**alice, **service), nak, INVALID_REQUEST)
        self.assertNak(self.disconnect(**alice, **{"Error-Cause": 401}), nak, INVALID_REQUEST)
        self.assertNak(self.disconnect(**{"NAS-Identifier": "vpn-gw"}), nak, MISSING_ATTRIBUTE)
        # §3.6: each of these at most once
        for twice in (
            {"User-Name": ["alice", "bob"]},
            {"User-Name": "alice", "NAS-Identifier": ["vpn-gw", "vpn-gw"]},
            {"User-Name": "alice", "Event-Timestamp": [int(NOW), int(NOW)]},
        ):
            self.assertNak(self.disconnect(**twice), nak, INVALID_REQUEST)
        self.assertEqual(peer.gateway_requests(), [])
        self.assertEqual(len(self.gate.responder.sas), 1)

    def test_proxy_state_is_echoed(self):
        """RFC 5176 §3.1 (RFC 2865 §5.33): Proxy-State back in order."""
        self.server()
        self.connected()
        reply = self.disconnect(**{"User-Name": "bob", "Proxy-State": [b"one", b"two"]})
        self.assertNak(reply, pyrad.DisconnectNAK, NOT_FOUND)
        self.assertEqual(reply["Proxy-State"], [b"one", b"two"])


class CoaTests(DaeTestCase):
    def test_session_timeout_ends_the_session_then(self):
        """§2.2 with RFC 2865 §5.27: CoA-ACK, and the session ends that many seconds
        later (a DELETE to the client, cause "session timeout"), not before."""
        self.server()
        peer, sa = self.connected()
        reply = self.coa(**{"Acct-Session-Id": sa.session_id, "Session-Timeout": 30})
        self.assertAck(reply, pyrad.CoAACK)
        self.gate.clock.advance(29)
        self.assertEqual(peer.gateway_requests(), [])
        self.gate.clock.advance(1)
        self.assertDeleteSent(peer)
        self.assertIn("ended: session timeout", self.session_ends()[0])

    def test_changes_are_atomic(self):
        """§2.3: one change the NAS cannot make and none is made (CoA-NAK)."""
        self.server()
        peer, sa = self.connected()
        reply = self.coa(**{"User-Name": "alice", "Session-Timeout": 30, "Filter-Id": "x"})
        self.assertNak(reply, pyrad.CoANAK, UNSUPPORTED_ATTRIBUTE)
        reply = self.coa(
            **{"User-Name": "alice", "Session-Timeout": 30, "Acct-Interim-Interval": 5}
        )
        self.assertNak(reply, pyrad.CoANAK, INVALID_VALUE)  # RFC 2869 §5.16: 60 s at least
        self.gate.clock.advance(3600)
        self.assertEqual(peer.gateway_requests(), [])
        self.assertEqual(self.accounting.interim_interval(sa.session_id), 0)  # unchanged

    def test_refusals(self):
        self.server()
        peer, _ = self.connected()
        nak = pyrad.CoANAK
        self.assertNak(self.coa(**{"User-Name": "alice"}), nak, MISSING_ATTRIBUTE)
        self.assertNak(self.coa(**{"Session-Timeout": 30}), nak, MISSING_ATTRIBUTE)
        self.assertNak(self.coa(**{"User-Name": "bob", "Session-Timeout": 30}), nak, NOT_FOUND)
        zero = {"User-Name": "alice", "Session-Timeout": 0}
        self.assertNak(self.coa(**zero), nak, INVALID_VALUE)
        authorize_only = {"User-Name": "alice", "Service-Type": AUTHORIZE_ONLY, "State": b"s"}
        self.assertNak(self.coa(**authorize_only), nak, UNSUPPORTED_SERVICE)  # §3.2
        del authorize_only["State"]  # §3.3: "... but lacking a State Attribute": 402
        self.assertNak(self.coa(**authorize_only), nak, MISSING_ATTRIBUTE)
        other_service = {"User-Name": "alice", "Service-Type": 1, "Session-Timeout": 30}
        self.assertNak(self.coa(**other_service), nak, UNSUPPORTED_SERVICE)
        for unsupported in ({"Filter-Id": "guest"}, {"Idle-Timeout": 60}, {"EAP-Message": b"x"}):
            reply = self.coa(**{"User-Name": "alice", "Session-Timeout": 30, **unsupported})
            self.assertNak(reply, nak, UNSUPPORTED_ATTRIBUTE)
        with_cause = {"User-Name": "alice", "Session-Timeout": 30, "Error-Cause": 201}
        self.assertNak(self.coa(**with_cause), nak, INVALID_REQUEST)
        two_states = {"User-Name": "alice", "Session-Timeout": 30, "State": [b"a", b"b"]}
        self.assertNak(self.coa(**two_states), nak, INVALID_REQUEST)
        self.gate.clock.advance(3600)
        self.assertEqual(peer.gateway_requests(), [])

    def test_state_is_echoed(self):
        """§3.3: State "MUST be sent unmodified" back in the CoA-ACK or CoA-NAK, whatever
        the answer (and Proxy-State after it, §3.1)."""
        self.server()
        _, sa = self.connected()
        state = bytes(range(40))
        ok = {"Acct-Session-Id": sa.session_id, "Session-Timeout": 30, "State": state}
        reply = self.coa(**ok)
        self.assertAck(reply, pyrad.CoAACK)
        self.assertEqual(reply["State"], [state])
        nobody = {"User-Name": "bob", "Session-Timeout": 30, "State": state, "Proxy-State": b"p"}
        reply = self.coa(**nobody)
        self.assertNak(reply, pyrad.CoANAK, NOT_FOUND)
        self.assertEqual((reply["State"], reply["Proxy-State"]), ([state], [b"p"]))
        refused = {"User-Name": "alice", "Filter-Id": "x", "State": state}
        self.assertEqual(self.coa(**refused)["State"], [state])
        self.assertNotIn("State", self.coa(**{"User-Name": "bob", "Session-Timeout": 3}))

    def test_interim_interval_goes_to_the_sessions_accounting(self):
        """RFC 2869 §5.16 Acct-Interim-Interval by CoA (RFC 5176 §3.1): the accounting of
        that session only sends Interim-Updates that often from now on; with accounting
        off, the attribute is unsupported (NAK 401, nothing changed)."""
        self.server()
        peer, sa = self.connected()
        _, other = self.connected(OTHER)
        wanted = {"Acct-Session-Id": sa.session_id, "Acct-Interim-Interval": 600}
        self.assertAck(self.coa(**wanted), pyrad.CoAACK)
        self.assertEqual(self.accounting.interim_interval(sa.session_id), 600)
        self.assertEqual(self.accounting.interim_interval(other.session_id), 0)
        peer.delete_ike()
        self.assertIsNone(self.accounting.interim_interval(sa.session_id))
        self.server(intervals=None)
        both = {"User-Name": "alice", "Session-Timeout": 30, "Acct-Interim-Interval": 600}
        self.assertNak(self.coa(**both), pyrad.CoANAK, UNSUPPORTED_ATTRIBUTE)


class Renamed(Unvouched):
    """The EAP engine as a relay whose server's Accept names the user ``name`` (with a
    Windows domain), as an AAA server does."""

    def __init__(self, engine, name):
        super().__init__(engine)
        self.name = name

    def step(self, conversation, response):
        def renamed(step):
            conversation, result = step
            if isinstance(result, Success):
                result = dataclasses.replace(result, identity=self.name)
            return conversation, result

        return self.engine.step(conversation, response).addCallback(renamed)


def raw_request(code: int, ident: int, attributes: bytes, secret: bytes = SECRET) -> bytes:
    """A request with its Request Authenticator computed here (RFC 5176 §2.3), for
    attributes pyrad will not encode (wrong lengths)."""
    head = struct.pack("!BBH", code, ident, 20 + len(attributes))
    authenticator = hashlib.md5(head + bytes(16) + attributes + secret).digest()
    return head + authenticator + attributes


class SecurityTests(DaeTestCase):
    def test_unknown_clients_are_dropped_with_one_log_line(self):
        self.server()
        self.connected()
        for _ in range(3):
            self.assertIsNone(self.send(self.request(40, {"User-Name": "alice"}), "192.0.2.66"))
        dropped = [line for line in self.lines if "not a configured DAE client" in line]
        self.assertEqual(len(dropped), 1, dropped)
        self.assertEqual(len(self.gate.responder.sas), 1)

    def test_a_wrong_secret_gets_no_answer(self):
        """§2.3: the Request Authenticator is MD5 over the packet and the secret."""
        self.server()
        self.connected()
        self.assertIsNone(self.send(self.request(40, {"User-Name": "alice"}, secret=b"guess")))
        self.assertIsNone(self.dae.receive(b"\x28\x01\x00\x10" + bytes(12), DAC, 1))  # malformed
        access = pyrad.AuthPacket(pyrad.AccessRequest, 1, SECRET, dict=wire.DICTIONARY)
        self.assertIsNone(self.dae.receive(access.RequestPacket(), DAC, 1))
        self.assertEqual(len(self.gate.responder.sas), 1)
        self.assertTrue(any("bad Request Authenticator" in line for line in self.lines))

    def test_message_authenticator(self):
        """§3.4: verified when present (computed with a zero Request Authenticator, as
        pyrad and FreeRADIUS do); a client with require_message_authenticator must send
        one."""
        self.server(clients(require_message_authenticator=True))
        peer, _ = self.connected()
        self.assertIsNone(self.disconnect(**{"User-Name": "alice"}))
        forged = self.request(40, {"User-Name": "alice"}, signed=True)
        data = bytearray(forged.RequestPacket())
        data[-1] ^= 1  # the Message-Authenticator's last octet; fix the authenticator
        data[4:20] = hashlib.md5(bytes(data[:4]) + bytes(16) + bytes(data[20:]) + SECRET).digest()
        self.assertIsNone(self.dae.receive(bytes(data), DAC, 1))
        self.assertEqual(peer.gateway_requests(), [])
        signed = self.request(40, {"User-Name": "alice"}, signed=True)
        self.assertAck(self.send(signed), pyrad.DisconnectACK)
        self.assertDeleteSent(peer)

    def test_event_timestamp_window(self):
        """§6.3: an Event-Timestamp more than replay_window seconds off our clock and the
        request is silently discarded; with require_event_timestamp so is one without."""
        self.server(replay_window=300.0, require_event_timestamp=True)
        peer, _ = self.connected()
        now = int(self.gate.clock.seconds())
        for stamp in (now - 301, now + 301):
            self.assertIsNone(self.disconnect(**{"User-Name": "alice", "Event-Timestamp": stamp}))
        self.assertIsNone(self.disconnect(**{"User-Name": "alice"}))
        self.assertIsNone(
            self.dae.receive(raw_request(40, 9, b"\x37\x05\x00\x00\x00" + b"\x01\x07alice"), DAC, 1)
        )
        self.assertEqual(peer.gateway_requests(), [])
        current = {"User-Name": "alice", "Event-Timestamp": now - 299}
        self.assertAck(self.disconnect(**current), pyrad.DisconnectACK)
        self.assertDeleteSent(peer)

    def test_duplicates_and_replays_get_the_first_answer(self):
        """§2.3, RFC 5080 §2.2.2: the same request again (same client, Identifier and
        Request Authenticator) gets the same reply and is not acted on again, even from
        another port and after the client reused the Identifier; once its Event-Timestamp
        is stale it gets nothing."""
        self.server(replay_window=300.0)
        peer, _ = self.connected()
        now = int(self.gate.clock.seconds())
        first = self.request(40, {"User-Name": "alice", "Event-Timestamp": now})
        data = first.RequestPacket()
        answer = self.dae.receive(data, DAC, 40000)
        self.assertAck(pyrad.CoAPacket(packet=answer, dict=wire.DICTIONARY), 41)
        self.assertEqual(len(peer.gateway_requests()), 1)
        self.gate.clock.advance(10)
        _, newer = self.connected(THIRD)  # alice again
        self.assertEqual(self.dae.receive(data, DAC, 40000), answer)
        self.assertEqual(self.dae.receive(data, DAC, 40001), answer)
        # the client reuses the Identifier for another request; the old one replayed
        wanted = {"Acct-Session-Id": newer.session_id, "Acct-Interim-Interval": 600}
        reused = self.request(43, {**wanted, "Event-Timestamp": now + 10})
        reused.id = first.id
        self.assertAck(self.send(reused), pyrad.CoAACK)
        self.assertEqual(self.dae.receive(data, DAC, 40000), answer)
        self.assertEqual(self.gate.responder.find(user="alice"), [newer])  # not disconnected
        self.gate.clock.advance(300)
        self.assertIsNone(self.dae.receive(data, DAC, 40000))
        self.assertEqual(self.gate.responder.find(user="alice"), [newer])

    def test_a_replay_stamped_ahead_of_our_clock_is_known_as_long_as_it_is_fresh(self):
        """§6.3: "The time window used for duplicate detection MUST be the same as the
        window used to detect a stale Event-Timestamp": a client whose clock runs 250 s
        ahead stamps a Disconnect that stays fresh until 550 s from now, so its answer is
        remembered as long; a replay at +301 s must not end alice's next session."""
        self.server(replay_window=300.0)
        peer, _ = self.connected()
        ahead = int(self.gate.clock.seconds()) + 250
        data = self.request(40, {"User-Name": "alice", "Event-Timestamp": ahead}).RequestPacket()
        answer = self.dae.receive(data, DAC, 40000)
        self.assertDeleteSent(peer)
        self.gate.clock.advance(301)
        _, again = self.connected(THIRD)  # alice back
        self.assertEqual(self.dae.receive(data, DAC, 40000), answer)  # known: not acted on
        self.assertEqual(self.gate.responder.find(user="alice"), [again])
        self.gate.clock.advance(250)
        self.assertIsNone(self.dae.receive(data, DAC, 40000))  # stale now
        self.assertEqual(self.gate.responder.find(user="alice"), [again])

    def test_a_flood_of_bad_packets_is_one_log_line(self):
        """§6.1 silently discards what a client cannot have sent; a spoofer choosing the
        numbers in each drop's reason (lengths, codes) still gets one line per kind."""
        self.server()
        for n in range(300):
            self.dae.receive(raw_request(40, n % 256, b"\x01\x07alice")[: -n % 5 - 1], DAC, 1)
            self.dae.receive(bytes([41 + n % 100]) + raw_request(40, 1, b"")[1:], DAC, 1)
        dropped = [line for line in self.lines if "dropped DAE packet" in line]
        self.assertLessEqual(len(dropped), 3)

    def test_what_an_outsider_can_send_is_dropped_quietly(self):
        """§6.1: what no client with its secret sent is dropped through the Twisted edge
        with one log line per kind and no traceback; nothing is remembered, no session
        touched: a client's address without the secret (a datagram of 60 KiB of it too),
        a Length field beyond the datagram or over 4096 octets (RFC 2865 §3), attributes
        of Length 0 or 1 or overrunning the packet, a Message-Authenticator not of 16
        octets (RFC 3579 §3.2), other codes, nothing at all; and anything from an address
        that is no client."""
        self.server()
        peer, _ = self.connected()
        alice = b"\x01\x07alice"
        header = bytes([40, 1])
        outsider = [
            raw_request(40, 1, alice, secret=b"guess"),
            raw_request(40, 2, alice, secret=b"guess") + bytes(60_000),
            header + (100).to_bytes(2, "big") + bytes(16) + alice,
            header + (5000).to_bytes(2, "big") + bytes(16) + alice + bytes(5000),
            raw_request(40, 3, b"\x01\x00"),
            raw_request(40, 4, b"\x01\x01"),
            raw_request(40, 5, b"\x01\x09ali"),
            raw_request(40, 6, alice + b"\x50\x06abcd"),
            raw_request(41, 7, alice),
            raw_request(1, 8, alice),
            b"",
            bytes(19),
        ]
        edge = DaeProtocol(self.dae)  # no transport: writing anything would fail the test
        for _ in range(3):
            for data in outsider:
                edge.datagramReceived(data, (DAC, 3799))
                edge.datagramReceived(data, ("::ffff:" + DAC, 3799))
            edge.datagramReceived(raw_request(40, 9, alice), ("192.0.2.66", 3799))
        self.assertEqual(len(self.dae.answers), 0)
        self.assertEqual(peer.gateway_requests(), [])
        self.assertEqual(len(self.gate.responder.sas), 1)
        dropped = [line for line in self.lines if "dropped" in line]
        kinds = ("malformed", "not authentic", "not a configured DAE client")
        self.assertEqual(len(dropped), len(kinds), dropped)
        self.assertFalse([line for line in self.lines if "Traceback" in line or "error" in line])

    def test_invalid_values(self):
        """§3.5 Invalid-Attribute-Value: attributes of the wrong size."""
        self.server()
        self.connected()
        session_timeout_of_two = b"\x1b\x04\x00\x05"
        reply = self.dae.receive(
            raw_request(43, 7, b"\x01\x07alice" + session_timeout_of_two), DAC, 1
        )
        decoded = pyrad.CoAPacket(packet=reply, dict=wire.DICTIONARY)
        self.assertEqual((decoded.code, decoded["Error-Cause"]), (pyrad.CoANAK, [INVALID_VALUE]))
        framed_of_three = b"\x08\x05\x0a\x4d\x00"
        reply = self.dae.receive(raw_request(40, 8, framed_of_three), DAC, 1)
        decoded = pyrad.CoAPacket(packet=reply, dict=wire.DICTIONARY)
        self.assertEqual(
            (decoded.code, decoded["Error-Cause"]), (pyrad.DisconnectNAK, [INVALID_VALUE])
        )

    def test_a_user_name_in_another_domain_is_another_account(self):
        """RFC 5176 §3 matches the session's User-Name: CORPA\\bob is not CORPB\\bob to
        an AAA server, so a Disconnect for one must not end the other's session."""
        self.server()
        self.gate.context.profiles[0].eap = Renamed(self.gate.engine, "CORPB\\alice")
        peer = Initiator(self.gate)
        peer.connect()
        reply = self.disconnect(**{"User-Name": "CORPA\\alice"})
        self.assertNak(reply, pyrad.DisconnectNAK, NOT_FOUND)
        self.assertEqual(peer.gateway_requests(), [])
        self.assertAck(self.disconnect(**{"User-Name": "corpb\\ALICE"}), pyrad.DisconnectACK)
        self.assertDeleteSent(peer)

    def test_nas_addresses(self):
        """NAS-IP-Address / NAS-IPv6-Address: ours only if listed (this host's interface
        addresses, or [dae] nas_addresses); the unspecified and loopback addresses never
        (every host has them). Before this host's addresses are read, a request naming
        one is dropped (its client sends it again), not refused."""
        self.server()
        peer, _ = self.connected()
        self.ours = {ipaddress.ip_address(a) for a in ("0.0.0.0", "127.0.0.1", "::", "::1")}
        self.ours.add(ipaddress.ip_address("2001:db8::1"))
        nak = pyrad.DisconnectNAK
        for nobody in ("0.0.0.0", "127.0.0.1", "127.9.9.9"):
            reply = self.disconnect(**{"User-Name": "alice", "NAS-IP-Address": nobody})
            self.assertNak(reply, nak, NAS_MISMATCH)
        for nobody in ("::", "::1"):
            reply = self.disconnect(**{"User-Name": "alice", "NAS-IPv6-Address": nobody})
            self.assertNak(reply, nak, NAS_MISMATCH)
        self.ours = None
        ours = {"User-Name": "alice", "NAS-IPv6-Address": "2001:db8::1"}
        self.assertIsNone(self.disconnect(**ours))
        self.assertTrue(any("addresses are not read yet" in line for line in self.lines))
        self.ours = {ipaddress.ip_address("2001:db8::1")}
        self.assertAck(self.disconnect(**ours), pyrad.DisconnectACK)
        self.assertDeleteSent(peer)


class AnswerMemoryTests(DaeTestCase):
    """The answers kept for duplicates (§2.3) are bounded in octets per client: a client
    filling its share with the largest answers it can provoke (Proxy-State is echoed)
    forgets its own oldest, never another client's."""

    MEMORY = 64 * 1024

    def setUp(self) -> None:
        super().setUp()
        other = RadiusClient("freeradius", ipaddress.ip_network("192.0.2.60"), SECRET)
        self.server([*clients(), other], memory=self.MEMORY)

    def test_a_flooding_client_keeps_within_its_share(self):
        share = self.MEMORY // 2
        bulky = {"User-Name": "bob", "Proxy-State": [bytes(250)] * 15}
        for _ in range(200):
            self.assertNak(self.disconnect(**bulky), pyrad.DisconnectNAK, NOT_FOUND)
        ise = clients()[0]
        self.assertLessEqual(self.dae.answers.octets(ise), share)
        self.assertGreater(self.dae.answers.octets(ise), share - ENTRY_COST - 4096)
        self.assertLess(len(self.dae.answers), 200)

    def test_one_client_cannot_evict_anothers_answers(self):
        peer, _ = self.connected()
        first = self.request(40, {"User-Name": "alice"})
        data = first.RequestPacket()
        answer = self.dae.receive(data, "192.0.2.60", 1812)
        self.assertAck(pyrad.CoAPacket(packet=answer, dict=wire.DICTIONARY), 41)
        self.assertDeleteSent(peer)
        bulky = {"User-Name": "bob", "Proxy-State": [bytes(250)] * 15}
        for _ in range(500):  # ise: far more than its share
            self.disconnect(**bulky)
        _, again = self.connected(THIRD)  # alice back
        self.assertEqual(self.dae.receive(data, "192.0.2.60", 1812), answer)  # still known
        self.assertEqual(self.gate.responder.find(user="alice"), [again])


class ConfigTests(unittest.TestCase):
    def load(self, text: str, ike: str = "") -> configuration.Config:
        state = state_dir(self)
        path = write_config(state / "vpnaaa.toml", f"[radius]\nenabled = false\n{ike}\n{text}")
        return configuration.load(path, str(state))

    def test_off_by_default_and_unchecked_when_off(self):
        self.assertFalse(self.load("").dae.enabled)
        self.assertFalse(self.load('[dae]\nport = "x"\n').dae.enabled)

    def test_a_full_section(self):
        relay = '[ike.radius]\nserver = "192.0.2.9"\nsecret = "s"\nnas_identifier = "asa-1"\n'
        config = self.load(
            '[dae]\nenabled = true\nlisten = "0.0.0.0"\nport = 3800\nreplay_window = 60\n'
            'require_event_timestamp = true\nnas_addresses = ["192.0.2.1", "2001:db8::1"]\n'
            '[[dae.clients]]\nname = "ise"\naddress = "192.0.2.0/28"\nsecret = "s3cret"\n'
            "require_message_authenticator = true\n",
            relay,
        ).dae
        self.assertEqual((config.listen, config.port, config.replay_window), ("0.0.0.0", 3800, 60))
        self.assertEqual(config.nas_identifier, "asa-1")  # the relay's, by default
        self.assertTrue(config.require_event_timestamp)
        self.assertEqual([str(a) for a in config.nas_addresses], ["192.0.2.1", "2001:db8::1"])
        (client,) = config.clients
        self.assertEqual((client.name, str(client.network)), ("ise", "192.0.2.0/28"))
        self.assertEqual((client.secret, client.require_message_authenticator), (b"s3cret", True))

    def test_errors_name_the_key(self):
        client = '[[dae.clients]]\naddress = "192.0.2.5"\nsecret = "s"\n'
        for text, key in (
            ("[dae]\nenabled = true\n", "dae.clients"),
            (f"[dae]\nenabled = true\nreplay_window = 0\n{client}", "dae.replay_window"),
            (f'[dae]\nenabled = true\nnas_addresses = ["x"]\n{client}', "dae.nas_addresses"),
            (f'[dae]\nenabled = true\nnas_addresses = ["::1"]\n{client}', "dae.nas_addresses"),
            (
                f'[dae]\nenabled = true\nnas_addresses = ["192.0.2.1", "0.0.0.0"]\n{client}',
                "dae.nas_addresses",
            ),
            (
                '[dae]\nenabled = true\n[[dae.clients]]\naddress = "nope"\n',
                "dae.clients[0].address",
            ),
            (
                '[dae]\nenabled = true\n[[dae.clients]]\naddress = "192.0.2.5"\nallow_chap = true\n'
                'secret = "s"\n',
                "dae.clients[0].allow_chap",
            ),
        ):
            with self.assertRaises(ConfigError) as caught:
                self.load(text)
            self.assertEqual(caught.exception.key, key, text)
        with self.assertRaises(ConfigError) as caught:
            self.load(f"[dae]\nenabled = true\n{client}", "[ike]\nenabled = false\n")
        self.assertEqual(caught.exception.key, "dae.enabled")
