"""The SFT sweep driver: reward spread, candidate rows, the selection rule, tables, CLI."""

from __future__ import annotations

import json
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _traj(group, reward):
    from searchgym.agents.rollout import Trajectory

    return Trajectory(question_id=str(group), group_id=group, sample_index=0, prompt="q", reward=reward)


def test_group_reward_spread_counts_groups_with_unequal_rewards():
    from searchgym.sweeps import group_reward_spread

    trajs = [_traj(0, 1.0), _traj(0, 1.0), _traj(1, 0.0), _traj(1, 1.0), _traj(2, 0.0), _traj(2, 0.0),
             _traj(3, 0.2), _traj(3, 0.0)]
    assert group_reward_spread(trajs) == 0.5
    assert group_reward_spread([]) != group_reward_spread([])  # nan: no groups


def _rec(warm, epoch, greedy, temps, tag="ep7-lr6e-03-min0.1-ls0"):
    """temps: {T: (entropy, sampled acc, spread)}."""
    return {"recipe_tag": tag, "recipe": {"epochs": 7}, "warm_start": warm, "epoch": epoch, "greedy_accuracy": greedy,
            "model_dir": f"/m/{warm}/{epoch}",
            "by_temperature": {str(t): {"token_entropy": h, "accuracy": a, "reward_spread_share": s,
                                        "format_error_rate": 0.0} for t, (h, a, s) in temps.items()}}


def test_choose_applies_the_rule_and_prefers_reward_spread():
    from searchgym.sweeps import SelectionRule, candidates, choose, passes

    recs = [
        _rec("narrow", 3, 0.55, {0.7: (0.2, 0.4, 0.5), 1.0: (0.35, 0.3, 0.6)}),
        _rec("diverse", 3, 0.60, {0.7: (0.25, 0.4, 0.5), 1.0: (0.45, 0.2, 0.4)}),
        _rec("narrow", 4, 0.65, {0.7: (0.1, 0.5, 0.3), 1.0: (0.31, 0.4, 0.7)}),
        _rec("diverse", 4, 0.70, {0.7: (0.2, 0.5, 0.3), 1.0: (0.40, 0.4, 0.6)}),
        _rec("narrow", 5, 0.40, {1.0: (0.5, 0.2, 0.9)}),  # too inaccurate
        _rec("diverse", 5, 0.70, {1.0: (0.5, 0.2, 0.9)}),
        _rec("narrow", 6, 0.80, {1.0: (0.5, 0.6, 0.9)}),  # diverse epoch 6 missing: no row
    ]
    rows = candidates(recs)
    assert [(r["epoch"], r["temperature"]) for r in rows] == [(3, 0.7), (3, 1.0), (4, 0.7), (4, 1.0), (5, 1.0)]
    rule = SelectionRule()
    assert [passes(r, rule) for r in rows] == [False, True, False, True, False]
    best = choose(rows, rule)
    assert (best["epoch"], best["temperature"]) == (4, 1.0)  # min spread 0.6 beats 0.4
    assert best["narrow"]["model_dir"] == "/m/narrow/4"
    assert choose(rows, SelectionRule(max_accuracy_gap=0.01)) is None
    assert choose(rows, SelectionRule(min_entropy=0.6)) is None


def test_write_tables_records_every_row_and_skips_torn_lines(tmp_path):
    from searchgym.sweeps import write_tables

    root = tmp_path / "sweeps"
    for warm, greedy in (("narrow", 0.6), ("diverse", 0.62)):
        d = root / f"ep7-lr6e-03-min0.1-ls0-{warm}"
        d.mkdir(parents=True)
        (d / "results.jsonl").write_text(json.dumps(_rec(warm, 2, greedy, {1.0: (0.4, 0.3, 0.5)})) + "\n{torn")
        (d / "run.json").write_text(json.dumps({"wall_s": 10.0, "measure_s": 2.0, "threads": 1}))
    data = write_tables(root, tmp_path / "out", command="python -m searchgym.sweeps table", notes=["Note A."])
    assert data["chosen"]["epoch"] == 2 and len(data["records"]) == 2
    md = (tmp_path / "out" / "sweep.md").read_text()
    assert "**chosen**" in md and "Chosen: ep7-lr6e-03-min0.1-ls0 epoch 2 at T = 1" in md
    assert "`/m/narrow/2`" in md and md.rstrip().endswith("Note A.")
    assert json.loads((tmp_path / "out" / "sweep.json").read_text())["rule"]["min_entropy"] == 0.3


def test_cli_bad_input_is_one_line(capsys, tmp_path):
    from searchgym.sweeps import main

    assert main(["sft", "--out", str(tmp_path), "--epochs", "0"]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
    assert main(["sft", "--out", str(tmp_path), "--warm-starts", "wide"]) == 2
    assert "unknown warm start 'wide'" in capsys.readouterr().err
    assert main(["sft", "--out", str(tmp_path), "--temperatures", "0,1"]) == 2


@pytest.mark.slow
def test_sweep_smoke_end_to_end_shares_the_main_jobs_stage_cache(tmp_path):
    """Smoke preset, 1 epoch, both warm starts: per-epoch results, checkpoints, the
    experiment's stage keys (a later `searchgym run` into the folder reuses them), and a
    rerun skips finished runs."""
    from searchgym.cache import code_fingerprint, stage_key
    from searchgym.experiment import _CODE
    from searchgym.presets import get_preset
    from searchgym.sweeps import main

    out, res = tmp_path / "run", tmp_path / "res"
    argv = ["sft", "--out", str(out), "--preset", "smoke", "--epochs", "1", "--sample-questions", "3",
            "--samples", "4", "--greedy-questions", "4", "--temperatures", "0.7,1.2", "--results", str(res),
            "--no-progress"]
    assert main(argv) == 0
    preset = get_preset("smoke")
    world_key = stage_key("world", (preset.world, preset.index), {}, code=code_fingerprint(*_CODE["world"]))
    assert (out / "cache" / f"world-{world_key}" / "manifest.json").is_file()
    data = json.loads((res / "sweep.json").read_text())
    assert {r["warm_start"] for r in data["records"]} == {"narrow", "diverse"}
    rec = data["records"][0]
    assert rec["greedy_questions"] == 4 and set(rec["by_temperature"]) == {"0.7", "1.2"}
    t = rec["by_temperature"]["1.2"]
    assert t["episodes"] == 12 and t["groups"] == 3 and t["token_entropy"] > 0
    assert 0 <= t["reward_spread_share"] <= 1 and 0 <= t["format_error_rate"] <= 1
    # higher temperature, flatter sampling distribution
    assert t["token_entropy"] > rec["by_temperature"]["0.7"]["token_entropy"]
    run_dir = out / "sweeps" / "sft" / "ep1-lr6e-03-min0.1-ls0-narrow"
    assert (run_dir / "epochs" / "epoch-1" / "model.safetensors").is_file()
    before = (run_dir / "results.jsonl").read_text()
    assert main(argv) == 0  # finished runs are skipped, their results kept
    assert (run_dir / "results.jsonl").read_text() == before
    # a further temperature measured on the saved checkpoint joins the record; greedy agrees
    assert main(["measure", "--out", str(out), "--preset", "smoke", "--runs", run_dir.name, "--temperatures", "1.0",
                 "--sample-questions", "3", "--samples", "4", "--greedy-questions", "4"]) == 0
    rec = json.loads((run_dir / "results.jsonl").read_text().splitlines()[0])
    assert set(rec["by_temperature"]) == {"0.7", "1", "1.2"}
    assert rec["greedy_remeasured"] == [rec["greedy_accuracy"]]
    assert main(["measure", "--out", str(out), "--runs", "nope", "--temperatures", "1.0"]) == 2
