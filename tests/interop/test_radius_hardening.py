"""The RADIUS server's hardening on the wire, against radclient and eapol_test.

- ``listen = "::"`` serves an IPv4 NAS (a dual-stack socket; the source is
  ``::ffff:127.0.0.1`` and matches the client configured as 127.0.0.1).
- FreeRADIUS 3.2.5's BlastRADIUS flags (CVE-2024-3596), both "auto" by default:
  ``require_message_authenticator`` and ``limit_proxy_state``, learned from the client's
  first Access-Request.
- Replies echo Proxy-State (RFC 2865 §5.33) but never exceed 4096 octets: a request whose
  Proxy-State leaves no room is answered with a smaller reply or not at all, never with an
  internal error.
- Access-Rejects leave after ``reject_delay`` (FreeRADIUS's 1 second).
"""

from __future__ import annotations

import os
import time
from collections.abc import Generator

from twisted.internet import defer
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from tests.interop.test_eapol import EAPOL_TEST, PASSWORD, USER, Run, eap_config, network_block
from tests.interop.test_radclient import FAST, RadclientTestCase, mschapv2_attributes
from tests.support import SECRET, add_users, ports, radius_config, start_daemon, write_config
from tests.support import test_pki as pki_files
from vpnaaa.users import User

PAP = 'User-Name = "alice"\nUser-Password = "wonderland"\n'
SIGNED = "Message-Authenticator = 0x00\n"
PROXY_STATE_ID = 33  # RFC 2865 §5.33


def proxy_states(count: int, size: int) -> list[str]:
    """``count`` distinct Proxy-State values of ``size`` octets, as hex."""
    return [(bytes([i]) * size).hex() for i in range(1, count + 1)]


def client(**options: str) -> str:
    """The loopback client entry with extra ``key = value`` lines."""
    extra = "".join(f"{key} = {value}\n" for key, value in options.items())
    return f'[[radius.clients]]\nname = "nas"\naddress = "127.0.0.1"\nsecret = "{SECRET}"\n{extra}'


class HardeningTestCase(RadclientTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.events: list[str] = []
        globalLogPublisher.addObserver(self._observe)
        self.addCleanup(globalLogPublisher.removeObserver, self._observe)

    def _observe(self, event: dict) -> None:
        self.events.append(formatEvent(event) or "")

    def logged(self, text: str) -> list[str]:
        return [line for line in self.events if text in line]


class DualStackTests(HardeningTestCase):
    @defer.inlineCallbacks
    def test_ipv4_nas_reaches_a_server_on_the_ipv6_wildcard(self):
        """radclient sends to 127.0.0.1; the server listens on "::" only; the client entry
        is the IPv4 address and its secret answers the request."""
        text = radius_config(self.state, client()).read_text()
        text = text.replace('listen = "127.0.0.1"', 'listen = "::"')
        self.daemon = start_daemon(self, write_config(self.state / "vpnaaa.toml", text))
        self.auth_port, self.acct_port = ports(self.daemon)
        for port in self.daemon.radius.ports:
            self.assertEqual(port.getHost().host, "::")
        reply = yield self.radclient("auth", PAP + SIGNED)
        self.assertReply(reply, "Access-Accept")
        acct = yield self.radclient(
            "acct", 'User-Name = "alice"\nAcct-Status-Type = Start\nAcct-Session-Id = "d-1"\n'
        )
        self.assertReply(acct, "Accounting-Response")
        self.assertEqual(self.logged("not a configured client"), [])


class BlastRadiusTests(HardeningTestCase):
    """``require_message_authenticator`` and ``limit_proxy_state`` as FreeRADIUS 3.2.5
    ("auto" unless set)."""

    @defer.inlineCallbacks
    def test_auto_requires_it_once_the_client_sent_it(self):
        self.start(client())
        signed = yield self.radclient("auth", PAP + SIGNED)
        self.assertReply(signed, "Access-Accept")
        unsigned = yield self.radclient("auth", PAP, options=FAST)
        self.assertNoReply(unsigned)
        self.assertEqual(len(self.logged("require_message_authenticator = true")), 1)
        self.assertTrue(self.logged("no Message-Authenticator, which this client must send"))

    @defer.inlineCallbacks
    def test_auto_tolerates_a_client_that_never_sent_it(self):
        """A legacy NAS's first request has no Message-Authenticator: it is served, and so
        are later ones; the log says the NAS is open to BlastRADIUS."""
        self.start(client())
        for attributes in (PAP, PAP + SIGNED, PAP):
            reply = yield self.radclient("auth", attributes)
            self.assertReply(reply, "Access-Accept")
        self.assertEqual(len(self.logged("require_message_authenticator = false")), 1)

    @defer.inlineCallbacks
    def test_limit_proxy_state(self):
        """require_message_authenticator = false, limit_proxy_state auto: a first request
        without Proxy-State makes Proxy-State without Message-Authenticator a drop;
        with Message-Authenticator it is served and every Proxy-State echoed in order."""
        self.start(client(require_message_authenticator="false"))
        first = yield self.radclient("auth", PAP)
        self.assertReply(first, "Access-Accept")
        states = proxy_states(3, 20)
        proxied = PAP + "".join(f"Proxy-State = 0x{state}\n" for state in states)
        dropped = yield self.radclient("auth", proxied, options=FAST)
        self.assertNoReply(dropped)
        self.assertTrue(self.logged("Proxy-State without Message-Authenticator"))
        answered = yield self.radclient("auth", proxied + SIGNED)
        self.assertReply(answered, "Access-Accept")
        self.assertEqual(answered.values("Proxy-State"), [f"0x{s}" for s in states])

    @defer.inlineCallbacks
    def test_limit_proxy_state_auto_tolerates_an_old_proxy(self):
        """The first request has Proxy-State and no Message-Authenticator (a proxy not yet
        upgraded): limit_proxy_state becomes false and such requests are served."""
        self.start(client(require_message_authenticator="false"))
        proxied = PAP + f"Proxy-State = 0x{proxy_states(1, 4)[0]}\n"
        for _ in range(2):
            reply = yield self.radclient("auth", proxied)
            self.assertReply(reply, "Access-Accept")
        self.assertEqual(len(self.logged("limit_proxy_state = false")), 1)


class ProxyStateBudgetTests(HardeningTestCase):
    @defer.inlineCallbacks
    def test_reply_that_cannot_fit_is_dropped_not_an_internal_error(self):
        """3,922 octets of Proxy-State in an MS-CHAPv2 request of 4,048: the Access-Accept
        must echo them beside MS-CHAP2-Success and the MPPE keys, 4,119 octets; no answer,
        one log line, no traceback, and the server goes on."""
        self.start(client())
        states = [*proxy_states(15, 250), (b"\xee" * 140).hex()]
        proxied = mschapv2_attributes() + SIGNED
        proxied += "".join(f"Proxy-State = 0x{s}\n" for s in states)
        reply = yield self.radclient("auth", proxied, options=FAST)
        self.assertIn("length 4048", reply.output)
        self.assertNoReply(reply)
        self.assertTrue(self.logged("exceeds 4096"))
        self.assertEqual(self.flushLoggedErrors(), [])
        after = yield self.radclient("auth", PAP + SIGNED)
        self.assertReply(after, "Access-Accept")


class RejectDelayTests(HardeningTestCase):
    @defer.inlineCallbacks
    def test_reject_waits_a_second(self):
        """FreeRADIUS's reject_delay (1 s by default): the reject arrives no sooner."""
        self.start(client())
        started = time.monotonic()
        reply = yield self.radclient("auth", 'User-Name = "alice"\nUser-Password = "x"\n' + SIGNED)
        self.assertRejected(reply)
        self.assertGreaterEqual(time.monotonic() - started, 1.0)


class EapProxyStateTests(unittest.TestCase):
    """PEAP through a proxy whose Proxy-State eats most of the 4096 octets."""

    def setUp(self) -> None:
        if EAPOL_TEST is None:
            raise unittest.SkipTest("eapol_test not found (install Debian's eapoltest)")
        from tests.support import state_dir

        self.state = state_dir(self)
        add_users(self.state, {USER: User.create(USER, PASSWORD)})

    @defer.inlineCallbacks
    def run_peap(self, states: list[str]) -> Generator[defer.Deferred[object], object, Run]:
        """eapol_test PEAPv0/MSCHAPv2 adding ``states`` as Proxy-State to every request."""
        conf = self.state / "eapol.conf"
        conf.write_text(
            network_block(
                key_mgmt="WPA-EAP",
                eap="PEAP",
                identity=USER,
                anonymous_identity="anonymous",
                password=PASSWORD,
                ca_cert=str(pki_files()[0].cert),
                phase1="peapver=0",
                phase2="auth=MSCHAPV2",
            )
        )
        args = ["-c", str(conf), "-a", "127.0.0.1", "-p", str(self.auth_port), "-s", SECRET]
        args += ["-r0", "-t", "10"] + [f"-N{PROXY_STATE_ID}:x:{state}" for state in states]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"}
        out, err, code = yield getProcessOutputAndValue(EAPOL_TEST, args, env=env)
        return Run(code, (out + err).decode("utf-8", "replace"))

    @defer.inlineCallbacks
    def test_large_proxy_state_makes_the_tls_fragments_smaller(self):
        """3,276 octets of Proxy-State leave less than a 1,024-octet PEAP fragment needs:
        the fragments shrink to what is left, every Access-Challenge stays within 4096
        octets and echoes the Proxy-State, and eapol_test completes with its MPPE keys."""
        daemon = start_daemon(self, eap_config(self.state))
        self.auth_port = ports(daemon)[0]
        states = proxy_states(13, 250)
        run = yield self.run_peap(states)
        self.assertEqual(run.exit_code, 0, run.output)
        self.assertIn("MPPE keys OK: 1  mismatch: 0", run.output)
        budget = 4096 - 20 - 18 - 18 - 13 * 252  # header, M-A, State, the Proxy-State
        sizes = [length for length, _ in run.received_fragments()]
        self.assertLessEqual(max(sizes), budget - 2 * 3, sizes)  # three EAP-Message headers
        self.assertGreater(max(sizes), 600, sizes)  # not needlessly small either
        for reply in run.replies("Access-Challenge"):
            self.assertEqual(len(reply.values("Proxy-State")), len(states), run.output)
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual(len(daemon.eap), 0)

    @defer.inlineCallbacks
    def test_small_proxy_state_is_echoed_through_peap(self):
        """A proxy's ordinary Proxy-State rides along the whole PEAP exchange."""
        daemon = start_daemon(self, eap_config(self.state))
        self.auth_port = ports(daemon)[0]
        states = proxy_states(2, 16)
        run = yield self.run_peap(states)
        self.assertEqual(run.exit_code, 0, run.output)
        for reply in run.replies("Access-Challenge") + run.replies("Access-Accept"):
            self.assertEqual(len(reply.values("Proxy-State")), 2, run.output)
