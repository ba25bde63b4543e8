"""The EAP engine both front ends share: a bounded table of live conversations.

``step(conversation_id, eap) -> Deferred[(conversation_id, Result)]`` is the in-process
interface: the RADIUS server calls it with the State attribute as conversation id (None
for a NAS's first packet), the IKEv2 responder with the id :meth:`EapEngine.begin` gave
its IKE SA. Methods are sans-IO and answer at once, but for one question: EAP-TLS asks
whether the client's certificate is revoked (:class:`~vpnaaa.eap.authenticator.Pending`),
which may go to the network (CRL distribution points, OCSP). The engine asks its
:class:`~vpnaaa.certs.RevocationChecker` (which bounds the checks it sends to the network)
and answers the Response when the verdict arrives. The
Deferred keeps the seam identical to the relay backend, which waits on an external RADIUS
server.

Every live conversation holds memory until it ends, is forgotten (its IKE SA closed) or
sits idle for ``idle_timeout`` seconds. The table is sized from a memory budget: what one
conversation of the most expensive offered method holds, measured here with tracemalloc
(Python objects) and glibc's mallinfo2 (OpenSSL's own allocations, which tracemalloc does
not see) by tests/test_eap_memory.py:

=====================================  ==============================================
PEAPv0, mid-handshake (TLS server       ~94 KiB, almost all of it OpenSSL's SSL object,
flight queued, or phase 2 running)      its buffers and the handshake state
EAP-TLS, mid-handshake (flight with     ~95 KiB with TLS 1.2, ~90 KiB with TLS 1.3,
CertificateRequest queued)              again nearly all OpenSSL's
EAP-MSCHAPv2 (challenge sent)           ~1.9 KiB
=====================================  ==============================================

:data:`COST` rounds these up. Beyond the budget, and beyond ``per_source`` conversations
begun for one client address, a new conversation gets EAP-Failure and the refusal one
throttled log line.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import LogLevel
from twisted.python.failure import Failure as TwistedFailure

from vpnaaa import logs
from vpnaaa.certs import RevocationChecker, RevocationResult, VerifiedCertificate
from vpnaaa.eap import packet
from vpnaaa.eap.authenticator import (
    Challenge,
    Conversation,
    Failure,
    MethodFactory,
    Pending,
    Result,
    Success,
)
from vpnaaa.eap.packet import Type
from vpnaaa.eap.table import ConversationTable

log = logs.get("vpnaaa.eap")

KIB = 1024
MIB = 1024 * KIB
# Octets one live conversation of each method may hold (measured, rounded up; see above).
COST = {Type.PEAP: 128 * KIB, Type.TLS: 128 * KIB, Type.MSCHAPV2: 4 * KIB}
DEFAULT_COST = 4 * KIB  # a conversation before its method starts, or an unlisted method
DEFAULT_MEMORY_BUDGET = 256 * MIB
DEFAULT_PER_SOURCE = 32


def capacity(methods: Sequence[int], memory_budget: int) -> int:
    """How many conversations fit in ``memory_budget`` octets when each may become the
    most expensive of ``methods`` (at least one)."""
    worst = max((COST.get(kind, DEFAULT_COST) for kind in methods), default=DEFAULT_COST)
    return max(1, memory_budget // worst)


class EapEngine:
    def __init__(
        self,
        methods: Sequence[tuple[int, MethodFactory]],
        clock: IReactorTime,
        idle_timeout: float = 30.0,
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
        per_source: int = DEFAULT_PER_SOURCE,
        revocation: RevocationChecker | None = None,
    ) -> None:
        """``revocation``: what EAP-TLS asks about client certificates (``[eap.tls]``);
        None: a checker with no source, which accepts every certificate."""
        self.methods = list(methods)
        self.revocation = revocation if revocation is not None else RevocationChecker(clock)
        self.clock = clock
        self.memory_budget = memory_budget
        self._live: ConversationTable[Conversation] = ConversationTable(
            clock,
            idle_timeout,
            capacity([kind for kind, _ in self.methods], memory_budget),
            per_source,
        )
        self._refusals = logs.Throttle(log, clock.seconds)
        # finished conversations by (method, "success" | "failure"), for the metrics
        self.outcomes: Counter[tuple[str, str]] = Counter()

    def __len__(self) -> int:
        return len(self._live)

    @property
    def max_conversations(self) -> int:
        """The table's size: the memory budget over the worst offered method's cost."""
        return self._live.capacity

    def begin(self, source: str) -> tuple[bytes, Result]:
        """A new conversation for the client at ``source`` that starts with
        EAP-Request/Identity (the IKEv2 case, RFC 7296 §2.16)."""
        self.expire()
        conversation_id = os.urandom(16)
        admitted = self._admit(conversation_id, source, source, 0)
        if isinstance(admitted, Failure):
            return conversation_id, admitted
        return conversation_id, admitted.start()

    def step(
        self,
        conversation_id: bytes | None,
        eap: bytes,
        room: int | None = None,
        station: str | None = None,
    ) -> defer.Deferred[tuple[bytes, Result]]:
        """Feed one EAP Response; ``None`` starts a conversation (a NAS's first packet,
        RFC 3579 §2.1; the NAS is trusted by its secret, so no per-source cap) for a user
        at ``station`` (where the NAS says the user is, for the lockout). ``room``: the
        most octets the next EAP Request may take (RADIUS: what the reply's other
        attributes leave)."""
        self.expire()
        if conversation_id is None:
            conversation_id = os.urandom(16)
            admitted = self._admit(conversation_id, None, station, _identifier(eap))
            if isinstance(admitted, Failure):
                return defer.succeed((conversation_id, admitted))
            conversation = admitted
        else:
            found = self._live.touch(conversation_id)
            if found is None:
                reason = "unknown or expired conversation"
                return defer.succeed(
                    (
                        conversation_id,
                        Failure(packet.failure(_identifier(eap)).encode(), "", reason),
                    )
                )
            conversation = found
        return self._answer(conversation_id, conversation, conversation.receive(eap, room))

    def _answer(
        self, conversation_id: bytes, conversation: Conversation, result: Result | Pending
    ) -> defer.Deferred[tuple[bytes, Result]]:
        if isinstance(result, Pending):
            return self._check_revocation(conversation_id, result, conversation.identifier)
        if isinstance(result, Success) and result.certificate is not None:
            result = self._recheck(result, result.certificate)
        if not isinstance(result, Challenge):
            self._live.pop(conversation_id)
            method = conversation.method
            name = Type(method.type).name.lower() if method is not None else "none"
            self.outcomes[name, "success" if isinstance(result, Success) else "failure"] += 1
        return defer.succeed((conversation_id, result))

    def _recheck(self, success: Success, verified: VerifiedCertificate) -> Success | Failure:
        """EAP-TLS ends with the client's answer to our last flight, which it may hold
        back after the revocation verdict: a serial denied or a CRL file reread meanwhile
        turns the Success into an EAP-Failure (RFC 3748 §4.2 allows it in its place)."""
        refusal = self.revocation.recheck(verified)
        if refusal is None:
            return success
        reason = (
            f"client certificate {logs.quoted(verified.subject)} serial {verified.serial}: "
            f"{refusal.reason} (since the verdict)"
        )
        return Failure(packet.failure(success.eap[1]).encode(), success.identity, reason)

    def _check_revocation(
        self, conversation_id: bytes, pending: Pending, identifier: int
    ) -> defer.Deferred[tuple[bytes, Result]]:
        """Ask the revocation checker, then resume the conversation with its verdict.
        Only the conversation's id waits with the check: one forgotten meanwhile (its
        IKE SA closed) or expired is freed at once and never resumed."""
        d = self.revocation.check(pending.verified)
        d.addErrback(self._check_failed)
        return d.addCallback(self._resume, conversation_id, identifier)

    def _check_failed(self, failure: TwistedFailure) -> RevocationResult:
        """A revocation checker never errbacks (it refuses on its own bugs); if one does,
        the certificate is refused, not the error passed to the front, and the traceback
        logged once per interval, not once per login."""
        self._refusals.emit(
            ("revocation-failed",),
            LogLevel.error,
            "revocation check failed: {why}",
            why=failure.getErrorMessage(),
            log_failure=failure,
        )
        return RevocationResult(False, f"revocation check failed: {failure.getErrorMessage()}")

    def _resume(
        self, verdict: RevocationResult, conversation_id: bytes, identifier: int
    ) -> defer.Deferred[tuple[bytes, Result]]:
        """``identifier``: of the Response that waited (an EAP-Failure carries it)."""
        conversation = self._live.get(conversation_id)
        if conversation is None:
            reason = "conversation forgotten or expired during the revocation check"
            failure = packet.failure(identifier).encode()
            return defer.succeed((conversation_id, Failure(failure, "", reason)))
        return self._answer(conversation_id, conversation, conversation.revocation_checked(verdict))

    def refusal(self, conversation_id: bytes) -> Failure | None:
        conversation = self._live.get(conversation_id)
        return conversation.refusal() if conversation is not None else None

    def forget(self, conversation_id: bytes) -> None:
        """The front end gave up on a conversation (its IKE SA closed or expired). The
        table held the only reference: the conversation, its method and any TLS
        connection are freed at once (no reference cycles, see peap.py)."""
        self._live.pop(conversation_id)

    def expire(self) -> int:
        """Drop idle conversations; returns how many."""
        dropped = len(self._live.expire())
        if dropped:
            log.info("expired {n} idle EAP conversations", n=dropped)
        return dropped

    def _admit(
        self,
        conversation_id: bytes,
        source: str | None,
        station: str | None,
        identifier: int,
    ) -> Conversation | Failure:
        """A new conversation in the table (counted against ``source``'s cap, if any,
        with its peer at ``station``), or the EAP-Failure refusing it."""
        refusal = self._live.refusal(source)
        if refusal is None:
            conversation = Conversation(self.methods, station)
            self._live.add(conversation_id, conversation, source)
            return conversation
        self._refusals.emit(
            "refused", LogLevel.warn, "EAP conversation refused: {reason}", reason=refusal
        )
        self.outcomes["none", "failure"] += 1
        return Failure(packet.failure(identifier).encode(), "", refusal)


def _identifier(eap: bytes) -> int:
    return eap[1] if len(eap) >= 2 else 0
