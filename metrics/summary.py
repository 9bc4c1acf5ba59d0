"""Records-level entry point: every metric of a set of episodes in one flat dict.

Input is a list of per-episode dicts (one JSONL line each); the fields read are listed in
docs/contracts.md ("metrics") and in :func:`summarize_rollouts`. Every field is optional; a
metric whose inputs are missing is skipped and named in ``result["skipped"]``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from . import diversity as dv
from .entropy import SEGMENTS, batch_token_entropy_stats
from .outcome import mean_pass_at_k
from .rank import erv_era_batch, group_effective_rank, policy_rows, spectral_stats, windowed_effective_ranks

__all__ = ["summarize_rollouts", "RecordError"]


class RecordError(ValueError):
    """A record field has the wrong type or shape; the message names the record and field."""


def _num(x) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


def _nanmean(v) -> float:
    a = np.asarray(v, dtype=np.float64)
    a = a[np.isfinite(a)]
    return float(a.mean()) if a.size else math.nan


class _Reader:
    """Typed field access with errors that name the record (file:line when known)."""

    def __init__(self, records: Sequence[Mapping[str, Any]], where: Sequence[str] | None):
        if where is not None and len(where) != len(records):
            raise ValueError(f"where has {len(where)} entries for {len(records)} records")
        self.records = records
        self.where = where

    def loc(self, i: int) -> str:
        return self.where[i] if self.where is not None else f"record {i}"

    def fail(self, i: int, field: str, msg: str):
        raise RecordError(f"{self.loc(i)}: field {field!r} {msg}")

    def get(self, i: int, field: str, kind: str):
        rec = self.records[i]
        if field not in rec or rec[field] is None:
            return None
        v = rec[field]
        ok = {
            "key": isinstance(v, (str, int)) and not isinstance(v, bool),
            "bool": isinstance(v, (bool, np.bool_)) or (_num(v) and v in (0, 1)),
            "num": _num(v) and math.isfinite(float(v)),
            "int": (isinstance(v, (int, np.integer)) and not isinstance(v, bool))
            or (isinstance(v, float) and v.is_integer()),
            "str": isinstance(v, str),
            "strlist": isinstance(v, (list, tuple)) and all(isinstance(s, str) for s in v),
            "seq": hasattr(v, "__len__") and not isinstance(v, (str, bytes, Mapping)),
        }[kind]
        if not ok:
            want = {
                "key": "a string or integer",
                "bool": "a boolean",
                "num": "a finite number",
                "int": "an integer",
                "str": "a string",
                "strlist": "a list of strings",
                "seq": "a list",
            }[kind]
            self.fail(i, field, f"must be {want}, got {type(v).__name__}: {str(v)[:60]}")
        if kind == "int":
            if v < 0:
                self.fail(i, field, f"must be >= 0, got {v}")
            return int(v)
        if kind == "bool":
            return bool(v)
        return v


def summarize_rollouts(
    records: Sequence[Mapping[str, Any]],
    *,
    k: Sequence[int] = (1, 4),
    correct_threshold: float = 1.0,
    top_frac: float = 0.2,
    er_window: int = 64,
    erv_stride: int = 20,
    erv_max_len: int = 512,
    erv: bool = True,
    full_er: bool = True,
    rank_method: str = "gram",
    erv_method: str = "gram32",
    vendi: bool = False,
    embed_fn: Callable[[list[str]], np.ndarray] | None = None,
    where: Sequence[str] | None = None,
) -> dict[str, Any]:
    """All metrics of a set of episodes, as one flat ``{name: float}`` dict plus
    ``"skipped": {metric: reason}``.

    Fields read per record (all optional; see docs/contracts.md for types):
    ``group``/``question_id``, ``correct``, ``reward``, ``signature``, ``strategy``,
    ``valid_strategies``, ``queries``, ``answer``, ``golden_answers``/``multi_answer``,
    ``format_errors``, ``num_searches``, ``entropies``, ``loss_mask``, ``segments``,
    ``hidden_states``, ``text``/``transcript``.

    Keys produced (when their inputs exist):
      counts: ``episodes``, ``groups``;
      outcome: ``accuracy``, ``reward_mean``, ``pass@K`` and ``pass@K_groups`` per K in ``k``
        (groups with < K samples skipped), ``format_error_rate`` (share of episodes with >= 1),
        ``format_errors_mean``, ``searches_mean``;
      token entropy (pooled over policy tokens): ``entropy``, ``entropy_top``,
        ``entropy_top_threshold``, ``entropy_<segment>``, ``num_tokens``;
      hidden states (mean over responses): ``er``, ``er_sq``, ``matrix_entropy``, ``er_norm``
        (ER / min(T, d)), ``er_window`` (ER of the first ``er_window`` policy tokens; responses
        shorter than that are left out and counted in ``er_window_skipped``), ``erv``, ``era``
        (``erv=True``), ``hs_length``; ``full_er=False`` skips the
        whole-response ER family (the costly part; the per-step set is er_window + group_er), ``group_er`` (mean over groups of the ER of mean-pooled
        responses), ``global_er`` (same over all responses);
      per group, averaged over groups: ``signature_entropy``, ``signature_entropy_norm``,
        ``signature_entropy_mm``, ``distinct_signatures``, ``strategy_entropy``,
        ``strategy_entropy_norm``, ``strategy_entropy_mm``, ``distinct_strategies``,
        ``strategy_coverage``, ``distinct_1``, ``distinct_2``, ``distinct_queries``,
        ``answer_diversity`` (multi-answer groups only), ``vendi`` (``vendi=True``: cosine Vendi
        of trajectory-text embeddings from ``embed_fn``, default MiniLM).
    ``rank_method`` is the spectral route of ER (see :mod:`.rank`); ERV/ERA use ``erv_method``
    (default "gram32", VERL's fp32 Gram route, 2x cheaper on their many prefixes).
    ``correct`` falls back to ``reward >= correct_threshold``. ``where`` gives a location per
    record (e.g. ``file:line``) for error messages.
    """
    rd = _Reader(records, where)
    n = len(records)
    out: dict[str, Any] = OrderedDict(episodes=float(n))
    skipped: dict[str, str] = {}
    out["skipped"] = skipped
    if n == 0:
        skipped["all"] = "no records"
        return out

    # ---- per-episode scalars -------------------------------------------------------------
    correct: list[bool | None] = []
    rewards = []
    for i in range(n):
        c = rd.get(i, "correct", "bool")
        r = rd.get(i, "reward", "num")
        if r is not None:
            rewards.append(float(r))
        if c is None and r is not None:
            c = float(r) >= correct_threshold
        correct.append(c)
    have_correct = all(c is not None for c in correct)
    if have_correct:
        out["accuracy"] = float(np.mean(correct))
    else:
        skipped["accuracy"] = "some records have neither 'correct' nor 'reward'"
    if rewards:
        out["reward_mean"] = float(np.mean(rewards))

    fe = [rd.get(i, "format_errors", "int") for i in range(n)]
    if all(v is not None for v in fe):
        out["format_error_rate"] = float(np.mean([v > 0 for v in fe]))
        out["format_errors_mean"] = float(np.mean(fe))
    else:
        skipped["format_error_rate"] = "field 'format_errors' missing"

    queries = [rd.get(i, "queries", "strlist") for i in range(n)]
    ns = []
    for i in range(n):
        v = rd.get(i, "num_searches", "int")
        ns.append(v if v is not None else (len(queries[i]) if queries[i] is not None else None))
    if all(v is not None for v in ns):
        out["searches_mean"] = float(np.mean(ns))
    else:
        skipped["searches_mean"] = "fields 'num_searches' and 'queries' missing"

    # ---- token entropy ----------------------------------------------------------------------
    ents, masks, segs = [], [], []
    have_segs = True
    for i in range(n):
        e = rd.get(i, "entropies", "seq")
        if e is None:
            continue
        e = np.asarray(e, dtype=np.float64).reshape(-1)
        m = rd.get(i, "loss_mask", "seq")
        m = np.ones(e.size) if m is None else np.asarray(m).reshape(-1)
        if m.size != e.size:
            rd.fail(i, "loss_mask", f"has {m.size} entries but 'entropies' has {e.size}")
        s = rd.get(i, "segments", "seq")
        if s is None:
            have_segs = False
        elif len(s) != e.size:
            rd.fail(i, "segments", f"has {len(s)} entries but 'entropies' has {e.size}")
        else:
            bad = [x for x in s if not (isinstance(x, str) and x in SEGMENTS)]
            if bad:
                rd.fail(i, "segments", f"has label {bad[0]!r}; expected one of {SEGMENTS}")
        ents.append(e), masks.append(m), segs.append(s)
    if ents:
        stats = batch_token_entropy_stats(ents, masks, segs if have_segs else None, top_frac=top_frac)
        out.update(stats)
        if len(ents) < n:
            skipped["entropy_partial"] = f"{n - len(ents)} records without 'entropies' left out"
    else:
        skipped["entropy"] = "field 'entropies' missing"

    # ---- group keys ---------------------------------------------------------------------------
    keys = []
    for i in range(n):
        g = rd.get(i, "group", "key")
        keys.append(g if g is not None else rd.get(i, "question_id", "key"))
    groups: dict[Any, list[int]] | None = None
    if all(g is None for g in keys):
        skipped["groups"] = "fields 'group'/'question_id' missing: group metrics skipped"
    elif any(g is None for g in keys):
        i = keys.index(None)
        raise RecordError(f"{rd.loc(i)}: no 'group' or 'question_id' while other records have one")
    else:
        groups = OrderedDict()
        for i, g in enumerate(keys):
            groups.setdefault(g, []).append(i)
        out["groups"] = float(len(groups))

    # ---- pass@k ----------------------------------------------------------------------------
    if groups is not None and have_correct:
        for kk in k:
            val, used = mean_pass_at_k([[correct[i] for i in idx] for idx in groups.values()], int(kk))
            out[f"pass@{kk}"] = val
            out[f"pass@{kk}_groups"] = float(used)

    # ---- hidden states ------------------------------------------------------------------------
    hs: dict[int, Any] = {}
    for i in range(n):
        h = rd.get(i, "hidden_states", "seq")
        if h is None:
            continue
        try:
            arr = np.asarray(h, dtype=np.float32) if not hasattr(h, "detach") else h
        except (TypeError, ValueError):
            rd.fail(i, "hidden_states", "is not a rectangular T x d numeric array")
        if arr.ndim != 2:
            rd.fail(i, "hidden_states", f"must be 2-D (T x d), got shape {tuple(arr.shape)}")
        m = rd.get(i, "loss_mask", "seq")
        if m is not None and arr.shape[0] == len(m):
            hs[i] = policy_rows(arr, m)
        elif m is None or arr.shape[0] == int(np.count_nonzero(np.asarray(m))):
            hs[i] = policy_rows(arr)
        else:
            rd.fail(i, "hidden_states", f"has {arr.shape[0]} rows; expected len(loss_mask)={len(m)} or its policy-token count")
    if hs:
        idx = list(hs)
        mats = [hs[i] for i in idx]
        out["hs_length"] = float(np.mean([m.shape[0] for m in mats]))
        if full_er:
            st = spectral_stats(mats, method=rank_method)
            for key in ("er", "er_sq", "matrix_entropy", "er_norm"):
                out[key] = _nanmean(st[key])
        else:
            skipped["er"] = "full_er=False (er_window still computed)"
        w = windowed_effective_ranks(mats, er_window, method=rank_method)
        out["er_window"] = _nanmean(w)
        out["er_window_skipped"] = float(np.isnan(w).sum())
        if erv:
            v, a = erv_era_batch(mats, stride=erv_stride, max_len=erv_max_len, method=erv_method)
            out["erv"], out["era"] = _nanmean(v), _nanmean(a)
        out["global_er"] = group_effective_rank(mats, method=rank_method)
        if groups is not None:
            ger = [group_effective_rank([hs[i] for i in g if i in hs], method=rank_method) for g in groups.values()]
            out["group_er"] = _nanmean(ger)
    else:
        skipped["er"] = "field 'hidden_states' missing"

    # ---- per-group diversity -------------------------------------------------------------------
    if groups is None:
        return out
    sigs = [rd.get(i, "signature", "key") for i in range(n)]
    strats = [None] * n
    have_strategy_field = False
    for i in range(n):
        if "strategy" in records[i]:
            have_strategy_field = True
            strats[i] = rd.get(i, "strategy", "str")
    valid = [rd.get(i, "valid_strategies", "strlist") for i in range(n)]
    answers = [rd.get(i, "answer", "str") for i in range(n)]
    multi = []
    for i in range(n):
        ga = rd.get(i, "golden_answers", "strlist")
        ma = rd.get(i, "multi_answer", "bool")
        multi.append(bool(ma) or (ga is not None and len(ga) > 1))

    acc: dict[str, list[float]] = {}

    def add(name: str, value: float):
        acc.setdefault(name, []).append(value)

    for g, idx in groups.items():
        vset = sorted({s for i in idx if valid[i] for s in valid[i]})
        gs = [sigs[i] for i in idx]
        if all(s is not None for s in gs):
            d = dv.signature_diversity(gs, len(vset) if vset else None)
            add("signature_entropy", d["entropy"]), add("signature_entropy_norm", d["entropy_norm"])
            add("signature_entropy_mm", d["entropy_mm"]), add("distinct_signatures", d["distinct"])
        if have_strategy_field:
            # an unmatched trajectory (strategy null) is its own "none" outcome
            gst = [strats[i] if strats[i] is not None else "<none>" for i in idx]
            d = dv.signature_diversity(gst, (len(vset) + 1) if vset else None)
            add("strategy_entropy", d["entropy"]), add("strategy_entropy_norm", d["entropy_norm"])
            add("strategy_entropy_mm", d["entropy_mm"])
            add("distinct_strategies", float(len({strats[i] for i in idx if strats[i] is not None})))
            if vset:
                add("strategy_coverage", dv.strategy_coverage([strats[i] for i in idx], vset))
        if all(queries[i] is not None for i in idx):
            qd = dv.query_diversity([q for i in idx for q in queries[i]])
            for key, v in qd.items():
                add(key, v)
        if any(multi[i] for i in idx) and have_correct:
            add("answer_diversity", dv.answer_diversity([answers[i] for i in idx], [correct[i] for i in idx]))
    for name in (
        "signature_entropy", "signature_entropy_norm", "signature_entropy_mm", "distinct_signatures",
        "strategy_entropy", "strategy_entropy_norm", "strategy_entropy_mm", "distinct_strategies",
        "strategy_coverage", "distinct_1", "distinct_2", "distinct_queries", "answer_diversity",
    ):
        if name in acc:
            out[name] = _nanmean(acc[name])
    if "signature_entropy" not in acc:
        skipped["signature_entropy"] = "field 'signature' missing"
    if not have_strategy_field:
        skipped["strategy_entropy"] = "field 'strategy' missing"
    if "distinct_1" not in acc:
        skipped["distinct_queries"] = "field 'queries' missing"
    if "answer_diversity" not in acc:
        skipped["answer_diversity"] = "no multi-answer group (golden_answers > 1) with correctness"

    if vendi:
        texts = []
        for i in range(n):
            t = rd.get(i, "text", "str") or rd.get(i, "transcript", "str")
            if t is None:
                parts = list(queries[i] or [])
                if answers[i] is not None:
                    parts.append(answers[i])
                t = " | ".join(parts) if parts else None
            texts.append(t)
        if any(t is None for t in texts):
            skipped["vendi"] = "some records have no 'text'/'transcript'/'queries'/'answer'"
        else:
            fn = embed_fn if embed_fn is not None else dv.default_embedder()
            emb = np.asarray(fn(texts), dtype=np.float64)
            if emb.ndim != 2 or emb.shape[0] != n:
                raise ValueError(f"embed_fn returned shape {emb.shape} for {n} texts")
            vs = [dv.vendi_from_embeddings(emb[idx]) for idx in groups.values()]
            out["vendi"] = _nanmean(vs)
    else:
        skipped["vendi"] = "disabled"
    return out
