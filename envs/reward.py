"""Rewards: Search-R1's answer normalisation, exact match and token F1 over a gold list."""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Callable, Sequence

_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """Lowercase, drop punctuation, the articles a/an/the and extra whitespace (Search-R1)."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def em_score(prediction: str, golden_answers: Sequence[str]) -> float:
    """1.0 if the normalised prediction equals any normalised gold answer."""
    p = normalize_answer(prediction)
    return float(any(p == normalize_answer(g) for g in golden_answers))


def f1_score(prediction: str, golden_answers: Sequence[str]) -> float:
    """Best token-level F1 of the normalised prediction against the gold answers."""
    p = normalize_answer(prediction).split()
    best = 0.0
    for g in golden_answers:
        gt = normalize_answer(g).split()
        common = sum((Counter(p) & Counter(gt)).values())
        if common == 0:
            continue
        prec, rec = common / len(p), common / len(gt)
        best = max(best, 2 * prec * rec / (prec + rec))
    return best


REWARDS: dict[str, Callable[[str, Sequence[str]], float]] = {"em": em_score, "f1": f1_score}


def get_reward(name: str) -> Callable[[str, Sequence[str]], float]:
    if name not in REWARDS:
        raise ValueError(f"unknown reward {name!r}; choose from {sorted(REWARDS)}")
    return REWARDS[name]
