"""The cache of built artifacts under ``$SEARCHGYM_HOME``: worlds by (preset, seed, generator
version), built on first use, and each world's retrieval index."""

from __future__ import annotations

import os
from pathlib import Path

from searchgym.envs.world_gen import GENERATOR_VERSION, WorldConfig, generate_world
from searchgym.envs.world_io import read_manifest, write_world
from searchgym.retrieval.index import build_index


def searchgym_home() -> Path:
    """``$SEARCHGYM_HOME`` or ``~/.cache/searchgym``."""
    return Path(os.environ.get("SEARCHGYM_HOME") or Path.home() / ".cache" / "searchgym")


def default_world_dir(preset: str = "small", seed: int = 0, root: str | Path | None = None) -> Path:
    root = Path(root) if root is not None else searchgym_home() / "worlds"
    return root / f"{preset}-s{seed}-g{GENERATOR_VERSION}"


def ensure_world(preset: str = "small", seed: int = 0, root: str | Path | None = None) -> Path:
    """The cached world directory for (preset, seed, generator version), built if missing."""
    out = default_world_dir(preset, seed, root)
    if (out / "manifest.json").is_file():
        m = read_manifest(out)
        if m.get("generator_version") == GENERATOR_VERSION:
            return out
    write_world(generate_world(WorldConfig(preset=preset, seed=seed)), out)
    return out


def ensure_index(world_dir: str | Path, kind: str = "dense") -> Path:
    """The retrieval index of a world (``<world_dir>/index-<kind>``), built if missing."""
    if kind not in ("dense", "bm25"):
        raise ValueError(f"unknown index kind {kind!r}; choose 'dense' or 'bm25'")
    world_dir = Path(world_dir)
    read_manifest(world_dir)
    out = world_dir / f"index-{kind}"
    if (out / "manifest.json").is_file():
        return out
    build_index(world_dir / "corpus.jsonl", out, kind=kind)
    return out
