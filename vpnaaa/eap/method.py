"""What an EAP method is to the authenticator (hostapd's eap_server method table, in small).

A method is a sans-IO object for one conversation: it builds its first request, processes
each response and ends with :class:`Done`. The authenticator owns identities,
identifiers, Nak and the conversation's lifetime; methods own nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from vpnaaa.authorization import NOTHING, Authorization
from vpnaaa.users import Candidate

if TYPE_CHECKING:
    from vpnaaa.certs import RevocationResult, VerifiedCertificate


@dataclass(frozen=True)
class Send:
    """Send a Request of the method's type with this Type-Data."""

    data: bytes


@dataclass(frozen=True)
class Done:
    """The method finished: success with the MSK (RFC 3748 §7.10) or failure with a reason.
    A method that defines them also exports the EMSK and Session-Id (RFC 5247 §1.4).
    ``certificate``: the client certificate a success authenticated (EAP-TLS)."""

    success: bool
    identity: str = ""
    msk: bytes = field(default=b"", repr=False)
    reason: str = ""
    authorization: Authorization = NOTHING  # what the user's record grants
    emsk: bytes = field(default=b"", repr=False)
    session_id: bytes = b""
    certificate: VerifiedCertificate | None = field(default=None, repr=False)


@dataclass(frozen=True)
class CheckRevocation:
    """Ask whether the client's certificate is revoked before answering (EAP-TLS after
    the handshake, RFC 5216 §5.3; the answer may come from the network: CRL distribution
    points, OCSP). The engine asks its revocation checker and hands the verdict to
    ``resume``, whose step answers the same Response. A conversation forgotten meanwhile
    is never resumed."""

    verified: VerifiedCertificate = field(repr=False)
    resume: Callable[[RevocationResult], Step] = field(repr=False, compare=False)


Step = Send | Done | CheckRevocation


class Directory(Protocol):
    """Where methods find users: the local :class:`~vpnaaa.users.UserStore`, which also
    keeps the lockout that every password check reports to."""

    def candidate(self, name: str, source: str | None = None) -> Candidate: ...

    def record(self, candidate: Candidate, ok: bool) -> None: ...


class Method(Protocol):
    type: int

    def start(self, identifier: int) -> bytes:
        """Type-Data of the first Request, sent with EAP Identifier ``identifier``."""

    def process(self, data: bytes, identifier: int, room: int | None = None) -> Step:
        """Handle a Response's Type-Data; ``identifier`` is that of the next Request,
        ``room`` the most octets that Request's whole EAP packet may take (None: no limit
        beyond the method's own), for methods that fragment."""

    def refusal(self) -> Done | None:
        """The failure the method has decided and still has to deliver (a peer may give
        up before it acknowledges it), or None."""


class MethodError(Exception):
    """The peer sent something the method cannot accept; the conversation fails."""
