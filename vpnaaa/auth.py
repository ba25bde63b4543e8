"""The authentication seam: credentials in, a Deferred verdict out.

The RADIUS server turns PAP, CHAP and MS-CHAP attributes into :data:`Credentials` and asks
an :class:`AuthBackend`; it never looks at passwords or hashes itself. The local backend
answers from the :class:`~vpnaaa.users.UserStore`; the EAP engine and the remote (relay)
backend serve the same interface.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Protocol

from twisted.internet import defer, threads

from vpnaaa import mschap
from vpnaaa.users import User, UserStore, verify_password_hash


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


Verdict = Accept | Reject


class AuthBackend(Protocol):
    def authenticate(self, username: str, credentials: Credentials) -> defer.Deferred[Verdict]:
        """Check ``credentials`` for ``username``; never errbacks for a wrong password."""


class LocalBackend:
    """Answers from the local user store; slow hash checks run in a worker thread."""

    def __init__(self, users: UserStore) -> None:
        self.users = users

    def authenticate(self, username: str, credentials: Credentials) -> defer.Deferred[Verdict]:
        user = self.users.get(mschap.strip_domain(username))
        if user is None:
            return defer.succeed(Reject("unknown user"))
        if isinstance(credentials, Pap):
            return self._pap(user, credentials.password)
        if isinstance(credentials, Chap):
            return defer.succeed(self._chap(user, credentials))
        if isinstance(credentials, MsChapV1):
            return defer.succeed(self._mschapv1(user, credentials))
        return defer.succeed(self._mschapv2(user, username, credentials))

    def _pap(self, user: User, password: bytes) -> defer.Deferred[Verdict]:
        if self.users.cached_password_ok(user, password):
            return defer.succeed(Accept(user.name))

        def checked(ok: bool) -> Verdict:
            if not ok:
                return Reject("wrong password")
            self.users.remember_password(user, password)
            return Accept(user.name)

        return threads.deferToThread(verify_password_hash, user, password).addCallback(checked)

    @staticmethod
    def _chap(user: User, cred: Chap) -> Verdict:
        if user.chap_password is None:
            return Reject("CHAP needs the cleartext password; user has none (add with --chap)")
        expected = hashlib.md5(
            bytes([cred.ident]) + user.chap_password.encode() + cred.challenge
        ).digest()
        if not hmac.compare_digest(expected, cred.response):
            return Reject("wrong password")
        return Accept(user.name)

    @staticmethod
    def _mschapv1(user: User, cred: MsChapV1) -> Verdict:
        if user.nt_hash is None:
            return Reject("MS-CHAP is disabled for this user")
        expected = mschap.challenge_response(cred.challenge, user.nt_hash)
        if not hmac.compare_digest(expected, cred.nt_response):
            return Reject("wrong password")
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
            return Reject("wrong password")
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
