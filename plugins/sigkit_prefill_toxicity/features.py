"""The four pre-fill flow statistics of PreFillToxicity, each an O(1)-per-event online tracker.

Every tracker is fed the target market's events in time order and can be read at any later time; none of
them ever looks at an event after the time it is read at.  Plain Python floats throughout: these run on
every trade and book update.

**One set of formulas.**  The arithmetic of every tracker (and of the model's feature scaler) lives in the
plain module-level functions below, on scalars and indexable sequences with explicit index loops (none
calls another: a compiled twin can call only compiled functions, so callers compose them): the
classes call them as they are, and the batch kernel (:mod:`sigkit_prefill_toxicity.kernel`) calls their
compiled twins (``sigkit.fast.twin``).  Timestamps that may be unset are passed as :data:`NO_TS`.
"""

from __future__ import annotations

import math

import sigkit

LN2 = math.log(2.0)

#: An unset timestamp (``None`` in the classes) in the shared formulas and the kernel's int64 state.
NO_TS = -(2 ** 63)

#: Kyle flow measures by code, as the shared formulas take them.
FLOW_MEASURES = ("volume", "sqrt_volume", "count")


# -- shared formulas ----------------------------------------------------------------------------------

def exact_sum(values, start: int, capacity: int, count: int, absolute: bool, partials) -> float:
    """``math.fsum`` of ``values[(start + j) % capacity]`` for ``j < count`` (of their absolute values if
    ``absolute``), bit for bit: CPython's algorithm (Shewchuk's exact partials, then a correctly rounded
    total), for finite inputs.  ``partials`` is scratch space of at least ``count`` floats."""
    n = 0
    for j in range(count):
        x = values[(start + j) % capacity]
        if absolute:
            x = abs(x)
        i = 0
        for m in range(n):
            y = partials[m]
            if abs(x) < abs(y):
                t = x
                x = y
                y = t
            hi = x + y
            yr = hi - x
            lo = y - yr
            if lo != 0.0:
                partials[i] = lo
                i += 1
            x = hi
        n = i
        if x != 0.0:
            partials[n] = x
            n += 1
    hi = 0.0
    if n > 0:
        n -= 1
        hi = partials[n]
        lo = 0.0
        while n > 0:
            x = hi
            n -= 1
            y = partials[n]
            hi = x + y
            yr = hi - x
            lo = y - yr
            if lo != 0.0:
                break
        # Half-even rounding across several partials (as CPython does).
        if n > 0 and ((lo < 0.0 and partials[n - 1] < 0.0) or (lo > 0.0 and partials[n - 1] > 0.0)):
            y = lo * 2.0
            x = hi + y
            yr = x - hi
            if y == yr:
                hi = x
    return hi


def bucket_fill(buy: float, sell: float, side: int, left: float, cap: float, n_buckets: int):
    """One step of :meth:`VolumeBuckets.add`: ``left`` base units of a ``side`` trade go into the open bucket
    (``buy``, ``sell``).  Returns ``(buy, sell, left, closed, signed)``: if the bucket was filled, ``closed``
    is True, ``signed`` its ``(B - S) / V``, the new open bucket is empty and ``left`` what remains of the
    trade (only the last ``n_buckets`` whole buckets of a huge print); otherwise ``left`` is 0."""
    room = cap - buy - sell
    if left < room:
        if side > 0:
            buy += left
        else:
            sell += left
        return buy, sell, 0.0, False, 0.0
    if side > 0:  # the trade fills the open bucket: close it and open the next
        buy += room
    else:
        sell += room
    left -= room
    signed = (buy - sell) / cap
    whole = int(left // cap)
    if whole > n_buckets:  # a huge print: only the last n of its one-sided buckets are kept
        left -= (whole - n_buckets) * cap
    return 0.0, 0.0, left, True, signed


def sign_surprise_add(ts_ns: int, side: int, last_ts: int, previous: int, total: float, weight: float, rho: float,
                      rho_sum: float, rho_weight: float, decay_per_ns: float, rho_keep: float):
    """:meth:`SignSurprise.add`: returns ``(last_ts, previous, total, weight, rho, rho_sum, rho_weight)``."""
    if last_ts == NO_TS or ts_ns <= last_ts:
        keep = 1.0
    else:
        keep = math.exp(-decay_per_ns * (ts_ns - last_ts))
    surprise = side - rho * previous
    total = total * keep + surprise
    weight = weight * keep + 1.0
    if last_ts == NO_TS or ts_ns > last_ts:
        last_ts = ts_ns
    if previous != 0:
        rho_sum = rho_sum * rho_keep + side * previous
        rho_weight = rho_weight * rho_keep + 1.0
        rho = rho_sum / rho_weight
    return last_ts, side, total, weight, rho, rho_sum, rho_weight


def kyle_signed_flow(side: int, size: float, measure: int) -> float:
    """Signed flow of one trade; ``measure`` indexes :data:`FLOW_MEASURES`."""
    if measure == 0:
        return side * size
    if measure == 1:
        return side * math.sqrt(size)
    return float(side)


def kyle_advance(ts_ns: int, end_ns: int, interval_ns: int, flow: float, mid: float, mid_open: float, sw: float,
                 sq: float, sm: float, sqq: float, sqm: float, flow_sum: float, flow_weight: float, keep: float,
                 flow_keep: float):
    """:meth:`KyleLambda.advance`: returns ``(end_ns, flow, mid_open, sw, sq, sm, sqq, sqm, flow_sum,
    flow_weight)``."""
    if end_ns == NO_TS:
        return ((ts_ns // interval_ns + 1) * interval_ns, flow, mid, sw, sq, sm, sqq, sqm, flow_sum,
                flow_weight)
    if ts_ns < end_ns:
        return end_ns, flow, mid_open, sw, sq, sm, sqq, sqm, flow_sum, flow_weight
    # Close the open interval.
    q = flow
    if mid == mid and mid_open == mid_open and mid_open > 0.0:
        dm = (mid - mid_open) / mid_open * 1e4
    else:
        dm = 0.0
    sw = sw * keep + 1.0
    sq = sq * keep + q
    sm = sm * keep + dm
    sqq = sqq * keep + q * q
    sqm = sqm * keep + q * dm
    flow_sum = flow_sum * flow_keep + q
    flow_weight = flow_weight * flow_keep + 1.0
    # Whole intervals with no event at all: (Q, dM) = (0, 0) each, folded in at once.
    empty = (ts_ns - end_ns) // interval_ns
    if empty > 0:
        keep_all = keep ** float(empty)
        added = (1.0 - keep_all) / (1.0 - keep) if keep < 1.0 else float(empty)
        sw = sw * keep_all + added
        sq *= keep_all
        sm *= keep_all
        sqq *= keep_all
        sqm *= keep_all
        flow_all = flow_keep ** float(empty)
        flow_sum *= flow_all
        flow_weight = flow_weight * flow_all + (
            (1.0 - flow_all) / (1.0 - flow_keep) if flow_keep < 1.0 else float(empty))
    end_ns += (empty + 1) * interval_ns
    return end_ns, 0.0, mid, sw, sq, sm, sqq, sqm, flow_sum, flow_weight


def kyle_coefficients(sw: float, sq: float, sm: float, sqq: float, sqm: float):
    """``(alpha, lambda)`` of Kyle's weighted fit from its sums; ``(0, 0)`` while the flow has no spread."""
    if sw <= 0.0:
        return 0.0, 0.0
    var_q = sw * sqq - sq * sq
    if var_q <= 1e-12 * max(sw * sqq, 1e-300):
        return (sm / sw if sw > 0 else 0.0), 0.0
    lam = (sw * sqm - sq * sm) / var_q
    return (sm - lam * sq) / sw, lam


def kyle_recent_flow(flow_sum: float, flow_weight: float) -> float:
    return flow_sum / flow_weight if flow_weight > 0.0 else 0.0


def kyle_impact(alpha: float, lam: float, recent_flow: float) -> float:
    """``alpha + lambda * Qbar``."""
    return alpha + lam * recent_flow


def intensity_add(ts_ns: int, last_ts: int, short: float, long: float, short_decay: float, long_decay: float):
    """:meth:`TradeIntensity.add`: returns ``(last_ts, short, long)``."""
    if last_ts != NO_TS and ts_ns > last_ts:
        dt = ts_ns - last_ts
        short *= math.exp(-short_decay * dt)
        long *= math.exp(-long_decay * dt)
    if last_ts == NO_TS or ts_ns > last_ts:
        last_ts = ts_ns
    return last_ts, short + 1.0, long + 1.0


def intensity_rates(ts_ns: int, last_ts: int, short: float, long: float, short_decay: float, long_decay: float):
    """:meth:`TradeIntensity.rates_per_s`: ``(short, long)`` trades per second as seen at ``ts_ns``."""
    if last_ts != NO_TS and ts_ns > last_ts:
        dt = ts_ns - last_ts
        short *= math.exp(-short_decay * dt)
        long *= math.exp(-long_decay * dt)
    return short * short_decay * 1e9, long * long_decay * 1e9


def intensity_log_ratio(short: float, long: float, floor_per_s: float) -> float:
    """``log((r_short + c) / (r_long + c))`` from the two rates (:func:`intensity_rates`)."""
    return math.log((short + floor_per_s) / (long + floor_per_s))


def scaler_update(mean, var, n: int, memory: float, x) -> None:
    """:meth:`FeatureScaler.update` in place, ``n`` the count including ``x``."""
    w = max(1.0 / n, 1.0 / memory)
    for i in range(len(x)):
        d = x[i] - mean[i]
        mean[i] += w * d
        var[i] = (1.0 - w) * (var[i] + w * d * d)


def scaler_transform(mean, var, n: int, clip: float, x, out) -> None:
    """:meth:`FeatureScaler.transform` of ``x`` into ``out``."""
    for i in range(len(x)):
        if n < 2:
            out[i] = 0.0
            continue
        s2 = var[i]
        z = (x[i] - mean[i]) / math.sqrt(s2) if s2 > 1e-24 else 0.0
        out[i] = clip if z > clip else -clip if z < -clip else z


def _ts(ts) -> int:
    return NO_TS if ts is None else ts


class VolumeBuckets(sigkit.LearnedState):
    """Exact-sign VPIN (Easley, Lopez de Prado & O'Hara 2012, with the aggressor side from the feed).

    Trade volume fills buckets of ``bucket_volume`` base units in arrival order; a trade that overflows a
    bucket is split, its remainder opening the next bucket with the same aggressor side.  Over the last
    ``n_buckets`` completed buckets ``tau`` (each of volume ``V``)::

        VPIN      = (1/n) * sum_tau |B_tau - S_tau| / V          in [0, 1]
        imbalance = (1/n) * sum_tau (B_tau - S_tau) / V          in [-1, 1]

    with ``B``/``S`` the aggressive buy/sell volume.  Before the first bucket completes both are 0; until
    ``n`` have, the mean runs over those that have.
    """

    def __init__(self, bucket_volume: float, n_buckets: int):
        if not bucket_volume > 0:
            raise ValueError(f"bucket_volume must be positive, got {bucket_volume}")
        if n_buckets < 1:
            raise ValueError(f"n_buckets must be at least 1, got {n_buckets}")
        self.bucket_volume = float(bucket_volume)
        self.n_buckets = int(n_buckets)
        self.buy = 0.0  # aggressive volume in the open bucket
        self.sell = 0.0
        self.completed: list[float] = []  # (B - S) / V of the last n completed buckets, newest last
        self._sum_signed = 0.0
        self._sum_abs = 0.0

    def add(self, side: int, size: float) -> None:
        """An aggressive trade of ``size`` base units, ``side`` +1 buy / -1 sell."""
        cap, n = self.bucket_volume, self.n_buckets
        left = size
        while left > 0.0:
            self.buy, self.sell, left, closed, signed = bucket_fill(self.buy, self.sell, side, left, cap, n)
            if closed:
                self._close(signed)

    def _close(self, signed: float) -> None:
        self.completed.append(signed)
        if len(self.completed) > self.n_buckets:
            del self.completed[0]
        # Re-summed exactly (n is small and buckets close every few seconds): no drift from running sums.
        n = len(self.completed)
        partials = [0.0] * n
        self._sum_signed = exact_sum(self.completed, 0, n, n, False, partials)
        self._sum_abs = exact_sum(self.completed, 0, n, n, True, partials)

    @property
    def vpin(self) -> float:
        n = len(self.completed)
        return self._sum_abs / n if n else 0.0

    @property
    def imbalance(self) -> float:
        n = len(self.completed)
        return self._sum_signed / n if n else 0.0


class SignSurprise(sigkit.LearnedState):
    """Trade-sign surprise against the sign's own lag-1 autocorrelation (METHODS.md 5.5).

    ``rho`` is an exponentially weighted mean of ``eps_i * eps_{i-1}`` over trades (half-life
    ``rho_halflife_trades`` trades, starting at 0); trade ``i``'s prediction is ``rho * eps_{i-1}``, with
    ``rho`` as it stood before trade ``i``, and its surprise ``u_i = eps_i - rho * eps_{i-1}``.  ``value()``
    is the time-decayed mean of the surprises (half-life ``halflife_ns``): a positive value means buyers
    have kept arriving more often than the sign's own persistence predicts.
    """

    def __init__(self, halflife_ns: int, rho_halflife_trades: float):
        self.decay_per_ns = LN2 / halflife_ns
        self.rho_keep = 0.5 ** (1.0 / rho_halflife_trades)
        self.rho = 0.0
        self._rho_weight = 0.0
        self._rho_sum = 0.0
        self.previous = 0
        self._sum = 0.0
        self._weight = 0.0
        self._ts = None

    def add(self, ts_ns: int, side: int) -> None:
        """A trade at ``ts_ns`` with aggressor ``side`` (+1/-1)."""
        (self._ts, self.previous, self._sum, self._weight, self.rho, self._rho_sum,
         self._rho_weight) = sign_surprise_add(ts_ns, side, _ts(self._ts), self.previous, self._sum, self._weight,
                                               self.rho, self._rho_sum, self._rho_weight, self.decay_per_ns,
                                               self.rho_keep)

    def value(self) -> float:
        """The decayed mean surprise (0 before any trade); a ratio of equally decayed sums, so the time
        since the last trade does not change it."""
        return self._sum / self._weight if self._weight > 0.0 else 0.0


class KyleLambda(sigkit.LearnedState):
    """Kyle's lambda from an exponentially weighted regression of mid changes on signed flow (METHODS.md 5.4).

    Time is cut into intervals of ``interval_ns`` aligned on the clock.  For each interval ``k``, ``Q_k`` is
    the signed flow (per trade ``side * f(size)``, ``f`` = size, its square root, or 1) and ``dM_k`` the
    change of the mid (bps of the mid at the interval's start) from its start to its end.  The fit is
    weighted least squares of ``dM_k = alpha + lambda * Q_k`` with interval weights halving every
    ``halflife_ns``; empty intervals count as ``(Q, dM) = (0, 0)`` (so quiet spells are seen).  An interval
    is used once the clock has passed its end.  ``impact()`` is the fit's prediction at the recent flow,
    ``alpha + lambda * Qbar``, where ``Qbar`` is the mean ``Q`` per interval decayed with the shorter
    ``flow_halflife_ns``: which way, and how far (bps per interval), the flow of the last moments is
    pushing the mid.  (With equal half-lives it would be the plain EW mean of ``dM``, an OLS identity.)
    """

    def __init__(self, interval_ns: int, halflife_ns: int, flow_halflife_ns: int, flow_measure: str = "volume"):
        if interval_ns <= 0:
            raise ValueError(f"interval_ns must be positive, got {interval_ns}")
        self.interval_ns = int(interval_ns)
        self.keep = 0.5 ** (interval_ns / halflife_ns)  # weight decay per interval
        self.flow_keep = 0.5 ** (interval_ns / flow_halflife_ns)
        if flow_measure not in ("volume", "sqrt_volume", "count"):
            raise ValueError(f"unknown flow_measure {flow_measure!r}")
        self.flow_measure = flow_measure
        self.end_ns = None  # end of the open interval
        self.flow = 0.0  # Q of the open interval
        self.mid = math.nan  # latest mid
        self.mid_open = math.nan  # mid at the open interval's start
        # Weighted sums over completed intervals: weight, Q, dM, Q^2, Q*dM.
        self.sw = self.sq = self.sm = self.sqq = self.sqm = 0.0
        self.flow_sum = self.flow_weight = 0.0

    def signed_flow(self, side: int, size: float) -> float:
        return kyle_signed_flow(side, size, FLOW_MEASURES.index(self.flow_measure))

    def advance(self, ts_ns: int) -> None:
        """Close every interval that ended at or before ``ts_ns`` (all events before it are in)."""
        if self.end_ns is not None and ts_ns < self.end_ns:
            return  # the open interval goes on
        (end_ns, self.flow, self.mid_open, self.sw, self.sq, self.sm, self.sqq, self.sqm, self.flow_sum,
         self.flow_weight) = kyle_advance(ts_ns, _ts(self.end_ns), self.interval_ns, self.flow, self.mid,
                                          self.mid_open, self.sw, self.sq, self.sm, self.sqq, self.sqm,
                                          self.flow_sum, self.flow_weight, self.keep, self.flow_keep)
        self.end_ns = end_ns

    def add_trade(self, ts_ns: int, side: int, size: float) -> None:
        self.advance(ts_ns)
        self.flow += self.signed_flow(side, size)

    def set_mid(self, ts_ns: int, mid: float) -> None:
        self.advance(ts_ns)
        if self.mid_open != self.mid_open:  # the first mid opens the current interval
            self.mid_open = mid
        self.mid = mid

    def coefficients(self) -> tuple[float, float]:
        """``(alpha, lambda)`` of the weighted fit; ``(0, 0)`` while the flow has no spread."""
        return kyle_coefficients(self.sw, self.sq, self.sm, self.sqq, self.sqm)

    @property
    def recent_flow(self) -> float:
        return kyle_recent_flow(self.flow_sum, self.flow_weight)

    def impact(self) -> float:
        """Fitted mid move (bps per interval) at the recent flow rate: ``alpha + lambda * Qbar``."""
        alpha, lam = self.coefficients()
        return kyle_impact(alpha, lam, self.recent_flow)


class TradeIntensity(sigkit.LearnedState):
    """Trade arrival rate at a short versus a long timescale: ``log((r_short + c) / (r_long + c))``.

    ``r_h`` is the exponentially decayed trade count with half-life ``h`` times ``ln 2 / h`` (trades per
    second in steady state); ``c`` (1/long half-life) keeps the ratio finite at the start.  Positive: trading
    is busier than usual.
    """

    def __init__(self, short_halflife_ns: int, long_halflife_ns: int):
        self.short_decay = LN2 / short_halflife_ns
        self.long_decay = LN2 / long_halflife_ns
        self.short = 0.0  # decayed counts
        self.long = 0.0
        self._ts = None
        self.floor_per_s = 1e9 / long_halflife_ns

    def add(self, ts_ns: int) -> None:
        self._ts, self.short, self.long = intensity_add(ts_ns, _ts(self._ts), self.short, self.long,
                                                        self.short_decay, self.long_decay)

    def rates_per_s(self, ts_ns: int) -> tuple[float, float]:
        """(short, long) rates in trades per second as seen at ``ts_ns``, without changing the state."""
        return intensity_rates(ts_ns, _ts(self._ts), self.short, self.long, self.short_decay, self.long_decay)

    def log_ratio(self, ts_ns: int) -> float:
        short, long = self.rates_per_s(ts_ns)
        return intensity_log_ratio(short, long, self.floor_per_s)
