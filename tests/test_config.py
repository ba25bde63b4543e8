"""Configuration loading: defaults, validation and the errors an administrator sees."""

import ipaddress
import os

from twisted.trial import unittest

from tests.support import state_dir, write_config
from vpnaaa import config


class ConfigTestCase(unittest.TestCase):
    def setUp(self):
        self.state = state_dir(self)
        demo_secret = self.state / config.DEMO_SECRET_FILE
        demo_secret.write_text("demo\n")
        os.chmod(demo_secret, 0o600)

    def load(self, text: str, mode: int = 0o600) -> config.Config:
        if "[general]" not in text:
            text = f'[general]\nstate_dir = "{self.state}"\n' + text
        path = write_config(self.state / "vpnaaa.toml", text)
        os.chmod(path, mode)
        return config.load(path)

    def assertConfigError(self, text: str, key: str, reason: str, mode: int = 0o600):
        with self.assertRaises(config.ConfigError) as caught:
            self.load(text, mode)
        message = str(caught.exception)
        self.assertTrue(message.startswith(str(self.state / "vpnaaa.toml") + ": "), message)
        self.assertEqual(caught.exception.key, key)
        self.assertIn(reason, caught.exception.reason)


class ConfigTests(ConfigTestCase):
    def test_embedded_defaults_need_the_demo_secret(self):
        (self.state / config.DEMO_SECRET_FILE).unlink()
        with self.assertRaises(config.ConfigError) as caught:
            config.load(None, str(self.state))
        self.assertIn("vpnaaa demo", str(caught.exception))
        secret = self.state / config.DEMO_SECRET_FILE
        secret.write_text("s3cret\n")
        os.chmod(secret, 0o600)
        loaded = config.load(None, str(self.state))
        self.assertEqual(loaded.source, config.EMBEDDED)
        self.assertEqual(loaded.radius.listen, "127.0.0.1")
        self.assertEqual((loaded.radius.auth_port, loaded.radius.acct_port), (1812, 1813))
        (client,) = loaded.radius.clients
        self.assertEqual(client.network, ipaddress.ip_network("127.0.0.1/32"))
        self.assertEqual(client.secret, b"s3cret")
        self.assertEqual(loaded.users.file, self.state / "users.json")

    def test_clients_and_options(self):
        loaded = self.load(
            f'[general]\nstate_dir = "{self.state}"\n'
            '[radius]\nlisten = "::1"\nauth_port = 11812\nduplicate_window = 2\n'
            '[[radius.clients]]\nname = "switches"\naddress = "10.1.0.0/16"\nsecret = "abc"\n'
            "require_message_authenticator = true\n"
        )
        (client,) = loaded.radius.clients
        self.assertEqual(client.name, "switches")
        self.assertEqual(client.network, ipaddress.ip_network("10.1.0.0/16"))
        self.assertTrue(client.require_message_authenticator)
        self.assertEqual(loaded.radius.duplicate_window, 2.0)
        self.assertEqual(loaded.radius.auth_port, 11812)
        self.assertEqual(loaded.radius.accounting_log, self.state / "accounting.log")

    def test_bad_address(self):
        self.assertConfigError(
            '[[radius.clients]]\naddress = "10.0.0.300"\nsecret = "x"\n',
            "radius.clients[0].address",
            "is not an IP address or network",
        )

    def test_unknown_key_is_an_error_not_a_silent_default(self):
        self.assertConfigError("[radius]\nauth_prot = 1\n", "radius.auth_prot", "unknown option")

    def test_wrong_type(self):
        self.assertConfigError('[radius]\nauth_port = "1812"\n', "radius.auth_port", "expected int")

    def test_port_range(self):
        self.assertConfigError("[radius]\nacct_port = 70000\n", "radius.acct_port", "outside")

    def test_log_level(self):
        self.assertConfigError('[general]\nlog_level = "loud"\n', "general.log_level", "loud")

    def test_syntax_error(self):
        self.assertConfigError("[radius\n", "(syntax)", "line 3")

    def test_secret_in_a_readable_file_is_refused(self):
        self.assertConfigError(
            '[[radius.clients]]\naddress = "127.0.0.1"\nsecret = "x"\n',
            "radius.clients[0].secret",
            "chmod 600",
            mode=0o644,
        )

    def test_secret_file(self):
        secret = self.state / "nas.secret"
        secret.write_text("from-file\n")
        os.chmod(secret, 0o640)
        text = (
            f'[general]\nstate_dir = "{self.state}"\n'
            '[[radius.clients]]\naddress = "127.0.0.1"\nsecret_file = "nas.secret"\n'
        )
        self.assertConfigError(text, "radius.clients[0].secret_file", "mode 0640")
        os.chmod(secret, 0o600)
        self.assertEqual(self.load(text, 0o644).radius.clients[0].secret, b"from-file")

    def test_exactly_one_secret(self):
        self.assertConfigError(
            '[[radius.clients]]\naddress = "127.0.0.1"\n',
            "radius.clients[0].secret",
            "exactly one",
        )

    def test_disabled_radius_needs_no_clients(self):
        self.assertFalse(self.load("[radius]\nenabled = false\n").radius.enabled)

    def test_daemon_user(self):
        self.assertEqual(self.load("").daemon.user, "vpnaaa")
        self.assertEqual(self.load('[daemon]\nuser = "root"\n').daemon.user, "root")
        self.assertConfigError('[daemon]\nuser = ""\n', "daemon.user", "must name a user")

    def test_admin_is_a_unix_socket_unless_listen_is_set(self):
        admin = self.load("").admin
        self.assertEqual(
            (admin.socket, admin.listen, admin.token), (self.state / "admin.sock", None, None)
        )
        self.assertConfigError('[admin]\nsocket = ""\n', "admin.socket", "set one of them")
        self.assertConfigError(
            '[admin]\nlisten = "localhost"\n', "admin.listen", "not an IP address"
        )


class IkeLifecycleOptionTests(ConfigTestCase):
    def test_defaults_and_values(self):
        ike = self.load("[ike]\n").ike
        self.assertEqual(
            (ike.retransmit_timeout, ike.retransmit_base, ike.retransmit_tries, ike.shutdown_wait),
            (4.0, 1.8, 5, 2.0),
        )
        (default,) = ike.profiles
        self.assertEqual(
            (
                default.dpd_delay,
                default.max_sessions_per_user,
                default.session_limit,
                default.rekey,
            ),
            (30.0, 0, "replace", "client"),
        )
        ike = self.load(
            "[ike]\nretransmit_timeout = 0.5\nretransmit_tries = 2\ndpd_delay = 0\n"
            'max_sessions_per_user = 1\nsession_limit = "refuse"\nrekey = "gateway"\n'
        ).ike
        (default,) = ike.profiles
        self.assertEqual((ike.retransmit_timeout, ike.retransmit_tries), (0.5, 2))
        self.assertEqual(
            (default.dpd_delay, default.session_limit, default.rekey), (0.0, "refuse", "gateway")
        )

    def test_errors_name_the_key(self):
        self.assertConfigError('[ike]\nsession_limit = "kick"\n', "ike.session_limit", "replace")
        self.assertConfigError('[ike]\nrekey = "both"\n', "ike.rekey", "gateway")
        self.assertConfigError("[ike]\nretransmit_base = 9\n", "ike.retransmit_base", "outside")
        self.assertConfigError("[ike]\ndpd_delay = -1\n", "ike.dpd_delay", "outside")
