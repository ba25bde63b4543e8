"""Keys for Wireshark (:mod:`vpnaaa.keylog`), proven by Wireshark itself.

A real client connects (charon over a veth pair; eapol_test over loopback) while tcpdump
captures; then tshark (Debian's package) reads the capture with the files vpnaaa wrote:
the key directory as its configuration directory (``WIRESHARK_CONFIG_DIR``: the
``ikev2_decryption_table`` and ``esp_sa`` tables), the TLS secrets as ``tls.keylog_file``.
What tshark shows only after decryption is asserted: the EAP exchange inside IKE_AUTH's
Encrypted payload (RFC 7296 §3.14, §3.16), and PEAP's phase 2 inside TLS (the inner
EAP-MSCHAPv2 identity). Without the keys tshark shows neither (checked too).
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import sys
from collections.abc import Generator
from pathlib import Path
from typing import Any

from twisted.internet import defer, protocol, reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial import unittest
from twisted.web import client as client_agent

from tests.interop import charon
from tests.interop.test_eapol import USER, EapolTestCase, eap_config
from tests.interop.test_ike_charon import CharonTestCase
from tests.test_admin import UnixEndpoints
from vpnaaa.keylog import ESP_FILE, IKE_FILE, TLS_FILE

TSHARK = shutil.which("tshark")
TCPDUMP = shutil.which("tcpdump") or "/usr/bin/tcpdump"
ENV = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "LC_ALL": "C"}
EAP_REQUEST, EAP_RESPONSE, EAP_SUCCESS = "1", "2", "3"
EAP_MSCHAPV2 = "26"


def unavailable() -> str | None:
    if TSHARK is None:
        return "tshark not found (install Debian's tshark)"
    if not os.path.exists(TCPDUMP) or os.geteuid() != 0:
        return "capturing needs tcpdump and root"
    return None


class _Listening(protocol.ProcessProtocol):
    """tcpdump's stderr says when it captures; its end is awaited at stop."""

    def __init__(self) -> None:
        self.ready: defer.Deferred[None] = defer.Deferred()
        self.ended: defer.Deferred[None] = defer.Deferred()
        self.errors = b""

    def errReceived(self, data: bytes) -> None:
        self.errors += data
        if b"listening on" in self.errors and not self.ready.called:
            self.ready.callback(None)

    def processEnded(self, reason: Any) -> None:
        if not self.ready.called:
            self.ready.errback(RuntimeError(f"tcpdump ended: {self.errors.decode()}"))
        self.ended.callback(None)


class Capture:
    """tcpdump writing ``path`` (packet by packet) from ``interface`` until stopped."""

    def __init__(self, path: Path, interface: str, bpf: str) -> None:
        self.path = path
        self.argv = [TCPDUMP, "--immediate-mode", "-U", "-n", "-i", interface, "-w", str(path), bpf]
        self.process: Any = None
        self.listening = _Listening()

    def start(self) -> defer.Deferred[None]:
        self.process = reactor.spawnProcess(self.listening, TCPDUMP, self.argv, env=ENV)
        return self.listening.ready

    def stop(self) -> defer.Deferred[None]:
        if not self.listening.ended.called:
            self.process.signalProcess(signal.SIGINT)
        return self.listening.ended


@defer.inlineCallbacks
def tshark(
    capture: Path, keys: Path | None, *options: str
) -> Generator[defer.Deferred[Any], Any, list[list[str]]]:
    """tshark's fields (``-T fields`` options in ``options``) per packet, the key
    directory (if any) as its configuration directory; one list per output line."""
    assert TSHARK is not None
    config = keys if keys is not None else capture.parent / "no-keys"
    config.mkdir(exist_ok=True)
    env = {**ENV, "WIRESHARK_CONFIG_DIR": str(config)}
    argv = ("-n", "-r", str(capture), "-o", "esp.enable_encryption_decode:TRUE", *options)
    out, err, code = yield getProcessOutputAndValue(TSHARK, argv, env=env)
    if code != 0:
        raise AssertionError(f"tshark {' '.join(argv)} exited {code}: {err.decode()}")
    return [line.split("\t") for line in out.decode().splitlines() if line]


class IkeKeyTests(CharonTestCase):
    """charon connects with EAP-MSCHAPv2; tshark decrypts its IKE_AUTH with our table."""

    timeout = 90

    def setUp(self) -> Any:
        reason = unavailable()
        if reason:
            raise unittest.SkipTest(reason)
        return super().setUp()

    @defer.inlineCallbacks
    def captured(self, **initiator: Any) -> Generator[defer.Deferred[Any], Any, Path]:
        """Connect charon while tcpdump captures on the gateway's veth end."""
        path = self.state / "ike.pcap"
        capture = Capture(path, self.netns.gateway_if, "udp port 500 or udp port 4500")
        self.addCleanup(capture.stop)
        yield capture.start()
        client, result = yield self.connect(**initiator)
        if not result.ok:
            self.fail(result.output + client.tail())
        yield charon.sleep(0.2)  # the last packets reach the file (-U)
        yield capture.stop()
        return path

    @defer.inlineCallbacks
    def assertDecrypted(self, pcap: Path) -> Generator[defer.Deferred[Any], Any, None]:
        """IKE_AUTH (exchange type 35) shows the EAP conversation only with the keys:
        Identity "alice", MSCHAPv2 requests and responses, the EAP-Success."""
        fields = ("-T", "fields", "-e", "eap.code", "-e", "eap.type", "-e", "eap.identity")
        query = ("-Y", "isakmp.exchangetype == 35", *fields)
        plain = yield tshark(pcap, None, *query)
        self.assertTrue(plain, "no IKE_AUTH captured")
        self.assertEqual([row for row in plain if any(row)], [], "EAP visible without keys")
        rows = yield tshark(pcap, self.keys, *query)
        codes = {code for row in rows for code in row[0].split(",") if code}
        types = {t for row in rows for t in row[1].split(",") if t}
        self.assertEqual(codes, {EAP_REQUEST, EAP_RESPONSE, EAP_SUCCESS}, rows)
        self.assertIn(EAP_MSCHAPV2, types, rows)
        self.assertIn("alice", {row[2] for row in rows if len(row) > 2}, rows)

    def assertPrivate(self) -> None:
        for name in (IKE_FILE, ESP_FILE, TLS_FILE):
            st = os.stat(self.keys / name)
            self.assertEqual(stat.S_IMODE(st.st_mode), 0o600, name)
            self.assertEqual(st.st_uid, os.geteuid(), name)

    @defer.inlineCallbacks
    def test_ike_auth_decrypted_aes_cbc(self):
        """Keys logged from the start ([debug] keylog); AES-CBC-256 with HMAC-SHA2-256."""
        self.start_gateway(extra="[debug]\nkeylog = true\n")
        self.keys = self.state / "keylog"
        pcap = yield self.captured(
            proposals="aes256-sha256-modp2048", esp_proposals="aes256-sha256"
        )
        yield self.assertDecrypted(pcap)
        self.assertPrivate()
        (line,) = (self.keys / IKE_FILE).read_text().splitlines()
        self.assertIn('"AES-CBC-256 [RFC3602]"', line)
        self.assertIn('"HMAC_SHA2_256_128 [RFC4868]"', line)
        (spec,) = self.installer.installed.values()
        esp = (self.keys / ESP_FILE).read_text().splitlines()
        self.assertEqual(len(esp), 2)
        self.assertIn(f'"0x{spec.inbound_spi:08x}"', esp[0])
        self.assertIn(f'"0x{spec.outbound_spi:08x}"', esp[1])

    @defer.inlineCallbacks
    def test_switched_on_later_aes_gcm(self):
        """Off at first: nothing written. `vpnaaa keylog on` (the CLI over the admin socket)
        after charon connected logs the SAs already up, so the capture made before still
        decrypts; AES-GCM-128 (the salt is part of SK_e, RFC 5282 §7.1)."""
        self.start_gateway()
        self.keys = self.state / "keylog"
        pcap = yield self.captured(
            proposals="aes128gcm16-prfsha256-ecp256", esp_proposals="aes128gcm16"
        )
        self.assertFalse(self.keys.exists())
        argv = ["-m", "vpnaaa.cli", "--config", str(self.state / "vpnaaa.toml"), "keylog", "on"]
        out, err, code = yield getProcessOutputAndValue(sys.executable, argv, env=ENV)
        self.assertEqual(code, 0, err.decode())
        self.assertIn("anyone with these files and a capture reads the traffic", out.decode())
        self.assertIn(
            '"AES-GCM-128 with 16 octet ICV [RFC5282]"', (self.keys / IKE_FILE).read_text()
        )
        yield self.assertDecrypted(pcap)
        self.assertPrivate()
        socket = UnixEndpoints(self.state / "admin.sock")
        agent = client_agent.Agent.usingEndpointFactory(reactor, socket)
        response = yield agent.request(b"POST", b"http://localhost/keylog?state=off")
        self.assertEqual(response.code, 200)
        yield client_agent.readBody(response)
        self.assertFalse(self.daemon.keylog.enabled)


class PeapKeyTests(EapolTestCase):
    """eapol_test runs PEAP against the RADIUS server; tshark reads phase 2 with our
    SSLKEYLOGFILE."""

    def setUp(self) -> None:
        reason = unavailable()
        if reason:
            raise unittest.SkipTest(reason)
        super().setUp()
        path = eap_config(self.state)
        with open(path, "a") as f:
            f.write("\n[debug]\nkeylog = true\n")
        self.start(path)
        self.keys = self.state / "keylog"

    @defer.inlineCallbacks
    def test_peap_phase2_decrypted(self):
        pcap = self.state / "radius.pcap"
        capture = Capture(pcap, "lo", f"udp port {self.auth_port}")
        self.addCleanup(capture.stop)
        yield capture.start()
        run = yield self.peap()
        self.assertSucceeded(run)
        yield charon.sleep(0.2)
        yield capture.stop()
        self.assertIn("CLIENT_RANDOM ", (self.keys / TLS_FILE).read_text())
        self.assertEqual(stat.S_IMODE(os.stat(self.keys / TLS_FILE).st_mode), 0o600)
        query = ("-d", f"udp.port=={self.auth_port},radius", "-T", "fields")
        query += ("-e", "eap.identity", "-e", "eap.type")
        plain = yield tshark(pcap, None, *query)
        self.assertNotIn(USER, {i for row in plain for i in row[0].split(",")}, plain)
        keyed = (*query, "-o", f"tls.keylog_file:{self.keys / TLS_FILE}")
        rows = yield tshark(pcap, None, *keyed)
        identities = {i for row in rows for i in row[0].split(",")}
        types = {t for row in rows for t in row[1].split(",")}
        # the outer identity is anonymous; the inner one, and MSCHAPv2, only inside TLS
        self.assertIn("anonymous", identities, rows)
        self.assertIn(USER, identities, rows)
        self.assertIn(EAP_MSCHAPV2, types, rows)
