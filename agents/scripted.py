"""Scripted strategy agents: one per strategy family of the synthetic world.

A :class:`ScriptedPolicy` follows one named strategy of the question (``direct``,
``direct_confirm``, ``reverse``, ``forward``, ``combined``, ``forward_confirm``,
``a_first``, ``b_first``), or ``canonical`` (the one canonical strategy per family) or
``mixture`` (uniform over the question's valid strategies, per episode). It runs real
searches through the env: each step's query comes from the world's
``oracle_query``, which fills an entity name only when that name already appeared in the
observations the agent received, and the answer from ``oracle_answer`` over those
observations. The ``<think>`` text is templated with a few variants per step kind, so
demonstrations are not a single fixed string.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Sequence

from searchgym.agents.trajectory import EpisodeState
from searchgym.envs.protocol import ANSWER, CORRECTIVE, INFORMATION, PROMPT, SEARCH, THINK, tagged
from searchgym.envs.strategies import oracle_answer, oracle_query
from searchgym.envs.world import load_questions
from searchgym.retrieval.base import read_corpus

# The canonical strategy of each family (the `narrow` demonstration set).
CANONICAL = {"single_hop": "direct", "multi_hop": "forward", "multi_answer": "forward", "comparison": "a_first"}
STRATEGY_NAMES = ("direct", "direct_confirm", "reverse", "forward", "combined", "forward_confirm",
                  "a_first", "b_first")

_FIRST = (
    "I need to find out {need}. Let me search for it.",
    "To answer this, I should first look up {need}.",
    "Let me start by searching for {need}.",
    "First I will find {need}.",
)
_NEXT = (
    "Now I know more. Next I need {need}.",
    "The next thing to look up is {need}.",
    "With that, I can search for {need}.",
    "Now let me find {need}.",
)
_CONFIRM = (
    "I think I have it, but let me confirm with a search for {need}.",
    "Before answering, I will double-check {need}.",
    "Let me verify this by searching {need}.",
)
_REVERSE = (
    "I can start from the other end and search for {need}.",
    "Instead of the subject, let me look up {need}.",
)
_COMBINED = (
    "I will search for everything at once: {need}.",
    "One search may cover both steps: {need}.",
)
_ANSWER = (
    "The information shows the answer is {ans}.",
    "From the documents, the answer is {ans}.",
    "So the answer is {ans}.",
    "Based on what I found, the answer is {ans}.",
)
_GIVE_UP = (
    "I could not find it in the documents, so I will guess.",
    "The search results do not show it clearly; my best guess follows.",
)


def canonical_strategy(question) -> str:
    """The canonical strategy name of ``question``'s family (first valid one otherwise)."""
    names = [s.name for s in question.strategies]
    c = CANONICAL.get(question.family)
    if c in names:
        return c
    if not names:
        raise ValueError(f"question {question.qid} has no strategies (external data); scripted agents need world questions")
    return names[0]


class ScriptedPolicy:
    """A scripted agent following one strategy (see the module doc for names)."""

    def __init__(self, strategy: str = "canonical", seed: int = 0):
        if strategy not in STRATEGY_NAMES + ("canonical", "mixture"):
            raise ValueError(f"unknown scripted strategy {strategy!r}; choose from "
                             f"{list(STRATEGY_NAMES) + ['canonical', 'mixture']}")
        self.strategy = strategy
        self.seed = seed
        self.name = f"scripted:{strategy}"

    def plan(self, state: EpisodeState) -> str:
        """The strategy this episode follows (fixed at the first step)."""
        q = state.question
        if q is None:
            raise ValueError("scripted agents need the episode's question record (info['question_record'])")
        names = [s.name for s in q.strategies]
        if self.strategy == "canonical":
            return canonical_strategy(q)
        if self.strategy == "mixture":
            rng = random.Random(f"mix/{self.seed}/{q.qid}/{state.episode_index}")
            return rng.choice(sorted(names))
        return self.strategy if self.strategy in names else canonical_strategy(q)

    def applies(self, question) -> bool:
        """Whether this agent's strategy is valid for ``question``."""
        return self.strategy in ("canonical", "mixture") or any(s.name == self.strategy for s in question.strategies)

    def act(self, states: Sequence[EpisodeState]) -> list[str]:
        out = []
        for st in states:
            if "scripted_strategy" not in st.meta:
                st.meta["scripted_strategy"] = self.plan(st)
            q = st.question
            strat = q.strategy(st.meta["scripted_strategy"])
            obs = st.observations
            k = len(obs)
            rng = random.Random(f"think/{self.seed}/{q.qid}/{st.episode_index}/{len(st.turns)}")
            last_turn = st.max_turns is not None and len(st.turns) >= st.max_turns - 1
            if last_turn and oracle_answer(q, obs) is not None:
                st.meta["cut_short"] = True  # no turn left to search and still answer
            elif k < len(strat.steps):
                query = oracle_query(q, strat, k, obs)
                if query is not None:
                    out.append(f"{tagged(THINK, self._think(strat, k, query, rng))}\n{tagged(SEARCH, query)}")
                    continue
            ans = oracle_answer(q, obs)
            if ans is None:
                # The plan ran out without the answer in sight (e.g. a combined query that
                # surfaced only the subject): continue along the canonical chain with queries
                # not issued yet, while turns remain for a final answer.
                query = self._fallback_query(st, obs)
                if query is not None:
                    st.meta["fallback"] = True
                    out.append(f"{tagged(THINK, rng.choice(_NEXT).format(need=query))}\n{tagged(SEARCH, query)}")
                    continue
                out.append(f"{tagged(THINK, rng.choice(_GIVE_UP))}\n{tagged(ANSWER, 'unknown')}")
            else:
                out.append(f"{tagged(THINK, rng.choice(_ANSWER).format(ans=ans))}\n{tagged(ANSWER, ans)}")
        return out

    @staticmethod
    def _fallback_query(st: EpisodeState, obs: list[str]) -> str | None:
        if st.max_turns is not None and len(st.turns) >= st.max_turns - 1:
            return None
        q = st.question
        done = {t.get("query") for t in st.turns}
        names = [canonical_strategy(q)] + [s.name for s in q.strategies]
        for name in names:
            strat = q.strategy(name)
            for j in range(len(strat.steps)):
                query = oracle_query(q, strat, j, obs)
                if query is not None and query not in done:
                    return query
        # Every planned query was issued: ask about a given entity with the question's
        # wording (comparisons whose attribute sat in a passage that was not retrieved).
        stem = q.question.split(",")[0].rstrip("?")
        lines = [ln for o in obs for ln in o.splitlines()]
        for role in ("a", "b", "subject"):
            for name in q.names.get(role, ()):
                # Skip an entity whose retrieved passages already show a piece of evidence.
                if any(e in ln for ln in lines if name in ln for e in q.evidence):
                    continue
                query = f"{name} {stem}" if name not in stem else stem
                if query not in done:
                    return query
        return None

    @staticmethod
    def _think(strat, k: int, query: str, rng: random.Random) -> str:
        if k == 0:
            pool = _REVERSE if strat.name == "reverse" else _COMBINED if strat.name == "combined" else _FIRST
        elif "confirm" in strat.name and k == len(strat.steps) - 1:
            pool = _CONFIRM
        else:
            pool = _NEXT
        return rng.choice(pool).format(need=query)


def template_texts() -> list[str]:
    """Every think template with placeholder fillers (tokenizer training text)."""
    out = []
    for pool in (_FIRST, _NEXT, _CONFIRM, _REVERSE, _COMBINED):
        out += [f"{tagged(THINK, t.format(need='the birthplace of someone'))}\n{tagged(SEARCH, 'x')}" for t in pool]
    out += [f"{tagged(THINK, t.format(ans='it'))}\n{tagged(ANSWER, 'it')}" for t in _ANSWER]
    out += [f"{tagged(THINK, t)}\n{tagged(ANSWER, 'unknown')}" for t in _GIVE_UP]
    return out


def tokenizer_training_texts(world_dir: str | Path) -> list[str]:
    """Corpus passages, questions and the prompt/observation/think templates of a world."""
    world_dir = Path(world_dir)
    corpus = world_dir / "corpus.jsonl"
    if not corpus.exists():
        raise FileNotFoundError(f"not a world folder (no corpus.jsonl): {world_dir}")
    texts = [f"{d.title}\n{d.text}" for d in read_corpus(corpus)]
    for split in ("train", "validation", "test"):
        try:
            qs = load_questions(world_dir, split)
        except FileNotFoundError:
            continue
        texts += [q.question for q in qs]
        texts += [" ".join(q.golden_answers) for q in qs]
    texts += [PROMPT.format(question=q) for q in texts[-50:]] + [CORRECTIVE] * 5
    texts += template_texts() * 20
    texts.append(f"\n\n{tagged(INFORMATION, 'Doc 1(Title: T) text' + chr(10) + 'Doc 2(Title: U) text')}\n\n")
    return texts
