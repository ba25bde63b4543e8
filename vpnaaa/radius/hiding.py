"""Attribute hiding with the shared secret: RFC 2865 §5.2 and RFC 2548 §2.4.

Both are the same MD5 keystream: b(1) = MD5(S + vector), c(i) = p(i) xor b(i),
b(i+1) = MD5(S + c(i)). User-Password and MS-CHAP-MPPE-Keys use the Request Authenticator
as vector; MS-MPPE-Send/Recv-Key prefix a salt and a length octet (RFC 2548 §2.4.2).
"""

from __future__ import annotations

import hashlib
import os


def _stream(data: bytes, secret: bytes, vector: bytes, *, decrypt: bool) -> bytes:
    out = bytearray()
    last = vector
    for i in range(0, len(data), 16):
        block = data[i : i + 16]
        pad = hashlib.md5(secret + last).digest()
        mixed = (int.from_bytes(block, "big") ^ int.from_bytes(pad, "big")).to_bytes(16, "big")
        out += mixed
        last = block if decrypt else mixed
    return bytes(out)


def _pad16(data: bytes) -> bytes:
    return data + bytes(-len(data) % 16)


def hide(plain: bytes, secret: bytes, authenticator: bytes) -> bytes:
    """User-Password style hiding (RFC 2865 §5.2), zero-padded to 16-octet blocks."""
    return _stream(_pad16(plain) or bytes(16), secret, authenticator, decrypt=False)


def unhide(hidden: bytes, secret: bytes, authenticator: bytes) -> bytes:
    """Undo :func:`hide`, returning the exact octets without the zero padding."""
    if not hidden or len(hidden) % 16 or len(hidden) > 128:
        raise ValueError(f"{len(hidden)} octets is not 16..128 in steps of 16")
    return _stream(hidden, secret, authenticator, decrypt=True).rstrip(b"\x00")


def salt_encrypt(key: bytes, secret: bytes, request_authenticator: bytes) -> bytes:
    """MS-MPPE-Send-Key / -Recv-Key (RFC 2548 §2.4.2): salt with its high bit set, then the
    key length octet, the key and zero padding, hidden with vector R + A."""
    salt = bytes([0x80 | os.urandom(1)[0], os.urandom(1)[0]])
    plain = _pad16(bytes([len(key)]) + key)
    return salt + _stream(plain, secret, request_authenticator + salt, decrypt=False)


def salt_decrypt(value: bytes, secret: bytes, request_authenticator: bytes) -> bytes:
    """Undo :func:`salt_encrypt`: the key from an MS-MPPE-Send/Recv-Key value."""
    if len(value) < 18 or (len(value) - 2) % 16:
        raise ValueError(f"salt-encrypted value of {len(value)} octets")
    salt, hidden = value[:2], value[2:]
    plain = _stream(hidden, secret, request_authenticator + salt, decrypt=True)
    if plain[0] > len(plain) - 1:
        raise ValueError("key length octet exceeds the value")
    return plain[1 : 1 + plain[0]]
