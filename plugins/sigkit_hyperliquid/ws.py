"""Reads raw Hyperliquid websocket recordings into sigkit events: ``source: hyperliquid``.

A recording holds one message per line, prefixed by the recorder's local receive time in nanoseconds:
``<local_ns> <json>`` (the hftbacktest layout).  A line without that prefix is bad data.  Channels:

* ``l2Book`` -- every message is a full snapshot: one BOOK row, the touch plus 5 levels beyond it;
* ``trades`` -- a list of trades, each a TRADE row, the side being the aggressor's (``B`` +1, ``A`` -1).
  The first ``trades`` message of a coin after the start of the file or after a ``subscriptionResponse``
  (a reconnect) replays trades that happened *before* the recorder listened; they are remembered for
  de-duplication and, by default, not emitted (``replayed_trades: drop``), because stamped with the
  receive time they would be misdated by up to minutes.  Later trades are de-duplicated on
  ``(coin, time, tid)``;
* ``bbo`` -- a BOOK touch row (a missing or null side is NaN);
* ``activeAssetCtx`` / ``activeSpotAssetCtx`` -- a STAT row (open interest, funding rate, mark price).
  The payload has no exchange time, so its exchange time is the receive time;
* ``subscriptionResponse`` and ``pong`` are counted and passed over.

Exchange times are epoch milliseconds; prices and sizes are decimal strings.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from typing import Annotated, Union

import attrs
import msgspec

import sigkit
from sigkit.events import DEPTH_LEVELS, SYMBOL_CHARS
from sigkit.feeds import MAX_NS, BadLines, ChunkBuilder, describe_reader, open_lines, split_local_ns

#: ``(time, tid)`` keys remembered per coin for de-duplication.  Hyperliquid replays its last few dozen
#: trades on (re)subscribe, so a few thousand cover any replay while keeping memory flat.
DEDUPE_WINDOW = 4096

_MS = 1_000_000

#: A price or size as Hyperliquid sends it (a decimal string).  The decoder runs in msgspec's lax mode,
#: which parses the string in C, correctly rounded like ``float(text)``; the bounds refuse NaN, infinities
#: and negative values, as :func:`sigkit.feeds.number` would, so a bad number fails the line's validation.
Price = Annotated[float, msgspec.Meta(gt=0.0, le=1e300)]
Size = Annotated[float, msgspec.Meta(ge=0.0, le=1e300)]
Rate = Annotated[float, msgspec.Meta(ge=-1e300, le=1e300)]
#: A coin name that fits the event dtype's symbol column (a longer one would be cut silently).
Coin = Annotated[str, msgspec.Meta(min_length=1, max_length=SYMBOL_CHARS)]
#: Epoch milliseconds whose nanoseconds fit in int64.
Millis = Annotated[int, msgspec.Meta(ge=0, le=MAX_NS // _MS)]


class _Level(msgspec.Struct):
    px: Price
    sz: Size


class _Book(msgspec.Struct):
    coin: Coin
    levels: tuple[list[_Level], list[_Level]]
    time: Millis


class _Trade(msgspec.Struct):
    coin: Coin
    side: str
    px: Price
    sz: Size
    time: Millis
    tid: int


class _Bbo(msgspec.Struct):
    coin: Coin
    time: Millis
    bbo: list[Union[_Level, None]]  # noqa: UP007 - [bid, ask]; either may be null or (ask) absent


class _Ctx(msgspec.Struct):
    markPx: Price  # noqa: N815 - Hyperliquid's field names
    funding: Union[Rate, None] = None  # noqa: UP007 - spot contexts have no funding or open interest
    openInterest: Union[Size, None] = None  # noqa: N815, UP007


class _AssetCtx(msgspec.Struct):
    coin: Coin
    ctx: _Ctx


class _Subscription(msgspec.Struct):
    type: str = ""
    coin: Union[str, None] = None  # noqa: UP007


class _Ack(msgspec.Struct):
    subscription: Union[_Subscription, None] = None  # noqa: UP007


class _L2BookMsg(msgspec.Struct, tag_field="channel", tag="l2Book"):
    data: _Book


class _TradesMsg(msgspec.Struct, tag_field="channel", tag="trades"):
    data: list[_Trade]


class _BboMsg(msgspec.Struct, tag_field="channel", tag="bbo"):
    data: _Bbo


class _PerpCtxMsg(msgspec.Struct, tag_field="channel", tag="activeAssetCtx"):
    data: _AssetCtx


class _SpotCtxMsg(msgspec.Struct, tag_field="channel", tag="activeSpotAssetCtx"):
    data: _AssetCtx


class _AckMsg(msgspec.Struct, tag_field="channel", tag="subscriptionResponse"):
    data: Union[_Ack, None] = None  # noqa: UP007


class _PongMsg(msgspec.Struct, tag_field="channel", tag="pong"):
    pass


_DECODER = msgspec.json.Decoder(Union[_L2BookMsg, _TradesMsg, _BboMsg, _PerpCtxMsg, _SpotCtxMsg,  # noqa: UP007
                                      _AckMsg, _PongMsg], strict=False)


@attrs.frozen
class HyperliquidParams:
    path: str | None = sigkit.path(None, doc="a Hyperliquid websocket recording, `<local_ns> <json>` lines (plain, .gz or .zst)")
    venue: str = sigkit.param("hyperliquid", doc="venue name of the rows")
    coins: tuple[str, ...] | None = sigkit.param(None, doc="coins to keep (e.g. [BTC, ETH]); unset: all")
    clock: str = sigkit.param("local", doc="which time orders events: local (receive) or exchange (`time`)",
                              choices=("local", "exchange"))
    reorder_ns: int = sigkit.duration("1s", doc="exchange clock only: how far messages may arrive out of "
                                                "exchange-time order")
    replayed_trades: str = sigkit.param("drop", doc="the trades Hyperliquid replays on (re)subscribe: drop "
                                                    "them (they happened before the recorder listened) or "
                                                    "keep them, stamped with their receive time",
                                        choices=("drop", "keep"))
    ws_url: str | None = sigkit.param(None, doc="--live only: the websocket url (e.g. wss://api.hyperliquid-testnet.xyz/ws); "
                                                "unset: wss://api.hyperliquid.xyz/ws")


def _why(err: msgspec.ValidationError) -> tuple[str, str]:
    """Reason and detail for a line that is JSON but not a message this reader knows."""
    text = str(err)
    if "`$.channel`" in text:
        return "unknown message", text
    if "Expected `float`" in text or "out of range" in text:
        return "not a number", text
    return "bad message", text


class _Trades:
    """Which trades of one coin to emit: the replay rule and ``(time, tid)`` de-duplication."""

    __slots__ = ("replay_next", "seen", "order")

    def __init__(self) -> None:
        self.replay_next = True  # the next trades message is a replay (file start, or after a subscribe)
        self.seen: set[tuple[int, int]] = set()
        self.order: deque[tuple[int, int]] = deque()

    def remember(self, key: tuple[int, int]) -> bool:
        """Record ``key``; False if it was already seen (a duplicate)."""
        if key in self.seen:
            return False
        self.seen.add(key)
        self.order.append(key)
        if len(self.order) > DEDUPE_WINDOW:
            self.seen.discard(self.order.popleft())
        return True


class Hyperliquid:
    """Reads one Hyperliquid websocket recording (see the module docstring for what each channel becomes)."""

    def __init__(self, params: HyperliquidParams, context: sigkit.RunContext):
        if params.path is None:
            raise sigkit.DataError("source hyperliquid needs `path`, a recording to replay (or run with --live)")
        self.params = params
        self.path = context.resolve(params.path)
        self.on_bad_line = context.on_bad_line
        self.coins = None if params.coins is None else frozenset(params.coins)
        self.keep_replayed = params.replayed_trades == "keep"
        self._reset()

    def _reset(self) -> None:
        """Fresh reading state: counts, the replayed-trades memory, the clock checks."""
        self.bad = BadLines(self.path, self.on_bad_line)
        self.builder = ChunkBuilder(self.bad, clock=self.params.clock, reorder_ns=self.params.reorder_ns)
        self.messages: Counter[str] = Counter()
        self.replayed = 0
        self.duplicates = 0
        self._trades: dict[str, _Trades] = {}

    def chunks(self):
        self._reset()  # every read of the file starts afresh
        return self.parse(open_lines(self.path, self.bad))

    def parse(self, lines):
        """Events from numbered recording lines: ``(lineno, line_bytes)`` items, or ``None`` meaning "no more
        data for now" (a live feed going quiet), on which every row held is released at once.

        ``chunks()`` is ``parse`` over the file's lines; ``sigkit run --live`` feeds it the lines it records,
        so live and replayed runs share one parser.
        """
        builder, bad = self.builder, self.bad
        local_clock, latest_ns = self.params.clock == "local", 0
        for item in lines:
            if item is None:
                yield from builder.finish()
                continue
            lineno, line = item
            try:
                local_ns, body = split_local_ns(line)
            except ValueError as err:
                bad(lineno, "missing receive time", str(err))
                continue
            if local_clock:
                # Checked for every line, not only those that make rows: a replayed trades message that
                # is dropped, or a pong, still has to be in receive-time order.
                if local_ns < latest_ns:
                    bad(lineno, "time went backwards", f"local receive time {local_ns} ns is before "
                                                       f"{latest_ns} ns, seen earlier")
                    continue
                latest_ns = local_ns
            try:
                msg = _DECODER.decode(body)
            except msgspec.ValidationError as err:
                bad(lineno, *_why(err))
                continue
            except msgspec.DecodeError as err:
                bad(lineno, "malformed json", str(err))
                continue
            try:
                self._message(lineno, local_ns, msg)
            except ValueError as err:
                bad(lineno, "bad message", str(err))
                continue
            yield from builder.ready()
        yield from builder.finish()

    def _message(self, lineno: int, local_ns: int, msg) -> None:
        """Turn one decoded message into rows (``ValueError`` for a bad field, before any row is added)."""
        kind = type(msg)
        if kind is _L2BookMsg:
            self.messages["l2Book"] += 1
            self._book(lineno, local_ns, msg.data)
        elif kind is _TradesMsg:
            self.messages["trades"] += 1
            self._trades_message(lineno, local_ns, msg.data)
        elif kind is _BboMsg:
            self.messages["bbo"] += 1
            self._bbo(lineno, local_ns, msg.data)
        elif kind is _PerpCtxMsg or kind is _SpotCtxMsg:
            self.messages["activeAssetCtx" if kind is _PerpCtxMsg else "activeSpotAssetCtx"] += 1
            data = msg.data
            if self._wanted(data.coin):
                ctx = data.ctx
                self.builder.stat(lineno, local_ns, local_ns, self.params.venue, data.coin,
                                  open_interest=math.nan if ctx.openInterest is None else ctx.openInterest,
                                  funding_rate=math.nan if ctx.funding is None else ctx.funding,
                                  mark_price=ctx.markPx)
        elif kind is _AckMsg:
            self.messages["subscriptionResponse"] += 1
            sub = msg.data.subscription if msg.data is not None else None
            if sub is not None and sub.type == "trades" and sub.coin is not None:
                self._coin_trades(sub.coin).replay_next = True
        else:
            self.messages["pong"] += 1

    def _wanted(self, coin: str) -> bool:
        return self.coins is None or coin in self.coins

    def _coin_trades(self, coin: str) -> _Trades:
        state = self._trades.get(coin)
        if state is None:
            state = self._trades[coin] = _Trades()
        return state

    def _book(self, lineno: int, local_ns: int, book: _Book) -> None:
        if not self._wanted(book.coin):
            return
        bids, asks = book.levels
        bid = [(lv.px, lv.sz) for lv in bids[: DEPTH_LEVELS + 1]]
        ask = [(lv.px, lv.sz) for lv in asks[: DEPTH_LEVELS + 1]]
        bid_px, bid_sz = bid[0] if bid else (math.nan, math.nan)
        ask_px, ask_sz = ask[0] if ask else (math.nan, math.nan)
        # Depth goes in as lists of (price, size): the builder copies them into the chunk, and a numpy
        # array per side per message would cost more than the rest of the row.
        self.builder.book(lineno, local_ns, book.time * _MS, self.params.venue, book.coin, bid_px, bid_sz,
                          ask_px, ask_sz, bid[1:] or None, ask[1:] or None)

    def _bbo(self, lineno: int, local_ns: int, data: _Bbo) -> None:
        if len(data.bbo) > 2:
            raise ValueError(f"bbo has {len(data.bbo)} entries, expected [bid, ask]")
        if not self._wanted(data.coin):
            return
        sides = [(lv.px, lv.sz) if lv is not None else (math.nan, math.nan) for lv in data.bbo]
        sides += [(math.nan, math.nan)] * (2 - len(sides))
        (bid_px, bid_sz), (ask_px, ask_sz) = sides
        self.builder.book(lineno, local_ns, data.time * _MS, self.params.venue, data.coin, bid_px, bid_sz,
                          ask_px, ask_sz)

    def _trades_message(self, lineno: int, local_ns: int, trades: list[_Trade]) -> None:
        rows = []
        for t in trades:  # check every trade first: a bad field rejects the whole line
            if t.side not in ("B", "A"):
                raise ValueError(f"trade side {t.side!r} is neither B (buy) nor A (sell)")
            rows.append((t.coin, t.time, t.tid, 1 if t.side == "B" else -1, t.px, t.sz))
        replay = {coin: self._coin_trades(coin).replay_next for coin in {r[0] for r in rows}}
        for coin in replay:
            self._trades[coin].replay_next = False
        for coin, time_ms, tid, side, price, size in rows:
            if not self._wanted(coin):
                continue
            if not self._trades[coin].remember((time_ms, tid)):
                self.duplicates += 1
                continue
            if replay[coin]:
                self.replayed += 1
                if not self.keep_replayed:
                    continue
            if not self.builder.trade(lineno, local_ns, time_ms * _MS, self.params.venue, coin, side, price, size):
                break  # the line was reported (time went backwards): once, not once per trade

    def live_connections(self):
        """``sigkit run --live``: one connection for all the entry's coins (see :mod:`sigkit_hyperliquid.live`)."""
        from . import live

        return live.plan(self.params)

    def describe(self):
        return describe_reader("hyperliquid", self.path, self.builder, self.bad,
                               messages=dict(sorted(self.messages.items())),
                               replayed_trades={"count": self.replayed,
                                                "emitted": self.keep_replayed},
                               duplicate_trades_dropped=self.duplicates)


SOURCE = sigkit.SourceSpec("hyperliquid", Hyperliquid, params=HyperliquidParams,
                           description="Hyperliquid websocket recording (l2Book, trades, bbo, activeAssetCtx)")
