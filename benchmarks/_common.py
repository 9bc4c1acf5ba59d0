"""Helpers shared by the benchmark scripts (not a benchmark itself: ``run_all.py`` skips
names starting with ``_``).

- ``emit(name, figures)``: the ``RESULT_JSON`` last line every benchmark prints.
- ``print_table(headers, rows)``: the human-readable table.
- ``ensure_init_model`` / ``ensure_sft_model``: an untrained or a quickly SFT'd tiny model
  on a world, built once and cached under ``$SEARCHGYM_HOME/bench/`` (keyed by every
  setting, written atomically), so the three scripts that need one do not each pay for it.
  What is timed in the benchmarks never includes building these.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

#: Bumped when what the cached models contain changes (invalidates the cache).
CACHE_VERSION = 1


def bench_home() -> Path:
    root = os.environ.get("SEARCHGYM_HOME") or str(Path.home() / ".cache" / "searchgym")
    return Path(root).expanduser() / "bench"


def _key(**parts) -> str:
    blob = json.dumps({"v": CACHE_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _world_id(world: Path) -> str:
    """The world's identity for cache keys: its manifest (generator version, config, checksums)."""
    m = Path(world) / "manifest.json"
    return hashlib.sha256(m.read_bytes()).hexdigest()[:16] if m.is_file() else str(Path(world).resolve())


def ensure_init_model(world: Path, preset: str = "small", seed: int = 0) -> Path:
    """An untrained ``preset`` model (tokenizer trained on ``world``), cached."""
    from searchgym.agents.model import init_model

    out = bench_home() / f"init-{preset}-{_key(world=_world_id(world), preset=preset, seed=seed)}"
    if not (out / "config.json").is_file():
        init_model(preset, out, world_dir=world, seed=seed)
    return out


def ensure_sft_model(world: Path, preset: str = "small", seed: int = 0, demos: int = 200,
                     epochs: int = 6) -> Path:
    """A ``preset`` model SFT'd for a few epochs on ``demos`` diverse demonstrations of
    ``world`` (about a minute on one core; it learns the tag format, not to be accurate).
    Cached; returns the HF model folder (with ``searchgym_train.json`` naming the world)."""
    from searchgym.agents.demos import build_matched, write_demos
    from searchgym.envs.world import ensure_index
    from searchgym.retrieval.fileio import atomic_dir
    from searchgym.training.config import sft_preset
    from searchgym.training.sft import train_sft

    key = _key(world=_world_id(world), preset=preset, seed=seed, demos=demos, epochs=epochs)
    out = bench_home() / f"sft-{preset}-{key}"
    if (out / "model" / "config.json").is_file():
        return out / "model"
    init = ensure_init_model(world, preset, seed)
    ensure_index(world, "dense")
    print(f"[setup] SFT warm start ({preset} model, {demos} demos, {epochs} epochs) -> {out}", file=sys.stderr)
    with atomic_dir(out) as tmp:
        sets = build_matched(world, demos, seed=seed)
        write_demos(sets["diverse"], tmp / "demos.jsonl")
        cfg = sft_preset("smoke", model=str(init), demos=str(tmp / "demos.jsonl"), out=str(tmp),
                         world=str(world), epochs=epochs, eval_questions=8, seed=seed)
        train_sft(cfg, progress=False)
    return out / "model"


def finite_figures(figures: dict) -> dict:
    """``figures`` as plain floats/ints; raises ValueError naming a non-numeric or
    non-finite entry (a benchmark must never report NaN as a figure)."""
    out = {}
    for k, v in figures.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            try:
                v = float(v)
            except (TypeError, ValueError):
                raise ValueError(f"figure {k!r} is not a number: {v!r}") from None
        if not math.isfinite(v):
            raise ValueError(f"figure {k!r} is not finite: {v!r}")
        out[k] = int(v) if isinstance(v, int) else float(v)
    return out


def emit(name: str, figures: dict) -> None:
    """Print the ``RESULT_JSON`` line (must be the script's last stdout line)."""
    sys.stdout.flush()
    print("RESULT_JSON " + json.dumps({"name": name, "figures": finite_figures(figures)}), flush=True)


def fmt(v) -> str:
    if isinstance(v, float):
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
            return f"{v:.3g}"
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def print_table(headers: list[str], rows: list[list]) -> None:
    """A plain fixed-width table on stdout."""
    cells = [[str(h) for h in headers]] + [[fmt(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for j, r in enumerate(cells):
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if j == 0:
            print("  ".join("-" * w for w in widths))


def rl_bench_setup(description: str, default_steps: int, extra=()) -> tuple:
    """Shared start of the RL-step benchmarks: parse ``--quick/--steps/--init`` (and the
    ``(flag, add_argument kwargs)`` pairs in ``extra``), use one torch thread, and return
    ``(args, world, init)`` on the smoke world with its dense index (``init``: ``--init``,
    else an untrained model for ``--quick``, else a cached quick SFT warm start)."""
    import argparse

    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--quick", action="store_true", help="2 steps of 2x2 episodes from an untrained model")
    ap.add_argument("--steps", type=int, default=default_steps)
    ap.add_argument("--init", default="", help="warm start to use (default: a cached quick SFT)")
    for flag, kwargs in extra:
        ap.add_argument(flag, **kwargs)
    args = ap.parse_args()
    if args.quick:
        args.steps = 2

    import torch

    torch.set_num_threads(1)
    from searchgym.envs.world import ensure_index, ensure_world

    world = ensure_world("smoke", 0)
    ensure_index(world, "dense")
    if args.init:
        init = Path(args.init)
    elif args.quick:
        init = ensure_init_model(world, "small")
    else:
        init = ensure_sft_model(world, "small")
    return args, world, init
