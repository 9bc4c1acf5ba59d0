"""The main job: world -> index -> demos -> tiny model -> SFT warm starts -> RL arms ->
evaluation -> report, with every stage cached by content hash.

Caching: a stage's key is the SHA-256 of its name, its code version, its config (a
dataclass, serialised canonically) and the keys of the stages it reads. Its outputs live in
``<out>/cache/<stage>-<key>/``, built under a temporary name with
:func:`searchgym.retrieval.fileio.atomic_dir` and written last with a ``manifest.json``
(the ``done`` marker). A rerun finds the manifest and skips the stage; an interrupted run
leaves no half-written stage behind, so it resumes at the first unfinished stage (and
inside a long stage, through its ``scratch`` folder, which survives an interruption).

Arms (warm start x objective x seed) run one after another or in worker processes; a
failing arm is recorded with its error and reported, never fatal to the others.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import functools
import hashlib
import importlib.util
import json
import os
import shutil
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from searchgym.arms import (  # noqa: F401 - re-exported: the arm stages and hooks
    ArmSpec, FixedEvaluation, StepMetricsHook, eval_seeds, rl_arm_stage, sft_stage, start_eval_stage,
)
from searchgym.retrieval.fileio import atomic_dir, atomic_write_json, remove_temp

MANIFEST = "manifest.json"


def _canonical(obj: Any) -> Any:
    """A JSON-ready, order-independent form of a config (dataclasses, tuples, paths...)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {"__type__": type(obj).__name__,
                **{f.name: _canonical(getattr(obj, f.name)) for f in dataclasses.fields(obj)}}
    if isinstance(obj, _ArmConfig):
        obj = _canonical_armcfg(obj)
    if isinstance(obj, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float):
        return repr(obj)  # exact, and distinguishes 1.0 from 1
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    raise TypeError(f"cannot hash config value of type {type(obj).__name__}: {obj!r}")


def _module_file(name: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    origin = getattr(spec, "origin", None) if spec is not None else None
    return Path(origin) if origin and origin.endswith(".py") else None


def _searchgym_imports(path: Path, module: str) -> set[str]:
    """The ``searchgym.*`` modules ``path`` imports anywhere (function-local imports too)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return {m for m in found if m == "searchgym" or m.startswith("searchgym.")}


def _code_of(path: Path) -> bytes:
    """A module's code without its comments and docstrings (the AST dump, which drops
    comments, with every docstring removed): a comment citing a new measurement is not a
    code change and must not rebuild a 10-minute stage."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree, include_attributes=False).encode()


@functools.lru_cache(maxsize=None)
def code_fingerprint(*roots: str) -> str:
    """SHA-256 of the package version and the code (:func:`_code_of`: comments and
    docstrings excluded) of every ``searchgym`` module the ``roots`` import, transitively
    (function-local imports included, so the set is a safe over-approximation). A stage
    keyed with it is rebuilt whenever its code changes."""
    import searchgym

    seen: dict[str, Path] = {}
    todo = list(roots)
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        path = _module_file(mod)
        if path is None:
            continue
        seen[mod] = path
        parents = {mod.rsplit(".", i)[0] for i in range(1, mod.count(".") + 1)}  # their __init__ runs too
        todo.extend((_searchgym_imports(path, mod) | parents) - set(seen))
    h = hashlib.sha256(f"searchgym {searchgym.__version__}\n".encode())
    for mod in sorted(seen):
        h.update(f"{mod}\n".encode())
        h.update(_code_of(seen[mod]))
    return h.hexdigest()[:16]


def stage_key(name: str, config: Any, inputs: Mapping[str, str] | None = None, version: int = 1,
              code: str = "") -> str:
    """Content hash of a stage: name, code version and fingerprint, config and the keys of
    its inputs."""
    payload = {"stage": name, "version": version, "config": _canonical(config),
               "inputs": {k: inputs[k] for k in sorted(inputs or {})}}
    if code:
        payload["code"] = code
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@dataclass(frozen=True)
class StageResult:
    """A finished stage: where its outputs are and whether this run computed them."""

    name: str
    key: str
    path: Path
    cached: bool
    wall_s: float  # time this run spent (0-ish when cached)
    built_s: float  # time the stage took when it was built
    info: dict = field(default_factory=dict)  # what the stage function returned


StageFn = Callable[[Path, dict[str, Path], Path], "dict | None"]


class StageCache:
    """Content-addressed stage outputs under ``root``."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, name: str, key: str) -> Path:
        return self.root / f"{name}-{key}"

    def scratch(self, name: str, key: str) -> Path:
        return self.root / ".scratch" / f"{name}-{key}"

    def lookup(self, name: str, key: str) -> dict | None:
        """The manifest of a finished stage, or None."""
        m = self.path(name, key) / MANIFEST
        if not m.exists():
            return None
        try:
            manifest = json.loads(m.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            return None  # a corrupt manifest means "not done": rebuild
        return manifest if manifest.get("key") == key else None

    def run(self, name: str, config: Any, inputs: Mapping[str, StageResult], fn: StageFn,
            version: int = 1, code: str = "") -> StageResult:
        """Return the cached stage or build it with ``fn(out_dir, input_paths, scratch)``.

        ``fn`` writes its outputs into ``out_dir`` (a temp folder renamed into place on
        success) and may keep resumable state in ``scratch`` (kept across interruptions,
        deleted on success). Its returned dict is stored in the manifest as ``info``.
        """
        key = stage_key(name, config, {k: r.key for k, r in inputs.items()}, version, code)
        t0 = time.perf_counter()
        manifest = self.lookup(name, key)
        if manifest is not None:
            # a run killed between publishing the stage and deleting its scratch left it behind
            shutil.rmtree(self.scratch(name, key), ignore_errors=True)
            return StageResult(name, key, self.path(name, key), True, time.perf_counter() - t0,
                               float(manifest.get("wall_s", 0.0)), manifest.get("info") or {})
        scratch = self.scratch(name, key)
        scratch.mkdir(parents=True, exist_ok=True)
        with atomic_dir(self.path(name, key)) as tmp:
            info = fn(tmp, {k: r.path for k, r in inputs.items()}, scratch) or {}
            wall = time.perf_counter() - t0
            atomic_write_json(tmp / MANIFEST, {
                "stage": name, "key": key, "version": version, "code": code, "config": _canonical(config),
                "inputs": {k: r.key for k, r in inputs.items()}, "wall_s": wall, "info": info,
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
            })
        shutil.rmtree(scratch, ignore_errors=True)
        return StageResult(name, key, self.path(name, key), False, wall, wall, info)


# ----------------------------------------------------------------------------- arms


@dataclass
class ArmOutcome:
    """What running one arm produced (picklable, returned from worker processes)."""

    spec: ArmSpec
    status: str  # "ok" | "failed"
    path: str | None  # the arm stage's cache folder when ok
    cached: bool
    wall_s: float
    built_s: float
    error: str | None = None
    key: str | None = None  # the stage key when ok


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)


def run_arm_task(task: "ArmTask") -> ArmOutcome:
    """Run (or find cached) one arm; any exception becomes a failed outcome."""
    t0 = time.perf_counter()
    try:
        res = task.run()
        return ArmOutcome(task.spec, "ok", str(res.path), res.cached, time.perf_counter() - t0, res.built_s,
                          key=res.key)
    except Exception as exc:  # noqa: BLE001 - an arm's failure must not stop the others
        tb = traceback.format_exc(limit=8)
        return ArmOutcome(task.spec, "failed", None, False, time.perf_counter() - t0, 0.0,
                          f"{type(exc).__name__}: {exc}\n{tb}")


@dataclass
class ArmTask:
    """Everything a worker needs to run one arm through the cache (picklable)."""

    spec: ArmSpec
    cache_root: str
    config: Any
    inputs: dict[str, StageResult]
    fn: Callable  # module-level function (spec, config, out, inputs, scratch) -> dict
    version: int = 1
    stage: str = "arm"  # the stage name's prefix
    code: str = ""  # code fingerprint of the stage (code_fingerprint)
    name: str = ""  # the stage name, when not "<stage>-<arm_id>"

    def stage_name(self) -> str:
        return self.name or f"{self.stage}-{self.spec.arm_id}"

    def is_cached(self) -> bool:
        """Whether the arm's stage is already finished (then running it only reads the cache)."""
        key = stage_key(self.stage_name(), (self.spec, self.config), {k: r.key for k, r in self.inputs.items()},
                        self.version, self.code)
        return StageCache(self.cache_root).lookup(self.stage_name(), key) is not None

    def run(self) -> StageResult:
        cache = StageCache(self.cache_root)

        def stage(out: Path, inputs: dict[str, Path], scratch: Path) -> dict:
            return self.fn(self.spec, self.config, out, inputs, scratch)

        return cache.run(self.stage_name(), (self.spec, self.config), self.inputs, stage, self.version, self.code)


def run_arms(tasks: list[ArmTask], workers: int = 1, threads_per_worker: int | None = None,
             progress: bool = True) -> list[ArmOutcome]:
    """Run arm tasks sequentially (``workers <= 1``) or in a spawn-based process pool.

    Each worker calls ``torch.set_num_threads(threads_per_worker)`` (default: the CPU count
    divided by the number of workers). Outcomes come back in the order of ``tasks``.
    """
    from tqdm.auto import tqdm

    ncpu = os.cpu_count() or 1
    # finished arms are only read from the cache: no need to start worker processes for them
    pending = [i for i, t in enumerate(tasks) if not (isinstance(t, ArmTask) and t.is_cached())]
    if workers > 1 and len(pending) < len(tasks):
        done = {i: run_arm_task(tasks[i]) for i in range(len(tasks)) if i not in pending}
        rest = run_arms([tasks[i] for i in pending], workers, threads_per_worker, progress) if pending else []
        done.update(zip(pending, rest))
        return [done[i] for i in range(len(tasks))]
    if workers <= 1 or len(tasks) <= 1:
        import torch

        prev = torch.get_num_threads()
        torch.set_num_threads(threads_per_worker or ncpu)
        try:
            out = []
            for t in tqdm(tasks, desc="RL arms", unit="arm", disable=not progress):
                out.append(run_arm_task(t))
            return out
        finally:
            torch.set_num_threads(prev)
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    threads = threads_per_worker or max(1, ncpu // workers)
    results: dict[int, ArmOutcome] = {}
    with ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=mp.get_context("spawn"),
                             initializer=_init_worker, initargs=(threads,)) as pool:
        futs = {pool.submit(run_arm_task, t): i for i, t in enumerate(tasks)}
        for fut in tqdm(as_completed(futs), total=len(futs), desc="RL arms", unit="arm", disable=not progress):
            i = futs[fut]
            try:
                results[i] = fut.result()
            except Exception as exc:  # noqa: BLE001 - a worker that died (e.g. killed for memory)
                results[i] = ArmOutcome(tasks[i].spec, "failed", None, False, 0.0, 0.0,
                                        f"worker process failed: {type(exc).__name__}: {exc}")
    return [results[i] for i in range(len(tasks))]


# ----------------------------------------------------------------------------- the pipeline


#: The modules each stage's code fingerprint starts from (their searchgym imports are
#: followed transitively): a stage is rebuilt whenever its code changes.
_CODE = {
    "world": ("searchgym.envs.world",),
    "model": ("searchgym.agents.model",),
    "demos": ("searchgym.agents.demos",),
    "sft": ("searchgym.training.sft",),
    "eval": ("searchgym.arms",),
    "arm": ("searchgym.arms",),
}


def _world_stage(preset):
    def fn(out: Path, inputs: dict, scratch: Path) -> dict:
        from searchgym.envs.world import ensure_index, generate_world, write_world

        world = generate_world(preset.world)
        wdir = write_world(world, out / "world")
        # the envs look for the index at <world>/index-<kind>; build it inside this stage
        ensure_index(wdir, preset.index.kind)
        return {"documents": sum(1 for _ in open(wdir / "corpus.jsonl", encoding="utf-8"))}
    return fn


def _model_stage(preset):
    def fn(out: Path, inputs: dict, scratch: Path) -> dict:
        from searchgym.agents.model import init_model

        return init_model(preset.model.preset, out / "model", world_dir=inputs["world"] / "world",
                          seed=preset.model.seed)
    return fn


def _demos_stage(preset):
    def fn(out: Path, inputs: dict, scratch: Path) -> dict:
        from searchgym.agents.demos import build_matched, summarize_pair, write_demos

        sets = build_matched(inputs["world"] / "world", preset.demos.episodes, split=preset.demos.split,
                             seed=preset.demos.seed, index_kind=preset.index.kind)
        for kind, recs in sets.items():
            write_demos(recs, out / f"{kind}.jsonl")
        return summarize_pair(sets)
    return fn


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
    with run_lock(out) as locked:
        if locked:
            remove_stale_temps(out)
        return _run_locked(preset, out, progress)


@contextlib.contextmanager
def run_lock(out: Path):
    """Hold an exclusive lock on run folder ``out`` (``out/.lock``, released by the OS when
    the process dies, even by SIGKILL). Two runs writing into one folder would race on the
    same stage temp folders and checkpoints, so the second one fails with a clear error."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no locking, hence no stale-temp cleanup either
        yield False
        return
    f = open(out / ".lock", "a+b")
    try:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunFolderBusy(f"{out}: another `searchgym run` is writing into this folder "
                                f"(it holds {out / '.lock'}); wait for it or pick another --out") from None
        yield True
    finally:
        f.close()


class RunFolderBusy(OSError):
    """Another process holds the run folder's lock."""


def _is_temp(name: str) -> bool:
    # names made by fileio.atomic_path / atomic_dir: ".<name>.<random>.tmp" and ".<name>.old.<pid>"
    return name.startswith(".") and (name.endswith(".tmp") or ".old." in name)


def remove_stale_temps(out: Path) -> list[Path]:
    """Delete the temp files/folders an interrupted run left in ``out``, ``out/figures``
    and ``out/cache`` (call only while holding :func:`run_lock`: then none is in use).
    They are never read as results (readers skip dot-names), but they hold disk."""
    removed = []
    for base in (out, out / "figures", out / "cache"):
        if not base.is_dir():
            continue
        for p in base.iterdir():
            if _is_temp(p.name):
                remove_temp(p)
                removed.append(p)
    return removed


def _run_locked(preset, out: Path, progress: bool) -> dict:
    from tqdm.auto import tqdm

    from searchgym import report

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cache = StageCache(out / "cache")
    ncpu = os.cpu_count() or 1
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
    # 2-thread process on this tiny model; see Preset.workers)
    bar.set_postfix_str("sft " + " + ".join(preset.warm_starts))
    sft_cfg = _ArmConfig({"sft": preset.sft, "threads": threads, "progress": progress and workers == 1})
    sft_tasks = [ArmTask(ArmSpec(ws, "sft", 0), str(cache.root), sft_cfg,
                         {"world": world, "model": model, "demos": demos}, sft_stage, name=f"sft-{ws}",
                         code=code_fingerprint(*_CODE["sft"])) for ws in preset.warm_starts]
    warm = {}
    for t, o in zip(sft_tasks, run_arms(sft_tasks, workers=min(workers, len(sft_tasks)), threads_per_worker=threads,
                                        progress=progress)):
        if o.status != "ok":
            raise RuntimeError(f"{t.stage_name()} failed: {o.error}")
        warm[o.spec.warm_start] = StageResult(t.stage_name(), o.key, Path(o.path), o.cached, o.wall_s, o.built_s)
        timings[t.stage_name()] = {"cached": o.cached, "wall_s": o.wall_s, "built_s": o.built_s, "key": o.key}
    bar.update()

    # the RL-start evaluations (one per warm start and seed, shared by its objectives' arms)
    bar.set_postfix_str("RL-start evaluations")
    start_specs = [ArmSpec(ws, "start", seed) for ws in preset.warm_starts for seed in preset.seeds]
    start_tasks = [ArmTask(s, str(cache.root), _ArmConfig(arm_cfg), {"world": world, "warm_start": warm[s.warm_start],
                                                                     "model": model},
                           start_eval_stage, stage="eval", code=code_fingerprint(*_CODE["eval"]))
                   for s in start_specs]
    t_eval = time.perf_counter()
    start_outcomes = run_arms(start_tasks, workers=min(workers, len(start_tasks)), threads_per_worker=threads,
                              progress=progress)
    starts = {(o.spec.warm_start, o.spec.seed): o for o in start_outcomes}
    timings["start_evals"] = {"wall_s": time.perf_counter() - t_eval,
                              "cached": all(o.cached for o in start_outcomes)}
    bar.update()

    bar.set_postfix_str("RL arms")
    # the thread count and the progress flag do not change the result: keep them out of the key
    tasks, outcomes_by_spec = [], {}
    for s in specs:
        st = starts[(s.warm_start, s.seed)]
        if st.status != "ok":
            outcomes_by_spec[s] = ArmOutcome(s, "failed", None, False, 0.0, 0.0,
                                             f"RL-start evaluation failed: {st.error}")
            continue
        start_res = StageResult(f"eval-{st.spec.arm_id}", st.key, Path(st.path), st.cached, st.wall_s, st.built_s)
        tasks.append(ArmTask(s, str(cache.root), _ArmConfig(arm_cfg),
                             {"world": world, "warm_start": warm[s.warm_start], "model": model,
                              "start_eval": start_res}, rl_arm_stage, code=code_fingerprint(*_CODE["arm"])))
    t_arms = time.perf_counter()
    for o in run_arms(tasks, workers=workers, threads_per_worker=threads, progress=progress):
        outcomes_by_spec[o.spec] = o
    outcomes = [outcomes_by_spec[s] for s in specs]
    timings["arms"] = {"wall_s": time.perf_counter() - t_arms, "workers": workers, "threads_per_worker": threads}
    bar.update()
    bar.close()

    # the report's inputs: exactly this run's arms. An older report goes first, so a run
    # killed before its new report is written leaves no report rather than a stale one.
    for name in ("report.json", "report.md"):
        (out / name).unlink(missing_ok=True)
    with atomic_dir(out / "arms") as tmp:
        for o in outcomes:
            d = tmp / o.spec.arm_id
            d.mkdir()
            if o.status == "ok":
                for name in ("metrics.jsonl", "eval.jsonl", "eval_questions.jsonl"):
                    shutil.copyfile(Path(o.path) / name, d / name)
            atomic_write_json(d / "arm.json", {
                "arm_id": o.spec.arm_id, "warm_start": o.spec.warm_start, "objective": o.spec.objective,
                "seed": o.spec.seed, "status": o.status, "error": o.error, "wall_s": o.built_s or o.wall_s,
                "cached": o.cached, "cache_dir": o.path,
            })
    total = time.perf_counter() - t_start
    atomic_write_json(out / "timings.json", {"total_s": total, "stages": timings})
    meta = {
        "name": out.name, "preset": preset.name, "wall_s": total, "workers": workers,
        "threads_per_worker": threads, "cpus": ncpu, "objectives": list(preset.objectives),
        "warm_starts": list(preset.warm_starts), "seeds": list(preset.seeds), "rl_steps": preset.rl.steps,
        "eval": dataclasses.asdict(preset.eval), "stage_times": timings, "notes": list(preset.notes),
    }
    return report.write_report(out, meta=meta)


class _ArmConfig(dict):
    """The arm's config dict, hashed without its run-time-only keys (threads, progress)."""

    _RUNTIME = ("threads", "progress")


def _canonical_armcfg(obj: "_ArmConfig") -> dict:
    return {k: v for k, v in obj.items() if k not in _ArmConfig._RUNTIME}
