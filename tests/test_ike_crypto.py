"""IKEv2 transforms, key derivation and the SK payload against published vectors.

Sources: RFC 2202 (HMAC-MD5, HMAC-SHA1), RFC 4231 (HMAC-SHA2), RFC 4868 §2.7.2 (the
truncated HMAC-SHA2 authenticators), NIST SP 800-38A §F.2 (AES-CBC), NIST SP 800-67
§B.1 (3DES), McGrew & Viega's GCM test cases 4 and 16, RFC 8439 §2.8.2
(ChaCha20-Poly1305), RFC 5903 §8 (ECP groups), RFC 7748 §6.1 (X25519), RFC 3526 and
RFC 7296 Appendix B (the MODP primes, checked against their defining formula), and the
NIST CAVP IKEv2 KDF sample (SP 800-135) that libreswan's and NSS's test suites carry.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

from cryptography.hazmat.primitives.asymmetric import ec, x25519
from twisted.trial import unittest

from vpnaaa.ike import keys, sk, transforms
from vpnaaa.ike.const import DhGroup, EncrId, IntegId, PrfId


def h(text: str) -> bytes:
    """Hex as the documents print it, whitespace ignored."""
    return bytes.fromhex("".join(text.split()))


# --- PRFs ------------------------------------------------------------------------------

# RFC 2202 §2 and §3: (key, data, HMAC-MD5, HMAC-SHA1); the SHA1 cases use 20-octet keys
# where the MD5 ones use 16 (test cases 1, 3 and 5).
RFC2202 = (
    (b"\x0b" * 16, b"\x0b" * 20, b"Hi There", "9294727a3638bb1c13f48ef8158bfc9d",
     "b617318655057264e28bc0b6fb378c8ef146be00"),
    (b"Jefe", b"Jefe", b"what do ya want for nothing?", "750c783e6ab0b503eaa86e310a5db738",
     "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"),
    (b"\xaa" * 16, b"\xaa" * 20, b"\xdd" * 50, "56be34521d144c88dbb8c733f0e8b3f6",
     "125d7342b9ac11cd91a39af48aa17b4f63f175d3"),
    (bytes(range(1, 26)), bytes(range(1, 26)), b"\xcd" * 50,
     "697eaf0aca3a3aea3a75164746ffaa79", "4c9007f4026250c6bc8414f9bf50c86c2d7235da"),
    (b"\xaa" * 80, b"\xaa" * 80, b"Test Using Larger Than Block-Size Key - Hash Key First",
     "6b1ab7fe4bd7bf8f0b62e6ce61b9d0cd", "aa4ae5e15272d00e95705637ce8a3b55ed402112"),
)  # fmt: skip

# RFC 4231 §4.2, §4.3 and §4.7 (test cases 1, 2 and 6): (key, data, SHA-256, -384, -512).
RFC4231 = (
    (b"\x0b" * 20, b"Hi There",
     "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
     "afd03944d84895626b0825f4ab46907f15f9dadbe4101ec682aa034c7cebc59c"
     "faea9ea9076ede7f4af152e8b2fa9cb6",
     "87aa7cdea5ef619d4ff0b4241a1d6cb02379f4e2ce4ec2787ad0b30545e17cde"
     "daa833b7d6b8a702038b274eaea3f4e4be9d914eeb61f1702e696c203a126854"),
    (b"Jefe", b"what do ya want for nothing?",
     "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
     "af45d2e376484031617f78d2b58a6b1b9c7ef464f5a01b47e42ec3736322445e"
     "8e2240ca5e69e2c78b3239ecfab21649",
     "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea250554"
     "9758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737"),
    (b"\xaa" * 131, b"Test Using Larger Than Block-Size Key - Hash Key First",
     "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
     "4ece084485813e9088d2c63a041bc5b44f9ef1012a2b588f3cd11f05033ac4c6"
     "0c2ef6ab4030fe8296248df163f44952",
     "80b24263c7c1a3ebb71493c1dd7be8b49b46d1f41b4aeec1121b013783f8f352"
     "6b56d037e05f2598bd0fd2215d6a1e5295e64f73f63f0aec8b915a985d786598"),
)  # fmt: skip


class PrfTests(unittest.TestCase):
    def test_rfc2202(self):
        md5 = transforms.prf_for(PrfId.HMAC_MD5)
        sha1 = transforms.prf_for(PrfId.HMAC_SHA1)
        for md5_key, sha1_key, data, md5_mac, sha1_mac in RFC2202:
            self.assertEqual(md5(md5_key, data), h(md5_mac))
            self.assertEqual(sha1(sha1_key, data), h(sha1_mac))

    def test_rfc4231(self):
        prfs = [transforms.prf_for(p) for p in (5, 6, 7)]
        for key, data, *macs in RFC4231:
            for prf, mac in zip(prfs, macs, strict=True):
                self.assertEqual(prf(key, data), h(mac), prf.id.name)

    def test_sizes(self):
        sizes = {p: transforms.prf_for(p).size for p in transforms.IKE.prf}
        self.assertEqual(sizes, {1: 16, 2: 20, 5: 32, 6: 48, 7: 64})

    def test_prf_plus_structure(self):
        """T1 = prf(K, S | 0x01), Tn = prf(K, Tn-1 | S | n) (RFC 7296 §2.13)."""
        prf = transforms.prf_for(PrfId.HMAC_SHA2_256)
        key, seed = b"k" * 32, b"seed"
        t1 = hmac.digest(key, seed + b"\x01", hashlib.sha256)
        t2 = hmac.digest(key, t1 + seed + b"\x02", hashlib.sha256)
        t3 = hmac.digest(key, t2 + seed + b"\x03", hashlib.sha256)
        self.assertEqual(transforms.prf_plus(prf, key, seed, 70), (t1 + t2 + t3)[:70])
        self.assertEqual(transforms.prf_plus(prf, key, seed, 32), t1)

    def test_prf_plus_limit(self):
        prf = transforms.prf_for(PrfId.HMAC_SHA1)
        self.assertEqual(len(transforms.prf_plus(prf, b"k", b"s", 255 * 20)), 5100)
        self.assertRaises(ValueError, transforms.prf_plus, prf, b"k", b"s", 255 * 20 + 1)

    def test_unsupported(self):
        for prf_id in (PrfId.AES128_XCBC, 99):
            self.assertRaises(transforms.UnsupportedTransform, transforms.prf_for, prf_id)


# --- integrity -------------------------------------------------------------------------

# RFC 4868 §2.7.2: (ID, key, data, full HMAC); the ICV is its leftmost half.
RFC4868_AUTH = (
    (IntegId.HMAC_SHA2_256_128, b"\x0b" * 32, b"Hi There",
     "198a607eb44bfbc69903a0f1cf2bbdc5ba0aa3f3d9ae3c1c7a3b1696a0b68cf7"),
    (IntegId.HMAC_SHA2_256_128, b"Jefe" * 8, b"what do ya want for nothing?",
     "167f928588c5cc2eef8e3093caa0e87c9ff566a14794aa61648d81621a2a40c6"),
    (IntegId.HMAC_SHA2_384_192, b"\x0b" * 48, b"Hi There",
     "b6a8d5636f5c6a7224f9977dcf7ee6c7fb6d0c48cbdee9737a959796489bddbc"
     "4c5df61d5b3297b4fb68dab9f1b582c2"),
    (IntegId.HMAC_SHA2_512_256, b"\x0b" * 64, b"Hi There",
     "637edc6e01dce7e6742a99451aae82df23da3e92439e590e43e761b33e910fb8"
     "ac2878ebd5803f6f0b61dbce5e251ff8789a4722c1be65aea45fd464e89f8f5b"),
    (IntegId.HMAC_SHA2_512_256, b"Jefe" * 16, b"what do ya want for nothing?",
     "cb370917ae8a7ce28cfd1d8f4705d6141c173b2a9362c15df235dfb251b15454"
     "6aa334ae9fb9afc2184932d8695e397bfa0ffb93466cfcceaae38c833b7dba38"),
)  # fmt: skip

# RFC 2202 test case 5 ("Test With Truncation"): the 96-bit digests.
RFC2202_96 = (
    (IntegId.HMAC_MD5_96, b"\x0c" * 16, "56461ef2342edc00f9bab995"),
    (IntegId.HMAC_SHA1_96, b"\x0c" * 20, "4c1a03424b55e07fe7f27be1"),
)


class IntegrityTests(unittest.TestCase):
    def test_rfc4868(self):
        for integ_id, key, data, full in RFC4868_AUTH:
            integ = transforms.integrity_for(integ_id)
            self.assertEqual(integ.key_size, len(key))
            self.assertEqual(integ.compute(key, data), h(full)[: len(h(full)) // 2])
            self.assertTrue(integ.verify(key, data, h(full)[: integ.icv_size]))

    def test_rfc2202_truncation(self):
        for integ_id, key, icv in RFC2202_96:
            integ = transforms.integrity_for(integ_id)
            self.assertEqual(integ.compute(key, b"Test With Truncation"), h(icv))

    def test_verify_rejects(self):
        integ = transforms.integrity_for(IntegId.HMAC_SHA2_256_128)
        key, data = b"\x0b" * 32, b"Hi There"
        icv = integ.compute(key, data)
        self.assertFalse(integ.verify(key, data, icv[:-1] + bytes([icv[-1] ^ 1])))
        self.assertFalse(integ.verify(key, data + b"!", icv))
        self.assertFalse(integ.verify(key, data, icv[:-1]))

    def test_md5_96_is_esp_only(self):
        self.assertNotIn(IntegId.HMAC_MD5_96, transforms.IKE.integrity)
        self.assertIn(IntegId.HMAC_MD5_96, transforms.ESP.integrity)

    def test_unsupported(self):
        for integ_id in (IntegId.NONE, IntegId.AES_XCBC_96, 99):
            self.assertRaises(transforms.UnsupportedTransform, transforms.integrity_for, integ_id)


# --- ciphers ---------------------------------------------------------------------------

# NIST SP 800-38A §F.2.1, §F.2.3, §F.2.5 (CBC-AES128/192/256.Encrypt).
SP800_38A_IV = h("000102030405060708090a0b0c0d0e0f")
SP800_38A_PLAINTEXT = h(
    "6bc1bee22e409f96e93d7e117393172a ae2d8a571e03ac9c9eb76fac45af8e51"
    "30c81c46a35ce411e5fbc1191a0a52ef f69f2445df4f9b17ad2b417be66c3710"
)
SP800_38A = (
    (128, "2b7e151628aed2a6abf7158809cf4f3c",
     "7649abac8119b246cee98e9b12e9197d 5086cb9b507219ee95db113a917678b2"
     "73bed6b8e3c1743b7116e69e22229516 3ff1caa1681fac09120eca307586e1a7"),
    (192, "8e73b0f7da0e6452c810f32b809079e562f8ead2522c6b7b",
     "4f021db243bc633d7178183a9fa071e8 b4d9ada9ad7dedf4e5e738763f69145a"
     "571b242012fb7ae07fa9baac3df102e0 08b0e27988598881d920a9e64f5615cd"),
    (256, "603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4",
     "f58c4c04d6e5f1ba779eabfb5f7bfbd6 9cfc4e967edb808d679f777bc6702c7d"
     "39f23369a9d9bacfa530e26304231461 b2eb05e2c39be9fcda6c19078c6a9d1b"),
)  # fmt: skip

# NIST SP 800-67 Rev. 2 §B.1: three-key TDEA in ECB mode ("The qufck brown fox jump").
TDEA_KEY = h("0123456789ABCDEF 23456789ABCDEF01 456789ABCDEF0123")
TDEA_BLOCKS = (
    ("5468652071756663", "A826FD8CE53B855F"),
    ("6B2062726F776E20", "CCE21C8112256FE6"),
    ("666F78206A756D70", "68D5C05DD9B6B900"),
)

# McGrew & Viega, "The Galois/Counter Mode of Operation", test cases 4 and 16: the
# 12-octet IV cafebabefacedbaddecaf888 is the IKE/ESP nonce salt | IV.
GCM_SALT, GCM_IV = h("cafebabe"), h("facedbaddecaf888")
GCM_AAD = h("feedfacedeadbeeffeedfacedeadbeefabaddad2")
GCM_PLAINTEXT = h(
    "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
    "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39"
)
GCM = (
    (128, "feffe9928665731c6d6a8f9467308308",
     "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e"
     "21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091",
     "5bc94fbc3221a5db94fae95ae7121a47"),
    (256, "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
     "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
     "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662",
     "76fc6ece0f4e1768cddf8853bb2d551b"),
)  # fmt: skip

# RFC 8439 §2.8.2: the nonce is the 32-bit constant 07000000 | IV, which is RFC 7634's
# salt | IV layout.
CHACHA_KEY = h("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f")
CHACHA_SALT, CHACHA_IV = h("07000000"), h("4041424344454647")
CHACHA_AAD = h("50515253c0c1c2c3c4c5c6c7")
CHACHA_PLAINTEXT = (
    b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip "
    b"for the future, sunscreen would be it."
)
CHACHA_CIPHERTEXT = h(
    "d31a8d34648e60db7b86afbc53ef7ec2 a4aded51296e08fea9e2b5a736ee62d6"
    "3dbea45e8ca9671282fafb69da92728b 1a71de0a9e060b2905d6a5b67ecd3b36"
    "92ddbd7f2d778b8c9803aee328091b58 fab324e4fad675945585808b4831d7bc"
    "3ff4def08e4b7a9de576d26586cec64b 6116"
)
CHACHA_TAG = h("1ae10b594f09e26a7e902ecbd0600691")


class CipherTests(unittest.TestCase):
    def test_aes_cbc_sp800_38a(self):
        iv, plaintext = SP800_38A_IV, SP800_38A_PLAINTEXT
        for bits, key, ciphertext in SP800_38A:
            cipher = transforms.cipher_for(EncrId.AES_CBC, bits)
            self.assertEqual(
                (cipher.key_size, cipher.iv_size, cipher.block_size), (bits // 8, 16, 16)
            )
            self.assertEqual(cipher.encrypt(h(key), iv, plaintext), h(ciphertext))
            self.assertEqual(cipher.decrypt(h(key), iv, h(ciphertext)), plaintext)

    def test_3des_sp800_67(self):
        """A one-block CBC encryption under a zero IV is the ECB encryption of the block."""
        cipher = transforms.cipher_for(EncrId.DES3, None)
        self.assertEqual((cipher.key_size, cipher.iv_size, cipher.block_size), (24, 8, 8))
        for plaintext, ciphertext in TDEA_BLOCKS:
            self.assertEqual(cipher.encrypt(TDEA_KEY, bytes(8), h(plaintext)), h(ciphertext))
            self.assertEqual(cipher.decrypt(TDEA_KEY, bytes(8), h(ciphertext)), h(plaintext))

    def test_aes_gcm(self):
        for bits, key, ciphertext, tag in GCM:
            cipher = transforms.cipher_for(EncrId.AES_GCM_16, bits)
            keymat = h(key) + GCM_SALT
            self.assertEqual(cipher.key_size, len(keymat))
            sealed = cipher.encrypt(keymat, GCM_IV, GCM_PLAINTEXT, GCM_AAD)
            self.assertEqual(sealed, h(ciphertext) + h(tag))
            self.assertEqual(cipher.decrypt(keymat, GCM_IV, sealed, GCM_AAD), GCM_PLAINTEXT)
            with self.assertRaises(transforms.AuthenticationFailed):
                cipher.decrypt(keymat, GCM_IV, sealed, GCM_AAD[:-1])

    def test_chacha20_poly1305_rfc8439(self):
        cipher = transforms.cipher_for(EncrId.CHACHA20_POLY1305, None)
        keymat = CHACHA_KEY + CHACHA_SALT
        self.assertEqual((cipher.key_size, cipher.iv_size, cipher.icv_size), (36, 8, 16))
        sealed = cipher.encrypt(keymat, CHACHA_IV, CHACHA_PLAINTEXT, CHACHA_AAD)
        self.assertEqual(sealed, CHACHA_CIPHERTEXT + CHACHA_TAG)
        self.assertEqual(cipher.decrypt(keymat, CHACHA_IV, sealed, CHACHA_AAD), CHACHA_PLAINTEXT)
        broken = sealed[:-1] + bytes([sealed[-1] ^ 0x80])
        with self.assertRaises(transforms.AuthenticationFailed):
            cipher.decrypt(keymat, CHACHA_IV, broken, CHACHA_AAD)

    def test_key_length_attribute(self):
        """AES needs the attribute, fixed-key ciphers must come without it."""
        for encr, bits in (
            (EncrId.AES_CBC, None),
            (EncrId.AES_CBC, 512),
            (EncrId.AES_GCM_16, 192),
            (EncrId.DES3, 192),
            (EncrId.CHACHA20_POLY1305, 256),
            (EncrId.AES_GCM_8, 128),
            (EncrId.NULL, None),
            (999, None),
        ):
            self.assertRaises(transforms.UnsupportedTransform, transforms.cipher_for, encr, bits)

    def test_supported_table_resolves(self):
        for table in (transforms.IKE, transforms.ESP):
            for encr, bits in table.encryption:
                self.assertEqual(transforms.cipher_for(encr, bits).id, encr)
            for integ in table.integrity:
                transforms.integrity_for(integ)
            for group in table.dh:
                transforms.group_for(group)
        for prf in transforms.IKE.prf:
            transforms.prf_for(prf)


# --- Diffie-Hellman --------------------------------------------------------------------


def _pi_times_power_of_two(bits: int) -> int:
    """floor(pi * 2^bits), by Machin's formula pi = 16 atan(1/5) - 4 atan(1/239)."""
    guard = 64
    one = 1 << (bits + guard)

    def arctan_inverse(x: int) -> int:
        power = total = one // x
        k, sign = 1, -1
        while power:
            power //= x * x
            total += sign * (power // (2 * k + 1))
            k, sign = k + 1, -sign
        return total

    return (16 * arctan_inverse(5) - 4 * arctan_inverse(239)) >> guard


# RFC 2409 §6.2 and RFC 3526: p = 2^k - 2^(k-64) - 1 + 2^64 * ([2^(k-130) pi] + n).
MODP_DEFINITIONS = (
    (DhGroup.MODP1024, 1024, 129093),
    (DhGroup.MODP1536, 1536, 741804),
    (DhGroup.MODP2048, 2048, 124476),
    (DhGroup.MODP3072, 3072, 1690314),
    (DhGroup.MODP4096, 4096, 240904),
)

# RFC 5903 §8.1-8.3: (group, curve, i, g^i, r, g^r, g^ir x coordinate).
RFC5903 = (
    (DhGroup.ECP256, ec.SECP256R1,
     "C88F01F5 10D9AC3F 70A292DA A2316DE5 44E9AAB8 AFE84049 C62A9C57 862D1433",
     "DAD0B653 94221CF9 B051E1FE CA5787D0 98DFE637 FC90B9EF 945D0C37 72581180"
     "5271A046 1CDB8252 D61F1C45 6FA3E59A B1F45B33 ACCF5F58 389E0577 B8990BB3",
     "C6EF9C5D 78AE012A 011164AC B397CE20 88685D8F 06BF9BE0 B283AB46 476BEE53",
     "D12DFB52 89C8D4F8 1208B702 70398C34 2296970A 0BCCB74C 736FC755 4494BF63"
     "56FBF3CA 366CC23E 8157854C 13C58D6A AC23F046 ADA30F83 53E74F33 039872AB",
     "D6840F6B 42F6EDAF D13116E0 E1256520 2FEF8E9E CE7DCE03 812464D0 4B9442DE"),
    (DhGroup.ECP384, ec.SECP384R1,
     "099F3C70 34D4A2C6 99884D73 A375A67F 7624EF7C 6B3C0F16 0647B674 14DCE655"
     "E35B5380 41E649EE 3FAEF896 783AB194",
     "667842D7 D180AC2C DE6F74F3 7551F557 55C7645C 20EF73E3 1634FE72 B4C55EE6"
     "DE3AC808 ACB4BDB4 C88732AE E95F41AA 9482ED1F C0EEB9CA FC498462 5CCFC23F"
     "65032149 E0E144AD A0241815 35A0F38E EB9FCFF3 C2C947DA E69B4C63 4573A81C",
     "41CB0779 B4BDB85D 47846725 FBEC3C94 30FAB46C C8DC5060 855CC9BD A0AA2942"
     "E0308312 916B8ED2 960E4BD5 5A7448FC",
     "E558DBEF 53EECDE3 D3FCCFC1 AEA08A89 A987475D 12FD950D 83CFA417 32BC509D"
     "0D1AC43A 0336DEF9 6FDA41D0 774A3571 DCFBEC7A ACF31964 72169E83 8430367F"
     "66EEBE3C 6E70C416 DD5F0C68 759DD1FF F83FA401 42209DFF 5EAAD96D B9E6386C",
     "11187331 C279962D 93D60424 3FD592CB 9D0A926F 422E4718 7521287E 7156C5C4"
     "D6031355 69B9E9D0 9CF5D4A2 70F59746"),
    (DhGroup.ECP521, ec.SECP521R1,
     "0037ADE9 319A89F4 DABDB3EF 411AACCC A5123C61 ACAB57B5 393DCE47 608172A0"
     "95AA85A3 0FE1C295 2C6771D9 37BA9777 F5957B26 39BAB072 462F68C2 7A57382D"
     "4A52",
     "0015417E 84DBF28C 0AD3C278 713349DC 7DF153C8 97A1891B D98BAB43 57C9ECBE"
     "E1E3BF42 E00B8E38 0AEAE57C 2D107564 94188594 2AF5A7F4 601723C4 195D176C"
     "ED3E 017CAE20 B6641D2E EB695786 D8C94614 6239D099 E18E1D5A 514C739D"
     "7CB4A10A D8A78801 5AC405D7 799DC75E 7B7D5B6C F2261A6A 7F150743 8BF01BEB"
     "6CA3926F 9582",
     "0145BA99 A847AF43 793FDD0E 872E7CDF A16BE30F DC780F97 BCCC3F07 8380201E"
     "9C677D60 0B343757 A3BDBF2A 3163E4C2 F869CCA7 458AA4A4 EFFC311F 5CB15168"
     "5EB9",
     "00D0B397 5AC4B799 F5BEA16D 5E13E9AF 971D5E9B 984C9F39 728B5E57 39735A21"
     "9B97C356 436ADC6E 95BB0352 F6BE64A6 C2912D4E F2D0433C ED2B6171 640012D9"
     "460F 015C6822 6383956E 3BD066E7 97B623C2 7CE0EAC2 F551A10C 2C724D98"
     "52077B87 220B6536 C5C408A1 D2AEBB8E 86D678AE 49CB5709 1F473229 6579AB44"
     "FCD17F0F C56A",
     "01144C7D 79AE6956 BC8EDB8E 7C787C45 21CB086F A64407F9 7894E5E6 B2D79B04"
     "D1427E73 CA4BAA24 0A347868 59810C06 B3C715A3 A8CC3151 F2BEE417 996D19F3"
     "DDEA"),
)  # fmt: skip

# RFC 7748 §6.1.
X25519_A = h("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
X25519_A_PUBLIC = h("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
X25519_B = h("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
X25519_B_PUBLIC = h("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
X25519_SHARED = h("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")


class ModpTests(unittest.TestCase):
    def test_primes_match_their_definition(self):
        for group_id, bits, n in MODP_DEFINITIONS:
            group = transforms.group_for(group_id)
            expected = (
                2**bits - 2 ** (bits - 64) - 1 + 2**64 * (_pi_times_power_of_two(bits - 130) + n)
            )
            self.assertEqual(group.p, expected, group_id.name)
            self.assertEqual(group.public_size, bits // 8)

    def test_exchange(self):
        for group_id, bits, _ in MODP_DEFINITIONS:
            group = transforms.group_for(group_id)
            private_i, public_i = group.generate()
            private_r, public_r = group.generate()
            self.assertEqual(len(public_i), bits // 8)
            secret = group.shared_secret(private_i, public_r)
            self.assertEqual(secret, group.shared_secret(private_r, public_i))
            # g^ir is y_r^x_i mod p, zero-padded to the length of p (RFC 7296 §2.14)
            x_i = private_i if isinstance(private_i, int) else private_i.private_numbers().x
            expected = pow(int.from_bytes(public_r, "big"), x_i, group.p)
            self.assertEqual(secret, expected.to_bytes(bits // 8, "big"))

    def test_invalid_public_values(self):
        for group_id in (DhGroup.MODP1024, DhGroup.MODP2048):
            group = transforms.group_for(group_id)
            size = group.public_size
            private, public = group.generate()
            for value in (0, 1, group.p - 1, group.p, 2 ** (8 * size) - 1):
                with self.assertRaises(transforms.InvalidPublicValue):
                    group.shared_secret(private, value.to_bytes(size, "big"))
            for value in (public[1:], b"\x00" + public):
                with self.assertRaises(transforms.InvalidPublicValue):
                    group.shared_secret(private, value)


class EcpTests(unittest.TestCase):
    def test_rfc5903(self):
        for group_id, curve, i, gi, r, gr, gir in RFC5903:
            group = transforms.group_for(group_id)
            self.assertEqual(group.public_size, len(h(gi)))
            private_i = ec.derive_private_key(int.from_bytes(h(i), "big"), curve())
            private_r = ec.derive_private_key(int.from_bytes(h(r), "big"), curve())
            self.assertEqual(group.shared_secret(private_i, h(gr)), h(gir), group_id.name)
            self.assertEqual(group.shared_secret(private_r, h(gi)), h(gir), group_id.name)

    def test_generated_public_value_is_x_and_y(self):
        for group_id, curve, _i, gi, *_ in RFC5903:
            group = transforms.group_for(group_id)
            private, public = group.generate()
            self.assertEqual(len(public), len(h(gi)))
            numbers = private.public_key().public_numbers()
            size = len(public) // 2
            self.assertEqual(public[:size], numbers.x.to_bytes(size, "big"))
            self.assertEqual(public[size:], numbers.y.to_bytes(size, "big"))
            self.assertIsInstance(private.curve, curve)

    def test_invalid_points(self):
        group_id, curve, i, _gi, _r, gr, _gir = RFC5903[0]
        group = transforms.group_for(group_id)
        private = ec.derive_private_key(int.from_bytes(h(i), "big"), curve())
        off_curve = h(gr)[:-1] + bytes([h(gr)[-1] ^ 1])
        for value in (off_curve, bytes(64), h(gr)[:-1], b"\x04" + h(gr)):
            self.assertRaises(transforms.InvalidPublicValue, group.shared_secret, private, value)


class Curve25519Tests(unittest.TestCase):
    def test_rfc7748(self):
        group = transforms.group_for(DhGroup.CURVE25519)
        alice = x25519.X25519PrivateKey.from_private_bytes(X25519_A)
        bob = x25519.X25519PrivateKey.from_private_bytes(X25519_B)
        self.assertEqual(group.shared_secret(alice, X25519_B_PUBLIC), X25519_SHARED)
        self.assertEqual(group.shared_secret(bob, X25519_A_PUBLIC), X25519_SHARED)

    def test_generate(self):
        group = transforms.group_for(DhGroup.CURVE25519)
        private_i, public_i = group.generate()
        private_r, public_r = group.generate()
        self.assertEqual(len(public_i), 32)
        self.assertEqual(
            group.shared_secret(private_i, public_r), group.shared_secret(private_r, public_i)
        )

    def test_low_order_and_malformed(self):
        group = transforms.group_for(DhGroup.CURVE25519)
        private, _ = group.generate()
        for value in (bytes(32), b"\x01" + bytes(31), bytes(31), bytes(33)):
            self.assertRaises(transforms.InvalidPublicValue, group.shared_secret, private, value)

    def test_unsupported_groups(self):
        for group_id in (DhGroup.MODP768, DhGroup.MODP8192, DhGroup.CURVE448, 0, 1000):
            self.assertRaises(transforms.UnsupportedTransform, transforms.group_for, group_id)


# --- key derivation --------------------------------------------------------------------

# NIST CAVP IKEv2 KDF (SP 800-135) sample with HMAC-SHA1, as libreswan's and NSS's test
# suites carry it; DKM(Child SA) and DKM(Child SA D-H) as libreswan's CAVP tool prints
# them for the same inputs.
CAVP_NI, CAVP_NR = h("32b50d5f4a3763f3"), h("9206a04b26564cb1")
CAVP_GIR = h("4b2c1f971981a8ad8d0abeafabf38cf75fc8349c148142465ed9c8b516b8be52")
CAVP_GIR_NEW = h("863f3c9d06efd39d2b907b97f8699e5dd5251ef64a2a176f36ee40c87d4f9330")
CAVP_SPII, CAVP_SPIR = h("34c9e7c188868785"), h("3ff77d760d2b2199")
CAVP_SKEYSEED = h("a9a7b222b59f8f48645f28a1db5b5f5d7479cba7")
CAVP_DKM = h(
    "a14293677cc80ff8f9cc0eee30d895da9d8f405666e30ef0dfcb63c634a46002"
    "a2a63080e514a062768b76606f9fa5e992204fc5a670bde3f10d6b027113936a"
    "5c55b648a194ae587b0088d52204b702c979fa280870d2ed41efa9c549fd1119"
    "8af1670b143d384bd275c5f594cf266b05ebadca855e4249520a441a81157435"
    "a7a56cc4"
)
CAVP_DKM_CHILD = h(
    "8059e3ee8810e6c3a91bc8bcd2a7a41151b8d0e6ae239c7b38093ad85ef4c581"
    "1a8e7b5d1cdabd9560b2d5e092d1f24e2d4b85eccdf0ad0dc9abd94b51ee7181"
    "4ca6dbc8bb51b6309f5b9545c7eb35cf5580b1e521a8fe20754a2d883ba0c2cf"
    "285f524aea6545b33106bc03e614296d319d41d4b50b3f510b1c0a22f3e66499"
    "4d234cb4"
)
CAVP_DKM_CHILD_DH = h(
    "bb43244c1860ad65ee1e211ffe8bb3661750c8f89cb9f547df7f4fa61d373016"
    "28190e38c66232eab4b3ab14c400a5197dd3730ed4820a8a10394d51e1c04000"
    "52f63ebd36b0e7ef53aaed31eba4a5080d7d4b5666023a8bbb5ffb7857240f9a"
    "05884d1b7d2f933708450b7b3288f1fc863ab49fa901227cffc06e27899c7054"
    "d56fd74c"
)
CAVP_SKEYSEED_REKEY = h("63e81194946ebd05df7df5ebf5d8750056bf1f1d")

SHA1 = transforms.prf_for(PrfId.HMAC_SHA1)
AES128_CBC = transforms.cipher_for(EncrId.AES_CBC, 128)
SHA1_96 = transforms.integrity_for(IntegId.HMAC_SHA1_96)


def _cavp_ike_keys() -> keys.IkeKeys:
    seed = keys.skeyseed(SHA1, CAVP_NI, CAVP_NR, CAVP_GIR)
    return keys.ike_keys(SHA1, AES128_CBC, SHA1_96, seed, CAVP_NI, CAVP_NR, CAVP_SPII, CAVP_SPIR)


class KeyDerivationTests(unittest.TestCase):
    def test_cavp_skeyseed(self):
        self.assertEqual(keys.skeyseed(SHA1, CAVP_NI, CAVP_NR, CAVP_GIR), CAVP_SKEYSEED)

    def test_cavp_ike_sa_keys(self):
        """AES-CBC-128 with HMAC-SHA1-96 and PRF-HMAC-SHA1 take exactly the 132 octets."""
        k = _cavp_ike_keys()
        sizes = [len(x) for x in (k.sk_d, k.sk_ai, k.sk_ar, k.sk_ei, k.sk_er, k.sk_pi, k.sk_pr)]
        self.assertEqual(sizes, [20, 20, 20, 16, 16, 20, 20])
        joined = k.sk_d + k.sk_ai + k.sk_ar + k.sk_ei + k.sk_er + k.sk_pi + k.sk_pr
        self.assertEqual(joined, CAVP_DKM)

    def test_cavp_rekeyed_skeyseed(self):
        seed = keys.rekeyed_skeyseed(SHA1, CAVP_DKM[:20], CAVP_GIR_NEW, CAVP_NI, CAVP_NR)
        self.assertEqual(seed, CAVP_SKEYSEED_REKEY)

    def test_cavp_child_keys(self):
        sk_d = _cavp_ike_keys().sk_d
        for shared, dkm in ((b"", CAVP_DKM_CHILD), (CAVP_GIR_NEW, CAVP_DKM_CHILD_DH)):
            child = keys.child_keys(SHA1, sk_d, AES128_CBC, SHA1_96, CAVP_NI, CAVP_NR, shared)
            # encr_i | integ_i | encr_r | integ_r (RFC 7296 §2.17)
            self.assertEqual(child.encr_i, dkm[0:16])
            self.assertEqual(child.integ_i, dkm[16:36])
            self.assertEqual(child.encr_r, dkm[36:52])
            self.assertEqual(child.integ_r, dkm[52:72])

    def test_aead_key_sizes(self):
        """SK_a* are empty and SK_e* carry the salt (RFC 5282 §7.1), KEYMAT likewise."""
        prf = transforms.prf_for(PrfId.HMAC_SHA2_256)
        gcm = transforms.cipher_for(EncrId.AES_GCM_16, 256)
        seed, ni, nr, spi_i, spi_r = b"s" * 32, b"n" * 32, b"m" * 32, b"i" * 8, b"r" * 8
        k = keys.ike_keys(prf, gcm, None, seed, ni, nr, spi_i, spi_r)
        self.assertEqual((len(k.sk_ai), len(k.sk_ar)), (0, 0))
        self.assertEqual((len(k.sk_ei), len(k.sk_er)), (36, 36))
        self.assertEqual((len(k.sk_d), len(k.sk_pi), len(k.sk_pr)), (32, 32, 32))
        material = transforms.prf_plus(prf, seed, ni + nr + spi_i + spi_r, 168)
        self.assertEqual(k.sk_d + k.sk_ei + k.sk_er + k.sk_pi + k.sk_pr, material)
        child = keys.child_keys(prf, k.sk_d, gcm, None, ni, nr)
        self.assertEqual((len(child.encr_i), len(child.integ_i)), (36, 0))
        self.assertEqual(child.encr_i + child.encr_r, transforms.prf_plus(prf, k.sk_d, ni + nr, 72))

    def test_keys_stay_out_of_repr(self):
        k = _cavp_ike_keys()
        self.assertNotIn(k.sk_d.hex(), repr(k))
        self.assertNotIn(repr(k.sk_d), repr(k))


class AuthTests(unittest.TestCase):
    """The AUTH computation (RFC 7296 §2.15, §2.16), written out with the standard library."""

    prf = transforms.prf_for(PrfId.HMAC_SHA2_256)

    def test_signed_octets(self):
        id_body = b"\x02\x00\x00\x00host"  # ID_FQDN, RESERVED, "host"
        octets = keys.signed_octets(self.prf, b"message-1", b"nonce-r", b"P" * 32, id_body)
        maced_id = hmac.digest(b"P" * 32, id_body, hashlib.sha256)
        self.assertEqual(octets, b"message-1" + b"nonce-r" + maced_id)

    def test_shared_key_auth(self):
        inner = hmac.digest(b"secret", b"Key Pad for IKEv2", hashlib.sha256)
        expected = hmac.digest(inner, b"octets", hashlib.sha256)
        self.assertEqual(keys.shared_key_auth(self.prf, b"secret", b"octets"), expected)

    def test_eap_auth_uses_msk_else_sk_p(self):
        msk = b"M" * 64
        with_msk = keys.eap_auth(self.prf, msk, b"P" * 32, b"octets")
        self.assertEqual(with_msk, keys.shared_key_auth(self.prf, msk, b"octets"))
        without = keys.eap_auth(self.prf, None, b"P" * 32, b"octets")
        self.assertEqual(without, keys.shared_key_auth(self.prf, b"P" * 32, b"octets"))


# --- the SK payload --------------------------------------------------------------------

SUITES = (
    ((EncrId.AES_CBC, 128), IntegId.HMAC_SHA1_96),
    ((EncrId.AES_CBC, 256), IntegId.HMAC_SHA2_256_128),
    ((EncrId.AES_CBC, 192), IntegId.HMAC_SHA2_384_192),
    ((EncrId.DES3, None), IntegId.HMAC_SHA2_512_256),
    ((EncrId.AES_GCM_16, 128), None),
    ((EncrId.AES_GCM_16, 256), None),
    ((EncrId.CHACHA20_POLY1305, None), None),
)


def _crypto(encr: tuple[EncrId, int | None], integ: IntegId | None) -> sk.SkCrypto:
    cipher = transforms.cipher_for(*encr)
    integrity = transforms.integrity_for(integ) if integ else None
    integ_key = bytes(range(integrity.key_size)) if integrity else b""
    return sk.SkCrypto(cipher, integrity, bytes(range(100, 100 + cipher.key_size)), integ_key)


def _prefix(crypto: sk.SkCrypto, plaintext_length: int, fragment: bytes = b"") -> bytes:
    """An IKE header and an SK (or, with fragment fields, SKF) payload header."""
    body = sk.sealed_length(plaintext_length, crypto)
    payload_type = 53 if fragment else 46
    header_length = 4 + len(fragment)
    total = 28 + header_length + body
    ike = b"I" * 8 + b"R" * 8 + struct.pack("!BBBBII", payload_type, 0x20, 35, 0x20, 1, total)
    return ike + struct.pack("!BBH", 41, 0, header_length + body) + fragment


class SkTests(unittest.TestCase):
    def test_roundtrip(self):
        for encr, integ in SUITES:
            crypto = _crypto(encr, integ)
            for length in (0, 1, 7, 8, 15, 16, 17, 100):
                plaintext = bytes(range(length))
                prefix = _prefix(crypto, length)
                body = sk.seal(prefix, plaintext, crypto)
                self.assertEqual(len(body), sk.sealed_length(length, crypto))
                self.assertEqual(sk.open(prefix, body, crypto), plaintext, (encr, length))

    def test_sealed_length(self):
        cbc = _crypto((EncrId.AES_CBC, 128), IntegId.HMAC_SHA2_256_128)
        # IV 16, payloads + padding + Pad Length to a multiple of 16, ICV 16
        self.assertEqual([sk.sealed_length(n, cbc) for n in (0, 15, 16, 31)], [48, 48, 64, 64])
        gcm = _crypto((EncrId.AES_GCM_16, 256), None)
        # IV 8, payloads and a zero Pad Length octet, ICV 16
        self.assertEqual([sk.sealed_length(n, gcm) for n in (0, 15, 16)], [25, 40, 41])

    def test_cbc_layout(self):
        """IV | CBC(payloads | padding | Pad Length) | HMAC over header..ciphertext."""
        crypto = _crypto((EncrId.AES_CBC, 128), IntegId.HMAC_SHA2_256_128)
        iv = b"\x11" * 16
        plaintext = b"payloads"
        prefix = _prefix(crypto, len(plaintext))
        body = sk.seal(prefix, plaintext, crypto, iv=iv)
        inner = plaintext + bytes(7) + b"\x07"
        encrypted = crypto.cipher.encrypt(crypto.encr_key, iv, inner)
        icv = hmac.digest(crypto.integ_key, prefix + iv + encrypted, hashlib.sha256)[:16]
        self.assertEqual(body, iv + encrypted + icv)

    def test_aead_layout(self):
        """IV | AEAD(payloads | Pad Length 0) with the header..SK header as AAD (RFC 5282)."""
        crypto = _crypto((EncrId.AES_GCM_16, 128), None)
        iv = b"\x22" * 8
        plaintext = b"payloads"
        prefix = _prefix(crypto, len(plaintext))
        body = sk.seal(prefix, plaintext, crypto, iv=iv)
        cipher = crypto.cipher
        expected = cipher.encrypt(crypto.encr_key, iv, plaintext + b"\x00", prefix)
        self.assertEqual(body, iv + expected)

    def test_tampering_is_detected(self):
        for encr, integ in SUITES:
            crypto = _crypto(encr, integ)
            prefix = _prefix(crypto, 20)
            body = sk.seal(prefix, b"x" * 20, crypto)
            for position in (0, len(body) // 2, len(body) - 1):
                broken = bytearray(body)
                broken[position] ^= 1
                self.assertRaises(sk.IntegrityCheckFailed, sk.open, prefix, bytes(broken), crypto)
            changed = prefix[:-5] + bytes([prefix[-5] ^ 1]) + prefix[-4:]
            self.assertRaises(sk.IntegrityCheckFailed, sk.open, changed, body, crypto)

    def test_fragment_fields_are_covered(self):
        """For SKF the Fragment Number and Total Fragments are part of the prefix."""
        for encr, integ in SUITES:
            crypto = _crypto(encr, integ)
            prefix = _prefix(crypto, 10, fragment=struct.pack("!HH", 1, 3))
            body = sk.seal(prefix, b"fragment 1", crypto)
            self.assertEqual(sk.open(prefix, body, crypto), b"fragment 1")
            other = _prefix(crypto, 10, fragment=struct.pack("!HH", 2, 3))
            self.assertRaises(sk.IntegrityCheckFailed, sk.open, other, body, crypto)

    def test_malformed_lengths(self):
        cbc = _crypto((EncrId.AES_CBC, 128), IntegId.HMAC_SHA2_256_128)
        prefix = _prefix(cbc, 0)
        body = sk.seal(prefix, b"", cbc)
        for broken in (body[:-17], body[:32], body[:16] + body[17:]):
            self.assertRaises(sk.MalformedSk, sk.open, prefix, broken, cbc)
        gcm = _crypto((EncrId.AES_GCM_16, 128), None)
        self.assertRaises(sk.MalformedSk, sk.open, prefix, bytes(24), gcm)

    def test_pad_length_must_fit(self):
        """A Pad Length beyond the decrypted data, under a valid ICV, is malformed."""
        crypto = _crypto((EncrId.AES_CBC, 128), IntegId.HMAC_SHA2_256_128)
        prefix = _prefix(crypto, 15)
        iv = bytes(16)
        encrypted = iv + crypto.cipher.encrypt(crypto.encr_key, iv, bytes(15) + b"\x10")
        body = encrypted + crypto.integrity.compute(crypto.integ_key, prefix + encrypted)
        self.assertRaises(sk.MalformedSk, sk.open, prefix, body, crypto)
        gcm = _crypto((EncrId.AES_GCM_16, 128), None)
        prefix = _prefix(gcm, 0)
        body = iv[:8] + gcm.cipher.encrypt(gcm.encr_key, iv[:8], b"\x01", prefix)
        self.assertRaises(sk.MalformedSk, sk.open, prefix, body, gcm)

    def test_larger_padding_is_accepted(self):
        """A peer may pad beyond the minimum (RFC 7296 §3.14)."""
        crypto = _crypto((EncrId.AES_CBC, 128), IntegId.HMAC_SHA2_256_128)
        prefix = _prefix(crypto, 1)
        iv = bytes(16)
        inner = b"p" + bytes(30) + bytes([30])
        encrypted = iv + crypto.cipher.encrypt(crypto.encr_key, iv, inner)
        body = encrypted + crypto.integrity.compute(crypto.integ_key, prefix + encrypted)
        self.assertEqual(sk.open(prefix, body, crypto), b"p")

    def test_seal_checks_the_prefix_length(self):
        crypto = _crypto((EncrId.AES_GCM_16, 128), None)
        prefix = _prefix(crypto, 10)
        self.assertRaises(ValueError, sk.seal, prefix, b"eleven octs", crypto)
        self.assertRaises(ValueError, sk.seal, prefix, b"ten octets", crypto, iv=bytes(7))

    def test_crypto_checks_its_keys(self):
        cbc = transforms.cipher_for(EncrId.AES_CBC, 128)
        gcm = transforms.cipher_for(EncrId.AES_GCM_16, 128)
        sha = transforms.integrity_for(IntegId.HMAC_SHA2_256_128)
        self.assertRaises(ValueError, sk.SkCrypto, cbc, None, bytes(16))
        self.assertRaises(ValueError, sk.SkCrypto, gcm, sha, bytes(20), bytes(32))
        self.assertRaises(ValueError, sk.SkCrypto, gcm, None, bytes(16))
        self.assertRaises(ValueError, sk.SkCrypto, cbc, sha, bytes(16), bytes(16))

    def test_directions(self):
        k = _cavp_ike_keys()
        outbound, inbound = sk.directions(k, AES128_CBC, SHA1_96, initiator=False)
        self.assertEqual((outbound.encr_key, outbound.integ_key), (k.sk_er, k.sk_ar))
        self.assertEqual((inbound.encr_key, inbound.integ_key), (k.sk_ei, k.sk_ai))
        outbound, inbound = sk.directions(k, AES128_CBC, SHA1_96, initiator=True)
        self.assertEqual(outbound.encr_key, k.sk_ei)
        self.assertNotIn(k.sk_ei.hex(), repr(outbound))
