"""``[eap.tls] resumption``, ``session_lifetime`` and ``session_cache_size``: defaults,
values, range errors naming file and key, and what the daemon builds from them."""

from twisted.trial import unittest

from tests.support import state_dir, write_config
from vpnaaa import config as configuration


class ResumptionOptionTests(unittest.TestCase):
    def setUp(self) -> None:
        self.state = state_dir(self)
        self.path = self.state / "vpnaaa.toml"

    def load(self, text: str) -> configuration.Config:
        head = f'[general]\nstate_dir = "{self.state}"\n[radius]\nenabled = false\n'
        return configuration.load(write_config(self.path, head + text))

    def error(self, text: str) -> str:
        with self.assertRaises(configuration.ConfigError) as caught:
            self.load(text)
        return str(caught.exception)

    def test_defaults(self):
        tls = self.load("").eap.tls
        self.assertEqual(
            (tls.resumption, tls.session_lifetime, tls.session_cache_size), (False, 3600, 4096)
        )

    def test_values(self):
        tls = self.load(
            "[eap.tls]\nresumption = true\nsession_lifetime = 600\nsession_cache_size = 50\n"
        ).eap.tls
        self.assertEqual(
            (tls.resumption, tls.session_lifetime, tls.session_cache_size), (True, 600, 50)
        )

    def test_errors(self):
        for text, expected in (
            ("session_lifetime = 10", "eap.tls.session_lifetime: 10 is outside 60..86400"),
            ("session_cache_size = 1", "eap.tls.session_cache_size: 1 is outside 2..40960"),
            ('resumption = "yes"', "eap.tls.resumption"),
        ):
            message = self.error(f"[eap.tls]\n{text}\n")
            self.assertIn(expected, message)
            self.assertTrue(message.startswith(str(self.path)), message)

    def test_example_file_documents_the_keys(self):
        """etc/vpnaaa.toml names each key, with its default."""
        from pathlib import Path

        example = (Path(__file__).parent.parent / "etc" / "vpnaaa.toml").read_text()
        for line in ("resumption = false", "session_lifetime = 3600", "session_cache_size = 4096"):
            self.assertIn(f"\n{line}\n", example)
