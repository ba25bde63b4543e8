"""The RADIUS hardening options: parsing, defaults and the errors that name the key."""

from twisted.trial import unittest

from tests.support import SECRET, state_dir, write_config
from vpnaaa import config as configuration


class OptionTests(unittest.TestCase):
    def setUp(self):
        self.state = state_dir(self)

    def load(self, radius="", client="", users=""):
        text = (
            f'[general]\nstate_dir = "{self.state}"\n[ike]\nenabled = false\n{users}\n'
            f'[radius]\n{radius}\n[[radius.clients]]\naddress = "192.0.2.1"\n'
            f'secret = "{SECRET}"\n{client}'
        )
        return configuration.load(write_config(self.state / "vpnaaa.toml", text))

    def test_defaults_follow_freeradius_3_2_5(self):
        loaded = self.load()
        (client,) = loaded.radius.clients
        self.assertEqual(client.require_message_authenticator, "auto")
        self.assertEqual(client.limit_proxy_state, "auto")
        self.assertFalse(client.allow_chap)
        self.assertFalse(client.allow_mschapv1)
        self.assertEqual(loaded.radius.reject_delay, 1.0)
        self.assertEqual(loaded.radius.pap_queue, 64)
        self.assertEqual((loaded.users.lockout.failures, loaded.users.lockout.window), (10, 600.0))

    def test_values(self):
        loaded = self.load(
            "reject_delay = 0\npap_queue = 8\n",
            "require_message_authenticator = true\nlimit_proxy_state = false\n"
            "allow_chap = true\nallow_mschapv1 = true\n",
            "[users.lockout]\nfailures = 0\nwindow = 30\nduration = 60\n",
        )
        (client,) = loaded.radius.clients
        self.assertEqual(
            (client.require_message_authenticator, client.limit_proxy_state), (True, False)
        )
        self.assertTrue(client.allow_chap and client.allow_mschapv1)
        self.assertEqual((loaded.radius.reject_delay, loaded.radius.pap_queue), (0.0, 8))
        self.assertEqual(loaded.users.lockout.failures, 0)

    def test_errors_name_the_key(self):
        cases = [
            (
                {"client": 'limit_proxy_state = "sometimes"\n'},
                "radius.clients[0].limit_proxy_state",
            ),
            ({"radius": "reject_delay = 11\n"}, "radius.reject_delay"),
            ({"radius": "pap_queue = 0\n"}, "radius.pap_queue"),
            ({"users": "[users.lockout]\nwindow = 0\n"}, "users.lockout.window"),
            ({"users": "[users.lockout]\nthreshold = 3\n"}, "users.lockout.threshold"),
        ]
        for arguments, key in cases:
            with self.assertRaises(configuration.ConfigError) as caught:
                self.load(**arguments)
            self.assertEqual(caught.exception.key, key)
