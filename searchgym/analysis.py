"""The report's numbers: the run folder's per-arm files loaded (:func:`load_arms`, the one
place that reads their rows, through the metric vocabulary ``searchgym.metrics.names``) and
analysed by stated rules (../shared/RESEARCH.md) into one JSON-ready dict (:func:`analyse`,
the content of ``report.json``). Nothing in it is typed in by hand; statistics are
``searchgym.metrics.stats``. :mod:`searchgym.figures` draws it, :mod:`searchgym.markdown`
writes it out, :func:`searchgym.report.write_report` does both.

Input (written by :mod:`searchgym.experiment`, documented in docs/contracts.md,
"experiment"): a run directory holding ``arms/<arm_id>/`` folders, each with

- ``arm.json``: ``{"arm_id", "warm_start", "objective", "seed", "status", "error", "wall_s"}``;
- ``metrics.jsonl``: one record per RL step (the trainer's step record + the step hook and
  the mechanism diagnostics), read as ``names.normalize_record(row, names.STEP_RECORD)``;
- ``eval.jsonl``: one record per fixed evaluation (``step``, ``replica``: "A" for every
  evaluation, "B" for the RL-start null control; the metrics of all episodes as ``eval/<m>``
  for their ``searchgym.metrics.summarize_rollouts`` names, and ``controls``), read as
  ``names.normalize_record(row, names.EVAL_RECORD)``, so a metric ``m`` is ``eval/m``
  (files written before the vocabulary, with bare names, read the same);
- ``eval_questions.jsonl``: the same metrics per question (``step``, ``replica``,
  ``question``), plus ``trained_tf/<metric>`` and ``untrained_tf/<metric>`` where the
  untrained-model control ran.

How numbers become findings:

- The unit of replication is the seed. Every effect is a paired difference on the same
  questions: final minus RL start within an arm; objective minus GRPO within a seed and warm
  start; diverse minus narrow within a seed; replica A minus replica B of the RL-start model
  (the null control). Its interval is a hierarchical bootstrap over seeds, then questions
  (``searchgym.metrics.stats.paired_difference``), clipped to the metric's range, and its
  smallest detectable difference is (z_0.975 + z_0.8) x the bootstrap standard error.
- Every instrument is validated in the same report by its controls (:func:`control_status`);
  a metric that fails one is marked failed and no claim uses it.
- Each claim's verdict comes from ``searchgym.metrics.stats.verdict``, whose rule text is
  printed with the table.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from searchgym.metrics import names
from searchgym.metrics import stats as st
from searchgym.retrieval.fileio import read_jsonl
from searchgym.training.diagnostics import EQUIVALENCE_RULE, summarize_mechanism

# ----------------------------------------------------------------------------- vocabulary


@dataclass(frozen=True)
class Metric:
    """A per-question evaluation metric the report reads (a summarize_rollouts key)."""

    name: str
    label: str
    family: str  # outcome | token | hidden | strategy | text | graph
    bounds: tuple[float, float] | None = None  # range of a per-question value, when bounded
    floor: float | None = None  # its value when a question's samples are all one sample (between-sample metrics)
    length_free: bool = False  # meant not to track response length (the length control applies)
    content: bool = False  # meant to measure the model, not the tokens (the untrained-model control applies)


METRICS: tuple[Metric, ...] = (
    Metric("accuracy", "accuracy", "outcome", (0.0, 1.0)),
    Metric("entropy", "token entropy (nats)", "token", (0.0, math.inf)),
    Metric("group_er", "group ER (mean-pooled samples)", "hidden", (0.0, math.inf), floor=0.0, content=True),
    Metric("group_er_resid", "group ER, token identity removed", "hidden", (0.0, math.inf), floor=0.0,
           length_free=True, content=True),
    Metric("aligned_er", "ER across samples at aligned positions", "hidden", (0.0, math.inf), floor=0.0,
           length_free=True, content=True),
    Metric("er_resid", "within-response ER, token identity removed", "hidden", (0.0, math.inf), length_free=True,
           content=True),
    Metric("er_within_window", "within-response window ER", "hidden", (0.0, math.inf), content=True),
    Metric("strategy_entropy", "strategy entropy (Miller-Madow, matched)", "strategy", (0.0, math.inf), floor=0.0),
    Metric("strategy_entropy_plugin", "strategy entropy (plug-in, matched)", "strategy", (0.0, math.inf), floor=0.0),
    Metric("distinct_strategies", "distinct strategies (matched)", "strategy", (0.0, math.inf), floor=1.0),
    Metric("strategy_coverage", "coverage of valid strategies", "strategy", (0.0, 1.0)),
    Metric("strategy_entropy_correct", "strategy entropy over correct (Miller-Madow)", "strategy", (0.0, math.inf),
           floor=0.0),
    Metric("unmatched_rate", "unmatched-trajectory rate", "strategy", (0.0, 1.0)),
    Metric("vendi", "Vendi score (trajectory text)", "text", (1.0, math.inf), floor=1.0),
    Metric("distinct_queries", "distinct queries", "text", (0.0, math.inf)),
    Metric("response_length", "policy tokens per episode", "outcome", (0.0, math.inf)),
    Metric("searches_mean", "searches per episode", "outcome", (0.0, math.inf)),
    Metric("format_error_rate", "format-error rate", "outcome", (0.0, 1.0)),
    Metric("graph_cycle_rate", "reasoning-graph cycle rate (all steps)", "graph", (0.0, 1.0)),
    Metric("graph_loops_mean", "reasoning-graph loops per trajectory", "graph", (0.0, math.inf)),
    Metric("graph_small_world", "reasoning-graph small-world index", "graph", (0.0, math.inf)),
    Metric("graph_diameter", "reasoning-graph diameter", "graph", (0.0, math.inf)),
    Metric("qgraph_cycle_rate", "reasoning-graph cycle rate (query steps)", "graph", (0.0, 1.0)),
    Metric("query_cycle_rate", "query-text graph cycle rate", "graph", (0.0, 1.0)),
    Metric("query_exact_cycle_rate", "repeated-query rate", "graph", (0.0, 1.0)),
)
_BY_NAME = {m.name: m for m in METRICS}


def metric(name: str) -> Metric:
    """The catalogue entry of ``name``; pass@k keys get an outcome entry of range [0, 1]."""
    if name in _BY_NAME:
        return _BY_NAME[name]
    if name.startswith("pass@"):
        return Metric(name, name, "outcome", (0.0, 1.0))
    return Metric(name, name, "other")


#: Equivalence margins ("does not change" / "equal"), stated in the report. Accuracy: an
#: absolute 0.05; a hidden-state or graph metric: 10 % of its RL-start value.
ACCURACY_MARGIN = 0.05
RELATIVE_MARGIN = 0.10
#: The forced-collapse control passes when (collapsed - floor) / (original - floor) <= this.
COLLAPSE_MAX_RATIO = 0.1
#: The null control passes when this interval of replica A - replica B contains 0: with ~20
#: metrics x 2 warm starts, a 95 % rule would fail about two sound instruments per run by chance.
NULL_CONFIDENCE = 0.99
#: The length control fails a length-free metric whose repeated-measures correlation with
#: response length has |r| >= this and an interval that excludes 0.
LENGTH_MAX_R = 0.5

_OBJECTIVE_ORDER = ("grpo", "entropy_bonus", "clip_higher", "clip_cov", "kl_cov", "forking_tokens", "er_shaped")


# ----------------------------------------------------------------------------- loading


@dataclass(frozen=True, order=True)
class Unit:
    """The replicate of a report pooled over SFT builds (``searchgym merge --builds``): a seed
    within a build. Arms of one unit share their warm starts, question stream and evaluation
    questions, so they are compared paired, as the arms of one seed are in a single run."""

    build: str
    seed: int

    def __str__(self) -> str:
        return f"{self.build}/s{self.seed}"


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
    questions: list[dict] = field(default_factory=list)
    # the SFT build its warm starts came from, in a report pooled over builds ("" otherwise)
    build: str = ""

    @property
    def unit(self) -> "int | Unit":
        """The replicate this arm belongs to: its seed, or (build, seed) when pooled over builds."""
        return Unit(self.build, self.seed) if self.build else self.seed

    @property
    def unit_label(self) -> "int | str":
        """``unit`` as the report writes it: the seed, or ``"<build>/s<seed>"``."""
        return str(self.unit) if self.build else self.seed

    @property
    def group(self) -> tuple[str, str]:
        """Arms that differ only by seed share a group."""
        return (self.warm_start, self.objective)

    def eval_steps(self, replica: str = "A") -> list[int]:
        return sorted({int(r["step"]) for r in self.evals if r.get("replica", "A") == replica})

    def per_question(self, step: int, name: str, replica: str = "A") -> dict[str, float]:
        """{question: value} of evaluation metric ``name`` (``eval/<name>``) at evaluation ``step``."""
        key = names.evaluation(name)
        out = {}
        for r in self.questions:
            if int(r["step"]) == step and r.get("replica", "A") == replica:
                v = finite(r.get(key))
                if v is not None:
                    out[str(r["question"])] = v
        return out

    def eval_record(self, step: int, replica: str = "A") -> dict | None:
        """The evaluation record of ``step`` (its metrics under ``eval/`` names), or None."""
        return next((r for r in self.evals if int(r["step"]) == step and r.get("replica", "A") == replica), None)

    def eval_value(self, step: int, name: str, replica: str = "A") -> float | None:
        """Evaluation metric ``name`` over all episodes at ``step``, or None (no record, not finite)."""
        return finite((self.eval_record(step, replica) or {}).get(names.evaluation(name)))


#: An arm folder's record files (``<run>/arms/<arm_id>/``, beside its ``arm.json``) and the
#: ArmData field each fills: what a run writes, merge copies and the report reads.
ARM_RECORD_FILES = {"metrics.jsonl": "steps", "eval.jsonl": "evals", "eval_questions.jsonl": "questions"}

#: The ``arm.json`` provenance fields every arm of one experiment shares (besides, per warm
#: start, its SFT stage key ``warm_start_key``), and what each is: what ``searchgym merge``
#: and ``searchgym compare`` check before treating runs as one experiment.
EXPERIMENT_PROVENANCE = {"preset": "preset", "config": "config hash", "code": "arm code fingerprint"}


def arm_dirs(run_dir: str | Path) -> list[Path]:
    """The arm folders of a run (those holding an ``arm.json``), sorted; [] without ``arms/``."""
    arms_dir = Path(run_dir) / "arms"
    if not arms_dir.is_dir():
        return []
    return sorted(p for p in arms_dir.iterdir()
                  if p.is_dir() and not p.name.startswith(".") and (p / "arm.json").exists())


def read_arm_json(path: Path) -> dict:
    """An ``arm.json``, checked for the keys every reader needs (one-line ValueError)."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc.msg})") from None
    missing = [k for k in ("arm_id", "warm_start", "objective", "seed") if k not in meta] \
        if isinstance(meta, dict) else ["(not an object)"]
    if missing:
        raise ValueError(f"{path}: missing keys {missing}")
    return meta


def read_provenanced_arms(run: str | Path, refused: type[ValueError] = ValueError) -> list[tuple[Path, dict]]:
    """A run's (arm folder, ``arm.json``) pairs, each checked to record its provenance (what
    ``searchgym merge`` and ``compare`` need to tell which experiment an arm belongs to);
    ``refused`` (one line) for a run without arms or an arm without provenance."""
    run = Path(run)
    try:
        arms = [(d, read_arm_json(d / "arm.json")) for d in arm_dirs(run)]
    except (OSError, ValueError) as exc:
        raise refused(str(exc)) from None
    why = "so which experiment it is (provenance.code and the rest) cannot be checked"
    if not arms:
        raise refused(f"{run}: no arms/*/arm.json (not a `searchgym run` folder?), {why}")
    for d, a in arms:
        if not isinstance(a.get("provenance"), dict):
            raise refused(f"{d / 'arm.json'}: no provenance (written before runs recorded it), {why}; "
                          "report that run on its own with `searchgym report`")
    return arms


def load_arms(run_dir: str | Path) -> list[ArmData]:
    """Read every ``arms/*/arm.json`` (+ jsonl records) under ``run_dir``."""
    arms_dir = Path(run_dir) / "arms"
    if not arms_dir.is_dir():
        raise FileNotFoundError(f"{arms_dir}: no arms folder (run `searchgym run` first)")
    arms = []
    for d in arm_dirs(run_dir):
        meta = read_arm_json(d / "arm.json")
        arm = ArmData(arm_id=meta["arm_id"], warm_start=meta["warm_start"], objective=meta["objective"],
                      seed=int(meta["seed"]), status=meta.get("status", "ok"), error=meta.get("error"),
                      wall_s=meta.get("wall_s"), build=str(meta.get("build") or ""))
        for name, attr in ARM_RECORD_FILES.items():
            path = d / name
            if path.exists():
                # the one read of the rows: old (un-namespaced) and new files read the same
                kind = names.STEP_RECORD if attr == "steps" else names.EVAL_RECORD
                recs = [names.normalize_record(r, kind) for r in read_jsonl(path)]
                for i, r in enumerate(recs):
                    if "step" not in r:
                        raise ValueError(f"{path}:{i + 1}: record has no 'step'")
                setattr(arm, attr, sorted(recs, key=lambda r: r["step"]))
        arms.append(arm)
    return arms


def finite(x: Any) -> float | None:
    """``x`` as a float, or None when it is not a finite number."""
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


# ----------------------------------------------------------------------------- effects


def _diff_bounds(m: Metric) -> tuple[float, float] | None:
    if m.bounds is None or not all(math.isfinite(b) for b in m.bounds):
        return None
    lo, hi = m.bounds
    return (lo - hi, hi - lo)


def _effect(a: Mapping[int, Mapping[str, float]], b: Mapping[int, Mapping[str, float]], m: Metric,
            seed: int = 0) -> dict:
    """Paired difference a - b (seeds -> questions -> value) with its interval and MDE."""
    seeds = sorted(set(a) & set(b))
    a = {s: a[s] for s in seeds if a[s]}
    b = {s: b[s] for s in seeds if b[s]}
    if not a or not b:
        return {"estimate": None, "ci_low": None, "ci_high": None, "mde": None, "n_seeds": 0,
                "reason": "no paired data"}
    builds = _builds(a)
    r = st.paired_difference(a, b, bounds=_diff_bounds(m), seed=seed, builds=builds)
    d = _result_dict(r)
    if builds:  # a report pooled over builds: how many this effect rests on
        d["n_builds"] = len(set(builds.values()))
    d["_result"] = r
    return d


def _builds(units) -> dict | None:
    """unit -> build for the bootstrap's build level (None when the units are plain seeds)."""
    builds = {u: u.build for u in units if isinstance(u, Unit)}
    return builds or None


def _result_dict(r: "st.BootstrapResult") -> dict:
    return {"estimate": finite(r.estimate), "ci_low": finite(r.ci_low), "ci_high": finite(r.ci_high),
            "mde": finite(r.mde()), "se": finite(r.se), "n_seeds": r.n_seeds, "n_questions": r.n_questions,
            "method": r.method, "reason": r.reason or None}


def _level(arms: list[ArmData], step_of, m: Metric, replica: str = "A") -> dict:
    """Mean of metric ``m`` over seeds then questions at each arm's ``step_of(arm)``, with its
    hierarchical-bootstrap interval."""
    return level({a.unit: a.per_question(step_of(a), m.name, replica) for a in arms}, m)


def level(vals: Mapping, m: Metric) -> dict:
    """Mean of metric ``m``'s per-question values ({unit: {question: value}}) over units then
    questions, with its hierarchical-bootstrap interval (builds resampled when units are
    :class:`Unit`)."""
    vals = {s: v for s, v in vals.items() if v}
    if not vals:
        return {"estimate": None, "ci_low": None, "ci_high": None}
    return _result_dict(st.hierarchical_bootstrap(vals, bounds=m.bounds if m.bounds and all(
        math.isfinite(x) for x in m.bounds) else None, builds=_builds(vals)))


def _final_step(arm: ArmData) -> int:
    steps = arm.eval_steps()
    return steps[-1] if steps else 0


def _by_seed(arms: list[ArmData], step_of, name: str, replica: str = "A") -> dict:
    """{unit: {question: value}}: the arms' per-question values by replicate (``ArmData.unit``)."""
    return {a.unit: a.per_question(step_of(a), name, replica) for a in arms}


# ----------------------------------------------------------------------------- controls


def control_status(ok: list[ArmData], metric_names: list[str]) -> dict[str, dict]:
    """Every control of every metric, and whether the metric may be used.

    - forced collapse (between-sample metrics): the evaluation recomputed with each
      question's samples replaced by copies of one; passes when every evaluation's
      (collapsed - floor) / (original - floor) <= COLLAPSE_MAX_RATIO;
    - null: replica A - replica B of the RL-start model, per warm start; passes when its
      NULL_CONFIDENCE interval contains 0; the half-width of its 95 % interval is the
      metric's noise floor;
    - untrained model (content metrics): the same token sequences teacher-forced through the
      trained and the untrained initial model at the RL start; passes when the paired
      difference's interval excludes 0;
    - length (length-free metrics): repeated-measures correlation with response length over
      questions at the RL start (subject: warm start x seed); fails when |r| >= LENGTH_MAX_R
      and its interval excludes 0.
    """
    out: dict[str, dict] = {}
    warm_starts = sorted({a.warm_start for a in ok})
    starts = _start_arms(ok)  # one arm per (warm start, seed): the RL-start evaluation is shared
    for name in metric_names:
        m = metric(name)
        row: dict = {"metric": name, "label": m.label, "failed": []}
        # -- forced collapse
        if m.floor is not None:
            ratios = []
            for a in ok:
                for r in a.evals:
                    c = ((r.get("controls") or {}).get("forced_collapse") or {}).get(name)
                    if isinstance(c, dict) and finite(c.get("ratio")) is not None:
                        ratios.append(float(c["ratio"]))
                    elif isinstance(c, dict) and finite(c.get("original")) is not None and \
                            finite(c.get("collapsed")) is not None and float(c["original"]) != m.floor:
                        ratios.append((float(c["collapsed"]) - m.floor) / (float(c["original"]) - m.floor))
            if ratios:
                worst = max(ratios)
                row["collapse"] = {"max_ratio": worst, "mean_ratio": float(np.mean(ratios)), "n": len(ratios),
                                   "passed": worst <= COLLAPSE_MAX_RATIO}
                if worst > COLLAPSE_MAX_RATIO:
                    row["failed"].append("forced collapse")
        # -- null
        nulls = {}
        for w in warm_starts:
            e = _start_effect(starts, w, (name, "A"), (name, "B"), m)
            r = e.pop("_result", None)
            if r is not None and e["estimate"] is not None:
                lo, hi = (finite(v) for v in r.interval(NULL_CONFIDENCE))
                e["ci99_low"], e["ci99_high"] = lo, hi
                e["passed"] = lo is not None and lo <= 0 <= hi
                e["noise_floor"] = (e["ci_high"] - e["ci_low"]) / 2
                nulls[w] = e
        if nulls:
            row["null"] = nulls
            if not all(v["passed"] for v in nulls.values()):
                row["failed"].append("null")
        # -- untrained model
        if m.content:
            unt = {}
            for w in warm_starts:
                e = _start_effect(starts, w, (f"trained_tf/{name}", "A"), (f"untrained_tf/{name}", "A"), m)
                e.pop("_result", None)
                if e["estimate"] is not None:
                    e["passed"] = not (e["ci_low"] <= 0 <= e["ci_high"])
                    unt[w] = e
            if unt:
                row["untrained"] = unt
                if not all(v["passed"] for v in unt.values()):
                    row["failed"].append("untrained model")
        # -- length
        if m.length_free:
            xs, ys, subj = [], [], []
            for a in starts:
                lens = a.per_question(0, "response_length")
                for q, v in a.per_question(0, name).items():
                    if q in lens:
                        xs.append(v), ys.append(lens[q]), subj.append(f"{a.warm_start}-{a.unit_label}")
            c = st.repeated_measures_correlation(xs, ys, subj) if len(xs) >= 4 else None
            if c is not None and finite(c.r) is not None:
                tracks = abs(c.r) >= LENGTH_MAX_R and not (c.ci_low <= 0 <= c.ci_high)
                row["length"] = {"r": c.r, "ci_low": finite(c.ci_low), "ci_high": finite(c.ci_high), "n": c.n,
                                 "passed": not tracks}
                if tracks:
                    row["failed"].append("length")
        row["usable"] = not row["failed"]
        out[name] = row
    return out


def _start_effect(starts: list[ArmData], warm: str, a: tuple[str, str], b: tuple[str, str], m: Metric) -> dict:
    """Paired difference at the RL start of one warm start's arms: (metric, replica) ``a``
    minus (metric, replica) ``b``."""
    arms_w = [x for x in starts if x.warm_start == warm]
    return _effect(_by_seed(arms_w, lambda x: 0, *a), _by_seed(arms_w, lambda x: 0, *b), m)


def _start_arms(ok: list[ArmData]) -> list[ArmData]:
    seen, out = set(), []
    for a in sorted(ok, key=lambda a: (objective_rank(a.objective), a.arm_id)):
        if (a.warm_start, a.unit) not in seen and a.eval_record(0, "A") is not None:
            seen.add((a.warm_start, a.unit))
            out.append(a)
    return out


# ----------------------------------------------------------------------------- analysis


def objective_rank(obj: str) -> int:
    """Where objective ``obj`` goes in the report's tables (GRPO, the reference, first)."""
    return _OBJECTIVE_ORDER.index(obj) if obj in _OBJECTIVE_ORDER else len(_OBJECTIVE_ORDER)


def _present_metrics(ok: list[ArmData]) -> list[str]:
    """The catalogue's metrics (then pass@k) that some per-question record holds a number for."""
    present = set()
    for a in ok:
        for r in a.questions:
            present.update(names.strip_namespace(k) for k, v in r.items()
                           if k.startswith(names.EVAL) and finite(v) is not None)
    found = [m.name for m in METRICS if m.name in present]
    found += sorted(k for k in present if k.startswith("pass@") and not k.endswith("_groups"))
    return found


def _mechanism(arms: list[ArmData], objective: str) -> dict:
    steps = [r for a in arms for r in a.steps]
    try:  # wall times (the diagnostic's own cost) are not a mechanism: run_time holds the run's times
        return {k: v for k, v in summarize_mechanism(steps, objective).items() if not k.startswith("time_")}
    except (KeyError, ValueError) as exc:
        return {"reason": f"no mechanism diagnostics: {exc}"}


def usable_arms(arms: list[ArmData]) -> list[ArmData]:
    """The arms the report analyses: finished, with their RL-start evaluation."""
    return [a for a in arms if a.status == "ok" and a.eval_record(0, "A") is not None]


def arm_groups(ok: list[ArmData]) -> dict[tuple[str, str], list[ArmData]]:
    """``ok``'s arms by (warm start, objective): arms that differ only by seed."""
    groups: dict[tuple[str, str], list[ArmData]] = {}
    for a in ok:
        groups.setdefault(a.group, []).append(a)
    return groups


def analyse(arms: list[ArmData], meta: dict | None = None) -> dict:
    """Every number of the report, as a JSON-ready dict."""
    meta = dict(meta or {})
    ok = usable_arms(arms)
    failed = [a for a in arms if a not in ok]
    groups = arm_groups(ok)
    metric_names = _present_metrics(ok)
    controls = control_status(ok, metric_names)

    # per arm group: levels at the RL start and the end, and the paired change
    table = []
    for g, members in sorted(groups.items(), key=lambda kv: (objective_rank(kv[0][1]), kv[0][0])):
        members = sorted(members, key=lambda a: a.unit)
        row: dict = {"warm_start": g[0], "objective": g[1], "seeds": [a.unit_label for a in members],
                     "final_step": min(_final_step(a) for a in members), "metrics": {}}
        for name in metric_names:
            m = metric(name)
            ch = _effect(_by_seed(members, _final_step, name), _by_seed(members, lambda a: 0, name), m)
            ch.pop("_result", None)
            row["metrics"][name] = {"start": _level(members, lambda a: 0, m), "final": _level(members, _final_step, m),
                                    "change": ch}
        row["mechanism"] = _mechanism(members, g[1])
        row["collapse_criterion"] = collapse_criterion(members)
        row["law"] = _law(members)
        row["wall_s"] = float(np.mean([a.wall_s for a in members if a.wall_s is not None] or [math.nan]))
        row["metrics_share"] = _metrics_share(members)
        table.append(row)

    vs_grpo = _vs_grpo(groups, metric_names)
    warm_cmp = _warm_start_comparison(groups, metric_names)
    correlations = _correlations(ok)
    question_correlations = _question_correlations(ok)
    claims = _claims(groups, controls, vs_grpo, warm_cmp, table)
    builds = sorted({a.build for a in ok if a.build})
    by_build = {}
    if len(builds) > 1:  # pooled over SFT builds: each build's own claims, analysed as a run of its own
        for b in builds:
            sub = analyse([a for a in arms if a.build == b])
            by_build[b] = [{"claim": c["claim"], "scope": c["scope"], "measurement": c["measurement"],
                            "verdict": c["verdict"], "effect": {k: c["effect"].get(k) for k in
                                                                ("estimate", "ci_low", "ci_high", "n_seeds")}}
                           for c in sub["claims"]]
    return _clean({
        "meta": meta,
        "run_time": parts_run_time(meta["parts"]) if meta.get("parts") else run_time(meta.get("stage_times") or {}),
        "rules": _rules(len(builds)),
        "arms": [{"arm_id": a.arm_id, "warm_start": a.warm_start, "objective": a.objective, "seed": a.seed,
                  **({"build": a.build} if a.build else {}),
                  "status": a.status if a in ok else ("failed" if a.status == "failed" else "no_eval"),
                  "error": a.error, "wall_s": a.wall_s, "steps": len(a.steps), "evals": len(a.evals)}
                 for a in arms],
        "failed_arms": [{"arm_id": a.arm_id, "error": a.error or "no evaluation records"} for a in failed],
        "claims": claims,
        **({"claims_by_build": by_build} if by_build else {}),
        "controls": controls,
        "table": table,
        "vs_grpo": vs_grpo,
        "warm_start_comparison": warm_cmp,
        "correlations": correlations,
        "question_correlations": question_correlations,
    })


#: The intervals rule's addition in a report pooled over SFT builds (``searchgym merge --builds``).
BUILDS_RULE = (
    ". THIS REPORT POOLS {builds} SFT BUILDS (each run's warm starts trained with its own SFT seed, the RL "
    "config and code identical): an effect whose arms come from two or more builds is the mean over builds of "
    "the mean over seeds, and its interval resamples builds, then seeds within a build, then questions, so it "
    "includes the variation between builds (column 'builds'); an effect resting on one build is conditional on "
    "it as above. With 3 builds x 3 seeds the three-level interval also under-covers when builds differ by more "
    "than the question-level error (simulated coverage of the 95% interval, 3 x 3 x 64, build sd / question se "
    "0 -> 0.99, 1 -> 0.92, 2 -> 0.81, 4 -> 0.78; the two-level interval on the same data: 0.99, 0.87, 0.67, "
    "0.59)"
)

#: The pilot's collapse criterion: RL has made the phenomenon when token entropy falls to at
#: most this share of its start (../shared/RESEARCH.md section 2).
COLLAPSE_CRITERION = 0.5


def collapse_criterion(members: list[ArmData]) -> dict:
    """Did token entropy fall to <= COLLAPSE_CRITERION of its start in every seed? Two
    readings: the training rollouts (mean ``entropy_mean`` of the last 10 % of steps over
    the first 10 %) and the fixed evaluation (final over RL start). A ratio, not a
    difference, because the criterion is stated as one; entropy starts well above 0."""
    train, ev = {}, {}
    for a in members:
        v = [x for x in (finite(r.get(names.TRAIN_ENTROPY)) for r in a.steps) if x is not None]
        if len(v) >= 2:
            w = max(1, len(v) // 10)
            first = float(np.mean(v[:w]))
            if first > 1e-6:
                train[a.unit_label] = float(np.mean(v[-w:])) / first
        h0 = a.eval_value(0, "entropy")
        h1 = a.eval_value(_final_step(a), "entropy")
        if h0 and h1 is not None and _final_step(a) > 0:
            ev[a.unit_label] = h1 / h0
    met = bool(train) and all(v <= COLLAPSE_CRITERION for v in train.values())
    return {"threshold": COLLAPSE_CRITERION, "train_entropy_ratio": train, "eval_entropy_ratio": ev,
            "met": met if train else None}


def run_time(stage_times: Mapping[str, dict]) -> dict:
    """The run's time from scratch, from the stages' own build times (a stage found in the
    cache still records how long it took to build): world + model + demos, the longest SFT
    warm start (they train side by side), the RL-start evaluations and the arms.
    ``approximate`` when the evaluations or arms were read from the cache (then their
    wall time is not their build time). ``builds``: the shared builds' stage keys and build
    times (world, model, demos, sft-*), which a merge counts once per key."""
    if not stage_times:
        return {"from_scratch_s": None, "approximate": True}
    builds = {k: {"key": v.get("key"), "built_s": float(v.get("built_s") or 0.0)} for k, v in stage_times.items()
              if k in _SHARED_BUILDS or k.startswith("sft-")}
    base, sft = _builds_time((n, b["built_s"]) for n, b in builds.items())
    rest = sum(float(stage_times.get(k, {}).get("wall_s") or 0.0) for k in ("start_evals", "arms"))
    approx = bool(stage_times.get("start_evals", {}).get("cached")) or not stage_times.get("arms")
    return {"from_scratch_s": base + sft + rest, "base_s": base, "sft_s": sft,
            "start_evals_s": float(stage_times.get("start_evals", {}).get("wall_s") or 0.0),
            "arms_s": float(stage_times.get("arms", {}).get("wall_s") or 0.0), "approximate": approx,
            "builds": builds}


_SHARED_BUILDS = ("world", "model", "demos")


def _builds_time(builds: Iterable[tuple[str, float]]) -> tuple[float, float]:
    """world + model + demos (one after another) and the longest SFT build (side by side),
    from (stage name, build time) pairs."""
    builds = list(builds)
    return (sum(t for n, t in builds if not n.startswith("sft-")),
            max([t for n, t in builds if n.startswith("sft-")] or [0.0]))


def parts_run_time(parts: list[dict]) -> dict:
    """A merged run's times (:mod:`searchgym.merge`). ``from_scratch_s``: the sum of its
    parts' (each part that built its own world and warm starts counts them: the compute
    spent). ``one_run_s``: one run from scratch resumed through the stage cache, as the
    parts measured it: every distinct shared build (world, model, demos, each SFT warm start,
    by stage key) once, plus every part's RL-start evaluations and arms; None when a part
    predates the recorded builds."""
    times = [finite(p.get("from_scratch_s")) for p in parts]
    out = {"from_scratch_s": sum(t for t in times if t is not None) if any(t is not None for t in times) else None,
           "parts_s": times, "approximate": any(t is None or p.get("approximate") for t, p in zip(times, parts))}
    # a build without its stage key cannot be matched to another part's: no one-run figure
    if parts and all(p.get("builds") and p.get("arms_s") is not None
                     and all(b.get("key") for b in p["builds"].values()) for p in parts):
        distinct: dict[tuple[str, str], float] = {}
        for p in parts:
            for name, b in p["builds"].items():
                distinct.setdefault((name, b["key"]), float(b["built_s"]))
        base, sft = _builds_time((n, t) for (n, _), t in distinct.items())
        out["one_run_s"] = base + sft + sum(float(p.get("start_evals_s") or 0.0) + float(p["arms_s"]) for p in parts)
    return out


def _metrics_share(members: list[ArmData]) -> float | None:
    stp = sum(finite(r.get(names.TIME_STEP)) or 0.0 for a in members for r in a.steps)
    mt = sum(finite(r.get(names.TIME_METRICS)) or 0.0 for a in members for r in a.steps)
    return mt / stp if stp > 0 else None


def _law(members: list[ArmData]) -> dict:
    """R = -a exp(H) + b on the fixed-evaluation points (accuracy vs token entropy) of every
    evaluation of the group's seeds, with bootstrap intervals and identification flags."""
    pts = {}
    for a in members:
        p = []
        for s in a.eval_steps():
            h, acc = a.eval_value(s, "entropy"), a.eval_value(s, "accuracy")
            if h is not None and acc is not None:
                p.append((h, acc))
        if p:
            pts[a.unit_label] = p
    if not pts:
        return {"reason": "no evaluation points"}
    fit = st.fit_entropy_law_bootstrap(pts)
    return fit.to_dict() if hasattr(fit, "to_dict") else dict(fit.__dict__)


def _vs_grpo(groups: dict, metric_names: list[str]) -> list[dict]:
    """Objective - GRPO at the end, paired within seed and warm start, per metric; accuracy
    also as a TOST equivalence test with margin ACCURACY_MARGIN."""
    out = []
    for (w, obj), members in sorted(groups.items(), key=lambda kv: (objective_rank(kv[0][1]), kv[0][0])):
        base = groups.get((w, "grpo"))
        if obj == "grpo" or not base:
            continue
        row = {"warm_start": w, "objective": obj, "metrics": {}}
        for name in metric_names:
            m = metric(name)
            e = _effect(_by_seed(members, _final_step, name), _by_seed(base, _final_step, name), m)
            r = e.pop("_result", None)
            if name == "accuracy" and r is not None:
                eq = st.equivalence_test(r, ACCURACY_MARGIN)
                e["equivalence"] = eq.to_dict()
            row["metrics"][name] = e
        out.append(row)
    return out


def _warm_start_comparison(groups: dict, metric_names: list[str]) -> list[dict]:
    """Diverse - narrow, paired within seed (same questions, same sampling seeds), at the RL
    start and at the end, per objective."""
    out = []
    for obj in sorted({g[1] for g in groups}, key=objective_rank):
        d, n = groups.get(("diverse", obj)), groups.get(("narrow", obj))
        if not d or not n:
            continue
        row = {"objective": obj, "start": {}, "final": {}}
        for name in metric_names:
            m = metric(name)
            for when, step_of in (("start", lambda a: 0), ("final", _final_step)):
                e = _effect(_by_seed(d, step_of, name), _by_seed(n, step_of, name), m)
                e.pop("_result", None)
                row[when][name] = e
        out.append(row)
    return out


_CORRELATION_PAIRS = (("entropy", "group_er_resid"), ("entropy", "aligned_er"), ("entropy", "strategy_entropy"),
                      ("entropy", "graph_cycle_rate"), ("entropy", "qgraph_cycle_rate"))


def _correlations(ok: list[ArmData]) -> list[dict]:
    """Token entropy against the hidden-state and strategy metrics, two ways that respect
    the dependence of steps within an arm: Spearman over per-arm changes (final - start of
    the evaluation means; n = arms) and the repeated-measures correlation over evaluation
    points (subject = arm)."""
    out = []
    for kx, ky in _CORRELATION_PAIRS:
        dx, dy, xs, ys, subj = {}, {}, [], [], []
        for a in ok:
            steps = a.eval_steps()
            vx = [a.eval_value(s, kx) for s in steps]
            vy = [a.eval_value(s, ky) for s in steps]
            pairs = [(x, y) for x, y in zip(vx, vy) if x is not None and y is not None]
            if len(pairs) >= 2:
                dx[a.arm_id], dy[a.arm_id] = pairs[-1][0] - pairs[0][0], pairs[-1][1] - pairs[0][1]
            for x, y in pairs:
                xs.append(x), ys.append(y), subj.append(a.arm_id)
        if not xs:
            continue
        ch = st.change_correlation(dx, dy)
        rm = st.repeated_measures_correlation(xs, ys, subj)
        out.append({"x": kx, "y": ky, "change": ch.to_dict(), "repeated_measures": rm.to_dict()})
    return out


_QUESTION_PAIRS = (("graph_cycle_rate", "accuracy"), ("qgraph_cycle_rate", "accuracy"),
                   ("query_exact_cycle_rate", "accuracy"), ("strategy_entropy", "accuracy"))


def _question_correlations(ok: list[ArmData]) -> list[dict]:
    """Per-question metric vs accuracy at the RL start and at the end: the repeated-measures
    correlation over questions, subject = arm (at the RL start, one arm per warm start and
    seed, since the start evaluation is shared)."""
    out = []
    for kx, ky in _QUESTION_PAIRS:
        for when, arms, step_of in (("start", _start_arms(ok), lambda a: 0), ("final", ok, _final_step)):
            xs, ys, subj = [], [], []
            for a in arms:
                vy = a.per_question(step_of(a), ky)
                for q, x in a.per_question(step_of(a), kx).items():
                    if q in vy:
                        xs.append(x), ys.append(vy[q]), subj.append(a.arm_id)
            if len(xs) >= 4:
                out.append({"x": kx, "y": ky, "when": when,
                            **st.repeated_measures_correlation(xs, ys, subj).to_dict()})
    return out


# ----------------------------------------------------------------------------- claims


def _rules(builds: int = 0) -> dict:
    """The report's rules; ``builds`` > 1: the report pools that many SFT builds."""
    return {
        "decrease": st.verdict_rule("decrease"),
        "increase": st.verdict_rule("increase"),
        "zero": st.verdict_rule("zero", margin=RELATIVE_MARGIN).replace(
            f"+-{RELATIVE_MARGIN:g}", f"+-margin ({RELATIVE_MARGIN:.0%} of the RL-start value)"),
        "equal_accuracy": f"accuracy is equal when the 90 % interval of objective - GRPO lies within "
                          f"+-{ACCURACY_MARGIN} (TOST at alpha 0.05)",
        "objective": (f"an objective keeps diversity at equal accuracy (supported) when its strategy-entropy "
                      f"difference to GRPO is supported as an increase AND accuracy is equal; contradicted when the "
                      f"strategy-entropy difference is contradicted or its accuracy interval lies wholly below "
                      f"-{ACCURACY_MARGIN}; otherwise inconclusive"),
        "controls": ("a metric is used for a claim only if it passed every control that applies to it, otherwise "
                     "the claim is 'not tested': forced collapse (between-sample metrics: (collapsed - floor) / "
                     f"(original - floor) <= {COLLAPSE_MAX_RATIO} in every evaluation), null (replica A - B of the "
                     f"RL-start model: the {NULL_CONFIDENCE:.0%} interval contains 0), untrained model (hidden-state "
                     "metrics: trained - untrained on the same tokens, 95 % interval excludes 0), length "
                     f"(length-free metrics: not |r| >= {LENGTH_MAX_R} with an interval excluding 0)"),
        "intervals": ("95 % percentile intervals of a two-level bootstrap (seeds, then questions within a seed) of "
                      "the paired per-question differences, clipped to the difference's range; with few seeds they "
                      "under-cover when the spread between seeds exceeds the question-level error (measured "
                      "coverage with 5 seeds: 0.94-0.98 up to a ratio of 1, 0.88 at 1.9, 0.84 at 4.8; "
                      "`searchgym.metrics.stats` docstring), so a verdict resting on 3 seeds is a first "
                      "measurement, not a replication. Every seed of a warm start starts RL from the same SFT "
                      "build (one per warm start), so the intervals are conditional on that build and leave out "
                      "the variation between builds; `searchgym compare` of two runs of one experiment whose "
                      "builds differ (e.g. on two CPUs) shows it" + (BUILDS_RULE.format(builds=builds) if builds > 1
                                                                      else "")),
        "mechanism": EQUIVALENCE_RULE,
        "margins": f"'does not change' margins: {RELATIVE_MARGIN:.0%} of the metric's RL-start value "
                   f"(hidden-state and graph metrics); accuracy: +-{ACCURACY_MARGIN} absolute",
    }


def claim_key(c: dict) -> tuple[str, str, str]:
    """What identifies a claim row across reports (runs, builds): (claim, scope, measurement)."""
    return c["claim"], c["scope"], c["measurement"]


def _claim_row(claim: str, measurement: str, name: str, effect: dict, direction: str, controls: dict,
               margin: float | None = None, scope: str = "") -> dict:
    row = {"claim": claim, "scope": scope, "metric": name, "measurement": measurement,
           "effect": {k: v for k, v in effect.items() if k != "_result"}, "direction": direction,
           "control": _control_text(controls.get(name))}
    if controls.get(name) is not None and not controls[name]["usable"]:
        row["verdict"] = "not tested (instrument failed: " + ", ".join(controls[name]["failed"]) + ")"
        return row
    r = effect.get("_result")
    if r is None:
        row["verdict"] = "not measured (" + (effect.get("reason") or "no data") + ")"
        return row
    if direction == "zero" and not margin:
        row["verdict"] = "not measured (its RL-start value is 0, so there is no relative margin to test within)"
        return row
    v = st.verdict(r, direction=direction, margin=margin)
    row["verdict"] = v.outcome
    row["verdict_reason"] = v.reason
    row["margin"] = margin
    return row


def mech_text(mech: dict | None) -> str:
    """An objective's mechanism verdict with the figures that decided it."""
    if not mech:
        return "n/a"
    if not mech.get("verdict"):
        return mech.get("reason") or "n/a"
    bits = []
    if mech.get("grad_cos_grpo_median") is not None:
        bits.append(f"grad cos to GRPO {mech['grad_cos_grpo_median']:.4f}")
    if mech.get("mechanism_share_median") is not None:
        bits.append(f"acts on {100 * mech['mechanism_share_median']:.2f}% of tokens")
    return mech["verdict"] + (f" ({', '.join(bits)})" if bits else "")


def _control_text(c: dict | None) -> str:
    if c is None:
        return "n/a"
    parts = []
    if "collapse" in c:
        parts.append(f"collapse {c['collapse']['max_ratio']:.2f}{'' if c['collapse']['passed'] else ' FAILED'}")
    if "null" in c:
        ok = all(v["passed"] for v in c["null"].values())
        floor = max(v["noise_floor"] for v in c["null"].values())
        parts.append(f"null +-{floor:.3g}{'' if ok else ' FAILED'}")
    if "untrained" in c:
        ok = all(v["passed"] for v in c["untrained"].values())
        parts.append("untrained " + ("differs" if ok else "FAILED (no difference)"))
    if "length" in c:
        parts.append(f"length r={c['length']['r']:.2f}{'' if c['length']['passed'] else ' FAILED'}")
    return "; ".join(parts) or "none applies"


def _claims(groups: dict, controls: dict, vs_grpo: list[dict], warm_cmp: list[dict], table: list[dict]) -> list[dict]:
    rows = []
    rows_by = {(r["warm_start"], r["objective"]): r for r in table}

    def change_effect(w: str, obj: str, name: str) -> dict:
        members = groups.get((w, obj)) or []
        return _effect(_by_seed(members, _final_step, name), _by_seed(members, lambda a: 0, name), metric(name))

    def start_value(w: str, obj: str, name: str) -> float | None:
        r = rows_by.get((w, obj))
        return r["metrics"].get(name, {}).get("start", {}).get("estimate") if r else None

    for w in sorted({g[0] for g in groups}):
        if (w, "grpo") not in groups:
            continue
        scope = f"grpo / {w}"
        rows.append(_claim_row("Token entropy collapses under RL", "final - RL start, token entropy (nats)",
                               "entropy", change_effect(w, "grpo", "entropy"), "decrease", controls, scope=scope))
        for name in ("group_er_resid", "aligned_er"):
            sv = start_value(w, "grpo", name)
            margin = RELATIVE_MARGIN * sv if sv else None
            rows.append(_claim_row("Hidden-state rank does not collapse", f"final - RL start, {metric(name).label}",
                                   name, change_effect(w, "grpo", name), "zero", controls, margin=margin, scope=scope))
        rows.append(_claim_row("Strategies collapse under RL", "final - RL start, " + metric("strategy_entropy").label,
                               "strategy_entropy", change_effect(w, "grpo", "strategy_entropy"), "decrease", controls,
                               scope=scope))
        for name in ("graph_cycle_rate", "qgraph_cycle_rate"):
            if name in controls:
                rows.append(_claim_row("Cycles survive token-entropy collapse", f"final - RL start, {metric(name).label}",
                                       name, change_effect(w, "grpo", name), "zero", controls,
                                       margin=RELATIVE_MARGIN * (start_value(w, "grpo", name) or 0) or None,
                                       scope=scope))
    for row in warm_cmp:
        if row["objective"] != "grpo":
            continue
        d, n = groups[("diverse", "grpo")], groups[("narrow", "grpo")]
        e = _effect(_by_seed(d, _final_step, "strategy_entropy"), _by_seed(n, _final_step, "strategy_entropy"),
                    metric("strategy_entropy"))
        rows.append(_claim_row("Diverse SFT keeps strategy breadth through RL",
                               "diverse - narrow at the end, " + metric("strategy_entropy").label, "strategy_entropy",
                               e, "increase", controls, scope="grpo"))
    for vg in vs_grpo:
        w, obj = vg["warm_start"], vg["objective"]
        members, base = groups[(w, obj)], groups[(w, "grpo")]
        div = _effect(_by_seed(members, _final_step, "strategy_entropy"), _by_seed(base, _final_step, "strategy_entropy"),
                      metric("strategy_entropy"))
        row = _claim_row(f"{obj} keeps strategy diversity at equal accuracy",
                         f"{obj} - grpo at the end, strategy entropy; accuracy TOST +-{ACCURACY_MARGIN}",
                         "strategy_entropy", div, "increase", controls, scope=f"{obj} / {w}")
        eq = vg["metrics"].get("accuracy", {}).get("equivalence")
        row["accuracy_equivalence"] = eq
        row["mechanism"] = mech_text((rows_by.get((w, obj)) or {}).get("mechanism"))
        acc = vg["metrics"].get("accuracy") or {}
        below = acc.get("ci_high") is not None and acc["ci_high"] < -ACCURACY_MARGIN
        if below and not row["verdict"].startswith("not tested"):
            # the rule's second branch needs no diversity number: it loses accuracy
            row["verdict"] = "contradicted"
            row["verdict_reason"] = "accuracy is lower than GRPO's by more than the margin"
        elif row["verdict"] in ("supported", "contradicted", "inconclusive at this power") and eq is not None:
            if row["verdict"] == "supported" and not eq.get("equivalent"):
                row["verdict"] = "inconclusive at this power"
                row["verdict_reason"] = "diversity rises but accuracy is not shown equal (TOST)"
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- JSON


def _clean(obj: Any) -> Any:
    """JSON-ready: numpy scalars to Python, non-finite floats to None, results dropped."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items() if not str(k).startswith("_") and k != "boot"}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return finite(obj)
    if isinstance(obj, np.ndarray):
        return None
    return obj


