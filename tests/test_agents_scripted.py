"""Scripted strategy agents, matched demonstration sets, tiny model init, eval CLI, on a
real smoke world with a real dense (MiniLM + FAISS) index."""

from __future__ import annotations

import json
import os

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(smoke_world):
    """conftest's session smoke world, with its dense index."""
    from searchgym.envs.world import ensure_index

    ensure_index(smoke_world, "dense")
    return smoke_world


@pytest.fixture(scope="module")
def envs(world):
    from searchgym.agents.demos import world_envs

    return world_envs(world, "train", 32)


def test_each_scripted_agent_meets_the_bar(envs):
    from searchgym.agents.policy import run_policy, summarize
    from searchgym.agents.scripted import STRATEGY_NAMES, ScriptedPolicy

    qs = envs[0].unwrapped.questions
    for name in STRATEGY_NAMES:
        pol = ScriptedPolicy(name)
        applies = [i for i, q in enumerate(qs) if pol.applies(q)]
        assert applies, name
        trajs = run_policy(pol, envs, applies)
        acc = summarize(trajs)["accuracy"]
        assert acc >= 0.95, (name, acc)
        for t in trajs:
            assert t.format_errors == 0
            assert t.meta["scripted_strategy"] == name
            assert all(tr["kind"] in ("search", "answer") for tr in t.turns)


def test_random_policy_is_a_floor(envs):
    from searchgym.agents.policy import RandomPolicy, run_policy, summarize

    s = summarize(run_policy(RandomPolicy(seed=1), envs, list(range(20))))
    assert s["accuracy"] < 0.3 and s["format_error_rate"] > 0


def test_demo_sets_are_matched(world, envs):
    from searchgym.agents.demos import build_matched, demo_tokens, summarize_pair

    sets = build_matched(world, 40, envs=envs)
    nar, div = sets["narrow"], sets["diverse"]
    assert len(nar) == len(div) == 40
    assert [r["question_id"] for r in nar] == [r["question_id"] for r in div]
    assert all(r["correct"] for r in nar + div)
    summ = summarize_pair(sets)
    for key in ("policy_tokens", "tokens"):
        assert abs(summ["diverse"][key] - summ["narrow"][key]) <= 0.10 * summ["narrow"][key], key
    assert set(summ["narrow"]["strategies"]) <= {"direct", "forward", "a_first"}
    assert len(summ["diverse"]["strategies"]) > len(summ["narrow"]["strategies"])
    assert summ["diverse"]["signature_entropy_norm_within_family"] > summ["narrow"]["signature_entropy_norm_within_family"]
    # SFT tokenisation of a demo: mask 0 exactly on the observations.
    from searchgym.agents.model import build_tokenizer
    from searchgym.agents.scripted import tokenizer_training_texts

    tok = build_tokenizer(tokenizer_training_texts(world), 1024)
    rec = div[0]
    ep = demo_tokens(tok, rec)
    masked = [t for t, m in zip(ep.response_ids, ep.loss_mask) if m == 0]
    obs = "".join(t["observation"] or "" for t in rec["turns"])
    assert tok.decode(masked) == obs
    pol = [t for t, m in zip(ep.response_ids, ep.loss_mask) if m == 1]
    assert tok.decode(pol, skip_special_tokens=True) == "".join(t["action"] for t in rec["turns"])


def test_model_init_and_eval_cli(world, tmp_path, capsys):
    from searchgym.cli import main

    out = tmp_path / "m"
    assert main(["model", "init", "--preset", "smoke", "--world", str(world), "--out", str(out)]) == 0
    info = json.loads((out / "searchgym_model.json").read_text())
    assert info["parameters"] < 1_000_000
    assert (out / "model.safetensors").is_file()
    # The LM policy on the real env: untrained, so garbage, but bounded and recorded.
    from searchgym.agents.demos import world_envs
    from searchgym.agents.policy import LMPolicy, run_policy
    from searchgym.agents.rollout import RolloutConfig

    pol = LMPolicy.from_path(out, RolloutConfig(max_new_tokens=16, max_response_tokens=200, seed=0))
    envs = world_envs(world, "test", 4)
    trajs = run_policy(pol, envs, [0, 1], n=2)
    assert [t.group_id for t in trajs] == [0, 0, 1, 1]
    for t in trajs:
        assert len(t.response_ids) <= 200 and t.format_errors >= 1
        rec = t.to_record()
        assert len(rec["entropies"]) == len(rec["loss_mask"]) == len(rec["segments"])
    assert main(["demos", "--world", str(world), "--kind", "narrow", "-n", "5",
                 "--out", str(tmp_path / "d.jsonl")]) == 0
    assert "signature_entropy_norm" in capsys.readouterr().out
    assert len((tmp_path / "d.jsonl").read_text().splitlines()) == 5
    assert main(["demos", "--world", str(tmp_path / "nope"), "--kind", "narrow", "-n", "5",
                 "--out", str(tmp_path / "e.jsonl")]) == 2
