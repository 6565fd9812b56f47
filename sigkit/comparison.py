"""A/B comparison of two toxicity forecasters scored on the same fills: Diebold-Mariano, a paired
block bootstrap, an always-valid sequential test, and the one-call ``compare`` verdict.

Conventions (METHODS.md section 3):

- inputs are aligned arrays over the same fills in time order: ``p_a`` and ``p_b`` (probabilities),
  ``y`` (the 0/1 ``was_adverse`` flag), ``cost_bps`` (realised AS cost, signed), ``ts_ns`` (int64);
- A is the incumbent and B the candidate; the loss differential is ``d_t = L(p_a) - L(p_b)``, so
  ``d > 0`` means B is better, and every "diff" reported here is positive when B is better.

statsmodels and arch are imported inside the functions that use them, so importing this module
costs numpy and scipy only.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats

from sigkit.scoring import (
    _as_1d,
    _as_binary,
    _as_probability,
    _ceil_cube_root,
    _check_q,
    _check_same_length,
    brier,
    capture_at,
    log_loss,
    newey_west_variance,
)

__all__ = [
    "BootstrapResult",
    "DMResult",
    "SequentialTest",
    "brier_losses",
    "bucket_means",
    "compare",
    "diebold_mariano",
    "log_losses",
    "overlap_lags",
    "paired_bootstrap",
]

_NAN = float("nan")

#: Default mSPRT prior sd of the mean Brier differential, in Brier points: the smallest improvement
#: worth acting on (METHODS.md 3.4).  The test is fastest for effects near tau; larger ones are
#: still found, later than a test tuned to them would find them.
DEFAULT_TAU = 2e-4
#: Bucket means used to estimate sigma^2 before the sequential test starts.
DEFAULT_BURN_IN = 30


# --------------------------------------------------------------------------------------------
# Result records
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DMResult:
    """Diebold-Mariano test of equal expected loss; ``mean_diff > 0`` means B has the lower loss.

    ``statistic`` is the plain DM statistic (asymptotically N(0, 1)) and ``p_value_normal`` its
    two-sided normal p-value; ``hln_statistic`` is the Harvey-Leybourne-Newbold rescaling and
    ``p_value`` its two-sided Student-t p-value with n - 1 degrees of freedom, the p-value sigkit
    acts on.  The statistics are NaN when the differential is constant and non-zero, and 0 (with
    p-values 1) when it is identically zero: the forecasters then cannot be told apart at all.
    """

    n: int
    mean_diff: float
    statistic: float
    hln_statistic: float
    p_value: float
    p_value_normal: float
    lags: int
    horizon: int


@dataclass(frozen=True)
class BootstrapResult:
    """Paired stationary-bootstrap estimates with percentile 95 % intervals, each positive when B
    is better: ``brier_diff = Brier(A) - Brier(B)`` and ``capture_diff = capture@q(B) -
    capture@q(A)``.  ``block_size`` is the mean block length in fills."""

    brier_diff: float
    brier_ci: tuple[float, float]
    capture_diff: float
    capture_ci: tuple[float, float]
    block_size: float
    n_boot: int


# --------------------------------------------------------------------------------------------
# Per-fill losses and HAC lags
# --------------------------------------------------------------------------------------------


def brier_losses(p: Any, y: Any) -> np.ndarray:
    """Per-fill Brier loss (p - y)^2; its mean is ``scoring.brier``."""
    p_arr, y_arr = _as_probability("p", p), _as_binary("y", y)
    _check_same_length(p=p_arr, y=y_arr)
    return (p_arr - y_arr) ** 2


def log_losses(p: Any, y: Any, eps: float = 1e-15) -> np.ndarray:
    """Per-fill negative log-likelihood with p clipped to [eps, 1 - eps]; its mean is
    ``scoring.log_loss``."""
    p_arr, y_arr = _as_probability("p", p), _as_binary("y", y)
    _check_same_length(p=p_arr, y=y_arr)
    clipped = np.clip(p_arr, eps, 1.0 - eps)
    return -(y_arr * np.log(clipped) + (1.0 - y_arr) * np.log1p(-clipped))


def _as_times(ts_ns: Any) -> np.ndarray:
    ts = np.asarray(ts_ns)
    if ts.ndim != 1:
        raise ValueError(f"ts_ns must be one-dimensional, got shape {ts.shape}")
    if ts.size and ts.dtype.kind not in "iu":
        raise ValueError(f"ts_ns must be integer nanoseconds, got dtype {ts.dtype}")
    ts = ts.astype(np.int64, copy=False)
    # Every lag, block and bucket below assumes time order; a shuffled input would silently give
    # the wrong HAC variance rather than an error.
    if ts.size > 1 and np.any(np.diff(ts) < 0):
        raise ValueError("ts_ns must be in time order (non-decreasing)")
    return ts


def _fills_per_horizon(ts: np.ndarray, horizon_ns: float) -> int:
    span = max(int(ts[-1] - ts[0]), 1)
    return math.ceil(len(ts) * float(horizon_ns) / span)


def overlap_lags(ts_ns: Any, horizon_ns: float) -> int:
    """HAC lags covering the fills whose outcome windows overlap:
    ``max(ceil(n * horizon / span), ceil(n ** (1/3)))``, 0 for fewer than two fills.

    Same rule as ``report._overlap_lags``, except that the cube root is taken exactly in
    integers (n = 27 gives 3, where the float ``27 ** (1/3)`` rounds up to 4).
    """
    ts = _as_times(ts_ns)
    if not horizon_ns >= 0:
        raise ValueError(f"horizon_ns must be >= 0, got {horizon_ns!r}")
    if len(ts) < 2:
        return 0
    return int(max(_fills_per_horizon(ts, horizon_ns), _ceil_cube_root(len(ts))))


# --------------------------------------------------------------------------------------------
# Diebold-Mariano
# --------------------------------------------------------------------------------------------


def diebold_mariano(loss_a: Any, loss_b: Any, *, lags: int, horizon: int = 1) -> DMResult:
    """Diebold-Mariano test on ``d = loss_a - loss_b`` with a Newey-West HAC variance and the
    Harvey-Leybourne-Newbold small-sample correction (METHODS.md 3.1).

    ``DM = mean(d) / sqrt(LRV / n)`` with ``LRV = scoring.newey_west_variance(d, lags)``: Bartlett
    weights ``1 - k/(lags+1)``, autocovariances divided by n (not n - k) and no n/(n-1) degrees-of-
    freedom factor.  That is exactly the variance of ``statsmodels.tsa.stattools.
    diebold_mariano_test`` (the t-value of an OLS on a constant with ``cov_type='HAC'``), so
    ``statistic`` equals its ``harvey_adj=False`` statistic and ``hln_statistic``/``p_value`` its
    ``harvey_adj=True`` ones.  Two differences: ``lags`` has no default here (statsmodels uses
    ``max(horizon - 1, ceil(n ** (1/3)))``; pass ``overlap_lags(...)`` for fills), and ``p_value``
    is always the HLN Student-t one, with the normal one kept in ``p_value_normal``.

    ``horizon`` is the forecast horizon h in observations, used only by the HLN factor
    ``sqrt((n + 1 - 2h + h(h-1)/n) / n)``.
    """
    a, b = _as_1d("loss_a", loss_a), _as_1d("loss_b", loss_b)
    n = _check_same_length(loss_a=a, loss_b=b)
    if isinstance(lags, bool) or int(lags) != lags or lags < 0:
        raise ValueError(f"lags must be a non-negative integer, got {lags!r}")
    if isinstance(horizon, bool) or int(horizon) != horizon or horizon < 1:
        raise ValueError(f"horizon must be a positive integer, got {horizon!r}")
    lags, horizon = int(lags), int(horizon)
    if n < 2:
        mean = float(np.mean(a - b)) if n else _NAN
        return DMResult(n, mean, _NAN, _NAN, _NAN, _NAN, lags, horizon)
    if horizon > n:
        raise ValueError(f"horizon ({horizon}) cannot exceed the number of observations ({n})")

    d = a - b
    mean = float(d.mean())
    # A differential constant up to rounding (spread below 1e-12 of its size; real per-fill loss
    # gaps are many orders larger) has no sampling variance: dividing by it would report a
    # statistic of 1e16.  Zero means the forecasts lose exactly the same on every fill, "no
    # difference" with certainty; a non-zero constant leaves the statistic undefined.
    if np.ptp(d) <= 1e-12 * max(1.0, float(np.max(np.abs(d)))):
        if abs(mean) <= 1e-12:
            return DMResult(n, mean, 0.0, 0.0, 1.0, 1.0, lags, horizon)
        return DMResult(n, mean, _NAN, _NAN, _NAN, _NAN, lags, horizon)
    lrv = newey_west_variance(d, lags)

    statistic = mean / math.sqrt(lrv / n)
    hln_factor = math.sqrt((n + 1 - 2 * horizon + horizon * (horizon - 1) / n) / n)
    hln_statistic = hln_factor * statistic
    return DMResult(
        n=n,
        mean_diff=mean,
        statistic=statistic,
        hln_statistic=hln_statistic,
        p_value=float(2.0 * stats.t.sf(abs(hln_statistic), df=n - 1)),
        p_value_normal=float(2.0 * stats.norm.sf(abs(statistic))),
        lags=lags,
        horizon=horizon,
    )


# --------------------------------------------------------------------------------------------
# Paired stationary bootstrap
# --------------------------------------------------------------------------------------------


def _optimal_block_size(d: np.ndarray) -> float:
    """Politis-White (2004, corrected by Patton-Politis-White 2009) mean block length for the
    stationary bootstrap of ``d``, at least 1 (1 is the i.i.d. bootstrap)."""
    # A constant series has no dependence to preserve, and arch divides by its zero variance.
    if len(d) < 10 or np.ptp(d) == 0.0:
        return 1.0
    from arch.bootstrap import optimal_block_length

    b_sb = float(optimal_block_length(d).iloc[0]["stationary"])
    return max(1.0, b_sb) if math.isfinite(b_sb) else 1.0


class _TopShare:
    """capture@q of one forecast on a resample of the fills, given the resample's indices.

    Fills are ranked once by forecast (most toxic first, ties in fill order, as ``capture_at``
    does); a resample is then a count of copies per rank, and its top ``n_top`` fills are the
    first ranks until the counts add up.  Equal to ``capture_at`` on the resampled arrays except
    for how two *different* fills with exactly equal forecasts straddling the cut are ordered.
    """

    def __init__(self, p: np.ndarray, weight: np.ndarray, n_top: int):
        order = np.argsort(-p, kind="stable")
        self.rank = np.empty(len(p), dtype=np.intp)
        self.rank[order] = np.arange(len(p))
        self.weight_by_rank = weight[order]
        self.n_top = n_top

    def __call__(self, idx: np.ndarray) -> float:
        copies = np.bincount(self.rank[idx], minlength=len(self.rank))
        total = float(copies @ self.weight_by_rank)
        if total == 0.0:
            return _NAN
        cumulative = np.cumsum(copies)
        cut = int(np.searchsorted(cumulative, self.n_top))  # first rank reaching n_top fills
        taken_before = int(cumulative[cut - 1]) if cut else 0
        top = float(copies[:cut] @ self.weight_by_rank[:cut])
        top += (self.n_top - taken_before) * float(self.weight_by_rank[cut])
        return top / total


def _percentile_ci(replicates: np.ndarray) -> tuple[float, float]:
    finite = replicates[np.isfinite(replicates)]
    if finite.size == 0:
        return (_NAN, _NAN)
    low, high = np.percentile(finite, [2.5, 97.5])
    return (float(low), float(high))


def paired_bootstrap(
    p_a: Any,
    p_b: Any,
    y: Any,
    cost_bps: Any,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    q: float = 0.10,
    block_size: float | None = None,
) -> BootstrapResult:
    """Paired stationary bootstrap (Politis & Romano 1994) of the Brier and capture@q differences.

    Each replicate draws one set of fill indices (geometric blocks with mean ``block_size``,
    wrapping around the end) and scores A and B on that same set, so the interval reflects only
    the sampling noise of the *difference*.  ``block_size`` defaults to the Politis-White optimal
    stationary-bootstrap length of the per-fill Brier differential (``arch.bootstrap.
    optimal_block_length``), floored at 1.  Intervals are percentile 95 %; a replicate whose
    capture is undefined (no positive cost among its fills) is left out of the capture interval.
    Deterministic for a given ``seed`` and arch version.
    """
    pa_arr, pb_arr = _as_probability("p_a", p_a), _as_probability("p_b", p_b)
    y_arr, cost_arr = _as_binary("y", y), _as_1d("cost_bps", cost_bps)
    n = _check_same_length(p_a=pa_arr, p_b=pb_arr, y=y_arr, cost_bps=cost_arr)
    q = _check_q(q)
    if isinstance(n_boot, bool) or int(n_boot) != n_boot or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    n_boot = int(n_boot)
    if block_size is not None and not block_size >= 1.0:
        raise ValueError(f"block_size must be >= 1 fill, got {block_size!r}")

    d = brier_losses(pa_arr, y_arr) - brier_losses(pb_arr, y_arr)
    if n == 0:
        return BootstrapResult(_NAN, (_NAN, _NAN), _NAN, (_NAN, _NAN), _NAN, n_boot)
    block = float(block_size) if block_size is not None else _optimal_block_size(d)

    brier_diff = brier(pa_arr, y_arr) - brier(pb_arr, y_arr)

    capture_a, capture_b = capture_at(pa_arr, cost_arr, q), capture_at(pb_arr, cost_arr, q)
    capture_diff = capture_b.capture - capture_a.capture
    # Same definition as capture_at (positive cost only; a resample has n fills, so the same n_top),
    # counted by rank instead of re-sorting every replicate: O(n) rather than O(n log n) per draw.
    weight = np.maximum(cost_arr, 0.0)
    top_share_a = _TopShare(pa_arr, weight, capture_a.n_top)
    top_share_b = _TopShare(pb_arr, weight, capture_b.n_top)

    from arch.bootstrap import StationaryBootstrap

    resampler = StationaryBootstrap(block, np.arange(n), seed=np.random.default_rng(seed))
    brier_reps = np.empty(n_boot)
    capture_reps = np.empty(n_boot)
    for i, ((idx,), _) in enumerate(resampler.bootstrap(n_boot)):
        brier_reps[i] = d[idx].mean()
        capture_reps[i] = top_share_b(idx) - top_share_a(idx)

    return BootstrapResult(
        brier_diff=float(brier_diff),
        brier_ci=_percentile_ci(brier_reps),
        capture_diff=float(capture_diff),
        capture_ci=_percentile_ci(capture_reps),
        block_size=block,
        n_boot=n_boot,
    )


# --------------------------------------------------------------------------------------------
# Sequential monitoring
# --------------------------------------------------------------------------------------------


def bucket_means(d: Any, ts_ns: Any, bucket_ns: float) -> np.ndarray:
    """Mean of ``d`` per wall-clock bucket (``ts_ns // bucket_ns``, so buckets are aligned to the
    epoch and a bucket is the same minute whichever fills are present), in time order, empty
    buckets skipped."""
    d_arr, ts = _as_1d("d", d), _as_times(ts_ns)
    _check_same_length(d=d_arr, ts_ns=ts)
    if not bucket_ns >= 1:
        raise ValueError(f"bucket_ns must be at least 1 ns, got {bucket_ns!r}")
    if d_arr.size == 0:
        return np.zeros(0)
    bucket_ids = ts // int(bucket_ns)
    starts = np.flatnonzero(np.r_[True, bucket_ids[1:] != bucket_ids[:-1]])
    counts = np.diff(np.r_[starts, d_arr.size])
    return np.add.reduceat(d_arr, starts) / counts


class SequentialTest:
    """Mixture SPRT (Robbins 1970; Johari, Pekelis & Walsh 2022) on a stream of bucket means of d,
    with an always-valid p-value: stop whenever you like, the type-I error stays at most alpha.

    With the bucket means treated as i.i.d. N(theta, sigma^2), H0: theta = ``theta0`` and the
    mixing prior theta ~ N(theta0, tau^2), after n buckets with mean m::

        Lambda_n = sqrt(sigma^2 / (sigma^2 + n tau^2))
                   * exp(n^2 tau^2 (m - theta0)^2 / (2 sigma^2 (sigma^2 + n tau^2)))

    (n tau^2, not a fixed tau^2: only this form is a martingale under H0) and
    ``p_value = min over the stream of 1 / Lambda_n``, starting at 1.

    ``tau`` is in the units of d (for Brier differentials, Brier points): the size of effect the
    test is tuned to find fastest; the default 2e-4 is the smallest Brier improvement worth
    acting on.  ``sigma2`` is the variance of one bucket mean; when it is None the first
    ``burn_in`` bucket means estimate it (sample variance) and are then *not* used by the test,
    so the estimate is independent of the evidence it scales.  ``n`` counts only the buckets the
    test has used.

    An estimated sigma^2 is only approximately safe: one that comes out low inflates Lambda.  On
    simulated H0 streams of 300 N(0, 1) buckets looked at after every bucket, with tau from 0.2 to
    1 sigma, the rate of ever rejecting at 5 % was 3.9-4.5 % with the default 30-bucket burn-in,
    2-3 % with sigma^2 known and about 10 % with a 10-bucket burn-in.  Buckets holding very
    different numbers of fills have different variances, which the i.i.d. model ignores.
    """

    def __init__(
        self,
        tau: float = DEFAULT_TAU,
        *,
        sigma2: float | None = None,
        burn_in: int = DEFAULT_BURN_IN,
        theta0: float = 0.0,
    ):
        if not tau > 0 or not math.isfinite(tau):
            raise ValueError(f"tau must be a positive number, got {tau!r}")
        if sigma2 is not None and (not sigma2 >= 0 or not math.isfinite(sigma2)):
            raise ValueError(f"sigma2 must be a non-negative number, got {sigma2!r}")
        if sigma2 is None and (isinstance(burn_in, bool) or int(burn_in) != burn_in or burn_in < 2):
            raise ValueError(f"burn_in must be an integer >= 2 to estimate sigma2, got {burn_in!r}")
        self.tau = float(tau)
        self.theta0 = float(theta0)
        self.burn_in = 0 if sigma2 is not None else int(burn_in)
        self._sigma2 = None if sigma2 is None else float(sigma2)
        self._burn_in_values: list[float] = []
        self._n = 0
        self._sum = 0.0
        self._log_lambda = 0.0
        self._p_value = 1.0

    @property
    def n(self) -> int:
        """Bucket means the test has used (burn-in excluded)."""
        return self._n

    @property
    def sigma2(self) -> float | None:
        """Variance of one bucket mean: given, or estimated once burn-in ends (None before)."""
        return self._sigma2

    @property
    def p_value(self) -> float:
        """Always-valid p-value: the running minimum of 1 / Lambda_n, 1 before any evidence."""
        return self._p_value

    @property
    def log_lambda(self) -> float:
        """log Lambda_n for the current n (0 before the test starts)."""
        return self._log_lambda

    def rejected(self, alpha: float = 0.05) -> bool:
        """Whether H0 has been rejected at level ``alpha`` at any point so far."""
        return self._p_value <= alpha

    def update(self, bucket_mean: float) -> float:
        """Feed the next bucket mean of d, in time order; returns the updated p-value."""
        x = float(bucket_mean)
        if not math.isfinite(x):
            raise ValueError(f"bucket_mean must be finite, got {bucket_mean!r}")
        if self._sigma2 is None:
            self._burn_in_values.append(x)
            if len(self._burn_in_values) == self.burn_in:
                self._sigma2 = float(np.var(self._burn_in_values, ddof=1))
            return self._p_value
        self._n += 1
        self._sum += x
        if self._sigma2 == 0.0:
            # A burn-in with no spread at all (e.g. identical forecasters) gives no scale to judge
            # a deviation by: report no evidence rather than an infinite one.
            return self._p_value
        n, s2, t2 = self._n, self._sigma2, self.tau**2
        shift = self._sum / n - self.theta0
        self._log_lambda = 0.5 * math.log(s2 / (s2 + n * t2)) + (n * n * t2 * shift * shift) / (
            2.0 * s2 * (s2 + n * t2)
        )
        self._p_value = min(self._p_value, math.exp(-self._log_lambda))
        return self._p_value

    def state(self) -> dict[str, Any]:
        """The test's state as a JSON-ready dict."""
        return _json_ready({
            "n": self._n,
            "n_burn_in": self.burn_in,
            "burn_in_done": self._sigma2 is not None,
            "sigma2": self._sigma2,
            "tau": self.tau,
            "theta0": self.theta0,
            "mean": self._sum / self._n if self._n else None,
            "log_lambda": self._log_lambda,
            "p_value": self._p_value,
        })


# --------------------------------------------------------------------------------------------
# One-call comparison
# --------------------------------------------------------------------------------------------


def _json_ready(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _json_ready(v) for key, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _format_number(x: float) -> str:
    return f"{x:.3g}" if math.isfinite(x) else "n/a"


def _format_p(p: float) -> str:
    if not math.isfinite(p):
        return "n/a"
    if p == 0.0:
        return "< 1e-300"
    return f"{p:.1e}" if p < 1e-3 else f"{p:.3f}"


def _verdict(
    dm: DMResult, boot: BootstrapResult, n: int, alpha: float, names: tuple[str, str]
) -> dict[str, Any]:
    """B (A) is better when DM on Brier rejects at ``alpha`` two-sided with d > 0 (d < 0) AND the
    bootstrap 95 % CI of Brier(A) - Brier(B) lies entirely above (below) 0."""
    name_a, name_b = names
    diff, (low, high) = boot.brier_diff, boot.brier_ci
    dm_rejects = math.isfinite(dm.p_value) and dm.p_value < alpha
    better = None
    if dm_rejects and dm.mean_diff > 0 and low > 0:
        better, gain, ci = name_b, diff, (low, high)
    elif dm_rejects and dm.mean_diff < 0 and high < 0:
        better, gain, ci = name_a, -diff, (-high, -low)
    if better is None:
        text = (
            f"no detectable difference in Brier between {name_a} and {name_b} on {n:,} fills "
            f"(ΔBrier = {_format_number(diff)}, 95% CI [{_format_number(low)}, {_format_number(high)}], "
            f"p = {_format_p(dm.p_value)})"
        )
    else:
        text = (
            f"{better} is better: Brier lower by {_format_number(gain)} "
            f"(95% CI [{_format_number(ci[0])}, {_format_number(ci[1])}]), "
            f"DM p = {_format_p(dm.p_value)}, on {n:,} fills"
        )
    return {
        "better": better,
        "text": text,
        "alpha": alpha,
        "dm_rejects": dm_rejects,
        "ci_excludes_zero": bool(low > 0 or high < 0),
        "rule": f"better when the Brier DM test (HLN, two-sided) rejects at alpha and the bootstrap "
        f"95% CI of Brier({name_a}) - Brier({name_b}) excludes 0 on the same side; ΔBrier > 0 favours {name_b}",
    }


def compare(
    p_a: Any,
    p_b: Any,
    y: Any,
    cost_bps: Any,
    ts_ns: Any,
    *,
    horizon_ns: float,
    q: float = 0.10,
    n_boot: int = 1000,
    seed: int = 0,
    bucket_ns: float = 60e9,
    alpha: float = 0.05,
    scored: Any = None,
    names: tuple[str, str] = ("A", "B"),
    tau: float = DEFAULT_TAU,
) -> dict[str, Any]:
    """Compare incumbent A with candidate B on the same fills, as a JSON-ready dict.

    ``scored`` (optional boolean mask) keeps the fills that pass both arms' confidence filters;
    everything is computed on those, and ``coverage`` is their share of all fills given.
    ``names`` label A and B in the verdict.

    - ``brier`` and ``log_loss``: each arm's mean loss, ``diff = A - B`` and the fields of a
      Diebold-Mariano test (``statistic``, ``hln_statistic``, ``p_value`` (HLN, t_{n-1}),
      ``p_value_normal``, ``lags``, ``horizon``) with ``lags = overlap_lags(ts, horizon_ns)`` and,
      for the HLN factor, the horizon counted in fills (``ceil(n * horizon / span)``): a fill's
      outcome is known that many fills later, the analogue of an h-step-ahead forecast.
    - ``bootstrap``: ``paired_bootstrap`` of the Brier and capture@q differences.
    - ``sequential``: the mSPRT (``SequentialTest(tau)``, default burn-in) run over the
      ``bucket_ns`` bucket means of the Brier differential, as live monitoring would have seen it.
    - ``verdict``: ``better`` is B's (or A's) name when the Brier DM test rejects at ``alpha``
      two-sided AND the bootstrap 95 % CI of Brier(A) - Brier(B) excludes 0 on the same side,
      else None; ``text`` says it in one line.  Requiring both keeps a verdict from resting on
      one variance estimate (HAC with a chosen lag, or the block bootstrap) alone.
    """
    if len(names) != 2 or names[0] == names[1]:
        raise ValueError(f"names must be two different labels for A and B, got {names!r}")
    pa_arr, pb_arr = _as_probability("p_a", p_a), _as_probability("p_b", p_b)
    y_arr, cost_arr, ts = _as_binary("y", y), _as_1d("cost_bps", cost_bps), _as_times(ts_ns)
    n_total = _check_same_length(p_a=pa_arr, p_b=pb_arr, y=y_arr, cost_bps=cost_arr, ts_ns=ts)
    if scored is None:
        keep = np.ones(n_total, dtype=bool)
    else:
        keep = np.asarray(scored)
        if keep.dtype != bool or keep.shape != (n_total,):
            raise ValueError(f"scored must be a boolean mask of length {n_total}")
    pa_arr, pb_arr, y_arr, cost_arr, ts = pa_arr[keep], pb_arr[keep], y_arr[keep], cost_arr[keep], ts[keep]
    n = len(ts)

    lags = overlap_lags(ts, horizon_ns)
    horizon_fills = min(max(1, _fills_per_horizon(ts, horizon_ns)), n) if n >= 2 else 1
    brier_a, brier_b = brier_losses(pa_arr, y_arr), brier_losses(pb_arr, y_arr)
    log_a, log_b = log_losses(pa_arr, y_arr), log_losses(pb_arr, y_arr)
    dm_brier = diebold_mariano(brier_a, brier_b, lags=lags, horizon=horizon_fills)
    dm_log = diebold_mariano(log_a, log_b, lags=lags, horizon=horizon_fills)

    boot = paired_bootstrap(pa_arr, pb_arr, y_arr, cost_arr, n_boot=n_boot, seed=seed, q=q)

    sequential = SequentialTest(tau)
    for bucket_mean in bucket_means(brier_a - brier_b, ts, bucket_ns):
        sequential.update(bucket_mean)

    def dm_fields(dm: DMResult) -> dict[str, Any]:
        fields = asdict(dm)
        del fields["n"], fields["mean_diff"]  # n is top-level, mean_diff is "diff"
        return fields

    capture_a, capture_b = capture_at(pa_arr, cost_arr, q).capture, capture_at(pb_arr, cost_arr, q).capture
    return _json_ready({
        "n": n,
        "n_total": n_total,
        "coverage": n / n_total if n_total else None,
        "horizon_ns": horizon_ns,
        "brier": {
            "a": brier(pa_arr, y_arr),
            "b": brier(pb_arr, y_arr),
            "diff": dm_brier.mean_diff,
            **dm_fields(dm_brier),
        },
        "log_loss": {
            "a": log_loss(pa_arr, y_arr),
            "b": log_loss(pb_arr, y_arr),
            "diff": dm_log.mean_diff,
            **dm_fields(dm_log),
        },
        "bootstrap": {
            "brier_diff": boot.brier_diff,
            "brier_ci": boot.brier_ci,
            "capture_a": capture_a,
            "capture_b": capture_b,
            "capture_diff": boot.capture_diff,
            "capture_ci": boot.capture_ci,
            "q": q,
            "block_size": boot.block_size,
            "n_boot": boot.n_boot,
            "seed": seed,
        },
        "sequential": {**sequential.state(), "bucket_ns": bucket_ns, "alpha": alpha,
                       "rejected": sequential.rejected(alpha)},
        "verdict": _verdict(dm_brier, boot, n, alpha, (str(names[0]), str(names[1]))),
    })
