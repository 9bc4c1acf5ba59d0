"""Statistics the report needs: the entropy-performance law fit, Spearman correlation with a
95% CI, mean with a t-based 95% CI over seeds, and normalising a series to its first value.
None of these raise on degenerate data: they return NaN and say why."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
from scipy import stats as _st

__all__ = ["LawFit", "fit_entropy_law", "SpearmanResult", "spearman_ci", "mean_ci", "normalize_to_first"]


@dataclass(frozen=True)
class LawFit:
    """R = -a * exp(H) + b fitted by least squares. ``ceiling`` = R(H=0) = -a + b.
    ``ok`` is False (and the numbers NaN) when the fit is undefined; ``reason`` says why."""

    a: float
    b: float
    r2: float
    ceiling: float
    n: int
    ok: bool
    reason: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def _finite_pairs(x: Sequence[float], y: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if x.size != y.size:
        raise ValueError(f"x has {x.size} points but y has {y.size}")
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep]


def fit_entropy_law(entropy: Sequence[float], reward: Sequence[float]) -> LawFit:
    """Fit R = -a exp(H) + b over a run's (H, R) points (arXiv 2505.22617).

    The model is linear in u = exp(H), so this is ordinary least squares of R on u in closed
    form: a = -cov(u, R) / var(u), b = mean(R) + a mean(u), R^2 = 1 - SS_res / SS_tot.
    Non-finite points are dropped. Fewer than 3 points or constant H: not fitted (ok=False).
    Constant R with varying H: a = 0, b = R, R^2 = NaN (nothing to explain).
    """
    h, r = _finite_pairs(entropy, reward)
    n = int(h.size)
    nan = math.nan
    if n < 3:
        return LawFit(nan, nan, nan, nan, n, False, f"need >= 3 finite points, got {n}")
    u = np.exp(h)
    if not np.isfinite(u).all():
        return LawFit(nan, nan, nan, nan, n, False, "exp(H) overflows")
    du = u - u.mean()
    suu = float(du @ du)
    if suu <= 1e-12 * max(1.0, float(u.mean()) ** 2) * n:
        return LawFit(nan, nan, nan, nan, n, False, "entropy is constant")
    slope = float(du @ (r - r.mean())) / suu
    a = -slope
    b = float(r.mean()) - slope * float(u.mean())
    resid = r - (slope * u + b)
    sst = float(((r - r.mean()) ** 2).sum())
    r2 = 1.0 - float(resid @ resid) / sst if sst > 0 else nan
    return LawFit(a, b, r2, -a + b, n, True, "" if sst > 0 else "reward is constant")


@dataclass(frozen=True)
class SpearmanResult:
    rho: float
    lo: float
    hi: float
    p: float
    n: int
    method: str

    def to_dict(self) -> dict:
        return asdict(self)


def spearman_ci(
    x: Sequence[float], y: Sequence[float], *, method: str = "fisher", n_boot: int = 2000, seed: int = 0
) -> SpearmanResult:
    """Spearman rho with a 95% CI and the scipy p-value; non-finite pairs dropped.

    ``method="fisher"``: z = atanh(rho) +- 1.96 * sqrt(1.06 / (n - 3)) (Fieller et al. 1957
    variance for Spearman), needs n >= 4. ``method="bootstrap"``: percentile CI over
    ``n_boot`` resamples of the pairs (seeded). Fewer than 3 points or a constant series: NaN.
    """
    if method not in ("fisher", "bootstrap"):
        raise ValueError(f"method must be 'fisher' or 'bootstrap', got {method!r}")
    a, b = _finite_pairs(x, y)
    n = int(a.size)
    nan = math.nan
    if n < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return SpearmanResult(nan, nan, nan, nan, n, method)
    res = _st.spearmanr(a, b)
    rho, p = float(res.statistic), float(res.pvalue)
    lo = hi = nan
    if method == "fisher":
        if n >= 4:
            if abs(rho) >= 1.0:
                lo = hi = rho
            else:
                z, se = math.atanh(rho), math.sqrt(1.06 / (n - 3))
                lo, hi = math.tanh(z - 1.959964 * se), math.tanh(z + 1.959964 * se)
    else:
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, n, size=(n_boot, n))
        ra = _st.rankdata(a[idx], axis=1)
        rb = _st.rankdata(b[idx], axis=1)
        ra -= ra.mean(axis=1, keepdims=True)
        rb -= rb.mean(axis=1, keepdims=True)
        den = np.sqrt((ra * ra).sum(1) * (rb * rb).sum(1))
        with np.errstate(invalid="ignore", divide="ignore"):
            boots = (ra * rb).sum(1) / den
        boots = boots[np.isfinite(boots)]
        if boots.size:
            lo, hi = (float(v) for v in np.percentile(boots, [2.5, 97.5]))
    return SpearmanResult(rho, lo, hi, p, n, method)


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, lo, hi): t-distribution CI over seeds, non-finite values dropped. One value:
    (v, NaN, NaN); none: all NaN."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return math.nan, math.nan, math.nan
    m = float(v.mean())
    if v.size == 1:
        return m, math.nan, math.nan
    half = float(_st.t.ppf(0.5 + confidence / 2.0, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))
    return m, m - half, m + half


def normalize_to_first(series: Sequence[float]) -> np.ndarray:
    """series / series[first finite value]; all NaN when that value is 0 or there is none."""
    s = np.asarray(series, dtype=np.float64).reshape(-1)
    finite = np.flatnonzero(np.isfinite(s))
    if finite.size == 0 or s[finite[0]] == 0:
        return np.full(s.shape, np.nan)
    return s / s[finite[0]]
