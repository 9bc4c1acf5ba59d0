"""Mechanism diagnostics (training/diagnostics.py) on the real tiny Qwen2 model."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from searchgym.training.diagnostics import (  # noqa: E402
    EQUIVALENCE_RULE, GRAD_COS_EQUIVALENT, SHARE_EQUIVALENT, gradient_diagnostic_due, policy_gradient_cosine,
    summarize_mechanism, zero_entropy_shares,
)
from searchgym.training.objectives import make_objective, pearson_or_none  # noqa: E402
from searchgym.training.update import compute_advantages, forward_logprobs, pad_batch  # noqa: E402

VOCAB = 48
# A Markov chain that is deterministic except right after token 5, where it forks three
# ways: a trained model is (near-)certain on ~8 of every 9 tokens and uncertain on the
# fork, the shape of a peaked LM policy (most tokens ~0 entropy, a few forking tokens).
BRANCHES = {10: [11, 12, 13, 14, 15, 16, 17], 20: [21, 22, 23, 24, 25, 26, 27], 30: [31, 32, 33, 34, 35, 36, 37]}


def tiny_model(seed: int = 0):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    return Qwen2ForCausalLM(cfg)


def forking_chain(seed: int, n: int, length: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    seqs = []
    for _ in range(n):
        s = [5]
        while len(s) < length:
            x = (10, 20, 30)[int(torch.randint(0, 3, (1,), generator=g))]
            s += [x, *BRANCHES[x], 5]
        seqs.append(s[:length])
    return seqs


def chain_batch(model, temperature: float):
    """8 chain episodes (3 prompt tokens, 27 policy tokens), on-policy old log-probs at
    ``temperature`` and GRPO advantages of fixed outcome rewards in 2 groups."""
    b = pad_batch(forking_chain(1, 8, 30), [[0] * 3 + [1] * 27] * 8, pad_id=0)
    with torch.no_grad():
        b.old_log_probs, ent, _ = forward_logprobs(model, b.input_ids, b.attention_mask, temperature)
    b.advantages = compute_advantages("grpo", torch.tensor([1.0, 0, 1, 0, 1, 1, 0, 0]), b.response_mask,
                                      ["a"] * 4 + ["b"] * 4)
    return b, ent


@pytest.fixture(scope="module")
def chain_model():
    """The tiny model after 60 NLL steps on the chain (~2 s): peaked off the fork."""
    model = tiny_model(0)
    tb = pad_batch(forking_chain(0, 24, 28), [[0] * 2 + [1] * 26] * 24, pad_id=0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    for _ in range(60):
        lp, _, _ = forward_logprobs(model, tb.input_ids, tb.attention_mask, with_entropy=False)
        loss = -(lp * tb.response_mask).sum() / tb.response_mask.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    return model


def _mean_entropy(ent, b):
    return float((ent * b.response_mask).sum() / b.response_mask.sum())


def test_forking_gradient_cosine_is_low_when_entropy_is_spread_and_one_when_peaked(chain_model):
    forking = make_objective("forking_tokens")
    # spread: the untrained model at T = 1 (entropy ~ log 48 on every token)
    untrained = tiny_model(0)
    b, ent = chain_batch(untrained, 1.0)
    assert _mean_entropy(ent, b) > 3.5
    spread = policy_gradient_cosine(untrained, forking, b, b.advantages, temperature=1.0, num_minibatches=2)
    assert spread["mech/grad_cos_grpo"] < 0.99, spread
    # peaked: the chain-trained model sampled at T = 0.7 (the small preset's temperature)
    b, ent = chain_batch(chain_model, 0.7)
    shares = zero_entropy_shares(ent, b.response_mask)
    assert _mean_entropy(ent, b) < 0.2 and shares["mech/entropy_below_1e-3_frac"] > 0.3, shares
    state = {k: v.clone() for k, v in chain_model.state_dict().items()}
    rng = torch.get_rng_state()
    chain_model.eval()
    peaked = policy_gradient_cosine(chain_model, forking, b, b.advantages, temperature=0.7, num_minibatches=2)
    assert peaked["mech/grad_cos_grpo"] >= GRAD_COS_EQUIVALENT, peaked
    assert peaked["mech/grad_cos_grpo_min"] <= peaked["mech/grad_cos_grpo"]
    assert peaked["mech/grad_diag_minibatches"] == 2
    # model state untouched: weights bitwise, no .grad written, mode and global RNG restored
    assert all(torch.equal(v, chain_model.state_dict()[k]) for k, v in state.items())
    assert all(p.grad is None for p in chain_model.parameters())
    assert not chain_model.training and torch.equal(rng, torch.get_rng_state())
    # the cheap per-step proxy agrees: the mask drops ~0 of GRPO's gradient mass when
    # peaked and a large share when spread
    for model, temp, lo, hi in ((chain_model, 0.7, 0.0, 0.01), (untrained, 1.0, 0.5, 1.0)):
        bb, _ = chain_batch(model, temp)
        lp, e, _ = forward_logprobs(model, bb.input_ids, bb.attention_mask, temp)
        m = forking.compute_loss(bb.old_log_probs, lp, bb.advantages, bb.response_mask, e).metrics
        assert lo <= m["mech/masked_grad_mass_frac"] <= hi, (temp, m)


def test_cosine_sees_objectives_that_act_and_is_one_for_grpo(chain_model):
    model = chain_model
    b, _ = chain_batch(model, 1.0)
    same = policy_gradient_cosine(model, make_objective("grpo"), b, b.advantages)
    assert abs(same["mech/grad_cos_grpo"] - 1.0) < 1e-9 and same["mech/grad_rel_diff_grpo"] < 1e-6
    # an entropy bonus of 0.05 barely turns the gradient; a 20x larger one does,
    # and grad_rel_diff is the entropy term's gradient relative to the policy gradient's
    small = policy_gradient_cosine(model, make_objective("entropy_bonus", {"entropy_coeff": 0.05}), b, b.advantages)
    big = policy_gradient_cosine(model, make_objective("entropy_bonus", {"entropy_coeff": 1.0}), b, b.advantages)
    assert big["mech/grad_cos_grpo"] < 0.99 < small["mech/grad_cos_grpo"]
    assert big["mech/grad_rel_diff_grpo"] == pytest.approx(20 * small["mech/grad_rel_diff_grpo"], rel=1e-3)
    # the reference takes its own advantages (er_shaped's are rewritten): flipping half
    # of them turns GRPO's gradient away from the objective's
    flipped = b.advantages.clone()
    flipped[:4] *= -1
    diff = policy_gradient_cosine(model, make_objective("grpo"), b, flipped)
    assert diff["mech/grad_cos_grpo"] < 0.99
    # mini-batches without reward spread have no GRPO gradient: skipped, not measured
    none = policy_gradient_cosine(model, make_objective("grpo"), b, torch.zeros_like(b.advantages))
    assert none["mech/grad_diag_minibatches"] == 0 and "mech/grad_cos_grpo" not in none
    one = policy_gradient_cosine(model, make_objective("grpo"), b, b.advantages, num_minibatches=4, max_minibatches=1)
    assert one["mech/grad_diag_minibatches"] == 1
    with pytest.raises(ValueError, match="reference_advantages"):
        policy_gradient_cosine(model, make_objective("grpo"), b, flipped[:, :3])


def _known_ratio_batch():
    # token:       0     1     2     3     4     5     6     7
    ratios = [0.7, 0.9, 1.1, 1.25, 1.3, 3.5, 0.7, 1.25]
    adv = [-1.0, -1.0, 1.0, 1.0, 1.0, -1.0, 1.0, -1.0]
    old = torch.zeros(1, 9)
    logp = torch.tensor([[*np.log(ratios).tolist(), 0.0]], dtype=torch.float32, requires_grad=True)
    a = torch.tensor([[*adv, 5.0]])
    mask = torch.tensor([[1.0] * 8 + [0.0]])  # the 9th token is not a policy token
    return old, logp, a, mask


@pytest.mark.parametrize("name, low, high, dual, differs", [
    # GRPO eps 0.2 / 0.2, dual clip 3: low at token 0, high at 3 and 4, dual at 5
    ("grpo", 1, 2, 1, 0),
    # clip-higher eps_high 0.28: token 3 (r = 1.25) is no longer clipped
    ("clip_higher", 1, 1, 1, 1),
    # Clip-Cov clips like GRPO but has no dual clip (token 5)
    ("clip_cov", 1, 2, 0, 1),
    # KL-Cov does not clip: it differs from GRPO wherever GRPO's clip binds
    ("kl_cov", 0, 0, 0, 4),
])
def test_clip_fractions_low_high_on_known_ratios(name, low, high, dual, differs):
    old, logp, a, mask = _known_ratio_batch()
    obj = make_objective(name, {"clip_cov_ratio": 1e-6, "clip_cov_lb": 1e6, "clip_cov_ub": 2e6}
                         if name == "clip_cov" else None)  # no covariance selection here
    out = obj.compute_loss(old, logp, a, mask, torch.ones_like(logp))
    m = out.metrics
    assert m["mech/clip_frac_low"] == pytest.approx(low / 8)
    assert m["mech/clip_frac_high"] == pytest.approx(high / 8)
    assert m["mech/clip_frac_dual"] == pytest.approx(dual / 8)
    assert m["mech/clip_differs_from_grpo_frac"] == pytest.approx(differs / 8)
    if name in ("grpo", "clip_higher"):  # verl's vanilla counts: clipfrac = low + high, lower = dual
        assert m["pg_clipfrac"] == pytest.approx((low + high) / 8)
        assert m["pg_clipfrac_lower"] == pytest.approx(dual / 8)
    if name == "clip_cov":  # verl's clip_cov "pg_clipfrac" is its selected share, not a clip fraction
        assert m["pg_clipfrac"] == 0.0 == m["mech/cov_selected_frac"]
    # "binds" means the token's gradient is cut: exactly the clipped tokens get zero gradient
    out.loss.backward()
    g = logp.grad[0, :8]
    clipped = {"grpo": {0, 3, 4, 5}, "clip_higher": {0, 4, 5}, "clip_cov": {0, 3, 4}, "kl_cov": set()}[name]
    assert {i for i in range(8) if g[i] == 0} == clipped


def test_zero_entropy_shares_on_known_entropies():
    ent = torch.tensor([[0.0, 5e-7, 5e-4, 0.5, 2e-3], [9e-4, 0.0, 1.0, 3.0, 0.0]])
    mask = torch.tensor([[1.0, 1, 1, 1, 1], [1, 1, 1, 0, 0]])  # 8 policy tokens
    s = zero_entropy_shares(ent, mask)
    assert s == {"mech/entropy_below_1e-6_frac": 3 / 8, "mech/entropy_below_1e-3_frac": 5 / 8}
    assert zero_entropy_shares(ent, torch.zeros_like(mask)) == {}
    assert zero_entropy_shares(None, mask) == {}
    assert zero_entropy_shares(ent, mask, thresholds=(0.75,)) == {"mech/entropy_below_0.75_frac": 7 / 8}


def test_er_shaped_logs_bonus_share_and_length_correlation():
    g = torch.Generator().manual_seed(0)
    lengths = [6, 10, 14, 18, 22, 26, 30, 34]
    t = max(lengths) + 2
    mask = torch.zeros(8, t)
    for i, n in enumerate(lengths):
        mask[i, 2:2 + n] = 1
    adv = compute_advantages("grpo", torch.tensor([1.0, 0, 1, 0, 0, 1, 0, 1]), mask, ["a"] * 4 + ["b"] * 4)
    # Gaussian rows: ER grows with the number of rows, so the aux term tracks length
    hidden = [torch.randn(n, 32, generator=g) for n in lengths]
    obj = make_objective("er_shaped", {"diff_stride": 2})
    shaped, m = obj.shape_advantages(adv, mask, hidden)
    assert m["mech/er_aux_len_corr"] > 0.5, m
    assert -1 <= m["mech/er_bonus_len_corr"] <= 1
    valid = mask > 0
    bonus = (shaped - adv)[valid]
    assert m["mech/er_bonus_token_frac"] == pytest.approx(float((bonus > 0).float().mean()))
    assert m["mech/er_bonus_rel"] == pytest.approx(float(bonus.sum() / adv.abs()[valid].sum()), rel=1e-6)
    assert 0 < m["mech/er_bonus_rel"] <= 0.5  # the bonus is clipped to |A| / kappa, kappa = 2
    assert pearson_or_none([1, 2, 3], [2, 2, 2]) is None and pearson_or_none([1, 2], [1, 2]) is None
    assert pearson_or_none([1, 2, 3, 4], [2, 4, 6, 8]) == pytest.approx(1.0)


def test_gradient_diagnostic_schedule():
    due = lambda total, every: [s for s in range(1, total + 1) if gradient_diagnostic_due(s, total, every)]  # noqa: E731
    assert due(20, None) == [1, 5, 10, 15, 20]
    assert due(30, None) == [1, 7, 14, 21, 28, 30]
    assert due(3, None) == [1, 2, 3]
    assert due(20, 0) == []
    assert due(7, 3) == [1, 3, 6]


def _rec(step, **kw):
    return {"step": step, "entropy_mean": 0.1, **kw}


def test_summarize_mechanism_rule_on_synthetic_records():
    # gradient cosine decides when measured: median >= 0.999 -> equivalent
    recs = [{"step": 0, "eval_accuracy": 0.5}]  # an evaluation record: ignored
    recs += [_rec(s, **{"forking_selected_frac": 0.2, "mech/masked_grad_mass_frac": 0.3}) for s in range(1, 9)]
    for s, c in ((1, 0.9990), (4, 0.99995), (8, 0.9)):
        recs[s]["mech/grad_cos_grpo"] = c
    out = summarize_mechanism(recs, "forking_tokens")
    assert out["steps"] == 8 and out["grad_cos_steps"] == 3 and out["grad_cos_grpo_median"] == 0.9990
    assert out["acts_on_nothing"] is True and out["verdict"] == "equivalent to GRPO in this regime"
    assert out["decided_by"] == "grad_cos" and out["mechanism_share_median"] == pytest.approx(0.3)
    assert "gradient mass" in out["mechanism_share_what"]
    assert out["rule"] == EQUIVALENCE_RULE and str(GRAD_COS_EQUIVALENT) in out["rule"]
    recs[4]["mech/grad_cos_grpo"] = 0.99
    out = summarize_mechanism(recs, "forking_tokens")
    assert out["acts_on_nothing"] is False and out["verdict"] == "acts" and out["grad_cos_grpo_median"] == 0.99
    # no cosine: the mechanism share decides (< 0.5 %)
    ch = [_rec(s, **{"mech/clip_differs_from_grpo_frac": v, "mech/clip_frac_high": v / 2})
          for s, v in enumerate((0.002, 0.004, 0.003, float("nan")), start=1)]
    out = summarize_mechanism(ch, "clip_higher")
    assert out["decided_by"] == "share" and out["acts_on_nothing"] is True
    assert out["mechanism_share_median"] == pytest.approx(0.003) and out["clip_frac_high_median"] == pytest.approx(0.0015)
    ch = [_rec(s, **{"mech/clip_differs_from_grpo_frac": 0.02}) for s in (1, 2)]
    assert summarize_mechanism(ch, "clip_higher")["acts_on_nothing"] is False
    # KL-Cov's share is its selected tokens plus where its missing clip matters
    kc = [_rec(1, cov_selected_frac=0.003, **{"mech/clip_differs_from_grpo_frac": 0.003})]
    out = summarize_mechanism(kc, "kl_cov")
    assert out["mechanism_share_median"] == pytest.approx(0.006) and out["acts_on_nothing"] is False
    assert summarize_mechanism([_rec(1, cov_selected_frac=SHARE_EQUIVALENT / 2)], "clip_cov")["acts_on_nothing"]
    # entropy_bonus has no share: no cosine -> inconclusive; GRPO is the reference
    out = summarize_mechanism([_rec(1, entropy_loss=0.1)], "entropy_bonus")
    assert out["acts_on_nothing"] is None and out["verdict"] == "inconclusive"
    assert summarize_mechanism([_rec(1)], "grpo")["verdict"] == "reference"
    out = summarize_mechanism([], "er_shaped")
    assert out["steps"] == 0 and out["verdict"] == "inconclusive"
    json.dumps(summarize_mechanism(recs, "forking_tokens"))  # serialisable for the report


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def smoke_sft(smoke_sft_start):
    """conftest's session-wide smoke warm start (groups get reward spread)."""
    return smoke_sft_start[1]


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["clip_cov", "er_shaped"])
def test_diagnostics_do_not_change_training(smoke_sft, tmp_path, objective):
    """Two RL steps with the gradient diagnostic at every step give bitwise the weights and
    the training metrics of two steps without it (clip_cov draws from the global RNG in
    its loss; er_shaped's GRPO gradient needs the unshaped advantages rebuilt)."""
    from searchgym.training.config import rl_preset
    from searchgym.training.rl import RLTrainer

    runs = {}
    for every in (1, 0):
        cfg = rl_preset("smoke", init=str(smoke_sft), out=str(tmp_path / f"d{every}"), objective=objective, steps=2,
                        batch_questions=2, n_samples=6, max_new_tokens=24, max_turns=2, threads=1,
                        tensorboard=False, env_kwargs={"format_penalty": 0.5}, diag_every=every)
        trainer = RLTrainer(cfg, progress=False)
        torch.manual_seed(0)  # as RLTrainer.run does: clip_cov's token draw uses the global RNG
        recs = [trainer.step_once(), trainer.step_once()]
        runs[every] = (trainer.model.state_dict(), recs)
    (w_on, recs_on), (w_off, recs_off) = runs[1], runs[0]
    assert all(torch.equal(w_on[k], w_off[k]) for k in w_off)
    assert any(r["train/reward_std"] > 0 for r in recs_off)  # the updates did something
    for on, off in zip(recs_on, recs_off):
        assert 0.0 < on["mech/grad_cos_grpo"] <= 1.0 + 1e-9 and on["time/grad_diag_s"] > 0
        assert "mech/grad_cos_grpo" not in off
        for k, v in off.items():
            if not k.startswith("time/"):
                assert on[k] == v or (isinstance(v, float) and math.isnan(v) and math.isnan(on[k])), k
        for k in ("mech/clip_frac_low", "mech/clip_frac_high", "mech/entropy_below_1e-6_frac",
                  "mech/entropy_below_1e-3_frac", "mech/clip_differs_from_grpo_frac"):
            assert 0.0 <= off[k] <= 1.0, k
    if objective == "er_shaped":
        assert "mech/er_bonus_rel" in recs_off[0] and "mech/er_aux_len_corr" in recs_off[0]
