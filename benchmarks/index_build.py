"""Index types side by side over one corpus: build speed, size on disk, query latency, recall.

Corpus: the small world's documents (``ensure_world("small", 0)``, 2,800 one-line
passages). Dense kinds (FAISS flat, HNSW, IVF-PQ) share ONE encoding of the corpus with
the bundled all-MiniLM-L6-v2, so encoding is reported once and each kind's own cost is
its FAISS train + add time. BM25 (bm25s) is built from the same documents.

Per kind:
- build: docs/s of the index step alone (dense: FAISS train + add; bm25: tokenise + index),
  and for dense the end-to-end docs/s including the shared encoding;
- size: bytes per document of the index files alone (``index.faiss`` / ``bm25/``) and with
  the ``docs.jsonl`` document store that every index folder carries (manifest left out);
- queries (the world's test questions, one query per call, FAISS/bm25 only; the query
  encoding, shared by the dense kinds, is reported separately): mean latency per query,
  interleaved over rounds so load drift hits all kinds alike, and the ratio vs flat;
- quality: recall@10 vs flat's exact top-10 (dense kinds; for bm25 the same overlap,
  labelled agreement since BM25 scores differently) and the share of questions whose
  subject entity's passage is in the top 3 (the env's default topk), for every kind.

    python benchmarks/index_build.py [--quick] [--docs N] [--queries N] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, print_table  # noqa: E402

DENSE = ("flat", "hnsw", "ivfpq")
K_RECALL = 10
K_ENV = 3


def folder_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def subject_entities(question) -> set[str]:
    """Entities a first search should surface: the subject (or both sides of a comparison)."""
    ents = set()
    for role in ("subject", "a", "b"):
        ents.update(question.roles.get(role, ()))
    return ents


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="400 documents, 48 queries, 2 rounds")
    ap.add_argument("--docs", type=int, default=0, help="use the first N documents (0 = all)")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch and FAISS threads")
    args = ap.parse_args()
    if args.quick:
        args.docs, args.queries, args.rounds = 400, 48, 2

    import faiss
    import torch

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    from searchgym.envs.world import ensure_world, entity_of_doc, load_questions
    from searchgym.retrieval import read_corpus, write_corpus
    from searchgym.retrieval.bm25 import BM25Retriever
    from searchgym.retrieval.dense import make_faiss_index
    from searchgym.retrieval.encoder import Encoder
    from searchgym.retrieval.index import build_index

    world = ensure_world("small", 0)
    docs = list(read_corpus(world / "corpus.jsonl"))
    if args.docs:
        docs = docs[: args.docs]
    n = len(docs)
    kept = {d.doc_id for d in docs}
    # Questions whose subject has a passage in the (possibly cut) corpus.
    questions = [q for q in load_questions(world, "test")
                 if any(f"{e}-0" in kept for e in subject_entities(q))][: args.queries]
    texts = [q.question for q in questions]
    ents = [subject_entities(q) for q in questions]

    tmp = Path(tempfile.mkdtemp(prefix="sg-bench-index-"))
    try:
        write_corpus(docs, tmp / "docs.jsonl")
        store_bytes = folder_bytes(tmp / "docs.jsonl")
        enc = Encoder(batch_size=64)
        t0 = time.perf_counter()
        emb = enc.encode_passages([f'"{d.title}"\n{d.text}' for d in docs], progress=False)
        encode_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        qvec = enc.encode_queries(texts)
        qencode_s = time.perf_counter() - t0

        kinds: dict[str, dict] = {}
        for kind in DENSE:
            t0 = time.perf_counter()
            index, params = make_faiss_index(emb, kind)
            add_s = time.perf_counter() - t0
            f = tmp / f"{kind}.faiss"
            faiss.write_index(index, str(f))
            kinds[kind] = {"index": index, "build_s": add_s, "index_bytes": folder_bytes(f), "params": params}
        # BM25 through the real builder (the folder exactly as searchgym writes it); the
        # timed part is bm25s tokenisation + indexing, as for dense the FAISS part.
        t0 = time.perf_counter()
        bm25 = BM25Retriever.build(docs)
        bm25_s = time.perf_counter() - t0
        bdir = build_index(docs, tmp / "bm25-index", kind="bm25")
        kinds["bm25"] = {"retriever": bm25, "build_s": bm25_s, "index_bytes": folder_bytes(bdir / "bm25"),
                         "params": {}}
        # With the store: index files + docs.jsonl (the ~0.5 KB manifest is left out for all kinds).
        for kind in kinds:
            kinds[kind]["folder_bytes"] = kinds[kind]["index_bytes"] + store_bytes

        # Top-k of every kind (one batched call; latency is measured separately below).
        top: dict[str, list[list[int]]] = {}
        for kind in DENSE:
            _, ids = kinds[kind]["index"].search(qvec, K_RECALL)
            top[kind] = [[int(i) for i in row if i >= 0] for row in ids]
        pos = {d.doc_id: i for i, d in enumerate(docs)}
        top["bm25"] = [[pos[h.doc_id] for h in hits] for hits in bm25.search(texts, K_RECALL)]

        # Latency: one query per call, kinds interleaved round by round.
        lat = {k: [] for k in kinds}
        for _ in range(args.rounds):
            for kind in kinds:
                t0 = time.perf_counter()
                if kind == "bm25":
                    for q in texts:
                        bm25.search([q], K_ENV)
                else:
                    index = kinds[kind]["index"]
                    for i in range(len(texts)):
                        index.search(qvec[i : i + 1], K_ENV)
                lat[kind].append((time.perf_counter() - t0) / len(texts))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    flat_top = top["flat"]
    rows, figs = [], {"docs": n, "queries": len(texts), "dimension": int(emb.shape[1]),
                      "encode_docs_per_s": n / encode_s, "query_encode_ms": 1e3 * qencode_s / len(texts)}
    flat_lat = float(np.median(lat["flat"]))
    for kind, k in kinds.items():
        latency = float(np.median(lat[kind]))
        recall = float(np.mean([len(set(a[:K_RECALL]) & set(b[:K_RECALL])) / K_RECALL
                                for a, b in zip(top[kind], flat_top)]))
        hit = float(np.mean([any(entity_of_doc(docs[i].doc_id) in e for i in row[:K_ENV])
                             for row, e in zip(top[kind], ents)]))
        build_dps = n / k["build_s"]
        e2e_dps = n / (k["build_s"] + encode_s) if kind in DENSE else build_dps
        rows.append([kind, build_dps, e2e_dps, k["index_bytes"] / n, k["folder_bytes"] / n,
                     1e6 * latency, latency / flat_lat, recall, hit])
        figs.update({
            f"{kind}_build_docs_per_s": build_dps,
            f"{kind}_e2e_docs_per_s": e2e_dps,
            f"{kind}_index_bytes_per_doc": k["index_bytes"] / n,
            f"{kind}_with_store_bytes_per_doc": k["folder_bytes"] / n,
            f"{kind}_query_us": 1e6 * latency,
            f"{kind}_latency_vs_flat": latency / flat_lat,
            (f"{kind}_recall@{K_RECALL}_vs_flat" if kind in DENSE else f"{kind}_agree@{K_RECALL}_vs_flat"): recall,
            f"{kind}_subject_hit@{K_ENV}": hit,
        })

    print(f"corpus: small world, {n} documents ({store_bytes / n:.0f} bytes/doc in docs.jsonl); "
          f"{len(texts)} test questions as queries; {args.threads} thread(s)")
    print(f"shared dense encoding (all-MiniLM-L6-v2, d={emb.shape[1]}): {encode_s:.1f} s = "
          f"{n / encode_s:.0f} docs/s; query encoding {1e3 * qencode_s / len(texts):.2f} ms/query")
    for kind in DENSE[1:]:
        print(f"{kind} params: {kinds[kind]['params']}")
    print_table(["kind", "index docs/s", "e2e docs/s", "index B/doc", "+store B/doc", "query us",
                 "lat/flat", f"recall@{K_RECALL}/flat", f"subj hit@{K_ENV}"], rows)
    print(f"(dense query latency is FAISS only; add {1e3 * qencode_s / len(texts):.2f} ms of encoding; "
          f"bm25's recall column is its top-{K_RECALL} overlap with flat, not a recall)")
    emit("index_build", figs)


if __name__ == "__main__":
    main()
