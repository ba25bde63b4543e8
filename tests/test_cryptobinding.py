"""PEAP cryptobinding against values wpa_supplicant computed ([MS-PEAP] §3.1.5.5-3.1.5.7).

The vectors were captured from eapol_test 2.10's debug output (``EAP-PEAP: TK``, ``ISK``,
``IMCK``, ``CMK``, ``Compound_MAC``, ``CSK``) in PEAPv0 runs with crypto_binding=2 against
vpnaaa, one over TLS 1.2 and one over TLS 1.3 (phase1 ``tls_disable_tlsv1_3=0``, where the
peer's TK is the first 60 octets of TLS-Exporter("EXPORTER_EAP_TLS_Key_Material", 0x19,
128), RFC 9427 §2.5): they are the peer's computations, not vpnaaa's.
"""

from twisted.trial import unittest

from vpnaaa.eap import cryptobinding

TK = bytes.fromhex(
    "f8565d58f509faefa9477741d053c384be09dcdcb136a53db1683334c2d86cd1"
    "aa59b4e62a717ad135dc24bc524849096d839313b74501888c811257"
)
ISK = bytes.fromhex("6b1e787bbbf63708d9b6790de55525ee39e62635b8cb40b63e25ca25a69c44b9")
IMCK = bytes.fromhex(
    "171b1778fa54c845c4862b30c1bd2b0f89f91b700c9884d57a85bb5a6104913f"
    "d0dcaf5ee911f4dbe105d95128f110a4233ee16529e8a5a87221fe99"
)
CMK = bytes.fromhex("e105d95128f110a4233ee16529e8a5a87221fe99")
RESPONSE_TLV_ZERO_MAC = bytes.fromhex(
    "000c003800000001a8cd5a74fad385e3ec9776a8a89dc26cc446b91904611203"
    "6b1e59542d38e3aa0000000000000000000000000000000000000000"
)
RESPONSE_MAC = bytes.fromhex("96cf90be3e6596646de362ce185f3f28a177945f")
CSK = bytes.fromhex(
    "8913a50a906cf0c51bae1b817cbdff23d47d94b1f31fb8188ad8318a42a8f125"
    "87b2c7c5d4eb3f08a4cde03050546915074446de00d36e8c5bd076c280322c62"
    "605619f6315d2781e348ab818fa82a15a8bb3e8062125b0f3f0321db7a031ba0"
    "d864ef22564d2eed42984336540d11d762403cf5bfde92c2ad86e274086508a8"
)
TLS13_TK = bytes.fromhex(
    "7a977f5dfcdc902070e2af660bfc9f83d0345384d4f694e70e759f99e4489383"
    "bfe2922bad65cea47a99db7d47e9eae6d99964106b23b9ee5c01cd40"
)
TLS13_ISK = bytes.fromhex("b9ddddf27f2c2da0f06c60b5e4f8ccacc824ea37c22141cde99c9ddc5e98c41b")
TLS13_IMCK = bytes.fromhex(
    "822f7067d3f08c49564e0e3f3350c109348636b36d65c4dac59195257a183c9f"
    "2beb77082b09a738770238d7f72350dbe9959f04ca62ce2834d14a34"
)
TLS13_CMK = bytes.fromhex("770238d7f72350dbe9959f04ca62ce2834d14a34")
TLS13_RESPONSE_TLV_ZERO_MAC = bytes.fromhex(
    "000c003800000001dc8511841d8233ff5fef357531431999697afc12425fb2cb"
    "0c74481af87dc0dc0000000000000000000000000000000000000000"
)
TLS13_RESPONSE_MAC = bytes.fromhex("ea2e8396aecdb4592ba7844a54b6d3c20bc10dd8")
TLS13_CSK = bytes.fromhex(
    "3324090953dcf9b45d9bc1bf249c9de7e0d4c1992edd9f0ebe6e76b3191cec78"
    "ced66a9287d62c7f3903a5714fe74a4a609714b0226e38bce865c4e2df016201"
    "762358a2297162556c56233158ec43b15027478c650147cb065998324f78be30"
    "fd18b54789fdd13a9e6338272b787b8579eb20c5df701d8933585cd528323030"
)


class CryptobindingTests(unittest.TestCase):
    """The TLS 1.2 run."""

    tk, isk, imck, cmk, csk = TK, ISK, IMCK, CMK, CSK
    response, mac = RESPONSE_TLV_ZERO_MAC, RESPONSE_MAC

    def binding(self):
        binding = cryptobinding.Binding(self.tk, self.isk)
        binding.nonce = self.response[8:40]  # the nonce of the captured run
        return binding

    def test_ipmk_and_cmk(self):
        binding = self.binding()
        self.assertEqual(binding.ipmk, self.imck[:40])
        self.assertEqual(binding.cmk, self.cmk)

    def test_peer_response_verifies(self):
        value = self.response[4:40] + self.mac
        self.assertTrue(self.binding().verify_response(value))

    def test_tampered_response_fails(self):
        value = self.response[4:40] + self.mac
        for position in (3, 10, 50):
            broken = bytearray(value)
            broken[position] ^= 1
            self.assertFalse(self.binding().verify_response(bytes(broken)), position)
        self.assertFalse(self.binding().verify_response(value[:-1]))

    def test_msk_is_the_compound_session_key(self):
        self.assertEqual(self.binding().msk(), self.csk[:64])


class Tls13CryptobindingTests(CryptobindingTests):
    """The TLS 1.3 run: only the TK's source differs (RFC 9427 §2.5)."""

    tk, isk, imck, cmk, csk = TLS13_TK, TLS13_ISK, TLS13_IMCK, TLS13_CMK, TLS13_CSK
    response, mac = TLS13_RESPONSE_TLV_ZERO_MAC, TLS13_RESPONSE_MAC
