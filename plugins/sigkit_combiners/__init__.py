"""The built-in ensemble combiners: mean, weighted, logit (log-odds pool), stacking and hedge.

A combiner sees the member predictions for each fill (in the recipe's member order) and, through
``record_outcome``, the outcome of each fill with the member predictions issued for it, so the learning
combiners learn only from what was known before each outcome.  Definitions: METHODS.md §6.4.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import numpy as np

import sigkit

from . import kernel
from .kernel import hedge_step, linear_pool, mixture_pool, mixture_update, mixture_weights, pooled_cost, scaled_sum


def _mean_confidence(predictions: Sequence[sigkit.Prediction], weights: Sequence[float]) -> float:
    return linear_pool(weights, [p.confidence for p in predictions])


def _pooled_cost(predictions: Sequence[sigkit.Prediction], weights: Sequence[float]) -> float:
    return pooled_cost(weights, [p.expected_cost_bps for p in predictions])


def _member_arrays(members: sigkit.BatchPredictions) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The member predictions as (n_queries, n_members) arrays, one row per query."""
    return tuple(np.ascontiguousarray(np.asarray(a, dtype=np.float64).T)
                 for a in (members.p, members.confidence, members.cost_bps))


def _pool_batch(weights: Sequence[float], members: sigkit.BatchPredictions, logodds: bool = False,
                scale: float = 1.0) -> sigkit.BatchPredictions:
    mp, mc, mk = _member_arrays(members)
    out = np.empty((3, mp.shape[0]))
    kernel.pool_kernel(logodds, np.array(weights, dtype=np.float64), scale, mp, mc, mk, out)
    return sigkit.BatchPredictions(out[0], out[1], out[2])


class Mean(sigkit.LearnedState):
    """The plain average of the member probabilities (linear pool with equal weights)."""

    def __init__(self, params: None, context: sigkit.RunContext):
        k = len(context.members)
        self.weights = [1.0 / k] * k

    def combine(self, query, predictions):
        p = linear_pool(self.weights, [x.p_adverse for x in predictions])
        return sigkit.Prediction(p, _mean_confidence(predictions, self.weights), _pooled_cost(predictions, self.weights))

    def on_batch(self, batch, members):
        return _pool_batch(self.weights, members)


@attrs.frozen
class WeightedParams:
    weights: tuple[float, ...] = sigkit.param(doc="one non-negative weight per member, in member order")


class Weighted(Mean):
    """A linear pool with fixed weights (normalised to sum to one)."""

    def __init__(self, params: WeightedParams, context: sigkit.RunContext):
        if len(params.weights) != len(context.members):
            raise sigkit.ModelError(f"weighted combiner: {len(params.weights)} weights for "
                                    f"{len(context.members)} members ({', '.join(context.members)})")
        total = sum(params.weights)
        if total <= 0 or min(params.weights) < 0:
            raise sigkit.ModelError("weighted combiner: weights must be non-negative and not all zero")
        self.weights = [w / total for w in params.weights]


@attrs.frozen
class LogitParams:
    extremize: float = sigkit.param(1.0, doc="multiplies the pooled log-odds; > 1 sharpens (Satopaa et al. 2014)")


class Logit(sigkit.LearnedState):
    """Log-odds pool: ``logit p = extremize * mean_k logit p_k``."""

    def __init__(self, params: LogitParams, context: sigkit.RunContext):
        self.scale = params.extremize / len(context.members)
        self.weights = [1.0 / len(context.members)] * len(context.members)

    def combine(self, query, predictions):
        z = scaled_sum(self.scale, [sigkit.logit(x.p_adverse) for x in predictions])
        return sigkit.Prediction(sigkit.sigmoid(z), _mean_confidence(predictions, self.weights),
                                 _pooled_cost(predictions, self.weights))

    def on_batch(self, batch, members):
        return _pool_batch(self.weights, members, logodds=True, scale=self.scale)


@attrs.frozen
class StackingParams:
    prior_precision: float = sigkit.param(
        10.0, doc="precision of the Gaussian prior that holds the weights at their start (and the intercept at 0) "
                  "until the outcomes say otherwise; larger trusts the start longer", unit="1/logit²")
    l2: float = sigkit.param(0.0, doc="an L2 penalty pulling the weights toward zero, on top of the prior",
                             unit="1/logit²")
    halflife: float = sigkit.param(0.0, doc="the evidence learned from outcomes halves over this many outcomes, so "
                                             "the weights keep adapting; 0: never forget", unit="outcomes")
    mix_members: bool = sigkit.param(
        True, doc="average the stacker and each member alone by their causal likelihood (Bayesian model averaging), "
                  "so the ensemble's log loss is never much worse than its best member's")
    evidence: float = sigkit.param(200.0, doc="outcomes after which the stacker's own confidence reaches 0.5",
                                   unit="outcomes")
    regimes: tuple[str, ...] = sigkit.param(
        (), doc="regime dimensions of the target market (volatility, spread); each regime state learns its own "
                "weights. Empty: one set of weights", choices=sigkit.REGIME_DIMENSIONS)
    regime_fast_ns: int = sigkit.duration("5s", doc="half-life of the fast regime estimates")
    regime_slow_ns: int = sigkit.duration("5m", doc="half-life of the slow baselines they are compared with")
    pool: str = sigkit.param(
        "excess", choices=("excess", "logodds"),
        doc="excess: regress on each member's log-odds in excess of the causal base rate, starting from their "
            "sum (independent evidence adds up); logodds: regress on the raw log-odds, starting from their mean")


class _RegimeAware(sigkit.LearnedState):
    """Shared by the learning combiners: follows the target's regime and remembers it for each fill."""

    def _init_regimes(self, params, context: sigkit.RunContext) -> int:
        self.tracker = None
        self.pending_state = sigkit.PendingFills()  # fill -> regime state
        if not params.regimes:
            return 1
        try:
            self.tracker = sigkit.RegimeTracker(context.target.venue, context.target.symbol,
                                                dimensions=params.regimes, fast_halflife_ns=params.regime_fast_ns,
                                                slow_halflife_ns=params.regime_slow_ns)
        except ValueError as err:
            raise sigkit.ModelError(str(err)) from None
        return self.tracker.n_states

    def on_book_update(self, book):
        if self.tracker is not None:
            self.tracker.on_book_update(book)

    def _state_for(self, query) -> int:
        state = self.tracker.state(query.ts_ns) if self.tracker is not None else 0
        self.pending_state.put(query, state)
        return state

    def _state_of(self, outcome) -> int:
        return self.pending_state.pop(outcome.fill, 0)

    # The batch path: the tracker packed into arrays for the kernels and back (kernel._tracker_book).
    def _tracker_arrays(self, batch):
        t = self.tracker
        tf, ti = self._tracker_state_arrays()
        if t is None:
            return False, -1, np.zeros(2), 1.0, np.zeros(0, dtype=np.int64), tf, ti
        dims = np.array([kernel.DIMENSION_CODES[d] for d in t.dimensions], dtype=np.int64)
        return (True, batch.markets.code(t.venue, t.symbol), np.array(t._rates, dtype=np.float64), float(t.ratio),
                dims, tf, ti)

    def _tracker_state_arrays(self):
        """The tracker's changing state in arrays (``tf``, ``ti``: see kernel._tracker_book)."""
        t = self.tracker
        if t is None:
            return np.zeros(7), np.zeros(5, dtype=np.int64)
        tf = np.array([*t._var, *t._spread, *t._weight, 0.0 if t._last_mid is None else t._last_mid])
        ti = np.array([t._last_ts is not None, t._last_ts or 0, t._first_ts is not None, t._first_ts or 0,
                       t._last_mid is not None], dtype=np.int64)
        return tf, ti

    def _tracker_back(self, tf, ti) -> None:
        t = self.tracker
        if t is None:
            return
        t._var, t._spread, t._weight = [float(tf[0]), float(tf[1])], [float(tf[2]), float(tf[3])], [float(tf[4]), float(tf[5])]
        t._last_ts = int(ti[1]) if ti[0] else None
        t._first_ts = int(ti[3]) if ti[2] else None
        t._last_mid = float(tf[6]) if ti[4] else None


class Stacking(_RegimeAware):
    """Online logistic regression on the members' log-odds, learning only from delivered outcomes, then
    (``mix_members``) a Bayesian average of that regression and each member alone; with ``regimes``, one
    regression and one average per regime state.

    With ``pool: excess`` (the default) the inputs are each member's log-odds minus the logit of the causal
    base rate r, the regression sits on top of logit(r), and every weight starts at 1: the ensemble starts
    by adding up the members' evidence (right when they see independent things, as in the ``mixed``
    world) and learns from outcomes how far to trust each.  With ``pool: logodds`` it regresses on the raw
    log-odds, starting from the equal-weight log-odds pool.  The regression is fitted by online Newton
    steps under a Gaussian prior centred on the start (:class:`sigkit.NewtonLogistic`).

    Why the average: real fills come in bursts (one sweep is hundreds of public trades in a few
    milliseconds, all labelled by the same mid move), so a few hundred outcomes that are really one can
    pull any regression far off, and when members are miscalibrated or anti-informative the start is far
    from the truth.  The average weighs each candidate by its likelihood on the outcomes delivered so far
    (Vovk's aggregating algorithm with log loss, η = 1), so the ensemble's cumulative log loss exceeds that
    of the best candidate, in each regime state, by at most ln(k + 1) whatever the sequence of outcomes.
    """

    STATE_VERSION = 2  # 1: SGD weights (OnlineLogistic), no member average
    STATE_EXCLUDE = (*sigkit.LearnedState.STATE_EXCLUDE, "_constants")

    def __init__(self, params: StackingParams, context: sigkit.RunContext):
        if params.prior_precision <= 0:
            raise sigkit.ModelError(f"stacking: prior_precision must be > 0, got {params.prior_precision}")
        k = len(context.members)
        self.params = params
        self.excess = params.pool == "excess"
        start = [1.0] * k if self.excess else [1.0 / k] * k
        n_states = self._init_regimes(params, context)
        self.models = [sigkit.NewtonLogistic(start, prior_precision=params.prior_precision, l2=params.l2,
                                      halflife_outcomes=params.halflife) for _ in range(n_states)]
        self.model = self.models[0]
        # Per regime state: log posterior weights of [stacker, member 1, ..., member k] (uniform prior), up
        # to a constant; logs, because one burst can move them by hundreds of nats.
        self.log_mixtures = [[0.0] * (k + 1) for _ in range(n_states)]
        self.base_rate = sigkit.RunningBaseRate()
        self.pending_inputs = sigkit.PendingFills()  # fill -> (inputs, offset, stacker's p)
        self.equal = [1.0 / k] * k
        # The batch path's memory of each fill: regime state, offset, stacker's p, inputs, member p.
        self.slots = sigkit.FillSlots(3 + 2 * k)
        self._constants = None  # the batch path's configuration arrays (_batch_constants)

    def _inputs(self, predictions) -> tuple[list[float], float]:
        x = [sigkit.logit(p.p_adverse) for p in predictions]
        if not self.excess:
            return x, 0.0
        offset = sigkit.logit(self.base_rate.rate)
        return [v - offset for v in x], offset

    def combine(self, query, predictions):
        state = self._state_for(query)
        model = self.models[state]
        x, offset = self._inputs(predictions)
        stacked = model.predict(x, offset)
        self.pending_inputs.put(query, (x, offset, stacked))
        p = stacked
        if self.params.mix_members:
            p = mixture_pool(self._mixture(state), stacked, [m.p_adverse for m in predictions])
        own = sigkit.evidence_confidence(model.n_updates, self.params.evidence)
        return sigkit.Prediction(p, own * _mean_confidence(predictions, self.equal),
                                 _pooled_cost(predictions, self.equal))

    def record_outcome(self, outcome, predictions):
        # The inputs as they were when the prediction was made (the base rate and weights have moved since).
        state = self._state_of(outcome)
        pending = self.pending_inputs.pop(outcome.fill)
        if pending is None:
            x, offset = self._inputs(predictions)
            pending = (x, offset, self.models[state].predict(x, offset))
        x, offset, stacked = pending
        y = 1.0 if outcome.was_adverse else 0.0
        if self.params.mix_members:
            logs = list(self.log_mixtures[state])
            mixture_update(logs, stacked, [m.p_adverse for m in predictions], y)
            self.log_mixtures[state] = logs
        self.models[state].update(x, y, offset)
        self.base_rate.update(outcome.was_adverse, outcome.fill.ts_ns)

    def _mixture(self, state: int) -> list[float]:
        out = [0.0] * len(self.log_mixtures[state])  # the largest raw weight is exp(0) = 1
        mixture_weights(self.log_mixtures[state], out)
        return out

    def on_batch(self, batch, members):
        # The member predictions as the engine hands them over, (n_members, n_queries): no transposed copy.
        mp, mc, mk = (np.ascontiguousarray(a, dtype=np.float64)
                      for a in (members.p, members.confidence, members.cost_bps))
        out = np.empty((3, mp.shape[1]))
        self.slots.ensure(batch)
        models, rate = self.models, self.base_rate
        theta = np.array([m.theta for m in models], dtype=np.float64)
        curvature = np.array([m.curvature for m in models], dtype=np.float64)
        n_updates = np.array([m.n_updates for m in models], dtype=np.int64)
        log_mix = np.array(self.log_mixtures, dtype=np.float64)
        br = np.array([rate._adverse, rate._total])
        bri = np.array([rate.n, rate._last_ts is not None, rate._last_ts or 0], dtype=np.int64)
        tf, ti = self._tracker_state_arrays()
        target, rates, ratio, dims, keep, prior, precision = self._batch_constants(batch)
        kernel.stacking_kernel(
            batch.op, batch.ref, batch.kind, batch.market, batch.column("bid_px"), batch.column("ask_px"), batch.ts,
            batch.q_ts, batch.q_fill, batch.o_fill, batch.o_ts, batch.o_adverse, mp, mc, mk, target,
            self.tracker is not None, rates, ratio, dims, self.excess, bool(self.params.mix_members),
            float(self.params.evidence), keep, prior, precision, theta, curvature, n_updates, log_mix, br, bri, tf, ti,
            self.slots.values, self.slots.owner, out, kernel.stacking_scratch(mp.shape[0]))
        for s, m in enumerate(models):
            m.theta = theta[s].tolist()
            m.curvature = curvature[s].tolist()
            m.n_updates = int(n_updates[s])
        self.log_mixtures = log_mix.tolist()
        rate._adverse, rate._total, rate.n = float(br[0]), float(br[1]), int(bri[0])
        if bri[1]:
            rate._last_ts = int(bri[2])
        self._tracker_back(tf, ti)
        return sigkit.BatchPredictions(out[0], out[1], out[2])

    def _batch_constants(self, batch):
        """The kernel's arguments that only the configuration sets (the target's code, the tracker's rates,
        ratio and dimensions, the fit's forgetting and prior), made once for a run's market codes (and again
        after :meth:`load_state_dict`)."""
        cached = self._constants
        if cached is not None and cached[0] is batch.markets:
            return cached[1]
        _, target, rates, ratio, dims, _, _ = self._tracker_arrays(batch)
        first = self.models[0]
        constants = (target, rates, ratio, dims, float(first.keep), np.array(first.prior, dtype=np.float64),
                     np.array(first.prior_precision, dtype=np.float64))
        self._constants = (batch.markets, constants)
        return constants

    def load_state_dict(self, state: dict) -> None:
        self._constants = None
        super().load_state_dict(state)

    def describe(self):
        return {"regimes": list(self.params.regimes), "pool": self.params.pool,
                "by_state": [{"weights": list(m.weights), "intercept": m.intercept, "outcomes": m.n_updates,
                              "mixture": {"stacker": mix[0], "members": mix[1:]}}
                             for m, mix in zip(self.models, map(self._mixture, range(len(self.models))))]}


@attrs.frozen
class HedgeParams:
    eta: float = sigkit.param(2.0, doc="learning rate of the exponential weights")
    share: float = sigkit.param(0.01, doc="fixed share mixed back each step so a model can regain weight")
    loss: str = sigkit.param("brier", doc="loss that drives the weights", choices=("brier", "log"))
    regimes: tuple[str, ...] = sigkit.param(
        (), doc="regime dimensions of the target market (volatility, spread); each regime state keeps its own "
                "weights. Empty: one set of weights", choices=sigkit.REGIME_DIMENSIONS)
    regime_fast_ns: int = sigkit.duration("5s", doc="half-life of the fast regime estimates")
    regime_slow_ns: int = sigkit.duration("5m", doc="half-life of the slow baselines they are compared with")


class Hedge(_RegimeAware):
    """Exponential weights with fixed share (Herbster & Warmuth 1998) over the member probabilities; with
    ``regimes``, one weight vector per regime state (sleeping experts)."""

    def __init__(self, params: HedgeParams, context: sigkit.RunContext):
        if not 0 <= params.share < 1:
            raise sigkit.ModelError(f"hedge: share must be in [0, 1), got {params.share}")
        k = len(context.members)
        self.params = params
        self.by_state = [[1.0 / k] * k for _ in range(self._init_regimes(params, context))]
        self.slots = sigkit.FillSlots(1 + k)  # the batch path's memory of each fill: regime state, member p

    @property
    def weights(self) -> list[float]:
        """The weights of regime state 0 (the only state without regimes)."""
        return self.by_state[0]

    def combine(self, query, predictions):
        weights = self.by_state[self._state_for(query)]
        p = sum(w * x.p_adverse for w, x in zip(weights, predictions))
        return sigkit.Prediction(p, _mean_confidence(predictions, weights), _pooled_cost(predictions, weights))

    def record_outcome(self, outcome, predictions):
        state = self._state_of(outcome)
        y = 1.0 if outcome.was_adverse else 0.0
        weights = list(self.by_state[state])
        hedge_step(weights, [x.p_adverse for x in predictions], y, self.params.eta, self.params.share,
                   self.params.loss == "log", [0.0] * len(weights))
        self.by_state[state] = weights

    def on_batch(self, batch, members):
        mp, mc, mk = _member_arrays(members)
        out = np.empty((3, mp.shape[0]))
        self.slots.ensure(batch)
        by_state = np.array(self.by_state, dtype=np.float64)
        tracked, target, rates, ratio, dims, tf, ti = self._tracker_arrays(batch)
        kernel.hedge_kernel(batch.op, batch.ref, batch.kind, batch.market, batch.column("bid_px"),
                            batch.column("ask_px"), batch.ts, batch.q_ts, batch.q_fill, batch.o_fill, batch.o_adverse,
                            mp, mc, mk, target, tracked, rates, ratio, dims, float(self.params.eta),
                            float(self.params.share), self.params.loss == "log", by_state, tf, ti, self.slots.values,
                            self.slots.owner, out)
        self.by_state = by_state.tolist()
        self._tracker_back(tf, ti)
        return sigkit.BatchPredictions(out[0], out[1], out[2])

    def describe(self):
        return {"regimes": list(self.params.regimes), "weights_by_state": [list(w) for w in self.by_state]}


@sigkit.hookimpl
def register_combiners(register):
    register(sigkit.CombinerSpec("mean", Mean, description="average of member probabilities"))
    register(sigkit.CombinerSpec("weighted", Weighted, params=WeightedParams,
                                 description="linear pool with fixed weights"))
    register(sigkit.CombinerSpec("logit", Logit, params=LogitParams, description="log-odds (geometric) pool"))
    register(sigkit.CombinerSpec("stacking", Stacking, params=StackingParams,
                                 description="online logistic regression on member log-odds"))
    register(sigkit.CombinerSpec("hedge", Hedge, params=HedgeParams,
                                 description="exponential weights with fixed share"))
