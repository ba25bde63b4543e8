"""What the IKE SA core and its exchange tasks share: endpoints, profiles, the responder's
context, the SA's states and their transitions, and small RFC 7296 helpers.

Everything that changes an IKE SA's :class:`State` is in :data:`TRANSITIONS` (after h11's
``_state.py``): a task names the :class:`Event`, the core looks the new state up, and an
event the table does not list for the current state is a bug, never a peer's doing.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import random
import re
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, Literal

from vpnaaa import logs, mschap
from vpnaaa.eap.backend import EapBackend
from vpnaaa.ike import keys, proposal, sk, transforms
from vpnaaa.ike.const import ExchangeType, IdType, NotifyType, PayloadType
from vpnaaa.ike.message import (
    Entry,
    Identification,
    IkeError,
    Message,
    Notify,
    TrafficSelector,
)
from vpnaaa.kernel.installer import ChildSaSpec
from vpnaaa.pki import ServerIdentity
from vpnaaa.pool import AddressPool

if TYPE_CHECKING:
    from vpnaaa.certs import ClientVerifier, RevocationChecker

log = logs.get("vpnaaa.ike")

NONCE_SIZE = 32  # octets of our nonces (§2.10: at least half the PRF's key size, 16..256)
ZERO_SPI = bytes(8)


class State(Enum):
    INIT_DONE = "IKE_SA_INIT done"
    EAP = "EAP in progress"
    AUTHENTICATED = "EAP done, waiting for AUTH"
    ESTABLISHED = "established"
    CLOSED = "closed"


class Event(Enum):
    """What moves an IKE SA from one :class:`State` to the next."""

    EAP_BEGUN = "our certificate and the first EAP Request sent"
    EAP_SUCCEEDED = "the backend said EAP Success"
    AUTHENTICATED = "the client's AUTH matched the MSK"
    CERTIFICATE_ACCEPTED = "the client's certificate, IDi, AUTH signature and revocation checked"
    REKEYED_IN = "created by an IKE rekey of an established SA (§1.3.2)"
    CLOSED = "the SA ended"


# (state, event) -> the next state. CLOSED is reachable from every state.
TRANSITIONS: dict[tuple[State, Event], State] = {
    (State.INIT_DONE, Event.EAP_BEGUN): State.EAP,
    (State.EAP, Event.EAP_SUCCEEDED): State.AUTHENTICATED,
    (State.AUTHENTICATED, Event.AUTHENTICATED): State.ESTABLISHED,
    (State.INIT_DONE, Event.CERTIFICATE_ACCEPTED): State.ESTABLISHED,
    (State.INIT_DONE, Event.REKEYED_IN): State.ESTABLISHED,
    **{(state, Event.CLOSED): State.CLOSED for state in State},
}


class EndCause(Enum):
    """Why an IKE SA ended, as accounting (RFC 2866 §5.10 Acct-Terminate-Cause) and the
    metrics count it; the log line says more (:class:`Ending`)."""

    CLIENT_DELETE = "client delete"  # the client sent Delete(IKE) (§1.4.1)
    DEAD_PEER = "dead peer"  # no answer to our requests (§2.4)
    LIFETIME = "lifetime"  # ike_lifetime reached
    SESSION_TIMEOUT = "session timeout"  # a time limit set for the session (RADIUS, CoA)
    REPLACED = "replaced"  # INITIAL_CONTACT or max_sessions_per_user
    ADMIN_RESET = "disconnected"  # an administrator (admin socket, DAE, user change)
    SHUTDOWN = "shutdown"  # the daemon stopped
    INTERNAL_ERROR = "internal error"  # a bug met on its path
    REFUSED = "refused"  # never established: authentication or negotiation failed
    GONE = "gone"  # no session of its own: rekeyed away, redundant, removed


@dataclass(frozen=True)
class Ending:
    """An IKE SA's end: its :class:`EndCause` and the text its last log line says."""

    cause: EndCause
    text: str = ""

    def __str__(self) -> str:
        return self.text or self.cause.value


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    def packed(self) -> bytes:
        return ipaddress.ip_address(self.host).packed + struct.pack("!H", self.port)


Rekey = Literal["client", "gateway"]
AuthKind = Literal["eap", "certificate"]


@dataclass(frozen=True)
class CertificateAuth:
    """How a ``auth = "certificate"`` profile checks clients (RFC 7296 §2.15, RFC 4945):
    its trust anchors and key usage rules (``verifier``) and its revocation policy."""

    verifier: ClientVerifier
    revocation: RevocationChecker
    sha1_signatures: bool = True  # AUTH method 1, RSA with SHA-1 (ike/signatures.py)


@dataclass
class Profile:
    """A connection profile, like an ASA tunnel-group: what a client is offered and given.

    ``matches`` holds the identities (an IDr the client asks for: FQDN or IP text) and
    local addresses (the one the client reached) that select it; the first profile,
    with none, is the default.
    """

    name: str
    pool: AddressPool
    dns: tuple[ipaddress.IPv4Address, ...] = ()
    nbns: tuple[ipaddress.IPv4Address, ...] = ()
    eap: EapBackend | None = None
    matches: frozenset[str] = frozenset()
    users: frozenset[str] = frozenset()  # who may use it (lower case, no domain); empty: all
    dpd_delay: float = 30.0  # seconds of silence before a liveness check (0: none)
    max_sessions_per_user: int = 0  # 0: any number
    session_limit: str = "replace"  # at the limit: "replace" the oldest or "refuse" the new
    rekey: Rekey = "client"  # who rekeys at the soft lifetimes; the gateway deletes at hard
    auth: AuthKind = "eap"  # how clients authenticate: EAP, or a certificate in IKE_AUTH
    certificates: CertificateAuth | None = None  # with auth = "certificate"

    def admits(self, identity: str) -> bool:
        """Whether the authenticated ``identity`` may use this profile (an ASA's
        group-lock): its name with any DOMAIN\\ prefix removed, in any case."""
        return not self.users or user_key(identity) in self.users


def user_key(identity: str) -> str:
    """One user however the client spells it: no DOMAIN\\ prefix, lower case (what the
    users lists, INITIAL_CONTACT and max_sessions_per_user compare). A certificate's
    subject DN (RFC 4514: it begins with an attribute type and "=") keeps its backslashes:
    they escape characters there (``CN=Smith\\, John``), and no domain precedes them."""
    if _DN.match(identity):
        return identity.lower()
    return mschap.strip_domain(identity).lower()


_DN = re.compile(r"([A-Za-z][A-Za-z0-9-]*|[0-9]+(\.[0-9]+)+)=")  # RFC 4514 §3 attributeType


def _generate(group: int) -> tuple[object, bytes]:
    return transforms.group_for(group).generate()


@dataclass
class ResponderContext:
    """What every IKE SA of one responder shares: policy, identity, profiles, reqids, and
    the randomness and DH key generation it uses (injected, so tests can choose nonces)."""

    ike_policy: proposal.Policy
    esp_policy: proposal.Policy
    identity: ServerIdentity
    profiles: tuple[Profile, ...]
    child_lifetime: int = 28800
    fragment_size: int = 1280
    next_reqid: Callable[[], int] = field(default=lambda: 1)
    # established sessions of a user (user_key) in a profile: the edge answers
    sessions_of: Callable[[str, Profile], int] = field(default=lambda user, profile: 0)
    # the edge ends the sessions a new one replaces (INITIAL_CONTACT, §2.4) before the
    # new one takes an address, so the same user gets the same one back
    supersede: Callable[[Any], None] = field(default=lambda sa: None)
    random_bytes: Callable[[int], bytes] = os.urandom  # SPIs and nonces
    jitter: Callable[[], float] = random.random  # in [0, 1): how early lifetimes end
    dh_generate: Callable[[int], tuple[object, bytes]] = _generate  # (private, public)
    # seconds since the epoch (the edge sets the reactor's): certificate validity
    clock: Callable[[], float] = time.time
    # CERTREQ data (§3.7): SHA-1 of the trust anchors' SubjectPublicKeyInfo, concatenated
    certificate_authorities: bytes = b""

    @property
    def pool(self) -> AddressPool:
        """The default profile's pool."""
        return self.profiles[0].pool

    def profile_for(
        self, requested: Identification | None, local_host: str, auth: AuthKind = "eap"
    ) -> Profile | None:
        """Among the profiles that authenticate clients by ``auth`` (EAP, or a certificate
        when IKE_AUTH carries the client's AUTH), the one whose ``matches`` name the IDr
        the client asked for, or the local address it reached; else the first of them
        (the default, for EAP); None when no profile uses ``auth``."""
        wanted = {local_host}
        if requested is not None and requested.id_type in (IdType.IPV4_ADDR, IdType.IPV6_ADDR):
            wanted.add(str(ipaddress.ip_address(requested.data)))
        elif requested is not None and requested.id_type in (IdType.FQDN, IdType.RFC822_ADDR):
            wanted.add(requested.data.decode("utf-8", "replace").lower())
        fitting = [p for p in self.profiles if p.auth == auth]
        return next((p for p in fitting if p.matches & wanted), fitting[0] if fitting else None)

    def lifetimes(self, configured: float) -> tuple[float, float]:
        """(soft, hard) seconds of an SA whose lifetime is ``configured``: it is rekeyed
        (by whoever rekeys) at the soft one, between 80 and 90 % of it, and deleted at the
        hard one, 10 % later; at random, so SAs made together do not end together
        (charon's rekey_time less rand_time, then its over_time)."""
        early = 0.1 * self.jitter()
        return configured * (0.9 - early), configured * (1 - early)

    def nonce(self) -> bytes:
        return self.random_bytes(NONCE_SIZE)

    def child_spi(self) -> int:
        """A new inbound ESP SPI, never in 0..255 (RFC 4303 §2.1)."""
        return int.from_bytes(self.random_bytes(4), "big") | 0x100

    def diffie_hellman(self, group: int, peer_public: bytes) -> tuple[bytes, bytes]:
        """Our KE public value and g^ir for the peer's (§1.2, §1.3); raises
        :class:`transforms.InvalidPublicValue` for a value outside the group."""
        private, public = self.dh_generate(group)
        return public, transforms.group_for(group).shared_secret(private, peer_public)


@dataclass
class Child:
    """A CHILD_SA this IKE SA holds (by our inbound SPI) and what it was negotiated with
    (its proposal; ``choice.dh`` is its PFS group). ``outbound``: whether its outbound SA
    is in the kernel yet; ``successor``: the inbound SPI of the CHILD_SA that rekeyed it
    at the client's request, whose outbound SA goes in when this one goes (§2.8)."""

    spec: ChildSaSpec
    choice: proposal.Choice
    theirs: tuple[TrafficSelector, ...]  # the client's side, as negotiated (§2.9)
    ours: tuple[TrafficSelector, ...]
    outbound: bool = True
    successor: int | None = None
    rekeying: bool = False  # our rekey of it is out (§2.8.1 collisions)


@dataclass(frozen=True)
class Crypto:
    """The negotiated PRF, keys and SK payload protection of one IKE SA (§2.14, §3.14)."""

    prf: transforms.Prf
    keys: keys.IkeKeys
    outbound: sk.SkCrypto
    inbound: sk.SkCrypto


def derive(
    choice: proposal.Choice,
    seed: bytes,
    ni: bytes,
    nr: bytes,
    spi_i: bytes,
    spi_r: bytes,
    initiator: bool = False,
) -> Crypto:
    """An IKE SA's keys and SK protection from SKEYSEED (§2.14); ``initiator``: we are
    its original initiator (we started the IKE rekey that made it, §2.18)."""
    assert choice.prf is not None
    prf = transforms.prf_for(choice.prf.id)
    cipher = transforms.cipher_for(choice.encr.id, choice.encr.key_length)
    integrity = transforms.integrity_for(choice.integ.id) if choice.integ else None
    ike_keys = keys.ike_keys(prf, cipher, integrity, seed, ni, nr, spi_i, spi_r)
    outbound, inbound = sk.directions(ike_keys, cipher, integrity, initiator=initiator)
    return Crypto(prf, ike_keys, outbound, inbound)


def nat_hash(spi_i: bytes, spi_r: bytes, endpoint: Endpoint) -> bytes:
    """NAT_DETECTION_*_IP data: SHA-1(SPIi | SPIr | IP address | port) (RFC 7296 §2.23)."""
    return hashlib.sha1(spi_i + spi_r + endpoint.packed()).digest()


def local_address_towards(peer: Endpoint) -> str:
    """The address this host uses to reach ``peer`` (for NAT detection when listening on
    a wildcard address): a connected UDP socket asks the routing table, sends nothing."""
    family = socket.AF_INET6 if ":" in peer.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect((peer.host, peer.port or 500))
        return probe.getsockname()[0]


def notify(kind: NotifyType, data: bytes = b"") -> Entry:
    return PayloadType.NOTIFY, Notify(kind, data)


ERROR_TYPES = 16384  # notify types below this are errors (§3.10.1)


class Refused(Exception):
    """The peer's answer to a request of ours gives us nothing (``notify``: the error
    type it said, if any)."""

    def __init__(self, reason: str, notify: int | None = None) -> None:
        super().__init__(reason)
        self.notify = notify


def refuse_errors(response: Message) -> None:
    """Raise :class:`Refused` naming the first error notify of ``response`` (§3.10.1)."""
    for found in response.all(PayloadType.NOTIFY):
        if found.notify_type < ERROR_TYPES:
            try:
                name = NotifyType(found.notify_type).name
            except ValueError:
                name = f"notify {found.notify_type}"
            raise Refused(name, found.notify_type)


def valid_nonce(data: bytes) -> bool:
    """§3.9: a nonce is 16 to 256 octets."""
    return 16 <= len(data) <= 256


def open_sk(prefix: bytes, body: bytes, protection: sk.SkCrypto) -> bytes:
    """The plaintext of an SK or SKF payload; IkeError when it does not verify."""
    try:
        return sk.open(prefix, body, protection)
    except sk.SkError as e:
        raise IkeError(NotifyType.INVALID_SYNTAX, f"SK payload: {e}") from None


def digest(datagram: bytes) -> bytes:
    return hashlib.sha256(datagram).digest()


def describe_proposal(p) -> str:
    return "/".join(
        f"{t.type}:{t.id}" + (f"({t.key_length})" if t.key_length else "") for t in p.transforms
    )


def exchange_name(exchange: int) -> str:
    try:
        return ExchangeType(exchange).name
    except ValueError:
        return str(exchange)
