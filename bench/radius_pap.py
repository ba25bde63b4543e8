"""PAP benchmark: vpnaaa versus FreeRADIUS 3, both driven by Debian's radclient.

Both servers run on 127.0.0.1 on free high ports and get the same request
stream: PAP Access-Requests (with Message-Authenticator) for one user,
always answered with Access-Accept (FreeRADIUS delays every Access-Reject by
1 s, so rejects are useless for a throughput benchmark).  radclient reads a
file with PARALLEL copies of the request and sends each one ``-c`` times,
PARALLEL requests in flight (see ``RequestFile`` for why).

FreeRADIUS runs from a private copy of Debian's /etc/freeradius/3.0 made in a
temporary directory (``tests/interop/freeradius.py``): stock modules and
virtual servers, one auth listener, one client (127.0.0.1,
Message-Authenticator required) and one user.
vpnaaa runs under ``twistd -n`` with a generated config, the bench user and
certificates from its own ``vpnaaa pki`` commands, in a temporary state dir.

For each measured run the harness records:

* wall-clock requests per second (radclient start to exit),
* server CPU microseconds per request: utime+stime (plus reaped children)
  from /proc/PID/stat, summed over the server process and all its
  descendants, read before and after the load,
* server and radclient "cores" (CPU seconds per wall second), which tell
  who was the bottleneck and whether other load disturbed the run.

radclient is pinned to the last CPU and the servers to the others (see
``CpuPlan``; ``--no-pin`` turns this off).  Each server is warmed up first;
then rounds alternate the order of the servers (A B, B A, A B, ...) and the
report gives per-run rows, medians and the ratios vpnaaa / FreeRADIUS.

Run from the repository root with the venv python::

    .venv/bin/python bench/radius_pap.py [--requests N] [--rounds R] [--profile]

``--profile`` runs vpnaaa with twistd's cProfile support and prints the top
functions by tottime of ``reactor.run()`` (warm-up included) at the end.

Any radclient failure (non-zero exit, a reject, a lost packet, a count that
does not add up) aborts the benchmark with a non-zero exit status.  Servers
are always stopped (whole process group) and temporary directories removed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pstats
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

# Run as a script (``python bench/radius_pap.py``), the repository root is not on sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.interop.freeradius import (
    LOOPBACK,
    FreeRadiusError,
    command,
    free_udp_ports,
    log_file,
    write_freeradius_config,
    write_private,
)
from tests.interop.load_tester import tail

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = REPO / ".venv" / "bin"

BENCH_USER = "benchuser"
BENCH_PASSWORD = "benchpass"
BENCH_SECRET = "benchsecret"

CLK_TCK = os.sysconf("SC_CLK_TCK")
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0

SERVER_VPNAAA = "vpnaaa"
SERVER_FREERADIUS = "freeradius"
ALL_SERVERS = (SERVER_VPNAAA, SERVER_FREERADIUS)


class BenchError(RuntimeError):
    """The benchmark cannot produce a trustworthy result."""


class RejectedError(BenchError):
    """The server answered with Access-Reject: it is up but misconfigured."""


# --------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------


def require_executable(path: str | Path) -> str:
    """Return ``path`` as a string if it is an executable, else fail loudly."""
    resolved = shutil.which(str(path))
    if resolved is None:
        raise BenchError(f"required executable not found: {path}")
    return resolved


# --------------------------------------------------------------------------
# CPU accounting from /proc
# --------------------------------------------------------------------------


def read_proc_stat(pid: int) -> tuple[int, int] | None:
    """Return ``(ppid, cpu_ticks)`` for ``pid`` from /proc/PID/stat, or None.

    ``cpu_ticks`` is utime + stime + cutime + cstime: the process's own CPU
    (all threads, including threads that exited) plus that of its children
    it has already reaped, so a worker that exits during a run still counts.
    """
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 2 (comm) is in parentheses and may contain spaces: split after it.
    fields = raw[raw.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); ppid is field 4, utime..cstime are 14..17.
    ppid = int(fields[1])
    utime, stime, cutime, cstime = (int(value) for value in fields[11:15])
    return ppid, utime + stime + cutime + cstime


def process_tree_cpu_seconds(root_pid: int) -> float:
    """Return CPU seconds used so far by ``root_pid`` and all its descendants."""
    stats: dict[int, tuple[int, int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = read_proc_stat(int(entry))
            if stat is not None:
                stats[int(entry)] = stat
    if root_pid not in stats:
        raise BenchError(f"server process {root_pid} has disappeared")
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    total_ticks, pending = 0, [root_pid]
    while pending:
        pid = pending.pop()
        total_ticks += stats[pid][1]
        pending.extend(children.get(pid, []))
    return total_ticks / CLK_TCK


def children_cpu_seconds() -> float:
    """Return user+system CPU seconds of this harness's reaped children."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# --------------------------------------------------------------------------
# Server processes
# --------------------------------------------------------------------------


@dataclass
class Server:
    """A running server under test: its process, port and log file.

    The process leads its own process group (see ``spawn``).  It is only
    reaped in ``stop``, after the group has been killed, so its pid (which
    is also the group id) cannot be reused while we still signal it.
    """

    name: str
    label: str
    port: int
    process: subprocess.Popen
    log_path: Path
    profile_path: Path | None = None
    stopped: bool = False

    def exit_status(self) -> str | None:
        """Describe how the server ended if it has exited (without reaping it)."""
        info = os.waitid(os.P_PID, self.process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        if info is None:
            return None
        if info.si_code == os.CLD_EXITED:
            return f"exited with status {info.si_status}"
        return f"was killed by signal {info.si_status}"

    def check_alive(self) -> None:
        """Fail loudly (with the log tail) if the server process has exited."""
        status = self.exit_status()
        if status is not None:
            raise BenchError(f"{self.label} {status}; log tail:\n{tail(self.log_path)}")

    def cpu_seconds(self) -> float:
        """Return the CPU seconds used so far by the server process tree."""
        self.check_alive()
        return process_tree_cpu_seconds(self.process.pid)

    def stop(self) -> None:
        """Stop the whole process group: SIGTERM, then SIGKILL; reap. Idempotent."""
        if self.stopped:
            return
        self.stopped = True
        signal_group(self.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while self.exit_status() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.exit_status() is None:
            print(f"warning: {self.label} ignored SIGTERM, killing it", file=sys.stderr)
        # Kill anything left in the group (e.g. forked workers), then reap.
        signal_group(self.process.pid, signal.SIGKILL)
        self.process.wait()


def signal_group(pgid: int, signum: int) -> None:
    """Send ``signum`` to process group ``pgid`` if it still exists."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def pin_to(cpus: frozenset[int] | None) -> Callable[[], None] | None:
    """A ``preexec_fn`` that pins the child (and all its threads) to ``cpus``."""
    if not cpus:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


def spawn(command: list[str], log_path: Path, cpus: frozenset[int] | None) -> subprocess.Popen:
    """Start ``command`` in its own session (own process group), logging to a file."""
    with log_path.open("wb") as log:
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=REPO,
            preexec_fn=pin_to(cpus),
        )


@dataclass(frozen=True)
class CpuPlan:
    """Which CPUs the servers and radclient may run on (None: anywhere).

    radclient busy-polls a whole core however fast the server answers.
    Left to the scheduler, FreeRADIUS's threads then share radclient's core
    and its figures swing by a factor of three from run to run; pinned,
    they vary by about 10%.  So by default radclient gets the last CPU and
    the servers all the others.
    """

    server: frozenset[int] | None
    client: frozenset[int] | None

    @classmethod
    def choose(cls, pin: bool) -> CpuPlan:
        """Split the CPUs this process may use, if ``pin`` and there are two or more."""
        available = sorted(os.sched_getaffinity(0))
        if not pin or len(available) < 2:
            return cls(None, None)
        return cls(frozenset(available[:-1]), frozenset(available[-1:]))

    def describe(self) -> str:
        """One line for the report header."""
        if self.server is None or self.client is None:
            return "no CPU pinning"
        return (
            f"servers pinned to CPU {format_cpus(self.server)}, "
            f"radclient to CPU {format_cpus(self.client)}"
        )


def format_cpus(cpus: frozenset[int]) -> str:
    """Render a CPU set like ``0,1``."""
    return ",".join(str(cpu) for cpu in sorted(cpus))


# --------------------------------------------------------------------------
# radclient: request file, readiness probe and load runs
# --------------------------------------------------------------------------


@dataclass
class LoadResult:
    """Outcome of one radclient run."""

    requests: int
    wall_seconds: float
    client_cpu_seconds: float
    summary: dict[str, int] = field(default_factory=dict)


REQUEST_TEXT = (
    f'User-Name = "{BENCH_USER}"\n'
    f'User-Password = "{BENCH_PASSWORD}"\n'
    f"NAS-IP-Address = {LOOPBACK}\n"
    "NAS-Port = 0\n"
    # radclient replaces this placeholder with the real HMAC-MD5 per packet.
    "Message-Authenticator = 0x00\n"
)


@dataclass(frozen=True)
class RequestFile:
    """A radclient request file holding ``copies`` identical Access-Requests.

    radclient's ``-c N`` resends each request of the file N times, but one
    request is never in flight twice: with a single request in the file the
    load is strictly sequential whatever ``-p`` says.  The file therefore
    holds as many copies as requests should be in flight (``-p``).  Every
    send still gets a fresh ID and Request Authenticator, so servers see
    no duplicates.
    """

    path: Path
    copies: int

    @classmethod
    def write(cls, path: Path, copies: int) -> RequestFile:
        """Write ``copies`` copies of the bench request to ``path``."""
        path.write_text("\n".join([REQUEST_TEXT] * copies))
        return cls(path, copies)

    def repeats_for(self, requests: int) -> int:
        """The ``-c`` value that sends at least ``requests`` requests."""
        return -(-requests // self.copies)


def radclient_command(
    request_file: RequestFile, port: int, repeats: int, parallel: int, timeout_s: float
) -> list[str]:
    """Build the radclient command: each request of the file ``repeats`` times.

    ``-r 1`` means no retransmissions: a lost packet shows up as "Lost"
    (and fails the run) instead of silently adding a timeout to the time.
    """
    return [
        "radclient",
        "-q",
        "-s",
        "-r", "1",
        "-t", str(timeout_s),
        "-p", str(parallel),
        "-c", str(repeats),
        "-f", str(request_file.path),
        f"{LOOPBACK}:{port}",
        "auth",
        BENCH_SECRET,
    ]  # fmt: skip


SUMMARY_RE = re.compile(
    r"^\s*(Accepted|Rejected|Lost|Passed filter|Failed filter)\s*:\s*(\d+)", re.M
)


def parse_summary(output: str) -> dict[str, int]:
    """Parse radclient's ``-s`` "Packet summary" block into a dict."""
    return {name: int(value) for name, value in SUMMARY_RE.findall(output)}


@dataclass(frozen=True)
class Radclient:
    """The load generator: radclient with ``parallel`` requests in flight."""

    parallel: int
    cpus: frozenset[int] | None = None
    timeout_s: float = 5.0

    def run(self, request_file: RequestFile, port: int, requests: int) -> LoadResult:
        """Send at least ``requests`` Access-Requests; verify all were accepted.

        The count is rounded up to a multiple of the file's copies.  Raises
        BenchError on a non-zero exit, any reject or loss, or an accepted
        count different from the number sent.
        """
        repeats = request_file.repeats_for(requests)
        count = repeats * request_file.copies
        command = radclient_command(request_file, port, repeats, self.parallel, self.timeout_s)
        cpu_before = children_cpu_seconds()
        start = time.perf_counter()
        completed = subprocess.run(
            command, capture_output=True, text=True, check=False, preexec_fn=pin_to(self.cpus)
        )
        wall = time.perf_counter() - start
        client_cpu = children_cpu_seconds() - cpu_before
        output = completed.stdout + completed.stderr
        check_radclient(command, completed.returncode, output, count)
        return LoadResult(count, wall, client_cpu, parse_summary(output))


def check_radclient(command: list[str], returncode: int, output: str, count: int) -> None:
    """Raise BenchError unless radclient exited 0 with exactly ``count`` accepts."""
    summary = parse_summary(output)
    expected = {"Accepted": count, "Rejected": 0, "Lost": 0}
    problems = [
        f"{key}={summary.get(key)} (want {want})"
        for key, want in expected.items()
        if summary.get(key) != want
    ]
    if returncode != 0 or problems:
        error = RejectedError if summary.get("Rejected") else BenchError
        raise error(
            f"radclient failed: exit status {returncode}; "
            f"{'; '.join(problems) or 'summary ok'}\n"
            f"command: {' '.join(command)}\noutput:\n{output.strip()[-2000:]}"
        )


def wait_until_ready(server: Server, probe: RequestFile, cpus: frozenset[int] | None) -> None:
    """Poll the server with single Access-Requests until one is accepted."""
    radclient = Radclient(parallel=1, cpus=cpus, timeout_s=0.5)
    deadline = time.monotonic() + READY_TIMEOUT_S
    last_error = ""
    while time.monotonic() < deadline:
        server.check_alive()
        try:
            radclient.run(probe, server.port, requests=1)
            return
        except RejectedError as exc:
            raise BenchError(f"{server.label} rejected the bench user: {exc}") from None
        except BenchError as exc:
            last_error = str(exc)
        time.sleep(0.2)
    raise BenchError(
        f"{server.label} did not accept a request within {READY_TIMEOUT_S:.0f} s.\n"
        f"last radclient error: {last_error}\nserver log tail:\n{tail(server.log_path)}"
    )


# --------------------------------------------------------------------------
# FreeRADIUS: start (its private configuration: tests/interop/freeradius.py)
# --------------------------------------------------------------------------


def start_freeradius(workdir: Path, cpus: frozenset[int] | None) -> Server:
    """Configure and start a private FreeRADIUS 3 in the foreground (``-f``)."""
    binary = require_executable("freeradius")
    raddb = workdir / "raddb"
    (port,) = free_udp_ports(1)
    write_freeradius_config(raddb, port, BENCH_SECRET, {BENCH_USER: BENCH_PASSWORD})
    log_path = workdir / "freeradius.out"
    process = spawn(command(raddb, binary=binary), log_path, cpus)
    # FreeRADIUS writes its own log file; point error reports at it.
    return Server(SERVER_FREERADIUS, "FreeRADIUS", port, process, log_file(raddb))


# --------------------------------------------------------------------------
# vpnaaa: configuration, user and start
# --------------------------------------------------------------------------


def vpnaaa_config_text(state_dir: Path, auth_port: int, acct_port: int) -> str:
    """Render the vpnaaa TOML configuration for the benchmark (RADIUS only, loopback)."""
    return (
        "[daemon]\n"
        "# CPU is what is measured; the bench's files live in a root-only temporary directory\n"
        'user = "root"\n'
        "[general]\n"
        f'state_dir = "{state_dir}"\n'
        'log_level = "warn"\n'
        "\n"
        "[radius]\n"
        f'listen = "{LOOPBACK}"\n'
        f"auth_port = {auth_port}\n"
        f"acct_port = {acct_port}\n"
        "\n"
        "[ike]\n"
        "enabled = false\n"
        "\n"
        "[admin]\n"
        "enabled = false\n"
        "\n"
        "[eap]\n"
        "# radius_eap.py: PEAP first, as FreeRADIUS; EAP-TLS peers Nak to tls\n"
        'methods = ["peap", "mschapv2", "tls"]\n'
        "[eap.tls]\n"
        'client_ca = "pki/ca/ca.pem"\n'
        "resumption = true  # radius_eap.py's tls12-res/tls13-res scenarios\n"
        "\n"
        "[[radius.clients]]\n"
        'name = "bench"\n'
        f'address = "{LOOPBACK}/32"\n'
        f'secret = "{BENCH_SECRET}"\n'
    )


def vpnaaa_cli(config: Path, *args: str, stdin: str | None = None) -> None:
    """Run ``vpnaaa --config CONFIG ARGS...``; fail loudly on a non-zero exit."""
    command = [str(VENV_BIN / "vpnaaa"), "--config", str(config), *args]
    completed = subprocess.run(command, input=stdin, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise BenchError(
            f"'vpnaaa {' '.join(args)}' failed with status {completed.returncode}:\n"
            f"{(completed.stdout + completed.stderr).strip()}"
        )


def prepare_vpnaaa_state(config: Path) -> None:
    """Add the bench user, the server certificate for EAP (PEAP, EAP-TLS) and the user's
    client certificate for EAP-TLS (state_dir/pki/clients/BENCH_USER.pem and .key).

    FreeRADIUS, too, runs with its stock EAP module and certificates loaded.
    """
    vpnaaa_cli(config, "user", "add", BENCH_USER, "--password-stdin", stdin=BENCH_PASSWORD + "\n")
    vpnaaa_cli(config, "pki", "init")
    vpnaaa_cli(config, "pki", "issue", LOOPBACK)
    vpnaaa_cli(config, "pki", "issue-client", BENCH_USER)


def twistd_command(config: Path, profile_path: Path | None) -> list[str]:
    """The foreground twistd command, optionally with twistd's own cProfile support.

    ``python -m cProfile twistd ...`` writes nothing: after a SIGTERM twistd
    ends by re-sending the signal to itself with the default handler, so
    cProfile never gets to dump.  twistd's ``--profile --savestats`` profiles
    ``reactor.run()`` (the serving, not the start-up) and dumps before that.
    """
    twistd = [str(VENV_BIN / "twistd"), "-n", "--pidfile="]
    if profile_path is not None:
        twistd += [f"--profile={profile_path}", "--profiler=cprofile", "--savestats"]
    return [*twistd, "vpnaaa", "--config", str(config)]


def start_vpnaaa(workdir: Path, profile: bool, cpus: frozenset[int] | None) -> Server:
    """Write a config, prepare the state directory and start vpnaaa under twistd."""
    for tool in ("vpnaaa", "twistd"):
        require_executable(VENV_BIN / tool)
    state_dir = workdir / "state"
    state_dir.mkdir()
    auth_port, acct_port = free_udp_ports(2)
    config = workdir / "vpnaaa.toml"
    write_private(config, vpnaaa_config_text(state_dir, auth_port, acct_port))
    prepare_vpnaaa_state(config)
    profile_path = workdir / "vpnaaa.prof" if profile else None
    log_path = workdir / "vpnaaa.out"
    process = spawn(twistd_command(config, profile_path), log_path, cpus)
    return Server(SERVER_VPNAAA, "vpnaaa", auth_port, process, log_path, profile_path)


# --------------------------------------------------------------------------
# Measurement and report
# --------------------------------------------------------------------------


@dataclass
class Sample:
    """One measured load run against one server."""

    round_no: int
    server: str
    requests: int
    wall_seconds: float
    server_cpu_seconds: float
    client_cpu_seconds: float

    def figures(self) -> Figures:
        """The figures reported for this run."""
        return Figures(
            requests=self.requests,
            seconds=self.wall_seconds,
            rate=self.requests / self.wall_seconds,
            server_us_per_request=self.server_cpu_seconds * 1e6 / self.requests,
            server_cores=self.server_cpu_seconds / self.wall_seconds,
            client_cores=self.client_cpu_seconds / self.wall_seconds,
        )


@dataclass(frozen=True)
class Figures:
    """Reported figures of a run, or medians over runs (field by field).

    ``server_cores`` / ``client_cores`` are CPU seconds per wall second:
    1.00 means one core fully busy.  radclient busy-polls, so its figure is
    about 1.00 whatever the rate; a single-process server near 1.00 is the
    bottleneck, one well below 1.00 is waiting for the client.
    """

    requests: int
    seconds: float
    rate: float
    server_us_per_request: float
    server_cores: float
    client_cores: float

    @classmethod
    def median(cls, runs: list[Figures]) -> Figures:
        """Field-by-field medians of ``runs``."""
        return cls(
            **{
                name: statistics.median(getattr(run, name) for run in runs)
                for name in cls.__dataclass_fields__
            }
        )


def load_server(
    server: Server, radclient: Radclient, request_file: RequestFile, requests: int
) -> LoadResult:
    """Run ``radclient`` against ``server``; on failure say which server and if it died."""
    try:
        return radclient.run(request_file, server.port, requests)
    except BenchError as exc:
        server.check_alive()
        raise BenchError(f"{server.label}: {exc}") from None


def measure(
    server: Server, radclient: Radclient, request_file: RequestFile, round_no: int, requests: int
) -> Sample:
    """Run one load against ``server`` and return its sample."""
    cpu_before = server.cpu_seconds()
    load = load_server(server, radclient, request_file, requests)
    cpu_after = server.cpu_seconds()
    return Sample(
        round_no,
        server.name,
        load.requests,
        load.wall_seconds,
        cpu_after - cpu_before,
        load.client_cpu_seconds,
    )


def round_order(servers: list[Server], round_no: int) -> list[Server]:
    """Alternate which server goes first: A B, B A, A B, ..."""
    return servers if round_no % 2 == 1 else list(reversed(servers))


WARMUP_CHUNK = 10000


def warm_up(
    server: Server, radclient: Radclient, request_file: RequestFile, seconds: float
) -> None:
    """Load ``server`` for at least ``seconds`` (and one chunk) before measuring.

    A short burst is not enough: after a 0.15 s warm-up, FreeRADIUS's first
    measured run was repeatedly 40% slower than the later ones.
    """
    deadline = time.monotonic() + seconds
    load_server(server, radclient, request_file, WARMUP_CHUNK)
    while time.monotonic() < deadline:
        load_server(server, radclient, request_file, WARMUP_CHUNK)


def run_rounds(
    servers: list[Server], radclient: Radclient, request_file: RequestFile, args: argparse.Namespace
) -> list[Sample]:
    """Warm every server up, then run the alternating measured rounds."""
    for server in servers:
        warm_up(server, radclient, request_file, args.warmup)
    samples = []
    for round_no in range(1, args.rounds + 1):
        for server in round_order(servers, round_no):
            sample = measure(server, radclient, request_file, round_no, args.requests)
            print_row(str(round_no), server.label, sample.figures())
            samples.append(sample)
    return samples


TABLE_HEADER = (
    f"{'round':>6}  {'server':<11} {'requests':>9} {'seconds':>8} {'req/s':>9} "
    f"{'server µs/req':>14} {'server cores':>13} {'radclient cores':>16}"
)


def print_row(round_label: str, label: str, figures: Figures) -> None:
    """Print one table row."""
    print(
        f"{round_label:>6}  {label:<11} {figures.requests:>9.0f} {figures.seconds:>8.3f} "
        f"{figures.rate:>9,.0f} {figures.server_us_per_request:>14.1f} "
        f"{figures.server_cores:>13.2f} {figures.client_cores:>16.2f}",
        flush=True,
    )


def median_figures(samples: list[Sample], server: str) -> Figures:
    """Medians over all measured runs of ``server``."""
    return Figures.median([sample.figures() for sample in samples if sample.server == server])


# radclient busy-polls: below this share of a core, something else ran on its CPU.
DISTURBED_CLIENT_CORES = 0.95


def print_summary(servers: list[Server], samples: list[Sample]) -> None:
    """Print median rows, a disturbance warning and the vpnaaa/FreeRADIUS ratios."""
    medians = {server.name: median_figures(samples, server.name) for server in servers}
    for server in servers:
        print_row("median", server.label, medians[server.name])
    print()
    disturbed = [s for s in samples if s.figures().client_cores < DISTURBED_CLIENT_CORES]
    if disturbed:
        print(
            f"warning: in {len(disturbed)} of {len(samples)} runs radclient got less than "
            f"{DISTURBED_CLIENT_CORES:.2f} of a core (something else ran on its CPU): "
            "trust CPU/request more than req/s"
        )
    if len(medians) < 2:
        return
    ours, ref = medians[SERVER_VPNAAA], medians[SERVER_FREERADIUS]
    print(
        f"throughput    vpnaaa/FreeRADIUS = {ours.rate / ref.rate:.2f}x  "
        f"({ours.rate:,.0f} vs {ref.rate:,.0f} req/s, medians)"
    )
    print(
        f"CPU/request   vpnaaa/FreeRADIUS = "
        f"{ours.server_us_per_request / ref.server_us_per_request:.2f}x  "
        f"({ours.server_us_per_request:.1f} vs {ref.server_us_per_request:.1f} µs/req, medians)"
    )


def print_profile(profile_path: Path, top: int) -> None:
    """Print the ``top`` functions by tottime from a cProfile dump."""
    if not profile_path.exists():
        print(f"warning: no profile written at {profile_path}", file=sys.stderr)
        return
    print(f"\n--- vpnaaa cProfile of reactor.run(): top {top} by tottime (main process) ---")
    pstats.Stats(str(profile_path), stream=sys.stdout).sort_stats("tottime").print_stats(top)


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--requests", type=int, default=64000, help="requests per measured run (default 64000)")
    add("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    add("--warmup", type=float, default=3.0, help="warm-up seconds per server (default 3)")
    add("--parallel", type=int, default=64, help="radclient -p: requests in flight (default 64)")
    add(
        "--servers",
        default=",".join(ALL_SERVERS),
        help="comma-separated subset of: vpnaaa,freeradius (default both)",
    )
    add("--no-pin", action="store_true", help="do not pin radclient and servers to CPUs")
    add("--profile", action="store_true", help="run vpnaaa under cProfile, print top functions")
    add("--profile-top", type=int, default=25, help="functions shown by --profile (default 25)")
    add("--profile-out", type=Path, default=None, help="also keep the cProfile dump here")
    args = parser.parse_args(argv)
    args.servers = [name.strip() for name in args.servers.split(",") if name.strip()]
    unknown = sorted(set(args.servers) - set(ALL_SERVERS))
    if unknown or not args.servers:
        parser.error(f"--servers: unknown or empty: {unknown}")
    for name in ("requests", "rounds", "parallel"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.warmup < 0:
        parser.error("--warmup must not be negative")
    return args


def start_servers(
    args: argparse.Namespace,
    cpus: frozenset[int] | None,
    workdir: Path,
    stack: contextlib.ExitStack,
) -> list[Server]:
    """Start the selected servers (vpnaaa first); register their shutdown."""
    servers = []
    for name in ALL_SERVERS:
        if name not in args.servers:
            continue
        subdir = workdir / name
        subdir.mkdir()
        if name == SERVER_VPNAAA:
            server = start_vpnaaa(subdir, args.profile, cpus)
        else:
            server = start_freeradius(subdir, cpus)
        stack.callback(server.stop)
        servers.append(server)
    return servers


def run_notes(args: argparse.Namespace, plan: CpuPlan) -> list[str]:
    """Caveats about this run's setup, printed above the table."""
    notes = []
    if args.profile:
        notes.append("vpnaaa runs under cProfile: its figures are inflated")
    return notes


def run_benchmark(args: argparse.Namespace) -> None:
    """Start servers, measure, report; always stop servers and clean up."""
    require_executable("radclient")
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="vpnaaa-bench-")))
        plan = CpuPlan.choose(pin=not args.no_pin)
        probe = RequestFile.write(workdir / "probe.txt", copies=1)
        stream = RequestFile.write(workdir / "stream.txt", copies=args.parallel)
        radclient = Radclient(parallel=args.parallel, cpus=plan.client)
        servers = start_servers(args, plan.server, workdir, stack)
        for server in servers:
            wait_until_ready(server, probe, plan.client)
        print(
            "PAP Access-Request + Message-Authenticator -> Access-Accept; "
            f"radclient -p {args.parallel} -c {stream.repeats_for(args.requests)} "
            f"with {stream.copies} requests in the file; {args.rounds} rounds; "
            f"{plan.describe()}"
        )
        for note in run_notes(args, plan):
            print(f"note: {note}")
        print(TABLE_HEADER)
        samples = run_rounds(servers, radclient, stream, args)
        print_summary(servers, samples)
        vpnaaa = next((s for s in servers if s.name == SERVER_VPNAAA), None)
        if vpnaaa is not None and vpnaaa.profile_path is not None:
            vpnaaa.stop()  # cProfile writes its dump when the process exits
            if args.profile_out is not None:
                shutil.copyfile(vpnaaa.profile_path, args.profile_out)
            print_profile(vpnaaa.profile_path, args.profile_top)


def raise_on_sigterm(signum: int, frame: object) -> None:
    """Turn SIGTERM into SystemExit so the cleanup in ``finally`` runs."""
    raise SystemExit(128 + signum)


def run_main(
    parse: Callable[[list[str] | None], argparse.Namespace],
    run: Callable[[argparse.Namespace], object],
    argv: list[str] | None = None,
) -> int:
    """A bench's entry point: parse, run with SIGTERM turned into an exception (so the
    servers are stopped), one BENCH FAILED line and status 1 on failure."""
    args = parse(argv)
    signal.signal(signal.SIGTERM, raise_on_sigterm)
    try:
        run(args)
    except (BenchError, FreeRadiusError) as exc:
        print(f"\nBENCH FAILED: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: returns the process exit status."""
    return run_main(parse_args, run_benchmark, argv)


if __name__ == "__main__":
    sys.exit(main())
