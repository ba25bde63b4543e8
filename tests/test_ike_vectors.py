"""IKE key derivation and the SK payload against a real strongSwan 5.9.8 exchange.

tests/interop/data/charon_ikev2_keys.json holds one charon-to-charon exchange
(AES-CBC-256, HMAC-SHA2-256-128, PRF-HMAC-SHA2-256, MODP2048; ESP AES-CBC-256/SHA2-256)
with the secrets charon logged (ike 4, chd 4) and every datagram: charon's values, not
vpnaaa's. vpnaaa's codec, key schedule and SK payload must reproduce and open them.
"""

import json
from pathlib import Path

from twisted.trial import unittest

from vpnaaa.ike import keys, sk, transforms
from vpnaaa.ike.const import EncrId, IntegId, PayloadType, PrfId
from vpnaaa.ike.message import Encrypted, EncryptedFragment, decode_message, decode_payloads

VECTORS = json.loads(
    (Path(__file__).parent / "interop" / "data" / "charon_ikev2_keys.json").read_text()
)
IKE = {name: bytes.fromhex(value) for name, value in VECTORS["ike"].items()}
CHILD = VECTORS["child"]
PRF = transforms.prf_for(PrfId.HMAC_SHA2_256)
CIPHER = transforms.cipher_for(EncrId.AES_CBC, 256)
INTEGRITY = transforms.integrity_for(IntegId.HMAC_SHA2_256_128)


def ike_keys() -> keys.IkeKeys:
    seed = keys.skeyseed(PRF, IKE["ni"], IKE["nr"], IKE["g_ir"])
    return keys.ike_keys(
        PRF, CIPHER, INTEGRITY, seed, IKE["ni"], IKE["nr"], IKE["spi_i"], IKE["spi_r"]
    )


class KeyScheduleTests(unittest.TestCase):
    def test_skeyseed(self):
        self.assertEqual(keys.skeyseed(PRF, IKE["ni"], IKE["nr"], IKE["g_ir"]), IKE["skeyseed"])

    def test_ike_sa_keys(self):
        derived = ike_keys()
        for name in ("sk_d", "sk_ai", "sk_ar", "sk_ei", "sk_er", "sk_pi", "sk_pr"):
            self.assertEqual(getattr(derived, name), IKE[name], name)

    def test_child_sa_keymat(self):
        child = keys.child_keys(PRF, IKE["sk_d"], CIPHER, INTEGRITY, IKE["ni"], IKE["nr"])
        for name in ("encr_i", "integ_i", "encr_r", "integ_r"):
            self.assertEqual(getattr(child, name).hex(), CHILD[name], name)


class MessageTests(unittest.TestCase):
    def test_ike_sa_init_nonces_and_spis(self):
        request, response = (bytes.fromhex(m["hex"]) for m in VECTORS["messages"][:2])
        request, response = decode_message(request), decode_message(response)
        self.assertEqual(request.get(PayloadType.NONCE).data, IKE["ni"])
        self.assertEqual(response.get(PayloadType.NONCE).data, IKE["nr"])
        self.assertEqual(response.get(PayloadType.KE).data, IKE["ke_r"])
        self.assertEqual(
            (response.header.spi_i, response.header.spi_r), (IKE["spi_i"], IKE["spi_r"])
        )

    def test_every_ike_auth_message_opens(self):
        outbound_r, inbound_r = sk.directions(ike_keys(), CIPHER, INTEGRITY, initiator=False)
        kinds = []
        for vector in VECTORS["messages"][2:]:
            raw = bytes.fromhex(vector["hex"])
            message = decode_message(raw)
            _, payload = message.payloads[-1]
            self.assertIsInstance(payload, Encrypted | EncryptedFragment)
            crypto = outbound_r if message.header.response else inbound_r
            plaintext = sk.open(raw[: len(raw) - len(payload.raw)], payload.raw, crypto)
            if isinstance(payload, Encrypted):
                kinds.append([k for k, _ in decode_payloads(payload.first_payload, plaintext)])
        self.assertIn(PayloadType.EAP, {k for chain in kinds for k in chain})
        self.assertIn(PayloadType.AUTH, {k for chain in kinds for k in chain})

    def test_a_flipped_bit_is_refused(self):
        _, inbound = sk.directions(ike_keys(), CIPHER, INTEGRITY, initiator=False)
        raw = bytearray(bytes.fromhex(VECTORS["messages"][2]["hex"]))
        raw[-30] ^= 1
        message = decode_message(bytes(raw))
        _, payload = message.payloads[-1]
        with self.assertRaises(sk.IntegrityCheckFailed):
            sk.open(bytes(raw[: len(raw) - len(payload.raw)]), payload.raw, inbound)


class AuthTests(unittest.TestCase):
    def test_eap_auth_values(self):
        """Both final AUTH payloads: prf(prf(MSK, "Key Pad for IKEv2"), octets) §2.16."""
        msk = bytes.fromhex(VECTORS["auth"]["msk"])
        values = [bytes.fromhex(v) for v in VECTORS["auth"]["eap_auth_values"]]
        octets = [bytes.fromhex(o) for o in VECTORS["auth"]["signed_octets"]]
        self.assertEqual({keys.shared_key_auth(PRF, msk, o) for o in octets}, set(values))
