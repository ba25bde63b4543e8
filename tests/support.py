"""Shared test fixtures: a state directory, a configuration, a running daemon."""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile
from pathlib import Path

from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from vpnaaa import config as configuration
from vpnaaa import pki
from vpnaaa.service import VpnaaaService, make_service
from vpnaaa.users import User, UserStore, write_users

SECRET = "testing123-secret"


def state_dir(case: unittest.TestCase) -> Path:
    """A fresh private directory removed after the test."""
    path = Path(tempfile.mkdtemp(prefix="vpnaaa-test-"))
    os.chmod(path, 0o700)
    case.addCleanup(shutil.rmtree, path, True)
    return path


def write_config(path: Path, text: str) -> Path:
    """A configuration file with mode 0600, as one holding secrets must have."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


@functools.cache
def test_pki() -> tuple[pki.CaFiles, pki.ServerFiles]:
    """A CA and a server certificate for radius.example.test, made once per test run."""
    directory = Path(tempfile.mkdtemp(prefix="vpnaaa-test-pki-"))
    atexit.register(shutil.rmtree, directory, True)
    ca = pki.init_ca(directory / "ca")
    server = pki.issue_server(directory / "ca", directory / "server", "radius.example.test")
    return ca, server


def radius_config(state: Path, clients: str | None = None, extra: str = "") -> Path:
    """A RADIUS + EAP configuration on 127.0.0.1 with free ports (0 = let the kernel pick),
    the PEAP server identity from :func:`test_pki`."""
    _, server = test_pki()
    if clients is None:
        clients = (
            f'[[radius.clients]]\nname = "loopback"\naddress = "127.0.0.1"\nsecret = "{SECRET}"\n'
        )
    text = (
        f'[general]\nstate_dir = "{state}"\nlog_level = "debug"\n\n'
        "[ike]\nenabled = false\n\n[admin]\nenabled = false\n\n"
        f'[eap.tls]\ncertificate = "{server.cert}"\nkey = "{server.key}"\n'
        f'chain = "{server.chain}"\n\n'
        f'[radius]\nlisten = "127.0.0.1"\nauth_port = 0\nacct_port = 0\n{extra}\n\n{clients}'
    )
    return write_config(state / "vpnaaa.toml", text)


def directory(**users: User) -> UserStore:
    """A user store serving ``users`` from memory (no file, no lockout)."""
    store = UserStore(Path("/nonexistent/users.json"))
    store.use(users)
    return store


def add_users(state: Path, users: dict[str, User]) -> None:
    write_users(state / "users.json", users)


def start_daemon(case: unittest.TestCase, config_path: Path) -> VpnaaaService:
    """Start the daemon's services in the test's reactor; stopped at cleanup."""
    daemon = make_service(configuration.load(config_path))
    daemon.startService()
    case.addCleanup(daemon.stopService)
    return daemon


def ports(daemon: VpnaaaService) -> tuple[int, int]:
    """The (authentication, accounting) UDP ports the daemon listens on."""
    assert daemon.radius is not None
    auth, acct = daemon.radius.ports
    return auth.getHost().port, acct.getHost().port


@functools.cache
def ecdsa_pki() -> tuple[pki.CaFiles, pki.ServerFiles]:
    """A CA and an ECDSA P-256 server certificate for vpn.example.test (cheap signatures:
    the IKE tests sign one AUTH per handshake), made once per test run."""
    directory = Path(tempfile.mkdtemp(prefix="vpnaaa-test-pki-ecdsa-"))
    atexit.register(shutil.rmtree, directory, True)
    ca = pki.init_ca(directory / "ca", key_type="ecdsa-p256")
    server = pki.issue_server(
        directory / "ca", directory / "server", "vpn.example.test", key_type="ecdsa-p256"
    )
    return ca, server


def log_lines(case: unittest.TestCase) -> list[str]:
    """Every log line emitted during ``case``, formatted, in order (the list fills as
    the test runs; the observer goes at cleanup)."""
    lines: list[str] = []

    def observe(event: dict) -> None:
        lines.append(formatEvent(event) or "")

    globalLogPublisher.addObserver(observe)
    case.addCleanup(globalLogPublisher.removeObserver, observe)
    return lines
