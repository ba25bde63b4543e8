"""The authentication seam: credentials in, a Deferred verdict out.

The RADIUS server turns PAP, CHAP and MS-CHAP attributes into :data:`Credentials` and asks
an :class:`AuthBackend`; it never looks at passwords or hashes itself. The local backend
answers from the :class:`~vpnaaa.users.UserStore`; the EAP engine and the remote (relay)
backend serve the same interface.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.internet import defer, threads
from twisted.internet.interfaces import IReactorTime
from twisted.logger import LogLevel

from vpnaaa import logs, mschap
from vpnaaa.users import Candidate, User, UserStore, verify_password_hash

log = logs.get("vpnaaa.auth")
WRONG_PASSWORD = "wrong password"


@dataclass(frozen=True)
class Pap:
    """RFC 2865 §5.2: the password as the NAS received it."""

    password: bytes = field(repr=False)


@dataclass(frozen=True)
class Chap:
    """RFC 2865 §5.3 / RFC 1994 §4.1: MD5(ident + secret + challenge)."""

    ident: int
    challenge: bytes
    response: bytes


@dataclass(frozen=True)
class MsChapV1:
    """RFC 2548 §2.1.3: the NT-Response to an 8-octet challenge (RFC 2433 §A.5)."""

    challenge: bytes
    nt_response: bytes


@dataclass(frozen=True)
class MsChapV2:
    """RFC 2548 §2.3.2: the peer's response to a 16-octet authenticator challenge."""

    authenticator_challenge: bytes
    peer_challenge: bytes
    nt_response: bytes


Credentials = Pap | Chap | MsChapV1 | MsChapV2


@dataclass(frozen=True)
class Accept:
    """Authenticated. Method-specific proof and keys go back to the front end."""

    username: str
    authenticator_response: bytes | None = None  # MS-CHAPv2 "S=..." (RFC 2759 §8.7)
    mppe_send_key: bytes | None = field(default=None, repr=False)  # RFC 3079 §3.4, server side
    mppe_recv_key: bytes | None = field(default=None, repr=False)
    mschapv1_keys: bytes | None = field(default=None, repr=False)  # RFC 2548 §2.4.1 LM + NT key


@dataclass(frozen=True)
class Reject:
    """Not authenticated; ``reason`` is for the log, never for the peer."""

    reason: str


@dataclass(frozen=True)
class Busy:
    """No verdict: too many password checks are queued. The front end answers nothing and
    the NAS retransmits later (RFC 2865 §2.4), as when a server is overloaded."""


Verdict = Accept | Reject | Busy


class AuthBackend(Protocol):
    def authenticate(
        self, username: str, credentials: Credentials, source: str | None = None
    ) -> defer.Deferred[Verdict]:
        """Check ``credentials`` for ``username`` coming from ``source`` (what a lockout
        counts wrong passwords by); never errbacks for a wrong password."""


class LocalBackend:
    """Answers from the local user store; slow hash checks run in a worker thread.

    At most ``pap_queue`` PBKDF2 checks wait or run at once; a PAP request beyond that gets
    :class:`Busy` (one log line per ten seconds says how many). An unknown or locked-out
    user is checked against :func:`~vpnaaa.users.dummy_user`, so rejecting costs the same
    CPU and time whether or not the name exists. Wrong passwords of stored users are
    reported to the store's lockout.
    """

    def __init__(
        self,
        users: UserStore,
        clock: IReactorTime,
        pap_queue: int = 64,
        run_in_thread: Callable[..., defer.Deferred[Any]] = threads.deferToThread,
    ) -> None:
        self.users = users
        self.pap_queue = pap_queue
        self.run_in_thread = run_in_thread
        self.pending = 0
        self._busy_log = logs.Throttle(log, clock.seconds)

    def authenticate(
        self, username: str, credentials: Credentials, source: str | None = None
    ) -> defer.Deferred[Verdict]:
        candidate = self.users.candidate(mschap.strip_domain(username), source)
        checked = candidate.checked
        if isinstance(credentials, Pap):
            d = self._pap(checked, credentials.password)
        elif isinstance(credentials, Chap):
            d = defer.succeed(self._chap(checked, credentials))
        elif isinstance(credentials, MsChapV1):
            d = defer.succeed(self._mschapv1(checked, credentials))
        else:
            d = defer.succeed(self._mschapv2(checked, username, credentials))
        return d.addCallback(self._outcome, candidate)

    def _outcome(self, verdict: Verdict, candidate: Candidate) -> Verdict:
        if isinstance(verdict, Busy):
            return verdict
        if candidate.refusal is not None:
            return Reject(candidate.refusal)
        if isinstance(verdict, Accept) or verdict.reason == WRONG_PASSWORD:
            self.users.record(candidate, isinstance(verdict, Accept))
        return verdict

    def _pap(self, user: User, password: bytes) -> defer.Deferred[Verdict]:
        if self.users.cached_password_ok(user, password):
            return defer.succeed(Accept(user.name))
        if self.pending >= self.pap_queue:
            self._busy_log.emit(
                "pap",
                LogLevel.warn,
                "PAP request dropped: {n} password checks are already queued (radius.pap_queue)",
                n=self.pending,
            )
            return defer.succeed(Busy())

        def checked(ok: bool) -> Verdict:
            if not ok:
                return Reject(WRONG_PASSWORD)
            self.users.remember_password(user, password)
            return Accept(user.name)

        def finished(result: Any) -> Any:
            self.pending -= 1
            return result

        self.pending += 1
        d = self.run_in_thread(verify_password_hash, user, password)
        return d.addBoth(finished).addCallback(checked)

    @staticmethod
    def _chap(user: User, cred: Chap) -> Verdict:
        if user.chap_password is None:
            return Reject("CHAP needs the cleartext password; user has none (add with --chap)")
        expected = hashlib.md5(
            bytes([cred.ident]) + user.chap_password.encode() + cred.challenge
        ).digest()
        if not hmac.compare_digest(expected, cred.response):
            return Reject(WRONG_PASSWORD)
        return Accept(user.name)

    @staticmethod
    def _mschapv1(user: User, cred: MsChapV1) -> Verdict:
        if user.nt_hash is None:
            return Reject("MS-CHAP is disabled for this user")
        expected = mschap.challenge_response(cred.challenge, user.nt_hash)
        if not hmac.compare_digest(expected, cred.nt_response):
            return Reject(WRONG_PASSWORD)
        lm_key, nt_key = mschap.mschapv1_session_keys(user.nt_hash)
        return Accept(user.name, mschapv1_keys=lm_key + nt_key)

    @staticmethod
    def _mschapv2(user: User, username: str, cred: MsChapV2) -> Verdict:
        if user.nt_hash is None:
            return Reject("MS-CHAP is disabled for this user")
        name = mschap.strip_domain(username).encode("utf-8")
        if not mschap.verify_nt_response(
            cred.authenticator_challenge, cred.peer_challenge, name, user.nt_hash, cred.nt_response
        ):
            return Reject(WRONG_PASSWORD)
        send_key, recv_key = mschap.server_mppe_keys(user.nt_hash, cred.nt_response)
        return Accept(
            user.name,
            authenticator_response=mschap.generate_authenticator_response(
                user.nt_hash,
                cred.nt_response,
                cred.peer_challenge,
                cred.authenticator_challenge,
                name,
            ),
            mppe_send_key=send_key,
            mppe_recv_key=recv_key,
        )
