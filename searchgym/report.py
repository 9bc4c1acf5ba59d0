"""The experiment's report: ``report.md``, ``report.json`` and PNG figures under a run folder,
from its per-arm files: loaded and analysed by :mod:`searchgym.analysis`, drawn by
:mod:`searchgym.figures`, written out by :mod:`searchgym.markdown`."""

from __future__ import annotations

from pathlib import Path

from searchgym.analysis import ArmData, analyse, load_arms
from searchgym.figures import make_figures
from searchgym.markdown import render_markdown
from searchgym.retrieval.fileio import atomic_write_json, atomic_write_text


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


