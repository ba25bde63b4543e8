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
