"""Rekeys the gateway starts (RFC 7296 §1.3.2, §1.3.3, §2.8, §2.17, §2.18) and the
collisions of §2.8.1, §2.8.2 and §2.25, in-process on a fake clock with the scripted peer
(tests/ike_peer.py) as the client that answers them.

With ``rekey = "gateway"`` the gateway rekeys a CHILD_SA at 0.85 of ``child_lifetime``
after it was installed and the IKE SA at 0.85 of ``ike_lifetime`` (tests.ike_peer.Gateway
fixes the jitter at one half). Every expected value comes from the RFC and from the keys
the peer derives itself: the gateway's installed CHILD_SAs must hold the peer's keys
(the gateway's inbound ones are the peer's outbound ones), and an IKE SA is proven by the
gateway answering the peer on it. After each test nothing is left that should not be."""

import os

from twisted.trial import unittest

from tests.ike_peer import Gateway, lowest_nonce
from tests.support import log_lines
from vpnaaa.ike.const import (
    DhGroup,
    ExchangeType,
    NotifyType,
    PayloadType,
    ProtocolId,
    TransformType,
)
from vpnaaa.ike.protocol import Timing
from vpnaaa.kernel.xfrm_installer import ExpireEvent

CHILD = 1200.0  # child_lifetime: the gateway rekeys at 1020 s
IKE = 3600.0  # ike_lifetime: the gateway rekeys at 3060 s, deletes at 3420 s
TIMING = Timing(retransmit_timeout=4.0, retransmit_base=1.8, retransmit_tries=5)
RETRANSMITS = (4.0, 7.2, 12.96, 23.328, 41.9904)  # 4 s x 1.8^n, five times
GIVE_UP = 75.59  # the wait after the last one (75.58272 s), rounded up
LOW = bytes(32)  # the lowest nonce there is (§2.8.1: octet by octet)
HIGH = b"\xff" * 32


def notifies(message):
    return [n.notify_type for n in message.all(PayloadType.NOTIFY)]


class Nonces:
    """The gateway's ``random_bytes``: its next 32-octet draws (its nonces) come from
    ``queue`` while it lasts, everything else (SPIs, later nonces) is random."""

    def __init__(self) -> None:
        self.queue: list[bytes] = []

    def __call__(self, n: int) -> bytes:
        if n == 32 and self.queue:
            return self.queue.pop(0)
        return os.urandom(n)


class RekeyTestCase(unittest.TestCase):
    def setUp(self):
        self.lines = log_lines(self)
        self.nonces = Nonces()

    def gateway(self, **options):
        """A gateway that rekeys (unless told otherwise), without liveness checks (they
        would interleave with the requests under test) and with our nonce source."""
        options.setdefault("rekey", "gateway")
        options.setdefault("dpd_delay", 0)
        options.setdefault("child_lifetime", int(CHILD))
        options.setdefault("random_bytes", self.nonces)
        self.gate = Gateway(timing=options.pop("timing", TIMING), **options)
        self.clock = self.gate.clock
        return self.gate

    def connected(self, **options):
        return self.gate.connected(**options)

    def session_ends(self):
        return [line for line in self.lines if "session of" in line and "ended" in line]

    def request(self, peer, exchange=ExchangeType.CREATE_CHILD_SA):
        """The one request the gateway sent since the last look."""
        (request,) = peer.gateway_requests()
        self.assertEqual(request.header.exchange, exchange)
        return request

    def answer_delete(self, peer):
        """The one request the gateway sent since the last look is a Delete: answered as
        a client does (§1.4.1); its Delete payload."""
        request = self.request(peer, ExchangeType.INFORMATIONAL)
        peer.answer_delete(request)
        return request.get(PayloadType.DELETE)

    def settle(self, peer):
        """Answer the gateway as a plain client would until it asks nothing more."""
        while peer.answer_all():
            pass

    def assertKeysAgree(self, peer):
        """Exactly the peer's CHILD_SAs are installed, each with the peer's keys: what
        the peer sends is what the gateway receives and the other way round, and the
        SPIs pair up (the gateway's inbound SPI is the one the peer sends to)."""
        installed = self.gate.installer.installed
        self.assertEqual(sorted(installed), sorted(c.theirs for c in peer.children.values()))
        for child in peer.children.values():
            spec = installed[child.theirs]
            self.assertEqual(spec.outbound_spi, child.ours)
            self.assertEqual((spec.inbound_encr_key, spec.inbound_integ_key), child.outbound)
            self.assertEqual((spec.outbound_encr_key, spec.outbound_integ_key), child.inbound)

    def assertNothingLeft(self):
        self.assertEqual(self.gate.leaks(), [])
        self.assertEqual(self.gate.drain(), [])


class ChildRekeyTests(RekeyTestCase):
    def rekey_round(self, peer, old):
        """At 0.85 child_lifetime after ``old`` was installed: the gateway's rekey
        (§1.3.3), our answer, its Delete of the old one (§2.8). Returns the successor."""
        self.clock.advance(CHILD * 0.85 - 0.01)
        self.assertEqual(peer.gateway_requests(), [])
        self.clock.advance(0.01)
        request = self.request(peer)
        self.assertFalse(request.header.initiator)  # it is the IKE SA's original responder
        rekey = request.notify(NotifyType.REKEY_SA)
        self.assertEqual(
            (rekey.protocol, rekey.spi), (ProtocolId.ESP, old.theirs.to_bytes(4, "big"))
        )
        (offered, *_) = request.get(PayloadType.SA).proposals
        self.assertEqual((offered.protocol, len(offered.spi)), (ProtocolId.ESP, 4))
        self.assertEqual(offered.transforms, old.proposal.transforms)  # §2.8: the same ones
        # TSi is the exchange initiator's side: the gateway's, TSr the client's (§1.3.3)
        self.assertEqual(request.get(PayloadType.TSi).selectors, old.selectors[1])
        self.assertEqual(request.get(PayloadType.TSr).selectors, old.selectors[0])
        reqid = self.gate.installer.installed[old.theirs].reqid
        peer.answer_rekey(request)
        (new,) = [c for c in peer.children.values() if c.replaces == old.ours]
        self.assertFalse(new.initiated)
        self.assertEqual(new.nonces[0], request.get(PayloadType.NONCE).data)  # Ni: the gateway's
        delete = self.answer_delete(peer)
        self.assertEqual((delete.protocol, delete.spis), (ProtocolId.ESP, (rekey.spi,)))
        self.settle(peer)
        self.assertNotIn(old.ours, peer.children)
        self.assertKeysAgree(peer)
        self.assertEqual(self.gate.installer.installed[new.theirs].reqid, reqid)
        return new

    def test_the_gateway_rekeys_a_child_sa_at_its_soft_lifetime(self):
        self.gateway()
        peer = self.connected()
        (child,) = peer.children.values()
        first_reqid = self.gate.installer.installed[child.theirs].reqid
        reqids = []
        for _ in range(3):
            child = self.rekey_round(peer, child)
            reqids.append(self.gate.installer.installed[child.theirs].reqid)
        self.assertEqual(reqids, [first_reqid] * 3)
        self.assertEqual(peer.liveness().payloads, [])  # the IKE SA is untouched
        self.assertEqual((len(self.gate.responder.sas), self.gate.pool.leased), (1, 1))
        self.assertEqual(self.session_ends(), [])
        self.assertNothingLeft()

    def test_the_old_child_sa_receives_until_its_delete_is_answered(self):
        """§2.8: the new CHILD_SA is installed when the rekey completes, and the old one
        is deleted after it: the client, which may send on the old SA until it has our
        Delete, is still received on it until it answers (§1.4.1: each end closes its
        incoming SA when the pair is closed, the Delete's sender on the answer)."""
        self.gateway()
        peer = self.connected()
        (old,) = peer.children.values()
        self.clock.advance(CHILD * 0.85)
        peer.answer_rekey(self.request(peer))
        (new,) = [c for c in peer.children.values() if c.replaces == old.ours]
        self.assertEqual(sorted(self.gate.installer.installed), sorted((old.theirs, new.theirs)))
        self.answer_delete(peer)
        self.assertEqual(list(self.gate.installer.installed), [new.theirs])
        self.assertNothingLeft()

    def test_the_gateways_message_ids_count_on(self):
        """§2.2: the gateway's requests have their own message IDs: rekey, delete,
        rekey, delete are 0, 1, 2, 3."""
        self.gateway()
        peer = self.connected()
        seen = []
        for _ in range(2):
            self.clock.advance(CHILD * 0.85)
            requests = peer.gateway_requests()
            seen += [r.header.message_id for r in requests]
            for request in requests:
                peer.answer_rekey(request)
            seen += [r.header.message_id for r in peer.answer_all()]
        self.assertEqual(seen, [0, 1, 2, 3])
        self.assertKeysAgree(peer)
        self.assertNothingLeft()

    def test_a_pfs_child_sa_is_rekeyed_with_a_ke_of_its_group(self):
        """§1.3.3: a CHILD_SA made with a KE is rekeyed with a KE of the same group, and
        KEYMAT takes the new g^ir (§2.17): the keys only agree if both used it."""
        self.gateway()
        peer = self.connected()
        (first,) = peer.children
        peer.create_child(group=DhGroup.ECP256)
        peer.delete_child(first)
        (child,) = peer.children.values()
        self.clock.advance(CHILD * 0.85)
        request = self.request(peer)
        self.assertEqual(request.get(PayloadType.KE).group, DhGroup.ECP256)
        (offered, *_) = request.get(PayloadType.SA).proposals
        self.assertIn(
            DhGroup.ECP256, [t.id for t in offered.transforms if t.type == TransformType.DH]
        )
        peer.answer_rekey(request)
        self.settle(peer)
        (new,) = peer.children.values()
        self.assertEqual(new.replaces, child.ours)
        self.assertKeysAgree(peer)
        self.assertNothingLeft()

    def test_an_unanswered_rekey_is_retransmitted_then_the_session_ends(self):
        """§2.1, §2.4: the same request again after 4 s x 1.8^n, five times; no answer
        after the last and the session is gone with everything it held."""
        self.gateway()
        peer = self.connected()
        self.clock.advance(CHILD * 0.85)
        first = self.request(peer)
        for wait in RETRANSMITS:
            self.clock.advance(wait - 0.01)
            self.assertEqual(peer.gateway_requests(), [])
            self.clock.advance(0.01)
            self.assertEqual(self.request(peer), first)
        self.clock.advance(GIVE_UP)
        self.assertEqual(peer.gateway_requests(), [])
        self.assertEqual(self.gate.responder.sas, {})
        self.assertEqual((self.gate.pool.leased, self.gate.installer.installed), (0, {}))
        (end,) = self.session_ends()
        self.assertIn("dead peer", end)
        self.assertNothingLeft()

    def test_an_answer_to_a_retransmission_completes_the_rekey(self):
        self.gateway()
        peer = self.connected()
        (child,) = peer.children.values()
        self.clock.advance(CHILD * 0.85)
        peer.gateway_requests()  # lost
        self.clock.advance(RETRANSMITS[0])
        peer.answer_rekey(self.request(peer))
        self.settle(peer)
        (new,) = peer.children.values()
        self.assertEqual(new.replaces, child.ours)
        self.assertKeysAgree(peer)
        self.assertNothingLeft()


class IkeRekeyTests(RekeyTestCase):
    def rekey_round(self, peer):
        """At 0.85 ike_lifetime: the gateway's IKE rekey (§1.3.2) on the current SA, our
        answer, its Delete of the old SA on the old SA (§2.18). Returns the new SA."""
        old = peer.ike
        self.clock.advance(IKE * 0.85 - 0.01)
        self.assertEqual(peer.gateway_requests(), [])
        self.clock.advance(0.01)
        request = self.request(peer)
        self.assertEqual((request.header.spi_i, request.header.spi_r), old.spis)
        self.assertEqual(request.header.message_id, 0)  # a new SA counts from zero (§2.18)
        self.assertIsNone(request.notify(NotifyType.REKEY_SA))
        (offered, *_) = request.get(PayloadType.SA).proposals
        self.assertEqual((offered.protocol, len(offered.spi)), (ProtocolId.IKE, 8))
        self.assertEqual(request.get(PayloadType.KE).group, peer.suite.group)
        peer.answer_rekey(request)
        new = peer.ike
        self.assertEqual(new.spi_i, offered.spi)  # the gateway initiated it: SPIi is its
        self.assertFalse(new.initiator)
        self.assertEqual(new.replaces, old.spis)
        delete = self.request(peer, ExchangeType.INFORMATIONAL)
        self.assertEqual((delete.header.spi_i, delete.header.spi_r), old.spis)
        self.assertEqual(delete.get(PayloadType.DELETE).protocol, ProtocolId.IKE)
        peer.answer_delete(delete)
        self.assertEqual(list(peer.ike_sas), [new.spis])
        self.assertEqual(len(self.gate.responder.sas), 1)
        self.assertEqual(self.gate.pool.leased, 1)
        return new

    def test_the_gateway_rekeys_the_ike_sa_and_the_session_carries_on(self):
        """Three rounds; after each the peer talks on the new SA as its original
        responder (no Initiator flag): a liveness check and a new CHILD_SA keyed from
        the new SK_d are answered, the first CHILD_SA and the lease moved with it, and
        no session end is logged until the client deletes it."""
        self.gateway(timing=Timing(ike_lifetime=IKE), child_lifetime=int(IKE * 10))
        peer = self.connected()
        (first,) = peer.children
        for _ in range(3):
            self.rekey_round(peer)
            self.assertEqual(peer.liveness().payloads, [])
            self.assertIn(first, peer.children)
            self.assertKeysAgree(peer)
        peer.create_child()
        self.assertEqual(len(peer.children), 2)
        self.assertKeysAgree(peer)
        self.assertEqual(self.session_ends(), [])
        self.assertEqual(self.gate.leaks(), [])
        peer.delete_ike()
        (end,) = self.session_ends()
        self.assertIn("ended: client delete", end)
        self.assertEqual((self.gate.responder.sas, self.gate.pool.leased), ({}, 0))
        self.assertNothingLeft()

    def test_the_new_sa_gets_its_own_lifetime(self):
        """A successor starts its lifetimes afresh: rekeyed again 0.85 L after its birth,
        never deleted at the old SA's 0.95 L."""
        self.gateway(timing=Timing(ike_lifetime=IKE), child_lifetime=int(IKE * 10))
        peer = self.connected()
        self.rekey_round(peer)
        self.clock.advance(IKE * 0.1)  # past the first SA's hard lifetime
        self.assertEqual(peer.gateway_requests(), [])
        self.clock.advance(IKE * 0.75)
        request = self.request(peer)
        self.assertEqual(request.get(PayloadType.SA).proposals[0].protocol, ProtocolId.IKE)
        peer.answer_rekey(request)
        self.settle(peer)
        self.assertEqual(peer.liveness().payloads, [])
        self.assertKeysAgree(peer)
        self.assertNothingLeft()

    def test_a_client_that_rekeys_itself_is_not_rekeyed_by_the_gateway(self):
        """The gateway's timer belongs to the SA: rekeyed by the client at half its life,
        the old SA is never rekeyed by the gateway, and the new one only at 0.85 L."""
        self.gateway(timing=Timing(ike_lifetime=IKE), child_lifetime=int(IKE * 10))
        peer = self.connected()
        self.clock.advance(IKE / 2)
        peer.rekey_ike()
        peer.delete_previous_ike()
        self.clock.advance(IKE * 0.85 - 1)
        self.assertEqual(peer.gateway_requests(), [])
        self.clock.advance(1)
        self.settle(peer)
        self.assertEqual(peer.liveness().payloads, [])
        self.assertKeysAgree(peer)
        self.assertNothingLeft()

    def test_an_unanswered_ike_rekey_ends_the_session(self):
        self.gateway(timing=Timing(ike_lifetime=IKE), child_lifetime=int(IKE * 10))
        peer = self.connected()
        self.clock.advance(IKE * 0.85)
        first = self.request(peer)
        for wait in RETRANSMITS:
            self.clock.advance(wait)
            self.assertEqual(self.request(peer), first)
        self.clock.advance(GIVE_UP)
        self.assertEqual((self.gate.responder.sas, self.gate.pool.leased), ({}, 0))
        self.assertEqual(len(self.session_ends()), 1)
        self.assertNothingLeft()


class ClientRekeysTests(RekeyTestCase):
    def test_the_gateway_rekeys_nothing_by_default(self):
        """rekey = "client": neither the CHILD_SA at 0.85 child_lifetime nor the IKE SA
        at 0.85 ike_lifetime; the first word from the gateway is the IKE SA's Delete at
        its hard lifetime (tests/test_ike_lifecycle.py covers that one)."""
        self.gateway(rekey="client", timing=Timing(ike_lifetime=IKE))
        peer = self.connected()
        self.clock.advance(CHILD * 0.99)
        self.assertEqual(peer.gateway_requests(), [])
        heard = []
        for _ in range(int(IKE * 0.95 - CHILD * 0.99)):  # a second at a time
            self.clock.advance(1)
            heard += peer.answer_all()  # a hard CHILD_SA expiry's Delete, if any
        *before, last = heard
        self.assertNotIn(ExchangeType.CREATE_CHILD_SA, [r.header.exchange for r in heard])
        self.assertEqual(
            [r.get(PayloadType.DELETE).protocol for r in before], [ProtocolId.ESP] * len(before)
        )
        self.assertEqual(last.get(PayloadType.DELETE).protocol, ProtocolId.IKE)
        self.assertNothingLeft()


class ChildCollisionTests(RekeyTestCase):
    """§2.8.1: both ends rekey the same CHILD_SA at once. Both exchanges complete; the
    new CHILD_SA made by the exchange with the lowest of the four nonces is redundant and
    is closed by the end that created it; the end that initiated the surviving one
    deletes the old one. Here the gateway's request leaves first, the peer's crosses it
    (the gateway sees it while its own is out), then the peer answers the gateway's."""

    def collide(self, peer, gateway_nonce, our_nonce):
        (old,) = peer.children.values()
        self.nonces.queue = [gateway_nonce, HIGH]  # its Ni, then its Nr to ours
        self.clock.advance(CHILD * 0.85)
        mine = peer.begin_child(rekey=old.ours, nonce=our_nonce)
        peer.answer_rekey(self.request(peer), nonce=HIGH)
        self.assertEqual(notifies(peer.complete(mine)), [])
        theirs, ours = (
            next(c for c in peer.children.values() if c.replaces == old.ours and c.initiated is i)
            for i in (False, True)
        )
        self.assertEqual(
            lowest_nonce(*theirs.nonces, *ours.nonces),
            gateway_nonce if gateway_nonce < our_nonce else our_nonce,
        )
        return old, theirs, ours

    def test_the_gateways_nonce_is_lowest(self):
        """Its new CHILD_SA is redundant: the gateway deletes it, and only it; the peer
        initiated the survivor, so it deletes the old one."""
        self.gateway()
        peer = self.connected()
        old, redundant, survivor = self.collide(peer, LOW, os.urandom(32))
        delete = self.answer_delete(peer)
        self.assertEqual(delete.spis, (redundant.theirs.to_bytes(4, "big"),))
        self.settle(peer)
        peer.delete_child(old.ours)
        self.assertEqual(list(peer.children), [survivor.ours])
        self.assertKeysAgree(peer)
        self.clock.advance(60)
        self.assertEqual(peer.gateway_requests(), [])
        self.assertNothingLeft()

    def test_the_peers_nonce_is_lowest(self):
        """Our new CHILD_SA is redundant: we delete it; the gateway initiated the
        survivor and deletes the old one, nothing else."""
        self.gateway()
        peer = self.connected()
        old, survivor, redundant = self.collide(peer, HIGH, LOW)
        peer.delete_child(redundant.ours)
        delete = self.answer_delete(peer)
        self.assertEqual(delete.spis, (old.theirs.to_bytes(4, "big"),))
        self.settle(peer)
        self.assertEqual(list(peer.children), [survivor.ours])
        self.assertKeysAgree(peer)
        self.clock.advance(60)
        self.assertEqual(peer.gateway_requests(), [])
        self.assertNothingLeft()

    def test_the_gateway_finished_before_our_request_arrived(self):
        """§2.8.1's special case: only the peer noticed. The gateway's rekey completed
        and it deletes the old CHILD_SA; our request for it, arriving now, is refused
        (§2.25.1: it is being closed, or gone), so no redundant CHILD_SA is made."""
        self.gateway()
        peer = self.connected()
        (old,) = peer.children.values()
        self.clock.advance(CHILD * 0.85)
        mine = peer.begin_child(rekey=old.ours, send=False)  # sent, still on its way
        peer.answer_rekey(self.request(peer))
        delete = self.request(peer, ExchangeType.INFORMATIONAL)
        peer.send(mine)
        self.assertIn(
            notifies(peer.complete(mine)),
            ([NotifyType.TEMPORARY_FAILURE], [NotifyType.CHILD_SA_NOT_FOUND]),
        )
        peer.answer_delete(delete)
        (survivor,) = peer.children.values()
        self.assertEqual((survivor.replaces, survivor.initiated), (old.ours, False))
        self.assertKeysAgree(peer)
        self.assertNothingLeft()


class IkeCollisionTests(RekeyTestCase):
    """§2.8.2: both ends rekey the IKE SA at once: three IKE SAs; the new one made by
    the exchange with the lowest nonce is closed by its creator, the other inherits the
    CHILD_SAs (and the lease), the old one is deleted by the survivor's initiator."""

    def collide(self, peer, gateway_nonce, our_nonce):
        old = peer.ike
        self.nonces.queue = [gateway_nonce, HIGH]
        self.clock.advance(IKE * 0.85)
        mine = peer.begin_rekey_ike(nonce=our_nonce)
        peer.answer_rekey(self.request(peer), nonce=HIGH)
        theirs = peer.ike
        self.assertEqual(notifies(peer.complete(mine)), [])
        ours = peer.ike
        self.assertEqual((theirs.replaces, ours.replaces), (old.spis, old.spis))
        self.assertEqual((theirs.initiator, ours.initiator), (False, True))
        return old, theirs, ours

    def assertSurvivor(self, peer, survivor, first_child):
        self.assertEqual(list(peer.ike_sas), [survivor.spis])
        peer.use(survivor)
        self.assertEqual(peer.liveness().payloads, [])
        self.assertEqual(len(self.gate.responder.sas), 1)
        self.assertEqual(self.gate.pool.leased, 1)
        self.assertIn(first_child, peer.children)
        peer.create_child()  # keyed from the survivor's SK_d
        self.assertKeysAgree(peer)
        self.assertEqual(self.session_ends(), [])
        self.assertNothingLeft()

    def test_the_gateways_nonce_is_lowest(self):
        self.gateway(timing=Timing(ike_lifetime=IKE), child_lifetime=int(IKE * 10))
        peer = self.connected()
        (first,) = peer.children
        old, redundant, survivor = self.collide(peer, LOW, os.urandom(32))
        delete = self.request(peer, ExchangeType.INFORMATIONAL)
        self.assertEqual((delete.header.spi_i, delete.header.spi_r), redundant.spis)
        self.assertEqual(delete.get(PayloadType.DELETE).protocol, ProtocolId.IKE)
        peer.answer_delete(delete)
        peer.use(old)
        self.assertEqual(peer.delete_ike().payloads, [])  # the survivor's initiator: us
        self.assertEqual(peer.gateway_requests(), [])
        self.assertSurvivor(peer, survivor, first)

    def test_the_peers_nonce_is_lowest(self):
        self.gateway(timing=Timing(ike_lifetime=IKE), child_lifetime=int(IKE * 10))
        peer = self.connected()
        (first,) = peer.children
        old, survivor, redundant = self.collide(peer, HIGH, LOW)
        peer.use(redundant)
        self.assertEqual(peer.delete_ike().payloads, [])  # ours is redundant: we close it
        delete = self.request(peer, ExchangeType.INFORMATIONAL)
        self.assertEqual((delete.header.spi_i, delete.header.spi_r), old.spis)
        peer.answer_delete(delete)
        self.assertEqual(peer.gateway_requests(), [])
        self.assertSurvivor(peer, survivor, first)

    def test_the_gateway_finished_before_our_request_arrived(self):
        """§2.8.2's special case: the gateway's IKE rekey completed and it deletes the
        old SA; our rekey of that SA, arriving now, gets TEMPORARY_FAILURE (an SA it is
        closing, §2.25.2)."""
        self.gateway(timing=Timing(ike_lifetime=IKE), child_lifetime=int(IKE * 10))
        peer = self.connected()
        (first,) = peer.children
        self.clock.advance(IKE * 0.85)
        mine = peer.begin_rekey_ike(send=False)
        peer.answer_rekey(self.request(peer))
        survivor = peer.ike
        delete = self.request(peer, ExchangeType.INFORMATIONAL)
        peer.send(mine)
        self.assertEqual(notifies(peer.complete(mine)), [NotifyType.TEMPORARY_FAILURE])
        peer.answer_delete(delete)
        self.assertSurvivor(peer, survivor, first)


class DeleteDuringRekeyTests(RekeyTestCase):
    def test_the_peer_deletes_the_child_sa_being_rekeyed_first(self):
        """The peer's Delete reaches the gateway before our answer to its rekey: the
        new CHILD_SA would replace nothing, and the gateway deletes it too."""
        self.gateway()
        peer = self.connected()
        (old,) = peer.children.values()
        self.clock.advance(CHILD * 0.85)
        answer = peer.rekey_response(self.request(peer))  # on its way
        (new,) = [c for c in peer.children.values() if c.replaces == old.ours]
        response = peer.delete_child(old.ours)
        self.assertEqual(response.get(PayloadType.DELETE).spis, (old.theirs.to_bytes(4, "big"),))
        peer.deliver(answer)
        delete = self.answer_delete(peer)
        self.assertEqual(delete.spis, (new.theirs.to_bytes(4, "big"),))
        self.settle(peer)
        self.assertEqual((peer.children, self.gate.installer.installed), ({}, {}))
        self.assertEqual(peer.liveness().payloads, [])  # the IKE SA stays
        self.assertNothingLeft()

    def test_a_rekey_of_a_child_sa_the_peer_deleted_is_refused(self):
        """The peer deleted the CHILD_SA before the gateway's rekey reached it: it
        answers CHILD_SA_NOT_FOUND (§2.25.1) and nothing new is installed."""
        self.gateway()
        peer = self.connected()
        (old,) = peer.children.values()
        self.clock.advance(CHILD * 0.85)
        request = self.request(peer)
        peer.delete_child(old.ours)
        peer.answer_rekey(request)
        self.clock.advance(60)
        self.assertEqual(peer.gateway_requests(), [])
        self.assertEqual((peer.children, self.gate.installer.installed), ({}, {}))
        self.assertEqual(len(self.gate.responder.sas), 1)
        self.assertNothingLeft()

    def test_the_peer_deletes_the_ike_sa_during_the_gateways_ike_rekey(self):
        """§2.25.2: the peer's Delete crosses the gateway's IKE rekey; the session ends
        once, and the gateway's request is neither retransmitted nor left behind."""
        self.gateway(timing=Timing(ike_lifetime=IKE), child_lifetime=int(IKE * 10))
        peer = self.connected()
        self.clock.advance(IKE * 0.85)
        self.request(peer)  # not answered
        self.assertEqual(peer.delete_ike().payloads, [])
        self.assertEqual((self.gate.responder.sas, self.gate.pool.leased), ({}, 0))
        self.clock.advance(sum(RETRANSMITS) + GIVE_UP)
        self.assertEqual(peer.gateway_requests(), [])
        self.assertEqual(peer.stray, [])
        (end,) = self.session_ends()
        self.assertIn("ended: client delete", end)
        self.assertNothingLeft()

    def test_a_rekey_of_a_child_sa_the_gateway_deletes(self):
        """The gateway deletes a CHILD_SA (its hard lifetime); our rekey of it crossing
        that Delete is refused (§2.25.1: it is closing it), and once the Delete is
        answered a rekey of it gets CHILD_SA_NOT_FOUND (it does not exist)."""
        self.gateway(rekey="client")
        peer = self.connected()
        (old,) = peer.children.values()
        spec = self.gate.installer.installed[old.theirs]
        self.gate.responder.expired(ExpireEvent(spec, inbound=True, hard=True))
        delete = self.request(peer, ExchangeType.INFORMATIONAL)
        crossing = notifies(peer.rekey_child(old.ours))
        self.assertIn(crossing, ([NotifyType.TEMPORARY_FAILURE], [NotifyType.CHILD_SA_NOT_FOUND]))
        peer.answer_delete(delete)
        self.assertEqual(peer.children, {})
        response = peer.rekey_child(old.ours)
        self.assertEqual(notifies(response), [NotifyType.CHILD_SA_NOT_FOUND])
        self.assertEqual(self.gate.installer.installed, {})
        self.assertNothingLeft()

    def test_an_ike_rekey_of_an_sa_the_gateway_deletes(self):
        """§2.25.2: the gateway deletes the IKE SA (its hard lifetime); the peer's IKE
        rekey crossing that Delete gets TEMPORARY_FAILURE; the session ends once."""
        self.gateway(rekey="client", timing=Timing(ike_lifetime=IKE))
        peer = self.connected()
        self.clock.advance(IKE * 0.95)
        delete = self.request(peer, ExchangeType.INFORMATIONAL)
        self.assertEqual(notifies(peer.rekey_ike()), [NotifyType.TEMPORARY_FAILURE])
        peer.answer_delete(delete)
        self.assertEqual((self.gate.responder.sas, self.gate.pool.leased), ({}, 0))
        (end,) = self.session_ends()
        self.assertIn("ended: lifetime", end)
        self.assertNothingLeft()
