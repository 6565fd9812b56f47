"""Reads raw Binance websocket recordings (spot, USD-M, COIN-M) into sigkit events: ``source: binance``.

A recording holds one combined-stream message per line, prefixed by the recorder's local receive time.
Two layouts exist and are detected per file from its first line:

* hftbacktest: ``<local_ns> <json>``, with one bare REST depth snapshot line a few lines after the start;
* cryptofeed: a first line ``<url> <-> <epoch s>``, then ``<epoch_seconds>: <json>``; its REST depth
  snapshots sit in a separate file of ``<url> -> <epoch s>: <json>`` lines (the ``snapshots`` parameter).

Trades (``trade``, ``aggTrade``) become TRADE rows, the touch becomes BOOK rows (from ``bookTicker`` or
from a local order book rebuilt from ``depthUpdate`` diffs and the REST snapshot, see ``book``),
liquidations (``forceOrder``) and ``markPriceUpdate`` become STAT rows.  The diff-depth chain is checked
by Binance's own rules; a break is reported as a gap and the book stays unsynced until the next snapshot.
"""

from __future__ import annotations

from collections import Counter, deque
from typing import Annotated

import attrs
import msgspec

import sigkit
from sigkit.feeds import (MAX_NS, BadLines, ChunkBuilder, L2Book, describe_reader, number, open_lines,
                          split_local_ns)

#: A price or size as Binance sends it (a decimal string).  msgspec parses it in C, correctly rounded like
#: ``float(text)``; the bounds refuse NaN, infinities and negative values, as :func:`sigkit.feeds.number`
#: would, so a bad number is a validation error of the line.
Size = Annotated[float, msgspec.Meta(ge=0.0, le=1e300)]
Price = Annotated[float, msgspec.Meta(gt=0.0, le=1e300)]
Level = tuple[Price, Size]
#: An exchange time in epoch milliseconds (Binance's default unit), bounded so that its ns fit an int64.
Ms = Annotated[int, msgspec.Meta(ge=0, le=(1 << 63) // 1_000_000)]

#: Depth events held per symbol while no snapshot is loaded (before the first one, or after a gap).
BUFFER_EVENTS = 2000
#: Gaps listed one by one in ``describe()`` (all are counted in ``gap_count``).
GAPS_LISTED = 50
#: Distinct stream names remembered for fast dispatch (the cache is cleared when full).
STREAM_CACHE = 4096


class _Envelope(msgspec.Struct):
    """A combined-stream envelope, or a bare REST depth snapshot (``lastUpdateId`` set)."""

    stream: str | None = None
    data: msgspec.Raw = msgspec.Raw()  # empty (falsy) when absent
    lastUpdateId: int | None = None  # noqa: N815 - Binance's field name


class _Trade(msgspec.Struct):
    E: Ms
    p: Price
    q: Size
    m: bool
    T: Ms | None = None
    X: str = "MARKET"  # futures @trade only; spot trades and aggTrades are all market trades


class _BookTicker(msgspec.Struct):
    b: Size
    B: Size
    a: Size
    A: Size
    E: Ms | None = None  # absent on spot
    T: Ms | None = None


class _Depth(msgspec.Struct):
    E: Ms
    U: int
    u: int
    b: list[Level]
    a: list[Level]
    T: Ms | None = None
    pu: int | None = None  # futures only: the previous event's final update id


class _Snapshot(msgspec.Struct):
    lastUpdateId: int  # noqa: N815
    bids: list[Level]
    asks: list[Level]
    E: Ms | None = None  # futures only
    T: Ms | None = None


class _Order(msgspec.Struct):
    s: str
    S: str
    q: Size
    p: Size
    ap: Size | None = None
    z: Size | None = None
    T: Ms | None = None


class _ForceOrder(msgspec.Struct):
    E: Ms
    o: _Order


class _MarkPrice(msgspec.Struct):
    E: Ms
    p: Price
    r: str = ""  # funding rate; empty for delivery contracts


class _OpenInterest(msgspec.Struct):
    """A polled ``/fapi/v1/openInterest`` (or ``/dapi``) answer as ``sigkit run --live`` records it:
    ``{"stream":"btcusdt@openInterest","data":{"e":"openInterest","E":<local ms>,"s":..,"openInterest":"..",
    "time":<binance ms>}}`` (there is no websocket stream for it)."""

    openInterest: Size  # noqa: N815 - Binance's field name
    time: Ms


def _decoder(tp):
    return msgspec.json.Decoder(tp, strict=False)  # strict=False: numbers arrive as strings


def _message_decoder(payload):
    """A decoder of a whole envelope line whose ``data`` is ``payload`` (one pass over the line)."""
    return _decoder(msgspec.defstruct(f"{payload.__name__}Message", [("data", payload)]))


_ENVELOPE = _decoder(_Envelope)
_SNAPSHOT = _decoder(_Snapshot)
#: Stream kind (the stream name's part after the symbol) -> (what it is, decoder of its lines).
_STREAM_KINDS = {
    "trade": ("trade", _message_decoder(_Trade)),
    "aggTrade": ("trade", _message_decoder(_Trade)),
    "bookTicker": ("bookTicker", _message_decoder(_BookTicker)),
    "depth": ("depth", _message_decoder(_Depth)),
    "forceOrder": ("forceOrder", _message_decoder(_ForceOrder)),
    "markPrice": ("markPrice", _message_decoder(_MarkPrice)),
    "openInterest": ("openInterest", _message_decoder(_OpenInterest)),
}
_STREAM_KEY = b'{"stream":"'


@attrs.frozen
class BinanceParams:
    path: str | None = sigkit.path(None, doc="a raw Binance websocket recording (hftbacktest or cryptofeed layout; "
                                "plain, .gz or .zst)")
    snapshots: str | None = sigkit.path(None, doc="a file of REST depth snapshots, `<url> -> <epoch s>: <json>` "
                                                  "lines (cryptofeed's *.http.*); unset: only snapshot lines "
                                                  "inside the recording")
    venue: str = sigkit.param("binance", doc="venue name of the rows, e.g. binance-spot, binance-usdm, "
                                             "binance-coinm")
    symbols: tuple[str, ...] | None = sigkit.param(None, doc="exchange symbols to keep (e.g. [BTCUSDT]); "
                                                             "unset: all")
    book: str = sigkit.param("ticker", doc="where BOOK rows come from: ticker (bookTicker touch plus 5 levels "
                                           "from the local book) or depth (the local book after each diff)",
                             choices=("ticker", "depth"))
    clock: str = sigkit.param("local", doc="which time orders events: local (receive) or exchange (T, else E)",
                              choices=("local", "exchange"))
    reorder_ns: int = sigkit.duration("1s", doc="exchange clock only: how far messages may arrive out of "
                                                "exchange-time order")
    ws_url: str | None = sigkit.param(None, doc="--live only: the websocket base url (e.g. wss://testnet.binance.vision "
                                                "for the spot testnet); unset: the venue's public endpoint")
    rest_url: str | None = sigkit.param(None, doc="--live only: the REST base url for depth snapshots and open "
                                                  "interest; unset: the venue's public endpoint")
    streams: tuple[str, ...] | None = sigkit.param(None, doc="--live only: the stream suffixes subscribed per "
                                                            "symbol (e.g. [trade, bookTicker, depth@100ms]); unset: "
                                                            "trade, bookTicker, depth@100ms, and forceOrder on futures")
    open_interest_every_ns: int = sigkit.duration("10s", doc="--live only, futures: how often open interest is "
                                                             "polled over REST")


def _split_seconds_prefix(line: bytes) -> tuple[int, bytes]:
    """cryptofeed: ``<epoch_seconds>: <json>``."""
    cut = line.find(b": ")
    if cut <= 0:
        raise ValueError("expected `<epoch seconds>: <json>`")
    return epoch_seconds_ns(line[:cut]), line[cut + 2:]


def epoch_seconds_ns(text: bytes) -> int:
    """Exact integer ns from decimal epoch seconds such as ``b"1626992741.06217"`` (no float rounding).

    Digits past the ninth decimal are rounded half up.
    """
    whole, dot, frac = text.partition(b".")
    if not whole.isdigit() or (dot and not frac.isdigit()):
        raise ValueError(f"not epoch seconds: {text[:40]!r}")
    ns = int(whole) * 1_000_000_000
    if frac:
        ns += int(frac[:9].ljust(9, b"0"))
        if len(frac) > 9 and frac[9] >= ord("5"):
            ns += 1
    if ns > MAX_NS:
        raise ValueError(f"epoch seconds out of range: {text[:40]!r}")
    return ns


def _layout(line: bytes):
    """Pick the prefix parser from a file's first line; True as second value if that line is a header."""
    if b" <-> " in line:  # cryptofeed's header: `<url> <-> <epoch seconds>`
        url, _, when = line.partition(b" <-> ")
        try:
            float(when)
            if url.strip():
                return _split_seconds_prefix, True
        except ValueError:
            pass
    head = line.split(b" ", 1)[0]
    if head.isdigit():
        return split_local_ns, False
    if head.endswith(b":"):
        return _split_seconds_prefix, False
    return None, False


class _BadField(ValueError):
    """A field whose value cannot be interpreted; ``reason`` is the stable reason string."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def _why(err: Exception) -> str:
    """A stable reason string for a decoding error."""
    if isinstance(err, _BadField):
        return err.reason
    text = str(err)
    if isinstance(err, msgspec.ValidationError):
        if "`float`" in text:
            return "not a number"
        if "missing required field" in text:
            return "missing field"
        return "unexpected value"
    if isinstance(err, msgspec.DecodeError):
        return "malformed json"
    return "malformed line"


class _DepthState:
    """One symbol's local book and where its diff chain stands."""

    __slots__ = ("book", "state", "last_id", "buffer", "syncs", "applied", "dropped", "exch_ns", "outside_key",
                 "outside")

    WAITING, BRIDGING, SYNCED = 0, 1, 2  # no usable snapshot / snapshot loaded / chain verified

    def __init__(self) -> None:
        self.book = L2Book()
        self.state = self.WAITING
        self.last_id = 0
        self.buffer: deque = deque(maxlen=BUFFER_EVENTS)
        self.syncs = 0  # snapshots loaded
        self.applied = 0  # diffs applied
        self.dropped = 0  # diffs older than the snapshot they met
        self.exch_ns = 0  # exchange time of what the book reflects
        self.outside_key: tuple | None = None  # the touch ``outside`` was computed for (None: book changed)
        self.outside: tuple = ()


class BinanceWs:
    """Reads one raw Binance websocket recording (see the module docstring and docs/sources/binance.md).

    The exchange time of a row is ``T`` if the message has it, else ``E``.  Spot ``bookTicker`` carries
    no time at all: its exchange time is the local time shifted by the latest (exchange - local) offset
    seen in this file, or the local time before any is seen.
    """

    def __init__(self, params: BinanceParams, context: sigkit.RunContext):
        if params.path is None:
            raise sigkit.DataError("source binance needs `path`, a recording to replay (or run with --live)")
        self.params = params
        self.path = context.resolve(params.path)
        self.snapshots_path = context.resolve(params.snapshots) if params.snapshots else None
        self.on_bad_line = context.on_bad_line
        self.venue = params.venue
        self.symbols = frozenset(s.upper() for s in params.symbols) if params.symbols is not None else None
        self.depth_rows = params.book == "depth"
        self._reset()

    def _reset(self) -> None:
        self.bad = BadLines(self.path, self.on_bad_line)
        self.snap_bad = BadLines(self.snapshots_path or self.path, self.on_bad_line)
        self.builder = ChunkBuilder(self.bad, clock=self.params.clock, reorder_ns=self.params.reorder_ns)
        self.ignored: Counter[str] = Counter()
        self.filtered = 0
        self.gaps: list[dict] = []
        self.gap_count = 0
        self.dropped_buffer_full = 0
        self.crossed = 0
        self.books: dict[str, _DepthState] = {}
        self.seen: dict[str, None] = {}  # symbols seen, in order
        self._streams: dict[bytes, tuple] = {}  # stream name -> _stream_info()
        self._offset_ns: int | None = None  # latest exchange - local
        self._pending_snapshot: tuple | None = None  # a bare snapshot line whose symbol is not known yet

    # -- reading --------------------------------------------------------------------------------------
    def chunks(self):
        return self.parse(open_lines(self.path, self.bad_lines()))

    def bad_lines(self) -> BadLines:
        """The bad-line policy (and counts) of this reader's file; a new read starts new counts."""
        self._reset()
        return self.bad

    def parse(self, lines):
        """Events from numbered recording lines: ``(lineno, line_bytes)`` items, or ``None`` meaning "no more
        data for now" (a live feed going quiet), on which every row held is released at once.

        ``chunks()`` is ``parse`` over the file's lines; ``sigkit run --live`` feeds it the lines it records,
        so live and replayed runs share one parser.
        """
        bad, builder = self.bad, self.builder
        snapshots = self._snapshot_lines()
        next_snapshot = next(snapshots, None)
        split = None
        last_ns = 0
        for item in lines:
            if item is None:
                yield from builder.finish()
                continue
            lineno, line = item
            if split is None:
                split, header = _layout(line)
                if split is None:
                    bad(lineno, "malformed line", "neither `<local_ns> <json>` nor `<epoch seconds>: <json>`")
                    continue
                if header:
                    continue
            try:
                local_ns, body = split(line)
            except ValueError as err:
                bad(lineno, "malformed line", f"{err}: {line[:80]!r}")
                continue
            if local_ns < last_ns:  # checked on every line, also those that make no row (depth diffs)
                bad(lineno, "time went backwards", f"local receive time {local_ns} ns is before {last_ns} ns, "
                    "seen earlier")
                continue
            last_ns = local_ns
            while next_snapshot is not None and next_snapshot[1] <= local_ns:
                self._apply_snapshot(*next_snapshot)
                next_snapshot = next(snapshots, None)
            try:
                self._message(lineno, local_ns, body)
            except (ValueError, msgspec.MsgspecError) as err:
                bad(lineno, _why(err), f"{err}: {line[:80]!r}")
            if len(builder) >= builder.chunk_rows:
                yield from builder.ready()
        while next_snapshot is not None:
            self._apply_snapshot(*next_snapshot)
            next_snapshot = next(snapshots, None)
        if self._pending_snapshot is not None:
            self.ignored["depth snapshot without symbol"] += 1
        yield from builder.finish()

    def _message(self, lineno: int, local_ns: int, body: bytes) -> None:
        """One line's JSON: dispatch on its stream (read off the bytes when the name is already known)."""
        info = None
        if body.startswith(_STREAM_KEY):
            end = body.find(b'"', len(_STREAM_KEY))
            if end > 0:
                info = self._streams.get(body[len(_STREAM_KEY):end])
        if info is None:
            env = _ENVELOPE.decode(body)
            if env.stream is None or not env.data:
                if env.lastUpdateId is None:
                    raise _BadField("unknown message", "neither a combined-stream message nor a depth snapshot")
                self._bare_snapshot(lineno, local_ns, _SNAPSHOT.decode(body))
                return
            info = self._stream_info(env.stream)
        kind, symbol, decoder = info
        if self._pending_snapshot is not None and symbol:
            self._bare_snapshot(*self._pending_snapshot)
        if symbol and self.symbols is not None and symbol not in self.symbols:
            self.filtered += 1
            return
        if decoder is None:  # a stream not turned into rows: still a well-formed line, counted
            _ENVELOPE.decode(body)
            self.ignored[kind] += 1
            return
        m = decoder.decode(body).data
        if kind == "bookTicker":
            if self.depth_rows:  # read (a bad line is bad in either mode) but not turned into rows
                self.ignored["bookTicker"] += 1
                return
            exch_ms = m.T or m.E
            if exch_ms is None:  # spot: no time in the message
                exch = local_ns if self._offset_ns is None else local_ns + self._offset_ns
                if not 0 <= exch <= MAX_NS:  # only with absurd times elsewhere in the file
                    exch = local_ns
            else:
                exch = exch_ms * 1_000_000
                self._offset_ns = exch - local_ns
            bid_px = m.b if m.b > 0 else float("nan")
            ask_px = m.a if m.a > 0 else float("nan")
            st = self.books.get(symbol)
            if st is not None and st.state == st.SYNCED:
                # The touch moves far less often than bookTicker ticks: reuse the levels until it or the
                # book changes (the builder copies them into the chunk).
                if st.outside_key != (bid_px, ask_px):
                    st.outside_key = (bid_px, ask_px)
                    st.outside = st.book.outside(bid_px, ask_px)
                bids, asks = st.outside
                self.builder.book(lineno, local_ns, exch, self.venue, symbol, bid_px, m.B, ask_px, m.A, bids, asks)
            else:
                self.builder.book(lineno, local_ns, exch, self.venue, symbol, bid_px, m.B, ask_px, m.A)
        elif kind == "trade":
            exch = (m.T or m.E) * 1_000_000
            self._offset_ns = exch - local_ns
            if m.X != "MARKET":
                self.ignored[f"trade X={m.X}"] += 1
                return
            self.builder.trade(lineno, local_ns, exch, self.venue, symbol, -1 if m.m else 1, m.p, m.q)
        elif kind == "depth":
            exch = (m.T or m.E) * 1_000_000
            self._offset_ns = exch - local_ns
            self._depth(lineno, local_ns, exch, symbol, m)
        elif kind == "forceOrder":
            self._force_order(lineno, local_ns, m)
        elif kind == "markPrice":
            exch = m.E * 1_000_000  # its T is the next funding time, not the event's
            self._offset_ns = exch - local_ns
            try:
                funding = number(m.r) if m.r else float("nan")
            except ValueError:
                raise _BadField("not a number", f"funding rate r={m.r[:40]!r}") from None
            self.builder.stat(lineno, local_ns, exch, self.venue, symbol, mark_price=m.p, funding_rate=funding)
        elif kind == "openInterest":
            self.builder.stat(lineno, local_ns, m.time * 1_000_000, self.venue, symbol, open_interest=m.openInterest)

    def _stream_info(self, stream: str) -> tuple[str, str, msgspec.json.Decoder | None]:
        """``(kind, SYMBOL, decoder)`` of a stream name such as ``btcusdt@depth@100ms``.

        An unknown stream keeps its own kind name (e.g. ``kline_1m``) and no decoder: it is counted, not read.
        """
        name, at, rest = stream.partition("@")
        if not at or not name or not rest:
            raise _BadField("unknown message", f"not a stream name: {stream[:60]!r}")
        if name.startswith("!"):  # all-market streams: only liquidations (one event a message) are read
            kind, symbol = name[1:], ""
            kind, decoder = _STREAM_KINDS["forceOrder"] if kind == "forceOrder" else (f"!{kind}", None)
        else:
            kind, symbol = rest.split("@", 1)[0], name.upper()
            self.seen.setdefault(symbol, None)
            kind, decoder = _STREAM_KINDS.get(kind, (kind, None))
        if len(self._streams) >= STREAM_CACHE:
            self._streams.clear()
        info = self._streams[stream.encode()] = (kind, symbol, decoder)
        return info

    def _force_order(self, lineno: int, local_ns: int, m: _ForceOrder) -> None:
        o = m.o
        if o.S not in ("BUY", "SELL"):
            raise _BadField("unknown side", f"forceOrder side S={o.S[:20]!r} is neither BUY nor SELL")
        symbol = o.s.upper()
        self.seen.setdefault(symbol, None)
        if self.symbols is not None and symbol not in self.symbols:
            self.filtered += 1
            return
        exch = (o.T or m.E) * 1_000_000
        self._offset_ns = exch - local_ns
        price = o.ap if o.ap else o.p
        size = o.z if o.z else o.q
        self.builder.stat(lineno, local_ns, exch, self.venue, symbol, liquidation_side=1 if o.S == "BUY" else -1,
                          price=price, size=size)

    # -- the local book -------------------------------------------------------------------------------
    def _state(self, symbol: str) -> _DepthState:
        st = self.books.get(symbol)
        if st is None:
            st = self.books[symbol] = _DepthState()
        return st

    def _depth(self, lineno: int, local_ns: int, exch: int, symbol: str, m: _Depth) -> None:
        st = self._state(symbol)
        if st.state == st.WAITING:
            if len(st.buffer) == BUFFER_EVENTS:
                self.dropped_buffer_full += 1
            st.buffer.append((lineno, local_ns, exch, m))
            return
        if self._chain(st, lineno, local_ns, exch, symbol, m):
            st.exch_ns = exch
            self._after_update(st, lineno, local_ns, symbol)

    def _chain(self, st: _DepthState, lineno: int, local_ns: int, exch: int, symbol: str, m: _Depth) -> bool:
        """Apply one diff if it continues the chain (True); drop it if older than the snapshot; else a gap."""
        futures = m.pu is not None
        if st.state == st.BRIDGING:
            lid = st.last_id
            if (m.u < lid) if futures else (m.u <= lid):
                st.dropped += 1
                return False
            need = lid if futures else lid + 1
            if not m.U <= need <= m.u:
                self._gap(st, (lineno, local_ns, exch, m), symbol, "U", need, m.U)
                return False
        elif futures and m.pu != st.last_id:
            self._gap(st, (lineno, local_ns, exch, m), symbol, "pu", st.last_id, m.pu)
            return False
        elif not futures and m.U != st.last_id + 1:
            self._gap(st, (lineno, local_ns, exch, m), symbol, "U", st.last_id + 1, m.U)
            return False
        book_set = st.book.set
        for px, sz in m.b:
            book_set(True, px, sz)
        for px, sz in m.a:
            book_set(False, px, sz)
        st.last_id = m.u
        st.state = st.SYNCED
        st.outside_key = None
        st.applied += 1
        return True

    def _gap(self, st: _DepthState, event: tuple, symbol: str, field: str, expected: int, got: int) -> None:
        """Record a break in the diff chain; the book waits for the next snapshot, starting from ``event``."""
        self.gap_count += 1
        if len(self.gaps) < GAPS_LISTED:
            self.gaps.append({"ts_ns": event[1], "line": event[0], "symbol": symbol, "field": field,
                              "expected": expected, "got": got, "after": "snapshot" if st.state == st.BRIDGING
                              else "update"})
        st.state = st.WAITING
        st.book.clear()
        st.buffer.clear()
        st.buffer.append(event)

    def _after_update(self, st: _DepthState, lineno: int, local_ns: int, symbol: str) -> None:
        """Check the synced book is not crossed and, with ``book: depth``, emit its touch and depth."""
        bid_px, bid_sz = st.book.best_bid()
        ask_px, ask_sz = st.book.best_ask()
        if bid_px >= ask_px:
            self.crossed += 1
            st.state = st.WAITING
            st.book.clear()
            self.bad(lineno, "crossed book", f"{self.venue}:{symbol} local book after update id {st.last_id} has "
                     f"best bid {bid_px:g} >= best ask {ask_px:g}; waiting for the next snapshot")
            return
        if self.depth_rows:
            bids, asks = st.book.depth()
            self.builder.book(lineno, local_ns, st.exch_ns, self.venue, symbol, bid_px, bid_sz, ask_px, ask_sz,
                              bids, asks)

    def _bare_snapshot(self, lineno: int, local_ns: int, snap: _Snapshot) -> None:
        """A REST snapshot line inside the recording: it belongs to the file's single symbol."""
        if not self.seen:
            self._pending_snapshot = (lineno, local_ns, snap)  # resolved by the next stream line
            return
        self._pending_snapshot = None
        if len(self.seen) > 1:
            self.bad(lineno, "ambiguous snapshot", f"a bare depth snapshot in a file of several symbols "
                     f"({', '.join(self.seen)}); give snapshots in a separate file (`snapshots:`)")
            return
        self._apply_snapshot(lineno, local_ns, next(iter(self.seen)), snap)

    def _apply_snapshot(self, lineno: int, local_ns: int, symbol: str, snap: _Snapshot) -> None:
        """Load a snapshot, then replay the diffs buffered before it (those that qualify)."""
        if self.symbols is not None and symbol not in self.symbols:
            return
        st = self._state(symbol)
        if st.state == st.SYNCED:
            self.ignored["depth snapshot while synced"] += 1
            return
        book = st.book
        book.clear()
        for px, sz in snap.bids:
            book.set(True, px, sz)
        for px, sz in snap.asks:
            book.set(False, px, sz)
        st.state, st.last_id, st.syncs = st.BRIDGING, snap.lastUpdateId, st.syncs + 1
        snap_ms = snap.T or snap.E
        if snap_ms:
            st.exch_ns = snap_ms * 1_000_000
        else:  # spot snapshots carry no time
            st.exch_ns = local_ns if self._offset_ns is None else local_ns + self._offset_ns
        buffered, st.buffer = list(st.buffer), deque(maxlen=BUFFER_EVENTS)
        applied = False
        for i, (line, at_ns, exch, m) in enumerate(buffered):
            if st.state == st.WAITING:  # a gap while replaying: keep the rest for the next snapshot
                st.buffer.extend(buffered[i:])
                break
            if self._chain(st, line, at_ns, exch, symbol, m):
                st.exch_ns = max(st.exch_ns, exch)
                applied = True
        if applied and st.state == st.SYNCED:
            self._after_update(st, lineno, local_ns, symbol)

    def _snapshot_lines(self):
        """``(line, local_ns, SYMBOL, snapshot)`` from the ``snapshots`` file, in file order."""
        if self.snapshots_path is None:
            return
        bad = self.snap_bad
        for lineno, line in open_lines(self.snapshots_path, bad):
            try:
                head, arrow, rest = line.partition(b" -> ")
                when, colon, body = rest.partition(b": ")
                if not arrow or not colon:
                    raise ValueError("expected `<url> -> <epoch s>: <json>`")
                query = head.partition(b"?")[2]
                symbol = next((kv[7:] for kv in query.split(b"&") if kv.startswith(b"symbol=")), b"")
                if not symbol:
                    raise ValueError(f"no symbol= in the url {head[:80]!r}")
                yield lineno, epoch_seconds_ns(when), symbol.decode("ascii").upper(), _SNAPSHOT.decode(body)
            except (ValueError, msgspec.MsgspecError) as err:
                bad(lineno, _why(err), f"{err}: {line[:80]!r}")

    # -- live mode ------------------------------------------------------------------------------------
    def live_connections(self):
        """``sigkit run --live``: one connection per symbol (see :mod:`sigkit_binance.live`)."""
        from . import live

        return live.plan(self.params)

    # -- reporting ------------------------------------------------------------------------------------
    def describe(self) -> dict:
        books = self.books
        extra = {}
        if self.snapshots_path is not None:
            extra["snapshots"] = str(self.snapshots_path)
            extra["snapshots_skipped"] = self.snap_bad.summary()
        return describe_reader(
            "binance", self.path, self.builder, self.bad, venue=self.venue, book=self.params.book,
            symbols=list(self.seen), filtered_out=self.filtered, ignored=dict(sorted(self.ignored.items())),
            gaps=self.gaps, gap_count=self.gap_count,
            depth={"applied": sum(st.applied for st in books.values()),
                   "dropped_before_snapshot": sum(st.dropped for st in books.values()),
                   "dropped_buffer_full": self.dropped_buffer_full,
                   "unapplied_at_end": sum(len(st.buffer) for st in books.values()),
                   "crossed": self.crossed,
                   "resyncs": sum(max(st.syncs - 1, 0) for st in books.values()),
                   "by_symbol": {symbol: {"applied": st.applied, "dropped_before_snapshot": st.dropped,
                                          "syncs": st.syncs, "synced_at_end": st.state == st.SYNCED}
                                 for symbol, st in books.items()}},
            **extra)


SOURCE = sigkit.SourceSpec("binance", BinanceWs, params=BinanceParams,
                           description="raw Binance websocket recordings (spot, USD-M, COIN-M; hftbacktest or "
                                       "cryptofeed layout)")
