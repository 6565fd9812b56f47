"""The batch path of PreFillToxicity: one compiled kernel over a piece's schedule.

It walks ``batch.op``/``batch.ref`` as the per-event hooks would be called and does their arithmetic
through the compiled twins of the plain formulas in :mod:`sigkit_prefill_toxicity.features` (one source
for both paths).  The model's learned state travels in arrays: ``fs`` (floats) and ``ist`` (int64:
counters and timestamps, :data:`~sigkit_prefill_toxicity.features.NO_TS` when unset), indexed by the
``F_*``/``I_*`` constants below; VPIN's window of completed buckets (a list in the per-event tracker,
newest last, at most ``n_buckets`` long) is the ring ``ring`` of ``n_buckets`` floats, the oldest at
``ist[I_HEAD]`` and ``ist[I_COUNT]`` of them held.  ``fp`` holds the float parameters (``P_*``).
"""

from __future__ import annotations

import numpy as np

from sigkit import fast
from sigkit.batch import BOOK, EVENT, QUERY, TRADE
from sigkit_prefill_toxicity import features as _f
from sigkit_prefill_toxicity.features import NO_TS

exact_sum = fast.twin(_f.exact_sum)
bucket_fill = fast.twin(_f.bucket_fill)
sign_surprise_add = fast.twin(_f.sign_surprise_add)
kyle_signed_flow = fast.twin(_f.kyle_signed_flow)
kyle_advance = fast.twin(_f.kyle_advance)
kyle_coefficients = fast.twin(_f.kyle_coefficients)
kyle_recent_flow = fast.twin(_f.kyle_recent_flow)
kyle_impact = fast.twin(_f.kyle_impact)
intensity_add = fast.twin(_f.intensity_add)
intensity_rates = fast.twin(_f.intensity_rates)
intensity_log_ratio = fast.twin(_f.intensity_log_ratio)
scaler_update = fast.twin(_f.scaler_update)
scaler_transform = fast.twin(_f.scaler_transform)

# fs: float state.
F_BUY, F_SELL, F_SUM_SIGNED, F_SUM_ABS = 0, 1, 2, 3  # VolumeBuckets
F_RHO, F_RHO_WEIGHT, F_RHO_SUM, F_S_SUM, F_S_WEIGHT = 4, 5, 6, 7, 8  # SignSurprise
F_FLOW, F_MID, F_MID_OPEN, F_SW, F_SQ, F_SM, F_SQQ, F_SQM, F_FLOW_SUM, F_FLOW_WEIGHT = range(9, 19)  # KyleLambda
F_SHORT, F_LONG = 19, 20  # TradeIntensity
F_INTERCEPT, F_TRUST_INTERCEPT, F_ADVERSE, F_TOTAL, F_COST_GOOD, F_COST_BAD = range(21, 27)
N_FS = 27
# ist: int64 state.
I_COUNT, I_HEAD = 0, 1  # VolumeBuckets ring
I_PREVIOUS, I_SIGN_TS = 2, 3  # SignSurprise
I_END = 4  # KyleLambda
I_INT_TS = 5  # TradeIntensity
I_SCALER_N, I_MODEL_N, I_TRUST_N, I_RATE_N, I_RATE_TS, I_COST_GOOD, I_COST_BAD = range(6, 13)
N_IST = 13
# fp: float parameters.
(P_BUCKET, P_SIGN_DECAY, P_RHO_KEEP, P_KEEP, P_FLOW_KEEP, P_SHORT_DECAY, P_LONG_DECAY, P_FLOOR, P_MEMORY, P_CLIP,
 P_LR, P_L2, P_ILR, P_TRUST_LR, P_TRUST_L2, P_TRUST_ILR, P_EVIDENCE, P_PRIOR_ADVERSE, P_PRIOR_TOTAL) = range(19)
N_FP = 19


@fast.kernel
def _bucket_add(fs, ist, ring, partials, side, size, cap):
    """VolumeBuckets.add: fill the open bucket, closing buckets into the ring as they fill."""
    nb = ring.size
    left = size
    while left > 0.0:
        buy, sell, left, closed, signed = bucket_fill(fs[F_BUY], fs[F_SELL], side, left, cap, nb)
        fs[F_BUY] = buy
        fs[F_SELL] = sell
        if closed:
            count, head = ist[I_COUNT], ist[I_HEAD]
            if count < nb:  # append; the window is not full yet
                ring[(head + count) % nb] = signed
                count += 1
            else:  # append and drop the oldest
                ring[head] = signed
                head = (head + 1) % nb
            ist[I_COUNT], ist[I_HEAD] = count, head
            fs[F_SUM_SIGNED] = exact_sum(ring, head, nb, count, False, partials)
            fs[F_SUM_ABS] = exact_sum(ring, head, nb, count, True, partials)


@fast.kernel
def _kyle_advance(fs, ist, ts, interval_ns, keep, flow_keep):
    """KyleLambda.advance on the state arrays."""
    if ist[I_END] != NO_TS and ts < ist[I_END]:
        return
    (end, flow, mid_open, sw, sq, sm, sqq, sqm, flow_sum,
     flow_weight) = kyle_advance(ts, ist[I_END], interval_ns, fs[F_FLOW], fs[F_MID], fs[F_MID_OPEN], fs[F_SW],
                                 fs[F_SQ], fs[F_SM], fs[F_SQQ], fs[F_SQM], fs[F_FLOW_SUM], fs[F_FLOW_WEIGHT], keep,
                                 flow_keep)
    ist[I_END] = end
    fs[F_FLOW], fs[F_MID_OPEN], fs[F_SW], fs[F_SQ], fs[F_SM] = flow, mid_open, sw, sq, sm
    fs[F_SQQ], fs[F_SQM], fs[F_FLOW_SUM], fs[F_FLOW_WEIGHT] = sqq, sqm, flow_sum, flow_weight


@fast.kernel
def prefill_kernel(op, ref, kind, market, ts, side, size, bid_px, ask_px, q_ts, q_side, q_fill, o_fill, o_ts,
                   o_adverse, o_realized, target, interval_ns, measure, fp, fs, ist, ring, use, mean, var, weights,
                   trust_w, slot_v, slot_owner, out):
    """PreFillToxicity over a batch (see the module doc for the state layout); ``out`` gets p, confidence,
    cost per query.  ``slot_v`` rows hold a fill's standardised features, its score and its offset."""
    k = use.size
    full = np.empty(7)
    raw = np.empty(k)
    x = np.empty(k)
    z = np.empty(1)
    partials = np.empty(ring.size)
    for i in range(op.size):
        step = op[i]
        if step == EVENT:
            r = ref[i]
            if market[r] != target:
                continue
            kd = kind[r]
            t = ts[r]
            if kd == TRADE:
                last, short, long = intensity_add(t, ist[I_INT_TS], fs[F_SHORT], fs[F_LONG], fp[P_SHORT_DECAY],
                                                  fp[P_LONG_DECAY])
                ist[I_INT_TS], fs[F_SHORT], fs[F_LONG] = last, short, long
                sd = np.int64(side[r])
                if sd == 1 or sd == -1:  # a print without an aggressor side says nothing about signs
                    _bucket_add(fs, ist, ring, partials, sd, size[r], fp[P_BUCKET])
                    (last, previous, s_sum, s_weight, rho, rho_sum,
                     rho_weight) = sign_surprise_add(t, sd, ist[I_SIGN_TS], ist[I_PREVIOUS], fs[F_S_SUM],
                                                     fs[F_S_WEIGHT], fs[F_RHO], fs[F_RHO_SUM], fs[F_RHO_WEIGHT],
                                                     fp[P_SIGN_DECAY], fp[P_RHO_KEEP])
                    ist[I_SIGN_TS], ist[I_PREVIOUS] = last, previous
                    fs[F_S_SUM], fs[F_S_WEIGHT], fs[F_RHO], fs[F_RHO_SUM], fs[F_RHO_WEIGHT] = (
                        s_sum, s_weight, rho, rho_sum, rho_weight)
                    _kyle_advance(fs, ist, t, interval_ns, fp[P_KEEP], fp[P_FLOW_KEEP])
                    fs[F_FLOW] += kyle_signed_flow(sd, size[r], measure)
            elif kd == BOOK:
                bid, ask = bid_px[r], ask_px[r]
                if bid == bid and ask == ask:
                    mid = 0.5 * (bid + ask)
                    _kyle_advance(fs, ist, t, interval_ns, fp[P_KEEP], fp[P_FLOW_KEEP])
                    if fs[F_MID_OPEN] != fs[F_MID_OPEN]:  # the first mid opens the current interval
                        fs[F_MID_OPEN] = mid
                    fs[F_MID] = mid
        elif step == QUERY:
            q = ref[i]
            t = q_ts[q]
            a = -np.int64(q_side[q])
            _kyle_advance(fs, ist, t, interval_ns, fp[P_KEEP], fp[P_FLOW_KEEP])
            n = ist[I_COUNT]
            imbalance = a * (fs[F_SUM_SIGNED] / n if n else 0.0)
            vpin = fs[F_SUM_ABS] / n if n else 0.0
            full[0] = imbalance
            full[1] = vpin
            full[2] = vpin * imbalance
            full[3] = a * (fs[F_S_SUM] / fs[F_S_WEIGHT] if fs[F_S_WEIGHT] > 0.0 else 0.0)
            full[4] = kyle_coefficients(fs[F_SW], fs[F_SQ], fs[F_SM], fs[F_SQQ], fs[F_SQM])[1]
            alpha, lam = kyle_coefficients(fs[F_SW], fs[F_SQ], fs[F_SM], fs[F_SQQ], fs[F_SQM])
            full[5] = a * kyle_impact(alpha, lam, kyle_recent_flow(fs[F_FLOW_SUM], fs[F_FLOW_WEIGHT]))
            short, long = intensity_rates(t, ist[I_INT_TS], fs[F_SHORT], fs[F_LONG], fp[P_SHORT_DECAY],
                                          fp[P_LONG_DECAY])
            full[6] = intensity_log_ratio(short, long, fp[P_FLOOR])
            for j in range(k):
                raw[j] = full[use[j]]
            scaler_transform(mean, var, ist[I_SCALER_N], fp[P_CLIP], raw, x)
            ist[I_SCALER_N] += 1
            scaler_update(mean, var, ist[I_SCALER_N], fp[P_MEMORY], raw)
            offset = fast.logit(fast.base_rate_value(fs[F_ADVERSE], fs[F_TOTAL], fp[P_PRIOR_ADVERSE],
                                                     fp[P_PRIOR_TOTAL]))
            score = fast.logistic_decision(weights, fs[F_INTERCEPT], x, 0.0)
            slot = fast.slot_put(slot_owner, q_fill[q])
            for j in range(k):
                slot_v[slot, j] = x[j]
            slot_v[slot, k] = score
            slot_v[slot, k + 1] = offset
            z[0] = score
            p = fast.sigmoid(fast.logistic_decision(trust_w, fs[F_TRUST_INTERCEPT], z, offset))
            out[0, q] = p
            out[1, q] = fast.evidence_confidence(ist[I_MODEL_N], fp[P_EVIDENCE])
            out[2, q] = fast.expected_cost(p, fs[F_COST_GOOD], ist[I_COST_GOOD], fs[F_COST_BAD], ist[I_COST_BAD])
        else:  # OUTCOME
            o = ref[i]
            y = 1.0 if o_adverse[o] == 1.0 else 0.0
            slot = fast.slot_take(slot_owner, o_fill[o])
            if slot >= 0:
                for j in range(k):
                    x[j] = slot_v[slot, j]
                z[0] = slot_v[slot, k]
                offset = slot_v[slot, k + 1]
                # trust.update((score,), y, offset), then model.update(x, y, offset)
                error = fast.sigmoid(fast.logistic_decision(trust_w, fs[F_TRUST_INTERCEPT], z, offset)) - y
                fast.logistic_step(trust_w, z, error, fp[P_TRUST_LR], fp[P_TRUST_L2])
                fs[F_TRUST_INTERCEPT] -= fp[P_TRUST_ILR] * error
                ist[I_TRUST_N] += 1
                error = fast.sigmoid(fast.logistic_decision(weights, fs[F_INTERCEPT], x, offset)) - y
                fast.logistic_step(weights, x, error, fp[P_LR], fp[P_L2])
                fs[F_INTERCEPT] -= fp[P_ILR] * error
                ist[I_MODEL_N] += 1
            # RunningBaseRate.update (no half-life) and ConditionalCost.update
            ist[I_RATE_TS] = o_ts[o]
            fs[F_ADVERSE] += y
            fs[F_TOTAL] += 1.0
            ist[I_RATE_N] += 1
            realized = o_realized[o]
            if realized == realized:
                if y == 1.0:
                    fs[F_COST_BAD] += realized
                    ist[I_COST_BAD] += 1
                else:
                    fs[F_COST_GOOD] += realized
                    ist[I_COST_GOOD] += 1
