"""Executing a question's valid strategies: concrete queries, oracle answers, the oracle table.

This is the public API scripted agents build on. A :class:`~searchgym.envs.tasks.Strategy`
step holds a query template over role names (``"{subject}"``, ``"{bridge} country"``).
:func:`oracle_query` fills it honestly: names of roles the question states (``subject``,
``a``, ``b``) are always known; any other role's name (a bridge, the answer) is used only if
it already appears verbatim in the observations, so a scripted agent never uses knowledge
it has not retrieved. :func:`oracle_answer` likewise answers only from what was seen.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from searchgym.envs.env import SearchEnv, step_batch
from searchgym.envs.protocol import tagged
from searchgym.envs.tasks import Question, Strategy

GIVEN_ROLES = ("subject", "a", "b")  # roles named in the question text itself
_FIELD = re.compile(r"\{(\w+)\}")


def valid_strategies(question: Question) -> tuple[Strategy, ...]:
    """The question's valid strategies (empty for external datasets)."""
    return question.strategies


def _visible(name: str, seen: str) -> bool:
    return re.search(r"(?<!\w)" + re.escape(name) + r"(?!\w)", seen) is not None


def role_name(question: Question, role: str, observations: Sequence[str]) -> str | None:
    """The name to use for ``role``: given roles always; others only once seen.

    For a role with several entities (multi-answer bridges/answers) the first one, in the
    order they appear in the observations, is used.
    """
    names = question.names.get(role, ())
    if not names:
        return None
    if role in GIVEN_ROLES:
        return names[0]
    seen = "\n".join(observations)
    found = [(m.start(), n) for n in names for m in [re.search(r"(?<!\w)" + re.escape(n) + r"(?!\w)", seen)] if m]
    return min(found)[1] if found else None


def oracle_query(question: Question, strategy: Strategy | str, step_index: int,
                 observations: Sequence[str]) -> str | None:
    """The concrete query of ``strategy``'s step ``step_index`` given the observations so far.

    Returns ``None`` when the step needs a name that has not been retrieved yet (the
    strategy cannot be continued honestly).
    """
    if isinstance(strategy, str):
        strategy = question.strategy(strategy)
    if not 0 <= step_index < len(strategy.steps):
        raise IndexError(f"strategy {strategy.name} has {len(strategy.steps)} steps, not step {step_index}")
    template = strategy.steps[step_index].query
    values = {}
    for role in _FIELD.findall(template):
        if role == "answer":
            v = oracle_answer(question, observations)
        else:
            v = role_name(question, role, observations)
        if v is None:
            return None
        values[role] = v
    return template.format(**values)


def oracle_queries(question: Question, strategy: Strategy | str, observations: Sequence[str] = ()) -> list[str | None]:
    """All of a strategy's queries given the observations so far (``None`` where not yet possible)."""
    if isinstance(strategy, str):
        strategy = question.strategy(strategy)
    return [oracle_query(question, strategy, i, observations) for i in range(len(strategy.steps))]


def oracle_answer(question: Question, observations: Sequence[str]) -> str | None:
    """A gold answer supported by the observations, else ``None``.

    The answer must appear verbatim in the observations, and so must every string of
    ``question.evidence`` (e.g. both years of a comparison).
    """
    seen = "\n".join(observations)
    if not all(_visible(e, seen) for e in question.evidence):
        return None
    for g in question.golden_answers:
        if _visible(g, seen):
            return g
    return None


@dataclass(frozen=True)
class OracleResult:
    """One scripted run: its queries, whether it answered correctly, its signature."""

    qid: str
    family: str
    strategy: str
    queries: tuple[str, ...]
    correct: bool
    signature: str
    matched: bool  # the signature maps back to this strategy


def _next_action(question: Question, strategy: Strategy, observations: Sequence[str], n_queries: int) -> tuple[str, str]:
    """The oracle's next move: ``("search", query)`` or ``("answer", text)``.

    Steps run in order; when a step cannot be taken honestly (its name not seen yet) or
    every step was taken, the oracle answers (``"unknown"`` unless every step ran and a
    gold answer with its evidence is visible).
    """
    if n_queries < len(strategy.steps):
        query = oracle_query(question, strategy, n_queries, observations)
        if query is not None:
            return "search", query
        return "answer", "unknown"
    ans = oracle_answer(question, observations)
    return "answer", ans if ans is not None else "unknown"


def run_oracle_batch(env, jobs: Sequence[tuple[int, str]], batch_size: int = 256) -> list[OracleResult]:
    """Execute many ``(question_index, strategy_name)`` jobs literally, ``batch_size`` at a time.

    Each round steps every unfinished job through :func:`~searchgym.envs.env.step_batch`, so
    a round costs one retriever call. Jobs run on fresh envs sharing ``env``'s questions,
    retriever and config (the results equal :func:`run_oracle` one by one).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    base = env.unwrapped
    out: list[OracleResult] = []
    for start in range(0, len(jobs), batch_size):
        chunk = list(jobs[start:start + batch_size])
        envs = [SearchEnv(base.questions, base.retriever, base.config, split=base.split) for _ in chunk]
        strats, obs, queries = [], [[] for _ in chunk], [[] for _ in chunk]
        for e, (idx, name) in zip(envs, chunk):
            e.reset(options={"index": idx})
            strats.append(e.question.strategy(name))
        final: list[dict | None] = [None] * len(chunk)
        active = list(range(len(chunk)))
        while active:
            acts = []
            for j in active:
                kind, text = _next_action(envs[j].question, strats[j], obs[j], len(queries[j]))
                if kind == "search":
                    queries[j].append(text)
                acts.append(tagged(kind, f" {text} "))
            results = step_batch([envs[j] for j in active], acts)
            still = []
            for j, (o, _, term, trunc, info) in zip(active, results):
                obs[j].append(o)
                if term or trunc:
                    final[j] = info
                else:
                    still.append(j)
            active = still
        for j, (e, s) in enumerate(zip(envs, strats)):
            info = final[j]
            out.append(OracleResult(e.question.qid, e.question.family, s.name, tuple(queries[j]),
                                    bool(info.get("correct")), info.get("signature", ""),
                                    info.get("strategy") == s.name))
    return out


def run_oracle(env, index: int, strategy_name: str) -> OracleResult:
    """Execute one strategy literally through ``env``'s retriever on question ``index``."""
    return run_oracle_batch(env, [(index, strategy_name)])[0]


def oracle_table(env, limit_per_family: int | None = None, batch_size: int = 256,
                 results: list | None = None) -> dict[str, dict[str, dict[str, float]]]:
    """Per family x strategy: ``{"n", "correct", "matched", "both"}`` rates over the env's questions.

    The env's ``max_turns`` must exceed the longest strategy (else the run is truncated
    and counts as not correct). ``limit_per_family`` caps the questions per family (the
    first ones in the env's order). Runs batched (:func:`run_oracle_batch`); pass a list as
    ``results`` to receive every :class:`OracleResult`.
    """
    base = env.unwrapped
    counts: dict[str, int] = {}
    jobs: list[tuple[int, str]] = []
    for idx, q in enumerate(base.questions):
        if limit_per_family is not None and counts.get(q.family, 0) >= limit_per_family:
            continue
        counts[q.family] = counts.get(q.family, 0) + 1
        jobs += [(idx, s.name) for s in q.strategies]
    acc: dict[str, dict[str, list[int]]] = {}
    runs = run_oracle_batch(base, jobs, batch_size)
    if results is not None:
        results.extend(runs)
    for r in runs:
        a = acc.setdefault(r.family, {}).setdefault(r.strategy, [0, 0, 0, 0])
        a[0] += 1
        a[1] += r.correct
        a[2] += r.matched
        a[3] += r.correct and r.matched
    return {fam: {s: {"n": v[0], "correct": v[1] / v[0], "matched": v[2] / v[0], "both": v[3] / v[0]}
                  for s, v in strats.items()} for fam, strats in acc.items()}


def format_table(table: dict) -> str:
    """The oracle table as aligned text."""
    lines = [f"{'family':<14}{'strategy':<17}{'n':>6}{'correct':>9}{'matched':>9}{'both':>8}"]
    for fam, strats in table.items():
        for s, v in strats.items():
            lines.append(f"{fam:<14}{s:<17}{v['n']:>6}{v['correct']:>9.3f}{v['matched']:>9.3f}{v['both']:>8.3f}")
    return "\n".join(lines)


