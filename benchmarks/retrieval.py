"""Retrieval benchmark: ratios measured side by side in one run over the same index.

1. The server with adaptive micro-batching vs the same server with batching off (one
   encode + FAISS call per request, as Search-R1's ``retrieval_server.py`` handler does:
   the Search-R1-style baseline) at 1, 16 and 64 concurrent closed-loop clients, each
   sending one query per request: throughput ratio, p50/p99. The same with the index's
   ``onnx-int8`` query backend.
2. The batched server at 64 clients vs in-process ``DenseRetriever.search`` on batches of
   64 (the cost of the HTTP hop), fp32 and int8. In-process batches of 64 vs one query per
   call is the ceiling of *any* batching server over the one-query-per-request baseline
   with the same encoder on the same cores (it has no HTTP cost at all): a "batched /
   unbatched" target above it cannot be met by the server, only by a faster encoder.
3. With an httpx load generator (what most users' clients look like) at 16 and 64 clients:
   throughput must not fall from 16 to 64. The default generator is a raw asyncio
   HTTP/1.1 client, light enough not to starve the server on 2 cores; both generators'
   CPU per request is reported.
4. In-process query encoding, fp32 vs onnx-int8 (queries/CPU-second, batches of 64), and
   the int8 path's recall@10 / top-1 agreement against fp32 on the same index.
5. Query-cache hit vs miss latency (in-process, one query per call).

The query cache is off for 1-4 and every query is distinct, so every query is encoded.
The servers run as separate processes (``searchgym serve``) on 127.0.0.1; the
configurations are interleaved in short rounds so drifting machine load hits them alike.

    python benchmarks/retrieval.py [--index DIR] [--duration 8] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
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


async def load_test(url: str, clients: int, queries: list[str], duration: float, warmup: float, k: int,
                    client: str = "raw") -> dict:
    """``clients`` concurrent connections, each in a loop sending one query per request
    (``client``: "raw" = ``RawHTTPConnection``; "httpx" = one ``httpx.AsyncClient`` per
    client, as separate env workers each hold one; "httpx-pool" = all clients share one
    ``httpx.AsyncClient`` pool)."""
    import httpx

    host, port = url.split("//")[1].split(":")
    pool = None
    if client == "httpx-pool":
        pool = httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=clients,
                                                                 max_keepalive_connections=clients))

    class HttpxConnection:
        def __init__(self):
            self.client = pool if pool is not None else httpx.AsyncClient(timeout=60)

        async def post_json(self, path, body):
            r = await self.client.post(url + path, content=body, headers={"content-type": "application/json"})
            return r.status_code, r.content

        async def close(self):
            if self.client is not pool:
                await self.client.aclose()
    latencies: list[float] = []
    next_q = 0
    t_start = time.perf_counter()
    t_measure, t_end = t_start + warmup, t_start + warmup + duration

    async def worker():
        nonlocal next_q
        conn = RawHTTPConnection(host, int(port)) if client == "raw" else HttpxConnection()
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

    try:
        await asyncio.gather(*(worker() for _ in range(clients)))
    finally:
        if pool is not None:
            await pool.aclose()
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


def latency_ratio_ci(a: list[float], b: list[float], q: float, level: float = 0.95) -> tuple[float, float]:
    """Percentile-bootstrap interval of ``percentile(a, q) / percentile(b, q)`` (independent
    resamples of each server's request latencies; 2,000 resamples, fixed seed)."""
    from scipy.stats import bootstrap

    def ratio(x, y, axis=-1):
        return np.percentile(x, q, axis=axis) / np.percentile(y, q, axis=axis)

    res = bootstrap((np.asarray(a), np.asarray(b)), ratio, paired=False, vectorized=True, n_resamples=2000,
                    confidence_level=level, method="percentile", rng=np.random.default_rng(0))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def in_process(retriever, batch: int, queries: list[str], duration: float, k: int) -> tuple[int, float]:
    """Queries answered and seconds spent by ``retriever.search`` on batches of ``batch``."""
    n, i = 0, 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < duration:
        chunk = queries[i : i + batch]
        if not chunk:  # out of fresh queries: stop early rather than count empty searches
            break
        retriever.search(chunk, k)
        i += batch
        n += len(chunk)
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
    queries = make_queries(400_000, seed=0)
    load_start = os.getloadavg()[0]
    print(f"index {index_dir}; cpu cores {os.cpu_count()}; threads {args.threads}; {args.duration:g} s per configuration; "
          f"cache off; k={args.k}; load average {os.getloadavg()[0]:.1f}")

    # All servers stay up; configurations are interleaved in short rounds so that drifting
    # load from other processes hits every configuration alike.
    from searchgym.retrieval import load_retriever

    fast_dir = Path(tempfile.mkdtemp(prefix="searchgym-bench-int8-")) / "index"
    shutil.copytree(index_dir, fast_dir)
    manifest = json.loads((fast_dir / "manifest.json").read_text())
    manifest["encoder"]["query_backend"] = "onnx-int8"  # the per-index switch
    (fast_dir / "manifest.json").write_text(json.dumps(manifest))
    local = {"fp32": load_retriever(index_dir, shared=False, cache_size=0),
             "int8": load_retriever(fast_dir, shared=False, cache_size=0)}
    for r in local.values():
        r.search(queries[:64], args.k)  # warm up (and export the int8 encoder once)
    # (server, clients, load generator)
    configs = [(srv, c, "raw") for c in (1, 16, 64) for srv in ("batched", "unbatched", "int8")]
    configs += [("batched", c, gen) for gen in ("httpx", "httpx-pool") for c in (16, 64)]
    lat: dict = {cfg: [] for cfg in configs}
    client_cpu: dict = {cfg: 0.0 for cfg in configs}
    # (backend, batch size): batches of 64, and one query per call (the unbatched ceiling)
    local_cfgs = [(m, b) for m in local for b in (64, 1)]
    local_n = {c: 0 for c in local_cfgs}
    local_s = {c: 0.0 for c in local_cfgs}
    slot = args.duration / args.rounds
    offset = 64
    with ServerProcess(index_dir, True, args.threads) as batched, \
            ServerProcess(index_dir, False, args.threads) as unbatched, \
            ServerProcess(fast_dir, True, args.threads) as fast:
        servers = {"batched": batched, "unbatched": unbatched, "int8": fast}
        for rnd in range(args.rounds):
            for cfg in configs:
                srv, clients, gen = cfg
                qs = queries[offset : offset + 5000]  # fresh queries: nothing is cached or deduplicated
                offset += 5000
                c0 = time.process_time()  # the load generator's own CPU (this process)
                got = asyncio.run(load_test(servers[srv].url, clients, qs, slot, args.warmup, args.k, gen))
                client_cpu[cfg] += time.process_time() - c0
                lat[cfg] += got
            for mode, b in local_cfgs:
                # 20,000 fresh queries: int8 in batches of 64 answers > 5,000 in a 4 s slot
                n, sec = in_process(local[mode], b, queries[offset : offset + 20_000], slot, args.k)
                offset += 20_000
                local_n[mode, b], local_s[mode, b] = local_n[mode, b] + n, local_s[mode, b] + sec
    results: dict = {"server": {}, "rounds": args.rounds}
    for (srv, clients, gen), values in lat.items():
        name = f"{srv}_{clients}" + ("" if gen == "raw" else "_" + gen.replace("-", "_"))
        res = results["server"][name] = summarize(clients, values, args.duration)
        res["client_cpu_ms_per_request"] = 1000 * client_cpu[(srv, clients, gen)] / max(1, res["requests"])
        print(f"  server {srv:9s} {clients:3d} clients ({gen:5s}): {res['qps']:8.1f} q/s  p50 {res['p50_ms']:7.1f} ms  "
              f"p99 {res['p99_ms']:7.1f} ms  ({res['requests']} requests; client {res['client_cpu_ms_per_request']:.2f} "
              f"CPU-ms/request)")
    def rates(batch: int) -> dict:
        return {m: {"batch": batch, "queries": local_n[m, batch], "seconds": local_s[m, batch],
                    "qps": local_n[m, batch] / local_s[m, batch]} for m in local}

    results["in_process"], results["in_process_one"] = rates(64), rates(1)
    for m in local:
        print(f"  in-process DenseRetriever.search ({m}), batches of 64: {results['in_process'][m]['qps']:8.1f} q/s; "
              f"one query per call: {results['in_process_one'][m]['qps']:8.1f} q/s")
    enc = encode_throughput(local, queries[offset : offset + 2048])
    offset += 2048
    results["encode"] = enc
    print(f"  in-process encode_queries, batches of 64: fp32 {enc['fp32_qps_cpu']:.0f}, onnx-int8 "
          f"{enc['int8_qps_cpu']:.0f} queries/CPU-s")
    agree = int8_agreement(local, queries[offset : offset + 1000], 10)
    offset += 1000
    results["int8_vs_fp32"] = agree
    print(f"  onnx-int8 vs fp32 on this index ({agree['queries']} queries): recall@10 {agree['recall_at_10']:.3f}, "
          f"top-1 agreement {agree['top1_agreement']:.3f}")
    offset += 5000
    results["cache"] = cache_latency(index_dir, queries[offset:], args.k)
    print(f"  cache: miss p50 {results['cache']['miss_p50_ms']:.2f} ms, hit p50 {results['cache']['hit_p50_ms']:.3f} ms")

    s = results["server"]
    ip = results["in_process"]
    # A 1-client p99 rests on the few slowest of a few hundred requests: one scheduler
    # hiccup moves it by 1.4x. Its interval (bootstrap over each server's requests) says
    # whether a difference is there at all.
    p99_ci = latency_ratio_ci(lat[("batched", 1, "raw")], lat[("unbatched", 1, "raw")], 99)
    results["p99_1_client_ratio_ci95"] = list(p99_ci)
    ratios = {f"batched_vs_unbatched_{c}": s[f"batched_{c}"]["qps"] / s[f"unbatched_{c}"]["qps"] for c in (1, 16, 64)}
    ratios.update({f"int8_vs_unbatched_{c}": s[f"int8_{c}"]["qps"] / s[f"unbatched_{c}"]["qps"] for c in (1, 16, 64)})
    ratios.update({
        "p99_batched_vs_unbatched_1": s["batched_1"]["p99_ms"] / s["unbatched_1"]["p99_ms"],
        "p99_batched_vs_unbatched_1_ci_low": p99_ci[0],
        "p99_batched_vs_unbatched_1_ci_high": p99_ci[1],
        "p50_batched_vs_unbatched_1": s["batched_1"]["p50_ms"] / s["unbatched_1"]["p50_ms"],
        "server64_vs_in_process64": s["batched_64"]["qps"] / ip["fp32"]["qps"],
        "int8_server64_vs_int8_in_process64": s["int8_64"]["qps"] / ip["int8"]["qps"],
        # the most a batching server can gain over one encode + search per request, same encoder
        "in_process64_vs_one_fp32": ip["fp32"]["qps"] / results["in_process_one"]["fp32"]["qps"],
        "int8_in_process64_vs_fp32_one": ip["int8"]["qps"] / results["in_process_one"]["fp32"]["qps"],
        "httpx_64_vs_16": s["batched_64_httpx"]["qps"] / s["batched_16_httpx"]["qps"],
        "httpx_pool_64_vs_16": s["batched_64_httpx_pool"]["qps"] / s["batched_16_httpx_pool"]["qps"],
        "encode_int8_vs_fp32": enc["int8_qps_cpu"] / enc["fp32_qps_cpu"],
        "int8_recall_at_10": agree["recall_at_10"],
        "cache_miss_vs_hit": results["cache"]["miss_p50_ms"] / results["cache"]["hit_p50_ms"],
    })
    results["ratios"] = ratios
    print("ratios (measured side by side; unbatched = the Search-R1-style baseline):")
    for c in (1, 16, 64):
        print(f"  batched / unbatched throughput, {c:2d} clients:   {ratios[f'batched_vs_unbatched_{c}']:.2f}x   "
              f"int8 / unbatched: {ratios[f'int8_vs_unbatched_{c}']:.2f}x")
    print(f"  p99 batched / unbatched, 1 client:               {ratios['p99_batched_vs_unbatched_1']:.2f}x "
          f"[{p99_ci[0]:.2f}, {p99_ci[1]:.2f}] 95% bootstrap CI (<= 1 is no worse; a CI holding 1: no detectable "
          f"difference); p50 {ratios['p50_batched_vs_unbatched_1']:.2f}x")
    print(f"  server (64 clients) / in-process batched search: {ratios['server64_vs_in_process64']:.2f}x fp32, "
          f"{ratios['int8_server64_vs_int8_in_process64']:.2f}x int8  (target >= 0.8x)")
    print(f"  in-process batches of 64 / one query per call:  {ratios['in_process64_vs_one_fp32']:.2f}x fp32, "
          f"{ratios['int8_in_process64_vs_fp32_one']:.2f}x int8 over fp32 (the ceiling of batched / unbatched)")
    print(f"  httpx client, 64 / 16 clients throughput:        {ratios['httpx_64_vs_16']:.2f}x (target >= 1); "
          f"one shared httpx pool: {ratios['httpx_pool_64_vs_16']:.2f}x")
    print(f"  in-process encode, onnx-int8 / fp32:             {ratios['encode_int8_vs_fp32']:.2f}x (aim >= 2x); "
          f"recall@10 vs fp32 {ratios['int8_recall_at_10']:.3f}")
    print(f"  cache miss / hit latency:                        {ratios['cache_miss_vs_hit']:.1f}x")
    if args.json:
        from searchgym.retrieval.fileio import atomic_write_json

        atomic_write_json(args.json, results)
    if tmp is not None:
        tmp.cleanup()
    shutil.rmtree(fast_dir.parent, ignore_errors=True)
    figures = {k: round(v, 3) for k, v in ratios.items()}
    figures.update({f"qps_{k}": round(v["qps"], 1) for k, v in s.items()})
    figures.update({f"p99_ms_{k}": round(v["p99_ms"], 1) for k, v in s.items()})
    figures.update({f"client_cpu_ms_{k}": round(v["client_cpu_ms_per_request"], 3) for k, v in s.items()})
    figures.update({f"qps_in_process_{m}": round(v["qps"], 1) for m, v in ip.items()})
    figures.update({f"qps_in_process_one_{m}": round(v["qps"], 1) for m, v in results["in_process_one"].items()})
    figures["load_average_start"] = round(load_start, 2)
    print("RESULT_JSON " + json.dumps({"name": "retrieval", "figures": figures}))
    return 0


def encode_throughput(local: dict, queries: list[str], batch: int = 64) -> dict:
    """Queries per CPU-second of ``encoder.encode_queries`` on batches of ``batch``, fp32 and
    int8 interleaved batch by batch."""
    cpu = {m: 0.0 for m in local}
    n = 0
    for i in range(0, len(queries) - batch + 1, batch):
        part = queries[i : i + batch]
        for m, r in local.items():
            c0 = time.process_time()
            r.encoder.encode_queries(part)
            cpu[m] += time.process_time() - c0
        n += len(part)
    return {f"{m}_qps_cpu": n / max(cpu[m], 1e-9) for m in local}


def int8_agreement(local: dict, queries: list[str], k: int) -> dict:
    """recall@k of the int8 query path's top-k against fp32's (same index), and top-1 agreement."""
    ref, got = local["fp32"].search(queries, k), local["int8"].search(queries, k)
    kk = [min(k, len(a)) for a in ref]
    recall = float(np.mean([len({h.doc_id for h in a} & {h.doc_id for h in b}) / max(1, n)
                            for a, b, n in zip(ref, got, kk)]))
    top1 = float(np.mean([bool(a) and bool(b) and a[0].doc_id == b[0].doc_id for a, b in zip(ref, got)]))
    return {"queries": len(queries), "recall_at_10": recall, "top1_agreement": top1}


if __name__ == "__main__":
    sys.exit(main())
