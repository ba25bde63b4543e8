"""Fuzzing the IKEv2 edge with hypothesis (RFC 7296 §2.21: malformed input is dropped or
answered with a notify; nothing else may happen).

The decoder must raise only IkeError; the responder, fed raw datagrams and mutations of a
real IKE_SA_INIT request (Android's, see tests/test_ike_message.py), must never raise and
never keep state for a message it refused.
"""

import contextlib
import functools
import ipaddress

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import task
from twisted.trial import unittest

from tests.support import test_pki
from tests.test_ike_message import ANDROID_SA_INIT
from vpnaaa.ike.const import ProtocolId
from vpnaaa.ike.message import IkeError, decode_message
from vpnaaa.ike.proposal import DEFAULT_ESP, DEFAULT_IKE, Policy
from vpnaaa.ike.protocol import Responder
from vpnaaa.ike.sa import Endpoint, Profile, ResponderContext
from vpnaaa.kernel.installer import NullInstaller
from vpnaaa.pki import load_server_identity
from vpnaaa.pool import AddressPool

DECODER_EXAMPLES = 100_000
RESPONDER_EXAMPLES = 1_000
PEER = Endpoint("192.0.2.7", 500)


class FakePort:
    number = 500

    def __init__(self):
        self.sent = []

    def send(self, datagram, remote):
        self.sent.append(datagram)


@functools.cache
def context() -> ResponderContext:
    _, server = test_pki()
    return ResponderContext(
        ike_policy=Policy.from_names(ProtocolId.IKE, DEFAULT_IKE),
        esp_policy=Policy.from_names(ProtocolId.ESP, DEFAULT_ESP),
        identity=load_server_identity(server.key, server.cert, server.chain),
        profiles=(Profile("default", AddressPool(ipaddress.IPv4Network("10.99.0.0/24"))),),
    )


def responder() -> Responder:
    return Responder(context(), NullInstaller(), task.Clock(), "192.0.2.1")


def mutated(data: bytes, edits: list[tuple[int, int]], cut: int) -> bytes:
    buffer = bytearray(data)
    for position, value in edits:
        buffer[position % len(buffer)] = value
    return bytes(buffer[: max(cut, 0) or len(buffer)])


class DecoderFuzz(unittest.SynchronousTestCase):
    @settings(
        max_examples=DECODER_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(st.binary(min_size=0, max_size=600))
    def test_only_ike_errors_escape(self, data):
        with contextlib.suppress(IkeError):
            decode_message(data)

    @settings(max_examples=20_000, deadline=None, database=None)
    @given(
        st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=8),
        st.integers(0, 500),
    )
    def test_mutated_real_request(self, edits, cut):
        with contextlib.suppress(IkeError):
            decode_message(mutated(ANDROID_SA_INIT, edits, cut))


class ResponderFuzz(unittest.SynchronousTestCase):
    @settings(max_examples=RESPONDER_EXAMPLES, deadline=None, database=None)
    @given(
        st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=6),
        st.integers(0, 500),
    )
    def test_mutated_init_requests_never_raise(self, edits, cut):
        gateway, port = responder(), FakePort()
        gateway.receive(mutated(ANDROID_SA_INIT, edits, cut), PEER, port)
        # Either an SA was made and answered, or nothing is kept; at most one reply.
        self.assertLessEqual(len(port.sent), 1)
        if not port.sent:
            self.assertEqual(gateway.sas, {})

    @settings(max_examples=RESPONDER_EXAMPLES, deadline=None, database=None)
    @given(st.binary(min_size=28, max_size=400))
    def test_garbage_never_raises_or_creates_state(self, data):
        gateway, port = responder(), FakePort()
        gateway.receive(data, PEER, port)
        self.assertEqual(gateway.sas, {})
