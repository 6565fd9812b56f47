"""Binance public archive CSVs from data.binance.vision (``source: binance_archive``): trades, aggTrades
and bookTicker, spot and futures (USD-M, COIN-M), plain, ``.gz`` or ``.zst``.

The layouts (docs/sources/binance_archive.md): spot files have no header; futures files have one (older
futures files may not).  Times are epoch ms, except spot files from 2025-01-01 on, which are µs: each
time is read by its magnitude (below 10^14: ms, i.e. before the year 5138; from 10^14: µs, i.e. after
1973-03-03), so both eras and a file mixing them read right.  The files carry only the exchange's time, so
``ts_ns = exch_ts_ns`` = that time.
"""

from __future__ import annotations

import re
from itertools import islice
from collections.abc import Iterator

import attrs
import numpy as np
import pyarrow as pa

import sigkit
from sigkit.events import check_market_name
from sigkit.errors import DataError
from sigkit.events import BOOK, TRADE
from sigkit.feeds import BadLines, describe_reader, open_lines
from sigkit.csvblocks import (MAX_US, BlockChunks, CsvLayout, RowChecks, blank_rows, floats, ints,
                                     keep_rows, line_blocks)

KINDS = ("trades", "aggTrades", "bookTicker")
#: Below this an epoch time is milliseconds, from it on microseconds.
US_FROM = 10**14
_I64, _F64, _BOOL = pa.int64(), pa.float64(), pa.bool_()


@attrs.frozen
class Layout:
    """One archive CSV layout: its kind, column names, and the header line when the file has one."""

    kind: str
    names: tuple[str, ...]
    has_header: bool

    @property
    def header(self) -> str:
        return ",".join(self.names)


_SPOT_TRADES = ("id", "price", "qty", "quote_qty", "time", "is_buyer_maker", "is_best_match")
_USDM_TRADES = ("id", "price", "qty", "quote_qty", "time", "is_buyer_maker")
_COINM_TRADES = ("id", "price", "qty", "base_qty", "time", "is_buyer_maker")
_SPOT_AGG = ("agg_trade_id", "price", "quantity", "first_trade_id", "last_trade_id", "transact_time",
             "is_buyer_maker", "is_best_match")
_FUTURES_AGG = _SPOT_AGG[:-1]
_BOOK_TICKER = ("update_id", "best_bid_price", "best_bid_qty", "best_ask_price", "best_ask_qty",
                "transaction_time", "event_time")

#: Layouts with a header line, found by it.
HEADERED = {",".join(names): Layout(kind, names, True) for kind, names in (
    ("trades", _USDM_TRADES), ("trades", _COINM_TRADES), ("aggTrades", _FUTURES_AGG),
    ("bookTicker", _BOOK_TICKER))}
#: Header-less layouts by (kind, column count).
HEADERLESS = {("trades", 7): _SPOT_TRADES, ("trades", 6): _USDM_TRADES, ("aggTrades", 8): _SPOT_AGG,
              ("aggTrades", 7): _FUTURES_AGG, ("bookTicker", 7): _BOOK_TICKER}
_FILE_NAME = re.compile(r"^([A-Za-z0-9_]+)-(trades|aggTrades|bookTicker)-")
_BOOLS = {"true", "false", "True", "False"}
#: How many lines layout detection may look at for a data line it recognises.
DETECT_LINES = 20


@attrs.frozen
class ArchiveParams:
    path: str = sigkit.path(doc="a data.binance.vision CSV (.csv, .csv.gz or .csv.zst), e.g. "
                            "BTCUSDT-trades-2024-08-08.csv")
    kind: str = sigkit.param("auto", doc="file layout; auto: told by the header, else the file name, else the "
                             "columns", choices=("auto",) + KINDS)
    venue: str = sigkit.param("binance", doc="venue name for the events, e.g. binance-usdm")
    symbol: str | None = sigkit.param(None, doc="symbol for the events; unset: from the file name "
                                      "(SYMBOL-kind-date.csv)")
    reorder_ns: int = sigkit.duration("1s", doc="how far back in time rows may be out of order and still be "
                                      "sorted in (the files carry exchange time only)")


class Archive:
    """Reads one Binance archive CSV into events.

    trades and aggTrades -> TRADE at the trade's price and quantity; ``is_buyer_maker`` true means the
    seller took liquidity, so side -1, else +1.  bookTicker -> BOOK touch at ``transaction_time``.
    """

    def __init__(self, params: ArchiveParams, context: sigkit.RunContext):
        self.params = params
        self.path = context.resolve(params.path)
        self.policy = context.on_bad_line
        name = _FILE_NAME.match(self.path.name)
        self.symbol = params.symbol or (name.group(1) if name else None)
        if not self.symbol:
            raise DataError(f"{self.path}: cannot tell the symbol from the file name",
                            hint="name the file like BTCUSDT-trades-2024-08-08.csv or set symbol: in the "
                                 "source's parameters")
        check_market_name("venue", params.venue)
        check_market_name("symbol", self.symbol)
        self.name_kind = name.group(2) if name else None
        self.layout: Layout | None = None
        self.bad: BadLines | None = None
        self.order: BlockChunks | None = None

    def _detect(self, bad: BadLines) -> Layout:
        """The layout: by the header on line 1; else, from the first data line among the first
        :data:`DETECT_LINES`, by kind (parameter or file name) and column count, or by its columns alone.
        A file whose layout cannot be told always stops; a bad line before the first good one is then
        reported like any other bad line."""
        head = [line.decode("utf-8", "replace") for _, line in islice(open_lines(self.path, bad), DETECT_LINES)]
        first = head[0] if head else ""
        wanted = self.params.kind if self.params.kind != "auto" else self.name_kind
        if first in HEADERED:
            layout = HEADERED[first]
            if wanted in (None, layout.kind):
                return layout
            self._refuse(f"the header is a {layout.kind} file's, not {wanted}'s: {first[:120]!r}")
        for line in head:
            cells = line.split(",")
            if not cells[0].isdigit():
                continue
            kind = wanted
            if kind is None:
                if len(cells) == 7:
                    kind = "trades" if cells[5] in _BOOLS else "aggTrades" if cells[6] in _BOOLS else "bookTicker"
                else:
                    kind = {6: "trades", 8: "aggTrades"}.get(len(cells))
            names = HEADERLESS.get((kind, len(cells)))
            if names is not None:
                return Layout(kind, names, False)
        self._refuse(f"no Binance archive header or data line ({', '.join(KINDS)}"
                     + (f", kind {wanted}" if wanted else "") + f") in the first {DETECT_LINES} lines; "
                     f"line 1 is {first[:120]!r}")

    def _refuse(self, detail: str) -> None:
        raise DataError(f"unknown layout: {detail}", path=str(self.path), line=1,
                        hint="source binance_archive reads data.binance.vision trades, aggTrades and bookTicker "
                             "CSVs; check the file or the kind parameter")

    def chunks(self) -> Iterator[np.ndarray]:
        bad = self.bad = BadLines(self.path, self.policy)
        layout = self.layout = self._detect(bad)
        order = self.order = BlockChunks(bad, clock="exchange", reorder_ns=self.params.reorder_ns)
        types = _types(layout)
        csv = CsvLayout(list(layout.names), types)
        for block in line_blocks(self.path, bad, skip_lines=int(layout.has_header)):
            problems: list = []
            table, lines = csv.parse(block, problems)
            rows, lines = (blank_rows(0), lines) if table is None else self._rows(layout, table, lines, problems)
            yield from order.add(rows, lines, problems)
        yield from order.finish()

    def _rows(self, layout: Layout, table: pa.Table, lines: np.ndarray, problems: list):
        checks = RowChecks(lines, problems)
        names = layout.names
        rows = blank_rows(lines.size)
        time_name = names[4] if layout.kind == "trades" else names[5]
        ts_ns = _epoch_ns(checks, *ints(table, time_name), time_name)
        rows["ts_ns"] = rows["exch_ts_ns"] = ts_ns
        rows["venue"] = self.params.venue
        rows["symbol"] = self.symbol
        if layout.kind == "bookTicker":
            rows["kind"] = BOOK
            for field, name, sign in (("bid_px", "best_bid_price", "positive"),
                                      ("bid_sz", "best_bid_qty", "nonnegative"),
                                      ("ask_px", "best_ask_price", "positive"),
                                      ("ask_sz", "best_ask_qty", "nonnegative")):
                values, empty = floats(table, name)
                checks.numbers(values, empty, name, sign=sign)
                rows[field] = values
        else:
            price, size = floats(table, names[1]), floats(table, names[2])
            checks.numbers(*price, names[1], sign="positive")
            checks.numbers(*size, names[2])
            maker = table.column("is_buyer_maker")
            checks.reject(maker.is_null().to_numpy(zero_copy_only=False), "not a number",
                          lambda i: "column 'is_buyer_maker' is empty, not true or false")
            rows["kind"] = TRADE
            rows["side"] = np.where(maker.fill_null(False).to_numpy(zero_copy_only=False), -1, 1)
            rows["price"], rows["size"] = price[0], size[0]
        return keep_rows(rows, lines, checks.ok)

    def describe(self) -> dict:
        order = self.order or BlockChunks(BadLines(self.path))
        layout = self.layout
        extra = {"kind": layout.kind if layout else None, "header": layout.has_header if layout else None,
                 "symbol": self.symbol}
        return describe_reader("binance_archive", self.path, order, self.bad or BadLines(self.path), **extra)


def _types(layout: Layout) -> dict[str, pa.DataType]:
    names = layout.names
    if layout.kind == "bookTicker":
        return {"best_bid_price": _F64, "best_bid_qty": _F64, "best_ask_price": _F64, "best_ask_qty": _F64,
                "transaction_time": _I64}
    time_name = names[4] if layout.kind == "trades" else names[5]
    return {names[1]: _F64, names[2]: _F64, time_name: _I64, "is_buyer_maker": _BOOL}


def _epoch_ns(checks: RowChecks, values: np.ndarray, empty: np.ndarray, name: str) -> np.ndarray:
    """Epoch ms or µs (by magnitude, see the module docstring) to ns; empty or out-of-range times are bad."""
    checks.reject(empty | (values <= 0) | (values > MAX_US), "bad timestamp",
                  lambda i: f"column {name!r} is {'empty' if empty[i] else values[i]}, not epoch ms or µs")
    values = np.where(checks.ok, values, 0)
    return np.where(values < US_FROM, values * 1_000_000, values * 1000)


SOURCE = sigkit.SourceSpec("binance_archive", Archive, params=ArchiveParams,
                           description="Binance public archive CSV from data.binance.vision (trades, aggTrades, "
                                       "bookTicker; spot and futures)")
