"""Batched multi-turn rollout engine for HF causal LMs (token-in/token-out).

A batch of episodes generates in parallel with a KV cache. Each row stops on its own at a
stop token (``</search>``, ``</answer>``, EOS) or its token budget; a row that stopped has
its KV cache cut out of the batch cache (only its real columns kept) and leaves the batch,
so it costs no further compute this round. When every row of the round has stopped, all
actions go to the environments in ONE ``step_batch`` call (one retriever call for all
searches); observation tokens are appended with loss mask 0 and become the rows' pending
tokens; the next round rebuilds a batch cache from the rows' saved caches (left-padded, with
per-row position ids) and prefills only the new tokens. Prompts are never re-encoded.

The decode loop avoids copying the cache (``searchgym.agents.decoding``): each round's
cache is preallocated for the round and written in place, grouped-query models attend
without ``repeat_kv``, the prefill computes logits for the last position only, and a row
that stops is replaced in its slot by a live row from the tail, so compacting the batch
copies only the moved rows.

Sampled token ids are kept exactly; each policy token records its log-prob and entropy
under the sampling distribution ``softmax(logits / T)`` (before top-k/top-p truncation, the
distribution the trainer recomputes), and on request the final-norm hidden state whose
logits produced it (the LM-head input at the previous position). Greedy decoding records
them at T = 1. With ``RolloutConfig.hidden_layer`` set, each policy token also records the
hidden state of one chosen layer at the token's OWN position (the state after reading it,
``Trajectory.layer_states``: the input of the reasoning-graph metrics in
``searchgym.metrics.graph``, whose step vectors must contain the step's own tokens). A
sampled token is read by the next decode step, the next round's prefill, or, for an
episode's last token, one extra batched forward at the end of the chunk (the only model call
the option adds; nothing changes when it is off).

Sampling draws one uniform number per row from that row's own ``torch.Generator`` (seeded
from ``seed`` and the episode's index), so a row's samples do not depend on which other
rows share its batch: batched and one-by-one rollouts agree, greedy or not, up to float
round-off in the logits.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np

from searchgym.agents.episode import encode_prompt, encode_text, segment_labels, tag_ids
from searchgym.agents.trajectory import (  # noqa: F401  (Trajectory & co. are also public here)
    EpisodeRun,
    Trajectory,
    finish_from_info,
    step_runs,
    turn_record,
)
from searchgym.envs.protocol import STOP_TAGS


@dataclass
class RolloutConfig:
    """Sampling and budget settings of the engine."""

    max_new_tokens: int = 64
    """Policy tokens per turn (one generation round)."""
    max_response_tokens: int = 768
    """Policy + observation tokens after the prompt; an episode that would exceed it is
    truncated (``budget_exhausted``)."""
    max_obs_tokens: int = 0
    """Cut each observation to this many tokens (0 = no cut)."""
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    greedy: bool = False
    seed: int = 0
    n: int = 1
    """Samples per question (grouped by ``group_id``) in ``rollout_questions``."""
    return_hidden_states: bool = False
    hidden_layer: int | float | None = None
    """Record ``Trajectory.layer_states`` at this layer (None = off). An int indexes
    ``model(..., output_hidden_states=True).hidden_states`` (0 = embeddings, ``L`` = the
    last layer after the final norm, negative counts from the end); a float in (0, 1] is a
    fraction of the depth, resolved to ``int(fraction * L)`` as in the Topology of
    Reasoning paper (which uses 0.9). The resolved index is ``Trajectory.hidden_layer``.
    Each row is the state at the policy token's own position (``hidden_states[layer][0,
    P + j]`` of a teacher-forced forward for response token j; P = prompt length), unlike
    ``return_hidden_states``' final-norm state at the position that produced the token."""
    max_batch_size: int = 64
    """Episodes generated together; larger requests run in chunks of this size."""

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.max_response_tokens < 1:
            raise ValueError(f"max_response_tokens must be >= 1, got {self.max_response_tokens}")
        if not self.greedy and not self.temperature > 0:
            raise ValueError(f"temperature must be > 0 (or greedy=True), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        hl = self.hidden_layer
        if isinstance(hl, (np.integer, np.floating)):  # e.g. from an array of settings
            hl = self.hidden_layer = hl.item()
        if hl is not None:
            if isinstance(hl, bool) or not isinstance(hl, (int, float)):
                raise ValueError(f"hidden_layer must be None, an int layer index or a float depth fraction, got {hl!r}")
            if isinstance(hl, float) and not 0.0 < hl <= 1.0:
                raise ValueError(f"hidden_layer as a depth fraction must be in (0, 1], got {hl}")


def resolve_hidden_layer(hidden_layer: int | float, num_layers: int) -> int:
    """Index into ``hidden_states`` (``num_layers + 1`` entries) of ``hidden_layer``: an int
    as is (negative from the end), a float fraction ``f`` as ``int(f * num_layers)``.
    Raises ValueError when it falls outside ``0..num_layers``."""
    if isinstance(hidden_layer, float):
        idx = int(hidden_layer * num_layers)
    else:
        idx = int(hidden_layer)
        if idx < 0:
            idx += num_layers + 1
    if not 0 <= idx <= num_layers:
        raise ValueError(f"hidden_layer {hidden_layer!r} is outside the model's hidden states "
                         f"0..{num_layers} ({num_layers} layers)")
    return idx


class _Row:
    """Engine state of one live episode (its :class:`EpisodeRun` and KV cache)."""

    __slots__ = ("run", "seq", "n_cached", "kv", "gen", "turn_ids", "stop", "hidden", "layer", "unread", "index")

    def __init__(self, run: EpisodeRun, prompt_ids, gen, index):
        self.run, self.gen, self.index = run, gen, index
        self.seq = list(prompt_ids)
        self.n_cached = 0
        self.kv = None  # list of (keys [1,H,L,D], values) per layer, L = n_cached
        self.turn_ids: list[int] = []
        self.stop = ""
        self.hidden: list[np.ndarray] = []
        self.layer: list[np.ndarray] = []
        self.unread = False  # the last sampled token has not been fed to the model yet

    @property
    def traj(self) -> Trajectory:
        return self.run.traj


class RolloutEngine:
    """Batched multi-turn generation against gymnasium search envs.

    ``model`` is any HF causal LM (``AutoModelForCausalLM``), ``tokenizer`` its tokenizer.
    ``step_batch(envs, actions)`` defaults to ``searchgym.envs.step_batch`` (:func:`step_runs`).
    """

    def __init__(self, model, tokenizer, config: RolloutConfig | None = None,
                 step_batch: Callable | None = None):
        # torch, transformers and verl load with the engine (+1.8 s, python -X importtime), not
        # with `import searchgym.agents.rollout`: its configs and the text policies need none
        import torch
        from verl.utils.torch_functional import entropy_from_logits

        from searchgym.agents import decoding

        self.decoding = decoding
        self._entropy_from_logits = entropy_from_logits

        self.torch = torch
        self.model = model
        self.tokenizer = tokenizer
        self.config = config or RolloutConfig()
        self.step_batch = step_batch
        tags = tag_ids(tokenizer)
        stops = {tags[t] for t in STOP_TAGS if t in tags}
        if len(stops) < 2:
            raise ValueError(
                "the tokenizer must encode </search> and </answer> as single tokens "
                "(add them as added tokens); got ids for "
                f"{[t for t in STOP_TAGS if t in tags]}"
            )
        if tokenizer.eos_token_id is not None:
            stops.add(int(tokenizer.eos_token_id))
        self.stop_ids = stops
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (
            tokenizer.eos_token_id or 0)
        # the resolved RolloutConfig.hidden_layer (None = layer states off)
        self.layer_index = None if self.config.hidden_layer is None else resolve_hidden_layer(
            self.config.hidden_layer, model.config.get_text_config().num_hidden_layers)
        self._newline_ids: dict[int, bool] = {}
        self.timings = {"generate_s": 0.0, "env_s": 0.0, "other_s": 0.0}
        self.generated_tokens = 0

    # -- public API ----------------------------------------------------------------
    def rollout(self, envs: Sequence, reset_options: Sequence[dict | None] | None = None,
                group_ids: Sequence | None = None, episode_indices: Sequence[int] | None = None,
                reset_seeds: Sequence[int | None] | None = None) -> list[Trajectory]:
        """Run one episode per env (in chunks of ``max_batch_size``) and return them.

        ``reset_options[i]`` goes to ``envs[i].reset`` (e.g. ``{"index": q}``);
        ``group_ids[i]`` labels the GRPO group (default: the question id);
        ``episode_indices[i]`` seeds the row's sampler (default ``i``), so the same index
        gives the same samples whatever the batch.
        """
        n = len(envs)
        reset_options = list(reset_options) if reset_options is not None else [None] * n
        episode_indices = list(episode_indices) if episode_indices is not None else list(range(n))
        reset_seeds = list(reset_seeds) if reset_seeds is not None else [None] * n
        if not (len(reset_options) == len(episode_indices) == len(reset_seeds) == n):
            raise ValueError("envs, reset_options, episode_indices and reset_seeds must have equal length")
        if group_ids is not None and len(group_ids) != n:
            raise ValueError("group_ids must have one entry per env")
        if len({id(e) for e in envs}) != n:
            raise ValueError("each episode needs its own env instance (got the same env twice)")
        out: list[Trajectory] = []
        bs = self.config.max_batch_size
        for s in range(0, n, bs):
            sl = slice(s, s + bs)
            out += self._rollout_chunk(
                envs[sl], reset_options[sl], None if group_ids is None else list(group_ids)[sl],
                episode_indices[sl], reset_seeds[sl])
        return out

    def rollout_questions(self, envs: Sequence, question_indices: Sequence[int],
                          n: int | None = None) -> list[Trajectory]:
        """``n`` samples (default ``config.n``) of each question, grouped by question.

        Needs ``len(envs) >= min(len(question_indices) * n, max_batch_size)``; envs are reused
        across chunks. ``group_id`` is the question index; ``sample_index`` 0..n-1.
        """
        n = n or self.config.n
        jobs = [(q, j) for q in question_indices for j in range(n)]
        bs = min(self.config.max_batch_size, len(envs))
        if bs < 1:
            raise ValueError("rollout_questions needs at least one env")
        out: list[Trajectory] = []
        for s in range(0, len(jobs), bs):
            chunk = jobs[s:s + bs]
            trajs = self.rollout(
                list(envs[:len(chunk)]), [{"index": int(q)} for q, _ in chunk],
                group_ids=[int(q) for q, _ in chunk],
                episode_indices=[s + i for i in range(len(chunk))])
            for t, (_, j) in zip(trajs, chunk):
                t.sample_index = j
            out += trajs
        return out

    # -- internals -----------------------------------------------------------------
    def _rollout_chunk(self, envs, reset_options, group_ids, episode_indices, reset_seeds):
        torch = self.torch
        cfg = self.config
        rows: list[_Row] = []
        policy = getattr(self.model, "name_or_path", "") or type(self.model).__name__
        for i, env in enumerate(envs):
            prompt, info = env.reset(seed=reset_seeds[i], options=reset_options[i])
            pids = encode_prompt(self.tokenizer, prompt)
            run = EpisodeRun.start(env, prompt, info, group_id=None if group_ids is None else group_ids[i],
                                   episode_index=episode_indices[i], policy=policy, prompt_ids=pids)
            g = torch.Generator().manual_seed((cfg.seed * 1_000_003 + int(episode_indices[i])) % (2**63))
            rows.append(_Row(run, pids, g, i))
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode(), self.decoding.gqa_attention(self.model):
                active = list(rows)
                while active:
                    t0 = time.perf_counter()
                    self._generate_round(active)
                    t1 = time.perf_counter()
                    self.timings["generate_s"] += t1 - t0
                    self._env_round(active)
                    self.timings["env_s"] += time.perf_counter() - t1
                    active = [r for r in active if not r.run.done]
                if self.layer_index is not None:
                    t0 = time.perf_counter()
                    self._read_last_tokens(rows)
                    self.timings["generate_s"] += time.perf_counter() - t0
        finally:
            if was_training:
                self.model.train()
        t0 = time.perf_counter()
        d = self.model.config.get_text_config().hidden_size
        for r in rows:
            tr = r.traj
            tr.segments = segment_labels(self.tokenizer, tr.response_ids, tr.loss_mask)
            if cfg.return_hidden_states:
                tr.hidden_states = (np.stack(r.hidden).astype(np.float32) if r.hidden
                                    else np.zeros((0, d), np.float32))
            if self.layer_index is not None:
                tr.layer_states = (np.stack(r.layer).astype(np.float32) if r.layer
                                   else np.zeros((0, d), np.float32))
                tr.hidden_layer = self.layer_index
                tr.step_ids = self._step_ids(tr)
            r.kv = None
        self.timings["other_s"] += time.perf_counter() - t0
        return [r.traj for r in rows]

    def _read_last_tokens(self, rows: list[_Row]) -> None:
        """Feed each row's unread tokens (its last sampled token and any observation after
        it) over its saved cache in one batched forward, for the layer state at that last
        policy token's own position."""
        torch = self.torch
        rows = [r for r in rows if r.unread]
        if not rows:
            return
        past = [r.n_cached for r in rows]
        pend = [r.seq[r.n_cached:] for r in rows]
        P, U = max(past), max(len(u) for u in pend)
        input_ids = torch.full((len(rows), U), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), P + U), dtype=torch.bool)
        pos = torch.zeros((len(rows), U), dtype=torch.long)
        for b, (p, u) in enumerate(zip(past, pend)):
            input_ids[b, U - len(u):] = torch.tensor(u, dtype=torch.long)
            mask[b, P - p:P] = True
            mask[b, P + U - len(u):] = True
            pos[b, U - len(u):] = torch.arange(p, p + len(u))
        cache = self._build_cache(rows, P, capacity=P + U)
        out = self.model(input_ids=input_ids, attention_mask=self._prefill_mask(mask, P, U), position_ids=pos,
                         past_key_values=cache, use_cache=True, output_hidden_states=True, logits_to_keep=1)
        states = out.hidden_states[self.layer_index]
        for b, (r, u) in enumerate(zip(rows, pend)):
            r.layer.append(states[b, U - len(u)].float().numpy().copy())
            r.unread = False

    def _step_ids(self, tr: Trajectory) -> list[int]:
        return trajectory_step_ids(self.tokenizer, tr, self._newline_ids)

    def _env_round(self, rows: list[_Row]) -> None:
        cfg = self.config
        actions = [self.tokenizer.decode(r.turn_ids, skip_special_tokens=True) for r in rows]
        results = step_runs([r.run for r in rows], actions, self.step_batch)
        for r, action, (obs, reward, term, trunc, info) in zip(rows, actions, results):
            tr = r.traj
            obs_ids = encode_text(self.tokenizer, obs) if (obs and not (term or trunc)) else []
            if cfg.max_obs_tokens and len(obs_ids) > cfg.max_obs_tokens:
                obs_ids = obs_ids[:cfg.max_obs_tokens]
            used = len(tr.response_ids)
            # Room for the observation and at least one more policy token.
            over = bool(obs_ids) and used + len(obs_ids) + 1 > cfg.max_response_tokens
            out_of_budget = r.stop == "budget" and used >= cfg.max_response_tokens
            if r.run.record(action, obs if obs_ids and not over else None, reward, term, trunc, info,
                            end=over or out_of_budget or not obs_ids, budget_exhausted=over or out_of_budget,
                            stop=r.stop, num_policy_tokens=len(r.turn_ids),
                            num_obs_tokens=0 if over else len(obs_ids)):
                continue
            if cfg.max_obs_tokens and obs_ids:
                tr.turns[-1]["observation"] = self.tokenizer.decode(obs_ids)
            tr.response_ids += obs_ids
            tr.loss_mask += [0] * len(obs_ids)
            tr.logprobs += [0.0] * len(obs_ids)
            tr.entropies += [0.0] * len(obs_ids)
            r.seq += obs_ids

    def _generate_round(self, rows: list[_Row]) -> None:
        """Generate one turn for every row; on return each row's ``turn_ids`` holds the
        sampled tokens (appended to its trajectory) and its KV cache is saved."""
        torch = self.torch
        cfg = self.config
        model = self.model
        for r in rows:
            r.turn_ids, r.stop = [], ""
        budgets = [min(cfg.max_new_tokens, cfg.max_response_tokens - len(r.traj.response_ids)) for r in rows]
        live = [i for i, b in enumerate(budgets) if b > 0]
        for i, b in enumerate(budgets):
            if b <= 0:
                rows[i].stop = "budget"
        if not live:
            return
        rows = [rows[i] for i in live]
        budgets = [budgets[i] for i in live]
        B = len(rows)
        past = [r.n_cached for r in rows]
        pend = [r.seq[r.n_cached:] for r in rows]
        P, U = max(past), max(len(p) for p in pend)
        input_ids = torch.full((B, U), self.pad_id, dtype=torch.long)
        mask = torch.zeros((B, P + U), dtype=torch.bool)  # which key columns are real tokens
        pos = torch.zeros((B, U), dtype=torch.long)
        for b, (p, u) in enumerate(zip(past, pend)):
            input_ids[b, U - len(u):] = torch.tensor(u, dtype=torch.long)
            mask[b, P - p:P] = True
            mask[b, P + U - len(u):] = True
            pos[b, U - len(u):] = torch.arange(p, p + len(u))
        cache = self._build_cache(rows, P, capacity=P + U + max(budgets))
        next_pos = torch.tensor([p + len(u) for p, u in zip(past, pend)], dtype=torch.long)
        want_h = cfg.return_hidden_states
        state_layer = self.layer_index
        want_states = want_h or state_layer is not None
        # logits_to_keep=1: only the last position is sampled from; the LM head over every
        # prefilled observation token was the largest single cost of a round
        out = model(input_ids=input_ids, attention_mask=self._prefill_mask(mask, P, U), position_ids=pos,
                    past_key_values=cache, use_cache=True, output_hidden_states=want_states, logits_to_keep=1)
        cache = out.past_key_values
        if state_layer is not None:
            # the prefill read each continuing row's last sampled token first (its own position)
            states = out.hidden_states[state_layer]
            for b, (r, u) in enumerate(zip(rows, pend)):
                if r.unread:
                    r.layer.append(states[b, U - len(u)].float().numpy().copy())
                    r.unread = False
        counts = [0] * B
        prefilled = True
        while True:
            logits = out.logits[:, -1, :].float()
            if state_layer is not None and not prefilled:
                # this decode step read each row's previous sampled token
                lay = out.hidden_states[state_layer][:, -1, :].float().numpy()
                for b, r in enumerate(rows):
                    r.layer.append(lay[b].copy())
            prefilled = False
            tok, lp, ent = self._sample(logits, rows)
            hid = out.hidden_states[-1][:, -1, :].float().numpy() if want_h else None
            stopped = []
            tok_l = tok.tolist()
            lp_l, ent_l = lp.tolist(), ent.tolist()
            for b, r in enumerate(rows):
                t = tok_l[b]
                r.turn_ids.append(t)
                r.seq.append(t)
                tr = r.traj
                tr.response_ids.append(t)
                tr.loss_mask.append(1)
                tr.logprobs.append(lp_l[b])
                tr.entropies.append(ent_l[b])
                if want_h:
                    r.hidden.append(hid[b].copy())
                counts[b] += 1
                if t in self.stop_ids:
                    r.stop = "eos" if t == self.tokenizer.eos_token_id else "tag"
                    stopped.append(b)
                elif counts[b] >= budgets[b]:
                    r.stop = "budget"
                    stopped.append(b)
            self.generated_tokens += B
            if stopped:
                for b in stopped:
                    cols = mask[b].nonzero().squeeze(1)
                    rows[b].kv = [(layer.keys[b:b + 1, :, cols].clone(), layer.values[b:b + 1, :, cols].clone())
                                  for layer in cache.layers]
                    rows[b].n_cached = len(rows[b].seq) - 1  # the last sampled token is pending
                    rows[b].unread = state_layer is not None
                if len(stopped) == B:
                    break
                # Live rows from the tail fill the stopped rows' slots, so compacting the
                # cache copies only those rows (PreallocatedLayer.batch_select_indices).
                gone = set(stopped)
                n_keep = B - len(gone)
                tail = [b for b in range(n_keep, B) if b not in gone]
                keep = [b if b not in gone else tail.pop() for b in range(n_keep)]
                idx = torch.tensor(keep, dtype=torch.long)
                cache.batch_select_indices(idx)
                mask, next_pos, tok = mask[idx], next_pos[idx], tok[idx]
                rows = [rows[b] for b in keep]
                budgets = [budgets[b] for b in keep]
                counts = [counts[b] for b in keep]
                B = n_keep
            mask = torch.cat([mask, torch.ones((B, 1), dtype=torch.bool)], dim=1)
            out = model(input_ids=tok.view(B, 1), attention_mask=self._decode_mask(mask),
                        position_ids=next_pos.view(B, 1), past_key_values=cache, use_cache=True,
                        output_hidden_states=want_states)
            cache = out.past_key_values
            next_pos = next_pos + 1

    def _prefill_mask(self, valid, P: int, U: int):
        """Attention mask for prefilling ``U`` pending tokens after ``P`` cached columns.

        For SDPA attention a ready 4D boolean mask (transformers passes it through as is,
        skipping its per-call mask construction); other attention implementations get the
        2D padding mask. Every query may see itself, so a left-padding query never has an
        all-masked row (NaN in SDPA); its key column stays masked for the real queries.
        """
        if not self._bool_mask_ok():
            return valid.long()
        torch = self.torch
        i = torch.arange(U).unsqueeze(1)
        j = torch.arange(P + U).unsqueeze(0)
        causal = j <= P + i
        m = valid[:, None, None, :] & causal[None, None]
        m[:, :, i.squeeze(1), P + i.squeeze(1)] = True
        return m

    def _decode_mask(self, valid):
        return valid[:, None, None, :] if self._bool_mask_ok() else valid.long()

    def _bool_mask_ok(self) -> bool:
        return getattr(self.model.config, "_attn_implementation", None) in ("sdpa", self.decoding.GQA_SDPA)

    def _build_cache(self, rows: list[_Row], P: int, capacity: int):
        """A cache holding each row's saved KV, left-padded to ``P`` columns, with room for
        ``capacity`` columns so the round's decode steps write in place."""
        torch = self.torch
        cfg = self.model.config
        ref = next((r.kv for r in rows if r.kv is not None), None)
        if ref is None:  # first round: empty layers shaped from the config
            heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
            dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
            dtype = next(self.model.parameters()).dtype
            empty = torch.zeros((len(rows), heads, 0, dim), dtype=dtype)
            return self.decoding.preallocated_cache(self.model, [(empty, empty)] * cfg.num_hidden_layers, capacity)
        data = []
        for li, (k0, v0) in enumerate(ref):
            _, H, _, D = k0.shape
            K = torch.zeros((len(rows), H, P, D), dtype=k0.dtype)
            V = torch.zeros((len(rows), H, P, v0.shape[-1]), dtype=v0.dtype)
            for b, r in enumerate(rows):
                if r.kv is not None and r.n_cached:
                    k, v = r.kv[li]
                    K[b, :, P - k.shape[2]:] = k[0]
                    V[b, :, P - v.shape[2]:] = v[0]
            data.append((K, V))
        for r in rows:
            r.kv = None  # now owned by the batch cache
        return self.decoding.preallocated_cache(self.model, data, capacity)

    def _sample(self, logits, rows: list[_Row]):
        """(token ids, log-probs, entropies) for each row's next token."""
        torch = self.torch
        cfg = self.config
        scaled = logits if cfg.greedy else logits / cfg.temperature
        logp = torch.log_softmax(scaled, dim=-1)
        ent = self._entropy_from_logits(scaled)
        if cfg.greedy:
            tok = scaled.argmax(dim=-1)
        else:
            probs = logp.exp()
            u = torch.cat([torch.rand(1, generator=r.gen, dtype=torch.float64) for r in rows]).to(probs.dtype)
            if not cfg.top_k and cfg.top_p >= 1.0:
                # No truncation: inverse CDF over the unsorted vocabulary (no sort needed).
                cdf = probs.cumsum(dim=-1)
                j = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(1)).clamp_(max=probs.shape[1] - 1)
                tok = j.squeeze(1)
                lp = logp.gather(1, tok.unsqueeze(1)).squeeze(1)
                return tok, lp, ent
            sp, si = probs.sort(dim=-1, descending=True)
            if cfg.top_k:
                sp[:, cfg.top_k:] = 0.0
            if cfg.top_p < 1.0:
                # Keep the smallest prefix whose mass reaches top_p (the first token always).
                excl = sp.cumsum(dim=-1) - sp
                sp = torch.where(excl < cfg.top_p, sp, torch.zeros_like(sp))
            cdf = sp.cumsum(dim=-1)
            j = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(1)).clamp_(max=sp.shape[1] - 1)
            tok = si.gather(1, j).squeeze(1)
        lp = logp.gather(1, tok.unsqueeze(1)).squeeze(1)
        return tok, lp, ent


def trajectory_step_ids(tokenizer, traj: Trajectory, newline_cache: dict[int, bool] | None = None) -> list[int]:
    """Reasoning-step id of each policy token of a token-level trajectory (the rule of
    ``searchgym.metrics.graph.reasoning_step_ids``: segments from ``traj.segments``, newline
    = the token's decoded text contains "\n"). ``newline_cache`` memoises per token id."""
    # scipy + networkx (+130 ms, python -X importtime), only with layer states
    from searchgym.metrics.graph import reasoning_step_ids

    cache = newline_cache if newline_cache is not None else {}
    ids = [t for t, m in zip(traj.response_ids, traj.loss_mask) if m]
    for t in set(ids) - cache.keys():
        cache[t] = "\n" in tokenizer.decode([t])
    segs = [s for s, m in zip(traj.segments, traj.loss_mask) if m]
    return reasoning_step_ids(segs, [cache[t] for t in ids])


def teacher_forced_layer_states(model, trajs: Sequence[Trajectory], hidden_layer: int | float,
                                batch_size: int = 16) -> list[np.ndarray]:
    """The ``layer_states`` the engine would record, recomputed by teacher forcing: one
    forward of prompt + response per trajectory (right-padded batches), the state of
    layer ``hidden_layer`` (resolved as ``RolloutConfig.hidden_layer``) at each policy
    token's own position, ``[num_policy_tokens, d]`` float32. For another model on the same
    tokens (e.g. the untrained model as a content control) or for saved trajectories."""
    import torch  # +1 s (python -X importtime): not for `import searchgym.agents.rollout`

    layer = resolve_hidden_layer(hidden_layer, model.config.get_text_config().num_hidden_layers)
    out: list[np.ndarray] = []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for s in range(0, len(trajs), batch_size):
                chunk = trajs[s:s + batch_size]
                seqs = [list(t.prompt_ids) + list(t.response_ids) for t in chunk]
                T = max(len(x) for x in seqs)
                ids = torch.zeros((len(chunk), T), dtype=torch.long)
                att = torch.zeros((len(chunk), T), dtype=torch.long)
                for b, x in enumerate(seqs):
                    ids[b, :len(x)] = torch.tensor(x, dtype=torch.long)
                    att[b, :len(x)] = 1
                states = model(input_ids=ids, attention_mask=att, output_hidden_states=True,
                               logits_to_keep=1).hidden_states[layer]
                for b, t in enumerate(chunk):
                    P = len(t.prompt_ids)
                    pol = torch.tensor(t.loss_mask, dtype=torch.bool)
                    out.append(states[b, P:P + len(t.response_ids)][pol].float().numpy().copy())
    finally:
        model.train(was_training)
    return out


def config_dict(cfg: RolloutConfig) -> dict:
    return asdict(cfg)
