"""The deny list: certificate serial numbers the administrator refuses, whatever the CA says.

One file under the state directory (:data:`FILE_NAME`), one serial per line in hex as
``openssl x509 -serial`` prints it, ``#`` comments allowed. Writes replace the file
atomically (temporary file, fsync, rename), mode 0600. Reads are tolerant: a line that is
not a serial is skipped with a log line, a file that cannot be read keeps the list read
last, a missing file is an empty list. :meth:`DenyList.denied` costs one ``stat`` and reads
the file again only when it changed, so every DenyList on the same file (the admin API's,
the IKE responder's) sees the others' writes. All of it blocks (a small local file).

A serial is denied whichever CA issued it: serials are unique per CA only, so with several
CAs a deny may catch another CA's certificate with the same serial; say so to whoever uses
several (the usual case is one enterprise CA).
"""

from __future__ import annotations

from pathlib import Path

from vpnaaa import logs, private
from vpnaaa.certs.files import Version, version
from vpnaaa.certs.verify import parse_serial, serial_hex

log = logs.get("vpnaaa.certs")

FILE_NAME = "denied-serials"


class DenyList:
    """Serial numbers refused (module docstring). ``path``: usually state_dir/FILE_NAME."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._serials: frozenset[int] = frozenset()
        self._seen: Version | None = None
        self.reload()

    def denied(self, serial: int) -> bool:
        """Whether ``serial`` is on the list (read again first if the file changed)."""
        if version(self.path) != self._seen:
            self.reload()
        return serial in self._serials

    def serials(self) -> tuple[str, ...]:
        """The list, sorted, in hex."""
        if version(self.path) != self._seen:
            self.reload()
        return tuple(serial_hex(s) for s in sorted(self._serials))

    def add(self, serial: int) -> bool:
        """Deny ``serial``; False when it already was. Writes the file."""
        self.reload()
        if serial in self._serials:
            return False
        self._write(self._serials | {serial})
        return True

    def remove(self, serial: int) -> bool:
        """Allow ``serial`` again; False when it was not denied. Writes the file."""
        self.reload()
        if serial not in self._serials:
            return False
        self._write(self._serials - {serial})
        return True

    def reload(self) -> None:
        """Read the file again now; keeps the last list when it cannot."""
        seen = version(self.path)
        changed = seen != self._seen
        self._seen = seen
        if seen is None:
            self._serials = frozenset()
            return
        try:
            text = self.path.read_text("utf-8", "replace")
        except OSError as e:
            if changed:
                log.warn(
                    "deny list {path}: cannot read: {why}; keeping the {n} serial(s) read before",
                    path=str(self.path),
                    why=e.strerror,
                    n=len(self._serials),
                )
            return
        serials = set()
        for number, line in enumerate(text.splitlines(), 1):
            entry = line.split("#", 1)[0].strip()
            if not entry:
                continue
            try:
                serials.add(parse_serial(entry))
            except ValueError as e:
                if changed:
                    log.warn(
                        "deny list {path} line {n}: {why}; skipped",
                        path=str(self.path),
                        n=number,
                        why=str(e),
                    )
        self._serials = frozenset(serials)

    def _write(self, serials: frozenset[int]) -> None:
        lines = "".join(f"{serial_hex(s)}\n" for s in sorted(serials))
        document = "# certificate serials vpnaaa refuses (vpnaaa deny)\n" + lines
        private.replace_file(self.path, document)
        self._serials = serials
        self._seen = version(self.path)
