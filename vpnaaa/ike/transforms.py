"""IKEv2 and ESP transforms on `cryptography`: ciphers, PRFs, integrity algorithms, DH groups.

Each negotiable transform (RFC 7296 §3.3.2) is a small frozen object that knows its sizes
and does its one operation on bytes:

- ciphers, by (Transform ID, Key Length attribute in bits): 3DES-CBC (RFC 2451), AES-CBC
  (RFC 3602), AES-GCM with a 16-octet ICV (RFC 4106, RFC 5282) and ChaCha20-Poly1305
  (RFC 7634). The AEAD ciphers take keying material = key | 4-octet salt and build the
  12-octet nonce as salt | 8-octet IV;
- PRFs: HMAC-MD5, HMAC-SHA1 (RFC 2104) and HMAC-SHA2 (RFC 4868 §2.1), with prf+
  (RFC 7296 §2.13);
- integrity algorithms: HMAC truncated to half the hash (RFC 2404, RFC 4868 §2.2) or to
  96 bits (HMAC-MD5-96, RFC 2403: ESP only, RFC 8247 forbids it for IKE);
- Diffie-Hellman groups: MODP (RFC 2409 §6.2, RFC 3526), ECP (RFC 5903) and Curve25519
  (RFC 8031).

``IKE`` and ``ESP`` list what can be negotiated for each protocol. Everything here is
sans-IO; errors from the peer's values are typed so the state machine can answer them.

The RFC 3526 MODP groups go through `cryptography`'s finite-field DH (deprecated there,
hence the filtered warning below): OpenSSL knows those primes and uses short exponents,
ten times faster than ``pow()`` (one generate and one shared secret: 0.5 ms against
6.3 ms for MODP2048, 2.7 ms against 35 ms for MODP4096). The RFC 2409 group 2 prime is
not one OpenSSL knows, and `cryptography` would test its primality for every peer
value (30 ms), so that group uses ``pow()`` (1.4 ms).
"""

from __future__ import annotations

import hmac as _hmac
import secrets
import warnings
from dataclasses import dataclass, field
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import hashes, hmac, serialization
from cryptography.hazmat.primitives.asymmetric import dh, ec, x25519
from cryptography.hazmat.primitives.ciphers import BlockCipherAlgorithm, Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.utils import CryptographyDeprecationWarning

from vpnaaa.ike.const import DhGroup, EncrId, IntegId, PrfId

with warnings.catch_warnings():
    # `cryptography` warns on every attribute of its dh module; the objects do not warn.
    warnings.simplefilter("ignore", CryptographyDeprecationWarning)
    _DHParameterNumbers = dh.DHParameterNumbers
    _DHPublicNumbers = dh.DHPublicNumbers


class UnsupportedTransform(LookupError):
    """A transform ID (or Key Length) this implementation does not offer."""


class InvalidPublicValue(ValueError):
    """The peer's Diffie-Hellman public value is malformed or not a valid group element."""


class AuthenticationFailed(Exception):
    """An AEAD ICV did not verify."""


# --- ciphers ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CbcCipher:
    """A block cipher in CBC mode (RFC 7296 §3.14): the IV is one block, sent in clear."""

    id: EncrId
    key_bits: int | None  # the Key Length attribute; None where the transform has none
    algorithm: type[BlockCipherAlgorithm]
    key_size: int  # octets of SK_e / ESP keying material
    block_size: int
    is_aead = False
    icv_size = 0

    @property
    def iv_size(self) -> int:
        return self.block_size

    def _cipher(self, key: bytes, iv: bytes) -> Cipher:
        return Cipher(self.algorithm(key), modes.CBC(iv))

    def encrypt(self, key: bytes, iv: bytes, plaintext: bytes) -> bytes:
        """Encrypt whole blocks: padding is the caller's (it is part of the payload format)."""
        encryptor = self._cipher(key, iv).encryptor()
        return encryptor.update(plaintext) + encryptor.finalize()

    def decrypt(self, key: bytes, iv: bytes, ciphertext: bytes) -> bytes:
        decryptor = self._cipher(key, iv).decryptor()
        return decryptor.update(ciphertext) + decryptor.finalize()


@dataclass(frozen=True)
class AeadCipher:
    """An AEAD cipher as IKEv2 (RFC 5282 §4, RFC 7634 §2) and ESP (RFC 4106, RFC 7634) use it.

    Keying material is key | salt (salt 4 octets); the nonce is salt | IV with an 8-octet
    IV sent in clear; the ICV (16 octets) follows the ciphertext. The block size is 1: no
    padding is needed for alignment.
    """

    id: EncrId
    key_bits: int | None
    algorithm: type[AESGCM] | type[ChaCha20Poly1305]
    key_size: int  # key + salt
    is_aead = True
    iv_size = 8
    block_size = 1
    icv_size = 16
    salt_size = 4

    def _split(self, keymat: bytes, iv: bytes) -> tuple[AESGCM | ChaCha20Poly1305, bytes]:
        key, salt = keymat[: -self.salt_size], keymat[-self.salt_size :]
        return self.algorithm(key), salt + iv

    def encrypt(self, keymat: bytes, iv: bytes, plaintext: bytes, aad: bytes) -> bytes:
        """Ciphertext | ICV."""
        aead, nonce = self._split(keymat, iv)
        return aead.encrypt(nonce, plaintext, aad)

    def decrypt(self, keymat: bytes, iv: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        """Verify the ICV at the end of ``ciphertext`` and decrypt; AuthenticationFailed if bad."""
        aead, nonce = self._split(keymat, iv)
        try:
            return aead.decrypt(nonce, ciphertext, aad)
        except InvalidTag:
            raise AuthenticationFailed("AEAD ICV mismatch") from None


AnyCipher = CbcCipher | AeadCipher


def _cbc(
    encr: EncrId, key_bits: int | None, algorithm: type[BlockCipherAlgorithm], key_size: int
) -> CbcCipher:
    return CbcCipher(encr, key_bits, algorithm, key_size, algorithm.block_size // 8)


_CIPHERS: dict[tuple[EncrId, int | None], AnyCipher] = {
    (c.id, c.key_bits): c
    for c in (
        _cbc(EncrId.DES3, None, TripleDES, 24),
        _cbc(EncrId.AES_CBC, 128, algorithms.AES, 16),
        _cbc(EncrId.AES_CBC, 192, algorithms.AES, 24),
        _cbc(EncrId.AES_CBC, 256, algorithms.AES, 32),
        AeadCipher(EncrId.AES_GCM_16, 128, AESGCM, 16 + 4),
        AeadCipher(EncrId.AES_GCM_16, 256, AESGCM, 32 + 4),
        AeadCipher(EncrId.CHACHA20_POLY1305, None, ChaCha20Poly1305, 32 + 4),
    )
}


def cipher_for(encr: int, key_bits: int | None) -> AnyCipher:
    """The cipher for an ENCR transform ID and its Key Length attribute (None if absent).

    AES transforms require the attribute (RFC 7296 §3.3.5); 3DES and ChaCha20-Poly1305
    have a fixed key and must be proposed without one (RFC 7634 §3).
    """
    try:
        return _CIPHERS[EncrId(encr), key_bits]
    except (ValueError, KeyError):
        raise UnsupportedTransform(f"ENCR {encr} with key length {key_bits}") from None


# --- PRFs and prf+ ---------------------------------------------------------------------


@dataclass(frozen=True)
class Prf:
    """An HMAC PRF: any key length is accepted, the preferred one is the output size."""

    id: PrfId
    hash: type[hashes.HashAlgorithm]

    @property
    def size(self) -> int:
        """Octets of output, also the length of SK_d, SK_pi and SK_pr (RFC 7296 §2.14)."""
        return self.hash.digest_size

    def __call__(self, key: bytes, data: bytes) -> bytes:
        mac = hmac.HMAC(key, self.hash())
        mac.update(data)
        return mac.finalize()


_PRFS = {
    p.id: p
    for p in (
        Prf(PrfId.HMAC_MD5, hashes.MD5),
        Prf(PrfId.HMAC_SHA1, hashes.SHA1),
        Prf(PrfId.HMAC_SHA2_256, hashes.SHA256),
        Prf(PrfId.HMAC_SHA2_384, hashes.SHA384),
        Prf(PrfId.HMAC_SHA2_512, hashes.SHA512),
    )
}


def prf_for(prf_id: int) -> Prf:
    """The PRF for a PRF transform ID."""
    try:
        return _PRFS[PrfId(prf_id)]
    except (ValueError, KeyError):
        raise UnsupportedTransform(f"PRF {prf_id}") from None


def prf_plus(prf: Prf, key: bytes, seed: bytes, length: int) -> bytes:
    """prf+ (RFC 7296 §2.13): T1 | T2 | ..., Tn = prf(K, Tn-1 | S | n), n up to 255."""
    if length > 255 * prf.size:
        raise ValueError(f"prf+ cannot produce {length} octets with a {prf.size}-octet PRF")
    out = b""
    block = b""
    counter = 0
    while len(out) < length:
        counter += 1
        block = prf(key, block + seed + bytes([counter]))
        out += block
    return out[:length]


# --- integrity -------------------------------------------------------------------------


@dataclass(frozen=True)
class Integrity:
    """A truncated HMAC: the key is as long as the hash output (RFC 4868 §2.1.1)."""

    id: IntegId
    hash: type[hashes.HashAlgorithm]
    icv_size: int
    ike: bool = True  # may protect IKE SAs (RFC 8247 §3.2), not only ESP

    @property
    def key_size(self) -> int:
        return self.hash.digest_size

    def compute(self, key: bytes, data: bytes) -> bytes:
        """The leftmost ``icv_size`` octets of the HMAC (RFC 2104 §5)."""
        mac = hmac.HMAC(key, self.hash())
        mac.update(data)
        return mac.finalize()[: self.icv_size]

    def verify(self, key: bytes, data: bytes, icv: bytes) -> bool:
        """Check a received ICV in constant time."""
        return _hmac.compare_digest(self.compute(key, data), icv)


_INTEGRITY = {
    i.id: i
    for i in (
        Integrity(IntegId.HMAC_MD5_96, hashes.MD5, 12, ike=False),
        Integrity(IntegId.HMAC_SHA1_96, hashes.SHA1, 12),
        Integrity(IntegId.HMAC_SHA2_256_128, hashes.SHA256, 16),
        Integrity(IntegId.HMAC_SHA2_384_192, hashes.SHA384, 24),
        Integrity(IntegId.HMAC_SHA2_512_256, hashes.SHA512, 32),
    )
}


def integrity_for(integ: int) -> Integrity:
    """The algorithm for an INTEG transform ID (NONE, used with AEAD ciphers, has none)."""
    try:
        return _INTEGRITY[IntegId(integ)]
    except (ValueError, KeyError):
        raise UnsupportedTransform(f"INTEG {integ}") from None


# --- Diffie-Hellman --------------------------------------------------------------------


class Group(Protocol):
    """What the IKE state machine needs of a DH group (the KE payload, RFC 7296 §3.4)."""

    id: DhGroup

    @property
    def public_size(self) -> int:
        """Octets of the Key Exchange Data."""
        ...

    def generate(self) -> tuple[object, bytes]:
        """A fresh private key (opaque) and the public value as sent in KE."""
        ...

    def shared_secret(self, private: object, peer_public: bytes) -> bytes:
        """g^ir as RFC 7296 §2.14 defines its octets; InvalidPublicValue if the peer's is bad."""
        ...


@dataclass(frozen=True)
class _Modp:
    """A MODP group with generator 2. Public values and g^ir are as long as the prime
    (RFC 7296 §3.4, §2.14); a peer value must satisfy 1 < y < p-1, which for these safe
    primes is the whole check (RFC 6989 §2.1).
    """

    id: DhGroup
    p: int = field(repr=False)

    @property
    def public_size(self) -> int:
        return (self.p.bit_length() + 7) // 8

    def _peer_value(self, peer_public: bytes) -> int:
        _check_length(self, peer_public)
        y = int.from_bytes(peer_public, "big")
        if not 1 < y < self.p - 1:
            raise InvalidPublicValue(f"{self.id.name}: public value out of range")
        return y


@dataclass(frozen=True)
class ModpGroup(_Modp):
    """An RFC 3526 group on OpenSSL, which knows these primes by name: it skips the
    primality test when it builds the peer's key and uses short exponents.
    """

    parameters: dh.DHParameters = field(repr=False, compare=False)

    def generate(self) -> tuple[dh.DHPrivateKey, bytes]:
        private = self.parameters.generate_private_key()
        y = private.public_key().public_numbers().y
        return private, y.to_bytes(self.public_size, "big")

    def shared_secret(self, private: dh.DHPrivateKey, peer_public: bytes) -> bytes:
        y = self._peer_value(peer_public)
        peer = _DHPublicNumbers(y, self.parameters.parameter_numbers()).public_key()
        return private.exchange(peer)


@dataclass(frozen=True)
class PowModpGroup(_Modp):
    """A MODP group on Python integers, for the RFC 2409 prime OpenSSL does not know by
    name (it would test its primality, 30 ms, for every peer value). The exponent is
    256 random bits, over three times the group's strength; ``pow`` does not run in
    constant time, which an exponent used for one exchange only can afford.
    """

    exponent_bits: int = 256

    def generate(self) -> tuple[int, bytes]:
        x = secrets.randbits(self.exponent_bits) | (1 << (self.exponent_bits - 1))
        return x, pow(2, x, self.p).to_bytes(self.public_size, "big")

    def shared_secret(self, private: int, peer_public: bytes) -> bytes:
        y = self._peer_value(peer_public)
        return pow(y, private, self.p).to_bytes(self.public_size, "big")


def _prime(printed: str) -> int:
    """A prime as its RFC prints it: hexadecimal in groups of eight digits."""
    return int("".join(printed.split()), 16)


def _openssl_modp(group: DhGroup, printed: str) -> ModpGroup:
    p = _prime(printed)
    return ModpGroup(group, p, _DHParameterNumbers(p, 2).parameters())


def _check_length(group: Group, peer_public: bytes) -> None:
    if len(peer_public) != group.public_size:
        raise InvalidPublicValue(
            f"{group.id.name}: public value of {len(peer_public)} octets, "
            f"expected {group.public_size}"
        )


@dataclass(frozen=True)
class EcpGroup:
    """A NIST prime curve (RFC 5903 §7): the public value is x | y without the SEC 1 0x04
    octet, each coordinate as long as the field; g^ir is the x coordinate alone.
    """

    id: DhGroup
    curve: type[ec.EllipticCurve]
    coordinate_size: int

    @property
    def public_size(self) -> int:
        return 2 * self.coordinate_size

    def generate(self) -> tuple[ec.EllipticCurvePrivateKey, bytes]:
        private = ec.generate_private_key(self.curve())
        point = private.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return private, point[1:]

    def shared_secret(self, private: ec.EllipticCurvePrivateKey, peer_public: bytes) -> bytes:
        _check_length(self, peer_public)
        try:
            peer = ec.EllipticCurvePublicKey.from_encoded_point(self.curve(), b"\x04" + peer_public)
        except ValueError:
            raise InvalidPublicValue(f"{self.id.name}: point not on the curve") from None
        return private.exchange(ec.ECDH(), peer)


@dataclass(frozen=True)
class Curve25519Group:
    """Curve25519 (RFC 8031 §2): 32-octet public values, g^ir the X25519 output. An
    all-zero output (a low-order peer value) is refused (RFC 8031 §2.3, RFC 7748 §6.1).
    """

    id: DhGroup = DhGroup.CURVE25519
    public_size: int = 32

    def generate(self) -> tuple[x25519.X25519PrivateKey, bytes]:
        private = x25519.X25519PrivateKey.generate()
        return private, private.public_key().public_bytes_raw()

    def shared_secret(self, private: x25519.X25519PrivateKey, peer_public: bytes) -> bytes:
        _check_length(self, peer_public)
        peer = x25519.X25519PublicKey.from_public_bytes(peer_public)
        try:
            return private.exchange(peer)
        except ValueError:  # OpenSSL refuses the all-zero result
            raise InvalidPublicValue(f"{self.id.name}: low-order public value") from None


# RFC 7296 Appendix B.2 (the RFC 2409 §6.2 group) and RFC 3526 §§2-5, as printed there.
_MODP1024 = """
FFFFFFFF FFFFFFFF C90FDAA2 2168C234 C4C6628B 80DC1CD1
29024E08 8A67CC74 020BBEA6 3B139B22 514A0879 8E3404DD
EF9519B3 CD3A431B 302B0A6D F25F1437 4FE1356D 6D51C245
E485B576 625E7EC6 F44C42E9 A637ED6B 0BFF5CB6 F406B7ED
EE386BFB 5A899FA5 AE9F2411 7C4B1FE6 49286651 ECE65381
FFFFFFFF FFFFFFFF
"""
_MODP1536 = """
FFFFFFFF FFFFFFFF C90FDAA2 2168C234 C4C6628B 80DC1CD1
29024E08 8A67CC74 020BBEA6 3B139B22 514A0879 8E3404DD
EF9519B3 CD3A431B 302B0A6D F25F1437 4FE1356D 6D51C245
E485B576 625E7EC6 F44C42E9 A637ED6B 0BFF5CB6 F406B7ED
EE386BFB 5A899FA5 AE9F2411 7C4B1FE6 49286651 ECE45B3D
C2007CB8 A163BF05 98DA4836 1C55D39A 69163FA8 FD24CF5F
83655D23 DCA3AD96 1C62F356 208552BB 9ED52907 7096966D
670C354E 4ABC9804 F1746C08 CA237327 FFFFFFFF FFFFFFFF
"""
_MODP2048 = """
FFFFFFFF FFFFFFFF C90FDAA2 2168C234 C4C6628B 80DC1CD1
29024E08 8A67CC74 020BBEA6 3B139B22 514A0879 8E3404DD
EF9519B3 CD3A431B 302B0A6D F25F1437 4FE1356D 6D51C245
E485B576 625E7EC6 F44C42E9 A637ED6B 0BFF5CB6 F406B7ED
EE386BFB 5A899FA5 AE9F2411 7C4B1FE6 49286651 ECE45B3D
C2007CB8 A163BF05 98DA4836 1C55D39A 69163FA8 FD24CF5F
83655D23 DCA3AD96 1C62F356 208552BB 9ED52907 7096966D
670C354E 4ABC9804 F1746C08 CA18217C 32905E46 2E36CE3B
E39E772C 180E8603 9B2783A2 EC07A28F B5C55DF0 6F4C52C9
DE2BCBF6 95581718 3995497C EA956AE5 15D22618 98FA0510
15728E5A 8AACAA68 FFFFFFFF FFFFFFFF
"""
_MODP3072 = """
FFFFFFFF FFFFFFFF C90FDAA2 2168C234 C4C6628B 80DC1CD1
29024E08 8A67CC74 020BBEA6 3B139B22 514A0879 8E3404DD
EF9519B3 CD3A431B 302B0A6D F25F1437 4FE1356D 6D51C245
E485B576 625E7EC6 F44C42E9 A637ED6B 0BFF5CB6 F406B7ED
EE386BFB 5A899FA5 AE9F2411 7C4B1FE6 49286651 ECE45B3D
C2007CB8 A163BF05 98DA4836 1C55D39A 69163FA8 FD24CF5F
83655D23 DCA3AD96 1C62F356 208552BB 9ED52907 7096966D
670C354E 4ABC9804 F1746C08 CA18217C 32905E46 2E36CE3B
E39E772C 180E8603 9B2783A2 EC07A28F B5C55DF0 6F4C52C9
DE2BCBF6 95581718 3995497C EA956AE5 15D22618 98FA0510
15728E5A 8AAAC42D AD33170D 04507A33 A85521AB DF1CBA64
ECFB8504 58DBEF0A 8AEA7157 5D060C7D B3970F85 A6E1E4C7
ABF5AE8C DB0933D7 1E8C94E0 4A25619D CEE3D226 1AD2EE6B
F12FFA06 D98A0864 D8760273 3EC86A64 521F2B18 177B200C
BBE11757 7A615D6C 770988C0 BAD946E2 08E24FA0 74E5AB31
43DB5BFC E0FD108E 4B82D120 A93AD2CA FFFFFFFF FFFFFFFF
"""
_MODP4096 = """
FFFFFFFF FFFFFFFF C90FDAA2 2168C234 C4C6628B 80DC1CD1
29024E08 8A67CC74 020BBEA6 3B139B22 514A0879 8E3404DD
EF9519B3 CD3A431B 302B0A6D F25F1437 4FE1356D 6D51C245
E485B576 625E7EC6 F44C42E9 A637ED6B 0BFF5CB6 F406B7ED
EE386BFB 5A899FA5 AE9F2411 7C4B1FE6 49286651 ECE45B3D
C2007CB8 A163BF05 98DA4836 1C55D39A 69163FA8 FD24CF5F
83655D23 DCA3AD96 1C62F356 208552BB 9ED52907 7096966D
670C354E 4ABC9804 F1746C08 CA18217C 32905E46 2E36CE3B
E39E772C 180E8603 9B2783A2 EC07A28F B5C55DF0 6F4C52C9
DE2BCBF6 95581718 3995497C EA956AE5 15D22618 98FA0510
15728E5A 8AAAC42D AD33170D 04507A33 A85521AB DF1CBA64
ECFB8504 58DBEF0A 8AEA7157 5D060C7D B3970F85 A6E1E4C7
ABF5AE8C DB0933D7 1E8C94E0 4A25619D CEE3D226 1AD2EE6B
F12FFA06 D98A0864 D8760273 3EC86A64 521F2B18 177B200C
BBE11757 7A615D6C 770988C0 BAD946E2 08E24FA0 74E5AB31
43DB5BFC E0FD108E 4B82D120 A9210801 1A723C12 A787E6D7
88719A10 BDBA5B26 99C32718 6AF4E23C 1A946834 B6150BDA
2583E9CA 2AD44CE8 DBBBC2DB 04DE8EF9 2E8EFC14 1FBECAA6
287C5947 4E6BC05D 99B2964F A090C3A2 233BA186 515BE7ED
1F612970 CEE2D7AF B81BDD76 2170481C D0069127 D5B05AA9
93B4EA98 8D8FDDC1 86FFB7DC 90A6C08F 4DF435C9 34063199
FFFFFFFF FFFFFFFF
"""

_GROUPS: dict[DhGroup, Group] = {
    g.id: g
    for g in (
        PowModpGroup(DhGroup.MODP1024, _prime(_MODP1024)),
        _openssl_modp(DhGroup.MODP1536, _MODP1536),
        _openssl_modp(DhGroup.MODP2048, _MODP2048),
        _openssl_modp(DhGroup.MODP3072, _MODP3072),
        _openssl_modp(DhGroup.MODP4096, _MODP4096),
        EcpGroup(DhGroup.ECP256, ec.SECP256R1, 32),
        EcpGroup(DhGroup.ECP384, ec.SECP384R1, 48),
        EcpGroup(DhGroup.ECP521, ec.SECP521R1, 66),
        Curve25519Group(),
    )
}


def group_for(group: int) -> Group:
    """The DH group for a DH transform ID (the KE payload's DH Group Num)."""
    try:
        return _GROUPS[DhGroup(group)]
    except (ValueError, KeyError):
        raise UnsupportedTransform(f"DH group {group}") from None


# --- what can be negotiated ------------------------------------------------------------


@dataclass(frozen=True)
class Supported:
    """Transforms one protocol can negotiate, strongest first. ``encryption`` pairs an
    ENCR ID with its Key Length attribute (None: the transform takes none).
    """

    encryption: tuple[tuple[EncrId, int | None], ...]
    prf: tuple[PrfId, ...]
    integrity: tuple[IntegId, ...]
    dh: tuple[DhGroup, ...]


_ENCRYPTION = (
    (EncrId.AES_GCM_16, 256),
    (EncrId.CHACHA20_POLY1305, None),
    (EncrId.AES_GCM_16, 128),
    (EncrId.AES_CBC, 256),
    (EncrId.AES_CBC, 192),
    (EncrId.AES_CBC, 128),
    (EncrId.DES3, None),
)
_DH = (
    DhGroup.CURVE25519,
    DhGroup.ECP256,
    DhGroup.ECP384,
    DhGroup.ECP521,
    DhGroup.MODP4096,
    DhGroup.MODP3072,
    DhGroup.MODP2048,
    DhGroup.MODP1536,
    DhGroup.MODP1024,
)
_BY_STRENGTH = (
    IntegId.HMAC_SHA2_512_256,
    IntegId.HMAC_SHA2_384_192,
    IntegId.HMAC_SHA2_256_128,
    IntegId.HMAC_SHA1_96,
    IntegId.HMAC_MD5_96,
)

IKE = Supported(
    encryption=_ENCRYPTION,
    prf=(
        PrfId.HMAC_SHA2_512,
        PrfId.HMAC_SHA2_384,
        PrfId.HMAC_SHA2_256,
        PrfId.HMAC_SHA1,
        PrfId.HMAC_MD5,
    ),
    integrity=tuple(i for i in _BY_STRENGTH if _INTEGRITY[i].ike),
    dh=_DH,
)
ESP = Supported(encryption=_ENCRYPTION, prf=(), integrity=_BY_STRENGTH, dh=_DH)
