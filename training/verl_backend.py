"""verl + Ray backend: searchgym's envs and objectives inside verl 0.9.1's PPO trainer.

Three pieces, each usable alone:

- :class:`SearchEnvAgentLoop`, a ``verl.experimental.agent_loop.AgentLoopBase``: one
  episode of any registered searchgym env per dataset row. It generates through verl's
  server manager with the env's stop tags, keeps the sampled token ids (cut right after the
  stop tag, never decoded and re-encoded), appends the env's observation tokens with
  ``response_mask`` 0, returns the summed env reward as ``reward_score`` (verl writes it to
  ``rm_scores`` at the last token and skips its reward loop) and the episode's strategy
  signature and env metrics in ``extra_fields``. Registered for workers by
  ``configs/verl/agent_loops.yaml``.
- :func:`export_parquet`: a split of an env as verl's RL dataset (``data_source``,
  ``prompt``, ``ability``, ``reward_model.ground_truth``, ``extra_info`` with the env id,
  split and question index, ``agent_name``).
- :func:`prepare_launch` / :func:`launch`: compose verl's Hydra config ``ppo_trainer`` with
  searchgym's overrides (data, model, agent loop, objective), validate it with verl's own
  ``validate_config``, write it, and run ``python -m verl.trainer.main_ppo`` on it.

The objectives map onto verl as follows (see docs/scale-out.md): ``grpo``,
``entropy_bonus``, ``clip_higher``, ``clip_cov`` and ``kl_cov`` become verl's own config
keys (``actor.clip_ratio_*``, ``actor.entropy_coeff``, ``actor.policy_loss.*``);
``forking_tokens`` runs through :mod:`searchgym.training.verl_plugin`, loaded in every
worker by ``VERL_USE_EXTERNAL_MODULES``; ``er_shaped`` is not available on verl (its
workers do not return final-norm hidden states).
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import uuid4

from verl.experimental.agent_loop.agent_loop import AgentLoopBase, AgentLoopMetrics, AgentLoopOutput

__all__ = [
    "AGENT_NAME",
    "SearchEnvAgentLoop",
    "LocalHFServer",
    "export_parquet",
    "export_rows",
    "VerlLaunchConfig",
    "LaunchPlan",
    "objective_overrides",
    "build_overrides",
    "compose_config",
    "validate_composed",
    "prepare_launch",
    "launch",
    "agent_loops_yaml",
    "write_agent_loops_yaml",
    "cut_at_stop",
    "make_env",
    "resolve_row",
    "locate_row_question",
    "validate_rows",
    "is_export_parquet",
]

#: The ``agent_name`` under which ``configs/verl/agent_loops.yaml`` registers the loop.
AGENT_NAME = "searchgym_env"
#: Stop tags of the env's action protocol (Search-R1's).
DEFAULT_STOP = ("</search>", "</answer>")
PLUGIN_MODULE = "searchgym.training.verl_plugin"


class VerlBackendError(ValueError):
    """A verl-backend input (config, objective, data) is wrong; the message names it."""


def agent_loops_yaml() -> Path:
    """Path of the packaged agent-loop registration YAML."""
    import searchgym.configs

    return Path(searchgym.configs.__file__).resolve().parent / "verl" / "agent_loops.yaml"


# ---------------------------------------------------------------------------- agent loop


def cut_at_stop(tokenizer, token_ids: list[int], stop: tuple[str, ...] | list[str]) -> list[int]:
    """Shortest prefix of ``token_ids`` whose decoded text contains a stop string.

    Returns ``token_ids`` unchanged when no stop string occurs. The ids themselves are
    never re-tokenized: the last kept token may carry text after the tag (kept as sampled).
    Binary search: "prefix text contains a stop" is monotone in the prefix length.
    """

    def hit(k: int) -> bool:
        text = tokenizer.decode(token_ids[:k], skip_special_tokens=False)
        return any(s in text for s in stop)

    if not token_ids or not hit(len(token_ids)):
        return list(token_ids)
    lo, hi = 1, len(token_ids)
    while lo < hi:
        mid = (lo + hi) // 2
        if hit(mid):
            hi = mid
        else:
            lo = mid + 1
    return list(token_ids[:lo])


def make_env(env_id: str, **kwargs):
    """``searchgym.envs.make``: ``gymnasium.make`` after importing ``searchgym.envs`` (which
    registers the built-in ids); any gymnasium id registered in the process works."""
    import gymnasium

    import searchgym.envs  # noqa: F401  (registers searchgym/* ids)

    try:
        return gymnasium.make(env_id, **kwargs)
    except gymnasium.error.Error as exc:
        raise VerlBackendError(f"cannot make env {env_id!r}: {exc}") from None


class _EnvPool:
    """Per-process pool of envs keyed by (env id, kwargs): one env per running episode.

    Agent loops are instantiated per sample, so envs (and the retriever they share) must
    outlive them; a released env is reset for its next episode. Thread-safe because
    ``reset``/``step`` run in worker threads.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._free: dict[str, list] = {}
        self._retrievers: dict[str, Any] = {}

    def _retriever(self, url: str):
        with self._lock:
            if url not in self._retrievers:
                from searchgym.retrieval import RemoteRetriever

                self._retrievers[url] = RemoteRetriever(url)
            return self._retrievers[url]

    def acquire(self, env_id: str, kwargs: dict, retriever_url: str | None):
        key = json.dumps([env_id, kwargs, retriever_url], sort_keys=True, default=str)
        with self._lock:
            free = self._free.setdefault(key, [])
            if free:
                return key, free.pop()
        kw = dict(kwargs)
        if retriever_url:
            kw["retriever"] = self._retriever(retriever_url)
        return key, make_env(env_id, **kw)

    def release(self, key: str, env) -> None:
        with self._lock:
            self._free.setdefault(key, []).append(env)

    def clear(self) -> None:
        with self._lock:
            for envs in self._free.values():
                for env in envs:
                    env.close()
            self._free.clear()


ENV_POOL = _EnvPool()


def _plain(value: Any) -> Any:
    """numpy/omegaconf containers -> plain Python (dataset rows arrive as numpy objects)."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return _plain(value.tolist())
    if isinstance(value, dict) or (hasattr(value, "items") and hasattr(value, "keys")):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


class SearchEnvAgentLoop(AgentLoopBase):
    """One searchgym env episode per sample, as a verl agent loop.

    Constructed by verl's ``AgentLoopWorker`` through ``hydra.utils.instantiate`` from
    ``configs/verl/agent_loops.yaml`` inside the worker's running event loop (the base class
    captures it). Extra YAML keys arrive as keyword arguments:

    Args:
        env_kwargs: keyword arguments for ``searchgym.envs.make`` (besides ``split``), e.g.
            ``{"preset": "small"}`` or ``{"index_dir": ...}``; merged with per-row
            ``extra_info.env_kwargs``.
        retriever_url: when set, every env of this process searches through one shared
            ``RemoteRetriever`` (``searchgym serve``) instead of loading an index.
        max_turns: optional cap on assistant turns (the env's own ``max_turns`` still
            truncates).
        stop: stop strings passed to the server (default: the env's closing tags).

    The dataset row (``kwargs``) must carry ``extra_info`` with ``env_id``, ``split`` and
    ``index`` (what :func:`export_parquet` writes) and ``raw_prompt`` (verl's dataset adds it).
    """

    def __init__(
        self,
        *args,
        env_kwargs: dict | None = None,
        retriever_url: str | None = None,
        max_turns: int | None = None,
        stop: list[str] | tuple[str, ...] = DEFAULT_STOP,
        data_source_map: dict | None = None,
        name: str | None = None,
        tools=None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.env_kwargs = _plain(env_kwargs or {})
        self.data_source_map = {str(k): str(v) for k, v in _plain(data_source_map or {}).items()}
        self.retriever_url = retriever_url
        self.max_turns = int(max_turns) if max_turns else None
        self.stop = tuple(stop)
        self.response_length = int(self.rollout_config.response_length)

    async def run(self, sampling_params: dict[str, Any], **kwargs) -> AgentLoopOutput:
        row = {k: _plain(v) for k, v in kwargs.items() if k in ("data_source", "extra_info", "reward_model", "prompt",
                                                                 "raw_prompt")}
        env_id, split, index, mapped = resolve_row(row, self.data_source_map)
        extra_info = dict(row.get("extra_info") or {})
        row_kwargs = extra_info.get("env_kwargs") or {}
        if isinstance(row_kwargs, str):  # parquet rows carry it as JSON for a stable schema
            row_kwargs = json.loads(row_kwargs)
        env_kwargs = {**self.env_kwargs, **_plain(row_kwargs)}
        env_kwargs.setdefault("split", split)
        key, env = await asyncio.to_thread(ENV_POOL.acquire, env_id, env_kwargs, self.retriever_url)
        try:
            if mapped:  # a dataset's own row: find its question in the task (index first, then text)
                index = locate_row_question(getattr(env.unwrapped, "questions", []), row, index, where=env_id)
            extra_info.update(env_id=env_id, index=index)
            return await self._episode(env, env_id, extra_info, sampling_params, kwargs)
        finally:
            ENV_POOL.release(key, env)

    async def _episode(self, env, env_id, extra_info, sampling_params, kwargs) -> AgentLoopOutput:
        t_env = 0.0
        t_gen = 0.0
        t0 = time.perf_counter()
        prompt_text, reset_info = await asyncio.to_thread(
            env.reset, options={"index": int(extra_info["index"])}
        )
        t_env += time.perf_counter() - t0
        from searchgym.agents.episode import encode_prompt, encode_text
        from searchgym.agents.trajectory import EpisodeRun

        run = EpisodeRun.start(env, prompt_text, reset_info, policy="verl")
        if getattr(self.tokenizer, "chat_template", None):
            # verl's Continuous Token builder renders the dataset's chat messages.
            messages = _plain(kwargs.get("raw_prompt")) or [{"role": "user", "content": prompt_text}]
            prompt_ids = await self.ct_build_initial_tokens(messages)
        else:
            # No chat template (searchgym's tiny models): BOS + plain prompt, exactly as the
            # embedded rollout engine tokenises it.
            prompt_ids = self._cap_text_prompt_length(encode_prompt(self.tokenizer, prompt_text))

        R = self.response_length
        response_ids: list[int] = []
        mask: list[int] = []
        logprobs: list[float] | None = []
        assistant_turns = obs_turns = 0
        request_id = uuid4().hex
        params = dict(sampling_params)
        params["stop"] = list(self.stop)
        params["include_stop_str_in_output"] = True
        limit = self.max_turns
        while len(response_ids) < R and (limit is None or assistant_turns < limit):
            params["max_tokens"] = R - len(response_ids)
            t0 = time.perf_counter()
            out = await self.server_manager.generate(
                request_id=request_id, prompt_ids=prompt_ids + response_ids, sampling_params=dict(params)
            )
            t_gen += time.perf_counter() - t0
            ids = cut_at_stop(self.tokenizer, list(out.token_ids), self.stop)[: R - len(response_ids)]
            if not ids:
                break
            assistant_turns += 1
            response_ids += ids
            mask += [1] * len(ids)
            if logprobs is not None and out.log_probs is not None:
                logprobs += [float(x) for x in out.log_probs[: len(ids)]]
            else:
                logprobs = None
            action = self.tokenizer.decode(ids, skip_special_tokens=True)
            t0 = time.perf_counter()
            obs, reward, terminated, truncated, info = await asyncio.to_thread(env.step, action)
            t_env += time.perf_counter() - t0
            ended = terminated or truncated
            obs_ids = [] if ended else encode_text(self.tokenizer, obs)[: R - len(response_ids)]
            # the one turn step of every episode loop (searchgym.agents.trajectory)
            if run.record(action, None if ended else obs, reward, terminated, truncated, info,
                          num_policy_tokens=len(ids), num_obs_tokens=len(obs_ids)):
                break
            obs_turns += 1
            response_ids += obs_ids
            mask += [0] * len(obs_ids)
            if logprobs is not None:
                logprobs += [0.0] * len(obs_ids)

        traj = run.traj
        step_rewards = [t["reward"] for t in traj.turns]
        extra_fields = {  # episode-record fields (searchgym.agents.record) verl carries per sample
            "env_id": env_id,
            "question_id": traj.question_id,
            "question_index": int(extra_info["index"]),
            "signature": traj.signature,
            "strategy": traj.strategy,
            "correct": bool(traj.correct),
            "format_errors": traj.format_errors,
            "episode_ended": run.done,
            "turn_scores": step_rewards,
            "tool_rewards": [],
        }
        return AgentLoopOutput(
            prompt_ids=prompt_ids,
            response_ids=response_ids,
            response_mask=mask,
            response_logprobs=logprobs if logprobs else None,
            reward_score=float(sum(step_rewards)),
            num_turns=1 + assistant_turns + obs_turns,
            metrics=AgentLoopMetrics(generate_sequences=t_gen, tool_calls=t_env),
            extra_fields=extra_fields,
        )


# ------------------------------------------------------------------------------ rows


def _row_question(row: dict) -> str | None:
    extra = row.get("extra_info") or {}
    q = extra.get("question") if isinstance(extra, dict) else None
    if isinstance(q, str) and q.strip():
        return q.strip()
    prompt = row.get("raw_prompt") or row.get("prompt")
    if isinstance(prompt, list) and prompt and isinstance(prompt[-1], dict):
        text = str(prompt[-1].get("content", ""))
        return (text.rsplit("Question:", 1)[1] if "Question:" in text else text).strip()
    return None


def _row_targets(row: dict) -> list[str] | None:
    try:
        target = row["reward_model"]["ground_truth"]["target"]
    except (KeyError, TypeError):
        return None
    return [target] if isinstance(target, str) else [str(t) for t in target]


def resolve_row(row: dict, data_source_map: dict | None = None) -> tuple[str, str, int | None, bool]:
    """``(env_id, split, index, mapped)`` of one verl dataset row, as the agent loop uses it.

    A row exported by searchgym names its env in ``extra_info.env_id``; any other row (a
    Search-R1 parquet as it is) is mapped by its ``data_source``: ``data_source_map``
    first, then a registered id / task name equal to it, then the task whose
    ``data_sources`` list it (``mapped`` is then True and the question is located by index
    and checked by its answers). Raises ``VerlBackendError`` naming what is missing.
    """
    from searchgym.envs.registry import env_for_data_source

    extra = row.get("extra_info") or {}
    if not isinstance(extra, dict):
        raise VerlBackendError(f"extra_info must be a mapping, got {type(extra).__name__}")
    split = extra.get("split") or "train"
    index = extra.get("index")
    if index is not None and (isinstance(index, bool) or not isinstance(index, int) or index < 0):
        raise VerlBackendError(f"extra_info.index must be an int >= 0, got {index!r}")
    if extra.get("env_id"):
        if index is None:
            raise VerlBackendError("the row names extra_info.env_id but no extra_info.index")
        return str(extra["env_id"]), str(split), int(index), False
    ds = row.get("data_source")
    env_id = (data_source_map or {}).get(ds) if isinstance(ds, str) else None
    if env_id is None:
        try:
            env_id = env_for_data_source(ds)
        except ValueError as exc:
            raise VerlBackendError(str(exc)) from None
    if env_id is None:
        raise VerlBackendError(
            f"the row has no extra_info.env_id and its data_source {ds!r} is no registered task; list it in a "
            f"task file (data_sources: [{ds}]; `searchgym task add FILE`) or pass --data-source {ds}=ENV_ID"
        )
    return env_id, str(split), (int(index) if index is not None else None), True


def locate_row_question(questions, row: dict, index: int | None, where: str = "env") -> int:
    """Index of the row's question in ``questions``: ``index`` when that question has the
    row's gold answers, else the question with the row's text (and answers)."""
    from searchgym.envs.reward import normalize_answer

    targets = _row_targets(row)
    norm = sorted(normalize_answer(t) for t in targets) if targets is not None else None

    def same_answers(q) -> bool:
        return norm is None or sorted(normalize_answer(g) for g in q.golden_answers) == norm

    if index is not None and 0 <= index < len(questions) and same_answers(questions[index]):
        return index
    text = _row_question(row)
    if text:
        for i, q in enumerate(questions):
            if q.question.strip() == text and same_answers(q):
                return i
    raise VerlBackendError(f"{where}: no question matches the row (index {index}, question {text!r:.80}, "
                           f"answers {targets}); is the task's QA file the parquet this row came from?")


def validate_rows(files: list[str], data_source_map: dict | None = None, limit_errors: int = 1) -> dict:
    """Check verl RL parquet files against what :class:`SearchEnvAgentLoop` needs, before a
    launch builds or writes anything: readable, a chat ``prompt`` and
    ``reward_model.ground_truth.target`` per row, an env for each row (``resolve_row``)
    that is registered, and (user tasks) a question for each row. Reads QA files only: no
    world, index or model is built. Returns ``{file: rows}``; raises ``VerlBackendError``
    naming the file, the first bad row and how many rows are bad.
    """
    import gymnasium
    import pyarrow.parquet as pq

    import searchgym.envs  # noqa: F401  (registers ids, stored tasks included)
    from searchgym.envs.registry import TASKS, NAMESPACE, load_persistent_tasks, task_questions

    load_persistent_tasks()
    counts: dict[str, int] = {}
    questions_cache: dict[tuple[str, str], list] = {}
    for f in files:
        path = Path(f)
        if not path.is_file():
            raise VerlBackendError(f"data file {f} does not exist")
        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as exc:  # pyarrow raises several types for a bad file
            raise VerlBackendError(f"{f}: not a readable parquet ({type(exc).__name__}: {exc})") from None
        if not rows:
            raise VerlBackendError(f"{f}: no rows")
        bad: list[str] = []
        for i, row in enumerate(rows):
            try:
                prompt = row.get("prompt")
                if not isinstance(prompt, list) or not prompt or not all(isinstance(m, dict) and "content" in m
                                                                         for m in prompt):
                    raise VerlBackendError("'prompt' must be a non-empty chat list of {role, content}")
                if _row_targets(row) is None:
                    raise VerlBackendError("missing reward_model.ground_truth.target")
                env_id, split, index, mapped = resolve_row(row, data_source_map)
                if env_id not in gymnasium.registry:
                    raise VerlBackendError(f"env {env_id!r} is not registered (`searchgym envs list`)")
                name = env_id.split("/", 1)[1] if env_id.startswith(NAMESPACE + "/") else None
                spec = TASKS.get(name) if name else None
                if spec is not None and not spec.families:  # a user task: its questions are cheap to read
                    key = (env_id, split)
                    if key not in questions_cache:
                        questions_cache[key] = task_questions(spec, split)
                    qs = questions_cache[key]
                    if mapped:
                        locate_row_question(qs, row, index, where=env_id)
                    elif not 0 <= index < len(qs):
                        raise VerlBackendError(f"extra_info.index {index} is out of range for {env_id} [{split}] "
                                               f"({len(qs)} questions)")
            except (VerlBackendError, ValueError, OSError) as exc:
                bad.append(f"row {i}: {exc}")
        if bad:
            more = f" ({len(bad) - 1} more bad rows)" if len(bad) > 1 else ""
            raise VerlBackendError(f"{f}: {bad[0]}{more}")
        counts[str(f)] = len(rows)
    return counts


EXPORT_METADATA_KEY = b"searchgym"


def is_export_parquet(path: str | Path) -> bool:
    """True iff ``path`` is a parquet written by :func:`export_parquet` (its schema
    metadata, or for older exports the ``agent_name`` + ``extra_info`` columns)."""
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except Exception:  # not a parquet at all
        return False
    if schema.metadata and EXPORT_METADATA_KEY in schema.metadata:
        return True
    return {"agent_name", "extra_info", "data_source"} <= set(schema.names)


# ---------------------------------------------------------------------- local generator


@dataclass
class _Sampling:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_tokens: int = 64
    stop: tuple[str, ...] = ()


class LocalHFServer:
    """In-process stand-in for verl's ``LLMServerClient`` backed by a HF causal LM.

    Implements the contract the agent loops use: ``await generate(request_id, *,
    prompt_ids, sampling_params) -> TokenOutput(token_ids, log_probs, stop_reason)``, with
    verl/vLLM-style sampling params (``temperature`` (0 = greedy), ``top_p``, ``top_k``
    (-1 = off), ``max_tokens``, ``stop``, ``logprobs``). Sampling runs in a thread so the
    event loop stays free; calls are serialised (one model). For CPU tests and debugging a
    loop without GPUs; log-probs are of the sampled token under the temperature-scaled
    distribution.
    """

    def __init__(self, model, tokenizer, seed: int = 0, max_new_tokens: int | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.seed = seed
        self.max_new_tokens = max_new_tokens  # optional per-call cap (like a server-side limit)
        self.outputs: list[list[int]] = []  # every call's sampled ids, in call order
        self._lock = threading.Lock()
        self._calls = 0

    def _generate_sync(self, prompt_ids: list[int], sp: _Sampling):
        import torch

        with self._lock:
            self._calls += 1
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self._calls)
            ids = torch.tensor([prompt_ids], dtype=torch.long)
            out_ids: list[int] = []
            out_lps: list[float] = []
            past = None
            eos = self.tokenizer.eos_token_id
            stop_reason = "length"
            with torch.no_grad():
                for _ in range(sp.max_tokens):
                    res = self.model(input_ids=ids, past_key_values=past, use_cache=True)
                    past = res.past_key_values
                    logits = res.logits[0, -1].float()
                    if sp.temperature > 0:
                        logits = logits / sp.temperature
                    logp = torch.log_softmax(logits, dim=-1)
                    if sp.temperature <= 0:
                        tok = int(torch.argmax(logp))
                    else:
                        probs = logp.exp()
                        if sp.top_k and sp.top_k > 0:
                            kth = torch.topk(probs, min(sp.top_k, probs.numel())).values[-1]
                            probs = torch.where(probs >= kth, probs, torch.zeros_like(probs))
                        if sp.top_p < 1.0:
                            sorted_p, order = torch.sort(probs, descending=True)
                            cut = torch.cumsum(sorted_p, 0) - sorted_p > sp.top_p
                            sorted_p[cut] = 0
                            probs = torch.zeros_like(probs).scatter(0, order, sorted_p)
                        tok = int(torch.multinomial(probs / probs.sum(), 1, generator=gen))
                    out_ids.append(tok)
                    out_lps.append(float(logp[tok]))
                    ids = torch.tensor([[tok]], dtype=torch.long)
                    if eos is not None and tok == eos:
                        stop_reason = "completed"
                        break
                    if sp.stop:
                        tail = self.tokenizer.decode(out_ids[-16:], skip_special_tokens=False)
                        if any(s in tail for s in sp.stop):
                            stop_reason = "completed"
                            break
            return out_ids, out_lps, stop_reason

    async def generate(self, request_id, *, prompt_ids: list[int], sampling_params: dict[str, Any], **kwargs):
        from verl.workers.rollout.replica import TokenOutput

        sp = _Sampling(
            temperature=float(sampling_params.get("temperature", 1.0)),
            top_p=float(sampling_params.get("top_p", 1.0)),
            top_k=max(0, int(sampling_params.get("top_k", -1) or 0)),
            max_tokens=min(int(sampling_params.get("max_tokens", 64)), self.max_new_tokens or 1 << 30),
            stop=tuple(sampling_params.get("stop") or ()),
        )
        ids, lps, reason = await asyncio.to_thread(self._generate_sync, list(prompt_ids), sp)
        self.outputs.append(list(ids))
        return TokenOutput(
            token_ids=ids, log_probs=lps if sampling_params.get("logprobs", True) else None, stop_reason=reason
        )


# ------------------------------------------------------------------------------ export


def export_rows(env_id: str, split: str = "train", limit: int | None = None, env_kwargs: dict | None = None,
                agent_name: str = AGENT_NAME) -> list[dict]:
    """verl RL-dataset rows for questions ``0..n-1`` of ``env_id``'s ``split``.

    Each row's prompt is the env's own ``reset`` prompt for that question, so the row and
    the episode the agent loop runs agree.
    """
    env = make_env(env_id, split=split, **(env_kwargs or {}))
    try:
        questions = getattr(env.unwrapped, "questions", None)
        if questions is None:
            raise VerlBackendError(f"env {env_id!r} exposes no .questions; cannot enumerate split {split!r}")
        n = len(questions) if limit is None else min(limit, len(questions))
        if n == 0:
            raise VerlBackendError(f"env {env_id!r} has no questions in split {split!r}")
        rows = []
        for i in range(n):
            prompt, info = env.reset(options={"index": i})
            rows.append(
                {
                    "data_source": env_id,
                    "prompt": [{"role": "user", "content": prompt}],
                    "ability": "search",
                    "reward_model": {
                        "style": "rule",
                        "ground_truth": {"target": [str(a) for a in info.get("golden_answers", ())]},
                    },
                    "extra_info": {
                        "env_id": env_id,
                        "split": split,
                        "index": i,
                        "question_id": str(info.get("question_id", i)),
                        "family": str(info.get("family", "")),
                        "question": str(info.get("question", "")),
                        "env_kwargs": json.dumps(env_kwargs or {}, sort_keys=True),
                    },
                    "agent_name": agent_name,
                }
            )
        return rows
    finally:
        env.close()


def export_parquet(env_id: str, out: str | Path, split: str = "train", limit: int | None = None,
                   env_kwargs: dict | None = None, agent_name: str = AGENT_NAME, force: bool = False) -> Path:
    """Write ``env_id``'s ``split`` as a verl RL parquet at ``out`` (atomically); return it.

    An existing ``out`` that is not such an export (e.g. the dataset's own parquet) is
    refused before the env is made, unless ``force``."""
    from searchgym.retrieval.fileio import check_output

    out = Path(out)
    if out.suffix != ".parquet":
        raise VerlBackendError(f"--out {out} must end in .parquet")
    check_output(out, is_export_parquet, "a `searchgym export verl` parquet", kind="file", force=force)
    rows = export_rows(env_id, split=split, limit=limit, env_kwargs=env_kwargs, agent_name=agent_name)
    return write_export_parquet(rows, out, env_id, split)


def write_export_parquet(rows: list[dict], out: str | Path, env_id: str, split: str) -> Path:
    """Write :func:`export_rows` rows at ``out`` atomically, marked as a searchgym export."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from searchgym.retrieval.fileio import atomic_path

    out = Path(out)
    table = pa.Table.from_pylist(rows)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                           EXPORT_METADATA_KEY: json.dumps({"env_id": env_id, "split": split}).encode()})
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        pq.write_table(table, tmp)
    return out


# ---------------------------------------------------------------------------- launcher


@dataclass
class VerlLaunchConfig:
    """What `searchgym train rl --backend verl` turns into a verl run."""

    objective: str = "grpo"
    model: str = ""
    env_id: str = "searchgym/MultiHop-v0"
    out_dir: str = "runs/verl"
    objective_overrides: dict = field(default_factory=dict)
    train_files: list[str] = field(default_factory=list)  # empty: export from env_id
    val_files: list[str] = field(default_factory=list)
    train_split: str = "train"
    val_split: str = "validation"
    export_limit: int | None = None
    env_kwargs: dict = field(default_factory=dict)
    retriever_url: str | None = None
    max_turns: int | None = None
    n_gpus: int = 1
    nnodes: int = 1
    ray_address: str | None = None
    rollout: str = "vllm"
    tensor_parallel: int = 1
    gpu_memory_utilization: float = 0.5
    train_batch_size: int = 64
    rollout_n: int = 5
    ppo_mini_batch_size: int = 32
    micro_batch_size_per_gpu: int = 4
    max_prompt_length: int = 512
    max_response_length: int = 1024
    lr: float = 1e-6
    kl_loss_coef: float = 0.001
    total_epochs: int = 1
    total_training_steps: int | None = None
    experiment_name: str = ""
    extra_overrides: list[str] = field(default_factory=list)
    data_source_map: dict = field(default_factory=dict)  # Search-R1 data_source -> env id
    force: bool = False  # replace an out_dir that is not a verl run folder

    def validate(self) -> None:
        if not self.model:
            raise VerlBackendError("--model is required (a HF model directory or hub id)")
        if self.rollout not in ("vllm", "sglang", "trtllm"):
            raise VerlBackendError(f"rollout {self.rollout!r}: verl 0.9.1 has vllm, sglang, trtllm")
        for name in ("n_gpus", "nnodes", "train_batch_size", "rollout_n", "ppo_mini_batch_size",
                     "micro_batch_size_per_gpu", "max_prompt_length", "max_response_length", "total_epochs"):
            if int(getattr(self, name)) < 1:
                raise VerlBackendError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.ppo_mini_batch_size > self.train_batch_size:
            raise VerlBackendError(
                f"ppo_mini_batch_size ({self.ppo_mini_batch_size}) > train_batch_size ({self.train_batch_size})"
            )
        for ov in self.extra_overrides:
            if "=" not in ov:
                raise VerlBackendError(f"--set {ov!r} is not KEY=VALUE")


def _q(value: Any) -> str:
    """A Hydra override value that stays a string (quoted)."""
    text = str(value).replace("\\", "\\\\").replace("'", "\\'")
    return f"'{text}'"


def objective_overrides(name: str, overrides: dict | None = None) -> tuple[list[str], dict[str, str]]:
    """Hydra overrides and worker env vars that realise objective ``name`` in verl.

    Reads the objective's typed defaults from searchgym's registry (updated by
    ``overrides``), so both backends use the same numbers.

    Returns:
        (hydra overrides, env vars for every Ray worker).
    Raises:
        VerlBackendError for an unknown objective or one verl cannot run (``er_shaped``).
    """
    from searchgym.training.objectives import make_objective

    obj = make_objective(name, overrides or {})
    if getattr(obj, "needs_hidden_states", False) or name == "er_shaped":
        raise VerlBackendError(
            f"objective {name!r} needs the policy's final-norm hidden states per response; verl 0.9.1's "
            "actor workers do not return them, so it runs only on the embedded backend (--backend embedded)"
        )
    c = obj.config
    actor = "actor_rollout_ref.actor"
    ov = [
        f"{actor}.clip_ratio_low={c.clip_ratio_low}",
        f"{actor}.clip_ratio_high={c.clip_ratio_high}",
        f"{actor}.clip_ratio_c={c.clip_ratio_c}",
        f"{actor}.entropy_coeff={c.entropy_coeff}",
        f"{actor}.loss_agg_mode={c.loss_agg_mode}",
        # verl's own loss names: vanilla, clip_cov, kl_cov (no plugin needed for these).
        f"{actor}.policy_loss.loss_mode={obj.policy_loss}",
    ]
    for key in ("clip_cov_ratio", "clip_cov_lb", "clip_cov_ub", "kl_cov_ratio", "ppo_kl_coef"):
        if hasattr(c, key):
            ov.append(f"{actor}.policy_loss.{key}={getattr(c, key)}")
    env: dict[str, str] = {}
    if hasattr(c, "rho"):  # forking_tokens: mask applied in verl's ppo_loss by the plugin
        env["SEARCHGYM_FORKING_RHO"] = str(c.rho)
        ov.append(f"{actor}.calculate_entropy=true")
    return ov, env


def build_overrides(cfg: VerlLaunchConfig, train_files: list[str], val_files: list[str],
                    agent_yaml: str | Path | None = None) -> list[str]:
    """All Hydra overrides of a launch (ours first, the user's ``--set`` last so they win)."""
    obj_ov, worker_env = objective_overrides(cfg.objective, cfg.objective_overrides)
    worker_env = {"VERL_USE_EXTERNAL_MODULES": PLUGIN_MODULE, **worker_env}
    arr = "actor_rollout_ref"
    name = cfg.experiment_name or f"{cfg.env_id.replace('/', '_')}-{cfg.objective}"
    ov = [
        f"data.train_files={_hydra_list(train_files)}",
        f"data.val_files={_hydra_list(val_files)}",
        "data.prompt_key=prompt",
        f"data.train_batch_size={cfg.train_batch_size}",
        f"data.max_prompt_length={cfg.max_prompt_length}",
        f"data.max_response_length={cfg.max_response_length}",
        "data.return_raw_chat=true",
        f"{arr}.model.path={_q(cfg.model)}",
        f"{arr}.actor.optim.lr={cfg.lr}",
        f"{arr}.actor.ppo_mini_batch_size={cfg.ppo_mini_batch_size}",
        f"{arr}.actor.ppo_micro_batch_size_per_gpu={cfg.micro_batch_size_per_gpu}",
        f"{arr}.actor.use_kl_loss={'true' if cfg.kl_loss_coef > 0 else 'false'}",
        f"{arr}.actor.kl_loss_coef={cfg.kl_loss_coef}",
        f"{arr}.actor.kl_loss_type=low_var_kl",
        f"{arr}.rollout.name={cfg.rollout}",
        f"{arr}.rollout.n={cfg.rollout_n}",
        f"{arr}.rollout.tensor_model_parallel_size={cfg.tensor_parallel}",
        f"{arr}.rollout.gpu_memory_utilization={cfg.gpu_memory_utilization}",
        f"{arr}.rollout.log_prob_micro_batch_size_per_gpu={cfg.micro_batch_size_per_gpu}",
        f"{arr}.rollout.calculate_log_probs=true",
        f"{arr}.ref.log_prob_micro_batch_size_per_gpu={cfg.micro_batch_size_per_gpu}",
        f"{arr}.rollout.agent.agent_loop_config_path={_q(agent_yaml or agent_loops_yaml())}",
        f"{arr}.rollout.agent.default_agent_loop={AGENT_NAME}",
        "algorithm.adv_estimator=grpo",
        "algorithm.use_kl_in_reward=false",
        f"trainer.n_gpus_per_node={cfg.n_gpus}",
        f"trainer.nnodes={cfg.nnodes}",
        f"trainer.total_epochs={cfg.total_epochs}",
        f"trainer.project_name=searchgym",
        f"trainer.experiment_name={_q(name)}",
        f"trainer.default_local_dir={_q(Path(cfg.out_dir).resolve() / 'checkpoints')}",
        "trainer.logger=[console]",
        "trainer.val_before_train=false",
    ]
    if cfg.total_training_steps:
        ov.append(f"trainer.total_training_steps={cfg.total_training_steps}")
    ov += obj_ov
    for key, value in worker_env.items():
        ov.append(f"+ray_kwargs.ray_init.runtime_env.env_vars.{key}={_q(value)}")
    ov += list(cfg.extra_overrides)
    return ov


def write_agent_loops_yaml(cfg: VerlLaunchConfig, path: str | Path) -> Path:
    """Write the run's agent-loop registration (the packaged entry plus this run's kwargs).

    verl's workers load this file (``rollout.agent.agent_loop_config_path``) and pass the
    extra keys to :class:`SearchEnvAgentLoop` as keyword arguments.
    """
    from omegaconf import OmegaConf

    from searchgym.retrieval.fileio import atomic_write_text

    entries = OmegaConf.to_container(OmegaConf.load(agent_loops_yaml()))
    for entry in entries:
        if entry.get("name") == AGENT_NAME:
            entry["env_kwargs"] = dict(cfg.env_kwargs)
            entry["retriever_url"] = cfg.retriever_url
            entry["max_turns"] = cfg.max_turns
            entry["data_source_map"] = dict(cfg.data_source_map)
    path = Path(path)
    atomic_write_text(path, OmegaConf.to_yaml(OmegaConf.create(entries)))
    return path


def _hydra_list(items: list[str]) -> str:
    return "[" + ",".join(_q(i) for i in items) + "]"


def _verl_config_dir() -> str:
    import verl

    return str(Path(verl.__file__).resolve().parent / "trainer" / "config")


def compose_config(overrides: list[str], config_dir: str | None = None, config_name: str = "ppo_trainer"):
    """Compose verl's Hydra config ``config_name`` (default ``ppo_trainer``) with ``overrides``.

    Raises VerlBackendError naming the override Hydra rejected.
    """
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir=config_dir or _verl_config_dir(), version_base=None):
            return compose(config_name=config_name, overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as exc:
        raise VerlBackendError(f"verl's Hydra config rejected the overrides: {exc}") from None


def validate_composed(cfg) -> None:
    """Run verl's own ``validate_config`` on a composed config (as ``main_ppo`` does)."""
    import warnings

    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            validate_config(cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg))
    except (AssertionError, ValueError, KeyError, TypeError) as exc:
        raise VerlBackendError(f"verl's validate_config rejected the config: {exc}") from None


@dataclass
class LaunchPlan:
    """A validated verl run: the written config, the command and its environment."""

    config_file: Path
    command: list[str]
    env: dict[str, str]
    overrides: list[str]

    def shell(self) -> str:
        """The command as one shell line (env assignments first)."""
        prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        return (prefix + " " if prefix else "") + " ".join(shlex.quote(c) for c in self.command)


def _is_verl_run_dir(path: Path) -> bool:
    return any((path / n).exists() for n in ("verl_config.yaml", "verl_overrides.txt", "agent_loops.yaml"))


def prepare_launch(cfg: VerlLaunchConfig, export: bool = True) -> LaunchPlan:
    """Check everything, then export data if needed and write verl's validated config;
    return the plan.

    Order matters: the config values, the objective, the ``out_dir`` (a non-empty folder
    that is no verl run folder is refused unless ``cfg.force``), the rows of given
    ``train_files``/``val_files`` (:func:`validate_rows`) and verl's own config validation
    all pass before anything is built (world, index) or written. Then writes
    ``<out_dir>/verl_config.yaml`` (the composed, validated config),
    ``<out_dir>/verl_overrides.txt`` (one override per line) and ``agent_loops.yaml``.
    """
    from omegaconf import OmegaConf

    from searchgym.retrieval.fileio import atomic_write_text, check_output

    cfg.validate()
    objective_overrides(cfg.objective, cfg.objective_overrides)  # refuses er_shaped & bad fields first
    out_dir = Path(cfg.out_dir).resolve()
    check_output(out_dir, _is_verl_run_dir, "a verl run folder (verl_config.yaml)", force=cfg.force)
    train_files = [str(Path(f).resolve()) for f in cfg.train_files]
    val_files = [str(Path(f).resolve()) for f in cfg.val_files]
    if export and (train_files or val_files):
        validate_rows(train_files + val_files, cfg.data_source_map)
    exports = []
    if not train_files:
        train = out_dir / "data" / f"{cfg.train_split}.parquet"
        exports.append((train, cfg.train_split))
        train_files = [str(train)]
    if not val_files:
        val = out_dir / "data" / f"{cfg.val_split}.parquet"
        exports.append((val, cfg.val_split))
        val_files = [str(val)]
    if exports and export:
        import gymnasium

        import searchgym.envs  # noqa: F401

        if cfg.env_id not in gymnasium.registry:
            from searchgym.envs.registry import load_persistent_tasks

            load_persistent_tasks()
        if cfg.env_id not in gymnasium.registry:
            raise VerlBackendError(f"--env {cfg.env_id!r} is not registered (`searchgym envs list`, `searchgym task add`)")
    agent_yaml = out_dir / "agent_loops.yaml"
    overrides = build_overrides(cfg, train_files, val_files, agent_yaml)
    composed = compose_config(overrides)
    validate_composed(composed)
    # everything is checked: build the export rows (the env may build its world/index in the
    # cache), then write; a failing env leaves out_dir untouched
    rows = [(path, split, export_rows(cfg.env_id, split=split, limit=cfg.export_limit, env_kwargs=cfg.env_kwargs))
            for path, split in exports] if export else []
    out_dir.mkdir(parents=True, exist_ok=True)
    for path, split, split_rows in rows:
        write_export_parquet(split_rows, path, cfg.env_id, split)
    write_agent_loops_yaml(cfg, agent_yaml)
    config_file = out_dir / "verl_config.yaml"
    atomic_write_text(config_file, OmegaConf.to_yaml(composed, resolve=False))
    atomic_write_text(out_dir / "verl_overrides.txt", "\n".join(overrides) + "\n")
    env = {}
    if cfg.ray_address:
        env["RAY_ADDRESS"] = cfg.ray_address  # ray.init() inside main_ppo joins this cluster
    command = [sys.executable, "-m", "verl.trainer.main_ppo", f"--config-path={out_dir}",
               "--config-name=verl_config"]
    return LaunchPlan(config_file=config_file, command=command, env=env, overrides=overrides)


def launch(plan: LaunchPlan) -> int:
    """Run ``verl.trainer.main_ppo`` on the plan's config; return its exit status."""
    env = {**os.environ, **plan.env}
    return subprocess.call(plan.command, env=env)
