"""Building blocks for source plugins that read exchange data: files, bad lines, chunks, clocks, books.

Every reader of a venue's format (``plugins/sigkit_binance``, ``sigkit_hyperliquid``, ``sigkit_tardis``)
is made of the same parts, and a third-party source plugin can use them too:

* :func:`open_lines` streams numbered lines from plain, ``.gz`` or ``.zst`` files; a truncated or corrupt
  file is bad data at the line where it broke, never a traceback.
* :class:`BadLines` is the bad-data policy: ``stop`` (the default) raises ``file:line: what is wrong``,
  ``skip`` counts the line by reason and goes on.  The counts reach the report through ``describe()``.
* :class:`ChunkBuilder` collects rows column by column and yields :data:`sigkit.EVENT_DTYPE` chunks of
  bounded size, ordered by the clock the recipe chose (``local`` receive time by default, or ``exchange``
  time with a bounded re-ordering window), refusing time that goes backwards and crossed books.
* :class:`L2Book` is a price-level book (absolute sizes, 0 deletes) that yields its touch and depth.

Prices and sizes arrive as decimal strings; ``float(text)`` rounds each one correctly to the nearest
float64, and the book keys levels by that value, so equal decimal strings are always the same level.
"""

from __future__ import annotations

import gzip
import io
import math
import zlib
from bisect import bisect_left, insort
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from sigkit.errors import DataError
from sigkit.events import BOOK, DEPTH_LEVELS, STAT, TRADE, check_market_name, empty_chunk

#: Allowed values of the ``on_bad_line`` setting (recipe key, ``--on-bad-line``).
ON_BAD_LINE = ("stop", "skip")
#: Allowed values of a reader's ``clock`` parameter.
CLOCKS = ("local", "exchange")

SKIP_HINT = "fix or remove the line, or run with --on-bad-line skip to count and skip bad lines"


class BadLines:
    """The bad-data policy of one source: stop at the first bad line, or count it by reason and go on."""

    def __init__(self, path: str | Path, policy: str = "stop"):
        if policy not in ON_BAD_LINE:
            raise ValueError(f"on_bad_line must be one of {ON_BAD_LINE}, got {policy!r}")
        self.path = str(path)
        self.skip = policy == "skip"
        self.skipped: Counter[str] = Counter()
        self.first: dict[str, int] = {}  # reason -> first line skipped for it

    def __call__(self, line: int | None, reason: str, detail: str, *, path: str | Path | None = None) -> None:
        """Report a bad line: raise under ``stop``; count it under ``skip``."""
        where = self.path if path is None else str(path)
        if not self.skip:
            raise DataError(f"{reason}: {detail}", path=where, line=line, hint=SKIP_HINT)
        self.skipped[reason] += 1
        self.first.setdefault(reason, line or 0)

    def summary(self) -> dict:
        """``{reason: count}`` sorted by reason (empty when nothing was skipped)."""
        return {reason: self.skipped[reason] for reason in sorted(self.skipped)}


def open_binary(path: str | Path):
    """Open a plain, gzip (``.gz``) or Zstandard (``.zst``) file for binary reading."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file", hint="check the path in the recipe's data section")
    try:
        raw = open(path, "rb")  # noqa: SIM115 - closed by the caller (or with the decompressor)
    except OSError as err:
        raise DataError(f"{path}: cannot open: {err.strerror or err}") from None
    name = path.name.lower()
    if name.endswith(".gz"):
        gz = gzip.GzipFile(fileobj=raw, mode="rb")
        gz.myfileobj = raw  # closing the gzip stream closes the file too (as gzip.open does)
        return gz
    if name.endswith(".zst"):
        return io.BufferedReader(_ZstdReader(raw), buffer_size=1 << 20)
    return raw


class _ZstdReader(io.RawIOBase):
    """Zstandard frames decompressed as a stream; input that ends inside a frame raises ``EOFError``
    (``zstandard``'s own stream reader would end quietly, hiding a truncated file)."""

    def __init__(self, raw) -> None:
        import zstandard

        self._raw = raw
        self._new = zstandard.ZstdDecompressor().decompressobj
        self._obj = self._new()
        self._pending = b""
        self._offset = 0  # how much of _pending was handed out
        self._started = False  # some input of the current frame was consumed

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while self._offset == len(self._pending):
            self._pending, self._offset = b"", 0
            data = self._raw.read(1 << 18)
            if not data:
                if self._started and not self._obj.eof:
                    raise EOFError("compressed file ended before the end of its last frame")
                return 0
            while data:
                if self._obj.eof:
                    self._obj = self._new()
                self._started = True
                self._pending += self._obj.decompress(data)
                data = self._obj.unused_data if self._obj.eof else b""
        n = min(len(buffer), len(self._pending) - self._offset)
        buffer[:n] = memoryview(self._pending)[self._offset: self._offset + n]
        self._offset += n
        return n

    def close(self) -> None:
        self._raw.close()
        super().close()


def open_lines(path: str | Path, bad: BadLines) -> Iterator[tuple[int, bytes]]:
    """Yield ``(line_number, line_bytes)`` (1-based, without the line end) from a plain/.gz/.zst file.

    A file that cannot be decompressed to its end (truncated, corrupt) is reported through ``bad`` at the
    line where reading broke, with reason ``corrupt file``; under ``skip`` the rest of the file is lost and
    counted once.  Blank lines are passed over.
    """
    lineno = 0
    with open_binary(path) as f:
        try:
            for raw in f:
                lineno += 1
                line = raw.rstrip(b"\r\n")
                if line:
                    yield lineno, line
        except (OSError, EOFError, zlib.error, _zstd_error()) as err:
            bad(lineno + 1, "corrupt file", f"cannot read past line {lineno}: {err or type(err).__name__} "
                "(a truncated or corrupt compressed file)")


def _zstd_error():
    try:
        import zstandard

        return zstandard.ZstdError
    except ImportError:  # pragma: no cover - zstandard is a dependency
        return OSError


#: The largest receive time a ``<local_ns> <json>`` line may carry (it must fit the int64 column).
MAX_NS = (1 << 63) - 1


def split_local_ns(line: bytes) -> tuple[int, bytes]:
    """``<local_ns> <json>`` (the hftbacktest recording layout, which ``sigkit run --live --record``
    writes) -> ``(local_ns, json)``; ``ValueError`` if the prefix is missing or out of range."""
    cut = line.find(b" ")
    head = line[:cut]
    if cut <= 0 or not head.isdigit():
        raise ValueError("expected `<local_ns> <json>`: a line must start with the receive time in ns")
    local_ns = int(head)
    if local_ns > MAX_NS:
        raise ValueError(f"receive time {head[:40].decode()} ns is out of range")
    return local_ns, line[cut + 1:]


def number(text) -> float:
    """A finite float from a decimal string or number; ``ValueError`` for anything else (NaN and inf too)."""
    value = float(text)
    if value != value or value in (math.inf, -math.inf):
        raise ValueError(f"not a finite number: {text!r}")
    return value


class Emitted:
    """What a reader has released so far: row counts by kind and the time span (its ``describe()`` part)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.first_ns: int | None = None
        self.last_ns: int | None = None

    def note(self, chunk: np.ndarray) -> np.ndarray:
        """Count a chunk about to be yielded (non-empty, sorted by ``ts_ns``); returns it."""
        kinds = np.bincount(chunk["kind"], minlength=5)
        for code, name in ((TRADE, "trade"), (BOOK, "book"), (STAT, "stat")):
            self.counts[name] += int(kinds[code])
        if self.first_ns is None:
            self.first_ns = int(chunk["ts_ns"][0])
        self.last_ns = int(chunk["ts_ns"][-1])
        return chunk

    def describe(self) -> dict:
        """Row counts by kind and the time span of what was released."""
        return {"events": {k: self.counts[k] for k in ("trade", "book", "stat")},
                "first_ts_ns": self.first_ns, "last_ts_ns": self.last_ns}


class ChunkBuilder(Emitted):
    """Collects one source's rows and yields them as :data:`EVENT_DTYPE` chunks in ``ts_ns`` order.

    ``clock`` picks which of the two times orders events: ``local`` (the receive time, the default: the
    only clock a live system could have acted on) or ``exchange``.  Rows arrive in file order.  On the
    local clock a row earlier than the one before it is bad data (``time went backwards``).  On the
    exchange clock, messages of different streams may arrive out of exchange-time order, so rows are
    held for ``reorder_ns`` of exchange time and released sorted; a row more than ``reorder_ns`` older than
    the newest row before it is bad data (the rule of :class:`sigkit.csvblocks.BlockChunks` too).  A book row whose best bid is not below its best ask is bad data
    (``crossed book``).
    """

    def __init__(self, bad: BadLines, *, clock: str = "local", reorder_ns: int = 1_000_000_000,
                 chunk_rows: int = 65536):
        if clock not in CLOCKS:
            raise ValueError(f"clock must be one of {CLOCKS}, got {clock!r}")
        super().__init__()
        self.bad = bad
        self.exchange = clock == "exchange"
        self.reorder_ns = reorder_ns if self.exchange else 0
        self.chunk_rows = chunk_rows
        self._markets: dict[tuple[str, str], int] = {}
        self._last = -(1 << 62)  # latest ts accepted (local) or released (exchange)
        self._max_seen = -(1 << 62)
        self._held: np.ndarray | None = None  # exchange clock: sorted rows not yet releasable
        self._reset()

    def _reset(self) -> None:
        self._ts: list[int] = []
        self._exch: list[int] = []
        self._kind: list[int] = []
        self._market: list[int] = []
        self._side: list[int] = []
        self._f: list[tuple] = []  # (price, size, bid_px, bid_sz, ask_px, ask_sz, oi, funding, mark)
        self._depth: list[tuple[int, np.ndarray | None, np.ndarray | None]] = []

    def __len__(self) -> int:
        return len(self._ts)

    # -- adding rows ----------------------------------------------------------------------------------
    def _time(self, line: int | None, local_ns: int, exch_ns: int) -> int | None:
        if not self.exchange:
            if local_ns < self._last:
                self.bad(line, "time went backwards", f"local receive time {local_ns} ns is before {self._last} ns, "
                         "seen earlier")
                return None
            self._last = local_ns
            return local_ns
        # The same rule for every row, wherever the chunk boundaries fall: at most reorder_ns older than the
        # newest row before it (and never older than what was already released).
        before = self._max_seen
        if exch_ns < max(self._last, before - self.reorder_ns):
            self.bad(line, "time went backwards", f"exchange time {exch_ns} ns is more than the "
                     f"{self.reorder_ns / 1e9:g} s re-ordering window before {before} ns, seen earlier")
            return None
        if exch_ns > before:
            self._max_seen = exch_ns
        return exch_ns

    def _market_code(self, venue: str, symbol: str) -> int:
        key = (venue, symbol)
        code = self._markets.get(key)
        if code is None:
            check_market_name("venue", venue)
            check_market_name("symbol", symbol)
            code = self._markets[key] = len(self._markets)
        return code

    def trade(self, line: int | None, local_ns: int, exch_ns: int, venue: str, symbol: str, side: int,
              price: float, size: float) -> bool:
        """A public trade; ``side`` is the aggressor's (+1 buy, -1 sell, 0 unknown)."""
        ts = self._time(line, local_ns, exch_ns)
        if ts is None:
            return False
        self._row(ts, exch_ns, TRADE, venue, symbol, side, (price, size, math.nan, math.nan, math.nan, math.nan,
                                                              math.nan, math.nan, math.nan))
        return True

    def book(self, line: int | None, local_ns: int, exch_ns: int, venue: str, symbol: str, bid_px: float,
             bid_sz: float, ask_px: float, ask_sz: float, bids: np.ndarray | None = None,
             asks: np.ndarray | None = None) -> bool:
        """A top of book (NaN for an empty side) with optional depth below the touch, ``(levels, 2)``."""
        if bid_px >= ask_px:
            self.bad(line, "crossed book", f"{venue}:{symbol} best bid {bid_px:g} is not below best ask {ask_px:g}")
            return False
        ts = self._time(line, local_ns, exch_ns)
        if ts is None:
            return False
        self._row(ts, exch_ns, BOOK, venue, symbol, 0, (math.nan, math.nan, bid_px, bid_sz, ask_px, ask_sz,
                                                          math.nan, math.nan, math.nan))
        if bids is not None or asks is not None:
            self._depth.append((len(self._ts) - 1, bids, asks))
        return True

    def stat(self, line: int | None, local_ns: int, exch_ns: int, venue: str, symbol: str, *,
             open_interest: float = math.nan, funding_rate: float = math.nan, mark_price: float = math.nan,
             liquidation_side: int = 0, price: float = math.nan, size: float = math.nan) -> bool:
        """Open interest / funding / mark, or a liquidation (``liquidation_side`` +1: a forced buy, i.e. a
        short was liquidated; -1: a long was)."""
        ts = self._time(line, local_ns, exch_ns)
        if ts is None:
            return False
        self._row(ts, exch_ns, STAT, venue, symbol, liquidation_side,
                  (price, size, math.nan, math.nan, math.nan, math.nan, open_interest, funding_rate, mark_price))
        return True

    def _row(self, ts: int, exch: int, kind: int, venue: str, symbol: str, side: int, floats: tuple) -> None:
        market = self._market_code(venue, symbol)  # first: it may refuse the names, before anything is added
        self._ts.append(ts)
        self._exch.append(exch)
        self._kind.append(kind)
        self._market.append(market)
        self._side.append(side)
        self._f.append(floats)

    # -- emitting chunks ------------------------------------------------------------------------------
    def ready(self) -> Iterator[np.ndarray]:
        """Chunks that can be released now (call after adding rows; cheap when there is little to do)."""
        if len(self._ts) >= self.chunk_rows:
            yield from self._flush(final=False)

    def finish(self) -> Iterator[np.ndarray]:
        """Everything still held, at the end of the input."""
        if self._ts or self._held is not None:
            yield from self._flush(final=True)

    def _flush(self, final: bool) -> Iterator[np.ndarray]:
        chunk = self._build()
        self._reset()
        if self.exchange:
            chunk = chunk[np.argsort(chunk["ts_ns"], kind="stable")]
            if not final:
                cut = int(np.searchsorted(chunk["ts_ns"], self._max_seen - self.reorder_ns, side="right"))
                self._held, chunk = chunk[cut:], chunk[:cut]
            if len(chunk):
                self._last = int(chunk["ts_ns"][-1])
        if len(chunk):
            yield self.note(chunk)

    def _build(self) -> np.ndarray:
        n = len(self._ts)
        held, self._held = self._held, None
        chunk = empty_chunk(n)
        if n:
            chunk["ts_ns"] = self._ts
            chunk["exch_ts_ns"] = self._exch
            chunk["kind"] = self._kind
            chunk["side"] = self._side
            floats = np.array(self._f, dtype=np.float64)
            for j, name in enumerate(("price", "size", "bid_px", "bid_sz", "ask_px", "ask_sz", "open_interest",
                                      "funding_rate", "mark_price")):
                chunk[name] = floats[:, j]
            names = sorted(self._markets, key=self._markets.get)
            codes = np.array(self._market)
            chunk["venue"] = np.array([v for v, _ in names])[codes]
            chunk["symbol"] = np.array([s for _, s in names])[codes]
            for row, bids, asks in self._depth:
                if bids is not None:
                    chunk["bids"][row, : len(bids)] = bids[:DEPTH_LEVELS]
                if asks is not None:
                    chunk["asks"][row, : len(asks)] = asks[:DEPTH_LEVELS]
        if held is not None and len(held):
            return np.concatenate([held, chunk])
        return chunk


class L2Book:
    """One market's price-level book: ``set(side, price, size)`` with absolute sizes, ``0`` deleting.

    Levels are kept in a dict plus a sorted price list, so an update costs a dict write and, for a new or
    removed level, one insertion into a list (fast for the few thousand levels a venue sends).
    """

    __slots__ = ("_bids", "_asks", "_bid_keys", "_ask_keys")

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self._bids: dict[float, float] = {}
        self._asks: dict[float, float] = {}
        self._bid_keys: list[float] = []  # negated prices, ascending = best bid first
        self._ask_keys: list[float] = []  # prices, ascending = best ask first

    def __len__(self) -> int:
        return len(self._bids) + len(self._asks)

    def set(self, is_bid: bool, price: float, size: float) -> None:
        levels, keys, key = (self._bids, self._bid_keys, -price) if is_bid else (self._asks, self._ask_keys, price)
        if size > 0:
            if price not in levels:
                insort(keys, key)
            levels[price] = size
        elif price in levels:  # removing a level we do not have is normal
            del levels[price]
            del keys[bisect_left(keys, key)]

    def best_bid(self) -> tuple[float, float]:
        if not self._bid_keys:
            return math.nan, math.nan
        px = -self._bid_keys[0]
        return px, self._bids[px]

    def best_ask(self) -> tuple[float, float]:
        if not self._ask_keys:
            return math.nan, math.nan
        px = self._ask_keys[0]
        return px, self._asks[px]

    def depth(self, levels: int = DEPTH_LEVELS, *, skip: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """``(bids, asks)``: ``levels`` price/size pairs per side after the first ``skip`` (the touch)."""
        bids = [(-k, self._bids[-k]) for k in self._bid_keys[skip: skip + levels]]
        asks = [(k, self._asks[k]) for k in self._ask_keys[skip: skip + levels]]
        return np.array(bids, dtype=np.float64).reshape(-1, 2), np.array(asks, dtype=np.float64).reshape(-1, 2)

    def outside(self, bid_px: float, ask_px: float, levels: int = DEPTH_LEVELS) -> tuple[np.ndarray, np.ndarray]:
        """Depth strictly below ``bid_px`` and strictly above ``ask_px`` (for attaching to another stream's
        touch)."""
        start = bisect_left(self._bid_keys, -bid_px)
        if start < len(self._bid_keys) and self._bid_keys[start] == -bid_px:
            start += 1
        bids = [(-k, self._bids[-k]) for k in self._bid_keys[start: start + levels]]
        start = bisect_left(self._ask_keys, ask_px)
        if start < len(self._ask_keys) and self._ask_keys[start] == ask_px:
            start += 1
        asks = [(k, self._asks[k]) for k in self._ask_keys[start: start + levels]]
        return np.array(bids, dtype=np.float64).reshape(-1, 2), np.array(asks, dtype=np.float64).reshape(-1, 2)


def describe_reader(name: str, path: str | Path, builder: ChunkBuilder, bad: BadLines, **extra) -> dict:
    """The ``describe()`` of a file reader: source name, path, counts, span, skipped lines, extras."""
    out = {"source": name, "path": str(path), **builder.describe(), "skipped": bad.summary()}
    out.update(extra)
    return out
