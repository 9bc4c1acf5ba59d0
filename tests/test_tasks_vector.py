"""Vector envs with gymnasium's default settings: ``make_vec`` in sync and async mode
(async: worker processes, shared memory on) gives each sub-env's own observations."""

from __future__ import annotations

import gymnasium as gym
import pytest

import searchgym.envs  # noqa: F401
from searchgym.envs.registry import WORLD_TASKS

KW = {"preset": "smoke", "retriever": "bm25"}
ACTIONS = [["<search> capital </search>", "<search> born </search>"],
           ["<answer> nobody </answer>", "<search> founder of </search>"]]


@pytest.fixture(scope="module", autouse=True)
def home(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("SEARCHGYM_HOME", str(tmp_path_factory.mktemp("home")))
    yield
    mp.undo()


def _reference(env_id: str, kw: dict) -> list[list]:
    """What each sub-env must show: single envs seeded like the vector env seeds them."""
    out = []
    for i in range(2):
        env = gym.make(env_id, **kw)
        obs, _ = env.reset(seed=i)
        seq = [obs]
        done = False
        for step in ACTIONS:
            if done:
                break
            o, r, term, trunc, _ = env.step(step[i])
            seq.append((o, r, term))
            done = term or trunc
        out.append(seq)
    return out


def _run_vec(env_id: str, mode: str, kw: dict) -> list[list]:
    vec = gym.make_vec(env_id, num_envs=2, vectorization_mode=mode, **kw)
    try:
        obs, _ = vec.reset(seed=0)
        assert isinstance(obs, tuple) and all(isinstance(o, str) for o in obs)
        seqs = [[obs[0]], [obs[1]]]
        done = [False, False]
        for step in ACTIONS:
            o, r, term, trunc, _ = vec.step(list(step))
            for i in range(2):
                if not done[i]:
                    seqs[i].append((o[i], float(r[i]), bool(term[i])))
                    done[i] = bool(term[i] or trunc[i])
    finally:
        vec.close()
    return seqs


# async starts worker processes (~7 s each on 2 cores): one id in the fast suite, all in slow
CASES = [(name, mode) if (mode == "sync" or name == "SingleHop-v0") else pytest.param(name, mode, marks=pytest.mark.slow)
         for name in sorted(WORLD_TASKS) for mode in ("sync", "async")]


@pytest.mark.parametrize("name, mode", CASES)
def test_make_vec_default_settings(name, mode):
    env_id = f"searchgym/{name}"
    got = _run_vec(env_id, mode, KW)
    assert got == _reference(env_id, KW)
    assert all(seq[0].startswith("Answer the question") for seq in got)  # not tab characters


@pytest.mark.slow
def test_make_vec_async_user_task(tmp_path):
    import json

    from searchgym.envs.registry import register_task

    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"d{i}", "contents": f'"Doc {i}"\nThe capital number {i} is born here.'})
                              + "\n" for i in range(5)))
    qa = tmp_path / "qa.jsonl"
    qa.write_text("".join(json.dumps({"question": f"What is {i}?", "golden_answers": [str(i)]}) + "\n" for i in range(4)))
    env_id = register_task("VecTask", qa=qa, corpus_or_index=corpus)
    got = _run_vec(env_id, "async", {})
    assert got == _reference(env_id, {})
