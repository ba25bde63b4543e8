"""NETLINK_XFRM codec: netlink framing and the XFRM messages an IKE daemon needs (sans-IO).

Layouts are transcribed from the Linux UAPI headers ``linux/netlink.h`` and
``linux/xfrm.h`` for a 64-bit host (the 32-bit compat layout of ``xfrm_usersa_info``
differs; it is not supported). Integers are in host byte order except where the header
says ``__be``: SPIs, ports and addresses. Every struct here pads to its C ``sizeof``,
which the kernel checks (``xfrm_msg_min``, ``xfrma_policy``).

Messages are built as :class:`Request` (type, body, dump?) and read back from
:class:`NetlinkMessage` with :func:`decode`. Nothing here does I/O.
"""

from __future__ import annotations

import errno as errnos
import ipaddress
import os
import socket
import struct
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import astuple, dataclass, field
from enum import IntEnum, IntFlag
from typing import NamedTuple, TypeVar

from vpnaaa.ike.const import EncrId, IntegId

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

XFRM_INF = 2**64 - 1  # "no limit" in struct xfrm_lifetime_cfg
ANY4 = ipaddress.IPv4Network("0.0.0.0/0")
ZERO4 = ipaddress.IPv4Address(0)
T = TypeVar("T")

# --- netlink framing (linux/netlink.h) -------------------------------------------------

NLMSG_HDR = struct.Struct("=IHHII")  # struct nlmsghdr: len, type, flags, seq, pid
NLA_HDR = struct.Struct("=HH")  # struct nlattr: len, type


class NlmsgType(IntEnum):
    NOOP = 1
    ERROR = 2
    DONE = 3
    OVERRUN = 4


class NlmFlag(IntFlag):
    """nlmsg_flags. 0x100 and up mean different things for GET, NEW and ACK messages."""

    REQUEST = 0x01
    MULTI = 0x02
    ACK = 0x04
    ECHO = 0x08
    DUMP_INTR = 0x10
    DUMP_FILTERED = 0x20
    ROOT = 0x100  # GET
    MATCH = 0x200  # GET
    DUMP = 0x300  # GET: ROOT | MATCH
    CAPPED = 0x100  # in NLMSG_ERROR: the request's payload is not echoed
    ACK_TLVS = 0x200  # in NLMSG_ERROR / NLMSG_DONE: extended ACK attributes follow


class NlmsgErrAttr(IntEnum):
    """enum nlmsgerr_attrs: the extended ACK (NETLINK_EXT_ACK)."""

    MSG = 1
    OFFS = 2
    COOKIE = 3


def align4(n: int) -> int:
    """NLMSG_ALIGN / NLA_ALIGN."""
    return (n + 3) & ~3


@dataclass(frozen=True)
class NetlinkMessage:
    """One netlink message: struct nlmsghdr and its payload."""

    type: int
    flags: int
    seq: int
    pid: int
    body: bytes


def encode_message(type: int, flags: int, seq: int, body: bytes, pid: int = 0) -> bytes:
    """A message as the kernel reads it: ``nlmsg_len`` counts the unpadded payload."""
    return NLMSG_HDR.pack(NLMSG_HDR.size + len(body), type, flags, seq, pid) + body


def decode_messages(data: bytes) -> Iterator[NetlinkMessage]:
    """The messages in one datagram (NLMSG_OK / NLMSG_NEXT)."""
    offset = 0
    while offset + NLMSG_HDR.size <= len(data):
        length, type, flags, seq, pid = NLMSG_HDR.unpack_from(data, offset)
        if length < NLMSG_HDR.size or offset + length > len(data):
            raise ValueError(f"netlink message of {length} octets at {offset} in {len(data)}")
        yield NetlinkMessage(type, flags, seq, pid, data[offset + NLMSG_HDR.size : offset + length])
        offset += align4(length)


def encode_attrs(attrs: Iterable[tuple[int, bytes]]) -> bytes:
    """struct nlattr sequence, each padded to four octets."""
    out = bytearray()
    for type, value in attrs:
        out += NLA_HDR.pack(NLA_HDR.size + len(value), type) + value
        out += bytes(align4(len(out)) - len(out))
    return bytes(out)


def decode_attrs(data: bytes) -> dict[int, bytes]:
    """Attribute type (NLA_TYPE_MASK applied) to value; a repeated type keeps the last."""
    attrs: dict[int, bytes] = {}
    offset = 0
    while offset + NLA_HDR.size <= len(data):
        length, type = NLA_HDR.unpack_from(data, offset)
        if length < NLA_HDR.size or offset + length > len(data):
            raise ValueError(f"netlink attribute of {length} octets at {offset} in {len(data)}")
        attrs[type & 0x3FFF] = data[offset + NLA_HDR.size : offset + length]
        offset += align4(length)
    return attrs


class NetlinkError(OSError):
    """The kernel refused a request: its errno and, with NETLINK_EXT_ACK, its message."""

    def __init__(self, code: int, request: str = "", extack: str = "", offset: int | None = None):
        super().__init__(code, os.strerror(code))
        self.request = request
        self.extack = extack
        self.offset = offset

    def __str__(self) -> str:
        name = errnos.errorcode.get(self.errno, str(self.errno))
        text = f"{self.request}: " if self.request else ""
        text += f"{self.strerror} ({name})"
        return text + (f": {self.extack}" if self.extack else "")


def decode_ack(message: NetlinkMessage) -> tuple[int, str, int | None]:
    """(errno, extended ACK message, offset of the bad attribute) of an NLMSG_ERROR (struct
    nlmsgerr: int error, the request's header and, unless NLM_F_CAPPED, its payload) or of an
    NLMSG_DONE (int error). errno is 0 for an ACK."""
    (error,) = struct.unpack_from("=i", message.body)
    tlvs = 4
    if message.type == NlmsgType.ERROR:
        tlvs += NLMSG_HDR.size
        if not message.flags & NlmFlag.CAPPED:
            (echoed,) = struct.unpack_from("=I", message.body, 4)
            tlvs += align4(echoed) - NLMSG_HDR.size
    text, offset = "", None
    if message.flags & NlmFlag.ACK_TLVS:
        attrs = decode_attrs(message.body[tlvs:])
        text = attrs.get(NlmsgErrAttr.MSG, b"").rstrip(b"\0").decode(errors="replace")
        if NlmsgErrAttr.OFFS in attrs:
            (offset,) = struct.unpack("=I", attrs[NlmsgErrAttr.OFFS])
    return -error, text, offset


# --- XFRM constants (linux/xfrm.h) ------------------------------------------------------


class MsgType(IntEnum):
    NEWSA = 0x10
    DELSA = 0x11
    GETSA = 0x12
    NEWPOLICY = 0x13
    DELPOLICY = 0x14
    GETPOLICY = 0x15
    ALLOCSPI = 0x16
    ACQUIRE = 0x17
    EXPIRE = 0x18
    UPDPOLICY = 0x19
    UPDSA = 0x1A
    POLEXPIRE = 0x1B
    FLUSHSA = 0x1C
    FLUSHPOLICY = 0x1D
    NEWAE = 0x1E
    GETAE = 0x1F
    REPORT = 0x20
    MIGRATE = 0x21
    MAPPING = 0x26


class Attr(IntEnum):
    """enum xfrm_attr_type_t (XFRMA_*)."""

    ALG_AUTH = 1
    ALG_CRYPT = 2
    ALG_COMP = 3
    ENCAP = 4
    TMPL = 5
    SA = 6
    POLICY = 7
    SEC_CTX = 8
    LTIME_VAL = 9
    REPLAY_VAL = 10
    REPLAY_THRESH = 11
    ETIMER_THRESH = 12
    SRCADDR = 13
    COADDR = 14
    LASTUSED = 15
    POLICY_TYPE = 16
    MIGRATE = 17
    ALG_AEAD = 18
    KMADDRESS = 19
    ALG_AUTH_TRUNC = 20
    MARK = 21
    TFCPAD = 22
    REPLAY_ESN_VAL = 23
    SA_EXTRA_FLAGS = 24
    PROTO = 25
    ADDRESS_FILTER = 26
    PAD = 27
    OFFLOAD_DEV = 28
    SET_MARK = 29
    SET_MARK_MASK = 30
    IF_ID = 31
    MTIMER_THRESH = 32


class Group(IntEnum):
    """enum xfrm_nlgroups: multicast groups (NETLINK_ADD_MEMBERSHIP takes these numbers)."""

    ACQUIRE = 1
    EXPIRE = 2
    SA = 3
    POLICY = 4
    AEVENTS = 5
    REPORT = 6
    MIGRATE = 7
    MAPPING = 8


class Proto(IntEnum):
    """xfrm_id.proto: IP protocol numbers; IPSEC_PROTO_ANY for a flush of all."""

    ESP = 50
    AH = 51
    COMP = 108
    ANY = 255


class Mode(IntEnum):
    TRANSPORT = 0
    TUNNEL = 1
    ROUTEOPTIMIZATION = 2
    IN_TRIGGER = 3
    BEET = 4


class Dir(IntEnum):
    """Policy directions; a dump reports per-socket policies as 3 + IN / 3 + OUT."""

    IN = 0
    OUT = 1
    FWD = 2


class Action(IntEnum):
    ALLOW = 0
    BLOCK = 1


class SaFlag(IntFlag):
    """xfrm_usersa_info.flags (XFRM_STATE_*)."""

    NOECN = 1
    DECAP_DSCP = 2
    NOPMTUDISC = 4
    WILDRECV = 8
    ICMP = 16
    AF_UNSPEC = 32
    ALIGN4 = 64
    ESN = 128


class SaExtraFlag(IntFlag):
    """XFRMA_SA_EXTRA_FLAGS (XFRM_SA_XFLAG_*)."""

    DONT_ENCAP_DSCP = 1
    OSEQ_MAY_WRAP = 2


class EncapType(IntEnum):
    """xfrm_encap_tmpl.encap_type: the UDP_ENCAP_* of linux/udp.h (RFC 3948)."""

    ESPINUDP_NON_IKE = 1
    ESPINUDP = 2


# --- struct helpers ---------------------------------------------------------------------


def _addr(address: Address) -> bytes:
    """xfrm_address_t: 16 octets, an IPv4 address in the first four."""
    return address.packed.ljust(16, b"\0")


def _parse_addr(raw: bytes, family: int) -> Address:
    if family == socket.AF_INET6:
        return ipaddress.IPv6Address(raw[:16])
    return ipaddress.IPv4Address(raw[:4])


def family_of(address: Address | Network) -> int:
    return int(socket.AF_INET6 if address.version == 6 else socket.AF_INET)


def _be16(value: int) -> int:
    """A __be16 to pack with a host-order format."""
    return int.from_bytes(value.to_bytes(2, "big"), sys.byteorder)


def _c_string(name: str, size: int = 64) -> bytes:
    raw = name.encode()
    if len(raw) >= size:
        raise ValueError(f"algorithm name {name!r} longer than {size - 1} octets")
    return raw.ljust(size, b"\0")


def _parse_c_string(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode()


# --- structs ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Selector:
    """struct xfrm_selector (56 octets). Ports and masks are in host order here.

    ``family`` 0 with zero addresses is the empty selector an SA may carry: the kernel then
    fills in the SA's family (``xfrm_state_construct``)."""

    daddr: Network = ANY4
    saddr: Network = ANY4
    dport: int = 0
    dport_mask: int = 0
    sport: int = 0
    sport_mask: int = 0
    proto: int = 0
    family: int = 0
    ifindex: int = 0
    user: int = 0

    _TAIL = struct.Struct("=HHHHHBBB3xiI")
    SIZE = 56

    @classmethod
    def between(
        cls,
        saddr: Network,
        daddr: Network,
        proto: int = 0,
        sport: tuple[int, int] = (0, 0),
        dport: tuple[int, int] = (0, 0),
    ) -> Selector:
        """The selector of traffic from ``saddr`` to ``daddr``; ports as (port, mask)."""
        return cls(daddr, saddr, dport[0], dport[1], sport[0], sport[1], proto, family_of(daddr))

    def encode(self) -> bytes:
        return (
            _addr(self.daddr.network_address)
            + _addr(self.saddr.network_address)
            + self._TAIL.pack(
                _be16(self.dport),
                _be16(self.dport_mask),
                _be16(self.sport),
                _be16(self.sport_mask),
                self.family,
                self.daddr.prefixlen,
                self.saddr.prefixlen,
                self.proto,
                self.ifindex,
                self.user,
            )
        )

    @classmethod
    def decode(cls, data: bytes) -> Selector:
        dport, dmask, sport, smask, family, plen_d, plen_s, proto, ifindex, user = (
            cls._TAIL.unpack_from(data, 32)
        )
        daddr, saddr = _parse_addr(data[0:16], family), _parse_addr(data[16:32], family)
        return cls(
            ipaddress.ip_network((daddr, plen_d), strict=False),
            ipaddress.ip_network((saddr, plen_s), strict=False),
            _be16(dport),
            _be16(dmask),
            _be16(sport),
            _be16(smask),
            proto,
            family,
            ifindex,
            user,
        )


@dataclass(frozen=True)
class Lifetime:
    """struct xfrm_lifetime_cfg (64 octets): limits; XFRM_INF for none, 0 s for none."""

    soft_bytes: int = XFRM_INF
    hard_bytes: int = XFRM_INF
    soft_packets: int = XFRM_INF
    hard_packets: int = XFRM_INF
    soft_add_expires: int = 0
    hard_add_expires: int = 0
    soft_use_expires: int = 0
    hard_use_expires: int = 0

    FORMAT = struct.Struct("=8Q")

    def encode(self) -> bytes:
        return self.FORMAT.pack(*astuple(self))

    @classmethod
    def decode(cls, data: bytes) -> Lifetime:
        return cls(*cls.FORMAT.unpack_from(data))


ZERO_LIFETIME = Lifetime(0, 0, 0, 0)  # what ALLOCSPI's embedded usersa_info carries


@dataclass(frozen=True)
class LifetimeCurrent:
    """struct xfrm_lifetime_cur (32 octets): what an SA or policy has used."""

    bytes: int = 0
    packets: int = 0
    add_time: int = 0
    use_time: int = 0

    FORMAT = struct.Struct("=4Q")

    def encode(self) -> bytes:
        return self.FORMAT.pack(*astuple(self))

    @classmethod
    def decode(cls, data: bytes) -> LifetimeCurrent:
        return cls(*cls.FORMAT.unpack_from(data))


@dataclass(frozen=True)
class Stats:
    """struct xfrm_stats (12 octets): replay window and error counters of an SA."""

    replay_window: int = 0
    replay: int = 0
    integrity_failed: int = 0

    FORMAT = struct.Struct("=3I")

    def encode(self) -> bytes:
        return self.FORMAT.pack(*astuple(self))

    @classmethod
    def decode(cls, data: bytes) -> Stats:
        return cls(*cls.FORMAT.unpack_from(data))


@dataclass(frozen=True)
class SaInfo:
    """struct xfrm_usersa_info (224 octets): sel, id (daddr, spi, proto), saddr, lft,
    curlft, stats, seq, reqid, family, mode, replay_window, flags."""

    daddr: Address
    saddr: Address
    spi: int
    proto: int = Proto.ESP
    reqid: int = 0
    mode: int = Mode.TUNNEL
    replay_window: int = 0
    flags: int = 0
    selector: Selector = Selector()
    lifetime: Lifetime = Lifetime()
    current: LifetimeCurrent = LifetimeCurrent()
    stats: Stats = Stats()
    seq: int = 0

    _TAIL = struct.Struct("=IIHBBB7x")
    SIZE = 224

    @property
    def family(self) -> int:
        return family_of(self.daddr)

    def encode(self) -> bytes:
        return (
            self.selector.encode()
            + _addr(self.daddr)
            + struct.pack("!I", self.spi)
            + struct.pack("=B3x", self.proto)
            + _addr(self.saddr)
            + self.lifetime.encode()
            + self.current.encode()
            + self.stats.encode()
            + self._TAIL.pack(
                self.seq, self.reqid, self.family, self.mode, self.replay_window, self.flags
            )
        )

    @classmethod
    def decode(cls, data: bytes) -> SaInfo:
        seq, reqid, family, mode, window, flags = cls._TAIL.unpack_from(data, 204)
        return cls(
            daddr=_parse_addr(data[56:72], family),
            saddr=_parse_addr(data[80:96], family),
            spi=struct.unpack_from("!I", data, 72)[0],
            proto=data[76],
            reqid=reqid,
            mode=mode,
            replay_window=window,
            flags=flags,
            selector=Selector.decode(data[0:56]),
            lifetime=Lifetime.decode(data[96:160]),
            current=LifetimeCurrent.decode(data[160:192]),
            stats=Stats.decode(data[192:204]),
            seq=seq,
        )


@dataclass(frozen=True)
class SaId:
    """struct xfrm_usersa_id (24 octets): daddr, spi, family, proto — an SA's key."""

    daddr: Address
    spi: int
    proto: int = Proto.ESP

    SIZE = 24

    def encode(self) -> bytes:
        return (
            _addr(self.daddr)
            + struct.pack("!I", self.spi)
            + struct.pack("=HBx", family_of(self.daddr), self.proto)
        )

    @classmethod
    def decode(cls, data: bytes) -> SaId:
        family, proto = struct.unpack_from("=HB", data, 20)
        return cls(_parse_addr(data[:16], family), struct.unpack_from("!I", data, 16)[0], proto)


@dataclass(frozen=True)
class PolicyInfo:
    """struct xfrm_userpolicy_info (168 octets)."""

    selector: Selector
    dir: int
    action: int = Action.ALLOW
    priority: int = 0
    index: int = 0
    flags: int = 0
    share: int = 0
    lifetime: Lifetime = Lifetime()
    current: LifetimeCurrent = LifetimeCurrent()

    _TAIL = struct.Struct("=IIBBBB4x")
    SIZE = 168

    def encode(self) -> bytes:
        return (
            self.selector.encode()
            + self.lifetime.encode()
            + self.current.encode()
            + self._TAIL.pack(
                self.priority, self.index, self.dir, self.action, self.flags, self.share
            )
        )

    @classmethod
    def decode(cls, data: bytes) -> PolicyInfo:
        priority, index, dir, action, flags, share = cls._TAIL.unpack_from(data, 152)
        return cls(
            selector=Selector.decode(data[0:56]),
            dir=dir,
            action=action,
            priority=priority,
            index=index,
            flags=flags,
            share=share,
            lifetime=Lifetime.decode(data[56:120]),
            current=LifetimeCurrent.decode(data[120:152]),
        )


@dataclass(frozen=True)
class PolicyId:
    """struct xfrm_userpolicy_id (64 octets): a policy by selector and dir, or by index."""

    selector: Selector
    dir: int
    index: int = 0

    def encode(self) -> bytes:
        return self.selector.encode() + struct.pack("=IB3x", self.index, self.dir)


@dataclass(frozen=True)
class Template:
    """struct xfrm_user_tmpl (64 octets): the SA a policy requires (RFC 4301 §4.4.2)."""

    daddr: Address
    saddr: Address
    reqid: int
    proto: int = Proto.ESP
    mode: int = Mode.TUNNEL
    spi: int = 0
    share: int = 0
    optional: int = 0
    aalgos: int = 0xFFFFFFFF
    ealgos: int = 0xFFFFFFFF
    calgos: int = 0xFFFFFFFF

    _TAIL = struct.Struct("=IBBBxIII")
    SIZE = 64

    def encode(self) -> bytes:
        return (
            _addr(self.daddr)
            + struct.pack("!I", self.spi)
            + struct.pack("=B3xH2x", self.proto, family_of(self.daddr))
            + _addr(self.saddr)
            + self._TAIL.pack(
                self.reqid,
                self.mode,
                self.share,
                self.optional,
                self.aalgos,
                self.ealgos,
                self.calgos,
            )
        )

    @classmethod
    def decode(cls, data: bytes) -> Template:
        (family,) = struct.unpack_from("=H", data, 24)
        reqid, mode, share, optional, aalgos, ealgos, calgos = cls._TAIL.unpack_from(data, 44)
        return cls(
            daddr=_parse_addr(data[0:16], family),
            saddr=_parse_addr(data[28:44], family),
            reqid=reqid,
            proto=data[20],
            mode=mode,
            spi=struct.unpack_from("!I", data, 16)[0],
            share=share,
            optional=optional,
            aalgos=aalgos,
            ealgos=ealgos,
            calgos=calgos,
        )


@dataclass(frozen=True)
class Encap:
    """struct xfrm_encap_tmpl (24 octets): ESP in UDP (RFC 3948) with the SA's ports."""

    sport: int
    dport: int
    type: int = EncapType.ESPINUDP
    original_address: Address = ZERO4  # NAT-OA, for transport-mode checksums only

    def encode(self) -> bytes:
        return (
            struct.pack("=H", self.type)
            + struct.pack("!HH2x", self.sport, self.dport)
            + _addr(self.original_address)
        )

    @classmethod
    def decode(cls, data: bytes) -> Encap:
        (type,) = struct.unpack_from("=H", data)
        sport, dport = struct.unpack_from("!HH", data, 2)
        return cls(sport, dport, type, ipaddress.IPv4Address(data[8:12]))


@dataclass(frozen=True)
class Algo:
    """struct xfrm_algo: a cipher name and key (XFRMA_ALG_CRYPT)."""

    name: str
    key: bytes = field(repr=False)

    def encode(self) -> bytes:
        return _c_string(self.name) + struct.pack("=I", len(self.key) * 8) + self.key

    @classmethod
    def decode(cls, data: bytes) -> Algo:
        (bits,) = struct.unpack_from("=I", data, 64)
        return cls(_parse_c_string(data[:64]), data[68 : 68 + bits // 8])


@dataclass(frozen=True)
class AlgoAuth:
    """struct xfrm_algo_auth: an integrity algorithm with its ICV length in bits
    (XFRMA_ALG_AUTH_TRUNC; RFC 4303 §2.8)."""

    name: str
    key: bytes = field(repr=False)
    trunc_bits: int

    def encode(self) -> bytes:
        return (
            _c_string(self.name) + struct.pack("=II", len(self.key) * 8, self.trunc_bits) + self.key
        )

    @classmethod
    def decode(cls, data: bytes) -> AlgoAuth:
        bits, trunc = struct.unpack_from("=II", data, 64)
        return cls(_parse_c_string(data[:64]), data[72 : 72 + bits // 8], trunc)


@dataclass(frozen=True)
class AlgoAead:
    """struct xfrm_algo_aead: combined-mode cipher, key | salt, ICV length in bits
    (XFRMA_ALG_AEAD; RFC 4106 §8.1, RFC 7634 §2)."""

    name: str
    key: bytes = field(repr=False)
    icv_bits: int

    def encode(self) -> bytes:
        return (
            _c_string(self.name) + struct.pack("=II", len(self.key) * 8, self.icv_bits) + self.key
        )

    @classmethod
    def decode(cls, data: bytes) -> AlgoAead:
        bits, icv = struct.unpack_from("=II", data, 64)
        return cls(_parse_c_string(data[:64]), data[72 : 72 + bits // 8], icv)


@dataclass(frozen=True)
class ReplayEsn:
    """struct xfrm_replay_state_esn (XFRMA_REPLAY_ESN_VAL): a replay window of any size
    and the high sequence-number halves of ESN (RFC 4303 §2.2.1, §3.4.3).

    On NEWSA the kernel accepts the header alone and allocates the bitmap itself
    (``verify_replay``); it reports the bitmap back."""

    replay_window: int
    oseq: int = 0
    seq: int = 0
    oseq_hi: int = 0
    seq_hi: int = 0
    bmp: tuple[int, ...] = ()

    FORMAT = struct.Struct("=6I")

    @property
    def bmp_len(self) -> int:
        """32-bit words the window needs."""
        return (self.replay_window + 31) // 32

    def encode(self) -> bytes:
        head = self.FORMAT.pack(
            self.bmp_len, self.oseq, self.seq, self.oseq_hi, self.seq_hi, self.replay_window
        )
        return head + struct.pack(f"={len(self.bmp)}I", *self.bmp)

    @classmethod
    def decode(cls, data: bytes) -> ReplayEsn:
        bmp_len, oseq, seq, oseq_hi, seq_hi, window = cls.FORMAT.unpack_from(data)
        words = min(bmp_len, (len(data) - cls.FORMAT.size) // 4)
        return cls(window, oseq, seq, oseq_hi, seq_hi, struct.unpack_from(f"={words}I", data, 24))


@dataclass(frozen=True)
class ReplayState:
    """struct xfrm_replay_state (XFRMA_REPLAY_VAL): the legacy 32-packet window."""

    oseq: int
    seq: int
    bitmap: int

    @classmethod
    def decode(cls, data: bytes) -> ReplayState:
        return cls(*struct.unpack_from("=3I", data))


@dataclass(frozen=True)
class Mark:
    """struct xfrm_mark (XFRMA_MARK): the SA or policy applies to skb->mark & m == v."""

    value: int
    mask: int = 0xFFFFFFFF

    def encode(self) -> bytes:
        return struct.pack("=II", self.value, self.mask)

    @classmethod
    def decode(cls, data: bytes) -> Mark:
        return cls(*struct.unpack_from("=II", data))


def _u32(value: int) -> bytes:
    return struct.pack("=I", value)


def _parse_u32(raw: bytes) -> int:
    return int(struct.unpack_from("=I", raw)[0])


def _parse_u64(raw: bytes) -> int:
    return int(struct.unpack_from("=Q", raw)[0])


# --- messages -----------------------------------------------------------------------------


class Request(NamedTuple):
    """What to send: the netlink layer adds the header (REQUEST | ACK, or | DUMP)."""

    type: int
    body: bytes
    dump: bool = False


@dataclass(frozen=True)
class Sa:
    """An SA as NEWSA / UPDSA carry it and as GETSA, dumps and EXPIRE report it:
    struct xfrm_usersa_info followed by attributes."""

    info: SaInfo
    crypt: Algo | None = None
    auth: AlgoAuth | None = None
    aead: AlgoAead | None = None
    encap: Encap | None = None
    replay_esn: ReplayEsn | None = None
    extra_flags: int = 0
    mark: Mark | None = None
    if_id: int = 0
    # reported by the kernel only
    replay: ReplayState | None = None
    last_used: int = 0

    def encode(self) -> bytes:
        """The body of NEWSA / UPDSA, attributes in iproute2's order."""
        attrs: list[tuple[int, bytes]] = []
        if self.aead is not None:
            attrs.append((Attr.ALG_AEAD, self.aead.encode()))
        if self.crypt is not None:
            attrs.append((Attr.ALG_CRYPT, self.crypt.encode()))
        if self.auth is not None:
            attrs.append((Attr.ALG_AUTH_TRUNC, self.auth.encode()))
        if self.encap is not None:
            attrs.append((Attr.ENCAP, self.encap.encode()))
        if self.replay_esn is not None:
            attrs.append((Attr.REPLAY_ESN_VAL, self.replay_esn.encode()))
        if self.extra_flags:
            attrs.append((Attr.SA_EXTRA_FLAGS, _u32(self.extra_flags)))
        if self.mark is not None:
            attrs.append((Attr.MARK, self.mark.encode()))
        if self.if_id:
            attrs.append((Attr.IF_ID, _u32(self.if_id)))
        return self.info.encode() + encode_attrs(attrs)

    @classmethod
    def decode(cls, body: bytes, attrs_at: int = SaInfo.SIZE) -> Sa:
        """An SA from a NEWSA body (or an EXPIRE body, whose attributes start later)."""
        attrs = decode_attrs(body[attrs_at:])

        def get(attr: Attr, parse: Callable[[bytes], T]) -> T | None:
            return parse(attrs[attr]) if attr in attrs else None

        return cls(
            info=SaInfo.decode(body),
            crypt=get(Attr.ALG_CRYPT, Algo.decode),
            auth=get(Attr.ALG_AUTH_TRUNC, AlgoAuth.decode),
            aead=get(Attr.ALG_AEAD, AlgoAead.decode),
            encap=get(Attr.ENCAP, Encap.decode),
            replay_esn=get(Attr.REPLAY_ESN_VAL, ReplayEsn.decode),
            extra_flags=get(Attr.SA_EXTRA_FLAGS, _parse_u32) or 0,
            mark=get(Attr.MARK, Mark.decode),
            if_id=get(Attr.IF_ID, _parse_u32) or 0,
            replay=get(Attr.REPLAY_VAL, ReplayState.decode),
            last_used=get(Attr.LASTUSED, _parse_u64) or 0,
        )


@dataclass(frozen=True)
class Policy:
    """A policy as NEWPOLICY / UPDPOLICY carry it and GETPOLICY and dumps report it:
    struct xfrm_userpolicy_info, then XFRMA_TMPL (struct xfrm_user_tmpl[]) and more."""

    info: PolicyInfo
    templates: tuple[Template, ...] = ()
    mark: Mark | None = None
    if_id: int = 0

    def encode(self) -> bytes:
        attrs: list[tuple[int, bytes]] = []
        if self.templates:
            attrs.append((Attr.TMPL, b"".join(t.encode() for t in self.templates)))
        attrs += _mark_if_id(self.mark, self.if_id)
        return self.info.encode() + encode_attrs(attrs)

    @classmethod
    def decode(cls, body: bytes) -> Policy:
        attrs = decode_attrs(body[PolicyInfo.SIZE :])
        return cls(
            info=PolicyInfo.decode(body),
            templates=_templates(attrs.get(Attr.TMPL, b"")),
            mark=Mark.decode(attrs[Attr.MARK]) if Attr.MARK in attrs else None,
            if_id=_parse_u32(attrs[Attr.IF_ID]) if Attr.IF_ID in attrs else 0,
        )


def _templates(raw: bytes) -> tuple[Template, ...]:
    size = Template.SIZE
    return tuple(Template.decode(raw[i : i + size]) for i in range(0, len(raw) - size + 1, size))


@dataclass(frozen=True)
class Expire:
    """XFRM_MSG_EXPIRE (struct xfrm_user_expire): an SA reached a soft or hard limit
    (group XFRMNLGRP_EXPIRE). After a hard expiry the kernel has deleted it."""

    sa: Sa
    hard: bool


@dataclass(frozen=True)
class Acquire:
    """XFRM_MSG_ACQUIRE (struct xfrm_user_acquire): traffic matched an outbound policy
    with no SA (group XFRMNLGRP_ACQUIRE)."""

    daddr: Address
    saddr: Address
    proto: int
    selector: Selector
    policy: PolicyInfo
    templates: tuple[Template, ...]
    seq: int


@dataclass(frozen=True)
class SaDeleted:
    """XFRM_MSG_DELSA notification (group XFRMNLGRP_SA): struct xfrm_usersa_id."""

    id: SaId


Decoded = Sa | Policy | Expire | Acquire | SaDeleted


def decode(message: NetlinkMessage) -> Decoded | None:
    """The XFRM message in ``message``, or None for types this module does not read."""
    t, body = message.type, message.body
    if t in (MsgType.NEWSA, MsgType.UPDSA):
        return Sa.decode(body)
    if t in (MsgType.NEWPOLICY, MsgType.UPDPOLICY):
        return Policy.decode(body)
    if t == MsgType.EXPIRE:
        return Expire(Sa.decode(body, attrs_at=232), bool(body[SaInfo.SIZE]))
    if t == MsgType.ACQUIRE:
        selector = Selector.decode(body[40:96])
        templates = _templates(decode_attrs(body[280:]).get(Attr.TMPL, b""))
        family = family_of(templates[0].daddr) if templates else selector.family
        return Acquire(
            daddr=_parse_addr(body[0:16], family),
            saddr=_parse_addr(body[24:40], family),
            proto=body[20],
            selector=selector,
            policy=PolicyInfo.decode(body[96:264]),
            templates=templates,
            seq=_parse_u32(body[276:280]),
        )
    if t == MsgType.DELSA:
        return SaDeleted(SaId.decode(body))
    return None


def _mark_if_id(mark: Mark | None, if_id: int) -> list[tuple[int, bytes]]:
    attrs: list[tuple[int, bytes]] = []
    if mark is not None:
        attrs.append((Attr.MARK, mark.encode()))
    if if_id:
        attrs.append((Attr.IF_ID, _u32(if_id)))
    return attrs


def new_sa(sa: Sa, update: bool = False) -> Request:
    """XFRM_MSG_NEWSA (EEXIST if present) or XFRM_MSG_UPDSA (replaces, e.g. a larval SA
    from ALLOCSPI)."""
    return Request(MsgType.UPDSA if update else MsgType.NEWSA, sa.encode())


def _sa_id(id: SaId, saddr: Address | None, mark: Mark | None) -> bytes:
    attrs = [] if saddr is None else [(Attr.SRCADDR, _addr(saddr))]
    return id.encode() + encode_attrs(attrs + _mark_if_id(mark, 0))


def del_sa(id: SaId, saddr: Address | None = None, mark: Mark | None = None) -> Request:
    """XFRM_MSG_DELSA: struct xfrm_usersa_id [, XFRMA_SRCADDR, XFRMA_MARK]."""
    return Request(MsgType.DELSA, _sa_id(id, saddr, mark))


def get_sa(id: SaId, saddr: Address | None = None, mark: Mark | None = None) -> Request:
    """XFRM_MSG_GETSA: the reply is a NEWSA with lifetime current and stats."""
    return Request(MsgType.GETSA, _sa_id(id, saddr, mark))


def dump_sa(proto: int | None = None) -> Request:
    """XFRM_MSG_GETSA with NLM_F_DUMP, optionally one protocol (XFRMA_PROTO)."""
    return Request(
        MsgType.GETSA, encode_attrs([] if proto is None else [(Attr.PROTO, bytes([proto]))]), True
    )


def alloc_spi(
    saddr: Address,
    daddr: Address,
    reqid: int = 0,
    proto: int = Proto.ESP,
    mode: int = Mode.TUNNEL,
    spi_min: int = 0x100,
    spi_max: int = 0xFFFFFFFF,
    mark: Mark | None = None,
) -> Request:
    """XFRM_MSG_ALLOCSPI (struct xfrm_userspi_info): the kernel creates a larval SA with a
    free SPI in [min, max] and answers with it (a NEWSA). SPIs 1-255 are reserved
    (RFC 4303 §2.1); the larval SA expires after net.core.xfrm_acq_expires seconds."""
    info = SaInfo(daddr, saddr, 0, proto, reqid, mode, lifetime=ZERO_LIFETIME)
    body = info.encode() + struct.pack("=II", spi_min, spi_max)
    return Request(MsgType.ALLOCSPI, body + encode_attrs(_mark_if_id(mark, 0)))


def flush_sa(proto: int = Proto.ANY) -> Request:
    """XFRM_MSG_FLUSHSA (struct xfrm_usersa_flush): the kernel scopes it by protocol
    only; flushing by reqid or mark is a dump and DELSAs (see the installer)."""
    return Request(MsgType.FLUSHSA, bytes([proto]))


def new_policy(policy: Policy, update: bool = False) -> Request:
    """XFRM_MSG_NEWPOLICY (EEXIST if present) or XFRM_MSG_UPDPOLICY (create or replace)."""
    return Request(MsgType.UPDPOLICY if update else MsgType.NEWPOLICY, policy.encode())


def _policy_id(id: PolicyId, mark: Mark | None, if_id: int) -> bytes:
    return id.encode() + encode_attrs(_mark_if_id(mark, if_id))


def del_policy(id: PolicyId, mark: Mark | None = None, if_id: int = 0) -> Request:
    """XFRM_MSG_DELPOLICY: struct xfrm_userpolicy_id [, XFRMA_MARK, XFRMA_IF_ID]."""
    return Request(MsgType.DELPOLICY, _policy_id(id, mark, if_id))


def get_policy(id: PolicyId, mark: Mark | None = None, if_id: int = 0) -> Request:
    return Request(MsgType.GETPOLICY, _policy_id(id, mark, if_id))


def dump_policy() -> Request:
    return Request(MsgType.GETPOLICY, b"", True)


def flush_policy() -> Request:
    """XFRM_MSG_FLUSHPOLICY of the main policy type."""
    return Request(MsgType.FLUSHPOLICY, b"")


def socket_policy(dir: Dir, family: int = socket.AF_INET) -> bytes:
    """The struct xfrm_userpolicy_info for setsockopt(IP_XFRM_POLICY / IPV6_XFRM_POLICY):
    an ALLOW policy without templates exempts that socket's traffic from IPsec in ``dir``
    (how IKE daemons keep IKE and NAT-T keepalives in clear under a catch-all policy)."""
    any_net = ANY4 if family == socket.AF_INET else ipaddress.IPv6Network("::/0")
    selector = Selector(any_net, any_net, family=family)
    return PolicyInfo(selector, dir, Action.ALLOW).encode()


# --- IKEv2 transform IDs to kernel algorithms ---------------------------------------------


@dataclass(frozen=True)
class _Cipher:
    name: str
    key_bits: tuple[int, ...]  # allowed Key Length attributes; () for a fixed key
    fixed_bits: int = 0
    salt: int = 0  # octets of salt / nonce after the key in the keying material
    icv_bits: int = 0  # AEAD only


_AES = (128, 192, 256)
_GCM = "rfc4106(gcm(aes))"
CIPHERS: dict[int, _Cipher] = {
    EncrId.DES3: _Cipher("cbc(des3_ede)", (), 192),  # RFC 2451
    EncrId.NULL: _Cipher("ecb(cipher_null)", (), 0),  # RFC 2410
    EncrId.AES_CBC: _Cipher("cbc(aes)", _AES),  # RFC 3602
    EncrId.AES_CTR: _Cipher("rfc3686(ctr(aes))", _AES, salt=4),  # RFC 3686 §5.1, RFC 5930
    EncrId.AES_GCM_8: _Cipher(_GCM, _AES, salt=4, icv_bits=64),  # RFC 4106 §8.1
    EncrId.AES_GCM_12: _Cipher(_GCM, _AES, salt=4, icv_bits=96),
    EncrId.AES_GCM_16: _Cipher(_GCM, _AES, salt=4, icv_bits=128),
    EncrId.CHACHA20_POLY1305: _Cipher("rfc7539esp(chacha20,poly1305)", (), 256, 4, 128),  # RFC 7634
}

# name, key bits, ICV bits (RFC 2403, RFC 2404, RFC 3566, RFC 4868 §2.1)
INTEGRITY: dict[int, tuple[str, int, int]] = {
    IntegId.HMAC_MD5_96: ("hmac(md5)", 128, 96),
    IntegId.HMAC_SHA1_96: ("hmac(sha1)", 160, 96),
    IntegId.AES_XCBC_96: ("xcbc(aes)", 128, 96),
    IntegId.HMAC_SHA2_256_128: ("hmac(sha256)", 256, 128),
    IntegId.HMAC_SHA2_384_192: ("hmac(sha384)", 384, 192),
    IntegId.HMAC_SHA2_512_256: ("hmac(sha512)", 512, 256),
}


class UnsupportedAlgorithm(ValueError):
    """An IKE transform with no kernel algorithm here, or keying material of the wrong size."""


@dataclass(frozen=True)
class EspAlgorithms:
    crypt: Algo | None = None
    auth: AlgoAuth | None = None
    aead: AlgoAead | None = None


def esp_algorithms(
    encr_id: int,
    encr_key_bits: int | None,
    integ_id: int | None,
    encr_key: bytes,
    integ_key: bytes,
) -> EspAlgorithms:
    """The kernel algorithms for a negotiated ESP proposal and one direction's KEYMAT.

    AEAD ciphers and AES-CTR take key | salt, the salt being the last four octets of their
    KEYMAT (RFC 4106 §8.1, RFC 3686 §5.1, RFC 7634 §2); the kernel's key length counts it.
    """
    cipher = CIPHERS.get(encr_id)
    if cipher is None:
        raise UnsupportedAlgorithm(f"ENCR {encr_id} has no kernel algorithm here")
    if cipher.key_bits:
        if encr_key_bits not in cipher.key_bits:
            raise UnsupportedAlgorithm(f"{cipher.name}: key length {encr_key_bits}")
        bits = encr_key_bits
    else:
        if encr_key_bits is not None and encr_key_bits != cipher.fixed_bits:
            raise UnsupportedAlgorithm(f"{cipher.name}: key length {encr_key_bits}")
        bits = cipher.fixed_bits
    if len(encr_key) * 8 != bits + cipher.salt * 8:
        raise UnsupportedAlgorithm(
            f"{cipher.name}: {len(encr_key)}-octet key, expected {bits // 8} + {cipher.salt}"
        )
    if cipher.icv_bits:
        if integ_id not in (None, IntegId.NONE):
            raise UnsupportedAlgorithm(f"{cipher.name} is AEAD: INTEG {integ_id} not allowed")
        return EspAlgorithms(aead=AlgoAead(cipher.name, encr_key, cipher.icv_bits))
    auth = None
    if integ_id not in (None, IntegId.NONE):
        if integ_id not in INTEGRITY:
            raise UnsupportedAlgorithm(f"INTEG {integ_id} has no kernel algorithm here")
        name, key_bits, trunc = INTEGRITY[integ_id]
        if len(integ_key) * 8 != key_bits:
            raise UnsupportedAlgorithm(f"{name}: {len(integ_key)}-octet key")
        auth = AlgoAuth(name, integ_key, trunc)
    return EspAlgorithms(crypt=Algo(cipher.name, encr_key), auth=auth)
