"""End to end on the smoke world: smoke SFT start -> RL steps per objective, kill + resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from searchgym.metrics import names as mn

torch.set_num_threads(1)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke_start(smoke_sft_start):
    """(world dir, SFT model dir): conftest's session-wide smoke warm start."""
    world, model = smoke_sft_start
    info = json.loads((model / "searchgym_train.json").read_text())
    assert info["world"] == str(world) and 0.0 <= info["val_accuracy"] <= 1.0
    return world, model


def _rl_cfg(init, out, objective, **over):
    from searchgym.training.config import rl_preset

    base = dict(init=str(init), out=str(out), objective=objective, steps=2, batch_questions=2, n_samples=6,
                max_new_tokens=24, max_turns=2, threads=1, save_every=1, tensorboard=False,
                # a weak smoke start rarely answers right; the format penalty gives groups reward variance
                env_kwargs={"format_penalty": 0.5})
    base.update(over)
    return rl_preset("smoke", **base)


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(Path(path) / "model.safetensors"))


@pytest.mark.parametrize("objective", ["grpo", "entropy_bonus", "clip_higher", "clip_cov", "kl_cov",
                                       "forking_tokens", "er_shaped"])
def test_two_rl_steps_per_objective_change_weights(smoke_start, tmp_path, objective):
    from searchgym.retrieval.fileio import read_jsonl
    from searchgym.training.rl import train_rl

    _, init = smoke_start
    seen = []

    def hook(trajs):
        seen.append(len(trajs))
        return {"hook_episodes": len(trajs), "hook_has_hidden": float(all(t.hidden_states is not None
                                                                           for t in trajs))}

    # the covariance objectives need steps with non-zero advantages to select anything
    steps = 4 if objective in ("clip_cov", "kl_cov") else 2
    out = train_rl(_rl_cfg(init, tmp_path / objective, objective, hidden_states=True, tensorboard=True, steps=steps),
                   hooks=[hook], progress=False)
    before, after = _weights(init), _weights(out)
    assert any(not torch.equal(before[k], after[k]) for k in before), objective
    lines = read_jsonl(tmp_path / objective / "metrics.jsonl")
    assert [r["step"] for r in lines] == list(range(1, steps + 1)) and seen == [12] * steps
    for r in lines:
        for k in ("train/reward_mean", "train/reward_std", "train/accuracy", "train/format_error_rate",
                  "train/searches_mean", "train/response_length", "train/entropy", "train/entropy_top",
                  "update/clip_frac", "update/kl_ref", "update/grad_norm", "update/lr", "time/rollout_s",
                  "time/old_logprob_s", "time/update_s", "time/step_s", "time/metrics_s"):
            assert k in r, (objective, k)
        assert all(k == "step" or mn.is_namespaced(k) for k in r), sorted(r)  # one vocabulary
        assert r["train/hook_episodes"] == 12 and r["train/hook_has_hidden"] == 1.0
        # the trainer's recomputed log-probs match the engine's sampled ones
        assert r["update/rollout_logprob_absdiff"] < 1e-3
    if objective in ("clip_cov", "kl_cov"):
        active = [r for r in lines if r["update/adv_abs_mean"] > 0]
        assert active and all(r["mech/cov_selected_frac"] > 0 for r in active), lines
    if objective == "forking_tokens":
        assert all(0 < r["mech/forking_selected_frac"] <= 0.35 for r in lines)
    if objective == "er_shaped":
        assert all(r["mech/er_mean"] > 1 for r in lines)
    assert any((tmp_path / objective / "tensorboard").iterdir())


def test_kl_to_reference_and_rloo(smoke_start, tmp_path):
    from searchgym.retrieval.fileio import read_jsonl
    from searchgym.training.rl import train_rl

    _, init = smoke_start
    train_rl(_rl_cfg(init, tmp_path / "kl", "grpo", kl_coef=0.1, adv_estimator="rloo"), progress=False)
    lines = read_jsonl(tmp_path / "kl" / "metrics.jsonl")
    assert lines[0]["update/kl_ref"] >= 0 and lines[1]["update/kl_ref"] > 0  # step 1's first update is at the reference


def test_existing_run_requires_resume(smoke_start, tmp_path):
    from searchgym.training.rl import train_rl

    _, init = smoke_start
    cfg = _rl_cfg(init, tmp_path / "r", "grpo", steps=1)
    train_rl(cfg, progress=False)
    with pytest.raises(FileExistsError, match="--resume"):
        train_rl(cfg, progress=False)


_RUNNER = r"""
import sys, json, torch
torch.set_num_threads(1)
from searchgym.training.config import rl_preset
from searchgym.training.rl import train_rl
cfg = rl_preset("smoke", **json.loads(sys.argv[1]))
train_rl(cfg, resume=sys.argv[2] == "1", progress=False)
"""


def test_sigkill_and_resume_is_bitwise_identical(smoke_start, tmp_path):
    from searchgym.retrieval.fileio import read_jsonl

    _, init = smoke_start
    over = dict(init=str(init), objective="er_shaped", steps=4, batch_questions=2, n_samples=4, max_new_tokens=24,
                max_turns=2, threads=1, save_every=1, keep_last=2, tensorboard=False,
                env_kwargs={"format_penalty": 0.5})
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}

    def run(out, resume=False, kill_after_step=None):
        args = [sys.executable, "-c", _RUNNER, json.dumps({**over, "out": str(out)}), "1" if resume else "0"]
        if kill_after_step is None:
            subprocess.run(args, check=True, env=env, timeout=600)
            return
        p = subprocess.Popen(args, env=env)
        metrics = Path(out) / "metrics.jsonl"
        deadline = time.time() + 600
        while time.time() < deadline:
            if metrics.exists() and len(read_jsonl(metrics)) >= kill_after_step:
                break
            if p.poll() is not None:
                pytest.fail("runner finished before it could be killed")
            time.sleep(0.05)
        os.kill(p.pid, signal.SIGKILL)
        p.wait()

    run(tmp_path / "full")
    run(tmp_path / "killed", kill_after_step=2)
    run(tmp_path / "killed", resume=True)
    a, b = _weights(tmp_path / "full" / "model"), _weights(tmp_path / "killed" / "model")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    la = read_jsonl(tmp_path / "full" / "metrics.jsonl", skip_torn_tail=False)
    lb = read_jsonl(tmp_path / "killed" / "metrics.jsonl", skip_torn_tail=False)
    assert [r["step"] for r in lb] == [1, 2, 3, 4]
    strip = lambda r: {k: v for k, v in r.items() if not k.startswith("time/")}  # noqa: E731
    assert [strip(r) for r in la] == [strip(r) for r in lb]


@pytest.mark.parametrize("objective,kl_coef", [("er_shaped", 0.0), ("grpo", 0.05)])
def test_fast_step_equals_original_step(smoke_start, tmp_path, objective, kl_coef):
    """Packed forwards + the engine's recorded log-probs / hidden states (the default)
    against the original padded path with a recomputed old-log-prob pass: the same
    episodes, the same metrics fields, values and weights equal within round-off."""
    from searchgym.retrieval.fileio import read_jsonl
    from searchgym.training.rl import RLTrainer

    _, init = smoke_start
    runs = {}
    for fast in (False, True):
        out = tmp_path / f"fast{int(fast)}"
        cfg = _rl_cfg(init, out, objective, steps=2, hidden_states=True, kl_coef=kl_coef, save_every=10)
        trainer = RLTrainer(cfg, progress=False, pack=fast, reuse_rollout_logprobs=fast)
        episodes = []

        class Record:  # the hook sees every step's trajectories (with hidden states)
            def __call__(self, trajs):
                episodes.append([(list(t.response_ids), t.hidden_states.shape) for t in trajs])
                return {}

        trainer.hooks.append(Record())
        trainer.run()
        runs[fast] = (read_jsonl(out / "metrics.jsonl"), episodes, _weights(out / "model"))
    (la, ea, wa), (lb, eb, wb) = runs[False], runs[True]
    assert ea == eb  # token-identical episodes, hidden states for every policy token
    for ra, rb in zip(la, lb):
        assert set(ra) == set(rb)
        for k in ra:
            if k.startswith("time/") or k == "update/rollout_logprob_absdiff":
                continue
            assert rb[k] == pytest.approx(ra[k], rel=1e-3, abs=1e-5), k
        assert rb["update/rollout_logprob_absdiff"] < 1e-4  # engine vs trainer log-probs (first mini-batch)
    # AdamW's g / sqrt(v) can turn round-off in a near-zero gradient into a move of a fraction
    # of lr per step (measured 0.05 lr after these 8 updates, in one element): a bound of
    # lr / 4 on any weight and lr / 1000 on the mean
    lr = cfg.optim.lr
    diffs = torch.cat([(wa[k] - wb[k]).abs().flatten() for k in wa])
    assert float(diffs.max()) <= lr / 4 and float(diffs.mean()) <= lr / 1000


def test_fast_step_falls_back_to_recompute(smoke_start, tmp_path, monkeypatch):
    """Engine log-probs further from the trainer's than ROLLOUT_LOGPROB_TOL: one warning,
    then the old-log-prob pass is recomputed."""
    import searchgym.training.rl as rl

    _, init = smoke_start
    monkeypatch.setattr(rl, "ROLLOUT_LOGPROB_TOL", -1.0)  # any difference is "too large"
    trainer = rl.RLTrainer(_rl_cfg(init, tmp_path / "fb", "grpo", steps=2), progress=False)
    with pytest.warns(UserWarning, match="recomputing old log-probs"):
        trainer.step_once()
    assert trainer.reuse_rollout_logprobs is False
    rec = trainer.step_once()
    assert rec["time/old_logprob_s"] > 0 and rec["update/rollout_logprob_absdiff"] < 1e-3
