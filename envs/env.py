"""``SearchEnv``: a multi-turn search-and-answer gymnasium environment, its info contract
(:class:`ResetInfo`, :class:`StepInfo`) and batched stepping (:func:`step_batch`).

One episode = one question. The observation after ``reset`` is the task prompt; each
``step(text)`` parses the first complete ``<search>``/``<answer>`` tag (the rule of
:mod:`searchgym.envs.protocol`): a search returns ``<information>Doc 1(Title: t) text
...</information>`` with the top-k documents of the env's retriever, an answer ends the
episode with its reward, anything else returns a corrective observation and counts a format
error. ``max_turns`` steps without an answer truncate the episode.

The ``info`` dicts are the whole contract between the env and an agent: everything an agent
or trainer needs (the question record, its valid strategies, the turn limit, the number of
questions) is in them, every key is present at every step whatever the action, and a key
that does not apply to a step holds its documented neutral value (``None``, ``[]``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, fields
from functools import lru_cache
from typing import Any, Literal, Sequence, TypedDict

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector.utils import read_from_shared_memory

from searchgym.envs.protocol import CORRECTIVE, PROMPT, format_docs, parse_action
from searchgym.envs.reward import get_reward
from searchgym.envs.signature import doc_roles, match_strategy, trajectory_signature
from searchgym.envs.tasks import Question
from searchgym.retrieval.base import Hit, Retriever


class ResetInfo(TypedDict):
    """The ``info`` of :meth:`SearchEnv.reset`: the episode's question and its settings.

    Every key below is also in each :class:`StepInfo` of the episode, with the same value.
    """

    #: The question's id (``Question.qid``).
    question_id: str
    #: The question text (not the prompt: see the observation for that).
    question: str
    #: The gold answers the reward compares with.
    golden_answers: list[str]
    #: ``single_hop`` | ``multi_hop`` | ``comparison`` | ``multi_answer`` | ``external``.
    family: str
    #: The split label the env was made with (``train`` | ``validation`` | ``test``).
    split: str
    #: The question's position in the env's question list (``options={"index": i}`` at reset).
    index: int
    #: How many questions the env draws from (valid indices are ``range(num_questions)``).
    num_questions: int
    #: Steps before the episode is truncated (``EnvConfig.max_turns``).
    max_turns: int
    #: Names of the question's valid strategies; ``None`` for a question without any
    #: (external data: no ground-truth reasoning chain).
    valid_strategies: list[str] | None
    #: The full :class:`~searchgym.envs.tasks.Question` (roles, entity names, strategies,
    #: evidence): the ground truth scripted agents and oracles plan with. Not JSON: a frozen
    #: dataclass (``question_record.to_json()`` gives its record).
    question_record: Question


class StepInfo(ResetInfo):
    """The ``info`` of :meth:`SearchEnv.step`: the :class:`ResetInfo` keys plus these, all
    present at every step (search, answer or invalid action alike)."""

    #: What the action text parsed to (:func:`~searchgym.envs.protocol.parse_action`).
    action: Literal["search", "answer", "invalid"]
    #: The search query (whitespace collapsed, cut to ``max_query_chars``); None unless a search.
    query: str | None
    #: The answer text (as the query); None unless an answer.
    answer: str | None
    #: Ids of the retrieved documents, best first; ``[]`` unless a search.
    doc_ids: list[str]
    #: The question role of each retrieved document (``subject``, ``bridge``, ...; None for a
    #: document of no role entity, and for every document of an external question); ``[]``
    #: unless a search.
    surfaced: list[str | None]
    #: The answer's reward score before the format penalty (EM or F1 against
    #: ``golden_answers``); None unless an answer.
    score: float | None
    #: Whether this action was invalid.
    format_error: bool
    #: Why it was invalid (the parser's one-line reason); None for a valid action.
    error: str | None
    #: Steps taken so far in the episode, this one included (1, 2, ...).
    turn: int
    #: Invalid actions so far in the episode, this one included.
    format_errors: int
    #: The trajectory's strategy signature (:mod:`~searchgym.envs.signature`), set on the
    #: step that ends the episode (terminated or truncated); None before.
    signature: str | None
    #: The valid strategy the signature matches, at the episode's end; None before, and at
    #: the end when the trajectory matches none (unmatched is not a strategy).
    strategy: str | None
    #: At the episode's end: whether it answered with score 1.0 (a truncated episode is not
    #: correct); None before.
    correct: bool | None


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


class SearchEnv(gym.Env):
    """Multi-turn search environment over a list of questions and a shared retriever.

    Args:
        questions: the questions episodes draw from (one split). Read-only after
            construction; ``info["num_questions"]`` is its length.
        retriever: any :class:`searchgym.retrieval.Retriever`; envs meant to be stepped
            together by :func:`step_batch` should share one object.
        config: :class:`EnvConfig`.
        split: label reported in ``info``.
        render_mode: None or ``"ansi"`` (``render()`` returns the episode's transcript).
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
        self._preloaded: tuple[str, list[Hit]] | None = None

    # -- episode ----------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[str, ResetInfo]:
        """Start an episode on one question.

        Args:
            seed: seeds the env's RNG (``np_random``), as in :meth:`gymnasium.Env.reset`;
                the question is drawn with it unless ``options`` names one.
            options: ``{"index": i}`` picks question ``i`` of the env's list (an int in
                ``[0, num_questions)``; anything else raises ``ValueError``).

        Returns:
            observation (str): the prompt: the question's own prompt (external tasks with
                ``prompt: dataset``) or :data:`~searchgym.envs.protocol.PROMPT` filled with
                the question (cut to ``max_question_chars``); bounded to ``max_obs_chars``.
            info (ResetInfo): ``question_id`` (str), ``question`` (str), ``golden_answers``
                (list[str]), ``family`` (str), ``split`` (str), ``index`` (int),
                ``num_questions`` (int), ``max_turns`` (int), ``valid_strategies``
                (list[str] | None), ``question_record`` (Question); see :class:`ResetInfo`.
        """
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
        self.question = q = self.questions[idx]
        self.turn = 0
        self.format_errors = 0
        self._searches: list[list[str]] = []
        self._queries: list[str] = []
        self._titles: list[list[str]] = []
        self._done = False
        self._preloaded = None
        # a dataset's own prompt (external tasks, prompt="dataset") is served as it is, bounded
        text = q.prompt or PROMPT.format(question=q.question[: self.config.max_question_chars])
        prompt = self._bound(text)
        self._transcript = [prompt]
        return prompt, self._episode_info()

    def step(self, action: str) -> tuple[str, float, bool, bool, StepInfo]:
        """Take one turn: parse ``action`` and search, answer or correct.

        Args:
            action: the policy's text for this turn (any string; only the first complete
                ``<search>``/``<answer>`` tag counts, see :mod:`searchgym.envs.protocol`).

        Returns:
            observation (str): for a search, ``<information>Doc 1(Title: t) text
                ...</information>`` with the top ``topk`` documents (each cut to
                ``doc_chars``); for an answer, ``""``; for an invalid action,
                :data:`~searchgym.envs.protocol.CORRECTIVE`. Always bounded to
                ``max_obs_chars`` and printable.
            reward (float): 0.0 except on an answer: its score (EM or F1) minus
                ``format_penalty`` if the episode had a format error.
            terminated (bool): the action was an answer.
            truncated (bool): ``max_turns`` steps were taken without an answer.
            info (StepInfo): every :class:`ResetInfo` key, plus ``action``
                ("search" | "answer" | "invalid"), ``query`` (str | None), ``answer``
                (str | None), ``doc_ids`` (list[str]), ``surfaced`` (list[str | None]),
                ``score`` (float | None), ``format_error`` (bool), ``error`` (str | None),
                ``turn`` (int), ``format_errors`` (int), ``signature``, ``strategy`` (str | None)
                and ``correct`` (bool | None); the last three are set when the episode
                ends. See :class:`StepInfo` for each key's meaning and neutral value.

        Raises:
            RuntimeError: the episode is over (call :meth:`reset` first).
        """
        if self._done:
            raise RuntimeError("step() called on a finished episode; call reset() first")
        act, cfg, q = parse_action(action, self.config.max_query_chars), self.config, self.question
        preloaded, self._preloaded = self._preloaded, None
        self.turn += 1
        reward, terminated = 0.0, False
        info = StepInfo(**self._episode_info(), action=act.kind, query=None, answer=None, doc_ids=[], surfaced=[],
                        score=None, format_error=act.kind == "invalid", error=act.error, turn=self.turn,
                        format_errors=0, signature=None, strategy=None, correct=None)
        if act.kind == "search":
            if preloaded is not None and preloaded[0] == act.content:
                hits = preloaded[1]
            else:
                hits = self.retriever.search([act.content], cfg.topk)[0]
            hits = list(hits)[: cfg.topk]
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
        info["format_errors"] = self.format_errors
        if terminated or truncated:
            self._done = True
            if terminated:
                outcome = "correct" if score >= 1.0 else "wrong"
            else:
                outcome = "noanswer"
            sig = trajectory_signature(q, self._searches, outcome, self._queries, self._titles)
            info.update(signature=sig, strategy=match_strategy(q, sig), correct=outcome == "correct")
        obs = self._bound(obs)
        self._transcript.append(f"[action] {act.kind}: {act.content or act.error}\n{obs}")
        return obs, float(reward), terminated, truncated, info

    def _episode_info(self) -> ResetInfo:
        # built afresh each time: an agent editing one info's lists cannot change the next
        q = self.question
        return ResetInfo(question_id=q.qid, question=q.question, golden_answers=list(q.golden_answers),
                         family=q.family, split=self.split, index=self.index, num_questions=len(self.questions),
                         max_turns=self.config.max_turns, valid_strategies=[s.name for s in q.strategies] or None,
                         question_record=q)

    # -- batched retrieval (step_batch) ------------------------------------------------

    def search_query(self, action: str) -> str | None:
        """The query :meth:`step` would send to the retriever for ``action`` (None: the
        action is not a search). Pure: parses only. Raises ``RuntimeError`` on a finished
        episode, as :meth:`step` does."""
        if self._done:
            raise RuntimeError("step() called on a finished episode; call reset() first")
        act = parse_action(action, self.config.max_query_chars)
        return act.content if act.kind == "search" else None

    def preload_hits(self, query: str, hits: Sequence[Hit]) -> None:
        """Serve ``hits`` (ranked, as ``retriever.search([query], k)[0]`` with ``k >= topk``)
        as the retriever's answer to the next step if that step searches ``query``; any
        other next step (or a reset) drops them, so results never go stale. This is how
        :func:`step_batch` does one retriever call for many envs and still runs each env's
        own ``step``, wrappers included."""
        self._preloaded = (str(query), list(hits))

    def _bound(self, obs: str) -> str:
        return sanitize(obs[: self.config.max_obs_chars])

    def render(self):
        if self.render_mode == "ansi":
            return "\n".join(self._transcript)
        return None


def step_batch(envs: Sequence[gym.Env], actions: Sequence[str]) -> list[tuple[str, float, bool, bool, StepInfo]]:
    """Step many envs, wrapped or not, with one ``retriever.search`` call per distinct retriever.

    Returns ``[env.step(action) for env, action in zip(envs, actions)]``: each env's own
    ``step`` runs, so wrappers (``gym.make``'s, a ``TimeLimit``, a reward or observation
    wrapper) act exactly as when stepping one by one. Before that, the queries of every
    searching env are sent together: one ``search`` per retriever object (envs are grouped by
    retriever identity, ``k`` = the largest ``topk``), each env's hits handed to its base
    :class:`SearchEnv` with :meth:`SearchEnv.preload_hits`. A wrapper that rewrites the action
    before the base env sees it makes that env search on its own (the preloaded hits are for
    another query), so the results always equal sequential steps.

    Raises ``ValueError`` for a length mismatch or an env that is not a SearchEnv underneath,
    and ``RuntimeError`` (before stepping any env) if an episode is over.
    """
    if len(envs) != len(actions):
        raise ValueError(f"step_batch: {len(envs)} envs but {len(actions)} actions")
    base = [e.unwrapped for e in envs]
    for e in base:
        if not isinstance(e, SearchEnv):
            raise ValueError(f"step_batch needs SearchEnv instances, got {type(e).__name__}")
    queries = [e.search_query(a) for e, a in zip(base, actions)]
    groups: dict[int, list[int]] = {}
    for i, (e, q) in enumerate(zip(base, queries)):
        if q is not None:
            groups.setdefault(id(e.retriever), []).append(i)
    for idxs in groups.values():
        k = max(base[i].config.topk for i in idxs)
        res = base[idxs[0]].retriever.search([queries[i] for i in idxs], k)
        for i, r in zip(idxs, res):
            base[i].preload_hits(queries[i], r)
    return [e.step(a) for e, a in zip(envs, actions)]
