"""`twistd -n vpnaaa` started as root runs as the vpnaaa user with CAP_NET_ADMIN only, and
still serves RADIUS (radclient), IKEv2 (charon) and the admin API (`vpnaaa sessions`).

The daemon runs on its embedded defaults (RADIUS on 127.0.0.1:1812, IKE on 0.0.0.0:500/4500,
the admin API on state_dir/admin.sock) inside a gateway network namespace, so those ports are
free whatever the machine runs; charon connects from the client namespace. A second case
starts it the way the systemd unit does (already the vpnaaa user, CAP_NET_ADMIN and
CAP_NET_BIND_SERVICE as ambient capabilities, emulated with setpriv).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Generator
from pathlib import Path
from typing import Any

from twisted.internet import defer, error, reactor
from twisted.trial import unittest

from tests.interop import charon

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CAP_NET_ADMIN = 1 << 12  # linux/capability.h
SETPRIV = shutil.which("setpriv") or "/usr/bin/setpriv"


def proc_status(pid: int) -> dict[str, list[str]]:
    """/proc/PID/status as name -> fields (proc(5))."""
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {name: value.split() for name, _, value in (line.partition(":") for line in lines)}


class UnprivilegedDaemonTests(unittest.TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def setUp(self) -> Generator[defer.Deferred[Any], Any, None]:
        reason = charon.unavailable()
        if reason:
            raise unittest.SkipTest(reason)
        if os.geteuid() != 0:
            raise unittest.SkipTest("starting as root needs root")
        subprocess.run([REPO / "scripts" / "system-user"], check=True, capture_output=True)
        self.user = pwd.getpwnam("vpnaaa")
        self.state = Path(tempfile.mkdtemp(prefix="vpnaaa-priv-"))
        self.addCleanup(shutil.rmtree, self.state, True)
        self.netns = charon.Netns(gateway_netns=True)
        yield self.netns.create()
        self.addCleanup(self.netns.destroy)
        gateway = self.netns.gateway_address
        self.cli("pki", "init")
        self.cli("pki", "issue", gateway)
        self.cli("demo")
        self.cli("user", "add", "alice", "--password-stdin", stdin="wonderland\n")

    def cli(self, *args: str, stdin: str = "") -> str:
        argv = [str(BIN / "vpnaaa"), "--state-dir", str(self.state), *args]
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=True)
        return done.stdout

    @defer.inlineCallbacks
    def start(self, prefix: list[str]) -> Generator[defer.Deferred[Any], Any, int]:
        """twistd -n vpnaaa on the embedded defaults in the gateway namespace; its pid once
        the IKE responder is up."""
        self.daemon = charon.ChildProcess()
        argv = [charon.IP, "netns", "exec", self.netns.gateway_name, *prefix]
        argv += [str(BIN / "twistd"), "-n", "--pidfile=", "vpnaaa", "--state-dir", str(self.state)]
        env = {"PATH": charon.PATH, "LC_ALL": "C", "PYTHONUNBUFFERED": "1"}
        transport = reactor.spawnProcess(self.daemon, argv[0], argv, env=env)
        self.addCleanup(self.stop, transport)
        for _ in range(300):
            if b"IKEv2 responder on" in self.daemon.output:
                return transport.pid
            if self.daemon.ended.called:
                break
            yield charon.sleep(0.1)
        self.fail(f"the daemon did not start:\n{self.daemon.output.decode()}")

    @defer.inlineCallbacks
    def stop(self, transport: Any) -> Generator[defer.Deferred[Any], Any, None]:
        if not self.daemon.ended.called:
            with contextlib.suppress(error.ProcessExitedAlready):
                transport.signalProcess("TERM")
            yield self.daemon.ended

    def assertUnprivileged(self, pid: int) -> None:
        status = proc_status(pid)
        self.assertEqual(status["Uid"], [str(self.user.pw_uid)] * 4)
        self.assertEqual(status["Gid"], [str(self.user.pw_gid)] * 4)
        self.assertEqual(int(status["CapEff"][0], 16), CAP_NET_ADMIN)
        self.assertEqual(int(status["CapPrm"][0], 16), CAP_NET_ADMIN)
        self.assertEqual(int(status["CapAmb"][0], 16), 0)
        self.assertEqual(status["NoNewPrivs"], ["1"])

    @defer.inlineCallbacks
    def assertServes(self) -> Generator[defer.Deferred[Any], Any, None]:
        """radclient gets an Access-Accept, charon an ESTABLISHED IKE SA with a CHILD_SA,
        `vpnaaa sessions` (UNIX socket) lists the session."""
        secret = (self.state / "radius-secret").read_text().strip()
        request = "User-Name=alice,User-Password=wonderland"
        script = f"echo '{request}' | radclient -x 127.0.0.1 auth {secret}"
        output, _ = yield self.netns.run(["sh", "-c", script], gateway=True)
        self.assertIn("Received Access-Accept", output)
        role = charon.Initiator(
            gateway=self.netns.gateway_address, ca_cert=self.state / "pki" / "ca" / "ca.pem"
        )
        client = charon.Charon(self.state / "charon", self.netns.name, role)
        self.addCleanup(client.stop)
        yield client.start()
        result = yield client.initiate()
        if not result.ok:
            self.fail(result.output + client.tail() + self.daemon.output.decode())
        (sa,) = yield client.list_sas()
        self.assertEqual(sa.state, "ESTABLISHED")
        self.assertEqual([c.state for c in sa.children], ["INSTALLED"])
        sessions = self.cli("sessions", "--json")
        self.assertIn('"username": "alice"', sessions)
        self.assertIn(sa.local_vips[0], sessions)

    @defer.inlineCallbacks
    def test_started_as_root(self):
        """The state directory `vpnaaa demo` made as root becomes the daemon user's, the
        admin socket is 0600 and the user's, and everything answers after the drop."""
        pid = yield self.start([])
        self.assertUnprivileged(pid)
        st = self.state.stat()
        self.assertEqual((st.st_uid, stat.S_IMODE(st.st_mode)), (self.user.pw_uid, 0o700))
        sock = (self.state / "admin.sock").lstat()
        self.assertTrue(stat.S_ISSOCK(sock.st_mode))
        self.assertEqual((sock.st_uid, stat.S_IMODE(sock.st_mode)), (self.user.pw_uid, 0o600))
        self.assertEqual((self.state / "users.json").stat().st_uid, self.user.pw_uid)
        yield self.assertServes()
        # the CLI (root) rewrites users.json: it stays the daemon's, which re-reads it
        self.cli("user", "add", "bob", "--password-stdin", stdin="builder\n")
        self.assertEqual((self.state / "users.json").stat().st_uid, self.user.pw_uid)

    @defer.inlineCallbacks
    def test_started_by_systemd_as_the_user(self):
        """Already the user with the unit's ambient capabilities (setpriv does what systemd's
        User= and AmbientCapabilities= do): it keeps CAP_NET_ADMIN only."""
        for path in [self.state, *self.state.rglob("*")]:
            os.chown(path, self.user.pw_uid, self.user.pw_gid, follow_symlinks=False)
        caps = "+net_admin,+net_bind_service"
        prefix = [SETPRIV, "--reuid", "vpnaaa", "--regid", "vpnaaa", "--clear-groups"]
        prefix += ["--inh-caps", caps, "--ambient-caps", caps]
        pid = yield self.start(prefix)
        self.assertUnprivileged(pid)
        yield self.assertServes()

    @defer.inlineCallbacks
    def test_state_dir_writable_by_others_is_refused(self):
        os.chmod(self.state, 0o777)
        self.daemon = charon.ChildProcess()
        argv = [str(BIN / "twistd"), "-n", "--pidfile=", "vpnaaa", "--state-dir", str(self.state)]
        reactor.spawnProcess(self.daemon, argv[0], argv, env={"PATH": charon.PATH})
        code = yield self.daemon.ended
        self.assertEqual(code, 1)
        self.assertIn(
            f"state directory {self.state} is writable by group or others (mode 0777)",
            self.daemon.output.decode(),
        )
