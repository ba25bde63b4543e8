"""RADIUS metrics as radclient (Debian's freeradius-utils) makes them move: requests,
responses and drops by port, client name and code, scraped from the admin socket's
/metrics (prometheus-client's resource) and read by prometheus-client's parser."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from twisted.internet import defer, reactor
from twisted.web import client

from tests.interop.test_radclient import FAST, RadclientTestCase
from tests.support import ports, radius_config, start_daemon, write_config
from tests.test_admin import UnixEndpoints
from tests.test_metrics import Scraped

AUTH = {"port": "authentication", "client": "loopback"}
ACCT = {"port": "accounting", "client": "loopback"}


class RadiusMetricsTests(RadclientTestCase):
    def setUp(self) -> None:
        super().setUp()
        path = radius_config(self.state)
        text = path.read_text().replace("[admin]\nenabled = false", "[admin]")
        self.daemon = start_daemon(self, write_config(path, text))
        self.auth_port, self.acct_port = ports(self.daemon)

    @defer.inlineCallbacks
    def scrape(self) -> Generator[defer.Deferred[Any], Any, Scraped]:
        agent = client.Agent.usingEndpointFactory(reactor, UnixEndpoints(self.state / "admin.sock"))
        response = yield agent.request(b"GET", b"http://localhost/metrics")
        self.assertEqual(response.code, 200)
        return Scraped((yield client.readBody(response)).decode())

    @defer.inlineCallbacks
    def test_requests_responses_and_drops_by_client_and_code(self):
        before = yield self.scrape()
        self.assertEqual(before("vpnaaa_radius_requests_total", code="Access-Request", **AUTH), 0)
        accept = yield self.radclient("auth", 'User-Name = "alice"\nUser-Password = "wonderland"\n')
        self.assertReply(accept, "Access-Accept")
        reject = yield self.radclient("auth", 'User-Name = "alice"\nUser-Password = "wonder"\n')
        self.assertReply(reject, "Access-Reject")
        status = yield self.radclient("status", "Message-Authenticator = 0x00\n")
        self.assertReply(status, "Access-Accept")
        start = 'User-Name = "alice"\nAcct-Session-Id = "4D2C-0001"\nAcct-Status-Type = Start\n'
        stored = yield self.radclient("acct", start)
        self.assertReply(stored, "Accounting-Response")
        forged = yield self.radclient("acct", start, secret="other", options=FAST)
        self.assertNoReply(forged)

        after = yield self.scrape()
        requests, responses = "vpnaaa_radius_requests_total", "vpnaaa_radius_responses_total"
        self.assertEqual(after(requests, code="Access-Request", **AUTH), 2)
        self.assertEqual(after(requests, code="Status-Server", **AUTH), 1)
        self.assertEqual(after(requests, code="Accounting-Request", **ACCT), 2)
        self.assertEqual(after(responses, code="Access-Accept", **AUTH), 2)
        self.assertEqual(after(responses, code="Access-Reject", **AUTH), 1)
        self.assertEqual(after(responses, code="Accounting-Response", **ACCT), 1)
        self.assertEqual(after("vpnaaa_radius_drops_total", **ACCT), 1)
        self.assertEqual(after("vpnaaa_radius_drops_total", **AUTH), 0)
        self.assertNotIn("alice", after.text)
        self.assertNotIn("127.0.0.1", after.text)
