"""POST /disconnect of the admin API against sessions of the scripted IKE initiator: who
it ends (a DOMAIN\\user names that account only, as RFC 5176 §3 matches User-Name)."""

from __future__ import annotations

from types import SimpleNamespace

from twisted.trial import unittest
from twisted.web.test.requesthelper import DummyRequest

from tests.ike_peer import Gateway, Initiator
from tests.test_radius_dae import Renamed
from vpnaaa.admin import _Disconnect


class DisconnectTests(unittest.TestCase):
    def setUp(self) -> None:
        self.gate = Gateway(dpd_delay=0)
        self.resource = _Disconnect(
            SimpleNamespace(ike=SimpleNamespace(responder=self.gate.responder))
        )

    def post(self, who: str) -> tuple[int, str]:
        request = DummyRequest([b""])
        request.method = b"POST"
        request.args = {b"who": [who.encode()]}
        body = self.resource.render(request)
        return request.responseCode or 200, body.decode()

    def test_a_domain_names_one_account(self):
        """`vpnaaa disconnect 'CORPA\\alice'` must not end CORPB\\alice's session: to the
        AAA server that named them they are two accounts."""
        self.gate.context.profiles[0].eap = Renamed(self.gate.engine, "CORPB\\alice")
        peer = Initiator(self.gate)
        peer.connect()
        code, text = self.post("CORPA\\alice")
        self.assertEqual(code, 404, text)
        self.assertEqual(peer.gateway_requests(), [])
        code, text = self.post("corpb\\ALICE")
        self.assertEqual(code, 200, text)
        self.assertEqual(len(peer.gateway_requests()), 1)

    def test_a_bare_name_ends_that_user_in_any_domain(self):
        self.gate.context.profiles[0].eap = Renamed(self.gate.engine, "CORPB\\alice")
        peer = Initiator(self.gate)
        peer.connect()
        code, text = self.post("alice")
        self.assertEqual(code, 200, text)
        self.assertEqual(len(peer.gateway_requests()), 1)
