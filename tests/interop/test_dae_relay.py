"""RFC 5176 Disconnect-Request for sessions of the RADIUS relay, with radclient, charon and
FreeRADIUS (the set-up of :mod:`tests.interop.test_ike_relay`, the DAE port of
:mod:`tests.interop.test_dae_charon`).

FreeRADIUS's Access-Accept names the user it authenticated (RFC 2865 §5.1: User-Name),
and then a Disconnect-Request naming that user ends the session. An Accept naming nobody
(FreeRADIUS told to strip it, as AAA servers that send none) leaves the session's user
name only what charon claimed: a Disconnect-Request naming that user must not end it
(anyone can claim alice's name); its Acct-Session-Id does.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from twisted.internet import defer
from twisted.trial import unittest

from tests.interop import charon, freeradius
from tests.interop.test_dae_charon import SECRET as DAE_SECRET
from tests.interop.test_dae_charon import DaeCase
from tests.interop.test_ike_relay import POOL, SECRET, USERS, RelayTestCase
from tests.interop.test_radclient import RADCLIENT
from tests.support import write_config
from vpnaaa import config as configuration
from vpnaaa.service import make_service


class Anonymous(freeradius.FreeRadius):
    """FreeRADIUS whose Access-Accepts name nobody: its eap module adds the User-Name the
    request carried, and post-auth takes it out again (as AAA servers that send none)."""

    def _write_config(self, port: int) -> None:
        super()._write_config(port)
        site = self.raddb / "sites-enabled" / "default"
        text = site.read_text()
        strip = "post-auth {\n\tupdate reply {\n\t\tUser-Name !* ANY\n\t}\n"
        assert text.count("\npost-auth {\n") == 1, "Debian's default site changed"
        site.write_text(text.replace("\npost-auth {\n", "\n" + strip, 1))


class RelayDaeTests(RelayTestCase):
    radclient = DaeCase.radclient
    assertAnswer = DaeCase.assertAnswer

    @defer.inlineCallbacks
    def setUp(self) -> Generator[defer.Deferred[Any], Any, None]:
        if RADCLIENT is None:
            raise unittest.SkipTest("radclient not found (install Debian's freeradius-utils)")
        yield super().setUp()
        self.requests = 0

    def start_gateway(self, port: int, timeout: float = 2.0, tries: int = 3) -> None:
        gateway = self.netns.gateway_address
        text = (
            f'[general]\nstate_dir = "{self.state}"\nlog_level = "debug"\n'
            f"[radius]\nenabled = false\n[admin]\nenabled = false\n"
            f'[ike]\nenabled = true\ninstaller = "null"\nlisten = "{gateway}"\n'
            f'pool = "{POOL}"\nbackend = "radius"\ndpd_delay = 0\n'
            f'[ike.radius]\nserver = "{freeradius.LOOPBACK}"\nport = {port}\n'
            f'secret = "{SECRET}"\ntimeout = {timeout}\ntries = {tries}\n'
            f'[dae]\nenabled = true\nlisten = "{gateway}"\nport = 0\n'
            f'[[dae.clients]]\nname = "ise"\naddress = "{gateway}"\nsecret = "{DAE_SECRET}"\n'
        )
        path = write_config(self.state / "vpnaaa.toml", text)
        self.daemon = make_service(configuration.load(path))
        self.addCleanup(self.daemon.stopService)
        self.daemon.startService()
        assert self.daemon.ike is not None and self.daemon.dae is not None
        self.responder = self.daemon.ike.responder
        self.installer = self.responder.installer
        self.port = self.daemon.dae.ports[0].getHost().port

    @defer.inlineCallbacks
    def connected(self, anonymous: bool = False) -> Generator[defer.Deferred[Any], Any, Any]:
        server = Anonymous if anonymous else freeradius.FreeRadius
        server = server(
            self.state / "freeradius",
            SECRET,
            USERS,
            default_eap_type="mschapv2",
            reject_delay=0,
        )
        self.addCleanup(server.stop)
        yield server.start()
        self.start_gateway(server.port)
        client, result = yield self.connect()
        if not result.ok:
            self.fail(result.output + client.tail() + "\nFreeRADIUS:\n" + server.tail())
        (sa,) = self.responder.sas.values()
        return client, sa

    @defer.inlineCallbacks
    def assertDeleted(self, client: charon.Charon) -> Generator[defer.Deferred[Any], Any, None]:
        for _ in range(100):
            if not self.responder.sas:
                break
            yield charon.sleep(0.05)
        self.assertEqual(self.responder.sas, {})
        self.assertIn("received DELETE for IKE_SA vpnaaa[1]", client.log_text(), client.tail())

    @defer.inlineCallbacks
    def test_a_name_nobody_vouched_for_ends_nothing(self):
        client, sa = yield self.connected(anonymous=True)
        self.assertFalse(sa.identity_verified)
        by_name = yield self.radclient("disconnect", 'User-Name = "alice"\n')
        self.assertAnswer(by_name, "Disconnect-NAK", "Session-Context-Not-Found")
        self.assertEqual(list(self.responder.sas.values()), [sa])
        self.assertNotIn("received DELETE", client.log_text())
        by_id = yield self.radclient("disconnect", f'Acct-Session-Id = "{sa.session_id}"\n')
        self.assertAnswer(by_id, "Disconnect-ACK")
        yield self.assertDeleted(client)

    @defer.inlineCallbacks
    def test_a_name_the_server_vouched_for(self):
        client, sa = yield self.connected()
        self.assertTrue(sa.identity_verified)
        by_name = yield self.radclient("disconnect", 'User-Name = "alice"\n')
        self.assertAnswer(by_name, "Disconnect-ACK")
        yield self.assertDeleted(client)
