"""Small online learners shared by models and combiners: the causal base rate, online logistic
regression, the expected-cost tracker, regime tracking, and the learned-state protocol
(``state_dict()``/``load_state_dict()``, :class:`LearnedState`, :class:`PendingFills`) that checkpoints use.  Pure Python on short vectors: per-event calls on a handful of
features are faster without numpy's per-call overhead."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence

P_FLOOR = 1e-6


def sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def logit(p: float) -> float:
    p = min(max(p, P_FLOOR), 1.0 - P_FLOOR)
    return math.log(p / (1.0 - p))


# -- learned state, for checkpoints -------------------------------------------------------------------

def check_state_version(state: dict, expected: int, owner: str) -> None:
    """Refuse a state saved by another version of ``owner``'s state layout, with a clear message."""
    from sigkit.errors import ModelError

    if not isinstance(state, dict) or "version" not in state:
        raise ModelError(f"{owner}: the saved state is not a state_dict (no 'version' key)")
    if state["version"] != expected:
        raise ModelError(f"{owner}: the saved state has layout version {state['version']!r}, this code reads "
                         f"version {expected}; resume with the sigkit and plugin versions that wrote it, or start afresh")


def capture_state(value, owner: str = "state"):
    """``value`` as plain data: lists, str-keyed dicts, numbers, strings, None and numpy arrays, with
    tuples, deques, other dicts and objects that have ``state_dict()`` tagged so :func:`restore_state`
    rebuilds them exactly.  Raises :class:`sigkit.ModelError` naming anything else."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list):
        return [capture_state(v, owner) for v in value]
    if isinstance(value, tuple):
        return {"__tuple__": [capture_state(v, owner) for v in value]}
    if isinstance(value, deque):
        return {"__deque__": [capture_state(v, owner) for v in value], "maxlen": value.maxlen}
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            return {k: capture_state(v, owner) for k, v in value.items()}
        return {"__items__": [[capture_state(k, owner), capture_state(v, owner)] for k, v in value.items()]}
    import numpy as np

    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, np.generic):
        return value
    if callable(getattr(value, "state_dict", None)) and not isinstance(value, type):
        return {"__state__": value.state_dict()}
    from sigkit.errors import ModelError

    raise ModelError(f"{owner}: cannot save a {type(value).__name__} in a checkpoint; give it state_dict() and "
                     "load_state_dict(), or keep it out of the learned state")


def restore_state(data, current=None):
    """The inverse of :func:`capture_state`.  Objects saved through their ``state_dict()`` are restored in
    place into ``current`` (the freshly built object at the same place), so the structure must match."""
    if isinstance(data, list):
        if isinstance(current, list) and len(current) == len(data):
            return [restore_state(d, c) for d, c in zip(data, current)]
        return [restore_state(d) for d in data]
    if isinstance(data, dict):
        if "__state__" in data:
            if not callable(getattr(current, "load_state_dict", None)):
                from sigkit.errors import ModelError

                raise ModelError(f"saved state of an object where the model now has {type(current).__name__}")
            current.load_state_dict(data["__state__"])
            return current
        if "__tuple__" in data:
            items = data["__tuple__"]
            if isinstance(current, tuple) and len(current) == len(items):
                return tuple(restore_state(d, c) for d, c in zip(items, current))
            return tuple(restore_state(d) for d in items)
        if "__deque__" in data:
            return deque((restore_state(d) for d in data["__deque__"]), maxlen=data["maxlen"])
        if "__items__" in data:
            return {restore_state(k): restore_state(v) for k, v in data["__items__"]}
        old = current if isinstance(current, dict) else {}
        return {k: restore_state(v, old.get(k)) for k, v in data.items()}
    if hasattr(data, "copy") and hasattr(data, "dtype") and getattr(data, "ndim", 0):
        return data.copy()
    return data


class LearnedState:
    """Mixin: ``state_dict()`` / ``load_state_dict()`` over every attribute of the instance except
    ``STATE_EXCLUDE`` (configuration rebuilt from the recipe, such as ``params`` and ``target``).

    What a model, combiner or helper learned and remembers is in its attributes: weights, running moments,
    decayed sums, windows of recent events, pending features.  Saving all of them (helpers that mix this in
    or have their own ``state_dict()`` are saved through it) means nothing is forgotten when a new one is
    added.  Bump ``STATE_VERSION`` when the meaning of an attribute changes: an older checkpoint is then
    refused instead of being misread.
    """

    STATE_VERSION = 1
    STATE_EXCLUDE: tuple[str, ...] = ("params", "target")

    def _state_names(self) -> list[str]:
        """The attributes that make up the state: those in ``__dict__`` and in any ``__slots__``."""
        names = list(getattr(self, "__dict__", {}))
        for cls in type(self).__mro__:
            slots = cls.__dict__.get("__slots__", ())
            for name in (slots,) if isinstance(slots, str) else slots:
                if name not in names and name not in ("__dict__", "__weakref__") and hasattr(self, name):
                    names.append(name)
        return [k for k in names if k not in self.STATE_EXCLUDE]

    def state_dict(self) -> dict:
        owner = type(self).__name__
        return {"version": self.STATE_VERSION, "kind": owner,
                "attrs": {k: capture_state(getattr(self, k), f"{owner}.{k}") for k in self._state_names()}}

    def load_state_dict(self, state: dict) -> None:
        from sigkit.errors import ModelError

        owner = type(self).__name__
        check_state_version(state, self.STATE_VERSION, owner)
        if state.get("kind") != owner:
            raise ModelError(f"{owner}: the saved state belongs to {state.get('kind')!r}")
        saved = state["attrs"]
        names = set(self._state_names())
        if set(saved) != names:
            extra, missing = sorted(set(saved) - names), sorted(names - set(saved))
            raise ModelError(f"{owner}: the saved state does not fit this code (unexpected: {', '.join(extra) or '-'}; "
                             f"missing: {', '.join(missing) or '-'}); bump STATE_VERSION when the state changes")
        for name, data in saved.items():
            setattr(self, name, restore_state(data, getattr(self, name)))


def _bits(x: float) -> str:
    return float(x).hex()  # exact, and NaN equals NaN


def fill_key(fill) -> tuple:
    """A fill's identity by value (time, market, side, price, size): how remembered fills are matched to their
    outcomes after a checkpoint, when the fill objects are new."""
    return (fill.ts_ns, fill.venue, fill.symbol, fill.side, _bits(fill.price), _bits(fill.size))


class PendingFills:
    """What a model remembered about each fill it predicted (its features, say), until the outcome arrives.

    ``put(fill, value)`` at predict time; ``pop(fill, default)`` at ``record_outcome``.  Matched by the fill
    object itself (the engine hands the same object back in the outcome), and, for entries restored from a
    checkpoint, by the fill's values: fills equal in every field are matched first in, first out, the order
    in which the engine delivers their outcomes.
    """

    STATE_VERSION = 1

    def __init__(self) -> None:
        self._live: dict[int, tuple] = {}  # id(fill) -> (fill, value); holding the fill keeps its id unique
        self._restored: dict[tuple, list] = {}  # fill_key -> [value, ...]

    def put(self, fill, value) -> None:
        self._live[id(fill)] = (fill, value)

    def pop(self, fill, default=None):
        entry = self._live.pop(id(fill), None)
        if entry is not None:
            return entry[1]
        if self._restored:
            key = fill_key(fill)
            values = self._restored.get(key)
            if values:
                value = values.pop(0)
                if not values:
                    del self._restored[key]
                return value
        return default

    def get(self, fill, default=None):
        """What was remembered for ``fill``, left in place."""
        entry = self._live.get(id(fill))
        if entry is not None:
            return entry[1]
        values = self._restored.get(fill_key(fill)) if self._restored else None
        return values[0] if values else default

    def __len__(self) -> int:
        return len(self._live) + sum(len(v) for v in self._restored.values())

    def state_dict(self) -> dict:
        fills = [[list(key), capture_state(v, "pending fill")] for key, values in self._restored.items() for v in values]
        fills += [[list(fill_key(fill)), capture_state(v, "pending fill")] for fill, v in self._live.values()]
        return {"version": self.STATE_VERSION, "fills": fills}

    def load_state_dict(self, state: dict) -> None:
        check_state_version(state, self.STATE_VERSION, "PendingFills")
        self._live = {}
        self._restored = {}
        for key, value in state["fills"]:
            self._restored.setdefault(tuple(key), []).append(restore_state(value))


class RunningBaseRate(LearnedState):
    """The causal base rate: the share of adverse outcomes delivered so far.

    With a Beta(``prior_adverse``, ``prior_total - prior_adverse``) prior, so the first answer is 0.5.
    ``halflife_ns`` (optional) makes it an exponentially weighted rate in event time, for drifting
    markets.  This is also the reference every model's Brier skill is measured against (cumulative,
    default prior), so a model that merely tracks the running base rate scores zero skill.
    """

    def __init__(self, *, prior_adverse: float = 1.0, prior_total: float = 2.0, halflife_ns: int | None = None):
        self._prior_adverse = prior_adverse
        self._prior_total = prior_total
        self._decay_per_ns = math.log(2.0) / halflife_ns if halflife_ns else 0.0
        self._adverse = 0.0
        self._total = 0.0
        self._last_ts = None
        self.n = 0

    def update(self, was_adverse: bool, ts_ns: int = 0) -> None:
        if self._decay_per_ns and self._last_ts is not None and ts_ns > self._last_ts:
            keep = math.exp(-self._decay_per_ns * (ts_ns - self._last_ts))
            self._adverse *= keep
            self._total *= keep
        self._last_ts = ts_ns
        self._adverse += 1.0 if was_adverse else 0.0
        self._total += 1.0
        self.n += 1

    @property
    def rate(self) -> float:
        return base_rate_value(self._adverse, self._total, self._prior_adverse, self._prior_total)


class OnlineLogistic(LearnedState):
    """Logistic regression fitted by constant-step SGD on log loss, so it keeps adapting.

    ``p = sigmoid(b + w.x)``; each update moves ``w`` by ``-lr * ((p - y) x + l2 w)`` and ``b`` by
    ``-intercept_lr * (p - y)`` (METHODS.md §6.1).  A larger intercept step absorbs base-rate drift.
    ``offset`` is a known log-odds added to the decision (e.g. the logit of a running base rate), so the
    fit learns only what the features add to it.
    """

    def __init__(self, n_features: int, *, learning_rate: float = 0.05, l2: float = 0.0,
                 intercept_learning_rate: float | None = None, weights: Sequence[float] | None = None,
                 intercept: float = 0.0):
        self.weights = list(weights) if weights is not None else [0.0] * n_features
        if len(self.weights) != n_features:
            raise ValueError(f"expected {n_features} initial weights, got {len(self.weights)}")
        self.intercept = intercept
        self.learning_rate = learning_rate
        self.intercept_learning_rate = learning_rate if intercept_learning_rate is None else intercept_learning_rate
        self.l2 = l2
        self.n_updates = 0

    def decision(self, x: Sequence[float], offset: float = 0.0) -> float:
        return logistic_decision(self.weights, self.intercept, x, offset)

    def predict(self, x: Sequence[float], offset: float = 0.0) -> float:
        return sigmoid(self.decision(x, offset))

    def update(self, x: Sequence[float], y: float, offset: float = 0.0) -> None:
        error = self.predict(x, offset) - y
        logistic_step(self.weights, x, error, self.learning_rate, self.l2)
        self.intercept -= self.intercept_learning_rate * error
        self.n_updates += 1


# The formulas above as plain functions on scalars and indexable sequences: the per-event classes call
# them as they are, and compiled kernels call their numba twins (sigkit.fast), so both paths share one
# source.  Write them with explicit index loops (numba compiles those; comprehensions over zip it does not).

def logistic_decision(weights, intercept: float, x, offset: float) -> float:
    """``intercept + offset + w.x``, summed in index order."""
    z = intercept + offset
    for i in range(len(weights)):
        z += weights[i] * x[i]
    return z


def logistic_step(weights, x, error: float, learning_rate: float, l2: float) -> None:
    """One SGD step of the weights, in place: ``w -= lr * (error * x + l2 * w)``."""
    for i in range(len(weights)):
        w = weights[i]
        weights[i] = w - learning_rate * (error * x[i] + l2 * w)


def base_rate_value(adverse: float, total: float, prior_adverse: float, prior_total: float) -> float:
    """The Beta-prior share of adverse outcomes (:class:`RunningBaseRate`)."""
    return (adverse + prior_adverse) / (total + prior_total)


def expected_cost(p_adverse: float, sum_good: float, n_good: int, sum_bad: float, n_bad: int) -> float:
    """:class:`ConditionalCost`'s mix of the mean realized costs by ``p`` (NaN until both kinds are seen)."""
    if not (n_good and n_bad):
        return math.nan
    return p_adverse * sum_bad / n_bad + (1.0 - p_adverse) * sum_good / n_good


class ConditionalCost(LearnedState):
    """Expected adverse-selection cost from a probability: running means of realized cost (bps) among
    adverse and non-adverse outcomes, mixed by ``p``."""

    def __init__(self) -> None:
        self._sum = [0.0, 0.0]
        self._n = [0, 0]

    def update(self, was_adverse: bool, realized_as_bps: float) -> None:
        if realized_as_bps == realized_as_bps:  # skip NaN
            k = 1 if was_adverse else 0
            self._sum[k] += realized_as_bps
            self._n[k] += 1

    def expected(self, p_adverse: float) -> float:
        return expected_cost(p_adverse, self._sum[0], self._n[0], self._sum[1], self._n[1])


def evidence_confidence(n_outcomes: int, half_evidence: float) -> float:
    """A confidence in [0, 1) that grows with evidence: 0.5 after ``half_evidence`` outcomes."""
    return n_outcomes / (n_outcomes + half_evidence)


REGIME_DIMENSIONS = ("volatility", "spread")


class RegimeTracker(LearnedState):
    """Volatility and spread regimes of one market, from its book updates in event time.

    Each dimension compares a fast exponentially weighted estimate with a slow one: volatility is the
    rate of squared mid returns (bps² per second), spread the average quoted spread (bps).  A dimension
    is "high" (1) when the fast estimate exceeds ``ratio`` times the slow one (the margin keeps the
    ordinary jitter of a fast estimate just after an event from counting as a regime change).  :meth:`state` packs the chosen dimensions
    into an integer in ``range(2 ** len(dimensions))``, the first dimension in the lowest bit.
    """

    def __init__(self, venue: str, symbol: str, *, dimensions: Sequence[str] = REGIME_DIMENSIONS,
                 fast_halflife_ns: int = 5_000_000_000, slow_halflife_ns: int = 300_000_000_000,
                 ratio: float = 1.5):
        unknown = [d for d in dimensions if d not in REGIME_DIMENSIONS]
        if unknown:
            raise ValueError(f"unknown regime dimension {unknown[0]!r}; known: {', '.join(REGIME_DIMENSIONS)}")
        self.venue, self.symbol = venue, symbol
        self.dimensions = tuple(dimensions)
        self.ratio = ratio
        self._rates = (math.log(2.0) / fast_halflife_ns, math.log(2.0) / slow_halflife_ns)
        self._var = [0.0, 0.0]  # decayed sums of squared returns
        self._spread = [0.0, 0.0]  # decayed sums of spread
        self._weight = [0.0, 0.0]  # decayed counts of spread observations
        self._last_ts = None
        self._first_ts = None
        self._last_mid = None

    @property
    def n_states(self) -> int:
        return 2 ** len(self.dimensions)

    def _decay(self, ts_ns: int) -> None:
        if self._last_ts is not None and ts_ns > self._last_ts:
            regime_decay(self._var, self._spread, self._weight, self._rates, ts_ns - self._last_ts)
        if self._last_ts is None or ts_ns > self._last_ts:
            self._last_ts = ts_ns

    def _elapsed(self, ts_ns: int) -> int:
        return max(ts_ns - self._first_ts, 1) if self._first_ts is not None else 1

    def _span(self, k: int, ts_ns: int) -> float:
        """The decay-weighted length of time (ns) the k-th estimate has covered by ``ts_ns``."""
        return regime_span(self._rates[k], self._elapsed(ts_ns))

    def on_book_update(self, book) -> None:
        if book.venue != self.venue or book.symbol != self.symbol:
            return
        if self._first_ts is None:
            self._first_ts = book.ts_ns
        mid = 0.5 * (book.bid_px + book.ask_px)
        if not mid > 0:
            return
        self._decay(book.ts_ns)
        regime_observe(self._var, self._spread, self._weight, book.bid_px, book.ask_px, mid, self._last_mid)
        self._last_mid = mid

    def state(self, ts_ns: int) -> int:
        """The regime at ``ts_ns`` (no later than the next event): 0 when nothing has been seen."""
        self._decay(ts_ns)
        return regime_state(self._var, self._spread, self._weight, self._rates, self.ratio,
                            [REGIME_CODES[d] for d in self.dimensions], self._elapsed(ts_ns))


# The regime tracker's arithmetic, for it and for compiled kernels (sigkit.fast).

REGIME_CODES = {"volatility": 0, "spread": 1}  # a dimension's code in regime_state


def power(x: float, y: float) -> float:
    """``x ** y`` (C ``pow``, which is not always ``x * x`` for ``y = 2``); kernels call the same C function."""
    return x ** y


def regime_decay(var, spread, weight, rates, dt: int) -> None:
    """Decay the fast (0) and slow (1) sums by ``dt`` ns."""
    for k in range(2):
        keep = math.exp(-rates[k] * dt)
        var[k] *= keep
        spread[k] *= keep
        weight[k] *= keep


def regime_observe(var, spread, weight, bid_px: float, ask_px: float, mid: float, last_mid) -> None:
    """Add one book update (``mid`` > 0; ``last_mid`` the previous one, falsy if none) to the sums."""
    spread_bps = (ask_px - bid_px) / mid * 1e4
    squared = power(math.log(mid / last_mid) * 1e4, 2.0) if last_mid else 0.0
    for k in range(2):
        var[k] += squared
        spread[k] += spread_bps
        weight[k] += 1.0


def regime_span(rate: float, elapsed: int) -> float:
    """The decay-weighted length of time (ns) an estimate of decay ``rate`` covers after ``elapsed`` ns."""
    return -math.expm1(-rate * elapsed) / rate


def regime_state(var, spread, weight, rates, ratio: float, dims, elapsed: int) -> int:
    """The regime state from the decayed sums; ``dims`` = codes (:data:`REGIME_CODES`), the first in the lowest
    bit; ``elapsed`` = max(ns since the first book, 1), or 1 before any."""
    state = 0
    for bit in range(len(dims)):
        if dims[bit] == 0:
            # A decayed sum over the decayed length of time it covers is a rate per unit time (early in
            # a run the slow window has not filled yet, so dividing by its full length would bias it low).
            high = var[0] / regime_span(rates[0], elapsed) > var[1] / regime_span(rates[1], elapsed) * ratio
        else:
            high = (weight[0] > 0 and weight[1] > 0
                    and spread[0] / weight[0] > spread[1] / weight[1] * ratio)
        state |= int(high) << bit
    return state


def _solve_spd(matrix: list[list[float]], rhs: list[float]) -> list[float]:
    """``matrix⁻¹ rhs`` for a small symmetric positive-definite matrix (Cholesky; k+1 is at most a dozen)."""
    n = len(rhs)
    out = [0.0] * n
    solve_spd(matrix, rhs, [[0.0] * n for _ in range(n)], [0.0] * n, out)
    return out


def solve_spd(matrix, rhs, low, tmp, out) -> None:
    """``out = matrix⁻¹ rhs`` by Cholesky; ``low`` (n×n) and ``tmp`` (n) are scratch.  Matrices are indexed
    ``m[i][j]`` (lists of lists, or 2-d arrays)."""
    n = len(rhs)
    for i in range(n):
        for j in range(i + 1):
            acc = 0.0
            for m in range(j):
                acc += low[i][m] * low[j][m]
            acc = matrix[i][j] - acc
            if i == j:
                if 1e-300 > acc:
                    acc = 1e-300
                low[i][j] = math.sqrt(acc)
            else:
                low[i][j] = acc / low[j][j]
    for i in range(n):
        acc = 0.0
        for m in range(i):
            acc += low[i][m] * tmp[m]
        tmp[i] = (rhs[i] - acc) / low[i][i]
    for i in range(n - 1, -1, -1):
        acc = 0.0
        for m in range(i + 1, n):
            acc += low[m][i] * out[m]
        out[i] = (tmp[i] - acc) / low[i][i]


def newton_decision(theta, x, offset: float) -> float:
    """``offset + b + w.x`` with ``theta = (b, w)`` (:meth:`NewtonLogistic.decision`)."""
    acc = 0.0
    for i in range(len(x)):
        acc += theta[i + 1] * x[i]
    return offset + theta[0] + acc


def newton_step(theta, curvature, x, y: float, p: float, prior, precision, keep: float, hessian, low, grad, tmp,
                step) -> None:
    """One online Newton step of :class:`NewtonLogistic`, in place on ``theta`` and ``curvature`` (n×n,
    ``n = len(theta)``), given ``p`` = its prediction for ``x``; ``hessian``, ``low`` (n×n), ``grad``, ``tmp``
    and ``step`` (n) are scratch."""
    n = len(theta)
    curv = p * (1.0 - p)
    for i in range(n):
        zi = 1.0 if i == 0 else x[i - 1]
        for j in range(n):
            zj = 1.0 if j == 0 else x[j - 1]
            curvature[i][j] = keep * curvature[i][j] + curv * zi * zj
    # Gradient at θ of the new objective, given θ minimised the previous one: the new outcome's, plus the
    # share of the prior that forgetting uncovered.
    for i in range(n):
        zi = 1.0 if i == 0 else x[i - 1]
        grad[i] = (1.0 - keep) * precision[i] * (theta[i] - prior[i]) + (p - y) * zi
        for j in range(n):
            hessian[i][j] = curvature[i][j] + (precision[i] if i == j else 0.0)
    solve_spd(hessian, grad, low, tmp, step)
    for i in range(n):
        theta[i] = theta[i] - step[i]


class NewtonLogistic(LearnedState):
    """Logistic regression with a Gaussian prior, fitted by one online Newton step per outcome.

    It follows the minimiser of ``½ (θ - θ₀)ᵀ λI (θ - θ₀) + Σ_i γ^(t-i) logloss_i(θ)`` over ``θ = (b, w)``
    (the intercept and the weights; θ₀ = (0, start)): each outcome adds ``p(1-p) z zᵀ`` to the curvature
    ``D`` (``z = (1, x)``) and the step is ``(λI + D)⁻¹`` times the gradient.  Unlike a fixed SGD step, the
    step is measured in the inputs' own scale and correlation, and it shrinks as evidence accumulates;
    the prior keeps a few lucky outcomes from throwing the weights far from the start.  ``γ`` (from
    ``halflife_outcomes``) forgets old evidence, but never the prior.
    """

    def __init__(self, start: Sequence[float], *, prior_precision: float, l2: float = 0.0,
                 halflife_outcomes: float = 0.0):
        # An L2 penalty toward zero is a second Gaussian prior; with the first it makes one, centred between.
        self.prior = [0.0, *(prior_precision * w / (prior_precision + l2) for w in start)]
        self.prior_precision = [prior_precision] + [prior_precision + l2] * len(start)
        self.keep = 0.5 ** (1.0 / halflife_outcomes) if halflife_outcomes > 0 else 1.0
        self.theta = list(self.prior)
        self.curvature = [[0.0] * len(self.theta) for _ in self.theta]
        self.n_updates = 0

    @property
    def intercept(self) -> float:
        return self.theta[0]

    @property
    def weights(self) -> list[float]:
        return self.theta[1:]

    def decision(self, x: Sequence[float], offset: float = 0.0) -> float:
        return newton_decision(self.theta, x, offset)

    def predict(self, x: Sequence[float], offset: float = 0.0) -> float:
        return sigmoid(self.decision(x, offset))

    def update(self, x: Sequence[float], y: float, offset: float = 0.0) -> None:
        p = self.predict(x, offset)
        n = len(self.theta)
        newton_step(self.theta, self.curvature, x, y, p, self.prior, self.prior_precision, self.keep,
                    [[0.0] * n for _ in range(n)], [[0.0] * n for _ in range(n)], [0.0] * n, [0.0] * n, [0.0] * n)
        self.n_updates += 1
