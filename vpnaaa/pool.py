"""Virtual address pools (the CP payload's INTERNAL_IP4_ADDRESS, RFC 7296 §3.15).

One lease per session; a released address goes to the back of the queue, so it is the
last to be handed out again (a client reconnecting quickly does not collide with stale
routes). An address is never leased twice at once.
"""

from __future__ import annotations

import ipaddress
from collections import deque
from collections.abc import Iterable

IPv4 = ipaddress.IPv4Address


class PoolExhausted(Exception):
    """No free address: the client gets INTERNAL_ADDRESS_FAILURE (RFC 7296 §3.10.1)."""


class AddressPool:
    def __init__(self, network: ipaddress.IPv4Network, exclude: Iterable[IPv4] = ()) -> None:
        """All host addresses of ``network`` except ``exclude`` (e.g. the gateway's own)."""
        excluded = set(exclude)
        self.network = network
        self._free = deque(a for a in network.hosts() if a not in excluded)
        self._leased: dict[IPv4, object] = {}

    def lease(self, owner: object) -> IPv4:
        if not self._free:
            raise PoolExhausted(f"all {len(self._leased)} addresses of {self.network} are leased")
        address = self._free.popleft()
        self._leased[address] = owner
        return address

    def release(self, address: IPv4) -> None:
        """Return a lease; releasing an address that is not leased is a no-op."""
        if self._leased.pop(address, None) is not None:
            self._free.append(address)

    def owner(self, address: IPv4) -> object | None:
        return self._leased.get(address)

    @property
    def leased(self) -> int:
        return len(self._leased)

    @property
    def free(self) -> int:
        return len(self._free)
