"""Durable state of our xenstored: a snapshot plus an append-only journal of whole-node effects.

Two files in the server's ``state_dir``:

* ``xenstore.state``: the snapshot. A head (magic, format, generation) and one framed record
  holding the whole tree as effects, parents first, then the introduced domains and their
  SET_TARGET targets. Written atomically (temp file, fsync, rename, fsync of the directory).
* ``xenstore.journal``: a head naming the generation of the snapshot it extends, then one framed
  record per acknowledged request: the effects it had (see :mod:`._store`: ``("w", path, value,
  perms)``, ``("r", path)``; and the server's ``("i", domid)`` introduced, ``("x", domid)``
  released, ``("t", domid, target | None)``). Records are appended before the reply goes out and
  fdatasync'ed once per batch of replies.

Every record is framed as ``<III``: payload length, crc32 of the payload, crc32 of those two
words; a payload starts with the store's generation counter (``<Q``) so that counters keep
growing across restarts (DIRECTORY_PARTIAL hands them to clients).

Reading a journal: the last record may be torn (a kill mid-append leaves a short file; a power cut
may leave zeros, or a last record whose payload does not match its CRC) and is dropped: it was
never acknowledged. Anything else that does not decode, a bad record followed by more data, a head
of the wrong magic or a newer generation, is :class:`XenStoreStateError`: the server refuses to
start rather than serve a tree that silently lost acknowledged writes. A journal of an *older*
generation is what a crash between writing a snapshot and starting its journal leaves; its
records are in the snapshot, so it is ignored.

(The emulator daemon keeps its own state the same way, in ``host.state`` and ``journal``; the
names here differ so both may share one directory.)
"""

from __future__ import annotations

import contextlib
import os
import struct
import zlib
from collections.abc import Iterable
from pathlib import Path

from xentmem._files import atomic_write
from xentmem.errors import XenStoreError

from ._store import Effect
from ._wire import NUL, format_perms, parse_perms

__all__ = ["JOURNAL", "JOURNAL_LIMIT", "SNAPSHOT", "StateFiles", "XenStoreStateError"]

SNAPSHOT = "xenstore.state"
JOURNAL = "xenstore.journal"
JOURNAL_LIMIT = 16 << 20  # bytes of journal before the next commit writes a snapshot instead
_MAGIC_SNAP, _MAGIC_JOURNAL, _FORMAT = b"XSTS", b"XSTJ", 1
_HEAD = struct.Struct("<4sIQ")  # magic, format, generation
_FRAME = struct.Struct("<II")  # payload length, crc32 of the payload (+ crc32 of these 8 bytes)
_CHECK = struct.Struct("<I")
_FRAME_SIZE = _FRAME.size + _CHECK.size
_GEN = struct.Struct("<Q")  # the store's generation counter after the record
_W = struct.Struct("<BHII")  # "w", path length, value length, perms length (+ the three)
_R = struct.Struct("<BH")  # "r", path length (+ path); "i" / "x", domid
_T = struct.Struct("<BHi")  # "t", domid, target (-1: none)
_KW, _KR, _KI, _KX, _KT = b"wrixt"


class XenStoreStateError(XenStoreError, ValueError):
    """The state directory holds something that is not a state this server wrote."""


# --- the effect codec -----------------------------------------------------------------------


# Nodes share perms tuples: the last one encoded, by identity. One tuple, replaced whole, so
# servers in other threads never see a perms list paired with another's bytes.
_last_perms: tuple[tuple, bytes] = ((), b"")


def _perms_bytes(perms: tuple) -> bytes:
    global _last_perms
    last = _last_perms
    if perms is last[0]:
        return last[1]
    raw = format_perms(perms)  # type: ignore[arg-type]
    _last_perms = (perms, raw)
    return raw


def encode(gen: int, effects: Iterable[Effect]) -> bytes:
    """One record's payload: ``gen`` and ``effects``."""
    parts = [_GEN.pack(gen)]
    add = parts.append
    for e in effects:
        kind = e[0]
        if kind == "w":
            path, value, perms = e[1].encode("ascii"), e[2], _perms_bytes(e[3])
            add(_W.pack(_KW, len(path), len(value), len(perms)))
            add(path)
            add(value)
            add(perms)
        elif kind == "r":
            path = e[1].encode("ascii")
            add(_R.pack(_KR, len(path)))
            add(path)
        elif kind in ("i", "x"):
            add(_R.pack(_KI if kind == "i" else _KX, e[1]))
        elif kind == "t":
            add(_T.pack(_KT, e[1], -1 if e[2] is None else e[2]))
        else:
            raise ValueError(f"unknown effect {kind!r}")
    return b"".join(parts)


def decode(payload: bytes, where: str) -> tuple[int, list[Effect]]:
    """``(gen, effects)`` of a payload; :class:`XenStoreStateError` naming ``where`` if it is
    not one :func:`encode` made."""
    try:
        (gen,) = _GEN.unpack_from(payload)
        effects: list[Effect] = []
        perms_seen: dict[bytes, tuple] = {}  # nodes share a few perms lists: share the tuples
        pos, end = _GEN.size, len(payload)
        while pos < end:
            kind = payload[pos]
            if kind == _KW:
                _k, plen, vlen, qlen = _W.unpack_from(payload, pos)
                pos += _W.size
                path = payload[pos : pos + plen].decode("ascii")
                value = payload[pos + plen : pos + plen + vlen]
                raw_perms = payload[pos + plen + vlen : pos + plen + vlen + qlen]
                pos += plen + vlen + qlen
                if pos > end:
                    raise ValueError("effect runs past the record")
                perms = perms_seen.get(raw_perms)
                if perms is None:
                    if not raw_perms.endswith(NUL):
                        raise ValueError(f"bad permissions {raw_perms!r}")
                    perms = perms_seen[raw_perms] = tuple(parse_perms(raw_perms[:-1].split(NUL)))
                effects.append(("w", _check_path(path), value, perms))
            elif kind == _KR:
                _k, plen = _R.unpack_from(payload, pos)
                pos += _R.size + plen
                if pos > end:
                    raise ValueError("effect runs past the record")
                effects.append(("r", _check_path(payload[pos - plen : pos].decode("ascii"))))
            elif kind in (_KI, _KX):
                _k, domid = _R.unpack_from(payload, pos)
                pos += _R.size
                effects.append(("i" if kind == _KI else "x", domid))
            elif kind == _KT:
                _k, domid, target = _T.unpack_from(payload, pos)
                pos += _T.size
                effects.append(("t", domid, None if target == -1 else target))
            else:
                raise ValueError(f"unknown effect byte {kind:#x} at {pos}")
    except (struct.error, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        raise XenStoreStateError(f"{where}: malformed record: {exc}") from None
    return gen, effects


def _check_path(path: str) -> str:
    if not path or (path[0] != "/" and path[0] != "@"):
        raise ValueError(f"bad path {path!r}")
    return path


def _frame(payload: bytes) -> bytes:
    head = _FRAME.pack(len(payload), zlib.crc32(payload))
    return head + _CHECK.pack(zlib.crc32(head)) + payload


# --- files ----------------------------------------------------------------------------------




class StateFiles:
    """The snapshot and journal in ``directory``. ``sync=False`` skips fdatasync on commits
    (a killed server loses nothing; a power cut may lose the last batches). Not thread-safe:
    the server calls it under its lock."""

    def __init__(self, directory: Path, *, sync: bool = True,
                 journal_limit: int = JOURNAL_LIMIT) -> None:  # fmt: skip
        self.directory = directory
        self.sync = sync
        self.journal_limit = journal_limit
        self.generation = 0
        self.journal_bytes = 0  # on disk, in the current journal
        self.broken = False  # a write failed: only a new snapshot makes the state whole again
        self._fd: int | None = None
        self._buffer: list[bytes] = []  # framed records not yet written
        self._buffered = 0

    @property
    def open(self) -> bool:
        """Is the journal open (between :meth:`save` and :meth:`close`)?"""
        return self._fd is not None

    @property
    def pending(self) -> bool:
        """Must :meth:`commit` (or a snapshot) run before the next reply goes out?"""
        return bool(self._buffer) or self.broken

    @property
    def full(self) -> bool:
        """Would the pending records take the journal past its limit?"""
        return self.journal_bytes + self._buffered > self.journal_limit

    def exists(self) -> bool:
        d = self.directory
        return (d / SNAPSHOT).exists() or (d / JOURNAL).exists()

    # reading

    def load(self) -> tuple[int, list[Effect]]:
        """The largest generation counter recorded and every effect, snapshot first, then the
        journal extending it (its torn last record dropped)."""
        snap = self.directory / SNAPSHOT
        try:
            raw = snap.read_bytes()
        except FileNotFoundError:
            raise XenStoreStateError(
                f"{self.directory / JOURNAL} exists but {snap} does not: not a state this "
                "server wrote"
            ) from None
        generation = self._head(raw, snap, _MAGIC_SNAP)
        payloads, end = _records(raw, _HEAD.size, snap)
        if len(payloads) != 1 or end != len(raw):
            raise XenStoreStateError(f"{snap}: truncated or corrupt snapshot")
        gen, effects = decode(payloads[0], str(snap))
        for payload in self._journal(generation):
            g, more = decode(payload, str(self.directory / JOURNAL))
            gen = max(gen, g)
            effects += more
        self.generation = generation
        return gen, effects

    @staticmethod
    def _head(raw: bytes, path: Path, magic: bytes) -> int:
        if len(raw) < _HEAD.size:
            raise XenStoreStateError(f"{path}: too short for a xenstored state file")
        got, fmt, generation = _HEAD.unpack_from(raw)
        if got != magic or fmt != _FORMAT:
            raise XenStoreStateError(
                f"{path} is not a xenstored {'snapshot' if magic == _MAGIC_SNAP else 'journal'} "
                f"of format {_FORMAT} (magic {got!r}, format {fmt})"
            )
        return generation

    def _journal(self, generation: int) -> list[bytes]:
        path = self.directory / JOURNAL
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return []  # a crash before the first journal was started
        head_generation = self._head(raw, path, _MAGIC_JOURNAL)
        if head_generation < generation:
            return []  # a crash after the snapshot that holds these records, before its journal
        if head_generation > generation:
            raise XenStoreStateError(
                f"{path} extends snapshot generation {head_generation}, but the snapshot is "
                f"generation {generation}"
            )
        payloads, _end = _records(raw, _HEAD.size, path, tail_may_tear=True)
        return payloads

    # writing

    def save(self, gen: int, effects: Iterable[Effect]) -> None:
        """Write a snapshot of ``effects`` and start an empty journal extending it. Pending
        records are dropped: the snapshot holds their effects. OSError if the disk refuses
        (``broken`` stays set until a save succeeds)."""
        self._close_fd()
        self._buffer.clear()
        self._buffered = 0
        self.broken = True  # until both files are written
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        generation = self.generation + 1
        head = _HEAD.pack(_MAGIC_SNAP, _FORMAT, generation)
        atomic_write(self.directory / SNAPSHOT, head + _frame(encode(gen, effects)))
        self.generation = generation
        journal = _HEAD.pack(_MAGIC_JOURNAL, _FORMAT, generation)
        atomic_write(self.directory / JOURNAL, journal)
        self._fd = os.open(self.directory / JOURNAL, os.O_WRONLY | os.O_APPEND)
        self.journal_bytes = len(journal)
        self.broken = False

    def add(self, gen: int, effects: Iterable[Effect]) -> None:
        """Queue one record; it reaches the file at the next :meth:`commit`."""
        data = _frame(encode(gen, effects))
        self._buffer.append(data)
        self._buffered += len(data)

    def commit(self) -> None:
        """Write the queued records with one write() and, with ``sync``, one fdatasync. On
        OSError the records are dropped and ``broken`` is set: the caller must not acknowledge
        them, and must :meth:`save` a snapshot before journaling again."""
        if not self._buffer:
            return
        if self._fd is None:
            raise RuntimeError("journal not open: save() a snapshot first")
        data = b"".join(self._buffer) if len(self._buffer) > 1 else self._buffer[0]
        self._buffer.clear()
        self._buffered = 0
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
            if self.sync:
                os.fdatasync(self._fd)
        except OSError:
            self.broken = True
            raise
        self.journal_bytes += len(data)

    def close(self) -> None:
        """Close the journal (queued records are dropped: :meth:`save` first to keep them)."""
        self._buffer.clear()
        self._buffered = 0
        self._close_fd()

    def _close_fd(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):  # a broken journal is being replaced anyway
                os.close(self._fd)
            self._fd = None


def _records(raw: bytes, pos: int, path: Path, *, tail_may_tear: bool = False
             ) -> tuple[list[bytes], int]:  # fmt: skip
    """The framed payloads of ``raw`` from ``pos``, and where they end. With ``tail_may_tear``
    a bad last record (cut short, all zeros, or not matching its CRC and ending the file) is
    dropped; any other damage raises."""
    payloads: list[bytes] = []
    end = len(raw)
    while pos < end:
        if end - pos < _FRAME_SIZE:
            problem, torn = "truncated record", True  # a head cut short by a kill mid-append
        else:
            size, crc = _FRAME.unpack_from(raw, pos)
            (check,) = _CHECK.unpack_from(raw, pos + _FRAME.size)
            start = pos + _FRAME_SIZE
            if zlib.crc32(raw[pos : pos + _FRAME.size]) != check:
                # The length cannot be trusted, so nothing says this is the last record.
                problem, torn = "corrupt record header", False
            elif start + size > end:
                problem, torn = "truncated record", True  # a payload cut short
            elif zlib.crc32(raw[start : start + size]) != crc:
                # Torn only if nothing follows: a power cut before its data reached the disk.
                problem, torn = "record that does not match its CRC", start + size == end
            else:
                payloads.append(raw[start : start + size])
                pos = start + size
                continue
        # Zeros to the end: the file grew but its data never reached the disk (a power cut).
        if tail_may_tear and (torn or raw.count(0, pos) == end - pos):
            break
        raise XenStoreStateError(f"{path}: {problem} at byte {pos}")
    return payloads, pos
