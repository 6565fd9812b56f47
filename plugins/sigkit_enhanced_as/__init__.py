"""EnhancedAS: public-microstructure features of the target market at several timescales, fed to an online
logistic model with online Platt calibration, to predict whether a fill is adverse.

Everything is computed from the target market's own trades and top of book; events of other markets are
ignored.  The model reads them through the target's **pyramid** (:class:`sigkit.Pyramid`,
:mod:`sigkit.features`), a shared feature it declares when built: another model of the run that declares the
same pyramid (an A/B variant with other learning rates, say) reads the same one, computed once per event.

**Event-time averages** (the pyramid's).  Events arrive at irregular times.  For each timescale ``tau_k`` (default
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

**Batch path.**  ``on_batch`` reads the pyramid at every fill of a piece (``batch.feature``) and runs
the rest of the hooks in one compiled kernel (numba): the formulas (:func:`eas_features`,
:func:`standardise`, :func:`platt_decision`, :func:`platt_step`, and the pyramid's own) are plain functions
that the per-event methods call and the kernel calls compiled (:func:`sigkit.fast.twin`), so both paths give
the same predictions, bit for bit, and leave the same learned state.
"""

from __future__ import annotations

import math

import attrs
import numpy as np

import sigkit
from sigkit import fast
from sigkit.batch import OUTCOME, QUERY
from sigkit.features import (  # noqa: F401  (the pyramid's formulas, once defined here: still importable from here)
    LEVELS, SUMS, EventTimeScales, Pyramid, ofi_event, scales_add, scales_decay, scales_set_level,
)

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


# The pyramid's sums and levels this model reads, by their place in it.
_SIGNED_VOLUME, _VOLUME, _OFI, _RETURN_BPS, _TRADES, _IMPACTS = (
    SUMS.index(name) for name in ("signed_volume", "volume", "ofi", "return_bps", "trades", "impacts"))
_IMBALANCE, _SPREAD, _DEPTH = (LEVELS.index(name) for name in ("imbalance", "spread", "depth"))


class EnhancedAS(sigkit.LearnedState):
    """Multi-timescale public microstructure of the target market, online logistic fit, online Platt map."""

    STATE_VERSION = 2  # 2: the scales, touch and latest trade live in the shared pyramid

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
        # The target's pyramid, declared: shared with every model of the run that reads the same one.
        self.pyramid = context.feature(Pyramid(context.target, params.scales_ns, params.impact_window_ns))
        self.macro = max(range(len(params.scales_ns)), key=lambda k: params.scales_ns[k])
        self.n_features = 6 * len(params.scales_ns) + 5
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
        self.pyramid.on_trade(trade)  # applied once, whichever reader forwards it first

    def on_book_update(self, book: sigkit.BookUpdate) -> None:
        self.pyramid.on_book_update(book)

    # -- prediction -----------------------------------------------------------------------------------

    def features(self, query: sigkit.FillQuery) -> list[float]:
        """The raw (unstandardised) features of a fill, signed by its aggressor side; see the module doc."""
        pyramid = self.pyramid
        pyramid.advance(query.ts_ns)
        n = len(self.params.scales_ns)
        x = [0.0] * self.n_features
        flow_signs = [0] * n
        mom_signs = [0] * n
        bid_px, bid_sz, ask_px, ask_sz = pyramid.touch.tolist()
        eas_features(-query.side, pyramid.sums.tolist(), pyramid.means.tolist(), pyramid.levels.tolist(), self.macro,
                     pyramid.has_book, bid_px, bid_sz, ask_px, ask_sz, pyramid.mid, x, flow_signs, mom_signs)
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
        """The per-event hooks over a whole piece: the pyramid's rows at the fills (``batch.feature``, computed
        once for every reader), then one compiled kernel (:func:`_enhanced_as_kernel`) for the rest."""
        rows = batch.feature(self.pyramid)
        out = np.empty((3, batch.n_queries))
        self.slots.ensure(batch)
        std, model, cal, rate, cost = self.standardiser, self.model, self.calibration, self.base_rate, self.cost
        state = np.array([cal.slope, cal.intercept, model.intercept, rate._adverse, rate._total, cost._sum[0],
                          cost._sum[1]])
        counts = np.array([std.n, model.n_updates, cal.n_updates, rate.n, cost._n[0], cost._n[1],
                           rate._last_ts is not None, 0 if rate._last_ts is None else rate._last_ts], dtype=np.int64)
        mean, var, weights = np.array(std.mean), np.array(std.var), np.array(model.weights)
        _enhanced_as_kernel(
            batch.op, batch.ref, batch.q_side, batch.q_fill, batch.o_fill, batch.o_ts, batch.o_adverse,
            batch.o_realized_bps, rows, len(self.params.scales_ns), self.macro, std.floor, std.clip,
            model.learning_rate, model.l2, model.intercept_learning_rate, cal.learning_rate,
            cal.intercept_learning_rate, rate._decay_per_ns, rate._prior_adverse, rate._prior_total,
            self.params.evidence, mean, var, weights, state, counts, self.slots.values, self.slots.owner, out)
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
    pyramid's sums, means and levels (:class:`sigkit.PyramidState`) and the touch (``has_book``) and its mid."""
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
_standardise = fast.twin(standardise)
_platt_decision = fast.twin(platt_decision)
_platt_step = fast.twin(platt_step)
_eas_features = fast.twin(eas_features)
_agreement_twin = fast.twin(_agreement)

# The kernel's packed state: floats (``state``) and integers (``counts``; ns timestamps and counters).
_S_SLOPE, _S_CAL_INTERCEPT, _S_INTERCEPT, _S_ADVERSE, _S_TOTAL, _S_COST_GOOD, _S_COST_BAD = range(7)
(_C_STD_N, _C_MODEL_N, _C_CAL_N, _C_RATE_N, _C_COST_GOOD_N, _C_COST_BAD_N, _C_HAS_RATE_LAST, _C_RATE_LAST) = range(8)


@fast.kernel
def _enhanced_as_kernel(op, ref, q_side, q_fill, o_fill, o_ts, o_adverse, o_realized, rows, n_scales, macro, std_floor,
                        clip, lr, l2, intercept_lr, cal_lr, cal_intercept_lr, rate_decay_per_ns, prior_adverse,
                        prior_total, evidence, mean, var, weights, state, counts, slot_v, slot_owner, out):
    """EnhancedAS over a batch: predict and record_outcome at each step of the schedule, on the packed state
    (``_S_*`` in ``state``, ``_C_*`` in ``counts``), reading the target's pyramid at each query from ``rows``
    (:mod:`sigkit.features`: sums, means, levels, touch, mid, has_book)."""
    nf = weights.size
    n = n_scales
    raw = np.empty(nf)
    x = np.empty(nf)
    sums = np.empty((6, n))
    means = np.empty((3, n))
    levels = np.empty(3)
    flow_signs = np.zeros(n, dtype=np.int64)
    mom_signs = np.zeros(n, dtype=np.int64)
    for i in range(op.size):
        step = op[i]
        if step == QUERY:
            q = ref[i]
            row = rows[q]
            c = 0
            for j in range(6):
                for k in range(n):
                    sums[j, k] = row[c]
                    c += 1
            for j in range(3):
                for k in range(n):
                    means[j, k] = row[c]
                    c += 1
            for j in range(3):
                levels[j] = row[c + j]
            a = -np.int64(q_side[q])
            _eas_features(a, sums, means, levels, macro, row[c + 8] != 0.0, row[c + 3], row[c + 4], row[c + 5],
                          row[c + 6], row[c + 7], raw, flow_signs, mom_signs)
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
