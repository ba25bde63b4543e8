"""Policies and proposal selection (RFC 7296 §2.7, §3.3).

A policy is an ordered list of allowed algorithms per transform type, written with the
names administrators know from strongSwan and the ASA (``aes256``, ``aes128gcm16``,
``sha256``, ``modp2048``, ``ecp256``, ``curve25519``). The responder walks the
initiator's proposals in its order and takes the first one that offers an allowed
algorithm of every required type, choosing within it by the policy's preference — except
that the group of the initiator's KE payload wins when allowed, which saves the
INVALID_KE_PAYLOAD round trip (§1.2).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vpnaaa.ike.const import DhGroup, EncrId, Esn, IntegId, PrfId, ProtocolId, TransformType
from vpnaaa.ike.message import Proposal, Transform


class PolicyError(ValueError):
    """An unknown algorithm name in the configuration."""


@dataclass(frozen=True)
class Algorithm:
    """One transform as the policy names it: type, IANA id and key length attribute."""

    name: str
    type: TransformType
    id: int
    key_length: int | None = None

    def matches(self, transform: Transform) -> bool:
        return (
            transform.type == self.type
            and transform.id == self.id
            and transform.key_length == self.key_length
            and not transform.other_attributes
        )

    def transform(self) -> Transform:
        return Transform(self.type, self.id, self.key_length)


_E, _P, _I, _D = TransformType.ENCR, TransformType.PRF, TransformType.INTEG, TransformType.DH
ALGORITHMS = {
    a.name: a
    for a in (
        Algorithm("3des", _E, EncrId.DES3),
        Algorithm("aes128", _E, EncrId.AES_CBC, 128),
        Algorithm("aes192", _E, EncrId.AES_CBC, 192),
        Algorithm("aes256", _E, EncrId.AES_CBC, 256),
        Algorithm("aes128gcm16", _E, EncrId.AES_GCM_16, 128),
        Algorithm("aes256gcm16", _E, EncrId.AES_GCM_16, 256),
        Algorithm("chacha20poly1305", _E, EncrId.CHACHA20_POLY1305),
        Algorithm("prfsha1", _P, PrfId.HMAC_SHA1),
        Algorithm("prfsha256", _P, PrfId.HMAC_SHA2_256),
        Algorithm("prfsha384", _P, PrfId.HMAC_SHA2_384),
        Algorithm("prfsha512", _P, PrfId.HMAC_SHA2_512),
        Algorithm("md5", _I, IntegId.HMAC_MD5_96),
        Algorithm("sha1", _I, IntegId.HMAC_SHA1_96),
        Algorithm("sha256", _I, IntegId.HMAC_SHA2_256_128),
        Algorithm("sha384", _I, IntegId.HMAC_SHA2_384_192),
        Algorithm("sha512", _I, IntegId.HMAC_SHA2_512_256),
        Algorithm("modp1024", _D, DhGroup.MODP1024),
        Algorithm("modp1536", _D, DhGroup.MODP1536),
        Algorithm("modp2048", _D, DhGroup.MODP2048),
        Algorithm("modp3072", _D, DhGroup.MODP3072),
        Algorithm("modp4096", _D, DhGroup.MODP4096),
        Algorithm("ecp256", _D, DhGroup.ECP256),
        Algorithm("ecp384", _D, DhGroup.ECP384),
        Algorithm("ecp521", _D, DhGroup.ECP521),
        Algorithm("curve25519", _D, DhGroup.CURVE25519),
    )
}
AEAD = {EncrId.AES_GCM_16, EncrId.CHACHA20_POLY1305}
# The weak surface in one place: accepted because Windows offers them out of the box (SHA1,
# MODP1024; 3DES on Windows 7), but a session using one is marked in the session view and
# its ESTABLISHED line (RFC 8247 §2.1-2.4: 3DES, SHA1 integrity, MODP1024/1536 are not
# recommended or worse).
WEAK = frozenset({"3des", "md5", "sha1", "prfsha1", "modp1024", "modp1536"})

# Strong choices first; what Windows (AES-CBC, SHA1, MODP1024), iOS/macOS (AES-256, SHA2,
# MODP2048/ECP256) and Android 11+ (MODP2048+/Curve25519, GCM or SHA2) offer is included.
DEFAULT_IKE = (
    "aes256gcm16", "aes128gcm16", "chacha20poly1305", "aes256", "aes128",
    "prfsha256", "prfsha384", "prfsha512", "prfsha1",
    "sha256", "sha384", "sha512", "sha1",
    "curve25519", "ecp256", "ecp384", "ecp521", "modp2048", "modp3072", "modp4096", "modp1024",
)  # fmt: skip
DEFAULT_ESP = (
    "aes256gcm16", "aes128gcm16", "chacha20poly1305", "aes256", "aes128",
    "sha256", "sha384", "sha512", "sha1",
)  # fmt: skip
LEGACY_WINDOWS7 = ("3des",)  # added by ike.legacy_windows7 for both IKE and ESP


@dataclass(frozen=True)
class Policy:
    """Allowed algorithms per transform type, most preferred first."""

    protocol: ProtocolId
    algorithms: tuple[Algorithm, ...]

    @classmethod
    def from_names(cls, protocol: ProtocolId, names: Sequence[str]) -> Policy:
        unknown = [n for n in names if n not in ALGORITHMS]
        if unknown:
            raise PolicyError(
                f"unknown algorithm(s) {', '.join(unknown)}; known: {', '.join(ALGORITHMS)}"
            )
        return cls(protocol, tuple(ALGORITHMS[n] for n in names))

    def allowed(self, kind: TransformType) -> tuple[Algorithm, ...]:
        return tuple(a for a in self.algorithms if a.type == kind)

    def groups(self) -> tuple[int, ...]:
        return tuple(a.id for a in self.allowed(_D))

    def without_groups(self, groups: frozenset[int]) -> Policy | None:
        """This policy less the DH ``groups``; None if no group would be left."""
        kept = tuple(a for a in self.algorithms if not (a.type == _D and a.id in groups))
        if not any(a.type == _D for a in kept):
            return None
        return Policy(self.protocol, kept)


@dataclass(frozen=True)
class Choice:
    """The accepted proposal: one transform per type, echoed with the original number."""

    proposal: Proposal
    encr: Algorithm
    integ: Algorithm | None
    prf: Algorithm | None
    dh: Algorithm | None
    esn: int | None

    @property
    def aead(self) -> bool:
        return self.encr.id in AEAD

    @property
    def weak(self) -> tuple[str, ...]:
        """The names of the chosen algorithms that are in :data:`WEAK`."""
        chosen = (self.encr, self.integ, self.prf, self.dh)
        return tuple(a.name for a in chosen if a is not None and a.name in WEAK)


def _pick(policy: Policy, kind: TransformType, offered: Sequence[Transform]) -> Algorithm | None:
    for algorithm in policy.allowed(kind):
        if any(algorithm.matches(t) for t in offered):
            return algorithm
    return None


def select(
    proposals: Sequence[Proposal], policy: Policy, ke_group: int | None = None
) -> Choice | None:
    """The first acceptable proposal of the initiator (§2.7), or None (NO_PROPOSAL_CHOSEN).

    IKE proposals need ENCR, PRF, DH and (unless AEAD) INTEG; ESP proposals need ENCR,
    INTEG unless AEAD, and ESN (NO preferred). DH transforms in ESP proposals are ignored
    without a KE payload (the first CHILD_SA in IKE_AUTH, §1.2, takes its keys from the
    IKE SA's exchange); with one (``ke_group``) a matching allowed group is required.
    """
    for proposal in proposals:
        if proposal.protocol != policy.protocol:
            continue
        by_type: dict[int, list[Transform]] = {}
        for transform in proposal.transforms:
            by_type.setdefault(transform.type, []).append(transform)
        encr = _pick(policy, _E, by_type.get(_E, ()))
        if encr is None:
            continue
        aead = encr.id in AEAD
        integ = None
        if not aead:
            integ = _pick(policy, _I, by_type.get(_I, ()))
            if integ is None:
                continue
        elif any(t.id != IntegId.NONE for t in by_type.get(_I, ())) and not any(
            t.id == IntegId.NONE for t in by_type.get(_I, ())
        ):
            continue  # an AEAD cipher with only real integrity algorithms is inconsistent
        prf = dh = esn = None
        if policy.protocol == ProtocolId.IKE:
            prf = _pick(policy, _P, by_type.get(_P, ()))
            dh = _pick_group(policy, by_type.get(_D, ()), ke_group)
            if prf is None or dh is None:
                continue
        else:
            esns = {t.id for t in by_type.get(TransformType.ESN, ())}
            esn = Esn.NO if Esn.NO in esns or not esns else Esn.YES
            if ke_group is not None:
                dh = _pick_group(policy, by_type.get(_D, ()), ke_group)
                if dh is None:
                    continue
        return Choice(proposal, encr, integ, prf, dh, esn)
    return None


def _pick_group(
    policy: Policy, offered: Sequence[Transform], ke_group: int | None
) -> Algorithm | None:
    if ke_group is not None:
        for algorithm in policy.allowed(_D):
            if algorithm.id == ke_group and any(algorithm.matches(t) for t in offered):
                return algorithm
    return _pick(policy, _D, offered)


def accepted(choice: Choice, spi: bytes) -> Proposal:
    """The single proposal the responder returns (§3.3): same number, our SPI."""
    transforms = [choice.encr.transform()]
    if choice.prf is not None:
        transforms.append(choice.prf.transform())
    if choice.integ is not None:
        transforms.append(choice.integ.transform())
    if choice.dh is not None:
        transforms.append(choice.dh.transform())
    if choice.esn is not None:
        transforms.append(Transform(TransformType.ESN, choice.esn))
    return Proposal(choice.proposal.number, choice.proposal.protocol, spi, tuple(transforms))
