"""RADIUS Dynamic Authorization (RFC 5176) proven with FreeRADIUS's radclient and charon.

charon holds a session through the gateway (:mod:`tests.interop.charon`, a namespace of its
own); radclient, as the AAA server, sends Disconnect-Request and CoA-Request to the
daemon's ``[dae]`` port on the gateway's address and prints the reply it verified (code,
Error-Cause by its own dictionary's names). What the session does is read from charon's log
(the gateway's DELETE) and the gateway's one line per session end.
"""

from __future__ import annotations

import os
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial import unittest

from tests.interop.test_ike_lifecycle_charon import SLACK, LifecycleCase
from tests.interop.test_radclient import FAST, PATIENT, RADCLIENT, Reply, parse_radclient

SECRET = "dae-testing-secret"


class DaeCase(LifecycleCase):
    @defer.inlineCallbacks
    def setUp(self) -> Generator[defer.Deferred[Any], Any, None]:
        if RADCLIENT is None:
            raise unittest.SkipTest("radclient not found (install Debian's freeradius-utils)")
        yield super().setUp()
        self.requests = 0
        gateway = self.netns.gateway_address
        self.start_gateway(
            "dpd_delay = 0\n"
            f'[dae]\nenabled = true\nlisten = "{gateway}"\nport = 0\nnas_identifier = "vpn-gw"\n'
            f'[[dae.clients]]\nname = "freeradius"\naddress = "{gateway}"\nsecret = "{SECRET}"\n'
        )
        self.port = self.daemon.dae.ports[0].getHost().port
        self.charon = yield self.client("charon")
        (self.sa,) = self.responder.sas.values()

    @defer.inlineCallbacks
    def radclient(
        self,
        command: str,
        attributes: str,
        *,
        secret: str = SECRET,
        options: tuple[str, ...] = PATIENT,
        netns: str | None = None,
    ) -> Generator[defer.Deferred[Any], Any, Reply]:
        """``radclient -x`` sending one ``command`` (disconnect, coa) to the DAE port, from
        the root namespace (the configured client's address) unless ``netns`` is given."""
        self.requests += 1
        request = Path(self.state, f"dae-request-{self.requests}.txt")
        request.write_text(attributes)
        target = f"{self.netns.gateway_address}:{self.port}"
        argv = [RADCLIENT, "-x", *options, "-f", str(request), target, command, secret]
        if netns is not None:
            argv = ["/usr/sbin/ip", "netns", "exec", netns, *argv]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"}
        out, err, code = yield getProcessOutputAndValue(argv[0], argv[1:], env=env)
        return parse_radclient((out + err).decode("utf-8", "replace"), code)

    def assertAnswer(self, reply: Reply, code: str, cause: str | None = None) -> None:
        self.assertEqual(reply.code, code, reply.output)
        self.assertEqual(reply.values("Error-Cause"), [cause] if cause else [], reply.output)

    def assertSilence(self, reply: Reply) -> None:
        self.assertIsNone(reply.code, reply.output)
        self.assertIn("No reply from server", reply.output)

    def assertSessionHeld(self) -> None:
        self.assertEqual(list(self.responder.sas.values()), [self.sa])
        self.assertNotIn("received DELETE", self.charon.log_text())

    @defer.inlineCallbacks
    def assertDeleted(self, within: float) -> Generator[defer.Deferred[Any], Any, float]:
        """charon received the gateway's DELETE for its IKE_SA and nothing is left."""
        took = yield self.until(lambda: not self.responder.sas, within, "the IKE SA ends")
        log = self.charon.log_text()
        self.assertIn("received DELETE for IKE_SA vpnaaa[1]", log, self.charon.tail())
        self.assertNothingLeft()
        return took


class DisconnectTests(DaeCase):
    @defer.inlineCallbacks
    def test_matching_and_not_matching(self):
        """§2.1, §3: a Disconnect-Request naming no session of this NAS gets a
        Disconnect-NAK with Session-Context-Not-Found (503), one naming another NAS (by
        NAS-Identifier, or a loopback NAS-IP-Address, which every host has)
        NAS-Identification-Mismatch (403), one with a Service-Type Invalid-Request (404),
        and charon keeps its session; one naming it (session id, user, its virtual IP,
        this NAS: the gateway's interface address, as the kernel lists it; with
        Message-Authenticator and a current Event-Timestamp) gets a Disconnect-ACK and
        charon receives the DELETE."""
        now = int(time.time())
        wrong = yield self.radclient("disconnect", 'Acct-Session-Id = "0123456789ABCDEF"\n')
        self.assertAnswer(wrong, "Disconnect-NAK", "Session-Context-Not-Found")
        other_nas = yield self.radclient(
            "disconnect", 'User-Name = "alice"\nNAS-Identifier = "another-nas"\n'
        )
        self.assertAnswer(other_nas, "Disconnect-NAK", "NAS-Identification-Mismatch")
        loopback = yield self.radclient(
            "disconnect", 'User-Name = "alice"\nNAS-IP-Address = 127.0.0.1\n'
        )
        self.assertAnswer(loopback, "Disconnect-NAK", "NAS-Identification-Mismatch")
        service = yield self.radclient("disconnect", 'User-Name = "alice"\nService-Type = 17\n')
        self.assertAnswer(service, "Disconnect-NAK", "Invalid-Request")  # §3.2: MUST NOT
        self.assertSessionHeld()
        (vip,) = (yield self.charon.list_sas())[0].local_vips
        reply = yield self.radclient(
            "disconnect",
            f'Acct-Session-Id = "{self.sa.session_id}"\nUser-Name = "alice"\n'
            f"Framed-IP-Address = {vip}\nNAS-IP-Address = {self.netns.gateway_address}\n"
            f'NAS-Identifier = "vpn-gw"\nEvent-Timestamp = {now}\n'
            "Message-Authenticator = 0x00\n",
        )
        self.assertAnswer(reply, "Disconnect-ACK")
        yield self.assertDeleted(2 * SLACK)
        (end,) = self.session_ends()
        self.assertIn("disconnected by RADIUS Disconnect-Request from freeradius", end)


class CoaTests(DaeCase):
    @defer.inlineCallbacks
    def test_session_timeout(self):
        """§2.2: a CoA-Request for no session gets CoA-NAK 503, one with an attribute this
        NAS cannot apply CoA-NAK Unsupported-Attribute (401) and changes nothing; State
        comes back unmodified in the NAK and the ACK (§3.3); a
        Session-Timeout of 3 s for charon's session gets a CoA-ACK, and 3 s later the
        gateway deletes the session (charon logs the DELETE)."""
        nobody = yield self.radclient(
            "coa", 'User-Name = "bob"\nSession-Timeout = 3\nState = 0x0102ff\n'
        )
        self.assertAnswer(nobody, "CoA-NAK", "Session-Context-Not-Found")
        self.assertEqual(nobody.values("State"), ["0x0102ff"], nobody.output)  # §3.3
        unsupported = yield self.radclient(
            "coa", 'User-Name = "alice"\nSession-Timeout = 1\nFilter-Id = "guest"\n'
        )
        self.assertAnswer(unsupported, "CoA-NAK", "Unsupported-Attribute")
        reply = yield self.radclient(
            "coa",
            f'Acct-Session-Id = "{self.sa.session_id}"\nSession-Timeout = 3\nState = "s-1"\n',
        )
        acked = time.monotonic()
        self.assertAnswer(reply, "CoA-ACK")
        self.assertEqual(reply.values("State"), ["0x732d31"], reply.output)  # "s-1"
        self.assertSessionHeld()  # the unsupported one's 1 s did not happen
        yield self.assertDeleted(3 + 2 * SLACK)
        self.assertGreater(time.monotonic() - acked, 2.5)
        (end,) = self.session_ends()
        self.assertIn("ended: session timeout", end)


class SecurityTests(DaeCase):
    @defer.inlineCallbacks
    def test_what_gets_no_answer(self):
        """No answer, and charon keeps its session: a wrong secret (§2.3 Request
        Authenticator), a replayed request whose Event-Timestamp is stale (§6.3), an
        address that is no DAE client (radclient in charon's namespace; one log line)."""
        alice = 'User-Name = "alice"\n'
        wrong = yield self.radclient("disconnect", alice, secret="not-the-secret", options=FAST)
        self.assertSilence(wrong)
        stale = f"{alice}Event-Timestamp = {int(time.time()) - 301}\n"
        replayed = yield self.radclient("disconnect", stale, options=FAST)
        self.assertSilence(replayed)
        for _ in range(2):
            stranger = yield self.radclient(
                "disconnect", alice, options=FAST, netns=self.netns.name
            )
            self.assertSilence(stranger)
        self.assertSessionHeld()
        dropped = [line for line in self.lines if "not a configured DAE client" in line]
        self.assertEqual(len(dropped), 1, dropped)
        self.assertTrue(any("bad Request Authenticator" in line for line in self.lines))
        self.assertTrue(any("off our clock" in line for line in self.lines))
