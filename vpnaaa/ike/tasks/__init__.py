"""One module per exchange concern of an IKE SA (strongSwan's ``sa/ikev2/tasks``).

A module answers the peer's requests of its exchange (functions the core's
``RESPONDERS`` table names) and defines the :class:`Task` objects for requests of ours:
each owns its own state (nonces, DH private value, the SPIs it proposed) from the request
it builds to the answer it handles.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from vpnaaa.ike.effects import Effects
from vpnaaa.ike.message import Entry, Message

if TYPE_CHECKING:
    from vpnaaa.ike.sa import IkeSa


class Task(Protocol):
    """A request of ours (§1.4, §1.3): built when it leaves, finished by its answer."""

    kind: str  # for logs: "liveness", "delete", "delete-child", "rekey-child", "rekey-ike"
    exchange: int

    def request(self, sa: IkeSa) -> list[Entry] | None:
        """The payloads to send, or None when there is nothing to ask any more."""

    def answered(self, sa: IkeSa, response: Message) -> Effects:
        """The peer's (integrity-checked, decrypted) answer."""
