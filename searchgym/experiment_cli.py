"""``searchgym run``: the main job (world -> index -> demos -> model -> SFT warm starts ->
RL arms -> evaluation -> report), cached by content so a rerun resumes; ``searchgym report``:
re-analyse a run folder; ``searchgym merge``: one report over several runs' arms;
``searchgym compare``: verdict stability between two runs of one experiment;
``searchgym contrast``: what a change of setting does, paired arm by arm.

The handlers import the pipeline and the report (scipy, matplotlib, torch: ~0.6 s and
more) inside them, so ``searchgym --help`` does not pay for them."""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from searchgym.presets import get_preset, overrides_note, with_arms, with_overrides


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers, got {text!r}") from None


def add_commands(subparsers) -> None:
    p = subparsers.add_parser(
        "run",
        help="run the main experiment (warm start x objective x seed) and write its report",
        description="Build the world and index, the demonstrations and tiny model, two SFT warm starts, "
        "then the RL arms (warm start x objective x seed), evaluate and write runs/NAME/report.md. "
        "Every stage is cached by content hash under OUT/cache, so a rerun resumes where it stopped.",
    )
    p.add_argument("--preset", choices=("smoke", "pilot", "small", "full"), default="small",
                   help="smoke: about 2 minutes (tests); pilot: plain GRPO from the diverse warm start, to find the "
                   "collapse regime; small: the 2-core main job (default); full: all objectives, more seeds, longer RL")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override a preset field, e.g. --set rl.optim.lr=3e-4 --set eval.questions=32 (repeatable; "
                   "recorded in the report)")
    p.add_argument("--out", default=None, help="run folder (default: runs/<preset>)")
    p.add_argument("--arms", nargs="+", metavar="OBJECTIVE", default=None,
                   help="objectives to run (default: the preset's), e.g. grpo clip_cov kl_cov")
    p.add_argument("--warm-starts", nargs="+", choices=("diverse", "narrow"), default=None,
                   help="warm starts to run (default: both)")
    p.add_argument("--seeds", type=_int_list, default=None, help="seeds, e.g. '0 1' or 0,1,2")
    p.add_argument("--workers", type=int, default=None,
                   help="arm worker processes (default: the preset's; each gets cpus/workers torch threads)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_run)

    r = subparsers.add_parser(
        "report",
        help="re-analyse a run folder's per-arm files and rewrite its report (no training)",
        description="Read RUN/arms/*/ (arm.json, metrics.jsonl, eval.jsonl, eval_questions.jsonl), recompute "
        "every number, control and verdict, and rewrite RUN/report.md, report.json and figures. With --readme, "
        "also replace the README's generated claims block for this report (its begin marker names "
        "RUN/report.md) with its claims table.",
    )
    r.add_argument("run_dir", help="a run folder (e.g. runs/small or docs/results/small)")
    r.add_argument("--readme", default=None, help="README to update (its generated claims block for this report)")
    r.set_defaults(func=_report)

    m = subparsers.add_parser(
        "merge",
        help="one report over the arms of several runs of one experiment (a long preset run in parts, whole seeds "
        "at a time)",
        description="Check that the runs are one experiment (same preset, config hash, arm code and SFT stage keys "
        "in every arm.json's provenance; disjoint arms; one warm-start build per seed), copy their arms into "
        "OUT/arms and write OUT/report.md over all of them (searchgym.merge). The runs are not changed.",
    )
    m.add_argument("runs", nargs="+", metavar="RUN", help="run folders, e.g. runs/full-s01 docs/results/full-parts/s234")
    m.add_argument("--out", required=True, help="the merged run folder (new, empty, or an earlier merge)")
    m.add_argument("--readme", default=None, help="README to update (its generated claims block for this report)")
    m.add_argument("--builds", action="store_true",
                   help="pool runs that differ only in their SFT config (each run its own warm-start build, e.g. "
                   "--set sft.seed=K): the report's replicate becomes (build, seed) and its intervals resample "
                   "builds, then seeds, then questions")
    m.set_defaults(func=_merge)

    c = subparsers.add_parser(
        "compare",
        help="verdict stability between two runs of the same experiment (e.g. the same run on another CPU)",
        description="Check that RUN_A and RUN_B are one experiment (same preset, arm code fingerprint, config hash, "
        "seeds, objectives, warm starts and SFT stage keys), pair their report.json claims by (claim, scope, "
        "measurement) and print, per claim, both effects with their 95% intervals, both verdicts, whether they "
        "agree and whether the intervals overlap, then summary figures, each with the rule that computed it "
        "(searchgym.compare). Nothing is trained or re-analysed.",
    )
    c.add_argument("run_a", metavar="RUN_A", help="a run folder with report.json and arms/ (e.g. docs/results/small)")
    c.add_argument("run_b", metavar="RUN_B", help="another run of the same experiment (e.g. runs/small)")
    c.add_argument("--out", default=None, metavar="FILE",
                   help="also write the comparison as markdown (e.g. RUN_B/replication.md)")
    c.add_argument("--json", default=None, metavar="FILE", help="also write the comparison as JSON")
    c.add_argument("--readme", default=None,
                   help="README to update (its generated replication block for RUN_A vs RUN_B)")
    c.set_defaults(func=_compare)

    k = subparsers.add_parser(
        "contrast",
        help="what a change of setting does: RUN_B - RUN_A at the end of RL, paired arm by arm",
        description="Pair the arms of RUN_A and RUN_B (runs or pooled reports of one preset and arm code that "
        "differ in a --set setting) by warm start, objective, seed and warm-start weights, check that each pair's "
        "RL-start evaluation is the same, and print B - A at the end of RL per warm start, objective and metric "
        "with 95% intervals (builds, then seeds, then questions), the smallest detectable difference, a reading "
        "by a stated rule, and each arm's training-entropy ratio (searchgym.contrast). Nothing is trained.",
    )
    k.add_argument("run_a", metavar="RUN_A", help="the reference run folder (report.json and arms/)")
    k.add_argument("run_b", metavar="RUN_B", help="the run with the changed setting")
    k.add_argument("--out", default=None, metavar="FILE", help="also write the contrast as markdown")
    k.add_argument("--json", default=None, metavar="FILE", help="also write the contrast as JSON")
    k.add_argument("--readme", default=None,
                   help="README to update (its generated contrast block for RUN_A vs RUN_B)")
    k.set_defaults(func=_contrast)


def _merge(args) -> int:
    from searchgym.merge import merge_runs

    rep = merge_runs(args.out, args.runs, builds=args.builds)
    print(f"report: {Path(args.out) / 'report.md'} ({len(rep['arms'])} arms from {len(args.runs)} run(s)"
          f"{' (one SFT build each)' if args.builds else ''}, {len(rep['claims'])} claims)")
    return _update_readme(args.readme, rep, Path(args.out))


def _update_readme(readme: str | None, rep: dict, run: Path) -> int:
    from searchgym.markdown import update_readme

    if not readme:
        return 0
    source = str(run / "report.md")
    return _readme_done(readme, update_readme(readme, rep, source), "claims",
                        f"for {source} (<!-- claims:begin {source} ... -->)")


def _readme_done(readme: str, updated: bool, block: str, missing: str) -> int:
    """Say what ``--readme`` did to the README's generated ``block``; 2 when it had none."""
    if not updated:
        print(f"{readme}: no generated {block} block {missing}; README not changed")
        return 2
    print(f"updated the {block} block of {readme}")
    return 0


def _compare(args) -> int:
    from searchgym import compare

    cmp = compare.compare_runs(args.run_a, args.run_b)
    return _two_run_outputs(args, compare, cmp, compare.render_replication(cmp), "compare", "replication")


def _contrast(args) -> int:
    from searchgym import contrast

    result = contrast.contrast_runs(args.run_a, args.run_b)
    return _two_run_outputs(args, contrast, result, contrast.render(result), "contrast", "contrast")


def _two_run_outputs(args, module, result: dict, text: str, command: str, block: str) -> int:
    """What compare and contrast do with their result: print ``text`` (without its marker
    line), write ``--out`` / ``--json``, and rewrite the README's generated ``block`` for the
    pair (``module``: its FORMAT, README markers, ``readme_source`` and ``update_readme_block``)."""
    from searchgym.retrieval.fileio import atomic_write_json, atomic_write_text, check_output, json_marker

    if args.json:  # --out is checked before the handler runs (searchgym.cli.OUTPUTS)
        check_output(args.json, lambda p: json_marker(p, format=module.FORMAT),
                     f"a `searchgym {command}` JSON (format {module.FORMAT!r})", kind="file", force=args.force)
    print(text.split("\n", 1)[1], end="")  # without the marker line
    if args.out:
        atomic_write_text(args.out, text)
        print(f"wrote {args.out}")
    if args.json:
        atomic_write_json(args.json, result)
        print(f"wrote {args.json}")
    if not args.readme:
        return 0
    source = module.readme_source(result)
    begin = module.README_BEGIN_FOR.format(source=source)
    return _readme_done(args.readme, module.update_readme_block(args.readme, result), block,
                        f"for {source}: put the lines {begin} and {module.README_END} where it should go")


def _report(args) -> int:
    from searchgym.report import write_report

    run = Path(args.run_dir)
    old = run / "report.json"
    meta = None
    if old.is_file():
        try:
            meta = json.loads(old.read_text(encoding="utf-8")).get("meta")
        except json.JSONDecodeError:
            meta = None  # a damaged report is rewritten from the arms
    rep = write_report(run, meta=meta)
    print(f"report: {run / 'report.md'} ({len(rep['arms'])} arms, {len(rep['claims'])} claims)")
    return _update_readme(args.readme, rep, run)


def _run(args) -> int:
    from searchgym.experiment import run_experiment

    preset = with_arms(with_overrides(get_preset(args.preset), args.overrides), objectives=args.arms,
                       warm_starts=args.warm_starts, seeds=args.seeds, workers=args.workers)
    if args.overrides:
        preset = dataclasses.replace(preset, notes=tuple(preset.notes) + (overrides_note(args.overrides),))
    out = args.out or f"runs/{preset.name}"
    t0 = time.perf_counter()
    rep = run_experiment(preset, out, progress=not args.no_progress)
    failed = rep["failed_arms"]
    print(f"report: {out}/report.md ({len(rep['arms'])} arms, {len(failed)} failed, "
          f"{time.perf_counter() - t0:.1f} s)")
    for f in failed:
        print(f"  failed: {f['arm_id']}: {(f['error'] or '').strip().splitlines()[0]}")
    return 1 if failed and len(failed) == len(rep["arms"]) else 0
