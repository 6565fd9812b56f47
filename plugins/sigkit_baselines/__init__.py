"""Two baseline models: the causal base rate, and recent signed trade flow through an online logistic fit.

They make the pipeline real end to end and set the bar every serious model must clear.
"""

from __future__ import annotations

import math

import attrs

import sigkit


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


@sigkit.hookimpl
def register_models(register):
    register(sigkit.ModelSpec("base_rate", BaseRate, params=BaseRateParams,
                              description="the causal running base rate (the reference to beat)"))
    register(sigkit.ModelSpec("flow", Flow, params=FlowParams,
                              description="recent signed trade flow on the target, online logistic fit"))
