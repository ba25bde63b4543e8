"""Build the daemon's services from a configuration: wiring only, no protocol logic."""

from __future__ import annotations

import signal
from typing import Any

from twisted.application import internet, service
from twisted.internet.interfaces import IListeningPort

from vpnaaa import auth, logs
from vpnaaa.config import Config, EapConfig
from vpnaaa.eap.authenticator import MethodFactory
from vpnaaa.eap.engine import EapEngine
from vpnaaa.eap.mschapv2 import MsChapV2
from vpnaaa.eap.packet import Type
from vpnaaa.eap.peap import Peap
from vpnaaa.eap.tls import server_context
from vpnaaa.pki import load_server_identity
from vpnaaa.radius.accounting import AccountingLog
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

    def stopService(self) -> Any:
        super().stopService()
        ports, self.ports = self.ports, []
        for port in ports:
            port.stopListening()
        self.accounting.close()


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
        if config.eap.enabled:
            self.eap = build_eap_engine(config.eap, self.users, reactor)
            expiry = internet.TimerService(EXPIRY_INTERVAL, self.eap.expire)
            expiry.clock = reactor
            expiry.setServiceParent(self)
        self.radius: RadiusService | None = None
        if config.radius.enabled:
            self.radius = RadiusService(config, self.backend, self.eap, reactor)
            self.radius.setServiceParent(self)

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


def build_eap_engine(config: EapConfig, users: UserStore, reactor: Any) -> EapEngine:
    """The EAP engine with the configured methods, in the configured order."""

    def mschapv2() -> MsChapV2:
        return MsChapV2(users, config.server_name)

    factories: dict[str, tuple[int, MethodFactory]] = {"mschapv2": (Type.MSCHAPV2, mschapv2)}
    if "peap" in config.methods:
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
    methods = [factories[name] for name in config.methods]
    log.info("EAP methods: {methods}", methods=", ".join(config.methods))
    return EapEngine(methods, reactor, config.idle_timeout, config.max_conversations)


def make_service(config: Config, reactor: Any = None) -> VpnaaaService:
    logs.set_level(config.log_level)
    return VpnaaaService(config, reactor)
