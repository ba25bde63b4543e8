"""EAP-TLS over IKEv2 (RFC 7296 §2.16 with RFC 5216): Debian's charon (its eap-tls plugin)
as the client, a certificate from the gateway's CA, ``eap_methods = ["tls"]`` in the
profile. The IKE SA is keyed with the EAP-TLS MSK (charon's AUTH check needs it), and the
session's identity is the certificate's, not the EAP-Identity."""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet import defer

from tests.interop import charon
from tests.interop.test_eapol_tls import client_certificate
from tests.interop.test_ike_charon import CharonTestCase, assert_established


@dataclass
class EapTlsInitiator(charon.Initiator):
    """charon authenticating with EAP-TLS: its certificate and key instead of a password."""

    cert: Path = Path()

    def swanctl_conf(self, name: str) -> str:
        text = super().swanctl_conf(name)
        return text.replace("auth = eap-tls", f"auth = eap-tls\n\t\t\tcerts = {self.cert.name}")

    def credentials(self) -> dict[str, Path]:
        return super().credentials() | {
            f"x509/{self.cert.name}": self.cert,
            "private/client.key": self.cert.with_suffix(".key"),
        }


def eap_tls_client(case: CharonTestCase, cert: Path) -> charon.Charon:
    """charon authenticating as carol@example.test with EAP-TLS and ``cert`` to the
    case's gateway, stopped at the case's cleanup."""
    role = EapTlsInitiator(
        gateway=case.netns.gateway_address,
        ca_cert=case.ca,
        auth="eap-tls",
        eap_id="carol@example.test",
        cert=cert,
    )
    plugins = [*charon.PLUGINS, "eap-tls"]
    client = charon.Charon(case.state / "charon", case.netns.name, role, plugins=plugins)
    case.addCleanup(client.stop)
    return client


class EapTlsOverIkeTests(CharonTestCase):
    @defer.inlineCallbacks
    def test_eap_tls(self) -> Generator[defer.Deferred[Any], Any, None]:
        cert = client_certificate(
            self.state,
            self.state / "ca",
            "carol",
            "extendedKeyUsage=clientAuth\nsubjectAltName=email:carol@example.test\n",
        )
        self.start_gateway(
            'eap_methods = ["tls"]', eap='methods = ["tls"]\n[eap.tls]\nclient_ca = "ca/ca.pem"\n'
        )
        client = eap_tls_client(self, cert)
        yield client.start()
        result = yield client.initiate()
        self.assertTrue(result.ok, result.output + client.tail())
        self.assertIn("EAP method EAP_TLS succeeded, MSK established", result.output)
        yield assert_established(self, client, self.installer, "10.99.7.")
        (sa,) = self.daemon.ike.responder.find(user="carol@example.test")
        self.assertTrue(sa.identity_verified)
