"""Token-level policy entropy: over policy tokens only, over the top-rho highest-entropy
tokens (the "forking tokens" of arXiv 2506.01939), and per segment (think/query/answer)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

__all__ = ["SEGMENTS", "entropy_from_logits", "top_entropy_threshold", "top_entropy_mask", "token_entropy_stats",
           "batch_token_entropy_stats"]

# Segment labels a per-token ``segments`` list may use; integer codes index this tuple.
SEGMENTS = ("think", "query", "answer", "other")


def entropy_from_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Per-position entropy (nats) of softmax(logits / temperature) over the last axis.

    Same formula as verl ``torch_functional.entropy_from_logits``:
    ``logsumexp(z) - sum softmax(z) * z``; computed in float32 at least.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    z = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    if temperature != 1.0:
        z = z / temperature
    p = torch.softmax(z, dim=-1)
    return torch.logsumexp(z, dim=-1) - (p * z).sum(dim=-1)


#: torch.quantile refuses inputs above this many elements; kthvalue gives the order statistic.
_QUANTILE_MAX = 2**24


def top_entropy_threshold(values, rho: float):
    """The top-rho rule's threshold: the (1 - ``rho``) quantile of ``values`` (linear
    interpolation, numpy's and torch's default), so the tokens with entropy >= it are the
    ``rho`` highest-entropy share, ties at the threshold kept (TRL's ``get_high_entropy_mask``;
    the forking tokens of arXiv 2506.01939). ``values``: a 1-d numpy array (returns a float)
    or a non-empty torch tensor (returns a 0-d tensor; above 2**24 elements, where
    ``torch.quantile`` refuses, the k-th smallest with k = max(1, int((1 - rho) n))).
    This is the one top-rho rule: the forking-token loss mask (trainer and verl plugin) and
    the ``entropy_top`` metric all use it."""
    if not 0.0 < rho <= 1.0:
        raise ValueError(f"rho must be in (0, 1], got {rho}")
    if isinstance(values, torch.Tensor):
        if values.numel() <= _QUANTILE_MAX:
            return torch.quantile(values, 1.0 - rho)
        return values.kthvalue(max(1, int((1.0 - rho) * values.numel()))).values
    return float(np.quantile(values, 1.0 - rho))


def top_entropy_mask(entropy: torch.Tensor, response_mask: torch.Tensor, rho: float,
                     threshold_values: torch.Tensor | None = None) -> torch.Tensor:
    """Bool mask (shaped like ``response_mask``) of the policy tokens (``response_mask`` != 0)
    whose entropy is >= :func:`top_entropy_threshold` of the policy tokens' entropies.

    ``threshold_values``: the entropies the threshold is taken over when not just these
    (e.g. gathered across data-parallel ranks); default the valid entries of ``entropy``.
    No valid token (or an empty ``threshold_values``): all False. ``rho`` = 1 keeps every
    policy token. Entropy is compared in float32, detached."""
    valid = response_mask.bool()
    ent = entropy.detach().float()
    values = ent[valid] if threshold_values is None else threshold_values.detach().float()
    if values.numel() == 0:
        return torch.zeros_like(valid)
    return valid & (ent >= top_entropy_threshold(values, rho))


def _flat(x, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    return a.reshape(-1)


def _segment_codes(segments, n: int) -> np.ndarray:
    if isinstance(segments, torch.Tensor):
        segments = segments.detach().cpu().numpy()
    a = np.asarray(segments).reshape(-1)
    if a.size != n:
        raise ValueError(f"segments has {a.size} entries but entropies have {n}")
    if a.dtype.kind in "iu":
        if a.size and (a.min() < 0 or a.max() >= len(SEGMENTS)):
            raise ValueError(f"integer segment codes must be in [0, {len(SEGMENTS)}), codes index {SEGMENTS}")
        return a.astype(np.int64)
    codes = np.empty(a.size, dtype=np.int64)
    lookup = {s: i for i, s in enumerate(SEGMENTS)}
    for i, s in enumerate(a.tolist()):
        if s not in lookup:
            raise ValueError(f"unknown segment label {s!r} at token {i}; expected one of {SEGMENTS}")
        codes[i] = lookup[s]
    return codes


def token_entropy_stats(
    entropies,
    loss_mask=None,
    segments=None,
    *,
    top_frac: float = 0.2,
) -> dict[str, float]:
    """Token-entropy summary over policy tokens of one batch (any shape; flattened).

    Returns ``entropy`` (token mean over tokens with ``loss_mask`` != 0, verl's logged
    entropy), ``entropy_top`` (mean over tokens with entropy >= the (1 - top_frac) quantile of
    the policy tokens, ties at the threshold kept, as TRL's ``get_high_entropy_mask``),
    ``entropy_top_threshold``, ``num_tokens``, and with ``segments`` (per-token labels from
    :data:`SEGMENTS`, or their integer codes) ``entropy_<segment>`` for each segment present
    among policy tokens. Padding can be excluded through ``loss_mask``. No policy tokens: NaN.
    """
    if not 0.0 < top_frac <= 1.0:
        raise ValueError(f"top_frac must be in (0, 1], got {top_frac}")
    h = _flat(entropies, "entropies").astype(np.float64)
    if loss_mask is None:
        mask = np.ones(h.size, dtype=bool)
    else:
        mask = _flat(loss_mask, "loss_mask").astype(bool)
        if mask.size != h.size:
            raise ValueError(f"loss_mask has {mask.size} entries but entropies have {h.size}")
    hp = h[mask]
    out: dict[str, float] = {"num_tokens": float(hp.size)}
    if hp.size == 0:
        out.update(entropy=np.nan, entropy_top=np.nan, entropy_top_threshold=np.nan)
    else:
        tau = top_entropy_threshold(hp, top_frac)
        out["entropy"] = float(hp.mean())
        out["entropy_top"] = float(hp[hp >= tau].mean())
        out["entropy_top_threshold"] = tau
    if segments is not None:
        codes = _segment_codes(segments, h.size)[mask]
        for c, name in enumerate(SEGMENTS):
            sel = codes == c
            if sel.any():
                out[f"entropy_{name}"] = float(hp[sel].mean())
    return out


def batch_token_entropy_stats(
    entropies: Sequence, loss_masks: Sequence | None = None, segments: Sequence | None = None, *, top_frac: float = 0.2
) -> dict[str, float]:
    """:func:`token_entropy_stats` over a list of per-response arrays (pooled token-mean)."""
    for name, other in (("loss_masks", loss_masks), ("segments", segments)):
        if other is not None and len(other) != len(entropies):
            raise ValueError(f"{name} has {len(other)} responses but entropies have {len(entropies)}")
    h = np.concatenate([_flat(e, "entropies") for e in entropies]) if len(entropies) else np.zeros(0)
    m = None if loss_masks is None else np.concatenate([_flat(x, "loss_mask") for x in loss_masks])
    s = None
    if segments is not None:
        s = np.concatenate([_segment_codes(x, len(_flat(e, "entropies"))) for x, e in zip(segments, entropies)])
    return token_entropy_stats(h, m, s, top_frac=top_frac)
