"""A private FreeRADIUS 3 for the tests and the benchmarks, on 127.0.0.1 only.

FreeRADIUS runs from a copy of Debian's /etc/freeradius/3.0 made in a directory of our own
(:func:`write_freeradius_config`): the stock modules and virtual servers, every ``listen``
section removed from the enabled sites and a single auth listener on 127.0.0.1:PORT added to
``default``, proxying off (so no proxy socket on the wildcard address either), one client
(127.0.0.1, Message-Authenticator required) and the given users with a Cleartext-Password in
``mods-config/files/authorize``, which serves PAP, MS-CHAP and EAP-MSCHAPv2 alike. The copy
runs as whoever starts it (``user``/``group`` are commented out) and keeps its pid file and
logs inside the directory. Options: the eap module's ``default_eap_type``,
``security.reject_delay`` (1 s in Debian: every Access-Reject waits) and auth logging
("Login OK" / "Login incorrect" lines).

Two ways to run it:

* The benchmarks write the configuration and start :func:`command` themselves (with
  ``subprocess``, CPU pinning and process groups of their own).
* Trial tests use :class:`FreeRadius` / :func:`start_freeradius`: a child process of the
  reactor, logging to its stdout (kept in memory), ready once it answered a Status-Server
  (RFC 5997) from ``radclient``, which also runs as a child process of the reactor; stopped
  (SIGTERM, then SIGKILL) at the test's cleanup. Every wait is a Deferred.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import socket
from collections.abc import Generator, Mapping, Sequence
from pathlib import Path
from typing import Any

from twisted.internet import defer, error, task
from twisted.internet.utils import getProcessOutputAndValue

from tests.interop.charon import ChildProcess

FREERADIUS_CONF = Path("/etc/freeradius/3.0")
LOOPBACK = "127.0.0.1"
PATH = os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
FREERADIUS = shutil.which("freeradius", path=f"{PATH}:/usr/sbin") or "/usr/sbin/freeradius"
RADCLIENT = shutil.which("radclient", path=f"{PATH}:/usr/bin") or "/usr/bin/radclient"
SETPRIV = shutil.which("setpriv", path=f"{PATH}:/usr/bin")

READY_TIMEOUT = 30.0  # seconds for a started FreeRADIUS to answer a Status-Server
STOP_TIMEOUT = 5.0  # seconds between SIGTERM and SIGKILL
POLL = 0.1
START_ATTEMPTS = 3  # a free port may be taken before FreeRADIUS binds it: try another


class FreeRadiusError(RuntimeError):
    """The private FreeRADIUS cannot be configured or did not come up."""


# --------------------------------------------------------------------------------------------
# Small helpers


def free_udp_ports(count: int) -> list[int]:
    """Return ``count`` distinct UDP ports on 127.0.0.1 that are free now.

    All sockets are held open until every port is chosen, so the ports are distinct; they
    are closed before returning (a small race is accepted).
    """
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((LOOPBACK, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with mode 0600 (the file holds a secret)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def unavailable() -> str | None:
    """Why a private FreeRADIUS cannot run here, or None."""
    if not os.path.exists(FREERADIUS) or not os.path.exists(RADCLIENT):
        return "FreeRADIUS not found (install freeradius freeradius-utils)"
    if not (FREERADIUS_CONF / "radiusd.conf").exists():
        return f"no FreeRADIUS configuration in {FREERADIUS_CONF} to copy"
    return None


# --------------------------------------------------------------------------------------------
# Rewriting the copied configuration


def set_option(text: str, pattern: str, value: str, where: str = "radiusd.conf") -> str:
    """Set the uncommented ``NAME = ...`` line matching ``pattern`` (a regular expression
    for the line up to the name, indentation included); exactly one must exist."""
    regex = re.compile(rf"^({pattern})\s*=.*$", re.M)
    new_text, count = regex.subn(lambda match: f"{match.group(1)} = {value}", text)
    if count != 1:
        raise FreeRadiusError(f"{where}: expected one '{pattern} =' line, found {count}")
    return new_text


def set_config_line(text: str, key: str, value: str) -> str:
    """Replace the top-level ``key = ...`` line of radiusd.conf; exactly one must exist."""
    return set_option(text, re.escape(key), value)


def drop_user_and_group(text: str) -> str:
    """Comment out ``user =`` / ``group =``: the copy runs as whoever starts it."""
    pattern = re.compile(r"^(\s*)(user|group)\s*=", re.M)
    new_text, count = pattern.subn(r"\1# \2 =", text)
    if count != 2:
        raise FreeRadiusError(f"radiusd.conf: expected user and group lines, found {count}")
    return new_text


def strip_listen_blocks(text: str) -> str:
    """Remove every uncommented ``listen { ... }`` block from a site file."""
    out: list[str] = []
    depth = 0
    for line in text.splitlines(keepends=True):
        code = line.split("#", 1)[0]
        if depth == 0 and re.match(r"\s*listen\s*\{", code):
            depth = code.count("{") - code.count("}")
            continue
        if depth > 0:
            depth += code.count("{") - code.count("}")
            continue
        out.append(line)
    if depth != 0:
        raise FreeRadiusError("unbalanced braces while removing listen blocks")
    return "".join(out)


def listen_block(port: int) -> str:
    """The single auth listener of the private FreeRADIUS instance (127.0.0.1 only)."""
    return f"listen {{\n\ttype = auth\n\tipaddr = {LOOPBACK}\n\tport = {port}\n}}\n"


def rewrite_sites(raddb: Path, port: int) -> None:
    """Drop all listeners from enabled sites; add one auth listener to ``default``.

    Enabled sites are symlinks into sites-available: each is replaced by a plain file so the
    copy is self-contained.
    """
    inserted = False
    for site in sorted((raddb / "sites-enabled").iterdir()):
        text = strip_listen_blocks(site.read_text())
        if site.name == "default":
            text, count = re.subn(
                r"^server default\s*\{\n",
                lambda m: m.group(0) + listen_block(port),
                text,
                flags=re.M,
            )
            inserted = count == 1
        site.unlink()
        site.write_text(text)
    if not inserted:
        raise FreeRadiusError("sites-enabled/default has no 'server default {' line")


def edit_module(raddb: Path, name: str, options: Mapping[str, str]) -> None:
    """Set options of the enabled module ``name`` (see :func:`set_option` for the keys).

    mods-enabled/NAME is a symlink: it is replaced by a plain file so that nothing outside
    the copy can be written.
    """
    module = raddb / "mods-enabled" / name
    text = module.read_text()
    for pattern, value in options.items():
        text = set_option(text, pattern, value, f"FreeRADIUS {name} module")
    module.unlink()
    module.write_text(text)


# The eap section's own default (one tab deep), not those of its ttls or peap subsections.
EAP_DEFAULT_TYPE = r"\tdefault_eap_type"


def _quoted(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def clients_text(secret: str) -> str:
    """clients.conf: 127.0.0.1 only, Message-Authenticator required."""
    return (
        "client loopback {\n"
        f"\tipaddr = {LOOPBACK}\n"
        f"\tsecret = {_quoted(secret)}\n"
        "\trequire_message_authenticator = yes\n"
        "}\n"
    )


def users_text(users: Mapping[str, str], replies: Mapping[str, Sequence[str]] = {}) -> str:
    """The users file: a Cleartext-Password per user (PAP, MS-CHAP, EAP-MSCHAPv2), and the
    reply items (``Session-Timeout = 30``) its Access-Accept carries."""
    return "".join(
        f"{_quoted(name)}\tCleartext-Password := {_quoted(password)}\n"
        + ",\n".join(f"\t{item}" for item in replies.get(name, ()))
        + ("\n" if replies.get(name) else "")
        for name, password in users.items()
    )


def write_freeradius_config(
    raddb: Path,
    port: int,
    secret: str,
    users: Mapping[str, str],
    *,
    default_eap_type: str | None = None,
    reject_delay: float | None = None,
    auth_log: bool = False,
    replies: Mapping[str, Sequence[str]] = {},
) -> None:
    """Create a private FreeRADIUS configuration in ``raddb`` listening on 127.0.0.1:``port``.

    ``default_eap_type``: what the eap module proposes after the identity (Debian: md5).
    ``reject_delay``: seconds every Access-Reject is held back (Debian: 1). ``auth_log``:
    log a line per authentication ("Login OK", "Login incorrect").
    """
    shutil.copytree(FREERADIUS_CONF, raddb, symlinks=True)
    for sub in ("log", "run"):
        (raddb / sub).mkdir()
    conf_path = raddb / "radiusd.conf"
    text = conf_path.read_text()
    text = set_config_line(text, "raddbdir", str(raddb))
    text = set_config_line(text, "logdir", str(raddb / "log"))
    text = set_config_line(text, "run_dir", str(raddb / "run"))
    # No proxying: FreeRADIUS would otherwise open a proxy socket on 0.0.0.0.
    text = set_config_line(text, "proxy_requests", "no")
    if reject_delay is not None:
        text = set_option(text, r"\treject_delay", f"{reject_delay:g}")
    if auth_log:
        text = set_option(text, r"\tauth", "yes")
    conf_path.write_text(drop_user_and_group(text))
    rewrite_sites(raddb, port)
    write_private(raddb / "clients.conf", clients_text(secret))
    write_private(raddb / "mods-config" / "files" / "authorize", users_text(users, replies))
    if default_eap_type is not None:
        edit_module(raddb, "eap", {EAP_DEFAULT_TYPE: default_eap_type})


def log_file(raddb: Path) -> Path:
    """Where the copy logs unless started with ``-l stdout``."""
    return raddb / "log" / "radius.log"


def command(raddb: Path, *options: str, binary: str = FREERADIUS) -> list[str]:
    """FreeRADIUS in the foreground (``-f``) on the copy in ``raddb``, plus ``options``."""
    return [binary, "-f", *options, "-d", str(raddb)]


# --------------------------------------------------------------------------------------------
# A child process of the reactor, for trial


def sleep(seconds: float) -> defer.Deferred[None]:
    from twisted.internet import reactor

    return task.deferLater(reactor, seconds, lambda: None)


class FreeRadius:
    """A private FreeRADIUS in ``directory`` (created), a child process of the reactor.

    ``port`` 0 picks a free port of 127.0.0.1 (another one if it is taken before FreeRADIUS
    binds it). The process logs to its stdout (``-l stdout``), kept in :attr:`output`; with
    ``setpriv`` available it gets SIGKILL should this process die without stopping it.
    """

    def __init__(
        self,
        directory: Path,
        secret: str,
        users: Mapping[str, str],
        *,
        port: int = 0,
        default_eap_type: str | None = None,
        reject_delay: float | None = 0,
        auth_log: bool = True,
        options: Sequence[str] = (),
        replies: Mapping[str, Sequence[str]] = {},
    ) -> None:
        self.directory = Path(directory)
        self.replies = dict(replies)  # reply items per user (users_text)
        self.secret = secret
        self.users = dict(users)
        self.port = port
        self.default_eap_type = default_eap_type
        self.reject_delay = reject_delay
        self.auth_log = auth_log
        self.options = list(options)  # more command-line options, e.g. ["-xx"]
        self.raddb = self.directory / "raddb"
        self._process: ChildProcess | None = None
        self._transport: Any = None
        self._requests = itertools.count(1)

    @property
    def pid(self) -> int | None:
        return self._transport.pid if self._transport is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and not self._process.ended.called

    def log_text(self) -> str:
        """Everything FreeRADIUS printed so far."""
        return self._process.output.decode(errors="replace") if self._process else ""

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def _write_config(self, port: int) -> None:
        if self.raddb.exists():
            shutil.rmtree(self.raddb)
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        write_freeradius_config(
            self.raddb,
            port,
            self.secret,
            self.users,
            default_eap_type=self.default_eap_type,
            reject_delay=self.reject_delay,
            auth_log=self.auth_log,
            replies=self.replies,
        )

    def _spawn(self) -> None:
        from twisted.internet import reactor

        argv = command(self.raddb, "-l", "stdout", *self.options)
        if SETPRIV is not None:
            # setpriv execs in place: the spawned pid is FreeRADIUS's.
            argv = [SETPRIV, "--pdeathsig", "KILL", "--", *argv]
        self._process = ChildProcess()
        env = {"PATH": PATH, "LC_ALL": "C"}
        self._transport = reactor.spawnProcess(self._process, argv[0], argv, env=env)

    @defer.inlineCallbacks
    def start(self) -> Generator[defer.Deferred[Any], Any, FreeRadius]:
        """Configure, start, and wait until FreeRADIUS answers a Status-Server."""
        for attempt in range(START_ATTEMPTS):
            port = self.port or free_udp_ports(1)[0]
            self._write_config(port)
            self._spawn()
            assert self._process is not None
            ready = yield self._wait_ready(port)
            if ready:
                self.port = port
                return self
            output = self.log_text()
            if self.port or "in use" not in output or attempt + 1 == START_ATTEMPTS:
                raise FreeRadiusError(
                    f"FreeRADIUS exited with {self._process.exit_code}:\n{self.tail()}"
                )
        raise AssertionError("unreachable")

    @defer.inlineCallbacks
    def _wait_ready(self, port: int) -> Generator[defer.Deferred[Any], Any, bool]:
        """True once a Status-Server was answered; False if the process ended first."""
        from twisted.internet import reactor

        assert self._process is not None
        deadline = reactor.seconds() + READY_TIMEOUT
        last = ""
        while reactor.seconds() < deadline:
            if self._process.ended.called:
                return False
            last, code = yield self.radclient("status", "", port=port, timeout=0.5)
            if code == 0:
                return True
            yield sleep(POLL)
        yield self.stop()
        raise FreeRadiusError(
            f"FreeRADIUS answered no Status-Server on {LOOPBACK}:{port} within "
            f"{READY_TIMEOUT:g} s; radclient said:\n{last}\nFreeRADIUS log:\n{self.tail()}"
        )

    @defer.inlineCallbacks
    def radclient(
        self,
        code: str,
        attributes: str,
        *,
        port: int | None = None,
        timeout: float = 3.0,
        tries: int = 1,
    ) -> Generator[defer.Deferred[Any], Any, tuple[str, int]]:
        """Send one ``code`` request (``auth``, ``status``) with ``attributes`` (radclient's
        ``Name = value`` lines) and a Message-Authenticator; (radclient -x output, exit)."""
        request = self.directory / f"request-{next(self._requests)}.txt"
        request.write_text(f"{attributes}\nMessage-Authenticator = 0x00\n".lstrip())
        argv = [RADCLIENT, "-x", "-r", str(tries), "-t", f"{timeout:g}", "-f", str(request)]
        argv += [f"{LOOPBACK}:{port or self.port}", code, self.secret]
        out, err, exit_code = yield getProcessOutputAndValue(
            argv[0], argv[1:], env={"PATH": PATH, "LC_ALL": "C"}
        )
        return (out + err).decode("utf-8", "replace"), exit_code

    @defer.inlineCallbacks
    def stop(self) -> Generator[defer.Deferred[Any], Any, int | None]:
        """SIGTERM (SIGKILL after :data:`STOP_TIMEOUT`); the exit status. Idempotent."""
        process = self._process
        if process is None or process.ended.called:
            return process.exit_code if process else None
        for sig in ("TERM", "KILL"):
            try:
                self._transport.signalProcess(sig)
            except error.ProcessExitedAlready:
                break
            for _ in range(int(STOP_TIMEOUT / POLL)):
                if process.ended.called:
                    break
                yield sleep(POLL)
            if process.ended.called:
                break
        return process.exit_code


@defer.inlineCallbacks
def start_freeradius(
    case: Any, directory: Path, secret: str, users: Mapping[str, str], **kwargs: Any
) -> Generator[defer.Deferred[Any], Any, FreeRadius]:
    """A started :class:`FreeRadius`, stopped at ``case``'s cleanup."""
    server = FreeRadius(directory, secret, users, **kwargs)
    case.addCleanup(server.stop)
    yield server.start()
    return server
