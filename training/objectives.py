"""Objective registry: the entropy-preserving RL objectives, each a name plus typed defaults.

An objective says how one PPO mini-batch turns into a loss. It acts through four hooks,
all optional except the policy-loss name:

- ``policy_loss``: a name in verl's ``POLICY_LOSS_REGISTRY`` (``get_policy_loss_fn``);
- ``shape_advantages``: rewrites the (B, T) advantages once per step, before the epochs
  (``er_shaped``);
- ``loss_mask``: narrows which policy tokens get gradient in a mini-batch, while the
  token-mean normaliser keeps counting all policy tokens (``forking_tokens``);
- ``entropy_coeff``: an entropy bonus subtracted from the loss (``entropy_bonus``).

The losses themselves are verl's (``compute_policy_loss_vanilla``, ``clip_cov``,
``kl_cov``), called with a real ``verl.workers.config.ActorConfig``; nothing here
re-implements them. New objectives plug in with ``@register_objective``::

    @register_objective("my_obj")
    class MyObjective(Objective):
        Config = MyConfig            # a dataclass subclass of ObjectiveConfig
        policy_loss = "vanilla"

The pure policy losses (``grpo``, ``clip_higher``) are also registered into verl's
registry under the same names, so verl's trainer can select them with
``actor.policy_loss.loss_mode``; ``clip_cov`` and ``kl_cov`` already live there.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import numpy as np
import torch

# verl is heavy to import (~5 s); the module-level import is still right here because
# every function of this module needs it.
from verl.trainer.ppo import core_algos
from verl.trainer.ppo.core_algos import agg_loss, get_policy_loss_fn, register_policy_loss
from verl.utils import torch_functional as verl_F
from verl.workers.config import ActorConfig, PolicyLossConfig

from searchgym.metrics import names as mn
from searchgym.metrics.entropy import top_entropy_mask
from searchgym.training.strict_config import dataclass_from_dict

__all__ = [
    "ObjectiveConfig",
    "Objective",
    "OBJECTIVES",
    "register_objective",
    "get_objective",
    "make_objective",
    "objective_names",
    "clip_bind_masks",
    "pearson_or_none",
    "effective_rank_stats",
    "effective_rank_stats_batch",
    "LossOutput",
]


# --------------------------------------------------------------------------- configs


@dataclass
class ObjectiveConfig:
    """Fields every objective has (verl ``actor.*`` names)."""

    clip_ratio_low: float = 0.2
    clip_ratio_high: float = 0.2
    clip_ratio_c: float = 3.0  # dual-clip bound for negative advantages (verl default)
    entropy_coeff: float = 0.0
    loss_agg_mode: str = "token-mean"

    def validate(self) -> None:
        for name in ("clip_ratio_low", "clip_ratio_high"):
            if not 0.0 <= getattr(self, name) < 10.0:
                raise ValueError(f"objective.{name} must be in [0, 10), got {getattr(self, name)}")
        if self.clip_ratio_c <= 1.0:
            raise ValueError(f"objective.clip_ratio_c must be > 1, got {self.clip_ratio_c}")
        if self.entropy_coeff < 0:
            raise ValueError(f"objective.entropy_coeff must be >= 0, got {self.entropy_coeff}")
        modes = ("token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")
        if self.loss_agg_mode not in modes:
            raise ValueError(f"objective.loss_agg_mode must be one of {modes}, got {self.loss_agg_mode!r}")


@dataclass
class EntropyBonusConfig(ObjectiveConfig):
    # Chosen in the experiment's RL regime (16 x 8 at T = 1.3, lr 2e-3 cosine, 1 PPO epoch;
    # single-seed probes of 2026-12-02 from the diverse warm start at 0.379 nats): 0.05 made the
    # policy uniform (7.9 nats) within 5 steps; 0.01 ran entropy up (0.662 at step 7); 0.005 and
    # 0.003 tracked GRPO within one seed's noise (0.222 / 0.322 vs GRPO 0.255 at step 15). The
    # largest probed coefficient below the one that ran away; whether it acts is measured by the
    # report's mechanism diagnostics.
    entropy_coeff: float = 0.005


@dataclass
class ClipHigherConfig(ObjectiveConfig):
    clip_ratio_low: float = 0.2
    clip_ratio_high: float = 0.28


@dataclass
class ClipCovConfig(ObjectiveConfig):
    # The paper's 2e-4 / [1, 5] selects no tokens on a tiny model whose mini-batches
    # hold ~10^3 policy tokens with small |Cov|; these select a few percent (measured
    # and logged every step as ``cov_selected_frac``).
    clip_cov_ratio: float = 0.02
    clip_cov_lb: float = 0.02
    clip_cov_ub: float = 5.0

    def validate(self) -> None:
        super().validate()
        if not 0.0 < self.clip_cov_ratio <= 1.0:
            raise ValueError(f"objective.clip_cov_ratio must be in (0, 1], got {self.clip_cov_ratio}")
        if not self.clip_cov_lb < self.clip_cov_ub:
            raise ValueError(
                f"objective.clip_cov_lb ({self.clip_cov_lb}) must be < objective.clip_cov_ub ({self.clip_cov_ub})"
            )


@dataclass
class KLCovConfig(ObjectiveConfig):
    # verl's kl_cov_ratio is a fraction (PRIME's k_percent is in percent); beta = 1 as in the
    # paper/PRIME scripts (verl's PolicyLossConfig default is 0.1). The ratio was chosen as the
    # entropy bonus's coefficient (same probes): 0.02 ran entropy up (0.462 at step 8, training
    # reward 0.23 -> 0.13); 0.01 and 0.005 tracked GRPO (0.266 / 0.297 vs 0.255 at step 15).
    kl_cov_ratio: float = 0.01
    ppo_kl_coef: float = 1.0

    def validate(self) -> None:
        super().validate()
        if not 0.0 < self.kl_cov_ratio <= 1.0:
            raise ValueError(f"objective.kl_cov_ratio must be in (0, 1], got {self.kl_cov_ratio}")
        if self.ppo_kl_coef < 0:
            raise ValueError(f"objective.ppo_kl_coef must be >= 0, got {self.ppo_kl_coef}")


@dataclass
class ForkingTokensConfig(ObjectiveConfig):
    rho: float = 0.2  # fraction of highest-entropy policy tokens that get gradient

    def validate(self) -> None:
        super().validate()
        if not 0.0 < self.rho <= 1.0:
            raise ValueError(f"objective.rho must be in (0, 1], got {self.rho}")


@dataclass
class ERShapedConfig(ObjectiveConfig):
    """VERL advantage shaping (notes section 3); defaults from hf618/VERL train.sh."""

    ema_alpha: float = 0.3  # weight of the newest batch mean in the EMA baseline
    modulation_gain: float = 2.0  # gamma of the gate sigma(gamma * dev_ERA)
    aux_coef: float = 1.0  # lambda
    kappa: float = 2.0  # shaping clipped to |A| / kappa
    diff_stride: int = 20  # prefix stride for ERV/ERA
    max_tokens: int = 512  # ERV/ERA use the last max_tokens policy tokens
    dev_clip: float = 5.0

    def validate(self) -> None:
        super().validate()
        if not 0.0 < self.ema_alpha <= 1.0:
            raise ValueError(f"objective.ema_alpha must be in (0, 1], got {self.ema_alpha}")
        if self.kappa <= 0:
            raise ValueError(f"objective.kappa must be > 0, got {self.kappa}")
        if self.diff_stride < 1:
            raise ValueError(f"objective.diff_stride must be >= 1, got {self.diff_stride}")
        if self.max_tokens < 2:
            raise ValueError(f"objective.max_tokens must be >= 2, got {self.max_tokens}")


# --------------------------------------------------------------------------- registry


@dataclass
class LossOutput:
    loss: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)


class Objective:
    """One RL objective. Subclasses set ``Config`` and ``policy_loss`` and may override
    the hooks. Instances may hold state across steps (``state_dict``), e.g. an EMA."""

    name: ClassVar[str] = ""
    Config: ClassVar[type[ObjectiveConfig]] = ObjectiveConfig
    policy_loss: ClassVar[str] = "vanilla"
    needs_hidden_states: ClassVar[bool] = False
    description: ClassVar[str] = ""
    #: the loss clips the ratio at [1 - clip_ratio_low, 1 + clip_ratio_high] (verl vanilla,
    #: clip_cov) and, for negative advantages, at clip_ratio_c (vanilla's dual clip)
    ratio_clip: ClassVar[bool] = True
    dual_clip: ClassVar[bool] = True

    def __init__(self, config: ObjectiveConfig | None = None):
        config = config if config is not None else self.Config()
        if not isinstance(config, self.Config):
            raise TypeError(f"objective {self.name!r} needs a {self.Config.__name__}, got {type(config).__name__}")
        config.validate()
        self.config = config

    # ---- hooks
    def shape_advantages(
        self, advantages: torch.Tensor, response_mask: torch.Tensor, hidden_states: list[torch.Tensor] | None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Rewrite advantages once per step (default: unchanged)."""
        return advantages, {}

    def loss_mask(self, response_mask: torch.Tensor, entropy: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Tokens that get policy gradient in this mini-batch (default: all policy tokens)."""
        return response_mask, {}

    def verl_config(self, batch_num_tokens: float | None = None) -> ActorConfig:
        """The verl ActorConfig the policy-loss function reads."""
        c = self.config
        pl = PolicyLossConfig(loss_mode=self.policy_loss, **self._policy_loss_fields())
        info = {} if batch_num_tokens is None else {"batch_num_tokens": batch_num_tokens}
        return ActorConfig(
            strategy="fsdp",
            rollout_n=1,
            ppo_micro_batch_size_per_gpu=1,
            clip_ratio=c.clip_ratio_low,
            clip_ratio_low=c.clip_ratio_low,
            clip_ratio_high=c.clip_ratio_high,
            clip_ratio_c=c.clip_ratio_c,
            entropy_coeff=c.entropy_coeff,
            loss_agg_mode=c.loss_agg_mode,
            policy_loss=pl,
            global_batch_info=info,
        )

    def _policy_loss_fields(self) -> dict[str, Any]:
        return {}

    # ---- the loss of one mini-batch
    def compute_loss(
        self,
        old_log_prob: torch.Tensor,
        log_prob: torch.Tensor,
        advantages: torch.Tensor,
        response_mask: torch.Tensor,
        entropy: torch.Tensor,
    ) -> LossOutput:
        """Policy loss (verl) minus the entropy bonus, for one mini-batch of (B, T) tensors."""
        mask = response_mask.to(log_prob.dtype)
        grad_mask, metrics = self.loss_mask(mask, entropy.detach())
        n_all = mask.sum().clamp_min(1.0)
        # token-mean normalises by ALL policy tokens even when grad_mask is narrower.
        cfg = self.verl_config(batch_num_tokens=n_all if self.config.loss_agg_mode == "token-mean" else None)
        pg_loss, pg_metrics = get_policy_loss_fn(self.policy_loss)(
            old_log_prob, log_prob, advantages, grad_mask, self.config.loss_agg_mode, cfg
        )
        metrics.update({k.split("/")[-1]: float(v) for k, v in pg_metrics.items()})
        metrics.update(self._selection_metrics(mask, pg_metrics))
        metrics.update(self._mechanism_metrics(old_log_prob, log_prob, advantages, mask, grad_mask))
        loss = pg_loss
        if self.config.entropy_coeff:
            ent = agg_loss(entropy, grad_mask, self.config.loss_agg_mode, batch_num_tokens=n_all)
            loss = loss - self.config.entropy_coeff * ent
            metrics["entropy_loss"] = float(ent.detach())
        metrics["pg_loss"] = float(pg_loss.detach())
        return LossOutput(loss=loss, metrics=metrics)

    def _selection_metrics(self, mask: torch.Tensor, pg_metrics: dict) -> dict[str, float]:
        return {}

    def _mechanism_metrics(self, old_log_prob, log_prob, advantages, mask, grad_mask) -> dict[str, float]:
        """Where this mini-batch's loss differs from GRPO's (``mech/`` keys, shares of policy
        tokens, detached):

        - ``mech/clip_frac_low`` / ``_high`` / ``_dual``: the objective's own clip binds (the
          token's gradient is cut): A < 0 and r < 1 - eps_low; A > 0 and r > 1 + eps_high;
          A < 0 and r > clip_ratio_c. Counted over all policy tokens, whatever the loss mask;
          0 where the loss has no such clip (KL-Cov: none; Clip-Cov: no dual clip).
        - ``mech/clip_differs_from_grpo_frac``: tokens whose clip state differs from what
          GRPO's (eps 0.2 / 0.2, dual clip 3) would be, i.e. where the clip rule itself acts.
        - ``mech/masked_grad_mass_frac`` (objectives with a loss mask): the share of GRPO's
          logit-level gradient mass sum |A| (1 - pi(y)) on the tokens the mask removes; a
          token's ||d log pi(y) / d logits|| lies in [1 - pi(y), sqrt(2) (1 - pi(y))], so a
          mask that drops only (near-)deterministic tokens drops ~0 of the gradient.
        """
        with torch.no_grad():
            c, g = self.config, GRPO.Config()
            n_all = mask.sum().clamp_min(1.0)
            low, high, dual = clip_bind_masks(old_log_prob, log_prob, advantages, mask, c.clip_ratio_low,
                                              c.clip_ratio_high, c.clip_ratio_c if self.dual_clip else None,
                                              clips=self.ratio_clip)
            g_low, g_high, g_dual = clip_bind_masks(old_log_prob, log_prob, advantages, mask, g.clip_ratio_low,
                                                    g.clip_ratio_high, g.clip_ratio_c)
            ours, grpo = low | high | dual, g_low | g_high | g_dual
            out = {
                "mech/clip_frac_low": float(low.sum() / n_all),
                "mech/clip_frac_high": float(high.sum() / n_all),
                "mech/clip_frac_dual": float(dual.sum() / n_all),
                "mech/clip_differs_from_grpo_frac": float((ours ^ grpo).sum() / n_all),
            }
            if grad_mask is not mask:
                weight = advantages.abs() * (1.0 - log_prob.detach().exp()).clamp_min(0.0) * mask
                total = float(weight.sum())
                dropped = float((weight * (grad_mask <= 0)).sum())
                out["mech/masked_grad_mass_frac"] = dropped / total if total > 0 else 0.0
        return out

    # ---- state (checkpointed)
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"objective {self.name!r} has no state but got keys {sorted(state)}")


OBJECTIVES: dict[str, type[Objective]] = {}


def register_objective(name: str) -> Callable[[type[Objective]], type[Objective]]:
    """Class decorator adding an objective to the registry under ``name``."""

    def deco(cls: type[Objective]) -> type[Objective]:
        if name in OBJECTIVES and OBJECTIVES[name] is not cls:
            raise ValueError(f"objective {name!r} is already registered ({OBJECTIVES[name].__name__})")
        if not (dataclasses.is_dataclass(cls.Config) and issubclass(cls.Config, ObjectiveConfig)):
            raise TypeError(f"{cls.__name__}.Config must be a dataclass subclass of ObjectiveConfig")
        cls.name = name
        OBJECTIVES[name] = cls
        return cls

    return deco


def get_objective(name: str) -> type[Objective]:
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; known: {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name]


def objective_names() -> list[str]:
    return list(OBJECTIVES)


def make_objective(name: str, overrides: dict[str, Any] | None = None) -> Objective:
    """Instantiate objective ``name`` with its defaults updated by ``overrides``
    (unknown keys and wrong types are rejected, naming the key)."""
    cls = get_objective(name)
    cfg = dataclass_from_dict(cls.Config, overrides or {}, prefix="objective")
    return cls(cfg)


# --------------------------------------------------------------------------- objectives


@register_objective("grpo")
class GRPO(Objective):
    """Vanilla PPO-clip loss (verl ``vanilla``), eps 0.2."""

    description = "vanilla clipped policy loss, eps_low = eps_high = 0.2"
    policy_loss = "vanilla"


@register_objective("entropy_bonus")
class EntropyBonus(Objective):
    """Vanilla loss minus ``entropy_coeff`` x token-mean policy entropy (verl entropy_coeff)."""

    description = "vanilla loss - c * token-mean entropy"
    Config = EntropyBonusConfig
    policy_loss = "vanilla"


@register_objective("clip_higher")
class ClipHigher(Objective):
    """DAPO clip-higher: eps_low 0.2, eps_high 0.28."""

    description = "asymmetric clip, eps_low 0.2, eps_high 0.28"
    Config = ClipHigherConfig
    policy_loss = "vanilla"


@register_objective("clip_cov")
class ClipCov(Objective):
    """verl's Clip-Cov; logs the fraction of policy tokens it detaches."""

    description = "verl clip_cov: detach a random subset of high-covariance tokens"
    Config = ClipCovConfig
    policy_loss = "clip_cov"
    dual_clip = False  # verl's clip_cov has no dual clip

    def _policy_loss_fields(self) -> dict[str, Any]:
        c = self.config
        return {"clip_cov_ratio": c.clip_cov_ratio, "clip_cov_lb": c.clip_cov_lb, "clip_cov_ub": c.clip_cov_ub}

    def _selection_metrics(self, mask, pg_metrics):
        # verl's clip_cov reports pg_clipfrac = mean over policy tokens of (corr == 0),
        # i.e. exactly the covariance-selected fraction.
        return {mn.MECH_COV_SELECTED_FRAC: float(pg_metrics["actor/pg_clipfrac"])}


@register_objective("kl_cov")
class KLCov(Objective):
    """verl's KL-Cov (no ratio clipping; |log-ratio| penalty on the top-k covariance
    tokens). Acts only off-policy: use > 1 mini-batch or ppo_epochs > 1."""

    description = "verl kl_cov: beta * |log ratio| on the top-k covariance tokens"
    Config = KLCovConfig
    policy_loss = "kl_cov"
    ratio_clip = dual_clip = False  # verl's kl_cov does not clip the ratio

    def _policy_loss_fields(self) -> dict[str, Any]:
        return {"kl_cov_ratio": self.config.kl_cov_ratio, "ppo_kl_coef": self.config.ppo_kl_coef}

    def _selection_metrics(self, mask, pg_metrics):
        # verl does not report it; its rule is top max(1, floor(N * ratio)) of N tokens.
        n = int(mask.sum().item())
        if n == 0:
            return {mn.MECH_COV_SELECTED_FRAC: 0.0}
        return {mn.MECH_COV_SELECTED_FRAC: max(1, int(n * self.config.kl_cov_ratio)) / n}


def clip_bind_masks(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    clip_low: float,
    clip_high: float,
    clip_c: float | None = None,
    clips: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Boolean (low, high, dual) masks of the policy tokens at which a PPO clip binds, i.e.
    where the clipped surrogate is constant in the ratio r = exp(log_prob - old_log_prob)
    (clamped to e^{+-20} as verl's vanilla loss does) and the token gets no gradient:
    low: A < 0 and r < 1 - clip_low; high: A > 0 and r > 1 + clip_high; dual (only when
    ``clip_c`` is given): A < 0 and r > clip_c. ``clips=False`` (a loss without ratio clip)
    gives three all-False masks."""
    valid = response_mask > 0
    none = torch.zeros_like(valid)
    if not clips:
        return none, none, none
    ratio = torch.exp(torch.clamp(log_prob.detach() - old_log_prob, -20.0, 20.0))
    low = valid & (advantages < 0) & (ratio < 1.0 - clip_low)
    high = valid & (advantages > 0) & (ratio > 1.0 + clip_high)
    dual = valid & (advantages < 0) & (ratio > clip_c) if clip_c is not None else none
    return low, high, dual


def pearson_or_none(x, y) -> float | None:
    """Pearson correlation of two equal-length 1-d sequences; None when it is undefined
    (fewer than 3 points, or either side constant)."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size < 3:
        return None
    a, b = a - a.mean(), b - b.mean()
    den = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum()) / den if den > 1e-12 else None


@register_objective("forking_tokens")
class ForkingTokens(Objective):
    """80/20 forking tokens: only the top-rho entropy policy tokens of each mini-batch get
    gradient; the token-mean normaliser still counts every policy token."""

    description = "gradient only on the top-rho (0.2) entropy tokens per mini-batch"
    Config = ForkingTokensConfig
    policy_loss = "vanilla"

    def loss_mask(self, response_mask, entropy):
        # the one top-rho rule (metrics.entropy), as the verl plugin's mask
        m = top_entropy_mask(entropy, response_mask, self.config.rho).to(entropy.dtype)
        n = float(response_mask.sum().clamp_min(1.0))
        return m, {mn.MECH_FORKING_SELECTED_FRAC: float(m.sum()) / n}


def effective_rank_stats_batch(hidden_states, stride: int = 20, max_tokens: int = 512) -> np.ndarray:
    """``[n, 3]`` rows of (ER, ERV, ERA) for n responses' (T, d) final-norm hidden states.

    Computed by ``searchgym.metrics.rank`` (the VERL definitions, notes s.3: ER of the
    row-centred matrix, ERV/ERA over prefixes at ``stride`` in the last ``max_tokens``
    rows) in one batched spectral pass. A response with fewer than two distinct rows has
    no spread to measure; its ER is the rank floor 1.
    """
    from searchgym.metrics.rank import effective_ranks, erv_era_batch

    mats = [torch.as_tensor(h) for h in hidden_states]
    er = effective_ranks(mats)
    er = np.where(np.isfinite(er) & (er >= 1.0), er, 1.0)
    erv, era = erv_era_batch(mats, stride=stride, max_len=max_tokens)
    return np.stack([er, np.nan_to_num(erv), np.nan_to_num(era)], axis=1)


def effective_rank_stats(h, stride: int = 20, max_tokens: int = 512) -> tuple[float, float, float]:
    """(ER, ERV, ERA) of one response; see :func:`effective_rank_stats_batch`."""
    er, erv, era = effective_rank_stats_batch([h], stride, max_tokens)[0]
    return float(er), float(erv), float(era)


@register_objective("er_shaped")
class ERShaped(Objective):
    """GRPO loss with VERL effective-rank advantage shaping on every policy token:
    A <- A + min(relu(aux), |A| / kappa), aux = lambda * (g tanh(dev_ER) + (1-g) tanh(dev_ERV)),
    g = sigmoid(gamma * dev_ERA), dev = clamp((m - mu) / (|mu| + 1e-8), -5, 5), mu an EMA
    of past batch means (the current batch mean on the first step)."""

    description = "GRPO + hidden-state effective-rank advantage shaping (VERL), all policy tokens"
    Config = ERShapedConfig
    policy_loss = "vanilla"
    needs_hidden_states = True

    def __init__(self, config=None):
        super().__init__(config)
        self.ema: list[float] | None = None  # [ERA, ERV, ER]

    def shape_advantages(self, advantages, response_mask, hidden_states):
        if hidden_states is None:
            raise ValueError("objective 'er_shaped' needs final-norm hidden states of the policy tokens")
        c = self.config
        stats = torch.from_numpy(
            effective_rank_stats_batch(hidden_states, c.diff_stride, c.max_tokens)[:, ::-1].copy()
        )  # rows: [ERA, ERV, ER], float64
        batch_mean = stats.mean(0)
        mu = torch.tensor(self.ema, dtype=torch.float64) if self.ema is not None else batch_mean
        dev = ((stats - mu) / (mu.abs() + 1e-8)).clamp(-c.dev_clip, c.dev_clip)
        g = torch.sigmoid(c.modulation_gain * dev[:, 0])
        aux = c.aux_coef * (g * torch.tanh(dev[:, 2]) + (1 - g) * torch.tanh(dev[:, 1]))
        bonus = torch.minimum(aux.clamp_min(0).unsqueeze(1).to(advantages.dtype), advantages.abs() / c.kappa)
        shaped = advantages + bonus * response_mask
        new_ema = batch_mean if self.ema is None else (1 - c.ema_alpha) * mu + c.ema_alpha * batch_mean
        self.ema = [float(x) for x in new_ema]
        m = response_mask > 0
        token_bonus = bonus.expand_as(advantages)[m]
        # mechanism diagnostics: how much the shaping changes the advantages, and whether
        # the term tracks response length (ER grows with the number of rows, notes s.3)
        lengths = response_mask.sum(1).double()
        abs_adv = float(advantages.abs()[m].sum())
        return shaped, {
            "mech/er_mean": float(stats[:, 2].mean()),
            "mech/erv_mean": float(stats[:, 1].mean()),
            "mech/era_mean": float(stats[:, 0].mean()),
            "mech/er_aux_mean": float(aux.mean()),
            "mech/er_bonus_mean": float(token_bonus.mean()) if bool(m.any()) else 0.0,
            "mech/er_bonus_token_frac": float((token_bonus > 0).double().mean()) if bool(m.any()) else 0.0,
            "mech/er_bonus_rel": float(token_bonus.sum()) / abs_adv if abs_adv > 0 else 0.0,
            "mech/er_aux_len_corr": pearson_or_none(aux.numpy(), lengths.numpy()),
            "mech/er_bonus_len_corr": pearson_or_none(
                ((bonus * response_mask).sum(1).double() / lengths.clamp_min(1.0)).numpy(), lengths.numpy()),
        }

    def state_dict(self):
        return {"ema": self.ema}

    def load_state_dict(self, state):
        self.ema = None if state.get("ema") is None else [float(x) for x in state["ema"]]


# --------------------------------------------------------------------------- verl registry


def _register_into_verl() -> None:
    """Expose the pure policy losses to verl's trainer (``actor.policy_loss.loss_mode``)."""
    vanilla = core_algos.get_policy_loss_fn("vanilla")

    def _grpo(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode="token-mean", config=None,
              rollout_is_weights=None):
        """searchgym 'grpo': verl's vanilla clipped loss with the config's clip ratios."""
        return vanilla(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode, config, rollout_is_weights)

    def _clip_higher(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode="token-mean", config=None,
                     rollout_is_weights=None):
        """searchgym 'clip_higher': vanilla loss with eps_high raised to at least 0.28
        (the config's clip_ratio_high when it is larger)."""
        assert config is not None
        d = ClipHigherConfig()
        cfg = dataclasses.replace(
            config,
            clip_ratio_low=config.clip_ratio_low if config.clip_ratio_low is not None else d.clip_ratio_low,
            clip_ratio_high=max(d.clip_ratio_high, config.clip_ratio_high or 0.0),
        ) if dataclasses.is_dataclass(config) else config
        return vanilla(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode, cfg, rollout_is_weights)

    for name, fn in (("grpo", _grpo), ("clip_higher", _clip_higher)):
        if core_algos.POLICY_LOSS_REGISTRY.get(name) is None:
            register_policy_loss(name)(fn)


_register_into_verl()

