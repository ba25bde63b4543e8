"""The responder's edge behaviour without a peer: retransmissions (RFC 7296 §2.1), refused
IKE_SA_INIT requests keep no state (§2.6, §1.2), half-open SAs expire."""

import os

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
from vpnaaa.ike.protocol import HALF_OPEN_TIMEOUT, Responder
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
        self.responder.cookie_threshold = 0
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
