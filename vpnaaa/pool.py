"""Virtual address pools (the CP payload's INTERNAL_IP4_ADDRESS, RFC 7296 §3.15).

One lease per session, kept in a :class:`~vpnaaa.leases.LeaseStore` (the daemon's is the
lease file in the state directory): the same user gets its last address back when it is
free; otherwise the address never leased, or released longest ago, goes first (a stale
route of another client is the least likely). An address is never leased twice at
once, and one that a client may still use after a restart stays held until its
lease's expiry: the IKE SA's lifetime bound, ``lifetime`` seconds after the session
was established or last rekeyed.

A Framed-IP-Address from the AAA server (RFC 2865 §5.8) outside the pool is given out
only from the profile's ``framed_networks`` (as an ASA honours one from ISE), leased in
the same store, so no two sessions share it either; never a network's own or broadcast
address, nor one of the gateway's own.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Iterable

from vpnaaa.leases import LeaseBackend, LeaseStore, SqliteLeases, Usage

IPv4 = ipaddress.IPv4Address


class PoolExhausted(Exception):
    """No free address: the client gets INTERNAL_ADDRESS_FAILURE (RFC 7296 §3.10.1)."""


class AddressPool:
    def __init__(
        self,
        network: ipaddress.IPv4Network,
        exclude: Iterable[IPv4] = (),
        *,
        leases: LeaseBackend | None = None,
        name: str = "default",
        clock: Callable[[], float] = time.time,
        lifetime: float = 86400.0,
        framed: Iterable[ipaddress.IPv4Network] = (),
        local: Callable[[IPv4], bool] | None = None,
    ) -> None:
        """All host addresses of ``network`` except ``exclude`` (e.g. the gateway's own),
        leased in pool ``name`` of ``leases`` (default: kept in memory only); a lease
        lasts ``lifetime`` seconds (``ike_lifetime``) unless renewed. ``framed``: the
        networks outside it a Framed-IP-Address may come from (``framed_networks``);
        ``local`` tells the gateway's own addresses, which are never given out (required
        with ``framed``)."""
        if framed and local is None:
            raise ValueError("framed networks need local, the test for the gateway's own")
        excluded = set(exclude)
        self.network = network
        self.clock = clock
        self.lifetime = lifetime
        self.framed = tuple(framed)
        self.local = local
        if leases is None:
            memory = SqliteLeases(":memory:")
            memory.open(clock())
            leases = memory
        self.store = leases.pool(name, [a for a in network.hosts() if a not in excluded])
        self.framed_store = leases.framed(name)

    def lease(self, user: str, session: str, wanted: IPv4 | None = None) -> IPv4:
        """An address for ``session`` (an Acct-Session-Id) of ``user`` (a user_key);
        ``wanted``: that address or none (a RADIUS Framed-IP-Address, RFC 2865 §5.8)."""
        now = self.clock()
        store = self.store if wanted is None else self._store(wanted, check=True)
        address = store.acquire(user, session, now, now + self.lifetime, wanted)
        if address is None and wanted is not None:
            raise PoolExhausted(f"Framed-IP-Address {wanted} is in use or held")
        if address is None:
            usage = self.store.usage(now)
            raise PoolExhausted(
                f"no free address in {self.network}: {usage.leased} leased, {usage.held} "
                "held for sessions an earlier run may have left on clients"
            )
        return address

    def _store(self, address: IPv4, check: bool = False) -> LeaseStore:
        """Where ``address`` is leased: the pool's store, or the framed one; with
        ``check``, PoolExhausted unless it may be given out from ``framed``."""
        if address in self.network:
            return self.store
        if check:
            network = next((n for n in self.framed if address in n), None)
            if network is None:
                networks = ", ".join(str(n) for n in self.framed) or "none"
                raise PoolExhausted(
                    f"Framed-IP-Address {address} is outside pool {self.network} and "
                    f"framed_networks ({networks})"
                )
            if network.prefixlen < 31 and address in (
                network.network_address,
                network.broadcast_address,
            ):
                raise PoolExhausted(
                    f"Framed-IP-Address {address} is the network or broadcast address of {network}"
                )
            if self.local is not None and self.local(address):
                raise PoolExhausted(f"Framed-IP-Address {address} is one of the gateway's own")
        return self.framed_store

    def netmask(self, address: IPv4) -> IPv4:
        """The INTERNAL_IP4_NETMASK for ``address`` (§3.15.1): its pool's, or its framed
        network's."""
        network = next((n for n in (self.network, *self.framed) if address in n), self.network)
        return network.netmask

    def renew(self, address: IPv4, session: str) -> None:
        """The session went on (an IKE rekey): its lease lasts ``lifetime`` from now."""
        self._store(address).renew(address, session, self.clock() + self.lifetime)

    def release(self, address: IPv4, session: str) -> None:
        """Return a lease (its client knows the session ended); releasing an address the
        session does not hold is a no-op."""
        self._store(address).release(address, session, self.clock())

    def keep(self, address: IPv4, session: str) -> None:
        """The session ended here but its client may not know: hold the address for its
        user until the lease expires."""
        self._store(address).keep(address, session)

    def usage(self) -> Usage:
        return self.store.usage(self.clock())

    def framed_usage(self) -> Usage:
        """Framed addresses of this pool's sessions, leased and held."""
        return self.framed_store.usage(self.clock())

    @property
    def leased(self) -> int:
        """Addresses its sessions hold: of the pool and framed ones."""
        return self.usage().leased + self.framed_usage().leased

    @property
    def free(self) -> int:
        return self.usage().free
