"""Seeded simulated markets whose every target trade carries its exact probability of being adverse.

``simulate(world, seed=..., duration_ns=...)`` yields chunks of :data:`sigkit.events.EVENT_DTYPE` rows.
Every TRADE row on the target market ("sim", "BTC-PERP") is a fill of a maker quote on the passive side
(our side ``s = -aggressor``, price = the trade price), and its ``truth`` column holds the exact
``P(markout_bps < -threshold_bps)`` at ``horizon_ns``, given everything the simulator knows at the trade
(regime, leader gap, crowding state, ...) but not the future randomness.  All other rows have NaN truth.
The worlds are listed in :mod:`sigkit.sim.worlds`; each component module (:mod:`~sigkit.sim.informed`,
:mod:`~sigkit.sim.leadlag`, :mod:`~sigkit.sim.oi`) documents its parameters and its part of the truth, and
:mod:`sigkit.sim.market` how the parts combine.  Parameters can be changed per run::

    simulate(world_spec("leadlag", lag_ns=50_000_000), seed=1, duration_ns=600_000_000_000)
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from sigkit.sim.market import LEADER_SYMBOL, LEADER_VENUE, TARGET_SYMBOL, TARGET_VENUE, MarketSpec, generate
from sigkit.sim.worlds import BUILDERS

WORLDS: tuple[str, ...] = ("null", "informed", "leadlag", "oi", "mixed")
DEFAULT_START_NS = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z

__all__ = [
    "DEFAULT_START_NS", "LEADER_SYMBOL", "LEADER_VENUE", "TARGET_SYMBOL", "TARGET_VENUE", "WORLDS", "MarketSpec",
    "describe_world", "simulate", "world_spec",
]


def world_spec(world: str | MarketSpec, **params) -> MarketSpec:
    """The :class:`MarketSpec` of a named world, with optional parameter overrides (e.g. ``lag_ns``)."""
    if isinstance(world, MarketSpec):
        if params:
            raise ValueError("parameters can only be given with a world name")
        return world
    if world not in BUILDERS:
        raise ValueError(f"unknown world {world!r}; valid worlds: {', '.join(WORLDS)}")
    return BUILDERS[world](**params)


def simulate(world: str | MarketSpec, *, seed: int, duration_ns: int, horizon_ns: int = 1_000_000_000,
             threshold_bps: float = 0.0, chunk_rows: int = 16384,
             start_ns: int = DEFAULT_START_NS) -> Iterator[np.ndarray]:
    """Yield the world's events over ``[start_ns, start_ns + duration_ns)`` in time order.

    Chunks hold at most ``chunk_rows`` rows.  The same arguments give identical bytes, and a longer
    ``duration_ns`` gives the same rows for the common prefix; ``truth`` depends on ``horizon_ns`` and
    ``threshold_bps`` but never on ``duration_ns``.

    >>> rows = np.concatenate(list(simulate("informed", seed=7, duration_ns=60_000_000_000)))
    """
    spec = world_spec(world)
    return generate(spec, seed=seed, duration_ns=duration_ns, horizon_ns=horizon_ns,
                    threshold_bps=threshold_bps, chunk_rows=chunk_rows, start_ns=start_ns)


def describe_world(world: str | MarketSpec) -> str:
    """One paragraph: what is predictable in ``world`` and from which observable events."""
    return world_spec(world).description
