"""The simulated market: one target book plus optional informed, leader and crowding components.

Everything is generated in fixed blocks of ``BLOCK_NS`` (20 s) from the start, each random process of
each block drawing from its own stream ``default_rng([seed, world key, stream, block])``; state that
crosses a block boundary (mid levels, the crowding chain, delayed moves) is carried forward.  The rows of
a run are therefore a function of (spec, seed, horizon, threshold, start) and block index only: a longer
``duration_ns`` extends the stream without changing its prefix, and ``duration_ns`` never enters ``truth``.

Prices sit on a tick grid with a one-tick spread, so the mid is always on the half tick and every mid
move is one tick.  A target BOOK row is written at the start and at every move; the move sources are
independent (noise up/down, informed impacts, leader catch-up, liquidation moves), which is what lets
:mod:`sigkit.sim.counts` compute each target trade's ``truth`` exactly:

    truth = P(Y >= k - shift)

where ``shift`` is the adverse move already decided at ``t`` (leader steps not yet repeated), ``Y`` the
sum of the future components in the fill's adverse frame, and ``k`` the smallest whole number of ticks
for which ``markout_bps = s * (M - P) / P * 1e4 < -threshold_bps`` (evaluated in floats exactly as the
labeller does, with ``s = -aggressor`` and ``M`` the mid after the move).

At equal timestamps book and stat rows come before trades, so a trade's price and its ``truth`` both
see everything stamped at or before its own time; ``truth`` counts future events from ``t + 1`` ns.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

import attrs
import numpy as np

from sigkit.events import BOOK, STAT, TRADE, new_rows
from sigkit.sim.clock import (
    IMPACT_DELAY_NS, NOISE_DOWN_OFFSET_NS, NOISE_UP_OFFSET_NS, NS_PER_S, SLOT_NS,
    STAT_OFFSET_NS, TRADE_OFFSET_NS, draw_slots, slot_count, slot_prob, sum_between,
)
from sigkit.sim.counts import CountLaw
from sigkit.sim.informed import InformedFlow
from sigkit.sim.leadlag import LeaderFollower
from sigkit.sim.oi import Crowding

TARGET_VENUE = "sim"
TARGET_SYMBOL = "BTC-PERP"
LEADER_VENUE = "simlead"
LEADER_SYMBOL = "BTC-PERP"
BLOCK_NS = 20 * NS_PER_S

# Random streams, one per process and block.
_TRADES, _NOISE, _LEADER_STEPS, _LEADER_TRADES, _CHAIN, _LIQUIDATIONS, _STATS, _SIZES = range(1, 9)

# Order of rows sharing a timestamp: moves and stats first, trades last.
_RANK_LIQUIDATION, _RANK_LEADER_BOOK, _RANK_TARGET_BOOK, _RANK_STAT, _RANK_LEADER_TRADE, _RANK_TRADE = range(6)


@attrs.frozen
class MarketSpec:
    """A simulated world: the target's own flow plus the optional components that make fills toxic.

    ``trade_rate_per_s``: target trades (the fills to score); ``noise_tick_rate_per_s``: unpredictable
    target mid ticks (half up, half down); ``tick`` and ``start_price`` place the grid.
    """

    name: str
    description: str
    trade_rate_per_s: float = 8.0
    noise_tick_rate_per_s: float = 4.0
    informed: InformedFlow | None = None
    leader: LeaderFollower | None = None
    crowding: Crowding | None = None
    tick: float = 1.0
    start_price: float = 50_000.0

    def __attrs_post_init__(self):
        if self.crowding is not None and BLOCK_NS % self.crowding.boundary_ns:
            raise ValueError(f"crowding.boundary_ns must divide the {BLOCK_NS} ns generation block")
        if self.leader is not None and self.leader.lag_ns > BLOCK_NS:
            raise ValueError("leader.lag_ns must not exceed the generation block")

    @property
    def key(self) -> int:
        """The world's part of every random stream's key."""
        return zlib.crc32(self.name.encode())


@attrs.define
class _Delayed:
    """Causes of delayed target moves (cause time, direction) from the previous and current block."""

    ts: np.ndarray = attrs.field(factory=lambda: np.empty(0, np.int64))
    delta: np.ndarray = attrs.field(factory=lambda: np.empty(0, np.int64))

    def extend(self, ts: np.ndarray, delta: np.ndarray) -> "_Delayed":
        return _Delayed(np.concatenate([self.ts, ts]), np.concatenate([self.delta, delta]))


@attrs.define
class _Carry:
    level: int
    leader_level: int
    chain_state: int | None = None
    leader_steps: _Delayed = attrs.field(factory=_Delayed)
    impacts: _Delayed = attrs.field(factory=_Delayed)
    liquidations: _Delayed = attrs.field(factory=_Delayed)


def generate(spec: MarketSpec, *, seed: int, duration_ns: int, horizon_ns: int = NS_PER_S,
             threshold_bps: float = 0.0, chunk_rows: int = 16384, start_ns: int) -> Iterator[np.ndarray]:
    """The rows of ``spec`` over ``[start_ns, start_ns + duration_ns)`` in chunks of EVENT_DTYPE.

    Arguments are checked here, before the first chunk is asked for.
    """
    _check_run(seed, duration_ns, horizon_ns, threshold_bps, chunk_rows, start_ns)
    return _chunks(spec, seed, duration_ns, horizon_ns, float(threshold_bps), chunk_rows, start_ns)


def _chunks(spec, seed, duration_ns, horizon_ns, threshold_bps, chunk_rows, start_ns) -> Iterator[np.ndarray]:
    end_ns = start_ns + duration_ns
    level = int(round(spec.start_price / spec.tick))
    carry = _Carry(level=level, leader_level=level)
    pending: list[np.ndarray] = [_opening_books(spec, seed, start_ns, level)] if duration_ns > 0 else []
    n_pending = sum(len(p) for p in pending)
    block = 0
    while start_ns + block * BLOCK_NS < end_ns:
        rows = _block_rows(spec, seed, block, start_ns, horizon_ns, threshold_bps, carry)
        rows = rows[rows["ts_ns"] < end_ns]
        pending.append(rows)
        n_pending += len(rows)
        if n_pending >= chunk_rows:
            joined = np.concatenate(pending)
            cut = len(joined) - len(joined) % chunk_rows
            for i in range(0, cut, chunk_rows):
                yield joined[i:i + chunk_rows]
            pending, n_pending = [joined[cut:]], len(joined) - cut
        block += 1
    if n_pending:
        yield np.concatenate(pending)


def _check_run(seed, duration_ns, horizon_ns, threshold_bps, chunk_rows, start_ns) -> None:
    for name, value in (("seed", seed), ("duration_ns", duration_ns), ("horizon_ns", horizon_ns),
                        ("chunk_rows", chunk_rows), ("start_ns", start_ns)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{name} must be an integer, got {value!r}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    if duration_ns < 0:
        raise ValueError(f"duration_ns must be non-negative, got {duration_ns}")
    if horizon_ns <= 0:
        raise ValueError(f"horizon_ns must be positive, got {horizon_ns}")
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be at least 1, got {chunk_rows}")
    if not np.isfinite(threshold_bps):
        raise ValueError(f"threshold_bps must be finite, got {threshold_bps}")


def _stream(spec: MarketSpec, seed: int, stream: int, block: int) -> np.random.Generator:
    return np.random.default_rng([seed, spec.key, stream, block])


def _slot_times(slots: np.ndarray, offset_ns: int, origin_ns: int) -> np.ndarray:
    return origin_ns + slots * SLOT_NS + offset_ns


def _level_at(ts, move_ts: np.ndarray, levels_after: np.ndarray, level_before: int) -> np.ndarray:
    """Mid level (bid in ticks) after every move stamped at or before ``ts``."""
    idx = np.searchsorted(move_ts, ts, side="right")
    return np.where(idx > 0, levels_after[np.maximum(idx - 1, 0)], level_before)


def _moves_landing(causes: _Delayed, delay_ns: int, lo_ns: int, hi_ns: int):
    """The moves of ``causes`` (delayed by ``delay_ns``) landing in ``[lo_ns, hi_ns)``."""
    ts = causes.ts + delay_ns
    keep = (ts >= lo_ns) & (ts < hi_ns)
    return ts[keep], causes.delta[keep]


def _block_rows(spec: MarketSpec, seed: int, block: int, origin_ns: int, horizon_ns: int,
                threshold_bps: float, carry: _Carry) -> np.ndarray:
    lo_ns, hi_ns = origin_ns + block * BLOCK_NS, origin_ns + (block + 1) * BLOCK_NS
    first_slot, n_slots = block * (BLOCK_NS // SLOT_NS), BLOCK_NS // SLOT_NS
    parts: list[tuple[np.ndarray, int]] = []

    # Target trades: times, sizes and the uniforms that decide who they are.
    rng = _stream(spec, seed, _TRADES, block)
    trade_p = slot_prob(spec.trade_rate_per_s)
    t = _slot_times(draw_slots(rng, first_slot, n_slots, trade_p), TRADE_OFFSET_NS, origin_ns)
    who, coin = rng.random(len(t)), np.where(rng.random(len(t)) < 0.5, 1, -1)
    trade_size = _trade_sizes(rng, len(t))

    # Leader steps, and the gap they leave on the target.
    gap = np.zeros(len(t), np.int64)
    leader_ts = np.empty(0, np.int64)
    leader_steps = carry.leader_steps
    if spec.leader is not None:
        lead = spec.leader
        leader_ts, leader_delta = lead.draw_steps(_stream(spec, seed, _LEADER_STEPS, block), first_slot, n_slots,
                                                  origin_ns, SLOT_NS)
        leader_steps = carry.leader_steps.extend(leader_ts, leader_delta)
        leader_levels = carry.leader_level + np.cumsum(leader_delta)
        _check_price(leader_levels, leader_ts, origin_ns, spec, LEADER_SYMBOL)
        gap = lead.gap(t, leader_steps.ts, np.cumsum(leader_steps.delta))
        parts.append((_book_rows(LEADER_VENUE, LEADER_SYMBOL, leader_ts, leader_levels, spec.tick,
                                 _stream(spec, seed, _SIZES, 2 * block + 1)), _RANK_LEADER_BOOK))
        rng = _stream(spec, seed, _LEADER_TRADES, block)
        lt_ts, lt_side = lead.draw_trades(rng, first_slot, n_slots, origin_ns, SLOT_NS)
        lt_level = _level_at(lt_ts, leader_ts, leader_levels, carry.leader_level)
        lt_price = np.where(lt_side > 0, lt_level + 1, lt_level) * spec.tick
        parts.append((_trade_rows(LEADER_VENUE, LEADER_SYMBOL, lt_ts, lt_side, lt_price,
                                  _trade_sizes(rng, len(lt_ts))), _RANK_LEADER_TRADE))
        carry.leader_level = int(carry.leader_level + leader_delta.sum())

    # Who trades: informed (direction D), arbitrageur (sign of the gap) or a coin; Bayes for informed.
    direction = np.zeros(len(t), np.int64)
    mu = np.zeros(len(t))
    if spec.informed is not None:
        direction, mu = spec.informed.regime_at(seed, spec.key, t, origin_ns)
    arb_share = spec.leader.arb_share if spec.leader is not None else 0.0
    gap_sign = np.sign(gap)
    informed = who < mu
    arbitrage = ~informed & (who < mu + (1.0 - mu) * arb_share) & (gap_sign != 0)
    aggressor = np.where(informed, direction, np.where(arbitrage, gap_sign, coin)).astype(np.int64)
    p_uninformed = arb_share * np.where(gap_sign != 0, (aggressor == gap_sign) * 1.0, 0.5) + (1 - arb_share) * 0.5
    p_informed = np.where(aggressor == direction, mu, 0.0)
    evidence = p_informed + (1.0 - mu) * p_uninformed
    posterior = np.divide(p_informed, evidence, out=np.zeros(len(t)), where=evidence > 0)
    impacts = carry.impacts.extend(t[informed], direction[informed])

    # Crowding chain, its liquidations and the OI/funding rows.
    states = np.empty(0, np.int64)
    liquidations = carry.liquidations
    liq = None
    if spec.crowding is not None:
        crowd = spec.crowding
        per_block = BLOCK_NS // crowd.boundary_ns
        states = crowd.run(_stream(spec, seed, _CHAIN, block), per_block, carry.chain_state)
        carry.chain_state = int(states[-1])
        liq = crowd.draw_liquidations(_stream(spec, seed, _LIQUIDATIONS, block), states, block * per_block,
                                      origin_ns)
        liquidations = carry.liquidations.extend(liq[0], liq[1])

    # Every target move of this block, in time order, and the mid levels they make.
    rng = _stream(spec, seed, _NOISE, block)
    noise_p = slot_prob(spec.noise_tick_rate_per_s / 2.0)
    up = _slot_times(draw_slots(rng, first_slot, n_slots, noise_p), NOISE_UP_OFFSET_NS, origin_ns)
    down = _slot_times(draw_slots(rng, first_slot, n_slots, noise_p), NOISE_DOWN_OFFSET_NS, origin_ns)
    move_parts = [(up, np.ones(len(up), np.int64)), (down, -np.ones(len(down), np.int64)),
                  _moves_landing(impacts, IMPACT_DELAY_NS, lo_ns, hi_ns),
                  _moves_landing(liquidations, IMPACT_DELAY_NS, lo_ns, hi_ns)]
    if spec.leader is not None:
        move_parts.append(_moves_landing(leader_steps, spec.leader.lag_ns, lo_ns, hi_ns))
    move_ts = np.concatenate([m[0] for m in move_parts])
    move_delta = np.concatenate([m[1] for m in move_parts])
    order = np.argsort(move_ts, kind="stable")
    move_ts, move_delta = move_ts[order], move_delta[order]
    levels = carry.level + np.cumsum(move_delta)
    _check_price(levels, move_ts, origin_ns, spec, TARGET_SYMBOL)
    parts.append((_book_rows(TARGET_VENUE, TARGET_SYMBOL, move_ts, levels, spec.tick,
                             _stream(spec, seed, _SIZES, 2 * block)), _RANK_TARGET_BOOK))

    # Target trades at the touch, with their exact truth.
    trade_level = _level_at(t, move_ts, levels, carry.level)
    price = np.where(aggressor > 0, trade_level + 1, trade_level) * spec.tick
    law = CountLaw(len(t))
    shift = np.zeros(len(t), np.int64)
    # 1 µs consequences already decided but not yet on the book (none on the default slot offsets).
    last_cause = np.minimum(t, t + horizon_ns - IMPACT_DELAY_NS)
    shift += aggressor * sum_between(impacts.ts, np.cumsum(impacts.delta), t - IMPACT_DELAY_NS, last_cause - 1)
    shift += aggressor * sum_between(liquidations.ts, np.cumsum(liquidations.delta), t - IMPACT_DELAY_NS,
                                     last_cause)
    if spec.noise_tick_rate_per_s > 0:
        law.add_binomial(slot_count(t + 1, t + horizon_ns, NOISE_UP_OFFSET_NS, origin_ns), noise_p, aggressor)
        law.add_binomial(slot_count(t + 1, t + horizon_ns, NOISE_DOWN_OFFSET_NS, origin_ns), noise_p, -aggressor)
    if spec.informed is not None:
        spec.informed.add_future(law, t=t, aggressor=aggressor, posterior=posterior, direction=direction, mu=mu,
                                 trade_p=trade_p, horizon_ns=horizon_ns, origin_ns=origin_ns)
    if spec.leader is not None:
        shift += spec.leader.add_future(law, t=t, aggressor=aggressor, steps_ts=leader_steps.ts,
                                        steps_cum=np.cumsum(leader_steps.delta), horizon_ns=horizon_ns,
                                        origin_ns=origin_ns)
    if spec.crowding is not None:
        fill_state = states[(t - lo_ns) // spec.crowding.boundary_ns]
        spec.crowding.add_future(law, t=t, aggressor=aggressor, state=fill_state, horizon_ns=horizon_ns,
                                 origin_ns=origin_ns)
    truth = law.tail(adverse_ticks(aggressor, trade_level, spec.tick, threshold_bps) - shift)
    trades = _trade_rows(TARGET_VENUE, TARGET_SYMBOL, t, aggressor, price, trade_size)
    trades["truth"] = truth
    parts.append((trades, _RANK_TRADE))

    if spec.crowding is not None:
        liq_ts, liq_side, liq_size = liq
        liq_level = _level_at(liq_ts, move_ts, levels, carry.level)
        rows = new_rows(STAT, TARGET_VENUE, TARGET_SYMBOL, liq_ts)
        rows["side"] = liq_side
        rows["price"] = np.where(liq_side > 0, liq_level + 1, liq_level) * spec.tick
        rows["size"] = liq_size
        parts.append((rows, _RANK_LIQUIDATION))
        stat_ts = lo_ns + np.arange(len(states), dtype=np.int64) * spec.crowding.boundary_ns + STAT_OFFSET_NS
        oi, funding = spec.crowding.market_stats(_stream(spec, seed, _STATS, block), states)
        rows = new_rows(STAT, TARGET_VENUE, TARGET_SYMBOL, stat_ts)
        rows["open_interest"], rows["funding_rate"] = oi, funding
        rows["mark_price"] = (_level_at(stat_ts, move_ts, levels, carry.level) + 0.5) * spec.tick
        parts.append((rows, _RANK_STAT))

    # Carry what the next block needs: levels, and causes whose moves may land after this block.
    carry.level = int(levels[-1]) if len(levels) else carry.level
    carry.impacts = _Delayed(t[informed], direction[informed])
    if liq is not None:
        carry.liquidations = _Delayed(liq[0], liq[1])
    if spec.leader is not None:
        carry.leader_steps = _Delayed(leader_ts, leader_delta)
    return _sorted(parts)


def _check_price(levels: np.ndarray, ts: np.ndarray, origin_ns: int, spec: MarketSpec, symbol: str) -> None:
    """Refuse, in one line, a world whose price walks down to zero (a high trade rate over a long span: each
    informed trade moves the mid a tick, so the walk widens with the rate)."""
    if len(levels) and levels.min() < 1:
        from sigkit.errors import DataError

        at = (int(ts[int(np.argmax(levels < 1))]) - origin_ns) / 1e9
        when = f"{at / 3600:.1f} h" if at >= 3600 else f"{at / 60:.1f} min" if at >= 60 else f"{at:.1f} s"
        raise DataError(f"the simulated {symbol} price reached zero {when} into the {spec.name!r} "
                        f"world at {spec.trade_rate_per_s:g} trades/s (it starts at {spec.start_price:g}, one "
                        "tick a move): simulate a shorter span or a lower trade rate")


def adverse_ticks(aggressor: np.ndarray, level: np.ndarray, tick: float, threshold_bps: float) -> np.ndarray:
    """Smallest whole number of ticks ``k`` against the maker that makes the fill adverse.

    The maker's side is ``s = -aggressor`` at price ``P`` (the touch hit); after the mid moves ``k`` ticks
    in the aggressor's direction, ``markout_bps = s * (M - P) / P * 1e4``.  Evaluated in floats the way
    the labeller evaluates it, around the analytic value ``0.5 + threshold * P / (tick * 1e4)``.
    """
    aggressor = np.asarray(aggressor, dtype=np.int64)
    level = np.asarray(level, dtype=np.int64)
    price = np.where(aggressor > 0, level + 1, level) * tick
    guess = np.floor(0.5 + threshold_bps * price / (tick * 1e4)).astype(np.int64)
    candidates = guess[:, None] + np.arange(-2, 4)
    later = level[:, None] + aggressor[:, None] * candidates
    mid = 0.5 * (later * tick + (later + 1) * tick)
    side = -aggressor[:, None]
    markout = side * (mid - price[:, None]) / price[:, None] * 1e4
    adverse = markout < -threshold_bps
    if len(level) and not (adverse[:, -1].all() and not adverse[:, 0].any()):
        raise RuntimeError("adverse tick count outside its bracket: a bug in sigkit.sim")
    return candidates[np.arange(len(level)), np.argmax(adverse, axis=1)]


def _book_rows(venue, symbol, ts, levels, tick, rng) -> np.ndarray:
    rows = new_rows(BOOK, venue, symbol, ts)
    rows["bid_px"] = levels * tick
    rows["ask_px"] = (levels + 1) * tick
    rows["bid_sz"] = np.round(rng.lognormal(np.log(2.0), 0.7, len(ts)) + 0.001, 3)
    rows["ask_sz"] = np.round(rng.lognormal(np.log(2.0), 0.7, len(ts)) + 0.001, 3)
    return rows


def _trade_rows(venue, symbol, ts, side, price, size) -> np.ndarray:
    rows = new_rows(TRADE, venue, symbol, ts)
    rows["side"] = side
    rows["price"] = price
    rows["size"] = size
    return rows


def _trade_sizes(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.round(rng.lognormal(np.log(0.05), 1.0, n) + 0.001, 3)


def _opening_books(spec: MarketSpec, seed: int, start_ns: int, level: int) -> np.ndarray:
    rng = np.random.default_rng([seed, spec.key, _SIZES, 0, 0])
    ts, at = np.array([start_ns]), np.array([level])
    parts = [(_book_rows(TARGET_VENUE, TARGET_SYMBOL, ts, at, spec.tick, rng), _RANK_TARGET_BOOK)]
    if spec.leader is not None:
        parts.append((_book_rows(LEADER_VENUE, LEADER_SYMBOL, ts, at, spec.tick, rng), _RANK_LEADER_BOOK))
    return _sorted(parts)


def _sorted(parts: list[tuple[np.ndarray, int]]) -> np.ndarray:
    """Concatenate ``(rows, rank)`` parts in time order, rank breaking ties, then input order."""
    rows = np.concatenate([p for p, _ in parts])
    rank = np.concatenate([np.full(len(p), r) for p, r in parts])
    return rows[np.lexsort((np.arange(len(rows)), rank, rows["ts_ns"]))]
