"""CLI: ``searchgym index build|import|query`` and ``searchgym serve``.

The server (FastAPI, ~0.2 s), faiss and torch are imported by the handlers that need them,
so ``searchgym --help`` does not pay for them."""

from __future__ import annotations

import argparse
import json
import socket

from searchgym.retrieval.data_files import sample_corpus_path
from searchgym.retrieval.index import build_index, import_index, load_retriever, read_manifest


def add_commands(subparsers) -> None:
    index = subparsers.add_parser("index", help="build or query a retrieval index", description="Build or query a retrieval index folder.")
    isub = index.add_subparsers(dest="index_command", metavar="SUBCOMMAND", required=True)

    build = isub.add_parser(
        "build",
        help="build an index folder from a Search-R1 JSONL corpus",
        description="Build an index folder (manifest.json, docs.jsonl, index files) from a Search-R1 JSONL corpus.",
    )
    build.add_argument("--corpus", required=True, help="Search-R1 JSONL corpus ({\"id\", \"contents\"} per line); 'sample' for the bundled one")
    build.add_argument("--out", required=True, help="index folder to write (an existing index folder is replaced atomically; "
                       "any other non-empty folder is refused unless --force)")
    build.add_argument("--retriever", choices=["dense", "bm25"], default="dense", help="retriever kind (default dense)")
    build.add_argument("--encoder", default=None, help="local encoder folder (default: bundled all-MiniLM-L6-v2)")
    build.add_argument("--index-type", choices=["flat", "hnsw", "ivfpq"], default="flat", help="FAISS index type (default flat)")
    build.add_argument("--query-prefix", default="", help="prefix added to queries, e.g. 'query: ' for e5")
    build.add_argument("--passage-prefix", default="", help="prefix added to passages, e.g. 'passage: ' for e5")
    build.add_argument("--batch-size", type=int, default=64, help="encoder batch size")
    build.add_argument("--threads", type=int, default=None, help="torch/FAISS CPU threads for encoding (default: library default)")
    build.add_argument("--no-progress", action="store_true", help="hide the progress bar / progress log lines")
    build.set_defaults(func=_build)

    imp = isub.add_parser(
        "import",
        help="wrap an existing FAISS index + its corpus into an index folder (no re-encoding)",
        description="Wrap an existing FAISS index file (e.g. Search-R1's e5_Flat.index) and the Search-R1 JSONL corpus "
        "it was built from into an index folder, checking the vector count against the corpus and the dimension "
        "against the encoder. Files are hard-linked when possible, else copied.",
    )
    imp.add_argument("--faiss", required=True, help="FAISS index file (row i = corpus line i, inner product)")
    imp.add_argument("--corpus", required=True, help="Search-R1 JSONL corpus the index was built from")
    imp.add_argument("--out", required=True, help="index folder to write")
    imp.add_argument("--encoder", default=None, help="local folder of the encoder that built the index (default: bundled all-MiniLM-L6-v2)")
    imp.add_argument("--query-prefix", default="", help="prefix added to queries, e.g. 'query: ' for e5")
    imp.add_argument("--passage-prefix", default="", help="prefix the passages were encoded with, e.g. 'passage: ' for e5")
    imp.add_argument("--link", choices=["auto", "copy", "hardlink", "symlink"], default="auto",
                     help="how files get into the folder (default auto: hard link, else copy)")
    imp.set_defaults(func=_import)

    query = isub.add_parser("query", help="query an index folder", description="Print the top-k hits of one or more queries.")
    query.add_argument("index_dir", help="index folder")
    query.add_argument("queries", nargs="+", help="query text(s)")
    query.add_argument("-k", type=int, default=3, help="hits per query (default 3)")
    query.add_argument("--json", action="store_true", help="print JSON instead of text")
    query.set_defaults(func=_query)

    serve = subparsers.add_parser(
        "serve",
        help="serve an index over HTTP (Search-R1-compatible POST /retrieve)",
        description="Serve an index folder: POST /retrieve (Search-R1 wire format) and GET /health.",
    )
    serve.add_argument("--index", required=True, help="index folder")
    serve.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1; 0.0.0.0 exposes the server)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--token", default=None, help="bearer token required on every route but /health (or env SEARCHGYM_TOKEN)")
    serve.add_argument("--no-batching", action="store_true", help="one retriever call per request (no micro-batching)")
    serve.add_argument("--max-batch", type=int, default=256, help="max queries per coalesced call (default 256)")
    serve.add_argument("--batch-wait-ms", type=float, default=2.0, help="wait window to coalesce requests (default 2 ms)")
    serve.add_argument("--default-topk", type=int, default=3, help="topk when a request sends null (default 3)")
    serve.add_argument("--max-topk", type=int, default=100, help="largest topk accepted (default 100)")
    serve.add_argument("--max-queries", type=int, default=512, help="most queries per request (default 512)")
    serve.add_argument("--max-query-chars", type=int, default=4096, help="longest query accepted (default 4096)")
    serve.add_argument("--max-body-bytes", type=int, default=1 << 20, help="largest request body (default 1 MiB)")
    serve.add_argument("--header-timeout", type=float, default=10.0, help="seconds a request's headers may take to arrive (default 10)")
    serve.add_argument("--body-timeout", type=float, default=30.0, help="seconds a request's body may take to arrive (default 30)")
    serve.add_argument("--keep-alive-timeout", type=float, default=5.0, help="seconds an idle keep-alive connection stays open (default 5)")
    serve.add_argument("--cache-size", type=int, default=10_000, help="query-embedding LRU cache entries, 0 disables (default 10000)")
    serve.add_argument("--threads", type=int, default=None, help="torch/FAISS CPU threads (default: library default; 1 is best on a busy machine)")
    serve.add_argument("--log-level", default="warning", help="uvicorn log level (default warning)")
    serve.set_defaults(func=_serve)


def _build(args: argparse.Namespace) -> int:
    corpus = sample_corpus_path() if args.corpus == "sample" else args.corpus
    out = build_index(
        corpus, args.out, kind=args.retriever, encoder=args.encoder, index_type=args.index_type,
        query_prefix=args.query_prefix, passage_prefix=args.passage_prefix, batch_size=args.batch_size,
        progress=False if args.no_progress else None, threads=args.threads, force=getattr(args, "force", False),
    )
    m = read_manifest(out)
    detail = f"{m['index_type']}, {m['encoder']['name']}, dim {m['dimension']}" if m["kind"] == "dense" else "bm25s"
    print(f"built {m['kind']} index {out} ({m['count']} documents; {detail})")
    return 0


def _import(args: argparse.Namespace) -> int:
    out = import_index(args.faiss, args.corpus, args.out, encoder=args.encoder, query_prefix=args.query_prefix,
                       passage_prefix=args.passage_prefix, link=args.link, force=getattr(args, "force", False))
    m = read_manifest(out)
    print(f"imported dense index {out} ({m['count']} documents; {m['index_type']}, {m['encoder']['name']}, "
          f"dim {m['dimension']}; docs {m['imported']['docs']}, index {m['imported']['index']})")
    return 0


def check_port_free(host: str, port: int) -> None:
    """Bind ``host:port`` once (with uvicorn's SO_REUSEADDR) so a busy port is reported as
    one line before the index loads and before any banner is printed."""
    if not 0 <= port <= 65535:
        raise ValueError(f"--port must be in [0, 65535], got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
    except OSError as exc:
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    finally:
        sock.close()


def _query(args: argparse.Namespace) -> int:
    if args.k < 1:
        raise ValueError(f"-k must be >= 1, got {args.k}")
    results = load_retriever(args.index_dir).search(args.queries, args.k)
    if args.json:
        print(json.dumps([[h.__dict__ for h in hits] for hits in results], ensure_ascii=False, indent=2))
        return 0
    for q, hits in zip(args.queries, results):
        print(f"query: {q}")
        for rank, h in enumerate(hits, 1):
            text = h.text if len(h.text) <= 160 else h.text[:157] + "..."
            print(f"  {rank}. [{h.score:.4f}] {h.doc_id} {h.title}: {text}")
        if not hits:
            print("  (no hits)")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from searchgym.retrieval.server import ServerConfig, serve

    check_port_free(args.host, args.port)
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        import faiss
        import torch

        # OpenMP threads spinning on an oversubscribed CPU slow encoding down many times.
        torch.set_num_threads(args.threads)
        faiss.omp_set_num_threads(args.threads)

    config = ServerConfig(
        default_topk=args.default_topk, max_topk=args.max_topk, max_queries=args.max_queries,
        max_query_chars=args.max_query_chars, max_body_bytes=args.max_body_bytes,
        batching=not args.no_batching, max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms,
        token=args.token, header_timeout_s=args.header_timeout, body_timeout_s=args.body_timeout,
        keep_alive_timeout_s=args.keep_alive_timeout,
    )
    serve(args.index, host=args.host, port=args.port, config=config, log_level=args.log_level, cache_size=args.cache_size)
    return 0
