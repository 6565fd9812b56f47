"""Fast reading of exchange-archive CSV files: whole-line byte blocks parsed by pyarrow, exact line numbers
for bad data, and vectorised ordering of the parsed rows into event chunks.

The tardis.dev reader (``source: tardis``) and the Binance archive reader (``source: binance_archive``)
share this.  A file is read as raw bytes in blocks of whole lines (a few MB); each block is parsed by
``pyarrow.csv`` with explicit column types.  When pyarrow refuses a block (a wrong column count, a
non-number), the block is bisected down to the single lines pyarrow refuses, so each bad line is named with
its number and reason and the good lines of the block are still read.  The rows then go through
:class:`BlockChunks`, which applies the same ordering and crossed-book rules as
:class:`sigkit.feeds.ChunkBuilder`, one block at a time with numpy instead of row by row.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pacompute
import pyarrow.csv as pacsv

from sigkit.events import BOOK, check_market_name, empty_chunk
from sigkit.feeds import CLOCKS, BadLines, Emitted, open_binary

#: Bytes of whole lines handed to pyarrow at a time (bounds memory; large enough to amortise the calls).
BLOCK_BYTES = 4 << 20
#: Largest epoch-µs value whose nanoseconds fit in int64.
MAX_US = (2**63 - 1) // 1000

_NEVER = -(1 << 62)
_COLUMN = re.compile(r"column #(\d+)")


def _read_errors() -> tuple[type[BaseException], ...]:
    import zstandard

    return (OSError, EOFError, zlib.error, zstandard.ZstdError)


class LineBlock(NamedTuple):
    """Whole lines of a file: the bytes, and for every non-blank line its number and byte span."""

    data: bytes
    lines: np.ndarray  # 1-based line numbers of the non-blank lines
    starts: np.ndarray  # byte offset of each such line in ``data``
    ends: np.ndarray  # byte offset just past its last character (line end excluded)


def line_blocks(path: str | Path, bad: BadLines, *, skip_lines: int = 0,
                block_bytes: int | None = None) -> Iterator[LineBlock]:
    """Stream a plain/.gz/.zst file as :class:`LineBlock` s, passing over blank lines and the first
    ``skip_lines`` lines (a header).  A file that breaks mid-way (truncated, corrupt) is reported through
    ``bad`` at the first line that could not be read, reason ``corrupt file``, like :func:`open_lines`.
    ``block_bytes`` defaults to :data:`BLOCK_BYTES` (read when called, so tests can make blocks tiny)."""
    block_bytes = block_bytes or BLOCK_BYTES
    done = 0  # lines fully read so far
    carry = b""
    broken: BaseException | None = None
    errors = _read_errors()
    with open_binary(path) as f:
        read = getattr(f, "read1", f.read)
        while broken is None:
            pieces, size = [carry], len(carry)
            eof = False
            while size < block_bytes or b"\n" not in pieces[-1]:  # a block holds at least one whole line
                try:
                    piece = read(block_bytes)
                except errors as err:
                    broken = err
                    break
                if not piece:
                    eof = True
                    break
                pieces.append(piece)
                size += len(piece)
            buf = b"".join(pieces)
            if eof and buf and not buf.endswith(b"\n"):
                buf += b"\n"
            cut = buf.rfind(b"\n") + 1
            data, carry = buf[:cut], buf[cut:]
            if data:
                block, count = _split_lines(data, done, skip_lines)
                done += count
                if block.lines.size:
                    yield block
            if eof:
                break
    if broken is not None:
        bad(done + 1, "corrupt file", f"cannot read past line {done}: {broken or type(broken).__name__} "
            "(a truncated or corrupt compressed file)")


def _split_lines(data: bytes, before: int, skip_lines: int) -> tuple[LineBlock, int]:
    """The non-blank lines of ``data`` (whole lines, the first numbered ``before + 1``), and how many
    lines it holds."""
    raw = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(raw == 10)
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    cr = (ends > starts) & (raw[ends - 1] == 13)
    ends = ends - cr
    lines = np.arange(before + 1, before + 1 + ends.size, dtype=np.int64)
    keep = (ends > starts) & (lines > skip_lines)
    return LineBlock(data, lines[keep], starts[keep], ends[keep]), int(ends.size)


class CsvLayout:
    """The columns of one CSV layout and the pyarrow options that convert them.

    ``types`` names the columns to convert (others are only counted); empty cells of non-string columns
    become nulls, which each reader interprets (an empty level, an unknown value, or bad data).
    """

    def __init__(self, names: list[str], types: dict[str, pa.DataType]):
        self.names = list(names)
        self.read_options = pacsv.ReadOptions(column_names=self.names, block_size=1 << 20)
        self.parse_options = pacsv.ParseOptions(quote_char=False, escape_char=False, double_quote=False,
                                                newlines_in_values=False, ignore_empty_lines=True)
        self.convert_options = pacsv.ConvertOptions(
            column_types=types, include_columns=list(types), null_values=[""], strings_can_be_null=False,
            true_values=["true", "True"], false_values=["false", "False"])

    def _read(self, data) -> pa.Table:
        return pacsv.read_csv(pa.BufferReader(data), read_options=self.read_options,
                              parse_options=self.parse_options, convert_options=self.convert_options)

    def parse(self, block: LineBlock, problems: list) -> tuple[pa.Table | None, np.ndarray]:
        """The block's rows as a table and their line numbers; each line pyarrow refuses is appended to
        ``problems`` as ``(line, reason, detail)`` and left out."""
        view = memoryview(block.data)
        parts: list[tuple[pa.Table, np.ndarray]] = []
        # Bisect refused ranges down to single lines; a stack (not a recursive closure, which would make a
        # reference cycle keeping every block's bytes alive until the cyclic collector runs).
        ranges = [(0, block.lines.size)]
        while ranges:
            i, j = ranges.pop()
            error = None
            try:
                table = self._read(view[block.starts[i]: block.ends[j - 1]])
                if table.num_rows == j - i:
                    parts.append((table, block.lines[i:j]))
                    continue
            except pa.ArrowInvalid as err:
                error = err
            if j - i == 1:
                problems.append((int(block.lines[i]), *self._why(error)))
                continue
            mid = (i + j) // 2
            ranges += [(mid, j), (i, mid)]  # the first half is parsed first: lines stay in order
        if not parts:
            return None, block.lines[:0]
        if len(parts) == 1:
            return parts[0]
        return pa.concat_tables([t for t, _ in parts]), np.concatenate([n for _, n in parts])

    def _why(self, error: Exception | None) -> tuple[str, str]:
        if error is None:
            return "malformed line", "a carriage return inside the line splits it in two"
        text = str(error)
        found = _COLUMN.search(text)
        column = self.names[int(found.group(1))] if found and int(found.group(1)) < len(self.names) else "?"
        if "columns, got" in text:
            return "wrong column count", text.split(": ", 1)[-1].split(":")[0]
        if "UTF8" in text:
            return "bad text", f"column {column!r} is not valid UTF-8"
        if "conversion error" in text:
            return "not a number", f"column {column!r}: {text.rsplit(': ', 1)[-1]}"
        return "malformed line", text


def floats(table: pa.Table, name: str) -> tuple[np.ndarray, np.ndarray]:
    """A float column as ``(values with NaN for empty cells, empty-cell mask)``."""
    column = table.column(name)
    return column.to_numpy().astype(np.float64, copy=False), column.is_null().to_numpy(zero_copy_only=False)


def ints(table: pa.Table, name: str) -> tuple[np.ndarray, np.ndarray]:
    """An int64 column as ``(values with 0 for empty cells, empty-cell mask)``."""
    column = table.column(name)
    return column.fill_null(0).to_numpy(), column.is_null().to_numpy(zero_copy_only=False)


def labels(table: pa.Table, name: str) -> tuple[list[str], np.ndarray]:
    """A string column as ``(distinct values, per-row index into them)`` (faster than letting the CSV reader
    dictionary-encode it)."""
    column = pacompute.dictionary_encode(table.column(name)).unify_dictionaries()
    chunks = column.chunks
    values = chunks[0].dictionary.to_pylist() if chunks else []
    codes = np.concatenate([c.indices.to_numpy() for c in chunks]) if chunks else np.zeros(0, np.int32)
    return values, codes


class RowChecks:
    """Per-row validity of one parsed block: each rejection records ``(line, reason, detail)`` for the
    first reason a row fails, and drops it from :attr:`ok`."""

    def __init__(self, lines: np.ndarray, problems: list):
        self.lines = lines
        self.ok = np.ones(lines.size, dtype=bool)
        self.problems = problems

    def reject(self, bad_rows: np.ndarray, reason: str, detail: Callable[[int], str]) -> None:
        for i in np.flatnonzero(bad_rows & self.ok):
            self.problems.append((int(self.lines[i]), reason, detail(int(i))))
        self.ok &= ~bad_rows

    def numbers(self, values: np.ndarray, empty: np.ndarray, name: str, *, allow_empty: bool = False,
                sign: str = "nonnegative") -> None:
        """Reject non-finite numbers, empty cells unless ``allow_empty``, and numbers of the wrong ``sign``
        (``positive``: above zero, ``nonnegative``: zero or above, ``any``)."""
        if not allow_empty:
            self.reject(empty, "not a number", lambda i: f"column {name!r} is empty")
        with np.errstate(invalid="ignore"):
            self.reject(~empty & ~np.isfinite(values), "not a number",
                        lambda i: f"column {name!r} is {values[i]!r}, not a finite number")
            if sign == "positive":
                self.reject(~empty & (values <= 0), "not a number",
                            lambda i: f"column {name!r} is {values[i]!r}, not above zero")
            elif sign == "nonnegative":
                self.reject(~empty & (values < 0), "not a number",
                            lambda i: f"column {name!r} is {values[i]!r}, below zero")

    def epoch_us(self, values: np.ndarray, empty: np.ndarray, name: str) -> np.ndarray:
        """Epoch µs to ns, rejecting empty and out-of-range times."""
        self.reject(empty | (values <= 0) | (values > MAX_US), "bad timestamp",
                    lambda i: f"column {name!r} is {'empty' if empty[i] else values[i]}, not epoch microseconds")
        return np.where(self.ok, values, 0) * 1000


_BLANK_ROW = empty_chunk(1)


def blank_rows(n: int) -> np.ndarray:
    """:func:`sigkit.events.empty_chunk` made faster by copying one blank row (it fills field by field)."""
    return np.repeat(_BLANK_ROW, n)


def keep_rows(rows: np.ndarray, lines: np.ndarray, ok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows and lines where ``ok``, without a copy when every row is."""
    return (rows, lines) if ok.all() else (rows[ok], lines[ok])


def market_columns(rows: np.ndarray, field: str, values: list[str], codes: np.ndarray) -> None:
    """Fill a venue/symbol column from distinct values and per-row codes."""
    for value in values:
        check_market_name(field, value)
    if len(values) == 1:
        rows[field] = values[0]
    elif values:
        rows[field] = np.array(values)[codes]


class BlockChunks(Emitted):
    """Orders parsed rows into event chunks, one block at a time, with :class:`ChunkBuilder`'s rules.

    On the ``local`` clock a row earlier than one before it is ``time went backwards``; on the
    ``exchange`` clock rows are held for ``reorder_ns`` of exchange time and released sorted, and a row
    more than ``reorder_ns`` older than the latest row before it is bad, whatever the block size (the
    rule of :class:`sigkit.feeds.ChunkBuilder`, row by row there).  A book row whose best bid is not below
    its best ask is a ``crossed book``.  Every problem of a block (the parser's too) is reported in line
    order, so under ``stop`` the error names the first bad line of the file.
    """

    def __init__(self, bad: BadLines, *, clock: str = "local", reorder_ns: int = 1_000_000_000):
        if clock not in CLOCKS:
            raise ValueError(f"clock must be one of {CLOCKS}, got {clock!r}")
        super().__init__()
        self.bad = bad
        self.exchange = clock == "exchange"
        self.reorder_ns = reorder_ns
        self._last = _NEVER  # latest ts accepted (local) or released (exchange)
        self._max_seen = _NEVER
        self._held = blank_rows(0)

    def add(self, rows: np.ndarray, lines: np.ndarray, problems: list) -> Iterator[np.ndarray]:
        """Check ``rows`` (file order, with their ``lines``), report ``problems`` plus the ordering and
        crossed-book ones in line order, and yield what can be released."""
        ts = rows["ts_ns"]
        crossed = (rows["kind"] == BOOK) & (rows["bid_px"] >= rows["ask_px"])
        keep = ~crossed
        seen = self._max_seen if self.exchange else self._last
        before = np.empty(ts.size, dtype=np.int64)  # latest accepted time before each row
        if ts.size:
            before[0] = seen
            np.maximum(np.maximum.accumulate(np.where(keep, ts, _NEVER))[:-1], seen, out=before[1:])
        floor = np.maximum(before - self.reorder_ns, self._last) if self.exchange else before
        late = keep & (ts < floor)
        if crossed.any() or late.any():
            problems = list(problems)
            for i in np.flatnonzero(crossed):
                problems.append((int(lines[i]), "crossed book", f"{rows['venue'][i]}:{rows['symbol'][i]} best bid "
                                 f"{rows['bid_px'][i]:g} is not below best ask {rows['ask_px'][i]:g}"))
            for i in np.flatnonzero(late):
                if self.exchange:
                    detail = (f"exchange time {int(ts[i])} ns is more than the {self.reorder_ns / 1e9:g} s "
                              f"re-ordering window before {int(before[i])} ns, seen earlier")
                else:
                    detail = f"local receive time {int(ts[i])} ns is before {int(before[i])} ns, seen earlier"
                problems.append((int(lines[i]), "time went backwards", detail))
            rows = rows[keep & ~late]
        for line, reason, detail in sorted(problems, key=lambda p: p[0]):
            self.bad(line, reason, detail)
        if not self.exchange:
            if rows.size:
                self._last = max(self._last, int(rows["ts_ns"][-1]))
            yield from self._release(rows)
            return
        if rows.size:
            self._max_seen = max(self._max_seen, int(rows["ts_ns"].max()))
        limit = self._max_seen - self.reorder_ns
        ts, held = rows["ts_ns"], self._held
        if ts.size and bool(np.all(ts[1:] >= ts[:-1])) and (not held.size or held["ts_ns"][-1] <= ts[0]):
            # The common case, rows already in order after what is held: release without sorting or copying.
            cut = int(np.searchsorted(ts, limit, side="right"))
            if cut:
                self._held = rows[cut:]
                yield from self._release(held)
                yield from self._release(rows[:cut])
                return
        pending = np.concatenate([held, rows]) if held.size else rows
        pending = pending[np.argsort(pending["ts_ns"], kind="stable")]
        cut = int(np.searchsorted(pending["ts_ns"], limit, side="right"))
        self._held = pending[cut:]
        yield from self._release(pending[:cut])

    def finish(self) -> Iterator[np.ndarray]:
        """Everything still held, at the end of the input."""
        held, self._held = self._held, blank_rows(0)
        yield from self._release(held)

    def _release(self, chunk: np.ndarray) -> Iterator[np.ndarray]:
        if not chunk.size:
            return
        if self.exchange:
            self._last = int(chunk["ts_ns"][-1])
        yield self.note(chunk)

