"""Virtual address pools (the CP payload's INTERNAL_IP4_ADDRESS, RFC 7296 §3.15).

One lease per session, kept in a :class:`~vpnaaa.leases.LeaseStore` (the daemon's is the
lease file in the state directory): the same user gets its last address back when it is
free; otherwise the address never leased, or released longest ago, goes first (a stale
route of another client is the least likely). An address is never leased twice at
once, and one that a client may still use after a restart stays held until its
lease's expiry: the IKE SA's lifetime bound, ``lifetime`` seconds after the session
was established or last rekeyed.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Iterable

from vpnaaa.leases import LeaseBackend, SqliteLeases, Usage

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
    ) -> None:
        """All host addresses of ``network`` except ``exclude`` (e.g. the gateway's own),
        leased in pool ``name`` of ``leases`` (default: kept in memory only); a lease
        lasts ``lifetime`` seconds (``ike_lifetime``) unless renewed."""
        excluded = set(exclude)
        self.network = network
        self.clock = clock
        self.lifetime = lifetime
        if leases is None:
            memory = SqliteLeases(":memory:")
            memory.open(clock())
            leases = memory
        self.store = leases.pool(name, [a for a in network.hosts() if a not in excluded])

    def lease(self, user: str, session: str, wanted: IPv4 | None = None) -> IPv4:
        """An address for ``session`` (an Acct-Session-Id) of ``user`` (a user_key);
        ``wanted``: that address or none (a RADIUS Framed-IP-Address, RFC 2865 §5.8)."""
        now = self.clock()
        address = self.store.acquire(user, session, now, now + self.lifetime, wanted)
        if address is None and wanted is not None:
            raise PoolExhausted(f"Framed-IP-Address {wanted} is in use or held")
        if address is None:
            usage = self.store.usage(now)
            raise PoolExhausted(
                f"no free address in {self.network}: {usage.leased} leased, {usage.held} "
                "held for sessions an earlier run may have left on clients"
            )
        return address

    def renew(self, address: IPv4, session: str) -> None:
        """The session went on (an IKE rekey): its lease lasts ``lifetime`` from now."""
        self.store.renew(address, session, self.clock() + self.lifetime)

    def release(self, address: IPv4, session: str) -> None:
        """Return a lease (its client knows the session ended); releasing an address the
        session does not hold is a no-op."""
        self.store.release(address, session, self.clock())

    def keep(self, address: IPv4, session: str) -> None:
        """The session ended here but its client may not know: hold the address for its
        user until the lease expires."""
        self.store.keep(address, session)

    def usage(self) -> Usage:
        return self.store.usage(self.clock())

    @property
    def leased(self) -> int:
        return self.usage().leased

    @property
    def free(self) -> int:
        return self.usage().free
