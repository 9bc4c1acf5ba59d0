"""The report in markdown: ``report.md`` from the analysis dict (:mod:`searchgym.analysis`),
and the README's generated claims block. Every table goes through :func:`table`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable, Sequence

from searchgym.analysis import ACCURACY_MARGIN, COLLAPSE_CRITERION, NULL_CONFIDENCE, claim_key, finite, mech_text, metric
from searchgym.retrieval.fileio import atomic_write_text


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """A markdown table, one line per row: ``| a | b |`` cells, a ``|---|`` rule under the
    header (no column padding: the report's diffs stay small, and committed reports
    regenerate byte for byte)."""
    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(row) + " |" for row in rows])


def _fmt(x: Any, nd: int = 3) -> str:
    x = finite(x)
    return "n/a" if x is None else f"{x:.{nd}f}"


def _fmt_effect(e: dict | None, nd: int = 3) -> str:
    if not e or e.get("estimate") is None:
        return "n/a"
    if e.get("ci_low") is None:
        return f"{e['estimate']:+.{nd}f}"
    return f"{e['estimate']:+.{nd}f} [{e['ci_low']:+.{nd}f}, {e['ci_high']:+.{nd}f}]"


def _pass(ok: bool) -> str:
    return "pass" if ok else "FAIL"


def claims_table(analysis: dict) -> list[str]:
    """The markdown claims table (report.md opens with it; the README copies it)."""
    rows = []
    for c in analysis["claims"]:
        eff = c["effect"]
        extra = ""
        eq = c.get("accuracy_equivalence")
        if eq:
            extra = f"; accuracy diff {_fmt(eq.get('estimate'))} (90% CI [{_fmt(eq.get('ci_low'))}, " \
                    f"{_fmt(eq.get('ci_high'))}], {'equal' if eq.get('equivalent') else 'not shown equal'})"
        if c.get("mechanism"):
            extra += f"; mechanism: {c['mechanism']}"
        rows.append([c["claim"], c["scope"], c["measurement"], _fmt_effect(eff) + extra, _fmt(eff.get("mde")),
                     c["control"], f"**{c['verdict']}**"])
    head = ["claim", "scope", "measurement", "effect [95% CI]", "smallest detectable", "control", "verdict"]
    if any("n_builds" in c["effect"] for c in analysis["claims"]):  # pooled over SFT builds: how many each rests on
        head.insert(4, "builds")
        for row, c in zip(rows, analysis["claims"]):
            row.insert(4, str(c["effect"].get("n_builds", "-")))
    return table(head, rows)


def builds_table(analysis: dict) -> list[str]:
    """A report pooled over SFT builds: every claim's effect [95% CI] and verdict in each
    build analysed on its own (conditional on that build), then pooled; [] otherwise."""
    by_build = analysis.get("claims_by_build") or {}
    if not by_build:
        return []
    cells = {b: {claim_key(c): c for c in rows} for b, rows in by_build.items()}

    def cell(c: dict | None) -> str:
        return "-" if c is None else f"{_fmt_effect(c['effect'])} {c['verdict']}"

    rows, every, same, decisive = [], 0, 0, 0
    for c in analysis["claims"]:
        key = claim_key(c)
        alone = [cells[b].get(key) for b in by_build]
        rows.append([*key, *(cell(x) for x in alone), f"{_fmt_effect(c['effect'])} **{c['verdict']}**"])
        if all(x is not None for x in alone):
            every += 1
            same += len({x["verdict"] for x in alone}) == 1
            decisive += c["verdict"] in ("supported", "contradicted")
    return table(["claim", "scope", "measurement", *(f"build {b} alone" for b in by_build), "pooled"], rows) + [
        "", f"Of the {every} claims measured in every build: the verdict is the same in every build alone for "
        f"{same}; pooled over the builds, {decisive} are decisive (supported or contradicted). (Counted from the "
        "table: a claim counts as measured in a build when that build has its arms.)"]


def _header(meta: dict, analysis: dict) -> list[str]:
    ev = meta.get("eval") or {}
    rt = analysis["run_time"]
    if meta.get("parts"):  # searchgym merge: each part's own seeds, time and machine
        parts = "; ".join(
            (f"build {e['build']} = " if e.get("build") else "") +
            f"`{e['run']}` (seeds {e['seeds']}, {e['arms']} arms, {_fmt(e.get('from_scratch_s'), 0)} s from scratch"
            f"{', approximate' if e.get('approximate') else ''}"
            f"{'; ' + _machine(e['machine']) if e.get('machine') else ''})" for e in meta["parts"])
        when = (f"assembled by `searchgym merge` from {len(meta['parts'])} run(s): {parts}; compute from scratch, "
                f"all parts: {_fmt(rt.get('from_scratch_s'), 0)} s"
                + (f"; as one run resumed through the stage cache (each distinct world, model, demos and SFT build "
                   f"once, every part's RL-start evaluations and arms): {_fmt(rt['one_run_s'], 0)} s."
                   if rt.get("one_run_s") is not None else "."))
    else:
        when = (f"wall time of this invocation {_fmt(meta.get('wall_s'), 0)} s on {meta.get('workers', '?')} "
                f"worker(s); from scratch (the stages' own build times: world + model + demos, the longer SFT warm "
                f"start, RL-start evaluations, arms) {_fmt(rt.get('from_scratch_s'), 0)} s"
                f"{' (approximate: evaluations or arms read from the cache)' if rt.get('approximate') else ''}.")
    lines = [
        f"Preset `{meta.get('preset', '?')}`; {len(analysis['arms'])} arm(s) "
        f"({', '.join(meta.get('objectives', []))} x {', '.join(meta.get('warm_starts', []))} x seeds "
        f"{meta.get('seeds', [])}); {meta.get('rl_steps', '?')} RL steps; evaluation: "
        f"{ev.get('questions', '?')} {ev.get('family', '')} {ev.get('split', '')} questions x "
        f"{ev.get('samples', '?')} samples at T = {ev.get('temperature', '?')}, at the RL start and every "
        f"{ev.get('every', '?')} steps; " + when]
    m = meta.get("machine")
    if m:  # older runs did not record it; their reports stay as they were
        lines[0] = lines[0][:-1] + f"; {_machine(m)}."
    lines += [f"\n**Note:** {note}" for note in meta.get("notes", [])]
    if meta.get("builds"):  # searchgym merge --builds: what each build is
        lines.append("\n**SFT builds pooled** (`searchgym merge --builds`; the replicate is (build, seed), see the "
                     "intervals rule): " + "; ".join(
                         f"{b['build']}: `{b['run']}`, SFT overrides {', '.join(f'`{o}`' for o in b['sft_overrides']) or 'none (the preset)'}"
                         f", SFT stage keys {', '.join(f'{w} {k}' for w, k in b['warm_start_key'].items())}"
                         for b in meta["builds"]))
    return lines + [""]


def _machine(m: dict) -> str:
    return (f"machine: {m.get('cpu', '?')}, {m.get('cpus', '?')} CPUs, 1-thread fp32 matmul "
            f"{_fmt(m.get('matmul_gflops_1thread'), 0)} GFLOP/s")


def _controls_rows(controls: dict) -> list[list[str]]:
    rows = []
    for c in controls.values():
        col = f"{c['collapse']['max_ratio']:.3f} ({_pass(c['collapse']['passed'])})" if "collapse" in c else "-"
        null = "; ".join(f"{w}: {_fmt_effect(v)} ({_pass(v['passed'])})" for w, v in (c.get("null") or {}).items()) or "-"
        unt = "; ".join(f"{w}: {_fmt_effect(v)} ({_pass(v['passed'])})"
                        for w, v in (c.get("untrained") or {}).items()) or "-"
        ln = (f"{c['length']['r']:.2f} [{_fmt(c['length']['ci_low'], 2)}, {_fmt(c['length']['ci_high'], 2)}] "
              f"({_pass(c['length']['passed'])})" if "length" in c else "-")
        rows.append([c["label"], col, null, unt, ln, "yes" if c["usable"] else "NO: " + ", ".join(c["failed"])])
    return rows


#: The per-group table's metrics, in this order, where the run measured them.
_SHOWN = ("accuracy", "pass@1", "pass@2", "pass@4", "entropy", "group_er_resid", "aligned_er", "group_er", "er_resid",
          "strategy_entropy", "distinct_strategies", "strategy_coverage", "unmatched_rate", "vendi", "graph_cycle_rate",
          "qgraph_cycle_rate", "graph_small_world", "query_exact_cycle_rate", "response_length")
_VS_GRPO_SHOWN = ("accuracy", "entropy", "strategy_entropy", "group_er_resid", "aligned_er", "graph_cycle_rate")
_WARM_SHOWN = ("accuracy", "entropy", "strategy_entropy", "group_er_resid")


def _group_cell(mm: dict | None) -> str:
    if not mm:
        return "n/a"
    return f"{_fmt(mm['final'].get('estimate'))}<br>{_fmt_effect(mm['change'])}<br>mde {_fmt(mm['change'].get('mde'))}"


def _law_row(r: dict) -> list[str]:
    law = r.get("law") or {}

    def ci(k: str) -> str:
        v = law.get(k + "_ci") or [None, None]
        return f"{_fmt(law.get(k))} [{_fmt(v[0])}, {_fmt(v[1])}]"

    flags = [f for f in ("ceiling_exceeds_max", "entropy_range_too_narrow", "slope_ci_includes_zero") if law.get(f)]
    identified = "yes" if law.get("identified") else "no: " + (", ".join(flags) or law.get("reason") or "?")
    return [r["objective"], r["warm_start"], ci("a"), ci("b"), ci("ceiling"), _fmt(law.get("r2")),
            str(law.get("n_points", 0)), identified]


def _ratios(d: dict | None) -> str:
    return ", ".join(f"s{k}: {v:.2f}" for k, v in (d or {}).items()) or "n/a"


def render_markdown(analysis: dict, figures: dict[str, str]) -> str:
    """``report.md``: the claims table first, then the controls, the per-group table and
    the comparisons, every number from ``analysis`` (:func:`searchgym.analysis.analyse`)."""
    meta = analysis["meta"]
    lines = [f"# searchgym run: {meta.get('name', 'report')}", ""]
    if meta:
        lines += _header(meta, analysis)
    lines += ["## The seed's claims", ""] + claims_table(analysis)
    lines += ["", "Rules (the verdicts above are computed from the numbers by these, nothing is written by hand):", ""]
    lines += [f"- **{k}**: {v}" for k, v in analysis["rules"].items()]
    lines += ["", "Effects are paired differences with 95% intervals from a hierarchical bootstrap over seeds, then "
              "questions; 'smallest detectable' is the difference this run could have detected "
              "(80 % power, alpha 0.05).", ""]
    if analysis.get("claims_by_build"):
        lines += ["## The claims in each SFT build alone, and pooled", "",
                  "Each build's arms analysed as a run of their own (intervals conditional on that build), beside "
                  "the pooled effect above (builds resampled above seeds). A verdict that differs between builds "
                  "rests on the build, not only on RL.", ""] + builds_table(analysis) + [""]

    lines += ["## Controls (every instrument, on this run's rollouts)", ""]
    lines += table(["metric", "forced collapse: max (collapsed-floor)/(original-floor)",
                    f"null: A - B at the RL start [95% CI] (passes when the {NULL_CONFIDENCE:.0%} CI contains 0)",
                    "untrained model: trained - untrained", "length: r with response length", "usable"],
                   _controls_rows(analysis["controls"]))

    show = [n for n in _SHOWN if any(n in r["metrics"] for r in analysis["table"])]
    lines += ["", "## Per arm group: RL start, end, and the paired change", "",
              "Each cell: end value, then the change end - start [95% CI] and its smallest detectable difference.", ""]
    lines += table(["objective", "warm start", "seeds"] + [metric(n).label for n in show],
                   [[r["objective"], r["warm_start"], str(len(r["seeds"]))] + [_group_cell(r["metrics"].get(n))
                                                                              for n in show]
                    for r in analysis["table"]])

    lines += ["", f"## Collapse criterion (token entropy falls to <= {COLLAPSE_CRITERION} of its start)", ""]
    lines += collapse_table(analysis)

    if analysis["vs_grpo"]:
        cmp_keys = [n for n in _VS_GRPO_SHOWN if n in show]
        rows_by = {(r["warm_start"], r["objective"]): r for r in analysis["table"]}
        rows = []
        for v in analysis["vs_grpo"]:
            eq = v["metrics"].get("accuracy", {}).get("equivalence") or {}
            mech = rows_by[(v["warm_start"], v["objective"])].get("mechanism") or {}
            rows.append([v["objective"], v["warm_start"]]
                        + [f"{_fmt_effect(v['metrics'].get(n))}<br>mde {_fmt(v['metrics'].get(n, {}).get('mde'))}"
                           for n in cmp_keys]
                        + ["yes" if eq.get("equivalent") else "no", mech_text(mech)])
        lines += ["", "## Objective - GRPO at the end (paired within seed and warm start)", ""]
        lines += table(["objective", "warm start"] + [metric(n).label for n in cmp_keys]
                       + [f"accuracy equal (TOST +-{ACCURACY_MARGIN})", "mechanism"], rows)

    if analysis["warm_start_comparison"]:
        lines += ["", "## Diverse - narrow warm start (paired within seed)", ""]
        lines += table(["objective", "when", "accuracy", "token entropy", "strategy entropy", "group ER (resid.)"],
                       [[w["objective"], when] + [_fmt_effect(w[when].get(n)) for n in _WARM_SHOWN]
                        for w in analysis["warm_start_comparison"] for when in ("start", "final")])

    if analysis["correlations"]:
        lines += ["", "## Token entropy vs the other instruments", "",
                  "Spearman over per-arm changes (n = arms) and the repeated-measures correlation over evaluation "
                  "points (subject = arm); never step points as independent.", ""]
        rows = []
        for c in analysis["correlations"]:
            ch, rm = c["change"], c["repeated_measures"]
            rows.append([metric(c["x"]).label, metric(c["y"]).label,
                         f"{_fmt(ch.get('r'), 2)} [{_fmt(ch.get('ci_low'), 2)}, {_fmt(ch.get('ci_high'), 2)}] "
                         f"({ch.get('n')})",
                         f"{_fmt(rm.get('r'), 2)} [{_fmt(rm.get('ci_low'), 2)}, {_fmt(rm.get('ci_high'), 2)}] "
                         f"({rm.get('n')})"])
        lines += table(["x", "y", "change correlation [95% CI] (n)", "repeated-measures r [95% CI] (n)"], rows)

    if analysis.get("question_correlations"):
        lines += ["", "## Per-question correlations with accuracy", "",
                  "Repeated-measures correlation over questions (subject = arm) at the RL start and at the end.", ""]
        lines += table(["metric", "vs", "when", "r [95% CI]", "n (subjects)"],
                       [[metric(c["x"]).label, c["y"], c["when"],
                         f"{_fmt(c.get('r'), 2)} [{_fmt(c.get('ci_low'), 2)}, {_fmt(c.get('ci_high'), 2)}]",
                         f"{c.get('n')} ({c.get('n_groups')})"] for c in analysis["question_correlations"]])

    lines += ["", "## Entropy-performance law on the evaluation points", "",
              "R = -a exp(H) + b fitted on (token entropy, accuracy) of every evaluation; intervals from a bootstrap "
              "over seeds; not identified when the ceiling exceeds 1 or the entropy range is too narrow.", ""]
    lines += table(["objective", "warm start", "a", "b", "ceiling", "R²", "points", "identified"],
                   [_law_row(r) for r in analysis["table"]])

    if analysis["failed_arms"]:
        lines += ["", "## Failed arms", ""]
        for a in analysis["failed_arms"]:
            err = (a["error"] or "").strip().splitlines()
            lines.append(f"- `{a['arm_id']}`: {err[-1] if err else 'unknown error'}")
    lines += ["", "## Figures", ""]
    captions = {"token_entropy_vs_step": "Token entropy of the training rollouts vs RL step",
                "collapse_by_instrument": "Each instrument relative to its RL-start value, per evaluation"}
    for name, rel in figures.items():
        lines += [f"**{captions.get(name, name)}**", "", f"![{name}]({rel})", ""]
    return "\n".join(lines) + "\n"


# A README may hold one generated block per report, each naming its report in the begin marker
# (so the small and full reports update their own blocks); an untagged block (README_BEGIN, the
# older form) is used only when it is the README's one block.
README_BEGIN = "<!-- claims:begin (generated by `searchgym report --readme`; do not edit) -->"
README_BEGIN_FOR = "<!-- claims:begin {source} (generated by `searchgym report --readme`; do not edit) -->"
README_END = "<!-- claims:end -->"
_BEGIN_ANY = re.compile(r"<!-- claims:begin .*?-->")


def collapse_table(analysis: dict) -> list[str]:
    """Per arm group: token entropy's end/start ratio per seed and whether the collapse
    criterion (<= ``COLLAPSE_CRITERION``) holds in every seed."""
    met = {True: "yes", False: "no", None: "n/a"}
    return table(["objective", "warm start", "training rollouts: last/first 10 % of steps, per seed",
                  "fixed evaluation: final/RL start, per seed", "met in every seed"],
                 [[r["objective"], r["warm_start"], _ratios(cc.get("train_entropy_ratio")),
                   _ratios(cc.get("eval_entropy_ratio")), met[cc.get("met")]]
                  for r in analysis["table"] for cc in [r.get("collapse_criterion") or {}]])


def replace_readme_block(readme: str | Path, begin: str, end: str, lines: Sequence[str], *,
                         untagged: str | None = None, any_begin: re.Pattern | None = None) -> bool:
    """Replace the README's generated block that opens with the marker ``begin`` (up to the
    next ``end``) by ``begin``, ``lines`` and ``end``. An ``untagged`` begin marker counts when
    it is the README's only match of ``any_begin`` (it is then replaced by ``begin``). Returns
    False (and writes nothing) when the README has no such block."""
    readme = Path(readme)
    text = readme.read_text(encoding="utf-8")
    found = begin if begin in text else \
        untagged if untagged is not None and any_begin is not None and any_begin.findall(text) == [untagged] else None
    if found is None or end not in text.split(found, 1)[1]:
        return False
    head, rest = text.split(found, 1)
    _, tail = rest.split(end, 1)
    atomic_write_text(readme, head + "\n".join([begin, *lines, end]) + tail)
    return True


def update_readme(readme: str | Path, analysis: dict, source: str) -> bool:
    """Replace the README's generated block for ``source`` (begin marker
    :data:`README_BEGIN_FOR`) with this analysis's claims and collapse-criterion tables; an
    untagged block counts when it is the only one (it is then tagged). Returns False (and
    writes nothing) when the README has no block for ``source``."""
    lines = ([f"Claims table of [`{source}`]({source}), generated from its numbers:", ""] + claims_table(analysis)
             + ["", f"Collapse criterion (token entropy falls to <= {COLLAPSE_CRITERION} of its start):", ""]
             + collapse_table(analysis) + [""])
    if analysis.get("claims_by_build"):
        lines += ["Each SFT build alone, and pooled:", ""] + builds_table(analysis) + [""]
    return replace_readme_block(readme, README_BEGIN_FOR.format(source=source), README_END, lines,
                                untagged=README_BEGIN, any_begin=_BEGIN_ANY)
