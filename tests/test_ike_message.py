"""The IKEv2 codec and fragmentation bookkeeping.

Expected bytes are written by hand from the RFC 7296 §3 figures (field by field, in the
comments), or are messages captured from real implementations by other projects.
"""

import ipaddress

from twisted.trial import unittest

from vpnaaa.ike import fragments
from vpnaaa.ike import message as m
from vpnaaa.ike.const import (
    AuthMethod,
    CertEncoding,
    CfgAttribute,
    CfgType,
    DhGroup,
    EncrId,
    Esn,
    ExchangeType,
    HeaderFlag,
    IdType,
    IntegId,
    NotifyType,
    PayloadType,
    PrfId,
    ProtocolId,
    TransformType,
)


def hexbytes(text: str) -> bytes:
    return bytes.fromhex("".join(line.split("#")[0] for line in text.splitlines()))


# IKE_SA_INIT request: header, then an SA payload with two proposals (RFC 7296 §3.1, §3.3).
SA_INIT = hexbytes("""
    0102030405060708 0000000000000000   # SPIi, SPIr
    21 20 22 08 00000000 0000006c       # next SA, version 2.0, IKE_SA_INIT, I, id 0, 108
    00 00 0050                          # SA: last payload, not critical, length 80
    02 00 002c 01 01 00 04              #   proposal 1 (more follow), length 44, IKE, no SPI
    03 00 000c 01 00 000c 800e 0100     #     ENCR AES_CBC, Key Length (TV) 256
    03 00 0008 02 00 0005               #     PRF HMAC_SHA2_256
    03 00 0008 03 00 000c               #     INTEG HMAC_SHA2_256_128
    00 00 0008 04 00 000e               #     DH MODP2048 (last transform)
    00 00 0020 02 03 04 02 11223344     #   proposal 2 (last), length 32, ESP, SPI 4 octets
    03 00 000c 01 00 0014 800e 0080     #     ENCR AES_GCM_16, Key Length 128
    00 00 0008 05 00 0000               #     ESN NO
""")

# A chain of every plain payload, first type IDi (RFC 7296 §3.5-3.16).
CHAIN = hexbytes("""
    27 00 0013 02 000000 76706e2e6578616d706c65   # IDi: FQDN "vpn.example"
    2f 00 000c 02 000000 deadbeef                 # AUTH: Shared Key MIC
    2c 00 0018 01 000000                          # CP: CFG_REQUEST
       0001 0000 0003 0000                        #   INTERNAL_IP4_ADDRESS, INTERNAL_IP4_DNS
       0007 0004 77696e37                         #   APPLICATION_VERSION "win7"
    2d 00 0018 01 000000                          # TSi: one selector
       07 00 0010 0000 ffff 00000000 ffffffff     #   IPv4, any protocol, 0.0.0.0-255.255.255.255
    29 00 0040 02 000000                          # TSr: two selectors
       07 06 0010 01bb 01bb 0a000000 0a0000ff     #   IPv4 TCP 443, 10.0.0.0-10.0.0.255
       08 00 0028 0000 ffff                       #   IPv6, any protocol, ::-ffff:...:ffff
       00000000000000000000000000000000
       ffffffffffffffffffffffffffffffff
    2a 00 000c 03 04 4009 cafef00d                # N: ESP, SPI size 4, REKEY_SA
    2b 00 0010 03 04 0002 01020304 05060708       # D: ESP, SPI size 4, two SPIs
    25 00 000a 76656e646f72                       # V: "vendor"
    26 00 0007 04 3082                            # CERT: X.509 Signature
    30 00 0019 04 aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa   # CERTREQ: one CA key hash
    22 00 000c 0201000801626f62                   # EAP: Response/Identity "bob"
    28 00 000c 0013 0000 01020304                 # KE: group 19
    00 00 0014 00112233445566778899aabbccddeeff   # Ni: 16 octets
""")

# Android's IKE library test vector: an IKE_SA_INIT request (AES-CBC-128, HMAC-SHA1,
# MODP1024, NAT detection, a vendor ID). AOSP platform/packages/modules/IPsec,
# tests/iketests/src/java/com/android/ike/ikev2/message/IkeMessageTest.java (Apache-2.0).
ANDROID_SA_INIT = bytes.fromhex(
    "8f54bf6d8b48e6e10000000000000000212022080000000000000150"
    "220000300000002c010100040300000c0100000c800e008003000008030000020300000804000002"
    "00000008020000022800008800020000b4a2faf4bb54878ae21d638512ece55d9236fc5046ab6cef"
    "82220f421f3ce6361faf36564ecb6d28798a94aad7b2b4b603ddeaaa5630adb9ece8ac3753403604"
    "0610ebdd92f46bef84f0be7db860351843858f8acf87056e272377f70c9f2d81e29c7b0ce4f291a3"
    "a72476bb0b278fd4b7b0a4c26bbeb08214c707137607958729000024c39b7f368f4681b89fa9b7be"
    "6465abd7c5f68b6ed5d3b4c72cb4240eb5c464122900001c00004004e54f73b7d83f6beb881eab20"
    "51d8663f421d10b02b00001c00004005d915368ca036004cb578ae3e3fb268509aeab19000000020"
    "699369228741c6d4ca094c93e242c9de19e7b7c60000000500000500"
)

# A strongSwan responder's IKE_SA_INIT response, recorded by RUB-NDS
# IPsec-StateMachineExtractor, src/test/java/de/rub/nds/ipsec/statemachineextractor/ike/
# IKEv2HandshakeIT.java (Apache-2.0).
STRONGSWAN_SA_INIT_RESPONSE = bytes.fromhex(
    "a150f12f598f9a0e9fb14c9c853ad1b2212022200000000000000100220000300000002c01010004"
    "0300000c0100000c800e00800300000803000002030000080200000200000008040000022800008800"
    "020000c581b93b78222b7ed4b70cf36f0c1016d010695beedee8ceb55ead79380f20b3692ee6ca7ea3"
    "3a4a89b0976bed9b829f92a81d2d68a07992b52f2bf7f58968b3b064e9ba588259766db1dcf266f656"
    "3a81b364853d916ec3d22d4e9391ece402fb68b5cbd6aa8297cf747116a2bdcfb6029c9a1929280629"
    "25269bcd50d3d64f29000024f03a7ef00422adb77cecd38214ee50bb9cde6519639c3faa63d3345a1b"
    "82e1f10000000800004014"
)

NONCE_CHAIN = hexbytes("00 00 0014 00112233445566778899aabbccddeeff")  # Ni alone


def header(**fields):
    values = dict(
        spi_i=bytes(range(1, 9)),
        spi_r=bytes(8),
        exchange=ExchangeType.IKE_AUTH,
        flags=HeaderFlag.INITIATOR,
        message_id=1,
    )
    values.update(fields)
    return m.Header(**values)


class HandBuiltTests(unittest.TestCase):
    def test_header_and_sa(self):
        message = m.decode_message(SA_INIT)
        self.assertEqual(
            message.header,
            m.Header(bytes(range(1, 9)), bytes(8), 34, 0x08, 0, PayloadType.SA, 0x20, 108),
        )
        self.assertTrue(message.header.initiator)
        self.assertFalse(message.header.response)
        self.assertEqual((message.header.major_version, message.header.minor_version), (2, 0))
        ike = m.Proposal(
            1,
            ProtocolId.IKE,
            b"",
            (
                m.Transform(TransformType.ENCR, EncrId.AES_CBC, 256),
                m.Transform(TransformType.PRF, PrfId.HMAC_SHA2_256),
                m.Transform(TransformType.INTEG, IntegId.HMAC_SHA2_256_128),
                m.Transform(TransformType.DH, DhGroup.MODP2048),
            ),
        )
        esp = m.Proposal(
            2,
            ProtocolId.ESP,
            bytes.fromhex("11223344"),
            (
                m.Transform(TransformType.ENCR, EncrId.AES_GCM_16, 128),
                m.Transform(TransformType.ESN, Esn.NO),
            ),
        )
        self.assertEqual(message.payloads, [(PayloadType.SA, m.Sa((ike, esp)))])
        self.assertEqual(m.encode_message(message.header, message.payloads), SA_INIT)

    def test_every_payload_body(self):
        entries = m.decode_payloads(PayloadType.IDi, CHAIN)
        everything = ipaddress.ip_address("::"), ipaddress.ip_address("ffff:" * 7 + "ffff")
        expected = [
            (PayloadType.IDi, m.Identification(IdType.FQDN, b"vpn.example")),
            (PayloadType.AUTH, m.Authentication(AuthMethod.SHARED_KEY, bytes.fromhex("deadbeef"))),
            (
                PayloadType.CP,
                m.Configuration(
                    CfgType.REQUEST,
                    (
                        (CfgAttribute.INTERNAL_IP4_ADDRESS, b""),
                        (CfgAttribute.INTERNAL_IP4_DNS, b""),
                        (CfgAttribute.APPLICATION_VERSION, b"win7"),
                    ),
                ),
            ),
            (
                PayloadType.TSi,
                m.TrafficSelectors(
                    (
                        m.TrafficSelector(
                            ipaddress.ip_address("0.0.0.0"),
                            ipaddress.ip_address("255.255.255.255"),
                        ),
                    )
                ),
            ),
            (
                PayloadType.TSr,
                m.TrafficSelectors(
                    (
                        m.TrafficSelector(
                            ipaddress.ip_address("10.0.0.0"),
                            ipaddress.ip_address("10.0.0.255"),
                            6,
                            443,
                            443,
                        ),
                        m.TrafficSelector(*everything),
                    )
                ),
            ),
            (
                PayloadType.NOTIFY,
                m.Notify(NotifyType.REKEY_SA, b"", ProtocolId.ESP, bytes.fromhex("cafef00d")),
            ),
            (
                PayloadType.DELETE,
                m.Delete(ProtocolId.ESP, (bytes([1, 2, 3, 4]), bytes([5, 6, 7, 8]))),
            ),
            (PayloadType.VENDOR, m.VendorId(b"vendor")),
            (PayloadType.CERT, m.Certificate(CertEncoding.X509_SIGNATURE, b"\x30\x82")),
            (
                PayloadType.CERTREQ,
                m.CertificateRequest(CertEncoding.X509_SIGNATURE, b"\xaa" * 20),
            ),
            (PayloadType.EAP, m.Eap(bytes.fromhex("0201000801626f62"))),
            (PayloadType.KE, m.Ke(DhGroup.ECP256, bytes([1, 2, 3, 4]))),
            (PayloadType.NONCE, m.Nonce(bytes.fromhex("00112233445566778899aabbccddeeff"))),
        ]
        self.assertEqual(entries, expected)
        self.assertEqual(entries[3][1].selectors[0].ts_type, 7)
        self.assertEqual(entries[4][1].selectors[1].ts_type, 8)
        self.assertEqual(m.encode_payloads(expected), (PayloadType.IDi, CHAIN))

    def test_encrypted_payload_keeps_first_inner_type(self):
        data = hexbytes("""
            0102030405060708 1112131415161718   # SPIi, SPIr
            2e 20 23 08 00000001 00000030       # next SK, 2.0, IKE_AUTH, I, id 1, 48
            23 00 0014                          # SK: next = IDi (first inner), length 20
            000102030405060708090a0b0c0d0e0f    # IV | ciphertext | ICV as received
        """)
        message = m.decode_message(data)
        raw = bytes(range(16))
        self.assertEqual(message.payloads, [(PayloadType.SK, m.Encrypted(PayloadType.IDi, raw))])
        self.assertEqual(m.encode_message(message.header, message.payloads), data)

    def test_encrypted_fragment(self):
        first = hexbytes("23 00 0010 0001 0003 0001020304050607")  # SKF 1 of 3, next IDi
        other = hexbytes("00 00 0010 0002 0003 0001020304050607")  # SKF 2 of 3, next 0
        raw = bytes(range(8))
        self.assertEqual(
            m.decode_payloads(PayloadType.SKF, first),
            [(PayloadType.SKF, m.EncryptedFragment(1, 3, PayloadType.IDi, raw))],
        )
        self.assertEqual(
            m.decode_payloads(PayloadType.SKF, other),
            [(PayloadType.SKF, m.EncryptedFragment(2, 3, 0, raw))],
        )
        fragment = m.EncryptedFragment(1, 3, PayloadType.IDi, raw)
        self.assertEqual(m.encode_payloads([(PayloadType.SKF, fragment)]), (53, first))

    def test_transform_attributes_other_than_key_length(self):
        sa = hexbytes("""
            00 00 0018 01 01 00 01               # proposal 1, length 24, IKE, one transform
            00 00 0010 01 00 000c                #   ENCR AES_CBC, length 16
            800e 0080                            #   Key Length 128 (TV)
            0011 0000                            #   unknown attribute 17 in TLV form, empty
        """)
        transform = m.Sa.decode(sa).proposals[0].transforms[0]
        self.assertEqual(transform, m.Transform(1, 12, 128, ((17, b""),)))
        self.assertEqual(m.Sa((m.Proposal(1, 1, b"", (transform,)),)).encode(), sa)

    def test_configuration_reply_and_r_bit(self):
        cp = hexbytes("""
            02 000000                            # CFG_REPLY
            8001 0004 0a000002                   # INTERNAL_IP4_ADDRESS 10.0.0.2 (R bit set)
        """)
        self.assertEqual(
            m.Configuration.decode(cp),
            m.Configuration(CfgType.REPLY, ((CfgAttribute.INTERNAL_IP4_ADDRESS, b"\n\0\0\x02"),)),
        )


class RoundTripTests(unittest.TestCase):
    def test_every_payload(self):
        ipv4, ipv6 = ipaddress.ip_address("192.0.2.1"), ipaddress.ip_address("2001:db8::1")
        payloads = [
            (PayloadType.SA, m.Sa((m.Proposal(3, 3, b"spi!", (m.Transform(5, 1),)),))),
            (PayloadType.KE, m.Ke(DhGroup.CURVE25519, bytes(32))),
            (PayloadType.IDi, m.Identification(IdType.RFC822_ADDR, b"bob@example.com")),
            (PayloadType.IDr, m.Identification(IdType.IPV4_ADDR, ipv4.packed)),
            (PayloadType.CERT, m.Certificate(CertEncoding.X509_SIGNATURE, b"der")),
            (PayloadType.CERTREQ, m.CertificateRequest(CertEncoding.X509_SIGNATURE, b"")),
            (PayloadType.AUTH, m.Authentication(AuthMethod.DIGITAL_SIGNATURE, b"sig")),
            (PayloadType.NONCE, m.Nonce(bytes(256))),
            (PayloadType.NOTIFY, m.Notify(NotifyType.COOKIE, b"c" * 16)),
            (PayloadType.DELETE, m.Delete(ProtocolId.IKE)),
            (PayloadType.VENDOR, m.VendorId(b"")),
            (PayloadType.TSi, m.TrafficSelectors((m.TrafficSelector(ipv4, ipv4, 17, 500, 500),))),
            (PayloadType.TSr, m.TrafficSelectors((m.TrafficSelector(ipv6, ipv6),))),
            (PayloadType.CP, m.Configuration(CfgType.ACK)),
            (PayloadType.EAP, m.Eap(bytes.fromhex("03010004"))),
            (200, m.Unknown(200, False, b"private use")),
            (PayloadType.SK, m.Encrypted(PayloadType.NONE, b"iv+ct+icv")),
        ]
        data = m.encode_message(header(), payloads)
        message = m.decode_message(data)
        self.assertEqual(message.payloads, payloads)
        self.assertEqual(message.header, header(next_payload=PayloadType.SA, length=len(data)))

    def test_encrypted_payload_must_be_last(self):
        payloads = [(PayloadType.SK, m.Encrypted(0, b"")), (PayloadType.NONCE, m.Nonce(bytes(16)))]
        self.assertRaises(ValueError, m.encode_payloads, payloads)

    def test_spis_are_eight_octets(self):
        self.assertRaises(ValueError, m.encode_message, header(spi_r=b""), [])

    def test_empty_message(self):
        data = m.encode_message(header(exchange=ExchangeType.INFORMATIONAL), [])
        self.assertEqual(len(data), 28)
        self.assertEqual(m.decode_message(data).payloads, [])

    def test_lookup(self):
        nat_source = m.Notify(NotifyType.NAT_DETECTION_SOURCE_IP, b"s" * 20)
        fragmentation = m.Notify(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED)
        message = m.Message(
            header(),
            [
                (PayloadType.NOTIFY, nat_source),
                (PayloadType.NONCE, m.Nonce(bytes(16))),
                (PayloadType.NOTIFY, fragmentation),
            ],
        )
        self.assertEqual(message.get(PayloadType.NONCE), m.Nonce(bytes(16)))
        self.assertIsNone(message.get(PayloadType.KE))
        self.assertEqual(message.all(PayloadType.NOTIFY), [nat_source, fragmentation])
        self.assertIs(message.notify(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED), fragmentation)
        self.assertIsNone(message.notify(NotifyType.COOKIE))


class RealMessageTests(unittest.TestCase):
    def test_android_ike_sa_init_request(self):
        message = m.decode_message(ANDROID_SA_INIT)
        self.assertEqual(message.header.spi_i, bytes.fromhex("8f54bf6d8b48e6e1"))
        self.assertEqual(message.header.exchange, ExchangeType.IKE_SA_INIT)
        self.assertTrue(message.header.initiator)
        kinds = [kind for kind, _ in message.payloads]
        self.assertEqual(kinds, [33, 34, 40, 41, 41, 43])
        (proposal,) = message.get(PayloadType.SA).proposals
        self.assertEqual(
            proposal.transforms,
            (
                m.Transform(TransformType.ENCR, EncrId.AES_CBC, 128),
                m.Transform(TransformType.INTEG, IntegId.HMAC_SHA1_96),
                m.Transform(TransformType.DH, DhGroup.MODP1024),
                m.Transform(TransformType.PRF, PrfId.HMAC_SHA1),
            ),
        )
        ke = message.get(PayloadType.KE)
        self.assertEqual((ke.group, len(ke.data)), (DhGroup.MODP1024, 128))
        self.assertEqual(len(message.get(PayloadType.NONCE).data), 32)
        self.assertEqual(len(message.notify(NotifyType.NAT_DETECTION_SOURCE_IP).data), 20)
        self.assertEqual(len(message.notify(NotifyType.NAT_DETECTION_DESTINATION_IP).data), 20)
        self.assertEqual(m.encode_message(message.header, message.payloads), ANDROID_SA_INIT)

    def test_strongswan_ike_sa_init_response(self):
        message = m.decode_message(STRONGSWAN_SA_INIT_RESPONSE)
        self.assertEqual(message.header.spi_r, bytes.fromhex("9fb14c9c853ad1b2"))
        self.assertTrue(message.header.response)
        self.assertFalse(message.header.initiator)
        self.assertEqual(len(message.get(PayloadType.SA).proposals), 1)
        self.assertIsNotNone(message.notify(NotifyType.MULTIPLE_AUTH_SUPPORTED))
        self.assertEqual(
            m.encode_message(message.header, message.payloads), STRONGSWAN_SA_INIT_RESPONSE
        )


class ValidationTests(unittest.TestCase):
    def assertRejected(self, notify, decode, *args, payload_type=None):
        error = self.assertRaises(m.IkeError, decode, *args)
        self.assertEqual(error.notify, notify)
        self.assertEqual(error.payload_type, payload_type)
        return error

    def test_unknown_critical_payload(self):
        chain = hexbytes("28 80 0008 01020304") + NONCE_CHAIN  # type 200, critical
        error = self.assertRejected(
            NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD, m.decode_payloads, 200, chain, payload_type=200
        )
        self.assertEqual(error.data, b"\xc8")  # the Notification Data (RFC 7296 §3.10.1)

    def test_unknown_non_critical_payload_is_skipped(self):
        chain = hexbytes("28 00 0008 01020304") + NONCE_CHAIN
        entries = m.decode_payloads(200, chain)
        self.assertEqual(entries[0], (200, m.Unknown(200, False, bytes([1, 2, 3, 4]))))
        self.assertEqual(entries[1][0], PayloadType.NONCE)

    def test_critical_bit_and_reserved_bits_of_known_payloads_are_ignored(self):
        chain = hexbytes("00 ff 0014 00112233445566778899aabbccddeeff")
        self.assertEqual(len(m.decode_payloads(PayloadType.NONCE, chain)), 1)

    def test_payload_lengths(self):
        cases = {
            "length below 4": hexbytes("00 00 0003 00"),
            "length beyond data": NONCE_CHAIN[:-1],
            "header cut": NONCE_CHAIN[:3],
            "octets after the last payload": NONCE_CHAIN + b"\0",
            "next payload missing": hexbytes("28") + NONCE_CHAIN[1:],
        }
        for name, chain in cases.items():
            error = self.assertRaises(m.IkeError, m.decode_payloads, PayloadType.NONCE, chain)
            self.assertEqual(error.notify, NotifyType.INVALID_SYNTAX, name)

    def test_encrypted_payload_must_be_last(self):
        chain = hexbytes("23 00 0008 01020304") + NONCE_CHAIN
        self.assertRejected(
            NotifyType.INVALID_SYNTAX,
            m.decode_payloads,
            PayloadType.SK,
            chain,
            payload_type=PayloadType.SK,
        )

    def test_header_length_must_match_datagram(self):
        self.assertRejected(NotifyType.INVALID_SYNTAX, m.decode_message, SA_INIT + b"\0")
        self.assertRejected(NotifyType.INVALID_SYNTAX, m.decode_message, SA_INIT[:-1])
        self.assertRejected(NotifyType.INVALID_SYNTAX, m.decode_message, SA_INIT[:27])

    def test_major_version(self):
        for version in (0x10, 0x30):
            data = SA_INIT[:17] + bytes([version]) + SA_INIT[18:]
            self.assertRejected(NotifyType.INVALID_MAJOR_VERSION, m.decode_message, data)
        minor = SA_INIT[:17] + b"\x21" + SA_INIT[18:]  # the minor version is ignored
        self.assertEqual(m.decode_message(minor).header.minor_version, 1)

    def test_malformed_bodies(self):
        cases = {
            PayloadType.SA: [
                "",  # no proposal
                "02 00 0010 01 01 00 01 00 00 0008 01 00 000c",  # "more" on the last proposal
                "00 00 0010 01 01 00 01 03 00 0008 01 00 000c",  # "more" on the last transform
                "00 00 0010 01 01 00 02 00 00 0008 01 00 000c",  # two transforms announced
                "00 00 0010 01 01 09 01 00 00 0008 01 00 000c",  # SPI Size overruns
                "00 00 0007 01 01 00 00",  # proposal Length below 8
                "00 00 0014 01 01 00 01 00 00 000c 01 00 000c 800e",  # attribute cut
                "00 00 0014 01 01 00 01 00 00 000c 01 00 000c 0001 0004",  # TLV overruns
            ],
            PayloadType.KE: ["001300"],
            PayloadType.IDi: [
                "020000",
                "01000000 0a0000",  # ID_IPV4_ADDR of three octets (§3.5)
                "01000000 0a000001 00",  # ... and of five
                "05000000 0a000001",  # ID_IPV6_ADDR of four octets
            ],
            PayloadType.AUTH: ["02"],
            PayloadType.CERT: [""],
            PayloadType.NONCE: ["00" * 15, "00" * 257],
            PayloadType.NOTIFY: ["000040", "03 04 4009 cafe"],
            PayloadType.DELETE: ["030400", "03 04 0002 01020304"],
            PayloadType.TSi: [
                "01000000 07000010 0000ffff 00000000",  # selector cut
                "01000000 07000028 0000ffff" + "00" * 32,  # IPv4 with an IPv6 length
                "01000000 09000010 0000ffff 00000000 ffffffff",  # unknown TS Type
                "02000000 07000010 0000ffff 00000000 ffffffff",  # count mismatch
                "01000000 0700",  # selector header cut
                "01000000 07000010 0000ffff 0a000002 0a000001",  # ends before it starts
            ],
            PayloadType.CP: ["0100", "01000000 0001 0004 0a00", "01000000 00"],
            PayloadType.EAP: ["030100"],
            PayloadType.SKF: ["0001"],
        }
        for kind, bodies in cases.items():
            for body in bodies:
                data = hexbytes(body)
                chain = m.GENERIC.pack(0, 0, 4 + len(data)) + data
                error = self.assertRaises(m.IkeError, m.decode_payloads, kind, chain)
                self.assertEqual(error.notify, NotifyType.INVALID_SYNTAX, (kind, body))
                self.assertEqual(error.payload_type, kind, (kind, body))


class FragmentTests(unittest.TestCase):
    def pieces(self, total=3):
        return [
            fragments.Fragment(n, total, bytes([n]) * 4, 35 if n == 1 else 0)
            for n in range(1, total + 1)
        ]

    def test_split(self):
        self.assertEqual(
            fragments.split(b"abcdefgh", PayloadType.IDi, 3),
            [
                fragments.Fragment(1, 3, b"abc", PayloadType.IDi),
                fragments.Fragment(2, 3, b"def", 0),
                fragments.Fragment(3, 3, b"gh", 0),
            ],
        )
        self.assertEqual(
            fragments.split(b"", PayloadType.NONE, 3), [fragments.Fragment(1, 1, b"", 0)]
        )
        self.assertRaises(ValueError, fragments.split, b"abc", PayloadType.IDi, 0)

    def test_in_order_out_of_order_and_duplicates(self):
        whole = (35, b"\x01" * 4 + b"\x02" * 4 + b"\x03" * 4)
        for order in ([1, 2, 3], [3, 1, 2], [2, 2, 3, 3, 1]):
            reassembler = fragments.Reassembler()
            results = [reassembler.add(7, self.pieces()[n - 1]) for n in order]
            self.assertEqual(results[:-1], [None] * (len(order) - 1), order)
            self.assertEqual(results[-1], whole, order)
        self.assertIsNone(reassembler.message_id)

    def test_split_then_reassemble(self):
        plaintext = bytes(range(256)) * 5
        reassembler = fragments.Reassembler()
        results = [reassembler.add(2, f) for f in reversed(fragments.split(plaintext, 41, 100))]
        self.assertEqual(results[-1], (41, plaintext))

    def test_inconsistent_totals(self):
        reassembler = fragments.Reassembler()
        reassembler.add(7, self.pieces(3)[0])
        self.assertRaises(fragments.FragmentError, reassembler.add, 7, self.pieces(2)[1])
        reassembler.add(7, self.pieces(3)[1])
        # a larger total restarts: the sender went to smaller fragments (RFC 7383 §2.5.2)
        pieces = self.pieces(4)
        self.assertIsNone(reassembler.add(7, pieces[3]))
        self.assertIsNone(reassembler.add(7, pieces[0]))
        self.assertIsNone(reassembler.add(7, pieces[1]))
        self.assertEqual(reassembler.add(7, pieces[2])[1], b"".join(f.data for f in pieces))

    def test_another_message_restarts(self):
        reassembler = fragments.Reassembler()
        first, second = self.pieces(2)
        reassembler.add(7, first)
        self.assertIsNone(reassembler.add(8, second))
        self.assertEqual(reassembler.message_id, 8)
        self.assertEqual(reassembler.add(8, first), (35, first.data + second.data))

    def test_bounds(self):
        reassembler = fragments.Reassembler(max_fragments=4, max_size=10)
        for number, total in ((0, 3), (4, 3), (1, 5)):
            fragment = fragments.Fragment(number, total, b"", 0)
            self.assertRaises(fragments.FragmentError, reassembler.add, 1, fragment)
        reassembler.add(1, fragments.Fragment(1, 3, b"x" * 6, 35))
        big = fragments.Fragment(2, 3, b"y" * 6, 0)
        self.assertRaises(fragments.FragmentError, reassembler.add, 1, big)
        self.assertIsNone(reassembler.message_id)  # the message was dropped whole
