"""The spool's file, held open by identity (SPEC §4.2 item 4); every function here blocks, so the
tail calls them in worker threads.

A file is known by its identity, ``st_dev:st_ino`` (`file_id`), not its name: a rotation
(``mv spool spool.1`` and a new ``spool``) or a replacement by rename leaves the name pointing at
another file. `SpoolFile` keeps the file it was opened on, so the tail can read the old file to
its end after the name has moved on, and can tell the two apart at all: while a file is open its
inode cannot be reused by a new one. `find_file` looks for a file by identity in a directory,
for a rotation that happened while the daemon was down.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = ["Chunk", "SpoolFile", "file_id", "find_file"]

_COUNT_BYTES: Final = 1 << 20


@dataclass(frozen=True, slots=True)
class Chunk:
    size: int  # the file's size when read
    data: bytes  # up to `limit` bytes from the offset (empty if the file is shorter)


def _identity(result: os.stat_result) -> str:
    return f"{result.st_dev}:{result.st_ino}"


def file_id(path: Path) -> str | None:
    """The identity (``"st_dev:st_ino"``) of the file at `path`, following symlinks; None if
    there is none."""
    try:
        return _identity(os.stat(path))
    except FileNotFoundError:
        return None


class SpoolFile:
    """One open spool file, read by position (``pread``), so reads need no shared seek offset.

    `name` is where it was opened (it may have been renamed since); `id` its identity. A lock
    keeps `close` from pulling the descriptor from under a read still running in its thread.
    """

    def __init__(self, fd: int, name: Path, identity: str) -> None:
        self._fd = fd
        self.name = name
        self.id = identity
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<SpoolFile {str(self.name)!r} id={self.id} {'closed' if self._fd < 0 else 'open'}>"

    @classmethod
    def open(cls, path: Path, expected: str | None = None) -> SpoolFile | None:
        """Open the file at `path` for reading; None if it does not exist, or if `expected` is
        given and the file is another one. ``OSError`` if it cannot be read (a directory:
        ``IsADirectoryError``)."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            info = os.fstat(fd)
            if stat.S_ISDIR(info.st_mode):
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        except BaseException:
            os.close(fd)
            raise
        if expected is not None and _identity(info) != expected:
            os.close(fd)
            return None
        return cls(fd, path, _identity(info))

    def read(self, offset: int, limit: int) -> Chunk:
        """Up to `limit` bytes from byte `offset`, with the file's current size."""
        with self._lock:
            size = os.fstat(self._fd).st_size
            if size <= offset:
                return Chunk(size, b"")
            return Chunk(size, os.pread(self._fd, limit, offset))

    def count_lines(self, start: int, stop: int) -> int:
        """The newlines in bytes [start, stop)."""
        count = 0
        with self._lock:
            while start < stop:
                data = os.pread(self._fd, min(_COUNT_BYTES, stop - start), start)
                if not data:
                    break
                count += data.count(b"\n")
                start += len(data)
        return count

    def close(self) -> None:
        """Close the descriptor (after a read in progress). Idempotent."""
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


def find_file(directory: Path, identity: str) -> SpoolFile | None:
    """The file of `identity` among the entries of `directory` (a rotated spool: ``spool.1``,
    ``spool-20260101``, any name), opened; None if it is not there (deleted, compressed,
    moved elsewhere) or the directory cannot be listed."""
    inode = int(identity.rpartition(":")[2])
    try:
        with os.scandir(directory) as entries:
            names = [Path(e.path) for e in entries
                     if e.inode() == inode and e.is_file(follow_symlinks=False)]
    except OSError:
        return None
    for name in names:  # same inode number: check the device too, on the opened file
        try:
            found = SpoolFile.open(name, expected=identity)
        except OSError:
            continue
        if found is not None:
            return found
    return None
