"""The report on synthetic arm files of known structure: planted effects are found with the
right verdict, null effects are not, a metric that fails a control is never used, and every
number is finite or null."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pytest

from searchgym import markdown, report
from searchgym.retrieval.fileio import atomic_write_json

QUESTIONS = 48
SEEDS = (0, 1, 2)
# per objective: (token-entropy change, strategy-entropy change, accuracy change)
SPECS = {
    "grpo": (-0.5, -0.4, 0.10),
    "kl_cov": (-0.1, 0.0, 0.10),
}


def _question_values(rng, ws: str, obj: str, seed: int, step: int, replica: str) -> list[dict]:
    dh, ds, da = SPECS[obj]
    frac = step / 20
    seed_fx = 0.02 * seed
    rows = []
    for q in range(QUESTIONS):
        q_fx = 0.1 * np.sin(q)  # question effect shared by every arm (pairing removes it)
        noise = rng.normal(0, 0.05, size=6)
        h = 1.0 + q_fx + seed_fx + dh * frac + noise[0]
        rows.append({
            "step": step, "replica": replica, "question": f"q{q}",
            "accuracy": float(np.clip(0.5 + q_fx + da * frac + noise[1], 0, 1)),
            "entropy": float(max(0.0, h)),
            "group_er_resid": float(4.0 + q_fx + 0.01 * noise[2]),  # does not move
            "aligned_er": float(3.0 + q_fx + 0.01 * noise[3]),
            "strategy_entropy": float(max(0.0, 0.8 + (0.2 if ws == "diverse" else 0.0) + ds * frac + noise[4])),
            "response_length": float(40 + 5 * noise[5]),
            # a broken instrument: it stays put under forced collapse (see the controls below)
            "vendi": float(2.0 + noise[5]),
            "trained_tf/group_er_resid": float(4.0 + q_fx), "untrained_tf/group_er_resid": float(2.0 + q_fx),
            "trained_tf/aligned_er": float(3.0 + q_fx), "untrained_tf/aligned_er": float(1.5 + q_fx),
        })
    return rows


def _write_arm(run: Path, ws: str, obj: str, seed: int) -> None:
    d = run / "arms" / f"{ws}-{obj}-s{seed}"
    d.mkdir(parents=True)
    qrecs, recs = [], []
    for step, replica in ((0, "A"), (0, "B"), (10, "A"), (20, "A")):
        # the RL start is shared by the objectives of a seed: its stream does not depend on obj
        # zlib.crc32, not hash(): str hashes are salted per process, so the synthetic data (and
        # whether the replica null control passes by chance) changed from run to run
        rng = np.random.default_rng([zlib.crc32(ws.encode()), seed, step, ord(replica),
                                     0 if step == 0 else zlib.crc32(obj.encode())])
        rows = _question_values(rng, ws, obj if step else "grpo", seed, step, replica)
        qrecs += rows
        summary = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k not in ("step", "replica", "question")}
        controls = {"forced_collapse": {
            "strategy_entropy": {"original": 0.8, "collapsed": 0.0, "ratio": 0.0, "passed": True},
            "group_er_resid": {"original": 4.0, "collapsed": 0.0, "ratio": 0.0, "passed": True},
            "aligned_er": {"original": 3.0, "collapsed": 0.1, "ratio": 0.033, "passed": True},
            "vendi": {"original": 2.0, "collapsed": 1.9, "ratio": 0.9, "passed": False},
        }}
        recs.append({"step": step, "replica": replica, **summary, "controls": controls})
    steps = [{"step": t, "entropy_mean": 1.0 + SPECS[obj][0] * t / 20, "time_step_s": 1.0, "metrics_time_s": 0.01}
             for t in range(1, 21)]
    for name, rs in (("metrics.jsonl", steps), ("eval.jsonl", recs), ("eval_questions.jsonl", qrecs)):
        (d / name).write_text("".join(json.dumps(r) + "\n" for r in rs), encoding="utf-8")
    atomic_write_json(d / "arm.json", {"arm_id": d.name, "warm_start": ws, "objective": obj, "seed": seed,
                                       "status": "ok", "error": None, "wall_s": 12.0})


@pytest.fixture(scope="module")
def analysis(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    for ws in ("diverse", "narrow"):
        for obj in SPECS:
            for seed in SEEDS:
                _write_arm(run, ws, obj, seed)
    failed = run / "arms" / "narrow-clip_cov-s0"
    failed.mkdir()
    atomic_write_json(failed / "arm.json", {"arm_id": failed.name, "warm_start": "narrow", "objective": "clip_cov",
                                            "seed": 0, "status": "failed", "error": "RuntimeError: boom"})
    rep = report.write_report(run, meta={"name": "synthetic", "preset": "test"})
    return run, rep


def _claim(rep, claim: str, scope: str, metric: str | None = None) -> dict:
    rows = [c for c in rep["claims"] if c["claim"] == claim and c["scope"] == scope
            and (metric is None or c["metric"] == metric)]
    assert len(rows) == 1, (claim, scope, [(c["claim"], c["scope"]) for c in rep["claims"]])
    return rows[0]


def test_planted_effects_get_their_verdicts(analysis):
    _, rep = analysis
    for ws in ("diverse", "narrow"):
        ent = _claim(rep, "Token entropy collapses under RL", f"grpo / {ws}")
        assert ent["verdict"] == "supported"
        assert ent["effect"]["ci_high"] < 0 and ent["effect"]["estimate"] == pytest.approx(-0.5, abs=0.05)
        assert _claim(rep, "Strategies collapse under RL", f"grpo / {ws}")["verdict"] == "supported"
        rank = _claim(rep, "Hidden-state rank does not collapse", f"grpo / {ws}", "group_er_resid")
        assert rank["verdict"] == "supported"  # tight data, true change 0: equivalent within 10 %
    # kl_cov keeps strategy entropy (+0.4 vs grpo) at the same accuracy
    for ws in ("diverse", "narrow"):
        c = _claim(rep, "kl_cov keeps strategy diversity at equal accuracy", f"kl_cov / {ws}")
        assert c["verdict"] == "supported", c
        assert c["accuracy_equivalence"]["equivalent"]
    # diverse - narrow strategy entropy at the end is +0.2 in every seed
    assert _claim(rep, "Diverse SFT keeps strategy breadth through RL", "grpo")["verdict"] == "supported"


def test_controls_are_computed_and_a_failed_instrument_is_not_used(analysis):
    run, rep = analysis
    c = rep["controls"]
    assert c["strategy_entropy"]["collapse"]["passed"] and c["strategy_entropy"]["usable"]
    assert not c["vendi"]["collapse"]["passed"] and not c["vendi"]["usable"]
    assert "forced collapse" in c["vendi"]["failed"]
    # null: replica A vs B of one model differ only by noise -> the interval contains 0
    for ws in ("diverse", "narrow"):
        assert c["entropy"]["null"][ws]["passed"]
        assert c["group_er_resid"]["untrained"][ws]["passed"]  # trained 4.0 vs untrained 2.0
    md = (run / "report.md").read_text(encoding="utf-8")
    assert md.index("## The seed's claims") < md.index("## Controls")
    assert "Vendi score (trajectory text)" in md and "NO: forced collapse" in md


def test_every_comparison_states_its_smallest_detectable_difference(analysis):
    _, rep = analysis
    for row in rep["table"]:
        for name, m in row["metrics"].items():
            if m["change"]["estimate"] is not None:
                assert m["change"]["mde"] is not None and m["change"]["mde"] > 0, name
    assert rep["failed_arms"] == [{"arm_id": "narrow-clip_cov-s0", "error": "RuntimeError: boom"}]


def test_report_json_is_strict_and_readme_block_is_replaced(analysis, tmp_path):
    run, rep = analysis
    text = (run / "report.json").read_text(encoding="utf-8")
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-finite constant {c} in report.json"))
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{markdown.README_BEGIN}\nold\n{markdown.README_END}\n\nafter\n", encoding="utf-8")
    assert markdown.update_readme(readme, rep, "docs/results/x/report.md")
    new = readme.read_text(encoding="utf-8")
    assert "old" not in new and "after" in new and "Token entropy collapses under RL" in new
    # the collapse criterion per arm group is generated into the block too (never written by hand)
    begin = markdown.README_BEGIN_FOR.format(source="docs/results/x/report.md")
    assert "| met in every seed |" in new.split(begin)[1].split(markdown.README_END)[0]
    plain = tmp_path / "plain.md"
    plain.write_text("no block\n", encoding="utf-8")
    assert not markdown.update_readme(plain, rep, "x") and plain.read_text(encoding="utf-8") == "no block\n"


def test_readme_blocks_are_one_per_report(analysis, tmp_path):
    """Each report updates only the block that names it; the untagged older block is taken
    (and tagged) only when it is the one block, so a second report never overwrites it."""
    _, rep = analysis
    small, full = "docs/results/small/report.md", "docs/results/full/report.md"
    readme = tmp_path / "README.md"
    readme.write_text(f"{markdown.README_BEGIN}\nold small\n{markdown.README_END}\n", encoding="utf-8")
    assert markdown.update_readme(readme, rep, small)  # the older block becomes small's
    text = readme.read_text(encoding="utf-8")
    assert markdown.README_BEGIN_FOR.format(source=small) in text and "old small" not in text
    assert not markdown.update_readme(readme, rep, full) and readme.read_text(encoding="utf-8") == text
    full_block = f"{markdown.README_BEGIN_FOR.format(source=full)}\nold full\n{markdown.README_END}\n"
    readme.write_text(full_block + "\nbetween\n\n" + text, encoding="utf-8")
    assert markdown.update_readme(readme, rep, full)
    new = readme.read_text(encoding="utf-8")
    assert "old full" not in new and new.endswith(text) and "between" in new
    assert new.count(f"Claims table of [`{full}`]") == 1 and new.count(f"Claims table of [`{small}`]") == 1
    assert markdown.update_readme(readme, rep, small) and readme.read_text(encoding="utf-8") == new
    # two untagged blocks: neither is anyone's
    two = tmp_path / "two.md"
    two.write_text(f"{markdown.README_BEGIN}\na\n{markdown.README_END}\n{markdown.README_BEGIN}\nb\n{markdown.README_END}\n",
                   encoding="utf-8")
    assert not markdown.update_readme(two, rep, small)


def test_figure_series_keep_a_metric_that_collapsed_to_zero():
    """A metric at 0 at the end (every question down to one strategy) is plotted as 0, not
    as a gap; an arm without an RL-start value has no ratio and is left out; steps are those
    every remaining arm has."""
    from searchgym.analysis import ArmData
    from searchgym.figures import relative_to_start

    def arm(seed: int, values: dict) -> ArmData:
        return ArmData(f"diverse-grpo-s{seed}", "diverse", "grpo", seed,
                       evals=[{"step": s, "replica": "A", "eval/strategy_entropy": v} for s, v in values.items()])

    arms = [arm(0, {0: 0.4, 16: 0.2, 32: 0.0}), arm(1, {0: 0.5, 16: 0.5, 32: 0.0}), arm(2, {0: 0.0, 32: 0.3}),
            arm(3, {16: 0.1, 32: 0.1})]
    steps, ys = relative_to_start(arms, "strategy_entropy")
    assert steps == [0, 16, 32] and ys == pytest.approx([1.0, 0.75, 0.0])
    assert relative_to_start([arm(4, {0: 0.4, 32: None})], "strategy_entropy") == ([0], [1.0])
    assert relative_to_start([], "strategy_entropy") == ([], [])
