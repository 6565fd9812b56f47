"""The four pre-fill flow statistics of PreFillToxicity, each an O(1)-per-event online tracker.

Every tracker is fed the target market's events in time order and can be read at any later time; none of
them ever looks at an event after the time it is read at.  Plain Python floats throughout: these run on
every trade and book update.
"""

from __future__ import annotations

import math

import sigkit

LN2 = math.log(2.0)


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
        cap = self.bucket_volume
        left = size
        while left > 0.0:
            room = cap - self.buy - self.sell
            if left < room:
                if side > 0:
                    self.buy += left
                else:
                    self.sell += left
                return
            if side > 0:  # the trade fills the open bucket: close it and open the next
                self.buy += room
            else:
                self.sell += room
            left -= room
            self._close((self.buy - self.sell) / cap)
            self.buy = self.sell = 0.0
            whole = int(left // cap)
            if whole > self.n_buckets:  # a huge print: only the last n of its one-sided buckets are kept
                left -= (whole - self.n_buckets) * cap

    def _close(self, signed: float) -> None:
        self.completed.append(signed)
        if len(self.completed) > self.n_buckets:
            del self.completed[0]
        # Re-summed (n is small and buckets close every few seconds): no drift from running sums.
        self._sum_signed = math.fsum(self.completed)
        self._sum_abs = math.fsum(abs(v) for v in self.completed)

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

    def _decay(self, ts_ns: int) -> float:
        if self._ts is None or ts_ns <= self._ts:
            return 1.0
        return math.exp(-self.decay_per_ns * (ts_ns - self._ts))

    def add(self, ts_ns: int, side: int) -> None:
        """A trade at ``ts_ns`` with aggressor ``side`` (+1/-1)."""
        keep = self._decay(ts_ns)
        surprise = side - self.rho * self.previous
        self._sum = self._sum * keep + surprise
        self._weight = self._weight * keep + 1.0
        self._ts = ts_ns if self._ts is None else max(self._ts, ts_ns)
        if self.previous:
            self._rho_sum = self._rho_sum * self.rho_keep + side * self.previous
            self._rho_weight = self._rho_weight * self.rho_keep + 1.0
            self.rho = self._rho_sum / self._rho_weight
        self.previous = side

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
        if self.flow_measure == "volume":
            return side * size
        if self.flow_measure == "sqrt_volume":
            return side * math.sqrt(size)
        return float(side)

    def advance(self, ts_ns: int) -> None:
        """Close every interval that ended at or before ``ts_ns`` (all events before it are in)."""
        if self.end_ns is None:
            self.end_ns = (ts_ns // self.interval_ns + 1) * self.interval_ns
            self.mid_open = self.mid
            return
        if ts_ns < self.end_ns:
            return
        self._close(self.flow, self.mid)
        # Whole intervals with no event at all: (Q, dM) = (0, 0) each, folded in at once.
        empty = (ts_ns - self.end_ns) // self.interval_ns
        if empty > 0:
            keep_all = self.keep ** empty
            added = (1.0 - keep_all) / (1.0 - self.keep) if self.keep < 1.0 else float(empty)
            self.sw = self.sw * keep_all + added
            self.sq *= keep_all
            self.sm *= keep_all
            self.sqq *= keep_all
            self.sqm *= keep_all
            flow_all = self.flow_keep ** empty
            self.flow_sum *= flow_all
            self.flow_weight = self.flow_weight * flow_all + (
                (1.0 - flow_all) / (1.0 - self.flow_keep) if self.flow_keep < 1.0 else float(empty))
        self.end_ns += (empty + 1) * self.interval_ns
        self.flow = 0.0
        self.mid_open = self.mid

    def _close(self, q: float, mid_close: float) -> None:
        if mid_close == mid_close and self.mid_open == self.mid_open and self.mid_open > 0.0:
            dm = (mid_close - self.mid_open) / self.mid_open * 1e4
        else:
            dm = 0.0
        k = self.keep
        self.sw = self.sw * k + 1.0
        self.sq = self.sq * k + q
        self.sm = self.sm * k + dm
        self.sqq = self.sqq * k + q * q
        self.sqm = self.sqm * k + q * dm
        self.flow_sum = self.flow_sum * self.flow_keep + q
        self.flow_weight = self.flow_weight * self.flow_keep + 1.0

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
        sw = self.sw
        if sw <= 0.0:
            return 0.0, 0.0
        var_q = sw * self.sqq - self.sq * self.sq
        if var_q <= 1e-12 * max(sw * self.sqq, 1e-300):
            return (self.sm / sw if sw > 0 else 0.0), 0.0
        lam = (sw * self.sqm - self.sq * self.sm) / var_q
        return (self.sm - lam * self.sq) / sw, lam

    @property
    def recent_flow(self) -> float:
        return self.flow_sum / self.flow_weight if self.flow_weight > 0.0 else 0.0

    def impact(self) -> float:
        """Fitted mid move (bps per interval) at the recent flow rate: ``alpha + lambda * Qbar``."""
        alpha, lam = self.coefficients()
        return alpha + lam * self.recent_flow


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
        self._decay_to(ts_ns)
        self.short += 1.0
        self.long += 1.0

    def _decay_to(self, ts_ns: int) -> None:
        if self._ts is not None and ts_ns > self._ts:
            dt = ts_ns - self._ts
            self.short *= math.exp(-self.short_decay * dt)
            self.long *= math.exp(-self.long_decay * dt)
        self._ts = ts_ns if self._ts is None else max(self._ts, ts_ns)

    def rates_per_s(self, ts_ns: int) -> tuple[float, float]:
        """(short, long) rates in trades per second as seen at ``ts_ns``, without changing the state."""
        short, long = self.short, self.long
        if self._ts is not None and ts_ns > self._ts:
            dt = ts_ns - self._ts
            short *= math.exp(-self.short_decay * dt)
            long *= math.exp(-self.long_decay * dt)
        return short * self.short_decay * 1e9, long * self.long_decay * 1e9

    def log_ratio(self, ts_ns: int) -> float:
        short, long = self.rates_per_s(ts_ns)
        return math.log((short + self.floor_per_s) / (long + self.floor_per_s))
