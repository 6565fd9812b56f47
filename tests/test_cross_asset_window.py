"""cross_asset's tick stores and sliding-window estimator (sigkit_cross_asset.window): the incremental
Hayashi-Yoshida sums against the from-scratch ones over many random sliding windows, compaction of the
stores, and checkpoints of the estimator's state."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest

import sigkit
from sigkit.checkpoint import decode_state, encode_state
from sigkit.engine import Labelling, Replay
from sigkit_cross_asset import CrossAsset, CrossAssetParams, estimate_lead_lag, hy_covariance_on_grid
from sigkit_cross_asset import window as W

from conftest import ListSource

S = 1_000_000_000
TARGET = sigkit.Market("sim", "BTC-PERP")


def _model(**params):
    defaults = dict(leader_venue="lead", leader_symbol="X")
    return CrossAsset(CrossAssetParams(**{**defaults, **params}), sigkit.RunContext(target=TARGET, horizon_ns=S))


def _series(rng, start, end, rate, gaps):
    """Random tick times in [start, end) at about ``rate`` per unit, with some long silent gaps, and random
    positive levels (some repeated: not recorded as changes)."""
    times = np.sort(rng.choice(end - start, int(rate * (end - start)), replace=False)) + start
    for lo in rng.choice(end - start, gaps) + start:
        times = times[(times < lo) | (times >= lo + int(rng.integers(1, 4)) * 3000)]
    steps = rng.choice([-2.0, -1.0, 0.0, 1.0, 2.0], len(times)) * rng.choice([0.01, 0.5])
    return times.astype(np.int64), 100.0 + np.abs(np.cumsum(steps)) + rng.uniform(0, 1e-3, len(times)) * (steps != 0)


@pytest.mark.parametrize("seed", range(4))
def test_sliding_sums_equal_the_from_scratch_ones_over_random_sliding_windows(seed):
    # In units of 1 us: a window of 2000, a grid of +-200 at 10 (41 shifts), ticks at 0.05-0.3 a unit with
    # silent gaps longer than the window, estimates after slides of 1 to 3000 (past the whole window).
    rng = np.random.default_rng(seed)
    end = 300_000
    x_ts, x = _series(rng, 0, end, rng.uniform(0.05, 0.3), 8)
    y_ts, y = _series(rng, 0, end, rng.uniform(0.05, 0.3), 8)
    x_ts = x_ts * 1000 + 10 ** 15  # ns-sized times
    y_ts = y_ts * 1000 + 10 ** 15
    model = _model(window_ns=2_000_000, reestimate_ns=100_000, lag_max_ns=200_000, lead_max_ns=200_000,
                   lag_step_ns=10_000, min_changes=2)
    g, keep = model._grid, int(model._iparams[0])
    events = sorted([(int(t), 0, float(v)) for t, v in zip(x_ts, x)] + [(int(t), 1, float(v)) for t, v in zip(y_ts, y)])
    when = 10 ** 15 + int(rng.integers(1, 3000)) * 1000
    counts = {"rebuilt": 0, "slid": 0, "skipped": 0, "compacted": 0}
    for t, row, value in events:
        while t > when:
            before = model.n_estimates
            model._reestimate(when)
            when += int(rng.integers(1, 300) if rng.random() < 0.85 else rng.integers(300, 3000)) * 1000
            if model.n_estimates == before:
                counts["skipped"] += 1
                continue
            counts["rebuilt" if model.wstate[W.SINCE_REBUILD] == 0 else "slid"] += 1
            w = model.wstate
            kx, n0, ky, n1 = (int(w[k]) for k in (W.WIN_START, W.WIN_END, W.ROW + W.WIN_START, W.ROW + W.WIN_END))
            lx, ly = model.tick_log[0, kx:n0], model.tick_log[1, ky:n1]
            # numba's math.log is CPython's on these mids, bit for bit
            assert lx.tolist() == [math.log(v) for v in model.tick_mid[0, kx:n0].tolist()]
            assert ly.tolist() == [math.log(v) for v in model.tick_mid[1, ky:n1].tolist()]
            u0, v0 = hy_covariance_on_grid(model.tick_ts[0, kx:n0], lx, model.tick_ts[1, ky:n1], ly, g.first, g.step,
                                           g.n, with_null_variance=True)
            u, v = W.grid_sums(model.acc, g.n)
            if model.wstate[W.SINCE_REBUILD] == 0:
                assert u.tobytes() == u0.tobytes() and v.tobytes() == v0.tobytes()
            scale = np.abs(u0).max()
            assert np.abs(u - u0).max() <= 1e-9 * scale
            assert np.abs(v - v0).max() <= 1e-9 * np.abs(v0).max()
            theirs = estimate_lead_lag(model.tick_ts[0, kx:n0], lx, model.tick_ts[1, ky:n1], ly, model.shifts_ns,
                                       ts_ns=when)
            mine = model.estimate
            top = np.sort(np.abs(u0))[-2:]
            if theirs is not None and top[1] - top[0] > 1e-6 * top[1]:
                assert mine.lag_ns == theirs.lag_ns
                assert mine.z_score == pytest.approx(theirs.z_score, rel=1e-7)
        n = int(model.wstate[row * W.ROW + W.N])
        model._make_room(1, 1)
        W.record_tick(model.tick_ts, model.tick_mid, model.tick_log, model.wstate, row, t, value, keep)
        counts["compacted"] += int(model.wstate[row * W.ROW + W.N]) < n
    assert counts["rebuilt"] >= 10 and counts["slid"] >= 500 and counts["skipped"] >= 1, counts
    assert counts["compacted"] >= 1, counts


def test_record_tick_keeps_the_changes_in_force_and_compacts_without_losing_the_window():
    model = _model(window_ns=100, reestimate_ns=10, lag_max_ns=0, lead_max_ns=0, lag_step_ns=1, min_changes=2)
    keep = int(model._iparams[0])
    model._make_room(5000, 5000)
    mids = []
    for k in range(5000):
        assert W.record_tick(model.tick_ts, model.tick_mid, model.tick_log, model.wstate, 0, k, 100.0 + k % 7, keep)
        mids.append(100.0 + k % 7)
        assert not W.record_tick(model.tick_ts, model.tick_mid, model.tick_log, model.wstate, 0, k, 100.0 + k % 7, keep)
        start, n = int(model.wstate[W.START]), int(model.wstate[W.N])
        assert model.tick_ts[0, start] == max(k - keep, 0) and model.tick_ts[0, n - 1] == k
        assert model.tick_mid[0, start:n].tolist() == mids[max(k - keep, 0):]
    assert int(model.wstate[W.N]) < 2100  # compacted


def _sim_chunks(minutes, seed=2):
    return list(sigkit.sim.simulate(sigkit.sim.world_spec("mixed"), seed=seed, duration_ns=minutes * 60 * S,
                                    horizon_ns=S))


@pytest.mark.parametrize("path", ["per-event", "batch"])
def test_a_checkpoint_mid_run_carries_the_sliding_sums(path):
    # Stop after half the chunks (in the middle of a run of incremental updates), save through the checkpoint
    # encoding, resume in a fresh model: the rest predicts bit for bit as the uninterrupted run, and the final
    # states are equal.
    params = {"window_ns": 40 * S, "reestimate_ns": S, "min_changes": 20, "min_z": 3.0}
    events = np.concatenate(_sim_chunks(4))
    cut = int(np.searchsorted(events["ts_ns"], events["ts_ns"][len(events) // 2], side="right"))
    first, rest = [events[:cut]], [events[cut:]]

    def build():
        return CrossAsset(CrossAssetParams(**params), sigkit.RunContext(target=TARGET, horizon_ns=S))

    def run(model, part):
        replay = Replay(sources=[("sim", ListSource(part))], models=[("ca", model)], target=TARGET,
                        labelling=Labelling(S), path=path)
        return replay.run().predictions["ca"]

    full = build()
    run(full, first)
    assert full.wstate[W.SINCE_REBUILD] > 0 and full.n_estimates > 50  # mid-way between two rebuilds
    saved = decode_state(encode_state(copy.deepcopy(full.state_dict())))
    resumed = build()
    resumed.load_state_dict(saved)
    a, b = run(full, rest), run(resumed, rest)
    for key in ("p", "confidence", "cost_bps"):
        assert a[key].tobytes() == b[key].tobytes()
    assert (a["confidence"] > 0).sum() > 100
    mine, theirs = resumed.state_dict()["attrs"], full.state_dict()["attrs"]
    for name in ("tick_ts", "tick_mid", "tick_log", "wstate", "west", "rho", "acc"):
        assert mine[name].dtype == theirs[name].dtype and mine[name].tobytes() == theirs[name].tobytes(), name
    assert resumed.describe() == full.describe()


def test_an_old_layout_checkpoint_is_refused():
    model = _model()
    state = model.state_dict()
    assert state["version"] == 2
    state["version"] = 1
    with pytest.raises(sigkit.ModelError, match="layout version 1"):
        _model().load_state_dict(state)
