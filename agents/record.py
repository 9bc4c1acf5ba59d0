"""The episode record: ONE shape for an episode on disk and in the metrics.

Every producer of episodes writes :class:`EpisodeRecord`: the rollout engine and the text
policies (via :meth:`EpisodeRecord.from_trajectory`), the demonstration sets
(``searchgym.agents.demos``), the experiment's evaluation (``searchgym.evaluation``) and the
verl agent loop. Readers go through :meth:`EpisodeRecord.from_json`, which also accepts the
two shapes written before the record was versioned (``schema_version`` absent = version 0):
the eval lines of ``Trajectory.to_record`` and the demonstration lines, whose ``strategy``
was the scripted strategy run and ``env_strategy`` the env's label.

Field names are those of the metrics contract (``searchgym.metrics.summarize_rollouts``):
``group``, ``correct``, ``signature``, ``strategy`` (the env's matched valid strategy),
``queries``, ``entropies``, ... The JSON schema is ``agents/episode_record.schema.json``
(kept equal to :func:`json_schema`, tested).

JSON (``to_json``): the core fields are always present (``null`` when unknown); the
optional groups are present only when recorded: demo fields (``kind``, ``world``,
``num_tokens``), verl fields (``env_id``, ``question_index``), ``meta``, the reasoning-step
fields (``hidden_layer``, ``step_vectors``, ``step_kinds``) and the token arrays
(``prompt_ids``, ``response_ids``, ``loss_mask``, ``logprobs``, ``entropies``, ``segments``;
log-probs and entropies rounded to 6 decimals). Hidden states never go to JSON.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Version of the on-disk shape written by :meth:`EpisodeRecord.to_json`.
SCHEMA_VERSION = 1

#: Token arrays: written together, only for token-level episodes.
TOKEN_FIELDS = ("prompt_ids", "response_ids", "loss_mask", "logprobs", "entropies", "segments")
#: Reasoning-step fields (``RolloutConfig.hidden_layer`` set).
STEP_FIELDS = ("hidden_layer", "step_vectors", "step_kinds")
#: Fields written only when set (not None).
OPTIONAL_FIELDS = ("kind", "world", "num_tokens", "env_id", "question_index") + STEP_FIELDS
#: Never written to JSON (arrays for the metrics only).
MEMORY_FIELDS = ("hidden_states",)

SCHEMA_PATH = Path(__file__).with_name("episode_record.schema.json")


@dataclass
class EpisodeRecord:
    """One episode (see the module doc for which fields JSON always carries).

    ``turns`` holds one dict per env step: ``{action, kind: search|answer|invalid, query,
    doc_ids, answer, format_error, observation (text appended to the context, None if not),
    reward}``, plus ``stop: tag|eos|budget, num_policy_tokens, num_obs_tokens`` from the
    token-level engine. Demonstrations from before version 1 carry only ``{action,
    observation}``.
    """

    question_id: str
    group: Any = None
    sample_index: int = 0
    policy: str = ""
    family: str | None = None
    split: str | None = None
    prompt: str = ""
    reward: float = 0.0
    correct: bool | None = None
    answer: str | None = None
    golden_answers: list[str] | None = None
    signature: str | None = None
    strategy: str | None = None
    """The env's matched valid strategy (None = none matched)."""
    valid_strategies: list[str] | None = None
    queries: list[str] = field(default_factory=list)
    doc_ids: list[list[str]] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    turns: list[dict] = field(default_factory=list)
    num_turns: int = 0
    num_searches: int = 0
    format_errors: int = 0
    terminated: bool = False
    truncated: bool = False
    budget_exhausted: bool = False
    num_prompt_tokens: int = 0
    num_policy_tokens: int = 0
    """Policy tokens: ``sum(loss_mask)`` for token-level episodes; a demonstration's count
    by its tokenizer (else words/punctuation/tags)."""
    num_obs_tokens: int = 0
    transcript: str = ""
    """Prompt, then each turn's action and observation text, as the policy saw it."""
    meta: dict = field(default_factory=dict)
    """Policy-side notes (``scripted_strategy``: the strategy a scripted agent ran)."""
    # -- optional groups -----------------------------------------------------------
    kind: str | None = None
    """Demonstration set (``narrow``|``diverse``)."""
    world: str | None = None
    """``envs.world.world_fingerprint`` of the world a demonstration was played in."""
    num_tokens: int | None = None
    """A demonstration's prompt + response token count (same counter as ``num_policy_tokens``)."""
    env_id: str | None = None
    question_index: int | None = None
    hidden_layer: int | None = None
    step_vectors: list | None = None
    step_kinds: list[str] | None = None
    prompt_ids: list[int] = field(default_factory=list)
    response_ids: list[int] = field(default_factory=list)
    loss_mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    entropies: list[float] = field(default_factory=list)
    segments: list[str] = field(default_factory=list)
    hidden_states: Any = None
    """``[num_policy_tokens, d]`` final-norm states (in memory only, for the metrics)."""
    schema_version: int = SCHEMA_VERSION

    # -- producers -----------------------------------------------------------------
    @classmethod
    def from_trajectory(cls, traj, *, hidden_states=None, with_steps: bool = True, **extra) -> "EpisodeRecord":
        """The record of an agents ``Trajectory``. ``hidden_states`` replaces the
        trajectory's own (e.g. another model's on the same tokens); ``with_steps=False``
        skips the reasoning-step vectors; ``extra`` sets further fields (``kind``, ...)."""
        steps = {}
        if with_steps and traj.layer_states is not None and traj.step_ids is not None:
            steps = traj.step_record()
        return cls(
            question_id=traj.question_id, group=traj.group_id, sample_index=traj.sample_index,
            policy=traj.policy, family=traj.family, split=traj.split, prompt=traj.prompt,
            reward=float(traj.reward), correct=traj.correct, answer=traj.answer,
            golden_answers=traj.golden_answers, signature=traj.signature, strategy=traj.strategy,
            valid_strategies=traj.valid_strategies, queries=traj.queries, doc_ids=traj.doc_ids,
            actions=[t["action"] for t in traj.turns], turns=traj.turns, num_turns=len(traj.turns),
            num_searches=traj.num_searches, format_errors=traj.format_errors,
            terminated=traj.terminated, truncated=traj.truncated, budget_exhausted=traj.budget_exhausted,
            num_prompt_tokens=len(traj.prompt_ids), num_policy_tokens=traj.num_policy_tokens,
            num_obs_tokens=traj.num_obs_tokens, transcript=traj.transcript, meta=dict(traj.meta),
            prompt_ids=traj.prompt_ids, response_ids=traj.response_ids, loss_mask=traj.loss_mask,
            logprobs=traj.logprobs, entropies=traj.entropies, segments=traj.segments,
            hidden_states=traj.hidden_states if hidden_states is None else hidden_states,
            **steps, **extra)

    # -- views ---------------------------------------------------------------------
    @property
    def policy_token_ids(self) -> list[int]:
        """The sampled token of each policy position (``response_ids`` at ``loss_mask`` 1)."""
        return [int(t) for t, m in zip(self.response_ids, self.loss_mask) if m]

    def to_json(self, include_tokens: bool = True) -> dict:
        """The JSONL line (version :data:`SCHEMA_VERSION`; see the module doc)."""
        skip = set(OPTIONAL_FIELDS) | set(TOKEN_FIELDS) | set(MEMORY_FIELDS) | {"meta", "schema_version"}
        rec: dict[str, Any] = {"schema_version": SCHEMA_VERSION}
        rec.update((f.name, getattr(self, f.name)) for f in dataclasses.fields(self) if f.name not in skip)
        rec["reward"] = float(self.reward)
        if self.meta:
            rec["meta"] = dict(self.meta)
        rec.update((k, getattr(self, k)) for k in OPTIONAL_FIELDS if getattr(self, k) is not None)
        if include_tokens and self.response_ids:
            rec.update(prompt_ids=list(self.prompt_ids), response_ids=list(self.response_ids),
                       loss_mask=list(self.loss_mask),
                       logprobs=[round(float(x), 6) for x in self.logprobs],
                       entropies=[round(float(x), 6) for x in self.entropies],
                       segments=list(self.segments))
        return rec

    def metric_fields(self) -> dict:
        """What ``searchgym.metrics.summarize_rollouts`` reads, at full precision (token
        entropies unrounded, ``hidden_states`` as arrays, ``text`` = the transcript)."""
        rec = {
            "question_id": self.question_id, "group": self.group, "sample_index": self.sample_index,
            "reward": float(self.reward), "correct": self.correct, "answer": self.answer,
            "golden_answers": self.golden_answers, "signature": self.signature, "strategy": self.strategy,
            "valid_strategies": self.valid_strategies, "queries": self.queries,
            "format_errors": self.format_errors, "num_searches": self.num_searches,
            "entropies": list(self.entropies), "loss_mask": list(self.loss_mask),
            "text": self.transcript, "policy_token_ids": self.policy_token_ids,
        }
        if self.segments:
            rec["segments"] = list(self.segments)
        h = self.hidden_states
        if h is not None and len(h):
            rec["hidden_states"] = h
        return rec

    # -- reader --------------------------------------------------------------------
    @classmethod
    def from_json(cls, obj: dict) -> "EpisodeRecord":
        """A record from its JSON line: version 1, or a version-0 eval or demonstration line.

        Unknown keys are ignored (a newer writer's additions); a non-object, a missing
        ``question_id`` or an unknown ``schema_version`` raises ValueError naming it."""
        if not isinstance(obj, dict):
            raise ValueError(f"an episode record is a JSON object, got {type(obj).__name__}")
        version = obj.get("schema_version", 0)
        if version not in (0, SCHEMA_VERSION):
            raise ValueError(f"episode record schema_version {version!r} is unknown "
                             f"(this searchgym reads 0 and {SCHEMA_VERSION})")
        if "question_id" not in obj:
            raise ValueError("an episode record needs 'question_id'")
        data = dict(obj)
        if version == 0:
            data = _upgrade_v0(data)
        names = {f.name for f in dataclasses.fields(cls)} - set(MEMORY_FIELDS)
        kw = {k: v for k, v in data.items() if k in names}
        kw["schema_version"] = SCHEMA_VERSION
        kw["question_id"] = str(kw["question_id"])
        return cls(**kw)


def _upgrade_v0(data: dict) -> dict:
    """Version 0 -> 1: demonstration lines named the scripted strategy ``strategy`` and the
    env's label ``env_strategy``; neither kind of line wrote ``prompt`` (eval) or the
    derived counts (demos), which are recomputed from ``turns``."""
    if "env_strategy" in data:  # a demonstration line
        meta = dict(data.get("meta") or {})
        if data.get("strategy") is not None:
            meta.setdefault("scripted_strategy", data["strategy"])
        data["meta"] = meta
        data["strategy"] = data.pop("env_strategy")
    turns = data.get("turns") or []
    if isinstance(turns, list) and all(isinstance(t, dict) for t in turns):
        data.setdefault("actions", [t.get("action") for t in turns])
        data.setdefault("num_turns", len(turns))
        if "prompt" in data:
            data.setdefault("transcript", data["prompt"] + "".join(
                (t.get("action") or "") + (t.get("observation") or "") for t in turns))
    queries = data.get("queries")
    if isinstance(queries, list):
        data.setdefault("num_searches", len(queries))
    return data


def read_records(lines) -> list[EpisodeRecord]:
    """Records from parsed JSONL lines (each through :meth:`EpisodeRecord.from_json`)."""
    return [EpisodeRecord.from_json(obj) for obj in lines]


_JSON_TYPES = {int: "integer", float: "number", str: "string", bool: "boolean", dict: "object", list: "array"}


def json_schema() -> dict:
    """JSON Schema (draft 2020-12) of the version-1 line written by :meth:`EpisodeRecord.to_json`."""
    hints = typing.get_type_hints(EpisodeRecord)
    props: dict[str, dict] = {}
    for f in dataclasses.fields(EpisodeRecord):
        if f.name in MEMORY_FIELDS:
            continue
        props[f.name] = _type_schema(hints[f.name])
    props["schema_version"] = {"const": SCHEMA_VERSION}
    required = [n for n in props if n not in OPTIONAL_FIELDS + TOKEN_FIELDS + ("meta",)]
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "searchgym/episode_record.schema.json",
        "title": "searchgym episode record",
        "description": "One episode per JSONL line (searchgym.agents.record.EpisodeRecord.to_json).",
        "type": "object",
        "properties": props,
        "required": required,
        "additionalProperties": True,
    }


def _type_schema(tp) -> dict:
    origin = typing.get_origin(tp)
    if tp is Any:
        return {}
    if origin in (typing.Union, types.UnionType):
        opts = [_type_schema(a) for a in typing.get_args(tp)]
        return {"anyOf": opts}
    if tp is type(None):
        return {"type": "null"}
    if origin is list:
        args = typing.get_args(tp)
        return {"type": "array", "items": _type_schema(args[0])} if args else {"type": "array"}
    if origin is dict or tp is dict:
        return {"type": "object"}
    if tp is list:
        return {"type": "array"}
    return {"type": _JSON_TYPES[tp]}

