"""Leases survive a restart of the gateway, proven with strongSwan's charon.

charon as alice is connected when the gateway stops; the DELETE of the shutdown never
reaches her namespace (nftables drops what the gateway sends), so her charon keeps its
session, as a client behind a lossy link would. A new daemon on the same state directory
must not give alice's address to bob (a second charon in a second namespace), and gives
it back to alice when she reconnects (a new charon: the old one crashed without a word).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Generator
from typing import Any

from twisted.internet import defer

from tests.interop import charon
from tests.interop.test_ike_lifecycle_charon import LifecycleCase, options
from tests.support import add_users
from vpnaaa.users import User

DEAF = "vpnaaa_deaf"  # the nftables table that drops what reaches alice's namespace


class RestartTests(LifecycleCase):
    @defer.inlineCallbacks
    def test_a_restart_keeps_a_live_sessions_address_for_its_user(self):
        add_users(
            self.state,
            {u: User.create(u, "wonderland") for u in ("alice", "bob")},
        )
        self.start_gateway(options(shutdown_wait=0.5))
        alice = yield self.client("alice")
        (sa,) = yield alice.list_sas()
        (address,) = sa.local_vips
        self.assertEqual(address, "10.99.7.1")  # the first: bob's without the lease file
        lease_file = self.state / "leases.sqlite"
        self.assertEqual(stat.S_IMODE(os.stat(lease_file).st_mode), 0o600)

        rules = (
            f"add table inet {DEAF}; "
            f"add chain inet {DEAF} input {{ type filter hook input priority 0; }}; "
            f"add rule inet {DEAF} input ip saddr {self.netns.gateway_address} drop"
        )
        yield self.netns.run([charon.NFT, rules])
        yield self.daemon.stopService()
        self.assertNotIn("received DELETE", alice.log_text())
        self.start_gateway()  # a new daemon on the same state directory
        yield self.daemon.ike.started
        self.assertTrue(
            any("1 addresses held for sessions an earlier run" in line for line in self.lines),
            "\n".join(self.lines[-20:]),
        )
        yield self.netns.run([charon.NFT, f"delete table inet {DEAF}"])
        (still,) = yield alice.list_sas()
        self.assertEqual((still.state, still.local_vips), ("ESTABLISHED", [address]))

        bob = yield self.client("bob", (yield self.second_namespace()), eap_id="bob")
        (bob_sa,) = yield bob.list_sas()
        self.assertEqual(bob_sa.local_vips, ["10.99.7.2"])

        yield alice.kill()  # alice's client crashes and reconnects: her address again
        again = yield self.client("alice-again")
        (sa,) = yield again.list_sas()
        self.assertEqual(sa.local_vips, [address])
        users = {s.identity: str(s.virtual_ip) for s in self.responder.sas.values()}
        self.assertEqual(users, {"alice": address, "bob": "10.99.7.2"})

    @defer.inlineCallbacks
    def tearDown(self) -> Generator[defer.Deferred[Any], Any, None]:
        yield self.netns.run([charon.NFT, f"delete table inet {DEAF}"], check=False)
        yield super().tearDown()
