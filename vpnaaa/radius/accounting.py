"""Accounting records (RFC 2866), stored before they are acknowledged.

One JSON object per line: when it arrived, which client sent it, and every attribute by
its dictionary name. RFC 2866 §2 lets the server answer only once the record is stored,
so the line is written and flushed before the Accounting-Response goes out; a failed write
sends no answer and the NAS retransmits. :meth:`AccountingLog.reopen` (on SIGHUP) lets
logrotate rename the file: later records go to a new file under the configured name.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import IO, Any

from pyrad.packet import AcctPacket

from vpnaaa import logs
from vpnaaa.radius import wire

log = logs.get("vpnaaa.radius")


def _value(request: AcctPacket, name: Any) -> list[Any]:
    """The decoded values of one attribute; octets (and values that do not decode) as hex."""
    try:
        values = request[name]
    except Exception:  # pyrad raises many types for malformed values
        values = [v.hex() for v in dict.__getitem__(request, request._EncodeKey(name))]
    return [
        v if isinstance(v, int | str) else v.hex() if isinstance(v, bytes) else str(v)
        for v in values
    ]


def record(request: AcctPacket, client: str, peer: str, now: float) -> dict[str, Any]:
    """The accounting record for one Accounting-Request."""
    attributes = {}
    for name in request.keys():  # noqa: SIM118 (pyrad keys() gives names, iter gives codes)
        if name in ("Message-Authenticator", "Proxy-State"):
            continue
        label = name if isinstance(name, str) else repr(name)
        attributes[label] = _value(request, name)
    return {
        "time": round(now, 3),
        "client": client,
        "peer": peer,
        "id": request.id,
        "attributes": attributes,
    }


class AccountingLog:
    """An append-only file of accounting records, one flushed line each."""

    def __init__(self, path: Path, fsync: bool = False) -> None:
        self.path = path
        self.fsync = fsync
        self._file: IO[str] | None = None

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._file = os.fdopen(fd, "a", encoding="utf-8")

    def reopen(self) -> None:
        """Close the file and open ``path`` again (logrotate's rename, then SIGHUP). If it
        cannot be opened now, the error is logged and the next record tries again."""
        self.close()
        try:
            self.open()
        except OSError as e:
            log.error("accounting log {path} not reopened: {error}", path=str(self.path), error=e)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def store(self, raw: bytes, client: str, peer: str) -> None:
        """Write and flush the record of one (validated) Accounting-Request packet;
        raises OSError if it could not be stored."""
        request = AcctPacket(packet=raw, dict=wire.DICTIONARY)
        if self._file is None:
            self.open()
        assert self._file is not None
        line = json.dumps(record(request, client, peer, time.time()), separators=(",", ":"))
        self._file.write(line + "\n")
        self._file.flush()
        if self.fsync:
            os.fsync(self._file.fileno())
