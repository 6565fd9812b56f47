"""Reads the flattened CSV files of the djienne Hyperliquid collector: ``source: hyperliquid_csv``.

The collector (github.com/djienne/Hyperliquid_data_collector) writes three CSV files per coin from the
Hyperliquid websocket, each row stamped with the local receive time as float epoch seconds
(``timestamp``, parsed digit by digit to integer ns) and Hyperliquid's ``time`` in epoch ms
(``exchange_timestamp``):

* ``prices_<COIN>.csv`` (``bbo``): ``timestamp,price,size,side,exchange_timestamp``, one row per side per
  message, the bid row first.  A bid row and the ask row right after it with the same ``timestamp`` and
  ``exchange_timestamp`` are one message and become one BOOK touch row.  The collector writes the bid row
  before it reads the ask, so when Hyperliquid sends a null ask it leaves a lone bid row: a lone side is
  a BOOK row with the other side NaN (an empty side; carrying a stale price over could cross the book);
* ``orderbooks_<COIN>.csv`` (``l2Book``): ``timestamp,sequence,exchange_timestamp`` then
  ``bid_price_i,bid_size_i,ask_price_i,ask_size_i`` per level (20 levels; empty cells for missing levels):
  a BOOK row, the touch plus 5 levels beyond;
* ``trades_<COIN>.csv`` (``trades``): ``timestamp,price,size,side,trade_id,exchange_timestamp``, a TRADE
  row with the aggressor's side (``buy`` +1, ``sell`` -1).  The leading rows that share the file's first
  ``timestamp`` are the trades Hyperliquid replays on subscribe (one websocket message, 30 trades in both
  samples, up to ~10 s old); they are remembered but not emitted unless ``replayed_trades: keep``.  Trades
  are de-duplicated on ``(exchange_timestamp, trade_id)``: the samples repeat 30 trades of one block
  (BTC) and the last replayed trade (ETH).

The three files are merged causally by the chosen clock (ties: orderbooks, prices, trades).  Parsing is
vectorised (pyarrow + numpy) one block of lines at a time; a bad line is still named by file and number.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import attrs
import numpy as np
import pyarrow as pa

import sigkit
from sigkit.events import check_market_name
from sigkit.events import BOOK, DEPTH_LEVELS, SYMBOL_CHARS, TRADE, empty_chunk
from sigkit.feeds import BadLines, open_lines
from sigkit.csvblocks import BlockChunks, CsvLayout, RowChecks, blank_rows, floats, ints, labels, line_blocks

#: The three files of one coin, in the order that breaks ties between equal times.
KINDS = ("orderbooks", "prices", "trades")
#: ``(exchange_timestamp, trade_id)`` keys remembered for de-duplication (a replay is a few dozen trades).
DEDUPE_WINDOW = 4096
#: Largest believable gap between a row's receive time and exchange time.
MAX_CLOCK_GAP_NS = 30 * 86_400 * 1_000_000_000

_MS = 1_000_000
_MAX_MS = (2**63 - 1) // _MS
_HEADERS = {
    "prices": ["timestamp", "price", "size", "side", "exchange_timestamp"],
    "trades": ["timestamp", "price", "size", "side", "trade_id", "exchange_timestamp"],
}
_SECONDS_NS = pa.decimal128(19, 9)
_SIDE = pa.dictionary(pa.int32(), pa.string())


def _book_header(levels: int) -> list[str]:
    names = ["timestamp", "sequence", "exchange_timestamp"]
    for i in range(levels):
        names += [f"bid_price_{i}", f"bid_size_{i}", f"ask_price_{i}", f"ask_size_{i}"]
    return names


@attrs.frozen
class HyperliquidCsvParams:
    coin: str = sigkit.param(doc="the coin, e.g. BTC: the rows' symbol and, with `dir`, the file names")
    dir: str | None = sigkit.path(None, doc="the collector's folder: reads prices_<coin>.csv, trades_<coin>.csv "
                                            "and orderbooks_<coin>.csv (or .csv.gz / .csv.zst) from it")
    prices: str | None = sigkit.path(None, doc="a prices (bbo) file; overrides the one in `dir`")
    trades: str | None = sigkit.path(None, doc="a trades file; overrides the one in `dir`")
    orderbooks: str | None = sigkit.path(None, doc="an orderbooks (l2Book) file; overrides the one in `dir`")
    venue: str = sigkit.param("hyperliquid", doc="venue name of the rows")
    clock: str = sigkit.param("local", doc="which time orders events: local (`timestamp`) or exchange "
                                           "(`exchange_timestamp`)", choices=("local", "exchange"))
    reorder_ns: int = sigkit.duration("1s", doc="exchange clock only: how far rows of one file may be out of "
                                                "exchange-time order")
    replayed_trades: str = sigkit.param("drop", doc="the trades Hyperliquid replays on subscribe (the leading "
                                                    "rows of the trades file): drop them or keep them",
                                        choices=("drop", "keep"))

    def __attrs_post_init__(self):
        if self.dir is None and self.prices is None and self.trades is None and self.orderbooks is None:
            raise ValueError("hyperliquid_csv needs `dir` (with `coin`) or at least one of `prices`, `trades`, "
                             "`orderbooks`")
        if not self.coin or len(self.coin) > SYMBOL_CHARS:
            raise ValueError(f"coin must be 1 to {SYMBOL_CHARS} characters, got {self.coin!r}")


def _in_dir(folder: Path, kind: str, coin: str) -> Path:
    for suffix in (".csv", ".csv.gz", ".csv.zst"):
        path = folder / f"{kind}_{coin}{suffix}"
        if path.exists():
            return path
    raise sigkit.DataError(f"{folder}: no {kind}_{coin}.csv (or .csv.gz, .csv.zst) in the folder",
                           hint="check `dir` and `coin`, or name the files with `prices`, `trades`, `orderbooks`")


def _header(path: Path, bad: BadLines) -> tuple[int, list[str]]:
    """The first non-blank line (the header): its number and column names."""
    for lineno, line in open_lines(path, bad):
        return lineno, line.decode("utf-8", "replace").split(",")
    raise sigkit.DataError(f"{path}: the file is empty", hint="a collector CSV starts with its header line")


def epoch_seconds_ns(table: pa.Table, name: str, checks: RowChecks) -> np.ndarray:
    """A float-epoch-seconds column, read by pyarrow as ``decimal128(19, 9)`` (the decimal text scaled to
    an exact 128-bit integer of nanoseconds, never through a float), as int64 ns.

    Empty, negative and out-of-range times are rejected through ``checks``; text that is not a decimal
    number, or has more than 9 decimals, is refused by the parser itself (see :func:`_timestamp_problems`).
    """
    column = table.column(name)
    empty = column.is_null().to_numpy(zero_copy_only=False)
    words = [np.frombuffer(c.buffers()[1], dtype=np.int64).reshape(-1, 2)[c.offset: c.offset + len(c)]
             for c in column.chunks]
    words = np.concatenate(words) if words else np.zeros((0, 2), dtype=np.int64)
    ns, high = words[:, 0], words[:, 1]
    checks.reject(empty | (high != 0) | (ns <= 0), "bad timestamp",
                  lambda i: f"column {name!r} is {'empty' if empty[i] else column[i].as_py()}, "
                            "not epoch seconds in range")
    return np.where(checks.ok, ns, 0)


def _timestamp_problems(problems: list) -> list:
    """Name the parser's refusals of a seconds column for what they are."""
    return [(line, "bad timestamp", "column 'timestamp' is not epoch seconds with at most 9 decimals "
                                    f"({detail.rsplit(': ', 1)[-1].rstrip('.')})")
            if "decimal" in detail.lower() else (line, reason, detail) for line, reason, detail in problems]


def _epoch_ms_ns(table: pa.Table, name: str, checks: RowChecks) -> np.ndarray:
    values, empty = ints(table, name)
    checks.reject(empty | (values < 0) | (values > _MAX_MS), "bad timestamp",
                  lambda i: f"column {name!r} is {'empty' if empty[i] else values[i]}, not epoch milliseconds")
    return np.where(checks.ok, values, 0) * _MS


def _sides(table: pa.Table, names: tuple[str, str], checks: RowChecks) -> np.ndarray:
    """+1 for ``names[0]``, -1 for ``names[1]``; anything else is rejected."""
    values, codes = labels(table, "side")
    lookup = np.array([1 if v == names[0] else -1 if v == names[1] else 0 for v in values] or [0], dtype=np.int8)
    side = lookup[codes] if codes.size else np.zeros(0, np.int8)
    checks.reject(side == 0, "bad side",
                  lambda i: f"side {values[codes[i]]!r} is neither {names[0]!r} nor {names[1]!r}")
    return side


class _File:
    """One collector file: its layout, bad-line policy and ordering; yields sorted event chunks."""

    def __init__(self, reader: HyperliquidCsv, kind: str, path: Path):
        self.reader, self.kind, self.path = reader, kind, path
        self.bad = BadLines(path, reader.context.on_bad_line)
        self.order = BlockChunks(self.bad, clock=reader.params.clock, reorder_ns=reader.params.reorder_ns)
        self.header_line, names = _header(path, self.bad)
        if kind == "orderbooks":
            self.levels = (len(names) - 3) // 4
            expected = _book_header(max(self.levels, 1))
        else:
            expected = _HEADERS[kind]
        if names != expected:
            raise sigkit.DataError(f"unexpected header: expected {','.join(expected[:8])}"
                                   f"{',...' if len(expected) > 8 else ''}", path=str(path), line=self.header_line,
                                   hint=f"is this a djienne collector {kind} file?")
        if kind == "prices":
            types = {"timestamp": _SECONDS_NS, "price": pa.float64(), "size": pa.float64(), "side": _SIDE,
                     "exchange_timestamp": pa.int64()}
        elif kind == "trades":
            types = {"timestamp": _SECONDS_NS, "price": pa.float64(), "size": pa.float64(), "side": _SIDE,
                     "trade_id": pa.int64(), "exchange_timestamp": pa.int64()}
        else:
            types = {"timestamp": _SECONDS_NS, "exchange_timestamp": pa.int64()}
            for name in names[3: 3 + 4 * min(self.levels, DEPTH_LEVELS + 1)]:
                types[name] = pa.float64()
        self.layout = CsvLayout(names, types)
        # prices: rows parsed but not yet paired: lines, local ns, exchange ns, price, size, side (+1 bid)
        self._pending = tuple(np.zeros(0, dt) for dt in (np.int64, np.int64, np.int64, np.float64, np.float64,
                                                         np.int8))
        self.lone_sides = 0
        # trades: the replay (the leading rows at the first receive time) and the de-duplication window
        self._replay_ns: int | None = None
        self._in_replay = True
        self._seen = (np.zeros(0, np.int64), np.zeros(0, np.int64))  # (exchange ms, trade id)
        self.replayed = 0
        self.duplicates = 0

    def chunks(self) -> Iterator[np.ndarray]:
        for chunk in self._ordered_rows():
            if self.kind == "trades" and not chunk["kind"].all():
                chunk = chunk[chunk["kind"] != 0]  # replayed or repeated trades, kept only to check the order
            if chunk.size:
                yield chunk

    def _ordered_rows(self) -> Iterator[np.ndarray]:
        convert = getattr(self, "_" + self.kind)
        for block in line_blocks(self.path, self.bad, skip_lines=self.header_line):
            problems: list = []
            table, lines = self.layout.parse(block, problems)
            problems = _timestamp_problems(problems)
            rows, lines = convert(table, lines, problems) if table is not None else (empty_chunk(0), lines[:0])
            yield from self.order.add(rows, lines, problems)
        if self.kind == "prices":
            rows, lines = self._bbo_rows(final=True)
            yield from self.order.add(rows, lines, [])
        yield from self.order.finish()

    def _rows(self, kind: int, local_ns: np.ndarray, exch_ns: np.ndarray) -> np.ndarray:
        rows = blank_rows(local_ns.size)
        rows["ts_ns"] = exch_ns if self.order.exchange else local_ns
        rows["exch_ts_ns"] = exch_ns
        rows["kind"] = kind
        rows["venue"] = self.reader.params.venue
        rows["symbol"] = self.reader.params.coin
        return rows

    def _times(self, table: pa.Table, checks: RowChecks) -> tuple[np.ndarray, np.ndarray]:
        local = epoch_seconds_ns(table, "timestamp", checks)
        exch = _epoch_ms_ns(table, "exchange_timestamp", checks)
        # A truncated or mangled time (a lost digit is a factor of ten) shows as clocks far apart.
        checks.reject(np.abs(local - exch) > MAX_CLOCK_GAP_NS, "clocks disagree",
                      lambda i: f"receive time {int(local[i])} ns and exchange time {int(exch[i])} ns are more "
                                "than 30 days apart")
        return local, exch

    # -- orderbooks: one BOOK row per line ------------------------------------------------------------
    def _orderbooks(self, table: pa.Table, lines: np.ndarray, problems: list):
        checks = RowChecks(lines, problems)
        local, exch = self._times(table, checks)
        levels = min(self.levels, DEPTH_LEVELS + 1)
        cols = {}
        for i in range(levels):
            for side in ("bid", "ask"):
                px, px_empty = floats(table, f"{side}_price_{i}")
                sz, sz_empty = floats(table, f"{side}_size_{i}")
                checks.numbers(px, px_empty, f"{side}_price_{i}", allow_empty=True, sign="positive")
                checks.numbers(sz, sz_empty, f"{side}_size_{i}", allow_empty=True)
                checks.reject(px_empty != sz_empty, "incomplete level",
                              lambda j, s=side, k=i: f"{s} level {k} has a price or a size but not both")
                cols[side, i] = (px, sz)
        ok = checks.ok
        rows = self._rows(BOOK, local[ok], exch[ok])
        rows["bid_px"], rows["bid_sz"] = cols["bid", 0][0][ok], cols["bid", 0][1][ok]
        rows["ask_px"], rows["ask_sz"] = cols["ask", 0][0][ok], cols["ask", 0][1][ok]
        for i in range(1, levels):
            for side in ("bid", "ask"):
                px, sz = cols[side, i]
                rows[side + "s"][:, i - 1, 0] = px[ok]
                rows[side + "s"][:, i - 1, 1] = sz[ok]
        return rows, lines[ok]

    # -- prices: a bid row and the ask row after it make one BOOK touch row ---------------------------
    def _prices(self, table: pa.Table, lines: np.ndarray, problems: list):
        checks = RowChecks(lines, problems)
        local, exch = self._times(table, checks)
        px, px_empty = floats(table, "price")
        sz, sz_empty = floats(table, "size")
        checks.numbers(px, px_empty, "price", sign="positive")
        checks.numbers(sz, sz_empty, "size")
        side = _sides(table, ("bid", "ask"), checks)
        ok = checks.ok
        pending = self._pending
        self._pending = tuple(np.concatenate([p, c[ok]]) for p, c in zip(pending, (lines, local, exch, px, sz, side)))
        return self._bbo_rows(final=False)

    def _bbo_rows(self, *, final: bool):
        """Pair the pending price rows into messages; unless ``final``, hold back a trailing bid row (its ask
        row may open the next block)."""
        lines, local, exch, px, sz, side = self._pending
        n = lines.size
        hold = 1 if (not final and n and side[-1] == 1) else 0
        self._pending = tuple(a[n - hold:] for a in self._pending)
        n -= hold
        is_bid = side[:n] == 1
        paired = np.zeros(n, dtype=bool)  # row i is a bid whose ask is row i + 1
        if n > 1:
            paired[:-1] = (is_bid[:-1] & ~is_bid[1:] & (local[:n - 1] == local[1:n])
                           & (exch[:n - 1] == exch[1:n]))
        second = np.zeros(n, dtype=bool)
        second[1:] = paired[:-1]
        first = np.flatnonzero(~second)
        self.lone_sides += int(first.size - paired.sum())
        rows = self._rows(BOOK, local[first], exch[first])
        bid = is_bid[first]
        rows["bid_px"] = np.where(bid, px[first], np.nan)
        rows["bid_sz"] = np.where(bid, sz[first], np.nan)
        ask_at = np.minimum(first + paired[first], max(n - 1, 0))  # the ask row: next one if paired, else itself
        has_ask = paired[first] | ~bid
        rows["ask_px"] = np.where(has_ask, px[ask_at] if n else 0.0, np.nan)
        rows["ask_sz"] = np.where(has_ask, sz[ask_at] if n else 0.0, np.nan)
        return rows, lines[first]

    # -- trades: replay rule and de-duplication --------------------------------------------------------
    def _trades(self, table: pa.Table, lines: np.ndarray, problems: list):
        checks = RowChecks(lines, problems)
        local, exch = self._times(table, checks)
        px, px_empty = floats(table, "price")
        sz, sz_empty = floats(table, "size")
        checks.numbers(px, px_empty, "price", sign="positive")
        checks.numbers(sz, sz_empty, "size", sign="positive")
        tid, tid_empty = ints(table, "trade_id")
        checks.reject(tid_empty, "not a number", lambda i: "column 'trade_id' is empty")
        side = _sides(table, ("buy", "sell"), checks)
        ok = checks.ok
        local, exch, px, sz, tid, side, lines = (a[ok] for a in (local, exch, px, sz, tid, side, lines))
        replay = np.zeros(local.size, dtype=bool)
        if self._replay_ns is None and local.size:
            self._replay_ns = int(local[0])
        if self._in_replay and local.size:
            lead = local != self._replay_ns
            count = int(np.argmax(lead)) if lead.any() else local.size
            replay[:count] = True
            self._in_replay = count == local.size
        seen_exch, seen_tid = self._seen
        all_exch, all_tid = np.concatenate([seen_exch, exch]), np.concatenate([seen_tid, tid])
        order = np.lexsort((all_tid, all_exch))  # stable: among equal keys the earlier row comes first
        same = (all_exch[order[1:]] == all_exch[order[:-1]]) & (all_tid[order[1:]] == all_tid[order[:-1]])
        later = order[1:][same] - seen_exch.size
        duplicate = np.zeros(local.size, dtype=bool)
        duplicate[later[later >= 0]] = True
        self.duplicates += int(duplicate.sum())
        self.replayed += int((replay & ~duplicate).sum())
        fresh = ~duplicate
        self._seen = (np.concatenate([seen_exch, exch[fresh]])[-DEDUPE_WINDOW:],
                       np.concatenate([seen_tid, tid[fresh]])[-DEDUPE_WINDOW:])
        emit = fresh & (~replay | (self.reader.params.replayed_trades == "keep"))
        # On the local clock every line's receive time must be in order, dropped trades' too: they go
        # through the ordering as rows of kind 0 and are taken out after it (see chunks()).  On the
        # exchange clock a replay's old exchange times are no ordering error, so they never enter it.
        take = np.ones(emit.size, dtype=bool) if not self.order.exchange else emit
        rows = self._rows(TRADE, local[take], exch[take])
        rows["side"], rows["price"], rows["size"] = side[take], px[take], sz[take]
        rows["kind"][~emit[take]] = 0
        return rows, lines[take]


class HyperliquidCsv:
    """Reads one coin's collector files and merges them causally (see the module docstring)."""

    def __init__(self, params: HyperliquidCsvParams, context: sigkit.RunContext):
        check_market_name("venue", params.venue)
        check_market_name("symbol", params.coin)
        self.params = params
        self.context = context
        folder = None if params.dir is None else context.resolve(params.dir)
        self.paths: dict[str, Path] = {}
        for kind in KINDS:
            given = getattr(params, kind)
            if given is not None:
                self.paths[kind] = context.resolve(given)
            elif folder is not None:
                self.paths[kind] = _in_dir(folder, kind, params.coin)
        self.files: list[_File] = []
        self.first_ns: int | None = None
        self.last_ns: int | None = None

    def chunks(self) -> Iterator[np.ndarray]:
        self.files = [_File(self, kind, path) for kind, path in self.paths.items()]
        # The engine's own merge: equal times keep the files' order (orderbooks, prices, trades), then row order.
        for chunk in sigkit.merge_chunks([(f.kind, f.chunks()) for f in self.files]):
            if self.first_ns is None:
                self.first_ns = int(chunk["ts_ns"][0])
            self.last_ns = int(chunk["ts_ns"][-1])
            yield chunk

    def describe(self):
        events: Counter[str] = Counter()
        skipped: Counter[str] = Counter()
        files = {}
        for f in self.files:
            out = f.order.describe()
            events.update(out["events"])
            skipped.update(f.bad.summary())
            files[f.kind] = {"path": str(f.path), "events": out["events"], "skipped": f.bad.summary()}
        return {"source": "hyperliquid_csv", "path": str(next(iter(self.paths.values()), "")),
                "events": {k: events[k] for k in ("trade", "book", "stat")},
                "first_ts_ns": self.first_ns, "last_ts_ns": self.last_ns,
                "skipped": dict(sorted(skipped.items())), "files": files,
                "replayed_trades": {"count": sum(f.replayed for f in self.files),
                                    "emitted": self.params.replayed_trades == "keep"},
                "duplicate_trades_dropped": sum(f.duplicates for f in self.files),
                "lone_bbo_sides": sum(f.lone_sides for f in self.files)}


SOURCE = sigkit.SourceSpec("hyperliquid_csv", HyperliquidCsv, params=HyperliquidCsvParams,
                           description="Hyperliquid collector CSVs (djienne layout: prices, trades, orderbooks)")
