"""The engine's compiled helpers for laying out a piece's schedule (see :meth:`sigkit.engine._State._plan`).

Integer bookkeeping only, each in one pass where numpy would take a dozen: the numpy formulation they
replace is kept in the tests (``tests/test_engine.py``), which check both give the same arrays.
"""

from __future__ import annotations

from sigkit.batch import EVENT, OUTCOME, QUERY
from sigkit.fast import kernel


@kernel
def search_right(a, v, out):
    """``out = numpy.searchsorted(a, v, side="right")`` for sorted ``a``, in one merge pass when ``v`` is
    sorted too (a due time per fill, in fill order); a key smaller than the one before it is searched by
    bisection, so any ``v`` gives numpy's answer."""
    m = a.size
    j = 0
    for i in range(v.size):
        x = v[i]
        if i and x < v[i - 1]:
            lo, hi = 0, j
            while lo < hi:
                mid = (lo + hi) // 2
                if a[mid] <= x:
                    lo = mid + 1
                else:
                    hi = mid
            j = lo
        while j < m and a[j] <= x:
            j += 1
        out[i] = j


@kernel
def lay_out(n_groups, out_group, fill_group, event_group, event_rows, out_adverse, ref_total, ref_adverse, op,
            ref, query_starts, p_ref):
    """The schedule of a piece: for each group of equal timestamp, the outcomes due before it, then its
    queries, then its events (``*_group``: each one's group, nondecreasing).  Writes ``op``/``ref``, where
    each group's queries start, and each query's causal reference ``(adverse + 1) / (outcomes + 2)`` over
    the outcomes delivered so far (``ref_total``/``ref_adverse`` before this piece, 0/1 each: exact)."""
    i = 0
    o = 0
    f = 0
    e = 0
    seen = 0
    bad = 0.0
    for g in range(n_groups):
        while o < out_group.size and out_group[o] == g:
            op[i] = OUTCOME
            ref[i] = o
            seen += 1
            bad += out_adverse[o]
            o += 1
            i += 1
        query_starts[g] = i
        while f < fill_group.size and fill_group[f] == g:
            op[i] = QUERY
            ref[i] = f
            p_ref[f] = (bad + ref_adverse + 1.0) / (float(seen) + ref_total + 2.0)
            f += 1
            i += 1
        while e < event_group.size and event_group[e] == g:
            op[i] = EVENT
            ref[i] = event_rows[e]
            e += 1
            i += 1
    return i
