"""Two baseline models: the causal base rate, and recent signed trade flow through an online logistic fit.

They make the pipeline real end to end and set the bar every serious model must clear.
"""

from __future__ import annotations

import math

import attrs
import numpy as np

import sigkit
from sigkit import fast
from sigkit.batch import EVENT, OUTCOME, QUERY, TRADE


@attrs.frozen
class BaseRateParams:
    halflife_ns: int | None = sigkit.duration(
        None, doc="half-life of an exponentially weighted rate in event time; unset: all outcomes so far")
    evidence: float = sigkit.param(50.0, doc="outcomes after which confidence reaches 0.5", unit="outcomes")


class BaseRate(sigkit.LearnedState):
    """Predicts the share of adverse outcomes seen so far, the same for every fill.

    With no half-life this equals the causal reference every model is scored against, so its skill is
    zero by construction: a model must beat it to show edge.
    """

    def __init__(self, params: BaseRateParams, context: sigkit.RunContext):
        self.params = params
        self.rate = sigkit.RunningBaseRate(halflife_ns=params.halflife_ns)
        self.cost = sigkit.ConditionalCost()

    def predict(self, query: sigkit.FillQuery) -> sigkit.Prediction:
        p = self.rate.rate
        return sigkit.Prediction(p, sigkit.evidence_confidence(self.rate.n, self.params.evidence),
                                 self.cost.expected(p))

    def record_outcome(self, outcome: sigkit.Outcome) -> None:
        self.rate.update(outcome.was_adverse, outcome.fill.ts_ns)
        self.cost.update(outcome.was_adverse, outcome.realized_as_bps)

    def on_batch(self, batch: sigkit.Batch) -> sigkit.BatchPredictions:
        out = np.empty((3, batch.n_queries))
        rate, cost = self.rate, self.cost
        state = np.array([rate._adverse, rate._total, *cost._sum])
        counts = np.array([rate.n, *cost._n, -1 if rate._last_ts is None else rate._last_ts], dtype=np.int64)
        _base_rate_kernel(batch.op, batch.ref, batch.o_ts, batch.o_adverse, batch.o_realized_bps, state, counts,
                          rate._decay_per_ns, rate._prior_adverse, rate._prior_total, self.params.evidence, out)
        rate._adverse, rate._total = float(state[0]), float(state[1])
        cost._sum = [float(state[2]), float(state[3])]
        rate.n, cost._n = int(counts[0]), [int(counts[1]), int(counts[2])]
        if counts[3] >= 0:
            rate._last_ts = int(counts[3])
        return sigkit.BatchPredictions(out[0], out[1], out[2])


@fast.kernel
def _base_rate_kernel(op, ref, o_ts, o_adverse, o_realized, state, counts, decay_per_ns, prior_adverse, prior_total,
                      evidence, out):
    """BaseRate over a batch: ``state`` = adverse, total, cost sums (good, bad); ``counts`` = outcomes,
    cost counts (good, bad), last outcome time (-1: none)."""
    for i in range(op.size):
        if op[i] == QUERY:
            q = ref[i]
            p = fast.base_rate_value(state[0], state[1], prior_adverse, prior_total)
            out[0, q] = p
            out[1, q] = fast.evidence_confidence(counts[0], evidence)
            out[2, q] = fast.expected_cost(p, state[2], counts[1], state[3], counts[2])
        elif op[i] == OUTCOME:
            o = ref[i]
            _rate_update(state, counts, o_adverse[o], o_ts[o], decay_per_ns)
            _cost_update(state, counts, o_adverse[o], o_realized[o], 2)


@fast.kernel
def _rate_update(state, counts, adverse, ts, decay_per_ns):
    """RunningBaseRate.update on (state[0], state[1]) and (counts[0], counts[3])."""
    if decay_per_ns != 0.0 and counts[3] >= 0 and ts > counts[3]:
        keep = math.exp(-decay_per_ns * (ts - counts[3]))
        state[0] *= keep
        state[1] *= keep
    counts[3] = ts
    state[0] += adverse
    state[1] += 1.0
    counts[0] += 1


@fast.kernel
def _cost_update(state, counts, adverse, realized, at):
    """ConditionalCost.update on sums state[at], state[at + 1] and counts[1], counts[2]."""
    if realized == realized:
        k = 1 if adverse == 1.0 else 0
        state[at + k] += realized
        counts[1 + k] += 1


@attrs.frozen
class FlowParams:
    halflife_ns: int = sigkit.duration("2s", doc="half-life of the signed and total trade-volume averages")
    learning_rate: float = sigkit.param(0.02, doc="SGD step of the online logistic fit")
    l2: float = sigkit.param(0.0, doc="L2 penalty of the online logistic fit")
    evidence: float = sigkit.param(200.0, doc="outcomes after which confidence reaches 0.5", unit="outcomes")


class Flow(sigkit.LearnedState):
    """Recent signed trade flow on the target market, learned online.

    Features at a fill (aggressor side ``a = -fill side``; flow imbalance ``imb`` = EW signed volume / EW
    volume over the target's trades, in [-1, 1]): ``a * imb`` (is the aggressor trading with the recent
    flow?) and ``|imb|`` (how one-sided is the flow?).  An online logistic regression on top of the logit
    of the causal base rate maps them to P(adverse), so with uninformative flow it falls back to the base
    rate instead of adding noise; it learns from every delivered outcome.
    """

    def __init__(self, params: FlowParams, context: sigkit.RunContext):
        self.params = params
        self.target = context.target
        self.decay_per_ns = math.log(2.0) / params.halflife_ns
        self.signed = 0.0
        self.volume = 0.0
        self.last_ts = None
        self.model = sigkit.OnlineLogistic(2, learning_rate=params.learning_rate, l2=params.l2,
                                           intercept_learning_rate=0.0)
        self.base_rate = sigkit.RunningBaseRate()
        self.cost = sigkit.ConditionalCost()
        self.pending = sigkit.PendingFills()  # fill -> (features, offset)
        self.slots = sigkit.FillSlots(3)  # the batch path's memory of each fill: features, offset

    def _decay_to(self, ts_ns: int) -> None:
        if self.last_ts is not None and ts_ns > self.last_ts:
            keep = math.exp(-self.decay_per_ns * (ts_ns - self.last_ts))
            self.signed *= keep
            self.volume *= keep
        self.last_ts = ts_ns if self.last_ts is None else max(ts_ns, self.last_ts)

    def on_trade(self, trade: sigkit.Trade) -> None:
        if trade.venue != self.target.venue or trade.symbol != self.target.symbol:
            return
        self._decay_to(trade.ts_ns)
        self.signed += trade.side * trade.size
        self.volume += trade.size

    def features(self, query: sigkit.FillQuery) -> list[float]:
        self._decay_to(query.ts_ns)
        imbalance = self.signed / self.volume if self.volume > 1e-12 else 0.0
        return [-query.side * imbalance, abs(imbalance)]

    def predict(self, query: sigkit.FillQuery) -> sigkit.Prediction:
        x = self.features(query)
        offset = sigkit.logit(self.base_rate.rate)
        self.pending.put(query, (x, offset))
        p = self.model.predict(x, offset)
        return sigkit.Prediction(p, sigkit.evidence_confidence(self.model.n_updates, self.params.evidence),
                                 self.cost.expected(p))

    def record_outcome(self, outcome: sigkit.Outcome) -> None:
        entry = self.pending.pop(outcome.fill)
        y = 1.0 if outcome.was_adverse else 0.0
        if entry is not None:
            self.model.update(entry[0], y, entry[1])
        self.base_rate.update(outcome.was_adverse, outcome.fill.ts_ns)
        self.cost.update(outcome.was_adverse, outcome.realized_as_bps)

    def on_batch(self, batch: sigkit.Batch) -> sigkit.BatchPredictions:
        out = np.empty((3, batch.n_queries))
        self.slots.ensure(batch)
        model, rate, cost = self.model, self.base_rate, self.cost
        state = np.array([self.signed, self.volume, model.intercept, rate._adverse, rate._total, *cost._sum])
        counts = np.array([rate.n, *cost._n, -1 if rate._last_ts is None else rate._last_ts, model.n_updates,
                           -1 if self.last_ts is None else self.last_ts], dtype=np.int64)
        weights = np.array(model.weights)
        _flow_kernel(batch.op, batch.ref, batch.kind, batch.market, batch.ts, batch.column("side"),
                     batch.column("size"), batch.q_ts, batch.q_side, batch.q_fill, batch.o_fill, batch.o_ts,
                     batch.o_adverse, batch.o_realized_bps, batch.markets.code(self.target.venue, self.target.symbol),
                     self.decay_per_ns, model.learning_rate, model.l2, model.intercept_learning_rate,
                     self.params.evidence, state, counts, weights, self.slots.values, self.slots.owner, out)
        self.signed, self.volume, model.intercept = float(state[0]), float(state[1]), float(state[2])
        rate._adverse, rate._total = float(state[3]), float(state[4])
        cost._sum = [float(state[5]), float(state[6])]
        rate.n, cost._n, model.n_updates = int(counts[0]), [int(counts[1]), int(counts[2])], int(counts[4])
        if counts[3] >= 0:
            rate._last_ts = int(counts[3])
        self.last_ts = None if counts[5] < 0 else int(counts[5])
        model.weights = weights.tolist()
        return sigkit.BatchPredictions(out[0], out[1], out[2])


@fast.kernel
def _flow_kernel(op, ref, kind, market, ts, side, size, q_ts, q_side, q_fill, o_fill, o_ts, o_adverse, o_realized,
                 target, decay_per_ns, lr, l2, intercept_lr, evidence, state, counts, weights, slot_x, slot_owner,
                 out):
    """Flow over a batch.  ``state`` = signed, volume, intercept, base rate (adverse, total), cost sums;
    ``counts`` = base-rate outcomes, cost counts, base-rate last time, fit updates, last decay time."""
    x = np.empty(2)
    for i in range(op.size):
        step = op[i]
        if step == EVENT:
            r = ref[i]
            if kind[r] == TRADE and market[r] == target:
                _flow_decay(state, counts, ts[r], decay_per_ns)
                state[0] += side[r] * size[r]
                state[1] += size[r]
        elif step == QUERY:
            q = ref[i]
            _flow_decay(state, counts, q_ts[q], decay_per_ns)
            imbalance = state[0] / state[1] if state[1] > 1e-12 else 0.0
            x[0] = -q_side[q] * imbalance
            x[1] = abs(imbalance)
            offset = fast.logit(fast.base_rate_value(state[3], state[4], 1.0, 2.0))
            slot = fast.slot_put(slot_owner, q_fill[q])
            slot_x[slot, 0] = x[0]
            slot_x[slot, 1] = x[1]
            slot_x[slot, 2] = offset
            p = fast.sigmoid(fast.logistic_decision(weights, state[2], x, offset))
            out[0, q] = p
            out[1, q] = fast.evidence_confidence(counts[4], evidence)
            out[2, q] = fast.expected_cost(p, state[5], counts[1], state[6], counts[2])
        elif step == OUTCOME:
            o = ref[i]
            slot = fast.slot_take(slot_owner, o_fill[o])
            if slot >= 0:
                x[0] = slot_x[slot, 0]
                x[1] = slot_x[slot, 1]
                offset = slot_x[slot, 2]
                error = fast.sigmoid(fast.logistic_decision(weights, state[2], x, offset)) - o_adverse[o]
                fast.logistic_step(weights, x, error, lr, l2)
                state[2] -= intercept_lr * error
                counts[4] += 1
            _flow_rate_update(state, counts, o_adverse[o], o_ts[o])
            _flow_cost_update(state, counts, o_adverse[o], o_realized[o])


@fast.kernel
def _flow_decay(state, counts, ts, decay_per_ns):
    last = counts[5]
    if last >= 0 and ts > last:
        keep = math.exp(-decay_per_ns * (ts - last))
        state[0] *= keep
        state[1] *= keep
    if last < 0 or ts > last:
        counts[5] = ts


@fast.kernel
def _flow_rate_update(state, counts, adverse, ts):
    counts[3] = ts
    state[3] += adverse
    state[4] += 1.0
    counts[0] += 1


@fast.kernel
def _flow_cost_update(state, counts, adverse, realized):
    if realized == realized:
        k = 1 if adverse == 1.0 else 0
        state[5 + k] += realized
        counts[1 + k] += 1


@sigkit.hookimpl
def register_models(register):
    register(sigkit.ModelSpec("base_rate", BaseRate, params=BaseRateParams,
                              description="the causal running base rate (the reference to beat)"))
    register(sigkit.ModelSpec("flow", Flow, params=FlowParams,
                              description="recent signed trade flow on the target, online logistic fit"))
