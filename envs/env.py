"""``SearchEnv``: a multi-turn search-and-answer gymnasium environment, and batched stepping.

One episode = one question. The observation after ``reset`` is the task prompt; each
``step(text)`` parses the first complete ``<search>``/``<answer>`` tag (see
:mod:`searchgym.envs.parser`): a search returns ``<information>Doc 1(Title: t) text
...</information>`` with the top-k documents of the env's retriever, an answer ends the
episode with its reward, anything else returns a corrective observation and counts a format
error. ``max_turns`` steps without an answer truncate the episode.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, fields
from functools import lru_cache
from typing import Any, Sequence

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector.utils import read_from_shared_memory

from searchgym.envs.parser import Action, parse_action
from searchgym.envs.reward import get_reward
from searchgym.envs.signature import doc_roles, match_strategy, trajectory_signature
from searchgym.envs.tasks import Question
from searchgym.retrieval.base import Hit, Retriever

PROMPT = (
    "Answer the question. Think inside <think> </think>. To search, write <search> query </search>; "
    "results come back inside <information> </information>. Give the final answer inside "
    "<answer> </answer>, e.g. <answer> Kelmor </answer>.\nQuestion: {question}\n"
)
CORRECTIVE = (
    "\nMy previous action is invalid. To search, put the query between <search> and </search>. "
    "To answer, put the answer between <answer> and </answer>. Let me try again.\n"
)


@dataclass(frozen=True)
class EnvConfig:
    """Episode and reward settings of a :class:`SearchEnv`."""

    max_turns: int = 5  # steps before truncation (3-hop forward_confirm: 4 searches + answer)
    topk: int = 3  # documents per search
    doc_chars: int = 180  # each document's text is cut to this many characters
    max_obs_chars: int = 4096  # hard bound on any observation (prompt included)
    max_query_chars: int = 300  # a search query / answer is cut to this many characters
    max_question_chars: int = 1000  # an (external) question is cut to this many characters
    reward: str = "em"  # "em" | "f1"
    format_penalty: float = 0.0  # subtracted from the final reward if any format error occurred

    def __post_init__(self):
        for name in ("max_turns", "topk", "doc_chars", "max_obs_chars", "max_query_chars", "max_question_chars"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"EnvConfig.{name} must be a positive int, got {v!r}")
        get_reward(self.reward)
        if not 0.0 <= float(self.format_penalty) <= 1.0:
            raise ValueError(f"EnvConfig.format_penalty must be in [0, 1], got {self.format_penalty!r}")
        if self.max_obs_chars < 512:
            raise ValueError(f"EnvConfig.max_obs_chars must be >= 512, got {self.max_obs_chars}")

    @classmethod
    def from_kwargs(cls, base: "EnvConfig | None" = None, **kw) -> "EnvConfig":
        """``base`` with the given fields replaced; unknown keys raise naming the key."""
        names = {f.name for f in fields(cls)}
        bad = sorted(set(kw) - names)
        if bad:
            raise ValueError(f"unknown EnvConfig field(s) {bad}; valid: {sorted(names)}")
        d = {f.name: getattr(base or cls(), f.name) for f in fields(cls)}
        d.update(kw)
        return cls(**d)


def _printable(c: str) -> bool:
    return c.isprintable() or c in "\n\t"


@lru_cache(maxsize=1)
def _unicode_charset() -> str:
    # Every printable code point (all planes) plus newline and tab: what tokenizers decode to.
    return "".join(chr(i) for i in range(sys.maxunicode + 1) if _printable(chr(i)))


class UnicodeText(spaces.Text):
    """``spaces.Text`` over all printable Unicode code points plus ``\\n`` and ``\\t``.

    The charset tables are built once per process and shared by every instance.
    """

    _shared: dict[str, Any] = {}

    def __init__(self, max_length: int, *, min_length: int = 0, seed=None):
        if not UnicodeText._shared:
            proto = spaces.Text(1, min_length=0, charset=_unicode_charset())
            UnicodeText._shared = {k: getattr(proto, k) for k in ("_char_set", "_char_list", "_char_index", "_char_str")}
        self.min_length, self.max_length = int(min_length), int(max_length)
        self.__dict__.update(UnicodeText._shared)
        spaces.Space.__init__(self, dtype=str, seed=seed)

    def __repr__(self) -> str:
        return f"UnicodeText({self.min_length}, {self.max_length})"

    def __eq__(self, other) -> bool:
        return isinstance(other, UnicodeText) and (self.min_length, self.max_length) == (other.min_length, other.max_length)


class SharedTextBatch(Sequence):
    """The texts of ``n`` envs in an ``AsyncVectorEnv`` shared-memory block, decoded on access.

    gymnasium reads the shared block once, at start-up, and returns (a deep copy of) that
    object after every step; for ``spaces.Text`` it builds a tuple of str, which freezes
    the start-up contents (all index 0: tab characters). This view decodes the current
    contents instead; a deep copy (what ``copy=True``, the default, hands out) is a plain
    tuple of str.
    """

    def __init__(self, space: "UnicodeText", shared_memory, n: int):
        self._space, self._n = space, n
        self._codes = np.frombuffer(shared_memory.get_obj(), dtype=np.int32).reshape((n, space.max_length))

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i):
        if isinstance(i, slice):
            return tuple(self[j] for j in range(*i.indices(self._n)))
        row = self._codes[i]
        chars = self._space.character_list
        return "".join([chars[c] for c in row[row < len(chars)].tolist()])

    def __deepcopy__(self, memo) -> tuple[str, ...]:
        return tuple(self)

    def __eq__(self, other) -> bool:
        return tuple(self) == tuple(other) if isinstance(other, (tuple, list, SharedTextBatch)) else NotImplemented

    def __repr__(self) -> str:
        return f"SharedTextBatch({tuple(self)!r})"


@read_from_shared_memory.register(UnicodeText)
def _read_unicode_text(space: UnicodeText, shared_memory, n: int = 1) -> SharedTextBatch:
    return SharedTextBatch(space, shared_memory, n)


def sanitize(text: str) -> str:
    """Replace non-printable characters (other than newline/tab) by spaces."""
    return "".join(c if _printable(c) else " " for c in text)


def format_docs(hits: Sequence[Hit], doc_chars: int) -> str:
    """Search-R1's observation: ``<information>Doc 1(Title: t) text\\n...</information>``."""
    lines = []
    for i, h in enumerate(hits, start=1):
        text = h.text if len(h.text) <= doc_chars else h.text[:doc_chars].rsplit(" ", 1)[0] + " ..."
        lines.append(f"Doc {i}(Title: {h.title[:80]}) {text}")
    return "\n<information>" + "\n".join(lines) + "</information>\n"


class SearchEnv(gym.Env):
    """Multi-turn search environment over a list of questions and a shared retriever.

    Args:
        questions: the questions episodes draw from (one split).
        retriever: any :class:`searchgym.retrieval.Retriever`; envs meant to be stepped
            together by :func:`step_batch` should share one object.
        config: :class:`EnvConfig`.
        split: label reported in ``info``.
    """

    metadata = {"render_modes": ["ansi"]}

    def __init__(self, questions: Sequence[Question], retriever: Retriever, config: EnvConfig | None = None,
                 split: str = "train", render_mode: str | None = None):
        if not questions:
            raise ValueError("SearchEnv needs at least one question")
        if not hasattr(retriever, "search"):
            raise ValueError(f"retriever must implement search(queries, k); got {type(retriever).__name__}")
        if render_mode not in (None, "ansi"):
            raise ValueError(f"render_mode must be None or 'ansi', got {render_mode!r}")
        self.questions = list(questions)
        self.retriever = retriever
        self.config = config or EnvConfig()
        self.split = split
        self.render_mode = render_mode
        self._reward_fn = get_reward(self.config.reward)
        self.observation_space = UnicodeText(self.config.max_obs_chars)
        self.action_space = UnicodeText(100_000)
        self.question: Question | None = None
        self._done = True
        self._transcript: list[str] = []

    # -- episode ----------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        options = options or {}
        if "index" in options:
            idx = options["index"]
            if not isinstance(idx, (int, np.integer)) or not 0 <= int(idx) < len(self.questions):
                raise ValueError(f"options['index'] must be an int in [0, {len(self.questions)}), got {idx!r}")
            idx = int(idx)
        else:
            idx = int(self.np_random.integers(len(self.questions)))
        self.index = idx
        self.question = self.questions[idx]
        self.turn = 0
        self.format_errors = 0
        self._searches: list[list[str]] = []
        self._queries: list[str] = []
        self._titles: list[list[str]] = []
        self._done = False
        # a dataset's own prompt (external tasks, prompt="dataset") is served as it is, bounded
        text = self.question.prompt or PROMPT.format(question=self.question.question[: self.config.max_question_chars])
        prompt = self._bound(text)
        self._transcript = [prompt]
        info = {"question_id": self.question.qid, "question": self.question.question,
                "golden_answers": list(self.question.golden_answers), "family": self.question.family,
                "split": self.split, "index": idx}
        return prompt, info

    def step(self, action: str):
        self._prepare(action)
        if self._pending.kind == "search":
            hits = self.retriever.search([self._pending.content], self.config.topk)[0]
            return self._finish_step(hits)
        return self._finish_step(None)

    # step is split in two so step_batch can do all searches in one retriever call
    def _prepare(self, action: str) -> Action:
        if self._done:
            raise RuntimeError("step() called on a finished episode; call reset() first")
        self._pending = parse_action(action, self.config.max_query_chars)
        return self._pending

    def _finish_step(self, hits: Sequence[Hit] | None):
        act, cfg, q = self._pending, self.config, self.question
        self.turn += 1
        reward, terminated = 0.0, False
        info: dict[str, Any] = {"action": act.kind, "query": None, "answer": None, "doc_ids": [],
                                "format_error": act.kind == "invalid", "error": act.error}
        if act.kind == "search":
            hits = list(hits or [])[: cfg.topk]
            ids = [h.doc_id for h in hits]
            self._searches.append(ids)
            self._queries.append(act.content)
            self._titles.append([h.title for h in hits])
            info.update(query=act.content, doc_ids=ids, surfaced=doc_roles(q, ids) if q.roles else [None] * len(ids))
            obs = format_docs(hits, cfg.doc_chars)
        elif act.kind == "answer":
            score = float(self._reward_fn(act.content, q.golden_answers))
            reward = score - (cfg.format_penalty if self.format_errors else 0.0)
            terminated = True
            info.update(answer=act.content, score=score)
            obs = ""
        else:
            self.format_errors += 1
            obs = CORRECTIVE
        truncated = not terminated and self.turn >= cfg.max_turns
        info["turn"] = self.turn
        info["format_errors"] = self.format_errors
        if terminated or truncated:
            self._done = True
            if terminated:
                outcome = "correct" if info["score"] >= 1.0 else "wrong"
            else:
                outcome = "noanswer"
            sig = trajectory_signature(q, self._searches, outcome, self._queries, self._titles)
            info.update(signature=sig, strategy=match_strategy(q, sig), correct=outcome == "correct")
        obs = self._bound(obs)
        self._transcript.append(f"[action] {act.kind}: {act.content or act.error}\n{obs}")
        return obs, float(reward), terminated, truncated, info

    def _bound(self, obs: str) -> str:
        return sanitize(obs[: self.config.max_obs_chars])

    def render(self):
        if self.render_mode == "ansi":
            return "\n".join(self._transcript)
        return None


def step_batch(envs: Sequence[gym.Env], actions: Sequence[str]) -> list[tuple]:
    """Step many envs at once with one ``retriever.search`` call per distinct retriever.

    Returns ``[(obs, reward, terminated, truncated, info), ...]`` in the order of ``envs``,
    identical to calling ``env.step(action)`` on each in turn. Wrapped envs are accepted
    (their ``.unwrapped`` SearchEnv is stepped, so wrappers' own step logic is bypassed).
    """
    if len(envs) != len(actions):
        raise ValueError(f"step_batch: {len(envs)} envs but {len(actions)} actions")
    base = [e.unwrapped for e in envs]
    for e in base:
        if not isinstance(e, SearchEnv):
            raise ValueError(f"step_batch needs SearchEnv instances, got {type(e).__name__}")
    parsed = [e._prepare(a) for e, a in zip(base, actions)]
    groups: dict[int, list[int]] = {}
    for i, (e, p) in enumerate(zip(base, parsed)):
        if p.kind == "search":
            groups.setdefault(id(e.retriever), []).append(i)
    hits: dict[int, list[Hit]] = {}
    for idxs in groups.values():
        k = max(base[i].config.topk for i in idxs)
        res = base[idxs[0]].retriever.search([parsed[i].content for i in idxs], k)
        for i, r in zip(idxs, res):
            hits[i] = list(r)[: base[i].config.topk]
    return [e._finish_step(hits.get(i)) for i, e in enumerate(base)]
