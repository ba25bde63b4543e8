"""The IKEv2 responder's UDP edge: ports 500 and 4500, dispatch by SPI, the EAP backend
and the CHILD_SA installer (RFC 7296 §2, RFC 3948 §2.2 for port 4500).

On port 4500 IKE messages follow a four-octet zero non-ESP marker; a single 0xFF octet is
a NAT keepalive (RFC 3948 §2.3); anything else is ESP, which belongs to the kernel.
Responses leave from the socket and to the address the request came from.
"""

from __future__ import annotations

import datetime
import errno
import hashlib
import hmac
import ipaddress
import os
import struct
import traceback
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import LogLevel
from twisted.python.failure import Failure

from vpnaaa import logs
from vpnaaa.certs import CrlFile, RevocationChecker, RevocationResult, serial_hex
from vpnaaa.eap.authenticator import Result
from vpnaaa.eap.engine import EapEngine
from vpnaaa.ike.common import EndCause, Ending, exchange_name, local_address_towards
from vpnaaa.ike.const import DhGroup, ExchangeType, HeaderFlag, NotifyType, PayloadType
from vpnaaa.ike.effects import (
    Answered,
    Await,
    CheckRevocation,
    ChildUp,
    Closed,
    Drop,
    Effects,
    Established,
    Exchanged,
    Heard,
    Install,
    InstallOutbound,
    Keyed,
    Rekeyed,
    Remove,
    RetryRekey,
    RunEap,
    Send,
    Spawn,
)
from vpnaaa.ike.message import (
    HEADER,
    Header,
    IkeError,
    Message,
    Nonce,
    Notify,
    decode_message,
    describe,
    encode_message,
)
from vpnaaa.ike.sa import (
    ZERO_SPI,
    Endpoint,
    IkeSa,
    Profile,
    ResponderContext,
    State,
    user_key,
)
from vpnaaa.kernel.installer import ChildSaInstaller, ChildSaSpec
from vpnaaa.kernel.xfrm_installer import ExpireEvent
from vpnaaa.keylog import KeyLog
from vpnaaa.net import source_prefix

log = logs.get("vpnaaa.ike")

NON_ESP_MARKER = b"\x00\x00\x00\x00"
NAT_KEEPALIVE = b"\xff"
TRANSIENT_ERRORS = {errno.ENOBUFS, errno.EAGAIN, errno.EINTR, errno.ENOMEM}
HALF_OPEN_TIMEOUT = 30.0  # seconds an SA may take to finish IKE_AUTH (EAP included)
COOKIE_SECRET_LIFETIME = 60.0  # seconds one COOKIE secret is used (§2.6); then the next
# DH groups refused while half-open SAs are above the cookie threshold: each costs the
# responder over a millisecond of CPU (MODP4096 2.5 ms here) that an attacker picks for us.
SHUTDOWN = Ending(EndCause.SHUTDOWN, "shutdown")
EXPENSIVE_GROUPS = frozenset(
    {DhGroup.MODP3072, DhGroup.MODP4096, DhGroup.MODP6144, DhGroup.MODP8192}
)


@dataclass(frozen=True)
class Limits:
    """What unauthenticated peers may hold (RFC 7296 §2.6, charon's ``cookie_threshold``,
    ``block_threshold`` and ``init_limit_half_open``): above ``cookie_threshold`` half-open
    SAs a new IKE_SA_INIT must return a COOKIE and expensive DH groups are refused; one
    source address holds at most ``half_open_per_source``, the gateway ``half_open``. A
    source makes at most ``init_rate_per_source`` new SAs a second (each costs us a DH and
    a signature, even when the peer deletes it at once and so frees its slot)."""

    cookie_threshold: int = 500
    half_open_per_source: int = 5
    half_open: int = 10_000
    init_rate_per_source: float = 20.0  # new SAs a second, in bursts of up to 3 s worth


class SourceRate:
    """A token bucket per source (RFC 7296 leaves rate to the implementation): each
    source earns ``rate`` tokens a second, up to three seconds' worth saved; at most
    ``sources`` are remembered, the least recently seen forgotten first (bounded whatever
    the peers send)."""

    def __init__(self, clock: Callable[[], float], sources: int = 65536) -> None:
        self.clock = clock
        self.sources = sources
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, at

    def take(self, source: str, rate: float) -> bool:
        """Spend one token of ``source``; False when it has none left."""
        now, burst = self.clock(), 3 * rate
        tokens, at = self._buckets.pop(source, (burst, now))
        tokens = min(burst, tokens + (now - at) * rate)
        allowed = tokens >= 1.0
        self._buckets[source] = (tokens - 1.0 if allowed else tokens, now)
        if len(self._buckets) > self.sources:
            self._buckets.popitem(last=False)
        return allowed


@dataclass(frozen=True)
class Timing:
    """When the gateway speaks first (RFC 7296 §2.1, §2.4), charon's defaults: a request
    of ours is sent again after ``retransmit_timeout * retransmit_base ** n`` seconds,
    ``retransmit_tries`` times; no answer after the last ends the IKE SA (a dead peer).
    An IKE SA lives ``ike_lifetime`` seconds at most (up to a tenth less, at random, so
    sessions begun together do not end together); then the gateway deletes it (with
    ``rekey = "gateway"`` it rekeys it a tenth of ``ike_lifetime`` earlier). On
    shutdown, clients get a DELETE and ``shutdown_wait`` seconds to answer it."""

    retransmit_timeout: float = 4.0
    retransmit_base: float = 1.8
    retransmit_tries: int = 5
    ike_lifetime: float = 86400.0
    shutdown_wait: float = 2.0

    def timeout(self, sent: int) -> float:
        """Seconds to wait for the answer after the ``sent``-th transmission."""
        return self.retransmit_timeout * self.retransmit_base ** (sent - 1)


class SessionObserver(Protocol):
    """Told when a session begins and ends (accounting, metrics): a session is an IKE SA
    from IKE_AUTH's end to its last one (IKE rekeys carry it on, ``sa.session_id`` kept)."""

    def session_started(self, sa: IkeSa) -> None: ...

    def session_ended(self, sa: IkeSa, ending: Ending, counters: list[Any] | None) -> None:
        """``counters``: the kernel's, per CHILD_SA, read as it ended (None without)."""

    def child_retired(self, sa: IkeSa, counters: Any) -> None:
        """A CHILD_SA of the live session ``sa`` (its current IKE SA) leaves the kernel
        (rekeyed away, deleted): ``counters``, its kernel counters, read just before."""


@dataclass(frozen=True)
class Slot:
    """What a half-open SA counts against: its source (an address, an IPv6 /64) and
    whether that source proved it receives there by returning a cookie (§2.6)."""

    source: str
    proven: bool


class Responder:
    """All IKE SAs of the gateway, keyed by our SPI; half-open ones also by the
    initiator's SPI and address, so a retransmitted IKE_SA_INIT finds its SA.

    Nothing a peer sends raises past :meth:`receive`: peer errors are answered or dropped
    inside the SA; an unexpected exception removes that one SA with one log line. Drops
    an unauthenticated sender can cause are logged through a :class:`~vpnaaa.logs.Throttle`.
    """

    def __init__(
        self,
        context: ResponderContext,
        installer: ChildSaInstaller,
        clock: IReactorTime,
        listen: str,
        limits: Limits = Limits(),
        timing: Timing = Timing(),
    ) -> None:
        self.context = context
        self.installer = installer
        self.limits = limits
        self.timing = timing
        self.clock = clock
        self.listen = listen
        self.sas: dict[bytes, IkeSa] = {}
        self._by_initiator: dict[tuple[str, int, bytes], IkeSa] = {}
        self._half_open_by_source: Counter[Slot] = Counter()
        # our SPI -> (the _by_initiator key, the per-source slot) of each half-open SA
        self._half_open_entries: dict[bytes, tuple[tuple[str, int, bytes], Slot]] = {}
        self._timers: dict[bytes, dict[str, IDelayedCall]] = {}  # our SPI -> name -> call
        self._in_flight: set[defer.Deferred[Any]] = set()  # CHILD_SA removals under way
        self._esp_seen: dict[bytes, int] = {}  # our SPI -> inbound ESP octets at last look
        self._by_user: dict[str, list[IkeSa]] = {}  # user_key -> its established IKE SAs
        self.observers: list[SessionObserver] = []
        self.keylog: KeyLog | None = None  # keys for Wireshark, when switched on
        # metrics: told each step's effects before they run; the throttled log's events
        self.steps: list[Callable[[IkeSa, Effects], None]] = []
        self.drop_counts: Counter[str] = Counter()
        context.sessions_of = self.sessions_of
        context.supersede = self._supersede
        context.clock = clock.seconds  # certificates' validity: the reactor's wall clock
        self._cookie_secrets: tuple[int, bytes, bytes] = (-1, b"", b"")  # epoch, now, before
        self._cheap_policy = context.ike_policy.without_groups(EXPENSIVE_GROUPS)
        self.drops = logs.Throttle(log, clock.seconds)
        self._rate = SourceRate(clock.seconds)

    @property
    def half_open(self) -> int:
        """IKE SAs that have not finished IKE_AUTH."""
        return len(self._by_initiator)

    def receive(self, data: bytes, remote: Endpoint, port: IkePort) -> None:
        try:
            message = decode_message(data)
        except IkeError as e:
            self._drop(
                "malformed",
                "dropped {n}-octet datagram from {host}:{port}: {reason}",
                n=len(data),
                host=remote.host,
                port=remote.port,
                reason=str(e),
            )
            self._refuse_unsupported(data, e, remote, port)
            return
        header = message.header
        if logs.debug_enabled():
            log.debug(
                "received {what} from {host}:{port}",
                what=describe(message),
                host=remote.host,
                port=remote.port,
            )
        sa = self._find(header, remote)
        if sa is None:
            if (
                header.exchange != ExchangeType.IKE_SA_INIT
                or header.response
                or header.message_id != 0
                or header.spi_r != ZERO_SPI  # §3.1: zero in the first message of an SA
            ):
                self._drop(
                    "no-sa",
                    "dropped {exchange} from {host}:{port}: no IKE SA {spi}",
                    exchange=exchange_name(header.exchange),
                    host=remote.host,
                    port=remote.port,
                    spi=header.spi_r.hex(),
                )
                return
            slot = self._admit(message, remote, port)
            if slot is None:
                return
            sa = self._new_sa(header, remote, port, slot)
            if sa is None:
                return
        try:
            self._run(sa, sa.receive(message, data, remote, port))
        except Exception as e:  # a bug, not the peer's fault: lose this SA, not the daemon
            self._internal_error(sa, e)

    # -- admission of new SAs (§2.6) ------------------------------------------------------

    def _cookie(self, message: Message, remote: Endpoint, epoch: int | None = None) -> bytes:
        """RFC 7296 §2.6: ``<VersionIDofSecret> | Hash(Ni | IPi | SPIi | <secret>)``. The
        secret changes every ``COOKIE_SECRET_LIFETIME`` seconds; a cookie made with the
        one before is still accepted, so a client answering a cookie at the turn is not
        sent another."""
        now = int(self.clock.seconds() // COOKIE_SECRET_LIFETIME)
        current, secret, previous = self._cookie_secrets
        if now != current:
            previous = secret if now == current + 1 else b""
            secret = os.urandom(32)
            self._cookie_secrets = (now, secret, previous)
        if epoch is None:
            epoch = now
        key = secret if epoch == now else previous if epoch == now - 1 else b""
        if not key:
            return b""
        nonce = message.get(PayloadType.NONCE)
        ni = nonce.data if isinstance(nonce, Nonce) else b""
        material = ni + remote.packed() + message.header.spi_i + key
        return struct.pack("!I", epoch & 0xFFFFFFFF) + hashlib.sha256(material).digest()

    def _cookie_ok(self, message: Message, remote: Endpoint) -> bool:
        offered = message.notify(NotifyType.COOKIE)
        if offered is None or len(offered.data) != 36:
            return False
        epoch = int.from_bytes(offered.data[:4], "big")
        expected = self._cookie(message, remote, epoch)
        return bool(expected) and hmac.compare_digest(offered.data, expected)

    def _admit(self, message: Message, remote: Endpoint, port: IkePort) -> Slot | None:
        """The per-source slot a new IKE_SA_INIT may take, or None (no state, no DH).

        A source (an address, an IPv6 /64) holds at most ``half_open_per_source``
        half-open SAs it did not prove it owns; past that, and for everyone above the
        cookie threshold, it must return our cookie (§2.6), which a spoofed source never
        sees: so forged requests cannot use up a victim's share, and a source that proves
        its address gets a share of its own (also ``half_open_per_source``). The gateway
        holds at most ``half_open`` half-open SAs in all."""
        limits = self.limits
        source = source_prefix(remote.host) or remote.host
        unproven = Slot(source, proven=False)
        slot = unproven
        if (
            self.half_open >= limits.cookie_threshold
            or self._half_open_by_source[unproven] >= limits.half_open_per_source
        ):
            if not self._cookie_ok(message, remote):
                reply = Header(
                    message.header.spi_i, ZERO_SPI, ExchangeType.IKE_SA_INIT, HeaderFlag.RESPONSE, 0
                )
                notify = Notify(NotifyType.COOKIE, self._cookie(message, remote))
                port.send(encode_message(reply, [(PayloadType.NOTIFY, notify)]), remote)
                return None
            slot = Slot(source, proven=True)
        if self._half_open_by_source[slot] >= limits.half_open_per_source:
            self._drop(
                "per-source",
                "dropped IKE_SA_INIT from {host}: its address holds {n} half-open IKE SAs, "
                "the limit (ike.half_open_per_source)",
                host=remote.host,
                n=limits.half_open_per_source,
            )
            return None
        if not self._rate.take(source, limits.init_rate_per_source):
            self._drop(
                "init-rate",
                "dropped IKE_SA_INIT from {host}: more than {n:g} new IKE SAs a second from "
                "its address (ike.init_rate_per_source)",
                host=remote.host,
                n=limits.init_rate_per_source,
            )
            return None
        if self.half_open >= limits.half_open:
            self._drop(
                "half-open",
                "dropped IKE_SA_INIT from {host}: {n} half-open IKE SAs, the limit "
                "(ike.half_open_limit)",
                host=remote.host,
                n=limits.half_open,
            )
            return None
        return slot

    @staticmethod
    def _refuse_unsupported(data: bytes, error: IkeError, remote: Endpoint, port: IkePort) -> None:
        """An IKE_SA_INIT request with an unknown critical payload gets the notify (§2.5);
        anything else malformed before keys exist is dropped (§2.21.1)."""
        if error.notify != NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD or len(data) < HEADER.size:
            return
        header = Header.decode(data)
        if header.exchange != ExchangeType.IKE_SA_INIT or header.response:
            return
        reply = Header(
            header.spi_i, ZERO_SPI, header.exchange, HeaderFlag.RESPONSE, header.message_id
        )
        notify = Notify(NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD, error.data)
        port.send(encode_message(reply, [(PayloadType.NOTIFY, notify)]), remote)

    def _find(self, header: Header, remote: Endpoint) -> IkeSa | None:
        """The SA a message belongs to: by our SPI, which is SPIr unless we are the SA's
        original initiator (an IKE rekey of ours made it, §2.18; no Initiator flag on the
        peer's messages then); both SPIs must match (§2.1)."""
        if header.spi_r == ZERO_SPI:
            if header.exchange != ExchangeType.IKE_SA_INIT:
                return None
            return self._by_initiator.get((remote.host, remote.port, header.spi_i))
        ours = header.spi_r if header.initiator else header.spi_i
        sa = self.sas.get(ours)
        return (
            sa if sa is not None and (sa.spi_i, sa.spi_r) == (header.spi_i, header.spi_r) else None
        )

    def _new_sa(self, header: Header, remote: Endpoint, port: IkePort, slot: Slot) -> IkeSa | None:
        local_host = self.listen
        if local_host in ("0.0.0.0", "::"):
            try:
                local_host = local_address_towards(remote)
            except OSError as e:  # a source we have no route back to: likely spoofed
                self._drop(
                    "no-route",
                    "dropped IKE_SA_INIT from {host}: no route back ({error})",
                    host=remote.host,
                    error=e.strerror,
                )
                return None
        sa = IkeSa(self.context, header.spi_i, Endpoint(local_host, port.number), remote)
        if self.half_open >= self.limits.cookie_threshold and self._cheap_policy is not None:
            sa.ike_policy = self._cheap_policy
        sa.port = port
        key = (remote.host, remote.port, header.spi_i)
        self.sas[sa.spi] = sa
        self._by_initiator[key] = sa
        self._half_open_entries[sa.spi] = (key, slot)
        self._half_open_by_source[slot] += 1
        self._later(sa, "half-open", HALF_OPEN_TIMEOUT, self._half_open)
        return sa

    def _settle(self, sa: IkeSa) -> None:
        """The SA is no longer half-open (established or gone): drop its index entries
        and its expiry timer, in constant time."""
        entry = self._half_open_entries.pop(sa.spi, None)
        if entry is not None:
            key, slot = entry
            self._by_initiator.pop(key, None)
            self._half_open_by_source[slot] -= 1
            if self._half_open_by_source[slot] <= 0:
                del self._half_open_by_source[slot]
        self._cancel(sa, "half-open")

    def _retire(self, sa: IkeSa) -> None:
        """An SA rekeyed away that its client did not delete (§1.3.2)."""
        log.info("{sa}: removed: rekeyed, not deleted by the client", sa=sa.name)
        self._run(sa, sa.close())

    def _half_open(self, sa: IkeSa) -> None:
        if sa.state != State.ESTABLISHED:
            self._drop(
                "half-open-expired",
                "{sa}: removed: not established within {t:.0f} s",
                sa=sa.name,
                t=HALF_OPEN_TIMEOUT,
            )
            self._run(sa, sa.close(Ending(EndCause.REFUSED, "not established in time")))

    def _serving(self, sa: IkeSa) -> bool:
        """Whether ``sa`` is still one of ours (not closed while the edge worked)."""
        return self.sas.get(sa.spi) is sa

    # -- timers: one set per SA, by name ----------------------------------------------------

    def _later(self, sa: IkeSa, name: str, delay: float, call: Callable[[IkeSa], None]) -> None:
        """Call ``call(sa)`` in ``delay`` seconds, instead of any earlier timer ``name``."""
        self._cancel(sa, name)
        timers = self._timers.setdefault(sa.spi, {})
        timers[name] = self.clock.callLater(max(delay, 0.0), self._fire, sa, name, call)

    def _fire(self, sa: IkeSa, name: str, call: Callable[[IkeSa], None]) -> None:
        self._cancel(sa, name)  # gone already: only forget it
        call(sa)

    def _cancel(self, sa: IkeSa, name: str) -> None:
        timers = self._timers.get(sa.spi)
        timer = timers.pop(name, None) if timers else None
        if timer is not None and timer.active():
            timer.cancel()
        if timers is not None and not timers:
            del self._timers[sa.spi]

    # -- effects (vpnaaa.ike.effects), in the order the SA gives them ------------------------

    def _run(self, sa: IkeSa, effects: Effects) -> None:
        for step in self.steps:
            step(sa, effects)
        for effect in effects:
            _EFFECTS[type(effect)](self, sa, effect)

    def _send(self, sa: IkeSa, effect: Send) -> None:
        port, remote = sa.port, sa.remote
        if effect.to is not None:
            remote, port = effect.to
        for datagram in effect.datagrams:
            port.send(datagram, remote)

    def _dropped(self, sa: IkeSa, effect: Drop) -> None:
        self._drop(effect.kind, "{text}", text=effect.line)

    def _exchanged(self, sa: IkeSa, effect: Exchanged) -> None:
        """For the step watchers (the metrics) only."""

    def _heard(self, sa: IkeSa, effect: Heard) -> None:
        sa.heard_at = self.clock.seconds()

    def _await(self, sa: IkeSa, effect: Await) -> None:
        self._later(sa, "retransmit", self.timing.timeout(effect.sent), self._retransmit)

    def _answered(self, sa: IkeSa, effect: Answered) -> None:
        self._cancel(sa, "retransmit")

    def _run_eap(self, sa: IkeSa, effect: RunEap) -> None:
        assert sa.profile.eap is not None
        d = sa.profile.eap.step(effect.conversation, effect.response)
        d.addCallback(self._eap_answered, sa)
        d.addErrback(self._failed, sa)

    def _eap_answered(self, step: tuple[bytes, Result], sa: IkeSa) -> None:
        if self._serving(sa):  # else it expired or was deleted while the backend worked
            self._run(sa, sa.eap_result(*step))

    def _check_revocation(self, sa: IkeSa, effect: CheckRevocation) -> None:
        """The profile's revocation checker on the client's certificate (it bounds what
        waits on the network). An SA gone meanwhile (expired half-open, deleted) is not
        brought back by the answer. A check that fails (the checker logs its own bugs) is
        a refusal: AUTHENTICATION_FAILED and its one log line, the daemon unharmed."""
        certificates = sa.profile.certificates
        assert certificates is not None

        def refused(failure: Failure) -> RevocationResult:
            return RevocationResult(False, f"revocation check failed: {failure.getErrorMessage()}")

        def answered(result: RevocationResult) -> None:
            if self._serving(sa):
                self._run(sa, sa.revocation_checked(result))

        d = certificates.revocation.check(effect.verified)
        d.addErrback(refused).addCallback(answered).addErrback(self._failed, sa)

    def _keyed(self, sa: IkeSa, effect: Keyed) -> None:
        if self.keylog is not None:
            self.keylog.ike_sa(effect)

    def _install(self, sa: IkeSa, effect: Install) -> None:
        spec = effect.spec
        if self.keylog is not None:
            self.keylog.esp_sa(spec)

        def done(_: object) -> None:
            if not self._serving(sa):  # gone while the kernel worked: take it out again
                self._track(self.installer.remove(spec), sa, spec)
                return
            self._run(sa, sa.child_installed(spec, None))

        def failed(failure: Failure) -> None:
            if self._serving(sa):
                transient = getattr(failure.value, "errno", None) in TRANSIENT_ERRORS
                self._run(sa, sa.child_installed(spec, failure.getErrorMessage(), transient))

        d = self.installer.install(spec, outbound=effect.outbound)
        d.addCallbacks(done, failed).addErrback(self._failed, sa)

    def _install_outbound(self, sa: IkeSa, effect: InstallOutbound) -> None:
        def failed(failure: Failure) -> None:
            log.error(
                "{sa}: outbound SA of CHILD_SA {spi:08x} not installed: {error}",
                sa=sa.name,
                spi=effect.spec.inbound_spi,
                error=failure.getErrorMessage(),
            )

        self.installer.install_outbound(effect.spec).addErrback(failed)

    def _child_up(self, sa: IkeSa, effect: ChildUp) -> None:
        """With ``rekey = "gateway"`` we rekey the CHILD_SA at its soft lifetime (§2.8)."""
        if sa.profile.rekey == "gateway":
            spi = effect.spec.inbound_spi
            self._later(
                sa, _child_timer(spi), effect.spec.soft_lifetime, partial(self._rekey_child, spi)
            )

    def _retry_rekey(self, sa: IkeSa, effect: RetryRekey) -> None:
        """Our rekey was refused: again in 10 to 30 s (§2.25: not at once); the hard
        lifetime still ends the SA if it never succeeds."""
        delay = 10.0 + 20.0 * self.context.jitter()
        if effect.child is None:
            self._later(sa, "rekey", delay, self._rekey)
        else:
            spi = effect.child
            self._later(sa, _child_timer(spi), delay, partial(self._rekey_child, spi))

    def _remove(self, sa: IkeSa, effect: Remove) -> None:
        """CHILD_SAs leave the kernel; while their session lives, each one's counters are
        read first and told to the observers (``child_retired``), whose totals keep them."""
        counters = getattr(self.installer, "counters", None)

        def retired(result: Any, spec: ChildSaSpec) -> defer.Deferred[Any]:
            if isinstance(result, Failure):
                log.warn(
                    "{sa}: CHILD_SA {spi:08x}: counters not read before its removal: {error}",
                    sa=sa.name,
                    spi=spec.inbound_spi,
                    error=result.getErrorMessage(),
                )
            else:
                for observer in self.observers:
                    observer.child_retired(sa, result)
            return self._track(self.installer.remove(spec), sa, spec)

        for spec in effect.specs:
            self._cancel(sa, _child_timer(spec.inbound_spi))
            if counters is None or sa.established_at is None or not self.observers:
                self._track(self.installer.remove(spec), sa, spec)
            else:
                self._pending(counters(spec).addBoth(retired, spec).addErrback(self._failed, sa))

    def _established_effect(self, sa: IkeSa, effect: Established) -> None:
        self._established(sa)

    def _rekeyed(self, sa: IkeSa, effect: Rekeyed) -> None:
        """``old`` hands over to ``successor`` (§1.3.2): its session timers and CHILD_SA
        rekey timers move; ``old`` goes when deleted, or after HALF_OPEN_TIMEOUT."""
        old, successor = effect.old, effect.successor
        self.sas[successor.spi] = successor
        if successor.identity_verified:
            self._by_user.setdefault(user_key(successor.identity), []).append(successor)
        now = self.clock.seconds()
        for name, timer in list(self._timers.get(old.spi, {}).items()):
            if name.startswith("child "):
                spi = int(name.split()[1], 16)
                self._later(successor, name, timer.getTime() - now, partial(self._rekey_child, spi))
            elif name == "session-timeout":
                self._later(successor, name, timer.getTime() - now, self._timed_out)
            if name != "retransmit":
                self._cancel(old, name)
        self._esp_seen.pop(old.spi, None)
        if self._serving(old):
            self._later(old, "retire", HALF_OPEN_TIMEOUT, self._retire)
        self._watch(successor)
        self._run(successor, successor.resume())

    def _spawn(self, sa: IkeSa, effect: Spawn) -> None:
        self.sas[effect.sa.spi] = effect.sa
        self._run(effect.sa, effect.effects)

    def _closed(self, sa: IkeSa, effect: Closed) -> None:
        """The SA is gone: forget it; its CHILD_SAs leave the kernel, their counters read
        first when a session ended, for its last log line."""
        self._forget(sa)
        specs = effect.children
        session = sa.established_at is not None and not sa.rekeyed
        counters = getattr(self.installer, "counters", None)
        if not session or counters is None or not specs:
            for spec in specs:
                self._track(self.installer.remove(spec), sa, spec)
            if session:
                self._ended(sa, effect.cause, None)
            return

        def counted(result: Any) -> defer.Deferred[Any]:
            self._ended(sa, effect.cause, result if isinstance(result, list) else None)
            return defer.gatherResults(
                [self._track(self.installer.remove(spec), sa, spec) for spec in specs],
                consumeErrors=True,
            )

        d = defer.gatherResults([counters(spec) for spec in specs], consumeErrors=True)
        self._pending(d.addBoth(counted).addErrback(self._failed, sa))

    def _track(self, d: defer.Deferred[Any], sa: IkeSa, spec: ChildSaSpec) -> defer.Deferred[Any]:
        """A CHILD_SA removal in flight: logged if it fails, awaited by shutdown."""

        def failed(failure: Failure) -> None:
            log.error(
                "{sa}: CHILD_SA {spi:08x} not removed: {error}",
                sa=sa.name,
                spi=spec.inbound_spi,
                error=failure.getErrorMessage(),
            )

        return self._pending(d.addErrback(failed))

    def _pending(self, d: defer.Deferred[Any]) -> defer.Deferred[Any]:
        if not d.called:
            self._in_flight.add(d)
            d.addBoth(lambda result: (self._in_flight.discard(d), result)[1])
        return d

    # -- sessions -------------------------------------------------------------------------

    def _established(self, sa: IkeSa) -> None:
        """A new session: INITIAL_CONTACT (§2.4) ends the same user's older sessions (the
        client says it has lost them); else ``max_sessions_per_user`` may replace the
        oldest; then its liveness checks and lifetime begin. A session whose user the EAP
        method did not vouch for (a relay's Accept without User-Name) neither replaces nor
        counts: its name is only what the client said."""
        sa.established_at = self.clock.seconds()
        self._settle(sa)
        if not sa.identity_verified:
            self._drop(
                "unverified-identity",
                "{sa}: {user} is the client's own EAP identity (the RADIUS server sent no "
                "User-Name): INITIAL_CONTACT and max_sessions_per_user do not apply to it",
                sa=sa.name,
                user=logs.quoted(sa.identity),
            )
            self._begun(sa)
            return
        user = user_key(sa.identity)
        others = [o for o in self._sessions(user) if o is not sa]
        self._by_user.setdefault(user, []).append(sa)
        if not sa.initial_contact:  # with it, _supersede ended the others already
            limit = sa.profile.max_sessions_per_user
            same = sorted((o for o in others if o.profile is sa.profile), key=_since)
            if limit and sa.profile.session_limit == "replace" and len(same) >= limit:
                for old in same[: len(same) - limit + 1]:
                    replaced = Ending(EndCause.REPLACED, "replaced: max_sessions_per_user")
                    self._run(old, old.delete(replaced))
        self._begun(sa)

    def _supersede(self, sa: IkeSa) -> None:
        """INITIAL_CONTACT (§2.4): the client says it holds no other IKE SA with us, so the
        same user's older sessions (a laptop back from sleep) end here, before the new
        one takes an address: their lease is free again, and the same user gets it back.
        Not for a name the EAP method did not vouch for."""
        if not sa.initial_contact or not sa.identity_verified:
            return
        replaced = Ending(EndCause.REPLACED, "replaced: INITIAL_CONTACT from a new session")
        for old in self._sessions(user_key(sa.identity)):
            if old is not sa:
                self._run(old, old.close(replaced))

    def _begun(self, sa: IkeSa) -> None:
        self._watch(sa)
        timeout = sa.authorization.session_timeout
        if timeout:  # RFC 2865 §5.27: the most the session may last
            log.info("{sa}: session timeout {t} s (RADIUS)", sa=sa.name, t=timeout)
            self.limit(sa, timeout)
        for observer in self.observers:
            observer.session_started(sa)

    def _watch(self, sa: IkeSa) -> None:
        """Liveness checks and the lifetimes of an established IKE SA: with ``rekey =
        "gateway"`` we rekey it at the soft one; at the hard one we delete it."""
        sa.heard_at = self.clock.seconds()
        if sa.profile.dpd_delay:
            self._later(sa, "dpd", sa.profile.dpd_delay, self._dpd)
        soft, hard = self.context.lifetimes(self.timing.ike_lifetime)
        if sa.profile.rekey == "gateway":
            self._later(sa, "rekey", soft, self._rekey)
        self._later(sa, "lifetime", hard, self._lifetime)

    def _sessions(self, user: str | None = None) -> list[IkeSa]:
        """The established sessions (IKE SAs neither rekeyed away nor being deleted), all
        or one user's (a user_key, looked up in an index: establishing a session is not
        O(sessions))."""
        candidates = self.sas.values() if user is None else self._by_user.get(user, ())
        return [
            sa
            for sa in candidates
            if sa.state == State.ESTABLISHED and not sa.rekeyed and not sa.closing
        ]

    def sessions(self) -> list[IkeSa]:
        """The live sessions (established, neither rekeyed away nor being deleted)."""
        return self._sessions()

    def _certified(self) -> list[IkeSa]:
        """The SAs whose client certificate was accepted: the live sessions, and those
        whose EAP-TLS succeeded but whose last IKE_AUTH has not come yet (it may come up
        to HALF_OPEN_TIMEOUT later: a deny or a CRL meanwhile must not let it in)."""
        return [
            sa
            for sa in self.sas.values()
            if sa.certificate is not None and not sa.rekeyed and not sa.closing
        ]

    def sessions_of(self, user: str, profile: Profile) -> int:
        """Established sessions of ``user`` (a user_key) in ``profile``."""
        return sum(1 for sa in self._sessions(user) if sa.profile is profile)

    def find(
        self,
        *,
        session_id: str | None = None,
        user: str | None = None,
        framed_ip: ipaddress.IPv4Address | None = None,
        serial: str | None = None,
    ) -> list[IkeSa]:
        """The live sessions that match every key given (as RFC 5176 §3 identifies one):
        an Acct-Session-Id (any case), a user (any case, no DOMAIN\\ prefix), a virtual IP;
        ``serial``: the client certificate's (hex, :func:`vpnaaa.certs.serial_hex`)."""
        if serial is not None:
            found = [sa for sa in self._certified() if sa.certificate.serial == serial]
        else:
            found = self._sessions(user_key(user) if user is not None else None)
        if user is not None:  # names the EAP method did not vouch for are not in the index
            found += [
                sa
                for sa in self._sessions()
                if not sa.identity_verified and user_key(sa.identity) == user_key(user)
            ]
        if session_id is not None:
            found = [sa for sa in found if sa.session_id == session_id.upper()]
        if framed_ip is not None:
            found = [sa for sa in found if sa.virtual_ip == framed_ip]
        return found

    def disconnect(self, sa: IkeSa, by: str = "by the administrator") -> None:
        """End a session for an administrator (RFC 2866 Admin-Reset): a DELETE to the
        client, everything freed once it answers or gives no answer."""
        self._end(sa, Ending(EndCause.ADMIN_RESET, f"disconnected {by}"))

    def _end(self, sa: IkeSa, cause: Ending) -> None:
        """End a session (:meth:`delete`), or drop an SA still authenticating: its last
        IKE_AUTH then finds nothing (§2.21.2)."""
        if sa.state == State.ESTABLISHED:
            self.delete(sa, cause)
        else:
            log.info("{sa}: removed before its last IKE_AUTH: {why}", sa=sa.name, why=cause)
            self._run(sa, sa.close(cause))

    def revoke(self, crl_file: CrlFile) -> list[IkeSa]:
        """``crl_file`` was read again (it changed, or SIGHUP): the live sessions (and
        those between EAP-TLS and their last IKE_AUTH) whose certificate, or a CA of its
        chain, one of its CRLs revokes end as `vpnaaa deny` ends them (a DELETE, RFC 7296
        §1.4.1; Acct-Terminate-Cause Admin-Reset), their end's log line naming the
        certificate and the file. Only sessions whose revocation policy reads that file:
        their profile's (``auth = "certificate"``) or ``[eap.tls]``'s (EAP-TLS in the
        in-process engine). Returns them."""
        now = datetime.datetime.fromtimestamp(self.clock.seconds(), datetime.UTC)
        ended = []
        for sa in self._certified():
            checker = _revocation_of(sa)
            if sa.certificate is None or checker is None or crl_file not in checker.crl_files:
                continue
            found = crl_file.revoked(sa.certificate.chain, now)
            if found is None:
                continue
            cert, answer = found
            what = "certificate" if cert is sa.certificate.certificate else "its CA"
            self._end(
                sa,
                Ending(
                    EndCause.ADMIN_RESET,
                    f"disconnected: {what} {logs.quoted(cert.subject.rfc4514_string())} serial "
                    f"{serial_hex(cert.serial_number)} {answer.detail} (CRL file {crl_file.path})",
                ),
            )
            ended.append(sa)
        return ended

    def limit(self, sa: IkeSa, seconds: float) -> None:
        """The session ends ``seconds`` from now (RFC 2865 §5.27 Session-Timeout, or a
        CoA-Request's, RFC 5176 §3.1), whatever its IKE rekeys; a later call replaces it."""
        self._later(sa, "session-timeout", seconds, self._timed_out)

    def _timed_out(self, sa: IkeSa) -> None:
        log.info("{sa}: session timeout reached; deleting it", sa=sa.name)
        self.delete(sa, Ending(EndCause.SESSION_TIMEOUT, "session timeout"))

    def _ended(self, sa: IkeSa, cause: Ending, counters: list[Any] | None) -> None:
        """One line per session end: who, why, for how long, how much (kernel counters)."""
        since = sa.established_at if sa.established_at is not None else self.clock.seconds()
        traffic = ""
        if counters:
            inbound = [c.inbound for c in counters]
            outbound = [c.outbound for c in counters]
            traffic = (
                f"; in {sum(c.bytes for c in inbound)} B/{sum(c.packets for c in inbound)} "
                f"packets, out {sum(c.bytes for c in outbound)} B/"
                f"{sum(c.packets for c in outbound)} packets"
            )
        log.info(
            "{sa}: session of {user} ended: {cause}; up {duration:.0f} s{traffic}",
            sa=sa.name,
            user=logs.quoted(sa.identity),
            cause=str(cause),
            duration=self.clock.seconds() - since,
            traffic=traffic,
        )
        for observer in self.observers:
            observer.session_ended(sa, cause, counters)

    def delete(self, sa: IkeSa, cause: Ending) -> None:
        """End a session from here: a DELETE to the client (§1.4.1), everything freed
        once it answers or gives no answer."""
        self._run(sa, sa.delete(cause))

    # -- the gateway speaks first (RFC 7296 §1.4, §2.1, §2.4) -------------------------------

    def _retransmit(self, sa: IkeSa) -> None:
        request = sa.outstanding
        if request is None or not self._serving(sa):
            return
        if request.sent > self.timing.retransmit_tries:
            self._run(sa, sa.give_up())
            return
        self._run(sa, sa.retransmit_request())

    def _dpd(self, sa: IkeSa) -> None:
        """Liveness (§1.4): after ``dpd_delay`` seconds without a word from the peer, an
        empty INFORMATIONAL; inbound ESP counts as a word (as charon reads the kernel's
        use time), so a busy tunnel is not probed."""
        delay = sa.profile.dpd_delay
        idle = self.clock.seconds() - (sa.heard_at or 0.0)
        if sa.outstanding is not None:  # a request of ours is out: its answer will tell
            self._later(sa, "dpd", delay, self._dpd)
            return
        if idle < delay:  # heard from it meanwhile: ask dpd_delay after that, not later
            self._later(sa, "dpd", delay - idle, self._dpd)
            return
        counters = getattr(self.installer, "counters", None)
        specs = [c.spec for c in sa.children.values()]
        if counters is None or not specs:
            self._probe(sa)
            return
        d = defer.gatherResults([counters(spec) for spec in specs], consumeErrors=True)
        d.addCallbacks(self._esp_counted, lambda _: self._probe(sa), callbackArgs=(sa,))
        d.addErrback(self._failed, sa)

    def _esp_counted(self, counters: list[Any], sa: IkeSa) -> None:
        if not self._serving(sa):
            return
        octets = sum(c.inbound.bytes for c in counters)
        before = self._esp_seen.get(sa.spi, 0)  # none counted when the session began
        self._esp_seen[sa.spi] = octets
        if octets != before:  # ESP came in since the last look
            sa.heard_at = self.clock.seconds()
            self._later(sa, "dpd", sa.profile.dpd_delay, self._dpd)
            return
        self._probe(sa)

    def _probe(self, sa: IkeSa) -> None:
        if self._serving(sa):
            self._run(sa, sa.liveness())
            self._later(sa, "dpd", sa.profile.dpd_delay, self._dpd)

    def _rekey(self, sa: IkeSa) -> None:
        log.info("{sa}: IKE SA soft lifetime reached; rekeying it", sa=sa.name)
        self._run(sa, sa.rekey())

    def _rekey_child(self, spi: int, sa: IkeSa) -> None:
        self._run(sa, sa.rekey_child(spi))

    def _lifetime(self, sa: IkeSa) -> None:
        log.info("{sa}: IKE SA lifetime reached; deleting it", sa=sa.name)
        self._run(sa, sa.delete(Ending(EndCause.LIFETIME, "lifetime")))

    def _forget(self, sa: IkeSa) -> None:
        if self._serving(sa):
            del self.sas[sa.spi]
        self._settle(sa)
        for timer in self._timers.pop(sa.spi, {}).values():
            if timer.active():
                timer.cancel()
        self._esp_seen.pop(sa.spi, None)
        held = self._by_user.get(user_key(sa.identity))
        if held is not None and sa in held:
            held.remove(sa)
            if not held:
                del self._by_user[user_key(sa.identity)]
        if sa.eap_conversation is not None and sa.profile.eap is not None:
            sa.profile.eap.forget(sa.eap_conversation)

    def _failed(self, failure: Failure, sa: IkeSa) -> None:
        self._internal_error(sa, failure.value)

    def _internal_error(self, sa: IkeSa, error: BaseException) -> None:
        """A bug met on this SA's path: one line naming where, the SA removed (its lease,
        CHILD_SAs and EAP conversation with it), the daemon unharmed."""
        frame = traceback.extract_tb(error.__traceback__)[-1:] if error.__traceback__ else []
        where = f" at {frame[0].filename.rsplit('/', 1)[-1]}:{frame[0].lineno}" if frame else ""
        self._drop(
            "internal-error",
            "{sa}: internal error {error_type}: {error}{where}; IKE SA removed",
            sa=sa.name,
            error_type=type(error).__name__,
            error=str(error),
            where=where,
            level=LogLevel.error,
        )
        try:
            self._run(sa, sa.close(Ending(EndCause.INTERNAL_ERROR, "internal error")))
        except Exception:  # the bug is in the way out too: at least forget the SA
            self._forget(sa)

    def _drop(
        self, kind: str, format: str, /, level: LogLevel = LogLevel.info, **fields: Any
    ) -> None:
        self.drop_counts[kind] += 1
        self.drops.emit(kind, level, format, **fields)

    def expired(self, event: ExpireEvent) -> None:
        """The kernel says a CHILD_SA reached a lifetime limit. Soft: the client rekeys on
        its own schedule, or we do on ours (``rekey = "gateway"``), so it is logged. Hard:
        the kernel dropped that SA; the rest of the CHILD_SA (the other direction, the
        policies) goes too, and the client is told with a DELETE (§1.4.1), so it does
        not keep sending into nothing."""
        for sa in self.sas.values():
            child = sa.children.get(event.spec.inbound_spi)
            if child is None:
                continue
            direction = "inbound" if event.inbound else "outbound"
            if not event.hard:
                log.info(
                    "{sa}: CHILD_SA {spi:08x} {direction} soft lifetime reached",
                    sa=sa.name,
                    spi=event.spec.inbound_spi,
                    direction=direction,
                )
                return
            cause = f"{direction} hard lifetime reached"
            self._run(sa, sa.delete_child(event.spec.inbound_spi, cause))
            return

    def shutdown(self) -> defer.Deferred[None]:
        """Stopping the daemon: every client gets a DELETE (§1.4.1) and up to
        ``shutdown_wait`` seconds to answer; then whatever is left is removed here, with
        every CHILD_SA we installed. Fires when the kernel has them all out.

        A request of ours already out (a liveness check) is sent again at once: the
        DELETE waits for its answer (a window of one, §2.3)."""
        for sa in self._sessions():
            self._run(sa, sa.delete(SHUTDOWN))
            if sa.outstanding is not None and sa.outstanding.task.kind != "delete":
                self._run(sa, sa.retransmit_request())
        deadline = self.clock.seconds() + self.timing.shutdown_wait
        done: defer.Deferred[None] = defer.Deferred()

        def check() -> None:
            waiting = any(sa.outstanding is not None for sa in self.sas.values())
            if waiting and self.clock.seconds() < deadline:
                self.clock.callLater(0.05, check)
                return
            for sa in list(self.sas.values()):
                self._run(sa, sa.close(SHUTDOWN))
            removals = defer.DeferredList(list(self._in_flight), consumeErrors=True)
            removals.addCallback(lambda _: done.callback(None))

        check()
        return done


def _child_timer(spi: int) -> str:
    return f"child {spi:08x}"


_EFFECTS: dict[type, Callable[[Responder, IkeSa, Any], None]] = {
    Send: Responder._send,
    Drop: Responder._dropped,
    Exchanged: Responder._exchanged,
    Heard: Responder._heard,
    Await: Responder._await,
    Answered: Responder._answered,
    RunEap: Responder._run_eap,
    CheckRevocation: Responder._check_revocation,
    Install: Responder._install,
    InstallOutbound: Responder._install_outbound,
    ChildUp: Responder._child_up,
    RetryRekey: Responder._retry_rekey,
    Remove: Responder._remove,
    Keyed: Responder._keyed,
    Established: Responder._established_effect,
    Rekeyed: Responder._rekeyed,
    Spawn: Responder._spawn,
    Closed: Responder._closed,
}


class IkePort(DatagramProtocol):
    """UDP 500 (plain IKE) or 4500 (IKE after the non-ESP marker, NAT-T)."""

    noisy = False
    # Octets read per reactor turn (Twisted's default is 256 KiB). An IKE_SA_INIT costs up
    # to a millisecond of DH: a full default turn of small requests would hold the reactor,
    # RADIUS included, for over a second under a flood; this bounds a turn near 0.1 s.
    read_per_turn = 32 * 1024

    def __init__(self, responder: Responder, number: int, nat_t: bool) -> None:
        self.responder = responder
        self.number = number
        self.nat_t = nat_t

    def startProtocol(self) -> None:
        self.transport.maxThroughput = self.read_per_turn

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.nat_t:
            if data == NAT_KEEPALIVE:
                return
            if not data.startswith(NON_ESP_MARKER):
                return  # ESP in UDP reaching userspace: the kernel has no SA for it
            data = data[4:]
        self.responder.receive(data, Endpoint(addr[0], addr[1]), self)

    def send(self, datagram: bytes, remote: Endpoint) -> None:
        if self.nat_t:
            datagram = NON_ESP_MARKER + datagram
        try:
            self.transport.write(datagram, (remote.host, remote.port))
        except OSError as e:  # a source no answer reaches (port 0, broadcast): RFC 768
            self.responder._drop(
                "unsendable",
                "IKE message not sent to {host}:{port}: {error}",
                host=remote.host,
                port=remote.port,
                error=e,
            )


def _since(sa: IkeSa) -> float:
    return sa.established_at or 0.0


def _revocation_of(sa: IkeSa) -> RevocationChecker | None:
    """The revocation policy that accepted the session's certificate: its certificate
    profile's, or the in-process EAP engine's (EAP-TLS; a relay's server keeps its own)."""
    if sa.profile.certificates is not None:
        return sa.profile.certificates.revocation
    return sa.profile.eap.revocation if isinstance(sa.profile.eap, EapEngine) else None
