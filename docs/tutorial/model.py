"""The `spread_shock` sigkit model: a sudden widening of the spread, and which side of the book is thin.

Started from `sigkit new-plugin spread_shock`.  sigkit imports this module through the `sigkit` entry
point in pyproject.toml and calls :func:`register_models` once.
"""

from __future__ import annotations

import math

import attrs

import sigkit

#: The sigkit plugin API this module is written for; another major version is refused at load time.
SIGKIT_PLUGIN_API = 1


@attrs.frozen
class SpreadShockParams:
    """What a recipe may set under `params:`; `sigkit plugins --json` lists these with units and defaults."""

    halflife_ns: int = sigkit.duration("5s", doc="half-life, in event time, of the typical (average) spread")
    learning_rate: float = sigkit.param(0.02, doc="SGD step of the online logistic fit", unit="log-odds per outcome")
    evidence: float = sigkit.param(200.0, doc="outcomes after which confidence reaches 0.5", unit="outcomes")


class SpreadShock:
    """P(adverse) from the target's top of book just before the fill.

    ``shock`` = log(spread / EWMA spread), clipped to [-3, 3]: market makers widen before a move.
    ``pressure`` = -side * (bid size - ask size) / (bid size + ask size): positive when the thin side of
    the book is the side the price is about to move through, against our fill.  An online logistic fit
    on ``[shock, pressure, shock * pressure]`` adds what it learns to the logit of the causal base rate.
    """

    def __init__(self, params: SpreadShockParams, context: sigkit.RunContext):
        self.params = params
        self.target = context.target
        self.decay_per_ns = math.log(2.0) / params.halflife_ns
        self.avg_spread: float | None = None
        self.spread = math.nan
        self.imbalance = 0.0
        self.last_ts_ns: int | None = None
        self.fit = sigkit.OnlineLogistic(3, learning_rate=params.learning_rate, intercept_learning_rate=0.0)
        self.base_rate = sigkit.RunningBaseRate()
        self.cost = sigkit.ConditionalCost()
        self.pending: dict[int, tuple[list[float], float]] = {}

    def on_book_update(self, book: sigkit.BookUpdate) -> None:
        if book.venue != self.target.venue or book.symbol != self.target.symbol:
            return
        spread, depth = book.spread, book.bid_sz + book.ask_sz
        if not (math.isfinite(spread) and spread > 0.0 and math.isfinite(depth) and depth > 0.0):
            return  # NaN, crossed or empty books carry no information here
        if self.avg_spread is None:
            self.avg_spread = spread
        else:
            keep = math.exp(-self.decay_per_ns * max(book.ts_ns - self.last_ts_ns, 0))
            self.avg_spread = keep * self.avg_spread + (1.0 - keep) * spread
        self.last_ts_ns = book.ts_ns if self.last_ts_ns is None else max(book.ts_ns, self.last_ts_ns)
        self.spread = spread
        self.imbalance = (book.bid_sz - book.ask_sz) / depth

    def predict(self, query: sigkit.FillQuery) -> sigkit.Prediction:
        if self.avg_spread is None:
            shock = 0.0
        else:
            shock = min(max(math.log(self.spread / self.avg_spread), -3.0), 3.0)
        pressure = -query.side * self.imbalance
        features = [shock, pressure, shock * pressure]
        offset = sigkit.logit(self.base_rate.rate)
        self.pending[id(query)] = (features, offset)
        p_adverse = self.fit.predict(features, offset)
        confidence = sigkit.evidence_confidence(self.fit.n_updates, self.params.evidence)
        return sigkit.Prediction(p_adverse, confidence, self.cost.expected(p_adverse))

    def record_outcome(self, outcome: sigkit.Outcome) -> None:
        entry = self.pending.pop(id(outcome.fill), None)
        if entry is not None:
            self.fit.update(entry[0], 1.0 if outcome.was_adverse else 0.0, entry[1])
        self.base_rate.update(outcome.was_adverse, outcome.fill.ts_ns)
        self.cost.update(outcome.was_adverse, outcome.realized_as_bps)

    def describe(self) -> dict:
        shock_w, pressure_w, both_w = self.fit.weights
        return {"shock_weight": shock_w, "pressure_weight": pressure_w, "interaction_weight": both_w,
                "outcomes": self.fit.n_updates}


@sigkit.hookimpl
def register_models(register):
    register(sigkit.ModelSpec("spread_shock", SpreadShock, params=SpreadShockParams,
                              description="spread widening and top-of-book pressure, online logistic fit"))
