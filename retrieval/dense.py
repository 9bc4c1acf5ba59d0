"""Dense retrieval: a sentence-transformers encoder + a FAISS inner-product index over
L2-normalised embeddings (so scores are cosine similarities)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from searchgym.retrieval.base import Document, Hit
from searchgym.retrieval.encoder import Encoder, QueryCache

INDEX_TYPES = ("flat", "hnsw", "ivfpq")


def check_queries(queries, k) -> list[str]:
    """Validate a ``search`` call's arguments; returns ``queries`` as a list."""
    if isinstance(queries, str) or not isinstance(queries, (list, tuple)):
        raise TypeError(f"queries must be a list of strings, got {type(queries).__name__}")
    for i, q in enumerate(queries):
        if not isinstance(q, str):
            raise TypeError(f"queries[{i}] must be a string, got {type(q).__name__}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return list(queries)


class DenseRetriever:
    """Batched dense retriever implementing the ``Retriever`` protocol.

    Duplicate queries inside one ``search`` batch are encoded once, and an LRU cache in
    front of the encoder skips queries seen before; FAISS runs once per batch on the
    distinct queries. Safe to share between threads (the encoder and cache lock
    internally; FAISS searches are read-only).
    """

    kind = "dense"

    def __init__(
        self,
        index,
        documents: Sequence[Document],
        encoder: Encoder,
        *,
        cache_size: int = 10_000,
        index_type: str = "flat",
    ):
        if index.ntotal != len(documents):
            raise ValueError(f"index holds {index.ntotal} vectors but {len(documents)} documents were given")
        if index.d != encoder.dimension:
            raise ValueError(f"index dimension {index.d} != encoder {encoder.name} dimension {encoder.dimension}")
        self.index = index
        self.documents = list(documents)
        self.encoder = encoder
        self.index_type = index_type
        self.cache = QueryCache(cache_size)

    @property
    def count(self) -> int:
        return len(self.documents)

    @property
    def dimension(self) -> int:
        return self.encoder.dimension

    def encode_queries(self, queries: list[str]) -> np.ndarray:
        """Embeddings of ``queries`` (n, d); each distinct uncached query is encoded once."""
        distinct = list(dict.fromkeys(queries))
        found = self.cache.get_many(distinct)
        missing = [q for q in distinct if q not in found]
        if missing:
            vecs = self.encoder.encode_queries(missing)
            new = list(zip(missing, vecs))
            self.cache.put_many(new)
            found.update(new)
        if not queries:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return np.stack([found[q] for q in queries]).astype(np.float32, copy=False)

    def search_vectors(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Raw FAISS search: (scores, ids), ids -1 where fewer than k hits exist."""
        k = min(int(k), self.count)
        return self.index.search(np.ascontiguousarray(vectors, dtype=np.float32), k)

    def search(self, queries: list[str], k: int) -> list[list[Hit]]:
        """Top-``k`` hits per query (k is capped at the corpus size)."""
        queries = check_queries(queries, k)
        if not queries:
            return []
        distinct = list(dict.fromkeys(queries))
        scores, ids = self.search_vectors(self.encode_queries(distinct), k)
        by_query = {}
        for q, row_scores, row_ids in zip(distinct, scores, ids):
            hits = []
            for score, idx in zip(row_scores.tolist(), row_ids.tolist()):
                if idx < 0:
                    continue
                doc = self.documents[idx]
                hits.append(Hit(doc.doc_id, doc.title, doc.text, float(score)))
            by_query[q] = hits
        return [list(by_query[q]) for q in queries]

    def stats(self) -> dict:
        return {
            "kind": self.kind,
            "index_type": self.index_type,
            "count": self.count,
            "dimension": self.dimension,
            "encoder": self.encoder.describe(),
            "cache": self.cache.stats(),
        }


def make_faiss_index(
    embeddings: np.ndarray,
    index_type: str = "flat",
    *,
    hnsw_m: int = 32,
    ef_construction: int = 200,
    ef_search: int = 128,
    nlist: int | None = None,
    pq_m: int | None = None,
    nprobe: int | None = None,
    seed: int = 0,
) -> tuple[object, dict]:
    """Build a FAISS inner-product index over ``embeddings`` (n, d), normalised already.

    Returns the index and the parameters actually used (for the manifest). IVF-PQ adapts
    its list count and code size to small corpora (FAISS needs at least as many training
    points as centroids) and refuses corpora too small to train on.
    """
    import faiss

    n, d = embeddings.shape
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    if index_type == "flat":
        index = faiss.IndexFlatIP(d)
        params: dict = {}
    elif index_type == "hnsw":
        index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        index.hnsw.efSearch = ef_search
        params = {"hnsw_m": hnsw_m, "ef_construction": ef_construction, "ef_search": ef_search}
    elif index_type == "ivfpq":
        min_docs = 64
        if n < min_docs:
            raise ValueError(
                f"IVF-PQ needs at least {min_docs} documents to train, the corpus has {n}; "
                "use index_type 'flat' (exact, best for small corpora) or 'hnsw'"
            )
        # Faiss wants >= 39 training points per centroid for stable k-means.
        max_nlist = max(1, n // 39)
        nlist_used = min(nlist or int(4 * np.sqrt(n)), max_nlist)
        # Product-quantiser: m must divide d; 2**nbits centroids per sub-space need
        # at least as many training points.
        wanted_m = pq_m or max(1, d // 8)
        m_used = max(m for m in range(1, min(wanted_m, d) + 1) if d % m == 0)
        nbits = min(8, int(np.floor(np.log2(n))))
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFPQ(quantizer, d, nlist_used, m_used, nbits, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        index.pq.cp.seed = seed
        # The sizes above were chosen for this corpus; silence FAISS's "provide at least
        # 39 points per centroid" warnings for small ones.
        index.cp.min_points_per_centroid = 1
        index.pq.cp.min_points_per_centroid = 1
        index.train(x)
        index.nprobe = min(nprobe or 16, nlist_used)
        params = {"nlist": nlist_used, "pq_m": m_used, "pq_nbits": nbits, "nprobe": int(index.nprobe)}
    else:
        raise ValueError(f"unknown index type {index_type!r}; choose one of {', '.join(INDEX_TYPES)}")
    index.add(x)
    return index, params


def apply_search_params(index, index_type: str, params: dict) -> None:
    """Restore search-time knobs that FAISS does not persist reliably."""
    import faiss

    if index_type == "hnsw" and "ef_search" in params:
        faiss.downcast_index(index).hnsw.efSearch = int(params["ef_search"])
    elif index_type == "ivfpq" and "nprobe" in params:
        faiss.extract_index_ivf(index).nprobe = int(params["nprobe"])
