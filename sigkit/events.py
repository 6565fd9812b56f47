"""The event vocabulary: one columnar dtype that every source emits, and the immutable records models see.

Sources deliver *chunks*: numpy structured arrays of :data:`EVENT_DTYPE`, sorted by ``ts_ns``.  A row's
``kind`` says which columns mean something; the rest hold their fill value (NaN, 0 or an empty string).
The engine turns rows into the frozen attrs records below only for the per-event hooks, so a compiled
batch path can consume the same chunks without any change to the sources.

Timestamps are integer nanoseconds since the Unix epoch.  ``ts_ns`` is the clock that orders events (by
default the local receive time, the only clock a live system could have acted on); ``exch_ts_ns`` keeps
the exchange's own time where the feed has one, and equals ``ts_ns`` otherwise.
"""

from __future__ import annotations

import math

import attrs
import numpy as np

# Row kinds.  Outcomes are produced by the engine, never by a source.
TRADE = 1
BOOK = 2
STAT = 3
FILL = 4
KIND_NAMES = {TRADE: "trade", BOOK: "book", STAT: "stat", FILL: "fill"}

# Sides.  A trade's side is the aggressor's: +1 a buyer lifted the ask, -1 a seller hit the bid.
# A fill's side is ours: +1 our bid was filled (we bought), -1 our ask was filled (we sold).
BUY = BID = 1
SELL = ASK = -1

#: Depth levels a book row can carry beside the touch (NaN-padded).
DEPTH_LEVELS = 5

VENUE_CHARS = 16
SYMBOL_CHARS = 24

EVENT_DTYPE = np.dtype(
    [
        ("ts_ns", "<i8"),  # ordering clock, ns
        ("exch_ts_ns", "<i8"),  # exchange clock, ns (== ts_ns when the feed has none)
        ("kind", "u1"),  # TRADE, BOOK, STAT or FILL
        ("venue", f"<U{VENUE_CHARS}"),
        ("symbol", f"<U{SYMBOL_CHARS}"),
        ("side", "i1"),  # trade: aggressor; fill: ours; stat: liquidated side (+1 forced buy); else 0
        ("price", "<f8"),  # trade/fill price; liquidation price
        ("size", "<f8"),  # trade/fill size; liquidation size
        ("bid_px", "<f8"),
        ("bid_sz", "<f8"),
        ("ask_px", "<f8"),
        ("ask_sz", "<f8"),
        ("bids", "<f8", (DEPTH_LEVELS, 2)),  # (price, size) below the touch, level 1 first
        ("asks", "<f8", (DEPTH_LEVELS, 2)),
        ("open_interest", "<f8"),
        ("funding_rate", "<f8"),
        ("mark_price", "<f8"),
        ("truth", "<f8"),  # simulator only: true P(adverse) of this trade taken as a fill; never shown to models
    ]
)

_FLOAT_FIELDS = [name for name in EVENT_DTYPE.names if EVENT_DTYPE[name].base.kind == "f"]


def check_market_name(field: str, value: str) -> str:
    """``value`` if it fits the ``venue`` (16 characters) or ``symbol`` (24) column; a :class:`DataError`
    otherwise (numpy would cut it silently, merging markets that differ only after the cut)."""
    limit = VENUE_CHARS if field == "venue" else SYMBOL_CHARS
    if len(value) > limit:
        from sigkit.errors import DataError

        raise DataError(f"{field} name {value!r} is longer than the {limit} characters sigkit keeps",
                        hint=f"give the source a shorter `{field}` parameter" if field == "venue" else
                        "use a shorter symbol (or a `symbols` filter)")
    return value


def empty_chunk(n: int) -> np.ndarray:
    """A chunk of ``n`` rows with every column at its fill value (NaN for floats, 0, '')."""
    chunk = np.zeros(n, dtype=EVENT_DTYPE)
    for name in _FLOAT_FIELDS:
        chunk[name] = np.nan
    return chunk


def new_rows(kind: int, venue: str, symbol: str, ts_ns) -> np.ndarray:
    """Rows of one kind and market at the given times (``exch_ts_ns = ts_ns``), other columns at fill values."""
    rows = empty_chunk(len(ts_ns))
    rows["ts_ns"] = ts_ns
    rows["exch_ts_ns"] = ts_ns
    rows["kind"] = kind
    rows["venue"] = venue
    rows["symbol"] = symbol
    return rows


def _nan() -> float:
    return math.nan


@attrs.frozen(slots=True)
class Trade:
    """A public trade. ``side`` is the aggressor's: +1 buy (lifted the ask), -1 sell (hit the bid)."""

    ts_ns: int
    venue: str
    symbol: str
    price: float
    size: float
    side: int
    exch_ts_ns: int | None = None


@attrs.frozen(slots=True)
class BookUpdate:
    """The top of book after an update, with optional depth levels ((price, size), best first)."""

    ts_ns: int
    venue: str
    symbol: str
    bid_px: float
    bid_sz: float
    ask_px: float
    ask_sz: float
    bids: tuple[tuple[float, float], ...] = ()
    asks: tuple[tuple[float, float], ...] = ()
    exch_ts_ns: int | None = None

    @property
    def mid(self) -> float:
        return 0.5 * (self.bid_px + self.ask_px)

    @property
    def spread(self) -> float:
        return self.ask_px - self.bid_px


@attrs.frozen(slots=True)
class MarketStat:
    """A market statistic: any of open interest, funding, mark price, or a liquidation (NaN if absent)."""

    ts_ns: int
    venue: str
    symbol: str
    open_interest: float = attrs.field(factory=_nan)
    funding_rate: float = attrs.field(factory=_nan)
    mark_price: float = attrs.field(factory=_nan)
    liquidation_side: int = 0  # +1 a short was liquidated (forced buy), -1 a long (forced sell), 0 none
    liquidation_price: float = attrs.field(factory=_nan)
    liquidation_size: float = attrs.field(factory=_nan)
    exch_ts_ns: int | None = None


@attrs.frozen(slots=True)
class FillQuery:
    """One of our quotes was filled: models are asked how toxic this fill is.

    ``side`` is ours: +1 our bid was filled (we bought), -1 our ask was filled (we sold).
    """

    ts_ns: int
    venue: str
    symbol: str
    side: int
    price: float
    size: float


@attrs.frozen(slots=True)
class Outcome:
    """What a fill turned out to be, once its horizon has passed in event time.

    ``markout_bps = side * (mid_at_horizon - price) / price * 1e4`` (positive: the fill made money);
    ``realized_as_bps = -markout_bps``; ``was_adverse = markout_bps < -threshold_bps``.
    """

    fill: FillQuery
    horizon_ns: int
    mid_at_horizon: float
    markout_bps: float
    was_adverse: bool
    realized_as_bps: float


@attrs.frozen(slots=True)
class Prediction:
    """A model's answer for one fill.

    ``p_adverse`` is the probability that the fill is adverse; ``confidence`` in [0, 1] says how much
    evidence stands behind it (not max(p, 1-p)); ``expected_cost_bps`` is the expected realized
    adverse-selection cost (NaN if the model does not predict it).
    """

    p_adverse: float
    confidence: float = 1.0
    expected_cost_bps: float = attrs.field(factory=_nan)


def _levels(row_levels) -> tuple[tuple[float, float], ...]:
    return tuple((float(px), float(sz)) for px, sz in row_levels if px == px)


def row_to_record(row) -> Trade | BookUpdate | MarketStat | FillQuery:
    """Build the record for one chunk row (slow path: for tests, tools and debugging)."""
    kind = int(row["kind"])
    ts, venue, symbol = int(row["ts_ns"]), str(row["venue"]), str(row["symbol"])
    exch = int(row["exch_ts_ns"])
    if kind == TRADE:
        return Trade(ts, venue, symbol, float(row["price"]), float(row["size"]), int(row["side"]), exch)
    if kind == BOOK:
        return BookUpdate(
            ts, venue, symbol, float(row["bid_px"]), float(row["bid_sz"]), float(row["ask_px"]),
            float(row["ask_sz"]), _levels(row["bids"]), _levels(row["asks"]), exch,
        )
    if kind == STAT:
        return MarketStat(
            ts, venue, symbol, float(row["open_interest"]), float(row["funding_rate"]),
            float(row["mark_price"]), int(row["side"]), float(row["price"]), float(row["size"]), exch,
        )
    if kind == FILL:
        return FillQuery(ts, venue, symbol, int(row["side"]), float(row["price"]), float(row["size"]))
    raise ValueError(f"unknown event kind {kind}")
