"""vpnaaa's EAP over RADIUS against wpa_supplicant's test client, Debian's ``eapol_test``.

Each test starts the daemon in this process on a free UDP port of 127.0.0.1 and runs
``eapol_test`` as a child process (asynchronously: the server answers from the same
reactor). eapol_test plays NAS and supplicant at once: it wraps the peer's EAP in
Access-Requests (RFC 3579 §3.1), copies State, signs with Message-Authenticator (§3.2),
and at the end compares the MS-MPPE-Recv-Key of the Access-Accept (RFC 2548 §2.4.3) with
the MSK its own peer derived. It exits 0 only after EAP-Success with matching keys.

Its standard output is wpa_supplicant's debug log; assertions are on its lines: the
summary (``MPPE keys OK: 1  mismatch: 0``, ``SUCCESS``/``FAILURE``), control events
(``CTRL-EVENT-EAP-SUCCESS``/``-FAILURE``), the RADIUS replies it decoded (``RADIUS
message: code=2 (Access-Accept)`` and the attribute lines below it), the PEAP peer's
cryptobinding verdict ([MS-PEAP] §3.1.5.5) and the EAP-TLS fragments it saw.

Every run ends with no live conversation in the daemon's EAP engine, either because the
conversation finished or, where the peer gave up silently, after the idle timeout.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path

from twisted.internet import defer, reactor, task
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from tests.support import (
    SECRET,
    add_users,
    ports,
    radius_config,
    start_daemon,
    state_dir,
    test_pki,
    write_config,
)
from vpnaaa import pki
from vpnaaa.service import VpnaaaService
from vpnaaa.users import User

EAPOL_TEST = shutil.which("eapol_test")
TIMEOUT = "10"  # eapol_test -t: seconds before it gives up on the whole exchange

USER = "alice"
PASSWORD = "wonderland"
KEYS_OK = "MPPE keys OK: 1  mismatch: 0"
KEYS_MISSING = "MPPE keys OK: 0  mismatch: 1"
EAP_SUCCESS = "CTRL-EVENT-EAP-SUCCESS"
EAP_FAILURE = "CTRL-EVENT-EAP-FAILURE"
VALID_BINDING = "EAP-PEAP: Valid cryptobinding TLV received"
REQUIRE_BINDING = "EAP-PEAP: Require cryptobinding"
NO_BINDING = "EAP-PEAP: No cryptobinding TLV"
MSCHAPV2_691 = (
    "EAP-MSCHAPV2: failure message: 'Authentication failed' (retry not allowed, error 691)"
)
CERT_ERROR = "CTRL-EVENT-EAP-TLS-CERT-ERROR"
UNKNOWN_CA_ALERT = "SSL: SSL3 alert: write (local SSL3 detected an error):fatal:unknown CA"

_MESSAGE = re.compile(r"^RADIUS message: code=(\d+) \(([^)]+)\)")
_ATTRIBUTE = re.compile(r"^   Attribute (\d+) \(([^)]+)\) length=\d+$")
_VALUE = re.compile(r"^      Value: (.*)$")
# wpa_supplicant's EAP-TLS framing log (eap_tls_common.c): one line per PEAP request.
_RECEIVED_FRAGMENT = re.compile(r"^SSL: Received packet\(len=(\d+)\) - Flags 0x([0-9a-f]{2})$")
_SENT_FRAGMENT = re.compile(r"^SSL: sending \d+ bytes, more fragments will follow$")
_MESSAGE_LENGTH = re.compile(r"^SSL: TLS Message Length: (\d+)$")
FLAG_MORE = 0x40  # RFC 5216 §3.1 M bit
PEAP_HEADER = 10  # Code, Identifier, Length, Type, Flags and the TLS Message Length


@dataclass
class RadiusMessage:
    """One RADIUS packet as eapol_test decoded it."""

    code: int
    name: str  # "Access-Request", "Access-Challenge", "Access-Accept", ...
    attributes: list[tuple[str, str]]

    def values(self, name: str) -> list[str]:
        return [value for key, value in self.attributes if key == name]


@dataclass
class Run:
    """What one eapol_test run printed and returned."""

    exit_code: int
    output: str

    @property
    def lines(self) -> list[str]:
        return self.output.splitlines()

    def messages(self) -> list[RadiusMessage]:
        """Every RADIUS packet eapol_test logged, sent and received, in order."""
        found: list[RadiusMessage] = []
        attribute = None
        for line in self.lines:
            if match := _MESSAGE.match(line):
                found.append(RadiusMessage(int(match.group(1)), match.group(2), []))
                attribute = None
            elif found and (match := _ATTRIBUTE.match(line)):
                attribute = match.group(2)
            elif found and attribute and (match := _VALUE.match(line)):
                found[-1].attributes.append((attribute, _unquote(match.group(1))))
                attribute = None
            else:
                attribute = None
        return found

    def replies(self, name: str) -> list[RadiusMessage]:
        return [m for m in self.messages() if m.name == name]

    def received_fragments(self) -> list[tuple[int, int]]:
        """(EAP length, Flags) of each PEAP request the peer received."""
        return [
            (int(m.group(1)), int(m.group(2), 16))
            for line in self.lines
            if (m := _RECEIVED_FRAGMENT.match(line))
        ]


def _unquote(value: str) -> str:
    """eapol_test prints string attributes in single quotes, others as hex or numbers."""
    if len(value) >= 2 and value[0] == value[-1] == "'":
        return value[1:-1]
    return value


def eap_config(
    state: Path,
    *,
    idle_timeout: float | None = None,
    fragment_size: int | None = None,
    eap_options: str = "",
    tls_options: str = "",
) -> Path:
    """:func:`tests.support.radius_config` plus an ``[eap]`` table (``eap_options`` are
    more of its lines) and ``[eap.tls]`` options (``tls_options`` more of them; its
    ``extra`` lands in ``[radius]``, so the text is written here)."""
    _, server = test_pki()
    eap = "[eap]\n" + eap_options
    if idle_timeout is not None:
        eap += f"idle_timeout = {idle_timeout}\n"
    tls = (
        f'[eap.tls]\ncertificate = "{server.cert}"\nkey = "{server.key}"\n'
        f'chain = "{server.chain}"\n{tls_options}'
    )
    if fragment_size is not None:
        tls += f"fragment_size = {fragment_size}\n"
    text = (
        f'[general]\nstate_dir = "{state}"\nlog_level = "debug"\n\n{eap}\n{tls}\n'
        "[ike]\nenabled = false\n\n[admin]\nenabled = false\n\n"
        '[radius]\nlisten = "127.0.0.1"\nauth_port = 0\nacct_port = 0\n\n'
        f'[[radius.clients]]\nname = "loopback"\naddress = "127.0.0.1"\nsecret = "{SECRET}"\n'
    )
    return write_config(state / "vpnaaa.toml", text)


def network_block(**options: str) -> str:
    """A wpa_supplicant ``network={}`` block; values are written as quoted strings
    except the ``key_mgmt``, ``eap`` and ``fragment_size`` keywords."""
    bare = {"key_mgmt", "eap", "fragment_size"}
    body = "".join(
        f"\t{key}={value}\n" if key in bare else f'\t{key}="{value}"\n'
        for key, value in options.items()
    )
    return f"network={{\n{body}}}\n"


class EapolTestCase(unittest.TestCase):
    """A daemon with a few users and a helper that runs eapol_test against it."""

    def setUp(self) -> None:
        if EAPOL_TEST is None:
            raise unittest.SkipTest("eapol_test not found (install Debian's eapoltest)")
        self.state = state_dir(self)
        add_users(
            self.state,
            {USER: User.create(USER, PASSWORD), "bob": User.create("bob", "builder")},
        )
        self.events: list[str] = []
        observer = self._observe
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        self.runs = 0

    def _observe(self, event: dict) -> None:
        text = formatEvent(event)
        if text:
            self.events.append(text)

    def start(self, config: Path | None = None) -> VpnaaaService:
        self.daemon = start_daemon(self, config or radius_config(self.state))
        self.auth_port = ports(self.daemon)[0]
        return self.daemon

    @property
    def live(self) -> int:
        """The EAP engine's live conversation count."""
        assert self.daemon.eap is not None
        return len(self.daemon.eap)

    @defer.inlineCallbacks
    def eapol_test(
        self, *options: str, **network: str
    ) -> Generator[defer.Deferred[object], object, Run]:
        """Run eapol_test once (``-r0``: no re-authentication; more command line
        ``options``) with a network block of ``network`` written to a fresh file in the
        test's state directory."""
        assert EAPOL_TEST is not None
        network.setdefault("key_mgmt", "WPA-EAP")
        self.runs += 1
        conf = self.state / f"eapol-{self.runs}.conf"
        conf.write_text(network_block(**network))
        args = ("-c", str(conf), "-a", "127.0.0.1", "-p", str(self.auth_port))
        args += ("-s", SECRET, "-r0", "-t", TIMEOUT, *options)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"}
        out, err, code = yield getProcessOutputAndValue(EAPOL_TEST, args, env=env)
        return Run(code, (out + err).decode("utf-8", "replace"))

    def peap(self, identity: str = USER, password: str = PASSWORD, **network: str):
        """PEAPv0 with inner EAP-MSCHAPv2, anonymous outer identity, the test CA trusted."""
        options = {
            "eap": "PEAP",
            "identity": identity,
            "anonymous_identity": "anonymous",
            "password": password,
            "ca_cert": str(test_pki()[0].cert),
            "phase1": "peapver=0",
            "phase2": "auth=MSCHAPV2",
        }
        options.update(network)
        return self.eapol_test(**options)

    def assertSucceeded(self, run: Run, user: str = USER) -> None:
        """EAP-Success, the keys matched, and one Access-Accept (carrying EAP-Success,
        RFC 3579 §2.6.3) names ``user`` in User-Name; no conversation is left behind."""
        self.assertEqual(run.exit_code, 0, run.output)
        self.assertIn(KEYS_OK, run.lines, run.output)
        self.assertEqual(run.lines[-1], "SUCCESS", run.output)
        self.assertIn(EAP_SUCCESS, run.output)
        accepts = run.replies("Access-Accept")
        self.assertEqual(len(accepts), 1, run.output)
        self.assertEqual(accepts[0].values("User-Name"), [user], run.output)
        self.assertEqual(run.replies("Access-Reject"), [], run.output)
        self.assertEqual(self.live, 0)

    def assertRejected(self, run: Run) -> None:
        """Access-Reject with EAP-Failure (RFC 3579 §2.6.3), no keys, nothing left live."""
        self.assertNotEqual(run.exit_code, 0, run.output)
        self.assertEqual(run.lines[-1], "FAILURE", run.output)
        self.assertIn(KEYS_MISSING, run.lines, run.output)
        self.assertEqual(run.replies("Access-Accept"), [], run.output)
        rejects = run.replies("Access-Reject")
        self.assertEqual(len(rejects), 1, run.output)
        self.assertEqual(rejects[0].values("Reply-Message"), ["Authentication failed"])
        self.assertIn("decapsulated EAP packet (code=4", run.output)  # EAP-Failure
        self.assertIn("EAP: Received EAP-Failure", run.lines, run.output)
        self.assertIn(EAP_FAILURE, run.output)
        self.assertEqual(self.live, 0)

    def logged(self, text: str) -> list[str]:
        return [event for event in self.events if text in event]


class PeapTests(EapolTestCase):
    """PEAPv0 with inner EAP-MSCHAPv2 and [MS-PEAP] cryptobinding."""

    def setUp(self) -> None:
        super().setUp()
        self.start()

    @defer.inlineCallbacks
    def test_anonymous_outer_identity(self):
        """The outer Identity is "anonymous" (what the NAS sees in User-Name); the inner
        one is the user, and the Access-Accept's User-Name is the inner identity. The
        server certificate chains to the configured CA (``ca_cert``)."""
        run = yield self.peap()
        self.assertSucceeded(run)
        requests = run.replies("Access-Request")
        self.assertTrue(requests, run.output)
        self.assertEqual({r.values("User-Name")[0] for r in requests}, {"anonymous"})
        self.assertIn(
            "EAP: Status notification: remote certificate verification (param=success)", run.lines
        )
        self.assertIn(VALID_BINDING, run.lines, run.output)  # crypto_binding=1 by default
        self.assertTrue(self.logged("Access-Accept EAP-PEAP user 'alice'"), self.events)

    @defer.inlineCallbacks
    def test_cryptobinding_required(self):
        """``crypto_binding=2``: the peer refuses a tunnel without a valid Crypto-Binding
        TLV ([MS-PEAP] §2.2.8.2); the keys are then the compound session key (§3.1.5.7)."""
        run = yield self.peap(phase1="peapver=0 crypto_binding=2")
        self.assertIn(REQUIRE_BINDING, run.lines, run.output)
        self.assertIn(VALID_BINDING, run.lines, run.output)
        self.assertSucceeded(run)

    @defer.inlineCallbacks
    def test_cryptobinding_off(self):
        """``crypto_binding=0``: the peer ignores the Crypto-Binding TLV and answers
        without one; both sides use the plain TLS MSK (RFC 5216 §2.3)."""
        run = yield self.peap(phase1="peapver=0 crypto_binding=0")
        self.assertNotIn(VALID_BINDING, run.lines)
        self.assertSucceeded(run)
        self.assertTrue(self.logged("sent no cryptobinding TLV"), self.events)

    @defer.inlineCallbacks
    def test_windows_domain_identity(self):
        """A Windows-style inner identity ``CORP\\alice`` authenticates alice: the domain
        is stripped for the user lookup and the MS-CHAPv2 challenge hash (RFC 2759 §8.2)
        and the Access-Accept names alice."""
        run = yield self.peap(identity="CORP\\alice")
        # The peer really sent the domain (hexdump_ascii of the 10 octets CORP\alice).
        real = run.lines.index("EAP: using real identity - hexdump_ascii(len=10):")
        self.assertIn("CORP\\alice", run.lines[real + 1])
        self.assertIn("EAP-MSCHAPV2: Received success", run.lines, run.output)
        self.assertSucceeded(run, user=USER)

    @defer.inlineCallbacks
    def test_wrong_password(self):
        """A wrong password: MS-CHAPv2 Failure E=691 inside the tunnel, the Result TLV
        says failure ([MS-PEAP] §2.2.8.1), then Access-Reject with EAP-Failure."""
        run = yield self.peap(password="looking-glass")
        self.assertIn(MSCHAPV2_691, run.lines, run.output)
        self.assertIn("EAP-TLV: TLV Result - Failure", run.lines, run.output)
        self.assertRejected(run)
        self.assertTrue(self.logged("Access-Reject EAP user 'alice'"), self.events)

    @defer.inlineCallbacks
    def test_unknown_user(self):
        """An unknown inner identity fails like a wrong password (same E=691)."""
        run = yield self.peap(identity="mallory", password="whatever")
        self.assertIn(MSCHAPV2_691, run.lines, run.output)
        self.assertRejected(run)

    @defer.inlineCallbacks
    def test_another_user_after_failures(self):
        """Failures leave nothing behind that disturbs the next conversation."""
        failed = yield self.peap(password="nope")
        self.assertRejected(failed)
        run = yield self.peap(identity="bob", password="builder")
        self.assertSucceeded(run, user="bob")


class RequiredCryptobindingTests(EapolTestCase):
    """``peap_cryptobinding = "required"`` (hostapd's crypto_binding=2): a peer that does
    not answer the Crypto-Binding TLV ([MS-PEAP] §2.2.8.2) is refused, though its
    password is right."""

    def setUp(self) -> None:
        super().setUp()
        self.start(eap_config(self.state, eap_options='peap_cryptobinding = "required"\n'))

    @defer.inlineCallbacks
    def test_peer_with_cryptobinding_succeeds(self):
        run = yield self.peap(phase1="peapver=0 crypto_binding=2")
        self.assertIn(VALID_BINDING, run.lines, run.output)
        self.assertSucceeded(run)

    @defer.inlineCallbacks
    def test_peer_without_cryptobinding_is_refused(self):
        """``crypto_binding=0``: the inner MS-CHAPv2 succeeds (the peer verifies the
        server's S= response), the peer answers the Result TLV without a binding, and
        gets Access-Reject with EAP-Failure: no keys, nothing left live. (The peer's
        method had already decided success, so it discards the EAP-Failure without a
        CTRL-EVENT-EAP-FAILURE event; it still ends in FAILURE.)"""
        run = yield self.peap(phase1="peapver=0 crypto_binding=0")
        self.assertIn("EAP-MSCHAPV2: Received success", run.lines, run.output)
        self.assertNotIn(VALID_BINDING, run.lines)
        self.assertNotEqual(run.exit_code, 0, run.output)
        self.assertEqual(run.lines[-1], "FAILURE", run.output)
        self.assertIn(KEYS_MISSING, run.lines, run.output)
        self.assertEqual(run.replies("Access-Accept"), [], run.output)
        self.assertEqual(len(run.replies("Access-Reject")), 1, run.output)
        self.assertIn("EAP: Received EAP-Failure", run.lines, run.output)
        self.assertNotIn(EAP_SUCCESS, run.output)
        self.assertEqual(self.live, 0)
        rejects = self.logged("Access-Reject EAP user 'alice'")
        self.assertEqual(len(rejects), 1, self.events)
        self.assertIn("no Crypto-Binding TLV (peap_cryptobinding = required)", rejects[0])


TLS13 = "tls_disable_tlsv1_3=0 peapver=0"  # wpa_supplicant 2.10 offers TLS 1.3 only so
TLS_VERSION = re.compile(r"^SSL: Using TLS version (TLSv1\.[0-9])$")
_PEER_KEY = re.compile(r"^EAP-PEAP: (Derived key|TK) - hexdump\(len=(\d+)\): ([0-9a-f ]+)$")


def tls_versions(run: Run) -> set[str]:
    return {m.group(1) for line in run.lines if (m := TLS_VERSION.match(line))}


class Tls13PeapTests(EapolTestCase):
    """PEAPv0 over TLS 1.3 (RFC 9427) with the default ``max_version = "1.3"``. eapol_test
    compares the Access-Accept's MS-MPPE keys with the MSK its own peer derived: without
    cryptobinding that is Key_Material[0:64] = TLS-Exporter("EXPORTER_EAP_TLS_Key_Material",
    0x19, 128) (RFC 9427 §2.1), with it the compound session key whose Tunnel Key is
    Key_Material[0:60] (RFC 9427 §2.5, [MS-PEAP] §3.1.5.5.2); "MPPE keys OK" means vpnaaa
    derived the same."""

    def setUp(self) -> None:
        super().setUp()
        self.start()

    def assertTls13(self, run: Run) -> None:
        self.assertEqual(tls_versions(run), {"TLSv1.3"}, run.output)

    @defer.inlineCallbacks
    def test_exporter_msk_without_cryptobinding(self):
        run = yield self.peap(phase1=f"{TLS13} crypto_binding=0")
        self.assertTls13(run)
        self.assertNotIn(VALID_BINDING, run.lines)
        self.assertSucceeded(run)
        self.assertTrue(self.logged("sent no cryptobinding TLV"), self.events)

    @defer.inlineCallbacks
    def test_cryptobinding_optional(self):
        """The peer's default, crypto_binding=1: it answers the Crypto-Binding TLV."""
        run = yield self.peap(phase1=TLS13)
        self.assertTls13(run)
        self.assertIn(VALID_BINDING, run.lines, run.output)
        self.assertSucceeded(run)

    @defer.inlineCallbacks
    def test_cryptobinding_required(self):
        """crypto_binding=2: the peer checks our Compound MAC, whose CMK comes from the
        TLS 1.3 Tunnel Key; the peer's TK is the first 60 octets of its TLS MSK (both
        logged by eapol_test), Key_Material[0:60] as RFC 9427 §2.5 says."""
        run = yield self.peap(phase1=f"{TLS13} crypto_binding=2")
        self.assertTls13(run)
        self.assertIn(REQUIRE_BINDING, run.lines, run.output)
        self.assertIn(VALID_BINDING, run.lines, run.output)
        self.assertSucceeded(run)
        # The peer's TLS MSK (logged when phase 1 ends), its TK, then its final key (CSK).
        keys = [(m.group(1), m.group(3)) for line in run.lines if (m := _PEER_KEY.match(line))]
        self.assertEqual([name for name, _ in keys], ["Derived key", "TK", "Derived key"])
        self.assertEqual(keys[1][1], keys[0][1][: 60 * 3 - 1], run.output)

    @defer.inlineCallbacks
    def test_wrong_password(self):
        """Phase 2 failure over TLS 1.3: the Result TLV says failure inside the tunnel and
        no EAP-Success is ever sent; Access-Reject with EAP-Failure."""
        run = yield self.peap(password="looking-glass", phase1=TLS13)
        self.assertTls13(run)
        self.assertIn(MSCHAPV2_691, run.lines, run.output)
        self.assertIn("EAP-TLV: TLV Result - Failure", run.lines, run.output)
        self.assertRejected(run)

    @defer.inlineCallbacks
    def test_tls12_peer(self):
        """A peer that keeps TLS 1.3 off (wpa_supplicant 2.10's default) still gets PEAP
        over TLS 1.2 from the same server."""
        run = yield self.peap(phase1="peapver=0 crypto_binding=2")
        self.assertEqual(tls_versions(run), {"TLSv1.2"}, run.output)
        self.assertIn(VALID_BINDING, run.lines, run.output)
        self.assertSucceeded(run)


SELECTED_SUITE = re.compile(r"^OpenSSL: Server selected cipher suite 0x([0-9a-f]{4})$")
ECDHE_RSA_AES128_GCM_SHA256 = 0xC02F  # RFC 5289
ECDHE_RSA_AES256_CBC_SHA384 = 0xC028  # RFC 5289


class CipherTests(EapolTestCase):
    """The PEAP server's TLS 1.2 suites: ECDHE with AEAD, chosen by the server's order,
    and the one CBC suite kept for Windows before 10; no other."""

    def setUp(self) -> None:
        super().setUp()
        self.start()

    @staticmethod
    def suite(run: Run) -> int:
        (suite,) = [int(m.group(1), 16) for line in run.lines if (m := SELECTED_SUITE.match(line))]
        return suite

    @defer.inlineCallbacks
    def test_server_order_wins(self):
        """The peer lists the CBC suite first; the server picks ECDHE-RSA-AES128-GCM."""
        run = yield self.peap(openssl_ciphers="ECDHE-RSA-AES256-SHA384:ECDHE-RSA-AES128-GCM-SHA256")
        self.assertSucceeded(run)
        self.assertEqual(self.suite(run), ECDHE_RSA_AES128_GCM_SHA256, run.output)

    @defer.inlineCallbacks
    def test_the_kept_cbc_suite_works(self):
        """What Windows 7-8.1 offer best with an RSA certificate."""
        run = yield self.peap(openssl_ciphers="ECDHE-RSA-AES256-SHA384")
        self.assertSucceeded(run)
        self.assertEqual(self.suite(run), ECDHE_RSA_AES256_CBC_SHA384, run.output)

    @defer.inlineCallbacks
    def test_other_non_aead_suites_are_refused(self):
        """RSA key exchange (no forward secrecy) and ECDHE with SHA-1 CBC: no shared
        cipher; the ClientHello gets Access-Reject with EAP-Failure."""
        run = yield self.peap(openssl_ciphers="AES256-SHA256:AES128-SHA:ECDHE-RSA-AES128-SHA")
        self.assertRejected(run)
        self.assertNotIn(EAP_SUCCESS, run.output)
        rejects = self.logged("Access-Reject EAP user 'anonymous'")
        self.assertEqual(len(rejects), 1, self.events)
        self.assertIn("TLS: no shared cipher", rejects[0])


class MsChapV2Tests(EapolTestCase):
    """Bare EAP-MSCHAPv2 (draft-kamath-pppext-eap-mschapv2) outside any tunnel."""

    def setUp(self) -> None:
        super().setUp()
        self.start()

    def mschapv2(self, identity: str = USER, password: str = PASSWORD):
        return self.eapol_test(eap="MSCHAPV2", identity=identity, password=password)

    @defer.inlineCallbacks
    def test_success(self):
        """The server proposes PEAP first; the peer Naks (RFC 3748 §5.3.1) for MS-CHAPv2
        and gets keys from its MasterKey (RFC 3079 §3)."""
        run = yield self.mschapv2()
        self.assertIn(
            "CTRL-EVENT-EAP-METHOD EAP vendor 0 method 26 (MSCHAPV2) selected",
            run.lines,
            run.output,
        )
        self.assertSucceeded(run)

    @defer.inlineCallbacks
    def test_wrong_password(self):
        run = yield self.mschapv2(password="looking-glass")
        self.assertIn(MSCHAPV2_691, run.lines, run.output)
        self.assertRejected(run)

    @defer.inlineCallbacks
    def test_unknown_user(self):
        run = yield self.mschapv2(identity="mallory", password="whatever")
        self.assertIn(MSCHAPV2_691, run.lines, run.output)
        self.assertRejected(run)


class IdleTimeoutTests(EapolTestCase):
    """Conversations the peer abandons are dropped after ``[eap] idle_timeout``."""

    IDLE = 1.0

    def setUp(self) -> None:
        super().setUp()
        self.start(eap_config(self.state, idle_timeout=self.IDLE))

    def expire(self) -> defer.Deferred[int]:
        """Wait past the idle timeout, then sweep (the daemon's own timer runs every
        5 s, too slow to wait for here)."""
        assert self.daemon.eap is not None
        return task.deferLater(reactor, self.IDLE + 0.2, self.daemon.eap.expire)

    @defer.inlineCallbacks
    def test_untrusted_server_certificate(self):
        """A peer that does not trust the server's CA aborts the handshake with a fatal
        unknown_ca alert (RFC 5246 §7.2.2). The daemon logs the TLS error, answers
        Access-Reject with EAP-Failure, stays up, and keeps nothing live."""
        other = pki.init_ca(state_dir(self) / "other-ca", "some other CA")
        run = yield self.peap(ca_cert=str(other.cert))
        self.assertIn(CERT_ERROR, run.output)
        self.assertIn("error 19 (self-signed certificate in certificate chain)", run.output)
        self.assertIn(UNKNOWN_CA_ALERT, run.lines, run.output)
        self.assertNotIn(VALID_BINDING, run.lines)
        self.assertRejected(run)
        rejects = self.logged("Access-Reject EAP user 'anonymous'")
        self.assertEqual(len(rejects), 1, self.events)
        self.assertIn("TLS: tlsv1 alert unknown ca", rejects[0])
        yield self.expire()
        self.assertEqual(self.live, 0)
        run = yield self.peap()
        self.assertSucceeded(run)

    @defer.inlineCallbacks
    def test_peer_abandons_after_failure_result(self):
        """With ``crypto_binding=2`` wpa_supplicant treats a Result TLV without a
        Crypto-Binding TLV as a protocol error and stops without answering, even though
        the result was failure anyway: no Access-Reject ever goes out, and the
        conversation waits for an answer that never comes until the idle timeout."""
        run = yield self.peap(password="looking-glass", phase1="peapver=0 crypto_binding=2")
        self.assertNotEqual(run.exit_code, 0, run.output)
        self.assertEqual(run.lines[-1], "FAILURE", run.output)
        self.assertIn(NO_BINDING, run.lines, run.output)
        self.assertIn(EAP_FAILURE, run.output)
        self.assertEqual(run.replies("Access-Reject"), [], run.output)
        self.assertEqual(self.live, 1)
        dropped = yield self.expire()
        self.assertEqual(dropped, 1)
        self.assertEqual(self.live, 0)
        self.assertTrue(self.logged("expired 1 idle EAP conversations"), self.events)


class FragmentTests(EapolTestCase):
    """EAP-TLS framing (RFC 5216 §3.1-3.2, used by PEAP) with both sides' limits set."""

    @defer.inlineCallbacks
    def check(self, size: int):
        """Server ``[eap.tls] fragment_size`` and the peer's ``fragment_size`` both
        ``size``: the server's certificate flight arrives in ceil(length / size)
        fragments, the first with L and M, each but the last acknowledged by the peer,
        none longer than the limit; then phase 2 and cryptobinding as usual."""
        self.start(eap_config(self.state, fragment_size=size))
        run = yield self.peap(fragment_size=str(size), phase1="peapver=0 crypto_binding=2")
        self.assertSucceeded(run)
        self.assertIn(VALID_BINDING, run.lines, run.output)
        announced = [int(m.group(1)) for line in run.lines if (m := _MESSAGE_LENGTH.match(line))]
        self.assertEqual(len(announced), 1, run.output)  # one flight needed fragmenting
        fragments = run.received_fragments()
        more = [flags for _, flags in fragments if flags & FLAG_MORE]
        self.assertEqual(len(more) + 1, -(-announced[0] // size), run.output)
        self.assertGreater(len(more) + 1, 1)
        self.assertEqual(more[0], 0xC0, run.output)  # L and M on the first (RFC 5216 §3.1)
        self.assertEqual(set(more[1:]), {FLAG_MORE} if more[1:] else set(), run.output)
        # One ACK per M fragment, plus the empty response with which the PEAP peer
        # acknowledges the server's Finished before phase 2 starts.
        acks = [line for line in run.lines if line.startswith("SSL: Building ACK")]
        self.assertEqual(len(acks), len(more) + 1, run.output)
        self.assertLessEqual(max(length for length, _ in fragments), size + PEAP_HEADER)
        return run

    @defer.inlineCallbacks
    def test_300(self):
        run = yield self.check(300)
        self.assertGreaterEqual(len(run.received_fragments()), 9, run.output)

    def test_1398(self):
        """wpa_supplicant's default fragment size (the server's default is 1024)."""
        return self.check(1398)

    @defer.inlineCallbacks
    def test_peer_fragments(self):
        """The peer sends 100-octet fragments: its ClientHello arrives in pieces, the
        server reassembles them, acknowledging each one with an empty request."""
        self.start(eap_config(self.state))
        run = yield self.peap(fragment_size="100")
        self.assertSucceeded(run)
        lines = [line for line in run.lines if line.startswith("SSL: ")]
        sent = [i for i, line in enumerate(lines) if _SENT_FRAGMENT.match(line)]
        self.assertTrue(sent, run.output)
        for i in sent:  # the next request is the server's ACK: Flags only (RFC 5216 §3.2)
            answer = next(line for line in lines[i + 1 :] if _RECEIVED_FRAGMENT.match(line))
            self.assertEqual(answer, "SSL: Received packet(len=6) - Flags 0x00", run.output)
