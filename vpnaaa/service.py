"""Build the daemon's services from a configuration: wiring only, no protocol logic."""

from __future__ import annotations

import itertools
import signal
from collections.abc import Sequence
from typing import Any

from twisted.application import internet, service
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort

from vpnaaa import auth, logs
from vpnaaa.config import Config, EapConfig, IkeConfig
from vpnaaa.eap.authenticator import MethodFactory
from vpnaaa.eap.engine import EapEngine
from vpnaaa.eap.mschapv2 import MsChapV2
from vpnaaa.eap.packet import Type
from vpnaaa.eap.peap import Peap
from vpnaaa.eap.tls import server_context
from vpnaaa.ike.const import ProtocolId
from vpnaaa.ike.proposal import Policy
from vpnaaa.ike.protocol import IkePort, Responder
from vpnaaa.ike.sa import ResponderContext
from vpnaaa.kernel.installer import ChildSaInstaller, NullInstaller
from vpnaaa.pki import load_server_identity
from vpnaaa.pool import AddressPool
from vpnaaa.radius.accounting import AccountingLog
from vpnaaa.radius.client import RadiusRelay
from vpnaaa.radius.eap import EapHandler
from vpnaaa.radius.handlers import AccessHandler
from vpnaaa.radius.server import ClientTable, DuplicateCache, acct_protocol, auth_protocol
from vpnaaa.users import UserStore, UserStoreError

log = logs.get("vpnaaa")
EXPIRY_INTERVAL = 5.0  # seconds between sweeps of idle EAP conversations


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
        self.auth = auth_protocol(clients, DuplicateCache(reactor, window), access)
        self.acct = acct_protocol(clients, DuplicateCache(reactor, window), self.accounting)
        self.ports: list[IListeningPort] = []

    def startService(self) -> None:
        super().startService()
        self.accounting.open()
        listen = self.config.listen
        self.ports = [
            self.reactor.listenUDP(self.config.auth_port, self.auth, interface=listen),
            self.reactor.listenUDP(self.config.acct_port, self.acct, interface=listen),
        ]
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


class VpnaaaService(service.MultiService):
    """The whole daemon: the user store plus each enabled front end."""

    def __init__(self, config: Config, reactor: Any = None) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor
        self.config = config
        self.reactor = reactor
        self.users = UserStore(config.users.file, config.users.verified_cache_size)
        count = self.users.load()
        log.info("loaded {n} users from {path}", n=count, path=str(config.users.file))
        self.backend = auth.LocalBackend(self.users)
        self.eap: EapEngine | None = None
        if config.eap.enabled and config.radius.enabled:
            self.eap = build_eap_engine(config.eap, config.eap.methods, self.users, reactor)
            self._expire_regularly(self.eap)
        self.radius: RadiusService | None = None
        if config.radius.enabled:
            self.radius = RadiusService(config, self.backend, self.eap, reactor)
            self.radius.setServiceParent(self)
        self.ike: IkeService | None = None
        if config.ike.enabled is not False:
            relay = config.ike.relay
            backend: EapEngine | RadiusRelay
            if relay is None:
                backend = build_eap_engine(config.eap, config.ike.eap_methods, self.users, reactor)
            else:
                backend = RadiusRelay(
                    (relay.server, relay.port),
                    relay.secret,
                    reactor,
                    relay.nas_identifier,
                    relay.timeout,
                    relay.tries,
                )
            self._expire_regularly(backend)
            self.ike = IkeService(config.ike, backend, NullInstaller(), reactor)
            self.ike.setServiceParent(self)

    def _expire_regularly(self, engine: EapEngine | RadiusRelay) -> None:
        expiry = internet.TimerService(EXPIRY_INTERVAL, engine.expire)
        expiry.clock = self.reactor
        expiry.setServiceParent(self)

    def reload(self) -> None:
        """Re-read the user store (SIGHUP); a broken file keeps the users in force."""
        try:
            count = self.users.load()
        except UserStoreError as e:
            log.error("reload failed, keeping the previous users: {error}", error=str(e))
            return
        log.info("reloaded {n} users from {path}", n=count, path=str(self.users.path))

    def install_sighup(self) -> None:
        def on_hup(signum: int, frame: object) -> None:
            self.reactor.callFromThread(self.reload)

        signal.signal(signal.SIGHUP, on_hup)


def build_eap_engine(
    config: EapConfig, names: Sequence[str], users: UserStore, reactor: Any
) -> EapEngine:
    """An EAP engine offering the methods ``names``, in that order."""

    def mschapv2() -> MsChapV2:
        return MsChapV2(users, config.server_name)

    factories: dict[str, tuple[int, MethodFactory]] = {"mschapv2": (Type.MSCHAPV2, mschapv2)}
    if "peap" in names:
        tls = config.tls
        identity = load_server_identity(tls.key, tls.certificate, tls.chain)
        context = server_context(identity)
        log.info(
            "PEAP server certificate: {subject}", subject=identity.cert.subject.rfc4514_string()
        )

        def peap() -> Peap:
            return Peap(
                context, [(Type.MSCHAPV2, mschapv2)], tls.fragment_size, config.peap_cryptobinding
            )

        factories["peap"] = (Type.PEAP, peap)
    methods = [factories[name] for name in names]
    return EapEngine(methods, reactor, config.idle_timeout, config.max_conversations)


class IkeService(service.Service):
    """The IKEv2 responder on UDP 500 and 4500."""

    name = "ike"

    def __init__(
        self,
        config: IkeConfig,
        eap: EapEngine | RadiusRelay,
        installer: ChildSaInstaller,
        reactor: Any,
    ) -> None:
        self.config = config
        self.reactor = reactor
        identity = load_server_identity(config.key, config.certificate, config.chain)
        reqids = itertools.count(1)
        context = ResponderContext(
            ike_policy=Policy.from_names(ProtocolId.IKE, config.ike_proposals),
            esp_policy=Policy.from_names(ProtocolId.ESP, config.esp_proposals),
            identity=identity,
            pool=AddressPool(config.pool),
            dns=config.dns,
            nbns=config.nbns,
            child_lifetime=config.child_lifetime,
            fragment_size=config.fragment_size,
            eap_begin=eap.begin,
            next_reqid=lambda: next(reqids),
        )
        self.responder = Responder(context, eap.step, installer, reactor, config.listen)
        self.relay = eap if isinstance(eap, RadiusRelay) else None
        self.ports: list[IListeningPort] = []

    def startService(self) -> None:
        super().startService()
        config = self.config
        try:
            for number, nat_t in ((config.port, False), (config.nat_port, True)):
                protocol = IkePort(self.responder, number, nat_t)
                port = self.reactor.listenUDP(number, protocol, interface=config.listen)
                protocol.number = port.getHost().port
                self.ports.append(port)
        except CannotListenError as e:
            for port in self.ports:
                port.stopListening()
            self.ports = []
            if config.enabled:
                raise
            log.warn(
                'IKEv2 not started (ike.enabled = "auto"): {error}; run as root or '
                "choose other ports",
                error=str(e.socketError),
            )
            return
        ports = "/".join(str(p.getHost().port) for p in self.ports)
        if self.relay is not None:
            interface = "::" if ":" in self.relay.server[0] else "0.0.0.0"
            self.ports.append(self.reactor.listenUDP(0, self.relay, interface=interface))
            eap = f"relayed to RADIUS {self.relay.server[0]}:{self.relay.server[1]}"
        else:
            eap = ", ".join(config.eap_methods)
        log.info(
            "IKEv2 responder on {listen} ports {ports}, pool {pool}, EAP {eap}",
            listen=config.listen,
            ports=ports,
            pool=str(config.pool),
            eap=eap,
        )

    def stopService(self) -> defer.Deferred[Any]:
        super().stopService()
        self.responder.shutdown()
        return _stop_listening(self)


def _stop_listening(owner: RadiusService | IkeService) -> defer.Deferred[Any]:
    """Close the service's sockets; fires once they are closed (and the ports reusable)."""
    ports, owner.ports = owner.ports, []
    return defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in ports])


def make_service(config: Config, reactor: Any = None) -> VpnaaaService:
    logs.set_level(config.log_level)
    return VpnaaaService(config, reactor)
