"""Outsider review of issue 10 (the gateway speaks first): in-process reproductions of the
findings, each on the scripted initiator and a fake clock. Every test here failed on
main at 06024e7; each docstring names the RFC text it holds the gateway to."""

import os

from twisted.trial import unittest

from tests.ike_peer import Gateway, _negotiated, _random_spi
from tests.support import log_lines
from vpnaaa.ike import keys, sk, transforms
from vpnaaa.ike.common import EndCause, Ending
from vpnaaa.ike.const import (
    DhGroup,
    EncrId,
    Esn,
    ExchangeType,
    NotifyType,
    PayloadType,
    ProtocolId,
    TransformType,
)
from vpnaaa.ike.message import (
    Delete,
    Ke,
    Message,
    Nonce,
    Notify,
    Proposal,
    Sa,
    Transform,
    decode_message,
    decode_payloads,
)
from vpnaaa.ike.protocol import Timing
from vpnaaa.ike.sa import State, user_key
from vpnaaa.kernel.xfrm_installer import ExpireEvent

LONG = Timing(ike_lifetime=100_000.0)


def notifies(message):
    return [n.notify_type for n in message.all(PayloadType.NOTIFY)]


def answer_ike_rekey(peer, request):
    """Accept the gateway's IKE rekey (§1.3.2) as a client would: our SPI, Nr, KEr of the
    group offered. Returns the new SA's (spi_i, spi_r, inbound protection) as the client
    holds them (the gateway is its original initiator now, §2.18) and what the gateway
    sent back at once."""
    offered = request.get(PayloadType.SA).proposals[0]
    theirs_ke, ni = request.get(PayloadType.KE), request.get(PayloadType.NONCE).data
    group = transforms.group_for(theirs_ke.group)
    private, public = group.generate()
    spi, nr = os.urandom(8), os.urandom(32)
    accepted = Proposal(offered.number, ProtocolId.IKE, spi, offered.transforms)
    replies = peer.answer(
        request,
        [
            (PayloadType.SA, Sa((accepted,))),
            (PayloadType.NONCE, Nonce(nr)),
            (PayloadType.KE, Ke(theirs_ke.group, public)),
        ],
    )
    replies += taken(peer)
    old = peer._keys()
    prf, cipher, integrity = _negotiated(accepted)
    shared = group.shared_secret(private, theirs_ke.data)
    seed = keys.rekeyed_skeyseed(old.prf, old.keys.sk_d, shared, ni, nr)
    new_keys = keys.ike_keys(prf, cipher, integrity, seed, ni, nr, offered.spi, spi)
    _, inbound = sk.directions(new_keys, cipher, integrity, initiator=False)
    return (offered.spi, spi, inbound), replies


def taken(peer):
    """The gateway's requests the peer holds unread (raw datagrams), taken."""
    held, peer.inbox = peer.inbox, []
    return held


def requests_on(sent, spis, inbound):
    """The gateway's requests among ``sent`` datagrams on the IKE SA ``spis``, decrypted."""
    found = []
    for datagram in sent:
        message = decode_message(datagram)
        header = message.header
        if header.response or (header.spi_i, header.spi_r) != spis:
            continue
        _, payload = message.payloads[-1]
        prefix = datagram[: len(datagram) - len(payload.raw)]
        plaintext = sk.open(prefix, payload.raw, inbound)
        found.append(Message(header, decode_payloads(payload.first_payload, plaintext)))
    return found


class AttackTestCase(unittest.TestCase):
    def setUp(self):
        self.lines = log_lines(self)

    def gateway(self, **options):
        options.setdefault("dpd_delay", 0)
        self.gate = Gateway(timing=options.pop("timing", LONG), **options)
        return self.gate

    def connected(self, **options):
        return self.gate.connected(**options)

    def the_sa(self):
        (sa,) = [s for s in self.gate.responder.sas.values() if s.state == State.ESTABLISHED]
        return sa


class GatewayIkeRekeyTests(AttackTestCase):
    def test_a_session_being_deleted_does_not_survive_our_own_ike_rekey(self):
        """§2.25.2: "If a peer receives a request to close an IKE SA that it is currently
        rekeying, ... forget about its own rekeying request" -- and a session the gateway
        decided to end (an administrator, max_sessions_per_user = replace, shutdown) must
        not be carried on by the rekey it had already sent. The client answers our IKE
        rekey after delete(): the successor must not be a live session."""
        self.gateway(timing=Timing(ike_lifetime=1000.0), rekey="gateway")
        peer = self.connected()
        self.gate.clock.advance(850)  # soft lifetime (jitter 1/2): our IKE rekey leaves
        (rekey,) = peer.gateway_requests()
        self.assertEqual(rekey.get(PayloadType.SA).proposals[0].protocol, ProtocolId.IKE)
        cause = Ending(EndCause.ADMIN_RESET, "deleted by the administrator")
        self.gate.responder.delete(self.the_sa(), cause)
        _, replies = answer_ike_rekey(peer, rekey)
        old = peer._keys()
        (delete_old,) = requests_on(replies, (old.spi_i, old.spi_r), old.inbound)
        self.assertEqual(delete_old.get(PayloadType.DELETE).protocol, ProtocolId.IKE)
        peer.answer(delete_old)
        profile = self.gate.context.profiles[0]
        self.assertEqual(self.gate.responder.sessions_of(user_key("alice"), profile), 0)

    def test_a_refused_ike_rekey_is_tried_again_before_the_hard_lifetime(self):
        """§2.25: on TEMPORARY_FAILURE the initiator "MUST wait ... MAY retry the request
        one or more times over a period of several minutes" (charon retries,
        ike_rekey.c schedule_delayed_rekey). Never retrying makes one transient refusal
        (a client busy with a CHILD_SA) end the session at the hard lifetime."""
        self.gateway(timing=Timing(ike_lifetime=10_000.0), rekey="gateway")
        peer = self.connected()
        self.gate.clock.advance(8500)
        (rekey,) = peer.gateway_requests()
        peer.answer(rekey, [(PayloadType.NOTIFY, Notify(NotifyType.TEMPORARY_FAILURE))])
        asked = []
        for _ in range(990):  # up to one second before the hard lifetime (9500 s)
            self.gate.clock.advance(1)
            asked += peer.gateway_requests()
        self.assertTrue(
            any(r.header.exchange == ExchangeType.CREATE_CHILD_SA for r in asked),
            "the IKE rekey was never tried again; the session ends at the hard lifetime",
        )

    def test_a_child_delete_queued_behind_our_ike_rekey_reaches_the_client(self):
        """§1.4: "Control messages that pertain to Child SAs MUST be sent under the
        protection of the IKE SA that generated them (or its successor if the IKE SA was
        rekeyed)". A CHILD_SA that hits its hard lifetime while our IKE rekey is out
        queues its Delete on the old SA, behind our Delete of that SA: it is lost, and
        the client keeps sending on an SA the kernel no longer has."""
        self.gateway(timing=Timing(ike_lifetime=1000.0), rekey="gateway")
        peer = self.connected()
        (spec,) = self.gate.installer.installed.values()
        self.gate.clock.advance(850)
        (rekey,) = peer.gateway_requests()
        self.gate.responder.expired(ExpireEvent(spec, inbound=True, hard=True))
        self.assertEqual(peer.gateway_requests(), [])  # queued behind the rekey
        (spi_i, spi_r, inbound), sent = answer_ike_rekey(peer, rekey)
        old = peer._keys()
        (delete_old,) = requests_on(sent, (old.spi_i, old.spi_r), old.inbound)
        self.assertEqual(delete_old.get(PayloadType.DELETE).protocol, ProtocolId.IKE)
        sent += peer.answer(delete_old)
        self.gate.clock.advance(60)  # whatever the gateway sends on the new SA meanwhile
        sent += taken(peer)
        deletes = [
            d for r in requests_on(sent, (spi_i, spi_r), inbound) for d in r.all(PayloadType.DELETE)
        ]
        wanted = Delete(ProtocolId.ESP, (spec.inbound_spi.to_bytes(4, "big"),))
        self.assertIn(wanted, deletes, "the CHILD_SA's Delete never reached the client")


class ClientIkeRekeyTests(AttackTestCase):
    def test_a_child_delete_queued_on_the_old_sa_survives_the_clients_ike_rekey(self):
        """§1.4 as above, the client's side: our Delete of a CHILD_SA waits behind a
        liveness check; the client rekeys the IKE SA and deletes the old one (as charon
        does at once): the Delete must follow the CHILD_SAs to the successor."""
        self.gateway(dpd_delay=30.0)
        peer = self.connected()
        (spec,) = self.gate.installer.installed.values()
        self.gate.clock.advance(30)
        (_liveness,) = peer.gateway_requests()
        self.gate.responder.expired(ExpireEvent(spec, inbound=True, hard=True))
        self.assertEqual(peer.gateway_requests(), [])  # queued behind the liveness check
        peer.rekey_ike()
        peer.delete_previous_ike()
        deletes = [d for r in peer.gateway_requests() for d in r.all(PayloadType.DELETE)]
        wanted = Delete(ProtocolId.ESP, (spec.inbound_spi.to_bytes(4, "big"),))
        self.assertIn(wanted, deletes, "the CHILD_SA's Delete was dropped with the old SA")

    def test_the_clients_ike_rekey_during_our_child_rekey_does_not_stop_child_rekeys(self):
        """§2.25: TEMPORARY_FAILURE "SHOULD be sent when a peer receives a request that
        cannot be completed due to a temporary condition such as a rekeying operation";
        charon answers an IKE rekey with it while a CHILD_SA is being rekeyed
        (ike_rekey.c have_half_open_children). Accepted here, the CHILD_SA moves to the
        successor still marked ``rekeying``, our CHILD rekey dies with the old SA and
        is never retried: with rekey = "gateway" the CHILD_SA is never rekeyed again."""
        self.gateway(rekey="gateway", child_lifetime=1000)
        peer = self.connected()
        (spec,) = self.gate.installer.installed.values()
        self.gate.clock.advance(850)  # the CHILD_SA's soft lifetime: our rekey leaves
        (child_rekey,) = peer.gateway_requests()
        self.assertIsNotNone(child_rekey.notify(NotifyType.REKEY_SA))
        response = peer.rekey_ike()  # crossed: the client's IKE rekey was on its way
        if NotifyType.TEMPORARY_FAILURE in notifies(response):
            return  # the collision is refused as charon does: nothing more to show
        # the client answers ours on the old SA as charon does while it rekeys the IKE
        # SA (child_create.c: TEMPORARY_FAILURE), then deletes the old IKE SA
        new = peer.ike
        peer.ike = peer.previous[0]
        peer.answer(child_rekey, [(PayloadType.NOTIFY, Notify(NotifyType.TEMPORARY_FAILURE))])
        peer.ike = new
        peer.delete_previous_ike()
        peer.port.sent.clear()
        asked = []
        for _ in range(99):  # until just before the hard lifetime (950 s)
            self.gate.clock.advance(1)
            asked += peer.gateway_requests()
        rekeys = [r for r in asked if r.notify(NotifyType.REKEY_SA) is not None]
        self.assertTrue(rekeys, "the CHILD_SA was never rekeyed again; it dies at 950 s")
        self.assertIn(spec.inbound_spi, self.gate.installer.installed)


class RekeyChildAnswerTests(AttackTestCase):
    def test_an_answer_without_ke_after_the_child_went_is_refused_not_a_crash(self):
        """Our rekey of a PFS CHILD_SA is out; the client deletes that CHILD_SA (§2.25.1
        crossing) and answers our rekey with a proposal without a DH transform and no
        KE. ``RekeyChild._accepted`` compares with the old proposal only while the old
        CHILD_SA exists and then asserts ``choice.dh is not None``: peer input reaches
        an assert, and the whole IKE SA is removed as an internal error."""
        self.gateway(rekey="gateway", child_lifetime=1000)
        peer = self.connected()
        (first,) = list(peer.children)
        self.gate.clock.advance(100)
        peer.create_child(group=DhGroup.CURVE25519)
        (pfs,) = [spi for spi in peer.children if spi != first]
        peer.delete_child(first)
        self.gate.clock.advance(850)
        (rekey,) = peer.gateway_requests()
        self.assertIsInstance(rekey.get(PayloadType.KE), Ke)
        peer.delete_child(pfs)  # the client's Delete crosses our rekey (§2.25.1)
        no_dh = Proposal(
            1,
            ProtocolId.ESP,
            _random_spi().to_bytes(4, "big"),
            (
                Transform(TransformType.ENCR, EncrId.AES_GCM_16, 128),
                Transform(TransformType.ESN, Esn.NO),
            ),
        )
        peer.answer(
            rekey,
            [
                (PayloadType.SA, Sa((no_dh,))),
                (PayloadType.NONCE, Nonce(os.urandom(32))),
                (PayloadType.TSi, rekey.get(PayloadType.TSr)),
                (PayloadType.TSr, rekey.get(PayloadType.TSi)),
            ],
        )
        self.assertFalse([line for line in self.lines if "internal error" in line])
        self.assertEqual(len(self.gate.responder.sas), 1, "the client's session was removed")


class ResourceTests(AttackTestCase):
    def test_one_ike_sa_cannot_hold_any_number_of_child_sas(self):
        """An authenticated client asks CREATE_CHILD_SA again and again: each is a kernel
        SA pair and three policies (and with rekey = "gateway" a timer), and nothing
        bounds them per IKE SA (§1.3 lets the responder refuse with NO_ADDITIONAL_SAS)."""
        self.gateway()
        peer = self.connected()
        refused = 0
        for _ in range(200):
            response = peer.create_child()
            refused += NotifyType.NO_ADDITIONAL_SAS in notifies(response)
        self.assertLess(len(self.gate.installer.installed), 200)
        self.assertTrue(refused)

    def test_rekeying_the_ike_sa_in_a_loop_does_not_pile_up_old_sas(self):
        """The client rekeys its IKE SA again and again without deleting the old ones
        (§1.3.2 says it deletes them): each costs us a DH and leaves an SA in memory
        for HALF_OPEN_TIMEOUT (30 s), at whatever rate the client sends."""
        self.gateway()
        peer = self.connected()
        self.assertIsInstance(peer.rekey_ike().get(PayloadType.KE), Ke)
        for _ in range(200):  # §2.25: the rekeyed SA waits until its predecessor is gone
            refused = peer.rekey_ike()
            self.assertEqual(
                [n.notify_type for n in refused.all(PayloadType.NOTIFY)],
                [NotifyType.TEMPORARY_FAILURE],
            )
        self.assertEqual(len(self.gate.responder.sas), 2)
        peer.delete_previous_ike()
        self.assertIsInstance(peer.rekey_ike().get(PayloadType.KE), Ke)
        self.assertEqual(len(self.gate.responder.sas), 2)
