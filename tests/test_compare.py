"""``searchgym compare``: two runs of one experiment, their claims paired and every summary
figure computed by its stated rule, on small synthetic run folders with planted differences
(a verdict that flips, one that agrees, disjoint intervals, opposite verdicts, a claim in one
run only); the refusals when the runs are not one experiment; the command's outputs (never
over a file it did not write) and README block; and, where both exist, the committed runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from searchgym import compare
from searchgym.cli import main

ROOT = Path(__file__).resolve().parents[1]
META = {"name": "t", "preset": "small", "seeds": [0, 1], "objectives": ["grpo", "kl_cov"],
        "warm_starts": ["diverse", "narrow"], "machine": {"cpu": "Test CPU", "cpus": 2, "matmul_gflops_1thread": 1.0}}
PROVENANCE = {"preset": "small", "config": "cfg0", "code": "code0"}
WS_KEY = {"diverse": "sft-d", "narrow": "sft-n"}


def _claim(name: str, verdict: str, est: float | None, lo: float | None = None, hi: float | None = None,
           scope: str = "grpo / diverse") -> dict:
    return {"claim": name, "scope": scope, "metric": "entropy", "measurement": f"final - RL start, {name}",
            "effect": {"estimate": est, "ci_low": lo, "ci_high": hi, "mde": 0.05}, "direction": "decrease",
            "control": "null", "verdict": verdict, "verdict_reason": "planted", "margin": None}


# (A's claim, B's claim) per planted case; None: absent from that run
PLANTED = {
    "flips": (_claim("flips", "supported", -0.2, -0.3, -0.1), _claim("flips", "inconclusive at this power", -0.05,
                                                                     -0.2, 0.05)),
    "agrees": (_claim("agrees", "supported", -0.2, -0.3, -0.1), _claim("agrees", "supported", -0.25, -0.35, -0.15)),
    "disjoint": (_claim("disjoint", "supported", -0.5, -0.6, -0.4), _claim("disjoint", "supported", -0.15, -0.2, -0.1)),
    "opposite": (_claim("opposite", "supported", -0.2, -0.3, -0.1), _claim("opposite", "contradicted", 0.2, 0.1, 0.3)),
    "untested": (_claim("untested", "not tested (instrument failed: untrained model)", -0.1, -0.2, 0.0),
                 _claim("untested", "not tested (instrument failed: forced collapse)", -0.1, -0.2, 0.0)),
    "unmeasured": (_claim("unmeasured", "not measured (no data)", None),
                   _claim("unmeasured", "inconclusive at this power", 0.0, -0.1, 0.1)),
    "only_a": (_claim("only_a", "supported", -0.2, -0.3, -0.1), None),
    "only_b": (None, _claim("only_b", "contradicted", 0.2, 0.1, 0.3)),
}


def _write_run(run: Path, which: int, meta: dict | None = None, provenance: dict | None = None,
               ws_key: dict | None = None, claims: list[dict] | None = None) -> Path:
    """A run folder: report.json (claims, meta, run_time) and one arm.json per arm."""
    meta = {**META, **(meta or {})}
    claims = [c[which] for c in PLANTED.values() if c[which] is not None] if claims is None else claims
    run.mkdir(parents=True)
    (run / "report.json").write_text(json.dumps({"meta": meta, "run_time": {"from_scratch_s": 100.0 + which},
                                                 "claims": claims}), encoding="utf-8")
    for ws in meta["warm_starts"]:
        for obj in meta["objectives"]:
            for seed in meta["seeds"]:
                d = run / "arms" / f"{ws}-{obj}-s{seed}"
                d.mkdir(parents=True)
                prov = {**PROVENANCE, **(provenance or {}), "warm_start_key": (ws_key or WS_KEY)[ws],
                        "warm_start_sha256": f"{ws}-weights-{which}"}
                (d / "arm.json").write_text(json.dumps({"arm_id": d.name, "warm_start": ws, "objective": obj,
                                                        "seed": seed, "status": "ok", "provenance": prov}),
                                            encoding="utf-8")
    return run


@pytest.fixture
def runs(tmp_path):
    return _write_run(tmp_path / "a", 0), _write_run(tmp_path / "b", 1)


def _pair(cmp: dict, name: str) -> dict:
    rows = [p for p in cmp["pairs"] if p["claim"] == name]
    assert len(rows) == 1, name
    return rows[0]


def test_planted_pairs_and_summary(runs):
    a, b = runs
    cmp = compare.compare_runs(a, b)
    flips = _pair(cmp, "flips")
    assert not flips["verdicts_agree"] and flips["change"] == "decisive_in_one" and flips["intervals_overlap"]
    assert flips["a"]["verdict"] == "supported" and flips["b"]["verdict"] == "inconclusive at this power"
    assert flips["difference"] == pytest.approx(0.15)
    assert flips["a"]["effect"] == {"estimate": -0.2, "ci_low": -0.3, "ci_high": -0.1, "mde": 0.05}
    agrees = _pair(cmp, "agrees")
    assert agrees["verdicts_agree"] and agrees["intervals_overlap"] and agrees["difference"] == pytest.approx(-0.05)
    disjoint = _pair(cmp, "disjoint")
    assert disjoint["verdicts_agree"] and disjoint["intervals_overlap"] is False
    assert _pair(cmp, "opposite")["change"] == "opposite" and _pair(cmp, "opposite")["intervals_overlap"] is False
    # the kind is compared, not which control failed
    assert _pair(cmp, "untested")["verdicts_agree"]
    unmeasured = _pair(cmp, "unmeasured")
    assert unmeasured["change"] == "other" and unmeasured["intervals_overlap"] is None
    assert unmeasured["difference"] is None
    assert [c["claim"] for c in cmp["only_in_a"]] == ["only_a"] and [c["claim"] for c in cmp["only_in_b"]] == ["only_b"]
    s = cmp["summary"]
    assert s == {"compared": 6, "agreeing": 3, "agreeing_share": 0.5, "differing": 3, "decisive_in_one": 1,
                 "opposite": 1, "other_differences": 1, "intervals_compared": 5, "intervals_disjoint": 2}
    assert s["agreeing"] + s["decisive_in_one"] + s["opposite"] + s["other_differences"] == s["compared"]
    # swapping the runs swaps the signs, not the counts
    back = compare.compare_runs(b, a)
    assert back["summary"] == s and _pair(back, "flips")["difference"] == pytest.approx(-0.15)


def test_markdown_states_every_figure_with_its_rule(runs):
    cmp = compare.compare_runs(*runs)
    text = compare.render_replication(cmp)
    assert text.splitlines()[0] == compare.GENERATED
    rows = [line for line in text.splitlines() if line.startswith("| ") and "final - RL start" in line]
    assert len(rows) == 6
    flips = next(r for r in rows if "| flips |" in r)
    assert "-0.200 [-0.300, -0.100]" in flips and "+0.150" in flips and flips.endswith("| **no** |")
    assert "| **no** | supported | supported | yes |" in next(r for r in rows if "| disjoint |" in r)
    for needle in ("**verdicts agreeing**: 3 of 6 (50%); differing: 3", "**decisive in one run only**: 1 of 6",
                   "**opposite decisive verdicts**: 1 of 6", "**other differing verdicts**: 1 of 6",
                   "**intervals that do not overlap**: 2 of 5 pairs with both intervals (40%)",
                   "Only in A: only_a", "Only in B: only_b"):
        assert needle in text, needle
    for rule in compare.RULES.values():
        assert f"{rule}." in text
    assert "Test CPU" in text and "diverse differ" in text


@pytest.mark.parametrize("field,change", [
    ("meta.preset", {"meta": {"preset": "full"}}),
    ("provenance.code", {"provenance": {"code": "code1"}}),
    ("provenance.config", {"provenance": {"config": "cfg1"}}),
    ("meta.seeds", {"meta": {"seeds": [0, 2]}}),
    ("meta.objectives", {"meta": {"objectives": ["grpo", "clip_cov"]}}),
    ("meta.warm_starts", {"meta": {"warm_starts": ["diverse"]}}),
    ("provenance.warm_start_key", {"ws_key": {"diverse": "sft-d", "narrow": "sft-other"}}),
])
def test_refuses_another_experiment(tmp_path, field, change):
    a = _write_run(tmp_path / "a", 0)
    b = _write_run(tmp_path / "b", 1, **change)
    with pytest.raises(compare.CompareRefused) as exc:
        compare.compare_runs(a, b)
    msg = str(exc.value)
    assert f"{field} " in msg and "not the same experiment" in msg and "\n" not in msg


def test_objectives_order_does_not_matter(tmp_path):
    a = _write_run(tmp_path / "a", 0)
    b = _write_run(tmp_path / "b", 1, meta={"objectives": ["kl_cov", "grpo"], "seeds": [1, 0]})
    assert compare.compare_runs(a, b)["summary"]["compared"] == 6


def test_refuses_runs_without_provenance(runs):
    a, b = runs
    arm = next((b / "arms").iterdir()) / "arm.json"
    rec = json.loads(arm.read_text())
    rec["provenance"]["code"] = "other"
    arm.write_text(json.dumps(rec))
    with pytest.raises(compare.CompareRefused, match="2 different provenance.code"):
        compare.compare_runs(a, b)
    del rec["provenance"]
    arm.write_text(json.dumps(rec))
    with pytest.raises(compare.CompareRefused, match="no provenance.*provenance.code"):
        compare.compare_runs(a, b)
    for d in (b / "arms").iterdir():
        (d / "arm.json").unlink()
    with pytest.raises(compare.CompareRefused, match="no arms/.*provenance.code"):
        compare.compare_runs(a, b)


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(["compare", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


def _one_error_line(err: str, *needles: str) -> None:
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("searchgym compare: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, err)


@pytest.mark.parametrize("case", ["missing_folder", "no_report", "not_json", "no_claims", "claim_without_verdict",
                                  "not_same_experiment"])
def test_cli_bad_input_is_one_line_exit_2(tmp_path, capsys, runs, case):
    a, b = runs
    report = b / "report.json"
    needles = [str(report)]
    if case == "missing_folder":
        b, needles = tmp_path / "nope", [str(tmp_path / "nope"), "no such folder"]
    elif case == "no_report":
        report.unlink()
        needles.append("missing")
    elif case == "not_json":
        report.write_text('{"claims": [', encoding="utf-8")
        needles.append("not valid JSON")
    elif case == "no_claims":
        report.write_text('{"meta": {}}', encoding="utf-8")
        needles.append("'claims'")
    elif case == "claim_without_verdict":
        rep = json.loads(report.read_text())
        del rep["claims"][2]["verdict"]
        report.write_text(json.dumps(rep), encoding="utf-8")
        needles.append("claims[2] has no text 'verdict'")
    else:
        arm = next((b / "arms").iterdir()) / "arm.json"
        for d in (b / "arms").iterdir():
            rec = json.loads((d / "arm.json").read_text())
            rec["provenance"]["code"] = "code9"
            (d / "arm.json").write_text(json.dumps(rec))
        needles = ["provenance.code", "code9", str(arm.parents[2])]
    rc, out, err = _cli(capsys, a, b)
    assert rc == 2 and out == ""
    _one_error_line(err, *needles)


def test_cli_prints_and_writes_only_its_own_files(tmp_path, capsys, runs):
    a, b = runs
    out, js = b / "replication.md", tmp_path / "cmp.json"
    rc, stdout, _ = _cli(capsys, a, b, "--out", out, "--json", js)
    assert rc == 0 and stdout.startswith("## Replication") and "| flips |" in stdout
    assert out.read_text(encoding="utf-8") == compare.render_replication(compare.compare_runs(a, b))
    assert json.loads(js.read_text())["summary"]["compared"] == 6
    assert _cli(capsys, a, b, "--out", out, "--json", js)[0] == 0  # its own files: rewritten
    foreign = tmp_path / "notes.md"
    foreign.write_text("# my notes\n", encoding="utf-8")
    rc, _, err = _cli(capsys, a, b, "--out", foreign)
    assert rc == 2 and foreign.read_text(encoding="utf-8") == "# my notes\n"
    _one_error_line(err, str(foreign), "refusing to overwrite")
    foreign_json = tmp_path / "other.json"
    foreign_json.write_text('{"x": 1}', encoding="utf-8")
    rc, stdout, err = _cli(capsys, a, b, "--json", foreign_json, "--out", tmp_path / "new.md")
    assert rc == 2 and foreign_json.read_text(encoding="utf-8") == '{"x": 1}' and stdout == ""
    assert not (tmp_path / "new.md").exists()  # refused before anything is written
    _one_error_line(err, str(foreign_json))
    assert _cli(capsys, a, b, "--out", foreign, "--force")[0] == 0
    assert compare.is_replication_file(foreign)


def test_cli_readme_block(tmp_path, capsys, runs):
    a, b = runs
    cmp = compare.compare_runs(a, b)
    begin = compare.README_BEGIN_FOR.format(source=compare.readme_source(cmp))
    readme = tmp_path / "README.md"
    plain = "# title\n\nprose\n"
    readme.write_text(plain, encoding="utf-8")
    rc, stdout, _ = _cli(capsys, a, b, "--readme", readme)
    assert rc == 2 and readme.read_text(encoding="utf-8") == plain  # nothing appended
    msg = stdout.strip().splitlines()[-1]
    assert begin in msg and compare.README_END in msg and "README not changed" in msg
    readme.write_text(f"# title\n\n{begin}\nold text\n{compare.README_END}\n\nafter\n", encoding="utf-8")
    assert _cli(capsys, a, b, "--readme", readme)[0] == 0
    text = readme.read_text(encoding="utf-8")
    block = text.split(begin)[1].split(compare.README_END)[0]
    assert "old text" not in block and "| flips |" in block and "**verdicts agreeing**: 3 of 6" in block
    assert text.startswith("# title\n\n") and text.endswith(f"{compare.README_END}\n\nafter\n")
    assert f"[`{cmp['runs']['a']['path']}`]({cmp['runs']['a']['path']}/report.md)" in block
    assert _cli(capsys, a, b, "--readme", readme)[0] == 0 and readme.read_text(encoding="utf-8") == text
    # another comparison's block is not this one's
    other = tmp_path / "other.md"
    other.write_text(f"{compare.README_BEGIN_FOR.format(source='x vs y')}\nkeep\n{compare.README_END}\n")
    assert _cli(capsys, a, b, "--readme", other)[0] == 2 and "keep" in other.read_text()


def _committed_pair() -> tuple[Path, Path]:
    amd = ROOT / "docs/results/small-replicas/amd-epyc-c521e66e"
    a = amd if amd.is_dir() else ROOT / "docs/results/small"
    b = ROOT / "runs/small" if (ROOT / "runs/small/report.json").is_file() else ROOT / "docs/results/small"
    return a, b


def test_committed_runs():
    a, b = _committed_pair()
    if a == b or not (a / "report.json").is_file() or not (b / "report.json").is_file():
        pytest.skip("two runs of the small experiment are not both here")
    try:
        cmp = compare.compare_runs(a, b)
    except compare.CompareRefused as exc:
        pytest.skip(f"{a} and {b} are no longer one experiment: {exc}")
    s = cmp["summary"]
    n_a = len(json.loads((a / "report.json").read_text())["claims"])
    assert s["compared"] == n_a - len(cmp["only_in_a"]) > 0
    assert s["agreeing"] + s["differing"] == s["compared"]
    assert s["agreeing"] + s["decisive_in_one"] + s["opposite"] + s["other_differences"] == s["compared"]
    assert s["agreeing"] == sum(p["a"]["verdict"].split(" (")[0] == p["b"]["verdict"].split(" (")[0]
                                for p in cmp["pairs"])
    assert 0 <= s["intervals_disjoint"] <= s["intervals_compared"] <= s["compared"]
