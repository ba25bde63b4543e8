"""AUTH payload signatures, both ways (RFC 7296 §2.15, §3.8; RFC 4754; RFC 7427).

:func:`sign` makes the gateway's AUTH with its certificate's key; :func:`verify` checks a
client's AUTH against the public key of its (validated) certificate. The methods:

- 1, RSA Digital Signature: PKCS#1 v1.5 with SHA-1 (§3.8; what Windows sends by default),
  unless the profile refuses SHA-1 (``sha1_signatures = false``);
- 9, 10, 11, ECDSA with SHA-256 on P-256, SHA-384 on P-384, SHA-512 on P-521 (RFC 4754
  §3, §7: the signature is r and s, each as long as the curve's order, concatenated);
- 14, Digital Signature (RFC 7427 §3): one length octet, the DER AlgorithmIdentifier of
  the scheme, then the signature (ECDSA: the DER Ecdsa-Sig-Value, RFC 7427 §3 and RFC
  3279 §2.2.3). Accepted schemes: :data:`SCHEMES` (PKCS#1 v1.5 and ECDSA with SHA-2; the
  AlgorithmIdentifier of PKCS#1 with or without its NULL parameters) and RSASSA-PSS
  (RFC 4055 §3.1, what RFC 8247 §3.2 recommends) with SHA-2, MGF1 over the same hash and
  a salt as long as the hash (RFC 8446 §4.2.3's choice, and strongSwan's), parsed
  strictly (:func:`_pss`). SHA-1 is never accepted here, whatever ``sha1_signatures``
  says: SIGNATURE_HASH_ALGORITHMS, sent before the client names its profile, announces
  SHA-2 only (RFC 7427 §4; RFC 8247 §3.2: SHA-1 MUST NOT).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from vpnaaa.ike.const import AuthMethod, HashAlgorithm
from vpnaaa.pki import ServerIdentity

# RFC 7427 §3, Appendix A: AlgorithmIdentifier DER of the schemes we sign with.
RSA_SHA256_ALGORITHM = bytes.fromhex("300d06092a864886f70d01010b0500")
ECDSA_SHA256_ALGORITHM = bytes.fromhex("300a06082a8648ce3d040302")


@dataclass(frozen=True)
class Scheme:
    """A signature scheme of RFC 7427 method 14: RSA (PKCS#1 v1.5, or RSASSA-PSS with
    ``pss_salt`` octets of salt) or ECDSA."""

    name: str
    rsa: bool
    hash: hashes.HashAlgorithm
    pss_salt: int | None = None

    def padding(self) -> padding.AsymmetricPadding:
        if self.pss_salt is None:
            return padding.PKCS1v15()
        return padding.PSS(padding.MGF1(self.hash), self.pss_salt)


# RFC 7427 Appendix A: the OID (DER content octets) of each scheme we verify.
SCHEMES: dict[bytes, Scheme] = {
    bytes.fromhex("2a864886f70d01010b"): Scheme("sha256WithRSAEncryption", True, hashes.SHA256()),
    bytes.fromhex("2a864886f70d01010c"): Scheme("sha384WithRSAEncryption", True, hashes.SHA384()),
    bytes.fromhex("2a864886f70d01010d"): Scheme("sha512WithRSAEncryption", True, hashes.SHA512()),
    bytes.fromhex("2a8648ce3d040302"): Scheme("ecdsa-with-SHA256", False, hashes.SHA256()),
    bytes.fromhex("2a8648ce3d040303"): Scheme("ecdsa-with-SHA384", False, hashes.SHA384()),
    bytes.fromhex("2a8648ce3d040304"): Scheme("ecdsa-with-SHA512", False, hashes.SHA512()),
}
# RFC 4754 §3: method -> (curve, hash)
_ECDSA_METHODS: dict[int, tuple[str, hashes.HashAlgorithm]] = {
    AuthMethod.ECDSA_256: ("secp256r1", hashes.SHA256()),
    AuthMethod.ECDSA_384: ("secp384r1", hashes.SHA384()),
    AuthMethod.ECDSA_521: ("secp521r1", hashes.SHA512()),
}
_NULL = b"\x05\x00"
# RFC 8017 Appendix A.2.3, RFC 4055 §2.1, §3.1: id-RSASSA-PSS, id-mgf1, the SHA-2 OIDs
_RSASSA_PSS = bytes.fromhex("2a864886f70d01010a")
_MGF1 = bytes.fromhex("2a864886f70d010108")
_PSS_HASHES: dict[bytes, hashes.HashAlgorithm] = {
    bytes.fromhex("608648016503040201"): hashes.SHA256(),
    bytes.fromhex("608648016503040202"): hashes.SHA384(),
    bytes.fromhex("608648016503040203"): hashes.SHA512(),
}
# RFC 7427 Appendix A.1.1, A.3.1: sha1WithRSAEncryption, ecdsa-with-SHA1, named in refusals
_SHA1_SCHEMES = {bytes.fromhex("2a864886f70d010105"), bytes.fromhex("2a8648ce3d0401")}


class SignatureRejected(Exception):
    """The AUTH does not verify, or uses a method or scheme we do not accept; the message
    says which, for the refusal's log line."""


def sign(identity: ServerIdentity, announced: frozenset[int], octets: bytes) -> tuple[int, bytes]:
    """AUTH with our certificate's key: RFC 7427 (method 14, SHA-256) when the peer
    announced SHA-256 in SIGNATURE_HASH_ALGORITHMS (or our key is ECDSA), else RSA PKCS#1
    v1.5 with SHA-1 (method 1, RFC 7296 §3.8)."""
    key = identity.key
    if isinstance(key, ec.EllipticCurvePrivateKey):
        signature = key.sign(octets, ec.ECDSA(hashes.SHA256()))
        return AuthMethod.DIGITAL_SIGNATURE, _asn1(ECDSA_SHA256_ALGORITHM) + signature
    assert isinstance(key, rsa.RSAPrivateKey)
    if HashAlgorithm.SHA2_256 in announced:
        signature = key.sign(octets, padding.PKCS1v15(), hashes.SHA256())
        return AuthMethod.DIGITAL_SIGNATURE, _asn1(RSA_SHA256_ALGORITHM) + signature
    return AuthMethod.RSA_SIG, key.sign(octets, padding.PKCS1v15(), hashes.SHA1())


def verify(
    public_key: object, method: int, data: bytes, octets: bytes, *, sha1: bool = True
) -> str:
    """Check an AUTH payload's ``method`` and ``data`` over ``octets`` (the peer's signed
    octets, §2.15) with ``public_key``; ``sha1``: whether method 1 (RSA with SHA-1) is
    accepted (the profile's ``sha1_signatures``). Returns the scheme's name; raises
    :class:`SignatureRejected`."""
    if method == AuthMethod.RSA_SIG:
        if not sha1:
            raise SignatureRejected(
                "RSA Digital Signature (method 1) is PKCS#1 v1.5 with SHA-1, refused by "
                "sha1_signatures = false"
            )
        key = _rsa(public_key, "RSA Digital Signature (method 1)")
        _check(lambda: key.verify(data, octets, padding.PKCS1v15(), hashes.SHA1()))
        return "RSA PKCS#1 v1.5 with SHA-1"
    if method in _ECDSA_METHODS:
        curve, digest = _ECDSA_METHODS[method]
        key = _ecdsa(public_key, f"ECDSA method {method}")
        if key.curve.name != curve:
            raise SignatureRejected(
                f"ECDSA method {method} needs a {curve} key, not {key.curve.name}"
            )
        half = len(data) // 2
        if len(data) % 2 or half != (key.curve.key_size + 7) // 8:
            raise SignatureRejected(f"ECDSA method {method}: a {len(data)}-octet signature")
        der = encode_dss_signature(
            int.from_bytes(data[:half], "big"), int.from_bytes(data[half:], "big")
        )
        _check(lambda: key.verify(der, octets, ec.ECDSA(digest)))
        return f"ECDSA {curve} with {digest.name.upper()}"
    if method == AuthMethod.DIGITAL_SIGNATURE:
        scheme, signature = _digital_signature(data)
        if scheme.rsa:
            rsa_key = _rsa(public_key, scheme.name)
            _check(lambda: rsa_key.verify(signature, octets, scheme.padding(), scheme.hash))
        else:
            ec_key = _ecdsa(public_key, scheme.name)
            _check(lambda: ec_key.verify(signature, octets, ec.ECDSA(scheme.hash)))
        return scheme.name
    raise SignatureRejected(f"AUTH method {method} is not a certificate signature we accept")


def _digital_signature(data: bytes) -> tuple[Scheme, bytes]:
    """RFC 7427 §3: the scheme named by the AlgorithmIdentifier, and the signature."""
    if not data:
        raise SignatureRejected("empty Digital Signature AUTH")
    length = data[0]
    algorithm, signature = data[1 : 1 + length], data[1 + length :]
    # SEQUENCE { OBJECT IDENTIFIER, parameters }, DER
    try:
        if len(algorithm) != length:
            raise _Der("shorter than its ASN.1 Length")
        body = _one(algorithm, _SEQUENCE)
        oid, rest = _take(body, 0x06)
        if oid == _RSASSA_PSS:
            return _pss(_one(rest, _SEQUENCE)), signature
    except _Der as e:
        raise SignatureRejected(
            f"Digital Signature AUTH: AlgorithmIdentifier {algorithm.hex()}: {e}"
        ) from None
    if oid in _SHA1_SCHEMES:
        raise SignatureRejected(
            "SHA-1 in a Digital Signature AUTH; we announce SHA-2 only (RFC 7427 §4)"
        )
    scheme = SCHEMES.get(oid)
    if scheme is None or rest not in (b"", _NULL) or (rest and not scheme.rsa):
        raise SignatureRejected(f"signature scheme {algorithm.hex()} is not one we accept")
    return scheme, signature


def _pss(params: bytes) -> Scheme:
    """RSASSA-PSS-params (RFC 4055 §3.1): [0] hashAlgorithm, [1] maskGenAlgorithm, [2]
    saltLength, [3] trailerField, in that order, each optional. Accepted: a SHA-2 hash
    (parameters NULL or absent, §2.1), MGF1 with the same hash, a salt as long as the
    hash, trailerField 1 (absent, as DER wants, or explicit). The defaults (SHA-1, MGF1
    with SHA-1, 20 octets) and anything else are refused (raises :class:`_Der` or
    :class:`SignatureRejected`)."""
    fields: dict[int, bytes] = {}
    while params:
        tag = params[0]
        if tag not in (0xA0, 0xA1, 0xA2, 0xA3) or (fields and tag <= max(fields)):
            raise _Der(f"RSASSA-PSS-params field tag {tag:#04x}")
        fields[tag], params = _take(params, tag)
    if 0xA0 not in fields or 0xA1 not in fields:
        raise SignatureRejected("RSASSA-PSS with the default SHA-1 hash or MGF1 with SHA-1")
    digest = _hash(_one(fields[0xA0], _SEQUENCE))
    mgf, mgf_hash = _take(_one(fields[0xA1], _SEQUENCE), 0x06)
    if mgf != _MGF1 or _hash(_one(mgf_hash, _SEQUENCE)).name != digest.name:
        raise SignatureRejected(
            f"RSASSA-PSS with {digest.name}: mask generation is not MGF1 over it"
        )
    salt = _integer(_one(fields[0xA2], 0x02)) if 0xA2 in fields else 20
    if salt != digest.digest_size:
        raise SignatureRejected(
            f"RSASSA-PSS with {digest.name}: a {salt}-octet salt, not {digest.digest_size}"
        )
    if 0xA3 in fields and _integer(_one(fields[0xA3], 0x02)) != 1:
        raise SignatureRejected("RSASSA-PSS with a trailerField other than 1")
    return Scheme(f"RSASSA-PSS with {digest.name.upper()}", True, digest, salt)


def _hash(body: bytes) -> hashes.HashAlgorithm:
    """A HashAlgorithm's SEQUENCE body: a SHA-2 OID, NULL or no parameters (RFC 4055 §2.1)."""
    oid, parameters = _take(body, 0x06)
    digest = _PSS_HASHES.get(oid)
    if digest is None or parameters not in (b"", _NULL):
        raise SignatureRejected(f"RSASSA-PSS with hash {body.hex()}; we take SHA-2")
    return digest


_SEQUENCE = 0x30


class _Der(Exception):
    """Octets that are not the DER they should be."""


def _take(data: bytes, tag: int) -> tuple[bytes, bytes]:
    """The contents of the DER TLV ``data`` starts with (of ``tag``), and what follows.
    Definite lengths in their shortest form only (X.690 §10.1)."""
    if len(data) < 2 or data[0] != tag:
        raise _Der(f"expected tag {tag:#04x}")
    size, start = data[1], 2
    if size & 0x80:
        count = size & 0x7F
        if count not in (1, 2) or len(data) < 2 + count:
            raise _Der("length")
        size, start = int.from_bytes(data[2 : 2 + count], "big"), 2 + count
        if size < 0x80 or size < 1 << 8 * (count - 1):
            raise _Der("length not in its shortest form")
    if len(data) < start + size:
        raise _Der("truncated")
    return data[start : start + size], data[start + size :]


def _one(data: bytes, tag: int) -> bytes:
    """The contents of ``data``, which must be exactly one TLV of ``tag``."""
    contents, rest = _take(data, tag)
    if rest:
        raise _Der("octets after the value")
    return contents


def _integer(contents: bytes) -> int:
    """A small non-negative DER INTEGER's value (X.690 §8.3: minimal octets)."""
    if not contents or len(contents) > 2 or contents[0] & 0x80:
        raise _Der("INTEGER out of range")
    if len(contents) == 2 and contents[0] == 0 and not contents[1] & 0x80:
        raise _Der("INTEGER not in its shortest form")
    return int.from_bytes(contents, "big")


def _rsa(public_key: object, what: str) -> rsa.RSAPublicKey:
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise SignatureRejected(f"{what} with a certificate whose key is not RSA")
    return public_key


def _ecdsa(public_key: object, what: str) -> ec.EllipticCurvePublicKey:
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise SignatureRejected(f"{what} with a certificate whose key is not ECDSA")
    return public_key


def _check(verification: Callable[[], None]) -> None:
    try:
        verification()
    except (InvalidSignature, ValueError):  # ValueError: a salt too long for the key
        raise SignatureRejected("the AUTH signature does not verify") from None


def _asn1(algorithm: bytes) -> bytes:
    """RFC 7427 §3: ASN.1 Length octet, then the AlgorithmIdentifier."""
    return bytes([len(algorithm)]) + algorithm
