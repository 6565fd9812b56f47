"""The batch path of ``cross_asset``: a numba kernel over a :class:`sigkit.Batch`, built on the compiled
twins of the model's formulas (:mod:`sigkit_cross_asset.leadlag`) and of :mod:`sigkit.learn`'s.

The per-event model keeps each market's mid changes in a list (``_MidTicks``); the kernel keeps them in
numpy arrays with the same semantics: the live changes are ``[start, n)`` of ``ts``/``mid`` (the mid in
force ``keep`` before the latest change stays live), a change is recorded only when the mid moved, and
lookups are ``bisect_right`` from ``start``.  The model sizes the arrays before each call so they hold
every change the batch can add.

The lead-lag estimate itself (:func:`sigkit_cross_asset.leadlag.estimate_on_grid`: numpy's logs and BLAS
sums of squares, then one compiled call for the rest) is made by the model outside this kernel at exactly
the point in event order where the per-event path makes it: the kernel returns the index of the schedule
step that calls for it (with the window's first live change of each market), the model estimates on the
same arrays, and the kernel resumes at the next step.
"""

from __future__ import annotations

import numpy as np

from sigkit import fast
from sigkit.batch import BOOK, EVENT, OUTCOME, QUERY
from sigkit_cross_asset import leadlag


leader_step_mean = fast.twin(leadlag.leader_step_mean)
move_bps = fast.twin(leadlag.move_bps)
squash_features = fast.twin(leadlag.squash_features)

# Layout of the kernel's state arrays (the model packs and unpacks them).
# float64 ``fstate``:
F_STEP, F_MOVE_SQ, F_MEAN_SIZE, F_INTERCEPT, F_ADVERSE, F_TOTAL, F_COST_GOOD, F_COST_BAD, F_Z = range(9)
N_FSTATE = 9
# int64 ``istate``:
(I_LEADER_STEPS, I_MOVES, I_NEXT_ESTIMATE, I_HAS_NEXT, I_RATE_N, I_COST_N_GOOD, I_COST_N_BAD, I_RATE_LAST,
 I_HAS_RATE_LAST, I_UPDATES, I_LAG, I_HAS_ESTIMATE, I_LEADER_START, I_LEADER_N, I_TARGET_START, I_TARGET_N,
 I_SINCE_LEADER, I_SINCE_TARGET) = range(18)
N_ISTATE = 18
# int64 ``iparams``: keep (ns), reestimate (ns), window (ns), min_changes.
# float64 ``fparams``: min_z, learning rate, l2, intercept learning rate, evidence.


@fast.kernel
def _bisect_right(a, x, lo, hi):
    """``bisect.bisect_right(a, x, lo, hi)``."""
    while lo < hi:
        mid = (lo + hi) // 2
        if x < a[mid]:
            hi = mid
        else:
            lo = mid + 1
    return lo


@fast.kernel
def _mid_at(ts, mid, start, n, t):
    """``_MidTicks.at``: the mid in force at ``t`` (the oldest live one if none)."""
    k = _bisect_right(ts, t, start, n) - 1
    return mid[max(k, start)]


@fast.kernel
def _add_tick(ts, mid, istate, at, t, value, keep_ns):
    """``_MidTicks.add`` on the live changes ``[istate[at], istate[at + 1])``: record ``value`` at ``t`` if
    the mid moved (True if it did) and let go of the changes older than the one in force ``keep`` ago."""
    n = istate[at + 1]
    if n > 0 and value == mid[n - 1]:
        return False
    ts[n] = t
    mid[n] = value
    n += 1
    oldest_needed = t - keep_ns
    start = istate[at]
    while start < n - 1 and ts[start + 1] <= oldest_needed:
        start += 1
    istate[at] = start
    istate[at + 1] = n
    return True


@fast.kernel
def cross_asset_kernel(begin, op, ref, kind, market, ts, bid_px, ask_px, q_ts, q_side, q_fill, o_fill, o_ts,
                       o_adverse, o_realized, leader, target, l_ts, l_mid, t_ts, t_mid, iparams, fparams, fstate,
                       istate, weights, slot_x, slot_owner, out):
    """CrossAsset over the schedule steps ``begin, begin + 1, ...`` of a batch.  Returns the index of the
    step after which the lead lag is to be re-estimated (the window's changes start at
    ``istate[I_SINCE_LEADER]`` and ``istate[I_SINCE_TARGET]``), or -1 at the end of the batch."""
    keep_ns, reestimate_ns, window_ns, min_changes = iparams[0], iparams[1], iparams[2], iparams[3]
    min_z, lr, l2, intercept_lr, evidence = fparams[0], fparams[1], fparams[2], fparams[3], fparams[4]
    nf = weights.size
    x = np.zeros(nf)
    for i in range(begin, op.size):
        step = op[i]
        if step == EVENT:
            r = ref[i]
            if kind[r] != BOOK:
                continue
            m = market[r]
            if m == leader:
                is_leader = True
                at = I_LEADER_START
            elif m == target:
                is_leader = False
                at = I_TARGET_START
            else:
                continue
            value = 0.5 * (bid_px[r] + ask_px[r])
            if not value > 0:
                continue
            n = istate[at + 1]
            previous = l_mid[n - 1] if is_leader and n > 0 else 0.0
            t = ts[r]
            if is_leader:
                if not _add_tick(l_ts, l_mid, istate, at, t, value, keep_ns):
                    continue
                if n > 0:
                    istate[I_LEADER_STEPS] += 1
                    fstate[F_STEP] = leader_step_mean(fstate[F_STEP], previous, value, istate[I_LEADER_STEPS])
            elif not _add_tick(t_ts, t_mid, istate, at, t, value, keep_ns):
                continue
            if istate[I_HAS_NEXT] == 0:
                istate[I_NEXT_ESTIMATE] = t + reestimate_ns
                istate[I_HAS_NEXT] = 1
            elif t >= istate[I_NEXT_ESTIMATE]:
                istate[I_NEXT_ESTIMATE] = t + reestimate_ns
                since = t - window_ns
                kx = _bisect_right(l_ts, since - 1, istate[I_LEADER_START], istate[I_LEADER_N])
                ky = _bisect_right(t_ts, since - 1, istate[I_TARGET_START], istate[I_TARGET_N])
                if min(istate[I_LEADER_N] - kx, istate[I_TARGET_N] - ky) - 1 >= min_changes:
                    istate[I_SINCE_LEADER] = kx
                    istate[I_SINCE_TARGET] = ky
                    return i
        elif step == QUERY:
            q = ref[i]
            p_rate = fast.base_rate_value(fstate[F_ADVERSE], fstate[F_TOTAL], 1.0, 2.0)
            if (istate[I_HAS_ESTIMATE] != 0 and istate[I_LAG] > 0 and abs(fstate[F_Z]) >= min_z
                    and fstate[F_STEP] > 0):
                then = q_ts[q] - istate[I_LAG]
                a = -q_side[q]
                ln, tn = istate[I_LEADER_N], istate[I_TARGET_N]
                leader_move = move_bps(l_mid[ln - 1], _mid_at(l_ts, l_mid, istate[I_LEADER_START], ln, then))
                target_move = 0.0
                if nf > 2:
                    target_move = move_bps(t_mid[tn - 1], _mid_at(t_ts, t_mid, istate[I_TARGET_START], tn, then))
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
        elif step == OUTCOME:
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
    return -1
