"""Cross-asset lead-lag: a leader market's recent move, not yet repeated by the target, predicts the fill.

The model follows the mids of a leader market (another venue and/or asset) and of the target, each
recorded only when it changes (asynchronous ticks, never resampled).  Every ``reestimate`` of event
time it estimates how far the leader leads the target with the Hoffmann-Rosenbaum-Yoshida estimator:
the argmax over a lag grid of the shifted Hayashi-Yoshida cross-covariance of the two log-mid series
over the last ``window`` (:mod:`sigkit_cross_asset.leadlag`; METHODS.md §4; Hayashi & Yoshida 2005,
Bernoulli 11(2):359-379; Hoffmann, Rosenbaum & Yoshida 2013, Bernoulli 19(2):426-461).

At a fill at ``t`` with aggressor side ``a = -fill side`` and current lag estimate ``ϑ > 0``:

* ``L = (leader mid(t-) / leader mid(t - ϑ) - 1) · 1e4``: the leader's move (bps) over ``(t - ϑ, t]``,
  which a follower lagging by ϑ has not yet reflected;
* features ``a·tanh(L/s)`` and ``tanh(|L|/s)`` minus its running mean, with ``s`` the running RMS of ``L``
  at the fills, so they are of order 1 on any venue and bounded (see ``features``);
* optionally (``target_move: true``) also ``a·tanh(F/s)`` with ``F = (target mid(t-) / target mid(t - ϑ) - 1)
  · 1e4``, the target's own move over the same span.

An online logistic regression on top of the logit of the causal base rate (as in ``flow``) maps them to
P(adverse): ``a·L`` is the unreflected leader move in the direction of the fill's aggressor and ``|L|``
lets a large move raise the risk either way.  ``a·F`` lets the fit learn how much of the target's own
recent move already reflects the leader (a follower that partly reacts at once); it is off by default
because where the follower only repeats the leader ϑ later, ``F`` is the leader's move over
``(t - 2ϑ, t - ϑ]``, which says nothing about the future and only adds noise to the fit (and forcing
``L - F`` as one feature throws away half the recovered edge: docs/models/cross_asset.md).  With no
estimate yet, an estimate that does not put the leader ahead (ϑ ≤ 0), or one whose cross-covariance
at the lag is not significant (``|z| < min_z``, z the HY covariance over its standard error under
independence), the model returns the causal base rate itself with confidence 0: a leader unrelated to
the target must not feed noise to the fit.

The latest estimate is kept as ``model.estimate`` (:class:`LeadLagEstimate`: ``lag_ns``, the
correlation at the lag, the correlation at zero shift, the lead/lag ratio, the z-score); ``model.lag_ns``,
``model.correlation`` and ``model.lead_lag_ratio`` read it, and ``describe()`` puts it in the report.

The batch path (``on_batch``) runs the same hooks in a numba kernel (:mod:`sigkit_cross_asset.kernel`) on the
compiled twins of the same formulas (:mod:`sigkit_cross_asset.leadlag`), and makes each lead-lag estimate
with the same numpy code between two kernel calls, at the same point in event order, so its predictions and
state equal the per-event path's (bit for bit on every simulated world and the Binance recording checked).
"""

from __future__ import annotations

from bisect import bisect_right

import attrs
import numpy as np

import sigkit
from sigkit_cross_asset import kernel as _kernel
from sigkit_cross_asset.leadlag import (
    LeadLagEstimate, LeadLagGrid, cauchy_schwarz_bound, estimate_lead_lag, estimate_on_grid, hy_covariance_on_grid, hy_shifted_covariance, hy_shifted_covariance_brute,
    lead_lag_ratio, leader_step_mean, move_bps, shift_grid, squash_features,
)

__all__ = [
    "CrossAsset", "CrossAssetParams", "LeadLagEstimate", "cauchy_schwarz_bound", "estimate_lead_lag", "hy_covariance_on_grid",
    "hy_shifted_covariance", "hy_shifted_covariance_brute", "lead_lag_ratio", "shift_grid",
]


@attrs.frozen
class CrossAssetParams:
    leader_venue: str = sigkit.param("simlead", doc="venue of the leader market (the simulator's is 'simlead')")
    leader_symbol: str = sigkit.param("BTC-PERP", doc="symbol of the leader market")
    lag_max_ns: int = sigkit.duration("1s", doc="largest lag searched: the leader ahead of the target by this much")
    lead_max_ns: int = sigkit.duration(
        "1s", doc="largest lead searched on the other side: the grid starts at minus this, so a target "
                  "that leads shows as a negative lag")
    lag_step_ns: int = sigkit.duration("10ms", doc="step of the lag grid (the estimate's resolution)")
    window_ns: int = sigkit.duration("5m", doc="rolling window of mid changes the lag is estimated on")
    reestimate_ns: int = sigkit.duration("5s", doc="event time between two lag estimates")
    min_changes: int = sigkit.param(
        100, doc="mid changes each market needs in the window before the first estimate", unit="changes")
    min_z: float = sigkit.param(
        5.0, doc="smallest |z-score| of the cross-covariance at the lag for the estimate to be used "
                 "(below it the model returns the base rate)")
    target_move: bool = sigkit.param(
        False, doc="also feed the target's own move over the estimated lag, so the fit can learn how much "
                   "of the leader's move it already reflects")
    learning_rate: float = sigkit.param(0.02, doc="SGD step of the online logistic fit")
    l2: float = sigkit.param(0.0, doc="L2 penalty of the online logistic fit")
    evidence: float = sigkit.param(200.0, doc="outcomes after which confidence reaches 0.5", unit="outcomes")



class _MidTicks(sigkit.LearnedState):
    """The times and mids of one market's mid changes, kept for a rolling span (O(1) amortised per tick)."""

    def __init__(self, keep_ns: int):
        self.keep_ns = keep_ns
        self.ts: list[int] = []
        self.mid: list[float] = []
        self.start = 0  # entries before this index are expired

    def add(self, ts_ns: int, mid: float) -> bool:
        """Record ``mid`` at ``ts_ns`` if it changed; True if it did."""
        if self.mid and mid == self.mid[-1]:
            return False
        self.ts.append(ts_ns)
        self.mid.append(mid)
        oldest_needed = ts_ns - self.keep_ns
        ts, start = self.ts, self.start
        while start < len(ts) - 1 and ts[start + 1] <= oldest_needed:  # keep the mid in force then
            start += 1
        if start > 1024 and start > len(ts) // 2:
            del self.ts[:start], self.mid[:start]
            start = 0
        self.start = start
        return True

    @property
    def last(self) -> float:
        return self.mid[-1]

    def at(self, ts_ns: int) -> float:
        """The mid in force at ``ts_ns`` (the last change at or before it; the oldest kept one if none)."""
        k = bisect_right(self.ts, ts_ns, self.start) - 1
        return self.mid[max(k, self.start)]

    def since(self, ts_ns: int) -> tuple[np.ndarray, np.ndarray]:
        """Times and mids of the changes at or after ``ts_ns``."""
        k = bisect_right(self.ts, ts_ns - 1, self.start)
        return np.array(self.ts[k:], dtype=np.int64), np.array(self.mid[k:], dtype=float)


class CrossAsset(sigkit.LearnedState):
    """HRY lead-lag estimate of a leader market, and its unreflected move fed to an online logistic fit."""

    def __init__(self, params: CrossAssetParams, context: sigkit.RunContext):
        # Checked here rather than in the params class: an error from the factory reaches the user as a
        # one-line "could not be built" message, one from the params constructor as a traceback.
        if params.lag_step_ns <= 0:
            raise ValueError("lag_step must be positive")
        if params.window_ns <= 0 or params.reestimate_ns <= 0:
            raise ValueError("window and reestimate must be positive")
        if params.min_changes < 2:
            raise ValueError("min_changes must be at least 2")
        self.params = params
        self.target = context.target
        self.leader = sigkit.Market(params.leader_venue, params.leader_symbol)
        if self.leader == self.target:
            raise ValueError(f"the leader market {self.leader} is the target itself")
        self.shifts_ns = shift_grid(params.lead_max_ns, params.lag_max_ns, params.lag_step_ns)
        # The grid prepared for the estimates, with the array it was made from (not state: rebuilt from
        # shifts_ns, e.g. after a checkpoint replaced that array).
        self._grid = (self.shifts_ns, LeadLagGrid(self.shifts_ns))
        keep_ns = params.window_ns + params.lag_max_ns
        self.leader_ticks = _MidTicks(keep_ns)
        self.target_ticks = _MidTicks(keep_ns)
        self.leader_step_bps = 0.0  # running mean |leader mid change| in bps (reported; gates the features)
        self.n_leader_steps = 0
        # Running moments of the leader's move over the lag at the fills the features are computed for:
        # the features are in units of its RMS, and |L| is centred on its mean (see ``features``).
        self.n_moves = 0
        self.move_sq_bps2 = 0.0
        self.mean_size = 0.0  # running mean of tanh(|L| / s), which centres the size feature
        self.next_estimate_ns: int | None = None
        self.estimate: LeadLagEstimate | None = None
        self.n_estimates = 0
        self.model = sigkit.OnlineLogistic(3 if params.target_move else 2, learning_rate=params.learning_rate, l2=params.l2,
                                           intercept_learning_rate=0.0)
        self.base_rate = sigkit.RunningBaseRate()
        self.cost = sigkit.ConditionalCost()
        self.pending = sigkit.PendingFills()  # fill -> (features, offset)
        self.slots = sigkit.FillSlots(self.n_features + 1)  # the batch path's memory of each fill: features, offset

    @property
    def n_features(self) -> int:
        return 3 if self.params.target_move else 2

    # -- learned state (checkpoints) -----------------------------------------------------------------

    STATE_EXCLUDE = ("params", "target", "leader", "estimate", "_grid")  # the estimate is a frozen record: saved apart

    def state_dict(self) -> dict:
        state = super().state_dict()
        e = self.estimate
        state["estimate"] = None if e is None else {
            **{f: getattr(e, f) for f in attrs.fields_dict(LeadLagEstimate) if f not in ("shifts_ns", "rho")},
            "shifts_ns": list(e.shifts_ns), "rho": list(e.rho)}
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._grid = (self.shifts_ns, LeadLagGrid(self.shifts_ns))
        e = state.get("estimate")
        self.estimate = None if e is None else LeadLagEstimate(
            **{**e, "shifts_ns": tuple(e["shifts_ns"]), "rho": tuple(e["rho"])})

    # -- the current estimate ------------------------------------------------------------------------

    @property
    def lag_ns(self) -> int | None:
        return None if self.estimate is None else self.estimate.lag_ns

    @property
    def correlation(self) -> float | None:
        return None if self.estimate is None else self.estimate.correlation

    @property
    def lead_lag_ratio(self) -> float | None:
        return None if self.estimate is None else self.estimate.lead_lag_ratio

    @property
    def estimate_in_use(self) -> bool:
        """Is the current estimate one the model acts on (leader ahead, significant)?"""
        e = self.estimate
        return e is not None and e.lag_ns > 0 and abs(e.z_score) >= self.params.min_z

    def describe(self) -> dict:
        """The latest lead-lag estimate and the fitted weights (recorded in the report)."""
        e = self.estimate
        out = {"leader": str(self.leader), "n_estimates": self.n_estimates, "estimate_in_use": self.estimate_in_use,
               "leader_step_bps": self.leader_step_bps, "weights": list(self.model.weights),
               "n_updates": self.model.n_updates}
        if e is not None:
            out.update(lag=sigkit.format_duration(e.lag_ns) if e.lag_ns >= 0 else "-" + sigkit.format_duration(-e.lag_ns),
                       lag_ns=e.lag_ns, correlation=e.correlation, correlation_at_zero=e.correlation_at_zero,
                       lead_lag_ratio=e.lead_lag_ratio, z_score=e.z_score, n_leader_changes=e.n_leader,
                       n_target_changes=e.n_follower, estimated_at_ns=e.ts_ns,
                       curve={"shifts_ns": list(e.shifts_ns), "correlation": list(e.rho)})
        return out

    # -- market events -------------------------------------------------------------------------------

    def on_book_update(self, book: sigkit.BookUpdate) -> None:
        venue, symbol = book.venue, book.symbol
        if venue == self.leader.venue and symbol == self.leader.symbol:
            ticks = self.leader_ticks
        elif venue == self.target.venue and symbol == self.target.symbol:
            ticks = self.target_ticks
        else:
            return
        mid = 0.5 * (book.bid_px + book.ask_px)
        if not mid > 0:  # an empty or crossed-out side
            return
        previous = ticks.mid[-1] if ticks.mid else None
        if not ticks.add(book.ts_ns, mid):
            return
        if ticks is self.leader_ticks and previous is not None:
            self.n_leader_steps += 1
            self.leader_step_bps = leader_step_mean(self.leader_step_bps, previous, mid, self.n_leader_steps)
        if self.next_estimate_ns is None:
            self.next_estimate_ns = book.ts_ns + self.params.reestimate_ns
        elif book.ts_ns >= self.next_estimate_ns:
            self._reestimate(book.ts_ns)

    def _reestimate(self, now_ns: int) -> None:
        """HRY over the mid changes of the last ``window`` (everything seen up to ``now_ns``)."""
        self.next_estimate_ns = now_ns + self.params.reestimate_ns
        since = now_ns - self.params.window_ns
        x_ts, x = self.leader_ticks.since(since)
        y_ts, y = self.target_ticks.since(since)
        if min(len(x), len(y)) - 1 < self.params.min_changes:
            return
        self._estimate(now_ns, x_ts, x, y_ts, y)

    def _estimate(self, now_ns: int, x_ts: np.ndarray, x: np.ndarray, y_ts: np.ndarray, y: np.ndarray) -> None:
        """HRY on the leader's and the target's mid changes of the window (both paths call this, at the
        same points in event order)."""
        source, grid = self._grid
        if source is not self.shifts_ns:
            grid = LeadLagGrid(self.shifts_ns)
            self._grid = (self.shifts_ns, grid)
        estimate = estimate_on_grid(grid, x_ts, np.log(x), y_ts, np.log(y), now_ns)
        if estimate is not None:
            self.estimate = estimate
            self.n_estimates += 1

    # -- fills ---------------------------------------------------------------------------------------

    def observe_fill(self, query: sigkit.FillQuery) -> list[float] | None:
        """Take in a fill: update the running moments of the leader's move and return the features
        ``[a·tanh(L/s), tanh(|L|/s) - its running mean]`` (and ``a·tanh(F/s)``), or None while the leader is
        not known to lead.  Not a pure getter: call it once per fill (``predict`` does).

        ``s`` is the running RMS of ``L`` over the fills seen so far, this one included (known at the fill,
        so causal).  On the simulator the leader moves one tick at a time and ``L`` is about one leader step;
        on real venues the move over the lag is many steps and heavy-tailed (COIN-M: |L|/u was 26 at the
        90th percentile), and constant-step SGD on features that large diverges into
        confident wrong answers.  Centring ``|L|`` keeps it from acting as an intercept against the offset.
        """
        if not self.estimate_in_use or not self.leader_step_bps > 0:
            return None
        estimate = self.estimate
        then = query.ts_ns - estimate.lag_ns
        a = -query.side
        leader_move = move_bps(self.leader_ticks.last, self.leader_ticks.at(then))
        if self.params.target_move:
            target_move = move_bps(self.target_ticks.last, self.target_ticks.at(then))
            x = [0.0, 0.0, 0.0]
        else:
            target_move = 0.0
            x = [0.0, 0.0]
        self.n_moves, self.move_sq_bps2, self.mean_size = squash_features(
            leader_move, target_move, a, self.n_moves, self.move_sq_bps2, self.mean_size, x)
        return x

    def predict(self, query: sigkit.FillQuery) -> sigkit.Prediction:
        x = self.observe_fill(query)
        if x is None:
            p = self.base_rate.rate
            return sigkit.Prediction(p, 0.0, self.cost.expected(p))
        offset = sigkit.logit(self.base_rate.rate)
        self.pending.put(query, (x, offset))
        p = self.model.predict(x, offset)
        return sigkit.Prediction(p, sigkit.evidence_confidence(self.model.n_updates, self.params.evidence),
                                 self.cost.expected(p))

    def record_outcome(self, outcome: sigkit.Outcome) -> None:
        entry = self.pending.pop(outcome.fill)
        if entry is not None:
            self.model.update(entry[0], 1.0 if outcome.was_adverse else 0.0, entry[1])
        self.base_rate.update(outcome.was_adverse, outcome.fill.ts_ns)
        self.cost.update(outcome.was_adverse, outcome.realized_as_bps)

    # -- the batch path ------------------------------------------------------------------------------

    def on_batch(self, batch: sigkit.Batch) -> sigkit.BatchPredictions:
        """The per-event hooks over a whole batch, compiled (:mod:`sigkit_cross_asset.kernel`); the lead-lag
        estimate is made here, between two kernel calls, where the per-event path makes it."""
        out = np.empty((3, batch.n_queries))
        self.slots.ensure(batch)
        k = _kernel
        leader = batch.markets.code(self.leader.venue, self.leader.symbol)
        target = batch.markets.code(self.target.venue, self.target.symbol)
        books = batch.kind == sigkit.BOOK
        market = batch.market
        l_ts, l_mid, l_n = _tick_arrays(self.leader_ticks, int(np.count_nonzero(books & (market == leader))))
        t_ts, t_mid, t_n = _tick_arrays(self.target_ticks, int(np.count_nonzero(books & (market == target))))
        model, rate, cost, e = self.model, self.base_rate, self.cost, self.estimate
        fstate = np.zeros(k.N_FSTATE)
        fstate[[k.F_STEP, k.F_MOVE_SQ, k.F_MEAN_SIZE, k.F_INTERCEPT, k.F_ADVERSE, k.F_TOTAL, k.F_COST_GOOD,
                k.F_COST_BAD]] = [self.leader_step_bps, self.move_sq_bps2, self.mean_size, model.intercept,
                                  rate._adverse, rate._total, cost._sum[0], cost._sum[1]]
        istate = np.zeros(k.N_ISTATE, dtype=np.int64)
        istate[[k.I_LEADER_STEPS, k.I_MOVES, k.I_RATE_N, k.I_COST_N_GOOD, k.I_COST_N_BAD, k.I_UPDATES,
                k.I_LEADER_N, k.I_TARGET_N]] = [self.n_leader_steps, self.n_moves, rate.n, cost._n[0], cost._n[1],
                                                model.n_updates, l_n, t_n]
        if self.next_estimate_ns is not None:
            istate[k.I_NEXT_ESTIMATE], istate[k.I_HAS_NEXT] = self.next_estimate_ns, 1
        if rate._last_ts is not None:
            istate[k.I_RATE_LAST], istate[k.I_HAS_RATE_LAST] = rate._last_ts, 1
        if e is not None:
            istate[k.I_LAG], istate[k.I_HAS_ESTIMATE], fstate[k.F_Z] = e.lag_ns, 1, e.z_score
        params = self.params
        iparams = np.array([self.leader_ticks.keep_ns, params.reestimate_ns, params.window_ns, params.min_changes],
                           dtype=np.int64)
        fparams = np.array([params.min_z, model.learning_rate, model.l2, model.intercept_learning_rate,
                            params.evidence])
        weights = np.array(model.weights, dtype=float)
        cols = (batch.op, batch.ref, batch.kind, market, batch.ts, batch.column("bid_px"), batch.column("ask_px"),
                batch.q_ts, batch.q_side, batch.q_fill, batch.o_fill, batch.o_ts, batch.o_adverse,
                batch.o_realized_bps, leader, target, l_ts, l_mid, t_ts, t_mid, iparams, fparams, fstate, istate,
                weights, self.slots.values, self.slots.owner, out)
        begin = 0
        while True:
            at = k.cross_asset_kernel(begin, *cols)
            if at < 0:
                break
            kx, ky = int(istate[k.I_SINCE_LEADER]), int(istate[k.I_SINCE_TARGET])
            ln, tn = int(istate[k.I_LEADER_N]), int(istate[k.I_TARGET_N])
            self._estimate(int(batch.ts[batch.ref[at]]), l_ts[kx:ln], l_mid[kx:ln], t_ts[ky:tn], t_mid[ky:tn])
            e = self.estimate
            if e is not None:
                istate[k.I_LAG], istate[k.I_HAS_ESTIMATE], fstate[k.F_Z] = e.lag_ns, 1, e.z_score
            begin = at + 1
        _keep_ticks(self.leader_ticks, l_ts, l_mid, istate[k.I_LEADER_START], istate[k.I_LEADER_N])
        _keep_ticks(self.target_ticks, t_ts, t_mid, istate[k.I_TARGET_START], istate[k.I_TARGET_N])
        (self.leader_step_bps, self.move_sq_bps2, self.mean_size, model.intercept, rate._adverse, rate._total,
         *cost._sum) = fstate[:k.F_Z].tolist()
        (self.n_leader_steps, self.n_moves, next_estimate, has_next, rate.n, *cost._n, rate_last, has_rate_last,
         model.n_updates) = istate[:k.I_LAG].tolist()
        self.next_estimate_ns = next_estimate if has_next else None
        rate._last_ts = rate_last if has_rate_last else None
        model.weights = weights.tolist()
        return sigkit.BatchPredictions(out[0], out[1], out[2])


def _tick_arrays(ticks: _MidTicks, room: int) -> tuple[np.ndarray, np.ndarray, int]:
    """The live changes of ``ticks`` as arrays with ``room`` for more (the kernel's store of them)."""
    live = len(ticks.ts) - ticks.start
    ts = np.empty(live + room, dtype=np.int64)
    mid = np.empty(live + room)
    ts[:live] = ticks.ts[ticks.start:]
    mid[:live] = ticks.mid[ticks.start:]
    return ts, mid, live


def _keep_ticks(ticks: _MidTicks, ts: np.ndarray, mid: np.ndarray, start: int, n: int) -> None:
    """Back from the kernel's arrays: the live changes ``[start, n)``."""
    ticks.ts = ts[start:n].tolist()
    ticks.mid = mid[start:n].tolist()
    ticks.start = 0


@sigkit.hookimpl
def register_models(register):
    register(sigkit.ModelSpec(
        "cross_asset", CrossAsset, params=CrossAssetParams,
        description="leader market's move over its HRY-estimated lead, not yet reflected by the target"))
