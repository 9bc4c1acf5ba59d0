"""Retrieval benchmark: ratios measured side by side in one run over the same index.

1. The server with micro-batching vs the same server with micro-batching off, at 16 and
   64 concurrent clients each sending one query per request: throughput ratio, p50/p99.
2. The micro-batched server at 64 clients vs in-process ``DenseRetriever.search`` on
   batches of 64 (the cost of the HTTP hop).
3. Query-cache hit vs miss latency (in-process, one query per call).

The query cache is off for 1-2 and every query is distinct, so every query is encoded.
Both servers run as separate processes (``searchgym serve``) on 127.0.0.1; the
configurations are interleaved in short rounds so drifting machine load hits them alike.

    python benchmarks/retrieval.py [--index DIR] [--duration 6] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TEMPLATES = [
    "what is the capital of {}", "who was born in {}", "history of {}", "facts about {}",
    "where is {} located", "what language is spoken in {}", "famous people from {}", "{} economy and currency",
]


def make_queries(n: int, seed: int) -> list[str]:
    """``n`` distinct queries built from corpus titles (so the encoder sees realistic text)."""
    from searchgym.retrieval import read_corpus, sample_corpus_path

    titles = [d.title for d in read_corpus(sample_corpus_path())]
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        t = TEMPLATES[rng.integers(len(TEMPLATES))].format(titles[rng.integers(len(titles))])
        out.append(f"{t} {i}")  # suffix keeps every query distinct
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(self, index_dir: Path, batching: bool, threads: int):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "searchgym", "serve", "--index", str(index_dir), "--port", str(self.port),
               "--cache-size", "0", "--max-topk", "10", "--threads", str(threads)]
        if not batching:
            cmd.append("--no-batching")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def __enter__(self):
        import httpx

        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError("server did not start within 120 s")

    def __exit__(self, *exc):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class RawHTTPConnection:
    """A minimal keep-alive HTTP/1.1 client on asyncio streams. The load generator must
    cost far less CPU than the server it measures (httpx's pool does not, at 64
    connections on a small machine)."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader = self.writer = None

    async def post_json(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode() + body
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return status, await self.reader.readexactly(length)

    async def close(self):
        if self.writer is not None:
            self.writer.close()


async def load_test(url: str, clients: int, queries: list[str], duration: float, warmup: float, k: int) -> dict:
    """``clients`` concurrent connections, each in a loop sending one query per request."""
    host, port = url.split("//")[1].split(":")
    latencies: list[float] = []
    next_q = 0
    t_start = time.perf_counter()
    t_measure, t_end = t_start + warmup, t_start + warmup + duration

    async def worker():
        nonlocal next_q
        conn = RawHTTPConnection(host, int(port))
        try:
            while True:
                q = queries[next_q % len(queries)]
                next_q += 1
                t0 = time.perf_counter()
                if t0 >= t_end:
                    return
                body = json.dumps({"queries": [q], "topk": k, "return_scores": True}).encode()
                status, payload = await conn.post_json("/retrieve", body)
                if status != 200:
                    raise RuntimeError(f"HTTP {status}: {payload[:200]!r}")
                t1 = time.perf_counter()
                if t_measure <= t1 <= t_end:  # completions inside the window (closed loop, steady state)
                    latencies.append(t1 - t0)
        finally:
            await conn.close()

    await asyncio.gather(*(worker() for _ in range(clients)))
    return latencies


def summarize(clients: int, latencies: list[float], duration: float) -> dict:
    lat = np.array(latencies) * 1000
    if not len(lat):
        raise RuntimeError(f"no request finished inside {duration:g} s; raise --duration")
    return {
        "clients": clients,
        "requests": len(lat),
        "seconds": duration,
        "qps": len(lat) / duration,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
    }


def in_process(retriever, batch: int, queries: list[str], duration: float, k: int) -> tuple[int, float]:
    """Queries answered and seconds spent by ``retriever.search`` on batches of ``batch``."""
    n, i = 0, 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < duration:
        retriever.search(queries[i : i + batch], k)
        i += batch
        n += batch
    return n, time.perf_counter() - t0


def cache_latency(index_dir: Path, queries: list[str], k: int, n: int = 100) -> dict:
    from searchgym.retrieval import load_retriever

    r = load_retriever(index_dir, shared=False, cache_size=10_000)
    miss, hit = [], []
    for q in queries[:n]:
        t0 = time.perf_counter()
        r.search([q], k)
        miss.append(time.perf_counter() - t0)
    for q in queries[:n]:
        t0 = time.perf_counter()
        r.search([q], k)
        hit.append(time.perf_counter() - t0)
    stats = r.cache.stats()
    assert stats["misses"] == n and stats["hits"] == n, stats
    return {"miss_p50_ms": float(np.median(miss) * 1000), "hit_p50_ms": float(np.median(hit) * 1000)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--index", type=Path, default=None, help="dense index folder (default: build one over the sample corpus)")
    p.add_argument("--duration", type=float, default=8.0, help="seconds measured per configuration (over all rounds)")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds the duration is split into")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of warm-up before each measured slot")
    p.add_argument("-k", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch/FAISS threads, server and in-process alike (default 1)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    p.add_argument("--quick", action="store_true", help="3 s per configuration (for make bench --quick)")
    args = p.parse_args(argv)
    if args.quick:
        args.duration = 3.0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import faiss
    import torch

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)

    from searchgym.retrieval import build_index, sample_corpus_path

    tmp = None
    index_dir = args.index
    if index_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="searchgym-bench-")
        index_dir = build_index(sample_corpus_path(), Path(tmp.name) / "dense", progress=False)
    queries = make_queries(300_000, seed=0)
    print(f"index {index_dir}; cpu cores {os.cpu_count()}; threads {args.threads}; {args.duration:g} s per configuration; "
          f"cache off; k={args.k}; load average {os.getloadavg()[0]:.1f}")

    # Both servers stay up; configurations are interleaved in short rounds so that drifting
    # load from other processes hits every configuration alike.
    from searchgym.retrieval import load_retriever

    local = load_retriever(index_dir, shared=False, cache_size=0)
    local.search(queries[:64], args.k)  # warm up
    configs = [(b, c) for c in (16, 64) for b in (True, False)]
    lat: dict = {cfg: [] for cfg in configs}
    local_n, local_s = 0, 0.0
    slot = args.duration / args.rounds
    offset = 64
    with ServerProcess(index_dir, True, args.threads) as batched, ServerProcess(index_dir, False, args.threads) as unbatched:
        for rnd in range(args.rounds):
            for batching, clients in configs:
                srv = batched if batching else unbatched
                qs = queries[offset : offset + 5000]  # fresh queries: nothing is cached or deduplicated
                offset += 5000
                lat[(batching, clients)] += asyncio.run(load_test(srv.url, clients, qs, slot, args.warmup, args.k))
            n, sec = in_process(local, 64, queries[offset : offset + 5000], slot, args.k)
            offset += 5000
            local_n, local_s = local_n + n, local_s + sec
    results: dict = {"server": {}, "rounds": args.rounds}
    for (batching, clients), values in lat.items():
        mode = "batched" if batching else "unbatched"
        res = results["server"][f"{mode}_{clients}"] = summarize(clients, values, args.duration)
        print(f"  server {mode:9s} {clients:3d} clients: {res['qps']:8.1f} q/s  p50 {res['p50_ms']:7.1f} ms  "
              f"p99 {res['p99_ms']:7.1f} ms  ({res['requests']} requests)")
    results["in_process"] = {"batch": 64, "queries": local_n, "seconds": local_s, "qps": local_n / local_s}
    print(f"  in-process DenseRetriever.search, batches of 64: {results['in_process']['qps']:8.1f} q/s")
    offset += 5000
    results["cache"] = cache_latency(index_dir, queries[offset:], args.k)
    print(f"  cache: miss p50 {results['cache']['miss_p50_ms']:.2f} ms, hit p50 {results['cache']['hit_p50_ms']:.3f} ms")

    s = results["server"]
    ratios = {
        "batched_vs_unbatched_16": s["batched_16"]["qps"] / s["unbatched_16"]["qps"],
        "batched_vs_unbatched_64": s["batched_64"]["qps"] / s["unbatched_64"]["qps"],
        "server64_vs_in_process64": s["batched_64"]["qps"] / results["in_process"]["qps"],
        "cache_miss_vs_hit": results["cache"]["miss_p50_ms"] / results["cache"]["hit_p50_ms"],
    }
    results["ratios"] = ratios
    print("ratios (measured side by side):")
    print(f"  micro-batched / unbatched throughput, 16 clients: {ratios['batched_vs_unbatched_16']:.2f}x")
    print(f"  micro-batched / unbatched throughput, 64 clients: {ratios['batched_vs_unbatched_64']:.2f}x  (target >= 3x)")
    print(f"  server (64 clients) / in-process batched search:  {ratios['server64_vs_in_process64']:.2f}x  (target >= 0.7x)")
    print(f"  cache miss / hit latency:                          {ratios['cache_miss_vs_hit']:.1f}x")
    if args.json:
        from searchgym.retrieval.fileio import atomic_write_json

        atomic_write_json(args.json, results)
    if tmp is not None:
        tmp.cleanup()
    figures = {k: round(v, 3) for k, v in ratios.items()}
    figures.update({f"qps_{k}": round(v["qps"], 1) for k, v in s.items()})
    figures.update({f"p99_ms_{k}": round(v["p99_ms"], 1) for k, v in s.items()})
    print("RESULT_JSON " + json.dumps({"name": "retrieval", "figures": figures}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
