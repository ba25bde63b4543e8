"""CHILD_SAs: created and rekeyed at the client's request, rekeyed at ours (RFC 7296 §1.3,
§2.8, §2.8.1, §2.9, §2.17).

    client: [N(REKEY_SA)], SA, Ni, [KEi], TSi, TSr -> SA, Nr, [KEr], TSi, TSr
    gateway: N(REKEY_SA), SA, Ni, [KEi], TSi, TSr  -> SA, Nr, [KEr], TSi, TSr, then Delete(old)

The responder of a rekey installs the new CHILD_SA's inbound SA at once and its outbound
SA only when the old one goes: the initiator installs after our response, and ESP sent on
the new SA before that would be lost. Simultaneous rekeys of one CHILD_SA (§2.8.1): both
exchanges complete; the one with the lowest of the four nonces made the redundant SA,
which its initiator deletes; the other's initiator deletes the old SA.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vpnaaa.ike import keys, proposal, transforms
from vpnaaa.ike.common import (
    Child,
    Refused,
    describe_proposal,
    log,
    notify,
    refuse_errors,
    valid_nonce,
)
from vpnaaa.ike.const import ExchangeType, NotifyType, PayloadType, ProtocolId
from vpnaaa.ike.effects import ChildUp, Effects, Install, InstallOutbound, RetryRekey
from vpnaaa.ike.message import (
    Entry,
    Header,
    Ke,
    Message,
    Nonce,
    Notify,
    Sa,
    TrafficSelector,
    TrafficSelectors,
)
from vpnaaa.ike.tasks import ike_rekey, informational
from vpnaaa.kernel.installer import ChildSaSpec, Selector

if TYPE_CHECKING:
    from vpnaaa.ike.sa import IkeSa

# CHILD_SAs one IKE SA may hold (rekeyed ones until their predecessor goes included):
# clients use one or two; each costs two kernel SAs and three policies (§3.10.1:
# NO_ADDITIONAL_SAS past it)
MAX_CHILD_SAS = 16


def create_child_sa(sa: IkeSa, header: Header, inner: Message) -> Effects:
    """CREATE_CHILD_SA from the client (§1.3): a new or rekeyed (REKEY_SA) CHILD_SA, or a
    rekey of the IKE SA itself."""
    if sa.closing:  # §2.25.2: we are deleting it; a rekey must not carry it on
        return sa.respond(header, [notify(NotifyType.TEMPORARY_FAILURE)])
    if sa.rekeyed:  # §1.3.2: its successor holds everything; only a Delete is due
        return sa.respond(header, [notify(NotifyType.NO_ADDITIONAL_SAS)])
    offer = inner.get(PayloadType.SA)
    if isinstance(offer, Sa) and any(p.protocol == ProtocolId.IKE for p in offer.proposals):
        return ike_rekey.respond(sa, header, inner, offer)
    rekey = inner.notify(NotifyType.REKEY_SA)
    old = None
    if rekey is not None:
        # §1.3.3: the SPI the exchange initiator expects inbound, i.e. our outbound SPI.
        spi = int.from_bytes(rekey.spi, "big")
        old = next((c for c in sa.children.values() if c.spec.outbound_spi == spi), None)
        if old is None:
            # §2.25.1: one we are deleting (our Delete unanswered) is a temporary condition
            closing = any(spec.outbound_spi == spi for spec in sa.deleting.values())
            kind = NotifyType.TEMPORARY_FAILURE if closing else NotifyType.CHILD_SA_NOT_FOUND
            return sa.respond(header, [notify(kind)])
        if old.successor is not None or sa.installing:  # rekeyed already, or being so
            return sa.respond(header, [notify(NotifyType.TEMPORARY_FAILURE)])
    if len(sa.children) >= MAX_CHILD_SAS:
        log.info(
            "{sa}: CREATE_CHILD_SA refused: {n} CHILD_SAs already", sa=sa.name, n=len(sa.children)
        )
        return sa.respond(header, [notify(NotifyType.NO_ADDITIONAL_SAS)])
    nonce = inner.get(PayloadType.NONCE)
    if not isinstance(nonce, Nonce) or not valid_nonce(nonce.data):
        return sa.respond(header, [notify(NotifyType.INVALID_SYNTAX)])
    nr = sa.context.nonce()
    ke = inner.get(PayloadType.KE)
    ke = ke if isinstance(ke, Ke) else None
    entries: list[Entry] = [(PayloadType.NONCE, Nonce(nr))]
    return negotiate(sa, header, inner, entries, nonce.data, nr, ke, old)


def negotiate(
    sa: IkeSa,
    header: Header,
    request: Message,
    entries: list[Entry],
    ni: bytes,
    nr: bytes,
    ke: Ke | None = None,
    old: Child | None = None,
) -> Effects:
    """Negotiate the CHILD_SA of the client's ``request`` (SA, TSi, TSr; with ``ke``, a KE
    for PFS, §1.3.1) and hand it to the installer; child failures are notifies, the IKE
    SA stays (§1.2). A rekey of ``old`` keeps its reqid (the kernel policies)."""
    offer, tsi, tsr = (
        request.get(PayloadType.SA),
        request.get(PayloadType.TSi),
        request.get(PayloadType.TSr),
    )
    if (
        not isinstance(offer, Sa)
        or not isinstance(tsi, TrafficSelectors)
        or not isinstance(tsr, TrafficSelectors)
    ):
        return sa.respond(header, entries)  # no CHILD_SA asked for
    choice = proposal.select(offer.proposals, sa.context.esp_policy, ke and ke.group)
    if choice is None:
        log.info(
            "{sa}: no acceptable ESP proposal in {offered}",
            sa=sa.name,
            offered="; ".join(describe_proposal(p) for p in offer.proposals),
        )
        return sa.respond(header, [*entries, notify(NotifyType.NO_PROPOSAL_CHOSEN)])
    narrowed = _narrow(sa, tsi.selectors, tsr.selectors)
    if narrowed is None:
        log.info(
            "{sa}: traffic selectors unacceptable: TSi {tsi} TSr {tsr}",
            sa=sa.name,
            tsi=_selectors(tsi.selectors),
            tsr=_selectors(tsr.selectors),
        )
        return sa.respond(header, [*entries, notify(NotifyType.TS_UNACCEPTABLE)])
    theirs, ours = narrowed
    peer_spi = choice.proposal.spi
    if not valid_esp_spi(peer_spi):
        return sa.respond(header, [*entries, notify(NotifyType.INVALID_SYNTAX)])
    shared = b""
    if ke is not None:
        assert choice.dh is not None  # select() requires a group when there is a KE
        if choice.dh.id != ke.group:  # §1.3: the KE must be of the chosen group
            data = struct.pack("!H", choice.dh.id)
            return sa.respond(header, [notify(NotifyType.INVALID_KE_PAYLOAD, data)])
        try:
            public, shared = sa.context.diffie_hellman(ke.group, ke.data)
        except transforms.InvalidPublicValue:
            return sa.respond(header, [*entries, notify(NotifyType.INVALID_SYNTAX)])
        entries = [*entries, (PayloadType.KE, Ke(ke.group, public))]
    inbound_spi = sa.context.child_spi()
    material = _keymat(sa, choice, ni, nr, shared)
    spec = _spec(
        sa,
        choice,
        inbound_spi,
        int.from_bytes(peer_spi, "big"),
        inbound=(material.encr_i, material.integ_i),
        outbound=(material.encr_r, material.integ_r),
        selectors=(theirs, ours),
        reqid=old.spec.reqid if old is not None else None,
    )
    entries = [
        *entries,
        (PayloadType.SA, Sa((proposal.accepted(choice, inbound_spi.to_bytes(4, "big")),))),
        (PayloadType.TSi, TrafficSelectors(theirs)),
        (PayloadType.TSr, TrafficSelectors(ours)),
    ]
    new = Child(spec, choice, theirs, ours, outbound=old is None)
    if old is not None:
        _collide(sa, old, new, ni, nr)

    def installed(spec: ChildSaSpec, error: str | None, transient: bool) -> Effects:
        sa.working = None
        if error is not None:
            _not_installed(sa, spec, error)
            kind = NotifyType.TEMPORARY_FAILURE if transient else NotifyType.NO_PROPOSAL_CHOSEN
            refused = [
                e for e in entries if e[0] not in (PayloadType.SA, PayloadType.TSi, PayloadType.TSr)
            ]
            return sa.respond(header, [*refused, notify(kind)])
        _add(sa, new)
        if old is not None and old.spec.inbound_spi in sa.children:
            old.successor = spec.inbound_spi
        elif old is not None:  # the old one went while the kernel worked: send at once
            new.outbound = True
            return (InstallOutbound(spec), ChildUp(spec), *sa.respond(header, entries))
        return (ChildUp(spec), *sa.respond(header, entries))

    sa.working = header.message_id
    sa.installing[spec.inbound_spi] = installed
    return (Install(spec, outbound=new.outbound),)


def activate_successor(sa: IkeSa, gone: Child) -> Effects:
    """``gone`` left: the CHILD_SA that rekeyed it at the client's request sends now."""
    successor = sa.children.get(gone.successor) if gone.successor is not None else None
    if successor is None or successor.outbound:
        return ()
    successor.outbound = True
    return (InstallOutbound(successor.spec),)


@dataclass
class RekeyChild:
    """Our rekey of the CHILD_SA with inbound SPI ``old`` (§1.3.3, §2.8): the same
    proposal and selectors, a new SPI and nonce, a KE of its PFS group if it had one."""

    old: int
    kind: str = "rekey-child"
    exchange: int = ExchangeType.CREATE_CHILD_SA
    spi: int = 0
    ni: bytes = field(default=b"", repr=False)
    private: object = field(default=None, repr=False)
    offered: proposal.Choice | None = None  # the old CHILD_SA's, offered again
    # the client's rekey of the same CHILD_SA answered meanwhile (§2.8.1): its new
    # CHILD_SA's inbound SPI, and that exchange's nonces
    collision: tuple[int, bytes, bytes] | None = None

    def request(self, sa: IkeSa) -> list[Entry] | None:
        old = sa.children.get(self.old)
        if old is None or old.successor is not None:
            return None  # deleted, or the client rekeyed it first
        old.rekeying = True
        context = sa.context
        self.offered = old.choice
        self.spi, self.ni = context.child_spi(), context.nonce()
        offer = proposal.accepted(old.choice, self.spi.to_bytes(4, "big"))
        spi = old.spec.inbound_spi.to_bytes(4, "big")
        entries: list[Entry] = [
            (PayloadType.NOTIFY, Notify(NotifyType.REKEY_SA, b"", ProtocolId.ESP, spi)),
            (PayloadType.SA, Sa((offer,))),
            (PayloadType.NONCE, Nonce(self.ni)),
        ]
        if old.choice.dh is not None:
            self.private, public = context.dh_generate(old.choice.dh.id)
            entries.append((PayloadType.KE, Ke(old.choice.dh.id, public)))
        return [
            *entries,
            (PayloadType.TSi, TrafficSelectors(old.ours)),
            (PayloadType.TSr, TrafficSelectors(old.theirs)),
        ]

    def answered(self, sa: IkeSa, response: Message) -> Effects:
        old = sa.children.get(self.old)
        if old is not None:
            old.rekeying = False
        try:
            choice, nr, shared = self._accepted(sa, response)
        except Refused as e:
            log.info(
                "{sa}: our rekey of CHILD_SA {spi:08x} failed: {reason}",
                sa=sa.name,
                spi=self.old,
                reason=str(e),
            )
            if old is None:
                return ()
            if e.notify == NotifyType.CHILD_SA_NOT_FOUND:  # the client has it no longer
                return sa.delete_child(self.old, "the client no longer has it")
            return (RetryRekey(self.old),)  # §2.25: not at once; before the hard lifetime
        peer_spi = int.from_bytes(choice.proposal.spi, "big")
        if old is None:  # the client deleted it meanwhile (§2.25): the new one replaces nothing
            return self._redundant(sa, peer_spi, "its predecessor was deleted during the rekey")
        if self.collision is not None:
            _, their_ni, our_nr = self.collision
            if min(self.ni, nr, their_ni, our_nr) in (self.ni, nr):
                return self._redundant(sa, peer_spi, "the client's simultaneous rekey won (§2.8.1)")
            old.successor = None  # the client deletes its redundant one; we the old one
        material = _keymat(sa, choice, self.ni, nr, shared)
        spec = _spec(
            sa,
            choice,
            self.spi,
            peer_spi,
            inbound=(material.encr_r, material.integ_r),
            outbound=(material.encr_i, material.integ_i),
            selectors=(old.theirs, old.ours),
            reqid=old.spec.reqid,
        )
        new = Child(spec, choice, old.theirs, old.ours)

        def installed(spec: ChildSaSpec, error: str | None, transient: bool) -> Effects:
            if error is not None:
                _not_installed(sa, spec, error)
                return sa.start(informational.DeleteChild(spec.inbound_spi))
            _add(sa, new)
            return (ChildUp(spec), *sa.delete_child(self.old, "rekeyed by the gateway"))

        sa.installing[spec.inbound_spi] = installed
        return (Install(spec),)

    def _accepted(self, sa: IkeSa, response: Message) -> tuple[proposal.Choice, bytes, bytes]:
        """The client's answer: its choice from our one proposal, Nr, g^ir (PFS)."""
        refuse_errors(response)
        accepted, nonce = response.get(PayloadType.SA), response.get(PayloadType.NONCE)
        if not isinstance(accepted, Sa) or not isinstance(nonce, Nonce):
            raise Refused("SA or Nr missing")
        if not valid_nonce(nonce.data):
            raise Refused("bad nonce size")
        ke = response.get(PayloadType.KE)
        group = ke.group if isinstance(ke, Ke) else None
        choice = proposal.select(accepted.proposals, sa.context.esp_policy, group)
        if (
            choice is None
            or self.offered is None
            or proposal.accepted(choice, b"") != proposal.accepted(self.offered, b"")
        ):
            raise Refused("the accepted proposal is not the one we offered")
        if not valid_esp_spi(choice.proposal.spi):
            raise Refused(f"ESP SPI {choice.proposal.spi.hex()} is reserved or malformed")
        shared = b""
        if self.private is not None:
            if choice.dh is None or group != choice.dh.id or not isinstance(ke, Ke):
                raise Refused("no KE of the CHILD_SA's group")
            try:
                shared = transforms.group_for(group).shared_secret(self.private, ke.data)
            except transforms.InvalidPublicValue as e:
                raise Refused(f"KE: {e}") from None
        return choice, nonce.data, shared

    def _redundant(self, sa: IkeSa, peer_spi: int, why: str) -> Effects:
        """The CHILD_SA this exchange made is not wanted: the client deletes its side when
        we send a Delete of our inbound SPI (we never installed ours)."""
        log.info(
            "{sa}: CHILD_SA {spi:08x} from our rekey deleted: {why}",
            sa=sa.name,
            spi=self.spi,
            why=why,
        )
        return sa.start(informational.DeleteChild(self.spi))


def valid_esp_spi(spi: bytes) -> bool:
    """Four octets, not one of the reserved values 0..255 (RFC 4303 §2.1)."""
    return len(spi) == 4 and int.from_bytes(spi, "big") > 255


def _collide(sa: IkeSa, old: Child, new: Child, ni: bytes, nr: bytes) -> None:
    """The client rekeys ``old`` while our own rekey of it is out (§2.8.1): note this
    exchange's SPI and nonces on our task, which decides when its answer comes."""
    request = sa.outstanding
    task = request.task if request is not None else None
    if old.rekeying and isinstance(task, RekeyChild) and task.old == old.spec.inbound_spi:
        task.collision = (new.spec.inbound_spi, ni, nr)


def _add(sa: IkeSa, new: Child) -> None:
    sa.children[new.spec.inbound_spi] = new
    spec = new.spec
    log.info(
        "{sa}: CHILD_SA {inbound:08x}/{outbound:08x} {encr}{integ} {local} === {remote}",
        sa=sa.name,
        inbound=spec.inbound_spi,
        outbound=spec.outbound_spi,
        encr=new.choice.encr.name,
        integ=f"/{new.choice.integ.name}" if new.choice.integ else "",
        local=",".join(str(s.network) for s in spec.local_selectors),
        remote=",".join(str(s.network) for s in spec.remote_selectors),
    )
    sa.log_weak()


def _not_installed(sa: IkeSa, spec: ChildSaSpec, error: str) -> None:
    log.error(
        "{sa}: CHILD_SA {spi:08x} not installed: {error}",
        sa=sa.name,
        spi=spec.inbound_spi,
        error=error,
    )


def _keymat(
    sa: IkeSa, choice: proposal.Choice, ni: bytes, nr: bytes, shared: bytes
) -> keys.ChildKeys:
    """KEYMAT = prf+(SK_d, [g^ir (new)] | Ni | Nr) of this exchange (§2.17)."""
    assert sa.crypto is not None
    cipher = transforms.cipher_for(choice.encr.id, choice.encr.key_length)
    integrity = transforms.integrity_for(choice.integ.id) if choice.integ else None
    return keys.child_keys(sa.crypto.prf, sa.crypto.keys.sk_d, cipher, integrity, ni, nr, shared)


def _spec(
    sa: IkeSa,
    choice: proposal.Choice,
    inbound_spi: int,
    outbound_spi: int,
    *,
    inbound: tuple[bytes, bytes],
    outbound: tuple[bytes, bytes],
    selectors: tuple[Sequence[TrafficSelector], Sequence[TrafficSelector]],
    reqid: int | None,
) -> ChildSaSpec:
    """The kernel's view of a CHILD_SA (RFC 4301 §4.4.2), with its lifetimes."""
    theirs, ours = selectors
    soft, hard = sa.context.lifetimes(sa.context.child_lifetime)
    return ChildSaSpec(
        reqid=reqid if reqid is not None else sa.context.next_reqid(),
        local_address=sa.local.host,
        remote_address=sa.remote.host,
        inbound_spi=inbound_spi,
        outbound_spi=outbound_spi,
        encr_id=choice.encr.id,
        encr_key_length=choice.encr.key_length,
        integ_id=choice.integ.id if choice.integ else None,
        inbound_encr_key=inbound[0],
        inbound_integ_key=inbound[1],
        outbound_encr_key=outbound[0],
        outbound_integ_key=outbound[1],
        local_selectors=_kernel_selectors(ours),
        remote_selectors=_kernel_selectors(theirs),
        esn=choice.esn == 1,
        encapsulation=(sa.local.port, sa.remote.port) if sa.nat_detected else None,
        soft_lifetime=int(soft),
        hard_lifetime=int(hard),
    )


def _narrow(
    sa: IkeSa, tsi: Sequence[TrafficSelector], tsr: Sequence[TrafficSelector]
) -> tuple[tuple[TrafficSelector, ...], tuple[TrafficSelector, ...]] | None:
    """RFC 7296 §2.9: the client's side narrows to its virtual IP (or its own address
    without one), our side to the part of what it asked for in the same family.
    Selectors of the other family are dropped (no IPv6 pool)."""
    own = sa.virtual_ip or ipaddress.ip_address(sa.remote.host)
    theirs = [
        TrafficSelector(own, own, s.ip_protocol, s.start_port, s.end_port)
        for s in tsi
        if s.start_address.version == own.version and s.start_address <= own <= s.end_address
    ]
    ours = [s for s in tsr if s.start_address.version == own.version]
    if not theirs or not ours:
        return None
    return tuple(theirs[:1]), tuple(ours)


def _kernel_selectors(selectors: Sequence[TrafficSelector]) -> tuple[Selector, ...]:
    """Address ranges (§3.13.1) as the kernel takes them: one selector per CIDR block of
    each range, so a range that is not one prefix is covered exactly, never widened."""
    return tuple(
        Selector(network, s.ip_protocol, s.start_port, s.end_port)
        for s in selectors
        for network in ipaddress.summarize_address_range(s.start_address, s.end_address)
    )


def _selectors(selectors: Sequence[TrafficSelector]) -> str:
    return ", ".join(f"{s.start_address}-{s.end_address}" for s in selectors)
