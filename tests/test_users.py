"""The user store and the local authentication backend."""

import hashlib
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

from twisted.trial import unittest

from tests.support import state_dir, write_config
from tests.test_mschap import (
    AUTH_CHALLENGE,
    AUTHENTICATOR_RESPONSE,
    NT_RESPONSE,
    PASSWORD,
    PASSWORD_HASH,
    PEER_CHALLENGE,
    SEND_START_KEY_128,
)
from vpnaaa import auth
from vpnaaa.users import User, UserStore, UserStoreError, locked, read_users, write_users


class UserFileTests(unittest.TestCase):
    def setUp(self):
        self.path = state_dir(self) / "users.json"

    def test_round_trip_keeps_hashes_only(self):
        write_users(self.path, {"alice": User.create("alice", "pw-alice")})
        self.assertEqual(stat.S_IMODE(self.path.stat().st_mode), 0o600)
        text = self.path.read_text()
        self.assertNotIn("pw-alice", text)
        record = json.loads(text)["users"]["alice"]
        self.assertTrue(record["password_hash"].startswith("$pbkdf2-sha256$"))
        self.assertEqual(len(bytes.fromhex(record["nt_hash"])), 16)
        self.assertNotIn("chap_password", record)
        alice = read_users(self.path)["alice"]
        self.assertEqual(alice.methods(), ["pap", "mschap"])

    def test_nt_hash_is_rfc_2759_password_hash(self):
        self.assertEqual(User.create("User", PASSWORD).nt_hash, PASSWORD_HASH)

    def test_opt_outs_and_opt_ins(self):
        user = User.create("bob", "pw", mschap=False, chap=True)
        self.assertIsNone(user.nt_hash)
        self.assertEqual(user.methods(), ["pap", "chap"])

    def test_group_readable_file_is_refused(self):
        write_users(self.path, {"alice": User.create("alice", "x")})
        os.chmod(self.path, 0o644)
        with self.assertRaises(UserStoreError) as caught:
            read_users(self.path)
        self.assertIn("chmod 600", str(caught.exception))

    def test_malformed_records(self):
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"version": 1, "users": {"eve": {"password_hash": "plain"}}}, f)
        with self.assertRaises(UserStoreError) as caught:
            read_users(self.path)
        self.assertIn("'eve'", str(caught.exception))

    def test_failed_reload_keeps_the_users_in_force(self):
        write_users(self.path, {"alice": User.create("alice", "x")})
        store = UserStore(self.path)
        self.assertEqual(store.load(), 1)
        self.path.write_text("{not json")
        self.assertRaises(UserStoreError, store.load)
        self.assertIsNotNone(store.get("alice"))


class LocalBackendTests(unittest.TestCase):
    def setUp(self):
        self.path = state_dir(self) / "users.json"
        write_users(
            self.path,
            {
                "User": User.create("User", PASSWORD),
                "carol": User.create("carol", "chap-pw", chap=True, mschap=False),
            },
        )
        self.store = UserStore(self.path)
        self.store.load()
        self.backend = auth.LocalBackend(self.store)

    def verdict(self, username, credentials):
        return self.successResultOf(self.backend.authenticate(username, credentials))

    def test_pap_checks_the_hash_then_the_cache(self):
        d = self.backend.authenticate("User", auth.Pap(PASSWORD.encode()))
        # the first check runs in a thread; wait for it
        d.addCallback(self.assertIsInstance, auth.Accept)
        d.addCallback(lambda _: self.backend.authenticate("User", auth.Pap(b"clientPas")))
        d.addCallback(lambda v: self.assertEqual(v, auth.Reject("wrong password")))
        d.addCallback(
            lambda _: self.assertTrue(
                self.store.cached_password_ok(self.store.get("User"), PASSWORD.encode())
            )
        )
        d.addCallback(lambda _: self.verdict("User", auth.Pap(PASSWORD.encode())))
        d.addCallback(lambda v: self.assertEqual(v, auth.Accept("User")))
        return d

    def test_reload_forgets_cached_passwords(self):
        user = self.store.get("User")
        self.store.remember_password(user, b"whatever")
        self.store.load()
        self.assertFalse(self.store.cached_password_ok(self.store.get("User"), b"whatever"))

    def test_unknown_user(self):
        self.assertEqual(self.verdict("nobody", auth.Pap(b"x")), auth.Reject("unknown user"))

    def test_chap(self):
        challenge = bytes(range(16))
        good = hashlib.md5(b"\x05chap-pw" + challenge).digest()
        self.assertEqual(self.verdict("carol", auth.Chap(5, challenge, good)), auth.Accept("carol"))
        self.assertIsInstance(self.verdict("carol", auth.Chap(6, challenge, good)), auth.Reject)
        reply = self.verdict("User", auth.Chap(5, challenge, good))
        self.assertIn("cleartext", reply.reason)

    def test_mschapv2_rfc2759_sample(self):
        verdict = self.verdict("User", auth.MsChapV2(AUTH_CHALLENGE, PEER_CHALLENGE, NT_RESPONSE))
        self.assertIsInstance(verdict, auth.Accept)
        self.assertEqual(verdict.authenticator_response, AUTHENTICATOR_RESPONSE)
        self.assertEqual(verdict.mppe_send_key, SEND_START_KEY_128)

    def test_mschapv2_windows_domain_prefix(self):
        """Windows sends DOMAIN\\user; the challenge hash uses the bare name (RFC 2759 §8.2)."""
        verdict = self.verdict(
            "CORP\\User", auth.MsChapV2(AUTH_CHALLENGE, PEER_CHALLENGE, NT_RESPONSE)
        )
        self.assertEqual(verdict.authenticator_response, AUTHENTICATOR_RESPONSE)

    def test_mschap_disabled_user(self):
        verdict = self.verdict("carol", auth.MsChapV2(AUTH_CHALLENGE, PEER_CHALLENGE, NT_RESPONSE))
        self.assertIn("disabled", verdict.reason)


class LockedUpdateTests(unittest.TestCase):
    """Two `vpnaaa user add` processes at once: both users end up in the file."""

    def test_two_concurrent_adds_keep_both_users(self):
        state = state_dir(self)
        path = state / "users.json"
        write_users(path, {"alice": User.create("alice", "pw-alice")})
        write_config(state / "radius-secret", "demo\n")  # the embedded defaults need it
        cli = [str(Path(sys.executable).parent / "vpnaaa"), "--state-dir", str(state)]
        with locked(path):  # both read the file only once they hold the lock
            adds = [
                subprocess.Popen(
                    [*cli, "user", "add", name, "--password-stdin", "--no-mschap"],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
                for name in ("bob", "carol")
            ]
            for add in adds:
                add.stdin.write("pw\n")
                add.stdin.close()
            time.sleep(1.0)
            self.assertEqual([add.poll() for add in adds], [None, None])  # waiting
        for add in adds:
            self.assertEqual(add.wait(timeout=30), 0, add.stdout.read())
            add.stdout.close()
        self.assertEqual(sorted(read_users(path)), ["alice", "bob", "carol"])
