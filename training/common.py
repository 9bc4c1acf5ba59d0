"""Pieces shared by SFT and RL: threads, model loading, LR schedule, envs, evaluation."""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import math
import os
from pathlib import Path
from typing import Any

import torch

from searchgym.agents.trajectory import question_count
from searchgym.envs.registry import family_env_id  # noqa: F401 - re-exported (__all__)
from searchgym.retrieval.fileio import atomic_dir

__all__ = ["set_threads", "tune_malloc", "load_model", "make_optimizer", "make_scheduler", "family_env_id", "make_envs",
           "evaluate", "save_model", "TRAIN_INFO", "read_train_info"]

#: File written next to a trained model: which world it was trained on, config, results.
TRAIN_INFO = "searchgym_train.json"


#: glibc ``mallopt`` parameters (malloc.h): M_TRIM_THRESHOLD, M_MMAP_THRESHOLD.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: (mmap threshold, trim threshold) in bytes: raised, and glibc's starting defaults.
MALLOC_TUNED, MALLOC_DEFAULT = (1 << 30, 1 << 31), (128 * 1024, 128 * 1024)
#: Set ``SEARCHGYM_MALLOC=default`` to keep glibc's own thresholds.
MALLOC_ENV = "SEARCHGYM_MALLOC"
_libc = None


def tune_malloc(on: bool = True) -> bool:
    """Keep freed tensor memory in the process instead of returning it to the OS.

    glibc serves blocks above its mmap threshold (128 KiB, adapting up to 32 MiB) with a
    fresh ``mmap`` and unmaps them on free, so every large activation of a forward or
    backward pass page-faults its memory in again: on a 2-core EPYC a (18760, 384) float32
    ``x * x`` took 17 ms into a new tensor vs 4 ms into an existing one, and a packed
    forward + backward of 64 episodes took 0.88x the time with the thresholds raised
    (``benchmarks/trainer_step.py`` measures the whole step). Only where memory comes from
    changes: results are bit-identical (tested). ``on=False`` restores glibc's starting
    thresholds (the benchmark's "before" side). Returns whether the thresholds now set are
    the raised ones (False off glibc, or with ``SEARCHGYM_MALLOC=default``)."""
    global _libc
    if on and os.environ.get(MALLOC_ENV, "") == "default":
        return False
    if _libc is None:
        name = ctypes.util.find_library("c")
        try:
            _libc = ctypes.CDLL(name) if name and "libc.so" in name else False
        except OSError:
            _libc = False
    if not _libc or not hasattr(_libc, "mallopt"):
        return False
    mmap_bytes, trim_bytes = MALLOC_TUNED if on else MALLOC_DEFAULT
    ok = bool(_libc.mallopt(_M_MMAP_THRESHOLD, mmap_bytes)) and bool(_libc.mallopt(_M_TRIM_THRESHOLD, trim_bytes))
    return ok and on


def set_threads(n: int) -> None:
    """The process's compute settings: ``n`` torch threads (``n <= 0``: leave as is) and
    :func:`tune_malloc`."""
    tune_malloc()
    if n > 0:
        torch.set_num_threads(n)


def load_model(path: str | Path):
    """(model, tokenizer) from a HF folder, float32, offline."""
    from searchgym.agents.model import load_model as _load  # one loader: same checks and errors

    model, tok = _load(path, dtype=torch.float32)
    return model, tok


def save_model(model, tokenizer, out: str | Path, info: dict[str, Any] | None = None) -> Path:
    """Save a HF model folder atomically (config + safetensors + tokenizer + train info)."""
    out = Path(out)
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if info is not None:
            (tmp / TRAIN_INFO).write_text(json.dumps(info, indent=2, default=str) + "\n", encoding="utf-8")
    return out


def read_train_info(model_dir: str | Path) -> dict[str, Any]:
    f = Path(model_dir) / TRAIN_INFO
    if not f.is_file():
        return {}
    try:
        return json.loads(f.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{f}: not valid JSON ({exc.msg})") from None


def make_optimizer(model, optim) -> torch.optim.AdamW:
    return torch.optim.AdamW(model.parameters(), lr=optim.lr, betas=(optim.beta1, optim.beta2), eps=optim.eps,
                             weight_decay=optim.weight_decay)


def make_scheduler(optimizer, warmup_steps: int, total_steps: int, min_lr_ratio: float):
    """Linear warmup over ``warmup_steps`` then cosine from lr to ``min_lr_ratio * lr``.

    Kept instead of verl's ``torch_functional.get_cosine_schedule_with_warmup``, which
    cannot give these learning rates when ``warmup_steps > 0`` (the SFT presets: 3 and 30):
    its warmup is ``step / warmup`` (lr 0 at the first step) with ``zero_indexed_step=True``,
    and with ``False`` the cosine runs one step ahead. Measured over every step (lr 1e-3):
    warmup 10 / min_lr_ratio 0.1 differs at 64 of 120 steps (True) or 110 of 120 (False, up
    to 4 %); warmup 0 / min_lr_ratio 0.1 agrees to 5e-16 relative (round-off; 42 of 80
    steps not bitwise); min_lr_ratio 1.0 agrees exactly only with warmup 0 (True) or
    (False).
    """

    def factor(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def make_envs(family: str, n: int, split: str, world: str = "", max_turns: int = 5, retriever: str = "", **kw):
    """``n`` envs of ``family`` on ``split`` sharing one retriever, and the question count
    (the env's ``info["num_questions"]``, :func:`~searchgym.agents.trajectory.question_count`)."""
    from searchgym.envs import make_batch

    kwargs: dict[str, Any] = {"split": split, "max_turns": max_turns, **kw}
    if world:
        kwargs["world_dir"] = world
    if retriever:
        kwargs["retriever"] = retriever
    envs = make_batch(family_env_id(family), n, **kwargs)
    num_questions = question_count(envs[0])
    if num_questions == 0:
        raise ValueError(f"no {family or 'mixed'} questions in split {split!r} of world {world or '(default)'}")
    return envs, num_questions


@torch.no_grad()
def evaluate(
    model,
    tokenizer,
    *,
    family: str,
    split: str,
    num_questions: int,
    world: str = "",
    max_turns: int = 5,
    max_new_tokens: int = 48,
    envs=None,
    seed: int = 0,
    retriever: str = "",
) -> dict[str, float]:
    """Greedy rollouts on the first ``num_questions`` questions of ``split``: accuracy,
    mean reward, format-error rate, searches per episode."""
    from searchgym.agents.policy import LMPolicy, evaluate_policy, evaluation_questions, summarize
    from searchgym.agents.rollout import RolloutConfig

    if envs is None:
        envs, _ = make_envs(family, min(num_questions, 64), split, world, max_turns, retriever)
    policy = LMPolicy(model, tokenizer, RolloutConfig(
        greedy=True, max_new_tokens=max_new_tokens, n=1, seed=seed, max_batch_size=len(envs)))
    trajs = evaluate_policy(policy, envs, evaluation_questions(envs[0], num_questions), n=1)
    summary = summarize(trajs)
    return {k: summary[k] for k in ("accuracy", "reward_mean", "format_error_rate", "searches_per_episode")} | {
        "num_episodes": summary["episodes"]}
