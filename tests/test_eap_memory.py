"""What a live EAP conversation really holds, and that forgetting it frees it (issue 9, item 5).

The engine sizes its table from :data:`vpnaaa.eap.engine.COST`; these tests measure the
real figures and fail when a conversation outgrows its budgeted cost (a larger OpenSSL,
a new reference kept). Two meters: tracemalloc sees Python objects only; glibc's
``mallinfo2`` also sees OpenSSL's allocations (an SSL object, its buffers and handshake
state), which are most of a PEAP conversation. The garbage collector is off while
measuring, so "released" means freed by reference counting the moment the engine lets
go, not at some later collection.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import time
import tracemalloc

from cryptography import x509
from OpenSSL import SSL
from twisted.internet import task
from twisted.trial import unittest

from tests.client_certs import issue_client
from tests.peap_peer import PeapPeer
from tests.support import directory, state_dir, test_pki
from vpnaaa.certs import ClientVerifier, DenyList
from vpnaaa.certs.check import CertificateCheck
from vpnaaa.eap.authenticator import Challenge
from vpnaaa.eap.eaptls import EapTls
from vpnaaa.eap.engine import COST, EapEngine
from vpnaaa.eap.mschapv2 import MsChapV2
from vpnaaa.eap.packet import Type
from vpnaaa.eap.peap import Peap
from vpnaaa.eap.tls import server_context
from vpnaaa.pki import load_server_identity

COUNT = 100  # conversations per measurement


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _libc():
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    if not hasattr(libc, "mallinfo2"):
        raise unittest.SkipTest("needs glibc 2.33 or later (mallinfo2)")
    libc.mallinfo2.restype = _MallInfo2
    return libc


def heap_in_use(libc) -> int:
    """Octets malloc has handed out (arena and mmapped chunks)."""
    info = libc.mallinfo2()
    return info.uordblks + info.hblkhd


class ConversationMemoryTests(unittest.TestCase):
    def setUp(self):
        self.libc = _libc()
        ca, server = test_pki()
        identity = load_server_identity(server.key, server.cert, server.chain)
        context = server_context(identity, None, ("1.2", "1.3"))  # PEAP's, as the daemon's
        anchors = [x509.load_pem_x509_certificate(ca.cert.read_bytes())]
        tls_context = server_context(identity, None, ("1.2", "1.3"), anchors)
        self.client = issue_client("carol", email="carol@example.test").pem_pair
        deny = DenyList(state_dir(self) / "denied-serials")
        check = CertificateCheck(ClientVerifier(anchors), deny, time.time)

        def mschapv2(source=None):
            return MsChapV2(directory(), source=source)

        def peap(source=None):
            return Peap(context, [(Type.MSCHAPV2, mschapv2)], 1024, source=source)

        def eap_tls(source=None):
            return EapTls(tls_context, check, 1024)

        self.factories = {Type.PEAP: peap, Type.MSCHAPV2: mschapv2, Type.TLS: eap_tls}
        gc.collect()
        gc.disable()
        self.addCleanup(gc.enable)
        tracemalloc.start()
        self.addCleanup(tracemalloc.stop)

    def engine(self, kind: int) -> EapEngine:
        return EapEngine([(kind, self.factories[kind])], task.Clock(), 30, 1 << 40, 1 << 30)

    def open_peap(self, engine: EapEngine, version: int) -> bytes:
        """A PEAP conversation mid-handshake: the ClientHello answered, the server's
        certificate flight queued in fragments (the costliest point, measured)."""
        peer = PeapPeer(max_version=version)
        conversation_id, request = engine.begin("192.0.2.1")
        _, request = engine.step(conversation_id, peer.identity(request.eap)).result
        _, request = engine.step(conversation_id, peer.answer(request.eap)).result
        self.assertIsInstance(request, Challenge)
        return conversation_id

    def open_eap_tls(self, engine: EapEngine, version: int) -> bytes:
        """An EAP-TLS conversation mid-handshake: the server's flight (certificate,
        CertificateRequest naming the client CA) queued in fragments."""
        peer = PeapPeer(kind=Type.TLS, certificate=self.client, max_version=version)
        conversation_id, request = engine.begin("192.0.2.1")
        _, request = engine.step(conversation_id, peer.identity(request.eap)).result
        _, request = engine.step(conversation_id, peer.answer(request.eap)).result
        self.assertIsInstance(request, Challenge)
        return conversation_id

    def open_mschapv2(self, engine: EapEngine) -> bytes:
        """An EAP-MSCHAPv2 conversation with its challenge sent."""
        peer = PeapPeer()  # only its Identity response is used
        conversation_id, request = engine.begin("192.0.2.1")
        _, request = engine.step(conversation_id, peer.identity(request.eap, b"alice")).result
        self.assertIsInstance(request, Challenge)
        return conversation_id

    def measure(self, kind: int, opener) -> tuple[float, float, float, float]:
        """Per conversation: (held, of which Python objects, left after forget, of which
        Python objects), in octets."""
        engine = self.engine(kind)
        engine.forget(opener(engine))  # warm caches (the certificate's encoding, ...)
        heap, python = heap_in_use(self.libc), tracemalloc.get_traced_memory()[0]
        ids = [opener(engine) for _ in range(COUNT)]
        held = (heap_in_use(self.libc) - heap) / COUNT
        held_python = (tracemalloc.get_traced_memory()[0] - python) / COUNT
        self.assertEqual(len(engine), COUNT)
        for conversation_id in ids:
            engine.forget(conversation_id)
        left = (heap_in_use(self.libc) - heap) / COUNT
        left_python = (tracemalloc.get_traced_memory()[0] - python) / COUNT
        return held, held_python, left, left_python

    def test_peap_mid_handshake(self):
        """About 90 KiB each with TLS 1.2 or TLS 1.3, nearly all of it OpenSSL's
        (tracemalloc sees ~5 KiB): within the 128 KiB the engine budgets, and not so far
        below that the budget wastes most of the memory; forget() gives it all back at
        once."""
        for version in (SSL.TLS1_2_VERSION, SSL.TLS1_3_VERSION):
            held, held_python, left, left_python = self.measure(
                Type.PEAP, lambda engine, v=version: self.open_peap(engine, v)
            )
            self.assertLessEqual(held, COST[Type.PEAP], version)
            self.assertGreater(held, COST[Type.PEAP] / 2, version)
            self.assertLess(held_python, held / 4)
            self.assertLess(left, 2048)
            self.assertLess(left_python, 1024)

    def test_eap_tls_mid_handshake(self):
        """EAP-TLS with TLS 1.2 and with TLS 1.3 (a larger key share: X25519MLKEM768 in
        the OpenSSL here): ~95 and ~90 KiB, within the budgeted cost, mostly OpenSSL's,
        all freed. One unmeasured round first: the first time :data:`COUNT` client
        certificate handshakes are live at once, about 200 KiB stays allocated for good
        (tables sized by that peak, not by a conversation; later rounds leave ~250 octets
        each)."""
        versions = (SSL.TLS1_2_VERSION, SSL.TLS1_3_VERSION)
        for version in versions:  # the warm-up round
            self.measure(Type.TLS, lambda engine, v=version: self.open_eap_tls(engine, v))
        for version in versions:
            held, held_python, left, left_python = self.measure(
                Type.TLS, lambda engine, v=version: self.open_eap_tls(engine, v)
            )
            self.assertLessEqual(held, COST[Type.TLS], version)
            self.assertGreater(held, COST[Type.TLS] / 2, version)
            self.assertLess(held_python, held / 4)
            self.assertLess(left, 2048)
            self.assertLess(left_python, 1024)

    def test_mschapv2_challenge_sent(self):
        held, _, left, left_python = self.measure(Type.MSCHAPV2, self.open_mschapv2)
        self.assertLessEqual(held, COST[Type.MSCHAPV2])
        self.assertGreater(held, COST[Type.MSCHAPV2] / 8)
        self.assertLess(left, 1024)
        self.assertLess(left_python, 1024)
