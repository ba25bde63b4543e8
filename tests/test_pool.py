"""Virtual address pools."""

import ipaddress

from twisted.trial import unittest

from vpnaaa.pool import AddressPool, PoolExhausted


class PoolTests(unittest.TestCase):
    def setUp(self):
        self.pool = AddressPool(
            ipaddress.ip_network("10.9.0.0/29"), exclude=[ipaddress.ip_address("10.9.0.1")]
        )

    def test_hosts_without_the_excluded_in_order(self):
        leased = [str(self.pool.lease(f"user{n}", f"S{n}")) for n in range(5)]
        self.assertEqual(leased, ["10.9.0.2", "10.9.0.3", "10.9.0.4", "10.9.0.5", "10.9.0.6"])
        self.assertRaises(PoolExhausted, self.pool.lease, "late", "S5")

    def test_never_twice_and_released_addresses_come_last(self):
        first = self.pool.lease("a", "S1")
        second = self.pool.lease("b", "S2")
        self.pool.release(first, "S1")
        self.pool.release(first, "S1")  # a second release changes nothing
        seen = [self.pool.lease(f"user{n}", f"S{n + 3}") for n in range(4)]
        self.assertNotIn(second, seen)
        self.assertEqual(seen[-1], first)  # the released one comes last
        self.assertEqual((self.pool.leased, self.pool.free), (5, 0))
