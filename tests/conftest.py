"""Shared fixtures: the retrieval server tests' index and reference, and a smoke warm start."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory):
    """A dense index over the bundled sample corpus."""
    from searchgym.retrieval import build_index, sample_corpus_path

    return build_index(sample_corpus_path(), tmp_path_factory.mktemp("srv") / "dense", progress=False)


@pytest.fixture(scope="module")
def reference(index_dir):
    """An independent in-process retriever (own instance, no cache): the ground truth."""
    from searchgym.retrieval import load_retriever

    return load_retriever(index_dir, shared=False, cache_size=0)


@pytest.fixture(scope="session")
def smoke_world(tmp_path_factory):
    """The smoke world (preset ``smoke``, seed 0) with its BM25 index, built once per test
    session for every test that runs on it. Read-only: a test that needs a dense index
    builds it beside (``ensure_index(smoke_world, "dense")``, shared the same way); a test
    that writes files uses its own ``tmp_path``."""
    from searchgym.envs.world import ensure_index, ensure_world

    world = ensure_world("smoke", 0, root=tmp_path_factory.mktemp("smoke-world"))
    ensure_index(world, "bm25")
    return world


@pytest.fixture(scope="session")
def smoke_sft_start(tmp_path_factory, smoke_world):
    """(world dir, SFT model dir): the smoke world with a BM25 index, the tiny model (its
    untrained weights in ``<model>/../../base``, beside the SFT run folder), a 24-step SFT on the scripted mixture agent's correct episodes (groups get reward spread).
    Built once per test session for every test that needs a warm start."""
    import json

    from searchgym.agents.model import init_model
    from searchgym.agents.policy import run_policy
    from searchgym.agents.scripted import ScriptedPolicy
    from searchgym.envs import make_batch
    from searchgym.training.config import sft_preset
    from searchgym.training.sft import train_sft

    root = tmp_path_factory.mktemp("smoke-sft")
    world = smoke_world
    envs = make_batch("searchgym/Mixed-v0", 16, world_dir=str(world), retriever="bm25", split="train")
    trajs = run_policy(ScriptedPolicy("mixture"), envs, list(range(len(envs[0].questions))), n=1)
    demos = root / "demos.jsonl"
    with open(demos, "w") as f:
        for t in trajs:
            if t.correct:
                f.write(json.dumps({"prompt": t.prompt, "turns": [{"action": x["action"],
                                                                      "observation": x.get("observation")}
                                                                     for x in t.turns]}) + "\n")
    init_model("smoke", root / "base", world_dir=world)
    cfg = sft_preset("smoke", model=str(root / "base"), demos=str(demos), out=str(root / "sft"), world=str(world),
                     retriever="bm25", epochs=3, max_steps=24, eval_questions=2, threads=1,
                     optim={"lr": 5e-3, "warmup_steps": 3})
    return world, train_sft(cfg, progress=False)
