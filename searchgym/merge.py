"""``searchgym merge``: one report over the arms of several runs of one experiment.

A preset too long for one sitting (``full``: about 4 h on 2 cores) runs in parts, whole
seeds at a time (``searchgym run --preset full --seeds 0,1``, later ``--seeds 2,3,4``,
possibly on another machine); merge checks that the parts are the same experiment and
writes the report over all of them. The parts are the same experiment when every arm
records (``arm.json`` ``provenance``, written by :mod:`searchgym.experiment`) the same
preset, the same config hash (everything but which arms run), the same arm code
fingerprint and, per warm start, the same SFT stage key. The warm starts' weights may
differ between parts (the same SFT on another CPU rounds differently); within one seed
they may not, since a seed's comparisons are paired (its objectives, its RL start and its
two warm starts are compared against each other). An arm id in two parts is refused.

Nothing of the parts is changed: their arm files are copied into ``OUT/arms``, the parts'
own headers (times, machines, warm-start hashes) into ``OUT/merge.json`` and the report's
header, and the report is computed from the copies exactly as for a single run.

``--builds`` (``merge_runs(..., builds=True)``, :func:`check_builds`) pools runs that are one experiment except for their SFT
warm starts: each run trained its own build (``--set sft.seed=K``), with the same preset,
arm code and everything else of the config. Every run's config hash must be the preset's
with the ``--set`` assignments its report records, and those may differ between runs only
in ``sft.*``; no two runs may share an SFT stage key. Each run becomes build ``b<i>`` (in
the order given): its arms are copied as ``OUT/arms/b<i>-<arm_id>`` with ``build`` in their
``arm.json``, and the report's replicate is (build, seed), with builds resampled above seeds
(:mod:`searchgym.metrics.stats`), so its intervals include the variation between builds.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from searchgym.analysis import ARM_RECORD_FILES, EXPERIMENT_PROVENANCE, read_provenanced_arms, run_time
from searchgym.presets import get_preset, overrides_from_notes, with_overrides
from searchgym.report import write_report
from searchgym.retrieval.fileio import atomic_dir, atomic_write_json

MARKER = "merge.json"
ARM_FILES = ("arm.json", *ARM_RECORD_FILES)


class MergeRefused(ValueError):
    """The runs cannot be one report (one line saying why)."""


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise MergeRefused(f"{path}: cannot be read as JSON ({exc})") from None


def _read_part(run: Path) -> tuple[dict, list[tuple[Path, dict]]]:
    """A part's report meta and its (arm folder, arm.json) pairs."""
    arms = read_provenanced_arms(run, MergeRefused)
    rep = run / "report.json"
    meta = (_read_json(rep).get("meta") or {}) if rep.is_file() else {}
    return meta, arms


def check_parts(parts: dict[Path, list[tuple[Path, dict]]]) -> None:
    """Raise :class:`MergeRefused` unless the parts' arms are one experiment (module doc)."""
    ref_dir, ref = None, None
    ws_ref: dict[str, tuple[Path, str]] = {}
    seen: dict[str, Path] = {}
    weights: dict[tuple[int, str], tuple[Path, str]] = {}
    for run, arms in parts.items():
        for d, a in arms:
            p = a["provenance"]
            if ref is None:
                ref_dir, ref = d, p
            for k, what in EXPERIMENT_PROVENANCE.items():
                if p.get(k) != ref.get(k):
                    hint = " (runs whose SFT builds differ pool with --builds)" if k == "config" else ""
                    raise MergeRefused(f"{d}: its {what} ({p.get(k)}) differs from {ref_dir}'s ({ref.get(k)}): "
                                       f"not the same experiment{hint}")
            ws = a["warm_start"]
            key = p.get("warm_start_key")
            if ws in ws_ref and ws_ref[ws][1] != key:
                raise MergeRefused(f"{d}: its {ws} warm start's SFT stage key ({key}) differs from "
                                   f"{ws_ref[ws][0]}'s ({ws_ref[ws][1]}): not the same experiment")
            ws_ref.setdefault(ws, (d, key))
            if a["arm_id"] in seen:
                raise MergeRefused(f"arm {a['arm_id']} is in both {seen[a['arm_id']]} and {run}; "
                                   "merge parts with disjoint seeds")
            seen[a["arm_id"]] = run
            sha, slot = p.get("warm_start_sha256"), (int(a["seed"]), ws)
            if slot in weights and weights[slot][1] != sha:
                raise MergeRefused(f"seed {slot[0]}: its {ws} arms used different warm-start weights "
                                   f"({weights[slot][0]} and {d}); a seed's comparisons are paired, so "
                                   "all its arms must share one warm start")
            weights.setdefault(slot, (d, sha))


def _sft_overrides(run: Path, meta: dict, arms: list[tuple[Path, dict]]) -> tuple[list[str], list[str]]:
    """(its ``sft.*`` assignments, the others) of a run, after checking that its config hash
    is the preset's with the assignments its report records (:class:`MergeRefused` if not)."""
    from searchgym.experiment import experiment_config_key

    prov = arms[0][1]["provenance"]
    overrides = overrides_from_notes(meta.get("notes"))
    try:
        key = experiment_config_key(with_overrides(get_preset(prov.get("preset")), overrides))
    except ValueError as exc:
        raise MergeRefused(f"{run}: its preset and overrides cannot be rebuilt ({exc})") from None
    if key != prov.get("config"):
        raise MergeRefused(f"{run}: its config hash ({prov.get('config')}) is not the {prov.get('preset')} preset's "
                           f"with the overrides its report records ({overrides or 'none'}: {key}); cannot verify "
                           "that it differs from the other runs only in its SFT config")
    sft = [o for o in overrides if o.split("=", 1)[0].strip().startswith("sft.")]
    return sft, [o for o in overrides if o not in sft]


def check_builds(metas: dict[Path, dict], parts: dict[Path, list[tuple[Path, dict]]]) -> dict[Path, list[str]]:
    """Raise :class:`MergeRefused` unless every run is one experiment on its own and the runs
    differ only in their SFT config, each its own build (module doc); returns each run's
    ``sft.*`` assignments."""
    sft: dict[Path, list[str]] = {}
    other_ref: tuple[Path, list[str]] | None = None
    keys: dict[tuple[str, str], Path] = {}
    first = next(iter(parts.values()))[0]
    for run, arms in parts.items():
        check_parts({run: arms})
        for k in ("preset", "code"):
            mine, ref = arms[0][1]["provenance"].get(k), first[1]["provenance"].get(k)
            if mine != ref:
                raise MergeRefused(f"{run}: its {EXPERIMENT_PROVENANCE[k]} ({mine}) differs from {first[0]}'s "
                                   f"({ref}): not one experiment")
        sft[run], other = _sft_overrides(run, metas[run], arms)
        if other_ref is None:
            other_ref = (run, other)
        elif sorted(other) != sorted(other_ref[1]):
            raise MergeRefused(f"{run}: its non-SFT overrides ({other or 'none'}) differ from {other_ref[0]}'s "
                               f"({other_ref[1] or 'none'}): the builds must differ only in sft.*")
        for _, a in arms:
            slot = (a["warm_start"], a["provenance"].get("warm_start_key"))
            if keys.setdefault(slot, run) != run:
                raise MergeRefused(f"{run} and {keys[slot]} share the {slot[0]} warm start's SFT build ({slot[1]}): "
                                   "parts of one build merge without --builds")
    return sft


def merged_meta(out: Path, metas: dict[Path, dict], parts: dict[Path, list[tuple[Path, dict]]],
                builds: dict[Path, str] | None = None) -> dict:
    """The report header of the merge: the parts' common fields, the union of their arms,
    and one entry per part (its seeds, time from scratch, machine, warm-start weights; with
    ``builds`` (run -> build label) also its build)."""
    first = next(iter(metas.values()))
    arms = [a for arms in parts.values() for _, a in arms]

    def ordered(field: str, key: str) -> list:
        pref = [x for m in metas.values() for x in m.get(field, [])]
        vals = {a[key] for a in arms}
        return [x for x in dict.fromkeys(pref) if x in vals] + sorted(vals - set(pref))

    entries = []
    for run, part_arms in parts.items():
        m = metas[run]
        rt = run_time(m.get("stage_times") or {})
        entries.append({
            "run": str(run), "seeds": sorted({int(a["seed"]) for _, a in part_arms}), "arms": len(part_arms),
            "from_scratch_s": rt.get("from_scratch_s"), "approximate": rt.get("approximate", True),
            **{k: rt[k] for k in ("start_evals_s", "arms_s", "builds") if k in rt},
            "machine": m.get("machine"),
            "warm_start_sha256": {a["warm_start"]: a["provenance"].get("warm_start_sha256") for _, a in part_arms},
            **({"build": builds[run]} if builds else {}),
        })
    notes = list(dict.fromkeys(n for m in metas.values() for n in m.get("notes", [])))
    for ws in ordered("warm_starts", "warm_start") if not builds else ():
        shas = {e["warm_start_sha256"].get(ws) for e in entries if ws in e["warm_start_sha256"]}
        if len(shas) > 1:
            notes.append(f"the {ws} warm start was built once per part ({len(shas)} builds: same SFT config and "
                         "code, weights that differ bit-for-bit, e.g. rounded by another CPU); each seed's "
                         "comparisons are paired within its one build, and the builds' difference is part of the "
                         "spread between seeds")
    return {
        "name": out.name, "preset": first.get("preset") or arms[0]["provenance"]["preset"],
        "objectives": ordered("objectives", "objective"), "warm_starts": ordered("warm_starts", "warm_start"),
        "seeds": sorted({int(a["seed"]) for a in arms}), "rl_steps": first.get("rl_steps"),
        "eval": first.get("eval"), "workers": first.get("workers"), "threads_per_worker": first.get("threads_per_worker"),
        "cpus": first.get("cpus"), "notes": notes, "parts": entries,
    }


def merge_runs(out: str | Path, runs: list[str | Path], builds: bool = False) -> dict:
    """Copy the arms of ``runs`` into ``out/arms`` after :func:`check_parts` (``builds``:
    :func:`check_builds`, each run one SFT build, module doc), write ``out/merge.json`` and
    the report; returns the report dict. ``out`` may not be one of the runs (the caller
    checks it is new, empty or an earlier merge)."""
    out = Path(out)
    runs = [Path(r) for r in runs]
    if not runs:
        raise MergeRefused("nothing to merge: name at least one run folder")
    if len({r.resolve() for r in runs}) != len(runs):
        raise MergeRefused("a run folder is named twice")
    if any(r.resolve() == out.resolve() for r in runs):
        raise MergeRefused(f"{out}: the output is one of the runs; write the merge to a new folder")
    metas, parts = {}, {}
    for r in runs:
        metas[r], parts[r] = _read_part(r)
    labels = None
    if builds:
        sft = check_builds(metas, parts)
        labels = {r: f"b{i}" for i, r in enumerate(runs)}
    else:
        check_parts(parts)
    meta = merged_meta(out, metas, parts, labels)
    if labels:
        meta["builds"] = [{"build": labels[r], "run": str(r), "sft_overrides": sft[r],
                           "warm_start_key": {a["warm_start"]: a["provenance"].get("warm_start_key") for _, a in parts[r]}}
                          for r in runs]
    out.mkdir(parents=True, exist_ok=True)
    for name in ("report.json", "report.md"):  # no stale report if the copy below fails
        (out / name).unlink(missing_ok=True)
    with atomic_dir(out / "arms") as tmp:
        for run, arms in parts.items():
            for d, a in arms:
                arm_id = f"{labels[run]}-{a['arm_id']}" if labels else a["arm_id"]
                dst = tmp / arm_id
                dst.mkdir()
                for name in ARM_FILES:
                    if (d / name).is_file():
                        shutil.copyfile(d / name, dst / name)
                if labels:  # the copy names its build; the run's own arm.json is not touched
                    atomic_write_json(dst / "arm.json", {**a, "arm_id": arm_id, "build": labels[run]})
    atomic_write_json(out / MARKER, {"parts": meta["parts"], **({"builds": meta["builds"]} if labels else {})})
    return write_report(out, meta=meta)
