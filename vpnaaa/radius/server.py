"""The RADIUS server's UDP edge: who may talk, is the packet genuine, was it seen before.

One :class:`RadiusProtocol` serves the authentication port (Access-Request, Status-Server)
and one the accounting port (Accounting-Request, Status-Server). Everything that is not a
well-formed packet from a known client with a valid authenticator is dropped with one log
line (RFC 2865 §3, RFC 3579 §3.2); a duplicate gets the cached answer (RFC 5080 §2.2.2).
Access-Requests also pass FreeRADIUS 3.2.5's BlastRADIUS checks (:class:`BlastRadiusChecks`),
and Access-Rejects leave after ``reject_delay`` seconds, on a reactor timer.
"""

from __future__ import annotations

import ipaddress
import itertools
import socket
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IDelayedCall, IListeningPort, IReactorTime
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import LogLevel
from twisted.python.failure import Failure

from vpnaaa import logs
from vpnaaa.config import Auto, RadiusClient
from vpnaaa.radius import wire
from vpnaaa.radius.accounting import AccountingLog
from vpnaaa.radius.handlers import AccessHandler

log = logs.get("vpnaaa.radius")

Address = tuple[Any, ...]  # (host, port), or (host, port, flowinfo, scope) on IPv6


def canonical_host(host: str) -> str:
    """An IPv4 NAS reaching a dual-stack socket appears as ``::ffff:a.b.c.d`` (RFC 4291
    §2.5.5.2, RFC 3493 §3.7): it is the IPv4 client ``a.b.c.d``."""
    if host.startswith("::ffff:") and "." in host:
        return host[7:]
    return host


def listen_udp(
    reactor: Any, port: int, protocol: DatagramProtocol, interface: str
) -> IListeningPort:
    """Bind UDP ``interface``:``port``. An IPv6 address gets a dual-stack socket
    (IPV6_V6ONLY off, RFC 3493 §5.3), whatever net.ipv6.bindv6only says: ``listen = "::"``
    serves IPv4 NASes too."""
    if ":" not in interface:
        return reactor.listenUDP(port, protocol, interface=interface)
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((interface, port))
        sock.setblocking(False)
        return reactor.adoptDatagramPort(sock.fileno(), socket.AF_INET6, protocol)
    except OSError as e:
        raise CannotListenError(interface, port, e) from None
    finally:
        sock.close()  # the reactor holds its own duplicate


class ClientTable:
    """Finds the client entry (and so the shared secret) for a source address.

    Exact host entries are one dictionary lookup; networks are searched most specific
    first, and a match is remembered per host (up to 65,536; never a stranger: a spoofer
    picks its source addresses).
    """

    def __init__(self, clients: Iterable[RadiusClient]) -> None:
        self._networks = sorted(clients, key=lambda c: -c.network.prefixlen)
        self._hosts: dict[str, RadiusClient] = {}

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
        if found is not None and len(self._hosts) < 65536:
            self._hosts[host] = found  # a stranger's address is not kept: spoofers pick many
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


@dataclass(slots=True)
class _Flags:
    require: bool | Auto
    limit: bool | Auto


class BlastRadiusChecks:
    """FreeRADIUS 3.2.5's per-client defences against BlastRADIUS (CVE-2024-3596) for
    Access-Requests whose Message-Authenticator, if any, is already verified.

    ``require_message_authenticator``: true discards a request without one; "auto" decides
    on the client's first request: with Message-Authenticator and no EAP-Message it
    becomes true (the client was upgraded and must always send it), without one it becomes
    false, with both it stays "auto" (EAP needs one anyway, RFC 3579 §3.2).
    ``limit_proxy_state`` (checked unless the first is true): true discards a request with
    Proxy-State and no Message-Authenticator; "auto" becomes false if the first request
    checked has exactly that (a proxy not yet upgraded), true otherwise, and true as soon
    as a signed EAP request arrives while it is undecided. Learned values
    belong to the client entry and last until restart; each change is logged once.
    """

    def __init__(self) -> None:
        self._flags: dict[int, _Flags] = {}  # by id() of the entries the ClientTable holds

    def refuse(self, request: wire.Packet, client: RadiusClient) -> str | None:
        """Why ``request`` must be discarded, or None (after learning from it)."""
        flags = self._flags.get(id(client))
        if flags is None:
            flags = _Flags(client.require_message_authenticator, client.limit_proxy_state)
            self._flags[id(client)] = flags
        signed = request.message_authenticator_at >= 0
        if flags.require is True:
            return None if signed else "no Message-Authenticator, which this client must send"
        proxied = wire.PROXY_STATE in request.attributes
        if flags.limit is True and proxied and not signed:
            return "Proxy-State without Message-Authenticator (limit_proxy_state)"
        if flags.require == "auto":
            if signed and wire.EAP_MESSAGE in request.attributes:
                # The NAS signs what it sends: an unsigned Proxy-State later is forged, so
                # a spoofed first unsigned request must not be what decides (unlike
                # FreeRADIUS, which leaves both undecided here).
                if flags.limit == "auto":
                    flags.limit = True
                    self._learned(client, "limit_proxy_state", True)
                return None
            flags.require = signed
            self._learned(client, "require_message_authenticator", signed)
            if signed:
                return None
        if flags.limit == "auto":
            flags.limit = not (proxied and not signed)
            self._learned(client, "limit_proxy_state", flags.limit)
        return None

    @staticmethod
    def _learned(client: RadiusClient, option: str, value: bool) -> None:
        if value:
            log.info(
                'client {client}: first Access-Request decides {option} = true (was "auto"); '
                "set it in the configuration to keep it across restarts",
                client=client.name,
                option=option,
            )
            return
        log.warn(
            'client {client}: first Access-Request decides {option} = false (was "auto"): '
            "this NAS is open to BlastRADIUS (CVE-2024-3596); upgrade it to send "
            "Message-Authenticator, then set require_message_authenticator = true",
            client=client.name,
            option=option,
        )


Handler = Callable[[wire.Packet, RadiusClient, str], "defer.Deferred[bytes | None] | bytes | None"]


class RadiusProtocol(DatagramProtocol):
    """One RADIUS port: validates datagrams and dispatches them by code.

    ``reject_delay`` seconds pass before an Access-Reject is sent (FreeRADIUS's
    ``reject_delay``): a reactor timer, so the reactor never waits, and a retransmission
    meanwhile is not answered early.
    """

    noisy = False

    def __init__(
        self,
        kind: str,
        clients: ClientTable,
        duplicates: DuplicateCache,
        handlers: dict[int, Handler],
        reject_delay: float = 0.0,
    ) -> None:
        self.kind = kind
        self.clients = clients
        self.duplicates = duplicates
        self.handlers = handlers
        self.reject_delay = reject_delay
        self.blast = BlastRadiusChecks()
        self._drop_log = logs.Throttle(log, duplicates.clock.seconds)
        self._delayed: dict[int, IDelayedCall] = {}
        self._tokens = itertools.count()
        # for the metrics, by configured client name (or "unknown") and packet code
        self.requests: Counter[tuple[str, int]] = Counter()
        self.responses: Counter[tuple[str, int]] = Counter()
        self.dropped: Counter[str] = Counter()

    def stopProtocol(self) -> None:
        """The port closed: delayed rejects are not sent any more."""
        delayed, self._delayed = self._delayed, {}
        for call in delayed.values():
            call.cancel()

    def datagramReceived(self, data: bytes, addr: Address) -> None:
        host, port = canonical_host(addr[0]), addr[1]
        client = self.clients.lookup(host)
        if client is None:
            self.dropped["unknown"] += 1
            self._drop_log.emit(
                "unknown-client",
                LogLevel.warn,
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
        self.requests[client.name, request.code] += 1
        handler = self.handlers.get(request.code)
        if handler is None:
            self._drop(client, host, port, f"code {request.code} is not served on this port")
            return
        problem = self._authenticity(request, client)
        if problem is None and request.code == wire.Code.ACCESS_REQUEST:
            problem = self.blast.refuse(request, client)
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
        try:
            result = handler(request, client, host)
        except wire.TooLarge as e:
            self.duplicates.forget(key, authenticator)
            self._drop(client, host, port, f"not answered: {e}")
            return
        if result is None or isinstance(result, bytes):
            self._send(result, addr, key, authenticator, client.name)
        else:
            result.addCallbacks(
                self._send,
                self._failed,
                callbackArgs=(addr, key, authenticator, client.name),
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
        elif code == wire.Code.ACCESS_REQUEST and wire.EAP_MESSAGE in request.attributes:
            return "EAP-Message without Message-Authenticator (RFC 3579 §3.2)"
        if code == wire.Code.ACCOUNTING_REQUEST and not wire.accounting_authenticator_ok(
            request, client.secret
        ):
            return "bad Request Authenticator (wrong secret?)"
        return None

    def _send(
        self,
        response: bytes | None,
        addr: Address,
        key: tuple[str, int, int],
        authenticator: bytes,
        client: str,
    ) -> None:
        if response is None:
            self.duplicates.forget(key, authenticator)
            return
        self.responses[client, response[0]] += 1
        if self.reject_delay and response[0] == wire.Code.ACCESS_REJECT:
            token = next(self._tokens)
            self._delayed[token] = self.duplicates.clock.callLater(
                self.reject_delay, self._send_delayed, token, response, addr, key, authenticator
            )
            return
        self.duplicates.answered(key, authenticator, response)
        self._write(response, addr)

    def _send_delayed(
        self,
        token: int,
        response: bytes,
        addr: Address,
        key: tuple[str, int, int],
        authenticator: bytes,
    ) -> None:
        del self._delayed[token]
        self.duplicates.answered(key, authenticator, response)
        self._write(response, addr)

    def _write(self, data: bytes, addr: Address) -> None:
        """Send through the socket directly: Twisted's Port.write re-validates the address
        three times per datagram, a tenth of a PAP request's CPU. Errors take its path;
        one it raises (a source no answer reaches: port 0, a broadcast address) is a
        throttled line, never a traceback."""
        sock = getattr(self.transport, "socket", None)
        if sock is not None:
            try:
                sock.sendto(data, addr)
                return
            except OSError:
                pass
        try:
            self.transport.write(data, addr)
        except OSError as e:  # a source no answer reaches (port 0, broadcast): RFC 768
            self._drop_log.emit(
                "send",
                LogLevel.warn,
                "response not sent to {host}:{port}: {error}",
                host=addr[0],
                port=addr[1],
                error=e,
            )

    def _failed(
        self,
        failure: Failure,
        client: RadiusClient,
        addr: Address,
        key: tuple[str, int, int],
        authenticator: bytes,
    ) -> None:
        self.duplicates.forget(key, authenticator)
        host = canonical_host(addr[0])
        if failure.check(wire.TooLarge):
            self._drop(client, host, addr[1], f"not answered: {failure.value}")
            return
        log.failure(
            "internal error answering {client} ({host}:{port}); request dropped",
            failure,
            client=client.name,
            host=host,
            port=addr[1],
        )

    def _drop(self, client: RadiusClient, host: str, port: int, reason: str) -> None:
        """One log line per client and reason every ten seconds, with the count left out."""
        self.dropped[client.name] += 1
        self._drop_log.emit(
            (client.name, reason),
            LogLevel.warn,
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
    clients: ClientTable,
    duplicates: DuplicateCache,
    access: AccessHandler,
    reject_delay: float = 0.0,
) -> RadiusProtocol:
    def access_request(request: wire.Packet, client: RadiusClient, peer: str):
        return access.handle(request, client, f"{client.name} ({peer})")

    return RadiusProtocol(
        "authentication",
        clients,
        duplicates,
        {
            wire.Code.ACCESS_REQUEST: access_request,
            wire.Code.STATUS_SERVER: _status_server(wire.Code.ACCESS_ACCEPT),
        },
        reject_delay,
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
