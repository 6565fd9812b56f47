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
"""

from __future__ import annotations

import math
from collections import deque

import attrs

import sigkit

NS_PER_S = 1_000_000_000
LN2 = math.log(2.0)


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
            self.total *= math.exp(-self.lam_per_ns * (ts_ns - self.last_ts))
        if self.last_ts is None or ts_ns > self.last_ts:
            self.last_ts = ts_ns
        self.total += value

    def value_at(self, ts_ns: int) -> float:
        if self.last_ts is None:
            return 0.0
        return self.lam_per_s * self.total * math.exp(-self.lam_per_ns * max(ts_ns - self.last_ts, 0))


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
        clip = self.clip
        z = []
        for v, m, s2 in zip(x, self.mean, self.var):
            if s2 > 1e-24:
                u = (v - m) / math.sqrt(s2)
                z.append(clip if u > clip else -clip if u < -clip else u)
            else:
                z.append(0.0)
        self.n += 1
        w = 1.0 / min(self.n, self.window)
        for i, v in enumerate(x):
            d = v - self.mean[i]
            self.mean[i] += w * d
            self.var[i] = (1.0 - w) * (self.var[i] + w * d * d)
        return z


class OnchainOI(sigkit.LearnedState):
    """Open interest, funding and liquidations of the target market, learned online (see the module doc)."""

    def __init__(self, params: OnchainOIParams, context: sigkit.RunContext):
        self.params = params
        self.target = context.target
        self.seen_stat = False
        self.oi_rates = [EWRate(h) for h in params.oi_halflives_ns]
        self.last_oi: float | None = None
        self.funding = 0.0
        self.mid: float | None = None
        self.mark: float | None = None
        # OI additions in the concentration window: (ts_ns, added OI, reference price).
        self.additions: deque[tuple[int, float, float]] = deque()
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
                change_bps = math.log(oi / self.last_oi) * 1e4
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
            band = self.params.concentration_band_bps * 1e-4 * price
            total = near = 0.0
            for _, added, at in additions:
                total += added
                if abs(at - price) <= band:
                    near += added
            self._concentration = near / total
            self._concentration_key = key
        return self._concentration

    def features(self, query: sigkit.FillQuery) -> list[float]:
        """The raw (unstandardised) features at ``query``, in the order of :meth:`feature_names`."""
        t = query.ts_ns
        a = -query.side
        f = self.funding * 1e4  # in bps
        push = -1.0 if f > 0 else 1.0 if f < 0 else 0.0  # where a forced exit of the crowded side moves price
        x = []
        for rate in self.oi_rates:
            r = rate.value_at(t)
            x += [r, -a * push * r]
        c = self.concentration(t)
        size = self.liq_size.value_at(t)
        imbalance = self.liq_signed_size.value_at(t) / size if size > 1e-12 else 0.0
        if self.last_liq_ts is None:
            recency = 0.0
        else:
            recency = math.exp(-(t - self.last_liq_ts) / self.params.liquidation_halflife_ns)
        x += [c, a * push * c, -a * f, -a * f * abs(f), abs(f),
              self.liq_count.value_at(t), size, a * self.liq_signed_count.value_at(t), a * imbalance,
              recency, a * self.last_liq_side * recency]
        return x

    # Prediction and learning ---------------------------------------------------------------------------

    def score(self, z: list[float]) -> float:
        """The fitted score ``s = w.z`` (with the averaged weights when averaging is on)."""
        weights = self.averaged if self.params.average_window else self.model.weights
        return sum(w * v for w, v in zip(weights, z))

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
            keep = self._reliability_keep
            self.reliability_precision = (keep * self.reliability_precision
                                          + (1.0 - keep) * self.params.reliability_prior
                                          + max(p * (1.0 - p), 1e-4) * s * s)
            self.reliability += (y - p) * s / self.reliability_precision
            self.model.update(z, y, offset)
            if self.params.average_window:
                a = 1.0 / min(self.model.n_updates, self.params.average_window)
                self.averaged = [u + a * (w - u) for u, w in zip(self.averaged, self.model.weights)]
        self.base_rate.update(outcome.was_adverse, outcome.fill.ts_ns)
        self.cost.update(outcome.was_adverse, outcome.realized_as_bps)


@sigkit.hookimpl
def register_models(register):
    register(sigkit.ModelSpec(
        "onchain_oi", OnchainOI, params=OnchainOIParams,
        description="open interest change, OI concentration, funding pressure and liquidations, online logistic"))
