"""SearchEnv, step_batch, the registry and user tasks, on the smoke world with BM25 (real index)."""

import json

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import searchgym
from searchgym.envs import (
    EnvConfig,
    SearchEnv,
    make,
    make_batch,
    match_strategy,
    oracle_query,
    register_task,
    run_oracle,
    step_batch,
    trajectory_signature,
)

IDS = ["searchgym/SingleHop-v0", "searchgym/MultiHop-v0", "searchgym/Comparison-v0",
       "searchgym/MultiAnswer-v0", "searchgym/Mixed-v0"]


@pytest.fixture()
def env(smoke_world):
    return make("searchgym/Mixed-v0", world_dir=smoke_world, retriever="bm25", split="train", max_turns=6).unwrapped


@pytest.mark.parametrize("env_id", IDS)
def test_check_env_every_id(env_id, smoke_world):
    e = make(env_id, world_dir=smoke_world, retriever="bm25")
    check_env(e.unwrapped, skip_render_check=True)
    obs, info = e.reset(seed=0)
    assert "Question:" in obs and info["split"] == "train"
    e.close()


def test_make_vec_runs_a_batch(smoke_world):
    v = gym.make_vec("searchgym/SingleHop-v0", num_envs=2, vectorization_mode="sync",
                     world_dir=smoke_world, retriever="bm25")
    obs, infos = v.reset(seed=1)
    assert len(obs) == 2
    obs, rew, term, trunc, infos = v.step(("<search>city</search>", "<answer>x</answer>"))
    assert len(rew) == 2 and not term[0] and term[1]
    v.close()


def test_reset_reproducible_and_episode(env):
    a, ia = env.reset(seed=7)
    b, ib = env.reset(seed=7)
    assert a == b and ia["question_id"] == ib["question_id"]
    q = env.question
    obs, r, term, trunc, info = env.step("<think>x</think><search>" + q.names[list(q.names)[0]][0] + "</search>")
    assert obs.startswith("\n<information>Doc 1(Title: ") and info["action"] == "search"
    assert len(info["doc_ids"]) == 3 and not term and not trunc
    obs, r, term, trunc, info = env.step("bad")
    assert info["format_error"] and "invalid" in obs and info["format_errors"] == 1
    obs, r, term, trunc, info = env.step(f"<answer>{q.golden_answers[0]}</answer>")
    assert term and r == 1.0 and info["correct"] and "|correct" in info["signature"]
    with pytest.raises(RuntimeError):
        env.step("<answer>x</answer>")


def test_truncation_penalty_and_f1(smoke_world):
    e = make("searchgym/SingleHop-v0", world_dir=smoke_world, retriever="bm25", max_turns=2,
             format_penalty=0.5, reward="f1").unwrapped
    e.reset(options={"index": 0})
    e.step("nothing")
    _, r, term, trunc, info = e.step("nothing")
    assert trunc and not term and info["signature"].endswith("|noanswer") and r == 0.0
    e.reset(options={"index": 0})
    e.step("oops")
    _, r, term, _, info = e.step(f"<answer>{e.question.golden_answers[0]}</answer>")
    assert term and r == pytest.approx(0.5)
    with pytest.raises(ValueError, match="index"):
        e.reset(options={"index": 10**6})
    with pytest.raises(ValueError, match="unknown EnvConfig"):
        make("searchgym/SingleHop-v0", world_dir=smoke_world, retriever="bm25", topkk=3)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=300), st.integers(0, 100_000), st.sampled_from(["", "<search>", "<answer>", "</search>"]))
def test_any_action_bounded_observation(env, text, n, tag):
    env.reset(seed=0)
    action = tag + text + "q" * n + text + "</search>"
    obs, r, term, trunc, info = env.step(action)
    assert len(obs) <= env.config.max_obs_chars and env.observation_space.contains(obs)
    assert len(obs) < 1200  # topk 3 x doc_chars 180 + titles


def test_step_batch_equals_sequential(smoke_world):
    envs = make_batch("searchgym/Mixed-v0", 6, world_dir=smoke_world, retriever="bm25")
    solo = make_batch("searchgym/Mixed-v0", 6, world_dir=smoke_world, retriever="bm25")
    assert len({id(e.retriever) for e in envs + solo}) == 1  # shared, memoised
    calls = []
    r = envs[0].retriever
    orig = r.search

    class Counting:
        def search(self, queries, k):
            calls.append(len(queries))
            return orig(queries, k)

    counting = Counting()
    for e in envs:
        e.retriever = counting
    for i, (a, b) in enumerate(zip(envs, solo)):
        a.reset(options={"index": i})
        b.reset(options={"index": i})
    turns = [["<search>city</search>", "<search>film</search>", "junk", "<answer>x</answer>",
              "<search>a</search><answer>b</answer>", "<search>Nobogas country</search>"],
             ["<search>founded</search>", "<search>born 1950</search>", "<search>x</search>", None,
              "<answer>y</answer>", "<answer>Rosar</answer>"]]
    for acts in turns:
        live = [i for i, a in enumerate(acts) if a is not None]
        batch = step_batch([envs[i] for i in live], [acts[i] for i in live])
        seq = [solo[i].step(acts[i]) for i in live]
        assert batch == seq
    assert calls == [4, 3]  # one retriever call per batched step (4, then 3 searches)


def test_oracle_and_signatures_bm25(env):
    # every strategy of the first question of each family runs; signatures parse
    seen = set()
    for i, q in enumerate(env.questions):
        if q.family in seen:
            continue
        seen.add(q.family)
        for s in q.strategies:
            res = run_oracle(env, i, s.name)
            assert res.signature.endswith(("|correct", "|wrong", "|noanswer"))
            assert match_strategy(q, res.signature) in {x.name for x in q.strategies} | {None}
    assert len(seen) == 4


def test_unmatched_episode_has_no_strategy(env):
    # answering without a search matches no valid strategy: the env says None, not a label
    env.reset(options={"index": 0})
    *_, term, _, info = env.step("<answer>nobody</answer>")
    assert term and info["signature"] == "|wrong" and info["strategy"] is None
    # the same question run by its own oracle strategy is labelled with that strategy
    q = env.questions[0]
    res = run_oracle(env, 0, q.strategies[0].name)
    assert res.matched and match_strategy(q, res.signature) == q.strategies[0].name


def test_signature_functions():
    from searchgym.envs.tasks import Question, Step, Strategy

    q = Question("q1", "In which country was A born?", ("K",), "multi_hop", 2, roles={
        "subject": ("E1",), "bridge": ("E2",), "answer": ("E3",)},
        names={"subject": ("A",), "bridge": ("C",), "answer": ("K",)},
        strategies=(Strategy("forward", (Step("subject", "{subject}"), Step("bridge", "{bridge}"))),
                    Strategy("combined", (Step("bridge", "hometown of {subject}"),))))
    sig = trajectory_signature(q, [["E1-0", "E2-1"], ["E9-0", "E1-2"], ["E2-0"]], "correct")
    assert sig == "subject>bridge|correct" and match_strategy(q, sig) == "forward"
    assert match_strategy(q, trajectory_signature(q, [["E9-0"], ["E2-3"]], "wrong")) == "combined"
    assert match_strategy(q, "answer|correct") is None
    assert match_strategy(q, "|noanswer") is None
    assert oracle_query(q, "forward", 1, []) is None  # the bridge is not yet seen
    assert oracle_query(q, "forward", 1, ["... city of C."]) == "C"
    ext = Question("x", "who wrote hamlet", ("Shakespeare",))
    s = trajectory_signature(ext, [["d1"], ["d1"], ["d2"]], "correct",
                             queries=["who wrote hamlet", "Hamlet play", "Avon town"], titles=[["Avon"], ["Hamlet"], ["X"]])
    assert s == "ext:q-q*-e|correct"
    assert match_strategy(ext, s) is None  # external questions have no strategies
    with pytest.raises(ValueError):
        trajectory_signature(q, [], "maybe")


def test_user_task_parquet_and_jsonl(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    corpus = tmp_path / "corpus.jsonl"
    docs = [("d1", "Paris", "Paris is the capital of France."), ("d2", "Berlin", "Berlin is the capital of Germany."),
            ("d3", "Rome", "Rome is the capital of Italy.")]
    corpus.write_text("".join(json.dumps({"id": i, "contents": f'"{t}"\n{b}'}) + "\n" for i, t, b in docs))
    rows = [{"data_source": "nq", "prompt": [{"role": "user", "content": "Answer... Question: capital of France?\n"}],
             "ability": "fact-reasoning", "reward_model": {"style": "rule", "ground_truth": {"target": ["Paris"]}},
             "extra_info": {"split": "train", "index": 0}}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "train.parquet")
    (tmp_path / "test.jsonl").write_text(json.dumps({"question": "capital of Italy?", "golden_answers": ["Rome"]}) + "\n")
    import os
    os.environ["SEARCHGYM_HOME"] = str(tmp_path / "home")
    try:
        tid = searchgym.register_task("TinyQA", qa={"train": tmp_path / "train.parquet", "test": tmp_path / "test.jsonl"},
                                      corpus_or_index=corpus)
        assert tid == "searchgym/TinyQA"
        for split, q, gold in (("train", "France", "Paris"), ("test", "Italy", "Rome")):
            e = searchgym.make(tid, split=split)
            obs, info = e.reset(seed=0)
            assert info["question"].startswith("capital of") and info["golden_answers"] == [gold]
            obs, *_ = e.step(f"<search>capital of {q}</search>")
            assert gold in obs
            _, r, term, _, info = e.step(f"<answer>{gold}</answer>")
            assert term and r == 1.0 and info["signature"].startswith("ext:q")
    finally:
        del os.environ["SEARCHGYM_HOME"]
    with pytest.raises(FileNotFoundError):
        register_task("Bad", qa=tmp_path / "none.jsonl", corpus_or_index=corpus)
    with pytest.raises(ValueError, match="no 'validation' split"):
        make(tid, split="validation")


def test_env_rejects_bad_args():
    with pytest.raises(ValueError):
        SearchEnv([], retriever=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="topk"):
        EnvConfig(topk=0)
    with pytest.raises(ValueError, match="unknown env id"):
        make("searchgym/Nope-v0")
