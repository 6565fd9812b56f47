"""Exact laws of the signed tick counts that move a simulated mid, and their tail probabilities.

A fill's future adverse move (in ticks, positive = against the maker) is a sum of *independent*
integer components: Binomial counts of up and down ticks (noise, informed impacts, leader catch-up,
liquidation moves), a Bernoulli (the fill's own impact) and finite mixtures of such sums (a regime or
a crowding path not yet drawn).  :class:`CountLaw` multiplies their characteristic functions on an
``M``-point frequency grid and inverts with one FFT; ``M`` is chosen so the probability that the total
count exceeds ``M/2 - 1`` (the only thing that could alias) is below 1e-18.  The result is the exact
pmf up to float rounding (~1e-14), with no simulation and no normal approximation.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

_TAIL_MASS = 1e-18


def bernoulli_log_cf(p, omega: np.ndarray) -> np.ndarray:
    """``log E[exp(i w B)]`` of one Bernoulli(p) trial, accurate for tiny ``p``; shape ``p.shape + omega.shape``."""
    p = np.asarray(p, dtype=float)[..., None]
    x = -2.0 * p * np.sin(0.5 * omega) ** 2  # Re(p (e^{iw} - 1)), without cancellation
    y = p * np.sin(omega)
    return 0.5 * np.log1p(2.0 * x + x * x + y * y) + 1j * np.arctan2(y, 1.0 + x)


def _half_width(total_mean: float) -> int:
    """Smallest W with P(count > W) < 1e-18 for any sum of Bernoullis with mean ``total_mean`` (Chernoff)."""
    lam = max(float(total_mean), 0.0)
    w = max(int(math.ceil(lam)) + 1, 1)
    while lam > 0 and (-lam + w * (1.0 + math.log(lam / w))) > math.log(_TAIL_MASS):
        w += 1
    return w


class CountLaw:
    """The law of ``Y``, a sum of independent integer components, for ``n`` fills at once.

    Add components, then ask :meth:`tail` for ``P(Y >= k)`` per fill.
    """

    def __init__(self, n: int):
        self.n = n
        self._binomials: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._bernoullis: list[np.ndarray] = []
        self._mixtures: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self._factors: list[tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]] = []

    def add_binomial(self, trials, p, sign) -> None:
        """``sign * Binomial(trials, p)``; ``trials`` and ``sign`` (+1/-1) per fill, ``p`` scalar or per fill."""
        shape = (self.n,)
        self._binomials.append((
            np.broadcast_to(np.asarray(trials, dtype=float), shape),
            np.broadcast_to(np.asarray(p, dtype=float), shape),
            np.broadcast_to(np.asarray(sign), shape),
        ))

    def add_bernoulli(self, prob) -> None:
        """``+1`` with probability ``prob`` (per fill), else 0."""
        self._bernoullis.append(np.broadcast_to(np.asarray(prob, dtype=float), (self.n,)))

    def add_mixture(self, weights, up_trials, down_trials, p) -> None:
        """``sum_k weights[:, k] * law(Binomial(up_trials[:, k], p_k) - Binomial(down_trials[:, k], p_k))``.

        ``weights``, ``up_trials`` and ``down_trials`` are (fills, K); ``p`` is (K,) or (fills, K).  Each
        row of ``weights`` sums to 1 (zero-weight columns pad rows with fewer outcomes).
        """
        weights = np.asarray(weights, dtype=float)
        k = weights.shape[1]
        self._mixtures.append((
            weights,
            np.asarray(up_trials, dtype=float).reshape(self.n, k),
            np.asarray(down_trials, dtype=float).reshape(self.n, k),
            np.broadcast_to(np.asarray(p, dtype=float), (self.n, k)),
        ))

    def add_factor(self, mean_bound, cf: Callable[[np.ndarray], np.ndarray]) -> None:
        """A component given by its characteristic function ``cf(omega)`` -> (fills, len(omega)) complex.

        ``mean_bound`` (per fill) must bound the expected number of ticks it contributes, whatever happens.
        """
        self._factors.append((np.broadcast_to(np.asarray(mean_bound, dtype=float), (self.n,)), cf))

    def mean_count_bound(self) -> np.ndarray:
        """Per fill, an upper bound on the expected total number of ticks (either direction)."""
        total = np.zeros(self.n)
        for trials, p, _ in self._binomials:
            total += trials * p
        for prob in self._bernoullis:
            total += prob
        for weights, up, down, p in self._mixtures:
            total += np.max(np.where(weights > 0, (up + down) * p, 0.0), axis=1, initial=0.0)
        for bound, _ in self._factors:
            total += bound
        return total

    def tail(self, k) -> np.ndarray:
        """``P(Y >= k)`` per fill (``k`` an integer per fill)."""
        k = np.broadcast_to(np.asarray(k, dtype=np.int64), (self.n,))
        if self.n == 0:
            return np.empty(0)
        half = _half_width(float(np.max(self.mean_count_bound(), initial=0.0)))
        m = 1 << max(int(math.ceil(math.log2(2 * half + 2))), 3)
        omega = 2.0 * np.pi * np.arange(m) / m
        # Few distinct per-trial probabilities occur: evaluate each one's log-cf once.
        all_p = [p for _, p, _ in self._binomials] + [p.ravel() for _, _, _, p in self._mixtures]
        unique, inverse = np.unique(np.concatenate(all_p) if all_p else np.zeros(0), return_inverse=True)
        table = bernoulli_log_cf(unique, omega)
        # Binomials collapse to per-fill trial counts per distinct p: log cf = count @ Re L + i net @ Im L.
        count = np.zeros((self.n, len(unique)))
        net = np.zeros((self.n, len(unique)))
        rows = np.arange(self.n)
        for i, (trials, _, sign) in enumerate(self._binomials):
            idx = inverse[i * self.n:(i + 1) * self.n]
            count[rows, idx] += trials
            net[rows, idx] += sign * trials
        cf = np.exp(count @ table.real + 1j * (net @ table.imag))
        for prob in self._bernoullis:
            cf *= 1.0 - prob[:, None] + prob[:, None] * np.exp(1j * omega)
        cursor = len(self._binomials) * self.n
        for weights, up, down, _ in self._mixtures:
            idx = inverse[cursor:cursor + weights.size].reshape(weights.shape)
            cursor += weights.size
            mix = np.zeros((self.n, m), dtype=complex)
            for j in range(weights.shape[1]):
                w = weights[:, j]
                mix += w[:, None]  # the cf of zero ticks; rows with trials get the rest below
                live = np.flatnonzero((w > 0) & ((up[:, j] > 0) | (down[:, j] > 0)))
                if len(live):
                    one = table[idx[live, j]]
                    law = np.exp(up[live, j, None] * one + down[live, j, None] * np.conj(one))
                    mix[live] += w[live, None] * (law - 1.0)
            cf *= mix
        for _, factor in self._factors:
            cf *= factor(omega)
        # pmf[y mod m] = (1/m) sum_j cf(w_j) exp(-i w_j y); reorder to y = -m/2 .. m/2 - 1.
        pmf = np.roll(np.fft.fft(cf, axis=1).real / m, m // 2, axis=1)
        at_least = np.concatenate([np.cumsum(pmf[:, ::-1], axis=1)[:, ::-1], np.zeros((self.n, 1))], axis=1)
        index = np.clip(k + m // 2, 0, m)
        return np.clip(at_least[np.arange(self.n), index], 0.0, 1.0)
