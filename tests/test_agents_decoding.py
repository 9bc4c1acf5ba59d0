"""The rollout engine's copy-free decode pieces: GQA attention without repeat_kv, and the
preallocated KV-cache layer. Both must reproduce transformers' own path exactly."""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM
from transformers.cache_utils import DynamicCache

from searchgym.agents.decoding import (GQA_SDPA, PreallocatedLayer, gqa_attention, preallocated_cache,
                                       uses_repeat_kv)

torch.set_num_threads(1)


def _model(kv_heads: int) -> Qwen2ForCausalLM:
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=128)
    cfg._attn_implementation = "sdpa"
    return Qwen2ForCausalLM(cfg).eval()


def _padded_batch():
    ids = torch.randint(3, 97, (3, 11), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(3, 11, dtype=torch.long)
    mask[1, :4] = 0  # left padding
    mask[2, :7] = 0
    return ids, mask


@pytest.mark.parametrize("kv_heads", [1, 2, 4])
def test_gqa_attention_equals_sdpa_prefill_and_decode(kv_heads):
    model = _model(kv_heads)
    assert uses_repeat_kv(model) == (kv_heads < 4)
    ids, mask = _padded_batch()
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
        nxt = ref.logits[:, -1].argmax(-1, keepdim=True)
        m2 = torch.cat([mask, torch.ones(3, 1, dtype=torch.long)], 1)
        ref2 = model(input_ids=nxt, attention_mask=m2, position_ids=pos[:, -1:] + 1,
                     past_key_values=ref.past_key_values, use_cache=True)
        with gqa_attention(model):
            if kv_heads < 4:
                assert model.config._attn_implementation == GQA_SDPA
            out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
            out2 = model(input_ids=nxt, attention_mask=m2, position_ids=pos[:, -1:] + 1,
                         past_key_values=out.past_key_values, use_cache=True)
        assert model.config._attn_implementation == "sdpa"  # restored after the block
    real = mask.bool()
    assert torch.allclose(out.logits[real], ref.logits[real], atol=1e-6, rtol=0)
    assert torch.allclose(out2.logits, ref2.logits, atol=1e-6, rtol=0)


def test_gqa_attention_restores_implementation_on_error():
    model = _model(2)
    with pytest.raises(RuntimeError):
        with gqa_attention(model):
            raise RuntimeError("boom")
    assert model.config._attn_implementation == "sdpa"


def test_preallocated_cache_matches_dynamic_cache_through_growth_and_selection():
    model = _model(2)
    ids, mask = _padded_batch()
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        pre = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
        kv = [(layer.keys.clone(), layer.values.clone()) for layer in pre.past_key_values.layers]
        dyn = DynamicCache(ddp_cache_data=[(k.clone(), v.clone()) for k, v in kv], config=model.config)
        # capacity 12 < the 11 + 5 columns decoded below: forces one geometric growth
        fast = preallocated_cache(model, kv, capacity=12)
        m, p, tok = mask.clone(), pos[:, -1:], pre.logits[:, -1].argmax(-1, keepdim=True)
        for step in range(5):
            m = torch.cat([m, torch.ones(len(m), 1, dtype=torch.long)], 1)
            p = p + 1
            a = model(input_ids=tok, attention_mask=m, position_ids=p, past_key_values=dyn, use_cache=True)
            b = model(input_ids=tok, attention_mask=m, position_ids=p, past_key_values=fast, use_cache=True)
            assert torch.equal(a.logits, b.logits)
            tok = a.logits[:, -1].argmax(-1, keepdim=True)
            if step == 2:  # row 0 leaves; row 2 moves into its slot (the engine's swap-remove)
                idx = torch.tensor([2, 1])
                dyn.batch_select_indices(idx)
                fast.batch_select_indices(idx)
                m, p, tok = m[idx], p[idx], tok[idx]
    assert fast.get_seq_length() == dyn.get_seq_length() == 16
    for lf, ld in zip(fast.layers, dyn.layers):
        assert torch.equal(lf.keys, ld.keys) and torch.equal(lf.values, ld.values)


def test_preallocated_layer_refuses_direct_assignment():
    layer = PreallocatedLayer(torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 3, 4), capacity=8)
    with pytest.raises(AttributeError):
        layer.keys = torch.zeros(1, 2, 3, 4)
