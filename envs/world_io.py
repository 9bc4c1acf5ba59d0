"""A world's files: ``write_world`` writes a generated :class:`~searchgym.envs.world_gen.World`
as a folder (``corpus.jsonl``, ``qa/<split>.jsonl``, ``kg.json``, ``manifest.json``,
atomically), the ``load_*`` functions read one back, checking its manifest."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

from searchgym.envs.tasks import SPLITS, Question, read_questions
from searchgym.envs.world_gen import GENERATOR_VERSION, Entity, World, WorldConfig
from searchgym.retrieval.base import read_corpus
from searchgym.retrieval.fileio import atomic_dir, json_marker


class WorldError(ValueError):
    """A world directory is missing, incomplete or from another generator version."""


WORLD_MARKER = "a searchgym world (manifest.json with format 'searchgym-world')"


def is_world_dir(path: str | Path) -> bool:
    """True iff ``path`` holds a world manifest (the folder's own-output marker)."""
    return json_marker(Path(path) / "manifest.json", format="searchgym-world")


def write_world(world: World, out_dir: str | Path, force: bool = False) -> Path:
    """Write ``corpus.jsonl``, ``qa/<split>.jsonl``, ``kg.json``, ``manifest.json`` atomically.

    An existing ``out_dir`` is replaced only if it is a world (or empty); anything else
    raises ``ForeignOutputError`` untouched unless ``force``.
    """
    out_dir = Path(out_dir)
    with atomic_dir(out_dir, is_own=is_world_dir, what=WORLD_MARKER, force=force) as tmp:
        tmp = Path(tmp)
        with (tmp / "corpus.jsonl").open("w", encoding="utf-8") as f:
            for d in world.documents:
                f.write(json.dumps({"id": d.doc_id, "contents": d.contents}, ensure_ascii=False) + "\n")
        (tmp / "qa").mkdir()
        for split, qs in world.questions.items():
            with (tmp / "qa" / f"{split}.jsonl").open("w", encoding="utf-8") as f:
                for q in qs:
                    f.write(json.dumps(q.to_json(), ensure_ascii=False) + "\n")
        kg = {"entities": [asdict(e) for e in world.entities.values()]}
        (tmp / "kg.json").write_text(json.dumps(kg, ensure_ascii=False), encoding="utf-8")
        cfg = asdict(world.config)
        manifest = {
            "format": "searchgym-world",
            "generator_version": GENERATOR_VERSION,
            "config": cfg,
            "documents": len(world.documents),
            "entities": len(world.entities),
            "questions": {s: len(q) for s, q in world.questions.items()},
            "corpus_sha256": hashlib.sha256((tmp / "corpus.jsonl").read_bytes()).hexdigest(),
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return out_dir


def read_manifest(world_dir: str | Path) -> dict:
    path = Path(world_dir) / "manifest.json"
    if not path.is_file():
        raise WorldError(f"{world_dir}: not a searchgym world (no manifest.json); build one with `searchgym world --out DIR`")
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise WorldError(f"{path}: not valid JSON ({exc.msg})") from None
    if m.get("format") != "searchgym-world":
        raise WorldError(f"{path}: format is {m.get('format')!r}, expected 'searchgym-world'")
    return m


def world_fingerprint(world_dir: str | Path) -> str:
    """A short id of a world's content, ``<preset>-s<seed>-g<version>:<corpus sha256[:12]>``:
    files derived from a world (demonstrations) record it so they are not used with another
    world by mistake. Readable on purpose: mismatch errors show both."""
    m = read_manifest(world_dir)
    cfg = m.get("config") or {}
    return (f"{cfg.get('preset', '?')}-s{cfg.get('seed', '?')}-g{m.get('generator_version', '?')}:"
            f"{str(m.get('corpus_sha256', ''))[:12]}")


def load_questions(world_dir: str | Path, split: str) -> list[Question]:
    """The questions of one split of a world directory."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {list(SPLITS)}")
    read_manifest(world_dir)
    path = Path(world_dir) / "qa" / f"{split}.jsonl"
    if not path.is_file():
        raise WorldError(f"{path}: missing QA file")
    return read_questions(path)


def load_entities(world_dir: str | Path) -> dict[str, Entity]:
    """The entities of a world folder's ``kg.json``, by id; ValueError naming the file if
    it is not a knowledge graph written by :func:`write_world`."""
    kg = Path(world_dir) / "kg.json"
    try:
        data = json.loads(kg.read_text(encoding="utf-8"))
        return {e["eid"]: Entity(**e) for e in data["entities"]}
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{kg}: not a world knowledge graph ({exc})") from None


def load_world(world_dir: str | Path) -> World:
    """Load a world directory written by :func:`write_world`."""
    world_dir = Path(world_dir)
    m = read_manifest(world_dir)
    cfg_d = dict(m["config"])
    cfg_d["split_fractions"] = tuple(cfg_d.get("split_fractions", (0.8, 0.1, 0.1)))
    cfg = WorldConfig(**cfg_d)
    ents = load_entities(world_dir)
    docs = list(read_corpus(world_dir / "corpus.jsonl"))
    questions = {s: load_questions(world_dir, s) for s in SPLITS}
    return World(cfg, ents, docs, questions)
