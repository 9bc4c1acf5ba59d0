"""The experiment's report: ``report.md``, ``report.json`` and PNG figures.

Input format (written by :mod:`searchgym.experiment`, documented in docs/contracts.md,
"experiment"): a run directory holding ``arms/<arm_id>/`` folders, each with

- ``arm.json``: ``{"arm_id", "warm_start", "objective", "seed", "status": "ok"|"failed",
  "error": str|None, "wall_s": float}``;
- ``metrics.jsonl``: one record per RL step (:data:`STEP_KEYS`); ``step`` counts from 0
  (the first update), and the record describes that step's rollouts;
- ``eval.jsonl``: one record per fixed evaluation (:data:`EVAL_KEYS`); the first one is
  taken at ``step`` 0, before any RL update (the "RL start").

Every number in the report is computed here from those records; nothing is typed in by
hand. ``report.json`` holds every number that ``report.md`` shows (non-finite values are
written as ``null`` and shown as "n/a").
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from searchgym.retrieval.fileio import atomic_path, atomic_write_json, atomic_write_text, read_jsonl

#: Keys of one per-step training record (``metrics.jsonl``). ``step`` and
#: ``token_entropy`` are required; the rest may be missing (treated as absent).
STEP_KEYS = (
    "step",  # RL step index, 0-based
    "reward",  # mean episode reward of the step's rollouts (= training accuracy for EM)
    "token_entropy",  # mean entropy over policy tokens (nats)
    "er_lc",  # mean per-response length-controlled effective rank (fixed window)
    "er_raw",  # mean per-response effective rank over all policy tokens
    "group_er",  # mean over question groups of the ER of mean-pooled responses
    "strategy_entropy",  # mean over groups of normalised signature entropy
    "distinct_strategies",  # mean over groups of the number of distinct signatures
    "response_length",  # mean number of policy tokens per episode
    "step_time_s",  # wall time of the whole step, metrics included
    "metrics_time_s",  # wall time spent in the metric hook
)

#: Keys of one fixed-evaluation record (``eval.jsonl``).
EVAL_KEYS = (
    "step",
    "accuracy",  # mean correctness over all held-out samples
    "pass_at_1",
    "pass_at_k",
    "k",
    "token_entropy",
    "er_lc",
    "er_raw",
    "group_er",
    "strategy_entropy",
    "distinct_strategies",
    "vendi",
    "response_length",
    "format_error_rate",
    "searches_per_episode",
)

#: The collapse ratios of the table: value at the last evaluation / value at step 0.
RATIO_KEYS = ("token_entropy", "er_lc", "group_er", "strategy_entropy", "distinct_strategies", "vendi")

_LABELS = {
    "token_entropy": "token entropy (nats)",
    "er_lc": "effective rank (length-controlled)",
    "er_raw": "effective rank (raw)",
    "group_er": "group ER",
    "strategy_entropy": "strategy entropy (normalised)",
    "distinct_strategies": "distinct strategies",
    "vendi": "Vendi score",
}

# One colour per objective (tab10 order, fixed so figures of different runs agree),
# one line style per warm start.
_OBJECTIVE_ORDER = (
    "grpo", "entropy_bonus", "clip_higher", "clip_cov", "kl_cov", "forking_tokens", "er_shaped",
)
_WARM_STYLES = {"diverse": "-", "narrow": "--"}
_EXTRA_STYLES = (":", "-.")


@dataclass
class ArmData:
    """One RL arm's records, as read from ``arms/<arm_id>/``."""

    arm_id: str
    warm_start: str
    objective: str
    seed: int
    status: str = "ok"
    error: str | None = None
    wall_s: float | None = None
    steps: list[dict] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)

    @property
    def group(self) -> tuple[str, str]:
        """Arms that differ only by seed share a group."""
        return (self.warm_start, self.objective)


def load_arms(run_dir: str | Path) -> list[ArmData]:
    """Read every ``arms/*/arm.json`` (+ jsonl records) under ``run_dir``."""
    arms_dir = Path(run_dir) / "arms"
    if not arms_dir.is_dir():
        raise FileNotFoundError(f"{arms_dir}: no arms folder (run `searchgym run` first)")
    arms = []
    for d in sorted(p for p in arms_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        meta_path = d / "arm.json"
        if not meta_path.exists():
            continue
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{meta_path}: not valid JSON ({exc.msg})") from None
        missing = [k for k in ("arm_id", "warm_start", "objective", "seed") if k not in meta]
        if missing:
            raise ValueError(f"{meta_path}: missing keys {missing}")
        arm = ArmData(
            arm_id=meta["arm_id"], warm_start=meta["warm_start"], objective=meta["objective"],
            seed=int(meta["seed"]), status=meta.get("status", "ok"), error=meta.get("error"),
            wall_s=meta.get("wall_s"),
        )
        for name, attr in (("metrics.jsonl", "steps"), ("eval.jsonl", "evals")):
            path = d / name
            if path.exists():
                recs = read_jsonl(path)
                for i, r in enumerate(recs):
                    if "step" not in r:
                        raise ValueError(f"{path}:{i + 1}: record has no 'step'")
                setattr(arm, attr, sorted(recs, key=lambda r: r["step"]))
        arms.append(arm)
    return arms


# ----------------------------------------------------------------------------- statistics


def _finite(x: Any) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def mean_ci(values: Iterable[float | None]) -> dict:
    """Mean and 95% t-interval over seeds (``searchgym.metrics.stats.mean_ci``) as a dict;
    the interval is null with fewer than 2 values."""
    from searchgym.metrics.stats import mean_ci as _mean_ci

    v = [x for x in (_finite(x) for x in values) if x is not None]
    m, lo, hi = _mean_ci(v) if v else (None, None, None)
    return {"mean": _finite(m), "ci_low": _finite(lo), "ci_high": _finite(hi), "n": len(v)}


def spearman_ci(x: Sequence[float], y: Sequence[float]) -> dict:
    """Spearman's rho with a Fisher-z 95% CI (``searchgym.metrics.stats.spearman_ci``) as a
    dict; rho is null with fewer than 4 finite pairs or a constant series."""
    from searchgym.metrics.stats import spearman_ci as _spearman

    pairs = [(a, b) for a, b in zip(x, y) if _finite(a) is not None and _finite(b) is not None]
    out: dict = {"rho": None, "ci_low": None, "ci_high": None, "p_value": None, "n": len(pairs)}
    if len(pairs) < 4:
        return out
    a, b = np.array(pairs, dtype=float).T
    res = _spearman(a, b)
    if _finite(res.rho) is None or _finite(res.lo) is None:
        return out
    out.update(rho=res.rho, ci_low=res.lo, ci_high=res.hi, p_value=_finite(res.p))
    return out


def fit_law(entropy: Sequence[float], reward: Sequence[float]) -> dict:
    """Fit R = -a*exp(H) + b over a run's steps (``searchgym.metrics.fit_entropy_law``):
    a, b, R^2 and the predicted ceiling -a + b (null when the fit is undefined)."""
    from searchgym.metrics.stats import fit_entropy_law

    h = np.array([_finite(v) if _finite(v) is not None else np.nan for v in entropy], dtype=float)
    r = np.array([_finite(v) if _finite(v) is not None else np.nan for v in reward], dtype=float)
    fit = fit_entropy_law(h, r)
    return {"a": _finite(fit.a), "b": _finite(fit.b), "r2": _finite(fit.r2), "ceiling": _finite(fit.ceiling),
            "n": fit.n, "note": fit.reason or None}


def _ratio(first: Any, last: Any) -> float | None:
    f, l = _finite(first), _finite(last)
    if f is None or l is None or f == 0:
        return None
    return l / f


def _series(records: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    pts = [(r["step"], _finite(r.get(key))) for r in records]
    pts = [(s, v) for s, v in pts if v is not None]
    if not pts:
        return np.zeros(0), np.zeros(0)
    s, v = np.array(pts, dtype=float).T
    return s, v


def _normalised(records: list[dict], key: str) -> dict[int, float]:
    """``key`` per step divided by its value at the first step that has it."""
    s, v = _series(records, key)
    if v.size == 0 or v[0] == 0:
        return {}
    return {int(a): float(b / v[0]) for a, b in zip(s, v)}


# ----------------------------------------------------------------------------- analysis


def _group_label(group: tuple[str, str]) -> str:
    return f"{group[1]} / {group[0]}"


def _seed_mean_series(arms: list[ArmData], key: str, source: str = "steps") -> tuple[np.ndarray, np.ndarray]:
    """Mean over seeds at the steps every seed logged."""
    per = []
    for arm in arms:
        s, v = _series(getattr(arm, source), key)
        per.append(dict(zip(s.tolist(), v.tolist())))
    if not per:
        return np.zeros(0), np.zeros(0)
    common = sorted(set.intersection(*(set(p) for p in per)))
    return np.array(common), np.array([np.mean([p[c] for p in per]) for c in common])


def analyse(arms: list[ArmData], meta: dict | None = None, best_margin: float = 0.02) -> dict:
    """Every number of the report, as a JSON-ready dict."""
    meta = dict(meta or {})
    ok = [a for a in arms if a.status == "ok" and a.evals]
    failed = [a for a in arms if a not in ok]
    groups: dict[tuple[str, str], list[ArmData]] = {}
    for a in ok:
        groups.setdefault(a.group, []).append(a)

    # -- per-arm-group table: final outcome and collapse ratios, mean and CI over seeds
    table = []
    for g, members in sorted(groups.items(), key=lambda kv: (_obj_rank(kv[0][1]), kv[0][0])):
        row: dict = {"warm_start": g[0], "objective": g[1], "seeds": sorted(a.seed for a in members)}
        last = [a.evals[-1] for a in members]
        first = [a.evals[0] for a in members]
        row["final_step"] = int(max(r["step"] for r in last))
        row["k"] = next((int(r["k"]) for r in last if _finite(r.get("k")) is not None), None)
        for key in ("accuracy", "pass_at_1", "pass_at_k", "strategy_entropy", "token_entropy", "er_lc"):
            row[f"final_{key}"] = mean_ci(r.get(key) for r in last)
        row["start_accuracy"] = mean_ci(r.get("accuracy") for r in first)
        row["ratios"] = {k: mean_ci(_ratio(f.get(k), l.get(k)) for f, l in zip(first, last)) for k in RATIO_KEYS}
        row["raw_er_ratio"] = mean_ci(_ratio(f.get("er_raw"), l.get("er_raw")) for f, l in zip(first, last))
        row["length_ratio"] = mean_ci(
            _ratio(f.get("response_length"), l.get("response_length")) for f, l in zip(first, last)
        )
        # training-step token entropy: last 10% of steps over the first 10% (less noisy
        # than two single steps); this is the "did entropy visibly fall" number
        row["train_entropy_ratio"] = mean_ci(_train_ratio(a.steps, "token_entropy") for a in members)
        hs = [r.get("token_entropy") for a in members for r in a.steps]
        rs = [r.get("reward") for a in members for r in a.steps]
        row["law"] = fit_law(hs, rs)
        row["wall_s"] = mean_ci(a.wall_s for a in members)
        share = [
            _share(a.steps) for a in members
        ]
        row["metrics_share"] = mean_ci(share)
        table.append(row)

    findings = _findings(ok, table, best_margin)
    return _clean({
        "meta": meta,
        "arms": [
            {"arm_id": a.arm_id, "warm_start": a.warm_start, "objective": a.objective, "seed": a.seed,
             "status": a.status if a in ok else ("failed" if a.status == "failed" else "no_eval"),
             "error": a.error, "wall_s": a.wall_s, "steps": len(a.steps), "evals": len(a.evals)}
            for a in arms
        ],
        "failed_arms": [{"arm_id": a.arm_id, "error": a.error or "no evaluation records"} for a in failed],
        "table": table,
        "findings": findings,
    })


def _obj_rank(obj: str) -> int:
    return _OBJECTIVE_ORDER.index(obj) if obj in _OBJECTIVE_ORDER else len(_OBJECTIVE_ORDER)


def _train_ratio(steps: list[dict], key: str) -> float | None:
    _, v = _series(steps, key)
    if v.size < 2:
        return None
    w = max(1, v.size // 10)
    return _ratio(v[:w].mean(), v[-w:].mean())


def _share(steps: list[dict]) -> float | None:
    st = sum(_finite(r.get("step_time_s")) or 0.0 for r in steps)
    mt = sum(_finite(r.get("metrics_time_s")) or 0.0 for r in steps)
    return mt / st if st > 0 else None


def _verdict(c: dict, what: str) -> str:
    if c["rho"] is None:
        return f"{what}: not enough varying data (n={c['n']}) to estimate a correlation."
    lo, hi = c["ci_low"], c["ci_high"]
    if lo <= 0 <= hi:
        return (f"{what}: no effect detected (Spearman rho = {c['rho']:.2f}, 95% CI "
                f"[{lo:.2f}, {hi:.2f}] includes 0, n = {c['n']}).")
    direction = "move together" if c["rho"] > 0 else "move in opposite directions"
    return (f"{what}: they {direction} (Spearman rho = {c['rho']:.2f}, 95% CI [{lo:.2f}, {hi:.2f}], "
            f"n = {c['n']}).")


def _paired_ratios(arms: list[ArmData], kx: str, ky: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for a in arms:
        nx, ny = _normalised(a.steps, kx), _normalised(a.steps, ky)
        for s in sorted(set(nx) & set(ny)):
            xs.append(nx[s])
            ys.append(ny[s])
    return xs, ys


def _findings(ok: list[ArmData], table: list[dict], margin: float) -> dict:
    f: dict = {}
    # correlations over steps, pooled across arms, on series normalised to each arm's RL
    # start (so arms with different absolute levels are comparable)
    for ky, name in (("er_lc", "token_entropy_vs_er_lc"), ("strategy_entropy", "token_entropy_vs_strategy_entropy"),
                     ("er_raw", "token_entropy_vs_er_raw")):
        xs, ys = _paired_ratios(ok, "token_entropy", ky)
        c = spearman_ci(xs, ys)
        c["per_arm"] = {a.arm_id: spearman_ci(*_paired_ratios([a], "token_entropy", ky))["rho"] for a in ok}
        f[name] = c
    f["token_entropy_vs_er_lc"]["text"] = _verdict(f["token_entropy_vs_er_lc"], "Token entropy vs length-controlled ER over steps")
    f["token_entropy_vs_strategy_entropy"]["text"] = _verdict(
        f["token_entropy_vs_strategy_entropy"], "Token entropy vs strategy entropy over steps")

    # grpo collapse check
    grpo = [r for r in table if r["objective"] == "grpo"]
    f["grpo_entropy_ratio"] = {r["warm_start"]: r["train_entropy_ratio"]["mean"] for r in grpo}
    falls = [v for v in f["grpo_entropy_ratio"].values() if v is not None]
    if not falls:
        f["grpo_text"] = "No grpo arm finished, so entropy collapse under plain GRPO was not measured."
    else:
        fell = all(v < 0.9 for v in falls)
        vals = ", ".join(f"{k}: {v:.2f}" for k, v in f["grpo_entropy_ratio"].items() if v is not None)
        f["grpo_text"] = (
            f"Plain GRPO token entropy, last/first 10% of steps: {vals}. "
            + ("Entropy fell visibly (below 0.9 of its start) in every grpo arm."
               if fell else "Entropy did NOT fall below 0.9 of its start in every grpo arm, so the run may be "
               "too short to measure collapse.")
        )

    # which arms keep strategy entropy highest at near-best accuracy
    scored = [r for r in table if r["final_accuracy"]["mean"] is not None]
    if scored:
        best = max(r["final_accuracy"]["mean"] for r in scored)
        near = [r for r in scored if r["final_accuracy"]["mean"] >= best - margin]
        near.sort(key=lambda r: -(r["final_strategy_entropy"]["mean"] if r["final_strategy_entropy"]["mean"] is not None else -1))
        f["best_accuracy"] = best
        f["accuracy_margin"] = margin
        f["near_best"] = [
            {"warm_start": r["warm_start"], "objective": r["objective"], "accuracy": r["final_accuracy"]["mean"],
             "strategy_entropy": r["final_strategy_entropy"]["mean"]}
            for r in near
        ]
        top = f["near_best"][0]
        others = [r for r in f["near_best"][1:] if r["strategy_entropy"] is not None]
        gap = (top["strategy_entropy"] - others[0]["strategy_entropy"]) if others and top["strategy_entropy"] is not None else None
        f["near_best_text"] = (
            f"Best final accuracy {best:.3f}; {len(near)} arm group(s) within {margin:.2f} of it. Highest strategy "
            f"entropy among them: {top['objective']} / {top['warm_start']} "
            f"({_fmt(top['strategy_entropy'])})"
            + (f", ahead of the next by {gap:.3f}." if gap is not None else ".")
        )
    else:
        f["near_best"] = []
        f["near_best_text"] = "No arm finished with an evaluation, so no accuracy comparison is possible."

    # length confound: raw ER tracks length? compare with the length-controlled ER
    xs_raw, ys_len = _paired_ratios(ok, "er_raw", "response_length")
    xs_lc, ys_len2 = _paired_ratios(ok, "er_lc", "response_length")
    raw_len = spearman_ci(xs_raw, ys_len)
    lc_len = spearman_ci(xs_lc, ys_len2)
    f["er_raw_vs_length"], f["er_lc_vs_length"] = raw_len, lc_len
    if raw_len["rho"] is None or lc_len["rho"] is None:
        f["length_text"] = "Not enough varying data to check the length confound."
    else:
        confounded = not (raw_len["ci_low"] <= 0 <= raw_len["ci_high"])
        f["length_text"] = (
            f"Raw ER vs response length over steps: rho = {raw_len['rho']:.2f} "
            f"[{raw_len['ci_low']:.2f}, {raw_len['ci_high']:.2f}]; length-controlled ER vs length: "
            f"rho = {lc_len['rho']:.2f} [{lc_len['ci_low']:.2f}, {lc_len['ci_high']:.2f}]. "
            + ("Raw ER tracks response length, so read the length-controlled ER."
               if confounded and abs(raw_len["rho"]) > abs(lc_len["rho"])
               else "No length confound detected: raw ER does not track length more than the length-controlled ER.")
        )
    return f


def _clean(obj: Any) -> Any:
    """JSON-ready: numpy scalars to Python, non-finite floats to None."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return _finite(obj)
    return obj


# ----------------------------------------------------------------------------- figures


def _style(group: tuple[str, str], warm_starts: list[str]) -> dict:
    import matplotlib.pyplot as plt

    cmap = plt.get_cmap("tab10")
    ls = _WARM_STYLES.get(group[0])
    if ls is None:
        extra = [w for w in warm_starts if w not in _WARM_STYLES]
        ls = _EXTRA_STYLES[extra.index(group[0]) % len(_EXTRA_STYLES)]
    return {"color": cmap(_obj_rank(group[1]) % 10), "linestyle": ls}


def _smooth(v: np.ndarray) -> np.ndarray:
    w = max(1, v.size // 15)
    if w == 1:
        return v
    kernel = np.ones(w) / w
    pad = np.pad(v, (w // 2, w - 1 - w // 2), mode="edge")
    return np.convolve(pad, kernel, mode="valid")


def make_figures(arms: list[ArmData], analysis: dict, out_dir: str | Path) -> dict[str, str]:
    """Write the PNG figures; returns {figure name: file name relative to ``out_dir``}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    ok = [a for a in arms if a.status == "ok" and a.evals]
    groups: dict[tuple[str, str], list[ArmData]] = {}
    for a in ok:
        groups.setdefault(a.group, []).append(a)
    order = sorted(groups, key=lambda g: (_obj_rank(g[1]), g[0]))
    warm = sorted({g[0] for g in order})
    written: dict[str, str] = {}

    def save(fig, name: str) -> None:
        path = fig_dir / f"{name}.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        written[name] = f"figures/{name}.png"

    def legend(ax) -> None:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, ncol=2, frameon=False)

    # 1-3: series vs RL step, mean over seeds, lightly smoothed
    for name, keys, title in (
        ("token_entropy_vs_step", ("token_entropy",), "Token entropy during RL"),
        ("er_vs_step", ("er_lc", "er_raw"), "Hidden-state effective rank during RL"),
        ("strategy_entropy_vs_step", ("strategy_entropy",), "Strategy entropy during RL"),
    ):
        fig, axes = plt.subplots(1, len(keys), figsize=(6.4 * len(keys), 4.2), squeeze=False)
        for ax, key in zip(axes[0], keys):
            for g in order:
                s, v = _seed_mean_series(groups[g], key)
                if v.size:
                    ax.plot(s, _smooth(v), label=_group_label(g), **_style(g, warm))
            ax.set_xlabel("RL step")
            ax.set_ylabel(_LABELS[key])
            ax.grid(alpha=0.3)
            legend(ax)
        axes[0][0].set_title(f"{title} (mean over seeds, smoothed)", fontsize=10)
        save(fig, name)

    # 4: accuracy vs token entropy with the fitted law per arm group
    fig, ax = plt.subplots(figsize=(6.8, 4.6))
    rows = {(r["warm_start"], r["objective"]): r for r in analysis["table"]}
    for g in order:
        st = _style(g, warm)
        hs = np.array([_finite(r.get("token_entropy")) for a in groups[g] for r in a.steps], dtype=float)
        rs = np.array([_finite(r.get("reward")) for a in groups[g] for r in a.steps], dtype=float)
        keep = np.isfinite(hs) & np.isfinite(rs)
        ax.scatter(hs[keep], rs[keep], s=8, alpha=0.35, color=st["color"])
        law = rows[g]["law"]
        label = _group_label(g)
        if law["a"] is not None and keep.any():
            grid = np.linspace(hs[keep].min(), hs[keep].max(), 50)
            ax.plot(grid, -law["a"] * np.exp(grid) + law["b"], **st,
                    label=f"{label} (a={law['a']:.2g}, b={law['b']:.2g}, R²={_fmt(law['r2'])})")
        else:
            ax.plot([], [], **st, label=f"{label} (no fit)")
    ax.set_xlabel("token entropy (nats)")
    ax.set_ylabel("training accuracy (mean reward per step)")
    ax.set_title("Accuracy vs token entropy, fitted R = -a·exp(H) + b", fontsize=10)
    ax.grid(alpha=0.3)
    legend(ax)
    save(fig, "accuracy_vs_entropy")

    # 5: the research question: token-entropy ratio vs ER ratio and strategy-entropy ratio
    fig, axes = plt.subplots(1, 2, figsize=(12.8, 4.8))
    for ax, key in zip(axes, ("er_lc", "strategy_entropy")):
        for g in order:
            st = _style(g, warm)
            xs, ys = _paired_ratios(groups[g], "token_entropy", key)
            ax.scatter(xs, ys, s=10, alpha=0.5, color=st["color"],
                       marker="o" if st["linestyle"] == "-" else "^", label=_group_label(g))
        lims = [min(ax.get_xlim()[0], ax.get_ylim()[0]), max(ax.get_xlim()[1], ax.get_ylim()[1])]
        ax.plot(lims, lims, color="grey", lw=0.8, ls=":", label="equal collapse")
        ax.axhline(1.0, color="grey", lw=0.5)
        ax.axvline(1.0, color="grey", lw=0.5)
        ax.set_xlabel("token entropy / its RL-start value")
        ax.set_ylabel(f"{_LABELS[key]} / its RL-start value")
        ax.grid(alpha=0.3)
        legend(ax)
    axes[0].set_title("Does hidden-state rank collapse with token entropy? (every arm, every step)", fontsize=10)
    axes[1].set_title("Do strategies collapse with token entropy?", fontsize=10)
    save(fig, "entropy_ratio_vs_er_ratio")
    return written


# ----------------------------------------------------------------------------- markdown


def _fmt(x: Any, nd: int = 3) -> str:
    x = _finite(x)
    return "n/a" if x is None else f"{x:.{nd}f}"


def _fmt_ci(c: dict, nd: int = 3) -> str:
    if c["mean"] is None:
        return "n/a"
    if c["ci_low"] is None:
        return f"{c['mean']:.{nd}f}"
    return f"{c['mean']:.{nd}f} [{c['ci_low']:.{nd}f}, {c['ci_high']:.{nd}f}]"


def render_markdown(analysis: dict, figures: dict[str, str]) -> str:
    meta = analysis["meta"]
    lines = [f"# searchgym run: {meta.get('name', 'report')}", ""]
    if meta:
        lines.append(
            f"Preset `{meta.get('preset', '?')}`; {len(analysis['arms'])} arm(s); "
            f"total wall time {_fmt(meta.get('wall_s'), 1)} s on {meta.get('workers', '?')} worker(s)."
        )
        for note in meta.get("notes", []):
            lines.append(f"\n**Note:** {note}")
        lines.append("")
    lines += [
        "Values are means over seeds with a 95% t-interval in brackets (no interval with one seed). "
        "Ratios are final evaluation / evaluation at the RL start (step 0).", "",
        "| objective | warm start | seeds | accuracy | pass@1 | pass@k | H ratio | ER-lc ratio | group-ER ratio "
        "| strategy-H ratio | distinct ratio | Vendi ratio | metric cost |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in analysis["table"]:
        ratios = r["ratios"]
        lines.append(
            f"| {r['objective']} | {r['warm_start']} | {len(r['seeds'])} | {_fmt_ci(r['final_accuracy'])} "
            f"| {_fmt_ci(r['final_pass_at_1'])} | {_fmt_ci(r['final_pass_at_k'])} (k={r['k']}) | "
            + " | ".join(_fmt_ci(ratios[k], 2) for k in RATIO_KEYS)
            + f" | {_fmt(r['metrics_share']['mean'] and 100 * r['metrics_share']['mean'], 1)}% |"
        )
    f = analysis["findings"]
    lines += ["", "## Findings (computed from the data)", "",
              f"- {f['token_entropy_vs_er_lc']['text']}",
              f"- {f['token_entropy_vs_strategy_entropy']['text']}",
              f"- {f['grpo_text']}",
              f"- {f['near_best_text']}",
              f"- Length confound: {f['length_text']}", ""]
    lines += ["### Entropy-performance law per arm group", "",
              "| objective | warm start | a | b | R² | ceiling (-a+b) | points |", "|---|---|---|---|---|---|---|"]
    for r in analysis["table"]:
        law = r["law"]
        lines.append(f"| {r['objective']} | {r['warm_start']} | {_fmt(law['a'])} | {_fmt(law['b'])} "
                     f"| {_fmt(law['r2'])} | {_fmt(law['ceiling'])} | {law['n']} |")
    lines += ["", "### Length confound per arm group (ratios final / RL start)", "",
              "| objective | warm start | raw ER | length-controlled ER | response length |", "|---|---|---|---|---|"]
    for r in analysis["table"]:
        lines.append(f"| {r['objective']} | {r['warm_start']} | {_fmt_ci(r['raw_er_ratio'], 2)} "
                     f"| {_fmt_ci(r['ratios']['er_lc'], 2)} | {_fmt_ci(r['length_ratio'], 2)} |")
    if analysis["failed_arms"]:
        lines += ["", "## Failed arms", ""]
        for a in analysis["failed_arms"]:
            err = (a["error"] or "").strip().splitlines()
            lines.append(f"- `{a['arm_id']}`: {err[-1] if err else 'unknown error'}")
    lines += ["", "## Figures", ""]
    captions = {
        "token_entropy_vs_step": "Token entropy vs RL step",
        "er_vs_step": "Effective rank vs RL step (left: length-controlled, right: raw)",
        "strategy_entropy_vs_step": "Strategy entropy vs RL step",
        "accuracy_vs_entropy": "Accuracy vs token entropy with the fitted law",
        "entropy_ratio_vs_er_ratio": "Token-entropy ratio vs ER ratio and strategy-entropy ratio (the research question)",
    }
    for name, rel in figures.items():
        lines += [f"**{captions.get(name, name)}**", "", f"![{name}]({rel})", ""]
    return "\n".join(lines) + "\n"


def write_report(run_dir: str | Path, meta: dict | None = None, arms: list[ArmData] | None = None) -> dict:
    """Analyse the arms under ``run_dir`` and write report.md, report.json and figures.

    Returns the analysis dict (the content of report.json).
    """
    run_dir = Path(run_dir)
    arms = load_arms(run_dir) if arms is None else arms
    if not arms:
        raise ValueError(f"{run_dir}: no arms to report on")
    analysis = analyse(arms, meta)
    figures = make_figures(arms, analysis, run_dir)
    analysis["figures"] = figures
    atomic_write_json(run_dir / "report.json", analysis)
    atomic_write_text(run_dir / "report.md", render_markdown(analysis, figures))
    return analysis
