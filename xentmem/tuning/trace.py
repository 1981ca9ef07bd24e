"""Memory traces: what a guest's memory looked like over time, the input of every replay.

File format (CSV or JSON lines, one sample per line, or Parquet with the same columns;
version 1)::

    # xentmem memory trace v1        <- '#' lines and blank lines are ignored
    time,committed,reserve,max_pfn,totalram,maxram,frontswap
    0,100000,4000,262144,240000,240000,0
    5,101200,4000,262144,240000,240000,0

or, as JSON lines (same keys, one object per line)::

    {"time": 0, "committed": 100000, "reserve": 4000, "max_pfn": 262144, "totalram": 240000}

Columns (memory in 4 KiB **pages**; a memory column may instead be named ``<name>_kb`` and hold
KiB, a multiple of 4, as ``/proc/meminfo`` prints it):

========== ========= =================================================================
column     required  meaning
========== ========= =================================================================
time       yes       seconds (decimal, at most millisecond resolution), strictly increasing
committed  yes       Committed_AS (``vm_memory_committed``), ref §4.4 C
reserve    yes       totalreserve_pages, ref §4.4 R
max_pfn    yes       max_pfn, ref §4.4 P (the floor is computed from it)
totalram   yes       totalram_pages as recorded; the replay starts from the first row's
                     value, later rows are only plotted ("as recorded")
maxram     no        the largest totalram the balloon can return to (an empty balloon);
                     default: the first row's totalram (recording started unballooned)
frontswap  no        frontswap_curr_pages as recorded; the replay starts from the first
                     row's value (default 0), later rows are only plotted
========== ========= =================================================================

Each sample holds until the next one: the trace covers ``[first time, last time)``.
Parsing is strict: an unknown column, a missing value, a negative or fractional page count,
or a time that does not increase is a ``TraceError`` naming the file and line (Parquet: row).

Parquet (``.parquet``, pyarrow, for fleets: typed, compressed, read column-wise) holds the same
columns: ``time`` as integer, floating or decimal seconds, memory columns as integers (pages,
or KiB for ``<name>_kb``); nulls and fractional pages are refused as in the text formats.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import numpy as np

from xentmem.errors import TraceError

__all__ = ["COLUMNS", "REQUIRED", "Trace", "dumps_trace", "load_trace", "parse_trace",
           "save_trace"]

REQUIRED = ("time", "committed", "reserve", "max_pfn", "totalram")
COLUMNS = (*REQUIRED, "maxram", "frontswap")
_MEMORY = COLUMNS[1:]
_LIMIT = 1 << 40  # pages (4 PiB): keeps every page-millisecond integral inside int64
_HEADER = "# xentmem memory trace v1: time in seconds, memory in 4 KiB pages"


def _frozen(values: Iterable[int], name: str, key: str) -> np.ndarray:
    raw = np.asarray(values if isinstance(values, np.ndarray) else list(values))
    if raw.size and raw.dtype.kind not in "iu":  # never truncate 1.5 pages silently
        raise TraceError(f"{name}: column {key} must hold whole numbers, not {raw.dtype}")
    arr = raw.astype(np.int64)  # a copy: the caller's array stays theirs
    arr.flags.writeable = False
    return arr


@dataclass(frozen=True, eq=False)
class Trace:
    """One guest's memory over time: ``time_ms`` (int64 milliseconds, strictly increasing) and
    one int64 page array per column, all the same length (>= 2)."""

    time_ms: np.ndarray
    committed: np.ndarray
    reserve: np.ndarray
    max_pfn: np.ndarray
    totalram: np.ndarray
    maxram: np.ndarray
    frontswap: np.ndarray
    name: str = "trace"

    @classmethod
    def build(cls, time_ms: Iterable[int], committed: Iterable[int], reserve: Iterable[int],
              max_pfn: Iterable[int], totalram: Iterable[int],
              maxram: Iterable[int] | None = None, frontswap: Iterable[int] | None = None,
              name: str = "trace") -> Trace:
        """A checked trace from columns (``maxram`` defaults to the first totalram, frontswap
        to 0); ``TraceError`` when the columns disagree or break the rules above."""
        given = {"time_ms": time_ms, "committed": committed, "reserve": reserve,
                 "max_pfn": max_pfn, "totalram": totalram}
        cols = {key: _frozen(values, name, key) for key, values in given.items()}
        n = len(cols["time_ms"])
        if n < 2:
            raise TraceError(f"{name}: a trace needs at least 2 samples, not {n}")
        if len(cols["totalram"]) != n:
            raise TraceError(f"{name}: column totalram has {len(cols['totalram'])} values, "
                             f"not {n}")
        cols["maxram"] = _frozen(np.full(n, cols["totalram"][0]) if maxram is None else maxram,
                                 name, "maxram")
        cols["frontswap"] = _frozen(np.zeros(n, dtype=np.int64) if frontswap is None
                                    else frontswap, name, "frontswap")
        for key, arr in cols.items():
            if len(arr) != n:
                raise TraceError(f"{name}: column {key} has {len(arr)} values, not {n}")
        trace = cls(**cols, name=name)
        problem = trace._problem()
        if problem is not None:
            row, text = problem
            raise TraceError(f"{name}: sample {row + 1}: {text}")
        return trace

    def _problem(self) -> tuple[int, str] | None:
        """The first broken rule as (row, text), or None."""
        steps = np.diff(self.time_ms)
        if (steps <= 0).any():
            row = int(np.argmax(steps <= 0)) + 1
            return row, "time does not increase"
        for key in _MEMORY:
            arr = getattr(self, key)
            bad = (arr < 0) | (arr >= _LIMIT)
            if bad.any():
                return int(np.argmax(bad)), f"{key} out of range [0, 2**40)"
        checks = (
            (self.reserve > self.max_pfn, "reserve exceeds max_pfn"),
            (self.totalram > self.max_pfn, "totalram exceeds max_pfn"),
            (self.maxram > self.max_pfn, "maxram exceeds max_pfn"),
            (self.maxram < 1, "maxram must be positive"),
        )
        for bad, text in checks:
            if bad.any():
                return int(np.argmax(bad)), text
        if self.totalram[0] > self.maxram[0]:
            return 0, "the starting totalram exceeds maxram"
        return None

    def __len__(self) -> int:
        return len(self.time_ms)

    @property
    def duration_ms(self) -> int:
        return int(self.time_ms[-1] - self.time_ms[0])

    @property
    def demand(self) -> np.ndarray:
        """committed + reserve: what must fit in totalram to avoid swapping."""
        return self.committed + self.reserve

    def summary(self) -> dict[str, Any]:
        """A few headline numbers (MiB, seconds) for reports."""
        mib = 256
        return {"name": self.name, "samples": len(self),
                "duration_s": self.duration_ms / 1000,
                "max_pfn_mib": round(int(self.max_pfn.max()) / mib, 1),
                "start_totalram_mib": round(int(self.totalram[0]) / mib, 1),
                "committed_mean_mib": round(float(self.committed.mean()) / mib, 1),
                "committed_peak_mib": round(int(self.committed.max()) / mib, 1)}

    def rows(self) -> list[dict[str, int | float]]:
        """The samples as dicts in file units (time in seconds, memory in pages)."""
        out = []
        for i in range(len(self)):
            row: dict[str, int | float] = {"time": _seconds(int(self.time_ms[i]))}
            for key in _MEMORY:
                row[key] = int(getattr(self, key)[i])
            out.append(row)
        return out


def _seconds(ms: int) -> int | float:
    return ms // 1000 if ms % 1000 == 0 else ms / 1000


# -- parsing -------------------------------------------------------------------------------------

def _parse_time(untrusted: Any, where: str) -> int:
    if isinstance(untrusted, bool):
        raise TraceError(f"{where}: time must be a number of seconds, not {untrusted!r}")
    try:
        ms = Decimal(str(untrusted).strip()) * 1000
    except InvalidOperation:
        raise TraceError(f"{where}: time must be a number of seconds, not {untrusted!r}") from None
    if not ms.is_finite() or ms != ms.to_integral_value():
        raise TraceError(f"{where}: time {untrusted!r} is finer than a millisecond")
    return int(ms)


def _parse_pages(untrusted: Any, key: str, kib: bool, where: str) -> int:
    if isinstance(untrusted, (bool, float)):
        raise TraceError(f"{where}: {key} must be a whole number, not {untrusted!r}")
    text = str(untrusted).strip()
    if not (text.isascii() and text.isdigit()):  # no sign, fraction, exponent or '²'
        raise TraceError(f"{where}: {key} must be a non-negative whole number, not {untrusted!r}")
    value = int(text)
    if kib:
        if value % 4:
            raise TraceError(f"{where}: {key}_kb = {value} is not a whole number of 4 KiB pages")
        value //= 4
    if value >= _LIMIT:
        raise TraceError(f"{where}: {key} = {value} pages is out of range")
    return value


def _columns(keys: Iterable[str], where: str) -> dict[str, tuple[str, bool]]:
    """Map the file's keys to (column, is_kib); reject unknown or duplicate ones."""
    out: dict[str, tuple[str, bool]] = {}
    seen: set[str] = set()
    for raw in keys:
        key = raw.strip()
        col, kib = (key[:-3], True) if key.endswith("_kb") and key[:-3] in _MEMORY else (key, False)
        if col not in COLUMNS:
            raise TraceError(f"{where}: unknown column {key!r} (known: {', '.join(COLUMNS)}, "
                             "memory columns also as <name>_kb)")
        if col in seen:
            raise TraceError(f"{where}: column {col!r} given twice")
        seen.add(col)
        out[raw] = (col, kib)
    missing = [c for c in REQUIRED if c not in seen]
    if missing:
        raise TraceError(f"{where}: missing column(s) {', '.join(missing)}")
    return out


def _records(text: str, name: str) -> Iterable[tuple[int, Mapping[str, Any]]]:
    """(line number, raw record) pairs of a CSV or JSON-lines text."""
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1)
             if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        raise TraceError(f"{name}: empty trace")
    if lines[0][1].lstrip().startswith("{"):
        for n, line in lines:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TraceError(f"{name}:{n}: not a JSON object ({exc.msg})") from None
            if not isinstance(rec, dict):
                raise TraceError(f"{name}:{n}: not a JSON object")
            yield n, rec
        return
    head_n, head = lines[0]
    header = next(csv.reader([head]))
    if len({h.strip() for h in header}) != len(header):
        raise TraceError(f"{name}:{head_n}: a column is named twice")
    _columns(header, f"{name}:{head_n}")  # a bad header fails even with no rows
    for n, line in lines[1:]:
        values = next(csv.reader([line]))
        if len(values) != len(header):
            raise TraceError(f"{name}:{n}: {len(values)} values for {len(header)} columns "
                             f"(header on line {head_n})")
        yield n, dict(zip(header, values, strict=True))


def parse_trace(text: str, name: str = "trace") -> Trace:
    """A ``Trace`` from CSV or JSON-lines text (see the module docstring)."""
    data: dict[str, list[int]] = {c: [] for c in COLUMNS}
    mapping: dict[str, tuple[str, bool]] | None = None
    lines: list[int] = []
    for n, rec in _records(text, name):
        where = f"{name}:{n}"
        if mapping is None or set(rec) != set(mapping):
            if mapping is not None:
                raise TraceError(f"{where}: keys differ from the first record's")
            mapping = _columns(rec.keys(), where)
        for raw, (col, kib) in mapping.items():
            value = rec[raw]
            if value is None or (isinstance(value, str) and not value.strip()):
                raise TraceError(f"{where}: missing value for {col}")
            data[col].append(_parse_time(value, where) if col == "time"
                             else _parse_pages(value, col, kib, where))
        lines.append(n)
    if mapping is None:
        raise TraceError(f"{name}: a trace needs at least 2 samples, not 0")
    given = {col for col, _ in mapping.values()}
    try:
        return Trace.build(data["time"], data["committed"], data["reserve"], data["max_pfn"],
                           data["totalram"], data["maxram"] if "maxram" in given else None,
                           data["frontswap"] if "frontswap" in given else None, name=name)
    except TraceError as exc:
        # name the file line rather than the sample number
        text_ = str(exc)
        prefix = f"{name}: sample "
        if text_.startswith(prefix):
            num, _, rest = text_[len(prefix):].partition(": ")
            if num.isdigit() and int(num) <= len(lines):
                raise TraceError(f"{name}:{lines[int(num) - 1]}: {rest}") from None
        raise


def _parquet_time(col: Any, where: str) -> np.ndarray:
    """A Parquet ``time`` column (seconds) as int64 milliseconds, exactly."""
    import pyarrow as pa

    kind = col.type
    if pa.types.is_integer(kind):
        return col.to_numpy().astype(np.int64) * 1000
    if pa.types.is_decimal(kind):
        ms = [Decimal(v) * 1000 for v in col.to_pylist()]
        bad = next((i for i, v in enumerate(ms) if v != v.to_integral_value()), None)
        if bad is not None:
            raise TraceError(f"{where} {bad + 1}: time {col[bad]} is finer than a millisecond")
        return np.array([int(v) for v in ms], dtype=np.int64)
    if pa.types.is_floating(kind):
        sec = col.to_numpy().astype(np.float64)
        ms = np.rint(sec * 1000)
        # a float prints as the shortest decimal that reads back: as in the text formats, a
        # time is whole milliseconds when that decimal is
        off = ~np.isfinite(sec) | (np.abs(sec * 1000 - ms) > 1e-6 * np.maximum(1, np.abs(ms)))
        if off.any():
            bad = int(np.argmax(off))
            raise TraceError(f"{where} {bad + 1}: time {float(sec[bad])!r} is finer than a "
                             "millisecond")
        return ms.astype(np.int64)
    raise TraceError(f"{where.rsplit(':', 1)[0]}: column time must hold seconds, not {kind}")


def _parquet_pages(col: Any, name: str, kib: bool, where: str) -> np.ndarray:
    """A Parquet memory column as int64 pages, held to the text formats' rules."""
    import pyarrow as pa

    if not pa.types.is_integer(col.type):
        raise TraceError(f"{where.rsplit(':', 1)[0]}: column {name}{'_kb' if kib else ''} must "
                         f"hold whole numbers, not {col.type}")
    raw = col.to_numpy()
    if raw.dtype.kind == "u" and raw.size and int(raw.max()) >= 1 << 62:
        bad = int(np.argmax(raw >= 1 << 62))
        raise TraceError(f"{where} {bad + 1}: {name} = {raw[bad]} pages is out of range")
    values = raw.astype(np.int64)
    if (values < 0).any():
        bad = int(np.argmax(values < 0))
        raise TraceError(f"{where} {bad + 1}: {name} must be a non-negative whole number, "
                         f"not {values[bad]}")
    if kib:
        if (values % 4).any():
            bad = int(np.argmax(values % 4 != 0))
            raise TraceError(f"{where} {bad + 1}: {name}_kb = {values[bad]} is not a whole "
                             "number of 4 KiB pages")
        values = values // 4
    if (values >= _LIMIT).any():
        bad = int(np.argmax(values >= _LIMIT))
        raise TraceError(f"{where} {bad + 1}: {name} = {values[bad]} pages is out of range")
    return values


def _read_parquet(path: Path) -> Trace:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise TraceError(f"{path}: cannot read Parquet trace: {exc}") from None
    where = f"{path}: row"
    mapping = _columns(table.column_names, str(path))
    cols: dict[str, np.ndarray] = {}
    for raw, (col, kib) in mapping.items():
        data = table.column(raw).combine_chunks()
        if data.null_count:
            bad = next(i for i, v in enumerate(data.is_null().to_pylist()) if v)
            raise TraceError(f"{where} {bad + 1}: missing value for {col}")
        cols[col] = (_parquet_time(data, where) if col == "time"
                     else _parquet_pages(data, col, kib, where))
    if table.num_rows < 2:
        raise TraceError(f"{path}: a trace needs at least 2 samples, not {table.num_rows}")
    try:
        trace = Trace.build(cols["time"], cols["committed"], cols["reserve"], cols["max_pfn"],
                            cols["totalram"], cols.get("maxram"), cols.get("frontswap"),
                            name=str(path))
    except TraceError as exc:  # a sample is a row here
        raise TraceError(str(exc).replace(f"{path}: sample ", f"{where} ", 1)) from None
    return replace(trace, name=path.name)


def _write_parquet(trace: Trace, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    whole = not (trace.time_ms % 1000).any()
    time = trace.time_ms // 1000 if whole else trace.time_ms / 1000
    arrays = [pa.array(time), *(pa.array(getattr(trace, key)) for key in _MEMORY)]
    table = pa.Table.from_arrays(arrays, names=list(COLUMNS),
                                 metadata={"xentmem": _HEADER.lstrip("# ")})
    pq.write_table(table, path)


def load_trace(path: str | Path) -> Trace:
    """Read and check a trace file (CSV, JSON lines, or Parquet by its ``.parquet`` name);
    ``TraceError`` names the file and line (row) of the problem."""
    path = Path(path)
    if path.suffix == ".parquet":
        return _read_parquet(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise TraceError(f"{path}: cannot read trace: {reason}") from None
    return replace(parse_trace(text, str(path)), name=path.name)  # errors name the path


def dumps_trace(trace: Trace, fmt: str = "csv") -> str:
    """The trace as file text (``csv`` or ``jsonl``), memory in pages."""
    rows = trace.rows()
    if fmt == "jsonl":
        return "".join(json.dumps(r) + "\n" for r in rows)
    if fmt != "csv":
        raise TraceError(f"unknown trace format {fmt!r} (csv or jsonl)")
    buf = io.StringIO()
    buf.write(_HEADER + "\n")
    writer = csv.DictWriter(buf, fieldnames=list(COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def save_trace(trace: Trace, path: str | Path) -> Path:
    """Write ``trace`` as CSV, JSON lines when the name ends in ``.jsonl``/``.ndjson``, or
    Parquet when it ends in ``.parquet``."""
    path = Path(path)
    if path.suffix == ".parquet":
        _write_parquet(trace, path)
        return path
    fmt = "jsonl" if path.suffix in (".jsonl", ".ndjson") else "csv"
    path.write_text(dumps_trace(trace, fmt), encoding="utf-8")
    return path
