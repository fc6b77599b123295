"""The spool file source (SPEC §4.2 item 4): tail a JSONL file, one signal body per line.

Each complete line (ending in ``\\n``) goes through `Service.accept` with ``source="spool"``.

- **Offsets.** The read position lives in the journal under `spool_name` (``spool:<resolved
  path>``). An accepted line's end offset is committed in the same transaction as its signal, so
  a restart neither skips nor repeats a line; a rejected or blank line's offset is stored after it.
- **Ids.** A line without an ``id`` (or with ``"id": null``) gets one derived from the spool name,
  a truncation generation and the line's start offset, so re-reading a line (a crash between
  reading and storing its offset, an operator rewinding the offset) finds the same signal again
  instead of making a second one. An id the line has is never replaced.
- **Bad lines** (over `MAX_LINE_BYTES`, not UTF-8, not JSON, not an object, invalid as a signal)
  are audited as ``signal_rejected`` with ``spool_line`` (1-based) and ``spool_offset`` (bytes)
  and skipped; the tail goes on. Validation errors are audited by the service, which sees the two
  spool fields through structlog's bound context; the rest are audited here.
- **The file** may not exist yet (one ``spool_waiting`` event, then quiet). If it becomes shorter
  than the offset it was truncated: ``spool_truncated``, and reading restarts at 0 with a new id
  generation, so new lines at old offsets are not taken for the old ones.
- **Rotation.** The file is held open and known by its identity (``st_dev:st_ino``, stored in
  the journal beside the offset; `app.intake.spool_file`). When the path names another file (a
  logrotate ``mv`` and a new file, a replacement by rename), the old file is read to its end
  through the descriptor still open, then the new one from 0 under a new id generation:
  ``spool_rotated``. While the path names no file, the old one is still tailed. At start, an
  offset stored for another file than the path's is looked for in the spool's directory by
  identity (``spool.1``, any name) and read to its end first; if it is gone, ``spool_rotated``
  says so (``unread_bytes`` null).
- **A busy journal** (another process held its write lock past the busy timeout: `JournalBusy`)
  stores nothing: the line is read again at the next poll, and the tail goes on. The accept's
  refusal is audited by the service, the tail's own offset writes here (``journal_busy``,
  ``source="spool"``), each time. **A failed one** (`JournalFailed`: a full disk, an I/O error,
  a failed fsync) is handled the same way (``journal_failed``, critical), except that the next
  tries wait longer each time (the poll interval doubled, up to `FAILED_RETRY_MAX_S`) until a
  line is stored again: the daemon goes on, and its open positions keep their stops.

All file I/O runs in worker threads, in chunks of at most `CHUNK_BYTES`. `run()` polls every
``poll_interval_s`` seconds on the injected clock: a trade-off for portability (no inotify), at
the cost of up to one interval of latency.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from structlog.contextvars import bound_contextvars

from app.clock import Clock
from app.domain import SignalError
from app.intake.service import IntakeClosed, IntakeState, Service, audit_journal_trouble
from app.intake.spool_file import SpoolFile, file_id, find_file
from app.intake.validate import decode_object
from app.journal import Journal, JournalBusy, JournalFailed
from app.observability.audit import AuditEvent
from app.observability.logging import AuditLogger

__all__ = ["CHUNK_BYTES", "MAX_LINE_BYTES", "SpoolTail", "spool_name"]

MAX_LINE_BYTES: Final = 65_536  # the control API's body limit, newline excluded
CHUNK_BYTES: Final = 1 << 20  # must exceed MAX_LINE_BYTES
FAILED_RETRY_MAX_S: Final = 30.0  # the longest wait between two tries on a failed journal


class _AcceptRefused(Exception):
    """The service's accept met a busy or failed journal (it audited that): nothing stored."""


def spool_name(path: Path) -> str:
    """The journal offset name of the spool at `path` (resolves it: a few ``stat`` calls)."""
    return f"spool:{path.resolve()}"


@dataclass(frozen=True, slots=True)
class _Keys:
    offset: str  # the read offset's name in the journal
    generation: str  # how many times the file was found truncated or rotated
    id_prefix: str
    directory: Path  # where the resolved file lives: where a rotated one is looked for

    @classmethod
    def of(cls, path: Path) -> _Keys:
        name = spool_name(path)
        digest = hashlib.sha256(name.encode()).hexdigest()[:10]
        resolved = Path(name.removeprefix("spool:"))
        return cls(name, f"spool-generation:{resolved}", f"spool-{digest}-", resolved.parent)


@dataclass(slots=True)
class _Cursor:
    """Where one `SpoolTail.catch_up` stands in the file (byte offsets)."""

    offset: int  # start of the next line to handle
    pos: int  # next byte to read: past `offset` only inside an over-long line
    stored: int  # the offset last committed to the journal
    handled: int = 0


class SpoolTail:
    """Feeds the JSONL file at `path` to `service`, one signal per line (module docstring).

    `poll_interval_s` is seconds between reads in `run()`. One tail per file: two tails on the
    same file and journal would not repeat signals (the ids) but would race on the offset.
    The file stays open between calls of `catch_up`; `aclose()` closes it (`run()` does so
    when it ends).
    """

    def __init__(self, path: Path, service: Service, journal: Journal, clock: Clock,
                 log: AuditLogger, *, poll_interval_s: float = 0.2) -> None:
        self.path = path
        self._service = service
        self._journal = journal
        self._clock = clock
        self._log = log
        self._poll_interval_s = poll_interval_s
        self._keys: _Keys | None = None  # resolved on first use, off the loop
        self._generation = 0
        self._anchor = (0, 1)  # (offset, number of the line starting there), when known
        self._skip: tuple[int, int] | None = None  # over-long line: (start, bytes scanned to)
        self._waiting = False
        self._unreadable: str | None = None
        self._file: SpoolFile | None = None  # the file the stored offset is in, open
        self._stored_file: str | None = None  # its identity as the journal has it
        self._found_as: Path | None = None  # where `_file` was found, rotated while down

    def __repr__(self) -> str:
        return (f"<SpoolTail {str(self.path)!r} generation={self._generation} "
                f"file={self._stored_file}>")

    async def aclose(self) -> None:
        """Close the open file (in a worker thread: it waits for a read in progress)."""
        file, self._file = self._file, None
        if file is not None:
            await asyncio.to_thread(file.close)

    async def run(self) -> None:
        """Tail the file until cancelled, or until intake closes for shutdown (then return).

        While intake is still starting, lines wait. An unreadable file (other than a missing
        one) is audited as ``spool_unreadable`` once and retried; a busy journal is retried
        (module docstring); so is a failed one, less and less often."""
        retry_s = self._poll_interval_s   # the wait before the next poll: longer after a failure
        try:
            while True:
                failed = False
                try:
                    await self.catch_up()
                    self._unreadable = None
                except IntakeClosed as closed:
                    if closed.state is IntakeState.STOPPING:
                        return
                except _AcceptRefused as refused:   # the service audited it
                    failed = isinstance(refused.__cause__, JournalFailed)
                except (JournalBusy, JournalFailed) as refused:   # the tail's own writes
                    failed = isinstance(refused, JournalFailed)
                    audit_journal_trouble(self._log, refused, source="spool",
                                          journal=self._journal)
                except OSError as error:
                    if repr(error) != self._unreadable:
                        self._unreadable = repr(error)
                        self._log.warning(AuditEvent.SPOOL_UNREADABLE, path=str(self.path),
                                          error=repr(error))
                retry_s = (min(retry_s * 2, max(FAILED_RETRY_MAX_S, self._poll_interval_s))
                           if failed else self._poll_interval_s)
                await self._clock.sleep(retry_s)
        finally:
            await self.aclose()

    async def catch_up(self) -> int:
        """Handle every complete line after the stored offset, and after a rotation every line
        of the new file; return how many (accepted, duplicate or rejected; blank lines are not
        counted).

        Raises `IntakeClosed` when the service is not open (the line is left for later) and
        ``OSError`` if the file exists but cannot be read."""
        keys = await self._load_keys()
        handled = 0
        while (file := self._file or await self._open(keys)) is not None:
            at_path = await asyncio.to_thread(file_id, self.path)  # before the last read
            count, unread = await self._read(keys, file)
            handled += count
            if at_path in (None, file.id) or not await self._switch(keys, file, count, unread):
                break  # still the file at the path (or none is there yet: keep this one)
        return handled

    async def _read(self, keys: _Keys, file: SpoolFile) -> tuple[int, int]:
        """Handle the complete lines of `file` after the stored offset: (how many, bytes left
        after the last complete line)."""
        offset = await self._journal.get_offset(keys.offset) or 0
        cursor = _Cursor(offset, offset, offset)
        if self._skip is not None and self._skip[0] == offset:
            cursor.pos = self._skip[1]
        else:
            self._skip = None  # none, or the offset was moved under us
        while True:
            chunk = await asyncio.to_thread(file.read, cursor.pos, CHUNK_BYTES)
            if chunk.size < cursor.pos:
                await self._restart(keys, cursor.offset, chunk.size)
                cursor = _Cursor(0, 0, 0, cursor.handled)
                continue
            if self._skip is not None:
                more = await self._skip_long_line(keys, cursor, chunk.data)
            else:
                more = await self._lines(keys, cursor, chunk.data)
            if not more:
                break
        if cursor.stored != cursor.offset:  # blank lines at the end: do not read them again
            await self._journal.set_offset(keys.offset, cursor.offset)
        return cursor.handled, max(chunk.size - cursor.offset, 0)

    async def _lines(self, keys: _Keys, cursor: _Cursor, data: bytes) -> bool:
        """Handle the complete lines of `data` (read at `cursor.pos`); True to read on."""
        start = 0
        while (newline := data.find(b"\n", start)) >= 0:
            end = cursor.pos + newline + 1
            if await self._line(keys, data[start:newline], cursor.pos + start, end):
                cursor.handled, cursor.stored = cursor.handled + 1, end
            start = newline + 1
        cursor.offset = cursor.pos + start
        if len(data) - start > MAX_LINE_BYTES:  # no end in sight: reject now, skip to its end
            await self._reject(keys, cursor.offset, None, "body",
                               f"is longer than {MAX_LINE_BYTES} bytes")
            cursor.pos += len(data)
            self._skip = (cursor.offset, cursor.pos)
        else:
            cursor.pos = cursor.offset
        return len(data) == CHUNK_BYTES

    async def _skip_long_line(self, keys: _Keys, cursor: _Cursor, data: bytes) -> bool:
        """Look for the end of the over-long line at `cursor.offset` in `data`, read at
        `cursor.pos`; store the offset past it once found. True to read on."""
        newline = data.find(b"\n")
        if newline < 0:
            cursor.pos += len(data)
            self._skip = (cursor.offset, cursor.pos)
            return len(data) == CHUNK_BYTES
        end = cursor.pos + newline + 1
        await self._journal.set_offset(keys.offset, end)
        self._advance(cursor.offset, end)
        self._skip = None
        cursor.handled += 1
        cursor.offset = cursor.stored = cursor.pos = end
        return True

    async def _line(self, keys: _Keys, raw: bytes, start: int, end: int) -> bool:
        """One complete line at bytes [start, end); False if it was blank (offset not stored)."""
        if len(raw) > MAX_LINE_BYTES:
            await self._reject(keys, start, end, "body", f"is longer than {MAX_LINE_BYTES} bytes")
            return True
        if not raw.strip():
            self._advance(start, end)
            return False
        try:
            data = decode_object(raw)
        except SignalError as error:
            await self._reject(keys, start, end, error.field, error.detail)
            return True
        if data.get("id") is None:  # absent or null: derive one, stable across re-reads
            generation = f"g{self._generation}-" if self._generation else ""
            data["id"] = f"{keys.id_prefix}{generation}{start}"
        number = await self._line_number(start)
        with bound_contextvars(spool_line=number, spool_offset=start):
            try:
                await self._service.accept(data, source="spool", wait=True,
                                           offset=(keys.offset, end))
            except SignalError:  # the service audited it, with the bound spool fields
                await self._journal.set_offset(keys.offset, end)
            except (JournalBusy, JournalFailed) as refused:   # nothing stored: read again
                raise _AcceptRefused() from refused
        self._advance(start, end)
        return True

    async def _reject(self, keys: _Keys, start: int, end: int | None, field: str,
                      detail: str) -> None:
        """Audit a line this module cannot hand to the service; store the offset past it if
        its end (`end`) is known."""
        number = await self._line_number(start)
        self._log.warning(AuditEvent.SIGNAL_REJECTED, source="spool", field=field, detail=detail,
                          spool_line=number, spool_offset=start)
        if end is not None:
            await self._journal.set_offset(keys.offset, end)
            self._advance(start, end)

    async def _line_number(self, start: int) -> int:
        """The 1-based number of the line starting at byte `start` (counted from the last known
        line once, after a restart or a rewound offset)."""
        at, number = self._anchor
        if at != start:
            if at > start:
                at, number = 0, 1
            assert self._file is not None  # lines are only read from the open file
            number += await asyncio.to_thread(self._file.count_lines, at, start)
            self._anchor = (start, number)
        return number

    def _advance(self, start: int, end: int) -> None:
        at, number = self._anchor
        if at == start:
            self._anchor = (end, number + 1)

    async def _load_keys(self) -> _Keys:
        if self._keys is None:
            keys = await asyncio.to_thread(_Keys.of, self.path)
            self._generation = await self._journal.get_offset(keys.generation) or 0
            self._stored_file = await self._journal.get_offset_file(keys.offset)
            self._keys = keys
        return self._keys

    async def _open(self, keys: _Keys) -> SpoolFile | None:
        """Open the file the stored offset is in: the one at the path; or, if that is another
        (rotated or replaced while no file was open), the stored one found in the spool's
        directory, to be read to its end first. None while there is neither."""
        stored = self._stored_file
        opened = await asyncio.to_thread(SpoolFile.open, self.path)
        if opened is not None and stored in (None, opened.id):
            if stored is None:  # a new spool, or an offset journaled before identities were
                offset = await self._journal.get_offset(keys.offset) or 0
                await self._journal.set_offset(keys.offset, offset, file=opened.id)
                self._stored_file = opened.id
            self._file, self._waiting = opened, False
            return opened
        old = None if stored is None else await asyncio.to_thread(find_file, keys.directory,
                                                                   stored)
        if old is not None:
            if opened is not None:
                await asyncio.to_thread(opened.close)
            self._file, self._found_as, self._waiting = old, old.name, False
            return old
        if opened is None:
            self._note_missing()
            return None
        assert stored is not None
        # Replaced while down, and the old file is gone: what it had past the offset is lost.
        self._waiting = False
        await self._rotated(keys, stored, opened, lines=0, unread=None, while_down=True)
        return opened

    async def _switch(self, keys: _Keys, old: SpoolFile, lines: int, unread: int) -> bool:
        """`old`, read to its end, is no longer the file at the path: go on with the new one.
        False if there is no new one to open after all (next poll)."""
        new = await asyncio.to_thread(SpoolFile.open, self.path)
        if new is None or new.id == old.id:
            if new is not None:
                await asyncio.to_thread(new.close)
            return False
        await self._rotated(keys, old.id, new, lines=lines, unread=unread,
                            while_down=self._found_as is not None)
        await asyncio.to_thread(old.close)
        return True

    async def _rotated(self, keys: _Keys, old: str, new: SpoolFile, *, lines: int,
                       unread: int | None, while_down: bool) -> None:
        """Audit a rotation, then read `new` from 0 under a new generation (the generation,
        the offset and the file's identity stored in one transaction)."""
        audit = self._log.info if unread == 0 else self._log.warning
        audit(AuditEvent.SPOOL_ROTATED, path=str(self.path), old_file=old, new_file=new.id,
              while_down=while_down,
              old_found_as=str(self._found_as) if self._found_as is not None else None,
              old_lines=lines, unread_bytes=unread)
        self._generation += 1
        await self._journal.set_offsets({keys.generation: (self._generation, None),
                                         keys.offset: (0, new.id)})
        self._file, self._stored_file, self._found_as = new, new.id, None
        self._anchor, self._skip = (0, 1), None

    async def _restart(self, keys: _Keys, offset: int, size: int) -> None:
        """The file is shorter than where we were: read it again from 0 under a new generation
        (both stored in one transaction)."""
        self._log.warning(AuditEvent.SPOOL_TRUNCATED, path=str(self.path), offset=offset,
                          size=size)
        self._generation += 1
        await self._journal.set_offsets({keys.generation: (self._generation, None),
                                         keys.offset: (0, None)})
        self._anchor, self._skip = (0, 1), None

    def _note_missing(self) -> None:
        if not self._waiting:
            self._waiting = True
            self._log.info(AuditEvent.SPOOL_WAITING, path=str(self.path))
