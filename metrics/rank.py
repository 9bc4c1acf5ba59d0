"""Hidden-state effective rank (Roy & Vetterli 2007) and the VERL prefix-stride variants.

Conventions (see docs/contracts.md, "metrics", and shared notes section 3):

* One matrix per response: ``H`` is ``T x d``, one row per *policy* token (prompt, retrieved
  documents and tool tokens removed; :func:`policy_rows` applies a loss mask).
* Rows are centred over tokens before the spectrum is taken (``center=True``).
* ``ER = exp(-sum p_k log p_k)`` with ``p = sigma / sum(sigma)`` over the singular values
  kept; ``0 log 0 = 0``. ``ER_sq`` is the "matrix entropy" form with ``q = sigma^2 / sum
  sigma^2`` (VERL's "Response Entropy 1" is ``log ER_sq``; Vendi uses the same form).
* Tiny singular values are dropped: ``sigma <= rtol * sigma_max`` with
  ``rtol = max(T, d) * eps(float32)`` (numpy's ``matrix_rank`` tolerance at fp32, the
  precision hidden states come in). A matrix with no singular value left (T = 1, or all rows
  equal) has ER = 0.0, consistent with rank 0. An empty matrix (T = 0) or one with
  non-finite entries gives NaN (so one bad response never kills a training step).
* Collapse floor: with ``center=True`` a matrix whose rows are all exactly equal (identical
  samples: forced collapse, copies of one response) has ER = 0.0, not the 1.0 that the
  rounding residue of centring (rank one, at 1e-16 relative) would give. So every ER-type
  between-sample metric (group ER, aligned ER, residualised group ER) has floor 0.
* Three spectral routes:
  ``method="gram"`` (default): eigenvalues of the smaller Gram matrix in float64
  (``sigma = sqrt(lambda)``); faster than SVD on CPU and more precise than fp32 SVD.
  ``method="svd"``: ``torch.linalg.svdvals`` in float32 (VERL's per-response route);
  agrees with "gram" to ~1e-5 relative.
  ``method="gram32"``: float32 Gram eigenvalues (VERL's ERV/ERA route), about 2x faster
  than "gram"; its noise floor is sqrt(eps32)-relative, so singular values below
  ``sqrt(max(T, d) * eps32) * sigma_max`` are dropped instead. Agrees with "gram" to
  ~1e-3 relative on full-rank data; use it for the expensive ERV/ERA on big batches.
* Everything is batched: matrices of different shapes are bucketed by Gram size and
  zero-padded (zero rows of a centred matrix add only zero singular values, which are
  dropped), so one LAPACK call handles a bucket.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

__all__ = [
    "policy_rows",
    "singular_values",
    "er_from_singular_values",
    "er_sq_from_singular_values",
    "effective_rank",
    "effective_ranks",
    "spectral_stats",
    "normalized_effective_ranks",
    "windowed_effective_ranks",
    "window_counts",
    "erv_era",
    "erv_era_batch",
    "group_effective_rank",
    "group_effective_ranks",
    "aligned_effective_rank",
    "aligned_effective_ranks",
    "residualize_token_identity",
    "mean_pool",
]

_EPS32 = float(np.finfo(np.float32).eps)
_BUCKET = 16  # Gram sizes are rounded up to a multiple of this for batching


def _as_tensor(h) -> torch.Tensor:
    """2-D float tensor view of an array-like (numpy, torch, nested list)."""
    if isinstance(h, torch.Tensor):
        t = h.detach()
        if t.device.type != "cpu":
            t = t.cpu()
    else:
        t = torch.as_tensor(np.asarray(h, dtype=np.float32))
    if t.ndim != 2:
        raise ValueError(f"hidden states must be a 2-D (T x d) matrix, got shape {tuple(t.shape)}")
    if not torch.is_floating_point(t):
        t = t.float()
    return t


def policy_rows(hidden, loss_mask=None) -> torch.Tensor:
    """Rows of ``hidden`` (T x d) whose ``loss_mask`` entry is nonzero (all rows if None)."""
    t = _as_tensor(hidden)
    if loss_mask is None:
        return t
    m = torch.as_tensor(np.asarray(loss_mask)).reshape(-1).bool()
    if m.numel() != t.shape[0]:
        raise ValueError(f"loss_mask has {m.numel()} entries but hidden states have {t.shape[0]} rows")
    return t[m]


def _center(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    t = t.to(dtype)
    return t - t.mean(dim=0, keepdim=True)


def _spectra(
    mats: Sequence[torch.Tensor], center: bool, method: str, check_finite: bool = True
) -> list[np.ndarray | None]:
    """Singular values (descending, tiny ones dropped) of each matrix; None where undefined."""
    if method not in ("gram", "gram32", "svd"):
        raise ValueError(f"method must be 'gram', 'gram32' or 'svd', got {method!r}")
    gram = method != "svd"
    dtype = torch.float64 if method == "gram" else torch.float32
    out: list[np.ndarray | None] = [None] * len(mats)
    buckets: dict[tuple[int, int], list[int]] = {}
    prepared: dict[int, torch.Tensor] = {}
    for i, t in enumerate(mats):
        T, d = t.shape
        # a float64 sum is finite iff every entry is (no overflow from fp32/bf16 inputs)
        if T == 0 or d == 0 or (check_finite and not bool(torch.isfinite(t.sum(dtype=torch.float64)))):
            continue
        if center and bool((t == t[:1]).all()):
            out[i] = np.zeros(0)  # identical rows: the collapse floor, ER 0 (module doc)
            continue
        x = _center(t, dtype) if center else t.to(dtype)
        prepared[i] = x
        if gram:
            m = min(T, d)
            key = (-(-m // _BUCKET) * _BUCKET, 0)
        else:
            # svd: transpose so rows >= cols is not required; bucket on (rows, d)
            key = (-(-T // _BUCKET) * _BUCKET, d)
        buckets.setdefault(key, []).append(i)
    for key, idx in buckets.items():
        if gram:
            size = key[0]
            g = torch.zeros(len(idx), size, size, dtype=dtype)
            for j, i in enumerate(idx):
                x = prepared[i]
                gi = x @ x.T if x.shape[0] <= x.shape[1] else x.T @ x
                n = gi.shape[0]
                g[j, :n, :n] = gi
            lam = torch.linalg.eigvalsh(g).flip(-1).clamp_min(0.0)
            sig_all = lam.to(torch.float64).sqrt().numpy()
        else:
            rows, d = key
            x = torch.zeros(len(idx), rows, d, dtype=torch.float32)
            for j, i in enumerate(idx):
                x[j, : prepared[i].shape[0]] = prepared[i]
            sig_all = torch.linalg.svdvals(x).to(torch.float64).numpy()
        for j, i in enumerate(idx):
            T, d = mats[i].shape
            s = sig_all[j]
            smax = s[0] if s.size else 0.0
            if not smax > 0.0:
                out[i] = np.zeros(0)
                continue
            tol = (math.sqrt(max(T, d) * _EPS32) if method == "gram32" else max(T, d) * _EPS32) * smax
            out[i] = s[s > tol]
    return out


def er_from_singular_values(s: np.ndarray) -> float:
    """exp(entropy of sigma / sum sigma); 0.0 for an empty spectrum (0 log 0 = 0)."""
    s = np.asarray(s, dtype=np.float64)
    s = s[s > 0]
    if s.size == 0:
        return 0.0
    p = s / s.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


def er_sq_from_singular_values(s: np.ndarray) -> float:
    """exp(entropy of sigma^2 / sum sigma^2) (matrix-entropy / Vendi form); 0.0 if empty."""
    s = np.asarray(s, dtype=np.float64)
    s = s[s > 0]
    if s.size == 0:
        return 0.0
    return er_from_singular_values(s * s)


def singular_values(h, *, center: bool = True, method: str = "gram") -> np.ndarray:
    """Kept singular values (descending) of one ``T x d`` matrix; NaN-filled if undefined."""
    s = _spectra([_as_tensor(h)], center, method)[0]
    return np.array([np.nan]) if s is None else s


def effective_rank(h, *, center: bool = True, method: str = "gram") -> float:
    """Effective rank of one ``T x d`` matrix (rows = tokens)."""
    return float(effective_ranks([h], center=center, method=method)[0])


def effective_ranks(mats: Sequence, *, center: bool = True, method: str = "gram") -> np.ndarray:
    """Effective rank of each matrix in ``mats`` (list of ``T_i x d`` arrays), batched."""
    spectra = _spectra([_as_tensor(m) for m in mats], center, method)
    return np.array([np.nan if s is None else er_from_singular_values(s) for s in spectra])


def spectral_stats(mats: Sequence, *, center: bool = True, method: str = "gram") -> dict[str, np.ndarray]:
    """Per matrix: ``er``, ``er_sq`` (matrix-entropy form), ``matrix_entropy`` (log er_sq,
    VERL's "Response Entropy 1"), ``rank`` (singular values kept), ``er_norm`` (ER / min(T, d))
    and ``length`` (T). One spectral pass for all of them."""
    ts = [_as_tensor(m) for m in mats]
    spectra = _spectra(ts, center, method)
    er, er_sq, rank = [], [], []
    for s in spectra:
        if s is None:
            er.append(np.nan), er_sq.append(np.nan), rank.append(np.nan)
        else:
            er.append(er_from_singular_values(s)), er_sq.append(er_sq_from_singular_values(s))
            rank.append(float(s.size))
    er_a, er_sq_a = np.array(er), np.array(er_sq)
    denom = np.array([min(t.shape) if min(t.shape) > 0 else np.nan for t in ts], dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        msq = np.where(er_sq_a > 0, np.log(np.where(er_sq_a > 0, er_sq_a, 1.0)), 0.0)
    msq = np.where(np.isnan(er_sq_a), np.nan, msq)
    return {
        "er": er_a,
        "er_sq": er_sq_a,
        "matrix_entropy": msq,
        "rank": np.array(rank),
        "er_norm": er_a / denom,
        "length": np.array([t.shape[0] for t in ts], dtype=np.float64),
    }


def normalized_effective_ranks(mats: Sequence, *, center: bool = True, method: str = "gram") -> np.ndarray:
    """ER / min(T, d) per matrix: a length-controlled ER in [0, 1]."""
    return spectral_stats(mats, center=center, method=method)["er_norm"]


def windowed_effective_ranks(
    mats: Sequence, window: int, *, where: str = "first", short: str = "use", center: bool = True,
    method: str = "gram",
) -> np.ndarray:
    """Within-response ER over a fixed window of ``window`` policy tokens per response
    (``where="first"``: rows ``[0, W)``; ``"last"``: the last W rows).

    A response shorter than the window (``2 <= T < W``) uses all its T rows with
    ``short="use"`` (default; count them with :func:`window_counts`), or gets NaN with
    ``short="skip"`` (every number then compares matrices of one shape). ``T < 2`` is always
    NaN (one row has no spread to measure). This ER is within one response: it cannot see
    between-sample collapse (copies of one response keep it unchanged)."""
    if window < 2:
        raise ValueError(f"window must be >= 2 tokens, got {window}")
    if where not in ("first", "last"):
        raise ValueError(f"where must be 'first' or 'last', got {where!r}")
    if short not in ("use", "skip"):
        raise ValueError(f"short must be 'use' or 'skip', got {short!r}")
    ts = [_as_tensor(m) for m in mats]
    lo = 2 if short == "use" else window
    keep = [i for i, t in enumerate(ts) if t.shape[0] >= lo]
    sub = [ts[i][:window] if where == "first" else ts[i][-window:] for i in keep]
    out = np.full(len(ts), np.nan)
    if sub:
        out[keep] = effective_ranks(sub, center=center, method=method)
    return out


def window_counts(mats: Sequence, window: int) -> tuple[int, int]:
    """(short, skipped) of :func:`windowed_effective_ranks` with ``short="use"``: responses
    with ``2 <= T < window`` (measured on their T rows) and with ``T < 2`` (NaN)."""
    lengths = [len(m) for m in mats]
    return sum(2 <= n < window for n in lengths), sum(n < 2 for n in lengths)


def _prefix_lengths(T: int, stride: int) -> list[int]:
    # VERL: for t in range(stride, T, stride): window H[: t + 1]
    return [t + 1 for t in range(stride, T, stride)]


def _erv_era_from_series(er: Sequence[float]) -> tuple[float, float]:
    """ERV/ERA from the prefix ER series ER_1..ER_K (VERL cumulative-mean deltas)."""
    diffs, diffs2 = [], []
    prev = None
    for k in range(1, len(er)):
        d = er[k] - float(np.mean(er[:k]))
        diffs.append(d)
        if prev is not None:
            diffs2.append(d - prev)
        prev = d
    erv = float(np.mean(diffs)) if diffs else 0.0
    era = float(np.mean(diffs2)) if diffs2 else 0.0
    return erv, era


def erv_era_batch(
    mats: Sequence, *, stride: int = 20, max_len: int = 512, method: str = "gram"
) -> tuple[np.ndarray, np.ndarray]:
    """ERV and ERA per response, exactly as hf618/VERL ``calculate_diffs_for_single_sample``:

    truncate to the last ``max_len`` rows; ER_k = ER(centred H[: k*stride + 1]) for
    k*stride < T (k = 1, 2, ...); Delta_k = ER_k - mean_{j<k} ER_j for k >= 2;
    Delta2_k = Delta_k - Delta_{k-1} for k >= 3; ERV = mean Delta, ERA = mean Delta2, each 0.0
    when empty (so 0.0 when T < 2*stride + 1). Non-finite input gives NaN.
    All prefixes of all responses go through one batched spectral pass.
    """
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    ts = [_as_tensor(m) for m in mats]
    prefixes: list[torch.Tensor] = []
    owner: list[int] = []
    bad = set()
    for i, t in enumerate(ts):
        if t.shape[0] > max_len:
            t = t[-max_len:]
        if not bool(torch.isfinite(t).all()):
            bad.add(i)
            continue
        for n in _prefix_lengths(t.shape[0], stride):
            prefixes.append(t[:n])
            owner.append(i)
    # finiteness was checked per response above; skip the per-prefix check
    spectra = _spectra(prefixes, True, method, check_finite=False)
    ers = [er_from_singular_values(sp) for sp in spectra]
    series: list[list[float]] = [[] for _ in ts]
    for i, v in zip(owner, ers):
        series[i].append(float(v))
    erv = np.zeros(len(ts))
    era = np.zeros(len(ts))
    for i in range(len(ts)):
        if i in bad:
            erv[i] = era[i] = np.nan
        else:
            erv[i], era[i] = _erv_era_from_series(series[i])
    return erv, era


def erv_era(h, *, stride: int = 20, max_len: int = 512, method: str = "gram") -> tuple[float, float]:
    """(ERV, ERA) of one response; see :func:`erv_era_batch`."""
    erv, era = erv_era_batch([h], stride=stride, max_len=max_len, method=method)
    return float(erv[0]), float(era[0])


def mean_pool(mats: Sequence) -> np.ndarray:
    """Stack the row-mean of each ``T_i x d`` matrix into an ``n x d`` array (empty ones skipped)."""
    rows = [_as_tensor(m).to(torch.float64).mean(dim=0).numpy() for m in mats if len(m) > 0]
    if not rows:
        return np.zeros((0, 0))
    return np.stack(rows)


def group_effective_rank(mats: Sequence, *, method: str = "gram") -> float:
    """Between-response spread: ER of the centred ``n x d`` matrix of mean-pooled responses
    (one group of samples of a question, or a whole batch for VERL's "global" metric).
    NaN for fewer than 2 non-empty responses."""
    pooled = mean_pool(mats)
    if pooled.shape[0] < 2:
        return math.nan
    return effective_rank(pooled, method=method)


def _stacked_er(x: torch.Tensor, valid: torch.Tensor) -> np.ndarray:
    """ER of each of B row sets at once: ``x`` is ``B x n x d`` (float64; rows outside a set
    must be zero; modified in place), ``valid`` ``B x n`` (bool) marks the rows of each set.
    Same conventions as :func:`effective_rank` with ``method="gram"`` (centred over the valid
    rows; tolerance ``max(T, d) * eps32 * sigma_max`` with T the valid-row count; all valid
    rows equal -> 0.0); NaN for sets with no valid row or non-finite entries. One batched
    eigendecomposition: the many small matrices of aligned-position and group ER cost one
    LAPACK call instead of one Python loop each."""
    B, n, d = x.shape
    out = np.full(B, np.nan)
    if B == 0 or n == 0 or d == 0:
        return out
    finite = torch.isfinite(x).flatten(1).all(1)
    if not bool(finite.all()):
        x[~finite] = 0.0  # keep NaN out of the batched LAPACK call
    w = valid.to(x.dtype).unsqueeze(-1)
    cnt = w.sum(1)  # B x 1
    first = x[torch.arange(B), valid.to(torch.int64).argmax(1)].unsqueeze(1)  # first valid row
    equal = ((x == first) | ~valid.unsqueeze(-1)).flatten(1).all(1)
    x -= x.sum(1, keepdim=True) / cnt.clamp_min(1).unsqueeze(1)
    xc = x.mul_(w)
    g = xc @ xc.transpose(1, 2) if n <= d else xc.transpose(1, 2) @ xc
    lam = torch.linalg.eigvalsh(g).flip(-1).clamp_min(0.0)
    sig = lam.sqrt().numpy()  # B x m, descending
    rows = cnt.squeeze(1).numpy()
    smax = sig[:, 0]
    tol = np.maximum(rows, d) * _EPS32 * smax
    keep = (sig > tol[:, None]) & (smax[:, None] > 0.0)
    s = np.where(keep, sig, 0.0)
    tot = s.sum(1)
    p = s / np.where(tot > 0, tot, 1.0)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0).sum(1)
    er = np.where(tot > 0, np.exp(h), 0.0)  # no singular value left: 0.0 (module doc)
    er[equal.numpy()] = 0.0  # identical rows: the collapse floor
    ok = (rows > 0) & finite.numpy()
    out[ok] = er[ok]
    return out


def group_effective_ranks(groups: Sequence[Sequence]) -> np.ndarray:
    """:func:`group_effective_rank` of each group (a list of ``T_i x d`` response matrices),
    batched ("gram" route); NaN for groups with fewer than 2 non-empty responses."""
    pooled = [mean_pool(g) for g in groups]
    out = np.full(len(groups), np.nan)
    idx = [i for i, p in enumerate(pooled) if p.shape[0] >= 2]
    if not idx:
        return out
    d = {pooled[i].shape[1] for i in idx}
    if len(d) > 1:
        raise ValueError(f"responses have different widths d: {sorted(d)}")
    n = max(pooled[i].shape[0] for i in idx)
    x = torch.zeros(len(idx), n, d.pop(), dtype=torch.float64)
    valid = torch.zeros(len(idx), n, dtype=torch.bool)
    for j, i in enumerate(idx):
        x[j, : pooled[i].shape[0]] = torch.from_numpy(pooled[i])
        valid[j, : pooled[i].shape[0]] = True
    out[idx] = _stacked_er(x, valid)
    return out


def aligned_effective_ranks(
    groups: Sequence[Sequence], *, max_positions: int = 64, min_samples: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """Between-sample ER at aligned policy-token positions, per group.

    For each group (the n samples of one question, each a ``T_i x d`` matrix of policy-token
    states) and each position ``t < max_positions``: the ER of the centred matrix of the
    samples' states at position t, over the samples with ``T_i > t`` (at least
    ``min_samples`` of them, else the position is not used). Returns (mean over the used
    positions, number of positions used) per group; the mean is NaN when no position is used.
    Position t is the t-th policy token of the response (across turns), not a semantic
    alignment. Copies of one response give 0 at every position (the collapse floor)."""
    if max_positions < 1:
        raise ValueError(f"max_positions must be >= 1, got {max_positions}")
    if min_samples < 2:
        raise ValueError(f"min_samples must be >= 2, got {min_samples}")
    means = np.full(len(groups), np.nan)
    used = np.zeros(len(groups), dtype=np.int64)
    blocks, valids, owner = [], [], []
    for gi, g in enumerate(groups):
        ts = [_as_tensor(m) for m in g]
        ts = [t for t in ts if t.shape[0] > 0]
        if len(ts) < min_samples:
            continue
        P = min(max_positions, sorted((t.shape[0] for t in ts), reverse=True)[min_samples - 1])
        d = ts[0].shape[1]
        x = torch.zeros(P, len(ts), d, dtype=torch.float64)
        v = torch.zeros(P, len(ts), dtype=torch.bool)
        for j, t in enumerate(ts):
            if t.shape[1] != d:
                raise ValueError(f"responses of one group have different widths d: {d} and {t.shape[1]}")
            k = min(P, t.shape[0])
            x[:k, j] = t[:k].to(torch.float64)
            v[:k, j] = True
        blocks.append(x), valids.append(v), owner.append(gi)
    if not blocks:
        return means, used
    n = max(b.shape[1] for b in blocks)
    d = {b.shape[2] for b in blocks}
    if len(d) > 1:
        raise ValueError(f"responses have different widths d: {sorted(d)}")
    x = torch.cat([torch.nn.functional.pad(b, (0, 0, 0, n - b.shape[1])) for b in blocks])
    v = torch.cat([torch.nn.functional.pad(b, (0, n - b.shape[1])) for b in valids])
    er = _stacked_er(x, v)
    start = 0
    for b, gi in zip(blocks, owner):
        e = er[start:start + b.shape[0]]
        start += b.shape[0]
        e = e[np.isfinite(e)]
        used[gi] = e.size
        means[gi] = float(e.mean()) if e.size else math.nan
    return means, used


def aligned_effective_rank(mats: Sequence, *, max_positions: int = 64, min_samples: int = 2) -> tuple[float, int]:
    """(mean aligned-position ER, positions used) of one group; see :func:`aligned_effective_ranks`."""
    m, u = aligned_effective_ranks([mats], max_positions=max_positions, min_samples=min_samples)
    return float(m[0]), int(u[0])


def residualize_token_identity(mats: Sequence, token_ids: Sequence) -> list[np.ndarray]:
    """Hidden states with the token-identity component removed.

    ``mats[i]`` is ``T_i x d`` (one row per policy token) and ``token_ids[i]`` its T_i token
    ids, ``token_ids[i][j]`` the token sampled from state ``mats[i][j]``. Every row has the
    mean state of its token id over ALL rows given (the whole evaluation batch) subtracted, so
    what is left is how the model's state varies beyond which token it emits. A token id that
    occurs once in the batch leaves a zero row. Computed in float64; returns float32 arrays.
    Identical inputs give identical residuals (copies stay copies: floors are kept)."""
    if len(mats) != len(token_ids):
        raise ValueError(f"{len(mats)} hidden-state matrices but {len(token_ids)} token-id lists")
    ts = [_as_tensor(m).to(torch.float64) for m in mats]
    ids = []
    for i, (t, tok) in enumerate(zip(ts, token_ids)):
        a = torch.as_tensor(np.asarray(tok, dtype=np.int64).reshape(-1))
        if a.numel() != t.shape[0]:
            raise ValueError(f"response {i}: {t.shape[0]} hidden-state rows but {a.numel()} token ids")
        ids.append(a)
    if not ts:
        return []
    widths = {t.shape[1] for t in ts}
    if len(widths) > 1:
        raise ValueError(f"responses have different widths d: {sorted(widths)}")
    x = torch.cat(ts)
    if x.shape[0] == 0:
        return [t.to(torch.float32).numpy() for t in ts]
    _, inv = torch.unique(torch.cat(ids), return_inverse=True)
    k = int(inv.max()) + 1
    sums = torch.zeros(k, x.shape[1], dtype=torch.float64).index_add_(0, inv, x)
    counts = torch.bincount(inv, minlength=k).to(torch.float64).unsqueeze(1)
    r = (x - (sums / counts)[inv]).to(torch.float32)
    out, s = [], 0
    for t in ts:
        out.append(r[s:s + t.shape[0]].numpy())
        s += t.shape[0]
    return out
