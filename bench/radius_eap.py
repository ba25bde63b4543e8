"""EAP benchmark: PEAP, EAP-MSCHAPv2 and EAP-TLS authentications, vpnaaa versus references.

Scenarios, each comparing vpnaaa with a reference server on the same load:

* ``peap``: PEAPv0 with inner EAP-MSCHAPv2, eapol_test's default
  ``crypto_binding=1`` (optional).  Reference: FreeRADIUS 3.  vpnaaa does
  [MS-PEAP] cryptobinding, FreeRADIUS never does, so vpnaaa does slightly
  more work per authentication here.
* ``peap-cb``: the same with ``phase1="peapver=0 crypto_binding=2"``
  (cryptobinding required).  Reference: hostapd's built-in RADIUS server,
  which does cryptobinding.
* ``mschapv2``: bare EAP-MSCHAPv2.  Reference: FreeRADIUS 3.
* ``tls12``, ``tls13``: EAP-TLS (RFC 5216, RFC 9190) with the bench user's client
  certificate (``vpnaaa pki issue-client``), full handshakes; eapol_test's
  ``phase1="tls_disable_tlsv1_3=1|0"``.  Reference: FreeRADIUS 3.2 with
  ``tls_max_version = "1.3"`` (it does TLS 1.3 for EAP-TLS only).
* ``tls12-res``, ``tls13-res``: the same, each eapol_test doing one full and
  ``RESUMED`` resumed authentications (``-r``); every re-authentication must
  resume (eapol_test's OpenSSL says ``resumed=1``), so the CPU per
  authentication is that of the mix.  Reference: a second FreeRADIUS with its
  TLS session cache on (on disk, the only cache 3.2 has).  When a server's
  probe does not resume (vpnaaa before it had resumption) the scenario is
  skipped with a line saying which server.

The client is Debian's ``eapol_test``: PARALLEL workers, each running one
``eapol_test -r0`` process per authentication (``-rN``: per 1 + N in the
resumed scenarios) in a loop, until the run has its count of
authentications (or its time limit is up).  Every eapol_test must exit 0 and
end with "MPPE keys OK: 1  mismatch: 0" (1 + N) and "SUCCESS" (it
has then seen EAP-Success and checked the MS-MPPE keys against its own MSK);
anything else aborts the benchmark.  eapol_test costs about 9 ms of CPU per
PEAP authentication (process start and TLS), so the client limits the
wall-clock rate: compare the servers by their CPU per authentication first.

All three servers present certificates from vpnaaa's own CA (``vpnaaa pki
init`` / ``vpnaaa pki issue 127.0.0.1``), the leaf plus the CA certificate,
so one eapol_test ``ca_cert`` works and the TLS handshakes are the same size.
FreeRADIUS runs from the private configuration copy made by
``tests/interop/freeradius.py``, its eap module pointed at those files and set
to offer PEAP first (as vpnaaa and hostapd do; a bare EAP-MSCHAPv2 peer then
Naks to MSCHAPv2 on all servers).
hostapd runs with ``driver=none``, ``eap_server=1`` and a generated
configuration, with the same EAP-TLS fragment size as the others.  Its
RADIUS server has no bind-address option: it listens on the wildcard
address, but only 127.0.0.1 is a known client.  Before measuring, one probe
authentication per server shows Access-Requests per authentication, TLS
version, cipher suite, the size of the server's TLS flight and whether
cryptobinding was done.

Per measured run the harness records authentications per second (first
eapol_test start to last exit), server CPU per authentication, and server and
client "cores" (CPU seconds per wall second; the client figure is eapol_test
plus this harness) and "other cores", the rest of the machine's busy CPU
(/proc/stat): other tenants' load, which skews the rates more than the CPU
per authentication.  Server CPU is the kernel's CPU clock of the server
process (the utime+stime of /proc/PID/stat without its 10 ms truncation),
cross-checked against ``radius_pap``'s /proc process-tree figure, before and
after the run.  Servers are pinned to all CPUs but the last, the harness and
its eapol_test processes to the last one (``--no-pin`` turns this off).  Each
server is warmed up, then rounds alternate the order of the servers and the
report gives medians and the ratios vpnaaa / reference.

Run from the repository root with the venv python::

    .venv/bin/python bench/radius_eap.py [--auths N] [--rounds R] [--scenarios peap,...]

``--profile`` runs vpnaaa under twistd's cProfile support and prints its top
functions at the end (probes and warm-up included); with ``--scenarios peap``
it shows where the time of a PEAP authentication goes.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

# Run as a script (``python bench/radius_eap.py``), the repository root is not on sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.radius_pap import (
    BENCH_PASSWORD,
    BENCH_SECRET,
    BENCH_USER,
    READY_TIMEOUT_S,
    SERVER_FREERADIUS,
    SERVER_VPNAAA,
    BenchError,
    CpuPlan,
    Figures,
    Sample,
    Server,
    children_cpu_seconds,
    format_cpus,
    print_profile,
    require_executable,
    round_order,
    run_main,
    spawn,
    start_vpnaaa,
)
from tests.interop.freeradius import (
    EAP_DEFAULT_TYPE,
    LOOPBACK,
    command,
    edit_module,
    free_udp_ports,
    log_file,
    write_freeradius_config,
    write_private,
)
from tests.interop.load_tester import tail

SERVER_HOSTAPD = "hostapd"
SERVER_FREERADIUS_CACHE = "freeradius-cache"  # its TLS session cache on, for resumption
LABELS = {
    SERVER_VPNAAA: "vpnaaa",
    SERVER_FREERADIUS: "FreeRADIUS",
    SERVER_FREERADIUS_CACHE: "FreeRADIUS",
    SERVER_HOSTAPD: "hostapd",
}

AUTH_TIMEOUT_S = 10  # eapol_test -t: the whole exchange, per authentication
PROBE_TIMEOUT_S = 2  # shorter while waiting for a server to come up

KEYS_OK = "MPPE keys OK: {}  mismatch: 0"  # formatted with the authentications per process
RESUMED_LINE = r"^OpenSSL: Handshake finished - resumed=1"
EAP_STARTED = "CTRL-EVENT-EAP-STARTED"  # eapol_test logs it as each authentication starts
SUCCESS = "SUCCESS"
ACCESS_REJECT = "(Access-Reject)"
CLK_TCK = os.sysconf("SC_CLK_TCK")
EAP_FRAGMENT_SIZE = 1024  # vpnaaa's eap.tls.fragment_size and FreeRADIUS's default


# --------------------------------------------------------------------------
# Scenarios and eapol_test configurations
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """One kind of authentication and the reference server it is compared with."""

    name: str
    title: str
    reference: str
    network: tuple[tuple[str, str], ...]  # wpa_supplicant network={} options (quoted values)
    tls: bool  # PEAP, EAP-TLS: report TLS details of the probe
    reauths: int = 0  # eapol_test -r: re-authentications per process, each must resume

    @property
    def eap(self) -> str:
        """wpa_supplicant's name of the (outer) EAP method."""
        return dict(self.network)["eap"]

    @property
    def per_process(self) -> int:
        """Authentications one eapol_test process does."""
        return 1 + self.reauths


PEAP_NETWORK = (("eap", "PEAP"), ("phase2", "auth=MSCHAPV2"))
# wpa_supplicant 2.10 disables TLS 1.3 unless phase1 says otherwise (RFC 9190 §2.1.1 peers).
TLS12_NETWORK = (("eap", "TLS"), ("phase1", "tls_disable_tlsv1_3=1"))
TLS13_NETWORK = (("eap", "TLS"), ("phase1", "tls_disable_tlsv1_3=0"))
# Re-authentications per eapol_test in the resumed scenarios.  One: with TLS 1.3,
# FreeRADIUS 3.2.1 and eapol_test 2.10 resume only every other re-authentication (a
# resumed handshake leaves no ticket that is used next time), so more would not measure
# the reference on resumptions alone.
RESUMED = 1
SCENARIOS = (
    Scenario(
        "peap",
        'PEAPv0/EAP-MSCHAPv2, phase1="peapver=0" (crypto_binding=1: optional)',
        SERVER_FREERADIUS,
        (*PEAP_NETWORK, ("phase1", "peapver=0")),
        tls=True,
    ),
    Scenario(
        "peap-cb",
        'PEAPv0/EAP-MSCHAPv2, phase1="peapver=0 crypto_binding=2" (required)',
        SERVER_HOSTAPD,
        (*PEAP_NETWORK, ("phase1", "peapver=0 crypto_binding=2")),
        tls=True,
    ),
    Scenario("mschapv2", "bare EAP-MSCHAPv2", SERVER_FREERADIUS, (("eap", "MSCHAPV2"),), tls=False),
    Scenario("tls12", "EAP-TLS, TLS 1.2 (RFC 5216)", SERVER_FREERADIUS, TLS12_NETWORK, tls=True),
    Scenario("tls13", "EAP-TLS, TLS 1.3 (RFC 9190)", SERVER_FREERADIUS, TLS13_NETWORK, tls=True),
    Scenario(
        "tls12-res",
        f"EAP-TLS, TLS 1.2, per eapol_test 1 full + {RESUMED} resumed (session ID), mixed",
        SERVER_FREERADIUS_CACHE,
        TLS12_NETWORK,
        tls=True,
        reauths=RESUMED,
    ),
    Scenario(
        "tls13-res",
        f"EAP-TLS, TLS 1.3, per eapol_test 1 full + {RESUMED} resumed (ticket), mixed",
        SERVER_FREERADIUS_CACHE,
        TLS13_NETWORK,
        tls=True,
        reauths=RESUMED,
    ),
)
SCENARIO_NAMES = tuple(scenario.name for scenario in SCENARIOS)
BARE_KEYWORDS = {"eap", "key_mgmt"}  # wpa_supplicant.conf values written without quotes


def eapol_config_text(scenario: Scenario, pki: Pki) -> str:
    """The wpa_supplicant configuration eapol_test reads for ``scenario``."""
    options = [("key_mgmt", "IEEE8021X"), *scenario.network, ("identity", BENCH_USER)]
    if scenario.eap == "TLS":
        options += [("client_cert", str(pki.client_cert)), ("private_key", str(pki.client_key))]
    else:
        options.append(("password", BENCH_PASSWORD))
    if scenario.tls:
        options.append(("ca_cert", str(pki.ca_cert)))
    body = "".join(
        f"\t{key}={value}\n" if key in BARE_KEYWORDS else f'\t{key}="{value}"\n'
        for key, value in options
    )
    return f"network={{\n{body}}}\n"


def eapol_command(
    config: Path, port: int, worker: int, timeout_s: int, reauths: int = 0
) -> list[str]:
    """One eapol_test process: one authentication and ``reauths`` re-authentications
    (``-r``), which keep the supplicant's TLS session and so may resume it.

    Each worker has its own Calling-Station-Id (``-M``), as separate
    supplicants would.
    """
    return [
        "eapol_test",
        "-c", str(config),
        "-a", LOOPBACK,
        "-p", str(port),
        "-s", BENCH_SECRET,
        f"-r{reauths}",
        f"-t{timeout_s}",
        "-M", f"02:00:00:00:00:{worker + 1:02x}",
    ]  # fmt: skip


def check_output(returncode: int, output: str, auths: int = 1) -> str | None:
    """Why an eapol_test run of ``auths`` authentications failed, or None when every one
    succeeded with matching keys."""
    last_lines = output.rstrip().splitlines()[-2:]
    want = [KEYS_OK.format(auths), SUCCESS]
    if returncode != 0:
        return f"exit status {returncode}"
    if last_lines != want:
        return f"last lines {last_lines!r}, want {want!r}"
    return None


def count_resumed(output: str) -> int:
    """Authentications whose handshake eapol_test's OpenSSL reported as resumed
    (abbreviated, RFC 5216 §2.1.2; TLS 1.3 with a PSK, RFC 9190 §2.1.3).  Counted per
    authentication: with TLS 1.3 the line comes twice, the second after the tickets."""
    return sum(
        re.search(RESUMED_LINE, auth, re.M) is not None for auth in output.split(EAP_STARTED)
    )


def check_resumed(output: str, reauths: int) -> str | None:
    """Why a run with ``reauths`` re-authentications did not resume each, or None."""
    resumed = count_resumed(output)
    if resumed != reauths:
        return f"{resumed} of {reauths} re-authentications resumed"
    return None


def output_tail(output: str, lines: int = 40) -> str:
    """The last ``lines`` lines of an eapol_test log."""
    return "\n".join(output.rstrip().splitlines()[-lines:])


@dataclass(frozen=True)
class Handshake:
    """What a probe authentication's eapol_test log says about the exchange."""

    access_requests: int
    tls_version: str | None
    cipher_suite: str | None
    server_flight: int | None
    cryptobinding: bool
    resumed: int  # handshakes that resumed a session

    @classmethod
    def parse(cls, output: str) -> Handshake:
        """Read the facts from eapol_test's debug log (it always logs at debug level)."""

        def first(pattern: str) -> str | None:
            match = re.search(pattern, output, re.M)
            return match.group(1) if match else None

        flight = first(r"^SSL: TLS Message Length: (\d+)$")
        return cls(
            access_requests=len(
                re.findall(r"^RADIUS message: code=1 \(Access-Request\)", output, re.M)
            ),
            tls_version=first(r"^SSL: Using TLS version (\S+)"),
            cipher_suite=first(r"^OpenSSL: Server selected cipher suite (0x[0-9a-f]+)"),
            server_flight=int(flight) if flight else None,
            cryptobinding="EAP-PEAP: Valid cryptobinding TLV received" in output,
            resumed=count_resumed(output),
        )

    def describe(self, scenario: Scenario) -> str:
        """One line for the scenario header (the TLS facts are the first handshake's)."""
        if scenario.reauths:
            text = (
                f"{self.access_requests} Access-Requests for {scenario.per_process} auths, "
                f"{self.resumed} of {scenario.reauths} re-auths resumed"
            )
        else:
            text = f"{self.access_requests} Access-Requests/auth"
        if scenario.tls:
            text += (
                f", {self.tls_version}, suite {self.cipher_suite}, "
                f"server TLS flight {self.server_flight} B"
            )
        if scenario.eap == "PEAP":
            text += f", cryptobinding {'yes' if self.cryptobinding else 'no'}"
        return text


# --------------------------------------------------------------------------
# Load: parallel loops of eapol_test
# --------------------------------------------------------------------------


@dataclass
class LoadResult:
    """Outcome of one load run against one server."""

    auths: int
    wall_seconds: float
    client_cpu_seconds: float
    timed_out: bool


def client_cpu_seconds() -> float:
    """CPU of reaped children (eapol_test) plus this harness (all threads)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    return children_cpu_seconds() + own.ru_utime + own.ru_stime


class Load:
    """PARALLEL workers, each a loop of one eapol_test process per ticket.

    A ticket is one eapol_test: ``scenario.per_process`` authentications.
    Workers take tickets from a shared counter until ``auths`` were issued or
    ``max_seconds`` have passed; the first failure stops every worker and is
    raised with its eapol_test output.  Each worker writes eapol_test's
    (always debug-level) output to its own file, so the harness only reads
    the last lines, or for re-authentications the whole log, to check that
    each one resumed.
    """

    def __init__(
        self, config: Path, port: int, parallel: int, logdir: Path, scenario: Scenario
    ) -> None:
        self.config = config
        self.port = port
        self.parallel = parallel
        self.logdir = logdir
        self.scenario = scenario
        self.lock = threading.Lock()
        self.issued = 0
        self.completed = 0
        self.limit = 0
        self.deadline = 0.0
        self.failed = threading.Event()

    def _take_ticket(self) -> bool:
        with self.lock:
            if self.failed.is_set() or self.issued >= self.limit:
                return False
            if time.monotonic() >= self.deadline:
                return False
            self.issued += 1
            return True

    def _worker(self, worker: int) -> None:
        log_path = self.logdir / f"eapol-{worker}.log"
        scenario = self.scenario
        command = eapol_command(self.config, self.port, worker, AUTH_TIMEOUT_S, scenario.reauths)
        while self._take_ticket():
            with log_path.open("w+b") as log:
                returncode = subprocess.call(
                    command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
                )
                # eapol_test wrote through its own descriptor: find the end, read the tail.
                size = log.seek(0, os.SEEK_END)
                log.seek(max(0, size - 4096))
                last = log.read().decode(errors="replace")
            problem = check_output(returncode, last, scenario.per_process)
            if problem is None and scenario.reauths:
                problem = check_resumed(log_path.read_text(errors="replace"), scenario.reauths)
            if problem is not None:
                self.failed.set()
                output = log_path.read_text(errors="replace")
                raise BenchError(
                    f"eapol_test failed: {problem}\ncommand: {' '.join(command)}\n"
                    f"output tail:\n{output_tail(output)}"
                )
            with self.lock:
                self.completed += scenario.per_process

    def run(self, auths: int, max_seconds: float) -> LoadResult:
        """Run ``auths`` authentications, rounded up to whole eapol_test processes (fewer
        if ``max_seconds`` run out)."""
        self.issued = self.completed = 0
        self.limit = -(-auths // self.scenario.per_process)
        self.failed.clear()
        cpu_before = client_cpu_seconds()
        start = time.perf_counter()
        self.deadline = time.monotonic() + max_seconds
        with ThreadPoolExecutor(max_workers=self.parallel) as pool:
            futures = [pool.submit(self._worker, worker) for worker in range(self.parallel)]
        wall = time.perf_counter() - start
        client_cpu = client_cpu_seconds() - cpu_before
        for future in futures:
            error = future.exception()
            if error is not None:
                raise error
        timed_out = self.issued < self.limit
        return LoadResult(self.completed, wall, client_cpu, timed_out)


def load_server(server: Server, load: Load, auths: int, max_seconds: float) -> LoadResult:
    """Run ``load`` against ``server``; on failure say which server and whether it died."""
    try:
        return load.run(auths, max_seconds)
    except BenchError as exc:
        server.check_alive()
        raise BenchError(f"{server.label}: {exc}") from None


def probe(server: Server, config: Path, scenario: Scenario) -> Handshake:
    """Run one eapol_test, retrying until the server is up; return the handshake facts.

    An Access-Reject fails at once: the server is up but misconfigured.
    """
    command = eapol_command(config, server.port, 0, PROBE_TIMEOUT_S, scenario.reauths)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        server.check_alive()
        completed = subprocess.run(command, capture_output=True, text=True, check=False)
        output = completed.stdout + completed.stderr
        problem = check_output(completed.returncode, output, scenario.per_process)
        if problem is None:
            return Handshake.parse(output)
        if ACCESS_REJECT in output or time.monotonic() >= deadline:
            raise BenchError(
                f"{server.label}: probe authentication failed: {problem}\n"
                f"command: {' '.join(command)}\neapol_test output tail:\n{output_tail(output)}\n"
                f"server log tail:\n{tail(server.log_path)}"
            )
        time.sleep(0.2)


# --------------------------------------------------------------------------
# Servers: vpnaaa (from radius_pap), FreeRADIUS with EAP, hostapd
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    """vpnaaa's CA and server certificate, shared by every server under test, and the
    bench user's client certificate (RSA, as ``vpnaaa pki issue-client`` makes it)."""

    ca_cert: Path  # also what vpnaaa and FreeRADIUS check client certificates against
    server_key: Path
    fullchain: Path  # server.pem + chain.pem: what vpnaaa sends, for the references
    client_cert: Path
    client_key: Path

    @classmethod
    def from_vpnaaa(cls, state_dir: Path, workdir: Path) -> Pki:
        """Locate the files ``vpnaaa pki init`` / ``pki issue`` / ``pki issue-client`` made;
        write the full chain."""
        pki = state_dir / "pki"
        client = pki / "clients" / BENCH_USER
        files = [
            *(pki / "ca" / "ca.pem", pki / "server.key", pki / "server.pem", pki / "chain.pem"),
            *(client.with_suffix(".pem"), client.with_suffix(".key")),
        ]
        missing = [str(path) for path in files if not path.is_file()]
        if missing:
            raise BenchError(f"vpnaaa's PKI files are missing: {', '.join(missing)}")
        fullchain = workdir / "fullchain.pem"
        fullchain.write_text(files[2].read_text() + files[3].read_text())
        return cls(files[0], files[1], fullchain, files[4], files[5])


# The eap module's TLS session cache switch (the first "enable" after "cache {").
CACHE_ENABLE = r"\t\tcache \{\n(?:.*\n)*?\t\t\tenable"


def configure_freeradius_eap(raddb: Path, pki: Pki, cache: bool) -> None:
    """Point the private copy's eap module at vpnaaa's certificates; offer PEAP first.

    TLS up to 1.3: FreeRADIUS 3.2 does TLS 1.3 for EAP-TLS only; PEAP stays at 1.2 as
    eapol_test 2.10 disables 1.3 unless phase1 enables it.  ``cache`` turns on its TLS
    session cache (off by default), which resumption needs.
    """
    options = {
        EAP_DEFAULT_TYPE: "peap",
        r"\s*private_key_file": str(pki.server_key),
        r"\s*certificate_file": str(pki.fullchain),
        r"\s*ca_file": str(pki.ca_cert),
        r"\s*tls_max_version": '"1.3"',
    }
    if cache:
        # 3.2 caches sessions only with a name and a directory (it has no in-memory cache).
        tlscache = raddb / "tlscache"
        tlscache.mkdir(mode=0o700)
        settings = ("yes", 'name = "vpnaaa-bench"', f'persist_dir = "{tlscache}"')
        options[CACHE_ENABLE] = "\n\t\t\t".join(settings)
    edit_module(raddb, "eap", options)


def start_freeradius_eap(
    workdir: Path, pki: Pki, cpus: frozenset[int] | None, name: str = SERVER_FREERADIUS
) -> Server:
    """Start the private FreeRADIUS of ``tests/interop/freeradius.py`` with the EAP changes
    (as ``SERVER_FREERADIUS_CACHE``: with its TLS session cache)."""
    binary = require_executable("freeradius")
    raddb = workdir / "raddb"
    (port,) = free_udp_ports(1)
    write_freeradius_config(raddb, port, BENCH_SECRET, {BENCH_USER: BENCH_PASSWORD})
    configure_freeradius_eap(raddb, pki, cache=name == SERVER_FREERADIUS_CACHE)
    process = spawn(command(raddb, binary=binary), workdir / "freeradius.out", cpus)
    return Server(name, LABELS[name], port, process, log_file(raddb))


def hostapd_config_text(workdir: Path, pki: Pki, port: int) -> str:
    """hostapd as a RADIUS/EAP server only (hostapd.conf, "RADIUS authentication server")."""
    return (
        "driver=none\n"
        "logger_syslog=0\n"
        "logger_stdout=-1\n"
        "logger_stdout_level=4\n"
        "eap_server=1\n"
        f"eap_user_file={workdir / 'eap_user'}\n"
        f"ca_cert={pki.ca_cert}\n"
        f"server_cert={pki.fullchain}\n"
        f"private_key={pki.server_key}\n"
        f"radius_server_clients={workdir / 'radius_clients'}\n"
        f"radius_server_auth_port={port}\n"
        "radius_server_acct_port=0\n"
        # vpnaaa's and FreeRADIUS's EAP-TLS fragment size (hostapd's default, 1400, saves
        # one round trip on the server's certificate flight).
        f"fragment_size={EAP_FRAGMENT_SIZE}\n"
    )


def start_hostapd(workdir: Path, pki: Pki, cpus: frozenset[int] | None) -> Server:
    """Write hostapd's configuration, users and clients; start it in the foreground."""
    binary = require_executable("hostapd")
    (port,) = free_udp_ports(1)
    write_private(workdir / "radius_clients", f"{LOOPBACK}/32\t{BENCH_SECRET}\n")
    write_private(
        workdir / "eap_user",
        f'"{BENCH_USER}"\tPEAP\n"{BENCH_USER}"\tMSCHAPV2\t"{BENCH_PASSWORD}"\t[2]\n',
    )
    config = workdir / "hostapd.conf"
    config.write_text(hostapd_config_text(workdir, pki, port))
    log_path = workdir / "hostapd.out"
    process = spawn([binary, str(config)], log_path, cpus)
    return Server(SERVER_HOSTAPD, LABELS[SERVER_HOSTAPD], port, process, log_path)


def start_servers(
    args: argparse.Namespace,
    cpus: frozenset[int] | None,
    workdir: Path,
    stack: contextlib.ExitStack,
) -> tuple[dict[str, Server], Pki]:
    """Start vpnaaa, then the references the chosen scenarios need; register shutdowns."""
    subdir = workdir / SERVER_VPNAAA
    subdir.mkdir()
    vpnaaa = start_vpnaaa(subdir, args.profile, cpus)
    stack.callback(vpnaaa.stop)
    # start_vpnaaa keeps its state directory (users, pki/) in SUBDIR/state.
    pki = Pki.from_vpnaaa(subdir / "state", workdir)
    servers = {SERVER_VPNAAA: vpnaaa}
    starters = {
        SERVER_FREERADIUS: start_freeradius_eap,
        SERVER_FREERADIUS_CACHE: functools.partial(
            start_freeradius_eap, name=SERVER_FREERADIUS_CACHE
        ),
        SERVER_HOSTAPD: start_hostapd,
    }
    for name in sorted({scenario.reference for scenario in args.scenarios}):
        subdir = workdir / name
        subdir.mkdir()
        server = starters[name](subdir, pki, cpus)
        stack.callback(server.stop)
        servers[name] = server
    return servers, pki


# --------------------------------------------------------------------------
# Measurement and report
# --------------------------------------------------------------------------

TABLE_HEADER = (
    f"{'round':>6}  {'server':<11} {'auths':>6} {'seconds':>8} {'auths/s':>8} "
    f"{'server ms/auth':>15} {'server cores':>13} {'client cores':>13} {'other cores':>12}"
)


def print_row(
    round_label: str, label: str, figures: Figures, other_cores: float, flag: str = ""
) -> None:
    """Print one table row (``flag`` marks a run cut short by its time limit)."""
    print(
        f"{round_label:>6}  {label:<11} {figures.requests:>6.0f} {figures.seconds:>8.2f} "
        f"{figures.rate:>8.1f} {figures.server_us_per_request / 1000:>15.3f} "
        f"{figures.server_cores:>13.2f} {figures.client_cores:>13.2f} "
        f"{other_cores:>12.2f}{flag}",
        flush=True,
    )


def busy_cpu_seconds() -> float:
    """CPU seconds all CPUs spent busy since boot (/proc/stat, every process)."""
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal (guest time is inside user).
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


# Above this share of a core, other load ran during the run: its figures may be skewed.
DISTURBED_OTHER_CORES = 0.15


def cpu_clock_id(pid: int) -> int:
    """clock_getcpuclockid(3) of process ``pid``: its CPU time, all threads, in ns.

    Linux encodes a process CPU clock as ``((~pid) << 3) | CPUCLOCK_SCHED``
    (2), as glibc does; Python only exposes the per-thread variant.
    """
    return ((~pid) << 3) | 2


@dataclass(frozen=True)
class CpuReading:
    """Server CPU seconds so far: the process's ns clock and radius_pap's /proc ticks."""

    precise: float | None
    ticks: float

    @classmethod
    def read(cls, server: Server) -> CpuReading:
        """Read both (``Server.cpu_seconds`` also fails loudly if the server died)."""
        ticks = server.cpu_seconds()
        try:
            precise = time.clock_gettime(cpu_clock_id(server.process.pid))
        except OSError:
            precise = None
        return cls(precise, ticks)


# Ticks truncate to 1/CLK_TCK s: a larger gap means CPU outside the server process itself.
TICK_SLACK_S = 2.0 / CLK_TCK


def cpu_used(server: Server, before: CpuReading, after: CpuReading) -> float:
    """Server CPU seconds between two readings, preferring the nanosecond clock.

    /proc counts in 10 ms ticks: on a run of 150 bare EAP-MSCHAPv2 auths
    (about 0.1 s of server CPU) that alone is up to 10%.  The process clock
    has the same source without the truncation, but it does not see child
    processes; the /proc tree figure (which does) must then agree with it.
    """
    ticks = after.ticks - before.ticks
    if before.precise is None or after.precise is None:
        return ticks
    precise = after.precise - before.precise
    if ticks > precise * 1.1 + TICK_SLACK_S:
        raise BenchError(
            f"{server.label}: its process tree used {ticks:.3f} s of CPU but the process "
            f"itself {precise:.3f} s: child processes did work; measure the tree instead"
        )
    return precise


@dataclass(frozen=True)
class Run:
    """One measured run: the sample, whether the time limit cut it, and foreign load.

    ``other_cores`` is the busy CPU of the whole machine (/proc/stat) minus the
    server and client CPU, per wall second: load that is not part of the test.
    """

    sample: Sample
    timed_out: bool
    other_cores: float


def measure(server: Server, load: Load, round_no: int, args: argparse.Namespace) -> Run:
    """One measured run against ``server``."""
    busy_before = busy_cpu_seconds()
    cpu_before = CpuReading.read(server)
    result = load_server(server, load, args.auths, args.max_seconds)
    cpu_after = CpuReading.read(server)
    busy = busy_cpu_seconds() - busy_before
    if result.auths == 0:
        raise BenchError(f"{server.label}: no authentication finished in {args.max_seconds} s")
    server_cpu = cpu_used(server, cpu_before, cpu_after)
    sample = Sample(
        round_no,
        server.name,
        result.auths,
        result.wall_seconds,
        server_cpu,
        result.client_cpu_seconds,
    )
    other = max(0.0, busy - server_cpu - result.client_cpu_seconds) / result.wall_seconds
    return Run(sample, result.timed_out, other)


@dataclass
class ScenarioResult:
    """Medians of one scenario, for the closing summary."""

    scenario: Scenario
    ours: Figures
    ref: Figures
    vpnaaa_auths: int  # probe, warm-up and measured authentications vpnaaa served


def run_scenario(
    scenario: Scenario,
    servers: dict[str, Server],
    config: Path,
    logdir: Path,
    args: argparse.Namespace,
) -> ScenarioResult | None:
    """Probe, warm up and measure vpnaaa and the scenario's reference, alternating.

    A resumed scenario is skipped (None) when a server's probe did not resume every
    re-authentication: there is nothing to measure, and a full handshake must not be
    counted as a resumed one.
    """
    pair = [servers[SERVER_VPNAAA], servers[scenario.reference]]
    print(f"\n== {scenario.name}: {scenario.title} ==")
    not_resuming = []
    for server in pair:
        handshake = probe(server, config, scenario)
        print(f"probe   {server.label:<11} {handshake.describe(scenario)}", flush=True)
        if handshake.resumed < scenario.reauths:
            not_resuming.append(server.label)
    if not_resuming:
        print(f"skipped: {' and '.join(not_resuming)} did not resume: nothing to measure")
        return None
    loads = {}
    warmed_up = 0
    for server in pair:
        loads[server.name] = Load(config, server.port, args.parallel, logdir, scenario)
        if args.warmup:
            warm = load_server(server, loads[server.name], args.warmup, args.max_seconds)
            warmed_up += warm.auths * (server.name == SERVER_VPNAAA)
    print(TABLE_HEADER)
    runs: list[Run] = []
    for round_no in range(1, args.rounds + 1):
        for server in round_order(pair, round_no):
            run = measure(server, loads[server.name], round_no, args)
            flag = " (time limit)" if run.timed_out else ""
            print_row(str(round_no), server.label, run.sample.figures(), run.other_cores, flag)
            runs.append(run)
    medians = {}
    for server in pair:
        own = [run for run in runs if run.sample.server == server.name]
        medians[server.name] = Figures.median([run.sample.figures() for run in own])
        other = statistics.median(run.other_cores for run in own)
        print_row("median", server.label, medians[server.name], other)
    print_notes(runs, args)
    served = (
        scenario.per_process
        + warmed_up
        + sum(r.sample.requests for r in runs if r.sample.server == SERVER_VPNAAA)
    )
    result = ScenarioResult(scenario, medians[SERVER_VPNAAA], medians[scenario.reference], served)
    print_ratios(result)
    return result


def print_notes(runs: list[Run], args: argparse.Namespace) -> None:
    """Warn about runs cut short by the time limit or disturbed by other load."""
    cut_short = sum(run.timed_out for run in runs)
    if cut_short:
        print(
            f"note: {cut_short} of {len(runs)} runs hit the {args.max_seconds:g} s limit "
            f"before {args.auths} auths"
        )
    disturbed = sum(run.other_cores > DISTURBED_OTHER_CORES for run in runs)
    if disturbed:
        print(
            f"warning: in {disturbed} of {len(runs)} runs other processes used more than "
            f"{DISTURBED_OTHER_CORES:.2f} of a core: trust CPU/auth more than auths/s"
        )


def print_ratios(result: ScenarioResult) -> None:
    """The vpnaaa / reference ratios of one scenario's medians."""
    ours, ref, label = result.ours, result.ref, LABELS[result.scenario.reference]
    print(
        f"auths/s       vpnaaa/{label} = {ours.rate / ref.rate:.2f}x  "
        f"({ours.rate:.1f} vs {ref.rate:.1f} auths/s, medians)"
    )
    print(
        f"CPU/auth      vpnaaa/{label} = "
        f"{ours.server_us_per_request / ref.server_us_per_request:.2f}x  "
        f"({ours.server_us_per_request / 1000:.3f} vs "
        f"{ref.server_us_per_request / 1000:.3f} ms/auth, medians)"
    )


def print_summary(results: list[ScenarioResult]) -> None:
    """One line per scenario: the ratios and the server CPU per authentication."""
    print("\nsummary (medians)")
    print(
        f"{'scenario':<9} {'reference':<11} {'auths/s ratio':>14} {'CPU/auth ratio':>15} "
        f"{'vpnaaa ms/auth':>15} {'ref ms/auth':>12}"
    )
    for result in results:
        ours, ref = result.ours, result.ref
        print(
            f"{result.scenario.name:<9} {LABELS[result.scenario.reference]:<11} "
            f"{ours.rate / ref.rate:>13.2f}x "
            f"{ours.server_us_per_request / ref.server_us_per_request:>14.2f}x "
            f"{ours.server_us_per_request / 1000:>15.3f} {ref.server_us_per_request / 1000:>12.3f}"
        )


def describe_pinning(plan: CpuPlan) -> str:
    """One line for the report header."""
    if plan.server is None or plan.client is None:
        return "no CPU pinning"
    return (
        f"servers pinned to CPU {format_cpus(plan.server)}, "
        f"eapol_test and harness to CPU {format_cpus(plan.client)}"
    )


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--auths", type=int, default=200, help="authentications per measured run (default 200)")
    add("--rounds", type=int, default=5, help="alternating rounds per scenario (default 5)")
    add("--parallel", type=int, default=4, help="eapol_test processes at a time (default 4)")
    add("--warmup", type=int, default=40, help="warm-up auths per server and scenario (default 40)")
    add("--max-seconds", type=float, default=10.0, help="time limit per run (default 10)")
    add(
        "--scenarios",
        default=",".join(SCENARIO_NAMES),
        help=f"comma-separated subset of: {','.join(SCENARIO_NAMES)} (default all)",
    )
    add("--no-pin", action="store_true", help="do not pin the servers and clients to CPUs")
    add("--profile", action="store_true", help="run vpnaaa under cProfile, print top functions")
    add("--profile-top", type=int, default=25, help="functions shown by --profile (default 25)")
    add("--profile-out", type=Path, default=None, help="also keep the cProfile dump here")
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.scenarios.split(",") if name.strip()]
    unknown = sorted(set(names) - set(SCENARIO_NAMES))
    if unknown or not names:
        parser.error(f"--scenarios: unknown or empty: {unknown}")
    args.scenarios = [scenario for scenario in SCENARIOS if scenario.name in names]
    for name in ("auths", "rounds", "parallel"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.warmup < 0 or args.max_seconds <= 0:
        parser.error("--warmup must not be negative and --max-seconds must be positive")
    return args


def run_benchmark(args: argparse.Namespace) -> None:
    """Start servers, measure every scenario, report; always stop servers and clean up."""
    require_executable("eapol_test")
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="vpnaaa-eap-")))
        plan = CpuPlan.choose(pin=not args.no_pin)
        servers, pki = start_servers(args, plan.server, workdir, stack)
        if plan.client is not None:
            # Threads and eapol_test processes started from now on inherit this.
            os.sched_setaffinity(0, plan.client)
        logdir = workdir / "eapol"
        logdir.mkdir()
        print(
            f"EAP authentications, {args.parallel} parallel eapol_test loops "
            f"(-r0, resumed: -r{RESUMED}), "
            f"{args.auths} auths per run, {args.rounds} rounds, warm-up {args.warmup} auths; "
            f"{describe_pinning(plan)}"
        )
        if args.profile:
            print("note: vpnaaa runs under cProfile: its figures are inflated")
        results = []
        for scenario in args.scenarios:
            config = workdir / f"eapol-{scenario.name}.conf"
            config.write_text(eapol_config_text(scenario, pki))
            result = run_scenario(scenario, servers, config, logdir, args)
            if result is not None:
                results.append(result)
        print_summary(results)
        vpnaaa = servers[SERVER_VPNAAA]
        if vpnaaa.profile_path is not None:
            vpnaaa.stop()  # cProfile writes its dump when the process exits
            if args.profile_out is not None:
                shutil.copyfile(vpnaaa.profile_path, args.profile_out)
            served = sum(result.vpnaaa_auths for result in results)
            print(
                f"\nvpnaaa served {served} authentications while profiled "
                "(probes and warm-up included)"
            )
            print_profile(vpnaaa.profile_path, args.profile_top)


def main(argv: list[str] | None = None) -> int:
    """Entry point: returns the process exit status."""
    return run_main(parse_args, run_benchmark, argv)


if __name__ == "__main__":
    sys.exit(main())
