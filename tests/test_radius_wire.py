"""The RADIUS framing codec, cross-checked against pyrad's independent implementation."""

import os

from pyrad.packet import AcctPacket, AuthPacket
from twisted.trial import unittest

from vpnaaa.radius import hiding, wire

SECRET = b"wire-secret"


def access_request(**attributes):
    request = AuthPacket(
        code=1, id=42, secret=SECRET, dict=wire.DICTIONARY, authenticator=os.urandom(16)
    )
    for name, value in attributes.items():
        request.AddAttribute(name.replace("_", "-"), value)
    return request


class ParseTests(unittest.TestCase):
    def test_attributes_and_vendor_attributes_by_key(self):
        request = access_request(User_Name="alice", NAS_Port=7, MS_CHAP_Challenge=b"c" * 16)
        request.add_message_authenticator()
        packet = wire.parse(request.RequestPacket() + b"\0\0padding")
        self.assertEqual((packet.code, packet.ident), (1, 42))
        self.assertEqual(packet.get(wire.USER_NAME), b"alice")
        self.assertEqual(packet.get(wire.key("NAS-Port")), b"\0\0\0\x07")
        self.assertEqual(packet.get((311, 11)), b"c" * 16)
        self.assertEqual(packet.raw[packet.message_authenticator_at - 2], 80)
        self.assertTrue(wire.message_authenticator_ok(packet, SECRET))
        self.assertFalse(wire.message_authenticator_ok(packet, b"other"))

    def test_malformed(self):
        good = access_request(User_Name="alice").RequestPacket()
        cases = {
            "short": good[:19],
            "length beyond data": good[:-1],
            "attribute overrun": good[:20] + b"\x01\x09abc" + good[25:],
            "zero-length attribute": good + b"\x05\x00",
            "short Message-Authenticator": good + b"\x50\x04ab",
        }
        for name, data in cases.items():
            if name != "length beyond data":
                data = data[:2] + len(data).to_bytes(2, "big") + data[4:]
            with self.assertRaises(wire.Malformed, msg=name):
                wire.parse(data)

    def test_accounting_authenticators(self):
        request = AcctPacket(id=3, secret=SECRET, dict=wire.DICTIONARY)
        request.AddAttribute("Acct-Status-Type", "Start")
        request.add_message_authenticator()
        packet = wire.parse(request.RequestPacket())
        self.assertTrue(wire.accounting_authenticator_ok(packet, SECRET))
        self.assertTrue(wire.message_authenticator_ok(packet, SECRET))
        self.assertFalse(wire.accounting_authenticator_ok(packet, b"other"))


class ReplyTests(unittest.TestCase):
    def test_pyrad_verifies_our_signed_reply_with_proxy_states_in_order(self):
        request = access_request(User_Name="alice")
        request.AddAttribute("Proxy-State", b"first")
        request.AddAttribute("Proxy-State", b"second")
        raw_request = request.RequestPacket()
        raw = wire.reply(
            wire.parse(raw_request),
            wire.Code.ACCESS_ACCEPT,
            SECRET,
            [wire.value("Reply-Message", "hello"), wire.value("Session-Timeout", 60)],
        )
        decoded = AuthPacket(packet=raw, secret=SECRET, dict=wire.DICTIONARY)
        self.assertTrue(request.VerifyReply(decoded, raw, enforce_ma=True))
        self.assertEqual(raw[20], 80)  # Message-Authenticator first
        self.assertEqual(decoded["Reply-Message"], ["hello"])
        self.assertEqual(decoded["Session-Timeout"], [60])
        self.assertEqual(decoded["Proxy-State"], [b"first", b"second"])

    def test_accounting_response_is_not_signed(self):
        request = AcctPacket(id=9, secret=SECRET, dict=wire.DICTIONARY)
        request.AddAttribute("Acct-Status-Type", "Stop")
        raw = wire.reply(wire.parse(request.RequestPacket()), wire.Code.ACCOUNTING_RESPONSE, SECRET)
        self.assertEqual(len(raw), 20)
        decoded = AcctPacket(packet=raw, secret=SECRET, dict=wire.DICTIONARY)
        self.assertTrue(request.VerifyReply(decoded, raw))


class HidingTests(unittest.TestCase):
    """Our hiding against pyrad's PwCrypt/PwDecrypt/SaltDecrypt (another implementation)."""

    def test_user_password_both_ways(self):
        for password in (b"x", b"sixteen-octets!!", b"a" * 40, b"p\xc3\xa4ss"):
            request = access_request()
            hidden = request.PwCrypt(password)
            self.assertEqual(hiding.unhide(hidden, SECRET, request.authenticator), password)
            ours = hiding.hide(password, SECRET, request.authenticator)
            self.assertEqual(request.PwDecrypt(ours).encode(), password)

    def test_unhide_rejects_bad_lengths(self):
        for size in (0, 15, 17, 144):
            self.assertRaises(ValueError, hiding.unhide, bytes(size), SECRET, bytes(16))

    def test_salt_encrypted_mppe_key(self):
        request_authenticator = os.urandom(16)
        key = bytes.fromhex("8B7CDC149B993A1BA118CB153F56DCCB")
        encrypted = hiding.salt_encrypt(key, SECRET, request_authenticator)
        self.assertEqual(len(encrypted), 2 + 32)
        self.assertTrue(encrypted[0] & 0x80)  # RFC 2548 §2.4.2: salt's high bit set
        reply = AuthPacket(
            code=2, id=1, secret=SECRET, dict=wire.DICTIONARY, authenticator=os.urandom(16)
        )
        reply.request_authenticator = request_authenticator
        self.assertEqual(reply.SaltDecrypt(encrypted), key)
