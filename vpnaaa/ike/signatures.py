"""AUTH payload signatures, both ways (RFC 7296 §2.15, §3.8; RFC 4754; RFC 7427).

:func:`sign` makes the gateway's AUTH with its certificate's key; :func:`verify` checks a
client's AUTH against the public key of its (validated) certificate. The methods:

- 1, RSA Digital Signature: PKCS#1 v1.5 with SHA-1 (§3.8; what old Windows sends);
- 9, 10, 11, ECDSA with SHA-256 on P-256, SHA-384 on P-384, SHA-512 on P-521 (RFC 4754
  §3, §7: the signature is r and s, each as long as the curve's order, concatenated);
- 14, Digital Signature (RFC 7427 §3): one length octet, the DER AlgorithmIdentifier of
  the scheme, then the signature (ECDSA: the DER Ecdsa-Sig-Value, RFC 7427 §3 and RFC
  3279 §2.2.3). Accepted schemes: :data:`SCHEMES` (PKCS#1 v1.5 and ECDSA with SHA-2; the
  AlgorithmIdentifier of PKCS#1 with or without its NULL parameters).
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
    """A signature scheme of RFC 7427 method 14: ``rsa`` (PKCS#1 v1.5) or ECDSA."""

    name: str
    rsa: bool
    hash: hashes.HashAlgorithm


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


def verify(public_key: object, method: int, data: bytes, octets: bytes) -> str:
    """Check an AUTH payload's ``method`` and ``data`` over ``octets`` (the peer's signed
    octets, §2.15) with ``public_key``. Returns the scheme's name; raises
    :class:`SignatureRejected`."""
    if method == AuthMethod.RSA_SIG:
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
            _check(lambda: rsa_key.verify(signature, octets, padding.PKCS1v15(), scheme.hash))
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
    # SEQUENCE { OBJECT IDENTIFIER, parameters NULL or absent }, short-form lengths
    if (
        len(algorithm) != length
        or len(algorithm) < 4
        or algorithm[0] != 0x30
        or algorithm[1] != len(algorithm) - 2
        or algorithm[2] != 0x06
    ):
        raise SignatureRejected(f"Digital Signature AUTH: AlgorithmIdentifier {algorithm.hex()}")
    oid, parameters = algorithm[4 : 4 + algorithm[3]], algorithm[4 + algorithm[3] :]
    scheme = SCHEMES.get(oid)
    if scheme is None or parameters not in (b"", _NULL) or (parameters and not scheme.rsa):
        raise SignatureRejected(f"signature scheme {algorithm.hex()} is not one we accept")
    return scheme, signature


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
    except InvalidSignature:
        raise SignatureRejected("the AUTH signature does not verify") from None


def _asn1(algorithm: bytes) -> bytes:
    """RFC 7427 §3: ASN.1 Length octet, then the AlgorithmIdentifier."""
    return bytes([len(algorithm)]) + algorithm
