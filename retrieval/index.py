"""Index folders: build, save (atomically) and load (checked against the manifest).

A folder holds::

    manifest.json   kind, encoder, dimension, count, corpus sha256, format version, files
    docs.jsonl      the corpus, byte-for-byte (Search-R1 JSONL): the document store
    index.faiss     dense only: the FAISS index
    bm25/           bm25 only: the bm25s index files

The whole folder is built under a temp name and swapped in at the end, so a crash never
leaves a half-written index behind, and an existing folder is replaced only if it is an
index folder itself (``force=True`` overrides). ``load_retriever`` is memoised per process:
every env instance that asks for the same folder shares one loaded index and encoder.
:func:`import_index` wraps an existing FAISS file + its corpus (e.g. Search-R1's
``e5_Flat.index`` + ``wiki-18.jsonl``) into a folder without re-encoding.

Dense builds report progress: a tqdm bar on a terminal, otherwise ``logging`` lines on the
``searchgym.retrieval.index`` logger (to stderr when logging is not configured).

faiss (~60 ms), bm25s (~140 ms), torch (~1 s) and tqdm are imported where an index is
built or loaded, not with this module: the CLI's output checks and the envs import it to
read manifests.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from searchgym.retrieval.base import CorpusFormatError, Document, read_corpus, write_corpus
from searchgym.retrieval.bm25 import STOPWORDS, BM25Retriever
from searchgym.retrieval.dense import INDEX_TYPES, DenseRetriever, apply_search_params, make_faiss_index
from searchgym.retrieval.encoder import DEFAULT_ENCODER_NAME, Encoder
from searchgym.retrieval.fileio import atomic_dir, atomic_write_json, check_output, json_marker

log = logging.getLogger(__name__)

FORMAT = "searchgym-index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DOCS = "docs.jsonl"
FAISS_FILE = "index.faiss"
BM25_DIR = "bm25"
KINDS = ("dense", "bm25")


class IndexFormatError(ValueError):
    """An index folder is missing a file, is corrupt, or does not match its manifest.
    The message names the file and the mismatch."""


INDEX_MARKER = f"an index folder ({MANIFEST} with format {FORMAT!r})"


def is_index_dir(path: str | Path) -> bool:
    """True iff ``path`` holds a searchgym index manifest (the folder's own-output marker)."""
    return json_marker(Path(path) / MANIFEST, format=FORMAT)


def check_unique_ids(documents: Sequence[Document], source: str | Path | None) -> None:
    """Refuse a corpus with a repeated document id (hits would be ambiguous), naming both
    positions (JSONL record numbers, 1-based, blank lines not counted)."""
    seen: dict[str, int] = {}
    for i, d in enumerate(documents, start=1):
        first = seen.setdefault(d.doc_id, i)
        if first != i:
            raise CorpusFormatError(
                f"{source or 'corpus'}: duplicate document id {d.doc_id!r} (records {first} and {i}); ids must be unique"
            )


def _ensure_log_handler() -> None:
    """Progress lines must reach the user of the Python API too: when nobody configured
    logging, send this module's INFO records to stderr (a configured app keeps control)."""
    if not log.hasHandlers():
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s searchgym index: %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
        log.propagate = False
    if log.getEffectiveLevel() > logging.INFO:
        log.setLevel(logging.INFO)


@contextmanager
def cpu_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` torch/FAISS CPU threads (None: leave as is)."""
    if threads is None:
        yield
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive int, got {threads!r}")
    import faiss
    import torch

    old_torch, old_faiss = torch.get_num_threads(), faiss.omp_get_max_threads()
    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(old_torch)
        faiss.omp_set_num_threads(old_faiss)


def encode_corpus(enc, passages: list[str], progress: bool | None = None, log_every_s: float = 10.0):
    """Embed ``passages`` with ``enc`` in chunks, reporting progress: tqdm when ``progress``
    (None: stderr is a terminal), else log lines (start, every ``log_every_s``, end) unless
    ``progress is False``. Returns the (n, d) float32 embeddings."""
    n = len(passages)
    bar_on = sys.stderr.isatty() if progress is None else bool(progress)
    log_on = progress is None and not bar_on
    if log_on:
        _ensure_log_handler()
        log.info("encoding %d passages with %s (batch %d)", n, enc.name, enc.batch_size)
    out = np.empty((n, enc.dimension), dtype=np.float32)
    chunk = max(enc.batch_size * 16, 256)
    bar = None
    if bar_on:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc="encoding corpus", unit="doc")
    t0 = last = time.perf_counter()
    try:
        for start in range(0, n, chunk):
            part = passages[start:start + chunk]
            out[start:start + len(part)] = enc.encode_passages(part, progress=False)
            done = start + len(part)
            if bar is not None:
                bar.update(len(part))
            now = time.perf_counter()
            if log_on and done < n and now - last >= log_every_s:
                rate = done / (now - t0)
                log.info("encoded %d/%d passages (%.0f%%), %.1f docs/s, about %.0f s left",
                         done, n, 100 * done / n, rate, (n - done) / rate)
                last = now
    finally:
        if bar is not None:
            bar.close()
    wall = time.perf_counter() - t0
    if log_on:
        log.info("encoded %d passages in %.1f s (%.1f docs/s)", n, wall, n / wall if wall > 0 else float("inf"))
    return out


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def build_index(
    corpus: str | Path | Iterable[Document],
    out_dir: str | Path,
    kind: str = "dense",
    encoder: str | Path | None = None,
    index_type: str = "flat",
    *,
    query_prefix: str = "",
    passage_prefix: str = "",
    batch_size: int = 64,
    progress: bool | None = None,
    hnsw_m: int = 32,
    ef_construction: int = 200,
    ef_search: int = 128,
    nlist: int | None = None,
    pq_m: int | None = None,
    nprobe: int | None = None,
    threads: int | None = None,
    force: bool = False,
) -> Path:
    """Build an index folder at ``out_dir`` from a Search-R1 JSONL corpus (a path) or from
    ``Document`` objects, and return its path.

    ``kind`` is "dense" (``encoder``: a local encoder folder, default the bundled
    all-MiniLM-L6-v2; ``index_type``: "flat" | "hnsw" | "ivfpq") or "bm25". An existing
    folder is replaced only once the new one is complete, and only if it is an index
    folder (or empty): anything else raises ``ForeignOutputError`` before any work unless
    ``force``. Document ids must be unique (``CorpusFormatError`` otherwise). ``threads``
    sets the torch/FAISS CPU threads for the build; progress: see :func:`encode_corpus`.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown retriever kind {kind!r}; choose one of {', '.join(KINDS)}")
    if kind == "dense" and index_type not in INDEX_TYPES:
        raise ValueError(f"unknown index type {index_type!r}; choose one of {', '.join(INDEX_TYPES)}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be a positive int, got {threads!r}")
    out_dir = Path(out_dir)
    check_output(out_dir, is_index_dir, INDEX_MARKER, force=force)
    source = None
    if isinstance(corpus, (str, Path)):
        source = Path(corpus)
        if not source.is_file():
            raise FileNotFoundError(f"{source}: corpus file does not exist")
        try:
            documents = list(read_corpus(source))  # validates every line (file:line on error)
        except UnicodeDecodeError as exc:
            raise CorpusFormatError(f"{source}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    else:
        documents = list(corpus)
    if not documents:
        raise ValueError(f"{source or 'corpus'}: no documents")
    check_unique_ids(documents, source)

    with atomic_dir(out_dir) as tmp, cpu_threads(threads):
        docs_path = tmp / DOCS
        if source is not None:
            shutil.copyfile(source, docs_path)
        else:
            write_corpus(documents, docs_path)
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "kind": kind,
            "count": len(documents),
            "corpus_sha256": file_sha256(docs_path),
            "source_corpus": str(source.resolve()) if source is not None else None,
            "files": [DOCS],
        }
        if kind == "dense":
            import faiss

            enc = Encoder(encoder, query_prefix=query_prefix, passage_prefix=passage_prefix, batch_size=batch_size)
            emb = encode_corpus(enc, [f'"{d.title}"\n{d.text}' for d in documents], progress=progress)
            index, params = make_faiss_index(
                emb, index_type, hnsw_m=hnsw_m, ef_construction=ef_construction, ef_search=ef_search,
                nlist=nlist, pq_m=pq_m, nprobe=nprobe,
            )
            faiss.write_index(index, str(tmp / FAISS_FILE))
            manifest.update(
                encoder=enc.describe(), dimension=enc.dimension, index_type=index_type, index_params=params,
            )
            manifest["files"].append(FAISS_FILE)
        else:
            BM25Retriever.build(documents).model.save(str(tmp / BM25_DIR), show_progress=False)
            manifest.update(encoder=None, dimension=None, tokenizer={"stopwords": STOPWORDS})
            manifest["files"].append(BM25_DIR)
        atomic_write_json(tmp / MANIFEST, manifest)
    return out_dir


LINK_MODES = ("auto", "copy", "hardlink", "symlink")


def _place(src: Path, dst: Path, link: str) -> str:
    """Put ``src`` at ``dst`` without reading it when possible; returns how."""
    if link in ("auto", "hardlink"):
        try:
            os.link(src, dst)
            return "hardlink"
        except OSError:
            if link == "hardlink":
                raise
    if link == "symlink":
        dst.symlink_to(src.resolve())
        return "symlink"
    shutil.copyfile(src, dst)
    return "copy"


def _faiss_index_type(index) -> tuple[str, dict]:
    """searchgym's name for a FAISS index and its search-time knobs; inner product only
    (scores must be higher-is-better cosines, as for built indexes)."""
    import faiss

    base = faiss.downcast_index(index)
    if index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise ValueError("uses the L2 metric; searchgym needs an inner-product index over normalised embeddings "
                         "(Search-R1's e5_Flat.index is one)")
    if isinstance(base, faiss.IndexFlat):
        return "flat", {}
    if isinstance(base, faiss.IndexHNSW):
        return "hnsw", {"ef_search": int(base.hnsw.efSearch)}
    if isinstance(base, faiss.IndexIVFPQ):
        return "ivfpq", {"nprobe": int(base.nprobe)}
    return f"faiss:{type(base).__name__}", {}


def import_index(
    faiss_file: str | Path,
    corpus: str | Path,
    out_dir: str | Path,
    *,
    encoder: str | Path | None = None,
    query_prefix: str = "",
    passage_prefix: str = "",
    link: str = "auto",
    force: bool = False,
) -> Path:
    """Wrap an existing FAISS index file and the Search-R1 JSONL corpus it was built from
    into an index folder at ``out_dir``, without re-encoding anything.

    Row ``i`` of the FAISS index must be line ``i`` of the corpus. Checked before anything
    is written: the vector count equals the document count, the index is inner-product,
    its dimension equals the encoder's (``encoder``: the local folder of the model that
    encoded the passages, e.g. e5-base-v2 with ``query_prefix="query: "``,
    ``passage_prefix="passage: "``; None = the bundled all-MiniLM-L6-v2), ids are unique.
    Files are hard-linked when possible (``link="auto"``), else copied; ``"symlink"``
    points at the originals (they must stay). Returns ``out_dir``.
    """
    import faiss

    if link not in LINK_MODES:
        raise ValueError(f"unknown link mode {link!r}; choose one of {', '.join(LINK_MODES)}")
    faiss_file, corpus, out_dir = Path(faiss_file), Path(corpus), Path(out_dir)
    check_output(out_dir, is_index_dir, INDEX_MARKER, force=force)
    for path, what in ((faiss_file, "FAISS index file"), (corpus, "corpus file")):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: {what} does not exist")
    try:
        index = faiss.read_index(str(faiss_file), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
    except RuntimeError:
        try:
            index = faiss.read_index(str(faiss_file))
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unreadable"
            raise IndexFormatError(f"{faiss_file}: not a FAISS index ({first})") from None
    try:
        index_type, params = _faiss_index_type(index)
    except ValueError as exc:
        raise IndexFormatError(f"{faiss_file}: {exc}") from None
    try:
        documents = list(read_corpus(corpus))
    except UnicodeDecodeError as exc:
        raise CorpusFormatError(f"{corpus}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if index.ntotal != len(documents):
        raise IndexFormatError(f"{faiss_file}: holds {index.ntotal} vectors but {corpus} has {len(documents)} "
                               f"documents (row i of the index must be line i of the corpus)")
    check_unique_ids(documents, corpus)
    enc = Encoder(encoder, query_prefix=query_prefix, passage_prefix=passage_prefix)
    if enc.dimension != index.d:
        raise IndexFormatError(f"{faiss_file}: dimension {index.d} does not match encoder {enc.name} "
                               f"dimension {enc.dimension} (pass the encoder that built the index: --encoder)")
    del index
    with atomic_dir(out_dir) as tmp:
        how_docs = _place(corpus, tmp / DOCS, link)
        how_index = _place(faiss_file, tmp / FAISS_FILE, link)
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "kind": "dense", "count": len(documents),
            "corpus_sha256": file_sha256(tmp / DOCS), "source_corpus": str(corpus.resolve()),
            "files": [DOCS, FAISS_FILE], "encoder": enc.describe(), "dimension": enc.dimension,
            "index_type": index_type, "index_params": params,
            "imported": {"faiss": str(faiss_file.resolve()), "docs": how_docs, "index": how_index},
        }
        atomic_write_json(tmp / MANIFEST, manifest)
    return out_dir


def read_manifest(index_dir: str | Path) -> dict:
    """Read and check ``manifest.json`` (format, version, kind, required keys)."""
    index_dir = Path(index_dir)
    if not index_dir.is_dir():
        raise IndexFormatError(f"{index_dir}: index folder does not exist")
    path = index_dir / MANIFEST
    if not path.is_file():
        raise IndexFormatError(f"{path}: missing (not a searchgym index folder; build one with `searchgym index build`)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IndexFormatError(f"{path}: corrupt, not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise IndexFormatError(f"{path}: not a searchgym index manifest (format should be {FORMAT!r})")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise IndexFormatError(
            f"{path}: unknown format version {version!r} (this searchgym reads version {FORMAT_VERSION}); rebuild the index"
        )
    for key in ("kind", "count", "corpus_sha256", "files"):
        if key not in manifest:
            raise IndexFormatError(f"{path}: missing key {key!r}")
    if manifest["kind"] not in KINDS:
        raise IndexFormatError(f"{path}: unknown retriever kind {manifest['kind']!r} (expected one of {', '.join(KINDS)})")
    if manifest["kind"] == "dense":
        for key in ("dimension", "encoder", "index_type"):
            if key not in manifest:
                raise IndexFormatError(f"{path}: missing key {key!r}")
    for name in manifest["files"]:
        if not (index_dir / name).exists():
            raise IndexFormatError(f"{index_dir / name}: missing (listed in {path})")
    return manifest


def _load_documents(index_dir: Path, manifest: dict, verify: bool) -> list[Document]:
    docs_path = index_dir / DOCS
    if verify:
        actual = file_sha256(docs_path)
        if actual != manifest["corpus_sha256"]:
            raise IndexFormatError(
                f"{docs_path}: corpus changed since the index was built "
                f"(sha256 {actual[:12]}... != manifest {str(manifest['corpus_sha256'])[:12]}...); rebuild the index"
            )
    documents = list(read_corpus(docs_path))
    if len(documents) != manifest["count"]:
        raise IndexFormatError(
            f"{docs_path}: holds {len(documents)} documents but {index_dir / MANIFEST} says count {manifest['count']}"
        )
    return documents


def _load_uncached(index_dir: Path, encoder, cache_size: int, verify: bool):
    manifest = read_manifest(index_dir)
    documents = _load_documents(index_dir, manifest, verify)
    if manifest["kind"] == "bm25":
        import bm25s

        bm25_dir = index_dir / BM25_DIR
        try:
            model = bm25s.BM25.load(str(bm25_dir), show_progress=False)
        except Exception as exc:  # bm25s raises whatever numpy/json raise on a bad file
            raise IndexFormatError(f"{bm25_dir}: corrupt BM25 index ({type(exc).__name__}: {exc})") from None
        n_docs = int(model.scores["num_docs"]) if "num_docs" in model.scores else len(documents)
        if n_docs != len(documents):
            raise IndexFormatError(f"{bm25_dir}: indexes {n_docs} documents but the manifest says {len(documents)}")
        return BM25Retriever(model, documents)

    import faiss

    faiss_path = index_dir / FAISS_FILE
    try:
        index = faiss.read_index(str(faiss_path))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unreadable"
        raise IndexFormatError(f"{faiss_path}: corrupt FAISS index ({first})") from None
    dim = manifest["dimension"]
    if index.d != dim:
        raise IndexFormatError(f"{faiss_path}: dimension {index.d} does not match manifest dimension {dim}")
    if index.ntotal != len(documents):
        raise IndexFormatError(f"{faiss_path}: holds {index.ntotal} vectors but the manifest says {len(documents)} documents")
    apply_search_params(index, manifest["index_type"], manifest.get("index_params") or {})
    spec = manifest["encoder"] or {}
    if encoder is None and not spec.get("path") and spec.get("name") not in (None, DEFAULT_ENCODER_NAME):
        # no path recorded means "the bundled encoder": a manifest naming another one was
        # built elsewhere (or copied from another index) and would be queried with the wrong model
        raise IndexFormatError(
            f"{index_dir / MANIFEST}: built with encoder {spec['name']!r} but records no encoder path; "
            f"pass the encoder folder (encoder=...) or rebuild the index"
        )
    enc = Encoder(
        encoder if encoder is not None else spec.get("path"),
        query_prefix=spec.get("query_prefix", ""),
        passage_prefix=spec.get("passage_prefix", ""),
        query_backend=spec.get("query_backend", "torch"),  # per index: "torch" | "onnx-int8"
    )
    if enc.dimension != dim:
        raise IndexFormatError(
            f"{index_dir / MANIFEST}: index dimension {dim} does not match encoder {enc.path} "
            f"dimension {enc.dimension} (wrong encoder for this index)"
        )
    return DenseRetriever(index, documents, enc, cache_size=cache_size, index_type=manifest["index_type"])


_SHARED: dict[tuple, object] = {}
_SHARED_LOCK = threading.Lock()


def _signature(index_dir: Path) -> tuple:
    """Stat of every file in the folder: a rebuilt or edited index gets a new cache key."""
    return tuple(
        sorted((str(p.relative_to(index_dir)), p.stat().st_size, p.stat().st_mtime_ns) for p in index_dir.rglob("*") if p.is_file())
    )


def load_retriever(
    index_dir: str | Path,
    *,
    encoder: str | Path | None = None,
    cache_size: int = 10_000,
    verify: bool = True,
    shared: bool = True,
):
    """Load the retriever stored in ``index_dir`` after checking it against its manifest.

    Raises ``IndexFormatError`` naming the file and the mismatch (missing file, corrupt
    file, wrong dimension, corpus changed, unknown format version). ``encoder`` overrides
    the encoder folder recorded in the manifest. ``verify=False`` skips the corpus sha256
    (slow on very large corpora). With ``shared`` (default) the loaded retriever is
    memoised per process by resolved path, file stats and options, so many envs share it.
    """
    index_dir = Path(index_dir).expanduser()
    if not shared:
        return _load_uncached(index_dir, encoder, cache_size, verify)
    resolved = index_dir.resolve()
    if not resolved.is_dir():
        raise IndexFormatError(f"{index_dir}: index folder does not exist")
    key = (str(resolved), _signature(resolved), str(encoder) if encoder else None, cache_size)
    with _SHARED_LOCK:
        retriever = _SHARED.get(key)
        if retriever is None:
            retriever = _load_uncached(resolved, encoder, cache_size, verify)
            # Drop stale entries for the same folder (it was rebuilt).
            for old in [k for k in _SHARED if k[0] == key[0]]:
                del _SHARED[old]
            _SHARED[key] = retriever
        return retriever


def clear_shared() -> None:
    """Forget every memoised retriever (tests, or to free memory)."""
    with _SHARED_LOCK:
        _SHARED.clear()
