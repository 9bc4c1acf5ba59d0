"""Run every benchmark in this folder and collect their figures into one table.

Each benchmark prints, as its last stdout line, ``RESULT_JSON {"name": ..., "figures": {...}}``
(see docs/contracts.md). This script runs them one after another (never concurrently: the
figures are ratios measured side by side within one script, on a quiet machine), then
writes ``benchmarks/results.md`` and ``benchmarks/results.json`` with the machine described,
each benchmark's wall time, and the load average when it started (a busy machine shows).
``--quick`` (smoke mode, seconds per benchmark) writes ``results-quick.md/json`` instead, so
a smoke run never overwrites the real figures.

    python benchmarks/run_all.py [--quick] [--only retrieval,rollout] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from searchgym.machine import machine_info

HERE = Path(__file__).resolve().parent

#: Run order: retrieval first (it needs the machine quiet for its server processes), then
#: the index, rollout and training benchmarks; scripts not listed run after, by name.
ORDER = ("retrieval", "index_build", "rollout", "token_drift", "trainer_step", "metrics_cost")


def discover() -> list[Path]:
    """Benchmark scripts in run order (``run_all`` and ``_helpers`` excluded)."""
    found = {p.stem: p for p in HERE.glob("*.py") if p.stem != "run_all" and not p.stem.startswith("_")}
    ordered = [found.pop(n) for n in ORDER if n in found]
    return ordered + [found[n] for n in sorted(found)]


def git_revision() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=HERE,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (rev or "unknown") + ("+dirty" if dirty else "")


def machine() -> dict:
    info = {**machine_info(measure=False), "python": platform.python_version(), "git": git_revision()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    try:
        import faiss

        info["faiss"] = faiss.__version__
    except (ImportError, AttributeError):
        pass
    return info


def run_one(script: Path, quick: bool) -> dict:
    cmd = [sys.executable, str(script)] + (["--quick"] if quick else [])
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"== {script.stem} ({' '.join(cmd[1:])}), load average {load:.2f}", flush=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    sys.stdout.write(proc.stdout)
    sys.stderr.write(proc.stderr[-4000:])
    result = {"name": script.stem, "wall_s": round(wall, 1), "load_avg_start": round(load, 2),
              "returncode": proc.returncode}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT_JSON "):
            try:
                result.update(json.loads(line[len("RESULT_JSON "):]))
            except json.JSONDecodeError as exc:
                result["error"] = f"bad RESULT_JSON line ({exc})"
            break
    else:
        result["error"] = "no RESULT_JSON line" if proc.returncode == 0 else proc.stderr[-500:]
    if proc.returncode != 0 and "error" not in result:
        result["error"] = f"exit status {proc.returncode}: {proc.stderr[-300:]}"
    return result


def render(results: list[dict], info: dict, command: str) -> str:
    lines = [
        "# Benchmark results",
        "",
        f"Machine: {info.get('cpu', '?')}, {info['cpus']} CPUs, {info.get('mem_gib', '?')} GiB, "
        f"{info['platform']}, Python {info['python']}, torch {info.get('torch', '-')}, "
        f"faiss {info.get('faiss', '-')}; searchgym {info['git']}.",
        f"Command: `{command}` ({time.strftime('%Y-%m-%d')}). Every figure is measured side by side "
        "within its own script; compare ratios, not absolute times, across machines.",
        "",
        "| benchmark | wall s | load avg at start | status |",
        "|---|---|---|---|",
    ]
    for r in results:
        status = "ok" if "figures" in r and r.get("returncode") == 0 else "FAILED"
        lines.append(f"| {r['name']} | {r['wall_s']} | {r['load_avg_start']} | {status} |")
    lines += ["", "| benchmark | figure | value |", "|---|---|---|"]
    for r in results:
        if "figures" not in r:
            lines.append(f"| {r['name']} | FAILED | {r.get('error', '')[:200]!r} |")
            continue
        for label, value in r["figures"].items():
            shown = f"{value:.3g}" if isinstance(value, float) else str(value)
            lines.append(f"| {r['name']} | {label} | {shown} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="pass --quick to every benchmark (smoke mode)")
    parser.add_argument("--only", default="", help="comma-separated benchmark names")
    parser.add_argument("--out", default="", help="folder for results(.md|.json) (default: benchmarks/)")
    args = parser.parse_args()
    scripts = discover()
    only = [s for s in args.only.split(",") if s]
    if only:
        known = {p.stem for p in scripts}
        unknown = [s for s in only if s not in known]
        if unknown:
            print(f"error: unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(p.stem for p in scripts)}",
                  file=sys.stderr)
            return 2
        scripts = [p for p in scripts if p.stem in only]
    out = Path(args.out) if args.out else HERE
    stem = "results-quick" if args.quick else "results"
    results = [run_one(p, args.quick) for p in scripts]
    info = machine()
    command = "python benchmarks/run_all.py" + (" --quick" if args.quick else "") + (
        f" --only {args.only}" if only else "")
    text = render(results, info, command)

    from searchgym.retrieval.fileio import atomic_write_json, atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / f"{stem}.md", text)
    atomic_write_json(out / f"{stem}.json", {"machine": info, "command": command, "results": results})
    print(text, end="")
    print(f"wrote {out / (stem + '.md')} and {out / (stem + '.json')}")
    return 1 if any("figures" not in r or r.get("returncode") != 0 for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
