"""sigkit's native event file: a CSV of :data:`sigkit.EVENT_DTYPE` rows, plain or gzipped.

Layout (documented in ``docs/formats.md``)::

    # sigkit-native v1 world=informed seed=7 ...        <- optional comment lines (key=value metadata)
    ts_ns,exch_ts_ns,kind,venue,symbol,side,price,...   <- header: the column names below
    1767225600000000000,1767225600000000000,book,sim,BTC-PERP,0,,,49999.5,...

``kind`` is ``trade``, ``book``, ``stat`` or ``fill``; empty float cells are NaN; depth columns hold
``price:size`` pairs joined by ``|``.  Rows are sorted by ``ts_ns``, so any prefix of the rows is itself a
valid file.  Writing goes to a temporary file renamed into place: a file is complete or absent.

Also here: the user's own fills (``ts_ns,side,price,size[,fee,order_id]``), which become ``FILL`` rows.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from sigkit.errors import DataError
from sigkit.events import BOOK, DEPTH_LEVELS, FILL, KIND_NAMES, STAT, TRADE, empty_chunk, new_rows

MAGIC = "# sigkit-native v1"
COLUMNS = ["ts_ns", "exch_ts_ns", "kind", "venue", "symbol", "side", "price", "size", "bid_px", "bid_sz",
           "ask_px", "ask_sz", "bids", "asks", "open_interest", "funding_rate", "mark_price", "truth"]
_FLOATS = ["price", "size", "bid_px", "bid_sz", "ask_px", "ask_sz", "open_interest", "funding_rate",
           "mark_price", "truth"]
_KIND_CODES = {name: code for code, name in KIND_NAMES.items()}
_KIND_TEXT = np.array(["", KIND_NAMES[TRADE], KIND_NAMES[BOOK], KIND_NAMES[STAT], KIND_NAMES[FILL]])


def open_text(path: Path, mode: str = "rt", *, gz: bool | None = None):
    """Open plain or gzipped text (``gz`` defaults to the ``.gz`` suffix).  Other compressions belong to the
    source plugins that need them."""
    if gz is None:
        gz = str(path).endswith(".gz")
    if gz:
        if "w" in mode:
            raw = open(path, "wb")  # noqa: SIM115 - closed with the gzip wrapper
            # No name and mtime=0 in the header: identical content gives identical bytes.
            return io.TextIOWrapper(gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0), encoding="utf-8",
                                    newline="")
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, mode, encoding="utf-8", newline="")


def _float_text(values: np.ndarray) -> list[str]:
    text = values.astype(str)
    text[np.isnan(values)] = ""
    return text.tolist()


def _depth_text(levels: np.ndarray) -> list[str]:
    out = []
    for row in levels:
        if math.isnan(row[0, 0]):
            out.append("")
        else:
            out.append("|".join(f"{px!r}:{sz!r}" for px, sz in row.tolist() if px == px))
    return out


def format_rows(chunk: np.ndarray) -> str:
    """The CSV text of a chunk's rows (no header)."""
    cols = {
        "ts_ns": chunk["ts_ns"].astype(str).tolist(),
        "exch_ts_ns": chunk["exch_ts_ns"].astype(str).tolist(),
        "kind": _KIND_TEXT[chunk["kind"]].tolist(),
        "venue": chunk["venue"].tolist(),
        "symbol": chunk["symbol"].tolist(),
        "side": chunk["side"].astype(str).tolist(),
        "bids": _depth_text(chunk["bids"]),
        "asks": _depth_text(chunk["asks"]),
    }
    for name in _FLOATS:
        cols[name] = _float_text(chunk[name])
    rows = zip(*(cols[c] for c in COLUMNS))
    return "".join(",".join(r) + "\n" for r in rows)


def write_native(path: str | Path, chunks: Iterable[np.ndarray], metadata: dict | None = None) -> int:
    """Write chunks to ``path`` (gzipped if it ends in ``.gz``); returns the number of rows."""
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    rows = 0
    try:
        with open_text(tmp, "w", gz=str(path).endswith(".gz")) as out:
            meta = " ".join(f"{k}={v}" for k, v in (metadata or {}).items())
            out.write(f"{MAGIC} {meta}".rstrip() + "\n")
            out.write(",".join(COLUMNS) + "\n")
            for chunk in chunks:
                out.write(format_rows(chunk))
                rows += len(chunk)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return rows


def read_metadata(path: str | Path) -> dict[str, str]:
    """The ``key=value`` pairs of a native file's comment lines."""
    meta = {}
    with _open_for_read(Path(path)) as f:
        for line in f:
            if not line.startswith("#"):
                break
            for item in line[1:].split():
                if "=" in item:
                    key, _, value = item.partition("=")
                    meta[key] = value
    return meta


def _open_for_read(path: Path):
    if not path.exists():
        raise DataError(f"{path}: no such file", hint="check the path in the recipe's data section")
    try:
        return open_text(path, "rt")
    except OSError as err:
        raise DataError(f"{path}: cannot open: {err.strerror or err}") from None


def read_native(path: str | Path, *, chunk_rows: int = 16384) -> Iterator[np.ndarray]:
    """Stream a native file as chunks of :data:`EVENT_DTYPE`."""
    path = Path(path)
    with _open_for_read(path) as f:
        try:
            lineno = 0
            header = None
            for line in f:
                lineno += 1
                if not line.startswith("#"):
                    header = next(csv.reader([line]))
                    break
            if header is None:
                return
            missing = [c for c in COLUMNS if c not in header]
            if missing:
                raise DataError(f"not a sigkit native file: header lacks column {missing[0]!r}",
                                path=str(path), line=lineno)
            index = [header.index(c) for c in COLUMNS]
            batch: list[list[str]] = []
            first_line = lineno + 1
            for row in csv.reader(f):
                lineno += 1
                if len(row) != len(header):
                    raise DataError(f"expected {len(header)} columns, found {len(row)}", path=str(path),
                                    line=lineno, hint="the file is truncated or corrupt")
                batch.append(row)
                if len(batch) == chunk_rows:
                    yield _parse_batch(batch, index, path, first_line)
                    batch = []
                    first_line = lineno + 1
            if batch:
                yield _parse_batch(batch, index, path, first_line)
        except (OSError, EOFError, gzip.BadGzipFile, UnicodeDecodeError) as err:
            raise DataError(f"{path}: cannot read: {err}", hint="the file is truncated or corrupt") from None


def _parse_batch(batch: list[list[str]], index: list[int], path: Path, first_line: int) -> np.ndarray:
    chunk = empty_chunk(len(batch))
    cols = list(zip(*batch))
    by_name = {name: cols[i] for name, i in zip(COLUMNS, index)}
    current = "ts_ns"
    try:
        for current in ("ts_ns", "exch_ts_ns", "side"):
            chunk[current] = np.array(by_name[current], dtype=np.int64)
        current = "kind"
        chunk["kind"] = [_KIND_CODES[k] for k in by_name["kind"]]
        chunk["venue"] = by_name["venue"]
        chunk["symbol"] = by_name["symbol"]
        for current in _FLOATS:
            chunk[current] = [float(v) if v else math.nan for v in by_name[current]]
        for current in ("bids", "asks"):
            for r, text in enumerate(by_name[current]):
                if text:
                    levels = [tuple(map(float, pair.split(":"))) for pair in text.split("|")][:DEPTH_LEVELS]
                    chunk[current][r, : len(levels)] = levels
    except (ValueError, KeyError):
        bad = _first_bad_row(by_name[current], current)
        raise DataError(f"column {current!r}: cannot read {by_name[current][bad]!r}", path=str(path),
                        line=first_line + bad, hint="the file is corrupt or not a sigkit native file") from None
    return chunk


def _first_bad_row(values, column: str) -> int:
    for r, v in enumerate(values):
        try:
            if column == "kind":
                _KIND_CODES[v]
            elif column in ("ts_ns", "exch_ts_ns", "side"):
                int(v)
            elif column in ("bids", "asks"):
                if v:
                    [tuple(map(float, p.split(":"))) for p in v.split("|")]
            elif v:
                float(v)
        except (ValueError, KeyError):
            return r
    return 0


_FILL_SIDES = {"bid": 1, "buy": 1, "b": 1, "1": 1, "+1": 1, "ask": -1, "sell": -1, "a": -1, "s": -1, "-1": -1}


def read_fills_csv(path: str | Path, *, venue: str, symbol: str, chunk_rows: int = 16384,
                   on_bad_line: str = "stop") -> Iterator[np.ndarray]:
    """Stream the user's own fills (``ts_ns,side,price,size[,fee,order_id]``; plain, .gz or .zst) as ``FILL``
    rows.

    ``side`` is ours: ``bid``/``buy`` (our bid was filled, we bought) or ``ask``/``sell``.  A row that cannot
    be read, or that goes back in time, is bad data: the run stops at it, or under ``on_bad_line="skip"``
    it is skipped.
    """
    from sigkit.feeds import BadLines, number, open_lines

    path = Path(path)
    bad = BadLines(path, on_bad_line)
    lines = open_lines(path, bad)
    first = next(lines, None)
    header = [h.strip() for h in next(csv.reader([first[1].decode("utf-8", "replace")]))] if first else []
    for need in ("ts_ns", "side", "price", "size"):
        if need not in header:
            raise DataError(f"fills file needs a {need!r} column (header: {','.join(header)})",
                            path=str(path), line=1)
    its, iside, ipx, isz = (header.index(c) for c in ("ts_ns", "side", "price", "size"))
    rows: list[tuple[int, int, float, float]] = []
    last_ts = None
    for lineno, line in lines:
        row = next(csv.reader([line.decode("utf-8", "replace")]))
        try:
            ts, side = int(row[its]), _FILL_SIDES[row[iside].strip().lower()]
            price, size = number(row[ipx]), number(row[isz])
        except (ValueError, KeyError, IndexError):
            bad(lineno, "unreadable fill", f"{','.join(row)!r} (want ts_ns as integer ns, side bid/ask, price, size)")
            continue
        if last_ts is not None and ts < last_ts:
            bad(lineno, "time went backwards", f"fill at ts_ns={ts} is before the previous one; fills must be "
                "sorted by ts_ns")
            continue
        last_ts = ts
        rows.append((ts, side, price, size))
        if len(rows) == chunk_rows:
            yield _fill_chunk(rows, venue, symbol)
            rows = []
    if rows:
        yield _fill_chunk(rows, venue, symbol)


def _fill_chunk(rows, venue: str, symbol: str) -> np.ndarray:
    ts, side, price, size = zip(*rows)
    chunk = new_rows(FILL, venue, symbol, ts)
    chunk["side"] = side
    chunk["price"] = price
    chunk["size"] = size
    return chunk
