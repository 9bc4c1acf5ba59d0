"""What machine a timing was measured on: CPU model, cores, memory and its fp32 matmul speed.

Wall times of the same job differ by 1.5-3x between the 2-core machines this project runs
on (an AVX-512 Xeon measured ~165 GFLOP/s on 1-thread fp32 matmuls, an AVX2 EPYC ~56-70),
so every run's ``timings.json`` and every benchmark's results carry this block, and a
budget is read against the machine it was measured on.
"""

from __future__ import annotations

import os
import platform
import time

__all__ = ["cpu_model", "matmul_peak_gflops", "machine_info"]


def cpu_model() -> str:
    """The ``model name`` line of /proc/cpuinfo (else ``platform.processor()``)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def matmul_peak_gflops(sizes=(512, 1024, 2048), reps: int = 3) -> float:
    """Best fp32 GFLOP/s per CPU second (``time.process_time``, so a shared machine's
    waiting does not count) of square matmuls on the current torch thread count."""
    import torch

    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        a @ b
        for _ in range(reps):
            c0 = time.process_time()
            a @ b
            best = max(best, 2 * n**3 / max(time.process_time() - c0, 1e-9) / 1e9)
    return best


def machine_info(measure: bool = True) -> dict:
    """CPU model, CPU count, memory (GiB) and, with ``measure``, the 1-thread fp32 matmul
    peak (about a second; the torch thread count is restored)."""
    info: dict = {"cpu": cpu_model(), "cpus": os.cpu_count(), "platform": platform.platform()}
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            info["mem_gib"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    if measure:
        import torch

        prev = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            info["matmul_gflops_1thread"] = round(matmul_peak_gflops(sizes=(1024, 2048), reps=2), 1)
        finally:
            torch.set_num_threads(prev)
    return info
