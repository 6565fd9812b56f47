"""The ``cross_asset`` model's tick stores and its sliding-window lead-lag estimator, shared by both paths.

**Tick stores.**  Each market's mid changes live in rows of three 2-D arrays that persist across calls (row
0 the leader, row 1 the target): ``ts`` (int64 ns), ``mid`` and ``logs`` (the log of each mid, ``math.log``,
filled in by the compiled estimator).  The int64 array ``wstate`` holds, per row ``r`` at ``r * ROW``:
``START`` (the first live change: the one in force ``keep`` before the latest), ``N`` (the changes stored),
``LOGGED`` (the changes from there on have no log yet), and ``WIN_START``/``WIN_END`` (the changes
``[WIN_START, WIN_END)`` whose interval pairs the accumulators hold).  :func:`record_tick` records a change
(only when the mid moved) and now and then moves the live changes to the front of the row; it never drops
a change the accumulators still need.  The model makes room (grows the arrays) before a call, so a row always has space for one more
change (the batch path: for every change its batch can add).

**Estimator.**  Every ``reestimate`` of event time (:func:`estimate_due`) :func:`reestimate` takes the
changes of the last ``window`` of both markets and computes the shifted Hayashi-Yoshida sums ``U`` and
``V`` on the uniform shift grid (:mod:`sigkit_cross_asset.leadlag`), from accumulators kept between
estimates: ``acc[0]``/``acc[1]`` the run-start/run-end bins of ``U`` (``ΔX_i ΔY_j`` added at the first grid
shift where the pair of intervals overlaps and removed after its last), ``acc[2]``/``acc[3]`` those of ``V``
(the squares).  Between two estimates the window slides: the pairs that left it are subtracted (a leader
interval that left, with every follower interval of the old window; a leader interval still in, with a
follower interval that left) and the pairs that entered added (likewise), each pair once; ``U`` and ``V``
are then the cumulative sums of the bins.  The accumulators are rebuilt from scratch (the pairs in order
of the leader interval, then the follower's: the order of
:func:`sigkit_cross_asset.leadlag.hy_covariance_on_grid`, so a rebuilt ``U`` is that function's on the same
log mids, bit for bit) at the first estimate, when the old and new windows share no interval of one of
the markets, after a skipped estimate (too few changes), and every ``rebuild_every``-th estimate, so rounding
drift stays bounded (the model uses ``ceil(window / reestimate)``).  The realised variances ``Σ ΔX²``,
``Σ ΔY²`` are summed afresh at each estimate, in order.  Where ``|U| > sqrt(Σ ΔX² Σ ΔY²)`` the correlation
is ``U`` over its Cauchy-Schwarz bound, as in :func:`sigkit_cross_asset.leadlag.cauchy_schwarz_bound`
(here summed in order, compiled).

The estimate (lag, z-score, correlations, the window's change counts and time) goes to ``wstate`` and the
float64 array ``west``, the correlation curve to ``rho`` (the model derives the lead/lag ratio from it when
asked).  The per-event path calls :func:`reestimate` itself and the batch kernel calls the very same
compiled function, so the two paths' estimates agree by construction; the tick formulas are plain Python
run as they are per event and compiled (:func:`sigkit.fast.twin`) in the kernel.
"""

from __future__ import annotations

import math

import numpy as np

from sigkit import fast
from sigkit_cross_asset.leadlag import argmax_abs

# int64 ``wstate``: per market row r (0 leader, 1 target), at r * ROW + ...
START, N, LOGGED, WIN_START, WIN_END = range(5)
ROW = 5
# ... then the schedule, the accumulators' bookkeeping and the last estimate.
(NEXT, HAS_NEXT, VALID, SINCE_REBUILD, N_ESTIMATES, HAS_ESTIMATE, LAG, TS, N_LEADER,
 N_FOLLOWER) = range(2 * ROW, 2 * ROW + 10)
N_WSTATE = 2 * ROW + 10
# float64 ``west``: the last estimate's z-score, correlation at the lag and correlation at zero shift.
Z, CORR, CORR_ZERO = range(3)
N_WEST = 3

COMPACT_AFTER = 1024  # move a row's live changes to its front once this many (and half of it) are dead


# -- tick formulas: plain Python per event, compiled twins in the kernel ---------------------------------

def bisect_right(a, x, lo, hi):
    """``bisect.bisect_right(a, x, lo, hi)``."""
    while lo < hi:
        mid = (lo + hi) // 2
        if x < a[mid]:
            hi = mid
        else:
            lo = mid + 1
    return lo


def bisect_left(a, x, lo, hi):
    """``bisect.bisect_left(a, x, lo, hi)``."""
    while lo < hi:
        mid = (lo + hi) // 2
        if a[mid] < x:
            lo = mid + 1
        else:
            hi = mid
    return lo


def mid_at(ts, mid, start, n, t):
    """The mid in force at ``t`` among the live changes ``[start, n)`` of one row (the oldest if none)."""
    k = bisect_right(ts, t, start, n) - 1
    return mid[max(k, start)]


def record_tick(ts, mid, logs, wstate, row, t, value, keep_ns):
    """Record ``value`` at ``t`` in ``row`` if the mid moved (True if it did): the live changes then start at
    the one in force ``keep`` before ``t``.  Once enough changes are dead (and not in the accumulators'
    window), the rest move to the front of the row and its indices in ``wstate`` with them."""
    base = row * ROW
    n = wstate[base + N]
    if n > 0 and value == mid[row, n - 1]:
        return False
    ts[row, n] = t
    mid[row, n] = value
    n += 1
    oldest_needed = t - keep_ns
    start = wstate[base + START]
    while start < n - 1 and ts[row, start + 1] <= oldest_needed:
        start += 1
    wstate[base + START] = start
    wstate[base + N] = n
    cut = start
    if wstate[VALID] != 0 and wstate[base + WIN_START] < cut:
        cut = wstate[base + WIN_START]
    if cut > COMPACT_AFTER and cut > n // 2:
        live = n - cut
        ts[row, :live] = ts[row, cut:n].copy()
        mid[row, :live] = mid[row, cut:n].copy()
        logs[row, :live] = logs[row, cut:n].copy()
        wstate[base + START] = start - cut
        wstate[base + N] = live
        wstate[base + LOGGED] = max(wstate[base + LOGGED] - cut, 0)
        wstate[base + WIN_START] = max(wstate[base + WIN_START] - cut, 0)
        wstate[base + WIN_END] = max(wstate[base + WIN_END] - cut, 0)
    return True


def estimate_due(wstate, t, reestimate_ns):
    """After a recorded change at ``t``: is an estimate due?  The first change starts the clock; an estimate
    is due at the first change at or after the time set, which then moves to ``t + reestimate``."""
    if wstate[HAS_NEXT] == 0:
        wstate[NEXT] = t + reestimate_ns
        wstate[HAS_NEXT] = 1
        return False
    if t >= wstate[NEXT]:
        wstate[NEXT] = t + reestimate_ns
        return True
    return False


_bisect_right = fast.twin(bisect_right)  # also registers the formulas for the compiled estimator below
_bisect_left = fast.twin(bisect_left)


# -- the estimator (compiled; both paths call it) ---------------------------------------------------------

def _add_to_bins(sign, dx, dy, k_lo, k_hi, acc, n_shifts):
    """Add ``sign · dx dy`` (and its square) to the bins of grid shifts ``k_lo..k_hi`` (cut to the grid), if
    any: the start of the run in rows 0 and 2, one past its end in rows 1 and 3."""
    if k_lo < 0:
        k_lo = 0
    if k_hi > n_shifts - 1:
        k_hi = n_shifts - 1
    if k_lo <= k_hi:
        product = dx * dy
        square = product * product
        acc[0, k_lo] += sign * product
        acc[1, k_hi + 1] += sign * product
        acc[2, k_lo] += sign * square
        acc[3, k_hi + 1] += sign * square


_add_to_bins_inline = fast.inline(_add_to_bins)


@fast.kernel
def _pair(sign, dx, i, j, tx, ty, ly, acc, first, step, n_shifts):
    """Add ``sign · ΔX_i ΔY_j`` (and its square) to the bins of the grid shifts where leader interval
    ``(t_i, t_{i+1}]`` and follower interval ``(s_{j-1}, s_j]`` overlap, if any."""
    _add_to_bins_inline(sign, dx, ly[j] - ly[j - 1], (ty[j - 1] - tx[i + 1] - first) // step + 1,
                        -((first - (ty[j] - tx[i])) // step) - 1, acc, n_shifts)


_SAFE_NS = 2 ** 61  # times and shifts below this in size: no sum or difference of three of them overflows


@fast.kernel
def _walk_right(a, x, k, lo, hi):
    """``bisect_right(a, x, lo, hi)`` for a sorted ``a``, walking from ``k`` (the answer for a nearby ``x``):
    cheap for a run of increasing values."""
    if k > hi:
        k = hi
    if k < lo:  # (last: an empty range answers lo, as bisect does)
        k = lo
    while k < hi and a[k] <= x:
        k += 1
    while k > lo and a[k - 1] > x:
        k -= 1
    return k


@fast.kernel
def _walk_left(a, x, k, lo, hi):
    """``bisect_left(a, x, lo, hi)`` for a sorted ``a``, walking from ``k``."""
    if k > hi:
        k = hi
    if k < lo:  # (last: an empty range answers lo, as bisect does)
        k = lo
    while k < hi and a[k] < x:
        k += 1
    while k > lo and a[k - 1] >= x:
        k -= 1
    return k


@fast.kernel
def _pairs_by_leader(sign, i_lo, i_hi, j_lo, j_hi, ts, logs, acc, first, last, step, n_shifts, qy, ry):
    """The pairs of leader intervals ``i`` in ``[i_lo, i_hi)`` and follower intervals ``j`` in ``[j_lo, j_hi)``
    (``(s_{j-1}, s_j]``), in order of ``i`` then ``j``.

    The run of ``j`` of each ``i`` is found by walking from the previous one's (the times are sorted: the
    bisections' answers).  The grid indices are :func:`_pair`'s floor divisions, exactly: with
    ``a = q_a·δ + r_a`` and ``b = q_b·δ + r_b`` (``0 <= r < δ``), ``(a - b) // δ = q_a - q_b - [r_a < r_b]``, so
    one division per follower time (``qy``/``ry``, scratch as long as the row, filled here for the times the
    pairs read) and two per leader interval stand for two per pair, while the times and the first shift are
    below ``2**61`` in size (no difference overflows; beyond, :func:`_pair`'s own divisions)."""
    if j_lo >= j_hi or i_lo >= i_hi:
        return
    tx, ty, lx, ly = ts[0], ts[1], logs[0], logs[1]
    lo = bisect_right(ty, tx[i_lo] + first, j_lo, j_hi)
    hi = bisect_left(ty, tx[i_lo + 1] + last, j_lo - 1, j_hi)
    # The follower times any pair reads: [lo - 1, end] (the runs only move up with i).
    end = min(bisect_left(ty, tx[i_hi] + last, j_lo - 1, j_hi), j_hi - 1)
    safe = -_SAFE_NS < first < _SAFE_NS
    for j in range(lo - 1, end + 1):
        v = ty[j]
        safe = safe and -_SAFE_NS < v < _SAFE_NS
        q = v // step
        qy[j] = q
        ry[j] = v - q * step
    for i in range(i_lo, i_hi):
        lo = _walk_right(ty, tx[i] + first, lo, j_lo, j_hi)
        hi = _walk_left(ty, tx[i + 1] + last, hi, j_lo - 1, j_hi)
        top = min(hi, j_hi - 1)
        if lo > top:
            continue
        dx = lx[i + 1] - lx[i]
        if not (safe and -_SAFE_NS < tx[i] < _SAFE_NS and -_SAFE_NS < tx[i + 1] < _SAFE_NS):
            for j in range(lo, top + 1):
                _pair(sign, dx, i, j, tx, ty, ly, acc, first, step, n_shifts)
            continue
        b = tx[i + 1] + first  # k_lo = (s_{j-1} - b) // δ + 1
        qb = b // step
        rb = b - qb * step
        c = tx[i] + first  # k_hi = -((c - s_j) // δ) - 1
        qc = c // step
        rc = c - qc * step
        for j in range(lo, top + 1):
            _add_to_bins_inline(sign, dx, ly[j] - ly[j - 1], qy[j - 1] - qb - np.int64(ry[j - 1] < rb) + 1,
                                qy[j] - qc + np.int64(rc < ry[j]) - 1, acc, n_shifts)


@fast.kernel
def _pairs_by_follower(sign, i_lo, i_hi, j_lo, j_hi, ts, logs, acc, first, last, step, n_shifts):
    """The same pairs in order of ``j`` then ``i`` (for a few follower intervals against many leader ones);
    the run of ``i`` of each ``j`` found by walking from the previous one's."""
    if i_lo >= i_hi or j_lo >= j_hi:
        return
    tx, ty, lx, ly = ts[0], ts[1], logs[0], logs[1]
    a = bisect_right(tx, ty[j_lo - 1] - last, i_lo, i_hi + 1)
    b = bisect_left(tx, ty[j_lo] - first, i_lo, i_hi + 1)
    for j in range(j_lo, j_hi):
        a = _walk_right(tx, ty[j - 1] - last, a, i_lo, i_hi + 1)
        b = _walk_left(tx, ty[j] - first, b, i_lo, i_hi + 1)
        for i in range(max(a - 1, i_lo), min(b - 1, i_hi - 1) + 1):
            _pair(sign, lx[i + 1] - lx[i], i, j, tx, ty, ly, acc, first, step, n_shifts)


@fast.kernel
def _cauchy_schwarz(theta, kx, n0, ky, n1, ts, logs, sx, sy):
    """:func:`sigkit_cross_asset.leadlag.cauchy_schwarz_bound` at one shift on the window's changes (leader
    ``[kx, n0)``, follower ``[ky, n1)``), with ``Σ ΔX² = sx`` and ``Σ ΔY² = sy``; sums in order."""
    tx, ty, lx, ly = ts[0], ts[1], logs[0], logs[1]
    sw = 0.0
    for i in range(kx, n0 - 1):
        lo = max(bisect_right(ty, tx[i] + theta, ky, n1), ky + 1)
        hi = min(bisect_left(ty, tx[i + 1] + theta, ky, n1), n1 - 1)
        if hi >= lo:
            w = ly[hi] - ly[lo - 1]
            sw += w * w
    sv = 0.0
    for j in range(ky, n1 - 1):
        lo = max(bisect_right(tx, ty[j] - theta, kx, n0), kx + 1)
        hi = min(bisect_left(tx, ty[j + 1] - theta, kx, n0), n0 - 1)
        if hi >= lo:
            w = lx[hi] - lx[lo - 1]
            sv += w * w
    return math.sqrt(min(sx * sw, sy * sv))


@fast.kernel
def update_sums(ts, mid, logs, wstate, acc, kx, ky, first, step, n_shifts, rebuild_every):
    """Bring the accumulators to the window of changes ``[kx, N)`` of the leader and ``[ky, N)`` of the
    target, incrementally or from scratch (see the module docstring), after logging the mids not yet logged
    (every change is logged once, window or not, so the saved logs do not depend on the estimates made)."""
    n0, n1 = wstate[N], wstate[ROW + N]
    for r in range(2):
        base = r * ROW
        n = wstate[base + N]
        for k in range(wstate[base + LOGGED], n):
            logs[r, k] = math.log(mid[r, k])
        wstate[base + LOGGED] = n
    last = first + (n_shifts - 1) * step
    qy, ry = np.empty(n1, dtype=np.int64), np.empty(n1, dtype=np.int64)  # scratch of _pairs_by_leader
    x0, x1, y0, y1 = wstate[WIN_START], wstate[WIN_END], wstate[ROW + WIN_START], wstate[ROW + WIN_END]
    rebuild = (wstate[VALID] == 0 or wstate[SINCE_REBUILD] + 1 >= rebuild_every or kx < x0 or ky < y0
               or n0 < x1 or n1 < y1 or kx >= x1 - 1 or ky + 1 >= y1)
    if rebuild:
        acc[:, :] = 0.0
        _pairs_by_leader(1.0, kx, n0 - 1, ky + 1, n1, ts, logs, acc, first, last, step, n_shifts, qy, ry)
        wstate[SINCE_REBUILD] = 0
    else:
        # Leaving: leader intervals [x0, kx) with the old follower ones, then the leader intervals that stay,
        # [kx, x1 - 1), with the follower ones that leave, [y0 + 1, ky + 1).  Entering: likewise.
        _pairs_by_leader(-1.0, x0, kx, y0 + 1, y1, ts, logs, acc, first, last, step, n_shifts, qy, ry)
        _pairs_by_follower(-1.0, kx, x1 - 1, y0 + 1, ky + 1, ts, logs, acc, first, last, step, n_shifts)
        _pairs_by_leader(1.0, x1 - 1, n0 - 1, ky + 1, n1, ts, logs, acc, first, last, step, n_shifts, qy, ry)
        _pairs_by_follower(1.0, kx, x1 - 1, y1, n1, ts, logs, acc, first, last, step, n_shifts)
        wstate[SINCE_REBUILD] += 1
    wstate[WIN_START], wstate[WIN_END], wstate[ROW + WIN_START], wstate[ROW + WIN_END] = kx, n0, ky, n1
    wstate[VALID] = 1


@fast.kernel
def grid_sums(acc, n_shifts):
    """``U`` and ``V`` on the grid: the cumulative sums of the accumulators' start-minus-end bins."""
    u, v = np.empty(n_shifts), np.empty(n_shifts)
    u[0] = acc[0, 0] - acc[1, 0]
    v[0] = acc[2, 0] - acc[3, 0]
    for k in range(1, n_shifts):
        u[k] = u[k - 1] + (acc[0, k] - acc[1, k])
        v[k] = v[k - 1] + (acc[2, k] - acc[3, k])
    return u, v


@fast.kernel
def reestimate(now, ts, mid, logs, wstate, west, rho, acc, first, step, n_shifts, zero, window_ns, min_changes,
               rebuild_every):
    """The lead-lag estimate at ``now`` over the changes of the last ``window_ns`` (those at or after
    ``now - window_ns``).  Nothing when either market has fewer than ``min_changes`` changes in it (the
    accumulators are then rebuilt at the next estimate) or no increment at all; else the estimate goes to
    ``wstate``, ``west`` and ``rho``.  True if a new estimate was made."""
    since = now - window_ns
    n0, n1 = wstate[N], wstate[ROW + N]
    kx = bisect_right(ts[0], since - 1, wstate[START], n0)
    ky = bisect_right(ts[1], since - 1, wstate[ROW + START], n1)
    if min(n0 - kx, n1 - ky) - 1 < min_changes:
        wstate[VALID] = 0
        return False
    update_sums(ts, mid, logs, wstate, acc, kx, ky, first, step, n_shifts, rebuild_every)
    # Σ ΔX² and Σ ΔY², each summed in order, side by side (two independent chains of additions).
    sx = sy = 0.0
    both = max(min(n0 - 1 - kx, n1 - 1 - ky), 0)
    for k in range(both):
        d = logs[0, kx + k + 1] - logs[0, kx + k]
        e = logs[1, ky + k + 1] - logs[1, ky + k]
        sx += d * d
        sy += e * e
    for k in range(kx + both, n0 - 1):
        d = logs[0, k + 1] - logs[0, k]
        sx += d * d
    for k in range(ky + both, n1 - 1):
        d = logs[1, k + 1] - logs[1, k]
        sy += d * d
    norm = math.sqrt(sx * sy)
    if not norm > 0:
        return False
    u, v = grid_sums(acc, n_shifts)
    over = False
    for k in range(n_shifts):
        if abs(u[k]) > norm:
            over = True
        rho[k] = u[k] / norm
    if over:  # ρ over the Cauchy-Schwarz bound where |U| > norm (leadlag's module docstring)
        for k in range(n_shifts):
            if abs(u[k]) > norm:
                bound = _cauchy_schwarz(first + k * step, kx, n0, ky, n1, ts, logs, sx, sy)
                rho[k] = u[k] / max(bound, abs(u[k]))
    best = argmax_abs(u)
    west[Z] = u[best] / math.sqrt(v[best]) if v[best] > 0 else 0.0
    west[CORR] = rho[best]
    west[CORR_ZERO] = rho[zero]
    wstate[LAG] = first + best * step
    wstate[TS] = now
    wstate[N_LEADER] = n0 - kx - 1
    wstate[N_FOLLOWER] = n1 - ky - 1
    wstate[HAS_ESTIMATE] = 1
    wstate[N_ESTIMATES] += 1
    return True
