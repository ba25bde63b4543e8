"""Reading files that hold secrets (shared secrets, the user store, tokens), as sshd does.

A secret file is opened with O_NOFOLLOW (a symbolic link is refused: whoever can write the
directory could point it anywhere) and checked on the opened descriptor (fstat, not the
path, so a swap between check and read changes nothing): a regular file, owned by root or
the daemon's own user, with no permission for group or others.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pwd
import stat
import tempfile
from collections.abc import Collection
from pathlib import Path


class PrivateFileError(Exception):
    """A secret file that is missing, a link, owned by someone else or too permissive."""

    def __init__(self, path: Path, reason: str, missing: bool = False) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason
        self.missing = missing


def trusted_owners(user: str | None = None) -> frozenset[int]:
    """The uids a secret file may belong to: root, this process's user, and ``user`` (the
    ``[daemon] user`` the daemon switches to) when it exists."""
    owners = {0, os.geteuid()}
    if user:
        with contextlib.suppress(KeyError):  # not created yet: nobody to trust
            owners.add(pwd.getpwnam(user).pw_uid)
    return frozenset(owners)


def _name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def check(path: Path, st: os.stat_result, owners: Collection[int]) -> None:
    """Refuse what :func:`read` refuses, given the fstat of the opened file."""
    if not stat.S_ISREG(st.st_mode):
        raise PrivateFileError(path, "holds a secret but is not a regular file")
    if st.st_uid not in owners:
        allowed = " or ".join(sorted({_name(uid) for uid in owners}))
        raise PrivateFileError(
            path, f"holds a secret but belongs to {_name(st.st_uid)}; chown it to {allowed}"
        )
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise PrivateFileError(
            path,
            f"holds a secret but has mode {stat.S_IMODE(st.st_mode):04o}; run chmod 600 on it",
        )


def open_private(path: Path, owners: Collection[int]) -> int:
    """Open ``path`` read-only without following a link and check it; returns the fd."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise PrivateFileError(path, "holds a secret but is a symbolic link; refused") from None
        raise PrivateFileError(
            path, f"cannot read: {e.strerror}", missing=e.errno == errno.ENOENT
        ) from None
    try:
        check(path, os.fstat(fd), owners)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read(path: Path, owners: Collection[int]) -> bytes:
    """The contents of the secret file ``path`` (see the module docstring for the checks)."""
    with os.fdopen(open_private(path, owners), "rb") as f:
        try:
            return f.read()
        except OSError as e:
            raise PrivateFileError(path, f"cannot read: {e.strerror}") from None


def owned_as(fd: int, model: Path) -> None:
    """Give the new file ``fd`` the owner and group of ``model`` (its directory, or the file
    it replaces), so that root editing the daemon user's state leaves it the daemon user's
    (a process that is not root can only create files of its own)."""
    st = os.stat(model, follow_symlinks=False)
    if os.geteuid() == 0:
        os.fchown(fd, st.st_uid, st.st_gid)


def replace_file(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically: mode 0600, contents on disk before the
    rename, owned as the file it replaces (a new one: as its directory)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), 0o600)
            owned_as(f.fileno(), path if os.path.lexists(path) else path.parent)
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
