"""Leader and follower: a leader venue whose every mid step the target repeats exactly ``lag_ns`` later.

Model (parameters of :class:`LeaderFollower`):

* The leader venue (``"simlead"``, symbol ``"BTC-PERP"``) has a one-tick-spread book whose mid takes
  +1/-1 tick steps: independent Bernoulli slot processes up and down at ``step_rate_per_s / 2`` each.
  Each step is a leader BOOK row; the leader also prints fair-coin TRADE rows at ``trade_rate_per_s``
  (observable, no effect on anything).
* The target repeats each leader step exactly ``lag_ns`` later (default 150 ms), as a target BOOK row.
  With no other component, the target mid path is the leader's shifted by ``lag_ns``.
* The *gap* at ``t`` is the sum of leader steps in ``(t - lag, t]``: moves the leader has made that the
  target has not yet reflected (observable as leader mid minus target mid when nothing else moves the
  target).  A target trade is, with probability ``arb_share``, an arbitrageur trading in the sign of the
  gap (a fair coin when the gap is zero); otherwise it is uninformed.

Truth for a fill at ``t`` with aggressor side ``a`` and horizon ``h``: the target moves in ``(t, t + h]``
by the leader steps made in ``(t - lag, t + h - lag]``.  The part in ``(t - lag, min(t, t + h - lag)]`` is
already known (a deterministic shift ``a * gap``); the part in ``[t + 1, t + h - lag]`` is
Binomial(up slots, p) - Binomial(down slots, p) in the adverse frame.
"""

from __future__ import annotations

import attrs
import numpy as np

from sigkit.sim.clock import (
    LEADER_DOWN_OFFSET_NS, LEADER_TRADE_OFFSET_NS, LEADER_UP_OFFSET_NS, NS_PER_S, draw_slots, slot_count,
    slot_prob, sum_between,
)
from sigkit.sim.counts import CountLaw


def _lag_fits(instance, attribute, value):
    if not 0 < value <= 10 * NS_PER_S:
        raise ValueError(f"lag_ns must be in (0, 10 s], got {value}")


@attrs.frozen
class LeaderFollower:
    """The lead-lag component: leader steps at ``step_rate_per_s``, repeated by the target ``lag_ns`` later."""

    step_rate_per_s: float = 4.0
    lag_ns: int = attrs.field(default=150_000_000, validator=_lag_fits)
    arb_share: float = 0.5
    trade_rate_per_s: float = 4.0

    def draw_steps(self, rng: np.random.Generator, first_slot: int, n_slots: int, origin_ns: int, slot_ns: int):
        """Leader mid steps in one block: ``(ts_ns, delta)`` sorted by time."""
        p = slot_prob(self.step_rate_per_s / 2.0)
        up = origin_ns + draw_slots(rng, first_slot, n_slots, p) * slot_ns + LEADER_UP_OFFSET_NS
        down = origin_ns + draw_slots(rng, first_slot, n_slots, p) * slot_ns + LEADER_DOWN_OFFSET_NS
        ts = np.concatenate([up, down])
        delta = np.concatenate([np.ones(len(up), np.int64), -np.ones(len(down), np.int64)])
        order = np.argsort(ts, kind="stable")
        return ts[order], delta[order]

    def draw_trades(self, rng: np.random.Generator, first_slot: int, n_slots: int, origin_ns: int, slot_ns: int):
        """Leader-venue trades in one block: ``(ts_ns, aggressor side)``."""
        slots = draw_slots(rng, first_slot, n_slots, slot_prob(self.trade_rate_per_s))
        side = np.where(rng.random(len(slots)) < 0.5, 1, -1).astype(np.int64)
        return origin_ns + slots * slot_ns + LEADER_TRADE_OFFSET_NS, side

    def gap(self, t, steps_ts, steps_cum) -> np.ndarray:
        """Leader steps in ``(t - lag, t]``, not yet repeated by the target at ``t``."""
        return sum_between(steps_ts, steps_cum, t - self.lag_ns, t)

    def add_future(self, law: CountLaw, *, t, aggressor, steps_ts, steps_cum, horizon_ns: int,
                   origin_ns: int) -> np.ndarray:
        """Add the future leader steps that reach the target by ``t + horizon``; return the known shift."""
        known = sum_between(steps_ts, steps_cum, t - self.lag_ns,
                                 np.minimum(t, t + horizon_ns - self.lag_ns))
        p = slot_prob(self.step_rate_per_s / 2.0)
        last = t + horizon_ns - self.lag_ns
        law.add_binomial(slot_count(t + 1, last, LEADER_UP_OFFSET_NS, origin_ns), p, aggressor)
        law.add_binomial(slot_count(t + 1, last, LEADER_DOWN_OFFSET_NS, origin_ns), p, -aggressor)
        return aggressor * known
