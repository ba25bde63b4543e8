"""IKEv2 benchmark: full handshakes per second and gateway CPU per handshake, vpnaaa vs charon.

One handshake is what a remote-access client does: IKE_SA_INIT, then IKE_AUTH with the
gateway authenticating by RSA certificate and the client by EAP-MSCHAPv2, a virtual IP
from a CP request and one CHILD_SA (ESP AES-256/SHA-256).  Two gateways answer the same
load in the same run:

* vpnaaa: ``twistd -n vpnaaa`` with an IKE-only configuration ([radius] enabled = false),
  its own CA and certificate (``vpnaaa pki init`` / ``pki issue``: an RSA-3072 key;
  ``--key-type rsa2048`` for a smaller one) and users made with ``vpnaaa user add``.  The
  kernel here has no ESP, so vpnaaa records its CHILD_SAs without installing them.
* charon (the reference): strongSwan's IKE daemon as the responder, the upstream build in
  /opt/strongswan-full, with the same certificate and key, the same users as EAP secrets,
  a pool, and ``dos_protection = no`` (otherwise a burst from one address gets COOKIE
  challenges and, beyond five half-open IKE_SAs, silence).  Its CHILD_SAs go to
  ``kernel-libipsec`` (userspace SAs and one route per client); that plugin also fakes
  NAT detection, so charon's IKE_AUTH runs on UDP 4500.

Both do their public-key and DH work in OpenSSL, but not the same one: charon links the
system's (3.0 on Debian bookworm), vpnaaa gets the one in its ``cryptography`` wheel.  Where
their speed differs (RSA-3072 signatures with AVX-512 IFMA; whether deriving a MODP secret
also validates the peer's value with a full exponentiation) that shows in the ratios.

The client is charon's load-tester plugin (same build) in a client network namespace:
``fake_kernel`` (no SAs installed on the client), ``reuse_ikesa = no`` and a unique
identity per IKE_SA (``initiator_id = c%d-%d@ldt.example.test``, which also serves as the
EAP identity), one EAP password for all of them (``eap_password``).  vpnaaa and charon
know those identities as users; the client trusts vpnaaa's CA (``ca_dir``) and expects the
gateway's address as its identity.  A burst is ``COUNT 0`` written to the load-tester's
control socket: charon initiates COUNT IKE_SAs at once and answers one character per
event, ``.`` initiated, ``+`` established, ``-`` failed, ``*`` a retransmission, until
all are done.  The wall time of a burst is that exchange, first IKE_SA_INIT to the last
IKE_SA established.  Bursts of 150 measure charon cleanly here (from about 300 on, its
datagrams get lost too, PEERS.md).  The client charon is restarted for every
burst (identities start again at c1-1), so each gateway needs exactly COUNT users; the
stopping client deletes its IKE_SAs, and the harness waits until the gateway has
processed those deletes and gone idle before the next burst.

Every burst must end with COUNT ``+`` and no ``-``, and both logs must agree: the client
logged COUNT established CHILD_SAs and COUNT virtual IPs, the gateway COUNT established
IKE_SAs and CHILD_SAs (vpnaaa at log level info, about 6 lines per handshake; charon at
its default file log level 1, about 55 lines).  Anything else aborts the benchmark.  The
rows also show the client's retransmissions and the UDP datagrams each side's kernel
dropped for a full socket receive buffer (/proc/PID/net/snmp, RcvbufErrors): a dropped
IKE_SA_INIT costs that IKE_SA a 4 s retransmission wait, which the wall time includes.

Server CPU is the kernel's CPU clock of the gateway process (all threads; utime+stime
without /proc's 10 ms truncation, cross-checked against the /proc process tree) from just
before the burst until the gateway is idle again after it.  Gateways are pinned to all CPUs
but the last, the client charon and this harness to the last one (``--no-pin`` turns this
off).  Network namespaces, all named ``vpnaaa-b<pid>-*``: the client's (``-c``) with one
veth pair to vpnaaa's gateway namespace (``-v``, 198.51.100.1/30, client 198.51.100.2) and
one to charon's (``-s``, 198.51.100.5/30, client 198.51.100.6), so both gateways have UDP
500/4500 to themselves; the certificate names both addresses.  Per suite, each gateway
gets a warm-up burst, then rounds alternate the order; the report gives per-burst rows,
medians and the ratios vpnaaa / charon.

Gateway memory is the resident set of the gateway process (VmRSS in /proc/PID/status, all
threads) just before the burst and as soon as the load-tester reports every IKE_SA
established, before the client deletes them: the growth per IKE_SA (with its CHILD_SA,
lease and EAP state) is the RSS KiB/SA column.  Freed memory stays with the process
(Python's arenas, malloc's heaps), so a burst mostly reuses what the previous one freed and
that column shows growth beyond it (what the process keeps: leaks, caches, fragmentation).
The first burst of each fresh gateway (a warm-up one), printed at the end, gives the whole
figure, one-time allocations included.

Run as root from the repository root with the venv python::

    .venv/bin/python bench/ike.py [--sas 150] [--rounds 5] [--suites modp2048,curve25519]
                                  [--key-type rsa3072|rsa2048] [--profile]

``--profile`` runs vpnaaa under twistd's cProfile support and prints, at the end, its top
functions and its CPU per handshake by category (RSA, DH, EAP, logging, IKE code, ...;
warm-up included, best with one suite).  cProfile slows Python code down, not OpenSSL.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import pstats
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

# Run as a script (``python bench/ike.py``), the repository root is not on sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.radius_eap import CpuReading, busy_cpu_seconds, cpu_clock_id, cpu_used
from bench.radius_pap import (
    BENCH_PASSWORD,
    READY_TIMEOUT_S,
    REPO,
    SERVER_VPNAAA,
    VENV_BIN,
    BenchError,
    CpuPlan,
    Figures,
    Sample,
    Server,
    format_cpus,
    print_profile,
    require_executable,
    round_order,
    run_main,
    twistd_command,
    vpnaaa_cli,
)
from tests.interop.charon import PLUGINS, UPSTREAM, HarnessError, Responder, _section, pid_alive
from tests.interop.freeradius import write_private
from tests.interop.load_tester import (
    START_TIMEOUT_S,
    LoadTester,
    charon_argv,
    identities,
    spawn,
    strongswan_conf,
    tail,
)
from vpnaaa import pki as vpnaaa_pki
from vpnaaa.users import read_users, write_users

SERVER_CHARON = "charon"
LABELS = {SERVER_VPNAAA: "vpnaaa", SERVER_CHARON: "charon"}

IP = shutil.which("ip") or "/usr/sbin/ip"
NETNS_PREFIX = "vpnaaa-b"  # vpnaaa-b<pid>-c (client), -v (vpnaaa), -s (strongSwan)

# One /30 per gateway: (gateway address, client address).
LINKS = {
    SERVER_VPNAAA: ("198.51.100.1", "198.51.100.2"),
    SERVER_CHARON: ("198.51.100.5", "198.51.100.6"),
}
PREFIX_LEN = 30
POOL = "10.99.0.0/20"  # virtual IPs, both gateways (separate processes, separate leases)

EAP_PASSWORD = BENCH_PASSWORD
CLI_KEY_TYPE = "rsa3072"  # what `vpnaaa pki issue` makes
KEY_TYPES = ("rsa3072", "rsa2048")

ESP_PROPOSAL = "aes256-sha256"
SUITES = {
    "modp2048": "aes256-sha256-modp2048",
    "curve25519": "aes256-sha256-curve25519",
}

STOP_TIMEOUT_S = 10.0
IDLE_WINDOW_S = 0.1  # a gateway is idle when it used less than IDLE_CPU_S in this window
IDLE_CPU_S = 0.001
IDLE_TIMEOUT_S = 15.0
POLL_S = 0.02


# --------------------------------------------------------------------------
# Child processes
# --------------------------------------------------------------------------


def run(argv: Sequence[str], check: bool = True) -> str:
    """Run a short command; its output. ``check``: fail loudly on a non-zero exit."""
    completed = subprocess.run(
        list(argv), capture_output=True, text=True, check=False, env={**os.environ, "LC_ALL": "C"}
    )
    output = completed.stdout + completed.stderr
    if check and completed.returncode != 0:
        raise BenchError(f"{' '.join(argv)} exited with {completed.returncode}:\n{output}")
    return output


def process_cpu_seconds(pid: int) -> float:
    """CPU seconds of process ``pid`` so far (all threads), from its kernel CPU clock."""
    return time.clock_gettime(cpu_clock_id(pid))


def udp_receive_drops(pid: int) -> int:
    """UDP datagrams dropped for a full socket receive buffer (RcvbufErrors) so far in the
    network namespace of process ``pid`` (/proc/PID/net/snmp shows that namespace's)."""
    try:
        lines = Path(f"/proc/{pid}/net/snmp").read_text().splitlines()
    except OSError:
        return 0
    udp = [line.split()[1:] for line in lines if line.startswith("Udp:")]
    if len(udp) < 2 or "RcvbufErrors" not in udp[0]:
        return 0
    return int(udp[1][udp[0].index("RcvbufErrors")])


def rss_kib(pid: int) -> int:
    """Resident set size of process ``pid`` (all threads share it): VmRSS, KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise BenchError(f"no VmRSS in /proc/{pid}/status")


# --------------------------------------------------------------------------
# Network namespaces
# --------------------------------------------------------------------------


def netns_names() -> list[str]:
    return [line.split()[0] for line in run([IP, "netns", "list"]).splitlines() if line.strip()]


def delete_netns(name: str) -> None:
    """End the processes inside namespace ``name`` (by pid), then delete it."""
    if name not in netns_names():
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = [
            int(p) for p in run([IP, "netns", "pids", name], check=False).split() if p.isdigit()
        ]
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while any(pid_alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(POLL_S)
    run([IP, "netns", "del", name], check=False)


def remove_stale_netns() -> None:
    """Delete ``vpnaaa-b<pid>-*`` namespaces left by a benchmark that died (pid gone)."""
    for name in netns_names():
        match = re.fullmatch(re.escape(NETNS_PREFIX) + r"(\d+)-[a-z]", name)
        if match and not pid_alive(int(match.group(1))):
            delete_netns(name)


@dataclass
class Network:
    """The client namespace and one gateway namespace per server, joined by veth pairs."""

    client: str
    gateways: dict[str, str]  # server name -> namespace
    made: list[str] = dataclasses.field(default_factory=list)

    @classmethod
    def create(cls, servers: Sequence[str]) -> Network:
        """Build everything; on any failure what was made is removed again."""
        remove_stale_netns()
        base = f"{NETNS_PREFIX}{os.getpid()}"
        letters = {SERVER_VPNAAA: "v", SERVER_CHARON: "s"}
        network = cls(f"{base}-c", {name: f"{base}-{letters[name]}" for name in servers})
        try:
            network._build()
        except BaseException:
            network.destroy()
            raise
        return network

    def _build(self) -> None:
        run([IP, "netns", "add", self.client])
        self.made.append(self.client)
        run([IP, "-n", self.client, "link", "set", "lo", "up"])
        for server, namespace in self.gateways.items():
            gateway_ip, client_ip = LINKS[server]
            run([IP, "netns", "add", namespace])
            self.made.append(namespace)
            gateway_if, client_if = f"gw-{server[0]}", f"cl-{server[0]}"
            # Both ends are created inside namespaces: nothing reaches the root namespace.
            run([IP, "-n", self.client, "link", "add", client_if, "type", "veth",
                 "peer", "name", gateway_if, "netns", namespace])  # fmt: skip
            run([IP, "-n", self.client, "addr", "add", f"{client_ip}/{PREFIX_LEN}",
                 "dev", client_if])  # fmt: skip
            run([IP, "-n", self.client, "link", "set", client_if, "up"])
            run([IP, "-n", namespace, "addr", "add", f"{gateway_ip}/{PREFIX_LEN}",
                 "dev", gateway_if])  # fmt: skip
            run([IP, "-n", namespace, "link", "set", "lo", "up"])
            run([IP, "-n", namespace, "link", "set", gateway_if, "up"])

    def exec_argv(self, namespace: str, argv: Sequence[str]) -> list[str]:
        # ip netns exec execs in place: the spawned pid is the command's.
        return [IP, "netns", "exec", namespace, *argv]

    def destroy(self) -> None:
        """Kill what still runs inside, delete the namespaces (and so the veths). Idempotent."""
        while self.made:
            delete_netns(self.made.pop())


# --------------------------------------------------------------------------
# strongSwan configuration (strongswan.conf(5), swanctl.conf(5))
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class GatewayPki:
    """vpnaaa's CA and the gateway certificate (both gateway addresses) in its state dir."""

    ca_cert: Path
    cert: Path
    key: Path
    chain: Path

    @classmethod
    def in_state(cls, state_dir: Path) -> GatewayPki:
        pki = state_dir / "pki"
        found = cls(
            pki / "ca" / "ca.pem", pki / "server.pem", pki / "server.key", pki / "chain.pem"
        )
        missing = [str(path) for path in dataclasses.astuple(found) if not Path(path).is_file()]
        if missing:
            raise BenchError(f"vpnaaa's PKI files are missing: {', '.join(missing)}")
        return found


# --------------------------------------------------------------------------
# Gateways
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class LogCheck:
    """What a gateway logs per handshake, and per IKE_SA the client deleted."""

    established: tuple[tuple[str, re.Pattern[str]], ...]
    deleted: re.Pattern[str]


LOG_CHECKS = {
    SERVER_VPNAAA: LogCheck(
        (
            ("IKE_SAs established", re.compile(r": ESTABLISHED for '")),
            ("CHILD_SAs installed", re.compile(r": CHILD_SA [0-9a-f]{8}/[0-9a-f]{8} ")),
        ),
        re.compile(r"' ended: client delete; "),
    ),
    SERVER_CHARON: LogCheck(
        (
            ("IKE_SAs established", re.compile(r"IKE_SA \S+\[\d+\] established between")),
            ("CHILD_SAs established", re.compile(r"CHILD_SA \S+\{\d+\} established with SPIs")),
            ("virtual IPs assigned", re.compile(r"assigning virtual IP \S+ to peer")),
        ),
        re.compile(r"IKE_SA deleted"),
    ),
}
CLIENT_CHECKS = (
    ("CHILD_SAs established", re.compile(r"CHILD_SA load-test\{\d+\} established with SPIs")),
    ("virtual IPs received", re.compile(r"installing new virtual IP 10\.")),
)


def read_from(path: Path, offset: int) -> str:
    try:
        with path.open("rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")
    except FileNotFoundError:
        return ""


def log_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def wait_for(condition: Callable[[], bool], timeout: float, server: Server, what: str) -> None:
    """Poll ``condition`` until true; fail loudly (with the log tail) after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        server.check_alive()
        if time.monotonic() >= deadline:
            raise BenchError(
                f"{server.label}: {what} within {timeout:g} s; log tail:\n{tail(server.log_path)}"
            )
        time.sleep(POLL_S)


def wait_idle(server: Server) -> None:
    """Wait until the gateway used less than IDLE_CPU_S of CPU in IDLE_WINDOW_S."""
    deadline = time.monotonic() + IDLE_TIMEOUT_S
    before = process_cpu_seconds(server.process.pid)
    while True:
        time.sleep(IDLE_WINDOW_S)
        server.check_alive()
        now = process_cpu_seconds(server.process.pid)
        if now - before < IDLE_CPU_S:
            return
        if time.monotonic() >= deadline:
            raise BenchError(f"{server.label} still busy {IDLE_TIMEOUT_S:g} s after a burst")
        before = now


def vpnaaa_config_text(state_dir: Path, address: str) -> str:
    """vpnaaa as an IKEv2 gateway only: no RADIUS server, EAP-MSCHAPv2, a /20 pool."""
    return (
        "[daemon]\n"
        "# CPU is what is measured; the bench's files live in a root-only temporary directory\n"
        'user = "root"\n'
        "[general]\n"
        f'state_dir = "{state_dir}"\n'
        'log_level = "info"\n'
        "\n"
        "[radius]\n"
        "enabled = false\n"
        "\n"
        "[eap]\n"
        "# every load-tester client comes from one address: a burst's EAP conversations at once\n"
        "max_conversations_per_source = 100000\n"
        "\n"
        "[ike]\n"
        "enabled = true\n"
        f'listen = "{address}"\n'
        f'pool = "{POOL}"\n'
        'eap_methods = ["mschapv2"]\n'
        "# every load-tester client comes from one address\n"
        "half_open_per_source = 100000\n"
        "init_rate_per_source = 100000\n"
    )


def prepare_vpnaaa(workdir: Path, users: list[str], key_type: str) -> tuple[Path, GatewayPki]:
    """Config, CA, certificate for both gateway addresses and the users.

    The CA and the users come from vpnaaa's CLI, and so does the certificate with the
    CLI's key, RSA-3072; another key type goes through :func:`vpnaaa.pki.issue_server`
    (the CLI has no option for it).  ``vpnaaa user add`` hashes the password and rewrites
    the user file, a process start each: the first user is added with it, the others are
    copies of that record under their own names (same password, so the same hashes).
    """
    state_dir = workdir / "state"
    state_dir.mkdir()
    config = workdir / "vpnaaa.toml"
    write_private(config, vpnaaa_config_text(state_dir, LINKS[SERVER_VPNAAA][0]))
    vpnaaa_cli(config, "pki", "init")
    names = (LINKS[SERVER_VPNAAA][0], LINKS[SERVER_CHARON][0])
    if key_type == CLI_KEY_TYPE:
        vpnaaa_cli(config, "pki", "issue", names[0], "--alt", names[1])
    else:
        pki_dir = state_dir / "pki"
        vpnaaa_pki.issue_server(pki_dir / "ca", pki_dir, names[0], names[1:], key_type=key_type)
    vpnaaa_cli(config, "user", "add", users[0], "--password-stdin", stdin=EAP_PASSWORD + "\n")
    path = state_dir / "users.json"
    first = read_users(path)[users[0]]
    write_users(path, {name: dataclasses.replace(first, name=name) for name in users})
    return config, GatewayPki.in_state(state_dir)


def start_vpnaaa(
    workdir: Path, network: Network, config: Path, profile: bool, cpus: frozenset[int] | None
) -> Server:
    """``twistd -n vpnaaa`` inside its gateway namespace; wait for the IKE ports."""
    for tool in ("vpnaaa", "twistd"):
        require_executable(VENV_BIN / tool)
    profile_path = workdir / "vpnaaa.prof" if profile else None
    log_path = workdir / "vpnaaa.out"
    argv = network.exec_argv(network.gateways[SERVER_VPNAAA], twistd_command(config, profile_path))
    process = spawn(argv, log_path, cpus, cwd=REPO)
    server = Server(SERVER_VPNAAA, "vpnaaa", 500, process, log_path, profile_path)
    try:
        wait_for(
            lambda: "IKEv2 responder on" in read_from(log_path, 0),
            READY_TIMEOUT_S,
            server,
            "no IKEv2 responder started",
        )
    except BaseException:
        server.stop()
        raise
    return server


def start_charon(
    workdir: Path,
    network: Network,
    pki: GatewayPki,
    users: list[str],
    cpus: frozenset[int] | None,
) -> Server:
    """charon as the gateway: certificate auth, EAP-MSCHAPv2 users, pool, both suites."""
    address = LINKS[SERVER_CHARON][0]
    responder = Responder(
        address=address,
        cert=pki.cert,
        key=pki.key,
        chain=(pki.chain,),
        users=dict.fromkeys(users, EAP_PASSWORD),
        pool=POOL,
        proposals=",".join(SUITES.values()),
        esp_proposals=ESP_PROPOSAL,
    )
    run_dir, swanctl_dir = workdir / "run", workdir / "swanctl"
    run_dir.mkdir()
    for sub in ("x509", "x509ca", "private"):
        (swanctl_dir / sub).mkdir(parents=True)
    swanctl_conf = swanctl_dir / "swanctl.conf"
    write_private(swanctl_conf, responder.swanctl_conf("bench"))
    for relative, source in responder.credentials().items():
        write_private(swanctl_dir / relative, Path(source).read_text())
    vici = workdir / "charon.vici"
    conf = workdir / "strongswan.conf"
    log_path = workdir / "charon.log"
    conf.write_text(
        strongswan_conf(
            PLUGINS,
            {"port": 500, "port_nat_t": 4500, "dos_protection": False},
            _section("vici", [f"socket = unix://{vici}"]),
            log_path,
        )
    )
    UPSTREAM.piddir.mkdir(parents=True, exist_ok=True)  # the bind mount's target
    env = {"STRONGSWAN_CONF": str(conf)}
    process = spawn(
        charon_argv(network.gateways[SERVER_CHARON], run_dir), workdir / "charon.out", cpus, env
    )
    server = Server(SERVER_CHARON, LABELS[SERVER_CHARON], 500, process, log_path)
    swanctl = [str(UPSTREAM.swanctl), "--load-all", "--noprompt", "--file", str(swanctl_conf)]
    swanctl += ["--uri", f"unix://{vici}"]
    try:
        wait_for(vici.exists, START_TIMEOUT_S, server, "no vici socket")
        completed = subprocess.run(
            swanctl, capture_output=True, text=True, check=False, env={**os.environ, **env}
        )
        if completed.returncode != 0:
            raise BenchError(
                f"swanctl --load-all failed:\n{completed.stdout}{completed.stderr}\n"
                f"charon log tail:\n{tail(log_path)}"
            )
    except BaseException:
        server.stop()
        raise
    return server


# --------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One measured burst: the sample, retransmissions the client made, UDP datagrams
    dropped for full receive buffers (gateway, client), foreign load (cores) and the
    gateway's resident memory (KiB) just before the burst and once every IKE_SA of it
    was established (before the client deletes them)."""

    sample: Sample
    retransmits: int
    drops: tuple[int, int]
    other_cores: float
    rss_kib: tuple[int, int]

    @property
    def kib_per_sa(self) -> float:
        """Growth of the gateway's RSS per established IKE_SA (with its CHILD_SA)."""
        return (self.rss_kib[1] - self.rss_kib[0]) / self.sample.requests


def count_lines(text: str, pattern: re.Pattern[str]) -> int:
    return sum(1 for line in text.splitlines() if pattern.search(line))


def verify_logs(server: Server, client: LoadTester, since: tuple[int, int], count: int) -> None:
    """Both logs must show ``count`` of everything a handshake makes."""
    server_text = read_from(server.log_path, since[0])
    client_text = read_from(client.log_path, since[1])
    problems = []
    for who, text, checks in (
        (server.label, server_text, LOG_CHECKS[server.name].established),
        ("client", client_text, CLIENT_CHECKS),
    ):
        for what, pattern in checks:
            found = count_lines(text, pattern)
            if found != count:
                problems.append(f"{who} logged {found} {what}, want {count}")
    if problems:
        raise BenchError(
            f"{server.label}: {'; '.join(problems)}\nserver log tail:\n{tail(server.log_path)}\n"
            f"client log tail:\n{tail(client.log_path)}"
        )


def burst_against(server: Server, client: LoadTester, suite: str, count: int, round_no: int) -> Run:
    """Start a client, run one burst against ``server``, verify, stop the client.

    The gateway's CPU is read when it is idle before the burst and again once it is idle
    after it; the client deletes its IKE_SAs as it stops, and the next burst waits until
    the gateway has logged every delete and gone idle.  Its RSS is read just before the
    burst and as soon as the load-tester reports every IKE_SA established.
    """
    client.start(LINKS[server.name][0], SUITES[suite], ESP_PROPOSAL)
    try:
        wait_idle(server)
        since = (log_size(server.log_path), log_size(client.log_path))
        own = time.process_time()  # this harness, all threads
        drops_before = udp_receive_drops(server.process.pid), udp_receive_drops(client.pid)
        client_before = process_cpu_seconds(client.pid)
        busy_before = busy_cpu_seconds()
        rss_before = rss_kib(server.process.pid)
        cpu_before = CpuReading.read(server)
        window = time.perf_counter()
        burst = client.burst(count)
        rss_established = rss_kib(server.process.pid)
        wait_idle(server)
        cpu_after = CpuReading.read(server)
        window = time.perf_counter() - window
        busy = busy_cpu_seconds() - busy_before
        client_cpu = process_cpu_seconds(client.pid) - client_before + time.process_time() - own
        drops = (
            udp_receive_drops(server.process.pid) - drops_before[0],
            udp_receive_drops(client.pid) - drops_before[1],
        )
        problem = burst.problem(count)
        if problem is not None:
            server.check_alive()
            raise BenchError(
                f"{server.label}, {suite}: {problem}: {burst.marks!r}\n"
                f"client log tail:\n{tail(client.log_path)}\n"
                f"server log tail:\n{tail(server.log_path)}"
            )
        verify_logs(server, client, since, count)
    finally:
        deletes_from = log_size(server.log_path)
        client.stop()
    deleted = LOG_CHECKS[server.name].deleted
    wait_for(
        lambda: count_lines(read_from(server.log_path, deletes_from), deleted) >= count,
        IDLE_TIMEOUT_S,
        server,
        f"did not log {count} deleted IKE_SAs after the client stopped",
    )
    wait_idle(server)
    server_cpu = cpu_used(server, cpu_before, cpu_after)
    sample = Sample(round_no, server.name, count, burst.wall_seconds, server_cpu, client_cpu)
    other = max(0.0, busy - server_cpu - client_cpu) / window
    return Run(sample, burst.retransmits, drops, other, (rss_before, rss_established))


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------

TABLE_HEADER = (
    f"{'round':>6}  {'gateway':<8} {'IKE_SAs':>7} {'seconds':>8} {'SAs/s':>7} "
    f"{'server ms/SA':>13} {'server cores':>13} {'client cores':>13} {'other cores':>12} "
    f"{'retransmits':>12} {'UDP drops gw/cl':>16} {'RSS KiB/SA':>11}"
)
# Above this share of a core, other load ran during the burst: its figures may be skewed.
DISTURBED_OTHER_CORES = 0.15


def print_row(
    label: str,
    server: str,
    figures: Figures,
    other: float,
    retransmits: float,
    drops: str,
    kib_per_sa: float,
) -> None:
    print(
        f"{label:>6}  {LABELS[server]:<8} {figures.requests:>7.0f} {figures.seconds:>8.3f} "
        f"{figures.rate:>7.1f} {figures.server_us_per_request / 1000:>13.3f} "
        f"{figures.server_cores:>13.2f} {figures.client_cores:>13.2f} {other:>12.2f} "
        f"{retransmits:>12.0f} {drops:>16} {kib_per_sa:>11.1f}",
        flush=True,
    )


@dataclass
class SuiteResult:
    suite: str
    medians: dict[str, Figures]
    kib_per_sa: dict[str, float] = dataclasses.field(default_factory=dict)  # medians


def run_suite(
    suite: str,
    servers: list[Server],
    client: LoadTester,
    args: argparse.Namespace,
    first: dict[str, Run],
) -> SuiteResult:
    """Warm every gateway up, then alternate measured bursts; print rows and medians.
    ``first`` gets each gateway's first burst (warm-up included) if it has none yet."""
    print(f"\n== {suite}: IKE {SUITES[suite]}, ESP {ESP_PROPOSAL} ==")
    for _ in range(args.warmup):
        for server in servers:
            first.setdefault(server.name, burst_against(server, client, suite, args.sas, 0))
    print(TABLE_HEADER)
    runs: list[Run] = []
    for round_no in range(1, args.rounds + 1):
        for server in round_order(servers, round_no):
            run_ = burst_against(server, client, suite, args.sas, round_no)
            first.setdefault(server.name, run_)
            print_row(
                str(round_no), server.name, run_.sample.figures(), run_.other_cores,
                run_.retransmits, f"{run_.drops[0]}/{run_.drops[1]}", run_.kib_per_sa,
            )  # fmt: skip
            runs.append(run_)
    medians = {}
    memory = {}
    for server in servers:
        own = [r for r in runs if r.sample.server == server.name]
        medians[server.name] = Figures.median([r.sample.figures() for r in own])
        memory[server.name] = statistics.median(r.kib_per_sa for r in own)
        print_row(
            "median",
            server.name,
            medians[server.name],
            statistics.median(r.other_cores for r in own),
            statistics.median(r.retransmits for r in own),
            "/".join(f"{statistics.median(r.drops[i] for r in own):g}" for i in (0, 1)),
            memory[server.name],
        )
    disturbed = sum(r.other_cores > DISTURBED_OTHER_CORES for r in runs)
    if disturbed:
        print(
            f"warning: in {disturbed} of {len(runs)} bursts other processes used more than "
            f"{DISTURBED_OTHER_CORES:.2f} of a core: trust CPU/SA more than SAs/s"
        )
    if sum(r.retransmits for r in runs):
        print(
            "note: the client retransmits after 4 s without an answer (a datagram dropped, "
            "e.g. for a full receive buffer: UDP drops): SAs/s includes those waits"
        )
    result = SuiteResult(suite, medians, memory)
    if len(medians) == 2:
        ours, ref = medians[SERVER_VPNAAA], medians[SERVER_CHARON]
        print(
            f"SAs/s      vpnaaa/charon = {ours.rate / ref.rate:.2f}x  "
            f"({ours.rate:.1f} vs {ref.rate:.1f} IKE_SAs/s, medians)"
        )
        print(
            f"CPU/SA     vpnaaa/charon = "
            f"{ours.server_us_per_request / ref.server_us_per_request:.2f}x  "
            f"({ours.server_us_per_request / 1000:.3f} vs "
            f"{ref.server_us_per_request / 1000:.3f} ms/IKE_SA, medians)"
        )
        print(
            f"RSS/SA     vpnaaa {memory[SERVER_VPNAAA]:.1f} vs charon "
            f"{memory[SERVER_CHARON]:.1f} KiB per established IKE_SA (RSS growth from before "
            f"the burst to all {args.sas} established, medians)"
        )
    return result


def print_summary(results: list[SuiteResult]) -> None:
    if not results or len(results[0].medians) < 2:
        return
    print("\nsummary (medians)")
    print(
        f"{'suite':<11} {'SAs/s ratio':>12} {'CPU/SA ratio':>13} {'vpnaaa SAs/s':>13} "
        f"{'charon SAs/s':>13} {'vpnaaa ms/SA':>13} {'charon ms/SA':>13} "
        f"{'vpnaaa KiB/SA':>14} {'charon KiB/SA':>14}"
    )
    for result in results:
        ours, ref = result.medians[SERVER_VPNAAA], result.medians[SERVER_CHARON]
        print(
            f"{result.suite:<11} {ours.rate / ref.rate:>11.2f}x "
            f"{ours.server_us_per_request / ref.server_us_per_request:>12.2f}x "
            f"{ours.rate:>13.1f} {ref.rate:>13.1f} "
            f"{ours.server_us_per_request / 1000:>13.3f} {ref.server_us_per_request / 1000:>13.3f} "
            f"{result.kib_per_sa[SERVER_VPNAAA]:>14.1f} {result.kib_per_sa[SERVER_CHARON]:>14.1f}"
        )


def print_first_bursts(first: dict[str, Run], count: int) -> None:
    """RSS over each gateway's first burst (a warm-up one), which no freed memory of an
    earlier burst could serve: the per-session figure with one-time allocations included."""
    print(
        f"\nRSS over the first burst of a fresh gateway (before it, then {count} IKE_SAs "
        "established; later bursts reuse what the previous one freed, so the per-round "
        "RSS KiB/SA above is growth beyond that):"
    )
    for name, run_ in first.items():
        before, established = run_.rss_kib
        print(
            f"  {LABELS[name]:<8} {before / 1024:7.1f} MiB -> {established / 1024:7.1f} MiB  "
            f"= {run_.kib_per_sa:6.1f} KiB/IKE_SA"
        )


# Categories of vpnaaa's profile, first match wins: (label, what the cProfile key's file
# name or function name contains).  Builtins matching none are charged to their callers.
PROFILE_CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("idle (epoll wait)", ("'poll' of 'select.epoll'",)),
    ("RSA signature (AUTH payload)", ("RSAPrivateKey",)),
    ("DH / X25519 / ECDH", ("openssl.dh.", "x25519", "openssl.ec.")),
    ("UDP sendto/recvfrom syscalls", ("'sendto' of", "'recvfrom' of")),
    ("EAP-MSCHAPv2 (passlib DES/MD4, vpnaaa.eap)", ("/passlib/", "/vpnaaa/eap/", "mschap.py")),
    (
        "logging (twisted.logger, formatting, write)",
        ("/twisted/logger/", "/string.py", "strftime", "fromtimestamp", "_io.TextIOWrapper"),
    ),
    (
        "AES-CBC, HMAC, PRF (cryptography)",
        ("cryptography", "ciphers.", "hmac", "hashlib", "hashes"),
    ),
    ("IKE codec, SK payload, state machine", ("/vpnaaa/ike/", "/vpnaaa/pool.py")),
    ("Twisted reactor, UDP transport, Deferreds", ("/twisted/",)),
)
OTHER_CATEGORY = "other (stdlib, dataclasses, enum, ...)"
IDLE_CATEGORY = PROFILE_CATEGORIES[0][0]


def profile_category(key: tuple[str, int, str]) -> str | None:
    """The category of one cProfile function key, None for an unmatched builtin."""
    filename, _, name = key
    for label, needles in PROFILE_CATEGORIES:
        if any(needle in filename or needle in name for needle in needles):
            return label
    return None if filename == "~" else OTHER_CATEGORY


def print_breakdown(profile_path: Path, handshakes: int) -> None:
    """vpnaaa's profiled CPU per handshake by category (tottime; builtins to callers)."""
    if not profile_path.exists():
        return
    stats = pstats.Stats(str(profile_path)).stats
    totals: dict[str, float] = {}
    for key, (_, _, tottime, _, callers) in stats.items():
        category = profile_category(key)
        if category is not None:
            totals[category] = totals.get(category, 0.0) + tottime
            continue
        for caller, caller_stats in callers.items():
            charged = profile_category(caller) or OTHER_CATEGORY
            totals[charged] = totals.get(charged, 0.0) + caller_stats[2]
    idle = totals.pop(IDLE_CATEGORY, 0.0)
    busy = sum(totals.values())
    print(
        f"\n--- vpnaaa's profiled CPU per handshake ({handshakes} handshakes, each with its "
        f"INFORMATIONAL delete; {idle:.1f} s idle left out). cProfile inflates Python-level "
        "work: the unprofiled CPU/SA above is the true total ---"
    )
    print(f"{'category':<46} {'ms/handshake':>13} {'share':>7}")
    for category, seconds in sorted(totals.items(), key=lambda item: -item[1]):
        print(f"{category:<46} {seconds * 1000 / handshakes:>13.3f} {seconds / busy:>7.1%}")
    print(f"{'total':<46} {busy * 1000 / handshakes:>13.3f}")


def describe_pinning(plan: CpuPlan) -> str:
    if plan.server is None or plan.client is None:
        return "no CPU pinning"
    return (
        f"gateways pinned to CPU {format_cpus(plan.server)}, "
        f"load-tester charon and harness to CPU {format_cpus(plan.client)}"
    )


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--sas", type=int, default=150, help="IKE_SAs per burst (default 150)")
    add("--rounds", type=int, default=5, help="alternating rounds per suite (default 5)")
    add("--warmup", type=int, default=1, help="warm-up bursts per gateway and suite (default 1)")
    add(
        "--suites",
        default=",".join(SUITES),
        help=f"comma-separated subset of: {','.join(SUITES)} (default all)",
    )
    add(
        "--servers",
        default=",".join(LABELS),
        help="comma-separated subset of: vpnaaa,charon (default both)",
    )
    add(
        "--key-type",
        choices=KEY_TYPES,
        default=CLI_KEY_TYPE,
        help=f"the gateways' key (default {CLI_KEY_TYPE}, what `vpnaaa pki issue` makes)",
    )
    add("--no-pin", action="store_true", help="do not pin the gateways and the client to CPUs")
    add("--profile", action="store_true", help="run vpnaaa under cProfile, print top functions")
    add("--profile-top", type=int, default=30, help="functions shown by --profile (default 30)")
    add("--profile-out", type=Path, default=None, help="also keep the cProfile dump here")
    args = parser.parse_args(argv)
    args.suites = [name.strip() for name in args.suites.split(",") if name.strip()]
    args.servers = [name.strip() for name in args.servers.split(",") if name.strip()]
    if not args.suites or set(args.suites) - set(SUITES):
        parser.error(f"--suites: choose from {','.join(SUITES)}")
    if not args.servers or set(args.servers) - set(LABELS):
        parser.error("--servers: choose from vpnaaa,charon")
    args.servers = [name for name in LABELS if name in args.servers]
    for name in ("sas", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.warmup < 0:
        parser.error("--warmup must not be negative")
    return args


def check_environment() -> None:
    if os.geteuid() != 0:
        raise BenchError("network namespaces and charon need root")
    if not UPSTREAM.available() or not UPSTREAM.has_plugin("load-tester"):
        raise BenchError(
            f"no strongSwan with the load-tester plugin at {UPSTREAM.charon} "
            "(scripts/build-strongswan)"
        )
    if not os.path.exists("/dev/net/tun"):
        raise BenchError("charon's kernel-libipsec needs /dev/net/tun")


def run_benchmark(args: argparse.Namespace) -> None:
    """Namespaces, gateways, bursts, report; everything is torn down on the way out."""
    check_environment()
    users = identities(args.sas)
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="vpnaaa-ike-")))
        os.chmod(workdir, 0o700)
        for name in (SERVER_VPNAAA, SERVER_CHARON, "client"):
            (workdir / name).mkdir()
        plan = CpuPlan.choose(pin=not args.no_pin)
        config, gateway_pki = prepare_vpnaaa(workdir / SERVER_VPNAAA, users, args.key_type)
        network = Network.create(args.servers)
        stack.callback(network.destroy)
        servers: list[Server] = []
        if SERVER_VPNAAA in args.servers:
            vpnaaa = start_vpnaaa(
                workdir / SERVER_VPNAAA, network, config, args.profile, plan.server
            )
            stack.callback(vpnaaa.stop)
            servers.append(vpnaaa)
        if SERVER_CHARON in args.servers:
            charon = start_charon(workdir / SERVER_CHARON, network, gateway_pki, users, plan.server)
            stack.callback(charon.stop)
            servers.append(charon)
        client = LoadTester(
            workdir / "client", network.client, gateway_pki.ca_cert, EAP_PASSWORD, plan.client
        )
        stack.callback(client.stop)
        if plan.client is not None:
            os.sched_setaffinity(0, plan.client)
        key_label = args.key_type.upper().replace("RSA", "RSA-")
        print(
            f"full IKEv2 handshakes: IKE_SA_INIT + IKE_AUTH ({key_label} certificate, "
            f"EAP-MSCHAPv2, virtual IP, CHILD_SA); load-tester bursts of {args.sas} IKE_SAs "
            f"with unique identities, {args.rounds} rounds, {args.warmup} warm-up burst(s) "
            f"per gateway and suite; {describe_pinning(plan)}"
        )
        if args.profile:
            print("note: vpnaaa runs under cProfile: its figures are inflated")
        first: dict[str, Run] = {}
        results = [run_suite(suite, servers, client, args, first) for suite in args.suites]
        print_summary(results)
        print_first_bursts(first, args.sas)
        profiled = next((s for s in servers if s.profile_path is not None), None)
        if profiled is not None and profiled.profile_path is not None:
            profiled.stop()  # cProfile writes its dump when the process exits
            if args.profile_out is not None:
                shutil.copyfile(profiled.profile_path, args.profile_out)
            handshakes = len(args.suites) * (args.warmup + args.rounds) * args.sas
            print(f"\nvpnaaa served {handshakes} handshakes while profiled (warm-up included)")
            print_profile(profiled.profile_path, args.profile_top)
            print_breakdown(profiled.profile_path, handshakes)


def run_reporting_harness_errors(args: argparse.Namespace) -> None:
    """:func:`run_benchmark`; a load-tester failure (the test harness's error) is reported
    as the bench's own, one line and status 1."""
    try:
        run_benchmark(args)
    except HarnessError as exc:
        raise BenchError(str(exc)) from None


def main(argv: list[str] | None = None) -> int:
    """Entry point: returns the process exit status."""
    return run_main(parse_args, run_reporting_harness_errors, argv)


if __name__ == "__main__":
    sys.exit(main())
