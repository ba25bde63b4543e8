"""The admin API: a UNIX socket (mode 0600) by default, TCP only with a bearer token, and
`vpnaaa sessions` (a real CLI process) on either."""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Generator
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, reactor
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial import unittest
from twisted.web import client
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from tests.support import start_daemon, state_dir, write_config
from vpnaaa import config as configuration
from vpnaaa.users import User, write_users

TOKEN = "0123456789abcdef-admin-token"
CLI = str(Path(sys.executable).parent / "vpnaaa")


@implementer(IAgentEndpointFactory)
class UnixEndpoints:
    """HTTP requests of an Agent go to one UNIX socket."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def endpointForURI(self, uri: Any) -> UNIXClientEndpoint:
        return UNIXClientEndpoint(reactor, str(self.path))


class AdminTests(unittest.TestCase):
    def setUp(self):
        self.state = state_dir(self)
        write_users(self.state / "users.json", {"alice": User.create("alice", "pw")})

    def config(self, admin: str) -> Path:
        text = (
            f'[general]\nstate_dir = "{self.state}"\n[radius]\nenabled = false\n'
            f"[ike]\nenabled = false\n[admin]\n{admin}\n"
        )
        return write_config(self.state / "vpnaaa.toml", text)

    def token(self, mode: int = 0o600) -> None:
        path = self.state / "admin-token"
        path.write_text(TOKEN + "\n")
        os.chmod(path, mode)

    @defer.inlineCallbacks
    def cli_sessions(self, path: Path) -> Generator[defer.Deferred[Any], Any, tuple[str, int]]:
        out, err, code = yield getProcessOutputAndValue(
            CLI, ["--config", str(path), "sessions", "--json"], env={"PATH": os.environ["PATH"]}
        )
        return (out + err).decode(), code

    @defer.inlineCallbacks
    def test_unix_socket_by_default(self):
        """No TCP port; the socket is 0600; GET /metrics answers on it; the CLI uses it."""
        path = self.config("")
        daemon = start_daemon(self, path)
        self.assertEqual([s.name for s in daemon if s.name.startswith("admin")], ["admin"])
        sock = self.state / "admin.sock"
        self.assertEqual(stat.S_IMODE(sock.lstat().st_mode), 0o600)
        agent = client.Agent.usingEndpointFactory(reactor, UnixEndpoints(sock))
        response = yield agent.request(b"GET", b"http://localhost/metrics")
        self.assertEqual(response.code, 200)
        # prometheus-client's MetricsResource: no IKE, no RADIUS here, so no figures
        # (tests/test_metrics.py and the interop tests scrape a working daemon)
        self.assertEqual(response.headers.getRawHeaders(b"content-type")[0][:10], b"text/plain")
        self.assertEqual(
            list(text_string_to_metric_families((yield client.readBody(response)).decode())), []
        )
        output, code = yield self.cli_sessions(path)
        self.assertEqual((output.strip(), code), ("[]", 0))

    @defer.inlineCallbacks
    def test_tcp_needs_the_bearer_token(self):
        self.token()
        path = self.config('socket = ""\nlisten = "127.0.0.1"\nport = 0')
        daemon = start_daemon(self, path)
        port = daemon.getServiceNamed("admin-tcp")._port.getHost().port
        url = f"http://127.0.0.1:{port}/sessions".encode()
        agent = client.Agent(reactor)
        for header in (None, b"Bearer wrong-token", f"Basic {TOKEN}".encode()):
            headers = client.Headers({b"authorization": [header]} if header else {})
            response = yield agent.request(b"GET", url, headers)
            self.assertEqual(response.code, 401, header)
            self.assertEqual(
                response.headers.getRawHeaders(b"www-authenticate"), [b'Bearer realm="vpnaaa"']
            )
            yield client.readBody(response)
        headers = client.Headers({b"authorization": [f"Bearer {TOKEN}".encode()]})
        response = yield agent.request(b"GET", url, headers)
        self.assertEqual(response.code, 200)
        self.assertEqual((yield client.readBody(response)), b"[]")
        metrics = url.replace(b"/sessions", b"/metrics")
        response = yield agent.request(b"GET", metrics, client.Headers({}))
        self.assertEqual(response.code, 401)
        yield client.readBody(response)
        response = yield agent.request(b"GET", metrics, headers)
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders(b"content-type")[0][:10], b"text/plain")
        yield client.readBody(response)
        # the CLI finds no socket in the configuration and sends the token over TCP
        text = write_config(path, path.read_text().replace("port = 0", f"port = {port}"))
        output, code = yield self.cli_sessions(text)
        self.assertEqual((output.strip(), code), ("[]", 0))

    def test_tcp_without_a_token_file_is_a_config_error(self):
        path = self.config('listen = "127.0.0.1"')
        with self.assertRaises(configuration.ConfigError) as caught:
            configuration.load(path)
        self.assertEqual(caught.exception.key, "admin.token_file")
        self.assertIn("vpnaaa admin-token", caught.exception.reason)

    def test_group_readable_token_is_refused(self):
        self.token(0o640)
        path = self.config('listen = "127.0.0.1"')
        with self.assertRaises(configuration.ConfigError) as caught:
            configuration.load(path)
        self.assertEqual(caught.exception.key, "admin.token_file")
        self.assertIn("has mode 0640; run chmod 600", caught.exception.reason)

    @defer.inlineCallbacks
    def test_admin_token_command(self):
        path = self.config('listen = "127.0.0.1"')
        _, err, code = yield getProcessOutputAndValue(
            CLI, ["--config", str(path), "admin-token"], env={"PATH": os.environ["PATH"]}
        )
        self.assertEqual(code, 0, err)
        token = self.state / "admin-token"
        self.assertEqual(stat.S_IMODE(token.stat().st_mode), 0o600)
        self.assertEqual(configuration.load(path).admin.token, token.read_bytes().strip())
