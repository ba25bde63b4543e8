"""The seam between a front end that carries EAP and whoever authenticates it.

Two implementations serve it: the in-process :class:`~vpnaaa.eap.engine.EapEngine` and
:class:`~vpnaaa.radius.client.RadiusRelay` (EAP over RADIUS to an external server, RFC 3579).
The IKEv2 responder holds one per connection profile and never knows which it has.
"""

from __future__ import annotations

from typing import Protocol

from twisted.internet import defer

from vpnaaa.eap.authenticator import Failure, Result


class EapBackend(Protocol):
    def begin(self, source: str) -> tuple[bytes, Result]:
        """A new conversation for a peer at ``source`` (its address, for per-source
        limits), starting with EAP-Request/Identity: (conversation id, first request)."""
        ...

    def step(self, conversation_id: bytes, eap: bytes) -> defer.Deferred[tuple[bytes, Result]]:
        """Feed one EAP Response of the conversation; the Deferred fires with the next
        Challenge, or the Success / Failure that ends it."""
        ...

    def refusal(self, conversation_id: bytes) -> Failure | None:
        """The failure a live conversation's method has decided and the peer has not
        acknowledged (it may give up first: the reason is then still known), or None."""
        ...

    def forget(self, conversation_id: bytes) -> None:
        """The front end gave up on the conversation (its IKE SA closed or expired):
        release everything it holds. Unknown ids are ignored."""
        ...

    def expire(self) -> int:
        """Drop idle conversations; returns how many."""
        ...
