"""The experiment's fixed evaluation and the controls that validate its instruments.

One evaluation samples ``samples`` rollouts of each of the same ``questions`` held-out
questions (the test split: no tuning decision looks at it) with a fixed sampling seed, so
every arm of a seed is evaluated on identical questions and identical sampling streams, and
arms compare paired. It returns three things (see :class:`EvalResult`):

- ``summary``: the metrics of all episodes (``searchgym.metrics.summarize_rollouts`` names);
- ``per_question``: the same metrics per question, which the report bootstraps over seeds
  and then questions;
- reasoning graphs (``searchgym.metrics.graph``, arXiv 2506.05744) when ``graph_layer`` is
  set: ``graph_*`` over every reasoning step's state at that layer, ``qgraph_*`` over the
  search-query steps' states only (a think -> query -> think alternation revisits a think
  cluster by construction; the query steps alone do not), and ``query_*`` over the
  queries' text embeddings (does the agent re-issue a query it already sent);
- ``controls``: the positive control of every between-sample metric (forced collapse: each
  question's samples replaced by copies of one of them) and, when the untrained initial model
  is given, the content control of the hidden-state metrics (the same token sequences
  teacher-forced through the trained and the untrained model).

The null control (two evaluations of one policy under two sampling seeds) is two calls of
:func:`evaluate_fixed` on the RL-start model; the report takes their paired difference.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from searchgym.agents.record import EpisodeRecord
from searchgym.metrics.controls import collapse_control
from searchgym.metrics.graph import query_graph_metrics, reasoning_graph_metrics, step_vectors_from_tokens
from searchgym.metrics.names import EVAL_RECORD, TIME_EVAL, normalize_record
from searchgym.metrics.summary import summarize_rollouts

__all__ = ["EvalResult", "trajectory_records", "teacher_forced_hidden_states", "evaluate_fixed",
           "HIDDEN_CONTENT_METRICS", "pass_ks"]

#: Hidden-state metrics that claim to measure the model, not the emitted tokens: the
#: untrained-model control compares them between the trained and the untrained model.
HIDDEN_CONTENT_METRICS = ("er_resid", "group_er_resid", "group_er", "aligned_er", "er_within_window")


def pass_ks(samples: int) -> tuple[int, ...]:
    """pass@1 and two k < n (unsaturated): n=8 -> (1, 2, 4); n=4 -> (1, 2, 3)."""
    ks = sorted({1, max(1, samples // 4), max(1, samples // 2)} | ({samples - 1} if samples <= 4 else set()))
    return tuple(k for k in ks if k < samples) or (1,)


def trajectory_records(trajs, hidden: Sequence[np.ndarray] | None = None) -> list[dict]:
    """Metric records (the searchgym.metrics episode fields) of agents' ``Trajectory``s.

    ``hidden`` replaces the trajectories' own hidden states (one [policy tokens, d] array
    per trajectory), e.g. those of another model on the same token sequences.
    """
    return [EpisodeRecord.from_trajectory(t, hidden_states=None if hidden is None else hidden[i],
                                          with_steps=False).metric_fields()
            for i, t in enumerate(trajs)]


def teacher_forced_hidden_states(model, trajs, pad_id: int, batch_size: int = 64) -> list[np.ndarray]:
    """Final-norm hidden states at each trajectory's policy-token positions, computed by one
    teacher-forced forward of prompt + response (the state that emitted each policy token,
    the engine's convention); packed (no padding computed, no LM head), equal to the padded
    forward up to float round-off (tested)."""
    import torch

    from searchgym.training.update import packed_forward_logprobs, pad_batch, policy_hidden_states

    out: list[np.ndarray] = []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for s in range(0, len(trajs), batch_size):
            chunk = trajs[s:s + batch_size]
            ids = [list(t.prompt_ids) + list(t.response_ids) for t in chunk]
            masks = [[0] * len(t.prompt_ids) + list(t.loss_mask) for t in chunk]
            batch = pad_batch(ids, masks, pad_id)
            _, _, hid = packed_forward_logprobs(model, batch.input_ids, batch.attention_mask, batch.response_mask,
                                                with_hidden=True, with_logprobs=False)
            out += [h.float().numpy() for h in policy_hidden_states(hid, batch.response_mask)]
    model.train(was_training)
    return out


@dataclass
class EvalResult:
    """One fixed evaluation: whole-batch metrics, the same per question, and the controls."""

    summary: dict[str, float]
    per_question: dict[str, dict[str, float]]
    controls: dict[str, Any] = field(default_factory=dict)
    time_s: float = 0.0

    def record(self, step: int, replica: str) -> dict:
        """The eval.jsonl line, in the metric vocabulary (``eval/<metric>``, ``time/eval_s``)."""
        return {**normalize_record({"step": step, "replica": replica, **self.summary, "controls": self.controls},
                                   EVAL_RECORD), TIME_EVAL: self.time_s}

    def question_records(self, step: int, replica: str) -> list[dict]:
        """The eval_questions.jsonl lines (one per question), in the metric vocabulary."""
        return [normalize_record({"step": step, "replica": replica, "question": q, **m}, EVAL_RECORD)
                for q, m in self.per_question.items()]


def _numeric(d: dict) -> dict[str, float]:
    out = {}
    for k, v in d.items():
        if isinstance(v, (bool, np.bool_)):
            out[k] = float(v)
        elif isinstance(v, (int, float, np.integer, np.floating)):
            out[k] = float(v) if math.isfinite(float(v)) else None
    return out


def evaluate_fixed(model, tokenizer, envs, questions: Sequence[int], *, samples: int, temperature: float,
                   max_new_tokens: int, sampling_seed: int, er_window: int = 32, vendi: bool = True,
                   embed_fn: Callable | None = None, untrained=None, collapse: bool = True,
                   graph_layer: float | int | None = None) -> EvalResult:
    """Sample ``samples`` rollouts of each question and measure them (see the module doc).

    ``untrained``: the untrained initial model; when given, the hidden-state content metrics
    are recomputed on the same token sequences teacher-forced through both models.
    """
    from searchgym.agents.policy import LMPolicy, evaluate_policy
    from searchgym.agents.rollout import RolloutConfig

    t0 = time.perf_counter()
    policy = LMPolicy(model, tokenizer, RolloutConfig(
        n=samples, temperature=temperature, max_new_tokens=max_new_tokens, seed=sampling_seed,
        return_hidden_states=True, max_batch_size=len(envs), hidden_layer=graph_layer))
    trajs = evaluate_policy(policy, envs, list(questions), n=samples)
    ks = pass_ks(samples)
    embed = _CachedEmbedder(embed_fn) if (vendi and embed_fn is not None) else embed_fn

    def measure(records: list[dict], with_vendi: bool = vendi) -> dict:
        return summarize_rollouts(records, k=ks, er_window=er_window, erv=False, vendi=with_vendi, embed_fn=embed,
                                  per_group=True)

    records = trajectory_records(trajs)
    s = measure(records)
    per_group = s.pop("per_group", {})
    skipped = s.pop("skipped", {})
    summary = _numeric(s)
    summary["response_length"] = float(np.mean([t.num_policy_tokens for t in trajs])) if trajs else math.nan
    per_question = {str(q): _numeric(m) for q, m in per_group.items()}
    if graph_layer is not None:
        g = graph_metrics(trajs, embed)
        for key, groups in g.pop("per_group").items():
            for q, m in groups.items():
                row = per_question.setdefault(str(q), {})
                row.update({f"{key}{k}": v for k, v in _numeric(m).items()})
        skipped.update(g.pop("undefined"))
        summary.update(_numeric(g))
    controls: dict[str, Any] = {"skipped": {k: str(v) for k, v in skipped.items()}}
    if collapse:
        controls["forced_collapse"] = collapse_control(records, measure)
    if untrained is not None:
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        tf_trained = teacher_forced_hidden_states(model, trajs, pad)
        tf_untrained = teacher_forced_hidden_states(untrained, trajs, pad)
        content = {}
        for name, hid in (("trained", tf_trained), ("untrained", tf_untrained)):
            m = measure(trajectory_records(trajs, hidden=hid), with_vendi=False)
            content[name] = {k: _finite(m.get(k)) for k in HIDDEN_CONTENT_METRICS}
            for q, qm in m.get("per_group", {}).items():
                row = per_question.setdefault(str(q), {})
                for k in HIDDEN_CONTENT_METRICS:
                    row[f"{name}_tf/{k}"] = _finite(qm.get(k))
        controls["untrained_model"] = content
    return EvalResult(summary, per_question, controls, time.perf_counter() - t0)


def graph_metrics(trajs, embed_fn: Callable | None) -> dict:
    """The three reasoning-graph views of a batch of trajectories (see the module doc):
    flat ``graph_*``, ``qgraph_*``, ``query_*`` scalars, ``per_group`` {prefix: {question:
    metrics}} and ``undefined`` {key: why a value is NaN}."""
    groups = [t.group_id for t in trajs]
    steps, query_steps = [], []
    for t in trajs:
        pol = [sg for sg, m in zip(t.segments, t.loss_mask) if m]
        vecs, kinds = step_vectors_from_tokens(t.layer_states, t.step_ids, pol)
        steps.append(vecs)
        query_steps.append(vecs[[i for i, k in enumerate(kinds) if k == "query"]] if len(kinds) else vecs)
    out: dict[str, Any] = {"per_group": {}, "undefined": {}}
    views = [("graph_", reasoning_graph_metrics(steps, groups, prefix="graph_")),
             ("qgraph_", reasoning_graph_metrics(query_steps, groups, prefix="qgraph_"))]
    if embed_fn is not None and any(t.queries for t in trajs):
        views.append(("query_", query_graph_metrics([list(t.queries) for t in trajs], groups, embed_fn=embed_fn)))
    for prefix, m in views:
        out["per_group"][prefix] = m.pop(f"{prefix}per_group", {}) or {}
        m.pop(f"{prefix}per_trajectory", None)
        for k, why in (m.pop(f"{prefix}undefined", None) or {}).items():
            out["undefined"][f"{prefix}{k}" if not str(k).startswith(prefix) else k] = str(why)
        out.update({k: v for k, v in m.items() if not isinstance(v, (dict, list))})
    return out


class _CachedEmbedder:
    """``embed_fn`` with a per-evaluation text cache: the forced-collapse control re-embeds
    texts the evaluation already embedded."""

    def __init__(self, fn: Callable):
        self.fn, self.cache = fn, {}

    def __call__(self, texts: list[str]) -> np.ndarray:
        todo = list(dict.fromkeys(t for t in texts if t not in self.cache))
        if todo:
            for t, e in zip(todo, np.asarray(self.fn(todo))):
                self.cache[t] = e
        return np.stack([self.cache[t] for t in texts])


def _finite(x) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None
