"""The bounded table of live EAP conversations both backends keep.

:class:`ConversationTable` is what :class:`~vpnaaa.eap.engine.EapEngine` and
:class:`~vpnaaa.radius.client.RadiusRelay` hold per conversation id: least recently active
first, so idle expiry stops at the first fresh entry. It refuses a new conversation
beyond ``capacity`` and, for a conversation begun for a known ``source`` (the IKE
client's address), beyond ``per_source`` live ones of that source: one host cannot take
every slot (charon's ``block_threshold`` plays the same role for its half-open SAs). An
IPv6 source counts by its /64 (:func:`vpnaaa.net.source_prefix`).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, TypeVar

from twisted.internet.interfaces import IReactorTime

from vpnaaa.net import source_prefix

T = TypeVar("T")


@dataclass
class _Slot(Generic[T]):
    value: T
    source: str | None
    last_active: float


class ConversationTable(Generic[T]):
    """Live conversations by id, capped in total and per source, expired when idle."""

    def __init__(
        self, clock: IReactorTime, idle_timeout: float, capacity: int, per_source: int
    ) -> None:
        self.clock = clock
        self.idle_timeout = idle_timeout
        self.capacity = capacity
        self.per_source = per_source
        self._slots: OrderedDict[bytes, _Slot[T]] = OrderedDict()
        self._by_source: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, conversation_id: bytes) -> bool:
        return conversation_id in self._slots

    def refusal(self, source: str | None) -> str | None:
        """Why a new conversation for ``source`` cannot be admitted now, or None.
        ``source`` None (a RADIUS NAS, authenticated by its secret) has no per-source cap."""
        if len(self._slots) >= self.capacity:
            return f"{self.capacity} live conversations is the configured maximum"
        source = source_prefix(source)
        if source is not None and self._by_source.get(source, 0) >= self.per_source:
            return f"{source} already has {self.per_source} live conversations"
        return None

    def add(self, conversation_id: bytes, value: T, source: str | None) -> None:
        """Admit a conversation (the caller checked :meth:`refusal` first)."""
        source = source_prefix(source)
        self._slots[conversation_id] = _Slot(value, source, self.clock.seconds())
        if source is not None:
            self._by_source[source] = self._by_source.get(source, 0) + 1

    def get(self, conversation_id: bytes) -> T | None:
        """The conversation, without marking it active; None if unknown or expired."""
        slot = self._slots.get(conversation_id)
        return slot.value if slot is not None else None

    def touch(self, conversation_id: bytes) -> T | None:
        """The conversation, marked active now; None if unknown or expired."""
        slot = self._slots.get(conversation_id)
        if slot is None:
            return None
        slot.last_active = self.clock.seconds()
        self._slots.move_to_end(conversation_id)
        return slot.value

    def pop(self, conversation_id: bytes) -> T | None:
        """Remove a conversation; the table keeps no reference to it afterwards."""
        slot = self._slots.pop(conversation_id, None)
        if slot is None:
            return None
        self._release(slot)
        return slot.value

    def expire(self) -> list[tuple[bytes, T]]:
        """Remove the conversations idle for ``idle_timeout`` seconds; returns them."""
        horizon = self.clock.seconds() - self.idle_timeout
        dropped = []
        while self._slots:
            conversation_id, slot = next(iter(self._slots.items()))
            if slot.last_active > horizon:
                break
            del self._slots[conversation_id]
            self._release(slot)
            dropped.append((conversation_id, slot.value))
        return dropped

    def _release(self, slot: _Slot[T]) -> None:
        if slot.source is None:
            return
        left = self._by_source[slot.source] - 1
        if left:
            self._by_source[slot.source] = left
        else:
            del self._by_source[slot.source]
