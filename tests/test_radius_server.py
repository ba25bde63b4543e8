"""The RADIUS UDP edge in memory: validation, duplicates, bad input, reply format."""

import hashlib
import ipaddress
import json
import os

from pyrad.packet import AcctPacket, AuthPacket
from twisted.internet import defer, task
from twisted.internet.testing import FakeDatagramTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from tests.support import state_dir
from tests.test_mschap import AUTH_CHALLENGE, NT_RESPONSE, PASSWORD, PEER_CHALLENGE
from vpnaaa import auth
from vpnaaa.config import RadiusClient
from vpnaaa.radius import wire
from vpnaaa.radius.accounting import AccountingLog
from vpnaaa.radius.handlers import AccessHandler
from vpnaaa.radius.server import ClientTable, DuplicateCache, acct_protocol, auth_protocol
from vpnaaa.users import User, UserStore, write_users

SECRET = b"unit-secret"
NAS = ("127.0.0.1", 40000)


class CountingBackend:
    """The local backend, counting calls; ``hold`` parks verdicts until released."""

    def __init__(self, inner):
        self.inner = inner
        self.calls = 0
        self.hold = False
        self.parked = []

    def authenticate(self, username, credentials, source=None):
        self.calls += 1
        d = self.inner.authenticate(username, credentials, source)
        if not self.hold:
            return d
        parked = defer.Deferred()
        self.parked.append((d, parked))
        return parked

    def release(self):
        for inner, parked in self.parked:
            inner.chainDeferred(parked)
        self.parked = []


def mschapv2_request(
    ident=7, packet_id=1, nt_response=NT_RESPONSE, ma=True, secret=SECRET, proxy_states=()
):
    """The RFC 2759 §9.2 sample as an Access-Request (RFC 2548 §2.3.2 layout)."""
    request = AuthPacket(
        code=wire.Code.ACCESS_REQUEST,
        id=packet_id,
        secret=secret,
        dict=wire.DICTIONARY,
        authenticator=os.urandom(16),
    )
    request.AddAttribute("User-Name", "User")
    request.AddAttribute("MS-CHAP-Challenge", AUTH_CHALLENGE)
    request.AddAttribute(
        "MS-CHAP2-Response", bytes([ident, 0]) + PEER_CHALLENGE + bytes(8) + nt_response
    )
    for state in proxy_states:
        request.AddAttribute("Proxy-State", state)
    if ma:
        request.add_message_authenticator()
    return request


class ServerTestCase(unittest.TestCase):
    def setUp(self):
        state = state_dir(self)
        write_users(state / "users.json", {"User": User.create("User", PASSWORD, chap=True)})
        store = UserStore(state / "users.json")
        store.load()
        self.clock = task.Clock()
        self.backend = CountingBackend(auth.LocalBackend(store, self.clock))
        clients = ClientTable(
            [
                RadiusClient("nas", ipaddress.ip_network("127.0.0.0/24"), SECRET),
                RadiusClient(
                    "strict",
                    ipaddress.ip_network("127.0.0.9/32"),
                    SECRET,
                    require_message_authenticator=True,
                ),
            ]
        )
        self.duplicates = DuplicateCache(self.clock, window=5.0)
        self.auth = auth_protocol(clients, self.duplicates, AccessHandler(self.backend))
        self.auth.makeConnection(FakeDatagramTransport())
        self.accounting_path = state / "accounting.log"
        store_log = AccountingLog(self.accounting_path)
        self.addCleanup(store_log.close)
        self.acct = acct_protocol(clients, DuplicateCache(self.clock, 5.0), store_log)
        self.acct.makeConnection(FakeDatagramTransport())

    def send(self, protocol, data, addr=NAS):
        before = len(protocol.transport.written)
        protocol.datagramReceived(data, addr)
        return [packet for packet, _ in protocol.transport.written[before:]]

    def exchange(self, request, addr=NAS):
        """Send ``request``; return the verified decoded reply (or fail)."""
        (raw,) = self.send(self.auth, request.RequestPacket(), addr)
        reply = AuthPacket(packet=raw, secret=SECRET, dict=wire.DICTIONARY)
        self.assertTrue(request.VerifyReply(reply, raw, enforce_ma=True))
        # BlastRADIUS hardening: the Message-Authenticator is the first attribute.
        self.assertEqual(raw[20], wire.MESSAGE_AUTHENTICATOR)
        return reply


class AccessTests(ServerTestCase):
    def test_mschapv2_accept_carries_success_and_keys(self):
        request = mschapv2_request(ident=9)
        reply = self.exchange(request)
        reply.request_authenticator = request.authenticator  # to decrypt the MPPE keys
        self.assertEqual(reply.code, wire.Code.ACCESS_ACCEPT)
        self.assertEqual(
            reply["MS-CHAP2-Success"][0], b"\x09S=407A5589115FD0D6209F510FE9C04566932CDA56"
        )
        self.assertEqual(
            reply["MS-MPPE-Send-Key"][0], bytes.fromhex("8B7CDC149B993A1BA118CB153F56DCCB")
        )

    def test_mschapv2_reject_carries_ms_chap_error(self):
        bad = bytes(24)
        reply = self.exchange(mschapv2_request(ident=3, nt_response=bad))
        self.assertEqual(reply.code, wire.Code.ACCESS_REJECT)
        self.assertEqual(reply["Reply-Message"], ["Authentication failed"])
        error = reply["MS-CHAP-Error"][0]
        self.assertTrue(error.startswith("\x03E=691 R=0 C="), error)

    def test_pap_password_octets_must_match_exactly(self):
        """pyrad's PwDecrypt drops undecodable octets; "pass\\xff" must not equal "pass"."""
        request = AuthPacket(code=1, id=4, secret=SECRET, dict=wire.DICTIONARY)
        request.AddAttribute("User-Name", "User")
        request["User-Password"] = [request.PwCrypt(PASSWORD.encode() + b"\xff")]
        received = wire.parse(request.RequestPacket())
        client = RadiusClient("nas", ipaddress.ip_network("127.0.0.1"), SECRET)
        d = AccessHandler(self.backend).handle(received, client, "nas")
        return d.addCallback(lambda raw: self.assertEqual(raw[0], wire.Code.ACCESS_REJECT))

    def test_status_server(self):
        request = AuthPacket(
            code=wire.Code.STATUS_SERVER,
            id=11,
            secret=SECRET,
            dict=wire.DICTIONARY,
            authenticator=os.urandom(16),
        )
        request.add_message_authenticator()
        self.assertEqual(self.exchange(request).code, wire.Code.ACCESS_ACCEPT)


class DuplicateTests(ServerTestCase):
    def test_retransmission_is_answered_from_the_cache(self):
        raw = mschapv2_request().RequestPacket()
        (first,) = self.send(self.auth, raw)
        (second,) = self.send(self.auth, raw)
        self.assertEqual(first, second)
        self.assertEqual(self.backend.calls, 1)

    def test_retransmission_while_pending_is_dropped_then_answered_once(self):
        self.backend.hold = True
        raw = mschapv2_request().RequestPacket()
        self.assertEqual(self.send(self.auth, raw), [])
        self.assertEqual(self.send(self.auth, raw), [])
        self.backend.release()
        self.assertEqual(len(self.auth.transport.written), 1)
        self.assertEqual(self.backend.calls, 1)

    def test_new_authenticator_under_the_same_id_is_a_new_request(self):
        self.send(self.auth, mschapv2_request(packet_id=5).RequestPacket())
        self.send(self.auth, mschapv2_request(packet_id=5).RequestPacket())
        self.assertEqual(self.backend.calls, 2)

    def test_entries_expire(self):
        raw = mschapv2_request().RequestPacket()
        self.send(self.auth, raw)
        self.clock.advance(6)
        self.send(self.auth, raw)
        self.assertEqual(self.backend.calls, 2)
        self.clock.advance(6)
        self.send(self.auth, mschapv2_request(packet_id=2).RequestPacket())
        self.assertEqual(len(self.duplicates), 1)


class DropTests(ServerTestCase):
    """Every one of these gets no answer and one log line, and the server goes on."""

    def assertDropped(self, data, addr=NAS, protocol=None):
        protocol = protocol or self.auth
        self.assertEqual(self.send(protocol, data, addr), [])
        self.assertEqual(len(self.flushLoggedErrors()), 0)
        # a good request is still answered afterwards
        self.assertEqual(
            self.exchange(mschapv2_request(packet_id=200)).code, wire.Code.ACCESS_ACCEPT
        )

    def test_unknown_client(self):
        self.assertDropped(mschapv2_request().RequestPacket(), addr=("192.0.2.1", 1812))

    def test_wrong_secret(self):
        self.assertDropped(mschapv2_request(secret=b"other").RequestPacket())

    def test_missing_message_authenticator_for_a_strict_client(self):
        raw = mschapv2_request(ma=False).RequestPacket()
        self.assertEqual(self.send(self.auth, raw, ("127.0.0.9", 1)), [])
        self.assertEqual(len(self.send(self.auth, raw, NAS)), 1)

    def test_status_server_without_message_authenticator(self):
        request = AuthPacket(
            code=wire.Code.STATUS_SERVER,
            id=1,
            secret=SECRET,
            dict=wire.DICTIONARY,
            authenticator=os.urandom(16),
        )
        request.message_authenticator = False
        self.assertDropped(request.RequestPacket())

    def test_truncated(self):
        raw = mschapv2_request().RequestPacket()
        for cut in (0, 1, 19):
            self.assertDropped(raw[:cut])
        self.assertDropped(raw[:-5])  # Length field promises more than arrived

    def test_length_field_out_of_range(self):
        raw = bytearray(mschapv2_request().RequestPacket())
        for length in (0, 19, 4097, 65535):
            raw[2:4] = length.to_bytes(2, "big")
            self.assertDropped(bytes(raw))

    def test_oversized_datagram(self):
        raw = mschapv2_request().RequestPacket()
        padded = raw[:2] + (4097).to_bytes(2, "big") + raw[4:] + bytes(4097 - len(raw))
        self.assertDropped(padded)

    def test_bad_attribute_lengths(self):
        raw = mschapv2_request(ma=False).RequestPacket()
        for bad in (b"\x01\x00", b"\x01\x01", b"\x01\xff", b"\x01"):
            data = raw + bad
            data = data[:2] + len(data).to_bytes(2, "big") + data[4:]
            self.assertDropped(data)

    def test_malformed_vendor_attribute_is_kept_raw(self):
        """A Vendor-Specific whose sub-attributes do not parse is opaque data (RFC 2865
        §5.26 only recommends the sub-attribute layout), not a reason to drop the request."""
        raw = mschapv2_request(ma=False).RequestPacket()
        data = raw + b"\x1a\x07\x00\x00\x01\x37\x01"
        data = data[:2] + len(data).to_bytes(2, "big") + data[4:]
        (reply,) = self.send(self.auth, data)
        self.assertEqual(reply[0], wire.Code.ACCESS_ACCEPT)

    def test_garbage(self):
        for seed in range(20):
            data = os.urandom(20 + seed * 13)
            self.assertDropped(data)

    def test_code_not_served_on_this_port(self):
        request = AcctPacket(id=3, secret=SECRET, dict=wire.DICTIONARY)
        request.AddAttribute("Acct-Status-Type", "Start")
        self.assertDropped(request.RequestPacket())


class AccountingTests(ServerTestCase):
    def accounting_request(self, packet_id=1, secret=SECRET):
        request = AcctPacket(id=packet_id, secret=secret, dict=wire.DICTIONARY)
        request.AddAttribute("User-Name", "User")
        request.AddAttribute("Acct-Status-Type", "Stop")
        request.AddAttribute("Acct-Session-Id", "s-1")
        request.AddAttribute("Acct-Input-Octets", 1234)
        return request

    def test_record_is_stored_before_the_response(self):
        request = self.accounting_request()
        (raw,) = self.send(self.acct, request.RequestPacket())
        reply = AcctPacket(packet=raw, secret=SECRET, dict=wire.DICTIONARY)
        self.assertTrue(request.VerifyReply(reply, raw))
        self.assertEqual(reply.code, wire.Code.ACCOUNTING_RESPONSE)
        (line,) = self.accounting_path.read_text().splitlines()
        record = json.loads(line)
        self.assertEqual(record["client"], "nas")
        self.assertEqual(record["attributes"]["Acct-Status-Type"], ["Stop"])
        self.assertEqual(record["attributes"]["Acct-Input-Octets"], [1234])

    def test_bad_request_authenticator_is_dropped(self):
        raw = self.accounting_request(secret=b"wrong").RequestPacket()
        self.assertEqual(self.send(self.acct, raw), [])
        self.assertFalse(self.accounting_path.exists() and self.accounting_path.read_text())

    def test_unstored_record_is_not_acknowledged(self):
        """RFC 2866 §2: no Accounting-Response unless the record was stored."""
        clients = ClientTable([RadiusClient("nas", ipaddress.ip_network("127.0.0.1"), SECRET)])
        broken = AccountingLog(self.accounting_path.parent)  # a directory: open() fails
        protocol = acct_protocol(clients, DuplicateCache(self.clock, 5.0), broken)
        protocol.makeConnection(FakeDatagramTransport())
        raw = self.accounting_request().RequestPacket()
        self.assertEqual(self.send(protocol, raw), [])
        # the retransmission is processed again, not swallowed as a duplicate
        broken.path = self.accounting_path
        self.assertEqual(len(self.send(protocol, raw)), 1)
        self.assertEqual(len(self.accounting_path.read_text().splitlines()), 1)


def pap_request(packet_id, password=PASSWORD):
    request = AuthPacket(
        code=wire.Code.ACCESS_REQUEST,
        id=packet_id,
        secret=SECRET,
        dict=wire.DICTIONARY,
        authenticator=os.urandom(16),
    )
    request.AddAttribute("User-Name", "User")
    request["User-Password"] = [request.PwCrypt(password.encode())]
    request.add_message_authenticator()
    return request


class RejectDelayTests(ServerTestCase):
    """FreeRADIUS's reject_delay on the reactor's clock: nothing blocks, nothing early."""

    def setUp(self):
        super().setUp()
        self.auth = auth_protocol(
            self.auth.clients, self.duplicates, AccessHandler(self.backend), reject_delay=1.0
        )
        self.auth.makeConnection(FakeDatagramTransport())

    def test_reject_leaves_after_the_delay_and_retransmissions_wait_too(self):
        raw = mschapv2_request(nt_response=bytes(24)).RequestPacket()
        self.assertEqual(self.send(self.auth, raw), [])
        self.clock.advance(0.5)
        self.assertEqual(self.send(self.auth, raw), [])  # not answered early
        self.clock.advance(0.5)
        (reject,) = [p for p, _ in self.auth.transport.written]
        self.assertEqual(reject[0], wire.Code.ACCESS_REJECT)
        self.assertEqual(self.send(self.auth, raw), [reject])  # then from the cache
        self.assertEqual(self.backend.calls, 1)

    def test_accept_is_not_delayed(self):
        (reply,) = self.send(self.auth, mschapv2_request().RequestPacket())
        self.assertEqual(reply[0], wire.Code.ACCESS_ACCEPT)

    def test_closing_the_port_cancels_delayed_rejects(self):
        self.send(self.auth, mschapv2_request(nt_response=bytes(24)).RequestPacket())
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.auth.doStop()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class DualStackTests(ServerTestCase):
    def test_v4_mapped_source_is_the_ipv4_client(self):
        """A dual-stack socket reports an IPv4 NAS as ::ffff:a.b.c.d (RFC 4291 §2.5.5.2);
        it matches the IPv4 entry and the answer goes back to the address it came from."""
        source = ("::ffff:127.0.0.1", 40000, 0, 0)
        (reply,) = self.send(self.auth, mschapv2_request().RequestPacket(), source)
        self.assertEqual(reply[0], wire.Code.ACCESS_ACCEPT)
        self.assertEqual(self.auth.transport.written[-1][1], source)


class BlastRadiusTests(ServerTestCase):
    """FreeRADIUS 3.2.5's "auto" learning, packet by packet."""

    def test_signed_eap_decides_limit_proxy_state_only(self):
        """Message-Authenticator with EAP-Message says nothing of require (EAP needs it
        anyway): a later unsigned PAP request decides it "false" and is served. But the
        NAS signs, so limit_proxy_state becomes true at once: a forged unsigned request
        with Proxy-State arriving later (BlastRADIUS needs one) cannot turn it off."""
        eap = AuthPacket(code=1, id=40, secret=SECRET, dict=wire.DICTIONARY)
        eap.authenticator = os.urandom(16)
        eap.AddAttribute("User-Name", "User")
        eap.AddAttribute("EAP-Message", b"\x02\x01\x00\x09\x01User")
        eap.add_message_authenticator()
        (reply,) = self.send(self.auth, eap.RequestPacket())
        self.assertEqual(reply[0], wire.Code.ACCESS_REJECT)  # no EAP engine here
        forged = mschapv2_request(ma=False, packet_id=32)
        forged.AddAttribute("Proxy-State", b"attacker-chosen")
        self.assertEqual(self.send(self.auth, forged.RequestPacket()), [])
        (reply,) = self.send(self.auth, mschapv2_request(ma=False).RequestPacket())
        self.assertEqual(reply[0], wire.Code.ACCESS_ACCEPT)
        (reply,) = self.send(self.auth, mschapv2_request(ma=False, packet_id=31).RequestPacket())
        self.assertEqual(reply[0], wire.Code.ACCESS_ACCEPT)
        self.assertEqual(self.send(self.auth, forged.RequestPacket()), [])

    def test_signed_pap_makes_it_required(self):
        self.send(self.auth, mschapv2_request().RequestPacket())
        self.assertEqual(
            self.send(self.auth, mschapv2_request(ma=False, packet_id=31).RequestPacket()), []
        )

    def test_unsigned_eap_is_always_dropped(self):
        eap = AuthPacket(code=1, id=41, secret=SECRET, dict=wire.DICTIONARY)
        eap.AddAttribute("EAP-Message", b"\x02\x01\x00\x09\x01User")
        self.assertEqual(self.send(self.auth, eap.RequestPacket()), [])

    def test_limit_proxy_state_auto_after_a_plain_first_request(self):
        """require "false" learned from an unsigned first request without Proxy-State;
        limit_proxy_state learned "true" from the same packet."""
        self.send(self.auth, mschapv2_request(ma=False).RequestPacket())
        proxied = mschapv2_request(ma=False, packet_id=32, proxy_states=[b"p1"])
        self.assertEqual(self.send(self.auth, proxied.RequestPacket()), [])
        signed = mschapv2_request(packet_id=33, proxy_states=[b"p1", b"p2"])
        (reply,) = self.send(self.auth, signed.RequestPacket())
        self.assertEqual(wire.parse(reply).attributes[wire.PROXY_STATE], [b"p1", b"p2"])


class LegacyMethodTests(ServerTestCase):
    def test_chap_refused_unless_the_client_allows_it(self):
        request = AuthPacket(code=1, id=50, secret=SECRET, dict=wire.DICTIONARY)
        request.authenticator = os.urandom(16)
        request.AddAttribute("User-Name", "User")
        challenge = request.authenticator
        request.AddAttribute(
            "CHAP-Password", b"\x01" + hashlib.md5(b"\x01" + PASSWORD.encode() + challenge).digest()
        )
        received = wire.parse(request.RequestPacket())
        strict = RadiusClient("nas", ipaddress.ip_network("127.0.0.1"), SECRET)
        allowed = RadiusClient("nas", ipaddress.ip_network("127.0.0.1"), SECRET, allow_chap=True)
        handler = AccessHandler(self.backend)
        refused = wire.parse(handler.handle(received, strict, "nas"))
        self.assertEqual(refused.code, wire.Code.ACCESS_REJECT)
        self.assertEqual(
            refused.get(wire.key("Reply-Message")), b"CHAP is not allowed for this client"
        )
        self.assertEqual(self.backend.calls, 0)
        self.assertEqual(handler.handle(received, allowed, "nas")[0], wire.Code.ACCESS_ACCEPT)


class BusyTests(ServerTestCase):
    def test_a_full_hash_queue_answers_nothing(self):
        """Busy from the backend: no reply, and the retransmission is processed again."""
        parked = []

        def park(function, user, password):
            parked.append(defer.Deferred())
            return parked[-1]

        backend = auth.LocalBackend(self.backend.inner.users, self.clock, 1, park)
        protocol = auth_protocol(self.auth.clients, self.duplicates, AccessHandler(backend))
        protocol.makeConnection(FakeDatagramTransport())
        self.assertEqual(self.send(protocol, pap_request(packet_id=60).RequestPacket()), [])
        raw = pap_request(packet_id=61).RequestPacket()
        self.assertEqual(self.send(protocol, raw), [])
        self.assertEqual(len(parked), 1)
        parked[0].callback(False)  # packet 60: wrong password, Access-Reject
        self.assertEqual(protocol.transport.written[-1][0][0], wire.Code.ACCESS_REJECT)
        self.assertEqual(self.send(protocol, raw), [])  # 61 again: checked this time
        self.assertEqual(len(parked), 2)


class DropLogTests(ServerTestCase):
    def test_drop_lines_are_rate_limited(self):
        """A flood of dropped packets gives one line per ten seconds, then the count."""
        lines = []

        def observe(event):
            text = formatEvent(event) or ""
            if "dropped" in text:
                lines.append(text)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        raw = mschapv2_request(secret=b"other").RequestPacket()
        for _ in range(5):
            self.send(self.auth, raw, ("192.0.2.1", 1812))
            self.send(self.auth, raw)
        self.assertEqual(len(lines), 2)
        self.clock.advance(10)
        self.send(self.auth, raw)
        self.assertEqual(len(lines), 3)
        self.assertIn("bad Message-Authenticator", lines[-1])
        self.assertIn("(4 more like it", lines[-1])
