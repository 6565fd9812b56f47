"""Open interest and liquidation cascades: a crowding Markov chain, observable through OI and funding.

Model (parameters of :class:`Crowding`):

* The latent state ``(C, sigma, r)`` changes only at boundaries every ``boundary_ns`` (1 s) from the
  simulation start.  ``C`` in {0, 1, 2} is how crowded positioning is, ``sigma`` = +1 when longs are
  crowded (-1 shorts), ``r`` the number of cascade intervals left (0: no cascade).
* At each boundary: a running cascade counts down (``r -> r - 1``); a cascade that has run its
  ``cascade_boundaries`` intervals ends, flushing the crowd (``C -> 0``, a fresh fair ``sigma``).
  Otherwise a cascade starts with probability ``cascade_start_prob[C]`` (``r -> cascade_boundaries``);
  if none starts, ``C`` moves by ``crowding_transition[C]``.
* During a cascade interval, liquidations fire as a Bernoulli slot process at ``cascade_tick_rate_per_s``:
  each prints a STAT liquidation row (``side`` = -sigma: crowded longs are force-sold, side -1) and
  moves the target mid one tick in that direction 1 µs later.
* Observables: a STAT row just after every boundary with ``open_interest`` (rising with ``C``, falling
  during a cascade and dropping when it ends), ``funding_rate`` (sign = ``sigma``, size rising with ``C``)
  and ``mark_price``; the liquidation rows themselves.  OI and funding reveal the hazard and its side.

Truth for a fill at ``t`` (interval ``k``, aggressor ``a``): liquidation moves landing in ``(t, t + h]``
come from liquidation slots in ``[t + 1, t + h - 1 µs]``.  Those in interval ``k`` have the known cascade
direction; for later intervals the chain is enumerated exactly (dynamic programming over the states at
the boundaries inside the window), giving a finite mixture of Binomial(up slots, p) - Binomial(down slots,
p).  Interior intervals are full, so a path only matters through (direction in the first and last
interval, number of interior cascade intervals each way): the mixture stays small.
"""

from __future__ import annotations

import functools

import attrs
import numpy as np

from sigkit.sim.clock import (
    IMPACT_DELAY_NS, LIQUIDATION_OFFSET_NS, NS_PER_S, SLOT_NS, draw_slots, slot_count, slot_prob,
)
from sigkit.sim.counts import CountLaw, bernoulli_log_cf


@attrs.frozen
class Crowding:
    """The crowding/cascade component: a Markov chain stepped every ``boundary_ns``."""

    boundary_ns: int = NS_PER_S
    crowding_transition: tuple[tuple[float, float, float], ...] = (
        (0.95, 0.05, 0.0), (0.04, 0.90, 0.06), (0.0, 0.05, 0.95))
    cascade_start_prob: tuple[float, float, float] = (0.002, 0.03, 0.15)
    cascade_boundaries: int = 3
    cascade_tick_rate_per_s: float = 8.0
    open_interest_base: float = 60_000.0
    open_interest_step: float = 0.06
    funding_step: float = 2e-5

    def __attrs_post_init__(self):
        if self.boundary_ns % SLOT_NS or self.boundary_ns <= 0:
            raise ValueError(f"boundary_ns must be a positive multiple of {SLOT_NS}")
        for row in self.crowding_transition:
            if len(row) != 3 or abs(sum(row) - 1.0) > 1e-12 or min(row) < 0:
                raise ValueError("crowding_transition must be a 3x3 row-stochastic matrix")
        if self.cascade_boundaries < 1:
            raise ValueError("cascade_boundaries must be at least 1")

    # The chain --------------------------------------------------------------------------------------

    @property
    def states(self) -> tuple[tuple[int, int, int], ...]:
        """Every state ``(C, sigma, r)``, in index order."""
        return _table(self)[0]

    def transitions(self, state: int) -> tuple[tuple[float, int], ...]:
        """``(probability, next state index)`` pairs from ``state``, in a fixed order."""
        return _table(self)[1][state]

    def cascade_direction(self, states) -> np.ndarray:
        """Direction the mid is pushed in each state: -sigma during a cascade, else 0."""
        table = np.array([(-s if r else 0) for _, s, r in self.states], dtype=np.int64)
        return table[np.asarray(states)]

    def run(self, rng: np.random.Generator, n: int, before: int | None) -> np.ndarray:
        """The states of ``n`` consecutive intervals, the first following state ``before`` (None: start)."""
        u = rng.random(n)
        out = np.empty(n, dtype=np.int64)
        state = before
        for i in range(n):
            if state is None:
                state = _table(self)[2][(0, 1 if u[i] < 0.5 else -1, 0)]
            else:
                cum = 0.0
                options = self.transitions(state)
                state = options[-1][1]
                for prob, nxt in options:
                    cum += prob
                    if u[i] < cum:
                        state = nxt
                        break
            out[i] = state
        return out

    # Observables -------------------------------------------------------------------------------------

    def draw_liquidations(self, rng: np.random.Generator, states: np.ndarray, first_interval: int,
                          origin_ns: int):
        """Liquidations in the cascade intervals: ``(ts_ns, side, size)`` sorted by time."""
        per = self.boundary_ns // SLOT_NS
        p = slot_prob(self.cascade_tick_rate_per_s)
        direction = self.cascade_direction(states)
        ts, side = [], []
        for i in np.flatnonzero(direction):
            slots = draw_slots(rng, (first_interval + int(i)) * per, per, p)
            ts.append(origin_ns + slots * SLOT_NS + LIQUIDATION_OFFSET_NS)
            side.append(np.full(len(slots), direction[i], dtype=np.int64))
        ts = np.concatenate(ts) if ts else np.empty(0, np.int64)
        side = np.concatenate(side) if side else np.empty(0, np.int64)
        size = np.round(rng.lognormal(np.log(0.8), 0.8, len(ts)) + 0.001, 3)
        return ts, side, size

    def market_stats(self, rng: np.random.Generator, states: np.ndarray):
        """``(open_interest, funding_rate)`` published just after each boundary."""
        table = np.array(self.states, dtype=np.int64).reshape(-1, 3)[np.asarray(states)]
        crowd, sigma, left = table[:, 0], table[:, 1], table[:, 2]
        flushed = np.where(left > 0, 1.0 - 0.03 * (self.cascade_boundaries - left + 1), 1.0)
        noise_oi = rng.normal(0.0, 0.002, len(states))
        noise_funding = rng.normal(0.0, 2e-6, len(states))
        oi = self.open_interest_base * (1.0 + self.open_interest_step * crowd) * flushed * (1.0 + noise_oi)
        funding = sigma * self.funding_step * (0.5 + crowd) + noise_funding
        return np.round(oi, 1), funding

    # Truth -------------------------------------------------------------------------------------------

    def add_future(self, law: CountLaw, *, t, aggressor, state, horizon_ns: int, origin_ns: int) -> None:
        """Add the liquidation moves landing in ``(t, t + horizon]`` (a mixture over chain paths) to ``law``.

        The window's liquidation slots fall in a first, partly covered interval (direction known), ``m - 1``
        full interior intervals and a last, partly covered one.  With ``L`` the Bernoulli log-cf, the cf is

            first(w) * sum over paths of P(path) * exp(n_full (u L + d conj L)) * last(w, path's last direction)

        and the path sum depends on the fill only through (state, m, aggressor): it is computed once per
        such group and then multiplied by the fill's own first and last factors.
        """
        b = self.boundary_ns
        p = slot_prob(self.cascade_tick_rate_per_s)
        aggressor = np.asarray(aggressor, dtype=np.int64)
        last = t + horizon_ns - IMPACT_DELAY_NS
        interval = (t - origin_ns) // b
        m = np.where(last >= t + 1, (last - origin_ns) // b - interval, -1)
        first_end = origin_ns + (interval + 1) * b - 1
        n_first = slot_count(t + 1, np.minimum(last, first_end), LIQUIDATION_OFFSET_NS, origin_ns)
        n_last = np.where(m >= 1, slot_count(origin_ns + (interval + np.maximum(m, 0)) * b, last,
                                             LIQUIDATION_OFFSET_NS, origin_ns), 0)
        n_full = int(slot_count(origin_ns, origin_ns + b - 1, LIQUIDATION_OFFSET_NS, origin_ns))
        first_rel = self.cascade_direction(state) * aggressor  # +1: the running cascade is adverse
        keys = np.stack([np.asarray(state, dtype=np.int64), np.maximum(m, 0), aggressor], axis=1)
        groups, which = np.unique(keys, axis=0, return_inverse=True)
        which = which.ravel()

        def cf(omega: np.ndarray) -> np.ndarray:
            one = bernoulli_log_cf(p, omega)  # (M,); a count in the other direction is its conjugate
            first = np.exp(n_first[:, None] * one)
            first = np.where(first_rel[:, None] > 0, first, np.where(first_rel[:, None] < 0, np.conj(first), 1.0))
            by_last = np.stack([_path_sum(self, int(s), int(steps), int(a), len(omega)) for s, steps, a in groups])
            last = np.exp(n_last[:, None] * one)
            return first * (last * by_last[which, 0] + np.conj(last) * by_last[which, 1] + by_last[which, 2])

        bound = p * (n_first + n_full * np.maximum(m - 1, 0) + n_last)
        law.add_factor(bound, cf)


@functools.lru_cache(maxsize=None)
def _table(spec: Crowding):
    states = tuple((c, s, r) for c in range(3) for s in (1, -1) for r in range(spec.cascade_boundaries + 1))
    index = {state: i for i, state in enumerate(states)}
    moves = []
    for c, s, r in states:
        if r >= 2:
            options = [(1.0, index[(c, s, r - 1)])]
        elif r == 1:
            options = [(0.5, index[(0, 1, 0)]), (0.5, index[(0, -1, 0)])]
        else:
            q = spec.cascade_start_prob[c]
            options = [(q, index[(c, s, spec.cascade_boundaries)])]
            options += [((1.0 - q) * pc, index[(c2, s, 0)])
                        for c2, pc in enumerate(spec.crowding_transition[c]) if pc > 0]
        moves.append(tuple((prob, nxt) for prob, nxt in options if prob > 0))
    return states, tuple(moves), index


@functools.lru_cache(maxsize=4096)
def _path_sum(spec: Crowding, state: int, steps: int, aggressor: int, m: int) -> np.ndarray:
    """Sum over chain paths of P(path) * cf of its full interior intervals, split by the last direction.

    Rows: last interval pushing with the aggressor (+1), against it (-1), no cascade (0); columns: the
    ``m``-point frequency grid of :class:`CountLaw`.  Depends on no fill detail, so it is cached.
    """
    out = np.zeros((3, m), dtype=complex)
    if steps < 1:
        out[2] = 1.0
        return out
    one = bernoulli_log_cf(slot_prob(spec.cascade_tick_rate_per_s), 2.0 * np.pi * np.arange(m) / m)
    n_full = spec.boundary_ns // SLOT_NS
    for prob, n_up, n_down, last_dir in _paths(spec, state, steps):
        with_a, against_a = (n_up, n_down) if aggressor > 0 else (n_down, n_up)
        row = {1: 0, -1: 1, 0: 2}[last_dir * aggressor]
        out[row] += prob * np.exp(n_full * (with_a * one + against_a * np.conj(one)))
    out.flags.writeable = False
    return out


@functools.lru_cache(maxsize=None)
def _paths(spec: Crowding, state: int, m: int) -> tuple[tuple[float, int, int, int], ...]:
    """Law of the cascade directions over the ``m`` intervals after one in ``state`` (m >= 1).

    Returns ``(probability, interior intervals pushing up, interior pushing down, direction in the last)``
    where the interior intervals are the ``m - 1`` between the first and the last.
    """
    direction = spec.cascade_direction(np.arange(len(spec.states)))
    layer = {(state, 0, 0): 1.0}
    for step in range(1, m + 1):
        nxt: dict[tuple[int, int, int], float] = {}
        for (s, n_up, n_down), prob in layer.items():
            for q, s2 in spec.transitions(s):
                d = int(direction[s2]) if step < m else 0
                key = (s2, n_up + (d > 0), n_down + (d < 0))
                nxt[key] = nxt.get(key, 0.0) + prob * q
        layer = nxt
    out: dict[tuple[int, int, int], float] = {}
    for (s, n_up, n_down), prob in layer.items():
        key = (n_up, n_down, int(direction[s]))
        out[key] = out.get(key, 0.0) + prob
    return tuple((prob, *key) for key, prob in sorted(out.items()))
