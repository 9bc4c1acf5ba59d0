"""The presets' sizes against what they state (issue: an experiment that produces the
phenomenon it measures), and each committed report's measured wall time against its
preset's stated budget."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from searchgym.envs.world import PRESETS as WORLD_PRESETS
from searchgym.evaluation import pass_ks
from searchgym.presets import OBJECTIVES_ALL, PRESET_NAMES, get_preset, with_overrides

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"


def _test_questions(preset) -> int:
    cfg = preset.world.resolved() if hasattr(preset.world, "resolved") else preset.world
    per_family = cfg.questions_per_family or WORLD_PRESETS[cfg.preset]["questions_per_family"]
    return int(per_family * cfg.split_fractions[2])


def test_pilot_is_plain_grpo_from_the_diverse_start_with_groups_of_8():
    p = get_preset("pilot")
    assert p.objectives == ("grpo",) and p.warm_starts == ("diverse",) and len(p.seeds) >= 2
    # issue 13's target is 15 min; the stated budget is the measured 1,071 s (AMD EPYC) rounded up (presets.py)
    assert p.rl.n_samples >= 8 and p.budget_s <= 1100


@pytest.mark.parametrize("name", ["small", "full"])
def test_main_presets_evaluate_enough_to_rank(name):
    p = get_preset(name)
    assert set(p.warm_starts) == {"diverse", "narrow"}
    assert {"grpo", "kl_cov", "entropy_bonus"} <= set(p.objectives)
    assert p.eval.split == "test"  # never the validation split the presets were tuned on
    assert p.eval.questions >= 64 and p.eval.samples >= 8 and p.rl.n_samples >= 8
    assert _test_questions(p) >= p.eval.questions
    assert all(k < p.eval.samples for k in pass_ks(p.eval.samples)) and len(pass_ks(p.eval.samples)) >= 3
    assert p.eval.temperature == p.rl.temperature  # entropy is measured at the RL sampling temperature


def test_small_and_full_sizes_and_budgets():
    small, full = get_preset("small"), get_preset("full")
    # issue 13's target is 60 min: the committed run (docs/results/small, Intel Xeon) took 3,002 s
    # from scratch; the same arm code took 3,758 s on an AMD EPYC (docs/results/small-replicas)
    assert len(small.seeds) >= 3 and small.budget_s <= 3600
    assert set(full.objectives) == set(OBJECTIVES_ALL) and len(full.seeds) >= 5
    # issue 13's target for full is 3 h; measured 13,259 s of compute in two parts, 12,763 s (3.5 h) as
    # one run (docs/results/full): missed, and the budget states the measured figure so the committed
    # report is checked against what it took
    assert full.rl.steps > small.rl.steps and full.budget_s <= 13_300


@pytest.mark.xfail(strict=True, reason="issue 13: full's 3 h target is missed (12,763 s as one run, measured); when a "
                   "faster step makes it fit, this passes and the strict xfail fails: drop the marker")
def test_committed_full_report_fits_the_3_hour_target():
    """One run from scratch, resumed through the stage cache: a merge's ``one_run_s`` (each
    shared build once, every part's evaluations and arms) where its parts record their
    builds, else the parts' sum."""
    rt = json.loads((RESULTS / "full" / "report.json").read_text(encoding="utf-8"))["run_time"]
    assert rt.get("one_run_s", rt["from_scratch_s"]) <= 3 * 3600


def test_committed_small_report_fits_the_60_minute_target():
    rt = json.loads((RESULTS / "small" / "report.json").read_text(encoding="utf-8"))["run_time"]
    assert rt["from_scratch_s"] <= 3600


@pytest.mark.parametrize("name", [n for n in PRESET_NAMES if (RESULTS / n / "report.json").is_file()])
def test_committed_report_ran_within_its_presets_budget(name):
    """A committed report's measured time from scratch (the stages' own build times) is
    within its preset's budget, and it was run with the preset's arms."""
    rep = json.loads((RESULTS / name / "report.json").read_text(encoding="utf-8"))
    meta = rep["meta"]
    p = get_preset(name)
    assert meta["preset"] == name
    assert set(meta["objectives"]) == set(p.objectives) and set(meta["warm_starts"]) == set(p.warm_starts)
    assert len(meta["seeds"]) >= len(p.seeds)
    assert rep["run_time"]["from_scratch_s"] <= p.budget_s, (rep["run_time"], p.budget_s)


def test_overrides_are_checked():
    p = with_overrides(get_preset("pilot"), ["rl.optim.lr=5e-4", "eval.questions=16"])
    assert p.rl.optim.lr == 5e-4 and p.eval.questions == 16
    with pytest.raises(ValueError, match="rl.nope"):
        with_overrides(p, ["rl.nope=1"])
    with pytest.raises(ValueError, match="expected int"):
        with_overrides(p, ["eval.questions=many"])
    with pytest.raises(ValueError, match="SECTION.FIELD=VALUE"):
        with_overrides(p, ["steps=3"])
