"""IKE_SA_INIT, responder side (RFC 7296 §1.2, §2.6-2.10, §2.23; RFC 7383 §2.3; RFC 7427 §4).

    SA, KE, Ni, N(NAT-D)... -> SA, KE, Nr, N(NAT-D)..., [CERTREQ], [N(FRAG)],
                               [N(SIGNATURE_HASH)]

CERTREQ (§3.7) names the trust anchors of the certificate profiles, when there are any.

The edge admitted the request (cookies, per-source limits); here the proposal is chosen,
the DH done and the keys derived. What IKE_AUTH needs of this exchange (both messages and
nonces, §2.15) is kept as an :class:`InitExchange`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from vpnaaa.ike import keys, proposal, transforms
from vpnaaa.ike.common import (
    ZERO_SPI,
    EndCause,
    Ending,
    derive,
    describe_proposal,
    log,
    nat_hash,
    notify,
    valid_nonce,
)
from vpnaaa.ike.const import CertEncoding, HashAlgorithm, NotifyType, PayloadType
from vpnaaa.ike.effects import Drop, Effects, Exchanged, Keyed, Send
from vpnaaa.ike.message import (
    CertificateRequest,
    Entry,
    Header,
    Ke,
    Message,
    Nonce,
    Sa,
    encode_message,
)

if TYPE_CHECKING:
    from vpnaaa.ike.sa import IkeSa

SIGNATURE_HASHES = (HashAlgorithm.SHA2_256, HashAlgorithm.SHA2_384, HashAlgorithm.SHA2_512)


@dataclass(frozen=True)
class InitExchange:
    """The IKE_SA_INIT messages and nonces the AUTH payloads sign (§2.15), and the
    signature hashes the peer announced (RFC 7427 §4)."""

    request: bytes = field(repr=False)
    response: bytes = field(repr=False)
    ni: bytes = field(repr=False)
    nr: bytes = field(repr=False)
    signature_hashes: frozenset[int] = frozenset()


def respond(sa: IkeSa, message: Message, raw: bytes) -> Effects:
    """Answer the IKE_SA_INIT request ``message`` (``raw``: its octets, signed later)."""
    header = message.header
    offer, ke, nonce = (
        message.get(PayloadType.SA),
        message.get(PayloadType.KE),
        message.get(PayloadType.NONCE),
    )
    if not isinstance(offer, Sa) or not isinstance(ke, Ke) or not isinstance(nonce, Nonce):
        return _refuse(sa, header, notify(NotifyType.INVALID_SYNTAX), "SA, KE or Ni missing")
    if not valid_nonce(nonce.data):
        return _refuse(sa, header, notify(NotifyType.INVALID_SYNTAX), "bad nonce size")
    choice = proposal.select(offer.proposals, sa.ike_policy, ke.group)
    if choice is None:
        offered = "; ".join(describe_proposal(p) for p in offer.proposals)
        return _refuse(
            sa,
            header,
            notify(NotifyType.NO_PROPOSAL_CHOSEN),
            f"no acceptable proposal in {offered}",
        )
    assert choice.dh is not None and choice.prf is not None
    if choice.dh.id != ke.group:
        return _refuse(
            sa,
            header,
            notify(NotifyType.INVALID_KE_PAYLOAD, struct.pack("!H", choice.dh.id)),
            f"KE group {ke.group}, we want {choice.dh.name}",
        )
    try:
        public, shared = sa.context.diffie_hellman(ke.group, ke.data)
    except transforms.InvalidPublicValue as e:
        return _refuse(sa, header, notify(NotifyType.INVALID_SYNTAX), f"KE: {e}")
    ni, nr = nonce.data, sa.context.nonce()
    seed = keys.skeyseed(transforms.prf_for(choice.prf.id), ni, nr, shared)
    sa.crypto = derive(choice, seed, ni, nr, sa.spi_i, sa.spi_r)
    sa.nat_detected = _nat_detected(sa, message)
    sa.fragmentation = message.notify(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED) is not None
    hashes = message.notify(NotifyType.SIGNATURE_HASH_ALGORITHMS)
    entries: list[Entry] = [
        (PayloadType.SA, Sa((proposal.accepted(choice, b""),))),
        (PayloadType.KE, Ke(ke.group, public)),
        (PayloadType.NONCE, Nonce(nr)),
        notify(NotifyType.NAT_DETECTION_SOURCE_IP, nat_hash(sa.spi_i, sa.spi_r, sa.local)),
        notify(NotifyType.NAT_DETECTION_DESTINATION_IP, nat_hash(sa.spi_i, sa.spi_r, sa.remote)),
    ]
    authorities = sa.context.certificate_authorities  # §3.7: whom client certificates chain to
    if authorities:
        entries.append(
            (PayloadType.CERTREQ, CertificateRequest(CertEncoding.X509_SIGNATURE, authorities))
        )
    if sa.fragmentation:
        entries.append(notify(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED))
    announced: frozenset[int] = frozenset()
    if hashes is not None:
        data = hashes.data
        announced = frozenset(
            int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data) - 1, 2)
        )
        ours = b"".join(struct.pack("!H", h) for h in SIGNATURE_HASHES)
        entries.append(notify(NotifyType.SIGNATURE_HASH_ALGORITHMS, ours))
    sa.ike_choice = choice
    response = encode_message(sa.response_header(header), entries)
    sa.auth.exchange = InitExchange(raw, response, ni, nr, announced)
    log.debug(
        "{sa}: IKE_SA_INIT {suite}{nat}",
        sa=sa.name,
        suite=sa.suite,
        nat=", NAT detected" if sa.nat_detected else "",
    )
    ok = Exchanged(header.exchange, False, "ok")
    return (Keyed.of(sa), *sa.remember(header, [response]), ok)


def _refuse(sa: IkeSa, header: Header, entry: Entry, reason: str) -> Effects:
    """An unencrypted error response with a zero responder SPI; no state is kept.
    Anyone can cause one, so the line goes through the edge's throttled log."""
    response = encode_message(replace(sa.response_header(header), spi_r=ZERO_SPI), [entry])
    line = f"{sa.remote.host}:{sa.remote.port}: IKE_SA_INIT refused: {reason}"
    refused = Exchanged.of(header.exchange, False, (entry[1],))
    return sa.end(
        (Send((response,)), refused, Drop("init-refused", line)),
        Ending(EndCause.REFUSED, "IKE_SA_INIT refused"),
    )


def _nat_detected(sa: IkeSa, message: Message) -> bool:
    """RFC 7296 §2.23: the request's hashes use a zero responder SPI."""
    sources = [
        n.data
        for n in message.all(PayloadType.NOTIFY)
        if n.notify_type == NotifyType.NAT_DETECTION_SOURCE_IP
    ]
    destination = message.notify(NotifyType.NAT_DETECTION_DESTINATION_IP)
    peer_behind = bool(sources) and nat_hash(sa.spi_i, ZERO_SPI, sa.remote) not in sources
    we_behind = destination is not None and destination.data != nat_hash(
        sa.spi_i, ZERO_SPI, sa.local
    )
    return peer_behind or we_behind
