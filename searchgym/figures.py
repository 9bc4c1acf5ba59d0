"""The report's figures (PNG): token entropy of the training rollouts per RL step, and each
instrument of the fixed evaluation relative to its RL-start value, per arm group (mean over
seeds). Read from the loaded arms (:mod:`searchgym.analysis`)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402 - after the backend is chosen
import numpy as np  # noqa: E402

from searchgym.analysis import ArmData, arm_groups, finite, metric, objective_rank, usable_arms  # noqa: E402
from searchgym.metrics import names  # noqa: E402
from searchgym.retrieval.fileio import atomic_path  # noqa: E402

_WARM_STYLES = {"diverse": "-", "narrow": "--"}

def _style(group: tuple[str, str]) -> dict:
    return {"color": plt.get_cmap("tab10")(objective_rank(group[1]) % 10), "linestyle": _WARM_STYLES.get(group[0], ":")}


def relative_to_start(arms: list[ArmData], key: str) -> tuple[list[int], list[float]]:
    """Evaluation metric ``key`` / its RL-start value, mean over the arms (seeds) that have
    both, at the evaluation steps every such arm has: (steps, values). A value of 0 is a
    value (a metric that collapsed to nothing), not a gap; an arm whose RL-start value is 0
    or missing has no ratio and is left out."""
    per = []
    for a in arms:
        base = a.eval_value(0, key)
        if base:
            values = {s: a.eval_value(s, key) for s in a.eval_steps()}
            per.append({s: v / base for s, v in values.items() if v is not None})
    common = sorted(set.intersection(*(set(p) for p in per))) if per else []
    return common, [float(np.mean([p[s] for p in per])) for s in common]


def make_figures(arms: list[ArmData], analysis: dict, out_dir: str | Path) -> dict[str, str]:
    """Write the PNG figures into ``out_dir/figures``; returns {figure name: file name
    relative to ``out_dir``}."""
    fig_dir = Path(out_dir) / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    ok = usable_arms(arms)
    groups = arm_groups(ok)
    order = sorted(groups, key=lambda g: (objective_rank(g[1]), g[0]))
    written: dict[str, str] = {}

    def save(fig, name: str) -> None:
        path = fig_dir / f"{name}.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        written[name] = f"figures/{name}.png"

    # 1: training token entropy per step (mean over seeds)
    fig, ax = plt.subplots(figsize=(6.8, 4.2))
    for g in order:
        per = [{int(r["step"]): finite(r.get(names.TRAIN_ENTROPY)) for r in a.steps} for a in groups[g]]
        common = sorted(set.intersection(*(set(p) for p in per))) if per else []
        ys = [np.mean([p[s] for p in per if p[s] is not None] or [np.nan]) for s in common]
        if common:
            ax.plot(common, ys, label=f"{g[1]} / {g[0]}", **_style(g))
    ax.set_xlabel("RL step")
    ax.set_ylabel("token entropy of the step's rollouts (nats)")
    ax.set_title("Token entropy during RL (mean over seeds)", fontsize=10)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, ncol=2, frameon=False)
    save(fig, "token_entropy_vs_step")

    # 2: the research question: evaluation metrics, each relative to its RL start, per step
    keys = [k for k in ("accuracy", "entropy", "group_er_resid", "aligned_er", "strategy_entropy", "graph_cycle_rate")
            if any(names.evaluation(k) in r for a in ok for r in a.evals)]
    if keys:
        fig, axes = plt.subplots(1, len(keys), figsize=(3.6 * len(keys), 3.6), squeeze=False)
        for ax, key in zip(axes[0], keys):
            for g in order:
                common, ys = relative_to_start(groups[g], key)
                if common:
                    ax.plot(common, ys, marker="o", ms=3, label=f"{g[1]} / {g[0]}", **_style(g))
            ax.axhline(1.0, color="grey", lw=0.6)
            ax.set_title(metric(key).label, fontsize=8)
            ax.set_xlabel("RL step")
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel("value / RL-start value")
        if axes[0][0].get_legend_handles_labels()[0]:
            axes[0][-1].legend(fontsize=6, frameon=False)
        save(fig, "collapse_by_instrument")
    return written


