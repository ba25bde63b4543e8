"""The scripted initiator (tests/ike_peer.py) against the Responder, in-process on a fake
clock: the full IKE_SA_INIT + IKE_AUTH + EAP-MSCHAPv2 handshake (RFC 7296 §1.2, §2.16),
CREATE_CHILD_SA for a new CHILD_SA, a CHILD_SA rekey and an IKE SA rekey (§1.3), and
INFORMATIONAL deletes and liveness checks (§1.4), each answer asserted on."""

import functools
import ipaddress
import struct

from twisted.internet import defer
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from tests.ike_peer import (
    MODP2048_CBC,
    PEER,
    POOL,
    Gateway,
    Initiator,
    PeerError,
    World,
    mschapv2,
)
from vpnaaa.eap.engine import EapEngine
from vpnaaa.eap.packet import Code, Type
from vpnaaa.ike import fragments
from vpnaaa.ike.const import (
    CfgAttribute,
    DhGroup,
    ExchangeType,
    NotifyType,
    PayloadType,
    ProtocolId,
)
from vpnaaa.ike.message import Delete, Eap, TrafficSelector, encode_payloads
from vpnaaa.ike.protocol import HALF_OPEN_TIMEOUT
from vpnaaa.ike.sa import MAX_RETRANSMISSIONS, REASSEMBLY_HALF_OPEN, Endpoint, State
from vpnaaa.lockout import Lockout


def notifies(message):
    return [n.notify_type for n in message.all(PayloadType.NOTIFY)]


class HandshakeTests(unittest.TestCase):
    def setUp(self):
        self.gateway = Gateway()
        self.peer = Initiator(self.gateway)

    def assertNothingLeaked(self):
        self.assertEqual(self.gateway.leaks(), [])

    def test_sa_init_negotiates_what_was_offered(self):
        response = self.peer.sa_init()
        self.assertTrue(response.header.response)
        self.assertEqual(response.get(PayloadType.KE).group, DhGroup.CURVE25519)
        self.assertNotEqual(response.header.spi_r, bytes(8))
        self.assertIsNotNone(self.peer.ike)
        self.assertNothingLeaked()

    def test_auth_first_signs_with_the_certificate_and_asks_for_the_identity(self):
        self.peer.sa_init()
        response = self.peer.auth_first()
        # auth_first verified the ECDSA signature over our view of IKE_SA_INIT (§2.15).
        self.assertIsNotNone(self.peer.gateway_key)
        self.assertEqual(response.header.message_id, 1)
        self.assertEqual(self.peer.eap_request[0], Code.REQUEST)
        self.assertEqual(self.peer.eap_request[4], 1)  # EAP-Request/Identity
        self.assertEqual(len(self.gateway.engine), 1)
        self.assertNothingLeaked()

    def test_full_handshake_leases_an_address_and_installs_the_child_sa(self):
        response = self.peer.connect()
        self.assertTrue(self.peer.eap_succeeded)
        self.assertEqual(notifies(response), [])
        self.assertIn(self.peer.virtual_ip, POOL)
        cp = dict(response.get(PayloadType.CP).attributes)
        self.assertEqual(cp[CfgAttribute.INTERNAL_IP4_DNS], bytes([10, 77, 0, 1]))
        (tsi,) = response.get(PayloadType.TSi).selectors
        self.assertEqual((tsi.start_address, tsi.end_address), (self.peer.virtual_ip,) * 2)
        (child,) = self.peer.children.values()
        (spec,) = self.gateway.installer.installed.values()
        self.assertEqual((spec.inbound_spi, spec.outbound_spi), (child.theirs, child.ours))
        self.assertEqual(spec.inbound_encr_key, child.keymat.encr_i)
        self.assertEqual(spec.outbound_encr_key, child.keymat.encr_r)
        self.assertEqual(
            spec.remote_selectors[0].network, ipaddress.ip_network(f"{self.peer.virtual_ip}/32")
        )
        (sa,) = self.gateway.responder.sas.values()
        self.assertEqual((sa.state, sa.identity), (State.ESTABLISHED, "alice"))
        self.assertEqual(self.gateway.pool.leased, 1)
        self.assertEqual(len(self.gateway.engine), 0)
        # the half-open timer is gone; liveness checks and the lifetime run instead
        self.assertEqual(set(self.gateway.responder._timers[sa.spi_r]), {"dpd", "lifetime"})
        self.assertNothingLeaked()

    def test_modp_group_and_cbc_with_hmac(self):
        peer = Initiator(self.gateway, suite=MODP2048_CBC)
        peer.sa_init()
        self.assertEqual(peer.ike.integrity.icv_size, 16)
        peer.auth_first()
        peer.authenticate()
        peer.auth_last()
        self.assertEqual(len(self.gateway.installer.installed), 1)
        self.assertNothingLeaked()

    def test_a_group_outside_the_policy_is_refused_and_nothing_kept(self):
        response = self.peer.sa_init(group=DhGroup.MODP1536)
        self.assertEqual(notifies(response), [NotifyType.NO_PROPOSAL_CHOSEN])
        self.assertEqual(self.gateway.responder.sas, {})

    def test_wrong_password_ends_in_authentication_failed_and_frees_everything(self):
        self.peer.sa_init()
        self.peer.auth_first()
        self.peer.authenticate(password="wrong")
        self.assertFalse(self.peer.eap_succeeded)
        self.assertEqual(self.peer.eap_request[0], Code.FAILURE)
        self.assertEqual(self.gateway.responder.sas, {})
        self.assertEqual(len(self.gateway.engine), 0)
        self.assertEqual(self.gateway.pool.leased, 0)
        self.assertEqual(self.gateway.drain(), [])

    def test_a_huge_identity_makes_one_short_log_line(self):
        """An EAP identity of 8,000 octets with a newline in it: logged escaped, cut,
        one line (it could otherwise forge lines or fill the disk)."""
        lines = []

        def observe(event):
            lines.append(formatEvent(event) or "")

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        self.peer.sa_init()
        self.peer.auth_first()
        identity = b"evil\nFAKE LINE" + b"A" * 8000
        request = self.peer.eap_request
        self.peer.eap(struct.pack("!BBHB", 2, request[1], 5 + len(identity), 1) + identity)
        self.peer.eap(struct.pack("!BBHB", 2, self.peer.eap_request[1], 6, 3) + b"\x00")
        mentions = [line for line in lines if "evil" in line]
        self.assertTrue(mentions)
        for line in mentions:
            self.assertNotIn("\n", line)
            self.assertLess(len(line), 600, line)

    def test_wrong_passwords_from_elsewhere_do_not_lock_the_user_out(self):
        """Three EAP-MSCHAPv2 sessions with wrong passwords from a stranger's address
        lock alice out from there; from her own address her password still works."""
        self.gateway.users.lockout = Lockout(self.gateway.clock, 3, 60.0, 300.0)
        stranger = Endpoint("203.0.113.66", 500)
        for _ in range(3):
            attacker = Initiator(self.gateway, address=stranger)
            attacker.sa_init()
            attacker.auth_first()
            attacker.authenticate(password="guess")
            self.assertFalse(attacker.eap_succeeded)
        attacker = Initiator(self.gateway, address=stranger)
        attacker.sa_init()
        attacker.auth_first()
        attacker.authenticate()  # the right password, from the locked-out source
        self.assertFalse(attacker.eap_succeeded)
        self.peer.connect()
        self.assertTrue(self.peer.eap_succeeded)
        self.assertEqual(self.gateway.pool.leased, 1)

    def test_wrong_auth_after_eap_fails_and_frees_everything(self):
        self.peer.sa_init()
        self.peer.auth_first()
        self.peer.authenticate()
        self.peer.eap_peer.password_hash = bytes(16)  # a different MSK
        response = self.peer.must(ExchangeType.IKE_AUTH, self.peer.auth_last_entries())
        self.assertEqual(notifies(response), [NotifyType.AUTHENTICATION_FAILED])
        self.assertEqual(self.gateway.responder.sas, {})
        self.assertEqual(self.gateway.drain(), [])

    def test_a_forged_gateway_signature_is_refused(self):
        self.peer.sa_init()
        self.peer.init_response += b"x"  # what the gateway signed is not what we saw
        self.assertRaises(PeerError, self.peer.auth_first)

    def test_half_open_sa_expires_with_its_eap_conversation(self):
        self.peer.sa_init()
        self.peer.auth_first()
        self.gateway.clock.advance(HALF_OPEN_TIMEOUT + 1)
        self.assertEqual(self.gateway.responder.sas, {})
        self.assertEqual(len(self.gateway.engine), 0)
        self.assertEqual(self.gateway.drain(), [])


class EstablishedTests(unittest.TestCase):
    def setUp(self):
        self.gateway = Gateway()
        self.peer = Initiator(self.gateway)
        self.peer.connect()
        (self.first,) = self.peer.children

    def assertNothingLeaked(self):
        self.assertEqual(self.gateway.leaks(), [])

    def test_liveness_is_answered_empty(self):
        response = self.peer.liveness()
        self.assertEqual(response.header.exchange, ExchangeType.INFORMATIONAL)
        self.assertEqual((response.header.message_id, response.payloads), (6, []))
        self.assertEqual(self.peer.liveness().header.message_id, 7)
        self.assertNothingLeaked()

    def test_retransmitted_request_gets_the_same_answer(self):
        request = self.peer.seal(ExchangeType.INFORMATIONAL, PayloadType.NONE, b"")
        first = self.peer.deliver(request)
        self.assertEqual(self.peer.deliver(request), first)
        self.assertNothingLeaked()

    def test_new_child_sa_with_pfs(self):
        response = self.peer.create_child(group=DhGroup.CURVE25519)
        self.assertEqual(notifies(response), [])
        self.assertEqual(response.get(PayloadType.KE).group, DhGroup.CURVE25519)
        self.assertEqual(len(self.peer.children), 2)
        self.assertEqual(len(self.gateway.installer.installed), 2)
        new = next(c for c in self.peer.children.values() if c.ours != self.first)
        spec = self.gateway.installer.installed[new.theirs]
        self.assertEqual(spec.inbound_encr_key, new.keymat.encr_i)  # g^ir (new) in KEYMAT
        self.assertNothingLeaked()

    def test_child_sa_rekey_keeps_the_reqid_and_the_old_one_goes_on_delete(self):
        old = self.peer.children[self.first]
        old_reqid = self.gateway.installer.installed[old.theirs].reqid
        response = self.peer.rekey_child(self.first)
        self.assertEqual(notifies(response), [])
        new = next(c for c in self.peer.children.values() if c.ours != self.first)
        self.assertEqual(self.gateway.installer.installed[new.theirs].reqid, old_reqid)
        deleted = self.peer.delete_child(self.first)
        self.assertEqual(
            deleted.get(PayloadType.DELETE),
            Delete(ProtocolId.ESP, (old.theirs.to_bytes(4, "big"),)),
        )
        self.assertEqual(set(self.gateway.installer.installed), {new.theirs})
        self.assertNothingLeaked()

    def test_rekey_of_an_unknown_child_sa(self):
        response = self.peer.rekey_child(0x12345678)
        self.assertEqual(notifies(response), [NotifyType.CHILD_SA_NOT_FOUND])
        self.assertNothingLeaked()

    def test_ike_rekey_moves_lease_and_children_to_the_new_sa(self):
        response = self.peer.rekey_ike()
        self.assertEqual(response.get(PayloadType.SA).proposals[0].protocol, ProtocolId.IKE)
        self.assertEqual(len(self.gateway.responder.sas), 2)
        self.assertEqual(self.peer.delete_previous_ike().payloads, [])
        (sa,) = self.gateway.responder.sas.values()
        self.assertEqual(sa.spi_i, self.peer.ike.spi_i)
        self.assertEqual(self.gateway.pool.leased, 1)
        self.assertEqual(len(self.gateway.installer.installed), 1)
        self.assertEqual(self.peer.liveness().header.message_id, 0)
        self.assertNothingLeaked()
        self.peer.delete_ike()
        self.assertEqual(self.gateway.responder.sas, {})
        self.assertEqual(self.gateway.pool.leased, 0)
        self.assertEqual(self.gateway.installer.installed, {})

    def test_an_sa_rekeyed_away_takes_no_more_and_goes_if_not_deleted(self):
        """§1.3.2: once rekeyed, the old SA refuses more CHILD_SAs or rekeys
        (NO_ADDITIONAL_SAS: a client could otherwise rekey it again and again, each time
        a new IKE SA), and a client that never deletes it loses it, not its successor."""
        self.peer.rekey_ike()
        current = (self.peer.ike, self.peer.next_id)
        self.peer.ike, self.peer.next_id = self.peer.previous
        response = self.peer.rekey_ike()
        self.assertEqual(notifies(response), [NotifyType.NO_ADDITIONAL_SAS])
        self.peer.ike, self.peer.next_id = current
        self.assertEqual(len(self.gateway.responder.sas), 2)
        self.gateway.clock.advance(HALF_OPEN_TIMEOUT + 1)
        (sa,) = self.gateway.responder.sas.values()
        self.assertEqual(sa.spi_i, self.peer.ike.spi_i)
        self.assertEqual(self.gateway.pool.leased, 1)
        self.assertEqual(len(self.gateway.installer.installed), 1)
        self.assertEqual(self.peer.liveness().payloads, [])
        self.assertNothingLeaked()

    def test_delete_child_removes_it(self):
        theirs = self.peer.children[self.first].theirs
        response = self.peer.delete_child(self.first)
        self.assertEqual(response.get(PayloadType.DELETE).spis, (theirs.to_bytes(4, "big"),))
        self.assertEqual(self.gateway.installer.installed, {})
        self.assertNothingLeaked()

    def test_delete_ike_returns_the_lease_and_removes_the_children(self):
        self.peer.create_child()
        self.assertEqual(self.peer.delete_ike().payloads, [])
        self.assertEqual(self.gateway.responder.sas, {})
        self.assertEqual(self.gateway.pool.leased, 0)
        self.assertEqual(self.gateway.installer.installed, {})
        self.assertEqual(self.gateway.drain(), [])

    def test_traffic_selectors_outside_the_lease_are_unacceptable(self):
        other = ipaddress.IPv4Address("203.0.113.9")
        response = self.peer.create_child(tsi=(TrafficSelector(other, other),))
        self.assertEqual(notifies(response), [NotifyType.TS_UNACCEPTABLE])
        self.assertNothingLeaked()

    def test_a_fork_is_independent_of_its_original(self):
        copy = World.__new__(World)
        copy.gateway, copy.initiator = self.gateway, self.peer
        fork = copy.fork()
        fork.initiator.delete_ike()
        self.assertEqual(fork.gateway.responder.sas, {})
        self.assertEqual(len(self.gateway.responder.sas), 1)
        self.assertEqual(self.peer.liveness().header.message_id, 6)
        self.assertIs(fork.gateway.context.identity, self.gateway.context.identity)
        self.assertEqual(fork.initiator.address, PEER)


class OwnKeysTests(unittest.TestCase):
    """What a peer with keys of its own (its own IKE_SA_INIT) cannot make us do: aim our
    answers at another host (§2.23), replay us into a reflector, or cost us a signature
    when there is no EAP conversation for it."""

    def setUp(self):
        self.gateway = Gateway()
        self.peer = Initiator(self.gateway)
        self.victim = Endpoint("203.0.113.66", 500)

    def test_ike_auth_from_another_host_before_established_is_dropped(self):
        """IKE_AUTH #1 with a valid ICV but the victim's source: no certificate goes to
        the victim, and the SA stays with the host that did IKE_SA_INIT."""
        self.peer.sa_init()
        first, plaintext = encode_payloads(self.peer.auth_first_entries())
        request = self.peer.seal(ExchangeType.IKE_AUTH, first, plaintext, 1)
        self.assertEqual(self.peer.deliver(request, self.victim), [])
        (sa,) = self.gateway.responder.sas.values()
        self.assertEqual(sa.remote, PEER)
        self.assertEqual(len(self.peer.deliver(request)), 1)  # from its own host: served
        self.assertEqual(sa.remote, PEER)

    def test_a_replayed_request_is_answered_a_bounded_number_of_times(self):
        self.peer.sa_init()
        first, plaintext = encode_payloads(self.peer.auth_first_entries())
        request = self.peer.seal(ExchangeType.IKE_AUTH, first, plaintext, 1)
        answered = [len(self.peer.deliver(request)) > 0 for _ in range(20)]
        self.assertEqual(answered, [True] * (1 + MAX_RETRANSMISSIONS) + [False] * 11)

    def test_a_refused_eap_conversation_costs_no_signature(self):
        """When the EAP engine refuses (here: its per-source cap is used up), IKE_AUTH #1
        gets AUTHENTICATION_FAILED alone, without CERT and AUTH, and the SA is gone."""
        self.gateway.engine = EapEngine(
            [(Type.MSCHAPV2, functools.partial(mschapv2, self.gateway.users))],
            self.gateway.clock,
            per_source=0,
        )
        self.gateway.context.profiles[0].eap = self.gateway.engine
        self.peer.sa_init()
        response = self.peer.request(ExchangeType.IKE_AUTH, self.peer.auth_first_entries())
        self.assertEqual(notifies(response), [NotifyType.AUTHENTICATION_FAILED])
        self.assertIsNone(response.get(PayloadType.AUTH))
        self.assertIsNone(response.get(PayloadType.CERT))
        self.assertEqual((self.gateway.responder.sas, self.gateway.leaks()), ({}, []))


class FragmentTests(unittest.TestCase):
    """RFC 7383 from a peer that has keys but has not authenticated."""

    def pieces(self, peer, size=200):
        first, plaintext = encode_payloads(peer.auth_first_entries())
        return fragments.split(plaintext, first, size)

    def test_fragments_only_once_both_announced_support(self):
        for announced in (False, True):
            gateway = Gateway()
            peer = Initiator(gateway, fragmentation=announced)
            peer.sa_init()
            replies = []
            for piece in self.pieces(peer):
                replies += peer.deliver(peer.seal_fragment(ExchangeType.IKE_AUTH, piece, 1))
            self.assertEqual(bool(replies), announced)

    def test_half_open_sa_buffers_at_most_16_kib_of_fragments(self):
        """63 of 64 valid 1,000-octet fragments, never the last: the SA does not hold
        63,000 octets for a peer that has not authenticated (the reassembly restarts)."""
        gateway = Gateway()
        peer = Initiator(gateway, fragmentation=True)
        peer.sa_init()
        for number in range(1, 64):
            piece = fragments.Fragment(
                number, 64, bytes(1000), PayloadType.IDi if number == 1 else 0
            )
            self.assertEqual(peer.deliver(peer.seal_fragment(ExchangeType.IKE_AUTH, piece, 1)), [])
        (sa,) = gateway.responder.sas.values()
        self.assertLessEqual(sa._reassembler._size, REASSEMBLY_HALF_OPEN)


class BrokenBackend:
    """An EAP backend with a bug: it starts conversations but fails on the first step,
    synchronously (as a programming error would), and on the second with a failed
    Deferred."""

    def __init__(self, engine):
        self.engine = engine
        self.steps = 0

    def begin(self, source):
        return self.engine.begin(source)

    def step(self, conversation_id, eap, room=None):
        self.steps += 1
        if self.steps == 1:
            raise RuntimeError("a bug in the backend")
        return defer.fail(RuntimeError("a bug behind a Deferred"))

    def refusal(self, conversation_id):
        return None

    def forget(self, conversation_id):
        self.engine.forget(conversation_id)

    def expire(self):
        return 0


class InternalErrorTests(unittest.TestCase):
    """A bug on one SA's path removes that SA with one log line; nothing escapes
    Responder.receive, nothing is left behind (lease, EAP conversation, timers)."""

    def test_a_backend_bug_costs_one_sa(self):
        gateway = Gateway()
        backend = BrokenBackend(gateway.engine)
        gateway.context.profiles[0].eap = backend
        lines = []

        def observe(event):
            lines.append(formatEvent(event) or "")

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        for _ in range(2):  # raised, then failed
            peer = Initiator(gateway)
            peer.sa_init()
            peer.auth_first()
            peer.request(ExchangeType.IKE_AUTH, [(PayloadType.EAP, Eap(b"\x02\x01\x00\x05\x01"))])
            self.assertEqual(gateway.responder.sas, {})
            gateway.clock.advance(11)  # past the log throttle's interval
        self.assertEqual(backend.steps, 2)
        errors = [line for line in lines if "internal error RuntimeError" in line]
        self.assertEqual(len(errors), 2, errors)
        self.assertEqual(gateway.leaks(), [])
        self.assertEqual(len(gateway.engine), 0)
