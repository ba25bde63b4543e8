"""IKEv2 messages (RFC 7296 §3): the header, the payload chain and every payload body.

Sans-IO: bytes in, frozen dataclasses out, and back. A payload's ``encode()`` gives its
body (no generic header) and ``decode(body)`` reads one; the chain functions add and
check the generic headers. Anything malformed raises :class:`IkeError` carrying the
Notify type the responder should answer with. The Encrypted (SK) and Encrypted Fragment
(SKF) payloads are kept as received; :mod:`vpnaaa.ike.sk` opens them and hands the inner
chain back to :func:`decode_payloads`.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

from vpnaaa.ike.const import (
    ExchangeType,
    HeaderFlag,
    IdType,
    NotifyType,
    PayloadType,
    TransformAttribute,
    TsType,
)

HEADER = struct.Struct("!8s8sBBBBII")  # RFC 7296 §3.1
GENERIC = struct.Struct("!BBH")  # RFC 7296 §3.2: next payload, C + RESERVED, length
IKE_VERSION = 0x20  # major 2, minor 0
CRITICAL = 0x80
MORE_PROPOSALS = 2  # RFC 7296 §3.3.1 Last Substruc
MORE_TRANSFORMS = 3  # RFC 7296 §3.3.2 Last Substruc
ATTRIBUTE_TV = 0x8000  # RFC 7296 §3.3.5 AF bit
KEY_LENGTH_TV = ATTRIBUTE_TV | TransformAttribute.KEY_LENGTH
NONCE_SIZES = range(16, 257)  # RFC 7296 §3.9


class IkeError(Exception):
    """Input the responder rejects, with the Notify type to answer with (RFC 7296 §2.21).

    ``payload_type`` names the offending payload; for UNSUPPORTED_CRITICAL_PAYLOAD it is
    also the Notification Data (:attr:`data`, RFC 7296 §3.10.1).
    """

    def __init__(self, notify: NotifyType, reason: str, payload_type: int | None = None):
        super().__init__(f"{notify.name}: {reason}")
        self.notify = notify
        self.reason = reason
        self.payload_type = payload_type

    @property
    def data(self) -> bytes:
        """The Notification Data to send with :attr:`notify`."""
        if self.notify == NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD and self.payload_type:
            return bytes([self.payload_type])
        return b""


def _syntax(reason: str, payload_type: int | None = None) -> IkeError:
    return IkeError(NotifyType.INVALID_SYNTAX, reason, payload_type)


def _at_least(body: bytes, size: int, what: str) -> None:
    if len(body) < size:
        raise _syntax(f"{what} body of {len(body)} octets, at least {size} expected")


@dataclass(frozen=True, slots=True)
class Header:
    """The IKE header (RFC 7296 §3.1). ``next_payload`` and ``length`` are filled in by
    :func:`encode_message`; ``version`` keeps the received byte (major in the high nibble)."""

    spi_i: bytes
    spi_r: bytes
    exchange: int
    flags: int
    message_id: int
    next_payload: int = PayloadType.NONE
    version: int = IKE_VERSION
    length: int = 0

    @property
    def major_version(self) -> int:
        return self.version >> 4

    @property
    def minor_version(self) -> int:
        return self.version & 0x0F

    @property
    def initiator(self) -> bool:
        return bool(self.flags & HeaderFlag.INITIATOR)

    @property
    def response(self) -> bool:
        return bool(self.flags & HeaderFlag.RESPONSE)

    def encode(self) -> bytes:
        if len(self.spi_i) != 8 or len(self.spi_r) != 8:
            raise ValueError("IKE SPIs are 8 octets")
        return HEADER.pack(
            self.spi_i,
            self.spi_r,
            self.next_payload,
            self.version,
            self.exchange,
            self.flags,
            self.message_id,
            self.length,
        )

    @classmethod
    def decode(cls, data: bytes) -> Header:
        if len(data) < HEADER.size:
            raise _syntax(f"{len(data)} octets is shorter than an IKE header")
        spi_i, spi_r, next_payload, version, exchange, flags, message_id, length = (
            HEADER.unpack_from(data)
        )
        return cls(spi_i, spi_r, exchange, flags, message_id, next_payload, version, length)


# -- Security Association (RFC 7296 §3.3) ---------------------------------------------


@dataclass(frozen=True, slots=True)
class Transform:
    """A Transform Substructure (§3.3.2). ``other_attributes`` holds any attribute but
    Key Length as (raw type field with the AF bit, value); a transform with one is
    unacceptable to the responder (§3.3.6)."""

    type: int
    id: int
    key_length: int | None = None
    other_attributes: tuple[tuple[int, bytes], ...] = ()

    def encode(self, last: bool) -> bytes:
        attributes = b""
        if self.key_length is not None:
            attributes = struct.pack("!HH", KEY_LENGTH_TV, self.key_length)
        for kind, value in self.other_attributes:
            if kind & ATTRIBUTE_TV:
                attributes += struct.pack("!H", kind) + value
            else:
                attributes += struct.pack("!HH", kind, len(value)) + value
        more = 0 if last else MORE_TRANSFORMS
        length = 8 + len(attributes)
        return struct.pack("!BxHBxH", more, length, self.type, self.id) + attributes

    @classmethod
    def decode(cls, data: bytes) -> Transform:
        kind, transform_id = data[4], int.from_bytes(data[6:8], "big")
        key_length = None
        others = []
        position = 8
        while position < len(data):
            if position + 4 > len(data):
                raise _syntax("transform attribute header overruns the transform")
            attribute, value = struct.unpack_from("!HH", data, position)
            position += 4
            if attribute == KEY_LENGTH_TV:
                key_length = value
            elif attribute & ATTRIBUTE_TV:
                others.append((attribute, value.to_bytes(2, "big")))
            else:
                if position + value > len(data):
                    raise _syntax(f"transform attribute {attribute} overruns the transform")
                others.append((attribute, data[position : position + value]))
                position += value
        return cls(kind, transform_id, key_length, tuple(others))


@dataclass(frozen=True, slots=True)
class Proposal:
    """A Proposal Substructure (§3.3.1): numbered from 1 in a request; a response carries
    the single accepted proposal under its original number."""

    number: int
    protocol: int
    spi: bytes
    transforms: tuple[Transform, ...]

    def encode(self, last: bool) -> bytes:
        count = len(self.transforms)
        transforms = b"".join(t.encode(i == count - 1) for i, t in enumerate(self.transforms))
        more = 0 if last else MORE_PROPOSALS
        length = 8 + len(self.spi) + len(transforms)
        head = struct.pack(
            "!BxHBBBB", more, length, self.number, self.protocol, len(self.spi), count
        )
        return head + self.spi + transforms

    @classmethod
    def decode(cls, data: bytes) -> Proposal:
        number, protocol, spi_size, count = data[4:8]
        if 8 + spi_size > len(data):
            raise _syntax(f"proposal {number} SPI Size {spi_size} overruns the proposal")
        spi = data[8 : 8 + spi_size]
        transforms = tuple(
            Transform.decode(t)
            for t in _substructures(data[8 + spi_size :], MORE_TRANSFORMS, "transform")
        )
        if len(transforms) != count:
            raise _syntax(f"proposal {number} announces {count} transforms, has {len(transforms)}")
        return cls(number, protocol, spi, transforms)


def _substructures(data: bytes, more: int, what: str) -> Iterator[bytes]:
    """Split Proposal or Transform substructures: Last Substruc (0 for the last, ``more``
    otherwise), RESERVED, a Length of at least 8 that stays within ``data``."""
    position = 0
    while position < len(data):
        if position + 8 > len(data):
            raise _syntax(f"{what} header overruns its container")
        flag, length = data[position], int.from_bytes(data[position + 2 : position + 4], "big")
        end = position + length
        if length < 8 or end > len(data):
            raise _syntax(f"{what} Length {length} at offset {position}")
        if flag != (more if end < len(data) else 0):
            raise _syntax(f"{what} Last Substruc {flag} at offset {position}")
        yield data[position:end]
        position = end


@dataclass(frozen=True, slots=True)
class Sa:
    """Security Association payload (§3.3)."""

    proposals: tuple[Proposal, ...]

    def encode(self) -> bytes:
        count = len(self.proposals)
        return b"".join(p.encode(i == count - 1) for i, p in enumerate(self.proposals))

    @classmethod
    def decode(cls, body: bytes) -> Sa:
        proposals = tuple(
            Proposal.decode(p) for p in _substructures(body, MORE_PROPOSALS, "proposal")
        )
        if not proposals:
            raise _syntax("SA payload without a proposal", PayloadType.SA)
        return cls(proposals)


# -- Simple payloads (RFC 7296 §3.4-3.12, §3.16) ---------------------------------------


@dataclass(frozen=True, slots=True)
class Ke:
    """Key Exchange payload (§3.4)."""

    group: int
    data: bytes

    def encode(self) -> bytes:
        return struct.pack("!H2x", self.group) + self.data

    @classmethod
    def decode(cls, body: bytes) -> Ke:
        _at_least(body, 4, "KE")
        return cls(int.from_bytes(body[:2], "big"), body[4:])


@dataclass(frozen=True, slots=True)
class Identification:
    """IDi or IDr payload (§3.5); its encoding is the IDx' of the AUTH computation (§2.15).

    ``reserved`` keeps the three RESERVED octets as received: §2.15 signs the ID payload's
    body as it came (RestOfInitIDPayload), and §3.5 only asks that we send zeros."""

    id_type: int
    data: bytes
    reserved: bytes = bytes(3)

    def encode(self) -> bytes:
        return bytes([self.id_type]) + self.reserved + self.data

    @classmethod
    def decode(cls, body: bytes) -> Identification:
        """An address-type identity must be exactly one address (§3.5); anything else
        would fail later, past the edge, where it is compared or printed."""
        _at_least(body, 4, "ID")
        size = _ADDRESS_SIZES.get(body[0])
        if size is not None and len(body) - 4 != size:
            raise _syntax(f"ID of type {body[0]} with {len(body) - 4} octets, {size} expected")
        return cls(body[0], body[4:], body[1:4])


_ADDRESS_SIZES = {IdType.IPV4_ADDR: 4, IdType.IPV6_ADDR: 16}


@dataclass(frozen=True, slots=True)
class Certificate:
    """Certificate payload (§3.6)."""

    encoding: int
    data: bytes

    def encode(self) -> bytes:
        return bytes([self.encoding]) + self.data

    @classmethod
    def decode(cls, body: bytes) -> Certificate:
        _at_least(body, 1, "CERT")
        return cls(body[0], body[1:])


@dataclass(frozen=True, slots=True)
class CertificateRequest:
    """Certificate Request payload (§3.7): for X.509, concatenated SHA-1 hashes of the
    trusted CAs' public keys."""

    encoding: int
    data: bytes

    def encode(self) -> bytes:
        return bytes([self.encoding]) + self.data

    @classmethod
    def decode(cls, body: bytes) -> CertificateRequest:
        _at_least(body, 1, "CERTREQ")
        return cls(body[0], body[1:])


@dataclass(frozen=True, slots=True)
class Authentication:
    """Authentication payload (§3.8)."""

    method: int
    data: bytes

    def encode(self) -> bytes:
        return struct.pack("!B3x", self.method) + self.data

    @classmethod
    def decode(cls, body: bytes) -> Authentication:
        _at_least(body, 4, "AUTH")
        return cls(body[0], body[4:])


@dataclass(frozen=True, slots=True)
class Nonce:
    """Nonce payload (§3.9): 16 to 256 octets."""

    data: bytes

    def encode(self) -> bytes:
        return self.data

    @classmethod
    def decode(cls, body: bytes) -> Nonce:
        if len(body) not in NONCE_SIZES:
            raise _syntax(f"nonce of {len(body)} octets", PayloadType.NONCE)
        return cls(body)


@dataclass(frozen=True, slots=True)
class Notify:
    """Notify payload (§3.10). ``protocol`` and ``spi`` only matter for notifications
    about a Child SA; both are empty (0, b"") otherwise."""

    notify_type: int
    data: bytes = b""
    protocol: int = 0
    spi: bytes = b""

    def encode(self) -> bytes:
        head = struct.pack("!BBH", self.protocol, len(self.spi), self.notify_type)
        return head + self.spi + self.data

    @classmethod
    def decode(cls, body: bytes) -> Notify:
        _at_least(body, 4, "N")
        protocol, spi_size, notify_type = struct.unpack_from("!BBH", body)
        if 4 + spi_size > len(body):
            raise _syntax(f"notify SPI Size {spi_size} overruns the payload", PayloadType.NOTIFY)
        return cls(notify_type, body[4 + spi_size :], protocol, body[4 : 4 + spi_size])


@dataclass(frozen=True, slots=True)
class Delete:
    """Delete payload (§3.11): no SPI for the IKE SA itself, 4-octet SPIs for ESP/AH."""

    protocol: int
    spis: tuple[bytes, ...] = ()

    def encode(self) -> bytes:
        size = len(self.spis[0]) if self.spis else 0
        if any(len(spi) != size for spi in self.spis):
            raise ValueError("Delete SPIs of different sizes")
        return struct.pack("!BBH", self.protocol, size, len(self.spis)) + b"".join(self.spis)

    @classmethod
    def decode(cls, body: bytes) -> Delete:
        _at_least(body, 4, "D")
        protocol, size, count = struct.unpack_from("!BBH", body)
        if len(body) != 4 + size * count:
            raise _syntax(f"{count} SPIs of {size} octets in {len(body) - 4}", PayloadType.DELETE)
        return cls(protocol, tuple(body[4 + i * size : 4 + (i + 1) * size] for i in range(count)))


@dataclass(frozen=True, slots=True)
class VendorId:
    """Vendor ID payload (§3.12)."""

    data: bytes

    def encode(self) -> bytes:
        return self.data

    @classmethod
    def decode(cls, body: bytes) -> VendorId:
        return cls(body)


@dataclass(frozen=True, slots=True)
class Eap:
    """EAP payload (§3.16): one whole EAP message (RFC 3748 §4)."""

    data: bytes

    def encode(self) -> bytes:
        return self.data

    @classmethod
    def decode(cls, body: bytes) -> Eap:
        _at_least(body, 4, "EAP")
        return cls(body)


# -- Traffic Selectors (RFC 7296 §3.13) ------------------------------------------------

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_SELECTOR_SIZES = {TsType.IPV4_ADDR_RANGE: 16, TsType.IPV6_ADDR_RANGE: 40}


@dataclass(frozen=True, slots=True)
class TrafficSelector:
    """One selector (§3.13.1); its TS Type follows from the address family."""

    start_address: Address
    end_address: Address
    ip_protocol: int = 0
    start_port: int = 0
    end_port: int = 65535

    @property
    def ts_type(self) -> TsType:
        if self.start_address.version == 4:
            return TsType.IPV4_ADDR_RANGE
        return TsType.IPV6_ADDR_RANGE

    def encode(self) -> bytes:
        if self.start_address.version != self.end_address.version:
            raise ValueError("traffic selector mixes address families")
        ts_type = self.ts_type
        head = struct.pack(
            "!BBHHH",
            ts_type,
            self.ip_protocol,
            _SELECTOR_SIZES[ts_type],
            self.start_port,
            self.end_port,
        )
        return head + self.start_address.packed + self.end_address.packed


@dataclass(frozen=True, slots=True)
class TrafficSelectors:
    """TSi or TSr payload (§3.13)."""

    selectors: tuple[TrafficSelector, ...]

    def encode(self) -> bytes:
        head = struct.pack("!B3x", len(self.selectors))
        return head + b"".join(s.encode() for s in self.selectors)

    @classmethod
    def decode(cls, body: bytes) -> TrafficSelectors:
        _at_least(body, 4, "TS")
        selectors = []
        position = 4
        while position < len(body):
            if position + 8 > len(body):
                raise _syntax("traffic selector header overruns the payload")
            ts_type, ip_protocol, length, start_port, end_port = struct.unpack_from(
                "!BBHHH", body, position
            )
            if _SELECTOR_SIZES.get(ts_type) != length or position + length > len(body):
                raise _syntax(f"traffic selector of type {ts_type} and Length {length}")
            half = (length - 8) // 2
            start = ipaddress.ip_address(body[position + 8 : position + 8 + half])
            end = ipaddress.ip_address(body[position + 8 + half : position + length])
            if start > end:
                # §3.13.1: the range runs from Starting to Ending Address (only ports
                # have a reversed, OPAQUE form); a reversed range selects nothing.
                raise _syntax(f"traffic selector {start}-{end} ends before it starts")
            selectors.append(TrafficSelector(start, end, ip_protocol, start_port, end_port))
            position += length
        if len(selectors) != body[0]:
            raise _syntax(f"TS payload announces {body[0]} selectors, has {len(selectors)}")
        return cls(tuple(selectors))


# -- Configuration (RFC 7296 §3.15) ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Configuration:
    """Configuration payload (§3.15): attributes as (type, value); an empty value asks
    for one (CFG_REQUEST) or acknowledges one (CFG_ACK)."""

    cfg_type: int
    attributes: tuple[tuple[int, bytes], ...] = ()

    def encode(self) -> bytes:
        out = [struct.pack("!B3x", self.cfg_type)]
        for kind, value in self.attributes:
            out.append(struct.pack("!HH", kind, len(value)) + value)
        return b"".join(out)

    @classmethod
    def decode(cls, body: bytes) -> Configuration:
        _at_least(body, 4, "CP")
        attributes = []
        position = 4
        while position < len(body):
            if position + 4 > len(body):
                raise _syntax("configuration attribute header overruns the payload")
            kind, length = struct.unpack_from("!HH", body, position)
            end = position + 4 + length
            if end > len(body):
                raise _syntax(f"configuration attribute {kind & 0x7FFF} overruns the payload")
            attributes.append((kind & 0x7FFF, body[position + 4 : end]))  # R bit ignored
            position = end
        return cls(body[0], tuple(attributes))


# -- Encrypted payloads (RFC 7296 §3.14, RFC 7383 §2.5) --------------------------------


@dataclass(frozen=True, slots=True)
class Encrypted:
    """Encrypted and Authenticated payload (§3.14) as on the wire: ``raw`` is
    IV | ciphertext | ICV, ``first_payload`` the type of the first inner payload (sent in
    the generic header's Next Payload field). Always the last payload of a message."""

    first_payload: int
    raw: bytes

    def encode(self) -> bytes:
        return self.raw

    @classmethod
    def decode(cls, body: bytes, first_payload: int) -> Encrypted:
        return cls(first_payload, body)


@dataclass(frozen=True, slots=True)
class EncryptedFragment:
    """Encrypted Fragment payload (RFC 7383 §2.5): ``first_payload`` is the first inner
    payload's type in fragment 1 and 0 in the others. Numbers are checked by
    :class:`vpnaaa.ike.fragments.Reassembler`, which silently drops bad fragments."""

    number: int
    total: int
    first_payload: int
    raw: bytes

    def encode(self) -> bytes:
        return struct.pack("!HH", self.number, self.total) + self.raw

    @classmethod
    def decode(cls, body: bytes, first_payload: int) -> EncryptedFragment:
        _at_least(body, 4, "SKF")
        number, total = struct.unpack_from("!HH", body)
        return cls(number, total, first_payload, body[4:])


@dataclass(frozen=True, slots=True)
class Unknown:
    """A payload of a type this codec does not know, kept (not critical) per §2.5."""

    payload_type: int
    critical: bool
    data: bytes

    def encode(self) -> bytes:
        return self.data


Payload = (
    Sa
    | Ke
    | Identification
    | Certificate
    | CertificateRequest
    | Authentication
    | Nonce
    | Notify
    | Delete
    | VendorId
    | TrafficSelectors
    | Encrypted
    | EncryptedFragment
    | Configuration
    | Eap
    | Unknown
)
Entry = tuple[int, Payload]  # (payload type, payload): IDi/IDr and TSi/TSr share classes

_DECODERS = {
    PayloadType.SA: Sa.decode,
    PayloadType.KE: Ke.decode,
    PayloadType.IDi: Identification.decode,
    PayloadType.IDr: Identification.decode,
    PayloadType.CERT: Certificate.decode,
    PayloadType.CERTREQ: CertificateRequest.decode,
    PayloadType.AUTH: Authentication.decode,
    PayloadType.NONCE: Nonce.decode,
    PayloadType.NOTIFY: Notify.decode,
    PayloadType.DELETE: Delete.decode,
    PayloadType.VENDOR: VendorId.decode,
    PayloadType.TSi: TrafficSelectors.decode,
    PayloadType.TSr: TrafficSelectors.decode,
    PayloadType.CP: Configuration.decode,
    PayloadType.EAP: Eap.decode,
}
_ENCRYPTED_DECODERS = {PayloadType.SK: Encrypted.decode, PayloadType.SKF: EncryptedFragment.decode}


# -- The payload chain and the message (RFC 7296 §2.5, §3.1, §3.2) ---------------------


def _decode_body(kind: int, next_payload: int, body: bytes) -> Payload:
    try:
        if kind in _ENCRYPTED_DECODERS:
            return _ENCRYPTED_DECODERS[kind](body, next_payload)
        return _DECODERS[kind](body)
    except IkeError as error:
        raise IkeError(error.notify, error.reason, kind) from None


def decode_payloads(first_type: int, data: bytes) -> list[Entry]:
    """Walk a payload chain starting with ``first_type`` that must tile ``data`` exactly.

    Unknown payloads are kept as :class:`Unknown` unless critical (§2.5); an Encrypted
    or Encrypted Fragment payload ends the chain and must end ``data``; its Next Payload
    field is the first inner payload's type (§3.14).
    """
    entries: list[Entry] = []
    kind, position = first_type, 0
    while kind != PayloadType.NONE:
        if position + GENERIC.size > len(data):
            raise _syntax("payload header overruns the message", kind)
        next_payload, flags, length = GENERIC.unpack_from(data, position)
        end = position + length
        if length < GENERIC.size or end > len(data):
            raise _syntax(f"payload Length {length} at offset {position}", kind)
        body = data[position + GENERIC.size : end]
        position = end
        if kind in _ENCRYPTED_DECODERS:
            if position != len(data):
                raise _syntax("octets follow the encrypted payload", kind)
            entries.append((PayloadType(kind), _decode_body(kind, next_payload, body)))
            return entries
        if kind in _DECODERS:
            entries.append((PayloadType(kind), _decode_body(kind, next_payload, body)))
        elif flags & CRITICAL:
            raise IkeError(
                NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD, f"critical payload {kind}", kind
            )
        else:
            entries.append((kind, Unknown(kind, False, body)))
        kind = next_payload
    if position != len(data):
        raise _syntax(f"{len(data) - position} octets after the last payload")
    return entries


def encode_payloads(entries: Sequence[Entry]) -> tuple[int, bytes]:
    """The chain for ``entries`` with Next Payload fields filled in, and the type of its
    first payload (for the header or an enclosing SK payload)."""
    out = []
    for index, (_, payload) in enumerate(entries):
        last = index == len(entries) - 1
        if isinstance(payload, Encrypted | EncryptedFragment):
            if not last:
                raise ValueError("an encrypted payload must be the last one")
            next_payload = payload.first_payload
        else:
            next_payload = PayloadType.NONE if last else entries[index + 1][0]
        flags = CRITICAL if isinstance(payload, Unknown) and payload.critical else 0
        body = payload.encode()
        out.append(GENERIC.pack(next_payload, flags, GENERIC.size + len(body)) + body)
    first = entries[0][0] if entries else PayloadType.NONE
    return first, b"".join(out)


@dataclass(frozen=True, slots=True)
class Message:
    """A decoded message: its header and its (payload type, payload) entries in order."""

    header: Header
    payloads: list[Entry]

    def get(self, payload_type: int) -> Payload | None:
        """The first payload of ``payload_type``, or None."""
        return next((p for kind, p in self.payloads if kind == payload_type), None)

    def all(self, payload_type: int) -> list[Payload]:
        """Every payload of ``payload_type``, in order."""
        return [p for kind, p in self.payloads if kind == payload_type]

    def notify(self, notify_type: int) -> Notify | None:
        """The first Notify payload of ``notify_type``, or None."""
        found = (p for p in self.all(PayloadType.NOTIFY) if p.notify_type == notify_type)
        return next(found, None)


def decode_message(data: bytes) -> Message:
    """Decode one datagram (without the non-ESP marker of port 4500, RFC 3948 §2.2).

    The major version must be 2 (§2.5: INVALID_MAJOR_VERSION otherwise; the minor
    version is ignored) and the header's Length must equal the datagram's length.
    """
    header = Header.decode(data)
    if header.major_version != 2:
        raise IkeError(NotifyType.INVALID_MAJOR_VERSION, f"version {header.version:#04x}")
    if header.length != len(data):
        raise _syntax(f"header Length {header.length} for {len(data)} octets")
    return Message(header, decode_payloads(header.next_payload, data[HEADER.size :]))


def encode_message(header: Header, entries: Sequence[Entry]) -> bytes:
    """The datagram for ``header`` and ``entries``; Next Payload and Length are set here."""
    first, body = encode_payloads(entries)
    header = replace(header, next_payload=first, length=HEADER.size + len(body))
    return header.encode() + body


def describe(message: Message) -> str:
    """``IKE_AUTH request 1 [ IDi N(INITIAL_CONTACT) SK ]``, like charon's and the ASA's
    protocol debug lines."""
    header = message.header
    names = []
    for kind, payload in message.payloads:
        if isinstance(payload, Notify):
            try:
                names.append(f"N({NotifyType(payload.notify_type).name})")
            except ValueError:
                names.append(f"N({payload.notify_type})")
        else:
            try:
                names.append(PayloadType(kind).name)
            except ValueError:
                names.append(str(kind))
    try:
        exchange = ExchangeType(header.exchange).name
    except ValueError:
        exchange = str(header.exchange)
    role = "response" if header.response else "request"
    return f"{exchange} {role} {header.message_id} [ {' '.join(names)} ]"
