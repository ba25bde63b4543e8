"""A real IKEv2 peer for the tests: strongSwan's charon, run privately in a network namespace.

Tests drive vpnaaa's IKEv2 responder with charon as the initiator (RFC 7296): certificate
authentication of the gateway, EAP-MSCHAPv2 (or EAP-PEAP, with an upstream build) for the user,
a virtual IP through a CP request, one CHILD_SA. Everything is asynchronous for trial: every
command runs as a child process through the reactor and every wait is a Deferred.

The pieces:

:class:`Netns`
    A network namespace for the client joined by a veth pair to the gateway side, which is
    either a second namespace (198.51.100.1/24 there, client 198.51.100.2/24) or the root
    namespace (a free /30 of 198.51.100.0/24). vpnaaa runs in the trial process: with a gateway
    namespace it creates its sockets inside it (:meth:`Netns.entered`), so UDP 500/4500 are
    free whatever the machine runs; on the root side it binds the veth's address there. Names
    carry the creating pid (``vpnaaa-t<pid>-<n>``); namespaces left by a crashed earlier run
    (pid gone) are removed, with the charons still inside them. :meth:`Netns.silence` drops
    (nftables) what the client sends to the gateway; :meth:`Netns.route` lets a second client
    namespace reach a gateway that listens on the first one's veth address.

:class:`Initiator`, :class:`Responder`
    What goes into swanctl.conf: one connection, its credentials, pools.

:class:`Charon`
    One charon daemon with a private strongswan.conf and swanctl directory, its own vici socket
    and log file, started as ``ip netns exec NS unshare -m sh -c 'mount --bind RUN PIDDIR &&
    exec charon'`` so that its compiled-in pid file (``/var/run/charon.pid`` on Debian) is
    private. ``swanctl`` talks to it over the vici socket from the root namespace.
    :meth:`Charon.initiate`, :meth:`Charon.list_sas` (parsed into :class:`IkeSa`),
    :meth:`Charon.terminate`, :meth:`Charon.stop`, :meth:`Charon.kill` (no DELETE sent);
    :meth:`Charon.keys` reads the IKE and CHILD_SA keys charon logged (``ike 4``, ``chd 4``).

Facts this relies on (Debian bookworm's strongSwan 5.9.8):

- The host kernel has no ESP, so CHILD_SAs go to the ``kernel-libipsec`` plugin (userspace ESP
  on a TUN device, ``ipsec0``). That plugin makes charon fake NAT detection: after IKE_SA_INIT
  the IKE_SA floats to UDP 4500 and ESP is UDP-encapsulated (RFC 3948) on those ports.
- ``kdf`` must be loaded (5.9.8 derives prf+ through it: "KDF_PRF with PRF_HMAC_SHA2_256 not
  supported" otherwise). MD4 and DES for MS-CHAPv2 come from OpenSSL's legacy provider, which
  charon's openssl plugin loads by itself.
- swanctl takes the directory of ``--file`` as its base: private keys must sit in its
  ``private/`` folder (the ``secrets`` section only holds passphrases), CA certificates in
  ``x509ca/``.
- Ports. With ``remote_port=500`` (the default) charon sends IKE_SA_INIT from 500 to 500, then
  floats to 4500 -> 4500 with the non-ESP marker: the gateway must serve both ports. When its
  own port was 500 charon floats the *remote* port to 4500 too, even for a gateway that
  answered IKE_SA_INIT on another port (seen: 500 -> 1500, then 4500 -> 4500). Any other
  ``remote_port`` is therefore reached from charon's NAT-T port (``local_port = 4500``), so
  every IKE message, IKE_SA_INIT included, carries the 4-octet zero non-ESP marker and ESP
  shares that one port pair (RFC 7296 §2.23, RFC 3948 §2.2): the gateway then needs a single
  NAT-T style socket on that port.
- After IKE_AUTH either side may start an INFORMATIONAL with its own message IDs (a charon
  responder sends a MOBIKE address update, message ID 0, when its TUN device appears); the
  ``net 4`` packet dumps also show ESP and keepalives. :meth:`KeyLog.received` keeps IKE only.
- Key logging: ``ike 4`` prints "shared Diffie Hellman secret", "SKEYSEED", "Sk_d secret" ...
  "Sk_pr secret", the AUTH octets and the EAP MSK ("secret"); ``chd 4`` prints "encryption
  initiator key" ... "integrity responder key"; ``net 4`` dumps every received packet.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import itertools
import os
import re
import shutil
import signal
import struct
from collections.abc import Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.internet import defer, error, protocol, reactor, task
from twisted.internet.utils import getProcessOutputAndValue

IP = shutil.which("ip") or "/usr/sbin/ip"
NFT = shutil.which("nft") or "/usr/sbin/nft"
UNSHARE = shutil.which("unshare") or "/usr/bin/unshare"
PATH = os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")

PREFIX = "vpnaaa-t"  # namespace names: vpnaaa-t<pid>-<n>
GATEWAY = "198.51.100.1/24"
CLIENT = "198.51.100.2/24"
POOL = "192.0.2.0/24"  # the self-test responder's virtual IP pool

# Plugins, in load order: kernel-libipsec before kernel-netlink so it gets the IPsec part.
# No `resolve` (it would rewrite /etc/resolv.conf); `kdf` is needed from 5.9.8 on.
PLUGINS = (
    *("random", "nonce", "x509", "revocation", "constraints", "pubkey", "pkcs1", "pkcs8"),
    *("pem", "openssl", "gmp", "curve25519", "hmac", "kdf", "sha2", "aes", "gcm"),
    *("kernel-libipsec", "kernel-netlink", "socket-default", "vici", "attr"),
    *("eap-identity", "eap-mschapv2"),
)
PEAP_PLUGINS = ("eap-tls", "eap-peap")  # not in Debian's packages; see PEERS.md

# charon's log levels per subsystem: enough for the keys and the received packets, not the
# rule-by-rule message encoding (enc 4 would triple the log).
KEY_LOGGING: Mapping[str, int] = {
    "default": 1,
    "ike": 4,
    "chd": 4,
    "net": 4,
    "cfg": 2,
    "knl": 2,
    "enc": 1,
}

SILENCE = "vpnaaa_silence"  # the nftables table of Netns.silence
START_TIMEOUT = 10.0  # seconds for charon to open its vici socket
STOP_TIMEOUT = 5.0  # seconds between SIGTERM and SIGKILL
POLL = 0.02

_counter = itertools.count(1)


class HarnessError(Exception):
    """A step of the harness failed; the message carries the command's output or log tail."""


@dataclass(frozen=True)
class CharonInstall:
    """Where one strongSwan build keeps its daemon, swanctl, compiled-in pid dir and plugins."""

    charon: Path
    swanctl: Path
    piddir: Path
    plugins: Path

    def available(self) -> bool:
        return self.charon.exists() and self.swanctl.exists()

    def has_plugin(self, name: str) -> bool:
        return (self.plugins / f"libstrongswan-{name}.so").exists()

    @defer.inlineCallbacks
    def version(self) -> Generator[defer.Deferred[Any], Any, str]:
        """``swanctl --version`` asks the daemon; this reads the library's banner instead."""
        out, err, _ = yield getProcessOutputAndValue(
            str(self.swanctl), ["--help"], env={"PATH": PATH}
        )
        match = re.search(r"strongSwan (\S+) swanctl", (out + err).decode(errors="replace"))
        return match.group(1) if match else "unknown"


DEBIAN = CharonInstall(
    Path("/usr/lib/ipsec/charon"),
    Path("/usr/sbin/swanctl"),
    Path("/run"),  # /var/run/charon.pid, /var/run is a symlink to /run
    Path("/usr/lib/ipsec/plugins"),
)
# PEERS.md's upstream build (./configure --prefix=/opt/strongswan-full ... --enable-eap-peap).
UPSTREAM = CharonInstall(
    Path("/opt/strongswan-full/libexec/ipsec/charon"),
    Path("/opt/strongswan-full/sbin/swanctl"),
    Path("/opt/strongswan-full/run"),
    Path("/opt/strongswan-full/lib/ipsec/plugins"),
)


def unavailable() -> str | None:
    """Why charon tests cannot run here, or None."""
    if not DEBIAN.available():
        return "strongSwan not found (install strongswan-charon strongswan-swanctl)"
    if os.geteuid() != 0:
        return "charon in a network namespace needs root"
    if not os.path.exists("/dev/net/tun"):
        return "kernel-libipsec needs /dev/net/tun"
    return None


# --------------------------------------------------------------------------------------------
# Child processes


@defer.inlineCallbacks
def run(
    argv: Sequence[str], env: Mapping[str, str] | None = None, check: bool = True
) -> Generator[defer.Deferred[Any], Any, tuple[str, int]]:
    """Run ``argv`` to completion; (stdout + stderr, exit code). ``check``: raise on failure."""
    environment = {"PATH": PATH, "LC_ALL": "C", **(env or {})}
    out, err, code = yield getProcessOutputAndValue(argv[0], argv[1:], env=environment)
    text = (out + err).decode("utf-8", "replace")
    if check and code != 0:
        raise HarnessError(f"{' '.join(argv)} exited with {code}:\n{text}")
    return text, code


def sleep(seconds: float) -> defer.Deferred[None]:
    return task.deferLater(reactor, seconds, lambda: None)


CLONE_NEWNET = 0x40000000


def _setns(fd: int) -> None:
    """setns(2) into a network namespace (os.setns is Python 3.12+)."""
    if hasattr(os, "setns"):
        os.setns(fd, CLONE_NEWNET)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"setns: {os.strerror(code)}")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --------------------------------------------------------------------------------------------
# Network namespaces


@dataclass
class Netns:
    """A client namespace joined by a veth pair to the gateway side.

    ``gateway_netns=True``: the gateway end goes into a second namespace ``gateway_name``;
    addresses default to 198.51.100.1/24 (gateway) and 198.51.100.2/24 (client), private to
    the two namespaces. Use it for charon-to-charon runs, and for vpnaaa by creating its
    sockets inside (:meth:`entered`).

    ``gateway_netns=False``: the gateway end (``gateway_if``) stays in the root namespace,
    shared with everything else on the machine. Unless given, the addresses are a /30 of
    198.51.100.0/24 that no root-namespace interface uses (chosen in :meth:`create`), so that
    concurrent test runs do not fight over one route; read ``gateway_address`` and
    ``client_address`` after :meth:`create`. Addresses are ``ADDRESS/PREFIX``.
    """

    gateway: str | None = None
    client: str | None = None
    gateway_netns: bool = False
    name: str = ""
    gateway_name: str | None = None
    client_if: str = ""
    gateway_if: str = ""
    created: bool = False

    def __post_init__(self) -> None:
        n = next(_counter)
        self.name = self.name or f"{PREFIX}{os.getpid()}-{n}"
        if self.gateway_netns:
            self.gateway_name = self.gateway_name or f"{self.name}g"
            self.gateway = self.gateway or GATEWAY
            self.client = self.client or CLIENT
        # interface names are at most 15 octets
        self.client_if = self.client_if or f"vc{os.getpid()}x{n}"[:15]
        self.gateway_if = self.gateway_if or f"vg{os.getpid()}x{n}"[:15]

    @property
    def gateway_address(self) -> str:
        if self.gateway is None:
            raise HarnessError("the root-side gateway address is chosen in create()")
        return str(ipaddress.ip_interface(self.gateway).ip)

    @property
    def client_address(self) -> str:
        if self.client is None:
            raise HarnessError("the root-side client address is chosen in create()")
        return str(ipaddress.ip_interface(self.client).ip)

    @defer.inlineCallbacks
    def _root_networks(self) -> Generator[defer.Deferred[Any], Any, list[Any]]:
        """IPv4 networks on root-namespace interfaces other than our own gateway end."""
        out, _ = yield run([IP, "-4", "-o", "addr", "show"])
        networks = []
        for line in out.splitlines():
            fields = line.split()
            if len(fields) > 3 and fields[2] == "inet" and fields[1] != self.gateway_if:
                networks.append(ipaddress.ip_interface(fields[3]).network)
        return networks

    @defer.inlineCallbacks
    def _choose_root_subnet(self) -> Generator[defer.Deferred[Any], Any, None]:
        used = yield self._root_networks()
        start = os.getpid() % 64  # concurrent runs start their search at different blocks
        for i in range(64):
            block = ipaddress.ip_network(f"198.51.100.{4 * ((start + i) % 64)}/30")
            if not any(block.overlaps(network) for network in used):
                self.gateway = f"{block[1]}/30"
                self.client = f"{block[2]}/30"
                return
        raise HarnessError("every /30 of 198.51.100.0/24 is in use in the root namespace")

    @defer.inlineCallbacks
    def create(self) -> Generator[defer.Deferred[Any], Any, Netns]:
        """Remove stale namespaces of dead runs, then build this one; links up."""
        yield remove_stale()
        if self.gateway is None or self.client is None:
            yield self._choose_root_subnet()
        assert self.gateway is not None and self.client is not None
        yield run([IP, "netns", "add", self.name])
        self.created = True
        if self.gateway_name:
            yield run([IP, "netns", "add", self.gateway_name])
        # Created with its peer already inside the client namespace: nothing half-made leaks
        # into the root namespace if we die here (deleting the namespace deletes the pair).
        veth = [self.gateway_if, "type", "veth", "peer", "name", self.client_if]
        yield run([IP, "link", "add", *veth, "netns", self.name])
        if self.gateway_name:
            yield run([IP, "link", "set", self.gateway_if, "netns", self.gateway_name])
        client_ip = [IP, "-n", self.name]
        gateway_ip = [IP, "-n", self.gateway_name] if self.gateway_name else [IP]
        yield run([*client_ip, "addr", "add", self.client, "dev", self.client_if])
        yield run([*client_ip, "link", "set", "lo", "up"])
        yield run([*client_ip, "link", "set", self.client_if, "up"])
        yield run([*gateway_ip, "addr", "add", self.gateway, "dev", self.gateway_if])
        if self.gateway_name:
            yield run([*gateway_ip, "link", "set", "lo", "up"])
        yield run([*gateway_ip, "link", "set", self.gateway_if, "up"])
        if not self.gateway_name:
            # another run may have taken the same block between our look and our add
            mine = ipaddress.ip_interface(self.gateway).network
            if any(mine.overlaps(network) for network in (yield self._root_networks())):
                raise HarnessError(f"{mine} is also configured elsewhere in the root namespace")
        return self

    @contextlib.contextmanager
    def entered(self, gateway: bool = True) -> Generator[None, None, None]:
        """Switch the calling thread into the gateway (or client) namespace for the block.

        Sockets keep the namespace they were created in: start vpnaaa's listeners inside this
        block (``with netns.entered(): daemon.startService()``) and they bind 500/4500 in the
        gateway namespace, where nothing else listens, while the reactor stays in the root
        namespace. Only the network namespace of this one thread changes (setns(2) with
        CLONE_NEWNET is allowed in a threaded process); the block must not wait on anything.
        """
        name = self.gateway_name if gateway else self.name
        if name is None:
            yield  # the gateway end is in the root namespace already
            return
        with open("/proc/thread-self/ns/net", "rb") as home, open(f"/run/netns/{name}", "rb") as ns:
            _setns(ns.fileno())
            try:
                yield
            finally:
                _setns(home.fileno())

    def exec_argv(self, argv: Sequence[str], gateway: bool = False) -> list[str]:
        """``argv`` run inside the client (or gateway) namespace."""
        name = self.gateway_name if gateway else self.name
        if name is None:
            return list(argv)
        return [IP, "netns", "exec", name, *argv]

    def run(
        self, argv: Sequence[str], gateway: bool = False, check: bool = True
    ) -> defer.Deferred[tuple[str, int]]:
        """Run ``argv`` inside the client (or gateway) namespace."""
        return run(self.exec_argv(argv, gateway), check=check)

    def route(self, address: str) -> defer.Deferred[tuple[str, int]]:
        """A host route in the client namespace to ``address`` through the gateway end: a
        second client namespace reaches a gateway listening on another namespace's veth
        address (the root namespace delivers it locally, whichever veth it came in on)."""
        return run(
            [IP, "-n", self.name, "route", "add", f"{address}/32", "via", self.gateway_address]
        )

    def silence(self, address: str) -> defer.Deferred[tuple[str, int]]:
        """Drop every packet the client namespace sends to ``address`` (nftables, in an
        ``inet`` table of its own): a client gone without a word (lid closed, Wi-Fi lost).
        What ``address`` sends still arrives, so the client's log shows what it got."""
        rules = (
            f"add table inet {SILENCE}; "
            f"add chain inet {SILENCE} output {{ type filter hook output priority 0; }}; "
            f"add rule inet {SILENCE} output ip daddr {address} drop"
        )
        return self.run([NFT, rules])

    @defer.inlineCallbacks
    def destroy(self) -> Generator[defer.Deferred[Any], Any, None]:
        """Kill what still runs inside, delete the namespaces (and so the veth pair) and the
        root-side veth if it is still there. Idempotent."""
        for name in (self.name, self.gateway_name):
            if name:
                yield delete_netns(name)
        if not self.gateway_name:
            yield run([IP, "link", "del", self.gateway_if], check=False)
        self.created = False


@defer.inlineCallbacks
def delete_netns(name: str) -> Generator[defer.Deferred[Any], Any, None]:
    """Delete namespace ``name`` after ending (by pid) the processes inside it."""
    names, _ = yield run([IP, "netns", "list"], check=False)
    if name not in (line.split()[0] for line in names.splitlines() if line.strip()):
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids, _ = yield run([IP, "netns", "pids", name], check=False)
        alive = [int(p) for p in pids.split() if p.isdigit()]
        if not alive:
            break
        for pid in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        for _ in range(int(STOP_TIMEOUT / POLL)):
            if not any(pid_alive(pid) for pid in alive):
                break
            yield sleep(POLL)
    yield run([IP, "netns", "del", name], check=False)


@defer.inlineCallbacks
def remove_stale() -> Generator[defer.Deferred[Any], Any, list[str]]:
    """Delete ``vpnaaa-t<pid>-*`` namespaces whose creating process is gone."""
    names, _ = yield run([IP, "netns", "list"], check=False)
    stale = []
    for line in names.splitlines():
        name = line.split()[0] if line.strip() else ""
        match = re.fullmatch(re.escape(PREFIX) + r"(\d+)-\d+g?", name)
        if match and not pid_alive(int(match.group(1))):
            stale.append(name)
    for name in stale:
        yield delete_netns(name)
    return stale


# --------------------------------------------------------------------------------------------
# Configuration


def quote(value: str) -> str:
    """A strongswan.conf/swanctl.conf string value."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _section(name: str, body: Iterable[str], indent: int = 0) -> list[str]:
    pad = "  " * indent
    return [f"{pad}{name} {{", *(f"  {line}" for line in body), f"{pad}}}"]


def _settings(values: Mapping[str, object]) -> list[str]:
    lines = []
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool):
            value = "yes" if value else "no"
        lines.append(f"{key} = {value}")
    return lines


@dataclass
class Initiator:
    """charon as the IKEv2 client of a gateway (vpnaaa): what Windows-like clients do.

    ``auth`` is ``eap-mschapv2`` or ``eap-peap`` (PEAP needs :data:`UPSTREAM`; then set
    ``aaa_id`` to the PEAP server's TLS identity, which goes in the *local* section).
    ``remote_id`` is the identity the gateway's certificate must carry (default: its address).
    ``local_id`` None: charon sends its IP address as IDi, as Windows does.
    """

    gateway: str
    ca_cert: Path
    eap_id: str = "alice"
    password: str = "wonderland"
    auth: str = "eap-mschapv2"
    aaa_id: str | None = None
    local_id: str | None = None
    remote_id: str | None = None
    remote_port: int = 500
    proposals: str = "aes256-sha256-modp2048"
    esp_proposals: str = "aes256-sha256"
    vips: str | None = "0.0.0.0"
    remote_ts: str = "0.0.0.0/0"
    connection: Mapping[str, object] = field(default_factory=dict)  # extra connection keys
    child: Mapping[str, object] = field(default_factory=dict)  # extra child keys

    def swanctl_conf(self, name: str) -> str:
        port: dict[str, object] = {}
        if self.remote_port != 500:
            # Reach a non-standard port from charon's NAT-T socket (see the module docstring).
            port = {"remote_port": self.remote_port, "local_port": 4500}
        local = {"auth": self.auth, "eap_id": quote(self.eap_id)}
        local |= {"id": quote(self.local_id) if self.local_id else None}
        local |= {"aaa_id": quote(self.aaa_id) if self.aaa_id else None}
        remote = {"auth": "pubkey", "id": quote(self.remote_id or self.gateway)}
        remote |= {"cacerts": quote(str(self.ca_cert))}
        child = {"remote_ts": self.remote_ts, "esp_proposals": self.esp_proposals} | dict(
            self.child
        )
        connection = _settings(
            {"version": 2, "remote_addrs": self.gateway, **port, "proposals": self.proposals}
            | {"vips": self.vips, "rekey_time": 0, "dpd_delay": 0}
            | dict(self.connection)
        )
        connection += _section("local", _settings(local))
        connection += _section("remote", _settings(remote))
        connection += _section("children", _section(name, _settings(child)))
        secret = _settings({"id": quote(self.eap_id), "secret": quote(self.password)})
        lines = _section("connections", _section(name, connection))
        lines += _section("secrets", _section("eap-user", secret))
        return "\n".join(lines) + "\n"

    def credentials(self) -> dict[str, Path]:
        """Files for the swanctl directory: the CA as a trust anchor (PEAP's TLS needs it)."""
        return {"x509ca/ca.pem": self.ca_cert}


@dataclass
class Responder:
    """charon as a gateway: certificate auth, EAP-MSCHAPv2 users, a virtual IP pool.

    Only for the harness's own test (and for comparing vpnaaa with a reference gateway).
    """

    address: str
    cert: Path
    key: Path
    chain: Sequence[Path] = ()
    users: Mapping[str, str] = field(default_factory=lambda: {"alice": "wonderland"})
    pool: str = POOL
    local_id: str | None = None
    auth: str = "eap-mschapv2"
    proposals: str = "aes256-sha256-modp2048"
    esp_proposals: str = "aes256-sha256"
    local_ts: str = "0.0.0.0/0"

    def swanctl_conf(self, name: str) -> str:
        local = {"auth": "pubkey", "certs": quote(str(self.cert))}
        local |= {"id": quote(self.local_id or self.address)}
        remote = {"auth": self.auth, "eap_id": "%any"}
        child = {"local_ts": self.local_ts, "esp_proposals": self.esp_proposals}
        connection = _settings(
            {"version": 2, "local_addrs": self.address, "pools": "pool"}
            | {"proposals": self.proposals, "rekey_time": 0}
        )
        connection += _section("local", _settings(local))
        connection += _section("remote", _settings(remote))
        connection += _section("children", _section(name, _settings(child)))
        lines = _section("connections", _section(name, connection))
        lines += _section("pools", _section("pool", _settings({"addrs": self.pool})))
        users: list[str] = []
        for i, (user, password) in enumerate(self.users.items()):
            secret = _settings({"id": quote(user), "secret": quote(password)})
            users += _section(f"eap-{i}", secret)
        lines += _section("secrets", users)
        return "\n".join(lines) + "\n"

    def credentials(self) -> dict[str, Path]:
        files = {"private/gateway.key": self.key}
        files |= {f"x509ca/chain-{i}.pem": path for i, path in enumerate(self.chain)}
        return files


SWANCTL_DIRS = (
    *("x509", "x509ca", "x509ocsp", "x509aa", "x509ac", "x509crl", "pubkey", "private"),
    *("rsa", "ecdsa", "bliss", "pkcs8", "pkcs12"),
)


# --------------------------------------------------------------------------------------------
# The daemon


class ChildProcess(protocol.ProcessProtocol):
    """A long-running child of the reactor: its output, exit code and end as a Deferred."""

    def __init__(self) -> None:
        self.ended: defer.Deferred[int | None] = defer.Deferred()
        self.exit_code: int | None = None
        self.exit_signal: int | None = None  # the signal that ended it (then exit_code is None)
        self.output = bytearray()

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        value = reason.value
        self.exit_code = getattr(value, "exitCode", None)
        self.exit_signal = getattr(value, "signal", None)
        self.ended.callback(self.exit_code)


class Charon:
    """One charon in namespace ``netns``, configured by ``role``, working in ``directory``.

    ``conn`` names the connection and its one child. ``port``/``port_nat_t`` are charon's
    local IKE ports (its namespace is private, so the defaults never collide).
    """

    def __init__(
        self,
        directory: Path,
        netns: str,
        role: Initiator | Responder,
        *,
        conn: str = "vpnaaa",
        install: CharonInstall = DEBIAN,
        port: int = 500,
        port_nat_t: int = 4500,
        log_levels: Mapping[str, int] = KEY_LOGGING,
        plugins: Sequence[str] | None = None,
        settings: Sequence[str] = (),
    ) -> None:
        self.directory = Path(directory)
        self.netns = netns
        self.role = role
        self.conn = conn
        self.install = install
        self.port = port
        self.port_nat_t = port_nat_t
        self.log_levels = dict(log_levels)
        if plugins is None:
            plugins = list(PLUGINS)
            if role.auth == "eap-peap":
                plugins += PEAP_PLUGINS
        self.plugins = list(plugins)
        self.settings = list(settings)  # extra lines for the charon section
        self.run_dir = self.directory / "run"
        self.conf = self.directory / "strongswan.conf"
        self.swanctl_dir = self.directory / "swanctl"
        self.swanctl_conf = self.swanctl_dir / "swanctl.conf"
        self.vici = self.directory / "charon.vici"
        self.log = self.directory / "charon.log"
        self.loaded = ""  # what swanctl --load-all printed
        self._daemon: ChildProcess | None = None
        self._transport: Any = None

    # configuration ------------------------------------------------------------------------

    def strongswan_conf(self) -> str:
        log = _settings(
            {"path": self.log, **self.log_levels}
            | {"flush_line": True, "append": False, "ike_name": True}
            | {"time_format": quote("%H:%M:%S"), "time_add_ms": True}
        )
        body = _settings({"load": " ".join(self.plugins)})
        body += _settings({"port": self.port, "port_nat_t": self.port_nat_t})
        # Give up on a silent peer after about 10 s (sends at 0, 2, 5 s), not after 165 s.
        body += ["retransmit_timeout = 2.0", "retransmit_base = 1.5", "retransmit_tries = 2"]
        body += self.settings
        plugins = _section("vici", [f"socket = unix://{self.vici}"])
        if self.role.auth == "eap-peap":
            plugins += _section("eap-peap", ["phase2_method = mschapv2"])
        body += _section("plugins", plugins)
        body += _section("filelog", _section("charon", log))
        # swanctl reads the same file: its own plugin list, no daemon options
        return "\n".join(_section("charon", body)) + "\n"

    def write_config(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        self.run_dir.mkdir(exist_ok=True)
        for sub in SWANCTL_DIRS:
            (self.swanctl_dir / sub).mkdir(parents=True, exist_ok=True)
        self.conf.write_text(self.strongswan_conf())
        self.swanctl_conf.write_text(self.role.swanctl_conf(self.conn))
        for relative, source in self.role.credentials().items():
            target = self.swanctl_dir / relative
            target.write_bytes(Path(source).read_bytes())
            os.chmod(target, 0o600 if relative.startswith("private/") else 0o644)

    # lifecycle ----------------------------------------------------------------------------

    @property
    def env(self) -> dict[str, str]:
        return {"STRONGSWAN_CONF": str(self.conf)}

    @property
    def pid(self) -> int | None:
        return self._transport.pid if self._transport is not None else None

    @defer.inlineCallbacks
    def start(self) -> Generator[defer.Deferred[Any], Any, Charon]:
        """Write the configuration, start charon, wait for its vici socket, load everything."""
        self.write_config()
        self.install.piddir.mkdir(parents=True, exist_ok=True)  # the bind mount's target
        self.vici.unlink(missing_ok=True)
        self._daemon = ChildProcess()
        # ip netns exec and unshare exec in place: the spawned pid is charon's.
        script = 'mount --bind "$1" "$2" && exec "$3"'
        argv = [IP, "netns", "exec", self.netns, UNSHARE, "-m", "--propagation", "private"]
        argv += ["sh", "-c", script, "sh", str(self.run_dir), str(self.install.piddir)]
        argv += [str(self.install.charon)]
        env = {"PATH": PATH, "LC_ALL": "C", **self.env}
        self._transport = reactor.spawnProcess(self._daemon, argv[0], argv, env=env)
        for _ in range(int(START_TIMEOUT / POLL)):
            if self._daemon.ended.called:
                raise HarnessError(f"charon exited with {self._daemon.exit_code}:\n{self.tail()}")
            if self.vici.exists():
                output, code = yield self.swanctl("--load-all", "--noprompt", check=False)
                if code == 0:
                    self.loaded = output
                    return self
                if "connecting to" not in output:
                    raise HarnessError(f"swanctl --load-all failed:\n{output}\n{self.tail()}")
            yield sleep(POLL)
        raise HarnessError(f"charon opened no vici socket in {START_TIMEOUT}s:\n{self.tail()}")

    @defer.inlineCallbacks
    def stop(self) -> Generator[defer.Deferred[Any], Any, int | None]:
        """SIGTERM (SIGKILL after :data:`STOP_TIMEOUT`); the exit status. Idempotent."""
        daemon = self._daemon
        if daemon is None or daemon.ended.called:
            return daemon.exit_code if daemon else None
        ended = daemon.ended
        for sig in ("TERM", "KILL"):
            try:
                self._transport.signalProcess(sig)
            except error.ProcessExitedAlready:
                break
            for _ in range(int(STOP_TIMEOUT / POLL)):
                if ended.called:
                    break
                yield sleep(POLL)
            if ended.called:
                break
        return daemon.exit_code

    @defer.inlineCallbacks
    def kill(self) -> Generator[defer.Deferred[Any], Any, int | None]:
        """SIGKILL: charon ends without a word to its peers (a crashed client)."""
        daemon = self._daemon
        if daemon is None or daemon.ended.called:
            return daemon.exit_code if daemon else None
        with contextlib.suppress(error.ProcessExitedAlready):
            self._transport.signalProcess("KILL")
        yield daemon.ended
        return daemon.exit_code

    # swanctl ------------------------------------------------------------------------------

    def swanctl(self, *args: str, check: bool = True) -> defer.Deferred[tuple[str, int]]:
        argv = [str(self.install.swanctl), *args, "--uri", f"unix://{self.vici}"]
        if args and args[0].startswith("--load"):
            argv += ["--file", str(self.swanctl_conf)]
        return run(argv, env=self.env, check=check)

    @defer.inlineCallbacks
    def initiate(
        self, timeout: int = 10, child: str | None = None
    ) -> Generator[defer.Deferred[Any], Any, Initiation]:
        """``swanctl --initiate --child NAME``: waits until the CHILD_SA is up, or it failed,
        or ``timeout`` seconds passed. Never raises for a failed handshake: look at ``ok``."""
        output, code = yield self.swanctl(
            "--initiate", "--child", child or self.conn, "--timeout", str(timeout), check=False
        )
        return Initiation(code == 0 and "initiate completed successfully" in output, output)

    @defer.inlineCallbacks
    def terminate(self, timeout: int = 5) -> Generator[defer.Deferred[Any], Any, Initiation]:
        """``swanctl --terminate --ike NAME``: INFORMATIONAL with DELETE, wait for the reply."""
        output, code = yield self.swanctl(
            "--terminate", "--ike", self.conn, "--timeout", str(timeout), check=False
        )
        return Initiation(code == 0 and "terminate completed successfully" in output, output)

    @defer.inlineCallbacks
    def list_sas(self) -> Generator[defer.Deferred[Any], Any, list[IkeSa]]:
        """Every IKE_SA charon holds, from ``swanctl --list-sas --pretty``."""
        output, _ = yield self.swanctl("--list-sas", "--noblock", "--pretty")
        return [IkeSa.from_vici(name, sa) for name, sa in parse_list_sas(output)]

    # the log ------------------------------------------------------------------------------

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 40) -> str:
        text = self.log_text().splitlines()[-lines:]
        daemon = self._daemon.output.decode(errors="replace") if self._daemon else ""
        return "\n".join(text) + ("\n[stdout/stderr]\n" + daemon if daemon else "")

    def keys(self) -> KeyLog:
        """The secrets charon logged so far (needs ``ike 4``/``chd 4``)."""
        return KeyLog.parse(self.log_text())


@dataclass
class Initiation:
    """The result of ``swanctl --initiate``/``--terminate``: success and what swanctl relayed
    from charon's log (at swanctl's default level: [IKE]/[ENC]/[NET] summary lines)."""

    ok: bool
    output: str


# --------------------------------------------------------------------------------------------
# swanctl --list-sas --pretty


def parse_vici_pretty(text: str) -> list[tuple[str, dict[str, Any]]]:
    """swanctl's ``--pretty`` dump of vici messages: ``name {`` ... ``}`` sections, ``k = v``
    pairs, ``k = [`` one value a line ``]`` lists. Top-level (message name, body) pairs."""
    messages: list[tuple[str, dict[str, Any]]] = []
    stack: list[dict[str, Any]] = []
    items: list[str] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if items is not None:
            if line == "]":
                items = None
            else:
                items.append(line)
        elif line.endswith(" {"):
            section: dict[str, Any] = {}
            if stack:
                stack[-1][line[:-2]] = section
            else:
                messages.append((line[:-2], section))
            stack.append(section)
        elif line == "}":
            if stack:
                stack.pop()
        elif stack and " = " in line:
            key, value = line.split(" = ", 1)
            if value == "[":
                items = stack[-1][key] = []
            else:
                stack[-1][key] = value
    return messages


def parse_list_sas(text: str) -> list[tuple[str, dict[str, Any]]]:
    """(IKE_SA name, its vici section) for every ``list-sa event``."""
    found = []
    for message, body in parse_vici_pretty(text):
        if message == "list-sa event":
            found += list(body.items())
    return found


def _int(value: str | None) -> int | None:
    return int(value) if value is not None and value.isdigit() else None


@dataclass
class ChildSa:
    """One CHILD_SA as vici reports it. SPIs are the 32-bit values (``spi_in`` is the one
    this charon chose, the peer's outbound SA; ``spi_out`` the peer chose)."""

    name: str
    uniqueid: int | None
    state: str  # INSTALLED, ...
    mode: str  # TUNNEL, TRANSPORT
    protocol: str  # ESP
    encap: bool  # UDP encapsulation (always with kernel-libipsec)
    spi_in: int
    spi_out: int
    encr_alg: str | None  # AES_CBC, AES_GCM_16, ...
    encr_keysize: int | None
    integ_alg: str | None  # HMAC_SHA2_256_128; None for AEAD
    dh_group: str | None
    local_ts: list[str]
    remote_ts: list[str]
    bytes_in: int
    packets_in: int
    bytes_out: int
    packets_out: int
    raw: dict[str, Any]

    @classmethod
    def from_vici(cls, data: dict[str, Any]) -> ChildSa:
        return cls(
            name=data.get("name", ""),
            uniqueid=_int(data.get("uniqueid")),
            state=data.get("state", ""),
            mode=data.get("mode", ""),
            protocol=data.get("protocol", ""),
            encap=data.get("encap") == "yes",
            spi_in=int(data.get("spi-in", "0"), 16),
            spi_out=int(data.get("spi-out", "0"), 16),
            encr_alg=data.get("encr-alg"),
            encr_keysize=_int(data.get("encr-keysize")),
            integ_alg=data.get("integ-alg"),
            dh_group=data.get("dh-group"),
            local_ts=list(data.get("local-ts", [])),
            remote_ts=list(data.get("remote-ts", [])),
            bytes_in=_int(data.get("bytes-in")) or 0,
            packets_in=_int(data.get("packets-in")) or 0,
            bytes_out=_int(data.get("bytes-out")) or 0,
            packets_out=_int(data.get("packets-out")) or 0,
            raw=data,
        )


@dataclass
class IkeSa:
    """One IKE_SA as vici reports it. IKE SPIs are the 8 header octets."""

    name: str
    uniqueid: int | None
    state: str  # ESTABLISHED, CONNECTING, ...
    initiator: bool
    spi_i: bytes
    spi_r: bytes
    local_host: str
    local_port: int | None
    remote_host: str
    remote_port: int | None
    local_id: str
    remote_id: str
    remote_eap_id: str | None
    nat_remote: bool
    encr_alg: str | None  # AES_CBC, AES_GCM_16, ...
    encr_keysize: int | None
    integ_alg: str | None  # HMAC_SHA2_256_128; None for AEAD
    prf_alg: str | None  # PRF_HMAC_SHA2_256
    dh_group: str | None  # MODP_2048, ECP_256, CURVE_25519
    local_vips: list[str]
    remote_vips: list[str]
    children: list[ChildSa]
    raw: dict[str, Any]

    @classmethod
    def from_vici(cls, name: str, data: dict[str, Any]) -> IkeSa:
        children = data.get("child-sas", {})
        return cls(
            name=name,
            uniqueid=_int(data.get("uniqueid")),
            state=data.get("state", ""),
            initiator=data.get("initiator") == "yes",
            spi_i=bytes.fromhex(data.get("initiator-spi", "")),
            spi_r=bytes.fromhex(data.get("responder-spi", "")),
            local_host=data.get("local-host", ""),
            local_port=_int(data.get("local-port")),
            remote_host=data.get("remote-host", ""),
            remote_port=_int(data.get("remote-port")),
            local_id=data.get("local-id", ""),
            remote_id=data.get("remote-id", ""),
            remote_eap_id=data.get("remote-eap-id"),
            nat_remote=data.get("nat-remote") == "yes",
            encr_alg=data.get("encr-alg"),
            encr_keysize=_int(data.get("encr-keysize")),
            integ_alg=data.get("integ-alg"),
            prf_alg=data.get("prf-alg"),
            dh_group=data.get("dh-group"),
            local_vips=list(data.get("local-vips", [])),
            remote_vips=list(data.get("remote-vips", [])),
            children=[ChildSa.from_vici(child) for child in children.values()],
            raw=data,
        )


# --------------------------------------------------------------------------------------------
# The secrets in charon's log

# "14[IKE] <vpnaaa|2> Sk_d secret => 32 bytes @ 0x7ff7..." then "14[IKE] <vpnaaa|2>    0: 1E 6E";
# an IKE_SA without a configuration yet (a responder before IKE_AUTH) shows as "<2>"
_LINE = re.compile(
    r"^(?:\S+ )?(?P<thread>\d+)\[(?P<group>[A-Z]+)\] (?:<(?:(?P<ike>[^|>]*)\|)?(?P<id>\d+)> )?"
    r"(?P<text>.*)$"
)
_DUMP_HEAD = re.compile(r"^(?P<label>.*?) ?=> (?P<size>\d+) bytes @ (?:0x)?[0-9a-fA-F]+$")
_DUMP_ROW = re.compile(r"^\s*(?P<offset>\d+): (?P<hex>(?:[0-9A-F]{2} ?)+)")

IKE_LABELS = {
    "shared Diffie Hellman secret": "g_ir",
    "SKEYSEED": "skeyseed",
    "Sk_d secret": "sk_d",
    "Sk_ai secret": "sk_ai",
    "Sk_ar secret": "sk_ar",
    "Sk_ei secret": "sk_ei",
    "Sk_er secret": "sk_er",
    "Sk_pi secret": "sk_pi",
    "Sk_pr secret": "sk_pr",
}
CHILD_LABELS = {
    "encryption initiator key": "encr_i",
    "encryption responder key": "encr_r",
    "integrity initiator key": "integ_i",
    "integrity responder key": "integ_r",
}
AUTH_OCTETS = "octets = message + nonce + prf(Sk_px, IDx')"
AUTH_VALUE = "AUTH = prf(prf(secret, keypad), octets)"


@dataclass
class Dump:
    """One ``label => N bytes`` hex dump from charon's log."""

    thread: int
    group: str  # IKE, CHD, NET, ENC, ...
    ike_sa: int | None  # the IKE_SA's unique id (filelog ike_name = yes)
    label: str
    data: bytes


@dataclass
class IkeKeys:
    """RFC 7296 §2.14 values as one side derived them: g^ir, SKEYSEED and the seven keys."""

    g_ir: bytes = b""
    skeyseed: bytes = b""
    sk_d: bytes = b""
    sk_ai: bytes = b""
    sk_ar: bytes = b""
    sk_ei: bytes = b""
    sk_er: bytes = b""
    sk_pi: bytes = b""
    sk_pr: bytes = b""


@dataclass
class ChildKeys:
    """RFC 7296 §2.17 KEYMAT split: initiator-to-responder encryption and integrity keys, then
    responder-to-initiator. For AEAD (GCM) the encryption keys carry the salt and integ_* are
    empty. The i->r SA is the one whose SPI the responder chose."""

    encr_i: bytes = b""
    encr_r: bytes = b""
    integ_i: bytes = b""
    integ_r: bytes = b""


@dataclass
class KeyLog:
    dumps: list[Dump]

    @classmethod
    def parse(cls, text: str) -> KeyLog:
        dumps: list[Dump] = []
        open_dumps: dict[int, tuple[Dump, int, bytearray]] = {}
        for raw in text.splitlines():
            line = _LINE.match(raw)
            if not line:
                continue
            thread, body = int(line["thread"]), line["text"]
            ike = int(line["id"]) if line["id"] else None
            row = _DUMP_ROW.match(body)
            if row and thread in open_dumps:
                dump, size, data = open_dumps[thread]
                data += bytes.fromhex(row["hex"])
                if len(data) >= size:
                    dump.data = bytes(data[:size])
                    dumps.append(dump)
                    del open_dumps[thread]
                continue
            head = _DUMP_HEAD.match(body)
            if head:
                dump = Dump(thread, line["group"], ike, head["label"], b"")
                if int(head["size"]) == 0:
                    dumps.append(dump)
                else:
                    open_dumps[thread] = (dump, int(head["size"]), bytearray())
        return cls(dumps)

    def labelled(self, label: str, ike_sa: int | None = None) -> list[Dump]:
        return [
            d for d in self.dumps if d.label == label and (ike_sa is None or d.ike_sa == ike_sa)
        ]

    def ike(self, ike_sa: int | None = None) -> IkeKeys:
        """The last IKE key set derived (for IKE_SA ``ike_sa``, by unique id)."""
        keys = IkeKeys()
        for dump in self.dumps:
            if dump.label in IKE_LABELS and (ike_sa is None or dump.ike_sa == ike_sa):
                if dump.label == "shared Diffie Hellman secret":
                    keys = IkeKeys()  # a new derivation starts
                setattr(keys, IKE_LABELS[dump.label], dump.data)
        return keys

    def children(self, ike_sa: int | None = None) -> list[ChildKeys]:
        """Every CHILD_SA key set derived (under IKE_SA ``ike_sa``), oldest first."""
        found: list[ChildKeys] = []
        for dump in self.dumps:
            if dump.label in CHILD_LABELS and (ike_sa is None or dump.ike_sa == ike_sa):
                if dump.label == "encryption initiator key" or not found:
                    found.append(ChildKeys())
                setattr(found[-1], CHILD_LABELS[dump.label], dump.data)
        return found

    def received(self) -> list[bytes]:
        """Every IKE message charon received (``net 4``), non-ESP marker removed.

        The dumps also show UDP-encapsulated ESP (kernel-libipsec takes it from charon's
        socket) and NAT-T keepalives; what does not parse as an IKEv2 header is left out.
        """
        packets = []
        for dump in self.labelled("received packet"):
            data = dump.data
            if data[:4] == b"\0\0\0\0":
                data = data[4:]  # RFC 3948 non-ESP marker: the packet came in on port 4500
            try:
                parse_message(data)
            except (ValueError, struct.error):
                continue
            packets.append(data)
        return packets


# --------------------------------------------------------------------------------------------
# Just enough IKEv2 message parsing to lift values out of captured datagrams (RFC 7296 §3)

EXCHANGES = {34: "IKE_SA_INIT", 35: "IKE_AUTH", 36: "CREATE_CHILD_SA", 37: "INFORMATIONAL"}
PAYLOAD_KE, PAYLOAD_NONCE, PAYLOAD_SK, PAYLOAD_SKF = 34, 40, 46, 53


@dataclass
class Message:
    spi_i: bytes
    spi_r: bytes
    exchange: str
    response: bool
    initiator: bool  # the I flag: sent by the original initiator
    message_id: int
    payloads: list[tuple[int, bytes]]  # (type, body) of the unencrypted payload chain
    data: bytes

    def payload(self, kind: int) -> bytes | None:
        return next((body for t, body in self.payloads if t == kind), None)


def parse_message(data: bytes) -> Message:
    if len(data) < 28:
        raise ValueError(f"{len(data)} octets: shorter than an IKE header")
    spi_i, spi_r, first, version, exchange, flags, message_id, length = struct.unpack(
        "!8s8sBBBBII", data[:28]
    )
    if version != 0x20 or length != len(data):
        raise ValueError(f"not an IKEv2 message: version {version:#x}, length {length}")
    payloads = []
    kind, offset = first, 28
    while kind != 0:
        following, _, size = struct.unpack("!BBH", data[offset : offset + 4])
        if size < 4 or offset + size > len(data):
            raise ValueError(f"payload {kind} at {offset}: bad length {size}")
        payloads.append((kind, data[offset + 4 : offset + size]))
        if kind in (PAYLOAD_SK, PAYLOAD_SKF):
            break  # the rest is ciphertext
        kind, offset = following, offset + size
    return Message(
        spi_i,
        spi_r,
        EXCHANGES.get(exchange, str(exchange)),
        bool(flags & 0x20),
        bool(flags & 0x08),
        message_id,
        payloads,
        data,
    )


# --------------------------------------------------------------------------------------------
# trial fixtures


@defer.inlineCallbacks
def make_netns(case: Any, **kwargs: Any) -> Generator[defer.Deferred[Any], Any, Netns]:
    """A :class:`Netns` created now and destroyed at ``case``'s cleanup (even half-made)."""
    netns = Netns(**kwargs)
    case.addCleanup(netns.destroy)
    yield netns.create()
    return netns


@defer.inlineCallbacks
def start_charon(
    case: Any, directory: Path, netns: str, role: Initiator | Responder, **kwargs: Any
) -> Generator[defer.Deferred[Any], Any, Charon]:
    """A started :class:`Charon`, stopped at ``case``'s cleanup (before an earlier-made
    namespace goes: cleanups run last-in first-out)."""
    charon = Charon(directory, netns, role, **kwargs)
    case.addCleanup(charon.stop)
    yield charon.start()
    return charon
