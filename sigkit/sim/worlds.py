"""The five named worlds: which components each switches on, with what parameters, and what it teaches.

Every world shares the target market of :mod:`sigkit.sim.market` ("sim" BTC-PERP, tick 1.0 around
50 000, i.e. ~0.2 bps a tick, one-tick spread, 8 trades/s) and differs in what moves its mid:

==========  =======================================================================================
null        noise ticks only (4/s), coin-flip trades: truth is one constant, nothing is predictable
informed    noise 2/s + informed flow (:mod:`sigkit.sim.informed`): regime (D, mu) every 20 s
leadlag     no noise; the target repeats a leader venue's steps (4/s) 150 ms later
            (:mod:`sigkit.sim.leadlag`), half the trades are arbitrageurs chasing the gap
oi          noise 4/s + a crowding chain with liquidation cascades (:mod:`sigkit.sim.oi`)
mixed       noise 1/s + all three (informed mu up to 0.3, leader 2 steps/s, 40 % arbitrageurs),
            independent, so their truths combine by convolution
==========  =======================================================================================

Each builder takes the component parameters as keywords (``leadlag_world(lag_ns=50_000_000)``) and
returns a :class:`~sigkit.sim.market.MarketSpec` that :func:`sigkit.sim.simulate` accepts in place of a
name.  A spec keeps its name, and the name keys the random streams: changing one parameter of a world
keeps every other process's draws (common random numbers across parameter sweeps).
"""

from __future__ import annotations

from sigkit.sim.informed import InformedFlow
from sigkit.sim.leadlag import LeaderFollower
from sigkit.sim.market import MarketSpec
from sigkit.sim.oi import Crowding

_NULL = (
    "Null world: the target mid moves only by independent noise ticks (4/s, fair) and every trade is a "
    "fair coin with no impact, so each fill's probability of being adverse is the same constant.  Nothing "
    "is predictable: no observable event (flow, book, anything) carries information about a fill's "
    "markout, and a model that finds edge here is leaking."
)
_INFORMED = (
    "Informed world: every 20 s a hidden regime is drawn, a news direction D (+1/-1) and an informed "
    "share mu in {0, 0.1, 0.2, 0.3}; each target trade is informed with probability mu, trades in "
    "direction D and moves the mid one tick in D 1 us later, on top of 2/s noise ticks.  Predictable "
    "from observable events: recent signed trade flow and the book moves that follow trades reveal D and "
    "mu, and a fill whose aggressor trades with the flow (against the maker's side) is the likely adverse one."
)
_LEADLAG = (
    "Lead-lag world: the leader venue 'simlead' has a mid that takes +1/-1 tick steps (4/s); the target "
    "repeats every leader step exactly lag_ns (150 ms) later and has no other moves.  Half of the target "
    "trades are arbitrageurs trading in the sign of the not-yet-reflected leader move.  Predictable from "
    "observable events: the gap between the leader's and the target's mids (the leader's steps in the last "
    "lag) says where the target mid goes next, so a fill on the wrong side of the gap is adverse."
)
_OI = (
    "OI world: a hidden crowding state (0-2) and crowded side evolve as a Markov chain at whole seconds; "
    "crowding raises the per-second chance of a 3 s liquidation cascade that pushes the mid against the "
    "crowded side at 8 ticks/s, with liquidation STAT rows, on top of 4/s noise ticks.  Predictable from "
    "observable events: open interest (high when crowded, falling in and after a cascade) and the funding "
    "sign (which side is crowded) give the hazard and its direction; liquidation rows flag a running cascade."
)
_MIXED = (
    "Mixed world: the informed regime flow, the leader venue with its 150 ms lag and arbitrageurs, and the "
    "crowding/cascade chain all act at once as independent components, on top of 1/s noise ticks.  "
    "Predictable from observable events: signed trade flow, the leader-target gap, and open interest, "
    "funding and liquidations, each carrying its own part of the fill's adverse probability."
)


def null_world(*, trade_rate_per_s: float = 8.0, noise_tick_rate_per_s: float = 4.0) -> MarketSpec:
    return MarketSpec("null", _NULL, trade_rate_per_s=trade_rate_per_s,
                      noise_tick_rate_per_s=noise_tick_rate_per_s)


def informed_world(*, block_ns: int = 20_000_000_000, mu_levels: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3),
                   mu_weights: tuple[float, ...] = (0.25, 0.25, 0.25, 0.25), trade_rate_per_s: float = 8.0,
                   noise_tick_rate_per_s: float = 2.0) -> MarketSpec:
    return MarketSpec("informed", _INFORMED, trade_rate_per_s=trade_rate_per_s,
                      noise_tick_rate_per_s=noise_tick_rate_per_s,
                      informed=InformedFlow(mu_levels=mu_levels, mu_weights=mu_weights, block_ns=block_ns))


def leadlag_world(*, lag_ns: int = 150_000_000, step_rate_per_s: float = 4.0, arb_share: float = 0.5,
                  leader_trade_rate_per_s: float = 4.0, trade_rate_per_s: float = 8.0) -> MarketSpec:
    return MarketSpec("leadlag", _LEADLAG, trade_rate_per_s=trade_rate_per_s, noise_tick_rate_per_s=0.0,
                      leader=LeaderFollower(step_rate_per_s=step_rate_per_s, lag_ns=lag_ns, arb_share=arb_share,
                                            trade_rate_per_s=leader_trade_rate_per_s))


def oi_world(*, crowding: Crowding | None = None, trade_rate_per_s: float = 8.0,
             noise_tick_rate_per_s: float = 4.0) -> MarketSpec:
    return MarketSpec("oi", _OI, trade_rate_per_s=trade_rate_per_s, noise_tick_rate_per_s=noise_tick_rate_per_s,
                      crowding=crowding or Crowding())


def mixed_world(*, lag_ns: int = 150_000_000, trade_rate_per_s: float = 8.0,
                noise_tick_rate_per_s: float = 1.0) -> MarketSpec:
    return MarketSpec("mixed", _MIXED, trade_rate_per_s=trade_rate_per_s,
                      noise_tick_rate_per_s=noise_tick_rate_per_s,
                      informed=InformedFlow(mu_levels=(0.0, 0.1, 0.2, 0.3)),
                      leader=LeaderFollower(step_rate_per_s=2.0, lag_ns=lag_ns, arb_share=0.4),
                      crowding=Crowding())


BUILDERS = {
    "null": null_world,
    "informed": informed_world,
    "leadlag": leadlag_world,
    "oi": oi_world,
    "mixed": mixed_world,
}
