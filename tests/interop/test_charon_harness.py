"""Self-test of the charon harness (tests/interop/charon.py): charon against charon.

These tests check the HARNESS, not vpnaaa: two namespaces joined by a veth pair, a charon
responder in the gateway namespace (certificate from vpnaaa.pki, EAP-MSCHAPv2 users, a virtual
IP pool) and a charon initiator in the client namespace, both with private pid directories,
vici sockets and logs. Each handshake takes well under a second.

From the same runs they check that what the harness reads out of charon's log is the RFC 7296
key schedule: SKEYSEED = prf(Ni | Nr, g^ir), the seven SK_* from prf+(SKEYSEED, Ni | Nr | SPIi |
SPIr) (§2.14), the CHILD_SA keys from prf+(SK_d, Ni | Nr) (§2.17), the AUTH payloads (§2.15,
§2.16, RFC 7427), and that the IKE_AUTH messages decrypt with the logged SK_e/SK_a.

``tests/interop/data/charon_ikev2_keys.json`` holds one such run (AES-CBC-256, HMAC-SHA2-256-128,
PRF-HMAC-SHA2-256, MODP-2048; ESP AES-CBC-256 + HMAC-SHA2-256-128) as test vectors for vpnaaa's
key derivation; :class:`VectorFileTests` re-checks it without charon. To capture a new one:
``VPNAAA_CHARON_VECTORS=tests/interop/data/charon_ikev2_keys.json .venv/bin/trial
tests.interop.test_charon_harness.CharonPairTests.test_key_schedule``.
"""

from __future__ import annotations

import atexit
import datetime
import functools
import hashlib
import hmac
import json
import os
import shutil
import struct
import sys
import tempfile
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from twisted.internet import defer, error, protocol, reactor
from twisted.trial import unittest

from tests.interop import charon as harness
from tests.interop.charon import (
    PAYLOAD_KE,
    PAYLOAD_NONCE,
    PAYLOAD_SK,
    PAYLOAD_SKF,
    Charon,
    IkeSa,
    Initiator,
    Message,
    Netns,
    Responder,
    make_netns,
    parse_message,
    start_charon,
)
from tests.support import state_dir
from vpnaaa import pki

VECTORS = Path(__file__).parent / "data" / "charon_ikev2_keys.json"
USER, PASSWORD = "alice", "wonderland"
BEHIND_GATEWAY = "203.0.113.1"  # an address on the gateway namespace's lo, reached via ESP
KEY_PAD = b"Key Pad for IKEv2"  # RFC 7296 §2.15
PAYLOAD_ID_I, PAYLOAD_ID_R, PAYLOAD_AUTH = 35, 36, 39


@functools.cache
def gateway_pki(address: str) -> tuple[pki.CaFiles, pki.ServerFiles]:
    """A CA and a gateway certificate for ``address`` from vpnaaa.pki, once per test run."""
    directory = Path(tempfile.mkdtemp(prefix="vpnaaa-test-charon-pki-"))
    atexit.register(shutil.rmtree, directory, True)
    ca = pki.init_ca(directory / "ca", key_type="ecdsa-p256")
    server = pki.issue_server(directory / "ca", directory / "gw", address, key_type="rsa2048")
    return ca, server


# --------------------------------------------------------------------------------------------
# RFC 7296 key schedule, HMAC PRFs only


def prf(name: str, key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, name).digest()


def prf_plus(name: str, key: bytes, seed: bytes, size: int) -> bytes:
    """RFC 7296 §2.13: T1 = prf(K, S | 0x01), Tn = prf(K, Tn-1 | S | n)."""
    out, block, n = b"", b"", 1
    while len(out) < size:
        block = prf(name, key, block + seed + bytes([n]))
        out, n = out + block, n + 1
    return out[:size]


def split(data: bytes, sizes: list[int]) -> list[bytes]:
    parts, offset = [], 0
    for size in sizes:
        parts.append(data[offset : offset + size])
        offset += size
    return parts


PRFS = {"PRF_HMAC_SHA2_256": "sha256", "PRF_HMAC_SHA2_384": "sha384", "PRF_HMAC_SHA1": "sha1"}
INTEG_KEY = {"HMAC_SHA2_256_128": 32, "HMAC_SHA2_384_192": 48, "HMAC_SHA1_96": 20, None: 0}


def encr_key_size(alg: str | None, bits: int | None) -> int:
    """Key octets taken from prf+: AES-GCM (RFC 4106 §8.1, RFC 5282 §7.1) adds a 4-octet salt."""
    return (bits or 0) // 8 + (4 if (alg or "").startswith("AES_GCM") else 0)


@dataclass(frozen=True)
class Suite:
    """The algorithms that size the keys: a PRF (hashlib name) and key lengths in octets."""

    prf: str
    encr: int
    integ: int
    child_encr: int
    child_integ: int

    @classmethod
    def of(cls, sa: IkeSa) -> Suite:
        child = sa.children[0]
        return cls(
            PRFS[sa.prf_alg or ""],
            encr_key_size(sa.encr_alg, sa.encr_keysize),
            INTEG_KEY[sa.integ_alg],
            encr_key_size(child.encr_alg, child.encr_keysize),
            INTEG_KEY[child.integ_alg],
        )


# the vector file's proposal: aes256-sha256-modp2048, ESP aes256-sha256
VECTOR_SUITE = Suite("sha256", 32, 32, 32, 32)


def ike_keys(
    suite: Suite, ni: bytes, nr: bytes, spi_i: bytes, spi_r: bytes, g_ir: bytes
) -> dict[str, bytes]:
    """SKEYSEED and SK_d, SK_ai, SK_ar, SK_ei, SK_er, SK_pi, SK_pr (RFC 7296 §2.14)."""
    skeyseed = prf(suite.prf, ni + nr, g_ir)
    size = hashlib.new(suite.prf).digest_size
    sizes = [size, suite.integ, suite.integ, suite.encr, suite.encr, size, size]
    keys = split(prf_plus(suite.prf, skeyseed, ni + nr + spi_i + spi_r, sum(sizes)), sizes)
    names = ["sk_d", "sk_ai", "sk_ar", "sk_ei", "sk_er", "sk_pi", "sk_pr"]
    return {"skeyseed": skeyseed, **dict(zip(names, keys, strict=True))}


def child_keys(suite: Suite, sk_d: bytes, ni: bytes, nr: bytes) -> dict[str, bytes]:
    """KEYMAT = prf+(SK_d, Ni | Nr), i->r encryption, integrity, then r->i (RFC 7296 §2.17)."""
    encr, integ = suite.child_encr, suite.child_integ
    keymat = prf_plus(suite.prf, sk_d, ni + nr, 2 * (encr + integ))
    encr_i, integ_i, encr_r, integ_r = split(keymat, [encr, integ, encr, integ])
    return {"encr_i": encr_i, "integ_i": integ_i, "encr_r": encr_r, "integ_r": integ_r}


def leading_message(dump: harness.Dump) -> Message:
    """The IKE_SA_INIT message at the head of logged AUTH octets (RFC 7296 §2.15)."""
    length = struct.unpack("!I", dump.data[24:28])[0]
    return parse_message(dump.data[:length])


def ke_data(message: Message) -> bytes:
    body = message.payload(PAYLOAD_KE) or b""
    return body[4:]  # DH Group Num (2), RESERVED (2)


# --------------------------------------------------------------------------------------------
# Encrypted payloads (RFC 7296 §3.14, RFC 7383 §2.5): AES-CBC + HMAC-SHA2-256-128 only


def decrypt(message: Message, sk_e: bytes, sk_a: bytes) -> tuple[int, bytes, int, int]:
    """(first inner payload type, plaintext, fragment number, total fragments) of an SK or
    SKF message; checks the ICV over everything before it."""
    kind, body = message.payloads[-1]
    if kind not in (PAYLOAD_SK, PAYLOAD_SKF):
        raise ValueError(f"message {message.message_id} is not encrypted")
    number = total = 1
    if kind == PAYLOAD_SKF:
        number, total = struct.unpack("!HH", body[:4])
        body = body[4:]
    icv = message.data[-16:]
    if not hmac.compare_digest(hmac.new(sk_a, message.data[:-16], "sha256").digest()[:16], icv):
        raise ValueError(f"message {message.message_id}: ICV mismatch")
    iv, ciphertext = body[:16], body[16:-16]
    decryptor = Cipher(algorithms.AES(sk_e), modes.CBC(iv)).decryptor()
    padded = decryptor.update(ciphertext) + decryptor.finalize()
    plain = padded[: -padded[-1] - 1]
    first = message.data[len(message.data) - len(message.payloads[-1][1]) - 4]  # next payload
    return first, plain, number, total


def inner_payloads(first: int, plain: bytes) -> list[tuple[int, bytes]]:
    found, kind, offset = [], first, 0
    while kind != 0 and offset < len(plain):
        following, _, size = struct.unpack("!BBH", plain[offset : offset + 4])
        found.append((kind, plain[offset + 4 : offset + size]))
        kind, offset = following, offset + size
    return found


@defer.inlineCallbacks
def poll_until(check: Any, what: str, tries: int = 50) -> Generator[defer.Deferred[Any], Any, Any]:
    """Call ``check()`` (a Deferred of a value) until the value is true; return it."""
    value = None
    for _ in range(tries):
        value = yield check()
        if value:
            return value
        yield harness.sleep(0.05)
    raise AssertionError(f"{what}: never true, last {value!r}")


class CharonPairTests(unittest.TestCase):
    """A charon initiator against a charon responder, each in its own namespace."""

    timeout = 60

    def setUp(self) -> None:
        reason = harness.unavailable()
        if reason:
            raise unittest.SkipTest(reason)
        self.state = state_dir(self)

    @defer.inlineCallbacks
    def pair(
        self,
        *,
        proposals: str = "aes256-sha256-modp2048",
        esp_proposals: str = "aes256-sha256",
        password: str = PASSWORD,
        gateway_port: tuple[int, int] = (500, 4500),
        remote_port: int = 500,
        auth: str = "eap-mschapv2",
        install: harness.CharonInstall = harness.DEBIAN,
    ) -> Generator[defer.Deferred[Any], Any, tuple[Netns, Charon, Charon]]:
        netns = yield make_netns(self, gateway_netns=True)
        ca, server = gateway_pki(netns.gateway_address)
        assert netns.gateway_name is not None
        responder = Responder(
            netns.gateway_address,
            server.cert,
            server.key,
            users={USER: PASSWORD},
            auth=auth,
            proposals=proposals,
            esp_proposals=esp_proposals,
        )
        initiator = Initiator(
            netns.gateway_address,
            ca.cert,
            eap_id=USER,
            password=password,
            auth=auth,
            proposals=proposals,
            esp_proposals=esp_proposals,
            remote_port=remote_port,
        )
        port, port_nat_t = gateway_port
        gateway = yield start_charon(
            self,
            self.state / "gateway",
            netns.gateway_name,
            responder,
            conn="gw",
            port=port,
            port_nat_t=port_nat_t,
            install=install,
        )
        client = yield start_charon(
            self, self.state / "client", netns.name, initiator, install=install
        )
        return netns, client, gateway

    def assertEstablished(self, client: Charon, sas: list[IkeSa]) -> IkeSa:
        self.assertEqual(len(sas), 1, client.tail())
        sa = sas[0]
        self.assertEqual(sa.state, "ESTABLISHED")
        self.assertEqual(len(sa.children), 1)
        self.assertEqual(sa.children[0].state, "INSTALLED")
        return sa

    @defer.inlineCallbacks
    def test_establish_traffic_terminate(self):
        """Certificate + EAP-MSCHAPv2 + virtual IP + CHILD_SA; ESP flows both ways through
        kernel-libipsec; both sides agree on SPIs, algorithms and keys; DELETE ends both."""
        netns, client, gateway = yield self.pair()
        result = yield client.initiate()
        self.assertTrue(result.ok, f"{result.output}\n{gateway.tail()}")
        self.assertIn("installing new virtual IP 192.0.2.1", result.output)

        mine = self.assertEstablished(client, (yield client.list_sas()))
        theirs = self.assertEstablished(gateway, (yield gateway.list_sas()))
        self.assertTrue(mine.initiator)
        self.assertFalse(theirs.initiator)
        self.assertEqual((mine.spi_i, mine.spi_r), (theirs.spi_i, theirs.spi_r))
        self.assertEqual(len(mine.spi_i), 8)
        self.assertEqual(mine.local_vips, ["192.0.2.1"])
        self.assertEqual(theirs.remote_vips, ["192.0.2.1"])
        self.assertEqual(theirs.remote_eap_id, USER)
        self.assertEqual(mine.remote_id, netns.gateway_address)
        self.assertEqual((mine.local_port, mine.remote_port), (4500, 4500))  # NAT-T float
        self.assertTrue(mine.nat_remote)  # kernel-libipsec's faked NAT
        algorithms_ = (mine.encr_alg, mine.encr_keysize, mine.integ_alg, mine.prf_alg)
        self.assertEqual(algorithms_, ("AES_CBC", 256, "HMAC_SHA2_256_128", "PRF_HMAC_SHA2_256"))
        self.assertEqual(mine.dh_group, "MODP_2048")
        child, other = mine.children[0], theirs.children[0]
        self.assertEqual((child.spi_in, child.spi_out), (other.spi_out, other.spi_in))
        self.assertEqual((child.mode, child.protocol, child.encap), ("TUNNEL", "ESP", True))
        self.assertEqual((child.encr_alg, child.encr_keysize), ("AES_CBC", 256))
        self.assertEqual(child.integ_alg, "HMAC_SHA2_256_128")
        self.assertEqual(child.local_ts, ["192.0.2.1/32"])
        self.assertEqual(child.remote_ts, ["0.0.0.0/0"])

        # both logs carry the same keys, under each side's IKE_SA unique id
        self.assertEqual(client.keys().ike(mine.uniqueid), gateway.keys().ike(theirs.uniqueid))
        keys = client.keys().ike(mine.uniqueid)
        self.assertEqual(len(keys.g_ir), 256)
        self.assertEqual([len(keys.sk_ei), len(keys.sk_ai)], [32, 32])
        children = client.keys().children(mine.uniqueid)
        self.assertEqual(children, gateway.keys().children(theirs.uniqueid))
        self.assertEqual(len(children), 1)
        self.assertEqual([len(children[0].encr_i), len(children[0].integ_r)], [32, 32])

        # ESP: client -> 203.0.113.1 (gateway's lo) and the ICMP port unreachable back
        yield netns.run([harness.IP, "addr", "add", f"{BEHIND_GATEWAY}/32", "dev", "lo"], True)
        send = (
            "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
            f"[s.sendto(b'vpnaaa', ('{BEHIND_GATEWAY}', 9)) for _ in range(3)]"
        )
        yield netns.run([sys.executable, "-c", send])

        @defer.inlineCallbacks
        def counted() -> Generator[defer.Deferred[Any], Any, bool]:
            mine = (yield client.list_sas())[0].children[0]
            theirs = (yield gateway.list_sas())[0].children[0]
            return (
                mine.packets_out >= 3
                and theirs.packets_in >= 3
                and theirs.packets_out >= 1
                and mine.packets_in >= 1
            )

        yield poll_until(counted, "ESP packet counters")

        result = yield client.terminate()
        self.assertTrue(result.ok, result.output)
        self.assertEqual((yield client.list_sas()), [])
        yield poll_until(lambda: gateway.list_sas().addCallback(lambda s: s == []), "DELETE")
        self.assertEqual((yield gateway.stop()), 0)
        self.assertEqual((yield client.stop()), 0)

    @defer.inlineCallbacks
    def test_wrong_password(self):
        """EAP-MSCHAPv2 failure: --initiate reports failure quickly and no SA stays."""
        _, client, gateway = yield self.pair(password="wonderlant")
        result = yield client.initiate()
        self.assertFalse(result.ok)
        self.assertIn("EAP_MSCHAPV2 method failed", result.output)
        self.assertEqual((yield client.list_sas()), [])
        # charon as responder keeps its half-open IKE_SA a while after the AUTH_FAILED notify
        states = [sa.state for sa in (yield gateway.list_sas())]
        self.assertNotIn("ESTABLISHED", states)

    @defer.inlineCallbacks
    def test_gcm_ecp256(self):
        """AEAD proposal: AES-GCM-16 with PRF-HMAC-SHA2-256 and ECP-256, ESP AES-GCM-16."""
        _, client, _ = yield self.pair(
            proposals="aes128gcm16-prfsha256-ecp256", esp_proposals="aes128gcm16"
        )
        result = yield client.initiate()
        self.assertTrue(result.ok, result.output)
        sa = self.assertEstablished(client, (yield client.list_sas()))
        self.assertEqual((sa.encr_alg, sa.encr_keysize, sa.integ_alg), ("AES_GCM_16", 128, None))
        self.assertEqual((sa.prf_alg, sa.dh_group), ("PRF_HMAC_SHA2_256", "ECP_256"))
        self.assertEqual(sa.children[0].encr_alg, "AES_GCM_16")
        keys, children = client.keys().ike(sa.uniqueid), client.keys().children(sa.uniqueid)
        self.assertEqual([len(keys.g_ir), len(keys.sk_ei), len(keys.sk_ai)], [32, 20, 0])
        self.assertEqual([len(children[0].encr_i), len(children[0].integ_i)], [20, 0])
        self.check_schedule(client, sa)

    @defer.inlineCallbacks
    def test_x25519(self):
        """AES-CBC-256/HMAC-SHA2-256-128/PRF-HMAC-SHA2-256 with Curve25519."""
        _, client, _ = yield self.pair(proposals="aes256-sha256-x25519")
        result = yield client.initiate()
        self.assertTrue(result.ok, result.output)
        sa = self.assertEstablished(client, (yield client.list_sas()))
        self.assertEqual(sa.dh_group, "CURVE_25519")
        self.check_schedule(client, sa)

    @defer.inlineCallbacks
    def test_peap(self):
        """EAP-PEAP (MS-CHAPv2 inside) with PEERS.md's upstream build, which has eap-peap."""
        if not (harness.UPSTREAM.available() and harness.UPSTREAM.has_plugin("eap-peap")):
            raise unittest.SkipTest(f"no strongSwan with eap-peap at {harness.UPSTREAM.charon}")
        _, client, gateway = yield self.pair(auth="eap-peap", install=harness.UPSTREAM)
        result = yield client.initiate()
        self.assertTrue(result.ok, f"{result.output}\n{gateway.tail()}")
        self.assertIn("EAP method EAP_PEAP succeeded, MSK established", result.output)
        sa = self.assertEstablished(client, (yield client.list_sas()))
        self.assertEqual(sa.local_vips, ["192.0.2.1"])
        self.check_schedule(client, sa)

    @defer.inlineCallbacks
    def test_custom_port(self):
        """A gateway on another port than 500/4500: charon talks NAT-T framing from its port
        4500 to the gateway's port from the first message on (``remote_port``)."""
        _, client, _ = yield self.pair(gateway_port=(1500, 14500), remote_port=14500)
        result = yield client.initiate()
        self.assertTrue(result.ok, result.output)
        self.assertIn("to 198.51.100.1[14500]", result.output)
        self.assertNotIn("[500]", result.output)
        sa = self.assertEstablished(client, (yield client.list_sas()))
        self.assertEqual((sa.local_port, sa.remote_port), (4500, 14500))

    def check_schedule(self, client: Charon, sa: IkeSa) -> None:
        """Recompute the logged keys from the nonces, SPIs and g^ir (initiator's log): Nr from
        the IKE_SA_INIT response it received, Ni from the request at the head of its own
        AUTH octets (it logs no packet it sends)."""
        log = client.keys()
        received = [parse_message(p) for p in log.received()]
        response = next(m for m in received if m.exchange == "IKE_SA_INIT" and m.response)
        request = next(
            m for m in map(leading_message, log.labelled(harness.AUTH_OCTETS)) if not m.response
        )
        ni, nr = request.payload(PAYLOAD_NONCE), response.payload(PAYLOAD_NONCE)
        assert ni is not None and nr is not None
        keys = log.ike(sa.uniqueid)
        suite = Suite.of(sa)
        for name, value in ike_keys(suite, ni, nr, sa.spi_i, sa.spi_r, keys.g_ir).items():
            self.assertEqual(getattr(keys, name).hex(), value.hex(), name)
        children = log.children(sa.uniqueid)
        for name, value in child_keys(suite, keys.sk_d, ni, nr).items():
            self.assertEqual(getattr(children[0], name).hex(), value.hex(), name)

    @defer.inlineCallbacks
    def test_key_schedule(self):
        """The logged keys follow RFC 7296 from the logged inputs; the run doubles as the test
        vector capture (``VPNAAA_CHARON_VECTORS=path``)."""
        netns, client, gateway = yield self.pair()
        result = yield client.initiate()
        self.assertTrue(result.ok, result.output)
        sa = self.assertEstablished(client, (yield client.list_sas()))
        self.check_schedule(client, sa)
        ca, server = gateway_pki(netns.gateway_address)
        vectors = capture(client, gateway, sa, ca, server)
        check_vectors(self, vectors)
        target = os.environ.get("VPNAAA_CHARON_VECTORS")
        if target:
            vectors["strongswan"] = yield strongswan_version()
            Path(target).write_text(json.dumps(vectors, indent=2) + "\n")


@defer.inlineCallbacks
def strongswan_version() -> Generator[defer.Deferred[Any], Any, str]:
    out, _ = yield harness.run(
        ["dpkg-query", "-W", "-f", "${Version}", "strongswan-charon"], check=False
    )
    upstream = yield harness.DEBIAN.version()
    return f"strongSwan {upstream} (Debian package strongswan-charon {out.strip()})"


# --------------------------------------------------------------------------------------------
# Test vectors


def capture(
    client: Charon, gateway: Charon, sa: IkeSa, ca: pki.CaFiles, server: pki.ServerFiles
) -> dict[str, Any]:
    """Everything a key-derivation test needs from one run, from both charons' logs."""
    mine, theirs = client.keys(), gateway.keys()
    messages: list[Message] = []
    for packet in theirs.received() + mine.received():
        message = parse_message(packet)
        # IKE_SA_INIT and IKE_AUTH only: after them either side may start an INFORMATIONAL
        # (MOBIKE address updates when the TUN device appears) with its own message IDs
        if message.exchange not in ("IKE_SA_INIT", "IKE_AUTH") or message.spi_i != sa.spi_i:
            continue
        if all(m.data != packet for m in messages):
            messages.append(message)

    def order(m: Message) -> tuple[int, bool, int]:
        last = m.payloads[-1]
        number = struct.unpack("!H", last[1][:2])[0] if last[0] == PAYLOAD_SKF else 0
        return m.message_id, m.response, number

    messages.sort(key=order)
    request, response = messages[0], messages[1]
    ike = mine.ike(sa.uniqueid)
    child = mine.children(sa.uniqueid)[0]
    sa_child = sa.children[0]
    octets: list[str] = []
    for dump in mine.labelled(harness.AUTH_OCTETS) + theirs.labelled(harness.AUTH_OCTETS):
        if dump.data.hex() not in octets:
            octets.append(dump.data.hex())
    auths = mine.labelled(harness.AUTH_VALUE)
    msk = mine.labelled("secret")
    hexed = {k: v.hex() for k, v in vars(ike).items()}
    return {
        "description": (
            "One IKEv2 handshake between two strongSwan charons (initiator: EAP-MSCHAPv2 "
            "with a virtual IP request; responder: RSA certificate, RFC 7427 signature). "
            "Byte strings are hex. spi_* are the IKE header SPIs; the CHILD_SA's "
            "spi_i is the SPI the initiator chose (its inbound SA, r->i keys), spi_r the "
            "responder's (i->r keys)."
        ),
        "captured": datetime.date.today().isoformat(),
        "how": (
            "tests/interop/test_charon_harness.py CharonPairTests.test_key_schedule with "
            "VPNAAA_CHARON_VECTORS set; charon filelog levels ike=4 chd=4 net=4 ike_name=yes. "
            "Log lines used: 'shared Diffie Hellman secret', 'SKEYSEED', 'Sk_d secret' ... "
            "'Sk_pr secret' (keymat_v2.c, ike 4); 'encryption initiator key', 'encryption "
            "responder key', 'integrity initiator key', 'integrity responder key' (chd 4); "
            "'received packet' (net 4, both sides, the non-ESP marker removed) for the "
            "messages; 'octets = message + nonce + prf(Sk_px, IDx')', 'secret' (the EAP MSK) "
            "and 'AUTH = prf(prf(secret, keypad), octets)' (ike 4). Every value was "
            "recomputed from Ni, Nr, SPIs and g^ir, and every IKE_AUTH message decrypted and "
            "its ICV checked, before the file was written (VectorFileTests repeats that)."
        ),
        "ike_proposal": "aes256-sha256-modp2048",
        "ike_algorithms": {
            "encr": "ENCR_AES_CBC (12), 256-bit key",
            "integ": "AUTH_HMAC_SHA2_256_128 (12)",
            "prf": "PRF_HMAC_SHA2_256 (5)",
            "dh": "MODP 2048-bit, group 14",
        },
        "esp_proposal": "aes256-sha256 (ENCR_AES_CBC 256 + AUTH_HMAC_SHA2_256_128, no ESN)",
        "identities": {
            "idi": sa.local_id,
            "idr": sa.remote_id,
            "eap_identity": USER,
            "eap_password": PASSWORD,
            "virtual_ip": sa.local_vips[0],
        },
        "ike": {
            "spi_i": sa.spi_i.hex(),
            "spi_r": sa.spi_r.hex(),
            "ni": (request.payload(PAYLOAD_NONCE) or b"").hex(),
            "nr": (response.payload(PAYLOAD_NONCE) or b"").hex(),
            "ke_i": ke_data(request).hex(),
            "ke_r": ke_data(response).hex(),
            **hexed,
        },
        "child": {
            "spi_i": f"{sa_child.spi_in:08x}",
            "spi_r": f"{sa_child.spi_out:08x}",
            "keymat": "prf+(SK_d, Ni | Nr) = encr_i | integ_i | encr_r | integ_r",
            **{k: v.hex() for k, v in vars(child).items()},
        },
        "auth": {
            "msk": msk[0].data.hex() if msk else "",
            "signed_octets": octets,
            "eap_auth_values": [d.data.hex() for d in auths],
        },
        "messages": [
            {
                "exchange": m.exchange,
                "message_id": m.message_id,
                "response": m.response,
                "hex": m.data.hex(),
            }
            for m in messages
        ],
        "gateway": {
            "ca_pem": ca.cert.read_text(),
            "cert_pem": server.cert.read_text(),
            "key_pem": server.key.read_text(),
        },
    }


def check_vectors(case: unittest.TestCase, vectors: dict[str, Any]) -> None:
    """Recompute every derived value of ``vectors`` and verify both AUTH payloads."""
    case.assertEqual(vectors["ike_proposal"], "aes256-sha256-modp2048")
    ike = {k: bytes.fromhex(v) for k, v in vectors["ike"].items()}
    inputs = (ike["ni"], ike["nr"], ike["spi_i"], ike["spi_r"], ike["g_ir"])
    for name, value in ike_keys(VECTOR_SUITE, *inputs).items():
        case.assertEqual(ike[name].hex(), value.hex(), name)
    child = vectors["child"]
    for name, value in child_keys(VECTOR_SUITE, ike["sk_d"], ike["ni"], ike["nr"]).items():
        case.assertEqual(child[name], value.hex(), name)

    messages = [parse_message(bytes.fromhex(m["hex"])) for m in vectors["messages"]]
    request, response = messages[0], messages[1]
    case.assertEqual((request.exchange, request.response), ("IKE_SA_INIT", False))
    case.assertEqual((response.exchange, response.response), ("IKE_SA_INIT", True))
    case.assertEqual(request.payload(PAYLOAD_NONCE), ike["ni"])
    case.assertEqual(response.payload(PAYLOAD_NONCE), ike["nr"])
    case.assertEqual((response.spi_i, response.spi_r), (ike["spi_i"], ike["spi_r"]))

    # IKE_AUTH: decrypt every message (ICV checked), reassemble fragments, collect payloads
    plain: dict[tuple[int, bool], list[tuple[int, int, bytes]]] = {}
    for m in messages[2:]:
        keys = (ike["sk_er"], ike["sk_ar"]) if m.response else (ike["sk_ei"], ike["sk_ai"])
        first, text, number, _ = decrypt(m, *keys)
        plain.setdefault((m.message_id, m.response), []).append((number, first, text))
    payloads: dict[tuple[int, bool], list[tuple[int, bytes]]] = {}
    for key, parts in plain.items():
        parts.sort()
        payloads[key] = inner_payloads(parts[0][1], b"".join(p[2] for p in parts))

    def find(kind: int, response: bool) -> list[bytes]:
        return [
            body for (_, r), chain in sorted(payloads.items()) if r == response
            for t, body in chain if t == kind
        ]  # fmt: skip

    id_i, id_r = find(PAYLOAD_ID_I, False)[0], find(PAYLOAD_ID_R, True)[0]
    auth_i, auth_r = find(PAYLOAD_AUTH, False), find(PAYLOAD_AUTH, True)
    # responder's certificate AUTH: RFC 7427 signature over response | Ni | prf(SK_pr, IDr')
    signed = response.data + ike["ni"] + prf("sha256", ike["sk_pr"], id_r)
    case.assertIn(signed.hex(), vectors["auth"]["signed_octets"])
    case.assertEqual(auth_r[0][0], 14)  # Digital Signature
    length = auth_r[0][4]
    signature = auth_r[0][5 + length :]
    cert = x509.load_pem_x509_certificate(vectors["gateway"]["cert_pem"].encode())
    cert.public_key().verify(signature, signed, padding.PKCS1v15(), hashes.SHA256())
    key = serialization.load_pem_private_key(vectors["gateway"]["key_pem"].encode(), None)
    case.assertEqual(key.sign(signed, padding.PKCS1v15(), hashes.SHA256()), signature)
    # both EAP AUTHs: prf(prf(MSK, "Key Pad for IKEv2"), octets) (RFC 7296 §2.16)
    msk = bytes.fromhex(vectors["auth"]["msk"])
    case.assertEqual(len(msk), 64)
    pad_key = prf("sha256", msk, KEY_PAD)
    octets_i = request.data + ike["nr"] + prf("sha256", ike["sk_pi"], id_i)
    octets_r = signed
    case.assertEqual(auth_i[-1], bytes([2, 0, 0, 0]) + prf("sha256", pad_key, octets_i))
    case.assertEqual(auth_r[-1], bytes([2, 0, 0, 0]) + prf("sha256", pad_key, octets_r))


class VectorFileTests(unittest.TestCase):
    """The stored vectors are internally consistent (no charon needed)."""

    def test_vectors(self):
        if not VECTORS.exists():
            raise unittest.SkipTest(f"{VECTORS} not captured yet")
        vectors = json.loads(VECTORS.read_text())
        check_vectors(self, vectors)
        self.assertIn("strongSwan 5.9.8", vectors["strongswan"])


class NetnsTests(unittest.TestCase):
    """The namespace helper on its own."""

    def setUp(self) -> None:
        reason = harness.unavailable()
        if reason:
            raise unittest.SkipTest(reason)

    @defer.inlineCallbacks
    def test_root_gateway(self):
        """Gateway end in the root namespace: reachable from the client; destroy is complete
        and idempotent."""
        netns = yield make_netns(self)
        gateway, client = netns.gateway_address, netns.client_address
        self.assertTrue(gateway.startswith("198.51.100."))
        out, _ = yield harness.run([harness.IP, "-o", "addr", "show", "dev", netns.gateway_if])
        self.assertIn(f"{gateway}/30", out)
        out, _ = yield netns.run([harness.IP, "-o", "addr", "show", "dev", netns.client_if])
        self.assertIn(f"{client}/30", out)
        ping = f"import socket; socket.create_connection(('{gateway}', 9), 1)"
        out, code = yield netns.run([sys.executable, "-c", ping], check=False)
        self.assertIn("ConnectionRefusedError", out)  # a RST from the root namespace
        yield netns.destroy()
        yield netns.destroy()
        names, _ = yield harness.run([harness.IP, "netns", "list"])
        self.assertNotIn(netns.name, names)
        _, code = yield harness.run([harness.IP, "link", "show", netns.gateway_if], check=False)
        self.assertNotEqual(code, 0)

    @defer.inlineCallbacks
    def test_stale_removed(self):
        """A namespace named after a dead pid is removed by the next create()."""
        dead = next(p for p in range(4_000_000, 4_100_000) if not harness.pid_alive(p))
        name = f"{harness.PREFIX}{dead}-1"
        yield harness.run([harness.IP, "netns", "add", name])
        self.addCleanup(harness.delete_netns, name)
        removed = yield harness.remove_stale()
        self.assertIn(name, removed)


class _Stub(protocol.DatagramProtocol):
    """Stands where vpnaaa's responder will: records datagrams, answers every IKE_SA_INIT
    request with N(NO_PROPOSAL_CHOSEN) (RFC 7296 §3.10.1, type 14) so charon gives up at
    once."""

    def __init__(self, marker: bool) -> None:
        self.marker = marker
        self.received: list[tuple[bytes, tuple[str, int]]] = []

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received.append((data, addr))
        packet = data[4:] if self.marker else data
        request = parse_message(packet)
        notify = struct.pack("!BBHBBH", 0, 0, 8, 0, 0, 14)  # Notify, no SPI
        header = struct.pack(
            "!8s8sBBBBII", request.spi_i, bytes(8), 41, 0x20, 34, 0x20, 0, 28 + len(notify)
        )
        reply = header + notify
        self.transport.write(b"\0\0\0\0" + reply if self.marker else reply, addr)


class GatewaySideTests(unittest.TestCase):
    """The layouts vpnaaa will use: charon in the client namespace, the responder in the trial
    process's reactor, its sockets either in a gateway namespace (made there through
    :meth:`Netns.entered`) or on the root namespace's end of the veth pair."""

    def setUp(self) -> None:
        reason = harness.unavailable()
        if reason:
            raise unittest.SkipTest(reason)
        self.state = state_dir(self)

    def listen(self, netns: Netns, port: int, marker: bool) -> tuple[_Stub, int]:
        stub = _Stub(marker)
        with netns.entered():
            listening = reactor.listenUDP(port, stub, interface=netns.gateway_address)
        self.addCleanup(listening.stopListening)
        return stub, listening.getHost().port

    @defer.inlineCallbacks
    def initiate(
        self, netns: Netns, stub: _Stub, port: int
    ) -> Generator[defer.Deferred[Any], Any, tuple[bytes, int]]:
        ca, _ = gateway_pki(netns.gateway_address)
        role = Initiator(netns.gateway_address, ca.cert, remote_port=port)
        client = yield start_charon(self, self.state / "client", netns.name, role)
        result = yield client.initiate(timeout=5)
        self.assertFalse(result.ok)
        self.assertIn("received NO_PROPOSAL_CHOSEN notify error", result.output)
        self.assertEqual(len(stub.received), 1, f"{stub.received!r}\n{result.output}")
        data, (host, source_port) = stub.received[0]
        self.assertEqual(host, netns.client_address)
        return data, source_port

    @defer.inlineCallbacks
    def test_gateway_netns_port_500(self):
        """Responder sockets made inside the gateway namespace: the standard port 500 is free
        there whatever the root namespace runs. IKE_SA_INIT from charon's 500, no marker."""
        netns = yield make_netns(self, gateway_netns=True)
        stub, port = self.listen(netns, 500, marker=False)
        data, source_port = yield self.initiate(netns, stub, port)
        self.assertEqual(source_port, 500)
        self.assertEqual(parse_message(data).exchange, "IKE_SA_INIT")
        # the socket really lives in the gateway namespace
        out, _ = yield netns.run(["ss", "-uln", "src", f"{netns.gateway_address}:500"], True)
        self.assertIn(f"{netns.gateway_address}:500", out)

    @defer.inlineCallbacks
    def test_root_port_500(self):
        """Gateway end in the root namespace, port 500: only when nothing holds UDP 500 on all
        addresses there (a running vpnaaa or charon would)."""
        netns = yield make_netns(self)
        try:
            stub, port = self.listen(netns, 500, marker=False)
        except error.CannotListenError as e:
            raise unittest.SkipTest(f"UDP 500 is taken in the root namespace: {e}") from None
        data, source_port = yield self.initiate(netns, stub, port)
        self.assertEqual(source_port, 500)
        self.assertEqual(parse_message(data).exchange, "IKE_SA_INIT")

    @defer.inlineCallbacks
    def test_root_custom_port(self):
        """Gateway end in the root namespace on a free port: charon sends from its 4500 with
        the non-ESP marker from the first message on."""
        netns = yield make_netns(self)
        stub, port = self.listen(netns, 0, marker=True)
        data, source_port = yield self.initiate(netns, stub, port)
        self.assertEqual(source_port, 4500)
        self.assertEqual(data[:4], bytes(4))
        self.assertEqual(parse_message(data[4:]).exchange, "IKE_SA_INIT")
