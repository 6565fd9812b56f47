"""The combiners' formulas, and the compiled batch kernels that use them.

**Formulas** (plain Python, module level, explicit index loops): the pools, the stacker's Bayesian member
average, the hedge step, and the arithmetic of :class:`sigkit.NewtonLogistic` (:func:`newton_decision`,
:func:`newton_step`, :func:`solve_spd`) and :class:`sigkit.RegimeTracker` (:func:`regime_decay`,
:func:`regime_observe`, :func:`regime_state`).  The per-event combiners call them as they are; the kernels
call their compiled twins (:func:`sigkit.fast.twin`), so both paths share one source.  The NewtonLogistic
and RegimeTracker ones reproduce ``sigkit/learn.py`` bit for bit (same operations in the same order; a
Python ``sum()`` is a left-to-right sum from ``0``), until learn.py calls them itself.

``x ** y`` on floats is C ``pow`` in Python, which is not always ``x * x`` for ``y = 2``; numba (and LLVM)
rewrite a power of 2 as a product.  :func:`power` is ``x ** y`` in Python and the same C ``pow`` in kernels.
"""

from __future__ import annotations

import math

import numpy as np

from sigkit import fast, learn
from sigkit.batch import BOOK, EVENT, OUTCOME, QUERY
from sigkit.learn import REGIME_CODES, power

# -- pools ---------------------------------------------------------------------------------------------

def linear_pool(weights, values) -> float:
    """``sum_k w_k v_k`` in member order (the linear pool; with confidences, the pooled confidence), kept in
    [0, 1]: weights that sum to one and values in [0, 1] can round to a hair outside it (1.0000000000000002)."""
    acc = 0.0
    for i in range(len(weights)):
        acc += weights[i] * values[i]
    return 0.0 if acc < 0.0 else 1.0 if acc > 1.0 else acc


def pooled_cost(weights, costs) -> float:
    """The weighted mean of the members' expected costs that are not NaN (NaN if none is)."""
    total = 0.0
    acc = 0.0
    for i in range(len(weights)):
        c = costs[i]
        if c == c:
            total += weights[i]
            acc += weights[i] * c
    return acc / total if total > 0 else math.nan


def scaled_sum(scale: float, values) -> float:
    """``scale * sum_k v_k`` (the log-odds pool on the members' log-odds)."""
    acc = 0.0
    for i in range(len(values)):
        acc += values[i]
    return scale * acc


# -- the stacker's member average ----------------------------------------------------------------------

def mixture_weights(log_weights, out) -> None:
    """``out`` = the normalised ``exp(log_weights)`` (the posterior weights of stacker and members)."""
    total = 0.0
    for i in range(len(log_weights)):
        out[i] = math.exp(log_weights[i])
        total += out[i]
    for i in range(len(log_weights)):
        out[i] = out[i] / total


def mixture_pool(mixture, stacked: float, members) -> float:
    """``mixture[0] * stacked + sum_k mixture[k + 1] * members[k]``, kept in [0, 1] (rounding can step a hair
    outside it when every probability is near 1: seen on a busy simulated day)."""
    acc = 0.0
    for i in range(len(members)):
        acc += mixture[i + 1] * members[i]
    p = mixture[0] * stacked + acc
    return 0.0 if p < 0.0 else 1.0 if p > 1.0 else p


def mixture_update(log_weights, stacked: float, members, y: float) -> None:
    """Bayes' rule on the log weights of [stacker, members...] after outcome ``y``, in place, the largest
    then 0."""
    n = len(log_weights)
    for i in range(n):
        p = stacked if i == 0 else members[i - 1]
        q = p if y else 1.0 - p
        if 1e-12 > q:
            q = 1e-12
        log_weights[i] = log_weights[i] + math.log(q)
    top = log_weights[0]
    for i in range(1, n):
        if log_weights[i] > top:
            top = log_weights[i]
    for i in range(n):
        log_weights[i] = log_weights[i] - top


# -- hedge ---------------------------------------------------------------------------------------------

def hedge_step(weights, members, y: float, eta: float, share: float, log_loss: bool, losses) -> None:
    """Exponential weights with fixed share after outcome ``y``, in place; ``losses`` is scratch."""
    k = len(weights)
    for i in range(k):
        if log_loss:
            q = members[i] if y else 1.0 - members[i]
            if 1e-12 > q:
                q = 1e-12
            if 1.0 < q:
                q = 1.0
            losses[i] = -math.log(q)
        else:
            losses[i] = power(members[i] - y, 2.0)
    base = losses[0]  # subtracting the best loss keeps exp() in range
    for i in range(1, k):
        if losses[i] < base:
            base = losses[i]
    total = 0.0
    for i in range(k):
        weights[i] = weights[i] * math.exp(-eta * (losses[i] - base))
        total += weights[i]
    for i in range(k):
        weights[i] = (1.0 - share) * weights[i] / total + share / k


# -- compiled twins ------------------------------------------------------------------------------------

_linear_pool = fast.twin(linear_pool)
_pooled_cost = fast.twin(pooled_cost)
_scaled_sum = fast.twin(scaled_sum)
_mixture_weights = fast.twin(mixture_weights)
_mixture_pool = fast.twin(mixture_pool)
_mixture_update = fast.twin(mixture_update)
_newton_decision = fast.newton_decision
_newton_step = fast.newton_step
_regime_decay = fast.regime_decay
_regime_observe = fast.regime_observe
_regime_state = fast.regime_state


# -- for the stacking kernel's loop (see sigkit.fast.inline / borrowed: views and calls without reference
# counting) -----------------------------------------------------------------------------------------------

_inline, _borrowed = fast.inline, fast.borrowed
_inline_newton_decision = _inline(learn.newton_decision)
_inline_regime_state = _inline(learn.regime_state)
_inline_newton_step = _inline(learn.newton_step, solve_spd=_inline(learn.solve_spd))
_hedge_step = fast.twin(hedge_step)

#: Regime dimension codes in kernels.
DIMENSION_CODES = REGIME_CODES

# -- kernels -------------------------------------------------------------------------------------------

@fast.kernel
def pool_kernel(logodds, weights, scale, mp, mc, mk, out):
    """Mean / weighted (linear pool) or logit (log-odds pool) over the queries; ``mp``, ``mc``, ``mk`` are
    (n_queries, n_members)."""
    k = weights.size
    z = np.empty(k)
    for q in range(mp.shape[0]):
        if logodds:
            for i in range(k):
                z[i] = fast.logit(mp[q, i])
            out[0, q] = fast.sigmoid(_scaled_sum(scale, z))
        else:
            out[0, q] = _linear_pool(weights, mp[q])
        out[1, q] = _linear_pool(weights, mc[q])
        out[2, q] = _pooled_cost(weights, mk[q])


# The regime tracker in arrays: ``tf`` = var (2), spread (2), weight (2), last mid; ``ti`` = has last time,
# last time, has first time, first time, has last mid.

@fast.kernel
def _tracker_book(tf, ti, rates, t, bid_px, ask_px):
    """RegimeTracker.on_book_update (of the tracked market)."""
    _tracker_observe(tf[0:2], tf[2:4], tf[4:6], tf, ti, rates, t, bid_px, ask_px)


@fast.kernel
def _tracker_state(tf, ti, rates, ratio, dims, t):
    """RegimeTracker.state(t)."""
    return _tracker_regime(tf[0:2], tf[2:4], tf[4:6], ti, rates, ratio, dims, t)


# The same on views ``var``, ``spread``, ``weight`` of ``tf`` that a kernel makes once, before its loop (a
# view made at every step costs reference counting), inlined into the kernels.

@_inline
def _tracker_decay(var, spread, weight, ti, rates, t):
    """RegimeTracker._decay on the views."""
    if ti[0] and t > ti[1]:
        _regime_decay(var, spread, weight, rates, t - ti[1])
    if not ti[0] or t > ti[1]:
        ti[0] = 1
        ti[1] = t


@_inline
def _tracker_observe(var, spread, weight, tf, ti, rates, t, bid_px, ask_px):
    """:func:`_tracker_book` on the views."""
    if not ti[2]:
        ti[2] = 1
        ti[3] = t
    mid = 0.5 * (bid_px + ask_px)
    if not mid > 0:
        return
    _tracker_decay(var, spread, weight, ti, rates, t)
    _regime_observe(var, spread, weight, bid_px, ask_px, mid, tf[6] if ti[4] else 0.0)
    tf[6] = mid
    ti[4] = 1


@_inline
def _tracker_regime(var, spread, weight, ti, rates, ratio, dims, t):
    """:func:`_tracker_state` on the views."""
    _tracker_decay(var, spread, weight, ti, rates, t)
    elapsed = 1
    if ti[2]:
        elapsed = t - ti[3]
        if 1 > elapsed:
            elapsed = 1
    return _inline_regime_state(var, spread, weight, rates, ratio, dims, elapsed)


def scratch_size(k: int) -> int:
    """How many floats :func:`stacking_kernel` works in, for ``k`` members."""
    n = k + 1
    return 6 * k + 1 + 3 * n + 2 * n * n


_scratch_size = fast.twin(scratch_size)


def stacking_scratch(k: int) -> np.ndarray:
    """The scratch array :func:`stacking_kernel` works in (an argument: it lives for the whole call, as the
    borrowed views the kernel makes of it need)."""
    return np.zeros(scratch_size(k))


@fast.kernel
def stacking_kernel(op, ref, kind, market, bid_px, ask_px, ts, q_ts, q_fill, o_fill, o_ts, o_adverse, mp, mc, mk,
                    target, tracked, rates, ratio, dims, excess, mix, evidence, keep, prior, precision, theta,
                    curvature, n_updates, log_mix, br, bri, tf, ti, slot_v, slot_owner, out, scratch):
    """Stacking over a batch.  Per regime state: ``theta`` (S, n), ``curvature`` (S, n, n), ``n_updates``
    (S), ``log_mix`` (S, k + 1).  ``br`` = base rate (adverse, total), ``bri`` = its outcomes, has last
    time, last time.  ``tf``/``ti``: the regime tracker (see :func:`_tracker_book`).  A slot holds
    state, offset, stacker's p, the inputs (k) and the member probabilities (k).  ``mp``, ``mc``, ``mk`` are
    (n_members, n_queries), as the engine hands them over."""
    k = mp.shape[0]
    n = k + 1
    # Scratch: borrowed views of one argument (alive for the whole call), :func:`stacking_scratch` long.
    if scratch.size < _scratch_size(k):
        raise ValueError("stacking_kernel: scratch too small (see stacking_scratch)")
    x = _borrowed(scratch[0:k])
    pm = _borrowed(scratch[k:2 * k])
    conf = _borrowed(scratch[2 * k:3 * k])
    cost = _borrowed(scratch[3 * k:4 * k])
    equal = _borrowed(scratch[4 * k:5 * k])
    mixture = _borrowed(scratch[5 * k:6 * k + 1])
    at = 6 * k + 1
    grad = _borrowed(scratch[at:at + n])
    tmp = _borrowed(scratch[at + n:at + 2 * n])
    step = _borrowed(scratch[at + 2 * n:at + 3 * n])
    hessian = _borrowed(scratch[at + 3 * n:at + 3 * n + n * n].reshape((n, n)))
    low = _borrowed(scratch[at + 3 * n + n * n:at + 3 * n + 2 * n * n].reshape((n, n)))
    for j in range(k):
        equal[j] = 1.0 / k
    tf, ti, rates, dims = _borrowed(tf), _borrowed(ti), _borrowed(rates), _borrowed(dims)
    var, spread, weight = tf[0:2], tf[2:4], tf[4:6]
    # Caches, each valid while what it was computed from is unchanged: ``mixture`` holds the member average
    # of regime state ``mixed`` (-1: none), from ``log_mix[mixed]``, which only an outcome of that state
    # moves; ``excess_offset`` the offset from ``br``, which only an outcome moves.  ``theta_s``,
    # ``curvature_s`` and ``log_mix_s`` are the rows of regime state ``viewed``.
    mixed = -1
    offset_known = False
    excess_offset = 0.0
    viewed = 0
    theta_s, curvature_s, log_mix_s = _borrowed(theta[0]), _borrowed(curvature[0]), _borrowed(log_mix[0])
    for i in range(op.size):
        s = op[i]
        if s == EVENT:
            r = ref[i]
            if tracked and kind[r] == BOOK and market[r] == target:
                _tracker_observe(var, spread, weight, tf, ti, rates, ts[r], bid_px[r], ask_px[r])
        elif s == QUERY:
            q = ref[i]
            state = _tracker_regime(var, spread, weight, ti, rates, ratio, dims, q_ts[q]) if tracked else 0
            if state != viewed:
                viewed = state
                theta_s, curvature_s, log_mix_s = (_borrowed(theta[state]), _borrowed(curvature[state]),
                                                   _borrowed(log_mix[state]))
            offset = 0.0
            if excess:
                if not offset_known:
                    excess_offset = fast.logit(fast.base_rate_value(br[0], br[1], 1.0, 2.0))
                    offset_known = True
                offset = excess_offset
            for j in range(k):
                x[j] = fast.logit(mp[j, q])
                if excess:
                    x[j] = x[j] - offset
                pm[j] = mp[j, q]
            stacked = fast.sigmoid(_inline_newton_decision(theta_s, x, offset))
            slot = fast.slot_put(slot_owner, q_fill[q])
            slot_v[slot, 0] = state
            slot_v[slot, 1] = offset
            slot_v[slot, 2] = stacked
            for j in range(k):
                slot_v[slot, 3 + j] = x[j]
                slot_v[slot, 3 + k + j] = pm[j]
            p = stacked
            if mix:
                if mixed != state:
                    _mixture_weights(log_mix_s, mixture)
                    mixed = state
                p = _mixture_pool(mixture, stacked, pm)
            own = fast.evidence_confidence(n_updates[state], evidence)
            out[0, q] = p
            for j in range(k):
                conf[j] = mc[j, q]
                cost[j] = mk[j, q]
            out[1, q] = own * _linear_pool(equal, conf)
            out[2, q] = _pooled_cost(equal, cost)
        elif s == OUTCOME:
            o = ref[i]
            adverse = o_adverse[o] == 1.0
            y = 1.0 if adverse else 0.0
            slot = fast.slot_take(slot_owner, o_fill[o])
            if slot >= 0:
                state = int(slot_v[slot, 0])
                if state != viewed:
                    viewed = state
                    theta_s, curvature_s, log_mix_s = (_borrowed(theta[state]), _borrowed(curvature[state]),
                                                       _borrowed(log_mix[state]))
                offset = slot_v[slot, 1]
                stacked = slot_v[slot, 2]
                for j in range(k):
                    x[j] = slot_v[slot, 3 + j]
                    pm[j] = slot_v[slot, 3 + k + j]
                if mix:
                    _mixture_update(log_mix_s, stacked, pm, y)
                    if mixed == state:
                        mixed = -1
                p = fast.sigmoid(_inline_newton_decision(theta_s, x, offset))
                _inline_newton_step(theta_s, curvature_s, x, y, p, prior, precision, keep, hessian, low, grad, tmp,
                                    step)
                n_updates[state] += 1
            bri[1] = 1
            bri[2] = o_ts[o]
            br[0] += 1.0 if adverse else 0.0
            br[1] += 1.0
            bri[0] += 1
            offset_known = False


@fast.kernel
def hedge_kernel(op, ref, kind, market, bid_px, ask_px, ts, q_ts, q_fill, o_fill, o_adverse, mp, mc, mk, target,
                 tracked, rates, ratio, dims, eta, share, log_loss, by_state, tf, ti, slot_v, slot_owner, out):
    """Hedge over a batch: ``by_state`` (S, k) weights; a slot holds the state and the member probabilities."""
    k = mp.shape[1]
    losses = np.empty(k)
    pm = np.empty(k)
    for i in range(op.size):
        s = op[i]
        if s == EVENT:
            r = ref[i]
            if tracked and kind[r] == BOOK and market[r] == target:
                _tracker_book(tf, ti, rates, ts[r], bid_px[r], ask_px[r])
        elif s == QUERY:
            q = ref[i]
            state = _tracker_state(tf, ti, rates, ratio, dims, q_ts[q]) if tracked else 0
            slot = fast.slot_put(slot_owner, q_fill[q])
            slot_v[slot, 0] = state
            for j in range(k):
                slot_v[slot, 1 + j] = mp[q, j]
            weights = by_state[state]
            out[0, q] = _linear_pool(weights, mp[q])
            out[1, q] = _linear_pool(weights, mc[q])
            out[2, q] = _pooled_cost(weights, mk[q])
        elif s == OUTCOME:
            o = ref[i]
            slot = fast.slot_take(slot_owner, o_fill[o])
            if slot >= 0:
                state = int(slot_v[slot, 0])
                for j in range(k):
                    pm[j] = slot_v[slot, 1 + j]
                y = 1.0 if o_adverse[o] == 1.0 else 0.0
                _hedge_step(by_state[state], pm, y, eta, share, log_loss, losses)
