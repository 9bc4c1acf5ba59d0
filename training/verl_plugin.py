"""searchgym's plugin for verl's worker processes.

verl imports every module named in ``VERL_USE_EXTERNAL_MODULES`` (comma separated) at the
end of ``import verl`` (``verl/__init__.py``), in every Ray worker that imports verl. The
launcher (:mod:`searchgym.training.verl_launch`) puts this module's name there through
``ray_kwargs.ray_init.runtime_env.env_vars``, so that inside the actor workers:

1. searchgym's pure policy losses are registered in verl's ``POLICY_LOSS_REGISTRY`` (by
   importing :mod:`searchgym.training.objectives`, which registers them on import), and
   ``actor.policy_loss.loss_mode=<name>`` resolves;
2. the *forking-token* objective (Wang et al. 2025, "Beyond the 80/20 rule", arXiv
   2506.01939) is applied inside verl's own PPO loss: only the top-rho highest-entropy
   policy tokens of the micro-batch receive a policy gradient.

Why a patch: verl 0.9.1 binds its loss as ``partial(ppo_loss, config=...)`` in
``verl/workers/engine_workers.py`` with no config hook, and the policy-loss registry
functions never see per-token entropy (only ``ppo_loss`` does, as
``model_output["entropy"]`` when ``actor.calculate_entropy=true``). So this module wraps
``ppo_loss``: it computes the top-rho entropy mask and zeroes the advantages of every other
token before calling verl's unchanged ``ppo_loss``. A zero advantage makes the clipped
surrogate of that token exactly 0 with zero gradient, while the token-mean denominator
(``batch_num_tokens``, computed by the engine before the loss) still counts all tokens:
that is the paper's objective ``(1/sum|o_i|) sum_t 1[H_t >= tau_rho] * min(r*A, clip(r)*A)``.
The entropy bonus and the KL term keep the full response mask.

Activation: the wrapper is a no-op unless ``SEARCHGYM_FORKING_RHO`` is set to a value in
(0, 1) in the worker's environment (the launcher sets it for ``--objective
forking_tokens``). It then requires ``actor.calculate_entropy=true`` and raises otherwise.

The threshold is the (1 - rho) quantile of the valid-token entropies of the current
micro-batch, gathered across the data-parallel group when one is given (as TRL's
``get_high_entropy_mask`` does); ties at the threshold are kept.
"""

from __future__ import annotations

import os
import sys

import torch

from searchgym.metrics.entropy import top_entropy_mask

#: Environment variable that switches the forking-token mask on (a float in (0, 1)).
RHO_ENV = "SEARCHGYM_FORKING_RHO"
#: Name this module is loaded under (what goes in ``VERL_USE_EXTERNAL_MODULES``).
MODULE_NAME = "searchgym.training.verl_plugin"

_ORIGINAL_PPO_LOSS = None  # verl's ppo_loss, kept so install() is idempotent


def forking_rho_from_env() -> float | None:
    """Return rho from ``SEARCHGYM_FORKING_RHO`` (None when unset or empty).

    Raises ValueError naming the variable when the value is not a float in (0, 1].
    """
    raw = os.environ.get(RHO_ENV, "").strip()
    if not raw:
        return None
    try:
        rho = float(raw)
    except ValueError:
        raise ValueError(f"{RHO_ENV}={raw!r} is not a number; expected a float in (0, 1]") from None
    if not 0.0 < rho <= 1.0:
        raise ValueError(f"{RHO_ENV}={raw!r} is out of range; expected a float in (0, 1]")
    return rho


def _gather_valid(values: torch.Tensor, dp_group) -> torch.Tensor:
    """All-gather a 1-D tensor of variable length across ``dp_group`` (padding-free)."""
    import torch.distributed as dist

    world = dist.get_world_size(group=dp_group)
    n = torch.tensor([values.numel()], device=values.device, dtype=torch.long)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n, group=dp_group)
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros(longest, device=values.device, dtype=values.dtype)
    padded[: values.numel()] = values
    chunks = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(chunks, padded, group=dp_group)
    return torch.cat([c[: int(s.item())] for c, s in zip(chunks, sizes)])


def gathered_top_entropy_mask(entropy: torch.Tensor, response_mask: torch.Tensor, rho: float,
                              dp_group=None) -> torch.Tensor:
    """Bool mask of the valid tokens whose entropy is in the top ``rho`` fraction: the one
    top-rho rule (:func:`searchgym.metrics.entropy.top_entropy_mask`), with the threshold
    taken over every data-parallel rank's valid tokens when ``dp_group`` has more than one
    rank (``[bsz, response_len]`` in and out, a subset of ``response_mask``)."""
    values = None
    if dp_group is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
        if torch.distributed.get_world_size(group=dp_group) > 1:
            values = _gather_valid(entropy.detach().float()[response_mask.bool()], dp_group)
    return top_entropy_mask(entropy, response_mask, rho, threshold_values=values)


def _apply_to_advantages(advantages: torch.Tensor, keep_padded: torch.Tensor) -> torch.Tensor:
    """Zero the advantages outside ``keep_padded``, preserving the nested/padded layout."""
    if advantages.is_nested:
        lengths = advantages.offsets().diff().tolist()
        rows = [advantages[i] * keep_padded[i, :n].to(advantages.dtype) for i, n in enumerate(lengths)]
        return torch.nested.as_nested_tensor(rows, layout=torch.jagged)
    return advantages * keep_padded.to(advantages.dtype)


def forking_ppo_loss(config, model_output, data, dp_group=None):
    """verl's ``ppo_loss`` with the forking-token mask applied to the policy-gradient term.

    Same signature and return value as ``verl.workers.utils.losses.ppo_loss``; adds the
    metric ``actor/forking_kept_frac`` (kept tokens / valid tokens of this micro-batch).
    """
    rho = forking_rho_from_env()
    if rho is None or rho >= 1.0:
        return _ORIGINAL_PPO_LOSS(config, model_output, data, dp_group=dp_group)
    entropy = model_output.get("entropy", None)
    if entropy is None:
        raise RuntimeError(
            f"{RHO_ENV}={rho} (forking_tokens) needs per-token entropy in verl's loss: set "
            "actor_rollout_ref.actor.calculate_entropy=true"
        )
    from verl.workers.utils.padding import no_padding_2_padding

    ent = no_padding_2_padding(entropy, data)
    padded = data.select("response_mask", "advantages").to_padded_tensor()
    mask = padded["response_mask"]
    # Nested inputs pad to the micro-batch's longest response, the entropy to the batch's.
    keep = gathered_top_entropy_mask(ent[:, : mask.shape[1]], mask, rho, dp_group=dp_group)
    # Shallow copy: the micro-batch may be reused across PPO epochs; never mutate it.
    masked = data.copy()
    masked["advantages"] = _apply_to_advantages(data["advantages"], keep)
    loss, metrics = _ORIGINAL_PPO_LOSS(config, model_output, masked, dp_group=dp_group)
    n_valid = mask.bool().sum().clamp(min=1)
    metrics["actor/forking_kept_frac"] = (keep.sum() / n_valid).item()
    return loss, metrics


def install() -> None:
    """Replace verl's ``ppo_loss`` by :func:`forking_ppo_loss` where workers look it up.

    Patches ``verl.workers.utils.losses.ppo_loss`` (read by ``engine_workers`` at its
    import) and, when ``verl.workers.engine_workers`` is already imported, its module
    global too (read when the actor is built). Idempotent.
    """
    global _ORIGINAL_PPO_LOSS
    from verl.workers.utils import losses

    if _ORIGINAL_PPO_LOSS is None:
        _ORIGINAL_PPO_LOSS = losses.ppo_loss
    losses.ppo_loss = forking_ppo_loss
    engine_workers = sys.modules.get("verl.workers.engine_workers")
    if engine_workers is not None:
        engine_workers.ppo_loss = forking_ppo_loss


def _register_objectives() -> None:
    """Import searchgym's objective registry so its pure policy losses enter verl's registry."""
    try:
        import searchgym.training.objectives  # noqa: F401  (registers on import)
    except ModuleNotFoundError as exc:  # the registry module is optional for the mask itself
        if exc.name != "searchgym.training.objectives":
            raise


install()
_register_objectives()
