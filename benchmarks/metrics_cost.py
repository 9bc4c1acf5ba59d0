"""Cost of the hidden-state / diversity metrics as a share of RL step time, side by side.

Two trainers from the same warm start, same seed, same config except the metrics: ON
collects final-norm hidden states in the old-log-prob forward and runs ``StepMetricsHook``
(token entropy, length-controlled and raw effective rank, group ER, strategy/signature
diversity: what every arm of ``searchgym run`` logs per step); OFF does neither. Their
steps are interleaved (ON, OFF, then OFF, ON, ...) so machine load drifts hit both alike.
Sampling is seeded by (seed, step) and hidden states do not change the weights' update, so
both draw the same episodes: the script checks the two runs' token ids match step by step,
which makes the step-time difference the metrics' cost alone.

Reported: mean step time of each; the metrics' share of the ON step = (ON - OFF) time in
the phases whose work differs (the old-log-prob pass, which gathers hidden states or not,
and the post-update part, which runs the hook or not), per step, median over steps; the
hooks' time (``time/metrics_s``, the trainer times them) as a share of the ON step; and the whole-step
difference, which on a loaded machine is dominated by noise in the identical rollout and
update phases.

    python benchmarks/metrics_cost.py [--quick] [--steps 5] [--init MODEL_DIR]
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, print_table, rl_bench_setup  # noqa: E402
from trainer_step import base_config  # noqa: E402


def differing_mean(recs: list[dict], use: list[int], fn) -> float:
    return float(np.mean([fn(recs[i]) for i in use]))


def main() -> None:
    args, world, init = rl_bench_setup(__doc__.splitlines()[0], default_steps=5)
    from searchgym.arms import StepMetricsHook
    from searchgym.training.rl import RLTrainer

    tmp = Path(tempfile.mkdtemp(prefix="sg-bench-mcost-"))
    try:
        # kl_coef 0 (no reference pass); the small preset's batch and group size
        base = base_config(args.quick, args.steps, str(init), "", str(world), kl_coef=0.0, batch_questions=0,
                           n_samples=0)
        on = RLTrainer(dataclasses.replace(base, out=str(tmp / "on"), hidden_states=True),
                       hooks=[StepMetricsHook(32)], progress=False)
        off = RLTrainer(dataclasses.replace(base, out=str(tmp / "off"), hidden_states=False), progress=False)
        recs = {"on": [], "off": []}
        same_tokens = []
        for step in range(args.steps):
            order = (("on", on), ("off", off)) if step % 2 == 0 else (("off", off), ("on", on))
            for name, trainer in order:
                recs[name].append(trainer.step_once())
            a, b = on.last_trajectories, off.last_trajectories
            same_tokens.append(all(x.response_ids == y.response_ids for x, y in zip(a, b)) and len(a) == len(b))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    use = list(range(1, args.steps)) if args.steps > 1 else [0]  # step 1 carries one-off warm-up

    def differing(r: dict) -> float:
        """The phases whose work differs between ON and OFF: the old-log-prob pass (hidden
        states gathered or not) and everything after the update (the hook). Rollout and
        update do identical work in both runs and dominate the step, so leaving them out of
        the difference keeps load noise out of it."""
        return r["time/old_logprob_s"] + (r["time/step_s"] - r["time/rollout_s"] - r["time/old_logprob_s"]
                                          - r["time/update_s"])

    on_r, off_r = recs["on"], recs["off"]
    t_on = float(np.mean([on_r[i]["time/step_s"] for i in use]))
    t_off = float(np.mean([off_r[i]["time/step_s"] for i in use]))
    hook = float(np.mean([on_r[i]["time/metrics_s"] for i in use]))
    paired = [(differing(on_r[i]) - differing(off_r[i])) / on_r[i]["time/step_s"] for i in use]
    share = float(np.median(paired))
    rows = [["metrics OFF", t_off, differing_mean(off_r, use, differing), "", "", ""],
            ["metrics ON", t_on, differing_mean(on_r, use, differing), 100 * share, 100 * hook / t_on,
             100 * (t_on - t_off) / t_off]]
    figs = {
        "steps_averaged": len(use),
        "episodes_per_step": base.batch_questions * base.n_samples,
        "step_s_on": t_on,
        "step_s_off": t_off,
        "metrics_share_of_step": share,
        "hook_share_of_step": hook / t_on,
        "whole_step_overhead_on_vs_off": (t_on - t_off) / t_off,
        "identical_steps": int(sum(same_tokens)),
    }
    print(f"RL steps on the smoke world from {init}: {base.batch_questions} questions x {base.n_samples} "
          f"samples, {base.ppo_epochs} PPO epochs x {base.num_minibatches} mini-batches, T={base.temperature}; "
          f"1 thread; ON/OFF interleaved; averaged over steps {', '.join(str(i + 1) for i in use)}")
    print_table(["run", "step s", "differing phases s", "metrics % of step", "hook % of step",
                 "whole-step diff %"], rows)
    print("metrics % of step: median over steps of (ON - OFF) in the phases that differ (old-log-prob "
          "pass + post-update), over the ON step; whole-step diff % includes load noise from the "
          "identical rollout/update phases")
    print(f"{sum(same_tokens)}/{args.steps} steps drew token-identical episodes in both runs "
          f"(so the difference is the metrics alone)")
    emit("metrics_cost", figs)


if __name__ == "__main__":
    main()
