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

The model keeps each market's mid changes, the estimator's sliding-window sums and the latest estimate in
numpy arrays (:mod:`sigkit_cross_asset.window`): the estimate is updated from the sums every ``reestimate``
rather than recomputed over the whole window.  ``model.estimate`` is a :class:`LeadLagEstimate` built from
them when read (``lag_ns``, the correlation at the lag, the correlation at zero shift, the lead/lag ratio,
the z-score, the correlation curve); ``model.lag_ns``, ``model.correlation`` and ``model.lead_lag_ratio`` read
the arrays, and ``describe()`` puts the estimate in the report.

The batch path (``on_batch``) runs the same hooks in one numba kernel call per batch
(:mod:`sigkit_cross_asset.kernel`) on the compiled twins of the same formulas and on the same arrays; each
lead-lag estimate is made inside the kernel by the compiled estimator the per-event path calls, so its
predictions and state equal the per-event path's bit for bit.
"""

from __future__ import annotations

import attrs
import numpy as np

import sigkit
from sigkit_cross_asset import kernel as _kernel, window as _window
from sigkit_cross_asset.leadlag import (
    LeadLagEstimate, LeadLagGrid, cauchy_schwarz_bound, estimate_lead_lag, hy_covariance_on_grid, hy_shifted_covariance,
    hy_shifted_covariance_brute, lead_lag_ratio, leader_step_mean, move_bps, shift_grid, squash_features,
)
from sigkit_cross_asset.leadlag import _ratio_numbers
from sigkit_cross_asset.window import estimate_due, mid_at, record_tick

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



class CrossAsset(sigkit.LearnedState):
    """HRY lead-lag estimate of a leader market, and its unreflected move fed to an online logistic fit."""

    STATE_VERSION = 2  # 1: the changes in lists (_MidTicks), the estimate as a record, no sliding-window sums

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
        self._prepare_grid()
        # The mid changes of the leader (row 0) and the target (row 1), and the estimator's state and last
        # estimate (sigkit_cross_asset.window): one set of arrays for both paths.
        self.tick_ts = np.zeros((2, 0), dtype=np.int64)
        self.tick_mid = np.zeros((2, 0))
        self.tick_log = np.zeros((2, 0))
        self.wstate = np.zeros(_window.N_WSTATE, dtype=np.int64)
        self.west = np.zeros(_window.N_WEST)
        self.rho = np.zeros(len(self.shifts_ns))  # the correlation curve of the last estimate
        self.acc = np.zeros((4, len(self.shifts_ns) + 1))  # run-start/run-end bins of U and V
        self.leader_step_bps = 0.0  # running mean |leader mid change| in bps (reported; gates the features)
        self.n_leader_steps = 0
        # Running moments of the leader's move over the lag at the fills the features are computed for:
        # the features are in units of its RMS, and |L| is centred on its mean (see ``features``).
        self.n_moves = 0
        self.move_sq_bps2 = 0.0
        self.mean_size = 0.0  # running mean of tanh(|L| / s), which centres the size feature
        self.model = sigkit.OnlineLogistic(3 if params.target_move else 2, learning_rate=params.learning_rate, l2=params.l2,
                                           intercept_learning_rate=0.0)
        self.base_rate = sigkit.RunningBaseRate()
        self.cost = sigkit.ConditionalCost()
        self.pending = sigkit.PendingFills()  # fill -> (features, offset)
        self.slots = sigkit.FillSlots(self.n_features + 1)  # the batch path's memory of each fill: features, offset

    def _prepare_grid(self) -> None:
        """The grid of ``shifts_ns`` prepared for the estimator, and the estimator's integer settings (not
        state: rebuilt from ``shifts_ns`` and the params, e.g. after a checkpoint)."""
        grid = LeadLagGrid(self.shifts_ns)
        if not grid.compiled:
            raise ValueError("the lag grid's bounds are out of range")
        params = self.params
        self._grid = grid
        self._ratio_of = None  # (curve bytes, its lead/lag ratio)
        self._rebuild_every = -(-params.window_ns // params.reestimate_ns)
        self._iparams = np.array([params.window_ns + params.lag_max_ns, params.reestimate_ns, params.window_ns,
                                  params.min_changes, grid.first, grid.step, grid.n, grid.zero, self._rebuild_every],
                                 dtype=np.int64)

    @property
    def n_features(self) -> int:
        return 3 if self.params.target_move else 2

    @property
    def n_estimates(self) -> int:
        return int(self.wstate[_window.N_ESTIMATES])

    @property
    def next_estimate_ns(self) -> int | None:
        return int(self.wstate[_window.NEXT]) if self.wstate[_window.HAS_NEXT] else None

    # -- learned state (checkpoints) -----------------------------------------------------------------

    STATE_EXCLUDE = ("params", "target", "leader", "_grid", "_ratio_of", "_rebuild_every", "_iparams")

    def state_dict(self) -> dict:
        """The learned state, with the tick stores cut to the changes held (and nothing past them), so
        the saved state does not depend on how much room the arrays had."""
        state = super().state_dict()
        w = self.wstate
        n = [int(w[r * _window.ROW + _window.N]) for r in (0, 1)]
        logged = [int(w[r * _window.ROW + _window.LOGGED]) for r in (0, 1)]
        width = max(n)
        saved = state["attrs"]
        for name, ends in (("tick_ts", n), ("tick_mid", n), ("tick_log", [min(a, b) for a, b in zip(logged, n)])):
            array = np.zeros((2, width), dtype=getattr(self, name).dtype)
            for r in (0, 1):
                array[r, :ends[r]] = getattr(self, name)[r, :ends[r]]
            saved[name] = array
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._prepare_grid()

    # -- the current estimate ------------------------------------------------------------------------

    @property
    def estimate(self) -> LeadLagEstimate | None:
        """The latest estimate (built from the estimator's state arrays when read)."""
        w, e = self.wstate, self.west
        if not w[_window.HAS_ESTIMATE]:
            return None
        return LeadLagEstimate(
            lag_ns=int(w[_window.LAG]), correlation=float(e[_window.CORR]),
            correlation_at_zero=float(e[_window.CORR_ZERO]), lead_lag_ratio=self._ratio(),
            z_score=float(e[_window.Z]), n_leader=int(w[_window.N_LEADER]), n_follower=int(w[_window.N_FOLLOWER]),
            ts_ns=int(w[_window.TS]), shifts_ns=self._grid.shifts_tuple, rho=tuple(self.rho.tolist()))

    @estimate.setter
    def estimate(self, e: LeadLagEstimate | None) -> None:
        """Put an estimate in place of the current one (what-if analysis, tests): its curve is kept if it is
        on the model's grid (else NaN), the lead/lag ratio is that of the curve, and a missing ``ts_ns`` reads
        back as 0."""
        w, f = self.wstate, self.west
        if e is None:
            w[_window.HAS_ESTIMATE] = 0
            return
        w[_window.HAS_ESTIMATE], w[_window.LAG], w[_window.TS] = 1, e.lag_ns, e.ts_ns or 0
        w[_window.N_LEADER], w[_window.N_FOLLOWER] = e.n_leader, e.n_follower
        f[_window.Z], f[_window.CORR], f[_window.CORR_ZERO] = e.z_score, e.correlation, e.correlation_at_zero
        self.rho[:] = e.rho if len(e.rho) == len(self.rho) else np.nan

    @property
    def lag_ns(self) -> int | None:
        return int(self.wstate[_window.LAG]) if self.wstate[_window.HAS_ESTIMATE] else None

    @property
    def correlation(self) -> float | None:
        return float(self.west[_window.CORR]) if self.wstate[_window.HAS_ESTIMATE] else None

    @property
    def lead_lag_ratio(self) -> float | None:
        return self._ratio() if self.wstate[_window.HAS_ESTIMATE] else None

    def _ratio(self) -> float:
        """The lead/lag ratio of the current curve (:func:`lead_lag_ratio`, made when asked for and kept
        until the curve changes)."""
        key = self.rho.tobytes()
        if self._ratio_of is None or self._ratio_of[0] != key:
            # The compiled _ratio_of_squares (C pow squares, left-to-right sums), on the grid's prepared pairs.
            g = self._grid
            self._ratio_of = (key, float(_ratio_numbers(self.rho, g.lead_idx, g.lag_idx)))
        return self._ratio_of[1]

    @property
    def estimate_in_use(self) -> bool:
        """Is the current estimate one the model acts on (leader ahead, significant)?"""
        w = self.wstate
        return bool(w[_window.HAS_ESTIMATE] and w[_window.LAG] > 0 and abs(self.west[_window.Z]) >= self.params.min_z)

    def describe(self) -> dict:
        """The latest lead-lag estimate and the fitted weights (recorded in the report)."""
        out = {"leader": str(self.leader), "n_estimates": self.n_estimates, "estimate_in_use": self.estimate_in_use,
               "leader_step_bps": self.leader_step_bps, "weights": list(self.model.weights),
               "n_updates": self.model.n_updates}
        w, e = self.wstate, self.west
        if w[_window.HAS_ESTIMATE]:  # the fields of self.estimate, read from the arrays without building it
            lag_ns = int(w[_window.LAG])
            out.update(lag=sigkit.format_duration(lag_ns) if lag_ns >= 0 else "-" + sigkit.format_duration(-lag_ns),
                       lag_ns=lag_ns, correlation=float(e[_window.CORR]), correlation_at_zero=float(e[_window.CORR_ZERO]),
                       lead_lag_ratio=self._ratio(), z_score=float(e[_window.Z]), n_leader_changes=int(w[_window.N_LEADER]),
                       n_target_changes=int(w[_window.N_FOLLOWER]), estimated_at_ns=int(w[_window.TS]),
                       curve={"shifts_ns": list(self._grid.shifts_tuple), "correlation": self.rho.tolist()})
        return out

    # -- market events -------------------------------------------------------------------------------

    def _make_room(self, leader: int, target: int) -> None:
        """Grow the tick stores so the leader's row has room for ``leader`` more changes, the target's for
        ``target``."""
        w = self.wstate
        need = max(int(w[_window.N]) + leader, int(w[_window.ROW + _window.N]) + target)
        have = self.tick_ts.shape[1]
        if need <= have:
            return
        size = max(need, 2 * have, 1024)
        for name in ("tick_ts", "tick_mid", "tick_log"):
            old = getattr(self, name)
            new = np.zeros((2, size), dtype=old.dtype)
            new[:, :have] = old
            setattr(self, name, new)

    def on_book_update(self, book: sigkit.BookUpdate) -> None:
        venue, symbol = book.venue, book.symbol
        if venue == self.leader.venue and symbol == self.leader.symbol:
            row = 0
        elif venue == self.target.venue and symbol == self.target.symbol:
            row = 1
        else:
            return
        mid = 0.5 * (book.bid_px + book.ask_px)
        if not mid > 0:  # an empty or crossed-out side
            return
        w = self.wstate
        n = int(w[row * _window.ROW + _window.N])
        if n >= self.tick_ts.shape[1]:
            self._make_room(1, 1)
        previous = float(self.tick_mid[0, n - 1]) if row == 0 and n > 0 else None
        if not record_tick(self.tick_ts, self.tick_mid, self.tick_log, w, row, book.ts_ns, mid, int(self._iparams[0])):
            return
        if previous is not None:
            self.n_leader_steps += 1
            self.leader_step_bps = leader_step_mean(self.leader_step_bps, previous, mid, self.n_leader_steps)
        if estimate_due(w, book.ts_ns, self.params.reestimate_ns):
            self._reestimate(book.ts_ns)

    def _reestimate(self, now_ns: int) -> None:
        """HRY over the mid changes of the last ``window`` (everything seen up to ``now_ns``): the compiled
        estimator the batch kernel calls too (:func:`sigkit_cross_asset.window.reestimate`)."""
        g, p = self._grid, self.params
        _window.reestimate(now_ns, self.tick_ts, self.tick_mid, self.tick_log, self.wstate, self.west, self.rho,
                           self.acc, g.first, g.step, g.n, g.zero, p.window_ns, p.min_changes, self._rebuild_every)

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
        w, ts, mids = self.wstate, self.tick_ts, self.tick_mid
        then = query.ts_ns - int(w[_window.LAG])
        a = -query.side
        n = int(w[_window.N])
        leader_move = move_bps(float(mids[0, n - 1]), float(mid_at(ts[0], mids[0], int(w[_window.START]), n, then)))
        if self.params.target_move:
            n = int(w[_window.ROW + _window.N])
            start = int(w[_window.ROW + _window.START])
            target_move = move_bps(float(mids[1, n - 1]), float(mid_at(ts[1], mids[1], start, n, then)))
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
        """The per-event hooks over a whole batch in one compiled call (:mod:`sigkit_cross_asset.kernel`), on
        the same tick stores and estimator state."""
        out = np.empty((3, batch.n_queries))
        self.slots.ensure(batch)
        k = _kernel
        leader = batch.markets.code(self.leader.venue, self.leader.symbol)
        target = batch.markets.code(self.target.venue, self.target.symbol)
        w = self.wstate
        if max(int(w[_window.N]), int(w[_window.ROW + _window.N])) + len(batch.op) >= self.tick_ts.shape[1]:
            # Room for a change at every step might be missing: count the book updates of the two markets
            # among the batch's steps (an empty batch, the engine's warm-up, counts too, so the counter is
            # loaded before the replay).  The room the stores have is not state: state_dict() cuts them.
            self._make_room(*k.count_batch_books(batch.op, batch.ref, batch.kind, batch.market, leader, target))
        if not len(batch.op):  # (the warm-up: load describe()'s compiled lead/lag ratio too)
            self._ratio()
        model, rate, cost = self.model, self.base_rate, self.cost
        fstate = np.array([self.leader_step_bps, self.move_sq_bps2, self.mean_size, model.intercept, rate._adverse,
                           rate._total, cost._sum[0], cost._sum[1]], dtype=float)
        istate = np.array([self.n_leader_steps, self.n_moves, rate.n, cost._n[0], cost._n[1],
                           0 if rate._last_ts is None else rate._last_ts, rate._last_ts is not None,
                           model.n_updates], dtype=np.int64)
        params = self.params
        fparams = np.array([params.min_z, model.learning_rate, model.l2, model.intercept_learning_rate,
                            params.evidence])
        weights = np.array(model.weights, dtype=float)
        k.cross_asset_kernel(batch.op, batch.ref, batch.kind, batch.market, batch.ts, batch.column("bid_px"),
                             batch.column("ask_px"), batch.q_ts, batch.q_side, batch.q_fill, batch.o_fill, batch.o_ts,
                             batch.o_adverse, batch.o_realized_bps, leader, target, self.tick_ts, self.tick_mid,
                             self.tick_log, self.wstate, self.west, self.rho, self.acc, self._iparams, fparams, fstate, istate, weights, self.slots.values, self.slots.owner, out)
        (self.leader_step_bps, self.move_sq_bps2, self.mean_size, model.intercept, rate._adverse, rate._total,
         *cost._sum) = fstate.tolist()
        (self.n_leader_steps, self.n_moves, rate.n, *cost._n, rate_last, has_rate_last,
         model.n_updates) = istate.tolist()
        rate._last_ts = rate_last if has_rate_last else None
        model.weights = weights.tolist()
        return sigkit.BatchPredictions(out[0], out[1], out[2])


@sigkit.hookimpl
def register_models(register):
    register(sigkit.ModelSpec(
        "cross_asset", CrossAsset, params=CrossAssetParams,
        description="leader market's move over its HRY-estimated lead, not yet reflected by the target"))
