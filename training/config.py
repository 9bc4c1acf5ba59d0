"""Typed configs of SFT and RL training, YAML loading and presets.

Every config is a dataclass. ``dataclass_from_dict`` (:mod:`.strict_config`) builds one from a plain mapping and
rejects unknown keys and values of the wrong type with a ``ValueError`` that names the
dotted key (``rl.optim.lr: expected float, got str 'fast'``). YAML files are loaded
with ``yaml.safe_load`` and go through the same check.

Presets (``smoke``, ``small``) size a run for CI and for the 2-core main experiment.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# re-exported: the strict loading lives in strict_config (no import cycle with objectives)
from searchgym.training.strict_config import dataclass_from_dict, dataclass_to_dict, load_yaml_config

__all__ = [
    "OptimConfig",
    "SFTConfig",
    "RLConfig",
    "dataclass_from_dict",
    "dataclass_to_dict",
    "load_yaml_config",
    "sft_preset",
    "rl_preset",
    "SFT_PRESETS",
    "RL_PRESETS",
]

# --------------------------------------------------------------------------- dataclasses


@dataclass
class OptimConfig:
    """AdamW with linear warmup then cosine decay to ``min_lr_ratio * lr``."""

    lr: float = 1e-3
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    warmup_steps: int = 10
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0

    def validate(self, prefix: str = "optim") -> None:
        if not self.lr > 0:
            raise ValueError(f"{prefix}.lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"{prefix}.weight_decay must be >= 0, got {self.weight_decay}")
        for k in ("beta1", "beta2"):
            if not 0 <= getattr(self, k) < 1:
                raise ValueError(f"{prefix}.{k} must be in [0, 1), got {getattr(self, k)}")
        if self.warmup_steps < 0:
            raise ValueError(f"{prefix}.warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"{prefix}.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not self.grad_clip > 0:
            raise ValueError(f"{prefix}.grad_clip must be > 0, got {self.grad_clip}")


@dataclass
class SFTConfig:
    """Supervised warm start on demonstration episodes (loss on policy tokens only)."""

    model: str = ""  # HF model folder to start from (e.g. `searchgym model init`)
    demos: str = ""  # demonstration JSONL (agents' demo format)
    out: str = ""  # output folder (final model in out/model)
    world: str = ""  # world folder for validation ('' = the envs' default world)
    retriever: str = ""  # 'dense' | 'bm25' ('' = the env's default)
    epochs: int = 3
    max_steps: int = 0  # > 0 caps the number of optimizer steps
    batch_size: int = 16  # episodes per optimizer step
    max_seq_len: int = 1024  # longer demos are dropped (counted in the log)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=2e-3, weight_decay=0.01))
    eval_every: int = 100  # steps between greedy validations (0: only at the end)
    eval_questions: int = 64  # validation questions per evaluation
    eval_family: str = "multi_hop"  # question family validated ('' = all)
    val_split: str = "validation"
    seed: int = 0
    threads: int = 0  # torch threads (0 = leave torch's default)
    time_budget_s: float = 0.0  # > 0 stops training early (evaluating at the end)
    # smoothing epsilon of the cross-entropy (torch's label_smoothing: eps spread uniformly
    # over the whole vocabulary); 0 = plain NLL
    label_smoothing: float = 0.0
    # epochs the LR schedule spans (0 = ``epochs``); with schedule_epochs > epochs training
    # stops part-way through a longer cosine, which reproduces the epoch-k checkpoint of a
    # longer run exactly (same batches, same learning rates)
    schedule_epochs: int = 0
    save_epochs: bool = False  # also save <out>/epochs/epoch-<k>/ after every epoch

    def validate(self) -> None:
        for k in ("epochs", "batch_size", "max_seq_len", "eval_questions"):
            if getattr(self, k) < 1:
                raise ValueError(f"sft.{k} must be >= 1, got {getattr(self, k)}")
        for k in ("max_steps", "eval_every", "threads", "schedule_epochs"):
            if getattr(self, k) < 0:
                raise ValueError(f"sft.{k} must be >= 0, got {getattr(self, k)}")
        if self.schedule_epochs and self.schedule_epochs < self.epochs:
            raise ValueError(f"sft.schedule_epochs ({self.schedule_epochs}) must be 0 or >= sft.epochs ({self.epochs})")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"sft.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        self.optim.validate("sft.optim")


@dataclass
class RLConfig:
    """Embedded RL: rollout -> rewards -> verl advantages -> PPO epochs x mini-batches."""

    init: str = ""  # HF model folder (an SFT warm start)
    out: str = ""  # run folder: metrics.jsonl, tensorboard/, checkpoints/, model/
    world: str = ""  # world folder (default: the one recorded by the warm start)
    retriever: str = ""  # 'dense' | 'bm25' ('' = the env's default)
    env_kwargs: dict = field(default_factory=dict)  # EnvConfig fields, e.g. {format_penalty: 0.1}
    objective: str = "grpo"
    objective_overrides: dict = field(default_factory=dict)  # fields of the objective's config
    adv_estimator: str = "grpo"  # verl get_adv_estimator_fn: grpo | rloo | reinforce_plus_plus
    norm_adv_by_std_in_grpo: bool = True
    gamma: float = 1.0  # reinforce_plus_plus discount
    steps: int = 20
    batch_questions: int = 8  # B questions per step
    n_samples: int = 4  # rollouts per question (group size)
    ppo_epochs: int = 2
    num_minibatches: int = 2  # > 1 (or ppo_epochs > 1) makes updates off-policy (KL-Cov needs it)
    temperature: float = 1.0
    max_turns: int = 5
    max_new_tokens: int = 48  # per turn
    train_split: str = "train"
    train_family: str = ""  # '' = all families
    kl_coef: float = 0.0  # > 0 adds verl kl_penalty to a frozen reference
    kl_type: str = "low_var_kl"
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=2e-4, warmup_steps=0, min_lr_ratio=1.0))
    eval_every: int = 0  # steps between validations (0: none during training)
    eval_questions: int = 32
    eval_family: str = "multi_hop"
    val_split: str = "validation"
    save_every: int = 5  # checkpoint every K steps (and at the end)
    keep_last: int = 2
    seed: int = 0
    threads: int = 0
    tensorboard: bool = True
    hidden_states: bool = False  # collect final-norm hidden states for hooks even if the objective does not
    # steps between the gradient-cosine-to-GRPO diagnostics (training/diagnostics.py):
    # None = a handful per run (step 1, every steps // 4, the last), 0 = never, k = every k
    diag_every: int | None = None

    def validate(self) -> None:
        # local: objectives imports verl (13 s measured with `python -c "import
        # searchgym.training.objectives"` vs 0.6 s for this module), which config readers
        # (presets, CLI help) must not pay
        from searchgym.training.objectives import get_objective

        get_objective(self.objective)
        if self.adv_estimator not in ("grpo", "rloo", "reinforce_plus_plus", "grpo_vectorized", "rloo_vectorized"):
            raise ValueError(
                f"rl.adv_estimator must be one of grpo, rloo, reinforce_plus_plus, got {self.adv_estimator!r}"
            )
        for k in ("steps", "batch_questions", "n_samples", "ppo_epochs", "num_minibatches", "max_turns",
                  "max_new_tokens", "eval_questions", "save_every", "keep_last"):
            if getattr(self, k) < 1:
                raise ValueError(f"rl.{k} must be >= 1, got {getattr(self, k)}")
        if self.adv_estimator.startswith(("grpo", "rloo")) and self.n_samples < 2:
            raise ValueError(f"rl.n_samples must be >= 2 for {self.adv_estimator}, got {self.n_samples}")
        if self.num_minibatches > self.batch_questions * self.n_samples:
            raise ValueError(
                f"rl.num_minibatches ({self.num_minibatches}) exceeds the batch size "
                f"({self.batch_questions} x {self.n_samples})"
            )
        if not self.temperature > 0:
            raise ValueError(f"rl.temperature must be > 0, got {self.temperature}")
        if self.kl_coef < 0:
            raise ValueError(f"rl.kl_coef must be >= 0, got {self.kl_coef}")
        if self.kl_type not in ("kl", "k1", "abs", "mse", "k2", "low_var_kl", "k3"):
            raise ValueError(f"rl.kl_type must be a verl kl_penalty kind, got {self.kl_type!r}")
        if self.eval_every < 0 or self.threads < 0:
            raise ValueError("rl.eval_every and rl.threads must be >= 0")
        if self.diag_every is not None and self.diag_every < 0:
            raise ValueError(f"rl.diag_every must be None or >= 0, got {self.diag_every}")
        self.optim.validate("rl.optim")


# --------------------------------------------------------------------------- presets

SFT_PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {"epochs": 2, "batch_size": 8, "eval_every": 0, "eval_questions": 8,
              "optim": {"lr": 3e-3, "warmup_steps": 3, "weight_decay": 0.01}},
    # lr 6e-3 with the phrase-token embedding init reached train loss 0.21 in 564 steps
    # (3e-3: 0.51). Epochs by measurement on the narrow demos (multi-hop validation, 64 q):
    # 3 epochs (564 steps, 215 s idle) 45.3%, 6 epochs (1128 steps) 64.1%; 7 epochs leaves
    # the diverse start (35.9% at 3) room to reach 60% in about 500 s idle per warm start.
    # Re-chosen by the SFT warm-start sweep (docs/results/sft-sweep/sweep.md, 2 runs measured
    # after every epoch at T = 0.7..1.4, 32 validation questions x 8 samples, 64 greedy):
    # this recipe stays; its room to collapse comes from the RL sampling temperature. Epoch 7
    # at T = 1.3: token entropy 0.377 (narrow) / 0.404 (diverse) nats, greedy multi-hop
    # validation 65.6% / 64.1%, sampled 17.6% / 16.8%, groups with reward spread 0.59 / 0.56,
    # format errors 8% / 6%; at T = 0.7 the same models sample at 0.100 / 0.102 nats. Earlier
    # epochs fail the rule: epoch 6 gaps 14 points (65.6 / 79.7%), epoch 3 dips to 1.6 / 0%.
    "small": {"epochs": 7, "batch_size": 16, "eval_every": 0, "eval_questions": 64,
              "optim": {"lr": 6e-3, "warmup_steps": 30, "weight_decay": 0.01}},
}

RL_PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {"steps": 6, "batch_questions": 4, "n_samples": 4, "ppo_epochs": 2, "num_minibatches": 2,
              "eval_questions": 8, "save_every": 3, "max_new_tokens": 40},
    "small": {"steps": 20, "batch_questions": 8, "n_samples": 4, "ppo_epochs": 2, "num_minibatches": 2,
              "eval_questions": 32, "save_every": 5,
              # lr measured on the narrow warm start, GRPO, 15 steps, 64 validation questions:
              # 1e-4 took multi-hop accuracy 45.3% -> 48.4%, 5e-4 took it to 40.6%, and at 5e-4
              # the training reward fell over 30 steps in 15 of 20 arms of the first small run.
              "optim": {"lr": 1e-4, "warmup_steps": 0, "min_lr_ratio": 1.0}},
}


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def sft_preset(name: str, **overrides: Any) -> SFTConfig:
    """SFTConfig of preset ``name`` updated by ``overrides`` (strictly checked)."""
    if name not in SFT_PRESETS:
        raise ValueError(f"unknown SFT preset {name!r}; choose from {sorted(SFT_PRESETS)}")
    return dataclass_from_dict(SFTConfig, _merge(SFT_PRESETS[name], overrides), prefix="sft")


def rl_preset(name: str, **overrides: Any) -> RLConfig:
    """RLConfig of preset ``name`` updated by ``overrides`` (strictly checked)."""
    if name not in RL_PRESETS:
        raise ValueError(f"unknown RL preset {name!r}; choose from {sorted(RL_PRESETS)}")
    return dataclass_from_dict(RLConfig, _merge(RL_PRESETS[name], overrides), prefix="rl")
