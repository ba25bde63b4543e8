"""Leases that persist and stick (vpnaaa/leases.py, vpnaaa/pool.py).

The store on a fake clock: a restart is a new store on the same file. Then the IKE
responder in-process (tests/ike_peer.py's Gateway): the same user reconnecting gets its
address back; after a restart another user never gets an address a session may still
use, its own user does; an IKE rekey renews the lease; a shutdown DELETE that gets no
answer holds the address, one that is answered frees it.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import sqlite3
import stat
from pathlib import Path

from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from tests.ike_peer import PASSWORD, PEER, Gateway, Initiator, mschapv2
from tests.support import state_dir, write_config
from vpnaaa import config as configuration
from vpnaaa.config import ConfigError
from vpnaaa.eap.engine import EapEngine
from vpnaaa.eap.packet import Type
from vpnaaa.ike.const import NotifyType, PayloadType, ProtocolId
from vpnaaa.ike.protocol import Timing
from vpnaaa.ike.sa import Endpoint
from vpnaaa.leases import LeaseFileError, SqliteLeases, Usage
from vpnaaa.pool import AddressPool, PoolExhausted
from vpnaaa.users import User, UserStore, write_users

A = ipaddress.IPv4Address
NET = ipaddress.IPv4Network("10.9.0.0/29")  # hosts .1 to .6
LIFETIME = 1000.0


class Logged:
    """The log lines while a test runs."""

    def watch_log(self: unittest.TestCase) -> list[str]:
        lines: list[str] = []

        def observe(event: dict[str, object]) -> None:
            lines.append(formatEvent(event) or "")

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        return lines


class StoreTests(unittest.TestCase, Logged):
    def setUp(self) -> None:
        self.state = state_dir(self)
        self.path = self.state / "leases.sqlite"
        self.clock = Clock()
        self.clock.advance(1_000_000)

    def start(self, network: ipaddress.IPv4Network = NET, **pools: ipaddress.IPv4Network):
        """The daemon starting: a store on the file, the pool(s) on it (``default`` plus
        ``pools`` by name); returns the default pool, the others in ``self.pools``."""
        leases = SqliteLeases(self.path)
        self.addCleanup(leases.close)
        self.pools = {
            name: AddressPool(
                net, leases=leases, name=name, clock=self.clock.seconds, lifetime=LIFETIME
            )
            for name, net in {"default": network, **pools}.items()
        }
        leases.open(self.clock.seconds())
        self.leases = leases
        return self.pools["default"]

    def crash(self) -> None:
        """The process dies: nothing released, the file closed."""
        self.leases.close()

    def rows(self) -> list[tuple]:
        """The table as the next start reads it (the file must be closed)."""
        db = sqlite3.connect(self.path)
        try:
            return db.execute(
                "SELECT pool, address, user, session FROM leases ORDER BY pool, address"
            ).fetchall()
        finally:
            db.close()

    def test_hosts_in_order_never_twice_then_exhausted(self):
        pool = self.start()
        got = [pool.lease(f"user{n}", f"S{n}") for n in range(6)]
        self.assertEqual(got, [A(f"10.9.0.{n}") for n in range(1, 7)])
        self.assertRaises(PoolExhausted, pool.lease, "late", "S7")
        self.assertEqual(pool.usage(), Usage(leased=6, held=0, free=0))

    def test_the_same_user_gets_its_last_address_back_when_it_is_free(self):
        pool = self.start()
        alice = pool.lease("alice", "S1")
        pool.release(alice, "S1")
        bob = pool.lease("bob", "S2")
        self.assertNotEqual(bob, alice)  # an address never leased goes first
        self.assertEqual(pool.lease("alice", "S3"), alice)
        pool.release(bob, "S2")
        self.assertEqual(pool.lease("bob", "S4"), bob)

    def test_released_addresses_go_least_recently_released_first(self):
        pool = self.start(ipaddress.IPv4Network("10.9.0.0/30"))  # .1 and .2
        first, second = pool.lease("a", "S1"), pool.lease("b", "S2")
        pool.release(second, "S2")
        self.clock.advance(1)
        pool.release(first, "S1")
        self.assertEqual(pool.lease("carol", "S3"), second)
        self.assertEqual(pool.lease("dave", "S4"), first)

    def test_a_release_by_another_session_changes_nothing(self):
        pool = self.start()
        address = pool.lease("alice", "S1")
        pool.release(address, "S-other")
        pool.release(A("10.9.0.5"), "S1")
        self.assertEqual(pool.usage(), Usage(leased=1, held=0, free=5))

    def test_after_a_crash_leases_are_held_until_expiry_but_not_from_their_user(self):
        pool = self.start()
        alice = pool.lease("alice", "S1")
        bob = pool.lease("bob", "S2")
        self.clock.advance(100)
        self.crash()
        self.clock.advance(50)  # restarted 150 s after both began: 850 s left
        pool = self.start()
        self.assertEqual(pool.usage(), Usage(leased=0, held=2, free=4))
        others = [pool.lease(f"user{n}", f"S1{n}") for n in range(4)]
        self.assertNotIn(alice, others)
        self.assertNotIn(bob, others)
        self.assertRaises(PoolExhausted, pool.lease, "eve", "S20")  # held is not free
        self.assertEqual(pool.lease("ALICE".lower(), "S21"), alice)  # hers
        self.clock.advance(LIFETIME - 150)  # bob's session cannot be up any more
        self.assertEqual(pool.usage(), Usage(leased=5, held=0, free=1))
        self.assertEqual(pool.lease("eve", "S22"), bob)

    def test_a_renewed_lease_is_held_until_its_new_expiry(self):
        pool = self.start()
        address = pool.lease("alice", "S1")
        self.clock.advance(800)
        pool.renew(address, "S1")  # an IKE rekey: good until 1800
        self.crash()
        self.clock.advance(700)  # 1500: past the first expiry
        pool = self.start()
        self.assertEqual(pool.usage().held, 1)
        self.clock.advance(301)
        self.assertEqual(pool.usage(), Usage(leased=0, held=0, free=6))

    def test_released_leases_survive_a_restart_free_and_sticky(self):
        pool = self.start()
        alice = pool.lease("alice", "S1")
        pool.lease("bob", "S2")
        pool.release(alice, "S1")
        self.leases.close()
        pool = self.start()
        self.assertEqual(pool.usage(), Usage(leased=0, held=1, free=5))
        self.assertEqual(pool.lease("carol", "S3"), A("10.9.0.3"))
        self.assertEqual(pool.lease("alice", "S4"), alice)

    def test_kept_addresses_are_held_for_their_user(self):
        """keep(): the session ended here (shutdown, no answer to our DELETE), the client
        may still use the address."""
        pool = self.start(ipaddress.IPv4Network("10.9.0.0/30"))
        alice = pool.lease("alice", "S1")
        pool.lease("bob", "S2")
        pool.keep(alice, "S1")
        self.assertEqual(pool.usage(), Usage(leased=1, held=1, free=0))
        self.assertRaises(PoolExhausted, pool.lease, "carol", "S3")
        self.assertEqual(pool.lease("alice", "S4"), alice)

    def test_the_table_holds_one_row_per_pool_address_whatever_comes_and_goes(self):
        pool = self.start(staff=ipaddress.IPv4Network("10.8.0.0/30"))
        for n in range(200):  # many users, many sessions, few addresses
            address = pool.lease(f"user{n}", f"S{n}")
            if n % 3:
                pool.release(address, f"S{n}")
            else:
                pool.keep(address, f"S{n}")
                self.clock.advance(LIFETIME)
        self.crash()
        rows = self.rows()
        self.assertEqual(len([r for r in rows if r[0] == "default"]), 6)
        self.assertEqual(len([r for r in rows if r[0] == "staff"]), 2)
        self.assertEqual(len(rows), 8)
        # a smaller pool, a profile gone: their rows go
        self.start(ipaddress.IPv4Network("10.9.0.0/30"))
        self.crash()
        self.assertEqual(
            [(p, a) for p, a, _, _ in self.rows()],
            [("default", 0x0A090001), ("default", 0x0A090002)],
        )

    def test_the_file_is_private(self):
        self.start()
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)

    def test_a_corrupt_file_is_moved_aside_with_one_error_line(self):
        self.path.write_bytes(b"not a database, " * 512)
        lines = self.watch_log()
        pool = self.start()
        self.assertEqual(pool.lease("alice", "S1"), A("10.9.0.1"))
        (aside,) = self.state.glob("leases.sqlite.corrupt-*")
        self.assertEqual(aside.read_bytes(), b"not a database, " * 512)
        (line,) = [line for line in lines if "not a usable lease database" in line]
        self.assertIn(str(self.path), line)
        self.assertIn(f"moved to {aside}", line)

    def test_a_file_that_cannot_be_opened_is_an_error_naming_it(self):
        self.path = self.state / "missing" / "leases.sqlite"
        e = self.assertRaises(LeaseFileError, self.start)
        self.assertIn(f"lease file {self.path}: cannot open it", str(e))

    def test_a_second_daemon_on_the_same_file_is_refused(self):
        self.start()
        e = self.assertRaises(LeaseFileError, SqliteLeases(self.path).open, 0.0)
        self.assertIn(f"lease file {self.path}: cannot open it: database is locked", str(e))

    def test_a_file_store_is_not_copied(self):
        self.start()
        self.assertRaises(TypeError, self.leases.__getstate__)


class ConfigTests(unittest.TestCase):
    def load(self, ike: str):
        state = state_dir(self)
        text = f'[general]\nstate_dir = "{state}"\n[radius]\nenabled = false\n[ike]\n{ike}\n'
        return state, configuration.load(write_config(state / "vpnaaa.toml", text))

    def test_lease_file_in_the_state_directory_by_default(self):
        state, config = self.load("")
        self.assertEqual(config.ike.lease_file, state / "leases.sqlite")
        _, config = self.load('lease_file = ""')
        self.assertIsNone(config.ike.lease_file)

    def test_profile_names_must_differ(self):
        profiles = '[[ike.profiles]]\nname = "staff"\nmatch = ["a.example"]\n' * 2
        e = self.assertRaises(ConfigError, self.load, profiles)
        self.assertIn("profiles[1].name", str(e))
        self.assertIn("'staff' is taken", str(e))


@functools.cache
def _alice_and_bob(directory: str) -> UserStore:
    path = Path(directory) / "users.json"
    write_users(path, {u: User.create(u, PASSWORD) for u in ("alice", "bob")})
    store = UserStore(path)
    store.load()
    return store


BOB = Endpoint("192.0.2.9", 4500)


class GatewayTests(unittest.TestCase):
    """The responder with a lease file; a restart is a new gateway on the same file."""

    def setUp(self) -> None:
        self.state = state_dir(self)
        self.users = _alice_and_bob(str(state_dir(self)))

    def gateway(self, **options) -> Gateway:
        """A gateway whose clients are alice and bob, its leases in the state directory."""
        leases = SqliteLeases(self.state / "leases.sqlite")
        gate = Gateway(leases=leases, **options)
        leases.open(gate.clock.seconds())
        self.addCleanup(leases.close)
        gate.engine = EapEngine(
            [(Type.MSCHAPV2, functools.partial(mschapv2, self.users))], gate.clock
        )
        gate.context.profiles[0].eap = gate.engine
        self.leases = leases
        return gate

    def connect(self, gate: Gateway, user: str, address: Endpoint = PEER) -> Initiator:
        peer = Initiator(gate, address=address)
        peer.connect(user)
        self.assertTrue(peer.eap_succeeded)
        return peer

    def test_the_same_user_reconnecting_gets_the_same_address(self):
        gate = self.gateway()
        first = self.connect(gate, "alice")
        bob = self.connect(gate, "bob", BOB)
        first.delete_ike()
        again = self.connect(gate, "alice")
        self.assertEqual(again.virtual_ip, first.virtual_ip)
        self.assertNotEqual(bob.virtual_ip, first.virtual_ip)
        self.assertEqual(gate.leaks(), [])

    def test_after_a_restart_another_user_never_gets_a_held_address(self):
        gate = self.gateway(pool=ipaddress.IPv4Network("10.99.0.0/30"))  # .1 and .2
        alice = self.connect(gate, "alice")
        self.assertEqual(alice.virtual_ip, A("10.99.0.1"))
        self.leases.close()  # the daemon dies; alice's client has not noticed
        gate = self.gateway(pool=ipaddress.IPv4Network("10.99.0.0/30"))
        bob = self.connect(gate, "bob", BOB)
        self.assertEqual(bob.virtual_ip, A("10.99.0.2"))
        again = Initiator(gate, address=BOB)  # bob's second device: nothing is free
        response = again.connect("bob")
        self.assertIn(NotifyType.INTERNAL_ADDRESS_FAILURE, _notifies(response))
        self.assertEqual(self.connect(gate, "alice").virtual_ip, A("10.99.0.1"))

    def test_an_ike_rekey_renews_the_lease(self):
        gate = self.gateway(timing=Timing(ike_lifetime=LIFETIME))
        peer = self.connect(gate, "alice")
        gate.clock.advance(600)
        peer.rekey_ike()
        self.leases.close()
        gate = self.gateway()
        gate.clock.advance(LIFETIME + 100)  # past the first expiry, not the renewed one
        self.assertEqual(gate.pool.usage().held, 1)
        gate.clock.advance(500)
        self.assertEqual(gate.pool.usage().held, 0)

    def test_shutdown_frees_what_clients_answered_for_and_holds_the_rest(self):
        gate = self.gateway()
        answering = self.connect(gate, "alice")
        self.connect(gate, "bob", BOB)
        stopped = gate.responder.shutdown()
        (request,) = answering.gateway_requests()
        self.assertEqual(request.get(PayloadType.DELETE).protocol, ProtocolId.IKE)
        answering.answer(request)
        gate.clock.advance(Timing().shutdown_wait)
        self.assertTrue(stopped.called)
        self.assertEqual(gate.pool.usage().leased, 0)
        self.assertEqual(gate.pool.usage().held, 1)  # bob's client may not know
        self.leases.close()
        gate = self.gateway()
        self.assertEqual(self.connect(gate, "alice").virtual_ip, answering.virtual_ip)


def _notifies(response) -> list[int]:
    return [n.notify_type for n in response.all(PayloadType.NOTIFY)]
