"""IKEv2 message fragmentation (RFC 7383): splitting an inner payload chain into pieces
for Encrypted Fragment payloads, and putting received pieces back together.

Bookkeeping only. The caller encrypts each piece with :mod:`vpnaaa.ike.sk`, and verifies
and decrypts each received fragment before adding it here: a fragment is kept only once
its integrity is checked (§2.6.2), so a forged fragment cannot take a genuine one's place.
"""

from __future__ import annotations

from typing import NamedTuple

from vpnaaa.ike.const import PayloadType

MAX_TOTAL = 0xFFFF  # the Total Fragments field is two octets (§2.5)


class Fragment(NamedTuple):
    """One piece of an inner payload chain (RFC 7383 §2.5)."""

    number: int
    total: int
    data: bytes  # plaintext: a slice of the inner payload chain
    first_payload: int  # the first inner payload's type in fragment 1, 0 in the others


class FragmentError(Exception):
    """A fragment dropped without reply (§2.6.2); the reason is for the log."""


def split(plaintext: bytes, first_payload: int, max_size: int) -> list[Fragment]:
    """Cut ``plaintext`` (an encoded inner chain starting with ``first_payload``) into
    pieces of at most ``max_size`` octets, numbered from 1 (§2.5)."""
    if max_size < 1:
        raise ValueError(f"fragment size {max_size}")
    chunks = [plaintext[i : i + max_size] for i in range(0, len(plaintext), max_size)] or [b""]
    if len(chunks) > MAX_TOTAL:
        raise ValueError(f"{len(chunks)} fragments exceed {MAX_TOTAL}")
    return [
        Fragment(number, len(chunks), chunk, first_payload if number == 1 else PayloadType.NONE)
        for number, chunk in enumerate(chunks, 1)
    ]


class Reassembler:
    """Collects the fragments of one message at a time (one per IKE SA and direction).

    A fragment of another message starts over, as does a larger Total Fragments for the
    same message (§2.6: the sender went to smaller fragments, §2.5.2); a smaller Total
    Fragments is dropped.
    Duplicates are ignored. At most ``max_fragments`` pieces and ``max_size`` octets are
    held; a message beyond either is dropped whole.
    """

    def __init__(self, max_fragments: int = 64, max_size: int = 65536):
        self.max_fragments = max_fragments
        self.max_size = max_size
        self._start(None, 0)

    def _start(self, message_id: int | None, total: int) -> None:
        self.message_id = message_id
        self._total = total
        self._pieces: dict[int, Fragment] = {}
        self._size = 0

    def add(self, message_id: int, fragment: Fragment) -> tuple[int, bytes] | None:
        """Keep ``fragment``; once all are in, return (first payload type, inner chain)
        and forget the message. Raise :class:`FragmentError` for a dropped fragment."""
        number, total = fragment.number, fragment.total
        if not 1 <= number <= total:
            raise FragmentError(f"Fragment Number {number} of Total Fragments {total}")
        if total > self.max_fragments:
            raise FragmentError(f"Total Fragments {total} exceeds {self.max_fragments}")
        if message_id != self.message_id or total > self._total:
            self._start(message_id, total)
        elif total < self._total:
            raise FragmentError(f"Total Fragments {total} after {self._total}")
        if number in self._pieces:
            return None
        if self._size + len(fragment.data) > self.max_size:
            self._start(None, 0)
            raise FragmentError(f"message {message_id} exceeds {self.max_size} octets")
        self._pieces[number] = fragment
        self._size += len(fragment.data)
        if len(self._pieces) < total:
            return None
        pieces = [self._pieces[n] for n in range(1, total + 1)]
        self._start(None, 0)
        return pieces[0].first_payload, b"".join(piece.data for piece in pieces)
