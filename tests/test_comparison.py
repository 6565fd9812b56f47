"""Tests for sigkit.comparison: DM against statsmodels, the paired bootstrap, the mSPRT's error rate
and the compare() verdict on synthetic fills with a known better forecaster."""

import json
import math
import warnings

import numpy as np
import pytest
from scipy.special import ndtr
from statsmodels.tsa.stattools import diebold_mariano_test

from sigkit import scoring
from sigkit.comparison import (
    BootstrapResult,
    DMResult,
    SequentialTest,
    brier_losses,
    bucket_means,
    compare,
    diebold_mariano,
    log_losses,
    overlap_lags,
    paired_bootstrap,
)

HORIZON_NS = 5_000_000_000


def _fills(n=3000, seed=0, noise_a=0.08, noise_b=0.08, noise_phi=0.5, gap_ns=1e9, horizon_ns=HORIZON_NS):
    """Synthetic fills about one per second with a 5 s horizon, so ~5 outcome windows overlap.

    A fill is adverse when a Brownian "mid" over [t, t + horizon] ends below its threshold: y is
    Bernoulli(truth) per fill but correlated across fills whose windows overlap.  Each forecaster
    is the truth plus its own AR(1) noise (persistent model error) of sd ``noise_a``/``noise_b``.
    """
    rng = np.random.default_rng(seed)
    ts = (1_700_000_000 * 10**9 + np.cumsum(rng.exponential(gap_ns, n))).astype(np.int64)
    times = np.concatenate([ts, ts + int(horizon_ns)])
    order = np.argsort(times, kind="stable")
    gaps = np.diff(times[order], prepend=times[order][0]).astype(float)
    mid = np.empty(2 * n)
    mid[order] = np.cumsum(np.sqrt(gaps) * rng.standard_normal(2 * n))
    uniform = ndtr((mid[n:] - mid[:n]) / math.sqrt(horizon_ns))

    regime = np.zeros(n)
    shocks = rng.normal(0.0, 0.3, n)
    for i in range(1, n):
        regime[i] = 0.98 * regime[i - 1] + shocks[i]
    truth = 1.0 / (1.0 + np.exp(-(0.5 * regime + rng.normal(0.0, 0.5, n))))
    y = (uniform < truth).astype(float)
    cost_bps = np.where(y == 1, rng.exponential(3.0, n), -rng.exponential(3.0, n))

    def forecaster(sd):
        z = rng.standard_normal(n)
        noise = np.empty(n)
        noise[0] = z[0]
        for i in range(1, n):
            noise[i] = noise_phi * noise[i - 1] + math.sqrt(1.0 - noise_phi**2) * z[i]
        return np.clip(truth + sd * noise, 0.001, 0.999)

    return {"p_a": forecaster(noise_a), "p_b": forecaster(noise_b), "y": y, "cost_bps": cost_bps, "ts_ns": ts}


def _compare(fills, **kwargs):
    kwargs.setdefault("horizon_ns", HORIZON_NS)
    kwargs.setdefault("n_boot", 300)
    return compare(fills["p_a"], fills["p_b"], fills["y"], fills["cost_bps"], fills["ts_ns"], **kwargs)


def _swapped(fills):
    return dict(fills, p_a=fills["p_b"], p_b=fills["p_a"])


def _assert_plain_json(value):
    """Only dict/list/str/bool/int/float/None, no NaN or inf, and json.dumps accepts it strictly."""
    json.dumps(value, allow_nan=False)

    def walk(v):
        if isinstance(v, dict):
            for key, item in v.items():
                assert isinstance(key, str)
                walk(item)
        elif isinstance(v, list):
            for item in v:
                walk(item)
        else:
            assert v is None or type(v) in (str, bool, int, float), (v, type(v))

    walk(value)


# ---------------------------------------------------------------- losses and lags


def test_per_fill_losses_average_to_the_scoring_metrics():
    fills = _fills(n=500, seed=3)
    p, y = fills["p_a"], fills["y"]
    assert brier_losses(p, y).mean() == pytest.approx(scoring.brier(p, y), abs=1e-15)
    assert log_losses(p, y).mean() == pytest.approx(scoring.log_loss(p, y), abs=1e-14)
    # Clipping keeps a certain miss finite.
    assert np.isfinite(log_losses([1.0, 0.0], [0, 1])).all()
    with pytest.raises(ValueError, match="probabilities"):
        brier_losses([1.2], [1])


def test_overlap_lags_counts_fills_per_horizon_or_the_cube_root_rule():
    # Sparse fills (one a minute, 5 s horizon): the n^(1/3) floor, 28 for 20 000 fills (METHODS 3.2).
    sparse = np.arange(20_000, dtype=np.int64) * 60_000_000_000
    assert overlap_lags(sparse, HORIZON_NS) == 28
    # Dense fills (10 a second over 100 s, 5 s horizon): about 50 fills share an outcome window.
    dense = np.linspace(0, 100e9, 1001).astype(np.int64)
    assert overlap_lags(dense, HORIZON_NS) == 51  # ceil(1001 * 5 / 100)
    # Exact integer cube root: 27 fills give 3 lags, not the 4 that 27 ** (1/3) would round to.
    assert overlap_lags(np.arange(27, dtype=np.int64) * 60_000_000_000, 1) == 3
    assert overlap_lags(np.array([5], dtype=np.int64), HORIZON_NS) == 0
    with pytest.raises(ValueError, match="time order"):
        overlap_lags(np.array([2, 1], dtype=np.int64), HORIZON_NS)


# ---------------------------------------------------------------- Diebold-Mariano


@pytest.mark.parametrize("lags", [0, 5, 28])
@pytest.mark.parametrize("horizon", [1, 4])
@pytest.mark.parametrize("harvey_adj", [False, True])
def test_dm_equals_statsmodels(lags, horizon, harvey_adj):
    fills = _fills(n=1500, seed=1, noise_a=0.12, noise_b=0.06)
    p_a, p_b, y = fills["p_a"], fills["p_b"], fills["y"]
    ours = diebold_mariano(brier_losses(p_a, y), brier_losses(p_b, y), lags=lags, horizon=horizon)
    # With binary y, statsmodels' squared-error criterion is the Brier loss.
    theirs = diebold_mariano_test(y, p_a, p_b, lags=lags, criterion="mse", harvey_adj=harvey_adj, horizon=horizon)
    statistic, p_value = (ours.hln_statistic, ours.p_value) if harvey_adj else (ours.statistic, ours.p_value_normal)
    assert abs(ours.statistic) > 1.0  # a test on a non-trivial statistic
    assert statistic == pytest.approx(theirs.statistic, abs=1e-10)
    assert p_value == pytest.approx(theirs.pvalue, abs=1e-10)
    assert ours.lags == theirs.lags == lags


def test_dm_log_loss_equals_statsmodels_with_a_callable_criterion():
    fills = _fills(n=1000, seed=11, noise_a=0.1, noise_b=0.07)
    p_a, p_b, y = fills["p_a"], fills["p_b"], fills["y"]
    ours = diebold_mariano(log_losses(p_a, y), log_losses(p_b, y), lags=7, horizon=2)
    theirs = diebold_mariano_test(y, p_a, p_b, lags=7, criterion=lambda y, p: log_losses(p, y),
                                  harvey_adj=True, horizon=2)
    assert ours.hln_statistic == pytest.approx(theirs.statistic, abs=1e-10)
    assert ours.p_value == pytest.approx(theirs.pvalue, abs=1e-10)


def test_dm_by_hand_without_lags():
    d = np.array([0.3, -0.1, 0.2, 0.4, 0.0, 0.1])
    result = diebold_mariano(d, np.zeros_like(d), lags=0)
    n = len(d)
    by_hand = d.mean() / math.sqrt(np.var(d) / n)  # population variance: autocovariances over n
    assert result.statistic == pytest.approx(by_hand, abs=1e-12)
    assert result.hln_statistic == pytest.approx(by_hand * math.sqrt((n - 1) / n), abs=1e-12)
    assert isinstance(result, DMResult) and result.n == n and result.mean_diff == pytest.approx(d.mean())


def test_dm_constant_differentials_do_not_divide_by_zero():
    losses = np.full(100, 0.2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same = diebold_mariano(losses, losses, lags=4)
        shifted = diebold_mariano(losses + 0.1, losses, lags=4)
        tiny = diebold_mariano([0.1], [0.2], lags=0)
    # Identical losses on every fill: no difference, with certainty.
    assert (same.statistic, same.hln_statistic, same.p_value, same.p_value_normal) == (0.0, 0.0, 1.0, 1.0)
    # A constant non-zero gap has no sampling variance to test against: undefined, not infinite.
    assert shifted.mean_diff == pytest.approx(0.1) and math.isnan(shifted.statistic) and math.isnan(shifted.p_value)
    assert tiny.n == 1 and math.isnan(tiny.p_value)
    with pytest.raises(ValueError, match="lags"):
        diebold_mariano(losses, losses, lags=-1)
    with pytest.raises(ValueError, match="horizon"):
        diebold_mariano(losses, losses, lags=1, horizon=0)


# ---------------------------------------------------------------- paired bootstrap


def test_bootstrap_is_deterministic_for_a_seed_and_its_cis_contain_the_estimates():
    fills = _fills(n=2000, seed=5, noise_a=0.1, noise_b=0.08)
    args = (fills["p_a"], fills["p_b"], fills["y"], fills["cost_bps"])
    first = paired_bootstrap(*args, n_boot=300, seed=42)
    assert paired_bootstrap(*args, n_boot=300, seed=42) == first
    assert paired_bootstrap(*args, n_boot=300, seed=43).brier_ci != first.brier_ci
    assert isinstance(first, BootstrapResult) and first.n_boot == 300
    assert first.brier_diff == pytest.approx(scoring.brier(args[0], args[2]) - scoring.brier(args[1], args[2]))
    capture = scoring.capture_at(args[1], args[3]).capture - scoring.capture_at(args[0], args[3]).capture
    assert first.capture_diff == pytest.approx(capture)
    assert first.brier_ci[0] <= first.brier_diff <= first.brier_ci[1]
    assert first.capture_ci[0] <= first.capture_diff <= first.capture_ci[1]


def test_bootstrap_ci_excludes_zero_for_a_strongly_better_b_and_is_paired():
    fills = _fills(n=3000, seed=6, noise_a=0.15, noise_b=0.03)
    args = (fills["p_a"], fills["p_b"], fills["y"], fills["cost_bps"])
    better_b = paired_bootstrap(*args, n_boot=300)
    assert better_b.brier_ci[0] > 0
    # Pairing: the same forecaster on both arms differs by exactly 0 on every resample.
    same = paired_bootstrap(args[0], args[0], args[2], args[3], n_boot=100)
    assert same.brier_ci == (0.0, 0.0) and same.capture_ci == (0.0, 0.0)


def test_bootstrap_block_size_is_politis_white_on_the_brier_differential():
    from arch.bootstrap import optimal_block_length

    fills = _fills(n=3000, seed=7, noise_a=0.1, noise_b=0.1, noise_phi=0.9)
    args = (fills["p_a"], fills["p_b"], fills["y"], fills["cost_bps"])
    d = brier_losses(args[0], args[2]) - brier_losses(args[1], args[2])
    expected = float(optimal_block_length(d)["stationary"].iloc[0])
    assert expected > 1.5  # persistent model errors need blocks
    assert paired_bootstrap(*args, n_boot=10).block_size == pytest.approx(expected)
    assert paired_bootstrap(*args, n_boot=10, block_size=25.0).block_size == 25.0
    # White noise: Politis-White gives less than one fill, floored to the i.i.d. bootstrap.
    from sigkit.comparison import _optimal_block_size

    white = np.random.default_rng(0).normal(size=20_000)
    assert float(optimal_block_length(white)["stationary"].iloc[0]) < 1.0
    assert _optimal_block_size(white) == 1.0


def test_bootstrap_capture_by_rank_equals_capture_at_on_the_resampled_fills():
    from sigkit.comparison import _TopShare

    rng = np.random.default_rng(8)
    p, cost = rng.random(400), rng.normal(0.5, 2.0, 400)
    for q in (0.07, 0.10, 0.5, 1.0):
        n_top = scoring.capture_at(p, cost, q).n_top
        share = _TopShare(p, np.maximum(cost, 0.0), n_top)
        for _ in range(50):
            idx = rng.integers(0, 400, 400)
            assert share(idx) == pytest.approx(scoring.capture_at(p[idx], cost[idx], q).capture, abs=1e-12)


# ---------------------------------------------------------------- sequential test


def test_bucket_means_are_per_clock_bucket_in_order_skipping_empty_ones():
    minute = 60_000_000_000
    ts = np.array([0, 10, minute - 1, minute, 3 * minute + 5, 3 * minute + 6], dtype=np.int64) + 7 * minute
    d = np.array([1.0, 2.0, 3.0, 10.0, -1.0, -3.0])
    assert bucket_means(d, ts, minute).tolist() == [2.0, 10.0, -2.0]
    assert bucket_means([], np.array([], dtype=np.int64), minute).size == 0
    with pytest.raises(ValueError, match="time order"):
        bucket_means(d, ts[::-1], minute)


def _run(test, values):
    p_values = [test.update(v) for v in values]
    return np.asarray(p_values)


def test_msprt_matches_the_standardised_n_dependent_formula():
    # METHODS 3.4: Lambda_n = (1 + n t^2)^(-1/2) exp(n t^2 Z^2 / (2 (1 + n t^2))), t = tau / sigma,
    # Z = sqrt(n) mean / sigma.  The fixed-tau "pitfall" form would differ for every n > 1.
    rng = np.random.default_rng(1)
    sigma, tau = 2.0, 0.7
    x = rng.normal(0.4, sigma, 40)
    test = SequentialTest(tau, sigma2=sigma**2)
    for n, value in enumerate(x, start=1):
        test.update(value)
        t2, z = (tau / sigma) ** 2, math.sqrt(n) * x[:n].mean() / sigma
        expected = -0.5 * math.log(1 + n * t2) + n * t2 * z * z / (2 * (1 + n * t2))
        assert test.log_lambda == pytest.approx(expected, rel=1e-12, abs=1e-12)
        assert test.n == n


def test_msprt_likelihood_ratio_is_a_mean_one_martingale_under_h0():
    # E[Lambda_n] = 1 under H0; with n tau^2 / sigma^2 = 0.5 its variance is finite (0.155).
    rng = np.random.default_rng(2)
    n, streams = 4, 20_000
    x = rng.normal(0.0, 1.0, (streams, n))
    lambdas = []
    for row in x:
        test = SequentialTest(math.sqrt(0.5 / n), sigma2=1.0)
        for value in row:
            test.update(value)
        lambdas.append(math.exp(test.log_lambda))
    assert np.mean(lambdas) == pytest.approx(1.0, abs=0.015)


def test_msprt_type_one_error_holds_under_continuous_monitoring():
    # 200 streams of 300 one-minute bucket means with no effect, sigma^2 estimated from the default
    # 30-bucket burn-in, looked at after every bucket.
    rng = np.random.default_rng(0)
    streams = rng.normal(0.0, 1.0, (200, 300))
    rejected = []
    for stream in streams:
        test = SequentialTest(0.2)
        p_values = _run(test, stream)
        assert p_values[0] == 1.0 and np.all(np.diff(p_values) <= 0.0)
        rejected.append(test.rejected(0.05))
    assert np.mean(rejected) <= 0.06
    # The same looks with a fixed-sample z-test would reject far more often: the check has teeth.
    z = np.cumsum(streams, axis=1) / np.sqrt(np.arange(1, 301))
    assert np.mean(np.any(np.abs(z) > 1.96, axis=1)) > 0.25


def test_msprt_rejects_a_real_effect_and_reports_its_state():
    rng = np.random.default_rng(3)
    test = SequentialTest(0.2)
    p_values = _run(test, rng.normal(0.3, 1.0, 300))
    assert test.rejected(0.05) and test.p_value < 0.01
    assert np.all(np.diff(p_values) <= 0.0)
    state = test.state()
    _assert_plain_json(state)
    assert state["n"] == 270 and state["n_burn_in"] == 30 and state["burn_in_done"] is True
    assert state["p_value"] == test.p_value and state["sigma2"] == pytest.approx(test.sigma2)


def test_msprt_with_no_spread_in_burn_in_stays_at_p_one():
    test = SequentialTest()
    _run(test, np.zeros(50))
    assert test.sigma2 == 0.0 and test.p_value == 1.0 and not test.rejected()
    fresh = SequentialTest()
    assert fresh.state()["sigma2"] is None and fresh.p_value == 1.0 and fresh.n == 0
    with pytest.raises(ValueError, match="tau"):
        SequentialTest(0.0)


# ---------------------------------------------------------------- compare and its verdict


def test_identical_forecasters_give_no_verdict():
    fills = _fills(n=1500, seed=9)
    result = _compare(dict(fills, p_b=fills["p_a"]))
    _assert_plain_json(result)
    assert result["verdict"]["better"] is None
    assert result["verdict"]["text"].startswith("no detectable difference in Brier between A and B on 1,500 fills")
    assert result["brier"]["statistic"] == 0.0 and result["brier"]["p_value"] == 1.0
    assert result["bootstrap"]["brier_ci"] == [0.0, 0.0]
    assert result["sequential"]["p_value"] == 1.0


def test_clearly_better_b_wins_and_swapping_flips_the_verdict():
    fills = _fills(n=3000, seed=4, noise_a=0.15, noise_b=0.03)
    result = _compare(fills)
    _assert_plain_json(result)
    dm = result["brier"]
    assert result["brier"]["diff"] > 0 and dm["statistic"] > 0 and dm["p_value"] < 1e-3
    assert result["log_loss"]["diff"] > 0 and result["log_loss"]["p_value"] < 1e-3
    assert result["verdict"]["better"] == "B"
    assert result["verdict"]["text"].startswith("B is better: Brier lower by ")
    assert result["verdict"]["text"].endswith("on 3,000 fills")

    swapped = _compare(_swapped(fills))
    assert swapped["verdict"]["better"] == "A"
    assert swapped["verdict"]["text"].startswith("A is better: Brier lower by ")
    assert swapped["brier"]["diff"] == pytest.approx(-result["brier"]["diff"], abs=1e-15)
    assert swapped["brier"]["statistic"] == pytest.approx(-dm["statistic"], rel=1e-9)
    assert swapped["brier"]["p_value"] == pytest.approx(dm["p_value"], rel=1e-6)
    # Same seed, same resampled fills: the interval is mirrored.
    low, high = result["bootstrap"]["brier_ci"]
    assert swapped["bootstrap"]["brier_ci"] == pytest.approx([-high, -low], abs=1e-12)

    named = _compare(fills, names=("incumbent", "candidate"), n_boot=50)
    assert named["verdict"]["better"] == "candidate"
    assert named["verdict"]["text"].startswith("candidate is better: Brier lower by ")


def test_scored_mask_restricts_the_comparison_and_reports_coverage():
    fills = _fills(n=2000, seed=12, noise_a=0.1, noise_b=0.05)
    scored = np.random.default_rng(0).random(2000) < 0.7
    masked = _compare(fills, scored=scored, n_boot=50)
    subset = _compare({key: value[scored] for key, value in fills.items()}, n_boot=50)
    assert masked["n"] == int(scored.sum()) and masked["n_total"] == 2000
    assert masked["coverage"] == pytest.approx(scored.mean())
    for key in ("brier", "log_loss", "bootstrap", "sequential", "verdict"):
        assert masked[key] == subset[key]
    with pytest.raises(ValueError, match="boolean mask"):
        _compare(fills, scored=scored[:10])


def test_too_few_scored_fills_give_an_empty_but_valid_comparison():
    fills = _fills(n=200, seed=13)
    for scored in (np.zeros(200, dtype=bool), np.arange(200) == 5):
        result = _compare(fills, scored=scored, n_boot=20)
        _assert_plain_json(result)
        assert result["verdict"]["better"] is None and result["brier"]["p_value"] is None
        assert result["n"] == int(scored.sum()) and result["sequential"]["n"] == 0


@pytest.mark.slow
def test_equally_good_forecasters_reject_at_about_the_nominal_rate():
    # Two different forecasters with the same noise level around the truth: H0 holds, so the DM
    # p-values should be roughly uniform.  Measured: 3 of 50 seeds (6 %) below 0.05; over 1000 seeds 5.2 %.
    p_values, verdicts = [], []
    for seed in range(50):
        result = _compare(_fills(n=3000, seed=seed), n_boot=200, seed=seed)
        p_values.append(result["brier"]["p_value"])
        verdicts.append(result["verdict"]["better"])
    p_values = np.asarray(p_values)
    assert np.mean(p_values < 0.05) <= 0.12
    assert np.mean([v is not None for v in verdicts]) <= np.mean(p_values < 0.05)
    # Roughly uniform: no tenth of [0, 1] holds more than a quarter of the seeds.
    assert np.histogram(p_values, bins=10, range=(0, 1))[0].max() <= 12
