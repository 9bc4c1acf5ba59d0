"""Policies and the evaluation loop.

A text-level :class:`Policy` maps the states of a batch of live episodes to one action
string each (scripted strategy agents, the random agent). :class:`LMPolicy` wraps an HF
causal LM and runs through the token-level :class:`RolloutEngine`. ``run_policy`` drives
either kind over envs with one ``step_batch`` call per turn and returns
:class:`Trajectory` records; ``evaluate`` adds the JSONL output and the summary.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

from searchgym.agents.rollout import (
    RolloutConfig,
    RolloutEngine,
    Trajectory,
    default_step_batch,
    finish_from_info,
    question_of,
    valid_strategy_names,
    turn_record,
)


@dataclass
class EpisodeState:
    """What a text policy sees of one live episode."""

    prompt: str
    info: dict
    question: Any = None
    """The env's ``Question`` record when the env exposes it (``env.unwrapped.questions``)."""
    turns: list[dict] = field(default_factory=list)
    episode_index: int = 0
    max_turns: int | None = None
    """The env's turn limit when known (``env.unwrapped.config.max_turns``)."""
    meta: dict = field(default_factory=dict)
    """Per-episode notes a policy keeps (scripted agents store ``scripted_strategy``)."""

    @property
    def observations(self) -> list[str]:
        """Observations returned for the searches so far, in order."""
        return [t["observation"] or "" for t in self.turns if t.get("kind") == "search"]


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
                out.append(f"<search>{text}</search>")
            elif pick < 0.8:
                out.append(f"<answer>{rng.choice(words)}</answer>")
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
        from searchgym.agents.model import load_model

        model, tok = load_model(path)
        return cls(model, tok, config, name=str(path))

    def act(self, states: Sequence[EpisodeState]) -> list[str]:
        raise TypeError("LMPolicy generates token-level through run_policy/RolloutEngine, not act()")


def run_text_policy(policy: Policy, envs: Sequence, reset_options: Sequence[dict | None],
                    group_ids: Sequence | None = None, episode_indices: Sequence[int] | None = None,
                    step_batch: Callable | None = None) -> list[Trajectory]:
    """Run one episode per env with a text policy; one ``step_batch`` call per turn."""
    step_batch = step_batch or default_step_batch
    n = len(envs)
    episode_indices = list(episode_indices) if episode_indices is not None else list(range(n))
    states, trajs = [], []
    for i, env in enumerate(envs):
        prompt, info = env.reset(options=reset_options[i])
        qid = str(info.get("question_id", i))
        q = question_of(env, info)
        mt = getattr(getattr(getattr(env, "unwrapped", env), "config", None), "max_turns", None)
        states.append(EpisodeState(prompt, dict(info), q, [], episode_indices[i], max_turns=mt))
        trajs_meta = states[-1].meta
        valid = valid_strategy_names(env, info)
        trajs.append(Trajectory(
            question_id=qid, group_id=group_ids[i] if group_ids is not None else qid, sample_index=0,
            prompt=prompt, golden_answers=_listify(info.get("golden_answers")),
            valid_strategies=valid, family=info.get("family"), split=info.get("split"),
            policy=getattr(policy, "name", type(policy).__name__), meta=trajs_meta))
    rewards = [0.0] * n
    live = list(range(n))
    while live:
        actions = policy.act([states[i] for i in live])
        if len(actions) != len(live):
            raise ValueError(f"policy {policy.name!r} returned {len(actions)} actions for {len(live)} episodes")
        results = step_batch([envs[i] for i in live], actions)
        still = []
        for i, action, (obs, reward, term, trunc, info) in zip(live, actions, results):
            rewards[i] += float(reward)
            ended = term or trunc
            rec = turn_record(action, None if ended else obs, info, reward)
            trajs[i].turns.append(rec)
            states[i].turns.append(rec)
            if ended:
                finish_from_info(trajs[i], info, rewards[i], term, trunc)
            else:
                still.append(i)
        live = still
    return trajs


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
        from searchgym.agents.scripted import ScriptedPolicy

        return ScriptedPolicy(spec.split(":", 1)[1], seed=seed)
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"--policy {spec!r}: not 'random', 'scripted:NAME' or an existing model folder")
    return LMPolicy.from_path(path, config or RolloutConfig(greedy=True))


def evaluate(policy, env_id: str, split: str = "test", num_questions: int = 100, n: int = 1,
             batch_size: int = 64, out: str | Path | None = None, env_kwargs: dict | None = None,
             ) -> tuple[list[Trajectory], dict]:
    """Run ``policy`` on the first ``num_questions`` questions of ``split`` of ``env_id``;
    write one JSONL record per episode to ``out`` (atomically) and return (trajectories,
    summary)."""
    import json

    from searchgym.envs import make_batch
    from searchgym.retrieval.fileio import atomic_write_text

    envs = make_batch(env_id, max(1, batch_size), split=split, **(env_kwargs or {}))
    total = len(envs[0].unwrapped.questions)
    if total == 0:
        raise ValueError(f"{env_id} has no questions in split {split!r}")
    q = list(range(min(num_questions, total)))
    envs = envs[:max(1, min(len(envs), len(q) * n))]
    trajs = run_policy(policy, envs, q, n=n)
    summary = summarize(trajs)
    if out is not None:
        atomic_write_text(out, "".join(json.dumps(t.to_record(), ensure_ascii=False) + "\n" for t in trajs))
    return trajs, summary


def _listify(x):
    return None if x is None else list(x)
