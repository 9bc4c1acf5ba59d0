"""RL improves validation reward over its SFT start, pooled over 3 seeds, and no seed loses.

The warm start is a short SFT (800 steps) of the small model on the scripted mixture of
single-hop strategies (direct, direct + confirm, reverse lookup) of a small world. It
solves most *training* questions when sampled (it partly memorises their answers) but
only 12 of 64 held-out validation questions greedily, so there is room that only reading
the retrieved passages can fill. Twenty GRPO steps (8 questions x 4 samples, T = 0.7,
lr 1e-4) from that one warm start, for seeds 0, 1 and 2 (the seed changes the sampled
questions, the samples and the mini-batch order), must leave no seed below its start and
raise the seeds' mean greedy validation reward by at least ``MARGIN``.

Measured on the 2-core AMD EPYC CI machine (2026-12-02): 0.188 -> 0.203 / 0.219 / 0.234
(mean +0.031). The earlier form of this test, ten steps and each seed >= +0.03, measured
0.188 -> 0.234 / 0.219 / 0.250 on an Intel Xeon but 0.172 / 0.188 / >= 0.219 on this EPYC
(lr 1e-3 instead: 0.156 / 0.219 / 0.188): ten steps' gain is within one seed's noise.

A small world rather than the smoke world: the smoke world's 4 validation questions per
family cannot show a margin, and its 36 people are few enough to memorise outright.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

pytestmark = pytest.mark.slow

SFT_STEPS = 800
RL_STEPS = 20
SEEDS = (0, 1, 2)
MARGIN = 0.02  # mean over the 3 seeds of greedy reward on 64 questions: > 1 question per seed


@pytest.fixture(scope="module")
def warm_start(tmp_path_factory):
    """SFT model dir of the small model on the single-hop mixture demos of a small world."""
    from searchgym.agents.model import init_model
    from searchgym.agents.policy import run_policy
    from searchgym.agents.scripted import ScriptedPolicy
    from searchgym.envs import make_batch
    from searchgym.envs.world import WorldConfig, generate_world, write_world
    from searchgym.training.config import sft_preset
    from searchgym.training.sft import train_sft

    root = tmp_path_factory.mktemp("rl_improves")
    world = root / "world"
    write_world(generate_world(WorldConfig(preset="small", seed=0)), world)
    envs = make_batch("searchgym/SingleHop-v0", 64, world_dir=str(world), retriever="bm25", split="train")
    trajs = run_policy(ScriptedPolicy("mixture"), envs, list(range(len(envs[0].questions))), n=1)
    with open(root / "demos.jsonl", "w") as f:
        for t in trajs:
            if t.correct:
                turns = [{"action": x["action"], "observation": x.get("observation")} for x in t.turns]
                f.write(json.dumps({"prompt": t.prompt, "turns": turns}) + "\n")
    init_model("small", root / "base", world_dir=world)
    cfg = sft_preset("smoke", model=str(root / "base"), demos=str(root / "demos.jsonl"), out=str(root / "sft"),
                     world=str(world), retriever="bm25", epochs=100, max_steps=SFT_STEPS, batch_size=16,
                     eval_questions=64, eval_family="single_hop", threads=1,
                     optim={"lr": 6e-3, "warmup_steps": 20})
    return train_sft(cfg, progress=False)


def test_rl_improves_validation_reward_over_the_sft_start(warm_start, tmp_path):
    from searchgym.retrieval.fileio import read_jsonl
    from searchgym.training.config import rl_preset
    from searchgym.training.rl import train_rl

    starts, ends = [], []
    for seed in SEEDS:
        out = tmp_path / f"rl-s{seed}"
        cfg = rl_preset("smoke", init=str(warm_start), out=str(out), retriever="bm25", objective="grpo",
                        steps=RL_STEPS, batch_questions=8, n_samples=4, temperature=0.7, max_new_tokens=40,
                        max_turns=3, train_family="single_hop", eval_family="single_hop", eval_every=RL_STEPS,
                        eval_questions=64, save_every=RL_STEPS, tensorboard=False, threads=1, seed=seed,
                        optim={"lr": 1e-4, "warmup_steps": 0, "min_lr_ratio": 1.0})
        train_rl(cfg, progress=False)
        val = {r["step"]: r for r in read_jsonl(out / "metrics.jsonl") if "val/reward_mean" in r}
        start, end = val[0], val[RL_STEPS]
        assert start["val/num_episodes"] == end["val/num_episodes"] == 64
        starts.append(start["val/reward_mean"])
        ends.append(end["val/reward_mean"])
    print("\ngreedy validation reward, SFT start -> RL end, seeds " + ", ".join(
        f"{s}: {a:.3f} -> {b:.3f}" for s, a, b in zip(SEEDS, starts, ends)))
    assert all(b >= a for a, b in zip(starts, ends)), "a seed ended below its SFT start"
    assert sum(ends) / len(ends) >= sum(starts) / len(starts) + MARGIN, (starts, ends)
