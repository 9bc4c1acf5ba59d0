"""Measured sweeps that choose preset settings (``python -m searchgym.sweeps sft --out DIR``).

``sft``: which SFT warm start gives RL room to collapse. One SFT run per demo set (warm
start) and recipe, measured after every epoch (so one run answers "how many epochs"):

* ``greedy_accuracy``: greedy accuracy on the first ``greedy_questions`` validation
  questions of the evaluation family (the same path as the SFT log,
  :func:`searchgym.training.common.evaluate`);
* for each RL sampling temperature T: ``sample_questions`` validation questions x
  ``samples`` rollouts with the project's :class:`~searchgym.agents.rollout.RolloutEngine`
  laid out as RL samples them (the preset's ``max_new_tokens`` and ``max_turns``), and
  their token entropy (pooled mean over policy tokens, at T, verl's logged entropy),
  sampled accuracy, format-error rate and the share of question groups whose rewards
  differ (a GRPO group without reward spread has zero advantage).

Tuning uses the validation split only (the test split is the experiment's evaluation).
The world, tiny model and demos come from the main job's stage cache
(``<out>/cache``, same keys as ``searchgym run`` with the same preset), so a sweep and the
main job share them. Results go to ``<out>/sweeps/sft/<recipe>-<warm>/results.jsonl`` one
line per epoch, appended as they are measured (an interrupted sweep keeps what it
measured); ``table`` collects every run under ``<out>/sweeps/sft`` into ``sweep.json`` +
``sweep.md`` and applies :func:`choose`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from searchgym.retrieval.fileio import append_jsonl, atomic_write_json, atomic_write_text

__all__ = ["SFTRecipe", "SFTSweepConfig", "SelectionRule", "recipe_tag", "measure_policy", "sweep_sft",
           "remeasure_sft", "load_results", "choose", "write_tables", "main"]


@dataclass(frozen=True)
class SFTRecipe:
    """One SFT recipe of the sweep: overrides of the preset's SFTConfig."""

    epochs: int = 7
    lr: float = 6e-3
    min_lr_ratio: float = 0.1
    label_smoothing: float = 0.0


@dataclass
class SFTSweepConfig:
    """What one ``sweeps sft`` invocation trains and measures."""

    out: str = ""  # run folder (its cache/ is the main job's stage cache)
    preset: str = "small"
    warm_starts: tuple[str, ...] = ("narrow", "diverse")
    recipe: SFTRecipe = field(default_factory=SFTRecipe)
    temperatures: tuple[float, ...] = (0.7, 1.0, 1.2)
    sample_questions: int = 32
    samples: int = 8
    greedy_questions: int = 64
    family: str = "multi_hop"
    split: str = "validation"
    measure_epochs: tuple[int, ...] = ()  # () = every epoch
    threads: int = 1
    seed: int = 0
    progress: bool = True


@dataclass(frozen=True)
class SelectionRule:
    """The brief's target: both warm starts sample at >= ``min_entropy`` nats at T, keep
    >= ``min_greedy_accuracy`` greedy accuracy, and differ by <= ``max_accuracy_gap``."""

    min_entropy: float = 0.3
    min_greedy_accuracy: float = 0.5
    max_accuracy_gap: float = 0.10


def recipe_tag(r: SFTRecipe) -> str:
    """Folder-safe name of a recipe, e.g. ``ep7-lr6e-03-min0.1-ls0``."""
    return f"ep{r.epochs}-lr{r.lr:.0e}-min{r.min_lr_ratio:g}-ls{r.label_smoothing:g}"


# ----------------------------------------------------------------------------- measuring


def group_reward_spread(trajs) -> float:
    """Share of question groups (``group_id``) whose rewards are not all equal."""
    groups: dict[Any, list[float]] = {}
    for t in trajs:
        groups.setdefault(t.group_id, []).append(float(t.reward))
    if not groups:
        return float("nan")
    return sum(max(r) - min(r) > 1e-9 for r in groups.values()) / len(groups)


def measure_policy(model, tokenizer, envs, *, temperatures: Sequence[float], sample_questions: int, samples: int,
                   greedy_questions: int, max_new_tokens: int, family: str, split: str, seed: int = 0) -> dict:
    """Greedy accuracy and, per temperature, sampled entropy/accuracy/spread of ``model``
    on the first questions of ``envs`` (all envs on one family and split).

    Returns ``{"greedy_accuracy", "greedy_format_error_rate", "greedy_questions",
    "by_temperature": {str(T): {...}}}``; each temperature entry has ``token_entropy``
    (pooled over policy tokens), ``token_entropy_top`` (top 20 % tokens), per-segment
    entropies, ``accuracy``, ``format_error_rate``, ``reward_spread_share``,
    ``policy_tokens_per_episode``, ``episodes``, ``groups`` and ``wall_s``.
    """
    import torch

    from searchgym.agents.policy import summarize
    from searchgym.agents.rollout import RolloutConfig, RolloutEngine
    from searchgym.agents.trajectory import question_count
    from searchgym.metrics.entropy import batch_token_entropy_stats
    from searchgym.training.common import evaluate

    total = question_count(envs[0])
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    g = evaluate(model, tokenizer, family=family, split=split, num_questions=greedy_questions, envs=envs,
                 seed=seed, max_new_tokens=max_new_tokens)
    out: dict[str, Any] = {"greedy_accuracy": g["accuracy"], "greedy_format_error_rate": g["format_error_rate"],
                           "greedy_questions": int(g["num_episodes"]), "greedy_wall_s": time.perf_counter() - t0,
                           "by_temperature": {}}
    qs = list(range(min(sample_questions, total)))
    for temp in temperatures:
        t1 = time.perf_counter()
        engine = RolloutEngine(model, tokenizer, RolloutConfig(
            temperature=float(temp), max_new_tokens=max_new_tokens, n=samples, seed=seed, max_batch_size=len(envs)))
        with torch.no_grad():
            trajs = engine.rollout_questions(envs, qs, n=samples)
        ent = batch_token_entropy_stats([t.entropies for t in trajs], [t.loss_mask for t in trajs],
                                        [t.segments for t in trajs])
        s = summarize(trajs)
        out["by_temperature"][f"{float(temp):g}"] = {
            "token_entropy": ent["entropy"], "token_entropy_top": ent["entropy_top"],
            **{k: v for k, v in ent.items() if k.startswith("entropy_") and k != "entropy_top_threshold"
               and k != "entropy_top"},
            "accuracy": s["accuracy"], "format_error_rate": s["format_error_rate"],
            "reward_mean": s["reward_mean"], "reward_spread_share": group_reward_spread(trajs),
            "policy_tokens_per_episode": s["policy_tokens_per_episode"], "episodes": len(trajs),
            "groups": len(qs), "wall_s": time.perf_counter() - t1,
        }
    model.train(was_training)
    return out


def _stage_inputs(preset, out: Path, progress: bool) -> dict:
    """world, model and demos stages of the main job (built or found in ``out/cache``)."""
    from searchgym.experiment import StageCache, base_stages

    stages = base_stages(preset, StageCache(out / "cache"))
    world, model, demos = stages["world"], stages["model"], stages["demos"]
    if progress:
        for r in (world, model, demos):
            print(f"[sweep] stage {r.name}: {'cached' if r.cached else 'built'} {r.path}", file=sys.stderr)
    return {"world": world, "model": model, "demos": demos}


def sweep_sft(cfg: SFTSweepConfig) -> list[Path]:
    """Train and measure ``cfg.recipe`` for every warm start; returns the run folders.

    Each run folder holds ``sft_log.jsonl``, ``epochs/epoch-<k>/`` (every epoch's model),
    ``model/`` (the last) and ``results.jsonl`` (one line per measured epoch). A run whose
    ``model/`` exists is skipped (its results are kept).
    """
    import torch

    from searchgym.experiment import run_lock
    from searchgym.presets import get_preset
    from searchgym.training.common import make_envs
    from searchgym.training.sft import train_sft

    if not cfg.out:
        raise ValueError("sweep: --out is required")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    preset = get_preset(cfg.preset)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = []
    with run_lock(out):  # the main job and a sweep must not build the same stage at once
        inputs = _stage_inputs(preset, out, cfg.progress)
    world_dir = inputs["world"].path / "world"
    rl = preset.rl
    n_envs = max(cfg.greedy_questions, min(64, cfg.sample_questions * cfg.samples))
    envs, _ = make_envs(cfg.family, min(n_envs, 64), cfg.split, str(world_dir), rl.max_turns, rl.retriever,
                        **rl.env_kwargs)
    r = cfg.recipe
    sft = dataclasses.replace(
        preset.sft, epochs=r.epochs, label_smoothing=r.label_smoothing, save_epochs=True, threads=cfg.threads,
        eval_every=0, seed=cfg.seed,
        optim=dataclasses.replace(preset.sft.optim, lr=r.lr, min_lr_ratio=r.min_lr_ratio))
    for warm in cfg.warm_starts:
        run_dir = out / "sweeps" / "sft" / f"{recipe_tag(r)}-{warm}"
        runs.append(run_dir)
        if (run_dir / "model").is_dir():
            print(f"[sweep] {run_dir.name}: done, skipped", file=sys.stderr)
            continue
        run_dir.mkdir(parents=True, exist_ok=True)
        results = run_dir / "results.jsonl"
        results.unlink(missing_ok=True)
        t_start = time.perf_counter()
        state = {"measure_s": 0.0}

        def hook(model, tok, epoch: int, step: int, warm=warm, results=results, t_start=t_start, state=state):
            if cfg.measure_epochs and epoch not in cfg.measure_epochs:
                return None
            t0 = time.perf_counter()
            m = measure_policy(model, tok, envs, temperatures=cfg.temperatures,
                               sample_questions=cfg.sample_questions, samples=cfg.samples,
                               greedy_questions=cfg.greedy_questions, max_new_tokens=rl.max_new_tokens,
                               family=cfg.family, split=cfg.split, seed=cfg.seed)
            state["measure_s"] += time.perf_counter() - t0
            rec = {"recipe": dataclasses.asdict(r), "recipe_tag": recipe_tag(r), "warm_start": warm,
                   "epoch": epoch, "step": step, "sft_s": time.perf_counter() - t_start - state["measure_s"],
                   "measure_s": time.perf_counter() - t0, "preset": cfg.preset,
                   "model_dir": str(run_dir / "epochs" / f"epoch-{epoch}"), **m}
            append_jsonl(results, rec)
            if cfg.progress:
                ts = "  ".join(f"T{k}: H={v['token_entropy']:.3f} acc={v['accuracy']:.2f} "
                               f"spread={v['reward_spread_share']:.2f} fmt={v['format_error_rate']:.2f}"
                               for k, v in m["by_temperature"].items())
                print(f"[sweep] {warm} epoch {epoch}: greedy {m['greedy_accuracy']:.3f}  {ts}", file=sys.stderr,
                      flush=True)
            return {"sweep_greedy_accuracy": m["greedy_accuracy"]}

        cfg_w = dataclasses.replace(sft, model=str(inputs["model"].path / "model"),
                                    demos=str(inputs["demos"].path / f"{warm}.jsonl"), out=str(run_dir),
                                    world=str(world_dir))
        train_sft(cfg_w, progress=cfg.progress, on_epoch_end=hook)
        atomic_write_json(run_dir / "run.json", {"wall_s": time.perf_counter() - t_start,
                                                 "measure_s": state["measure_s"], "threads": cfg.threads,
                                                 "recipe": dataclasses.asdict(r), "warm_start": warm})
    return runs


def remeasure_sft(cfg: SFTSweepConfig, run_names: Sequence[str] = ()) -> int:
    """Measure the saved epoch checkpoints of finished runs again at ``cfg.temperatures``
    (e.g. a temperature the first pass did not try) and merge the new temperatures into
    their ``results.jsonl`` records (greedy accuracy is measured again and must agree:
    the same model on the same questions). ``cfg.measure_epochs`` picks epochs (() = all
    recorded); ``run_names`` picks run folders under ``<out>/sweeps/sft`` (() = all).
    Returns the number of records updated."""
    import torch

    from searchgym.presets import get_preset
    from searchgym.retrieval.fileio import read_jsonl
    from searchgym.training.common import load_model, make_envs

    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    preset = get_preset(cfg.preset)
    root = Path(cfg.out) / "sweeps" / "sft"
    dirs = [root / n for n in run_names] if run_names else sorted(d for d in root.iterdir() if d.is_dir())
    envs = None
    updated = 0
    for d in dirs:
        results = d / "results.jsonl"
        if not results.is_file():
            raise FileNotFoundError(f"{results}: no results to extend (run `sweeps sft` first)")
        recs = read_jsonl(results)
        for rec in recs:
            if cfg.measure_epochs and rec["epoch"] not in cfg.measure_epochs:
                continue
            ckpt = d / "epochs" / f"epoch-{rec['epoch']}"
            if not ckpt.is_dir():
                raise FileNotFoundError(f"{ckpt}: checkpoint missing")
            if envs is None:
                world = Path(json.loads((ckpt / "searchgym_train.json").read_text(encoding="utf-8"))["world"])
                n_envs = max(cfg.greedy_questions, min(64, cfg.sample_questions * cfg.samples))
                envs, _ = make_envs(cfg.family, min(n_envs, 64), cfg.split, str(world), preset.rl.max_turns,
                                    preset.rl.retriever, **preset.rl.env_kwargs)
            model, tok = load_model(ckpt)
            m = measure_policy(model, tok, envs, temperatures=cfg.temperatures,
                               sample_questions=cfg.sample_questions, samples=cfg.samples,
                               greedy_questions=cfg.greedy_questions, max_new_tokens=preset.rl.max_new_tokens,
                               family=cfg.family, split=cfg.split, seed=cfg.seed)
            rec.setdefault("greedy_remeasured", []).append(m["greedy_accuracy"])
            rec["by_temperature"].update(m["by_temperature"])
            updated += 1
            if cfg.progress:
                print(f"[sweep] {d.name} epoch {rec['epoch']}: greedy {m['greedy_accuracy']:.3f} (was "
                      f"{rec['greedy_accuracy']:.3f}) " + "  ".join(
                          f"T{k}: H={v['token_entropy']:.3f} acc={v['accuracy']:.2f}"
                          for k, v in m["by_temperature"].items()), file=sys.stderr, flush=True)
            atomic_write_text(results, "".join(json.dumps(r) + "\n" for r in recs))
    return updated


# ----------------------------------------------------------------------------- tables


def load_results(root: str | Path) -> list[dict]:
    """Every epoch record under ``root`` (``*/results.jsonl``); torn lines are skipped."""
    recs = []
    for f in sorted(Path(root).glob("*/results.jsonl")):
        for line in f.read_text(encoding="utf-8").splitlines():
            try:
                recs.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return recs


def candidates(records: list[dict], warm_starts: Sequence[str] = ("narrow", "diverse")) -> list[dict]:
    """One row per (recipe, epoch, temperature) measured for every warm start."""
    by_key: dict[tuple, dict[str, dict]] = {}
    for rec in records:
        by_key.setdefault((rec["recipe_tag"], rec["epoch"]), {})[rec["warm_start"]] = rec
    rows = []
    for (tag, epoch), per in sorted(by_key.items()):
        if not all(w in per for w in warm_starts):
            continue
        temps = set.intersection(*(set(per[w]["by_temperature"]) for w in warm_starts))
        for temp in sorted(temps, key=float):
            row = {"recipe_tag": tag, "recipe": per[warm_starts[0]]["recipe"], "epoch": epoch, "temperature": float(temp)}
            for w in warm_starts:
                bt = per[w]["by_temperature"][temp]
                row[w] = {"greedy_accuracy": per[w]["greedy_accuracy"], "token_entropy": bt["token_entropy"],
                          "sampled_accuracy": bt["accuracy"], "reward_spread_share": bt["reward_spread_share"],
                          "format_error_rate": bt["format_error_rate"], "model_dir": per[w]["model_dir"]}
            accs = [row[w]["greedy_accuracy"] for w in warm_starts]
            row["accuracy_gap"] = max(accs) - min(accs)
            rows.append(row)
    return rows


def passes(row: dict, rule: SelectionRule, warm_starts: Sequence[str] = ("narrow", "diverse")) -> bool:
    return (all(row[w]["token_entropy"] >= rule.min_entropy for w in warm_starts)
            and all(row[w]["greedy_accuracy"] >= rule.min_greedy_accuracy for w in warm_starts)
            and row["accuracy_gap"] <= rule.max_accuracy_gap + 1e-12)


def choose(rows: list[dict], rule: SelectionRule = SelectionRule(),
           warm_starts: Sequence[str] = ("narrow", "diverse")) -> dict | None:
    """The passing row with the most GRPO signal: highest smaller-of-the-two share of
    groups with reward spread, then the higher smaller greedy accuracy; None if no row
    passes the rule."""
    ok = [r for r in rows if passes(r, rule, warm_starts)]
    if not ok:
        return None
    return max(ok, key=lambda r: (min(r[w]["reward_spread_share"] for w in warm_starts),
                                  min(r[w]["greedy_accuracy"] for w in warm_starts)))


def _f(x: float, nd: int = 3) -> str:
    return "nan" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.{nd}f}"


def write_tables(root: str | Path, dest: str | Path, rule: SelectionRule = SelectionRule(),
                 command: str = "", notes: Sequence[str] = ()) -> dict:
    """``dest/sweep.json`` (every epoch record, the candidate rows, the choice) and
    ``dest/sweep.md`` (the table, then ``notes`` one paragraph each) from the runs under
    ``root``."""
    records = load_results(root)
    rows = candidates(records)
    chosen = choose(rows, rule)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    runs = {}
    for f in sorted(Path(root).glob("*/run.json")):
        try:
            runs[f.parent.name] = json.loads(f.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            continue
    slim = [{k: v for k, v in r.items() if k != "model_dir"} for r in records]
    data = {"rule": dataclasses.asdict(rule), "records": slim, "runs": runs, "candidates": rows,
            "chosen": chosen, "command": command, "notes": list(notes)}
    atomic_write_json(dest / "sweep.json", data)
    lines = [
        "# SFT warm-start sweep",
        "",
        f"Rule: both warm starts >= {rule.min_entropy} nats mean token entropy over policy tokens at T, "
        f">= {rule.min_greedy_accuracy:.0%} greedy multi-hop validation accuracy, gap <= "
        f"{rule.max_accuracy_gap:.0%}; among passing rows the highest smaller share of groups with reward "
        "spread wins. Entropy, sampled accuracy, spread and format errors: validation questions x samples "
        "per question at T (RolloutEngine, RL's max_new_tokens and max_turns); greedy: 64 validation questions.",
        "",
    ]
    if command:
        lines += [f"Command: `{command}`", ""]
    lines += ["| recipe | epoch | T | H narrow | H diverse | greedy narrow | greedy diverse | sampled narrow | "
              "sampled diverse | spread narrow | spread diverse | fmt-err narrow | fmt-err diverse | pass |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        n, d = r["narrow"], r["diverse"]
        mark = "**chosen**" if chosen is r else ("yes" if passes(r, rule) else "")
        lines.append(f"| {r['recipe_tag']} | {r['epoch']} | {r['temperature']:g} | {_f(n['token_entropy'])} | "
                     f"{_f(d['token_entropy'])} | {_f(n['greedy_accuracy'])} | {_f(d['greedy_accuracy'])} | "
                     f"{_f(n['sampled_accuracy'])} | {_f(d['sampled_accuracy'])} | {_f(n['reward_spread_share'], 2)} | "
                     f"{_f(d['reward_spread_share'], 2)} | {_f(n['format_error_rate'], 2)} | "
                     f"{_f(d['format_error_rate'], 2)} | {mark} |")
    lone = sorted({(r["recipe_tag"], r["warm_start"]) for r in records} -
                  {(r["recipe_tag"], w) for r in rows for w in ("narrow", "diverse")})
    if lone:
        lines += ["", "Measured for one warm start only (not yet comparable): " +
                  ", ".join(f"{t} {w}" for t, w in lone)]
    if runs:
        lines += ["", "| run | wall s (SFT + measuring) | measuring s | threads |", "|---|---|---|---|"]
        for name, info in runs.items():
            lines.append(f"| {name} | {info['wall_s']:.0f} | {info['measure_s']:.0f} | {info['threads']} |")
    lines += ["", "Chosen: " + (f"{chosen['recipe_tag']} epoch {chosen['epoch']} at T = {chosen['temperature']:g}"
                                if chosen else "none passes the rule"), ""]
    if chosen:
        lines[-1:] = [f"Chosen models: narrow `{chosen['narrow']['model_dir']}`, diverse "
                      f"`{chosen['diverse']['model_dir']}`", ""]
    for note in notes:
        lines += [note, ""]
    atomic_write_text(dest / "sweep.md", "\n".join(lines))
    return data


# ----------------------------------------------------------------------------- CLI


def _floats(s: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in s.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {s!r}") from None


def _ints(s: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in s.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from None


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m searchgym.sweeps", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sft", help="train + measure one SFT recipe for each warm start (per epoch)")
    s.add_argument("--out", required=True, help="run folder (its cache/ is shared with `searchgym run`)")
    s.add_argument("--preset", default="small")
    s.add_argument("--warm-starts", default="narrow,diverse")
    s.add_argument("--epochs", type=int, default=7)
    s.add_argument("--lr", type=float, default=6e-3)
    s.add_argument("--min-lr-ratio", type=float, default=0.1)
    s.add_argument("--label-smoothing", type=float, default=0.0)
    s.add_argument("--temperatures", type=_floats, default=(0.7, 1.0, 1.2))
    s.add_argument("--sample-questions", type=int, default=32)
    s.add_argument("--samples", type=int, default=8)
    s.add_argument("--greedy-questions", type=int, default=64)
    s.add_argument("--measure-epochs", type=_ints, default=(), help="epochs to measure (default: all)")
    s.add_argument("--threads", type=int, default=1)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--results", default="", help="also write sweep.md/sweep.json here after the runs")
    s.add_argument("--no-progress", action="store_true")
    m = sub.add_parser("measure", help="measure saved epoch checkpoints again at more temperatures")
    m.add_argument("--out", required=True)
    m.add_argument("--preset", default="small")
    m.add_argument("--runs", default="", help="run folder names under <out>/sweeps/sft (default: all)")
    m.add_argument("--temperatures", type=_floats, required=True)
    m.add_argument("--measure-epochs", type=_ints, default=())
    m.add_argument("--sample-questions", type=int, default=32)
    m.add_argument("--samples", type=int, default=8)
    m.add_argument("--greedy-questions", type=int, default=64)
    m.add_argument("--threads", type=int, default=1)
    m.add_argument("--seed", type=int, default=0)
    t = sub.add_parser("table", help="collect the runs under <out>/sweeps/sft into sweep.md + sweep.json")
    t.add_argument("--out", required=True)
    t.add_argument("--results", required=True)
    t.add_argument("--command", default="", help="the command line to record in the table")
    t.add_argument("--note", action="append", default=[], help="a paragraph appended to sweep.md (repeatable)")
    args = p.parse_args(argv)
    from searchgym.experiment import RunFolderBusy

    try:
        if args.cmd == "sft":
            for name in ("epochs", "sample_questions", "samples", "greedy_questions"):
                if getattr(args, name) < 1:
                    raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
            if not args.temperatures or any(x <= 0 for x in args.temperatures):
                raise ValueError("--temperatures must be positive numbers")
            cfg = SFTSweepConfig(
                out=args.out, preset=args.preset, warm_starts=tuple(w for w in args.warm_starts.split(",") if w),
                recipe=SFTRecipe(epochs=args.epochs, lr=args.lr, min_lr_ratio=args.min_lr_ratio,
                                 label_smoothing=args.label_smoothing),
                temperatures=args.temperatures, sample_questions=args.sample_questions, samples=args.samples,
                greedy_questions=args.greedy_questions, measure_epochs=args.measure_epochs, threads=args.threads,
                seed=args.seed, progress=not args.no_progress)
            for w in cfg.warm_starts:
                if w not in ("narrow", "diverse"):
                    raise ValueError(f"unknown warm start {w!r}; choose from narrow, diverse")
            sweep_sft(cfg)
            if args.results:
                write_tables(Path(args.out) / "sweeps" / "sft", args.results,
                             command="python -m searchgym.sweeps " + " ".join(argv if argv is not None else sys.argv[1:]))
        elif args.cmd == "measure":
            if not args.temperatures or any(x <= 0 for x in args.temperatures):
                raise ValueError("--temperatures must be positive numbers")
            cfg = SFTSweepConfig(out=args.out, preset=args.preset, temperatures=args.temperatures,
                                 sample_questions=args.sample_questions, samples=args.samples,
                                 greedy_questions=args.greedy_questions, measure_epochs=args.measure_epochs,
                                 threads=args.threads, seed=args.seed)
            n = remeasure_sft(cfg, [r for r in args.runs.split(",") if r])
            print(f"updated {n} records", file=sys.stderr)
        else:
            write_tables(Path(args.out) / "sweeps" / "sft", args.results, command=args.command, notes=args.note)
    except (ValueError, FileNotFoundError, RunFolderBusy) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
