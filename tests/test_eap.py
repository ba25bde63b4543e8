"""The EAP authenticator, EAP-MSCHAPv2 and the engine, with RFC 2759 / RFC 3079 vectors."""

import struct

from twisted.internet import task
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from tests.support import directory
from tests.test_mschap import (
    AUTH_CHALLENGE,
    AUTHENTICATOR_RESPONSE,
    NT_RESPONSE,
    PASSWORD,
    PEER_CHALLENGE,
    SEND_START_KEY_128,
)
from vpnaaa.eap import packet
from vpnaaa.eap.authenticator import Challenge, Conversation, Failure, Success
from vpnaaa.eap.engine import COST, EapEngine
from vpnaaa.eap.mschapv2 import MsChapV2
from vpnaaa.eap.packet import Code, Type
from vpnaaa.lockout import Lockout
from vpnaaa.users import User

USERS = directory(User=User.create("User", PASSWORD))


def response(identifier, kind, data=b""):
    return packet.Packet(Code.RESPONSE, identifier, kind, data).encode()


def rfc2759_response(ms_id, name=b"User", nt_response=NT_RESPONSE):
    """The peer's EAP-MSCHAPv2 Response with the RFC 2759 §9.2 sample values."""
    value = bytes([49]) + PEER_CHALLENGE + bytes(8) + nt_response + b"\x00" + name
    return struct.pack("!BBH", 2, ms_id, 4 + len(value)) + value


def mschapv2_factory(source=None):
    method = MsChapV2(USERS, source=source)
    method.challenge = AUTH_CHALLENGE  # the RFC sample's authenticator challenge
    return method


class PacketTests(unittest.TestCase):
    def test_round_trip_and_padding(self):
        raw = packet.request(7, Type.IDENTITY).encode()
        self.assertEqual(raw, b"\x01\x07\x00\x05\x01")
        self.assertEqual(packet.parse(raw + b"pad"), packet.request(7, Type.IDENTITY))
        self.assertEqual(packet.success(3).encode(), b"\x03\x03\x00\x04")

    def test_malformed(self):
        for data in (
            b"",
            b"\x02\x01\x00",
            b"\x02\x01\x00\x09\x01",
            b"\x02\x01\x00\x04",
            b"\x07\x01\x00\x05\x01",
        ):
            self.assertRaises(packet.EapError, packet.parse, data)


class MsChapV2ConversationTests(unittest.TestCase):
    def setUp(self):
        self.conversation = Conversation([(Type.MSCHAPV2, mschapv2_factory)])

    def challenge(self):
        first = self.conversation.start()
        request = packet.parse(first.eap)
        self.assertEqual((request.code, request.type), (Code.REQUEST, Type.IDENTITY))
        result = self.conversation.receive(response(request.identifier, Type.IDENTITY, b"User"))
        self.assertIsInstance(result, Challenge)
        challenge = packet.parse(result.eap)
        self.assertEqual(challenge.identifier, (request.identifier + 1) % 256)
        self.assertEqual(challenge.type, Type.MSCHAPV2)
        # OpCode 1, MS-CHAPv2-ID = EAP Identifier, MS-Length, Value-Size 16, challenge, name
        opcode, ms_id, ms_length, size = struct.unpack_from("!BBHB", challenge.data)
        self.assertEqual(
            (opcode, ms_id, ms_length, size), (1, challenge.identifier, len(challenge.data), 16)
        )
        self.assertEqual(challenge.data[5:21], AUTH_CHALLENGE)
        self.assertEqual(challenge.data[21:], b"vpnaaa")
        return challenge

    def test_rfc2759_sample_succeeds_with_rfc3079_keys(self):
        challenge = self.challenge()
        result = self.conversation.receive(
            response(challenge.identifier, Type.MSCHAPV2, rfc2759_response(challenge.identifier))
        )
        success_request = packet.parse(result.eap)
        self.assertEqual(success_request.data[0], 3)
        self.assertEqual(success_request.data[4:46], AUTHENTICATOR_RESPONSE)
        done = self.conversation.receive(
            response(success_request.identifier, Type.MSCHAPV2, b"\x03")
        )
        self.assertIsInstance(done, Success)
        self.assertEqual(packet.parse(done.eap), packet.success(success_request.identifier))
        self.assertEqual(done.identity, "User")
        self.assertEqual(done.msk[16:], SEND_START_KEY_128)  # receive key, then send key

    def test_domain_prefix_is_stripped(self):
        challenge = self.challenge()
        result = self.conversation.receive(
            response(
                challenge.identifier,
                Type.MSCHAPV2,
                rfc2759_response(challenge.identifier, name=b"CORP\\User"),
            )
        )
        self.assertEqual(packet.parse(result.eap).data[4:46], AUTHENTICATOR_RESPONSE)

    def test_wrong_password_fails_after_the_failure_ack(self):
        challenge = self.challenge()
        result = self.conversation.receive(
            response(
                challenge.identifier,
                Type.MSCHAPV2,
                rfc2759_response(challenge.identifier, nt_response=bytes(24)),
            )
        )
        failure_request = packet.parse(result.eap)
        self.assertEqual(failure_request.data[0], 4)
        self.assertIn(b"E=691 R=0", failure_request.data)
        done = self.conversation.receive(
            response(failure_request.identifier, Type.MSCHAPV2, b"\x04")
        )
        self.assertIsInstance(done, Failure)
        self.assertEqual(done.reason, "wrong password")
        self.assertEqual(packet.parse(done.eap).code, Code.FAILURE)

    def run_once(self, nt_response=NT_RESPONSE):
        """One whole conversation with the RFC 2759 sample; its final result."""
        self.conversation = Conversation([(Type.MSCHAPV2, mschapv2_factory)])
        challenge = self.challenge()
        result = self.conversation.receive(
            response(
                challenge.identifier,
                Type.MSCHAPV2,
                rfc2759_response(challenge.identifier, nt_response=nt_response),
            )
        )
        answer = packet.parse(result.eap)
        return self.conversation.receive(
            response(answer.identifier, Type.MSCHAPV2, answer.data[:1])
        )

    def test_wrong_passwords_lock_the_user_out(self):
        """EAP-MSCHAPv2 (alone or inside PEAP) counts toward the store's lockout and
        respects it: after three wrong NT-Responses the right one is refused too, until
        the lock ends."""
        clock = task.Clock()
        USERS.lockout = Lockout(clock, failures=3, window=60.0, duration=300.0)
        self.addCleanup(setattr, USERS, "lockout", None)
        for _ in range(3):
            self.assertEqual(self.run_once(bytes(24)).reason, "wrong password")
        locked = self.run_once()
        self.assertIsInstance(locked, Failure)
        self.assertEqual(locked.reason, "locked out after repeated wrong passwords")
        clock.advance(301)
        self.assertIsInstance(self.run_once(), Success)

    def test_unknown_user(self):
        challenge = self.challenge()
        result = self.conversation.receive(
            response(
                challenge.identifier,
                Type.MSCHAPV2,
                rfc2759_response(challenge.identifier, name=b"nobody"),
            )
        )
        self.assertEqual(packet.parse(result.eap).data[0], 4)

    def test_stale_identifier_repeats_the_outstanding_request(self):
        challenge = self.challenge()
        again = self.conversation.receive(
            response((challenge.identifier - 1) % 256, Type.IDENTITY, b"User")
        )
        self.assertEqual(packet.parse(again.eap), challenge)

    def test_garbage_fails_cleanly(self):
        for data in (b"", b"\x02", b"\x02\x00\x00\x08\x10", b"\x03", b"\x04"):
            conversation = Conversation([(Type.MSCHAPV2, mschapv2_factory)])
            conversation.receive(response(1, Type.IDENTITY, b"User"))
            result = conversation.receive(response(conversation.identifier, Type.MSCHAPV2, data))
            self.assertIsInstance(result, Failure, repr(data))
            self.assertEqual(packet.parse(result.eap).code, Code.FAILURE)
        self.assertIsInstance(self.conversation.receive(b"\x02\x01"), Failure)


class NakTests(unittest.TestCase):
    def test_nak_picks_the_next_acceptable_method(self):
        conversation = Conversation(
            [(Type.PEAP, mschapv2_factory), (Type.MSCHAPV2, mschapv2_factory)]
        )
        first = conversation.receive(response(9, Type.IDENTITY, b"User"))
        self.assertEqual(packet.parse(first.eap).type, Type.PEAP)
        second = conversation.receive(
            response(packet.parse(first.eap).identifier, Type.NAK, bytes([Type.MSCHAPV2]))
        )
        self.assertEqual(packet.parse(second.eap).type, Type.MSCHAPV2)

    def test_nak_with_nothing_acceptable_fails(self):
        conversation = Conversation([(Type.MSCHAPV2, mschapv2_factory)])
        first = conversation.receive(response(9, Type.IDENTITY, b"User"))
        result = conversation.receive(
            response(packet.parse(first.eap).identifier, Type.NAK, b"\x00")
        )
        self.assertIsInstance(result, Failure)
        self.assertIn("no common EAP method", result.reason)


class EngineTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.engine = EapEngine(
            [(Type.MSCHAPV2, mschapv2_factory)],
            self.clock,
            idle_timeout=30,
            memory_budget=3 * COST[Type.MSCHAPV2],
        )

    def step(self, conversation_id, eap):
        return self.successResultOf(self.engine.step(conversation_id, eap))

    def test_idle_conversations_expire(self):
        for _ in range(3):
            self.step(None, response(1, Type.IDENTITY, b"User"))
        self.assertEqual(len(self.engine), 3)
        self.clock.advance(31)
        self.assertEqual(self.engine.expire(), 3)
        self.assertEqual(len(self.engine), 0)

    def test_full_table_refuses_new_conversations(self):
        for _ in range(3):
            self.step(None, response(1, Type.IDENTITY, b"User"))
        _, result = self.step(None, response(1, Type.IDENTITY, b"User"))
        self.assertIsInstance(result, Failure)
        self.assertEqual(len(self.engine), 3)

    def test_finished_conversations_are_removed(self):
        conversation_id, result = self.step(None, response(1, Type.IDENTITY, b"User"))
        nak_target = packet.parse(result.eap).identifier
        _, result = self.step(conversation_id, response(nak_target, Type.NAK, b"\x00"))
        self.assertIsInstance(result, Failure)
        self.assertEqual(len(self.engine), 0)
        _, result = self.step(conversation_id, response(nak_target, Type.IDENTITY, b"x"))
        self.assertEqual(result.reason, "unknown or expired conversation")


class EngineLimitTests(unittest.TestCase):
    """Item 5 of issue 9: conversations begun for IKE clients are capped per source, the
    table is sized by memory, refusals are EAP-Failures with throttled log lines, and a
    forgotten conversation frees its slot."""

    def setUp(self):
        self.clock = task.Clock()
        self.engine = EapEngine(
            [(Type.MSCHAPV2, mschapv2_factory)],
            self.clock,
            idle_timeout=30,
            memory_budget=10 * COST[Type.MSCHAPV2],
            per_source=2,
        )
        self.lines = []
        observer = self.lines.append
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    def refusals(self):
        texts = (formatEvent(event) for event in self.lines)
        return [text for text in texts if text.startswith("EAP conversation refused")]

    def test_memory_budget_sizes_the_table_by_the_costliest_method(self):
        self.assertEqual(self.engine.max_conversations, 10)
        both = EapEngine(
            [(Type.MSCHAPV2, mschapv2_factory), (Type.PEAP, mschapv2_factory)],
            self.clock,
            memory_budget=10 * COST[Type.PEAP],
        )
        self.assertEqual(both.max_conversations, 10)

    def test_per_source_cap(self):
        """Two live conversations for 192.0.2.1; the third gets EAP-Failure (Code 4) and
        takes no slot, another address is still served."""
        for _ in range(2):
            _, first = self.engine.begin("192.0.2.1")
            self.assertIsInstance(first, Challenge)
        _, refused = self.engine.begin("192.0.2.1")
        self.assertIsInstance(refused, Failure)
        self.assertEqual(packet.parse(refused.eap).code, Code.FAILURE)
        self.assertEqual(refused.reason, "192.0.2.1 already has 2 live conversations")
        self.assertEqual(len(self.engine), 2)
        _, other = self.engine.begin("192.0.2.2")
        self.assertIsInstance(other, Challenge)

    def test_ipv6_sources_count_by_their_64(self):
        self.engine.begin("2001:db8:1:2::1")
        self.engine.begin("2001:db8:1:2:ffff::2")
        _, refused = self.engine.begin("2001:db8:1:2::3")
        self.assertEqual(refused.reason, "2001:db8:1:2::/64 already has 2 live conversations")
        _, other = self.engine.begin("2001:db8:1:3::1")
        self.assertIsInstance(other, Challenge)

    def test_forget_finish_and_expiry_give_the_source_its_slots_back(self):
        first, _ = self.engine.begin("192.0.2.1")
        second, request = self.engine.begin("192.0.2.1")
        self.engine.forget(first)
        self.engine.forget(b"unknown id")
        self.assertEqual(len(self.engine), 1)
        third, _ = self.engine.begin("192.0.2.1")
        # a finished conversation (here: a Nak with nothing acceptable) leaves the table
        identifier = packet.parse(request.eap).identifier
        _, result = self.successResultOf(
            self.engine.step(second, response(identifier, Type.IDENTITY, b"User"))
        )
        identifier = packet.parse(result.eap).identifier
        _, result = self.successResultOf(
            self.engine.step(second, response(identifier, Type.NAK, b"\x00"))
        )
        self.assertIsInstance(result, Failure)
        _, again = self.engine.begin("192.0.2.1")
        self.assertIsInstance(again, Challenge)
        self.clock.advance(31)
        self.assertEqual(self.engine.expire(), 2)
        self.assertIsInstance(self.engine.begin("192.0.2.1")[1], Challenge)
        self.assertIsInstance(self.engine.begin("192.0.2.1")[1], Challenge)
        _, result = self.successResultOf(self.engine.step(third, response(1, Type.IDENTITY)))
        self.assertEqual(result.reason, "unknown or expired conversation")

    def test_global_cap_and_one_log_line_per_interval(self):
        """The eleventh conversation is refused; a thousand refusals within ten seconds
        log one line, the next line says how many were not logged."""
        for i in range(10):
            self.engine.begin(f"192.0.2.{i}")
        for _ in range(1000):
            _, refused = self.engine.begin("198.51.100.1")
            self.assertEqual(refused.reason, "10 live conversations is the configured maximum")
            self.clock.advance(0.001)
        _, refused = self.successResultOf(
            self.engine.step(None, response(7, Type.IDENTITY, b"User"))
        )
        self.assertEqual(packet.parse(refused.eap), packet.failure(7))
        self.assertEqual(
            self.refusals(),
            ["EAP conversation refused: 10 live conversations is the configured maximum"],
        )
        self.clock.advance(10)
        self.engine.step(None, response(7, Type.IDENTITY, b"User"))
        self.assertEqual(len(self.refusals()), 2)
        self.assertIn("(1000 more like it since the last such line)", self.refusals()[1])

    def test_radius_conversations_have_no_per_source_cap(self):
        """A NAS is trusted by its shared secret: step(None, ...) is only capped in total."""
        for _ in range(5):
            _, result = self.successResultOf(
                self.engine.step(None, response(1, Type.IDENTITY, b"User"))
            )
            self.assertIsInstance(result, Challenge)
