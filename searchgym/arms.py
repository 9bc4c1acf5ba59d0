"""The experiment's arm stages: the RL-start evaluation of a (warm start, seed) and one RL
arm (warm start x objective x seed), with the per-step metric hook and the fixed
evaluation. :mod:`searchgym.experiment` runs them through the stage cache
(:mod:`searchgym.cache`) and the process pool (:mod:`searchgym.pool`); their code
fingerprint starts from this module, so editing the report, the cache or the pool never
invalidates an arm.

The trainer, the evaluation and the metrics are imported inside the stages and hooks that
run them (torch, transformers, verl: seconds): the process pool's workers import this
module to unpickle any task, the SFT and test tasks included.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from searchgym.metrics.names import TIME_EVAL
from searchgym.retrieval.fileio import append_jsonl, atomic_write_text, read_jsonl

__all__ = ["ArmSpec", "StepMetricsHook", "FixedEvaluation", "eval_seeds", "sft_stage", "start_eval_stage",
           "rl_arm_stage"]


@dataclass(frozen=True)
class ArmSpec:
    """One RL arm: a warm start, an objective and a seed."""

    warm_start: str
    objective: str
    seed: int

    @property
    def arm_id(self) -> str:
        return f"{self.warm_start}-{self.objective}-s{self.seed}"



# ----------------------------------------------------------------------------- metric hooks


class StepMetricsHook:
    """Per-step RL metric hook, ``Callable[[list[Trajectory]], dict]``: the between-sample
    metrics of the step's rollouts (group ER over mean-pooled responses, matched-strategy
    entropy and unmatched rate, the within-response window ER; needs
    ``RLConfig.hidden_states=True`` for the ER numbers), under their
    ``searchgym.metrics.summarize_rollouts`` names (the trainer writes them as
    ``train/<name>``, and the hooks' cost as ``time/metrics_s``, which the report shows as a
    share of step time)."""

    KEYS = ("group_er", "group_er_resid", "aligned_er", "er_within_window", "strategy_entropy",
            "strategy_entropy_plugin", "distinct_strategies", "strategy_coverage", "unmatched_rate",
            "distinct_queries")

    def __init__(self, er_window: int = 32):
        self.er_window = er_window

    def __call__(self, trajs) -> dict:
        from searchgym.evaluation import trajectory_records
        from searchgym.metrics.summary import summarize_rollouts

        s = summarize_rollouts(trajectory_records(trajs), k=(1,), er_window=self.er_window, erv=False,
                               full_er=False)
        return {k: float(s[k]) for k in self.KEYS if isinstance(s.get(k), (int, float))}


class FixedEvaluation:
    """The fixed evaluation of one (warm start, seed): the first ``cfg.questions`` questions
    of ``cfg.split``, ``cfg.samples`` rollouts each, sampled with ``seed``
    (:func:`searchgym.evaluation.evaluate_fixed`). Envs and the embedder are made once."""

    def __init__(self, cfg, world: str, max_turns: int, max_new_tokens: int, untrained_dir: str | None = None):
        self.cfg, self.world, self.max_turns, self.max_new_tokens = cfg, world, max_turns, max_new_tokens
        self.untrained_dir = untrained_dir
        self._envs = self._embed = self._untrained = None

    def __call__(self, model, tokenizer, seed: int, untrained_control: bool = False):
        from searchgym.evaluation import evaluate_fixed
        from searchgym.training.common import load_model, make_envs

        c = self.cfg
        if self._envs is None:
            self._envs, total = make_envs(c.family, min(64, c.questions * c.samples), c.split, self.world,
                                          self.max_turns)
            self._questions = list(range(min(c.questions, total)))
        if c.vendi and self._embed is None:
            from searchgym.metrics.diversity import default_embedder

            self._embed = default_embedder(c.embed_precision)
        untrained = None
        if untrained_control and self.untrained_dir:
            if self._untrained is None:
                self._untrained, _ = load_model(self.untrained_dir)
            untrained = self._untrained
        return evaluate_fixed(model, tokenizer, self._envs, self._questions, samples=c.samples,
                              temperature=c.temperature, max_new_tokens=self.max_new_tokens, sampling_seed=seed,
                              er_window=c.er_window, vendi=c.vendi, embed_fn=self._embed, untrained=untrained,
                              graph_layer=c.graph_layer)


def eval_seeds(seed: int) -> tuple[int, int]:
    """Sampling seeds of a seed's evaluations: replica A (every evaluation of every arm of
    that seed) and replica B (the RL-start null control)."""
    return 1000 + seed, 5000 + seed


def _write_eval_files(out: Path, records: list[dict], question_records: list[dict]) -> None:
    for name, recs in (("eval.jsonl", records), ("eval_questions.jsonl", question_records)):
        atomic_write_text(out / name, "".join(json.dumps(_strict(r)) + "\n" for r in recs))


def _strict(obj):
    """Strict JSON: non-finite numbers (a metric with no input) become null."""
    if isinstance(obj, dict):
        return {str(k): _strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        return _strict(obj.item())
    return obj


def sft_stage(spec: ArmSpec, config: dict, out: Path, inputs: dict[str, Path], scratch: Path) -> dict:
    """An SFT warm start (``spec.warm_start``'s demonstrations) from the tiny model."""
    from searchgym.training.sft import train_sft

    cfg = dataclasses.replace(config["sft"], model=str(inputs["model"] / "model"),
                              demos=str(inputs["demos"] / f"{spec.warm_start}.jsonl"), out=str(out),
                              world=str(inputs["world"] / "world"), threads=config.get("threads", 0))
    train_sft(cfg, progress=config.get("progress", False))
    return {}


def start_eval_stage(spec: ArmSpec, config: dict, out: Path, inputs: dict[str, Path], scratch: Path) -> dict:
    """The RL-start evaluation of one (warm start, seed), shared by every objective's arm:
    replica A with the untrained-model control, and replica B (another sampling seed) for
    the null control."""
    from searchgym.training.common import load_model, set_threads

    ev, rl = config["eval"], config["rl"]
    world = str(inputs["world"] / "world")
    set_threads(config.get("threads", 0))
    model, tok = load_model(inputs["warm_start"] / "model")
    fixed = FixedEvaluation(ev, world, rl.max_turns, rl.max_new_tokens, str(inputs["model"] / "model"))
    recs, qrecs = [], []
    for replica, seed in zip(("A", "B"), eval_seeds(spec.seed)):
        res = fixed(model, tok, seed, untrained_control=replica == "A")
        recs.append(res.record(0, replica))
        qrecs += res.question_records(0, replica)
    _write_eval_files(out, recs, qrecs)
    return {"eval_time_s": sum(r[TIME_EVAL] for r in recs)}


def _read_jsonl_lenient(path: Path) -> list[dict]:
    return read_jsonl(path) if path.exists() else []


def rl_arm_stage(spec: ArmSpec, config: dict, out: Path, inputs: dict[str, Path], scratch: Path) -> dict:
    """One RL arm: RL from the warm start with the per-step hook and the fixed evaluation
    (replica A sampling seed) every ``eval.every`` steps and at the end, the untrained-model
    control at the end; the RL-start evaluation is the shared start stage's. Resumable from
    ``scratch`` checkpoints."""
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
    fixed = FixedEvaluation(ev, world, cfg.max_turns, cfg.max_new_tokens, str(inputs["model"] / "model"))
    side = scratch / "evals.jsonl"  # survives an interruption; deduplicated by step below
    seed_a = eval_seeds(spec.seed)[0]

    def evaluation(model, tokenizer, step: int) -> dict:
        """The trainer's evaluation: the fixed evaluation, recorded in ``side`` (not in metrics.jsonl)."""
        if step == 0:
            return {}  # the RL start is the shared start stage's evaluation
        res = fixed(model, tokenizer, seed_a, untrained_control=step >= cfg.steps)
        append_jsonl(side, {"record": _strict(res.record(step, "A")),
                            "questions": _strict(res.question_records(step, "A"))})
        return {}

    t0 = time.perf_counter()
    model_dir = RLTrainer(cfg, hooks=[StepMetricsHook(ev.er_window)], evaluation=evaluation,
                          progress=config.get("progress", True)).run(resume=resume)
    evals = {}
    for rec in _read_jsonl_lenient(side):
        if rec["record"]["step"] <= cfg.steps:
            evals[rec["record"]["step"]] = rec  # a resumed run re-evaluates a step: the last one wins
    recs = _read_jsonl_lenient(inputs["start_eval"] / "eval.jsonl")
    qrecs = _read_jsonl_lenient(inputs["start_eval"] / "eval_questions.jsonl")
    for step in sorted(evals):
        recs.append(evals[step]["record"])
        qrecs += evals[step]["questions"]
    _write_eval_files(out, recs, qrecs)
    steps = [r for r in _read_jsonl_lenient(run_dir / "metrics.jsonl") if r.get("step", 0) >= 1]
    atomic_write_text(out / "metrics.jsonl", "".join(json.dumps(_strict(r)) + "\n" for r in steps))
    shutil.copytree(model_dir, out / "model")
    # provenance: the step an interrupted arm resumed from (None: ran from the start)
    return {"steps": len(steps), "evals": len(recs), "train_s": time.perf_counter() - t0,
            "resumed_from_step": int(last.name[5:]) if resume else None}
