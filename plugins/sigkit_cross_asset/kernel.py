"""The batch path of ``cross_asset``: a numba kernel over a :class:`sigkit.Batch`, built on the compiled
twins of the model's formulas (:mod:`sigkit_cross_asset.leadlag`, :mod:`sigkit_cross_asset.window`) and of
:mod:`sigkit.learn`'s.

The kernel works on the model's own tick stores and estimator state (:mod:`sigkit_cross_asset.window`: the
arrays persist across calls, and the per-event hooks use the same ones), which the model sizes before each
call so they hold every change the batch can add.  A book update of either market goes through the twin of
:func:`~sigkit_cross_asset.window.record_tick`; when an estimate is due the kernel calls
:func:`~sigkit_cross_asset.window.reestimate`, the compiled function the per-event path calls, inline, so
the whole batch runs in one call.  The per-fill scalars (the leader's step, the running moments of its move,
the logistic fit, the base rate and the cost tracker) are packed into ``fstate``/``istate`` before the call
and unpacked after.
"""

from __future__ import annotations

import numpy as np

from sigkit import fast
from sigkit.batch import BOOK, EVENT, OUTCOME, QUERY
from sigkit_cross_asset import leadlag, window

leader_step_mean = fast.twin(leadlag.leader_step_mean)
move_bps = fast.twin(leadlag.move_bps)
squash_features = fast.twin(leadlag.squash_features)
mid_at = fast.twin(window.mid_at)
record_tick = fast.twin(window.record_tick)
estimate_due = fast.twin(window.estimate_due)

# Layout of the kernel's per-fill state arrays (the model packs and unpacks them).
# float64 ``fstate``:
F_STEP, F_MOVE_SQ, F_MEAN_SIZE, F_INTERCEPT, F_ADVERSE, F_TOTAL, F_COST_GOOD, F_COST_BAD = range(8)
N_FSTATE = 8
# int64 ``istate``:
(I_LEADER_STEPS, I_MOVES, I_RATE_N, I_COST_N_GOOD, I_COST_N_BAD, I_RATE_LAST, I_HAS_RATE_LAST,
 I_UPDATES) = range(8)
N_ISTATE = 8
# int64 ``iparams``: keep (ns), reestimate (ns), window (ns), min_changes, first shift (ns), shift step (ns),
# number of shifts, index of the shift nearest zero, rebuild_every.
# float64 ``fparams``: min_z, learning rate, l2, intercept learning rate, evidence.


@fast.kernel
def count_batch_books(op, ref, kind, market, leader, target):
    """How many book updates of the leader and of the target the batch's event steps deliver (the room the
    tick stores need for this call: a batch cut from a piece shares the piece's events, most not its own)."""
    n_leader = n_target = 0
    for i in range(op.size):
        if op[i] == EVENT:
            r = ref[i]
            book = kind[r] == BOOK
            n_leader += book & (market[r] == leader)
            n_target += book & (market[r] == target)
    return n_leader, n_target


@fast.kernel
def _find_right(ts, row, t, k, lo, hi):
    """``bisect_right(ts[row], t, lo, hi)`` (the rows are sorted), walking from ``k``, the answer for a nearby
    ``t``: :func:`~sigkit_cross_asset.window.mid_at`'s search without a view of the row."""
    if k > hi:
        k = hi
    if k < lo:  # (last: an empty range answers lo, as bisect does)
        k = lo
    while k < hi and ts[row, k] <= t:
        k += 1
    while k > lo and ts[row, k - 1] > t:
        k -= 1
    return k


@fast.kernel
def cross_asset_kernel(op, ref, kind, market, ts, bid_px, ask_px, q_ts, q_side, q_fill, o_fill, o_ts, o_adverse,
                       o_realized, leader, target, tick_ts, tick_mid, tick_log, wstate, west, rho, acc, iparams, fparams, fstate, istate, weights, slot_x, slot_owner, out):
    """CrossAsset over every schedule step of a batch."""
    keep_ns, reestimate_ns, window_ns, min_changes = iparams[0], iparams[1], iparams[2], iparams[3]
    first, step, n_shifts, zero, rebuild_every = iparams[4], iparams[5], iparams[6], iparams[7], iparams[8]
    min_z, lr, l2, intercept_lr, evidence = fparams[0], fparams[1], fparams[2], fparams[3], fparams[4]
    nf = weights.size
    x = np.zeros(nf)
    # The search for the mids in force at ``t - lag`` walks from the last answer (fills come in time order).
    hint0 = hint1 = 0
    for i in range(op.size):
        s = op[i]
        if s == EVENT:
            r = ref[i]
            if kind[r] != BOOK:
                continue
            m = market[r]
            if m == leader:
                row = 0
            elif m == target:
                row = 1
            else:
                continue
            value = 0.5 * (bid_px[r] + ask_px[r])
            if not value > 0:
                continue
            n = wstate[window.N]
            previous = tick_mid[0, n - 1] if row == 0 and n > 0 else 0.0
            t = ts[r]
            if not record_tick(tick_ts, tick_mid, tick_log, wstate, row, t, value, keep_ns):
                continue
            if row == 0 and n > 0:
                istate[I_LEADER_STEPS] += 1
                fstate[F_STEP] = leader_step_mean(fstate[F_STEP], previous, value, istate[I_LEADER_STEPS])
            if estimate_due(wstate, t, reestimate_ns):
                window.reestimate(t, tick_ts, tick_mid, tick_log, wstate, west, rho, acc, first, step, n_shifts,
                                  zero, window_ns, min_changes, rebuild_every)
        elif s == QUERY:
            q = ref[i]
            p_rate = fast.base_rate_value(fstate[F_ADVERSE], fstate[F_TOTAL], 1.0, 2.0)
            lag = wstate[window.LAG]
            if (wstate[window.HAS_ESTIMATE] != 0 and lag > 0 and abs(west[window.Z]) >= min_z
                    and fstate[F_STEP] > 0):
                then = q_ts[q] - lag
                a = -q_side[q]
                ln = wstate[window.N]
                hint0 = _find_right(tick_ts, 0, then, hint0, wstate[window.START], ln)
                leader_move = move_bps(tick_mid[0, ln - 1], tick_mid[0, max(hint0 - 1, wstate[window.START])])
                target_move = 0.0
                if nf > 2:
                    tn, ts0 = wstate[window.ROW + window.N], wstate[window.ROW + window.START]
                    hint1 = _find_right(tick_ts, 1, then, hint1, ts0, tn)
                    target_move = move_bps(tick_mid[1, tn - 1], tick_mid[1, max(hint1 - 1, ts0)])
                n_moves, fstate[F_MOVE_SQ], fstate[F_MEAN_SIZE] = squash_features(
                    leader_move, target_move, a, istate[I_MOVES], fstate[F_MOVE_SQ], fstate[F_MEAN_SIZE], x)
                istate[I_MOVES] = n_moves
                offset = fast.logit(p_rate)
                slot = fast.slot_put(slot_owner, q_fill[q])
                for k in range(nf):
                    slot_x[slot, k] = x[k]
                slot_x[slot, nf] = offset
                p = fast.sigmoid(fast.logistic_decision(weights, fstate[F_INTERCEPT], x, offset))
                out[0, q] = p
                out[1, q] = fast.evidence_confidence(istate[I_UPDATES], evidence)
            else:
                p = p_rate
                out[0, q] = p
                out[1, q] = 0.0
            out[2, q] = fast.expected_cost(p, fstate[F_COST_GOOD], istate[I_COST_N_GOOD], fstate[F_COST_BAD],
                                           istate[I_COST_N_BAD])
        elif s == OUTCOME:
            o = ref[i]
            adverse = o_adverse[o]
            slot = fast.slot_take(slot_owner, o_fill[o])
            if slot >= 0:
                for k in range(nf):
                    x[k] = slot_x[slot, k]
                offset = slot_x[slot, nf]
                error = fast.sigmoid(fast.logistic_decision(weights, fstate[F_INTERCEPT], x, offset)) - adverse
                fast.logistic_step(weights, x, error, lr, l2)
                fstate[F_INTERCEPT] -= intercept_lr * error
                istate[I_UPDATES] += 1
            # RunningBaseRate.update (no half-life) and ConditionalCost.update.
            istate[I_RATE_LAST] = o_ts[o]
            istate[I_HAS_RATE_LAST] = 1
            fstate[F_ADVERSE] += adverse
            fstate[F_TOTAL] += 1.0
            istate[I_RATE_N] += 1
            realized = o_realized[o]
            if realized == realized:  # noqa: PLR0124 (skips NaN, as ConditionalCost.update)
                k = 1 if adverse == 1.0 else 0
                fstate[F_COST_GOOD + k] += realized
                istate[I_COST_N_GOOD + k] += 1
