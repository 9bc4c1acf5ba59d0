"""Run every benchmark in this folder and collect their figures into one table.

Each benchmark prints, as its last stdout line, ``RESULT_JSON {"name": ..., "figures": {...}}``
(see docs/contracts.md). This script runs them one after another (never concurrently: the
figures are ratios measured side by side within one script, on a quiet machine), then
writes ``benchmarks/results.md`` and ``benchmarks/results.json`` with the machine described.

    python benchmarks/run_all.py [--quick] [--only retrieval,rollout]
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

HERE = Path(__file__).resolve().parent


def machine() -> dict:
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as f:
            info["mem_gib"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    return info


def run_one(script: Path, quick: bool) -> dict:
    cmd = [sys.executable, str(script)] + (["--quick"] if quick else [])
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    sys.stdout.write(proc.stdout)
    sys.stderr.write(proc.stderr[-4000:])
    result = {"name": script.stem, "wall_s": round(wall, 1), "returncode": proc.returncode}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT_JSON "):
            result.update(json.loads(line[len("RESULT_JSON "):]))
            break
    else:
        result["error"] = "no RESULT_JSON line" if proc.returncode == 0 else proc.stderr[-500:]
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="pass --quick to every benchmark")
    parser.add_argument("--only", default="", help="comma-separated benchmark names")
    args = parser.parse_args()
    only = {s for s in args.only.split(",") if s}
    scripts = sorted(p for p in HERE.glob("*.py") if p.stem not in {"run_all"} and not p.stem.startswith("_"))
    if only:
        scripts = [p for p in scripts if p.stem in only]
    results = [run_one(p, args.quick) for p in scripts]
    info = machine()
    lines = [
        "# Benchmark results",
        "",
        f"Machine: {info.get('cpu', '?')}, {info['cpus']} CPUs, {info.get('mem_gib', '?')} GiB, "
        f"{info['platform']}, Python {info['python']}, torch {info.get('torch', '-')}.",
        f"Command: `python benchmarks/run_all.py{' --quick' if args.quick else ''}` "
        f"({time.strftime('%Y-%m-%d')}).",
        "",
        "| benchmark | figure | value |",
        "|---|---|---|",
    ]
    failed = 0
    for r in results:
        if "figures" not in r:
            failed += 1
            lines.append(f"| {r['name']} | FAILED | {r.get('error', '')[:200]!r} |")
            continue
        for label, value in r["figures"].items():
            shown = f"{value:.3g}" if isinstance(value, float) else str(value)
            lines.append(f"| {r['name']} | {label} | {shown} |")
    (HERE / "results.md").write_text("\n".join(lines) + "\n")
    (HERE / "results.json").write_text(json.dumps({"machine": info, "results": results}, indent=2) + "\n")
    print("\n".join(lines))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
