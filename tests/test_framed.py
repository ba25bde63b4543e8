"""Framed-IP-Address outside every pool (RFC 2865 §5.8; vpnaaa/pool.py, vpnaaa/leases.py):
only from a profile's ``framed_networks``, leased so that no two sessions share one and a
restart holds it; never a network or broadcast address, one of the gateway's own or one
in another profile's pool. The store on a fake clock, then the IKE responder in-process
with the AAA server's grant."""

from __future__ import annotations

import ipaddress
import sqlite3

from prometheus_client import generate_latest
from twisted.internet import defer, reactor, task
from twisted.internet.task import Clock
from twisted.trial import unittest

from tests.ike_peer import POOL, Gateway, Initiator
from tests.support import log_lines, state_dir, write_config
from tests.test_ike_lifecycle import Granted, notifies
from tests.test_metrics import Scraped
from vpnaaa import config as configuration
from vpnaaa.authorization import Authorization
from vpnaaa.config import ConfigError
from vpnaaa.ike.common import Profile
from vpnaaa.ike.const import CfgAttribute, CfgType, NotifyType, PayloadType
from vpnaaa.ike.message import Configuration
from vpnaaa.ike.sa import Endpoint
from vpnaaa.leases import SqliteLeases
from vpnaaa.metrics import Metrics
from vpnaaa.pool import AddressPool, PoolExhausted
from vpnaaa.service import HostAddressService

A = ipaddress.IPv4Address
N = ipaddress.IPv4Network
NET = N("10.9.0.0/29")  # the pool: hosts .1 to .6
FRAMED = N("172.16.5.0/24")  # outside it: the AAA server's
GATEWAYS = {A("172.16.5.1")}  # an address of "this host" in the framed network
LIFETIME = 1000.0


class FramedStoreTests(unittest.TestCase):
    def setUp(self) -> None:
        self.path = state_dir(self) / "leases.sqlite"
        self.clock = Clock()
        self.clock.advance(1_000_000)

    def start(self, framed: tuple[N, ...] = (FRAMED,)) -> AddressPool:
        """The daemon starting on the lease file; a restart is another call."""
        leases = SqliteLeases(self.path)
        self.addCleanup(leases.close)
        pool = AddressPool(
            NET,
            leases=leases,
            clock=self.clock.seconds,
            lifetime=LIFETIME,
            framed=framed,
            local=GATEWAYS.__contains__,
        )
        leases.open(self.clock.seconds())
        self.leases = leases
        return pool

    def test_a_framed_address_is_leased_once(self):
        pool = self.start()
        wanted = A("172.16.5.77")
        self.assertEqual(pool.lease("alice", "S1", wanted), wanted)
        self.assertEqual(pool.netmask(wanted), A("255.255.255.0"))
        e = self.assertRaises(PoolExhausted, pool.lease, "bob", "S2", wanted)
        self.assertIn("172.16.5.77 is in use", str(e))
        self.assertEqual(pool.leased, 1)
        self.assertEqual(pool.usage().leased, 0)  # the pool's own addresses untouched
        pool.release(wanted, "S2")  # not bob's lease: nothing happens
        self.assertEqual(pool.framed_usage().leased, 1)
        pool.release(wanted, "S1")
        self.assertEqual(pool.lease("bob", "S2", wanted), wanted)

    def test_what_is_refused(self):
        pool = self.start()
        for address, why in (
            ("172.16.6.9", "outside pool 10.9.0.0/29 and framed_networks (172.16.5.0/24)"),
            ("172.16.5.0", "the network or broadcast address of 172.16.5.0/24"),
            ("172.16.5.255", "the network or broadcast address of 172.16.5.0/24"),
            ("172.16.5.1", "one of the gateway's own"),
        ):
            e = self.assertRaises(PoolExhausted, pool.lease, "alice", "S1", A(address))
            self.assertIn(why, str(e))
        self.assertEqual(pool.leased, 0)

    def test_without_framed_networks_only_pool_addresses(self):
        pool = self.start(framed=())
        e = self.assertRaises(PoolExhausted, pool.lease, "alice", "S1", A("172.16.5.7"))
        self.assertIn("framed_networks (none)", str(e))
        self.assertEqual(pool.lease("alice", "S1", A("10.9.0.3")), A("10.9.0.3"))

    def test_a_restart_holds_it_for_its_user_until_expiry(self):
        pool = self.start()
        wanted = A("172.16.5.77")
        pool.lease("alice", "S1", wanted)
        self.leases.close()  # the daemon dies; alice's client has not noticed
        pool = self.start()
        self.assertEqual(pool.framed_usage().held, 1)
        self.assertRaises(PoolExhausted, pool.lease, "bob", "S2", wanted)
        self.assertEqual(pool.lease("alice", "S3", wanted), wanted)
        self.leases.close()
        self.clock.advance(LIFETIME + 1)  # past the lease's expiry: free, row gone
        pool = self.start()
        self.assertEqual(pool.lease("bob", "S4", wanted), wanted)

    def test_kept_for_its_user_on_a_shutdown_without_answer(self):
        pool = self.start()
        wanted = A("172.16.5.77")
        pool.lease("alice", "S1", wanted)
        pool.keep(wanted, "S1")
        self.assertEqual(pool.framed_usage().held, 1)
        self.assertRaises(PoolExhausted, pool.lease, "bob", "S2", wanted)
        pool.renew(wanted, "S1")  # a kept lease is no longer the session's: unchanged
        self.clock.advance(LIFETIME)
        self.assertEqual(pool.lease("bob", "S2", wanted), wanted)

    def test_a_lease_file_of_the_earlier_schema_gets_the_framed_table(self):
        db = sqlite3.connect(self.path)
        db.executescript(
            "CREATE TABLE leases (pool TEXT NOT NULL, address INTEGER NOT NULL, user TEXT, "
            "session TEXT, expires REAL NOT NULL DEFAULT 0, free_at REAL DEFAULT -1, "
            "PRIMARY KEY (pool, address)) WITHOUT ROWID; "
            f"INSERT INTO leases VALUES ('default', {int(A('10.9.0.3'))}, 'alice', 'S0', 0, 5); "
            "PRAGMA user_version = 1;"
        )
        db.close()
        pool = self.start()
        self.assertEqual(pool.lease("alice", "S1"), A("10.9.0.3"))  # her row is kept
        self.assertEqual(pool.lease("alice", "S2", A("172.16.5.9")), A("172.16.5.9"))
        self.leases.close()
        db = sqlite3.connect(self.path)
        self.addCleanup(db.close)
        self.assertEqual(db.execute("PRAGMA user_version").fetchone(), (2,))

    @defer.inlineCallbacks
    def test_the_hosts_own_addresses(self):
        """Every address counts as the gateway's own until the kernel's list is read;
        then only those on an interface (here: loopback's, not TEST-NET-1's)."""
        host = HostAddressService(reactor)
        self.assertTrue(host.local(A("192.0.2.77")))
        host.startService()
        self.addCleanup(host.stopService)
        for _ in range(200):
            if host.addresses.known:
                break
            yield task.deferLater(reactor, 0.01, lambda: None)
        self.assertTrue(host.local(A("127.0.0.1")))
        self.assertFalse(host.local(A("192.0.2.77")))


OTHER_POOL = N("10.78.0.0/28")


class GatewayTests(unittest.TestCase):
    """The responder as it runs with the relay: the AAA server's Access-Accept grants the
    address (tests/test_ike_lifecycle.py's ``Granted``)."""

    def setUp(self) -> None:
        self.lines = log_lines(self)
        self.gate = Gateway(dpd_delay=0)
        gate = self.gate
        pool = AddressPool(
            POOL, clock=gate.clock.seconds, framed=(FRAMED,), local=GATEWAYS.__contains__
        )
        gate.pool = pool
        self.profile = gate.context.profiles[0]
        self.profile.pool = pool
        staff = AddressPool(OTHER_POOL, name="staff", clock=gate.clock.seconds)
        gate.context.profiles = (self.profile, Profile("staff", staff, matches=frozenset({"x"})))
        self.metrics = Metrics(gate.clock)
        self.metrics.watch_responder(gate.responder)
        self.hosts = iter(range(10, 100))

    def grant(self, address: str) -> Initiator:
        """A client the AAA server grants ``address``, up to its last IKE_AUTH; it asks
        for an address and netmask (as Windows does, §3.15.1)."""
        self.profile.eap = Granted(self.gate.engine, Authorization(framed_ip=A(address)))
        peer = Initiator(self.gate, address=Endpoint(f"192.0.2.{next(self.hosts)}", 500))
        peer.sa_init()
        asks = ((CfgAttribute.INTERNAL_IP4_ADDRESS, b""), (CfgAttribute.INTERNAL_IP4_NETMASK, b""))
        peer.auth_first(cp=Configuration(CfgType.REQUEST, asks))
        peer.authenticate()
        return peer

    def test_the_client_gets_the_framed_address_and_its_netmask(self):
        peer = self.grant("172.16.5.77")
        response = peer.auth_last()
        self.assertEqual(peer.virtual_ip, A("172.16.5.77"))
        (cp,) = response.all(PayloadType.CP)
        attributes = dict(cp.attributes)
        self.assertEqual(attributes[CfgAttribute.INTERNAL_IP4_NETMASK], A("255.255.255.0").packed)
        scraped = Scraped(self.scrape())
        self.assertEqual(scraped("vpnaaa_framed_leased", profile="default"), 1)
        self.assertEqual(scraped("vpnaaa_pool_leased", profile="default"), 0)
        taken = self.grant("172.16.5.77").auth_last()  # never two sessions on one
        self.assertEqual(notifies(taken), [NotifyType.INTERNAL_ADDRESS_FAILURE])
        peer.delete_ike()
        self.assertEqual(self.gate.pool.leased, 0)
        self.assertEqual(self.gate.leaks(), [])
        again = self.grant("172.16.5.77")
        again.auth_last()
        self.assertEqual(again.virtual_ip, A("172.16.5.77"))

    def test_refused_addresses_get_internal_address_failure_and_one_line(self):
        for address, why in (
            ("172.17.0.5", "outside pool 10.77.0.0/28 and framed_networks"),
            ("172.16.5.255", "the network or broadcast address"),
            ("172.16.5.1", "one of the gateway's own"),
            ("10.78.0.3", "is in pool 10.78.0.0/28 of profile staff"),
        ):
            del self.lines[:]
            refused = self.grant(address).auth_last()
            self.assertEqual(notifies(refused), [NotifyType.INTERNAL_ADDRESS_FAILURE])
            said = [line for line in self.lines if "no virtual IP" in line]
            self.assertEqual(len(said), 1, self.lines)
            self.assertIn(f"Framed-IP-Address {address} ", said[0])
            self.assertIn(why, said[0])
        self.assertEqual(self.gate.pool.leased, 0)

    def scrape(self) -> str:
        return generate_latest(self.metrics.registry).decode()


class ConfigTests(unittest.TestCase):
    def load(self, ike: str) -> configuration.Config:
        state = state_dir(self)
        text = f'[general]\nstate_dir = "{state}"\n[radius]\nenabled = false\n[ike]\n{ike}\n'
        return configuration.load(write_config(state / "vpnaaa.toml", text))

    def test_framed_networks_per_profile(self):
        config = self.load(
            'framed_networks = ["172.16.5.0/24"]\n'
            '[[ike.profiles]]\nname = "staff"\nmatch = ["a.example"]\n'
            'framed_networks = ["172.16.6.0/24", "172.16.7.0/25"]\n'
        )
        default, staff = config.ike.profiles
        self.assertEqual(default.framed_networks, (FRAMED,))
        self.assertEqual(staff.framed_networks, (N("172.16.6.0/24"), N("172.16.7.0/25")))

    def test_default_none(self):
        self.assertEqual(self.load("").ike.profiles[0].framed_networks, ())

    def test_a_bad_network_names_the_key(self):
        e = self.assertRaises(ConfigError, self.load, 'framed_networks = ["172.16.5.1/24"]')
        self.assertIn("ike.framed_networks", str(e))
        self.assertIn("is not a list of IPv4 networks", str(e))
