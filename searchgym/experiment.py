"""The main job (the pipeline): world -> index -> demos -> tiny model -> SFT warm starts ->
RL-start evaluations -> RL arms -> the report's inputs (``arms/``) -> report, every stage
through the stage cache (:mod:`searchgym.cache`), the arms through the process pool
(:mod:`searchgym.pool`), under the run folder's lock (:mod:`searchgym.run_folder`). The arm
stages themselves are in :mod:`searchgym.arms`; the report in :mod:`searchgym.report`.

A rerun finds every finished stage in ``<out>/cache`` and resumes at the first unfinished
one; a failing arm is recorded with its error and reported, never fatal to the others.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from pathlib import Path
from typing import Callable

from tqdm.auto import tqdm

from searchgym import report
from searchgym.agents.demos import build_matched, summarize_pair, write_demos
from searchgym.agents.model import init_model
from searchgym.analysis import ARM_RECORD_FILES
from searchgym.arms import ArmSpec, rl_arm_stage, sft_stage, start_eval_stage
from searchgym.cache import StageCache, StageConfig, StageResult, code_fingerprint, stage_key
from searchgym.envs.world import ensure_index, generate_world, write_world
from searchgym.machine import machine_info
from searchgym.metrics import names as mn
from searchgym.pool import ArmOutcome, ArmTask, run_arms
from searchgym.retrieval.fileio import atomic_dir, atomic_write_json, read_jsonl
from searchgym.retrieval.index import file_sha256
# RunFolderBusy: searchgym.sweeps imports it from here
from searchgym.run_folder import RunFolderBusy, remove_stale_temps, run_lock  # noqa: F401

# ----------------------------------------------------------------------------- the pipeline


#: Where each stage's code fingerprint starts (searchgym.cache.code_fingerprint): the
#: stage's own function ("module:function", its code only) and the modules it calls (their
#: searchgym imports followed transitively), so a stage is rebuilt whenever the code it runs
#: changes, and only then (editing the report, the cache or the pool rebuilds nothing).
_CODE = {
    "world": ("searchgym.experiment:_world_stage", "searchgym.envs.world"),
    "model": ("searchgym.experiment:_model_stage", "searchgym.agents.model"),
    "demos": ("searchgym.experiment:_demos_stage", "searchgym.agents.demos"),
    "sft": ("searchgym.arms:sft_stage", "searchgym.training.sft"),
    "eval": ("searchgym.arms",),  # start_eval_stage and the fixed evaluation it calls
    "arm": ("searchgym.arms",),  # rl_arm_stage, the step hook, the trainer
}


def _world_stage(preset):
    def fn(out: Path, inputs: dict, scratch: Path) -> dict:
        world = generate_world(preset.world)
        wdir = write_world(world, out / "world")
        # the envs look for the index at <world>/index-<kind>; build it inside this stage
        ensure_index(wdir, preset.index.kind)
        return {"documents": sum(1 for _ in open(wdir / "corpus.jsonl", encoding="utf-8"))}
    return fn


def _model_stage(preset):
    def fn(out: Path, inputs: dict, scratch: Path) -> dict:
        return init_model(preset.model.preset, out / "model", world_dir=inputs["world"] / "world",
                          seed=preset.model.seed)
    return fn


def _demos_stage(preset):
    def fn(out: Path, inputs: dict, scratch: Path) -> dict:
        sets = build_matched(inputs["world"] / "world", preset.demos.episodes, split=preset.demos.split,
                             seed=preset.demos.seed, index_kind=preset.index.kind)
        for kind, recs in sets.items():
            write_demos(recs, out / f"{kind}.jsonl")
        return summarize_pair(sets)
    return fn


def experiment_config_key(preset) -> str:
    """The hash of everything in ``preset`` that decides an arm's result except which arms
    run (objectives, warm starts, seeds) and how many workers run them."""
    return stage_key("experiment", {f: getattr(preset, f) for f in
                                    ("world", "index", "demos", "model", "sft", "rl", "eval")})


def dispatch_order(specs: list[ArmSpec], start_searches: dict[tuple[str, int], float]) -> list[ArmSpec]:
    """The order in which the arms go to the worker pool: seed-major (an interrupted run has
    finished whole seeds of every arm group first), and within a seed the arms expected to
    take longest first (longest-processing-time scheduling), so a run ends on short arms and a
    worker idles less while the other finishes. The expected cost is read from what the run
    has measured before its arms: the warm start's searches per episode at its RL-start
    evaluation (``start_searches[(warm_start, seed)]``; more turns make longer sequences, more
    rollout and update work), then an objective other than plain GRPO (it also runs the
    gradient diagnostic) before GRPO; ties keep ``specs``' order. The order changes no
    result: every arm is its own seeded stage."""
    seed_rank = {s: i for i, s in enumerate(dict.fromkeys(sp.seed for sp in specs))}
    return sorted(specs, key=lambda sp: (seed_rank[sp.seed], -start_searches.get((sp.warm_start, sp.seed), 0.0),
                                         sp.objective == "grpo"))


_EVAL_SEARCHES = mn.evaluation("searches_mean")


def _searches_at_start(outcome: ArmOutcome) -> float:
    """Mean searches per episode over an RL-start evaluation's replicas (0 when unknown)."""
    if outcome.status != "ok":
        return 0.0
    path = Path(outcome.path) / "eval.jsonl"
    vals = [r[_EVAL_SEARCHES] for r in (read_jsonl(path) if path.exists() else [])
            if isinstance(r.get(_EVAL_SEARCHES), (int, float))]
    return sum(vals) / len(vals) if vals else 0.0


def base_stages(preset, cache: StageCache, on_stage: Callable[[StageResult], None] | None = None
                ) -> dict[str, StageResult]:
    """The world (+ index), tiny-model and demonstration stages of ``preset``, built or found
    in ``cache`` under the main job's keys (code fingerprints included): the common inputs
    of the main job and of the sweeps that tune its presets."""
    out: dict[str, StageResult] = {}
    for name, cfg, inputs, fn in (("world", (preset.world, preset.index), {}, _world_stage(preset)),
                                  ("model", preset.model, ("world",), _model_stage(preset)),
                                  ("demos", preset.demos, ("world",), _demos_stage(preset))):
        r = cache.run(name, cfg, {k: out[k] for k in inputs}, fn, code=code_fingerprint(*_CODE[name]))
        out[name] = r
        if on_stage is not None:
            on_stage(r)
    return out


def run_experiment(preset, out: str | Path, progress: bool = True) -> dict:
    """Run (or resume) the main job for ``preset`` into ``out``; returns the report dict.

    Writes ``out/cache/`` (stage outputs), ``out/arms/<arm_id>/`` (the report's inputs),
    ``out/timings.json``, ``out/report.md``, ``out/report.json`` and ``out/figures/``.
    Holds ``out/.lock`` while running (a second run into the same folder raises
    :class:`RunFolderBusy`) and first deletes temp files left by an interrupted run.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with run_lock(out):
        remove_stale_temps(out)
        return _run_locked(preset, out, progress)


def _run_locked(preset, out: Path, progress: bool) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cache = StageCache(out / "cache")
    ncpu = os.cpu_count() or 1
    machine = machine_info()  # wall times are read against the machine (searchgym.machine)
    timings: dict[str, dict] = {}
    t_start = time.perf_counter()

    bar = tqdm(total=6, desc="stages", unit="stage", disable=not progress)

    def done(r: StageResult) -> None:
        timings[r.name] = {"cached": r.cached, "wall_s": r.wall_s, "built_s": r.built_s, "key": r.key}
        bar.update()

    base = base_stages(preset, cache, on_stage=done)
    world, model, demos = base["world"], base["model"], base["demos"]
    # seed-major order: an interrupted run has finished whole seeds of every arm group first
    specs = [ArmSpec(ws, obj, seed) for seed in preset.seeds for ws in preset.warm_starts for obj in preset.objectives]
    workers = max(1, min(preset.workers, len(specs)))
    threads = max(1, ncpu // workers)
    arm_cfg = {"rl": preset.rl, "eval": preset.eval, "threads": threads, "progress": progress and workers == 1}

    # the SFT warm starts, side by side in the worker pool (single-thread workers beat one
    # 2-thread process on this tiny model; see Preset.workers); a stage with fewer tasks than
    # workers (the pilot's one warm start) gives each task the idle cores' threads
    bar.set_postfix_str("sft " + " + ".join(preset.warm_starts))
    sft_workers = max(1, min(workers, len(preset.warm_starts)))
    sft_threads = max(1, ncpu // sft_workers)
    sft_cfg = StageConfig({"sft": preset.sft, "threads": sft_threads, "progress": progress and sft_workers == 1})
    sft_tasks = [ArmTask(ArmSpec(ws, "sft", 0), str(cache.root), sft_cfg,
                         {"world": world, "model": model, "demos": demos}, sft_stage, name=f"sft-{ws}",
                         code=code_fingerprint(*_CODE["sft"])) for ws in preset.warm_starts]
    warm = {}
    for t, o in zip(sft_tasks, run_arms(sft_tasks, workers=sft_workers, threads_per_worker=sft_threads,
                                        progress=progress)):
        if o.status != "ok":
            raise RuntimeError(f"{t.stage_name()} failed: {o.error}")
        warm[o.spec.warm_start] = StageResult(t.stage_name(), o.key, Path(o.path), o.cached, o.wall_s, o.built_s)
        timings[t.stage_name()] = {"cached": o.cached, "wall_s": o.wall_s, "built_s": o.built_s, "key": o.key,
                                   "threads": sft_threads}
    bar.update()

    # the RL-start evaluations (one per warm start and seed, shared by its objectives' arms)
    bar.set_postfix_str("RL-start evaluations")
    start_specs = [ArmSpec(ws, "start", seed) for ws in preset.warm_starts for seed in preset.seeds]
    start_workers = max(1, min(workers, len(start_specs)))
    start_threads = max(1, ncpu // start_workers)
    start_cfg = StageConfig({**arm_cfg, "threads": start_threads})
    start_tasks = [ArmTask(s, str(cache.root), start_cfg, {"world": world, "warm_start": warm[s.warm_start],
                                                          "model": model},
                           start_eval_stage, stage="eval", code=code_fingerprint(*_CODE["eval"]))
                   for s in start_specs]
    t_eval = time.perf_counter()
    start_outcomes = run_arms(start_tasks, workers=start_workers, threads_per_worker=start_threads,
                              progress=progress)
    starts = {(o.spec.warm_start, o.spec.seed): o for o in start_outcomes}
    timings["start_evals"] = {"wall_s": time.perf_counter() - t_eval,
                              "cached": all(o.cached for o in start_outcomes)}
    bar.update()

    bar.set_postfix_str("RL arms")
    # the thread count and the progress flag do not change the result: keep them out of the key
    tasks, outcomes_by_spec = [], {}
    searches = {k: _searches_at_start(o) for k, o in starts.items()}
    for s in dispatch_order(specs, searches):
        st = starts[(s.warm_start, s.seed)]
        if st.status != "ok":
            outcomes_by_spec[s] = ArmOutcome(s, "failed", None, False, 0.0, 0.0,
                                             f"RL-start evaluation failed: {st.error}")
            continue
        start_res = StageResult(f"eval-{st.spec.arm_id}", st.key, Path(st.path), st.cached, st.wall_s, st.built_s)
        tasks.append(ArmTask(s, str(cache.root), StageConfig(arm_cfg),
                             {"world": world, "warm_start": warm[s.warm_start], "model": model,
                              "start_eval": start_res}, rl_arm_stage, code=code_fingerprint(*_CODE["arm"])))
    t_arms = time.perf_counter()
    for o in run_arms(tasks, workers=workers, threads_per_worker=threads, progress=progress):
        outcomes_by_spec[o.spec] = o
    outcomes = [outcomes_by_spec[s] for s in specs]
    timings["arms"] = {"wall_s": time.perf_counter() - t_arms, "workers": workers, "threads_per_worker": threads}
    bar.update()
    bar.close()

    # what makes arms of two runs one experiment (searchgym.merge checks it): the preset's
    # name and config, the arm code, and each warm start's stage key and weights
    experiment = {"preset": preset.name, "config": experiment_config_key(preset),
                  "code": code_fingerprint(*_CODE["arm"])}
    provenance = {ws: {**experiment, "warm_start_key": r.key,
                       "warm_start_sha256": file_sha256(r.path / "model" / "model.safetensors")}
                  for ws, r in warm.items()}

    # the report's inputs: exactly this run's arms. An older report goes first, so a run
    # killed before its new report is written leaves no report rather than a stale one.
    for name in ("report.json", "report.md"):
        (out / name).unlink(missing_ok=True)
    with atomic_dir(out / "arms") as tmp:
        for o in outcomes:
            d = tmp / o.spec.arm_id
            d.mkdir()
            if o.status == "ok":
                for name in ARM_RECORD_FILES:
                    shutil.copyfile(Path(o.path) / name, d / name)
            atomic_write_json(d / "arm.json", {
                "arm_id": o.spec.arm_id, "warm_start": o.spec.warm_start, "objective": o.spec.objective,
                "seed": o.spec.seed, "status": o.status, "error": o.error, "wall_s": o.built_s or o.wall_s,
                "cached": o.cached, "cache_dir": o.path,
                "provenance": provenance[o.spec.warm_start],
            })
    total = time.perf_counter() - t_start
    atomic_write_json(out / "timings.json", {"total_s": total, "stages": timings, "machine": machine})
    meta = {
        "name": out.name, "preset": preset.name, "wall_s": total, "workers": workers,
        "threads_per_worker": threads, "cpus": ncpu, "objectives": list(preset.objectives),
        "warm_starts": list(preset.warm_starts), "seeds": list(preset.seeds), "rl_steps": preset.rl.steps,
        "eval": dataclasses.asdict(preset.eval), "stage_times": timings, "notes": list(preset.notes),
        "machine": machine,
    }
    return report.write_report(out, meta=meta)
