"""charon's load-tester plugin as the IKEv2 client: many remote-access IKE_SAs from one charon.

The load-tester (strongSwan's upstream build, :data:`tests.interop.charon.UPSTREAM`, made by
scripts/build-strongswan; Debian's charon has no such plugin) runs in a client network
namespace with ``fake_kernel`` (it installs no SAs), ``reuse_ikesa = no`` and a unique
identity per IKE_SA (:data:`IDENTITY`, ``c%d-%d``: a client number counted up across every
IKE_SA this charon starts, then the authentication round), which is also its EAP identity;
all share one EAP-MSCHAPv2 password. It authenticates the gateway by certificate (the CA in
``ca_dir``, the gateway's address as its identity), asks for a virtual IP and one CHILD_SA.

A burst is ``COUNT 0`` written to the load-tester's control socket: charon initiates COUNT
IKE_SAs at once and answers one character per event, ``.`` initiated, ``+`` established,
``-`` failed, ``*`` a retransmission, ``!`` not initiated, then closes the socket when every
one is done (:meth:`LoadTester.burst`). Facts measured here (PEERS.md): identities must be
unique per IKE_SA, or charon reuses one and stalls; bursts of 300 and more lose datagrams
and pay 4 s retransmissions, bursts of about 150 do not.

Blocking calls (``subprocess``, a plain socket): the benchmark calls them directly, a trial
test through ``twisted.internet.threads.deferToThread`` so its reactor keeps serving.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.interop.charon import IP, UNSHARE, UPSTREAM, HarnessError, _section, _settings, quote

IDENTITY = "c%d-%d@ldt.example.test"  # client number, authentication round

# No kernel SAs (fake_kernel): load-tester before kernel-netlink so that it provides the
# kernel-ipsec part. No vici, attr or kernel-libipsec.
CLIENT_PLUGINS = (
    *("random", "nonce", "x509", "revocation", "constraints", "pubkey", "pkcs1", "pkcs8"),
    *("pem", "openssl", "gmp", "curve25519", "hmac", "kdf", "sha2", "aes", "gcm"),
    *("load-tester", "kernel-netlink", "socket-default", "eap-identity", "eap-mschapv2"),
)

START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0
BURST_TIMEOUT_S = 90.0  # the client gives up on an IKE_SA after about 25 s (retransmit_*)
POLL_S = 0.02


class LoadTesterError(HarnessError):
    """The load-tester did not start or a burst made no progress; with its log tail."""


def identities(count: int, first: int = 1) -> list[str]:
    """The EAP identities of the IKE_SAs numbered ``first`` .. ``first + count - 1``."""
    return [IDENTITY % (number, 1) for number in range(first, first + count)]


def tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a log file (or why there are none)."""
    try:
        content = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    return "\n".join(content[-lines:])


def strongswan_conf(
    plugins: Sequence[str], options: Mapping[str, object], plugin_sections: list[str], log: Path
) -> str:
    """A ``charon`` section: plugin list, options, plugin settings and a level-1 file log."""
    body = _settings({"load": " ".join(plugins), **options})
    body += _section("plugins", plugin_sections)
    log_options = {"path": log, "default": 1, "flush_line": True, "append": False}
    body += _section("filelog", _section("charon", _settings(log_options)))
    return "\n".join(_section("charon", body)) + "\n"


def charon_argv(namespace: str, run_dir: Path) -> list[str]:
    """The upstream charon in ``namespace`` with a private mount over its compiled-in pid
    directory (``ip netns exec`` and ``unshare`` exec in place: the pid is charon's)."""
    script = 'mount --bind "$1" "$2" && exec "$3"'
    argv = [IP, "netns", "exec", namespace, UNSHARE, "-m", "--propagation", "private"]
    return [
        *argv,
        "sh",
        "-c",
        script,
        "sh",
        str(run_dir),
        str(UPSTREAM.piddir),
        str(UPSTREAM.charon),
    ]


def spawn(
    argv: Sequence[str],
    log_path: Path,
    cpus: frozenset[int] | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen:
    """Start ``argv`` in its own session (so its process group can be signalled), pinned
    to ``cpus`` (all threads) when given, its output to ``log_path``."""
    pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    with log_path.open("wb") as log:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=cwd,
            preexec_fn=pin,
            env={**os.environ, "LC_ALL": "C", **(env or {})},
        )


@dataclass(frozen=True)
class Burst:
    """What the load-tester answered for one burst, and how long it took."""

    marks: str
    wall_seconds: float

    @property
    def established(self) -> int:
        return self.marks.count("+")

    @property
    def retransmits(self) -> int:
        return self.marks.count("*")

    def problem(self, count: int) -> str | None:
        """Why the burst does not count, or None when every IKE_SA was established."""
        counts = {mark: self.marks.count(mark) for mark in ".+-!"}
        if counts == {".": count, "+": count, "-": 0, "!": 0}:
            return None
        return (
            f"{counts['+']} of {count} IKE_SAs established ({counts['.']} initiated, "
            f"{counts['-']} failed, {counts['!']} not initiated)"
        )


class LoadTester:
    """One client charon at a time in ``namespace``, trusting ``ca_cert``, working in
    ``workdir``, pinned to ``cpus`` when given."""

    def __init__(
        self,
        workdir: Path,
        namespace: str,
        ca_cert: Path,
        password: str,
        cpus: frozenset[int] | None = None,
    ) -> None:
        self.workdir = workdir
        self.namespace = namespace
        self.password = password
        self.cpus = cpus
        self.run_dir = workdir / "run"
        self.run_dir.mkdir(parents=True)
        self.ca_dir = workdir / "ca"
        self.ca_dir.mkdir()
        (self.ca_dir / "ca.pem").write_bytes(ca_cert.read_bytes())
        self.conf = workdir / "strongswan.conf"
        self.log_path = workdir / "charon.log"
        self.socket_path = workdir / "ldt.sock"
        self.process: subprocess.Popen | None = None

    def config_text(self, gateway: str, proposal: str, esp: str) -> str:
        tester = {
            "enable": True,
            "fake_kernel": True,
            "initiators": 0,  # initiate only when asked on the control socket
            "responder": gateway,
            "proposal": proposal,
            "esp": esp,
            "initiator_auth": "eap-mschapv2",
            "responder_auth": "pubkey",
            "initiator_id": quote(IDENTITY),
            "responder_id": gateway,
            "eap_password": quote(self.password),
            "request_virtual_ip": True,
            "initiator_tsr": "0.0.0.0/0",
            "ca_dir": self.ca_dir,
            "socket": f"unix://{self.socket_path}",
        }
        options = {"port": 500, "port_nat_t": 4500, "reuse_ikesa": False}
        options |= {"install_virtual_ip": False, "install_routes": False}
        # Give up on an IKE_SA after about 25 s (sends at 0, 4, 11 s) rather than 165 s.
        options |= {"retransmit_tries": 2}
        return strongswan_conf(
            CLIENT_PLUGINS, options, _section("load-tester", _settings(tester)), self.log_path
        )

    @property
    def pid(self) -> int:
        if self.process is None:
            raise LoadTesterError("the load-tester charon is not running")
        return self.process.pid

    def start(self, gateway: str, proposal: str, esp: str) -> None:
        """A fresh client charon aimed at ``gateway`` (client numbers start again at 1)."""
        self.conf.write_text(self.config_text(gateway, proposal, esp))
        self.socket_path.unlink(missing_ok=True)
        UPSTREAM.piddir.mkdir(parents=True, exist_ok=True)  # the bind mount's target
        self.process = spawn(
            charon_argv(self.namespace, self.run_dir),
            self.workdir / "charon.out",
            self.cpus,
            {"STRONGSWAN_CONF": str(self.conf)},
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.socket_path.exists():
            if self.process.poll() is not None or time.monotonic() >= deadline:
                raise LoadTesterError(
                    f"the load-tester charon did not open {self.socket_path}; log tail:\n"
                    f"{tail(self.log_path)}\n{tail(self.workdir / 'charon.out')}"
                )
            time.sleep(POLL_S)

    def burst(self, count: int) -> Burst:
        """Initiate ``count`` IKE_SAs at once; return when every one succeeded or failed."""
        marks = bytearray()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as control:
            control.settimeout(BURST_TIMEOUT_S)
            control.connect(str(self.socket_path))
            start = time.perf_counter()
            control.sendall(f"{count} 0\n".encode())
            try:
                while data := control.recv(4096):
                    marks += data
            except TimeoutError:
                raise LoadTesterError(
                    f"load-tester: no progress for {BURST_TIMEOUT_S:g} s after "
                    f"{marks.decode(errors='replace')!r}; log tail:\n{tail(self.log_path)}"
                ) from None
            wall = time.perf_counter() - start
        return Burst(marks.decode(errors="replace").strip(), wall)

    def stop(self) -> None:
        """SIGTERM (charon deletes its IKE_SAs on the way out), SIGKILL if it lingers."""
        self._end((signal.SIGTERM, signal.SIGKILL))

    def kill(self) -> None:
        """SIGKILL: the client vanishes without a DELETE, as a laptop whose lid closes."""
        self._end((signal.SIGKILL,))

    def _end(self, signals: Sequence[signal.Signals]) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        for sig in signals:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
            try:
                process.wait(STOP_TIMEOUT_S)
                return
            except subprocess.TimeoutExpired:
                continue
        process.wait()
