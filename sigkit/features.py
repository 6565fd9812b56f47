"""Shared features: what several models read, declared once and computed once per event.

A model *declares* a feature it reads by asking its :class:`sigkit.RunContext` for it when it is built::

    self.pyramid = context.feature(sigkit.Pyramid(context.target, scales_ns=(100_000_000, 10**9, 10**10)))

A feature is named by its spec, a frozen value: every model of one run that asks for an equal spec gets
the same live object (:class:`FeatureSet`), so two models that read the 1 s decayed signed flow of the
target (an A/B pair of ``enhanced_as`` with different learning rates, say) share one computation of it.

* **Per-event path.**  Each reader forwards the market events it hears to the feature (``on_trade``,
  ``on_book_update``).  The feature applies an event once: the engine hands every model the same event
  object, and an object the feature has just applied is skipped.  Before reading at a fill, a reader
  advances the feature to the fill's time (:meth:`PyramidState.advance`; the second reader's call is a
  no-op).
* **Batch path.**  ``batch.feature(state)`` gives the feature's values at every query of the batch, one
  row per query.  One compiled kernel computes them over the batch's schedule the first time a reader
  asks, and the other readers get the same rows.  When one reader runs per-event and another on the batch
  path, the engine computes the rows on a copy of the state, and the per-event readers step the live one.

Both paths run the same compiled functions on the same arrays, so they agree bit for bit.  The state is
a :class:`sigkit.LearnedState` held by each reader, so a checkpoint saves and restores it with the reader.

**The pyramid** (:class:`Pyramid`): one market's public microstructure at several timescales ``tau_k``
(micro, meso, macro; e.g. 100 ms, 1 s, 10 s), on irregular event time.

* Decayed sums of event increments ``S_k(t) = sum_{t_i <= t} exp(-(t - t_i) / tau_k) x_i``: signed
  trade volume (``side * size``), volume, Cont-Kukanov-Stoikov order-flow events (:func:`ofi_event`), mid
  returns in bps, trade counts, and price-moving trades (a mid move within ``impact_window`` of a trade,
  in the trade's direction, adds the trade's side).  Between events ``S <- S exp(-dt / tau_k)``, at an
  event ``S <- S + x``.
* Time averages of piecewise-constant levels, ``m <- v_held + exp(-dt / tau_k) (m - v_held)``: book
  imbalance ``(qb - qa) / (qb + qa)``, spread ``Pa - Pb`` and touch depth ``(qb + qa) / 2``.  An average
  starts at the level's first value.
* The touch now (bid price and size, ask price and size), its mid, and whether a usable touch was seen.

A trade with a size that is not positive and a touch that is one-sided, crossed or missing are ignored.
A query row holds, in order: the sums (``6 x n_scales``, row-major in :data:`SUMS` order), the averages
(``3 x n_scales``, :data:`LEVELS` order), the levels held now (3), the touch (4), the mid, and 1.0 if a
touch was seen (else 0.0): :attr:`Pyramid.width` values, offsets in :meth:`Pyramid.offsets`.
"""

from __future__ import annotations

import math

import attrs
import numpy as np

from sigkit import fast
from sigkit.batch import BOOK, EVENT, QUERY, TRADE
from sigkit.context import Market
from sigkit.learn import LearnedState

__all__ = ["Pyramid", "PyramidState", "FeatureSet", "EventTimeScales", "SUMS", "LEVELS", "ofi_event", "scales_add",
           "scales_decay", "scales_set_level"]

#: The decayed sums of a pyramid, in row order.
SUMS = ("signed_volume", "volume", "ofi", "return_bps", "trades", "impacts")
#: The time-averaged levels of a pyramid, in row order.
LEVELS = ("imbalance", "spread", "depth")
_SIGNED_VOLUME, _VOLUME, _OFI, _RETURN_BPS, _TRADES, _IMPACTS = range(6)
_IMBALANCE, _SPREAD, _DEPTH = range(3)
# The integer state: last decay time and whether there is one, whether a touch / a trade was seen, the
# latest trade's time and aggressor side, and the number of events applied.
_LAST, _HAS_LAST, _HAS_BOOK, _HAS_TRADE, _TRADE_TS, _TRADE_SIDE, _N_EVENTS = range(7)


# -- the formulas (plain functions on indexable sequences; compiled twins below) ---------------------

def ofi_event(prev_bid_px: float, prev_bid_sz: float, prev_ask_px: float, prev_ask_sz: float,
              bid_px: float, bid_sz: float, ask_px: float, ask_sz: float) -> float:
    """Cont, Kukanov & Stoikov's order-flow contribution ``e_n`` of one touch update (with >= and <=)."""
    e = 0.0
    if bid_px >= prev_bid_px:
        e += bid_sz
    if bid_px <= prev_bid_px:
        e -= prev_bid_sz
    if ask_px <= prev_ask_px:
        e -= ask_sz
    if ask_px >= prev_ask_px:
        e += prev_ask_sz
    return e


def scales_decay(taus, sums, means, levels, dt, keep) -> None:
    """Decay every sum and time average by ``dt > 0`` ns (``keep``: scratch of one float per scale)."""
    n = len(taus)
    for k in range(n):
        keep[k] = math.exp(-dt / taus[k])
    for j in range(len(sums)):
        row = sums[j]
        for k in range(n):
            row[k] *= keep[k]
    for j in range(len(means)):
        row = means[j]
        v = levels[j]
        if v == v:
            for k in range(n):
                row[k] = v + keep[k] * (row[k] - v)


def scales_add(row, x: float) -> None:
    """Add the increment ``x`` to a decayed sum at every scale."""
    for k in range(len(row)):
        row[k] += x


def scales_set_level(means, levels, j: int, v: float) -> None:
    """Hold level ``j`` at ``v`` from now on; its first value starts the time averages."""
    if levels[j] != levels[j]:  # first value: the average starts there
        row = means[j]
        for k in range(len(row)):
            row[k] = v
    levels[j] = v


class EventTimeScales(LearnedState):
    """Decayed sums and time averages at several timescales, on Python lists, for a model that keeps its own
    (the same formulas as the pyramid's).  ``sums[j][k]`` is ``sum_i exp(-(t - t_i) / tau_k) x_i`` of the
    increments added to sum ``j``; ``means[j][k]`` the time average of level ``j``."""

    def __init__(self, scales_ns: tuple[int, ...], n_sums: int, n_levels: int):
        self.taus = [float(s) for s in scales_ns]
        self.n_scales = len(self.taus)
        self.sums = [[0.0] * self.n_scales for _ in range(n_sums)]
        self.means = [[0.0] * self.n_scales for _ in range(n_levels)]
        self.levels = [math.nan] * n_levels
        self.last_ts: int | None = None

    def advance(self, ts_ns: int) -> None:
        """Decay everything to ``ts_ns`` (never backwards)."""
        last = self.last_ts
        if last is None:
            self.last_ts = ts_ns
            return
        dt = ts_ns - last
        if dt <= 0:
            return
        self.last_ts = ts_ns
        scales_decay(self.taus, self.sums, self.means, self.levels, dt, [0.0] * self.n_scales)

    def add(self, j: int, x: float) -> None:
        scales_add(self.sums[j], x)

    def set_level(self, j: int, v: float) -> None:
        scales_set_level(self.means, self.levels, j, v)


_ofi_event = fast.twin(ofi_event)
_scales_decay = fast.twin(scales_decay)
_scales_add = fast.twin(scales_add)
_scales_set_level = fast.twin(scales_set_level)


@fast.kernel
def _advance(taus, sums, means, levels, istate, ts, keep):
    """Decay the pyramid to ``ts`` (never backwards; the first call only sets the clock)."""
    if istate[_HAS_LAST] == 0:
        istate[_HAS_LAST] = 1
        istate[_LAST] = ts
        return
    dt = ts - istate[_LAST]
    if dt <= 0:
        return
    istate[_LAST] = ts
    _scales_decay(taus, sums, means, levels, dt, keep)


@fast.kernel
def _apply_trade(taus, sums, means, levels, istate, ts, side, size, keep):
    """A trade of the pyramid's market (ignored unless its size is positive)."""
    if not size > 0:
        return
    _advance(taus, sums, means, levels, istate, ts, keep)
    _scales_add(sums[_SIGNED_VOLUME], side * size)
    _scales_add(sums[_VOLUME], size)
    _scales_add(sums[_TRADES], 1.0)
    istate[_HAS_TRADE] = 1
    istate[_TRADE_TS] = ts
    istate[_TRADE_SIDE] = side
    istate[_N_EVENTS] += 1


@fast.kernel
def _apply_book(taus, sums, means, levels, touch, fstate, istate, ts, bp, bs, ap, az, impact_window_ns, keep):
    """A touch update of the pyramid's market (ignored if one-sided, crossed or missing)."""
    if not (bp > 0 and ap >= bp and bs >= 0 and az >= 0):
        return
    _advance(taus, sums, means, levels, istate, ts, keep)
    mid = 0.5 * (bp + ap)
    if istate[_HAS_BOOK]:
        _scales_add(sums[_OFI], _ofi_event(touch[0], touch[1], touch[2], touch[3], bp, bs, ap, az))
        prev_mid = fstate[0]
        if mid != prev_mid:
            _scales_add(sums[_RETURN_BPS], (mid - prev_mid) / prev_mid * 1e4)
            last_side = istate[_TRADE_SIDE]
            if istate[_HAS_TRADE] and ts - istate[_TRADE_TS] <= impact_window_ns and (mid - prev_mid) * last_side > 0:
                _scales_add(sums[_IMPACTS], float(last_side))  # the trade moved the mid its way
    depth = bs + az
    _scales_set_level(means, levels, _IMBALANCE, (bs - az) / depth if depth > 0 else 0.0)
    _scales_set_level(means, levels, _SPREAD, ap - bp)
    _scales_set_level(means, levels, _DEPTH, 0.5 * depth)
    touch[0] = bp
    touch[1] = bs
    touch[2] = ap
    touch[3] = az
    istate[_HAS_BOOK] = 1
    fstate[0] = mid
    istate[_N_EVENTS] += 1


# The three above inlined into the batch kernel, with the formulas they call (no call per event).
_inline_formulas = {"_scales_decay": fast.inline(scales_decay), "_scales_add": fast.inline(scales_add),
                    "_scales_set_level": fast.inline(scales_set_level), "_ofi_event": fast.inline(ofi_event)}
_inline_advance = fast.inline(_advance.py_func, **_inline_formulas)
_inline_trade = fast.inline(_apply_trade.py_func, _advance=_inline_advance, **_inline_formulas)
_inline_book = fast.inline(_apply_book.py_func, _advance=_inline_advance, **_inline_formulas)


@fast.kernel
def _pyramid_rows(op, ref, kind, market, ts, side, size, bid_px, bid_sz, ask_px, ask_sz, q_ts, code, taus,
                  impact_window_ns, sums, means, levels, touch, fstate, istate, rows, keep):
    """The pyramid over a batch's schedule: its market's events applied in order, and at each query the
    pyramid decayed to the query's time and written to that query's row."""
    n = taus.size
    # Borrowed (sigkit.fast.borrowed; arguments, alive for the whole call): the per-step views and calls
    # below then cost no reference counting.  ``keep`` is scratch of one float per scale.
    keep, taus, sums, means, levels = fast.borrowed(keep), fast.borrowed(taus), fast.borrowed(sums), \
        fast.borrowed(means), fast.borrowed(levels)
    touch, fstate, istate, rows = fast.borrowed(touch), fast.borrowed(fstate), fast.borrowed(istate), \
        fast.borrowed(rows)
    for i in range(op.size):
        step = op[i]
        if step == EVENT:
            r = ref[i]
            if market[r] != code:
                continue
            if kind[r] == TRADE:
                _inline_trade(taus, sums, means, levels, istate, ts[r], np.int64(side[r]), size[r], keep)
            elif kind[r] == BOOK:
                _inline_book(taus, sums, means, levels, touch, fstate, istate, ts[r], bid_px[r], bid_sz[r], ask_px[r],
                             ask_sz[r], impact_window_ns, keep)
        elif step == QUERY:
            q = ref[i]
            _inline_advance(taus, sums, means, levels, istate, q_ts[q], keep)
            row = rows[q]
            c = 0
            for j in range(6):
                for k in range(n):
                    row[c] = sums[j, k]
                    c += 1
            for j in range(3):
                for k in range(n):
                    row[c] = means[j, k]
                    c += 1
            for j in range(3):
                row[c + j] = levels[j]
            for j in range(4):
                row[c + 3 + j] = touch[j]
            row[c + 7] = fstate[0]
            row[c + 8] = 1.0 if istate[_HAS_BOOK] else 0.0


# -- specs and states --------------------------------------------------------------------------------

@attrs.frozen
class Pyramid:
    """The multi-timescale microstructure pyramid of ``market`` (see the module doc): decayed sums and time
    averages at each of ``scales_ns``; a mid move within ``impact_window_ns`` of a trade counts as its
    impact."""

    market: Market
    scales_ns: tuple[int, ...] = attrs.field(converter=lambda s: tuple(int(x) for x in s))
    impact_window_ns: int = attrs.field(default=1_000_000, converter=int)

    def __attrs_post_init__(self):
        if not self.scales_ns or min(self.scales_ns) <= 0:
            raise ValueError(f"a pyramid needs positive timescales, got {self.scales_ns!r}")

    @property
    def width(self) -> int:
        """Values in a query row."""
        return 9 * len(self.scales_ns) + 9

    def offsets(self) -> dict[str, int]:
        """Where each part of a query row starts: ``sums``, ``means``, ``levels``, ``touch``, ``mid``,
        ``has_book``."""
        n = len(self.scales_ns)
        return {"sums": 0, "means": 6 * n, "levels": 9 * n, "touch": 9 * n + 3, "mid": 9 * n + 7,
                "has_book": 9 * n + 8}

    def build(self) -> "PyramidState":
        return PyramidState(self)


class PyramidState(LearnedState):
    """The live pyramid of one run: the arrays both paths update, read by every model that declared it.

    ``sums`` (6 x n), ``means`` (3 x n), ``levels`` (3), ``touch`` (bid price, bid size, ask price, ask
    size), ``mid`` and ``has_book`` are its values now; ``n_events`` counts the events applied (once each,
    however many models read it)."""

    STATE_EXCLUDE = ("spec", "taus", "_keep", "_last", "_venue", "_symbol")

    def __init__(self, spec: Pyramid):
        self.spec = spec
        n = len(spec.scales_ns)
        self.taus = np.array(spec.scales_ns, dtype=float)
        self.sums = np.zeros((6, n))
        self.means = np.zeros((3, n))
        self.levels = np.full(3, math.nan)
        self.touch = np.zeros(4)
        self.fstate = np.array([math.nan])  # the mid
        self.istate = np.zeros(7, dtype=np.int64)
        self._keep = np.empty(n)
        self._last = None  # the event object applied last (each is applied once)
        self._venue, self._symbol = spec.market.venue, spec.market.symbol

    @property
    def mid(self) -> float:
        return float(self.fstate[0])

    @property
    def has_book(self) -> bool:
        return bool(self.istate[_HAS_BOOK])

    @property
    def n_events(self) -> int:
        return int(self.istate[_N_EVENTS])

    def on_trade(self, trade) -> None:
        if trade is self._last or trade.venue != self._venue or trade.symbol != self._symbol:
            return
        self._last = trade
        _apply_trade(self.taus, self.sums, self.means, self.levels, self.istate, trade.ts_ns, int(trade.side),
                     float(trade.size), self._keep)

    def on_book_update(self, book) -> None:
        if book is self._last or book.venue != self._venue or book.symbol != self._symbol:
            return
        self._last = book
        _apply_book(self.taus, self.sums, self.means, self.levels, self.touch, self.fstate, self.istate, book.ts_ns,
                    float(book.bid_px), float(book.bid_sz), float(book.ask_px), float(book.ask_sz),
                    self.spec.impact_window_ns, self._keep)

    def advance(self, ts_ns: int) -> None:
        """Decay to ``ts_ns`` (a fill's time, before reading); never backwards."""
        _advance(self.taus, self.sums, self.means, self.levels, self.istate, ts_ns, self._keep)

    def rows(self, batch) -> np.ndarray:
        """Apply the batch's events and return the values at each of its queries (``n_queries x width``)."""
        out = np.empty((batch.n_queries, self.spec.width))
        _pyramid_rows(batch.op, batch.ref, batch.kind, batch.market, batch.ts, batch.column("side"),
                      batch.column("size"), batch.column("bid_px"), batch.column("bid_sz"), batch.column("ask_px"),
                      batch.column("ask_sz"), batch.q_ts, batch.markets.code(self._venue, self._symbol), self.taus,
                      self.spec.impact_window_ns, self.sums, self.means, self.levels, self.touch, self.fstate,
                      self.istate, out, self._keep)
        return out

    def copy(self) -> "PyramidState":
        """An independent copy of the state (for rows computed beside a live per-event reader)."""
        twin = PyramidState(self.spec)
        for name in ("sums", "means", "levels", "touch", "fstate", "istate"):
            setattr(twin, name, getattr(self, name).copy())
        return twin

    def describe(self) -> dict:
        return {"market": str(self.spec.market), "scales_ns": list(self.spec.scales_ns), "events": self.n_events}


class FeatureSet:
    """The shared features of one run: one live state per spec, whoever asks."""

    def __init__(self) -> None:
        self._states: dict = {}

    def get(self, spec):
        state = self._states.get(spec)
        if state is None:
            state = self._states[spec] = spec.build()
        return state


def shared_states(instance) -> list:
    """The shared feature states a model object holds (its attributes that are :class:`PyramidState`)."""
    return [v for v in vars(instance).values() if isinstance(v, PyramidState)] if hasattr(instance, "__dict__") else []
