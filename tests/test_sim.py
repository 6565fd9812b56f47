"""sigkit.sim: row format, determinism, the prefix property and, above all, that ``truth`` is right."""

from __future__ import annotations

import bisect
import functools

import numpy as np
import pytest
from scipy import stats

from sigkit.events import BOOK, EVENT_DTYPE, STAT, TRADE
from sigkit.sim import (
    DEFAULT_START_NS, LEADER_VENUE, TARGET_SYMBOL, TARGET_VENUE, WORLDS, describe_world, simulate, world_spec,
)
from sigkit.sim.counts import CountLaw

S = 1_000_000_000
MINUTE = 60 * S
TICK = 1.0


@functools.lru_cache(maxsize=None)
def run(world, minutes, seed=1, horizon_ns=S, threshold_bps=0.0, chunk_rows=16384):
    chunks = list(simulate(world, seed=seed, duration_ns=minutes * MINUTE, horizon_ns=horizon_ns,
                           threshold_bps=threshold_bps, chunk_rows=chunk_rows))
    return chunks, np.concatenate(chunks)


def label(rows, horizon_ns, threshold_bps, end_ns):
    """An independent labeller: walk the rows tracking the target mid, then mark each fill out at t + h.

    Returns (truth, adverse label, fill time) for the fills whose horizon ends inside the data.
    """
    book_ts, book_mid, fills = [], [], []
    mid = None
    for ts, kind, venue, side, price, bid, ask, truth in zip(
            rows["ts_ns"].tolist(), rows["kind"].tolist(), rows["venue"].tolist(), rows["side"].tolist(),
            rows["price"].tolist(), rows["bid_px"].tolist(), rows["ask_px"].tolist(), rows["truth"].tolist()):
        if venue != TARGET_VENUE:
            continue
        if kind == BOOK:
            mid = 0.5 * (bid + ask)
            book_ts.append(ts)
            book_mid.append(mid)
        elif kind == TRADE:
            assert price == (mid + 0.5 * TICK if side > 0 else mid - 0.5 * TICK)  # the touch that was hit
            fills.append((ts, -side, price, truth))
    p, y, t = [], [], []
    for ts, our_side, price, truth in fills:
        if ts + horizon_ns >= end_ns:
            continue
        later = book_mid[bisect.bisect_right(book_ts, ts + horizon_ns) - 1]
        markout_bps = our_side * (later - price) / price * 1e4
        p.append(truth)
        y.append(1.0 if markout_bps < -threshold_bps else 0.0)
        t.append(ts)
    return np.array(p), np.array(y), np.array(t)


def residual_se(r, p, t, bucket_ns=60 * S):
    """Standard error of mean(r), clustered in time buckets (labels of fills within a horizon correlate)."""
    bucket = (t - t.min()) // bucket_ns
    sums = np.bincount(bucket, weights=r)
    clustered = np.sqrt(np.sum(sums ** 2)) / len(r)
    independent = np.sqrt(np.sum(p * (1 - p))) / len(r)
    return max(clustered, independent)


def assert_calibrated(p, y, t, n_bins=10, z_max=4.0):
    r = y - p
    assert abs(r.mean()) <= z_max * residual_se(r, p, t) + 1e-3, (y.mean(), p.mean())
    order = np.argsort(p, kind="stable")
    for part in np.array_split(order, n_bins):
        gap = y[part].mean() - p[part].mean()
        se = residual_se(r[part], p[part], t[part])
        assert abs(gap) <= z_max * se + 2e-3, (p[part].mean(), y[part].mean(), se)


def labelled(world, minutes, horizon_ns=S, threshold_bps=0.0, seed=1):
    _, rows = run(world, minutes, seed=seed, horizon_ns=horizon_ns, threshold_bps=threshold_bps)
    return label(rows, horizon_ns, threshold_bps, DEFAULT_START_NS + minutes * MINUTE)


# Format ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("world", WORLDS)
def test_chunks_are_sorted_event_rows(world):
    chunks, rows = run(world, 3, chunk_rows=1000)
    assert all(c.dtype == EVENT_DTYPE and 0 < len(c) <= 1000 for c in chunks)
    ts = rows["ts_ns"]
    assert np.all(np.diff(ts) >= 0)
    assert np.mean(np.diff(ts) > 0) > 0.999  # distinct timestamps wherever possible
    assert ts[0] == DEFAULT_START_NS and ts[-1] < DEFAULT_START_NS + 3 * MINUTE
    assert np.array_equal(rows["exch_ts_ns"], ts)
    assert set(np.unique(rows["symbol"])) == {TARGET_SYMBOL}

    target = rows["venue"] == TARGET_VENUE
    opening = rows[ts == DEFAULT_START_NS]
    assert np.any((opening["kind"] == BOOK) & (opening["venue"] == TARGET_VENUE))  # the book exists at once
    trades = rows[target & (rows["kind"] == TRADE)]
    assert 400 < len(trades) / 3 < 560  # ~8 fills/s
    assert set(np.unique(trades["side"])) == {-1, 1}
    assert np.all(trades["size"] > 0) and np.all(np.isfinite(trades["price"]))
    assert np.all((trades["truth"] >= 0) & (trades["truth"] <= 1))
    assert np.all(np.isnan(rows["truth"][~(target & (rows["kind"] == TRADE))]))

    books = rows[rows["kind"] == BOOK]
    assert np.all(books["ask_px"] - books["bid_px"] == TICK)
    assert np.all((books["bid_sz"] > 0) & (books["ask_sz"] > 0))
    target_mid = 0.5 * (books["bid_px"] + books["ask_px"])[books["venue"] == TARGET_VENUE]
    assert set(np.abs(np.diff(target_mid))) <= {TICK}  # every touch change is one tick, each with a row
    assert 45_000 < target_mid.min() and target_mid.max() < 55_000

    has_leader = world in ("leadlag", "mixed")
    assert (LEADER_VENUE in set(np.unique(rows["venue"]))) == has_leader
    stats_rows = rows[rows["kind"] == STAT]
    if world in ("oi", "mixed"):
        oi = stats_rows[np.isfinite(stats_rows["open_interest"])]
        assert len(oi) == 3 * 60  # one per second
        assert np.all(np.isfinite(oi["funding_rate"]) & np.isfinite(oi["mark_price"]))
        liquidations = stats_rows[stats_rows["side"] != 0]
        assert np.all(np.isnan(liquidations["open_interest"]))
        assert np.all(np.isfinite(liquidations["price"]) & (liquidations["size"] > 0))
    else:
        assert len(stats_rows) == 0


def test_unknown_world_and_bad_arguments_raise():
    with pytest.raises(ValueError, match="null, informed, leadlag, oi, mixed"):
        simulate("nope", seed=1, duration_ns=S)
    with pytest.raises(ValueError, match="valid worlds"):
        describe_world("nope")
    with pytest.raises(ValueError, match="seed"):
        simulate("null", seed=-1, duration_ns=S)
    with pytest.raises(ValueError, match="horizon_ns"):
        simulate("null", seed=1, duration_ns=S, horizon_ns=0)
    with pytest.raises(ValueError, match="chunk_rows"):
        simulate("null", seed=1, duration_ns=S, chunk_rows=0)
    assert list(simulate("null", seed=1, duration_ns=0)) == []


@pytest.mark.parametrize("world", WORLDS)
def test_describe_world(world):
    text = describe_world(world)
    assert len(text) > 200 and "\n" not in text and "predictable" in text.lower()


# Determinism and the prefix property -----------------------------------------------------------------


@pytest.mark.parametrize("world", ["informed", "mixed"])
def test_same_arguments_give_identical_bytes(world):
    _, first = run(world, 3)
    again = np.concatenate(list(simulate(world, seed=1, duration_ns=3 * MINUTE, chunk_rows=777)))
    assert first.tobytes() == again.tobytes()
    other = np.concatenate(list(simulate(world, seed=2, duration_ns=3 * MINUTE)))
    assert len(other) != len(first) or other.tobytes() != first.tobytes()


@pytest.mark.parametrize("world", WORLDS)
def test_longer_run_has_the_same_prefix(world):
    _, short = run(world, 5)
    _, long = run(world, 8)
    assert long["ts_ns"][len(short) - 1] < DEFAULT_START_NS + 5 * MINUTE <= long["ts_ns"][len(short)]
    assert long[:len(short)].tobytes() == short.tobytes()


# Truth -----------------------------------------------------------------------------------------------


def test_count_law_matches_direct_convolution():
    trials, p = 300_000, 1e-5  # one Bernoulli per 2 µs slot, about 3 events
    law = CountLaw(2)
    law.add_binomial([trials, trials], p, [1, -1])
    law.add_binomial([trials // 2, trials], 2 * p, [-1, -1])
    law.add_bernoulli([0.3, 0.9])
    law.add_mixture([[0.25, 0.75], [1.0, 0.0]], [[trials, 0], [0, 0]], [[0, trials], [trials, 0]], [p, 3 * p])
    k = np.array([1, -2])
    support = np.arange(-60, 61)

    def signed(n, q, sign):
        pmf = np.zeros(len(support))
        pmf[(sign * np.arange(61)) + 60] = stats.binom.pmf(np.arange(61), n, q)
        return pmf

    def conv(a, b):
        return np.convolve(a, b)[60:181]

    expected = []
    for i, (s1, n2, s2, bern, mix) in enumerate([
            (1, trials // 2, -1, 0.3, [(0.25, trials, 0, p), (0.75, 0, trials, 3 * p)]),
            (-1, trials, -1, 0.9, [(1.0, 0, trials, p)])]):
        total = conv(signed(trials, p, s1), signed(n2, 2 * p, s2))
        total = conv(total, np.where(support == 0, 1 - bern, 0) + np.where(support == 1, bern, 0))
        mixture = sum(w * conv(signed(up, q, 1), signed(down, q, -1)) for w, up, down, q in mix)
        total = conv(total, mixture)
        expected.append(total[support >= k[i]].sum())
    np.testing.assert_allclose(law.tail(k), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("world", WORLDS)
def test_truth_is_calibrated_against_labels(world):
    p, y, t = labelled(world, 25)
    assert len(p) > 10_000
    assert_calibrated(p, y, t)
    base = y.mean()
    assert 0.3 < base < 0.55
    oracle_brier, base_brier = np.mean((p - y) ** 2), base * (1 - base)
    if world == "null":
        assert np.ptp(p) < 1e-12  # nothing is predictable
        assert oracle_brier == pytest.approx(base_brier, abs=2e-3)
    else:
        assert oracle_brier < base_brier - 0.01


def test_threshold_and_horizon_enter_truth():
    p, y, t = labelled("mixed", 20, horizon_ns=5 * S, threshold_bps=1.0)
    assert_calibrated(p, y, t)
    assert np.mean((p - y) ** 2) < y.mean() * (1 - y.mean()) - 0.01
    p1, _, _ = labelled("mixed", 20)
    assert abs(p.mean() - p1.mean()) > 0.05  # a 1 bps bar at 5 s is a different question


def test_null_truth_is_the_exact_skellam_tail():
    p, _, _ = labelled("null", 2)
    slots, q = S // 2_000, 4.0 / 2 * 2_000 / S  # 2 µs slots, 2 ticks/s each way
    pmf = stats.binom.pmf(np.arange(80), slots, q)
    difference = np.convolve(pmf, pmf[::-1])  # index 79 is a zero net move
    assert p[0] == pytest.approx(difference[80:].sum(), abs=1e-12)  # adverse iff the mid moves >= 1 tick


# Lead-lag --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lag_ns", [150_000_000, 40_000_123])
def test_target_mid_is_the_leader_mid_shifted_by_the_lag(lag_ns):
    minutes = 5
    rows = np.concatenate(list(simulate(world_spec("leadlag", lag_ns=lag_ns), seed=4,
                                        duration_ns=minutes * MINUTE)))
    books = rows[rows["kind"] == BOOK]
    lead, target = books[books["venue"] == LEADER_VENUE], books[books["venue"] == TARGET_VENUE]
    mid = lambda b: 0.5 * (b["bid_px"] + b["ask_px"])  # noqa: E731
    shown = lead[lead["ts_ns"] + lag_ns < DEFAULT_START_NS + minutes * MINUTE]
    np.testing.assert_array_equal(target["ts_ns"][1:], shown["ts_ns"][1:] + lag_ns)
    np.testing.assert_array_equal(mid(target), mid(shown))
    # Arbitrageurs chase the gap: target trades lean towards the leader's unreflected move.
    trades = rows[(rows["kind"] == TRADE) & (rows["venue"] == TARGET_VENUE)]
    lead_mid = mid(lead)[np.searchsorted(lead["ts_ns"], trades["ts_ns"], side="right") - 1]
    target_mid = mid(target)[np.searchsorted(target["ts_ns"], trades["ts_ns"], side="right") - 1]
    gap = np.sign(lead_mid - target_mid)
    assert np.mean(trades["side"][gap != 0] == gap[gap != 0]) > 0.65


def test_a_world_whose_price_walks_to_zero_is_refused_in_one_line():
    import attrs

    from sigkit.errors import DataError

    spec = attrs.evolve(world_spec("mixed"), start_price=30.0)  # 30 ticks above zero: soon walked away
    with pytest.raises(DataError, match=r"^the simulated BTC-PERP price reached zero [0-9.]+ (s|min|h) into the "
                                        r"'mixed' world at 8 trades/s .*shorter span or a lower trade rate$"):
        for _ in simulate(spec, seed=7, duration_ns=3600 * S):
            pass
