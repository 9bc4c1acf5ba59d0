"""``searchgym contrast``: two runs that differ in a setting, paired arm by arm; a planted
effect of the setting is found where it was planted and nowhere else, a pooled pair is
paired by its weights whatever the build labels say, and runs that cannot be paired (a
replication, other code, another RL start, nothing in common) are refused in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_merge import _part

from searchgym import contrast
from searchgym.cli import main
from searchgym.presets import overrides_note

SHIFT = -0.3  # the setting's planted effect on grpo / diverse token entropy at the end


def _with_setting(src: Path, dst: Path, note: list[str], shift: float = SHIFT, config: str = "c0nf-b") -> Path:
    """A copy of run ``src`` whose arms record another config and whose grpo / diverse final
    token entropy moved by ``shift`` (the RL start untouched)."""
    shutil.copytree(src, dst)
    for d in (dst / "arms").iterdir():
        arm = json.loads((d / "arm.json").read_text())
        arm["provenance"]["config"] = config
        (d / "arm.json").write_text(json.dumps(arm))
        if (arm["warm_start"], arm["objective"]) == ("diverse", "grpo"):
            rows = [json.loads(line) for line in (d / "eval_questions.jsonl").read_text().splitlines()]
            for r in rows:
                if r["step"] == 20:
                    r["entropy"] += shift
            (d / "eval_questions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    rep = json.loads((dst / "report.json").read_text())
    rep["meta"]["notes"] = [overrides_note(note)]
    (dst / "report.json").write_text(json.dumps(rep))
    return dst


@pytest.fixture
def runs(tmp_path):
    a = _part(tmp_path, "a", (0, 1, 2))
    return a, _with_setting(a, tmp_path / "b", ["rl.optim.warmup_steps=5", "sft.seed=1"])


def _row(c: dict, ws: str, obj: str) -> dict:
    return next(r for r in c["rows"] if (r["warm_start"], r["objective"]) == (ws, obj))


def test_the_planted_effect_is_found_where_it_was_planted(runs):
    a, b = runs
    # and one of B's arms ends its training rollouts with more entropy than it started with
    steps = b / "arms" / "narrow-kl_cov-s0" / "metrics.jsonl"
    rows = [json.loads(line) for line in steps.read_text().splitlines()]
    for r in rows[-2:]:
        r["entropy_mean"] = 1.5
    steps.write_text("".join(json.dumps(r) + "\n" for r in rows))
    c = contrast.contrast_runs(a, b)
    assert c["pairs"] == 12 and c["unpaired"] == {"a": 0, "b": 0}
    assert c["settings_a"] == [] and c["settings_b"] == ["rl.optim.warmup_steps=5"]  # sft.* names a build
    e = _row(c, "diverse", "grpo")["metrics"]["entropy"]["b_minus_a"]
    assert e["estimate"] == pytest.approx(SHIFT) and e["ci_low"] <= SHIFT <= e["ci_high"] and e["ci_high"] < 0
    assert e["reading"] == "B lower" and e["n_seeds"] == 3
    for ws, obj in (("narrow", "grpo"), ("diverse", "kl_cov"), ("narrow", "kl_cov")):
        e = _row(c, ws, obj)["metrics"]["entropy"]["b_minus_a"]
        assert e["estimate"] == 0 and e["reading"] == "no detectable difference"
    assert c["summary"]["accuracy"] == {"B higher": 0, "B lower": 0, "no detectable difference": 4, "equal": 4}
    assert c["summary"]["training_entropy_a"] == {"rose": 0, "met": 0, "arms": 12}
    assert c["summary"]["training_entropy_b"] == {"rose": 1, "met": 0, "arms": 12}
    assert _row(c, "narrow", "kl_cov")["training_entropy"]["b"]["ratios"]["w0-narro/s0"] > 1
    acc = _row(c, "diverse", "grpo")["metrics"]["accuracy"]["b_minus_a"]
    assert acc["reading"] == "no detectable difference; equal within +-0.05" and acc["equivalence"]["equivalent"]
    text = contrast.render(c)
    assert text.startswith(contrast.GENERATED + "\n") and "| grpo | diverse | 3 (1) | token entropy (nats) |" in text
    assert all(f"**{k}**" in text for k in contrast.RULES)


def test_pooled_builds_pair_by_weights_not_by_label(tmp_path):
    """Two builds (different warm-start weights); B lists them in the other order, so its
    build labels are swapped: the pairs, and every figure, are the same."""
    a = _part(tmp_path, "a", (0, 1), weights="w0")
    for d in list((a / "arms").iterdir()):  # a second build: same seeds, other weights
        arm = json.loads((d / "arm.json").read_text())
        twin = a / "arms" / f"b1-{d.name}"
        shutil.copytree(d, twin)
        arm.update(arm_id=twin.name, build="b1")
        arm["provenance"]["warm_start_sha256"] = "w1-" + arm["warm_start"]
        (twin / "arm.json").write_text(json.dumps(arm))
        arm0 = json.loads((d / "arm.json").read_text())
        (d / "arm.json").write_text(json.dumps({**arm0, "build": "b0"}))
    b = _with_setting(a, tmp_path / "b", ["rl.optim.lr=1e-3"])
    for d in (b / "arms").iterdir():
        arm = json.loads((d / "arm.json").read_text())
        arm["build"] = {"b0": "b1", "b1": "b0"}[arm["build"]]
        (d / "arm.json").write_text(json.dumps(arm))
    c = contrast.contrast_runs(a, b)
    row = _row(c, "diverse", "grpo")
    assert c["pairs"] == 16 and row["pairs"] == 4 and row["builds"] == 2
    e = row["metrics"]["entropy"]["b_minus_a"]
    assert e["n_builds"] == 2 and e["estimate"] == pytest.approx(SHIFT)


@pytest.mark.parametrize("case,message", [
    ("same_config", "replication"),
    ("code", "arm code fingerprint"),
    ("start", "different RL-start evaluations"),
    ("weights", "no arm of"),
    ("eval", "evaluate differently"),
])
def test_runs_that_cannot_be_paired_are_refused(tmp_path, case, message):
    a = _part(tmp_path, "a", (0, 1))
    b = _with_setting(a, tmp_path / "b", ["rl.optim.lr=1e-3"], config="c0nf" if case == "same_config" else "c0nf-b")
    for d in (b / "arms").iterdir():
        arm = json.loads((d / "arm.json").read_text())
        if case == "code":
            arm["provenance"]["code"] = "c0de-9"
        if case == "weights":
            arm["provenance"]["warm_start_sha256"] = "other"
        (d / "arm.json").write_text(json.dumps(arm))
        if case == "start":
            rows = [json.loads(line) for line in (d / "eval_questions.jsonl").read_text().splitlines()]
            rows[0]["entropy"] += 0.01
            (d / "eval_questions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if case == "eval":
        rep = json.loads((b / "report.json").read_text())
        rep["meta"]["eval"] = {"questions": 32}
        (b / "report.json").write_text(json.dumps(rep))
    with pytest.raises(contrast.ContrastRefused, match=message):
        contrast.contrast_runs(a, b)


def _cli(capsys, *argv) -> tuple[int, str, str]:
    rc = main(["contrast", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_prints_writes_its_own_files_and_refuses_in_one_line(tmp_path, capsys, runs):
    a, b = runs
    out, js = tmp_path / "contrast.md", tmp_path / "contrast.json"
    rc, stdout, _ = _cli(capsys, a, b, "--out", out, "--json", js)
    assert rc == 0 and stdout.startswith("\n# Contrast") and "B lower" in stdout
    assert out.read_text(encoding="utf-8") == contrast.render(contrast.contrast_runs(a, b))
    assert json.loads(js.read_text())["format"] == contrast.FORMAT
    assert _cli(capsys, a, b, "--out", out, "--json", js)[0] == 0  # its own files: rewritten
    foreign = tmp_path / "notes.md"
    foreign.write_text("# mine\n", encoding="utf-8")
    rc, _, err = _cli(capsys, a, b, "--out", foreign)
    assert rc == 2 and foreign.read_text(encoding="utf-8") == "# mine\n" and "refusing to overwrite" in err
    rc, stdout, err = _cli(capsys, a, a)
    lines = err.strip().splitlines()
    assert rc == 2 and stdout == "" and len(lines) == 1 and "replication" in lines[0] and "Traceback" not in err
    (b / "report.json").unlink()
    rc, _, err = _cli(capsys, a, b)
    assert rc == 2 and "no report.json" in err and len(err.strip().splitlines()) == 1


def test_cli_readme_block(tmp_path, capsys, runs):
    a, b = runs
    readme = tmp_path / "README.md"
    readme.write_text("# r\n\nno block\n", encoding="utf-8")
    rc, out, _ = _cli(capsys, a, b, "--readme", readme)
    assert rc == 2 and "no generated contrast block" in out and readme.read_text() == "# r\n\nno block\n"
    begin = contrast.README_BEGIN_FOR.format(source=f"{a} vs {b}")
    readme.write_text(f"# r\n\n{begin}\nold\n{contrast.README_END}\ntail\n", encoding="utf-8")
    assert _cli(capsys, a, b, "--readme", readme)[0] == 0
    text = readme.read_text()
    assert "old" not in text and text.endswith(f"{contrast.README_END}\ntail\n") and "#### B - A at the end of RL" in text
    assert "| grpo | diverse | 3 (1) | token entropy (nats) |" in text
