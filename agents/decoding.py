"""Two copy-free pieces for the rollout engine's decode loop on CPU.

``PreallocatedLayer``: a KV-cache layer that writes each step into a buffer sized for the
whole round, instead of ``DynamicLayer``'s ``torch.cat`` (which copies the full cache at
every generated token).

``gqa_sdpa_attention``: SDPA for grouped-query attention that folds the query heads of a
KV group into the query-length axis, so the keys and values are used as they are.
transformers' ``sdpa`` path calls ``repeat_kv`` (a full copy of K and V per layer and
step) whenever an attention mask is given on CPU, which a left-padded batch always has.
The result is the same matrix product, so logits agree with ``sdpa`` (exactly, in the
tests). ``gqa_attention(model)`` switches a model to it for the duration of a block.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.cache_utils import DynamicCache, DynamicLayer
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

GQA_SDPA = "searchgym_gqa_sdpa"


def gqa_sdpa_attention(module, query, key, value, attention_mask, dropout: float = 0.0,
                       scaling: float | None = None, is_causal: bool | None = None, **kwargs):
    """``sdpa_attention_forward`` without ``repeat_kv``: query ``[B, Hq, q, D]`` becomes
    ``[B, Hkv, g*q, D]`` (query head ``h`` uses KV head ``h // g``, as in ``repeat_kv``)."""
    B, Hq, q, D = query.shape
    Hkv, L = key.shape[1], key.shape[2]
    g = Hq // Hkv
    if attention_mask is None:  # causal, aligned to the end of the keys
        attention_mask = torch.ones(q, L, dtype=torch.bool, device=query.device).tril(L - q)[None, None]
    mask = attention_mask
    if g > 1 and q > 1:  # each of the g folded copies of the q queries gets the same mask rows
        b, h = mask.shape[:2]
        mask = mask.unsqueeze(2).expand(b, h, g, q, L).reshape(b, h, g * q, L)
    out = F.scaled_dot_product_attention(query.reshape(B, Hkv, g * q, D), key, value, attn_mask=mask,
                                         dropout_p=dropout, scale=scaling)
    return out.reshape(B, Hq, q, D).transpose(1, 2).contiguous(), None


AttentionInterface.register(GQA_SDPA, gqa_sdpa_attention)
AttentionMaskInterface.register(GQA_SDPA, sdpa_mask)


def uses_repeat_kv(model) -> bool:
    """True when ``model`` runs transformers' ``sdpa`` with fewer KV heads than query heads."""
    cfg = model.config
    kv = getattr(cfg, "num_key_value_heads", None)
    return (getattr(cfg, "_attn_implementation", None) == "sdpa" and kv is not None
            and kv < getattr(cfg, "num_attention_heads", kv))


@contextlib.contextmanager
def gqa_attention(model):
    """Run ``model`` with ``gqa_sdpa_attention`` inside the block when it would otherwise copy
    K and V (``uses_repeat_kv``); other models are left untouched."""
    if not uses_repeat_kv(model):
        yield
        return
    model.set_attn_implementation(GQA_SDPA)
    try:
        yield
    finally:
        model.set_attn_implementation("sdpa")


class PreallocatedLayer(DynamicLayer):
    """A ``DynamicLayer`` whose keys/values live in a buffer with room for ``capacity``
    columns; ``update`` writes in place and returns views of the filled part."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, capacity: int):
        super().__init__()
        B, H, n, _ = keys.shape
        self._k = keys.new_zeros((B, H, max(capacity, n), keys.shape[-1]))
        self._v = values.new_zeros((B, H, max(capacity, n), values.shape[-1]))
        self._k[:, :, :n] = keys
        self._v[:, :, :n] = values
        self._n = n
        self.dtype, self.device = keys.dtype, keys.device
        self.is_initialized = True

    # ``keys``/``values`` are what the rest of transformers reads: views of the buffer.
    @property
    def keys(self) -> torch.Tensor:
        return self._k[:, :, : self._n]

    @keys.setter
    def keys(self, value) -> None:  # CacheLayerMixin.__init__ assigns None
        if value is not None:
            raise AttributeError("PreallocatedLayer keys are written through update()")

    @property
    def values(self) -> torch.Tensor:
        return self._v[:, :, : self._n]

    @values.setter
    def values(self, value) -> None:
        if value is not None:
            raise AttributeError("PreallocatedLayer values are written through update()")

    def update(self, key_states, value_states, *args, **kwargs):
        n, q = self._n, key_states.shape[-2]
        if n + q > self._k.shape[2]:  # out of room: grow geometrically (one copy)
            cap = max(2 * self._k.shape[2], n + q)
            for name in ("_k", "_v"):
                old = getattr(self, name)
                new = old.new_zeros((old.shape[0], old.shape[1], cap, old.shape[3]))
                new[:, :, :n] = old[:, :, :n]
                setattr(self, name, new)
        self._k[:, :, n:n + q] = key_states
        self._v[:, :, n:n + q] = value_states
        self._n = n + q
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self._n

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep rows ``indices`` (new row ``i`` is old row ``indices[i]``): only rows that
        change slot are copied, then the buffer is narrowed (a view)."""
        dst = torch.arange(len(indices))
        moved = indices != dst
        if bool(moved.any()):
            self._k[dst[moved]] = self._k[indices[moved]]
            self._v[dst[moved]] = self._v[indices[moved]]
        self._k = self._k[: len(indices)]
        self._v = self._v[: len(indices)]

    def crop(self, max_length: int) -> None:
        if max_length < 0:
            max_length = self._n - abs(max_length)
        self._n = min(self._n, max_length)


def preallocated_cache(model, kv: list[tuple[torch.Tensor, torch.Tensor]], capacity: int) -> DynamicCache:
    """A ``DynamicCache`` whose layers are ``PreallocatedLayer`` over ``kv`` (one
    ``(keys, values)`` per layer, ``[B, H, n, D]``) with room for ``capacity`` columns."""
    cache = DynamicCache(config=model.config)
    cache.layers = [PreallocatedLayer(k, v, capacity) for k, v in kv]
    return cache
