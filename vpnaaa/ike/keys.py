"""IKEv2 key derivation: IKE SA keys (RFC 7296 §2.14, §2.18), Child SA keying material
(§2.17) and the AUTH payload's signed octets and shared-key MAC (§2.15, §2.16).

    SKEYSEED  = prf(Ni | Nr, g^ir)                     (a new IKE SA)
    SKEYSEED  = prf(SK_d (old), g^ir (new) | Ni | Nr)  (rekeying an IKE SA)
    {SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr}
              = prf+(SKEYSEED, Ni | Nr | SPIi | SPIr)
    KEYMAT    = prf+(SK_d, [g^ir (new) |] Ni | Nr)     (a Child SA)

Only PRFs with variable-length keys (HMAC) are supported, so the nonces are used whole.
The key fields are left out of the dataclasses' repr so that they never reach a log.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vpnaaa.ike.transforms import AnyCipher, Integrity, Prf, prf_plus

KEY_PAD = b"Key Pad for IKEv2"  # RFC 7296 §2.15: 17 ASCII characters, no NUL


@dataclass(frozen=True)
class IkeKeys:
    """The seven IKE SA keys; SK_ai/SK_ar are empty with an AEAD cipher."""

    sk_d: bytes = field(repr=False)
    sk_ai: bytes = field(repr=False)
    sk_ar: bytes = field(repr=False)
    sk_ei: bytes = field(repr=False)
    sk_er: bytes = field(repr=False)
    sk_pi: bytes = field(repr=False)
    sk_pr: bytes = field(repr=False)


@dataclass(frozen=True)
class ChildKeys:
    """A Child SA's keys: ``*_i`` protect initiator-to-responder traffic, ``*_r`` the
    other direction; integrity keys are empty with an AEAD cipher.
    """

    encr_i: bytes = field(repr=False)
    integ_i: bytes = field(repr=False)
    encr_r: bytes = field(repr=False)
    integ_r: bytes = field(repr=False)


def skeyseed(prf: Prf, ni: bytes, nr: bytes, shared_secret: bytes) -> bytes:
    """SKEYSEED of a new IKE SA (RFC 7296 §2.14)."""
    return prf(ni + nr, shared_secret)


def rekeyed_skeyseed(
    prf: Prf, old_sk_d: bytes, shared_secret: bytes, ni: bytes, nr: bytes
) -> bytes:
    """SKEYSEED of an IKE SA created by rekeying (RFC 7296 §2.18), with the old SA's PRF
    and SK_d and the CREATE_CHILD_SA exchange's nonces and new g^ir.
    """
    return prf(old_sk_d, shared_secret + ni + nr)


def _split(material: bytes, sizes: tuple[int, ...]) -> list[bytes]:
    parts = []
    offset = 0
    for size in sizes:
        parts.append(material[offset : offset + size])
        offset += size
    return parts


def ike_keys(
    prf: Prf,
    cipher: AnyCipher,
    integrity: Integrity | None,
    seed: bytes,
    ni: bytes,
    nr: bytes,
    spi_i: bytes,
    spi_r: bytes,
) -> IkeKeys:
    """The IKE SA keys from SKEYSEED (RFC 7296 §2.14). SK_d, SK_pi and SK_pr are as
    long as the PRF's output, SK_e* as the cipher's keying material (salt included,
    RFC 5282 §7.1), SK_a* as the integrity key (none with AEAD). The SPIs are 8 octets.
    """
    integ = integrity.key_size if integrity else 0
    sizes = (prf.size, integ, integ, cipher.key_size, cipher.key_size, prf.size, prf.size)
    material = prf_plus(prf, seed, ni + nr + spi_i + spi_r, sum(sizes))
    return IkeKeys(*_split(material, sizes))


def child_keys(
    prf: Prf,
    sk_d: bytes,
    cipher: AnyCipher,
    integrity: Integrity | None,
    ni: bytes,
    nr: bytes,
    shared_secret: bytes = b"",
) -> ChildKeys:
    """A Child SA's KEYMAT (RFC 7296 §2.17), split in the order the RFC takes it: all of
    initiator-to-responder before responder-to-initiator, encryption before integrity.

    ``shared_secret`` is the new g^ir of a CREATE_CHILD_SA exchange with a KE payload
    (PFS); the nonces are those of the exchange that creates the Child SA.
    """
    integ = integrity.key_size if integrity else 0
    sizes = (cipher.key_size, integ, cipher.key_size, integ)
    material = prf_plus(prf, sk_d, shared_secret + ni + nr, sum(sizes))
    return ChildKeys(*_split(material, sizes))


def signed_octets(prf: Prf, message: bytes, nonce: bytes, sk_p: bytes, id_body: bytes) -> bytes:
    """The octets an AUTH payload signs or MACs (RFC 7296 §2.15).

    For the initiator: its IKE_SA_INIT request as sent (``message``), the responder's
    nonce data, SK_pi and the body of its IDi payload (ID Type, three RESERVED octets and
    the identification data, without the generic payload header). For the responder:
    its IKE_SA_INIT response, the initiator's nonce, SK_pr and the IDr body.
    """
    return message + nonce + prf(sk_p, id_body)


def shared_key_auth(prf: Prf, secret: bytes, octets: bytes) -> bytes:
    """AUTH = prf(prf(Shared Secret, "Key Pad for IKEv2"), <SignedOctets>) (RFC 7296 §2.15)."""
    return prf(prf(secret, KEY_PAD), octets)


def eap_auth(prf: Prf, msk: bytes | None, sk_p: bytes, octets: bytes) -> bytes:
    """The AUTH that closes an EAP exchange (RFC 7296 §2.16): a shared-key AUTH keyed by
    the MSK when the EAP method produced one, else by SK_pi (the initiator's AUTH) or
    SK_pr (the responder's).
    """
    return shared_key_auth(prf, msk or sk_p, octets)
