"""Proposal selection (RFC 7296 §2.7, §3.3)."""

from twisted.trial import unittest

from vpnaaa.ike.const import DhGroup, EncrId, Esn, IntegId, PrfId, ProtocolId, TransformType
from vpnaaa.ike.message import Proposal, Transform
from vpnaaa.ike.proposal import (
    DEFAULT_ESP,
    DEFAULT_IKE,
    Policy,
    PolicyError,
    accepted,
    select,
)

E, P, I, D = TransformType.ENCR, TransformType.PRF, TransformType.INTEG, TransformType.DH  # noqa: E741
IKE = Policy.from_names(ProtocolId.IKE, DEFAULT_IKE)
ESP = Policy.from_names(ProtocolId.ESP, DEFAULT_ESP)


def ike(number, *transforms):
    return Proposal(number, ProtocolId.IKE, b"", tuple(transforms))


def esp(number, *transforms):
    return Proposal(number, ProtocolId.ESP, b"\x01\x02\x03\x04", tuple(transforms))


WINDOWS10 = ike(
    1,
    Transform(E, EncrId.AES_CBC, 256),
    Transform(I, IntegId.HMAC_SHA1_96),
    Transform(P, PrfId.HMAC_SHA1),
    Transform(D, DhGroup.MODP1024),
)
WINDOWS7 = ike(
    1,
    Transform(E, EncrId.DES3),
    Transform(I, IntegId.HMAC_SHA1_96),
    Transform(P, PrfId.HMAC_SHA1),
    Transform(D, DhGroup.MODP1024),
)


class SelectTests(unittest.TestCase):
    def test_windows10_default_offer_is_accepted(self):
        choice = select([WINDOWS10], IKE, DhGroup.MODP1024)
        self.assertEqual(
            (choice.encr.name, choice.integ.name, choice.prf.name, choice.dh.name),
            ("aes256", "sha1", "prfsha1", "modp1024"),
        )

    def test_3des_only_with_the_legacy_option(self):
        self.assertIsNone(select([WINDOWS7], IKE, DhGroup.MODP1024))
        legacy = Policy.from_names(ProtocolId.IKE, (*DEFAULT_IKE, "3des"))
        self.assertEqual(select([WINDOWS7], legacy, DhGroup.MODP1024).encr.name, "3des")

    def test_our_preference_within_a_proposal_and_the_ke_group_wins(self):
        offer = ike(
            1,
            Transform(E, EncrId.AES_CBC, 128),
            Transform(E, EncrId.AES_CBC, 256),
            Transform(I, IntegId.HMAC_SHA1_96),
            Transform(I, IntegId.HMAC_SHA2_256_128),
            Transform(P, PrfId.HMAC_SHA2_256),
            Transform(D, DhGroup.MODP2048),
            Transform(D, DhGroup.ECP256),
        )
        choice = select([offer], IKE, DhGroup.MODP2048)
        self.assertEqual(
            (choice.encr.name, choice.integ.name, choice.dh.name), ("aes256", "sha256", "modp2048")
        )
        self.assertEqual(select([offer], IKE, None).dh.name, "ecp256")

    def test_first_acceptable_proposal_of_the_initiator(self):
        bad = ike(
            1,
            Transform(E, EncrId.AES_CTR, 128),
            Transform(I, IntegId.HMAC_SHA1_96),
            Transform(P, PrfId.HMAC_SHA1),
            Transform(D, DhGroup.MODP2048),
        )
        choice = select([bad, WINDOWS10], IKE, DhGroup.MODP1024)
        self.assertEqual(choice.proposal.number, 1)
        self.assertEqual(accepted(choice, b"").number, 1)

    def test_aead_needs_no_integrity(self):
        gcm = esp(1, Transform(E, EncrId.AES_GCM_16, 256), Transform(TransformType.ESN, Esn.NO))
        choice = select([gcm], ESP)
        self.assertTrue(choice.aead)
        self.assertIsNone(choice.integ)
        self.assertEqual(
            [t.type for t in accepted(choice, b"\x00" * 4).transforms], [E, TransformType.ESN]
        )

    def test_cbc_without_integrity_is_refused(self):
        self.assertIsNone(select([esp(1, Transform(E, EncrId.AES_CBC, 256))], ESP))

    def test_esp_dh_is_ignored_without_ke_and_required_with_it(self):
        offer = esp(
            1,
            Transform(E, EncrId.AES_CBC, 128),
            Transform(I, IntegId.HMAC_SHA1_96),
            Transform(D, DhGroup.MODP2048),
            Transform(TransformType.ESN, Esn.NO),
        )
        self.assertIsNone(select([offer], ESP).dh)
        pfs = Policy.from_names(ProtocolId.ESP, (*DEFAULT_ESP, "modp2048"))
        self.assertEqual(select([offer], pfs, DhGroup.MODP2048).dh.name, "modp2048")
        self.assertIsNone(select([offer], ESP, DhGroup.MODP2048))

    def test_unknown_transform_attribute_makes_it_unacceptable(self):
        odd = Transform(E, EncrId.AES_CBC, 256, ((0x8001, b"\x00\x01"),))
        offer = ike(
            1,
            odd,
            Transform(I, IntegId.HMAC_SHA1_96),
            Transform(P, PrfId.HMAC_SHA1),
            Transform(D, DhGroup.MODP1024),
        )
        self.assertIsNone(select([offer], IKE, DhGroup.MODP1024))

    def test_wrong_protocol(self):
        self.assertIsNone(select([WINDOWS10], ESP))

    def test_unknown_names(self):
        self.assertRaises(PolicyError, Policy.from_names, ProtocolId.IKE, ["aes512"])
