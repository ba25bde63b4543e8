"""INFORMATIONAL exchanges, either side's: deletes and liveness checks (RFC 7296 §1.4,
§1.4.1, §2.4, §2.21.2, §2.25).

    Delete(IKE)             -> (empty)                the IKE SA and its CHILD_SAs go
    Delete(ESP, SPIs)       -> Delete(ESP, our SPIs)  those CHILD_SAs go
    (empty)                 -> (empty)                a liveness check
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from vpnaaa import logs
from vpnaaa.ike.common import EndCause, Ending, State, log
from vpnaaa.ike.const import ExchangeType, NotifyType, PayloadType, ProtocolId
from vpnaaa.ike.effects import Effects
from vpnaaa.ike.message import Delete, Entry, Header, Message

if TYPE_CHECKING:
    from vpnaaa.ike.sa import IkeSa


def respond(sa: IkeSa, header: Header, inner: Message) -> Effects:
    """Deletes (§1.4.1) and liveness checks (empty requests) are answered; a client that
    gives up authenticating says AUTHENTICATION_FAILED (§2.21.2)."""
    deletes = [d for d in inner.all(PayloadType.DELETE) if isinstance(d, Delete)]
    if sa.state != State.ESTABLISHED and inner.notify(NotifyType.AUTHENTICATION_FAILED):
        refused = Ending(EndCause.REFUSED, why_the_client_gave_up(sa))
        return sa.end(sa.respond(header, []), refused)
    if any(d.protocol == ProtocolId.IKE for d in deletes):
        return sa.end(sa.respond(header, []), Ending(EndCause.CLIENT_DELETE, "client delete"))
    entries: list[Entry] = []
    effects: Effects = ()
    for delete in deletes:
        ours = []
        for spi in delete.spis:
            outbound = int.from_bytes(spi, "big")
            found = next((c for c in sa.children.values() if c.spec.outbound_spi == outbound), None)
            if found is not None:
                effects += sa.forget_child(found.spec.inbound_spi, "client delete")
                ours.append(found.spec.inbound_spi.to_bytes(4, "big"))
        if ours:
            entries.append((PayloadType.DELETE, Delete(ProtocolId.ESP, tuple(ours))))
    return (*effects, *sa.respond(header, entries))


def why_the_client_gave_up(sa: IkeSa) -> str:
    """The client sent AUTHENTICATION_FAILED before the SA was up. When our EAP method had
    already refused it (a wrong password: the client gives up instead of acknowledging
    the MSCHAPv2 Failure), that is the reason, with the user; when it never answered EAP,
    it refused our certificate; else it gave up during EAP."""
    backend, conversation = sa.profile.eap, sa.auth.conversation
    refused = backend.refusal(conversation) if backend is not None and conversation else None
    if refused is not None:
        user = logs.quoted(refused.identity)
        log.info(
            "{sa}: EAP failed for {user}: {reason}", sa=sa.name, user=user, reason=refused.reason
        )
        return f"EAP failed: {refused.reason}"
    if sa.auth.rounds:  # it took part in EAP, so it accepted our certificate
        cause = f"the client gave up EAP after {sa.auth.rounds} rounds"
    else:
        cause = "the client refused our certificate (does it trust our CA and name?)"
    log.info("{sa}: AUTHENTICATION_FAILED from the client: {cause}", sa=sa.name, cause=cause)
    return cause


@dataclass(frozen=True)
class Liveness:
    """An empty INFORMATIONAL request: the peer must answer it if it is alive (§1.4)."""

    kind: str = "liveness"
    exchange: int = ExchangeType.INFORMATIONAL

    def request(self, sa: IkeSa) -> list[Entry]:
        return []

    def answered(self, sa: IkeSa, response: Message) -> Effects:
        return ()


@dataclass(frozen=True)
class DeleteIke:
    """Delete(IKE) (§1.4.1): the SA ends when the peer answers (or never does)."""

    kind: str = "delete"
    exchange: int = ExchangeType.INFORMATIONAL

    def request(self, sa: IkeSa) -> list[Entry]:
        return [(PayloadType.DELETE, Delete(ProtocolId.IKE))]

    def answered(self, sa: IkeSa, response: Message) -> Effects:
        return sa.close(sa.closing_cause or Ending(EndCause.GONE, "deleted"))


@dataclass(frozen=True)
class DeleteChild:
    """Delete(ESP, our inbound SPI) (§1.4.1) of a CHILD_SA we no longer use (or never
    installed); the answer lets its SAs leave the kernel."""

    spi: int
    kind: str = "delete-child"
    exchange: int = ExchangeType.INFORMATIONAL

    def request(self, sa: IkeSa) -> list[Entry]:
        return [(PayloadType.DELETE, Delete(ProtocolId.ESP, (self.spi.to_bytes(4, "big"),)))]

    def answered(self, sa: IkeSa, response: Message) -> Effects:
        return sa.deleted(self.spi)
