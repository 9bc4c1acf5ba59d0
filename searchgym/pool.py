"""Running arms through the stage cache: one after another, or in a spawn-based process pool.

An arm task (:class:`ArmTask`) is everything a worker needs to run one stage of the
experiment's arms (an SFT warm start, an RL-start evaluation, an RL arm) through
:class:`searchgym.cache.StageCache`; it is picklable, so worker processes receive it whole.
A failing arm becomes a failed :class:`ArmOutcome` with its error, never fatal to the others;
a worker process that dies (e.g. killed for memory) fails only its own arm.
"""

from __future__ import annotations

import concurrent.futures  # attribute access at call time: tests replace ProcessPoolExecutor
import multiprocessing
import os
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from searchgym.arms import ArmSpec
from searchgym.cache import StageCache, StageResult, stage_key
from searchgym.training.common import set_threads

__all__ = ["ArmOutcome", "ArmTask", "run_arm_task", "run_arms"]


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
    code: str = ""  # code fingerprint of the stage (searchgym.cache.code_fingerprint)
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


def run_arm_task(task: ArmTask) -> ArmOutcome:
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


def _init_worker(threads: int) -> None:
    set_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)


def run_arms(tasks: list[ArmTask], workers: int = 1, threads_per_worker: int | None = None,
             progress: bool = True) -> list[ArmOutcome]:
    """Run arm tasks sequentially (``workers <= 1``) or in a spawn-based process pool.

    Each worker calls ``torch.set_num_threads(threads_per_worker)`` (default: the CPU count
    divided by the number of workers). Outcomes come back in the order of ``tasks``.
    """
    ncpu = os.cpu_count() or 1
    # finished arms are only read from the cache: no need to start worker processes for them
    pending = [i for i, t in enumerate(tasks) if not (isinstance(t, ArmTask) and t.is_cached())]
    if workers > 1 and len(pending) < len(tasks):
        done = {i: run_arm_task(tasks[i]) for i in range(len(tasks)) if i not in pending}
        rest = run_arms([tasks[i] for i in pending], workers, threads_per_worker, progress) if pending else []
        done.update(zip(pending, rest))
        return [done[i] for i in range(len(tasks))]
    if workers <= 1 or len(tasks) <= 1:
        prev = torch.get_num_threads()
        torch.set_num_threads(threads_per_worker or ncpu)
        try:
            return [run_arm_task(t) for t in tqdm(tasks, desc="RL arms", unit="arm", disable=not progress)]
        finally:
            torch.set_num_threads(prev)
    threads = threads_per_worker or max(1, ncpu // workers)
    results: dict[int, ArmOutcome] = {}
    with concurrent.futures.ProcessPoolExecutor(max_workers=min(workers, len(tasks)),
                                                mp_context=multiprocessing.get_context("spawn"),
                                                initializer=_init_worker, initargs=(threads,)) as pool:
        futs = {pool.submit(run_arm_task, t): i for i, t in enumerate(tasks)}
        for fut in tqdm(concurrent.futures.as_completed(futs), total=len(futs), desc="RL arms", unit="arm",
                        disable=not progress):
            i = futs[fut]
            try:
                results[i] = fut.result()
            except Exception as exc:  # noqa: BLE001 - a worker that died (e.g. killed for memory)
                results[i] = ArmOutcome(tasks[i].spec, "failed", None, False, 0.0, 0.0,
                                        f"worker process failed: {type(exc).__name__}: {exc}")
    return [results[i] for i in range(len(tasks))]
