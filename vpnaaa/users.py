"""The local user store: password hashes on passlib, one JSON file, mode 0600.

Per user the file keeps:

- ``password_hash``: a strong salted hash (PBKDF2-SHA256 via passlib) that PAP checks;
- ``nt_hash``: the MD4 NT hash MS-CHAPv1/v2 and EAP-MSCHAPv2 need (RFC 2759 §8.3), unless
  the user was added with MS-CHAP disabled;
- ``chap_password``: only for users added with CHAP enabled. CHAP (RFC 1994) can only be
  checked against the cleartext password; like FreeRADIUS's Cleartext-Password or Windows'
  "store password using reversible encryption", this is an explicit per-user opt-in.

The file is read like every secret file (:mod:`vpnaaa.private`: no symbolic link, owned
by root or the daemon user, mode 0600). Writes are atomic (temporary file, fsync, rename)
and keep the file's owner (the daemon user must still read it on reload); a change
(read, modify, write) holds an exclusive flock on ``.users.json.lock`` beside it, so two
concurrent ``vpnaaa user add`` cannot lose one of the updates. A running daemon reloads on
SIGHUP by swapping one dictionary, so requests in flight keep the records they already read.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from passlib.context import CryptContext

from vpnaaa import mschap, private
from vpnaaa.authorization import NOTHING, Authorization
from vpnaaa.lockout import Lockout

FORMAT_VERSION = 1

pap_context = CryptContext(
    schemes=["pbkdf2_sha256", "sha512_crypt", "sha256_crypt"],
    default="pbkdf2_sha256",
    deprecated=["sha512_crypt", "sha256_crypt"],
)


class UserStoreError(Exception):
    """The user file is missing, unreadable, too permissive or malformed."""


@dataclass(frozen=True)
class User:
    name: str
    password_hash: str = field(repr=False)
    nt_hash: bytes | None = field(default=None, repr=False)
    chap_password: str | None = field(default=None, repr=False)
    authorization: Authorization = NOTHING  # what a session of this user is granted

    @classmethod
    def create(cls, name: str, password: str, *, mschap: bool = True, chap: bool = False) -> User:
        """Hash a new password for every method the user is allowed."""
        return cls(
            name=name,
            password_hash=pap_context.hash(password),
            nt_hash=mschap_hash(password) if mschap else None,
            chap_password=password if chap else None,
        )

    def methods(self) -> list[str]:
        """The authentication methods this record can serve, for `vpnaaa user list`."""
        found = ["pap"]
        if self.chap_password is not None:
            found.append("chap")
        if self.nt_hash is not None:
            found.append("mschap")
        return found

    def to_json(self) -> dict[str, object]:
        record: dict[str, object] = {"password_hash": self.password_hash}
        if self.nt_hash is not None:
            record["nt_hash"] = self.nt_hash.hex()
        if self.chap_password is not None:
            record["chap_password"] = self.chap_password
        granted = self.authorization.to_json()
        if granted:
            record["grants"] = granted
        return record

    @classmethod
    def from_json(cls, name: str, record: object) -> User:
        if not isinstance(record, dict) or not isinstance(record.get("password_hash"), str):
            raise ValueError("needs a password_hash string")
        nt_hash = record.get("nt_hash")
        chap_password = record.get("chap_password")
        if nt_hash is not None:
            nt_hash = bytes.fromhex(nt_hash)
            if len(nt_hash) != 16:
                raise ValueError("nt_hash must be 32 hex digits")
        if chap_password is not None and not isinstance(chap_password, str):
            raise ValueError("chap_password must be a string")
        if not pap_context.identify(record["password_hash"], required=False):
            raise ValueError("password_hash is not a hash passlib knows")
        grants = record.get("grants", {})
        if not isinstance(grants, dict):
            raise ValueError("grants must be an object")
        granted = Authorization.from_json(grants)
        return cls(name, record["password_hash"], nt_hash, chap_password, granted)


def mschap_hash(password: str) -> bytes:
    """The NT hash kept for MS-CHAP (RFC 2759 §8.3)."""
    return mschap.nt_password_hash(password)


def read_users(path: Path, owners: Collection[int] | None = None) -> dict[str, User]:
    """Load and validate a user file; refuse a link, a file group or others can read, or
    one whose owner is not in ``owners`` (default: root and this process's user)."""
    try:
        raw = private.read(path, private.trusted_owners() if owners is None else owners)
    except private.PrivateFileError as e:
        if e.missing:
            raise UserStoreError(
                f"{path}: no user file (create one with `vpnaaa user add`)"
            ) from None
        raise UserStoreError(str(e).replace("holds a secret", "holds password hashes")) from None
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise UserStoreError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION:
        raise UserStoreError(f"{path}: not a vpnaaa user file (version {FORMAT_VERSION})")
    users = data.get("users")
    if not isinstance(users, dict):
        raise UserStoreError(f"{path}: 'users' must be an object")
    result: dict[str, User] = {}
    for name, record in users.items():
        try:
            result[name] = User.from_json(name, record)
        except ValueError as e:
            raise UserStoreError(f"{path}: user {name!r}: {e}") from None
        twin = same_user(result, name)
        if twin is not None:
            raise UserStoreError(
                f"{path}: users {twin!r} and {name!r} differ only in case; the gateway "
                "counts sessions per user in any case (max_sessions_per_user, "
                "INITIAL_CONTACT): keep one"
            )
    return result


def same_user(users: dict[str, User], name: str) -> str | None:
    """Another name in ``users`` that is ``name`` in a different case, or None: one user
    to the gateway (its sessions are counted by name in any case)."""
    folded = name.casefold()
    return next((n for n in users if n != name and n.casefold() == folded), None)


def write_users(path: Path, users: dict[str, User]) -> None:
    """Replace the user file atomically, mode 0600, contents on disk before the rename,
    owned as the file it replaces (a new one: as its directory)."""
    document = {
        "version": FORMAT_VERSION,
        "users": {name: users[name].to_json() for name in sorted(users)},
    }
    private.replace_file(path, json.dumps(document, indent=1) + "\n")


@dataclass(frozen=True)
class Candidate:
    """Whom a password offered for a name is checked against: the stored ``user``, or
    :func:`dummy_user` when the name is unknown or locked out (``refusal`` says which), so
    refusing costs the same CPU and time as a wrong password."""

    user: User | None
    checked: User
    refusal: str | None
    source: str | None = None  # where the password came from (the lockout's key)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold the exclusive lock of the user file ``path`` (flock on ``.NAME.lock`` beside
    it) for a read-modify-write; other writers wait. Readers need no lock: writes rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_name(f".{path.name}.lock")
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise UserStoreError(f"{lock}: cannot open the lock file: {e.strerror}") from None
    try:
        private.owned_as(fd, path.parent)
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


class UserStore:
    """The users a running daemon authenticates, with a cache of verified PAP passwords.

    Checking a PBKDF2 hash costs milliseconds by design. After one successful check the
    store remembers a MAC (under a key that exists only in this process) of the password
    bound to the stored hash, so a NAS re-authenticating the same user costs microseconds.
    A changed hash (``vpnaaa user passwd`` + reload) no longer matches its entries; the
    cache is bounded and emptied on every reload. ``users.verified_cache_size = 0`` turns it
    off.

    With a :class:`~vpnaaa.lockout.Lockout`, every method that checks a password asks
    :meth:`candidate` first and reports the outcome with :meth:`record`.
    """

    def __init__(
        self,
        path: Path,
        verified_cache_size: int = 10000,
        owners: Collection[int] | None = None,
        lockout: Lockout | None = None,
    ) -> None:
        self.path = path
        self.owners = owners
        self._users: dict[str, User] = {}
        self._cache_size = verified_cache_size
        self._cache_key = secrets.token_bytes(32)
        self._verified: dict[str, bytes] = {}
        self.lockout = lockout

    def load(self) -> int:
        """(Re)read the file; on error the previous users stay in force. Returns the count."""
        return self.use(read_users(self.path, self.owners))

    def use(self, users: dict[str, User]) -> int:
        """Serve ``users`` from now on (what :meth:`load` read); returns the count."""
        self._users = users
        self._verified = {}
        if self.lockout is not None:
            self.lockout.forget_unknown(users)
        return len(users)

    def candidate(self, name: str, source: str | None = None) -> Candidate:
        """The :class:`Candidate` for ``name`` (already stripped of any DOMAIN\\) whose
        password comes from ``source`` (what the lockout counts per user)."""
        user = self._users.get(name)
        if user is None:
            return Candidate(None, dummy_user(), "unknown user", source)
        if self.locked(user.name, source):
            refusal = "locked out after repeated wrong passwords"
            return Candidate(user, dummy_user(), refusal, source)
        return Candidate(user, user, None, source)

    def record(self, candidate: Candidate, ok: bool) -> None:
        """Report a checked password of a stored, not locked-out user to the lockout."""
        user = candidate.user
        if candidate.refusal is not None or user is None or self.lockout is None:
            return
        if ok:
            self.lockout.succeeded(user.name, candidate.source)
        else:
            self.lockout.failed(user.name, candidate.source)

    def locked(self, name: str, source: str | None = None) -> bool:
        """Whether user ``name`` is locked out from ``source`` after wrong passwords."""
        return self.lockout is not None and self.lockout.locked(name, source)

    def get(self, name: str) -> User | None:
        return self._users.get(name)

    def __len__(self) -> int:
        return len(self._users)

    def __iter__(self) -> Iterator[User]:
        return iter(self._users.values())

    def cached_password_ok(self, user: User, password: bytes) -> bool:
        """True when this exact password was verified against this exact hash before."""
        if not self._cache_size:
            return False
        seen = self._verified.get(user.password_hash)
        return seen is not None and hmac.compare_digest(seen, self._mark(user, password))

    def remember_password(self, user: User, password: bytes) -> None:
        if not self._cache_size:
            return
        if len(self._verified) >= self._cache_size:
            self._verified.clear()
        self._verified[user.password_hash] = self._mark(user, password)

    def _mark(self, user: User, password: bytes) -> bytes:
        """A keyed BLAKE2b (RFC 7693 keyed mode, a MAC by design) of hash and password."""
        return hashlib.blake2b(
            user.password_hash.encode() + b"\x00" + password, key=self._cache_key, digest_size=32
        ).digest()


def verify_password_hash(user: User, password: bytes) -> bool:
    """The slow, authoritative PAP check against the stored hash (runs off the reactor)."""
    try:
        text = password.decode("utf-8")
    except UnicodeDecodeError:
        text = password.decode("utf-8", "replace")  # same cost as a wrong password
        pap_context.verify(text, user.password_hash)
        return False
    return pap_context.verify(text, user.password_hash)


@functools.cache
def dummy_user() -> User:
    """A user no password matches, hashed like a new user's: checking a password of an
    unknown or locked-out user against it costs what a wrong password costs, so the
    time to reject does not tell which names exist. Made once, on first use."""
    return User.create("", secrets.token_urlsafe(32), mschap=True)
