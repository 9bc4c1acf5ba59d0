"""The synthetic world, one name space for its three concerns: generation
(:mod:`~searchgym.envs.world_gen`: ``WorldConfig``, ``generate_world``, the entity/passage/
question templates), files (:mod:`~searchgym.envs.world_io`: ``write_world``, ``load_*``,
``read_manifest``, ``world_fingerprint``) and the cache under ``$SEARCHGYM_HOME``
(:mod:`~searchgym.envs.world_cache`: ``ensure_world``, ``ensure_index``). Import from here or
from the module itself; the names are the same objects."""

from __future__ import annotations

from searchgym.envs.world_gen import (
    GENERATOR_VERSION,
    KEY,
    LIST_TITLE,
    PRESETS,
    T,
    Entity,
    World,
    WorldConfig,
    entity_of_doc,
    fact_title,
    generate_world,
)
from searchgym.envs.world_io import (
    WORLD_MARKER,
    WorldError,
    is_world_dir,
    load_entities,
    load_questions,
    load_world,
    read_manifest,
    world_fingerprint,
    write_world,
)
from searchgym.envs.world_cache import (
    default_world_dir,
    ensure_index,
    ensure_world,
    searchgym_home,
)

__all__ = [
    "Entity", "GENERATOR_VERSION", "KEY", "LIST_TITLE", "PRESETS", "T", "WORLD_MARKER", "World",
    "WorldConfig", "WorldError", "default_world_dir", "ensure_index", "ensure_world", "entity_of_doc",
    "fact_title", "generate_world", "is_world_dir", "load_entities", "load_questions", "load_world",
    "read_manifest", "searchgym_home", "world_fingerprint", "write_world",
]
