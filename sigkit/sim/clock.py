"""The slot grid every simulated process lives on: 2 µs slots, one fixed nanosecond offset per process.

Each random process is a Bernoulli process on the slots (at most one event per slot, independently with
probability ``rate_per_s * SLOT_NS / 1e9``), so the number of its events in any time window is *exactly*
Binomial(number of its slots in the window, p): that is what keeps every ``truth`` exact, with no
continuous-time approximation.  Giving each process its own offset inside the slot means rows of
different processes on the target market never share a timestamp, and a consequence delayed by 1 µs (an
informed trade's impact, a liquidation's price move) lands on an offset of its own.

Slots are counted from the simulation's ``start_ns`` (the *origin*): slot ``i`` of a process with offset
``o`` is at ``origin + i * SLOT_NS + o``.
"""

from __future__ import annotations

import numpy as np

SLOT_NS = 2_000
NS_PER_S = 1_000_000_000

#: Delay between an informed trade (or a liquidation print) and the mid move it causes.
IMPACT_DELAY_NS = 1_000

TRADE_OFFSET_NS = 0
LIQUIDATION_OFFSET_NS = 200
NOISE_UP_OFFSET_NS = 400
LEADER_UP_OFFSET_NS = 600
LEADER_TRADE_OFFSET_NS = 800
IMPACT_OFFSET_NS = TRADE_OFFSET_NS + IMPACT_DELAY_NS
CASCADE_MOVE_OFFSET_NS = LIQUIDATION_OFFSET_NS + IMPACT_DELAY_NS
NOISE_DOWN_OFFSET_NS = 1_400
LEADER_DOWN_OFFSET_NS = 1_600
STAT_OFFSET_NS = 1_800


def slot_prob(rate_per_s: float) -> float:
    """Per-slot event probability of a process with mean rate ``rate_per_s``."""
    p = rate_per_s * SLOT_NS / NS_PER_S
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"rate {rate_per_s}/s does not fit the {SLOT_NS} ns slot grid")
    return p


def draw_slots(rng: np.random.Generator, first_slot: int, n_slots: int, p: float) -> np.ndarray:
    """Sorted indices of the slots in ``[first_slot, first_slot + n_slots)`` where a Bernoulli(p) process fires."""
    k = int(rng.binomial(n_slots, p)) if p > 0 else 0
    picked = rng.choice(n_slots, size=k, replace=False) if k else np.empty(0, np.int64)
    return np.sort(picked).astype(np.int64) + first_slot


def slot_count(lo_ns, hi_ns, offset_ns: int, origin_ns: int) -> np.ndarray:
    """How many slot times ``origin + offset + i * SLOT_NS`` lie in ``[lo_ns, hi_ns]`` (0 when hi < lo)."""
    lo = np.asarray(lo_ns, dtype=np.int64) - (origin_ns + offset_ns)
    hi = np.asarray(hi_ns, dtype=np.int64) - (origin_ns + offset_ns)
    first = -((-lo) // SLOT_NS)
    last = hi // SLOT_NS
    return np.maximum(last - first + 1, 0)


def sum_between(ts_sorted: np.ndarray, cum: np.ndarray, lo_excl, hi_incl) -> np.ndarray:
    """Sum of the deltas whose time is in ``(lo_excl, hi_incl]`` (``cum`` = cumulative sum of the deltas)."""
    padded = np.concatenate([[0], cum])
    hi = padded[np.searchsorted(ts_sorted, hi_incl, side="right")]
    lo = padded[np.searchsorted(ts_sorted, lo_excl, side="right")]
    return np.where(np.asarray(hi_incl) > np.asarray(lo_excl), hi - lo, 0)
