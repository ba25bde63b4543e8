"""Rekeying the IKE SA, at the client's request or ours (RFC 7296 §1.3.2, §2.8, §2.8.2,
§2.18).

    SA(IKE proposal, new SPI), Ni, KEi -> SA(IKE proposal, new SPI), Nr, KEr

SKEYSEED of the new SA = prf(SK_d (old), g^ir (new) | Ni | Nr). The new SA takes over the
old one's CHILD_SAs, lease and identity; the exchange's initiator then deletes the old
one, and becomes the new SA's original initiator (its SPI first, the Initiator flag on its
messages). Simultaneous rekeys (§2.8.2): both exchanges complete; the new SA made with the
lowest of the four nonces is redundant and deleted by the side that initiated its
exchange; the other side deletes the old SA.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vpnaaa.ike import keys, proposal, transforms
from vpnaaa.ike.common import (
    EndCause,
    Ending,
    Event,
    Refused,
    State,
    derive,
    log,
    notify,
    refuse_errors,
    valid_nonce,
)
from vpnaaa.ike.const import ExchangeType, NotifyType, PayloadType, ProtocolId
from vpnaaa.ike.effects import Effects, Keyed, Rekeyed, RetryRekey, Spawn
from vpnaaa.ike.message import Entry, Header, Ke, Message, Nonce, Sa

if TYPE_CHECKING:
    from vpnaaa.ike.sa import IkeSa

REKEYED = Ending(EndCause.GONE, "rekeyed by the gateway")


def respond(sa: IkeSa, header: Header, inner: Message, offer: Sa) -> Effects:
    """The client rekeys this IKE SA (§1.3.2): a successor with keys per §2.18 from this
    SA's SK_d takes over; the client then deletes this one."""
    nonce, ke = inner.get(PayloadType.NONCE), inner.get(PayloadType.KE)
    if not isinstance(nonce, Nonce) or not isinstance(ke, Ke) or not valid_nonce(nonce.data):
        return sa.respond(header, [notify(NotifyType.INVALID_SYNTAX)])
    choice = proposal.select(offer.proposals, sa.context.ike_policy, ke.group)
    if choice is None:
        return sa.respond(header, [notify(NotifyType.NO_PROPOSAL_CHOSEN)])
    assert choice.dh is not None and sa.crypto is not None
    if choice.dh.id != ke.group:
        data = struct.pack("!H", choice.dh.id)
        return sa.respond(header, [notify(NotifyType.INVALID_KE_PAYLOAD, data)])
    if not valid_ike_spi(choice.proposal.spi):
        return sa.respond(header, [notify(NotifyType.INVALID_SYNTAX)])
    busy = _busy(sa)
    if busy is not None:  # §2.25: a temporary condition, such as a rekeying operation
        log.info("{sa}: IKE rekey refused for now: {why}", sa=sa.name, why=busy)
        return sa.respond(header, [notify(NotifyType.TEMPORARY_FAILURE)])
    try:
        public, shared = sa.context.diffie_hellman(ke.group, ke.data)
    except transforms.InvalidPublicValue:
        return sa.respond(header, [notify(NotifyType.INVALID_SYNTAX)])
    successor = type(sa)(sa.context, choice.proposal.spi, sa.local, sa.remote)
    nr = sa.context.nonce()
    seed = keys.rekeyed_skeyseed(sa.crypto.prf, sa.crypto.keys.sk_d, shared, nonce.data, nr)
    successor.crypto = derive(choice, seed, nonce.data, nr, successor.spi_i, successor.spi_r)
    successor.ike_choice = choice
    request = sa.outstanding
    if request is not None and isinstance(request.task, RekeyIke):
        request.task.collision = (successor, nonce.data, nr)
    successor.take_over(sa)
    _rekeyed(sa, successor, choice)
    entries: list[Entry] = [
        (PayloadType.SA, Sa((proposal.accepted(choice, successor.spi_r),))),
        (PayloadType.NONCE, Nonce(nr)),
        (PayloadType.KE, Ke(ke.group, public)),
    ]
    return (Keyed.of(successor), *sa.respond(header, entries), Rekeyed(sa, successor))


def _busy(sa: IkeSa) -> str | None:
    """Why the IKE SA cannot be rekeyed right now, or None: a CHILD_SA of ours is being
    rekeyed or installed (it would be left behind on this SA), or this SA's predecessor
    is not gone yet (a client rekeying in a loop would pile up SAs)."""
    request = sa.outstanding
    if (request is not None and request.task.kind == "rekey-child") or sa.installing:
        return "a CHILD_SA of it is being rekeyed"
    if sa.predecessor is not None and sa.predecessor.state != State.CLOSED:
        return "the IKE SA it replaced is not deleted yet"
    return None


def valid_ike_spi(spi: bytes) -> bool:
    """Eight octets, not zero (§3.1)."""
    return len(spi) == 8 and spi != bytes(8)


@dataclass
class RekeyIke:
    """Our rekey of the IKE SA (§1.3.2): its negotiated proposal with a new SPI, a nonce
    and a KE of its group."""

    kind: str = "rekey-ike"
    exchange: int = ExchangeType.CREATE_CHILD_SA
    spi: bytes = b""
    ni: bytes = field(default=b"", repr=False)
    private: object = field(default=None, repr=False)
    # the client's rekey answered meanwhile (§2.8.2): the SA it made, that exchange's nonces
    collision: tuple[IkeSa, bytes, bytes] | None = None

    def request(self, sa: IkeSa) -> list[Entry] | None:
        choice = sa.ike_choice
        if sa.rekeyed or choice is None or choice.dh is None:
            return None  # the client rekeyed it first
        context = sa.context
        self.spi, self.ni = context.random_bytes(8), context.nonce()
        self.private, public = context.dh_generate(choice.dh.id)
        return [
            (PayloadType.SA, Sa((proposal.accepted(choice, self.spi),))),
            (PayloadType.NONCE, Nonce(self.ni)),
            (PayloadType.KE, Ke(choice.dh.id, public)),
        ]

    def answered(self, sa: IkeSa, response: Message) -> Effects:
        try:
            choice, nr, ke = _accepted(sa, response)
            shared = transforms.group_for(ke.group).shared_secret(self.private, ke.data)
        except (Refused, transforms.InvalidPublicValue) as e:
            log.info("{sa}: our IKE rekey failed: {reason}", sa=sa.name, reason=str(e))
            return (RetryRekey(),)  # §2.25: not at once; before the hard lifetime
        assert sa.crypto is not None
        peer_spi = choice.proposal.spi
        new = type(sa)(sa.context, self.spi, sa.local, sa.remote, spi_r=peer_spi, initiator=True)
        seed = keys.rekeyed_skeyseed(sa.crypto.prf, sa.crypto.keys.sk_d, shared, self.ni, nr)
        new.crypto = derive(choice, seed, self.ni, nr, self.spi, peer_spi, initiator=True)
        new.ike_choice, new.port = choice, sa.port
        return (Keyed.of(new), *self._adopt(sa, new, nr))

    def _adopt(self, sa: IkeSa, new: IkeSa, nr: bytes) -> Effects:
        """Where the IKE SA our rekey made goes: the session moves to it, or it is
        redundant (§2.8.2) or unwanted, and deleted."""
        choice = new.ike_choice
        assert choice is not None
        if sa.closing:  # §2.25.2: we are deleting it; the session must not move on
            return _unwanted(new, f"the session is being deleted ({sa.closing_cause})")
        if self.collision is None:
            new.take_over(sa)
            _rekeyed(sa, new, choice)
            return (Rekeyed(sa, new), *sa.delete(REKEYED))
        theirs, their_ni, our_nr = self.collision
        if min(self.ni, nr, their_ni, our_nr) in (self.ni, nr):
            return _unwanted(new, "redundant: the client's simultaneous IKE rekey won (§2.8.2)")
        new.take_over(theirs)  # ours won: the client deletes its redundant one
        _rekeyed(sa, new, choice)
        return (Rekeyed(theirs, new), *sa.delete(REKEYED))


def _unwanted(new: IkeSa, why: str) -> Effects:
    """The IKE SA our rekey made holds no session: serve it until the client answers
    our Delete of it."""
    new.transition(Event.REKEYED_IN)
    new.rekeyed = True  # holds no session
    log.info("{sa}: {why}", sa=new.name, why=why)
    return (Spawn(new, new.delete(Ending(EndCause.GONE, why))),)


def _accepted(sa: IkeSa, response: Message) -> tuple[proposal.Choice, bytes, Ke]:
    """The client's answer to our IKE rekey: its choice from our one proposal, Nr and
    KEr; :class:`Refused` says why it gives no new SA."""
    refuse_errors(response)
    accepted, nonce, ke = (
        response.get(PayloadType.SA),
        response.get(PayloadType.NONCE),
        response.get(PayloadType.KE),
    )
    if not isinstance(accepted, Sa) or not isinstance(nonce, Nonce) or not isinstance(ke, Ke):
        raise Refused("SA, Nr or KEr missing")
    if not valid_nonce(nonce.data):
        raise Refused("bad nonce size")
    choice = proposal.select(accepted.proposals, sa.context.ike_policy, ke.group)
    ours = sa.ike_choice
    if (
        choice is None
        or ours is None
        or choice.proposal.protocol != ProtocolId.IKE
        or not valid_ike_spi(choice.proposal.spi)
        or proposal.accepted(choice, b"") != proposal.accepted(ours, b"")
        or choice.dh is None
        or choice.dh.id != ke.group
    ):
        raise Refused("the accepted proposal is not the one we offered")
    return choice, nonce.data, ke


def _rekeyed(old: IkeSa, new: IkeSa, choice: proposal.Choice) -> None:
    assert choice.dh is not None
    log.info(
        "{sa}: rekeyed as {new} ({encr}/{group})",
        sa=old.name,
        new=new.name,
        encr=choice.encr.name,
        group=choice.dh.name,
    )
