"""`searchgym run --preset smoke` end to end: report, figures, finite numbers, cache reuse."""

from __future__ import annotations

import json
import math
import time

import pytest

from searchgym.cli import main

FIGURES = ("token_entropy_vs_step", "collapse_by_instrument")


def _numbers(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _numbers(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _numbers(v)
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield obj


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_smoke_run_end_to_end_and_cached_rerun(tmp_path, monkeypatch):
    import torch

    torch.set_num_threads(1)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "smoke"
    t0 = time.perf_counter()
    assert main(["run", "--preset", "smoke", "--out", str(out), "--no-progress"]) == 0
    first = time.perf_counter() - t0

    assert (out / "report.md").stat().st_size > 0
    rep = json.loads((out / "report.json").read_text())
    for name in FIGURES:
        assert (out / "figures" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    nums = list(_numbers(rep))
    assert nums and all(math.isfinite(x) for x in nums)
    assert rep["failed_arms"] == []
    assert len(rep["table"]) == 4  # 2 warm starts x 2 objectives, 1 seed
    for row in rep["table"]:
        assert 0.0 <= row["metrics"]["accuracy"]["final"]["estimate"] <= 1.0
        assert row["metrics"]["entropy"]["final"]["estimate"] > 0
        assert row["metrics"]["entropy"]["change"]["mde"] is not None
        assert set(row["collapse_criterion"]["train_entropy_ratio"]) == {"0"}  # computed for the seed (JSON keys)
        assert row["mechanism"]["verdict"] in ("reference", "equivalent to GRPO in this regime", "acts",
                                               "inconclusive")
    # every report carries the controls, computed on this run's rollouts
    c = rep["controls"]
    assert c["group_er_resid"]["collapse"]["passed"]  # forced collapse drives it to its floor
    for ws in ("diverse", "narrow"):
        assert c["entropy"]["null"][ws]["estimate"] is not None  # replica A vs B of the RL-start model
        assert c["group_er_resid"]["untrained"][ws]["estimate"] is not None
    assert any(cl["claim"] == "Token entropy collapses under RL" for cl in rep["claims"])
    md = (out / "report.md").read_text()
    assert md.index("## The seed's claims") < md.index("## Controls")
    # the per-question files the report was computed from are in every arm folder
    for d in (out / "arms").iterdir():
        steps = [json.loads(x)["step"] for x in (d / "eval.jsonl").read_text().splitlines()]
        assert steps == [0, 0, 4] and (d / "eval_questions.jsonl").stat().st_size > 0
    timings = json.loads((out / "timings.json").read_text())
    assert not any(s.get("cached") for s in timings["stages"].values())

    t1 = time.perf_counter()
    assert main(["run", "--preset", "smoke", "--out", str(out), "--no-progress"]) == 0
    second = time.perf_counter() - t1
    timings = json.loads((out / "timings.json").read_text())
    assert all(s["cached"] for n, s in timings["stages"].items() if n != "arms")
    arms = [json.loads(p.read_text()) for p in (out / "arms").glob("*/arm.json")]
    assert len(arms) == 4 and all(a["cached"] for a in arms)
    assert second < first / 3, (first, second)
    assert json.loads((out / "report.json").read_text())["table"] == rep["table"]

    # every arm records what makes it part of this experiment, and a run "merged" alone
    # (searchgym merge, for presets run whole seeds at a time) reports exactly what it did
    for a in arms:
        prov = a["provenance"]
        assert prov["preset"] == "smoke" and prov["warm_start_key"] == timings["stages"][f"sft-{a['warm_start']}"]["key"]
        assert len(prov["config"]) == 16 and len(prov["code"]) == 16 and len(prov["warm_start_sha256"]) == 64
    merged = tmp_path / "merged"
    assert main(["merge", str(out), "--out", str(merged)]) == 0
    again = json.loads((out / "report.json").read_text())
    assert json.loads((merged / "report.json").read_text())["claims"] == again["claims"]
