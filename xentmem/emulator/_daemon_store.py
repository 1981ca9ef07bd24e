"""Durable state of the emulator daemon: a snapshot plus a write-ahead journal.

* ``host.state``: ``EmulatedHost.to_state()`` (plain data, pickled; loaded with an unpickler
  that refuses every class, so a state file can never run code), written atomically
  (temp file, fsync, rename, fsync of the directory) with a generation number.
* ``journal``: every hypercall the daemon will acknowledge since that snapshot, as the
  hypervisor is about to see it: caller, op, arguments and the caller's memory regions the call
  could read. A record is appended **before** the call runs, so a call whose record cannot be
  written (disk full, I/O error) is refused and never runs; records are fsync'ed once per batch
  of replies (group commit) before any reply of the batch leaves. Replaying the records through
  the same entry on top of the snapshot rebuilds the host exactly: the emulator is
  deterministic.

Each record (format 2) carries its length, the CRC of its payload and the CRC of that header.
Reading tells a **torn tail** (a crash mid-append: the last record cut short, never
acknowledged; dropped) from **damage** (a bad header, or a bad record with more after it):
damage raises :class:`~xentmem.errors.StateDamaged` naming the file, the offset and how many
records are readable, and nothing is written; :meth:`StateStore.recover` keeps a copy of the
damaged files and truncates at the last good record. A missing snapshot beside a journal that
holds records is damage too. A failed append leaves nothing behind (the file is cut back to its
last record), so when space returns the journal continues with no hole.

The journal carries the generation of the snapshot it extends; a journal left behind by a crash
between writing a new snapshot and starting its journal belongs to the older generation and is
ignored (its records are in the snapshot already). Format 1 files (the previous release) are
still read.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import pickle
import shutil
import struct
import time
import zlib
from pathlib import Path
from typing import Any, NamedTuple

from xentmem._files import atomic_write, fsync_dir
from xentmem.errors import StateDamaged, StoreFailing
from xentmem.xenstore._persist import JOURNAL as XENSTORE_JOURNAL
from xentmem.xenstore._persist import SNAPSHOT as XENSTORE_SNAPSHOT

SNAPSHOT = "host.state"
JOURNAL = "journal"
NEXT_JOURNAL = "journal.next"  # where records go while a snapshot is written in the background
_MAGIC_SNAP, _MAGIC_JOURNAL, _FORMAT = b"XTMS", b"XTMJ", 2
_FORMATS = (1, 2)
_HEAD = struct.Struct("<4sIQ")  # magic, format, generation
_RECORD_V1 = struct.Struct("<II")  # payload length, crc32 of the payload
_RECORD = struct.Struct("<III")  # payload length, crc32 of the payload, crc32 of those 8 bytes
_CALL_V1 = struct.Struct("<IIqBH")  # domid, op, result, nargs, ncaptures
_CALL = struct.Struct("<IIBH")  # domid, op, nargs, ncaptures
_CAPTURE = struct.Struct("<QI")  # guest address, size (+ bytes)


class Record(NamedTuple):
    """One hypercall, replayable."""

    domid: int
    op: int
    args: tuple[int, ...]
    captures: list[tuple[int, bytes]]

    def encode(self) -> bytes:
        parts = [_CALL.pack(self.domid, self.op, len(self.args), len(self.captures)),
                 struct.pack(f"<{len(self.args)}Q", *self.args)]
        for address, data in self.captures:
            parts += [_CAPTURE.pack(address, len(data)), data]
        payload = b"".join(parts)
        head = struct.pack("<II", len(payload), zlib.crc32(payload))
        return head + struct.pack("<I", zlib.crc32(head)) + payload

    @classmethod
    def decode(cls, payload: bytes, fmt: int = _FORMAT) -> Record:
        if fmt == 1:
            domid, op, _result, nargs, ncaps = _CALL_V1.unpack_from(payload)
            pos = _CALL_V1.size
        else:
            domid, op, nargs, ncaps = _CALL.unpack_from(payload)
            pos = _CALL.size
        args = struct.unpack_from(f"<{nargs}Q", payload, pos)
        pos += 8 * nargs
        captures = []
        for _ in range(ncaps):
            address, size = _CAPTURE.unpack_from(payload, pos)
            pos += _CAPTURE.size
            captures.append((address, payload[pos:pos + size]))
            pos += size
        if pos != len(payload):
            raise ValueError(f"{len(payload) - pos} stray byte(s) after the record")
        return cls(domid, op, args, captures)


class _Scan(NamedTuple):
    records: list[Record]
    good: int  # offset just past the last good record
    damage: str | None  # why reading stopped early, if it was damage and not a torn tail


def _scan(raw: bytes, fmt: int) -> _Scan:
    """Read every record after the header; tell a torn tail from damage."""
    records: list[Record] = []
    pos = _HEAD.size
    size_of = _RECORD_V1.size if fmt == 1 else _RECORD.size
    while pos < len(raw):
        rest = raw[pos:]
        if not any(rest[:size_of]):  # zeros: never written (or preallocated)
            return _Scan(records, pos, None if not any(rest) else
                         f"zeros at offset {pos} followed by data")
        if len(rest) < size_of:
            return _Scan(records, pos, None)  # a header cut short: torn tail
        if fmt == 1:
            length, crc = _RECORD_V1.unpack_from(raw, pos)
        else:
            length, crc, head_crc = _RECORD.unpack_from(raw, pos)
            if zlib.crc32(raw[pos:pos + 8]) != head_crc:
                return _Scan(records, pos, f"a damaged record header at offset {pos}")
        end = pos + size_of + length
        payload = raw[pos + size_of:end]
        if end > len(raw):
            return _Scan(records, pos, None)  # the last record cut short: torn tail
        if zlib.crc32(payload) != crc:
            if end == len(raw) or not any(raw[end:]) or fmt == 1:
                return _Scan(records, pos, None)  # the last record, half written
            return _Scan(records, pos, f"a damaged record at offset {pos}")
        try:
            records.append(Record.decode(payload, fmt))
        except (struct.error, ValueError) as exc:
            return _Scan(records, pos, f"an unreadable record at offset {pos} ({exc})")
        pos = end
    return _Scan(records, pos, None)


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"state files hold plain data only, not {module}.{name}")




class StateStore:
    """The snapshot and journal in ``directory``; ``sync=False`` skips fsync (survives a
    killed daemon, not a power cut)."""

    def __init__(self, directory: Path, *, sync: bool = True) -> None:
        self.directory = directory
        self.sync = sync
        self.generation = 0
        self.journal_bytes = 0
        self._fd: int | None = None
        self._unsynced = False
        self.pending: int | None = None  # the generation of a snapshot being written
    @property
    def exists(self) -> bool:
        return (self.directory / SNAPSHOT).exists()

    def load(self) -> tuple[dict[str, Any] | None, list[Record]]:
        """The saved host state (``None`` if none) and the journal records extending it;
        ``StateDamaged`` (one line: file, offset, readable records) if either is damaged."""
        snap = self.directory / SNAPSHOT
        if not snap.exists():
            journal = self._journal()
            records = _scan(*journal).records if journal is not None else []
            if records:
                raise StateDamaged(f"{snap} is missing but {self.directory / JOURNAL} holds "
                                   f"{len(records)} record(s); refusing to boot "
                                   "a new host over them (up --recover keeps a copy and boots "
                                   "a new host)")
            return None, []
        state, generation = self._snapshot(snap)
        self.generation = generation
        return state, self._records(generation)

    def _snapshot(self, snap: Path) -> tuple[dict[str, Any], int]:
        raw = snap.read_bytes()
        if len(raw) < _HEAD.size:
            raise StateDamaged(f"{snap}: {len(raw)} bytes, shorter than its header (damaged)")
        magic, fmt, generation = _HEAD.unpack_from(raw)
        if magic != _MAGIC_SNAP or fmt not in _FORMATS:
            raise StateDamaged(f"{snap} is not an emulator state file (magic {magic!r}, "
                               f"format {fmt})")
        try:
            state = _PlainUnpickler(io.BytesIO(raw[_HEAD.size:])).load()
        except Exception as exc:  # any garbage: pickle, EOF, struct, unicode ... errors
            raise StateDamaged(f"{snap} is damaged: {type(exc).__name__}: {exc}") from None
        if not isinstance(state, dict) or "config" not in state:
            raise StateDamaged(f"{snap} is damaged: it holds no host state")
        return state, generation

    def _journal(self, name: str = JOURNAL) -> tuple[bytes, int] | None:
        """A journal's bytes and format, or None when there is none (or only a header)."""
        try:
            raw = (self.directory / name).read_bytes()
        except FileNotFoundError:
            return None
        if len(raw) < _HEAD.size:
            return None
        magic, fmt, _ = _HEAD.unpack_from(raw)
        if magic != _MAGIC_JOURNAL or fmt not in _FORMATS:
            raise StateDamaged(f"{self.directory / name} is not an emulator journal (magic "
                               f"{magic!r}, format {fmt})")
        return raw, fmt

    def _records(self, generation: int) -> list[Record]:
        """The records extending snapshot ``generation``: its journal, then the next journal
        when a background snapshot was being written (it extends that newer snapshot, which
        then never arrived); when the newer snapshot did arrive, the next journal alone."""
        records: list[Record] = []
        for name, extends in ((JOURNAL, (generation,)),
                              (NEXT_JOURNAL, (generation, generation + 1))):
            journal = self._journal(name)
            if journal is None:
                continue
            raw, fmt = journal
            gen = _HEAD.unpack_from(raw)[2]
            if gen < generation:
                continue  # older: its records are in the snapshot
            if gen not in extends:
                raise StateDamaged(f"{self.directory / name} extends snapshot {gen} but "
                                   f"{self.directory / SNAPSHOT} is snapshot {generation}")
            scan = _scan(raw, fmt)
            if scan.damage is not None:
                raise StateDamaged(f"{self.directory / name}: {scan.damage}; "
                                   f"{len(records) + len(scan.records)} record(s) before it "
                                   "are readable (up --recover keeps a copy and truncates "
                                   "there)")
            records += scan.records
        return records

    def recover(self) -> dict[str, Any]:
        """Make damaged state bootable: keep a copy of the state files in
        ``damaged-<time>/``, then truncate a damaged journal at its last good record (the
        next journal, which comes after it, is set aside); a journal without a readable
        header is set aside, and so is everything when the snapshot is unreadable or missing
        (a new host boots). What was done, for the log."""
        snap = self.directory / SNAPSHOT
        report: dict[str, Any] = {"kept": None, "dropped_bytes": 0, "records": 0,
                                  "set_aside": []}
        try:
            snapshot_ok = snap.exists() and bool(self._snapshot(snap))
        except StateDamaged:
            snapshot_ok = False
        scans: dict[str, tuple[int, _Scan]] = {}
        unreadable = []
        for name in (JOURNAL, NEXT_JOURNAL):
            try:
                journal = self._journal(name)
            except StateDamaged:
                unreadable.append(name)
                continue
            if journal is not None:
                scans[name] = (len(journal[0]), _scan(*journal))
        damaged = (not snapshot_ok and (snap.exists() or any(sc.records for _, sc in
                                                             scans.values()))) \
            or bool(unreadable) or any(sc.damage for _, sc in scans.values())
        if not damaged:
            return report
        keep = self.directory / f"damaged-{time.strftime('%Y%m%d-%H%M%S')}"
        keep.mkdir(mode=0o700, exist_ok=True)
        for name in (SNAPSHOT, JOURNAL, NEXT_JOURNAL):
            if (self.directory / name).exists():
                shutil.copy2(self.directory / name, keep / name)
        report["kept"] = str(keep)
        aside = [SNAPSHOT, JOURNAL, NEXT_JOURNAL] if not snapshot_ok else unreadable
        if JOURNAL in scans and scans[JOURNAL][1].damage and NEXT_JOURNAL in scans:
            aside.append(NEXT_JOURNAL)  # it continues after what is dropped
        aside = [n for n in aside if (self.directory / n).exists()]
        for name in aside:
            (self.directory / name).unlink()
        report["set_aside"] = aside
        for name, (size, scan) in scans.items():
            if name in aside or scan.damage is None:
                continue
            with open(self.directory / name, "r+b") as f:
                f.truncate(scan.good)
                os.fsync(f.fileno())
            report["dropped_bytes"] += size - scan.good
            report["records"] += len(scan.records)
        return report

    def rotate(self) -> int:
        """Start the next journal for a snapshot about to be written elsewhere (a forked
        child, :meth:`write_snapshot`); its generation. Records go there from now on;
        :meth:`finish` makes it the journal once the snapshot is written."""
        self.close()
        generation = self.generation + 1
        try:
            atomic_write(self.directory / NEXT_JOURNAL,
                         _HEAD.pack(_MAGIC_JOURNAL, _FORMAT, generation))
        except OSError as exc:
            self._open_journal(JOURNAL)
            raise StoreFailing(exc.errno, f"cannot start {self.directory / NEXT_JOURNAL}: "
                               f"{exc.strerror or exc}") from None
        self.pending = generation
        self._open_journal(NEXT_JOURNAL)
        return generation

    def write_snapshot(self, state: dict[str, Any], generation: int) -> None:
        """Write snapshot ``generation`` atomically (raises ``OSError``)."""
        atomic_write(self.directory / SNAPSHOT, _HEAD.pack(_MAGIC_SNAP, _FORMAT, generation)
                     + pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL))

    def finish(self, written: bool) -> None:
        """The background snapshot is done: when ``written``, the next journal becomes the
        journal (the old one is in the snapshot). Otherwise both journals stay (start-up reads
        one after the other) until a :meth:`save` succeeds."""
        if not written or self.pending is None:
            return
        os.replace(self.directory / NEXT_JOURNAL, self.directory / JOURNAL)
        fsync_dir(self.directory)  # the open descriptor follows the file
        self.generation, self.pending = self.pending, None

    def save(self, state: dict[str, Any]) -> None:
        """Write a snapshot of ``state`` and start an empty journal extending it. On failure
        (``StoreFailing``) the previous snapshot and journal stay as they were and appends go
        on to that journal."""
        current = NEXT_JOURNAL if self.pending is not None else JOURNAL
        self.close()
        generation = (self.pending or self.generation) + 1
        try:
            self.write_snapshot(state, generation)
        except OSError as exc:
            self._open_journal(current)  # the old snapshot and journal still hold everything
            raise StoreFailing(exc.errno, f"cannot write {self.directory / SNAPSHOT}: "
                               f"{exc.strerror or exc}") from None
        self.generation, self.pending = generation, None
        with contextlib.suppress(FileNotFoundError):
            (self.directory / NEXT_JOURNAL).unlink()  # its records are in the snapshot
        head = _HEAD.pack(_MAGIC_JOURNAL, _FORMAT, generation)
        try:
            atomic_write(self.directory / JOURNAL, head)
        except OSError as exc:  # the new snapshot holds everything; no journal to append to
            raise StoreFailing(exc.errno, f"cannot start {self.directory / JOURNAL}: "
                               f"{exc.strerror or exc}") from None
        self._open_journal(JOURNAL)

    def _open_journal(self, name: str) -> None:
        with contextlib.suppress(OSError):
            self._fd = os.open(self.directory / name, os.O_WRONLY | os.O_APPEND)
            self.journal_bytes = os.fstat(self._fd).st_size

    def append(self, record: Record, *, durable: bool = True) -> None:
        """Append one record, whole or not at all: ``StoreFailing`` when it cannot be written
        (the file is cut back to its last record). It is in the page cache at once (a killed
        daemon keeps it); ``durable`` ones are also fsync'ed by the next ``commit()``, which
        makes every record before them durable too."""
        if self._fd is None:
            raise StoreFailing(errno.EIO, f"{self.directory / JOURNAL} is not open (its last "
                               "snapshot failed)")
        data = record.encode()
        view = memoryview(data)
        try:
            while view:  # a short write (disk full) is followed by one that raises ENOSPC
                view = view[os.write(self._fd, view):]
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self.journal_bytes)  # no torn record left behind
            raise StoreFailing(exc.errno, f"cannot append to {self.directory / JOURNAL}: "
                               f"{exc.strerror or exc}") from None
        self.journal_bytes += len(data)
        self._unsynced |= durable

    def commit(self) -> None:
        """fsync the journal if a durable record is waiting (one fsync for the batch);
        ``StoreFailing`` if it fails (then nothing of the batch may be acknowledged)."""
        if self._unsynced and self._fd is not None:
            if self.sync:
                try:
                    os.fdatasync(self._fd)
                except OSError as exc:
                    raise StoreFailing(exc.errno, f"cannot sync {self.directory / JOURNAL}: "
                                       f"{exc.strerror or exc}") from None
            self._unsynced = False

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                self.commit()
            os.close(self._fd)
            self._fd = None

    def discard(self) -> None:
        """Forget any saved state (``up --fresh``), xenstored's too."""
        self.close()
        for name in (SNAPSHOT, JOURNAL, NEXT_JOURNAL, XENSTORE_SNAPSHOT, XENSTORE_JOURNAL):
            with contextlib.suppress(FileNotFoundError):
                (self.directory / name).unlink()
        self.generation = 0
