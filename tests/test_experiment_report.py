"""Report generator on synthetic-but-realistic arm records (known trends, known answers)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from searchgym import report
from searchgym.retrieval.fileio import append_jsonl, atomic_write_json

# per objective: (token-entropy decay rate, does ER follow entropy?, final strategy entropy, final accuracy)
SPECS = {
    "grpo": (0.05, True, 0.20, 0.60),
    "clip_cov": (0.01, True, 0.55, 0.595),
    "kl_cov": (0.02, False, 0.45, 0.50),
}


def _write_arm(run: Path, ws: str, obj: str, seed: int, steps: int = 40, eval_every: int = 10) -> None:
    rng = np.random.default_rng(hash((ws, obj, seed)) % 2**32)
    rate, er_follows, strat_final, acc_final = SPECS[obj]
    d = run / "arms" / f"{ws}-{obj}-s{seed}"
    d.mkdir(parents=True)
    h0 = 1.2 if ws == "diverse" else 0.9
    s0 = 0.8 if ws == "diverse" else 0.4

    def at(t: int) -> dict:
        h = h0 * math.exp(-rate * t) * (1 + 0.01 * rng.standard_normal())
        length = 40 + 0.5 * t  # responses grow: raw ER grows with them
        er_lc = 6.0 * (h / h0) ** 0.8 if er_follows else 6.0 + 0.05 * rng.standard_normal()
        strat = s0 + (strat_final - s0) * t / steps
        reward = -0.3 * math.exp(h) + 1.3 + 0.01 * rng.standard_normal()
        return {
            "step": t, "reward": reward, "token_entropy": h, "er_lc": er_lc,
            "er_raw": 0.2 * length + 0.01 * rng.standard_normal(), "group_er": 3.0 * (h / h0),
            "strategy_entropy": strat, "distinct_strategies": 1 + 3 * strat, "response_length": length,
            "step_time_s": 1.0, "metrics_time_s": 0.05,
        }

    for t in range(steps):
        append_jsonl(d / "metrics.jsonl", at(t))
    for t in range(0, steps + 1, eval_every):
        r = at(t)
        acc = 0.3 + (acc_final - 0.3) * t / steps + 0.003 * seed
        r.update(accuracy=acc, pass_at_1=acc, pass_at_k=min(1.0, acc + 0.2), k=4, vendi=2.0 + strat_final,
                 format_error_rate=0.0, searches_per_episode=1.5)
        append_jsonl(d / "eval.jsonl", r)
    atomic_write_json(d / "arm.json", {"arm_id": d.name, "warm_start": ws, "objective": obj, "seed": seed,
                                       "status": "ok", "error": None, "wall_s": 12.0})


def _all_numbers(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _all_numbers(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _all_numbers(v)
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield obj


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("run")
    for ws in ("diverse", "narrow"):
        for obj in SPECS:
            for seed in (0, 1):
                _write_arm(run, ws, obj, seed)
    failed = run / "arms" / "narrow-er_shaped-s0"
    failed.mkdir()
    atomic_write_json(failed / "arm.json", {"arm_id": failed.name, "warm_start": "narrow", "objective": "er_shaped",
                                            "seed": 0, "status": "failed", "error": "RuntimeError: boom"})
    return run


@pytest.fixture(scope="module")
def analysis(run_dir) -> dict:
    return report.write_report(run_dir, meta={"name": "synthetic", "preset": "test", "wall_s": 1.0, "workers": 1})


def test_files_and_finite_numbers(run_dir, analysis):
    for name in ("report.md", "report.json"):
        assert (run_dir / name).stat().st_size > 0
    assert set(analysis["figures"]) == {
        "token_entropy_vs_step", "er_vs_step", "strategy_entropy_vs_step", "accuracy_vs_entropy",
        "entropy_ratio_vs_er_ratio",
    }
    for rel in analysis["figures"].values():
        assert (run_dir / rel).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((run_dir / "report.json").read_text())
    nums = list(_all_numbers(data))
    assert len(nums) > 100 and all(math.isfinite(x) for x in nums)


def test_table_values(analysis):
    rows = {(r["warm_start"], r["objective"]): r for r in analysis["table"]}
    assert len(rows) == 6
    grpo = rows[("diverse", "grpo")]
    assert grpo["seeds"] == [0, 1]
    # accuracy at step 40: 0.6 + 0.003*seed -> mean 0.6015, CI over two seeds brackets it
    assert grpo["final_accuracy"]["mean"] == pytest.approx(0.6015, abs=1e-9)
    assert grpo["final_accuracy"]["ci_low"] < 0.6015 < grpo["final_accuracy"]["ci_high"]
    # token entropy decays as exp(-0.05 t): ratio at t=40 is e^-2 (noise 1%)
    assert grpo["ratios"]["token_entropy"]["mean"] == pytest.approx(math.exp(-2), rel=0.05)
    assert grpo["ratios"]["er_lc"]["mean"] < 0.3
    assert rows[("diverse", "kl_cov")]["ratios"]["er_lc"]["mean"] == pytest.approx(1.0, abs=0.05)
    assert grpo["metrics_share"]["mean"] == pytest.approx(0.05)
    # the law was generated with a = 0.3, b = 1.3
    assert grpo["law"]["a"] == pytest.approx(0.3, rel=0.1)
    assert grpo["law"]["b"] == pytest.approx(1.3, rel=0.05)
    assert grpo["law"]["r2"] > 0.9


def test_findings(analysis):
    f = analysis["findings"]
    # ER follows entropy in 2 of 3 objectives: positive pooled correlation
    assert f["token_entropy_vs_er_lc"]["rho"] > 0.3
    assert f["token_entropy_vs_er_lc"]["ci_low"] > 0
    assert f["grpo_entropy_ratio"]["diverse"] < 0.2 and "fell visibly" in f["grpo_text"]
    # best accuracy 0.6015 (grpo); clip_cov at 0.5965 is within 2 points and keeps more strategy entropy
    assert [(r["objective"], r["warm_start"]) for r in f["near_best"]][0] == ("clip_cov", "diverse")
    assert all(r["objective"] != "kl_cov" for r in f["near_best"])
    # raw ER was generated from length: the confound is detected
    assert f["er_raw_vs_length"]["rho"] > 0.9
    assert "tracks response length" in f["length_text"]


def test_failed_arm_reported(run_dir, analysis):
    assert analysis["failed_arms"] == [{"arm_id": "narrow-er_shaped-s0", "error": "RuntimeError: boom"}]
    md = (run_dir / "report.md").read_text()
    assert "narrow-er_shaped-s0" in md and "RuntimeError: boom" in md
    assert "| clip_cov | diverse | 2 |" in md


def test_no_effect_is_said():
    rng = np.random.default_rng(0)
    c = report.spearman_ci(rng.standard_normal(30), rng.standard_normal(30))
    assert c["ci_low"] < 0 < c["ci_high"]
    assert "no effect" in report._verdict(c, "x")
    assert report.spearman_ci([1, 2, 3], [1, 2, 3])["rho"] is None  # too few points
    assert report.spearman_ci(range(10), [5] * 10)["rho"] is None  # constant series


def test_mean_ci_matches_t_interval():
    from scipy import stats

    v = [0.1, 0.4, 0.35]
    c = report.mean_ci(v)
    lo, hi = stats.t.interval(0.95, 2, loc=np.mean(v), scale=stats.sem(v))
    assert (c["ci_low"], c["ci_high"]) == pytest.approx((lo, hi))
    assert report.mean_ci([0.5]) == {"mean": 0.5, "ci_low": None, "ci_high": None, "n": 1}
    assert report.mean_ci([None, float("nan")])["mean"] is None


def test_bad_input_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="arms"):
        report.load_arms(tmp_path)
    d = tmp_path / "arms" / "a"
    d.mkdir(parents=True)
    (d / "arm.json").write_text('{"arm_id": "a"}')
    with pytest.raises(ValueError, match="missing keys"):
        report.load_arms(tmp_path)
