"""Sealing and opening the Encrypted payload (SK, RFC 7296 §3.14; AEAD: RFC 5282) and the
Encrypted Fragment payload (SKF, RFC 7383 §2.5).

The body of either payload, after its header, is

    IV | E(inner payloads | Padding | Pad Length) | ICV

The contract with the message codec: it lays out ``prefix``, every octet of the message
before that body (the IKE header, any payloads in clear, the SK or SKF payload header
and, for SKF, the Fragment Number and Total Fragments fields), with all length fields
final: it learns the body's length from ``sealed_length`` first. That prefix is what the
integrity algorithm covers together with IV and ciphertext (RFC 7296 §3.14) and, with
an AEAD cipher, the associated data (RFC 5282 §5.1, RFC 7383 §2.5).

CBC padding is the minimum that aligns the plaintext to the block; AEAD ciphers need
none. On receipt any Pad Length that fits is accepted (RFC 7296 §3.14). Failures are
SkError: the state machine discards such a message without answering (RFC 7296 §2.21.1).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from vpnaaa.ike.keys import IkeKeys
from vpnaaa.ike.transforms import AnyCipher, AuthenticationFailed, Integrity

_IKE_LENGTH = slice(24, 28)  # the Length field of the IKE header (RFC 7296 §3.1)


class SkError(Exception):
    """A received SK/SKF body that must be discarded."""


class IntegrityCheckFailed(SkError):
    """The ICV (or the AEAD tag) does not verify."""


class MalformedSk(SkError):
    """A body whose lengths or Pad Length do not fit the negotiated transforms."""


@dataclass(frozen=True)
class SkCrypto:
    """What protects one direction of an IKE SA: the negotiated cipher and integrity
    algorithm (None with an AEAD cipher) and that direction's SK_e and SK_a.
    """

    cipher: AnyCipher
    integrity: Integrity | None
    encr_key: bytes = field(repr=False)
    integ_key: bytes = field(repr=False, default=b"")

    def __post_init__(self) -> None:
        if (self.integrity is None) != self.cipher.is_aead:
            raise ValueError("an AEAD cipher takes no integrity algorithm, others need one")
        if len(self.encr_key) != self.cipher.key_size:
            raise ValueError(f"encryption key of {len(self.encr_key)} octets")
        if len(self.integ_key) != (self.integrity.key_size if self.integrity else 0):
            raise ValueError(f"integrity key of {len(self.integ_key)} octets")

    @property
    def icv_size(self) -> int:
        return self.integrity.icv_size if self.integrity else self.cipher.icv_size


def directions(
    keys: IkeKeys, cipher: AnyCipher, integrity: Integrity | None, *, initiator: bool
) -> tuple[SkCrypto, SkCrypto]:
    """(outbound, inbound) protection for our end of an IKE SA: the initiator sends with
    SK_ei/SK_ai and receives with SK_er/SK_ar, the responder the other way round.
    """
    i = SkCrypto(cipher, integrity, keys.sk_ei, keys.sk_ai)
    r = SkCrypto(cipher, integrity, keys.sk_er, keys.sk_ar)
    return (i, r) if initiator else (r, i)


def _padding(length: int, block_size: int) -> bytes:
    """Padding and the Pad Length octet that align ``length`` octets to the block."""
    pad = -(length + 1) % block_size
    return bytes(pad) + bytes([pad])


def sealed_length(plaintext_length: int, crypto: SkCrypto) -> int:
    """Octets of the SK/SKF body that ``seal`` makes of ``plaintext_length`` octets."""
    cipher = crypto.cipher
    padded = plaintext_length + len(_padding(plaintext_length, cipher.block_size))
    return cipher.iv_size + padded + crypto.icv_size


def seal(prefix: bytes, plaintext: bytes, crypto: SkCrypto, *, iv: bytes | None = None) -> bytes:
    """The body protecting ``plaintext`` (the inner payloads, or a fragment of them).

    ``prefix`` is the message up to the body, its IKE header Length already counting the
    body. ``iv`` is random unless given (known-answer tests).
    """
    cipher = crypto.cipher
    if int.from_bytes(prefix[_IKE_LENGTH], "big") != len(prefix) + sealed_length(
        len(plaintext), crypto
    ):
        raise ValueError("the IKE header Length in prefix does not count the sealed body")
    if iv is None:
        iv = os.urandom(cipher.iv_size)  # unpredictable for CBC, unrepeated for AEAD
    elif len(iv) != cipher.iv_size:
        raise ValueError(f"IV of {len(iv)} octets")
    inner = plaintext + _padding(len(plaintext), cipher.block_size)
    if crypto.integrity is None:  # an AEAD cipher
        return iv + cipher.encrypt(crypto.encr_key, iv, inner, prefix)
    encrypted = iv + cipher.encrypt(crypto.encr_key, iv, inner)
    return encrypted + crypto.integrity.compute(crypto.integ_key, prefix + encrypted)


def open(prefix: bytes, body: bytes, crypto: SkCrypto) -> bytes:
    """The inner payloads (or fragment) of a received SK/SKF ``body``, the integrity
    checked first; IntegrityCheckFailed or MalformedSk otherwise.
    """
    cipher = crypto.cipher
    icv_size = crypto.icv_size
    encrypted_length = len(body) - cipher.iv_size - icv_size
    if encrypted_length < 1 or encrypted_length % cipher.block_size:
        raise MalformedSk(f"SK body of {len(body)} octets")
    iv, rest = body[: cipher.iv_size], body[cipher.iv_size :]
    if crypto.integrity is None:  # an AEAD cipher: the ICV ends the ciphertext
        try:
            inner = cipher.decrypt(crypto.encr_key, iv, rest, prefix)
        except AuthenticationFailed:
            raise IntegrityCheckFailed("AEAD ICV mismatch") from None
    else:
        icv = body[-icv_size:]
        if not crypto.integrity.verify(crypto.integ_key, prefix + body[:-icv_size], icv):
            raise IntegrityCheckFailed("ICV mismatch")
        inner = cipher.decrypt(crypto.encr_key, iv, rest[:-icv_size])
    pad_length = inner[-1]
    if pad_length >= len(inner):
        raise MalformedSk(f"Pad Length {pad_length} in {len(inner)} octets")
    return inner[: -1 - pad_length]
