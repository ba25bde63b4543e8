"""The EAP authenticator (RFC 3748 §2, §4, §5.3): identity, method choice, Nak, identifiers.

One :class:`Conversation` per peer, sans-IO: EAP packets in, results out. Which methods
are offered, in which order, is the caller's choice (a list of method factories).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vpnaaa.authorization import NOTHING, Authorization
from vpnaaa.eap import packet
from vpnaaa.eap.method import CheckRevocation, Done, Method, MethodError, Send, Step
from vpnaaa.eap.packet import Code, EapError, Type

if TYPE_CHECKING:
    from vpnaaa.certs import RevocationResult, VerifiedCertificate

# A method for one conversation with a peer at a source (its address, for the lockout;
# None when unknown, as for a NAS's users).
MethodFactory = Callable[[str | None], Method]
MAX_ROUNDS = 60  # a full PEAP exchange with 300-octet fragments takes ~25


@dataclass(frozen=True)
class Challenge:
    """Send this EAP Request and wait for the peer."""

    eap: bytes


@dataclass(frozen=True)
class Success:
    """Authenticated: send ``eap`` (EAP-Success); ``msk`` keys the link (RFC 3748 §7.10).
    ``verified``: the method authenticated ``identity`` itself; False when it is only the
    client's own EAP identity (a RADIUS server's Access-Accept without User-Name).
    ``emsk`` and ``session_id``: the method's other exports (RFC 5247 §1.4), where it
    has them (EAP-TLS); the fronts key their links with the MSK only. ``certificate``:
    the client certificate the method verified (EAP-TLS), which the IKEv2 responder keeps
    with the session (its view, ``vpnaaa deny``, CRL reloads end it)."""

    eap: bytes
    identity: str
    msk: bytes = field(repr=False)
    method: str
    verified: bool = True
    authorization: Authorization = NOTHING
    emsk: bytes = field(default=b"", repr=False)
    session_id: bytes = b""
    certificate: VerifiedCertificate | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Failure:
    """Not authenticated: send ``eap`` (EAP-Failure). ``reason`` is for the log only."""

    eap: bytes
    identity: str
    reason: str


Result = Challenge | Success | Failure


@dataclass(frozen=True)
class Pending:
    """No answer yet: the method waits for the revocation verdict on ``verified``
    (:class:`~vpnaaa.eap.method.CheckRevocation`). The engine asks, then calls
    :meth:`Conversation.revocation_checked` for the Result; front ends never see it."""

    verified: VerifiedCertificate = field(repr=False)


class Conversation:
    """One authenticator-side EAP conversation with a peer at ``source`` (see
    :data:`MethodFactory`)."""

    def __init__(
        self, methods: Sequence[tuple[int, MethodFactory]], source: str | None = None
    ) -> None:
        if not methods:
            raise ValueError("an EAP conversation needs at least one method")
        self.methods = list(methods)
        self.source = source
        self.identifier = os.urandom(1)[0]
        self.identity = ""
        self.method: Method | None = None
        self.tried: set[int] = set()
        self.rounds = 0
        self.last: Challenge | None = None
        self.finished = False
        # while a revocation check is under way: what the method continues with
        self._resume: Callable[[RevocationResult], Step] | None = None

    def refusal(self) -> Failure | None:
        """The failure the method decided and the peer has not acknowledged, if any."""
        done = self.method.refusal() if self.method is not None else None
        if done is None:
            return None
        return Failure(packet.failure(self.identifier).encode(), done.identity, done.reason)

    def start(self) -> Challenge:
        """The first Request: EAP-Request/Identity (RFC 3748 §5.1)."""
        return self._request(Type.IDENTITY, b"")

    def receive(self, data: bytes, room: int | None = None) -> Result | Pending:
        """Process one EAP Response. The first may be an unsolicited Identity response
        (a RADIUS NAS asks for the identity itself, RFC 3579 §2.1). ``room``: the most
        octets the next Request may take (the method fragments to fit)."""
        if self.finished:
            return self._failure("conversation already finished")
        if self._resume is not None:
            return self._failure("an EAP Response while the revocation check was under way")
        try:
            response = packet.parse(data)
        except EapError as e:
            return self._failure(f"malformed EAP: {e}")
        if response.code != Code.RESPONSE:
            return self._failure(f"EAP code {response.code} from the peer, expected a Response")
        if self.last is not None and response.identifier != self.identifier:
            # RFC 3748 §4.1: not an answer to the outstanding Request; repeat that Request.
            return self.last
        # Success and Failure carry the Identifier of the Response they answer (§4.2).
        self.identifier = response.identifier
        self.rounds += 1
        if self.rounds > MAX_ROUNDS:
            return self._failure(f"more than {MAX_ROUNDS} rounds")
        kind = response.type
        if self.method is None:
            if kind != Type.IDENTITY:
                return self._failure(f"expected an Identity response, got type {kind}")
            self.identity = response.data.decode("utf-8", "replace")
            return self._propose(None)
        if kind == Type.NAK:
            return self._nak(response.data)
        if kind != self.method.type:
            return self._failure(f"response of type {kind} to a type {self.method.type} request")
        try:
            step = self.method.process(response.data, self._next_identifier(), room)
        except MethodError as e:
            return self._failure(str(e))
        return self._answer(step)

    def revocation_checked(self, verdict: RevocationResult) -> Result | Pending:
        """The revocation verdict the method asked for with :class:`Pending`: its answer
        to the Response that was waiting."""
        resume, self._resume = self._resume, None
        assert resume is not None, "a verdict without a Pending"
        try:
            step = resume(verdict)
        except MethodError as e:
            return self._failure(str(e))
        return self._answer(step)

    def _answer(self, step: Step) -> Result | Pending:
        assert self.method is not None
        if isinstance(step, Send):
            return self._request(self.method.type, step.data)
        if isinstance(step, CheckRevocation):
            self._resume = step.resume
            return Pending(step.verified)
        return self._finish(step)

    def _next_identifier(self) -> int:
        """The Identifier the next Request will carry (RFC 3748 §4.1: a new one each)."""
        return (self.identifier + 1) % 256

    def _request(self, kind: int, data: bytes) -> Challenge:
        self.identifier = self._next_identifier()
        self.last = Challenge(packet.request(self.identifier, kind, data).encode())
        return self.last

    def _propose(self, wanted: Sequence[int] | None) -> Result:
        """Start the first configured method not tried yet (and wanted, after a Nak)."""
        for kind, factory in self.methods:
            if kind in self.tried or (wanted is not None and kind not in wanted):
                continue
            self.tried.add(kind)
            self.method = factory(self.source)
            return self._request(kind, self.method.start(self._next_identifier()))
        offered = ", ".join(str(kind) for kind, _ in self.methods)
        return self._failure(f"no common EAP method (offered {offered}, peer wants {wanted})")

    def _nak(self, data: bytes) -> Result:
        """RFC 3748 §5.3.1: the peer lists the types it would accept instead (0 = none)."""
        if self.last is None or self.rounds > 2 + len(self.tried):
            return self._failure("Nak after the method started")
        return self._propose([kind for kind in data if kind])

    def _finish(self, done: Done) -> Result:
        self.finished = True
        identifier = self.identifier
        method = Type(self.method.type).name if self.method is not None else ""
        if done.success:
            self.identity = done.identity or self.identity
            success = packet.success(identifier).encode()
            return Success(
                success,
                self.identity,
                done.msk,
                method,
                authorization=done.authorization,
                emsk=done.emsk,
                session_id=done.session_id,
                certificate=done.certificate,
            )
        return Failure(
            packet.failure(identifier).encode(), done.identity or self.identity, done.reason
        )

    def _failure(self, reason: str) -> Failure:
        self.finished = True
        return Failure(packet.failure(self.identifier).encode(), self.identity, reason)
