"""Positive control of the between-sample metrics: forced collapse.

An instrument that claims to measure diversity between a question's samples must read
(close to) its floor when those samples are made identical. :func:`force_collapse` replaces
every group's samples by copies of one of them; :func:`collapse_control` measures a set of
records before and after and reports, per between-sample metric,

    ratio = (collapsed - floor) / (original - floor),

which must be <= 0.1 (``COLLAPSE_THRESHOLD``) for the metric to pass. Floors
(:data:`COLLAPSE_FLOORS`) are the values the metric takes on identical samples:

- 0 for entropies (strategy, signature) and for the ER-type metrics (group ER, aligned ER,
  residualised group ER: the ER of an all-equal centred matrix is 0 by the convention of
  :mod:`.rank`);
- 1 for distinct counts (distinct strategies, distinct signatures) and for Vendi (identical
  embeddings have one eigenvalue);
- ``distinct_queries`` (unique normalised query strings / all queries of a group): copies of
  a sample that issued q queries, u of them distinct, read u / (n q) <= 1 / n, with equality
  when that sample repeats no query. Its floor is the mean over groups of 1 / n_g (the
  ceiling of what copies can read), so a correct implementation always passes; what the
  control checks for it is that the metric is computed across a group's samples at all.

A metric whose original value is at (or below) its floor has no spread to collapse: its ratio
is NaN and ``passed`` is None (not applicable), never a pass.
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from typing import Any, Callable, Mapping, Sequence

import numpy as np

__all__ = ["COLLAPSE_FLOORS", "COLLAPSE_THRESHOLD", "collapse_floor", "collapse_control", "force_collapse"]

#: Share of its (floor-adjusted) value a between-sample metric may keep under forced collapse.
COLLAPSE_THRESHOLD = 0.1

#: Floor of each between-sample metric of :func:`~.summary.summarize_rollouts` (the value
#: on identical samples); ``None`` = group-size dependent, see :func:`collapse_floor`.
COLLAPSE_FLOORS: dict[str, float | None] = {
    "group_er": 0.0,
    "aligned_er": 0.0,
    "group_er_resid": 0.0,
    "strategy_entropy": 0.0,
    "strategy_entropy_plugin": 0.0,
    "strategy_entropy_correct": 0.0,
    "strategy_entropy_plugin_correct": 0.0,
    "distinct_strategies": 1.0,
    "distinct_strategies_correct": 1.0,
    "signature_entropy": 0.0,
    "signature_entropy_mm": 0.0,
    "distinct_signatures": 1.0,
    "vendi": 1.0,
    "distinct_queries": None,
}


def _group_key(rec: Mapping[str, Any], i: int):
    g = rec.get("group")
    if g is None:
        g = rec.get("question_id")
    if g is None:
        raise ValueError(f"record {i}: no 'group' or 'question_id'; forced collapse needs question groups")
    return g


def _groups(records: Sequence[Mapping[str, Any]]) -> dict[Any, list[int]]:
    groups: dict[Any, list[int]] = OrderedDict()
    for i, r in enumerate(records):
        groups.setdefault(_group_key(r, i), []).append(i)
    return groups


def _copy(rec: Mapping[str, Any]) -> dict:
    """A copy of a record that shares nothing mutable with it except ``hidden_states``
    (read-only for the metrics; copying them would double the memory of an evaluation)."""
    out = {}
    for key, v in rec.items():
        out[key] = v if key == "hidden_states" else copy.deepcopy(v)
    return out


def force_collapse(records: Sequence[Mapping[str, Any]], keep: int = 0) -> list[dict]:
    """Every group's samples replaced by copies of its sample number ``keep`` (modulo the
    group size; in record order), at the same positions. The copies are independent dicts
    (deep copies of every field except ``hidden_states``, which they share). Groups are keyed
    by ``group``, else ``question_id``; a record with neither raises ValueError."""
    if keep < 0:
        raise ValueError(f"keep must be >= 0, got {keep}")
    out: list[dict | None] = [None] * len(records)
    for idx in _groups(records).values():
        src = records[idx[keep % len(idx)]]
        for i in idx:
            out[i] = _copy(src)
    return out  # type: ignore[return-value]


def collapse_floor(name: str, records: Sequence[Mapping[str, Any]]) -> float:
    """The floor of metric ``name`` on ``records`` (see the module doc); NaN if unknown."""
    if name not in COLLAPSE_FLOORS:
        return math.nan
    f = COLLAPSE_FLOORS[name]
    if f is not None:
        return f
    # distinct_queries: mean over the groups that issued queries of 1 / n_g
    sizes = [len(idx) for idx in _groups(records).values()
             if any(records[i].get("queries") for i in idx)]
    return float(np.mean([1.0 / s for s in sizes])) if sizes else math.nan


def _finite(v) -> float | None:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def collapse_control(
    records: Sequence[Mapping[str, Any]],
    metrics_fn: Callable[[list[dict]], Mapping[str, Any]],
    *,
    keep: int = 0,
    metrics: Sequence[str] | None = None,
    threshold: float = COLLAPSE_THRESHOLD,
) -> dict[str, dict[str, Any]]:
    """Forced-collapse control of the between-sample metrics.

    ``metrics_fn(records) -> {name: value, ...}`` (e.g. a ``summarize_rollouts`` partial; any
    non-numeric entries such as ``skipped``/``per_group`` are ignored) is called on
    ``records`` and on :func:`force_collapse` of them. For each metric of ``metrics``
    (default: every key of :data:`COLLAPSE_FLOORS`) with a finite original value, returns
    ``{name: {"original", "collapsed", "floor", "ratio", "passed"}}`` with
    ``ratio = (collapsed - floor) / (original - floor)`` and ``passed = ratio <= threshold``.
    ``passed`` is None (not applicable, never a pass) with a ``note`` when the original is at
    or below the floor (no spread to collapse) or the collapsed value is not finite (e.g.
    every kept sample unmatched: no strategy to measure). Values are Python floats (NaN for
    missing numbers)."""
    names = list(metrics) if metrics is not None else list(COLLAPSE_FLOORS)
    before = metrics_fn(list(records))
    after = metrics_fn(force_collapse(records, keep))
    out: dict[str, dict[str, Any]] = OrderedDict()
    for name in names:
        o = _finite(before.get(name))
        if o is None:
            continue
        c = _finite(after.get(name))
        f = collapse_floor(name, records)
        row = {"original": o, "collapsed": math.nan if c is None else c, "floor": f,
               "ratio": math.nan, "passed": None}
        if not math.isfinite(f) or o - f <= 1e-12 * max(1.0, abs(f)):
            row["note"] = "original value at its floor: no spread to collapse"
        elif c is None:
            row["note"] = "not defined on the collapsed samples"
        else:
            row["ratio"] = (c - f) / (o - f)
            row["passed"] = bool(row["ratio"] <= threshold)
        out[name] = row
    return out
