"""RADIUS framing: packets in and out, authenticators, and the shipped dictionary.

pyrad supplies the dictionary (FreeRADIUS format, loaded once per process) and the value
encodings (:func:`value`). The framing itself — header, attribute walk, Request/Response
and Message-Authenticator — is this small sans-IO codec, because pyrad's Packet object
(an OrderedDict with per-attribute dictionary lookups, encoding the reply twice to sign
it) cost more than half of a PAP request's CPU time. Accounting records, which want every
attribute by name, are still decoded by pyrad (:mod:`vpnaaa.radius.accounting`).
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass
from enum import IntEnum
from importlib import resources
from typing import Any

from pyrad import tools
from pyrad.dictionary import Dictionary

MIN_LENGTH = 20  # RFC 2865 §3: code, identifier, length, authenticator
MAX_LENGTH = 4096  # RFC 2865 §3
HEADER = struct.Struct("!BBH16s")
VENDOR_SPECIFIC = 26  # RFC 2865 §5.26
ZERO_VECTOR = bytes(16)

Key = int | tuple[int, int]  # an attribute type, or (vendor, vendor type)


class Code(IntEnum):
    """RADIUS packet codes (RFC 2865 §3, RFC 2866 §3, RFC 5997 §2)."""

    ACCESS_REQUEST = 1
    ACCESS_ACCEPT = 2
    ACCESS_REJECT = 3
    ACCOUNTING_REQUEST = 4
    ACCOUNTING_RESPONSE = 5
    ACCESS_CHALLENGE = 11
    STATUS_SERVER = 12


class Malformed(Exception):
    """The datagram is not a well-formed RADIUS packet; it is silently discarded."""


class TooLarge(ValueError):
    """A reply would exceed 4096 octets (RFC 2865 §3), usually because the request's
    Proxy-State attributes, which the reply must echo (§5.33), leave too little room."""

    def __init__(self, length: int, proxy_state: int) -> None:
        super().__init__(
            f"reply of {length} octets exceeds {MAX_LENGTH} "
            f"({proxy_state} octets of them echo the request's Proxy-State)"
        )
        self.length = length
        self.proxy_state = proxy_state


def _load() -> Dictionary:
    with resources.as_file(resources.files("vpnaaa.radius") / "dictionary") as folder:
        return Dictionary(str(folder / "dictionary"))


DICTIONARY = _load()


def key(name: str) -> Key:
    """The key of attribute ``name``: its type, or ``(vendor, type)`` for a VSA."""
    return DICTIONARY.attrindex.GetForward(name)


def value(name: str, data: Any) -> tuple[Key, bytes]:
    """Attribute ``name`` with ``data`` encoded for its dictionary type (by pyrad)."""
    attribute = DICTIONARY.attributes[name]
    if isinstance(data, str) and attribute.values.HasForward(data):
        return key(name), attribute.values.GetForward(data)  # a VALUE name, encoded already
    return key(name), tools.EncodeAttr(attribute.type, data)


USER_NAME = key("User-Name")
USER_PASSWORD = key("User-Password")
CHAP_PASSWORD = key("CHAP-Password")
CHAP_CHALLENGE = key("CHAP-Challenge")
PROXY_STATE = key("Proxy-State")
MESSAGE_AUTHENTICATOR = key("Message-Authenticator")
EAP_MESSAGE = key("EAP-Message")
MS_CHAP_CHALLENGE = key("MS-CHAP-Challenge")
MS_CHAP_RESPONSE = key("MS-CHAP-Response")
MS_CHAP2_RESPONSE = key("MS-CHAP2-Response")


@dataclass(slots=True)
class Packet:
    """A received packet: header fields, raw attribute values by key, and the raw bytes."""

    code: int
    ident: int
    authenticator: bytes
    raw: bytes
    attributes: dict[Key, list[bytes]]
    message_authenticator_at: int = -1  # offset of its 16-octet value, -1 if absent

    def get(self, attribute: Key) -> bytes | None:
        """The first value of ``attribute``, or None."""
        values = self.attributes.get(attribute)
        return values[0] if values else None


def _vendor_attributes(data: bytes) -> list[tuple[Key, bytes]] | None:
    """The sub-attributes of a Vendor-Specific value (RFC 2865 §5.26), or None if its
    layout is not the recommended one (then the attribute is kept whole, as type 26)."""
    if len(data) < 6:
        return None
    vendor = int.from_bytes(data[:4], "big")
    found = []
    position = 4
    while position < len(data):
        if position + 2 > len(data):
            return None
        size = data[position + 1]
        if size < 2 or position + size > len(data):
            return None
        found.append(((vendor, data[position]), data[position + 2 : position + size]))
        position += size
    return found


def parse(data: bytes) -> Packet:
    """Decode a datagram (RFC 2865 §3, §5); raise :class:`Malformed` with the reason.

    Octets past the Length field are padding and ignored; attributes must tile the rest
    exactly (pyrad would silently truncate one that overruns the packet).
    """
    if len(data) < MIN_LENGTH:
        raise Malformed(f"{len(data)} octets is shorter than a header")
    code, ident, length, authenticator = HEADER.unpack_from(data)
    if length < MIN_LENGTH or length > MAX_LENGTH or length > len(data):
        raise Malformed(f"Length field {length} for {len(data)} octets")
    raw = data[:length]
    attributes: dict[Key, list[bytes]] = {}
    ma_at = -1
    position = MIN_LENGTH
    while position < length:
        if position + 2 > length:
            raise Malformed("attribute header overruns the packet")
        kind = raw[position]
        size = raw[position + 1]
        if size < 2 or position + size > length:
            raise Malformed(f"attribute {kind} has Length {size} at offset {position}")
        content = raw[position + 2 : position + size]
        if kind == VENDOR_SPECIFIC:
            sub = _vendor_attributes(content)
            if sub is not None:
                for sub_key, sub_value in sub:
                    attributes.setdefault(sub_key, []).append(sub_value)
                position += size
                continue
        elif kind == MESSAGE_AUTHENTICATOR:
            if size != 18:
                raise Malformed(f"Message-Authenticator of {size - 2} octets")
            ma_at = position + 2
        attributes.setdefault(kind, []).append(content)
        position += size
    return Packet(code, ident, authenticator, raw, attributes, ma_at)


def message_authenticator_ok(packet: Packet, secret: bytes, vector: bytes | None = None) -> bool:
    """Verify the Message-Authenticator (RFC 3579 §3.2): HMAC-MD5 over the packet with the
    value zeroed and ``vector`` in the Authenticator field: a request's own authenticator,
    zeros for an Accounting-Request (RFC 2869 §5.14), the request's for a response."""
    if vector is None:
        vector = ZERO_VECTOR if packet.code == Code.ACCOUNTING_REQUEST else packet.authenticator
    at = packet.message_authenticator_at
    raw = packet.raw
    signed = raw[:4] + vector + raw[20:at] + ZERO_VECTOR + raw[at + 16 :]
    return hmac.compare_digest(hmac.digest(secret, signed, "md5"), raw[at : at + 16])


def accounting_authenticator_ok(packet: Packet, secret: bytes) -> bool:
    """The Request Authenticator of an Accounting-Request (RFC 2866 §3)."""
    raw = packet.raw
    expected = hashlib.md5(raw[:4] + ZERO_VECTOR + raw[20:] + secret).digest()
    return hmac.compare_digest(expected, packet.authenticator)


def _encode_attributes(attributes: list[tuple[Key, bytes]]) -> bytes:
    out = []
    for attribute, data in attributes:
        if isinstance(attribute, tuple):
            vendor, kind = attribute
            out.append(
                struct.pack("!BBIBB", VENDOR_SPECIFIC, len(data) + 8, vendor, kind, len(data) + 2)
            )
        else:
            out.append(struct.pack("!BB", attribute, len(data) + 2))
        out.append(data)
    return b"".join(out)


def reply(
    request: Packet, code: Code, secret: bytes, attributes: list[tuple[Key, bytes]] = ()
) -> bytes:
    """Encode the response to ``request``.

    Proxy-State is copied in order (RFC 2865 §5.33). Replies to Access-Request and
    Status-Server carry a Message-Authenticator as their first attribute (RFC 3579 §3.2,
    RFC 5997 §3; first as the BlastRADIUS hardening of CVE-2024-3596), computed with the
    Request Authenticator; the Response Authenticator follows (RFC 2865 §3). Raises
    :class:`TooLarge` rather than build more than 4096 octets.
    """
    attributes = list(attributes)
    proxy_states = request.attributes.get(PROXY_STATE)
    if proxy_states:
        attributes.extend((PROXY_STATE, state) for state in proxy_states)
    body = _encode_attributes(attributes)
    signed = request.code in (Code.ACCESS_REQUEST, Code.STATUS_SERVER)
    length = MIN_LENGTH + len(body) + (18 if signed else 0)
    if length > MAX_LENGTH:
        raise TooLarge(length, proxy_state_octets(request))
    head = struct.pack("!BBH", code, request.ident, length)
    if signed:
        body = _signed(head, request.authenticator, body, secret)
    response_authenticator = hashlib.md5(head + request.authenticator + body + secret).digest()
    return head + response_authenticator + body


def proxy_state_octets(request: Packet) -> int:
    """The octets a reply spends echoing ``request``'s Proxy-State (RFC 2865 §5.33)."""
    return sum(2 + len(state) for state in request.attributes.get(PROXY_STATE, ()))


_MA_HEADER = bytes([MESSAGE_AUTHENTICATOR, 18])


def _signed(head: bytes, authenticator: bytes, body: bytes, secret: bytes) -> bytes:
    """``body`` behind a Message-Authenticator (RFC 3579 §3.2): HMAC-MD5 over the packet
    with the value zeroed and ``authenticator`` in the Authenticator field."""
    ma = hmac.digest(secret, head + authenticator + _MA_HEADER + ZERO_VECTOR + body, "md5")
    return _MA_HEADER + ma + body


def access_request(
    ident: int, authenticator: bytes, secret: bytes, attributes: list[tuple[Key, bytes]]
) -> bytes:
    """An Access-Request (RFC 2865 §4.1) with Message-Authenticator first: ``authenticator``
    is the random Request Authenticator (RFC 2865 §3)."""
    body = _encode_attributes(attributes)
    head = struct.pack("!BBH", Code.ACCESS_REQUEST, ident, MIN_LENGTH + 18 + len(body))
    return head + authenticator + _signed(head, authenticator, body, secret)


def response_ok(response: Packet, request_authenticator: bytes, secret: bytes) -> bool:
    """Verify a response's Response Authenticator (RFC 2865 §3) and, when present, its
    Message-Authenticator, both computed with the request's authenticator."""
    raw = response.raw
    expected = hashlib.md5(raw[:4] + request_authenticator + raw[20:] + secret).digest()
    if not hmac.compare_digest(expected, response.authenticator):
        return False
    if response.message_authenticator_at < 0:
        return True
    return message_authenticator_ok(response, secret, request_authenticator)


def accounting_request(ident: int, secret: bytes, attributes: list[tuple[Key, bytes]]) -> bytes:
    """An Accounting-Request (RFC 2866 §4.1); its Request Authenticator is the MD5 of the
    packet with a zero Authenticator field, followed by the secret (RFC 2866 §3)."""
    body = _encode_attributes(attributes)
    length = MIN_LENGTH + len(body)
    if length > MAX_LENGTH:
        raise TooLarge(length, 0)
    head = struct.pack("!BBH", Code.ACCOUNTING_REQUEST, ident, length)
    authenticator = hashlib.md5(head + ZERO_VECTOR + body + secret).digest()
    return head + authenticator + body
