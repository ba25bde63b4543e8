"""Which version of a file is on disk, so a reader re-reads it only when it changed (the
CRL files, the deny list): one ``stat`` per check."""

from __future__ import annotations

import os
from pathlib import Path

Version = tuple[int, int, int]  # (inode, size, mtime_ns): a rename or a rewrite changes it


def version(path: Path) -> Version | None:
    """The file's version now; None when it cannot be read (absent, no permission)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)
