"""``searchgym run``: the main job (world -> index -> demos -> model -> SFT warm starts ->
RL arms -> evaluation -> report), cached by content so a rerun resumes."""

from __future__ import annotations

import argparse


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
    p.add_argument("--preset", choices=("smoke", "small", "full"), default="small",
                   help="smoke: about 2 minutes (tests); small: the 2-core main job (default); full: longer, 3 seeds")
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


def _run(args) -> int:
    import time

    from searchgym.experiment import run_experiment
    from searchgym.presets import get_preset, with_arms

    preset = with_arms(get_preset(args.preset), objectives=args.arms, warm_starts=args.warm_starts,
                       seeds=args.seeds, workers=args.workers)
    out = args.out or f"runs/{preset.name}"
    t0 = time.perf_counter()
    rep = run_experiment(preset, out, progress=not args.no_progress)
    failed = rep["failed_arms"]
    print(f"report: {out}/report.md ({len(rep['arms'])} arms, {len(failed)} failed, "
          f"{time.perf_counter() - t0:.1f} s)")
    for f in failed:
        print(f"  failed: {f['arm_id']}: {(f['error'] or '').strip().splitlines()[0]}")
    return 1 if failed and len(failed) == len(rep["arms"]) else 0
