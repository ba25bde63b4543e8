"""The user store and the local authentication backend."""

import hashlib
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

from twisted.internet import defer, task
from twisted.logger import formatEvent, globalLogPublisher
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
from vpnaaa.lockout import Lockout
from vpnaaa.users import (
    User,
    UserStore,
    UserStoreError,
    dummy_user,
    locked,
    read_users,
    write_users,
)


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

    def test_names_that_differ_only_in_case_are_refused(self):
        """The gateway counts a user's sessions in any case (user_key): a file holding
        "Alice" and "alice" would let one end the other's sessions; it is refused, and so
        is `vpnaaa user add` of the second."""
        write_users(self.path, {n: User.create(n, "x") for n in ("alice", "Alice")})
        with self.assertRaises(UserStoreError) as caught:
            read_users(self.path)
        self.assertIn("differ only in case", str(caught.exception))
        state = self.path.parent
        write_users(self.path, {"alice": User.create("alice", "x")})
        write_config(state / "radius-secret", "demo\n")  # the embedded defaults need it
        cli = [str(Path(sys.executable).parent / "vpnaaa"), "--state-dir", str(state)]
        add = subprocess.run(
            [*cli, "user", "add", "ALICE", "--password-stdin"],
            input="pw\n",
            capture_output=True,
            text=True,
            timeout=30,
        )
        self.assertNotEqual(add.returncode, 0)
        self.assertIn("'alice' exists", add.stderr)
        self.assertEqual(list(read_users(self.path)), ["alice"])

    def test_grants_round_trip_through_the_cli_and_the_file(self):
        """`vpnaaa user grant`: what the user's sessions get, as an Access-Accept would
        say it (Framed-IP-Address, Framed-Pool, Session-Timeout, Acct-Interim-Interval,
        Class); kept in the file, refused when malformed."""
        state = self.path.parent
        write_users(self.path, {"alice": User.create("alice", "x")})
        write_config(state / "radius-secret", "demo\n")  # the embedded defaults need it
        cli = [str(Path(sys.executable).parent / "vpnaaa"), "--state-dir", str(state)]
        grant = [*cli, "user", "grant", "alice"]
        done = subprocess.run(
            [*grant, "--framed-ip", "10.99.0.7", "--session-timeout", "3600", "--class", "a"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        granted = read_users(self.path)["alice"].authorization
        self.assertEqual(
            (str(granted.framed_ip), granted.session_timeout, granted.classes),
            ("10.99.0.7", 3600, (b"a",)),
        )
        bad = subprocess.run(
            [*grant, "--framed-ip", "10.99.0.300"], capture_output=True, text=True, timeout=30
        )
        self.assertNotEqual(bad.returncode, 0)
        self.assertIn("framed_ip '10.99.0.300' is not an IPv4 address", bad.stderr)
        record = json.loads(self.path.read_text())
        record["users"]["alice"]["grants"] = {"session_timeout": -5}
        self.path.write_text(json.dumps(record))
        with self.assertRaises(UserStoreError) as caught:
            read_users(self.path)
        self.assertIn("'alice': session_timeout must be a positive number", str(caught.exception))

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
        self.clock = task.Clock()
        self.backend = auth.LocalBackend(self.store, self.clock)

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
        d = self.backend.authenticate("nobody", auth.Pap(b"x"))
        return d.addCallback(self.assertEqual, auth.Reject("unknown user"))

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


class LockoutTests(unittest.TestCase):
    """ISE-style lockout on a fake clock: 3 failures within 60 s lock for 300 s."""

    def setUp(self):
        self.clock = task.Clock()
        self.lockout = Lockout(self.clock, failures=3, window=60.0, duration=300.0)
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def lock_lines(self):
        return [e for e in self.events if "locked out" in (formatEvent(e) or "")]

    def test_failures_within_the_window_lock_for_the_duration(self):
        for _ in range(2):
            self.lockout.failed("alice")
            self.clock.advance(10)
        self.assertFalse(self.lockout.locked("alice"))
        self.lockout.failed("alice")
        self.assertTrue(self.lockout.locked("alice"))
        self.assertFalse(self.lockout.locked("bob"))
        self.lockout.failed("alice")  # failures while locked neither extend nor re-log
        self.clock.advance(299)
        self.assertTrue(self.lockout.locked("alice"))
        self.clock.advance(1)
        self.assertFalse(self.lockout.locked("alice"))
        self.assertEqual(len(self.lock_lines()), 1)

    def test_failures_outside_the_window_do_not_add_up(self):
        for _ in range(5):
            self.lockout.failed("alice")
            self.clock.advance(31)
        self.assertFalse(self.lockout.locked("alice"))

    def test_success_clears_the_count(self):
        self.lockout.failed("alice")
        self.lockout.failed("alice")
        self.lockout.succeeded("alice")
        self.lockout.failed("alice")
        self.assertFalse(self.lockout.locked("alice"))

    def test_a_lockout_holds_for_its_source_only(self):
        """Smart lockout: wrong passwords from a stranger's address lock the user out
        from there, not from where the user is; an IPv6 /64 is one source."""
        for n in range(3):
            self.lockout.failed("alice", f"2001:db8:bad:1::{n + 1}")
        self.assertTrue(self.lockout.locked("alice", "2001:db8:bad:1::99"))
        self.assertFalse(self.lockout.locked("alice", "192.0.2.7"))
        self.assertFalse(self.lockout.locked("alice"))
        self.lockout.succeeded("alice", "192.0.2.7")
        self.assertTrue(self.lockout.locked("alice", "2001:db8:bad:1::1"))

    def test_records_are_bounded(self):
        lockout = Lockout(self.clock, failures=3, records=100)
        for n in range(1000):
            lockout.failed("alice", f"198.51.100.{n % 250}/{n}")
        self.assertEqual(len(lockout._records), 100)

    def test_zero_failures_disables_it(self):
        lockout = Lockout(self.clock, failures=0)
        for _ in range(100):
            lockout.failed("alice")
        self.assertFalse(lockout.locked("alice"))


def _rounds(password_hash):
    """The PBKDF2 iteration count in a passlib ``$pbkdf2-sha256$ROUNDS$...`` string."""
    scheme, rounds = password_hash.split("$")[1:3]
    return scheme, int(rounds)


class HardenedBackendTests(unittest.TestCase):
    """Hash work for unknown and locked users, the bounded queue, the lockout."""

    def setUp(self):
        self.path = state_dir(self) / "users.json"
        write_users(
            self.path,
            {
                "User": User.create("User", PASSWORD),
                "carol": User.create("carol", "chap-pw", chap=True, mschap=False),
            },
        )
        self.clock = task.Clock()
        self.store = UserStore(self.path, lockout=Lockout(self.clock, 3, 60.0, 300.0))
        self.store.load()
        self.checked = []  # (user, password) of each hash check, in order
        self.parked = []  # Deferreds of hash checks still "running"
        self.backend = auth.LocalBackend(self.store, self.clock, 2, self.run_in_thread)
        self.hold = False

    def run_in_thread(self, function, user, password):
        self.checked.append((user.name, password))
        if self.hold:
            d = defer.Deferred()
            self.parked.append((d, function, user, password))
            return d
        return defer.succeed(function(user, password))

    def release(self):
        parked, self.parked = self.parked, []
        for d, function, user, password in parked:
            d.callback(function(user, password))

    def verdict(self, name, credentials):
        return self.successResultOf(self.backend.authenticate(name, credentials))

    def test_unknown_user_costs_a_hash_check_like_a_wrong_password(self):
        """The unknown user's password goes through the same PBKDF2 check (same scheme
        and rounds as a stored user's hash), against the dummy user."""
        self.assertEqual(self.verdict("nobody", auth.Pap(b"x")), auth.Reject("unknown user"))
        self.assertEqual(self.verdict("User", auth.Pap(b"x")), auth.Reject("wrong password"))
        self.assertEqual(self.checked, [("", b"x"), ("User", b"x")])
        self.assertEqual(
            _rounds(dummy_user().password_hash), _rounds(self.store.get("User").password_hash)
        )

    def test_queue_is_bounded(self):
        self.hold = True
        pending = [self.backend.authenticate("User", auth.Pap(b"x")) for _ in range(2)]
        self.assertEqual(self.verdict("User", auth.Pap(PASSWORD.encode())), auth.Busy())
        self.assertEqual(self.verdict("nobody", auth.Pap(b"y")), auth.Busy())
        self.assertEqual(len(self.checked), 2)  # the refused ones cost no hash
        self.release()
        for d in pending:
            self.assertEqual(self.successResultOf(d), auth.Reject("wrong password"))
        self.assertEqual(self.backend.pending, 0)
        self.hold = False
        self.assertIsInstance(self.verdict("User", auth.Pap(PASSWORD.encode())), auth.Accept)

    def test_wrong_passwords_lock_the_user_for_every_method(self):
        challenge = bytes(range(16))
        wrong = auth.Chap(5, challenge, bytes(16))
        right = auth.Chap(5, challenge, hashlib.md5(b"\x05chap-pw" + challenge).digest())
        for _ in range(3):
            self.assertEqual(self.verdict("carol", wrong), auth.Reject("wrong password"))
        locked = "locked out after repeated wrong passwords"
        self.assertEqual(self.verdict("carol", right), auth.Reject(locked))
        # PAP with the right password: still a hash check (against the dummy), still refused
        self.assertEqual(self.verdict("carol", auth.Pap(b"chap-pw")), auth.Reject(locked))
        self.assertEqual(self.checked[-1], ("", b"chap-pw"))
        self.clock.advance(300)
        self.assertEqual(self.verdict("carol", right), auth.Accept("carol"))

    def test_mschap_failures_count(self):
        bad = auth.MsChapV2(AUTH_CHALLENGE, PEER_CHALLENGE, bytes(24))
        good = auth.MsChapV2(AUTH_CHALLENGE, PEER_CHALLENGE, NT_RESPONSE)
        for _ in range(3):
            self.assertEqual(self.verdict("User", bad), auth.Reject("wrong password"))
        self.assertIsInstance(self.verdict("User", good), auth.Reject)
        self.assertTrue(self.store.locked("User"))

    def test_success_resets_the_count(self):
        bad = auth.MsChapV2(AUTH_CHALLENGE, PEER_CHALLENGE, bytes(24))
        good = auth.MsChapV2(AUTH_CHALLENGE, PEER_CHALLENGE, NT_RESPONSE)
        for _ in range(2):
            self.verdict("User", bad)
        self.assertIsInstance(self.verdict("User", good), auth.Accept)
        for _ in range(2):
            self.verdict("User", bad)
        self.assertIsInstance(self.verdict("User", good), auth.Accept)


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
