"""The [eap] and [ike.radius] options of issue 9: memory budget, per-source cap,
cryptobinding modes, the relay's ports, queue and table."""

from twisted.trial import unittest

from tests.support import state_dir, write_config
from vpnaaa import config as configuration


class EapOptionTests(unittest.TestCase):
    def load(self, text: str) -> configuration.Config:
        state = state_dir(self)
        head = f'[general]\nstate_dir = "{state}"\n[radius]\nenabled = false\n'
        return configuration.load(write_config(state / "vpnaaa.toml", head + text))

    def error(self, text: str) -> str:
        with self.assertRaises(configuration.ConfigError) as caught:
            self.load(text)
        return str(caught.exception)

    def test_defaults(self):
        eap = self.load("").eap
        self.assertEqual(eap.memory_budget_mib, 256)
        self.assertEqual(eap.max_conversations_per_source, 32)
        self.assertEqual(eap.peap_cryptobinding, "optional")

    def test_cryptobinding_modes(self):
        for written, mode in (
            ("true", "optional"),
            ("false", "off"),
            ('"off"', "off"),
            ('"optional"', "optional"),
            ('"required"', "required"),
        ):
            eap = self.load(f"[eap]\npeap_cryptobinding = {written}\n").eap
            self.assertEqual(eap.peap_cryptobinding, mode)
        self.assertIn(
            "eap.peap_cryptobinding: 'always': use 'off', 'optional', 'required'",
            self.error('[eap]\npeap_cryptobinding = "always"\n'),
        )

    def test_max_conversations_was_replaced(self):
        self.assertIn(
            "eap.max_conversations: replaced by memory_budget_mib",
            self.error("[eap]\nmax_conversations = 10\n"),
        )
        self.assertIn(
            "eap.memory_budget_mib: 0 is outside", self.error("[eap]\nmemory_budget_mib = 0\n")
        )

    def test_relay_options(self):
        relay = (
            '[ike]\nenabled = false\n[ike.radius]\nserver = "192.0.2.10"\nsecret = "s"\n'
            "source_ports = 8\nmax_queue = 10\nmax_conversations = 100\n"
            "max_conversations_per_source = 3\n"
        )
        config = self.load(relay).ike.relay
        self.assertEqual(
            (
                config.source_ports,
                config.max_queue,
                config.max_conversations,
                config.max_conversations_per_source,
            ),
            (8, 10, 100, 3),
        )
        self.assertIn(
            "ike.radius.source_ports: 65 is outside 1..64",
            self.error(relay.replace("source_ports = 8", "source_ports = 65")),
        )


class EapTlsOptionTests(unittest.TestCase):
    """``[eap.tls]`` client_ca, min_version and max_version; "tls" in the method lists."""

    def setUp(self) -> None:
        self.state = state_dir(self)

    def load(self, text: str) -> configuration.Config:
        head = f'[general]\nstate_dir = "{self.state}"\n[radius]\nenabled = false\n'
        return configuration.load(write_config(self.state / "vpnaaa.toml", head + text))

    def error(self, text: str) -> str:
        with self.assertRaises(configuration.ConfigError) as caught:
            self.load(text)
        return str(caught.exception)

    def test_defaults(self):
        eap = self.load("").eap
        self.assertEqual(eap.methods, ("peap", "mschapv2"))  # tls needs client_ca: opt-in
        self.assertEqual((eap.tls.min_version, eap.tls.max_version), ("1.2", "1.3"))
        self.assertEqual(eap.tls.client_ca, self.state / "pki" / "ca.pem")

    def test_tls_method_and_versions(self):
        eap = self.load(
            '[eap]\nmethods = ["tls"]\n[eap.tls]\nclient_ca = "users-ca.pem"\n'
            'min_version = "1.3"\nmax_version = "1.3"\n[ike]\nenabled = false\n'
        ).eap
        self.assertEqual(eap.methods, ("tls",))
        self.assertEqual(eap.tls.client_ca, self.state / "users-ca.pem")
        self.assertEqual(eap.tls.min_version, "1.3")

    def test_ike_profile_may_use_tls(self):
        ike = self.load('[ike]\neap_methods = ["tls"]\n').ike
        self.assertEqual(ike.profiles[0].eap_methods, ("tls",))

    def test_version_errors(self):
        self.assertIn(
            "eap.tls.max_version: '1.1': use '1.2' or '1.3'",
            self.error('[eap.tls]\nmax_version = "1.1"\n'),
        )
        self.assertIn(
            "eap.tls.min_version: '1.3' is above max_version",
            self.error(
                '[eap]\nmethods = ["tls"]\n[eap.tls]\nmin_version = "1.3"\nmax_version = "1.2"\n'
            ),
        )

    def test_peap_with_tls13_only(self):
        """PEAP speaks TLS 1.3 (RFC 9427): min_version 1.3 is accepted where [eap] or an
        IKE profile offers PEAP."""
        for text in (
            '[eap.tls]\nmin_version = "1.3"\n',
            '[eap]\nmethods = ["tls"]\n[eap.tls]\nmin_version = "1.3"\n'
            '[ike]\neap_methods = ["peap"]\n',
        ):
            tls = self.load(text).eap.tls
            self.assertEqual((tls.min_version, tls.max_version), ("1.3", "1.3"))
