"""searchgym: Gymnasium multi-turn search environments, an embedded RL trainer on verl's
core algorithms, and metrics for token entropy, hidden-state effective rank and strategy
diversity.

Importing ``searchgym`` registers the ``searchgym/...`` environment ids with gymnasium.
"""

from __future__ import annotations

__version__ = "0.1.0"

try:  # the facade re-exports; envs registers its ids on import
    from searchgym.envs import make, register_task  # noqa: F401
except ImportError as _exc:  # pragma: no cover - only while envs is being built
    if "searchgym.envs" not in str(_exc):
        raise
