"""Questions and strategies: the records the world writes and the envs serve.

A :class:`Question` knows its gold answers, the entities that fill each *role* of its
reasoning chain (``subject``, ``bridge``, ``bridge1``, ``bridge2``, ``answer``, ``a``,
``b``) and its valid :class:`Strategy` list. A strategy is a sequence of :class:`Step`; each
step names the role whose document the search must surface and a query template over role
names (``"{subject}"``, ``"birthplace of {subject}"``, ...).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from searchgym.retrieval.fileio import iter_jsonl

ROLES = ("subject", "bridge", "bridge1", "bridge2", "answer", "a", "b")
FAMILIES = ("single_hop", "multi_hop", "comparison", "multi_answer")
SPLITS = ("train", "validation", "test")


class TaskFormatError(ValueError):
    """A QA record or task file is malformed."""


@dataclass(frozen=True)
class Step:
    """One search of a strategy: the role it must surface and its query template."""

    role: str
    query: str

    def to_json(self) -> dict:
        return {"role": self.role, "query": self.query}


@dataclass(frozen=True)
class Strategy:
    """A named, valid way to solve a question: an ordered tuple of search steps."""

    name: str
    steps: tuple[Step, ...]

    @property
    def roles(self) -> tuple[str, ...]:
        """The role sequence with consecutive repeats collapsed (what a signature shows)."""
        out: list[str] = []
        for s in self.steps:
            if not out or out[-1] != s.role:
                out.append(s.role)
        return tuple(out)

    def to_json(self) -> dict:
        return {"name": self.name, "steps": [s.to_json() for s in self.steps]}

    @classmethod
    def from_json(cls, d: dict) -> "Strategy":
        return cls(name=str(d["name"]), steps=tuple(Step(str(s["role"]), str(s["query"])) for s in d["steps"]))


@dataclass(frozen=True)
class Question:
    """One QA item. ``roles``/``names`` map a role to entity ids / names (same order).

    ``evidence`` lists strings that must be visible in the observations before the answer
    can honestly be given (e.g. both years of a comparison). External datasets leave
    ``roles``, ``names``, ``strategies`` and ``evidence`` empty.
    """

    qid: str
    question: str
    golden_answers: tuple[str, ...]
    family: str = "external"
    hops: int = 1
    split: str = "train"
    kind: str = ""
    roles: dict[str, tuple[str, ...]] = field(default_factory=dict)
    names: dict[str, tuple[str, ...]] = field(default_factory=dict)
    strategies: tuple[Strategy, ...] = ()
    evidence: tuple[str, ...] = ()
    prompt: str = ""  # the dataset's own prompt text; "" = the env builds its prompt

    def __hash__(self) -> int:
        return hash(self.qid)

    def strategy(self, name: str) -> Strategy:
        """The valid strategy called ``name``; ``KeyError`` naming the valid ones otherwise."""
        for s in self.strategies:
            if s.name == name:
                return s
        raise KeyError(f"question {self.qid} has no strategy {name!r}; valid: {[s.name for s in self.strategies]}")

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.qid,
            "question": self.question,
            "golden_answers": list(self.golden_answers),
            "family": self.family,
            "hops": self.hops,
            "split": self.split,
            "kind": self.kind,
            "roles": {k: list(v) for k, v in self.roles.items()},
            "names": {k: list(v) for k, v in self.names.items()},
            "strategies": [s.to_json() for s in self.strategies],
            "evidence": list(self.evidence),
            **({"prompt": self.prompt} if self.prompt else {}),
        }

    @classmethod
    def from_json(cls, d: dict, where: str = "record") -> "Question":
        """Build from a JSON record; ``where`` names the file:line in errors."""
        if not isinstance(d, dict):
            raise TaskFormatError(f"{where}: expected a JSON object")
        q, gold = d.get("question"), d.get("golden_answers")
        if not isinstance(q, str) or not q.strip():
            raise TaskFormatError(f"{where}: needs a non-empty string 'question'")
        if isinstance(gold, str):
            gold = [gold]
        if not isinstance(gold, (list, tuple)) or not gold or not all(isinstance(g, (str, int, float)) for g in gold):
            raise TaskFormatError(f"{where}: 'golden_answers' must be a non-empty list of strings")
        try:
            return cls(
                qid=str(d.get("id", d.get("qid", ""))),
                question=q,
                golden_answers=tuple(str(g) for g in gold),
                family=str(d.get("family", "external")),
                hops=int(d.get("hops", 1)),
                split=str(d.get("split", "train")),
                kind=str(d.get("kind", "")),
                roles={str(k): tuple(str(x) for x in v) for k, v in (d.get("roles") or {}).items()},
                names={str(k): tuple(str(x) for x in v) for k, v in (d.get("names") or {}).items()},
                strategies=tuple(Strategy.from_json(s) for s in d.get("strategies") or ()),
                evidence=tuple(str(e) for e in d.get("evidence") or ()),
                prompt=prompt_text(d.get("prompt"), where),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise TaskFormatError(f"{where}: malformed field ({exc})") from None


def prompt_text(prompt: Any, where: str = "record") -> str:
    """A record's own prompt as text: a string, or a chat list (Search-R1's
    ``[{"role": "user", "content": ...}]``) whose last message's content is used; None = ""."""
    if prompt is None:
        return ""
    if isinstance(prompt, str):
        return prompt
    if hasattr(prompt, "tolist"):  # numpy arrays from parquet readers
        prompt = prompt.tolist()
    if isinstance(prompt, (list, tuple)) and prompt and isinstance(prompt[-1], dict):
        content = prompt[-1].get("content")
        if isinstance(content, str):
            return content
    raise TaskFormatError(f"{where}: 'prompt' must be a string or a chat list of {{role, content}} messages")


def read_questions(path) -> list[Question]:
    """Read a QA JSONL file (one :class:`Question` record or ``question``/``golden_answers``)."""
    path = Path(path)
    out = []
    for lineno, rec in iter_jsonl(path, TaskFormatError):
        qq = Question.from_json(rec, where=f"{path}:{lineno}")
        if not qq.qid:
            qq = Question(**{**qq.__dict__, "qid": f"{path.stem}-{lineno}"})
        out.append(qq)
    return out
