"""Strategy signatures: a finished trajectory -> a hashable, JSON-able string.

World questions (ground truth known): for each search, the *role* (subject, bridge, ...,
answer, a, b) of the highest-ranked retrieved document that belongs to one of the
question's role entities, or ``none``; consecutive repeats collapse; then the outcome::

    "subject>bridge|correct"     "bridge|wrong"     "none>subject|noanswer"

External datasets (no roles): ``"ext:" + "-".join(kinds) + "|" + outcome`` where each
search's kind is ``q`` (the query mostly copies question words: >= half of its normalised
tokens occur in the question), ``e`` (it contains a title retrieved by an earlier search),
or ``n`` (neither); a ``*`` suffix marks a search whose documents were mostly (>= half)
retrieved before. Consecutive repeats collapse here too.

:func:`match_strategy` maps a world signature to the name of the question's valid strategy
whose role sequence it equals (``none`` steps ignored), else ``None``: an unmatched
trajectory has no strategy (it is not an "other" strategy; strategy diversity is measured
over matched trajectories, and the unmatched share is its own number).
"""

from __future__ import annotations

from typing import Sequence

from searchgym.envs.tasks import Question
from searchgym.metrics.diversity import normalize_answer

OUTCOMES = ("correct", "wrong", "noanswer")


def _collapse(items: Sequence[str]) -> list[str]:
    out: list[str] = []
    for x in items:
        if not out or out[-1] != x:
            out.append(x)
    return out


def role_map(question: Question) -> dict[str, str]:
    """Entity id -> role for a world question (first role listing the entity wins)."""
    m: dict[str, str] = {}
    for role, ids in question.roles.items():
        for e in ids:
            m.setdefault(e, role)
    return m


def doc_roles(question: Question, doc_ids: Sequence[str]) -> list[str | None]:
    """The role of each retrieved doc (None for docs outside the question's entities)."""
    m = role_map(question)
    return [m.get(d.rsplit("-", 1)[0]) for d in doc_ids]


def search_role(question: Question, doc_ids: Sequence[str]) -> str:
    """The role one search surfaced: that of its best-ranked role document, else ``none``."""
    for r in doc_roles(question, doc_ids):
        if r is not None:
            return r
    return "none"


def trajectory_signature(
    question: Question,
    searches: Sequence[Sequence[str]],
    outcome: str,
    queries: Sequence[str] = (),
    titles: Sequence[Sequence[str]] = (),
) -> str:
    """Signature of a trajectory from each search's retrieved doc ids (ranked) and outcome.

    ``queries`` and ``titles`` (per search) are only used by the external fallback.
    """
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome must be one of {OUTCOMES}, got {outcome!r}")
    if question.roles:
        steps = _collapse([search_role(question, ids) for ids in searches])
        return ">".join(steps) + "|" + outcome
    qtok = set(normalize_answer(question.question).split())
    seen_titles: list[str] = []
    seen_docs: set[str] = set()
    kinds = []
    for i, ids in enumerate(searches):
        query = queries[i] if i < len(queries) else ""
        toks = normalize_answer(query).split()
        if toks and sum(t in qtok for t in toks) * 2 >= len(toks):
            k = "q"
        elif any(t and t.lower() in query.lower() for t in seen_titles):
            k = "e"
        else:
            k = "n"
        if ids and sum(d in seen_docs for d in ids) * 2 >= len(ids):
            k += "*"
        kinds.append(k)
        seen_docs.update(ids)
        if i < len(titles):
            seen_titles.extend(titles[i])
    return "ext:" + "-".join(_collapse(kinds)) + "|" + outcome


def signature_steps(signature: str) -> tuple[str, ...]:
    """The step part of a signature (``"subject>bridge|correct" -> ("subject", "bridge")``)."""
    steps = signature.rsplit("|", 1)[0]
    return tuple(s for s in steps.split(">") if s) if steps else ()


def match_strategy(question: Question, signature: str) -> str | None:
    """Name of the valid strategy whose role sequence equals the signature's (``none``
    steps ignored), else None (no match; always None for external questions, which have no
    roles, and for questions without strategies)."""
    if signature.startswith("ext:") or not question.strategies:
        return None
    steps = tuple(_collapse([s for s in signature_steps(signature) if s != "none"]))
    for strat in question.strategies:
        if strat.roles == steps:
            return strat.name
    return None
