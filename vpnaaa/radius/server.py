"""The RADIUS server's UDP edge: who may talk, is the packet genuine, was it seen before.

One :class:`RadiusProtocol` serves the authentication port (Access-Request, Status-Server)
and one the accounting port (Accounting-Request, Status-Server). Everything that is not a
well-formed packet from a known client with a valid authenticator is dropped with one log
line (RFC 2865 §3, RFC 3579 §3.2); a duplicate gets the cached answer (RFC 5080 §2.2.2).
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import DatagramProtocol
from twisted.python.failure import Failure

from vpnaaa import logs
from vpnaaa.config import RadiusClient
from vpnaaa.radius import wire
from vpnaaa.radius.accounting import AccountingLog
from vpnaaa.radius.handlers import AccessHandler

log = logs.get("vpnaaa.radius")

Address = tuple[str, int]


class ClientTable:
    """Finds the client entry (and so the shared secret) for a source address.

    Exact host entries are one dictionary lookup; networks are searched most specific
    first, and the answer is remembered per host.
    """

    def __init__(self, clients: Iterable[RadiusClient]) -> None:
        self._networks = sorted(clients, key=lambda c: -c.network.prefixlen)
        self._hosts: dict[str, RadiusClient | None] = {}

    def lookup(self, host: str) -> RadiusClient | None:
        try:
            return self._hosts[host]
        except KeyError:
            pass
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return None
        found = next((c for c in self._networks if address in c.network), None)
        if len(self._hosts) < 65536:
            self._hosts[host] = found
        return found


@dataclass(slots=True)
class _Seen:
    authenticator: bytes
    at: float
    response: bytes | None = None  # None while the request is still being processed


class DuplicateCache:
    """Answers retransmissions without processing them again (RFC 5080 §2.2.2).

    A request is identified by source address, port and Identifier; a new Request
    Authenticator under the same identifier is a new request. Entries live ``window``
    seconds; ``limit`` bounds memory under a flood.
    """

    def __init__(self, clock: IReactorTime, window: float, limit: int = 200_000) -> None:
        self.clock = clock
        self.window = window
        self.limit = limit
        self._entries: OrderedDict[tuple[str, int, int], _Seen] = OrderedDict()

    def check(self, key: tuple[str, int, int], authenticator: bytes) -> _Seen | None:
        """The earlier entry if this is a retransmission; otherwise record it and return None."""
        now = self.clock.seconds()
        self._expire(now)
        seen = self._entries.get(key)
        if seen is not None and seen.authenticator == authenticator:
            return seen
        if seen is not None:
            del self._entries[key]
        self._entries[key] = _Seen(authenticator, now)
        return None

    def answered(self, key: tuple[str, int, int], authenticator: bytes, response: bytes) -> None:
        seen = self._entries.get(key)
        if seen is not None and seen.authenticator == authenticator:
            seen.response = response

    def forget(self, key: tuple[str, int, int], authenticator: bytes) -> None:
        seen = self._entries.get(key)
        if seen is not None and seen.authenticator == authenticator:
            del self._entries[key]

    def _expire(self, now: float) -> None:
        entries = self._entries
        horizon = now - self.window
        while entries:
            oldest = next(iter(entries.values()))
            if oldest.at > horizon and len(entries) < self.limit:
                return
            entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


Handler = Callable[[wire.Packet, RadiusClient, str], "defer.Deferred[bytes] | bytes | None"]


class RadiusProtocol(DatagramProtocol):
    """One RADIUS port: validates datagrams and dispatches them by code."""

    noisy = False

    def __init__(
        self,
        kind: str,
        clients: ClientTable,
        duplicates: DuplicateCache,
        handlers: dict[int, Handler],
    ) -> None:
        self.kind = kind
        self.clients = clients
        self.duplicates = duplicates
        self.handlers = handlers

    def datagramReceived(self, data: bytes, addr: Address) -> None:
        host, port = addr[0], addr[1]
        client = self.clients.lookup(host)
        if client is None:
            log.warn(
                "dropped {n}-octet datagram from {host}:{port}: not a configured client",
                n=len(data),
                host=host,
                port=port,
            )
            return
        try:
            request = wire.parse(data)
        except wire.Malformed as e:
            self._drop(client, host, port, f"malformed: {e}")
            return
        handler = self.handlers.get(request.code)
        if handler is None:
            self._drop(client, host, port, f"code {request.code} is not served on this port")
            return
        problem = self._authenticity(request, client)
        if problem is not None:
            self._drop(client, host, port, problem)
            return
        key = (host, port, request.ident)
        authenticator = request.authenticator
        seen = self.duplicates.check(key, authenticator)
        if seen is not None:
            if seen.response is not None:
                self._write(seen.response, addr)
            return
        result = handler(request, client, host)
        if result is None or isinstance(result, bytes):
            self._send(result, addr, key, authenticator)
        else:
            result.addCallbacks(
                self._send,
                self._failed,
                callbackArgs=(addr, key, authenticator),
                errbackArgs=(client, addr, key, authenticator),
            )

    @staticmethod
    def _authenticity(request: wire.Packet, client: RadiusClient) -> str | None:
        """Why the packet cannot be trusted, or None (RFC 2866 §3, RFC 3579 §3.2, RFC 5997)."""
        code = request.code
        if request.message_authenticator_at >= 0:
            if not wire.message_authenticator_ok(request, client.secret):
                return "bad Message-Authenticator (wrong secret?)"
        elif code == wire.Code.STATUS_SERVER:
            return "Status-Server without Message-Authenticator (RFC 5997 §3)"
        elif code == wire.Code.ACCESS_REQUEST and (
            client.require_message_authenticator or wire.EAP_MESSAGE in request.attributes
        ):
            return "no Message-Authenticator, which this client must send"
        if code == wire.Code.ACCOUNTING_REQUEST and not wire.accounting_authenticator_ok(
            request, client.secret
        ):
            return "bad Request Authenticator (wrong secret?)"
        return None

    def _send(
        self, response: bytes | None, addr: Address, key: tuple[str, int, int], authenticator: bytes
    ) -> None:
        if response is None:
            self.duplicates.forget(key, authenticator)
            return
        self.duplicates.answered(key, authenticator, response)
        self._write(response, addr)

    def _write(self, data: bytes, addr: Address) -> None:
        """Send through the socket directly: Twisted's Port.write re-validates the address
        three times per datagram, a tenth of a PAP request's CPU. Errors take its path."""
        sock = getattr(self.transport, "socket", None)
        if sock is not None:
            try:
                sock.sendto(data, addr)
                return
            except OSError:
                pass
        self.transport.write(data, addr)

    def _failed(
        self,
        failure: Failure,
        client: RadiusClient,
        addr: Address,
        key: tuple[str, int, int],
        authenticator: bytes,
    ) -> None:
        self.duplicates.forget(key, authenticator)
        log.failure(
            "internal error answering {client} ({host}:{port}); request dropped",
            failure,
            client=client.name,
            host=addr[0],
            port=addr[1],
        )

    def _drop(self, client: RadiusClient, host: str, port: int, reason: str) -> None:
        log.warn(
            "dropped {kind} packet from client {client} ({host}:{port}): {reason}",
            kind=self.kind,
            client=client.name,
            host=host,
            port=port,
            reason=reason,
        )


def _status_server(response: wire.Code) -> Handler:
    """RFC 5997 §3: Access-Accept on the auth port, Accounting-Response on the acct port."""

    def status_server(request: wire.Packet, client: RadiusClient, peer: str) -> bytes:
        return wire.reply(request, response, client.secret)

    return status_server


def auth_protocol(
    clients: ClientTable, duplicates: DuplicateCache, access: AccessHandler
) -> RadiusProtocol:
    def access_request(request: wire.Packet, client: RadiusClient, peer: str):
        return access.handle(request, client.secret, f"{client.name} ({peer})")

    return RadiusProtocol(
        "authentication",
        clients,
        duplicates,
        {
            wire.Code.ACCESS_REQUEST: access_request,
            wire.Code.STATUS_SERVER: _status_server(wire.Code.ACCESS_ACCEPT),
        },
    )


def acct_protocol(
    clients: ClientTable, duplicates: DuplicateCache, store: AccountingLog
) -> RadiusProtocol:
    def accounting_request(request: wire.Packet, client: RadiusClient, peer: str) -> bytes | None:
        try:
            store.store(request.raw, client.name, peer)
        except OSError as e:
            log.error(
                "accounting record from {client} ({peer}) not stored, not acknowledged: {error}",
                client=client.name,
                peer=peer,
                error=e,
            )
            return None
        return wire.reply(request, wire.Code.ACCOUNTING_RESPONSE, client.secret)

    return RadiusProtocol(
        "accounting",
        clients,
        duplicates,
        {
            wire.Code.ACCOUNTING_REQUEST: accounting_request,
            wire.Code.STATUS_SERVER: _status_server(wire.Code.ACCOUNTING_RESPONSE),
        },
    )
