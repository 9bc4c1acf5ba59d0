"""One RL step, the original path vs. the fast path, side by side in interleaved rounds.

Two embedded trainers (``RLTrainer``, the class ``searchgym run`` uses, with its per-step
``StepMetricsHook``) start from the same warm start with the same config and seed:

- **before**: ``RLTrainer(..., pack=False, reuse_rollout_logprobs=False)``, the original
  step: a no-grad old-log-prob forward over the right-padded batch, padded mini-batches,
  glibc's default malloc thresholds (``tune_malloc(False)`` before each of its steps);
- **after**: the defaults: packed sequences (no padding computed, a prompt shared by a
  question's samples computed once) in the update and the reference pass, the engine's recorded log-probs / entropies / final-norm hidden states
  instead of the old-log-prob forward, one ``log_softmax`` for log-prob + entropy, and the
  raised malloc thresholds (``training.common.tune_malloc``: freed activations are reused,
  not unmapped and page-faulted in again).

Steps alternate (round r runs before-after when r is even, after-before when odd), so
load drift hits both sides alike; the ratios are per round, the median reported, for wall
time and for the process's CPU time (``time.process_time``, robust to a shared machine).
Both trainers sample from (seed, step) with the same weights up to float round-off, so
their episodes stay token-identical as long as round-off flips no sample (reported).

Config: the main job's small RL config as ``get_preset("small").rl`` defines it (small
preset model and batch, e.g. 8 questions x 8 samples, 2 PPO epochs x 2 mini-batches, its
temperature; hidden states + ``StepMetricsHook`` on; ``--batch-questions/--n-samples``
override the batch; ``kl_coef`` as given: 0 is the preset, 0.001, Search-R1's default,
adds the reference pass) on the smoke world from a cached quick SFT warm start, 1 thread.

The update's **fraction of the matmul peak**: useful FLOPs of the update (valid tokens
only: 6 x linear parameters per token, 6 x d x V per policy token for the LM head,
6 x d x L^2 per layer per sequence for causal attention; per PPO epoch) / update seconds /
the fp32 1-thread matmul peak, measured in the same run between the rounds (best of
square 512/1024/2048 matmuls). The fast path computes a prompt shared by a question's
samples once (``update.pack_layout``), so it is also given on the FLOPs it computed
("on computed FLOPs": the hardware's efficiency), and the sharing alone is measured side
by side on the last batch (packed forward + backward, shared vs once per sample).

    python benchmarks/trainer_step.py [--quick] [--steps 5] [--kl-coef 0] [--batch-questions 8 --n-samples 4]
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from searchgym.machine import matmul_peak_gflops
from searchgym.metrics.names import TRAIN_EPISODE_LENGTH, TRAIN_RESPONSE_LENGTH, UPDATE_ROLLOUT_LOGPROB_ABSDIFF

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, print_table, rl_bench_setup  # noqa: E402

PHASES = ("rollout", "old_logprob", "reference", "advantages", "update", "metrics")
SIDES = ("before", "after")


ROLES = ("rollout", "policy", "reference", "update")


class CallTimer:
    """Wraps what ``searchgym.training.rl`` calls in a step (``forward_logprobs`` /
    ``packed_forward_logprobs``: the no-grad passes, split into policy and reference by
    the model argument; ``ppo_update``; ``RLTrainer.rollout``) and sums wall and CPU
    (``time.process_time``) seconds per role."""

    NAMES = ("forward_logprobs", "packed_forward_logprobs", "ppo_update")

    def __init__(self):
        import searchgym.training.rl as rl

        self.rl = rl
        self.inner = {n: getattr(rl, n) for n in self.NAMES}
        self.inner_rollout = rl.RLTrainer.rollout
        self.ref_models: list = []
        self.wall, self.cpu = dict.fromkeys(ROLES, 0.0), dict.fromkeys(ROLES, 0.0)

    def _wrap(self, fn, role_of):
        def timed(first, *a, **kw):
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                return fn(first, *a, **kw)
            finally:
                role = role_of(first)
                self.wall[role] += time.perf_counter() - t0
                self.cpu[role] += time.process_time() - c0
        return timed

    def take(self) -> tuple[dict, dict]:
        out = (self.wall, self.cpu)
        self.wall, self.cpu = dict.fromkeys(ROLES, 0.0), dict.fromkeys(ROLES, 0.0)
        return out

    def __enter__(self):
        for n, fn in self.inner.items():
            role_of = (lambda m: "update") if n == "ppo_update" else (
                lambda m: "reference" if any(m is r for r in self.ref_models) else "policy")
            setattr(self.rl, n, self._wrap(fn, role_of))
        self.rl.RLTrainer.rollout = self._wrap(self.inner_rollout, lambda _: "rollout")
        return self

    def __exit__(self, *exc):
        for n, fn in self.inner.items():
            setattr(self.rl, n, fn)
        self.rl.RLTrainer.rollout = self.inner_rollout


def update_flops(model, trajs, ppo_epochs: int) -> float:
    """Useful FLOPs of the PPO update on ``trajs`` (forward + backward, every episode's valid
    tokens, no padding)."""
    lens = np.array([len(t.prompt_ids) + len(t.response_ids) for t in trajs], dtype=np.float64)
    policy = float(sum(sum(t.loss_mask) for t in trajs))
    return ppo_epochs * computed_flops(model, lens.sum(), (lens**2).sum(), policy)


class LayoutCounter:
    """Counts what the update's packed forwards compute: wraps ``update.pack_layout`` and,
    for calls with autograd on (the update, not the no-grad passes), records the packed
    tokens and the attention term sum n (2 m + n) over segments (n queries, m shared-prefix
    keys), so the update's FLOPs can be counted on the tokens actually computed."""

    def __init__(self):
        import searchgym.training.update as update

        self.update, self.inner = update, update.pack_layout
        self.tokens, self.attention = 0, 0

    def __enter__(self):
        import torch

        def counted(*a, **kw):
            layout = self.inner(*a, **kw)
            if torch.is_grad_enabled():
                sizes = [e - b for b, e in layout.spans]
                self.tokens += len(layout.token_ids)
                self.attention += sum(n * (2 * (sizes[j] if j >= 0 else 0) + n)
                                      for n, j in zip(sizes, layout.prefix_of))
            return layout

        self.update.pack_layout = counted
        return self

    def __exit__(self, *exc):
        self.update.pack_layout = self.inner

    def take(self) -> tuple[int, int]:
        out = (self.tokens, self.attention)
        self.tokens, self.attention = 0, 0
        return out


def computed_flops(model, tokens: float, attention: float, policy_tokens: float) -> float:
    """Forward + backward FLOPs of ``tokens`` tokens through the decoder (6 x linear
    parameters each), causal attention with ``attention`` = sum of L^2 over sequences (6 x
    d x L^2 per layer; ``LayoutCounter``'s term for packed segments) and the LM head on
    ``policy_tokens`` (6 x d x V each)."""
    cfg = model.config
    d, layers, vocab = cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size
    names = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    linear = sum(p.numel() for n, p in model.named_parameters()
                 if n.endswith(".weight") and any(f".{k}." in n for k in names))
    heads_dim = cfg.num_attention_heads * (getattr(cfg, "head_dim", None) or d // cfg.num_attention_heads)
    return float(6 * linear * tokens + 6 * d * vocab * policy_tokens + 6 * heads_dim * layers * attention)


def prefix_sharing(trainer, rounds: int = 3) -> dict:
    """Packed forward + backward of the trainer's last batch (its mini-batch count), the
    prompt shared by a question's samples computed once vs once per sample, interleaved:
    median CPU-time ratio, packed tokens each way, and the largest |log-prob| difference."""
    import torch

    from searchgym.training.update import pack_layout, packed_forward_logprobs

    model, cfg = trainer.model, trainer.cfg
    batch = trainer.make_batch(trainer.last_trajectories)
    parts = [batch.select(idx) for idx in torch.tensor_split(torch.arange(len(batch)), cfg.num_minibatches)]

    def run(share: bool) -> tuple[float, list]:
        c0, out = time.process_time(), []
        for mb in parts:
            model.zero_grad(set_to_none=True)
            lp, ent, _ = packed_forward_logprobs(model, mb.input_ids, mb.attention_mask, mb.response_mask,
                                                 cfg.temperature, share_prefix=share)
            (lp.sum() + ent.sum()).backward()
            out.append(lp.detach())
        return time.process_time() - c0, out

    model.train()
    times = {True: [], False: []}
    lps = {}
    for r in range(rounds):
        for share in ((True, False) if r % 2 else (False, True)):
            t, lps[share] = run(share)
            times[share].append(t)
    model.zero_grad(set_to_none=True)
    tokens = {share: sum(len(pack_layout(mb.input_ids, mb.attention_mask.sum(1).tolist(), mb.response_mask,
                                         share).token_ids) for mb in parts) for share in (True, False)}
    return {"prefix_share_cpu_ratio": float(np.median([a / b for a, b in zip(times[True], times[False])])),
            "prefix_share_tokens": tokens[True], "prefix_unshared_tokens": tokens[False],
            "prefix_share_logprob_maxdiff": float(max((a - b).abs().max() for a, b in zip(lps[True], lps[False])))}


def base_config(quick: bool, steps: int, init: str, out: str, world: str, kl_coef: float,
                batch_questions: int, n_samples: int):
    from searchgym.presets import get_preset

    rl = get_preset("small").rl
    over = dict(init=init, out=out, world=world, steps=steps, kl_coef=kl_coef, tensorboard=False,
                threads=1, save_every=10_000, eval_every=0, hidden_states=True)
    if batch_questions:
        over["batch_questions"] = batch_questions
    if n_samples:
        over["n_samples"] = n_samples
    if quick:
        over.update(batch_questions=2, n_samples=2, max_new_tokens=24, max_turns=3, num_minibatches=1)
    return dataclasses.replace(rl, **over)


def main() -> None:
    args, world, init = rl_bench_setup(__doc__.splitlines()[0], default_steps=5, extra=[
        ("--kl-coef", dict(type=float, default=None,
                           help="0 = the small preset (default); 0.001 adds the reference pass (--quick's default)")),
        ("--batch-questions", dict(type=int, default=0, help="questions per step (0 = preset)")),
        ("--n-samples", dict(type=int, default=0, help="samples per question (0 = preset)")),
    ])
    if args.kl_coef is None:
        args.kl_coef = 0.001 if args.quick else 0.0
    import torch

    from searchgym.arms import StepMetricsHook
    from searchgym.training.common import tune_malloc
    from searchgym.training.rl import RLTrainer

    tmp = Path(tempfile.mkdtemp(prefix="sg-bench-step-"))
    timer = CallTimer()
    counter = LayoutCounter()
    rows = {s: [] for s in SIDES}  # per step: phases, wall, cpu, flops
    peaks, same_tokens = [], []
    try:
        with timer, counter:
            trainers = {}
            for side in SIDES:
                cfg = base_config(args.quick, args.steps, str(init), str(tmp / side), str(world), args.kl_coef,
                                  args.batch_questions, args.n_samples)
                fast = side == "after"
                trainers[side] = RLTrainer(cfg, hooks=[StepMetricsHook(32)], progress=False, pack=fast,
                                           reuse_rollout_logprobs=fast)
                if trainers[side].ref_model is not None:
                    timer.ref_models.append(trainers[side].ref_model)
            torch.manual_seed(cfg.seed)
            t_start = time.perf_counter()
            for r in range(args.steps):
                peaks.append(matmul_peak_gflops())
                order = SIDES if r % 2 == 0 else SIDES[::-1]
                for side in order:
                    tr = trainers[side]
                    tune_malloc(side == "after")  # the allocator thresholds are per process: set per side
                    c0 = time.process_time()
                    rec = tr.step_once()
                    cpu = time.process_time() - c0
                    fwd = timer.take()
                    tokens, attention = counter.take()
                    policy = float(sum(sum(t.loss_mask) for t in tr.last_trajectories)) * cfg.ppo_epochs
                    rows[side].append({"rec": rec, "fwd": fwd, "cpu": cpu,
                                       "flops": update_flops(tr.model, tr.last_trajectories, cfg.ppo_epochs),
                                       "computed_flops": computed_flops(tr.model, tokens, attention, policy)
                                       if tokens else None,
                                       "tokens": [list(t.response_ids) for t in tr.last_trajectories]})
                same_tokens.append(rows["before"][-1]["tokens"] == rows["after"][-1]["tokens"])
            wall = time.perf_counter() - t_start
            sharing = prefix_sharing(trainers["after"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    # Step 1 pays one-off costs (first forward, allocator warm-up); use the rest.
    use = list(range(1, args.steps)) if args.steps > 1 else [0]
    peak = max(peaks)
    figs: dict = {"steps_averaged": len(use), "episodes_per_step": cfg.batch_questions * cfg.n_samples,
                  "kl_coef": cfg.kl_coef, "matmul_peak_gflops": peak,
                  "token_identical_steps": float(sum(same_tokens[i] for i in use))}

    def phases(row, clock: int) -> dict:
        """Phase seconds of one step; clock 0 = wall, 1 = CPU. ``advantages`` / ``metrics``:
        the rest of the trainer's log-prob phase / of the step (wall from its own fields)."""
        t = row["fwd"][clock]
        out = {"rollout": t["rollout"], "old_logprob": t["policy"], "reference": t["reference"],
               "update": t["update"]}
        step = row["rec"]["time/step_s"] if clock == 0 else row["cpu"]
        if clock == 0:
            out["advantages"] = row["rec"]["time/old_logprob_s"] - t["policy"] - t["reference"]
        else:
            out["advantages"] = 0.0  # inside "metrics" below (CPU: not split by the trainer's fields)
        out["metrics"] = step - sum(out.values())
        out["step"] = step
        return out

    per = {}
    for side in SIDES:
        for clock, tag in ((1, "cpu"), (0, "wall")):
            vals = [phases(rows[side][i], clock) for i in use]
            for p in PHASES + ("step",):
                figs[f"{side}_{p}_{tag}_s"] = float(np.mean([v[p] for v in vals]))
        flops = [rows[side][i]["flops"] for i in use]
        upd_cpu = [rows[side][i]["fwd"][1]["update"] for i in use]
        figs[f"{side}_update_gflops_cpu"] = float(np.mean([f / u / 1e9 for f, u in zip(flops, upd_cpu)]))
        figs[f"{side}_update_peak_frac"] = figs[f"{side}_update_gflops_cpu"] / peak
        computed = [rows[side][i]["computed_flops"] for i in use]
        if all(c is not None for c in computed):  # the packed side: FLOPs of the tokens computed
            figs[f"{side}_update_computed_gflops_cpu"] = float(np.mean([f / u / 1e9 for f, u in zip(computed, upd_cpu)]))
            figs[f"{side}_update_computed_peak_frac"] = figs[f"{side}_update_computed_gflops_cpu"] / peak
        per[side] = {p: figs[f"{side}_{p}_cpu_s"] for p in PHASES + ("step",)}

    def ratio(key, clock):
        return float(np.median([phases(rows["after"][i], clock)[key] / phases(rows["before"][i], clock)[key]
                                for i in use]))

    figs["step_cpu_ratio"] = ratio("step", 1)
    figs["update_cpu_ratio"] = ratio("update", 1)
    figs["step_wall_ratio"] = ratio("step", 0)
    figs["update_wall_ratio"] = ratio("update", 0)
    figs["policy_tokens_per_episode"] = float(np.mean([rows["after"][i]["rec"][TRAIN_RESPONSE_LENGTH] for i in use]))
    figs["episode_tokens"] = float(np.mean([rows["after"][i]["rec"][TRAIN_EPISODE_LENGTH] for i in use]))
    for side in SIDES:
        figs[f"{side}_logprob_absdiff"] = float(np.mean([rows[side][i]["rec"][UPDATE_ROLLOUT_LOGPROB_ABSDIFF]
                                                         for i in use]))

    figs.update(sharing)
    table = []
    for p in PHASES + ("step",):
        b, a = per["before"][p], per["after"][p]
        table.append([p, b, a, a / b if b > 1e-3 else "-", figs[f"before_{p}_wall_s"], figs[f"after_{p}_wall_s"]])
    table.append(["update GFLOP/CPU-s", figs["before_update_gflops_cpu"], figs["after_update_gflops_cpu"],
                  figs["after_update_gflops_cpu"] / figs["before_update_gflops_cpu"], "", ""])
    table.append(["update % of peak", 100 * figs["before_update_peak_frac"], 100 * figs["after_update_peak_frac"],
                  "", "", ""])
    table.append(["  on computed FLOPs", "",
                  100 * figs["after_update_computed_peak_frac"], "", "", ""])
    print(f"RL steps on the smoke world from {init}: small RL config ({cfg.batch_questions} questions x "
          f"{cfg.n_samples} samples, {cfg.ppo_epochs} PPO epochs x {cfg.num_minibatches} mini-batches, "
          f"T={cfg.temperature}, kl_coef={cfg.kl_coef}, hidden states + StepMetricsHook on); 1 thread; "
          f"{args.steps} interleaved rounds in {wall:.1f} s, step 1 dropped")
    print(f"{figs['policy_tokens_per_episode']:.0f} policy tokens / {figs['episode_tokens']:.0f} response tokens "
          f"per episode; token-identical episodes in {int(figs['token_identical_steps'])}/{len(use)} steps; "
          f"fp32 matmul peak {peak:.0f} GFLOP per CPU-second (1 thread, best in this run)")
    print_table(["phase", "before CPU s", "after CPU s", "after/before", "before wall s", "after wall s"], table)
    print(f"median per-round ratio after/before: step {figs['step_cpu_ratio']:.3f} CPU time "
          f"({figs['step_wall_ratio']:.3f} wall), update {figs['update_cpu_ratio']:.3f} CPU "
          f"({figs['update_wall_ratio']:.3f} wall); log-prob |engine - trainer| "
          f"{figs['before_logprob_absdiff']:.1e} (full recompute) / {figs['after_logprob_absdiff']:.1e} "
          f"(first mini-batch). CPU-time figures are the ones to read on a shared machine.")
    print(f"prefix sharing (a question's prompt computed once for its samples), packed forward + backward of the "
          f"last batch: {figs['prefix_share_cpu_ratio']:.3f}x CPU time, {figs['prefix_share_tokens']} vs "
          f"{figs['prefix_unshared_tokens']} tokens computed; max |log-prob difference| "
          f"{figs['prefix_share_logprob_maxdiff']:.1e}. 'update % of peak' counts every episode's valid tokens "
          f"(what the update delivers); 'on computed FLOPs' counts a shared prompt once (the hardware's efficiency)")
    emit("trainer_step", figs)


if __name__ == "__main__":
    main()
