"""One episode's data while it runs, and the ONE turn step every episode loop shares.

:class:`Trajectory` is an episode token-level and text-level; :class:`EpisodeRun` is a live
episode (its env, trajectory and running reward) with the turn step :meth:`EpisodeRun.record`
that the rollout engine (``searchgym.agents.rollout``), the text-policy loop
(``searchgym.agents.policy.run_text_policy``) and the verl agent loop all use: it appends the
env step to ``Trajectory.turns`` (:func:`turn_record`) and, on the step that ends the
episode, copies the env's final info into the trajectory (:func:`finish_from_info`).
:class:`EpisodeState` is what a text policy sees of a live episode. Everything here reads
only the env's ``info`` (the contract of ``searchgym.envs.SearchEnv.reset``/``step``).
"""

from __future__ import annotations

import collections.abc
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from searchgym.agents.record import EpisodeRecord
from searchgym.envs import step_batch as envs_step_batch


@dataclass
class EpisodeState:
    """What a text policy sees of one live episode."""

    prompt: str
    info: dict
    question: Any = None
    """The episode's ``Question`` record (``info["question_record"]``)."""
    turns: list[dict] = field(default_factory=list)
    episode_index: int = 0
    max_turns: int | None = None
    """The env's turn limit (``info["max_turns"]``)."""
    meta: dict = field(default_factory=dict)
    """Per-episode notes a policy keeps (scripted agents store ``scripted_strategy``)."""

    @property
    def observations(self) -> list[str]:
        """Observations returned for the searches so far, in order."""
        return [t["observation"] or "" for t in self.turns if t.get("kind") == "search"]


@dataclass
class Trajectory:
    """One episode, token-level and text-level.

    Response arrays (``response_ids``, ``loss_mask``, ``logprobs``, ``entropies``,
    ``segments``) have one entry per token after the prompt; ``loss_mask`` is 1 on policy
    tokens (sampled by the policy) and 0 on observation tokens, whose ``logprobs`` and
    ``entropies`` are 0. ``hidden_states`` (when requested) is ``[num_policy_tokens, d]``
    float32, in policy-token order. ``layer_states`` (with ``RolloutConfig.hidden_layer``)
    is ``[num_policy_tokens, d]`` float32 too: the state of layer ``hidden_layer`` (resolved
    index into an HF forward's ``hidden_states``) at each policy token's own position, and
    ``step_ids`` gives each policy token its reasoning step
    (``searchgym.metrics.graph.reasoning_step_ids``; -1 = in no step). ``turns`` holds
    one dict per env step (see :func:`turn_record`). Text policies (scripted, random) fill the text fields and leave the token
    arrays empty.
    """

    question_id: str
    group_id: Any
    sample_index: int
    prompt: str
    prompt_ids: list[int] = field(default_factory=list)
    response_ids: list[int] = field(default_factory=list)
    loss_mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    entropies: list[float] = field(default_factory=list)
    segments: list[str] = field(default_factory=list)
    hidden_states: np.ndarray | None = None
    layer_states: np.ndarray | None = None
    hidden_layer: int | None = None
    step_ids: list[int] | None = None
    turns: list[dict] = field(default_factory=list)
    reward: float = 0.0
    correct: bool | None = None
    answer: str | None = None
    signature: str | None = None
    strategy: str | None = None
    valid_strategies: list[str] | None = None
    golden_answers: list[str] | None = None
    family: str | None = None
    split: str | None = None
    terminated: bool = False
    truncated: bool = False
    budget_exhausted: bool = False
    policy: str = ""
    final_info: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    """Policy-side notes (e.g. ``scripted_strategy``: the strategy a scripted agent ran)."""

    # -- derived views -------------------------------------------------------------
    @property
    def num_policy_tokens(self) -> int:
        return int(sum(self.loss_mask))

    @property
    def num_obs_tokens(self) -> int:
        return len(self.loss_mask) - self.num_policy_tokens

    @property
    def queries(self) -> list[str]:
        return [t["query"] for t in self.turns if t.get("kind") == "search" and t.get("query") is not None]

    @property
    def doc_ids(self) -> list[list[str]]:
        return [list(t.get("doc_ids") or []) for t in self.turns if t.get("kind") == "search"]

    @property
    def num_searches(self) -> int:
        return len(self.queries)

    @property
    def format_errors(self) -> int:
        return sum(1 for t in self.turns if t.get("format_error"))

    @property
    def transcript(self) -> str:
        """Prompt, then each turn's action text and observation text, as the model saw it."""
        parts = [self.prompt]
        for t in self.turns:
            parts.append(t["action"])
            if t.get("observation"):
                parts.append(t["observation"])
        return "".join(parts)

    def to_record(self, include_tokens: bool = True) -> dict:
        """The eval JSONL line: :class:`~searchgym.agents.record.EpisodeRecord` JSON."""
        return EpisodeRecord.from_trajectory(self).to_json(include_tokens)

    def step_record(self) -> dict:
        """The reasoning-graph fields of the eval record: ``hidden_layer``, ``step_vectors``
        (one mean ``layer_states`` row per step, 6 decimals) and ``step_kinds`` (the
        segment of each step: think|query|answer)."""
        # metrics.graph loads scipy and networkx (+130 ms, python -X importtime): only
        # episodes with layer states need it
        from searchgym.metrics.graph import step_vectors_from_tokens

        pol = [s for s, m in zip(self.segments, self.loss_mask) if m]
        vecs, kinds = step_vectors_from_tokens(self.layer_states, self.step_ids, pol)
        return {"hidden_layer": self.hidden_layer,
                "step_vectors": np.round(vecs.astype(np.float64), 6).tolist(),
                "step_kinds": kinds}


def finish_from_info(traj: Trajectory, info: dict, reward_total: float, terminated: bool, truncated: bool) -> None:
    """Copy the env's end-of-episode info into the trajectory."""
    traj.reward = float(reward_total)
    traj.terminated, traj.truncated = bool(terminated), bool(truncated)
    traj.final_info = {k: v for k, v in info.items() if _jsonable(v)}
    traj.signature = _as_str(info.get("signature"))
    traj.strategy = info.get("strategy")
    if "correct" in info:
        traj.correct = bool(info["correct"])
    if traj.valid_strategies is None and info.get("valid_strategies") is not None:
        traj.valid_strategies = list(info["valid_strategies"])
    ans = [t.get("answer") for t in traj.turns if t.get("kind") == "answer"]
    traj.answer = ans[-1] if ans else None


def _as_str(sig) -> str | None:
    if sig is None or isinstance(sig, str):
        return sig
    if isinstance(sig, (list, tuple)):
        return "|".join(map(str, sig))
    return str(sig)


def _jsonable(v) -> bool:
    return isinstance(v, (str, int, float, bool, type(None), list, dict, tuple))


def turn_record(action: str, obs: str | None, info: dict, reward: float, **extra) -> dict:
    """One env step of a trajectory, as stored in ``Trajectory.turns``."""
    kind = info.get("action", "invalid")
    rec = {
        "action": action,
        "kind": kind,
        "query": info.get("query"),
        "doc_ids": list(info.get("doc_ids") or []),
        "answer": info.get("answer"),
        "format_error": bool(info.get("format_error", kind == "invalid")),
        "observation": obs,
        "reward": float(reward),
    }
    rec.update(extra)
    return rec


def question_of(info: dict):
    """The ``Question`` record of an episode (``info["question_record"]``; None if absent)."""
    return info.get("question_record")


def valid_strategy_names(info: dict) -> list[str] | None:
    """Names of the question's valid strategies (``info["valid_strategies"]``; None for
    questions without any)."""
    names = info.get("valid_strategies")
    return None if names is None else list(names)


def question_count(env) -> int:
    """How many questions ``env`` draws from (``info["num_questions"]`` of a reset; 0 when
    it has none, i.e. its reset with ``{"index": 0}`` refuses)."""
    try:
        _, info = env.reset(options={"index": 0})
    except ValueError:
        return 0
    return int(info["num_questions"])


class EnvQuestions(collections.abc.Sequence):
    """The ``Question`` records of ``env``'s question list, read through its info only:
    ``len`` is :func:`question_count`, item ``i`` is :func:`question_of` the info of
    ``env.reset(options={"index": i})``. Each item read resets ``env`` (cheap: no search,
    no model), so read it between episodes, never during one."""

    def __init__(self, env):
        self.env = env
        self._len = question_count(env)

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self._len))]
        if not -self._len <= i < self._len:
            raise IndexError(f"question index {i} out of range ({self._len} questions)")
        _, info = self.env.reset(options={"index": int(i) % self._len})
        return question_of(info)


def _list_or_none(x):
    return None if x is None else list(x)



@dataclass
class EpisodeRun:
    """One live episode: its env, :class:`Trajectory` and running reward.

    ``start`` builds the trajectory from the env's reset ``info``; ``record`` is the turn
    step (see the module doc). The loops differ only in how they produce the action and what
    they append of the observation (the engine tokenises it against a budget)."""

    env: Any
    traj: Trajectory
    reward_total: float = 0.0
    done: bool = False

    @classmethod
    def start(cls, env, prompt: str, info: dict, *, group_id: Any = None, episode_index: int = 0,
              policy: str = "", prompt_ids: Sequence[int] = ()) -> "EpisodeRun":
        """The run of an episode just reset (``prompt, info = env.reset(...)``); ``group_id``
        defaults to the question id, which defaults to ``episode_index``."""
        qid = str(info.get("question_id", episode_index))
        traj = Trajectory(
            question_id=qid, group_id=qid if group_id is None else group_id, sample_index=0, prompt=prompt,
            prompt_ids=list(prompt_ids), golden_answers=_list_or_none(info.get("golden_answers")),
            valid_strategies=valid_strategy_names(info), family=info.get("family"),
            split=info.get("split"), policy=policy)
        return cls(env, traj)

    def record(self, action: str, observation: str | None, reward: float, terminated: bool, truncated: bool,
               info: dict, *, end: bool = False, budget_exhausted: bool = False, **turn_fields) -> bool:
        """The turn step: add ``reward``, append the turn (``observation`` = the text appended
        to the context, None if none; ``turn_fields`` extend the turn dict), and end the
        episode when ``terminated``/``truncated`` or ``end`` (the caller's own limit;
        ``budget_exhausted`` is recorded unless the env ended it). Returns whether it ended."""
        self.reward_total += float(reward)
        self.traj.turns.append(turn_record(action, observation, info, reward, **turn_fields))
        if terminated or truncated or end:
            self.traj.budget_exhausted = bool(budget_exhausted) and not (terminated or truncated)
            finish_from_info(self.traj, info, self.reward_total, terminated, truncated)
            self.done = True
        return self.done

    def episode_record(self, **fields) -> EpisodeRecord:
        """The :class:`~searchgym.agents.record.EpisodeRecord` of the episode so far."""
        return EpisodeRecord.from_trajectory(self.traj, **fields)


def step_runs(runs: Sequence[EpisodeRun], actions: Sequence[str], step_batch: Callable | None = None) -> list[tuple]:
    """One batched env step of live runs: ``step_batch(envs, actions)`` (default
    ``searchgym.envs.step_batch``, one retriever call for all searches) -> ``(obs, reward,
    terminated, truncated, info)`` per run."""
    if len(actions) != len(runs):
        raise ValueError(f"{len(actions)} actions for {len(runs)} live episodes")
    return (step_batch or envs_step_batch)([r.env for r in runs], list(actions))

