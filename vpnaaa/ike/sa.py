"""The IKEv2 responder's IKE SA: a sans-IO state machine (RFC 7296 §1.2, §2.16).

    IKE_SA_INIT   SA, KE, Ni, N(NAT-D) -> SA, KE, Nr, N(NAT-D), [N(FRAG), N(SIG-HASH)]
    IKE_AUTH #1   IDi, [CERTREQ], [IDr], CP, SAi2, TSi, TSr -> IDr, CERT, AUTH, EAP(Identity)
    IKE_AUTH #n   EAP -> EAP                                  (through the EAP backend)
    IKE_AUTH last AUTH(MSK) -> AUTH(MSK), CP(address, DNS), SAr2, TSi, TSr
    INFORMATIONAL Delete / liveness -> answered
    CREATE_CHILD_SA a new or rekeyed CHILD_SA, or a rekey of the IKE SA itself

:meth:`IkeSa.receive` takes a decoded request and returns an :class:`Outcome`: datagrams
to send, or work for the edge (an EAP step, a CHILD_SA to install) whose result comes
back through :meth:`IkeSa.eap_result` and :meth:`IkeSa.child_installed`. Errors in the
peer's input become the RFC's notify in the response, never an exception to the edge.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import socket
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from vpnaaa import logs, mschap
from vpnaaa.eap import packet
from vpnaaa.eap.authenticator import Challenge, Result, Success
from vpnaaa.eap.authenticator import Failure as EapFailure
from vpnaaa.eap.backend import EapBackend
from vpnaaa.ike import fragments, keys, proposal, sk, transforms
from vpnaaa.ike.const import (
    AuthMethod,
    CertEncoding,
    CfgAttribute,
    CfgType,
    ExchangeType,
    HashAlgorithm,
    HeaderFlag,
    IdType,
    NotifyType,
    PayloadType,
    ProtocolId,
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
    IkeError,
    Ke,
    Message,
    Nonce,
    Notify,
    Sa,
    TrafficSelector,
    TrafficSelectors,
    decode_payloads,
    describe,
    encode_message,
    encode_payloads,
)
from vpnaaa.kernel.installer import ChildSaSpec, Selector
from vpnaaa.pki import ServerIdentity
from vpnaaa.pool import AddressPool, PoolExhausted

log = logs.get("vpnaaa.ike")

NONCE_SIZE = 32
ZERO_SPI = bytes(8)
# Answers to one retransmitted request; a client gives up after five or so (charon's
# retransmit_tries), and a replayed request must not make us a steady reflector.
MAX_RETRANSMISSIONS = 8
REASSEMBLY_HALF_OPEN = 16 * 1024  # octets of fragments an SA may hold before ESTABLISHED
REASSEMBLY_ESTABLISHED = 64 * 1024  # and after
MIN_MSK = 32  # octets; RFC 3748 §7.10 asks 64, the MS-MPPE keys of a RADIUS Accept carry 32
# RFC 7427 §3: AlgorithmIdentifier DER for the signature schemes we use in AUTH method 14.
_RSA_SHA256_ALGORITHM = bytes.fromhex("300d06092a864886f70d01010b0500")
_ECDSA_SHA256_ALGORITHM = bytes.fromhex("300a06082a8648ce3d040302")
_SIGNATURE_HASHES = (HashAlgorithm.SHA2_256, HashAlgorithm.SHA2_384, HashAlgorithm.SHA2_512)


class State(Enum):
    INIT_DONE = "IKE_SA_INIT done"
    EAP = "EAP in progress"
    AUTHENTICATED = "EAP done, waiting for AUTH"
    ESTABLISHED = "established"
    CLOSED = "closed"


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    def packed(self) -> bytes:
        return ipaddress.ip_address(self.host).packed + struct.pack("!H", self.port)


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

    def admits(self, identity: str) -> bool:
        """Whether the authenticated ``identity`` may use this profile (an ASA's
        group-lock): its name with any DOMAIN\\ prefix removed, in any case."""
        return not self.users or user_key(identity) in self.users


def user_key(identity: str) -> str:
    """One user however the client spells it: no DOMAIN\\ prefix, lower case (what the
    users lists, INITIAL_CONTACT and max_sessions_per_user compare)."""
    return mschap.strip_domain(identity).lower()


@dataclass
class ResponderContext:
    """What every IKE SA of one responder shares: policy, identity, profiles, reqids."""

    ike_policy: proposal.Policy
    esp_policy: proposal.Policy
    identity: ServerIdentity
    profiles: tuple[Profile, ...]
    child_lifetime: int = 28800
    fragment_size: int = 1280
    next_reqid: Callable[[], int] = field(default=lambda: 1)
    # established sessions of a user (user_key) in a profile: the edge answers
    sessions_of: Callable[[str, Profile], int] = field(default=lambda user, profile: 0)

    @property
    def pool(self) -> AddressPool:
        """The default profile's pool."""
        return self.profiles[0].pool

    def profile_for(self, requested: Identification | None, local_host: str) -> Profile:
        """The profile whose ``matches`` name the IDr the client asked for, or the local
        address it reached; else the default."""
        keys = {local_host}
        if requested is not None and requested.id_type in (IdType.IPV4_ADDR, IdType.IPV6_ADDR):
            keys.add(str(ipaddress.ip_address(requested.data)))
        elif requested is not None and requested.id_type in (IdType.FQDN, IdType.RFC822_ADDR):
            keys.add(requested.data.decode("utf-8", "replace").lower())
        return next((p for p in self.profiles[1:] if p.matches & keys), self.profiles[0])


@dataclass
class Outcome:
    """What the edge must do after one step of the state machine."""

    send: list[bytes] = field(default_factory=list)
    eap: bytes | None = None  # run this EAP Response through the backend
    install: ChildSaSpec | None = None  # install this CHILD_SA, then call child_installed
    remove: list[ChildSaSpec] = field(default_factory=list)
    closed: bool = False  # the IKE SA is gone: forget it, return its lease
    cause: str = ""  # why it closed, for the session's last log line
    successor: IkeSa | None = None  # an IKE rekey made this SA: serve it from now on
    reply_to: tuple[Endpoint | None, object] | None = None  # answer elsewhere than the SA
    dropped: tuple[str, str] | None = None  # (kind, line): a drop for the edge's throttled log
    heard: bool = False  # an integrity-checked message came from the peer (liveness, §1.4)
    request_sent: bool = False  # a request of ours left: (re)start its retransmission timer
    request_done: bool = False  # our request was answered: stop its retransmission timer


@dataclass(frozen=True)
class Request:
    """A request of ours (RFC 7296 §2.1-2.3, a window of one): the message ID from our own
    counter, what it is for, its datagrams and how often they were sent."""

    message_id: int
    kind: str  # "liveness", "delete" (the IKE SA) or "delete-child"
    datagrams: tuple[bytes, ...]
    sent: int = 1


@dataclass(frozen=True)
class _Answered:
    """The last request answered (§2.1): its message ID, a digest of the datagram that
    carried it (the first fragment's, when fragmented) and the response datagrams."""

    message_id: int
    request: bytes
    datagrams: tuple[bytes, ...]


@dataclass
class _Child:
    spec: ChildSaSpec
    choice: proposal.Choice


@dataclass
class _Crypto:
    """The negotiated PRF, keys and SK payload protection of one IKE SA (§2.14, §3.14)."""

    prf: transforms.Prf
    keys: keys.IkeKeys
    outbound: sk.SkCrypto
    inbound: sk.SkCrypto


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


class IkeSa:
    """One IKE SA, responder side."""

    def __init__(
        self, context: ResponderContext, spi_i: bytes, local: Endpoint, remote: Endpoint
    ) -> None:
        self.context = context
        self.spi_i = spi_i
        self.spi_r = os.urandom(8)
        self.local = local
        self.remote = remote
        self.state = State.INIT_DONE
        self.next_message_id = 0
        self.crypto: _Crypto | None = None
        self.nat_detected = False
        self.fragmentation = False
        self.signature_hashes: set[int] = set()
        self.identity = ""  # the EAP identity once authenticated
        self.virtual_ip: ipaddress.IPv4Address | None = None
        self.children: dict[int, _Child] = {}  # by our inbound SPI
        self.last_response: _Answered | None = None
        self._request_digest = b""  # of the request being answered
        self._retransmissions = 0  # of the last response
        self.ike_policy = context.ike_policy  # the edge narrows it under load
        self._reassembler = fragments.Reassembler()
        self._init_request = b""
        self._init_response = b""
        self._ni = self._nr = b""
        self._idi_body = b""
        self._idr: Identification | None = None
        self._auth_request: Message | None = None  # IKE_AUTH #1 inner payloads, for the child
        self._eap_id: bytes | None = None
        self._msk = b""
        self._pending: tuple[int, str] | None = None  # (message id, what) awaiting the edge
        self._pending_header: Header | None = None  # the request an EAP step answers
        self._pending_child: tuple[Header, list[Entry], _Child] | None = None
        self.port: object = None  # the edge's socket this SA talks through
        self.ike_choice: proposal.Choice | None = None
        self.profile = context.profiles[0]  # chosen in IKE_AUTH from IDr / local address
        self.established_at: float | None = None  # set by the edge (it owns the clock)
        self.heard_at: float | None = None  # the edge: the peer's last protected message
        self._auth_method: int | None = None  # how we signed our AUTH
        self._weak_logged = False
        self.rekeyed = False  # an IKE rekey moved everything to a successor
        self.our_next_id = 0  # the message ID of our next request (§2.2)
        self.outstanding: Request | None = None  # our request awaiting its response
        self._queued: list[tuple[str, list[Entry]]] = []  # requests behind the outstanding
        self._closing_cause = ""  # why we asked the peer to delete the IKE SA
        self.initial_contact = False  # N(INITIAL_CONTACT) in IKE_AUTH (§2.4)
        self._eap_rounds = 0  # EAP Responses the client sent

    # -- public API used by the edge ---------------------------------------------------

    @property
    def eap_conversation(self) -> bytes | None:
        """The EAP backend's conversation id for this SA's authentication."""
        return self._eap_id

    @property
    def weak_algorithms(self) -> tuple[str, ...]:
        """What this SA uses from the weak surface (:data:`proposal.WEAK`): its IKE and
        CHILD_SA algorithms, and our AUTH signature when it had to be RSA with SHA-1."""
        found = list(self.ike_choice.weak if self.ike_choice else ())
        found += [name for c in self.children.values() for name in c.choice.weak]
        if self._auth_method == AuthMethod.RSA_SIG:
            found.append("rsa-sha1-auth")
        return tuple(dict.fromkeys(found))

    @property
    def suite(self) -> str:
        """The IKE SA's algorithms, as administrators write them: ENCR/PRF[/INTEG]/DH."""
        choice = self.ike_choice
        if choice is None or choice.prf is None or choice.dh is None:
            return "no suite yet"
        integ = f"/{choice.integ.name}" if choice.integ else ""
        return f"{choice.encr.name}/{choice.prf.name}{integ}/{choice.dh.name}"

    @property
    def name(self) -> str:
        return f"{self.remote.host}:{self.remote.port} [{self.spi_i.hex()}/{self.spi_r.hex()}]"

    def receive(
        self, message: Message, raw: bytes, sender: Endpoint | None = None, port: object = None
    ) -> Outcome:
        """Handle one request addressed to this SA (any exchange, any message id).

        ``sender``/``port``: where it came from. The SA moves there (NAT-T floating to
        4500, a NAT rebinding, §2.23) only once the message's integrity is verified; a
        retransmission is answered where it came from without moving the SA (§2.1).
        """
        header = message.header
        if header.response:
            return self._response(message, raw)
        last = self.last_response
        if last is not None and header.message_id == last.message_id:
            return self._retransmit(last, raw, sender, port)
        if header.message_id != self.next_message_id or self._pending is not None:
            return Outcome()  # out of window, or still working on the previous one
        if header.exchange == ExchangeType.IKE_SA_INIT:
            if self.crypto is not None or header.spi_r != ZERO_SPI:
                # §1.2: IKE_SA_INIT is only message 0 of a new SA; never rekey in clear.
                return Outcome(dropped=("clear", f"{self.name}: dropped IKE_SA_INIT on an SA"))
            self._request_digest = _digest(raw)
            return self._init(message, raw)
        try:
            opened = self._open_sk(message, raw)
        except IkeError as e:
            reason = (
                f"{self.name}: dropped {exchange_name(header.exchange)} "
                f"#{header.message_id}: {e.reason}"
            )
            return Outcome(dropped=("integrity", reason))
        if opened is None:
            return Outcome(heard=True)  # more fragments to come
        if sender is not None and sender != self.remote:
            refusal = self._follow(sender, port)
            if refusal is not None:
                return Outcome(dropped=("elsewhere", f"{self.name}: {refusal}"))
        outcome = self._handle(header, opened)
        outcome.heard = True  # an integrity-checked request: the peer is alive (§2.4)
        return outcome

    def _handle(self, header: Header, opened: tuple[int, bytes]) -> Outcome:
        """Dispatch a protected request by exchange type (§1.2-1.4)."""
        try:
            inner = Message(header, decode_payloads(*opened))
        except IkeError as e:
            return self._invalid(header, e)
        if logs.debug_enabled():
            log.debug("{sa}: decrypted {what}", sa=self.name, what=describe(inner))
        handlers = {
            ExchangeType.IKE_AUTH: self._auth,
            ExchangeType.INFORMATIONAL: self._informational,
            ExchangeType.CREATE_CHILD_SA: self._create_child,
        }
        handler = handlers.get(header.exchange)
        if handler is None:
            return self._respond(header, [_notify(NotifyType.INVALID_SYNTAX)])
        return handler(header, inner)

    def _follow(self, sender: Endpoint, port: object) -> str | None:
        """An integrity-checked request came from ``sender``, not where the SA is: move
        there (§2.23), or say why not. Only the port may float before the SA is
        established (NAT-T moves to 4500): a peer with keys of its own must not aim our
        IKE_AUTH answer (a certificate) at someone else's host. An established SA follows
        its peer to another host only when a NAT was detected (§2.23: a host not behind a
        NAT is not moved); without NAT its ESP is bound to the old address anyway, and
        there is no MOBIKE, so such a request is dropped."""
        if sender.host != self.remote.host and not (
            self.state == State.ESTABLISHED and self.nat_detected
        ):
            return f"request from {sender.host}:{sender.port} dropped: the SA's peer is elsewhere"
        # Both ends float: NAT-T moves us to 4500 too, where ESP-in-UDP must come from.
        self.remote, self.port = sender, port
        self.local = replace(self.local, port=getattr(port, "number", self.local.port))
        return None

    def _retransmit(
        self, last: _Answered, raw: bytes, sender: Endpoint | None, port: object
    ) -> Outcome:
        """§2.1: a retransmitted request gets the same response again, where it came from;
        only for the very datagram answered (charon compares a hash too), once per
        fragmented request (its first fragment), and never more octets than it carried to
        an address this SA has not verified: a replayed request from a forged source must
        not make us a reflector (§2.23 moves the SA only after an integrity check)."""
        if _digest(raw) != last.request:
            return Outcome()
        if self._retransmissions >= MAX_RETRANSMISSIONS:
            return Outcome(
                dropped=("retransmit-cap", f"{self.name}: retransmission beyond the limit")
            )
        self._retransmissions += 1
        elsewhere = sender is not None and sender != self.remote
        if elsewhere and sum(len(d) for d in last.datagrams) > len(raw):
            return Outcome(
                dropped=(
                    "retransmit-elsewhere",
                    f"{self.name}: retransmission from {sender.host}:{sender.port} "
                    "not answered there: larger than the request and the address "
                    "is not the SA's",
                )
            )
        return Outcome(send=list(last.datagrams), reply_to=(sender, port))

    def _invalid(self, header: Header, error: IkeError) -> Outcome:
        """A protected request whose integrity checked out but whose payloads do not
        parse: the error notify in the response (§3.10.1 allows INVALID_SYNTAX only
        here), and an SA still authenticating cannot go on (§2.21.2)."""
        log.info(
            "{sa}: {exchange} #{mid} refused: {reason}",
            sa=self.name,
            exchange=exchange_name(header.exchange),
            mid=header.message_id,
            reason=error.reason,
        )
        outcome = self._respond(header, [_notify(error.notify, error.data)])
        if self.state == State.ESTABLISHED:
            return outcome
        return self._close(outcome, f"invalid IKE_AUTH: {error.reason}")

    def eap_result(self, conversation_id: bytes, result: Result) -> Outcome:
        """The backend answered the EAP Response of the pending IKE_AUTH request."""
        header = self._take_pending("eap")
        entries: list[Entry] = [(PayloadType.EAP, Eap(result.eap))]
        if isinstance(result, Challenge):
            return self._respond(header, entries)
        if isinstance(result, Success):
            refusal = self._refusal(result)
            if refusal is None:
                self.state = State.AUTHENTICATED
                self.identity = result.identity
                self._msk = result.msk
                log.info(
                    "{sa}: EAP-{method} succeeded for {user}",
                    sa=self.name,
                    method=result.method,
                    user=logs.quoted(result.identity),
                )
                return self._respond(header, entries)
            failure = packet.failure(result.eap[1]).encode()
            result = EapFailure(failure, result.identity, refusal)
            entries = [(PayloadType.EAP, Eap(failure))]
        log.info(
            "{sa}: EAP failed for {user}: {reason}; AUTHENTICATION_FAILED",
            sa=self.name,
            user=logs.quoted(result.identity),
            reason=result.reason,
        )
        entries.append(_notify(NotifyType.AUTHENTICATION_FAILED))
        return self._close(self._respond(header, entries), f"EAP failed: {result.reason}")

    def _refusal(self, success: Success) -> str | None:
        """Why an EAP Success may still not authenticate this SA, or None."""
        if len(success.msk) < MIN_MSK:
            # §2.16 would fall back to SK_p, but every method offered here derives an MSK:
            # a Success without one is a broken backend, not a reason to skip the binding.
            return (
                f"EAP-{success.method} succeeded without a usable MSK ({len(success.msk)} octets)"
            )
        if not self.profile.admits(success.identity):
            return f"not in the users list of profile {self.profile.name}"
        return None

    def child_installed(
        self, spec: ChildSaSpec, error: str | None, transient: bool = False
    ) -> Outcome:
        """The installer finished the CHILD_SA of the pending request. A refusal is
        NO_PROPOSAL_CHOSEN, as strongSwan answers; TEMPORARY_FAILURE (the client retries)
        only when the cause is ``transient`` (the kernel out of buffers)."""
        assert self._pending_child is not None
        header, entries, child = self._pending_child
        self._take_pending("install")
        if error is not None:
            log.error(
                "{sa}: CHILD_SA {spi:08x} not installed: {error}",
                sa=self.name,
                spi=spec.inbound_spi,
                error=error,
            )
            entries = [
                e for e in entries if e[0] not in (PayloadType.SA, PayloadType.TSi, PayloadType.TSr)
            ]
            kind = NotifyType.TEMPORARY_FAILURE if transient else NotifyType.NO_PROPOSAL_CHOSEN
            entries.append(_notify(kind))
            return self._respond(header, entries)
        self.children[spec.inbound_spi] = child
        log.info(
            "{sa}: CHILD_SA {inbound:08x}/{outbound:08x} {encr}{integ} {local} === {remote}",
            sa=self.name,
            inbound=spec.inbound_spi,
            outbound=spec.outbound_spi,
            encr=child.choice.encr.name,
            integ=f"/{child.choice.integ.name}" if child.choice.integ else "",
            local=",".join(str(s.network) for s in spec.local_selectors),
            remote=",".join(str(s.network) for s in spec.remote_selectors),
        )
        weak = self.weak_algorithms
        if weak and not self._weak_logged:
            self._weak_logged = True
            log.warn(
                "{sa}: {user} uses weak algorithms: {weak} (accepted for Windows' "
                "defaults; the session view marks it)",
                sa=self.name,
                user=logs.quoted(self.identity),
                weak=", ".join(weak),
            )
        return self._respond(header, entries)

    def close(self, cause: str = "removed") -> Outcome:
        """Tear down here without telling the peer (expiry, a peer that stopped answering,
        a replaced session): remove every CHILD_SA, return the lease."""
        return self._close(Outcome(), cause)

    # -- requests of ours (RFC 7296 §1.4, §2.1-2.4) ----------------------------------------

    def liveness(self) -> Outcome:
        """An empty INFORMATIONAL (§1.4): the peer must answer it if it is alive."""
        return self._request("liveness", [])

    def delete(self, cause: str) -> Outcome:
        """Ask the peer to delete this IKE SA (§1.4.1); it goes when the peer answers or
        stops answering. ``cause`` is the session's end in the log. Asked once: a second
        call while the first is out or queued does nothing."""
        if self._closing_cause:
            return Outcome()
        self._closing_cause = cause
        return self._request("delete", [(PayloadType.DELETE, Delete(ProtocolId.IKE))])

    @property
    def closing(self) -> bool:
        """We asked the peer to delete this IKE SA and wait for its answer."""
        return bool(self._closing_cause)

    def delete_child(self, inbound_spi: int, cause: str) -> Outcome:
        """Remove a CHILD_SA here and tell the peer (§1.4.1: a Delete of our inbound SPI)."""
        child = self.children.pop(inbound_spi, None)
        if child is None:
            return Outcome()
        log.info(
            "{sa}: CHILD_SA {spi:08x} deleted: {cause}", sa=self.name, spi=inbound_spi, cause=cause
        )
        delete = Delete(ProtocolId.ESP, (inbound_spi.to_bytes(4, "big"),))
        outcome = self._request("delete-child", [(PayloadType.DELETE, delete)])
        outcome.remove.append(child.spec)
        return outcome

    def retransmit_request(self) -> Outcome:
        """Send our outstanding request again (§2.1: the same datagrams)."""
        request = self.outstanding
        if request is None:
            return Outcome()
        self.outstanding = replace(request, sent=request.sent + 1)
        return Outcome(send=list(request.datagrams), request_sent=True)

    def give_up(self) -> Outcome:
        """The peer never answered our request (§2.4): the SA is gone, and with it
        everything it held."""
        request = self.outstanding
        kind = request.kind if request is not None else "request"
        sent = request.sent if request is not None else 0
        cause = self._closing_cause or f"dead peer (no answer to {sent} {kind} requests)"
        return self.close(cause)

    def _request(self, kind: str, entries: list[Entry]) -> Outcome:
        """Send a request of ours now, or after the outstanding one (a window of one)."""
        if self.state == State.CLOSED or self.crypto is None:
            return Outcome()
        if self.outstanding is not None:
            self._queued.append((kind, entries))
            return Outcome()
        exchange = ExchangeType.INFORMATIONAL
        header = Header(self.spi_i, self.spi_r, exchange, 0, self.our_next_id)
        datagrams = tuple(self._protect(header, entries))
        self.outstanding = Request(self.our_next_id, kind, datagrams)
        self.our_next_id += 1
        return Outcome(send=list(datagrams), request_sent=True)

    def _response(self, message: Message, raw: bytes) -> Outcome:
        """A response to our outstanding request (§2.1); anything else is stray."""
        request = self.outstanding
        header = message.header
        if request is None or header.message_id != request.message_id or self.crypto is None:
            return Outcome()
        payload = message.payloads[-1][1] if message.payloads else None
        if not isinstance(payload, Encrypted):
            return Outcome()  # our requests are small: so are the answers (no SKF)
        try:
            plaintext = _open(raw[: len(raw) - len(payload.raw)], payload.raw, self.crypto.inbound)
        except IkeError as e:
            return Outcome(dropped=("integrity", f"{self.name}: dropped response: {e.reason}"))
        self.outstanding = None
        if request.kind == "delete":
            outcome = self.close(self._closing_cause)
        else:
            outcome = Outcome()
            if self._queued:
                kind, entries = self._queued.pop(0)
                outcome = self._request(kind, entries)
        outcome.heard = outcome.request_done = True
        if logs.debug_enabled():
            log.debug(
                "{sa}: {kind} #{mid} answered ({n} octets)",
                sa=self.name,
                kind=request.kind,
                mid=request.message_id,
                n=len(plaintext),
            )
        return outcome

    # -- IKE_SA_INIT ---------------------------------------------------------------------

    def _init(self, message: Message, raw: bytes) -> Outcome:
        header = message.header
        sa, ke, nonce = (
            message.get(PayloadType.SA),
            message.get(PayloadType.KE),
            message.get(PayloadType.NONCE),
        )
        if not isinstance(sa, Sa) or not isinstance(ke, Ke) or not isinstance(nonce, Nonce):
            return self._init_error(
                header, _notify(NotifyType.INVALID_SYNTAX), "SA, KE or Ni missing"
            )
        if not 16 <= len(nonce.data) <= 256:
            return self._init_error(header, _notify(NotifyType.INVALID_SYNTAX), "bad nonce size")
        choice = proposal.select(sa.proposals, self.ike_policy, ke.group)
        if choice is None:
            offered = "; ".join(_describe(p) for p in sa.proposals)
            return self._init_error(
                header,
                _notify(NotifyType.NO_PROPOSAL_CHOSEN),
                f"no acceptable proposal in {offered}",
            )
        assert choice.dh is not None and choice.prf is not None
        if choice.dh.id != ke.group:
            return self._init_error(
                header,
                _notify(NotifyType.INVALID_KE_PAYLOAD, struct.pack("!H", choice.dh.id)),
                f"KE group {ke.group}, we want {choice.dh.name}",
            )
        try:
            public, shared = _diffie_hellman(ke)
        except transforms.InvalidPublicValue as e:
            return self._init_error(header, _notify(NotifyType.INVALID_SYNTAX), f"KE: {e}")
        self._ni, self._nr = nonce.data, os.urandom(NONCE_SIZE)
        seed = keys.skeyseed(transforms.prf_for(choice.prf.id), self._ni, self._nr, shared)
        self.crypto = _derive(choice, seed, self._ni, self._nr, self.spi_i, self.spi_r)
        self._detect_nat(message)
        self.fragmentation = message.notify(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED) is not None
        hashes_notify = message.notify(NotifyType.SIGNATURE_HASH_ALGORITHMS)
        if hashes_notify is not None:
            data = hashes_notify.data
            self.signature_hashes = {
                int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data) - 1, 2)
            }
        entries: list[Entry] = [
            (PayloadType.SA, Sa((proposal.accepted(choice, b""),))),
            (PayloadType.KE, Ke(ke.group, public)),
            (PayloadType.NONCE, Nonce(self._nr)),
            _notify(
                NotifyType.NAT_DETECTION_SOURCE_IP, nat_hash(self.spi_i, self.spi_r, self.local)
            ),
            _notify(
                NotifyType.NAT_DETECTION_DESTINATION_IP,
                nat_hash(self.spi_i, self.spi_r, self.remote),
            ),
        ]
        if self.fragmentation:
            entries.append(_notify(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED))
        if hashes_notify is not None:
            entries.append(
                _notify(
                    NotifyType.SIGNATURE_HASH_ALGORITHMS,
                    b"".join(struct.pack("!H", h) for h in _SIGNATURE_HASHES),
                )
            )
        self._init_request = raw
        self.ike_choice = choice
        response = encode_message(self._header(header), entries)
        self._init_response = response
        log.debug(
            "{sa}: IKE_SA_INIT {suite}{nat}",
            sa=self.name,
            suite=self.suite,
            nat=", NAT detected" if self.nat_detected else "",
        )
        return self._remember(header, [response])

    def _init_error(self, header: Header, entry: Entry, reason: str) -> Outcome:
        """An unencrypted error response with a zero responder SPI; no state is kept.
        Anyone can cause one, so the line goes through the edge's throttled log."""
        response = encode_message(replace(self._header(header), spi_r=ZERO_SPI), [entry])
        line = f"{self.remote.host}:{self.remote.port}: IKE_SA_INIT refused: {reason}"
        return Outcome(send=[response], closed=True, dropped=("init-refused", line))

    def _detect_nat(self, message: Message) -> None:
        """RFC 7296 §2.23: the request's hashes use a zero responder SPI."""
        zero = bytes(8)
        sources = [
            n.data
            for n in message.all(PayloadType.NOTIFY)
            if n.notify_type == NotifyType.NAT_DETECTION_SOURCE_IP
        ]
        destination = message.notify(NotifyType.NAT_DETECTION_DESTINATION_IP)
        peer_behind = bool(sources) and nat_hash(self.spi_i, zero, self.remote) not in sources
        we_behind = destination is not None and destination.data != nat_hash(
            self.spi_i, zero, self.local
        )
        self.nat_detected = peer_behind or we_behind

    # -- IKE_AUTH ------------------------------------------------------------------------

    def _auth(self, header: Header, inner: Message) -> Outcome:
        if self.state == State.INIT_DONE:
            return self._auth_first(header, inner)
        if self.state == State.EAP:
            eap = inner.get(PayloadType.EAP)
            if not isinstance(eap, Eap):
                return self._fail(header, "IKE_AUTH without EAP payload during EAP")
            self._pending = (header.message_id, "eap")
            self._pending_header = header
            self._eap_rounds += 1
            return Outcome(eap=eap.data)
        if self.state == State.AUTHENTICATED:
            return self._auth_last(header, inner)
        return self._respond(header, [_notify(NotifyType.INVALID_SYNTAX)])

    def _auth_first(self, header: Header, inner: Message) -> Outcome:
        idi = inner.get(PayloadType.IDi)
        if not isinstance(idi, Identification):
            return self._fail(header, "IKE_AUTH without IDi")
        if inner.get(PayloadType.AUTH) is not None:
            return self._fail(
                header,
                "the client authenticates with a certificate or PSK; this gateway expects EAP",
            )
        requested = inner.get(PayloadType.IDr)
        requested = requested if isinstance(requested, Identification) else None
        self.profile = self.context.profile_for(requested, self.local.host)
        if self.profile.eap is None:
            return self._fail(header, "no EAP backend configured")
        self._idi_body = idi.encode()
        self._auth_request = inner
        self.initial_contact = inner.notify(NotifyType.INITIAL_CONTACT) is not None
        log.info(
            "{sa}: IKE_AUTH from IDi {id}, profile {profile}",
            sa=self.name,
            id=_describe_id(idi),
            profile=self.profile.name,
        )
        self._eap_id, first = self.profile.eap.begin(self.remote.host)
        if isinstance(first, EapFailure):  # refused before we spend a signature on it
            return self._fail(header, f"EAP refused: {first.reason}")
        identity = self.context.identity
        idr = self._idr = our_identification(identity, requested)
        method, signature = self._sign(
            keys.signed_octets(
                self.crypto.prf, self._init_response, self._ni, self.crypto.keys.sk_pr, idr.encode()
            )
        )
        self._auth_method = method
        self.state = State.EAP
        entries: list[Entry] = [
            (PayloadType.IDr, idr),
            (PayloadType.CERT, Certificate(CertEncoding.X509_SIGNATURE, _der(identity.cert))),
        ]
        for extra in identity.chain:
            if extra.issuer != extra.subject:  # intermediates only; clients hold the root
                entries.append(
                    (PayloadType.CERT, Certificate(CertEncoding.X509_SIGNATURE, _der(extra)))
                )
        entries += [
            (PayloadType.AUTH, Authentication(method, signature)),
            (PayloadType.EAP, Eap(first.eap)),
        ]
        return self._respond(header, entries)

    def _sign(self, octets: bytes) -> tuple[int, bytes]:
        """AUTH with our certificate's key: RFC 7427 (method 14, SHA-256) when the peer
        announced SHA-256 in SIGNATURE_HASH_ALGORITHMS, else RSA PKCS#1 v1.5 with SHA-1
        (method 1, RFC 7296 §3.8)."""
        key = self.context.identity.key
        modern = HashAlgorithm.SHA2_256 in self.signature_hashes
        if isinstance(key, ec.EllipticCurvePrivateKey):
            signature = key.sign(octets, ec.ECDSA(hashes.SHA256()))
            return AuthMethod.DIGITAL_SIGNATURE, _asn1(_ECDSA_SHA256_ALGORITHM) + signature
        assert isinstance(key, rsa.RSAPrivateKey)
        if modern:
            signature = key.sign(octets, padding.PKCS1v15(), hashes.SHA256())
            return AuthMethod.DIGITAL_SIGNATURE, _asn1(_RSA_SHA256_ALGORITHM) + signature
        return AuthMethod.RSA_SIG, key.sign(octets, padding.PKCS1v15(), hashes.SHA1())

    def _auth_last(self, header: Header, inner: Message) -> Outcome:
        auth = inner.get(PayloadType.AUTH)
        assert self.crypto is not None and self._auth_request is not None
        prf = self.crypto.prf
        if not isinstance(auth, Authentication) or auth.method != AuthMethod.SHARED_KEY:
            return self._fail(header, "final IKE_AUTH without a shared-key AUTH payload")
        sk_pi, sk_pr = self.crypto.keys.sk_pi, self.crypto.keys.sk_pr
        expected = keys.eap_auth(
            prf,
            self._msk,
            sk_pi,
            keys.signed_octets(prf, self._init_request, self._nr, sk_pi, self._idi_body),
        )
        if not _equal(expected, auth.data):
            return self._fail(header, "the client's AUTH does not match the EAP MSK")
        profile = self.profile
        limit = profile.max_sessions_per_user
        if limit and profile.session_limit == "refuse":  # INITIAL_CONTACT does not bypass it
            held = self.context.sessions_of(user_key(self.identity), profile)
            if held >= limit:
                return self._fail(
                    header, f"{held} sessions already (max_sessions_per_user = {limit})"
                )
        assert self._idr is not None
        ours = keys.eap_auth(
            prf,
            self._msk,
            sk_pr,
            keys.signed_octets(prf, self._init_response, self._ni, sk_pr, self._idr.encode()),
        )
        self.state = State.ESTABLISHED
        log.info(
            "{sa}: ESTABLISHED for {user} with {suite}{nat}",
            sa=self.name,
            user=logs.quoted(self.identity),
            suite=self.suite,
            nat=", NAT detected" if self.nat_detected else "",
        )
        entries: list[Entry] = [(PayloadType.AUTH, Authentication(AuthMethod.SHARED_KEY, ours))]
        request = self._auth_request
        cp = request.get(PayloadType.CP)
        if isinstance(cp, Configuration) and cp.cfg_type == CfgType.REQUEST:
            try:
                entries.append((PayloadType.CP, self._configuration(cp)))
            except PoolExhausted as e:
                log.error("{sa}: no virtual IP: {error}", sa=self.name, error=str(e))
                entries.append(_notify(NotifyType.INTERNAL_ADDRESS_FAILURE))
                return self._respond(header, entries)
        return self._child(header, request, entries, self._ni, self._nr)

    def _configuration(self, request: Configuration) -> Configuration:
        """CFG_REPLY (§3.15): the leased address, DNS, NBNS; what we do not serve (IPv6,
        vendor attributes like Microsoft's 23456) is left out, never refused."""
        wanted = {kind for kind, _ in request.attributes}
        attributes: list[tuple[int, bytes]] = []
        if CfgAttribute.INTERNAL_IP4_ADDRESS in wanted:
            self.virtual_ip = self.profile.pool.lease(self)
            attributes.append((CfgAttribute.INTERNAL_IP4_ADDRESS, self.virtual_ip.packed))
            if CfgAttribute.INTERNAL_IP4_NETMASK in wanted:
                attributes.append(
                    (CfgAttribute.INTERNAL_IP4_NETMASK, self.profile.pool.network.netmask.packed)
                )
        if CfgAttribute.INTERNAL_IP4_DNS in wanted:
            attributes += [(CfgAttribute.INTERNAL_IP4_DNS, a.packed) for a in self.profile.dns]
        if CfgAttribute.INTERNAL_IP4_NBNS in wanted:
            attributes += [(CfgAttribute.INTERNAL_IP4_NBNS, a.packed) for a in self.profile.nbns]
        return Configuration(CfgType.REPLY, tuple(attributes))

    # -- CHILD_SAs -------------------------------------------------------------------------

    def _child(
        self,
        header: Header,
        request: Message,
        entries: list[Entry],
        ni: bytes,
        nr: bytes,
        ke: Ke | None = None,
        reqid: int | None = None,
    ) -> Outcome:
        """Negotiate the CHILD_SA of ``request`` (SA, TSi, TSr; with ``ke``, a KE for
        PFS, §1.3.1) and hand it to the installer; child failures are notifies, the IKE
        SA stays (§1.2). A rekeyed CHILD_SA keeps its predecessor's ``reqid``."""
        sa, tsi, tsr = (
            request.get(PayloadType.SA),
            request.get(PayloadType.TSi),
            request.get(PayloadType.TSr),
        )
        if (
            not isinstance(sa, Sa)
            or not isinstance(tsi, TrafficSelectors)
            or not isinstance(tsr, TrafficSelectors)
        ):
            return self._respond(header, entries)  # no CHILD_SA asked for
        choice = proposal.select(sa.proposals, self.context.esp_policy, ke and ke.group)
        if choice is None:
            log.info(
                "{sa}: no acceptable ESP proposal in {offered}",
                sa=self.name,
                offered="; ".join(_describe(p) for p in sa.proposals),
            )
            return self._respond(header, [*entries, _notify(NotifyType.NO_PROPOSAL_CHOSEN)])
        narrowed = self._narrow(tsi.selectors, tsr.selectors)
        if narrowed is None:
            log.info(
                "{sa}: traffic selectors unacceptable: TSi {tsi} TSr {tsr}",
                sa=self.name,
                tsi=_selectors(tsi.selectors),
                tsr=_selectors(tsr.selectors),
            )
            return self._respond(header, [*entries, _notify(NotifyType.TS_UNACCEPTABLE)])
        their, ours = narrowed
        peer_spi = choice.proposal.spi
        if len(peer_spi) != 4:
            return self._respond(header, [*entries, _notify(NotifyType.INVALID_SYNTAX)])
        shared = b""
        if ke is not None:
            assert choice.dh is not None  # select() requires a group when there is a KE
            if choice.dh.id != ke.group:  # §1.3: the KE must be of the chosen group
                data = struct.pack("!H", choice.dh.id)
                return self._respond(header, [_notify(NotifyType.INVALID_KE_PAYLOAD, data)])
            try:
                public, shared = _diffie_hellman(ke)
            except transforms.InvalidPublicValue:
                return self._respond(header, [*entries, _notify(NotifyType.INVALID_SYNTAX)])
            entries = [*entries, (PayloadType.KE, Ke(ke.group, public))]
        inbound_spi = int.from_bytes(os.urandom(4), "big") | 0x100  # never in 0..255 (RFC 4303)
        assert self.crypto is not None
        cipher = transforms.cipher_for(choice.encr.id, choice.encr.key_length)
        integrity = transforms.integrity_for(choice.integ.id) if choice.integ else None
        material = keys.child_keys(
            self.crypto.prf, self.crypto.keys.sk_d, cipher, integrity, ni, nr, shared
        )
        encapsulation = (self.local.port, self.remote.port) if self.nat_detected else None
        spec = ChildSaSpec(
            reqid=reqid if reqid is not None else self.context.next_reqid(),
            local_address=self.local.host,
            remote_address=self.remote.host,
            inbound_spi=inbound_spi,
            outbound_spi=int.from_bytes(peer_spi, "big"),
            encr_id=choice.encr.id,
            encr_key_length=choice.encr.key_length,
            integ_id=choice.integ.id if choice.integ else None,
            inbound_encr_key=material.encr_i,
            inbound_integ_key=material.integ_i,
            outbound_encr_key=material.encr_r,
            outbound_integ_key=material.integ_r,
            local_selectors=_kernel_selectors(ours),
            remote_selectors=_kernel_selectors(their),
            esn=choice.esn == 1,
            encapsulation=encapsulation,
            soft_lifetime=self.context.child_lifetime * 9 // 10,
            hard_lifetime=self.context.child_lifetime,
        )
        entries = [
            *entries,
            (PayloadType.SA, Sa((proposal.accepted(choice, inbound_spi.to_bytes(4, "big")),))),
            (PayloadType.TSi, TrafficSelectors(tuple(their))),
            (PayloadType.TSr, TrafficSelectors(tuple(ours))),
        ]
        self._pending = (header.message_id, "install")
        self._pending_child = (header, entries, _Child(spec, choice))
        return Outcome(install=spec)

    def _narrow(
        self, tsi: Sequence[TrafficSelector], tsr: Sequence[TrafficSelector]
    ) -> tuple[list[TrafficSelector], list[TrafficSelector]] | None:
        """RFC 7296 §2.9: the client's side narrows to its virtual IP (or its own address
        without one), our side to the part of what it asked for in the same family.
        Selectors of the other family are dropped (no IPv6 pool)."""
        own = self.virtual_ip or ipaddress.ip_address(self.remote.host)
        their = [
            TrafficSelector(own, own, s.ip_protocol, s.start_port, s.end_port)
            for s in tsi
            if s.start_address.version == own.version and s.start_address <= own <= s.end_address
        ]
        ours = [s for s in tsr if s.start_address.version == own.version]
        if not their or not ours:
            return None
        return their[:1], ours

    def _create_child(self, header: Header, inner: Message) -> Outcome:
        """CREATE_CHILD_SA (§1.3): a new or rekeyed (REKEY_SA) CHILD_SA, whose predecessor
        goes when the client deletes it, or a rekey of the IKE SA itself."""
        if self.state != State.ESTABLISHED:
            return self._respond(header, [_notify(NotifyType.INVALID_SYNTAX)])
        if self.rekeyed:  # §1.3.2: its successor holds everything; only a Delete is due
            return self._respond(header, [_notify(NotifyType.NO_ADDITIONAL_SAS)])
        if self.closing:  # §2.25: we are deleting it; a rekey must not carry it on
            return self._respond(header, [_notify(NotifyType.TEMPORARY_FAILURE)])
        sa = inner.get(PayloadType.SA)
        if isinstance(sa, Sa) and any(p.protocol == ProtocolId.IKE for p in sa.proposals):
            return self._rekey_ike(header, inner, sa)
        rekey = inner.notify(NotifyType.REKEY_SA)
        reqid = None
        if rekey is not None:
            # §1.3.3: the SPI the exchange initiator expects inbound, i.e. our outbound SPI.
            spi = int.from_bytes(rekey.spi, "big")
            old = next((c for c in self.children.values() if c.spec.outbound_spi == spi), None)
            if old is None:
                return self._respond(header, [_notify(NotifyType.CHILD_SA_NOT_FOUND)])
            reqid = old.spec.reqid  # the successor shares policies with the old SA
        nonce = inner.get(PayloadType.NONCE)
        if not isinstance(nonce, Nonce):
            return self._respond(header, [_notify(NotifyType.INVALID_SYNTAX)])
        if not 16 <= len(nonce.data) <= 256:
            return self._respond(header, [_notify(NotifyType.INVALID_SYNTAX)])
        nr = os.urandom(NONCE_SIZE)
        entries: list[Entry] = [(PayloadType.NONCE, Nonce(nr))]
        ke = inner.get(PayloadType.KE)
        ke = ke if isinstance(ke, Ke) else None
        return self._child(header, inner, entries, nonce.data, nr, ke, reqid)

    def _rekey_ike(self, header: Header, inner: Message, sa: Sa) -> Outcome:
        """§1.3.2: a new IKE SA takes over this one's CHILD_SAs, lease and identity; the
        client then deletes this one. Keys per §2.18, from this SA's SK_d."""
        nonce, ke = inner.get(PayloadType.NONCE), inner.get(PayloadType.KE)
        if not isinstance(nonce, Nonce) or not isinstance(ke, Ke):
            return self._respond(header, [_notify(NotifyType.INVALID_SYNTAX)])
        if not 16 <= len(nonce.data) <= 256:
            return self._respond(header, [_notify(NotifyType.INVALID_SYNTAX)])
        choice = proposal.select(sa.proposals, self.context.ike_policy, ke.group)
        if choice is None:
            return self._respond(header, [_notify(NotifyType.NO_PROPOSAL_CHOSEN)])
        assert choice.dh is not None and self.crypto is not None
        if choice.dh.id != ke.group:
            data = struct.pack("!H", choice.dh.id)
            return self._respond(header, [_notify(NotifyType.INVALID_KE_PAYLOAD, data)])
        if len(choice.proposal.spi) != 8:
            return self._respond(header, [_notify(NotifyType.INVALID_SYNTAX)])
        try:
            public, shared = _diffie_hellman(ke)
        except transforms.InvalidPublicValue:
            return self._respond(header, [_notify(NotifyType.INVALID_SYNTAX)])
        successor = IkeSa(self.context, choice.proposal.spi, self.local, self.remote)
        nr = os.urandom(NONCE_SIZE)
        seed = keys.rekeyed_skeyseed(self.crypto.prf, self.crypto.keys.sk_d, shared, nonce.data, nr)
        successor.crypto = _derive(choice, seed, nonce.data, nr, successor.spi_i, successor.spi_r)
        successor.take_over(self)
        successor.ike_choice = choice
        self.rekeyed = True
        log.info(
            "{sa}: rekeyed as {new} ({encr}/{group})",
            sa=self.name,
            new=successor.name,
            encr=choice.encr.name,
            group=choice.dh.name,
        )
        outcome = self._respond(
            header,
            [
                (PayloadType.SA, Sa((proposal.accepted(choice, successor.spi_r),))),
                (PayloadType.NONCE, Nonce(nr)),
                (PayloadType.KE, Ke(ke.group, public)),
            ],
        )
        outcome.successor = successor
        return outcome

    def take_over(self, old: IkeSa) -> None:
        """Inherit an established SA's peer, identity, lease and CHILD_SAs (IKE rekey)."""
        self.state = State.ESTABLISHED
        self.port = old.port
        self.identity = old.identity
        self.profile = old.profile
        self.established_at = old.established_at
        self.nat_detected, self.fragmentation = old.nat_detected, old.fragmentation
        self.virtual_ip, old.virtual_ip = old.virtual_ip, None
        self.children, old.children = old.children, {}

    # -- INFORMATIONAL -------------------------------------------------------------------

    def _informational(self, header: Header, inner: Message) -> Outcome:
        """Deletes (§1.4.1) and liveness checks (empty requests) are answered."""
        deletes = [d for d in inner.all(PayloadType.DELETE) if isinstance(d, Delete)]
        if self.state != State.ESTABLISHED and inner.notify(NotifyType.AUTHENTICATION_FAILED):
            return self._close(self._respond(header, []), self._why_the_client_gave_up())
        if any(d.protocol == ProtocolId.IKE for d in deletes):
            return self._close(self._respond(header, []), "client delete")
        entries: list[Entry] = []
        removed = []
        for delete in deletes:
            ours = []
            for spi in delete.spis:
                child = next(
                    (
                        c
                        for c in self.children.values()
                        if c.spec.outbound_spi == int.from_bytes(spi, "big")
                    ),
                    None,
                )
                if child is not None:
                    del self.children[child.spec.inbound_spi]
                    removed.append(child.spec)
                    ours.append(child.spec.inbound_spi.to_bytes(4, "big"))
            if ours:
                entries.append((PayloadType.DELETE, Delete(ProtocolId.ESP, tuple(ours))))
        outcome = self._respond(header, entries)
        outcome.remove = removed
        return outcome

    def _why_the_client_gave_up(self) -> str:
        """The client sent AUTHENTICATION_FAILED before the SA was up. When our EAP
        method had already refused it (a wrong password: the client gives up instead of
        acknowledging the MSCHAPv2 Failure), that is the reason, with the user; when it
        never answered EAP, it refused our certificate; else it gave up during EAP."""
        eap = self.profile.eap
        refused = eap.refusal(self._eap_id) if eap is not None and self._eap_id else None
        if refused is not None:
            user = logs.quoted(refused.identity)
            reason = refused.reason
            log.info(
                "{sa}: EAP failed for {user}: {reason}", sa=self.name, user=user, reason=reason
            )
            return f"EAP failed: {reason}"
        if self._eap_rounds:  # it took part in EAP, so it accepted our certificate
            cause = f"the client gave up EAP after {self._eap_rounds} rounds"
        else:
            cause = "the client refused our certificate (does it trust our CA and name?)"
        log.info("{sa}: AUTHENTICATION_FAILED from the client: {cause}", sa=self.name, cause=cause)
        return cause

    # -- plumbing ------------------------------------------------------------------------

    def _fail(self, header: Header, reason: str) -> Outcome:
        log.info("{sa}: AUTHENTICATION_FAILED: {reason}", sa=self.name, reason=reason)
        outcome = self._respond(header, [_notify(NotifyType.AUTHENTICATION_FAILED)])
        return self._close(outcome, f"authentication failed: {reason}")

    def _close(self, outcome: Outcome, cause: str) -> Outcome:
        """The SA ends (``cause`` for the session's last log line): its CHILD_SAs go, its
        address returns to the pool."""
        self.state = State.CLOSED
        outcome.cause = cause
        outcome.remove += [c.spec for c in self.children.values()]
        self.children.clear()
        if self.virtual_ip is not None:
            self.profile.pool.release(self.virtual_ip)
            self.virtual_ip = None
        outcome.closed = True
        return outcome

    def _take_pending(self, what: str) -> Header:
        assert self._pending is not None and self._pending[1] == what, self._pending
        self._pending = None
        request = self._pending_header if what == "eap" else self._pending_child
        assert request is not None
        return request if isinstance(request, Header) else request[0]

    def _header(self, request: Header) -> Header:
        return Header(
            self.spi_i, self.spi_r, request.exchange, HeaderFlag.RESPONSE, request.message_id
        )

    def _respond(self, request: Header, entries: list[Entry]) -> Outcome:
        return self._remember(request, self._protect(self._header(request), entries))

    def _protect(self, header: Header, entries: list[Entry]) -> list[bytes]:
        """Encrypt ``entries`` into one SK payload, or SKF fragments when they would not
        fit ``fragment_size`` and the peer supports fragmentation (RFC 7383)."""
        assert self.crypto is not None
        first, plaintext = encode_payloads(entries)
        datagrams = [self._seal(header, PayloadType.SK, first, plaintext)]
        if self.fragmentation and len(datagrams[0]) > self.context.fragment_size:
            overhead = len(datagrams[0]) - len(plaintext) + 8
            pieces = fragments.split(plaintext, first, self.context.fragment_size - overhead)
            datagrams = [
                self._seal(header, PayloadType.SKF, p.first_payload, p.data, p) for p in pieces
            ]
        return datagrams

    def _seal(
        self,
        header: Header,
        kind: int,
        first: int,
        plaintext: bytes,
        piece: fragments.Fragment | None = None,
    ) -> bytes:
        assert self.crypto is not None
        protection = self.crypto.outbound
        body_length = sk.sealed_length(len(plaintext), protection)
        extra = struct.pack("!HH", piece.number, piece.total) if piece else b""
        generic = struct.pack("!BBH", first, 0, 4 + len(extra) + body_length)
        total = 28 + len(generic) + len(extra) + body_length
        head = replace(header, next_payload=kind, length=total).encode()
        prefix = head + generic + extra
        return prefix + sk.seal(prefix, plaintext, protection)

    def _open_sk(self, message: Message, raw: bytes) -> tuple[int, bytes] | None:
        """The first inner payload type and plaintext of an SK message, or of all its SKF
        fragments once complete (RFC 7383); None while fragments are missing. Raises
        IkeError when the integrity check fails or there is nothing protected: such a
        message is dropped unanswered (§2.21)."""
        crypto = self.crypto
        if crypto is None:
            raise IkeError(NotifyType.INVALID_SYNTAX, "encrypted message before IKE_SA_INIT")
        last_kind, payload = message.payloads[-1] if message.payloads else (None, None)
        protection = crypto.inbound
        if isinstance(payload, Encrypted):
            plaintext = _open(raw[: len(raw) - len(payload.raw)], payload.raw, protection)
            self._request_digest = _digest(raw)
            return payload.first_payload, plaintext
        if not isinstance(payload, EncryptedFragment):
            raise IkeError(NotifyType.INVALID_SYNTAX, f"no SK payload (last is {last_kind})")
        if not self.fragmentation:  # RFC 7383 §2.3: only once both announced support
            raise IkeError(NotifyType.INVALID_SYNTAX, "SKF without IKEV2_FRAGMENTATION_SUPPORTED")
        plaintext = _open(raw[: len(raw) - len(payload.raw)], payload.raw, protection)
        if payload.number == 1:
            self._request_digest = _digest(raw)
        piece = fragments.Fragment(payload.number, payload.total, plaintext, payload.first_payload)
        # A peer that has not authenticated gets a small buffer: the IKE_AUTH messages of
        # EAP are small, and half-open SAs are many (ike.half_open_limit).
        self._reassembler.max_size = (
            REASSEMBLY_ESTABLISHED if self.state == State.ESTABLISHED else REASSEMBLY_HALF_OPEN
        )
        try:
            return self._reassembler.add(message.header.message_id, piece)
        except fragments.FragmentError as e:
            raise IkeError(NotifyType.INVALID_SYNTAX, str(e)) from None

    def _remember(self, request: Header, datagrams: list[bytes]) -> Outcome:
        self.last_response = _Answered(request.message_id, self._request_digest, tuple(datagrams))
        self._retransmissions = 0
        self.next_message_id = request.message_id + 1
        return Outcome(send=list(datagrams))


def our_identification(
    identity: ServerIdentity, requested: Identification | None
) -> Identification:
    """IDr: the identity the initiator asked for when our certificate carries it (an
    iPAddress or dNSName SAN, or the subject), else the subject DN (RFC 7296 §3.5)."""
    cert = identity.cert
    if requested is not None and _certificate_names(cert, requested):
        return requested
    return Identification(IdType.DER_ASN1_DN, cert.subject.public_bytes())


def _certificate_names(cert: x509.Certificate, wanted: Identification) -> bool:
    """Whether ``cert`` carries the identity ``wanted`` (SAN iPAddress/dNSName or subject)."""
    if wanted.id_type == IdType.DER_ASN1_DN:
        return wanted.data == cert.subject.public_bytes()
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    if wanted.id_type in (IdType.IPV4_ADDR, IdType.IPV6_ADDR):
        try:
            return ipaddress.ip_address(wanted.data) in san.get_values_for_type(x509.IPAddress)
        except ValueError:
            return False
    if wanted.id_type == IdType.FQDN:
        return wanted.data.decode("ascii", "replace") in san.get_values_for_type(x509.DNSName)
    return False


def _diffie_hellman(ke: Ke) -> tuple[bytes, bytes]:
    """Our KE public value and g^ir for the peer's KE payload (§1.2, §1.3);
    raises InvalidPublicValue for a value outside the group."""
    group = transforms.group_for(ke.group)
    private, public = group.generate()
    return public, group.shared_secret(private, ke.data)


def _derive(
    choice: proposal.Choice, seed: bytes, ni: bytes, nr: bytes, spi_i: bytes, spi_r: bytes
) -> _Crypto:
    """An IKE SA's keys and SK protection from SKEYSEED (§2.14)."""
    assert choice.prf is not None
    prf = transforms.prf_for(choice.prf.id)
    cipher = transforms.cipher_for(choice.encr.id, choice.encr.key_length)
    integrity = transforms.integrity_for(choice.integ.id) if choice.integ else None
    ike_keys = keys.ike_keys(prf, cipher, integrity, seed, ni, nr, spi_i, spi_r)
    outbound, inbound = sk.directions(ike_keys, cipher, integrity, initiator=False)
    return _Crypto(prf, ike_keys, outbound, inbound)


def _digest(datagram: bytes) -> bytes:
    return hashlib.sha256(datagram).digest()


def _open(prefix: bytes, body: bytes, protection: sk.SkCrypto) -> bytes:
    try:
        return sk.open(prefix, body, protection)
    except sk.SkError as e:
        raise IkeError(NotifyType.INVALID_SYNTAX, f"SK payload: {e}") from None


def _notify(kind: NotifyType, data: bytes = b"") -> Entry:
    return PayloadType.NOTIFY, Notify(kind, data)


def _asn1(algorithm: bytes) -> bytes:
    """RFC 7427 §3: ASN.1 Length octet, then the AlgorithmIdentifier."""
    return bytes([len(algorithm)]) + algorithm


def _der(certificate) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding

    return certificate.public_bytes(Encoding.DER)


def _equal(a: bytes, b: bytes) -> bool:
    import hmac

    return hmac.compare_digest(a, b)


def _kernel_selectors(selectors: Sequence[TrafficSelector]) -> tuple[Selector, ...]:
    """Address ranges (§3.13.1) as the kernel takes them: one selector per CIDR block of
    each range, so a range that is not one prefix is covered exactly, never widened."""
    return tuple(
        Selector(network, s.ip_protocol, s.start_port, s.end_port)
        for s in selectors
        for network in ipaddress.summarize_address_range(s.start_address, s.end_address)
    )


def _selectors(selectors: Sequence[TrafficSelector]) -> str:
    return ", ".join(f"{s.start_address}-{s.end_address}" for s in selectors)


def _describe(p) -> str:
    return "/".join(
        f"{t.type}:{t.id}" + (f"({t.key_length})" if t.key_length else "") for t in p.transforms
    )


def _describe_id(identification: Identification) -> str:
    if identification.id_type in (IdType.IPV4_ADDR, IdType.IPV6_ADDR):
        return str(ipaddress.ip_address(identification.data))
    if identification.id_type in (IdType.FQDN, IdType.RFC822_ADDR):
        return logs.quoted(identification.data.decode("utf-8", "replace"))
    return f"type {identification.id_type} {identification.data.hex()}"


def exchange_name(exchange: int) -> str:
    try:
        return ExchangeType(exchange).name
    except ValueError:
        return str(exchange)
