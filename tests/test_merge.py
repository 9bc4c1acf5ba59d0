"""``searchgym merge``: a preset run in parts (whole seeds at a time) gives the report the
single run would give; parts that are not one experiment are refused in one line, and the
parts and a foreign output folder are never changed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_experiment_report import SPECS, _write_arm

from searchgym import report
from searchgym.cli import main
from searchgym.merge import MergeRefused, merge_runs

PROV = {"preset": "test", "config": "c0nf", "code": "c0de"}


def _part(root: Path, name: str, seeds, weights: str = "w0", world_key: str = "world0", **changes) -> Path:
    run = root / name
    for ws in ("diverse", "narrow"):
        for obj in SPECS:
            for seed in seeds:
                _write_arm(run, ws, obj, seed)
                path = run / "arms" / f"{ws}-{obj}-s{seed}" / "arm.json"
                arm = json.loads(path.read_text())
                arm["provenance"] = {**PROV, "warm_start_key": f"sft-{ws}", "warm_start_sha256": f"{weights}-{ws}",
                                     **changes}
                path.write_text(json.dumps(arm))
    (run / "report.json").write_text(json.dumps({"meta": {
        "preset": "test", "objectives": list(SPECS), "warm_starts": ["diverse", "narrow"], "seeds": list(seeds),
        "rl_steps": 20, "workers": 2, "machine": {"cpu": f"cpu of {name}", "cpus": 2, "matmul_gflops_1thread": 80.0},
        "stage_times": {"world": {"built_s": 10.0, "key": world_key}, "sft-diverse": {"built_s": 100.0, "key": "sft0"},
                        "start_evals": {"wall_s": 50.0, "cached": False}, "arms": {"wall_s": 1000.0}}}}))
    return run


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_parts_merge_into_the_report_of_one_run(tmp_path):
    a = _part(tmp_path, "a", (0, 1))
    b = _part(tmp_path, "b", (2,), weights="w1")  # its warm starts rebuilt elsewhere: allowed
    before = {p: _snapshot(p) for p in (a, b)}
    merged = merge_runs(tmp_path / "merged", [a, b])
    whole = _part(tmp_path, "whole", (0, 1, 2))
    single = report.write_report(whole, meta={"preset": "test"})
    assert merged["claims"] == single["claims"] and merged["table"] == single["table"]
    assert merged["meta"]["seeds"] == [0, 1, 2] and merged["meta"]["objectives"] == list(SPECS)
    # compute from scratch is the parts' sum; each part is named with its seeds and machine
    assert merged["run_time"]["from_scratch_s"] == pytest.approx(2 * 1160.0)
    # as one run through the stage cache: the shared world and SFT builds (same keys) once
    assert merged["run_time"]["one_run_s"] == pytest.approx(10.0 + 100.0 + 2 * (50.0 + 1000.0))
    md = (tmp_path / "merged" / "report.md").read_text()
    assert "as one run resumed through the stage cache" in md and "2210 s" in md
    assert "assembled by `searchgym merge` from 2 run(s)" in md and "cpu of b" in md and "seeds [2]" in md
    assert "built once per part (2 builds" in md
    assert {p: _snapshot(p) for p in (a, b)} == before  # the parts are untouched
    # a rerun into the same merge folder replaces its own output
    assert main(["merge", str(a), str(b), "--out", str(tmp_path / "merged")]) == 0
    # a part that built another world counts its build too
    c = _part(tmp_path, "c", (2,), world_key="world1")
    again = merge_runs(tmp_path / "merged2", [a, c])
    assert again["run_time"]["one_run_s"] == pytest.approx(2 * 10.0 + 100.0 + 2 * 1050.0)
    # a part whose builds carry no stage key cannot be matched: no one-run figure, the sum stays
    d = _part(tmp_path, "d", (3,), world_key=None)
    keyless = merge_runs(tmp_path / "merged3", [a, d])
    assert "one_run_s" not in keyless["run_time"] and keyless["run_time"]["from_scratch_s"] == pytest.approx(2320.0)


@pytest.mark.parametrize("change, message", [
    ({"config": "other"}, "config hash"),
    ({"code": "other"}, "arm code fingerprint"),
    ({"warm_start_key": "sft-other"}, "SFT stage key"),
])
def test_parts_of_different_experiments_are_refused(tmp_path, change, message):
    a = _part(tmp_path, "a", (0,))
    b = _part(tmp_path, "b", (1,), **change)
    with pytest.raises(MergeRefused, match=message):
        merge_runs(tmp_path / "merged", [a, b])
    assert not (tmp_path / "merged").exists()


def test_overlapping_seeds_and_a_seed_with_two_warm_starts_are_refused(tmp_path):
    a = _part(tmp_path, "a", (0, 1))
    with pytest.raises(MergeRefused, match="is in both"):
        merge_runs(tmp_path / "m1", [a, _part(tmp_path, "b", (1,))])
    # one seed's arms split across parts whose warm starts differ: its pairing would be broken
    c = _part(tmp_path, "c", (2,))
    arm = c / "arms" / "narrow-kl_cov-s2"
    arm.rename(tmp_path / "moved")
    d = tmp_path / "d"
    (d / "arms").mkdir(parents=True)
    (tmp_path / "moved").rename(d / "arms" / "narrow-kl_cov-s2")
    meta = json.loads((d / "arms" / "narrow-kl_cov-s2" / "arm.json").read_text())
    meta["provenance"]["warm_start_sha256"] = "w9-narrow"
    (d / "arms" / "narrow-kl_cov-s2" / "arm.json").write_text(json.dumps(meta))
    with pytest.raises(MergeRefused, match="seed 2: its narrow arms used different warm-start weights"):
        merge_runs(tmp_path / "m2", [c, d])


def test_cli_refusals_are_one_line_and_touch_nothing(tmp_path, capsys):
    a = _part(tmp_path, "a", (0,))
    old = tmp_path / "old"
    (old / "arms").mkdir(parents=True)
    (old / "arms" / "x").mkdir()
    (old / "arms" / "x" / "arm.json").write_text(json.dumps({"arm_id": "x", "warm_start": "diverse",
                                                             "objective": "grpo", "seed": 0}))
    torn = tmp_path / "torn"  # an arm.json without its seed: named, not a KeyError
    (torn / "arms" / "y").mkdir(parents=True)
    (torn / "arms" / "y" / "arm.json").write_text(json.dumps({"arm_id": "y", "warm_start": "diverse",
                                                              "objective": "grpo"}))
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("keep")
    for argv, message in (
        (["merge", str(a), "--out", str(foreign)], "not empty and not a `searchgym merge` folder"),
        (["merge", str(a), str(old), "--out", str(tmp_path / "m")], "no provenance"),
        (["merge", str(a), str(torn), "--out", str(tmp_path / "m")], "missing keys ['seed']"),
        (["merge", str(a), "--out", str(a), "--force"], "one of the runs"),  # even when forced
        (["merge", str(tmp_path / "missing"), "--out", str(tmp_path / "m")], "no arms"),
        (["merge", "--builds", str(a), "--out", str(tmp_path / "m")], "cannot be rebuilt (unknown preset 'test'"),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    assert (foreign / "mine.txt").read_text() == "keep" and sorted(p.name for p in foreign.iterdir()) == ["mine.txt"]
    assert not (tmp_path / "m").exists()


def _build(root: Path, name: str, sft_seed: int | None, seeds=(0, 1), others=(), config: str | None = None,
           sft_key: str | None = None) -> Path:
    """A run of the real smoke preset with ``--set sft.seed=K`` (none: the preset's SFT), its
    config hash the one `searchgym run` records for those overrides."""
    from searchgym.experiment import experiment_config_key
    from searchgym.presets import get_preset, overrides_note, with_overrides

    overrides = [*others, *([f"sft.seed={sft_seed}"] if sft_seed is not None else [])]
    key = config or experiment_config_key(with_overrides(get_preset("smoke"), overrides))
    run = _part(root, name, seeds, preset="smoke", config=key, warm_start_key=sft_key or f"sft-{sft_seed}")
    rep = json.loads((run / "report.json").read_text())
    rep["meta"]["preset"] = "smoke"
    if overrides:
        rep["meta"]["notes"] = [overrides_note(overrides)]
    (run / "report.json").write_text(json.dumps(rep))
    return run


def test_builds_pool_with_builds_resampled_above_seeds(tmp_path):
    runs = [_build(tmp_path, f"sft{k}", k if k else None) for k in range(3)]
    # the builds differ: build k's final token entropy is shifted by k (its questions alike)
    for k, run in enumerate(runs):
        for path in (run / "arms").glob("*/eval_questions.jsonl"):
            rows = [json.loads(line) for line in path.read_text().splitlines()]
            for r in rows:
                if r["step"] == 20:
                    r["eval/entropy"] = r.get("eval/entropy", r.get("entropy")) + 1.0 * k
                    r.pop("entropy", None)
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    before = {p: _snapshot(p) for p in runs}
    pooled = merge_runs(tmp_path / "pooled", runs, builds=True)
    assert {p: _snapshot(p) for p in runs} == before  # the runs are untouched
    assert sorted({a["build"] for a in pooled["arms"]}) == ["b0", "b1", "b2"]
    assert all(a["arm_id"].startswith(a["build"] + "-") for a in pooled["arms"])
    claim = next(c for c in pooled["claims"] if c["scope"] == "grpo / diverse" and c["metric"] == "entropy")
    assert claim["effect"]["n_builds"] == 3 and claim["effect"]["method"] == "builds>seeds>questions"
    # the same arms pooled as if the six (build, seed) replicates were independent seeds
    flat = tmp_path / "flat"
    for a in (tmp_path / "pooled" / "arms").iterdir():
        dst = flat / "arms" / a.name
        dst.mkdir(parents=True)
        for f in a.iterdir():
            dst.joinpath(f.name).write_bytes(f.read_bytes())
        meta = json.loads((dst / "arm.json").read_text())
        meta["seed"] = 10 * int(meta.pop("build")[1:]) + meta["seed"]
        (dst / "arm.json").write_text(json.dumps(meta))
    flat_claim = next(c for c in report.write_report(flat, meta={})["claims"]
                      if c["scope"] == "grpo / diverse" and c["metric"] == "entropy")
    assert flat_claim["effect"]["estimate"] == pytest.approx(claim["effect"]["estimate"])
    # resampling 3 builds instead of 6 independent units: wider when builds differ (sqrt(1.6)
    # = 1.26x for build-dominated spread, 3 x 2; 1.5x on these data)
    width = claim["effect"]["ci_high"] - claim["effect"]["ci_low"]
    assert width > 1.25 * (flat_claim["effect"]["ci_high"] - flat_claim["effect"]["ci_low"])
    md = (tmp_path / "pooled" / "report.md").read_text()
    assert "| builds |" in md and "SFT builds pooled" in md and "`sft.seed=2`" in md and "none (the preset)" in md
    assert "THIS REPORT POOLS 3 SFT BUILDS" in md and "build b1 = " in md
    # `searchgym report` re-analyses the pooled folder to the same numbers
    assert main(["report", str(tmp_path / "pooled")]) == 0
    again = json.loads((tmp_path / "pooled" / "report.json").read_text())
    assert again["claims"] == json.loads(json.dumps(pooled["claims"]))


def test_builds_that_are_not_one_experiment_apart_from_sft_are_refused(tmp_path):
    b0, b1 = _build(tmp_path, "b0", None), _build(tmp_path, "b1", 1)
    cases = [
        ([b0, _build(tmp_path, "lr", 2, others=["rl.optim.lr=0.001"])], "differ only in sft"),
        ([b0, _build(tmp_path, "liar", 2, config="0123456789abcdef")], "cannot verify"),
        ([b0, _build(tmp_path, "twin", 3, sft_key="sft-None")], "share the diverse warm start's SFT build"),
    ]
    for runs, message in cases:
        with pytest.raises(MergeRefused, match=message):
            merge_runs(tmp_path / "pooled", runs, builds=True)
    assert not (tmp_path / "pooled").exists()
    # without --builds the config difference is refused, with the way to pool them named
    with pytest.raises(MergeRefused, match="pool with --builds"):
        merge_runs(tmp_path / "plain", [b0, b1])


def test_pooled_report_shows_each_build_alone(tmp_path):
    runs = [_build(tmp_path, f"sft{k}", k if k else None, seeds=(0,)) for k in range(2)]
    pooled = merge_runs(tmp_path / "pooled", runs, builds=True)
    alone = report.write_report(runs[1], meta={})  # build b1's run reported on its own
    b1 = {(c["claim"], c["scope"], c["measurement"]): c for c in pooled["claims_by_build"]["b1"]}
    for c in alone["claims"]:
        mine = b1[(c["claim"], c["scope"], c["measurement"])]
        assert mine["verdict"] == c["verdict"]
        assert mine["effect"]["estimate"] == pytest.approx(c["effect"]["estimate"])
        assert mine["effect"]["ci_low"] == pytest.approx(c["effect"]["ci_low"])
    md = (tmp_path / "pooled" / "report.md").read_text()
    assert "## The claims in each SFT build alone, and pooled" in md and "| build b0 alone | build b1 alone |" in md


def test_committed_builds_report_is_its_parts_arms():
    """docs/results/small-builds pools committed runs: each of its arms is a part's arm, byte
    for byte, under its build label (nothing analysed here: the merge tests above cover that)."""
    root = Path(__file__).resolve().parents[1]
    pooled = root / "docs/results/small-builds"
    if not (pooled / "merge.json").is_file():
        pytest.skip("no committed builds report")
    builds = json.loads((pooled / "merge.json").read_text())["builds"]
    assert [b["build"] for b in builds] == ["b0", "b1", "b2"]
    seen = 0
    for b in builds:
        for arm in (root / b["run"] / "arms").iterdir():
            copy = pooled / "arms" / f"{b['build']}-{arm.name}"
            for name in ("metrics.jsonl", "eval.jsonl", "eval_questions.jsonl"):
                assert (copy / name).read_bytes() == (arm / name).read_bytes(), copy / name
            meta = json.loads((copy / "arm.json").read_text())
            assert meta["build"] == b["build"] and meta["provenance"] == json.loads((arm / "arm.json").read_text())["provenance"]
            seen += 1
    assert seen == len(list((pooled / "arms").iterdir())) == sum(e["arms"] for e in json.loads(
        (pooled / "merge.json").read_text())["parts"])
    rep = json.loads((pooled / "report.json").read_text())
    assert sorted(rep["claims_by_build"]) == ["b0", "b1", "b2"]
