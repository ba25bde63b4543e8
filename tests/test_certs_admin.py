"""`vpnaaa deny` (a real CLI process) and the admin API's /deny on a running daemon."""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Generator
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial import unittest

from tests.support import start_daemon, state_dir, write_config
from vpnaaa.certs import DENY_FILE, DenyList
from vpnaaa.users import User, write_users

CLI = str(Path(sys.executable).parent / "vpnaaa")


class DenyCommand(unittest.TestCase):
    def setUp(self) -> None:
        self.state = state_dir(self)
        write_users(self.state / "users.json", {"alice": User.create("alice", "pw")})
        text = (
            f'[general]\nstate_dir = "{self.state}"\n[radius]\nenabled = false\n'
            "[ike]\nenabled = false\n[admin]\n"
        )
        self.config = write_config(self.state / "vpnaaa.toml", text)
        start_daemon(self, self.config)

    @defer.inlineCallbacks
    def cli(self, *args: str) -> Generator[defer.Deferred[Any], Any, tuple[str, int]]:
        out, err, code = yield getProcessOutputAndValue(
            CLI, ["--config", str(self.config), "deny", *args], env={"PATH": os.environ["PATH"]}
        )
        return (out + err).decode().strip(), code

    @defer.inlineCallbacks
    def test_deny_list_allow(self) -> Generator[defer.Deferred[Any], Any, None]:
        output, code = yield self.cli("ab:cd:01")
        self.assertEqual(code, 0, output)
        self.assertEqual(output, "serial ABCD01 denied; 0 live session(s) ended")
        path = self.state / DENY_FILE
        self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o600)
        self.assertTrue(DenyList(path).denied(0xABCD01))  # what the IKE side will read
        self.assertEqual(
            (yield self.cli("0xABCD01")),
            ("serial ABCD01 was already denied; 0 live session(s) ended", 0),
        )
        yield self.cli("FF")
        self.assertEqual((yield self.cli()), ("FF\nABCD01", 0))
        self.assertEqual((yield self.cli("--remove", "abcd01")), ("serial ABCD01 allowed again", 0))
        self.assertFalse(DenyList(path).denied(0xABCD01))
        self.assertEqual((yield self.cli("--remove", "FF")), ("serial FF allowed again", 0))
        self.assertEqual((yield self.cli()), ("no serial is denied", 0))

    @defer.inlineCallbacks
    def test_bad_serial(self) -> Generator[defer.Deferred[Any], Any, None]:
        output, code = yield self.cli("not-hex")
        self.assertNotEqual(code, 0)
        self.assertIn("400", output)
        self.assertIn("not a hexadecimal serial number", output)
        self.assertFalse((self.state / DENY_FILE).exists())
