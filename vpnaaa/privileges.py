"""Run as a dedicated user with CAP_NET_ADMIN only, once the privileged resources are open.

The daemon binds its ports and opens its XFRM netlink sockets first (twistd's
``privilegedStartService``), then :func:`drop` switches to ``[daemon] user`` keeping one
capability, CAP_NET_ADMIN (capabilities(7)): the kernel checks it on every XFRM netlink
request (``xfrm_user_rcv_msg``) and for the IPsec bypass policy of a socket
(``IP_XFRM_POLICY``), both needed after start-up. This is what charon's ``user``/``group``
(strongSwan ``keep_caps``) and FreeRADIUS's ``security { user, group }`` do.

As root: PR_SET_KEEPCAPS, setgroups([]), setgid, setuid, then capset to CAP_NET_ADMIN in the
effective and permitted sets (none inheritable, no ambient), PR_SET_NO_NEW_PRIVS, and the
bounding set reduced to CAP_NET_ADMIN. Started by systemd as the user already (``User=``,
``AmbientCapabilities=``): only the capset. The result is read back from
/proc/self/status; anything else than "not root, CapEff = CAP_NET_ADMIN" is an error.
"""

from __future__ import annotations

import ctypes
import os
import pwd
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

CAP_NET_ADMIN = 12  # linux/capability.h
CAP_LAST = 63
KEEP = 1 << CAP_NET_ADMIN

PR_SET_KEEPCAPS = 8  # linux/prctl.h
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class PrivilegeError(Exception):
    """The daemon cannot run as configured: one line saying what and how to fix it."""


@dataclass(frozen=True)
class Account:
    """The user the daemon runs as."""

    name: str
    uid: int
    gid: int


def account(name: str) -> Account:
    """``[daemon] user`` from the password database."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise PrivilegeError(
            f'[daemon] user = "{name}": no such user; create it (useradd --system '
            f"--user-group --home-dir /var/lib/vpnaaa --shell /usr/sbin/nologin {name}, "
            'as `make run` does) or set user = "root"'
        ) from None
    return Account(name, entry.pw_uid, entry.pw_gid)


@dataclass(frozen=True)
class Status:
    """The lines of /proc/PID/status this module cares about."""

    uids: tuple[int, ...]  # real, effective, saved, filesystem
    gids: tuple[int, ...]
    cap_eff: int
    cap_prm: int
    cap_inh: int
    cap_amb: int
    threads: int


def status(pid: int | str = "self") -> Status:
    """Uid, Gid, the capability sets and the thread count of a process (proc(5))."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        fields[name] = value.split()
    return Status(
        uids=tuple(int(v) for v in fields["Uid"]),
        gids=tuple(int(v) for v in fields["Gid"]),
        cap_eff=int(fields["CapEff"][0], 16),
        cap_prm=int(fields["CapPrm"][0], 16),
        cap_inh=int(fields["CapInh"][0], 16),
        cap_amb=int(fields.get("CapAmb", ["0"])[0], 16),
        threads=int(fields["Threads"][0]),
    )


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapData(ctypes.Structure):
    _fields_ = (
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    )


_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise PrivilegeError(f"{what}: {os.strerror(code)}")


def _prctl(option: int, arg: int, what: str, arg2: int = 0) -> None:
    _check(_libc.prctl(option, arg, arg2, 0, 0), what)


def _capset(caps: int) -> None:
    """Effective = permitted = ``caps``, inheritable empty (capset(2), 64-bit sets)."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for i in range(2):
        word = (caps >> (32 * i)) & 0xFFFFFFFF
        data[i].effective = data[i].permitted = word
    _check(_libc.capset(ctypes.byref(header), data), "capset")


def _bounding(keep: int) -> None:
    """Drop every capability but ``keep`` from the bounding set (needs CAP_SETPCAP)."""
    for cap in range(CAP_LAST + 1):
        if keep & (1 << cap) or _libc.prctl(PR_CAPBSET_READ, cap, 0, 0, 0) != 1:
            continue
        _prctl(PR_CAPBSET_DROP, cap, f"dropping capability {cap} from the bounding set")


def drop(user: Account | None) -> Status:
    """Become ``user`` (None: stay who we are, not root) with CAP_NET_ADMIN only; returns
    the resulting status. Must run before any thread starts: capabilities are per thread."""
    before = status()
    if before.threads != 1:
        raise PrivilegeError(f"cannot drop privileges with {before.threads} threads running")
    keep = KEEP if before.cap_prm & KEEP else 0
    if os.geteuid() == 0:
        if user is None or user.uid == 0:
            raise PrivilegeError("running as root needs a user to switch to")
        _prctl(PR_SET_KEEPCAPS, 1, "PR_SET_KEEPCAPS")
        _bounding(keep)
        os.setgroups([])
        os.setgid(user.gid)
        os.setuid(user.uid)
        _prctl(PR_SET_KEEPCAPS, 0, "PR_SET_KEEPCAPS")
    _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, "clearing the ambient capabilities")
    _capset(keep)
    _prctl(PR_SET_NO_NEW_PRIVS, 1, "PR_SET_NO_NEW_PRIVS")
    after = status()
    if 0 in after.uids or after.cap_eff != keep or after.cap_prm != keep or after.cap_amb:
        raise PrivilegeError(f"privileges not dropped as intended: {after}")
    return after


def _mode(path: Path) -> str:
    return f"{stat.S_IMODE(path.stat().st_mode):04o}"


def _can_enter(st: os.stat_result, user: Account) -> bool:
    if st.st_uid == user.uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid == user.gid:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def reachable(path: Path, user: Account) -> None:
    """Refuse a ``path`` ``user`` cannot reach once privileges are gone: every directory
    above it must let the user through (execute permission), or it could not reload its
    users, write its accounting log or import code later."""
    path = path.resolve()
    for directory in reversed(path.parents):
        if not _can_enter(directory.stat(), user):
            raise PrivilegeError(
                f"{path}: user {user.name} could not reach it once vpnaaa drops root: "
                f"{directory} has mode {_mode(directory)}; move it elsewhere (not under a "
                f'private home directory) or set [daemon] user = "root"'
            )


def code_reachable(user: Account) -> None:
    """The Python environment (the venv and the interpreter's standard library it is
    made from) and vpnaaa's own code must stay readable after the drop: modules are
    imported lazily, long after start-up."""
    import vpnaaa

    for path in (sys.prefix, sys.base_prefix, Path(vpnaaa.__file__).parent):
        reachable(Path(path), user)


def prepare_state_dir(
    path: Path, user: Account | None, files: list[Path], what: str = "state directory"
) -> None:
    """Check the state directory and make it the daemon user's: created 0700 if missing,
    refused if group or others can write it (anyone could swap its files), refused if it
    belongs to another user; as root, given to ``user`` along with ``files`` (those the
    daemon writes or re-reads after start-up: users file, accounting log)."""
    uid = user.uid if user is not None else os.geteuid()
    gid = user.gid if user is not None else os.getegid()
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise PrivilegeError(f"{what} {path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        mode = stat.S_IMODE(st.st_mode)
        if mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise PrivilegeError(
                f"{what} {path} is writable by group or others (mode {mode:04o}); "
                "run chmod 700 on it"
            )
        if st.st_uid not in (0, uid):
            raise PrivilegeError(
                f"{what} {path} belongs to uid {st.st_uid}, not to root or the daemon "
                f"user (uid {uid}); chown it"
            )
        if os.geteuid() == 0 and (st.st_uid, st.st_gid) != (uid, gid):
            os.fchown(fd, uid, gid)
        elif st.st_uid != uid:
            raise PrivilegeError(f"{what} {path} belongs to root; chown it to uid {uid}")
    finally:
        os.close(fd)
    if os.geteuid() == 0:
        for file in files:
            _give(file, uid, gid)


def make_private_file(path: Path, user: Account | None) -> None:
    """Create ``path`` empty, mode 0600, if missing, and as root give it to ``user``: a
    file the daemon opens by name again and again (the SQLite lease file), which on some
    shared filesystems (the kernel VM's) it could not reopen had it made it itself."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        pass
    except OSError as e:
        raise PrivilegeError(f"{path}: {e.strerror}") from None
    else:
        os.close(fd)
    if os.geteuid() == 0 and user is not None:
        _give(path, user.uid, user.gid)


def _give(path: Path, uid: int, gid: int) -> None:
    """Hand a root-made file (`vpnaaa demo`, `vpnaaa user add` as root) to the daemon user;
    a link or another user's file is left alone (the secret-file checks refuse those)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return  # missing (created later, by the daemon user) or a link
    try:
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode) and st.st_uid == 0:
            os.fchown(fd, uid, gid)
    finally:
        os.close(fd)
