"""Accounting for the gateway's own VPN sessions (RFC 2866, RFC 2869): vpnaaa as the NAS.

::

    the service starts ──────────────────────► Accounting-On    (Acct-Status-Type 7)
    IKE_AUTH done ........ session_started ──► Start            (1)
    every interim interval ──────────────────► Interim-Update   (3, RFC 2869 §2.1)
    DELETE, DPD, lifetime  session_ended ────► Stop             (2, Acct-Terminate-Cause)
    clean shutdown, after every session's Stop ► Accounting-Off (8)
                                                 │
                            local accounting log ┤  (the RADIUS server's AccountingLog:
                                                 │   one record format for both)
             [accounting] servers, in fail-over  ┘  (AccountingClient, UDP)
             order, when configured

:class:`SessionAccounting` is a :class:`~vpnaaa.ike.protocol.SessionObserver` of the IKE
responder. A session is identified by ``sa.session_id`` (Acct-Session-Id, RFC 2866 §5.5),
which IKE SA rekeys keep; what every record says about a session (:class:`SessionFacts`) is
taken when it starts, since its lease is already back in the pool when it ends. Records are
built sans-IO by :func:`attributes` from frozen values (:class:`Traffic` for the kernel
counters); :class:`AccountingClient` and :class:`AccountingService` are the Twisted edge.

Per-session interim interval: a session starts with the Acct-Interim-Interval its
Access-Accept (or the user store) granted (RFC 2869 §5.16, ``sa.authorization``), else its
profile's ``acct_interim_interval``; :meth:`SessionAccounting.set_interim_interval` changes it
for one live session (keyed by Acct-Session-Id) from now on, as a CoA-Request asks (RFC 5176
§3.1). The Class values granted (RFC 2865 §5.25) are echoed in every record, as many of
them as fit (:func:`fitting_classes`).

Kernel counters are per CHILD_SA and vanish with it. The responder reads a CHILD_SA's
counters just before it leaves the kernel while its session lives (rekeyed away, deleted by
the client) and tells :meth:`SessionAccounting.child_retired`: the session's totals are
those retired counts plus its live CHILD_SAs' (RFC 2866 §5.3: counts since the session
began), never reported lower than an earlier record of the same session.
"""

from __future__ import annotations

import ipaddress
import os
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

from twisted.application import service
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import LogLevel

from vpnaaa import logs
from vpnaaa.ike.common import EndCause, Ending
from vpnaaa.radius import wire
from vpnaaa.radius.accounting import AccountingLog
from vpnaaa.radius.eap import MAX_VALUE

if TYPE_CHECKING:
    from vpnaaa.config import Config
    from vpnaaa.ike.protocol import Responder
    from vpnaaa.ike.sa import IkeSa

log = logs.get("vpnaaa.accounting")

START, STOP, INTERIM_UPDATE = 1, 2, 3  # Acct-Status-Type (RFC 2866 §5.1, RFC 2869 §2.1)
ACCOUNTING_ON, ACCOUNTING_OFF = 7, 8  # the NAS's own (RFC 2866 §5.1)
STATUS_NAMES = {
    START: "Start",
    STOP: "Stop",
    INTERIM_UPDATE: "Interim-Update",
    ACCOUNTING_ON: "Accounting-On",
    ACCOUNTING_OFF: "Accounting-Off",
}
WORD = 2**32  # a 4-octet counter wraps here (RFC 2869 §5.1, §5.2: Gigawords count the wraps)
IDENTIFIERS = 256
LOCAL_PEER = "local"  # the local log's "peer" for the gateway's own records

TERMINATE_CAUSE: dict[EndCause, int] = {
    EndCause.CLIENT_DELETE: 1,
    EndCause.DEAD_PEER: 2,
    EndCause.LIFETIME: 5,
    EndCause.SESSION_TIMEOUT: 5,
    EndCause.ADMIN_RESET: 6,
    EndCause.SHUTDOWN: 7,
    EndCause.INTERNAL_ERROR: 9,
    EndCause.GONE: 10,
    EndCause.REPLACED: 13,
    EndCause.REFUSED: 15,
}


def terminate_cause(cause: EndCause) -> int:
    """Acct-Terminate-Cause (RFC 2866 §5.10) for a session's :class:`EndCause`:

    ================  ======================  ==============================================
    EndCause          Acct-Terminate-Cause    why
    ================  ======================  ==============================================
    CLIENT_DELETE     User-Request (1)        the client sent Delete(IKE): its user logged
                                              off (§5.10: "for example with LOGOUT")
    DEAD_PEER         Lost-Carrier (2)        no answer to liveness checks: the VPN's
                                              carrier, the path to the client, is gone
    LIFETIME          Session-Timeout (5)     ike_lifetime, the NAS's own limit on an IKE
                                              SA nobody rekeyed, ran out: a session timer
    SESSION_TIMEOUT   Session-Timeout (5)     the limit RADIUS or a CoA set (RFC 2865 §5.27)
    ADMIN_RESET       Admin-Reset (6)         `vpnaaa disconnect`, a Disconnect-Request, a
                                              user change: "Administrator reset the port"
    SHUTDOWN          Admin-Reboot (7)        the daemon stops: "Administrator is ending
                                              service on the NAS, for example prior to
                                              rebooting"
    INTERNAL_ERROR    NAS-Error (9)           a bug on the gateway's side
    GONE              NAS-Request (10)        removed for no reason listed above (never a
                                              session's own end today)
    REPLACED          Port-Preempted (13)     INITIAL_CONTACT or max_sessions_per_user: the
                                              NAS ended it to give its place to the same
                                              user's new session
    REFUSED           Service-Unavailable     never established (never accounted today):
                      (15)                    the NAS could not provide the service
    ================  ======================  ==============================================
    """
    return TERMINATE_CAUSE[cause]


@dataclass(frozen=True)
class Traffic:
    """Octets and packets of a session both ways: input is what the client sent (received
    "from the port", RFC 2866 §5.3, §5.8), i.e. the inbound ESP SAs; output the outbound."""

    input_octets: int = 0
    output_octets: int = 0
    input_packets: int = 0
    output_packets: int = 0

    @classmethod
    def of(cls, counters: Iterable[Any]) -> Traffic:
        """The sum of kernel counters (``ChildSaCounters``: ``.inbound``/``.outbound``
        with ``.bytes`` and ``.packets``), one per CHILD_SA."""
        total = cls()
        for c in counters:
            total += cls(c.inbound.bytes, c.outbound.bytes, c.inbound.packets, c.outbound.packets)
        return total

    def __add__(self, other: Traffic) -> Traffic:
        return Traffic(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def at_least(self, other: Traffic) -> Traffic:
        """Each count no lower than ``other``'s (counters never go back, RFC 2866 §5.3)."""
        return Traffic(*(max(getattr(self, f.name), getattr(other, f.name)) for f in fields(self)))

    def attributes(self) -> list[tuple[wire.Key, bytes]]:
        """Acct-Input/Output-Octets (RFC 2866 §5.3-5.4) modulo 2^32 with -Gigawords, the
        number of wraps (RFC 2869 §5.1-5.2), and -Packets (§5.8-5.9; 4 octets, no
        Gigawords exist for them: they wrap)."""
        return [
            wire.value("Acct-Input-Octets", self.input_octets % WORD),
            wire.value("Acct-Input-Gigawords", self.input_octets // WORD % WORD),
            wire.value("Acct-Output-Octets", self.output_octets % WORD),
            wire.value("Acct-Output-Gigawords", self.output_octets // WORD % WORD),
            wire.value("Acct-Input-Packets", self.input_packets % WORD),
            wire.value("Acct-Output-Packets", self.output_packets % WORD),
        ]


@dataclass(frozen=True)
class SessionFacts:
    """What every record of one session says about it, taken when it starts."""

    session_id: str  # Acct-Session-Id (RFC 2866 §5.5)
    user: str  # User-Name (RFC 2865 §5.1): the EAP identity
    framed_ip: ipaddress.IPv4Address | None  # Framed-IP-Address (§5.8): the virtual IP
    calling_station: str  # Calling-Station-Id (§5.31): the client's public address
    called_station: str  # Called-Station-Id (§5.30): our address the client reached
    started: float  # reactor seconds at IKE_AUTH's end (Acct-Session-Time counts from it)
    authentic: str  # Acct-Authentic (RFC 2866 §5.6): "RADIUS" (relayed) or "Local"
    classes: tuple[bytes, ...] = ()  # Class (RFC 2865 §5.25) from the Access-Accept

    @classmethod
    def of(cls, sa: IkeSa, authentic: str) -> SessionFacts:
        """A session's facts, its Class values still to be fitted (:func:`fitting_classes`)."""
        return cls(
            sa.session_id,
            sa.identity,
            sa.virtual_ip,
            sa.remote.host,
            sa.local.host,
            sa.established_at or 0.0,
            authentic,
        )


def attributes(
    facts: SessionFacts,
    status: int,
    now: float,
    nas_identifier: str,
    traffic: Traffic | None = None,
    cause: EndCause | None = None,
) -> list[tuple[wire.Key, bytes]]:
    """An Accounting-Request's attributes (RFC 2866 §4.1, §5; RFC 2869 §5) but for
    Acct-Delay-Time, which each transmission adds (:func:`with_delay`). ``now`` (seconds
    since the epoch, the reactor's clock) gives Event-Timestamp (RFC 2869 §5.3) and, but in
    a Start, Acct-Session-Time (RFC 2866 §5.7). ``traffic`` is left out when nothing counts
    it (no kernel datapath); ``cause`` goes into a Stop."""
    found: list[tuple[wire.Key, bytes]] = [
        wire.value("Acct-Status-Type", status),
        wire.value("Acct-Session-Id", facts.session_id),
        (wire.USER_NAME, facts.user.encode()[:MAX_VALUE]),
        wire.value("NAS-Identifier", nas_identifier),
    ]
    found.append(_nas_address(facts.called_station))
    found += [
        wire.value("NAS-Port-Type", "Virtual"),
        wire.value("Service-Type", "Framed-User"),
    ]
    if facts.framed_ip is not None:
        found.append(wire.value("Framed-IP-Address", str(facts.framed_ip)))
    found += [
        wire.value("Calling-Station-Id", facts.calling_station),
        wire.value("Called-Station-Id", facts.called_station),
        wire.value("Acct-Authentic", facts.authentic),
        *((wire.key("Class"), value) for value in facts.classes),
        wire.value("Event-Timestamp", int(now)),
    ]
    if status != START:
        found.append(wire.value("Acct-Session-Time", max(0, int(now - facts.started))))
    if traffic is not None:
        found += traffic.attributes()
    if cause is not None:
        found.append(wire.value("Acct-Terminate-Cause", terminate_cause(cause)))
    return found


def fitting_classes(
    facts: SessionFacts, classes: Sequence[bytes], nas_identifier: str
) -> tuple[bytes, ...]:
    """The Class values (RFC 2865 §5.25) every record of the session can echo unchanged:
    in order, each that fits one attribute (253 octets, §5) and what the session's largest
    record (a Stop with counts, cause and Acct-Delay-Time) leaves of 4096 octets (§3). The
    others are dropped, not cut: a changed Class is no echo, and one record too large for
    the wire would lose every record of the session."""
    if not classes:  # the usual case: no record to measure
        return ()
    bare = replace(facts, classes=())
    largest = attributes(bare, STOP, facts.started, nas_identifier, Traffic(), EndCause.GONE)
    room = wire.MAX_LENGTH - len(wire.accounting_request(0, b"", with_delay(largest, 0)))
    kept = []
    for value in classes:
        if len(value) <= MAX_VALUE and 2 + len(value) <= room:
            kept.append(value)
            room -= 2 + len(value)
    return tuple(kept)


def nas_attributes(
    status: int, now: float, nas_identifier: str, nas_address: str | None, run_id: str
) -> list[tuple[wire.Key, bytes]]:
    """An Accounting-On or Accounting-Off (RFC 2866 §5.1): the NAS starts or stops
    accounting, for no session in particular (a server closes what it still holds open for
    this NAS). NAS-Identifier, and NAS-IP-Address (NAS-IPv6-Address) when the gateway has
    one address (RFC 2865 §5.4, §5.32); Acct-Session-Id (RFC 2866 §5.5, one in every
    Accounting-Request, §5.13) is ``run_id``, the same in this run's On and Off;
    Event-Timestamp (RFC 2869 §5.3)."""
    found = [
        wire.value("Acct-Status-Type", status),
        wire.value("Acct-Session-Id", run_id),
        wire.value("NAS-Identifier", nas_identifier),
    ]
    if nas_address is not None:
        found.append(_nas_address(nas_address))
    found.append(wire.value("Event-Timestamp", int(now)))
    return found


def _nas_address(text: str) -> tuple[wire.Key, bytes]:
    """NAS-IP-Address (RFC 2865 §5.4) or NAS-IPv6-Address (RFC 3162 §2.1) for ``text``."""
    address = ipaddress.ip_address(text)
    name = "NAS-IP-Address" if address.version == 4 else "NAS-IPv6-Address"
    return wire.value(name, str(address))


def with_delay(found: list[tuple[wire.Key, bytes]], delay: float) -> list[tuple[wire.Key, bytes]]:
    """``found`` plus Acct-Delay-Time (RFC 2866 §5.2): whole seconds the record has waited
    to be sent. A retransmission that changes it is a new packet: it needs a new Identifier
    and Request Authenticator (§5.2), which :class:`AccountingClient` gives every one."""
    return [*found, wire.value("Acct-Delay-Time", max(0, int(delay)))]


def status_of(found: Sequence[tuple[wire.Key, bytes]]) -> str:
    """The Acct-Status-Type name of a record's attributes, for log lines."""
    status = int.from_bytes(found[0][1], "big")
    return STATUS_NAMES.get(status, str(status))


# -- the observer ---------------------------------------------------------------------------


@dataclass(eq=False)
class _Live:
    """A session being accounted."""

    facts: SessionFacts
    interval: float  # seconds between Interim-Updates; 0: none
    timer: IDelayedCall | None = field(default=None, repr=False)
    retired: Traffic = Traffic()  # of the session's CHILD_SAs that left the kernel
    reported: Traffic | None = None  # the highest counts an earlier record sent


class SessionAccounting:
    """Start, Interim-Update and Stop for every session of ``responder``.

    ``intervals``: each profile's ``acct_interim_interval`` by name (0: no Interim-Update);
    ``relayed``: the names of the profiles whose users a RADIUS server authenticates
    (Acct-Authentic RADIUS, else Local). Every record goes to ``accounting_log`` and, with a
    ``client``, to the external accounting servers. ``nas_address`` (the gateway's one
    address, if it has one) and ``run_id`` (Acct-Session-Id; random by default) go into the
    Accounting-On and -Off.
    """

    def __init__(
        self,
        responder: Responder,
        accounting_log: AccountingLog,
        reactor: Any,
        *,
        nas_identifier: str = "vpnaaa",
        intervals: Mapping[str, float] | None = None,
        relayed: frozenset[str] = frozenset(),
        client: AccountingClient | None = None,
        nas_address: str | None = None,
        run_id: str | None = None,
    ) -> None:
        self.responder = responder
        self.accounting_log = accounting_log
        self.reactor = reactor
        self.nas_identifier = nas_identifier
        self.intervals = dict(intervals or {})
        self.relayed = relayed
        self.client = client
        self.nas_address = nas_address
        self.run_id = run_id or os.urandom(8).hex().upper()  # as sa.session_id, for the NAS
        self.sessions: dict[str, _Live] = {}  # by Acct-Session-Id
        self._throttle = logs.Throttle(log, reactor.seconds)

    # -- SessionObserver ------------------------------------------------------------------

    def session_started(self, sa: IkeSa) -> None:
        try:
            self._started(sa)
        except Exception:  # a bug here must not break the session
            log.failure("accounting: the Start of session {id} failed", id=sa.session_id)

    def session_ended(self, sa: IkeSa, ending: Ending, counters: list[Any] | None) -> None:
        try:
            self._ended(sa, ending, counters)
        except Exception:
            log.failure("accounting: the Stop of session {id} failed", id=sa.session_id)

    def child_retired(self, sa: IkeSa, counters: Any) -> None:
        """A CHILD_SA of a live session left the kernel (rekeyed away, deleted by the
        client); ``counters`` its last kernel counts, which the session's totals keep."""
        live = self.sessions.get(sa.session_id)
        if live is not None:
            live.retired += Traffic.of([counters])

    def _started(self, sa: IkeSa) -> None:
        profile = sa.profile.name
        authentic = "RADIUS" if profile in self.relayed else "Local"
        granted = sa.authorization
        facts = SessionFacts.of(sa, authentic)
        classes = fitting_classes(facts, granted.classes, self.nas_identifier)
        if len(classes) < len(granted.classes):
            log.warn(
                "accounting: session {id}: {n} of its {total} Class attributes do not fit "
                "a record (4096 octets, RFC 2865 section 3); its records leave them out",
                id=facts.session_id,
                n=len(granted.classes) - len(classes),
                total=len(granted.classes),
            )
        facts = replace(facts, classes=classes)
        live = _Live(facts, granted.interim_interval or self.intervals.get(profile, 0))
        self.sessions[facts.session_id] = live
        self._record(live, START, None)
        self._schedule(live)

    def _ended(self, sa: IkeSa, ending: Ending, counters: list[Any] | None) -> None:
        live = self.sessions.pop(sa.session_id, None)
        if live is None:
            return
        self._cancel(live)
        traffic = live.reported  # None if nothing counts; the last counts if the reading failed
        if counters is not None:
            traffic = self._total(live, Traffic.of(counters))
        self._record(live, STOP, traffic, ending.cause)

    # -- the interim interval seam --------------------------------------------------------

    def set_interim_interval(self, session_id: str, seconds: float) -> bool:
        """Interim-Updates of the live session ``session_id`` (any case) every ``seconds``
        from now on (0: none more): Acct-Interim-Interval from an Access-Accept or a
        CoA-Request (RFC 2869 §5.16, RFC 5176 §3.1). False if no such session is accounted."""
        live = self.sessions.get(session_id.upper())
        if live is None:
            return False
        live.interval = max(0.0, seconds)
        self._cancel(live)
        self._schedule(live)
        return True

    def interim_interval(self, session_id: str) -> float | None:
        """The live session's interval in seconds (0: none), or None if not accounted."""
        live = self.sessions.get(session_id.upper())
        return live.interval if live is not None else None

    # -- Interim-Update -------------------------------------------------------------------

    def _schedule(self, live: _Live) -> None:
        if live.interval > 0:
            live.timer = self.reactor.callLater(live.interval, self._interim, live)

    def _cancel(self, live: _Live) -> None:
        if live.timer is not None and live.timer.active():
            live.timer.cancel()
        live.timer = None

    def _interim(self, live: _Live) -> None:
        """The interval passed: read the kernel counters of the session's current CHILD_SAs
        (its IKE SA may be a rekeyed successor; those being deleted count until they leave
        the kernel), then send the Interim-Update."""
        live.timer = None
        self._schedule(live)
        found = self.responder.find(session_id=live.facts.session_id)
        if not found:
            return  # being deleted: its Stop follows
        counters = getattr(self.responder.installer, "counters", None)
        if counters is None:
            self._record(live, INTERIM_UPDATE, None)
            return
        sa = found[0]
        specs = [*(child.spec for child in sa.children.values()), *sa.deleting.values()]
        d = defer.gatherResults([counters(spec) for spec in specs], consumeErrors=True)
        d.addCallbacks(self._counted, self._not_counted, callbackArgs=(live,), errbackArgs=(live,))
        d.addErrback(lambda failure: log.failure("accounting: Interim-Update failed", failure))

    def _counted(self, counters: list[Any], live: _Live) -> None:
        if self.sessions.get(live.facts.session_id) is not live:
            return  # ended while the kernel was read: the Stop went out
        self._record(live, INTERIM_UPDATE, self._total(live, Traffic.of(counters)))

    def _not_counted(self, failure: Any, live: _Live) -> None:
        self._throttle.emit(
            "counters",
            LogLevel.warn,
            "accounting: kernel counters of session {id} not read ({error}); its "
            "Interim-Update repeats the last counts",
            id=live.facts.session_id,
            error=failure.getErrorMessage(),
        )
        if self.sessions.get(live.facts.session_id) is live:
            self._record(live, INTERIM_UPDATE, live.reported)

    def _total(self, live: _Live, current: Traffic) -> Traffic:
        """The session's counts: its retired CHILD_SAs', plus ``current`` (its CHILD_SAs
        now), never below an earlier record (a reading that missed a CHILD_SA on its way
        out of the kernel)."""
        total = live.retired + current
        return total.at_least(live.reported) if live.reported is not None else total

    # -- records --------------------------------------------------------------------------

    def _record(
        self, live: _Live, status: int, traffic: Traffic | None, cause: EndCause | None = None
    ) -> None:
        """Into the local log (as the RADIUS server logs a NAS's request) and to the
        external servers."""
        if traffic is not None:
            live.reported = traffic
        now = self.reactor.seconds()
        found = attributes(live.facts, status, now, self.nas_identifier, traffic, cause)
        self._emit(found, now, live.facts.session_id)

    def accounting_on(self) -> None:
        """Accounting-On (RFC 2866 §5.1): accounting starts, no session is open."""
        self._nas(ACCOUNTING_ON)

    def accounting_off(self) -> None:
        """Accounting-Off (RFC 2866 §5.1): accounting stops, after every session's Stop."""
        self._nas(ACCOUNTING_OFF)

    def _nas(self, status: int) -> None:
        now = self.reactor.seconds()
        found = nas_attributes(status, now, self.nas_identifier, self.nas_address, self.run_id)
        self._emit(found, now, self.run_id)

    def _emit(self, found: list[tuple[wire.Key, bytes]], now: float, session_id: str) -> None:
        # the log keeps attributes, not the Authenticator: no secret is needed to store it
        packet = wire.accounting_request(0, b"", with_delay(found, 0))
        try:
            self.accounting_log.store(packet, self.nas_identifier, LOCAL_PEER)
        except OSError as e:
            self._throttle.emit(
                "log",
                LogLevel.error,
                "accounting: {status} of session {id} not written to {path}: {error}",
                status=status_of(found),
                id=session_id,
                path=str(self.accounting_log.path),
                error=e,
            )
        if self.client is not None:
            self.client.send(found, now, session_id)


# -- the RADIUS client ----------------------------------------------------------------------


@dataclass(eq=False)
class _Record:
    """One record on its way: queued (no Identifier), then outstanding on ``server``."""

    attributes: list[tuple[wire.Key, bytes]]
    created: float  # reactor seconds: Acct-Delay-Time counts from here
    session_id: str
    first: int  # the server it was first sent to; after the one before it, it is dropped
    server: int
    tries: int = 0  # on ``server``
    ident: int = -1
    authenticator: bytes = b""
    timer: IDelayedCall | None = field(default=None, repr=False)


class AccountingClient(DatagramProtocol):
    """Sends accounting records to ``servers`` (RFC 2866 §2): each is sent ``tries`` times,
    ``timeout`` seconds apart, to the current server, then to the next one in the list,
    which becomes the current one for later records (fail-over, with one log line); a record
    no server acknowledged is dropped with one log line (it is in the local log).
    ``revive`` seconds after a fail-over away from the first server, later records go to it
    again (one log line; 0: never): as FreeRADIUS's home_server ``revive_interval`` marks a
    dead server alive again when nothing else can tell it has come back, so one lost packet
    does not pin the records to a secondary for good.

    Every transmission is a new packet: Acct-Delay-Time grows with the wait, so RFC 2866
    §5.2 wants a new Identifier and Request Authenticator each time. One socket has 256
    Identifiers (RFC 5080 §2.2.2); records beyond those wait in a FIFO queue of at most
    ``max_queue``. When it is full, a Start, Stop, Accounting-On or -Off takes the place of
    the oldest queued Interim-Update (a later one repeats its counts); a record that finds
    none, and an Interim-Update, is not sent (a throttled log line says so).
    """

    noisy = False

    def __init__(
        self,
        servers: Sequence[tuple[str, int]],
        secret: bytes,
        reactor: Any,
        timeout: float = 3.0,
        tries: int = 3,
        max_queue: int = 1024,
        revive: float = 120.0,
    ) -> None:
        self.servers = list(servers)
        self.secret = secret
        self.reactor = reactor
        self.timeout = timeout
        self.tries = tries
        self.max_queue = max_queue
        self.revive = revive
        self.current = 0  # the server new records go to
        self._revive_timer: IDelayedCall | None = None
        self.queue: deque[_Record] = deque()
        self.outstanding: dict[int, _Record] = {}  # by Identifier
        self._free: deque[int] = deque(range(IDENTIFIERS))
        self._throttle = logs.Throttle(log, reactor.seconds)

    @property
    def idle(self) -> bool:
        """Nothing queued or waiting for an answer."""
        return not self.queue and not self.outstanding

    def depth(self) -> dict[tuple[str, int], int]:
        """Records per server: queued for it or sent there and not yet answered."""
        found = dict.fromkeys(self.servers, 0)
        for record in (*self.queue, *self.outstanding.values()):
            found[self.servers[record.server]] += 1
        return found

    def send(self, found: list[tuple[wire.Key, bytes]], now: float, session_id: str) -> bool:
        """Send a record (without Acct-Delay-Time); False if it must wait, the queue is
        full and it cannot take an Interim-Update's place there."""
        must_wait = self.queue or not self._free or self.transport is None
        if must_wait and len(self.queue) >= self.max_queue and not self._evict(found):
            self._throttle.emit(
                "full",
                LogLevel.error,
                "accounting: queue full ({n} records wait, [accounting] max_queue): "
                "{status} of session {id} not sent to the servers (it is in the local log)",
                n=len(self.queue),
                status=status_of(found),
                id=session_id,
            )
            return False
        self.queue.append(_Record(found, now, session_id, self.current, self.current))
        self._pump()
        return True

    def _evict(self, found: list[tuple[wire.Key, bytes]]) -> bool:
        """Make room for ``found`` unless it is an Interim-Update: drop the oldest queued
        Interim-Update (one throttled line); False if there is none."""
        if status_of(found) == STATUS_NAMES[INTERIM_UPDATE]:
            return False
        for record in self.queue:
            if status_of(record.attributes) == STATUS_NAMES[INTERIM_UPDATE]:
                self.queue.remove(record)
                self._throttle.emit(
                    "evicted",
                    LogLevel.warn,
                    "accounting: queue full ([accounting] max_queue): the Interim-Update of "
                    "session {id} is not sent, a {status} takes its place",
                    id=record.session_id,
                    status=status_of(found),
                )
                return True
        return False

    def _pump(self) -> None:
        """Queued records take the free Identifiers, oldest first (none while stopped)."""
        while self.queue and self._free and self.transport is not None:
            self._transmit(self.queue.popleft())

    def _transmit(self, record: _Record) -> None:
        record.tries += 1
        record.ident = self._free.popleft()
        delay = self.reactor.seconds() - record.created
        datagram = wire.accounting_request(
            record.ident, self.secret, with_delay(record.attributes, delay)
        )
        record.authenticator = datagram[4:20]
        self.outstanding[record.ident] = record
        server = self.servers[record.server]
        try:
            self.transport.write(datagram, server)
        except OSError as e:  # no route, a full socket buffer: the timer tries again
            self._throttle.emit(
                "send",
                LogLevel.warn,
                "accounting: sending to {host}:{port} failed: {error}",
                host=server[0],
                port=server[1],
                error=e,
            )
        record.timer = self.reactor.callLater(self.timeout, self._timed_out, record)

    def _release(self, record: _Record) -> None:
        """The record's Identifier is free again (last in line: a late answer to it finds
        it unused for as long as possible)."""
        del self.outstanding[record.ident]
        self._free.append(record.ident)
        if record.timer is not None and record.timer.active():
            record.timer.cancel()
        record.timer = None

    def _timed_out(self, record: _Record) -> None:
        record.timer = None
        self._release(record)
        if record.tries >= self.tries:
            following = (record.server + 1) % len(self.servers)
            if record.server == self.current and len(self.servers) > 1:
                self._fail_over(following)
            if following == record.first:
                self._throttle.emit(
                    "lost",
                    LogLevel.error,
                    "accounting: no server answered the {status} of session {id} "
                    "({tries} tries each); dropped (it is in the local log)",
                    status=status_of(record.attributes),
                    id=record.session_id,
                    tries=self.tries,
                )
                self._pump()
                return
            record.server, record.tries = following, 0
        self.queue.appendleft(record)  # first in line for the Identifier just freed
        self._pump()

    def _fail_over(self, following: int) -> None:
        """Later records go to server ``following``; back to the first ``revive`` seconds
        from now."""
        host, port = self.servers[self.current]
        log.warn(
            "accounting server {host}:{port} did not answer {tries} tries; failing over to {next}",
            host=host,
            port=port,
            tries=self.tries,
            next="{}:{}".format(*self.servers[following]),
        )
        self.current = following
        self._cancel_revive()
        if following != 0 and self.revive > 0:
            self._revive_timer = self.reactor.callLater(self.revive, self._revived)

    def _revived(self) -> None:
        self._revive_timer = None
        log.info(
            "accounting: {seconds:g} s since the fail-over ([accounting] revive_interval): "
            "new records go to {host}:{port} again",
            seconds=self.revive,
            host=self.servers[0][0],
            port=self.servers[0][1],
        )
        self.current = 0

    def _cancel_revive(self) -> None:
        if self._revive_timer is not None and self._revive_timer.active():
            self._revive_timer.cancel()
        self._revive_timer = None

    def startProtocol(self) -> None:
        self._pump()  # what was sent before the socket was open

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        if tuple(addr[:2]) not in self.servers:
            return  # not one of our servers: silently discarded (RFC 2866 §3)
        try:
            response = wire.parse(data)
        except wire.Malformed as e:
            self._drop(addr, "malformed", str(e))
            return
        record = self.outstanding.get(response.ident)
        if record is None or tuple(addr[:2]) != self.servers[record.server]:
            return  # late (answered or timed out already), or from elsewhere
        if response.code != wire.Code.ACCOUNTING_RESPONSE:
            self._drop(addr, "code", f"code {response.code}, not an Accounting-Response")
            return
        if not wire.response_ok(response, record.authenticator, self.secret):
            self._drop(addr, "authenticator", "bad Response Authenticator (same secret?)")
            return
        self._release(record)
        self._pump()

    def _drop(self, addr: Any, kind: str, reason: str) -> None:
        """One throttled line per ``kind`` (a fixed word; ``reason`` has the sender's
        numbers)."""
        self._throttle.emit(
            ("drop", kind),
            LogLevel.warn,
            "accounting: dropped a reply from {host}:{port}: {reason}",
            host=addr[0],
            port=addr[1],
            reason=reason,
        )

    def stopProtocol(self) -> None:
        self._cancel_revive()
        for record in list(self.outstanding.values()):
            self._release(record)


class AccountingService(service.Service):
    """Accounting of the IKE sessions: the observer, the local log if the RADIUS server
    does not share its own, and the UDP socket to the external servers. Starting, it sends
    Accounting-On.

    Stopping, it waits until every session has had its Stop sent and answered (the IKE
    responder's shutdown ends them), at most ``drain`` seconds; then it sends
    Accounting-Off, waits at most one ``timeout`` for its answer, and closes the socket."""

    name = "accounting"

    def __init__(
        self,
        accounting: SessionAccounting,
        reactor: Any,
        *,
        own_log: bool,
        drain: float,
        timeout: float = 3.0,
        interface: str = "0.0.0.0",
    ) -> None:
        self.accounting = accounting
        self.reactor = reactor
        self.own_log = own_log
        self.drain = drain
        self.timeout = timeout
        self.interface = interface
        self.port: Any = None

    def startService(self) -> None:
        super().startService()
        if self.own_log:
            self.accounting.accounting_log.open()
        client = self.accounting.client
        if client is not None:
            self.port = self.reactor.listenUDP(0, client, interface=self.interface)
        servers = ", ".join(f"{h}:{p}" for h, p in client.servers) if client else "none"
        log.info(
            "accounting IKE sessions to {path}; servers: {servers}",
            path=str(self.accounting.accounting_log.path),
            servers=servers,
        )
        self.accounting.accounting_on()

    def reopen(self) -> None:
        """SIGHUP (logrotate): reopen the log if it is this service's own."""
        if self.own_log:
            self.accounting.accounting_log.reopen()

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        done: defer.Deferred[None] = defer.Deferred()
        deadline = self.reactor.seconds() + self.drain
        client = self.accounting.client

        def busy() -> bool:
            return client is not None and not client.idle

        def stops() -> None:
            if (self.accounting.sessions or busy()) and self.reactor.seconds() < deadline:
                self.reactor.callLater(0.05, stops)
                return
            self.accounting.accounting_off()
            off(self.reactor.seconds() + self.timeout)

        def off(until: float) -> None:
            if busy() and self.reactor.seconds() < until:
                self.reactor.callLater(0.05, off, until)
                return
            port, self.port = self.port, None
            if self.own_log:
                self.accounting.accounting_log.close()
            stopped = defer.maybeDeferred(port.stopListening) if port else defer.succeed(None)
            stopped.addBoth(lambda _: done.callback(None))

        stops()
        return done


def accounting_service(
    config: Config, responder: Responder, shared_log: AccountingLog | None, reactor: Any
) -> AccountingService:
    """Account ``responder``'s sessions as ``config`` says: into ``shared_log`` (the RADIUS
    server's) or, without a RADIUS server, a log of its own at the same configured path."""
    accounting = config.accounting
    client = None
    if accounting.servers:
        client = AccountingClient(
            accounting.servers,
            accounting.secret,
            reactor,
            accounting.timeout,
            accounting.tries,
            accounting.max_queue,
            accounting.revive_interval,
        )
    own_log = shared_log is None
    if shared_log is None:
        shared_log = AccountingLog(config.radius.accounting_log, config.radius.accounting_fsync)
    observer = SessionAccounting(
        responder,
        shared_log,
        reactor,
        nas_identifier=accounting.nas_identifier,
        intervals={p.name: p.acct_interim_interval for p in config.ike.profiles},
        relayed=frozenset(p.name for p in config.ike.profiles if p.backend == "radius"),
        client=client,
        nas_address=_one_address(config.ike.listen),
    )
    responder.observers.append(observer)
    ipv6 = any(":" in host for host, _ in accounting.servers)
    return AccountingService(
        observer,
        reactor,
        own_log=own_log,
        drain=config.ike.shutdown_wait + accounting.timeout,
        timeout=accounting.timeout,
        interface="::" if ipv6 else "0.0.0.0",
    )


def _one_address(listen: str) -> str | None:
    """The IKE listen address when it is one (every session's NAS-IP-Address is then that
    address); None for "any" (each session has the address its client reached)."""
    try:
        address = ipaddress.ip_address(listen)
    except ValueError:
        return None
    return None if address.is_unspecified else str(address)
