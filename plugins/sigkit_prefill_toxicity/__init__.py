"""PreFillToxicity: how toxic the target's trade flow was just before our fill, learned online.

At a fill with aggressor side ``a = -fill side`` (the side that traded against our quote), the model reads
four statistics of the target market's public trades and mid, all from events strictly before the fill
(the fill's own trade is delivered after ``predict``; see :mod:`sigkit_prefill_toxicity.features`):

* **VPIN** from exact aggressor-signed volume buckets (Easley, Lopez de Prado & O'Hara 2012; crypto feeds
  carry the aggressor side, so no bulk classification, as Andersen & Bondarenko 2014 advise; METHODS.md
  5.1): ``VPIN = mean_tau |B_tau - S_tau| / V`` over the last ``n_buckets`` buckets of ``V`` base units,
  and the signed bucket imbalance ``OI = mean_tau (B_tau - S_tau) / V``.
* **Trade-sign surprise** (METHODS.md 5.5): ``u_i = eps_i - rho * eps_{i-1}`` with ``rho`` an EW lag-1
  sign autocorrelation, averaged with time decay: flow one-sided beyond what sign persistence explains.
* **Kyle's lambda** (Kyle 1985; METHODS.md 5.4): EW weighted least squares of short-interval mid changes
  (bps) on interval signed flow, ``dM = alpha + lambda Q``, and its fitted impact direction
  ``alpha + lambda Qbar``: the move the fit predicts at the flow rate ``Qbar`` of the last moments.
* **Trade intensity**: ``log`` of the short- over the long-timescale EW trade rate.

Signed statistics are multiplied by ``a``, so "toxic flow in the aggressor's direction" is positive;
unsigned ones (VPIN, lambda, intensity) enter as they are, and VPIN also through its interaction with the
signed imbalance.  The feature vector

    x = [a OI, VPIN, VPIN * a OI, a u, lambda, a (alpha + lambda Qbar), intensity]

is standardised online (EW mean and variance over earlier fills, clipped at +-``clip``) and fitted by an
online logistic regression (METHODS.md 6.1) whose offset is the logit of the causal running base rate
``r``, as in the ``flow`` baseline.  Its log-odds ``s = w.x`` then enter the prediction through a slope
``k`` learned online from the same outcomes (an online Platt step, METHODS.md 6.3, with the slope started
at 0 rather than 1):

    p = sigmoid(logit(r) + k * s)

Seven SGD weights fitted on overlapping one-horizon outcomes are noisy, and on flow that carries no
information that noise alone costs Brier skill; ``k`` is fitted on the scores ``s`` *before* their fill's
outcome was learned, so it grows only as far as the fit's out-of-sample record earns and stays near 0
(the base rate) when the flow is uninformative.  Both learn from every delivered outcome.
"""

from __future__ import annotations

import math

import attrs
import numpy as np

import sigkit
from sigkit_prefill_toxicity import kernel as _k
from sigkit_prefill_toxicity.features import (
    FLOW_MEASURES,
    NO_TS,
    KyleLambda,
    SignSurprise,
    TradeIntensity,
    VolumeBuckets,
    scaler_transform,
    scaler_update,
)

# on_batch unpacks the kernel's state arrays in their layout's order.
assert (_k.F_BUY, _k.F_SELL, _k.F_SUM_SIGNED, _k.F_SUM_ABS, _k.F_RHO, _k.F_RHO_WEIGHT, _k.F_RHO_SUM, _k.F_S_SUM,
        _k.F_S_WEIGHT, _k.F_FLOW, _k.F_MID, _k.F_MID_OPEN, _k.F_SW, _k.F_SQ, _k.F_SM, _k.F_SQQ, _k.F_SQM,
        _k.F_FLOW_SUM, _k.F_FLOW_WEIGHT, _k.F_SHORT, _k.F_LONG, _k.F_INTERCEPT, _k.F_TRUST_INTERCEPT, _k.F_ADVERSE,
        _k.F_TOTAL, _k.F_COST_GOOD, _k.F_COST_BAD) == tuple(range(_k.N_FS))
assert (_k.I_COUNT, _k.I_HEAD, _k.I_PREVIOUS, _k.I_SIGN_TS, _k.I_END, _k.I_INT_TS, _k.I_SCALER_N, _k.I_MODEL_N,
        _k.I_TRUST_N, _k.I_RATE_N, _k.I_RATE_TS, _k.I_COST_GOOD, _k.I_COST_BAD) == tuple(range(_k.N_IST))

#: Every feature the model can use, in the order of the vector it fits.
FEATURES = ("imbalance", "vpin", "vpin_x_imbalance", "sign_surprise", "kyle_lambda", "kyle_impact", "intensity")


@attrs.frozen
class PreFillToxicityParams:
    bucket_volume: float = sigkit.param(
        2.0, doc="volume of one VPIN bucket (about 3 s of flow in the simulated market)", unit="base units")
    n_buckets: int = sigkit.param(5, doc="completed buckets averaged by VPIN and the signed imbalance",
                                  unit="buckets")
    surprise_halflife_ns: int = sigkit.duration("3s", doc="half-life of the time-decayed mean sign surprise")
    rho_halflife_trades: float = sigkit.param(
        500.0, doc="half-life of the EW lag-1 sign autocorrelation that predicts the next sign", unit="trades")
    kyle_interval_ns: int = sigkit.duration("100ms", doc="length of the intervals Kyle's regression is fitted on")
    kyle_halflife_ns: int = sigkit.duration("3s", doc="half-life of the interval weights of Kyle's regression")
    kyle_flow_halflife_ns: int = sigkit.duration(
        "1s", doc="half-life of the recent flow rate that Kyle's lambda turns into a fitted impact")
    kyle_flow: str = sigkit.param("sqrt_volume", doc="signed flow per trade in Kyle's regression: side x size "
                                  "(volume), side x sqrt(size) (sqrt_volume, Hasbrouck) or the side alone (count)",
                                  choices=("volume", "sqrt_volume", "count"))
    intensity_short_ns: int = sigkit.duration("2s", doc="half-life of the short-timescale trade rate")
    intensity_long_ns: int = sigkit.duration("60s", doc="half-life of the long-timescale (baseline) trade rate")
    features: tuple[str, ...] = sigkit.param(FEATURES, doc="features the logistic fit uses (any subset)",
                                             choices=FEATURES)
    learning_rate: float = sigkit.param(0.01, doc="SGD step of the online logistic fit (standardised features)")
    l2: float = sigkit.param(0.0, doc="L2 penalty of the online logistic fit")
    scale_memory: float = sigkit.param(
        5000.0, doc="memory of the EW mean and variance that standardise the features", unit="fills")
    clip: float = sigkit.param(5.0, doc="standardised features are clipped to +-clip", unit="standard deviations")
    trust_learning_rate: float = sigkit.param(
        0.01, doc="SGD step of the online slope that scales the fitted feature log-odds (starts at 0)")
    evidence: float = sigkit.param(200.0, doc="outcomes after which confidence reaches 0.5", unit="outcomes")


def _check(params: PreFillToxicityParams) -> None:
    """Refuse values that have no meaning, naming the recipe key."""
    problems = []
    for key in ("bucket_volume", "rho_halflife_trades", "learning_rate", "trust_learning_rate", "clip"):
        if not getattr(params, key) > 0:
            problems.append(f"{key} must be positive, got {getattr(params, key)}")
    for field in ("surprise_halflife_ns", "kyle_interval_ns", "kyle_halflife_ns", "kyle_flow_halflife_ns",
                  "intensity_short_ns", "intensity_long_ns"):
        if not getattr(params, field) > 0:
            problems.append(f"{field[:-3]} must be a positive duration")
    if params.n_buckets < 1:
        problems.append(f"n_buckets must be at least 1, got {params.n_buckets}")
    if params.scale_memory < 1:
        problems.append(f"scale_memory must be at least 1 fill, got {params.scale_memory}")
    if params.l2 < 0:
        problems.append(f"l2 must not be negative, got {params.l2}")
    if not params.features or len(set(params.features)) != len(params.features):
        problems.append(f"features must name each of {', '.join(FEATURES)} at most once, and at least one")
    if problems:
        raise sigkit.ModelError("prefill_toxicity: " + "; ".join(problems))


class FeatureScaler(sigkit.LearnedState):
    """Online standardisation: EW mean and variance with weight ``max(1/n, 1/memory)`` (a plain running
    mean and variance for the first ``memory`` samples, exponentially forgetting after)."""

    def __init__(self, n_features: int, memory: float, clip: float):
        self.mean = [0.0] * n_features
        self.var = [0.0] * n_features
        self.n = 0
        self.memory = memory
        self.clip = clip

    def update(self, x: list[float]) -> None:
        self.n += 1
        scaler_update(self.mean, self.var, self.n, self.memory, x)

    def transform(self, x: list[float]) -> list[float]:
        out = [0.0] * len(x)
        scaler_transform(self.mean, self.var, self.n, self.clip, x, out)
        return out


class PreFillToxicity(sigkit.LearnedState):
    """VPIN, sign surprise, Kyle's lambda and trade intensity of the pre-fill flow, fitted online."""

    def __init__(self, params: PreFillToxicityParams, context: sigkit.RunContext):
        _check(params)
        self.params = params
        self.target = context.target
        self.use = [FEATURES.index(f) for f in params.features]
        self.buckets = VolumeBuckets(params.bucket_volume, params.n_buckets)
        self.signs = SignSurprise(params.surprise_halflife_ns, params.rho_halflife_trades)
        self.kyle = KyleLambda(params.kyle_interval_ns, params.kyle_halflife_ns, params.kyle_flow_halflife_ns,
                               params.kyle_flow)
        self.intensity = TradeIntensity(params.intensity_short_ns, params.intensity_long_ns)
        self.scaler = FeatureScaler(len(self.use), params.scale_memory, params.clip)
        self.model = sigkit.OnlineLogistic(len(self.use), learning_rate=params.learning_rate, l2=params.l2,
                                           intercept_learning_rate=0.0)
        self.base_rate = sigkit.RunningBaseRate()
        self.cost = sigkit.ConditionalCost()
        # The slope on the fitted log-odds, learned from the fit's own out-of-sample scores: see the module doc.
        self.trust = sigkit.OnlineLogistic(1, learning_rate=params.trust_learning_rate, intercept_learning_rate=0.0)
        self.pending = sigkit.PendingFills()  # fill -> (features, score, offset)
        # The batch path's memory of each fill: standardised features, score, offset.
        self.slots = sigkit.FillSlots(len(self.use) + 2)

    def on_trade(self, trade: sigkit.Trade) -> None:
        if trade.venue != self.target.venue or trade.symbol != self.target.symbol:
            return
        self.intensity.add(trade.ts_ns)
        if trade.side == 1 or trade.side == -1:  # a print without an aggressor side says nothing about signs
            self.buckets.add(trade.side, trade.size)
            self.signs.add(trade.ts_ns, trade.side)
            self.kyle.add_trade(trade.ts_ns, trade.side, trade.size)

    def on_book_update(self, book: sigkit.BookUpdate) -> None:
        if book.venue != self.target.venue or book.symbol != self.target.symbol:
            return
        if book.bid_px == book.bid_px and book.ask_px == book.ask_px:
            self.kyle.set_mid(book.ts_ns, 0.5 * (book.bid_px + book.ask_px))

    def raw_features(self, query: sigkit.FillQuery) -> list[float]:
        """The full feature vector (in :data:`FEATURES` order) for a fill, from events before it."""
        a = -query.side
        self.kyle.advance(query.ts_ns)  # intervals that ended by now are complete: nothing earlier is missing
        imbalance = a * self.buckets.imbalance
        vpin = self.buckets.vpin
        return [imbalance, vpin, vpin * imbalance, a * self.signs.value(), self.kyle.coefficients()[1],
                a * self.kyle.impact(), self.intensity.log_ratio(query.ts_ns)]

    def features(self, query: sigkit.FillQuery) -> list[float]:
        full = self.raw_features(query)
        return [full[i] for i in self.use]

    def predict(self, query: sigkit.FillQuery) -> sigkit.Prediction:
        raw = self.features(query)
        x = self.scaler.transform(raw)
        self.scaler.update(raw)
        offset = sigkit.logit(self.base_rate.rate)
        score = self.model.decision(x)  # the features' log-odds, as the inner fit sees them
        self.pending.put(query, (x, score, offset))
        p = self.trust.predict((score,), offset)
        return sigkit.Prediction(p, sigkit.evidence_confidence(self.model.n_updates, self.params.evidence),
                                 self.cost.expected(p))

    def record_outcome(self, outcome: sigkit.Outcome) -> None:
        entry = self.pending.pop(outcome.fill)
        if entry is not None:
            x, score, offset = entry
            y = 1.0 if outcome.was_adverse else 0.0
            self.trust.update((score,), y, offset)
            self.model.update(x, y, offset)
        self.base_rate.update(outcome.was_adverse, outcome.fill.ts_ns)
        self.cost.update(outcome.was_adverse, outcome.realized_as_bps)

    def on_batch(self, batch: sigkit.Batch) -> sigkit.BatchPredictions:
        """The per-event hooks over a whole piece, compiled (:mod:`sigkit_prefill_toxicity.kernel`): the state
        is packed into arrays, walked through the schedule and unpacked back into the same attributes."""
        out = np.empty((3, batch.n_queries))
        self.slots.ensure(batch)
        b, s, ky, ti, sc = self.buckets, self.signs, self.kyle, self.intensity, self.scaler
        model, trust, rate, cost = self.model, self.trust, self.base_rate, self.cost
        fs = np.array([b.buy, b.sell, b._sum_signed, b._sum_abs, s.rho, s._rho_weight, s._rho_sum, s._sum, s._weight,
                       ky.flow, ky.mid, ky.mid_open, ky.sw, ky.sq, ky.sm, ky.sqq, ky.sqm, ky.flow_sum, ky.flow_weight,
                       ti.short, ti.long, model.intercept, trust.intercept, rate._adverse, rate._total, *cost._sum],
                      dtype=np.float64)
        ist = np.array([len(b.completed), 0, s.previous, _ts(s._ts), _ts(ky.end_ns), _ts(ti._ts), sc.n,
                        model.n_updates, trust.n_updates, rate.n, _ts(rate._last_ts), *cost._n], dtype=np.int64)
        ring = np.zeros(b.n_buckets)
        ring[:len(b.completed)] = b.completed
        fp = np.array([b.bucket_volume, s.decay_per_ns, s.rho_keep, ky.keep, ky.flow_keep, ti.short_decay,
                       ti.long_decay, ti.floor_per_s, sc.memory, sc.clip, model.learning_rate, model.l2,
                       model.intercept_learning_rate, trust.learning_rate, trust.l2, trust.intercept_learning_rate,
                       self.params.evidence, rate._prior_adverse, rate._prior_total], dtype=np.float64)
        mean, var = np.array(sc.mean, dtype=np.float64), np.array(sc.var, dtype=np.float64)
        weights, trust_w = np.array(model.weights, dtype=np.float64), np.array(trust.weights, dtype=np.float64)
        _k.prefill_kernel(batch.op, batch.ref, batch.kind, batch.market, batch.ts, batch.column("side"),
                          batch.column("size"), batch.column("bid_px"), batch.column("ask_px"), batch.q_ts,
                          batch.q_side, batch.q_fill, batch.o_fill, batch.o_ts, batch.o_adverse, batch.o_realized_bps,
                          batch.markets.code(self.target.venue, self.target.symbol), ky.interval_ns,
                          FLOW_MEASURES.index(ky.flow_measure), fp, fs, ist, ring, np.array(self.use, dtype=np.int64),
                          mean, var, weights, trust_w, self.slots.values, self.slots.owner, out)
        # Unpacked in the layout's order (kernel.F_* and kernel.I_*, checked at import, top of the module).
        (b.buy, b.sell, b._sum_signed, b._sum_abs, s.rho, s._rho_weight, s._rho_sum, s._sum, s._weight,
         ky.flow, ky.mid, ky.mid_open, ky.sw, ky.sq, ky.sm, ky.sqq, ky.sqm, ky.flow_sum, ky.flow_weight,
         ti.short, ti.long, model.intercept, trust.intercept, rate._adverse, rate._total, good, bad) = fs.tolist()
        cost._sum = [good, bad]
        (count, head, s.previous, sign_ts, end_ns, int_ts, sc.n, model.n_updates, trust.n_updates, rate.n, rate_ts,
         n_good, n_bad) = ist.tolist()
        cost._n = [n_good, n_bad]
        s._ts, ky.end_ns, ti._ts, rate._last_ts = _none(sign_ts), _none(end_ns), _none(int_ts), _none(rate_ts)
        held = ring.tolist()  # the ring from its oldest bucket, then its first count
        b.completed = (held[head:] + held[:head])[:count]
        sc.mean, sc.var = mean.tolist(), var.tolist()
        model.weights, trust.weights = weights.tolist(), trust_w.tolist()
        return sigkit.BatchPredictions(out[0], out[1], out[2])

    def describe(self) -> dict:
        names = [FEATURES[i] for i in self.use]
        return {
            "weights": dict(zip(names, self.model.weights)),
            "trust": self.trust.weights[0],
            "feature_mean": dict(zip(names, self.scaler.mean)),
            "feature_sd": dict(zip(names, (math.sqrt(v) for v in self.scaler.var))),
            "vpin": self.buckets.vpin,
            "sign_rho": self.signs.rho,
            "kyle_lambda": self.kyle.coefficients()[1],
            "outcomes": self.model.n_updates,
        }


def _ts(ts) -> int:
    return NO_TS if ts is None else int(ts)


def _none(ts) -> int | None:
    return None if ts == NO_TS else int(ts)


@sigkit.hookimpl
def register_models(register):
    register(sigkit.ModelSpec(
        "prefill_toxicity", PreFillToxicity, params=PreFillToxicityParams,
        description="pre-fill flow toxicity: exact-sign VPIN, sign surprise, Kyle's lambda, intensity; online logistic"))
