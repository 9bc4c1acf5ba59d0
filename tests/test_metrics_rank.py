"""Effective rank, ERV/ERA and group ER against independent numpy computations."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from searchgym.metrics import (
    effective_rank,
    effective_ranks,
    erv_era,
    erv_era_batch,
    group_effective_rank,
    policy_rows,
    spectral_stats,
    windowed_effective_ranks,
)

torch.set_num_threads(1)


def np_er(h, center=True, rtol=None):
    """Independent reference: float64 numpy SVD, numpy-style relative tolerance."""
    x = np.asarray(h, dtype=np.float64)
    if center:
        x = x - x.mean(0, keepdims=True)
    s = np.linalg.svd(x, compute_uv=False)
    if s.size == 0 or s[0] == 0:
        return 0.0
    tol = (rtol if rtol is not None else max(x.shape) * np.finfo(np.float32).eps) * s[0]
    s = s[s > tol]
    p = s / s.sum()
    return float(np.exp(-np.sum(p * np.log(p))))


def low_rank(rng, T, d, r):
    return (rng.standard_normal((T, r)) @ rng.standard_normal((r, d))).astype(np.float32)


@pytest.mark.parametrize("method", ["gram", "svd", "gram32"])
@pytest.mark.parametrize("T,d,r", [(40, 16, 5), (12, 32, 3), (64, 64, 20), (30, 8, 8)])
def test_er_matches_numpy_on_known_rank(method, T, d, r):
    rng = np.random.default_rng(T * 100 + d + r)
    h = low_rank(rng, T, d, r)
    ref = np_er(h)
    got = effective_rank(h, method=method)
    assert got == pytest.approx(ref, rel=1e-3 if method == "gram32" else 1e-5)
    assert 1.0 <= got <= r + 1e-6
    st_ = spectral_stats([h], method=method)
    assert st_["rank"][0] == r


def test_identity_and_rank_one():
    n = 7
    assert effective_rank(np.eye(n), center=False) == pytest.approx(n, rel=1e-9)
    # centred [I; -I] has n equal singular values: ER = n with centring too
    assert effective_rank(np.vstack([np.eye(n), -np.eye(n)])) == pytest.approx(n, rel=1e-9)
    # centring removes one direction of the identity: ER = n - 1
    assert effective_rank(np.eye(n)) == pytest.approx(n - 1, rel=1e-9)
    rng = np.random.default_rng(0)
    v = rng.standard_normal(16)
    t = rng.standard_normal(50)
    h = np.outer(t, v) + rng.standard_normal(16)  # rank 1 after centring (offset removed)
    for method in ("gram", "svd", "gram32"):
        assert effective_rank(h, method=method) == pytest.approx(1.0, abs=1e-9)


def test_matrix_entropy_variant_and_norm():
    rng = np.random.default_rng(1)
    h = rng.standard_normal((20, 6)) * np.array([5, 3, 2, 1, 0.5, 0.1])
    x = h - h.mean(0)
    s = np.linalg.svd(x, compute_uv=False)
    q = s**2 / (s**2).sum()
    st_ = spectral_stats([h])
    assert st_["er_sq"][0] == pytest.approx(np.exp(-(q * np.log(q)).sum()), rel=1e-6)
    assert st_["matrix_entropy"][0] == pytest.approx(-(q * np.log(q)).sum(), rel=1e-6)
    assert st_["er_norm"][0] == pytest.approx(np_er(h) / 6, rel=1e-6)
    assert st_["er_sq"][0] < st_["er"][0]  # squaring sharpens the distribution


def test_degenerate_inputs():
    out = effective_ranks([np.zeros((0, 4)), np.ones((1, 4)), np.ones((5, 4)), np.full((3, 4), np.nan)])
    assert math.isnan(out[0]) and out[1] == 0.0 and out[2] == 0.0 and math.isnan(out[3])
    with pytest.raises(ValueError, match="2-D"):
        effective_rank(np.zeros(5))
    # fp32 Gram agrees with the fp64 route on a full-rank response-sized matrix
    h = np.random.default_rng(5).standard_normal((150, 64)).astype(np.float32)
    assert effective_rank(h, method="gram32") == pytest.approx(effective_rank(h), rel=2e-3)
    with pytest.raises(ValueError, match="method"):
        effective_rank(np.eye(3), method="qr")


def test_batched_equals_single_mixed_shapes():
    rng = np.random.default_rng(2)
    mats = [rng.standard_normal((T, 24)).astype(np.float32) for T in (3, 17, 24, 25, 60, 130)]
    batched = effective_ranks(mats)
    for m, b in zip(mats, batched):
        assert b == pytest.approx(np_er(m), rel=1e-5)
    # torch input, bf16 included
    tb = effective_ranks([torch.from_numpy(m) for m in mats])
    np.testing.assert_allclose(tb, batched, rtol=1e-6)


def test_policy_rows_masks_tokens():
    h = np.arange(12, dtype=np.float32).reshape(4, 3)
    np.testing.assert_array_equal(policy_rows(h, [1, 0, 1, 0]).numpy(), h[[0, 2]])
    with pytest.raises(ValueError, match="loss_mask"):
        policy_rows(h, [1, 0])


def test_erv_era_hand_computed():
    # rows e_1..e_9: a centred prefix of n distinct basis vectors has n-1 unit singular
    # values, so ER(H[:n]) = n - 1. stride 2 -> prefixes 3,5,7,9 -> ER 2,4,6,8.
    # Delta = 4-2, 6-3, 8-4 = 2,3,4 -> ERV 3; Delta2 = 1,1 -> ERA 1.
    h = np.eye(9, 12)
    assert erv_era(h, stride=2) == pytest.approx((3.0, 1.0), abs=1e-9)
    # max_len keeps the last 5 rows -> prefixes 3,5 -> ER 2,4 -> ERV 2, ERA 0 (no Delta2)
    assert erv_era(h, stride=2, max_len=5) == pytest.approx((2.0, 0.0), abs=1e-9)
    # T < 2*stride+1: no delta -> 0, 0
    assert erv_era(h, stride=5) == (0.0, 0.0)


def brute_erv_era(h, stride, max_len):
    h = h[-max_len:]
    T = h.shape[0]
    ers = [np_er(h[: t + 1]) for t in range(stride, T, stride)]
    d1 = [ers[k] - np.mean(ers[:k]) for k in range(1, len(ers))]
    d2 = [d1[k] - d1[k - 1] for k in range(1, len(d1))]
    return (np.mean(d1) if d1 else 0.0), (np.mean(d2) if d2 else 0.0)


def test_erv_era_batch_matches_bruteforce():
    rng = np.random.default_rng(3)
    mats = [rng.standard_normal((T, 16)).astype(np.float32) * np.linspace(2, 0.1, 16) for T in (15, 41, 77, 120)]
    erv, era = erv_era_batch(mats, stride=10, max_len=100)
    for i, m in enumerate(mats):
        ref = brute_erv_era(m, 10, 100)
        assert erv[i] == pytest.approx(ref[0], abs=1e-5)
        assert era[i] == pytest.approx(ref[1], abs=1e-5)
    assert erv[0] == 0.0 and era[0] == 0.0  # T=15 < 2*10+1


def test_windowed_er_and_group_er():
    rng = np.random.default_rng(4)
    mats = [rng.standard_normal((T, 8)).astype(np.float32) for T in (10, 30, 50)]
    w = windowed_effective_ranks(mats, 20)
    assert math.isnan(w[0])
    assert w[1] == pytest.approx(np_er(mats[1][:20]), rel=1e-5)
    wl = windowed_effective_ranks(mats, 20, where="last")
    assert wl[2] == pytest.approx(np_er(mats[2][-20:]), rel=1e-5)
    pooled = np.stack([m.mean(0) for m in mats])
    assert group_effective_rank(mats) == pytest.approx(np_er(pooled), rel=1e-5)
    assert math.isnan(group_effective_rank(mats[:1]))
    # identical responses: no between-response spread
    assert group_effective_rank([mats[1], mats[1]]) == 0.0


@settings(max_examples=30, deadline=None)
@given(T=st.integers(2, 40), d=st.integers(1, 20), r=st.integers(1, 8), seed=st.integers(0, 10_000))
def test_er_bounds(T, d, r, seed):
    h = low_rank(np.random.default_rng(seed), T, d, r)
    s = spectral_stats([h])
    er, rank = s["er"][0], s["rank"][0]
    if rank == 0:
        assert er == 0.0
    else:
        assert 1.0 - 1e-9 <= er <= rank + 1e-6
        assert rank <= min(r, T - 1, d)
        assert 1.0 - 1e-9 <= s["er_sq"][0] <= er + 1e-6
