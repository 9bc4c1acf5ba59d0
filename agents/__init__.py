"""searchgym.agents: policies, the batched rollout engine, scripted strategy agents,
demonstration sets, and the tiny offline model + tokenizer.

Names are imported lazily so ``import searchgym.agents`` stays cheap (no torch).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "RolloutConfig": "rollout", "RolloutEngine": "rollout", "Trajectory": "trajectory",
    "Policy": "policy", "EpisodeState": "trajectory", "RandomPolicy": "policy", "LMPolicy": "policy",
    "run_policy": "policy", "run_text_policy": "policy", "evaluate": "policy", "evaluate_policy": "policy",
    "evaluation_questions": "policy", "EpisodeRun": "trajectory", "step_runs": "trajectory", "summarize": "policy",
    "make_policy": "policy",
    "ScriptedPolicy": "scripted", "canonical_strategy": "scripted", "STRATEGY_NAMES": "scripted",
    "build_matched": "demos", "load_demos": "demos", "demo_tokens": "demos", "summarize_pair": "demos",
    "EpisodeTokens": "episode", "tokenize_episode": "episode", "encode_prompt": "episode",
    "encode_text": "episode", "segment_labels": "episode",
    "EpisodeRecord": "record", "SCHEMA_VERSION": "record",
    "init_model": "model", "load_model": "model", "build_model": "model", "build_tokenizer": "model",
    "PRESETS": "model", "TAGS": "model",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"searchgym.agents.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'searchgym.agents' has no attribute {name!r}")
