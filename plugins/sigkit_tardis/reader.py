"""tardis.dev normalized CSV files (``source: tardis``): trades, incremental_book_L2, book_snapshot_N,
quotes, derivative_ticker and liquidations, plain, ``.gz`` or ``.zst``.

The data type is told by the file's exact header (docs/sources/tardis.md).  Times are epoch µs: both
``local_timestamp`` (tardis' receive time) and ``timestamp`` (the exchange's) are kept, and the ``clock``
parameter picks which orders the events.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import attrs
import numpy as np
import pyarrow as pa

import sigkit
from sigkit.events import check_market_name
from sigkit.errors import DataError
from sigkit.events import BOOK, DEPTH_LEVELS, STAT, TRADE
from sigkit.feeds import BadLines, L2Book, describe_reader, open_lines

from sigkit.csvblocks import (BlockChunks, CsvLayout, RowChecks, blank_rows, floats, ints, keep_rows, labels, line_blocks,
                        market_columns)

_TEXT = pa.string()
_F64 = pa.float64()
_I64 = pa.int64()
_KEY = ["exchange", "symbol", "timestamp", "local_timestamp"]


def _snapshot_names(levels: int) -> list[str]:
    names = list(_KEY)
    for i in range(levels):
        names += [f"asks[{i}].price", f"asks[{i}].amount", f"bids[{i}].price", f"bids[{i}].amount"]
    return names


#: The exact header of every tardis data type read here (liquidations share the trades header).
HEADERS: dict[str, list[str]] = {
    "trades": _KEY + ["id", "side", "price", "amount"],
    "liquidations": _KEY + ["id", "side", "price", "amount"],
    "incremental_book_L2": _KEY + ["is_snapshot", "side", "price", "amount"],
    "book_snapshot_25": _snapshot_names(25),
    "book_snapshot_5": _snapshot_names(5),
    "quotes": _KEY + ["ask_amount", "ask_price", "bid_price", "bid_amount"],
    "derivative_ticker": _KEY + ["funding_timestamp", "funding_rate", "predicted_funding_rate", "open_interest",
                                 "last_price", "index_price", "mark_price"],
}
DATA_TYPES = tuple(HEADERS)
#: Trade aggressor side, and liquidation side (tardis ``buy`` = a short was liquidated = a forced buy).
_SIDES = {"buy": 1, "sell": -1, "unknown": 0}


def _types(data_type: str) -> dict[str, pa.DataType]:
    types = {"exchange": _TEXT, "symbol": _TEXT, "timestamp": _I64, "local_timestamp": _I64}
    if data_type in ("trades", "liquidations"):
        types.update(side=_TEXT, price=_F64, amount=_F64)
    elif data_type == "incremental_book_L2":
        types.update(is_snapshot=pa.bool_(), side=pa.string(), price=_F64, amount=_F64)
    elif data_type.startswith("book_snapshot_"):
        for name in _snapshot_names(min(int(data_type.rsplit("_", 1)[1]), DEPTH_LEVELS + 1))[4:]:
            types[name] = _F64
    elif data_type == "quotes":
        types.update(ask_amount=_F64, ask_price=_F64, bid_price=_F64, bid_amount=_F64)
    else:
        types.update(funding_rate=_F64, open_interest=_F64, mark_price=_F64)
    return types


@attrs.frozen
class TardisParams:
    path: str = sigkit.path(doc="a tardis.dev normalized CSV file (.csv, .csv.gz or .csv.zst)")
    data_type: str = sigkit.param("auto", doc="the tardis data type; auto: told by the header (the shared "
                                  "trades/liquidations header reads as liquidations when the file name says so)",
                                  choices=("auto",) + DATA_TYPES)
    clock: str = sigkit.param("local", doc="which time orders events: local (tardis receive time) or exchange",
                              choices=sigkit.feeds.CLOCKS)
    reorder_ns: int = sigkit.duration("1s", doc="exchange clock only: how far back in exchange time rows may "
                                      "arrive out of order and still be sorted in")
    venue: str | None = sigkit.param(None, doc="venue name for the events; unset: the file's exchange column")


class Tardis:
    """Reads one tardis.dev normalized CSV file into events.

    trades -> TRADE (side: buy +1, sell -1, unknown 0); quotes -> BOOK touch; book_snapshot_25/5 -> BOOK
    touch and 5 levels below it (blank cells are empty levels); incremental_book_L2 -> one BOOK row per
    message (rows sharing a local_timestamp), from a book rebuilt with :class:`sigkit.feeds.L2Book`;
    derivative_ticker -> STAT (open interest, funding rate, mark price; empty = unknown = NaN; a row with
    none of the three is counted, not emitted); liquidations -> STAT with the liquidated side (+1: a short
    was liquidated, a forced buy), price and size.
    """

    def __init__(self, params: TardisParams, context: sigkit.RunContext):
        self.params = params
        self.path = context.resolve(params.path)
        self.policy = context.on_bad_line
        self.data_type: str | None = None
        self.bad: BadLines | None = None
        self.order: BlockChunks | None = None
        self.no_values = 0

    def _detect(self, bad: BadLines) -> str:
        """The data type, from the exact header (line 1); an unknown header always stops the run."""
        header = next(iter(open_lines(self.path, bad)), (1, b""))[1]
        names = header.decode("utf-8", "replace").split(",")
        wanted = self.params.data_type
        if wanted != "auto":
            if names == HEADERS[wanted]:
                return wanted
            raise DataError(f"unknown header: not tardis {wanted}'s header: {header[:120]!r}", path=str(self.path),
                            line=1, hint="check the file, or the data_type parameter")
        for data_type, expected in HEADERS.items():
            if names == expected:
                if data_type == "trades" and "liquidations" in self.path.name:
                    return "liquidations"
                return data_type
        raise DataError(f"unknown header: not the header of a tardis data type ({', '.join(DATA_TYPES)}): "
                        f"{header[:120]!r}", path=str(self.path), line=1,
                        hint="source tardis reads tardis.dev normalized CSV files with their header line")

    def chunks(self) -> Iterator[np.ndarray]:
        bad = self.bad = BadLines(self.path, self.policy)
        data_type = self.data_type = self._detect(bad)
        order = self.order = BlockChunks(bad, clock=self.params.clock, reorder_ns=self.params.reorder_ns)
        layout = CsvLayout(HEADERS[data_type], _types(data_type))
        l2 = _L2State() if data_type == "incremental_book_L2" else None
        for block in line_blocks(self.path, bad, skip_lines=1):
            problems: list = []
            table, lines = layout.parse(block, problems)
            if table is None:
                rows, lines = blank_rows(0), lines
            elif l2 is not None:
                rows, lines = l2.rows(self._base(table, lines, problems), table, problems)
            else:
                rows, lines = self._rows(data_type, table, lines, problems)
            yield from order.add(rows, lines, problems)
        if l2 is not None:
            rows, lines = l2.flush()
            yield from order.add(rows, lines, [])
        yield from order.finish()

    def _base(self, table: pa.Table, lines: np.ndarray, problems: list) -> tuple[RowChecks, np.ndarray]:
        """Checks and the event rows with times and market filled (other columns at fill values)."""
        checks = RowChecks(lines, problems)
        local = checks.epoch_us(*ints(table, "local_timestamp"), "local_timestamp")
        exch = checks.epoch_us(*ints(table, "timestamp"), "timestamp")
        rows = blank_rows(lines.size)
        rows["ts_ns"] = exch if self.params.clock == "exchange" else local
        rows["exch_ts_ns"] = exch
        if self.params.venue is not None:
            rows["venue"] = check_market_name("venue", self.params.venue)
        else:
            market_columns(rows, "venue", *labels(table, "exchange"))
        market_columns(rows, "symbol", *labels(table, "symbol"))
        return checks, rows

    def _rows(self, data_type: str, table: pa.Table, lines: np.ndarray, problems: list):
        checks, rows = self._base(table, lines, problems)
        if data_type in ("trades", "liquidations"):
            values, codes = labels(table, "side")
            sides = np.array([_SIDES.get(v, 9) for v in values] or [9], dtype=np.int8)[codes]
            allowed = "buy or sell" if data_type == "liquidations" else "buy, sell or unknown"
            checks.reject((sides == 9) | ((sides == 0) & (data_type == "liquidations")), "unknown side",
                          lambda i: f"side {values[codes[i]]!r} is not {allowed}")
            price, size = floats(table, "price"), floats(table, "amount")
            checks.numbers(*price, "price", sign="positive")
            checks.numbers(*size, "amount")
            rows["kind"] = TRADE if data_type == "trades" else STAT
            rows["side"] = np.where(checks.ok, sides, 0)
            rows["price"], rows["size"] = price[0], size[0]
        elif data_type == "quotes":
            _touch(checks, rows, table, "bid_price", "bid_amount", "ask_price", "ask_amount")
        elif data_type.startswith("book_snapshot_"):
            _touch(checks, rows, table, "bids[0].price", "bids[0].amount", "asks[0].price", "asks[0].amount")
            for side in ("bids", "asks"):
                for level in range(1, DEPTH_LEVELS + 1):
                    price_name, size_name = f"{side}[{level}].price", f"{side}[{level}].amount"
                    if price_name in table.column_names:
                        price, size = _level(checks, table, price_name, size_name)
                        rows[side][:, level - 1, 0], rows[side][:, level - 1, 1] = price, size
        else:  # derivative_ticker
            rows["kind"] = STAT
            known = np.zeros(lines.size, dtype=bool)
            for name, sign in (("open_interest", "nonnegative"), ("funding_rate", "any"), ("mark_price", "positive")):
                values, empty = floats(table, name)
                checks.numbers(values, empty, name, allow_empty=True, sign=sign)
                rows[name] = values
                known |= ~empty
            self.no_values += int(np.count_nonzero(checks.ok & ~known))
            checks.ok &= known
        return keep_rows(rows, lines, checks.ok)

    def describe(self) -> dict:
        order = self.order or BlockChunks(BadLines(self.path))
        extra = {"data_type": self.data_type, "clock": self.params.clock}
        if self.data_type == "derivative_ticker":
            extra["rows_without_values"] = self.no_values
        return describe_reader("tardis", self.path, order, self.bad or BadLines(self.path), **extra)


def _level(checks: RowChecks, table: pa.Table, price_name: str, size_name: str) -> tuple[np.ndarray, np.ndarray]:
    """One book level (price, size); both cells blank = an empty level (NaN)."""
    price, price_empty = floats(table, price_name)
    size, size_empty = floats(table, size_name)
    checks.reject(price_empty != size_empty, "not a number",
                  lambda i: f"one of {price_name!r} and {size_name!r} is empty and the other is not")
    checks.numbers(price, price_empty, price_name, allow_empty=True, sign="positive")
    checks.numbers(size, size_empty, size_name, allow_empty=True)
    return price, size


def _touch(checks: RowChecks, rows: np.ndarray, table: pa.Table, bid_px: str, bid_sz: str, ask_px: str,
           ask_sz: str) -> None:
    rows["kind"] = BOOK
    rows["bid_px"], rows["bid_sz"] = _level(checks, table, bid_px, bid_sz)
    rows["ask_px"], rows["ask_sz"] = _level(checks, table, ask_px, ask_sz)


_NAN_LEVELS = [math.nan] * (4 * (DEPTH_LEVELS + 1))


class _Book(L2Book):
    """:class:`sigkit.feeds.L2Book` plus one method that returns the touch and depth as a plain list:
    ``L2Book.depth`` builds two numpy arrays per call, which dominated the time per message here."""

    __slots__ = ()

    def flat_levels(self) -> list[float]:
        """``[bid px, bid sz] * 6 + [ask px, ask sz] * 6`` from the touch down, NaN-padded."""
        n = DEPTH_LEVELS + 1
        out = []
        for keys, levels, sign in ((self._bid_keys, self._bids, -1.0), (self._ask_keys, self._asks, 1.0)):
            side = []
            for key in keys[:n]:
                side += (sign * key, levels[sign * key])
            out += side
            out += _NAN_LEVELS[: 2 * n - len(side)]
        return out


class _L2State:
    """Rebuilds books from incremental_book_L2 rows and emits one BOOK row per message.

    A message is a run of rows of one market sharing a ``local_timestamp``; its BOOK row (touch and 5
    levels below) is emitted when the next message starts, so a message split across blocks stays whole.
    A run of ``is_snapshot=true`` rows after updates starts a new book.
    """

    def __init__(self):
        self.books: dict[tuple[str, str], _Book] = {}
        self.in_snapshot: dict[tuple[str, str], bool] = {}
        self.message: tuple | None = None  # (local_ns, exch_ns, market, last line) of the open message
        self.out: list[tuple] = []

    def rows(self, base: tuple[RowChecks, np.ndarray], table: pa.Table, problems: list):
        """Apply a block's rows; return the BOOK rows of the messages it completed, with their last lines."""
        checks, rows = base
        price, price_empty = floats(table, "price")
        size, size_empty = floats(table, "amount")
        checks.numbers(price, price_empty, "price", sign="positive")
        checks.numbers(size, size_empty, "amount")
        snapshot = table.column("is_snapshot")
        checks.reject(snapshot.is_null().to_numpy(zero_copy_only=False), "not a number",
                      lambda i: "column 'is_snapshot' is empty, not true or false")
        names, codes = labels(table, "side")
        side_codes = np.array([{"bid": 1, "ask": 0}.get(name, 9) for name in names] or [9], dtype=np.int8)[codes]
        checks.reject(side_codes == 9, "unknown side", lambda i: f"side {names[codes[i]]!r} is not bid or ask")
        ok = np.flatnonzero(checks.ok)
        lines = checks.lines[ok].tolist()
        local, exch = rows["ts_ns"][ok].tolist(), rows["exch_ts_ns"][ok].tolist()
        markets = list(zip(rows["venue"][ok].tolist(), rows["symbol"][ok].tolist()))
        snap = snapshot.fill_null(False).to_numpy(zero_copy_only=False)[ok].tolist()
        is_bid, price, size = (side_codes[ok] == 1).tolist(), price[ok].tolist(), size[ok].tolist()
        message, books, in_snapshot = self.message, self.books, self.in_snapshot
        now, market, book = (message[0], message[2], books[message[2]]) if message else (None, None, None)
        for i, line in enumerate(lines):
            if local[i] != now or markets[i] != market:
                if message is not None:
                    self._emit(message)
                now, market = local[i], markets[i]
                book = books.get(market)
                if book is None:
                    book = books[market] = _Book()
                if snap[i] and not in_snapshot.get(market, False):
                    book.clear()
                in_snapshot[market] = snap[i]
            message = (now, exch[i], market, line)
            book.set(is_bid[i], price[i], size[i])
        self.message = message
        return self._drain()

    def _emit(self, message: tuple) -> None:
        self.out.append((message, self.books[message[2]].flat_levels()))

    def flush(self):
        """The BOOK row of the last message, at the end of the file."""
        if self.message is not None:
            self._emit(self.message)
            self.message = None
        return self._drain()

    def _drain(self) -> tuple[np.ndarray, np.ndarray]:
        out, self.out = self.out, []
        rows = blank_rows(len(out))
        lines = np.array([m[0][3] for m in out], dtype=np.int64)
        if out:
            levels = np.array([m[1] for m in out], dtype=np.float64).reshape(len(out), 2, DEPTH_LEVELS + 1, 2)
            rows["kind"] = BOOK
            rows["ts_ns"] = [m[0][0] for m in out]
            rows["exch_ts_ns"] = [m[0][1] for m in out]
            rows["venue"] = [m[0][2][0] for m in out]
            rows["symbol"] = [m[0][2][1] for m in out]
            rows["bid_px"], rows["bid_sz"] = levels[:, 0, 0, 0], levels[:, 0, 0, 1]
            rows["ask_px"], rows["ask_sz"] = levels[:, 1, 0, 0], levels[:, 1, 0, 1]
            rows["bids"], rows["asks"] = levels[:, 0, 1:], levels[:, 1, 1:]
        return rows, lines


SOURCE = sigkit.SourceSpec("tardis", Tardis, params=TardisParams,
                           description="tardis.dev normalized CSV (trades, incremental_book_L2, book snapshots, "
                                       "quotes, derivative_ticker, liquidations)")
