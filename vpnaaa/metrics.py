"""The daemon's Prometheus metrics (prometheus-client), in a registry of its own.

Every figure is read when Prometheus scrapes, from the objects that own it: the
responder's SAs, sessions and pools, and the counts the EAP backends, the RADIUS ports
and this module's own session observer and IKE step watcher keep as plain counters (no
lock, no prometheus-client object, on any packet path). Labels are bounded: profile and
RADIUS client names come from the configuration, exchange types, exchange results (notify
names), EAP methods, codes and causes from fixed tables ("other" for a number a peer sent
that they do not name); never a user name or an address.

The admin API serves :attr:`Metrics.registry` with prometheus-client's own Twisted
resource, which collects in the reactor's thread pool; the state belongs to the reactor
thread, so :meth:`Metrics.collect` reads it there (``callFromThread``) and waits at most
``READ_TIMEOUT`` seconds (a scrape during shutdown fails instead of holding the pool).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from twisted.python import threadable

from vpnaaa.ike.common import Ending
from vpnaaa.ike.const import ExchangeType
from vpnaaa.ike.effects import Effects, Exchanged
from vpnaaa.radius.client import RadiusRelay
from vpnaaa.radius.wire import Code

READ_TIMEOUT = 5.0  # seconds a scrape waits for the reactor thread
T = TypeVar("T")


class Metrics:
    """What the daemon exposes: call the ``watch_*`` methods for each part it runs.

    It is also the responder's :class:`~vpnaaa.ike.protocol.SessionObserver` (sessions
    started, ended by cause, their ESP traffic) and its step watcher (IKE exchanges
    either side began, by type and result), and the registry's only collector."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.registry = CollectorRegistry()
        self.responders: list[Any] = []
        self.eap: list[Any] = []  # EapEngine | RadiusRelay, each once
        self.radius: list[tuple[str, Any]] = []  # (port kind, RadiusProtocol)
        self.exchanges: Counter[tuple[str, str, str]] = Counter()
        self.started: Counter[str] = Counter()
        self.ended: Counter[tuple[str, str]] = Counter()
        self.octets: Counter[str] = Counter()
        self.packets: Counter[str] = Counter()
        self.registry.register(self)

    # -- what to watch -------------------------------------------------------------------

    def watch_responder(self, responder: Any) -> None:
        """The IKE responder: its sessions and steps, its pools and its profiles' EAP
        backends."""
        self.responders.append(responder)
        responder.observers.append(self)
        responder.steps.append(self.ike_step)
        for profile in responder.context.profiles:
            if profile.eap is not None:
                self.watch_eap(profile.eap)

    def watch_eap(self, backend: Any) -> None:
        """An EAP backend (the in-process engine or the RADIUS relay)."""
        if all(backend is not known for known in self.eap):
            self.eap.append(backend)

    def watch_radius(self, kind: str, protocol: Any) -> None:
        """A RADIUS server port (``kind``: authentication or accounting)."""
        self.radius.append((kind, protocol))

    # -- what the responder tells ----------------------------------------------------------

    def ike_step(self, sa: Any, effects: Effects) -> None:
        """Exchanges as the SA core reports them (:class:`~vpnaaa.ike.effects.Exchanged`),
        by type, who began it (a retransmitted response is not counted again) and
        result. Messages dropped unanswered are counted by the responder's drop
        reasons."""
        for effect in effects:
            if isinstance(effect, Exchanged):
                initiator = "gateway" if effect.ours else "client"
                self.exchanges[_exchange(effect.exchange), initiator, effect.result] += 1

    def session_started(self, sa: Any) -> None:
        self.started[sa.profile.name] += 1

    def session_ended(self, sa: Any, ending: Ending, counters: list[Any] | None) -> None:
        self.ended[sa.profile.name, ending.cause.name.lower()] += 1
        for child in counters or ():
            self.child_retired(sa, child)

    def child_retired(self, sa: Any, counters: Any) -> None:
        """A CHILD_SA left the kernel (rekeyed away, deleted, its session ended): its
        traffic counts now."""
        for direction, counted in (("in", counters.inbound), ("out", counters.outbound)):
            self.octets[direction] += counted.bytes
            self.packets[direction] += counted.packets

    # -- the collector -----------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        """The registry's collector: every family, read in the reactor thread."""
        return iter(_in_reactor(self.reactor, self.families))

    def families(self) -> list[Metric]:
        """The families of the parts watched, as they stand (call in the reactor thread)."""
        found = [*self._ike(), *self._sessions()] if self.responders else []
        if self.eap:
            found += self._eap()
        if self.radius:
            found += self._radius()
        return found

    def _ike(self) -> list[Metric]:
        sas = _gauge("vpnaaa_ike_sas", "IKE SAs the gateway holds, half-open ones included")
        half_open = _gauge(
            "vpnaaa_ike_half_open", "IKE SAs that have not finished IKE_AUTH (EAP included)"
        )
        cookies = _gauge(
            "vpnaaa_ike_cookie_mode",
            "1 while half-open IKE SAs reach ike.cookie_threshold: new clients must return "
            "a COOKIE (RFC 7296 section 2.6) and expensive DH groups are refused",
        )
        drops = Counter[str]()
        for responder in self.responders:
            sas.add_metric([], len(responder.sas))
            half_open.add_metric([], responder.half_open)
            cookies.add_metric([], int(responder.half_open >= responder.limits.cookie_threshold))
            drops.update(responder.drop_counts)
        exchanges = _counter(
            "vpnaaa_ike_exchanges",
            "IKE exchanges done, by type, initiator (client: answered by us; gateway: our "
            "liveness checks, deletes and rekeys) and result: ok, the error notify that "
            "refused it (ours to a client, a client's to us: NO_PROPOSAL_CHOSEN, "
            "TS_UNACCEPTABLE, AUTHENTICATION_FAILED, ...; other: a type we do not know), "
            "malformed (an answer that does not parse) or timeout (no answer, RFC 7296 "
            "section 2.4)",
            self.exchanges,
            ["exchange", "initiator", "result"],
        )
        dropped = _counter(
            "vpnaaa_ike_drops",
            "IKE messages dropped unanswered and other events of the IKE log's throttled "
            "lines, by reason (the kind in the log: malformed, no-sa, integrity, "
            "per-source, init-rate, half-open, ...)",
            drops,
            ["reason"],
        )
        return [sas, half_open, cookies, exchanges, dropped]

    def _sessions(self) -> list[Metric]:
        sessions = _gauge("vpnaaa_sessions", "VPN sessions established now", ["profile"])
        leased = _gauge("vpnaaa_pool_leased", "virtual IPs leased to clients", ["profile"])
        free = _gauge("vpnaaa_pool_free", "virtual IPs free to lease", ["profile"])
        held = _gauge(
            "vpnaaa_pool_held",
            "virtual IPs held for a client of an earlier run until its lease expires",
            ["profile"],
        )
        size = _gauge("vpnaaa_pool_size", "virtual IPs in the profile's pool", ["profile"])
        framed = _gauge(
            "vpnaaa_framed_leased",
            "virtual IPs outside the pool that the AAA server assigned (Framed-IP-Address in "
            "the profile's framed_networks), leased to clients",
            ["profile"],
        )
        framed_held = _gauge(
            "vpnaaa_framed_held",
            "framed virtual IPs held for a client of an earlier run until its lease expires",
            ["profile"],
        )
        for responder in self.responders:
            live = Counter(sa.profile.name for sa in responder.sessions())
            for profile in responder.context.profiles:
                usage = profile.pool.usage()  # one read of the lease store
                sessions.add_metric([profile.name], live[profile.name])
                leased.add_metric([profile.name], usage.leased)
                free.add_metric([profile.name], usage.free)
                held.add_metric([profile.name], usage.held)
                size.add_metric([profile.name], usage.leased + usage.free + usage.held)
                outside = profile.pool.framed_usage()
                framed.add_metric([profile.name], outside.leased)
                framed_held.add_metric([profile.name], outside.held)
        started = _counter(
            "vpnaaa_sessions_started",
            "VPN sessions established (IKE_AUTH done; IKE rekeys carry a session on)",
            self.started,
            ["profile"],
        )
        ended = _counter(
            "vpnaaa_session_ends",
            "VPN sessions ended, by cause: client_delete, dead_peer (no answer to liveness "
            "checks), lifetime, session_timeout, replaced, admin_reset, shutdown, "
            "internal_error",
            self.ended,
            ["profile", "cause"],
        )
        octets = _counter(
            "vpnaaa_session_bytes",
            "ESP payload octets of CHILD_SAs gone (the kernel's counters, read as each "
            "left the kernel: rekeyed away, deleted, or its session ended; kernel installer "
            "only), in: from clients, out: to clients",
            self.octets,
            ["direction"],
        )
        packets = _counter(
            "vpnaaa_session_packets",
            "ESP packets of CHILD_SAs gone (as vpnaaa_session_bytes)",
            self.packets,
            ["direction"],
        )
        pools = [leased, free, held, size, framed, framed_held]
        return [sessions, started, ended, *pools, octets, packets]

    def _eap(self) -> list[Metric]:
        live = _gauge(
            "vpnaaa_eap_conversations",
            "EAP conversations under way, by backend: local (the in-process EAP server, "
            "for RADIUS clients and IKE) or relay (to the external RADIUS server)",
            ["backend"],
        )
        waiting = _gauge(
            "vpnaaa_radius_relay_requests",
            "Access-Requests of the EAP relay: outstanding (sent, unanswered) or queued "
            "(waiting for a free RADIUS Identifier)",
            ["state"],
        )
        outcomes: Counter[tuple[str, str, str]] = Counter()
        conversations: Counter[str] = Counter()
        relayed: Counter[str] = Counter()
        for backend in self.eap:
            kind = "relay" if isinstance(backend, RadiusRelay) else "local"
            conversations[kind] += len(backend)
            for (method, result), n in backend.outcomes.items():
                outcomes[kind, method, result] += n
            if isinstance(backend, RadiusRelay):
                relayed["outstanding"] += backend.outstanding
                relayed["queued"] += backend.queued
        for kind, n in sorted(conversations.items()):
            live.add_metric([kind], n)
        for state, n in sorted(relayed.items()):
            waiting.add_metric([state], n)
        relay = [waiting] if relayed else []
        ended = _counter(
            "vpnaaa_eap_outcomes",
            "EAP conversations finished, by backend, method (for the relay: the type of the "
            "client's last EAP Response; none: refused before a method began) and result",
            outcomes,
            ["backend", "method", "result"],
        )
        return [live, ended, *relay]

    def _radius(self) -> list[Metric]:
        requests: Counter[tuple[str, str, str]] = Counter()
        responses: Counter[tuple[str, str, str]] = Counter()
        dropped: Counter[tuple[str, str]] = Counter()
        for kind, protocol in self.radius:
            for (client, code), n in protocol.requests.items():
                requests[kind, client, _code(code)] += n
            for (client, code), n in protocol.responses.items():
                responses[kind, client, _code(code)] += n
            for client, n in protocol.dropped.items():
                dropped[kind, client] += n
        labels = ["port", "client", "code"]
        return [
            _counter(
                "vpnaaa_radius_requests",
                "RADIUS packets received from configured clients, by port, client name "
                "and code (Access-Request, Accounting-Request, Status-Server, ...)",
                requests,
                labels,
            ),
            _counter(
                "vpnaaa_radius_responses",
                "RADIUS responses sent, by port, client name and code (Access-Accept, "
                "Access-Reject, Access-Challenge, Accounting-Response)",
                responses,
                labels,
            ),
            _counter(
                "vpnaaa_radius_drops",
                "RADIUS packets dropped unanswered, by port and client name (unknown: not "
                "from a configured client); the log says why",
                dropped,
                ["port", "client"],
            ),
        ]


class AccountingQueue:
    """A collector of its own for the accounting client of the IKE sessions
    (:class:`~vpnaaa.radius.session_accounting.AccountingClient`): its queue depth."""

    def __init__(self, reactor: Any, client: Any) -> None:
        self.reactor = reactor
        self.client = client

    def collect(self) -> Iterator[Metric]:
        return iter(_in_reactor(self.reactor, self.families))

    def families(self) -> list[Metric]:
        depth = _gauge(
            "vpnaaa_accounting_queue_depth",
            "accounting records of the IKE sessions per [accounting] server: queued for it "
            "or sent there and not yet answered (at most max_queue + 256 in all)",
            ["server"],
        )
        for (host, port), n in sorted(self.client.depth().items()):
            depth.add_metric([f"[{host}]:{port}" if ":" in host else f"{host}:{port}"], n)
        return [depth]


def for_daemon(daemon: Any) -> Metrics:
    """The metrics of a :class:`vpnaaa.service.VpnaaaService`: its IKE responder, its EAP
    engine and its RADIUS ports, whichever it runs; its accounting client's queue."""
    metrics = Metrics(daemon.reactor)
    client = daemon.accounting.accounting.client if daemon.accounting is not None else None
    if client is not None:
        metrics.registry.register(AccountingQueue(daemon.reactor, client))
    if daemon.ike is not None:
        metrics.watch_responder(daemon.ike.responder)
    if daemon.eap is not None:
        metrics.watch_eap(daemon.eap)
    if daemon.radius is not None:
        metrics.watch_radius("authentication", daemon.radius.auth)
        metrics.watch_radius("accounting", daemon.radius.acct)
    return metrics


def _gauge(name: str, text: str, labels: list[str] | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, text, labels=labels)


def _counter(name: str, text: str, counts: Counter[Any], labels: list[str]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, text, labels=labels)
    for key, n in sorted(counts.items()):
        family.add_metric(list(key) if isinstance(key, tuple) else [key], n)
    return family


def _exchange(exchange: int) -> str:
    """An exchange type's name; "other" for a number we do not serve (bounded)."""
    try:
        return ExchangeType(exchange).name
    except ValueError:
        return "other"


def _code(code: int) -> str:
    """A RADIUS code's name as the RFCs write it; "other" for one we do not know."""
    try:
        return Code(code).name.replace("_", "-").title()
    except ValueError:
        return "other"


def _in_reactor(reactor: Any, read: Callable[[], T]) -> T:
    """``read()`` in the reactor thread (at once when already there, or when no reactor
    runs: a test on a fake clock), its result here."""
    if threadable.ioThread is None or threadable.isInIOThread():
        return read()
    done = threading.Event()
    box: list[Any] = []

    def run() -> None:
        try:
            box.append((True, read()))
        except BaseException as e:  # handed to the scraping thread, raised there
            box.append((False, e))
        finally:
            done.set()

    reactor.callFromThread(run)
    if not done.wait(READ_TIMEOUT):
        raise TimeoutError(f"the reactor thread did not answer within {READ_TIMEOUT:g} s")
    ok, value = box[0]
    if not ok:
        raise value
    return value
