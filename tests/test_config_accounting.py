"""``[accounting]`` and ``acct_interim_interval``: values, defaults and the errors named."""

import os
from pathlib import Path

from tests.test_config import ConfigTestCase
from vpnaaa import config

EXAMPLE = Path(__file__).parent.parent / "etc" / "vpnaaa.toml"


class AccountingConfigTests(ConfigTestCase):
    def test_defaults_local_log_only(self):
        loaded = self.load("")
        self.assertEqual(loaded.accounting, config.AccountingConfig())
        self.assertEqual(loaded.accounting.servers, ())
        self.assertEqual(loaded.accounting.revive_interval, 120.0)
        self.assertEqual(loaded.ike.profiles[0].acct_interim_interval, 0)

    def test_servers_secret_file_and_options(self):
        secret = self.state / "acct-secret"
        secret.write_text("shared\n")
        os.chmod(secret, 0o600)
        loaded = self.load(
            '[accounting]\nservers = ["192.0.2.1", "192.0.2.2:11813"]\n'
            'secret_file = "acct-secret"\ntimeout = 0.5\ntries = 2\nmax_queue = 10\n'
            'nas_identifier = "asa-1"\nrevive_interval = 60\n'
            "[ike]\nacct_interim_interval = 600\n"
            '[[ike.profiles]]\nname = "staff"\nmatch = ["staff.example.test"]\n'
            "acct_interim_interval = 60\n"
        )
        accounting = loaded.accounting
        self.assertEqual(accounting.servers, (("192.0.2.1", 1813), ("192.0.2.2", 11813)))
        self.assertEqual(accounting.secret, b"shared")
        self.assertEqual((accounting.timeout, accounting.tries, accounting.max_queue), (0.5, 2, 10))
        self.assertEqual(accounting.nas_identifier, "asa-1")
        self.assertEqual(accounting.revive_interval, 60.0)
        self.assertEqual([p.acct_interim_interval for p in loaded.ike.profiles], [600, 60])

    def test_ipv6_server(self):
        loaded = self.load('[accounting]\nservers = ["[2001:db8::1]:1646", "::2"]\nsecret = "s"\n')
        self.assertEqual(loaded.accounting.servers, (("2001:db8::1", 1646), ("::2", 1813)))

    def test_errors(self):
        self.assertConfigError(
            '[accounting]\nservers = ["acct.example.test"]\nsecret = "s"\n',
            "accounting.servers",
            "is not ADDRESS, ADDRESS:PORT or [IPv6]:PORT",
        )
        self.assertConfigError(
            '[accounting]\nservers = ["192.0.2.1:0"]\nsecret = "s"\n',
            "accounting.servers",
            "'192.0.2.1:0' is not",
        )
        self.assertConfigError(
            '[accounting]\nservers = ["192.0.2.1", "[::1]:1813"]\nsecret = "s"\n',
            "accounting.servers",
            "mixes IPv4 and IPv6",
        )
        self.assertConfigError(
            '[accounting]\nservers = ["192.0.2.1"]\n',
            "accounting.secret",
            "set exactly one of secret and secret_file",
        )
        self.assertConfigError(
            '[accounting]\nsecret = "s"\n', "accounting.secret", "set only with servers"
        )
        self.assertConfigError(
            "[accounting]\ntries = 0\n", "accounting.tries", "0 is outside 1..10"
        )
        self.assertConfigError(
            "[accounting]\ninterim = 5\n", "accounting.interim", "unknown option"
        )
        self.assertConfigError(
            "[accounting]\nrevive_interval = -1\n",
            "accounting.revive_interval",
            "-1 is outside 0..86400",
        )
        self.assertConfigError(
            f'[accounting]\nnas_identifier = "{"n" * 254}"\n',
            "accounting.nas_identifier",
            "must be 1 to 253 octets",
        )
        self.assertConfigError(
            "[ike]\nacct_interim_interval = -1\n",
            "ike.acct_interim_interval",
            "-1 is outside",
        )

    def test_the_log_without_the_radius_server(self):
        """The IKE sessions' records go to [radius] accounting_log even when the RADIUS
        server is off."""
        loaded = self.load('[radius]\nenabled = false\naccounting_log = "acct/ike.log"\n')
        self.assertEqual(loaded.radius.accounting_log, self.state / "acct" / "ike.log")

    def test_the_example_documents_every_option(self):
        """etc/vpnaaa.toml shows each [accounting] option and acct_interim_interval."""
        text = EXAMPLE.read_text()
        section = text.split("[accounting]\n", 1)[1].split("\n[admin]", 1)[0]
        for name in (
            "enabled",
            "servers",
            "secret_file",
            "timeout",
            "tries",
            "max_queue",
            "nas_identifier",
            "revive_interval",
        ):
            self.assertIn(f"\n{name} = ", "\n" + section.replace("# ", ""))
        self.assertIn("\nacct_interim_interval = 0\n", text)
