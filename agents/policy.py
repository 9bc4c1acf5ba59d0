"""Policies and the evaluation loop.

A text-level :class:`Policy` maps the states of a batch of live episodes to one action
string each (scripted strategy agents, the random agent). :class:`LMPolicy` wraps an HF
causal LM and runs through the token-level :class:`RolloutEngine`. ``run_policy`` drives
either kind over envs with one ``step_batch`` call per turn and returns
:class:`Trajectory` records; ``evaluate_policy`` is the one evaluation core (every
evaluation of the project runs through it); ``evaluate`` adds the JSONL output and the
summary.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Callable, Protocol, Sequence, runtime_checkable

from searchgym.agents.model import load_model
from searchgym.agents.rollout import RolloutConfig, RolloutEngine
from searchgym.agents.scripted import ScriptedPolicy
from searchgym.agents.trajectory import EpisodeRun, EpisodeState, Trajectory, question_count, question_of, step_runs
from searchgym.envs import make_batch
from searchgym.envs.protocol import ANSWER, SEARCH, tagged
from searchgym.retrieval.fileio import atomic_write_text


@runtime_checkable
class Policy(Protocol):
    """A text-level policy: one action string per live episode."""

    name: str

    def act(self, states: Sequence[EpisodeState]) -> list[str]: ...


class RandomPolicy:
    """Uniformly random behaviour: a search with random question words, an answer with a
    random word, or untagged text. A floor for every metric."""

    name = "random"

    def __init__(self, seed: int = 0):
        self.seed = seed

    def act(self, states: Sequence[EpisodeState]) -> list[str]:
        out = []
        for s in states:
            rng = random.Random(f"{self.seed}/{s.episode_index}/{len(s.turns)}")
            words = s.info.get("question", s.prompt).replace("?", " ").split() or ["x"]
            pick = rng.random()
            text = " ".join(rng.choice(words) for _ in range(rng.randint(1, 4)))
            if pick < 0.5:
                out.append(tagged(SEARCH, text))
            elif pick < 0.8:
                out.append(tagged(ANSWER, rng.choice(words)))
            else:
                out.append(text)
        return out


class LMPolicy:
    """An HF causal LM behind the batched :class:`RolloutEngine`."""

    def __init__(self, model, tokenizer, config: RolloutConfig | None = None, name: str = "",
                 step_batch: Callable | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.name = name or getattr(model, "name_or_path", "") or "lm"
        self.engine = RolloutEngine(model, tokenizer, config, step_batch=step_batch)

    @classmethod
    def from_path(cls, path: str | Path, config: RolloutConfig | None = None) -> "LMPolicy":
        model, tok = load_model(path)
        return cls(model, tok, config, name=str(path))

    def act(self, states: Sequence[EpisodeState]) -> list[str]:
        raise TypeError("LMPolicy generates token-level through run_policy/RolloutEngine, not act()")


def run_text_policy(policy: Policy, envs: Sequence, reset_options: Sequence[dict | None],
                    group_ids: Sequence | None = None, episode_indices: Sequence[int] | None = None,
                    step_batch: Callable | None = None) -> list[Trajectory]:
    """Run one episode per env with a text policy; one ``step_batch`` call per turn
    (:func:`~searchgym.agents.trajectory.step_runs`, the turn step of every loop)."""
    n = len(envs)
    episode_indices = list(episode_indices) if episode_indices is not None else list(range(n))
    name = getattr(policy, "name", type(policy).__name__)
    runs, states = [], []
    for i, env in enumerate(envs):
        prompt, info = env.reset(options=reset_options[i])
        run = EpisodeRun.start(env, prompt, info, group_id=None if group_ids is None else group_ids[i],
                               episode_index=episode_indices[i], policy=name)
        # the policy's notes are the trajectory's meta; its turns are the trajectory's turns
        states.append(EpisodeState(prompt, dict(info), question_of(info), run.traj.turns, episode_indices[i],
                                   max_turns=info.get("max_turns"), meta=run.traj.meta))
        runs.append(run)
    live = list(range(n))
    while live:
        actions = policy.act([states[i] for i in live])
        if len(actions) != len(live):
            raise ValueError(f"policy {policy.name!r} returned {len(actions)} actions for {len(live)} episodes")
        results = step_runs([runs[i] for i in live], actions, step_batch)
        live = [i for i, action, (obs, reward, term, trunc, info) in zip(live, actions, results)
                if not runs[i].record(action, None if (term or trunc) else obs, reward, term, trunc, info)]
    return [r.traj for r in runs]


def run_policy(policy, envs: Sequence, question_indices: Sequence[int], n: int = 1,
               step_batch: Callable | None = None) -> list[Trajectory]:
    """``n`` episodes of each question with any policy, in batches of ``len(envs)``.

    Trajectories are grouped by question (``group_id`` = question index)."""
    if isinstance(policy, LMPolicy):
        return policy.engine.rollout_questions(envs, question_indices, n=n)
    jobs = [(int(q), j) for q in question_indices for j in range(n)]
    out: list[Trajectory] = []
    bs = len(envs)
    if bs < 1:
        raise ValueError("run_policy needs at least one env")
    for s in range(0, len(jobs), bs):
        chunk = jobs[s:s + bs]
        trajs = run_text_policy(policy, list(envs[:len(chunk)]), [{"index": q} for q, _ in chunk],
                                group_ids=[q for q, _ in chunk],
                                episode_indices=[s + i for i in range(len(chunk))], step_batch=step_batch)
        for t, (_, j) in zip(trajs, chunk):
            t.sample_index = j
        out += trajs
    return out


def summarize(trajs: Sequence[Trajectory]) -> dict[str, float]:
    """Accuracy, mean reward, format-error rate (share of episodes with >= 1), searches
    per episode, mean policy tokens."""
    n = max(1, len(trajs))
    return {
        "episodes": len(trajs),
        "accuracy": sum(bool(t.correct) for t in trajs) / n,
        "reward_mean": sum(t.reward for t in trajs) / n,
        "format_error_rate": sum(t.format_errors > 0 for t in trajs) / n,
        "searches_per_episode": sum(t.num_searches for t in trajs) / n,
        "policy_tokens_per_episode": sum(t.num_policy_tokens for t in trajs) / n,
    }


def make_policy(spec: str, config: RolloutConfig | None = None, seed: int = 0):
    """``random`` | ``scripted:NAME`` (a strategy name, ``canonical`` or ``mixture``) | a
    model folder path."""
    if spec == "random":
        return RandomPolicy(seed=seed)
    if spec.startswith("scripted:"):
        return ScriptedPolicy(spec.split(":", 1)[1], seed=seed)
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"--policy {spec!r}: not 'random', 'scripted:NAME' or an existing model folder")
    return LMPolicy.from_path(path, config or RolloutConfig(greedy=True))


def evaluate_policy(policy, envs: Sequence, questions: Sequence[int], n: int = 1) -> list[Trajectory]:
    """The evaluation core, shared by ``evaluate`` (the CLI), ``training.common.evaluate``
    (the trainers' greedy validation) and ``searchgym.evaluation.evaluate_fixed`` (the
    experiment's measured evaluation): ``n`` episodes of each of ``questions`` by ``policy``
    on ``envs`` (:func:`run_policy`). An :class:`LMPolicy`'s model runs in eval mode (the
    engine generates under ``torch.inference_mode``); its train/eval mode is restored, even
    on error. What a caller measures on the trajectories is its own."""
    model = policy.model if isinstance(policy, LMPolicy) else None
    was_training = bool(model is not None and model.training)
    if model is not None:
        model.eval()
    try:
        return run_policy(policy, envs, questions, n=n)
    finally:
        if model is not None:
            model.train(was_training)


def evaluation_questions(env, num_questions: int) -> list[int]:
    """The first ``num_questions`` question indices of ``env`` (fewer if it has fewer)."""
    return list(range(min(int(num_questions), question_count(env))))


def evaluate(policy, env_id: str, split: str = "test", num_questions: int = 100, n: int = 1,
             batch_size: int = 64, out: str | Path | None = None, env_kwargs: dict | None = None,
             ) -> tuple[list[Trajectory], dict]:
    """Run ``policy`` on the first ``num_questions`` questions of ``split`` of ``env_id``
    (:func:`evaluate_policy`); write one episode record (JSONL) per episode to ``out``
    (atomically) and return (trajectories, summary)."""
    envs = make_batch(env_id, max(1, batch_size), split=split, **(env_kwargs or {}))
    q = evaluation_questions(envs[0], num_questions)
    if not q:
        raise ValueError(f"{env_id} has no questions in split {split!r}")
    envs = envs[:max(1, min(len(envs), len(q) * n))]
    trajs = evaluate_policy(policy, envs, q, n=n)
    summary = summarize(trajs)
    if out is not None:
        atomic_write_text(out, "".join(json.dumps(t.to_record(), ensure_ascii=False) + "\n" for t in trajs))
    return trajs, summary
