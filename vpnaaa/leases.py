"""Where the virtual-address leases live, so that they survive a restart and stick to users.

Like an ASA's address pools: the same user reconnecting gets the address it had when that
address is free, and after a restart the addresses of sessions that may still be up on
a client that has not noticed (a crash, a DELETE on shutdown that got no answer) stay
held until their expiry. A lease's expiry is the IKE SA's lifetime bound: established
(or last rekeyed) + ``ike_lifetime``; no IKE SA of ours outlives it, so no client still
uses the address after it (RFC 7296 §2.8: a client that wants to go on must rekey, which
renews the lease).

:class:`LeaseBackend` and :class:`LeaseStore` are the seams (one backend, one store per
pool): this module implements them on SQLite (the standard library's sqlite3, one file
in the state directory, mode 0600), and a shared store for several gateways could
implement them on a server. One row per pool address, so the table never holds more
rows than the pools have addresses; a row keeps its last user when released (that is
the stickiness). Its ``free_at`` says when the address may go to someone else:

========== ==========================================================================
``NULL``   leased by this process (an IKE SA holds it)
-1         never leased
a time     released then (least recently released is handed out first), or held until
           then for a session an earlier run (or a shutdown) may have left on a client
========== ==========================================================================

Every call is one small transaction on a local file in WAL mode with ``synchronous =
NORMAL`` and an exclusive lock (no fsync per commit, no shared-memory file, and a second
daemon on the same file is refused): tens of microseconds, cheap enough to run inline
in IKE_AUTH.

A file that cannot be opened (permissions, a missing directory, another daemon holding
it) is a start-up error naming it. A file that is not a database or is corrupt is moved
aside (``leases.sqlite.corrupt-<time>``) and the daemon starts with no leases, with one
error line: a broken lease file must not keep the VPN down, and without it the gateway
is no worse off than one that never recorded leases.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import sqlite3
import stat
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from vpnaaa import logs

log = logs.get("vpnaaa.leases")

IPv4 = ipaddress.IPv4Address
SCHEMA_VERSION = 2
NEVER = -1.0  # free_at of an address never leased

_SCHEMA = """
CREATE TABLE leases (
    pool TEXT NOT NULL,
    address INTEGER NOT NULL,
    user TEXT,
    session TEXT,
    expires REAL NOT NULL DEFAULT 0,
    free_at REAL DEFAULT -1,
    PRIMARY KEY (pool, address)
) WITHOUT ROWID;
CREATE INDEX leases_free ON leases (pool, free_at, address);
CREATE INDEX leases_user ON leases (pool, user, free_at);
"""
# Version 2: addresses the AAA server assigned from a profile's framed_networks, outside
# every pool. A row exists only while the address is leased or held (no row: free); the
# address is the key whatever the profile, so no two sessions ever share one.
_FRAMED = """
CREATE TABLE framed (
    address INTEGER PRIMARY KEY,
    pool TEXT NOT NULL,
    user TEXT NOT NULL,
    session TEXT NOT NULL,
    expires REAL NOT NULL,
    free_at REAL
);
"""


class LeaseFileError(Exception):
    """The lease file cannot be used: one line naming it (a start-up error)."""


@dataclass(frozen=True)
class Usage:
    """A pool's addresses: leased by this process, held for sessions that may still be up
    elsewhere (an earlier run, another gateway), free."""

    leased: int
    held: int
    free: int


class LeaseStore(Protocol):
    """The leases of one address pool. Times are the caller's clock (seconds since the
    epoch in the daemon); ``expires`` bounds how long a client may use the address."""

    def acquire(
        self, user: str, session: str, now: float, expires: float, wanted: IPv4 | None = None
    ) -> IPv4 | None:
        """A free address for ``session`` of ``user``: ``wanted`` if given, else the one
        ``user`` had last if it is not leased (even one still held for that user's earlier
        session), else the one never leased or least recently freed. None: none is free
        (or ``wanted`` is leased, or held for another user)."""

    def renew(self, address: IPv4, session: str, expires: float) -> None:
        """``session`` goes on (an IKE rekey): its lease now ends at ``expires``."""

    def release(self, address: IPv4, session: str, now: float) -> None:
        """``session`` ended and its client knows: the address is free, still recorded
        as ``user``'s."""

    def keep(self, address: IPv4, session: str) -> None:
        """``session`` ended here but its client may not know: the address is held for
        its user until the lease's expiry."""

    def usage(self, now: float) -> Usage: ...


class LeaseBackend(Protocol):
    def pool(self, name: str, addresses: Sequence[IPv4]) -> LeaseStore:
        """The store of pool ``name`` (a profile's), whose addresses are ``addresses``."""

    def framed(self, name: str) -> LeaseStore:
        """The store of addresses outside the pools that pool ``name``'s sessions were
        assigned (a Framed-IP-Address in its profile's ``framed_networks``): only
        ``acquire`` with ``wanted``; one address is never leased to two sessions, whatever
        their pools; a released one is forgotten (no stickiness: the AAA server chose it)."""


class SqliteLeases:
    """Every pool's leases in one SQLite file (``":memory:"``: none kept). Pools are
    declared with :meth:`pool` before or after :meth:`open`; each is fitted to its
    addresses when both have happened."""

    def __init__(self, path: Path | str) -> None:
        self.path = path
        self.db: sqlite3.Connection | None = None
        self._pools: dict[str, SqlitePool] = {}

    def pool(self, name: str, addresses: Sequence[IPv4]) -> SqlitePool:
        store = SqlitePool(self, name, addresses)
        self._pools[name] = store
        if self.db is not None:
            store.fit()
        return store

    def framed(self, name: str) -> SqliteFramed:
        return SqliteFramed(self, name)

    def open(self, now: float) -> None:
        """Open (or create) the file; a corrupt one is moved aside. Leases an earlier run
        left (its IKE SAs were never ended here) become held until their expiry; rows of
        pools and addresses no longer configured go."""
        if str(self.path) != ":memory:":
            self._create_private()
        try:
            self.db = self._connect()
        except sqlite3.OperationalError as e:
            raise LeaseFileError(f"lease file {self.path}: cannot open it: {e}") from None
        except sqlite3.DatabaseError as e:
            self._move_aside(str(e))
            self.db = self._connect()
        db = self.db
        with _transaction(db):
            pools = ", ".join("?" * len(self._pools))
            db.execute(f"DELETE FROM leases WHERE pool NOT IN ({pools})", [*self._pools])
            left = db.execute("UPDATE leases SET free_at = expires WHERE free_at IS NULL").rowcount
            left += db.execute("UPDATE framed SET free_at = expires WHERE free_at IS NULL").rowcount
            db.execute("DELETE FROM framed WHERE free_at <= ?", (now,))
        for store in self._pools.values():
            store.fit()
        held, users, until = db.execute(
            "SELECT count(*) FILTER (WHERE free_at > ?), count(DISTINCT user), max(free_at) "
            "FROM (SELECT user, free_at FROM leases UNION ALL SELECT user, free_at FROM framed)",
            (now,),
        ).fetchone()
        if str(self.path) != ":memory:":
            log.info(
                "leases: {path}: {held} addresses held for sessions an earlier run may have "
                "left on clients{until} ({left} were leased when it stopped), {users} users "
                "remembered",
                path=str(self.path),
                held=held,
                until=f" (until {time.ctime(until)} at the latest)" if held else "",
                left=left,
                users=users,
            )

    def close(self) -> None:
        """Close the file; leases still held by IKE SAs stay recorded as leased (the next
        open holds them until their expiry)."""
        if self.db is not None:
            self.db.close()
            self.db = None

    def __getstate__(self) -> dict[str, object]:
        """An in-memory store copies (pickle, deepcopy: the test harness forks whole
        gateways); a file does not (two copies would overwrite each other's leases)."""
        if str(self.path) != ":memory:":
            raise TypeError(f"lease file {self.path} cannot be copied")
        state = dict(self.__dict__)
        state["db"] = self.db.serialize() if self.db is not None else None
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        image = state.pop("db")
        self.__dict__.update(state)
        self.db = None
        if isinstance(image, bytes):
            self.db = sqlite3.connect(":memory:", isolation_level=None)
            self.db.deserialize(image)

    def _create_private(self) -> None:
        """The file exists, mode 0600 (its -wal file gets the same mode)."""
        path = Path(self.path)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise LeaseFileError(f"lease file {path}: cannot open it: {e.strerror}") from None
        try:
            if stat.S_IMODE(os.fstat(fd).st_mode) != 0o600:  # an existing file, or a umask
                os.fchmod(fd, 0o600)
        except OSError as e:
            raise LeaseFileError(
                f"lease file {path}: cannot make it mode 0600: {e.strerror}"
            ) from None
        finally:
            os.close(fd)

    def _connect(self) -> sqlite3.Connection:
        """A connection with the schema in place; DatabaseError (other than
        OperationalError) if the file is not a sound lease database."""
        db = sqlite3.connect(self.path, isolation_level=None)
        try:
            db.execute("PRAGMA locking_mode = EXCLUSIVE")
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")
            (check,) = db.execute("PRAGMA quick_check").fetchone()
            if check != "ok":
                raise sqlite3.DatabaseError(f"integrity check: {check}")
            (version,) = db.execute("PRAGMA user_version").fetchone()
            if version == 0:
                db.executescript(
                    f"BEGIN; {_SCHEMA} {_FRAMED} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
                )
            elif version == 1:  # an earlier release's file: add the framed table
                db.executescript(
                    f"BEGIN; {_FRAMED} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
                )
            elif version != SCHEMA_VERSION:
                raise sqlite3.DatabaseError(f"schema version {version}, not {SCHEMA_VERSION}")
            # take the exclusive lock now: a second daemon on this file fails at start
            db.execute("BEGIN IMMEDIATE")
            db.execute("COMMIT")
        except BaseException:
            db.close()
            raise
        return db

    def _move_aside(self, reason: str) -> None:
        path = Path(self.path)
        aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
        try:
            for suffix in ("", "-wal", "-shm"):
                source = path.with_name(path.name + suffix)
                if source.exists():
                    os.replace(source, aside.with_name(aside.name + suffix))
        except OSError as e:
            raise LeaseFileError(
                f"lease file {path}: {reason}; cannot move it aside: {e}"
            ) from None
        log.error(
            "leases: {path} is not a usable lease database ({reason}): moved to {aside}, "
            "starting with no leases (addresses of sessions still up on clients may be "
            "handed out again)",
            path=str(path),
            reason=reason,
            aside=str(aside),
        )
        self._create_private()


class SqlitePool:
    """:class:`LeaseStore` of one pool in a :class:`SqliteLeases` file."""

    def __init__(self, leases: SqliteLeases, name: str, addresses: Sequence[IPv4]) -> None:
        self.leases = leases
        self.name = name
        self.addresses = addresses

    @property
    def db(self) -> sqlite3.Connection:
        if self.leases.db is None:
            raise LeaseFileError(f"lease file {self.leases.path} is not open")
        return self.leases.db

    def fit(self) -> None:
        """One row per address of the pool: new addresses added (never leased), rows of
        addresses no longer in it removed."""
        wanted = {int(a) for a in self.addresses}
        db = self.db
        with _transaction(db):
            rows = db.execute("SELECT address FROM leases WHERE pool = ?", (self.name,))
            known = {a for (a,) in rows}
            db.executemany(
                "DELETE FROM leases WHERE pool = ? AND address = ?",
                ((self.name, a) for a in known - wanted),
            )
            db.executemany(
                "INSERT INTO leases (pool, address) VALUES (?, ?)",
                ((self.name, a) for a in sorted(wanted - known)),
            )

    def acquire(
        self, user: str, session: str, now: float, expires: float, wanted: IPv4 | None = None
    ) -> IPv4 | None:
        db = self.db
        if wanted is not None:
            row = db.execute(
                "SELECT address FROM leases WHERE pool = ? AND address = ? AND "
                "(free_at <= ? OR (user = ? AND free_at IS NOT NULL))",
                (self.name, int(wanted), now, user),
            ).fetchone()
            return self._take(row, user, session, expires)
        row = db.execute(
            "SELECT address FROM leases WHERE pool = ? AND user = ? AND free_at IS NOT NULL "
            "ORDER BY free_at DESC LIMIT 1",
            (self.name, user),
        ).fetchone()
        if row is None:
            row = db.execute(
                "SELECT address FROM leases WHERE pool = ? AND free_at <= ? "
                "ORDER BY free_at, address LIMIT 1",
                (self.name, now),
            ).fetchone()
        return self._take(row, user, session, expires)

    def _take(self, row: tuple[str] | None, user: str, session: str, expires: float) -> IPv4 | None:
        if row is None:
            return None
        self.db.execute(
            "UPDATE leases SET user = ?, session = ?, expires = ?, free_at = NULL "
            "WHERE pool = ? AND address = ?",
            (user, session, expires, self.name, row[0]),
        )
        return IPv4(row[0])

    def renew(self, address: IPv4, session: str, expires: float) -> None:
        self._update("expires = ?", expires, address, session)

    def release(self, address: IPv4, session: str, now: float) -> None:
        self._update("free_at = ?", now, address, session)

    def keep(self, address: IPv4, session: str) -> None:
        self._update("free_at = expires", None, address, session)

    def _update(self, assignment: str, value: float | None, address: IPv4, session: str) -> None:
        """Change the lease ``session`` holds on ``address`` (none: nothing happens)."""
        values = () if value is None else (value,)
        self.db.execute(
            f"UPDATE leases SET {assignment} "
            "WHERE pool = ? AND address = ? AND session = ? AND free_at IS NULL",
            (*values, self.name, int(address), session),
        )

    def usage(self, now: float) -> Usage:
        leased, held, free = self.db.execute(
            "SELECT count(*) FILTER (WHERE free_at IS NULL), count(*) FILTER (WHERE free_at > ?),"
            " count(*) FILTER (WHERE free_at <= ?) FROM leases WHERE pool = ?",
            (now, now, self.name),
        ).fetchone()
        return Usage(leased, held, free)


class SqliteFramed:
    """:class:`LeaseStore` of the framed addresses of pool ``name`` in a
    :class:`SqliteLeases` file (:meth:`LeaseBackend.framed`)."""

    def __init__(self, leases: SqliteLeases, name: str) -> None:
        self.leases = leases
        self.name = name

    @property
    def db(self) -> sqlite3.Connection:
        if self.leases.db is None:
            raise LeaseFileError(f"lease file {self.leases.path} is not open")
        return self.leases.db

    def acquire(
        self, user: str, session: str, now: float, expires: float, wanted: IPv4 | None = None
    ) -> IPv4 | None:
        """``wanted`` unless another session leases it, or it is held for another user."""
        if wanted is None:
            return None
        db = self.db
        with _transaction(db):
            row = db.execute(
                "SELECT user, free_at FROM framed WHERE address = ?", (int(wanted),)
            ).fetchone()
            if row is not None and (row[1] is None or (row[1] > now and row[0] != user)):
                return None
            db.execute(
                "INSERT OR REPLACE INTO framed (address, pool, user, session, expires, free_at) "
                "VALUES (?, ?, ?, ?, ?, NULL)",
                (int(wanted), self.name, user, session, expires),
            )
        return wanted

    def renew(self, address: IPv4, session: str, expires: float) -> None:
        self._update("UPDATE framed SET expires = ?", (expires,), address, session)

    def release(self, address: IPv4, session: str, now: float) -> None:
        self._update("DELETE FROM framed", (), address, session)

    def keep(self, address: IPv4, session: str) -> None:
        self._update("UPDATE framed SET free_at = expires", (), address, session)

    def _update(
        self, statement: str, values: tuple[float, ...], address: IPv4, session: str
    ) -> None:
        """Change the lease ``session`` holds on ``address`` (none: nothing happens)."""
        self.db.execute(
            f"{statement} WHERE address = ? AND session = ? AND free_at IS NULL",
            (*values, int(address), session),
        )

    def usage(self, now: float) -> Usage:
        """Leased and held framed addresses of this pool's sessions (free: none counted,
        the networks are the AAA server's to fill)."""
        leased, held = self.db.execute(
            "SELECT count(*) FILTER (WHERE free_at IS NULL), count(*) FILTER (WHERE free_at > ?)"
            " FROM framed WHERE pool = ?",
            (now, self.name),
        ).fetchone()
        return Usage(leased, held, 0)


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    """One transaction around the block (the connection is in autocommit mode)."""
    db.execute("BEGIN")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
