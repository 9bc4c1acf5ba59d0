"""Statistics with the seed as the unit of replication (metrics/stats.py), on synthetic arm
data with known structure: planted and null paired differences, interval coverage over
repeated draws, clipping, one-seed fallback, TOST, rmcorr against published values, the
entropy-law flags, the verdict rules and the MDE formula. All seeded and fast (~5 s)."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
from scipy import stats as sst

from searchgym.metrics import (
    CONTRADICTED,
    INCONCLUSIVE,
    SUPPORTED,
    BootstrapResult,
    change_correlation,
    equivalence_test,
    fit_entropy_law_bootstrap,
    hierarchical_bootstrap,
    mean_ci,
    min_detectable_difference,
    pair_differences,
    paired_difference,
    repeated_measures_correlation,
    verdict,
    verdict_rule,
)

Z_SUM = sst.norm.ppf(0.975) + sst.norm.ppf(0.8)  # 2.8016: MDE multiplier at alpha .05, power .8


def accuracy_arms(rng, *, delta, seeds=3, questions=64, samples=8, seed_sd=0.03, delta_sd=0.02):
    """(start, final): seed -> {question: accuracy over `samples` samples}, the same questions
    for every seed (as in the experiment). Per-question success probability p_q ~ U(0.15,
    0.75) plus a seed effect; the final arm adds delta + a per-seed deviation (sd delta_sd) to
    p. True mean difference = delta (no clipping binds at these sizes)."""
    p_q = rng.uniform(0.15, 0.75, questions)
    start, final = {}, {}
    for s in range(seeds):
        p = p_q + rng.normal(0.0, seed_sd)
        d = delta + rng.normal(0.0, delta_sd)
        start[s] = {f"q{i}": v for i, v in enumerate(rng.binomial(samples, np.clip(p, 0, 1)) / samples)}
        final[s] = {f"q{i}": v for i, v in enumerate(rng.binomial(samples, np.clip(p + d, 0, 1)) / samples)}
    return start, final


# ---- (a) planted and null paired differences ----------------------------------------------
def test_planted_difference_is_detected_and_null_is_not():
    rng = np.random.default_rng(0)
    detected_planted = detected_null = 0
    draws, mdes = 40, []
    for i in range(draws):
        start, final = accuracy_arms(rng, delta=0.10)
        r = paired_difference(final, start, metric_bounds=(0, 1), seed=i)
        assert r.method == "seeds>questions" and r.n_seeds == 3 and r.n_questions == 192
        mdes.append(r.mde())
        detected_planted += r.ci_low > 0
        start, final = accuracy_arms(rng, delta=0.0)
        detected_null += paired_difference(final, start, metric_bounds=(0, 1), seed=i).excludes(0.0)
    assert np.median(mdes) < 0.10  # 0.1 is above what 3 seeds x 64 questions typically detect
    assert detected_planted >= draws - 2
    # False-positive rate at nominal 5%: P(Binomial(40, 0.05) >= 6) = 0.014.
    assert detected_null <= 5


def test_paired_difference_pairs_on_seed_and_question():
    a = {0: {"q1": 0.5, "q2": 0.7, "q3": 0.1}, 1: {"q1": 1.0, "q2": float("nan")}, 2: {"q1": 0.3}}
    b = {0: {"q1": 0.25, "q2": 0.5, "q4": 0.9}, 1: {"q1": 0.5, "q2": 0.5}}
    diffs, dropped = pair_differences(a, b)
    assert diffs == {0: {"q1": 0.25, "q2": pytest.approx(0.2)}, 1: {"q1": 0.5}}
    assert dropped == 4  # q3, q4 of seed 0; the NaN of seed 1; seed 2 has no partner
    r = paired_difference(a, b, metric_bounds=(0, 1))
    assert r.estimate == pytest.approx((0.225 + 0.5) / 2) and r.n_dropped == 4
    assert r.bounds == (-1.0, 1.0) and "paired on 3" in r.reason
    # bounds= is the difference's own range, passed through; clipping acts on it.
    assert paired_difference(a, b, bounds=(0.0, 0.3)).ci_high == 0.3
    with pytest.raises(ValueError, match="not both"):
        paired_difference(a, b, bounds=(-1, 1), metric_bounds=(0, 1))
    # Sequences pair by position; a length mismatch or mixed shapes are malformed input.
    assert paired_difference({0: [1.0, 2.0]}, {0: [0.5, 0.5]}).estimate == pytest.approx(1.0)
    with pytest.raises(ValueError, match="pair by position"):
        paired_difference({0: [1.0, 2.0]}, {0: [0.5]})
    with pytest.raises(ValueError, match="both be mappings"):
        paired_difference({0: [1.0]}, {0: {"q": 1.0}})


# ---- (b) coverage over repeated draws from a known two-level model -------------------------
def coverage(rng, *, seeds, questions, seed_sd, question_sd, draws=200, mu=0.5):
    hits = 0
    for d in range(draws):
        effects = rng.normal(0.0, seed_sd, seeds)
        values = {s: mu + effects[s] + rng.normal(0.0, question_sd, questions) for s in range(seeds)}
        r = hierarchical_bootstrap(values, seed=d)
        hits += r.ci_low <= mu <= r.ci_high
    return hits / draws


# 200 draws: binomial sd of the coverage = sqrt(.95 * .05 / 200) = 0.0154; tolerance 3 sd.
COVERAGE_TOL = 3 * math.sqrt(0.95 * 0.05 / 200)


def test_coverage_near_nominal_with_seeds_and_questions():
    # 5 seeds x 64 questions, seed sd 0.02 vs question sd 0.25 (seed sd / (question sd / 8)
    # = 0.64, the regime of the experiment's accuracy differences).
    cov = coverage(np.random.default_rng(1), seeds=5, questions=64, seed_sd=0.02, question_sd=0.25)
    assert abs(cov - 0.95) <= COVERAGE_TOL, cov


def test_coverage_near_nominal_with_one_seed():
    cov = coverage(np.random.default_rng(2), seeds=1, questions=64, seed_sd=0.0, question_sd=0.25)
    assert abs(cov - 0.95) <= COVERAGE_TOL, cov


def test_resampler_matches_a_plain_loop_on_unbalanced_seeds():
    """The vectorised two-level resampler has the distribution of the obvious loop."""
    rng = np.random.default_rng(3)
    values = {0: rng.normal(0, 1, 5), 1: rng.normal(1, 1, 11), 2: rng.normal(3, 1, 23)}
    r = hierarchical_bootstrap(values, n_boot=4000, seed=0)
    assert r.estimate == pytest.approx(np.mean([v.mean() for v in values.values()]))
    arrays, loop = list(values.values()), []
    for _ in range(4000):
        picks = [arrays[i] for i in rng.integers(0, 3, 3)]
        loop.append(np.mean([rng.choice(a, a.size).mean() for a in picks]))
    assert r.se == pytest.approx(np.std(loop, ddof=1), rel=0.06)
    assert r.boot.mean() == pytest.approx(np.mean(loop), abs=0.06)


# ---- (c) clipping, (d) one seed, degenerate and malformed input ----------------------------
def test_interval_clipped_to_bounds():
    near_ceiling = {0: [1.0] * 60 + [0.0] * 4, 1: [1.0] * 63 + [0.875]}
    r = hierarchical_bootstrap(near_ceiling, bounds=(0, 1))
    assert 0 <= r.ci_low <= r.estimate <= r.ci_high <= 1 and not r.clipped
    out_of_range = {0: [1.2, 1.1, 1.3], 1: [0.9, 1.05, 1.1]}
    unclipped = hierarchical_bootstrap(out_of_range)
    assert unclipped.ci_high > 1 and unclipped.estimate > 1
    r = hierarchical_bootstrap(out_of_range, bounds=(0, 1))
    assert r.ci_high == 1.0 and r.estimate == 1.0 and r.clipped
    assert "5 value(s) outside bounds" in r.reason
    assert r.interval(0.5)[1] == 1.0  # other levels are clipped too


def test_one_seed_is_questions_only_and_flagged():
    r = hierarchical_bootstrap({7: {"a": 0.2, "b": 0.4, "c": float("nan"), "d": 0.9}})
    assert r.method == "questions only (1 seed)" and r.n_seeds == 1 and r.n_dropped == 1
    assert "one seed" in r.reason and "seed-to-seed" in r.reason
    assert r.ci_low < r.estimate < r.ci_high and r.seeds == ("7",)
    two = hierarchical_bootstrap({7: [0.2, 0.4], 8: [0.5, 0.6]})
    assert two.method == "seeds>questions"


def test_degenerate_data_give_nan_with_a_reason():
    empty = hierarchical_bootstrap({})
    assert math.isnan(empty.estimate) and empty.reason == "no finite values" and not empty.ok
    all_nan = hierarchical_bootstrap({0: [float("nan")], 1: [None]})
    assert math.isnan(all_nan.estimate) and all_nan.n_dropped == 2 and all_nan.n_seeds == 0
    one = hierarchical_bootstrap({0: [0.5]})
    assert one.estimate == 0.5 and math.isnan(one.ci_low) and "one value" in one.reason
    const = hierarchical_bootstrap({0: [0.3] * 5, 1: [0.3] * 5})
    assert (const.ci_low, const.ci_high, const.se) == pytest.approx((0.3, 0.3, 0.0))
    assert math.isnan(paired_difference({0: {"a": 1.0}}, {1: {"a": 1.0}}).estimate)


def test_malformed_input_raises_one_clear_line():
    with pytest.raises(ValueError, match="mapping seed"):
        hierarchical_bootstrap([0.1, 0.2])
    with pytest.raises(ValueError, match="numbers"):
        hierarchical_bootstrap({0: ["x", "y"]})
    with pytest.raises(ValueError, match="numbers"):
        hierarchical_bootstrap({0: "0.5"})
    with pytest.raises(ValueError, match="one-dimensional"):
        hierarchical_bootstrap({0: [[0.1, 0.2]]})
    with pytest.raises(ValueError, match="confidence"):
        hierarchical_bootstrap({0: [0.1]}, confidence=95)
    with pytest.raises(ValueError, match="n_boot"):
        hierarchical_bootstrap({0: [0.1]}, n_boot=0)
    with pytest.raises(ValueError, match="bounds"):
        hierarchical_bootstrap({0: [0.1]}, bounds=(1, 0))


def test_deterministic_order_free_and_json_ready():
    rng = np.random.default_rng(4)
    data = {s: {f"q{i}": float(v) for i, v in enumerate(rng.random(20))} for s in (2, 0, 1)}
    shuffled = {s: dict(reversed(list(data[s].items()))) for s in (1, 2, 0)}
    assert hierarchical_bootstrap(data, seed=5) == hierarchical_bootstrap(shuffled, seed=5)
    assert hierarchical_bootstrap(data, seed=5) != hierarchical_bootstrap(data, seed=6)
    d = hierarchical_bootstrap({0: [0.5]}).to_dict()
    json.dumps(d, allow_nan=False)  # NaN became None
    assert d["ci_low"] is None and d["mde"] is None and "boot" not in d


def test_hierarchical_bootstrap_is_fast():
    """The report runs hundreds: 5 seeds x 64 questions x 2000 draws must stay far below 0.1 s
    (measured ~5 ms on one core)."""
    rng = np.random.default_rng(5)
    values = {s: rng.random(64) for s in range(5)}
    best = math.inf
    for _ in range(3):
        t0 = time.perf_counter()
        hierarchical_bootstrap(values, n_boot=2000)
        best = min(best, time.perf_counter() - t0)
    assert best < 0.1, best


# ---- (e) TOST -----------------------------------------------------------------------------
def test_tost_equivalent_with_tight_data_not_with_wide_data():
    rng = np.random.default_rng(6)
    tight = {s: rng.normal(0.0, 0.05, 64) for s in range(5)}
    r = hierarchical_bootstrap(tight)
    eq = equivalence_test(r, 0.05)
    assert eq.equivalent and eq.confidence == pytest.approx(0.90) and eq.p_value < 0.05
    assert r.ci_low <= eq.ci_low and eq.ci_high <= r.ci_high  # 90% inside 95%, same draws
    assert "90% bootstrap CI" in eq.rule
    wide = {s: rng.normal(0.0, 0.6, 16) for s in range(2)}
    eq_wide = equivalence_test(wide, 0.05)  # raw values are bootstrapped here
    assert not eq_wide.equivalent and eq_wide.p_value > 0.05
    assert not equivalence_test(hierarchical_bootstrap({0: [0.0]}), 0.05).equivalent
    with pytest.raises(ValueError, match="margin"):
        equivalence_test(r, 0.0)


# ---- (f) repeated-measures correlation ----------------------------------------------------
def test_rmcorr_hand_computed_case():
    # Within-subject centred x = (-1, 0, 1) for each subject; centred y = (-1, 0, 1),
    # (-1, 1, 0), (1, 0, -1): sum xc*yc = 2 + 1 - 2 = 1, sums of squares 6 and 6 -> r = 1/6.
    x = [0, 1, 2] * 3
    y = [10, 11, 12, 20, 22, 21, 32, 31, 30]
    subject = ["A"] * 3 + ["B"] * 3 + ["C"] * 3
    res = repeated_measures_correlation(x, y, subject)
    r, df = 1 / 6, 9 - 3 - 1
    assert res.r == pytest.approx(r) and res.df == df and res.n == 9 and res.n_groups == 3
    assert res.p == pytest.approx(2 * sst.t.sf(r * math.sqrt(df / (1 - r * r)), df))
    half = sst.norm.ppf(0.975) / math.sqrt(df - 1)
    z = math.atanh(r)
    assert (res.ci_low, res.ci_high) == pytest.approx((math.tanh(z - half), math.tanh(z + half)))
    # Subject offsets do not matter (a plain Pearson over all points would be ~0.95 here).
    assert sst.pearsonr(x, y).statistic > 0.0 and res.r < 0.2


def test_rmcorr_matches_published_bland_altman_values():
    """Bland & Altman (1995) pH / PaCO2, 8 subjects, 47 observations; rmcorr (R) and pingouin
    report r = -0.507, df = 38, p = 0.000847, 95% CI [-0.71, -0.23]."""
    sizes = [4, 4, 9, 5, 8, 6, 3, 8]
    subject = [i for i, n in enumerate(sizes, 1) for _ in range(n)]
    ph = [6.68, 6.53, 6.43, 6.33, 6.85, 7.06, 7.13, 7.17, 7.40, 7.42, 7.41, 7.37, 7.34, 7.35, 7.28, 7.30,
          7.34, 7.36, 7.33, 7.29, 7.30, 7.35, 7.35, 7.30, 7.30, 7.37, 7.27, 7.28, 7.32, 7.32, 7.38, 7.30,
          7.29, 7.33, 7.31, 7.33, 6.86, 6.94, 6.92, 7.19, 7.29, 7.21, 7.25, 7.20, 7.19, 6.77, 6.82]
    paco2 = [3.97, 4.12, 4.09, 3.97, 5.27, 5.37, 5.41, 5.44, 5.67, 3.64, 4.32, 4.73, 4.96, 5.04, 5.22, 4.82,
             5.07, 5.67, 5.10, 5.53, 4.75, 5.51, 4.28, 4.44, 4.32, 3.23, 4.46, 4.72, 4.75, 4.99, 4.78, 4.73,
             5.12, 4.93, 5.03, 4.93, 6.85, 6.44, 6.52, 5.28, 4.56, 4.34, 4.32, 4.41, 3.69, 6.09, 5.58]
    res = repeated_measures_correlation(ph, paco2, subject)
    assert round(res.r, 3) == -0.507 and res.df == 38
    assert res.p == pytest.approx(0.000847, abs=5e-7)
    assert (round(res.ci_low, 2), round(res.ci_high, 2)) == (-0.71, -0.23)


def test_rmcorr_degenerate_and_malformed():
    res = repeated_measures_correlation([1, 2, 3], [1, 2, 5], ["a", "a", "b"])
    assert math.isnan(res.r) and "N - k - 1" in res.reason  # df = 3 - 2 - 1 = 0
    one_df = repeated_measures_correlation([1, 2, 3, 4], [1, 2, 3, 5], ["a", "a", "b", "b"])
    assert one_df.r == pytest.approx(1.0) or (math.isfinite(one_df.r) and math.isnan(one_df.ci_low))
    flat = repeated_measures_correlation([1, 1, 2, 2, 3, 3], [1, 2, 3, 4, 5, 6], list("aabbcc"))
    assert math.isnan(flat.r) and "within-subject" in flat.reason
    with pytest.raises(ValueError, match="same length"):
        repeated_measures_correlation([1, 2], [1, 2], ["a"])


def test_change_correlation_per_arm():
    dx = {"grpo/0": -0.30, "cov/0": -0.10, "kl/0": -0.20, "fork/0": -0.25, "grpo/1": -0.35, "cov/1": -0.05}
    dy = {"grpo/0": -0.9, "cov/0": -0.2, "kl/0": -0.5, "fork/0": -0.7, "grpo/1": -1.0, "cov/1": -0.1}
    res = change_correlation(dx, dy)
    assert res.r == pytest.approx(1.0) and res.n == 6 and res.ci_high == pytest.approx(1.0)
    assert res.p == pytest.approx(sst.spearmanr(list(dx.values()), list(dy.values())).pvalue)
    few = change_correlation([0.1, 0.2, 0.3], [0.3, 0.1, 0.2])
    assert math.isnan(few.r) and "4 arms" in few.reason
    assert math.isnan(change_correlation([1, 1, 1, 1], [1, 2, 3, 4]).r)
    json.dumps(few.to_dict(), allow_nan=False)


# ---- (g) entropy law on fixed-evaluation points --------------------------------------------
def law_points(rng, entropies, a, b, noise=0.01, seeds=3):
    return {s: [(h, -a * math.exp(h) + b + rng.normal(0, noise)) for h in entropies] for s in range(seeds)}


def test_law_bootstrap_identified_when_range_is_wide():
    rng = np.random.default_rng(7)
    fit = fit_entropy_law_bootstrap(law_points(rng, [0.2, 0.6, 1.0, 1.4], a=0.2, b=1.0))
    assert fit.identified and fit.reason == "" and fit.method == "seeds>points"
    assert fit.a_ci[0] < 0.2 < fit.a_ci[1] and fit.b_ci[0] < 1.0 < fit.b_ci[1]
    assert fit.ceiling_ci[0] < 0.8 < fit.ceiling_ci[1] and fit.n_points == 12 and fit.n_seeds == 3
    json.dumps(fit.to_dict(), allow_nan=False)


def test_law_bootstrap_flags_ceiling_above_one_and_narrow_range():
    rng = np.random.default_rng(8)
    high = fit_entropy_law_bootstrap(law_points(rng, [0.5, 0.9, 1.3, 1.7], a=0.15, b=1.6))
    assert high.ceiling > 1 and high.ceiling_exceeds_max and high.ceiling_exceeds_1
    assert not high.entropy_range_too_narrow and not high.identified and "exceeds 1" in high.reason
    assert fit_entropy_law_bootstrap(law_points(rng, [0.5, 0.9, 1.3, 1.7], a=0.15, b=1.6),
                                     ceiling_max=2.0).identified
    # Mean token entropy 0.08-0.10 nats: exp(H) spans 2 % of its mean.
    narrow = fit_entropy_law_bootstrap(law_points(rng, [0.08, 0.09, 0.10], a=2.0, b=3.0, noise=0.001))
    assert narrow.entropy_range_too_narrow and not narrow.identified and narrow.relative_range < 0.2
    two_levels = fit_entropy_law_bootstrap(law_points(rng, [0.2, 1.4], a=0.2, b=1.0))
    assert two_levels.distinct_levels == 2 and two_levels.entropy_range_too_narrow
    flat = fit_entropy_law_bootstrap(law_points(rng, [0.2, 0.6, 1.0, 1.4], a=0.0, b=0.5, noise=0.02))
    assert flat.slope_ci_includes_zero and not flat.identified
    none = fit_entropy_law_bootstrap({0: [(0.5, 0.4)], 1: []})
    assert not none.identified and "not fitted" in none.reason and math.isnan(none.a)
    with pytest.raises(ValueError, match=r"\(H, R\)"):
        fit_entropy_law_bootstrap({0: [0.1, 0.2, 0.3]})


# ---- (h) verdict rules --------------------------------------------------------------------
def effect(rng, center, sd, seeds=4, questions=64):
    return hierarchical_bootstrap({s: center + rng.normal(0, sd, questions) for s in range(seeds)})


def test_verdict_rules_on_constructed_effects():
    rng = np.random.default_rng(9)
    down, up = effect(rng, -0.2, 0.1), effect(rng, 0.2, 0.1)
    null_tight, null_wide = effect(rng, 0.0, 0.05), effect(rng, 0.0, 0.8, seeds=2, questions=16)
    assert verdict(down, direction="decrease").outcome == SUPPORTED
    assert verdict(up, direction="decrease").outcome == CONTRADICTED
    assert verdict(null_wide, direction="decrease").outcome == INCONCLUSIVE
    # No change within the margin contradicts "decreases" only when a margin is stated.
    assert verdict(null_tight, direction="decrease").outcome == INCONCLUSIVE
    v = verdict(null_tight, direction="decrease", margin=0.05)
    assert v.outcome == CONTRADICTED and v.equivalence.equivalent and "no change" in v.reason
    assert verdict(up, direction="increase").outcome == SUPPORTED
    assert verdict(down, direction="increase").outcome == CONTRADICTED
    assert verdict(null_tight, direction="zero", margin=0.05).outcome == SUPPORTED
    assert verdict(down, direction="zero", margin=0.05).outcome == CONTRADICTED
    assert verdict(null_wide, direction="zero", margin=0.05).outcome == INCONCLUSIVE
    assert verdict(down, direction="nonzero").outcome == SUPPORTED
    assert verdict(null_tight, direction="nonzero", margin=0.05).outcome == CONTRADICTED
    # Inconclusive says what the run could have detected.
    inc = verdict(null_wide, direction="decrease")
    assert inc.mde == pytest.approx(Z_SUM * null_wide.se) and "MDE" in inc.reason
    assert inc.rule == verdict_rule("decrease") and "upper bound < 0" in inc.rule
    assert verdict(hierarchical_bootstrap({}), direction="increase").outcome == INCONCLUSIVE
    d = verdict(null_tight, direction="zero", margin=0.05).to_dict()
    json.dumps(d, allow_nan=False)
    assert d["equivalence"]["equivalent"] is True
    with pytest.raises(ValueError, match="margin"):
        verdict(null_tight, direction="zero")
    with pytest.raises(ValueError, match="direction"):
        verdict(null_tight, direction="down")


# ---- (i) minimum detectable difference ----------------------------------------------------
def test_min_detectable_difference_formula():
    assert min_detectable_difference(1.0) == pytest.approx(2.8016, abs=1e-4)
    assert min_detectable_difference(0.02) == pytest.approx(0.02 * Z_SUM)
    assert min_detectable_difference(0.02, alpha=0.01, power=0.9) == pytest.approx(
        0.02 * (sst.norm.ppf(0.995) + sst.norm.ppf(0.9)))
    r = hierarchical_bootstrap({0: [0.1, 0.3, 0.5], 1: [0.2, 0.4, 0.9]})
    assert isinstance(r, BootstrapResult) and min_detectable_difference(r) == pytest.approx(r.se * Z_SUM)
    assert r.to_dict()["mde"] == pytest.approx(r.mde())
    assert math.isnan(min_detectable_difference(float("nan")))
    with pytest.raises(ValueError, match="se"):
        min_detectable_difference(-1.0)
    with pytest.raises(ValueError, match="power"):
        min_detectable_difference(1.0, power=1.5)


def test_mean_ci_is_deprecated_but_still_works():
    with pytest.deprecated_call():
        m, lo, hi = mean_ci([1.0, 2.0, 3.0])
    assert m == 2.0 and lo < 2.0 < hi


# ----------------------------------------------------------------------------- builds above seeds


def _built(offsets, seeds_per_build, rng, q=64, seed_sd=0.05):
    vals, builds = {}, {}
    for b, off in enumerate(offsets):
        for s in range(seeds_per_build[b] if isinstance(seeds_per_build, (list, tuple)) else seeds_per_build):
            k = f"b{b}/s{s}"
            vals[k] = rng.normal(off + rng.normal(0, seed_sd), 1.0, q)
            builds[k] = f"b{b}"
    return vals, builds


def test_one_build_is_the_two_level_bootstrap_draw_for_draw():
    vals, _ = _built([0.0], 3, np.random.default_rng(0))
    flat = hierarchical_bootstrap(vals, seed=3)
    one = hierarchical_bootstrap(vals, seed=3, builds={k: "only" for k in vals})
    assert one.method == flat.method == "seeds>questions"
    assert (one.estimate, one.ci_low, one.ci_high) == (flat.estimate, flat.ci_low, flat.ci_high)
    assert np.array_equal(one.boot, flat.boot)


def test_builds_weigh_equally_and_every_seed_needs_its_build():
    vals, builds = _built([0.0, 1.0], [1, 3], np.random.default_rng(1))
    r = hierarchical_bootstrap(vals, builds=builds)
    by_build = [np.mean([vals[k].mean() for k in vals if builds[k] == b]) for b in ("b0", "b1")]
    assert r.method == "builds>seeds>questions" and r.estimate == pytest.approx(np.mean(by_build))
    assert "2 builds" in r.reason and r.n_seeds == 4
    with pytest.raises(ValueError, match="no build given for seed 'b1/s2'"):
        hierarchical_bootstrap(vals, builds={k: b for k, b in builds.items() if k != "b1/s2"})
    with pytest.raises(ValueError, match="builds must be a mapping"):
        paired_difference(vals, vals, builds=["b0"])


def test_builds_level_covers_build_to_build_variation_the_flat_bootstrap_misses():
    # 3 builds x 3 seeds x 64 questions, build sd twice the question-level standard error:
    # resampling seeds as if independent under-covers badly; builds above seeds much less
    rng = np.random.default_rng(7)
    q_se = 1 / 8
    hits_nested = hits_flat = 0
    reps = 120
    for i in range(reps):
        vals, builds = _built(rng.normal(0, 2 * q_se, 3), 3, rng, seed_sd=0.5 * q_se)
        n = hierarchical_bootstrap(vals, builds=builds, n_boot=600, seed=i)
        f = hierarchical_bootstrap(vals, n_boot=600, seed=i)
        hits_nested += n.ci_low <= 0 <= n.ci_high
        hits_flat += f.ci_low <= 0 <= f.ci_high
    assert hits_nested / reps > hits_flat / reps + 0.08
    assert hits_nested / reps > 0.75
