"""SFT warm start: label smoothing, per-epoch checkpoints and hook, partial cosine schedules."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from searchgym.metrics import names as mn
from searchgym.retrieval.fileio import read_jsonl

torch.set_num_threads(1)
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def smoke_inputs(tmp_path_factory, smoke_world):
    """(world dir, base model dir, demos file): smoke world, BM25 index, tiny model, 24 demos."""
    from searchgym.agents.model import init_model
    from searchgym.agents.policy import run_policy
    from searchgym.agents.scripted import ScriptedPolicy
    from searchgym.envs import make_batch

    root = tmp_path_factory.mktemp("sft")
    world = smoke_world
    envs = make_batch("searchgym/Mixed-v0", 8, world_dir=str(world), retriever="bm25", split="train")
    trajs = run_policy(ScriptedPolicy("mixture"), envs, list(range(24)), n=1)
    demos = root / "demos.jsonl"
    with open(demos, "w") as f:
        for t in trajs:
            f.write(json.dumps({"prompt": t.prompt, "turns": [{"action": x["action"], "observation": x.get("observation")}
                                                             for x in t.turns]}) + "\n")
    init_model("smoke", root / "base", world_dir=world)
    return world, root / "base", demos


def _sft_log(run_dir: Path) -> list[dict]:
    """A run's sft_log.jsonl in the metric vocabulary (old logs read the same)."""
    return [mn.normalize_record(r, mn.SFT_RECORD) for r in read_jsonl(run_dir / "sft_log.jsonl")]


def _cfg(smoke_inputs, out, **over):
    from searchgym.training.config import sft_preset

    world, base, demos = smoke_inputs
    kw = dict(model=str(base), demos=str(demos), out=str(out), world=str(world), retriever="bm25", epochs=2,
              batch_size=8, eval_questions=2, threads=1, optim={"lr": 5e-3, "warmup_steps": 1})
    kw.update(over)
    return sft_preset("smoke", **kw)


def _weights(model_dir):
    from safetensors.torch import load_file

    return load_file(str(Path(model_dir) / "model.safetensors"))


def _batch(smoke_inputs):
    from searchgym.training.common import load_model
    from searchgym.training.sft import load_demo_episodes
    from searchgym.training.update import pad_batch

    _, base, demos = smoke_inputs
    model, tok = load_model(base)
    eps = load_demo_episodes(demos, tok)[:4]
    return model, pad_batch([e[0] for e in eps], [e[1] for e in eps], tok.pad_token_id or 0)


def test_label_smoothing_loss_is_torch_smoothed_cross_entropy(smoke_inputs):
    from searchgym.training.sft import sft_loss

    model, b = _batch(smoke_inputs)
    with torch.no_grad():
        logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits[:, :-1].float()
        logp = torch.log_softmax(logits, -1)
        sel = b.response_mask > 0
        nll = -logp.gather(-1, b.input_ids[:, 1:, None])[..., 0][sel].mean()
        uniform = -logp[sel].mean(-1).mean()
        plain = sft_loss(model, b.input_ids, b.attention_mask, b.response_mask)
        smoothed = sft_loss(model, b.input_ids, b.attention_mask, b.response_mask, label_smoothing=0.2)
    assert torch.allclose(plain, nll, atol=1e-5)
    assert torch.allclose(smoothed, 0.8 * nll + 0.2 * uniform, atol=1e-5)
    # an untrained model is near uniform, but not exactly: the two losses differ
    assert abs(float(smoothed) - float(plain)) > 1e-6


def test_epoch_checkpoints_hook_and_partial_schedule(smoke_inputs, tmp_path):
    from searchgym.training.sft import train_sft

    calls = []

    def hook(model, tok, epoch, step):
        assert model.training  # called in train mode; may switch modes
        model.eval()
        calls.append((epoch, step))
        return {"probe": epoch * 10}

    full = train_sft(_cfg(smoke_inputs, tmp_path / "full", save_epochs=True), progress=False, on_epoch_end=hook)
    steps_per_epoch = 3  # 24 demos / batch 8
    assert calls == [(1, steps_per_epoch), (2, 2 * steps_per_epoch)]
    log = _sft_log(tmp_path / "full")
    assert [r[mn.val("probe")] for r in log if mn.val("probe") in r] == [10, 20]
    ep1, ep2 = (tmp_path / "full" / "epochs" / f"epoch-{k}" for k in (1, 2))
    assert json.loads((ep1 / "searchgym_train.json").read_text())["epoch"] == 1
    w_full, w_ep1, w_ep2 = _weights(full), _weights(ep1), _weights(ep2)
    assert all(torch.equal(w_full[k], w_ep2[k]) for k in w_full)
    assert any(not torch.equal(w_ep1[k], w_ep2[k]) for k in w_full)

    # epoch 1 of a 2-epoch cosine, trained on its own, is the same model and learning rates
    part = train_sft(_cfg(smoke_inputs, tmp_path / "part", epochs=1, schedule_epochs=2), progress=False)
    assert not (tmp_path / "part" / "epochs").exists()  # save_epochs defaults off
    w_part = _weights(part)
    assert all(torch.allclose(w_part[k], w_ep1[k], atol=1e-6) for k in w_part)
    lr_full = [r[mn.UPDATE_LR] for r in log if mn.UPDATE_LR in r][:steps_per_epoch]
    lr_part = [r[mn.UPDATE_LR] for r in _sft_log(tmp_path / "part") if mn.UPDATE_LR in r]
    assert lr_part == pytest.approx(lr_full)
    # a 1-epoch schedule decays to min lr at its end; the partial one has not
    short = train_sft(_cfg(smoke_inputs, tmp_path / "short", epochs=1), progress=False)
    lr_short = [r[mn.UPDATE_LR] for r in _sft_log(tmp_path / "short") if mn.UPDATE_LR in r]
    assert lr_short[-1] < lr_part[-1]
    assert short.is_dir()


def test_label_smoothing_trains_and_is_recorded(smoke_inputs, tmp_path):
    from searchgym.training.sft import train_sft

    model = train_sft(_cfg(smoke_inputs, tmp_path / "ls", epochs=1, label_smoothing=0.1), progress=False)
    info = json.loads((model / "searchgym_train.json").read_text())
    assert info["sft"]["label_smoothing"] == 0.1 and info["steps"] == 3


def test_new_sft_fields_validate_and_default_off():
    from searchgym.training.config import SFTConfig, sft_preset

    c = SFTConfig()
    assert (c.label_smoothing, c.schedule_epochs, c.save_epochs) == (0.0, 0, False)
    for over, msg in [({"epochs": 3, "schedule_epochs": 2}, "schedule_epochs"),
                      ({"label_smoothing": 1.0}, "label_smoothing"),
                      ({"label_smoothing": -0.1}, "label_smoothing"),
                      ({"schedule_epochs": -1}, "schedule_epochs")]:
        with pytest.raises(ValueError, match=msg):
            sft_preset("smoke", **over).validate()
    with pytest.raises(ValueError, match="sft.label_smoothing: expected float"):
        sft_preset("smoke", label_smoothing="lots")
    sft_preset("small").validate()


def test_sft_loss_packed_gradients_equal_the_padded_forward(smoke_inputs):
    """sft_loss forwards packed sequences; its gradients equal the padded forward's."""
    from searchgym.training.sft import sft_loss
    from searchgym.training.update import forward_logprobs

    model, b = _batch(smoke_inputs)
    assert len(set(b.attention_mask.sum(1).tolist())) > 1  # rows of different lengths: real padding
    sft_loss(model, b.input_ids, b.attention_mask, b.response_mask).backward()
    packed = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    logp, _, _ = forward_logprobs(model, b.input_ids, b.attention_mask, with_entropy=False, positions=b.response_mask)
    (-(logp * b.response_mask).sum() / b.response_mask.sum()).backward()
    assert packed.keys() == {n for n, p in model.named_parameters() if p.grad is not None}
    for n, p in model.named_parameters():
        if p.grad is not None:
            assert torch.allclose(packed[n], p.grad, atol=1e-5, rtol=1e-4), n
