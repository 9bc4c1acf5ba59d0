"""Rewards: exact match and token F1 over a gold list, on Search-R1's answer normalisation
(:func:`searchgym.metrics.diversity.normalize_answer`)."""

from __future__ import annotations

from collections import Counter
from typing import Callable, Sequence

# One normalisation for rewards and diversity metrics; metrics stands alone, so it lives there.
from searchgym.metrics.diversity import normalize_answer

__all__ = ["REWARDS", "em_score", "f1_score", "get_reward", "normalize_answer"]


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
