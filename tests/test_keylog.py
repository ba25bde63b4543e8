"""The Wireshark key log (:mod:`vpnaaa.keylog`) in-process: the scripted initiator of
:mod:`tests.ike_peer` on a fake clock; what the files hold is compared with the keys the
peer holds, field by field in Wireshark's UAT order (packet-isakmp.c ikev2_uat_flds,
packet-ipsec.c esp_uat_flds). tshark reading these files is in tests/interop/test_keylog.py.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import stat
from pathlib import Path

from twisted.trial import unittest

from tests.ike_peer import GATEWAY_ADDRESS, MODP2048_CBC, PEER, Gateway, Initiator
from tests.support import state_dir, write_config
from vpnaaa import config as configuration
from vpnaaa import private
from vpnaaa.ike.const import ExchangeType
from vpnaaa.ike.protocol import Timing
from vpnaaa.keylog import ESP_FILE, IKE_FILE, TLS_FILE, KeyLog, KeyLogError, esp_lines

IKE = 1000.0


def rows(path):
    """The UAT records of a file: comma-separated, names in double quotes."""
    with open(path, newline="") as f:
        return [row for row in csv.reader(f) if row and not row[0].startswith("#")]


class KeyLogTestCase(unittest.TestCase):
    def setUp(self):
        self.state = state_dir(self)
        self.directory = self.state / "keylog"
        self.keylog = KeyLog(self.directory, private.trusted_owners())
        self.addCleanup(self.keylog.close)


class FileTests(KeyLogTestCase):
    def test_off_writes_nothing(self):
        gate = Gateway()
        gate.responder.keylog = self.keylog
        Initiator(gate).connect()
        self.assertFalse(self.directory.exists())

    def test_files_are_private(self):
        self.keylog.enable("a test")
        self.assertEqual(stat.S_IMODE(os.stat(self.directory).st_mode), 0o700)
        for name in (IKE_FILE, ESP_FILE, TLS_FILE):
            st = os.stat(self.directory / name)
            self.assertEqual((stat.S_IMODE(st.st_mode), st.st_uid), (0o600, os.geteuid()))

    def test_a_readable_file_is_refused(self):
        self.directory.mkdir()
        (self.directory / ESP_FILE).write_text("")
        os.chmod(self.directory / ESP_FILE, 0o644)
        with self.assertRaisesRegex(KeyLogError, "chmod 600"):
            self.keylog.enable("a test")
        self.assertFalse(self.keylog.enabled)

    def test_a_link_is_refused(self):
        self.directory.mkdir()
        os.symlink(self.state / "elsewhere", self.directory / IKE_FILE)
        with self.assertRaisesRegex(KeyLogError, "symbolic link"):
            self.keylog.enable("a test")
        self.assertFalse((self.state / "elsewhere").exists())

    def test_tls_lines_are_appended_while_on(self):
        self.keylog.tls(b"CLIENT_RANDOM 00 11")
        self.keylog.enable("a test")
        self.keylog.tls(b"CLIENT_RANDOM 22 33")
        self.keylog.disable("a test")
        self.keylog.tls(b"CLIENT_RANDOM 44 55")
        self.assertEqual((self.directory / TLS_FILE).read_text(), "CLIENT_RANDOM 22 33\n")


class IkeTableTests(KeyLogTestCase):
    def setUp(self):
        super().setUp()
        self.keylog.enable("a test")
        self.gate = Gateway(
            timing=Timing(ike_lifetime=IKE), child_lifetime=100_000, rekey="gateway", dpd_delay=0
        )
        self.gate.responder.keylog = self.keylog

    def assertRecorded(self, ike, encr, integ):
        """The peer's IKE SA is in the table with its SPIs and keys, SPIi first."""
        found = [
            r
            for r in rows(self.directory / IKE_FILE)
            if r[:2] == [ike.spi_i.hex(), ike.spi_r.hex()]
        ]
        keys = ike.keys
        self.assertEqual(
            found,
            [[ike.spi_i.hex(), ike.spi_r.hex(), keys.sk_ei.hex(), keys.sk_er.hex(), encr,
              keys.sk_ai.hex(), keys.sk_ar.hex(), integ]],
        )  # fmt: skip

    def test_aes_gcm_and_both_kinds_of_rekey(self):
        """IKE_SA_INIT's SA; the client's rekey (it is SPIi); the gateway's rekey, after
        which the gateway is the new SA's original initiator: its SPI is SPIi, and SK_ei
        the key of what it sends (§2.18)."""
        peer = Initiator(self.gate)
        peer.connect()
        gcm = "AES-GCM-256 with 16 octet ICV [RFC5282]"
        self.assertRecorded(peer.ike, gcm, "NONE [RFC4306]")
        old = peer.ike
        peer.rekey_ike()
        self.assertTrue(peer.ike.initiator)
        self.assertRecorded(peer.ike, gcm, "NONE [RFC4306]")
        peer.use(old)
        peer.delete_ike()
        peer.use(peer.ike_sas[next(s for s in peer.ike_sas if s != old.spis)])
        self.gate.clock.advance(IKE * 0.85)  # the soft lifetime: the gateway rekeys
        (request,) = peer.gateway_requests()
        self.assertEqual(request.header.exchange, ExchangeType.CREATE_CHILD_SA)
        peer.answer_rekey(request)
        self.assertFalse(peer.ike.initiator)
        self.assertIn(peer.ike.spi_i, self.gate.responder.sas)  # SPIi: the gateway's
        self.assertRecorded(peer.ike, gcm, "NONE [RFC4306]")
        self.assertEqual(len(rows(self.directory / IKE_FILE)), 3)

    def test_aes_cbc_and_the_esp_sas(self):
        peer = Initiator(self.gate, suite=MODP2048_CBC)
        peer.connect()
        self.assertRecorded(peer.ike, "AES-CBC-128 [RFC3602]", "HMAC_SHA2_256_128 [RFC4868]")
        (child,) = peer.children.values()
        inbound, outbound = rows(self.directory / ESP_FILE)
        gcm = "AES-GCM with 16 octet ICV [RFC4106]"
        encr, _ = child.outbound  # what the peer sends: the gateway's inbound SA
        spi = f"0x{child.theirs:08x}"
        self.assertEqual(
            inbound, ["IPv4", PEER.host, GATEWAY_ADDRESS, spi, gcm, f"0x{encr.hex()}", "NULL", "0x"]
        )
        encr, _ = child.inbound
        spi, key = f"0x{child.ours:08x}", f"0x{encr.hex()}"
        expected = ["IPv4", GATEWAY_ADDRESS, PEER.host, spi, gcm, key, "NULL", "0x"]
        self.assertEqual(outbound, expected)

    def test_behind_a_nat_the_clients_address_is_a_wildcard(self):
        """RFC 3948: a capture on the client's side of the NAT sees its private address,
        ours the public one; "*" matches both (Wireshark's esp_sa wildcard)."""
        Initiator(self.gate).connect()
        (spec,) = self.gate.installer.installed.values()
        encapsulated = dataclasses.replace(spec, encapsulation=(4500, 4500))
        inbound, outbound = (
            next(csv.reader([line])) for line in esp_lines(encapsulated).split("\n")[:2]
        )
        self.assertEqual((inbound[1], inbound[2]), ("*", GATEWAY_ADDRESS))
        self.assertEqual((outbound[1], outbound[2]), (GATEWAY_ADDRESS, "*"))

    def test_switched_on_later_logs_what_is_up(self):
        self.keylog.disable("a test")
        peer = Initiator(self.gate)
        peer.connect()
        self.assertEqual(rows(self.directory / IKE_FILE), [])
        self.keylog.enable("a test")
        self.keylog.existing(self.gate.responder.sas.values())
        self.assertRecorded(peer.ike, "AES-GCM-256 with 16 octet ICV [RFC5282]", "NONE [RFC4306]")
        self.assertEqual(len(rows(self.directory / ESP_FILE)), 2)


class ConfigTests(unittest.TestCase):
    def load(self, text):
        state = state_dir(self)
        text = f'[general]\nstate_dir = "{state}"\n[radius]\nenabled = false\n{text}'
        path = write_config(state / "vpnaaa.toml", text)
        return state, configuration.load(path)

    def test_off_by_default_in_the_state_directory(self):
        state, config = self.load("")
        self.assertEqual((config.debug.keylog, config.debug.keylog_dir), (False, state / "keylog"))

    def test_on_elsewhere(self):
        _, config = self.load('[debug]\nkeylog = true\nkeylog_dir = "/srv/keys"\n')
        self.assertEqual((config.debug.keylog, config.debug.keylog_dir), (True, Path("/srv/keys")))

    def test_errors_name_the_key(self):
        with self.assertRaisesRegex(configuration.ConfigError, r"debug\.keylog: expected bool"):
            self.load('[debug]\nkeylog = "yes"\n')
        with self.assertRaisesRegex(configuration.ConfigError, r"debug\.keylog_dir: must name"):
            self.load('[debug]\nkeylog_dir = ""\n')
