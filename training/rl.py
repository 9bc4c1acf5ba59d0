"""Embedded RL trainer: one process, verl's core algorithms, searchgym's envs and engine.

One step:

1. rollout ``n_samples`` x ``batch_questions`` episodes with the batched engine
   (sampling seeded by ``(seed, step)``, so a resumed run samples what the original did);
2. rewards from the env; old log-probs / entropies (and final-norm hidden states when
   needed) as the engine recorded them while sampling (``ROLLOUT_LOGPROB_TOL``; a no-grad
   recompute when a trajectory lacks them or they drift); reference log-probs (packed
   forward) only when ``kl_coef > 0``;
3. advantages from ``verl...get_adv_estimator_fn(adv_estimator)``, then the objective's
   advantage transform;
4. ``ppo_epochs`` x ``num_minibatches`` optimizer steps (``update.ppo_update``), each
   mini-batch forwarded as packed sequences (no padding computed; a prompt shared by a
   question's samples computed once);
5. one line appended to ``<out>/metrics.jsonl`` and TensorBoard scalars; hooks
   ``(trajectories) -> dict`` add their fields to the line; checkpoint every
   ``save_every`` steps.

``train_rl(config)`` is the in-process API; ``searchgym train rl`` wraps it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from searchgym.agents.policy import summarize
from searchgym.agents.rollout import RolloutConfig, RolloutEngine
from searchgym.envs.env import EnvConfig
from searchgym.metrics import names as mn
from searchgym.metrics.entropy import token_entropy_stats
from searchgym.retrieval.fileio import append_jsonl, atomic_write_json
from searchgym.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint, truncate_metrics
from searchgym.training.common import (
    evaluate, load_model, make_envs, make_optimizer, make_scheduler, read_train_info, save_model, set_threads,
)
from searchgym.training.config import RLConfig, dataclass_to_dict
from searchgym.training.diagnostics import step_mechanism_metrics
from searchgym.training.objectives import make_objective
from searchgym.training.update import (
    PaddedBatch, compute_advantages, forward_logprobs, packed_forward_logprobs, pad_batch, policy_hidden_states,
    ppo_update,
)

__all__ = ["train_rl", "StepHook", "Evaluation", "GreedyValidation", "RLTrainer", "RESUME_MAY_CHANGE", "ROLLOUT_LOGPROB_TOL"]

#: Largest policy-token mean |engine log-prob - trainer log-prob| (nats) at which the
#: engine's recorded log-probs stand in for the old-log-prob pass. They are the sampling
#: distribution itself, computed by the same weights through the KV-cached decode path,
#: so they differ from a full forward by float round-off only (measured ~1e-6); a ratio
#: error of exp(1e-3) - 1 = 0.1% is far inside PPO's 20% clip. Checked every step on the
#: update's first mini-batch (before its optimizer step); above it the trainer falls back
#: to recomputing for the rest of the run.
ROLLOUT_LOGPROB_TOL = 1e-3

#: RLConfig fields a resumed run may change (where and how long it runs, not what it
#: trains); any other difference from the run's config.json refuses the resume.
RESUME_MAY_CHANGE = ("out", "steps", "threads", "save_every", "keep_last", "tensorboard")

#: A per-step metrics hook: gets the step's trajectories (with ``hidden_states`` filled
#: when ``RLConfig.hidden_states`` is on), returns rollout metrics that the trainer writes
#: to metrics.jsonl as ``train/<key>`` (the hooks' wall time together: ``time/metrics_s``).
StepHook = Callable[[list], dict]

#: The trainer's evaluation, ``(model, tokenizer, step) -> {metric: value}``: called at step
#: 0 of a fresh run, every ``RLConfig.eval_every`` steps and at the last step (never when
#: ``eval_every`` is 0), with the model in the state of that step. The trainer writes the
#: returned fields under ``val/<metric>`` and the call's wall time as ``time/eval_s``; an
#: evaluation that records its results elsewhere returns ``{}``.
Evaluation = Callable[[Any, Any, int], Mapping[str, float]]


class GreedyValidation:
    """The default :data:`Evaluation`: greedy rollouts on the first ``eval_questions``
    questions of ``eval_family`` / ``val_split`` (``training.common.evaluate``: accuracy,
    reward_mean, format_error_rate, searches_per_episode, num_episodes); envs made once."""

    def __init__(self, config: RLConfig, world: str, retriever: str = ""):
        self.cfg, self.world, self.retriever = config, world, retriever
        self.envs = None

    def __call__(self, model, tokenizer, step: int) -> dict[str, float]:
        c = self.cfg
        if self.envs is None:
            self.envs, _ = make_envs(c.eval_family, min(c.eval_questions, 64), c.val_split, self.world,
                                     c.max_turns, self.retriever, **c.env_kwargs)
        return evaluate(model, tokenizer, family=c.eval_family, split=c.val_split, num_questions=c.eval_questions,
                        envs=self.envs, max_turns=c.max_turns, max_new_tokens=c.max_new_tokens, seed=c.seed)


def _scalar(v):
    if isinstance(v, (bool, np.bool_)):
        return float(v)
    if isinstance(v, (int, float, np.integer, np.floating)):
        return float(v)
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        return float(v)
    return None


class RLTrainer:
    """Holds the model, optimizer, envs and engine of one RL run (see ``train_rl``)."""

    def __init__(self, config: RLConfig, hooks: Sequence[StepHook] = (), progress: bool = True, *,
                 evaluation: Evaluation | None = None, pack: bool = True, reuse_rollout_logprobs: bool = True):
        """``evaluation``: run at step 0 of a fresh run, every ``eval_every`` steps and at the
        last step (``Evaluation``; default :class:`GreedyValidation`). ``pack``: forward packed sequences (no padding computed, a shared prompt computed once) in the update and in
        the recompute / reference passes. ``reuse_rollout_logprobs``: take the old
        log-probs, entropies and (when needed) final-norm hidden states the engine recorded
        while sampling instead of a separate no-grad forward (``ROLLOUT_LOGPROB_TOL``).
        Both change how a step computes, not what: ``False, False`` is the original path,
        kept for side-by-side measurement (``benchmarks/trainer_step.py``) and tests."""
        config.validate()
        if not config.init:
            raise ValueError("rl.init: a model folder to start from is required")
        if not config.out:
            raise ValueError("rl.out: an output folder is required")
        self.cfg = config
        self.pack = pack
        self.reuse_rollout_logprobs = reuse_rollout_logprobs
        self.hooks = list(hooks)
        self.progress = progress
        self.out = Path(config.out)
        set_threads(config.threads)
        try:  # checked here, before minutes of loading, naming the config key
            EnvConfig.from_kwargs(**{"max_turns": config.max_turns, **config.env_kwargs})
        except (ValueError, TypeError) as exc:
            raise ValueError(f"rl.env_kwargs: {exc}") from None
        info = read_train_info(config.init)
        self.world = config.world or info.get("world", "")
        self.retriever = config.retriever or info.get("retriever", "")
        try:
            self.objective = make_objective(config.objective, config.objective_overrides)
        except ValueError as exc:
            raise ValueError(f"rl.objective_overrides: {exc}" if config.objective_overrides else str(exc)) from None
        self.model, self.tokenizer = load_model(config.init)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.ref_model = None
        if config.kl_coef > 0:
            self.ref_model, _ = load_model(config.init)
            self.ref_model.eval().requires_grad_(False)
        self.optimizer = make_optimizer(self.model, config.optim)
        updates = config.steps * config.ppo_epochs * config.num_minibatches
        self.scheduler = make_scheduler(self.optimizer, config.optim.warmup_steps, updates, config.optim.min_lr_ratio)
        self.generator = torch.Generator().manual_seed(config.seed)
        n_eps = config.batch_questions * config.n_samples
        self.envs, self.num_questions = make_envs(config.train_family, n_eps, config.train_split, self.world,
                                                  config.max_turns, self.retriever, **config.env_kwargs)
        self.evaluation = evaluation if evaluation is not None else GreedyValidation(config, self.world,
                                                                                     self.retriever)
        self.step = 0
        self.metrics_path = self.out / "metrics.jsonl"
        self.writer = None

    # ------------------------------------------------------------------ state
    def _check_resume_config(self) -> None:
        """Refuse to resume a run written with another config (objective, model, world,
        hyper-parameters): the message lists every field that differs."""
        path = self.out / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing, so the checkpoints in {self.out} cannot be checked "
                                    "against this config; refusing to resume (use a new --out)")
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}: not valid JSON ({exc}); refusing to resume") from None
        now = json.loads(json.dumps({"rl": dataclass_to_dict(self.cfg), "world": self.world}, default=str))

        def flat(d, prefix=""):
            out = {}
            for k, v in (d.items() if isinstance(d, dict) else ()):
                key = f"{prefix}{k}"
                # objective_overrides / env_kwargs are free-form maps: compared whole
                out.update(flat(v, key + ".") if isinstance(v, dict) and k in ("rl", "optim") else {key: v})
            return out

        a, b = flat(saved), flat(now)
        for d in (a, b):  # the resolved world ("world") is what matters, not how it was given
            d.pop("rl.world", None)
        diffs = [f"{k}: {a.get(k, '(unset)')!r} in the run, {b.get(k, '(unset)')!r} now"
                 for k in sorted(set(a) | set(b))
                 if a.get(k) != b.get(k) and k.removeprefix("rl.").split(".")[0] not in RESUME_MAY_CHANGE]
        if diffs:
            raise ValueError(f"{self.out} was written with another config; refusing to resume. "
                             f"Differing fields: {'; '.join(diffs)}")

    def _resume(self) -> bool:
        ck = latest_checkpoint(self.out)
        if ck is None:
            return False
        self._check_resume_config()
        self.model, _ = load_model(ck / "model")
        self.optimizer = make_optimizer(self.model, self.cfg.optim)
        updates = self.cfg.steps * self.cfg.ppo_epochs * self.cfg.num_minibatches
        self.scheduler = make_scheduler(self.optimizer, self.cfg.optim.warmup_steps, updates,
                                        self.cfg.optim.min_lr_ratio)
        state = load_checkpoint(ck, self.optimizer, self.scheduler, self.generator)
        self.objective.load_state_dict(state["extra"].get("objective", {}))
        self.step = int(state["step"])
        truncate_metrics(self.metrics_path, int(state["metrics_offset"]))
        return True

    def _checkpoint(self) -> None:
        offset = self.metrics_path.stat().st_size if self.metrics_path.exists() else 0
        save_checkpoint(self.out, self.step, self.model, self.tokenizer, self.optimizer, self.scheduler,
                        extra={"objective": self.objective.state_dict()}, metrics_offset=offset,
                        generator=self.generator, keep_last=self.cfg.keep_last)

    def _log(self, rec: dict) -> None:
        append_jsonl(self.metrics_path, rec)
        if self.writer is not None:
            for k, v in rec.items():
                if k != "step" and isinstance(v, (int, float)) and not math.isnan(v):
                    self.writer.add_scalar(k, v, rec["step"])
            self.writer.flush()

    # ------------------------------------------------------------------ phases
    def rollout(self, step: int) -> list:
        """Sample the step's episodes (deterministic in (seed, step) and the weights)."""
        c = self.cfg
        rng = np.random.default_rng([c.seed, step])
        qs = rng.choice(self.num_questions, size=c.batch_questions, replace=self.num_questions < c.batch_questions)
        engine = RolloutEngine(self.model, self.tokenizer, RolloutConfig(
            temperature=c.temperature, max_new_tokens=c.max_new_tokens, n=c.n_samples,
            seed=(c.seed * 1_000_003 + step) % (2**31), max_batch_size=len(self.envs),
            # the decode loop's own final-norm states: no extra model call
            return_hidden_states=self.reuse_rollout_logprobs and self._need_hidden()))
        self.model.eval()
        with torch.no_grad():
            trajs = engine.rollout_questions(self.envs, [int(q) for q in qs], n=c.n_samples)
        return trajs

    def _need_hidden(self) -> bool:
        return bool(self.objective.needs_hidden_states or self.cfg.hidden_states)

    def _forward(self, model, batch: PaddedBatch, with_entropy: bool = True, with_hidden: bool = False):
        """Label-aligned (log-probs, entropy, hidden) of ``model`` on ``batch``, LM head at
        the policy positions only; packed or padded as the trainer is configured."""
        if self.pack:
            return packed_forward_logprobs(model, batch.input_ids, batch.attention_mask, batch.response_mask,
                                           self.cfg.temperature, with_entropy=with_entropy, with_hidden=with_hidden)
        return forward_logprobs(model, batch.input_ids, batch.attention_mask, self.cfg.temperature,
                                with_entropy=with_entropy, with_hidden=with_hidden, positions=batch.response_mask)

    @staticmethod
    def rollout_tensors(trajs, batch: PaddedBatch, need_hidden: bool):
        """The engine's recorded (log-probs, entropies) as label-aligned (B, L-1) tensors of
        ``batch``, and its per-episode policy-token hidden states (list of (T_i, d)) when
        ``need_hidden``; None when some trajectory lacks them (then a forward is needed)."""
        lp = torch.zeros(batch.response_mask.shape, dtype=torch.float32)
        ent = torch.zeros_like(lp)
        hidden = [] if need_hidden else None
        for i, t in enumerate(trajs):
            n_resp, n_pol = len(t.response_ids), int(sum(t.loss_mask))
            if len(t.logprobs) != n_resp or len(t.entropies) != n_resp:
                return None
            if need_hidden:
                h = t.hidden_states
                if h is None or h.ndim != 2 or h.shape[0] != n_pol:
                    return None
                hidden.append(torch.from_numpy(np.ascontiguousarray(h, dtype=np.float32)))
            p0 = len(t.prompt_ids) - 1
            lp[i, p0:p0 + n_resp] = torch.tensor(t.logprobs, dtype=torch.float32)
            ent[i, p0:p0 + n_resp] = torch.tensor(t.entropies, dtype=torch.float32)
        rm = batch.response_mask
        return lp * rm, ent * rm, hidden

    def make_batch(self, trajs) -> PaddedBatch:
        ids = [list(t.prompt_ids) + list(t.response_ids) for t in trajs]
        masks = [[0] * len(t.prompt_ids) + list(t.loss_mask) for t in trajs]
        return pad_batch(ids, masks, self.pad_id)

    def step_once(self) -> dict:
        """Run one RL step and return its metrics line (not yet logged)."""
        c = self.cfg
        step = self.step + 1
        t0 = time.perf_counter()
        trajs = self.rollout(step)
        t1 = time.perf_counter()

        batch = self.make_batch(trajs)
        need_hidden = self._need_hidden()
        recorded = self.rollout_tensors(trajs, batch, need_hidden) if self.reuse_rollout_logprobs else None
        reused = recorded is not None
        with torch.no_grad():
            self.model.eval()
            if reused:  # the engine's own log-probs: no old-log-prob forward
                old_lp, ent, hidden = recorded
            else:
                old_lp, ent, hid = self._forward(self.model, batch, with_hidden=need_hidden)
                hidden = policy_hidden_states(hid, batch.response_mask) if hid is not None else None
            batch.old_log_probs = old_lp
            if self.ref_model is not None:
                batch.ref_log_probs, _, _ = self._forward(self.ref_model, batch, with_entropy=False)
        if hidden is not None and c.hidden_states:
            for t, h in zip(trajs, hidden):
                if t.hidden_states is None:
                    t.hidden_states = h.float().numpy()
        rewards = torch.tensor([float(t.reward) for t in trajs])
        adv = compute_advantages(c.adv_estimator, rewards, batch.response_mask, [t.group_id for t in trajs],
                                 c.norm_adv_by_std_in_grpo, c.gamma)
        adv, shape_metrics = self.objective.shape_advantages(adv, batch.response_mask, hidden)
        batch.advantages = adv
        t2 = time.perf_counter()

        upd = ppo_update(self.model, self.optimizer, self.objective, batch, ppo_epochs=c.ppo_epochs,
                         num_minibatches=c.num_minibatches, grad_clip=c.optim.grad_clip, temperature=c.temperature,
                         kl_coef=c.kl_coef, kl_type=c.kl_type, scheduler=self.scheduler, generator=self.generator,
                         pack=self.pack)
        t3 = time.perf_counter()

        n = len(trajs)
        rm = batch.response_mask
        if reused:
            # sampled vs trainer log-probs on the first mini-batch's episodes, whose forward
            # ran at the rollout's weights (before any optimizer step)
            logprob_absdiff = upd["first_minibatch_old_logprob_absdiff"]
            if logprob_absdiff > ROLLOUT_LOGPROB_TOL:
                warnings.warn(f"step {step}: engine log-probs differ from the trainer's by {logprob_absdiff:.2e} "
                              f"(> {ROLLOUT_LOGPROB_TOL:g}); recomputing old log-probs from the next step on")
                self.reuse_rollout_logprobs = False
        else:
            sampled = torch.zeros_like(old_lp)
            for i, t in enumerate(trajs):
                lp = torch.tensor(t.logprobs, dtype=old_lp.dtype)
                p0 = len(t.prompt_ids) - 1
                sampled[i, p0:p0 + len(lp)] = lp
            logprob_absdiff = float(((sampled - old_lp).abs() * rm).sum() / rm.sum().clamp_min(1))
        outcome = summarize(trajs)
        tokens = token_entropy_stats(ent, rm)  # the one token entropy (metrics.entropy), as eval/entropy
        rec = {
            "step": step,
            mn.TRAIN_REWARD: float(rewards.mean()),
            mn.TRAIN_REWARD_STD: float(rewards.std()) if n > 1 else 0.0,
            mn.TRAIN_ACCURACY: outcome["accuracy"],
            mn.TRAIN_FORMAT_ERROR_RATE: outcome["format_error_rate"],
            mn.TRAIN_SEARCHES: outcome["searches_per_episode"],
            mn.TRAIN_RESPONSE_LENGTH: outcome["policy_tokens_per_episode"],
            mn.TRAIN_EPISODE_LENGTH: sum(len(t.response_ids) for t in trajs) / n,
            mn.TRAIN_ENTROPY: tokens["entropy"],
            mn.TRAIN_ENTROPY_TOP: tokens["entropy_top"],
            mn.UPDATE_ROLLOUT_LOGPROB_ABSDIFF: logprob_absdiff,
            mn.UPDATE_ADV_ABS_MEAN: float((adv.abs() * rm).sum() / rm.sum().clamp_min(1)),
            mn.UPDATE_CLIP_FRAC: upd.get("pg_clipfrac", 0.0),
            mn.UPDATE_KL_REF: upd.get("kl_ref", 0.0),
            mn.UPDATE_PPO_KL: upd.get("ppo_kl"),
            mn.UPDATE_PG_LOSS: upd.get("pg_loss"),
            mn.UPDATE_ENTROPY_LOSS: upd.get("entropy_loss"),
            mn.UPDATE_GRAD_NORM: upd.get("grad_norm"),
            mn.UPDATE_LR: float(self.optimizer.param_groups[0]["lr"]),
            **shape_metrics,  # mech/* (er_shaped's shaping statistics)
            mn.TIME_ROLLOUT: t1 - t0,
            mn.TIME_OLD_LOGPROB: t2 - t1,
            mn.TIME_UPDATE: t3 - t2,
        }
        rec = {k: v for k, v in rec.items() if v is not None}
        # mechanism diagnostics (training/diagnostics.py): every mech/* key of the update
        # (the objectives' selections included) and the gradient cosine; changes no training state
        rec.update(step_mechanism_metrics(self.model, self.objective, c, step, batch, ent, upd, rewards,
                                          [t.group_id for t in trajs]))
        t4 = time.perf_counter()
        for hook in self.hooks:  # rollout metrics (summarize_rollouts names) of the step's rollouts
            for k, v in (hook(trajs) or {}).items():
                value = _scalar(v)
                if value is not None and mn.train(k) not in rec:
                    rec[mn.train(k)] = value
        if self.hooks:
            rec[mn.TIME_METRICS] = time.perf_counter() - t4
        rec[mn.TIME_STEP] = time.perf_counter() - t0
        self.step = step
        self.last_trajectories = trajs
        return rec

    def evaluate(self) -> dict[str, float]:
        """Run the evaluation at the current step: its fields under ``val/<metric>``, its wall
        time as ``time/eval_s``."""
        t0 = time.perf_counter()
        fields = self.evaluation(self.model, self.tokenizer, self.step) or {}
        out = {mn.val(k): v for k, v in fields.items()}
        out[mn.TIME_EVAL] = time.perf_counter() - t0
        return out

    # ------------------------------------------------------------------ run
    def run(self, resume: bool = False) -> Path:
        c = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        resumed = self._resume() if resume else False
        if not resumed:
            if self.metrics_path.exists() or latest_checkpoint(self.out) is not None:
                raise FileExistsError(f"{self.out} already holds a run; pass resume=True (--resume) or a new --out")
            random.seed(c.seed)
            np.random.seed(c.seed)
            torch.manual_seed(c.seed)
            atomic_write_json(self.out / "config.json", {"rl": dataclass_to_dict(c), "world": self.world})
        if c.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.out / "tensorboard"), purge_step=self.step + 1 if resumed else None)
        if not resumed and c.eval_every > 0:
            self._log({"step": 0, **self.evaluate()})
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=c.steps, initial=self.step, desc=f"rl {c.objective}", unit="step", dynamic_ncols=True)
        try:
            while self.step < c.steps:
                rec = self.step_once()
                if c.eval_every > 0 and (self.step % c.eval_every == 0 or self.step == c.steps):
                    rec.update(self.evaluate())
                self._log(rec)
                if self.step % c.save_every == 0 or self.step == c.steps:
                    self._checkpoint()
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(reward=f"{rec[mn.TRAIN_REWARD]:.2f}", H=f"{rec.get(mn.TRAIN_ENTROPY, 0):.2f}",
                                    s=f"{rec[mn.TIME_STEP]:.1f}")
        finally:
            if bar is not None:
                bar.close()
            if self.writer is not None:
                self.writer.close()
        info = {"world": self.world, "retriever": self.retriever, "init": c.init, "objective": c.objective, "steps": self.step,
                "rl": dataclass_to_dict(c)}
        return save_model(self.model, self.tokenizer, self.out / "model", info)


def train_rl(config: RLConfig, hooks: Sequence[StepHook] = (), resume: bool = False, progress: bool = True,
             evaluation: Evaluation | None = None) -> Path:
    """Run RL as configured; returns ``<out>/model`` (the final HF model folder).

    ``hooks``: callables ``(trajectories) -> dict`` whose scalar fields are added to every
    metrics line as ``train/<key>`` (rollout metrics, e.g. ``searchgym.metrics.summarize_rollouts``).
    ``evaluation``: what the trainer evaluates every ``eval_every`` steps (``Evaluation``;
    default the greedy validation). ``resume``: continue from the latest checkpoint in ``config.out``.
    """
    return RLTrainer(config, hooks=hooks, progress=progress, evaluation=evaluation).run(resume=resume)
