"""Secret files (RADIUS secrets, the configuration holding one inline, the user store, the
admin token): a symbolic link is refused, and so is a file another user owns, checked on
the opened descriptor."""

from __future__ import annotations

import os

from twisted.trial import unittest

from tests.support import state_dir, write_config
from vpnaaa import config
from vpnaaa.users import User, UserStoreError, read_users, write_users

NOBODY = 65534


class SecretFileTests(unittest.TestCase):
    def setUp(self):
        self.state = state_dir(self)
        self.secret = self.state / "nas-secret"
        self.secret.write_text("s3cret\n")
        os.chmod(self.secret, 0o600)

    def load(self, client: str) -> config.Config:
        text = (
            f'[general]\nstate_dir = "{self.state}"\n'
            f'[[radius.clients]]\naddress = "127.0.0.1"\n{client}\n'
        )
        return config.load(write_config(self.state / "vpnaaa.toml", text))

    def assertRefused(self, client: str, reason: str) -> None:
        with self.assertRaises(config.ConfigError) as caught:
            self.load(client)
        self.assertIn(reason, str(caught.exception))

    def test_private_secret_file_is_read(self):
        (client,) = self.load('secret_file = "nas-secret"').radius.clients
        self.assertEqual(client.secret, b"s3cret")

    def test_symbolic_link_is_refused(self):
        (self.state / "link").symlink_to(self.secret)
        self.assertRefused(
            'secret_file = "link"', f"{self.state / 'link'}: holds a secret but is a symbolic link"
        )

    def test_file_of_another_user_is_refused(self):
        if os.geteuid() != 0:
            raise unittest.SkipTest("chown needs root")
        os.chown(self.secret, NOBODY, NOBODY)
        self.assertRefused('secret_file = "nas-secret"', "holds a secret but belongs to ")

    def test_inline_secret_in_a_linked_configuration_is_refused(self):
        real = write_config(
            self.state / "real.toml",
            f'[general]\nstate_dir = "{self.state}"\n'
            '[[radius.clients]]\naddress = "127.0.0.1"\nsecret = "inline"\n',
        )
        link = self.state / "vpnaaa.toml"
        link.symlink_to(real)
        with self.assertRaises(config.ConfigError) as caught:
            config.load(link)
        self.assertEqual(caught.exception.key, "radius.clients[0].secret")
        self.assertIn("is a symbolic link", caught.exception.reason)

    def test_directory_is_refused(self):
        (self.state / "dir").mkdir(mode=0o700)
        self.assertRefused('secret_file = "dir"', "is not a regular file")


class UserFileOwnerTests(unittest.TestCase):
    def setUp(self):
        self.path = state_dir(self) / "users.json"
        write_users(self.path, {"alice": User.create("alice", "pw")})

    def test_symbolic_link_is_refused(self):
        link = self.path.with_name("linked.json")
        link.symlink_to(self.path)
        with self.assertRaises(UserStoreError) as caught:
            read_users(link)
        self.assertIn(
            f"{link}: holds password hashes but is a symbolic link", str(caught.exception)
        )

    def test_owner_must_be_trusted(self):
        if os.geteuid() != 0:
            raise unittest.SkipTest("chown needs root")
        os.chown(self.path, NOBODY, NOBODY)
        with self.assertRaises(UserStoreError) as caught:
            read_users(self.path)
        self.assertIn("belongs to nobody", str(caught.exception))
        self.assertEqual(list(read_users(self.path, owners={NOBODY})), ["alice"])
