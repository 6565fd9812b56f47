"""Informed flow: a hidden news direction and informed share, redrawn in fixed blocks, that trades move.

Model (parameters of :class:`InformedFlow`):

* Time is cut into regime blocks of ``block_ns`` (20 s) from the simulation start.  Each block draws,
  independently, a news direction ``D`` = +1/-1 (fair) and an informed share ``mu`` from ``mu_levels``
  with probabilities ``mu_weights``.  Block boundaries are deterministic, so a window that crosses one
  is an exactly known mixture over the next block's regime.
* Each target trade is informed with probability ``mu``.  An informed trade takes direction ``D`` and
  moves the mid one tick in ``D`` exactly ``IMPACT_DELAY_NS`` (1 µs) after the trade (a BOOK row).  Other
  trades are uninformed (a fair coin, or an arbitrageur in a world with a leader) and have no impact.

What is observable: signed trade flow and the 1 µs impact moves that follow informed trades, so recent
flow reveals ``D`` and ``mu``; a fill whose aggressor trades with the flow is the likely adverse one.

Truth for a fill at ``t`` with aggressor side ``a`` (the adverse direction for the maker is ``a``):

* own impact: Bernoulli(``pi``) with ``pi = P(informed | a, D, mu) = mu [a = D] / (mu [a = D] +
  (1 - mu) P_uninformed(a))`` (Bayes; ``P_uninformed(a)`` is 1/2 for a coin), counted if the impact
  lands inside the horizon;
* future informed impacts: informed trades in slots ``[t + 1, t + h - 1 µs]`` (so their impact lands in
  ``(t, t + h]``); in the current block the count is Binomial(slots, ``p_trade * mu``) in direction
  ``a * D``; in each later block it is the mixture over ``(D', mu')`` of the same;
* everything else (noise ticks, other components) is independent and convolved by the market.
"""

from __future__ import annotations

import attrs
import numpy as np

from sigkit.sim.clock import IMPACT_DELAY_NS, TRADE_OFFSET_NS, slot_count
from sigkit.sim.counts import CountLaw

_REGIME_STREAM = 101


def _probabilities(instance, attribute, value):
    if len(value) != len(instance.mu_levels) or abs(sum(value) - 1.0) > 1e-12 or min(value) < 0:
        raise ValueError("mu_weights must be probabilities, one per mu level, summing to 1")


@attrs.frozen
class InformedFlow:
    """The informed-trading component: regime blocks of ``block_ns`` with direction ``D`` and share ``mu``."""

    mu_levels: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3)
    mu_weights: tuple[float, ...] = attrs.field(default=(0.25, 0.25, 0.25, 0.25), validator=_probabilities)
    block_ns: int = 20_000_000_000

    def regimes(self, seed: int, world_key: int, blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(D, mu)`` of each regime block index in ``blocks``, each drawn from its own stream."""
        direction = np.empty(len(blocks), dtype=np.int64)
        mu = np.empty(len(blocks))
        for i, block in enumerate(blocks):
            rng = np.random.default_rng([seed, world_key, _REGIME_STREAM, int(block)])
            direction[i] = 1 if rng.random() < 0.5 else -1
            mu[i] = self.mu_levels[int(rng.choice(len(self.mu_levels), p=self.mu_weights))]
        return direction, mu

    def regime_at(self, seed: int, world_key: int, ts_ns: np.ndarray, origin_ns: int):
        """``(D, mu)`` in force at each timestamp."""
        blocks = (np.asarray(ts_ns) - origin_ns) // self.block_ns
        unique, inverse = np.unique(blocks, return_inverse=True)
        direction, mu = self.regimes(seed, world_key, unique)
        return direction[inverse], mu[inverse]

    def add_future(self, law: CountLaw, *, t, aggressor, posterior, direction, mu, trade_p: float,
                   horizon_ns: int, origin_ns: int) -> None:
        """Add the fill's own impact and the future informed impacts over ``(t, t + horizon]`` to ``law``."""
        if horizon_ns >= IMPACT_DELAY_NS:
            law.add_bernoulli(posterior)
        last_cause = t + horizon_ns - IMPACT_DELAY_NS
        block = (t - origin_ns) // self.block_ns
        block_end = origin_ns + (block + 1) * self.block_ns
        law.add_binomial(slot_count(t + 1, np.minimum(last_cause, block_end - 1), TRADE_OFFSET_NS, origin_ns),
                         trade_p * mu, aggressor * direction)
        levels = np.asarray(self.mu_levels, dtype=float)
        weights = np.asarray(self.mu_weights, dtype=float)
        # Later blocks: mixture over (D', mu'), D' fair; column j < K is D' = +1, j >= K is D' = -1.
        n_later = -(-horizon_ns // self.block_ns) + 1
        for j in range(1, n_later + 1):
            lo = np.maximum(t + 1, block_end + (j - 1) * self.block_ns)
            hi = np.minimum(last_cause, block_end + j * self.block_ns - 1)
            slots = slot_count(lo, hi, TRADE_OFFSET_NS, origin_ns).astype(float)
            if not np.any(slots > 0):
                continue
            with_flow = np.where(aggressor > 0, slots, 0.0)[:, None] * np.ones(len(levels))
            against = np.where(aggressor < 0, slots, 0.0)[:, None] * np.ones(len(levels))
            w = np.broadcast_to(np.concatenate([weights, weights]) / 2.0, (len(t), 2 * len(levels)))
            law.add_mixture(w, np.concatenate([with_flow, against], axis=1),
                            np.concatenate([against, with_flow], axis=1),
                            np.concatenate([trade_p * levels, trade_p * levels]))
