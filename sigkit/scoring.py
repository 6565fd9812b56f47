"""Pure metric functions that score toxicity forecasts against realised fills.

Brier and its five-term decomposition, log loss, ECE, capture/lift and the per-period
information coefficient, all over numpy arrays with no I/O.

Conventions used by every function here:

- ``p``: predicted probability that a fill is adverse (for the ranking metrics any score
  that orders fills by predicted toxicity will do, e.g. predicted AS cost in bps);
- ``y``: the realised ``was_adverse`` flag, 0 or 1;
- ``cost_bps``: realised adverse-selection cost in bps, signed (= -markout; positive means we lost);
- ``markout_bps``: the signed markout itself (positive means the fill made money).

Definitions follow METHODS.md sections 1, 2 and 8. Inputs are array-likes of equal length;
a value that is undefined on empty input comes back as NaN rather than an exception.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

__all__ = [
    "BrierDecomposition",
    "Capture",
    "ICResult",
    "brier",
    "brier_decomposition",
    "brier_skill",
    "capture_at",
    "ece",
    "hit_capture_at",
    "information_coefficient",
    "log_loss",
    "markout_by_decile",
    "quantile_bins",
    "score_forecast",
    "uniform_bins",
]

_NAN = float("nan")


# --------------------------------------------------------------------------------------------
# Result records
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BrierDecomposition:
    """Stephenson-Coelho-Jolliffe (2008) five-term split: brier = reliability - resolution
    + uncertainty + within_bin_variance + within_bin_covariance. Per-bin tuples hold only
    the non-empty bins, in bin order."""

    brier: float
    reliability: float
    resolution: float
    uncertainty: float
    within_bin_variance: float
    within_bin_covariance: float
    n_bins_used: int
    bin_counts: tuple[int, ...]
    bin_mean_forecast: tuple[float, ...]
    bin_observed_rate: tuple[float, ...]


@dataclass(frozen=True)
class Capture:
    """Share of the total (cost or hits) that falls in the top-q fills ranked by forecast;
    ``lift`` is that share divided by the share of fills taken, so a random ranking gives 1."""

    capture: float
    lift: float
    n_top: int
    q: float


@dataclass(frozen=True)
class ICResult:
    """Per-period Spearman IC series and its summary. ``mean_ic``, ``icir`` and
    ``t_stat_hac`` are None when there are too few usable periods; ``note`` says why."""

    n_periods: int
    ic_per_period: tuple[float, ...]
    mean_ic: float | None
    icir: float | None
    t_stat_hac: float | None
    hac_lags: int | None
    note: str


# --------------------------------------------------------------------------------------------
# Input checking
# --------------------------------------------------------------------------------------------


def _as_1d(name: str, values: Any) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    # A NaN forecast or cost would silently poison sums and rankings, so refuse it here.
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return array


def _as_probability(name: str, values: Any) -> np.ndarray:
    array = _as_1d(name, values)
    if array.size and (array.min() < 0.0 or array.max() > 1.0):
        raise ValueError(f"{name} must be probabilities in [0, 1]")
    return array


def _as_binary(name: str, values: Any) -> np.ndarray:
    array = _as_1d(name, values)
    # UNC = ybar(1 - ybar) is the variance of y only when y is 0/1, so the
    # decomposition identity depends on this check.
    if array.size and not np.all((array == 0.0) | (array == 1.0)):
        raise ValueError(f"{name} must contain only 0 and 1")
    return array


def _check_same_length(**arrays: np.ndarray) -> int:
    lengths = {name: len(array) for name, array in arrays.items()}
    if len(set(lengths.values())) > 1:
        described = ", ".join(f"{name}={length}" for name, length in lengths.items())
        raise ValueError(f"inputs must have the same length, got {described}")
    return next(iter(lengths.values()))


def _check_n_bins(n_bins: int) -> int:
    if isinstance(n_bins, bool) or int(n_bins) != n_bins or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    return int(n_bins)


def _check_q(q: float) -> float:
    if not 0.0 < q <= 1.0:
        raise ValueError(f"q must be in (0, 1], got {q!r}")
    return float(q)


# --------------------------------------------------------------------------------------------
# Proper scores
# --------------------------------------------------------------------------------------------


def brier(p: Any, y: Any) -> float:
    """Mean squared error of the probability forecast: mean (p - y)^2."""
    p_arr, y_arr = _as_probability("p", p), _as_binary("y", y)
    n = _check_same_length(p=p_arr, y=y_arr)
    if n == 0:
        return _NAN
    return float(np.mean((p_arr - y_arr) ** 2))


def log_loss(p: Any, y: Any, eps: float = 1e-15) -> float:
    """Mean negative log-likelihood, with p clipped to [eps, 1 - eps] so a confident miss
    costs a large finite amount instead of infinity."""
    p_arr, y_arr = _as_probability("p", p), _as_binary("y", y)
    n = _check_same_length(p=p_arr, y=y_arr)
    if n == 0:
        return _NAN
    clipped = np.clip(p_arr, eps, 1.0 - eps)
    return float(-np.mean(y_arr * np.log(clipped) + (1.0 - y_arr) * np.log1p(-clipped)))


def brier_skill(brier_model: float, brier_ref: float) -> float:
    """Brier skill score 1 - model/ref; NaN when the reference is 0 or NaN (no skill is
    measurable against a perfect or undefined reference)."""
    if brier_ref is None or brier_model is None:
        return _NAN
    brier_model, brier_ref = float(brier_model), float(brier_ref)
    if math.isnan(brier_ref) or brier_ref == 0.0:
        return _NAN
    return 1.0 - brier_model / brier_ref


# --------------------------------------------------------------------------------------------
# Binning
# --------------------------------------------------------------------------------------------


def _assign_bins(p_arr: np.ndarray, edges: np.ndarray) -> np.ndarray:
    # side='left' on the inner edges puts a value lying exactly on an edge in the lower bin,
    # which is what sklearn.calibration.calibration_curve does.
    return np.searchsorted(edges[1:-1], p_arr, side="left").astype(np.intp)


def quantile_bins(p: Any, n_bins: int = 10) -> np.ndarray:
    """Bin index (0 .. n_bins-1) per forecast, with equal-mass edges at the percentiles of p.

    Identical to the assignment in ``calibration_curve(strategy='quantile')``. Tied
    forecasts can leave some bins empty.
    """
    n_bins = _check_n_bins(n_bins)
    p_arr = _as_1d("p", p)
    if p_arr.size == 0:
        return np.zeros(0, dtype=np.intp)
    # linspace(0, 1) * 100 rather than linspace(0, 100): the two differ in the last ulp for
    # some n_bins, and we want edges bit-identical to sklearn's.
    edges = np.percentile(p_arr, np.linspace(0.0, 1.0, n_bins + 1) * 100)
    return _assign_bins(p_arr, edges)


def uniform_bins(p: Any, n_bins: int = 10) -> np.ndarray:
    """Bin index per forecast with equal-width edges on [0, 1] (sklearn's 'uniform')."""
    n_bins = _check_n_bins(n_bins)
    p_arr = _as_1d("p", p)
    return _assign_bins(p_arr, np.linspace(0.0, 1.0, n_bins + 1))


_BINNERS = {"quantile": quantile_bins, "uniform": uniform_bins}


def _bins_for(p_arr: np.ndarray, n_bins: int, strategy: str) -> np.ndarray:
    try:
        binner = _BINNERS[strategy]
    except KeyError:
        raise ValueError(
            f"strategy must be one of {sorted(_BINNERS)}, got {strategy!r}"
        ) from None
    return binner(p_arr, n_bins)


# --------------------------------------------------------------------------------------------
# Calibration
# --------------------------------------------------------------------------------------------


def brier_decomposition(
    p: Any, y: Any, n_bins: int = 10, strategy: str = "quantile"
) -> BrierDecomposition:
    """Five-term Brier decomposition (Stephenson, Coelho & Jolliffe 2008), empty bins dropped.

    The classic three terms (REL - RES + UNC) reproduce the Brier score only when every
    forecast in a bin equals the bin mean; for continuous forecasts the within-bin variance
    and covariance close the gap exactly, which matters because sigkit's skill is of the
    same order as that gap (METHODS.md 1.6).
    """
    p_arr, y_arr = _as_probability("p", p), _as_binary("y", y)
    n = _check_same_length(p=p_arr, y=y_arr)
    n_bins = _check_n_bins(n_bins)
    bin_ids = _bins_for(p_arr, n_bins, strategy)
    if n == 0:
        return BrierDecomposition(_NAN, _NAN, _NAN, _NAN, _NAN, _NAN, 0, (), (), ())

    counts = np.bincount(bin_ids, minlength=n_bins)
    mean_forecast = np.bincount(bin_ids, weights=p_arr, minlength=n_bins)
    observed_rate = np.bincount(bin_ids, weights=y_arr, minlength=n_bins)
    used = counts > 0
    mean_forecast[used] /= counts[used]
    observed_rate[used] /= counts[used]

    base_rate = float(np.mean(y_arr))
    forecast_dev = p_arr - mean_forecast[bin_ids]
    outcome_dev = y_arr - observed_rate[bin_ids]
    n_used, f_used, o_used = counts[used], mean_forecast[used], observed_rate[used]

    return BrierDecomposition(
        brier=float(np.mean((p_arr - y_arr) ** 2)),
        reliability=float(np.sum(n_used * (f_used - o_used) ** 2) / n),
        resolution=float(np.sum(n_used * (o_used - base_rate) ** 2) / n),
        uncertainty=base_rate * (1.0 - base_rate),
        within_bin_variance=float(np.mean(forecast_dev**2)),
        within_bin_covariance=float(-2.0 * np.mean(forecast_dev * outcome_dev)),
        n_bins_used=int(np.count_nonzero(used)),
        bin_counts=tuple(int(c) for c in n_used),
        bin_mean_forecast=tuple(float(f) for f in f_used),
        bin_observed_rate=tuple(float(o) for o in o_used),
    )


def ece(p: Any, y: Any, n_bins: int = 10, strategy: str = "quantile") -> float:
    """Expected calibration error (L1): sum_k (n_k/N) |observed rate_k - mean forecast_k|."""
    return _ece_of(brier_decomposition(p, y, n_bins=n_bins, strategy=strategy))


def _ece_of(decomposition: BrierDecomposition) -> float:
    if decomposition.n_bins_used == 0:
        return _NAN
    counts = np.asarray(decomposition.bin_counts, dtype=float)
    gaps = np.abs(
        np.asarray(decomposition.bin_observed_rate) - np.asarray(decomposition.bin_mean_forecast)
    )
    return float(np.sum(counts * gaps) / counts.sum())


# --------------------------------------------------------------------------------------------
# Concentration: capture and lift
# --------------------------------------------------------------------------------------------


def _capture_of(score: np.ndarray, weight: np.ndarray, q: float) -> Capture:
    n = len(score)
    if n == 0:
        return Capture(capture=_NAN, lift=_NAN, n_top=0, q=q)
    # The 1e-9 keeps q*N that is an integer up to float error (0.07 * 100 = 7.000000000000001)
    # from rounding up to one fill too many.
    n_top = min(n, max(1, math.ceil(q * n - 1e-9)))
    # A stable sort of -score ranks ties in their original order, so the same fills always
    # land in the top group and the metric is reproducible.
    order = np.argsort(-score, kind="stable")
    total = float(np.sum(weight))
    if total == 0.0:
        return Capture(capture=_NAN, lift=_NAN, n_top=n_top, q=q)
    capture = float(np.sum(weight[order[:n_top]])) / total
    return Capture(capture=capture, lift=capture / (n_top / n), n_top=n_top, q=q)


def capture_at(p: Any, cost_bps: Any, q: float = 0.10) -> Capture:
    """AS-cost capture@q: share of the total positive AS cost carried by the top-q fills
    ranked by predicted toxicity. Fills that made money (negative cost) count as zero cost."""
    p_arr, cost_arr = _as_1d("p", p), _as_1d("cost_bps", cost_bps)
    _check_same_length(p=p_arr, cost_bps=cost_arr)
    return _capture_of(p_arr, np.maximum(cost_arr, 0.0), _check_q(q))


def hit_capture_at(p: Any, y: Any, q: float = 0.10) -> Capture:
    """Hit capture@q (recall@q): share of all adverse fills that fall in the top-q fills."""
    p_arr, y_arr = _as_1d("p", p), _as_binary("y", y)
    _check_same_length(p=p_arr, y=y_arr)
    return _capture_of(p_arr, y_arr, _check_q(q))


def markout_by_decile(p: Any, markout_bps: Any, n_groups: int = 10) -> tuple[float, ...]:
    """Mean markout (bps) per quantile group of the forecast, group 0 the least toxic
    predicted and the last the most toxic; NaN for a group left empty by ties."""
    p_arr, markout_arr = _as_1d("p", p), _as_1d("markout_bps", markout_bps)
    _check_same_length(p=p_arr, markout_bps=markout_arr)
    n_groups = _check_n_bins(n_groups)
    group_ids = quantile_bins(p_arr, n_groups)
    counts = np.bincount(group_ids, minlength=n_groups)
    sums = np.bincount(group_ids, weights=markout_arr, minlength=n_groups)
    return tuple(float(s / c) if c else _NAN for s, c in zip(sums, counts))


# --------------------------------------------------------------------------------------------
# Information coefficient
# --------------------------------------------------------------------------------------------


def _ceil_cube_root(k: int) -> int:
    # Integer search instead of ceil(k ** (1/3)): 27 ** (1/3) is 3.0000000000000004 in floats,
    # which would give 4 lags where Newey-West's rule means 3.
    m = round(k ** (1.0 / 3.0)) if k > 0 else 0
    while m**3 < k:
        m += 1
    while m > 0 and (m - 1) ** 3 >= k:
        m -= 1
    return m


def _as_period_ids(values: Any) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"period_ids must be one-dimensional, got shape {array.shape}")
    if array.size and array.dtype.kind not in "iu":
        as_float = np.asarray(array, dtype=float)
        if not np.all(np.isfinite(as_float)) or not np.all(as_float == np.round(as_float)):
            raise ValueError("period_ids must be integers (e.g. hour numbers)")
        array = as_float.astype(np.int64)
    return array.astype(np.int64, copy=False)


def information_coefficient(
    p: Any,
    cost_bps: Any,
    period_ids: Any,
    min_fills: int = 30,
    min_periods: int = 5,
) -> ICResult:
    """Per-period Spearman IC between forecast and AS cost, its ICIR and a HAC t-statistic.

    Periods (e.g. clock hours) are taken in sorted id order, which the HAC standard error
    relies on: it treats the IC series as a time series. A period is skipped when it has
    fewer than ``min_fills`` fills or a constant forecast or cost, since the rank
    correlation is then undefined or too noisy to count.
    """
    p_arr, cost_arr = _as_1d("p", p), _as_1d("cost_bps", cost_bps)
    period_arr = _as_period_ids(period_ids)
    _check_same_length(p=p_arr, cost_bps=cost_arr, period_ids=period_arr)

    ics: list[float] = []
    n_constant = 0
    if period_arr.size:
        order = np.argsort(period_arr, kind="stable")
        sorted_ids = period_arr[order]
        starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])
        for rows in np.split(order, starts[1:]):
            if len(rows) < min_fills:
                continue
            p_period, cost_period = p_arr[rows], cost_arr[rows]
            if np.ptp(p_period) == 0.0 or np.ptp(cost_period) == 0.0:
                n_constant += 1
                continue
            ics.append(float(stats.spearmanr(p_period, cost_period).statistic))

    k = len(ics)
    constant_note = (
        f"skipped {n_constant} periods with a constant forecast or cost" if n_constant else ""
    )
    skipped = f"; {constant_note}" if constant_note else ""
    if k < min_periods:
        note = (
            f"only {k} periods with >= {min_fills} fills; "
            f"need {min_periods} for an IC t-statistic{skipped}"
        )
        return ICResult(k, tuple(ics), None, None, None, None, note)

    ic_series = np.asarray(ics)
    mean_ic = float(ic_series.mean())
    hac_lags = _ceil_cube_root(k)
    std_ic = float(ic_series.std(ddof=1)) if k > 1 else 0.0
    # ICs live in [-1, 1], so a spread below 1e-12 is rounding noise (1.0 vs
    # 0.9999999999999999 from spearmanr), not information: dividing by it would report an
    # astronomically large ICIR for what is a constant series.
    if std_ic < 1e-12:
        note = f"IC is the same in all {k} periods; ICIR and t-statistic are undefined{skipped}"
        return ICResult(k, tuple(ics), mean_ic, _NAN, _NAN, hac_lags, note)

    # statsmodels is slow to import and only this function needs it.
    from statsmodels.regression.linear_model import OLS

    fit = OLS(ic_series, np.ones((k, 1))).fit(
        cov_type="HAC", cov_kwds={"maxlags": hac_lags}
    )
    t_stat_hac = float(mean_ic / fit.bse[0])
    return ICResult(k, tuple(ics), mean_ic, mean_ic / std_ic, t_stat_hac, hac_lags, constant_note)


# --------------------------------------------------------------------------------------------
# One-call report
# --------------------------------------------------------------------------------------------


def _json_float(value: float) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value


def score_forecast(
    p: Any,
    y: Any,
    cost_bps: Any,
    p_ref: Any,
    *,
    n_bins: int = 10,
    q: float = 0.10,
) -> dict[str, Any]:
    """The standard scorecard for one forecast on one set of fills, as a JSON-ready dict
    (plain Python numbers, NaN written as None).

    ``bss`` is against ``p_ref`` (ideally a causal running base rate) scored on the same
    fills; ``bss_insample`` is against the in-sample climatology, which peeks at future
    outcomes and so flatters a model that only tracks base-rate drift less than it should.
    """
    p_arr, y_arr = _as_probability("p", p), _as_binary("y", y)
    cost_arr, p_ref_arr = _as_1d("cost_bps", cost_bps), _as_probability("p_ref", p_ref)
    n = _check_same_length(p=p_arr, y=y_arr, cost_bps=cost_arr, p_ref=p_ref_arr)

    decomposition = brier_decomposition(p_arr, y_arr, n_bins=n_bins, strategy="quantile")
    brier_model = decomposition.brier
    brier_ref = brier(p_ref_arr, y_arr)
    cost_capture = capture_at(p_arr, cost_arr, q=q)
    hits = hit_capture_at(p_arr, y_arr, q=q)

    return {
        "n": int(n),
        "brier": _json_float(brier_model),
        "brier_ref": _json_float(brier_ref),
        "bss": _json_float(brier_skill(brier_model, brier_ref)),
        "bss_insample": _json_float(brier_skill(brier_model, decomposition.uncertainty)),
        "log_loss": _json_float(log_loss(p_arr, y_arr)),
        "ece": _json_float(_ece_of(decomposition)),
        "base_rate": _json_float(float(np.mean(y_arr)) if n else _NAN),
        "decomposition": {
            "reliability": _json_float(decomposition.reliability),
            "resolution": _json_float(decomposition.resolution),
            "uncertainty": _json_float(decomposition.uncertainty),
            "within_bin_variance": _json_float(decomposition.within_bin_variance),
            "within_bin_covariance": _json_float(decomposition.within_bin_covariance),
            "n_bins_used": decomposition.n_bins_used,
            "bin_counts": list(decomposition.bin_counts),
            "bin_mean_forecast": [_json_float(v) for v in decomposition.bin_mean_forecast],
            "bin_observed_rate": [_json_float(v) for v in decomposition.bin_observed_rate],
        },
        "capture_at_q": _json_float(cost_capture.capture),
        "lift_at_q": _json_float(cost_capture.lift),
        "hit_capture_at_q": _json_float(hits.capture),
        "q": float(q),
    }


# --------------------------------------------------------------------------------------------
# Is the skill real?
# --------------------------------------------------------------------------------------------


def newey_west_variance(series: Any, lags: int) -> float:
    """Long-run variance of ``series`` with Bartlett weights ``1 - k/(lags+1)`` (Newey-West 1987).

    Equals the HAC variance statsmodels uses for the mean (``OLS(x, 1).fit(cov_type='HAC')``) times n.
    """
    x = _as_1d("series", series)
    n = x.size
    if n == 0:
        return _NAN
    d = x - x.mean()
    lrv = float(d @ d) / n
    for k in range(1, min(lags, n - 1) + 1):
        lrv += 2.0 * (1.0 - k / (lags + 1)) * float(d[k:] @ d[:-k]) / n
    return lrv


@dataclass(frozen=True)
class SkillTest:
    """Is a forecast better than its reference?  ``d_i = (p_ref - y)^2 - (p - y)^2`` (> 0: better)."""

    n: int
    mean_improvement: float
    t_stat: float
    p_value: float  # one-sided, H1: the model beats the reference
    lags: int
    edge: bool  # t_stat >= 2


def skill_test(p: Any, p_ref: Any, y: Any, *, lags: int) -> SkillTest:
    """Diebold-Mariano-style t-statistic of the per-fill Brier improvement over ``p_ref``.

    The variance is Newey-West HAC with ``lags`` (choose at least the number of fills whose outcome
    windows overlap); the p-value is one-sided from the normal distribution.  ``edge`` is the rule sigkit
    reports: t >= 2.
    """
    p_arr, ref_arr = _as_probability("p", p), _as_probability("p_ref", p_ref)
    y_arr = _as_binary("y", y)
    n = _check_same_length(p=p_arr, p_ref=ref_arr, y=y_arr)
    if n < 2:
        return SkillTest(n, _NAN, _NAN, _NAN, lags, False)
    d = (ref_arr - y_arr) ** 2 - (p_arr - y_arr) ** 2
    mean = float(d.mean())
    lrv = newey_west_variance(d, lags)
    if not lrv > 0:
        return SkillTest(n, mean, _NAN, _NAN, lags, False)
    t = mean / math.sqrt(lrv / n)
    return SkillTest(n, mean, t, float(stats.norm.sf(t)), lags, t >= 2.0)
