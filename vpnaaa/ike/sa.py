"""The IKE SA core: SPIs, message-ID windows both ways, retransmission, seal/open/fragment
and close (RFC 7296 §1.2, §2.1-2.4, §2.16, RFC 7383), with one task per exchange:

    IKE_SA_INIT   SA, KE, Ni, N(NAT-D) -> SA, KE, Nr, N(NAT-D), [N(FRAG), N(SIG-HASH)]
                  (:mod:`tasks.ike_init`)
    IKE_AUTH      IDi, [IDr], CP, SAi2, TSi, TSr -> IDr, CERT, AUTH, EAP ... AUTH(MSK) ->
                  AUTH(MSK), CP, SAr2, TSi, TSr   (:mod:`tasks.ike_auth`, EAP by the backend)
                  or IDi, CERT, AUTH, CP, SAi2, TSi, TSr -> IDr, CERT, AUTH, CP, SAr2, TSi,
                  TSr   (:mod:`tasks.certificate`, revocation checked by the edge)
    CREATE_CHILD_SA a new or rekeyed CHILD_SA, either side's (:mod:`tasks.child`), or a
                  rekey of the IKE SA itself, either side's (:mod:`tasks.ike_rekey`)
    INFORMATIONAL deletes and liveness checks, either side's (:mod:`tasks.informational`)

Requests from the peer are dispatched by :data:`RESPONDERS` on (state, exchange); requests
of ours are :class:`~vpnaaa.ike.tasks.Task` objects sent one at a time (a window of one,
§2.3) and retransmitted by the edge. Every step returns a tuple of frozen effects
(:mod:`vpnaaa.ike.effects`) for the edge; errors in the peer's input become the RFC's
notify or a drop, never an exception.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from vpnaaa import logs
from vpnaaa.authorization import Authorization
from vpnaaa.eap.authenticator import Result
from vpnaaa.ike import fragments, proposal, sk
from vpnaaa.ike.common import (
    TRANSITIONS,
    ZERO_SPI,
    Child,
    Crypto,
    EndCause,
    Ending,
    Endpoint,
    Event,
    Profile,
    ResponderContext,
    State,
    digest,
    exchange_name,
    log,
    notify,
    open_sk,
    user_key,
)
from vpnaaa.ike.const import AuthMethod, ExchangeType, HeaderFlag, NotifyType, PayloadType
from vpnaaa.ike.effects import (
    Answered,
    Await,
    Closed,
    Drop,
    Effects,
    Exchanged,
    Heard,
    Remove,
    Send,
)
from vpnaaa.ike.message import (
    Encrypted,
    EncryptedFragment,
    Entry,
    Header,
    IkeError,
    Message,
    decode_payloads,
    describe,
    encode_payloads,
)
from vpnaaa.ike.tasks import (
    Task,
    certificate,
    child,
    ike_auth,
    ike_init,
    ike_rekey,
    informational,
)
from vpnaaa.kernel.installer import ChildSaSpec

if TYPE_CHECKING:
    from vpnaaa.certs import RevocationResult, VerifiedCertificate

__all__ = [
    "MAX_RETRANSMISSIONS",
    "REASSEMBLY_HALF_OPEN",
    "ZERO_SPI",
    "Endpoint",
    "IkeSa",
    "Profile",
    "ResponderContext",
    "State",
    "user_key",
]

# Answers to one retransmitted request; a client gives up after five or so (charon's
# retransmit_tries), and a replayed request must not make us a steady reflector.
MAX_RETRANSMISSIONS = 8
REASSEMBLY_HALF_OPEN = 16 * 1024  # octets of fragments an SA may hold before ESTABLISHED
REASSEMBLY_ESTABLISHED = 64 * 1024  # and after
REMOVED = Ending(EndCause.GONE, "removed")

Responder = Callable[["IkeSa", Header, Message], Effects]


def _first_ike_auth(sa: IkeSa, header: Header, inner: Message) -> Effects:
    """The first IKE_AUTH request: with the client's AUTH it authenticates with its
    certificate (§2.15, :mod:`tasks.certificate`); without, it asks for EAP (§2.16)."""
    if inner.get(PayloadType.AUTH) is not None:
        return certificate.first(sa, header, inner)
    return ike_auth.first(sa, header, inner)


# How a protected request from the peer is answered, by the SA's state and the exchange
# (§1.2-1.4). Anything else gets INVALID_SYNTAX in the response.
RESPONDERS: dict[tuple[State, int], Responder] = {
    (State.INIT_DONE, ExchangeType.IKE_AUTH): _first_ike_auth,
    (State.EAP, ExchangeType.IKE_AUTH): ike_auth.eap,
    (State.AUTHENTICATED, ExchangeType.IKE_AUTH): ike_auth.last,
    (State.ESTABLISHED, ExchangeType.CREATE_CHILD_SA): child.create_child_sa,
    **{
        (state, ExchangeType.INFORMATIONAL): informational.respond
        for state in State
        if state != State.CLOSED
    },
}


@dataclass(frozen=True)
class Request:
    """A request of ours on the wire (§2.1-2.3, a window of one): its message ID from our
    own counter, the task it serves, its datagrams and how often they were sent."""

    message_id: int
    task: Task
    datagrams: tuple[bytes, ...]
    sent: int = 1


@dataclass(frozen=True)
class _Answered:
    """The last request answered (§2.1): its message ID, a digest of the datagram that
    carried it (the first fragment's, when fragmented) and the response datagrams."""

    message_id: int
    request: bytes
    datagrams: tuple[bytes, ...]


Installed = Callable[[ChildSaSpec, "str | None", bool], Effects]


class IkeSa:
    """One IKE SA. ``initiator``: we are its original initiator (we rekeyed it into being,
    §2.18); our SPI is then SPIi and our messages carry the Initiator flag (§3.1)."""

    def __init__(
        self,
        context: ResponderContext,
        spi_i: bytes,
        local: Endpoint,
        remote: Endpoint,
        *,
        spi_r: bytes | None = None,
        initiator: bool = False,
    ) -> None:
        self.context = context
        self.spi_i = spi_i
        self.spi_r = spi_r if spi_r is not None else context.random_bytes(8)
        self.initiator = initiator
        self.local = local
        self.remote = remote
        self.port: object = None  # the edge's socket this SA talks through
        self.state = State.INIT_DONE
        self.crypto: Crypto | None = None
        self.ike_choice: proposal.Choice | None = None
        self.ike_policy = context.ike_policy  # the edge narrows it under load
        self.nat_detected = False
        self.fragmentation = False
        self.profile = context.profiles[0]  # chosen in IKE_AUTH from IDr / local address
        self.pool = self.profile.pool  # where virtual_ip is leased (a Framed-Pool may differ)
        self.identity = ""  # the EAP identity once authenticated
        # whether the EAP method vouched for it (not a relay's Accept without User-Name):
        # only then may it replace or count against the same user's other sessions
        self.identity_verified = True
        self.authorization = Authorization()  # what the AAA server granted (RADIUS Accept)
        self.certificate: VerifiedCertificate | None = None  # the client's, if it used one
        self.virtual_ip = None
        self.children: dict[int, Child] = {}  # by our inbound SPI
        self.deleting: dict[int, ChildSaSpec] = {}  # ours deleted, until the peer answers
        self.auth = ike_auth.IkeAuth()  # IKE_AUTH's own state (§1.2, §2.16)
        self.established_at: float | None = None  # the edge's clock, at Established
        self.heard_at: float | None = None  # the edge: the peer's last protected message
        self.rekeyed = False  # an IKE rekey moved everything to a successor (§1.3.2)
        self.predecessor: IkeSa | None = None  # the SA this one took over, until it goes
        self.initial_contact = False  # N(INITIAL_CONTACT) in IKE_AUTH (§2.4)
        # the session's name once established (RADIUS Acct-Session-Id, RFC 2866 §5.5):
        # 16 hex digits, kept across IKE rekeys
        self.session_id = ""
        # the responder's window (§2.3): the next request we expect, the last answered
        self.next_message_id = 0
        self.last_response: _Answered | None = None
        self._request_digest = b""  # of the request being answered
        self._retransmissions = 0  # of the last response
        self.working: int | None = None  # message ID the edge is working on (EAP, install)
        self.installing: dict[int, Installed] = {}  # inbound SPI -> who awaits the install
        self._reassembler = fragments.Reassembler()
        # our own window: the next message ID, the request out, those behind it
        self.our_next_id = 0
        self.outstanding: Request | None = None
        self._queued: list[Task] = []
        self._closing: Ending | None = None  # why we asked the peer to delete this IKE SA
        self._weak_logged = False

    # -- what the edge and the session view read -------------------------------------------

    @property
    def spi(self) -> bytes:
        """Our SPI of this SA: what the edge files it under."""
        return self.spi_i if self.initiator else self.spi_r

    @property
    def name(self) -> str:
        return f"{self.remote.host}:{self.remote.port} [{self.spi_i.hex()}/{self.spi_r.hex()}]"

    @property
    def eap_conversation(self) -> bytes | None:
        """The EAP backend's conversation id for this SA's authentication."""
        return self.auth.conversation

    @property
    def closing(self) -> bool:
        """We asked the peer to delete this IKE SA and wait for its answer."""
        return self._closing is not None

    @property
    def weak_algorithms(self) -> tuple[str, ...]:
        """What this SA uses from the weak surface (:data:`proposal.WEAK`): its IKE and
        CHILD_SA algorithms, and our AUTH signature when it had to be RSA with SHA-1."""
        found = list(self.ike_choice.weak if self.ike_choice else ())
        found += [name for c in self.children.values() for name in c.choice.weak]
        if self.auth.method == AuthMethod.RSA_SIG:
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

    def transition(self, event: Event) -> None:
        """Move to the state :data:`TRANSITIONS` gives; anything else is a bug."""
        self.state = TRANSITIONS[self.state, event]

    # -- requests from the peer ------------------------------------------------------------

    def receive(
        self, message: Message, raw: bytes, sender: Endpoint | None = None, port: object = None
    ) -> Effects:
        """Handle one message addressed to this SA (any exchange, any message ID).

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
        if header.message_id != self.next_message_id or self.working is not None:
            return ()  # out of window, or still working on the previous one
        if header.exchange == ExchangeType.IKE_SA_INIT:
            if self.crypto is not None or header.spi_r != ZERO_SPI:
                # §1.2: IKE_SA_INIT is only message 0 of a new SA; never rekey in clear.
                return (Drop("clear", f"{self.name}: dropped IKE_SA_INIT on an SA"),)
            self._request_digest = digest(raw)
            return ike_init.respond(self, message, raw)
        try:
            opened = self._open_sk(message, raw)
        except IkeError as e:
            reason = (
                f"{self.name}: dropped {exchange_name(header.exchange)} "
                f"#{header.message_id}: {e.reason}"
            )
            return (Drop("integrity", reason),)
        if opened is None:
            return ()  # more fragments to come; a replayed one proves nothing (§2.4)
        if sender is not None and sender != self.remote:
            refusal = self._follow(sender, port)
            if refusal is not None:
                return (Drop("elsewhere", f"{self.name}: {refusal}"),)
        # an integrity-checked request: the peer is alive (§2.4)
        return (Heard(), *self._handle(header, opened))

    def _handle(self, header: Header, opened: tuple[int, bytes]) -> Effects:
        """Dispatch a protected request through :data:`RESPONDERS`."""
        try:
            inner = Message(header, decode_payloads(*opened))
        except IkeError as e:
            return self._invalid(header, e)
        if logs.debug_enabled():
            log.debug("{sa}: decrypted {what}", sa=self.name, what=describe(inner))
        handler = RESPONDERS.get((self.state, header.exchange))
        if handler is None:
            return self.respond(header, [notify(NotifyType.INVALID_SYNTAX)])
        return handler(self, header, inner)

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
    ) -> Effects:
        """§2.1: a retransmitted request gets the same response again, where it came from;
        only for the very datagram answered (charon compares a hash too), once per
        fragmented request (its first fragment), and never more octets than it carried to
        an address this SA has not verified: a replayed request from a forged source must
        not make us a reflector (§2.23 moves the SA only after an integrity check)."""
        if digest(raw) != last.request:
            return ()
        if self._retransmissions >= MAX_RETRANSMISSIONS:
            return (Drop("retransmit-cap", f"{self.name}: retransmission beyond the limit"),)
        self._retransmissions += 1
        elsewhere = sender is not None and sender != self.remote
        if elsewhere and sum(len(d) for d in last.datagrams) > len(raw):
            line = (
                f"{self.name}: retransmission from {sender.host}:{sender.port} not answered "
                "there: larger than the request and the address is not the SA's"
            )
            return (Drop("retransmit-elsewhere", line),)
        return (Send(last.datagrams, (sender, port)),)

    def _invalid(self, header: Header, error: IkeError) -> Effects:
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
        effects = self.respond(header, [notify(error.notify, error.data)])
        if self.state == State.ESTABLISHED:
            return effects
        return self.end(effects, Ending(EndCause.REFUSED, f"invalid IKE_AUTH: {error.reason}"))

    # -- results of the edge's work ----------------------------------------------------------

    def eap_result(self, conversation_id: bytes, result: Result) -> Effects:
        """The backend answered the EAP Response of the pending IKE_AUTH request."""
        return ike_auth.eap_result(self, result)

    def revocation_checked(self, result: RevocationResult) -> Effects:
        """The revocation verdict on the client's certificate (pending IKE_AUTH)."""
        return certificate.revocation_checked(self, result)

    def child_installed(
        self, spec: ChildSaSpec, error: str | None, transient: bool = False
    ) -> Effects:
        """The installer finished ``spec`` (``error``: why not; ``transient``: the kernel
        was out of buffers); the task that asked for it goes on."""
        waiting = self.installing.pop(spec.inbound_spi, None)
        if waiting is None:
            return ()
        return waiting(spec, error, transient)

    # -- requests of ours (RFC 7296 §1.4, §2.1-2.4) ----------------------------------------

    def start(self, task: Task) -> Effects:
        """Send a request of ours now, or after the outstanding one (a window of one)."""
        if self.state == State.CLOSED or self.crypto is None:
            return ()
        if self.outstanding is not None:
            self._queued.append(task)
            return ()
        entries = task.request(self)
        if entries is None:  # nothing to ask any more (its CHILD_SA went meanwhile)
            return self._next()
        flags = HeaderFlag.INITIATOR if self.initiator else 0
        header = Header(self.spi_i, self.spi_r, task.exchange, flags, self.our_next_id)
        datagrams = tuple(self.protect(header, entries))
        self.outstanding = Request(self.our_next_id, task, datagrams)
        self.our_next_id += 1
        return (Send(datagrams), Await(1))

    def _next(self) -> Effects:
        if self._queued:
            return self.start(self._queued.pop(0))
        return ()

    def liveness(self) -> Effects:
        """An empty INFORMATIONAL (§1.4): the peer must answer it if it is alive."""
        return self.start(informational.Liveness())

    def delete(self, cause: Ending) -> Effects:
        """Ask the peer to delete this IKE SA (§1.4.1); it goes when the peer answers or
        stops answering. ``cause`` is the session's end in the log. Asked once: a second
        call while the first is out or queued does nothing."""
        if self._closing is not None or self.state == State.CLOSED:
            return ()
        self._closing = cause
        return self.start(informational.DeleteIke())

    def delete_child(self, inbound_spi: int, cause: str) -> Effects:
        """Delete a CHILD_SA and tell the peer (§1.4.1: a Delete of our inbound SPI). It
        stops counting at once; its SAs leave the kernel when the peer answers (§1.4.1:
        each end closes its incoming SA when the pair is closed): the peer may send on it
        until it has our Delete."""
        gone = self._drop_child(inbound_spi, cause)
        if gone is None:
            return ()
        self.deleting[inbound_spi] = gone.spec
        activated = child.activate_successor(self, gone)
        return (*activated, *self.start(informational.DeleteChild(inbound_spi)))

    def forget_child(self, inbound_spi: int, cause: str) -> Effects:
        """Take a CHILD_SA out of this SA and the kernel at once (the peer deleted it); a
        successor that rekeyed it at the client's request starts sending now (§2.8)."""
        gone = self._drop_child(inbound_spi, cause)
        if gone is None:
            return ()
        return (*child.activate_successor(self, gone), Remove((gone.spec,)))

    def _drop_child(self, inbound_spi: int, cause: str) -> Child | None:
        """The CHILD_SA no longer this SA's (one log line), or None if it was not."""
        gone = self.children.pop(inbound_spi, None)
        if gone is not None:
            log.info(
                "{sa}: CHILD_SA {spi:08x} deleted: {cause}",
                sa=self.name,
                spi=inbound_spi,
                cause=cause,
            )
        return gone

    def deleted(self, inbound_spi: int) -> Effects:
        """The peer answered our Delete of a CHILD_SA: its SAs leave the kernel now."""
        spec = self.deleting.pop(inbound_spi, None)
        return (Remove((spec,)),) if spec is not None else ()

    def rekey_child(self, inbound_spi: int) -> Effects:
        """Rekey a CHILD_SA from here (§1.3.3), unless it is going or already rekeyed."""
        found = self.children.get(inbound_spi)
        if found is None or found.rekeying or found.successor is not None or self.closing:
            return ()
        return self.start(child.RekeyChild(inbound_spi))

    def rekey(self) -> Effects:
        """Rekey this IKE SA from here (§1.3.2), unless it is going or already rekeyed."""
        if self.state != State.ESTABLISHED or self.rekeyed or self.closing:
            return ()
        return self.start(ike_rekey.RekeyIke())

    def retransmit_request(self) -> Effects:
        """Send our outstanding request again (§2.1: the same datagrams)."""
        request = self.outstanding
        if request is None:
            return ()
        self.outstanding = replace(request, sent=request.sent + 1)
        return (Send(request.datagrams), Await(request.sent + 1))

    def give_up(self) -> Effects:
        """The peer never answered our request (§2.4): the SA is gone, and with it
        everything it held."""
        request = self.outstanding
        kind = request.task.kind if request is not None else "request"
        sent = request.sent if request is not None else 0
        dead = Ending(EndCause.DEAD_PEER, f"dead peer (no answer to {sent} {kind} requests)")
        timeout = () if request is None else (Exchanged(request.task.exchange, True, "timeout"),)
        return self.end(timeout, self._closing or dead)

    def _response(self, message: Message, raw: bytes) -> Effects:
        """A response to our outstanding request (§2.1); anything else is stray."""
        request = self.outstanding
        header = message.header
        if request is None or header.message_id != request.message_id or self.crypto is None:
            return ()
        payload = message.payloads[-1][1] if message.payloads else None
        if not isinstance(payload, Encrypted):
            return ()  # our requests are small: so are the answers (no SKF)
        try:
            prefix = raw[: len(raw) - len(payload.raw)]
            plaintext = open_sk(prefix, payload.raw, self.crypto.inbound)
        except IkeError as e:
            return (Drop("integrity", f"{self.name}: dropped response: {e.reason}"),)
        self.outstanding = None
        try:
            inner = Message(header, decode_payloads(payload.first_payload, plaintext))
            exchanged = Exchanged.of(request.task.exchange, True, (p for _, p in inner.payloads))
        except IkeError as e:
            log.info(
                "{sa}: answer to our {kind} does not parse: {reason}",
                sa=self.name,
                kind=request.task.kind,
                reason=e.reason,
            )
            inner = Message(header, [])
            exchanged = Exchanged(request.task.exchange, True, "malformed")
        if logs.debug_enabled():
            log.debug(
                "{sa}: {kind} #{mid} answered ({n} octets): {what}",
                sa=self.name,
                kind=request.task.kind,
                mid=request.message_id,
                n=len(plaintext),
                what=describe(inner),
            )
        effects = request.task.answered(self, inner)
        if self.state != State.CLOSED:
            effects = (*effects, *self._next())
        return (Heard(), Answered(), exchanged, *effects)

    # -- the end ---------------------------------------------------------------------------

    def close(self, cause: Ending = REMOVED) -> Effects:
        """Tear down here without telling the peer (expiry, a peer that stopped answering,
        a replaced session): remove every CHILD_SA, return the lease."""
        return self.end((), cause)

    @property
    def closing_cause(self) -> Ending | None:
        return self._closing

    def end(self, effects: Effects, cause: Ending) -> Effects:
        """The SA ends (``cause`` for the session's last log line) after ``effects``: its
        CHILD_SAs go, its address returns to the pool (on shutdown with our DELETE
        unanswered, it stays held for its user until the lease expires)."""
        self.transition(Event.CLOSED)
        # stopping without an answer to our DELETE: the client may still use its address
        unanswered = cause.cause == EndCause.SHUTDOWN and self.outstanding is not None
        specs = (*(c.spec for c in self.children.values()), *self.deleting.values())
        self.children.clear()
        self.deleting.clear()
        self.installing.clear()
        self.working = None
        self.outstanding, self._queued = None, []
        if self.virtual_ip is not None:
            if unanswered:
                self.pool.keep(self.virtual_ip, self.session_id)
            else:
                self.pool.release(self.virtual_ip, self.session_id)
            self.virtual_ip = None
        return (*effects, Closed(cause, specs))

    def take_over(self, old: IkeSa) -> None:
        """Inherit an established SA's peer, identity, lease and CHILD_SAs (IKE rekey)."""
        self.transition(Event.REKEYED_IN)
        self.port = old.port
        self.identity, self.identity_verified = old.identity, old.identity_verified
        self.session_id, self.authorization = old.session_id, old.authorization
        self.certificate = old.certificate
        self.profile, self.pool = old.profile, old.pool
        self.initial_contact = False
        self.established_at = old.established_at
        self.nat_detected, self.fragmentation = old.nat_detected, old.fragmentation
        self.auth.method = old.auth.method
        self.virtual_ip, old.virtual_ip = old.virtual_ip, None
        if self.virtual_ip is not None:  # the session goes on: so does its lease
            self.pool.renew(self.virtual_ip, self.session_id)
        self.children, old.children = old.children, {}
        self.deleting, old.deleting = old.deleting, {}
        for moved in self.children.values():
            moved.rekeying = False  # a rekey of ours on the old SA is void
        # §1.4: requests about CHILD_SAs go on the successor; §2.8: the old SA's last
        # request is its Delete
        self._queued = [t for t in old._queued if t.kind in ("delete-child", "rekey-child")]
        old._queued = [t for t in old._queued if t not in self._queued]
        self.predecessor, old.predecessor = old, None
        old.rekeyed = True

    def resume(self) -> Effects:
        """Send what waits in our queue, if nothing of ours is out (a successor's
        inherited requests)."""
        return self._next() if self.outstanding is None else ()

    def log_weak(self) -> None:
        """Once per SA: the weak algorithms it uses (accepted for Windows' defaults)."""
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

    # -- the wire ----------------------------------------------------------------------------

    def respond(self, request: Header, entries: list[Entry]) -> Effects:
        """Answer ``request`` with ``entries`` protected; remembered for retransmissions."""
        sent = self.remember(request, self.protect(self.response_header(request), entries))
        return (*sent, Exchanged.of(request.exchange, False, (p for _, p in entries)))

    def response_header(self, request: Header) -> Header:
        flags = HeaderFlag.RESPONSE | (HeaderFlag.INITIATOR if self.initiator else 0)
        return Header(self.spi_i, self.spi_r, request.exchange, flags, request.message_id)

    def remember(self, request: Header, datagrams: list[bytes]) -> Effects:
        self.last_response = _Answered(request.message_id, self._request_digest, tuple(datagrams))
        self._retransmissions = 0
        self.next_message_id = request.message_id + 1
        return (Send(tuple(datagrams)),)

    def protect(self, header: Header, entries: list[Entry]) -> list[bytes]:
        """Encrypt ``entries`` into one SK payload, or SKF fragments when they would not
        fit ``fragment_size`` and the peer supports fragmentation (RFC 7383)."""
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
            plaintext = open_sk(raw[: len(raw) - len(payload.raw)], payload.raw, protection)
            self._request_digest = digest(raw)
            return payload.first_payload, plaintext
        if not isinstance(payload, EncryptedFragment):
            raise IkeError(NotifyType.INVALID_SYNTAX, f"no SK payload (last is {last_kind})")
        if not self.fragmentation:  # RFC 7383 §2.3: only once both announced support
            raise IkeError(NotifyType.INVALID_SYNTAX, "SKF without IKEV2_FRAGMENTATION_SUPPORTED")
        plaintext = open_sk(raw[: len(raw) - len(payload.raw)], payload.raw, protection)
        if payload.number == 1:
            self._request_digest = digest(raw)
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
