"""Atomic training checkpoints and exact resume.

A checkpoint is a folder ``<run>/checkpoints/step_<NNNNNNNN>/`` holding

- ``model/``: the HF model (``save_pretrained``: config + safetensors) and tokenizer;
- ``trainer_state.pt``: optimizer and scheduler state dicts, RNG states (python, numpy,
  torch CPU, the trainer's mini-batch generator), objective state (e.g. an EMA),
  ``step``, and ``metrics_offset``: the byte length of ``metrics.jsonl`` when the
  checkpoint was taken.

It is built under a temp name and renamed into place (``searchgym.retrieval.fileio.
atomic_dir``), so a crash leaves either the previous set of checkpoints or the new one.
Only the last ``keep_last`` are kept. On resume, ``metrics.jsonl`` is cut back to
``metrics_offset``, which removes lines written after the checkpoint (they will be
written again) and any torn last line, so the log has no duplicates.
"""

from __future__ import annotations

import pickle
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from searchgym.retrieval.fileio import atomic_dir

__all__ = ["save_checkpoint", "latest_checkpoint", "load_checkpoint", "list_checkpoints",
           "rng_state", "set_rng_state", "truncate_metrics"]

_STEP_RE = re.compile(r"^step_(\d{8})$")


def rng_state(generator: torch.Generator | None = None) -> dict[str, Any]:
    """The process's RNG states as plain Python values and tensors only, so that
    ``torch.load(..., weights_only=True)`` can read them back (no pickled numpy objects)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),  # (version, tuple of ints, None): allowed by weights_only
        "numpy": {"kind": str(kind), "keys": [int(k) for k in keys], "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "generator": generator.get_state() if generator is not None else None,
    }


def set_rng_state(state: dict[str, Any], generator: torch.Generator | None = None) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["kind"], np.asarray(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if generator is not None and state.get("generator") is not None:
        generator.set_state(state["generator"])


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of ``run_dir``, oldest first."""
    d = Path(run_dir) / "checkpoints"
    if not d.is_dir():
        return []
    found = [p for p in d.iterdir() if p.is_dir() and _STEP_RE.match(p.name) and (p / "trainer_state.pt").is_file()]
    return sorted(found, key=lambda p: int(_STEP_RE.match(p.name).group(1)))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    cps = list_checkpoints(run_dir)
    return cps[-1] if cps else None


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model,
    tokenizer,
    optimizer: torch.optim.Optimizer,
    scheduler=None,
    *,
    extra: dict[str, Any] | None = None,
    metrics_offset: int = 0,
    generator: torch.Generator | None = None,
    keep_last: int = 2,
) -> Path:
    """Write checkpoint ``step`` atomically and prune to the last ``keep_last``."""
    path = Path(run_dir) / "checkpoints" / f"step_{step:08d}"
    with atomic_dir(path) as tmp:
        model.save_pretrained(tmp / "model", safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp / "model")
        state = {
            "step": int(step),
            "metrics_offset": int(metrics_offset),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "rng": rng_state(generator),
            "extra": extra or {},
        }
        torch.save(state, tmp / "trainer_state.pt")
    for old in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def load_checkpoint(path: str | Path, optimizer=None, scheduler=None, generator=None) -> dict[str, Any]:
    """Restore optimizer/scheduler/RNG state from checkpoint ``path`` (the model is loaded
    by the caller from ``path / "model"``). Returns the state dict (``step``,
    ``metrics_offset``, ``extra``)."""
    path = Path(path)
    f = path / "trainer_state.pt"
    if not f.is_file():
        raise FileNotFoundError(f"not a checkpoint (no trainer_state.pt): {path}")
    # weights_only=True: a checkpoint folder may come from anywhere, and unpickling
    # arbitrary objects runs code; the state holds only tensors and plain Python values.
    try:
        state = torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(f"{f}: not a searchgym checkpoint state (holds objects that are not tensors or "
                         f"plain values; written by an older version?): {str(exc).splitlines()[0]}") from None
    except (RuntimeError, EOFError, OSError) as exc:  # truncated or corrupt zip archive
        raise ValueError(f"{f}: unreadable checkpoint state (truncated or corrupt): "
                         f"{(str(exc).splitlines() or [type(exc).__name__])[0]}") from None
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"], generator)
    return state


def truncate_metrics(metrics_path: str | Path, offset: int) -> None:
    """Cut ``metrics_path`` back to ``offset`` bytes (no-op when shorter/absent)."""
    p = Path(metrics_path)
    if p.exists() and p.stat().st_size > offset:
        with open(p, "r+b") as f:
            f.truncate(offset)
