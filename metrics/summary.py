"""Records-level entry point: every metric of a set of episodes in one flat dict.

Input is a list of per-episode dicts (one JSONL line each); the fields read are listed in
docs/contracts.md ("metrics") and in :func:`summarize_rollouts`. Every field is optional; a
metric whose inputs are missing is skipped and named in ``result["skipped"]``. With
``per_group=True`` every per-question metric is also returned per group (question), for a
bootstrap over seeds then questions.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from . import diversity as dv
from .entropy import SEGMENTS, batch_token_entropy_stats
from .outcome import mean_pass_at_k
from .outcome import pass_at_k
from .rank import (
    aligned_effective_ranks,
    effective_ranks,
    erv_era_batch,
    group_effective_rank,
    group_effective_ranks,
    policy_rows,
    residualize_token_identity,
    spectral_stats,
    window_counts,
    windowed_effective_ranks,
)

__all__ = ["summarize_rollouts", "RecordError", "STRATEGY_KEYS"]


class RecordError(ValueError):
    """A record field has the wrong type or shape; the message names the record and field."""


def _num(x) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


def _is_int_list(v) -> bool:
    """A 1-D sequence of integers (list, tuple, numpy or torch integer array; bools are not)."""
    if isinstance(v, (str, bytes, Mapping)) or not hasattr(v, "__len__"):
        return False
    if hasattr(v, "detach"):  # torch
        return v.ndim == 1 and not v.is_floating_point() and not v.is_complex() and str(v.dtype) != "torch.bool"
    try:
        a = np.asarray(v)
    except (TypeError, ValueError):
        return False
    return a.ndim == 1 and (a.size == 0 or a.dtype.kind in "iu")


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
            "intlist": _is_int_list(v),
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
                "intlist": "a list of integers",
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


#: Strategy keys of :func:`~.diversity.strategy_diversity` averaged over groups.
STRATEGY_KEYS = (
    "strategy_entropy", "strategy_entropy_plugin", "strategy_entropy_norm", "distinct_strategies",
    "strategy_coverage", "matched", "unmatched_rate",
    "strategy_entropy_correct", "strategy_entropy_plugin_correct", "strategy_entropy_norm_correct",
    "distinct_strategies_correct", "strategy_coverage_correct", "matched_correct",
)


def summarize_rollouts(
    records: Sequence[Mapping[str, Any]],
    *,
    k: Sequence[int] = (1, 4),
    correct_threshold: float = 1.0,
    top_frac: float = 0.2,
    er_window: int = 64,
    aligned_positions: int = 64,
    erv_stride: int = 20,
    erv_max_len: int = 512,
    erv: bool = True,
    full_er: bool = True,
    rank_method: str = "gram",
    erv_method: str = "gram32",
    vendi: bool = False,
    embed_fn: Callable[[list[str]], np.ndarray] | None = None,
    per_group: bool = False,
    where: Sequence[str] | None = None,
) -> dict[str, Any]:
    """All metrics of a set of episodes, as one flat ``{name: float}`` dict plus
    ``"skipped": {metric: reason}`` (and ``"per_group"`` with ``per_group=True``).

    Fields read per record (all optional; see docs/contracts.md for types):
    ``group``/``question_id``, ``correct``, ``reward``, ``signature``, ``strategy``,
    ``valid_strategies``, ``queries``, ``answer``, ``golden_answers``/``multi_answer``,
    ``format_errors``, ``num_searches``, ``entropies``, ``loss_mask``, ``segments``,
    ``hidden_states``, ``policy_token_ids`` (else ``response_ids`` at ``loss_mask`` 1),
    ``text``/``transcript``.

    Keys produced (when their inputs exist):
      counts: ``episodes``, ``groups``;
      outcome: ``accuracy``, ``reward_mean``, ``pass@K`` and ``pass@K_groups`` per K in ``k``
        (groups with < K samples skipped), ``format_error_rate`` (share of episodes with >= 1),
        ``format_errors_mean``, ``searches_mean``, ``response_length`` (policy tokens);
      token entropy (pooled over policy tokens): ``entropy``, ``entropy_top``,
        ``entropy_top_threshold``, ``entropy_<segment>``, ``num_tokens``;
      hidden states, between samples (primary; mean over groups; floor 0 = all samples equal):
        ``group_er`` (ER of the group's mean-pooled responses), ``aligned_er`` (mean over
        policy-token positions t < ``aligned_positions`` of the ER of the samples' states at
        t; ``aligned_er_positions``: positions used, mean over groups), ``group_er_resid``
        (group ER of token-identity-residualised states), ``global_er`` (ER of all
        mean-pooled responses);
      hidden states, within one response (mean over responses): ``er_resid`` (ER of the
        residualised response; ``full_er=True``), ``er_within_window`` (ER of the first ``er_window`` policy
        tokens; a shorter response uses its T >= 2 rows, counted in ``er_within_window_short``;
        T < 2 is left out, counted in ``er_within_window_skipped``; ``er_window`` is a
        deprecated alias of it), ``er``, ``er_sq``, ``matrix_entropy``, ``er_norm``
        (ER / min(T, d)) (``full_er=True``), ``erv``, ``era`` (``erv=True``), ``hs_length``;
        the residualised metrics subtract each token id's mean state over ALL records given
        (:func:`~.rank.residualize_token_identity`), so give the whole evaluation batch;
      per group, averaged over groups: ``signature_entropy``, ``signature_entropy_norm``,
        ``signature_entropy_mm``, ``distinct_signatures``; strategy diversity over MATCHED
        trajectories (:func:`~.diversity.strategy_diversity`: ``strategy_entropy``
        (Miller-Madow), ``strategy_entropy_plugin``, ``strategy_entropy_norm``,
        ``distinct_strategies``, ``strategy_coverage``, ``matched``, ``unmatched_rate``, the
        same over matched and correct ones with suffix ``_correct``; groups where a value is
        NaN, e.g. fewer than 2 matched samples for the entropies, are left out of its mean and
        ``strategy_entropy_groups`` / ``strategy_entropy_correct_groups`` count those kept);
        ``distinct_1``, ``distinct_2``, ``distinct_queries``, ``answer_diversity``
        (multi-answer groups only), ``vendi`` (``vendi=True``: cosine Vendi of
        trajectory-text embeddings from ``embed_fn``, default MiniLM).
    ``per_group=True`` adds ``out["per_group"] = {group key: {metric: value}}`` with every
    per-question metric: ``n``, ``accuracy``, ``reward_mean``, ``pass@K``,
    ``format_error_rate``, ``searches_mean``, ``response_length``, ``entropy`` (over the
    group's policy tokens), the signature and strategy keys, query and answer diversity,
    ``vendi``, ``group_er``, ``aligned_er``, ``aligned_er_positions``, ``group_er_resid``, and
    the group means of ``er_resid``, ``er_within_window``, ``er`` and ``hs_length``.
    ``rank_method`` is the spectral route of the within-response ER (see :mod:`.rank`); the
    between-sample ER use the batched float64 Gram route; ERV/ERA use ``erv_method``
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
        if per_group:
            out["per_group"] = {}
        return out

    # ---- per-episode scalars -------------------------------------------------------------
    correct: list[bool | None] = []
    rewards: list[float | None] = []
    for i in range(n):
        c = rd.get(i, "correct", "bool")
        r = rd.get(i, "reward", "num")
        rewards.append(float(r) if r is not None else None)
        if c is None and r is not None:
            c = float(r) >= correct_threshold
        correct.append(c)
    have_correct = all(c is not None for c in correct)
    if have_correct:
        out["accuracy"] = float(np.mean(correct))
    else:
        skipped["accuracy"] = "some records have neither 'correct' nor 'reward'"
    if any(r is not None for r in rewards):
        out["reward_mean"] = float(np.mean([r for r in rewards if r is not None]))

    fe = [rd.get(i, "format_errors", "int") for i in range(n)]
    have_fe = all(v is not None for v in fe)
    if have_fe:
        out["format_error_rate"] = float(np.mean([v > 0 for v in fe]))
        out["format_errors_mean"] = float(np.mean(fe))
    else:
        skipped["format_error_rate"] = "field 'format_errors' missing"

    queries = [rd.get(i, "queries", "strlist") for i in range(n)]
    ns = []
    for i in range(n):
        v = rd.get(i, "num_searches", "int")
        ns.append(v if v is not None else (len(queries[i]) if queries[i] is not None else None))
    have_ns = all(v is not None for v in ns)
    if have_ns:
        out["searches_mean"] = float(np.mean(ns))
    else:
        skipped["searches_mean"] = "fields 'num_searches' and 'queries' missing"

    # ---- token entropy ----------------------------------------------------------------------
    ents, masks, segs = [], [], []
    policy_ent: dict[int, np.ndarray] = {}  # per record: entropies of its policy tokens
    plen: list[float | None] = [None] * n  # per record: number of policy tokens
    have_segs = True
    for i in range(n):
        m_raw = rd.get(i, "loss_mask", "seq")
        if m_raw is not None:
            plen[i] = float(np.count_nonzero(np.asarray(m_raw).reshape(-1)))
        e = rd.get(i, "entropies", "seq")
        if e is None:
            continue
        e = np.asarray(e, dtype=np.float64).reshape(-1)
        m = np.ones(e.size) if m_raw is None else np.asarray(m_raw).reshape(-1)
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
        policy_ent[i] = e[m != 0]
        if plen[i] is None:
            plen[i] = float(e.size)
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
    pg: dict[Any, dict[str, float]] = OrderedDict((g, {"n": float(len(idx))}) for g, idx in (groups or {}).items())

    # ---- pass@k ----------------------------------------------------------------------------
    if groups is not None and have_correct:
        for kk in k:
            val, used = mean_pass_at_k([[correct[i] for i in idx] for idx in groups.values()], int(kk))
            out[f"pass@{kk}"] = val
            out[f"pass@{kk}_groups"] = float(used)

    # ---- hidden states ------------------------------------------------------------------------
    hs: dict[int, Any] = {}
    tok: dict[int, np.ndarray] = {}  # policy token ids aligned with hs rows
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
        ids = rd.get(i, "policy_token_ids", "intlist")
        if ids is None:
            resp = rd.get(i, "response_ids", "intlist")
            if resp is not None and m is not None and len(resp) == len(m):
                ids = np.asarray(resp)[np.asarray(m).reshape(-1) != 0]
        if ids is not None:
            ids = np.asarray(ids, dtype=np.int64).reshape(-1)
            if ids.size != hs[i].shape[0]:
                rd.fail(i, "policy_token_ids", f"has {ids.size} ids but the record has {hs[i].shape[0]} policy hidden-state rows")
            tok[i] = ids
        if plen[i] is None:
            plen[i] = float(hs[i].shape[0])
    er_resid_i: dict[int, float] = {}
    er_win_i: dict[int, float] = {}
    er_full_i: dict[int, float] = {}
    if hs:
        idx = list(hs)
        mats = [hs[i] for i in idx]
        out["hs_length"] = float(np.mean([m.shape[0] for m in mats]))
        if full_er:
            st = spectral_stats(mats, method=rank_method)
            for key in ("er", "er_sq", "matrix_entropy", "er_norm"):
                out[key] = _nanmean(st[key])
            er_full_i = dict(zip(idx, st["er"]))
        else:
            skipped["er"] = "full_er=False (er_within_window and the between-sample ER still computed)"
        w = windowed_effective_ranks(mats, er_window, method=rank_method)
        er_win_i = dict(zip(idx, w))
        short, skip = window_counts(mats, er_window)
        out["er_within_window"] = _nanmean(w)
        out["er_within_window_short"] = float(short)
        out["er_within_window_skipped"] = float(skip)
        out["er_window"] = out["er_within_window"]  # deprecated alias (same value)
        if erv:
            v, a = erv_era_batch(mats, stride=erv_stride, max_len=erv_max_len, method=erv_method)
            out["erv"], out["era"] = _nanmean(v), _nanmean(a)
        out["global_er"] = group_effective_rank(mats, method=rank_method)
        resid: dict[int, np.ndarray] | None = None
        if len(tok) == len(hs):
            r = residualize_token_identity(mats, [tok[i] for i in idx])
            resid = dict(zip(idx, r))
            if full_er:  # a whole-response ER: as costly as `er`
                er_resid_i = dict(zip(idx, effective_ranks(r, method=rank_method)))
                out["er_resid"] = _nanmean(list(er_resid_i.values()))
            else:
                skipped["er_resid"] = "full_er=False (group_er_resid still computed)"
        else:
            skipped["er_resid"] = (f"{len(hs) - len(tok)} of {len(hs)} records with hidden states have no "
                                   "'policy_token_ids' (or 'response_ids' + 'loss_mask')")
        if groups is not None:
            gkeys = list(groups)
            gm = [[hs[i] for i in groups[g] if i in hs] for g in gkeys]
            ger = group_effective_ranks(gm)
            aer, apos = aligned_effective_ranks(gm, max_positions=aligned_positions)
            out["group_er"] = _nanmean(ger)
            out["aligned_er"] = _nanmean(aer)
            out["aligned_er_positions"] = float(np.mean(apos))
            for g, a, b, c in zip(gkeys, ger, aer, apos):
                pg[g].update(group_er=float(a), aligned_er=float(b), aligned_er_positions=float(c))
            if resid is not None:
                gr = group_effective_ranks([[resid[i] for i in groups[g] if i in resid] for g in gkeys])
                out["group_er_resid"] = _nanmean(gr)
                for g, a in zip(gkeys, gr):
                    pg[g]["group_er_resid"] = float(a)
    else:
        skipped["er"] = "field 'hidden_states' missing"

    if any(v is not None for v in plen):
        out["response_length"] = float(np.mean([v for v in plen if v is not None]))

    # ---- per-group outcomes and token entropy ------------------------------------------------
    for g, idx in (groups or {}).items():
        row = pg[g]
        if have_correct:
            c = [bool(correct[i]) for i in idx]
            row["accuracy"] = float(np.mean(c))
            for kk in k:
                if len(c) >= int(kk):
                    row[f"pass@{kk}"] = pass_at_k(len(c), int(sum(c)), int(kk))
        rw = [rewards[i] for i in idx if rewards[i] is not None]
        if rw:
            row["reward_mean"] = float(np.mean(rw))
        if have_fe:
            row["format_error_rate"] = float(np.mean([fe[i] > 0 for i in idx]))
        if have_ns:
            row["searches_mean"] = float(np.mean([ns[i] for i in idx]))
        lens = [plen[i] for i in idx if plen[i] is not None]
        if lens:
            row["response_length"] = float(np.mean(lens))
        pe = [policy_ent[i] for i in idx if i in policy_ent]
        if pe:
            allp = np.concatenate(pe)
            row["entropy"] = float(allp.mean()) if allp.size else math.nan
        for name, per_i in (("er_resid", er_resid_i), ("er_within_window", er_win_i), ("er", er_full_i)):
            vals = [per_i[i] for i in idx if i in per_i]
            if vals:
                row[name] = _nanmean(vals)
        hl = [hs[i].shape[0] for i in idx if i in hs]
        if hl:
            row["hs_length"] = float(np.mean(hl))

    # ---- per-group diversity -------------------------------------------------------------------
    if groups is None:
        if per_group:
            out["per_group"] = {}
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

    def add(g, name: str, value: float):
        acc.setdefault(name, []).append(value)
        pg[g][name] = float(value)

    for g, idx in groups.items():
        vset = sorted({s for i in idx if valid[i] for s in valid[i]})
        gs = [sigs[i] for i in idx]
        if all(s is not None for s in gs):
            d = dv.signature_diversity(gs, len(vset) if vset else None)
            add(g, "signature_entropy", d["entropy"]), add(g, "signature_entropy_norm", d["entropy_norm"])
            add(g, "signature_entropy_mm", d["entropy_mm"]), add(g, "distinct_signatures", d["distinct"])
        if have_strategy_field:
            # over matched trajectories only: an unmatched one (strategy null) is no strategy
            d = dv.strategy_diversity([strats[i] for i in idx], vset or None,
                                      [bool(correct[i]) for i in idx] if have_correct else None)
            for key, v in d.items():
                add(g, key, v)
        if all(queries[i] is not None for i in idx):
            qd = dv.query_diversity([q for i in idx for q in queries[i]])
            for key, v in qd.items():
                add(g, key, v)
        if any(multi[i] for i in idx) and have_correct:
            add(g, "answer_diversity", dv.answer_diversity([answers[i] for i in idx], [correct[i] for i in idx]))
    for name in (
        "signature_entropy", "signature_entropy_norm", "signature_entropy_mm", "distinct_signatures",
        *STRATEGY_KEYS, "distinct_1", "distinct_2", "distinct_queries", "answer_diversity",
    ):
        if name in acc:
            out[name] = _nanmean(acc[name])
    for name in ("strategy_entropy", "strategy_entropy_correct"):
        if name in acc:
            out[f"{name}_groups"] = float(np.isfinite(acc[name]).sum())
    if "signature_entropy" not in acc:
        skipped["signature_entropy"] = "field 'signature' missing"
    if not have_strategy_field:
        skipped["strategy_entropy"] = "field 'strategy' missing"
    elif not have_correct:
        skipped["strategy_entropy_correct"] = "some records have neither 'correct' nor 'reward'"
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
            vs = []
            for g, idx in groups.items():
                v = dv.vendi_from_embeddings(emb[idx])
                vs.append(v)
                pg[g]["vendi"] = float(v)
            out["vendi"] = _nanmean(vs)
    else:
        skipped["vendi"] = "disabled"
    if per_group:
        out["per_group"] = {g: dict(row) for g, row in pg.items()}
    return out
