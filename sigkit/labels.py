"""Labels: the one place that turns a fill and a later mid into a markout and an adverse flag."""

from __future__ import annotations

from sigkit.events import FillQuery, Outcome


def markout_bps(side: int, price: float, mid_later: float) -> float:
    """``side * (mid_later - price) / price * 1e4``: positive when the fill made money."""
    return side * (mid_later - price) / price * 1e4


def label_outcome(fill: FillQuery, mid_at_horizon: float, horizon_ns: int, threshold_bps: float) -> Outcome:
    """The outcome of ``fill`` given the target mid at ``fill.ts_ns + horizon_ns``.

    ``was_adverse`` is ``markout_bps < -threshold_bps``; ``realized_as_bps`` is ``-markout_bps`` (signed:
    negative when the fill made money).
    """
    markout = markout_bps(fill.side, fill.price, mid_at_horizon)
    return Outcome(fill, horizon_ns, mid_at_horizon, markout, markout < -threshold_bps, -markout)
