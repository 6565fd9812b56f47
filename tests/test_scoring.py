"""Tests for sigkit.scoring: cross-checks against scikit-learn/statsmodels and hand-computed cases."""

import json
import math

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss, d2_brier_score
from sklearn.metrics import log_loss as sk_log_loss

from sigkit import scoring
from sigkit.scoring import (
    brier,
    brier_decomposition,
    brier_skill,
    capture_at,
    ece,
    hit_capture_at,
    information_coefficient,
    log_loss,
    markout_by_decile,
    quantile_bins,
    score_forecast,
    uniform_bins,
)


def _continuous_fills(n=20_000, seed=7):
    """Forecasts clustered near 0.5 (like sigkit's) with outcomes drawn from a nearby truth."""
    rng = np.random.default_rng(seed)
    truth = 1.0 / (1.0 + np.exp(-rng.normal(0.0, 0.6, n)))
    p = np.clip(truth + rng.normal(0.0, 0.05, n), 0.001, 0.999)
    y = (rng.random(n) < truth).astype(int)
    return p, y


def _exactly_calibrated(values=(0.1, 0.3, 0.5, 0.7, 0.9), per_value=100):
    """Each forecast value v is issued per_value times with exactly v * per_value hits."""
    p, y = [], []
    for v in values:
        hits = round(v * per_value)
        p += [v] * per_value
        y += [1] * hits + [0] * (per_value - hits)
    return np.array(p), np.array(y)


# ---------------------------------------------------------------- proper scores vs sklearn


def test_brier_and_log_loss_match_sklearn():
    p, y = _continuous_fills()
    assert brier(p, y) == pytest.approx(brier_score_loss(y, p), abs=1e-12)
    assert log_loss(p, y) == pytest.approx(sk_log_loss(y, p, labels=[0, 1]), abs=1e-12)


def test_brier_hand_value_and_log_loss_clipping_keeps_it_finite():
    assert brier([0.2, 0.9, 0.5], [0, 1, 1]) == pytest.approx((0.04 + 0.01 + 0.25) / 3, abs=1e-15)
    # A certain forecast that misses is clipped, not infinite.
    # (1 - 1e-15 is not exact in floats, hence the two slightly different penalties.)
    expected = (-math.log1p(-(1 - 1e-15)) - math.log(1e-15)) / 2
    assert log_loss([1.0, 0.0], [0, 1]) == pytest.approx(expected, rel=1e-12)


def test_brier_skill():
    assert brier_skill(0.2, 0.25) == pytest.approx(0.2, abs=1e-15)
    assert brier_skill(0.3, 0.25) == pytest.approx(-0.2, abs=1e-15)
    assert math.isnan(brier_skill(0.1, 0.0))
    assert math.isnan(brier_skill(0.1, float("nan")))


def test_bss_insample_matches_d2_brier_score():
    p, y = _continuous_fills()
    report = score_forecast(p, y, -np.ones_like(p), np.full_like(p, 0.5))
    assert report["bss_insample"] == pytest.approx(d2_brier_score(y, p), abs=1e-12)


# ---------------------------------------------------------------- binning


def test_quantile_bins_hand_examples_put_edge_values_in_lower_bin():
    np.testing.assert_array_equal(quantile_bins([0.1, 0.2, 0.3, 0.4], n_bins=2), [0, 0, 1, 1])
    # The median 0.2 is exactly on the inner edge, so it belongs to bin 0.
    np.testing.assert_array_equal(quantile_bins([0.3, 0.1, 0.2], n_bins=2), [1, 0, 0])
    assert quantile_bins([], n_bins=10).size == 0


def test_uniform_bins_hand_example():
    bins = uniform_bins([0.0, 0.1, 0.10000001, 0.5, 0.95, 1.0], n_bins=10)
    np.testing.assert_array_equal(bins, [0, 0, 1, 4, 9, 9])


@pytest.mark.parametrize("strategy", ["quantile", "uniform"])
@pytest.mark.parametrize("n_bins", [10, 7])
@pytest.mark.parametrize("discrete", [False, True])
def test_bin_means_and_rates_match_calibration_curve(strategy, n_bins, discrete):
    p, y = _continuous_fills(n=5_000, seed=11)
    if discrete:
        p = np.round(p, 2)  # many ties and forecasts sitting exactly on edges
    prob_true, prob_pred = calibration_curve(y, p, n_bins=n_bins, strategy=strategy)
    decomposition = brier_decomposition(p, y, n_bins=n_bins, strategy=strategy)
    assert decomposition.n_bins_used == len(prob_true)
    np.testing.assert_allclose(decomposition.bin_mean_forecast, prob_pred, rtol=0, atol=1e-12)
    np.testing.assert_allclose(decomposition.bin_observed_rate, prob_true, rtol=0, atol=1e-12)
    assert sum(decomposition.bin_counts) == len(p)


def test_quantile_edges_are_bit_identical_to_sklearn():
    # With percentiles from linspace(0, 100) instead of sklearn's linspace(0, 1) * 100 one
    # edge here lands an ulp away and the 0.3 and 0.5 forecasts would share a bin.
    p = np.array([0.8, 0.9, 0.1, 0.1, 0.1, 0.9, 0.6, 0.5, 0.2, 0.7, 0.3, 0.7, 0.5,
                  0.5, 0.8, 0.1, 0.6, 0.2, 0.8, 0.5, 1.0, 0.2, 1.0, 0.8, 0.5])
    y = np.arange(p.size) % 2
    prob_true, prob_pred = calibration_curve(y, p, n_bins=12, strategy="quantile")
    decomposition = brier_decomposition(p, y, n_bins=12)
    np.testing.assert_allclose(decomposition.bin_mean_forecast, prob_pred, rtol=0, atol=1e-12)
    np.testing.assert_allclose(decomposition.bin_observed_rate, prob_true, rtol=0, atol=1e-12)


def test_empty_bins_are_dropped():
    decomposition = brier_decomposition([0.05] * 5 + [0.95] * 5, [0] * 5 + [1] * 5, n_bins=10)
    assert decomposition.n_bins_used == 2
    assert decomposition.bin_counts == (5, 5)


# ---------------------------------------------------------------- decomposition and ECE


@pytest.mark.parametrize("strategy", ["quantile", "uniform"])
def test_five_term_identity_is_exact_on_continuous_forecasts(strategy):
    p, y = _continuous_fills()
    d = brier_decomposition(p, y, n_bins=10, strategy=strategy)
    five_terms = (
        d.reliability - d.resolution + d.uncertainty + d.within_bin_variance + d.within_bin_covariance
    )
    assert five_terms == pytest.approx(d.brier, abs=1e-12)
    assert d.brier == pytest.approx(brier(p, y), abs=1e-15)
    assert d.uncertainty == pytest.approx(y.mean() * (1 - y.mean()), abs=1e-15)
    # The within-bin terms are not negligible here, which is why they exist.
    assert abs(d.within_bin_variance + d.within_bin_covariance) > 1e-6


def test_three_term_identity_is_exact_when_each_value_has_its_own_bin():
    rng = np.random.default_rng(3)
    values = np.array([0.1, 0.3, 0.5, 0.7, 0.9])
    p = rng.choice(values, size=20_000)
    y = (rng.random(p.size) < p).astype(int)
    d = brier_decomposition(p, y, n_bins=5, strategy="uniform")
    assert d.n_bins_used == 5
    assert abs(d.within_bin_variance) < 1e-20
    assert abs(d.within_bin_covariance) < 1e-12
    assert d.reliability - d.resolution + d.uncertainty == pytest.approx(d.brier, abs=1e-12)


def test_ece_is_zero_for_a_calibrated_forecaster_and_positive_when_overconfident():
    p, y = _exactly_calibrated()
    assert ece(p, y, n_bins=5) == pytest.approx(0.0, abs=1e-12)
    assert ece(p, y, n_bins=5, strategy="uniform") == pytest.approx(0.0, abs=1e-12)
    # Same outcomes, forecasts pushed away from 0.5: 0.1->0.02, 0.3->0.2, 0.7->0.8, 0.9->0.98.
    overconfident = np.select(
        [p == 0.1, p == 0.3, p == 0.7, p == 0.9], [0.02, 0.2, 0.8, 0.98], default=p
    )
    assert ece(overconfident, y, n_bins=5) == pytest.approx((0.08 + 0.1 + 0.1 + 0.08) / 5, abs=1e-12)


def test_reliability_is_the_squared_calibration_error_of_the_bins():
    p, y = _continuous_fills(n=5_000)
    d = brier_decomposition(p, y)
    counts = np.array(d.bin_counts)
    gap = np.array(d.bin_observed_rate) - np.array(d.bin_mean_forecast)
    assert d.reliability == pytest.approx(np.sum(counts * gap**2) / len(p), abs=1e-15)


def test_invalid_strategy_and_inputs_raise():
    with pytest.raises(ValueError, match="strategy"):
        brier_decomposition([0.5], [1], strategy="equal")
    with pytest.raises(ValueError, match="0 and 1"):
        brier([0.5, 0.5], [0, 2])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        brier([1.5], [1])
    with pytest.raises(ValueError, match="NaN"):
        capture_at([0.5, float("nan")], [1.0, 2.0])


# ---------------------------------------------------------------- capture and lift

# Ten fills; the three highest forecasts are tied at 0.9 (fills 0, 2 and 6).
_P10 = np.array([0.9, 0.5, 0.9, 0.1, 0.5, 0.2, 0.9, 0.3, 0.4, 0.6])
_COST10 = np.array([5.0, -2.0, 0.0, 3.0, 4.0, 1.0, 2.0, -1.0, 0.0, 6.0])  # positive total 21


def test_capture_hand_example_with_ties_keeps_original_order():
    top_two = capture_at(_P10, _COST10, q=0.2)
    # Stable ranking takes tied fills 0 and 2 (cost 5 + 0), never fill 6 (cost 2).
    assert top_two.n_top == 2
    assert top_two.capture == pytest.approx(5 / 21, abs=1e-15)
    assert top_two.lift == pytest.approx((5 / 21) / 0.2, abs=1e-12)
    assert top_two.q == 0.2

    top_three = capture_at(_P10, _COST10, q=0.3)
    assert top_three.n_top == 3
    assert top_three.capture == pytest.approx(7 / 21, abs=1e-15)

    assert capture_at(_P10, _COST10, q=0.25).n_top == 3  # ceil(2.5)
    smallest = capture_at(_P10, _COST10, q=0.01)  # at least one fill
    assert smallest.n_top == 1
    assert smallest.capture == pytest.approx(5 / 21, abs=1e-15)

    # Moving fill 6 in front of the other tied fills changes which fills are on top.
    reordered = [6, 0, 1, 2, 3, 4, 5, 7, 8, 9]
    assert capture_at(_P10[reordered], _COST10[reordered], q=0.2).capture == pytest.approx(7 / 21)


def test_capture_is_deterministic_for_all_tied_forecasts():
    cost = np.arange(10.0)
    result = capture_at(np.full(10, 0.5), cost, q=0.3)
    assert result.capture == pytest.approx((0 + 1 + 2) / 45, abs=1e-15)


def test_capture_keeps_tie_order_on_a_large_sample():
    # Past ~16 elements numpy's default sort is not stable, so this catches a non-stable rank.
    rng = np.random.default_rng(0)
    p = rng.choice([0.1, 0.5, 0.9], size=1_000)
    cost = rng.exponential(1.0, size=p.size)
    result = capture_at(p, cost, q=0.1)
    first_hundred_top = np.flatnonzero(p == 0.9)[:100]
    assert result.capture == pytest.approx(cost[first_hundred_top].sum() / cost.sum(), abs=1e-15)


def test_capture_top_count_ignores_float_error_in_q_times_n():
    # 0.07 * 100 is 7.000000000000001 in floats; the top group is still 7 fills, not 8.
    assert capture_at(np.linspace(0, 1, 100), np.ones(100), q=0.07).n_top == 7


def test_hit_capture_hand_example():
    y = (_COST10 > 0).astype(int)  # six adverse fills
    result = hit_capture_at(_P10, y, q=0.3)
    assert result.capture == pytest.approx(2 / 6, abs=1e-15)  # fills 0 and 6 are hits
    assert result.lift == pytest.approx((2 / 6) / 0.3, abs=1e-12)


def test_capture_of_a_random_ranking_is_close_to_q():
    rng = np.random.default_rng(5)
    cost = rng.exponential(2.0, 200_000) - 1.0
    result = capture_at(rng.random(cost.size), cost, q=0.1)
    assert result.capture == pytest.approx(0.1, abs=0.01)
    assert result.lift == pytest.approx(1.0, abs=0.1)


def test_capture_without_any_positive_cost_is_nan():
    result = capture_at([0.1, 0.9], [-1.0, 0.0])
    assert math.isnan(result.capture) and math.isnan(result.lift)


def test_capture_rejects_bad_q():
    with pytest.raises(ValueError, match="q"):
        capture_at(_P10, _COST10, q=0.0)


# ---------------------------------------------------------------- markout by decile


def test_markout_by_decile_hand_example_and_empty_groups():
    p = np.arange(20.0)
    means = markout_by_decile(p, p * 2, n_groups=10)
    assert means == pytest.approx(tuple(2 * (2 * k + 0.5) for k in range(10)), abs=1e-12)

    tied = markout_by_decile([0.0] * 5 + [1.0] * 5, [1.0] * 5 + [-3.0] * 5, n_groups=4)
    assert tied[0] == 1.0 and tied[2] == -3.0
    assert math.isnan(tied[1]) and math.isnan(tied[3])


# ---------------------------------------------------------------- information coefficient


def test_ic_is_one_when_cost_is_monotone_in_p():
    rng = np.random.default_rng(1)
    periods = np.repeat(np.arange(8), 40)
    p = rng.random(periods.size)
    result = information_coefficient(p, np.exp(3 * p) - 2.0, periods)
    assert result.n_periods == 8
    assert result.ic_per_period == pytest.approx((1.0,) * 8, abs=1e-12)
    assert result.mean_ic == pytest.approx(1.0, abs=1e-12)
    # A constant IC series has no spread, so its ratio is undefined rather than huge.
    assert math.isnan(result.icir) and math.isnan(result.t_stat_hac)
    assert "same in all 8 periods" in result.note


def test_ic_on_independent_noise_and_hac_t_stat_matches_statsmodels():
    from statsmodels.regression.linear_model import OLS

    rng = np.random.default_rng(2)
    periods = np.repeat(np.arange(27), 200)
    result = information_coefficient(rng.random(periods.size), rng.normal(size=periods.size), periods)
    assert result.n_periods == 27
    assert abs(result.mean_ic) < 0.05
    assert result.hac_lags == 3  # ceil(27 ** (1/3)), which float arithmetic would round to 4
    ic = np.array(result.ic_per_period)
    assert result.mean_ic == pytest.approx(ic.mean(), abs=1e-15)
    assert result.icir == pytest.approx(ic.mean() / ic.std(ddof=1), abs=1e-12)
    direct = OLS(ic, np.ones(ic.size)).fit(cov_type="HAC", cov_kwds={"maxlags": 3})
    assert result.t_stat_hac == pytest.approx(direct.tvalues[0], abs=1e-12)
    assert result.note == ""


def test_ic_orders_periods_by_id_and_skips_thin_or_constant_periods():
    rng = np.random.default_rng(4)
    chunks = []
    for period_id, sign in [(5, 1.0), (2, -1.0), (9, 1.0), (7, -1.0), (3, 1.0), (8, -1.0)]:
        p = rng.random(30)
        chunks.append((np.full(30, period_id), p, sign * p))
    chunks.append((np.full(29, 1), rng.random(29), rng.random(29)))  # too few fills
    chunks.append((np.full(40, 4), np.full(40, 0.5), rng.random(40)))  # constant forecast
    period_ids, p, cost = (np.concatenate(parts) for parts in zip(*chunks))
    shuffle = rng.permutation(period_ids.size)

    result = information_coefficient(p[shuffle], cost[shuffle], period_ids[shuffle])
    # Sorted ids 2, 3, 5, 7, 8, 9 carry signs -, +, +, -, -, +.
    assert result.ic_per_period == pytest.approx((-1.0, 1.0, 1.0, -1.0, -1.0, 1.0), abs=1e-12)
    assert result.mean_ic == pytest.approx(0.0, abs=1e-12)
    assert result.hac_lags == 2
    assert "constant" in result.note


def test_ic_with_too_few_periods_explains_why():
    rng = np.random.default_rng(6)
    periods = np.repeat([10, 11, 12], 30)
    result = information_coefficient(rng.random(90), rng.random(90), periods)
    assert result.n_periods == 3
    assert len(result.ic_per_period) == 3
    assert result.mean_ic is None and result.icir is None and result.t_stat_hac is None
    assert result.hac_lags is None
    assert result.note == "only 3 periods with >= 30 fills; need 5 for an IC t-statistic"


def test_ic_rejects_non_integer_period_ids():
    with pytest.raises(ValueError, match="period_ids"):
        information_coefficient([0.1, 0.2], [1.0, 2.0], [0.5, 1.5])


# ---------------------------------------------------------------- score_forecast


def test_score_forecast_is_json_ready_and_consistent_with_the_parts():
    p, y = _continuous_fills(n=5_000)
    cost = np.where(y == 1, 3.0, -1.0) + p
    p_ref = np.full_like(p, y.mean())
    report = score_forecast(p, y, cost, p_ref, n_bins=10, q=0.1)

    assert set(report) == {
        "n", "brier", "brier_ref", "bss", "bss_insample", "log_loss", "ece", "base_rate",
        "decomposition", "capture_at_q", "lift_at_q", "hit_capture_at_q", "q",
    }
    json.dumps(report, allow_nan=False)  # plain Python numbers, no NaN
    assert type(report["n"]) is int and type(report["brier"]) is float
    assert all(type(c) is int for c in report["decomposition"]["bin_counts"])

    assert report["n"] == 5_000
    assert report["brier"] == pytest.approx(brier(p, y), abs=1e-15)
    assert report["brier_ref"] == pytest.approx(brier(p_ref, y), abs=1e-15)
    assert report["bss"] == pytest.approx(1 - brier(p, y) / brier(p_ref, y), abs=1e-12)
    assert report["log_loss"] == pytest.approx(log_loss(p, y), abs=1e-15)
    assert report["ece"] == pytest.approx(ece(p, y), abs=1e-15)
    assert report["base_rate"] == pytest.approx(y.mean(), abs=1e-15)
    assert report["capture_at_q"] == pytest.approx(capture_at(p, cost, q=0.1).capture, abs=1e-15)
    assert report["lift_at_q"] == pytest.approx(capture_at(p, cost, q=0.1).lift, abs=1e-15)
    assert report["hit_capture_at_q"] == pytest.approx(hit_capture_at(p, y, q=0.1).capture, abs=1e-15)
    d = report["decomposition"]
    assert (
        d["reliability"] - d["resolution"] + d["uncertainty"]
        + d["within_bin_variance"] + d["within_bin_covariance"]
    ) == pytest.approx(report["brier"], abs=1e-12)


def test_score_forecast_writes_undefined_values_as_none():
    # No adverse fills at all: no in-sample uncertainty and no cost to capture.
    report = score_forecast([0.2, 0.4, 0.6], [0, 0, 0], [-1.0, -2.0, 0.0], [0.0, 0.0, 0.0])
    assert report["bss_insample"] is None
    assert report["bss"] is None  # the reference is perfect, so skill is undefined
    assert report["capture_at_q"] is None and report["hit_capture_at_q"] is None
    json.dumps(report, allow_nan=False)


# ---------------------------------------------------------------- length mismatch and empty input


@pytest.mark.parametrize(
    "call",
    [
        lambda: brier([0.1, 0.2], [1]),
        lambda: log_loss([0.1], [1, 0]),
        lambda: brier_decomposition([0.1, 0.2], [1]),
        lambda: ece([0.1, 0.2], [1]),
        lambda: capture_at([0.1, 0.2], [1.0]),
        lambda: hit_capture_at([0.1], [1, 0]),
        lambda: markout_by_decile([0.1, 0.2], [1.0]),
        lambda: information_coefficient([0.1, 0.2], [1.0, 2.0], [0]),
        lambda: score_forecast([0.1, 0.2], [1, 0], [1.0, 2.0], [0.5]),
    ],
)
def test_length_mismatch_raises(call):
    with pytest.raises(ValueError, match="same length"):
        call()


def test_empty_input_gives_nan_not_an_exception():
    assert math.isnan(brier([], []))
    assert math.isnan(log_loss([], []))
    assert math.isnan(ece([], []))
    d = brier_decomposition([], [])
    assert math.isnan(d.brier) and math.isnan(d.reliability) and d.n_bins_used == 0
    assert math.isnan(capture_at([], []).capture)
    assert math.isnan(hit_capture_at([], []).lift)
    assert all(math.isnan(v) for v in markout_by_decile([], [], n_groups=3))
    ic = information_coefficient([], [], [])
    assert ic.n_periods == 0 and ic.mean_ic is None
    report = score_forecast([], [], [], [])
    assert report["n"] == 0 and report["brier"] is None and report["base_rate"] is None
    json.dumps(report, allow_nan=False)


def test_module_exports_the_public_names():
    for name in scoring.__all__:
        assert hasattr(scoring, name)
