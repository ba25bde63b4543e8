"""RADIUS wire constants and the shipped dictionary, loaded once per process.

Packets are encoded and decoded by pyrad. The hot path reads raw attribute values by the
integer keys below (resolved from the dictionary at import), so no request pays for a
dictionary name lookup or value decoding it does not need.
"""

from __future__ import annotations

import struct
from enum import IntEnum
from importlib import resources

from pyrad.dictionary import Dictionary

MIN_LENGTH = 20  # RFC 2865 §3: code, identifier, length, authenticator
MAX_LENGTH = 4096  # RFC 2865 §3
HEADER = struct.Struct("!BBH16s")


class Code(IntEnum):
    """RADIUS packet codes (RFC 2865 §3, RFC 2866 §3, RFC 5997 §2)."""

    ACCESS_REQUEST = 1
    ACCESS_ACCEPT = 2
    ACCESS_REJECT = 3
    ACCOUNTING_REQUEST = 4
    ACCOUNTING_RESPONSE = 5
    ACCESS_CHALLENGE = 11
    STATUS_SERVER = 12


def _load() -> Dictionary:
    with resources.as_file(resources.files("vpnaaa.radius") / "dictionary") as folder:
        return Dictionary(str(folder / "dictionary"))


DICTIONARY = _load()


def key(name: str) -> int | tuple[int, int]:
    """The integer (or ``(vendor, type)``) key under which pyrad stores attribute ``name``."""
    return DICTIONARY.attrindex.GetForward(name)


USER_NAME = key("User-Name")
USER_PASSWORD = key("User-Password")
CHAP_PASSWORD = key("CHAP-Password")
CHAP_CHALLENGE = key("CHAP-Challenge")
REPLY_MESSAGE = key("Reply-Message")
MESSAGE_AUTHENTICATOR = key("Message-Authenticator")
EAP_MESSAGE = key("EAP-Message")
MS_CHAP_CHALLENGE = key("MS-CHAP-Challenge")
MS_CHAP_RESPONSE = key("MS-CHAP-Response")
MS_CHAP2_RESPONSE = key("MS-CHAP2-Response")


def attributes_fit(packet: bytes, length: int) -> bool:
    """Whether the attributes tile ``packet[20:length]`` exactly, each at least 2 octets.

    pyrad silently truncates an attribute whose Length overruns the packet; such a packet
    is malformed (RFC 2865 §5) and is dropped before decoding.
    """
    position = MIN_LENGTH
    while position < length:
        if position + 2 > length:
            return False
        size = packet[position + 1]
        if size < 2:
            return False
        position += size
    return position == length
