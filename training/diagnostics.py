"""Mechanism diagnostics: does an objective act on anything in this regime?

An entropy-preserving objective changes GRPO's update through one mechanism (a clip, a
token selection, a loss mask, an entropy term, an advantage bonus). With a peaked policy
that mechanism can act on (almost) nothing: when most policy tokens have zero entropy the
forking-token mask only drops tokens that carry no gradient, and the arm trains exactly
like GRPO. These diagnostics measure it, so the report can say so:

- per step (cheap, from passes the trainer already makes): where the clip binds, the
  tokens each objective selects, the share of zero-entropy policy tokens, the ER bonus's
  size and its correlation with response length (keys in :func:`step_mechanism_metrics`);
- at a few steps: the cosine between the objective's policy gradient and GRPO's on the
  same batch (:func:`policy_gradient_cosine`);
- per arm: :func:`summarize_mechanism`, a stated rule for "equivalent to GRPO here".

Nothing here changes training: gradients come from ``torch.autograd.grad`` (no ``.grad``
written, no optimizer step), the global RNG is forked around the extra passes (Clip-Cov's
random token draw uses it), and the model's train/eval mode is restored.
"""

from __future__ import annotations

import math
import time
from typing import Any, Sequence

import numpy as np
import torch

from searchgym.metrics import names as mn
from searchgym.training.objectives import GRPO, Objective, make_objective
from searchgym.training.update import PaddedBatch, compute_advantages, packed_forward_logprobs

__all__ = [
    "ZERO_ENTROPY_NATS",
    "GRAD_COS_EQUIVALENT",
    "SHARE_EQUIVALENT",
    "MECHANISM_SHARE_KEYS",
    "MECHANISM_SHARE_WHAT",
    "EQUIVALENCE_RULE",
    "zero_entropy_shares",
    "gradient_diagnostic_due",
    "policy_gradient_cosine",
    "step_mechanism_metrics",
    "summarize_mechanism",
]

#: Entropy thresholds (nats) of the zero-entropy shares: 1e-6 is "exactly zero" at float32
#: round-off of ``logsumexp - sum p z``; 1e-3 is "near zero" (pi(y) > ~0.9999 for the
#: sampled token).
ZERO_ENTROPY_NATS = (1e-6, 1e-3)

#: Median gradient cosine to GRPO at or above which an arm is "equivalent to GRPO".
GRAD_COS_EQUIVALENT = 0.999
#: Median mechanism share below which an arm is "equivalent to GRPO" when no cosine was measured.
SHARE_EQUIVALENT = 0.005

#: Per objective, the per-step keys whose sum is the share of the update its mechanism
#: touches (see EQUIVALENCE_RULE); objectives absent here have no share (only the cosine).
MECHANISM_SHARE_KEYS: dict[str, tuple[str, ...]] = {
    "clip_higher": ("mech/clip_differs_from_grpo_frac",),
    "clip_cov": (mn.MECH_COV_SELECTED_FRAC, "mech/clip_differs_from_grpo_frac"),
    "kl_cov": (mn.MECH_COV_SELECTED_FRAC, "mech/clip_differs_from_grpo_frac"),
    "forking_tokens": ("mech/masked_grad_mass_frac",),
    "er_shaped": ("mech/er_bonus_rel",),
}

#: metrics.jsonl keys as spelled before searchgym.metrics.names (v1): the summary's
#: ``mechanism_share_keys`` field keeps that spelling, which committed reports print.
_V1_KEYS = {new: old for old, new in mn.LEGACY_STEP_KEYS.items()}

#: What each objective's mechanism share measures (for the report's wording).
MECHANISM_SHARE_WHAT: dict[str, str] = {
    "clip_higher": "of policy tokens where its clip state differs from GRPO's",
    "clip_cov": "of policy tokens covariance-selected or clipped unlike GRPO",
    "kl_cov": "of policy tokens covariance-selected or clipped unlike GRPO",
    "forking_tokens": "of GRPO's logit-gradient mass dropped by the mask",
    "er_shaped": "bonus relative to sum |A| over policy tokens",
}

EQUIVALENCE_RULE = (
    f"An arm 'acts on (almost) nothing' and is reported as 'equivalent to GRPO in this regime' when the "
    f"median, over its diagnostic steps, of the cosine between its policy gradient and GRPO's on the same "
    f"batch (same parameters, old log-probs, mini-batches; GRPO with unshaped advantages, eps 0.2/0.2, no "
    f"entropy term) is >= {GRAD_COS_EQUIVALENT}. Adam's step does not depend on the gradient's overall scale, "
    f"so only the direction matters, and cosine {GRAD_COS_EQUIVALENT} leaves a component orthogonal to GRPO's "
    f"of at most {math.sqrt(1 - GRAD_COS_EQUIVALENT ** 2):.3f} of the gradient's norm. Without a measured cosine the fallback is the "
    f"median per-step mechanism share < {SHARE_EQUIVALENT:.1%}: clip-higher, the tokens whose clip state differs "
    f"from GRPO's; Clip-Cov / KL-Cov, the covariance-selected tokens plus those; forking tokens, the share of "
    f"GRPO's logit-gradient mass sum |A|(1 - pi(y)) the mask drops; er_shaped, the bonus as a share of sum |A|. "
    f"A change confined to a share s of the gradient's mass moves it by at most s of its norm; token counts "
    f"are a weaker proxy (one token can carry more than its share), hence the cosine decides when measured. "
    f"entropy_bonus has no share: without a cosine it is inconclusive. GRPO is the reference."
)


def _threshold_name(t: float) -> str:
    s = f"{t:.0e}" if float(f"{t:.0e}") == t else f"{t:g}"  # 1e-06 -> "1e-6", 0.75 -> "0.75"
    if "e" in s:
        m, e = s.split("e")
        s = f"{m}e{int(e)}"
    return s


def zero_entropy_shares(entropy: torch.Tensor | None, response_mask: torch.Tensor,
                        thresholds: Sequence[float] = ZERO_ENTROPY_NATS) -> dict[str, float]:
    """``mech/entropy_below_<t>_frac``: share of policy tokens (``response_mask > 0``) whose
    entropy is below ``t`` nats, for each threshold (``1e-6``, ``1e-3`` by default). Empty
    when there is no entropy or no policy token."""
    if entropy is None:
        return {}
    valid = response_mask > 0
    n = int(valid.sum())
    if n == 0:
        return {}
    e = entropy.detach()[valid]
    return {f"mech/entropy_below_{_threshold_name(t)}_frac": float((e < t).sum()) / n for t in thresholds}


def gradient_diagnostic_due(step: int, total_steps: int, every: int | None) -> bool:
    """Whether step ``step`` (1-based) of a ``total_steps`` run gets the gradient cosine.

    ``every=None``: a handful per run, at step 1, every ``max(1, total_steps // 4)`` steps
    and the last step (5-6 points); ``0``: never; ``k > 0``: step 1 and every ``k``-th step."""
    if every == 0 or step < 1:
        return False
    if every is None:
        k = max(1, total_steps // 4)
        return step == 1 or step % k == 0 or step == total_steps
    return step == 1 or step % every == 0


def _minibatch_indices(n: int, num: int, seed: int) -> list[torch.Tensor]:
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return [c for c in torch.tensor_split(perm, num) if c.numel()]


def policy_gradient_cosine(
    model: torch.nn.Module,
    objective: Objective,
    batch: PaddedBatch,
    reference_advantages: torch.Tensor,
    *,
    reference: Objective | None = None,
    temperature: float = 1.0,
    num_minibatches: int = 1,
    max_minibatches: int | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Cosine between ``objective``'s policy gradient and ``reference``'s (default: GRPO
    with its default config) over the model's parameters, flattened, on the same batch.

    ``batch`` needs ``old_log_probs`` and the objective's ``advantages``; the reference
    uses ``reference_advantages`` (the unshaped ones: er_shaped rewrites advantages). The
    batch is split into ``num_minibatches`` shuffled mini-batches (seeded by ``seed``, the
    trainer's own generator untouched); mini-batches whose reference advantages are all
    zero (GRPO's gradient is 0, the cosine undefined) are skipped before any forward, and
    at most ``max_minibatches`` (None: all) are measured. Per mini-batch both losses come from ONE forward at
    the current parameters (token selections are per mini-batch, as in training), each is
    differentiated with ``torch.autograd.grad``. The objective's full loss (entropy term
    included) is compared with the reference's plain loss; a reference KL term, identical
    in both, is left out.

    Returns ``mech/grad_cos_grpo`` (mean over mini-batches), ``mech/grad_cos_grpo_min``,
    ``mech/grad_rel_diff_grpo`` (mean ||g_obj - g_grpo|| / ||g_grpo||: for entropy_bonus,
    the entropy term's gradient relative to the policy-gradient's), ``mech/grad_norm_ratio_grpo``
    (mean ||g_obj|| / ||g_grpo||), ``mech/grad_diag_minibatches`` and ``time/grad_diag_s``
    (wall time, ``searchgym.metrics.names.TIME_GRAD_DIAG``); only the last two when no
    mini-batch has a non-zero gradient on both sides. Parameters,
    ``.grad``, the global RNG and the model's train/eval mode are left as they were.
    """
    if batch.old_log_probs is None or batch.advantages is None:
        raise ValueError("policy_gradient_cosine needs old_log_probs and advantages")
    if reference_advantages.shape != batch.advantages.shape:
        raise ValueError(f"reference_advantages {tuple(reference_advantages.shape)} != advantages "
                         f"{tuple(batch.advantages.shape)}")
    t0 = time.perf_counter()
    reference = reference if reference is not None else make_objective("grpo")
    params = [p for p in model.parameters() if p.requires_grad]
    ref_batch = PaddedBatch(batch.input_ids, batch.attention_mask, batch.response_mask, batch.old_log_probs,
                            None, reference_advantages)
    devices = sorted({p.device.index or 0 for p in params if p.device.type == "cuda"})
    cos, rel, ratio = [], [], []
    was_training = model.training
    with torch.random.fork_rng(devices=devices):
        model.train()  # the mode ppo_update differentiates in
        try:
            for idx in _minibatch_indices(len(batch), num_minibatches, seed):
                if max_minibatches is not None and len(cos) >= max_minibatches:
                    break
                mb, rb = batch.select(idx), ref_batch.select(idx)
                if not bool((rb.advantages != 0).any()):
                    continue  # GRPO's gradient is 0 here (no reward spread): no cosine, no cost
                # packed, as ppo_update forwards (no padding computed; equal up to round-off)
                logp, ent, _ = packed_forward_logprobs(model, mb.input_ids, mb.attention_mask, mb.response_mask,
                                                       temperature)
                loss_obj = objective.compute_loss(mb.old_log_probs, logp, mb.advantages, mb.response_mask, ent).loss
                loss_ref = reference.compute_loss(mb.old_log_probs, logp, rb.advantages, mb.response_mask, ent).loss
                g_obj = _grads(loss_obj, params, retain=True)
                g_ref = _grads(loss_ref, params, retain=False)
                dot = sum(float((a.double() * b.double()).sum()) for a, b in zip(g_obj, g_ref) if a is not None
                          and b is not None)
                n_obj = math.sqrt(sum(float(a.double().square().sum()) for a in g_obj if a is not None))
                n_ref = math.sqrt(sum(float(b.double().square().sum()) for b in g_ref if b is not None))
                if n_obj > 0 and n_ref > 0:
                    cos.append(dot / (n_obj * n_ref))
                    rel.append(math.sqrt(max(n_obj ** 2 + n_ref ** 2 - 2 * dot, 0.0)) / n_ref)
                    ratio.append(n_obj / n_ref)
        finally:
            model.train(was_training)
    out: dict[str, float] = {"mech/grad_diag_minibatches": float(len(cos))}
    if cos:
        out.update({
            "mech/grad_cos_grpo": float(np.mean(cos)),
            "mech/grad_cos_grpo_min": float(np.min(cos)),
            "mech/grad_rel_diff_grpo": float(np.mean(rel)),
            "mech/grad_norm_ratio_grpo": float(np.mean(ratio)),
        })
    out[mn.TIME_GRAD_DIAG] = time.perf_counter() - t0
    return out


def _grads(loss: torch.Tensor, params: list[torch.Tensor], retain: bool) -> list[torch.Tensor | None]:
    if not loss.requires_grad:  # e.g. a mask that keeps no token: the gradient is zero
        return [None] * len(params)
    return list(torch.autograd.grad(loss, params, retain_graph=retain, allow_unused=True))


def _is_plain_grpo(objective: Objective) -> bool:
    return type(objective) is GRPO and objective.config == GRPO.Config()


def step_mechanism_metrics(
    model: torch.nn.Module,
    objective: Objective,
    cfg: Any,
    step: int,
    batch: PaddedBatch,
    entropy: torch.Tensor | None,
    update_metrics: dict[str, float],
    rewards: torch.Tensor,
    group_ids: Sequence,
) -> dict[str, float]:
    """The mechanism fields of one RL step's metrics line (``RLTrainer.step_once``).

    ``cfg`` is the run's ``RLConfig`` (``diag_every``, ``steps``, advantage estimator,
    ``temperature``, ``num_minibatches``, ``seed``); ``batch`` the step's batch with old
    log-probs and the objective's advantages; ``entropy`` the old pass's entropy;
    ``update_metrics`` what ``ppo_update`` returned; ``rewards``/``group_ids`` rebuild the
    unshaped advantages for GRPO's gradient. Called after the update, so the gradient
    cosine is taken at the updated parameters against the step's old log-probs: the
    off-policy point the step's later mini-batches see, where clips and KL-Cov's penalty
    act (at the old parameters every ratio is 1 and they cannot); over the step's
    ``num_minibatches`` mini-batch split (a private permutation).

    Keys: every ``mech/*`` key of ``update_metrics`` (``mech/clip_frac_low``,
    ``mech/clip_frac_high``, ``mech/clip_frac_dual``, ``mech/clip_differs_from_grpo_frac``,
    the objectives' selections ``mech/cov_selected_frac`` / ``mech/forking_selected_frac``,
    and ``mech/masked_grad_mass_frac`` for loss-masked objectives: per mini-batch shares,
    averaged over the updates), ``mech/entropy_below_1e-6_frac`` and
    ``mech/entropy_below_1e-3_frac``, and on diagnostic steps the
    :func:`policy_gradient_cosine` keys (not for plain GRPO, whose cosine is 1).
    """
    out = {k: float(v) for k, v in update_metrics.items() if k.startswith(mn.MECH)}
    out.update(zero_entropy_shares(entropy, batch.response_mask))
    every = getattr(cfg, "diag_every", None)
    if _is_plain_grpo(objective) or not gradient_diagnostic_due(step, cfg.steps, every):
        return out
    if type(objective).shape_advantages is Objective.shape_advantages:
        base = batch.advantages
    else:
        base = compute_advantages(cfg.adv_estimator, rewards, batch.response_mask, group_ids,
                                  cfg.norm_adv_by_std_in_grpo, cfg.gamma)
    out.update(policy_gradient_cosine(model, objective, batch, base, temperature=cfg.temperature,
                                      num_minibatches=cfg.num_minibatches, seed=cfg.seed * 1_000_003 + step))
    return out


def _median(records: list[dict], key: str) -> float | None:
    vals = [float(r[key]) for r in records if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    return float(np.median(vals)) if vals else None


def _share(record: dict, keys: tuple[str, ...]) -> float | None:
    vals = [float(record[k]) for k in keys if isinstance(record.get(k), (int, float)) and math.isfinite(record[k])]
    return sum(vals) if vals else None


#: (per-step key, stem of its ``<stem>_median`` field in the summary): the summary's field
#: names are those of the reports written so far.
_PER_STEP_MEDIANS: tuple[tuple[str, str], ...] = tuple((k, _V1_KEYS.get(k, k).removeprefix("mech/")) for k in (
    "mech/clip_frac_low", "mech/clip_frac_high", "mech/clip_frac_dual", "mech/clip_differs_from_grpo_frac",
    "mech/masked_grad_mass_frac", *(f"mech/entropy_below_{_threshold_name(t)}_frac" for t in ZERO_ENTROPY_NATS),
    mn.MECH_COV_SELECTED_FRAC, mn.MECH_FORKING_SELECTED_FRAC, mn.TRAIN_ENTROPY,
    "mech/er_bonus_rel", "mech/er_bonus_token_frac", "mech/er_aux_len_corr", "mech/er_bonus_len_corr",
    "mech/grad_rel_diff_grpo", "mech/grad_norm_ratio_grpo", mn.TIME_GRAD_DIAG))


def summarize_mechanism(step_records: list[dict], objective: str) -> dict:
    """One arm's mechanism summary from its per-step metrics records (metrics.jsonl lines,
    under the names of ``searchgym.metrics.names`` or their legacy spellings: each record
    goes through ``normalize_record``; records without a ``step`` >= 1, e.g. evaluations at
    step 0, are ignored).

    Returns medians over steps of the per-step keys (``clip_frac_low``, ``clip_frac_high``,
    ``clip_differs_from_grpo_frac``, ``entropy_below_1e-6_frac``,
    ``entropy_below_1e-3_frac``, ``cov_selected_frac``, ``forking_selected_frac``,
    ``masked_grad_mass_frac``, ``er_bonus_rel``, ``er_aux_len_corr``, ...), of the gradient
    diagnostics (``grad_cos_grpo`` with its minimum and count, ``grad_rel_diff_grpo``), the
    ``mechanism_share_median`` (keys ``MECHANISM_SHARE_KEYS``, meaning
    ``mechanism_share_what``: a token share for the clips and covariance selections, a
    gradient-mass share for forking tokens, an advantage share for er_shaped), and the verdict:
    ``acts_on_nothing`` (True / False / None when undecidable or the reference),
    ``verdict`` (``"equivalent to GRPO in this regime"``, ``"acts"``, ``"reference"``,
    ``"inconclusive"``), ``decided_by`` (``"grad_cos"``, ``"share"`` or None) and ``rule``
    (:data:`EQUIVALENCE_RULE`, for the report).
    """
    recs = [mn.normalize_record(r, mn.STEP_RECORD) for r in step_records
            if isinstance(r, dict) and isinstance(r.get("step"), (int, float)) and r["step"] >= 1]
    out: dict[str, Any] = {"objective": objective, "steps": len(recs)}
    for k, stem in _PER_STEP_MEDIANS:
        v = _median(recs, k)
        if v is not None:
            out[stem + "_median"] = v
    cos = [float(r["mech/grad_cos_grpo"]) for r in recs
           if isinstance(r.get("mech/grad_cos_grpo"), (int, float)) and math.isfinite(r["mech/grad_cos_grpo"])]
    out["grad_cos_steps"] = len(cos)
    out["grad_cos_grpo_median"] = float(np.median(cos)) if cos else None
    out["grad_cos_grpo_min"] = float(np.min(cos)) if cos else None
    keys = MECHANISM_SHARE_KEYS.get(objective)
    shares = [s for s in (_share(r, keys) for r in recs) if s is not None] if keys else []
    out["mechanism_share_keys"] = [_V1_KEYS.get(k, k) for k in keys] if keys else None
    out["mechanism_share_what"] = MECHANISM_SHARE_WHAT.get(objective)
    out["mechanism_share_median"] = float(np.median(shares)) if shares else None
    if objective == "grpo":
        acts_on_nothing, decided_by, verdict = None, None, "reference"
    elif cos:
        acts_on_nothing, decided_by = out["grad_cos_grpo_median"] >= GRAD_COS_EQUIVALENT, "grad_cos"
    elif shares:
        acts_on_nothing, decided_by = out["mechanism_share_median"] < SHARE_EQUIVALENT, "share"
    else:
        acts_on_nothing, decided_by, verdict = None, None, "inconclusive"
    if acts_on_nothing is not None:
        verdict = "equivalent to GRPO in this regime" if acts_on_nothing else "acts"
    out.update({"acts_on_nothing": acts_on_nothing, "verdict": verdict, "decided_by": decided_by,
                "rule": EQUIVALENCE_RULE})
    return out
