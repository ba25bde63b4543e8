"""The responder's edge behaviour without a peer: retransmissions (RFC 7296 §2.1), refused
IKE_SA_INIT requests keep no state (§2.6, §1.2), half-open SAs expire."""

import os
from dataclasses import replace

from twisted.internet import task
from twisted.trial import unittest

from tests.test_ike_fuzz import PEER, FakePort, context
from vpnaaa.ike import transforms
from vpnaaa.ike.const import (
    DhGroup,
    EncrId,
    ExchangeType,
    HeaderFlag,
    IntegId,
    NotifyType,
    PayloadType,
    PrfId,
    ProtocolId,
    TransformType,
)
from vpnaaa.ike.message import (
    Header,
    Ke,
    Nonce,
    Notify,
    Proposal,
    Sa,
    Transform,
    decode_message,
    encode_message,
)
from vpnaaa.ike.protocol import COOKIE_SECRET_LIFETIME, HALF_OPEN_TIMEOUT, Limits, Responder
from vpnaaa.ike.sa import Endpoint
from vpnaaa.kernel.installer import NullInstaller


def sa_init(group: int = DhGroup.ECP256, offered: int = DhGroup.ECP256, message_id: int = 0):
    """An IKE_SA_INIT request as an initiator would send it (RFC 7296 §1.2)."""
    proposal = Proposal(
        1,
        ProtocolId.IKE,
        b"",
        (
            Transform(TransformType.ENCR, EncrId.AES_CBC, 256),
            Transform(TransformType.PRF, PrfId.HMAC_SHA2_256),
            Transform(TransformType.INTEG, IntegId.HMAC_SHA2_256_128),
            Transform(TransformType.DH, offered),
        ),
    )
    _, public = transforms.group_for(group).generate()
    header = Header(
        os.urandom(8), bytes(8), ExchangeType.IKE_SA_INIT, HeaderFlag.INITIATOR, message_id
    )
    return encode_message(
        header,
        [
            (PayloadType.SA, Sa((proposal,))),
            (PayloadType.KE, Ke(group, public)),
            (PayloadType.NONCE, Nonce(os.urandom(32))),
        ],
    )


class ResponderTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.responder = Responder(context(), NullInstaller(), self.clock, "192.0.2.1")
        self.port = FakePort()

    def test_retransmitted_sa_init_gets_the_same_answer_and_one_sa(self):
        request = sa_init()
        self.responder.receive(request, PEER, self.port)
        self.responder.receive(request, PEER, self.port)
        first, second = self.port.sent
        self.assertEqual(first, second)
        self.assertEqual(len(self.responder.sas), 1)
        response = decode_message(first)
        self.assertTrue(response.header.response)
        self.assertEqual(response.get(PayloadType.KE).group, DhGroup.ECP256)

    def test_invalid_ke_payload_names_the_group_and_keeps_nothing(self):
        self.responder.receive(sa_init(DhGroup.MODP2048, offered=DhGroup.ECP256), PEER, self.port)
        (reply,) = self.port.sent
        message = decode_message(reply)
        self.assertEqual(message.header.spi_r, bytes(8))
        notify = message.get(PayloadType.NOTIFY)
        self.assertEqual(notify.notify_type, NotifyType.INVALID_KE_PAYLOAD)
        self.assertEqual(int.from_bytes(notify.data, "big"), DhGroup.ECP256)
        self.assertEqual(self.responder.sas, {})

    def test_sa_init_with_a_message_id_other_than_zero_is_dropped(self):
        self.responder.receive(sa_init(message_id=5), PEER, self.port)
        self.assertEqual((self.port.sent, self.responder.sas), ([], {}))

    def test_unknown_critical_payload_is_refused_with_the_notify(self):
        request = bytearray(sa_init())
        # Make the SA payload's generic header critical and of an unknown type: the
        # header's Next Payload points at it.
        request[16] = 200  # next payload in the IKE header
        request[28 + 1] |= 0x80  # its critical bit
        self.responder.receive(bytes(request), PEER, self.port)
        (reply,) = self.port.sent
        notify = decode_message(reply).get(PayloadType.NOTIFY)
        self.assertIsInstance(notify, Notify)
        self.assertEqual(notify.notify_type, NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD)
        self.assertEqual(notify.data, bytes([200]))
        self.assertEqual(self.responder.sas, {})

    def test_cookie_required_above_the_threshold(self):
        """RFC 7296 §2.6: no state and no DH until the initiator returns our cookie."""
        self.responder.limits = Limits(cookie_threshold=0)
        request = sa_init()
        self.responder.receive(request, PEER, self.port)
        (challenge,) = self.port.sent
        message = decode_message(challenge)
        cookie = message.get(PayloadType.NOTIFY)
        self.assertEqual(cookie.notify_type, NotifyType.COOKIE)
        self.assertEqual(self.responder.sas, {})
        original = decode_message(request)
        retry = encode_message(
            original.header,
            [(PayloadType.NOTIFY, Notify(NotifyType.COOKIE, cookie.data)), *original.payloads],
        )
        self.responder.receive(retry, PEER, self.port)
        self.assertEqual(len(self.responder.sas), 1)
        self.assertEqual(
            decode_message(self.port.sent[-1]).get(PayloadType.KE).group, DhGroup.ECP256
        )
        forged = encode_message(
            original.header,
            [(PayloadType.NOTIFY, Notify(NotifyType.COOKIE, bytes(32))), *original.payloads],
        )
        self.responder.receive(forged, Endpoint("192.0.2.8", 500), self.port)
        self.assertEqual(len(self.responder.sas), 1)

    def test_half_open_sa_expires_and_returns_nothing(self):
        self.responder.receive(sa_init(), PEER, self.port)
        self.assertEqual(len(self.responder.sas), 1)
        self.clock.advance(HALF_OPEN_TIMEOUT + 1)
        self.assertEqual(self.responder.sas, {})
        self.assertEqual(self.responder.context.pool.leased, 0)


def with_cookie(request: bytes, cookie: bytes) -> bytes:
    """``request`` again with N(COOKIE) first (RFC 7296 §2.6)."""
    original = decode_message(request)
    return encode_message(
        original.header,
        [(PayloadType.NOTIFY, Notify(NotifyType.COOKIE, cookie)), *original.payloads],
    )


def offering(groups: tuple[int, ...], ke_group: int) -> bytes:
    """IKE_SA_INIT offering ``groups`` in one proposal, with a KE of ``ke_group``."""
    transforms_ = (
        Transform(TransformType.ENCR, EncrId.AES_CBC, 256),
        Transform(TransformType.PRF, PrfId.HMAC_SHA2_256),
        Transform(TransformType.INTEG, IntegId.HMAC_SHA2_256_128),
        *(Transform(TransformType.DH, g) for g in groups),
    )
    _, public = transforms.group_for(ke_group).generate()
    header = Header(os.urandom(8), bytes(8), ExchangeType.IKE_SA_INIT, HeaderFlag.INITIATOR, 0)
    return encode_message(
        header,
        [
            (PayloadType.SA, Sa((Proposal(1, ProtocolId.IKE, b"", transforms_),))),
            (PayloadType.KE, Ke(ke_group, public)),
            (PayloadType.NONCE, Nonce(os.urandom(32))),
        ],
    )


class EdgeSecurityTests(unittest.TestCase):
    """What an unauthenticated sender can and cannot make the responder do."""

    def setUp(self):
        self.clock = task.Clock()
        self.responder = Responder(context(), NullInstaller(), self.clock, "192.0.2.1")
        self.port = FakePort()

    def half_open(self, peer=PEER):
        request = sa_init()
        self.responder.receive(request, peer, self.port)
        (sa,) = [s for s in self.responder.sas.values() if s.remote == peer]
        return request, sa

    def test_sa_init_on_an_sa_with_keys_is_dropped(self):
        """§1.2: IKE_SA_INIT is message 0 of a new SA only. One naming an existing SA's
        SPIs and its next message ID, from anywhere, must not rekey it in the clear."""
        _, sa = self.half_open()
        keys_before, sent = sa.crypto.keys, len(self.port.sent)
        hijack = decode_message(sa_init())
        for message_id in (0, 1):
            header = Header(
                sa.spi_i,
                sa.spi_r,
                ExchangeType.IKE_SA_INIT,
                HeaderFlag.INITIATOR,
                message_id,
            )
            forged = encode_message(header, list(hijack.payloads))
            self.responder.receive(forged, Endpoint("203.0.113.66", 500), self.port)
        self.assertEqual(len(self.port.sent), sent)
        self.assertIs(sa.crypto.keys, keys_before)
        self.assertEqual((sa.remote, sa.next_message_id), (PEER, 1))
        self.assertEqual(len(self.responder.sas), 1)

    def test_retransmission_only_for_the_same_datagram(self):
        """§2.1: the stored response answers the request it answered, nothing else with
        the same message ID (the reflection of a certificate-sized answer)."""
        request, sa = self.half_open()
        (response,) = self.port.sent
        other = decode_message(sa_init())
        same_id = encode_message(
            replace(decode_message(request).header, spi_i=sa.spi_i), list(other.payloads)
        )
        self.responder.receive(same_id, PEER, self.port)
        self.assertEqual(self.port.sent, [response])
        self.responder.receive(request, PEER, self.port)
        self.assertEqual(self.port.sent, [response, response])

    def test_no_amplification_towards_an_unverified_address(self):
        """A replayed request from another address gets nothing larger than itself:
        the SA has not verified that address (§2.23 moves it only after an ICV)."""
        request, sa = self.half_open()
        (response,) = self.port.sent
        self.assertGreater(len(response), len(request))
        elsewhere = Endpoint("203.0.113.66", 500)
        self.responder._by_initiator[(elsewhere.host, elsewhere.port, sa.spi_i)] = sa
        self.responder.receive(request, elsewhere, self.port)
        self.assertEqual(self.port.sent, [response])
        self.assertEqual(sa.remote, PEER)

    def test_per_source_half_open_limit(self):
        """charon's block_threshold: one address holds at most half_open_per_source it
        did not prove; further requests are asked for a cookie (not answered here)."""
        self.responder.limits = Limits(half_open_per_source=3)
        for _ in range(5):
            self.responder.receive(sa_init(), PEER, self.port)
        self.assertEqual(len(self.responder.sas), 3)
        self.responder.receive(sa_init(), Endpoint("192.0.2.9", 500), self.port)
        self.assertEqual(len(self.responder.sas), 4)
        self.clock.advance(HALF_OPEN_TIMEOUT + 1)
        self.assertEqual((self.responder.sas, self.responder.half_open), ({}, 0))
        self.responder.receive(sa_init(), PEER, self.port)
        self.assertEqual(len(self.responder.sas), 1)

    def test_forged_requests_cannot_use_up_a_sources_share(self):
        """Requests forged with a victim's address fill its unproven share; the victim is
        then asked for a cookie, which a forger never sees, and gets a share of its own."""
        self.responder.limits = Limits(half_open_per_source=3)
        for _ in range(3):  # the forger, sending as PEER, never answers cookies
            self.responder.receive(sa_init(), PEER, self.port)
        request = sa_init()
        self.responder.receive(request, PEER, self.port)
        cookie = decode_message(self.port.sent[-1]).get(PayloadType.NOTIFY)
        self.assertEqual(cookie.notify_type, NotifyType.COOKIE)
        self.responder.receive(with_cookie(request, cookie.data), PEER, self.port)
        self.assertEqual(len(self.responder.sas), 4)
        self.assertIsNotNone(decode_message(self.port.sent[-1]).get(PayloadType.KE))

    def test_an_ipv6_slash_64_is_one_source(self):
        self.responder.limits = Limits(half_open_per_source=2)
        for n in range(4):
            peer = Endpoint(f"2001:db8:1:2::{n + 1}", 500)
            self.responder.receive(sa_init(), peer, self.port)
        self.assertEqual(len(self.responder.sas), 2)
        self.responder.receive(sa_init(), Endpoint("2001:db8:1:3::1", 500), self.port)
        self.assertEqual(len(self.responder.sas), 3)

    def test_new_sas_a_second_per_source(self):
        """A source that deletes its SAs at once frees its half-open slots, but still
        makes at most init_rate_per_source new SAs a second (bursts of three seconds)."""
        self.responder.limits = Limits(half_open_per_source=1000, init_rate_per_source=2)
        for _ in range(10):
            self.responder.receive(sa_init(), PEER, self.port)
        self.assertEqual(len(self.responder.sas), 6)
        self.clock.advance(1)
        for _ in range(5):
            self.responder.receive(sa_init(), PEER, self.port)
        self.assertEqual(len(self.responder.sas), 8)
        self.responder.receive(sa_init(), Endpoint("192.0.2.9", 500), self.port)
        self.assertEqual(len(self.responder.sas), 9)

    def test_global_half_open_limit(self):
        self.responder.limits = Limits(half_open=4, half_open_per_source=100)
        for n in range(6):
            self.responder.receive(sa_init(), Endpoint(f"192.0.2.{10 + n}", 500), self.port)
        self.assertEqual(self.responder.half_open, 4)

    def test_expiry_of_many_half_open_sas_leaves_nothing(self):
        self.responder.limits = Limits(100_000, 100_000, 100_000, init_rate_per_source=100_000)
        request = sa_init()
        for n in range(2000):
            header = replace(decode_message(request).header, spi_i=n.to_bytes(8, "big"))
            self.responder.receive(
                encode_message(header, list(decode_message(request).payloads)),
                PEER,
                self.port,
            )
        self.assertEqual(self.responder.half_open, 2000)
        self.clock.advance(HALF_OPEN_TIMEOUT + 1)
        self.assertEqual(self.responder.sas, {})
        self.assertEqual(self.responder._by_initiator, {})
        self.assertEqual(self.responder._timers, {})
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cookie_of_the_previous_secret_accepted_older_refused(self):
        """§2.6: the cookie secret changes; cookies of the one before still count."""
        self.responder.limits = Limits(cookie_threshold=0)
        request = sa_init()
        self.responder.receive(request, PEER, self.port)
        cookie = decode_message(self.port.sent[-1]).get(PayloadType.NOTIFY).data
        self.clock.advance(COOKIE_SECRET_LIFETIME)
        self.responder.receive(with_cookie(request, cookie), PEER, self.port)
        self.assertEqual(len(self.responder.sas), 1)
        request = sa_init()
        self.responder.receive(request, PEER, self.port)
        cookie = decode_message(self.port.sent[-1]).get(PayloadType.NOTIFY).data
        self.clock.advance(2 * COOKIE_SECRET_LIFETIME)  # the first SA expires meanwhile
        self.responder.receive(with_cookie(request, cookie), PEER, self.port)
        self.assertEqual(self.responder.sas, {})
        fresh = decode_message(self.port.sent[-1]).get(PayloadType.NOTIFY)
        self.assertEqual(fresh.notify_type, NotifyType.COOKIE)
        self.assertNotEqual(fresh.data, cookie)

    def test_expensive_groups_are_shed_under_load(self):
        """Above the cookie threshold a KE of MODP4096 is answered with INVALID_KE_PAYLOAD
        naming a cheaper group the client offered; only MODP4096 is NO_PROPOSAL_CHOSEN."""
        self.responder.limits = Limits(cookie_threshold=0)
        for groups, expected in (
            ((DhGroup.MODP4096, DhGroup.ECP256), NotifyType.INVALID_KE_PAYLOAD),
            ((DhGroup.MODP4096,), NotifyType.NO_PROPOSAL_CHOSEN),
        ):
            request = offering(groups, DhGroup.MODP4096)
            self.responder.receive(request, PEER, self.port)
            cookie = decode_message(self.port.sent[-1]).get(PayloadType.NOTIFY).data
            self.responder.receive(with_cookie(request, cookie), PEER, self.port)
            notify = decode_message(self.port.sent[-1]).get(PayloadType.NOTIFY)
            self.assertEqual(notify.notify_type, expected)
            if expected == NotifyType.INVALID_KE_PAYLOAD:
                self.assertEqual(int.from_bytes(notify.data, "big"), DhGroup.ECP256)
        self.assertEqual(self.responder.sas, {})
        # below the threshold the same offer is served as asked
        self.responder.limits = Limits()
        self.responder.receive(offering((DhGroup.MODP4096,), DhGroup.MODP4096), PEER, self.port)
        self.assertEqual(decode_message(self.port.sent[-1]).get(PayloadType.KE).group, 16)

    def test_source_without_a_route_back_is_dropped(self):
        """Listening on a wildcard address, the local address comes from the routing
        table; a source it cannot reach (here the broadcast address) is dropped."""
        responder = Responder(context(), NullInstaller(), self.clock, "0.0.0.0")
        responder.receive(sa_init(), Endpoint("255.255.255.255", 500), self.port)
        self.assertEqual((self.port.sent, responder.sas), ([], {}))
