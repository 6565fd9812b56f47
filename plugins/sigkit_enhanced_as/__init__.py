"""EnhancedAS: public-microstructure features of the target market at several timescales, fed to an online
logistic model with online Platt calibration, to predict whether a fill is adverse.

Everything is computed from the target market's own trades and top of book (``on_trade`` and
``on_book_update``); events of other markets are ignored.

**Event-time averages.**  Events arrive at irregular times.  For each timescale ``tau_k`` (default
100 ms, 1 s, 10 s: micro, meso, macro) two kinds of exponentially weighted statistics are kept:

* decayed sums of event increments, ``S_k(t) = sum_{t_i <= t} exp(-(t - t_i) / tau_k) x_i``, updated
  between events by ``S <- S exp(-dt / tau_k)`` and at an event by ``S <- S + x``;
* time averages of a piecewise-constant quantity ``v`` (held between its updates),
  ``m <- v_held + exp(-dt / tau_k) (m - v_held)``, i.e. ``m(t) = integral exp(-(t - s) / tau_k) v(s) ds /
  tau_k`` once the history is long against ``tau_k`` (it starts at the first value seen).

**Features** of a fill at ``t``, all built from events strictly before ``t``, signed by the fill's
aggressor side ``a = -side`` so that "with the aggressor" is positive:

* at each scale ``k``:

  - trade-flow imbalance ``a * TFI_k``, ``TFI_k = S_k(side * size) / S_k(size)`` in [-1, 1];
  - order-flow imbalance ``a * OFI_k / D``, ``OFI_k = S_k(e_n)`` with Cont, Kukanov & Stoikov's (2014)
    touch event ``e_n = 1{Pb_n >= Pb_n-1} qb_n - 1{Pb_n <= Pb_n-1} qb_n-1 - 1{Pa_n <= Pa_n-1} qa_n +
    1{Pa_n >= Pa_n-1} qa_n-1`` (METHODS.md section 5.2), ``D`` the macro time average of the touch depth
    ``(qb + qa) / 2``;
  - momentum ``a * MOM_k``, ``MOM_k = S_k(mid return in bps)``;
  - book imbalance ``a * IMB_k``, the time average of ``I = (qb - qa) / (qb + qa)``;
  - spread change ``(spread - SPR_k) / SPR_macro``, ``SPR_k`` the time average of the spread;
  - price-moving flow ``a * S_k(impact) / S_k(1 per trade)``: a mid move that comes within
    ``impact_window`` of a target trade and goes the trade's way counts as that trade's impact (+-1 by
    the trade's side), so this is the signed share of recent trades that moved the price;

* at the touch now: book imbalance ``a * I``; microprice offset ``a * (P_micro - mid) / mid`` in bps with
  the weighted mid ``P_micro = (qb Pa + qa Pb) / (qb + qa)`` (Gatheral & Oomen; the first-order
  approximation of Stoikov's 2018 microprice, METHODS.md section 5.3); spread level in bps;
* scale agreement of momentum and of trade flow: +1 if ``a * x_k`` is positive at every scale, -1 if
  negative at every scale, 0 otherwise.

**Learning.**  Each feature is standardised online by a running mean and variance (exact for the first
``standardise_window`` fills, exponentially weighted after) and clipped to +-``clip``, so one learning
rate fits all.  An online logistic model ``P(adverse) = sigmoid(logit(r) + w.x)`` (:class:`sigkit.OnlineLogistic`,
constant-step SGD with L2, METHODS.md section 6.1) learns from every delivered outcome, so it keeps
adapting; ``r`` is the causal running base rate, so the features' log-odds ``u = w.x`` is what they add
to it.  An online Platt map ``p = sigmoid(logit(r) + A u + C)`` (METHODS.md section 6.3) is fitted by SGD
on log loss to each delivered outcome, on the ``u`` that was issued for that fill.  ``A`` starts at
``calibration_initial_slope`` (default 0) and is kept >= 0: the features' log-odds reach the prediction
only as far as delivered outcomes show they help, so a model with nothing to find stays at the base rate
instead of adding its learning noise.  ``C`` absorbs drift of the base rate.  The confidence is ``n / (n +
evidence)`` after ``n`` delivered outcomes (evidence seen, not ``max(p, 1 - p)``).

**Batch path.**  ``on_batch`` runs the same hooks over a whole piece of the replay in one compiled kernel
(numba): the formulas (:func:`scales_decay`, :func:`scales_add`, :func:`scales_set_level`, :func:`ofi_event`,
:func:`eas_features`, :func:`standardise`, :func:`platt_decision`, :func:`platt_step`) are plain functions that
the per-event classes call and the kernel calls compiled (:func:`sigkit.fast.twin`), so both paths give the
same predictions, bit for bit, and leave the same learned state.
"""

from __future__ import annotations

import math

import attrs
import numpy as np

import sigkit
from sigkit import fast
from sigkit.batch import BOOK, EVENT, OUTCOME, QUERY, TRADE

__all__ = ["EnhancedAS", "EnhancedASParams", "EventTimeScales", "OnlinePlatt", "OnlineStandardiser", "eas_features",
           "ofi_event", "platt_decision", "platt_step", "scales_add", "scales_decay", "scales_set_level", "standardise"]


@attrs.frozen
class EnhancedASParams:
    scales_ns: tuple[int, ...] = sigkit.duration(
        ("100ms", "1s", "10s"),
        doc="timescales of the event-time averages (micro, meso, macro); the longest also normalises OFI")
    learning_rate: float = sigkit.param(0.002, doc="SGD step of the online logistic fit (standardised features)")
    l2: float = sigkit.param(1e-3, doc="L2 penalty of the online logistic fit")
    calibration_learning_rate: float = sigkit.param(
        0.01, doc="SGD step of the Platt slope A of the online calibration")
    calibration_intercept_learning_rate: float = sigkit.param(
        0.0005, doc="SGD step of the Platt intercept C of the online calibration (absorbs base-rate drift)")
    calibration_initial_slope: float = sigkit.param(
        0.0, doc="Platt slope A before any outcome: 0 makes the features earn their weight from outcomes")
    impact_window_ns: int = sigkit.duration(
        "1ms", doc="a mid move this soon after a target trade, in the trade's direction, counts as its impact")
    standardise_window: float = sigkit.param(
        2000.0, doc="window of the running mean and variance that standardise the features", unit="fills")
    clip: float = sigkit.param(5.0, doc="standardised features are clipped to +-clip", unit="standard deviations")
    evidence: float = sigkit.param(500.0, doc="outcomes after which confidence reaches 0.5", unit="outcomes")


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


class EventTimeScales(sigkit.LearnedState):
    """Decayed sums and time averages at several timescales on irregular event time.

    ``sums[j][k]`` is ``sum_i exp(-(t - t_i) / tau_k) x_i`` of the increments added to sum ``j``;
    ``means[j][k]`` is the exponentially weighted time average of level ``j`` (the value set with
    :meth:`set_level` is held until the next change).  A time average starts at the first value it holds.
    """

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


# EventTimeScales' formulas as plain functions on indexable sequences (``sums[j][k]``: a list of lists here, a
# 2-d array in the batch kernel, which calls their compiled twins).

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


RELATIVE_SD_FLOOR = 0.05


class OnlineStandardiser(sigkit.LearnedState):
    """Running mean and variance per feature; ``transform`` scales by the moments so far, then updates them.

    The weight of a new observation is ``max(1 / n, 1 / window)``: an exact running mean and variance
    for the first ``window`` observations, exponentially weighted after.  A standard deviation below
    ``RELATIVE_SD_FLOOR`` times the feature's mean level is floored there.
    """

    def __init__(self, n_features: int, window: float, clip: float):
        self.mean = [0.0] * n_features
        self.var = [0.0] * n_features
        self.n = 0
        self.floor = 1.0 / window
        self.clip = clip

    def transform(self, x: list[float]) -> list[float]:
        """``x`` standardised by the moments before it (clipped to +-clip), then the moments updated with it."""
        self.n += 1
        out = [0.0] * len(x)
        standardise(self.mean, self.var, self.n, self.floor, self.clip, x, out)
        return out


def standardise(mean, var, n: int, floor: float, clip: float, x, out) -> None:
    """:meth:`OnlineStandardiser.transform` after its count went up to ``n``: ``out`` gets ``x`` standardised
    by the moments before it (clipped to +-clip; 0 where the sd is ~0), then ``mean`` and ``var`` are updated."""
    alpha = 1.0 / n
    if alpha < floor:
        alpha = floor
    keep = 1.0 - alpha
    for i in range(len(x)):
        v = x[i]
        m = mean[i]
        s2 = var[i]
        d = v - m
        # A variation below RELATIVE_SD_FLOOR of the feature's own level (e.g. a spread in bps that only
        # moves because the price level drifts) is not information: scale it away, do not blow it up.
        sd = math.sqrt(s2)
        level_floor = RELATIVE_SD_FLOOR * (m if m > 0.0 else -m)
        if sd < level_floor:
            sd = level_floor
        z = 0.0
        if sd > 1e-12:
            z = d / sd
            z = clip if z > clip else -clip if z < -clip else z
        out[i] = z
        mean[i] = m + alpha * d
        var[i] = keep * (s2 + alpha * d * d)


class OnlinePlatt(sigkit.LearnedState):
    """Online Platt calibration ``p = sigmoid(offset + A u + C)`` of a log-odds ``u`` over a known
    ``offset``, by SGD on log loss; ``A`` is kept at or above 0 (a calibrator may shrink a model, never
    turn it round)."""

    def __init__(self, learning_rate: float, intercept_learning_rate: float, initial_slope: float = 1.0):
        self.slope = initial_slope
        self.intercept = 0.0
        self.learning_rate = learning_rate
        self.intercept_learning_rate = intercept_learning_rate
        self.n_updates = 0

    def __call__(self, u: float, offset: float = 0.0) -> float:
        return sigkit.sigmoid(platt_decision(self.slope, self.intercept, u, offset))

    def update(self, u: float, y: float, offset: float = 0.0) -> None:
        error = self(u, offset) - y
        self.slope, self.intercept = platt_step(self.slope, self.intercept, u, error, self.learning_rate,
                                                self.intercept_learning_rate)
        self.n_updates += 1


def platt_decision(slope: float, intercept: float, u: float, offset: float) -> float:
    """The calibrated log-odds ``offset + A u + C``."""
    return offset + slope * u + intercept


def platt_step(slope: float, intercept: float, u: float, error: float, learning_rate: float,
               intercept_learning_rate: float) -> tuple[float, float]:
    """One SGD step of ``(A, C)`` on log loss (``error = p - y``), ``A`` kept at or above 0."""
    s = slope - learning_rate * error * u
    return (s if s > 0.0 else 0.0), intercept - intercept_learning_rate * error  # s if s > 0 is max(0.0, s)


# Sums and levels kept at every scale.
_SIGNED_VOLUME, _VOLUME, _OFI, _RETURN_BPS, _TRADES, _IMPACTS = range(6)
_IMBALANCE, _SPREAD, _DEPTH = range(3)


class EnhancedAS(sigkit.LearnedState):
    """Multi-timescale public microstructure of the target market, online logistic fit, online Platt map."""

    def __init__(self, params: EnhancedASParams, context: sigkit.RunContext):
        if not params.scales_ns or min(params.scales_ns) <= 0:
            raise sigkit.ModelError(f"enhanced_as: scales must be positive durations, got {params.scales_ns!r}")
        if params.standardise_window < 1 or params.clip <= 0 or params.evidence < 0:
            raise sigkit.ModelError("enhanced_as: standardise_window must be >= 1, clip > 0 and evidence >= 0")
        rates = (params.learning_rate, params.l2, params.calibration_learning_rate,
                 params.calibration_intercept_learning_rate, params.calibration_initial_slope)
        if min(rates) < 0:
            raise sigkit.ModelError("enhanced_as: learning rates, l2 and calibration_initial_slope must be >= 0")
        self.params = params
        self.target = context.target
        self.scales = EventTimeScales(params.scales_ns, n_sums=6, n_levels=3)
        self.macro = max(range(len(params.scales_ns)), key=lambda k: params.scales_ns[k])
        self.book: tuple[float, float, float, float] | None = None  # bid_px, bid_sz, ask_px, ask_sz
        self.mid = math.nan
        self.n_features = 6 * len(params.scales_ns) + 5
        self.last_trade: tuple[int, int] | None = None  # (ts_ns, aggressor side) of the latest target trade
        self.standardiser = OnlineStandardiser(self.n_features, params.standardise_window, params.clip)
        self.model = sigkit.OnlineLogistic(self.n_features, learning_rate=params.learning_rate, l2=params.l2,
                                           intercept_learning_rate=0.0)  # the Platt intercept does it
        self.calibration = OnlinePlatt(params.calibration_learning_rate, params.calibration_intercept_learning_rate,
                                       params.calibration_initial_slope)
        self.base_rate = sigkit.RunningBaseRate()
        self.cost = sigkit.ConditionalCost()
        self.pending = sigkit.PendingFills()  # fill -> (x, offset, issued u)
        self.slots = sigkit.FillSlots(self.n_features + 2)  # the batch path's memory of each fill: x, offset, u

    # -- market events --------------------------------------------------------------------------------

    def on_trade(self, trade: sigkit.Trade) -> None:
        if trade.venue != self.target.venue or trade.symbol != self.target.symbol:
            return
        size = trade.size
        if not size > 0:
            return
        scales = self.scales
        scales.advance(trade.ts_ns)
        scales.add(_SIGNED_VOLUME, trade.side * size)
        scales.add(_VOLUME, size)
        scales.add(_TRADES, 1.0)
        self.last_trade = (trade.ts_ns, trade.side)

    def on_book_update(self, book: sigkit.BookUpdate) -> None:
        if book.venue != self.target.venue or book.symbol != self.target.symbol:
            return
        bid_px, bid_sz, ask_px, ask_sz = book.bid_px, book.bid_sz, book.ask_px, book.ask_sz
        if not (bid_px > 0 and ask_px >= bid_px and bid_sz >= 0 and ask_sz >= 0):
            return  # a one-sided, crossed or missing touch carries no usable state
        scales = self.scales
        scales.advance(book.ts_ns)
        prev = self.book
        mid = 0.5 * (bid_px + ask_px)
        if prev is not None:
            scales.add(_OFI, ofi_event(prev[0], prev[1], prev[2], prev[3], bid_px, bid_sz, ask_px, ask_sz))
            if mid != self.mid:
                scales.add(_RETURN_BPS, (mid - self.mid) / self.mid * 1e4)
                last = self.last_trade
                if last is not None and book.ts_ns - last[0] <= self.params.impact_window_ns \
                        and (mid - self.mid) * last[1] > 0:
                    scales.add(_IMPACTS, float(last[1]))  # the trade moved the mid its way
        depth = bid_sz + ask_sz
        scales.set_level(_IMBALANCE, (bid_sz - ask_sz) / depth if depth > 0 else 0.0)
        scales.set_level(_SPREAD, ask_px - bid_px)
        scales.set_level(_DEPTH, 0.5 * depth)
        self.book = (bid_px, bid_sz, ask_px, ask_sz)
        self.mid = mid

    # -- prediction -----------------------------------------------------------------------------------

    def features(self, query: sigkit.FillQuery) -> list[float]:
        """The raw (unstandardised) features of a fill, signed by its aggressor side; see the module doc."""
        scales = self.scales
        scales.advance(query.ts_ns)
        n = scales.n_scales
        x = [0.0] * self.n_features
        flow_signs = [0] * n
        mom_signs = [0] * n
        book = self.book
        if book is None:
            eas_features(-query.side, scales.sums, scales.means, scales.levels, self.macro, False, 0.0, 0.0, 0.0,
                         0.0, self.mid, x, flow_signs, mom_signs)
        else:
            eas_features(-query.side, scales.sums, scales.means, scales.levels, self.macro, True, book[0], book[1],
                         book[2], book[3], self.mid, x, flow_signs, mom_signs)
        x[-2] = _agreement(mom_signs)
        x[-1] = _agreement(flow_signs)
        return x

    def predict(self, query: sigkit.FillQuery) -> sigkit.Prediction:
        x = self.standardiser.transform(self.features(query))
        offset = sigkit.logit(self.base_rate.rate)
        u = self.model.decision(x)  # the features' log-odds over the base rate
        self.pending.put(query, (x, offset, u))
        p = self.calibration(u, offset)
        return sigkit.Prediction(p, sigkit.evidence_confidence(self.model.n_updates, self.params.evidence),
                                 self.cost.expected(p))

    def record_outcome(self, outcome: sigkit.Outcome) -> None:
        entry = self.pending.pop(outcome.fill)
        y = 1.0 if outcome.was_adverse else 0.0
        if entry is not None:
            x, offset, u = entry
            self.calibration.update(u, y, offset)  # on the log-odds as issued, before the base fit moves
            self.model.update(x, y, offset)
        self.base_rate.update(outcome.was_adverse, outcome.fill.ts_ns)
        self.cost.update(outcome.was_adverse, outcome.realized_as_bps)

    # -- the batch path -------------------------------------------------------------------------------

    def on_batch(self, batch: sigkit.Batch) -> sigkit.BatchPredictions:
        """The per-event hooks over a whole piece, in one compiled kernel (:func:`_enhanced_as_kernel`)."""
        out = np.empty((3, batch.n_queries))
        self.slots.ensure(batch)
        scales, std, model, cal, rate, cost = (self.scales, self.standardiser, self.model, self.calibration,
                                               self.base_rate, self.cost)
        book = self.book
        last_trade = self.last_trade
        state = np.array([self.mid, cal.slope, cal.intercept, model.intercept, rate._adverse, rate._total,
                          cost._sum[0], cost._sum[1]])
        counts = np.array([0 if scales.last_ts is None else scales.last_ts, scales.last_ts is not None,
                           book is not None, last_trade is not None, 0 if last_trade is None else last_trade[0],
                           0 if last_trade is None else last_trade[1], std.n, model.n_updates, cal.n_updates,
                           rate.n, cost._n[0], cost._n[1], rate._last_ts is not None,
                           0 if rate._last_ts is None else rate._last_ts], dtype=np.int64)
        touch = np.array((0.0, 0.0, 0.0, 0.0) if book is None else book)
        sums, means, levels = np.array(scales.sums), np.array(scales.means), np.array(scales.levels)
        mean, var, weights = np.array(std.mean), np.array(std.var), np.array(model.weights)
        _enhanced_as_kernel(
            batch.op, batch.ref, batch.kind, batch.market, batch.ts, batch.column("side"), batch.column("size"),
            batch.column("bid_px"), batch.column("bid_sz"), batch.column("ask_px"), batch.column("ask_sz"),
            batch.q_ts, batch.q_side, batch.q_fill, batch.o_fill, batch.o_ts, batch.o_adverse, batch.o_realized_bps,
            batch.markets.code(self.target.venue, self.target.symbol), np.array(scales.taus), self.macro,
            self.params.impact_window_ns, std.floor, std.clip, model.learning_rate, model.l2,
            model.intercept_learning_rate, cal.learning_rate, cal.intercept_learning_rate, rate._decay_per_ns,
            rate._prior_adverse, rate._prior_total, self.params.evidence, sums, means, levels, touch, mean, var,
            weights, state, counts, self.slots.values, self.slots.owner, out)
        scales.sums, scales.means, scales.levels = sums.tolist(), means.tolist(), levels.tolist()
        scales.last_ts = int(counts[_C_SCALES_LAST]) if counts[_C_HAS_SCALES_LAST] else None
        self.book = tuple(touch.tolist()) if counts[_C_HAS_BOOK] else None
        self.mid = float(state[_S_MID])
        self.last_trade = (int(counts[_C_TRADE_TS]), int(counts[_C_TRADE_SIDE])) if counts[_C_HAS_TRADE] else None
        std.mean, std.var, std.n = mean.tolist(), var.tolist(), int(counts[_C_STD_N])
        model.weights, model.intercept, model.n_updates = (weights.tolist(), float(state[_S_INTERCEPT]),
                                                           int(counts[_C_MODEL_N]))
        cal.slope, cal.intercept, cal.n_updates = (float(state[_S_SLOPE]), float(state[_S_CAL_INTERCEPT]),
                                                   int(counts[_C_CAL_N]))
        rate._adverse, rate._total, rate.n = float(state[_S_ADVERSE]), float(state[_S_TOTAL]), int(counts[_C_RATE_N])
        rate._last_ts = int(counts[_C_RATE_LAST]) if counts[_C_HAS_RATE_LAST] else None
        cost._sum = [float(state[_S_COST_GOOD]), float(state[_S_COST_BAD])]
        cost._n = [int(counts[_C_COST_GOOD_N]), int(counts[_C_COST_BAD_N])]
        return sigkit.BatchPredictions(out[0], out[1], out[2])


def eas_features(a: int, sums, means, levels, macro: int, has_book: bool, bid_px: float, bid_sz: float,
                 ask_px: float, ask_sz: float, mid: float, x, flow_signs, mom_signs) -> None:
    """The raw features of a fill with aggressor side ``a`` into ``x``, all but the last two (the scale
    agreements of ``mom_signs`` and ``flow_signs``, which it fills: :func:`_agreement` of each), from the
    scales' sums, means and levels (:class:`EventTimeScales`) and the touch (``has_book``) and its mid."""
    signed = sums[_SIGNED_VOLUME]
    volume = sums[_VOLUME]
    ofi = sums[_OFI]
    ret = sums[_RETURN_BPS]
    trades = sums[_TRADES]
    impacts = sums[_IMPACTS]
    imbalance = means[_IMBALANCE]
    spread = means[_SPREAD]
    depth = means[_DEPTH]
    spread_now = levels[_SPREAD] if has_book else 0.0
    spread_avg = spread[macro] if has_book and spread[macro] > 0 else 1.0
    depth_avg = depth[macro] if has_book and depth[macro] > 0 else 1.0
    i = 0
    for k in range(len(flow_signs)):
        tfi = a * signed[k] / volume[k] if volume[k] > 1e-12 else 0.0
        mom = a * ret[k]
        x[i] = tfi
        x[i + 1] = a * ofi[k] / depth_avg
        x[i + 2] = mom
        x[i + 3] = a * imbalance[k] if has_book else 0.0
        x[i + 4] = (spread_now - spread[k]) / spread_avg if has_book else 0.0
        x[i + 5] = a * impacts[k] / trades[k] if trades[k] > 1e-12 else 0.0
        flow_signs[k] = 1 if tfi > 0 else -1 if tfi < 0 else 0
        mom_signs[k] = 1 if mom > 0 else -1 if mom < 0 else 0
        i += 6
    if has_book:
        depth_now = bid_sz + ask_sz
        micro = (bid_sz * ask_px + ask_sz * bid_px) / depth_now if depth_now > 0 else mid
        x[i] = a * levels[_IMBALANCE]
        x[i + 1] = a * (micro - mid) / mid * 1e4
        x[i + 2] = spread_now / mid * 1e4
    else:
        x[i] = 0.0
        x[i + 1] = 0.0
        x[i + 2] = 0.0


def _agreement(signs) -> float:
    """+1 if every sign is +1, -1 if every sign is -1, else 0."""
    first = signs[0]
    if first == 0:
        return 0.0
    for i in range(len(signs)):
        if signs[i] != first:
            return 0.0
    return float(first)


# -- the batch kernel ---------------------------------------------------------------------------------

# Compiled twins of the shared formulas above (the per-event classes call the plain functions).
_ofi_event = fast.twin(ofi_event)
_scales_decay = fast.twin(scales_decay)
_scales_add = fast.twin(scales_add)
_scales_set_level = fast.twin(scales_set_level)
_standardise = fast.twin(standardise)
_platt_decision = fast.twin(platt_decision)
_platt_step = fast.twin(platt_step)
_eas_features = fast.twin(eas_features)
_agreement_twin = fast.twin(_agreement)

# The kernel's packed state: floats (``state``) and integers (``counts``; ns timestamps and counters).
_S_MID, _S_SLOPE, _S_CAL_INTERCEPT, _S_INTERCEPT, _S_ADVERSE, _S_TOTAL, _S_COST_GOOD, _S_COST_BAD = range(8)
(_C_SCALES_LAST, _C_HAS_SCALES_LAST, _C_HAS_BOOK, _C_HAS_TRADE, _C_TRADE_TS, _C_TRADE_SIDE, _C_STD_N, _C_MODEL_N,
 _C_CAL_N, _C_RATE_N, _C_COST_GOOD_N, _C_COST_BAD_N, _C_HAS_RATE_LAST, _C_RATE_LAST) = range(14)


@fast.kernel
def _advance(taus, sums, means, levels, counts, ts, keep):
    """EventTimeScales.advance on the packed state."""
    if counts[_C_HAS_SCALES_LAST] == 0:
        counts[_C_HAS_SCALES_LAST] = 1
        counts[_C_SCALES_LAST] = ts
        return
    dt = ts - counts[_C_SCALES_LAST]
    if dt <= 0:
        return
    counts[_C_SCALES_LAST] = ts
    _scales_decay(taus, sums, means, levels, dt, keep)


@fast.kernel
def _enhanced_as_kernel(op, ref, kind, market, ts, side, size, bid_px, bid_sz, ask_px, ask_sz, q_ts, q_side, q_fill,
                        o_fill, o_ts, o_adverse, o_realized, target, taus, macro, impact_window_ns, std_floor, clip,
                        lr, l2, intercept_lr, cal_lr, cal_intercept_lr, rate_decay_per_ns, prior_adverse, prior_total,
                        evidence, sums, means, levels, touch, mean, var, weights, state, counts, slot_v, slot_owner,
                        out):
    """EnhancedAS over a batch: on_trade, on_book_update, predict and record_outcome at each step of the
    schedule, on the packed state (``_S_*`` in ``state``, ``_C_*`` in ``counts``; ``touch`` is the book)."""
    nf = weights.size
    n_scales = taus.size
    keep = np.empty(n_scales)
    raw = np.empty(nf)
    x = np.empty(nf)
    flow_signs = np.zeros(n_scales, dtype=np.int64)
    mom_signs = np.zeros(n_scales, dtype=np.int64)
    for i in range(op.size):
        step = op[i]
        if step == EVENT:
            r = ref[i]
            if market[r] != target:
                continue
            if kind[r] == TRADE:
                sz = size[r]
                if not sz > 0:
                    continue
                _advance(taus, sums, means, levels, counts, ts[r], keep)
                _scales_add(sums[_SIGNED_VOLUME], side[r] * sz)
                _scales_add(sums[_VOLUME], sz)
                _scales_add(sums[_TRADES], 1.0)
                counts[_C_HAS_TRADE] = 1
                counts[_C_TRADE_TS] = ts[r]
                counts[_C_TRADE_SIDE] = side[r]
            elif kind[r] == BOOK:
                bp, bs, ap, az = bid_px[r], bid_sz[r], ask_px[r], ask_sz[r]
                if not (bp > 0 and ap >= bp and bs >= 0 and az >= 0):
                    continue
                _advance(taus, sums, means, levels, counts, ts[r], keep)
                mid = 0.5 * (bp + ap)
                if counts[_C_HAS_BOOK]:
                    _scales_add(sums[_OFI], _ofi_event(touch[0], touch[1], touch[2], touch[3], bp, bs, ap, az))
                    prev_mid = state[_S_MID]
                    if mid != prev_mid:
                        _scales_add(sums[_RETURN_BPS], (mid - prev_mid) / prev_mid * 1e4)
                        last_side = counts[_C_TRADE_SIDE]
                        if counts[_C_HAS_TRADE] and ts[r] - counts[_C_TRADE_TS] <= impact_window_ns \
                                and (mid - prev_mid) * last_side > 0:
                            _scales_add(sums[_IMPACTS], float(last_side))
                depth = bs + az
                _scales_set_level(means, levels, _IMBALANCE, (bs - az) / depth if depth > 0 else 0.0)
                _scales_set_level(means, levels, _SPREAD, ap - bp)
                _scales_set_level(means, levels, _DEPTH, 0.5 * depth)
                touch[0] = bp
                touch[1] = bs
                touch[2] = ap
                touch[3] = az
                counts[_C_HAS_BOOK] = 1
                state[_S_MID] = mid
        elif step == QUERY:
            q = ref[i]
            _advance(taus, sums, means, levels, counts, q_ts[q], keep)
            a = -np.int64(q_side[q])
            _eas_features(a, sums, means, levels, macro, counts[_C_HAS_BOOK] != 0, touch[0], touch[1], touch[2],
                          touch[3], state[_S_MID], raw, flow_signs, mom_signs)
            raw[nf - 2] = _agreement_twin(mom_signs)
            raw[nf - 1] = _agreement_twin(flow_signs)
            counts[_C_STD_N] += 1
            _standardise(mean, var, counts[_C_STD_N], std_floor, clip, raw, x)
            offset = fast.logit(fast.base_rate_value(state[_S_ADVERSE], state[_S_TOTAL], prior_adverse, prior_total))
            u = fast.logistic_decision(weights, state[_S_INTERCEPT], x, 0.0)
            slot = fast.slot_put(slot_owner, q_fill[q])
            for j in range(nf):
                slot_v[slot, j] = x[j]
            slot_v[slot, nf] = offset
            slot_v[slot, nf + 1] = u
            p = fast.sigmoid(_platt_decision(state[_S_SLOPE], state[_S_CAL_INTERCEPT], u, offset))
            out[0, q] = p
            out[1, q] = fast.evidence_confidence(counts[_C_MODEL_N], evidence)
            out[2, q] = fast.expected_cost(p, state[_S_COST_GOOD], counts[_C_COST_GOOD_N], state[_S_COST_BAD],
                                           counts[_C_COST_BAD_N])
        elif step == OUTCOME:
            o = ref[i]
            adverse = o_adverse[o] == 1.0
            y = 1.0 if adverse else 0.0
            slot = fast.slot_take(slot_owner, o_fill[o])
            if slot >= 0:
                for j in range(nf):
                    x[j] = slot_v[slot, j]
                offset = slot_v[slot, nf]
                u = slot_v[slot, nf + 1]
                # OnlinePlatt.update, on the log-odds as issued, before the base fit moves
                error = fast.sigmoid(_platt_decision(state[_S_SLOPE], state[_S_CAL_INTERCEPT], u, offset)) - y
                state[_S_SLOPE], state[_S_CAL_INTERCEPT] = _platt_step(state[_S_SLOPE], state[_S_CAL_INTERCEPT], u,
                                                                       error, cal_lr, cal_intercept_lr)
                counts[_C_CAL_N] += 1
                # OnlineLogistic.update
                error = fast.sigmoid(fast.logistic_decision(weights, state[_S_INTERCEPT], x, offset)) - y
                fast.logistic_step(weights, x, error, lr, l2)
                state[_S_INTERCEPT] -= intercept_lr * error
                counts[_C_MODEL_N] += 1
            # RunningBaseRate.update
            t = o_ts[o]
            if rate_decay_per_ns != 0.0 and counts[_C_HAS_RATE_LAST] and t > counts[_C_RATE_LAST]:
                decay = math.exp(-rate_decay_per_ns * (t - counts[_C_RATE_LAST]))
                state[_S_ADVERSE] *= decay
                state[_S_TOTAL] *= decay
            counts[_C_HAS_RATE_LAST] = 1
            counts[_C_RATE_LAST] = t
            state[_S_ADVERSE] += y
            state[_S_TOTAL] += 1.0
            counts[_C_RATE_N] += 1
            # ConditionalCost.update
            realized = o_realized[o]
            if realized == realized:
                if adverse:
                    state[_S_COST_BAD] += realized
                    counts[_C_COST_BAD_N] += 1
                else:
                    state[_S_COST_GOOD] += realized
                    counts[_C_COST_GOOD_N] += 1


@sigkit.hookimpl
def register_models(register):
    register(sigkit.ModelSpec("enhanced_as", EnhancedAS, params=EnhancedASParams,
                              description="multi-timescale public microstructure (trade flow, price-moving flow, "
                                          "OFI, book, momentum), online logistic fit, online Platt calibration"))
