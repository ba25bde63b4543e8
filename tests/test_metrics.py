"""The metrics (vpnaaa.metrics) as Prometheus reads them: the registry's text exposition,
parsed by prometheus-client's own parser, while the scripted initiator (tests/ike_peer.py)
brings sessions up and down on the gateway's fake clock."""

from __future__ import annotations

import ipaddress

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor, threads
from twisted.internet.defer import succeed
from twisted.trial import unittest

from tests.ike_peer import PEER, POOL, USER, Gateway, Initiator, RecordingPort, Suite
from vpnaaa.ike.const import DhGroup, EncrId, NotifyType, PayloadType
from vpnaaa.ike.message import Notify, TrafficSelector
from vpnaaa.ike.protocol import HALF_OPEN_TIMEOUT, Limits, Timing
from vpnaaa.ike.sa import Endpoint
from vpnaaa.kernel.xfrm_installer import ChildSaCounters, SaCounters
from vpnaaa.metrics import Metrics

DPD = 30.0
TIMING = Timing(retransmit_timeout=4.0, retransmit_base=1.8, retransmit_tries=5)
DEFAULT = {"profile": "default"}


def parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, by name and labels, through prometheus-client's
    text parser."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


class Scraped:
    def __init__(self, text: str) -> None:
        self.text = text
        self.samples = parse(text)

    def __call__(self, name: str, **labels: str) -> float:
        """One sample's value; a counter never incremented has no sample: 0."""
        return self.samples.get((name, tuple(sorted(labels.items()))), 0.0)


class CountingInstaller:
    """The gateway's NullInstaller plus what the kernel installer adds: ESP counters per
    CHILD_SA, here 1000 octets and 10 packets in, 2000 and 20 out."""

    def __init__(self, installer):
        self.installer = installer

    def counters(self, spec):
        def sa(octets, packets):
            return SaCounters(octets, packets, 0, 0, 0, 0, 0)

        return succeed(ChildSaCounters(sa(1000, 10), sa(2000, 20)))

    def __getattr__(self, name):
        return getattr(self.installer, name)


class MetricsTestCase(unittest.TestCase):
    def gateway(self, **options) -> Gateway:
        options.setdefault("dpd_delay", DPD)
        self.gate = Gateway(timing=TIMING, **options)
        self.metrics = Metrics(self.gate.clock)
        self.metrics.watch_responder(self.gate.responder)
        return self.gate

    def scrape(self) -> Scraped:
        return Scraped(generate_latest(self.metrics.registry).decode())

    def connected(self, address: Endpoint = PEER) -> Initiator:
        return self.gate.connected(address)


class SessionMetricsTests(MetricsTestCase):
    def test_a_session_comes_and_goes(self):
        self.gateway()
        before = self.scrape()
        self.assertEqual(before("vpnaaa_sessions", **DEFAULT), 0)
        self.assertEqual(before("vpnaaa_pool_leased", **DEFAULT), 0)
        hosts = POOL.num_addresses - 2  # a /28: network and broadcast are not leased
        self.assertEqual(before("vpnaaa_pool_size", **DEFAULT), hosts)
        self.assertEqual(before("vpnaaa_pool_free", **DEFAULT), hosts)
        self.assertEqual(before("vpnaaa_ike_sas"), 0)

        peer = self.connected()
        up = self.scrape()
        self.assertEqual(up("vpnaaa_sessions", **DEFAULT), 1)
        self.assertEqual(up("vpnaaa_sessions_started_total", **DEFAULT), 1)
        self.assertEqual(up("vpnaaa_pool_leased", **DEFAULT), 1)
        self.assertEqual(up("vpnaaa_pool_free", **DEFAULT), hosts - 1)
        self.assertEqual((up("vpnaaa_ike_sas"), up("vpnaaa_ike_half_open")), (1, 0))
        ok = {"initiator": "client", "result": "ok"}
        self.assertEqual(up("vpnaaa_ike_exchanges_total", exchange="IKE_SA_INIT", **ok), 1)
        # IKE_AUTH: IDi; EAP Identity; MSCHAPv2 Response; its Success ack; AUTH (§2.16)
        self.assertEqual(up("vpnaaa_ike_exchanges_total", exchange="IKE_AUTH", **ok), 5)
        eap = {"backend": "local", "method": "mschapv2", "result": "success"}
        self.assertEqual(up("vpnaaa_eap_outcomes_total", **eap), 1)
        self.assertEqual(up("vpnaaa_eap_conversations", backend="local"), 0)

        peer.delete_ike()
        down = self.scrape()
        self.assertEqual(down("vpnaaa_sessions", **DEFAULT), 0)
        self.assertEqual(down("vpnaaa_pool_leased", **DEFAULT), 0)
        self.assertEqual(down("vpnaaa_ike_sas"), 0)
        self.assertEqual(down("vpnaaa_ike_exchanges_total", exchange="INFORMATIONAL", **ok), 1)
        ends = {"profile": "default", "cause": "client_delete"}
        self.assertEqual(down("vpnaaa_session_ends_total", **ends), 1)
        self.assertEqual(down("vpnaaa_session_bytes_total", direction="in"), 0)  # no kernel
        self.assertNotIn(USER, down.text)  # no user name in a label
        self.assertNotIn(PEER.host, down.text)  # nor an address

    def test_a_wrong_password_is_a_refused_exchange_and_an_eap_failure(self):
        self.gateway()
        peer = Initiator(self.gate)
        peer.sa_init()
        peer.auth_first()
        peer.authenticate(password="wrong")
        scraped = self.scrape()
        refused = {"exchange": "IKE_AUTH", "initiator": "client", "result": "AUTHENTICATION_FAILED"}
        self.assertEqual(scraped("vpnaaa_ike_exchanges_total", **refused), 1)
        eap = {"backend": "local", "method": "mschapv2", "result": "failure"}
        self.assertEqual(scraped("vpnaaa_eap_outcomes_total", **eap), 1)
        self.assertEqual(scraped("vpnaaa_sessions_started_total", **DEFAULT), 0)
        self.assertEqual(scraped("vpnaaa_ike_sas"), 0)

    def test_a_dead_peer_is_counted_by_its_cause(self):
        """No answer to the liveness check and its five retransmissions (§2.4)."""
        self.gateway()
        self.connected()
        self.gate.clock.advance(DPD)
        for wait in (4.0, 7.2, 12.96, 23.328, 41.9904, 75.58272):
            self.gate.clock.advance(wait + 0.01)
        scraped = self.scrape()
        self.assertEqual(scraped("vpnaaa_sessions", **DEFAULT), 0)
        dead = {"profile": "default", "cause": "dead_peer"}
        self.assertEqual(scraped("vpnaaa_session_ends_total", **dead), 1)
        timeout = {"exchange": "INFORMATIONAL", "initiator": "gateway", "result": "timeout"}
        self.assertEqual(scraped("vpnaaa_ike_exchanges_total", **timeout), 1)
        drops = [k for k in scraped.samples if k[0] == "vpnaaa_ike_exchanges_total"]
        gateway = [k for k in drops if ("initiator", "gateway") in k[1]]
        self.assertEqual(len(gateway), 1, gateway)  # no "ok" for the unanswered check

    def test_traffic_of_ended_sessions_from_the_kernel_counters(self):
        self.gateway()
        self.gate.responder.installer = CountingInstaller(self.gate.installer)
        for host in ("198.51.100.7", "198.51.100.8"):
            self.connected(Endpoint(host, 500)).delete_ike()
        scraped = self.scrape()
        self.assertEqual(scraped("vpnaaa_session_bytes_total", direction="in"), 2 * 1000)
        self.assertEqual(scraped("vpnaaa_session_bytes_total", direction="out"), 2 * 2000)
        self.assertEqual(scraped("vpnaaa_session_packets_total", direction="in"), 2 * 10)
        self.assertEqual(scraped("vpnaaa_session_packets_total", direction="out"), 2 * 20)


def exchanges(scraped: Scraped, exchange: str, initiator: str) -> dict[str, float]:
    """The results counted for one exchange type and initiator: {result: count}."""
    found = {}
    for (name, labels), value in scraped.samples.items():
        named = dict(labels)
        if (
            name == "vpnaaa_ike_exchanges_total"
            and named["exchange"] == exchange
            and named["initiator"] == initiator
        ):
            found[named["result"]] = value
    return found


class ExchangeResultTests(MetricsTestCase):
    """Each exchange counted once with its result: ok, the error notify that refused it
    (ours or the client's), or timeout; the gateway's own requests apart (§1.4, §2.4)."""

    def test_create_child_sa_refused_by_us_is_counted_by_its_notify(self):
        self.gateway()
        peer = self.connected()
        elsewhere = ipaddress.IPv4Address("192.0.2.99")  # not the client's virtual IP
        peer.create_child(tsi=(TrafficSelector(elsewhere, elsewhere),))  # §2.9
        peer.create_child(rekey=0x0BADC0DE)  # a CHILD_SA we do not have (§1.3.3)
        peer.create_child()
        peer.create_child(group=DhGroup.MODP1024)  # not in the ESP policy
        self.assertEqual(
            exchanges(self.scrape(), "CREATE_CHILD_SA", "client"),
            {"TS_UNACCEPTABLE": 1, "CHILD_SA_NOT_FOUND": 1, "ok": 1, "NO_PROPOSAL_CHOSEN": 1},
        )

    def test_ike_sa_init_refused_is_counted_by_its_notify(self):
        self.gateway()
        no_integrity = Suite(encr=EncrId.AES_CBC, key_bits=128)  # CBC needs an INTEG
        response = Initiator(self.gate, suite=no_integrity).sa_init()
        self.assertIsNotNone(response.notify(NotifyType.NO_PROPOSAL_CHOSEN))
        self.assertEqual(
            exchanges(self.scrape(), "IKE_SA_INIT", "client"), {"NO_PROPOSAL_CHOSEN": 1}
        )

    def test_the_gateways_liveness_checks_and_delete(self):
        self.gateway()
        peer = self.connected()
        self.gate.clock.advance(DPD)
        (check,) = peer.gateway_requests()
        peer.answer(check)
        self.gate.clock.advance(DPD)
        (check,) = peer.gateway_requests()
        peer.answer(check, [(PayloadType.NOTIFY, Notify(NotifyType.INVALID_SYNTAX))])
        for unknown in (8191, 8192):  # error types no RFC names: one label value
            self.gate.clock.advance(DPD)
            (check,) = peer.gateway_requests()
            peer.answer(check, [(PayloadType.NOTIFY, Notify(unknown))])
        self.assertEqual(
            exchanges(self.scrape(), "INFORMATIONAL", "gateway"),
            {"ok": 1, "INVALID_SYNTAX": 1, "other": 2},
        )
        (sa,) = self.gate.responder.sessions()
        self.gate.responder.disconnect(sa)
        peer.answer_all()  # the client answers our Delete
        scraped = self.scrape()
        self.assertEqual(exchanges(scraped, "INFORMATIONAL", "gateway")["ok"], 2)
        self.assertEqual(exchanges(scraped, "INFORMATIONAL", "client"), {})

    def test_the_gateways_child_sa_rekey_refused_then_done(self):
        self.gateway(rekey="gateway", child_lifetime=1000, dpd_delay=0)
        peer = self.connected()
        self.gate.clock.advance(850)  # the CHILD_SA's soft lifetime: our rekey leaves
        (rekey,) = peer.gateway_requests()
        peer.answer_rekey(rekey, refuse=NotifyType.NO_PROPOSAL_CHOSEN)
        self.assertEqual(
            exchanges(self.scrape(), "CREATE_CHILD_SA", "gateway"), {"NO_PROPOSAL_CHOSEN": 1}
        )
        self.gate.clock.advance(30)  # §2.25: tried again 10 to 30 s later
        (rekey,) = peer.gateway_requests()
        peer.answer_rekey(rekey)
        (delete,) = peer.gateway_requests()  # then the old CHILD_SA goes (§2.8)
        peer.answer(delete, [(PayloadType.DELETE, delete.get(PayloadType.DELETE))])
        scraped = self.scrape()
        self.assertEqual(
            exchanges(scraped, "CREATE_CHILD_SA", "gateway"), {"NO_PROPOSAL_CHOSEN": 1, "ok": 1}
        )
        self.assertEqual(exchanges(scraped, "INFORMATIONAL", "gateway"), {"ok": 1})
        self.assertEqual(exchanges(scraped, "CREATE_CHILD_SA", "client"), {})


class AdmissionMetricsTests(MetricsTestCase):
    def test_half_open_sas_and_cookie_mode(self):
        """Above ike.cookie_threshold half-open SAs (here 2) new clients must return a
        COOKIE (§2.6): cookie mode is 1 until they expire."""
        self.gateway(limits=Limits(cookie_threshold=2))
        for host in ("198.51.100.7", "198.51.100.8"):
            Initiator(self.gate, address=Endpoint(host, 500)).sa_init()
        scraped = self.scrape()
        self.assertEqual(scraped("vpnaaa_ike_half_open"), 2)
        self.assertEqual(scraped("vpnaaa_ike_cookie_mode"), 1)
        self.gate.clock.advance(HALF_OPEN_TIMEOUT + 1)
        scraped = self.scrape()
        self.assertEqual(scraped("vpnaaa_ike_half_open"), 0)
        self.assertEqual(scraped("vpnaaa_ike_cookie_mode"), 0)
        self.assertEqual(scraped("vpnaaa_ike_drops_total", reason="half-open-expired"), 2)

    def test_drops_by_reason(self):
        self.gateway()
        port = RecordingPort()
        for _ in range(3):
            self.gate.responder.receive(b"\x00" * 10, PEER, port)
        scraped = self.scrape()
        self.assertEqual(scraped("vpnaaa_ike_drops_total", reason="malformed"), 3)
        self.assertEqual(port.sent, [])


class ThreadTests(MetricsTestCase):
    def test_a_scrape_from_the_thread_pool_reads_in_the_reactor_thread(self):
        """prometheus-client's MetricsResource collects in the reactor's thread pool: the
        figures are still read in the reactor thread (the test's), and right."""
        self.gateway()
        self.connected()
        self.metrics.reactor = reactor
        d = threads.deferToThread(generate_latest, self.metrics.registry)

        def check(text: bytes) -> None:
            self.assertEqual(Scraped(text.decode())("vpnaaa_sessions", **DEFAULT), 1)

        return d.addCallback(check)
