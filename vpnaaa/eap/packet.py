"""EAP packets (RFC 3748 §4): Code, Identifier, Length, Type, Type-Data."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

HEADER = struct.Struct("!BBH")


class Code(IntEnum):
    """RFC 3748 §4."""

    REQUEST = 1
    RESPONSE = 2
    SUCCESS = 3
    FAILURE = 4


class Type(IntEnum):
    """EAP method types used here (RFC 3748 §5, IANA EAP registry)."""

    IDENTITY = 1
    NOTIFICATION = 2
    NAK = 3
    MD5_CHALLENGE = 4
    TLS = 13
    PEAP = 25
    MSCHAPV2 = 26
    EXTENSIONS = 33  # Microsoft's EAP-TLV inside PEAP ([MS-PEAP] §2.2.4)


class EapError(Exception):
    """A malformed EAP packet."""


@dataclass(frozen=True, slots=True)
class Packet:
    code: int
    identifier: int
    type: int | None = None  # only Request and Response carry a Type
    data: bytes = b""

    def encode(self) -> bytes:
        """The wire form (RFC 3748 §4.1-4.2)."""
        if self.code in (Code.SUCCESS, Code.FAILURE):
            return HEADER.pack(self.code, self.identifier, 4)
        assert self.type is not None
        return (
            HEADER.pack(self.code, self.identifier, 5 + len(self.data))
            + bytes([self.type])
            + self.data
        )


def parse(data: bytes) -> Packet:
    """Decode one EAP packet; octets past Length are padding (RFC 3748 §4.1)."""
    if len(data) < 4:
        raise EapError(f"{len(data)} octets is shorter than an EAP header")
    code, identifier, length = HEADER.unpack_from(data)
    if length < 4 or length > len(data):
        raise EapError(f"EAP Length {length} for {len(data)} octets")
    if code in (Code.SUCCESS, Code.FAILURE):
        return Packet(code, identifier)
    if code not in (Code.REQUEST, Code.RESPONSE):
        raise EapError(f"unknown EAP code {code}")
    if length < 5:
        raise EapError("EAP Request/Response without a Type")
    return Packet(code, identifier, data[4], data[5:length])


def request(identifier: int, kind: int, data: bytes = b"") -> Packet:
    return Packet(Code.REQUEST, identifier, kind, data)


def success(identifier: int) -> Packet:
    return Packet(Code.SUCCESS, identifier)


def failure(identifier: int) -> Packet:
    return Packet(Code.FAILURE, identifier)
