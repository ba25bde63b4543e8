"""RADIUS Dynamic Authorization server (RFC 5176): an AAA server ends or changes sessions.

::

    Dynamic Authorization Client (ISE, FreeRADIUS)      vpnaaa, UDP 3799
      Disconnect-Request (40)  ------------------------>  find the sessions (§3), DELETE to
                               <------------------------  each client; Disconnect-ACK (41)
                                                          or Disconnect-NAK (42) + Error-Cause
      CoA-Request (43)         ------------------------>  Session-Timeout: the session ends
                               <------------------------  then; Acct-Interim-Interval kept
                                                          for accounting; CoA-ACK (44) or
                                                          CoA-NAK (45) + Error-Cause

:class:`DynamicAuthorization` is the sans-IO core: a datagram, its source and the time in,
the reply's bytes (or None: silently discarded) out; the sessions sit behind the small
:class:`Sessions` seam, which the IKE :class:`~vpnaaa.ike.protocol.Responder` is. The
sessions are the IKE sessions, whether a profile authenticates them locally or relays EAP
to a RADIUS server; the RADIUS server's own 802.1X clients hold no session in vpnaaa (their
NAS does), so there is nothing here to disconnect for them. :class:`DaeProtocol` is the
Twisted edge.

What is discarded without an answer, with one rate-limited log line (§6.1: "MUST silently
discard ... packets from untrusted sources"): anything from an address that is no
configured DAE client (before a single octet of it is parsed), malformed packets (a Length
field beyond the datagram or 4096 octets, attributes that overrun it: RFC 2865 §3; a
Message-Authenticator not of 16 octets: RFC 3579 §3.2), codes other than 40 and 43, a wrong
Request Authenticator (§2.3) or Message-Authenticator (§3.4, RFC 3579 §3.2), a missing one
where the client must send it, an Event-Timestamp outside ``replay_window`` (§6.3), a
request naming a NAS-IP-Address before this host's addresses are known, and a reply that
would exceed 4096 octets. Until the Request Authenticator is verified nothing is stored
but, for a source address inside a client entry, the client table's note of that entry
(65,536 addresses at most: :class:`~vpnaaa.radius.server.ClientTable`) and a drop counter,
so a sender without the secret (a spoofed client address included) costs an MD5 per
datagram; the datagrams the reactor reads are at most 8192 octets long (Twisted's
``maxPacketSize``) and parsing stops at the 4096 the Length field may say. A request seen
before (same client, Identifier and Request Authenticator) within ``replay_window`` gets
the same answer again and is not acted on twice (§2.3, RFC 5080 §2.2.2).

Error-Cause (§3.5), always in a NAK, never in an ACK: 401 Unsupported Attribute (an
attribute §3.6 allows in the request that this NAS does not apply), 402 Missing Attribute
(no session identification, nothing to change, Authorize Only without State), 403 NAS
Identification Mismatch, 404 Invalid Request (an attribute §3.6 or §3.2 forbids in the
request, or a second instance of one it allows once), 405 Unsupported Service
(Service-Type in a CoA-Request: no Authorize Only here), 407 Invalid Attribute Value, 503
Session Context Not Found.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING, Protocol, TypeVar

from twisted.internet.protocol import DatagramProtocol
from twisted.logger import LogLevel

from vpnaaa import logs
from vpnaaa.config import RadiusClient
from vpnaaa.ike.common import user_key
from vpnaaa.radius import wire
from vpnaaa.radius.server import Address, ClientTable, canonical_host

if TYPE_CHECKING:
    from vpnaaa.ike.sa import IkeSa

log = logs.get("vpnaaa.dae")

IPv4, IPv6 = ipaddress.IPv4Address, ipaddress.IPv6Address
IPAddress = IPv4 | IPv6
_A = TypeVar("_A", IPv4, IPv6)
ANSWER_MEMORY = 16 * 2**20  # octets of remembered answers, all clients together
ENTRY_COST = 320  # octets one remembered answer costs beside its reply's (see _Answers)
MIN_INTERIM = 60  # RFC 2869 §5.16: Acct-Interim-Interval SHOULD NOT be smaller


class Code(IntEnum):
    """RFC 5176 §2.1, §2.2 packet codes."""

    DISCONNECT_REQUEST = 40
    DISCONNECT_ACK = 41
    DISCONNECT_NAK = 42
    COA_REQUEST = 43
    COA_ACK = 44
    COA_NAK = 45


class ErrorCause(IntEnum):
    """RFC 5176 §3.5 Error-Cause values this server sends."""

    UNSUPPORTED_ATTRIBUTE = 401
    MISSING_ATTRIBUTE = 402
    NAS_IDENTIFICATION_MISMATCH = 403
    INVALID_REQUEST = 404
    UNSUPPORTED_SERVICE = 405
    INVALID_ATTRIBUTE_VALUE = 407
    SESSION_CONTEXT_NOT_FOUND = 503


_ANSWERS = {
    Code.DISCONNECT_REQUEST: (Code.DISCONNECT_ACK, Code.DISCONNECT_NAK),
    Code.COA_REQUEST: (Code.COA_ACK, Code.COA_NAK),
}
_NAMES = {
    Code.DISCONNECT_REQUEST: "Disconnect-Request",
    Code.COA_REQUEST: "CoA-Request",
}

USER_NAME = wire.USER_NAME
FRAMED_IP_ADDRESS = wire.key("Framed-IP-Address")
ACCT_SESSION_ID = wire.key("Acct-Session-Id")
CALLING_STATION_ID = wire.key("Calling-Station-Id")
NAS_IP_ADDRESS = wire.key("NAS-IP-Address")
NAS_IPV6_ADDRESS = wire.key("NAS-IPv6-Address")
NAS_IDENTIFIER = wire.key("NAS-Identifier")
SERVICE_TYPE = wire.key("Service-Type")
SESSION_TIMEOUT = wire.key("Session-Timeout")
ACCT_INTERIM_INTERVAL = wire.key("Acct-Interim-Interval")
EVENT_TIMESTAMP = wire.key("Event-Timestamp")
ERROR_CAUSE = wire.key("Error-Cause")

STATE = wire.key("State")
AUTHORIZE_ONLY = 17  # RFC 5176 §3.2 Service-Type

# §3.6: what a request may carry. What identifies the NAS and the session (§3), the
# framing, and in a CoA-Request State (§3.3) and the changes this NAS applies; each at
# most once but Proxy-State (0+). §2.3: every attribute is mandatory, so anything else
# the table allows is unsupported (401). What no request may carry is an invalid
# request (404): Error-Cause (§3.6: 0 in Disconnect- and CoA-Request; it answers one)
# and Service-Type in a Disconnect-Request (§3.2: MUST NOT).
_FRAMING = frozenset({wire.MESSAGE_AUTHENTICATOR, wire.PROXY_STATE, EVENT_TIMESTAMP})
_NAS = frozenset({NAS_IP_ADDRESS, NAS_IPV6_ADDRESS, NAS_IDENTIFIER})
_SESSION = frozenset({ACCT_SESSION_ID, USER_NAME, FRAMED_IP_ADDRESS, CALLING_STATION_ID})
_CHANGES = frozenset({SESSION_TIMEOUT, ACCT_INTERIM_INTERVAL})
_ALLOWED = {
    Code.DISCONNECT_REQUEST: _FRAMING | _NAS | _SESSION,
    Code.COA_REQUEST: _FRAMING | _NAS | _SESSION | _CHANGES | {STATE},
}
_FORBIDDEN = {
    Code.DISCONNECT_REQUEST: frozenset({ERROR_CAUSE, SERVICE_TYPE}),
    Code.COA_REQUEST: frozenset({ERROR_CAUSE}),
}
_REPEATABLE = frozenset({wire.PROXY_STATE})


class Sessions(Protocol):
    """What the server acts on (the IKE Responder): find, end, limit a session."""

    def find(
        self,
        *,
        session_id: str | None = None,
        user: str | None = None,
        framed_ip: ipaddress.IPv4Address | None = None,
    ) -> list[IkeSa]: ...

    def disconnect(self, sa: IkeSa, by: str = ...) -> None: ...

    def limit(self, sa: IkeSa, seconds: float) -> None: ...


class Intervals(Protocol):
    """Where a CoA-Request's Acct-Interim-Interval goes (RFC 5176 §3.1, RFC 2869 §5.16):
    the accounting of IKE sessions (:class:`vpnaaa.radius.session_accounting.SessionAccounting`)."""

    def set_interim_interval(self, session_id: str, seconds: float) -> bool: ...


class Refused(Exception):
    """The request is answered with a NAK carrying ``cause`` (§3.5)."""

    def __init__(self, cause: ErrorCause, reason: str) -> None:
        super().__init__(reason)
        self.cause = cause


@dataclass(frozen=True)
class Identification:
    """The session identification of a request (§3): every key given must match."""

    session_id: str | None
    user: str | None
    framed_ip: ipaddress.IPv4Address | None
    calling_station: str | None

    def __bool__(self) -> bool:
        keys = (self.session_id, self.user, self.framed_ip, self.calling_station)
        return any(key is not None for key in keys)

    def __str__(self) -> str:
        parts = [
            ("Acct-Session-Id", self.session_id),
            ("User-Name", self.user),
            ("Framed-IP-Address", self.framed_ip),
            ("Calling-Station-Id", self.calling_station),
        ]
        return ", ".join(f"{name} {logs.quoted(str(v))}" for name, v in parts if v is not None)


@dataclass(frozen=True)
class Change:
    """What a CoA-Request changes (§2.2): a new Session-Timeout (RFC 2865 §5.27) and an
    Acct-Interim-Interval (RFC 2869 §5.16), each None when not asked for."""

    session_timeout: int | None
    interim_interval: int | None

    def __bool__(self) -> bool:
        return self.session_timeout is not None or self.interim_interval is not None

    def __str__(self) -> str:
        parts = []
        if self.session_timeout is not None:
            parts.append(f"Session-Timeout {self.session_timeout} s")
        if self.interim_interval is not None:
            parts.append(f"Acct-Interim-Interval {self.interim_interval} s")
        return ", ".join(parts)


def _text(request: wire.Packet, key: wire.Key, name: str) -> str | None:
    raw = request.get(key)  # once at most: _check_attributes
    if raw is None:
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Refused(ErrorCause.INVALID_ATTRIBUTE_VALUE, f"{name} is not UTF-8") from None
    if not text:
        raise Refused(ErrorCause.INVALID_ATTRIBUTE_VALUE, f"empty {name}")
    return text


def _integer(request: wire.Packet, key: wire.Key, name: str) -> int | None:
    raw = request.get(key)  # once at most: _check_attributes
    if raw is None:
        return None
    if len(raw) != 4:
        raise Refused(ErrorCause.INVALID_ATTRIBUTE_VALUE, f"{name} of {len(raw)} octets")
    return int.from_bytes(raw, "big")


def _address(request: wire.Packet, key: wire.Key, name: str, kind: type[_A]) -> _A | None:
    raw = request.get(key)  # once at most: _check_attributes
    if raw is None:
        return None
    try:
        return kind(raw)  # 4 or 16 octets, or AddressValueError
    except ipaddress.AddressValueError:
        raise Refused(ErrorCause.INVALID_ATTRIBUTE_VALUE, f"{name} of {len(raw)} octets") from None


def identification(request: wire.Packet) -> Identification:
    """The session identification attributes (§3), checked for form."""
    return Identification(
        _text(request, ACCT_SESSION_ID, "Acct-Session-Id"),
        _text(request, USER_NAME, "User-Name"),
        _address(request, FRAMED_IP_ADDRESS, "Framed-IP-Address", ipaddress.IPv4Address),
        _text(request, CALLING_STATION_ID, "Calling-Station-Id"),
    )


def change(request: wire.Packet) -> Change:
    """The authorization changes of a CoA-Request, checked: a Session-Timeout of at least a
    second, an Acct-Interim-Interval of at least 60 (RFC 2869 §5.16)."""
    timeout = _integer(request, SESSION_TIMEOUT, "Session-Timeout")
    if timeout == 0:
        raise Refused(ErrorCause.INVALID_ATTRIBUTE_VALUE, "Session-Timeout of 0 s")
    interim = _integer(request, ACCT_INTERIM_INTERVAL, "Acct-Interim-Interval")
    if interim is not None and interim < MIN_INTERIM:
        raise Refused(
            ErrorCause.INVALID_ATTRIBUTE_VALUE,
            f"Acct-Interim-Interval of {interim} s (RFC 2869 §5.16: {MIN_INTERIM} at least)",
        )
    return Change(timeout, interim)


class AddressesUnknown(Exception):
    """This host's addresses are not read yet: a request naming a NAS-IP-Address is
    dropped, and answered when its client sends it again."""


@dataclass(frozen=True)
class NasIdentity:
    """Who this NAS is (§3): the NAS-Identifier a request may name (the one the RADIUS
    relay sends), and ``addresses()``, the NAS-IP-Address / NAS-IPv6-Address values that
    are ours: ``[dae] nas_addresses``, or this host's interface addresses
    (:class:`vpnaaa.kernel.addresses.HostAddresses`), None while those are not read yet.
    The unspecified and loopback addresses are never ours: every host has them, so they
    name no NAS."""

    identifier: str
    addresses: Callable[[], Container[IPAddress] | None]

    def is_ours(self, address: IPAddress) -> bool:
        if address.is_unspecified or address.is_loopback:
            return False
        ours = self.addresses()
        if ours is None:
            raise AddressesUnknown
        return address in ours

    def mismatch(self, request: wire.Packet) -> str | None:
        """Why the request's NAS identification names another NAS, or None."""
        name = _text(request, NAS_IDENTIFIER, "NAS-Identifier")
        if name is not None and name != self.identifier:
            return f"NAS-Identifier {logs.quoted(name)} is not {self.identifier!r}"
        addresses = (
            ("NAS-IP-Address", _address(request, NAS_IP_ADDRESS, "NAS-IP-Address", IPv4)),
            ("NAS-IPv6-Address", _address(request, NAS_IPV6_ADDRESS, "NAS-IPv6-Address", IPv6)),
        )
        for label, address in addresses:
            if address is not None and not self.is_ours(address):
                return f"{label} {address} is not ours"
        return None


_Key = tuple[int, bytes]  # a request's Identifier and Request Authenticator


@dataclass
class _Book:
    """One client's remembered answers, oldest first: key -> (until when, the reply)."""

    entries: OrderedDict[_Key, tuple[float, bytes]] = field(default_factory=OrderedDict)
    octets: int = 0  # what they are charged: ENTRY_COST + the reply's length each


class _Answers:
    """Replies by (client, Identifier, Request Authenticator) for ``window`` seconds: a
    retransmission or a replay gets the same bytes and is not acted on again (§2.3,
    RFC 5080 §2.2.2). Unlike the RADIUS server's DuplicateCache (keyed by source port and
    Identifier, a new authenticator replacing the old), the authenticator is part of the
    key, so a request replayed after the client reused its Identifier is still known.
    §6.3 makes the duplicate window the stale-timestamp window: a request is remembered
    until ``window`` after the later of its arrival and its Event-Timestamp, so it is
    known for as long as its timestamp would pass (a client clock ahead of ours
    included).

    Only authentic requests are remembered, so only a client holding its secret fills
    this table, and it is bounded in octets per client: each answer is charged its
    reply's length plus ``ENTRY_COST`` (320 octets: the key, the tuples and the dictionary
    slot, ~290 measured with tracemalloc on CPython 3.11) against its client's share,
    ``memory`` (``ANSWER_MEMORY``, 16 MiB) divided evenly among the configured client
    entries. A client over its share forgets its own oldest answers first (a replay of
    those is then acted on again: only that client can send one), and no client can push
    out another's. With one client entry that is about 47,000 answers of the usual
    40-odd octets (a NAK with Error-Cause, a little Proxy-State), or 3,800 of the largest
    (4,096 octets, Proxy-State and State echoed); with four, a quarter each.
    """

    def __init__(
        self, clock: Callable[[], float], window: float, clients: int, memory: int
    ) -> None:
        self.clock = clock
        self.window = window
        self.share = memory // max(clients, 1)
        self._books: dict[RadiusClient, _Book] = {}

    def get(self, client: RadiusClient, key: _Key) -> bytes | None:
        book = self._books.get(client)
        if book is None:
            return None
        now = self.clock()
        entries = book.entries
        while entries and next(iter(entries.values()))[0] <= now:
            _, (_, reply) = entries.popitem(last=False)
            book.octets -= ENTRY_COST + len(reply)
        entry = entries.get(key)
        return entry[1] if entry is not None and entry[0] > now else None

    def put(self, client: RadiusClient, key: _Key, reply: bytes, stamped: float | None) -> None:
        """Remember ``reply``; ``stamped``: the request's Event-Timestamp, if any."""
        book = self._books.setdefault(client, _Book())
        old = book.entries.pop(key, None)
        if old is not None:
            book.octets -= ENTRY_COST + len(old[1])
        book.entries[key] = (max(self.clock(), stamped or 0.0) + self.window, reply)
        book.octets += ENTRY_COST + len(reply)
        while book.octets > self.share and book.entries:
            _, (_, dropped) = book.entries.popitem(last=False)
            book.octets -= ENTRY_COST + len(dropped)

    def octets(self, client: RadiusClient) -> int:
        """What ``client``'s remembered answers are charged."""
        book = self._books.get(client)
        return book.octets if book is not None else 0

    def __len__(self) -> int:
        return sum(len(book.entries) for book in self._books.values())


class DynamicAuthorization:
    """The Dynamic Authorization Server (RFC 5176) as a function of its input:
    :meth:`receive` takes a datagram and its source and returns the reply, or None.

    ``clients`` are the configured DAE clients (address or network, secret).
    ``clock`` returns POSIX seconds (the reactor's ``seconds``): Event-Timestamps are
    compared with it. ``replay_window`` (§6.3, default 300 s) bounds how far one may be
    from it, and is how long answers are remembered (``memory`` octets of them at most,
    shared fairly among the clients: :class:`_Answers`); with
    ``require_event_timestamp`` a request without one is discarded (§6.3: "SHOULD be
    configurable").
    """

    def __init__(
        self,
        clients: Sequence[RadiusClient],
        sessions: Sessions,
        nas: NasIdentity,
        clock: Callable[[], float],
        replay_window: float = 300.0,
        require_event_timestamp: bool = False,
        memory: int = ANSWER_MEMORY,
        intervals: Intervals | None = None,
    ) -> None:
        self.clients = ClientTable(clients)
        self.sessions = sessions
        self.nas = nas
        self.clock = clock
        self.replay_window = replay_window
        self.require_event_timestamp = require_event_timestamp
        self.answers = _Answers(clock, replay_window, len(clients), memory)
        self.intervals = intervals  # None: accounting is off, no interval to change
        self.throttle = logs.Throttle(log, clock)

    def receive(self, data: bytes, host: str, port: int) -> bytes | None:
        """The reply to the datagram ``data`` from ``host``:``port``, or None."""
        client = self.clients.lookup(host)
        if client is None:
            self.throttle.emit(
                "unknown-client",
                LogLevel.warn,
                "dropped {n}-octet datagram from {host}:{port}: not a configured DAE client",
                n=len(data),
                host=host,
                port=port,
            )
            return None
        try:
            request = wire.parse(data)
        except wire.Malformed as e:
            self._drop(client, host, "malformed", str(e))
            return None
        problem = self._authenticity(request, client)
        if problem is not None:
            self._drop(client, host, "not authentic", problem)
            return None
        key = (request.ident, request.authenticator)
        answered = self.answers.get(client, key)
        if answered is not None:
            return answered
        problem = self._freshness(request)
        if problem is not None:
            self._drop(client, host, "stale", problem)
            return None
        try:
            reply = self._answer(request, client, host)
        except AddressesUnknown:
            self._drop(client, host, "addresses unknown", "this host's addresses are not read yet")
            return None
        except wire.TooLarge as e:
            # only a NAK can be: an ACK echoes a part of the request (State, Proxy-State),
            # a NAK adds Error-Cause; and a NAK changed nothing, so nothing is left undone
            self._drop(client, host, "too large", f"not answered: {e}")
            return None
        stamp = request.get(EVENT_TIMESTAMP)
        self.answers.put(client, key, reply, int.from_bytes(stamp, "big") if stamp else None)
        return reply

    def _authenticity(self, request: wire.Packet, client: RadiusClient) -> str | None:
        """Why the packet cannot be trusted (§2.3 Request Authenticator, §3.4
        Message-Authenticator, computed with a zero Authenticator field), or None."""
        if request.code not in _ANSWERS:
            return f"code {request.code} is not served on the DAE port"
        # §2.3: MD5(Code+Identifier+Length+16 zero octets+attributes+secret), the
        # Accounting-Request's Request Authenticator (RFC 2866 §3)
        if not wire.accounting_authenticator_ok(request, client.secret):
            return "bad Request Authenticator (wrong secret?)"
        if request.message_authenticator_at >= 0:
            if not wire.message_authenticator_ok(request, client.secret, wire.ZERO_VECTOR):
                return "bad Message-Authenticator"
        elif client.require_message_authenticator is True:
            return "no Message-Authenticator, which this client must send"
        return None

    def _freshness(self, request: wire.Packet) -> str | None:
        """§6.3: an Event-Timestamp not within ``replay_window`` of our clock, or none where
        one is required, and the packet is silently discarded."""
        raw = request.get(EVENT_TIMESTAMP)
        if raw is None:
            if self.require_event_timestamp:
                return "no Event-Timestamp (require_event_timestamp)"
            return None
        if len(raw) != 4:
            return f"Event-Timestamp of {len(raw)} octets"
        off = int.from_bytes(raw, "big") - self.clock()
        if abs(off) > self.replay_window:
            window = self.replay_window
            return f"Event-Timestamp {off:+.0f} s off our clock (replay_window {window:g} s)"
        return None

    def _answer(self, request: wire.Packet, client: RadiusClient, host: str) -> bytes:
        code = Code(request.code)
        ack, nak = _ANSWERS[code]
        # §3.3: State comes back unmodified in the CoA-ACK or CoA-NAK, never interpreted
        # (one instance at most: a second is refused below, and echoes the first)
        state = request.get(STATE) if code == Code.COA_REQUEST else None
        echoed = [(STATE, state)] if state is not None else []
        try:
            found, what = self._act(request, code, client)
        except Refused as e:
            self.throttle.emit(
                (client.name, code, e.cause),
                LogLevel.info,
                "{request} from {client} ({host}): NAK, Error-Cause {cause} ({reason})",
                request=_NAMES[code],
                client=client.name,
                host=host,
                cause=int(e.cause),
                reason=str(e),
            )
            cause = [wire.value("Error-Cause", e.cause)]
            return wire.reply(request, nak, client.secret, echoed + cause)
        log.info(
            "{request} from {client} ({host}): {what} for {n} session(s): {sessions}",
            request=_NAMES[code],
            client=client.name,
            host=host,
            what=what,
            n=len(found),
            sessions=", ".join(f"{sa.session_id} of {logs.quoted(sa.identity)}" for sa in found),
        )
        return wire.reply(request, ack, client.secret, echoed)

    def _act(
        self, request: wire.Packet, code: Code, client: RadiusClient
    ) -> tuple[list[IkeSa], str]:
        """Check the whole request, then act on every matching session (§2.3: all
        attributes are mandatory and a CoA's changes are atomic). Raises
        :class:`Refused` before anything changed.

        §3: "If ... more than one session matches all of the session identification
        attributes, then a CoA-Request or Disconnect-Request packet MUST apply to all
        matching sessions" — the alternative, Error-Cause 508 Multiple Session Selection
        Unsupported, is for a NAS that cannot. This one can, and does: an AAA server
        disconnecting a user (an account disabled, a password leaked) wants every session
        of that user gone, and may know no Acct-Session-Id of them (no accounting to it).
        The ACK's log line names every session it acted on.

        A User-Name only the client claimed (``identity_verified`` false: a relay whose
        Access-Accept named nobody, so the name is the client's own outer identity) is
        no identification: anyone can claim alice's name, and a Disconnect for alice
        must not end their session. Such sessions match only a request that names them
        by Acct-Session-Id or Framed-IP-Address (what this NAS told the AAA server in
        accounting), User-Name and Calling-Station-Id or not."""
        self._check_attributes(request, code)
        who = identification(request)
        wanted = change(request) if code == Code.COA_REQUEST else None
        mismatch = self.nas.mismatch(request)
        if mismatch is not None:
            raise Refused(ErrorCause.NAS_IDENTIFICATION_MISMATCH, mismatch)
        if not who:
            raise Refused(ErrorCause.MISSING_ATTRIBUTE, "no session identification (§3)")
        if wanted is not None and not wanted:
            raise Refused(ErrorCause.MISSING_ATTRIBUTE, "nothing to change")
        if wanted is not None and wanted.interim_interval is not None and self.intervals is None:
            raise Refused(
                ErrorCause.UNSUPPORTED_ATTRIBUTE,
                "Acct-Interim-Interval, and accounting of IKE sessions is off",
            )
        found = self.sessions.find(
            session_id=who.session_id, user=who.user, framed_ip=who.framed_ip
        )
        if who.user is not None:
            found = [sa for sa in found if same_account(who.user, sa.identity)]
        if who.calling_station is not None:
            found = [sa for sa in found if sa.remote.host == who.calling_station]
        claimed = 0
        if who.session_id is None and who.framed_ip is None:
            claimed = sum(not sa.identity_verified for sa in found)
            found = [sa for sa in found if sa.identity_verified]
        if not found:
            reason = f"no session with {who}"
            if claimed:
                reason += (
                    f" whose user name was vouched for ({claimed} with a name only the client "
                    "claimed: name them by Acct-Session-Id or Framed-IP-Address)"
                )
            raise Refused(ErrorCause.SESSION_CONTEXT_NOT_FOUND, reason)
        if wanted is None:
            for sa in found:
                self.sessions.disconnect(sa, f"by RADIUS Disconnect-Request from {client.name}")
            return found, "disconnecting"
        for sa in found:
            if wanted.session_timeout is not None:
                self.sessions.limit(sa, wanted.session_timeout)
            if wanted.interim_interval is not None and self.intervals is not None:
                self.intervals.set_interim_interval(sa.session_id, wanted.interim_interval)
        return found, str(wanted)

    @staticmethod
    def _check_attributes(request: wire.Packet, code: Code) -> None:
        """The attributes against §3.6's table and §3.2, §3.3 (see ``_ALLOWED``)."""
        attributes = request.attributes
        forbidden = [k for k in attributes if k in _FORBIDDEN[code]]
        if forbidden:
            names = ", ".join(map(_attribute_name, forbidden))
            raise Refused(ErrorCause.INVALID_REQUEST, f"{names} not allowed in {_NAMES[code]}")
        service = attributes.get(SERVICE_TYPE)
        if service is not None:  # in a CoA-Request (§3.2); only Authorize Only is defined
            if service == [AUTHORIZE_ONLY.to_bytes(4, "big")] and STATE not in attributes:
                # §3.3: "MUST send a CoA-NAK and SHOULD include ... 402 (Missing Attribute)"
                raise Refused(ErrorCause.MISSING_ATTRIBUTE, "Authorize Only without State")
            raise Refused(ErrorCause.UNSUPPORTED_SERVICE, "Service-Type is not supported")
        allowed = _ALLOWED[code]
        unsupported = [k for k in attributes if k not in allowed]
        if unsupported:
            raise Refused(
                ErrorCause.UNSUPPORTED_ATTRIBUTE,
                "unsupported attribute(s) " + ", ".join(map(_attribute_name, unsupported)),
            )
        repeated = [k for k, v in attributes.items() if len(v) > 1 and k not in _REPEATABLE]
        if repeated:
            names = ", ".join(f"{len(attributes[k])} {_attribute_name(k)}" for k in repeated)
            raise Refused(ErrorCause.INVALID_REQUEST, f"{names} (§3.6: one at most)")

    def _drop(self, client: RadiusClient, host: str, kind: str, reason: str) -> None:
        """One throttled line per client and ``kind`` (a fixed word: the sender chooses
        ``reason``'s numbers, and must not make each packet a line of its own)."""
        self.throttle.emit(
            (client.name, kind),
            LogLevel.warn,
            "dropped DAE packet from client {client} ({host}): {reason}",
            client=client.name,
            host=host,
            reason=reason,
        )


def _attribute_name(key: wire.Key) -> str:
    try:
        return str(wire.DICTIONARY.attrindex.GetBackward(key))
    except KeyError:
        return f"{key[0]}/{key[1]}" if isinstance(key, tuple) else str(key)


def same_account(named: str, identity: str) -> bool:
    """Whether a request's User-Name names the session's user. A session whose name has
    a Windows domain (an AAA server's, through the relay) is matched with the domain, in
    any case: CORPA\\bob and CORPB\\bob are two accounts there. A local user's name has
    none, and matches as the local store compares names: without any DOMAIN\\ prefix."""
    if "\\" in identity:
        return named.casefold() == identity.casefold()
    return user_key(named) == user_key(identity)


class DaeProtocol(DatagramProtocol):
    """The DAE port: datagrams to :class:`DynamicAuthorization`, its replies back."""

    noisy = False

    def __init__(self, core: DynamicAuthorization) -> None:
        self.core = core

    def datagramReceived(self, data: bytes, addr: Address) -> None:
        host = canonical_host(addr[0])
        try:
            reply = self.core.receive(data, host, addr[1])
        except Exception:
            log.failure("internal error answering DAE packet from {host}; dropped", host=host)
            return
        if reply is None:
            return
        try:
            self.transport.write(reply, addr)
        except OSError as e:  # a source no answer reaches (port 0, broadcast): RFC 768
            self.core.throttle.emit(
                "send",
                LogLevel.warn,
                "DAE answer not sent to {host}:{port}: {error}",
                host=host,
                port=addr[1],
                error=e,
            )
