"""The EAP engine both front ends share: a bounded table of live conversations.

``step(conversation_id, eap) -> Deferred[(conversation_id, Result)]`` is the in-process
interface: the RADIUS server calls it with the State attribute as conversation id, the
IKEv2 responder with its IKE SA. Methods are sans-IO and answer at once; the Deferred
keeps the seam identical to the relay backend, which waits on an external RADIUS server.

Conversations idle for ``idle_timeout`` seconds are dropped; at ``max_conversations``
new ones are refused (the peer gets EAP-Failure) rather than exhausting memory.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

from vpnaaa import logs
from vpnaaa.eap import packet
from vpnaaa.eap.authenticator import Challenge, Conversation, Failure, MethodFactory, Result

log = logs.get("vpnaaa.eap")


@dataclass
class _Entry:
    conversation: Conversation
    last_active: float


class EapEngine:
    def __init__(
        self,
        methods: Sequence[tuple[int, MethodFactory]],
        clock: IReactorTime,
        idle_timeout: float = 30.0,
        max_conversations: int = 10000,
    ) -> None:
        self.methods = list(methods)
        self.clock = clock
        self.idle_timeout = idle_timeout
        self.max_conversations = max_conversations
        self._live: OrderedDict[bytes, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._live)

    def begin(self, source: str = "") -> tuple[bytes, Result]:
        """A new conversation that starts with EAP-Request/Identity (the IKEv2 case)."""
        conversation_id = os.urandom(16)
        conversation = self._admit(conversation_id)
        if conversation is None:
            return conversation_id, self._refused(0)
        return conversation_id, conversation.start()

    def step(
        self, conversation_id: bytes | None, eap: bytes
    ) -> defer.Deferred[tuple[bytes, Result]]:
        """Feed one EAP Response; ``None`` starts a conversation (a NAS's first packet)."""
        self.expire()
        if conversation_id is None:
            conversation_id = os.urandom(16)
            conversation = self._admit(conversation_id)
            if conversation is None:
                return defer.succeed((conversation_id, self._refused(_identifier(eap))))
        else:
            entry = self._live.get(conversation_id)
            if entry is None:
                reason = "unknown or expired conversation"
                return defer.succeed(
                    (
                        conversation_id,
                        Failure(packet.failure(_identifier(eap)).encode(), "", reason),
                    )
                )
            self._live.move_to_end(conversation_id)
            entry.last_active = self.clock.seconds()
            conversation = entry.conversation
        result = conversation.receive(eap)
        if not isinstance(result, Challenge):
            self._live.pop(conversation_id, None)
        return defer.succeed((conversation_id, result))

    def forget(self, conversation_id: bytes) -> None:
        """The front end gave up on a conversation (its peer went away)."""
        self._live.pop(conversation_id, None)

    def expire(self) -> int:
        """Drop idle conversations; returns how many."""
        horizon = self.clock.seconds() - self.idle_timeout
        dropped = 0
        while self._live:
            entry = next(iter(self._live.values()))
            if entry.last_active > horizon:
                break
            self._live.popitem(last=False)
            dropped += 1
        if dropped:
            log.info("expired {n} idle EAP conversations", n=dropped)
        return dropped

    def _admit(self, conversation_id: bytes) -> Conversation | None:
        if len(self._live) >= self.max_conversations:
            return None
        conversation = Conversation(self.methods)
        self._live[conversation_id] = _Entry(conversation, self.clock.seconds())
        return conversation

    def _refused(self, identifier: int) -> Failure:
        log.warn(
            "EAP conversation refused: {n} live conversations is the configured maximum",
            n=self.max_conversations,
        )
        return Failure(packet.failure(identifier).encode(), "", "too many live conversations")


def _identifier(eap: bytes) -> int:
    return eap[1] if len(eap) >= 2 else 0
