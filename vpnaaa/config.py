"""Configuration: a TOML file turned into frozen dataclasses.

Every option has an embedded default, so the daemon runs with no file at all. Errors
raise :class:`ConfigError` naming the file, the key and the reason, e.g.
``etc/vpnaaa.toml: radius.clients[0].address: '10.0.0.300' is not an IP address or network``.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import ipaddress
import os
import tomllib
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

from vpnaaa import private
from vpnaaa.ike.proposal import ALGORITHMS, DEFAULT_ESP, DEFAULT_IKE, LEGACY_WINDOWS7

EMBEDDED = "<embedded defaults>"
DEFAULT_STATE_DIR = "/var/lib/vpnaaa"
DEFAULT_USER = "vpnaaa"
LOG_LEVELS = ("debug", "info", "warn", "error")


class ConfigError(Exception):
    """A configuration problem: which file, which key, and why."""

    def __init__(self, source: str, key: str, reason: str) -> None:
        super().__init__(f"{source}: {key}: {reason}")
        self.source = source
        self.key = key
        self.reason = reason


Auto = Literal["auto"]


@dataclass(frozen=True)
class RadiusClient:
    """One NAS allowed to talk to the RADIUS server (RFC 2865 §3: shared secret per client).

    ``require_message_authenticator`` and ``limit_proxy_state`` are FreeRADIUS 3.2.5's
    BlastRADIUS (CVE-2024-3596) flags: true, false, or "auto" (learned from the client's
    first Access-Request). CHAP and MS-CHAPv1 are refused unless the entry allows them.
    """

    name: str
    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    secret: bytes = field(repr=False)
    require_message_authenticator: bool | Auto = "auto"
    limit_proxy_state: bool | Auto = "auto"
    allow_chap: bool = False
    allow_mschapv1: bool = False


@dataclass(frozen=True)
class RadiusConfig:
    enabled: bool = True
    listen: str = "127.0.0.1"
    auth_port: int = 1812
    acct_port: int = 1813
    accounting_log: Path = Path("accounting.log")
    accounting_fsync: bool = False
    duplicate_window: float = 10.0
    reject_delay: float = 1.0
    pap_queue: int = 64
    clients: tuple[RadiusClient, ...] = ()


@dataclass(frozen=True)
class LockoutConfig:
    """``[users.lockout]``: ``failures`` wrong passwords within ``window`` seconds lock the
    user for ``duration`` seconds (0 failures: never)."""

    failures: int = 10
    window: float = 600.0
    duration: float = 600.0


@dataclass(frozen=True)
class UsersConfig:
    file: Path = Path("users.json")
    verified_cache_size: int = 10000
    lockout: LockoutConfig = LockoutConfig()
    disconnect_on_change: bool = False  # a reload ends deleted or changed users' sessions


EAP_METHODS = ("peap", "mschapv2", "tls")
DEFAULT_EAP_METHODS = ("peap", "mschapv2")  # "tls" only where client_ca is configured
TLS_VERSIONS = ("1.2", "1.3")  # oldest first


@dataclass(frozen=True)
class RevocationConfig:
    """How client certificates are checked for revocation: an ``auth = "certificate"``
    IKE profile's, or EAP-TLS's (``[eap.tls]``). The keys have the same names in both
    places: ``crl_files``, ``crl_distribution_points``, ``ocsp_url``, ``revocation``
    (``"hard"``: :attr:`hard_fail`) and ``revocation_timeout`` (:attr:`timeout`). Equal
    values share one checker (vpnaaa/service.py)."""

    crl_files: tuple[Path, ...] = ()
    crl_distribution_points: bool = False  # fetch the CRLs certificates point to (HTTP)
    ocsp_url: str | None = None
    hard_fail: bool = False  # refuse when no source can answer ("soft": accept)
    timeout: float = 5.0  # seconds per OCSP request or CRL download


@dataclass(frozen=True)
class TlsConfig:
    """The TLS server of PEAP and EAP-TLS: identity files, versions, EAP-TLS's trust
    anchors for client certificates and revocation policy, and the fragment size."""

    certificate: Path
    key: Path
    chain: Path | None
    client_ca: Path
    min_version: str = "1.2"  # one of TLS_VERSIONS
    max_version: str = "1.3"  # PEAP (RFC 9427) and EAP-TLS (RFC 9190) alike
    fragment_size: int = 1024
    revocation: RevocationConfig = RevocationConfig()  # EAP-TLS
    resumption: bool = False  # session resumption (fast reconnect), eap/tls.py SessionCache
    session_lifetime: int = 3600  # seconds a session may be resumed
    session_cache_size: int = 4096  # sessions kept, per TLS server (PEAP, EAP-TLS)


PEAP_CRYPTOBINDING = ("off", "optional", "required")  # hostapd's crypto_binding 0, 1, 2


@dataclass(frozen=True)
class EapConfig:
    enabled: bool
    methods: tuple[str, ...]
    idle_timeout: float
    memory_budget_mib: int  # per engine; sizes its conversation table (eap/engine.py)
    max_conversations_per_source: int
    server_name: str
    peap_cryptobinding: str  # one of PEAP_CRYPTOBINDING
    tls: TlsConfig


IKE_EAP_METHODS = ("mschapv2", "peap")


@dataclass(frozen=True)
class IkeConfig:
    """The IKEv2 responder: like an ASA's crypto ikev2 policy, ipsec-proposal and one
    tunnel-group (pool, DNS, EAP methods)."""

    enabled: bool | None  # None: "auto", start when UDP 500/4500 can be bound
    listen: str
    port: int
    nat_port: int
    certificate: Path
    key: Path
    chain: Path | None
    ike_proposals: tuple[str, ...]
    esp_proposals: tuple[str, ...]
    ike_lifetime: int
    child_lifetime: int
    profiles: tuple[ProfileConfig, ...]  # the first is the default ([ike] itself)
    fragment_size: int
    installer: str = "auto"  # "kernel" (ESP via XFRM), "null" (record only) or "auto"
    cookie_threshold: int = 500  # half-open SAs above which IKE_SA_INIT needs a COOKIE
    half_open_per_source: int = 5  # half-open SAs one source address may hold
    half_open_limit: int = 10_000  # half-open SAs the gateway holds at most
    init_rate_per_source: float = 20.0  # new IKE SAs a second from one source
    retransmit_timeout: float = 4.0  # our requests: first wait, seconds (RFC 7296 §2.1)
    retransmit_base: float = 1.8  # each further wait is this much longer
    retransmit_tries: int = 5  # retransmissions before the peer counts as dead
    shutdown_wait: float = 2.0  # seconds clients get to answer the DELETE on shutdown
    lease_file: Path | None = None  # the address leases (SQLite); None: kept in memory only
    relay: RelayConfig | None = None  # [ike.radius]: the server backend = "radius" uses


@dataclass(frozen=True)
class ProfileConfig:
    """A connection profile (an ASA tunnel-group): ``[ike]`` is the default one, each
    ``[[ike.profiles]]`` another, chosen by the IDr the client asks for or the local
    address it reached (``match``)."""

    name: str
    matches: frozenset[str]
    pool: ipaddress.IPv4Network
    dns: tuple[ipaddress.IPv4Address, ...]
    nbns: tuple[ipaddress.IPv4Address, ...]
    eap_methods: tuple[str, ...]
    backend: str  # "local" or "radius"
    users: frozenset[str] = frozenset()  # who may use the profile (lower case); empty: all
    dpd_delay: float = 30.0  # seconds of silence before a liveness check; 0: none
    max_sessions_per_user: int = 0  # 0: any number
    session_limit: Literal["replace", "refuse"] = "replace"
    rekey: Literal["client", "gateway"] = "client"  # who rekeys at the soft lifetimes
    acct_interim_interval: int = 0  # seconds between Interim-Updates; 0: none
    # where a Framed-IP-Address outside the pools may come from (RFC 2865 §5.8)
    framed_networks: tuple[ipaddress.IPv4Network, ...] = ()
    auth: Literal["eap", "certificate"] = "eap"  # how clients authenticate in IKE_AUTH
    # auth = "certificate": trust anchors (PEM), CRL files, OCSP responder, failure policy
    client_ca: tuple[Path, ...] = ()
    revocation: RevocationConfig = RevocationConfig()
    sha1_signatures: bool = True  # accept the client's AUTH method 1 (RSA with SHA-1)


@dataclass(frozen=True)
class RelayConfig:
    """``[ike.radius]``: the external RADIUS server that authenticates IKE users."""

    server: str
    port: int
    secret: bytes = field(repr=False)
    timeout: float
    tries: int
    nas_identifier: str
    source_ports: int = 4  # UDP sockets, each its own 256 Identifiers (RFC 5080 §2.2.2)
    max_queue: int = 1024  # requests waiting for a free Identifier
    max_conversations: int = 4096
    max_conversations_per_source: int = 32


@dataclass(frozen=True)
class AccountingConfig:
    """``[accounting]``: the IKE sessions' records (RFC 2866) go to the local accounting log
    and, with ``servers``, to external accounting servers, tried in that order."""

    enabled: bool = True
    servers: tuple[tuple[str, int], ...] = ()  # (address, port); the first is used first
    secret: bytes = field(default=b"", repr=False)
    timeout: float = 3.0  # seconds per try
    tries: int = 3  # per server, then the next one
    max_queue: int = 1024  # records waiting for an Identifier
    nas_identifier: str = "vpnaaa"
    revive_interval: float = 120.0  # seconds after a fail-over, back to the first server


@dataclass(frozen=True)
class AdminConfig:
    """The admin API: sessions and metrics over HTTP on a UNIX socket (mode 0600, the
    daemon user's) and, only when ``listen`` is set, on TCP with a bearer token."""

    enabled: bool = True
    socket: Path | None = Path("admin.sock")  # None: no UNIX socket
    listen: str | None = None  # None: no TCP
    port: int = 9190
    token: bytes | None = field(default=None, repr=False)  # required with TCP


@dataclass(frozen=True)
class DaeConfig:
    """``[dae]``: the RADIUS Dynamic Authorization server (RFC 5176) for the AAA servers in
    ``clients`` (address and secret, as ``[[radius.clients]]``): Disconnect-Request and
    CoA-Request for IKE sessions. ``nas_addresses`` empty: the addresses of this host's
    interfaces (never loopback or unspecified ones)."""

    enabled: bool = False
    listen: str = "127.0.0.1"
    port: int = 3799
    clients: tuple[RadiusClient, ...] = ()
    replay_window: float = 300.0  # seconds an Event-Timestamp may be off (RFC 5176 §6.3)
    require_event_timestamp: bool = False
    nas_identifier: str = "vpnaaa"
    nas_addresses: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...] = ()


@dataclass(frozen=True)
class DaemonConfig:
    """How the daemon runs once its ports are bound: as ``user`` with only CAP_NET_ADMIN
    (``user = "root"`` keeps every privilege)."""

    user: str = DEFAULT_USER


@dataclass(frozen=True)
class DebugConfig:
    """``[debug]``: keys for Wireshark (:mod:`vpnaaa.keylog`), off unless ``keylog``."""

    keylog: bool = False
    keylog_dir: Path = Path(DEFAULT_STATE_DIR) / "keylog"


@dataclass(frozen=True)
class Config:
    source: str
    state_dir: Path
    log_level: str
    users: UsersConfig
    radius: RadiusConfig
    eap: EapConfig
    ike: IkeConfig
    admin: AdminConfig
    daemon: DaemonConfig = DaemonConfig()
    debug: DebugConfig = DebugConfig()
    dae: DaeConfig = DaeConfig()
    accounting: AccountingConfig = AccountingConfig()


class _Section:
    """Typed access to one TOML table that reports errors with the dotted key."""

    def __init__(self, source: str, prefix: str, table: Any) -> None:
        if not isinstance(table, dict):
            raise ConfigError(source, prefix, "must be a table")
        self.source = source
        self.prefix = prefix
        self.table = dict(table)

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def error(self, name: str, reason: str) -> ConfigError:
        return ConfigError(self.source, self.key(name), reason)

    def get(self, name: str, kind: type | tuple[type, ...], default: Any) -> Any:
        value = self.table.pop(name, default)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, bool) and kind in (int, float):
            raise self.error(name, f"expected a number, got {value!r}")
        if not isinstance(value, kind):
            expected = (
                kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            )
            raise self.error(name, f"expected {expected}, got {value!r}")
        return value

    def get_int(self, name: str, default: int, low: int, high: int) -> int:
        value = self.get(name, int, default)
        if not low <= value <= high:
            raise self.error(name, f"{value} is outside {low}..{high}")
        return value

    def get_float(self, name: str, default: float, low: float, high: float) -> float:
        value = self.get(name, float, default)
        if not low <= value <= high:
            raise self.error(name, f"{value:g} is outside {low:g}..{high:g}")
        return value

    def sub(self, name: str) -> _Section:
        return _Section(self.source, self.key(name), self.table.pop(name, {}))

    def finish(self) -> None:
        """Reject keys nobody asked for: a typo must not silently fall back to a default."""
        for name in self.table:
            raise self.error(name, "unknown option")


@dataclass(frozen=True)
class _Reading:
    """What one :func:`load` checks secret files against: the owners they may have, and the
    configuration file as it was read (fstat of its descriptor, reached through a link)."""

    owners: frozenset[int]
    config: tuple[os.stat_result, bool] | None


_reading: contextvars.ContextVar[_Reading] = contextvars.ContextVar("_reading")


def _read_private(source: str, key: str, path: Path) -> bytes:
    """A secret file's contents (:mod:`vpnaaa.private`: no link, trusted owner, mode 0600)."""
    try:
        return private.read(path, _reading.get().owners)
    except private.PrivateFileError as e:
        raise ConfigError(source, key, str(e)) from None


def _check_private_config(source: str, key: str, path: Path) -> None:
    """The configuration file holds an inline secret: the checks of a secret file, on the
    descriptor it was read from."""
    reading = _reading.get()
    assert reading.config is not None
    st, linked = reading.config
    try:
        if linked:
            raise private.PrivateFileError(path, "holds a secret but is a symbolic link")
        private.check(path, st, reading.owners)
    except private.PrivateFileError as e:
        raise ConfigError(source, key, str(e)) from None


def _secret(section: _Section, state_dir: Path, config_path: Path | None) -> bytes:
    """A RADIUS shared secret: inline (the file must be private) or in a private file."""
    has_secret = "secret" in section.table
    has_file = "secret_file" in section.table
    if has_secret == has_file:
        raise section.error("secret", "set exactly one of secret and secret_file")
    if has_secret:
        secret = section.get("secret", str, "").encode()
        if config_path is not None:
            _check_private_config(section.source, section.key("secret"), config_path)
    else:
        path = state_dir / section.get("secret_file", str, "")
        secret = _read_private(section.source, section.key("secret_file"), path).strip()
    if not secret:
        raise section.error("secret", "must not be empty")
    return secret


def _network(section: _Section) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A client entry's ``address``: an IP address or CIDR network."""
    if "address" not in section.table:
        raise section.error("address", "is required (an IP address or CIDR network)")
    address = section.get("address", str, "")
    try:
        return ipaddress.ip_network(address, strict=False)
    except ValueError:
        raise section.error("address", f"{address!r} is not an IP address or network") from None


def _client(section: _Section, state_dir: Path, config_path: Path | None) -> RadiusClient:
    network = _network(section)
    name = section.get("name", str, str(network))
    secret = _secret(section, state_dir, config_path)
    client = RadiusClient(
        name,
        network,
        secret,
        require_message_authenticator=_tristate(section, "require_message_authenticator"),
        limit_proxy_state=_tristate(section, "limit_proxy_state"),
        allow_chap=section.get("allow_chap", bool, False),
        allow_mschapv1=section.get("allow_mschapv1", bool, False),
    )
    section.finish()
    return client


def _tristate(section: _Section, name: str) -> bool | Auto:
    """true, false or "auto" (the default), as FreeRADIUS's yes / no / auto."""
    value = section.get(name, (bool, str), "auto")
    if value not in (True, False, "auto"):
        raise section.error(name, f'{value!r}: use true, false or "auto"')
    return value


def _radius(section: _Section, state_dir: Path, config_path: Path | None) -> RadiusConfig:
    listen = section.get("listen", str, RadiusConfig.listen)
    try:
        ipaddress.ip_address(listen)
    except ValueError:
        raise section.error("listen", f"{listen!r} is not an IP address") from None
    raw_clients = section.table.pop("clients", None)
    if raw_clients is None:
        clients = (
            RadiusClient(
                "localhost", ipaddress.ip_network("127.0.0.1/32"), _demo_secret(section, state_dir)
            ),
        )
    elif not isinstance(raw_clients, list):
        raise section.error("clients", "must be an array of tables ([[radius.clients]])")
    else:
        clients = tuple(
            _client(
                _Section(section.source, f"{section.key('clients')}[{i}]", item),
                state_dir,
                config_path,
            )
            for i, item in enumerate(raw_clients)
        )
    config = RadiusConfig(
        enabled=section.get("enabled", bool, True),
        listen=listen,
        auth_port=section.get_int("auth_port", 1812, 0, 65535),
        acct_port=section.get_int("acct_port", 1813, 0, 65535),
        accounting_log=state_dir / section.get("accounting_log", str, "accounting.log"),
        accounting_fsync=section.get("accounting_fsync", bool, False),
        duplicate_window=section.get("duplicate_window", float, 10.0),
        reject_delay=section.get("reject_delay", float, 1.0),
        pap_queue=section.get_int("pap_queue", 64, 1, 100_000),
        clients=clients,
    )
    if config.duplicate_window < 0:
        raise section.error("duplicate_window", "must not be negative")
    if not 0 <= config.reject_delay <= 10:
        raise section.error("reject_delay", f"{config.reject_delay} is outside 0..10 seconds")
    section.finish()
    return config


DEMO_SECRET_FILE = "radius-secret"


def _demo_secret(section: _Section, state_dir: Path) -> bytes:
    """The loopback client's secret when no client is configured (made by ``vpnaaa demo``)."""
    path = state_dir / DEMO_SECRET_FILE
    try:
        return private.read(path, _reading.get().owners).strip()
    except private.PrivateFileError as e:
        hint = " (run `vpnaaa demo` to create the demo secret)" if e.missing else ""
        raise ConfigError(section.source, section.key("clients"), f"{e}{hint}") from None


def load(path: str | os.PathLike[str] | None, state_dir: str | None = None) -> Config:
    """Read and validate a configuration; ``path=None`` means the embedded defaults.

    ``state_dir`` overrides ``general.state_dir`` (the twistd/CLI ``--state-dir`` option).
    """
    source = str(path) if path is not None else EMBEDDED
    data: dict[str, Any] = {}
    config_path = Path(path) if path is not None else None
    config_stat: tuple[os.stat_result, bool] | None = None
    if config_path is not None:
        try:
            with _open_config(config_path) as (f, linked):
                config_stat = (os.fstat(f.fileno()), linked)
                data = tomllib.load(f)
        except OSError as e:
            raise ConfigError(source, "(file)", e.strerror or str(e)) from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(source, "(syntax)", str(e)) from None
    root = _Section(source, "", data)
    general = root.sub("general")
    configured_state = general.get("state_dir", str, DEFAULT_STATE_DIR)
    state = Path(state_dir or configured_state)
    log_level = general.get("log_level", str, "info")
    if log_level not in LOG_LEVELS:
        raise general.error("log_level", f"{log_level!r} is not one of {', '.join(LOG_LEVELS)}")
    general.finish()
    daemon = _daemon(root.sub("daemon"))
    token = _reading.set(_Reading(private.trusted_owners(daemon.user), config_stat))
    try:
        return _load(source, root, state, log_level, daemon, config_path)
    finally:
        _reading.reset(token)


@contextlib.contextmanager
def _open_config(path: Path) -> Iterator[tuple[BinaryIO, bool]]:
    """The configuration file, opened without following a link unless it is one, so that
    the fstat of its descriptor describes what is read; yields (file, reached by a link)."""
    try:
        fd, linked = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), False
    except OSError as e:
        if e.errno != errno.ELOOP:
            raise
        fd, linked = os.open(path, os.O_RDONLY | os.O_CLOEXEC), True
    with os.fdopen(fd, "rb") as f:
        yield f, linked


def _daemon(section: _Section) -> DaemonConfig:
    user = section.get("user", str, DEFAULT_USER)
    if not user:
        raise section.error("user", 'must name a user ("root" keeps every privilege)')
    section.finish()
    return DaemonConfig(user)


def _load(
    source: str,
    root: _Section,
    state: Path,
    log_level: str,
    daemon: DaemonConfig,
    config_path: Path | None,
) -> Config:
    users_section = root.sub("users")
    users = UsersConfig(
        file=state / users_section.get("file", str, "users.json"),
        verified_cache_size=users_section.get_int("verified_cache_size", 10000, 0, 10_000_000),
        lockout=_lockout(users_section.sub("lockout")),
        disconnect_on_change=users_section.get("disconnect_on_change", bool, False),
    )
    users_section.finish()
    eap_section = root.sub("eap")
    eap = _eap(eap_section, state)
    radius_section = root.sub("radius")
    enabled = radius_section.table.get("enabled", True)
    radius = (
        _radius(radius_section, state, config_path)
        if enabled is not False
        else _disabled(radius_section, state)
    )
    ike = _ike(root.sub("ike"), state, eap.tls, config_path)
    admin = _admin(root.sub("admin"), state)
    debug = _debug(root.sub("debug"), state)
    dae = _dae(root.sub("dae"), state, config_path, ike)
    accounting = _accounting(root.sub("accounting"), state, config_path)
    root.finish()
    return Config(
        source, state, log_level, users, radius, eap, ike, admin, daemon, debug, dae, accounting
    )


def _debug(section: _Section, state_dir: Path) -> DebugConfig:
    """``[debug]``: the key log and its directory (relative to state_dir)."""
    keylog = section.get("keylog", bool, False)
    directory = section.get("keylog_dir", str, "keylog")
    section.finish()
    if not directory:
        raise section.error("keylog_dir", "must name a directory")
    return DebugConfig(keylog, state_dir / directory)


def _dae(section: _Section, state_dir: Path, config_path: Path | None, ike: IkeConfig) -> DaeConfig:
    """``[dae]``: off unless enabled, and then only with clients and the IKE responder."""
    if not section.get("enabled", bool, False):
        section.table.clear()  # not validated, as a disabled [radius]
        return DaeConfig()
    if ike.enabled is False:
        raise section.error("enabled", "acts on IKE sessions, but [ike] enabled = false")
    listen = section.get("listen", str, DaeConfig.listen)
    try:
        ipaddress.ip_address(listen)
    except ValueError:
        raise section.error("listen", f"{listen!r} is not an IP address") from None
    raw_clients = section.table.pop("clients", [])
    if not isinstance(raw_clients, list) or not raw_clients:
        raise section.error("clients", "enabled = true needs one [[dae.clients]] or more")
    clients = []
    for i, item in enumerate(raw_clients):
        entry = _Section(section.source, f"{section.key('clients')}[{i}]", item)
        network = _network(entry)
        clients.append(
            RadiusClient(
                entry.get("name", str, str(network)),
                network,
                _secret(entry, state_dir, config_path),
                require_message_authenticator=entry.get(
                    "require_message_authenticator", bool, False
                ),
            )
        )
        entry.finish()
    addresses = section.get("nas_addresses", list, [])
    try:
        nas_addresses = tuple(ipaddress.ip_address(str(a)) for a in addresses)
    except ValueError:
        reason = f"{addresses!r} is not a list of IP addresses"
        raise section.error("nas_addresses", reason) from None
    for address in nas_addresses:
        if address.is_unspecified or address.is_loopback:
            reason = f"{address} is on every host: it names no NAS"
            raise section.error("nas_addresses", reason)
    default_name = ike.relay.nas_identifier if ike.relay is not None else DaeConfig.nas_identifier
    config = DaeConfig(
        enabled=True,
        listen=listen,
        port=section.get_int("port", DaeConfig.port, 0, 65535),
        clients=tuple(clients),
        replay_window=section.get_float("replay_window", DaeConfig.replay_window, 1.0, 86400.0),
        require_event_timestamp=section.get("require_event_timestamp", bool, False),
        nas_identifier=section.get("nas_identifier", str, default_name),
        nas_addresses=nas_addresses,
    )
    section.finish()
    return config


def _accounting(section: _Section, state_dir: Path, config_path: Path | None) -> AccountingConfig:
    """``[accounting]``: ``servers`` as "address" or "address:port" ("[v6]:port"), one
    address family; a secret only with servers."""
    raw = section.get("servers", list, [])
    servers = tuple(_server(section, str(item)) for item in raw)
    if len({":" in host for host, _ in servers}) > 1:
        raise section.error("servers", "mixes IPv4 and IPv6 addresses: use one family")
    secret = b""
    if servers:
        secret = _secret(section, state_dir, config_path)
    elif "secret" in section.table or "secret_file" in section.table:
        raise section.error("secret", "set only with servers")
    config = AccountingConfig(
        enabled=section.get("enabled", bool, True),
        servers=servers,
        secret=secret,
        timeout=section.get_float("timeout", 3.0, 0.1, 60.0),
        tries=section.get_int("tries", 3, 1, 10),
        max_queue=section.get_int("max_queue", 1024, 0, 1_000_000),
        nas_identifier=section.get("nas_identifier", str, "vpnaaa"),
        revive_interval=section.get_float("revive_interval", 120.0, 0.0, 86400.0),
    )
    if not 0 < len(config.nas_identifier.encode()) <= 253:
        raise section.error("nas_identifier", "must be 1 to 253 octets (RFC 2865 section 5)")
    section.finish()
    return config


def _server(section: _Section, text: str) -> tuple[str, int]:
    """An accounting server: "192.0.2.1", "192.0.2.1:1813", "[2001:db8::1]:1813"."""
    host, port = text, "1813"
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            port = rest.removeprefix(":")
    elif text.count(":") == 1:
        host, port = text.split(":")
    try:
        address = ipaddress.ip_address(host)
        number = int(port)
        if not 1 <= number <= 65535:
            raise ValueError(port)
    except ValueError:
        raise section.error(
            "servers", f"{text!r} is not ADDRESS, ADDRESS:PORT or [IPv6]:PORT"
        ) from None
    return str(address), number


def _admin(section: _Section, state_dir: Path) -> AdminConfig:
    """``[admin]``: the UNIX socket by default; TCP only with ``listen`` and a token."""
    enabled = section.get("enabled", bool, True)
    socket_name = section.get("socket", str, "admin.sock")
    listen = section.get("listen", str, "")
    port = section.get_int("port", 9190, 0, 65535)
    token_name = section.get("token_file", str, "admin-token")
    section.finish()
    if not enabled:
        return AdminConfig(enabled=False, socket=None)
    token = None
    if listen:
        try:
            ipaddress.ip_address(listen)
        except ValueError:
            raise section.error("listen", f"{listen!r} is not an IP address") from None
        path = state_dir / token_name
        try:
            token = private.read(path, _reading.get().owners).strip()
        except private.PrivateFileError as e:
            hint = ""
            if e.missing:
                hint = f" (TCP needs a token: run `vpnaaa admin-token` to create {path})"
            raise section.error("token_file", f"{e}{hint}") from None
        if len(token) < 16:
            raise section.error("token_file", f"{path}: the token must be 16 characters or more")
    elif not socket_name:
        raise section.error(
            "socket", "empty and no TCP listen address: set one of them (or enabled = false)"
        )
    return AdminConfig(
        enabled=True,
        socket=state_dir / socket_name if socket_name else None,
        listen=listen or None,
        port=port,
        token=token,
    )


def _lockout(section: _Section) -> LockoutConfig:
    config = LockoutConfig(
        failures=section.get_int("failures", 10, 0, 1_000_000),
        window=section.get("window", float, 600.0),
        duration=section.get("duration", float, 600.0),
    )
    for name in ("window", "duration"):
        if getattr(config, name) <= 0:
            raise section.error(name, "must be positive")
    section.finish()
    return config


def _addresses(section: _Section, name: str) -> tuple[ipaddress.IPv4Address, ...]:
    values = section.get(name, list, [])
    try:
        return tuple(ipaddress.IPv4Address(v) for v in values)
    except (ValueError, TypeError):
        raise section.error(name, f"{values!r} is not a list of IPv4 addresses") from None


def _names(
    section: _Section, name: str, default: tuple[str, ...], known: Collection[str]
) -> tuple[str, ...]:
    values = section.get(name, list, list(default))
    unknown = [v for v in values if v not in known]
    if not values or unknown:
        raise section.error(
            name, f"unknown or missing names {unknown!r}; known: {', '.join(known)}"
        )
    return tuple(values)


def _ike(section: _Section, state_dir: Path, tls: TlsConfig, config_path: Path | None) -> IkeConfig:
    enabled = section.get("enabled", (bool, str), "auto")
    if enabled not in (True, False, "auto"):
        raise section.error("enabled", f'{enabled!r}: use true, false or "auto"')
    legacy = section.get("legacy_windows7", bool, False)
    ike_names = _names(section, "ike_proposals", DEFAULT_IKE, ALGORITHMS)
    esp_names = _names(section, "esp_proposals", DEFAULT_ESP, ALGORITHMS)
    if legacy:
        ike_names += LEGACY_WINDOWS7
        esp_names += LEGACY_WINDOWS7
    default = _profile(section, "default", frozenset(), state_dir)
    raw_profiles = section.table.pop("profiles", [])
    if not isinstance(raw_profiles, list):
        raise section.error("profiles", "must be an array of tables ([[ike.profiles]])")
    profiles = [default]
    for i, table in enumerate(raw_profiles):
        sub = _Section(section.source, f"{section.key('profiles')}[{i}]", table)
        name = sub.get("name", str, f"profile{i + 1}")
        matches = frozenset(str(m).lower() for m in sub.get("match", list, []))
        if not matches and sub.table.get("auth") != "certificate":
            raise sub.error("match", "list the IDr names or local addresses that select it")
        if any(p.name == name for p in profiles):
            raise sub.error("name", f"{name!r} is taken: profile names key the lease file")
        profiles.append(_profile(sub, name, matches, state_dir))
        sub.finish()
    chain = section.get("chain", str, "")
    lease_file = section.get("lease_file", str, "leases.sqlite")
    config = IkeConfig(
        enabled=None if enabled == "auto" else enabled,
        listen=section.get("listen", str, "0.0.0.0"),
        port=section.get_int("port", 500, 0, 65535),
        nat_port=section.get_int("nat_port", 4500, 0, 65535),
        certificate=state_dir / section.get("certificate", str, str(tls.certificate)),
        key=state_dir / section.get("key", str, str(tls.key)),
        chain=(state_dir / chain) if chain else tls.chain,
        ike_proposals=ike_names,
        esp_proposals=esp_names,
        ike_lifetime=section.get_int("ike_lifetime", 86400, 30, 30 * 86400),
        child_lifetime=section.get_int("child_lifetime", 28800, 30, 30 * 86400),
        profiles=tuple(profiles),
        fragment_size=section.get_int("fragment_size", 1280, 576, 65535),
        installer=section.get("installer", str, "auto"),
        cookie_threshold=section.get_int("cookie_threshold", 500, 0, 1_000_000),
        half_open_per_source=section.get_int("half_open_per_source", 5, 1, 1_000_000),
        half_open_limit=section.get_int("half_open_limit", 10_000, 1, 10_000_000),
        init_rate_per_source=section.get_float("init_rate_per_source", 20.0, 0.1, 1e6),
        retransmit_timeout=section.get_float("retransmit_timeout", 4.0, 0.1, 60.0),
        retransmit_base=section.get_float("retransmit_base", 1.8, 1.0, 4.0),
        retransmit_tries=section.get_int("retransmit_tries", 5, 0, 20),
        shutdown_wait=section.get_float("shutdown_wait", 2.0, 0.0, 60.0),
        lease_file=state_dir / lease_file if lease_file else None,
        relay=_relay(section, state_dir, config_path),
    )
    if config.installer not in ("auto", "kernel", "null"):
        raise section.error("installer", f"{config.installer!r}: use auto, kernel or null")
    if config.relay is None and any(p.backend == "radius" for p in profiles):
        raise section.error("radius", 'backend = "radius" needs the [ike.radius] server')
    section.finish()
    return config


def _profile(
    section: _Section, name: str, matches: frozenset[str], state_dir: Path
) -> ProfileConfig:
    pool = section.get("pool", str, "10.99.0.0/24")
    try:
        network = ipaddress.IPv4Network(pool)
    except ValueError:
        raise section.error("pool", f"{pool!r} is not an IPv4 network") from None
    backend = section.get("backend", str, "local")
    if backend not in ("local", "radius"):
        raise section.error("backend", f'{backend!r}: use "local" or "radius"')
    limit = section.get("session_limit", str, "replace")
    if limit not in ("replace", "refuse"):
        raise section.error("session_limit", f'{limit!r}: use "replace" or "refuse"')
    rekey = section.get("rekey", str, "client")
    if rekey not in ("client", "gateway"):
        raise section.error("rekey", f'{rekey!r}: use "client" or "gateway"')
    return ProfileConfig(
        name=name,
        matches=matches,
        pool=network,
        dns=_addresses(section, "dns"),
        nbns=_addresses(section, "nbns"),
        eap_methods=_names(section, "eap_methods", IKE_EAP_METHODS, EAP_METHODS),
        backend=backend,
        users=frozenset(str(u).lower() for u in section.get("users", list, [])),
        dpd_delay=section.get_float("dpd_delay", 30.0, 0.0, 86400.0),
        max_sessions_per_user=section.get_int("max_sessions_per_user", 0, 0, 1_000_000),
        session_limit=limit,
        rekey=rekey,
        acct_interim_interval=section.get_int("acct_interim_interval", 0, 0, 2**31 - 1),
        framed_networks=_networks(section, "framed_networks"),
        **_certificate_auth(section, state_dir),
    )


def _certificate_auth(section: _Section, state_dir: Path) -> dict[str, Any]:
    """``auth`` and, with ``auth = "certificate"``, what checks client certificates."""
    auth = section.get("auth", str, "eap")
    if auth not in ("eap", "certificate"):
        raise section.error("auth", f'{auth!r}: use "eap" or "certificate"')
    if auth == "eap":
        for key in ("client_ca", "sha1_signatures", *REVOCATION_KEYS):
            if key in section.table:
                raise section.error(key, 'only for auth = "certificate" (EAP-TLS: [eap.tls])')
        return {"auth": auth}
    client_ca = tuple(state_dir / str(p) for p in section.get("client_ca", list, []))
    if not client_ca:
        raise section.error("client_ca", 'auth = "certificate" needs the CA files to trust')
    return {
        "auth": auth,
        "client_ca": client_ca,
        "revocation": _revocation(section, state_dir),
        "sha1_signatures": section.get("sha1_signatures", bool, True),
    }


REVOCATION_KEYS = (
    "crl_files",
    "crl_distribution_points",
    "ocsp_url",
    "revocation",
    "revocation_timeout",
)


def _revocation(section: _Section, state_dir: Path) -> RevocationConfig:
    """The revocation keys (:class:`RevocationConfig`) of a certificate profile or of
    ``[eap.tls]``; CRL file names are relative to ``state_dir``."""
    ocsp_url = section.get("ocsp_url", str, "")
    if ocsp_url and not ocsp_url.startswith("http://"):  # RFC 6960 A.1; answers are signed
        raise section.error("ocsp_url", f"{ocsp_url!r} is not an http:// URL")
    revocation = section.get("revocation", str, "soft")
    if revocation not in ("soft", "hard"):
        raise section.error("revocation", f'{revocation!r}: use "soft" or "hard"')
    return RevocationConfig(
        crl_files=tuple(state_dir / str(p) for p in section.get("crl_files", list, [])),
        crl_distribution_points=section.get("crl_distribution_points", bool, False),
        ocsp_url=ocsp_url or None,
        hard_fail=revocation == "hard",
        timeout=section.get_float("revocation_timeout", 5.0, 0.5, 60.0),
    )


def _networks(section: _Section, name: str) -> tuple[ipaddress.IPv4Network, ...]:
    values = section.get(name, list, [])
    try:
        return tuple(ipaddress.IPv4Network(v) for v in values)
    except (ValueError, TypeError):
        raise section.error(name, f"{values!r} is not a list of IPv4 networks") from None


def _relay(ike: _Section, state_dir: Path, config_path: Path | None) -> RelayConfig | None:
    if "radius" not in ike.table:
        return None
    radius = ike.sub("radius")
    server = radius.get("server", str, "")
    try:
        ipaddress.ip_address(server)
    except ValueError:
        raise radius.error("server", f"{server!r} is not an IP address") from None
    secret = _secret(radius, state_dir, config_path)
    config = RelayConfig(
        server=server,
        port=radius.get_int("port", 1812, 1, 65535),
        secret=secret,
        timeout=radius.get("timeout", float, 3.0),
        tries=radius.get_int("tries", 3, 1, 10),
        nas_identifier=radius.get("nas_identifier", str, "vpnaaa"),
        source_ports=radius.get_int("source_ports", RelayConfig.source_ports, 1, 64),
        max_queue=radius.get_int("max_queue", RelayConfig.max_queue, 0, 1_000_000),
        max_conversations=radius.get_int(
            "max_conversations", RelayConfig.max_conversations, 1, 10_000_000
        ),
        max_conversations_per_source=radius.get_int(
            "max_conversations_per_source", RelayConfig.max_conversations_per_source, 1, 1_000_000
        ),
    )
    if config.timeout <= 0:
        raise radius.error("timeout", "must be positive")
    radius.finish()
    return config


def _eap(section: _Section, state_dir: Path) -> EapConfig:
    methods = section.get("methods", list, list(DEFAULT_EAP_METHODS))
    if (
        not methods
        or any(m not in EAP_METHODS for m in methods)
        or len(set(methods)) < len(methods)
    ):
        raise section.error(
            "methods", f"{methods!r}: list one or more of {', '.join(EAP_METHODS)}, once each"
        )
    tls = section.sub("tls")
    chain = tls.get("chain", str, "pki/chain.pem")
    tls_config = TlsConfig(
        certificate=state_dir / tls.get("certificate", str, "pki/server.pem"),
        key=state_dir / tls.get("key", str, "pki/server.key"),
        chain=state_dir / chain if chain else None,
        client_ca=state_dir / tls.get("client_ca", str, "pki/ca.pem"),
        min_version=_tls_version(tls, "min_version", "1.2"),
        max_version=_tls_version(tls, "max_version", "1.3"),
        fragment_size=tls.get_int("fragment_size", 1024, 100, 4000),
        revocation=_revocation(tls, state_dir),
        resumption=tls.get("resumption", bool, False),
        session_lifetime=tls.get_int("session_lifetime", 3600, 60, 86400),
        session_cache_size=tls.get_int("session_cache_size", 4096, 2, 40960),
    )
    if TLS_VERSIONS.index(tls_config.min_version) > TLS_VERSIONS.index(tls_config.max_version):
        raise tls.error("min_version", f"{tls_config.min_version!r} is above max_version")
    tls.finish()
    if "max_conversations" in section.table:
        raise section.error(
            "max_conversations",
            "replaced by memory_budget_mib (the table is sized from what a conversation holds; "
            "see etc/vpnaaa.toml)",
        )
    config = EapConfig(
        enabled=section.get("enabled", bool, True),
        methods=tuple(methods),
        idle_timeout=section.get("idle_timeout", float, 30.0),
        memory_budget_mib=section.get_int("memory_budget_mib", 256, 1, 1024 * 1024),
        max_conversations_per_source=section.get_int(
            "max_conversations_per_source", 32, 1, 1_000_000
        ),
        server_name=section.get("server_name", str, "vpnaaa"),
        peap_cryptobinding=_cryptobinding(section),
        tls=tls_config,
    )
    if config.idle_timeout <= 0:
        raise section.error("idle_timeout", "must be positive")
    section.finish()
    return config


def _tls_version(section: _Section, name: str, default: str) -> str:
    value = section.get(name, str, default)
    if value not in TLS_VERSIONS:
        raise section.error(name, f"{value!r}: use {' or '.join(map(repr, TLS_VERSIONS))}")
    return value


def _cryptobinding(section: _Section) -> str:
    """``peap_cryptobinding``: "off", "optional" or "required"; true and false, the older
    spellings, mean "optional" and "off"."""
    value = section.get("peap_cryptobinding", (bool, str), "optional")
    if isinstance(value, bool):
        return "optional" if value else "off"
    if value not in PEAP_CRYPTOBINDING:
        raise section.error(
            "peap_cryptobinding", f"{value!r}: use {', '.join(map(repr, PEAP_CRYPTOBINDING))}"
        )
    return value


def _disabled(section: _Section, state_dir: Path) -> RadiusConfig:
    """A switched-off service: its other keys are not validated against missing secrets,
    but for the accounting log, which the IKE sessions' records use as well."""
    config = RadiusConfig(
        enabled=False,
        accounting_log=state_dir / section.get("accounting_log", str, "accounting.log"),
        accounting_fsync=section.get("accounting_fsync", bool, False),
    )
    section.table.clear()
    return config
