"""Rollout engine: masks, token-in/token-out, log-probs, batching invariance, budgets.

The engine only needs gymnasium's reset/step and a ``step_batch`` function, so these tests
drive it against a small env that follows SearchEnv's tag protocol (a real gymnasium env,
not a mock), with a real tiny Qwen2 model and a real BPE tokenizer.
"""

from __future__ import annotations

import re

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces

from searchgym.agents.episode import encode_prompt, encode_text, tokenize_episode
from searchgym.agents.model import TAGS, build_model, build_tokenizer, count_parameters
from searchgym.agents.rollout import RolloutConfig, RolloutEngine

torch.set_num_threads(1)


class CodeBookEnv(gym.Env):
    """Question: the code of item q. ``<search>`` returns an information block with it,
    ``<answer>`` ends the episode, anything else gets a corrective observation."""

    metadata: dict = {}

    def __init__(self, max_turns: int = 3):
        self.max_turns = max_turns
        self.observation_space = spaces.Text(4096)
        self.action_space = spaces.Text(4096)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.q, self.turn, self.errors = int((options or {}).get("index", 0)), 0, 0
        prompt = (f"Answer with <search> query </search> and <answer> a </answer>. "
                  f"Question: what is the code of item {self.q}?\n")
        return prompt, {"question_id": f"q{self.q}", "golden_answers": [str(self.q * 7)]}

    def step(self, action):
        self.turn += 1
        m = re.search(r"<(search|answer)>(.*?)</\1>", action, re.S)
        info = {"turn": self.turn}
        if m and m.group(1) == "answer":
            ok = m.group(2).strip() == str(self.q * 7)
            info.update(action="answer", answer=m.group(2).strip(), correct=ok,
                        signature="search" * (self.turn - 1) + ("|correct" if ok else "|wrong"),
                        format_errors=self.errors)
            return "", float(ok), True, False, info
        if m:
            info.update(action="search", query=m.group(2).strip(), doc_ids=[f"d{self.q}"], format_error=False)
            obs = (f"\n\n<information>Doc 1(Title: item {self.q}) The code of item {self.q} "
                   f"is {self.q * 7}.</information>\n\n")
        else:
            self.errors += 1
            info.update(action="invalid", format_error=True)
            obs = "\nMy previous action is invalid. Use <search> or <answer>.\n"
        trunc = self.turn >= self.max_turns
        if trunc:
            info.update(correct=False, signature="noanswer", format_errors=self.errors)
        return obs, 0.0, False, trunc, info


def step_each(envs, actions):
    return [e.step(a) for e, a in zip(envs, actions)]


def _texts():
    out = []
    for i in range(200):
        out.append(f"The code of item {i} is {i * 7}. <think>I need the code of item {i}.</think>"
                   f"<search>code of item {i}</search><answer>{i * 7}</answer>")
    return out


@pytest.fixture(scope="module")
def lm():
    tok = build_tokenizer(_texts(), 400)
    model = build_model("smoke", tok, seed=0)
    model.eval()
    return model, tok


def _engine(lm, **kw):
    model, tok = lm
    return RolloutEngine(model, tok, RolloutConfig(**kw), step_batch=step_each)


def test_tags_are_single_tokens_and_smoke_is_small(lm):
    model, tok = lm
    for t in TAGS:
        assert len(tok.encode(t, add_special_tokens=False)) == 1, t
    s = "<think>x</think><search>code of item 3</search>"
    assert tok.decode(tok.encode(s, add_special_tokens=False), skip_special_tokens=True) == s
    assert count_parameters(model) < 1_000_000


def test_final_hidden_state_is_after_the_final_norm(lm):
    model, tok = lm
    seen = {}
    h = model.model.norm.register_forward_hook(lambda m, i, o: seen.setdefault("norm", o))
    try:
        with torch.no_grad():
            out = model(torch.tensor([tok.encode("the code of item 5")]), output_hidden_states=True)
    finally:
        h.remove()
    torch.testing.assert_close(out.hidden_states[-1], seen["norm"])
    torch.testing.assert_close(model.lm_head(out.hidden_states[-1]), out.logits)


def test_mask_is_one_exactly_on_policy_tokens(lm):
    model, tok = lm
    eng = _engine(lm, max_new_tokens=12, max_response_tokens=200, seed=3)
    trajs = eng.rollout([CodeBookEnv() for _ in range(6)], [{"index": i} for i in range(6)])
    for tr in trajs:
        n = len(tr.response_ids)
        assert len(tr.loss_mask) == len(tr.logprobs) == len(tr.entropies) == len(tr.segments) == n
        assert tr.prompt_ids == encode_prompt(tok, tr.prompt)
        # Rebuild the response from the transcript's turns: each action's sampled ids
        # (mask 1), then the observation tokenised once (mask 0).
        pos = 0
        for turn in tr.turns:
            k = turn["num_policy_tokens"]
            assert all(m == 1 for m in tr.loss_mask[pos:pos + k])
            assert tok.decode(tr.response_ids[pos:pos + k], skip_special_tokens=True) == turn["action"]
            pos += k
            if turn["observation"]:
                obs_ids = encode_text(tok, turn["observation"])
                assert tr.response_ids[pos:pos + len(obs_ids)] == obs_ids
                assert all(m == 0 for m in tr.loss_mask[pos:pos + len(obs_ids)])
                assert all(x == 0.0 for x in tr.logprobs[pos:pos + len(obs_ids)])
                pos += len(obs_ids)
        assert pos == n
        assert tr.transcript.startswith(tr.prompt)
        assert tr.format_errors == sum(t["kind"] == "invalid" for t in tr.turns)


def test_logprobs_match_a_forward_pass_at_temperature_one(lm):
    model, tok = lm
    eng = _engine(lm, max_new_tokens=10, max_response_tokens=160, seed=7, return_hidden_states=True)
    trajs = eng.rollout([CodeBookEnv() for _ in range(5)], [{"index": i} for i in range(5)])
    for tr in trajs:
        ids = torch.tensor([tr.prompt_ids + tr.response_ids])
        with torch.no_grad():
            out = model(ids, output_hidden_states=True)
        P = len(tr.prompt_ids)
        logits = out.logits[0, P - 1:-1]
        lp = torch.log_softmax(logits.float(), -1).gather(1, ids[0, P:, None]).squeeze(1)
        mask = torch.tensor(tr.loss_mask, dtype=torch.bool)
        rec = torch.tensor(tr.logprobs)
        torch.testing.assert_close(rec[mask], lp[mask], atol=2e-4, rtol=1e-4)
        ent = torch.distributions.Categorical(logits=logits.float()).entropy()
        torch.testing.assert_close(torch.tensor(tr.entropies)[mask], ent[mask], atol=2e-4, rtol=1e-4)
        hid = out.hidden_states[-1][0, P - 1:-1][mask].numpy()
        assert tr.hidden_states.shape == (tr.num_policy_tokens, model.config.hidden_size)
        np.testing.assert_allclose(tr.hidden_states, hid, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("greedy", [True, False])
def test_batched_equals_one_by_one(lm, greedy):
    eng = _engine(lm, max_new_tokens=10, max_response_tokens=120, seed=11, greedy=greedy)
    batched = eng.rollout([CodeBookEnv() for _ in range(6)], [{"index": i} for i in range(6)])
    for i, tr in enumerate(batched):
        alone = eng.rollout([CodeBookEnv()], [{"index": i}], episode_indices=[i])[0]
        assert alone.transcript == tr.transcript
        assert alone.response_ids == tr.response_ids
        np.testing.assert_allclose(alone.logprobs, tr.logprobs, atol=1e-4)


def test_garbage_output_terminates_within_budget(lm):
    # An untrained model at high temperature writes no tags: every turn is a format error
    # until the env truncates or the token budget runs out, never an exception.
    eng = _engine(lm, max_new_tokens=30, max_response_tokens=100, temperature=2.0, seed=0)
    trajs = eng.rollout([CodeBookEnv(max_turns=50) for _ in range(4)], [{"index": i} for i in range(4)])
    for tr in trajs:
        assert len(tr.response_ids) <= 100
        assert tr.budget_exhausted or tr.truncated or tr.terminated
        assert tr.format_errors >= 1
        assert tr.reward == 0.0


def test_sampling_controls_and_validation(lm):
    with pytest.raises(ValueError, match="temperature"):
        RolloutConfig(temperature=0.0)
    with pytest.raises(ValueError, match="top_p"):
        RolloutConfig(top_p=0.0)
    # top_k=1 is greedy whatever the temperature.
    a = _engine(lm, max_new_tokens=8, max_response_tokens=60, top_k=1, temperature=1.5, seed=1)
    b = _engine(lm, max_new_tokens=8, max_response_tokens=60, greedy=True)
    ta = a.rollout([CodeBookEnv() for _ in range(3)], [{"index": i} for i in range(3)])
    tb = b.rollout([CodeBookEnv() for _ in range(3)], [{"index": i} for i in range(3)])
    assert [t.response_ids for t in ta] == [t.response_ids for t in tb]
    env = CodeBookEnv()
    with pytest.raises(ValueError, match="own env"):
        a.rollout([env, env])


def test_grouped_samples(lm):
    eng = _engine(lm, max_new_tokens=6, max_response_tokens=40, seed=2, n=3)
    trajs = eng.rollout_questions([CodeBookEnv() for _ in range(4)], [5, 9])
    assert [t.group_id for t in trajs] == [5, 5, 5, 9, 9, 9]
    assert [t.sample_index for t in trajs] == [0, 1, 2, 0, 1, 2]
    assert len({tuple(t.response_ids) for t in trajs[:3]}) > 1  # samples differ


def test_tokenize_episode_layout_matches_engine(lm):
    model, tok = lm
    ep = tokenize_episode(tok, "Q?\n", [("<think>a</think><search>code of item 2</search>",
                                         "\n\n<information>Doc 1 x</information>\n\n"),
                                        ("<answer>14</answer>", None)])
    a = encode_text(tok, "<think>a</think><search>code of item 2</search>")
    o = encode_text(tok, "\n\n<information>Doc 1 x</information>\n\n")
    assert ep.response_ids == a + o + encode_text(tok, "<answer>14</answer>")
    assert ep.loss_mask == [1] * len(a) + [0] * len(o) + [1] * (len(ep.response_ids) - len(a) - len(o))
    assert ep.segments[1] == "think" and "query" in ep.segments and "answer" in ep.segments
