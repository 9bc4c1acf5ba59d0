"""The fast RL step against the plain one: packed vs. padded forwards and updates, the
fused log-prob/entropy vs. verl's functions, the engine's recorded log-probs / entropies /
hidden states vs. a recompute. Real tiny Qwen2 model, real BPE tokenizer, real engine.

Tolerances (float32): forward outputs 1e-5 absolute (different matmul shapes reorder sums);
recorded vs. recomputed log-probs 1e-4 (KV-cached decode vs. one full forward; measured
~1e-6); weights after two PPO epochs: all within 0.05 x lr and 99.9% within 1e-6 + 1e-3 x lr
(AdamW divides by sqrt(v), so round-off in a near-zero gradient, e.g. of a rarely used
token's embedding, can move that weight by a small fraction of lr; measured: 1 of 26k
elements at 0.011 x lr).
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys

import gymnasium as gym
import pytest
import torch
from gymnasium import spaces
from verl.utils import torch_functional as verl_F

from searchgym.agents.model import build_model, build_tokenizer
from searchgym.agents.rollout import RolloutConfig, RolloutEngine
from searchgym.evaluation import teacher_forced_hidden_states
from searchgym.training.objectives import make_objective
from searchgym.training.rl import RLTrainer
from searchgym.training.update import (
    compute_advantages, forward_logprobs, logprobs_and_entropy, pack_layout, packed_forward_logprobs, pad_batch,
    policy_hidden_states, ppo_update,
)

torch.set_num_threads(1)


class LookupEnv(gym.Env):
    """``<search>`` returns a passage, ``<answer>`` ends the episode (reward 1 if right)."""

    metadata: dict = {}

    def __init__(self):
        self.observation_space = spaces.Text(4096)
        self.action_space = spaces.Text(4096)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.q, self.turn = int((options or {}).get("index", 0)), 0
        return f"Question: what is the code of item {self.q}?\n", {"question_id": f"q{self.q}"}

    def step(self, action):
        self.turn += 1
        m = re.search(r"<(search|answer)>(.*?)</\1>", action, re.S)
        if m and m.group(1) == "answer":
            return "", float(m.group(2).strip() == str(7 * self.q)), True, False, {"correct": False}
        obs = f"\n<information>The code of item {self.q} is {7 * self.q}.</information>\n"
        return obs, 0.0, False, self.turn >= 3, {}


def _step_each(envs, actions):
    return [e.step(a) for e, a in zip(envs, actions)]


@pytest.fixture(scope="module")
def lm():
    texts = [f"The code of item {i} is {7 * i}. <search>code of item {i}</search><answer>{7 * i}</answer>"
             for i in range(200)]
    tok = build_tokenizer(texts, 400)
    return build_model("smoke", tok, seed=0), tok  # 4 query heads, 2 KV heads: the GQA path


def _random_batch(vocab: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lens = [2, 37, 5, 64, 18, 64, 9]
    ids = [torch.randint(3, vocab, (n,), generator=g).tolist() for n in lens]
    masks = [torch.randint(0, 2, (n,), generator=g).tolist() for n in lens]
    masks[2] = [0] * lens[2]  # a row without policy tokens
    masks[0] = [0, 1]
    return pad_batch(ids, masks, 0)


def test_fused_logprob_entropy_equals_verl():
    g = torch.Generator().manual_seed(1)
    logits = (3 * torch.randn(57, 301, generator=g)).requires_grad_()
    labels = torch.randint(0, 301, (57,), generator=g)
    lp, ent = logprobs_and_entropy(logits, labels)
    lp_v, ent_v = verl_F.logprobs_from_logits(logits, labels), verl_F.entropy_from_logits(logits)
    torch.testing.assert_close(lp, lp_v, atol=1e-5, rtol=0)
    torch.testing.assert_close(ent, ent_v, atol=1e-5, rtol=0)
    w = torch.randn(57, generator=g)
    (ga,) = torch.autograd.grad((lp * w).sum() + (ent * w).sum(), logits)
    (gb,) = torch.autograd.grad((lp_v * w).sum() + (ent_v * w).sum(), logits)
    torch.testing.assert_close(ga, gb, atol=1e-5, rtol=0)


def _assert_packed_equals_padded(model, b, temperature: float, seed: int) -> None:
    """The packed forward's log-probs, entropies, hidden states and parameter gradients
    equal the padded forward's on ``b`` (1e-5), and are 0 off the policy positions."""
    model.train()
    out_pad = forward_logprobs(model, b.input_ids, b.attention_mask, temperature, with_hidden=True,
                               positions=b.response_mask)
    w = torch.randn(b.response_mask.shape, generator=torch.Generator().manual_seed(seed))
    grads_pad = torch.autograd.grad(((out_pad[0] + out_pad[1]) * w).sum(), list(model.parameters()))
    out_pk = packed_forward_logprobs(model, b.input_ids, b.attention_mask, b.response_mask, temperature,
                                     with_hidden=True)
    grads_pk = torch.autograd.grad(((out_pk[0] + out_pk[1]) * w).sum(), list(model.parameters()))
    assert model.config._attn_implementation == "sdpa"  # restored after the packed forward
    sel = b.response_mask > 0
    for a, p in zip(out_pad[:2], out_pk[:2]):
        torch.testing.assert_close(p, a, atol=1e-5, rtol=0)
        assert bool((p[~sel] == 0).all())
    torch.testing.assert_close(out_pk[2][sel], out_pad[2][sel], atol=1e-5, rtol=0)
    for ga, gb in zip(grads_pad, grads_pk):
        torch.testing.assert_close(gb, ga, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_packed_forward_equals_padded_values_and_gradients(lm, temperature):
    model, tok = lm
    _assert_packed_equals_padded(model, _random_batch(len(tok)), temperature, seed=2)


def _grouped_batch(vocab: int, seed: int = 3):
    """Rows as a rollout makes them: groups of samples of one prompt, continuations of
    different lengths; plus a lone row, a row without policy tokens, two identical rows and
    a prompt shared by rows whose first policy token is at different offsets."""
    g = torch.Generator().manual_seed(seed)
    rand = lambda n: torch.randint(3, vocab, (n,), generator=g).tolist()  # noqa: E731
    ids, masks = [], []
    for prompt_len, conts in ((11, [5, 30, 1, 17]), (23, [9, 9]), (4, [40])):
        prompt = rand(prompt_len)
        for n in conts:
            cont = rand(n)
            ids.append(prompt + cont)
            masks.append([0] * prompt_len + [1] + torch.randint(0, 2, (n - 1,), generator=g).tolist())
    ids.append(list(ids[0]))  # an exact duplicate of row 0
    masks.append(list(masks[0]))
    ids.append(rand(13))  # no policy tokens at all
    masks.append([0] * 13)
    ids.append(ids[1][:11] + rand(3) + ids[1][14:])  # same first 11 tokens, first policy token later
    masks.append([0] * 14 + [1] * (len(ids[-1]) - 14))
    return pad_batch(ids, masks, 0)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_shared_prefix_packing_equals_padded_values_and_gradients(lm, temperature):
    model, tok = lm
    b = _grouped_batch(len(tok))
    layout = pack_layout(b.input_ids, b.attention_mask.sum(1).tolist(), b.response_mask)
    assert len(layout.token_ids) < int(b.attention_mask.sum())  # the prompts are packed once
    assert len(layout.token_ids) == len(pack_layout(b.input_ids, b.attention_mask.sum(1).tolist(), b.response_mask,
                                                    share_prefix=False).token_ids) - (4 * 11 + 23)  # 5 rows share 11, 2 share 23
    _assert_packed_equals_padded(model, b, temperature, seed=4)


def test_packed_forward_refuses_left_padding(lm):
    model, tok = lm
    b = _random_batch(len(tok))
    with pytest.raises(ValueError, match="right-padded"):
        packed_forward_logprobs(model, b.input_ids, b.attention_mask.flip(1), b.response_mask)


# Objectives that select tokens (top-k covariance, entropy quantile) are compared on one
# update: after an optimizer step, AdamW's g / sqrt(v) turns round-off in near-zero
# gradients into weight differences of ~lr in a few elements, which can flip a near-tie
# in a discrete selection (measured: kl_cov's top-1 of ~50 tokens). The continuous losses
# are compared over 2 epochs x 2 mini-batches.
@pytest.mark.parametrize("objective,kl_coef,epochs,minibatches", [
    ("grpo", 0.0, 2, 2), ("grpo", 0.01, 2, 2), ("entropy_bonus", 0.0, 2, 2), ("clip_higher", 0.0, 2, 2),
    ("forking_tokens", 0.0, 1, 1), ("kl_cov", 0.01, 1, 1), ("clip_cov", 0.0, 1, 1)])
def test_ppo_update_packed_equals_padded(lm, objective, kl_coef, epochs, minibatches):
    model, tok = lm
    b = _random_batch(len(tok), seed=3)
    with torch.no_grad():
        b.old_log_probs = forward_logprobs(model, b.input_ids, b.attention_mask, positions=b.response_mask)[0]
        b.ref_log_probs = b.old_log_probs - 0.01 * b.response_mask
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0])
    b.advantages = compute_advantages("grpo", rewards, b.response_mask, [0, 0, 0, 1, 1, 1, 1])
    results, weights = [], []
    lr = 1e-3
    for pack in (False, True):
        m = copy.deepcopy(model)
        opt = torch.optim.AdamW(m.parameters(), lr=lr)
        torch.manual_seed(0)  # clip_cov draws its random subset from the global generator
        results.append(ppo_update(m, opt, make_objective(objective), b, ppo_epochs=epochs,
                                  num_minibatches=minibatches, kl_coef=kl_coef,
                                  generator=torch.Generator().manual_seed(0), pack=pack))
        weights.append([p.detach().clone() for p in m.parameters()])
    assert set(results[0]) == set(results[1])
    for k in results[0]:
        assert results[1][k] == pytest.approx(results[0][k], abs=1e-5, rel=1e-4), k
    assert results[0]["first_minibatch_old_logprob_absdiff"] < 1e-5  # same weights, old = current
    diffs = torch.cat([(wb - wa).abs().flatten() for wa, wb in zip(*weights)])
    assert float(diffs.max()) <= 0.05 * lr
    assert float((diffs > 1e-6 + 1e-3 * lr).float().mean()) < 1e-3
    assert max(float((wa - w0).abs().max()) for wa, w0 in zip(weights[0], model.parameters())) > lr / 2


def test_engine_recorded_logprobs_entropies_hidden_equal_recompute(lm):
    model, tok = lm
    model.eval()
    eng = RolloutEngine(model, tok, RolloutConfig(temperature=0.7, max_new_tokens=16, max_response_tokens=120,
                                                  seed=5, return_hidden_states=True), step_batch=_step_each)
    with torch.no_grad():
        trajs = eng.rollout([LookupEnv() for _ in range(8)], [{"index": i} for i in range(8)])
    assert sum(sum(t.loss_mask) for t in trajs) > 50 and any(0 in t.loss_mask for t in trajs)
    ids = [list(t.prompt_ids) + list(t.response_ids) for t in trajs]
    b = pad_batch(ids, [[0] * len(t.prompt_ids) + list(t.loss_mask) for t in trajs], tok.pad_token_id)
    lp, ent, hidden = RLTrainer.rollout_tensors(trajs, b, need_hidden=True)
    with torch.no_grad():
        for fwd in ("padded", "packed"):
            if fwd == "padded":
                r_lp, r_ent, r_h = forward_logprobs(model, b.input_ids, b.attention_mask, 0.7, with_hidden=True,
                                                    positions=b.response_mask)
            else:
                r_lp, r_ent, r_h = packed_forward_logprobs(model, b.input_ids, b.attention_mask, b.response_mask,
                                                           0.7, with_hidden=True)
            torch.testing.assert_close(lp, r_lp, atol=1e-4, rtol=0)
            torch.testing.assert_close(ent, r_ent, atol=1e-4, rtol=0)
            for h, rh in zip(hidden, policy_hidden_states(r_h, b.response_mask)):
                torch.testing.assert_close(h, rh, atol=1e-4, rtol=0)
    # the evaluation's teacher-forced pass (packed, no LM head, the untrained-model control's
    # input) gives the same states as the engine recorded
    for h, th in zip(hidden, teacher_forced_hidden_states(model, trajs, tok.pad_token_id, batch_size=3)):
        torch.testing.assert_close(h, torch.from_numpy(th), atol=1e-4, rtol=0)
    with torch.no_grad():
        assert packed_forward_logprobs(model, b.input_ids, b.attention_mask, b.response_mask, 0.7,
                                       with_hidden=True, with_logprobs=False)[:2] == (None, None)
    # a trajectory without recorded hidden states means: recompute (None), never a partial answer
    trajs[3].hidden_states = None
    assert RLTrainer.rollout_tensors(trajs, b, need_hidden=True) is None
    assert RLTrainer.rollout_tensors(trajs, b, need_hidden=False) is not None


_MALLOC_PROBE = r"""
import hashlib, sys, torch
from searchgym.training.common import set_threads, tune_malloc
set_threads(1)
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Linear(256, 1024), torch.nn.SiLU(), torch.nn.Linear(1024, 256))
x = torch.randn(4096, 256)  # 4 MiB activations: above glibc's default mmap threshold
for _ in range(3):
    loss = net(x).square().mean()
    loss.backward()
h = hashlib.sha256(b"".join(p.grad.numpy().tobytes() for p in net.parameters()))
print(tune_malloc(), h.hexdigest())
"""


def test_tune_malloc_changes_no_number():
    """The raised glibc thresholds (``tune_malloc``, applied by ``set_threads``) are in effect
    on this glibc machine, ``SEARCHGYM_MALLOC=default`` opts out, and gradients are
    bit-identical either way (the allocator only decides where memory comes from)."""

    def run(env_value):
        env = {k: v for k, v in os.environ.items() if k != "SEARCHGYM_MALLOC"}
        if env_value is not None:
            env["SEARCHGYM_MALLOC"] = env_value
        out = subprocess.run([sys.executable, "-c", _MALLOC_PROBE], env=env, capture_output=True, text=True,
                             timeout=120, check=True).stdout.split()
        return out[0] == "True", out[1]

    tuned, h_tuned = run(None)
    plain, h_plain = run("default")
    assert tuned and not plain
    assert h_tuned == h_plain
