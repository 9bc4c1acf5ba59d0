"""Typed configs (strict YAML), presets, LR schedule and checkpoints."""

from __future__ import annotations

import json

import pytest
import torch

torch.set_num_threads(1)

from searchgym.training.config import (  # noqa: E402
    RLConfig, SFTConfig, dataclass_from_dict, load_yaml_config, rl_preset, sft_preset,
)


def test_unknown_keys_and_wrong_types_are_named(tmp_path):
    with pytest.raises(ValueError, match="unknown config key 'rl.stepz'"):
        dataclass_from_dict(RLConfig, {"stepz": 3}, prefix="rl")
    with pytest.raises(ValueError, match=r"rl\.optim\.lr: expected float, got str 'fast'"):
        dataclass_from_dict(RLConfig, {"optim": {"lr": "fast"}}, prefix="rl")
    with pytest.raises(ValueError, match=r"rl\.steps: expected int, got float"):
        dataclass_from_dict(RLConfig, {"steps": 2.5}, prefix="rl")
    with pytest.raises(ValueError, match=r"rl\.tensorboard: expected bool"):
        dataclass_from_dict(RLConfig, {"tensorboard": "yes"}, prefix="rl")
    f = tmp_path / "c.yaml"
    f.write_text("steps: 3\noptim:\n  lr: 1.0e-4\n  momentum: 0.9\n")
    with pytest.raises(ValueError, match=r"c\.yaml: unknown config key 'optim\.momentum'"):
        load_yaml_config(RLConfig, f)
    f.write_text("steps: 3\nobjective: kl_cov\nobjective_overrides: {kl_cov_ratio: 0.05}\noptim: {lr: 1.0e-4}\n")
    cfg = load_yaml_config(RLConfig, f)
    assert cfg.steps == 3 and cfg.optim.lr == 1e-4 and cfg.objective_overrides == {"kl_cov_ratio": 0.05}
    cfg.validate()
    f.write_text("- a\n- b\n")
    with pytest.raises(ValueError, match="top level must be a mapping"):
        load_yaml_config(RLConfig, f)
    with pytest.raises(FileNotFoundError):
        load_yaml_config(RLConfig, tmp_path / "missing.yaml")


def test_validation_of_values():
    with pytest.raises(ValueError, match="rl.objective|unknown objective"):
        RLConfig(objective="nope").validate()
    with pytest.raises(ValueError, match="rl.num_minibatches"):
        RLConfig(batch_questions=1, n_samples=2, num_minibatches=4).validate()
    with pytest.raises(ValueError, match="rl.optim.lr"):
        dataclass_from_dict(RLConfig, {"optim": {"lr": -1.0}}).validate()
    with pytest.raises(ValueError, match="sft.batch_size"):
        SFTConfig(batch_size=0).validate()


def test_presets_are_valid_and_off_policy():
    for name in ("smoke", "small"):
        r = rl_preset(name)
        r.validate()
        # KL-Cov acts only off-policy: > 1 mini-batch per step
        assert r.num_minibatches > 1 and r.ppo_epochs >= 1
        sft_preset(name).validate()
    assert rl_preset("smoke", steps=2).steps == 2
    with pytest.raises(ValueError, match="unknown RL preset"):
        rl_preset("huge")


def test_scheduler_warmup_then_cosine():
    from searchgym.training.common import make_scheduler

    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1.0)
    sch = make_scheduler(opt, warmup_steps=4, total_steps=14, min_lr_ratio=0.1)
    lrs = []
    for _ in range(14):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sch.step()
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:])) and lrs[-1] > 0.1


def test_checkpoint_roundtrip_keep_last_and_metrics_truncation(tmp_path):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from searchgym.retrieval.fileio import append_jsonl, read_jsonl
    from searchgym.training.checkpoint import (
        latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint, truncate_metrics,
    )

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(input_ids=torch.tensor([[1, 2, 3]])).logits.sum().backward()
    opt.step()
    gen = torch.Generator().manual_seed(5)
    metrics = tmp_path / "metrics.jsonl"
    for step in (1, 2, 3):
        append_jsonl(metrics, {"step": step})
        save_checkpoint(tmp_path, step, model, None, opt, generator=gen, keep_last=2,
                        metrics_offset=metrics.stat().st_size, extra={"objective": {"ema": [1.0]}})
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000002", "step_00000003"]
    expected_next = torch.randperm(10, generator=gen.clone_state() if hasattr(gen, "clone_state") else gen)
    append_jsonl(metrics, {"step": 4})
    with open(metrics, "a") as f:
        f.write('{"step": 5, "tor')  # a torn line from a crash
    gen2 = torch.Generator().manual_seed(99)
    opt2 = torch.optim.AdamW(model.parameters(), lr=1e-3)
    state = load_checkpoint(latest_checkpoint(tmp_path), opt2, generator=gen2)
    assert state["step"] == 3 and state["extra"]["objective"]["ema"] == [1.0]
    assert torch.equal(torch.randperm(10, generator=gen2), expected_next)
    assert json.dumps(opt2.state_dict()["state"][0]["exp_avg"].tolist()) == \
        json.dumps(opt.state_dict()["state"][0]["exp_avg"].tolist())
    truncate_metrics(metrics, state["metrics_offset"])
    assert [r["step"] for r in read_jsonl(metrics, skip_torn_tail=False)] == [1, 2, 3]
    reloaded = Qwen2ForCausalLM.from_pretrained(latest_checkpoint(tmp_path) / "model")
    for a, b in zip(model.state_dict().values(), reloaded.state_dict().values()):
        assert torch.equal(a, b)
