"""verl backend, agent loop: one searchgym env episode per verl dataset row.

:class:`SearchEnvAgentLoop` is a ``verl.experimental.agent_loop.AgentLoopBase``. It
generates through verl's server manager with the env's stop tags, keeps the sampled token
ids (cut right after the stop tag, never decoded and re-encoded), appends the env's
observation tokens with ``response_mask`` 0, returns the summed env reward as
``reward_score`` (verl writes it to ``rm_scores`` at the last token and skips its reward
loop) and the episode's strategy signature and env metrics in ``extra_fields``. Registered
for workers by ``configs/verl/agent_loops.yaml``. Rows and envs: :mod:`.verl_data`.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any
from uuid import uuid4

from verl.experimental.agent_loop.agent_loop import AgentLoopBase, AgentLoopMetrics, AgentLoopOutput

from searchgym.agents.episode import encode_prompt, encode_text
from searchgym.agents.trajectory import EnvQuestions, EpisodeRun
from searchgym.envs.protocol import STOP_TAGS
from searchgym.training.verl_data import ENV_POOL, locate_row_question, plain, resolve_row

__all__ = ["DEFAULT_STOP", "SearchEnvAgentLoop", "cut_at_stop"]

#: Stop tags of the env's action protocol (Search-R1's).
DEFAULT_STOP = STOP_TAGS


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
        self.env_kwargs = plain(env_kwargs or {})
        self.data_source_map = {str(k): str(v) for k, v in plain(data_source_map or {}).items()}
        self.retriever_url = retriever_url
        self.max_turns = int(max_turns) if max_turns else None
        self.stop = tuple(stop)
        self.response_length = int(self.rollout_config.response_length)

    async def run(self, sampling_params: dict[str, Any], **kwargs) -> AgentLoopOutput:
        row = {k: plain(v) for k, v in kwargs.items() if k in ("data_source", "extra_info", "reward_model", "prompt",
                                                                 "raw_prompt")}
        env_id, split, index, mapped = resolve_row(row, self.data_source_map)
        extra_info = dict(row.get("extra_info") or {})
        row_kwargs = extra_info.get("env_kwargs") or {}
        if isinstance(row_kwargs, str):  # parquet rows carry it as JSON for a stable schema
            row_kwargs = json.loads(row_kwargs)
        env_kwargs = {**self.env_kwargs, **plain(row_kwargs)}
        env_kwargs.setdefault("split", split)
        key, env = await asyncio.to_thread(ENV_POOL.acquire, env_id, env_kwargs, self.retriever_url)
        try:
            if mapped:  # a dataset's own row: find its question in the task (index first, then text)
                # the env's questions through its reset info (each read is a reset: off the event loop)
                index = await asyncio.to_thread(
                    lambda: locate_row_question(EnvQuestions(env), row, index, where=env_id))
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
        run = EpisodeRun.start(env, prompt_text, reset_info, policy="verl")
        if getattr(self.tokenizer, "chat_template", None):
            # verl's Continuous Token builder renders the dataset's chat messages.
            messages = plain(kwargs.get("raw_prompt")) or [{"role": "user", "content": prompt_text}]
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
