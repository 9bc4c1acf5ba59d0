"""Where one RL step's time goes: rollout, old log-probs, reference, update, metrics.

A few steps of the embedded trainer (``RLTrainer(...).run()``, the same class and per-step
hook ``searchgym run`` uses) with the main job's small RL config (small preset model,
T = 0.7, multi-hop questions, 8 questions x 4 samples, 2 PPO epochs x 2 mini-batches,
hidden states + ``StepMetricsHook`` on) on the smoke world, from a quickly SFT'd warm start
(cached; accuracy does not matter here), plus a frozen reference (``kl_coef`` 0.001,
Search-R1's default) so the reference phase is present.

Phases come from the trainer's own timing fields in ``metrics.jsonl``
(``time_rollout_s``, ``time_old_logprob_s``, ``time_update_s``, ``time_step_s``). The trainer
logs the reference forward inside ``time_old_logprob_s``; this script splits it out by
timing each call of the trainer's ``forward_logprobs`` from outside (a wrapper around the
module function, the model argument tells policy from reference). ``metrics`` = step time
- (rollout + log-probs + update): outcome summary + the metric hook.

    python benchmarks/trainer_step.py [--quick] [--steps 4] [--init MODEL_DIR]
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, print_table, rl_bench_setup  # noqa: E402

PHASES = ("rollout", "old_logprob", "reference", "advantages", "update", "metrics")


class CallTimer:
    """Wraps ``searchgym.training.rl.forward_logprobs`` and sums its time per model role."""

    def __init__(self):
        import searchgym.training.rl as rl

        self.rl = rl
        self.inner = rl.forward_logprobs
        self.ref_model = None
        self.seconds = {"policy": 0.0, "reference": 0.0}

    def __call__(self, model, *a, **kw):
        t0 = time.perf_counter()
        try:
            return self.inner(model, *a, **kw)
        finally:
            role = "reference" if (self.ref_model is not None and model is self.ref_model) else "policy"
            self.seconds[role] += time.perf_counter() - t0

    def take(self) -> dict:
        out, self.seconds = self.seconds, {"policy": 0.0, "reference": 0.0}
        return out

    def __enter__(self):
        self.rl.forward_logprobs = self
        return self

    def __exit__(self, *exc):
        self.rl.forward_logprobs = self.inner


def base_config(quick: bool, steps: int, init: str, out: str, world: str):
    from searchgym.presets import get_preset

    rl = get_preset("small").rl
    over = dict(init=init, out=out, world=world, steps=steps, kl_coef=0.001, tensorboard=False,
                threads=1, save_every=10_000, eval_every=0, hidden_states=True)
    if quick:
        over.update(batch_questions=2, n_samples=2, max_new_tokens=24, max_turns=3, num_minibatches=1)
    return dataclasses.replace(rl, **over)


def main() -> None:
    args, world, init = rl_bench_setup(__doc__.splitlines()[0], default_steps=4)
    from searchgym.experiment import StepMetricsHook
    from searchgym.training.rl import RLTrainer

    tmp = Path(tempfile.mkdtemp(prefix="sg-bench-step-"))
    try:
        cfg = base_config(args.quick, args.steps, str(init), str(tmp / "run"), str(world))
        timer = CallTimer()
        per_step_fwd = []

        class Trainer(RLTrainer):
            def step_once(self):  # collect the wrapper's per-step sums next to the logged line
                rec = super().step_once()
                per_step_fwd.append(timer.take())
                return rec

        with timer:
            trainer = Trainer(cfg, hooks=[StepMetricsHook(32)], progress=False)
            timer.ref_model = trainer.ref_model
            t0 = time.perf_counter()
            trainer.run()
            wall = time.perf_counter() - t0
        recs = [json.loads(line) for line in (tmp / "run" / "metrics.jsonl").read_text().splitlines()]
        recs = [r for r in recs if r.get("step", 0) >= 1]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if len(recs) != args.steps or len(per_step_fwd) != args.steps:
        raise RuntimeError(f"expected {args.steps} step records, got {len(recs)}")

    # Step 1 pays one-off costs (first forward, allocator warm-up); average the rest.
    use = list(range(1, len(recs))) if len(recs) > 1 else [0]
    phase_s = {p: [] for p in PHASES}
    for i in use:
        r, fwd = recs[i], per_step_fwd[i]
        phase_s["rollout"].append(r["time_rollout_s"])
        phase_s["old_logprob"].append(fwd["policy"])
        phase_s["reference"].append(fwd["reference"])
        phase_s["advantages"].append(r["time_old_logprob_s"] - fwd["policy"] - fwd["reference"])
        phase_s["update"].append(r["time_update_s"])
        phase_s["metrics"].append(r["time_step_s"] - r["time_rollout_s"] - r["time_old_logprob_s"]
                                  - r["time_update_s"])
    step_s = float(np.mean([recs[i]["time_step_s"] for i in use]))
    hook_s = float(np.mean([recs[i].get("metrics_time_s", 0.0) for i in use]))
    figs = {"steps_averaged": len(use), "episodes_per_step": cfg.batch_questions * cfg.n_samples,
            "step_s": step_s,
            "policy_tokens_per_episode": float(np.mean([recs[i]["response_length"] for i in use])),
            "episode_tokens": float(np.mean([recs[i]["episode_length"] for i in use]))}
    rows = []
    for p in PHASES:
        s = float(np.mean(phase_s[p]))
        figs[f"{p}_s"] = s
        figs[f"{p}_share"] = s / step_s
        rows.append([p, s, 100 * s / step_s])
    figs["metric_hook_share"] = hook_s / step_s
    rows.append(["step (sum)", step_s, 100.0])

    print(f"RL steps on the smoke world from {init}: small RL config ({cfg.batch_questions} questions x "
          f"{cfg.n_samples} samples, {cfg.ppo_epochs} PPO epochs x {cfg.num_minibatches} mini-batches, "
          f"T={cfg.temperature}, kl_coef={cfg.kl_coef}, hidden states + StepMetricsHook on); 1 thread")
    print(f"{len(recs)} steps in {wall:.1f} s (incl. setup/checkpoint); phases averaged over steps "
          f"{', '.join(str(i + 1) for i in use)}; {figs['policy_tokens_per_episode']:.0f} policy tokens "
          f"/ {figs['episode_tokens']:.0f} response tokens per episode")
    print_table(["phase", "seconds", "% of step"], rows)
    print(f"(old_logprob / reference: the forward passes; advantages: the rest of the trainer's "
          f"time_old_logprob_s; metrics: outcome summary + StepMetricsHook, whose own cost is "
          f"{100 * hook_s / step_s:.2f}% of the step)")
    emit("trainer_step", figs)


if __name__ == "__main__":
    main()
