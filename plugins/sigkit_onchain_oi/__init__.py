"""The open-interest model: positioning (OI, funding) and forced flow (liquidations) on the target, learned online.

Crowded perpetual positioning is fuel for liquidation cascades (the "liquidity spiral" of Brunnermeier &
Pedersen 2009): when the crowded side is forced out, its liquidations push the price against it.  A maker
filled just before or during such a move on the wrong side is adversely selected.  This model listens to
the target market's ``MarketStat`` rows and, at each fill, builds features of the pressure on the price,
signed by the fill's aggressor side ``a = -query.side`` (positive: the pressure pushes the price the way
the aggressor traded, i.e. against the maker).  With ``D = -sign(funding)`` the direction in which a
liquidation of the crowded side would push the price (positive funding: longs are crowded, their forced
sales push it down):

* **OI change rates** at each half-life ``h`` in ``oi_halflives`` (``lam = ln 2 / h``)::

      r_h(t) = lam * sum_i dlogOI_i * exp(-lam (t - t_i))      (bps of OI per second)

  over the OI observations ``i`` (``dlogOI_i`` = change of log OI since the previous one, in bps), an
  exponentially weighted rate of change that reads ``c`` for a steady change of ``c`` bps/s and decays
  when OI stops moving.  Features ``r_h`` and, directed, ``-a D r_h`` (falling OI while the crowded side
  is forced out: deleveraging pushing with the aggressor).
* **OI concentration**: of the OI added (positive changes) in the last ``concentration_window``, the share
  added while the reference price (the row's mark price, else the target mid) was within
  ``concentration_band_bps`` of the current price: a proxy for the density of liquidation prices near the
  spot.  Features ``c`` and ``a D c``.
* **Funding pressure**: the last funding rate ``f`` (in bps) as ``-a f`` (the crowded side's liquidation
  pushes against it), the same with a convex hazard ``-a f |f|`` (cascade hazard grows faster than
  linearly in crowding), and the undirected level ``|f|``.
* **Liquidation intensity and imbalance** over ``liquidation_halflife`` (EW rates per second as above,
  each liquidation an impulse): count rate ``n``, size rate ``q``, directed signed-count rate ``a s``
  (``s`` = EW rate of the liquidated side ``+1`` forced buy, ``-1`` forced sell) and directed imbalance
  ``a * (EW signed size / EW size)`` in ``[-1, 1]``.
* **Time since the last liquidation** ``dt`` as ``exp(-dt / liquidation_halflife)`` and, directed, times
  ``a`` and the last liquidated side.

Learning (METHODS.md sections 6.1 and 6.3).  Each feature is standardised online (running mean and
variance over the queries: Welford's update while fewer than ``standardise_window`` queries have been seen,
then exponentially weighted with weight ``1/standardise_window``; clipped to +-``clip``), giving ``z``.
An online logistic regression (``sigkit.OnlineLogistic``, constant-step SGD) fits weights ``w`` on top of
the offset ``logit(base rate)`` of the causal running base rate, as in the ``flow`` baseline; its
prediction uses the average ``w_bar`` of the recent weights (Polyak-Ruppert, exponentially weighted over
``average_window`` updates).  The fill's probability is

    p = sigmoid(logit(base rate) + beta * s),    s = w_bar . z

where ``beta``, the reliability of the score, is a one-parameter online Platt slope: started at 0 and
moved by a Newton step ``beta += (y - p) s / A`` per outcome, ``A = rho + sum p(1-p) s^2`` (a Gaussian
prior of precision ``rho = reliability_prior`` at 0, forgetting over ``reliability_memory`` outcomes).  It
is fitted on scores issued before their outcomes were known, so it measures out-of-sample skill: where the
statistics carry no information (e.g. OI data unrelated to the market) the score is noise, ``beta`` stays
near 0 and the model stays at the base rate instead of paying for the noise of 17 fitted weights (with the
default three OI scales); where they do, ``beta`` grows to trust it.  Until a statistic of the target has
been seen the model returns the base rate itself, with confidence 0.

Causality: every statistic is stamped with the receive time ``ts_ns`` the engine hands over (many venues
publish OI without an exchange timestamp; ``exch_ts_ns`` is never read), and every average is decayed to
the query time, which the engine guarantees is later than every event seen.

Batch path: ``on_batch`` runs the same hooks over a whole piece in one compiled kernel
(:func:`_onchain_oi_kernel`) that calls the compiled twins of the formula functions below, so its
predictions are those of the per-event hooks bit for bit; the OI additions are held there in a numpy
ring, kept from piece to piece and read back into ``additions`` only when something asks for them (a
per-event hook, a checkpoint).
"""

from __future__ import annotations

import math
import sys
from collections import deque

import attrs
import numpy as np

import sigkit
from sigkit import fast
from sigkit.batch import BOOK, EVENT, OUTCOME, QUERY, STAT

NS_PER_S = 1_000_000_000
LN2 = math.log(2.0)
COMPENSATED_SUM = sys.version_info >= (3, 12)  # how this interpreter's sum() adds floats
NO_TS = -(2 ** 63)  # the batch path's "no time yet" (None on the per-event path)


# The formulas, as plain functions on scalars and indexable sequences: the per-event methods call them as
# they are and the batch kernel calls their compiled twins (sigkit.fast.twin), so both paths share one
# source.  Explicit index loops only (numba compiles those), and no calls to other Python functions.

def ew_decayed(total: float, lam_per_ns: float, last_ts: int, ts_ns: int) -> float:
    """An exponentially weighted total decayed from ``last_ts`` to the later ``ts_ns``."""
    return total * math.exp(-lam_per_ns * (ts_ns - last_ts))


def ew_value(lam_per_s: float, lam_per_ns: float, total: float, last_ts: int, ts_ns: int) -> float:
    """The rate per second of an exponentially weighted total last moved at ``last_ts``, read at ``ts_ns``."""
    return ew_scaled(lam_per_s, total, ew_decay(lam_per_ns, last_ts, ts_ns))


def ew_decay(lam_per_ns: float, last_ts: int, ts_ns: int) -> float:
    """The decay factor of :func:`ew_value` (one for every total of the same rate and last time)."""
    return math.exp(-lam_per_ns * max(ts_ns - last_ts, 0))


def ew_scaled(lam_per_s: float, total: float, decay: float) -> float:
    """:func:`ew_value` from its decay factor."""
    return lam_per_s * total * decay


def oi_change_bps(oi: float, last_oi: float) -> float:
    """The change of log open interest, in bps."""
    return math.log(oi / last_oi) * 1e4


def concentration_share(added, at, first: int, count: int, price: float, band_bps: float) -> float:
    """Share of the OI ``added`` at reference prices ``at`` that was added within ``band_bps`` of ``price``,
    over entries ``first, first + 1, ... first + count - 1`` (indices modulo ``len(added)``: a ring)."""
    cap = len(added)
    band = band_bps * 1e-4 * price
    total = 0.0
    near = 0.0
    j = first % cap  # then first + 1, ... wrapping to 0 at the end (no division per entry)
    for k in range(count):
        total += added[j]
        if abs(at[j] - price) <= band:
            near += added[j]
        j += 1
        if j == cap:
            j = 0
    return near / total


def liquidation_recency(ts_ns: int, last_liq_ts: int, halflife_ns: int) -> float:
    """``exp(-dt / halflife)`` of the time since the last liquidation."""
    return math.exp(-(ts_ns - last_liq_ts) / halflife_ns)


def fill_features(x, a: int, funding: float, oi_rates, concentration: float, count_rate: float, size_rate: float,
                  signed_count_rate: float, signed_size_rate: float, recency: float, last_liq_side: int) -> None:
    """The raw features into ``x`` (in the order of :meth:`OnchainOI.feature_names`) from the averages read at
    the query time; ``a`` is the aggressor side, ``oi_rates`` the OI change rates, one per half-life."""
    f = funding * 1e4  # in bps
    push = -1.0 if f > 0 else 1.0 if f < 0 else 0.0  # where a forced exit of the crowded side moves price
    j = 0
    for k in range(len(oi_rates)):
        r = oi_rates[k]
        x[j] = r
        x[j + 1] = -a * push * r
        j += 2
    c = concentration
    imbalance = signed_size_rate / size_rate if size_rate > 1e-12 else 0.0
    x[j] = c
    x[j + 1] = a * push * c
    x[j + 2] = -a * f
    x[j + 3] = -a * f * abs(f)
    x[j + 4] = abs(f)
    x[j + 5] = count_rate
    x[j + 6] = size_rate
    x[j + 7] = a * signed_count_rate
    x[j + 8] = a * imbalance
    x[j + 9] = recency
    x[j + 10] = a * last_liq_side * recency


def standardise(x, z, mean, var, n: int, window: int, clip: float) -> None:
    """``z`` = ``x`` standardised with the statistics before this value, clipped to +-``clip``; then the
    statistics updated in place with ``x``, the ``n``-th value (Welford's, then weight ``1 / window``)."""
    for i in range(len(x)):
        s2 = var[i]
        if s2 > 1e-24:
            u = (x[i] - mean[i]) / math.sqrt(s2)
            z[i] = clip if u > clip else -clip if u < -clip else u
        else:
            z[i] = 0.0
    w = 1.0 / min(n, window)
    for i in range(len(x)):
        d = x[i] - mean[i]
        mean[i] += w * d
        var[i] = (1.0 - w) * (var[i] + w * d * d)


def score_of(weights, z) -> float:
    """``w.z`` summed in index order exactly as the built-in ``sum`` adds floats: plainly up to Python 3.11,
    with Neumaier's compensation from 3.12 on (``COMPENSATED_SUM``)."""
    s = 0.0
    c = 0.0
    for i in range(len(weights)):
        x = weights[i] * z[i]
        if COMPENSATED_SUM:
            t = s + x
            if abs(s) >= abs(x):
                c += (s - t) + x
            else:
                c += (x - t) + s
            s = t
        else:
            s += x
    if COMPENSATED_SUM and c != 0.0 and math.isfinite(c):
        s += c
    return s


def reliability_step(reliability: float, precision: float, p: float, s: float, y: float, keep: float,
                     prior: float) -> tuple[float, float]:
    """The Newton step of the reliability slope on an outcome ``y`` of score ``s`` issued with ``p``:
    the new (reliability, precision)."""
    precision = keep * precision + (1.0 - keep) * prior + max(p * (1.0 - p), 1e-4) * s * s
    return reliability + (y - p) * s / precision, precision


def average_step(averaged, weights, n_updates: int, window: int) -> None:
    """Polyak-Ruppert averaging, exponentially weighted over about ``window`` updates, in place."""
    a = 1.0 / min(n_updates, window)
    for i in range(len(averaged)):
        u = averaged[i]
        averaged[i] = u + a * (weights[i] - u)


@attrs.frozen
class OnchainOIParams:
    oi_halflives_ns: tuple[int, ...] = sigkit.duration(
        ("5s", "30s", "5m"), doc="half-lives of the exponentially weighted OI change rates, one feature pair each")
    concentration_window_ns: int = sigkit.duration(
        "5m", doc="window over which OI additions are attributed to the price they were added at")
    concentration_band_bps: float = sigkit.param(
        10.0, doc="an OI addition counts as near the current price if added within this distance of it",
        unit="bps")
    liquidation_halflife_ns: int = sigkit.duration(
        "500ms", doc="half-life of the liquidation count, size and imbalance averages, and the time scale "
                     "of the time-since-last-liquidation decay")
    learning_rate: float = sigkit.param(0.003, doc="SGD step of the online logistic fit")
    l2: float = sigkit.param(0.0, doc="L2 penalty of the online logistic fit")
    standardise_window: int = sigkit.param(
        5000, doc="effective number of recent queries the feature means and variances average over",
        unit="queries")
    clip: float = sigkit.param(5.0, doc="standardised features are clipped to +-clip", unit="standard deviations")
    average_window: int = sigkit.param(
        2000, doc="predict with the average of the fitted weights over about this many recent updates "
                  "(Polyak-Ruppert averaging, exponentially weighted; 0: the latest weights)", unit="outcomes")
    reliability_prior: float = sigkit.param(
        20.0, doc="precision rho of the zero-centred prior on the reliability slope beta of the fitted score: "
                  "its estimate is shrunk by rho / (rho + evidence), evidence = sum of p(1-p) score^2 over outcomes")
    reliability_memory: int = sigkit.param(
        20000, doc="the reliability scale forgets older evidence over about this many outcomes (0: never)",
        unit="outcomes")
    evidence: float = sigkit.param(200.0, doc="outcomes after which confidence reaches 0.5", unit="outcomes")

    def __attrs_post_init__(self):
        if not self.oi_halflives_ns or min(self.oi_halflives_ns) <= 0:
            raise ValueError("oi_halflives must be one or more positive durations")
        if self.concentration_window_ns <= 0 or self.liquidation_halflife_ns <= 0:
            raise ValueError("concentration_window and liquidation_halflife must be positive")
        if self.concentration_band_bps < 0:
            raise ValueError("concentration_band_bps must not be negative")
        if self.standardise_window < 2:
            raise ValueError("standardise_window must be at least 2")
        if self.average_window < 0 or self.reliability_memory < 0:
            raise ValueError("average_window and reliability_memory must not be negative")
        if self.reliability_prior <= 0:
            raise ValueError("reliability_prior must be positive")


class EWRate(sigkit.LearnedState):
    """An exponentially weighted rate of impulses: ``lam * sum_i v_i exp(-lam (t - t_i))``, per second.

    For a steady stream of impulses ``v`` every ``dt`` seconds it reads ``v / dt``; it decays to zero when
    the stream stops.  ``value_at(t)`` never moves the state, so a query leaves no trace.
    """

    __slots__ = ("lam_per_ns", "lam_per_s", "total", "last_ts")

    def __init__(self, halflife_ns: int):
        self.lam_per_ns = LN2 / halflife_ns
        self.lam_per_s = self.lam_per_ns * NS_PER_S
        self.total = 0.0
        self.last_ts: int | None = None

    def add(self, value: float, ts_ns: int) -> None:
        if self.last_ts is not None and ts_ns > self.last_ts:
            self.total = ew_decayed(self.total, self.lam_per_ns, self.last_ts, ts_ns)
        if self.last_ts is None or ts_ns > self.last_ts:
            self.last_ts = ts_ns
        self.total += value

    def value_at(self, ts_ns: int) -> float:
        if self.last_ts is None:
            return 0.0
        return ew_value(self.lam_per_s, self.lam_per_ns, self.total, self.last_ts, ts_ns)


class OnlineStandardiser(sigkit.LearnedState):
    """Running mean and variance per feature: exact (Welford) for the first ``window`` updates, then
    exponentially weighted with weight ``1 / window``.  ``transform`` uses the statistics before the update."""

    def __init__(self, n_features: int, window: int, clip: float):
        self.mean = [0.0] * n_features
        self.var = [0.0] * n_features
        self.n = 0
        self.window = window
        self.clip = clip

    def transform_and_update(self, x: list[float]) -> list[float]:
        z = [0.0] * len(x)
        self.n += 1
        standardise(x, z, self.mean, self.var, self.n, self.window, self.clip)
        return z


class OnchainOI(sigkit.LearnedState):
    """Open interest, funding and liquidations of the target market, learned online (see the module doc)."""

    STATE_VERSION = 3  # 1: no batch-path memory of pending fills (slots); 2: additions not yet in _additions
    STATE_EXCLUDE = ("params", "target", "_ring", "_lams")

    def __init__(self, params: OnchainOIParams, context: sigkit.RunContext):
        self.params = params
        self.target = context.target
        self.seen_stat = False
        self.oi_rates = [EWRate(h) for h in params.oi_halflives_ns]
        self.last_oi: float | None = None
        self.funding = 0.0
        self.mid: float | None = None
        self.mark: float | None = None
        # OI additions in the concentration window: (ts_ns, added OI, reference price).  The batch path keeps
        # them in its arrays between pieces (``_ring``); ``additions`` reads them back when asked.
        self._additions: deque[tuple[int, float, float]] = deque()
        self._ring: tuple | None = None
        self._lams = None  # the batch path's arrays of the rates' decay constants (on_batch)
        self._concentration_key = None
        self._concentration = 0.0
        h = params.liquidation_halflife_ns
        self.liq_count, self.liq_size = EWRate(h), EWRate(h)
        self.liq_signed_count, self.liq_signed_size = EWRate(h), EWRate(h)
        self.last_liq_ts: int | None = None
        self.last_liq_side = 0
        self.names = self.feature_names(params)
        self.scaler = OnlineStandardiser(len(self.names), params.standardise_window, params.clip)
        self.model = sigkit.OnlineLogistic(len(self.names), learning_rate=params.learning_rate, l2=params.l2,
                                           intercept_learning_rate=0.0)
        self.averaged = [0.0] * len(self.names)
        self.reliability = 0.0
        self.reliability_precision = params.reliability_prior
        self._reliability_keep = 1.0 - 1.0 / params.reliability_memory if params.reliability_memory else 1.0
        self.base_rate = sigkit.RunningBaseRate()
        self.cost = sigkit.ConditionalCost()
        self.pending = sigkit.PendingFills()  # fill -> (z, offset, score)
        self.slots = sigkit.FillSlots(len(self.names) + 2)  # the batch path's memory of each fill: z, offset, score

    @staticmethod
    def feature_names(params: OnchainOIParams) -> list[str]:
        names = []
        for h in params.oi_halflives_ns:
            scale = sigkit.format_duration(h)
            names += [f"oi_rate_{scale}", f"deleverage_{scale}"]
        return names + ["concentration", "concentration_directed", "funding_pressure", "funding_hazard",
                        "funding_level", "liq_count_rate", "liq_size_rate", "liq_signed_rate", "liq_imbalance",
                        "liq_recency", "liq_recency_directed"]

    # Market data ---------------------------------------------------------------------------------------

    def on_book_update(self, book: sigkit.BookUpdate) -> None:
        if book.venue == self.target.venue and book.symbol == self.target.symbol:
            mid = 0.5 * (book.bid_px + book.ask_px)
            if mid == mid:
                self.mid = mid

    def on_market_stat(self, stat: sigkit.MarketStat) -> None:
        if stat.venue != self.target.venue or stat.symbol != self.target.symbol:
            return
        ts = stat.ts_ns  # the receive time: never the exchange's (possibly absent or later) clock
        self.seen_stat = True
        if stat.mark_price == stat.mark_price and stat.mark_price > 0:
            self.mark = stat.mark_price
        if stat.funding_rate == stat.funding_rate:
            self.funding = stat.funding_rate
        oi = stat.open_interest
        if oi == oi and oi > 0:
            if self.last_oi is not None:
                change_bps = oi_change_bps(oi, self.last_oi)
                for rate in self.oi_rates:
                    rate.add(change_bps, ts)
                added = oi - self.last_oi
                price = stat.mark_price if stat.mark_price == stat.mark_price else self.mid
                if added > 0 and price is not None:
                    self.additions.append((ts, added, price))
                    self._concentration_key = None
            self.last_oi = oi
        side = stat.liquidation_side
        if side:
            size = stat.liquidation_size if stat.liquidation_size == stat.liquidation_size else 0.0
            self.liq_count.add(1.0, ts)
            self.liq_size.add(size, ts)
            self.liq_signed_count.add(float(side), ts)
            self.liq_signed_size.add(side * size, ts)
            self.last_liq_ts = ts
            self.last_liq_side = 1 if side > 0 else -1

    # Features ------------------------------------------------------------------------------------------

    def concentration(self, ts_ns: int) -> float:
        """Share of the OI added in the window before ``ts_ns`` that was added near the current price."""
        oldest_ns = ts_ns - self.params.concentration_window_ns
        additions = self.additions
        while additions and additions[0][0] < oldest_ns:
            additions.popleft()
            self._concentration_key = None
        price = self.mid if self.mid is not None else self.mark
        if not additions or price is None:
            return 0.0
        key = (len(additions), additions[-1][0], price)
        if key != self._concentration_key:
            added = [entry[1] for entry in additions]
            at = [entry[2] for entry in additions]
            self._concentration = concentration_share(added, at, 0, len(added), price,
                                                      self.params.concentration_band_bps)
            self._concentration_key = key
        return self._concentration

    def features(self, query: sigkit.FillQuery) -> list[float]:
        """The raw (unstandardised) features at ``query``, in the order of :meth:`feature_names`."""
        t = query.ts_ns
        oi_rates = [rate.value_at(t) for rate in self.oi_rates]
        c = self.concentration(t)
        if self.last_liq_ts is None:
            recency = 0.0
        else:
            recency = liquidation_recency(t, self.last_liq_ts, self.params.liquidation_halflife_ns)
        x = [0.0] * len(self.names)
        fill_features(x, -query.side, self.funding, oi_rates, c, self.liq_count.value_at(t), self.liq_size.value_at(t),
                      self.liq_signed_count.value_at(t), self.liq_signed_size.value_at(t), recency, self.last_liq_side)
        return x

    # Prediction and learning ---------------------------------------------------------------------------

    def score(self, z: list[float]) -> float:
        """The fitted score ``s = w.z`` (with the averaged weights when averaging is on)."""
        weights = self.averaged if self.params.average_window else self.model.weights
        return score_of(weights, z)

    def predict(self, query: sigkit.FillQuery) -> sigkit.Prediction:
        if not self.seen_stat:
            # No statistic of the target yet: nothing to add to the reference, so say exactly that.
            p = self.base_rate.rate
            return sigkit.Prediction(p, 0.0, self.cost.expected(p))
        z = self.scaler.transform_and_update(self.features(query))
        offset = sigkit.logit(self.base_rate.rate)
        s = self.score(z)
        self.pending.put(query, (z, offset, s))
        p = sigkit.sigmoid(offset + self.reliability * s)
        return sigkit.Prediction(p, sigkit.evidence_confidence(self.model.n_updates, self.params.evidence),
                                 self.cost.expected(p))

    def record_outcome(self, outcome: sigkit.Outcome) -> None:
        entry = self.pending.pop(outcome.fill)
        y = 1.0 if outcome.was_adverse else 0.0
        if entry is not None:
            z, offset, s = entry
            # The reliability of the score as issued (out of sample): a one-dimensional Newton step on the
            # log loss under a zero-centred Gaussian prior, with forgetting back towards that prior.
            p = sigkit.sigmoid(offset + self.reliability * s)
            self.reliability, self.reliability_precision = reliability_step(
                self.reliability, self.reliability_precision, p, s, y, self._reliability_keep,
                self.params.reliability_prior)
            self.model.update(z, y, offset)
            if self.params.average_window:
                average_step(self.averaged, self.model.weights, self.model.n_updates, self.params.average_window)
        self.base_rate.update(outcome.was_adverse, outcome.fill.ts_ns)
        self.cost.update(outcome.was_adverse, outcome.realized_as_bps)


    @property
    def additions(self) -> deque:
        """The OI additions in the concentration window, oldest first: ``(ts_ns, added OI, price)``."""
        if self._ring is not None:
            ring_ts, ring_added, ring_at, head, held = self._ring
            order = (head + np.arange(held)) % len(ring_ts)
            self._additions = deque(zip(ring_ts[order].tolist(), ring_added[order].tolist(),
                                        ring_at[order].tolist()))
            self._ring = None
        return self._additions

    @additions.setter
    def additions(self, value) -> None:
        self._additions, self._ring = value, None

    def state_dict(self) -> dict:
        self.additions  # noqa: B018  (the batch path's ring back into the deque that is saved)
        return super().state_dict()

    def load_state_dict(self, state: dict) -> None:
        self._ring = self._lams = None
        super().load_state_dict(state)

    # The batch path ------------------------------------------------------------------------------------

    def on_batch(self, batch: sigkit.Batch) -> sigkit.BatchPredictions:
        """The per-event hooks over a whole piece, in one compiled kernel (:func:`_onchain_oi_kernel`)."""
        n_q = batch.n_queries
        out = np.empty((3, n_q))
        if n_q:
            self.slots.ensure(batch)
        target = batch.markets.code(self.target.venue, self.target.symbol)
        rates = [*self.oi_rates, self.liq_count, self.liq_size, self.liq_signed_count, self.liq_signed_size]
        ew_total = np.array([r.total for r in rates])
        ew_last = np.array([NO_TS if r.last_ts is None else r.last_ts for r in rates], dtype=np.int64)
        if self._lams is None:  # the rates' decay constants: set by the configuration (and a restored state)
            self._lams = (np.array([r.lam_per_ns for r in rates]), np.array([r.lam_per_s for r in rates]))
        ew_lam_ns, ew_lam_s = self._lams
        model, rate, cost, scaler = self.model, self.base_rate, self.cost, self.scaler
        key = self._concentration_key
        fstate = np.array([self.funding, _nan_if_none(self.last_oi), _nan_if_none(self.mid), _nan_if_none(self.mark),
                           self._concentration, math.nan if key is None else key[2], self.reliability,
                           self.reliability_precision, model.intercept, rate._adverse, rate._total, *cost._sum])
        istate = np.array([int(self.seen_stat), NO_TS if self.last_liq_ts is None else self.last_liq_ts,
                           self.last_liq_side, 0, len(self._additions), key is not None,
                           0 if key is None else key[0], 0 if key is None else key[1], scaler.n, model.n_updates,
                           rate.n, NO_TS if rate._last_ts is None else rate._last_ts, *cost._n], dtype=np.int64)
        mean, var = np.array(scaler.mean, dtype=float), np.array(scaler.var, dtype=float)
        weights, averaged = np.array(model.weights, dtype=float), np.array(self.averaged, dtype=float)
        # The additions as a ring: room for every one held now and one per statistic of the target in the
        # piece (each adds at most one), so the kernel never runs out; if it did, it would stop before the
        # step that needs room, and the ring grows and the kernel goes on from that step.
        if self._ring is not None:  # the arrays of the last piece, as it left them
            ring_ts, ring_added, ring_at, istate[3], istate[4] = self._ring
            capacity = len(ring_ts)
        else:
            n_stats = int(np.count_nonzero((batch.kind == STAT) & (batch.market == target)))
            additions = self._additions
            capacity = _ring_capacity(len(additions), n_stats)
            ring_ts = np.zeros(capacity, dtype=np.int64)
            ring_added, ring_at = np.zeros(capacity), np.zeros(capacity)
            if additions:
                held = len(additions)
                ring_ts[:held] = [entry[0] for entry in additions]
                ring_added[:held] = [entry[1] for entry in additions]
                ring_at[:held] = [entry[2] for entry in additions]
        params = self.params
        columns = (batch.column("bid_px"), batch.column("ask_px"), batch.column("open_interest"),
                   batch.column("funding_rate"), batch.column("mark_price"), batch.column("side"),
                   batch.column("size"))
        scratch = np.zeros(2 * len(mean) + len(self.oi_rates))  # the kernel's features, scores and OI rates
        start = 0
        while True:
            start = _onchain_oi_kernel(
                start, batch.op, batch.ref, batch.kind, batch.market, batch.ts, *columns,
                batch.q_ts, batch.q_side, batch.q_fill, batch.o_fill, batch.o_ts, batch.o_adverse,
                batch.o_realized_bps, target, params.concentration_window_ns, params.concentration_band_bps,
                params.liquidation_halflife_ns, params.standardise_window, params.clip, params.average_window,
                model.learning_rate, model.l2, model.intercept_learning_rate, self._reliability_keep,
                params.reliability_prior, params.evidence, rate._prior_adverse, rate._prior_total, len(self.oi_rates),
                fstate, istate, ew_total, ew_last, ew_lam_ns, ew_lam_s, mean, var, weights, averaged,
                ring_ts, ring_added, ring_at, self.slots.values, self.slots.owner, out, scratch)
            if start < 0:
                break
            # The ring was full: twice the room, the held additions first, and on from the step that stopped.
            head, held = int(istate[3]), int(istate[4])
            order = (head + np.arange(held)) % capacity
            capacity *= 2
            ring_ts, ring_added, ring_at = (np.concatenate([a[order], np.zeros(capacity - held, dtype=a.dtype)])
                                            for a in (ring_ts, ring_added, ring_at))
            istate[3] = 0
        # Unpack: the instance's attributes as the per-event hooks would have left them.
        for r, total, last in zip(rates, ew_total.tolist(), ew_last.tolist()):
            r.total, r.last_ts = total, None if last == NO_TS else last
        (self.funding, last_oi, mid, mark, self._concentration, key_price, self.reliability,
         self.reliability_precision, model.intercept, rate._adverse, rate._total, cost_good,
         cost_bad) = fstate.tolist()
        self.last_oi, self.mid, self.mark = _none_if_nan(last_oi), _none_if_nan(mid), _none_if_nan(mark)
        cost._sum = [cost_good, cost_bad]
        (seen, last_liq_ts, self.last_liq_side, head, held, key_valid, key_n, key_last, scaler.n, model.n_updates,
         rate.n, rate_last, n_good, n_bad) = istate.tolist()
        self.seen_stat = bool(seen)
        self.last_liq_ts = None if last_liq_ts == NO_TS else last_liq_ts
        rate._last_ts = None if rate_last == NO_TS else rate_last
        cost._n = [n_good, n_bad]
        self._concentration_key = (key_n, key_last, key_price) if key_valid else None
        scaler.mean, scaler.var = mean.tolist(), var.tolist()
        model.weights, self.averaged = weights.tolist(), averaged.tolist()
        self._ring = (ring_ts, ring_added, ring_at, head, held)
        return sigkit.BatchPredictions(out[0], out[1], out[2])


def _nan_if_none(value) -> float:
    return math.nan if value is None else value


def _none_if_nan(value: float):
    return None if value != value else value


def _ring_capacity(held: int, n_stats: int) -> int:
    """The ring's size for ``held`` additions and ``n_stats`` statistics to come: a power of two, at least 16."""
    capacity = 16
    while capacity < held + n_stats:
        capacity *= 2
    return capacity


_ew_decayed = fast.twin(ew_decayed)
_ew_decay = fast.twin(ew_decay)
_ew_scaled = fast.twin(ew_scaled)
_ew_value = fast.twin(ew_value)
_oi_change_bps = fast.twin(oi_change_bps)
_concentration_share = fast.twin(concentration_share)
_liquidation_recency = fast.twin(liquidation_recency)
_fill_features = fast.twin(fill_features)
_standardise = fast.twin(standardise)
_score_of = fast.twin(score_of)
_reliability_step = fast.twin(reliability_step)
_average_step = fast.twin(average_step)


# The kernel inlines its helpers and works on borrowed arrays (sigkit.fast.inline / borrowed: views and calls
# without reference counting).
_inline, _borrowed = fast.inline, fast.borrowed


@_inline
def _ew_add(ew_total, ew_last, k, value, ts, ew_lam_ns):
    """EWRate.add on rate ``k``."""
    last = ew_last[k]
    if last != NO_TS and ts > last:
        ew_total[k] = _ew_decayed(ew_total[k], ew_lam_ns[k], last, ts)
    if last == NO_TS or ts > last:
        ew_last[k] = ts
    ew_total[k] += value


@_inline
def _ew_read(ew_total, ew_last, k, ts, ew_lam_ns, ew_lam_s):
    """EWRate.value_at on rate ``k``."""
    if ew_last[k] == NO_TS:
        return 0.0
    return _ew_value(ew_lam_s[k], ew_lam_ns[k], ew_total[k], ew_last[k], ts)


@fast.kernel
def _onchain_oi_kernel(start, op, ref, kind, market, ts, bid_px, ask_px, open_interest, funding_rate, mark_price,
                       side, size, q_ts, q_side, q_fill, o_fill, o_ts, o_adverse, o_realized, target, window_ns,
                       band_bps, liq_halflife_ns, standardise_window, clip, average_window, lr, l2, intercept_lr,
                       reliability_keep, reliability_prior, evidence, prior_adverse, prior_total, n_oi, fstate,
                       istate, ew_total, ew_last, ew_lam_ns, ew_lam_s, mean, var, weights, averaged, ring_ts,
                       ring_added, ring_at, slot_values, slot_owner, out, scratch):
    """OnchainOI over a batch, from schedule step ``start``.  Returns -1 when done, or the step at which it
    stopped, untouched, because the additions ring is full.

    ``fstate`` = funding, last OI, mid, mark (NaN: none), cached concentration, its key's price, reliability,
    its precision, intercept, base rate (adverse, total), cost sums (good, bad); ``istate`` = seen a
    statistic, last liquidation time, its side, ring head, ring count, concentration key set, its count and
    last time, standardiser count, fit updates, base-rate outcomes and last time, cost counts (good, bad).
    ``ew_*``: the OI change rates, then liquidation count, size, signed count and signed size."""
    fstate, istate, ew_total, ew_last = _borrowed(fstate), _borrowed(istate), _borrowed(ew_total), _borrowed(ew_last)
    ew_lam_ns, ew_lam_s, mean, var = _borrowed(ew_lam_ns), _borrowed(ew_lam_s), _borrowed(mean), _borrowed(var)
    weights, averaged = _borrowed(weights), _borrowed(averaged)
    ring_added, ring_at = _borrowed(ring_added), _borrowed(ring_at)
    n = mean.size
    if scratch.size < 2 * n + n_oi:  # (an argument: alive for the whole call, as its borrowed views need)
        raise ValueError("_onchain_oi_kernel: scratch too small")
    x = _borrowed(scratch[0:n])
    z = _borrowed(scratch[n:2 * n])
    oi_rates = _borrowed(scratch[2 * n:2 * n + n_oi])
    cap = ring_ts.size
    # The logit of the base rate, valid until the next outcome moves it.
    offset_known = False
    base_offset = 0.0
    for i in range(start, op.size):
        step = op[i]
        if step == EVENT:
            r = ref[i]
            if market[r] != target:
                continue
            k = kind[r]
            if k == BOOK:
                mid = 0.5 * (bid_px[r] + ask_px[r])
                if mid == mid:
                    fstate[2] = mid
            elif k == STAT:
                if istate[4] == cap:
                    return i  # no room for an addition: the caller grows the ring and runs on from here
                t = ts[r]
                istate[0] = 1
                mark = mark_price[r]
                if mark == mark and mark > 0:
                    fstate[3] = mark
                funding = funding_rate[r]
                if funding == funding:
                    fstate[0] = funding
                oi = open_interest[r]
                if oi == oi and oi > 0:
                    last_oi = fstate[1]
                    if last_oi == last_oi:
                        change_bps = _oi_change_bps(oi, last_oi)
                        for h in range(n_oi):
                            _ew_add(ew_total, ew_last, h, change_bps, t, ew_lam_ns)
                        added = oi - last_oi
                        price = mark if mark == mark else fstate[2]
                        if added > 0 and price == price:
                            at = (istate[3] + istate[4]) % cap
                            ring_ts[at] = t
                            ring_added[at] = added
                            ring_at[at] = price
                            istate[4] += 1
                            istate[5] = 0
                    fstate[1] = oi
                liq = side[r]
                if liq != 0:
                    liq_size = size[r] if size[r] == size[r] else 0.0
                    _ew_add(ew_total, ew_last, n_oi, 1.0, t, ew_lam_ns)
                    _ew_add(ew_total, ew_last, n_oi + 1, liq_size, t, ew_lam_ns)
                    _ew_add(ew_total, ew_last, n_oi + 2, float(liq), t, ew_lam_ns)
                    _ew_add(ew_total, ew_last, n_oi + 3, liq * liq_size, t, ew_lam_ns)
                    istate[1] = t
                    istate[2] = 1 if liq > 0 else -1
        elif step == QUERY:
            q = ref[i]
            if istate[0] == 0:  # no statistic of the target yet: the base rate, confidence 0
                p = fast.base_rate_value(fstate[9], fstate[10], prior_adverse, prior_total)
                out[0, q] = p
                out[1, q] = 0.0
                out[2, q] = fast.expected_cost(p, fstate[11], istate[12], fstate[12], istate[13])
                continue
            t = q_ts[q]
            for h in range(n_oi):
                oi_rates[h] = _ew_read(ew_total, ew_last, h, t, ew_lam_ns, ew_lam_s)
            # Concentration: drop the additions older than the window, then the share near the price.
            oldest_ns = t - window_ns
            while istate[4] > 0 and ring_ts[istate[3]] < oldest_ns:
                istate[3] = (istate[3] + 1) % cap
                istate[4] -= 1
                istate[5] = 0
            price = fstate[2] if fstate[2] == fstate[2] else fstate[3]
            if istate[4] == 0 or price != price:
                c = 0.0
            else:
                held = istate[4]
                newest = ring_ts[(istate[3] + held - 1) % cap]
                if not (istate[5] == 1 and istate[6] == held and istate[7] == newest and fstate[5] == price):
                    fstate[4] = _concentration_share(ring_added, ring_at, istate[3], held, price, band_bps)
                    istate[5] = 1
                    istate[6] = held
                    istate[7] = newest
                    fstate[5] = price
                c = fstate[4]
            recency = 0.0 if istate[1] == NO_TS else _liquidation_recency(t, istate[1], liq_halflife_ns)
            a = -np.int64(q_side[q])
            # The four liquidation rates share a half-life and (added together) their last time: when they
            # do, one decay factor serves all four, the one each read would compute.
            liq_last = ew_last[n_oi]
            liq_lam = ew_lam_ns[n_oi]
            if (liq_last != NO_TS and ew_last[n_oi + 1] == liq_last and ew_last[n_oi + 2] == liq_last
                    and ew_last[n_oi + 3] == liq_last and ew_lam_ns[n_oi + 1] == liq_lam
                    and ew_lam_ns[n_oi + 2] == liq_lam and ew_lam_ns[n_oi + 3] == liq_lam):
                decay = _ew_decay(liq_lam, liq_last, t)
                count_rate = _ew_scaled(ew_lam_s[n_oi], ew_total[n_oi], decay)
                size_rate = _ew_scaled(ew_lam_s[n_oi + 1], ew_total[n_oi + 1], decay)
                signed_count_rate = _ew_scaled(ew_lam_s[n_oi + 2], ew_total[n_oi + 2], decay)
                signed_size_rate = _ew_scaled(ew_lam_s[n_oi + 3], ew_total[n_oi + 3], decay)
            else:
                count_rate = _ew_read(ew_total, ew_last, n_oi, t, ew_lam_ns, ew_lam_s)
                size_rate = _ew_read(ew_total, ew_last, n_oi + 1, t, ew_lam_ns, ew_lam_s)
                signed_count_rate = _ew_read(ew_total, ew_last, n_oi + 2, t, ew_lam_ns, ew_lam_s)
                signed_size_rate = _ew_read(ew_total, ew_last, n_oi + 3, t, ew_lam_ns, ew_lam_s)
            _fill_features(x, a, fstate[0], oi_rates, c, count_rate, size_rate, signed_count_rate, signed_size_rate,
                           recency, istate[2])
            istate[8] += 1
            _standardise(x, z, mean, var, istate[8], standardise_window, clip)
            if not offset_known:
                base_offset = fast.logit(fast.base_rate_value(fstate[9], fstate[10], prior_adverse, prior_total))
                offset_known = True
            offset = base_offset
            s = _score_of(averaged if average_window else weights, z)
            slot = fast.slot_put(slot_owner, q_fill[q])
            for j in range(n):
                slot_values[slot, j] = z[j]
            slot_values[slot, n] = offset
            slot_values[slot, n + 1] = s
            p = fast.sigmoid(offset + fstate[6] * s)
            out[0, q] = p
            out[1, q] = fast.evidence_confidence(istate[9], evidence)
            out[2, q] = fast.expected_cost(p, fstate[11], istate[12], fstate[12], istate[13])
        elif step == OUTCOME:
            o = ref[i]
            y = o_adverse[o]
            slot = fast.slot_take(slot_owner, o_fill[o])
            if slot >= 0:
                for j in range(n):
                    z[j] = slot_values[slot, j]
                offset = slot_values[slot, n]
                s = slot_values[slot, n + 1]
                p = fast.sigmoid(offset + fstate[6] * s)
                fstate[6], fstate[7] = _reliability_step(fstate[6], fstate[7], p, s, y, reliability_keep,
                                                         reliability_prior)
                error = fast.sigmoid(fast.logistic_decision(weights, fstate[8], z, offset)) - y
                fast.logistic_step(weights, z, error, lr, l2)
                fstate[8] -= intercept_lr * error
                istate[9] += 1
                if average_window:
                    _average_step(averaged, weights, istate[9], average_window)
            # RunningBaseRate.update (no half-life) and ConditionalCost.update.
            istate[11] = o_ts[o]
            fstate[9] += y
            fstate[10] += 1.0
            offset_known = False
            istate[10] += 1
            realized = o_realized[o]
            if realized == realized:
                good_bad = 1 if y == 1.0 else 0
                fstate[11 + good_bad] += realized
                istate[12 + good_bad] += 1
    return -1


@sigkit.hookimpl
def register_models(register):
    register(sigkit.ModelSpec(
        "onchain_oi", OnchainOI, params=OnchainOIParams,
        description="open interest change, OI concentration, funding pressure and liquidations, online logistic"))
