"""Build the daemon's services from a configuration: wiring only, no protocol logic."""

from __future__ import annotations

import signal
from typing import Any

from twisted.application import service
from twisted.internet.interfaces import IListeningPort

from vpnaaa import auth, logs
from vpnaaa.config import Config
from vpnaaa.radius.accounting import AccountingLog
from vpnaaa.radius.handlers import AccessHandler
from vpnaaa.radius.server import ClientTable, DuplicateCache, acct_protocol, auth_protocol
from vpnaaa.users import UserStore, UserStoreError

log = logs.get("vpnaaa")


class RadiusService(service.Service):
    """The RADIUS authentication and accounting ports."""

    name = "radius"

    def __init__(self, config: Config, backend: auth.AuthBackend, reactor: Any) -> None:
        self.config = config.radius
        self.reactor = reactor
        clients = ClientTable(self.config.clients)
        self.accounting = AccountingLog(self.config.accounting_log, self.config.accounting_fsync)
        window = self.config.duplicate_window
        self.auth = auth_protocol(clients, DuplicateCache(reactor, window), AccessHandler(backend))
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
        self.radius: RadiusService | None = None
        if config.radius.enabled:
            self.radius = RadiusService(config, self.backend, reactor)
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


def make_service(config: Config, reactor: Any = None) -> VpnaaaService:
    logs.set_level(config.log_level)
    return VpnaaaService(config, reactor)
