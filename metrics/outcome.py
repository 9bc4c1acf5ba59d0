"""Outcome metrics: accuracy and the unbiased pass@k estimator (Chen et al. 2021)."""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

__all__ = ["pass_at_k", "mean_pass_at_k"]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one question with ``n`` samples of which ``c`` are correct:
    1 - C(n - c, k) / C(n, k), in the numerically stable product form
    1 - prod_{i = n - c + 1}^{n} (1 - k / i) (1.0 when n - c < k)."""
    if not (isinstance(n, (int, np.integer)) and isinstance(c, (int, np.integer)) and isinstance(k, (int, np.integer))):
        raise ValueError(f"pass_at_k needs integers, got n={n!r}, c={c!r}, k={k!r}")
    if n < 1 or k < 1 or c < 0 or c > n:
        raise ValueError(f"pass_at_k needs n >= 1, k >= 1, 0 <= c <= n; got n={n}, c={c}, k={k}")
    if k > n:
        raise ValueError(f"pass@{k} is undefined with only n={n} samples")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))


def mean_pass_at_k(groups: Mapping[object, Sequence[bool]] | Sequence[Sequence[bool]], k: int) -> tuple[float, int]:
    """Mean pass@k over question groups (each a sequence of correctness flags). Groups with
    fewer than k samples are skipped. Returns (mean, number of groups used); NaN if none."""
    flags = groups.values() if isinstance(groups, Mapping) else groups
    vals = [pass_at_k(len(g), int(sum(bool(x) for x in g)), k) for g in flags if len(g) >= k]
    return (float(np.mean(vals)) if vals else math.nan), len(vals)
