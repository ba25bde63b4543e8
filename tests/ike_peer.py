"""A scripted IKEv2 initiator (RFC 7296) that drives vpnaaa's Responder in-process.

    Gateway    the responder under test: a Responder on a twisted Clock with a recording
               installer, an address pool and the in-process EapEngine (EAP-MSCHAPv2)
               reading a real user file in a temporary directory
    Initiator  the peer, one method per exchange (each returns the decrypted response):
                 sa_init      IKE_SA_INIT: SA, KE, Ni, N(NAT-D), N(SIGNATURE_HASH_ALGORITHMS)
                 auth_first   IKE_AUTH #1: IDi, [IDr], CP(request), SAi2, TSi, TSr; checks
                              the gateway's certificate signature in AUTH (§2.15, RFC 7427)
                 authenticate EAP-MSCHAPv2 as the peer (RFC 2759), checking the S= proof
                 auth_last    AUTH from the MSK (§2.16), checks the gateway's AUTH
                 create_child, rekey_child, rekey_ike   CREATE_CHILD_SA (§1.3, §2.18)
                 delete_child, delete_ike, liveness     INFORMATIONAL (§1.4, §2.4)
               and ``request`` / ``send_inner`` for any payload chain (or any plaintext)
               sealed with the SA's valid keys, which is what a fuzzer needs.
    World      both, forkable: ``fork()`` is a deep copy that shares only what never
               changes (keys, policies, the user store), so a test reaches a state once
               and starts each input from its own copy in well under a millisecond.

The initiator reuses vpnaaa's codec and key schedule (message, keys, sk, transforms,
fragments), which are proven against charon's vectors elsewhere; its EAP peer side uses
vpnaaa.mschap's RFC 2759/3079 computations. Nothing here reaches into the responder's
state: it sees only the datagrams the responder sends.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import io
import ipaddress
import os
import pickle
import shutil
import struct
import tempfile
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from twisted.internet import task
from twisted.logger import Logger

from tests.support import ecdsa_pki
from vpnaaa import mschap
from vpnaaa.eap import packet
from vpnaaa.eap.engine import EapEngine
from vpnaaa.eap.mschapv2 import MsChapV2
from vpnaaa.eap.packet import Code, Type
from vpnaaa.ike import fragments, keys, sk, transforms
from vpnaaa.ike.const import (
    AuthMethod,
    CfgAttribute,
    CfgType,
    DhGroup,
    EncrId,
    Esn,
    ExchangeType,
    HashAlgorithm,
    HeaderFlag,
    IdType,
    IntegId,
    NotifyType,
    PayloadType,
    PrfId,
    ProtocolId,
    TransformType,
)
from vpnaaa.ike.message import (
    Authentication,
    Certificate,
    Configuration,
    Delete,
    Eap,
    Encrypted,
    EncryptedFragment,
    Entry,
    Header,
    Identification,
    Ke,
    Message,
    Nonce,
    Notify,
    Proposal,
    Sa,
    TrafficSelector,
    TrafficSelectors,
    Transform,
    decode_message,
    decode_payloads,
    encode_message,
    encode_payloads,
)
from vpnaaa.ike.proposal import DEFAULT_ESP, DEFAULT_IKE, Policy
from vpnaaa.ike.protocol import HALF_OPEN_TIMEOUT, Limits, Responder, Timing
from vpnaaa.ike.sa import Endpoint, IkeSa, Profile, ResponderContext, State
from vpnaaa.kernel.installer import NullInstaller
from vpnaaa.pki import ServerIdentity, load_server_identity
from vpnaaa.pool import AddressPool
from vpnaaa.users import User, UserStore, write_users

USER = "alice"
PASSWORD = "correct horse battery"
GATEWAY_ADDRESS = "192.0.2.1"
PEER = Endpoint("198.51.100.7", 500)
POOL = ipaddress.IPv4Network("10.77.0.0/28")
DNS = (ipaddress.IPv4Address("10.77.0.1"),)
ANY4 = TrafficSelector(ipaddress.IPv4Address("0.0.0.0"), ipaddress.IPv4Address("255.255.255.255"))
ANY6 = TrafficSelector(ipaddress.IPv6Address("::"), ipaddress.IPv6Address("ffff:" * 7 + "ffff"))
ADDRESS_REQUEST = Configuration(
    CfgType.REQUEST,
    ((CfgAttribute.INTERNAL_IP4_ADDRESS, b""), (CfgAttribute.INTERNAL_IP4_DNS, b"")),
)
_ECDSA_SHA256 = bytes.fromhex("300a06082a8648ce3d040302")  # RFC 7427 §3 AlgorithmIdentifier
_RSA_SHA256 = bytes.fromhex("300d06092a864886f70d01010b0500")


class PeerError(AssertionError):
    """The responder said something a correct initiator must refuse (a bad AUTH, a
    response that does not verify), or nothing where an answer is due."""


# -- the gateway under test ------------------------------------------------------------


class RecordingPort:
    """Stands in for vpnaaa.ike.protocol.IkePort: records (datagram, destination)."""

    def __init__(self, number: int = 500) -> None:
        self.number = number
        self.sent: list[tuple[bytes, Endpoint]] = []

    def send(self, datagram: bytes, remote: Endpoint) -> None:
        self.sent.append((datagram, remote))

    def take(self) -> list[tuple[bytes, Endpoint]]:
        sent, self.sent = self.sent, []
        return sent


class Reqids:
    """The context's reqid source (a counter that survives a deep copy)."""

    def __init__(self) -> None:
        self.last = 0

    def __call__(self) -> int:
        self.last += 1
        return self.last


@functools.cache
def server_identity() -> ServerIdentity:
    _, server = ecdsa_pki()
    return load_server_identity(server.key, server.cert, server.chain)


@functools.cache
def _user() -> User:
    return User.create(USER, PASSWORD)  # PBKDF2 for PAP: paid once per run


@functools.cache
def _user_store() -> UserStore:
    directory = Path(tempfile.mkdtemp(prefix="vpnaaa-test-ike-peer-"))
    os.chmod(directory, 0o700)
    atexit.register(shutil.rmtree, directory, True)
    write_users(directory / "users.json", {USER: _user()})
    store = UserStore(directory / "users.json")
    store.load()
    return store


PFS_GROUPS = ("curve25519", "ecp256", "modp2048")  # not in DEFAULT_ESP: PFS is opt-in


@functools.cache
def _policies() -> tuple[Policy, Policy]:
    ike = Policy.from_names(ProtocolId.IKE, DEFAULT_IKE)
    return ike, Policy.from_names(ProtocolId.ESP, DEFAULT_ESP + PFS_GROUPS)


def mschapv2(users: UserStore, source: str | None) -> MsChapV2:
    """The EAP-MSCHAPv2 method factory of the test gateway (picklable, unlike a lambda)."""
    return MsChapV2(users, source=source)


class Gateway:
    """A Responder as the daemon builds it, with everything a test inspects in reach:
    ``clock``, ``pool``, ``engine`` (live EAP conversations: ``len(engine)``),
    ``installer.installed`` (CHILD_SAs by inbound SPI)."""

    def __init__(
        self,
        *,
        pool: ipaddress.IPv4Network = POOL,
        listen: str = GATEWAY_ADDRESS,
        limits: Limits | None = None,
        timing: Timing | None = None,
        child_lifetime: int = 28800,
        random_bytes: Callable[[int], bytes] = os.urandom,
        **profile: Any,
    ) -> None:
        """``profile``: Profile options of the one profile (dpd_delay, max_sessions_per_user,
        session_limit, users, rekey). Lifetimes get a fixed jitter of one half: soft at 85 %,
        hard at 95 %. ``random_bytes`` gives the gateway's SPIs and nonces."""
        context = {"child_lifetime": child_lifetime, "random_bytes": random_bytes}
        self.clock = task.Clock()
        self.users = _user_store()
        self.engine = EapEngine(
            [(Type.MSCHAPV2, functools.partial(mschapv2, self.users))], self.clock
        )
        self.pool = AddressPool(pool)
        self.installer = NullInstaller()
        ike_policy, esp_policy = _policies()
        self.context = ResponderContext(
            ike_policy=ike_policy,
            esp_policy=esp_policy,
            identity=server_identity(),
            profiles=(Profile("default", self.pool, DNS, (), self.engine, **profile),),
            next_reqid=Reqids(),
            jitter=lambda: 0.5,
            **context,
        )
        self.responder = Responder(
            self.context,
            self.installer,
            self.clock,
            listen,
            limits or Limits(),
            timing or Timing(),
        )

    def leaks(self) -> list[str]:
        """What the responder holds that it should not, right now: a closed SA still
        indexed, an index entry or timer or clock call for an SA it no longer has, a
        half-open SA that never expires, a lease, EAP conversation or installed CHILD_SA
        without a live SA, an SA stuck waiting for the edge. Empty when all is well."""
        responder = self.responder
        found = []
        live = list(responder.sas.values())
        live_ids = {id(sa) for sa in live}
        for spi, sa in responder.sas.items():
            if sa.state == State.CLOSED:
                found.append(f"closed SA {sa.name} still in sas")
            if sa.working is not None or sa.installing:
                found.append(f"SA {sa.name} stuck waiting for the edge ({sa.working})")
            if spi != sa.spi:
                found.append(f"SA {sa.name} filed under SPI {spi.hex()}, not its own")
        for key, sa in responder._by_initiator.items():
            if id(sa) not in live_ids:
                found.append(f"_by_initiator {key} names an SA that is gone")
            elif sa.state == State.ESTABLISHED:
                found.append(f"_by_initiator {key} names an established SA")
        for spi, timers in responder._timers.items():
            for name, timer in timers.items():
                if spi not in responder.sas:
                    found.append(f"{name} timer for SPI {spi.hex()} without an SA")
                elif not timer.active():
                    found.append(f"{name} timer for SPI {spi.hex()} no longer active")
        for user, held in responder._by_user.items():
            for sa in held:
                if id(sa) not in live_ids:
                    found.append(f"sessions of {user!r} list an SA that is gone")
        timed = set()
        for call in self.clock.getDelayedCalls():
            for arg in (*call.args, *call.kw.values()):
                if isinstance(arg, IkeSa):
                    timed.add(id(arg))
                    if id(arg) not in live_ids:
                        found.append(f"clock call {call.func} for SA {arg.name} that is gone")
        for sa in live:
            if sa.state != State.ESTABLISHED and id(sa) not in timed:
                found.append(f"half-open SA {sa.name} ({sa.state.name}) never expires")
        leased = {sa.virtual_ip for sa in live if sa.virtual_ip is not None}
        if self.pool.leased != len(leased):
            found.append(f"{self.pool.leased} addresses leased, {len(leased)} SAs hold one")
        in_eap = sum(1 for sa in live if sa.state == State.EAP)
        if len(self.engine) > in_eap:
            found.append(f"{len(self.engine)} EAP conversations, {in_eap} SAs in EAP")
        children = {spi for sa in live for spi in sa.children}
        installed = set(self.installer.installed)
        if installed - children:
            found.append(f"CHILD_SAs {sorted(installed - children)} installed, no SA has them")
        if children - installed:
            found.append(f"CHILD_SAs {sorted(children - installed)} known, not installed")
        return found

    def drain(self) -> list[str]:
        """Let every half-open SA expire, then stop the responder as the daemon does: what
        is left anywhere afterwards (an SA, index entry, timer, lease, EAP conversation,
        CHILD_SA) leaked. Empty when all is well."""
        self.clock.advance(HALF_OPEN_TIMEOUT + 1)
        found = [f"after expiry: {leak}" for leak in self.leaks()]
        found += [
            f"after expiry: half-open SA {sa.name} ({sa.state.name}) still there"
            for sa in self.responder.sas.values()
            if sa.state != State.ESTABLISHED
        ]
        stopped = self.responder.shutdown()  # DELETEs nobody answers here: a bounded wait
        self.clock.advance(self.responder.timing.shutdown_wait + 1)
        if not stopped.called:
            found.append("shutdown did not finish within shutdown_wait")
        responder = self.responder
        left = {
            "SAs": len(responder.sas),
            "half-open index entries": len(responder._by_initiator),
            "timers": len(responder._timers),
            "leases": self.pool.leased,
            "EAP conversations": len(self.engine),
            "CHILD_SAs": len(self.installer.installed),
            "clock calls for SAs": sum(
                1
                for call in self.clock.getDelayedCalls()
                if any(isinstance(a, IkeSa) for a in (*call.args, *call.kw.values()))
            ),
        }
        found += [f"after shutdown: {n} {what}" for what, n in left.items() if n]
        return found

    def shared(self) -> list[object]:
        """What a fork shares with its original: immutable, or state no test changes."""
        return [
            self.users,
            self.context.identity,
            self.context.ike_policy,
            self.context.esp_policy,
        ]


# -- the initiator's negotiation -------------------------------------------------------


@dataclass(frozen=True)
class Suite:
    """What the initiator proposes for its IKE SA (one proposal, §3.3)."""

    encr: int = EncrId.AES_GCM_16
    key_bits: int | None = 256
    prf: int = PrfId.HMAC_SHA2_256
    integ: int | None = None  # required unless ``encr`` is AEAD
    group: int = DhGroup.CURVE25519

    def proposal(self, spi: bytes = b"", group: int | None = None) -> Proposal:
        items = [
            Transform(TransformType.ENCR, self.encr, self.key_bits),
            Transform(TransformType.PRF, self.prf),
        ]
        if self.integ is not None:
            items.append(Transform(TransformType.INTEG, self.integ))
        items.append(Transform(TransformType.DH, group or self.group))
        return Proposal(1, ProtocolId.IKE, spi, tuple(items))


CURVE25519_GCM = Suite()
MODP2048_CBC = Suite(
    encr=EncrId.AES_CBC,
    key_bits=128,
    prf=PrfId.HMAC_SHA2_256,
    integ=IntegId.HMAC_SHA2_256_128,
    group=DhGroup.MODP2048,
)


def esp_proposal(spi: int, group: int | None = None, *, aead: bool = True) -> Proposal:
    """An ESP proposal (§3.3) for a CHILD_SA we would receive on with ``spi``."""
    if aead:
        items = [Transform(TransformType.ENCR, EncrId.AES_GCM_16, 128)]
    else:
        items = [
            Transform(TransformType.ENCR, EncrId.AES_CBC, 256),
            Transform(TransformType.INTEG, IntegId.HMAC_SHA2_256_128),
        ]
    if group is not None:
        items.append(Transform(TransformType.DH, group))
    items.append(Transform(TransformType.ESN, Esn.NO))
    return Proposal(1, ProtocolId.ESP, spi.to_bytes(4, "big"), tuple(items))


@dataclass
class IkeKeysInUse:
    """One IKE SA as the initiator holds it."""

    spi_i: bytes
    spi_r: bytes
    prf: transforms.Prf
    keys: keys.IkeKeys
    outbound: sk.SkCrypto
    inbound: sk.SkCrypto
    cipher: transforms.AnyCipher
    integrity: transforms.Integrity | None


@dataclass
class ChildPair:
    """A CHILD_SA from the initiator's side: ``ours`` is the SPI it receives on (sent in
    its proposal), ``theirs`` the responder's (from the accepted proposal)."""

    ours: int
    theirs: int
    keymat: keys.ChildKeys = field(repr=False)


class MsChapV2Peer:
    """EAP-MSCHAPv2 peer side (draft-kamath-pppext-eap-mschapv2-02, RFC 2759, RFC 3079)."""

    def __init__(self, user: str, password: str) -> None:
        self.user = user
        self.password_hash = mschap.nt_password_hash(password)
        self.peer_challenge = os.urandom(16)
        self.nt_response = b""
        self.proof = b""
        self.server_verified = False

    def response(self, ms_id: int, challenge: bytes) -> bytes:
        name = self.user.encode()
        self.nt_response = mschap.generate_nt_response(
            challenge, self.peer_challenge, name, self.password_hash
        )
        self.proof = mschap.generate_authenticator_response(
            self.password_hash, self.nt_response, self.peer_challenge, challenge, name
        )
        value = self.peer_challenge + bytes(8) + self.nt_response + b"\x00"
        body = bytes([len(value)]) + value + name
        return struct.pack("!BBH", 2, ms_id, 4 + len(body)) + body

    def msk(self) -> bytes:
        """The peer's MSK: its send start key then its receive start key (RFC 3079 §3.4,
        as wpa_supplicant's eap_mschapv2 getKey returns it)."""
        master = mschap.master_key(self.password_hash, self.nt_response)
        send = mschap.asymmetric_start_key(master, is_send=True, is_server=False)
        receive = mschap.asymmetric_start_key(master, is_send=False, is_server=False)
        return send + receive


# -- the initiator ---------------------------------------------------------------------


class Initiator:
    """One scripted IKEv2 initiator talking to ``gateway`` from ``address``."""

    def __init__(
        self,
        gateway: Gateway,
        *,
        address: Endpoint = PEER,
        suite: Suite = CURVE25519_GCM,
        fragmentation: bool = False,
    ) -> None:
        self.gateway = gateway
        self.address = address
        self.port = RecordingPort(500)
        self.suite = suite
        self.fragmentation = fragmentation
        self.ike: IkeKeysInUse | None = None
        self.spi_i = os.urandom(8)
        self.next_id = 0
        self.init_request = self.init_response = b""
        self.ni = self.nr = b""
        self.idi = Identification(IdType.RFC822_ADDR, b"alice@example.test")
        self.idr: Identification | None = None
        self.gateway_key: object = None  # the responder certificate's public key
        self.eap_request: bytes | None = None  # the last EAP Request the responder sent
        self.eap_peer: MsChapV2Peer | None = None
        self.eap_succeeded = False
        self.virtual_ip: ipaddress.IPv4Address | None = None
        self.children: dict[int, ChildPair] = {}  # by ``ours``
        self._first_child_spi = 0
        self._reassembler = fragments.Reassembler()

    # -- transport ---------------------------------------------------------------------

    def deliver(self, datagram: bytes, source: Endpoint | None = None) -> list[bytes]:
        """Hand ``datagram`` to the responder as if it came from ``source`` (default:
        our address); return the datagrams it sent back to that address."""
        source = source or self.address
        self.port.sent.clear()
        self.gateway.responder.receive(datagram, source, self.port)
        return [d for d, to in self.port.take() if to == source]

    # -- IKE_SA_INIT (§1.2) ------------------------------------------------------------

    def sa_init(
        self,
        *,
        group: int | None = None,
        extra: Sequence[Entry] = (),
        nonce: bytes | None = None,
    ) -> Message:
        """IKE_SA_INIT; on success the IKE SA's keys are derived (§2.14). Returns the
        response (cleartext) whatever it is: an INVALID_KE_PAYLOAD, a COOKIE, ..."""
        group = group or self.suite.group
        dh = transforms.group_for(group)
        private, public = dh.generate()
        self.ni = nonce or os.urandom(32)
        zero = bytes(8)
        entries: list[Entry] = [
            (PayloadType.SA, Sa((self.suite.proposal(group=group),))),
            (PayloadType.KE, Ke(group, public)),
            (PayloadType.NONCE, Nonce(self.ni)),
            *extra,
            _notify(NotifyType.NAT_DETECTION_SOURCE_IP, _nat_hash(self.spi_i, zero, self.address)),
            _notify(
                NotifyType.NAT_DETECTION_DESTINATION_IP,
                _nat_hash(self.spi_i, zero, Endpoint(GATEWAY_ADDRESS, 500)),
            ),
            _notify(
                NotifyType.SIGNATURE_HASH_ALGORITHMS, struct.pack("!H", HashAlgorithm.SHA2_256)
            ),
        ]
        if self.fragmentation:
            entries.append(_notify(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED))
        header = Header(self.spi_i, zero, ExchangeType.IKE_SA_INIT, HeaderFlag.INITIATOR, 0)
        self.init_request = encode_message(header, entries)
        replies = self.deliver(self.init_request)
        if len(replies) != 1:
            raise PeerError(f"IKE_SA_INIT: {len(replies)} replies")
        response = decode_message(replies[0])
        ke, nr, sa = (
            response.get(PayloadType.KE),
            response.get(PayloadType.NONCE),
            response.get(PayloadType.SA),
        )
        if not (isinstance(ke, Ke) and isinstance(nr, Nonce) and isinstance(sa, Sa)):
            return response  # refused: the caller asserts on the notify
        self.init_response = replies[0]
        self.nr = nr.data
        prf, cipher, integrity = _negotiated(sa.proposals[0])
        seed = keys.skeyseed(prf, self.ni, self.nr, dh.shared_secret(private, ke.data))
        self._set_ike(prf, cipher, integrity, seed, self.spi_i, response.header.spi_r)
        self.next_id = 1
        return response

    def _set_ike(self, prf, cipher, integrity, seed, spi_i, spi_r) -> None:
        ike_keys = keys.ike_keys(prf, cipher, integrity, seed, self.ni, self.nr, spi_i, spi_r)
        outbound, inbound = sk.directions(ike_keys, cipher, integrity, initiator=True)
        self.ike = IkeKeysInUse(spi_i, spi_r, prf, ike_keys, outbound, inbound, cipher, integrity)

    # -- protected exchanges -----------------------------------------------------------

    def seal(
        self,
        exchange: int,
        first_payload: int,
        plaintext: bytes,
        message_id: int | None = None,
        flags: int = HeaderFlag.INITIATOR,
    ) -> bytes:
        """One SK message (§3.14) around ``plaintext``, any octets at all: a valid ICV
        makes the responder decode whatever is inside."""
        ike = self._keys()
        mid = self.next_id if message_id is None else message_id
        body_length = sk.sealed_length(len(plaintext), ike.outbound)
        total = 28 + 4 + body_length
        header = Header(ike.spi_i, ike.spi_r, exchange, flags, mid, PayloadType.SK, length=total)
        prefix = header.encode() + struct.pack("!BBH", first_payload, 0, 4 + body_length)
        return prefix + sk.seal(prefix, plaintext, ike.outbound)

    def seal_fragment(
        self,
        exchange: int,
        piece: fragments.Fragment,
        message_id: int | None = None,
    ) -> bytes:
        """One SKF message (RFC 7383 §2.5) carrying ``piece`` of an inner chain."""
        ike = self._keys()
        mid = self.next_id if message_id is None else message_id
        body_length = sk.sealed_length(len(piece.data), ike.outbound)
        numbers = struct.pack("!HH", piece.number, piece.total)
        total = 28 + 4 + len(numbers) + body_length
        header = Header(
            ike.spi_i, ike.spi_r, exchange, HeaderFlag.INITIATOR, mid, PayloadType.SKF, length=total
        )
        generic = struct.pack("!BBH", piece.first_payload, 0, 4 + len(numbers) + body_length)
        prefix = header.encode() + generic + numbers
        return prefix + sk.seal(prefix, piece.data, ike.outbound)

    def send_inner(
        self,
        exchange: int,
        first_payload: int,
        plaintext: bytes,
        message_id: int | None = None,
    ) -> Message | None:
        """Seal and deliver; the decrypted response, or None if the responder was silent.
        The next message ID advances when the request is answered."""
        mid = self.next_id if message_id is None else message_id
        replies = self.deliver(self.seal(exchange, first_payload, plaintext, mid))
        response = None
        for datagram in replies:
            response = self.open(datagram)
        if response is not None and response.header.message_id == self.next_id:
            self.next_id += 1
        return response

    def request(
        self, exchange: int, entries: Sequence[Entry], message_id: int | None = None
    ) -> Message | None:
        """Encrypt ``entries`` with the SA's keys and deliver them (§1.2); the decrypted
        response (its header and inner payloads) or None."""
        first, plaintext = encode_payloads(entries)
        return self.send_inner(exchange, first, plaintext, message_id)

    def must(self, exchange: int, entries: Sequence[Entry]) -> Message:
        response = self.request(exchange, entries)
        if response is None:
            raise PeerError(f"no answer to exchange {exchange} #{self.next_id}")
        return response

    def open(self, datagram: bytes) -> Message | None:
        """Verify and decrypt a response; None for a fragment that completes nothing."""
        ike = self._keys()
        message = decode_message(datagram)
        if not message.header.response or message.header.initiator:
            raise PeerError(f"flags {message.header.flags:#x} on a response")
        if (message.header.spi_i, message.header.spi_r) != (ike.spi_i, ike.spi_r):
            raise PeerError("response for another IKE SA")
        _, payload = message.payloads[-1]
        body = payload.raw if isinstance(payload, Encrypted | EncryptedFragment) else None
        if body is None:
            raise PeerError("unprotected response after IKE_SA_INIT")
        try:
            plaintext = sk.open(datagram[: len(datagram) - len(body)], body, ike.inbound)
        except sk.SkError as e:
            raise PeerError(f"response does not verify: {e}") from None
        if isinstance(payload, EncryptedFragment):
            piece = fragments.Fragment(
                payload.number, payload.total, plaintext, payload.first_payload
            )
            done = self._reassembler.add(message.header.message_id, piece)
            if done is None:
                return None
            return Message(message.header, decode_payloads(*done))
        return Message(message.header, decode_payloads(payload.first_payload, plaintext))

    # -- requests from the gateway (§1.4, §2.2: its own message IDs) -----------------------

    def gateway_requests(self) -> list[Message]:
        """Verify and decrypt the requests the gateway sent since the last look (its
        liveness checks and deletes), in order; they are not answered."""
        ike = self._keys()
        requests = []
        for datagram, _ in self.port.take():
            message = decode_message(datagram)
            header = message.header
            if header.response:
                continue  # a late answer to one of ours
            if header.initiator:
                raise PeerError(f"flags {header.flags:#x} on the responder's request")
            _, payload = message.payloads[-1]
            if not isinstance(payload, Encrypted):
                raise PeerError("unprotected request from the gateway")
            try:
                plaintext = sk.open(
                    datagram[: len(datagram) - len(payload.raw)], payload.raw, ike.inbound
                )
            except sk.SkError as e:
                raise PeerError(f"request does not verify: {e}") from None
            requests.append(Message(header, decode_payloads(payload.first_payload, plaintext)))
        return requests

    def answer(self, request: Message, entries: Sequence[Entry] = ()) -> list[bytes]:
        """Respond to a gateway request (same message ID, §2.1); what the gateway sent
        back, if anything."""
        first, plaintext = encode_payloads(list(entries))
        flags = HeaderFlag.INITIATOR | HeaderFlag.RESPONSE
        exchange, mid = request.header.exchange, request.header.message_id
        return self.deliver(self.seal(exchange, first, plaintext, mid, flags))

    def _keys(self) -> IkeKeysInUse:
        if self.ike is None:
            raise PeerError("no IKE SA keys yet")
        return self.ike

    # -- IKE_AUTH (§1.2, §2.16) --------------------------------------------------------

    def auth_first_entries(
        self,
        *,
        idr: Identification | None = None,
        cp: Configuration | None = ADDRESS_REQUEST,
        tsi: Sequence[TrafficSelector] = (ANY4,),
        tsr: Sequence[TrafficSelector] = (ANY4,),
        child_spi: int | None = None,
        initial_contact: bool = False,
    ) -> list[Entry]:
        """The IKE_AUTH #1 chain a Windows-like client sends (without AUTH: EAP), with
        N(INITIAL_CONTACT) when asked (§2.4: the client has no other SA with us)."""
        self._first_child_spi = child_spi or _random_spi()
        entries: list[Entry] = [(PayloadType.IDi, self.idi)]
        if initial_contact:
            entries.append(_notify(NotifyType.INITIAL_CONTACT))
        if idr is not None:
            entries.append((PayloadType.IDr, idr))
        if cp is not None:
            entries.append((PayloadType.CP, cp))
        entries += [
            (PayloadType.SA, Sa((esp_proposal(self._first_child_spi),))),
            (PayloadType.TSi, TrafficSelectors(tuple(tsi))),
            (PayloadType.TSr, TrafficSelectors(tuple(tsr))),
        ]
        return entries

    def auth_first(self, entries: Sequence[Entry] | None = None, **options) -> Message:
        """IKE_AUTH #1. A response with AUTH must carry a certificate whose key signed
        our IKE_SA_INIT view (§2.15); the EAP Request in it is kept for the next round."""
        entries = list(entries) if entries is not None else self.auth_first_entries(**options)
        idi = next((p for k, p in entries if k == PayloadType.IDi), None)
        if isinstance(idi, Identification):
            self.idi = idi
        response = self.must(ExchangeType.IKE_AUTH, entries)
        self.note_eap(response)
        auth, idr = response.get(PayloadType.AUTH), response.get(PayloadType.IDr)
        if isinstance(auth, Authentication) and isinstance(idr, Identification):
            self.idr = idr
            certificate = response.get(PayloadType.CERT)
            if not isinstance(certificate, Certificate):
                raise PeerError("AUTH without a certificate")
            self.gateway_key = x509.load_der_x509_certificate(certificate.data).public_key()
            self._verify_signature(auth)
        return response

    def _verify_signature(self, auth: Authentication) -> None:
        """RFC 7296 §2.15 signed octets, RFC 7427 §3 signature (or RSA-SHA1, method 1)."""
        ike = self._keys()
        assert self.idr is not None
        octets = keys.signed_octets(
            ike.prf, self.init_response, self.ni, ike.keys.sk_pr, self.idr.encode()
        )
        key = self.gateway_key
        try:
            if auth.method == AuthMethod.DIGITAL_SIGNATURE:
                length = auth.data[0]
                algorithm, signature = auth.data[1 : 1 + length], auth.data[1 + length :]
                if algorithm == _ECDSA_SHA256 and isinstance(key, ec.EllipticCurvePublicKey):
                    key.verify(signature, octets, ec.ECDSA(hashes.SHA256()))
                elif algorithm == _RSA_SHA256 and isinstance(key, rsa.RSAPublicKey):
                    key.verify(signature, octets, padding.PKCS1v15(), hashes.SHA256())
                else:
                    raise PeerError(f"signature algorithm {algorithm.hex()}")
            elif auth.method == AuthMethod.RSA_SIG and isinstance(key, rsa.RSAPublicKey):
                key.verify(auth.data, octets, padding.PKCS1v15(), hashes.SHA1())
            else:
                raise PeerError(f"AUTH method {auth.method}")
        except InvalidSignature:
            raise PeerError("the gateway's AUTH signature does not verify") from None

    def note_eap(self, response: Message) -> None:
        """Keep the EAP Request of ``response`` (None if it has none) for ``eap_step``."""
        eap = response.get(PayloadType.EAP)
        self.eap_request = eap.data if isinstance(eap, Eap) else None

    def eap(self, data: bytes) -> Message:
        """One IKE_AUTH round carrying an EAP Response (§2.16)."""
        response = self.must(ExchangeType.IKE_AUTH, [(PayloadType.EAP, Eap(data))])
        self.note_eap(response)
        return response

    def eap_step(self, user: str = USER, password: str = PASSWORD) -> Message:
        """Answer the outstanding EAP Request as an EAP-MSCHAPv2 peer would."""
        if self.eap_request is None:
            raise PeerError("no EAP Request to answer")
        request = packet.parse(self.eap_request)
        if request.code != Code.REQUEST:
            raise PeerError(f"EAP code {request.code} is not a Request")
        if request.type == Type.IDENTITY:
            self.eap_peer = MsChapV2Peer(user, password)
            return self.eap(_eap_response(request.identifier, Type.IDENTITY, user.encode()))
        if request.type != Type.MSCHAPV2 or self.eap_peer is None:
            raise PeerError(f"EAP type {request.type}")
        opcode, ms_id = request.data[0], request.data[1]
        if opcode == 1:  # Challenge: Value-Size 16, challenge, name
            challenge = request.data[5:21]
            data = self.eap_peer.response(ms_id, challenge)
            return self.eap(_eap_response(request.identifier, Type.MSCHAPV2, data))
        if opcode == 3:  # Success: S=<proof> M=...
            if request.data[4:46] != self.eap_peer.proof:
                raise PeerError("the gateway's MS-CHAPv2 authenticator response is wrong")
            self.eap_peer.server_verified = True
            return self.eap(_eap_response(request.identifier, Type.MSCHAPV2, b"\x03"))
        if opcode == 4:  # Failure: acknowledge
            return self.eap(_eap_response(request.identifier, Type.MSCHAPV2, b"\x04"))
        raise PeerError(f"MS-CHAPv2 OpCode {opcode}")

    def authenticate(self, user: str = USER, password: str = PASSWORD) -> Message:
        """EAP rounds until EAP-Success or EAP-Failure; returns that last response."""
        for _ in range(8):
            response = self.eap_step(user, password)
            if self.eap_request is None:
                return response
            code = self.eap_request[0]
            if code in (Code.SUCCESS, Code.FAILURE):
                self.eap_succeeded = code == Code.SUCCESS
                return response
        raise PeerError("EAP did not finish in 8 rounds")

    def auth_last_entries(self) -> list[Entry]:
        """AUTH = prf(prf(MSK, "Key Pad for IKEv2"), <InitiatorSignedOctets>) (§2.15, §2.16)."""
        ike = self._keys()
        if self.eap_peer is None or not self.eap_peer.server_verified:
            raise PeerError("EAP did not succeed")
        octets = keys.signed_octets(
            ike.prf, self.init_request, self.nr, ike.keys.sk_pi, self.idi.encode()
        )
        data = keys.eap_auth(ike.prf, self.eap_peer.msk(), ike.keys.sk_pi, octets)
        return [(PayloadType.AUTH, Authentication(AuthMethod.SHARED_KEY, data))]

    def auth_last(self) -> Message:
        """The final IKE_AUTH: our AUTH, then the gateway's checked the same way; the CP
        reply's address and the first CHILD_SA are kept."""
        response = self.must(ExchangeType.IKE_AUTH, self.auth_last_entries())
        auth = response.get(PayloadType.AUTH)
        if isinstance(auth, Authentication):
            ike = self._keys()
            assert self.idr is not None and self.eap_peer is not None
            octets = keys.signed_octets(
                ike.prf, self.init_response, self.ni, ike.keys.sk_pr, self.idr.encode()
            )
            if auth.data != keys.eap_auth(ike.prf, self.eap_peer.msk(), ike.keys.sk_pr, octets):
                raise PeerError("the gateway's AUTH does not match the MSK")
        cp = response.get(PayloadType.CP)
        if isinstance(cp, Configuration):
            for kind, value in cp.attributes:
                if kind == CfgAttribute.INTERNAL_IP4_ADDRESS and len(value) == 4:
                    self.virtual_ip = ipaddress.IPv4Address(value)
        self._note_child(response, self._first_child_spi, self.ni, self.nr)
        return response

    def connect(self, user: str = USER, password: str = PASSWORD, **options: Any) -> Message:
        """IKE_SA_INIT, IKE_AUTH with EAP-MSCHAPv2: the response that establishes the SA.
        ``options`` go to :meth:`auth_first_entries`."""
        self.sa_init()
        self.auth_first(**options)
        self.authenticate(user, password)
        return self.auth_last()

    def _note_child(self, response: Message, ours: int, ni: bytes, nr: bytes, shared=b"") -> None:
        sa = response.get(PayloadType.SA)
        if not isinstance(sa, Sa) or sa.proposals[0].protocol != ProtocolId.ESP:
            return
        accepted = sa.proposals[0]
        cipher, integrity = _esp_transforms(accepted)
        ike = self._keys()
        keymat = keys.child_keys(ike.prf, ike.keys.sk_d, cipher, integrity, ni, nr, shared)
        theirs = int.from_bytes(accepted.spi, "big")
        self.children[ours] = ChildPair(ours, theirs, keymat)

    # -- CREATE_CHILD_SA (§1.3) ---------------------------------------------------------

    def create_child_entries(
        self,
        *,
        tsi: Sequence[TrafficSelector] | None = None,
        tsr: Sequence[TrafficSelector] = (ANY4,),
        group: int | None = None,
        rekey: int | None = None,
        spi: int | None = None,
    ) -> tuple[list[Entry], int, bytes, object]:
        spi = spi or _random_spi()
        ni = os.urandom(32)
        own = self.virtual_ip or ipaddress.IPv4Address(self.address.host)
        tsi = tsi if tsi is not None else (TrafficSelector(own, own),)
        entries: list[Entry] = []
        if rekey is not None:
            entries.append(
                (
                    PayloadType.NOTIFY,
                    Notify(NotifyType.REKEY_SA, b"", ProtocolId.ESP, rekey.to_bytes(4, "big")),
                )
            )
        entries += [
            (PayloadType.SA, Sa((esp_proposal(spi, group),))),
            (PayloadType.NONCE, Nonce(ni)),
        ]
        private = None
        if group is not None:
            private, public = transforms.group_for(group).generate()
            entries.append((PayloadType.KE, Ke(group, public)))
        entries += [
            (PayloadType.TSi, TrafficSelectors(tuple(tsi))),
            (PayloadType.TSr, TrafficSelectors(tuple(tsr))),
        ]
        return entries, spi, ni, private

    def create_child(self, *, group: int | None = None, rekey: int | None = None, **ts) -> Message:
        """A new CHILD_SA, with PFS when ``group`` is given; ``rekey`` names the SPI (ours)
        of the CHILD_SA it replaces (N(REKEY_SA), §1.3.3)."""
        entries, spi, ni, private = self.create_child_entries(group=group, rekey=rekey, **ts)
        response = self.must(ExchangeType.CREATE_CHILD_SA, entries)
        nr, ke = response.get(PayloadType.NONCE), response.get(PayloadType.KE)
        shared = b""
        if group is not None and isinstance(ke, Ke):
            shared = transforms.group_for(group).shared_secret(private, ke.data)
        if isinstance(nr, Nonce):
            self._note_child(response, spi, ni, nr.data, shared)
        return response

    def rekey_child(self, ours: int, group: int | None = None) -> Message:
        """§2.8: a successor CHILD_SA, then the old one deleted by us (as charon does)."""
        return self.create_child(group=group, rekey=ours)

    def rekey_ike(self, group: int | None = None) -> Message:
        """§1.3.2: a new IKE SA from SK_d; on success the initiator continues on it (the
        old one must then be deleted: ``delete_ike(old)``). Returns the response."""
        ike = self._keys()
        group = group or self.suite.group
        new_spi = os.urandom(8)
        private, public = transforms.group_for(group).generate()
        ni = os.urandom(32)
        entries: list[Entry] = [
            (PayloadType.SA, Sa((self.suite.proposal(new_spi, group),))),
            (PayloadType.NONCE, Nonce(ni)),
            (PayloadType.KE, Ke(group, public)),
        ]
        response = self.must(ExchangeType.CREATE_CHILD_SA, entries)
        sa, nr, ke = (
            response.get(PayloadType.SA),
            response.get(PayloadType.NONCE),
            response.get(PayloadType.KE),
        )
        if not (isinstance(sa, Sa) and isinstance(nr, Nonce) and isinstance(ke, Ke)):
            return response
        shared = transforms.group_for(group).shared_secret(private, ke.data)
        prf, cipher, integrity = _negotiated(sa.proposals[0])
        seed = keys.rekeyed_skeyseed(ike.prf, ike.keys.sk_d, shared, ni, nr.data)
        self.previous = (self.ike, self.next_id)
        self.ni, self.nr = ni, nr.data
        self._set_ike(prf, cipher, integrity, seed, new_spi, sa.proposals[0].spi)
        self.next_id = 0
        return response

    # -- INFORMATIONAL (§1.4) -----------------------------------------------------------

    def delete_child(self, ours: int) -> Message:
        """Delete the CHILD_SA we receive on with SPI ``ours`` (§1.4.1)."""
        delete = Delete(ProtocolId.ESP, (ours.to_bytes(4, "big"),))
        response = self.must(ExchangeType.INFORMATIONAL, [(PayloadType.DELETE, delete)])
        self.children.pop(ours, None)
        return response

    def delete_ike(self) -> Message:
        """Delete the IKE SA and with it every CHILD_SA (§1.4.1)."""
        response = self.must(ExchangeType.INFORMATIONAL, [(PayloadType.DELETE, Delete(1))])
        self.children.clear()
        return response

    def delete_previous_ike(self) -> Message:
        """After ``rekey_ike``: delete the old IKE SA on its own keys and message IDs."""
        current = (self.ike, self.next_id)
        self.ike, self.next_id = self.previous
        try:
            return self.must(ExchangeType.INFORMATIONAL, [(PayloadType.DELETE, Delete(1))])
        finally:
            self.ike, self.next_id = current

    def liveness(self) -> Message:
        """An empty INFORMATIONAL request (§1.4): the responder must answer it."""
        return self.must(ExchangeType.INFORMATIONAL, [])


class World:
    """A gateway and one initiator, copied together (``fork``, ``Snapshot``) so a test
    can reach a state once and try many inputs from it, each on its own copy."""

    def __init__(self, gateway: Gateway | None = None, **initiator) -> None:
        self.gateway = gateway or Gateway()
        self.initiator = Initiator(self.gateway, **initiator)

    def fork(self) -> World:
        return Snapshot(self).restore()


class Snapshot:
    """A :class:`World` frozen as a pickle; ``restore()`` makes an independent copy in a
    third of a millisecond (three times faster than ``copy.deepcopy``). What the gateway
    ``shared()``, classes, functions without a closure (twisted's Clock files a lambda
    with each call) and the cryptography objects (keys, cipher classes: immutable, and
    not picklable) are referenced, not copied."""

    def __init__(self, world: World) -> None:
        self._by_reference: list[object] = list(world.gateway.shared())
        self._index = {id(o): i for i, o in enumerate(self._by_reference)}
        buffer = io.BytesIO()
        _Pickler(buffer, self).dump(world)
        self._data = buffer.getvalue()

    def reference(self, obj: object) -> int | None:
        immutable = (
            isinstance(obj, type | Logger)  # a logger writes to the process's observers
            or type(obj).__module__.startswith("cryptography")
            or (isinstance(obj, types.FunctionType) and obj.__closure__ is None)
        )
        if immutable and id(obj) not in self._index:
            self._index[id(obj)] = len(self._by_reference)
            self._by_reference.append(obj)
        return self._index.get(id(obj))

    def restore(self) -> World:
        return _Unpickler(io.BytesIO(self._data), self._by_reference).load()


class _Pickler(pickle.Pickler):
    def __init__(self, buffer: io.BytesIO, snapshot: Snapshot) -> None:
        super().__init__(buffer, protocol=pickle.HIGHEST_PROTOCOL)
        self.snapshot = snapshot

    def persistent_id(self, obj: object) -> int | None:
        return self.snapshot.reference(obj)


class _Unpickler(pickle.Unpickler):
    def __init__(self, buffer: io.BytesIO, by_reference: list[object]) -> None:
        super().__init__(buffer)
        self.by_reference = by_reference

    def persistent_load(self, pid: int) -> object:
        return self.by_reference[pid]


# -- helpers ---------------------------------------------------------------------------


def _notify(kind: int, data: bytes = b"") -> Entry:
    return PayloadType.NOTIFY, Notify(kind, data)


def _nat_hash(spi_i: bytes, spi_r: bytes, endpoint: Endpoint) -> bytes:
    """NAT_DETECTION_*_IP data, SHA-1(SPIi | SPIr | IP | port) (§2.23)."""
    packed = ipaddress.ip_address(endpoint.host).packed + struct.pack("!H", endpoint.port)
    return hashlib.sha1(spi_i + spi_r + packed).digest()


def _eap_response(identifier: int, kind: int, data: bytes) -> bytes:
    return packet.Packet(Code.RESPONSE, identifier, kind, data).encode()


def _random_spi() -> int:
    return int.from_bytes(os.urandom(4), "big") | 0x1000


def _negotiated(accepted: Proposal):
    """(prf, cipher, integrity) of the IKE proposal the responder accepted."""
    by_type = {t.type: t for t in accepted.transforms}
    encr = by_type[TransformType.ENCR]
    prf = transforms.prf_for(by_type[TransformType.PRF].id)
    cipher = transforms.cipher_for(encr.id, encr.key_length)
    integ = by_type.get(TransformType.INTEG)
    integrity = transforms.integrity_for(integ.id) if integ and integ.id else None
    return prf, cipher, integrity


def _esp_transforms(accepted: Proposal):
    by_type = {t.type: t for t in accepted.transforms}
    encr = by_type[TransformType.ENCR]
    cipher = transforms.cipher_for(encr.id, encr.key_length)
    integ = by_type.get(TransformType.INTEG)
    integrity = transforms.integrity_for(integ.id) if integ and integ.id else None
    return cipher, integrity
