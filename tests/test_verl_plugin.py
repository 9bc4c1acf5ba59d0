"""The forking-token plugin, loaded the way a verl worker loads it, on verl's real ppo_loss."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

torch.set_num_threads(1)

# Runs in a fresh interpreter so that `import verl` itself loads the plugin through
# VERL_USE_EXTERNAL_MODULES, exactly as in a Ray worker; prints a JSON report.
_WORKER_SCRIPT = textwrap.dedent(
    r"""
    import json, os, sys, torch
    torch.set_num_threads(1)
    import verl  # loads searchgym.training.verl_plugin via VERL_USE_EXTERNAL_MODULES
    from tensordict import TensorDict
    from verl.utils import tensordict_utils as tu
    from verl.workers.config import ActorConfig
    from verl.workers.utils import losses
    from verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY
    import verl.workers.engine_workers as ew  # binds ppo_loss at import, after the plugin ran

    torch.manual_seed(0)
    B, P, R = 2, 3, 6
    prompts = torch.randint(1, 50, (B, P)); responses = torch.randint(1, 50, (B, R))
    am = torch.ones(B, P + R, dtype=torch.long); am[1, P + 4:] = 0      # row 1: 4 response tokens
    rm = torch.ones(B, R, dtype=torch.long); rm[1, 4:] = 0; rm[0, 2] = 0  # row 0, pos 2: observation
    total = int(am.sum())
    lp = torch.randn(total, dtype=torch.float64).float().requires_grad_(True)
    ent = torch.arange(total, dtype=torch.float32) * 0.37 % 1.0          # distinct entropies
    old = torch.zeros(B, R)
    # on-policy: old log-probs equal the current ones so no token is clipped
    from verl.workers.utils.padding import no_padding_2_padding
    data = TensorDict({"prompts": prompts, "responses": responses, "attention_mask": am,
                       "response_mask": rm, "old_log_probs": old, "advantages": torch.ones(B, R)},
                      batch_size=B)
    tu.assign_non_tensor(data, dp_size=1, batch_num_tokens=int(rm.sum()), global_batch_size=B,
                         max_response_len=R)
    data["old_log_probs"] = no_padding_2_padding(lp.detach(), data)
    cfg = ActorConfig(strategy="fsdp", rollout_n=1, ppo_micro_batch_size_per_gpu=2, calculate_entropy=True)
    report = {"patched": losses.ppo_loss.__module__, "engine_bound": ew.ppo_loss.__module__,
              "registry_has_grpo": "grpo" in POLICY_LOSS_REGISTRY, "response_mask": rm.tolist(),
              "entropy": no_padding_2_padding(ent, data).tolist()}
    for label, rho in (("masked", "0.25"), ("plain", "")):
        os.environ["SEARCHGYM_FORKING_RHO"] = rho  # read by the plugin at every loss call
        lp.grad = None
        loss, metrics = ew.ppo_loss(cfg, {"log_probs": lp, "entropy": ent}, data)
        loss.backward()
        report[label] = {"grad": no_padding_2_padding(lp.grad, data).tolist(),
                         "kept_frac": metrics.get("actor/forking_kept_frac"),
                         "adv_after": data["advantages"].tolist()}
    print(json.dumps(report))
    """
)


@pytest.fixture(scope="module")
def worker_report() -> dict:
    env = {**os.environ, "VERL_USE_EXTERNAL_MODULES": "searchgym.training.verl_plugin"}
    proc = subprocess.run([sys.executable, "-c", _WORKER_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_plugin_masks_all_but_top_rho_entropy_tokens_in_verl_loss(worker_report):
    out = worker_report
    assert out["patched"] == "searchgym.training.verl_plugin"
    assert out["engine_bound"] == "searchgym.training.verl_plugin"
    assert out["registry_has_grpo"]  # searchgym's objectives registered inside the worker
    ent, rm = torch.tensor(out["entropy"]), torch.tensor(out["response_mask"])
    out = out["masked"]
    grad = torch.tensor(out["grad"])
    valid = rm.bool()
    tau = torch.quantile(ent[valid], 0.75)
    expected = valid & (ent >= tau)
    # exactly the top-25% entropy policy tokens get gradient; observation/padding never do
    assert torch.equal(grad != 0, expected)
    assert 0 < int(expected.sum()) < int(valid.sum())
    assert out["kept_frac"] == pytest.approx(float(expected.sum()) / float(valid.sum()))
    # the micro-batch the engine holds is not modified (it is reused across PPO epochs)
    assert out["adv_after"] == torch.ones_like(rm, dtype=torch.float32).tolist()
    # token-mean over ALL policy tokens: each kept token's grad is -A/N_all = -1/9
    assert torch.allclose(grad[expected], torch.full((int(expected.sum()),), -1.0 / float(valid.sum())))


@pytest.mark.slow
def test_plugin_is_inert_without_rho(worker_report):
    out = worker_report["plain"]
    grad, rm = torch.tensor(out["grad"]), torch.tensor(worker_report["response_mask"])
    assert torch.equal(grad != 0, rm.bool())  # verl's plain loss: every policy token
    assert out["kept_frac"] is None


def test_top_entropy_mask_matches_objective_registry():
    from searchgym.metrics import entropy as me
    from searchgym.training.objectives import make_objective
    from searchgym.training.verl_plugin import gathered_top_entropy_mask

    g = torch.Generator().manual_seed(1)
    ent = torch.rand(4, 11, generator=g)
    mask = (torch.rand(4, 11, generator=g) > 0.3).long()
    for rho in (0.1, 0.2, 0.5, 1.0):
        mine = gathered_top_entropy_mask(ent, mask, rho)
        theirs = make_objective("forking_tokens", {"rho": rho}).loss_mask(mask.float(), ent)[0].bool()
        assert torch.equal(mine, theirs), rho
        assert not bool((mine & ~mask.bool()).any())
        # the rule itself: ties kept at the (1 - rho) quantile of the policy tokens
        tau = torch.quantile(ent[mask.bool()], 1.0 - rho)
        assert torch.equal(mine, mask.bool() & (ent >= tau)), rho
        vals = ent[mask.bool()].numpy()
        assert me.token_entropy_stats(vals, top_frac=rho)["entropy_top"] == pytest.approx(
            float(ent[mine].double().mean()), rel=1e-6), rho
    assert not bool(gathered_top_entropy_mask(ent, torch.zeros_like(mask), 0.2).any())  # no policy token


def test_top_entropy_threshold_above_quantile_limit(monkeypatch):
    """Above torch.quantile's input limit the threshold is the k-th smallest value."""
    from searchgym.metrics import entropy as me

    vals = torch.arange(100, dtype=torch.float32)
    monkeypatch.setattr(me, "_QUANTILE_MAX", 10)
    assert float(me.top_entropy_threshold(vals, 0.2)) == 79.0  # k = int(0.8 * 100) = 80th smallest
    with pytest.raises(ValueError, match="rho"):
        me.top_entropy_threshold(vals, 0.0)


def test_nested_advantages_keep_layout():
    from searchgym.training.verl_plugin import _apply_to_advantages

    adv = torch.nested.as_nested_tensor([torch.ones(3), torch.ones(5)], layout=torch.jagged)
    keep = torch.tensor([[1, 0, 1, 0, 0], [0, 1, 1, 0, 1]], dtype=torch.bool)
    out = _apply_to_advantages(adv, keep)
    assert out.is_nested
    assert out[0].tolist() == [1.0, 0.0, 1.0] and out[1].tolist() == [0.0, 1.0, 1.0, 0.0, 1.0]


@pytest.mark.parametrize("raw", ["abc", "0", "1.5", "-0.2"])
def test_bad_rho_is_rejected_naming_the_variable(raw, monkeypatch):
    from searchgym.training.verl_plugin import RHO_ENV, forking_rho_from_env

    monkeypatch.setenv(RHO_ENV, raw)
    with pytest.raises(ValueError, match=RHO_ENV):
        forking_rho_from_env()
