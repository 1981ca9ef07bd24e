"""Durable state of the emulator daemon: a snapshot plus a write-ahead journal.

* ``host.state``: ``EmulatedHost.to_state()`` (plain data, pickled; loaded with an unpickler
  that refuses every class, so a state file can never run code), written atomically
  (temp file, fsync, rename, fsync of the directory) with a generation number.
* ``journal``: every hypercall the daemon acknowledged since that snapshot, as the hypervisor
  saw it: caller, op, arguments, result and the caller's memory regions the call could read.
  Records are appended before the reply is sent and fsync'ed once per batch of replies (group
  commit), each with its length and CRC so that a torn tail (a crash mid-append, never
  acknowledged) is recognised and dropped. Replaying the records through the same entry on top
  of the snapshot rebuilds the host exactly: the emulator is deterministic.

The journal carries the generation of the snapshot it extends; a journal left behind by a crash
between writing a new snapshot and starting its journal belongs to the older generation and is
ignored (its records are in the snapshot already).
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import struct
import zlib
from pathlib import Path
from typing import Any, NamedTuple

from xentmem._files import atomic_write
from xentmem.xenstore._persist import JOURNAL as XENSTORE_JOURNAL
from xentmem.xenstore._persist import SNAPSHOT as XENSTORE_SNAPSHOT

SNAPSHOT = "host.state"
JOURNAL = "journal"
_MAGIC_SNAP, _MAGIC_JOURNAL, _FORMAT = b"XTMS", b"XTMJ", 1
_HEAD = struct.Struct("<4sIQ")  # magic, format, generation
_RECORD = struct.Struct("<II")  # payload length, crc32 of the payload
_CALL = struct.Struct("<IIqBH")  # domid, op, result, nargs, ncaptures
_CAPTURE = struct.Struct("<QI")  # guest address, size (+ bytes)


class Record(NamedTuple):
    """One acknowledged hypercall, replayable."""

    domid: int
    op: int
    args: tuple[int, ...]
    result: int
    captures: list[tuple[int, bytes]]

    def encode(self) -> bytes:
        parts = [_CALL.pack(self.domid, self.op, self.result, len(self.args),
                            len(self.captures)), struct.pack(f"<{len(self.args)}Q", *self.args)]
        for address, data in self.captures:
            parts += [_CAPTURE.pack(address, len(data)), data]
        payload = b"".join(parts)
        return _RECORD.pack(len(payload), zlib.crc32(payload)) + payload

    @classmethod
    def decode(cls, payload: bytes) -> Record:
        domid, op, result, nargs, ncaps = _CALL.unpack_from(payload)
        pos = _CALL.size
        args = struct.unpack_from(f"<{nargs}Q", payload, pos)
        pos += 8 * nargs
        captures = []
        for _ in range(ncaps):
            address, size = _CAPTURE.unpack_from(payload, pos)
            pos += _CAPTURE.size
            captures.append((address, payload[pos:pos + size]))
            pos += size
        return cls(domid, op, args, result, captures)


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

    @property
    def exists(self) -> bool:
        return (self.directory / SNAPSHOT).exists()

    def load(self) -> tuple[dict[str, Any] | None, list[Record]]:
        """The saved host state (``None`` if none) and the journal records extending it."""
        snap = self.directory / SNAPSHOT
        if not snap.exists():
            return None, []
        raw = snap.read_bytes()
        magic, fmt, generation = _HEAD.unpack_from(raw)
        if magic != _MAGIC_SNAP or fmt != _FORMAT:
            raise ValueError(f"{snap} is not an emulator state file (format {fmt})")
        state = _PlainUnpickler(io.BytesIO(raw[_HEAD.size:])).load()
        self.generation = generation
        return state, self._records(generation)

    def _records(self, generation: int) -> list[Record]:
        try:
            raw = (self.directory / JOURNAL).read_bytes()
        except FileNotFoundError:
            return []
        if len(raw) < _HEAD.size or _HEAD.unpack_from(raw) != (_MAGIC_JOURNAL, _FORMAT,
                                                               generation):
            return []
        records, pos = [], _HEAD.size
        while pos + _RECORD.size <= len(raw):
            size, crc = _RECORD.unpack_from(raw, pos)
            payload = raw[pos + _RECORD.size:pos + _RECORD.size + size]
            if len(payload) != size or zlib.crc32(payload) != crc:
                break  # torn tail: written, never acknowledged
            records.append(Record.decode(payload))
            pos += _RECORD.size + size
        return records

    def save(self, state: dict[str, Any]) -> None:
        """Write a snapshot of ``state`` and start an empty journal extending it."""
        self.close()
        generation = self.generation + 1
        atomic_write(self.directory / SNAPSHOT, _HEAD.pack(_MAGIC_SNAP, _FORMAT, generation)
                     + pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL))
        head = _HEAD.pack(_MAGIC_JOURNAL, _FORMAT, generation)
        atomic_write(self.directory / JOURNAL, head)
        self.generation = generation
        self._fd = os.open(self.directory / JOURNAL, os.O_WRONLY | os.O_APPEND)
        self.journal_bytes = len(head)

    def append(self, record: Record, *, durable: bool = True) -> None:
        """Append one record. It is in the page cache at once (a killed daemon keeps it);
        ``durable`` ones are also fsync'ed by the next ``commit()``, which makes every record
        before them durable too."""
        if self._fd is None:
            raise RuntimeError("journal not open: save() a snapshot first")
        data = record.encode()
        os.write(self._fd, data)
        self.journal_bytes += len(data)
        self._unsynced |= durable

    def commit(self) -> None:
        """fsync the journal if a durable record is waiting (one fsync for the batch)."""
        if self._unsynced and self._fd is not None:
            if self.sync:
                os.fdatasync(self._fd)
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
        for name in (SNAPSHOT, JOURNAL, XENSTORE_SNAPSHOT, XENSTORE_JOURNAL):
            with contextlib.suppress(FileNotFoundError):
                (self.directory / name).unlink()
        self.generation = 0
