"""Effective rank, ERV/ERA and group ER against independent numpy computations."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from searchgym.metrics import (
    aligned_effective_rank,
    aligned_effective_ranks,
    effective_rank,
    effective_ranks,
    erv_era,
    erv_era_batch,
    group_effective_rank,
    group_effective_ranks,
    policy_rows,
    residualize_token_identity,
    spectral_stats,
    window_counts,
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
    # a response shorter than the window is measured on all its rows, not dropped
    assert w[0] == pytest.approx(np_er(mats[0]), rel=1e-5)
    assert math.isnan(windowed_effective_ranks(mats, 20, short="skip")[0])
    assert w[1] == pytest.approx(np_er(mats[1][:20]), rel=1e-5)
    # only T < 2 is left out; short and skipped are counted
    w2 = windowed_effective_ranks([mats[0][:1], mats[0][:2], mats[1]], 20)
    assert math.isnan(w2[0]) and w2[1] == 1.0 and np.isfinite(w2[2])
    assert window_counts([mats[0][:1], mats[0][:2], mats[0], mats[1]], 20) == (2, 1)
    with pytest.raises(ValueError, match="short"):
        windowed_effective_ranks(mats, 20, short="drop")
    wl = windowed_effective_ranks(mats, 20, where="last")
    assert wl[2] == pytest.approx(np_er(mats[2][-20:]), rel=1e-5)
    pooled = np.stack([m.mean(0) for m in mats])
    assert group_effective_rank(mats) == pytest.approx(np_er(pooled), rel=1e-5)
    assert math.isnan(group_effective_rank(mats[:1]))
    # identical responses: no between-response spread
    assert group_effective_rank([mats[1], mats[1]]) == 0.0
    np.testing.assert_allclose(group_effective_ranks([mats, mats[:2], mats[:1]])[:2],
                               [np_er(pooled), np_er(pooled[:2])], rtol=1e-5)
    assert math.isnan(group_effective_ranks([mats[:1]])[0])


@pytest.mark.parametrize("n", [2, 3, 6, 7, 8, 11])
def test_identical_rows_are_the_collapse_floor(n):
    # centring n equal rows leaves a rank-one rounding residue for most n; the convention
    # (module doc) is ER 0, so copies of one sample read exactly the floor
    row = (np.random.default_rng(n).standard_normal(16) * 3.7).astype(np.float32)
    for method in ("gram", "svd", "gram32"):
        assert effective_rank(np.tile(row, (n, 1)), method=method) == 0.0
    resp = np.random.default_rng(0).standard_normal((9, 16)).astype(np.float32)
    copies = [resp] * n
    assert group_effective_rank(copies) == 0.0 and group_effective_ranks([copies])[0] == 0.0
    assert aligned_effective_rank(copies) == (0.0, 9)
    # uncentred, identical rows are rank one
    assert effective_rank(np.tile(row, (n, 1)), center=False) == pytest.approx(1.0)


def test_aligned_er_hand_computed():
    d = 6
    e = np.eye(d, dtype=np.float32)
    # 3 samples; position 0: rows e0, e1, e2 (centred: 2 equal singular values -> ER 2);
    # position 1: e0, e0, e3 (rank 1 -> ER 1); position 2 only in samples 0 and 1: e4, e5
    # (ER 1); position 3 only in sample 0 -> not used (fewer than 2 samples)
    a = np.stack([e[0], e[0], e[4], e[1]])
    b = np.stack([e[1], e[0], e[5]])
    c = np.stack([e[2], e[3]])
    mean, used = aligned_effective_rank([a, b, c])
    assert used == 3 and mean == pytest.approx((2.0 + 1.0 + 1.0) / 3)
    # max_positions bounds the positions; min_samples=3 keeps only positions 0 and 1
    assert aligned_effective_rank([a, b, c], max_positions=1) == pytest.approx((2.0, 1))
    assert aligned_effective_rank([a, b, c], min_samples=3) == pytest.approx((1.5, 2))
    # one sample or empty samples: nothing to compare
    m, u = aligned_effective_ranks([[a], [a, np.zeros((0, d))], []])
    assert np.isnan(m).all() and list(u) == [0, 0, 0]
    # batched over groups == one group at a time == per-position effective_rank
    rng = np.random.default_rng(1)
    groups = [[rng.standard_normal((int(rng.integers(1, 12)), 8)).astype(np.float32) for _ in range(5)]
              for _ in range(4)]
    means, useds = aligned_effective_ranks(groups, max_positions=10)
    for g, mm, uu in zip(groups, means, useds):
        per = [effective_rank(np.stack([x[t] for x in g if len(x) > t]))
               for t in range(10) if sum(len(x) > t for x in g) >= 2]
        assert uu == len(per) and mm == pytest.approx(np.mean(per), rel=1e-5)
        assert aligned_effective_rank(g, max_positions=10) == pytest.approx((mm, uu))
    with pytest.raises(ValueError, match="min_samples"):
        aligned_effective_rank([a, b], min_samples=1)


def test_residualize_token_identity_hand_computed():
    a = np.array([[1.0, 0.0], [3.0, 2.0], [5.0, 5.0]], dtype=np.float32)  # tokens 7, 8, 7
    b = np.array([[0.0, 4.0], [4.0, 4.0]], dtype=np.float32)  # tokens 8, 9
    ra, rb = residualize_token_identity([a, b], [[7, 8, 7], [8, 9]])
    # token 7 mean (3, 2.5); token 8 mean (1.5, 3); token 9 occurs once -> zero row
    np.testing.assert_allclose(ra, [[-2.0, -2.5], [1.5, -1.0], [2.0, 2.5]])
    np.testing.assert_allclose(rb, [[-1.5, 1.0], [0.0, 0.0]])
    assert ra.dtype == np.float32
    # the token-identity part is gone: states that are a function of the token id alone
    emb = np.random.default_rng(0).standard_normal((50, 16))
    ids = [np.random.default_rng(i).integers(0, 50, 30) for i in range(4)]
    r = residualize_token_identity([emb[t] for t in ids], ids)
    assert max(np.abs(x).max() for x in r) < 1e-6
    assert all(v == 0.0 for v in effective_ranks(r))
    # copies stay copies
    r2 = residualize_token_identity([a, a, b], [[7, 8, 7], [7, 8, 7], [8, 9]])
    np.testing.assert_array_equal(r2[0], r2[1])
    with pytest.raises(ValueError, match="token ids"):
        residualize_token_identity([a], [[1, 2]])
    with pytest.raises(ValueError, match="token-id lists"):
        residualize_token_identity([a, b], [[7, 8, 7]])
    assert residualize_token_identity([], []) == []


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
