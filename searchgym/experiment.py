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

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from searchgym.retrieval.fileio import atomic_dir, atomic_write_json

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


def stage_key(name: str, config: Any, inputs: Mapping[str, str] | None = None, version: int = 1) -> str:
    """Content hash of a stage: name, code version, config and the keys of its inputs."""
    payload = {"stage": name, "version": version, "config": _canonical(config),
               "inputs": {k: inputs[k] for k in sorted(inputs or {})}}
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
            version: int = 1) -> StageResult:
        """Return the cached stage or build it with ``fn(out_dir, input_paths, scratch)``.

        ``fn`` writes its outputs into ``out_dir`` (a temp folder renamed into place on
        success) and may keep resumable state in ``scratch`` (kept across interruptions,
        deleted on success). Its returned dict is stored in the manifest as ``info``.
        """
        key = stage_key(name, config, {k: r.key for k, r in inputs.items()}, version)
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
                "stage": name, "key": key, "version": version, "config": _canonical(config),
                "inputs": {k: r.key for k, r in inputs.items()}, "wall_s": wall, "info": info,
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
            })
        shutil.rmtree(scratch, ignore_errors=True)
        return StageResult(name, key, self.path(name, key), False, wall, wall, info)


# ----------------------------------------------------------------------------- arms


@dataclass(frozen=True)
class ArmSpec:
    """One RL arm: a warm start, an objective and a seed."""

    warm_start: str
    objective: str
    seed: int

    @property
    def arm_id(self) -> str:
        return f"{self.warm_start}-{self.objective}-s{self.seed}"


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


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)


def run_arm_task(task: "ArmTask") -> ArmOutcome:
    """Run (or find cached) one arm; any exception becomes a failed outcome."""
    t0 = time.perf_counter()
    try:
        res = task.run()
        return ArmOutcome(task.spec, "ok", str(res.path), res.cached, time.perf_counter() - t0, res.built_s)
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

    def stage_name(self) -> str:
        return f"arm-{self.spec.arm_id}"

    def is_cached(self) -> bool:
        """Whether the arm's stage is already finished (then running it only reads the cache)."""
        key = stage_key(self.stage_name(), (self.spec, self.config), {k: r.key for k, r in self.inputs.items()},
                        self.version)
        return StageCache(self.cache_root).lookup(self.stage_name(), key) is not None

    def run(self) -> StageResult:
        cache = StageCache(self.cache_root)

        def stage(out: Path, inputs: dict[str, Path], scratch: Path) -> dict:
            return self.fn(self.spec, self.config, out, inputs, scratch)

        return cache.run(self.stage_name(), (self.spec, self.config), self.inputs, stage, self.version)


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


# ----------------------------------------------------------------------------- metric hooks

#: summarize_rollouts key -> report key (see searchgym.report.STEP_KEYS / EVAL_KEYS)
_SUMMARY_KEYS = {
    "entropy": "token_entropy",
    "entropy_top": "token_entropy_top",
    "er_window": "er_lc",
    "er": "er_raw",
    "er_norm": "er_norm",
    "group_er": "group_er",
    "strategy_entropy_norm": "strategy_entropy",
    "signature_entropy_norm": "signature_entropy",
    "distinct_strategies": "distinct_strategies",
    "distinct_signatures": "distinct_signatures",
    "distinct_queries": "distinct_queries",
    "vendi": "vendi",
    "accuracy": "accuracy",
    "reward_mean": "reward",
    "format_error_rate": "format_error_rate",
    "searches_mean": "searches_per_episode",
    "pass@1": "pass_at_1",
}


def trajectory_records(trajs) -> list[dict]:
    """Metric records (the searchgym.metrics episode fields) of agents' ``Trajectory``s,
    without the token-id arrays the metrics do not read."""
    recs = []
    for t in trajs:
        rec = {
            "question_id": t.question_id, "group": t.group_id, "reward": float(t.reward), "correct": t.correct,
            "answer": t.answer, "golden_answers": t.golden_answers, "signature": t.signature,
            "strategy": t.strategy, "valid_strategies": t.valid_strategies, "queries": t.queries,
            "format_errors": t.format_errors, "num_searches": t.num_searches,
            "entropies": list(t.entropies), "loss_mask": list(t.loss_mask), "text": t.transcript,
        }
        if t.hidden_states is not None and len(t.hidden_states):
            rec["hidden_states"] = t.hidden_states  # [num_policy_tokens, d]
        recs.append(rec)
    return recs


def summarize_trajectories(trajs, *, k: int = 4, er_window: int = 32, vendi: bool = False,
                           embed_fn=None) -> dict:
    """The report's per-step / per-eval numbers of a batch of trajectories (one call to
    ``searchgym.metrics.summarize_rollouts``, keys renamed to the report's)."""
    from searchgym.metrics.summary import summarize_rollouts

    ks = (1, k) if k > 1 else (1,)
    s = summarize_rollouts(trajectory_records(trajs), k=ks, er_window=er_window, erv=False, vendi=vendi,
                           embed_fn=embed_fn)
    out = {new: float(s[old]) for old, new in _SUMMARY_KEYS.items() if old in s}
    if f"pass@{k}" in s:
        out["pass_at_k"], out["k"] = float(s[f"pass@{k}"]), k
    lengths = [t.num_policy_tokens for t in trajs]
    out["response_length"] = float(sum(lengths) / max(1, len(lengths)))
    return out


class StepMetricsHook:
    """Per-step RL metric hook, ``Callable[[list[Trajectory]], dict]``: group strategy
    diversity, token entropy, length-controlled and raw ER and group ER of the step's
    rollouts (needs ``RLConfig.hidden_states=True`` for the ER numbers). The returned dict
    carries ``metrics_time_s``, the hook's own cost, so the report can show it as a share
    of step time."""

    def __init__(self, er_window: int = 32):
        self.er_window = er_window

    def __call__(self, trajs) -> dict:
        t0 = time.perf_counter()
        out = summarize_trajectories(trajs, k=1, er_window=self.er_window, vendi=False)
        for k in ("accuracy", "pass_at_1", "pass_at_k", "k"):  # the trainer logs reward/accuracy itself
            out.pop(k, None)
        out["metrics_time_s"] = time.perf_counter() - t0
        return out


class FixedEvaluation:
    """The fixed evaluation of an arm: the same first ``cfg.questions`` held-out questions,
    ``cfg.samples`` sampled rollouts each (with hidden states), summarised by
    :func:`summarize_trajectories` (accuracy, pass@1/pass@k, token entropy, ER variants,
    group ER, strategy entropy, Vendi). Called as ``evaluate(model, tokenizer) -> dict``."""

    def __init__(self, cfg, world: str, max_turns: int, max_new_tokens: int, seed: int = 0):
        self.cfg, self.world, self.max_turns, self.max_new_tokens, self.seed = cfg, world, max_turns, max_new_tokens, seed
        self._envs = None
        self._embed = None

    def __call__(self, model, tokenizer) -> dict:
        import torch

        from searchgym.agents.rollout import RolloutConfig, RolloutEngine
        from searchgym.training.common import make_envs

        c = self.cfg
        t0 = time.perf_counter()
        if self._envs is None:
            self._envs, total = make_envs(c.family, min(64, c.questions * c.samples), c.split, self.world,
                                          self.max_turns)
            self._questions = list(range(min(c.questions, total)))
        if c.vendi and self._embed is None:
            from searchgym.metrics.diversity import default_embedder

            self._embed = default_embedder()
        was_training = model.training
        model.eval()
        engine = RolloutEngine(model, tokenizer, RolloutConfig(
            n=c.samples, temperature=c.temperature, max_new_tokens=self.max_new_tokens, seed=self.seed,
            return_hidden_states=True, max_batch_size=len(self._envs)))
        with torch.no_grad():
            trajs = engine.rollout_questions(self._envs, self._questions, n=c.samples)
        model.train(was_training)
        out = summarize_trajectories(trajs, k=c.k, er_window=c.er_window, vendi=c.vendi, embed_fn=self._embed)
        out["eval_time_s"] = time.perf_counter() - t0
        return out


def _split_metrics(src: Path, out: Path) -> dict:
    """Split the trainer's metrics.jsonl into the report's step and eval records."""
    from searchgym.retrieval.fileio import atomic_write_text, read_jsonl

    steps, evals = [], []
    for rec in read_jsonl(src):
        ev = {k[5:]: v for k, v in rec.items() if k.startswith("eval_")}
        if ev:
            evals.append({"step": rec["step"], **ev})
        if rec["step"] >= 1:  # step 0 holds only the RL-start evaluation
            st = {k: v for k, v in rec.items() if not k.startswith("eval_")}
            st.setdefault("reward", st.get("reward_mean"))
            st["step_time_s"] = st.get("time_step_s")
            steps.append(st)
    for name, recs in (("metrics.jsonl", steps), ("eval.jsonl", evals)):
        # strict JSON: non-finite numbers (e.g. a metric with no input) become null
        text = "".join(json.dumps({k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                                   for k, v in r.items()}) + "\n" for r in recs)
        atomic_write_text(out / name, text)
    return {"steps": len(steps), "evals": len(evals)}


def rl_arm_stage(spec: ArmSpec, config: dict, out: Path, inputs: dict[str, Path], scratch: Path) -> dict:
    """One RL arm: RL from the warm start with the per-step hook and the fixed evaluation
    every ``eval.every`` steps; resumable from ``scratch`` checkpoints."""
    from searchgym.training.checkpoint import latest_checkpoint
    from searchgym.training.rl import RLTrainer

    rl, ev = config["rl"], config["eval"]
    world = str(inputs["world"] / "world")
    run_dir = scratch / "rl"
    last = latest_checkpoint(run_dir) if run_dir.exists() else None
    resume = last is not None
    if run_dir.exists() and not resume:
        shutil.rmtree(run_dir)  # interrupted before its first checkpoint: start over
    cfg = dataclasses.replace(rl, init=str(inputs["warm_start"] / "model"), out=str(run_dir), world=world,
                              objective=spec.objective, seed=spec.seed, eval_every=ev.every,
                              hidden_states=True, threads=config.get("threads", 0))
    fixed = FixedEvaluation(ev, world, cfg.max_turns, cfg.max_new_tokens, seed=1000 + spec.seed)

    class _Trainer(RLTrainer):
        def validate(self) -> dict:  # the trainer's eval slot runs the fixed evaluation
            return {f"eval_{k}": v for k, v in fixed(self.model, self.tokenizer).items()}

    t0 = time.perf_counter()
    model_dir = _Trainer(cfg, hooks=[StepMetricsHook(ev.er_window)], progress=config.get("progress", True)).run(
        resume=resume)
    counts = _split_metrics(run_dir / "metrics.jsonl", out)
    shutil.copytree(model_dir, out / "model")
    # provenance: the step an interrupted arm resumed from (None: ran from the start)
    return {**counts, "train_s": time.perf_counter() - t0, "resumed_from_step": int(last.name[5:]) if resume else None}


# ----------------------------------------------------------------------------- the pipeline


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


def _sft_stage(preset, warm: str, threads: int, progress: bool):
    def fn(out: Path, inputs: dict, scratch: Path) -> dict:
        from searchgym.training.sft import train_sft

        cfg = dataclasses.replace(preset.sft, model=str(inputs["model"] / "model"),
                                  demos=str(inputs["demos"] / f"{warm}.jsonl"), out=str(out),
                                  world=str(inputs["world"] / "world"), threads=threads)
        train_sft(cfg, progress=progress)
        return {}
    return fn


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
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
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

    def stage(name, cfg, inputs, fn):
        r = cache.run(name, cfg, inputs, fn)
        timings[name] = {"cached": r.cached, "wall_s": r.wall_s, "built_s": r.built_s, "key": r.key}
        return r

    bar = tqdm(total=5, desc="stages", unit="stage", disable=not progress)
    bar.set_postfix_str("world + index")
    world = stage("world", (preset.world, preset.index), {}, _world_stage(preset)); bar.update()
    bar.set_postfix_str("tiny model")
    model = stage("model", preset.model, {"world": world}, _model_stage(preset)); bar.update()
    bar.set_postfix_str("demos")
    demos = stage("demos", preset.demos, {"world": world}, _demos_stage(preset)); bar.update()
    warm = {}
    for ws in preset.warm_starts:
        bar.set_postfix_str(f"sft {ws}")
        warm[ws] = stage(f"sft-{ws}", (ws, preset.sft), {"world": world, "model": model, "demos": demos},
                         _sft_stage(preset, ws, ncpu, progress))
    bar.update()

    bar.set_postfix_str("RL arms")
    specs = [ArmSpec(ws, obj, seed) for ws in preset.warm_starts for obj in preset.objectives for seed in preset.seeds]
    workers = max(1, min(preset.workers, len(specs)))
    threads = max(1, ncpu // workers)
    arm_cfg = {"rl": preset.rl, "eval": preset.eval, "threads": threads, "progress": progress and workers == 1}
    # the thread count and the progress flag do not change the result: keep them out of the key
    tasks = [ArmTask(s, str(cache.root), _ArmConfig(arm_cfg), {"world": world, "warm_start": warm[s.warm_start]},
                     rl_arm_stage) for s in specs]
    t_arms = time.perf_counter()
    outcomes = run_arms(tasks, workers=workers, threads_per_worker=threads, progress=progress)
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
                for name in ("metrics.jsonl", "eval.jsonl"):
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
