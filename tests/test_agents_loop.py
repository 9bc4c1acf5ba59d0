"""The shared turn step (EpisodeRun), the evaluation core and the env-info reads, on a real
smoke world with a BM25 index (fast: no model download, no GPU)."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def envs(smoke_world):
    from searchgym.agents.demos import world_envs

    return world_envs(smoke_world, "test", 4, index_kind="bm25", max_turns=3)


def test_episode_run_records_each_step_and_the_end(envs):
    from searchgym.agents.trajectory import EpisodeRun, question_count, question_of, step_runs

    env = envs[0]
    prompt, info = env.reset(options={"index": 1})
    assert question_of(info).qid == info["question_id"] and info["max_turns"] == 3
    run = EpisodeRun.start(env, prompt, info, episode_index=7, policy="p")
    assert run.traj.group_id == run.traj.question_id == info["question_id"]
    assert run.traj.valid_strategies == info["valid_strategies"]
    (obs, r, term, trunc, step_info), = step_runs([run], ["<search>x</search>"])
    assert not run.record("<search>x</search>", obs, r, term, trunc, step_info, stop="tag")
    assert run.traj.turns[-1]["kind"] == "search" and run.traj.turns[-1]["stop"] == "tag"
    (obs, r, term, trunc, step_info), = step_runs([run], ["no tags"])
    # the caller's own limit ends it (budget), the env did not
    assert run.record("no tags", None, r, term, trunc, step_info, end=True, budget_exhausted=True)
    assert run.done and run.traj.budget_exhausted and not run.traj.terminated
    assert run.traj.format_errors == 1 and run.traj.reward == pytest.approx(run.reward_total)
    rec = run.episode_record()
    assert rec.num_turns == 2 and rec.queries == ["x"] and rec.policy == "p"
    with pytest.raises(ValueError, match="1 actions for 2"):
        step_runs([run, run], ["a"])
    assert question_count(env) == info["num_questions"] > 1


def test_evaluation_core_restores_the_mode_even_on_error(envs):
    from searchgym.agents.policy import LMPolicy, RandomPolicy, evaluate_policy, evaluation_questions

    q = evaluation_questions(envs[0], 3)
    assert q == [0, 1, 2] and len(evaluation_questions(envs[0], 10_000)) == envs[0].reset()[1]["num_questions"]
    trajs = evaluate_policy(RandomPolicy(seed=0), envs, q, n=2)
    assert [t.group_id for t in trajs] == [0, 0, 1, 1, 2, 2] and [t.sample_index for t in trajs[:2]] == [0, 1]

    class Broken(LMPolicy):  # an engine that fails mid-evaluation
        def __init__(self, model):
            self.model, self.name = model, "broken"
            self.engine = self

        def rollout_questions(self, *a, **k):
            assert not self.model.training
            raise RuntimeError("boom")

    model = torch.nn.Linear(2, 2)
    model.train()
    with pytest.raises(RuntimeError, match="boom"):
        evaluate_policy(Broken(model), envs, q)
    assert model.training


def test_env_questions_are_read_through_the_info(envs):
    from searchgym.agents.trajectory import EnvQuestions, question_count
    from searchgym.training.verl_data import VerlBackendError, locate_row_question

    env = envs[0]
    qs = EnvQuestions(env)
    truth = env.unwrapped.questions  # the test may look inside; the reader may not
    assert len(qs) == question_count(env) == len(truth) > 2
    assert [q.qid for q in qs] == [q.qid for q in truth] and qs[-1] is truth[-1] and qs[1:3] == truth[1:3]
    with pytest.raises(IndexError):
        qs[len(qs)]
    q = truth[2]
    row = {"extra_info": {"question": q.question}, "reward_model": {"ground_truth": {"target": list(q.golden_answers)}}}
    assert locate_row_question(qs, row, 2) == 2
    assert locate_row_question(qs, row, 0) == 2  # wrong index: found by question text + answers
    with pytest.raises(VerlBackendError, match="no question matches"):
        locate_row_question(qs, dict(row, reward_model={"ground_truth": {"target": ["Nobody at all"]}}), 2)
