"""The gateway speaks first (RFC 7296 §1.4, §2.1-2.4), in-process on a fake clock with the
scripted initiator: liveness checks and dead peers, retransmission with back-off, the IKE
SA's lifetime, DELETEs from the gateway (a CHILD_SA at its kernel hard lifetime, the IKE
SA, every session on shutdown), INITIAL_CONTACT and max_sessions_per_user, and the one
log line each session's end gets. After each: nothing left that should not be."""

import dataclasses
import ipaddress

from twisted.trial import unittest

from tests.ike_peer import PEER, Gateway, Initiator
from tests.support import log_lines
from vpnaaa.authorization import Authorization
from vpnaaa.eap.authenticator import Success
from vpnaaa.ike.common import EndCause
from vpnaaa.ike.const import ExchangeType, NotifyType, PayloadType, ProtocolId
from vpnaaa.ike.message import Delete
from vpnaaa.ike.protocol import Timing
from vpnaaa.ike.sa import Endpoint
from vpnaaa.kernel.xfrm_installer import ExpireEvent

TIMING = Timing(retransmit_timeout=4.0, retransmit_base=1.8, retransmit_tries=5)
DPD = 30.0
OTHER = Endpoint("192.0.2.8", 4500)


class Unvouched:
    """The EAP engine as a RADIUS relay whose server sent no User-Name in its Accept:
    the same Success, with an identity the method did not vouch for."""

    def __init__(self, engine):
        self.engine = engine

    def begin(self, source):
        return self.engine.begin(source)

    def step(self, conversation, response):
        def unvouched(step):
            conversation, result = step
            if isinstance(result, Success):
                result = dataclasses.replace(result, verified=False)
            return conversation, result

        return self.engine.step(conversation, response).addCallback(unvouched)

    def __getattr__(self, name):
        return getattr(self.engine, name)


class Granted(Unvouched):
    """The EAP engine as a RADIUS relay whose server's Accept grants ``authorization``."""

    def __init__(self, engine, authorization):
        super().__init__(engine)
        self.authorization = authorization

    def step(self, conversation, response):
        def granted(step):
            conversation, result = step
            if isinstance(result, Success):
                result = dataclasses.replace(result, authorization=self.authorization)
            return conversation, result

        return self.engine.step(conversation, response).addCallback(granted)


def notifies(message):
    return [n.notify_type for n in message.all(PayloadType.NOTIFY)]


class LifecycleTestCase(unittest.TestCase):
    def setUp(self):
        self.lines = log_lines(self)

    def gateway(self, **options):
        options.setdefault("dpd_delay", DPD)
        self.gate = Gateway(timing=options.pop("timing", TIMING), **options)
        return self.gate

    def connected(self, address=PEER, **options):
        return self.gate.connected(address, **options)

    def session_ends(self):
        return [line for line in self.lines if "session of" in line and "ended" in line]

    def assertNothingLeft(self):
        self.assertEqual(self.gate.leaks(), [])
        self.assertEqual(self.gate.drain(), [])


class LivenessTests(LifecycleTestCase):
    def test_a_quiet_peer_is_asked_and_answers(self):
        """§1.4: after dpd_delay seconds of silence an empty INFORMATIONAL with the
        gateway's own message IDs (0, 1, ...); a peer that answers keeps its session."""
        self.gateway()
        peer = self.connected()
        for expected_id in (0, 1):
            self.gate.clock.advance(DPD)
            (request,) = peer.gateway_requests()
            self.assertEqual(request.header.exchange, ExchangeType.INFORMATIONAL)
            self.assertEqual((request.header.message_id, request.payloads), (expected_id, []))
            self.assertEqual(peer.answer(request), [])
        self.assertEqual(len(self.gate.responder.sas), 1)
        self.assertEqual(self.gate.pool.leased, 1)
        self.assertEqual(self.gate.leaks(), [])

    def test_the_next_check_comes_dpd_delay_after_the_answer(self):
        """An answer that takes half a second moves the next check by that, no more (a
        timer set when the check left fires first and waits the rest)."""
        self.gateway()
        peer = self.connected()
        clock = self.gate.clock
        clock.advance(DPD)
        (request,) = peer.gateway_requests()
        clock.advance(0.5)
        peer.answer(request)
        clock.advance(DPD - 0.55)
        self.assertEqual(peer.gateway_requests(), [])  # the timer set at the check fired
        clock.advance(0.5)
        self.assertEqual(peer.gateway_requests(), [])
        clock.advance(0.1)  # dpd_delay after the answer
        self.assertEqual(len(peer.gateway_requests()), 1)

    def test_a_peer_that_talks_is_not_asked(self):
        self.gateway()
        peer = self.connected()
        for _ in range(3):
            self.gate.clock.advance(DPD - 5)
            peer.liveness()  # its own check counts as hearing from it
        self.assertEqual(peer.gateway_requests(), [])

    def test_a_dead_peer_loses_everything_after_the_retransmissions(self):
        """No answer: sent again after 4, 7.2, 13, 23.3, 42 s (charon's 4 s x 1.8^n, five
        times); 75.6 s after the last the IKE SA, its CHILD_SA and its lease are gone,
        and one line says why."""
        self.gateway()
        peer = self.connected()
        clock = self.gate.clock
        clock.advance(DPD)
        sent = [peer.gateway_requests()]
        for wait in (4.0, 7.2, 12.96, 23.328, 41.9904, 75.58272):
            clock.advance(wait - 0.05)  # task.Clock: timers set now count from here
            self.assertEqual(peer.gateway_requests(), [])
            clock.advance(0.1)
            sent.append(peer.gateway_requests())
        self.assertEqual([len(s) for s in sent], [1, 1, 1, 1, 1, 1, 0])
        self.assertEqual({s[0].header.message_id for s in sent if s}, {0})
        self.assertEqual(self.gate.responder.sas, {})
        self.assertEqual((self.gate.pool.leased, self.gate.installer.installed), (0, {}))
        (end,) = self.session_ends()
        self.assertIn("dead peer (no answer to 6 liveness requests)", end)
        self.assertNothingLeft()

    def test_an_answer_to_a_retransmission_is_enough(self):
        self.gateway()
        peer = self.connected()
        self.gate.clock.advance(DPD)
        peer.gateway_requests()  # the first is lost
        self.gate.clock.advance(4.0)
        (again,) = peer.gateway_requests()
        peer.answer(again)
        self.gate.clock.advance(100)
        self.assertEqual(len(self.gate.responder.sas), 1)


class DeleteTests(LifecycleTestCase):
    def test_the_lifetime_deletes_the_ike_sa(self):
        """ike_lifetime with jitter (here 5% early): a DELETE of the IKE SA (§1.4.1);
        when the client answers everything is gone and the line says "lifetime"."""
        self.gateway(timing=Timing(ike_lifetime=3600.0), dpd_delay=0)
        peer = self.connected()
        self.gate.clock.advance(3600 * 0.95 - 1)
        self.assertEqual(peer.gateway_requests(), [])
        self.gate.clock.advance(1)
        (request,) = peer.gateway_requests()
        (delete,) = request.all(PayloadType.DELETE)
        self.assertEqual(delete.protocol, ProtocolId.IKE)
        peer.answer(request)
        self.assertEqual((self.gate.responder.sas, self.gate.pool.leased), ({}, 0))
        (end,) = self.session_ends()
        self.assertIn("ended: lifetime", end)
        self.assertNothingLeft()

    def test_a_client_that_ignores_our_delete_still_loses_the_sa(self):
        self.gateway(timing=Timing(ike_lifetime=600.0, retransmit_tries=1), dpd_delay=0)
        self.connected()
        for step in (570, 4, 7.2):  # 5% early, then a retransmission after 4 s, 7.2 s more
            self.gate.clock.advance(step)
        self.assertEqual(self.gate.responder.sas, {})
        self.assertIn("ended: lifetime", self.session_ends()[0])
        self.assertNothingLeft()

    def test_a_child_sa_at_its_hard_lifetime_is_deleted_with_the_client_told(self):
        self.gateway()
        peer = self.connected()
        (spec,) = self.gate.installer.installed.values()
        self.gate.responder.expired(ExpireEvent(spec, inbound=True, hard=True))
        (request,) = peer.gateway_requests()
        (delete,) = request.all(PayloadType.DELETE)
        self.assertEqual(
            (delete.protocol, delete.spis), (ProtocolId.ESP, (spec.inbound_spi.to_bytes(4, "big"),))
        )
        peer.answer(request, [(PayloadType.DELETE, Delete(ProtocolId.ESP, delete.spis))])
        self.assertEqual(self.gate.installer.installed, {})
        self.assertEqual(len(self.gate.responder.sas), 1)  # the IKE SA stays
        self.assertEqual(self.gate.leaks(), [])

    def test_crossing_deletes(self):
        """§2.25 (and §1.4.1): the gateway's DELETE and the client's cross; each answers
        the other, nothing is left twice or leaked."""
        self.gateway(timing=Timing(ike_lifetime=600.0), dpd_delay=0)
        peer = self.connected()
        self.gate.clock.advance(600)
        (ours,) = peer.gateway_requests()
        self.assertEqual(peer.delete_ike().payloads, [])
        peer.answer(ours)
        self.assertEqual(self.gate.responder.sas, {})
        self.assertEqual(len(self.session_ends()), 1)
        self.assertNothingLeft()

    def test_shutdown_tells_every_client_and_waits_a_bounded_time(self):
        self.gateway()
        first = self.connected()
        self.connected(address=OTHER)
        stopped = self.gate.responder.shutdown()
        (request,) = first.gateway_requests()
        self.assertEqual(request.get(PayloadType.DELETE).protocol, ProtocolId.IKE)
        first.answer(request)
        self.assertEqual(len(self.gate.responder.sas), 1)  # the other stays silent
        self.assertFalse(stopped.called)
        self.gate.clock.advance(TIMING.shutdown_wait)
        self.assertTrue(stopped.called)
        self.assertEqual((self.gate.responder.sas, self.gate.pool.leased), ({}, 0))
        self.assertEqual(
            sorted(line.split("ended: ")[1][:8] for line in self.session_ends()), ["shutdown"] * 2
        )


class AdministratorTests(LifecycleTestCase):
    def test_find_and_disconnect(self):
        """Sessions are found by Acct-Session-Id, user (any case, DOMAIN\\ or not) and
        virtual IP together (RFC 5176 §3); a disconnect is a DELETE (Admin-Reset)."""
        self.gateway()
        self.connected()
        self.connected(address=OTHER)
        responder = self.gate.responder
        first, second = responder.find(user="EXAMPLE\\Alice")
        self.assertNotEqual(first.session_id, second.session_id)
        self.assertEqual(responder.find(session_id=second.session_id.lower()), [second])
        self.assertEqual(
            responder.find(user="alice", framed_ip=second.virtual_ip, session_id=first.session_id),
            [],
        )
        self.assertEqual(responder.find(user="bob"), [])
        responder.disconnect(first)
        self.assertEqual(responder.find(user="alice"), [second])  # being deleted: not listed
        for _ in range(170):  # no answer: gone after the retransmissions (4 s x 1.8^n, 5 tries)
            self.gate.clock.advance(1)
        self.assertIn("disconnected by the administrator", self.session_ends()[0])
        self.assertEqual(self.gate.leaks(), [])

    def test_observers_see_each_session_begin_and_end_once(self):
        """Accounting and metrics hear of a session twice: when IKE_AUTH ends and at its
        real end with the cause, not at the IKE rekey in between."""
        self.gateway(dpd_delay=0)
        seen = []

        class Observer:
            def session_started(self, sa):
                seen.append(("start", sa.session_id))

            def session_ended(self, sa, ending, counters):
                seen.append(("end", sa.session_id, ending.cause))

        self.gate.responder.observers.append(Observer())
        peer = self.connected()
        (sa,) = self.gate.responder.sas.values()
        peer.rekey_ike()
        peer.delete_previous_ike()
        peer.delete_ike()
        self.assertEqual(
            seen, [("start", sa.session_id), ("end", sa.session_id, EndCause.CLIENT_DELETE)]
        )

    def test_the_radius_session_timeout_ends_the_session(self):
        """RFC 2865 §5.27: an Access-Accept's Session-Timeout is the most the session may
        last; then the client gets a DELETE."""
        self.gateway(dpd_delay=0)
        self.gate.context.profiles[0].eap = Granted(
            self.gate.engine, Authorization(session_timeout=300)
        )
        peer = self.connected()
        self.gate.clock.advance(299)
        self.assertEqual(peer.gateway_requests(), [])
        self.gate.clock.advance(1)
        (request,) = peer.gateway_requests()
        self.assertEqual(request.get(PayloadType.DELETE).protocol, ProtocolId.IKE)
        peer.answer(request)
        self.assertIn("ended: session timeout", self.session_ends()[0])
        self.assertNothingLeft()

    def test_a_local_users_grant_ends_the_session_too(self):
        """The user store grants what an Access-Accept would (`vpnaaa user grant`): its
        session timeout ends alice's session."""
        self.gateway(dpd_delay=0)
        users = self.gate.users  # shared by the test gateways (tests/ike_peer.py): restored
        self.addCleanup(users.use, {user.name: user for user in users})
        granted = Authorization(session_timeout=60)
        users.use({"alice": dataclasses.replace(users.get("alice"), authorization=granted)})
        peer = self.connected()
        self.gate.clock.advance(60)
        (request,) = peer.gateway_requests()
        peer.answer(request)
        self.assertIn("ended: session timeout", self.session_ends()[0])
        self.assertNothingLeft()

    def test_framed_ip_and_framed_pool_choose_the_address(self):
        """RFC 2865 §5.8 Framed-IP-Address: that address (from a pool, leased so no two
        clients share it); RFC 2869 §5.18 Framed-Pool: the pool of the profile so named.
        One in use, outside the pools, or a pool nobody has: INTERNAL_ADDRESS_FAILURE."""
        self.gateway(dpd_delay=0)
        profile = self.gate.context.profiles[0]
        wanted = next(iter(profile.pool.network.hosts())) + 9
        profile.eap = Granted(self.gate.engine, Authorization(framed_ip=wanted))
        first = self.connected()
        self.assertEqual(first.virtual_ip, wanted)
        taken = Initiator(self.gate, address=OTHER)
        taken.sa_init()
        taken.auth_first()
        taken.authenticate()
        refused = taken.auth_last()
        self.assertEqual(notifies(refused), [NotifyType.INTERNAL_ADDRESS_FAILURE])
        for granted in (
            Authorization(framed_ip=ipaddress.IPv4Address("192.0.2.200")),
            Authorization(framed_pool="nobody"),
        ):
            profile.eap = Granted(self.gate.engine, granted)
            other = Initiator(self.gate, address=Endpoint("192.0.2.9", 500))
            other.sa_init()
            other.auth_first()
            other.authenticate()
            self.assertEqual(notifies(other.auth_last()), [NotifyType.INTERNAL_ADDRESS_FAILURE])
        profile.eap = Granted(self.gate.engine, Authorization(framed_pool="default"))
        self.assertEqual(self.connected(address=Endpoint("192.0.2.10", 500)).virtual_ip.version, 4)
        first.delete_ike()
        self.assertEqual(self.gate.leaks(), [])

    def test_a_session_timeout_holds_across_ike_rekeys(self):
        """RFC 2865 §5.27 Session-Timeout (or a CoA-Request's): the session ends then, even
        though the client rekeyed its IKE SA meanwhile (the session goes on, its limit too)."""
        self.gateway(dpd_delay=0)
        peer = self.connected()
        (sa,) = self.gate.responder.sas.values()
        self.gate.responder.limit(sa, 100)
        self.gate.clock.advance(50)
        peer.rekey_ike()
        peer.delete_previous_ike()
        (successor,) = self.gate.responder.sas.values()
        self.assertEqual(successor.session_id, sa.session_id)
        self.gate.clock.advance(50)
        (request,) = peer.gateway_requests()
        self.assertEqual(request.get(PayloadType.DELETE).protocol, ProtocolId.IKE)
        peer.answer(request)
        self.assertIn("ended: session timeout", self.session_ends()[0])
        self.assertNothingLeft()


class UniquenessTests(LifecycleTestCase):
    def test_initial_contact_replaces_the_same_users_sessions(self):
        """§2.4: a client that says INITIAL_CONTACT has no other SA with us: alice's
        older session (a laptop back from sleep) goes, lease and CHILD_SA with it, before
        the new one takes an address, so she gets the same one back."""
        self.gateway()
        old = self.connected()
        new = self.connected(address=OTHER, initial_contact=True)
        self.assertEqual(new.virtual_ip, old.virtual_ip)  # its lease ended first: the same
        self.assertEqual(len(self.gate.responder.sas), 1)
        (sa,) = self.gate.responder.sas.values()
        self.assertEqual(sa.remote, OTHER)
        self.assertEqual(self.gate.pool.leased, 1)
        self.assertEqual(len(self.gate.installer.installed), 1)
        self.assertEqual(old.gateway_requests(), [])  # it lost that SA already
        self.assertIn("replaced: INITIAL_CONTACT", self.session_ends()[0])
        self.assertEqual(self.gate.leaks(), [])

    def test_an_identity_nobody_vouched_for_replaces_and_counts_nothing(self):
        """A relay's Access-Accept without User-Name leaves the client's own outer EAP
        identity (RFC 2865 §5.1): with it a client must not end alice's sessions
        (INITIAL_CONTACT, max_sessions_per_user) nor pass a profile's users list."""
        self.gateway(max_sessions_per_user=1)
        self.connected()
        profile = self.gate.context.profiles[0]
        profile.eap = Unvouched(self.gate.engine)
        self.connected(address=OTHER, initial_contact=True)
        self.assertEqual(len(self.gate.responder.sas), 2)
        self.assertEqual(self.session_ends(), [])
        self.assertTrue(
            any(
                "INITIAL_CONTACT and max_sessions_per_user do not apply" in line
                for line in self.lines
            )
        )
        profile.users = frozenset({"alice"})
        refused = Initiator(self.gate, address=Endpoint("192.0.2.9", 500))
        refused.sa_init()
        refused.auth_first()
        refused.authenticate()
        self.assertFalse(refused.eap_succeeded)
        self.assertTrue(any("did not name the user" in line for line in self.lines))
        self.assertEqual(self.gate.leaks(), [])

    def test_max_sessions_replace_the_oldest(self):
        self.gateway(max_sessions_per_user=1)
        old = self.connected()
        self.connected(address=OTHER)
        (request,) = old.gateway_requests()
        self.assertEqual(request.get(PayloadType.DELETE).protocol, ProtocolId.IKE)
        old.answer(request)
        (sa,) = self.gate.responder.sas.values()
        self.assertEqual(sa.remote, OTHER)
        self.assertIn("replaced: max_sessions_per_user", self.session_ends()[0])
        self.assertEqual(self.gate.leaks(), [])

    def test_refuse_holds_against_initial_contact(self):
        """session_limit = "refuse" is the administrator's word: a new connection with
        INITIAL_CONTACT is refused too (the old session goes when found dead)."""
        self.gateway(max_sessions_per_user=1, session_limit="refuse")
        self.connected()
        peer = Initiator(self.gate, address=OTHER)
        peer.sa_init()
        peer.auth_first(initial_contact=True)
        peer.authenticate()
        response = peer.request(ExchangeType.IKE_AUTH, peer.auth_last_entries())
        self.assertEqual(notifies(response), [NotifyType.AUTHENTICATION_FAILED])
        (sa,) = self.gate.responder.sas.values()
        self.assertEqual(sa.remote, PEER)

    def test_a_session_being_deleted_no_longer_counts(self):
        """Limit 2, the first session silent: the third replaces it; the fourth then
        replaces the second, not the first again (a session whose DELETE is out does not
        count, and is asked once)."""
        self.gateway(max_sessions_per_user=2)
        peers = [self.connected(address=Endpoint(f"192.0.2.{20 + n}", 500)) for n in range(4)]
        delivered = [len(p.gateway_requests()) for p in peers]
        self.assertEqual(delivered, [1, 1, 0, 0])
        (first,) = [sa for sa in self.gate.responder.sas.values() if sa.remote == peers[0].address]
        self.assertEqual(len(first._queued), 0)

    def test_a_session_being_deleted_cannot_rekey_away(self):
        """§2.25: the client answers our DELETE with an IKE rekey first; it gets
        TEMPORARY_FAILURE, so the session cannot outlive its replacement."""
        self.gateway(max_sessions_per_user=1)
        old = self.connected()
        self.connected(address=OTHER)
        (request,) = old.gateway_requests()
        response = old.rekey_ike()
        self.assertEqual(notifies(response), [NotifyType.TEMPORARY_FAILURE])
        old.answer(request)
        (sa,) = self.gate.responder.sas.values()
        self.assertEqual(sa.remote, OTHER)
        self.assertEqual(self.gate.pool.leased, 1)
        self.assertEqual(self.gate.leaks(), [])

    def test_max_sessions_refuse_the_new_one(self):
        self.gateway(max_sessions_per_user=1, session_limit="refuse")
        self.connected()
        peer = Initiator(self.gate, address=OTHER)
        peer.sa_init()
        peer.auth_first()
        peer.authenticate()
        response = peer.request(ExchangeType.IKE_AUTH, peer.auth_last_entries())
        self.assertEqual(notifies(response), [NotifyType.AUTHENTICATION_FAILED])
        (sa,) = self.gate.responder.sas.values()
        self.assertEqual(sa.remote, PEER)
        self.assertEqual(self.gate.pool.leased, 1)
        self.assertEqual(self.gate.leaks(), [])
