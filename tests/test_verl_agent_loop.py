"""SearchEnvAgentLoop through verl's own AgentLoopWorker, with a real tiny HF model.

The env is a real SearchEnv over a generated smoke world with a real BM25 index; the
generator is LocalHFServer (verl's server-manager ``generate`` contract) around a real
random-init Qwen2 model; the batch comes from the exported parquet through verl's
RLHFDataset; post-processing is verl's ``_agent_loop_postprocess`` / ``_postprocess``.
"""

import asyncio
import os

import gymnasium
import numpy as np
import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ENV_ID = "searchgym_test/VerlSmoke-v0"
PROMPT_LEN, RESPONSE_LEN = 160, 96


@pytest.fixture(scope="module")
def world(smoke_world):
    """(world dir, BM25 index dir) of conftest's session smoke world."""
    from searchgym.envs.world import ensure_index

    return smoke_world, ensure_index(smoke_world, kind="bm25")


def _make_smoke_env(split="train", world_dir=None, index_dir=None, max_turns=3):
    from searchgym.envs.env import EnvConfig, SearchEnv
    from searchgym.envs.world import load_world
    from searchgym.retrieval import load_retriever

    w = load_world(world_dir)
    return SearchEnv(w.questions[split], load_retriever(index_dir), EnvConfig(max_turns=max_turns), split=split)


@pytest.fixture(scope="module")
def env_kwargs(world):
    wd, idx = world
    if ENV_ID not in gymnasium.registry:
        gymnasium.register(ENV_ID, entry_point=_make_smoke_env)
    return {"world_dir": str(wd), "index_dir": str(idx)}


@pytest.fixture(scope="module")
def tiny_model(world, tmp_path_factory):
    from searchgym.agents.model import init_model

    out = tmp_path_factory.mktemp("model") / "tiny"
    init_model("smoke", out, world_dir=world[0], seed=0)
    return out


def test_cut_at_stop_keeps_sampled_ids(tiny_model):
    from transformers import AutoTokenizer

    from searchgym.training.verl_loop import cut_at_stop

    tok = AutoTokenizer.from_pretrained(tiny_model)
    ids = tok.encode("<search> capital city </search> trailing words", add_special_tokens=False)
    cut = cut_at_stop(tok, ids, ("</search>", "</answer>"))
    assert cut == ids[: len(cut)]
    assert tok.decode(cut).endswith("</search>")
    assert cut_at_stop(tok, ids[:3], ("</answer>",)) == ids[:3]  # no stop: unchanged


@pytest.mark.slow
def test_agent_loop_through_verl_worker(tmp_path, env_kwargs, tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from verl.experimental.agent_loop.agent_loop import AgentLoopWorker
    from verl.protocol import DataProto
    from verl.utils.dataset.rl_dataset import RLHFDataset, collate_fn

    from searchgym.envs.env import CORRECTIVE
    from searchgym.training.testing import LocalHFServer
    from searchgym.training.verl_data import ENV_POOL, export_parquet
    from searchgym.training.verl_launch import (
        VerlLaunchConfig,
        build_overrides,
        compose_config,
        validate_composed,
        write_agent_loops_yaml,
    )

    n_rows = 3
    data = export_parquet(ENV_ID, tmp_path / "train.parquet", split="train", limit=n_rows, env_kwargs=env_kwargs)
    cfg = VerlLaunchConfig(objective="grpo", model=str(tiny_model), env_id=ENV_ID, out_dir=str(tmp_path),
                           env_kwargs=env_kwargs, max_prompt_length=PROMPT_LEN, max_response_length=RESPONSE_LEN,
                           train_batch_size=4, ppo_mini_batch_size=2, micro_batch_size_per_gpu=1,
                           extra_overrides=["actor_rollout_ref.rollout.agent.num_workers=1"])
    agent_yaml = write_agent_loops_yaml(cfg, tmp_path / "agent_loops.yaml")
    config = compose_config(build_overrides(cfg, [str(data)], [str(data)], agent_yaml))
    validate_composed(config)  # the config the worker runs on is one verl accepts

    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    server = LocalHFServer(model, tok, seed=0, max_new_tokens=12)  # short turns -> several turns

    # The rows as the trainer sees them: verl's dataset + collate over the exported parquet.
    dataset = RLHFDataset(data_files=[str(data)], tokenizer=tok, config=config.data)
    batch = DataProto.from_single_dict(collate_fn([dataset[i] for i in range(len(dataset))]))
    assert list(batch.non_tensor_batch["agent_name"]) == ["searchgym_env"] * n_rows

    async def main():
        # built inside the running loop, as a Ray actor would be
        worker = AgentLoopWorker(config, llm_client=server)
        return await worker.generate_sequences(batch)

    out = asyncio.run(main())
    B = n_rows
    assert out.batch["prompts"].shape == (B, PROMPT_LEN)
    for key in ("responses", "response_mask", "rollout_log_probs", "rm_scores"):
        assert out.batch[key].shape == (B, RESPONSE_LEN), key
    assert out.batch["input_ids"].shape == (B, PROMPT_LEN + RESPONSE_LEN)

    sampled = [list(o) for o in server.outputs]
    for b in range(B):
        attn = out.batch["attention_mask"][b, PROMPT_LEN:].bool()
        n = int(attn.sum())
        resp = out.batch["responses"][b, :n].tolist()
        mask = out.batch["response_mask"][b, :n].tolist()
        lps = out.batch["rollout_log_probs"][b, :n].tolist()
        # split the response into alternating policy (1) / observation (0) spans
        spans, start = [], 0
        for i in range(1, n + 1):
            if i == n or mask[i] != mask[start]:
                spans.append((mask[start], resp[start:i], lps[start:i]))
                start = i
        assert spans[0][0] == 1, "a response starts with policy tokens"
        # replay the episode on a fresh env: same actions -> same observations and reward
        env = _make_smoke_env("train", **env_kwargs)
        env.reset(options={"index": int(out.non_tensor_batch["question_index"][b])})
        reward, obs_spans = 0.0, 0
        for kind, ids, span_lps in spans:
            if kind == 1:
                # token ids round-trip: the kept ids are a prefix of one sampled output
                assert any(s[: len(ids)] == ids for s in sampled), "policy ids were not kept as sampled"
                assert all(lp < 0 for lp in span_lps)
                obs, r, term, trunc, _ = env.step(tok.decode(ids, skip_special_tokens=True))
                reward += r
            else:
                obs_spans += 1
                assert ids == tok.encode(obs, add_special_tokens=False)[: len(ids)]
                assert all(lp == 0.0 for lp in span_lps)
        assert obs_spans >= 1  # multi-turn: at least one observation was masked out
        assert CORRECTIVE.strip()[:20] in tok.decode(resp) or "<information>" in tok.decode(resp)
        # rm_scores: the env reward at the last valid response token, zero elsewhere
        rm = out.batch["rm_scores"][b]
        assert float(rm[n - 1]) == pytest.approx(reward)
        assert float(rm.abs().sum()) == pytest.approx(abs(reward))
        assert float(sum(out.non_tensor_batch["turn_scores"][b])) == pytest.approx(reward)
        # prompt round-trip: the row's prompt is the env's reset prompt
        p_ids = out.batch["prompts"][b][out.batch["attention_mask"][b, :PROMPT_LEN].bool()].tolist()
        prompt_text = env.reset(options={"index": int(out.non_tensor_batch["question_index"][b])})[0]
        assert tok.decode(p_ids, skip_special_tokens=True) == prompt_text
    # env metrics and signature travel in the batch
    ended = out.non_tensor_batch["episode_ended"]
    sigs = out.non_tensor_batch["signature"]
    assert all((s is not None) == bool(e) for s, e in zip(sigs, ended))
    assert set(out.non_tensor_batch["env_id"]) == {ENV_ID}
    assert np.all(out.non_tensor_batch["__num_turns__"] >= 3)
    ENV_POOL.clear()


def test_export_rows_format(env_kwargs):
    import json

    from searchgym.training.verl_data import export_rows

    rows = export_rows(ENV_ID, split="validation", limit=2, env_kwargs=env_kwargs)
    assert len(rows) == 2
    r = rows[1]
    assert r["data_source"] == ENV_ID and r["agent_name"] == "searchgym_env"
    assert r["prompt"][0]["role"] == "user" and "Question:" in r["prompt"][0]["content"]
    assert r["reward_model"]["style"] == "rule" and r["reward_model"]["ground_truth"]["target"]
    assert r["extra_info"]["index"] == 1 and r["extra_info"]["split"] == "validation"
    assert json.loads(r["extra_info"]["env_kwargs"]) == env_kwargs
