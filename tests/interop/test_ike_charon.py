"""vpnaaa's IKEv2 responder against strongSwan's charon as the initiator (RFC 7296).

charon runs in its own network namespace (:mod:`tests.interop.charon`), vpnaaa in this
process on the gateway end of the veth pair, UDP 500/4500. Each test checks what charon
reports (``swanctl --list-sas``: ESTABLISHED, the virtual IP, the algorithms) and that the
CHILD_SA keys vpnaaa's null installer recorded equal the keys charon logged.
"""

from __future__ import annotations

import json
import os
from collections.abc import Generator
from typing import Any

from twisted.internet import defer, reactor
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest
from twisted.web import client as client_agent

from tests.interop import charon
from tests.support import add_users, state_dir, write_config
from tests.test_admin import UnixEndpoints
from tests.test_metrics import Scraped
from vpnaaa import config as configuration
from vpnaaa import pki, sessions
from vpnaaa.service import make_service
from vpnaaa.users import User

POOL = "10.99.7.0/24"


@defer.inlineCallbacks
def assert_established(
    case: unittest.TestCase, client: charon.Charon, installer: Any, pool_prefix: str
) -> Generator[defer.Deferred[Any], Any, tuple[Any, Any, Any]]:
    """charon shows one ESTABLISHED IKE_SA with a virtual IP from the pool and one
    INSTALLED CHILD_SA, whose SPIs and keys (RFC 7296 §2.17 KEYMAT) equal what vpnaaa's
    null installer holds, narrowed to the virtual IP on the client side."""
    (sa,) = yield client.list_sas()
    case.assertEqual(sa.state, "ESTABLISHED")
    (vip,) = sa.local_vips
    case.assertTrue(vip.startswith(pool_prefix), vip)
    (child,) = sa.children
    case.assertEqual(child.state, "INSTALLED")
    (spec,) = installer.installed.values()
    case.assertEqual((spec.inbound_spi, spec.outbound_spi), (child.spi_out, child.spi_in))
    (keys,) = client.keys().children()
    case.assertEqual(
        (
            spec.inbound_encr_key,
            spec.inbound_integ_key,
            spec.outbound_encr_key,
            spec.outbound_integ_key,
        ),
        (keys.encr_i, keys.integ_i, keys.encr_r, keys.integ_r),
    )
    case.assertEqual([str(s.network) for s in spec.remote_selectors], [f"{vip}/32"])
    # kernel-libipsec makes charon fake a NAT: ESP goes in UDP, both ends on 4500 (§2.23)
    case.assertEqual(spec.encapsulation, (4500, 4500))
    return sa, child, spec


@defer.inlineCallbacks
def scrape(agent: Any) -> Generator[defer.Deferred[Any], Any, Scraped]:
    """GET /metrics on the admin API, parsed by prometheus-client's parser."""
    response = yield agent.request(b"GET", b"http://localhost/metrics")
    return Scraped((yield client_agent.readBody(response)).decode())


class CharonTestCase(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def setUp(self) -> Generator[defer.Deferred[Any], Any, None]:
        reason = charon.unavailable()
        if reason:
            raise unittest.SkipTest(reason)
        if os.geteuid() != 0:
            raise unittest.SkipTest("network namespaces need root")
        self.state = state_dir(self)
        add_users(self.state, {"alice": User.create("alice", "wonderland")})
        self.netns = charon.Netns()
        yield self.netns.create()
        self.addCleanup(self.netns.destroy)
        gateway = self.netns.gateway_address
        pki.init_ca(self.state / "ca")
        pki.issue_server(self.state / "ca", self.state / "pki", gateway, ["staff.example.test"])
        self.ca = self.state / "ca" / "ca.pem"

    def start_gateway(self, extra: str = "", eap: str = "", users: str = "") -> None:
        """vpnaaa as IKEv2 gateway only; ``extra`` goes into [ike], ``eap`` into [eap],
        ``users`` into [users]."""
        text = (
            f'[general]\nstate_dir = "{self.state}"\nlog_level = "debug"\n'
            f"[radius]\nenabled = false\n[admin]\nport = 0\n[users]\n{users}\n"
            f"[eap]\n{eap}\n"
            f'[ike]\nenabled = true\ninstaller = "null"\nlisten = "{self.netns.gateway_address}"\n'
            f'pool = "{POOL}"\ndns = ["10.99.7.53"]\n{extra}\n'
        )
        path = write_config(self.state / "vpnaaa.toml", text)
        self.daemon = make_service(configuration.load(path))
        self.addCleanup(self.daemon.stopService)
        self.daemon.startService()
        self.installer = self.daemon.ike.responder.installer

    @defer.inlineCallbacks
    def connect(self, **initiator: Any) -> Generator[defer.Deferred[Any], Any, Any]:
        role = charon.Initiator(gateway=self.netns.gateway_address, ca_cert=self.ca, **initiator)
        client = charon.Charon(self.state / "charon", self.netns.name, role)
        self.addCleanup(client.stop)
        yield client.start()
        result = yield client.initiate()
        return client, result


class EapMsChapV2Tests(CharonTestCase):
    @defer.inlineCallbacks
    def established(self, **initiator: Any) -> Generator[defer.Deferred[Any], Any, Any]:
        """Connect; check ESTABLISHED, the virtual IP, and that the CHILD_SA the null
        installer holds has charon's SPIs and keys (RFC 7296 §2.17 KEYMAT)."""
        client, result = yield self.connect(**initiator)
        if not result.ok:
            self.fail(result.output + client.tail())
        sa, child, _ = yield assert_established(self, client, self.installer, "10.99.7.")
        self.assertEqual(child.remote_ts, ["0.0.0.0/0"])
        self.assertEqual(self.daemon.ike.responder.context.pool.leased, 1)
        return client, sa, child

    @defer.inlineCallbacks
    def test_aes_cbc_sha2_modp2048(self):
        self.start_gateway()
        _, sa, child = yield self.established(
            proposals="aes256-sha256-modp2048", esp_proposals="aes256-sha256"
        )
        self.assertEqual((sa.encr_alg, sa.dh_group), ("AES_CBC", "MODP_2048"))
        self.assertEqual((child.encr_alg, child.integ_alg), ("AES_CBC", "HMAC_SHA2_256_128"))

    @defer.inlineCallbacks
    def test_aes_gcm_ecp256(self):
        self.start_gateway()
        _, sa, child = yield self.established(
            proposals="aes128gcm16-prfsha256-ecp256", esp_proposals="aes128gcm16"
        )
        self.assertEqual((sa.encr_alg, sa.dh_group), ("AES_GCM_16", "ECP_256"))
        self.assertEqual(child.encr_alg, "AES_GCM_16")

    @defer.inlineCallbacks
    def test_curve25519_chacha(self):
        self.start_gateway()
        _, sa, _ = yield self.established(
            proposals="chacha20poly1305-prfsha256-curve25519", esp_proposals="aes256gcm16"
        )
        self.assertEqual((sa.encr_alg, sa.dh_group), ("CHACHA20_POLY1305", "CURVE_25519"))

    @defer.inlineCallbacks
    def test_a_range_that_is_not_one_prefix_is_split_for_the_kernel(self):
        """RFC 7296 §3.13.1 selectors are address ranges; the kernel takes prefixes. A
        range charon asks for, 10.20.0.1-10.20.0.6, becomes exactly its four CIDR blocks
        (it used to become 0.0.0.0/0 in the kernel policy)."""
        self.start_gateway()
        client, result = yield self.connect(remote_ts="10.20.0.1-10.20.0.6")
        self.assertTrue(result.ok, result.output + client.tail())
        (sa,) = yield client.list_sas()
        (child,) = sa.children
        self.assertEqual(child.remote_ts, ["10.20.0.1..10.20.0.6"])  # charon's notation
        (spec,) = self.installer.installed.values()
        self.assertEqual(
            [str(s.network) for s in spec.local_selectors],
            ["10.20.0.1/32", "10.20.0.2/31", "10.20.0.4/31", "10.20.0.6/32"],
        )

    @defer.inlineCallbacks
    def test_session_view_over_the_admin_api(self):
        """GET /sessions on the admin socket: the user, the virtual IP, the SAs charon has;
        GET /metrics (prometheus-client's resource, read by its own parser) while the
        session is up and after charon terminated it."""
        self.start_gateway()
        client, sa, child = yield self.established()
        socket = UnixEndpoints(self.state / "admin.sock")
        agent = client_agent.Agent.usingEndpointFactory(reactor, socket)
        response = yield agent.request(b"GET", b"http://localhost/sessions")
        (session,) = json.loads((yield client_agent.readBody(response)))
        self.assertEqual(session["username"], "alice")
        self.assertEqual(session["virtual_ip"], sa.local_vips[0])
        self.assertEqual(session["ike_spis"], f"{sa.spi_i.hex()}/{sa.spi_r.hex()}")
        (esp,) = session["child_sas"]
        self.assertEqual(
            (esp["spi_in"], esp["spi_out"]), (f"{child.spi_out:08x}", f"{child.spi_in:08x}")
        )
        profile = {"profile": self.daemon.ike.responder.context.profiles[0].name}
        up = yield scrape(agent)
        self.assertEqual(up("vpnaaa_sessions", **profile), 1)
        self.assertEqual(up("vpnaaa_pool_leased", **profile), 1)
        self.assertEqual(up("vpnaaa_sessions_started_total", **profile), 1)
        ok = {"initiator": "client", "result": "ok"}
        self.assertEqual(up("vpnaaa_ike_exchanges_total", exchange="IKE_SA_INIT", **ok), 1)
        eap = {"backend": "local", "method": "mschapv2", "result": "success"}
        self.assertEqual(up("vpnaaa_eap_outcomes_total", **eap), 1)
        self.assertNotIn("alice", up.text)
        result = yield client.terminate()
        self.assertTrue(result.ok, result.output)
        down = yield scrape(agent)
        self.assertEqual(down("vpnaaa_sessions", **profile), 0)
        self.assertEqual(down("vpnaaa_pool_leased", **profile), 0)
        ended = {"cause": "client_delete", **profile}
        self.assertEqual(down("vpnaaa_session_ends_total", **ended), 1)
        self.assertEqual(down("vpnaaa_ike_exchanges_total", exchange="INFORMATIONAL", **ok), 1)

    @defer.inlineCallbacks
    def test_terminate_removes_child_and_lease(self):
        self.start_gateway()
        client, _, _ = yield self.established()
        result = yield client.terminate()
        self.assertTrue(result.ok, result.output)
        self.assertEqual(self.installer.installed, {})
        self.assertEqual(self.daemon.ike.responder.context.pool.leased, 0)
        self.assertEqual(self.daemon.ike.responder.sas, {})

    @defer.inlineCallbacks
    def test_wrong_password(self):
        """charon gives up with AUTHENTICATION_FAILED instead of acknowledging the MSCHAPv2
        Failure; the line says what vpnaaa knows (a wrong password), not a guess."""
        lines: list[str] = []

        def observe(event: dict[str, Any]) -> None:
            lines.append(formatEvent(event) or "")

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        self.start_gateway()
        client, result = yield self.connect(password="not-wonderland")
        self.assertFalse(result.ok)
        self.assertIn("EAP_MSCHAPV2 method failed", client.log_text())
        self.assertTrue(any("EAP failed for 'alice': wrong password" in line for line in lines))
        self.assertFalse(any("refused our certificate" in line for line in lines))
        self.assertEqual(self.installer.installed, {})
        self.assertEqual(self.daemon.ike.responder.context.pool.leased, 0)
        self.assertEqual(self.daemon.ike.responder.sas, {})

    @defer.inlineCallbacks
    def test_client_that_does_not_trust_the_gateway(self):
        other = self.state / "other-ca"
        pki.init_ca(other, "some other CA")
        self.ca = other / "ca.pem"
        self.start_gateway()
        client, result = yield self.connect()
        self.assertFalse(result.ok)
        gateway = self.netns.gateway_address
        self.assertIn(f"no trusted RSA public key found for '{gateway}'", client.log_text())
        self.assertEqual(self.daemon.ike.responder.sas, {})
        self.assertEqual(self.daemon.ike.responder.context.pool.leased, 0)


class NegotiationTests(CharonTestCase):
    """What IKE_SA_INIT answers when the client's first guess is not what we want."""

    @defer.inlineCallbacks
    def test_invalid_ke_payload_then_the_group_we_want(self):
        """RFC 7296 §1.2: charon's KE is for ECP256, which this gateway does not allow; it
        answers INVALID_KE_PAYLOAD naming MODP2048 and charon retries with that group."""
        self.start_gateway('ike_proposals = ["aes256", "prfsha256", "sha256", "modp2048"]')
        client, result = yield self.connect(proposals="aes256-sha256-ecp256-modp2048")
        self.assertTrue(result.ok, result.output + client.tail())
        self.assertIn(
            "peer didn't accept DH group ECP_256, it requested MODP_2048", client.log_text()
        )
        (sa,) = yield client.list_sas()
        self.assertEqual(sa.dh_group, "MODP_2048")

    @defer.inlineCallbacks
    def test_no_proposal_chosen(self):
        self.start_gateway()
        client, result = yield self.connect(proposals="3des-sha1-modp1024")
        self.assertFalse(result.ok)
        self.assertIn("received NO_PROPOSAL_CHOSEN notify error", client.log_text())
        self.assertEqual(self.daemon.ike.responder.sas, {})

    @defer.inlineCallbacks
    def test_cookie_challenge(self):
        """RFC 7296 §2.6 with cookie_threshold = 0: every IKE_SA_INIT is first answered
        with a COOKIE; charon repeats it with the cookie and the SA comes up."""
        self.start_gateway("cookie_threshold = 0")
        client, result = yield self.connect()
        self.assertTrue(result.ok, result.output + client.tail())
        self.assertIn("received COOKIE notify", client.log_text())

    @defer.inlineCallbacks
    def test_windows7_legacy_suite_when_enabled(self):
        """3DES/SHA1/MODP1024 for IKE and 3DES/SHA1 for ESP: off by default, on with
        ike.legacy_windows7 (what an unpatched Windows 7 client offers)."""
        self.start_gateway("legacy_windows7 = true")
        client, result = yield self.connect(
            proposals="3des-sha1-modp1024", esp_proposals="3des-sha1"
        )
        self.assertTrue(result.ok, result.output + client.tail())
        (sa,) = yield client.list_sas()
        self.assertEqual(
            (sa.encr_alg, sa.integ_alg, sa.dh_group), ("3DES_CBC", "HMAC_SHA1_96", "MODP_1024")
        )

    @defer.inlineCallbacks
    def test_windows10_default_suite(self):
        """Windows 10/11 without registry changes: AES-CBC-256, SHA1, MODP1024; ESP
        AES-CBC-256/SHA1. Accepted by the default policy."""
        self.start_gateway()
        client, result = yield self.connect(
            proposals="aes256-sha1-modp1024", esp_proposals="aes256-sha1"
        )
        self.assertTrue(result.ok, result.output + client.tail())
        # accepted, but marked as weak where an administrator looks (RFC 8247)
        (session,) = yield sessions.snapshot(self.daemon.ike.responder)
        self.assertEqual(session["weak_algorithms"], ["sha1", "prfsha1", "modp1024"])
        self.assertIn("WEAK algorithms: sha1, prfsha1, modp1024", sessions.render([session]))


class RekeyTests(CharonTestCase):
    @defer.inlineCallbacks
    def test_child_rekey_replaces_the_installed_sa(self):
        """CREATE_CHILD_SA with REKEY_SA (RFC 7296 §1.3.3): a new CHILD_SA is installed,
        the old one goes when charon deletes it; the keys match charon's newest set."""
        self.start_gateway()
        client, result = yield self.connect()
        self.assertTrue(result.ok, result.output + client.tail())
        (old,) = self.installer.installed.values()
        yield client.swanctl("--rekey", "--child", client.conn)
        yield charon.sleep(1.0)
        (new,) = self.installer.installed.values()
        self.assertNotEqual(new.inbound_spi, old.inbound_spi)
        latest = client.keys().children()[-1]
        self.assertEqual(
            (new.inbound_encr_key, new.outbound_encr_key), (latest.encr_i, latest.encr_r)
        )
        (sa,) = yield client.list_sas()
        (child,) = [c for c in sa.children if c.state == "INSTALLED"]
        self.assertEqual(child.spi_out, new.inbound_spi)

    @defer.inlineCallbacks
    def test_ike_sa_rekey_keeps_child_and_lease(self):
        """CREATE_CHILD_SA rekeying the IKE SA (RFC 7296 §1.3.2, keys per §2.18): the new
        SA inherits the CHILD_SA and the virtual IP; the old one is deleted by charon."""
        self.start_gateway()
        client, result = yield self.connect()
        self.assertTrue(result.ok, result.output + client.tail())
        (before,) = yield client.list_sas()
        yield client.swanctl("--rekey", "--ike", client.conn)
        yield charon.sleep(1.0)
        (after,) = yield client.list_sas()
        self.assertEqual(after.state, "ESTABLISHED")
        self.assertNotEqual(after.spi_r, before.spi_r)
        self.assertEqual(list(self.daemon.ike.responder.sas), [after.spi_r])
        self.assertEqual(len(self.installer.installed), 1)
        self.assertEqual(self.daemon.ike.responder.context.pool.leased, 1)
        keys = client.keys().ike()  # the last key set charon derived
        sa = self.daemon.ike.responder.sas[after.spi_r]
        self.assertEqual(sa.crypto.keys.sk_d, keys.sk_d)  # charon's newest SK_d
        result = yield client.terminate()
        self.assertTrue(result.ok, result.output)
        self.assertEqual(self.installer.installed, {})
        self.assertEqual(self.daemon.ike.responder.context.pool.leased, 0)


class ProfileTests(CharonTestCase):
    @defer.inlineCallbacks
    def test_the_idr_the_client_asks_for_selects_the_profile(self):
        """Like an ASA tunnel-group: a client asking for staff.example.test (its IDr, which
        the certificate carries) gets an address from the staff profile's pool; the
        default profile's pool stays untouched."""
        self.start_gateway(
            '[[ike.profiles]]\nname = "staff"\nmatch = ["staff.example.test"]\n'
            'pool = "10.99.9.0/24"\n'
        )
        client, result = yield self.connect(remote_id="staff.example.test")
        self.assertTrue(result.ok, result.output + client.tail())
        (sa,) = yield client.list_sas()
        self.assertEqual(sa.remote_id, "staff.example.test")
        self.assertTrue(sa.local_vips[0].startswith("10.99.9."), sa.local_vips)
        staff, default = (self.daemon.ike.responder.context.profiles[i] for i in (1, 0))
        self.assertEqual((staff.name, staff.pool.leased, default.pool.leased), ("staff", 1, 0))


class PeapTests(CharonTestCase):
    @defer.inlineCallbacks
    def test_peap_with_inner_mschapv2(self):
        """EAP-PEAPv0 (inner EAP-MSCHAPv2) through the in-process engine. strongSwan 5.9
        cannot parse the Result TLV packet that also carries cryptobinding, so it is off."""
        if not (charon.UPSTREAM.available() and charon.UPSTREAM.has_plugin("eap-peap")):
            raise unittest.SkipTest(f"no strongSwan with eap-peap at {charon.UPSTREAM.charon}")
        self.start_gateway('eap_methods = ["peap"]', eap="peap_cryptobinding = false")
        role = charon.Initiator(
            gateway=self.netns.gateway_address, ca_cert=self.ca, auth="eap-peap"
        )
        client = yield charon.start_charon(
            self, self.state / "charon", self.netns.name, role, install=charon.UPSTREAM
        )
        result = yield client.initiate()
        self.assertTrue(result.ok, result.output + client.tail())
        self.assertIn("EAP method EAP_PEAP succeeded, MSK established", result.output)
        (sa,) = yield client.list_sas()
        self.assertEqual(sa.state, "ESTABLISHED")
        (spec,) = self.installer.installed.values()
        (keys,) = client.keys().children()
        self.assertEqual(
            (spec.inbound_encr_key, spec.outbound_encr_key), (keys.encr_i, keys.encr_r)
        )


class ProfileAuthorisationTests(CharonTestCase):
    @defer.inlineCallbacks
    def test_only_the_profiles_users_may_use_it(self):
        """A profile's ``users`` list (the ASA's group-lock): alice's password is right,
        but only bob may use the staff profile; charon is refused with
        AUTHENTICATION_FAILED after EAP, and nothing is left. The default profile
        (no list) still takes her."""
        self.start_gateway(
            '[[ike.profiles]]\nname = "staff"\nmatch = ["staff.example.test"]\n'
            'pool = "10.99.9.0/24"\nusers = ["Bob"]\n'
        )
        client, result = yield self.connect(remote_id="staff.example.test")
        self.assertFalse(result.ok)
        self.assertIn("received AUTHENTICATION_FAILED notify error", client.log_text())
        responder = self.daemon.ike.responder
        self.assertEqual((responder.sas, self.installer.installed), ({}, {}))
        self.assertEqual([p.pool.leased for p in responder.context.profiles], [0, 0])
        yield client.stop()
        client, result = yield self.connect()
        self.assertTrue(result.ok, result.output + client.tail())
