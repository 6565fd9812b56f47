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
"""

from __future__ import annotations

import math

import attrs

import sigkit

__all__ = ["EnhancedAS", "EnhancedASParams", "EventTimeScales", "OnlinePlatt", "OnlineStandardiser",
           "ofi_event"]


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
        keep = [math.exp(-dt / tau) for tau in self.taus]
        for row in self.sums:
            for k in range(self.n_scales):
                row[k] *= keep[k]
        for j, row in enumerate(self.means):
            v = self.levels[j]
            if v == v:
                for k in range(self.n_scales):
                    row[k] = v + keep[k] * (row[k] - v)

    def add(self, j: int, x: float) -> None:
        row = self.sums[j]
        for k in range(self.n_scales):
            row[k] += x

    def set_level(self, j: int, v: float) -> None:
        if self.levels[j] != self.levels[j]:  # first value: the average starts there
            row = self.means[j]
            for k in range(self.n_scales):
                row[k] = v
        self.levels[j] = v


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
        alpha = 1.0 / self.n
        if alpha < self.floor:
            alpha = self.floor
        keep = 1.0 - alpha
        mean, var, clip, sqrt = self.mean, self.var, self.clip, math.sqrt
        out = [0.0] * len(x)
        for i, v in enumerate(x):
            m = mean[i]
            s2 = var[i]
            d = v - m
            # A variation below RELATIVE_SD_FLOOR of the feature's own level (e.g. a spread in bps that only
            # moves because the price level drifts) is not information: scale it away, do not blow it up.
            sd = sqrt(s2)
            floor = RELATIVE_SD_FLOOR * (m if m > 0.0 else -m)
            if sd < floor:
                sd = floor
            if sd > 1e-12:
                z = d / sd
                out[i] = clip if z > clip else -clip if z < -clip else z
            mean[i] = m + alpha * d
            var[i] = keep * (s2 + alpha * d * d)
        return out


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
        return sigkit.sigmoid(offset + self.slope * u + self.intercept)

    def update(self, u: float, y: float, offset: float = 0.0) -> None:
        error = self(u, offset) - y
        self.slope = max(0.0, self.slope - self.learning_rate * error * u)
        self.intercept -= self.intercept_learning_rate * error
        self.n_updates += 1


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
        a = -query.side
        scales = self.scales
        scales.advance(query.ts_ns)
        signed, volume, ofi, ret, trades, impacts = (
            scales.sums[j] for j in (_SIGNED_VOLUME, _VOLUME, _OFI, _RETURN_BPS, _TRADES, _IMPACTS))
        imbalance, spread, depth = (scales.means[j] for j in (_IMBALANCE, _SPREAD, _DEPTH))
        has_book = self.book is not None
        spread_now = scales.levels[_SPREAD] if has_book else 0.0
        spread_avg = spread[self.macro] if has_book and spread[self.macro] > 0 else 1.0
        depth_avg = depth[self.macro] if has_book and depth[self.macro] > 0 else 1.0
        x: list[float] = []
        flow_signs = []
        mom_signs = []
        for k in range(scales.n_scales):
            tfi = a * signed[k] / volume[k] if volume[k] > 1e-12 else 0.0
            mom = a * ret[k]
            x.append(tfi)
            x.append(a * ofi[k] / depth_avg)
            x.append(mom)
            x.append(a * imbalance[k] if has_book else 0.0)
            x.append((spread_now - spread[k]) / spread_avg if has_book else 0.0)
            x.append(a * impacts[k] / trades[k] if trades[k] > 1e-12 else 0.0)
            flow_signs.append((tfi > 0) - (tfi < 0))
            mom_signs.append((mom > 0) - (mom < 0))
        if has_book:
            bid_px, bid_sz, ask_px, ask_sz = self.book
            depth_now = bid_sz + ask_sz
            micro = (bid_sz * ask_px + ask_sz * bid_px) / depth_now if depth_now > 0 else self.mid
            x.append(a * scales.levels[_IMBALANCE])
            x.append(a * (micro - self.mid) / self.mid * 1e4)
            x.append(spread_now / self.mid * 1e4)
        else:
            x.extend((0.0, 0.0, 0.0))
        x.append(_agreement(mom_signs))
        x.append(_agreement(flow_signs))
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


def _agreement(signs: list[int]) -> float:
    """+1 if every sign is +1, -1 if every sign is -1, else 0."""
    first = signs[0]
    if first == 0:
        return 0.0
    for s in signs:
        if s != first:
            return 0.0
    return float(first)


@sigkit.hookimpl
def register_models(register):
    register(sigkit.ModelSpec("enhanced_as", EnhancedAS, params=EnhancedASParams,
                              description="multi-timescale public microstructure (trade flow, price-moving flow, "
                                          "OFI, book, momentum), online logistic fit, online Platt calibration"))
