"""``auth = "certificate"`` profile keys: read, defaulted, and refused with file, key and
reason where they make no sense."""

from __future__ import annotations

from tests.test_config import ConfigTestCase

DEVICES = '[[ike.profiles]]\nname = "devices"\nauth = "certificate"\npool = "10.99.20.0/24"\n'


class CertificateProfileConfig(ConfigTestCase):
    def test_keys_and_defaults(self):
        loaded = self.load(
            DEVICES
            + 'client_ca = ["ca.pem"]\ncrl_files = ["a.crl", "b.crl"]\nrevocation = "hard"\n'
            + 'ocsp_url = "http://127.0.0.1:8080/"\nrevocation_timeout = 2\n'
        )
        default, devices = loaded.ike.profiles
        self.assertEqual(default.auth, "eap")
        self.assertEqual(devices.auth, "certificate")
        self.assertEqual(devices.matches, frozenset())  # chosen for clients sending AUTH
        self.assertEqual(devices.client_ca, (self.state / "ca.pem",))
        revocation = devices.revocation
        self.assertEqual(revocation.crl_files, (self.state / "a.crl", self.state / "b.crl"))
        self.assertEqual(revocation.ocsp_url, "http://127.0.0.1:8080/")
        self.assertEqual((revocation.hard_fail, revocation.timeout), (True, 2.0))
        self.assertFalse(revocation.crl_distribution_points)

    def test_certificate_profile_needs_anchors(self):
        self.assertConfigError(DEVICES, "ike.profiles[0].client_ca", "CA files to trust")

    def test_certificate_keys_on_an_eap_profile(self):
        self.assertConfigError('[ike]\ncrl_files = ["a.crl"]\n', "ike.crl_files", "only for")

    def test_bad_values(self):
        base = DEVICES + 'client_ca = ["ca.pem"]\n'
        self.assertConfigError('[ike]\nauth = "psk"\n', "ike.auth", "'psk'")
        self.assertConfigError(
            base + 'revocation = "maybe"\n', "ike.profiles[0].revocation", "'maybe'"
        )
        self.assertConfigError(
            base + 'ocsp_url = "ldap://x"\n', "ike.profiles[0].ocsp_url", "not an http"
        )
        # the fetcher speaks plain HTTP only (RFC 6960 A.1; answers are signed): an https
        # URL would fail every check, and soft fail would then accept revoked certificates
        self.assertConfigError(
            base + 'ocsp_url = "https://ocsp.example.test/"\n',
            "ike.profiles[0].ocsp_url",
            "not an http:// URL",
        )

    def test_an_eap_profile_still_needs_match(self):
        self.assertConfigError(
            '[[ike.profiles]]\nname = "x"\npool = "10.99.30.0/24"\n',
            "ike.profiles[0].match",
            "list the IDr names",
        )
