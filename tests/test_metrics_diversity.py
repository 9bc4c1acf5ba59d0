"""Token entropy, strategy diversity, Vendi, pass@k and the statistics helpers."""

import itertools
import math
from math import comb

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sst

from searchgym.metrics import (
    answer_diversity,
    distinct_n,
    entropy_from_logits,
    fit_entropy_law,
    mean_ci,
    mean_pass_at_k,
    miller_madow_entropy,
    normalize_to_first,
    normalized_entropy,
    pass_at_k,
    plugin_entropy,
    query_diversity,
    signature_diversity,
    spearman_ci,
    strategy_coverage,
    strategy_diversity,
    token_entropy_stats,
    vendi_from_embeddings,
    vendi_score,
)

torch.set_num_threads(1)


# ---- token entropy ------------------------------------------------------------------------
def test_entropy_from_logits():
    z = torch.randn(3, 5, 11, generator=torch.Generator().manual_seed(0))
    p = torch.softmax(z / 0.7, -1)
    ref = -(p * p.log()).sum(-1)
    torch.testing.assert_close(entropy_from_logits(z, temperature=0.7), ref)
    assert entropy_from_logits(torch.zeros(4, 50)).allclose(torch.full((4,), math.log(50)))
    assert entropy_from_logits(torch.zeros(2, 8, dtype=torch.bfloat16)).dtype == torch.float32


def test_token_entropy_stats_mask_top_and_segments():
    h = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 9.0, 9.0])
    mask = np.array([1] * 10 + [0, 0])  # the two 9.0 are tool tokens
    segs = ["think"] * 4 + ["query"] * 3 + ["answer"] * 3 + ["other"] * 2
    out = token_entropy_stats(h, mask, segs)
    assert out["entropy"] == pytest.approx(0.55)
    tau = np.quantile(h[:10], 0.8)
    assert out["entropy_top_threshold"] == pytest.approx(tau)
    assert out["entropy_top"] == pytest.approx(h[:10][h[:10] >= tau].mean())
    assert out["entropy_think"] == pytest.approx(0.25)
    assert out["entropy_query"] == pytest.approx(0.6)
    assert out["entropy_answer"] == pytest.approx(0.9)
    assert "entropy_other" not in out  # its tokens are all masked out
    assert out["num_tokens"] == 10
    assert math.isnan(token_entropy_stats([1.0], [0])["entropy"])
    with pytest.raises(ValueError, match="segment label"):
        token_entropy_stats([1.0, 2.0], None, ["think", "tool"])


# ---- signature entropy ----------------------------------------------------------------------
def test_signature_entropy_known_distributions():
    assert plugin_entropy("aabb") == pytest.approx(math.log(2))
    assert plugin_entropy("aaab") == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    assert plugin_entropy("aaaa") == 0.0
    assert miller_madow_entropy("aabb") == pytest.approx(math.log(2) + 1 / 8)
    assert miller_madow_entropy("abcdef") == pytest.approx(math.log(6) + 5 / 12)
    assert normalized_entropy("aabb") == pytest.approx(1.0)  # observed support 2
    assert normalized_entropy("aabb", support_size=4) == pytest.approx(math.log(2) / math.log(4))
    assert normalized_entropy("aaaaaaab", support_size=3) == pytest.approx(plugin_entropy("aaaaaaab") / math.log(3))
    assert normalized_entropy("ab", support_size=10) == pytest.approx(1.0)  # min(n=2, |S|=10) = 2
    assert normalized_entropy("aaaa") == 0.0
    d = signature_diversity(["s1", "s1", "s2", "s3"], support_size=3)
    assert d["distinct"] == 3 and d["n"] == 4
    assert d["entropy_norm"] == pytest.approx(plugin_entropy([1, 1, 2, 3]) / math.log(3))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 5), min_size=1, max_size=30), st.integers(1, 8))
def test_normalized_entropy_in_unit_interval(labels, s):
    v = normalized_entropy(labels, s)
    assert -1e-12 <= v <= 1 + 1e-12
    assert miller_madow_entropy(labels) >= plugin_entropy(labels)


# ---- strategy diversity over matched trajectories ------------------------------------------
def policy_samples(n, success, mixture):
    """n samples of a policy whose successes use the strategies in ``mixture`` (cycled) and
    whose failures match no strategy (None), as an unmatched trajectory is labelled."""
    ok = round(n * success)
    strategies = [mixture[i % len(mixture)] for i in range(ok)] + [None] * (n - ok)
    return strategies, [True] * ok + [False] * (n - ok)


def test_one_strategy_scores_zero_at_any_success_rate():
    # the confound: counting unmatched as an outcome made this 0.33 vs 0.14
    out = {}
    for success in (0.7, 0.9):
        strats, correct = policy_samples(20, success, ["A"])
        out[success] = strategy_diversity(strats, ["A", "B", "C"], correct)
        assert out[success]["strategy_entropy"] == 0.0 and out[success]["strategy_entropy_plugin"] == 0.0
        assert out[success]["strategy_entropy_correct"] == 0.0 and out[success]["distinct_strategies"] == 1.0
        assert out[success]["strategy_coverage"] == pytest.approx(1 / 3)
    assert out[0.7]["unmatched_rate"] == pytest.approx(0.3) and out[0.9]["unmatched_rate"] == pytest.approx(0.1)
    # the old definition (unmatched as its own outcome) differs between the two: the test can fail
    old = [plugin_entropy([s if s is not None else "<none>" for s in policy_samples(20, x, ["A"])[0]])
           for x in (0.7, 0.9)]
    assert old[0] - old[1] > 0.2


@pytest.mark.parametrize("mixture", [["A", "B"], ["A", "A", "B"]])
def test_same_mixture_scores_the_same_at_70_and_90_percent(mixture):
    s70, ok70 = policy_samples(60, 0.7, mixture)
    s90, ok90 = policy_samples(60, 0.9, mixture)
    a, b = strategy_diversity(s70, ["A", "B"], ok70), strategy_diversity(s90, ["A", "B"], ok90)
    # same mixture: identical plug-in; Miller-Madow differs only by its (m - 1) / 2m correction
    assert a["strategy_entropy_plugin"] == pytest.approx(b["strategy_entropy_plugin"], abs=1e-12)
    assert a["matched"] == 42 and b["matched"] == 54
    assert a["strategy_entropy"] - a["strategy_entropy_plugin"] == pytest.approx(1 / 84)
    assert b["strategy_entropy"] - b["strategy_entropy_plugin"] == pytest.approx(1 / 108)
    # with the same number of matched samples (failures that did match) they are identical
    sa = policy_samples(20, 1.0, mixture)[0]
    c70 = strategy_diversity(sa, ["A", "B"], [True] * 14 + [False] * 6)
    c90 = strategy_diversity(sa, ["A", "B"], [True] * 18 + [False] * 2)
    for key in ("strategy_entropy", "strategy_entropy_plugin", "distinct_strategies", "strategy_coverage",
                "unmatched_rate"):
        assert c70[key] == c90[key]


def test_strategy_diversity_hand_computed():
    d = strategy_diversity(["a", "a", "b", None, "c", None], ["a", "b", "c", "d"],
                           [True, False, True, True, False, False])
    h = plugin_entropy("aabc")
    assert d["matched"] == 4 and d["unmatched_rate"] == pytest.approx(2 / 6)
    assert d["strategy_entropy_plugin"] == pytest.approx(h)
    assert d["strategy_entropy"] == pytest.approx(h + 2 / 8)  # Miller-Madow, m = 3 observed, n = 4
    assert d["strategy_entropy_norm"] == pytest.approx(h / math.log(4))
    assert d["distinct_strategies"] == 3 and d["strategy_coverage"] == 0.75
    # matched and correct: a, b
    assert d["matched_correct"] == 2 and d["distinct_strategies_correct"] == 2
    assert d["strategy_entropy_plugin_correct"] == pytest.approx(math.log(2))
    assert d["strategy_entropy_correct"] == pytest.approx(math.log(2) + 1 / 4)
    assert d["strategy_coverage_correct"] == 0.5
    # fewer than 2 matched: entropies undefined, distinct/coverage still defined
    one = strategy_diversity(["a", None, None], ["a", "b"])
    assert math.isnan(one["strategy_entropy"]) and math.isnan(one["strategy_entropy_plugin"])
    assert one["distinct_strategies"] == 1 and one["strategy_coverage"] == 0.5
    assert "strategy_entropy_correct" not in one  # no correctness given
    none = strategy_diversity([None, None], None)
    assert none["matched"] == 0 and none["unmatched_rate"] == 1.0
    assert math.isnan(none["distinct_strategies"]) and math.isnan(none["strategy_coverage"])
    assert math.isnan(strategy_diversity([])["unmatched_rate"])
    with pytest.raises(ValueError, match="correctness"):
        strategy_diversity(["a"], None, [True, False])


def test_coverage_queries_answers():
    assert strategy_coverage(["a", None, "a", "c"], ["a", "b", "c", "d"]) == 0.5
    assert math.isnan(strategy_coverage(["a"], []))
    assert distinct_n(["who is x", "who is y"], 1) == pytest.approx(4 / 6)
    assert distinct_n(["who is x", "who is y"], 2) == pytest.approx(3 / 4)
    q = query_diversity(["Who is X?", "who is x", "born where"])
    assert q["distinct_queries"] == pytest.approx(2 / 3)
    assert math.isnan(query_diversity([])["distinct_1"])
    # correct answers "Paris" and "the paris" normalise to one; "Lyon" is wrong
    assert answer_diversity(["Paris", "the paris", "Rome", "Lyon"], [True, True, True, False]) == 0.5


# ---- Vendi ---------------------------------------------------------------------------------
def test_vendi_identical_and_orthogonal():
    v = np.array([[1.0, 2.0, 3.0]])
    assert vendi_from_embeddings(np.repeat(v, 5, 0)) == pytest.approx(1.0)
    assert vendi_from_embeddings(np.eye(6, 10) * 3.0) == pytest.approx(6.0)


def test_vendi_matches_kernel_definition():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((7, 4))
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    lam = np.linalg.eigvalsh(xn @ xn.T / 7)
    lam = lam[lam > 1e-12]
    assert vendi_from_embeddings(x) == pytest.approx(np.exp(-(lam * np.log(lam)).sum()), rel=1e-9)
    assert vendi_from_embeddings(x, q=2) == pytest.approx(1 / (lam**2).sum(), rel=1e-9)


def test_vendi_score_with_pluggable_embedder():
    vocab = {"alpha": 0, "beta": 1, "gamma": 2}

    def one_hot(texts):
        e = np.zeros((len(texts), 3))
        for i, t in enumerate(texts):
            e[i, vocab[t]] = 1.0
        return e

    assert vendi_score(["alpha", "alpha", "beta", "gamma"], one_hot) == pytest.approx(
        math.exp(plugin_entropy("aabc"))
    )


@pytest.mark.slow
def test_vendi_minilm_real_model():
    from searchgym.metrics import MiniLMEmbedder

    emb = MiniLMEmbedder()
    same = vendi_score(["search for the capital of France"] * 4, emb)
    diff = vendi_score(
        ["search for the capital of France", "the boiling point of water", "who painted the Mona Lisa", "GDP of Peru"],
        emb,
    )
    assert same == pytest.approx(1.0, abs=1e-4)
    assert 2.0 < diff <= 4.0


@pytest.mark.slow
def test_minilm_bf16_autocast_stays_within_its_stated_bound_of_fp32():
    """The evaluation's bf16 embedder against the fp32 reference on real, transcript-length
    text (the sample corpus' documents, 6 at a time): rows unit norm, cosine >= 0.9999 per
    row, group-of-8 Vendi within 0.02 (the docstring's measured figures are 0.99995 / 0.010)."""
    import json
    from pathlib import Path

    from searchgym.metrics import MiniLMEmbedder

    docs = [json.loads(line)["contents"] for line in
            (Path(__file__).parents[1] / "retrieval" / "data" / "sample_corpus.jsonl").read_text().splitlines()]
    rng = np.random.default_rng(0)
    texts = [" ".join(docs[j] for j in rng.choice(len(docs), 6, replace=False)) for _ in range(64)]
    ref, fast = MiniLMEmbedder(), MiniLMEmbedder(precision="bf16")
    a, b = ref(texts), fast(texts)
    assert a.shape == b.shape == (64, 384) and b.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)
    assert float((a * b).sum(1).min()) >= 0.9999
    va = [vendi_from_embeddings(a[i:i + 8].astype(np.float64)) for i in range(0, 64, 8)]
    vb = [vendi_from_embeddings(b[i:i + 8].astype(np.float64)) for i in range(0, 64, 8)]
    assert np.max(np.abs(np.subtract(va, vb))) <= 0.02
    assert fast([]).shape == (0, 384)
    with pytest.raises(ValueError, match="precision"):
        MiniLMEmbedder(precision="fp16")


# ---- pass@k --------------------------------------------------------------------------------
def exact_pass_at_k(n, c, k):
    items = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(items[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", range(1, 8))
def test_pass_at_k_exact_combinatorics(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(exact_pass_at_k(n, c, k), abs=1e-12)
            assert pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k), abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 64), st.data())
def test_pass_at_k_monotone(n, data):
    c = data.draw(st.integers(0, n))
    vals = [pass_at_k(n, c, k) for k in range(1, n + 1)]
    assert all(b >= a - 1e-12 for a, b in zip(vals, vals[1:]))
    assert vals[0] == pytest.approx(c / n)
    if c < n:
        assert pass_at_k(n, c + 1, 1) >= vals[0]


def test_pass_at_k_errors_and_mean():
    with pytest.raises(ValueError, match="undefined"):
        pass_at_k(3, 1, 4)
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)
    m, used = mean_pass_at_k({"q1": [True, False, False, False], "q2": [False] * 4, "q3": [True]}, 4)
    assert used == 2 and m == pytest.approx(0.5)


# ---- law fit and statistics ----------------------------------------------------------------
def test_law_fit_recovers_parameters():
    rng = np.random.default_rng(0)
    h = np.linspace(0.1, 1.6, 60)
    a, b = 0.25, 1.1
    r = -a * np.exp(h) + b + rng.normal(0, 0.01, h.size)
    fit = fit_entropy_law(h, r)
    assert fit.ok
    assert fit.a == pytest.approx(a, rel=0.05) and fit.b == pytest.approx(b, rel=0.02)
    assert fit.ceiling == pytest.approx(b - a, abs=0.02)
    assert fit.r2 > 0.98
    exact = fit_entropy_law(h, -a * np.exp(h) + b)
    assert exact.a == pytest.approx(a, rel=1e-9) and exact.r2 == pytest.approx(1.0)


def test_law_fit_degenerate_never_raises():
    f = fit_entropy_law([0.5, 0.5, 0.5, 0.5], [0.1, 0.2, 0.3, 0.4])
    assert not f.ok and math.isnan(f.a) and "constant" in f.reason
    f = fit_entropy_law([0.1, 0.2], [0.1, 0.2])
    assert not f.ok and f.n == 2
    f = fit_entropy_law([0.1, np.nan, 0.3, 0.4], [0.5, 0.5, 0.5, 0.5])
    assert f.ok and f.a == pytest.approx(0.0, abs=1e-12) and math.isnan(f.r2)
    assert set(f.to_dict()) == {"a", "b", "r2", "ceiling", "n", "ok", "reason"}


def test_spearman_mean_ci_normalize():
    rng = np.random.default_rng(1)
    x = rng.standard_normal(40)
    y = x + rng.standard_normal(40) * 0.5
    res = spearman_ci(x, y)
    assert res.rho == pytest.approx(sst.spearmanr(x, y).statistic)
    assert res.lo < res.rho < res.hi and res.n == 40
    z, se = math.atanh(res.rho), math.sqrt(1.06 / 37)
    assert res.lo == pytest.approx(math.tanh(z - 1.959964 * se))
    b1, b2 = spearman_ci(x, y, method="bootstrap", n_boot=500), spearman_ci(x, y, method="bootstrap", n_boot=500)
    assert b1 == b2 and b1.lo < res.rho < b1.hi
    assert math.isnan(spearman_ci([1, 2], [3, 4]).rho)
    assert math.isnan(spearman_ci([1, 1, 1, 1], [1, 2, 3, 4]).rho)
    m, lo, hi = mean_ci([1.0, 2.0, 3.0])
    half = sst.t.ppf(0.975, 2) * 1.0 / math.sqrt(3)
    assert (m, lo, hi) == pytest.approx((2.0, 2.0 - half, 2.0 + half))
    assert math.isnan(mean_ci([5.0])[1]) and math.isnan(mean_ci([])[0])
    np.testing.assert_allclose(normalize_to_first([np.nan, 2.0, 1.0, 4.0]), [np.nan, 1.0, 0.5, 2.0])
    assert np.isnan(normalize_to_first([0.0, 1.0])).all()
