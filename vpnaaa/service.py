"""Build the daemon's services from a configuration: wiring only, no protocol logic."""

from __future__ import annotations

import functools
import hashlib
import itertools
import os
import signal
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from twisted.application import internet, service
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.python.failure import Failure

from vpnaaa import auth, logs, private, privileges
from vpnaaa.admin import admin_services
from vpnaaa.certs import (
    DENY_FILE,
    CertificateError,
    ClientVerifier,
    CrlDistributionPoints,
    CrlFile,
    DenyList,
    HttpFetcher,
    OcspClient,
    RevocationChecker,
)
from vpnaaa.certs.check import CertificateCheck
from vpnaaa.certs.verify import load_anchors
from vpnaaa.config import (
    Config,
    DaeConfig,
    EapConfig,
    IkeConfig,
    ProfileConfig,
    RevocationConfig,
    TlsConfig,
)
from vpnaaa.eap.authenticator import MethodFactory
from vpnaaa.eap.eaptls import EapTls
from vpnaaa.eap.engine import MIB, EapEngine
from vpnaaa.eap.mschapv2 import MsChapV2
from vpnaaa.eap.packet import Type
from vpnaaa.eap.peap import Peap
from vpnaaa.eap.tls import SessionCache, TlsContexts, server_context
from vpnaaa.ike.common import CertificateAuth
from vpnaaa.ike.const import ProtocolId
from vpnaaa.ike.proposal import Policy
from vpnaaa.ike.protocol import IkePort, Limits, Responder, Timing
from vpnaaa.ike.sa import Profile, ResponderContext
from vpnaaa.kernel.addresses import HostAddresses
from vpnaaa.kernel.installer import NullInstaller
from vpnaaa.kernel.xfrm_installer import KernelInstaller, bypass_ipsec, espinudp
from vpnaaa.keylog import KeyLog, KeyLogError
from vpnaaa.leases import LeaseFileError, SqliteLeases
from vpnaaa.lockout import Lockout
from vpnaaa.metrics import for_daemon
from vpnaaa.net import large_receive_buffer
from vpnaaa.pki import PkiError, load_server_identity
from vpnaaa.pool import AddressPool
from vpnaaa.radius.accounting import AccountingLog
from vpnaaa.radius.client import RadiusRelay
from vpnaaa.radius.dae import (
    DaeProtocol,
    DynamicAuthorization,
    Intervals,
    IPAddress,
    NasIdentity,
)
from vpnaaa.radius.eap import EapHandler
from vpnaaa.radius.handlers import AccessHandler
from vpnaaa.radius.server import (
    ClientTable,
    DuplicateCache,
    acct_protocol,
    auth_protocol,
    listen_udp,
)
from vpnaaa.radius.session_accounting import AccountingService, accounting_service
from vpnaaa.users import UserStore, UserStoreError

log = logs.get("vpnaaa")
EXPIRY_INTERVAL = 5.0  # seconds between sweeps of idle EAP conversations
CRL_FOLLOW_INTERVAL = 5.0  # seconds between looks (a stat each) at the CRL files


class StartupError(Exception):
    """A service cannot start (a port in use, a missing capability): one clear line."""


class RadiusService(service.Service):
    """The RADIUS authentication and accounting ports."""

    name = "radius"

    def __init__(
        self, config: Config, backend: auth.AuthBackend, eap: EapEngine | None, reactor: Any
    ) -> None:
        self.config = config.radius
        self.reactor = reactor
        clients = ClientTable(self.config.clients)
        self.accounting = AccountingLog(self.config.accounting_log, self.config.accounting_fsync)
        window = self.config.duplicate_window
        access = AccessHandler(backend, EapHandler(eap) if eap is not None else None)
        self.auth = auth_protocol(
            clients, DuplicateCache(reactor, window), access, self.config.reject_delay
        )
        self.acct = acct_protocol(clients, DuplicateCache(reactor, window), self.accounting)
        self.ports: list[IListeningPort] = []

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._listen()

    def _listen(self) -> None:
        """Bind the two ports (privileged below 1024; the reactor reads them once running)."""
        listen = self.config.listen
        try:
            self.ports = [
                listen_udp(self.reactor, self.config.auth_port, self.auth, listen),
                listen_udp(self.reactor, self.config.acct_port, self.acct, listen),
            ]
        except CannotListenError as e:
            for port in self.ports:
                port.stopListening()
            raise StartupError(f"RADIUS cannot listen on {listen}: {e.socketError}") from None
        for port in self.ports:
            large_receive_buffer(port.socket)

    def startService(self) -> None:
        super().startService()
        if not self.ports:  # started without twistd: nothing was bound yet
            self._listen()
        try:
            self.accounting.open()
        except OSError as e:
            raise StartupError(f"accounting log {e.filename}: {e.strerror}") from None
        listen = self.config.listen
        auth_port, acct_port = (p.getHost().port for p in self.ports)
        log.info(
            "RADIUS listening on {listen} ports {auth}/{acct} (auth/acct) for {n} client "
            "entries; accounting to {path}",
            listen=listen,
            auth=auth_port,
            acct=acct_port,
            n=len(self.config.clients),
            path=str(self.config.accounting_log),
        )

    def stopService(self) -> defer.Deferred[Any]:
        super().stopService()
        self.accounting.close()
        return _stop_listening(self)


class DaeService(service.Service):
    """The RADIUS Dynamic Authorization port (RFC 5176) acting on the IKE sessions."""

    name = "dae"

    def __init__(
        self,
        config: DaeConfig,
        responder: Responder,
        reactor: Any,
        intervals: Intervals | None = None,
        host: HostAddresses | None = None,
    ) -> None:
        """``host``: this host's interface addresses, the NAS's own when
        ``nas_addresses`` lists none."""
        self.config = config
        self.reactor = reactor
        self.listed = frozenset(config.nas_addresses)
        self.host = None if self.listed else host
        assert self.listed or host is not None
        nas = NasIdentity(config.nas_identifier, self._addresses)
        self.core = DynamicAuthorization(
            config.clients,
            responder,
            nas,
            reactor.seconds,
            config.replay_window,
            config.require_event_timestamp,
            intervals=intervals,
        )
        self.ports: list[IListeningPort] = []

    def _addresses(self) -> frozenset[IPAddress] | None:
        """The NAS-IP-Address / NAS-IPv6-Address values that are ours (None: not read yet)."""
        if self.host is None:
            return self.listed
        return self.host.addresses if self.host.known else None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._listen()

    def _listen(self) -> None:
        listen, port = self.config.listen, self.config.port
        try:
            self.ports = [listen_udp(self.reactor, port, DaeProtocol(self.core), listen)]
        except CannotListenError as e:
            raise StartupError(f"DAE cannot listen on {listen}: {e.socketError}") from None

    def startService(self) -> None:
        super().startService()
        if not self.ports:  # started without twistd: nothing was bound yet
            self._listen()
        log.info(
            "RADIUS Dynamic Authorization (RFC 5176) on {listen} port {port} for {n} client "
            "entries, as NAS {name}",
            listen=self.config.listen,
            port=self.ports[0].getHost().port,
            n=len(self.config.clients),
            name=self.config.nas_identifier,
        )

    def stopService(self) -> defer.Deferred[Any]:
        super().stopService()
        return _stop_listening(self)


class HostAddressService(service.Service):
    """This host's interface addresses (:class:`HostAddresses`, read from the kernel and
    kept current) for the parts that must tell them: DAE's NAS-IP-Address check and the
    IKE pools, which never give out one of them as a Framed-IP-Address. Started before
    those parts (the first child of the daemon)."""

    name = "host-addresses"

    def __init__(self, reactor: Any) -> None:
        self.addresses = HostAddresses(reactor)

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._start()

    def startService(self) -> None:
        super().startService()
        self._start()  # started without twistd: not read yet

    def _start(self) -> None:
        if self.addresses.started:
            return
        try:
            self.addresses.start()
        except OSError as e:
            raise StartupError(
                f"cannot read this host's addresses (rtnetlink: {e.strerror}); they are "
                "needed for [dae] without nas_addresses and for framed_networks"
            ) from None

    def stopService(self) -> defer.Deferred[None] | None:
        super().stopService()
        self.addresses.stop()
        return None

    def local(self, address: IPAddress) -> bool:
        """Whether ``address`` may be one of this host's: every address, until the list
        is read (a framed address is refused rather than risk handing out our own)."""
        return not self.addresses.known or address in self.addresses


class VpnaaaService(service.MultiService):
    """The whole daemon: the user store plus each enabled front end."""

    def __init__(self, config: Config, reactor: Any = None) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor
        self.config = config
        self.reactor = reactor
        self.aborting = False
        self.exit_on_failure = False  # the twistd plugin sets it: log, stop, exit 1
        self.drop_privileges = False  # the twistd plugin sets it: [daemon] user after binding
        owners = private.trusted_owners(config.daemon.user)
        lockout = config.users.lockout
        self.users = UserStore(
            config.users.file,
            config.users.verified_cache_size,
            owners,
            Lockout(reactor, lockout.failures, lockout.window, lockout.duration),
        )
        count = self.users.load()
        log.info("loaded {n} users from {path}", n=count, path=str(config.users.file))
        self.keylog = KeyLog(config.debug.keylog_dir, owners)
        self.deny = DenyList(config.state_dir / DENY_FILE)  # `vpnaaa deny`; EAP-TLS reads it
        # of the IKE certificate profiles and EAP-TLS; SIGHUP rereads their CRL files
        self.revocation = RevocationCheckers(reactor, self.deny)
        self.host: HostAddressService | None = None
        ike = config.ike.enabled is not False
        if (config.dae.enabled and ike and not config.dae.nas_addresses) or (
            ike and any(p.framed_networks for p in config.ike.profiles)
        ):
            self.host = HostAddressService(reactor)
            self.host.setServiceParent(self)  # first: the others rely on it
        self.backend = auth.LocalBackend(self.users, reactor, config.radius.pap_queue)
        self.eap: EapEngine | None = None
        if config.eap.enabled and config.radius.enabled:
            self.eap = build_eap_engine(
                config.eap, config.eap.methods, self.users, reactor, self.keylog, self.revocation
            )
            self._expire_regularly(self.eap)
        self.radius: RadiusService | None = None
        if config.radius.enabled:
            self.radius = RadiusService(config, self.backend, self.eap, reactor)
            self.radius.setServiceParent(self)
        self.ike: IkeService | None = None
        if config.ike.enabled is not False:
            owners = private.trusted_owners(config.daemon.user)
            local = self.host.local if self.host is not None else None
            self.ike = IkeService(
                config.ike, self._ike_profiles(config), reactor, owners, local, self.revocation
            )
            self.ike.responder.keylog = self.keylog
            self.ike.setServiceParent(self)
            # a CRL file read again (changed on disk, SIGHUP) ends the sessions it revokes
            responder = self.ike.responder
            self.revocation.watch(lambda crl_file: reactor.callLater(0, responder.revoke, crl_file))
            follow = internet.TimerService(CRL_FOLLOW_INTERVAL, self.revocation.follow)
            follow.clock = reactor
            follow.setServiceParent(self)
        self.accounting: AccountingService | None = None  # of the IKE sessions
        if self.ike is not None and config.accounting.enabled:
            shared = self.radius.accounting if self.radius is not None else None
            self.accounting = accounting_service(config, self.ike.responder, shared, reactor)
            self.accounting.setServiceParent(self)
        self.metrics = for_daemon(self)  # the admin API serves them
        self.dae: DaeService | None = None
        if config.dae.enabled and self.ike is not None:
            accounting = self.accounting.accounting if self.accounting is not None else None
            host = self.host.addresses if self.host is not None else None
            self.dae = DaeService(config.dae, self.ike.responder, reactor, accounting, host)
            self.dae.setServiceParent(self)
        if config.admin.enabled:
            for admin in admin_services(self, config.admin):
                admin.setServiceParent(self)

    def _ike_profiles(
        self, config: Config
    ) -> list[tuple[ProfileConfig, EapEngine | RadiusRelay | None]]:
        """Each connection profile with its EAP backend: one local engine per method list,
        one relay to ``[ike.radius]`` shared by the profiles that use it; none for
        ``auth = "certificate"``."""
        relay: RadiusRelay | None = None
        if config.ike.relay is not None:
            server = config.ike.relay
            relay = RadiusRelay(
                (server.server, server.port),
                server.secret,
                self.reactor,
                server.nas_identifier,
                server.timeout,
                server.tries,
                source_ports=server.source_ports,
                max_queue=server.max_queue,
                max_conversations=server.max_conversations,
                per_source=server.max_conversations_per_source,
            )
            self._expire_regularly(relay)
        engines: dict[tuple[str, ...], EapEngine] = {}
        chosen: list[tuple[ProfileConfig, EapEngine | RadiusRelay | None]] = []
        for profile in config.ike.profiles:
            if profile.auth == "certificate":
                chosen.append((profile, None))
                continue
            if profile.backend == "radius":
                assert relay is not None
                chosen.append((profile, relay))
                continue
            engine = engines.get(profile.eap_methods)
            if engine is None:
                engine = build_eap_engine(
                    config.eap,
                    profile.eap_methods,
                    self.users,
                    self.reactor,
                    self.keylog,
                    self.revocation,
                )
                engines[profile.eap_methods] = engine
                self._expire_regularly(engine)
            chosen.append((profile, engine))
        return chosen

    def _expire_regularly(self, engine: EapEngine | RadiusRelay) -> None:
        expiry = internet.TimerService(EXPIRY_INTERVAL, engine.expire)
        expiry.clock = self.reactor
        expiry.setServiceParent(self)

    def privilegedStartService(self) -> None:
        """Bind every port, open the admin socket and the XFRM netlink sockets, then (under
        twistd) continue as ``[daemon] user`` with CAP_NET_ADMIN only."""
        user = self._account() if self.drop_privileges else None
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            self.abort(f"admin API cannot listen on {e.interface}:{e.port}: {e.socketError}")
        except StartupError as e:
            self.abort(str(e))
        if self.drop_privileges:
            self._drop(user)

    def _account(self) -> privileges.Account | None:
        """Who the daemon will run as (None: stay as started), its state directory ready."""
        config = self.config
        user = None
        try:
            if os.geteuid() == 0:
                if config.daemon.user == "root":
                    log.warn('running as root ([daemon] user = "root"): not recommended')
                    return None
                user = privileges.account(config.daemon.user)
                privileges.code_reachable(user)
                privileges.reachable(config.state_dir, user)
            files = [config.users.file]
            if config.radius.enabled or self.accounting is not None:
                files.append(config.radius.accounting_log)
            privileges.prepare_state_dir(config.state_dir, user, files)
            if config.ike.enabled is not False and config.ike.lease_file is not None:
                privileges.make_private_file(config.ike.lease_file, user)
            if config.debug.keylog:  # the daemon user writes them (made now, as root can)
                privileges.prepare_state_dir(config.debug.keylog_dir, user, [], "key log directory")
                for path in self.keylog.paths():
                    privileges.make_private_file(path, user)
        except privileges.PrivilegeError as e:
            self.abort(str(e))
        return user

    def _drop(self, user: privileges.Account | None) -> None:
        if user is None and os.geteuid() == 0:
            return  # user = "root"
        try:
            if user is not None and self.config.admin.socket is not None:
                os.chown(self.config.admin.socket, user.uid, user.gid, follow_symlinks=False)
            result = privileges.drop(user)
        except (OSError, privileges.PrivilegeError) as e:
            self.abort(f"cannot drop privileges: {e}")
            return
        log.info(
            "running as uid {uid} gid {gid}, effective capabilities {caps:#x}",
            uid=result.uids[0],
            gid=result.gids[0],
            caps=result.cap_eff,
        )

    def startService(self) -> None:
        try:
            if self.config.debug.keylog:
                self.switch_keylog(True, "[debug] keylog = true")
            super().startService()
        except (StartupError, KeyLogError) as e:
            self.abort(str(e))

    def stopService(self) -> defer.Deferred[Any]:
        d = defer.maybeDeferred(super().stopService)
        return d.addBoth(lambda result: (self.keylog.close(), result)[1])

    def switch_keylog(self, on: bool, by: str) -> str:
        """Keys for Wireshark on (with those of the SAs already up) or off; raises
        :class:`KeyLogError` when the files cannot be opened. Returns where they go."""
        if not on:
            self.keylog.disable(by)
            return f"Wireshark key log off; {self.keylog.directory} keeps what was logged"
        if not self.keylog.enabled:
            self.keylog.enable(by)
            if self.ike is not None:
                self.keylog.existing(list(self.ike.responder.sas.values()))
        files = ", ".join(str(path) for path in self.keylog.paths())
        return (
            f"Wireshark key log on: {files}; anyone with these files and a capture reads the "
            "traffic"
        )

    def abort(self, reason: str) -> None:
        """Stop with one log line and exit status 1: never run half-configured. Outside
        twistd (tests, embedding) the error is raised instead; before the reactor runs
        (privilegedStartService) nothing has started, so the process exits at once."""
        if not self.exit_on_failure:
            raise StartupError(reason)
        log.critical("{reason}; stopping", reason=reason)
        if not self.reactor.running:
            raise SystemExit(1)
        if not self.aborting:
            self.aborting = True
            self.reactor.addSystemEventTrigger("after", "shutdown", os._exit, 1)
            self.reactor.callWhenRunning(self.reactor.stop)

    def reload(self) -> None:
        """Re-read the user store and the CRL files, reopen the accounting log (SIGHUP,
        e.g. logrotate); a broken user file keeps the users in force."""
        if self.radius is not None:
            self.radius.accounting.reopen()
        if self.accounting is not None:
            self.accounting.reopen()
        self.revocation.reload()
        before = {user.name: user for user in self.users}
        try:
            count = self.users.load()
        except UserStoreError as e:
            log.error("reload failed, keeping the previous users: {error}", error=str(e))
            return
        log.info("reloaded {n} users from {path}", n=count, path=str(self.users.path))
        if self.config.users.disconnect_on_change and self.ike is not None:
            for name, old in before.items():
                new = self.users.get(name)
                change = "deleted" if new is None else "password changed" if new != old else ""
                for sa in self.ike.responder.find(user=name) if change else ():
                    self.ike.responder.disconnect(sa, f"by a user change ({name} {change})")

    def install_sighup(self) -> None:
        def on_hup(signum: int, frame: object) -> None:
            self.reactor.callFromThread(self.reload)

        signal.signal(signal.SIGHUP, on_hup)


@functools.cache
def client_anchors(path: Path) -> tuple[x509.Certificate, ...]:
    """The EAP-TLS trust anchors (``[eap.tls] client_ca``), read once."""
    try:
        return load_anchors([path])
    except CertificateError as e:
        raise PkiError(f"[eap.tls] client_ca: {e}") from None


@functools.cache
def tls_context(
    tls: TlsConfig, method: str, owners: frozenset[int], keylog: KeyLog | None = None
) -> TlsContexts:
    """The TLS server contexts of ``method`` (both: ``min_version`` to ``max_version``,
    PEAP with TLS 1.3 per RFC 9427; "tls": client certificates to ``client_ca``), made (and
    logged) once for the RADIUS and IKE engines."""
    identity = load_server_identity(tls.key, tls.certificate, tls.chain, owners)
    anchors = list(client_anchors(tls.client_ca)) if method == "tls" else []
    log.info(
        "EAP-{method} server certificate: {subject}, TLS {low} to {high}{clients}{resumption}",
        method=method.upper(),
        subject=identity.cert.subject.rfc4514_string(),
        low=tls.min_version,
        high=tls.max_version,
        clients=f", client certificates from {tls.client_ca}" if anchors else "",
        resumption=(
            f", resumption for {tls.session_lifetime} s, up to {tls.session_cache_size} sessions"
            if tls.resumption
            else ""
        ),
    )
    keylog_line = keylog.tls if keylog is not None else None
    versions = (tls.min_version, tls.max_version)
    make = functools.partial(server_context, identity, keylog_line, versions, anchors)
    if tls.resumption:
        return SessionCache(make, time.time, tls.session_lifetime, tls.session_cache_size)
    return make()


def build_eap_engine(
    config: EapConfig,
    names: Sequence[str],
    users: UserStore,
    reactor: Any,
    keylog: KeyLog | None = None,
    revocation: RevocationCheckers | None = None,
) -> EapEngine:
    """An EAP engine offering the methods ``names``, in that order; ``revocation``: the
    deny list and revocation checkers EAP-TLS asks (needed when it is offered)."""

    def mschapv2(source: str | None) -> MsChapV2:
        return MsChapV2(users, config.server_name, source)

    factories: dict[str, tuple[int, MethodFactory]] = {"mschapv2": (Type.MSCHAPV2, mschapv2)}
    checker: RevocationChecker | None = None
    tls = config.tls
    owners = frozenset(users.owners or private.trusted_owners())
    if "peap" in names:
        peap_context = tls_context(tls, "peap", owners, keylog)

        def peap(source: str | None) -> Peap:
            inner = [(Type.MSCHAPV2, mschapv2)]
            return Peap(
                peap_context, inner, tls.fragment_size, config.peap_cryptobinding, source, users
            )

        factories["peap"] = (Type.PEAP, peap)
    if "tls" in names:
        eap_tls_context = tls_context(tls, "tls", owners, keylog)
        assert revocation is not None
        anchors = ClientVerifier(client_anchors(tls.client_ca))
        check = CertificateCheck(anchors, revocation.deny, time.time)
        checker = revocation.checker(tls.revocation)

        def eap_tls(source: str | None) -> EapTls:
            return EapTls(eap_tls_context, check, tls.fragment_size)

        factories["tls"] = (Type.TLS, eap_tls)
    methods = [factories[name] for name in names]
    engine = EapEngine(
        methods,
        reactor,
        config.idle_timeout,
        config.memory_budget_mib * MIB,
        config.max_conversations_per_source,
        checker,
    )
    log.info(
        "EAP {methods}: up to {n} live conversations ([eap] memory_budget_mib = {mib}), "
        "{per} per client address",
        methods="/".join(names),
        n=engine.max_conversations,
        mib=config.memory_budget_mib,
        per=config.max_conversations_per_source,
    )
    return engine


REQID_BASE = 0x76700000  # vpnaaa's reqid range; stale SAs/policies in it are ours
REQIDS = range(REQID_BASE, REQID_BASE + 0x100000)


def certificate_request(anchors: Iterable[x509.Certificate]) -> bytes:
    """CERTREQ data for X.509 (RFC 7296 §3.7): the SHA-1 hash of each trust anchor's
    SubjectPublicKeyInfo, concatenated, each once."""
    spkis = dict.fromkeys(
        a.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        for a in anchors
    )
    return b"".join(hashlib.sha1(spki).digest() for spki in spkis)


class RevocationCheckers:
    """The revocation checkers of the ``auth = "certificate"`` IKE profiles and of
    EAP-TLS (``[eap.tls]``): one per distinct :class:`RevocationConfig`, so equal settings
    share one, over shared sources (one :class:`CrlFile` per path, the daemon's deny list,
    one HTTP fetcher and distribution point cache per timeout: a CRL downloaded, or a URL
    that failed, once for all)."""

    def __init__(self, reactor: Any, deny: DenyList) -> None:
        self.reactor = reactor
        self.deny = deny
        self._checkers: dict[RevocationConfig, RevocationChecker] = {}
        self._crl_files: dict[Path, CrlFile] = {}
        self._fetchers: dict[float, HttpFetcher] = {}
        self._points: dict[float, CrlDistributionPoints] = {}
        self._listeners: list[Callable[[CrlFile], None]] = []

    def checker(self, config: RevocationConfig) -> RevocationChecker:
        """The checker for ``config``; blocks the first time it names a CRL file (reads it)."""
        checker = self._checkers.get(config)
        if checker is not None:
            return checker
        timeout = config.timeout
        fetcher = self._fetchers.get(timeout)
        if fetcher is None and (config.ocsp_url or config.crl_distribution_points):
            fetcher = self._fetchers[timeout] = HttpFetcher(self.reactor, timeout)
        points = self._points.get(timeout)
        if points is None and fetcher is not None and config.crl_distribution_points:
            points = self._points[timeout] = CrlDistributionPoints(fetcher)
        checker = RevocationChecker(
            self.reactor,
            crl_files=[self._crl_file(path) for path in config.crl_files],
            deny=self.deny,
            crl_distribution_points=points if config.crl_distribution_points else None,
            ocsp=OcspClient(config.ocsp_url, fetcher) if fetcher and config.ocsp_url else None,
            hard_fail=config.hard_fail,
        )
        self._checkers[config] = checker
        return checker

    def _crl_file(self, path: Path) -> CrlFile:
        crl_file = self._crl_files.get(path)
        if crl_file is None:
            crl_file = self._crl_files[path] = CrlFile(path)
            crl_file.listeners += self._listeners
        return crl_file

    def reload(self) -> None:
        """Reread every CRL file (SIGHUP)."""
        for crl_file in self._crl_files.values():
            crl_file.reload()

    def follow(self) -> None:
        """Reread the CRL files that changed on disk (a ``stat`` each)."""
        for crl_file in self._crl_files.values():
            crl_file.follow()

    def watch(self, listener: Callable[[CrlFile], None]) -> None:
        """Call ``listener`` with every CRL file, of now and later, after each read."""
        self._listeners.append(listener)
        for crl_file in self._crl_files.values():
            crl_file.listeners.append(listener)


def _certificate_auth(
    profile: ProfileConfig, revocation: RevocationCheckers | None
) -> CertificateAuth:
    """The trust anchors and revocation policy of an ``auth = "certificate"`` profile.
    Blocks (reads the CA and CRL files)."""
    assert revocation is not None
    try:
        verifier = ClientVerifier.from_files(profile.client_ca)
    except CertificateError as e:
        raise PkiError(f"[ike] profile {profile.name}: client_ca: {e}") from None
    checker = revocation.checker(profile.revocation)
    return CertificateAuth(verifier, checker, profile.sha1_signatures)


class IkeService(service.Service):
    """The IKEv2 responder on UDP 500 and 4500, and where its CHILD_SAs go."""

    name = "ike"

    def __init__(
        self,
        config: IkeConfig,
        profiles: list[tuple[ProfileConfig, EapEngine | RadiusRelay | None]],
        reactor: Any,
        owners: frozenset[int] = frozenset(),
        local: Callable[[IPv4Address], bool] | None = None,
        revocation: RevocationCheckers | None = None,
    ) -> None:
        """``owners``: who may own the key file besides root (the daemon user);
        ``local``: whether an address is this host's (needed with ``framed_networks``);
        ``revocation``: the daemon's revocation checkers (needed by certificate profiles)."""
        self.config = config
        self.reactor = reactor
        identity = load_server_identity(config.key, config.certificate, config.chain, owners)
        certificates = {
            p.name: _certificate_auth(p, revocation) for p, _ in profiles if p.auth == "certificate"
        }
        reqids = itertools.count(REQID_BASE)
        self.leases = SqliteLeases(config.lease_file or ":memory:")  # opened at start
        context = ResponderContext(
            ike_policy=Policy.from_names(ProtocolId.IKE, config.ike_proposals),
            esp_policy=Policy.from_names(ProtocolId.ESP, config.esp_proposals),
            identity=identity,
            profiles=tuple(
                Profile(
                    p.name,
                    AddressPool(
                        p.pool,
                        leases=self.leases,
                        name=p.name,
                        clock=reactor.seconds,
                        lifetime=config.ike_lifetime,
                        framed=p.framed_networks,
                        local=local,
                    ),
                    p.dns,
                    p.nbns,
                    eap,
                    p.matches,
                    p.users,
                    p.dpd_delay,
                    p.max_sessions_per_user,
                    p.session_limit,
                    p.rekey,
                    p.auth,
                    certificates.get(p.name),
                )
                for p, eap in profiles
            ),
            child_lifetime=config.child_lifetime,
            fragment_size=config.fragment_size,
            next_reqid=lambda: next(reqids),
            certificate_authorities=certificate_request(
                a for c in certificates.values() for a in c.verifier.anchors
            ),
        )
        limits = Limits(
            config.cookie_threshold,
            config.half_open_per_source,
            config.half_open_limit,
            config.init_rate_per_source,
        )
        timing = Timing(
            config.retransmit_timeout,
            config.retransmit_base,
            config.retransmit_tries,
            config.ike_lifetime,
            config.shutdown_wait,
        )
        self.responder = Responder(context, NullInstaller(), reactor, config.listen, limits, timing)
        self.relay = next((eap for _, eap in profiles if isinstance(eap, RadiusRelay)), None)
        self.kernel: KernelInstaller | None = None
        self.netlink_error = ""  # why no XFRM netlink socket could be opened
        self.sockets: list[socket.socket] | None = None  # bound, not read yet; None: not opened
        self.ports: list[IListeningPort] = []
        self.started: defer.Deferred[None] | None = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._open()

    def _open(self) -> None:
        """Bind UDP ``port`` and ``nat_port`` and open the XFRM netlink sockets: what needs
        privileges. Nothing is read from the UDP sockets until :meth:`_start` has probed and
        cleaned the kernel (the kernel queues what arrives meanwhile)."""
        config = self.config
        self.sockets = []
        try:
            for number in (config.port, config.nat_port):
                self.sockets.append(bound_udp_socket(config.listen, number))
        except OSError as e:
            for sock in self.sockets:
                sock.close()
            self.sockets = []
            if config.enabled:
                raise StartupError(f"IKEv2 cannot listen on {config.listen}: {e}") from None
            log.warn(
                'IKEv2 not started (ike.enabled = "auto"): {error}; run as root or '
                "choose other ports",
                error=str(e),
            )
            return
        if config.installer != "null":
            try:
                self.kernel = KernelInstaller(self.reactor, expired=self.responder.expired)
            except OSError as e:  # no NETLINK_XFRM
                self.netlink_error = f"XFRM netlink: {e}"

    def startService(self) -> None:
        super().startService()
        try:  # as the daemon user: the file is its own
            self.leases.open(self.reactor.seconds())
        except LeaseFileError as e:
            raise StartupError(str(e)) from None
        if self.sockets is None:  # started without twistd: nothing was opened yet
            self._open()
        self.started = defer.Deferred.fromCoroutine(self._start())
        self.started.addErrback(self._failed)

    async def _start(self) -> None:
        """Choose the installer (probing the kernel), clear our stale kernel state, then
        read the sockets: a request never meets a half-configured datapath."""
        config = self.config
        if not self.sockets:
            return  # "auto" and the ports could not be bound
        if config.installer != "null":
            self.kernel = await self._kernel_installer()
            if self.kernel is not None:
                self.responder.installer = self.kernel
                removed = await self.kernel.flush(REQIDS)
                if removed:
                    log.info("removed {n} SAs/policies an earlier run left", n=removed)
        sockets, self.sockets = self.sockets, []
        for sock, nat_t in zip(sockets, (False, True), strict=True):
            if self.kernel is not None:
                bypass_ipsec(sock)  # IKE itself is never encrypted
                if nat_t:
                    espinudp(sock)  # ESP-in-UDP on 4500 goes to the kernel
            protocol = IkePort(self.responder, sock.getsockname()[1], nat_t)
            self.ports.append(self.reactor.adoptDatagramPort(sock.fileno(), sock.family, protocol))
            sock.close()  # the port holds its own descriptor
        ports = "/".join(str(p.getHost().port) for p in self.ports)
        if self.relay is not None:
            interface = "::" if ":" in self.relay.server[0] else "0.0.0.0"
            self.ports.append(self.reactor.listenUDP(0, self.relay, interface=interface))
        log.info(
            "IKEv2 responder on {listen} ports {ports}, {installer}",
            listen=config.listen,
            ports=ports,
            installer="kernel ESP" if self.kernel else "null installer (no ESP datapath)",
        )
        for profile in config.profiles:
            eap = ", ".join(profile.eap_methods)
            if profile.auth == "certificate":
                eap = f"none: client certificates from {', '.join(map(str, profile.client_ca))}"
            elif profile.backend == "radius" and self.relay is not None:
                eap = f"relayed to RADIUS {self.relay.server[0]}:{self.relay.server[1]}"
            log.info(
                "profile {name}: pool {pool}, EAP {eap}{matches}",
                name=profile.name,
                pool=str(profile.pool),
                eap=eap,
                matches=f", for {', '.join(sorted(profile.matches))}" if profile.matches else "",
            )

    async def _kernel_installer(self) -> KernelInstaller | None:
        """The kernel installer if this kernel can do ESP (probed on its netlink socket).
        ``installer = "kernel"`` makes a kernel that cannot a start-up error; ``"auto"``
        falls back to the null one."""
        reason = self.netlink_error
        if self.kernel is not None:
            support = await KernelInstaller.probe(self.reactor, self.kernel.netlink)
            if support.esp:
                return self.kernel
            reason = support.reason
            self.kernel.close()
            self.kernel = None
        if self.config.installer == "kernel":
            raise RuntimeError(f'ike.installer = "kernel" but {reason}')
        log.warn(
            'CHILD_SAs are recorded, not installed: {reason} (ike.installer = "auto")',
            reason=reason,
        )
        return None

    def _failed(self, failure: Failure) -> None:
        if not failure.check(StartupError):
            log.failure("IKEv2 responder failed to start", failure)
        self.parent.abort(failure.getErrorMessage())

    def stopService(self) -> defer.Deferred[Any]:
        """Tell every client (DELETE, a bounded wait), then close the sockets."""
        super().stopService()
        for sock in self.sockets or ():
            sock.close()  # stopped before it started reading
        self.sockets = None
        d = self.responder.shutdown()
        d.addBoth(lambda _: self.leases.close())
        d.addBoth(lambda _: _stop_listening(self))
        if self.kernel is not None:
            kernel = self.kernel
            d.addBoth(lambda _: kernel.close())
        return d


def bound_udp_socket(listen: str, port: int) -> socket.socket:
    """A UDP socket bound to ``listen``:``port`` that nobody reads yet (see
    :meth:`IkeService._open`), with the large receive queue."""
    family = socket.AF_INET6 if ":" in listen else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    try:
        sock.bind((listen, port))
        large_receive_buffer(sock)
    except BaseException:
        sock.close()
        raise
    return sock


def _stop_listening(owner: RadiusService | IkeService | DaeService) -> defer.Deferred[Any]:
    """Close the service's sockets; fires once they are closed (and the ports reusable)."""
    ports, owner.ports = owner.ports, []
    return defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in ports])


def make_service(config: Config, reactor: Any = None) -> VpnaaaService:
    logs.set_level(config.log_level)
    return VpnaaaService(config, reactor)
