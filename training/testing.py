"""Test helpers of the training package: an in-process stand-in for verl's generation server.

:class:`LocalHFServer` lets the verl agent loop (:mod:`.verl_loop`) run on CPU against a
HF model, without vLLM or Ray (tests, debugging a loop).
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Any

import torch
from verl.workers.rollout.replica import TokenOutput

__all__ = ["LocalHFServer"]


@dataclass
class _Sampling:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_tokens: int = 64
    stop: tuple[str, ...] = ()


class LocalHFServer:
    """In-process stand-in for verl's ``LLMServerClient`` backed by a HF causal LM.

    Implements the contract the agent loops use: ``await generate(request_id, *,
    prompt_ids, sampling_params) -> TokenOutput(token_ids, log_probs, stop_reason)``, with
    verl/vLLM-style sampling params (``temperature`` (0 = greedy), ``top_p``, ``top_k``
    (-1 = off), ``max_tokens``, ``stop``, ``logprobs``). Sampling runs in a thread so the
    event loop stays free; calls are serialised (one model). For CPU tests and debugging a
    loop without GPUs; log-probs are of the sampled token under the temperature-scaled
    distribution.
    """

    def __init__(self, model, tokenizer, seed: int = 0, max_new_tokens: int | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.seed = seed
        self.max_new_tokens = max_new_tokens  # optional per-call cap (like a server-side limit)
        self.outputs: list[list[int]] = []  # every call's sampled ids, in call order
        self._lock = threading.Lock()
        self._calls = 0

    def _generate_sync(self, prompt_ids: list[int], sp: _Sampling):
        with self._lock:
            self._calls += 1
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self._calls)
            ids = torch.tensor([prompt_ids], dtype=torch.long)
            out_ids: list[int] = []
            out_lps: list[float] = []
            past = None
            eos = self.tokenizer.eos_token_id
            stop_reason = "length"
            with torch.no_grad():
                for _ in range(sp.max_tokens):
                    res = self.model(input_ids=ids, past_key_values=past, use_cache=True)
                    past = res.past_key_values
                    logits = res.logits[0, -1].float()
                    if sp.temperature > 0:
                        logits = logits / sp.temperature
                    logp = torch.log_softmax(logits, dim=-1)
                    if sp.temperature <= 0:
                        tok = int(torch.argmax(logp))
                    else:
                        probs = logp.exp()
                        if sp.top_k and sp.top_k > 0:
                            kth = torch.topk(probs, min(sp.top_k, probs.numel())).values[-1]
                            probs = torch.where(probs >= kth, probs, torch.zeros_like(probs))
                        if sp.top_p < 1.0:
                            sorted_p, order = torch.sort(probs, descending=True)
                            cut = torch.cumsum(sorted_p, 0) - sorted_p > sp.top_p
                            sorted_p[cut] = 0
                            probs = torch.zeros_like(probs).scatter(0, order, sorted_p)
                        tok = int(torch.multinomial(probs / probs.sum(), 1, generator=gen))
                    out_ids.append(tok)
                    out_lps.append(float(logp[tok]))
                    ids = torch.tensor([[tok]], dtype=torch.long)
                    if eos is not None and tok == eos:
                        stop_reason = "completed"
                        break
                    if sp.stop:
                        tail = self.tokenizer.decode(out_ids[-16:], skip_special_tokens=False)
                        if any(s in tail for s in sp.stop):
                            stop_reason = "completed"
                            break
            return out_ids, out_lps, stop_reason

    async def generate(self, request_id, *, prompt_ids: list[int], sampling_params: dict[str, Any], **kwargs):
        sp = _Sampling(
            temperature=float(sampling_params.get("temperature", 1.0)),
            top_p=float(sampling_params.get("top_p", 1.0)),
            top_k=max(0, int(sampling_params.get("top_k", -1) or 0)),
            max_tokens=min(int(sampling_params.get("max_tokens", 64)), self.max_new_tokens or 1 << 30),
            stop=tuple(sampling_params.get("stop") or ()),
        )
        ids, lps, reason = await asyncio.to_thread(self._generate_sync, list(prompt_ids), sp)
        self.outputs.append(list(ids))
        return TokenOutput(
            token_ids=ids, log_probs=lps if sampling_params.get("logprobs", True) else None, stop_reason=reason
        )
