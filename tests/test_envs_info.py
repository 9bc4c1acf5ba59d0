"""The env's info contract (``ResetInfo``/``StepInfo``: every key, every step, typed) and
``step_batch`` over wrapped envs, on the smoke world with BM25 (real index)."""

from __future__ import annotations

import types
import typing

import gymnasium as gym
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from searchgym.envs import ResetInfo, StepInfo, make, make_batch, step_batch
from searchgym.envs.protocol import TAGS
from searchgym.envs.tasks import Question

RESET_KEYS = set(ResetInfo.__required_keys__)
STEP_KEYS = set(StepInfo.__required_keys__)


@pytest.fixture(scope="module")
def env(smoke_world):
    return make("searchgym/Mixed-v0", world_dir=smoke_world, retriever="bm25", max_turns=4).unwrapped


def _conforms(value, hint) -> bool:
    """isinstance for the annotation shapes the info types use."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return value in args
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(value, a) for a in args)
    if origin is list:
        return isinstance(value, list) and all(_conforms(v, args[0]) for v in value)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, float)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _check(info: dict, kind: type) -> None:
    hints = typing.get_type_hints(kind)
    assert set(info) == set(hints) == set(kind.__required_keys__)
    bad = {k: info[k] for k, h in hints.items() if not _conforms(info[k], h)}
    assert not bad, f"info values off their declared types: {bad}"


def _check_step(info: dict, reset: dict, ended: bool) -> None:
    _check(info, StepInfo)
    assert {k: info[k] for k in RESET_KEYS} == reset  # the episode keys keep their values
    kind = info["action"]
    assert (info["query"] is not None) == (kind == "search") and (info["answer"] is not None) == (kind == "answer")
    assert (info["score"] is not None) == (kind == "answer")
    assert info["format_error"] == (kind == "invalid") == (info["error"] is not None)
    if kind != "search":
        assert info["doc_ids"] == [] and info["surfaced"] == []
    assert len(info["surfaced"]) == len(info["doc_ids"])
    assert (info["signature"] is not None) == ended and (info["correct"] is not None) == ended
    if not ended:
        assert info["strategy"] is None
    elif info["strategy"] is not None:
        assert info["strategy"] in info["valid_strategies"]


def test_reset_info_has_every_key_typed(env):
    for i in (0, len(env.questions) - 1):
        _, info = env.reset(options={"index": i})
        _check(info, ResetInfo)
        q = env.questions[i]
        assert info["question_record"] is q and info["index"] == i and info["num_questions"] == len(env.questions)
        assert info["max_turns"] == 4 and info["valid_strategies"] == [s.name for s in q.strategies]
        assert info["question_id"] == q.qid and info["golden_answers"] == list(q.golden_answers)


def test_every_action_kind_has_the_same_keys(env):
    _, reset = env.reset(options={"index": 0})
    q = reset["question_record"]
    seen = set()
    for action in ("<search>" + next(iter(q.names.values()))[0] + "</search>", "no tags", "<search>a<answer>b</answer>",
                   f"<answer>{q.golden_answers[0]}</answer>"):
        obs, r, term, trunc, info = env.step(action)
        _check_step(info, reset, term or trunc)
        seen.add(info["action"])
    assert seen == {"search", "invalid", "answer"} and term and info["correct"] is True and info["score"] == 1.0
    assert info["signature"].endswith("|correct") and info["format_errors"] == 2 and info["turn"] == 4


def test_truncated_episode_info(env):
    _, reset = env.reset(options={"index": 1})
    for t in range(4):
        *_, term, trunc, info = env.step("<search>city</search>" if t % 2 else "junk")
        _check_step(info, reset, term or trunc)
    assert trunc and not term and info["correct"] is False and info["signature"].endswith("|noanswer")


_fragment = st.one_of(st.sampled_from(TAGS), st.text(max_size=8), st.sampled_from([" ", "\n", "x", "é", "\x00"]))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(_fragment, max_size=8).map("".join), min_size=1, max_size=5), st.integers(0, 10**6))
def test_any_actions_keep_the_contract(env, actions, seed):
    """Whatever the texts (tags in any order, malformed, empty), every info has every key,
    typed, with the neutral values of the keys that do not apply."""
    _, reset = env.reset(seed=seed)
    _check(reset, ResetInfo)
    for a in actions:
        *_, term, trunc, info = env.step(a)
        _check_step(info, reset, term or trunc)
        if term or trunc:
            break


def test_external_question_info(tmp_path, monkeypatch):
    import json

    from searchgym.envs.registry import register_task

    monkeypatch.setenv("SEARCHGYM_HOME", str(tmp_path / "home"))
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"d{i}", "contents": f'"T{i}"\nFact {i} is here.'}) + "\n"
                              for i in range(4)))
    qa = tmp_path / "qa.jsonl"
    qa.write_text(json.dumps({"question": "What is 2?", "golden_answers": ["2"]}) + "\n")
    e = make(register_task("InfoExt", qa=qa, corpus_or_index=corpus, persist=False)).unwrapped
    _, reset = e.reset(seed=0)
    _check(reset, ResetInfo)
    assert reset["valid_strategies"] is None and reset["family"] == "external"
    *_, info = e.step("<search>fact 2</search>")
    _check_step(info, reset, False)
    assert info["surfaced"] == [None] * len(info["doc_ids"]) and info["doc_ids"]
    *_, term, _, info = e.step("<answer>2</answer>")
    _check_step(info, reset, True)
    assert term and info["strategy"] is None and info["correct"] is True


def test_vector_env_infos_carry_the_keys(smoke_world):
    v = gym.make_vec("searchgym/SingleHop-v0", num_envs=2, vectorization_mode="sync", world_dir=smoke_world,
                     retriever="bm25")
    try:
        _, infos = v.reset(seed=0)
        assert RESET_KEYS <= set(infos)
        _, _, _, _, infos = v.step(("<search>city</search>", "junk"))
        assert STEP_KEYS <= set(infos) and list(infos["action"]) == ["search", "invalid"]
    finally:
        v.close()


# --------------------------------------------------------------------- step_batch + wrappers


class HalfReward(gym.RewardWrapper):
    def reward(self, reward):
        return reward / 2


class AnswerEverything(gym.ActionWrapper):
    """Rewrites the action before the base env sees it (so a preloaded search must not apply)."""

    def action(self, action):
        return action.replace("<search>", "<answer>").replace("</search>", "</answer>")


class CountingRetriever:
    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def search(self, queries, k):
        self.calls.append(len(queries))
        return self.inner.search(queries, k)


def _wrapped(smoke_world, wrap, n, counting):
    envs = []
    for base in make_batch("searchgym/Mixed-v0", n, world_dir=smoke_world, retriever="bm25", max_turns=3):
        base.retriever = counting
        envs.append(wrap(base))
    return envs


def test_step_batch_runs_the_wrappers(smoke_world):
    """A wrapped env's batched step equals stepping it alone: the reward wrapper halves the
    reward and the time limit truncates, in both; the batch still does one search call."""
    retriever = make_batch("searchgym/Mixed-v0", 1, world_dir=smoke_world, retriever="bm25")[0].retriever
    wrap = lambda e: gym.wrappers.TimeLimit(HalfReward(e), max_episode_steps=2)  # noqa: E731
    batched_count, solo_count = CountingRetriever(retriever), CountingRetriever(retriever)
    batched = _wrapped(smoke_world, wrap, 4, batched_count)
    solo = _wrapped(smoke_world, wrap, 4, solo_count)
    golds = []
    for i, (a, b) in enumerate(zip(batched, solo)):
        ra, rb = a.reset(options={"index": i}), b.reset(options={"index": i})
        assert ra == rb
        golds.append(ra[1]["golden_answers"][0])
    turns = [["<search>city</search>", "<search>film</search>", "junk", "<search>born</search>"],
             ["<search>founded</search>", f"<answer>{golds[1]}</answer>", "<search>a</search>", "<search>x</search>"]]
    for acts in turns:
        got = step_batch(batched, acts)
        assert got == [e.step(a) for e, a in zip(solo, acts)]
    assert batched_count.calls == [3, 3] and solo_count.calls == [1] * 6
    assert got[1][1] == 0.5 and got[1][2]  # the correct answer's 1.0, halved by the wrapper
    assert [r[3] for r in got] == [True] * 4  # TimeLimit(2) truncates at step 2 (max_turns is 3)


def test_step_batch_with_an_action_wrapper(smoke_world):
    """A wrapper that rewrites the action: the preloaded hits are for the raw query, so the
    base env ignores them; results still equal sequential steps (the batch's search is wasted)."""
    retriever = make_batch("searchgym/Mixed-v0", 1, world_dir=smoke_world, retriever="bm25")[0].retriever
    batched_count, solo_count = CountingRetriever(retriever), CountingRetriever(retriever)
    batched = _wrapped(smoke_world, AnswerEverything, 3, batched_count)
    solo = _wrapped(smoke_world, AnswerEverything, 3, solo_count)
    for i, (a, b) in enumerate(zip(batched, solo)):
        assert a.reset(options={"index": i}) == b.reset(options={"index": i})
    acts = ["<search>city</search>", "junk", "<search>film</search>"]
    got = step_batch(batched, acts)
    assert got == [e.step(a) for e, a in zip(solo, acts)]
    assert [r[-1]["action"] for r in got] == ["answer", "invalid", "answer"]
    assert batched_count.calls == [2] and solo_count.calls == []


def test_step_batch_refuses_a_finished_episode_before_stepping(env):
    env.reset(options={"index": 0})
    env.step("<answer>x</answer>")
    with pytest.raises(RuntimeError, match="finished episode"):
        step_batch([env], ["<search>x</search>"])
    with pytest.raises(ValueError, match="2 actions"):
        step_batch([env], ["a", "b"])


def test_preloaded_hits_answer_their_query_once(env):
    """Preloaded hits answer the next step's search of that query, and nothing else."""
    k = env.config.topk
    real = [h.doc_id for h in env.retriever.search(["city"], k)[0]]
    fake_hits = env.retriever.search(["film"], k)[0]
    fake = [h.doc_id for h in fake_hits]
    assert real != fake
    env.reset(options={"index": 0})
    env.preload_hits("film", fake_hits)
    assert env.step("<search>city</search>")[-1]["doc_ids"] == real  # another query: searched itself
    env.preload_hits("city", fake_hits)
    assert env.step("junk")[-1]["doc_ids"] == []  # a step that does not search drops them
    assert env.step("<search>city</search>")[-1]["doc_ids"] == real
    env.reset(options={"index": 0})
    env.preload_hits("city", fake_hits)
    env.reset(options={"index": 0})  # so does a reset
    assert env.step("<search>city</search>")[-1]["doc_ids"] == real
    env.preload_hits("city", fake_hits)
    assert env.step("<search>city</search>")[-1]["doc_ids"] == fake  # used: what step_batch relies on
    _, info = env.reset(options={"index": 0})
    assert isinstance(info["question_record"], Question)
