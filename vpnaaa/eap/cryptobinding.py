"""PEAP cryptobinding ([MS-PEAP] §3.1.5.5-3.1.5.7): binding the inner method to the tunnel.

    TK         = Key_Material[0:60], first 40 octets used; Key_Material is
                 TLS-PRF(master, "client EAP encryption", randoms) in TLS 1.2 and
                 TLS-Exporter("EXPORTER_EAP_TLS_Key_Material", 0x19, 128) in TLS 1.3
                 (RFC 9427 §2.5; the derivations below are unchanged there)
    ISK        = the inner method's MSK, zero-padded to 32 octets (MS-CHAPv2: 32 octets)
    IPMK | CMK = PRF+(TK[0:40], "Inner Methods Compound Keys" | ISK, 60); 40 + 20 octets
    Compound MAC = HMAC-SHA1(CMK, Crypto-Binding TLV with a zero MAC | EAP type 25)
    CSK        = PRF+(IPMK, "Session Key Generating Function" | 0x00, 128); MSK = CSK[0:64]

PRF+ as PEAPv0 peers implement it: T(n) = HMAC-SHA1(K, T(n-1) | S | n | 0x00 | 0x00).
The server's nonce has its low bit clear; the peer echoes it (wpa_supplicant) or answers
with the low bit set (nonce + 1, [MS-PEAP] §3.1.5.5); both are accepted.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct

from vpnaaa.eap.packet import Type

TLV_TYPE = 12
TLV_LENGTH = 56
VERSION = 0
SUBTYPE_REQUEST = 0
SUBTYPE_RESPONSE = 1
_HEADER = struct.Struct("!HHBBBB")


def prf_plus(key: bytes, seed: bytes, length: int) -> bytes:
    """PEAPv0's PRF+ (see the module docstring)."""
    out = b""
    block = b""
    counter = 0
    while len(out) < length:
        counter += 1
        block = hmac.digest(key, block + seed + bytes([counter, 0, 0]), hashlib.sha1)
        out += block
    return out[:length]


def _tlv(subtype: int, nonce: bytes, mac: bytes) -> bytes:
    """The whole Crypto-Binding TLV, 60 octets (its Type field without the M bit)."""
    return _HEADER.pack(TLV_TYPE, TLV_LENGTH, 0, VERSION, VERSION, subtype) + nonce + mac


class Binding:
    """The server side of one cryptobinding exchange."""

    def __init__(self, tls_key: bytes, inner_msk: bytes) -> None:
        isk = inner_msk[:32].ljust(32, b"\x00")
        keys = prf_plus(tls_key[:40], b"Inner Methods Compound Keys" + isk, 60)
        self.ipmk, self.cmk = keys[:40], keys[40:60]
        nonce = bytearray(os.urandom(32))
        nonce[31] &= 0xFE
        self.nonce = bytes(nonce)

    def _mac(self, tlv_with_zero_mac: bytes) -> bytes:
        return hmac.digest(self.cmk, tlv_with_zero_mac + bytes([Type.PEAP]), hashlib.sha1)

    def request(self) -> bytes:
        """The value of our Crypto-Binding TLV (SubType Request)."""
        mac = self._mac(_tlv(SUBTYPE_REQUEST, self.nonce, bytes(20)))
        return _tlv(SUBTYPE_REQUEST, self.nonce, mac)[4:]

    def verify_response(self, value: bytes) -> bool:
        """Check the peer's Crypto-Binding TLV value (SubType Response)."""
        if len(value) != TLV_LENGTH:
            return False
        _, version, _, subtype = value[:4]
        nonce, mac = value[4:36], value[36:56]
        plus_one = self.nonce[:31] + bytes([self.nonce[31] | 1])
        if subtype != SUBTYPE_RESPONSE or version != VERSION or nonce not in (self.nonce, plus_one):
            return False
        expected = self._mac(_tlv(SUBTYPE_RESPONSE, nonce, bytes(20)))
        return hmac.compare_digest(expected, mac)

    def msk(self) -> bytes:
        """The MSK after cryptobinding: the first 64 octets of the CSK."""
        return prf_plus(self.ipmk, b"Session Key Generating Function\x00", 128)[:64]
