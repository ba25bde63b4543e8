"""Accounting's metrics as Prometheus reads them (the registry's text exposition parsed by
prometheus-client's own parser): the queue depth (vpnaaa.metrics.AccountingQueue) while
records wait, go out and are answered; the traffic of CHILD_SAs rekeyed away."""

from __future__ import annotations

import types

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import task
from twisted.internet.testing import FakeDatagramTransport
from twisted.trial import unittest

from tests.ike_peer import USER, Gateway, Initiator
from tests.test_session_accounting import FACTS, SECRET, T0, CountingInstaller
from vpnaaa.metrics import Metrics, for_daemon
from vpnaaa.radius import wire
from vpnaaa.radius.session_accounting import START, AccountingClient, attributes

NAME = "vpnaaa_accounting_queue_depth"


class QueueDepthTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.clock.advance(T0)
        servers = [("192.0.2.10", 1813), ("2001:db8::10", 1813)]
        self.client = AccountingClient(servers, SECRET, self.clock, timeout=1.0, tries=1)
        accounting = types.SimpleNamespace(accounting=types.SimpleNamespace(client=self.client))
        daemon = types.SimpleNamespace(
            reactor=self.clock, ike=None, eap=None, radius=None, accounting=accounting
        )
        self.metrics = for_daemon(daemon)

    def depth(self):
        text = generate_latest(self.metrics.registry).decode()
        return {
            sample.labels["server"]: sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == NAME
        }

    def test_queued_and_unanswered_records_per_server(self):
        found = attributes(FACTS, START, T0, "v")
        for i in range(3):  # no socket yet: they wait
            self.client.send(found, T0, str(i))
        self.assertEqual(self.depth(), {"192.0.2.10:1813": 3, "[2001:db8::10]:1813": 0})
        transport = FakeDatagramTransport()
        self.client.makeConnection(transport)  # sent, unanswered
        self.assertEqual(self.depth(), {"192.0.2.10:1813": 3, "[2001:db8::10]:1813": 0})
        data, address = transport.written[0]
        reply = wire.reply(wire.parse(data), wire.Code.ACCOUNTING_RESPONSE, SECRET)
        self.client.datagramReceived(reply, address)
        self.assertEqual(self.depth(), {"192.0.2.10:1813": 2, "[2001:db8::10]:1813": 0})
        self.clock.advance(1.0)  # no answer: the other two fail over
        self.assertEqual(self.depth(), {"192.0.2.10:1813": 0, "[2001:db8::10]:1813": 2})

    def test_no_client_no_family(self):
        daemon = types.SimpleNamespace(
            reactor=self.clock, ike=None, eap=None, radius=None, accounting=None
        )
        text = generate_latest(for_daemon(daemon).registry).decode()
        self.assertNotIn(NAME, text)


class RetiredTrafficTests(unittest.TestCase):
    def test_a_rekeyed_away_child_sa_counts_in_the_session_bytes(self):
        """vpnaaa_session_bytes grows when a CHILD_SA leaves the kernel during its session
        (the responder's child_retired), not only when the session ends."""
        gate = Gateway()
        installer = CountingInstaller()
        gate.responder.installer = installer
        metrics = Metrics(gate.clock)
        metrics.watch_responder(gate.responder)
        peer = Initiator(gate)
        peer.connect()
        (sa,) = gate.responder.find(user=USER)
        (first,) = sa.children
        installer.counts[first] = (1000, 2000, 10, 20)
        (ours,) = peer.children
        peer.rekey_child(ours)
        peer.delete_child(ours)
        samples = scraped(metrics)
        self.assertEqual(samples[("vpnaaa_session_bytes_total", "in")], 1000)
        self.assertEqual(samples[("vpnaaa_session_bytes_total", "out")], 2000)
        self.assertEqual(samples[("vpnaaa_session_packets_total", "out")], 20)
        (second,) = sa.children
        installer.counts[second] = (1, 2, 3, 4)
        peer.delete_ike()
        samples = scraped(metrics)
        self.assertEqual(samples[("vpnaaa_session_bytes_total", "in")], 1001)
        self.assertEqual(samples[("vpnaaa_session_packets_total", "in")], 13)


def scraped(metrics):
    """The samples with a direction label, by name and direction, parsed."""
    text = generate_latest(metrics.registry).decode()
    return {
        (sample.name, sample.labels["direction"]): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if "direction" in sample.labels
    }
