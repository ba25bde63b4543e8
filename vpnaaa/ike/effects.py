"""What one step of an IKE SA asks the edge to do: a tuple of frozen effects.

The SA core and its tasks (:mod:`vpnaaa.ike.sa`) never do I/O, read a clock or touch the
kernel. Each step returns :data:`Effects`, which :class:`vpnaaa.ike.protocol.Responder`
executes in order: datagrams to send, an EAP Response for the backend, a CHILD_SA to
install or remove, a certificate's revocation to check, a session that began or ended.
Results of the edge's work come back through :meth:`IkeSa.eap_result`,
:meth:`IkeSa.revocation_checked` and :meth:`IkeSa.child_installed`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vpnaaa.ike.common import ERROR_TYPES
from vpnaaa.ike.const import NotifyType
from vpnaaa.ike.message import Notify
from vpnaaa.kernel.installer import ChildSaSpec

if TYPE_CHECKING:
    from vpnaaa.certs import VerifiedCertificate
    from vpnaaa.ike.common import Ending
    from vpnaaa.ike.keys import IkeKeys
    from vpnaaa.ike.proposal import Choice
    from vpnaaa.ike.sa import Endpoint, IkeSa


@dataclass(frozen=True)
class Send:
    """Datagrams for the peer; ``to`` (address, port object) answers a retransmission
    where it came from instead of where the SA is (§2.1)."""

    datagrams: tuple[bytes, ...]
    to: tuple[Endpoint | None, object] | None = None


@dataclass(frozen=True)
class Drop:
    """A message dropped unanswered: ``line`` for the edge's throttled log, by ``kind``."""

    kind: str
    line: str


@dataclass(frozen=True)
class Exchanged:
    """An exchange is over, for the step watchers (the metrics); the edge does nothing
    with it. ``ours``: the gateway began it. ``result``: ``ok``; the name of the error
    notify that refused it (§3.10.1: ours in our response, the peer's in its answer;
    ``other`` for a type we do not know); ``malformed`` (an answer that does not parse);
    ``timeout`` (no answer to our request and its retransmissions, §2.4)."""

    exchange: int
    ours: bool
    result: str

    @classmethod
    def of(cls, exchange: int, ours: bool, payloads: Iterable[object]) -> Exchanged:
        """``ok``, or the first error notify among ``payloads`` (a message's)."""
        for payload in payloads:
            if isinstance(payload, Notify) and payload.notify_type < ERROR_TYPES:
                try:
                    return cls(exchange, ours, NotifyType(payload.notify_type).name)
                except ValueError:
                    return cls(exchange, ours, "other")
        return cls(exchange, ours, "ok")


@dataclass(frozen=True)
class Heard:
    """An integrity-checked message came from the peer: it is alive (§1.4, §2.4)."""


@dataclass(frozen=True)
class Await:
    """A request of ours left for the ``sent``-th time: time its answer (§2.1, §2.4)."""

    sent: int


@dataclass(frozen=True)
class Answered:
    """Our outstanding request was answered: stop its retransmission timer."""


@dataclass(frozen=True)
class RunEap:
    """Run this EAP Response through the profile's backend (§2.16)."""

    conversation: bytes
    response: bytes


@dataclass(frozen=True)
class CheckRevocation:
    """Ask the profile's revocation checker about the client's certificate, then call
    :meth:`IkeSa.revocation_checked` (IKE_AUTH with a certificate; it may go to the
    network: CRL distribution points, OCSP)."""

    verified: VerifiedCertificate = field(repr=False)


@dataclass(frozen=True)
class Install:
    """Install a CHILD_SA, then call :meth:`IkeSa.child_installed`. Without ``outbound``
    only its inbound SA goes in: the responder of a rekey sends on the old SA until the
    initiator, which installs after our response, deletes it."""

    spec: ChildSaSpec
    outbound: bool = True


@dataclass(frozen=True)
class InstallOutbound:
    """Add the outbound SA of a CHILD_SA installed without it."""

    spec: ChildSaSpec


@dataclass(frozen=True)
class ChildUp:
    """A CHILD_SA is in place: its lifetime starts (the gateway's rekey timer)."""

    spec: ChildSaSpec


@dataclass(frozen=True)
class RetryRekey:
    """Our rekey was refused: try again later (§2.25: not at once), before the hard
    lifetime; ``child``: the CHILD_SA's inbound SPI, None for the IKE SA."""

    child: int | None = None


@dataclass(frozen=True)
class Remove:
    """Take CHILD_SAs out of the kernel (and their timers)."""

    specs: tuple[ChildSaSpec, ...]


@dataclass(frozen=True)
class Keyed:
    """An IKE SA's keys exist (§2.14; §2.18 for a rekey), for the Wireshark key log
    (:mod:`vpnaaa.keylog`) when it is on. ``spi_i`` is the SA's original initiator's
    (ours for an IKE SA our rekey made); ``keys.sk_ei`` protects that side's messages."""

    spi_i: bytes
    spi_r: bytes
    choice: Choice
    keys: IkeKeys = field(repr=False)

    @classmethod
    def of(cls, sa: IkeSa) -> Keyed:
        assert sa.crypto is not None and sa.ike_choice is not None
        return cls(sa.spi_i, sa.spi_r, sa.ike_choice, sa.crypto.keys)


@dataclass(frozen=True)
class Established:
    """IKE_AUTH finished: a session began (INITIAL_CONTACT, uniqueness, lifetimes)."""


@dataclass(frozen=True)
class Rekeyed:
    """``old`` handed its session to ``successor`` (§1.3.2, §2.8.2): serve the successor
    from now on, and let ``old`` go (its peer or we delete it)."""

    old: IkeSa
    successor: IkeSa


@dataclass(frozen=True)
class Spawn:
    """Serve ``sa``, an IKE SA of ours that holds no session (the redundant SA of an IKE
    rekey collision, §2.8.2), and run ``effects`` on it."""

    sa: IkeSa
    effects: tuple[Effect, ...]


@dataclass(frozen=True)
class Closed:
    """The IKE SA is gone with its ``children`` (out of the kernel, counters read first):
    forget it; ``cause`` is the session's end in the log."""

    cause: Ending
    children: tuple[ChildSaSpec, ...] = ()


Effect = (
    Send
    | Drop
    | Exchanged
    | Heard
    | Await
    | Answered
    | RunEap
    | CheckRevocation
    | Install
    | InstallOutbound
    | ChildUp
    | RetryRekey
    | Remove
    | Keyed
    | Established
    | Rekeyed
    | Spawn
    | Closed
)
Effects = tuple[Effect, ...]
